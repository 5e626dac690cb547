//! TaskActor: drives one task run, reaching Docker, the log and artifact storage only through messages.
//! Whatever happens inside (a timeout, a stop, an error, a panic) ends here as one resolution, with the
//! container removed and the log written.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::{FutureExt, StreamExt};
use slog::{error, info, o, warn, Logger};
use tokio::sync::{oneshot, watch};

use crate::artifacts::{
    ArtifactMeta, ArtifactPort, ArtifactReport, CreateLink, CreateReference, FinishArtifacts, RecordMissing,
    RetryEntry, StoredArtifact, UploadFile, UploadFromArchive,
};
use crate::docker::{
    call, AttachContainer, ByteStream, ContainerSpec, CopyFromContainer, CreateContainer, DockerError,
    DockerPort, EnsureImage, KillContainer, RemoveContainer, StartContainer, WaitContainer, LABEL_MANAGED,
    LABEL_RUN_ID, LABEL_TASK_ID, LABEL_WORKER_ID,
};
use crate::images::{ImageLease, ImageProgress};
use crate::lifecycle::{ExceptionReason, ExitPolicy, Resolution, StopReason, TaskEvent, TaskState};
use crate::log_stream::{CloseLog, LogChunk, LogError};
use crate::logfmt::{fmt_error_log, fmt_log, footer, header, HeaderFields};
use crate::payload::{parse_payload, parse_task_payload, ArtifactKind, Feature, Payload};
use crate::queue::{self, GetRunState, QueueError, QueueLink, ReclaimTask, ResolveTask, RunState};
use crate::task::{TaskSpec, WorkerIdentity};

/// The message docker-worker wrote when a task was canceled.
pub const CANCEL_MESSAGE: &str = "Task was canceled by another entity. This can happen using a taskcluster client or by cancelling a task within Treeherder.";

/// Attempts at uploading one artifact file, and the first wait between them (it doubles).
pub const ARTIFACT_ATTEMPTS: u32 = 5;
const ARTIFACT_RETRY_DELAY: Duration = Duration::from_millis(500);

/// The features this worker implements today; any other requested feature fails the task with a clear message.
pub const SUPPORTED_FEATURES: &[Feature] = &[Feature::LocalLiveLog, Feature::Artifacts, Feature::BulkLog];

/// How the log reaches its actor.
#[derive(Clone)]
pub struct LogPort {
    /// Write a chunk.
    pub chunk: Recipient<LogChunk>,
    /// Flush and close.
    pub close: Recipient<CloseLog>,
}

/// Everything a TaskActor talks to.
#[derive(Clone)]
pub struct TaskPorts {
    /// Docker.
    pub docker: DockerPort,
    /// The task log.
    pub log: LogPort,
    /// Artifact storage.
    pub artifacts: ArtifactPort,
    /// The file the log's backing sink writes, uploaded at the end.
    pub backing_log: Option<PathBuf>,
    /// The claim, when the task came from the Queue; `None` for a local run.
    pub queue: Option<QueueLink>,
    /// Where the log can be read live while the task runs, published as the live log artifact.
    pub live_log_url: Option<String>,
    /// A display of image download progress (`docker-worker run` on a terminal).
    pub image_display: Option<Recipient<ImageProgress>>,
}

/// Settings a task run needs from the worker.
#[derive(Clone)]
pub struct TaskConfig {
    /// The worker's identity.
    pub identity: WorkerIdentity,
    /// `/dev/shm` size for task containers.
    pub shm_size: Option<i64>,
    /// Upload the backing log gzip-encoded (the Queue) or as plain text (a local directory).
    pub gzip_logs: bool,
    /// How long to wait for the rest of the output once the container is gone.
    pub output_drain: Duration,
    /// How long to wait for a killed container to report its exit.
    pub kill_wait: Duration,
    /// Reclaim when this fraction of the remaining claim time has passed (2: halfway, as docker-worker).
    pub reclaim_divisor: u32,
    /// How often to ask the Queue whether the run was canceled; the 409 on reclaim stays authoritative.
    pub cancel_poll: Duration,
    /// The worker's log.
    pub logger: Logger,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    /// The task id.
    pub task_id: String,
    /// The run id.
    pub run_id: u32,
    /// The resolution.
    pub resolution: Resolution,
    /// The container's exit status, if it ran to an exit.
    pub exit_code: Option<i64>,
    /// Payload errors, when the payload was rejected.
    pub payload_errors: Vec<String>,
    /// The artifacts recorded, logs included.
    pub artifacts: Vec<StoredArtifact>,
    /// Wall time of the run.
    pub duration: Duration,
}

/// Stop a running task from outside.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopTask(pub StopReason);

/// One task run.
pub struct TaskActor {
    run: Option<Run>,
    stop: watch::Sender<Option<StopReason>>,
    done: Option<oneshot::Sender<TaskOutcome>>,
    claim: Option<ClaimState>,
    logger: Logger,
    config: TaskConfig,
}

