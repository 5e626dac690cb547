//! ImageActor: makes a task's image present. It checks the task may use the image on every request
//! (cached or not), shares one pull or load between tasks that want the same image at once, runs
//! different images' fetches in parallel up to a limit, and removes the images it fetched once no
//! task has used them for a while, or sooner when the disk runs low.

pub mod artifact;
pub mod pull;
pub mod reference;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveImageOptionsBuilder};
use bollard::Docker;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use slog::{info, warn, Logger};
use tokio::sync::Semaphore;

use crate::docker::DockerError;
use crate::log_stream::LogChunk;
use crate::logfmt::fmt_log;
use crate::payload::Image;
use crate::queue::client::QueueClient;
use crate::queue::Credentials;
use crate::task::scope_satisfied;
use reference::{image_scope, is_public_artifact, ImageReference, RegistryCredentials};

/// Why an image could not be had, and so whose fault that is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The task lacks the scope for this image.
    #[error("Not authorized to use {image}. The task needs scope {scope}. Ensure that the task scopes are correctly defined in the task definition.")]
    NotAuthorized {
        /// The image, as docker-worker named it in this message.
        image: String,
        /// The scope that is missing.
        scope: String,
    },
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
    /// An image from an artifact could not be found, downloaded or loaded.
    #[error("{message}")]
    Artifact {
        /// `<path> from task <taskId>`, or the namespace.
        image: String,
        /// One sentence for the task log.
        message: String,
        /// Whether the task is to blame.
        task_fault: bool,
    },
    /// The worker can't fetch this kind of image in this setting (e.g. no Queue to fetch from).
    #[error("{0}")]
    Unavailable(String),
}

impl ImageError {
    /// Whether the task is to blame (so it resolves `failed` rather than an exception).
    pub fn is_task_fault(&self) -> bool {
        match self {
            ImageError::Unreachable { .. } | ImageError::Unavailable(_) => false,
            ImageError::Artifact { task_fault, .. } => *task_fault,
            _ => true,
        }
    }
}

/// How hard to try fetching an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullPolicy {
    /// Attempts in all, at least 1.
    pub attempts: u32,
    /// The delay before the second attempt; it doubles after each further failure.
    pub initial_delay: Duration,
    /// The longest delay between attempts.
    pub max_delay: Duration,
    /// An attempt that receives nothing for this long is abandoned (and may be retried).
    pub stall_timeout: Duration,
}

impl Default for PullPolicy {
    fn default() -> Self {
        PullPolicy {
            attempts: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(120),
        }
    }
}

/// When fetched images are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// How often to look.
    pub interval: Duration,
    /// An image no task used for this long is removed.
    pub expiry: Duration,
    /// Below this much free space where Docker keeps images, unused images go at once; 0: never.
    pub min_free_bytes: u64,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            interval: Duration::from_secs(60),
            expiry: Duration::from_secs(2 * 3600),
            min_free_bytes: 10_000_000_000,
        }
    }
}

/// Everything the ImageActor needs to know.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// Retries of a pull or download.
    pub pull: PullPolicy,
    /// `host[/user]` → credentials, as docker-worker's `registries`.
    pub registries: BTreeMap<String, RegistryCredentials>,
    /// The registry of `user/image` references.
    pub default_registry: String,
    /// Different images fetched at once, at most.
    pub max_parallel: usize,
    /// Garbage collection.
    pub gc: GcPolicy,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            pull: PullPolicy::default(),
            registries: BTreeMap::new(),
            default_registry: "registry.hub.docker.com".into(),
            max_parallel: 4,
            gc: GcPolicy::default(),
        }
    }
}

/// Progress of one fetch, for a display such as `docker-worker run`'s.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct ImageProgress {
    /// What is being fetched.
    pub image: String,
    /// Bytes so far.
    pub done_bytes: u64,
    /// Bytes in all, when known.
    pub total_bytes: Option<u64>,
    /// Layers (or files) finished.
    pub parts_done: usize,
    /// Layers (or files) in all, as far as known.
    pub parts: usize,
    /// The fetch ended.
    pub done: bool,
}

