//! `docker-worker run` end to end, on the real Docker engine with the busybox fixture image.
//! These tests need Docker and fail without it; run `integration/setup.sh` first.

use std::time::Duration;

use docker_worker_integration::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_docker-worker");
const DEADLINE: Duration = Duration::from_secs(120);

fn assert_no_containers(result: &RunResult) {
    let left = containers_of_task(&result.task_id);
    assert!(
        left.is_empty(),
        "containers left behind for {}: {left:?}",
        result.task_id
    );
}

#[test]
fn env_vars_are_visible_and_reserved_ones_win() {
    let r = Runner::new(BIN, "env");
    let mut payload = sh_payload("printenv", 60);
    payload["env"] = json!({"WOOTBAR": "is woot", "TASK_ID": "spoofed"});
    let result = r.run(&payload, DEADLINE);
    assert_eq!(result.code(), Some(0), "{}\n{}", result.stdout, result.stderr);
    for want in [
        "WOOTBAR=is woot".to_string(),
        format!("TASK_ID={}", result.task_id),
        "RUN_ID=0".into(),
        "TASKCLUSTER_WORKER_TYPE=test-worker-type".into(),
        "TASKCLUSTER_WORKER_GROUP=test-group".into(),
        "TASKCLUSTER_INSTANCE_TYPE=test-worker".into(),
        "TASKCLUSTER_PUBLIC_IP=127.0.0.1".into(),
    ] {
        assert!(
            result.stdout.contains(&format!("{want}\r\n")),
            "missing {want:?} in:\n{}",
            result.stdout
        );
    }
    assert!(!result.stdout.contains("TASK_ID=spoofed"));
    assert_no_containers(&result);
}

#[test]
fn header_and_footer_frame_a_successful_run() {
    let r = Runner::new(BIN, "header");
    let result = r.run(&sh_payload("echo hi; exit 0", 60), DEADLINE);
    assert_eq!(result.code(), Some(0));
    let lines = result.taskcluster_lines();
    let want = [
        format!("Task ID: {}", result.task_id),
        "Worker ID: test-worker".into(),
        "Worker Group: test-group".into(),
        "Worker Node Type: test-worker".into(),
        "Worker Type: test-worker-type".into(),
        "Public IP: 127.0.0.1".into(),
    ];
    for (line, want) in lines.iter().zip(&want) {
        assert!(line.ends_with(want.as_str()), "{line:?} should end with {want:?}");
    }
    assert!(lines.iter().any(|l| l.ends_with("] === Task Starting ===")));
    let footer = lines.last().unwrap();
    assert!(
        footer.contains("] Successful task run with exit code: 0 completed in "),
        "{footer}"
    );
    assert_eq!(result.summary()["state"], "completed");
    // The terminal and the saved log carry the same bytes.
    assert_eq!(result.backing_log(), result.stdout);
    assert_no_containers(&result);
}

#[test]
fn a_non_zero_exit_fails() {
    let r = Runner::new(BIN, "exit5");
    let result = r.run(&sh_payload("exit 5", 60), DEADLINE);
    assert_eq!(result.code(), Some(1), "{}", result.stderr);
    let footer = result.taskcluster_lines().pop().unwrap();
    assert!(
        footer.contains("Unsuccessful task run with exit code: 5 completed in"),
        "{footer}"
    );
    assert_eq!(result.summary()["resolution"], "failed");
    assert_no_containers(&result);
}

#[test]
fn a_retry_exit_status_is_an_intermittent_task() {
    let r = Runner::new(BIN, "retry");
    let mut payload = sh_payload("exit 36", 60);
    payload["onExitStatus"] = json!({"retry": [36]});
    let result = r.run(&payload, DEADLINE);
    assert_eq!(result.code(), Some(75), "{}", result.stderr);
    assert_eq!(result.summary()["resolution"], "exception/intermittent-task");
}

