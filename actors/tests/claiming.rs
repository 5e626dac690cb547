//! Message-level tests of the daemon's path: the Supervisor claims from a fake Queue, TaskActors keep
//! their claims alive and resolve exactly once, against a fake Docker.

use std::time::{Duration, Instant};

use actix::prelude::*;
use docker_worker_actors::docker::DockerPort;
use docker_worker_actors::lifecycle::{ExceptionReason, Resolution, StopReason};
use docker_worker_actors::queue::actor::fake::{fake_claim, FakeQueue, FakeQueueHandle, QueueCall};
use docker_worker_actors::queue::{QueueError, QueuePort};
use docker_worker_actors::supervisor::{ClaimSettings, Drain, Shutdown, Supervisor};
use docker_worker_actors::test_util::*;
use serde_json::{json, Value};
use tokio::sync::oneshot;

fn task(script: &str) -> Value {
    json!({
        "payload": {"image": "busybox", "command": ["/bin/sh", "-c", script], "maxRunTime": 60},
        "scopes": [],
        "expires": "2099-01-01T00:00:00.000Z",
    })
}

struct Worker {
    supervisor: Addr<Supervisor>,
    queue: FakeQueueHandle,
    docker_calls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    exit: oneshot::Receiver<()>,
}

fn worker(capacity: usize, script: FakeDockerScript, queue: FakeQueue) -> Worker {
    let docker = FakeDocker::new(script);
    let docker_calls = docker.calls.clone();
    let docker = DockerPort::from_addr(&docker.start());
    let handle = queue.handle();
    let port = QueuePort::from_addr(&queue.start());
    let (tx, exit) = oneshot::channel();
    let settings = ClaimSettings {
        queue: port,
        task_queue_id: "prov/wt".into(),
        worker_group: "wg".into(),
        worker_id: "wid".into(),
        min_interval: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        idle_shutdown: None,
    };
    let factory = MemoryFactory::new(docker.clone());
    let supervisor = Supervisor::new(capacity, docker, Box::new(factory), test_config())
        .claiming(settings, tx)
        .start();
    Worker {
        supervisor,
        queue: handle,
        docker_calls,
        exit,
    }
}

async fn until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until the fake Docker has seen this call.
async fn docker_saw(w: &Worker, call: &str) {
    until(&format!("a {call:?} call"), Duration::from_secs(10), || {
        w.docker_calls.lock().unwrap().iter().any(|c| c == call)
    })
    .await;
}

/// Wait until the container has been removed: the last thing a task does with Docker.
async fn docker_removed(w: &Worker) {
    until("the removal", Duration::from_secs(10), || {
        w.docker_calls.lock().unwrap().last().map(String::as_str) == Some("remove")
    })
    .await;
}

