//! What each endpoint does, in the order the real Queue does it (`services/queue/src/api.js` on top
//! of `libraries/api`): body parsing, authentication when the scopes need only URL parameters, URL
//! parameter patterns, query string, input schema (with defaults), the handler with its own checks and
//! deferred authorization, and output schema. The Object and Index services' endpoints go through the
//! same pipeline (`libraries/api` serves them all).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Utc};
use serde_json::{json, Map, Value};

use super::hawk::{self, AuthResult, Client};
use super::index::{is_namespace, Index};
use super::object::Objects;
use super::schemas::{ApiEntry, Schemas, INDEX, OBJECT, QUEUE};
use super::scopes;
use super::state::{fmt_time, now_ms, truncate_ms, RunEvent, RunState, Store, Task, PRIORITIES};
use super::storage::Storage;

/// The Queue endpoints the double serves: `(name, method, route)`, written here by hand and checked
/// against the Queue's api.json at start-up (and by the conformance test).
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("ping", "get", "/ping"),
    ("createTask", "put", "/task/<taskId>"),
    ("task", "get", "/task/<taskId>"),
    ("status", "get", "/task/<taskId>/status"),
    ("cancelTask", "post", "/task/<taskId>/cancel"),
    ("claimWork", "post", "/claim-work/<taskQueueId>"),
    ("reclaimTask", "post", "/task/<taskId>/runs/<runId>/reclaim"),
    ("reportCompleted", "post", "/task/<taskId>/runs/<runId>/completed"),
    ("reportFailed", "post", "/task/<taskId>/runs/<runId>/failed"),
    ("reportException", "post", "/task/<taskId>/runs/<runId>/exception"),
    (
        "createArtifact",
        "post",
        "/task/<taskId>/runs/<runId>/artifacts/<name>",
    ),
    (
        "finishArtifact",
        "put",
        "/task/<taskId>/runs/<runId>/artifacts/<name>",
    ),
    (
        "getArtifact",
        "get",
        "/task/<taskId>/runs/<runId>/artifacts/<name>",
    ),
    ("getLatestArtifact", "get", "/task/<taskId>/artifacts/<name>"),
    ("listArtifacts", "get", "/task/<taskId>/runs/<runId>/artifacts"),
];

/// The Object service endpoints the double serves, checked against the Object service's api.json.
pub const OBJECT_ROUTES: &[(&str, &str, &str)] = &[
    ("createUpload", "put", "/upload/<name>"),
    ("finishUpload", "post", "/finish-upload/<name>"),
    ("startDownload", "put", "/start-download/<name>"),
    ("object", "get", "/metadata/<name>"),
    ("download", "get", "/download/<name>"),
];

/// The Index service endpoints the double serves, checked against the Index service's api.json.
pub const INDEX_ROUTES: &[(&str, &str, &str)] = &[
    ("findTask", "get", "/task/<indexPath>"),
    ("insertTask", "put", "/task/<namespace>"),
];

/// Queue route parameters that match the rest of the path, slashes included (`:taskQueueId(*)`,
/// `:name(*)`).
pub const WILDCARD_PARAMS: &[&str] = &["taskQueueId", "name"];

/// Object service endpoints whose `name` is a wildcard (`/start-download/:name(*)`). The others
/// (`/upload/:name`, `/finish-upload/:name`) take one path segment: a `/` in the name must be sent as
/// `%2F` there.
pub const OBJECT_WILDCARD_ENDPOINTS: &[&str] = &["startDownload", "object", "download"];

/// Does the route parameter `param` of `endpoint` take the rest of the path?
pub fn is_wildcard(service: &str, endpoint: &str, param: &str) -> bool {
    match service {
        OBJECT => param == "name" && OBJECT_WILDCARD_ENDPOINTS.contains(&endpoint),
        // `/task/:indexPath`, `/task/:namespace`: one segment.
        INDEX => false,
        _ => WILDCARD_PARAMS.contains(&param),
    }
}

/// `maxTaskDeadlineDays`, the Queue's default.
const MAX_TASK_DEADLINE_DAYS: i64 = 5;
/// Clock drift the Queue tolerates on `created` and `deadline`.
const DRIFT_MS: i64 = 15 * 60 * 1000;
/// The clientId the double issues temporary credentials as.
pub const ISSUER_CLIENT_ID: &str = "static/taskcluster/queue";

/// An error reply: `{code, message, requestInfo}` with the status the code implies.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// `InputError`, `RequestConflict`, …
    pub code: &'static str,
    /// The message (before the Queue's trailer is appended).
    pub message: String,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status for the code (`libraries/api/src/middleware/errors.js`).
    pub fn status(&self) -> u16 {
        match self.code {
            "MalformedPayload" | "InvalidRequestArguments" | "InputValidationError" | "InputError" => 400,
            "AuthenticationFailed" => 401,
            "InsufficientScopes" => 403,
            "ResourceNotFound" => 404,
            "RequestConflict" => 409,
            "NoMatchingMethod" => 406,
            "NoMatchingBackend" => 400,
            "ResourceExpired" => 410,
            "InputTooLarge" => 413,
            _ => 500,
        }
    }

    /// A 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new("InternalServerError", message)
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The Rust API of the double: every scope.
    Internal,
    /// An HTTP request, authenticated (or not) already.
    Http(AuthResult),
}

/// One API call on its way through the pipeline.
#[derive(Debug)]
pub struct Call<'a> {
    /// The api.json entry.
    pub entry: &'a ApiEntry,
    /// URL parameters, decoded.
    pub params: Map<String, Value>,
    /// Query-string parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The parsed body (`{}` when there is none).
    pub body: Value,
    /// Who calls.
    pub caller: Caller,
}

