//! The QueueClient and QueueActor against a small HTTP server on 127.0.0.1:0 that records every
//! request and answers from a script; Hawk signing checked against the official Python client; and the
//! FakeQueue that other tests use in the QueueActor's place.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use docker_worker_actors::lifecycle::{ExceptionReason, Resolution};
use docker_worker_actors::queue::actor::fake::{fake_claim, fake_credentials, FakeQueue, QueueCall};
use docker_worker_actors::queue::actor::CANCELED_NOT_REPORTED;
use docker_worker_actors::queue::client::QueueTimeouts;
use docker_worker_actors::queue::hawk::{self, HawkHeader};
use docker_worker_actors::queue::{
    self, ClaimWork, Credentials, GetRunState, QueueActor, QueueClient, QueueError, QueuePort, ReclaimTask,
    ResolveTask, RetryPolicy, RunState,
};
use reqwest::Url;
use serde_json::{json, Value};
use slog::{Drain, Logger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Every wait in this file ends by then.
const DEADLINE: Duration = Duration::from_secs(20);

const TASK_ID: &str = "dSlITZ4yQgmvxxAi4A8fHQ";

/// A certificate as the Queue issues it, keys in the Queue's (non-alphabetical) order. The last two
/// scopes put a `~` and a `?` where the standard base64 of `ext` turns them into `+` and `/`, which
/// the URL-safe alphabet replaces: ASCII JSON gives those two only from `>`, `?`, `~` and DEL.
const CERTIFICATE: &str = concat!(
    r#"{"version":1,"scopes":["queue:reclaim-task:dSlITZ4yQgmvxxAi4A8fHQ/0","#,
    r#""queue:resolve-task:dSlITZ4yQgmvxxAi4A8fHQ/0","queue:create-artifact:dSlITZ4yQgmvxxAi4A8fHQ/0","#,
    r#""docker-worker:cache:abc~","secrets:get:project/releng?"],"#,
    r#""start":1755796741123,"expiry":1755797941123,"seed":"Ex2aYl8bRWS0Ysz1LCsvxQSvyWQ8ZkSOS6d4a8NUAazw","#,
    r#""signature":"m9Zk/B+q8VX0s3GkzU1QeFhv+8wP7/ZcXbRvHgY1fT0=","issuer":"static/taskcluster/queue"}"#
);

fn worker_credentials() -> Credentials {
    Credentials {
        client_id: "project/docker-worker/wg/wi".into(),
        access_token: "worker-secret-access-token-0123456789abcdef".into(),
        certificate: None,
    }
}

fn temporary_credentials() -> Credentials {
    Credentials {
        client_id: format!("task-client/{TASK_ID}/0/on/wg/wi/until/1755797941.123"),
        access_token: "temporary-secret-9876543210".into(),
        certificate: Some(CERTIFICATE.into()),
    }
}

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
    }
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// An event and its fields.
type Event = (String, Vec<(String, String)>);

/// A drain that keeps every record, so a test can look for an event by its message.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<Event>>>);

struct Fields(Vec<(String, String)>);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        self.0.push((key.to_string(), val.to_string()));
        Ok(())
    }
}

impl Drain for Captured {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(Vec::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        self.0.lock().unwrap().push((record.msg().to_string(), fields.0));
        Ok(())
    }
}

impl Captured {
    fn logger(&self) -> Logger {
        Logger::root(self.clone(), slog::o!())
    }

    fn events(&self, msg: &str) -> Vec<Vec<(String, String)>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == msg)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no field {key} in {fields:?}"))
}

// ---------------------------------------------------------------------------------------------
// The scripted HTTP server
// ---------------------------------------------------------------------------------------------

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// The request target exactly as sent: path and query, still percent-encoded.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }

    fn hawk(&self) -> HawkHeader {
        HawkHeader::parse(self.header("authorization").expect("an Authorization header"))
            .expect("a well-formed Hawk header")
    }

    /// Check the request the way the Queue's auth service would: the MAC under `credentials`, the
    /// payload hash over the body, and the certificate in `ext`.
    fn assert_signed_by(&self, credentials: &Credentials, port: u16) {
        let h = self.hawk();
        assert_eq!(h.id, credentials.client_id);
        assert!(
            h.verify(
                &credentials.access_token,
                &self.method,
                &self.target,
                "127.0.0.1",
                port
            ),
            "the MAC does not verify for {} {}: {h:?}",
            self.method,
            self.target
        );
        assert!(
            !h.verify("another-key", &self.method, &self.target, "127.0.0.1", port),
            "the MAC verifies under any key"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(h.ts.abs_diff(now) < 60, "ts {} is not now ({now})", h.ts);
        if self.body.is_empty() {
            assert_eq!(h.hash, None, "a request without a body signs no payload hash");
        } else {
            let content_type = self.header("content-type").expect("a body has a content type");
            assert_eq!(
                h.hash.as_deref(),
                Some(hawk::payload_hash(content_type, &self.body).as_str())
            );
        }
        let ext = h
            .ext_json()
            .unwrap()
            .expect("Taskcluster clients always send ext");
        match &credentials.certificate {
            None => assert_eq!(ext, json!({})),
            Some(cert) => {
                let cert: Value = serde_json::from_str(cert).unwrap();
                assert_eq!(
                    ext,
                    json!({ "certificate": cert }),
                    "ext carries the certificate as an object"
                );
            }
        }
    }
}

