//! Artifacts and logs through the Queue: the worker binary uploads to the queue double's object service
//! and s3 endpoint, on the real Docker engine. These tests need Docker; run `integration/setup.sh`.

use std::io::Read;
use std::time::Duration;

use docker_worker_integration::daemon::*;
use docker_worker_integration::queue_double::{Options, QueueDouble};
use docker_worker_integration::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_docker-worker");

const SCRIPT: &str =
    "mkdir -p /xfoo/wow /artifacts && echo xfoo > /xfoo/wow/bar.txt && echo text > /xfoo/wow/another.txt \
    && dd if=/dev/zero of=/xfoo/test.html bs=1000 count=1000 2>/dev/null \
    && echo xfoo > /artifacts/xfoo.txt && dd if=/dev/zero of=/artifacts/binary bs=1000 count=200 2>/dev/null \
    && ln -s /etc/passwd /xfoo/link-to-passwd && mkfifo /xfoo/pipe && echo the-end";

/// Before the task's own expiry (its deadline plus a year), after which an artifact may not outlive it.
const ARTIFACT_EXPIRES: &str = "2027-06-01T00:00:00.000Z";

fn artifacts_payload() -> Value {
    let mut payload = sh_payload(SCRIPT, 60);
    payload["artifacts"] = json!({
        "public/xfoo": {"type": "file", "path": "/artifacts/xfoo.txt", "expires": ARTIFACT_EXPIRES},
        "public/test": {"type": "file", "path": "/artifacts/binary"},
        "public/dir": {"type": "directory", "path": "/xfoo/"},
        "public/etc": {"type": "file", "path": "/etc/"},
        "public/my-missing.txt": {"type": "file", "path": "/this-file-is-missing.txt", "expires": ARTIFACT_EXPIRES},
    });
    payload
}

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .expect("a gzip stream");
    out
}