#[test]
fn max_run_time_kills_a_sleep() {
    let r = Runner::new(BIN, "maxruntime");
    let result = r.run(&sh_payload("echo Hello; sleep 30; echo done", 2), DEADLINE);
    assert_eq!(result.code(), Some(1), "{}", result.stderr);
    assert!(result.stdout.contains("Hello"));
    assert!(!result.stdout.contains("done"));
    assert!(
        result
            .stdout
            .contains("\n[taskcluster:error] Task timeout after 2 seconds. Force killing container.\n"),
        "{}",
        result.stdout
    );
    let footer = result.taskcluster_lines().pop().unwrap();
    assert!(
        footer.contains("Unsuccessful task run with exit code: -1"),
        "{footer}"
    );
    assert_no_containers(&result);
}

#[test]
fn a_thousand_lines_arrive_complete_and_in_order() {
    let r = Runner::new(BIN, "lines");
    let script = "echo \"first command!\"; for i in $(seq 1 1000); do echo \"Hello Number $i\"; done";
    let result = r.run(&sh_payload(script, 60), DEADLINE);
    assert_eq!(result.code(), Some(0));
    let want: String = (1..=1000).map(|i| format!("Hello Number {i}\r\n")).collect();
    assert!(
        result.stdout.contains(&format!("first command!\r\n{want}")),
        "{}",
        result.stdout
    );
    assert!(result.backing_log().contains(&want));
}

