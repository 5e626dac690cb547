//! The queue double against Taskcluster's api.json and schemas, over HTTP with Hawk signed here, and
//! through the official Taskcluster Python client; no Docker needed for those. At the end, the registry
//! helper against Docker and the registry `integration/test.sh` starts.

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use docker_worker_integration::queue_double::{
    new_task_id, task_definition, Options, QueueDouble, INDEX_ROUTES, OBJECT_ROUTES, ROUTES,
};
use docker_worker_integration::registry::{self, Registry};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};

const WAIT: Duration = Duration::from_secs(20);

/// Tests run in threads of one process. The one that measures this process's memory runs alone: it
/// holds [`alone`], every other test holds [`together`].
static GATE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn together() -> std::sync::RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    GATE.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn shared() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/taskcluster");
    assert!(
        dir.join("references/queue/v1/api.json").is_file(),
        "the Taskcluster schemas are missing at {}; the shared folder belongs beside the checkout",
        dir.display()
    );
    dir
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// An independent check of replies against the Queue's output schemas.

struct SharedSchemas;

impl jsonschema::Retrieve for SharedSchemas {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri
            .as_str()
            .strip_prefix("https://tc.test/")
            .ok_or_else(|| format!("unexpected schema reference {uri}"))?;
        let mut v = read_json(shared().join(path.split('#').next().unwrap_or(path)));
        v.as_object_mut().map(|m| m.remove("$schema"));
        Ok(v)
    }
}

/// Validate `value` against `schemas/queue/v1/<name>` (draft 6, formats on).
fn assert_schema(name: &str, value: &Value) {
    assert_schema_of("queue", name, value);
}

/// Validate `value` against `schemas/<service>/v1/<name>`.
fn assert_schema_of(service: &str, name: &str, value: &Value) {
    let mut schema = read_json(shared().join("schemas").join(service).join("v1").join(name));
    schema.as_object_mut().map(|m| m.remove("$schema"));
    let validator = jsonschema::draft6::options()
        .should_validate_formats(true)
        .with_base_uri(format!("https://tc.test/schemas/{service}/v1/{name}"))
        .with_retriever(SharedSchemas)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "reply does not match {name}:\n{}\n{value:#}",
        errors.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// A small Hawk signer and HTTP helpers.

#[derive(Clone, Debug)]
struct Creds {
    client_id: String,
    access_token: String,
    certificate: Option<String>,
}

impl Creds {
    fn new(id: &str, token: &str) -> Creds {
        Creds {
            client_id: id.into(),
            access_token: token.into(),
            certificate: None,
        }
    }

    fn root(q: &QueueDouble) -> Creds {
        let (id, token) = q.root_credentials();
        Creds::new(&id, &token)
    }

    /// The `credentials` of a claim or reclaim reply.
    fn from_reply(credentials: &Value) -> Creds {
        assert!(
            credentials["certificate"].is_string(),
            "the certificate is a JSON string"
        );
        Creds {
            client_id: credentials["clientId"].as_str().unwrap().into(),
            access_token: credentials["accessToken"].as_str().unwrap().into(),
            certificate: credentials["certificate"].as_str().map(str::to_string),
        }
    }
}

fn hmac_b64(key: &str, data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(data);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// `Authorization: Hawk …` for a request, as the Taskcluster clients build it.
fn hawk_header(creds: &Creds, method: &str, url: &reqwest::Url, body: Option<&[u8]>) -> String {
    hawk_header_at(creds, method, url, body, chrono::Utc::now().timestamp())
}

/// The same, with the Hawk timestamp `ts` (seconds since the epoch).
fn hawk_header_at(creds: &Creds, method: &str, url: &reqwest::Url, body: Option<&[u8]>, ts: i64) -> String {
    let nonce = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let hash = body.map(|b| {
        let mut h = Sha256::new();
        h.update(b"hawk.1.payload\napplication/json\n");
        h.update(b);
        h.update(b"\n");
        STANDARD.encode(h.finalize())
    });
    let ext = creds.certificate.as_ref().map(|c| {
        let cert: Value = serde_json::from_str(c).expect("certificate is JSON");
        STANDARD.encode(json!({ "certificate": cert }).to_string())
    });
    let resource = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let normalized = format!(
        "hawk.1.header\n{ts}\n{nonce}\n{}\n{resource}\n{}\n{}\n{}\n{}\n",
        method.to_uppercase(),
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap(),
        hash.clone().unwrap_or_default(),
        ext.clone().unwrap_or_default()
    );
    let mac = hmac_b64(&creds.access_token, normalized.as_bytes());
    let mut header = format!(r#"Hawk id="{}", ts="{ts}", nonce="{nonce}""#, creds.client_id);
    if let Some(h) = hash {
        header.push_str(&format!(r#", hash="{h}""#));
    }
    if let Some(e) = ext {
        header.push_str(&format!(r#", ext="{e}""#));
    }
    header.push_str(&format!(r#", mac="{mac}""#));
    header
}

fn client() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    })
}

/// A reply: status code, body, and the `www-authenticate` header.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    www_authenticate: Option<String>,
}

fn send(
    q: &QueueDouble,
    method: &str,
    path: &str,
    creds: Option<&Creds>,
    body: Option<&Value>,
) -> reqwest::Result<Reply> {
    let url = reqwest::Url::parse(&format!("{}/api/queue/v1{path}", q.root_url())).unwrap();
    let bytes = body.map(|b| b.to_string().into_bytes());
    let mut req = client().request(method.parse().unwrap(), url.clone());
    if let Some(b) = &bytes {
        req = req.header("content-type", "application/json").body(b.clone());
    }
    if let Some(c) = creds {
        req = req.header("authorization", hawk_header(c, method, &url, bytes.as_deref()));
    }
    let resp = req.send()?;
    let status = resp.status().as_u16();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text()?;
    let body =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
    Ok(Reply {
        status,
        body,
        www_authenticate,
    })
}

fn call(q: &QueueDouble, method: &str, path: &str, creds: Option<&Creds>, body: Option<&Value>) -> Reply {
    send(q, method, path, creds, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A client that does not follow redirects.
fn raw_client() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap()
    })
}

/// A reply as it came: status, headers, bytes.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

impl RawReply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Any request to a full URL, Hawk-signed when `creds` are given; redirects are not followed.
fn raw(method: &str, url: &str, creds: Option<&Creds>, body: Option<&Value>) -> RawReply {
    let url = reqwest::Url::parse(url).unwrap();
    let bytes = body.map(|b| b.to_string().into_bytes());
    let mut req = raw_client().request(method.parse().unwrap(), url.clone());
    if let Some(b) = &bytes {
        req = req.header("content-type", "application/json").body(b.clone());
    }
    if let Some(c) = creds {
        req = req.header("authorization", hawk_header(c, method, &url, bytes.as_deref()));
    }
    let resp = req.send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    RawReply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        bytes: resp.bytes().unwrap().to_vec(),
    }
}

/// A request to the Queue (`/api/queue/v1<path>`), not following redirects.
fn queue_raw(
    q: &QueueDouble,
    method: &str,
    path: &str,
    creds: Option<&Creds>,
    body: Option<&Value>,
) -> RawReply {
    raw(
        method,
        &format!("{}/api/queue/v1{path}", q.root_url()),
        creds,
        body,
    )
}

/// A request to the Object service (`/api/object/v1<path>`).
fn object_raw(
    q: &QueueDouble,
    method: &str,
    path: &str,
    creds: Option<&Creds>,
    body: Option<&Value>,
) -> RawReply {
    raw(
        method,
        &format!("{}/api/object/v1{path}", q.root_url()),
        creds,
        body,
    )
}

/// Assert an error reply's status and code, from a [`RawReply`].
fn assert_raw_error(reply: &RawReply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.json()["code"], code, "{}", reply.text());
}

/// Assert an error reply's status and code, and the error shape.
fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{:#}", reply.body);
    assert_eq!(reply.body["code"], code, "{:#}", reply.body);
    assert!(reply.body["message"].is_string(), "{:#}", reply.body);
    let info = &reply.body["requestInfo"];
    assert!(
        info["method"].is_string() && info["params"].is_object() && info["time"].is_string(),
        "{info:#}"
    );
    assert!(info.get("payload").is_some(), "{info:#}");
}

fn claim_work(q: &QueueDouble, queue: &str, creds: &Creds, tasks: u64) -> Reply {
    call(
        q,
        "POST",
        &format!("/claim-work/{queue}"),
        Some(creds),
        Some(&json!({"workerGroup": "wg", "workerId": "w1", "tasks": tasks})),
    )
}

/// Claim exactly one task and return its claim.
fn claim_one(q: &QueueDouble, queue: &str) -> Value {
    let reply = claim_work(q, queue, &Creds::root(q), 1);
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    assert_schema("claim-work-response.json", &reply.body);
    let tasks = reply.body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{:#}", reply.body);
    tasks[0].clone()
}

fn run_path(task_id: &str, run: u64, action: &str) -> String {
    format!("/task/{task_id}/runs/{run}/{action}")
}

fn exception(q: &QueueDouble, task_id: &str, run: u64, creds: &Creds, reason: &str) -> Reply {
    call(
        q,
        "POST",
        &run_path(task_id, run, "exception"),
        Some(creds),
        Some(&json!({"reason": reason})),
    )
}

fn quick() -> Options {
    Options {
        claim_work_wait: Duration::from_millis(300),
        sweep_interval: Duration::from_millis(50),
        ..Options::default()
    }
}

fn unique_queue(name: &str) -> String {
    format!("proj-test/{name}")
}

fn create(q: &QueueDouble, queue: &str, extra: Value) -> String {
    let id = new_task_id();
    let mut def = task_definition(queue, json!({"image": "busybox"}));
    def.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    q.create_task(&id, def);
    id
}

// ---------------------------------------------------------------------------------------------
// Conformance.

#[test]
fn served_routes_exist_in_api_json_with_the_same_method_and_pattern() {
    let _together = together();
    let api = read_json(shared().join("references/queue/v1/api.json"));
    let entries = api["entries"].as_array().unwrap();
    for (name, method, route) in ROUTES {
        let entry = entries
            .iter()
            .find(|e| e["name"] == *name)
            .unwrap_or_else(|| panic!("the double serves {name}, which api.json lacks"));
        assert_eq!(entry["method"], *method, "{name}");
        assert_eq!(entry["route"], *route, "{name}");
    }

    let object_api = read_json(shared().join("references/object/v1/api.json"));
    let object_entries = object_api["entries"].as_array().unwrap();
    for (name, method, route) in OBJECT_ROUTES {
        let entry = object_entries
            .iter()
            .find(|e| e["name"] == *name)
            .unwrap_or_else(|| panic!("the double serves object.{name}, which the object api.json lacks"));
        assert_eq!(entry["method"], *method, "{name}");
        assert_eq!(entry["route"], *route, "{name}");
    }

    let index_api = read_json(shared().join("references/index/v1/api.json"));
    let index_entries = index_api["entries"].as_array().unwrap();
    for (name, method, route) in INDEX_ROUTES {
        let entry = index_entries
            .iter()
            .find(|e| e["name"] == *name)
            .unwrap_or_else(|| panic!("the double serves index.{name}, which the index api.json lacks"));
        assert_eq!(entry["method"], *method, "{name}");
        assert_eq!(entry["route"], *route, "{name}");
    }

    // And the server answers exactly those routes: each one reaches its handler (never the
    // unknown-endpoint reply), while an api.json route the double does not serve is unknown.
    let q = QueueDouble::start(quick());
    let sample = |route: &str| {
        route
            .replace("<taskId>", &new_task_id())
            .replace("<runId>", "0")
            .replace("<taskQueueId>", "proj-test/conformance")
            .replace("<name>", "t%2Fconformance%2Fname")
            .replace("<indexPath>", "conformance.path")
            .replace("<namespace>", "conformance.path")
    };
    let served = ROUTES
        .iter()
        .map(|r| ("/api/queue/v1", r))
        .chain(OBJECT_ROUTES.iter().map(|r| ("/api/object/v1", r)))
        .chain(INDEX_ROUTES.iter().map(|r| ("/api/index/v1", r)));
    for (prefix, (name, method, route)) in served {
        let url = format!("{}{prefix}{}", q.root_url(), sample(route));
        let reply = raw(&method.to_uppercase(), &url, None, None);
        let message = reply.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(
            reply.status != 404 || !message.contains("is not an endpoint of the queue double"),
            "{name}: {} {message}",
            reply.status,
        );
        assert!(q.calls(name) >= 1, "{name} was not counted");
    }
    let served: BTreeSet<&str> = ROUTES.iter().map(|(n, _, _)| *n).collect();
    let rerun = entries.iter().find(|e| e["name"] == "rerunTask").unwrap();
    assert!(!served.contains("rerunTask"));
    let reply = call(&q, "POST", &sample(rerun["route"].as_str().unwrap()), None, None);
    assert_eq!(reply.status, 404);
    let list_tasks = index_entries.iter().find(|e| e["name"] == "listTasks").unwrap();
    let url = format!(
        "{}/api/index/v1{}",
        q.root_url(),
        sample(list_tasks["route"].as_str().unwrap())
    );
    let reply = raw("GET", &url, None, None);
    assert_eq!(reply.status, 404);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("is not an endpoint of the queue double"),
        "{}",
        reply.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Flows.

#[test]
fn create_claim_reclaim_complete() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let root = Creds::root(&q);
    let queue = unique_queue("flow");
    let task_id = new_task_id();
    let def = task_definition(&queue, json!({"image": "busybox", "command": ["true"]}));

    let created = call(&q, "PUT", &format!("/task/{task_id}"), Some(&root), Some(&def));
    assert_eq!(created.status, 200, "{:#}", created.body);
    assert_schema("task-status-response.json", &created.body);
    assert_eq!(created.body["status"]["state"], "pending");
    assert_eq!(created.body["status"]["runs"][0]["reasonCreated"], "scheduled");
    // createTask is idempotent.
    let again = call(&q, "PUT", &format!("/task/{task_id}"), Some(&root), Some(&def));
    assert_eq!(again.status, 200, "{:#}", again.body);

    let task = call(&q, "GET", &format!("/task/{task_id}"), None, None);
    assert_eq!(task.status, 200);
    assert_schema("task.json", &task.body);

    let start = Instant::now();
    let claim = claim_one(&q, &queue);
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "claimWork with work waited"
    );
    assert_eq!(claim["status"]["taskId"], task_id.as_str());
    assert_eq!(claim["runId"], 0);
    assert_eq!(claim["status"]["runs"][0]["state"], "running");
    assert_eq!(claim["task"]["payload"]["command"][0], "true");
    let creds0 = Creds::from_reply(&claim["credentials"]);
    assert!(creds0
        .client_id
        .starts_with(&format!("task-client/{task_id}/0/on/wg/w1/until/")));
    let cert: Value = serde_json::from_str(creds0.certificate.as_ref().unwrap()).unwrap();
    assert_eq!(cert["issuer"], "static/taskcluster/queue");
    let scopes: Vec<&str> = cert["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        scopes,
        [
            format!("queue:reclaim-task:{task_id}/0"),
            format!("queue:resolve-task:{task_id}/0"),
            format!("queue:create-artifact:{task_id}/0")
        ]
    );
    assert!(claim["takenUntil"].as_str().unwrap().ends_with('Z'));

    let reclaim = call(&q, "POST", &run_path(&task_id, 0, "reclaim"), Some(&creds0), None);
    assert_eq!(reclaim.status, 200, "{:#}", reclaim.body);
    assert_schema("task-reclaim-response.json", &reclaim.body);
    assert!(reclaim.body["takenUntil"].as_str().unwrap() > claim["takenUntil"].as_str().unwrap());
    let creds1 = Creds::from_reply(&reclaim.body["credentials"]);
    assert_ne!(creds1.access_token, creds0.access_token);
    assert_ne!(creds1.certificate, creds0.certificate);
    // The old credentials stay valid until they expire.
    let with_old = call(&q, "POST", &run_path(&task_id, 0, "reclaim"), Some(&creds0), None);
    assert_eq!(with_old.status, 200, "{:#}", with_old.body);

    let done = call(
        &q,
        "POST",
        &run_path(&task_id, 0, "completed"),
        Some(&creds1),
        None,
    );
    assert_eq!(done.status, 200, "{:#}", done.body);
    assert_schema("task-status-response.json", &done.body);
    assert_eq!(done.body["status"]["state"], "completed");
    assert_eq!(done.body["status"]["runs"][0]["reasonResolved"], "completed");
    let repeat = call(
        &q,
        "POST",
        &run_path(&task_id, 0, "completed"),
        Some(&creds1),
        None,
    );
    assert_eq!(
        repeat.status, 200,
        "reportCompleted is idempotent: {:#}",
        repeat.body
    );
    assert_eq!(
        repeat.body["status"]["runs"][0]["resolved"],
        done.body["status"]["runs"][0]["resolved"]
    );
    assert_error(
        &call(&q, "POST", &run_path(&task_id, 0, "failed"), Some(&creds1), None),
        409,
        "RequestConflict",
    );
    assert_error(
        &call(&q, "POST", &run_path(&task_id, 0, "reclaim"), Some(&creds1), None),
        409,
        "RequestConflict",
    );

    let status = call(&q, "GET", &format!("/task/{task_id}/status"), None, None);
    assert_eq!(status.status, 200);
    assert_schema("task-status-response.json", &status.body);
    assert_eq!(status.body["status"], q.status(&task_id));
}

#[test]
fn defaults_are_filled_in() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("defaults");
    let id = create(&q, &queue, json!({}));
    let task = q.task(&id);
    assert_eq!(task["schedulerId"], "-");
    assert_eq!(task["projectId"], "none");
    assert_eq!(task["priority"], "lowest");
    assert_eq!(task["retries"], 5);
    assert_eq!(task["taskGroupId"], id.as_str());
    assert_eq!(task["provisionerId"], "proj-test");
    assert_eq!(task["workerType"], "defaults");
    let deadline = task["deadline"].as_str().unwrap();
    let expires = task["expires"].as_str().unwrap();
    let next_year = (deadline[..4].parse::<u32>().unwrap() + 1).to_string();
    assert_eq!(
        expires,
        format!("{next_year}{}", &deadline[4..]),
        "expires = deadline + 1 year"
    );
    assert_schema("task.json", &task);

    // claimWork's `tasks` defaults to 1.
    create(&q, &queue, json!({}));
    let reply = call(
        &q,
        "POST",
        &format!("/claim-work/{queue}"),
        Some(&Creds::root(&q)),
        Some(&json!({"workerGroup": "wg", "workerId": "w1"})),
    );
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    assert_eq!(reply.body["tasks"].as_array().unwrap().len(), 1);
}

#[test]
fn claims_go_by_priority_then_fifo_and_up_to_n() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("priority");
    let low1 = create(&q, &queue, json!({"priority": "low"}));
    let high = create(&q, &queue, json!({"priority": "high"}));
    let low2 = create(&q, &queue, json!({"priority": "low"}));
    let root = Creds::root(&q);
    let reply = claim_work(&q, &queue, &root, 2);
    assert_schema("claim-work-response.json", &reply.body);
    let ids: Vec<&str> = reply.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"]["taskId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [high.as_str(), low1.as_str()]);
    let reply = claim_work(&q, &queue, &root, 32);
    let ids: Vec<&str> = reply.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"]["taskId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [low2.as_str()]);
}

