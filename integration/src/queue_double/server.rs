//! The HTTP face of the double: actix-web routes under `/api/queue/v1` (one per endpoint of [`ROUTES`]),
//! `/api/object/v1` (one per endpoint of [`OBJECT_ROUTES`]) and `/api/index/v1` (one per endpoint of
//! [`INDEX_ROUTES`]) with the reply and error shapes of `libraries/api`, and the bucket's presigned-style
//! URLs under [`BUCKET_PREFIX`](super::storage::BUCKET_PREFIX).

use std::sync::Arc;

use actix_web::http::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::hawk::{Incoming, SignedRequest};
use super::index::INDEX_PREFIX;
use super::object::OBJECT_PREFIX;
use super::queue::{
    is_wildcard, ApiError, Body, Call, Caller, Core, Fault, Reply, INDEX_ROUTES, OBJECT_ROUTES, ROUTES,
};
use super::schemas::{INDEX, OBJECT, QUEUE};
use super::state::{fmt_time, now_ms};
use super::storage::BUCKET_PREFIX;

/// Where the Queue's API lives under the root URL.
pub const API_PREFIX: &str = "/api/queue/v1";

/// The largest body accepted (the Queue's `inputLimit`).
const INPUT_LIMIT: usize = 10 * 1024 * 1024;

/// An api.json route (`/task/<taskId>`) of `endpoint` of `service` as an actix-web path
/// (`/api/queue/v1/task/{taskId}`); wildcard parameters take the rest of the path, slashes included.
pub fn actix_path(service: &str, endpoint: &str, route: &str) -> String {
    let mut out = String::from(match service {
        OBJECT => OBJECT_PREFIX,
        INDEX => INDEX_PREFIX,
        _ => API_PREFIX,
    });
    let mut rest = route;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').map_or(rest.len(), |e| start + e);
        let name = &rest[start + 1..end];
        out.push_str(&rest[..start]);
        if is_wildcard(service, endpoint, name) {
            out.push_str(&format!("{{{name}:.*}}"));
        } else {
            out.push_str(&format!("{{{name}}}"));
        }
        rest = rest.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// An actix-web path with its parameter names left out (`/task/{}`), so that routes which differ only in
/// the names of their parameters (the Index service's `/task/<indexPath>` and `/task/<namespace>`) share
/// one resource: actix-web answers 405 for a method the first matching resource lacks, without trying
/// the next.
fn path_shape(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').map_or(rest.len(), |e| start + e);
        out.push_str(&rest[..start]);
        out.push_str(if rest[start..end].contains(':') {
            "{*}"
        } else {
            "{}"
        });
        rest = rest.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// Register every served endpoint and the bucket on an actix-web app.
pub fn configure(core: Arc<Core>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::PayloadConfig::new(INPUT_LIMIT));
        // One resource per path, one route per method on it (PUT and GET share /task/<taskId>).
        let served: Vec<(&'static str, &'static str, &'static str, String)> =
            [(QUEUE, ROUTES), (OBJECT, OBJECT_ROUTES), (INDEX, INDEX_ROUTES)]
                .into_iter()
                .flat_map(|(service, routes)| {
                    routes.iter().map(move |(name, method, route)| {
                        (service, *name, *method, actix_path(service, name, route))
                    })
                })
                .collect();
        let mut seen = std::collections::HashSet::new();
        for (_, _, _, path) in &served {
            let shape = path_shape(path);
            if !seen.insert(shape.clone()) {
                continue;
            }
            let mut resource = web::resource(path.as_str());
            for (_, name, method, _) in served.iter().filter(|(_, _, _, p)| path_shape(p) == shape) {
                let method = actix_web::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .expect("api.json methods are HTTP methods");
                let core = core.clone();
                let name: &'static str = name;
                resource =
                    resource.route(web::method(method).to(move |req: HttpRequest, body: web::Bytes| {
                        let core = core.clone();
                        async move { dispatch(core, name, req, body).await }
                    }));
            }
            cfg.service(resource);
        }
        let (put_core, get_core) = (core.clone(), core.clone());
        cfg.service(
            web::resource(format!("{BUCKET_PREFIX}/{{token}}"))
                .route(web::put().to(move |req: HttpRequest, payload: web::Payload| {
                    let core = put_core.clone();
                    async move {
                        let token = req.match_info().get("token").unwrap_or_default().to_string();
                        core.storage.put(&token, &req, payload).await
                    }
                }))
                .route(web::get().to(move |req: HttpRequest| {
                    let core = get_core.clone();
                    async move {
                        let token = req.match_info().get("token").unwrap_or_default().to_string();
                        core.storage.get(&token).await
                    }
                })),
        );
        cfg.default_service(web::to(|req: HttpRequest| async move {
            json_reply(
                StatusCode::NOT_FOUND,
                &json!({
                    "code": "ResourceNotFound",
                    "message": format!("{} {} is not an endpoint of the queue double", req.method(), req.path()),
                    "requestInfo": {"method": "", "params": {}, "payload": {}, "time": fmt_time(now_ms())},
                }),
            )
        }));
    }
}

fn json_reply(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json; charset=utf-8")
        .insert_header(("cache-control", "no-store no-cache must-revalidate"))
        .body(body.to_string())
}

/// The error shape of `express-error.js`, trailer included.
fn error_reply(name: &str, err: &ApiError, params: &Map<String, Value>, payload: &Value) -> HttpResponse {
    let status = err.status();
    let time = fmt_time(now_ms());
    let message = format!(
        "{}\n\n---\n\n* method:     {name}\n* errorCode:  {}\n* statusCode: {status}\n* time:       {time}",
        err.message, err.code
    );
    let body = json!({
        "code": err.code,
        "message": message,
        "requestInfo": {"method": name, "params": params, "payload": payload, "time": time},
    });
    let mut reply = json_reply(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    );
    if status == 401 {
        reply.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("hawk"),
        );
    }
    reply
}

