//! The raw side: the Docker engine driven directly through bollard, doing what a task needs and nothing
//! more, and engine events for timing what the worker does.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::container::LogOutput;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio::runtime::Runtime;

use super::BenchError;

/// The label every raw container carries, its value the run's id, so a run can find and remove what it
/// left without touching another run's.
pub const RAW_LABEL: &str = "docker-worker-bench.raw";

/// A connection to the engine with a runtime of its own; its methods block.
pub struct Engine {
    rt: Runtime,
    docker: Docker,
    run: String,
    /// The engine's version, e.g. `20.10.24+dfsg1`.
    pub version: String,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn connect() -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_local_defaults()?.negotiate_version().await
}

fn not_running() -> Option<bollard::query_parameters::WaitContainerOptions> {
    Some(
        WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build(),
    )
}

/// Wait for a container to stop; a non-zero exit is a status, not an error.
async fn wait(docker: &Docker, id: &str) -> Result<i64, BenchError> {
    match docker.wait_container(id, not_running()).next().await {
        Some(Ok(r)) => Ok(r.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(e.into()),
        None => Err(BenchError::Broken(format!(
            "the wait for container {id} ended without a status"
        ))),
    }
}

async fn remove(docker: &Docker, id: &str) -> Result<(), BenchError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        // Gone, or being removed already: what a removal wants.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        other => Ok(other?),
    }
}

fn body(run: &str, image: &str, cmd: &[&str], tty: bool) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        labels: Some(HashMap::from([(RAW_LABEL.to_string(), run.to_string())])),
        tty: Some(tty),
        attach_stdout: Some(tty),
        attach_stderr: Some(tty),
        ..Default::default()
    }
}

/// create → start → wait → remove: what a client of the engine does at the least to run a command.
async fn run_sequence(docker: &Docker, run: &str, image: &str, cmd: &[&str]) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let id = docker
        .create_container(None, body(run, image, cmd, false))
        .await?
        .id;
    let ran = async {
        docker.start_container(&id, None).await?;
        wait(docker, &id).await
    }
    .await;
    remove(docker, &id).await?;
    match ran? {
        0 => Ok(started.elapsed()),
        code => Err(BenchError::Broken(format!("raw container {cmd:?} exited {code}"))),
    }
}

impl Engine {
    /// Connect to the engine (`DOCKER_HOST` or the local socket).
    pub fn connect() -> Result<Engine, BenchError> {
        let rt = runtime();
        let docker = rt.block_on(connect())?;
        let version = rt.block_on(docker.version())?.version.unwrap_or_default();
        Ok(Engine {
            rt,
            docker,
            run: uuid::Uuid::new_v4().simple().to_string(),
            version,
        })
    }

    /// One raw create → start → wait → remove of `cmd`; how long it took.
    pub fn run_once(&self, image: &str, cmd: &[&str]) -> Result<Duration, BenchError> {
        self.rt
            .block_on(run_sequence(&self.docker, &self.run, image, cmd))
    }

    /// `n` raw sequences, `parallel` at a time; the wall time of all of them.
    pub fn run_many(
        &self,
        image: &str,
        cmd: &[&str],
        n: usize,
        parallel: usize,
    ) -> Result<Duration, BenchError> {
        let docker = &self.docker;
        self.rt.block_on(async {
            let started = Instant::now();
            stream::iter(0..n)
                .map(|_| run_sequence(docker, &self.run, image, cmd))
                .buffer_unordered(parallel)
                .try_for_each(|_| async { Ok(()) })
                .await?;
            Ok(started.elapsed())
        })
    }

