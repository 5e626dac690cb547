//! `docker-worker start` end to end: the worker binary claims tasks from the queue double and runs them
//! on the real Docker engine. These tests need Docker and fail without it; run `integration/setup.sh`.

use std::time::{Duration, Instant};

use docker_worker_integration::daemon::*;
use docker_worker_integration::queue_double::{Options, QueueDouble};
use docker_worker_integration::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_docker-worker");

#[test]
fn completed_failed_and_malformed_payload() {
    let double = QueueDouble::start(Options::default());
    let _daemon = Daemon::start(BIN, &double, &[]);
    let ok = create(&double, sh_payload("echo hello", 60));
    let bad = create(&double, sh_payload("exit 3", 60));
    let malformed = create(&double, json!({"image": fixture_image(), "maxRunTime": "soon"}));
    assert_eq!(
        run_state(&wait_resolved(&double, &ok, 0), 0),
        ("completed".into(), "completed".into())
    );
    assert_eq!(
        run_state(&wait_resolved(&double, &bad, 0), 0),
        ("failed".into(), "failed".into())
    );
    let status = wait_resolved(&double, &malformed, 0);
    assert_eq!(
        run_state(&status, 0),
        ("exception".into(), "malformed-payload".into())
    );
    assert_eq!(
        status["runs"].as_array().unwrap().len(),
        1,
        "a malformed payload is not retried"
    );
    for task in [&ok, &bad, &malformed] {
        assert_no_containers(task);
    }
}

#[test]
fn max_run_time_fails_the_task() {
    let double = QueueDouble::start(Options::default());
    let _daemon = Daemon::start(BIN, &double, &[]);
    let task = create(&double, sh_payload("sleep 30", 2));
    assert_eq!(
        run_state(&wait_resolved(&double, &task, 0), 0),
        ("failed".into(), "failed".into())
    );
    assert_no_containers(&task);
}

#[test]
fn a_retry_exit_status_gives_a_new_pending_run() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &[]);
    let mut payload = sh_payload("exit 36", 60);
    payload["onExitStatus"] = json!({"retry": [36]});
    let task = create_with(&double, payload, |d| d["retries"] = json!(1));
    let status = wait_resolved(&double, &task, 0);
    assert_eq!(
        run_state(&status, 0),
        ("exception".into(), "intermittent-task".into())
    );
    // The worker takes the retry too; that one exhausts the retries.
    let status = wait_resolved(&double, &task, 1);
    assert_eq!(status["runs"][1]["reasonCreated"], "task-retry");
    assert_eq!(
        run_state(&status, 1),
        ("exception".into(), "intermittent-task".into())
    );
    assert_eq!(status["runs"].as_array().unwrap().len(), 2);
    daemon.wait_for_event(
        "task resolved",
        |e| e["taskId"] == task.as_str() && e["runId"] == 1,
        Duration::from_secs(10),
    );
    assert_no_containers(&task);
}

#[test]
fn a_cancel_mid_run_kills_the_container_and_reports_nothing() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &[]);
    let task = create(&double, sh_payload("echo started; sleep 120", 180));
    daemon.wait_for_event(
        "task run",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(60),
    );
    let canceled_at = Instant::now();
    double.cancel_task(&task);
    daemon.wait_for_event(
        "cancel task",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(10),
    );
    assert_no_containers(&task);
    let gone_after = canceled_at.elapsed();
    daemon.wait_for_event(
        "task resolved",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(10),
    );
    assert!(
        gone_after < Duration::from_secs(5),
        "the container took {gone_after:?} to go"
    );
    eprintln!("cancel to container gone: {gone_after:?}");
    let status = double.status(&task);
    assert_eq!(run_state(&status, 0), ("exception".into(), "canceled".into()));
    for endpoint in ["reportCompleted", "reportFailed", "reportException"] {
        assert_eq!(
            double.calls(endpoint),
            0,
            "{endpoint} must not be called for a canceled run"
        );
    }
}

#[test]
fn a_deadline_passing_mid_run_stops_the_task() {
    let double = QueueDouble::start(Options {
        claim_timeout: Duration::from_secs(4),
        deadline_delay: Duration::from_secs(1),
        ..Options::default()
    });
    let mut daemon = Daemon::start(BIN, &double, &[]);
    let task = create_with(&double, sh_payload("sleep 120", 180), |d| {
        d["deadline"] = json!(chrono_now_plus(Duration::from_secs(6)));
    });
    daemon.wait_for_event(
        "cancel task",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(30),
    );
    assert_no_containers(&task);
    let status = wait_resolved(&double, &task, 0);
    assert_eq!(
        run_state(&status, 0),
        ("exception".into(), "deadline-exceeded".into())
    );
    for endpoint in ["reportCompleted", "reportFailed", "reportException"] {
        assert_eq!(double.calls(endpoint), 0);
    }
}

