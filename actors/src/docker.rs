//! DockerActor: the only place that talks to the Docker engine, through bollard.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt, TryStreamExt};

use crate::attach::{attach_raw, Endpoint};
use crate::log_stream::LogChunk;

/// A stream of bytes out of Docker: a container's output or a tar archive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// The label every container the worker creates carries, so the worker can always find its own.
pub const LABEL_MANAGED: &str = "docker-worker.managed";
/// The label holding the task id.
pub const LABEL_TASK_ID: &str = "docker-worker.task-id";
/// The label holding the run id.
pub const LABEL_RUN_ID: &str = "docker-worker.run-id";
/// The label holding the worker id.
pub const LABEL_WORKER_ID: &str = "docker-worker.worker-id";

/// A Docker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    /// The container or path does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Docker rejected the request as invalid (4xx): usually the task's doing, e.g. a bad command.
    #[error("Docker rejected the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Docker's message.
        message: String,
    },
    /// The Docker daemon failed (5xx).
    #[error("the Docker daemon failed ({status}): {message}")]
    Daemon {
        /// HTTP status.
        status: u16,
        /// Docker's message.
        message: String,
    },
    /// The Docker daemon could not be reached, or the connection broke.
    #[error("cannot talk to the Docker daemon: {0}")]
    Unreachable(String),
    /// The DockerActor is gone.
    #[error("the Docker actor stopped: {0}")]
    ActorGone(String),
}

impl DockerError {
    /// Whether Docker blamed the request itself, which for a container start means the task's command.
    pub fn is_task_fault(&self) -> bool {
        match self {
            DockerError::Rejected { .. } => true,
            // Older engines answer 500 when the entrypoint can't be executed.
            DockerError::Daemon { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("executable file not found")
                    || m.contains("no such file or directory")
                    || m.contains("permission denied")
                    || m.contains("exec format error")
            }
            _ => false,
        }
    }
}

impl From<bollard::errors::Error> for DockerError {
    fn from(e: bollard::errors::Error) -> Self {
        use bollard::errors::Error as B;
        match e {
            B::DockerResponseServerError {
                status_code: 404,
                message,
            } => DockerError::NotFound(message),
            B::DockerResponseServerError { status_code, message } if (400..500).contains(&status_code) => {
                DockerError::Rejected {
                    status: status_code,
                    message,
                }
            }
            B::DockerResponseServerError { status_code, message } => DockerError::Daemon {
                status: status_code,
                message,
            },
            other => DockerError::Unreachable(other.to_string()),
        }
    }
}

impl From<MailboxError> for DockerError {
    fn from(e: MailboxError) -> Self {
        DockerError::ActorGone(e.to_string())
    }
}

/// Why an image could not be had, and so whose fault that is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The registry has no such image.
    #[error("image {image} not found: {message}")]
    NotFound {
        /// The image as the task named it.
        image: String,
        /// The registry's reason.
        message: String,
    },
    /// The registry refused access.
    #[error("not authorized to pull image {image}: {message}")]
    Unauthorized {
        /// The image.
        image: String,
        /// The registry's reason.
        message: String,
    },
    /// The image name is not a valid reference.
    #[error("invalid image name {image}: {message}")]
    Invalid {
        /// The image.
        image: String,
        /// Docker's reason.
        message: String,
    },
    /// The registry or the Docker daemon could not be reached.
    #[error("could not pull image {image} after {attempts} attempt(s): {message}")]
    Unreachable {
        /// The image.
        image: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        message: String,
    },
}

impl ImageError {
    /// Whether the task is to blame (so it resolves `failed` rather than an exception).
    pub fn is_task_fault(&self) -> bool {
        !matches!(self, ImageError::Unreachable { .. })
    }
}

/// How hard to try pulling an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullPolicy {
    /// Attempts in all, at least 1.
    pub attempts: u32,
    /// The delay before the second attempt; it doubles after each further failure.
    pub initial_delay: Duration,
}

impl Default for PullPolicy {
    fn default() -> Self {
        PullPolicy {
            attempts: 3,
            initial_delay: Duration::from_secs(1),
        }
    }
}

/// Make sure an image is present, pulling it if not. Progress lines go to `progress`.
#[derive(Message)]
#[rtype(result = "Result<ImageReady, ImageError>")]
pub struct EnsureImage {
    /// The image reference.
    pub image: String,
    /// Where compact progress lines go (the task log).
    pub progress: Recipient<LogChunk>,
}

