//! Supervisor: owns capacity and spawns one TaskActor per task. A task that dies, however it dies,
//! is resolved here and its containers removed; the Supervisor and the other tasks carry on.

use std::any::Any;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::{error, info, Logger};
use tokio::sync::oneshot;

use std::sync::Arc;

use crate::artifacts::{ArtifactPort, ArtifactSink, ArtifactUploadActor};
use crate::docker::{call, DockerPort, RemoveTaskContainers};
use crate::lifecycle::{ExceptionReason, Resolution, StopReason};
use crate::live_log::{live_log_url, LiveLogs};
use crate::log_stream::{LogProgress, LogSink, LogStreamActor};
use crate::queue::{self, Claim, ClaimWork, QueueLink, QueuePort, ResolveTask};
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
        live: Option<&LivePublish>,
    ) -> std::io::Result<TaskResources> {
        let scratch = tempfile::Builder::new().prefix("docker-worker-").tempdir()?;
        let backing = scratch.path().join("live_backing.log");
        let file = tokio::fs::File::from_std(std::fs::File::create(&backing)?);
        let (progress, watch) = LogProgress::channel();
        sinks.push(LogSink::required("backing log", tokio::io::BufWriter::new(file)).with_progress(progress));
        let registration = live.map(|l| l.logs.register(&backing, watch)).transpose()?;
        let live_log_url = registration
            .as_ref()
            .zip(live)
            .map(|(r, l)| live_log_url(&l.public_base, r.token()));
        let log = LogStreamActor::new(sinks).start();
        let artifacts = ArtifactUploadActor::new(artifact_sink).start();
        Ok(TaskResources {
            ports: TaskPorts {
                image_display: None,
                docker,
                log: LogPort {
                    chunk: log.clone().recipient(),
                    close: log.recipient(),
                },
                artifacts: ArtifactPort::from_addr(&artifacts),
                backing_log: Some(backing),
                queue: None,
                live_log_url,
            },
            // The registration goes before the directory, so no reader finds the token without its file.
            keep_alive: Box::new((registration, scratch)),
        })
    }
}

/// Where a task's live log is served: the worker's live log registry and its public base URL.
#[derive(Clone)]
pub struct LivePublish {
    /// The registry the worker's live log server serves from.
    pub logs: LiveLogs,
    /// `http(s)://<public host>:<port>`, as readers reach the server.
    pub public_base: String,
}

/// Builds the per-task actors (log, artifacts) for each new task.
pub trait TaskResourcesFactory: 'static {
    /// Resources for one task; called inside the actor system. `queue` is the claim, for a queue task.
    fn create(&self, spec: &TaskSpec, queue: Option<&QueueLink>) -> std::io::Result<TaskResources>;
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

/// Stop claiming and let the running tasks finish, then exit (SIGQUIT).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Drain;

/// How the Supervisor claims work from the Queue.
#[derive(Clone)]
pub struct ClaimSettings {
    /// The Queue.
    pub queue: QueuePort,
    /// `<provisionerId>/<workerType>`.
    pub task_queue_id: String,
    /// The worker group.
    pub worker_group: String,
    /// The worker id.
    pub worker_id: String,
    /// The least time between two `claimWork` calls.
    pub min_interval: Duration,
    /// The longest wait after failed `claimWork` calls (the wait doubles from `min_interval`).
    pub max_backoff: Duration,
    /// Exit after this long without a task; `None` never.
    pub idle_shutdown: Option<Duration>,
}

struct ClaimLoop {
    settings: ClaimSettings,
    /// The `claimWork` call under way, if any.
    in_flight: Option<SpawnHandle>,
    backoff: Duration,
    exit: Option<oneshot::Sender<()>>,
    /// Bumped whenever the worker gets busy, so a stale idle timer knows it is stale.
    idle_generation: u64,
    idle_pending: bool,
}