/// Make sure a task's image is present, fetching it if needed.
#[derive(Message)]
#[rtype(result = "Result<ImageReady, ImageError>")]
pub struct EnsureImage {
    /// The image as the payload gives it.
    pub image: Image,
    /// The task's scopes, checked on every request.
    pub scopes: Vec<String>,
    /// The task's credentials, for artifacts outside `public/`.
    pub credentials: Option<Credentials>,
    /// Where progress lines go (the task log).
    pub progress: Recipient<LogChunk>,
    /// Where a progress display gets its figures, if there is one.
    pub display: Option<Recipient<ImageProgress>>,
}

/// The image is present, and stays so while the lease lives.
#[derive(Debug)]
pub struct ImageReady {
    /// The name to create the container from.
    pub name: String,
    /// Docker's image id.
    pub id: String,
    /// Whether this request's fetch (its own or one it shared) put the image there.
    pub fetched: bool,
    /// `sha256:<hex>` of the artifact an artifact image came from, when this worker downloaded it.
    pub artifact_sha256: Option<String>,
    /// Keeps the garbage collector away from the image until dropped.
    pub lease: Option<ImageLease>,
}

/// While one lives, the image is not removed; dropping it marks the image used just now.
#[derive(Debug)]
pub struct ImageLease(Arc<Usage>);

impl Drop for ImageLease {
    fn drop(&mut self) {
        self.0.last_used_ms.store(now_ms(), Ordering::SeqCst);
        self.0.leases.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct Usage {
    leases: AtomicUsize,
    last_used_ms: AtomicU64,
}

/// What the worker knows about one image name.
#[derive(Debug)]
struct Tracked {
    usage: Arc<Usage>,
    /// Set once this worker pulled or loaded it: only such images are ever removed.
    fetched_id: Option<String>,
    artifact_sha256: Option<String>,
}

/// What a shared fetch yields.
#[derive(Debug, Clone)]
struct Fetched {
    id: String,
    fetched: bool,
}

type Flight = Shared<BoxFuture<'static, Result<Fetched, ImageError>>>;

/// Subscribers to a fetch's progress: every task waiting on it sees the same lines.
#[derive(Clone, Default)]
pub struct Watchers(Arc<Mutex<Vec<Watcher>>>);

/// One waiting task: its log, and its progress display if it has one.
type Watcher = (Recipient<LogChunk>, Option<Recipient<ImageProgress>>);

impl Watchers {
    fn add(&self, log: Recipient<LogChunk>, display: Option<Recipient<ImageProgress>>) {
        self.0.lock().expect("watchers lock").push((log, display));
    }

    /// Send one line to every waiting task's log.
    pub async fn line(&self, text: String) {
        let logs: Vec<_> = self
            .0
            .lock()
            .expect("watchers lock")
            .iter()
            .map(|w| w.0.clone())
            .collect();
        for log in logs {
            let _ = log.send(LogChunk::text(text.clone())).await;
        }
    }

    /// Update every display.
    pub fn display(&self, progress: ImageProgress) {
        for (_, display) in self.0.lock().expect("watchers lock").iter() {
            if let Some(d) = display {
                d.do_send(progress.clone());
            }
        }
    }
}

struct Inner {
    docker: Docker,
    settings: ImageSettings,
    queue: Option<QueueClient>,
    logger: Logger,
    flights: Mutex<HashMap<String, (Flight, Watchers)>>,
    /// Held across a lease being taken and across each removal, so neither races the other.
    tracked: tokio::sync::Mutex<HashMap<String, Tracked>>,
    fetch_slots: Semaphore,
    docker_root: Mutex<Option<PathBuf>>,
}

/// The one ImageActor of a worker.
pub struct ImageActor {
    inner: Arc<Inner>,
}

impl ImageActor {
    /// An actor over Docker, fetching artifact images through `queue` when there is one.
    pub fn new(
        docker: Docker,
        settings: ImageSettings,
        queue: Option<QueueClient>,
        logger: Logger,
    ) -> ImageActor {
        let slots = settings.max_parallel.max(1);
        ImageActor {
            inner: Arc::new(Inner {
                docker,
                settings,
                queue,
                logger,
                flights: Mutex::new(HashMap::new()),
                tracked: tokio::sync::Mutex::new(HashMap::new()),
                fetch_slots: Semaphore::new(slots),
                docker_root: Mutex::new(None),
            }),
        }
    }
}

impl Actor for ImageActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let inner = self.inner.clone();
        ctx.spawn(
            async move {
                match inner.docker.info().await {
                    Ok(info) => {
                        *inner.docker_root.lock().expect("root lock") =
                            info.docker_root_dir.map(PathBuf::from)
                    }
                    Err(e) => warn!(inner.logger, "docker info failed"; "error" => %e),
                }
            }
            .into_actor(self),
        );
        let interval = self.inner.settings.gc.interval;
        ctx.run_interval(interval, |act, ctx| {
            let inner = act.inner.clone();
            ctx.spawn(
                async move {
                    sweep(&inner).await;
                }
                .into_actor(act),
            );
        });
    }
}