/// How the server answers one request.
enum Reply {
    Json(u16, Value),
    /// Hold the request until the notify fires, then answer.
    After(Arc<Notify>, u16, Value),
    /// Never answer.
    Hang,
}

fn ok(body: Value) -> Reply {
    Reply::Json(200, body)
}

fn queue_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::Json(
        status,
        json!({
            "code": code,
            "message": format!("{message}\n\n---\n\n* method: x\n* errorCode: {code}"),
            "requestInfo": {"method": "x", "params": {}, "payload": {}, "time": "2026-01-01T00:00:00.000Z"},
        }),
    )
}

type Handler = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
}

impl Server {
    /// Serve `handler`, which gets each request and how many earlier ones had its method and target.
    async fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let handler: Arc<Handler> = Arc::new(handler);
        let (s, a) = (seen.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, handler.clone(), s.clone(), a.clone()));
            }
        });
        Server { addr, seen, arrived }
    }

    fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn client(&self, retry: RetryPolicy, log: Logger) -> QueueClient {
        QueueClient::new(&self.root_url(), worker_credentials(), retry, log).expect("a client")
    }

    /// Wait until `n` requests have arrived.
    async fn wait_for_requests(&self, n: usize) {
        let wait = async {
            loop {
                let notified = self.arrived.notified();
                if self.seen.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("{n} request(s) did not arrive; seen: {:?}", self.seen()));
    }
}

async fn serve(
    mut stream: TcpStream,
    handler: Arc<Handler>,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let target = request_line.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let request = Seen {
        method,
        target,
        headers,
        body,
    };
    let earlier = {
        let mut seen = seen.lock().unwrap();
        let earlier = seen
            .iter()
            .filter(|s| s.method == request.method && s.target == request.target)
            .count();
        seen.push(request.clone());
        earlier
    };
    arrived.notify_waiters();
    let (status, body) = match handler(&request, earlier) {
        Reply::Json(status, body) => (status, body),
        Reply::After(notify, status, body) => {
            notify.notified().await;
            (status, body)
        }
        Reply::Hang => std::future::pending().await,
    };
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn claim_json(task_id: &str, run_id: u32, taken_until: &str) -> Value {
    json!({
        "status": {"taskId": task_id, "state": "running", "runs": []},
        "runId": run_id,
        "workerGroup": "wg",
        "workerId": "wi",
        "takenUntil": taken_until,
        "task": {"payload": {"image": "busybox"}, "metadata": {"name": task_id}},
        "credentials": {
            "clientId": temporary_credentials().client_id,
            "accessToken": temporary_credentials().access_token,
            "certificate": CERTIFICATE,
        },
    })
}

fn status_json(run_id: u32, state: &str, reason: Option<&str>) -> Value {
    let mut run = json!({"runId": run_id, "state": state, "reasonCreated": "scheduled",
                         "scheduled": "2026-01-01T00:00:00.000Z"});
    if let Some(reason) = reason {
        run["reasonResolved"] = json!(reason);
    }
    json!({"status": {"taskId": TASK_ID, "state": state, "runs": [run]}})
}

fn task_path(action: &str) -> String {
    format!("/api/queue/v1/task/{TASK_ID}/runs/0/{action}")
}

/// A JSON schema of the Queue, with format validation, draft 6 forced (its `$schema` is relative).
fn queue_schema(name: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/../../shared/taskcluster/schemas/queue/v1/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut schema: Value = serde_json::from_str(&text).unwrap();
    let obj = schema.as_object_mut().unwrap();
    obj.remove("$schema");
    obj.remove("$id");
    jsonschema::draft6::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{path} does not compile: {e}"))
}

// ---------------------------------------------------------------------------------------------
// QueueClient
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn claim_work_posts_the_request_to_the_encoded_route_signed_by_the_worker() {
    let server = Server::start(|_, _| {
        ok(json!({"tasks": [
            claim_json(TASK_ID, 0, "2030-01-02T03:04:05.678+00:00"),
            claim_json("aaaaaaaaQaaaaaaaaaaaaA", 3, "2030-01-02T03:04:05.678Z"),
        ]}))
    })
    .await;
    let client = server.client(quick_retry(3), Captured::default().logger());
    let claims = client
        .claim_work(&ClaimWork {
            task_queue_id: "proj-1/docker-wt".into(),
            worker_group: "wg".into(),
            worker_id: "wi".into(),
            tasks: 2,
        })
        .await
        .expect("claims");

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/api/queue/v1/claim-work/proj-1%2Fdocker-wt");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.json(),
        json!({"workerGroup": "wg", "workerId": "wi", "tasks": 2})
    );
    let schema = queue_schema("claim-work-request.json");
    assert!(
        schema.is_valid(&req.json()),
        "the body matches claim-work-request.json"
    );
    req.assert_signed_by(&worker_credentials(), server.port());

    assert_eq!(claims.len(), 2);
    let c = &claims[0];
    assert_eq!(c.task_id, TASK_ID, "the task id comes from status.taskId");
    assert_eq!(c.run_id, 0);
    assert_eq!(c.task["metadata"]["name"], TASK_ID);
    assert_eq!(c.credentials, temporary_credentials());
    let expected: chrono::DateTime<chrono::Utc> = "2030-01-02T03:04:05.678Z".parse().unwrap();
    assert_eq!(c.taken_until, expected, "+00:00 parses");
    assert_eq!(claims[1].taken_until, expected, "Z parses");
    assert_eq!(
        (claims[1].task_id.as_str(), claims[1].run_id),
        ("aaaaaaaaQaaaaaaaaaaaaA", 3)
    );
}

