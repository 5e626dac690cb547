//! Fake actors for message-level tests: a scripted Docker and in-memory log and artifact sinks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use slog::{o, Discard, Logger};
use tokio::sync::watch;

use crate::artifacts::MemoryArtifactSink;
use crate::docker::*;
use crate::log_stream::{LogSink, MemorySink};
use crate::queue::QueueLink;
use crate::supervisor::{TaskResources, TaskResourcesFactory};
use crate::task::{TaskSpec, WorkerIdentity};
use crate::task_actor::TaskConfig;

/// How the fake container ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeExit {
    /// Exits with this status once its output is out.
    Code(i64),
    /// Runs until killed, then exits 137.
    UntilKilled,
    /// Runs this long, then exits with the status (or 137 when killed first).
    After(Duration, i64),
}

/// What the fake Docker does.
#[derive(Debug, Clone)]
pub struct FakeDockerScript {
    /// The result of `EnsureImage`.
    pub image: Result<(), ImageError>,
    /// `EnsureImage` never answers (a pull that hangs).
    pub image_hangs: bool,
    /// Fail `CreateContainer` with this.
    pub create_error: Option<DockerError>,
    /// Fail `StartContainer` with this.
    pub start_error: Option<DockerError>,
    /// The container's output, chunk by chunk.
    pub output: Vec<Bytes>,
    /// Panic while the TaskActor reads the output, after the chunks above.
    pub panic_in_output: bool,
    /// How the container ends.
    pub exit: FakeExit,
    /// Tar archives by container path; a path not listed is missing.
    pub archives: HashMap<String, Vec<u8>>,
}

impl Default for FakeDockerScript {
    fn default() -> Self {
        FakeDockerScript {
            image: Ok(()),
            image_hangs: false,
            create_error: None,
            start_error: None,
            output: vec![Bytes::from_static(b"hello\r\n")],
            panic_in_output: false,
            exit: FakeExit::Code(0),
            archives: HashMap::new(),
        }
    }
}

/// A Docker that follows a script and records every call, in order.
pub struct FakeDocker {
    script: FakeDockerScript,
    /// Calls as `"create"`, `"kill"`, `"copy_out:/path"`, …
    pub calls: Arc<Mutex<Vec<String>>>,
    /// The specs of created containers.
    pub created: Arc<Mutex<Vec<ContainerSpec>>>,
    killed: HashMap<String, watch::Sender<bool>>,
    next_id: usize,
}

impl FakeDocker {
    /// A fake following `script`.
    pub fn new(script: FakeDockerScript) -> FakeDocker {
        FakeDocker {
            script,
            calls: Arc::default(),
            created: Arc::default(),
            killed: HashMap::new(),
            next_id: 0,
        }
    }

    fn record(&self, call: impl Into<String>) {
        self.calls.lock().expect("calls lock").push(call.into());
    }

    fn killed(&mut self, container: &str) -> &watch::Sender<bool> {
        self.killed
            .entry(container.to_string())
            .or_insert_with(|| watch::channel(false).0)
    }

    fn until_killed(&mut self, container: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.killed(container).subscribe();
        async move {
            let _ = rx.wait_for(|k| *k).await;
        }
    }
}

impl Actor for FakeDocker {
    type Context = Context<Self>;
}

impl Handler<EnsureImage> for FakeDocker {
    type Result = ResponseFuture<Result<ImageReady, ImageError>>;
    fn handle(&mut self, msg: EnsureImage, _: &mut Context<Self>) -> Self::Result {
        self.record("ensure_image");
        let result = self.script.image.clone();
        let hangs = self.script.image_hangs;
        Box::pin(async move {
            if hangs {
                std::future::pending::<()>().await;
            }
            let _ = msg
                .progress
                .send(crate::log_stream::LogChunk::text(format!(
                    "{} exists in the cache.\r\n",
                    msg.image.describe()
                )))
                .await;
            result.map(|()| ImageReady {
                name: msg.image.describe(),
                id: format!("sha256:{}", msg.image.describe()),
                fetched: false,
                artifact_sha256: None,
                lease: None,
            })
        })
    }
}

impl Handler<CreateContainer> for FakeDocker {
    type Result = Result<String, DockerError>;
    fn handle(&mut self, msg: CreateContainer, _: &mut Context<Self>) -> Self::Result {
        self.record("create");
        if let Some(e) = self.script.create_error.clone() {
            return Err(e);
        }
        self.created.lock().expect("created lock").push(msg.0);
        self.next_id += 1;
        Ok(format!("container-{}", self.next_id))
    }
}

impl Handler<AttachContainer> for FakeDocker {
    type Result = Result<ByteStream, DockerError>;
    fn handle(&mut self, msg: AttachContainer, _: &mut Context<Self>) -> Self::Result {
        self.record("attach");
        let chunks: Vec<Result<Bytes, std::io::Error>> = self.script.output.iter().cloned().map(Ok).collect();
        let panic_in_output = self.script.panic_in_output;
        let until_killed = self.until_killed(&msg.0);
        let tail: ByteStream = match (panic_in_output, self.script.exit) {
            (true, _) => Box::pin(stream::once(async { panic!("the output decoder hit a bug") })),
            (false, FakeExit::UntilKilled) => {
                Box::pin(stream::once(until_killed).filter_map(|()| async { None }))
            }
            (false, FakeExit::Code(_)) => Box::pin(stream::empty()),
            (false, FakeExit::After(after, _)) => Box::pin(
                stream::once(async move {
                    tokio::select! {
                        _ = actix_rt::time::sleep(after) => {}
                        _ = until_killed => {}
                    }
                })
                .filter_map(|()| async { None }),
            ),
        };
        Ok(Box::pin(stream::iter(chunks).chain(tail)))
    }
}