#[test]
fn claim_work_long_poll_returns_early_when_work_appears() {
    let _together = together();
    let wait = Duration::from_secs(10);
    let q = QueueDouble::start(Options {
        claim_work_wait: wait,
        ..quick()
    });
    let queue = unique_queue("longpoll");
    let start = Instant::now();
    let reply = std::thread::scope(|s| {
        let claimer = s.spawn(|| claim_work(&q, &queue, &Creds::root(&q), 1));
        q.wait_for_calls("claimWork", 1, WAIT);
        let id = create(&q, &queue, json!({}));
        let reply = claimer.join().unwrap();
        assert_eq!(
            reply.body["tasks"][0]["status"]["taskId"],
            id.as_str(),
            "{:#}",
            reply.body
        );
        reply
    });
    assert!(start.elapsed() < wait, "claimWork waited its full {wait:?}");
    assert_schema("claim-work-response.json", &reply.body);

    // With no work at all it answers an empty list once the wait is over.
    let q = QueueDouble::start(quick());
    let start = Instant::now();
    let empty = claim_work(&q, &queue, &Creds::root(&q), 1);
    assert_eq!(empty.body, json!({"tasks": []}));
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn intermittent_task_retries_as_task_retry_and_worker_shutdown_as_retry() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("retries");
    let id = create(&q, &queue, json!({}));
    let claim = claim_one(&q, &queue);
    let creds = Creds::from_reply(&claim["credentials"]);
    let reply = exception(&q, &id, 0, &creds, "intermittent-task");
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    assert_schema("task-status-response.json", &reply.body);
    let status = &reply.body["status"];
    assert_eq!(status["runs"][0]["state"], "exception");
    assert_eq!(status["runs"][0]["reasonResolved"], "intermittent-task");
    assert_eq!(status["runs"][1]["state"], "pending");
    assert_eq!(status["runs"][1]["reasonCreated"], "task-retry");
    assert_eq!(status["retriesLeft"], 4);
    // Idempotent for the same reason, a conflict for another.
    assert_eq!(exception(&q, &id, 0, &creds, "intermittent-task").status, 200);
    assert_error(
        &exception(&q, &id, 0, &creds, "internal-error"),
        409,
        "RequestConflict",
    );

    let claim = claim_one(&q, &queue);
    assert_eq!(claim["runId"], 1);
    let creds = Creds::from_reply(&claim["credentials"]);
    let reply = exception(&q, &id, 1, &creds, "worker-shutdown");
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    let status = &reply.body["status"];
    assert_eq!(status["runs"][1]["reasonResolved"], "worker-shutdown");
    assert_eq!(status["runs"][2]["reasonCreated"], "retry");
    assert_eq!(status["retriesLeft"], 3);

    // A reason that is not retried resolves the task.
    let claim = claim_one(&q, &queue);
    let creds = Creds::from_reply(&claim["credentials"]);
    let reply = exception(&q, &id, 2, &creds, "malformed-payload");
    assert_eq!(reply.body["status"]["state"], "exception");
    assert_eq!(reply.body["status"]["runs"].as_array().unwrap().len(), 3);
}

#[test]
fn retries_exhausted_means_no_new_run() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("exhausted");
    let id = create(&q, &queue, json!({"retries": 1}));
    let creds = Creds::from_reply(&claim_one(&q, &queue)["credentials"]);
    assert_eq!(
        exception(&q, &id, 0, &creds, "worker-shutdown").body["status"]["retriesLeft"],
        0
    );
    let creds = Creds::from_reply(&claim_one(&q, &queue)["credentials"]);
    let reply = exception(&q, &id, 1, &creds, "worker-shutdown");
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    assert_eq!(reply.body["status"]["runs"].as_array().unwrap().len(), 2);
    assert_eq!(reply.body["status"]["state"], "exception");
    assert_eq!(
        claim_work(&q, &queue, &Creds::root(&q), 1).body["tasks"],
        json!([])
    );
}

#[test]
fn claim_expiry_resolves_claim_expired_and_retries() {
    let _together = together();
    let q = QueueDouble::start(Options {
        claim_timeout: Duration::from_secs(1),
        ..quick()
    });
    let queue = unique_queue("expiry");
    let id = create(&q, &queue, json!({}));
    claim_one(&q, &queue);
    let status = q.wait_for(&id, |s| s["runs"][0]["state"] == "exception", WAIT);
    assert_eq!(status["runs"][0]["reasonResolved"], "claim-expired");
    assert_eq!(status["runs"][1]["state"], "pending");
    assert_eq!(status["runs"][1]["reasonCreated"], "retry");
    assert_eq!(status["retriesLeft"], 4);
    assert_schema("task-status.json", &status);
    // The retry is claimable.
    assert_eq!(claim_one(&q, &queue)["runId"], 1);
}