#[test]
fn file_and_directory_artifacts_with_missing_and_wrong_type_entries() {
    let r = Runner::new(BIN, "artifacts");
    let script = "mkdir -p /xfoo/wow /artifacts && echo xfoo > /xfoo/wow/bar.txt && echo text > /xfoo/wow/another.txt \
        && dd if=/dev/zero of=/xfoo/test.html bs=1000 count=1000 2>/dev/null \
        && echo xfoo > /artifacts/xfoo.txt && echo bar > /artifacts/bar.txt && echo me > /username.txt \
        && ln -s /etc/passwd /xfoo/link-to-passwd && mkfifo /xfoo/pipe";
    let mut payload = sh_payload(script, 60);
    payload["artifacts"] = json!({
        "public/xfoo": {"type": "file", "path": "/artifacts/xfoo.txt", "expires": "2099-01-01T00:00:00.000Z"},
        "public/bar": {"type": "file", "path": "/artifacts/bar.txt"},
        "public/username.txt": {"type": "file", "path": "username.txt"},
        "public/dir": {"type": "directory", "path": "/xfoo/"},
        "public/etc": {"type": "file", "path": "/etc/"},
        "public/not-a-dir": {"type": "directory", "path": "/artifacts/bar.txt"},
        "public/my-missing.txt": {"type": "file", "path": "/this-file-is-missing.txt"},
    });
    let result = r.run(&payload, DEADLINE);
    assert_eq!(
        result.code(),
        Some(0),
        "error artifacts don't fail a task:\n{}\n{}",
        result.stdout,
        result.stderr
    );
    let read =
        |name: &str| std::fs::read(result.artifacts.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(read("public/xfoo"), b"xfoo\n");
    assert_eq!(read("public/bar"), b"bar\n");
    assert_eq!(read("public/username.txt"), b"me\n");
    assert_eq!(read("public/dir/wow/bar.txt"), b"xfoo\n");
    assert_eq!(read("public/dir/wow/another.txt"), b"text\n");
    assert_eq!(read("public/dir/test.html").len(), 1_000_000);
    assert_eq!(
        result.artifact("public/dir/test.html")["contentType"],
        "text/html"
    );
    assert_eq!(result.artifact("public/xfoo")["expires"], "2099-01-01T00:00:00Z");
    // The link and the FIFO never leave the container, and the log says so.
    assert!(!exists(&result.artifacts, "public/dir/link-to-passwd"));
    assert!(!exists(&result.artifacts, "public/dir/pipe"));
    assert!(
        result
            .stdout
            .contains("Skipped \"public/dir/link-to-passwd\": it is a symlink"),
        "{}",
        result.stdout
    );
    assert!(result
        .stdout
        .contains("Skipped \"public/dir/pipe\": it is a fifo"));
    // Missing and wrong-type entries are error artifacts.
    assert!(result
        .stdout
        .contains("Artifact \"public/my-missing.txt\" not found at \"/this-file-is-missing.txt\""));
    let missing = result.artifact("public/my-missing.txt");
    assert_eq!(missing["storageType"], "error");
    assert_eq!(missing["reason"], "file-missing-on-worker");
    let etc = result.artifact("public/etc");
    assert_eq!(etc["reason"], "invalid-resource-on-worker");
    assert_eq!(
        etc["message"],
        "Error uploading \"public/etc\". Expected artifact to be a \"file\" but was \"directory\""
    );
    assert_eq!(
        result.artifact("public/not-a-dir")["reason"],
        "invalid-resource-on-worker"
    );
    assert!(result
        .stderr
        .contains("public/my-missing.txt  error artifact, file-missing-on-worker"));
    assert_no_containers(&result);
}

#[test]
fn a_bad_command_fails_to_start() {
    let r = Runner::new(BIN, "badcmd");
    let payload = json!({"image": fixture_image(), "command": ["echo \"Hello\""], "maxRunTime": 60});
    let result = r.run(&payload, DEADLINE);
    assert_eq!(result.code(), Some(1), "{}\n{}", result.stdout, result.stderr);
    assert!(result
        .stdout
        .contains("Failure to properly start execution environment."));
    assert_no_containers(&result);
}

#[test]
fn an_image_that_can_not_be_pulled_names_the_image() {
    let r = Runner::new(BIN, "noimage");
    let payload =
        json!({"image": "docker-worker-test/does-not-exist:99.99", "command": ["true"], "maxRunTime": 60});
    let result = r.run(&payload, DEADLINE);
    // Not found (1) where a registry answers; resource-unavailable (69) where none can be reached.
    assert!(
        matches!(result.code(), Some(1) | Some(69)),
        "{:?}\n{}",
        result.code(),
        result.stdout
    );
    assert!(result
        .stdout
        .contains("[taskcluster:error] Pulling docker image has failed."));
    assert!(
        result.stdout.contains("docker-worker-test/does-not-exist"),
        "{}",
        result.stdout
    );
    assert_no_containers(&result);
}

#[test]
fn invalid_payloads_are_rejected_with_every_error_and_nothing_starts() {
    let r = Runner::new(BIN, "invalid");
    let payload = json!({
        "image": fixture_image(),
        "maxRunTime": "hello",
        "onExitStatus": {"retry": ["1"]},
        "features": {"invalidFeature": true},
    });
    let result = r.run(&payload, DEADLINE);
    assert_eq!(result.code(), Some(65));
    for want in [
        "maxRunTime: must be an integer between 1 and 604800",
        "onExitStatus.retry[0]: must be an integer",
        "features.invalidFeature: unknown feature",
    ] {
        assert!(
            result.stderr.contains(want),
            "missing {want:?} in:\n{}",
            result.stderr
        );
    }
    assert!(result.stdout.is_empty(), "nothing runs: {}", result.stdout);
    assert_no_containers(&result);
}

#[test]
fn a_task_definition_with_an_artifact_outliving_the_task_is_rejected() {
    let r = Runner::new(BIN, "expiry");
    let mut payload = sh_payload("true", 60);
    payload["artifacts"] =
        json!({"public/x": {"type": "file", "path": "/x", "expires": "2099-01-01T00:00:00Z"}});
    let task = json!({"payload": payload, "expires": "2030-01-01T00:00:00Z", "scopes": []});
    let result = r.run(&task, DEADLINE);
    assert_eq!(result.code(), Some(65));
    assert!(
        result.stderr.contains("must not be greater than task expiration"),
        "{}",
        result.stderr
    );
}

fn stop_with(signal: &str, expected: i32) {
    let r = Runner::new(BIN, &format!("signal-{}", signal.to_lowercase()));
    let mut running = r.spawn(&sh_payload("echo Hello; sleep 60; echo done", 120));
    running.wait_for_line("Hello", Duration::from_secs(60));
    running.signal(signal);
    let result = running.finish(Duration::from_secs(60));
    assert_eq!(
        result.code(),
        Some(expected),
        "{}\n{}",
        result.stdout,
        result.stderr
    );
    assert!(result
        .stdout
        .contains("[taskcluster:error] Task has been aborted prematurely. Reason: worker-shutdown"));
    assert!(!result.stdout.contains("done"));
    let footer = result.taskcluster_lines().pop().unwrap();
    assert!(
        footer.contains("Unsuccessful task run with exit code: -1"),
        "{footer}"
    );
    assert!(result.backing_log().contains("Hello"), "the log is still written");
    assert_eq!(result.summary()["resolution"], "exception/worker-shutdown");
    assert_no_containers(&result);
}

#[test]
fn sigterm_stops_the_task_and_leaves_no_container() {
    stop_with("TERM", 143);
}

#[test]
fn sigint_stops_the_task_and_leaves_no_container() {
    stop_with("INT", 130);
}

#[test]
fn the_example_in_the_readme_runs() {
    let r = Runner::new(BIN, "example");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/examples/hello.yml");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "run",
        example,
        "--profile",
        "test",
        "--task-id",
        &r.task_id,
        "--artifacts-dir",
    ])
    .arg(r.artifacts());
    let out = cmd.output().expect("docker-worker runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("Hello from task {} on test-worker-type", r.task_id)));
    assert_eq!(
        std::fs::read(r.artifacts().join("public/result.txt")).unwrap(),
        b"a result\n"
    );
    assert!(r.artifacts().join("public/logs/date.txt").exists());
    assert!(containers_of_task(&r.task_id).is_empty());
}