/// The Supervisor actor.
pub struct Supervisor {
    capacity: usize,
    docker: DockerPort,
    factory: Box<dyn TaskResourcesFactory>,
    config: TaskConfig,
    running: HashMap<(String, u32), Addr<TaskActor>>,
    stopping: Option<StopReason>,
    draining: bool,
    claiming: Option<ClaimLoop>,
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
            draining: false,
            claiming: None,
            logger,
        }
    }

    /// Claim work from the Queue as soon as the actor starts; `exit` fires once the worker may exit
    /// (after a shutdown, a drain or an idle timeout, with every task resolved).
    pub fn claiming(mut self, settings: ClaimSettings, exit: oneshot::Sender<()>) -> Self {
        self.claiming = Some(ClaimLoop {
            backoff: settings.min_interval,
            settings,
            in_flight: None,
            exit: Some(exit),
            idle_generation: 0,
            idle_pending: false,
        });
        self
    }

    fn accepting(&self) -> bool {
        self.stopping.is_none() && !self.draining
    }

    /// Start a TaskActor; the future yields its outcome, however the actor ends.
    fn start_task(
        &mut self,
        spec: TaskSpec,
        queue: Option<QueueLink>,
    ) -> Result<impl ActorFuture<Self, Output = TaskOutcome>, SupervisorError> {
        let mut resources =
            self.factory
                .create(&spec, queue.as_ref())
                .map_err(|e| SupervisorError::Resources {
                    task_id: spec.task_id.clone(),
                    error: e.to_string(),
                })?;
        resources.ports.queue = queue.clone();
        let key = (spec.task_id.clone(), spec.run_id);
        let (done_tx, done_rx) = oneshot::channel();
        let actor = TaskActor::new(spec, resources.ports, self.config.clone(), done_tx).start();
        if let Some(reason) = self.stopping {
            // Claimed while shutting down: it ends at once, as a worker shutdown.
            actor.do_send(StopTask(reason));
        }
        self.running.insert(key.clone(), actor);
        if let Some(claiming) = &mut self.claiming {
            claiming.idle_generation += 1;
            if std::mem::take(&mut claiming.idle_pending) {
                info!(self.logger, "cancel pending shutdown");
            }
        }
        info!(self.logger, "run task"; "taskId" => &key.0, "runId" => key.1, "running" => self.running.len());
        let docker = self.docker.clone();
        let logger = self.logger.clone();
        let keep_alive = resources.keep_alive;
        let started = Instant::now();
        let wait = async move {
            let outcome = match done_rx.await {
                Ok(outcome) => outcome,
                Err(_) => task_died(&docker, queue, &logger, &key, started.elapsed()).await,
            };
            drop(keep_alive);
            (key, outcome)
        };
        Ok(wait.into_actor(self).map(|(key, outcome), act, ctx| {
            act.running.remove(&key);
            act.after_task(ctx);
            outcome
        }))
    }

    /// A task ended: claim more, or exit if that is what we wait for.
    fn after_task(&mut self, ctx: &mut Context<Self>) {
        if self.running.is_empty() {
            self.became_idle(ctx);
        }
        self.poll(ctx);
        self.maybe_exit();
    }

    /// Ask the Queue for work if there is room and no request is out.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        let free = self.capacity.saturating_sub(self.running.len());
        let accepting = self.accepting();
        let Some(claiming) = &mut self.claiming else {
            return;
        };
        if claiming.in_flight.is_some() || free == 0 || !accepting {
            return;
        }
        let s = &claiming.settings;
        let request = ClaimWork {
            task_queue_id: s.task_queue_id.clone(),
            worker_group: s.worker_group.clone(),
            worker_id: s.worker_id.clone(),
            tasks: free.min(32) as u32,
        };
        let port = s.queue.claim_work.clone();
        let asked = Instant::now();
        let handle = ctx.spawn(async move { queue::call(&port, request).await }.into_actor(self).map(
            move |result, act, ctx| {
                let Some(claiming) = &mut act.claiming else { return };
                claiming.in_flight = None;
                let min = claiming.settings.min_interval;
                let next = match result {
                    Ok(claims) => {
                        claiming.backoff = min;
                        let got = !claims.is_empty();
                        for claim in claims {
                            act.take_claim(ctx, claim);
                        }
                        if got {
                            Duration::ZERO
                        } else {
                            min.saturating_sub(asked.elapsed())
                        }
                    }
                    Err(e) => {
                        let wait = claiming.backoff;
                        claiming.backoff = (wait * 2).min(claiming.settings.max_backoff);
                        error!(act.logger, "[alert-operator] task retrieval error"; "error" => %e, "retryIn" => wait.as_secs_f64());
                        wait
                    }
                };
                act.maybe_exit();
                ctx.run_later(next, |act, ctx| act.poll(ctx));
            },
        ));
        if let Some(claiming) = &mut self.claiming {
            claiming.in_flight = Some(handle);
        }
    }

    /// Stop waiting for work. The Queue aborts a claim whose caller went away, so dropping the long
    /// poll lets a shutdown or drain proceed at once instead of up to 20 s later.
    fn abandon_claim(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.claiming.as_mut().and_then(|c| c.in_flight.take()) {
            ctx.cancel_future(handle);
            info!(self.logger, "claim abandoned");
        }
    }

    fn take_claim(&mut self, ctx: &mut Context<Self>, claim: Claim) {
        info!(self.logger, "claimed task"; "taskId" => &claim.task_id, "runId" => claim.run_id);
        let Some(claiming) = &self.claiming else { return };
        let link = QueueLink {
            port: claiming.settings.queue.clone(),
            credentials: claim.credentials.clone(),
            shared_credentials: std::sync::Arc::new(std::sync::Mutex::new(claim.credentials.clone())),
            taken_until: claim.taken_until,
        };
        let spec = TaskSpec::from_definition(&claim.task_id, claim.run_id, &claim.task);
        match self.start_task(spec, Some(link.clone())) {
            Ok(task) => {
                ctx.spawn(task.map(|_, _, _| ()));
            }
            Err(e) => {
                // The worker could not even prepare the task: that is our fault, and the run must still end.
                error!(self.logger, "task error"; "taskId" => &claim.task_id, "error" => %e);
                let resolve = ResolveTask {
                    task_id: claim.task_id.clone(),
                    run_id: claim.run_id,
                    credentials: claim.credentials,
                    resolution: Resolution::Exception(ExceptionReason::InternalError),
                };
                let port = link.port.resolve.clone();
                let logger = self.logger.clone();
                actix_rt::spawn(async move {
                    if let Err(e) = queue::call(&port, resolve).await {
                        error!(logger, "error resolving task"; "error" => %e);
                    }
                });
            }
        }
    }

    /// Start the idle timer, if idle shutdown is on.
    fn became_idle(&mut self, ctx: &mut Context<Self>) {
        let accepting = self.accepting();
        let Some(claiming) = &mut self.claiming else {
            return;
        };
        let Some(after) = claiming.settings.idle_shutdown else {
            return;
        };
        if !accepting {
            return;
        }
        claiming.idle_generation += 1;
        claiming.idle_pending = true;
        let generation = claiming.idle_generation;
        info!(self.logger, "pending shutdown"; "time" => after.as_secs());
        ctx.run_later(after, move |act, _| {
            let still_idle = act.running.is_empty()
                && act
                    .claiming
                    .as_ref()
                    .is_some_and(|c| c.idle_generation == generation);
            if still_idle && act.accepting() {
                info!(act.logger, "shutdown"; "reason" => "idle");
                act.draining = true;
                act.maybe_exit();
            }
        });
    }

    /// Fire the exit signal once nothing runs and no claim is out.
    fn maybe_exit(&mut self) {
        if self.accepting() || !self.running.is_empty() {
            return;
        }
        if let Some(claiming) = &mut self.claiming {
            if claiming.in_flight.is_some() {
                return;
            }
            if let Some(exit) = claiming.exit.take() {
                info!(self.logger, "exit");
                let _ = exit.send(());
            }
        }
    }
}

