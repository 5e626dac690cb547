//! Support for docker-worker's end-to-end tests: the fixture image, Docker checks, and running the
//! `docker-worker` binary on a task.
//!
//! Tests that need Docker fail when it is missing; they never skip. Run `integration/setup.sh` first.
#![forbid(unsafe_code)]

pub mod bench;
pub mod daemon;
pub mod queue_double;
pub mod registry;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The fixture image `integration/setup.sh` builds from a static busybox.
pub fn fixture_image() -> &'static str {
    include_str!("../fixtures/test-image").trim()
}

/// Panic (fail the test) unless a Docker engine answers and the fixture image is there.
pub fn require_docker() {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "Docker is not answering ({}); run integration/setup.sh first. Tests that need Docker never skip.",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("the docker CLI could not run ({e}); run integration/setup.sh first"),
    }
    let image = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", fixture_image()])
        .output()
        .expect("docker image inspect runs");
    assert!(
        image.status.success(),
        "the fixture image {} is missing; run integration/setup.sh",
        fixture_image()
    );
}

/// Ids of all containers, running or not, that carry this task id label.
pub fn containers_of_task(task_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=docker-worker.task-id={task_id}"),
        ])
        .output()
        .expect("docker ps runs");
    assert!(
        out.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A unique task id for a test, so its containers can be found by label.
pub fn test_task_id(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// A finished `docker-worker run`.
#[derive(Debug)]
pub struct RunResult {
    /// The process's exit status.
    pub status: ExitStatus,
    /// What it printed on stdout: the task log.
    pub stdout: String,
    /// What it printed on stderr: the worker's own messages.
    pub stderr: String,
    /// The artifacts directory.
    pub artifacts: PathBuf,
    /// The task id used.
    pub task_id: String,
}

impl RunResult {
    /// The exit code (None if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The saved backing log.
    pub fn backing_log(&self) -> String {
        let path = self.artifacts.join("public/logs/live_backing.log");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// `summary.json` from the artifacts directory.
    pub fn summary(&self) -> Value {
        let path = self.artifacts.join("summary.json");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).expect("summary.json is JSON")
    }

    /// The summary's record of one artifact.
    pub fn artifact(&self, name: &str) -> Value {
        self.summary()["artifacts"]
            .as_array()
            .expect("artifacts array")
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no artifact {name} in {}", self.summary()))
    }

    /// The `[taskcluster …]` lines of the log (not `[taskcluster:error]`).
    pub fn taskcluster_lines(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("[taskcluster "))
            .map(str::to_string)
            .collect()
    }
}

/// A task run in a scratch directory.
pub struct Runner {
    /// The docker-worker binary.
    pub binary: PathBuf,
    /// Scratch space: the task file and the artifacts directory.
    pub dir: tempfile::TempDir,
    /// The task id passed with --task-id.
    pub task_id: String,
}

impl Runner {
    /// A runner for `binary` (pass `env!("CARGO_BIN_EXE_docker-worker")`).
    pub fn new(binary: &str, name: &str) -> Runner {
        require_docker();
        Runner {
            binary: PathBuf::from(binary),
            dir: tempfile::tempdir().expect("scratch dir"),
            task_id: test_task_id(name),
        }
    }

    /// Write the task file (a payload or a definition, as JSON) and return its path.
    pub fn write_task(&self, task: &Value) -> PathBuf {
        let path = self.dir.path().join("task.json");
        std::fs::write(&path, serde_json::to_vec_pretty(task).expect("task serializes")).expect("write task");
        path
    }

    /// The artifacts directory.
    pub fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// The command that runs this task.
    pub fn command(&self, task: &Value) -> Command {
        let file = self.write_task(task);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run")
            .arg(&file)
            .args(["--profile", "test", "--task-id", &self.task_id, "--artifacts-dir"])
            .arg(self.artifacts())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Run the task to its end, with a deadline.
    pub fn run(&self, task: &Value, deadline: Duration) -> RunResult {
        let child = self.command(task).spawn().expect("docker-worker starts");
        let mut running = Running::new(child, self.task_id.clone(), self.artifacts());
        running.finish(deadline)
    }

    /// Start the task and return while it runs.
    pub fn spawn(&self, task: &Value) -> Running {
        let child = self.command(task).spawn().expect("docker-worker starts");
        Running::new(child, self.task_id.clone(), self.artifacts())
    }
}

/// A `docker-worker run` that is still going; its stdout is read line by line as it comes.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout_reader: Option<thread::JoinHandle<()>>,
    stderr_reader: Option<thread::JoinHandle<String>>,
    task_id: String,
    artifacts: PathBuf,
}

impl Running {
    fn new(mut child: Child, task_id: String, artifacts: PathBuf) -> Running {
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let stdout_reader = thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
                if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                    break;
                }
                buf.clear();
            }
        });
        let stderr_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
            task_id,
            artifacts,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until a stdout line contains `needle`, failing the test after `deadline`.
    pub fn wait_for_line(&mut self, needle: &str, deadline: Duration) {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return;
        }
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {deadline:?}; output so far:\n{}",
                    self.seen.concat()
                ),
            }
        }
    }

    /// Send a signal by name (`TERM`, `INT`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Wait for the process to exit, killing it and failing the test after `deadline`.
    pub fn finish(&mut self, deadline: Duration) -> RunResult {
        let end = Instant::now() + deadline;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("docker-worker did not exit within {deadline:?}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.stdout_reader.take() {
            reader.join().expect("stdout reader");
        }
        self.seen.extend(self.lines.try_iter());
        let stderr = self
            .stderr_reader
            .take()
            .map(|r| r.join().expect("stderr reader"))
            .unwrap_or_default();
        RunResult {
            status,
            stdout: self.seen.concat(),
            stderr,
            artifacts: self.artifacts.clone(),
            task_id: self.task_id.clone(),
        }
    }
}

/// A payload on the fixture image running `script` under `/bin/sh -c`.
pub fn sh_payload(script: &str, max_run_time: u64) -> Value {
    serde_json::json!({
        "image": fixture_image(),
        "command": ["/bin/sh", "-c", script],
        "maxRunTime": max_run_time,
    })
}

/// Whether `path` exists below `dir`.
pub fn exists(dir: &Path, path: &str) -> bool {
    dir.join(path).exists()
}
