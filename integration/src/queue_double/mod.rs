//! A test double of the Taskcluster Queue: the worker-facing endpoints (`claimWork`, `reclaimTask`,
//! `reportCompleted`, `reportFailed`, `reportException`), the artifact endpoints (`createArtifact`,
//! `finishArtifact`, `getArtifact`, `getLatestArtifact`, `listArtifacts`) and the task endpoints a
//! harness needs (`createTask`, `task`, `status`, `cancelTask`, `ping`); the Object service's upload and
//! download endpoints (`createUpload`, `finishUpload`, `startDownload`, `object`, `download`) at
//! `<root>/api/object/v1/`; the Index service's `findTask` and `insertTask` at `<root>/api/index/v1/`;
//! and a bucket that stands in for S3 (presigned-style PUT and GET URLs, blobs streamed to a temporary
//! directory). All served over HTTP with Hawk authentication and checked against Taskcluster's own
//! api.json files and schemas in `shared/taskcluster`.
//!
//! It follows the real Queue's code (v106): the order of its checks, its error codes and messages,
//! the run lifecycle of its DB functions, claim expiry, the deadline resolver, retries, the temporary
//! credentials it issues with each claim and for object uploads, the artifact rules of
//! `artifacts.js`, and the scopes each endpoint needs. Callers without credentials hold the scopes of
//! the recommended anonymous role that concern it (`queue:get-task:*`, `queue:status:*`,
//! `queue:get-artifact:public/*`, `queue:list-artifacts:*`, `index:find-task:*`).
//!
//! Tests can seed what a worker finds there: [`QueueDouble::seed_artifact`] gives a task a completed run
//! with a finished artifact (from bytes or a file, streamed from disk on download), and
//! [`QueueDouble::index_task`] indexes a task under a namespace.
//!
//! ```no_run
//! use docker_worker_integration::queue_double::{new_task_id, task_definition, Options, QueueDouble};
//! let queue = QueueDouble::start(Options::default());
//! let task_id = new_task_id();
//! queue.create_task(&task_id, task_definition("proj/wt", serde_json::json!({"image": "x"})));
//! // … point a worker at queue.root_url() with queue.root_credentials() …
//! queue.wait_for(&task_id, |s| s["state"] == "completed", std::time::Duration::from_secs(30));
//! ```

pub mod artifacts;
pub mod hawk;
pub mod index;
pub mod object;
pub mod queue;
pub mod schemas;
pub mod scopes;
pub mod server;
pub mod state;
pub mod storage;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

pub use queue::{ApiError, Fault, INDEX_ROUTES, OBJECT_ROUTES, ROUTES};
use queue::{Core, Timing};
use state::{fmt_time, now_ms};
use storage::UploadFault;

/// Where [`QueueDouble::seed_artifact`] takes an artifact's data from: bytes, or a file (copied to the
/// double's storage chunk by chunk, so a big one is never held in memory).
#[derive(Debug, Clone, Copy)]
pub enum ArtifactData<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// The contents of this file.
    File(&'a Path),
}

impl<'a> From<&'a [u8]> for ArtifactData<'a> {
    fn from(bytes: &'a [u8]) -> ArtifactData<'a> {
        ArtifactData::Bytes(bytes)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for ArtifactData<'a> {
    fn from(bytes: &'a [u8; N]) -> ArtifactData<'a> {
        ArtifactData::Bytes(bytes)
    }
}

impl<'a> From<&'a Vec<u8>> for ArtifactData<'a> {
    fn from(bytes: &'a Vec<u8>) -> ArtifactData<'a> {
        ArtifactData::Bytes(bytes)
    }
}

impl<'a> From<&'a Path> for ArtifactData<'a> {
    fn from(path: &'a Path) -> ArtifactData<'a> {
        ArtifactData::File(path)
    }
}

impl<'a> From<&'a PathBuf> for ArtifactData<'a> {
    fn from(path: &'a PathBuf) -> ArtifactData<'a> {
        ArtifactData::File(path)
    }
}

/// How the double behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// `takenUntil = now + claim_timeout` at claim and reclaim (the Queue's default: 1200 s).
    pub claim_timeout: Duration,
    /// How long `claimWork` holds a call when there is no work (the Queue's: 20 s).
    pub claim_work_wait: Duration,
    /// The deadline resolver resolves a task this long after its deadline (the Queue's: 60 s).
    pub deadline_delay: Duration,
    /// How often the claim and deadline resolvers look (the Queue's claim resolver: 5 s).
    pub sweep_interval: Duration,
    /// The port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The root client (scope `*`); `None` makes up a clientId and a random accessToken.
    pub root_client: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            claim_timeout: Duration::from_secs(1200),
            claim_work_wait: Duration::from_secs(20),
            deadline_delay: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(1),
            port: 0,
            root_client: None,
        }
    }
}