impl Handler<EnsureImage> for ImageActor {
    type Result = ResponseFuture<Result<ImageReady, ImageError>>;

    fn handle(&mut self, msg: EnsureImage, _: &mut Context<Self>) -> Self::Result {
        Box::pin(ensure(self.inner.clone(), msg))
    }
}

/// Sweep now, as the interval would; the answer lists the images removed.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct SweepImages;

impl Handler<SweepImages> for ImageActor {
    type Result = ResponseFuture<Vec<String>>;

    fn handle(&mut self, _: SweepImages, _: &mut Context<Self>) -> Self::Result {
        let inner = self.inner.clone();
        Box::pin(async move { sweep(&inner).await })
    }
}

/// What to fetch, once the request is resolved and authorized.
enum Source {
    Registry(ImageReference, Option<(String, RegistryCredentials)>),
    Artifact { task_id: String, path: String },
}

async fn ensure(inner: Arc<Inner>, msg: EnsureImage) -> Result<ImageReady, ImageError> {
    let (name, source) = match &msg.image {
        Image::DockerImage { name } => {
            let reference = ImageReference::parse(name);
            let credentials = reference
                .credentials(&inner.settings.registries, &inner.settings.default_registry)
                .map(|(host, c)| (host, c.clone()));
            if credentials.is_some() {
                let scope = image_scope(&reference);
                if !scope_satisfied(&msg.scopes, &scope) {
                    return Err(ImageError::NotAuthorized {
                        image: reference.full_name(),
                        scope,
                    });
                }
            }
            (name.clone(), Source::Registry(reference, credentials))
        }
        Image::TaskImage { task_id, path } => {
            authorize_artifact(&msg.scopes, path, &format!("{path} from task {task_id}"))?;
            (
                artifact::local_name(task_id, path),
                Source::Artifact {
                    task_id: task_id.clone(),
                    path: path.clone(),
                },
            )
        }
        Image::IndexedImage { namespace, path } => {
            authorize_artifact(
                &msg.scopes,
                path,
                &format!("{path} from index namespace {namespace}"),
            )?;
            let queue = queue_of(&inner)?;
            let task_id = queue
                .find_task(namespace, msg.credentials.as_ref())
                .await
                .map_err(|e| ImageError::Artifact {
                    image: namespace.clone(),
                    message: format!("Could not find a task associated with \"{namespace}\" namespace. {e}"),
                    task_fault: !matches!(e, crate::queue::QueueError::Unavailable(_)),
                })?;
            (
                artifact::local_name(&task_id, path),
                Source::Artifact {
                    task_id,
                    path: path.clone(),
                },
            )
        }
    };
    // The lease comes first, so the collector can't take the image between its check and its use.
    let lease = {
        let mut tracked = inner.tracked.lock().await;
        let entry = tracked.entry(name.clone()).or_insert_with(|| Tracked {
            usage: Arc::new(Usage::default()),
            fetched_id: None,
            artifact_sha256: None,
        });
        entry.usage.leases.fetch_add(1, Ordering::SeqCst);
        ImageLease(entry.usage.clone())
    };
    let (flight, watchers, joined) = {
        let mut flights = inner.flights.lock().expect("flights lock");
        match flights.get(&name) {
            Some((flight, watchers)) => {
                watchers.add(msg.progress.clone(), msg.display.clone());
                (flight.clone(), watchers.clone(), true)
            }
            None => {
                let watchers = Watchers::default();
                watchers.add(msg.progress.clone(), msg.display.clone());
                let flight = fetch(
                    inner.clone(),
                    name.clone(),
                    source,
                    msg.credentials.clone(),
                    watchers.clone(),
                )
                .boxed()
                .shared();
                flights.insert(name.clone(), (flight.clone(), watchers.clone()));
                (flight, watchers, false)
            }
        }
    };
    if joined {
        let _ = msg
            .progress
            .send(LogChunk::text(fmt_log(&format!(
                "Another task is already fetching image {}; waiting for it.",
                msg.image.describe()
            ))))
            .await;
    }
    drop(watchers);
    let result = flight.clone().await;
    {
        let mut flights = inner.flights.lock().expect("flights lock");
        if flights.get(&name).is_some_and(|(f, _)| f.ptr_eq(&flight)) {
            flights.remove(&name);
        }
    }
    let fetched = result?;
    // `fetch` recorded what it fetched; the lease keeps the entry.
    let artifact_sha256 = inner
        .tracked
        .lock()
        .await
        .get(&name)
        .and_then(|t| t.artifact_sha256.clone());
    Ok(ImageReady {
        name,
        id: fetched.id,
        fetched: fetched.fetched,
        artifact_sha256,
        lease: Some(lease),
    })
}