impl Handler<StartContainer> for FakeDocker {
    type Result = Result<(), DockerError>;
    fn handle(&mut self, _: StartContainer, _: &mut Context<Self>) -> Self::Result {
        self.record("start");
        match self.script.start_error.clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Handler<WaitContainer> for FakeDocker {
    type Result = ResponseFuture<Result<i64, DockerError>>;
    fn handle(&mut self, msg: WaitContainer, _: &mut Context<Self>) -> Self::Result {
        self.record("wait");
        let exit = self.script.exit;
        let until_killed = self.until_killed(&msg.0);
        let already_killed = *self.killed(&msg.0).borrow();
        Box::pin(async move {
            match exit {
                FakeExit::Code(code) if !already_killed => Ok(code),
                FakeExit::After(after, code) if !already_killed => {
                    tokio::select! {
                        _ = actix_rt::time::sleep(after) => Ok(code),
                        _ = until_killed => Ok(137),
                    }
                }
                _ => {
                    until_killed.await;
                    Ok(137)
                }
            }
        })
    }
}

impl Handler<KillContainer> for FakeDocker {
    type Result = Result<(), DockerError>;
    fn handle(&mut self, msg: KillContainer, _: &mut Context<Self>) -> Self::Result {
        self.record("kill");
        self.killed(&msg.0).send_replace(true);
        Ok(())
    }
}

impl Handler<RemoveContainer> for FakeDocker {
    type Result = Result<(), DockerError>;
    fn handle(&mut self, msg: RemoveContainer, _: &mut Context<Self>) -> Self::Result {
        self.record("remove");
        // A forced removal kills a running container.
        self.killed(&msg.0).send_replace(true);
        Ok(())
    }
}

impl Handler<CopyFromContainer> for FakeDocker {
    type Result = Result<ByteStream, DockerError>;
    fn handle(&mut self, msg: CopyFromContainer, _: &mut Context<Self>) -> Self::Result {
        self.record(format!("copy_out:{}", msg.path));
        match self.script.archives.get(&msg.path) {
            Some(bytes) => {
                let chunk: Result<Bytes, std::io::Error> = Ok(Bytes::from(bytes.clone()));
                Ok(Box::pin(stream::iter(vec![chunk])))
            }
            None => Err(DockerError::NotFound(format!(
                "Could not find the file {} in container",
                msg.path
            ))),
        }
    }
}

impl Handler<RemoveTaskContainers> for FakeDocker {
    type Result = Result<usize, DockerError>;
    fn handle(&mut self, msg: RemoveTaskContainers, _: &mut Context<Self>) -> Self::Result {
        self.record(format!("remove_task_containers:{}", msg.task_id));
        Ok(0)
    }
}

/// A worker identity for tests.
pub fn test_identity() -> WorkerIdentity {
    WorkerIdentity {
        provisioner_id: "test-provisioner".into(),
        worker_type: "test-worker-type".into(),
        worker_group: "test-group".into(),
        worker_id: "test-worker".into(),
        worker_node_type: "test-worker".into(),
        public_ip: "127.0.0.1".into(),
        root_url: "http://taskcluster.test".into(),
        worker_location: None,
        hostname: "test-host".into(),
    }
}

/// Task settings for tests: short waits, no logging.
pub fn test_config() -> TaskConfig {
    TaskConfig {
        identity: test_identity(),
        shm_size: None,
        gzip_logs: false,
        output_drain: Duration::from_secs(5),
        kill_wait: Duration::from_secs(5),
        reclaim_divisor: 2,
        cancel_poll: Duration::from_millis(50),
        logger: Logger::root(Discard, o!()),
    }
}

/// What a task wrote, as a test sees it.
#[derive(Clone, Default)]
pub struct TaskRecord {
    /// The task log.
    pub log: MemorySink,
    /// The artifacts stored.
    pub artifacts: MemoryArtifactSink,
}

impl TaskRecord {
    /// The log as text.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&self.log.contents()).into_owned()
    }
}

/// Per-task actors writing to memory (and a scratch backing-log file), recorded by task id.
#[derive(Clone)]
pub struct MemoryFactory {
    /// The fake Docker's port, shared by all tasks.
    pub docker: DockerPort,
    /// What each task wrote, by task id.
    pub records: Arc<Mutex<HashMap<String, TaskRecord>>>,
}

impl MemoryFactory {
    /// A factory whose tasks use `docker`.
    pub fn new(docker: DockerPort) -> MemoryFactory {
        MemoryFactory {
            docker,
            records: Arc::default(),
        }
    }

    /// What task `task_id` wrote.
    pub fn record(&self, task_id: &str) -> TaskRecord {
        self.records.lock().expect("records lock")[task_id].clone()
    }
}

impl TaskResourcesFactory for MemoryFactory {
    fn create(&self, spec: &TaskSpec, _: Option<&QueueLink>) -> std::io::Result<TaskResources> {
        let record = TaskRecord::default();
        self.records
            .lock()
            .expect("records lock")
            .insert(spec.task_id.clone(), record.clone());
        TaskResources::start(
            self.docker.clone(),
            vec![LogSink::optional("memory", record.log.clone())],
            Arc::new(record.artifacts.clone()),
            None,
        )
    }
}