fn names(double: &QueueDouble, task: &str) -> Vec<String> {
    let mut names: Vec<String> = double
        .artifacts(task, 0)
        .iter()
        .map(|a| a["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

fn check_artifacts(storage: &str) {
    let double = QueueDouble::start(Options::default());
    let _daemon = Daemon::start(BIN, &double, &[&format!("artifacts.storage={storage}")]);
    let task = create(&double, artifacts_payload());
    let status = wait_resolved(&double, &task, 0);
    assert_eq!(
        run_state(&status, 0),
        ("completed".into(), "completed".into()),
        "error artifacts don't fail it"
    );
    let bytes = |name: &str| {
        double
            .artifact_bytes(&task, 0, name)
            .unwrap_or_else(|| panic!("no bytes for {name}"))
    };
    let info = |name: &str| {
        double
            .artifact(&task, 0, name)
            .unwrap_or_else(|| panic!("no artifact {name}"))
    };
    assert_eq!(bytes("public/xfoo"), b"xfoo\n");
    assert_eq!(bytes("public/dir/wow/bar.txt"), b"xfoo\n");
    assert_eq!(bytes("public/dir/wow/another.txt"), b"text\n");
    assert_eq!(bytes("public/dir/test.html").len(), 1_000_000);
    assert_eq!(info("public/xfoo")["storageType"], storage);
    assert_eq!(info("public/dir/test.html")["contentType"], "text/html");
    assert_eq!(info("public/test")["contentType"], "application/octet-stream");
    assert_eq!(info("public/xfoo")["expires"], ARTIFACT_EXPIRES);
    let task_expires = double.status(&task)["expires"].as_str().unwrap().to_string();
    assert_eq!(
        info("public/test")["expires"].as_str().unwrap(),
        task_expires,
        "expiry defaults to the task's"
    );
    // Errors: missing and wrong type.
    let missing = info("public/my-missing.txt");
    assert_eq!(missing["storageType"], "error");
    assert_eq!(
        missing["expires"], ARTIFACT_EXPIRES,
        "an error artifact keeps the payload's expiry"
    );
    assert_eq!(missing["reason"], "file-missing-on-worker");
    let etc = info("public/etc");
    assert_eq!(etc["storageType"], "error");
    assert_eq!(etc["reason"], "invalid-resource-on-worker");
    // Hostile entries never left the container.
    let all = names(&double, &task);
    assert!(
        !all.iter()
            .any(|n| n.contains("link-to-passwd") || n.contains("pipe")),
        "{all:?}"
    );
    // The log: gzip-encoded backing log, with the skips said in it.
    let log = info("public/logs/live_backing.log");
    assert_eq!(log["storageType"], storage);
    let text = gunzip(&bytes("public/logs/live_backing.log"));
    assert!(text.contains("the-end"), "{text}");
    assert!(
        text.contains("Skipped \"public/dir/link-to-passwd\": it is a symlink"),
        "{text}"
    );
    assert!(text.contains("Artifact \"public/my-missing.txt\" not found at \"/this-file-is-missing.txt\""));
    assert_no_containers(&task);
}

#[test]
fn file_directory_missing_and_wrong_type_artifacts_through_the_object_service() {
    check_artifacts("object");
}

#[test]
fn file_directory_missing_and_wrong_type_artifacts_through_s3() {
    check_artifacts("s3");
}

#[test]
fn uploads_that_fail_twice_then_succeed() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &[]);
    double.fail_next_uploads(2);
    let mut payload = sh_payload("echo xfoo > /x.txt", 60);
    payload["artifacts"] = json!({"public/x.txt": {"type": "file", "path": "/x.txt"}});
    let task = create(&double, payload);
    assert_eq!(run_state(&wait_resolved(&double, &task, 0), 0).0, "completed");
    assert_eq!(
        double.artifact_bytes(&task, 0, "public/x.txt").unwrap(),
        b"xfoo\n"
    );
    daemon.wait_for_event(
        "retrying artifact upload",
        |e| e["artifactName"] == "public/x.txt",
        Duration::from_secs(5),
    );
}

#[test]
fn a_permanently_failing_upload_fails_the_task_and_says_why() {
    let double = QueueDouble::start(Options::default());
    let _daemon = Daemon::start(BIN, &double, &[]);
    // Every attempt at the artifact fails; the log, uploaded after it, gets through.
    double.fail_next_uploads(5);
    let mut payload = sh_payload("echo xfoo > /x.txt", 60);
    payload["artifacts"] = json!({"public/x.txt": {"type": "file", "path": "/x.txt"}});
    let task = create(&double, payload);
    assert_eq!(
        run_state(&wait_resolved(&double, &task, 0), 0),
        ("failed".into(), "failed".into())
    );
    let log = gunzip(
        &double
            .artifact_bytes(&task, 0, "public/logs/live_backing.log")
            .expect("the log"),
    );
    assert!(
        log.contains("Error uploading \"public/x.txt\" artifact after 5 attempts."),
        "{log}"
    );
    assert!(log.contains("Unsuccessful task run with exit code: -1"), "{log}");
}

#[test]
fn a_canceled_run_uploads_nothing() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &[]);
    let mut payload = sh_payload("echo xfoo > /x.txt; sleep 120", 180);
    payload["artifacts"] = json!({"public/x.txt": {"type": "file", "path": "/x.txt"}});
    let task = create(&double, payload);
    daemon.wait_for_event(
        "task run",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(60),
    );
    double.cancel_task(&task);
    daemon.wait_for_event(
        "task resolved",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(30),
    );
    let uploaded: Vec<String> = names(&double, &task)
        .into_iter()
        .filter(|n| n != "public/logs/live.log")
        .collect();
    assert!(
        uploaded.is_empty(),
        "a canceled run uploads nothing: {uploaded:?}"
    );
    assert_eq!(double.uploads(), 0);
    assert_no_containers(&task);
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the worker's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[test]
fn an_artifact_over_a_gibibyte_uploads_while_memory_stays_flat() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &[]);
    // A small task first, so the baseline covers a whole run's worth of allocations.
    let warmup = create(&double, sh_payload("echo warm", 60));
    wait_resolved(&double, &warmup, 0);
    let baseline = peak_rss_kib(daemon.pid());
    let size: u64 = 1100 * 1024 * 1024;
    let mut payload = sh_payload("dd if=/dev/zero of=/big bs=1048576 count=1100 2>/dev/null", 600);
    payload["artifacts"] = json!({"public/big.bin": {"type": "file", "path": "/big"}});
    let task = create(&double, payload);
    let status = double.wait_for(
        &task,
        |s| {
            s["runs"][0]["state"]
                .as_str()
                .is_some_and(|st| st != "pending" && st != "running")
        },
        Duration::from_secs(600),
    );
    assert_eq!(run_state(&status, 0).0, "completed");
    let stored = double
        .artifact_path(&task, 0, "public/big.bin")
        .expect("the big artifact");
    assert_eq!(std::fs::metadata(stored).unwrap().len(), size);
    let peak = peak_rss_kib(daemon.pid());
    eprintln!("worker peak RSS: {baseline} KiB before, {peak} KiB after a {size}-byte artifact");
    // Streaming keeps a few 64 KiB chunks in flight; 32 MiB of growth would mean it buffers.
    assert!(
        peak - baseline < 32 * 1024,
        "peak RSS grew by {} KiB",
        peak - baseline
    );
    let _ = daemon.wait_for_event(
        "task resolved",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(10),
    );
    assert_no_containers(&task);
}