#[actix_rt::test]
async fn claim_work_is_sent_exactly_once_even_when_it_fails() {
    for reply in [500u16, 503] {
        let server = Server::start(move |_, _| queue_error(reply, "InternalServerError", "boom")).await;
        let log = Captured::default();
        let client = server.client(quick_retry(5), log.logger());
        let err = client
            .claim_work(&ClaimWork {
                task_queue_id: "p/w".into(),
                worker_group: "wg".into(),
                worker_id: "wi".into(),
                tasks: 1,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, QueueError::Unavailable(m) if m.contains("boom")),
            "{err:?}"
        );
        assert_eq!(server.seen().len(), 1, "claimWork is never repeated");
        assert!(log.events("retrying queue call").is_empty());
    }
}

#[actix_rt::test]
async fn claim_work_has_a_generous_timeout_of_its_own() {
    // The Queue holds claimWork open while it has nothing; the short per-call timeout must not apply.
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let server = Server::start(move |_, _| Reply::After(r.clone(), 200, json!({"tasks": []}))).await;
    let client = server
        .client(quick_retry(3), Captured::default().logger())
        .with_timeouts(QueueTimeouts {
            claim_work: DEADLINE,
            call: Duration::from_millis(50),
        });
    let request = ClaimWork {
        task_queue_id: "p/w".into(),
        worker_group: "wg".into(),
        worker_id: "wi".into(),
        tasks: 1,
    };
    let call = tokio::spawn(async move { client.claim_work(&request).await });
    server.wait_for_requests(1).await;
    // Longer than the per-call timeout, but not a synchronization: the answer waits for `release`.
    tokio::time::sleep(Duration::from_millis(150)).await;
    release.notify_one();
    let claims = tokio::time::timeout(DEADLINE, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(claims.is_empty());
}

#[actix_rt::test]
async fn reclaim_is_signed_with_the_runs_temporary_credentials() {
    let server = Server::start(|_, _| {
        let mut answer = claim_json(TASK_ID, 0, "2030-05-06T07:08:09.000Z");
        let obj = answer.as_object_mut().unwrap();
        obj.remove("task");
        obj.insert(
            "credentials".into(),
            json!({"clientId": "new-id", "accessToken": "new-token", "certificate": "{\"version\":1}"}),
        );
        ok(answer)
    })
    .await;
    let client = server.client(quick_retry(3), Captured::default().logger());
    let reclaimed = client
        .reclaim_task(TASK_ID, 0, &temporary_credentials())
        .await
        .expect("reclaimed");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("POST", task_path("reclaim").as_str())
    );
    assert_eq!(req.header("content-length"), Some("0"));
    req.assert_signed_by(&temporary_credentials(), server.port());
    assert_eq!(
        reclaimed.taken_until,
        "2030-05-06T07:08:09Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    );
    assert_eq!(
        reclaimed.credentials,
        Credentials {
            client_id: "new-id".into(),
            access_token: "new-token".into(),
            certificate: Some("{\"version\":1}".into()),
        }
    );
}

#[actix_rt::test]
async fn reports_go_to_their_routes_with_their_bodies() {
    let server = Server::start(|_, _| ok(status_json(0, "completed", Some("completed")))).await;
    let client = server.client(quick_retry(3), Captured::default().logger());
    let creds = temporary_credentials();
    client.report_completed(TASK_ID, 0, &creds).await.unwrap();
    client.report_failed(TASK_ID, 0, &creds).await.unwrap();
    client
        .report_exception(TASK_ID, 0, &creds, ExceptionReason::WorkerShutdown)
        .await
        .unwrap();
    let seen = server.seen();
    let routes: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.target.as_str()))
        .collect();
    assert_eq!(
        routes,
        vec![
            ("POST", task_path("completed").as_str()),
            ("POST", task_path("failed").as_str()),
            ("POST", task_path("exception").as_str()),
        ]
    );
    for req in &seen {
        req.assert_signed_by(&creds, server.port());
    }
    assert!(seen[0].body.is_empty() && seen[1].body.is_empty());
    assert_eq!(seen[2].json(), json!({"reason": "worker-shutdown"}));
    assert!(queue_schema("task-exception-request.json").is_valid(&seen[2].json()));
}

