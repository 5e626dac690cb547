//! The worker under test: a `docker-worker start` process with the shipped settings (`--profile
//! production`) plus only what pointing it at the queue double needs, and readings of its memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::engine::Engine;
use super::BenchError;
use crate::queue_double::{new_task_id, task_definition, QueueDouble};

/// The worker group of every bench worker.
pub const WORKER_GROUP: &str = "bench";

/// A running `docker-worker start`; dropped, it gets SIGTERM.
pub struct Worker {
    child: Child,
    /// Its worker id; every container it makes carries it in the label `docker-worker.worker-id`.
    pub worker_id: String,
    /// The task queue it claims from, its own, so no other worker takes its tasks.
    pub task_queue: String,
}

impl Worker {
    /// Start `binary` against `double` with `capacity` slots and extra `--set` overrides; its output goes
    /// to `log`. Returns once it has logged its `start` event.
    pub fn start(
        binary: &Path,
        double: &QueueDouble,
        log: &Path,
        capacity: usize,
        overrides: &[String],
    ) -> Result<Worker, BenchError> {
        Worker::start_with_config(binary, double, log, capacity, "", overrides)
    }

    /// [`Worker::start`] with a `--config` file holding `toml` (for settings `--set` can't express, such as
    /// `registries` keyed by `host:port/`), written beside the log.
    pub fn start_with_config(
        binary: &Path,
        double: &QueueDouble,
        log: &Path,
        capacity: usize,
        toml: &str,
        overrides: &[String],
    ) -> Result<Worker, BenchError> {
        let short: String = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let worker_id = format!("bench-{short}");
        // The worker type part must start with a letter.
        let task_queue = format!("docker-worker-bench/w{short}");
        let (client_id, token) = (format!("worker/{worker_id}"), format!("token-{short}-{short}"));
        double.add_client(
            &client_id,
            &token,
            [
                format!("queue:claim-work:{task_queue}"),
                format!("queue:worker-id:{WORKER_GROUP}/{worker_id}"),
            ],
        );
        let settings = [
            format!("worker.root_url={}", double.root_url()),
            format!("queue.client_id={client_id}"),
            format!("queue.access_token={token}"),
            format!("queue.task_queue_id={task_queue}"),
            format!("worker.worker_group={WORKER_GROUP}"),
            format!("worker.worker_id={worker_id}"),
            format!("worker.capacity={capacity}"),
            // The live log on loopback, on a free port, published with an address that resolves here.
            "worker.public_ip=127.0.0.1".to_string(),
            "live_log.bind=127.0.0.1:0".to_string(),
        ];
        let mut cmd = Command::new(binary);
        cmd.args(["start", "--profile", "production"]);
        if !toml.is_empty() {
            let config = log.with_extension("toml");
            std::fs::write(&config, toml).map_err(|e| BenchError::Io(config.display().to_string(), e))?;
            cmd.arg("--config").arg(&config);
        }
        for s in settings.iter().chain(overrides) {
            cmd.args(["--set", s]);
        }
        let file = File::create(log).map_err(|e| BenchError::Io(log.display().to_string(), e))?;
        let stderr = file
            .try_clone()
            .map_err(|e| BenchError::Io(log.display().to_string(), e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::Io(format!("starting {}", binary.display()), e))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (started_tx, started) = mpsc::channel();
        thread::spawn(move || {
            let mut file = file;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    if event["type"] == "start" {
                        let _ = started_tx.send(());
                    }
                }
            }
        });
        let mut worker = Worker {
            child,
            worker_id,
            task_queue,
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if started.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(worker);
            }
            if let Some(status) = worker.child.try_wait().ok().flatten() {
                return Err(BenchError::Worker(format!(
                    "it exited ({status}) before starting; see {}",
                    log.display()
                )));
            }
            if Instant::now() > end {
                return Err(BenchError::Worker(format!(
                    "no start event within 30 s; see {}",
                    log.display()
                )));
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> Result<u64, BenchError> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).map_err(|e| BenchError::Io(path.clone(), e))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| BenchError::Broken(format!("{path} has no {field}")))
    }

    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> Result<f64, BenchError> {
        Ok(self.status_kib("VmRSS")? as f64 / 1024.0)
    }

    /// The peak resident memory since the last [`Worker::reset_peak`] (or the start), in MiB.
    pub fn peak_mib(&self) -> Result<f64, BenchError> {
        Ok(self.status_kib("VmHWM")? as f64 / 1024.0)
    }

    /// Reset the kernel's peak resident memory mark (`VmHWM`) to the present resident size.
    pub fn reset_peak(&self) -> Result<(), BenchError> {
        let path = format!("/proc/{}/clear_refs", self.pid());
        std::fs::write(&path, "5").map_err(|e| BenchError::Io(path, e))
    }

    /// Create a task on this worker's queue; its id.
    pub fn create(&self, double: &QueueDouble, payload: Value) -> String {
        let task_id = new_task_id();
        double.create_task(&task_id, task_definition(&self.task_queue, payload));
        task_id
    }

    /// Create a task holding `scopes` on this worker's queue; its id.
    pub fn create_scoped(&self, double: &QueueDouble, payload: Value, scopes: &[String]) -> String {
        let task_id = new_task_id();
        let mut definition = task_definition(&self.task_queue, payload);
        definition["scopes"] = serde_json::json!(scopes);
        double.create_task(&task_id, definition);
        task_id
    }

    /// SIGTERM, wait for the exit, then check that no container of this worker is left.
    pub fn stop(mut self, engine: &Engine) -> Result<(), BenchError> {
        self.terminate();
        let label = format!("docker-worker.worker-id={}", self.worker_id);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let left = engine.containers_labelled(&label)?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > end {
                engine.remove_all(&left);
                return Err(BenchError::Worker(format!("containers left behind: {left:?}")));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Wait until the task's run 0 is resolved; its `(state, reasonResolved)`.
pub fn wait_resolved(double: &QueueDouble, task_id: &str, timeout: Duration) -> (String, String) {
    let status = double.wait_for(
        task_id,
        |s| {
            let state = s["runs"][0]["state"].as_str().unwrap_or("");
            !state.is_empty() && state != "pending" && state != "running"
        },
        timeout,
    );
    let run = &status["runs"][0];
    (
        run["state"].as_str().unwrap_or_default().to_string(),
        run["reasonResolved"].as_str().unwrap_or_default().to_string(),
    )
}

/// Wait until the task completed; an error naming how it ended otherwise.
pub fn wait_completed(double: &QueueDouble, task_id: &str, timeout: Duration) -> Result<(), BenchError> {
    match wait_resolved(double, task_id, timeout) {
        (state, _) if state == "completed" => Ok(()),
        (state, reason) => Err(BenchError::Broken(format!(
            "task {task_id} ended {state}/{reason}, not completed"
        ))),
    }
}