fn authorize_artifact(scopes: &[String], path: &str, image: &str) -> Result<(), ImageError> {
    if is_public_artifact(path) {
        return Ok(());
    }
    let scope = format!("queue:get-artifact:{path}");
    if scope_satisfied(scopes, &scope) {
        Ok(())
    } else {
        Err(ImageError::NotAuthorized {
            image: image.to_string(),
            scope,
        })
    }
}

fn queue_of(inner: &Inner) -> Result<&QueueClient, ImageError> {
    inner.queue.as_ref().ok_or_else(|| {
        ImageError::Unavailable(
            "Images from task artifacts need a Taskcluster deployment: set worker.root_url (or TASKCLUSTER_ROOT_URL).".into(),
        )
    })
}

/// The fetch that every task wanting `name` now shares: present already, or pulled or loaded.
async fn fetch(
    inner: Arc<Inner>,
    name: String,
    source: Source,
    credentials: Option<Credentials>,
    watchers: Watchers,
) -> Result<Fetched, ImageError> {
    if let Some(id) = present(&inner.docker, &name).await {
        let line = match &source {
            Source::Registry(..) => format!("{name} exists in the cache.\r\n"),
            Source::Artifact { task_id, path } => fmt_log(&format!(
                "Image '{path}' from task '{task_id}' loaded.  Using image ID {id}."
            )),
        };
        watchers.line(line).await;
        return Ok(Fetched { id, fetched: false });
    }
    let _slot = inner
        .fetch_slots
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let started = std::time::Instant::now();
    info!(inner.logger, "image fetch started"; "image" => &name);
    let sha256 = match &source {
        Source::Registry(reference, creds) => {
            pull::pull(
                &inner.docker,
                reference,
                creds.clone(),
                &inner.settings.pull,
                &watchers,
            )
            .await?;
            None
        }
        Source::Artifact { task_id, path } => {
            let queue = queue_of(&inner)?;
            let loaded = artifact::download_and_load(
                &inner.docker,
                queue,
                task_id,
                path,
                &name,
                credentials.as_ref(),
                &inner.settings.pull,
                &watchers,
            )
            .await?;
            Some(loaded.sha256)
        }
    };
    let Some(id) = present(&inner.docker, &name).await else {
        return Err(ImageError::NotFound {
            image: name,
            message: "image missing after pulling".into(),
        });
    };
    if let Source::Artifact { task_id, path } = &source {
        watchers
            .line(fmt_log(&format!(
                "Image '{path}' from task '{task_id}' loaded.  Using image ID {id}."
            )))
            .await;
    }
    info!(inner.logger, "image fetched"; "image" => &name, "id" => &id,
          "ms" => u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    if let Some(entry) = inner.tracked.lock().await.get_mut(&name) {
        entry.fetched_id = Some(id.clone());
        entry.artifact_sha256 = sha256;
    }
    Ok(Fetched { id, fetched: true })
}

async fn present(docker: &Docker, name: &str) -> Option<String> {
    let name = if name.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    };
    docker.inspect_image(&name).await.ok().and_then(|i| i.id)
}

