//! QueueClient: the Queue's worker-facing calls over HTTPS, signed with Hawk and retried when that is
//! safe.
//!
//! `claimWork` is sent once and never repeated: a lost answer would leave tasks claimed that nobody
//! runs. Every task call is idempotent at the Queue, so network errors, timeouts and 5xx are retried
//! with doubling delays; a 4xx never is.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use slog::{error, info, warn, Logger};

use super::{hawk, Claim, ClaimWork, Credentials, QueueError, Reclaimed, RetryPolicy, RunState};
use crate::lifecycle::ExceptionReason;

/// How long one HTTP request to the Queue may take, connecting and reading the answer included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTimeouts {
    /// `claimWork`, which the Queue holds open for up to 20 s when it has no task.
    pub claim_work: Duration,
    /// Every other call.
    pub call: Duration,
}

impl Default for QueueTimeouts {
    fn default() -> Self {
        QueueTimeouts {
            claim_work: Duration::from_secs(60),
            call: Duration::from_secs(30),
        }
    }
}

/// A QueueClient could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueClientError {
    /// The root URL is not an absolute http(s) URL with a host.
    #[error("invalid Taskcluster root URL {url:?}: {reason}")]
    InvalidRootUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client (its TLS setup) could not be built.
    #[error("cannot build the HTTP client for the queue: {0}")]
    Http(String),
}

/// The status of a task, as `status` reports it (only what a worker reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The task id.
    pub task_id: String,
    /// The state of the latest run, or `unscheduled`.
    pub state: String,
    /// The runs, by run id.
    #[serde(default)]
    pub runs: Vec<RunStatus>,
}

impl TaskStatus {
    /// The run with this id, if the task has it.
    pub fn run(&self, run_id: u32) -> Option<&RunStatus> {
        self.runs.iter().find(|r| r.run_id == run_id)
    }
}

/// One run in a [`TaskStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// The run id.
    pub run_id: u32,
    /// `pending`, `running`, `completed`, `failed` or `exception`.
    pub state: String,
    /// Why the run was resolved, once it is: `completed`, `failed`, `canceled`, `worker-shutdown`, …
    #[serde(default)]
    pub reason_resolved: Option<String>,
}

impl RunStatus {
    /// The state as the worker sees it; `None` for a state this worker does not know.
    pub fn run_state(&self) -> Option<RunState> {
        match self.state.as_str() {
            "pending" => Some(RunState::Pending),
            "running" => Some(RunState::Running),
            "completed" | "failed" | "exception" => Some(RunState::Resolved),
            _ => None,
        }
    }
}

/// The Queue's worker-facing API over reqwest. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct QueueClient {
    http: reqwest::Client,
    /// `<rootUrl>/api/queue/v1/`, ending in a slash.
    base: String,
    worker_credentials: Credentials,
    retry: RetryPolicy,
    timeouts: QueueTimeouts,
    log: Logger,
}

impl std::fmt::Debug for QueueClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueClient")
            .field("base", &self.base)
            .field("worker_credentials", &self.worker_credentials)
            .field("retry", &self.retry)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

/// The `/`-free encoding the official Rust client uses for path segments: all but `A-Za-z0-9-_.~`.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One call to make: what to send and whether it may be repeated.
struct Call<'a> {
    endpoint: &'static str,
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
    /// `None`: an anonymous call.
    credentials: Option<&'a Credentials>,
    timeout: Duration,
    retry: bool,
}

/// A call that failed, and after how many attempts.
struct Failure {
    error: QueueError,
    attempts: u32,
}