#[test]
fn deadline_stops_reclaims_then_resolves_deadline_exceeded_after_the_delay() {
    let _together = together();
    let delay = Duration::from_secs(2);
    let q = QueueDouble::start(Options {
        deadline_delay: delay,
        ..quick()
    });
    let queue = unique_queue("deadline");
    let now = chrono::Utc::now();
    let deadline = now + chrono::Duration::milliseconds(1500);
    let id = create(
        &q,
        &queue,
        json!({"created": now.to_rfc3339(), "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
    );
    let creds = Creds::from_reply(&claim_one(&q, &queue)["credentials"]);
    assert_eq!(
        call(&q, "POST", &run_path(&id, 0, "reclaim"), Some(&creds), None).status,
        200
    );

    // Waiting for the wall clock to pass the deadline, not for an event.
    let until_deadline = (deadline - chrono::Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(until_deadline + Duration::from_millis(20));
    let reply = call(&q, "POST", &run_path(&id, 0, "reclaim"), Some(&creds), None);
    assert_error(&reply, 409, "RequestConflict");
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("past its deadline"),
        "{:#}",
        reply.body
    );
    assert_eq!(
        q.status(&id)["state"],
        "running",
        "resolved before the deadline delay"
    );

    let status = q.wait_for(&id, |s| s["state"] == "exception", WAIT);
    assert_eq!(status["runs"][0]["reasonResolved"], "deadline-exceeded");
    assert_eq!(
        status["runs"].as_array().unwrap().len(),
        1,
        "no retry after the deadline"
    );
    let resolved =
        chrono::DateTime::parse_from_rfc3339(status["runs"][0]["resolved"].as_str().unwrap()).unwrap();
    assert!(resolved >= deadline + chrono::Duration::from_std(delay).unwrap());
}

#[test]
fn cancel_resolves_canceled_and_reclaim_conflicts() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("cancel");
    let id = create(&q, &queue, json!({}));
    let creds = Creds::from_reply(&claim_one(&q, &queue)["credentials"]);
    let reply = call(
        &q,
        "POST",
        &format!("/task/{id}/cancel"),
        Some(&Creds::root(&q)),
        None,
    );
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    assert_schema("task-status-response.json", &reply.body);
    assert_eq!(reply.body["status"]["runs"][0]["state"], "exception");
    assert_eq!(reply.body["status"]["runs"][0]["reasonResolved"], "canceled");
    assert_error(
        &call(&q, "POST", &run_path(&id, 0, "reclaim"), Some(&creds), None),
        409,
        "RequestConflict",
    );
    assert_error(
        &call(&q, "POST", &run_path(&id, 0, "completed"), Some(&creds), None),
        409,
        "RequestConflict",
    );
    // Canceling again changes nothing.
    assert_eq!(q.cancel_task(&id), reply.body["status"]);

    // An unscheduled task gets a synthetic run.
    let dep = create(&q, &unique_queue("cancel-dep"), json!({}));
    let waiting = create(&q, &queue, json!({"dependencies": [dep]}));
    assert_eq!(q.status(&waiting)["state"], "unscheduled");
    let status = q.cancel_task(&waiting);
    assert_eq!(status["runs"][0]["reasonCreated"], "exception");
    assert_eq!(status["runs"][0]["reasonResolved"], "canceled");
}

#[test]
fn run_credentials_cannot_touch_another_run() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("isolation");
    let id = create(&q, &queue, json!({}));
    let creds0 = Creds::from_reply(&claim_one(&q, &queue)["credentials"]);
    assert_eq!(exception(&q, &id, 0, &creds0, "worker-shutdown").status, 200);
    claim_one(&q, &queue);
    let reply = call(&q, "POST", &run_path(&id, 1, "reclaim"), Some(&creds0), None);
    assert_error(&reply, 403, "InsufficientScopes");
    assert_error(
        &call(&q, "POST", &run_path(&id, 1, "completed"), Some(&creds0), None),
        403,
        "InsufficientScopes",
    );
    // Nor another task.
    let other = create(&q, &queue, json!({}));
    claim_one(&q, &queue);
    assert_error(
        &call(&q, "POST", &run_path(&other, 0, "reclaim"), Some(&creds0), None),
        403,
        "InsufficientScopes",
    );
    // Its own run is resolved: 409.
    assert_error(
        &call(&q, "POST", &run_path(&id, 0, "reclaim"), Some(&creds0), None),
        409,
        "RequestConflict",
    );
    // Temporary credentials can still read status (the anonymous role).
    assert_eq!(
        call(&q, "GET", &format!("/task/{id}/status"), Some(&creds0), None).status,
        200
    );
}

#[test]
fn authentication_and_scopes() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("auth");
    let id = create(&q, &queue, json!({}));
    let (root_id, _) = q.root_credentials();

    let bad = Creds::new(&root_id, "not-the-token");
    let reply = call(&q, "GET", &format!("/task/{id}/status"), Some(&bad), None);
    assert_error(&reply, 401, "AuthenticationFailed");
    assert_eq!(reply.www_authenticate.as_deref(), Some("hawk"));
    assert_error(&claim_work(&q, &queue, &bad, 1), 401, "AuthenticationFailed");
    let unknown = Creds::new("nobody", "x");
    assert_error(&claim_work(&q, &queue, &unknown, 1), 401, "AuthenticationFailed");

    // The auth service allows 15 minutes of clock skew.
    let url = reqwest::Url::parse(&format!("{}/api/queue/v1/task/{id}/status", q.root_url())).unwrap();
    let root = Creds::root(&q);
    let at = |ts: i64| {
        let header = hawk_header_at(&root, "GET", &url, None, ts);
        let resp = client()
            .get(url.clone())
            .header("authorization", header)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    };
    let now = chrono::Utc::now().timestamp();
    assert_eq!(at(now - 10 * 60).0, 200);
    let (status, body) = at(now - 20 * 60);
    assert_eq!(status, 401, "{body:#}");
    assert!(
        body["message"].as_str().unwrap().contains("Stale timestamp"),
        "{body:#}"
    );

    // Anonymous: task and status yes, claimWork and createTask no.
    assert_eq!(call(&q, "GET", &format!("/task/{id}"), None, None).status, 200);
    let anonymous_claim = call(
        &q,
        "POST",
        &format!("/claim-work/{queue}"),
        None,
        Some(&json!({"workerGroup": "wg", "workerId": "w1", "tasks": 1})),
    );
    assert_error(&anonymous_claim, 403, "InsufficientScopes");

    // A client with the claim-work scope but not the worker-id scope.
    q.add_client("worker-without-id", "tok", [&format!("queue:claim-work:{queue}")]);
    assert_error(
        &claim_work(&q, &queue, &Creds::new("worker-without-id", "tok"), 1),
        403,
        "InsufficientScopes",
    );
    q.add_client(
        "worker",
        "tok",
        ["queue:claim-work:proj-test/*", "queue:worker-id:wg/*"],
    );
    let reply = claim_work(&q, &queue, &Creds::new("worker", "tok"), 1);
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    assert_eq!(reply.body["tasks"][0]["status"]["taskId"], id.as_str());
    // It may not create tasks.
    let def = task_definition(&queue, json!({}));
    let reply = call(
        &q,
        "PUT",
        &format!("/task/{}", new_task_id()),
        Some(&Creds::new("worker", "tok")),
        Some(&def),
    );
    assert_error(&reply, 403, "InsufficientScopes");
}

/// Temporary credentials signed here by the root client, as `createTemporaryCredentials` does.
fn temp_creds(root: &Creds, client_id: &str, scopes: &[&str], start_ms: i64, expiry_ms: i64) -> Creds {
    let seed = format!("{}{}", new_task_id(), new_task_id());
    let mut text = format!(
        "version:1\nclientId:{client_id}\nissuer:{}\nseed:{seed}\n",
        root.client_id
    );
    text.push_str(&format!(
        "start:{start_ms}\nexpiry:{expiry_ms}\nscopes:\n{}",
        scopes.join("\n")
    ));
    let cert = json!({
        "version": 1, "scopes": scopes, "start": start_ms, "expiry": expiry_ms, "seed": seed,
        "signature": hmac_b64(&root.access_token, text.as_bytes()), "issuer": root.client_id,
    });
    let mut mac = Hmac::<Sha256>::new_from_slice(root.access_token.as_bytes()).unwrap();
    mac.update(seed.as_bytes());
    Creds {
        client_id: client_id.into(),
        access_token: URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()),
        certificate: Some(cert.to_string()),
    }
}

#[test]
fn certificates_are_verified() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("certs");
    let root = Creds::root(&q);
    let now = chrono::Utc::now().timestamp_millis();
    let scopes = ["queue:claim-work:proj-test/certs", "queue:worker-id:wg/w1"];

    let fresh = temp_creds(&root, "my-temp", &scopes, now, now + 60_000);
    assert_eq!(claim_work(&q, &queue, &fresh, 1).status, 200);

    // Expired more than the 5 minutes the auth service tolerates.
    let expired = temp_creds(&root, "my-temp", &scopes, now - 3_600_000, now - 6 * 60_000);
    let reply = claim_work(&q, &queue, &expired, 1);
    assert_error(&reply, 401, "AuthenticationFailed");
    assert!(
        reply.body["message"].as_str().unwrap().contains("expiry"),
        "{:#}",
        reply.body
    );
    // Within the tolerance it still works.
    let just_expired = temp_creds(&root, "my-temp", &scopes, now - 3_600_000, now - 60_000);
    assert_eq!(claim_work(&q, &queue, &just_expired, 1).status, 200);
    // Not yet started.
    let future = temp_creds(&root, "my-temp", &scopes, now + 10 * 60_000, now + 20 * 60_000);
    assert_error(&claim_work(&q, &queue, &future, 1), 401, "AuthenticationFailed");

    // A tampered certificate (scopes widened after signing).
    let mut tampered = fresh.clone();
    let mut cert: Value = serde_json::from_str(tampered.certificate.as_ref().unwrap()).unwrap();
    cert["scopes"] = json!(["*"]);
    tampered.certificate = Some(cert.to_string());
    let reply = claim_work(&q, &queue, &tampered, 1);
    assert_error(&reply, 401, "AuthenticationFailed");
    assert!(
        reply.body["message"].as_str().unwrap().contains("signature"),
        "{:#}",
        reply.body
    );

    // The right certificate presented under another clientId.
    let mut renamed = fresh.clone();
    renamed.client_id = "someone-else".into();
    assert_error(&claim_work(&q, &queue, &renamed, 1), 401, "AuthenticationFailed");
}

#[test]
fn claim_work_accepts_a_raw_slash_and_percent_2f() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("slashes");
    let root = Creds::root(&q);
    let a = create(&q, &queue, json!({}));
    let b = create(&q, &queue, json!({}));
    let raw = claim_work(&q, "proj-test/slashes", &root, 1);
    assert_eq!(
        raw.body["tasks"][0]["status"]["taskId"],
        a.as_str(),
        "{:#}",
        raw.body
    );
    let encoded = claim_work(&q, "proj-test%2Fslashes", &root, 1);
    assert_eq!(
        encoded.body["tasks"][0]["status"]["taskId"],
        b.as_str(),
        "{:#}",
        encoded.body
    );
    assert_error(
        &claim_work(&q, "no-slash", &root, 1),
        400,
        "InvalidRequestArguments",
    );
}

