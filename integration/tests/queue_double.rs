//! The queue double against Taskcluster's api.json and schemas, over HTTP with Hawk signed here, and
//! through the official Taskcluster Python client. No Docker needed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use docker_worker_integration::queue_double::{new_task_id, task_definition, Options, QueueDouble, ROUTES};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(20);

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
    let mut schema = read_json(shared().join("schemas/queue/v1").join(name));
    schema.as_object_mut().map(|m| m.remove("$schema"));
    let validator = jsonschema::draft6::options()
        .should_validate_formats(true)
        .with_base_uri(format!("https://tc.test/schemas/queue/v1/{name}"))
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

    // And the server answers exactly those routes: each one reaches its handler (never the
    // unknown-endpoint reply), while an api.json route the double does not serve is unknown.
    let q = QueueDouble::start(quick());
    let sample = |route: &str| {
        route
            .replace("<taskId>", &new_task_id())
            .replace("<runId>", "0")
            .replace("<taskQueueId>", "proj-test/conformance")
    };
    for (name, method, route) in ROUTES {
        let reply = call(&q, &method.to_uppercase(), &sample(route), None, None);
        let message = reply.body["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("is not an endpoint of the queue double"),
            "{name}: {} {:#}",
            reply.status,
            reply.body
        );
        assert!(q.calls(name) >= 1, "{name} was not counted");
    }
    let served: BTreeSet<&str> = ROUTES.iter().map(|(n, _, _)| *n).collect();
    let rerun = entries.iter().find(|e| e["name"] == "rerunTask").unwrap();
    assert!(!served.contains("rerunTask"));
    let reply = call(&q, "POST", &sample(rerun["route"].as_str().unwrap()), None, None);
    assert_eq!(reply.status, 404);
}

// ---------------------------------------------------------------------------------------------
// Flows.

#[test]
fn create_claim_reclaim_complete() {
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
}