/// A reply whose body fails before anything is written: actix-web then closes the connection without
/// sending a response.
pub fn dropped_connection() -> HttpResponse {
    let failing = futures_util::stream::once(async {
        Err::<web::Bytes, std::io::Error>(std::io::Error::other("queue double: dropping the connection"))
    });
    HttpResponse::Ok().streaming(failing)
}

fn header(headers: &HeaderMap, name: impl actix_web::http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The query string as Express's `qs` reads it (`+` is a space), pairs in order.
fn parse_query(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A [`Reply`] as an HTTP response.
fn http_reply(reply: Reply) -> HttpResponse {
    let mut builder =
        HttpResponse::build(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in &reply.headers {
        builder.insert_header((*name, value.as_str()));
    }
    match reply.body {
        Body::Json(v) => builder
            .content_type("application/json; charset=utf-8")
            .insert_header(("cache-control", "no-store no-cache must-revalidate"))
            .body(v.to_string()),
        Body::Text(t) => builder.content_type("text/plain; charset=utf-8").body(t),
        Body::Empty => builder.finish(),
    }
}

/// `type-is`'s `application/json` check, ignoring parameters.
fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Host and port as hawk's `parseHost` and the API library's forwarded-port handling see them.
fn host_and_port(headers: &HeaderMap) -> (String, u16) {
    let host = header(headers, HOST).unwrap_or_default().trim();
    let (name, port) = match host.strip_prefix('[') {
        // `[::1]:8080`
        Some(rest) => match rest.split_once(']') {
            Some((addr, tail)) => (
                format!("[{addr}]"),
                tail.strip_prefix(':').and_then(|p| p.parse().ok()),
            ),
            None => (host.to_string(), None),
        },
        None => match host.split_once(':') {
            Some((n, p)) => (n.to_string(), p.parse().ok()),
            None => (host.to_string(), None),
        },
    };
    let mut port: u16 = port.unwrap_or(80);
    if let Some(p) = header(headers, "x-forwarded-port").and_then(|p| p.trim().parse().ok()) {
        port = p;
    } else if header(headers, "x-forwarded-proto") == Some("https") {
        port = 443;
    }
    (name, port)
}

async fn dispatch(core: Arc<Core>, name: &'static str, req: HttpRequest, bytes: web::Bytes) -> HttpResponse {
    let entry = core.entry(name);
    let mut params = Map::new();
    for (i, arg) in entry.args.iter().enumerate() {
        // By name, or by position when the resource was registered with another endpoint's names.
        let raw = req
            .match_info()
            .get(arg)
            .or_else(|| req.match_info().iter().nth(i).map(|(_, v)| v))
            .unwrap_or_default();
        // `%2F` and a raw `/` both become `/` (flatten-params.js re-joins wildcard segments).
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned();
        params.insert(arg.clone(), Value::String(decoded));
    }
    match core.record_call(name) {
        Some(Fault::Fail) => {
            let err = ApiError::new(
                "InternalServerError",
                "Internal Server Error, incidentId queue-double-injected-fault.",
            );
            return error_reply(name, &err, &params, &json!({}));
        }
        Some(Fault::Drop) => return dropped_connection(),
        Some(Fault::Delay(d)) => actix_rt::time::sleep(d).await,
        None => {}
    }

    let headers = req.headers();
    let content_type = header(headers, CONTENT_TYPE);
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || header(headers, CONTENT_LENGTH).is_some_and(|l| l.trim().parse::<u64>().is_ok());
    let json_body = has_body && is_json(content_type);
    // parse.js: only a JSON content type is read; anything else is `{}` with an empty text.
    let (text, body): (&[u8], Value) = if json_body && !bytes.is_empty() {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v @ (Value::Object(_) | Value::Array(_))) => (&bytes, v),
            Ok(_) => {
                let err = ApiError::new(
                    "MalformedPayload",
                    "Failed to parse JSON: Must be an object or array",
                );
                return error_reply(name, &err, &params, &json!({}));
            }
            Err(e) => {
                let err = ApiError::new("MalformedPayload", format!("Failed to parse JSON: {e}"));
                return error_reply(name, &err, &params, &json!({}));
            }
        }
    } else {
        (&[], json!({}))
    };

    let (host, port) = host_and_port(headers);
    let resource = req
        .uri()
        .path_and_query()
        .map_or(req.path(), |pq| pq.as_str())
        .to_string();
    let has_bewit = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.split('=').next() == Some("bewit")));
    let auth = core.authenticate(&Incoming {
        request: SignedRequest {
            method: req.method().as_str(),
            resource: &resource,
            host: &host,
            port,
        },
        authorization: header(headers, actix_web::http::header::AUTHORIZATION),
        has_bewit,
        body_text: text,
        content_type,
    });

    let mut call = Call {
        entry,
        params: params.clone(),
        query: parse_query(req.query_string()),
        body,
        caller: Caller::Http(auth),
    };
    let result = async {
        core.prepare(&mut call, json_body)?;
        let reply = if name == "claimWork" {
            let (queue, wg, wid, count) = core.authorize_claim(&call)?;
            Reply::ok(core.claim_work(&queue, &wg, &wid, count).await)
        } else {
            core.handle_reply(&call)?
        };
        core.check_reply(entry, &reply)?;
        Ok::<Reply, ApiError>(reply)
    }
    .await;
    match result {
        Ok(reply) => http_reply(reply),
        Err(err) => error_reply(name, &err, &params, &call.body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_become_actix_paths() {
        assert_eq!(
            actix_path(QUEUE, "status", "/task/<taskId>/status"),
            "/api/queue/v1/task/{taskId}/status"
        );
        assert_eq!(
            actix_path(QUEUE, "claimWork", "/claim-work/<taskQueueId>"),
            "/api/queue/v1/claim-work/{taskQueueId:.*}"
        );
        assert_eq!(actix_path(QUEUE, "ping", "/ping"), "/api/queue/v1/ping");
        assert_eq!(
            actix_path(QUEUE, "getLatestArtifact", "/task/<taskId>/artifacts/<name>"),
            "/api/queue/v1/task/{taskId}/artifacts/{name:.*}"
        );
        assert_eq!(
            actix_path(OBJECT, "createUpload", "/upload/<name>"),
            "/api/object/v1/upload/{name}"
        );
        assert_eq!(
            actix_path(OBJECT, "download", "/download/<name>"),
            "/api/object/v1/download/{name:.*}"
        );
        assert_eq!(
            actix_path(INDEX, "findTask", "/task/<indexPath>"),
            "/api/index/v1/task/{indexPath}"
        );
    }

    #[test]
    fn paths_differing_only_in_parameter_names_share_a_shape() {
        assert_eq!(
            path_shape("/api/index/v1/task/{indexPath}"),
            path_shape("/api/index/v1/task/{namespace}")
        );
        assert_eq!(path_shape("/a/{name:.*}/b"), "/a/{*}/b");
        assert_ne!(path_shape("/a/{x}"), path_shape("/a/{x:.*}"));
    }

    #[test]
    fn query_strings_decode_like_qs() {
        assert_eq!(
            parse_query("limit=2&continuationToken=a%3D%3D&x=a+b&flag"),
            vec![
                ("limit".to_string(), "2".to_string()),
                ("continuationToken".to_string(), "a==".to_string()),
                ("x".to_string(), "a b".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn host_header_gives_host_and_port() {
        let mut h = HeaderMap::new();
        h.insert(HOST, "127.0.0.1:4321".parse().unwrap());
        assert_eq!(host_and_port(&h), ("127.0.0.1".to_string(), 4321));
        h.insert(HOST, "example.com".parse().unwrap());
        assert_eq!(host_and_port(&h), ("example.com".to_string(), 80));
    }
}