/// The live claim of a queue task: the newest credentials and when they run out.
struct ClaimState {
    link: QueueLink,
    task_id: String,
    run_id: u32,
    polling: bool,
}

impl TaskActor {
    /// A task run that reports its outcome on `done` when it ends.
    pub fn new(
        spec: TaskSpec,
        ports: TaskPorts,
        config: TaskConfig,
        done: oneshot::Sender<TaskOutcome>,
    ) -> TaskActor {
        let (stop, stop_rx) = watch::channel(None);
        let logger = config
            .logger
            .new(o!("taskId" => spec.task_id.clone(), "runId" => spec.run_id));
        let claim = ports.queue.clone().map(|link| ClaimState {
            link,
            task_id: spec.task_id.clone(),
            run_id: spec.run_id,
            polling: false,
        });
        TaskActor {
            claim,
            logger: logger.clone(),
            config: config.clone(),
            run: Some(Run {
                state: TaskState::Validating,
                policy: ExitPolicy::default(),
                payload: None,
                payload_errors: Vec::new(),
                container: None,
                exit_code: None,
                artifact_failed: false,
                live_log_created: false,
                image_lease: None,
                image_artifact_sha256: None,
                started: Instant::now(),
                stop: stop_rx,
                logger,
                spec,
                ports,
                config,
            }),
            stop,
            done: Some(done),
        }
    }
}

impl Actor for TaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let run = self.run.take().expect("a TaskActor starts once");
        if let Some(claim) = &self.claim {
            let taken_until = claim.link.taken_until;
            self.schedule_reclaim(ctx, taken_until);
            ctx.run_interval(self.config.cancel_poll, |act, ctx| act.poll_run_state(ctx));
        }
        ctx.spawn(
            run.drive()
                .into_actor(self)
                .then(|outcome, act, _| act.resolve(outcome))
                .map(|outcome, act, ctx| {
                    info!(act.logger, "task resolved"; "taskState" => outcome.resolution.state(),
                      "resolution" => %outcome.resolution);
                    if let Some(done) = act.done.take() {
                        let _ = done.send(outcome);
                    }
                    ctx.stop();
                }),
        );
    }
}