/// The image is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReady {
    /// Docker's image id.
    pub id: String,
    /// Whether it was pulled just now.
    pub pulled: bool,
}

/// What the task container looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The image to run.
    pub image: String,
    /// `Cmd`; empty means the image's default.
    pub command: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Labels, including the worker's own.
    pub labels: HashMap<String, String>,
    /// `/dev/shm` size in bytes.
    pub shm_size: Option<i64>,
}

/// Create the task container.
#[derive(Message)]
#[rtype(result = "Result<String, DockerError>")]
pub struct CreateContainer(pub ContainerSpec);

/// Attach to a created container's output (before it starts, so nothing is missed).
#[derive(Message)]
#[rtype(result = "Result<ByteStream, DockerError>")]
pub struct AttachContainer(pub String);

/// Start a created container.
#[derive(Message)]
#[rtype(result = "Result<(), DockerError>")]
pub struct StartContainer(pub String);

/// Wait for a container to exit; the result is its exit status.
#[derive(Message)]
#[rtype(result = "Result<i64, DockerError>")]
pub struct WaitContainer(pub String);

/// SIGKILL a container. A container that is already gone or stopped is not an error.
#[derive(Message)]
#[rtype(result = "Result<(), DockerError>")]
pub struct KillContainer(pub String);

/// Remove a container and its anonymous volumes. A container that is already gone is not an error.
#[derive(Message)]
#[rtype(result = "Result<(), DockerError>")]
pub struct RemoveContainer(pub String);

/// Copy a path out of a container as a tar stream (`GET /containers/{id}/archive`).
#[derive(Message)]
#[rtype(result = "Result<ByteStream, DockerError>")]
pub struct CopyFromContainer {
    /// The container.
    pub container: String,
    /// The path inside it.
    pub path: String,
}

/// Remove every container labelled with this task and run: the safety net when a task dies abruptly.
#[derive(Message)]
#[rtype(result = "Result<usize, DockerError>")]
pub struct RemoveTaskContainers {
    /// The task id.
    pub task_id: String,
    /// The run id.
    pub run_id: u32,
}

/// The messages a TaskActor sends to Docker, so a test can put a fake actor in the DockerActor's place.
#[derive(Clone)]
pub struct DockerPort {
    /// See [`EnsureImage`].
    pub ensure_image: Recipient<EnsureImage>,
    /// See [`CreateContainer`].
    pub create: Recipient<CreateContainer>,
    /// See [`AttachContainer`].
    pub attach: Recipient<AttachContainer>,
    /// See [`StartContainer`].
    pub start: Recipient<StartContainer>,
    /// See [`WaitContainer`].
    pub wait: Recipient<WaitContainer>,
    /// See [`KillContainer`].
    pub kill: Recipient<KillContainer>,
    /// See [`RemoveContainer`].
    pub remove: Recipient<RemoveContainer>,
    /// See [`CopyFromContainer`].
    pub copy_out: Recipient<CopyFromContainer>,
    /// See [`RemoveTaskContainers`].
    pub remove_task_containers: Recipient<RemoveTaskContainers>,
}

impl DockerPort {
    /// The port of any actor that handles all of Docker's messages.
    pub fn from_addr<A>(addr: &Addr<A>) -> DockerPort
    where
        A: Actor
            + Handler<EnsureImage>
            + Handler<CreateContainer>
            + Handler<AttachContainer>
            + Handler<StartContainer>
            + Handler<WaitContainer>
            + Handler<KillContainer>
            + Handler<RemoveContainer>
            + Handler<CopyFromContainer>
            + Handler<RemoveTaskContainers>,
        A::Context: ToEnvelope<A, EnsureImage>
            + ToEnvelope<A, CreateContainer>
            + ToEnvelope<A, AttachContainer>
            + ToEnvelope<A, StartContainer>
            + ToEnvelope<A, WaitContainer>
            + ToEnvelope<A, KillContainer>
            + ToEnvelope<A, RemoveContainer>
            + ToEnvelope<A, CopyFromContainer>
            + ToEnvelope<A, RemoveTaskContainers>,
    {
        DockerPort {
            ensure_image: addr.clone().recipient(),
            create: addr.clone().recipient(),
            attach: addr.clone().recipient(),
            start: addr.clone().recipient(),
            wait: addr.clone().recipient(),
            kill: addr.clone().recipient(),
            remove: addr.clone().recipient(),
            copy_out: addr.clone().recipient(),
            remove_task_containers: addr.clone().recipient(),
        }
    }
}