#[test]
fn bad_requests_get_the_queues_errors() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let root = Creds::root(&q);
    let queue = unique_queue("errors");
    // URL parameter patterns.
    assert_error(
        &call(&q, "GET", "/task/not-a-slug/status", None, None),
        400,
        "InvalidRequestArguments",
    );
    // Unknown tasks and runs.
    let missing = new_task_id();
    assert_error(
        &call(&q, "GET", &format!("/task/{missing}"), None, None),
        404,
        "ResourceNotFound",
    );
    assert_error(
        &call(&q, "GET", &format!("/task/{missing}/status"), None, None),
        404,
        "ResourceNotFound",
    );
    assert_error(
        &call(&q, "POST", &run_path(&missing, 0, "reclaim"), Some(&root), None),
        404,
        "ResourceNotFound",
    );
    let id = create(&q, &queue, json!({}));
    assert_error(
        &call(&q, "POST", &run_path(&id, 7, "completed"), Some(&root), None),
        404,
        "ResourceNotFound",
    );
    // Input schema.
    let reply = call(
        &q,
        "POST",
        &format!("/claim-work/{queue}"),
        Some(&root),
        Some(&json!({"workerGroup": "wg", "workerId": "w1", "tasks": 0})),
    );
    assert_error(&reply, 400, "InputValidationError");
    let reply = exception(&q, &id, 0, &root, "bored");
    assert_error(&reply, 400, "InputValidationError");
    // Not JSON.
    let url = format!("{}/api/queue/v1/claim-work/{queue}", q.root_url());
    let resp = client()
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.json::<Value>().unwrap()["code"], "MalformedPayload");

    // createTask's own checks.
    let now = chrono::Utc::now();
    let at = |d: chrono::Duration| (now + d).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let with = |patch: Value| {
        let mut def = task_definition(&queue, json!({}));
        def.as_object_mut()
            .unwrap()
            .extend(patch.as_object().cloned().unwrap());
        def
    };
    for (patch, what) in [
        (
            json!({"created": at(chrono::Duration::minutes(-20))}),
            "created in the past",
        ),
        (
            json!({"created": at(chrono::Duration::minutes(20)), "deadline": at(chrono::Duration::hours(1))}),
            "created in the future",
        ),
        (
            json!({"deadline": at(chrono::Duration::seconds(-1)), "created": at(chrono::Duration::seconds(-2))}),
            "deadline in the past",
        ),
        (
            json!({"deadline": at(chrono::Duration::days(6))}),
            "deadline too far",
        ),
        (
            json!({"expires": at(chrono::Duration::minutes(30))}),
            "expires before deadline",
        ),
        (json!({"scopes": ["a:**"]}), "scope ending in **"),
    ] {
        let reply = call(
            &q,
            "PUT",
            &format!("/task/{}", new_task_id()),
            Some(&root),
            Some(&with(patch)),
        );
        assert_eq!(reply.status, 400, "{what}: {:#}", reply.body);
        assert_eq!(reply.body["code"], "InputError", "{what}");
    }
    let reply = call(
        &q,
        "PUT",
        &format!("/task/{}", new_task_id()),
        Some(&root),
        Some(&json!({"payload": {}})),
    );
    assert_error(&reply, 400, "InputValidationError");
    // The same taskId with another definition.
    let reply = call(
        &q,
        "PUT",
        &format!("/task/{id}"),
        Some(&root),
        Some(&with(json!({"priority": "high"}))),
    );
    assert_error(&reply, 409, "RequestConflict");
    // The same errors through the Rust API.
    let err = q
        .try_create_task(&id, with(json!({"priority": "high"})))
        .unwrap_err();
    assert_eq!((err.code, err.status()), ("RequestConflict", 409));
}

#[test]
fn dependencies_schedule_when_satisfied() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("deps");
    let first = create(&q, &queue, json!({}));
    let second = create(&q, &queue, json!({"dependencies": [first]}));
    assert_eq!(q.status(&second)["state"], "unscheduled");
    let creds = Creds::from_reply(&claim_one(&q, &queue)["credentials"]);
    assert_eq!(
        call(&q, "POST", &run_path(&first, 0, "completed"), Some(&creds), None).status,
        200
    );
    assert_eq!(q.status(&second)["state"], "pending");
    assert_eq!(claim_one(&q, &queue)["status"]["taskId"], second.as_str());
}

#[test]
fn fault_knobs_fail_drop_and_delay() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("faults");
    let root = Creds::root(&q);
    let id = create(&q, &queue, json!({}));

    q.fail_next("claimWork", 2);
    assert_error(&claim_work(&q, &queue, &root, 1), 500, "InternalServerError");
    assert_error(&claim_work(&q, &queue, &root, 1), 500, "InternalServerError");
    assert_eq!(q.status(&id)["state"], "pending", "a failed call does nothing");
    let reply = claim_work(&q, &queue, &root, 1);
    assert_eq!(reply.status, 200);
    assert_eq!(q.calls("claimWork"), 3);
    let creds = Creds::from_reply(&reply.body["tasks"][0]["credentials"]);

    q.drop_next("reclaimTask", 1);
    let dropped = send(&q, "POST", &run_path(&id, 0, "reclaim"), Some(&creds), None);
    assert!(dropped.is_err(), "the connection was answered: {dropped:?}");
    assert_eq!(q.calls("reclaimTask"), 1);
    assert_eq!(
        call(&q, "POST", &run_path(&id, 0, "reclaim"), Some(&creds), None).status,
        200
    );

    let delay = Duration::from_millis(400);
    q.delay_next("reportCompleted", 1, delay);
    let start = Instant::now();
    assert_eq!(
        call(&q, "POST", &run_path(&id, 0, "completed"), Some(&creds), None).status,
        200
    );
    assert!(start.elapsed() >= delay);
    assert_eq!(q.status(&id)["state"], "completed");
}

// ---------------------------------------------------------------------------------------------
// The official Python client.

#[test]
fn the_official_python_client_works_against_the_double() {
    let _together = together();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/queue_client.py");
    let probe = Command::new("python3")
        .args(["-c", "import taskcluster"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Python package `taskcluster` is missing ({}); run integration/setup.sh. This test never skips.",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("python3 could not run ({e}); run integration/setup.sh. This test never skips."),
    }
    let q = QueueDouble::start(quick());
    let (id, token) = q.root_credentials();
    let out = Command::new("python3")
        .arg(&script)
        .env("TASKCLUSTER_ROOT_URL", q.root_url())
        .env("TASKCLUSTER_CLIENT_ID", &id)
        .env("TASKCLUSTER_ACCESS_TOKEN", &token)
        .env_remove("TASKCLUSTER_CERTIFICATE")
        .env("QUEUE_DOUBLE_TASK_QUEUE_ID", "proj-test/python")
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} failed: {}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");

    let task_id = result["taskId"].as_str().unwrap();
    assert_schema("task-status-response.json", &result["created"]);
    assert_eq!(result["created"]["status"]["state"], "pending");
    assert_schema("task.json", &result["task"]);
    assert_eq!(result["status"]["status"]["taskId"], task_id);
    assert_eq!(
        result["canceled"]["status"]["runs"][0]["reasonResolved"],
        "canceled"
    );
    assert_eq!(q.status(task_id)["state"], "exception");

    let run_task = result["runTaskId"].as_str().unwrap();
    assert_schema("claim-work-response.json", &result["claimed"]);
    assert_schema("task-reclaim-response.json", &result["reclaimed"]);
    assert_eq!(result["completed"]["status"]["state"], "completed");
    assert_eq!(q.status(run_task)["runs"][0]["workerGroup"], "python");
    assert_eq!(
        result["reclaimAfterResolve"],
        json!({"statusCode": 409, "code": "RequestConflict"})
    );

    // Artifacts, with the client's own upload helper going through the Object service.
    let art_task = result["artifactTaskId"].as_str().unwrap();
    assert_eq!(result["reference"], json!({"storageType": "reference"}));
    assert_eq!(
        result["referenceGet"],
        json!({"storageType": "reference", "url": "https://example.com/python"})
    );
    for (key, name, len) in [
        ("objectPutUrl", "public/python/big.bin", 16384),
        ("objectInline", "public/python/small.bin", 16),
    ] {
        let upload = &result[key];
        assert_schema("post-artifact-response.json", &upload["created"]);
        assert_eq!(upload["get"]["storageType"], "object", "{upload:#}");
        assert_eq!(upload["matches"], true, "{upload:#}");
        assert_eq!(upload["length"], len);
        assert_eq!(q.artifact(art_task, 0, name).unwrap()["present"], true);
        assert_eq!(q.artifact_bytes(art_task, 0, name).map(|b| b.len()), Some(len));
    }
    assert_eq!(q.uploads(), 1, "the small object went inline, the big one by PUT");
    // The Queue's own createUpload for each object artifact, and the client's.
    assert_eq!(q.calls("createUpload"), 4);
    assert_eq!(q.calls("finishUpload"), 2);
    assert_schema("list-artifacts-response.json", &result["listed"]);
    assert_eq!(result["listed"]["artifacts"], json!(q.artifacts(art_task, 0)));
    assert_eq!(result["listed"]["artifacts"].as_array().unwrap().len(), 3);
    assert_eq!(q.status(art_task)["state"], "completed");
}

// ---------------------------------------------------------------------------------------------
// Artifacts and the Object service.

fn hours(h: i64) -> chrono::Duration {
    chrono::Duration::hours(h)
}

/// A time `d` from now, as the Queue writes times.
fn from_now(d: chrono::Duration) -> String {
    (chrono::Utc::now() + d).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A task created and claimed: its id and the credentials of its run 0.
fn claimed_task(q: &QueueDouble, queue: &str) -> (String, Creds) {
    let id = create(q, queue, json!({}));
    let claim = claim_one(q, queue);
    assert_eq!(claim["status"]["taskId"], id.as_str());
    (id, Creds::from_reply(&claim["credentials"]))
}

/// `/task/<taskId>/runs/<run>/artifacts/<name>`, the name as given (raw slashes stay raw).
fn artifact_url(task_id: &str, run: u64, name: &str) -> String {
    format!("/task/{task_id}/runs/{run}/artifacts/{name}")
}

/// Percent-encode all but `A-Za-z0-9_.-~`, as the Rust and Python clients encode route parameters.
fn encode(name: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'_')
        .remove(b'.')
        .remove(b'-')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(name, SET).to_string()
}

fn create_artifact(
    q: &QueueDouble,
    task_id: &str,
    run: u64,
    name: &str,
    creds: &Creds,
    body: Value,
) -> Reply {
    call(
        q,
        "POST",
        &artifact_url(task_id, run, name),
        Some(creds),
        Some(&body),
    )
}

fn reference(url: &str) -> Value {
    json!({"storageType": "reference", "url": url, "contentType": "text/plain", "expires": from_now(hours(1))})
}

/// PUT `data` to a presigned URL with these headers.
fn put_blob(url: &str, data: Vec<u8>, headers: &[(&str, &str)]) -> reqwest::Result<RawReply> {
    let mut req = raw_client().put(url).body(data);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send()?;
    Ok(RawReply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        bytes: resp.bytes()?.to_vec(),
    })
}

