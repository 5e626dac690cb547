//! A `docker-worker start` process against the queue double, for end-to-end tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::queue_double::QueueDouble;
use crate::{containers_of_task, require_docker, test_task_id};

/// The task queue the tests use.
pub const TASK_QUEUE: &str = "docker-worker-test/e2e";
/// The worker group the tests use.
pub const WORKER_GROUP: &str = "e2e-group";

/// A running daemon whose JSON events are collected as they come; dropped, it gets SIGTERM.
pub struct Daemon {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    arrived: mpsc::Receiver<()>,
    _config: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Start `binary` against the double, with extra `--set` overrides.
    pub fn start(binary: &str, double: &QueueDouble, overrides: &[&str]) -> Daemon {
        Daemon::start_with_config(binary, double, "", overrides)
    }

    /// Start `binary` with a `--config` file holding `toml` (for settings `--set` can't express, such as
    /// `registries` keyed by `host:port/`), and extra `--set` overrides.
    pub fn start_with_config(binary: &str, double: &QueueDouble, toml: &str, overrides: &[&str]) -> Daemon {
        require_docker();
        let config = (!toml.is_empty()).then(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            std::fs::write(dir.path().join("worker.toml"), toml).expect("the config file is written");
            dir
        });
        let worker_id = test_task_id("w");
        let (client_id, token) = (format!("worker/{worker_id}"), "worker-secret-token".to_string());
        double.add_client(
            &client_id,
            &token,
            vec![
                format!("queue:claim-work:{TASK_QUEUE}"),
                format!("queue:worker-id:{WORKER_GROUP}/{worker_id}"),
            ],
        );
        let mut cmd = Command::new(binary);
        cmd.args(["start", "--profile", "test"]);
        if let Some(dir) = &config {
            cmd.arg("--config").arg(dir.path().join("worker.toml"));
        }
        let settings = [
            format!("worker.root_url={}", double.root_url()),
            format!("queue.client_id={client_id}"),
            format!("queue.access_token={token}"),
            format!("queue.task_queue_id={TASK_QUEUE}"),
            format!("worker.worker_group={WORKER_GROUP}"),
            format!("worker.worker_id={worker_id}"),
            "queue.cancel_poll_seconds=1".to_string(),
            "queue.claim_min_interval_ms=100".to_string(),
            "queue.retry_initial_delay_ms=100".to_string(),
        ];
        for s in settings
            .iter()
            .map(String::as_str)
            .chain(overrides.iter().copied())
        {
            cmd.args(["--set", s]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("docker-worker start runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let (tx, arrived) = mpsc::channel();
        {
            let events = events.clone();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(event) = serde_json::from_str::<Value>(&line) {
                        events.lock().unwrap().push(event);
                        let _ = tx.send(());
                    } else {
                        eprintln!("worker: {line}");
                    }
                }
            });
        }
        let mut daemon = Daemon {
            child,
            events,
            arrived,
            _config: config,
        };
        daemon.wait_for_event("start", |_| true, Duration::from_secs(30));
        daemon
    }

    /// Wait until an event of this type that satisfies `pred` has been logged.
    pub fn wait_for_event(&mut self, kind: &str, pred: impl Fn(&Value) -> bool, deadline: Duration) -> Value {
        let end = Instant::now() + deadline;
        loop {
            if let Some(found) = self
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["type"] == kind && pred(e))
            {
                return found.clone();
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {kind:?} event within {deadline:?}; events: {:#?}",
                    self.events.lock().unwrap()
                );
            }
            let _ = self.arrived.recv_timeout(left.min(Duration::from_millis(200)));
        }
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many events of this type were logged.
    pub fn count(&self, kind: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == kind)
            .count()
    }

    /// The events of this type, in order.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    }

    /// Send a signal by name (`TERM`, `QUIT`) to the worker.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Wait for the process to exit, failing after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "the worker did not exit within {deadline:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("TERM");
            let end = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Create a task on the test queue with this payload; returns its id.
pub fn create(double: &QueueDouble, payload: Value) -> String {
    create_with(double, payload, |_| {})
}

/// Create a task, editing its definition first.
pub fn create_with(double: &QueueDouble, payload: Value, edit: impl FnOnce(&mut Value)) -> String {
    let task_id = QueueDouble::new_task_id();
    let mut definition = QueueDouble::task_definition(TASK_QUEUE, payload);
    edit(&mut definition);
    double.create_task(&task_id, definition);
    task_id
}

/// A run's state and reasonResolved.
pub fn run_state(status: &Value, run: usize) -> (String, String) {
    let r = &status["runs"][run];
    (
        r["state"].as_str().unwrap_or_default().to_string(),
        r["reasonResolved"].as_str().unwrap_or_default().to_string(),
    )
}

/// Wait until a run is resolved; its task status.
pub fn wait_resolved(double: &QueueDouble, task_id: &str, run: usize) -> Value {
    double.wait_for(
        task_id,
        |s| {
            let state = s["runs"][run]["state"].as_str().unwrap_or("");
            !state.is_empty() && state != "pending" && state != "running"
        },
        Duration::from_secs(120),
    )
}

/// Fail unless the task's containers are gone (within 10 s).
pub fn assert_no_containers(task_id: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left = containers_of_task(task_id);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "containers left behind for {task_id}: {left:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