impl Call<'_> {
    /// A URL parameter (empty if absent).
    pub fn param(&self, name: &str) -> &str {
        self.params.get(name).and_then(Value::as_str).unwrap_or_default()
    }

    /// The last value of a query-string parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `req.authorize(params)`: render the entry's scope template and check the caller's scopes.
    pub fn authorize(&self, params: &Map<String, Value>) -> Result<(), ApiError> {
        let Some(template) = &self.entry.scopes else {
            return Ok(());
        };
        let expr = scopes::render(template, params).map_err(ApiError::internal)?;
        let Some(expr) = expr else {
            return Ok(());
        };
        let auth = match &self.caller {
            Caller::Internal => return Ok(()),
            Caller::Http(auth) => auth,
        };
        if let AuthResult::Failed(message) = auth {
            return Err(ApiError::new("AuthenticationFailed", message.clone()));
        }
        let held = auth.scopes();
        if scopes::satisfies(&held, &expr) {
            return Ok(());
        }
        let message = match auth {
            AuthResult::Success { client_id, .. } => format!(
                "Client ID {client_id} does not have sufficient scopes and is missing the following \
                 scopes:\n\n```\n{}\n```\n\nThis request requires the client to satisfy the following scope \
                 expression:\n\n```\n{expr}\n```",
                scopes::missing(&held, &expr).join("\n")
            ),
            _ => format!(
                "This request requires Taskcluster credentials that satisfy the following scope \
                 expression:\n\n```\n{expr}\n```"
            ),
        };
        Err(ApiError::new("InsufficientScopes", message))
    }
}

/// The timing knobs of the double.
#[derive(Debug, Clone)]
pub struct Timing {
    /// `takenUntil = now + claim_timeout`.
    pub claim_timeout: Duration,
    /// How long claimWork holds a request with no work.
    pub claim_work_wait: Duration,
    /// The deadline resolver acts this long after a deadline.
    pub deadline_delay: Duration,
}

/// A fault to inject into the next call of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer 500 without doing anything.
    Fail,
    /// Wait, then answer normally.
    Delay(Duration),
    /// Close the connection without an answer, doing nothing.
    Drop,
}

/// The body of a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// JSON.
    Json(Value),
    /// Plain text (Express's redirect body).
    Text(String),
    /// Nothing (204).
    Empty,
}

/// A reply: most are `200` with JSON; artifact downloads redirect (303), `finishArtifact` has no body
/// (204), and an `error` artifact answers 424 with a JSON body that is not the API error shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Body,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Whether the body goes through the output schema (`res.reply`) rather than out as it is
    /// (`res.json`, `res.send`).
    pub checked: bool,
}

impl Reply {
    /// `res.reply(body)`: 200, JSON, output schema checked.
    pub fn ok(body: Value) -> Reply {
        Reply {
            status: 200,
            body: Body::Json(body),
            headers: vec![],
            checked: true,
        }
    }

    /// `res.status(204).send()`.
    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            body: Body::Empty,
            headers: vec![],
            checked: false,
        }
    }

    /// The JSON body, or null.
    pub fn json(&self) -> Value {
        match &self.body {
            Body::Json(v) => v.clone(),
            _ => Value::Null,
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    calls: HashMap<String, usize>,
    queued: HashMap<String, VecDeque<Fault>>,
}

/// The double's state and configuration, shared by the HTTP server and the Rust API.
pub struct Core {
    /// Schemas for validation.
    pub schemas: Schemas,
    entries: HashMap<String, ApiEntry>,
    store: Mutex<Store>,
    changed: Condvar,
    /// Woken whenever the store changes, so held claimWork calls look again.
    pub work: tokio::sync::Notify,
    clients: RwLock<HashMap<String, Client>>,
    pub(super) issuer_token: String,
    /// The Object service's objects.
    pub(super) objects: Mutex<Objects>,
    /// The Index service's entries.
    pub(super) index: Mutex<Index>,
    /// The bucket behind `s3` artifacts and objects.
    pub storage: Storage,
    root_url: OnceLock<String>,
    /// Timing knobs.
    pub timing: Timing,
    faults: Mutex<Faults>,
    calls_changed: Condvar,
    started: Instant,
}

fn param_error(name: &str, value: &str, pattern: &str) -> String {
    format!("URL parameter '{name}' given as '{value}' must match regular expression: '/{pattern}/'")
}

fn is_slugid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 22
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        && (b'Q'..=b'T').contains(&b[8])
        && b"CGKOSWaeimquy26-".contains(&b[10])
        && b"AQgw".contains(&b[21])
}

fn is_identifier(s: &str) -> bool {
    (1..=38).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn is_worker_type(s: &str) -> bool {
    let b = s.as_bytes();
    match b {
        [first] => first.is_ascii_lowercase(),
        [first, middle @ .., last] => {
            first.is_ascii_lowercase()
                && middle.len() <= 36
                && middle
                    .iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && (last.is_ascii_lowercase() || last.is_ascii_digit())
        }
        [] => false,
    }
}

/// Check a URL parameter against the Queue's pattern for it (`services/queue/src/api.js`).
pub fn check_param(name: &str, value: &str) -> Result<(), String> {
    let (ok, pattern) = match name {
        "taskId" | "taskGroupId" => (
            is_slugid(value),
            "^[A-Za-z0-9_-]{8}[Q-T][A-Za-z0-9_-][CGKOSWaeimquy26-][A-Za-z0-9_-]{10}[AQgw]$",
        ),
        "runId" => (
            !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()),
            "^[1-9]*[0-9]+$",
        ),
        "provisionerId" | "workerType" | "workerGroup" | "workerId" => {
            (is_identifier(value), "^[a-zA-Z0-9-_]{1,38}$")
        }
        "taskQueueId" => (
            value
                .split_once('/')
                .is_some_and(|(p, w)| is_identifier(p) && is_worker_type(w)),
            "^[a-zA-Z0-9-_]{1,38}\\/[a-z]([-a-z0-9]{0,36}[a-z0-9])?$",
        ),
        // Index paths and namespaces (`namespaceFormat` of the Index service).
        "indexPath" | "namespace" => (
            is_namespace(value),
            "^([a-zA-Z0-9_!~*'()%-]+\\.)*[a-zA-Z0-9_!~*'()%-]+$",
        ),
        // Artifact and object names: printable ASCII.
        "name" => (
            !value.is_empty() && value.bytes().all(|c| (0x20..=0x7e).contains(&c)),
            "^[\\x20-\\x7e]+$",
        ),
        _ => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(param_error(name, value, pattern))
    }
}