#[test]
fn bulk_log_and_custom_log_names() {
    let r = Runner::new(BIN, "bulklog");
    let mut payload = sh_payload("for i in $(seq 1 100); do echo \"Hello Number $i\"; done", 60);
    payload["features"] = json!({"bulkLog": true});
    payload["log"] = json!("private/docker-worker-tests/logs/live.log");
    let result = r.run(&payload, DEADLINE);
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    let backing = result
        .artifacts
        .join("private/docker-worker-tests/logs/live_backing.log");
    let backing = std::fs::read_to_string(&backing).expect("backing log under the custom name");
    assert!(!exists(&result.artifacts, "public/logs/live_backing.log"));
    let gz = std::fs::read(result.artifacts.join("public/logs/terminal_bulk.log.gz")).expect("bulk log");
    let mut bulk = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut bulk).expect("gzip");
    assert_eq!(bulk, backing, "the bulk log equals the live log exactly");
    assert_eq!(backing, result.stdout);
}

#[test]
fn without_local_live_log_no_log_artifact_is_kept() {
    let r = Runner::new(BIN, "nolivelog");
    let mut payload = sh_payload("echo quiet", 60);
    payload["features"] = json!({"localLiveLog": false});
    let result = r.run(&payload, DEADLINE);
    assert_eq!(result.code(), Some(0));
    assert!(
        result.stdout.contains("quiet"),
        "the terminal still shows the log"
    );
    assert!(!exists(&result.artifacts, "public/logs/live_backing.log"));
}

#[test]
fn an_unsupported_feature_fails_the_task_before_anything_runs() {
    let r = Runner::new(BIN, "unsupported");
    let mut payload = sh_payload("echo should-not-run", 60);
    payload["features"] = json!({"taskclusterProxy": true});
    let result = r.run(&payload, DEADLINE);
    assert_eq!(result.code(), Some(1));
    assert!(result
        .stdout
        .contains("The feature `taskclusterProxy` is not supported by this worker yet"));
    assert!(!result.stdout.contains("should-not-run\r\n"));
    assert_no_containers(&result);
}

#[test]
fn output_starting_with_control_bytes_is_passed_through_unchanged() {
    // Bytes 0, 1 and 2 at the start of a chunk look like a multiplexed frame header to a decoder that
    // guesses; a TTY container's output is raw and must arrive byte for byte.
    let r = Runner::new(BIN, "ctlbytes");
    let result = r.run(
        &sh_payload(
            "sleep 0.3; printf '\\001\\002\\000abcdefghijkl'; sleep 0.3; echo after",
            60,
        ),
        DEADLINE,
    );
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    assert!(
        result.stdout.contains("\u{1}\u{2}\u{0}abcdefghijklafter\r\n"),
        "{:?}",
        result.stdout
    );
}