#[test]
fn reclaims_keep_a_task_alive_past_its_first_claim() {
    let double = QueueDouble::start(Options {
        claim_timeout: Duration::from_secs(3),
        ..Options::default()
    });
    let daemon = Daemon::start(BIN, &double, &[]);
    let task = create(&double, sh_payload("sleep 8; echo done", 60));
    let status = wait_resolved(&double, &task, 0);
    assert_eq!(run_state(&status, 0), ("completed".into(), "completed".into()));
    assert!(
        daemon.count("reclaimed task") >= 2,
        "reclaims: {}",
        daemon.count("reclaimed task")
    );
    let until: Vec<String> = daemon
        .events_of("reclaimed task")
        .iter()
        .map(|e| e["takenUntil"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(until.first() < until.last(), "takenUntil moves on: {until:?}");
}

#[test]
fn sigterm_resolves_running_tasks_as_worker_shutdown() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &[]);
    let task = create(&double, sh_payload("sleep 60", 120));
    daemon.wait_for_event(
        "task run",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(60),
    );
    daemon.signal("TERM");
    let exit = daemon.wait_exit(Duration::from_secs(60));
    assert!(exit.success(), "{exit:?}");
    let status = double.status(&task);
    assert_eq!(
        run_state(&status, 0),
        ("exception".into(), "worker-shutdown".into())
    );
    assert_eq!(status["runs"][1]["reasonCreated"], "retry");
    assert_eq!(status["runs"][1]["state"], "pending");
    assert_no_containers(&task);
}

#[test]
fn drain_finishes_running_tasks_and_claims_no_more() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &[]);
    let task = create(&double, sh_payload("sleep 3; echo done", 60));
    daemon.wait_for_event(
        "task run",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(60),
    );
    daemon.signal("QUIT");
    let exit = daemon.wait_exit(Duration::from_secs(60));
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        run_state(&double.status(&task), 0),
        ("completed".into(), "completed".into())
    );
    let later = create(&double, sh_payload("true", 60));
    assert_eq!(double.status(&later)["runs"][0]["state"], "pending");
}

#[test]
fn capacity_two_runs_at_most_two_at_once() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &["worker.capacity=2"]);
    let tasks: Vec<String> = (0..4)
        .map(|_| create(&double, sh_payload("sleep 2", 60)))
        .collect();
    for task in &tasks {
        wait_resolved(&double, task, 0);
    }
    daemon.wait_for_event("task resolved", |_| true, Duration::from_secs(5));
    let running: Vec<u64> = daemon
        .events_of("run task")
        .iter()
        .map(|e| e["running"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(running.len(), 4);
    assert!(running.iter().all(|r| *r <= 2), "{running:?}");
    assert!(running.contains(&2), "two ran at once: {running:?}");
    for task in &tasks {
        assert_eq!(run_state(&double.status(task), 0).0, "completed");
    }
}

#[test]
fn report_completed_is_retried_through_500s() {
    let double = QueueDouble::start(Options::default());
    let _daemon = Daemon::start(BIN, &double, &[]);
    double.fail_next("reportCompleted", 3);
    let task = create(&double, sh_payload("true", 60));
    assert_eq!(
        run_state(&wait_resolved(&double, &task, 0), 0),
        ("completed".into(), "completed".into())
    );
    assert_eq!(double.calls("reportCompleted"), 4);
}

#[test]
fn a_lost_claim_kills_the_container() {
    let double = QueueDouble::start(Options {
        claim_timeout: Duration::from_secs(3),
        ..Options::default()
    });
    // Only the reclaim may tell: no status polls during the test.
    let mut daemon = Daemon::start(BIN, &double, &["queue.cancel_poll_seconds=600"]);
    // The first reclaim arrives after the claim ran out, so the queue answers 409.
    double.delay_next("reclaimTask", 1, Duration::from_secs(4));
    let task = create_with(&double, sh_payload("sleep 120", 180), |d| d["retries"] = json!(0));
    daemon.wait_for_event(
        "error reclaiming task",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(30),
    );
    assert_no_containers(&task);
    daemon.wait_for_event(
        "task resolved",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(10),
    );
    let status = double.status(&task);
    assert_eq!(
        run_state(&status, 0),
        ("exception".into(), "claim-expired".into())
    );
    for endpoint in ["reportCompleted", "reportFailed", "reportException"] {
        assert_eq!(double.calls(endpoint), 0);
    }
}

#[test]
fn time_from_create_task_to_container_start() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &[]);
    let created = Instant::now();
    let task = create(&double, sh_payload("true", 60));
    daemon.wait_for_event(
        "task run",
        |e| e["taskId"] == task.as_str(),
        Duration::from_secs(60),
    );
    eprintln!("createTask to container start: {:?}", created.elapsed());
    wait_resolved(&double, &task, 0);
    assert_no_containers(&task);
}

fn chrono_now_plus(d: Duration) -> String {
    (chrono::Utc::now() + chrono::Duration::from_std(d).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn idle_shutdown_exits_after_the_idle_time_and_a_task_postpones_it() {
    let double = QueueDouble::start(Options::default());
    let mut daemon = Daemon::start(BIN, &double, &["shutdown.after_idle_seconds=3"]);
    let pending = daemon.wait_for_event("pending shutdown", |_| true, Duration::from_secs(10));
    assert_eq!(pending["time"], 3);
    let task = create(&double, sh_payload("sleep 1", 60));
    assert_eq!(run_state(&wait_resolved(&double, &task, 0), 0).0, "completed");
    let exit = daemon.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
    assert!(
        daemon.count("pending shutdown") >= 2,
        "the idle timer restarts after the task"
    );
    daemon.wait_for_event("exit", |_| true, Duration::from_secs(5));
}