pub(super) fn not_found_task(task_id: &str, tail: &str) -> ApiError {
    ApiError::new("ResourceNotFound", format!("Task `{task_id}` not found. {tail}"))
}

pub(super) fn params_of(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// JavaScript's `takenUntil.getTime() / 1000`: seconds, with a fraction only when there are
/// milliseconds.
fn js_epoch_seconds(t: DateTime<Utc>) -> String {
    let ms = t.timestamp_millis();
    let (secs, frac) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    if frac == 0 {
        secs.to_string()
    } else {
        format!("{secs}.{}", format!("{frac:03}").trim_end_matches('0'))
    }
}

/// `expires.setFullYear(expires.getFullYear() + 1)`: 29 February rolls over to 1 March.
fn plus_one_year(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_year(t.year() + 1)
        .unwrap_or_else(|| t + chrono::Duration::days(366))
}

pub(super) fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| truncate_ms(t.with_timezone(&Utc)))
}

impl Core {
    /// A core with the given clients (`clientId → client`) and timing. `entries` are those of the
    /// api.json files ([`super::schemas::load_api_entries`]); the served ones are kept, by name.
    pub fn new(
        schemas: Schemas,
        entries: Vec<ApiEntry>,
        clients: HashMap<String, Client>,
        timing: Timing,
    ) -> Result<Core, String> {
        let mut served: HashMap<String, ApiEntry> = HashMap::new();
        for (service, routes) in [(QUEUE, ROUTES), (OBJECT, OBJECT_ROUTES), (INDEX, INDEX_ROUTES)] {
            for (name, method, route) in routes {
                let e = entries
                    .iter()
                    .find(|e| e.service == service && e.name == *name)
                    .ok_or_else(|| {
                        format!("the queue double serves {service}.{name}, which its api.json does not have")
                    })?;
                if e.method != *method || e.route != *route {
                    return Err(format!(
                        "the queue double serves {service}.{name} as {method} {route}, api.json has {} {}",
                        e.method, e.route
                    ));
                }
                for id in e.input.iter().chain(e.output.iter()) {
                    schemas.validator(id).map_err(|err| err.to_string())?;
                }
                if served.insert(name.to_string(), e.clone()).is_some() {
                    return Err(format!("two served endpoints are named {name}"));
                }
            }
        }
        // The Queue's other entries too: `entry` is asked about them only for served names, but the
        // name space stays the Queue's.
        let mut entries_by_name: HashMap<String, ApiEntry> = entries
            .into_iter()
            .filter(|e| e.service == QUEUE)
            .map(|e| (e.name.clone(), e))
            .collect();
        entries_by_name.extend(served);
        let entries = entries_by_name;
        let storage =
            Storage::new().map_err(|e| format!("the queue double cannot create its blob directory: {e}"))?;
        let issuer_token = format!("{}{}", hawk::slugid(), hawk::slugid());
        let mut clients = clients;
        clients.insert(
            ISSUER_CLIENT_ID.to_string(),
            Client {
                access_token: issuer_token.clone(),
                scopes: vec!["*".into()],
            },
        );
        Ok(Core {
            schemas,
            entries,
            store: Mutex::new(Store::default()),
            changed: Condvar::new(),
            work: tokio::sync::Notify::new(),
            clients: RwLock::new(clients),
            issuer_token,
            objects: Mutex::new(Objects::default()),
            index: Mutex::new(Index::default()),
            storage,
            root_url: OnceLock::new(),
            timing,
            faults: Mutex::new(Faults::default()),
            calls_changed: Condvar::new(),
            started: Instant::now(),
        })
    }

    /// The api.json entry of a served endpoint.
    pub fn entry(&self, name: &str) -> &ApiEntry {
        self.entries
            .get(name)
            .unwrap_or_else(|| panic!("the queue double has no endpoint named {name}"))
    }

    /// Is `name` an endpoint the double serves?
    pub fn serves(&self, name: &str) -> bool {
        ROUTES
            .iter()
            .chain(OBJECT_ROUTES)
            .chain(INDEX_ROUTES)
            .any(|(n, _, _)| *n == name)
    }

    /// Set the root URL once the server listens; URLs the double hands out start with it.
    pub fn set_root_url(&self, url: String) {
        let _ = self.root_url.set(url);
    }

    /// The root URL, e.g. `http://127.0.0.1:41234`.
    pub fn root_url(&self) -> &str {
        self.root_url.get().map_or("http://127.0.0.1", String::as_str)
    }

    /// Add or replace a permanent client.
    pub fn add_client(&self, client_id: &str, access_token: &str, scopes: Vec<String>) {
        self.clients.write().expect("clients lock").insert(
            client_id.to_string(),
            Client {
                access_token: access_token.to_string(),
                scopes,
            },
        );
    }