#[actix_rt::test]
async fn a_5xx_is_retried_with_fresh_signatures_and_logged() {
    let server = Server::start(|_, earlier| match earlier {
        0 => queue_error(500, "InternalServerError", "first"),
        1 => Reply::Json(502, json!("bad gateway")),
        _ => ok(status_json(0, "completed", Some("completed"))),
    })
    .await;
    let log = Captured::default();
    let client = server.client(quick_retry(5), log.logger());
    client
        .report_completed(TASK_ID, 0, &temporary_credentials())
        .await
        .expect("the third attempt succeeds");
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for req in &seen {
        req.assert_signed_by(&temporary_credentials(), server.port());
    }
    assert_ne!(
        seen[0].hawk().nonce,
        seen[1].hawk().nonce,
        "each attempt has its own nonce"
    );
    let retries = log.events("retrying queue call");
    assert_eq!(retries.len(), 2);
    assert_eq!(field(&retries[0], "endpoint"), "reportCompleted");
    assert_eq!(field(&retries[0], "attempt"), "1");
    assert!(field(&retries[0], "error").contains("HTTP 500: InternalServerError: first"));
    assert_eq!(field(&retries[1], "attempt"), "2");
}

#[actix_rt::test]
async fn retries_stop_after_the_policys_attempts() {
    let server = Server::start(|_, _| queue_error(503, "InternalServerError", "down")).await;
    let client = server.client(quick_retry(4), Captured::default().logger());
    let err = client
        .reclaim_task(TASK_ID, 0, &temporary_credentials())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QueueError::Unavailable(m) if m.contains("after 4 attempts") && m.contains("down")),
        "{err:?}"
    );
    assert_eq!(server.seen().len(), 4);
}

#[actix_rt::test]
async fn a_4xx_is_never_retried_and_maps_to_its_error() {
    type Expect = fn(&QueueError) -> bool;
    let cases: [(u16, &str, Expect); 6] = [
        (
            409,
            "RequestConflict",
            |e| matches!(e, QueueError::Conflict(m) if m == "RequestConflict: nope"),
        ),
        (
            400,
            "InputValidationError",
            |e| matches!(e, QueueError::Rejected { status: 400, message } if message.ends_with("nope")),
        ),
        (401, "AuthenticationFailed", |e| {
            matches!(e, QueueError::Unauthorized { status: 401, .. })
        }),
        (403, "InsufficientScopes", |e| {
            matches!(e, QueueError::Unauthorized { status: 403, .. })
        }),
        (
            404,
            "ResourceNotFound",
            |e| matches!(e, QueueError::NotFound(m) if m == "ResourceNotFound: nope"),
        ),
        (410, "ResourceExpired", |e| {
            matches!(e, QueueError::Rejected { status: 410, .. })
        }),
    ];
    for (status, code, expected) in cases {
        let code = code.to_string();
        let server = Server::start(move |_, _| queue_error(status, &code, "nope")).await;
        let log = Captured::default();
        let client = server.client(quick_retry(5), log.logger());
        let err = client
            .reclaim_task(TASK_ID, 0, &temporary_credentials())
            .await
            .unwrap_err();
        assert!(expected(&err), "{status}: {err:?}");
        assert_eq!(server.seen().len(), 1, "{status} is not retried");
        let err = client
            .report_failed(TASK_ID, 0, &temporary_credentials())
            .await
            .unwrap_err();
        assert!(expected(&err), "{status}: {err:?}");
        assert_eq!(
            server.seen().len(),
            2,
            "{status} on a first report is the last word"
        );
        assert!(log.events("retrying queue call").is_empty());
    }
}

#[actix_rt::test]
async fn a_report_that_conflicts_after_a_lost_answer_is_a_success_if_the_run_shows_it() {
    // 500 (the report may have gone through), then 409 (it had), and status shows our resolution.
    let server = Server::start(|req, earlier| match (req.method.as_str(), earlier) {
        ("POST", 0) => queue_error(500, "InternalServerError", "lost"),
        ("POST", _) => queue_error(409, "RequestConflict", "is resolved or not running"),
        _ => ok(status_json(0, "exception", Some("worker-shutdown"))),
    })
    .await;
    let log = Captured::default();
    let client = server.client(quick_retry(5), log.logger());
    client
        .report_exception(
            TASK_ID,
            0,
            &temporary_credentials(),
            ExceptionReason::WorkerShutdown,
        )
        .await
        .expect("the run shows our report");
    let seen = server.seen();
    let routes: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.target.as_str()))
        .collect();
    let status_path = format!("/api/queue/v1/task/{TASK_ID}/status");
    assert_eq!(
        routes,
        vec![
            ("POST", task_path("exception").as_str()),
            ("POST", task_path("exception").as_str()),
            ("GET", status_path.as_str()),
        ]
    );
    assert!(
        seen[2].header("authorization").is_none(),
        "status is read anonymously first"
    );
    assert_eq!(log.events("queue report already applied").len(), 1);
}

#[actix_rt::test]
async fn a_report_that_conflicts_after_a_retry_stays_a_conflict_if_the_run_ended_otherwise() {
    for shown in [
        status_json(0, "exception", Some("canceled")),
        status_json(0, "exception", Some("internal-error")),
        status_json(0, "running", None),
        json!({"status": {"taskId": TASK_ID, "state": "pending", "runs": []}}),
    ] {
        let server = Server::start(move |req, earlier| match (req.method.as_str(), earlier) {
            ("POST", 0) => queue_error(503, "InternalServerError", "lost"),
            ("POST", _) => queue_error(409, "RequestConflict", "canceled"),
            _ => ok(shown.clone()),
        })
        .await;
        let client = server.client(quick_retry(5), Captured::default().logger());
        let err = client
            .report_exception(
                TASK_ID,
                0,
                &temporary_credentials(),
                ExceptionReason::WorkerShutdown,
            )
            .await
            .unwrap_err();
        assert_eq!(err, QueueError::Conflict("RequestConflict: canceled".into()));
        assert_eq!(server.seen().len(), 3);
    }
}

