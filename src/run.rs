//! `docker-worker run`: one task, the way the daemon runs it, with the queue replaced by local sinks —
//! the terminal and a backing file for the log, a directory for artifacts.

use std::cell::Cell;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use bollard::Docker;
use docker_worker_actors::artifacts::{LocalDirSink, StoredArtifact};
use docker_worker_actors::attach::Endpoint;
use docker_worker_actors::docker::{DockerActor, DockerPort};
use docker_worker_actors::images::{ImageActor, ImageProgress};
use docker_worker_actors::lifecycle::StopReason;
use docker_worker_actors::log_stream::LogSink;
use docker_worker_actors::queue::{Credentials, QueueClient, QueueLink, RetryPolicy};
use docker_worker_actors::supervisor::{RunTask, Shutdown, Supervisor, TaskResources, TaskResourcesFactory};
use docker_worker_actors::task::{new_task_id, TaskSpec};
use docker_worker_actors::task_actor::{TaskConfig, TaskOutcome};
use slog::{info, Logger};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::RunArgs;
use crate::settings::{Settings, Sources};
use crate::{exit, logging, taskfile};

/// Per-task actors for a local run: the log to the terminal and a scratch file, artifacts to a directory.
struct LocalFactory {
    docker: DockerPort,
    sink: Arc<LocalDirSink>,
    display: Option<Recipient<ImageProgress>>,
}

impl TaskResourcesFactory for LocalFactory {
    fn create(&self, _: &TaskSpec, _: Option<&QueueLink>) -> std::io::Result<TaskResources> {
        let terminal = LogSink::optional("terminal", tokio::io::stdout()).live();
        let mut resources =
            TaskResources::start(self.docker.clone(), vec![terminal], self.sink.clone(), None)?;
        resources.ports.image_display = self.display.clone();
        Ok(resources)
    }
}

/// `docker-worker run`'s image progress on a terminal: one line on stderr at most every second, with
/// the bytes and layers so far, and a last line when the fetch ends.
struct ProgressDisplay {
    last: Option<std::time::Instant>,
    started: std::time::Instant,
}

impl Actor for ProgressDisplay {
    type Context = Context<Self>;
}

impl Handler<ImageProgress> for ProgressDisplay {
    type Result = ();

    fn handle(&mut self, p: ImageProgress, _: &mut Context<Self>) {
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if !(p.done || due) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let mb = |b: u64| b as f64 / 1_000_000.0;
        let line = match (p.done, p.total_bytes.filter(|t| *t > 0)) {
            (true, _) => format!(
                "docker-worker: fetched {} ({:.1} MB) in {:.1} s",
                p.image,
                mb(p.done_bytes),
                self.started.elapsed().as_secs_f64()
            ),
            (false, Some(total)) => format!(
                "docker-worker: fetching {}: {:.1} of {:.1} MB ({:.0}%), {} of {} layers done",
                p.image,
                mb(p.done_bytes),
                mb(total),
                p.done_bytes as f64 * 100.0 / total as f64,
                p.parts_done,
                p.parts
            ),
            (false, None) => format!("docker-worker: fetching {}: {:.1} MB", p.image, mb(p.done_bytes)),
        };
        eprintln!("{line}");
    }
}

/// Connect to the Docker daemon named by the settings (or DOCKER_HOST, or the local socket).
pub async fn connect(settings: &Settings) -> Result<(Docker, Endpoint), String> {
    let host = match &settings.docker_host {
        Some(host) => host.clone(),
        None => std::env::var("DOCKER_HOST").unwrap_or_else(|_| Endpoint::DEFAULT.to_string()),
    };
    let endpoint = Endpoint::parse(&host)?;
    let timeout = settings.request_timeout.as_secs();
    let docker = match &endpoint {
        Endpoint::Unix(path) => {
            Docker::connect_with_unix(&path.to_string_lossy(), timeout, bollard::API_DEFAULT_VERSION)
        }
        Endpoint::Tcp(addr) => {
            Docker::connect_with_http(&format!("http://{addr}"), timeout, bollard::API_DEFAULT_VERSION)
        }
    }
    .map_err(|e| format!("{host}: {e}"))?;
    // Speak the daemon's API version, so older engines work too.
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    Ok((docker, endpoint))
}