/// Send a Docker message and fold a lost actor into the error.
pub async fn call<M, T>(to: &Recipient<M>, msg: M) -> Result<T, DockerError>
where
    M: Message<Result = Result<T, DockerError>> + Send + 'static,
    T: Send + 'static,
{
    to.send(msg).await?
}

/// The real thing: one per worker, shared by all tasks. Every handler runs as its own future, so a
/// slow pull for one task never holds up another task's calls.
pub struct DockerActor {
    docker: Docker,
    pull: PullPolicy,
    endpoint: Endpoint,
}

impl DockerActor {
    /// An actor over a bollard client; `endpoint` is the same engine, for raw attaches.
    pub fn new(docker: Docker, pull: PullPolicy, endpoint: Endpoint) -> DockerActor {
        DockerActor {
            docker,
            pull,
            endpoint,
        }
    }
}

impl Actor for DockerActor {
    type Context = Context<Self>;
}

fn bytes_err(e: bollard::errors::Error) -> io::Error {
    io::Error::other(DockerError::from(e))
}

impl Handler<EnsureImage> for DockerActor {
    type Result = ResponseFuture<Result<ImageReady, ImageError>>;

    fn handle(&mut self, msg: EnsureImage, _: &mut Context<Self>) -> Self::Result {
        let docker = self.docker.clone();
        let policy = self.pull;
        Box::pin(ensure_image(docker, policy, msg))
    }
}

async fn ensure_image(
    docker: Docker,
    policy: PullPolicy,
    msg: EnsureImage,
) -> Result<ImageReady, ImageError> {
    let image = msg.image;
    if let Ok(found) = docker.inspect_image(&image).await {
        let _ = msg
            .progress
            .send(LogChunk::text(format!("{image} exists in the cache.\r\n")))
            .await;
        return Ok(ImageReady {
            id: found.id.unwrap_or_else(|| image.clone()),
            pulled: false,
        });
    }
    let attempts = policy.attempts.max(1);
    let mut delay = policy.initial_delay;
    let mut last = String::new();
    for attempt in 1..=attempts {
        match pull_once(&docker, &image, &msg.progress).await {
            Ok(()) => {
                return match docker.inspect_image(&image).await {
                    Ok(found) => Ok(ImageReady {
                        id: found.id.unwrap_or_else(|| image.clone()),
                        pulled: true,
                    }),
                    Err(e) => Err(ImageError::NotFound {
                        image,
                        message: format!("image missing after pulling: {}", DockerError::from(e)),
                    }),
                }
            }
            Err(e) => {
                let classified = classify_pull_error(&image, attempt, &e);
                if !matches!(classified, ImageError::Unreachable { .. }) {
                    return Err(classified);
                }
                last = e;
                if attempt < attempts {
                    let _ = msg
                        .progress
                        .send(LogChunk::text(format!(
                            "Pulling {image} failed (attempt {attempt} of {attempts}): {last}; retrying in {} s\r\n",
                            delay.as_secs_f64()
                        )))
                        .await;
                    actix_rt::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
    Err(ImageError::Unreachable {
        image,
        attempts,
        message: last,
    })
}

/// One pull, with docker-worker's compact progress lines.
async fn pull_once(docker: &Docker, image: &str, progress: &Recipient<LogChunk>) -> Result<(), String> {
    let (from_image, tag) = split_reference(image);
    let mut options = CreateImageOptionsBuilder::default().from_image(from_image);
    if let Some(tag) = tag {
        options = options.tag(tag);
    }
    let mut stream = docker.create_image(Some(options.build()), None, None);
    let mut started: HashMap<String, Instant> = HashMap::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError { status_code, message } => {
                format!("{message} (HTTP {status_code})")
            }
            bollard::errors::Error::DockerStreamError { error } => error,
            other => other.to_string(),
        })?;
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(detail);
        }
        let status = info.status.unwrap_or_default();
        let line = match info.id {
            Some(id) => match status.as_str() {
                "Downloading" if !started.contains_key(&id) => {
                    started.insert(id.clone(), Instant::now());
                    Some(format!("{id} - Started downloading\r\n"))
                }
                "Download complete" => {
                    let secs = started.get(&id).map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
                    Some(format!("{id} - Downloaded in {secs:.3} seconds\r\n"))
                }
                _ => None,
            },
            None if !status.is_empty() => Some(format!("{status}\r\n")),
            None => None,
        };
        if let Some(line) = line {
            let _ = progress.send(LogChunk::text(line)).await;
        }
    }
    Ok(())
}