#[actix_rt::test]
async fn a_first_attempt_conflict_does_not_look_at_the_status() {
    let server = Server::start(|req, _| match req.method.as_str() {
        "POST" => queue_error(409, "RequestConflict", "canceled"),
        _ => ok(status_json(0, "completed", Some("completed"))),
    })
    .await;
    let client = server.client(quick_retry(5), Captured::default().logger());
    let err = client
        .report_completed(TASK_ID, 0, &temporary_credentials())
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Conflict(_)), "{err:?}");
    assert_eq!(server.seen().len(), 1);
}

#[actix_rt::test]
async fn a_timeout_is_retried() {
    let server = Server::start(|_, earlier| match earlier {
        0 => Reply::Hang,
        _ => ok(status_json(0, "running", None)),
    })
    .await;
    let log = Captured::default();
    let client = server
        .client(quick_retry(3), log.logger())
        .with_timeouts(QueueTimeouts {
            claim_work: DEADLINE,
            call: Duration::from_millis(300),
        });
    let status = client
        .status(TASK_ID, &temporary_credentials())
        .await
        .expect("the second try answers");
    assert_eq!(status.run(0).and_then(|r| r.run_state()), Some(RunState::Running));
    assert_eq!(server.seen().len(), 2);
    let retries = log.events("retrying queue call");
    assert_eq!(retries.len(), 1);
    assert!(field(&retries[0], "error").contains("timed out"), "{retries:?}");
}

#[actix_rt::test]
async fn an_unreachable_queue_is_unavailable_after_the_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let log = Captured::default();
    let client = QueueClient::new(
        &format!("http://127.0.0.1:{port}"),
        worker_credentials(),
        quick_retry(3),
        log.logger(),
    )
    .unwrap();
    let err = client
        .report_failed(TASK_ID, 0, &temporary_credentials())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QueueError::Unavailable(m) if m.contains("after 3 attempts")),
        "{err:?}"
    );
    assert_eq!(log.events("retrying queue call").len(), 2);
}

#[actix_rt::test]
async fn an_unreadable_answer_is_unavailable() {
    let server = Server::start(|_, _| ok(json!({"tasks": [{"runId": 0}]}))).await;
    let log = Captured::default();
    let client = server.client(quick_retry(3), log.logger());
    let err = client
        .claim_work(&ClaimWork {
            task_queue_id: "p/w".into(),
            worker_group: "wg".into(),
            worker_id: "wi".into(),
            tasks: 1,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QueueError::Unavailable(m) if m.contains("unreadable")),
        "{err:?}"
    );
    assert_eq!(log.events("queue answer unreadable").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// QueueActor
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn the_actor_maps_resolutions_and_run_states() {
    let server = Server::start(|req, _| match req.method.as_str() {
        "POST" => ok(status_json(0, "completed", Some("completed"))),
        _ => ok(status_json(0, "exception", Some("canceled"))),
    })
    .await;
    let port = QueuePort::from_addr(
        &QueueActor::new(server.client(quick_retry(3), Captured::default().logger())).start(),
    );
    let creds = temporary_credentials();
    let resolve = |resolution| ResolveTask {
        task_id: TASK_ID.into(),
        run_id: 0,
        credentials: creds.clone(),
        resolution,
    };
    queue::call(&port.resolve, resolve(Resolution::Completed))
        .await
        .unwrap();
    queue::call(&port.resolve, resolve(Resolution::Failed))
        .await
        .unwrap();
    queue::call(
        &port.resolve,
        resolve(Resolution::Exception(ExceptionReason::MalformedPayload)),
    )
    .await
    .unwrap();
    let err = queue::call(&port.resolve, resolve(Resolution::Canceled))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        QueueError::Rejected {
            status: 0,
            message: CANCELED_NOT_REPORTED.into()
        }
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 3, "a canceled run makes no call");
    assert_eq!(seen[2].json(), json!({"reason": "malformed-payload"}));

    let state = |run_id| GetRunState {
        task_id: TASK_ID.into(),
        run_id,
        credentials: creds.clone(),
    };
    assert_eq!(
        queue::call(&port.run_state, state(0)).await,
        Ok(RunState::Resolved)
    );
    let err = queue::call(&port.run_state, state(1)).await.unwrap_err();
    assert!(matches!(err, QueueError::NotFound(_)), "{err:?}");
    let seen = server.seen();
    assert_eq!(seen[3].method, "GET");
    assert!(
        seen[3].header("authorization").is_none(),
        "status is read anonymously first"
    );
}

#[actix_rt::test]
async fn status_is_signed_when_the_anonymous_read_is_refused() {
    let server = Server::start(|req, _| match req.header("authorization") {
        None => queue_error(403, "InsufficientScopes", "anonymous may not"),
        Some(_) => ok(status_json(0, "running", None)),
    })
    .await;
    let client = server.client(quick_retry(3), Captured::default().logger());
    let status = client
        .status(TASK_ID, &temporary_credentials())
        .await
        .expect("the signed read works");
    assert_eq!(status.run(0).and_then(|r| r.run_state()), Some(RunState::Running));
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].header("authorization").is_none());
    seen[1].assert_signed_by(&temporary_credentials(), server.port());
}