/// Why the double could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The schemas or api.json.
    #[error(transparent)]
    Schemas(#[from] schemas::SchemaError),
    /// The routes or schemas do not fit together.
    #[error("{0}")]
    Setup(String),
    /// Binding or running the HTTP server.
    #[error("the HTTP server could not start: {0}")]
    Server(#[from] std::io::Error),
}

/// A running queue double. Dropping it stops the server.
pub struct QueueDouble {
    core: Arc<Core>,
    addr: SocketAddr,
    root: (String, String),
    server: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
}

/// A new taskId: a "nice" slugid, matching the Queue's taskId pattern.
pub fn new_task_id() -> String {
    hawk::slugid()
}

/// A valid minimal task definition for `task_queue_id`: created now, deadline in an hour, metadata
/// filled in.
pub fn task_definition(task_queue_id: &str, payload: Value) -> Value {
    let now = now_ms();
    json!({
        "taskQueueId": task_queue_id,
        "created": fmt_time(now),
        "deadline": fmt_time(now + chrono::Duration::hours(1)),
        "payload": payload,
        "metadata": {
            "name": "queue double test task",
            "description": "A task created by docker-worker's tests.",
            "owner": "docker-worker-tests@example.com",
            "source": "https://github.com/taskcluster/docker-worker",
        },
    })
}

impl QueueDouble {
    /// Start the double on 127.0.0.1 (port from `options`, 0 by default) in its own thread with its
    /// own actix System. Panics if it cannot start (for example when `shared/` is missing).
    pub fn start(options: Options) -> QueueDouble {
        QueueDouble::try_start(options).unwrap_or_else(|e| panic!("the queue double could not start: {e}"))
    }

    /// Like [`QueueDouble::start`], returning the error.
    pub fn try_start(options: Options) -> Result<QueueDouble, StartError> {
        let schemas = schemas::Schemas::load()?;
        let entries = schemas::load_api_entries()?;
        let root = options.root_client.clone().unwrap_or_else(|| {
            (
                "static/taskcluster/root".to_string(),
                format!("{}{}", hawk::slugid(), hawk::slugid()),
            )
        });
        let mut clients = HashMap::new();
        clients.insert(
            root.0.clone(),
            hawk::Client {
                access_token: root.1.clone(),
                scopes: vec!["*".to_string()],
            },
        );
        let timing = Timing {
            claim_timeout: options.claim_timeout,
            claim_work_wait: options.claim_work_wait,
            deadline_delay: options.deadline_delay,
        };
        let core = Arc::new(Core::new(schemas, entries, clients, timing).map_err(StartError::Setup)?);

        let (tx, rx) = mpsc::channel();
        let thread_core = core.clone();
        let sweep_every = options.sweep_interval.max(Duration::from_millis(10));
        let port = options.port;
        let thread = std::thread::Builder::new()
            .name("queue-double".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let app_core = thread_core.clone();
                    let bound = actix_web::HttpServer::new(move || {
                        actix_web::App::new().configure(server::configure(app_core.clone()))
                    })
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .bind(("127.0.0.1", port));
                    let server = match bound {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let addr = server.addrs()[0];
                    thread_core.set_root_url(format!("http://{addr}"));
                    let running = server.run();
                    let sweeper_core = thread_core.clone();
                    actix_rt::spawn(async move {
                        let mut every = actix_rt::time::interval(sweep_every);
                        loop {
                            every.tick().await;
                            sweeper_core.sweep();
                        }
                    });
                    let _ = tx.send(Ok((addr, running.handle())));
                    let _ = running.await;
                });
            })?;
        let (addr, server) = rx.recv().map_err(|_| {
            StartError::Setup("the queue double's server thread died while starting".into())
        })??;
        Ok(QueueDouble {
            core,
            addr,
            root,
            server,
            thread: Some(thread),
        })
    }

    /// The root URL, e.g. `http://127.0.0.1:41234`; the Queue is at `<root>/api/queue/v1/`, the Object
    /// service at `<root>/api/object/v1/`.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `(clientId, accessToken)` of a client with scope `*`.
    pub fn root_credentials(&self) -> (String, String) {
        self.root.clone()
    }

    /// Add (or replace) a permanent client with these scopes (`&["a", "b"]`, `vec![String]`, …).
    pub fn add_client<S: AsRef<str>>(
        &self,
        client_id: &str,
        access_token: &str,
        scopes: impl IntoIterator<Item = S>,
    ) {
        let scopes = scopes.into_iter().map(|s| s.as_ref().to_string()).collect();
        self.core.add_client(client_id, access_token, scopes);
    }

    /// [`new_task_id`], for callers that only import `QueueDouble`.
    pub fn new_task_id() -> String {
        new_task_id()
    }

    /// [`task_definition`], for callers that only import `QueueDouble`.
    pub fn task_definition(task_queue_id: &str, payload: Value) -> Value {
        task_definition(task_queue_id, payload)
    }

    /// createTask through the same checks as over HTTP (minus authentication); returns the task
    /// status. Panics on an error reply.
    pub fn create_task(&self, task_id: &str, definition: Value) -> Value {
        match self.try_create_task(task_id, definition) {
            Ok(status) => status,
            Err(e) => panic!("createTask {task_id} failed: {e}"),
        }
    }

    /// createTask, returning the error reply instead of panicking.
    pub fn try_create_task(&self, task_id: &str, definition: Value) -> Result<Value, ApiError> {
        let reply = self
            .core
            .internal_call("createTask", &[("taskId", task_id)], definition)?;
        Ok(reply["status"].clone())
    }

    /// The task's status (the `status` member of the `status` reply). Panics if there is no such task.
    pub fn status(&self, task_id: &str) -> Value {
        match self
            .core
            .internal_call("status", &[("taskId", task_id)], json!({}))
        {
            Ok(reply) => reply["status"].clone(),
            Err(e) => panic!("status {task_id} failed: {e}"),
        }
    }

    /// cancelTask; returns the task status. Panics on an error reply.
    pub fn cancel_task(&self, task_id: &str) -> Value {
        match self
            .core
            .internal_call("cancelTask", &[("taskId", task_id)], json!({}))
        {
            Ok(reply) => reply["status"].clone(),
            Err(e) => panic!("cancelTask {task_id} failed: {e}"),
        }
    }

    /// The task definition as `task` returns it. Panics if there is no such task.
    pub fn task(&self, task_id: &str) -> Value {
        match self.core.internal_call("task", &[("taskId", task_id)], json!({})) {
            Ok(reply) => reply,
            Err(e) => panic!("task {task_id} failed: {e}"),
        }
    }

    /// Answer the next `n` calls of `endpoint` (an api.json name such as `claimWork` or `createUpload`)
    /// with a 500. The calls the Queue makes to the Object service itself (`createUpload` for an object
    /// createArtifact, `object` in finishArtifact, `startDownload` in getArtifact) count and take faults
    /// too, as they would in a deployment.
    pub fn fail_next(&self, endpoint: &str, n: usize) {
        self.core.queue_faults(endpoint, n, Fault::Fail);
    }

    /// Hold the next `n` calls of `endpoint` for `delay`, then answer them normally.
    pub fn delay_next(&self, endpoint: &str, n: usize, delay: Duration) {
        self.core.queue_faults(endpoint, n, Fault::Delay(delay));
    }

    /// Close the connection of the next `n` calls of `endpoint` without an answer (and without
    /// acting on them).
    pub fn drop_next(&self, endpoint: &str, n: usize) {
        self.core.queue_faults(endpoint, n, Fault::Drop);
    }

    /// How many HTTP calls `endpoint` has received, faulted ones included (for the Object service's
    /// endpoints, the Queue's own calls included).
    pub fn calls(&self, endpoint: &str) -> usize {
        self.core.calls(endpoint)
    }

    /// Block until `endpoint` has received at least `n` HTTP calls; panics after `timeout`.
    pub fn wait_for_calls(&self, endpoint: &str, n: usize, timeout: Duration) {
        let count = self.core.wait_for_calls(endpoint, n, timeout);
        assert!(
            count >= n,
            "{endpoint} received {count} calls, not {n}, within {timeout:?}"
        );
    }

    /// The run's present artifacts as `listArtifacts` gives them (`{storageType, name, expires,
    /// contentType, contentLength?}`), all pages, ordered by name. Object artifacts appear once finished.
    pub fn artifacts(&self, task_id: &str, run_id: usize) -> Vec<Value> {
        self.core.artifact_list(task_id, run_id)
    }

    /// Everything about one artifact, present or not: the `listArtifacts` fields plus `present`,
    /// `details` (the Queue's), and by type `url` (reference), `artifact` (link: the target's name),
    /// `reason` and `message` (error), `objectName` (object); for `s3` and `object` also `stored`
    /// (whether data was uploaded), `size`, `contentEncoding` and `storedContentType` (the headers of
    /// the upload that stored it; null when none).
    pub fn artifact(&self, task_id: &str, run_id: usize, name: &str) -> Option<Value> {
        self.core.artifact_details(task_id, run_id, name)
    }

    /// The uploaded bytes of an `s3` or `object` artifact (following links), as stored (still gzipped
    /// if uploaded with `Content-Encoding: gzip`). Reads the whole blob: use [`QueueDouble::artifact_path`]
    /// for big ones.
    pub fn artifact_bytes(&self, task_id: &str, run_id: usize, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.artifact_path(task_id, run_id, name)?).ok()
    }

    /// The file holding an artifact's uploaded bytes (following links). It lives in the double's
    /// temporary directory until the double is dropped or another upload replaces it.
    pub fn artifact_path(&self, task_id: &str, run_id: usize, name: &str) -> Option<PathBuf> {
        self.core.artifact_blob(task_id, run_id, name).map(|b| b.path)
    }

    /// Give `task_id` a finished artifact `name` with this data and content type, as if a worker had
    /// uploaded it: `getLatestArtifact` and `getArtifact` answer 303 to a download URL the double serves
    /// (streamed from disk; names outside `public/` need `queue:get-artifact:<name>`, as with the Queue).
    /// A task that does not exist is created on `docker-worker-test/seeded` with run 0 completed; an
    /// existing task's pending run is claimed and completed first, any other latest run is used as it is.
    /// Returns the run id. Panics if it cannot (a bad name, an unreadable file).
    ///
    /// ```no_run
    /// # use docker_worker_integration::queue_double::{new_task_id, Options, QueueDouble};
    /// # let queue = QueueDouble::start(Options::default());
    /// let image_task = new_task_id();
    /// let image = std::path::Path::new("/tmp/image.tar");
    /// queue.seed_artifact(&image_task, "public/image.tar", image, "application/x-tar");
    /// queue.index_task("docker-worker.test.image", &image_task);
    /// ```
    pub fn seed_artifact<'a>(
        &self,
        task_id: &str,
        name: &str,
        data: impl Into<ArtifactData<'a>>,
        content_type: &str,
    ) -> usize {
        let result = match data.into() {
            ArtifactData::Bytes(bytes) => self.core.seed_artifact(task_id, name, bytes, content_type),
            ArtifactData::File(path) => {
                let file = std::fs::File::open(path)
                    .unwrap_or_else(|e| panic!("seed_artifact {name}: {}: {e}", path.display()));
                self.core.seed_artifact(task_id, name, file, content_type)
            }
        };
        result.unwrap_or_else(|e| panic!("seed_artifact {task_id} {name} failed: {e}"))
    }

    /// How many times the data of artifact `name` (of any run of `task_id`) was downloaded: GETs of the
    /// download URLs the double redirects to, answered with the data. The redirects themselves do not
    /// count.
    pub fn artifact_downloads(&self, task_id: &str, name: &str) -> usize {
        self.core.artifact_downloads(task_id, name)
    }

    /// Index `task_id` under `namespace` (an index path such as `a.b.c`) with rank 0 and no data, until
    /// the task expires (a year from now if there is no such task), through the Index service's
    /// `insertTask`. Returns the entry as `findTask` will. Panics on an error reply.
    pub fn index_task(&self, namespace: &str, task_id: &str) -> Value {
        let expires = self
            .core
            .status_of(task_id)
            .and_then(|s| s["expires"].as_str().map(str::to_string))
            .unwrap_or_else(|| fmt_time(now_ms() + chrono::Duration::days(365)));
        let body = json!({"taskId": task_id, "rank": 0, "data": {}, "expires": expires});
        self.try_insert_task(namespace, body)
            .unwrap_or_else(|e| panic!("insertTask {namespace} failed: {e}"))
    }

    /// The Index service's `insertTask` with this body (`{taskId, rank, data, expires}`), through the same
    /// checks as over HTTP (minus authentication).
    pub fn try_insert_task(&self, namespace: &str, body: Value) -> Result<Value, ApiError> {
        self.core
            .internal_call("insertTask", &[("namespace", namespace)], body)
    }

    /// What `findTask` answers for `index_path`, or `None` for its 404.
    pub fn find_task(&self, index_path: &str) -> Option<Value> {
        match self
            .core
            .internal_call("findTask", &[("indexPath", index_path)], json!({}))
        {
            Ok(entry) => Some(entry),
            Err(e) if e.status() == 404 => None,
            Err(e) => panic!("findTask {index_path} failed: {e}"),
        }
    }

    /// Answer the next `n` uploads (PUTs to a `putUrl`) with a 500 `InternalError`, after reading their
    /// bodies and storing nothing.
    pub fn fail_next_uploads(&self, n: usize) {
        self.core.storage.queue_faults(UploadFault::Fail, n);
    }

    /// Read upload bodies at `bytes_per_sec` at most (`None`: at full speed); applies to uploads in
    /// progress too.
    pub fn slow_uploads(&self, bytes_per_sec: Option<u64>) {
        self.core.storage.set_rate(bytes_per_sec);
    }

    /// Break the next `n` uploads partway: read half of the declared body, then close the connection
    /// without a response and store nothing (an earlier upload of the same artifact stays). The client
    /// sees its request fail (connection reset or closed before a response), never a success.
    pub fn truncate_next_uploads(&self, n: usize) {
        self.core.storage.queue_faults(UploadFault::Truncate, n);
    }

    /// How many uploads (PUTs to a `putUrl`) the double has seen, faulted and rejected ones included.
    /// `dataInline` uploads are not PUTs and do not count.
    pub fn uploads(&self) -> usize {
        self.core.storage.uploads()
    }

    /// Block until the task's status satisfies `predicate`, waking on every change; panics with the
    /// last status once `timeout` has passed.
    pub fn wait_for(&self, task_id: &str, predicate: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        match self.core.wait_for_status(task_id, timeout, &predicate) {
            Ok(status) => status,
            Err(Some(status)) => panic!(
                "task {task_id} did not reach the awaited status within {timeout:?}; its status is:\n{}",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            ),
            Err(None) => panic!("task {task_id} does not exist after {timeout:?}"),
        }
    }
}

impl Drop for QueueDouble {
    fn drop(&mut self) {
        // `stop` sends its command at once; the returned future only waits for completion.
        drop(self.server.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The server's worker threads may hold the core a little longer (and a test process may exit
        // before they let go): remove the blobs now rather than when the core is dropped.
        self.core.storage.remove_all();
    }
}
