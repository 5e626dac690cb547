//! The live log end to end: the worker binary serves a running task's log over HTTP, publishes it as the
//! live log artifact, and links that to the backing log when the task ends. Real Docker, queue double.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use docker_worker_integration::daemon::*;
use docker_worker_integration::queue_double::{Options, QueueDouble};
use docker_worker_integration::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_docker-worker");

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .expect("a gzip stream");
    out
}

/// The live log URL from the reference artifact, once the worker has created it.
fn live_url(double: &QueueDouble, task: &str, name: &str) -> String {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(a) = double.artifact(task, 0, name) {
            if a["storageType"] == "reference" {
                return a["url"].as_str().expect("a reference url").to_string();
            }
        }
        assert!(
            std::time::Instant::now() < end,
            "no live log reference {name} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

#[test]
fn the_live_log_is_readable_while_the_task_runs_and_equals_the_backing_log() {
    let double = QueueDouble::start(Options::default());
    let _daemon = Daemon::start(BIN, &double, &[]);
    let script =
        "echo \"first command!\"; sleep 3; for i in $(seq 1 1000); do echo \"Hello Number $i\"; done";
    let task = create(&double, sh_payload(script, 60));
    let url = live_url(&double, &task, "public/logs/live.log");
    let token = url.rsplit('/').next().unwrap();
    assert!(
        token.len() >= 22
            && token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    let response = client().get(&url).send().expect("the live log answers");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let mut reader = BufReader::new(response);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the log ended before the first command's line"
        );
        seen.push_str(&line);
        if line.contains("first command!") {
            break;
        }
    }
    // The task is still sleeping: the line arrived live.
    assert_eq!(double.status(&task)["runs"][0]["state"], "running");
    reader.read_to_string(&mut seen).unwrap();
    let want: String = (1..=1000).map(|i| format!("Hello Number {i}\r\n")).collect();
    assert!(seen.contains(&format!("first command!\r\n{want}")), "{seen}");
    wait_resolved(&double, &task, 0);
    let backing = gunzip(
        &double
            .artifact_bytes(&task, 0, "public/logs/live_backing.log")
            .unwrap(),
    );
    assert_eq!(backing, seen, "the backing log equals what the reader saw");
    let live = double.artifact(&task, 0, "public/logs/live.log").unwrap();
    assert_eq!(live["storageType"], "link");
    assert_eq!(live["artifact"], "public/logs/live_backing.log");
    assert_no_containers(&task);
}

#[test]
fn two_readers_a_resumed_reader_and_a_wrong_token() {
    let double = QueueDouble::start(Options::default());
    let _daemon = Daemon::start(BIN, &double, &[]);
    let task = create(
        &double,
        sh_payload(
            "for i in $(seq 1 300); do echo line $i; done; sleep 3; echo end",
            60,
        ),
    );
    let url = live_url(&double, &task, "public/logs/live.log");
    let open = |range: Option<u64>| {
        let mut request = client().get(&url);
        if let Some(n) = range {
            request = request.header("Range", format!("bytes={n}-"));
        }
        request.send().unwrap()
    };
    // The first reader reads until the loop's output is out; the others join while the task sleeps.
    let first = open(None);
    assert_eq!(first.status(), 200);
    let mut first = BufReader::new(first);
    let mut a = String::new();
    while !a.contains("line 300\r\n") {
        assert!(first.read_line(&mut a).unwrap() > 0, "the log ended early: {a}");
    }
    let second = open(None);
    let resumed = open(Some(100));
    assert_eq!(second.status(), 200);
    assert_eq!(resumed.status(), 206, "a Range request resumes");
    first.read_to_string(&mut a).unwrap();
    let b = second.text().unwrap();
    let c = resumed.text().unwrap();
    assert!(a.ends_with("end\r\n") || a.contains("end\r\n"), "{a}");
    assert_eq!(a, b, "two readers see the same log");
    assert_eq!(c, a[100..], "a resumed reader gets the rest");
    let wrong = url.replace(url.rsplit('/').next().unwrap(), "AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(client().get(&wrong).send().unwrap().status(), 401);
    wait_resolved(&double, &task, 0);
}

#[test]
fn custom_log_names_bulk_log_and_no_live_log() {
    let double = QueueDouble::start(Options::default());
    let _daemon = Daemon::start(BIN, &double, &[]);
    let mut custom = sh_payload("echo custom", 60);
    custom["log"] = json!("private/docker-worker-tests/logs/live.log");
    custom["features"] = json!({"bulkLog": true});
    let custom = create(&double, custom);
    let mut quiet = sh_payload("echo quiet", 60);
    quiet["features"] = json!({"localLiveLog": false});
    let quiet = create(&double, quiet);
    wait_resolved(&double, &custom, 0);
    wait_resolved(&double, &quiet, 0);
    let live = double
        .artifact(&custom, 0, "private/docker-worker-tests/logs/live.log")
        .expect("custom live log");
    assert_eq!(live["storageType"], "link");
    assert_eq!(
        live["artifact"],
        "private/docker-worker-tests/logs/live_backing.log"
    );
    let backing = gunzip(
        &double
            .artifact_bytes(&custom, 0, "private/docker-worker-tests/logs/live_backing.log")
            .unwrap(),
    );
    assert!(backing.contains("custom\r\n"));
    assert!(double.artifact(&custom, 0, "public/logs/live.log").is_none());
    let bulk = gunzip(
        &double
            .artifact_bytes(&custom, 0, "public/logs/terminal_bulk.log.gz")
            .unwrap(),
    );
    assert_eq!(bulk, backing);
    let names: Vec<String> = double
        .artifacts(&quiet, 0)
        .iter()
        .map(|a| a["name"].to_string())
        .collect();
    assert!(
        names.is_empty(),
        "localLiveLog: false keeps no log artifact: {names:?}"
    );
}
