//! Supervisor: owns capacity and spawns one TaskActor per task. A task that dies, however it dies,
//! is resolved here and its containers removed; the Supervisor and the other tasks carry on.

use std::any::Any;
use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use slog::{error, info, Logger};
use tokio::sync::oneshot;

use std::sync::Arc;

use crate::artifacts::{ArtifactPort, ArtifactSink, ArtifactUploadActor};
use crate::docker::{call, DockerPort, RemoveTaskContainers};
use crate::lifecycle::{ExceptionReason, Resolution, StopReason};
use crate::log_stream::{LogSink, LogStreamActor};
use crate::task::TaskSpec;
use crate::task_actor::{LogPort, StopTask, TaskActor, TaskConfig, TaskOutcome, TaskPorts};

/// A task's ports plus whatever must live as long as the task (its scratch directory).
pub struct TaskResources {
    /// The actors the task talks to.
    pub ports: TaskPorts,
    /// Dropped when the task has ended.
    pub keep_alive: Box<dyn Any>,
}

impl TaskResources {
    /// Start a task's log and artifact actors: the log goes to `sinks` and to a backing file in a scratch
    /// directory that lives as long as the task; artifacts go to `artifact_sink`.
    pub fn start(
        docker: DockerPort,
        mut sinks: Vec<LogSink>,
        artifact_sink: Arc<dyn ArtifactSink>,
    ) -> std::io::Result<TaskResources> {
        let scratch = tempfile::Builder::new().prefix("docker-worker-").tempdir()?;
        let backing = scratch.path().join("live_backing.log");
        let file = tokio::fs::File::from_std(std::fs::File::create(&backing)?);
        sinks.push(LogSink::required("backing log", tokio::io::BufWriter::new(file)));
        let log = LogStreamActor::new(sinks).start();
        let artifacts = ArtifactUploadActor::new(artifact_sink).start();
        Ok(TaskResources {
            ports: TaskPorts {
                docker,
                log: LogPort {
                    chunk: log.clone().recipient(),
                    close: log.recipient(),
                },
                artifacts: ArtifactPort::from_addr(&artifacts),
                backing_log: Some(backing),
            },
            keep_alive: Box::new(scratch),
        })
    }
}

/// Builds the per-task actors (log, artifacts) for each new task.
pub trait TaskResourcesFactory: 'static {
    /// Resources for one task; called inside the actor system.
    fn create(&self, spec: &TaskSpec) -> std::io::Result<TaskResources>;
}

/// The Supervisor could not take a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    /// Every slot is busy.
    #[error("no free capacity (capacity {0})")]
    AtCapacity(usize),
    /// The worker is shutting down.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// The task's resources could not be prepared.
    #[error("could not prepare task {task_id}: {error}")]
    Resources {
        /// The task.
        task_id: String,
        /// The error.
        error: String,
    },
}

/// Run one task to its end.
#[derive(Message)]
#[rtype(result = "Result<TaskOutcome, SupervisorError>")]
pub struct RunTask(pub TaskSpec);

/// Stop every running task and take no new ones.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Shutdown(pub StopReason);

/// The queue says this run is over: stop it without reporting anything.
#[derive(Message, Debug, Clone)]
#[rtype(result = "bool")]
pub struct CancelTask {
    /// The task.
    pub task_id: String,
    /// The run.
    pub run_id: u32,
}

/// How many tasks run now.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "usize")]
pub struct RunningTasks;

/// The Supervisor actor.
pub struct Supervisor {
    capacity: usize,
    docker: DockerPort,
    factory: Box<dyn TaskResourcesFactory>,
    config: TaskConfig,
    running: HashMap<(String, u32), Addr<TaskActor>>,
    stopping: Option<StopReason>,
    logger: Logger,
}

impl Supervisor {
    /// A Supervisor running up to `capacity` tasks at once.
    pub fn new(
        capacity: usize,
        docker: DockerPort,
        factory: Box<dyn TaskResourcesFactory>,
        config: TaskConfig,
    ) -> Self {
        let logger = config.logger.clone();
        Supervisor {
            capacity,
            docker,
            factory,
            config,
            running: HashMap::new(),
            stopping: None,
            logger,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Handler<RunTask> for Supervisor {
    type Result = ResponseActFuture<Self, Result<TaskOutcome, SupervisorError>>;

    fn handle(&mut self, msg: RunTask, _: &mut Context<Self>) -> Self::Result {
        let spec = msg.0;
        if self.stopping.is_some() {
            return Box::pin(fut::ready(Err(SupervisorError::ShuttingDown)));
        }
        if self.running.len() >= self.capacity {
            return Box::pin(fut::ready(Err(SupervisorError::AtCapacity(self.capacity))));
        }
        let resources = match self.factory.create(&spec) {
            Ok(r) => r,
            Err(e) => {
                return Box::pin(fut::ready(Err(SupervisorError::Resources {
                    task_id: spec.task_id.clone(),
                    error: e.to_string(),
                })))
            }
        };
        let key = (spec.task_id.clone(), spec.run_id);
        let (done_tx, done_rx) = oneshot::channel();
        let actor = TaskActor::new(spec, resources.ports, self.config.clone(), done_tx).start();
        self.running.insert(key.clone(), actor);
        info!(self.logger, "run task"; "taskId" => &key.0, "runId" => key.1, "running" => self.running.len());
        let docker = self.docker.clone();
        let logger = self.logger.clone();
        let keep_alive = resources.keep_alive;
        let started = Instant::now();
        let wait = async move {
            let outcome = match done_rx.await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // The TaskActor went away without an outcome: resolve it here and clean up after it.
                    error!(logger, "task actor died"; "taskId" => &key.0, "runId" => key.1);
                    let cleanup = RemoveTaskContainers {
                        task_id: key.0.clone(),
                        run_id: key.1,
                    };
                    if let Err(e) = call(&docker.remove_task_containers, cleanup).await {
                        error!(logger, "container removal error"; "taskId" => &key.0, "error" => %e);
                    }
                    TaskOutcome {
                        task_id: key.0.clone(),
                        run_id: key.1,
                        resolution: Resolution::Exception(ExceptionReason::InternalError),
                        exit_code: None,
                        payload_errors: Vec::new(),
                        artifacts: Vec::new(),
                        duration: started.elapsed(),
                    }
                }
            };
            drop(keep_alive);
            (key, outcome)
        };
        Box::pin(wait.into_actor(self).map(|(key, outcome), act, _| {
            act.running.remove(&key);
            Ok(outcome)
        }))
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) {
        if self.stopping.is_none() {
            info!(self.logger, "shutdown"; "reason" => ?msg.0, "running" => self.running.len());
        }
        self.stopping.get_or_insert(msg.0);
        for task in self.running.values() {
            task.do_send(StopTask(msg.0));
        }
    }
}

impl Handler<CancelTask> for Supervisor {
    type Result = bool;

    fn handle(&mut self, msg: CancelTask, _: &mut Context<Self>) -> bool {
        match self.running.get(&(msg.task_id, msg.run_id)) {
            Some(task) => {
                task.do_send(StopTask(StopReason::Canceled));
                true
            }
            None => false,
        }
    }
}

impl Handler<RunningTasks> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: RunningTasks, _: &mut Context<Self>) -> usize {
        self.running.len()
    }
}