/// Follow a 303 by hand: the reply's `Location`, fetched without credentials.
fn follow(reply: &RawReply) -> RawReply {
    assert_eq!(reply.status, 303, "{}", reply.text());
    let location = reply.header("location").expect("a 303 has a Location");
    assert_eq!(reply.json()["url"], location, "the body's url is the Location");
    assert_schema("get-artifact-response.json", &reply.json());
    raw("GET", location, None, None)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Send a PUT whose body stops short of its Content-Length, half-close, and read what comes back.
fn short_put(url: &str, content_type: &str) -> String {
    let url = reqwest::Url::parse(url).unwrap();
    let (host, port) = (url.host_str().unwrap(), url.port().unwrap());
    let mut stream = std::net::TcpStream::connect((host, port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        stream,
        "PUT {} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\nContent-Length: 100\r\n\r\n",
        url.path()
    )
    .unwrap();
    stream.write_all(&[b'x'; 10]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

#[test]
fn s3_artifacts_upload_to_their_put_url_and_redirect_to_the_data() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("s3");
    let (id, creds) = claimed_task(&q, &queue);
    let name = "public/logs/live_backing.log";
    let content_type = "text/plain; charset=utf-8";
    let data = b"\x1f\x8b\x08 not really gzip, but sent as such".to_vec();

    let created = create_artifact(
        &q,
        &id,
        0,
        name,
        &creds,
        json!({"storageType": "s3", "contentType": content_type, "expires": from_now(hours(1))}),
    );
    assert_eq!(created.status, 200, "{:#}", created.body);
    assert_schema("post-artifact-response.json", &created.body);
    assert_eq!(created.body["storageType"], "s3");
    assert_eq!(created.body["contentType"], content_type);
    let put_url = created.body["putUrl"].as_str().unwrap().to_string();
    assert!(put_url.starts_with(&q.root_url()), "{put_url}");
    // An s3 artifact is present at once; it has no data yet.
    assert_eq!(q.artifact(&id, 0, name).unwrap()["stored"], false);

    // The URL is signed for the artifact's content type.
    let wrong = put_blob(&put_url, data.clone(), &[("content-type", "text/html")]).unwrap();
    assert_eq!(wrong.status, 403, "{}", wrong.text());
    assert!(
        wrong.text().contains("<Code>SignatureDoesNotMatch</Code>"),
        "{}",
        wrong.text()
    );
    // S3 wants a Content-Length (a chunked body has none) and all of the bytes it announces.
    let chunked = raw_client()
        .put(&put_url)
        .header("content-type", content_type)
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(data.clone())))
        .send()
        .unwrap();
    assert_eq!(chunked.status().as_u16(), 411);
    let short = short_put(&put_url, content_type);
    assert!(short.starts_with("HTTP/1.1 400"), "{short}");
    assert!(short.contains("<Code>IncompleteBody</Code>"), "{short}");
    assert_eq!(q.artifact(&id, 0, name).unwrap()["stored"], false);

    let put = put_blob(
        &put_url,
        data.clone(),
        &[("content-type", content_type), ("content-encoding", "gzip")],
    )
    .unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(q.uploads(), 4);

    // getArtifact needs no credentials for public/ names (the anonymous role).
    let got = queue_raw(&q, "GET", &artifact_url(&id, 0, name), None, None);
    assert_eq!(got.header("x-taskcluster-artifact-storage-type"), Some("s3"));
    let download = follow(&got);
    assert_eq!(download.status, 200, "{}", download.text());
    assert_eq!(download.bytes, data);
    assert_eq!(download.header("content-type"), Some(content_type));
    assert_eq!(download.header("content-encoding"), Some("gzip"));
    assert_eq!(
        download.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    let latest = queue_raw(&q, "GET", &format!("/task/{id}/artifacts/{name}"), None, None);
    assert_eq!(follow(&latest).bytes, data);

    let listed = call(&q, "GET", &format!("/task/{id}/runs/0/artifacts"), None, None);
    assert_eq!(listed.status, 200, "{:#}", listed.body);
    assert_schema("list-artifacts-response.json", &listed.body);
    assert_eq!(listed.body["artifacts"], json!(q.artifacts(&id, 0)));
    assert_eq!(listed.body["artifacts"][0]["name"], name);
    assert_eq!(listed.body["artifacts"][0]["storageType"], "s3");

    let details = q.artifact(&id, 0, name).unwrap();
    assert_eq!(details["storageType"], "s3");
    assert_eq!(details["contentType"], content_type);
    assert_eq!(details["contentEncoding"], "gzip");
    assert_eq!(details["present"], true);
    assert_eq!(details["size"], data.len());
    assert_eq!(q.artifact_bytes(&id, 0, name), Some(data.clone()));

    // A private artifact needs queue:get-artifact:<name>.
    let private = "private/secret.txt";
    let created = create_artifact(
        &q,
        &id,
        0,
        private,
        &creds,
        json!({"storageType": "s3", "contentType": "text/plain", "expires": from_now(hours(1))}),
    );
    let put_url = created.body["putUrl"].as_str().unwrap();
    assert_eq!(
        put_blob(put_url, b"secret".to_vec(), &[("content-type", "text/plain")])
            .unwrap()
            .status,
        200
    );
    assert_raw_error(
        &queue_raw(&q, "GET", &artifact_url(&id, 0, private), None, None),
        403,
        "InsufficientScopes",
    );
    q.add_client("reader", "tok", ["queue:get-artifact:private/*"]);
    let got = queue_raw(
        &q,
        "GET",
        &artifact_url(&id, 0, private),
        Some(&Creds::new("reader", "tok")),
        None,
    );
    assert_eq!(follow(&got).bytes, b"secret");
    // A download URL is not an upload URL.
    let location = got.header("location").unwrap();
    assert_eq!(
        put_blob(location, b"x".to_vec(), &[("content-type", "text/plain")])
            .unwrap()
            .status,
        403
    );
    assert_eq!(q.calls("createArtifact"), 2);
    assert_eq!(q.calls("getArtifact"), 3);
    assert_eq!(q.calls("getLatestArtifact"), 1);
}

#[test]
fn object_artifacts_go_through_the_object_service() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("object");
    let root = Creds::root(&q);
    let (id, creds) = claimed_task(&q, &queue);
    let name = "public/build/target.tar";
    let object_name = format!("t/{id}/0/{name}");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (sha256, sha512) = (hex(&Sha256::digest(&data)), hex(&Sha512::digest(&data)));
    let expires = from_now(hours(2));

    let created = create_artifact(
        &q,
        &id,
        0,
        name,
        &creds,
        json!({"storageType": "object", "contentType": "application/x-tar", "expires": expires,
               "contentLength": data.len()}),
    );
    assert_eq!(created.status, 200, "{:#}", created.body);
    assert_schema("post-artifact-response.json", &created.body);
    assert_eq!(created.body["name"], object_name.as_str());
    assert_eq!(created.body["projectId"], "none");
    assert_eq!(created.body["expires"], expires.as_str());
    assert_eq!(q.calls("createUpload"), 1, "the Queue locks the upload in itself");
    let upload_id = created.body["uploadId"].as_str().unwrap().to_string();
    let upload_creds = Creds::from_reply(&created.body["credentials"]);
    assert_eq!(upload_creds.client_id, format!("artifact-upload/{id}/0/on/wg/w1"));
    let cert: Value = serde_json::from_str(upload_creds.certificate.as_ref().unwrap()).unwrap();
    assert_eq!(
        cert["scopes"],
        json!([format!("object:upload:none:{object_name}")])
    );

    // Invisible until finished.
    assert_eq!(q.artifacts(&id, 0), Vec::<Value>::new());
    assert_eq!(q.artifact(&id, 0, name).unwrap()["present"], false);
    assert_raw_error(
        &queue_raw(&q, "GET", &artifact_url(&id, 0, name), None, None),
        404,
        "ResourceNotFound",
    );

    let upload_path = format!("/upload/{}", encode(&object_name));
    let finish_path = format!("/finish-upload/{}", encode(&object_name));
    let request = json!({"projectId": "none", "uploadId": upload_id, "expires": expires,
        "proposedUploadMethods": {"putUrl": {"contentType": "application/x-tar", "contentLength": data.len()}}});
    // /upload/:name is one path segment: a raw slash does not reach it.
    let slashed = object_raw(
        &q,
        "PUT",
        &format!("/upload/{object_name}"),
        Some(&upload_creds),
        Some(&request),
    );
    assert_eq!(slashed.status, 404);
    // The credentials are for this object only.
    let elsewhere = object_raw(
        &q,
        "PUT",
        "/upload/t%2Felsewhere",
        Some(&upload_creds),
        Some(&request),
    );
    assert_raw_error(&elsewhere, 403, "InsufficientScopes");
    // Another uploadId for the same name: the object is taken.
    let mut other = request.clone();
    other["uploadId"] = json!(new_task_id());
    assert_raw_error(
        &object_raw(&q, "PUT", &upload_path, Some(&upload_creds), Some(&other)),
        409,
        "RequestConflict",
    );

    let upload = object_raw(&q, "PUT", &upload_path, Some(&upload_creds), Some(&request));
    assert_eq!(upload.status, 200, "{}", upload.text());
    assert_schema_of("object", "create-upload-response.json", &upload.json());
    let method = upload.json()["uploadMethod"]["putUrl"].clone();
    assert_eq!(
        method["headers"],
        json!({"Content-Type": "application/x-tar", "Content-Length": data.len().to_string(),
               "Content-Encoding": "identity"})
    );

    // finishArtifact before the object is finished.
    let finish_artifact = |upload_id: &str| {
        queue_raw(
            &q,
            "PUT",
            &artifact_url(&id, 0, name),
            Some(&creds),
            Some(&json!({"uploadId": upload_id})),
        )
    };
    let early = finish_artifact(&upload_id);
    assert_raw_error(&early, 400, "InputError");
    assert!(
        early
            .text()
            .contains("Object storing artifact data does not exist"),
        "{}",
        early.text()
    );
    // Nor can the object be finished before its data is there.
    let finish = |hashes: Value| {
        object_raw(
            &q,
            "POST",
            &finish_path,
            Some(&upload_creds),
            Some(&json!({"projectId": "none", "uploadId": upload_id, "hashes": hashes})),
        )
    };
    let no_data = finish(json!({"sha256": sha256, "sha512": sha512}));
    assert_raw_error(&no_data, 400, "InputError");
    assert!(no_data.text().contains("no data"), "{}", no_data.text());

    // The PUT, with the headers the Object service asked for.
    let headers: Vec<(String, String)> = method["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "Content-Length") // reqwest sets it from the body
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let put = put_blob(method["url"].as_str().unwrap(), data.clone(), &headers).unwrap();
    assert_eq!(put.status, 200, "{}", put.text());

    // A wrong hash is refused, and says which.
    let wrong = finish(json!({"sha256": "0".repeat(64), "sha512": sha512}));
    assert_raw_error(&wrong, 400, "InputError");
    assert!(
        wrong.text().contains("sha256") && wrong.text().contains(&sha256),
        "{}",
        wrong.text()
    );
    let done = finish(json!({"sha256": sha256, "sha512": sha512}));
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json(), json!({}));
    // Idempotent, but the hashes may not change.
    assert_eq!(finish(json!({"sha256": sha256})).status, 200);
    assert_raw_error(&finish(json!({"sha256": "1".repeat(64)})), 409, "RequestConflict");

    assert_raw_error(&finish_artifact(&new_task_id()), 400, "InputError");
    let finished = finish_artifact(&upload_id);
    assert_eq!(finished.status, 204, "{}", finished.text());
    assert!(finished.bytes.is_empty());
    assert_eq!(finish_artifact(&upload_id).status, 204, "idempotent");
    assert_eq!(q.calls("object"), 2, "finishArtifact asks the Object service");

    let listed = call(&q, "GET", &format!("/task/{id}/runs/0/artifacts"), None, None);
    assert_schema("list-artifacts-response.json", &listed.body);
    assert_eq!(
        listed.body["artifacts"],
        json!([{"storageType": "object", "name": name, "expires": expires,
                "contentType": "application/x-tar", "contentLength": data.len()}])
    );
    let got = queue_raw(&q, "GET", &artifact_url(&id, 0, &encode(name)), None, None);
    assert_eq!(got.header("x-taskcluster-artifact-storage-type"), Some("object"));
    let download = follow(&got);
    assert_eq!(download.bytes, data);
    assert_eq!(download.header("content-type"), Some("application/x-tar"));
    assert_eq!(q.calls("startDownload"), 1);

    // The Object service's own read endpoints want object:download:<name>, which the anonymous role
    // lacks.
    let metadata_path = format!("/metadata/{}", encode(&object_name));
    assert_raw_error(
        &object_raw(&q, "GET", &metadata_path, None, None),
        403,
        "InsufficientScopes",
    );
    let metadata = object_raw(&q, "GET", &metadata_path, Some(&root), None);
    assert_eq!(metadata.status, 200, "{}", metadata.text());
    assert_schema_of("object", "get-object-response.json", &metadata.json());
    assert_eq!(
        metadata.json()["hashes"],
        json!({"sha256": sha256, "sha512": sha512})
    );
    let simple = object_raw(&q, "GET", &format!("/download/{object_name}"), Some(&root), None);
    assert_eq!(simple.status, 303);
    assert_eq!(
        raw("GET", simple.header("location").unwrap(), None, None).bytes,
        data
    );

    let details = q.artifact(&id, 0, name).unwrap();
    assert_eq!(details["present"], true);
    assert_eq!(details["objectName"], object_name.as_str());
    assert_eq!(details["contentEncoding"], "identity");
    assert_eq!(q.artifact_bytes(&id, 0, name), Some(data));

    // Repeating createArtifact for an object artifact makes the Queue lock in another uploadId, which
    // the Object service refuses: a 500, as from the real Queue.
    let again = create_artifact(
        &q,
        &id,
        0,
        name,
        &creds,
        json!({"storageType": "object", "contentType": "application/x-tar", "expires": expires}),
    );
    assert_error(&again, 500, "InternalServerError");
    // finishArtifact of anything but an object artifact is the real Queue's 500 too (a typo there).
    assert_eq!(
        create_artifact(
            &q,
            &id,
            0,
            "public/ref",
            &creds,
            reference("https://example.com/")
        )
        .status,
        200
    );
    let not_object = queue_raw(
        &q,
        "PUT",
        &artifact_url(&id, 0, "public/ref"),
        Some(&creds),
        Some(&json!({"uploadId": upload_id})),
    );
    assert_raw_error(&not_object, 500, "InternalServerError");
}

#[test]
fn object_uploads_prefer_data_inline() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("inline");
    let root = Creds::root(&q);
    let (id, creds) = claimed_task(&q, &queue);
    let name = "private/small.json";
    let data = br#"{"small": true}"#.to_vec();
    let created = create_artifact(
        &q,
        &id,
        0,
        name,
        &creds,
        json!({"storageType": "object", "contentType": "application/json", "expires": from_now(hours(1))}),
    );
    let upload_creds = Creds::from_reply(&created.body["credentials"]);
    let (object_name, upload_id) = (
        created.body["name"].as_str().unwrap(),
        created.body["uploadId"].as_str().unwrap(),
    );
    let upload = object_raw(
        &q,
        "PUT",
        &format!("/upload/{}", encode(object_name)),
        Some(&upload_creds),
        Some(
            &json!({"projectId": "none", "uploadId": upload_id, "expires": created.body["expires"],
            "proposedUploadMethods": {
                "dataInline": {"contentType": "application/json", "objectData": STANDARD.encode(&data)},
                "putUrl": {"contentType": "application/json", "contentLength": data.len()}}}),
        ),
    );
    assert_eq!(upload.status, 200, "{}", upload.text());
    assert_eq!(upload.json()["uploadMethod"], json!({"dataInline": true}));
    assert_eq!(q.uploads(), 0, "no PUT");
    let finish = object_raw(
        &q,
        "POST",
        &format!("/finish-upload/{}", encode(object_name)),
        Some(&upload_creds),
        Some(&json!({"projectId": "none", "uploadId": upload_id,
            "hashes": {"sha256": hex(&Sha256::digest(&data)), "sha512": hex(&Sha512::digest(&data))}})),
    );
    assert_eq!(finish.status, 200, "{}", finish.text());
    let finished = queue_raw(
        &q,
        "PUT",
        &artifact_url(&id, 0, name),
        Some(&creds),
        Some(&json!({"uploadId": upload_id})),
    );
    assert_eq!(finished.status, 204, "{}", finished.text());
    assert_raw_error(
        &queue_raw(&q, "GET", &artifact_url(&id, 0, name), None, None),
        403,
        "InsufficientScopes",
    );
    let download = follow(&queue_raw(
        &q,
        "GET",
        &artifact_url(&id, 0, name),
        Some(&root),
        None,
    ));
    assert_eq!(download.bytes, data);
    assert_eq!(download.header("content-type"), Some("application/json"));
}