impl TaskActor {
    fn request_stop(&self, reason: StopReason) {
        self.stop.send_if_modified(|current| {
            // The first reason sticks: a shutdown after a cancel is still a cancel.
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Reclaim when the given share of the remaining claim time has passed.
    fn schedule_reclaim(&mut self, ctx: &mut Context<Self>, taken_until: chrono::DateTime<chrono::Utc>) {
        let left = (taken_until - chrono::Utc::now()).to_std().unwrap_or_default();
        let delay = left / self.config.reclaim_divisor.max(1);
        info!(self.logger, "next claim"; "time" => delay.as_secs_f64(), "takenUntil" => %taken_until);
        ctx.run_later(delay, |act, ctx| act.reclaim(ctx));
    }

    fn reclaim(&mut self, ctx: &mut Context<Self>) {
        let Some(claim) = &self.claim else { return };
        info!(self.logger, "reclaiming task");
        let request = ReclaimTask {
            task_id: claim.task_id.clone(),
            run_id: claim.run_id,
            credentials: claim.link.credentials.clone(),
        };
        let port = claim.link.port.reclaim.clone();
        ctx.spawn(async move { queue::call(&port, request).await }.into_actor(self).map(
            |result, act, ctx| {
                let Some(claim) = act.claim.as_mut() else { return };
                match result {
                    Ok(reclaimed) => {
                        info!(act.logger, "reclaimed task"; "takenUntil" => %reclaimed.taken_until);
                        *claim.link.shared_credentials.lock().expect("credentials lock") =
                            reclaimed.credentials.clone();
                        claim.link.credentials = reclaimed.credentials;
                        claim.link.taken_until = reclaimed.taken_until;
                        act.schedule_reclaim(ctx, reclaimed.taken_until);
                    }
                    Err(QueueError::Conflict(message)) => {
                        // Canceled, past its deadline, or the claim is gone: stop, upload nothing, report nothing.
                        warn!(act.logger, "error reclaiming task"; "error" => &message);
                        act.request_stop(StopReason::Canceled);
                    }
                    Err(e) => {
                        let left = (claim.link.taken_until - chrono::Utc::now()).to_std().unwrap_or_default();
                        if left > Duration::from_secs(5) {
                            warn!(act.logger, "error reclaiming task"; "error" => %e, "retryIn" => (left / 4).as_secs_f64());
                            ctx.run_later(left / 4, |act, ctx| act.reclaim(ctx));
                        } else {
                            // The claim runs out: the Queue will resolve this run as claim-expired.
                            error!(act.logger, "claim lost"; "error" => %e);
                            act.request_stop(StopReason::Canceled);
                        }
                    }
                }
            },
        ));
    }

    /// Notice a cancellation between reclaims by reading the run's state.
    fn poll_run_state(&mut self, ctx: &mut Context<Self>) {
        let Some(claim) = self.claim.as_mut() else { return };
        if claim.polling || self.stop.borrow().is_some() {
            return;
        }
        claim.polling = true;
        let request = GetRunState {
            task_id: claim.task_id.clone(),
            run_id: claim.run_id,
            credentials: claim.link.credentials.clone(),
        };
        let port = claim.link.port.run_state.clone();
        ctx.spawn(
            async move { queue::call(&port, request).await }
                .into_actor(self)
                .map(|result, act, _| {
                    if let Some(claim) = act.claim.as_mut() {
                        claim.polling = false;
                    }
                    match result {
                        Ok(RunState::Resolved) => {
                            info!(act.logger, "run resolved elsewhere");
                            act.request_stop(StopReason::Canceled);
                        }
                        Ok(_) => {}
                        Err(e) => warn!(act.logger, "error reading task status"; "error" => %e),
                    }
                }),
        );
    }

    /// Report the resolution to the Queue, exactly once, with the newest credentials.
    fn resolve(&mut self, outcome: TaskOutcome) -> impl ActorFuture<Self, Output = TaskOutcome> {
        let request = match (&self.claim, outcome.resolution) {
            (Some(_), Resolution::Canceled) | (None, _) => None,
            (Some(claim), resolution) => Some((
                claim.link.port.resolve.clone(),
                ResolveTask {
                    task_id: claim.task_id.clone(),
                    run_id: claim.run_id,
                    credentials: claim.link.credentials.clone(),
                    resolution,
                },
            )),
        };
        let logger = self.logger.clone();
        async move {
            if let Some((port, request)) = request {
                if let Err(e) = queue::call(&port, request).await {
                    error!(logger, "error resolving task"; "error" => %e);
                }
            }
            outcome
        }
        .into_actor(self)
    }
}

impl Handler<StopTask> for TaskActor {
    type Result = ();

    fn handle(&mut self, msg: StopTask, _: &mut Context<Self>) {
        self.request_stop(msg.0);
    }
}

struct Run {
    spec: TaskSpec,
    ports: TaskPorts,
    config: TaskConfig,
    logger: Logger,
    state: TaskState,
    policy: ExitPolicy,
    payload: Option<Payload>,
    payload_errors: Vec<String>,
    container: Option<String>,
    exit_code: Option<i64>,
    artifact_failed: bool,
    live_log_created: bool,
    started: Instant,
    stop: watch::Receiver<Option<StopReason>>,
    /// Keeps the task's image from the garbage collector until the run is over.
    image_lease: Option<ImageLease>,
    /// `sha256:<hex>` of the image artifact, for chain of trust.
    image_artifact_sha256: Option<String>,
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Run {
    async fn drive(mut self) -> TaskOutcome {
        info!(self.logger, "task start");
        let executed = AssertUnwindSafe(self.execute()).catch_unwind().await;
        let fault = match executed {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("the task log could not be written: {e}")),
            Err(panic) => Some(format!("panic: {}", panic_message(panic.as_ref()))),
        };
        if let Some(fault) = fault {
            error!(self.logger, "task error"; "error" => &fault);
            self.event(TaskEvent::WorkerFault);
            let _ = self
                .write(fmt_error_log(&format!(
                    "Task was aborted because docker-worker hit an internal error. {fault}"
                )))
                .await;
        }
        self.finish().await
    }

    /// Move the state machine. An illegal event is a bug in this file; it becomes an internal error.
    fn event(&mut self, event: TaskEvent) {
        self.state = match self.state.on(event, &self.policy) {
            Ok(next) => next,
            Err(illegal) => {
                error!(self.logger, "illegal task transition"; "error" => %illegal);
                match self.state {
                    TaskState::Resolved(_) => self.state,
                    _ => TaskState::Aborting(Resolution::Exception(ExceptionReason::InternalError)),
                }
            }
        };
    }

    async fn write(&self, text: impl Into<String>) -> Result<(), LogError> {
        self.ports.log.chunk.send(LogChunk::text(text)).await?
    }

    fn stop_requested(&self) -> Option<StopReason> {
        *self.stop.borrow()
    }

    /// Wait until someone stops the task; never returns if nobody does.
    async fn stopped(stop: &mut watch::Receiver<Option<StopReason>>) -> StopReason {
        loop {
            if let Some(reason) = *stop.borrow_and_update() {
                return reason;
            }
            if stop.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Checkpoint between steps: a stop that arrived meanwhile aborts the run here.
    async fn checkpoint(&mut self) -> Result<bool, LogError> {
        if let Some(reason) = self.stop_requested() {
            self.on_stop(reason).await?;
            return Ok(true);
        }
        Ok(self.state.is_aborting())
    }

    async fn on_stop(&mut self, reason: StopReason) -> Result<(), LogError> {
        if self.state.is_aborting() {
            return Ok(());
        }
        self.event(TaskEvent::Stopped(reason));
        match reason {
            StopReason::Canceled => {
                info!(self.logger, "cancel task"; "message" => CANCEL_MESSAGE);
                self.kill().await;
                self.write(fmt_error_log(CANCEL_MESSAGE)).await?;
            }
            StopReason::WorkerShutdown => {
                info!(self.logger, "task aborted"; "exception" => "worker-shutdown");
                self.kill().await;
                self.write(fmt_error_log(
                    "Task has been aborted prematurely. Reason: worker-shutdown",
                ))
                .await?;
            }
        }
        Ok(())
    }

    async fn kill(&self) {
        if let Some(id) = &self.container {
            if let Err(e) = call(&self.ports.docker.kill, KillContainer(id.clone())).await {
                warn!(self.logger, "error killing container"; "container" => id, "error" => %e);
            }
        }
    }

    async fn execute(&mut self) -> Result<(), LogError> {
        let id = &self.config.identity;
        self.write(header(&HeaderFields {
            task_id: &self.spec.task_id,
            worker_id: &id.worker_id,
            worker_group: &id.worker_group,
            worker_node_type: &id.worker_node_type,
            worker_type: &id.worker_type,
            public_ip: &id.public_ip,
            hostname: &id.hostname,
        }))
        .await?;

        let Some(payload) = self.validate().await? else {
            return Ok(());
        };
        if self.checkpoint().await? {
            return Ok(());
        }
        let image = match self.ensure_image(&payload).await? {
            Some(image) => image,
            None => return Ok(()),
        };
        if self.checkpoint().await? {
            return Ok(());
        }
        let Some(output) = self.create_and_attach(&payload, image).await? else {
            return Ok(());
        };
        if self.checkpoint().await? {
            return Ok(());
        }
        let log = self.ports.log.chunk.clone();
        let mut pump = tokio::spawn(pump_output(output, log));

        self.write(fmt_log("=== Task Starting ===")).await?;
        let container = self.container.clone().expect("container was created");
        if let Err(e) = call(&self.ports.docker.start, StartContainer(container.clone())).await {
            pump.abort();
            return self.start_failed(e).await;
        }
        self.event(TaskEvent::ContainerStarted);
        info!(self.logger, "task run");

        let max_run_time = Duration::from_secs(u64::from(payload.max_run_time));
        let mut pumped = None;
        let waited = {
            let mut stop = self.stop.clone();
            let wait = call(&self.ports.docker.wait, WaitContainer(container.clone()));
            let deadline = actix_rt::time::sleep(max_run_time);
            tokio::pin!(wait, deadline);
            loop {
                tokio::select! {
                    code = &mut wait => break Ok(code),
                    _ = &mut deadline => break Err(None),
                    reason = Self::stopped(&mut stop) => break Err(Some(reason)),
                    // A panic while reading output is the task's internal error now, not at exit.
                    joined = &mut pump, if pumped.is_none() => match joined {
                        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                        other => pumped = Some(other),
                    },
                }
            }
        };
        match waited {
            Ok(Ok(code)) => {
                self.exit_code = Some(code);
                self.event(TaskEvent::ContainerExited(code));
            }
            Ok(Err(e)) => {
                error!(self.logger, "error waiting for container"; "error" => %e);
                self.event(TaskEvent::WorkerFault);
                self.write(fmt_error_log(&format!("Lost track of the task container: {e}")))
                    .await?;
                self.kill().await;
            }
            Err(None) => {
                warn!(self.logger, "task max runtime timeout"; "maxRunTime" => payload.max_run_time);
                self.event(TaskEvent::TimedOut);
                self.kill().await;
                self.write(fmt_error_log(&format!(
                    "Task timeout after {} seconds. Force killing container.",
                    payload.max_run_time
                )))
                .await?;
            }
            Err(Some(reason)) => self.on_stop(reason).await?,
        }
        if self.exit_code.is_none() {
            // Killed: collect the status so the container is really gone before it is removed.
            let wait = call(&self.ports.docker.wait, WaitContainer(container.clone()));
            if let Ok(Ok(code)) = tokio::time::timeout(self.config.kill_wait, wait).await {
                self.exit_code = Some(code);
            }
        }
        let pumped = match pumped {
            Some(done) => Ok(done),
            None => {
                let drained = tokio::time::timeout(self.config.output_drain, &mut pump).await;
                pump.abort();
                drained
            }
        };
        match pumped {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Ok(Err(join)) => warn!(self.logger, "output pump stopped"; "error" => %join),
            Err(_) => warn!(self.logger, "output did not end after the container exited"),
        }
        self.write(fmt_log("=== Task Finished ===")).await?;
        if self.checkpoint().await? {
            return Ok(());
        }
        let ok = if payload.features.enabled(Feature::Artifacts) {
            self.collect_artifacts(&payload, &container).await?
        } else {
            true
        };
        self.artifact_failed = !ok;
        self.event(TaskEvent::ArtifactsDone { ok });
        Ok(())
    }

    /// Validate the payload and what it asks of this worker. `None` when the run ends here.
    async fn validate(&mut self) -> Result<Option<Payload>, LogError> {
        let parsed = match self.spec.expires {
            Some(expires) => parse_task_payload(&self.spec.payload, expires),
            None => parse_payload(&self.spec.payload),
        };
        let payload = match parsed {
            Ok(p) => p,
            Err(errors) => {
                self.payload_errors = errors.0.iter().map(ToString::to_string).collect();
                warn!(self.logger, "malformed payload"; "errors" => self.payload_errors.join("; "));
                self.event(TaskEvent::PayloadRejected);
                let list: String = self.payload_errors.iter().map(|e| format!("  * {e}\n")).collect();
                self.write(fmt_error_log(&format!("`task.payload` is invalid:\n{list}")))
                    .await?;
                return Ok(None);
            }
        };
        self.policy = ExitPolicy {
            retry: payload.on_exit_status.retry.clone(),
        };
        self.payload = Some(payload.clone());
        let refusals = unsupported(&payload);
        if !refusals.is_empty() {
            self.event(TaskEvent::TaskRefused);
            for refusal in &refusals {
                self.write(fmt_error_log(refusal)).await?;
            }
            return Ok(None);
        }
        self.event(TaskEvent::PayloadAccepted);
        if let (Some(url), true) = (
            &self.ports.live_log_url,
            payload.features.enabled(Feature::LocalLiveLog),
        ) {
            let reference = CreateReference {
                name: payload.live_log_name().to_string(),
                url: url.clone(),
                content_type: "text/plain; charset=utf-8".into(),
            };
            match self.ports.artifacts.reference.send(reference).await {
                Ok(Ok(_)) => self.live_log_created = true,
                Ok(Err(e)) => warn!(self.logger, "live log artifact failed"; "error" => %e),
                Err(e) => warn!(self.logger, "live log artifact failed"; "error" => %e),
            }
        }
        Ok(Some(payload))
    }

    async fn ensure_image(&mut self, payload: &Payload) -> Result<Option<String>, LogError> {
        let image = payload.image.describe();
        info!(self.logger, "ensure image"; "image" => &image);
        let credentials = self
            .ports
            .queue
            .as_ref()
            .map(|q| q.shared_credentials.lock().expect("credentials lock").clone());
        let request = self.ports.docker.ensure_image.send(EnsureImage {
            image: payload.image.clone(),
            scopes: self.spec.scopes.clone(),
            credentials,
            progress: self.ports.log.chunk.clone(),
            display: self.ports.image_display.clone(),
        });
        let mut stop = self.stop.clone();
        let result = tokio::select! {
            r = request => r,
            reason = Self::stopped(&mut stop) => {
                self.on_stop(reason).await?;
                return Ok(None);
            }
        };
        match result {
            Ok(Ok(ready)) => {
                self.event(TaskEvent::ImageReady);
                info!(self.logger, "image ready"; "image" => &image, "id" => &ready.id, "fetched" => ready.fetched,
                      "artifactSha256" => ready.artifact_sha256.as_deref().unwrap_or(""));
                self.image_artifact_sha256 = ready.artifact_sha256.clone();
                let name = ready.name.clone();
                self.image_lease = ready.lease;
                Ok(Some(name))
            }
            Ok(Err(e)) => {
                let resolution = if e.is_task_fault() {
                    Resolution::Failed
                } else {
                    Resolution::Exception(ExceptionReason::ResourceUnavailable)
                };
                warn!(self.logger, "image pull failed"; "image" => &image, "error" => %e);
                self.event(TaskEvent::ImageFailed(resolution));
                self.write(fmt_error_log("Pulling docker image has failed."))
                    .await?;
                self.write(fmt_error_log(&format!("Error: {e}"))).await?;
                Ok(None)
            }
            Err(mailbox) => {
                self.event(TaskEvent::WorkerFault);
                self.write(fmt_error_log(&format!(
                    "Pulling docker image has failed: the image actor stopped ({mailbox})"
                )))
                .await?;
                Ok(None)
            }
        }
    }

    fn container_spec(&self, payload: &Payload, image: String) -> ContainerSpec {
        let id = &self.config.identity;
        let mut env: BTreeMap<String, String> = payload.env.clone();
        let mut reserved = vec![
            ("TASK_ID", self.spec.task_id.clone()),
            ("RUN_ID", self.spec.run_id.to_string()),
            ("TASKCLUSTER_WORKER_TYPE", id.worker_type.clone()),
            ("TASKCLUSTER_INSTANCE_TYPE", id.worker_node_type.clone()),
            ("TASKCLUSTER_WORKER_GROUP", id.worker_group.clone()),
            ("TASKCLUSTER_PUBLIC_IP", id.public_ip.clone()),
            ("TASKCLUSTER_ROOT_URL", id.root_url.clone()),
        ];
        if let Some(location) = &id.worker_location {
            reserved.push(("TASKCLUSTER_WORKER_LOCATION", location.clone()));
        }
        for (k, v) in reserved {
            env.insert(k.to_string(), v);
        }
        ContainerSpec {
            image,
            command: payload.command.clone(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            labels: [
                (LABEL_MANAGED, "true".to_string()),
                (LABEL_TASK_ID, self.spec.task_id.clone()),
                (LABEL_RUN_ID, self.spec.run_id.to_string()),
                (LABEL_WORKER_ID, id.worker_id.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            shm_size: self.config.shm_size,
        }
    }

    async fn create_and_attach(
        &mut self,
        payload: &Payload,
        image: String,
    ) -> Result<Option<ByteStream>, LogError> {
        let spec = self.container_spec(payload, image);
        let created = call(&self.ports.docker.create, CreateContainer(spec)).await;
        let container = match created {
            Ok(id) => id,
            Err(e) => return self.start_failed(e).await.map(|()| None),
        };
        info!(self.logger, "container created"; "container" => &container);
        self.container = Some(container.clone());
        match call(&self.ports.docker.attach, AttachContainer(container)).await {
            Ok(stream) => Ok(Some(stream)),
            Err(e) => {
                error!(self.logger, "error attaching to container"; "error" => %e);
                self.event(TaskEvent::WorkerFault);
                self.write(fmt_error_log(&format!(
                    "Could not attach to the task container: {e}"
                )))
                .await?;
                Ok(None)
            }
        }
    }

    async fn start_failed(&mut self, e: DockerError) -> Result<(), LogError> {
        error!(self.logger, "error starting container"; "error" => %e);
        if e.is_task_fault() {
            self.event(TaskEvent::ContainerStartFailed);
        } else {
            self.event(TaskEvent::WorkerFault);
        }
        self.write(fmt_error_log("Failure to properly start execution environment."))
            .await?;
        self.write(fmt_error_log(&e.to_string())).await?;
        Ok(())
    }

    /// Copy each `payload.artifacts` entry out of the container. False when any upload failed.
    async fn collect_artifacts(&mut self, payload: &Payload, container: &str) -> Result<bool, LogError> {
        let mut ok = true;
        let mut retry = Vec::new();
        for (name, spec) in &payload.artifacts {
            let expires = spec.expires.or(self.spec.expires);
            let report = match self.copy_out(container, &spec.path).await {
                Ok(archive) => {
                    self.ports
                        .artifacts
                        .from_archive
                        .send(UploadFromArchive {
                            name: name.clone(),
                            kind: spec.kind,
                            path: spec.path.clone(),
                            expires,
                            archive,
                        })
                        .await
                }
                Err(DockerError::NotFound(_)) => {
                    self.ports
                        .artifacts
                        .missing
                        .send(RecordMissing {
                            name: name.clone(),
                            path: spec.path.clone(),
                            expires,
                        })
                        .await
                }
                Err(e) => {
                    ok = false;
                    self.write(fmt_error_log(&format!(
                        "Error uploading \"{name}\" artifact. {e}"
                    )))
                    .await?;
                    continue;
                }
            };
            match report {
                Ok(report) => {
                    ok &= self.take_report(&report).await?;
                    retry.extend(report.retry.into_iter().map(|r| (r, expires)));
                }
                Err(e) => {
                    ok = false;
                    self.write(fmt_error_log(&format!(
                        "Error uploading \"{name}\" artifact. {e}"
                    )))
                    .await?;
                }
            }
        }
        // Files whose upload failed on the way are fetched again, each by its own path, with backoff.
        let mut delay = ARTIFACT_RETRY_DELAY;
        for attempt in 2..=ARTIFACT_ATTEMPTS {
            if retry.is_empty() {
                break;
            }
            actix_rt::time::sleep(delay).await;
            delay *= 2;
            let mut again = Vec::new();
            for (entry, expires) in std::mem::take(&mut retry) {
                info!(self.logger, "retrying artifact upload"; "artifactName" => &entry.name,
                      "attemptNumber" => attempt, "error" => &entry.error);
                let archive = match self.copy_out(container, &entry.path).await {
                    Ok(archive) => archive,
                    Err(e) => {
                        again.push((
                            RetryEntry {
                                error: e.to_string(),
                                ..entry
                            },
                            expires,
                        ));
                        continue;
                    }
                };
                let upload = UploadFromArchive {
                    name: entry.name.clone(),
                    kind: ArtifactKind::File,
                    path: entry.path.clone(),
                    expires,
                    archive,
                };
                match self.ports.artifacts.from_archive.send(upload).await {
                    Ok(report) => {
                        ok &= self.take_report(&report).await?;
                        again.extend(report.retry.into_iter().map(|r| (r, expires)));
                    }
                    Err(e) => again.push((
                        RetryEntry {
                            error: e.to_string(),
                            ..entry
                        },
                        expires,
                    )),
                }
            }
            retry = again;
        }
        for (entry, _) in retry {
            ok = false;
            error!(self.logger, "artifact upload failed"; "artifactName" => &entry.name, "error" => &entry.error);
            self.write(fmt_error_log(&format!(
                "Error uploading \"{}\" artifact after {ARTIFACT_ATTEMPTS} attempts. {}",
                entry.name, entry.error
            )))
            .await?;
        }
        Ok(ok)
    }

    async fn copy_out(&self, container: &str, path: &str) -> Result<ByteStream, DockerError> {
        let request = CopyFromContainer {
            container: container.to_string(),
            path: path.to_string(),
        };
        call(&self.ports.docker.copy_out, request).await
    }

    /// Write a report's lines to the log; false when an upload failed for good.
    async fn take_report(&self, report: &ArtifactReport) -> Result<bool, LogError> {
        for line in &report.log {
            self.write(line.clone()).await?;
        }
        Ok(report.failures.is_empty())
    }

    /// The part of a run that always happens: footer, container removal, log upload, outcome.
    async fn finish(mut self) -> TaskOutcome {
        let cut_short = self.state.is_aborting();
        if cut_short {
            self.event(TaskEvent::Finished);
        }
        let resolution = self
            .state
            .resolution()
            .unwrap_or(Resolution::Exception(ExceptionReason::InternalError));
        // A run cut short, or whose artifacts failed, ends with exit code -1, as docker-worker's did.
        let footer_code = match self.exit_code {
            Some(code) if !cut_short && !self.artifact_failed => code,
            _ => -1,
        };
        let _ = self
            .write(footer(
                resolution == Resolution::Completed,
                footer_code,
                self.started.elapsed(),
            ))
            .await;
        if let Some(container) = self.container.take() {
            self.remove_container(container).await;
        }
        let closed = self.ports.log.close.send(CloseLog).await;
        let mut resolution = resolution;
        if let Err(e) | Ok(Err(e)) = closed.map_err(LogError::from) {
            error!(self.logger, "task log could not be closed"; "error" => %e);
            if resolution != Resolution::Canceled {
                resolution = Resolution::Exception(ExceptionReason::InternalError);
            }
        }
        let artifacts = self.upload_logs(resolution).await;
        TaskOutcome {
            task_id: self.spec.task_id.clone(),
            run_id: self.spec.run_id,
            resolution,
            exit_code: self.exit_code,
            payload_errors: self.payload_errors.clone(),
            artifacts,
            duration: self.started.elapsed(),
        }
    }

    /// A forced removal kills a container that still runs, so no separate kill is needed.
    async fn remove_container(&self, container: String) {
        if let Err(e) = call(&self.ports.docker.remove, RemoveContainer(container.clone())).await {
            error!(self.logger, "container removal error"; "container" => &container, "error" => %e);
        } else {
            info!(self.logger, "container removed"; "container" => &container);
        }
    }

    /// Store the backing log (and the bulk log), then let the sink write its index.
    async fn upload_logs(&self, resolution: Resolution) -> Vec<StoredArtifact> {
        let default_features = crate::payload::Features::default();
        let features = self.payload.as_ref().map_or(&default_features, |p| &p.features);
        let canceled = resolution == Resolution::Canceled;
        if let (Some(path), false) = (&self.ports.backing_log, canceled) {
            let expires = self.spec.expires;
            let mut uploads = Vec::new();
            if features.enabled(Feature::LocalLiveLog) {
                let name = self.payload.as_ref().map_or_else(
                    || "public/logs/live_backing.log".to_string(),
                    Payload::backing_log_name,
                );
                uploads.push(UploadFile {
                    meta: ArtifactMeta {
                        name,
                        content_type: "text/plain; charset=utf-8".into(),
                        content_encoding: self.config.gzip_logs.then(|| "gzip".into()),
                        expires,
                        size: None,
                    },
                    path: path.clone(),
                    gzip: self.config.gzip_logs,
                });
            }
            if features.enabled(Feature::BulkLog) {
                uploads.push(UploadFile {
                    meta: ArtifactMeta {
                        name: "public/logs/terminal_bulk.log.gz".into(),
                        content_type: "text/plain; charset=utf-8".into(),
                        content_encoding: Some("gzip".into()),
                        expires,
                        size: None,
                    },
                    path: path.clone(),
                    gzip: true,
                });
            }
            let live_name = self
                .payload
                .as_ref()
                .map_or(crate::payload::DEFAULT_LIVE_LOG_NAME, Payload::live_log_name)
                .to_string();
            let backing_name = uploads.first().map(|u| u.meta.name.clone());
            for upload in uploads {
                let name = upload.meta.name.clone();
                match self.ports.artifacts.file.send(upload).await {
                    Ok(Ok(_)) if self.live_log_created && Some(&name) == backing_name.as_ref() => {
                        info!(self.logger, "log uploaded"; "artifact" => &name);
                        // The live log's reference now points at the finished log.
                        let link = CreateLink {
                            name: live_name.clone(),
                            artifact: name.clone(),
                        };
                        match self.ports.artifacts.link.send(link).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => error!(self.logger, "live log link failed"; "error" => %e),
                            Err(e) => error!(self.logger, "live log link failed"; "error" => %e),
                        }
                    }
                    Ok(Ok(_)) => info!(self.logger, "log uploaded"; "artifact" => &name),
                    Ok(Err(e)) => {
                        error!(self.logger, "log upload failed"; "artifact" => &name, "error" => %e)
                    }
                    Err(e) => error!(self.logger, "log upload failed"; "artifact" => &name, "error" => %e),
                }
            }
        }
        match self.ports.artifacts.finish.send(FinishArtifacts).await {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                error!(self.logger, "artifact index failed"; "error" => %e);
                Vec::new()
            }
            Err(e) => {
                error!(self.logger, "artifact index failed"; "error" => %e);
                Vec::new()
            }
        }
    }
}

/// What in a valid payload this worker can't do yet. Each entry is one sentence for the task log.
pub fn unsupported(payload: &Payload) -> Vec<String> {
    let mut out = Vec::new();
    for feature in payload.features.requested() {
        if !SUPPORTED_FEATURES.contains(&feature) {
            out.push(format!(
                "The feature `{}` is not supported by this worker yet, so the task can not run as written.",
                feature.name()
            ));
        }
    }
    if !payload.cache.is_empty() {
        out.push("Caches (`payload.cache`) are not supported by this worker yet.".into());
    }
    let caps = &payload.capabilities;
    if caps.privileged {
        out.push("`capabilities.privileged` is not supported by this worker yet.".into());
    }
    if caps.disable_seccomp {
        out.push("`capabilities.disableSeccomp` is not supported by docker-worker.".into());
    }
    let d = &caps.devices;
    if d.loopback_video || d.loopback_audio || d.host_shared_memory || d.kvm {
        out.push("`capabilities.devices` are not supported by this worker yet.".into());
    }
    for (name, spec) in &payload.artifacts {
        if spec.kind == ArtifactKind::Volume {
            out.push(format!(
                "Artifact \"{name}\": the `volume` artifact type is not supported by this worker yet."
            ));
        }
    }
    out
}

/// The most output gathered into one log chunk, and the longest a byte waits to be gathered.
const GATHER_BYTES: usize = 64 * 1024;
const GATHER_WINDOW: Duration = Duration::from_millis(5);

/// Copy the container's output into the log, waiting for the log to take each chunk. A TTY hands
/// over about 4 KiB per read; what arrives within a few milliseconds of a chunk goes with it, so a
/// busy task costs the worker (and the live log readers it wakes) a message per 64 KiB, not per
/// 4 KiB, for at most `GATHER_WINDOW` of delay.
async fn pump_output(mut output: ByteStream, log: Recipient<LogChunk>) -> Result<(), LogError> {
    let mut ended = false;
    while !ended {
        let mut gathered = bytes::BytesMut::new();
        let mut broken = None;
        match output.next().await {
            None => ended = true,
            Some(Err(e)) => broken = Some(e),
            Some(Ok(first)) => {
                gathered.extend_from_slice(&first);
                let deadline = tokio::time::Instant::now() + GATHER_WINDOW;
                while gathered.len() < GATHER_BYTES {
                    match tokio::time::timeout_at(deadline, output.next()).await {
                        Err(_) => break,
                        Ok(None) => {
                            ended = true;
                            break;
                        }
                        Ok(Some(Ok(bytes))) => gathered.extend_from_slice(&bytes),
                        Ok(Some(Err(e))) => {
                            broken = Some(e);
                            break;
                        }
                    }
                }
            }
        }
        if !gathered.is_empty() {
            log.send(LogChunk(gathered.freeze())).await??;
        }
        if let Some(e) = broken {
            log.send(LogChunk::text(fmt_error_log(&format!(
                "The container's output stream broke: {e}"
            ))))
            .await??;
            break;
        }
    }
    Ok(())
}