/// How one attempt failed.
enum AttemptError {
    /// Network error, timeout or 5xx: worth another attempt when the call allows it.
    Transient(String),
    /// The Queue's answer stands.
    Final(QueueError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimWorkResponse {
    tasks: Vec<WireClaim>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireClaim {
    status: WireTaskId,
    run_id: u32,
    task: serde_json::Value,
    taken_until: String,
    credentials: Credentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTaskId {
    task_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReclaimResponse {
    taken_until: String,
    credentials: Credentials,
}

#[derive(Deserialize)]
struct StatusResponse {
    status: TaskStatus,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ClaimWorkBody<'a> {
    worker_group: &'a str,
    worker_id: &'a str,
    tasks: u32,
}

#[derive(serde::Serialize)]
struct ExceptionBody<'a> {
    reason: &'a str,
}

/// Parse an RFC 3339 time, `Z` or any offset.
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("takenUntil {s:?} is not an RFC 3339 time: {e}"))
}

/// An error and its causes on one line; reqwest's own message alone rarely says what broke.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The message of an error answer: the Queue's `code: message` (without its request details), or the
/// start of whatever else came back.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct QueueErrorBody {
        code: Option<String>,
        message: Option<String>,
    }
    const MAX: usize = 1000;
    let text = match serde_json::from_slice::<QueueErrorBody>(body) {
        Ok(QueueErrorBody {
            code,
            message: Some(message),
        }) => {
            // Taskcluster appends the request's details after a `---` line.
            let message = message.split("\n---").next().unwrap_or("").trim();
            match code {
                Some(code) => format!("{code}: {message}"),
                None => message.to_string(),
            }
        }
        _ => String::from_utf8_lossy(body).trim().to_string(),
    };
    let text = if text.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_string()
    } else {
        text
    };
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl QueueClient {
    /// A client for the Queue of the deployment at `root_url`, claiming with the worker's own
    /// credentials, retrying task calls as `retry` says and logging retries to `log`.
    pub fn new(
        root_url: &str,
        worker_credentials: Credentials,
        retry: RetryPolicy,
        log: Logger,
    ) -> Result<QueueClient, QueueClientError> {
        let invalid = |reason: &str| QueueClientError::InvalidRootUrl {
            url: root_url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = root_url.trim_end_matches('/');
        let parsed = Url::parse(trimmed).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if parsed.host_str().is_none() {
            return Err(invalid("it has no host"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("it may not have a query or a fragment"));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("docker-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| QueueClientError::Http(describe(&e)))?;
        Ok(QueueClient {
            http,
            base: format!("{}/api/queue/v1/", parsed.as_str().trim_end_matches('/')),
            worker_credentials,
            retry,
            timeouts: QueueTimeouts::default(),
            log,
        })
    }

    /// The same client with other request timeouts.
    pub fn with_timeouts(mut self, timeouts: QueueTimeouts) -> QueueClient {
        self.timeouts = timeouts;
        self
    }

    /// `<rootUrl>/api/queue/v1/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, route: &str) -> Result<Url, QueueError> {
        Url::parse(&format!("{}{route}", self.base)).map_err(|e| QueueError::Rejected {
            status: 0,
            message: format!("cannot build the URL for {route}: {e}"),
        })
    }

    fn task_url(&self, task_id: &str, run_id: u32, action: &str) -> Result<Url, QueueError> {
        self.url(&format!(
            "task/{}/runs/{run_id}/{action}",
            encode_segment(task_id)
        ))
    }

    /// `claimWork` with the worker's credentials: sent once, never repeated.
    pub async fn claim_work(&self, request: &ClaimWork) -> Result<Vec<Claim>, QueueError> {
        let body = serde_json::to_vec(&ClaimWorkBody {
            worker_group: &request.worker_group,
            worker_id: &request.worker_id,
            tasks: request.tasks,
        })
        .expect("a struct of strings and a number serializes");
        let call = Call {
            endpoint: "claimWork",
            method: Method::POST,
            url: self.url(&format!("claim-work/{}", encode_segment(&request.task_queue_id)))?,
            body: Some(body),
            credentials: Some(&self.worker_credentials),
            timeout: self.timeouts.claim_work,
            retry: false,
        };
        let answer = self.execute(call).await.map_err(|f| f.error)?;
        let parsed = serde_json::from_slice::<ClaimWorkResponse>(&answer)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.tasks
                    .into_iter()
                    .map(|c| {
                        Ok(Claim {
                            task_id: c.status.task_id,
                            run_id: c.run_id,
                            task: c.task,
                            taken_until: parse_time(&c.taken_until)?,
                            credentials: c.credentials,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()
            });
        // Tasks in an answer we cannot read stay claimed until their claims expire.
        parsed.map_err(|e| self.unreadable("claimWork", e))
    }

    /// `reclaimTask`, signed with the run's current credentials.
    pub async fn reclaim_task(
        &self,
        task_id: &str,
        run_id: u32,
        credentials: &Credentials,
    ) -> Result<Reclaimed, QueueError> {
        let call = Call {
            endpoint: "reclaimTask",
            method: Method::POST,
            url: self.task_url(task_id, run_id, "reclaim")?,
            body: None,
            credentials: Some(credentials),
            timeout: self.timeouts.call,
            retry: true,
        };
        let answer = self.execute(call).await.map_err(|f| f.error)?;
        serde_json::from_slice::<ReclaimResponse>(&answer)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                Ok(Reclaimed {
                    taken_until: parse_time(&r.taken_until)?,
                    credentials: r.credentials,
                })
            })
            .map_err(|e| self.unreadable("reclaimTask", e))
    }

    /// `reportCompleted`, signed with the run's current credentials.
    pub async fn report_completed(
        &self,
        task_id: &str,
        run_id: u32,
        credentials: &Credentials,
    ) -> Result<(), QueueError> {
        self.report("reportCompleted", task_id, run_id, credentials, "completed", None)
            .await
    }

    /// `reportFailed`, signed with the run's current credentials.
    pub async fn report_failed(
        &self,
        task_id: &str,
        run_id: u32,
        credentials: &Credentials,
    ) -> Result<(), QueueError> {
        self.report("reportFailed", task_id, run_id, credentials, "failed", None)
            .await
    }

    /// `reportException` with `reason`, signed with the run's current credentials.
    pub async fn report_exception(
        &self,
        task_id: &str,
        run_id: u32,
        credentials: &Credentials,
        reason: ExceptionReason,
    ) -> Result<(), QueueError> {
        self.report(
            "reportException",
            task_id,
            run_id,
            credentials,
            "exception",
            Some(reason),
        )
        .await
    }

    /// `status` of a task. Asked anonymously first, as generic-worker does: deployments grant
    /// `queue:status:*` to everyone, while a run's temporary credentials need not carry it. Signed with
    /// `credentials` only if the anonymous call is refused.
    pub async fn status(&self, task_id: &str, credentials: &Credentials) -> Result<TaskStatus, QueueError> {
        let url = self.url(&format!("task/{}/status", encode_segment(task_id)))?;
        let call = |credentials| Call {
            endpoint: "status",
            method: Method::GET,
            url: url.clone(),
            body: None,
            credentials,
            timeout: self.timeouts.call,
            retry: true,
        };
        let answer = self.anonymous_first(call, Some(credentials)).await?;
        serde_json::from_slice::<StatusResponse>(&answer)
            .map(|r| r.status)
            .map_err(|e| self.unreadable("status", e.to_string()))
    }

    /// Make `call` anonymously; if that is refused, once more signed with `credentials`, when given.
    async fn anonymous_first<'a>(
        &self,
        call: impl Fn(Option<&'a Credentials>) -> Call<'a>,
        credentials: Option<&'a Credentials>,
    ) -> Result<Bytes, QueueError> {
        match (self.execute(call(None)).await, credentials) {
            (
                Err(Failure {
                    error: QueueError::Unauthorized { .. },
                    ..
                }),
                Some(credentials),
            ) => self.execute(call(Some(credentials))).await,
            (other, _) => other,
        }
        .map_err(|f| f.error)
    }

    /// A report, and the one case where a 409 is not the last word: an earlier attempt whose answer
    /// was lost may have resolved the run as asked, and a repeat then conflicts with our own report.
    async fn report(
        &self,
        endpoint: &'static str,
        task_id: &str,
        run_id: u32,
        credentials: &Credentials,
        state: &'static str,
        reason: Option<ExceptionReason>,
    ) -> Result<(), QueueError> {
        let (action, body) = match reason {
            None => (state, None),
            Some(r) => (
                "exception",
                Some(serde_json::to_vec(&ExceptionBody { reason: r.as_str() }).expect("a string serializes")),
            ),
        };
        let call = Call {
            endpoint,
            method: Method::POST,
            url: self.task_url(task_id, run_id, action)?,
            body,
            credentials: Some(credentials),
            timeout: self.timeouts.call,
            retry: true,
        };
        let message = match self.execute(call).await {
            Ok(_) => return Ok(()),
            Err(Failure {
                error: QueueError::Conflict(message),
                attempts,
            }) if attempts > 1 => message,
            Err(f) => return Err(f.error),
        };
        let wanted_reason = reason.map_or(state, ExceptionReason::as_str);
        match self.status(task_id, credentials).await {
            Ok(status)
                if status.run(run_id).is_some_and(|r| {
                    r.state == state && r.reason_resolved.as_deref() == Some(wanted_reason)
                }) =>
            {
                info!(self.log, "queue report already applied";
                      "endpoint" => endpoint, "task_id" => task_id, "run_id" => run_id,
                      "state" => state, "reason" => wanted_reason);
                Ok(())
            }
            Ok(_) => Err(QueueError::Conflict(message)),
            Err(e) => {
                warn!(self.log, "queue status check failed";
                      "endpoint" => endpoint, "task_id" => task_id, "run_id" => run_id, "error" => %e);
                Err(QueueError::Conflict(message))
            }
        }
    }

    /// The index's `findTask`: the task id a namespace points at. Asked anonymously first, as
    /// deployments grant `index:find-task:*` to everyone; signed with `credentials` (the task's) if that
    /// is refused. Retried on transient errors.
    pub async fn find_task(
        &self,
        namespace: &str,
        credentials: Option<&Credentials>,
    ) -> Result<String, QueueError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Found {
            task_id: String,
        }
        let url = self.service_url("index", &format!("task/{}", encode_segment(namespace)))?;
        let call = |credentials| Call {
            endpoint: "findTask",
            method: Method::GET,
            url: url.clone(),
            body: None,
            credentials,
            timeout: self.timeouts.call,
            retry: true,
        };
        let answer = self.anonymous_first(call, credentials).await?;
        serde_json::from_slice::<Found>(&answer)
            .map(|f| f.task_id)
            .map_err(|e| self.unreadable("findTask", e.to_string()))
    }

    /// Start downloading the latest run's artifact `name` of `task_id`: `getLatestArtifact`, signed
    /// with `credentials` when given, then its redirects, unsigned, to the bytes. One attempt; the
    /// answer's body is left to stream.
    pub async fn artifact_download(
        &self,
        task_id: &str,
        name: &str,
        credentials: Option<&Credentials>,
        timeout: Duration,
    ) -> Result<reqwest::Response, QueueError> {
        const MAX_REDIRECTS: usize = 5;
        let mut url = self.url(&format!(
            "task/{}/artifacts/{}",
            encode_segment(task_id),
            encode_segment(name)
        ))?;
        let mut signed = credentials;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.http.get(url.clone()).timeout(timeout);
            if let Some(credentials) = signed.take() {
                let authorization =
                    hawk::header(credentials, "GET", &url, None).map_err(|e| QueueError::Rejected {
                        status: 0,
                        message: format!("getLatestArtifact: cannot sign the request: {e}"),
                    })?;
                request = request.header(AUTHORIZATION, authorization);
            }
            let response = request
                .send()
                .await
                .map_err(|e| QueueError::Unavailable(format!("getLatestArtifact: {}", describe(&e))))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| {
                        self.unreadable("getLatestArtifact", "a redirect without a Location".into())
                    })?;
                url = url.join(location).map_err(|e| {
                    self.unreadable("getLatestArtifact", format!("bad Location {location:?}: {e}"))
                })?;
                continue;
            }
            if status.is_success() {
                return Ok(response);
            }
            let code = status.as_u16();
            let body = response.bytes().await.unwrap_or_default();
            let message = error_message(status, &body);
            return Err(match code {
                500..=599 => QueueError::Unavailable(format!("getLatestArtifact: HTTP {code}: {message}")),
                401 | 403 => QueueError::Unauthorized {
                    status: code,
                    message,
                },
                404 => QueueError::NotFound(message),
                _ => QueueError::Rejected {
                    status: code,
                    message,
                },
            });
        }
        Err(self.unreadable(
            "getLatestArtifact",
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    /// `<rootUrl>/api/<service>/v1/<route>`, for the object service beside the Queue.
    fn service_url(&self, service: &str, route: &str) -> Result<Url, QueueError> {
        let root = self.base.trim_end_matches("api/queue/v1/");
        Url::parse(&format!("{root}api/{service}/v1/{route}")).map_err(|e| QueueError::Rejected {
            status: 0,
            message: format!("cannot build the URL for {service} {route}: {e}"),
        })
    }

    /// A JSON call signed with `credentials`, retried on transient errors; the answer's bytes.
    async fn json_call(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: &serde_json::Value,
        credentials: &Credentials,
    ) -> Result<Bytes, QueueError> {
        let call = Call {
            endpoint,
            method,
            url,
            body: Some(serde_json::to_vec(body).expect("JSON values serialize")),
            credentials: Some(credentials),
            timeout: self.timeouts.call,
            retry: true,
        };
        self.execute(call).await.map_err(|f| f.error)
    }

    /// `createArtifact`: the answer (a `putUrl` for s3, upload credentials for object, `{}` otherwise).
    pub async fn create_artifact(
        &self,
        task_id: &str,
        run_id: u32,
        name: &str,
        request: &serde_json::Value,
        credentials: &Credentials,
    ) -> Result<serde_json::Value, QueueError> {
        let url = self.task_url(task_id, run_id, &format!("artifacts/{}", encode_segment(name)))?;
        let answer = self
            .json_call("createArtifact", Method::POST, url, request, credentials)
            .await?;
        serde_json::from_slice(&answer).map_err(|e| self.unreadable("createArtifact", e.to_string()))
    }

    /// `finishArtifact` for an object artifact whose upload is finished.
    pub async fn finish_artifact(
        &self,
        task_id: &str,
        run_id: u32,
        name: &str,
        upload_id: &str,
        credentials: &Credentials,
    ) -> Result<(), QueueError> {
        let url = self.task_url(task_id, run_id, &format!("artifacts/{}", encode_segment(name)))?;
        let body = serde_json::json!({ "uploadId": upload_id });
        self.json_call("finishArtifact", Method::PUT, url, &body, credentials)
            .await
            .map(drop)
    }

    /// The object service's `createUpload`, signed with the artifact's upload credentials.
    pub async fn create_upload(
        &self,
        object: &str,
        request: &serde_json::Value,
        credentials: &Credentials,
    ) -> Result<serde_json::Value, QueueError> {
        let url = self.service_url("object", &format!("upload/{}", encode_segment(object)))?;
        let answer = self
            .json_call("createUpload", Method::PUT, url, request, credentials)
            .await?;
        serde_json::from_slice(&answer).map_err(|e| self.unreadable("createUpload", e.to_string()))
    }

    /// The object service's `finishUpload`.
    pub async fn finish_upload(
        &self,
        object: &str,
        request: &serde_json::Value,
        credentials: &Credentials,
    ) -> Result<(), QueueError> {
        let url = self.service_url("object", &format!("finish-upload/{}", encode_segment(object)))?;
        self.json_call("finishUpload", Method::POST, url, request, credentials)
            .await
            .map(drop)
    }

    /// The HTTP client, for uploads to the URLs the Queue hands out.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn unreadable(&self, endpoint: &'static str, e: String) -> QueueError {
        error!(self.log, "queue answer unreadable"; "endpoint" => endpoint, "error" => &e);
        QueueError::Unavailable(format!("{endpoint}: the queue's answer is unreadable: {e}"))
    }

    /// Make the call, repeating it on transient errors if it allows that.
    async fn execute(&self, call: Call<'_>) -> Result<Bytes, Failure> {
        let attempts = if call.retry { self.retry.attempts.max(1) } else { 1 };
        let mut delay = self.retry.initial_delay;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let why = match self.attempt(&call).await {
                Ok(body) => return Ok(body),
                Err(AttemptError::Final(error)) => {
                    return Err(Failure {
                        error,
                        attempts: attempt,
                    })
                }
                Err(AttemptError::Transient(why)) => why,
            };
            if attempt >= attempts {
                let tries = if attempt == 1 {
                    String::new()
                } else {
                    format!(" after {attempt} attempts")
                };
                return Err(Failure {
                    error: QueueError::Unavailable(format!("{}{tries}: {why}", call.endpoint)),
                    attempts: attempt,
                });
            }
            warn!(self.log, "retrying queue call";
                  "endpoint" => call.endpoint, "attempt" => attempt, "error" => &why,
                  "delay_ms" => u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(self.retry.max_delay);
        }
    }

    /// One signed HTTP request; a fresh timestamp and nonce each time.
    async fn attempt(&self, call: &Call<'_>) -> Result<Bytes, AttemptError> {
        let hash = call
            .body
            .as_deref()
            .map(|b| hawk::payload_hash("application/json", b));
        let mut request = self
            .http
            .request(call.method.clone(), call.url.clone())
            .timeout(call.timeout);
        if let Some(credentials) = call.credentials {
            let authorization = hawk::header(credentials, call.method.as_str(), &call.url, hash.as_deref())
                .map_err(|e| {
                AttemptError::Final(QueueError::Rejected {
                    status: 0,
                    message: format!("{}: cannot sign the request: {e}", call.endpoint),
                })
            })?;
            request = request.header(AUTHORIZATION, authorization);
        }
        request = match &call.body {
            Some(body) => request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone()),
            // Some front ends (Google's among them) answer 411 to a POST without a length.
            None if call.method == Method::POST => request.header(CONTENT_LENGTH, "0").body(Vec::new()),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| AttemptError::Transient(describe(&e)))?;
        let status = response.status();
        let body = response.bytes().await;
        if status.is_success() {
            return body
                .map_err(|e| AttemptError::Transient(format!("reading the answer: {}", describe(&e))));
        }
        let message = error_message(status, body.as_deref().unwrap_or_default());
        let code = status.as_u16();
        Err(match code {
            500..=599 => AttemptError::Transient(format!("HTTP {code}: {message}")),
            409 => AttemptError::Final(QueueError::Conflict(message)),
            401 | 403 => AttemptError::Final(QueueError::Unauthorized {
                status: code,
                message,
            }),
            404 => AttemptError::Final(QueueError::NotFound(message)),
            _ => AttemptError::Final(QueueError::Rejected {
                status: code,
                message,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_like_the_rust_client() {
        assert_eq!(encode_segment("proj-1/wt_2.x~"), "proj-1%2Fwt_2.x~");
        assert_eq!(encode_segment("a b:é"), "a%20b%3A%C3%A9");
    }

    #[test]
    fn times_with_any_offset_parse() {
        let z = parse_time("2026-08-21T17:44:01.123Z").unwrap();
        assert_eq!(parse_time("2026-08-21T17:44:01.123+00:00").unwrap(), z);
        assert_eq!(parse_time("2026-08-21T19:44:01.123+02:00").unwrap(), z);
        assert!(parse_time("2026-08-21 17:44").is_err());
    }

    #[test]
    fn error_messages_keep_code_and_message_but_not_request_details() {
        let body = br#"{"code":"RequestConflict","message":"Run 0 is resolved.\n\n---\n\n* method: x","requestInfo":{}}"#;
        assert_eq!(
            error_message(StatusCode::CONFLICT, body),
            "RequestConflict: Run 0 is resolved."
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"<html>bad</html>"),
            "<html>bad</html>"
        );
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
        assert!(error_message(StatusCode::BAD_GATEWAY, "é".repeat(2000).as_bytes()).ends_with('…'));
    }

    #[test]
    fn root_urls_are_checked() {
        let creds = Credentials {
            client_id: "c".into(),
            access_token: "t".into(),
            certificate: None,
        };
        let log = Logger::root(slog::Discard, slog::o!());
        let new = |u: &str| QueueClient::new(u, creds.clone(), RetryPolicy::default(), log.clone());
        assert_eq!(
            new("https://tc.example.com/").unwrap().base_url(),
            "https://tc.example.com/api/queue/v1/"
        );
        assert_eq!(
            new("http://h:8080/tc").unwrap().base_url(),
            "http://h:8080/tc/api/queue/v1/"
        );
        for bad in ["", "tc.example.com", "ftp://h", "https://h/?x=1"] {
            assert!(
                matches!(new(bad), Err(QueueClientError::InvalidRootUrl { .. })),
                "{bad}"
            );
        }
    }
}