    /// Run `sh -c script` in a TTY container attached before it starts, as the worker runs a task, handing
    /// each chunk of its output to `on_chunk` as it arrives; then remove the container.
    pub fn run_attached(
        &self,
        image: &str,
        script: &str,
        on_chunk: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BenchError> {
        let docker = &self.docker;
        self.rt.block_on(async {
            let id = docker
                .create_container(None, body(&self.run, image, &["/bin/sh", "-c", script], true))
                .await?
                .id;
            let ran = async {
                let options = AttachContainerOptionsBuilder::default()
                    .stream(true)
                    .stdout(true)
                    .stderr(true)
                    .build();
                let mut output = docker.attach_container(&id, Some(options)).await?.output;
                docker.start_container(&id, None).await?;
                while let Some(chunk) = output.next().await {
                    match chunk? {
                        LogOutput::StdOut { message }
                        | LogOutput::StdErr { message }
                        | LogOutput::Console { message } => on_chunk(&message),
                        LogOutput::StdIn { .. } => {}
                    }
                }
                wait(docker, &id).await
            }
            .await;
            remove(docker, &id).await?;
            match ran? {
                0 => Ok(()),
                code => Err(BenchError::Broken(format!("raw container exited {code}"))),
            }
        })
    }

    /// Run `sh -c script` to its end and keep the stopped container (for its files); its id. The caller
    /// removes it ([`Engine::remove_all`]).
    pub fn run_kept(&self, image: &str, script: &str) -> Result<String, BenchError> {
        let docker = &self.docker;
        self.rt.block_on(async {
            let id = docker
                .create_container(None, body(&self.run, image, &["/bin/sh", "-c", script], false))
                .await?
                .id;
            let ran = async {
                docker.start_container(&id, None).await?;
                wait(docker, &id).await
            }
            .await;
            match ran {
                Ok(0) => Ok(id),
                other => {
                    let _ = remove(docker, &id).await;
                    Err(BenchError::Broken(format!("raw container ended {other:?}")))
                }
            }
        })
    }

    /// Whether the engine still creates and removes a container within `limit`. A deadlocked dockerd
    /// (Docker 20.10's libnetwork can deadlock under container churn) still lists containers but creates
    /// none; this tells a hung figure from a slow one before the next figure starts.
    pub fn check(&self, limit: Duration) -> Result<(), BenchError> {
        let docker = &self.docker;
        let probe = async {
            let id = docker
                .create_container(None, body(&self.run, crate::fixture_image(), &["true"], false))
                .await?
                .id;
            remove(docker, &id).await
        };
        match self
            .rt
            .block_on(async { tokio::time::timeout(limit, probe).await })
        {
            Ok(result) => result,
            Err(_) => Err(BenchError::Timeout(
                "creating and removing a container".into(),
                limit.as_secs(),
            )),
        }
    }

    /// Ids of the containers, running or not, with this label (`key=value`).
    pub fn containers_labelled(&self, label: &str) -> Result<Vec<String>, BenchError> {
        let filters = HashMap::from([("label", vec![label])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self.rt.block_on(self.docker.list_containers(Some(options)))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Remove these containers, whatever their state; errors are ignored (cleanup after a failure).
    pub fn remove_all(&self, ids: &[String]) {
        for id in ids {
            let _ = self.rt.block_on(remove(&self.docker, id));
        }
    }

    /// Remove every raw container a run left (after a failure in the middle of a sequence).
    pub fn remove_raw_leftovers(&self) -> Result<usize, BenchError> {
        let left = self.containers_labelled(&format!("{RAW_LABEL}={}", self.run))?;
        self.remove_all(&left);
        Ok(left.len())
    }
}

/// Waits for one engine event (`die`, `destroy`, …) of a container with a label; subscribed from a
/// second before it was made, so an event that happens while the subscription is set up still counts.
pub struct EventWatch {
    rx: mpsc::Receiver<Result<SystemTime, String>>,
    what: String,
}

impl EventWatch {
    /// Watch for `action` on a container labelled `label` (`key=value`), for at most `limit`.
    pub fn start(label: &str, action: &str, limit: Duration) -> EventWatch {
        let (tx, rx) = mpsc::channel();
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let since = (unix(SystemTime::now()) - 1).to_string();
        let until = (unix(SystemTime::now() + limit) + 1).to_string();
        let (label_owned, action_owned) = (label.to_string(), action.to_string());
        thread::spawn(move || {
            let result = runtime().block_on(async {
                let docker = connect().await.map_err(|e| e.to_string())?;
                let filters = HashMap::from([
                    ("type", vec!["container"]),
                    ("label", vec![label_owned.as_str()]),
                    ("event", vec![action_owned.as_str()]),
                ]);
                let options = EventsOptionsBuilder::default()
                    .since(&since)
                    .until(&until)
                    .filters(&filters)
                    .build();
                let mut events = docker.events(Some(options));
                match events.next().await {
                    Some(Ok(event)) => {
                        let nanos = event.time_nano.unwrap_or_default().max(0) as u64;
                        Ok(UNIX_EPOCH + Duration::from_nanos(nanos))
                    }
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("the event stream ended".to_string()),
                }
            });
            let _ = tx.send(result);
        });
        EventWatch {
            rx,
            what: format!("a {action} event for {label}"),
        }
    }

    /// When the event happened (the engine's clock, which is the host's).
    pub fn wait(&self, timeout: Duration) -> Result<SystemTime, BenchError> {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(at)) => Ok(at),
            Ok(Err(e)) => Err(BenchError::Broken(format!("watching for {}: {e}", self.what))),
            Err(_) => Err(BenchError::Timeout(self.what.clone(), timeout.as_secs())),
        }
    }
}
