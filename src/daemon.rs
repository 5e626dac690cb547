//! `docker-worker start`: the daemon. Claims tasks from the Queue and runs each in its own container
//! until told to stop.
//!
//! Signals: SIGTERM or SIGINT stop claiming and abort running tasks as `exception/worker-shutdown`
//! (their logs are still written); SIGQUIT drains: stop claiming, let running tasks finish, then exit.

use std::process::ExitCode;
use std::sync::Arc;

use actix::prelude::*;
use docker_worker_actors::docker::{DockerActor, DockerPort};
use docker_worker_actors::images::ImageActor;
use docker_worker_actors::lifecycle::StopReason;
use docker_worker_actors::live_log::{LiveLogServer, LiveLogSettings, LiveLogs};
use docker_worker_actors::queue::artifacts::{QueueArtifactSink, StorageType};
use docker_worker_actors::queue::QueueLink;
use docker_worker_actors::queue::{Credentials, QueueActor, QueueClient, QueuePort, RetryPolicy};
use docker_worker_actors::supervisor::{
    ClaimSettings, Drain, LivePublish, Shutdown, Supervisor, TaskResources, TaskResourcesFactory,
};
use docker_worker_actors::task::TaskSpec;
use slog::{error, info, Logger};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::cli::StartArgs;
use crate::settings::{Settings, Sources};
use crate::{exit, logging, run};

/// Per-task actors for the daemon: the log to a backing file, artifacts to the Queue.
struct DaemonFactory {
    docker: DockerPort,
    client: QueueClient,
    storage: StorageType,
    live: LivePublish,
}

impl TaskResourcesFactory for DaemonFactory {
    fn create(&self, spec: &TaskSpec, queue: Option<&QueueLink>) -> std::io::Result<TaskResources> {
        let link = queue.ok_or_else(|| std::io::Error::other("a daemon task always comes with its claim"))?;
        // The Queue fills in `expires` (deadline + 1 year by default); this is only a fallback.
        let expires = spec
            .expires
            .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::days(365));
        let sink = QueueArtifactSink::new(
            self.client.clone(),
            &spec.task_id,
            spec.run_id,
            link.shared_credentials.clone(),
            self.storage,
            expires,
        );
        TaskResources::start(self.docker.clone(), Vec::new(), Arc::new(sink), Some(&self.live))
    }
}

/// `docker-worker start`.
pub fn main(args: StartArgs) -> ExitCode {
    let settings = match Settings::load(&Sources {
        profile: args.config.profile.as_deref().unwrap_or("production"),
        file: args.config.config.as_deref(),
        overrides: &args.config.overrides,
    })
    .and_then(|s| s.check_daemon().map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("docker-worker: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let (logger, _guard) = logging::init(&settings, false);
    let system = actix_rt::System::new();
    system.block_on(serve(settings, logger))
}

async fn serve(settings: Settings, logger: Logger) -> ExitCode {
    let (docker, endpoint) = match run::connect(&settings).await {
        Ok(connected) => connected,
        Err(e) => {
            error!(logger, "[alert-operator] cannot reach the Docker daemon"; "error" => &e);
            return ExitCode::from(exit::RESOURCE_UNAVAILABLE);
        }
    };
    let containers = DockerActor::new(docker.clone(), endpoint).start();
    let q = &settings.queue;
    let client = QueueClient::new(
        &settings.identity.root_url,
        Credentials {
            client_id: q.client_id.clone(),
            access_token: q.access_token.clone(),
            certificate: None,
        },
        RetryPolicy {
            attempts: q.retry_attempts,
            initial_delay: q.retry_initial_delay,
            max_delay: std::time::Duration::from_secs(30),
        },
        logger.clone(),
    );
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            error!(logger, "bad queue configuration"; "error" => %e);
            eprintln!("docker-worker: worker.root_url: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let images = ImageActor::new(
        docker,
        settings.images.clone(),
        Some(client.clone()),
        logger.clone(),
    )
    .start();
    let docker = DockerPort::with_images(&containers, images.recipient());
    let queue = QueuePort::from_addr(&QueueActor::new(client.clone()).start());
    let (exit_tx, exit_rx) = oneshot::channel();
    let claim = ClaimSettings {
        queue,
        task_queue_id: q.task_queue_id.clone(),
        worker_group: settings.identity.worker_group.clone(),
        worker_id: settings.identity.worker_id.clone(),
        min_interval: q.claim_min_interval,
        max_backoff: q.claim_max_backoff,
        idle_shutdown: settings.idle_shutdown,
    };
    let logs = LiveLogs::new();
    let live_settings = LiveLogSettings {
        reader_idle_timeout: settings.live_log_idle_timeout,
        logger: logger.clone(),
        ..LiveLogSettings::default()
    };
    let server = match LiveLogServer::start_with(settings.live_log_bind, logs.clone(), live_settings) {
        Ok(server) => server,
        Err(e) => {
            error!(logger, "[alert-operator] cannot start the live log server"; "bind" => %settings.live_log_bind, "error" => %e);
            return ExitCode::from(exit::USAGE);
        }
    };
    let public_base = if settings.live_log_public_url.is_empty() {
        let host = if settings.identity.public_ip.is_empty() {
            settings.identity.hostname.clone()
        } else {
            settings.identity.public_ip.clone()
        };
        format!("http://{host}:{}", server.local_addr().port())
    } else {
        settings.live_log_public_url.clone()
    };
    info!(logger, "live log server"; "address" => %server.local_addr(), "publicUrl" => &public_base);
    let factory = DaemonFactory {
        docker: docker.clone(),
        client,
        storage: settings.storage,
        live: LivePublish { logs, public_base },
    };
    let config = run::task_config(&settings, true, logger.clone());
    info!(logger, "start"; "taskQueueId" => &claim.task_queue_id, "capacity" => settings.capacity,
          "rootUrl" => &settings.identity.root_url);
    let supervisor = Supervisor::new(settings.capacity, docker, Box::new(factory), config)
        .claiming(claim, exit_tx)
        .start();
    watch_signals(supervisor, logger.clone());
    let _ = exit_rx.await;
    server.stop().await;
    ExitCode::SUCCESS
}

fn watch_signals(supervisor: Addr<Supervisor>, logger: Logger) {
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
    );
    let (Ok(mut term), Ok(mut int), Ok(mut quit)) = signals else {
        error!(logger, "could not install signal handlers");
        return;
    };
    actix_rt::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    info!(logger, "Terminating worker due to SIGTERM");
                    supervisor.do_send(Shutdown(StopReason::WorkerShutdown));
                }
                _ = int.recv() => {
                    info!(logger, "Terminating worker due to SIGINT");
                    supervisor.do_send(Shutdown(StopReason::WorkerShutdown));
                }
                _ = quit.recv() => {
                    info!(logger, "Draining worker due to SIGQUIT");
                    supervisor.do_send(Drain);
                }
            }
        }
    });
}