/// Why an image is due for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// No task used it for the expiry time.
    Expired,
    /// Free disk is below the threshold.
    LowDisk,
}

/// Whether an image this worker fetched, last used `idle` ago and with `leases` tasks using it, is
/// due for removal.
pub fn due(leases: usize, idle: Duration, expiry: Duration, low_disk: bool) -> Option<Due> {
    if leases > 0 {
        None
    } else if low_disk {
        Some(Due::LowDisk)
    } else if idle >= expiry {
        Some(Due::Expired)
    } else {
        None
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn low_disk(inner: &Inner) -> bool {
    let min = inner.settings.gc.min_free_bytes;
    if min == 0 {
        return false;
    }
    let Some(root) = inner.docker_root.lock().expect("root lock").clone() else {
        return false;
    };
    match rustix::fs::statvfs(&root) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize) < min,
        Err(_) => false,
    }
}

/// Remove the images this worker fetched that are due, unless a container uses them.
async fn sweep(inner: &Inner) -> Vec<String> {
    let low = low_disk(inner);
    let now = now_ms();
    let candidates: Vec<(String, String, Due)> = {
        let tracked = inner.tracked.lock().await;
        tracked
            .iter()
            .filter_map(|(name, t)| {
                let id = t.fetched_id.clone()?;
                let last = t.usage.last_used_ms.load(Ordering::SeqCst);
                let idle = Duration::from_millis(now.saturating_sub(last));
                due(
                    t.usage.leases.load(Ordering::SeqCst),
                    idle,
                    inner.settings.gc.expiry,
                    low,
                )
                .map(|d| (name.clone(), id, d))
            })
            .collect()
    };
    if candidates.is_empty() {
        return Vec::new();
    }
    let in_use = match images_in_use(&inner.docker).await {
        Ok(ids) => ids,
        Err(e) => {
            warn!(inner.logger, "garbage collection failed"; "error" => %e);
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for (name, id, why) in candidates {
        if in_use.contains(&id) {
            warn!(inner.logger, "garbage collection warning"; "image" => &name, "id" => &id,
                  "reason" => "a container uses the image, so it is kept");
            continue;
        }
        let mut tracked = inner.tracked.lock().await;
        match tracked.get(&name) {
            Some(t) if t.usage.leases.load(Ordering::SeqCst) == 0 => {}
            _ => continue,
        }
        let options = RemoveImageOptionsBuilder::default().build();
        match inner
            .docker
            .remove_image(&name, Some(options), None)
            .await
            .map_err(DockerError::from)
        {
            Ok(_) | Err(DockerError::NotFound(_)) => {
                tracked.remove(&name);
                let reason = match why {
                    Due::Expired => "expired",
                    Due::LowDisk => "low disk",
                };
                info!(inner.logger, "image removed"; "image" => &name, "id" => &id, "reason" => reason);
                removed.push(name);
            }
            Err(e) => {
                warn!(inner.logger, "garbage collection warning"; "image" => &name, "error" => %e);
            }
        }
    }
    removed
}

async fn images_in_use(docker: &Docker) -> Result<HashSet<String>, DockerError> {
    let options = ListContainersOptionsBuilder::default().all(true).build();
    let containers = docker.list_containers(Some(options)).await?;
    Ok(containers.into_iter().filter_map(|c| c.image_id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unleased_images_are_due_expired_or_for_disk() {
        let hour = Duration::from_secs(3600);
        assert_eq!(due(1, 10 * hour, hour, true), None);
        assert_eq!(due(0, 10 * hour, hour, false), Some(Due::Expired));
        assert_eq!(due(0, Duration::from_secs(5), hour, false), None);
        assert_eq!(due(0, Duration::from_secs(5), hour, true), Some(Due::LowDisk));
    }

    #[test]
    fn leases_count_and_mark_use() {
        let usage = Arc::new(Usage::default());
        usage.leases.fetch_add(1, Ordering::SeqCst);
        let lease = ImageLease(usage.clone());
        assert_eq!(usage.leases.load(Ordering::SeqCst), 1);
        drop(lease);
        assert_eq!(usage.leases.load(Ordering::SeqCst), 0);
        assert!(usage.last_used_ms.load(Ordering::SeqCst) > 0);
    }
}