#[test]
fn reference_link_and_error_artifacts() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("reference");
    let (id, creds) = claimed_task(&q, &queue);
    let expires = from_now(hours(1));
    let create = |name: &str, body: Value| create_artifact(&q, &id, 0, name, &creds, body);
    let get = |name: &str| queue_raw(&q, "GET", &artifact_url(&id, 0, name), None, None);

    let live = json!({"storageType": "reference", "url": "https://example.com/live/abc", "contentType": "text/plain",
        "expires": expires});
    let reply = create("public/logs/live.log", live.clone());
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    assert_schema("post-artifact-response.json", &reply.body);
    assert_eq!(reply.body, json!({"storageType": "reference"}));
    let got = get("public/logs/live.log");
    assert_eq!(got.status, 303);
    assert_eq!(got.header("location"), Some("https://example.com/live/abc"));
    assert_eq!(
        got.header("x-taskcluster-artifact-storage-type"),
        Some("reference")
    );
    assert_schema("get-artifact-response.json", &got.json());

    // Immutability: the same call again is fine, and so is a new url for a reference; another content
    // type or an earlier expiry is not.
    assert_eq!(create("public/logs/live.log", live.clone()).status, 200);
    let mut moved = live.clone();
    moved["url"] = json!("https://example.com/live/def");
    assert_eq!(create("public/logs/live.log", moved).status, 200);
    assert_eq!(
        get("public/logs/live.log").header("location"),
        Some("https://example.com/live/def")
    );
    let mut html = live.clone();
    html["contentType"] = json!("text/html");
    assert_error(&create("public/logs/live.log", html), 409, "RequestConflict");
    let mut sooner = live.clone();
    sooner["expires"] = json!(from_now(chrono::Duration::minutes(30)));
    assert_error(&create("public/logs/live.log", sooner), 409, "RequestConflict");
    let mut later = live.clone();
    later["url"] = json!("https://example.com/live/def");
    later["expires"] = json!(from_now(hours(2)));
    assert_eq!(create("public/logs/live.log", later).status, 200);

    // Error artifacts answer 424.
    let missing = json!({"storageType": "error", "reason": "file-missing-on-worker", "message": "no such file",
        "expires": expires});
    assert_eq!(
        create("public/missing.txt", missing.clone()).body,
        json!({"storageType": "error"})
    );
    let failed = get("public/missing.txt");
    assert_eq!(failed.status, 424);
    assert_eq!(
        failed.json(),
        json!({"reason": "file-missing-on-worker", "message": "no such file"})
    );
    assert_eq!(
        failed.header("x-taskcluster-artifact-storage-type"),
        Some("error")
    );
    let mut changed = missing.clone();
    changed["message"] = json!("another message");
    assert_error(&create("public/missing.txt", changed), 409, "RequestConflict");

    // Links are followed.
    let link = |target: &str| json!({"storageType": "link", "artifact": target, "expires": expires});
    assert_eq!(
        create("public/latest.log", link("public/logs/live.log")).body,
        json!({"storageType": "link"})
    );
    let via_link = get("public/latest.log");
    assert_eq!(via_link.status, 303);
    assert_eq!(via_link.header("location"), Some("https://example.com/live/def"));
    assert_eq!(
        via_link.header("x-taskcluster-artifact-storage-type"),
        Some("reference")
    );
    assert_eq!(
        create("public/missing-link", link("public/missing.txt")).status,
        200
    );
    assert_eq!(get("public/missing-link").status, 424);
    create("public/a", link("public/b"));
    create("public/b", link("public/a"));
    assert_raw_error(&get("public/a"), 400, "InputError");
    // Every name in the chain needs its scope.
    create("public/to-private", link("private/target"));
    create("private/target", reference("https://example.com/private"));
    assert_raw_error(&get("public/to-private"), 403, "InsufficientScopes");
    let root_get = queue_raw(
        &q,
        "GET",
        &artifact_url(&id, 0, "public/to-private"),
        Some(&Creds::root(&q)),
        None,
    );
    assert_eq!(root_get.header("location"), Some("https://example.com/private"));
    assert_raw_error(&get("public/no-such-artifact"), 404, "ResourceNotFound");

    // A link may replace a reference (as the live log becomes a link to its backing log), not the
    // other way round.
    let backing = create(
        "public/logs/live_backing.log",
        json!({"storageType": "s3", "contentType": "text/plain", "expires": expires}),
    );
    let put = put_blob(
        backing.body["putUrl"].as_str().unwrap(),
        b"the whole log".to_vec(),
        &[("content-type", "text/plain")],
    )
    .unwrap();
    assert_eq!(put.status, 200);
    let mut to_backing = link("public/logs/live_backing.log");
    to_backing["expires"] = json!(from_now(hours(2)));
    assert_eq!(create("public/logs/live.log", to_backing).status, 200);
    assert_eq!(follow(&get("public/logs/live.log")).bytes, b"the whole log");
    assert_error(
        &create("public/latest.log", reference("https://example.com/")),
        409,
        "RequestConflict",
    );

    let live = q.artifact(&id, 0, "public/logs/live.log").unwrap();
    assert_eq!(live["storageType"], "link");
    assert_eq!(live["artifact"], "public/logs/live_backing.log");
    assert_eq!(
        live["contentType"], "text/plain",
        "a link keeps the content type it replaced"
    );
    assert_eq!(
        q.artifact_bytes(&id, 0, "public/logs/live.log"),
        Some(b"the whole log".to_vec())
    );
    let missing = q.artifact(&id, 0, "public/missing.txt").unwrap();
    assert_eq!(
        (missing["reason"].as_str(), missing["message"].as_str()),
        (Some("file-missing-on-worker"), Some("no such file"))
    );
    assert_eq!(
        q.artifact(&id, 0, "private/target").unwrap()["url"],
        "https://example.com/private"
    );
    assert_eq!(q.artifact(&id, 0, "public/nothing"), None);
    let names: Vec<String> = q
        .artifacts(&id, 0)
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 9);
}

#[test]
fn artifacts_of_resolved_runs_and_bad_requests() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("resolved");
    let root = Creds::root(&q);
    let (id, creds) = claimed_task(&q, &queue);

    // Not after the task expires; not more than 15 minutes in the past.
    let mut late = reference("https://example.com/");
    late["expires"] = json!(from_now(chrono::Duration::days(800)));
    let reply = create_artifact(&q, &id, 0, "public/late", &creds, late);
    assert_error(&reply, 400, "InputError");
    assert!(reply.body["message"]
        .as_str()
        .unwrap()
        .contains("after the task expiration"));
    let mut past = reference("https://example.com/");
    past["expires"] = json!(from_now(chrono::Duration::minutes(-20)));
    assert_error(
        &create_artifact(&q, &id, 0, "public/past", &creds, past),
        400,
        "InputError",
    );
    let mut recent = reference("https://example.com/");
    recent["expires"] = json!(from_now(chrono::Duration::minutes(-10)));
    assert_eq!(
        create_artifact(&q, &id, 0, "public/recent", &creds, recent).status,
        200
    );
    // An unknown task or run is a 400, not a 404; so is a run no worker claimed.
    assert_error(
        &create_artifact(
            &q,
            &new_task_id(),
            0,
            "public/x",
            &root,
            reference("https://example.com/"),
        ),
        400,
        "InputError",
    );
    assert_error(
        &create_artifact(&q, &id, 3, "public/x", &root, reference("https://example.com/")),
        400,
        "InputError",
    );
    let pending = create(&q, &unique_queue("resolved-pending"), json!({}));
    let reply = create_artifact(
        &q,
        &pending,
        0,
        "public/x",
        &root,
        reference("https://example.com/"),
    );
    assert_error(&reply, 400, "InputError");
    assert!(reply.body["message"].as_str().unwrap().contains("not claimed"));
    // Input schema: an unknown storage type, a bad error reason.
    assert_error(
        &create_artifact(
            &q,
            &id,
            0,
            "public/x",
            &creds,
            json!({"storageType": "azure", "expires": from_now(hours(1))}),
        ),
        400,
        "InputValidationError",
    );
    // The run's credentials are for this run only.
    let (other, _) = claimed_task(&q, &queue);
    assert_error(
        &create_artifact(
            &q,
            &other,
            0,
            "public/x",
            &creds,
            reference("https://example.com/"),
        ),
        403,
        "InsufficientScopes",
    );

    // A completed run takes no more artifacts.
    let done = call(&q, "POST", &run_path(&id, 0, "completed"), Some(&creds), None);
    assert_eq!(done.status, 200);
    let reply = create_artifact(
        &q,
        &id,
        0,
        "public/after",
        &creds,
        reference("https://example.com/"),
    );
    assert_error(&reply, 409, "RequestConflict");
    assert!(
        reply.body["message"].as_str().unwrap().contains("25 min"),
        "{:#}",
        reply.body
    );

    // A run resolved exception does, for 25 minutes, even when it was retried.
    let (third, creds3) = claimed_task(&q, &queue);
    assert_eq!(exception(&q, &third, 0, &creds3, "worker-shutdown").status, 200);
    assert_eq!(q.status(&third)["runs"][1]["state"], "pending");
    let reply = create_artifact(
        &q,
        &third,
        0,
        "public/logs/live_backing.log",
        &creds3,
        reference("https://example.com/"),
    );
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    assert_eq!(q.artifacts(&third, 0).len(), 1);
    assert_eq!(q.artifacts(&third, 1).len(), 0);
}