/// Wait until the Supervisor runs nothing: a TaskActor reports before it ends, so after this any
/// report it was going to make has been made.
async fn task_gone(w: &Worker) {
    let end = Instant::now() + Duration::from_secs(10);
    while w
        .supervisor
        .send(docker_worker_actors::supervisor::RunningTasks)
        .await
        .unwrap()
        > 0
    {
        assert!(Instant::now() < end, "the task did not end");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn claimed_tasks_resolve_exactly_once_and_claims_respect_capacity() {
    let queue = FakeQueue::new();
    let q = queue.handle();
    for id in ["A", "B", "C"] {
        q.push_claim(fake_claim(id, 0, task("true")));
    }
    let w = worker(2, FakeDockerScript::default(), queue);
    until("three resolutions", Duration::from_secs(10), || {
        ["A", "B", "C"]
            .iter()
            .all(|t| !w.queue.resolutions(t, 0).is_empty())
    })
    .await;
    for id in ["A", "B", "C"] {
        assert_eq!(
            w.queue.resolutions(id, 0),
            vec![Resolution::Completed],
            "task {id}"
        );
    }
    for call in w.queue.calls() {
        if let QueueCall::ClaimWork(c) = call {
            assert!(
                c.tasks >= 1 && c.tasks <= 2,
                "asked for {} with capacity 2",
                c.tasks
            );
        }
    }
    assert!(w.queue.stale_credential_calls().is_empty());
}

#[actix_rt::test]
async fn reclaims_switch_to_fresh_credentials_and_the_report_uses_them() {
    let queue = FakeQueue::new();
    let q = queue.handle();
    let mut claim = fake_claim("R", 0, task("sleep"));
    claim.taken_until = chrono::Utc::now() + chrono::Duration::milliseconds(400);
    q.push_claim(claim);
    q.set_reclaim_extension(Duration::from_millis(400));
    let script = FakeDockerScript {
        exit: FakeExit::After(Duration::from_millis(1500), 0),
        ..Default::default()
    };
    let w = worker(1, script, queue);
    until("the resolution", Duration::from_secs(10), || {
        !w.queue.resolutions("R", 0).is_empty()
    })
    .await;
    assert_eq!(w.queue.resolutions("R", 0), vec![Resolution::Completed]);
    assert!(
        w.queue.reclaims("R", 0) >= 3,
        "reclaims: {}",
        w.queue.reclaims("R", 0)
    );
    let resolve = &w.queue.resolve_calls("R", 0)[0];
    assert_eq!(
        Some(&resolve.credentials),
        w.queue.newest_credentials("R", 0).as_ref()
    );
    // A status read may race a reclaim and carry the previous (still valid) credentials; reclaims and
    // reports never may.
    let stale: Vec<_> = w
        .queue
        .stale_credential_calls()
        .into_iter()
        .filter(|c| !matches!(c, QueueCall::GetRunState(_)))
        .collect();
    assert!(stale.is_empty(), "{stale:#?}");
}

#[actix_rt::test]
async fn a_409_on_reclaim_kills_the_container_and_reports_nothing() {
    let queue = FakeQueue::new();
    let q = queue.handle();
    let mut claim = fake_claim("L", 0, task("sleep"));
    claim.taken_until = chrono::Utc::now() + chrono::Duration::milliseconds(200);
    q.push_claim(claim);
    q.conflict_after_reclaims(0);
    let script = FakeDockerScript {
        exit: FakeExit::UntilKilled,
        ..Default::default()
    };
    let w = worker(1, script, queue);
    docker_saw(&w, "kill").await;
    docker_removed(&w).await;
    task_gone(&w).await;
    assert!(
        w.queue.resolve_calls("L", 0).is_empty(),
        "a lost claim is never reported"
    );
}

#[actix_rt::test]
async fn a_cancel_is_noticed_between_reclaims() {
    let queue = FakeQueue::new();
    let q = queue.handle();
    q.push_claim(fake_claim("C", 0, task("sleep")));
    let script = FakeDockerScript {
        exit: FakeExit::UntilKilled,
        ..Default::default()
    };
    let w = worker(1, script, queue);
    docker_saw(&w, "wait").await;
    let canceled = Instant::now();
    w.queue.cancel("C", 0);
    docker_saw(&w, "kill").await;
    // The test config polls every 50 ms; the claim lasts 20 minutes, so no reclaim told us.
    assert!(canceled.elapsed() < Duration::from_secs(2));
    assert_eq!(w.queue.reclaims("C", 0), 0);
    docker_removed(&w).await;
    task_gone(&w).await;
    assert!(w.queue.resolve_calls("C", 0).is_empty());
}

#[actix_rt::test]
async fn shutdown_reports_worker_shutdown_and_then_lets_the_worker_exit() {
    let queue = FakeQueue::new();
    let q = queue.handle();
    q.push_claim(fake_claim("S", 0, task("sleep")));
    let script = FakeDockerScript {
        exit: FakeExit::UntilKilled,
        ..Default::default()
    };
    let w = worker(1, script, queue);
    docker_saw(&w, "wait").await;
    w.supervisor.do_send(Shutdown(StopReason::WorkerShutdown));
    tokio::time::timeout(Duration::from_secs(10), w.exit)
        .await
        .expect("exit within 10 s")
        .unwrap();
    assert_eq!(
        w.queue.resolutions("S", 0),
        vec![Resolution::Exception(ExceptionReason::WorkerShutdown)]
    );
}

#[actix_rt::test]
async fn drain_lets_the_running_task_finish_and_claims_nothing_more() {
    let queue = FakeQueue::new();
    let q = queue.handle();
    q.push_claim(fake_claim("D", 0, task("sleep")));
    let script = FakeDockerScript {
        exit: FakeExit::After(Duration::from_millis(500), 0),
        ..Default::default()
    };
    let w = worker(1, script, queue);
    docker_saw(&w, "wait").await;
    w.supervisor.do_send(Drain);
    let claims_at_drain = w.queue.claim_work_calls();
    w.queue.push_claim(fake_claim("late", 0, task("true")));
    tokio::time::timeout(Duration::from_secs(10), w.exit)
        .await
        .expect("exit within 10 s")
        .unwrap();
    assert_eq!(w.queue.resolutions("D", 0), vec![Resolution::Completed]);
    assert_eq!(
        w.queue.claim_work_calls(),
        claims_at_drain,
        "no claimWork after a drain"
    );
}

#[actix_rt::test]
async fn claim_errors_back_off_instead_of_spinning() {
    let queue = FakeQueue::new();
    let q = queue.handle();
    for _ in 0..3 {
        q.fail_next_claim(QueueError::Unavailable("queue down".into()));
    }
    q.push_claim(fake_claim("E", 0, task("true")));
    let w = worker(1, FakeDockerScript::default(), queue);
    let started = Instant::now();
    until("the resolution", Duration::from_secs(10), || {
        !w.queue.resolutions("E", 0).is_empty()
    })
    .await;
    // 20 + 40 + 80 ms of backoff at least.
    assert!(
        started.elapsed() >= Duration::from_millis(140),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.queue.resolutions("E", 0), vec![Resolution::Completed]);
}