    /// Authenticate an HTTP request.
    pub fn authenticate(&self, incoming: &hawk::Incoming<'_>) -> AuthResult {
        hawk::authenticate(&self.clients.read().expect("clients lock"), incoming, Utc::now())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Run `f` on the store and, if it says it changed something, wake everyone who waits for change.
    pub(super) fn mutate<T>(&self, f: impl FnOnce(&mut Store) -> (T, bool)) -> T {
        let (out, changed) = f(&mut self.lock());
        if changed {
            self.changed.notify_all();
            self.work.notify_waiters();
        }
        out
    }

    /// Count a call of `endpoint` and take the next fault queued for it.
    pub fn record_call(&self, endpoint: &str) -> Option<Fault> {
        let mut f = self.faults.lock().expect("faults lock");
        *f.calls.entry(endpoint.to_string()).or_default() += 1;
        self.calls_changed.notify_all();
        f.queued.get_mut(endpoint).and_then(VecDeque::pop_front)
    }

    /// Block until `endpoint` has received at least `n` calls or `timeout` passes; returns the count.
    pub fn wait_for_calls(&self, endpoint: &str, n: usize, timeout: Duration) -> usize {
        assert!(
            self.serves(endpoint),
            "the queue double has no endpoint named {endpoint}"
        );
        let end = Instant::now() + timeout;
        let mut f = self.faults.lock().expect("faults lock");
        loop {
            let count = f.calls.get(endpoint).copied().unwrap_or(0);
            let now = Instant::now();
            if count >= n || now >= end {
                return count;
            }
            f = self
                .calls_changed
                .wait_timeout(f, end - now)
                .expect("faults lock")
                .0;
        }
    }

    /// Queue `n` faults for the next calls of `endpoint`.
    pub fn queue_faults(&self, endpoint: &str, n: usize, fault: Fault) {
        assert!(
            self.serves(endpoint),
            "the queue double has no endpoint named {endpoint}"
        );
        let mut f = self.faults.lock().expect("faults lock");
        f.queued
            .entry(endpoint.to_string())
            .or_default()
            .extend(std::iter::repeat_n(fault, n));
    }

    /// How many calls `endpoint` has received.
    pub fn calls(&self, endpoint: &str) -> usize {
        assert!(
            self.serves(endpoint),
            "the queue double has no endpoint named {endpoint}"
        );
        self.faults
            .lock()
            .expect("faults lock")
            .calls
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// The claim resolver and deadline resolver, once.
    pub fn sweep(&self) {
        let delay = chrono::Duration::from_std(self.timing.deadline_delay).unwrap_or(chrono::Duration::MAX);
        self.mutate(|s| ((), s.sweep(now_ms(), delay)));
    }

    /// A task's status, if the task exists.
    pub fn status_of(&self, task_id: &str) -> Option<Value> {
        self.lock().tasks.get(task_id).map(Task::status)
    }

    /// Block until `task_id`'s status satisfies `pred`, or `timeout` passes (then the last status, or
    /// None if there is no such task).
    pub fn wait_for_status(
        &self,
        task_id: &str,
        timeout: Duration,
        pred: &dyn Fn(&Value) -> bool,
    ) -> Result<Value, Option<Value>> {
        let end = Instant::now() + timeout;
        let mut store = self.lock();
        loop {
            let status = store.tasks.get(task_id).map(Task::status);
            if let Some(s) = &status {
                if pred(s) {
                    return Ok(s.clone());
                }
            }
            let now = Instant::now();
            if now >= end {
                return Err(status);
            }
            store = self
                .changed
                .wait_timeout(store, end - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Seconds since start (for `ping`).
    pub fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The steps before the handler: authorization when the scopes need only URL parameters, URL
    /// parameter patterns, then input defaults and schema.
    pub fn prepare(&self, call: &mut Call<'_>, body_is_json: bool) -> Result<(), ApiError> {
        let entry = call.entry;
        if let Some(template) = &entry.scopes {
            let needed = scopes::template_params(template);
            if needed.iter().all(|p| entry.args.contains(p)) {
                call.authorize(&call.params)?;
            }
        }
        let errors: Vec<String> = call
            .params
            .iter()
            .filter_map(|(k, v)| check_param(k, v.as_str().unwrap_or_default()).err())
            .collect();
        if !errors.is_empty() {
            return Err(ApiError::new(
                "InvalidRequestArguments",
                format!("Invalid URL patterns:\n{}", errors.join("\n")),
            ));
        }
        // queries.js: only the entry's query parameters (and a bewit), each matching its pattern
        // (`paginateResults.query`: a non-empty continuationToken, a decimal limit).
        let errors: Vec<String> = call
            .query
            .iter()
            .filter_map(|(key, value)| {
                if !entry.query.contains(key) {
                    return (key != "bewit")
                        .then(|| format!("Query-string parameter: {key} is not supported!"));
                }
                let (ok, pattern) = match key.as_str() {
                    "limit" => (
                        !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()),
                        "/^[0-9]+$/",
                    ),
                    _ => (value.chars().any(|c| c != '\n' && c != '\r'), "/./"),
                };
                (!ok).then(|| {
                    format!("Query-string parameter: {key}=\"{value}\" does not match expression: {pattern}")
                })
            })
            .collect();
        if !errors.is_empty() {
            return Err(ApiError::new("InvalidRequestArguments", errors.join("\n")));
        }
        if let Some(input) = &entry.input {
            if !body_is_json {
                return Err(ApiError::new(
                    "MalformedPayload",
                    "Payload must be JSON with content-type: application/json",
                ));
            }
            self.schemas
                .apply_defaults(input, &mut call.body)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if let Err(invalid) = self
                .schemas
                .validate(input, &call.body)
                .map_err(|e| ApiError::internal(e.to_string()))?
            {
                return Err(ApiError::new(
                    "InputValidationError",
                    format!("Schema Validation Failed!\nRejecting Schema: {input}\nErrors:\n{invalid}"),
                ));
            }
        }
        Ok(())
    }

    /// Validate a reply against the entry's output schema; a mismatch is the double's own bug: 500.
    pub fn check_output(&self, entry: &ApiEntry, reply: &Value) -> Result<(), ApiError> {
        let Some(output) = &entry.output else {
            return Ok(());
        };
        match self.schemas.validate(output, reply) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(invalid)) => Err(ApiError::internal(format!(
                "Output schema validation error: the queue double replied with a body that does not \
                 match {output}:\n{invalid}"
            ))),
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }

    /// The handler of every endpoint but `claimWork`, with the reply's status and headers.
    pub fn handle_reply(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        let now = now_ms();
        match call.entry.name.as_str() {
            "createArtifact" => self.create_artifact(call, now),
            "finishArtifact" => self.finish_artifact(call),
            "getArtifact" => self.get_artifact(call, false, now),
            "getLatestArtifact" => self.get_artifact(call, true, now),
            "listArtifacts" => self.list_artifacts(call),
            "createUpload" => self.create_upload(call, now),
            "finishUpload" => self.finish_upload(call),
            "startDownload" => self.start_download(call, now),
            "object" => self.object_metadata(call),
            "download" => self.download(call, now),
            "findTask" => self.find_task(call, now),
            "insertTask" => self.insert_task(call),
            _ => self.handle(call).map(Reply::ok),
        }
    }

    /// A call one service makes to another (the Queue to the Object service), with the caller's own
    /// credentials (scope `*`): counted and subject to the faults queued for the endpoint like any
    /// HTTP call, then through the same pipeline. A `Delay` fault sleeps in the calling thread.
    pub(super) fn service_call(
        &self,
        name: &str,
        params: &[(&str, &str)],
        body: Value,
    ) -> Result<Reply, ApiError> {
        match self.record_call(name) {
            Some(Fault::Fail) => {
                return Err(ApiError::internal(format!(
                    "{name}: Internal Server Error, incidentId queue-double-injected-fault."
                )))
            }
            Some(Fault::Drop) => {
                return Err(ApiError::internal(format!(
                    "{name}: socket hang up (the queue double dropped the connection)"
                )))
            }
            Some(Fault::Delay(d)) => std::thread::sleep(d),
            None => {}
        }
        let entry = self.entry(name);
        let mut call = Call {
            entry,
            params: params.iter().map(|(k, v)| (k.to_string(), json!(v))).collect(),
            query: vec![],
            body,
            caller: Caller::Internal,
        };
        self.prepare(&mut call, true)?;
        let reply = self.handle_reply(&call)?;
        self.check_reply(entry, &reply)?;
        Ok(reply)
    }

    /// [`Core::check_output`] for the replies that go through it.
    pub fn check_reply(&self, entry: &ApiEntry, reply: &Reply) -> Result<(), ApiError> {
        match &reply.body {
            Body::Json(v) if reply.checked => self.check_output(entry, v),
            _ => Ok(()),
        }
    }

    /// The handler of the Queue's task and run endpoints.
    pub fn handle(&self, call: &Call<'_>) -> Result<Value, ApiError> {
        let now = now_ms();
        let task_id = call
            .params
            .get("taskId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let run_id = call
            .params
            .get("runId")
            .and_then(Value::as_str)
            .map(|r| r.parse::<usize>().ok());
        match call.entry.name.as_str() {
            "ping" => Ok(json!({"alive": true, "uptime": self.uptime()})),
            "createTask" => self.create_task(call, &task_id, now),
            "task" => {
                let store = self.lock();
                let task = store.tasks.get(&task_id).ok_or_else(|| {
                    ApiError::new(
                        "ResourceNotFound",
                        format!(
                            "`{task_id}` does not correspond to a task that exists.\nAre you sure this task \
                             has already been submitted?"
                        ),
                    )
                })?;
                Ok(task.definition.clone())
            }
            "status" => {
                let store = self.lock();
                let task = store.tasks.get(&task_id).ok_or_else(|| {
                    ApiError::new(
                        "ResourceNotFound",
                        format!("`{task_id}` does not correspond to a task that exists.\nAre you sure this task exists?"),
                    )
                })?;
                Ok(json!({"status": task.status()}))
            }
            "cancelTask" => self.cancel_task(call, &task_id, now),
            "reclaimTask" => self.reclaim(call, &task_id, run_id.flatten(), now),
            "reportCompleted" => {
                // Very old workers reported failure as `{success: false}`.
                let target = if call.body.get("success") == Some(&Value::Bool(false)) {
                    RunState::Failed
                } else {
                    RunState::Completed
                };
                self.resolve(call, &task_id, run_id.flatten(), target, now)
            }
            "reportFailed" => self.resolve(call, &task_id, run_id.flatten(), RunState::Failed, now),
            "reportException" => self.report_exception(call, &task_id, run_id.flatten(), now),
            other => Err(ApiError::internal(format!(
                "{other} is not handled synchronously"
            ))),
        }
    }

    fn create_task(&self, call: &Call<'_>, task_id: &str, now: DateTime<Utc>) -> Result<Value, ApiError> {
        let mut def = call.body.as_object().cloned().unwrap_or_default();
        let s = |d: &Map<String, Value>, k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
        match (
            s(&def, "provisionerId"),
            s(&def, "workerType"),
            s(&def, "taskQueueId"),
        ) {
            (Some(p), Some(w), Some(q)) => {
                if format!("{p}/{w}") != q {
                    return Err(ApiError::new(
                        "InputError",
                        "taskQueueId must match \"provisionerId/workerType\"",
                    ));
                }
            }
            (Some(p), Some(w), None) => {
                def.insert("taskQueueId".into(), json!(format!("{p}/{w}")));
            }
            (_, _, Some(q)) => {
                let (p, w) = q.split_once('/').unwrap_or((&q, ""));
                def.insert("provisionerId".into(), json!(p));
                def.insert("workerType".into(), json!(w));
            }
            _ => {
                return Err(ApiError::new(
                    "InputError",
                    "at least a provisionerId and a workerType or a taskQueueId must be provided\"",
                ))
            }
        }
        if s(&def, "projectId").is_none_or(|p| p.is_empty()) {
            def.insert("projectId".into(), json!("none"));
        }
        let priority_name = s(&def, "priority").unwrap_or_else(|| "lowest".into());
        let priority = PRIORITIES
            .iter()
            .position(|p| *p == priority_name)
            .unwrap_or(PRIORITIES.len() - 1);
        call.authorize(&params_of(&[
            ("taskId", json!(task_id)),
            ("priorities", json!(PRIORITIES[..=priority])),
            ("routes", def.get("routes").cloned().unwrap_or(json!([]))),
            ("scopes", def.get("scopes").cloned().unwrap_or(json!([]))),
            (
                "schedulerId",
                def.get("schedulerId").cloned().unwrap_or(json!("-")),
            ),
            (
                "projectId",
                def.get("projectId").cloned().unwrap_or(json!("none")),
            ),
            (
                "provisionerId",
                def.get("provisionerId").cloned().unwrap_or(Value::Null),
            ),
            (
                "workerType",
                def.get("workerType").cloned().unwrap_or(Value::Null),
            ),
        ]))?;

        // patchAndValidateTaskDef
        if s(&def, "taskGroupId").is_none_or(|g| g.is_empty()) {
            def.insert("taskGroupId".into(), json!(task_id));
        }
        let created =
            parse_time(&def["created"]).ok_or_else(|| ApiError::new("InputError", "bad `created`"))?;
        let deadline =
            parse_time(&def["deadline"]).ok_or_else(|| ApiError::new("InputError", "bad `deadline`"))?;
        let drift = chrono::Duration::milliseconds(DRIFT_MS);
        if created < now - drift {
            return Err(ApiError::new(
                "InputError",
                "`created` cannot be in the past (max 15min drift)",
            ));
        }
        if created > now + drift {
            return Err(ApiError::new(
                "InputError",
                "`created` cannot be in the future (max 15min drift)",
            ));
        }
        if created > deadline {
            return Err(ApiError::new(
                "InputError",
                "`deadline` cannot be later than `created`",
            ));
        }
        if deadline < now {
            return Err(ApiError::new("InputError", "`deadline` cannot be in the past"));
        }
        if deadline - now > chrono::Duration::days(MAX_TASK_DEADLINE_DAYS) + drift {
            return Err(ApiError::new(
                "InputError",
                format!("`deadline` cannot be more than {MAX_TASK_DEADLINE_DAYS} days into the future"),
            ));
        }
        let expires = match def.get("expires").and_then(parse_time) {
            Some(e) => e,
            None => plus_one_year(deadline),
        };
        if deadline > expires {
            return Err(ApiError::new(
                "InputError",
                "`expires` cannot be before `deadline`",
            ));
        }
        let scopes: Vec<String> = def
            .get("scopes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if scopes.iter().any(|s| s.ends_with("**")) {
            return Err(ApiError::new("InputError", "scopes must not end with `**`"));
        }

        // Task.definition(): every field, in the Queue's canonical form.
        let field = |k: &str, default: Value| def.get(k).cloned().unwrap_or(default);
        let definition = json!({
            "provisionerId": field("provisionerId", Value::Null),
            "workerType": field("workerType", Value::Null),
            "taskQueueId": field("taskQueueId", Value::Null),
            "schedulerId": field("schedulerId", json!("-")),
            "projectId": field("projectId", json!("none")),
            "taskGroupId": field("taskGroupId", json!(task_id)),
            "dependencies": field("dependencies", json!([])),
            "requires": field("requires", json!("all-completed")),
            "routes": field("routes", json!([])),
            "priority": PRIORITIES[priority],
            "retries": field("retries", json!(5)),
            "created": fmt_time(created),
            "deadline": fmt_time(deadline),
            "expires": fmt_time(expires),
            "scopes": scopes,
            "payload": field("payload", json!({})),
            "metadata": field("metadata", json!({})),
            "tags": field("tags", json!({})),
            "extra": field("extra", json!({})),
        });
        let task = Task {
            task_id: task_id.to_string(),
            task_queue_id: definition["taskQueueId"].as_str().unwrap_or_default().to_string(),
            priority,
            retries_left: definition["retries"].as_u64().unwrap_or(5),
            deadline,
            scopes,
            runs: vec![],
            definition,
        };

        self.mutate(|store| {
            let result =
                (|| {
                    // ensure_task_group: one schedulerId per task group.
                    if let Some(other) = store.tasks.values().find(|t| {
                        t.task_group_id() == task.task_group_id() && t.scheduler_id() != task.scheduler_id()
                    }) {
                        return Err(ApiError::new(
                            "RequestConflict",
                            format!(
                            "Task group `{}` contains tasks with a schedulerId other than `{}`. All tasks in \
                             the same task-group must have the same schedulerId.",
                            other.task_group_id(),
                            task.scheduler_id()
                        ),
                        ));
                    }
                    if let Some(existing) = store.tasks.get(task_id) {
                        if existing.definition != task.definition {
                            return Err(ApiError::new(
                                "RequestConflict",
                                format!(
                                "taskId `{task_id}` already used by another task.\nThis could be the result \
                                 of faulty idempotency!"
                            ),
                            ));
                        }
                        return Ok((json!({"status": existing.status()}), false));
                    }
                    let deps = task.dependencies();
                    store.insert(task.clone());
                    if deps.is_empty() {
                        store.schedule(task_id, now);
                    } else {
                        let missing: Vec<&String> = deps
                            .iter()
                            .filter(|d| *d != task_id && !store.tasks.contains_key(*d))
                            .collect();
                        if !missing.is_empty() {
                            return Err(ApiError::new(
                                "InputError",
                                format!(
                                "`task.dependencies` references non-existing tasks: \n{}\nAll taskIds in \
                                 `task.dependencies` **must** exist before the task is created.",
                                missing.iter().map(|d| format!(" * {d},")).collect::<Vec<_>>().join("\n")
                            ),
                            ));
                        }
                        store.schedule_ready_dependents(now);
                    }
                    let status = store.tasks.get(task_id).map(Task::status).unwrap_or(Value::Null);
                    Ok((json!({ "status": status }), true))
                })();
            match result {
                Ok((reply, changed)) => (Ok(reply), changed),
                // A task created before a dependency error stays created, as in the Queue.
                Err(e) => {
                    let created = store.tasks.contains_key(task_id);
                    (Err(e), created)
                }
            }
        })
    }

    fn cancel_task(&self, call: &Call<'_>, task_id: &str, now: DateTime<Utc>) -> Result<Value, ApiError> {
        let (scheduler_id, group, project, deadline) = {
            let store = self.lock();
            let task = store
                .tasks
                .get(task_id)
                .ok_or_else(|| not_found_task(task_id, "Are you sure it was created?"))?;
            (
                task.scheduler_id().to_string(),
                task.task_group_id().to_string(),
                task.project_id().to_string(),
                task.deadline,
            )
        };
        call.authorize(&params_of(&[
            ("taskId", json!(task_id)),
            ("schedulerId", json!(scheduler_id)),
            ("taskGroupId", json!(group)),
            ("projectId", json!(project)),
        ]))?;
        if deadline < now {
            return Err(ApiError::new(
                "RequestConflict",
                format!(
                    "Task `{task_id}` can't be canceled past its deadline of {}.",
                    fmt_time(deadline)
                ),
            ));
        }
        self.mutate(|store| {
            let changed = store.cancel(task_id, "canceled", now);
            if changed {
                store.schedule_ready_dependents(now);
            }
            let status = store.tasks.get(task_id).map(Task::status).unwrap_or(Value::Null);
            (Ok(json!({ "status": status })), changed)
        })
    }

    /// The run `run_id` of `task_id` for a worker-interface call: 404s as the Queue words them, then
    /// the handler's own authorization with the run's worker.
    fn find_run(
        &self,
        call: &Call<'_>,
        task_id: &str,
        run_id: Option<usize>,
        not_found_tail: &str,
    ) -> Result<(usize, Task), ApiError> {
        let task = self
            .lock()
            .tasks
            .get(task_id)
            .cloned()
            .ok_or_else(|| not_found_task(task_id, not_found_tail))?;
        let run_param = call.params.get("runId").cloned().unwrap_or(Value::Null);
        let run = run_id.and_then(|r| task.runs.get(r).map(|run| (r, run)));
        let Some((run_id, run)) = run else {
            return Err(ApiError::new(
                "ResourceNotFound",
                format!(
                    "Run {} not found on task `{task_id}`.",
                    run_param.as_str().unwrap_or_default()
                ),
            ));
        };
        call.authorize(&params_of(&[
            ("taskId", json!(task_id)),
            ("runId", json!(run_id)),
            (
                "workerGroup",
                run.worker_group.clone().map_or(Value::Null, Value::String),
            ),
            (
                "workerId",
                run.worker_id.clone().map_or(Value::Null, Value::String),
            ),
        ]))?;
        Ok((run_id, task))
    }

    fn credentials(
        &self,
        task: &Task,
        run_id: usize,
        wg: &str,
        wid: &str,
        taken_until: DateTime<Utc>,
    ) -> Value {
        let client_id = format!(
            "task-client/{}/{run_id}/on/{wg}/{wid}/until/{}",
            task.task_id,
            js_epoch_seconds(taken_until)
        );
        let mut scopes = vec![
            format!("queue:reclaim-task:{}/{run_id}", task.task_id),
            format!("queue:resolve-task:{}/{run_id}", task.task_id),
            format!("queue:create-artifact:{}/{run_id}", task.task_id),
        ];
        scopes.extend(task.scopes.iter().cloned());
        hawk::issue_temp_credentials(
            ISSUER_CLIENT_ID,
            &self.issuer_token,
            &client_id,
            &scopes,
            now_ms(),
            taken_until,
        )
        .to_json()
    }

    fn taken_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.timing.claim_timeout).unwrap_or(chrono::Duration::days(1))
    }

    fn reclaim(
        &self,
        call: &Call<'_>,
        task_id: &str,
        run_id: Option<usize>,
        now: DateTime<Utc>,
    ) -> Result<Value, ApiError> {
        let (run_id, task) = self.find_run(call, task_id, run_id, "Are you sure it was created?")?;
        if task.deadline <= now {
            return Err(ApiError::new(
                "RequestConflict",
                format!(
                    "Task `{task_id}` can't be reclaimed past its deadline of {}.",
                    fmt_time(task.deadline)
                ),
            ));
        }
        let taken_until = self.taken_until(now);
        let updated = self.mutate(|store| {
            let ok = store
                .apply_latest(task_id, run_id, RunEvent::Reclaim { taken_until }, now)
                .is_ok();
            (store.tasks.get(task_id).cloned().filter(|_| ok), ok)
        });
        let Some(task) = updated else {
            return Err(ApiError::new(
                "RequestConflict",
                format!("Run {run_id} on task `{task_id}` is resolved or not running."),
            ));
        };
        let run = &task.runs[run_id];
        let (wg, wid) = (
            run.worker_group.clone().unwrap_or_default(),
            run.worker_id.clone().unwrap_or_default(),
        );
        Ok(json!({
            "status": task.status(),
            "runId": run_id,
            "workerGroup": wg,
            "workerId": wid,
            "takenUntil": fmt_time(taken_until),
            "credentials": self.credentials(&task, run_id, &wg, &wid, taken_until),
        }))
    }

    fn resolve(
        &self,
        call: &Call<'_>,
        task_id: &str,
        run_id: Option<usize>,
        target: RunState,
        now: DateTime<Utc>,
    ) -> Result<Value, ApiError> {
        let task = self
            .lock()
            .tasks
            .get(task_id)
            .cloned()
            .ok_or_else(|| not_found_task(task_id, "Are you sure it was created?"))?;
        let run_param = call
            .params
            .get("runId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(run) = run_id.and_then(|r| task.runs.get(r)) else {
            return Err(ApiError::new(
                "ResourceNotFound",
                format!("Run {run_param} not found on task `{task_id}`."),
            ));
        };
        let run_id = run_id.unwrap_or_default();
        // The Queue checks the state before its own authorization here.
        if run.state != RunState::Running && run.state != target {
            return Err(ApiError::new(
                "RequestConflict",
                format!(
                    "Run {run_id} of task `{task_id}` is not running or {}.",
                    target.as_str()
                ),
            ));
        }
        self.find_run(call, task_id, Some(run_id), "Are you sure it was created?")?;
        let event = RunEvent::Resolve {
            state: target,
            reason: target.as_str().to_string(),
        };
        self.mutate(|store| {
            let changed = store.apply_latest(task_id, run_id, event, now).is_ok();
            if changed {
                store.schedule_ready_dependents(now);
            }
            let Some(task) = store.tasks.get(task_id) else {
                return (Err(not_found_task(task_id, "")), changed);
            };
            let run = &task.runs[run_id];
            if task.runs.len() != run_id + 1
                || run.state != target
                || run.reason_resolved.as_deref() != Some(target.as_str())
            {
                return (
                    Err(ApiError::new(
                        "RequestConflict",
                        format!("Run {run_id} on task `{task_id}` is resolved or not running."),
                    )),
                    changed,
                );
            }
            (Ok(json!({"status": task.status()})), changed)
        })
    }

    fn report_exception(
        &self,
        call: &Call<'_>,
        task_id: &str,
        run_id: Option<usize>,
        now: DateTime<Utc>,
    ) -> Result<Value, ApiError> {
        let (run_id, _) = self.find_run(call, task_id, run_id, "Are you sure it exists?")?;
        let reason = call.body["reason"].as_str().unwrap_or_default().to_string();
        let retry = match reason.as_str() {
            "worker-shutdown" => Some("retry"),
            "intermittent-task" => Some("task-retry"),
            _ => None,
        };
        let event = RunEvent::Resolve {
            state: RunState::Exception,
            reason: reason.clone(),
        };
        self.mutate(|store| {
            let changed = store.apply_latest(task_id, run_id, event, now).is_ok();
            if changed {
                let retried = retry.is_some_and(|r| store.add_retry(task_id, r, now));
                if !retried {
                    store.schedule_ready_dependents(now);
                }
            }
            let Some(task) = store.tasks.get(task_id) else {
                return (Err(not_found_task(task_id, "")), changed);
            };
            let run = &task.runs[run_id];
            if task.runs.len() > run_id + 2
                || run.state != RunState::Exception
                || run.reason_resolved.as_deref() != Some(reason.as_str())
            {
                return (
                    Err(ApiError::new(
                        "RequestConflict",
                        format!("Run {run_id} on task `{task_id}` is resolved or not running."),
                    )),
                    changed,
                );
            }
            (Ok(json!({"status": task.status()})), changed)
        })
    }

    /// claimWork's authorization, from the validated body and the URL.
    pub fn authorize_claim(&self, call: &Call<'_>) -> Result<(String, String, String, usize), ApiError> {
        let queue = call
            .params
            .get("taskQueueId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let wg = call.body["workerGroup"].as_str().unwrap_or_default().to_string();
        let wid = call.body["workerId"].as_str().unwrap_or_default().to_string();
        let count = call.body["tasks"].as_u64().unwrap_or(1) as usize;
        call.authorize(&params_of(&[
            ("workerGroup", json!(wg)),
            ("workerId", json!(wid)),
            ("taskQueueId", json!(queue)),
        ]))?;
        Ok((queue, wg, wid, count))
    }

    /// Claim up to `count` pending runs of `queue` for the worker, right now.
    pub fn claim_now(&self, queue: &str, wg: &str, wid: &str, count: usize) -> Vec<Value> {
        let now = now_ms();
        let taken_until = self.taken_until(now);
        let claimed: Vec<(Task, usize)> = self.mutate(|store| {
            let mut out = Vec::new();
            for (task_id, run_id) in store.claimable(queue, now, count) {
                let event = RunEvent::Claim {
                    worker_group: wg.to_string(),
                    worker_id: wid.to_string(),
                    taken_until,
                };
                if store.apply_latest(&task_id, run_id, event, now).is_ok() {
                    if let Some(t) = store.tasks.get(&task_id) {
                        out.push((t.clone(), run_id));
                    }
                }
            }
            let changed = !out.is_empty();
            (out, changed)
        });
        claimed
            .into_iter()
            .map(|(task, run_id)| {
                json!({
                    "status": task.status(),
                    "runId": run_id,
                    "workerGroup": wg,
                    "workerId": wid,
                    "takenUntil": fmt_time(taken_until),
                    "task": task.definition,
                    "credentials": self.credentials(&task, run_id, wg, wid, taken_until),
                })
            })
            .collect()
    }

    /// claimWork: claim now, or hold the call until work appears or the wait ends.
    pub async fn claim_work(&self, queue: &str, wg: &str, wid: &str, count: usize) -> Value {
        let end = tokio::time::Instant::now() + self.timing.claim_work_wait;
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            // Register before looking, so a task created in between still wakes this call.
            notified.as_mut().enable();
            let claims = self.claim_now(queue, wg, wid, count);
            if !claims.is_empty() {
                return json!({ "tasks": claims });
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return json!({"tasks": []});
            }
        }
    }

    /// Run a call through the whole pipeline without HTTP (the Rust API); the reply's JSON body (null
    /// when it has none).
    pub fn internal_call(&self, name: &str, params: &[(&str, &str)], body: Value) -> Result<Value, ApiError> {
        let entry = self.entry(name);
        let mut call = Call {
            entry,
            params: params.iter().map(|(k, v)| (k.to_string(), json!(v))).collect(),
            query: vec![],
            body,
            caller: Caller::Internal,
        };
        self.prepare(&mut call, true)?;
        let reply = self.handle_reply(&call)?;
        self.check_reply(entry, &reply)?;
        Ok(reply.json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue_double::schemas::{load_api_entries, Schemas};

    fn core() -> Core {
        let timing = Timing {
            claim_timeout: Duration::from_secs(1200),
            claim_work_wait: Duration::from_secs(1),
            deadline_delay: Duration::from_secs(60),
        };
        Core::new(
            Schemas::load().unwrap(),
            load_api_entries().unwrap(),
            HashMap::new(),
            timing,
        )
        .unwrap()
    }

    #[test]
    fn a_reply_that_breaks_its_output_schema_is_a_500() {
        let core = core();
        let err = core
            .check_output(core.entry("status"), &json!({"status": {"taskId": "x"}}))
            .unwrap_err();
        assert_eq!((err.code, err.status()), ("InternalServerError", 500));
        assert!(
            err.message.contains("task-status-response.json"),
            "{}",
            err.message
        );
    }

    #[test]
    fn url_parameters_follow_the_queue_patterns() {
        assert!(check_param("taskQueueId", "proj-1/worker-type").is_ok());
        assert!(check_param("taskQueueId", "proj/Worker").is_err());
        assert!(check_param("taskQueueId", "proj").is_err());
        assert!(check_param("runId", "007").is_ok());
        assert!(check_param("runId", "-1").is_err());
        assert!(check_param("taskId", &hawk::slugid()).is_ok());
        assert!(check_param("taskId", "abc").is_err());
    }

    #[test]
    fn javascript_epoch_seconds() {
        let t = |ms| DateTime::from_timestamp_millis(ms).unwrap();
        assert_eq!(js_epoch_seconds(t(1_700_000_000_000)), "1700000000");
        assert_eq!(js_epoch_seconds(t(1_700_000_000_120)), "1700000000.12");
        assert_eq!(js_epoch_seconds(t(1_700_000_000_005)), "1700000000.005");
    }

    #[test]
    fn one_year_after_29_february_is_1_march() {
        let t = DateTime::parse_from_rfc3339("2028-02-29T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(fmt_time(plus_one_year(t)), "2029-03-01T10:00:00.000Z");
    }
}