#[actix_rt::test]
async fn find_task_asks_the_index_anonymously_then_signed_by_the_task() {
    let server = Server::start(|req, _| match req.header("authorization") {
        None => queue_error(403, "InsufficientScopes", "anonymous may not"),
        Some(_) => ok(json!({
            "namespace": "a.b/c", "taskId": TASK_ID, "rank": 0, "data": {},
            "expires": "2030-01-01T00:00:00.000Z",
        })),
    })
    .await;
    let client = server.client(quick_retry(3), Captured::default().logger());
    let found = client
        .find_task("a.b/c", Some(&temporary_credentials()))
        .await
        .expect("the signed call works");
    assert_eq!(found, TASK_ID);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/api/index/v1/task/a.b%2Fc");
    assert!(seen[0].header("authorization").is_none());
    seen[1].assert_signed_by(&temporary_credentials(), server.port());
    // Without credentials the refusal stands.
    let err = client.find_task("a.b", None).await.unwrap_err();
    assert!(
        matches!(err, QueueError::Unauthorized { status: 403, .. }),
        "{err:?}"
    );
}

#[actix_rt::test]
async fn the_actor_runs_calls_concurrently() {
    // A claimWork long-poll is held open while a reclaim goes through.
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let server = Server::start(move |req, _| {
        if req.target.contains("claim-work") {
            Reply::After(r.clone(), 200, json!({"tasks": []}))
        } else {
            let mut answer = claim_json(TASK_ID, 0, "2030-05-06T07:08:09.000Z");
            answer.as_object_mut().unwrap().remove("task");
            ok(answer)
        }
    })
    .await;
    let port = QueuePort::from_addr(
        &QueueActor::new(server.client(quick_retry(3), Captured::default().logger())).start(),
    );
    let claim = port.claim_work.send(ClaimWork {
        task_queue_id: "p/w".into(),
        worker_group: "wg".into(),
        worker_id: "wi".into(),
        tasks: 1,
    });
    let claim = tokio::spawn(claim);
    server.wait_for_requests(1).await;
    let reclaimed = tokio::time::timeout(
        DEADLINE,
        queue::call(
            &port.reclaim,
            ReclaimTask {
                task_id: TASK_ID.into(),
                run_id: 0,
                credentials: temporary_credentials(),
            },
        ),
    )
    .await
    .expect("the reclaim is not stuck behind the claim")
    .unwrap();
    assert_eq!(reclaimed.credentials, temporary_credentials());
    assert!(!claim.is_finished());
    release.notify_one();
    let claims = tokio::time::timeout(DEADLINE, claim)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(claims.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Hawk against the official Python client
// ---------------------------------------------------------------------------------------------

/// Calls the official client's Queue methods with its HTTP layer replaced by a recorder, and the
/// timestamp and nonce fixed, and prints what it would have sent.
const PYTHON_SIGNER: &str = r#"
import json, sys
try:
    import mohawk.base
    import taskcluster
    import taskcluster.utils
except ImportError as e:
    print(f"cannot import the official Taskcluster client: {e}", file=sys.stderr)
    sys.exit(3)

spec = json.load(sys.stdin)
# The client signs through mohawk.Sender, which takes its clock and nonce from mohawk.base.
mohawk.base.utc_now = lambda offset_in_seconds=0.0: spec["ts"]
mohawk.base.random_string = lambda length: spec["nonce"]
captured = []

class Answer:
    status_code = 200
    def raise_for_status(self):
        pass
    def json(self):
        return {}

def record(method, url, payload, headers, session=None):
    captured.append({"method": method.upper(), "url": url, "payload": payload, "headers": headers})
    return Answer()

taskcluster.utils.makeSingleHttpRequest = record
for call in spec["calls"]:
    options = {"rootUrl": spec["rootUrl"], "credentials": call["credentials"], "maxRetries": 0}
    queue = taskcluster.Queue(options)
    getattr(queue, call["method"])(*call["args"])
print(json.dumps(captured))
"#;

/// What the official client would send.
#[derive(Debug, serde::Deserialize)]
struct PythonRequest {
    method: String,
    url: String,
    payload: Option<String>,
    headers: std::collections::HashMap<String, String>,
}

fn python_requests(spec: &str) -> Vec<PythonRequest> {
    const SETUP: &str = "run `bash integration/setup.sh` (it installs python3's `taskcluster` package: \
                         `python3 -m pip install taskcluster`)";
    let mut child = Command::new("python3")
        .args(["-c", PYTHON_SIGNER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {SETUP}"));
    child.stdin.take().unwrap().write_all(spec.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() != Some(3), "{}; {SETUP}", stderr.trim());
    assert!(out.status.success(), "the Python signer failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("unexpected output from the Python signer: {e}"))
}

/// Sign what Python sent with our code, same ts and nonce, and compare every attribute.
fn assert_same_signature(py: &PythonRequest, credentials: &Credentials, ts: u64, nonce: &str) {
    let url = Url::parse(&py.url).unwrap();
    // The Python client hashes even an empty body (content and content type both empty).
    let body = py.payload.as_deref().unwrap_or("");
    let content_type = py.headers.get("Content-Type").map_or("", String::as_str);
    let hash = hawk::payload_hash(content_type, body.as_bytes());
    let ours = hawk::header_at(credentials, &py.method, &url, Some(&hash), ts, nonce).unwrap();
    let theirs = HawkHeader::parse(&py.headers["Authorization"]).unwrap();
    assert_eq!(
        HawkHeader::parse(&ours).unwrap(),
        theirs,
        "{} {}",
        py.method,
        py.url
    );
}

#[test]
fn hawk_headers_match_the_official_python_client() {
    let (ts, nonce) = (1755796741u64, "Xy9-_a");
    let root = "https://tc.example.com";
    let worker = worker_credentials();
    let temp = temporary_credentials();
    let creds_json = |c: &Credentials| serde_json::to_value(c).unwrap();
    let spec = json!({
        "ts": ts,
        "nonce": nonce,
        "rootUrl": root,
        "calls": [
            {"method": "claimWork", "credentials": creds_json(&worker),
             "args": ["proj-1/docker-wt", {"workerGroup": "wg", "workerId": "wi", "tasks": 4}]},
            {"method": "reclaimTask", "credentials": creds_json(&temp), "args": [TASK_ID, 0]},
            {"method": "reportCompleted", "credentials": creds_json(&temp), "args": [TASK_ID, 0]},
            {"method": "reportException", "credentials": creds_json(&temp),
             "args": [TASK_ID, 0, {"reason": "worker-shutdown"}]},
            {"method": "status", "credentials": creds_json(&temp), "args": [TASK_ID]},
        ],
    });
    let py = python_requests(&spec.to_string());
    assert_eq!(py.len(), 5);
    assert_same_signature(&py[0], &worker, ts, nonce);
    for p in &py[1..] {
        assert_same_signature(p, &temp, ts, nonce);
    }
    // The URL-safe alphabet is exercised: this certificate's ext has characters standard base64
    // would write as `+` and `/`.
    let ext = HawkHeader::parse(&py[1].headers["Authorization"])
        .unwrap()
        .ext
        .unwrap();
    assert!(ext.contains('-') && ext.contains('_'), "{ext}");
    assert_eq!(ext, hawk::ext(&temp).unwrap());
}

#[actix_rt::test]
async fn our_requests_are_the_ones_the_python_client_sends() {
    let server = Server::start(|req, _| {
        if req.target.contains("claim-work") {
            ok(json!({"tasks": []}))
        } else {
            ok(status_json(0, "exception", Some("internal-error")))
        }
    })
    .await;
    let client = server.client(quick_retry(1), Captured::default().logger());
    client
        .claim_work(&ClaimWork {
            task_queue_id: "proj-1/docker-wt".into(),
            worker_group: "wg".into(),
            worker_id: "wi".into(),
            tasks: 4,
        })
        .await
        .unwrap();
    client
        .report_exception(
            TASK_ID,
            0,
            &temporary_credentials(),
            ExceptionReason::InternalError,
        )
        .await
        .unwrap();
    // Written out by hand so Python's dicts keep our key order and the bodies can match byte for byte.
    let spec = format!(
        r#"{{"ts": 1, "nonce": "n", "rootUrl": "{root}", "calls": [
            {{"method": "claimWork", "credentials": {worker},
              "args": ["proj-1/docker-wt", {{"workerGroup": "wg", "workerId": "wi", "tasks": 4}}]}},
            {{"method": "reportException", "credentials": {temp},
              "args": ["{TASK_ID}", 0, {{"reason": "internal-error"}}]}}]}}"#,
        root = server.root_url(),
        worker = serde_json::to_string(&worker_credentials()).unwrap(),
        temp = serde_json::to_string(&temporary_credentials()).unwrap(),
    );
    let py = python_requests(&spec);
    let ours = server.seen();
    for (p, o) in py.iter().zip(&ours) {
        assert_eq!(p.method, o.method);
        assert_eq!(
            p.url,
            format!("{}{}", server.root_url(), o.target),
            "the same encoded route"
        );
        assert_eq!(
            p.payload.as_deref().map(str::as_bytes),
            Some(o.body.as_slice()),
            "the same body bytes"
        );
        // Python's header, checked by the same server-side code as ours.
        let theirs = HawkHeader::parse(&p.headers["Authorization"]).unwrap();
        let ours = o.hawk();
        assert_eq!(theirs.ext, ours.ext);
        assert_eq!(theirs.hash, ours.hash);
    }
}

// ---------------------------------------------------------------------------------------------
// FakeQueue
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn the_fake_hands_out_claims_and_scripts_reclaims_and_reports() {
    let fake = FakeQueue::new();
    let q = fake.handle();
    q.push_claim(fake_claim("T1", 0, json!({"payload": {}})));
    q.push_claim(fake_claim("T2", 0, json!({"payload": {}})));
    q.conflict_after_reclaims(2);
    q.fail_reports(1, QueueError::Unavailable("down".into()));
    q.set_claim_poll(Duration::from_millis(10));
    let port = QueuePort::from_addr(&fake.start());
    let claim = |tasks| ClaimWork {
        task_queue_id: "p/w".into(),
        worker_group: "wg".into(),
        worker_id: "wi".into(),
        tasks,
    };

    let claims = queue::call(&port.claim_work, claim(1)).await.unwrap();
    assert_eq!(
        claims.iter().map(|c| c.task_id.as_str()).collect::<Vec<_>>(),
        ["T1"]
    );
    let mut creds = claims[0].credentials.clone();
    for n in 1..=2 {
        let r = queue::call(
            &port.reclaim,
            ReclaimTask {
                task_id: "T1".into(),
                run_id: 0,
                credentials: creds.clone(),
            },
        )
        .await
        .unwrap();
        assert_eq!(r.credentials, fake_credentials("T1", 0, &format!("reclaim-{n}")));
        creds = r.credentials;
    }
    assert_eq!(q.newest_credentials("T1", 0), Some(creds.clone()));
    let third = queue::call(
        &port.reclaim,
        ReclaimTask {
            task_id: "T1".into(),
            run_id: 0,
            credentials: creds.clone(),
        },
    )
    .await;
    assert!(matches!(third, Err(QueueError::Conflict(_))), "{third:?}");
    assert_eq!(q.reclaims("T1", 0), 2);
    let state = queue::call(
        &port.run_state,
        GetRunState {
            task_id: "T1".into(),
            run_id: 0,
            credentials: creds.clone(),
        },
    )
    .await;
    assert_eq!(state, Ok(RunState::Resolved));

    // T2: the first report fails, the second goes through; a report with old credentials shows up.
    let claims = queue::call(&port.claim_work, claim(4)).await.unwrap();
    assert_eq!(claims.len(), 1);
    let resolve = |credentials: Credentials| ResolveTask {
        task_id: "T2".into(),
        run_id: 0,
        credentials,
        resolution: Resolution::Completed,
    };
    let first = queue::call(&port.resolve, resolve(claims[0].credentials.clone())).await;
    assert_eq!(first, Err(QueueError::Unavailable("down".into())));
    let stale = fake_credentials("T2", 0, "old");
    queue::call(&port.resolve, resolve(stale.clone())).await.unwrap();
    assert_eq!(q.resolutions("T2", 0), vec![Resolution::Completed]);
    assert_eq!(q.resolve_calls("T2", 0).len(), 2);
    let stale_calls = q.stale_credential_calls();
    assert_eq!(stale_calls.len(), 1);
    assert!(matches!(&stale_calls[0], QueueCall::Resolve(m) if m.credentials == stale));
    let canceled = queue::call(
        &port.resolve,
        ResolveTask {
            resolution: Resolution::Canceled,
            ..resolve(claims[0].credentials.clone())
        },
    )
    .await;
    assert!(matches!(canceled, Err(QueueError::Rejected { status: 0, .. })));

    // Nothing left: an empty answer after the poll; a claim pushed while polling is handed out.
    assert!(queue::call(&port.claim_work, claim(1)).await.unwrap().is_empty());
    q.set_claim_poll(DEADLINE);
    let pending = tokio::spawn(port.claim_work.send(claim(1)));
    q.wait_for("the fourth poll", DEADLINE, |q| q.claim_work_calls() == 4)
        .await
        .unwrap();
    q.push_claim(fake_claim("T3", 1, json!({})));
    let claims = tokio::time::timeout(DEADLINE, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((claims[0].task_id.as_str(), claims[0].run_id), ("T3", 1));
    assert_eq!(q.claim_work_calls(), 4);
}

#[actix_rt::test]
async fn the_fake_cancels_and_answers_scripted_states() {
    let fake = FakeQueue::new();
    let q = fake.handle();
    let creds = fake_credentials("T", 0, "claim");
    q.register_run("T", 0, creds.clone());
    q.push_run_state_answer(Err(QueueError::Unavailable("flaky".into())));
    let port = QueuePort::from_addr(&fake.start());
    let state = || GetRunState {
        task_id: "T".into(),
        run_id: 0,
        credentials: creds.clone(),
    };
    assert!(queue::call(&port.run_state, state()).await.is_err());
    assert_eq!(queue::call(&port.run_state, state()).await, Ok(RunState::Running));
    q.cancel("T", 0);
    assert_eq!(
        queue::call(&port.run_state, state()).await,
        Ok(RunState::Resolved)
    );
    let report = queue::call(
        &port.resolve,
        ResolveTask {
            task_id: "T".into(),
            run_id: 0,
            credentials: creds.clone(),
            resolution: Resolution::Failed,
        },
    )
    .await;
    assert!(matches!(report, Err(QueueError::Conflict(_))));
    assert!(q.resolutions("T", 0).is_empty());
    assert!(q.stale_credential_calls().is_empty());
    assert_eq!(q.calls().len(), 4);
}
