//! DockerActor: the only place that talks to the Docker engine, through bollard.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt, TryStreamExt};

use crate::attach::{attach_raw, Endpoint};
pub use crate::images::{EnsureImage, ImageError, ImageReady, PullPolicy};

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
    /// The port of any actor that handles all of Docker's messages, images included (a fake).
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
        DockerPort::with_images(addr, addr.clone().recipient())
    }

    /// The port of a container actor, with images ensured by `images` (the ImageActor).
    pub fn with_images<A>(addr: &Addr<A>, images: Recipient<EnsureImage>) -> DockerPort
    where
        A: Actor
            + Handler<CreateContainer>
            + Handler<AttachContainer>
            + Handler<StartContainer>
            + Handler<WaitContainer>
            + Handler<KillContainer>
            + Handler<RemoveContainer>
            + Handler<CopyFromContainer>
            + Handler<RemoveTaskContainers>,
        A::Context: ToEnvelope<A, CreateContainer>
            + ToEnvelope<A, AttachContainer>
            + ToEnvelope<A, StartContainer>
            + ToEnvelope<A, WaitContainer>
            + ToEnvelope<A, KillContainer>
            + ToEnvelope<A, RemoveContainer>
            + ToEnvelope<A, CopyFromContainer>
            + ToEnvelope<A, RemoveTaskContainers>,
    {
        DockerPort {
            ensure_image: images,
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
    endpoint: Endpoint,
}

impl DockerActor {
    /// An actor over a bollard client; `endpoint` is the same engine, for raw attaches.
    pub fn new(docker: Docker, endpoint: Endpoint) -> DockerActor {
        DockerActor { docker, endpoint }
    }
}

impl Actor for DockerActor {
    type Context = Context<Self>;
}

fn bytes_err(e: bollard::errors::Error) -> io::Error {
    io::Error::other(DockerError::from(e))
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