/// A TaskActor went away without an outcome: remove its containers, and resolve a queue task as the
/// worker's fault, since its run must still end.
async fn task_died(
    docker: &DockerPort,
    queue: Option<QueueLink>,
    logger: &Logger,
    key: &(String, u32),
    elapsed: Duration,
) -> TaskOutcome {
    error!(logger, "task actor died"; "taskId" => &key.0, "runId" => key.1);
    let cleanup = RemoveTaskContainers {
        task_id: key.0.clone(),
        run_id: key.1,
    };
    if let Err(e) = call(&docker.remove_task_containers, cleanup).await {
        error!(logger, "container removal error"; "taskId" => &key.0, "error" => %e);
    }
    let resolution = Resolution::Exception(ExceptionReason::InternalError);
    if let Some(link) = queue {
        let resolve = ResolveTask {
            task_id: key.0.clone(),
            run_id: key.1,
            credentials: link.credentials,
            resolution,
        };
        if let Err(e) = queue::call(&link.port.resolve, resolve).await {
            error!(logger, "error resolving task"; "taskId" => &key.0, "error" => %e);
        }
    }
    TaskOutcome {
        task_id: key.0.clone(),
        run_id: key.1,
        resolution,
        exit_code: None,
        payload_errors: Vec::new(),
        artifacts: Vec::new(),
        duration: elapsed,
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.claiming.is_some() {
            self.became_idle(ctx);
            self.poll(ctx);
        }
    }
}

impl Handler<RunTask> for Supervisor {
    type Result = ResponseActFuture<Self, Result<TaskOutcome, SupervisorError>>;

    fn handle(&mut self, msg: RunTask, _: &mut Context<Self>) -> Self::Result {
        if !self.accepting() {
            return Box::pin(fut::ready(Err(SupervisorError::ShuttingDown)));
        }
        if self.running.len() >= self.capacity {
            return Box::pin(fut::ready(Err(SupervisorError::AtCapacity(self.capacity))));
        }
        match self.start_task(msg.0, None) {
            Ok(task) => Box::pin(task.map(|outcome, _, _| Ok(outcome))),
            Err(e) => Box::pin(fut::ready(Err(e))),
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) {
        self.abandon_claim(ctx);
        if self.stopping.is_none() {
            info!(self.logger, "shutdown"; "reason" => ?msg.0, "running" => self.running.len());
        }
        self.stopping.get_or_insert(msg.0);
        for task in self.running.values() {
            task.do_send(StopTask(msg.0));
        }
        self.maybe_exit();
    }
}

impl Handler<Drain> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.abandon_claim(ctx);
        if !self.draining {
            info!(self.logger, "draining"; "running" => self.running.len());
        }
        self.draining = true;
        self.maybe_exit();
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