#[test]
fn artifact_names_take_raw_slashes_and_percent_2f() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("names");
    let (id, creds) = claimed_task(&q, &queue);
    let encoded = encode("public/logs/a b.txt");
    assert_eq!(encoded, "public%2Flogs%2Fa%20b.txt");
    let reply = create_artifact(&q, &id, 0, &encoded, &creds, reference("https://example.com/ab"));
    assert_eq!(reply.status, 200, "{:#}", reply.body);
    assert_eq!(q.artifacts(&id, 0)[0]["name"], "public/logs/a b.txt");
    let raw_get = queue_raw(
        &q,
        "GET",
        &artifact_url(&id, 0, "public/logs/a%20b.txt"),
        None,
        None,
    );
    assert_eq!(raw_get.header("location"), Some("https://example.com/ab"));
    assert_eq!(
        create_artifact(
            &q,
            &id,
            0,
            "public/raw/x.txt",
            &creds,
            reference("https://example.com/x")
        )
        .status,
        200
    );
    let encoded_get = queue_raw(
        &q,
        "GET",
        &format!("/task/{id}/artifacts/{}", encode("public/raw/x.txt")),
        None,
        None,
    );
    assert_eq!(encoded_get.header("location"), Some("https://example.com/x"));
    // Names are printable ASCII.
    assert_error(
        &create_artifact(
            &q,
            &id,
            0,
            "public/bad%0Aname",
            &creds,
            reference("https://example.com/"),
        ),
        400,
        "InvalidRequestArguments",
    );
}

#[test]
fn list_artifacts_pages_with_continuation_tokens() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("pages");
    let (id, creds) = claimed_task(&q, &queue);
    for i in [3, 0, 4, 1, 2] {
        let reply = create_artifact(
            &q,
            &id,
            0,
            &format!("public/p{i}"),
            &creds,
            reference("https://example.com/"),
        );
        assert_eq!(reply.status, 200);
    }
    let mut names = vec![];
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &token {
            Some(t) => format!("?limit=2&continuationToken={}", encode(t)),
            None => "?limit=2".to_string(),
        };
        let page = call(
            &q,
            "GET",
            &format!("/task/{id}/runs/0/artifacts{query}"),
            Some(&creds),
            None,
        );
        assert_eq!(page.status, 200, "{:#}", page.body);
        assert_schema("list-artifacts-response.json", &page.body);
        pages += 1;
        for a in page.body["artifacts"].as_array().unwrap() {
            names.push(a["name"].as_str().unwrap().to_string());
        }
        match page.body["continuationToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        names,
        ["public/p0", "public/p1", "public/p2", "public/p3", "public/p4"]
    );
    assert_error(
        &call(
            &q,
            "GET",
            &format!("/task/{id}/runs/0/artifacts?limit=two"),
            None,
            None,
        ),
        400,
        "InvalidRequestArguments",
    );
    assert_error(
        &call(
            &q,
            "GET",
            &format!("/task/{id}/runs/0/artifacts?colour=red"),
            None,
            None,
        ),
        400,
        "InvalidRequestArguments",
    );
    assert_error(
        &call(&q, "GET", &format!("/task/{id}/runs/1/artifacts"), None, None),
        404,
        "ResourceNotFound",
    );
    assert_error(
        &call(
            &q,
            "GET",
            &format!("/task/{}/runs/0/artifacts", new_task_id()),
            None,
            None,
        ),
        404,
        "ResourceNotFound",
    );
    assert_eq!(q.calls("listArtifacts"), 7);
}

#[test]
fn upload_fault_knobs_fail_truncate_and_slow() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let queue = unique_queue("upload-faults");
    let (id, creds) = claimed_task(&q, &queue);
    let s3 = |name: &str| {
        let reply = create_artifact(
            &q,
            &id,
            0,
            name,
            &creds,
            json!({"storageType": "s3", "contentType": "application/octet-stream", "expires": from_now(hours(1))}),
        );
        reply.body["putUrl"].as_str().unwrap().to_string()
    };
    let headers = [("content-type", "application/octet-stream")];
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();

    // Two 500s, then a success.
    let url = s3("public/fail");
    q.fail_next_uploads(2);
    for _ in 0..2 {
        let failed = put_blob(&url, data.clone(), &headers).unwrap();
        assert_eq!(failed.status, 500);
        assert!(
            failed.text().contains("<Code>InternalError</Code>"),
            "{}",
            failed.text()
        );
        assert_eq!(q.artifact(&id, 0, "public/fail").unwrap()["stored"], false);
    }
    assert_eq!(put_blob(&url, data.clone(), &headers).unwrap().status, 200);
    assert_eq!(q.uploads(), 3);
    assert_eq!(q.artifact_bytes(&id, 0, "public/fail"), Some(data.clone()));

    // A truncated upload is a failed request, and stores nothing.
    let url = s3("public/truncate");
    q.truncate_next_uploads(1);
    let truncated = put_blob(&url, data.clone(), &headers);
    assert!(
        truncated.is_err(),
        "a truncated upload looked like a reply: {truncated:?}"
    );
    assert_eq!(q.artifact(&id, 0, "public/truncate").unwrap()["stored"], false);
    assert_eq!(put_blob(&url, data.clone(), &headers).unwrap().status, 200);
    // Over an earlier upload, the earlier data stays.
    q.truncate_next_uploads(1);
    assert!(put_blob(&url, vec![7; 300_000], &headers).is_err());
    assert_eq!(q.artifact_bytes(&id, 0, "public/truncate"), Some(data.clone()));
    assert_eq!(q.uploads(), 6);

    // A throttled upload is slow, and complete.
    let url = s3("public/slow");
    q.slow_uploads(Some(256 * 1024));
    let start = Instant::now();
    let slow = put_blob(&url, data[..512 * 1024].to_vec(), &headers).unwrap();
    let took = start.elapsed();
    q.slow_uploads(None);
    assert_eq!(slow.status, 200);
    assert!(
        took >= Duration::from_millis(1800),
        "512 KiB at 256 KiB/s took {took:?}"
    );
    assert_eq!(
        q.artifact_bytes(&id, 0, "public/slow"),
        Some(data[..512 * 1024].to_vec())
    );
}

/// The resident set size of this process, which hosts the double.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A body generated on the fly: a fixed pseudo-random block repeated, its length prime so chunk
/// boundaries never line up with it.
struct Pattern {
    block: std::sync::Arc<Vec<u8>>,
    pos: u64,
    len: u64,
}

impl Pattern {
    fn block() -> std::sync::Arc<Vec<u8>> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let block = (0..1_048_573)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::sync::Arc::new(block)
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = (self.len - self.pos) as usize;
        let at = (self.pos % self.block.len() as u64) as usize;
        let n = buf.len().min(left).min(self.block.len() - at);
        buf[..n].copy_from_slice(&self.block[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// PUT `len` bytes from `body` over a plain HTTP/1.1 connection in 1 MiB writes (a light client, so the
/// time measured is the double's); the reply's status line and headers.
fn stream_put(url: &str, content_type: &str, mut body: impl Read, len: u64) -> String {
    let url = reqwest::Url::parse(url).unwrap();
    let (host, port) = (url.host_str().unwrap(), url.port().unwrap());
    let mut stream = std::net::TcpStream::connect((host, port)).unwrap();
    write!(
        stream,
        "PUT {} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n",
        url.path()
    )
    .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(buf.len() as u64) as usize;
        body.read_exact(&mut buf[..n]).unwrap();
        stream.write_all(&buf[..n]).unwrap();
        sent += n as u64;
    }
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn a_1_5_gib_upload_streams_to_disk_with_flat_memory() {
    // Alone, so that no other test's double adds to the RSS measured here.
    let _alone = alone();
    const SIZE: u64 = 1536 * 1024 * 1024;
    const MIB: u64 = 1024 * 1024;
    let q = QueueDouble::start(quick());
    let queue = unique_queue("big");
    let (id, creds) = claimed_task(&q, &queue);
    let name = "public/big.bin";
    let created = create_artifact(
        &q,
        &id,
        0,
        name,
        &creds,
        json!({"storageType": "s3", "contentType": "application/octet-stream", "expires": from_now(hours(1)),
               "contentLength": SIZE}),
    );
    let put_url = created.body["putUrl"].as_str().unwrap().to_string();
    let block = Pattern::block();
    // One small upload first, so the double's workers have done their first allocations.
    assert_eq!(
        put_blob(
            &put_url,
            vec![0; 1024],
            &[("content-type", "application/octet-stream")]
        )
        .unwrap()
        .status,
        200
    );

    let before = rss_bytes();
    let peak = AtomicU64::new(before);
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let reply = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let body = Pattern {
            block: block.clone(),
            pos: 0,
            len: SIZE,
        };
        let reply = stream_put(&put_url, "application/octet-stream", body, SIZE);
        done.store(true, Ordering::Relaxed);
        reply
    });
    let took = start.elapsed();
    let after = rss_bytes();
    let peak = peak.load(Ordering::Relaxed).max(after);
    eprintln!(
        "1.5 GiB upload over loopback: {took:?} ({:.0} MiB/s); RSS before {} MiB, peak {} MiB, after {} MiB",
        SIZE as f64 / MIB as f64 / took.as_secs_f64(),
        before / MIB,
        peak / MIB,
        after / MIB
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        peak.saturating_sub(before) < 64 * MIB,
        "RSS grew by {} MiB during the upload",
        (peak - before) / MIB
    );

    // On disk, byte for byte.
    let details = q.artifact(&id, 0, name).unwrap();
    assert_eq!(details["size"], SIZE);
    let path = q.artifact_path(&id, 0, name).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    assert_eq!(file.metadata().unwrap().len(), SIZE);
    let check = Instant::now();
    let mut expected = Pattern {
        block,
        pos: 0,
        len: SIZE,
    };
    let (mut want, mut got) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut offset = 0u64;
    while offset < SIZE {
        let n = (SIZE - offset).min(want.len() as u64) as usize;
        expected.read_exact(&mut want[..n]).unwrap();
        file.read_exact(&mut got[..n]).unwrap();
        assert!(
            want[..n] == got[..n],
            "the stored blob differs within [{offset}, {})",
            offset + n as u64
        );
        offset += n as u64;
    }
    let mut rest = vec![];
    file.seek(std::io::SeekFrom::Start(SIZE)).unwrap();
    assert_eq!(file.read_to_end(&mut rest).unwrap(), 0);
    eprintln!("checked the stored 1.5 GiB in {:?}", check.elapsed());
}

// ---------------------------------------------------------------------------------------------
// The Index service, and artifacts seeded from Rust.

/// A request to the Index service (`/api/index/v1<path>`).
fn index_raw(
    q: &QueueDouble,
    method: &str,
    path: &str,
    creds: Option<&Creds>,
    body: Option<&Value>,
) -> RawReply {
    raw(
        method,
        &format!("{}/api/index/v1{path}", q.root_url()),
        creds,
        body,
    )
}

#[test]
fn index_find_task_answers_entries_and_404s() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let task_id = create(&q, &unique_queue("index"), json!({}));
    let entry = q.index_task("docker-worker.test.images.busybox", &task_id);
    assert_schema_of("index", "indexed-task-response.json", &entry);
    assert_eq!(entry["expires"], q.status(&task_id)["expires"]);