/// The settings every task run gets. `gzip_logs` for logs bound for the Queue.
pub fn task_config(settings: &Settings, gzip_logs: bool, logger: Logger) -> TaskConfig {
    TaskConfig {
        identity: settings.identity.clone(),
        shm_size: settings.shm_size,
        gzip_logs,
        output_drain: settings.output_drain,
        kill_wait: settings.kill_wait,
        reclaim_divisor: settings.queue.reclaim_divisor,
        cancel_poll: settings.queue.cancel_poll,
        logger,
    }
}

/// `docker-worker run`.
pub fn main(args: RunArgs) -> ExitCode {
    let settings = match Settings::load(&Sources {
        profile: args.config.profile.as_deref().unwrap_or("local"),
        file: args.config.config.as_deref(),
        overrides: &args.config.overrides,
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("docker-worker: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let file = match taskfile::read(&args.file) {
        Ok(file) => file,
        Err(e @ taskfile::TaskFileError::Read { .. }) => {
            eprintln!("docker-worker: {e}");
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            eprintln!("docker-worker: {e}");
            return ExitCode::from(exit::MALFORMED_PAYLOAD);
        }
    };
    if let Err(errors) = taskfile::check(&file) {
        taskfile::report(&args.file, &errors);
        return ExitCode::from(exit::MALFORMED_PAYLOAD);
    }
    let sink = match LocalDirSink::prepare(&args.artifacts_dir) {
        Ok(sink) => sink,
        Err(e) => {
            eprintln!(
                "docker-worker: artifacts directory {}: {e}",
                args.artifacts_dir.display()
            );
            return ExitCode::from(exit::USAGE);
        }
    };
    let (logger, _guard) = logging::init(&settings, true);
    let spec = TaskSpec {
        task_id: args.task_id.clone().unwrap_or_else(new_task_id),
        run_id: args.run_id,
        payload: file.payload,
        scopes: file.scopes,
        expires: file.expires,
    };
    let system = actix_rt::System::new();
    system.block_on(run_one(settings, logger, spec, sink, args))
}

async fn run_one(
    settings: Settings,
    logger: Logger,
    spec: TaskSpec,
    sink: LocalDirSink,
    args: RunArgs,
) -> ExitCode {
    let (docker, endpoint) = match connect(&settings).await {
        Ok(connected) => connected,
        Err(e) => {
            eprintln!("docker-worker: cannot reach the Docker daemon: {e}");
            return ExitCode::from(exit::RESOURCE_UNAVAILABLE);
        }
    };
    let containers = DockerActor::new(docker.clone(), endpoint).start();
    let queue = (!settings.identity.root_url.is_empty())
        .then(|| {
            QueueClient::new(
                &settings.identity.root_url,
                Credentials {
                    client_id: String::new(),
                    access_token: String::new(),
                    certificate: None,
                },
                RetryPolicy::default(),
                logger.clone(),
            )
        })
        .transpose();
    let queue = match queue {
        Ok(queue) => queue,
        Err(e) => {
            eprintln!("docker-worker: worker.root_url: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let images = ImageActor::new(docker, settings.images.clone(), queue, logger.clone()).start();
    let port = DockerPort::with_images(&containers, images.recipient());
    let display = std::io::stderr().is_terminal().then(|| {
        ProgressDisplay {
            last: None,
            started: std::time::Instant::now(),
        }
        .start()
        .recipient()
    });
    let factory = LocalFactory {
        docker: port.clone(),
        sink: Arc::new(sink),
        display,
    };
    let config = task_config(&settings, false, logger.clone());
    let supervisor = Supervisor::new(1, port, Box::new(factory), config).start();
    let signalled = Rc::new(Cell::new(None));
    watch_signals(supervisor.clone(), signalled.clone(), logger.clone());

    let task_id = spec.task_id.clone();
    let outcome = match supervisor.send(RunTask(spec)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            eprintln!("docker-worker: task {task_id} could not start: {e}");
            return ExitCode::from(exit::INTERNAL_ERROR);
        }
        Err(e) => {
            eprintln!("docker-worker: the supervisor stopped: {e}");
            return ExitCode::from(exit::INTERNAL_ERROR);
        }
    };
    info!(logger, "run finished"; "taskId" => &outcome.task_id, "resolution" => %outcome.resolution);
    summarize(&outcome, &args);
    exit::for_resolution(outcome.resolution, signalled.get())
}

/// SIGINT and SIGTERM stop the task as a worker shutdown; its container is killed and removed, its log kept.
fn watch_signals(supervisor: Addr<Supervisor>, signalled: Rc<Cell<Option<u8>>>, logger: Logger) {
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        slog::error!(logger, "could not install signal handlers");
        return;
    };
    actix_rt::spawn(async move {
        loop {
            let (code, name) = tokio::select! {
                _ = int.recv() => (exit::INTERRUPTED, "SIGINT"),
                _ = term.recv() => (exit::TERMINATED, "SIGTERM"),
            };
            if signalled.get().is_none() {
                signalled.set(Some(code));
                eprintln!("docker-worker: {name}: stopping the task and removing its container");
            } else {
                eprintln!("docker-worker: {name}: still cleaning up; the container is being removed");
            }
            supervisor.do_send(Shutdown(StopReason::WorkerShutdown));
        }
    });
}

fn summarize(outcome: &TaskOutcome, args: &RunArgs) {
    let exit_code = outcome
        .exit_code
        .map_or_else(|| "none".to_string(), |c| c.to_string());
    eprintln!(
        "docker-worker: task {} run {} resolved as {} (container exit code: {exit_code}) in {:.3} s",
        outcome.task_id,
        outcome.run_id,
        outcome.resolution,
        outcome.duration.as_secs_f64()
    );
    if outcome.artifacts.is_empty() {
        return;
    }
    eprintln!("docker-worker: artifacts in {}:", args.artifacts_dir.display());
    for artifact in &outcome.artifacts {
        match artifact {
            StoredArtifact::File {
                name,
                size,
                content_type,
                ..
            } => eprintln!("  {name}  ({size} bytes, {content_type})"),
            StoredArtifact::Error {
                name,
                reason,
                message,
                ..
            } => eprintln!("  {name}  error artifact, {}: {message}", reason.as_str()),
            StoredArtifact::Reference { name, url } => eprintln!("  {name}  reference to {url}"),
            StoredArtifact::Link { name, artifact } => eprintln!("  {name}  link to {artifact}"),
        }
    }
    let summary = args
        .artifacts_dir
        .join(docker_worker_actors::artifacts::SUMMARY_FILE);
    if let Err(e) = write_summary(&summary, outcome) {
        eprintln!("docker-worker: could not write {}: {e}", summary.display());
    } else {
        eprintln!("docker-worker: summary in {}", summary.display());
    }
}

/// The sink wrote the artifact index; add the run's own result beside it.
fn write_summary(path: &std::path::Path, outcome: &TaskOutcome) -> std::io::Result<()> {
    let mut summary: serde_json::Value = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let fields = serde_json::json!({
        "taskId": outcome.task_id,
        "runId": outcome.run_id,
        "state": outcome.resolution.state(),
        "resolution": outcome.resolution.to_string(),
        "exitCode": outcome.exit_code,
        "durationSeconds": outcome.duration.as_secs_f64(),
    });
    if let (Some(summary), Some(fields)) = (summary.as_object_mut(), fields.as_object()) {
        summary.extend(fields.clone());
    }
    std::fs::write(
        path,
        serde_json::to_vec_pretty(&summary).expect("summary serializes"),
    )
}