/// Split `repo[:tag]` or `repo@digest`; a registry port (`host:5000/x`) is not a tag.
pub fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], Some(&image[last_slash + i + 1..])),
        None => (image, Some("latest")),
    }
}

fn classify_pull_error(image: &str, attempt: u32, message: &str) -> ImageError {
    let m = message.to_ascii_lowercase();
    let image = image.to_string();
    let message = message.to_string();
    if m.contains("invalid reference format") || m.contains("invalid tag format") {
        ImageError::Invalid { image, message }
    } else if m.contains("unauthorized")
        || m.contains("authentication required")
        || m.contains("no basic auth credentials")
    {
        ImageError::Unauthorized { image, message }
    } else if m.contains("not found")
        || m.contains("manifest unknown")
        || m.contains("repository does not exist")
        || m.contains("(http 404)")
    {
        ImageError::NotFound { image, message }
    } else {
        ImageError::Unreachable {
            image,
            attempts: attempt,
            message,
        }
    }
}

impl Handler<CreateContainer> for DockerActor {
    type Result = ResponseFuture<Result<String, DockerError>>;

    fn handle(&mut self, msg: CreateContainer, _: &mut Context<Self>) -> Self::Result {
        let docker = self.docker.clone();
        let spec = msg.0;
        Box::pin(async move {
            let body = ContainerCreateBody {
                image: Some(spec.image),
                cmd: (!spec.command.is_empty()).then_some(spec.command),
                env: Some(spec.env),
                labels: Some(spec.labels),
                tty: Some(true),
                attach_stdin: Some(false),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                open_stdin: Some(false),
                stdin_once: Some(false),
                host_config: Some(HostConfig {
                    shm_size: spec.shm_size,
                    extra_hosts: Some(vec!["localhost.localdomain:127.0.0.1".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let created = docker.create_container(None, body).await?;
            Ok(created.id)
        })
    }
}

impl Handler<AttachContainer> for DockerActor {
    type Result = ResponseFuture<Result<ByteStream, DockerError>>;

    fn handle(&mut self, msg: AttachContainer, _: &mut Context<Self>) -> Self::Result {
        let endpoint = self.endpoint.clone();
        let version = self.docker.client_version().to_string();
        Box::pin(async move { attach_raw(&endpoint, &version, &msg.0).await })
    }
}

impl Handler<StartContainer> for DockerActor {
    type Result = ResponseFuture<Result<(), DockerError>>;

    fn handle(&mut self, msg: StartContainer, _: &mut Context<Self>) -> Self::Result {
        let docker = self.docker.clone();
        Box::pin(async move { Ok(docker.start_container(&msg.0, None).await?) })
    }
}

impl Handler<WaitContainer> for DockerActor {
    type Result = ResponseFuture<Result<i64, DockerError>>;

    fn handle(&mut self, msg: WaitContainer, _: &mut Context<Self>) -> Self::Result {
        let docker = self.docker.clone();
        Box::pin(async move {
            let options = WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut stream = docker.wait_container(&msg.0, Some(options));
            match stream.next().await {
                Some(Ok(resp)) => Ok(resp.status_code),
                // bollard reports a non-zero exit as an error; it is a status, not a failure.
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(e.into()),
                None => Err(DockerError::Unreachable(format!(
                    "the wait stream for container {} ended without a status",
                    msg.0
                ))),
            }
        })
    }
}

impl Handler<KillContainer> for DockerActor {
    type Result = ResponseFuture<Result<(), DockerError>>;

    fn handle(&mut self, msg: KillContainer, _: &mut Context<Self>) -> Self::Result {
        let docker = self.docker.clone();
        Box::pin(async move {
            let options = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
            match docker
                .kill_container(&msg.0, Some(options))
                .await
                .map_err(DockerError::from)
            {
                Ok(()) | Err(DockerError::NotFound(_)) => Ok(()),
                // 409: the container is not running, which is what a kill wants.
                Err(DockerError::Rejected { status: 409, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

impl Handler<RemoveContainer> for DockerActor {
    type Result = ResponseFuture<Result<(), DockerError>>;

    fn handle(&mut self, msg: RemoveContainer, _: &mut Context<Self>) -> Self::Result {
        let docker = self.docker.clone();
        Box::pin(async move { remove_container(&docker, &msg.0).await })
    }
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker
        .remove_container(id, Some(options))
        .await
        .map_err(DockerError::from)
    {
        Ok(()) | Err(DockerError::NotFound(_)) => Ok(()),
        // 409 "removal already in progress": someone else is removing it.
        Err(DockerError::Rejected { status: 409, message }) if message.contains("in progress") => Ok(()),
        Err(e) => Err(e),
    }
}

impl Handler<CopyFromContainer> for DockerActor {
    type Result = ResponseFuture<Result<ByteStream, DockerError>>;

    fn handle(&mut self, msg: CopyFromContainer, _: &mut Context<Self>) -> Self::Result {
        let docker = self.docker.clone();
        Box::pin(async move {
            // Docker resolves archive paths from the container's root; a relative path means the same.
            let path = if msg.path.starts_with('/') {
                msg.path
            } else {
                format!("/{}", msg.path)
            };
            let options = DownloadFromContainerOptionsBuilder::default().path(&path).build();
            let mut stream = Box::pin(docker.download_from_container(&msg.container, Some(options)));
            // Errors such as a missing path arrive as the first item; look at it before handing the stream on.
            let first = match stream.next().await {
                None => Bytes::new(),
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => return Err(e.into()),
            };
            let rest = stream.map_err(bytes_err);
            let stream: ByteStream =
                Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(rest));
            Ok(stream)
        })
    }
}

impl Handler<RemoveTaskContainers> for DockerActor {
    type Result = ResponseFuture<Result<usize, DockerError>>;

    fn handle(&mut self, msg: RemoveTaskContainers, _: &mut Context<Self>) -> Self::Result {
        let docker = self.docker.clone();
        Box::pin(async move {
            let filters = HashMap::from([(
                "label".to_string(),
                vec![
                    format!("{LABEL_TASK_ID}={}", msg.task_id),
                    format!("{LABEL_RUN_ID}={}", msg.run_id),
                ],
            )]);
            let options = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            let found = docker.list_containers(Some(options)).await?;
            let mut removed = 0;
            for container in found {
                if let Some(id) = container.id {
                    remove_container(&docker, &id).await?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }
}

/// Drain a stream into memory; for tests and small archives only.
pub async fn collect(stream: ByteStream) -> Result<Vec<u8>, io::Error> {
    stream
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(split_reference("busybox"), ("busybox", Some("latest")));
        assert_eq!(split_reference("busybox:1.36"), ("busybox", Some("1.36")));
        assert_eq!(
            split_reference("localhost:5000/team/img"),
            ("localhost:5000/team/img", Some("latest"))
        );
        assert_eq!(
            split_reference("localhost:5000/team/img:v2"),
            ("localhost:5000/team/img", Some("v2"))
        );
        assert_eq!(split_reference("img@sha256:abc"), ("img@sha256:abc", None));
    }

    #[test]
    fn pull_errors_say_whose_fault() {
        let e = classify_pull_error(
            "x",
            1,
            "pull access denied for x, repository does not exist or may require 'docker login'",
        );
        assert!(matches!(e, ImageError::NotFound { .. }) && e.is_task_fault());
        let e = classify_pull_error("x", 1, "unauthorized: authentication required");
        assert!(matches!(e, ImageError::Unauthorized { .. }));
        let e = classify_pull_error(
            "x",
            2,
            "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io: no such host",
        );
        assert!(matches!(e, ImageError::Unreachable { attempts: 2, .. }) && !e.is_task_fault());
        let e = classify_pull_error("X Y", 1, "invalid reference format (HTTP 400)");
        assert!(matches!(e, ImageError::Invalid { .. }));
    }

    #[test]
    fn start_errors_about_the_command_are_the_tasks_fault() {
        let e = DockerError::Daemon {
            status: 500,
            message:
                "OCI runtime create failed: exec: \"echo \\\"Hello\\\"\": executable file not found in $PATH"
                    .into(),
        };
        assert!(e.is_task_fault());
        assert!(!DockerError::Unreachable("socket closed".into()).is_task_fault());
    }
}