    // Anonymous callers may find tasks (the anonymous role has index:find-task:*).
    let found = index_raw(&q, "GET", "/task/docker-worker.test.images.busybox", None, None);
    assert_eq!(found.status, 200, "{}", found.text());
    assert_schema_of("index", "indexed-task-response.json", &found.json());
    assert_eq!(found.json(), entry);
    assert_eq!(found.json()["namespace"], "docker-worker.test.images.busybox");
    assert_eq!(found.json()["taskId"], task_id.as_str());
    assert_eq!(found.json()["rank"], 0);
    assert_eq!(found.json()["data"], json!({}));
    assert_eq!(
        q.find_task("docker-worker.test.images.busybox"),
        Some(entry.clone())
    );

    // A miss, a namespace (not an entry), a path that breaks the pattern.
    for path in ["docker-worker.test.images.nothing", "docker-worker.test.images"] {
        let missing = index_raw(&q, "GET", &format!("/task/{path}"), None, None);
        assert_raw_error(&missing, 404, "ResourceNotFound");
        assert!(
            missing.json()["message"]
                .as_str()
                .unwrap()
                .starts_with("Indexed task not found"),
            "{}",
            missing.text()
        );
        assert_eq!(q.find_task(path), None);
    }
    assert_raw_error(
        &index_raw(&q, "GET", "/task/a..b", None, None),
        400,
        "InvalidRequestArguments",
    );
    assert_eq!(q.calls("findTask"), 4);

    // insertTask over HTTP: its scope, its schema, and ranks.
    let root = Creds::root(&q);
    let other = new_task_id();
    let body = |task: &str, rank: i64| {
        json!({
            "taskId": task, "rank": rank, "data": {"rank": rank}, "expires": from_now(hours(2)),
        })
    };
    let ns = "/task/docker-worker.test.ranked";
    assert_raw_error(
        &index_raw(&q, "PUT", ns, None, Some(&body(&task_id, 5))),
        403,
        "InsufficientScopes",
    );
    q.add_client("indexer", "tok", ["index:insert-task:docker-worker.test.*"]);
    let indexer = Creds::new("indexer", "tok");
    let inserted = index_raw(&q, "PUT", ns, Some(&indexer), Some(&body(&task_id, 5)));
    assert_eq!(inserted.status, 200, "{}", inserted.text());
    assert_schema_of("index", "indexed-task-response.json", &inserted.json());
    assert_eq!(inserted.json()["rank"], 5);
    // A lower rank keeps the entry (and still answers 200 with it); an equal or higher one replaces it.
    let lower = index_raw(&q, "PUT", ns, Some(&root), Some(&body(&other, 4)));
    assert_eq!(lower.status, 200, "{}", lower.text());
    assert_eq!(lower.json()["taskId"], task_id.as_str());
    let equal = index_raw(&q, "PUT", ns, Some(&root), Some(&body(&other, 5)));
    assert_eq!(equal.json()["taskId"], other.as_str());
    assert_eq!(equal.json()["data"], json!({"rank": 5}));
    let found = index_raw(&q, "GET", ns, None, None);
    assert_eq!(found.json()["taskId"], other.as_str());
    // The schema: rank is required, taskId must be a slugid.
    let mut no_rank = body(&task_id, 1);
    no_rank.as_object_mut().unwrap().remove("rank");
    assert_raw_error(
        &index_raw(&q, "PUT", ns, Some(&root), Some(&no_rank)),
        400,
        "InputValidationError",
    );
    assert_raw_error(
        &index_raw(&q, "PUT", ns, Some(&root), Some(&body("not-a-task-id", 9))),
        400,
        "InputValidationError",
    );

    // An expired entry is not found.
    let expired = json!({"taskId": task_id, "rank": 0, "data": {}, "expires": from_now(hours(-1))});
    q.try_insert_task("docker-worker.test.expired", expired).unwrap();
    assert_raw_error(
        &index_raw(&q, "GET", "/task/docker-worker.test.expired", None, None),
        404,
        "ResourceNotFound",
    );
}

#[test]
fn seeded_artifacts_download_through_the_queue_redirects() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let name = "public/image.tar";
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();

    // A new task: created, run 0 completed, the artifact there.
    let task_id = new_task_id();
    assert_eq!(q.seed_artifact(&task_id, name, &data, "application/x-tar"), 0);
    let status = q.status(&task_id);
    assert_eq!(status["state"], "completed", "{status:#}");
    assert_eq!(status["runs"].as_array().unwrap().len(), 1);
    let listed = call(
        &q,
        "GET",
        &format!("/task/{task_id}/runs/0/artifacts"),
        None,
        None,
    );
    assert_schema("list-artifacts-response.json", &listed.body);
    assert_eq!(listed.body["artifacts"][0]["name"], name);
    assert_eq!(listed.body["artifacts"][0]["storageType"], "object");
    assert_eq!(listed.body["artifacts"][0]["contentType"], "application/x-tar");
    assert_eq!(listed.body["artifacts"][0]["contentLength"], data.len());

    // getLatestArtifact, anonymously: a 303 (which is no download), then the data.
    let latest = queue_raw(
        &q,
        "GET",
        &format!("/task/{task_id}/artifacts/{}", encode(name)),
        None,
        None,
    );
    assert_eq!(
        latest.header("x-taskcluster-artifact-storage-type"),
        Some("object")
    );
    assert_eq!(q.artifact_downloads(&task_id, name), 0);
    let download = follow(&latest);
    assert_eq!(download.status, 200, "{}", download.text());
    assert!(download.bytes == data, "the downloaded bytes differ");
    assert_eq!(download.header("content-type"), Some("application/x-tar"));
    assert_eq!(q.artifact_downloads(&task_id, name), 1);
    // A plain GET that follows the redirect, and getArtifact for run 0.
    let plain = client()
        .get(format!(
            "{}/api/queue/v1/task/{task_id}/artifacts/{name}",
            q.root_url()
        ))
        .send()
        .unwrap();
    assert_eq!(plain.status().as_u16(), 200);
    assert!(plain.bytes().unwrap() == data, "the downloaded bytes differ");
    let by_run = queue_raw(&q, "GET", &artifact_url(&task_id, 0, name), None, None);
    assert!(follow(&by_run).bytes == data, "the downloaded bytes differ");
    assert_eq!(q.artifact_downloads(&task_id, name), 3);

    // Stored as an uploaded object is: the Object service has it, with its hashes.
    let object = q.artifact(&task_id, 0, name).unwrap()["objectName"]
        .as_str()
        .unwrap()
        .to_string();
    let metadata = object_raw(
        &q,
        "GET",
        &format!("/metadata/{object}"),
        Some(&Creds::root(&q)),
        None,
    );
    assert_eq!(metadata.status, 200, "{}", metadata.text());
    assert_eq!(metadata.json()["hashes"]["sha256"], hex(&Sha256::digest(&data)));
    assert_eq!(metadata.json()["hashes"]["sha512"], hex(&Sha512::digest(&data)));

    // From a file, streamed both ways; on an existing pending task, which it completes, scheduling the
    // task that depends on it.
    let queue = unique_queue("seeded");
    let producer = create(&q, &queue, json!({}));
    let consumer = create(&q, &queue, json!({"dependencies": [producer]}));
    assert_eq!(q.status(&consumer)["state"], "unscheduled");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.tar");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    for i in 0..24u8 {
        block.iter_mut().enumerate().for_each(|(j, b)| *b = (j as u8) ^ i);
        hasher.update(&block);
        file.write_all(&block).unwrap();
    }
    drop(file);
    let want = hex(&hasher.finalize());
    assert_eq!(q.seed_artifact(&producer, name, &path, "application/x-tar"), 0);
    assert_eq!(q.status(&producer)["state"], "completed");
    assert_eq!(q.status(&consumer)["state"], "pending");
    let mut got = client()
        .get(format!(
            "{}/api/queue/v1/task/{producer}/artifacts/{name}",
            q.root_url()
        ))
        .send()
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.content_length(), Some(24 << 20));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = got.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    assert_eq!(hex(&hasher.finalize()), want);
    assert_eq!(q.artifact_downloads(&producer, name), 1);
    // Seeding the name again replaces the data.
    q.seed_artifact(&producer, name, b"replaced", "application/x-tar");
    let again = queue_raw(&q, "GET", &artifact_url(&producer, 0, name), None, None);
    assert_eq!(follow(&again).bytes, b"replaced");
}

#[test]
fn seeded_private_artifacts_need_the_get_artifact_scope() {
    let _together = together();
    let q = QueueDouble::start(quick());
    let task_id = new_task_id();
    let name = "private/docker-worker/image.tar";
    q.seed_artifact(&task_id, name, b"private image", "application/x-tar");
    let latest = format!("/task/{task_id}/artifacts/{}", encode(name));

    // Anonymous: refused. The same for credentials without the scope.
    assert_raw_error(
        &queue_raw(&q, "GET", &latest, None, None),
        403,
        "InsufficientScopes",
    );
    let root = Creds::root(&q);
    let now = chrono::Utc::now().timestamp_millis();
    let wrong = temp_creds(
        &root,
        "reader/wrong",
        &["queue:get-artifact:private/other/*"],
        now,
        now + 60_000,
    );
    assert_raw_error(
        &queue_raw(&q, "GET", &latest, Some(&wrong), None),
        403,
        "InsufficientScopes",
    );
    assert_eq!(q.artifact_downloads(&task_id, name), 0);

    // Temporary credentials with the scope.
    let scope = format!("queue:get-artifact:{name}");
    let temporary = temp_creds(&root, "reader/temporary", &[&scope], now, now + 60_000);
    let got = queue_raw(&q, "GET", &latest, Some(&temporary), None);
    assert_eq!(follow(&got).bytes, b"private image");
    // A permanent client with a wildcard scope, through getArtifact.
    q.add_client("reader", "tok", ["queue:get-artifact:private/docker-worker/*"]);
    let got = queue_raw(
        &q,
        "GET",
        &artifact_url(&task_id, 0, &encode(name)),
        Some(&Creds::new("reader", "tok")),
        None,
    );
    assert_eq!(follow(&got).bytes, b"private image");
    assert_eq!(q.artifact_downloads(&task_id, name), 2);
}

// ---------------------------------------------------------------------------------------------
// The registry helper, against the registry integration/test.sh starts (needs Docker).

/// Removes a local image when dropped, even when the test fails.
struct LocalImage<'a>(&'a str);

impl Drop for LocalImage<'_> {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", self.0]).output();
    }
}

#[test]
fn registry_log_shows_one_pull_per_docker_pull_of_a_new_image() {
    let _together = together();
    let registry = Registry::from_env();
    let reference = registry.push_unique_image("registry-helper", 64 * 1024);
    assert!(
        reference.starts_with(&format!("{}/testuser/registry-helper-", registry.host())),
        "{reference}"
    );
    assert!(
        !registry::has_local(&reference),
        "the pushed image is only in the registry"
    );
    assert_eq!(
        registry.pulls(&reference),
        0,
        "{:#?}",
        registry.requests_for(&reference)
    );

    let _local = LocalImage(&reference);
    let pushed = registry.requests_for(&reference).len();
    registry.pull(&reference);
    assert!(registry::has_local(&reference));
    let seen = registry.requests_for(&reference);
    assert_eq!(registry.pulls(&reference), 1, "{seen:#?}");
    assert_eq!(registry.manifest_heads(&reference), 1, "{seen:#?}");
    assert_eq!(registry.manifest_gets(&reference), 1, "{seen:#?}");
    // The config and the one layer Docker lacked (the fixture's layer is local).
    assert_eq!(registry.blob_gets(&reference), 2, "{seen:#?}");
    // Every request of the pull answered 200: Docker sent the credentials over plain HTTP.
    assert!(seen[pushed..].iter().all(|r| r.status == 200), "{seen:#?}");

    // Pulling it again, with the image present, resolves the tag and fetches nothing.
    registry.pull(&reference);
    let seen = registry.requests_for(&reference);
    assert_eq!(registry.pulls(&reference), 1, "{seen:#?}");
    assert_eq!(registry.manifest_heads(&reference), 2, "{seen:#?}");
    assert_eq!(registry.blob_gets(&reference), 2, "{seen:#?}");

    registry::remove_local(&reference);
    assert!(!registry::has_local(&reference));
    registry::remove_local(&reference); // absent: nothing to do
}
