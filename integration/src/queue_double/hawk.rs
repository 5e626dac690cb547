//! Hawk request verification and temporary credentials, as the Taskcluster auth service does them
//! (`services/auth/src/signaturevalidator.js` on top of the `hawk` 9 library) and as the Queue issues
//! them (`services/queue/src/task-creds.js`, `createTemporaryCredentials` in the JS client).

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::scopes;

type HmacSha256 = Hmac<Sha256>;

/// Hawk's limit on the Authorization header and the Host header.
const MAX_MATCH_LENGTH: usize = 4096;
/// The auth service accepts timestamps this far from its clock.
const TIMESTAMP_SKEW_MS: i64 = 15 * 60 * 1000;
/// Certificates are accepted this long before their start and after their expiry.
const CERT_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// The scopes every caller holds through the recommended anonymous role
/// (`ui/docs/manual/deploying/anonymous-role.mdx`), as far as the double's endpoints need them. That
/// role grants no `object:` scopes.
pub const ANONYMOUS_SCOPES: &[&str] = &[
    "assume:anonymous",
    "queue:get-task:*",
    "queue:status:*",
    "queue:get-artifact:public/*",
    "queue:list-artifacts:*",
    "index:find-task:*",
];

/// A permanent client.
#[derive(Debug, Clone)]
pub struct Client {
    /// The secret.
    pub access_token: String,
    /// Its scopes, already expanded.
    pub scopes: Vec<String>,
}

/// Credentials as the Queue hands them out: `certificate` is a JSON string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempCredentials {
    /// `task-client/...`
    pub client_id: String,
    /// Derived from the certificate seed.
    pub access_token: String,
    /// The certificate, serialized.
    pub certificate: String,
}

impl TempCredentials {
    /// The `task-credentials.json` shape.
    pub fn to_json(&self) -> Value {
        json!({"clientId": self.client_id, "accessToken": self.access_token, "certificate": self.certificate})
    }
}

fn hmac_sha256(key: &str, data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A slugid: a v4 UUID in URL-safe base64 without padding, its first bit cleared (a "nice" slugid,
/// which never starts with `-`).
pub fn slugid() -> String {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    URL_SAFE_NO_PAD.encode(bytes)
}

fn certificate_signature(
    issuer_token: &str,
    client_id: Option<(&str, &str)>,
    seed: &str,
    start: i64,
    expiry: i64,
    scopes: &[String],
) -> String {
    let mut lines = vec!["version:1".to_string()];
    if let Some((client_id, issuer)) = client_id {
        lines.push(format!("clientId:{client_id}"));
        lines.push(format!("issuer:{issuer}"));
    }
    lines.push(format!("seed:{seed}"));
    lines.push(format!("start:{start}"));
    lines.push(format!("expiry:{expiry}"));
    lines.push("scopes:".to_string());
    lines.extend(scopes.iter().cloned());
    STANDARD.encode(hmac_sha256(issuer_token, lines.join("\n").as_bytes()))
}

fn temporary_token(issuer_token: &str, seed: &str) -> String {
    URL_SAFE_NO_PAD.encode(hmac_sha256(issuer_token, seed.as_bytes()))
}

/// Named temporary credentials `client_id`, issued by `issuer`, as `createTemporaryCredentials` makes them.
pub fn issue_temp_credentials(
    issuer_id: &str,
    issuer_token: &str,
    client_id: &str,
    scopes: &[String],
    start: DateTime<Utc>,
    expiry: DateTime<Utc>,
) -> TempCredentials {
    let seed = format!("{}{}", slugid(), slugid());
    let (start, expiry) = (start.timestamp_millis(), expiry.timestamp_millis());
    let signature = certificate_signature(
        issuer_token,
        Some((client_id, issuer_id)),
        &seed,
        start,
        expiry,
        scopes,
    );
    let certificate = json!({
        "version": 1,
        "scopes": scopes,
        "start": start,
        "expiry": expiry,
        "seed": seed,
        "signature": signature,
        "issuer": issuer_id,
    });
    TempCredentials {
        client_id: client_id.to_string(),
        access_token: temporary_token(issuer_token, &seed),
        certificate: certificate.to_string(),
    }
}

/// The parsed attributes of a Hawk Authorization header.
#[derive(Debug, Default)]
pub struct Attributes {
    map: BTreeMap<String, String>,
}

impl Attributes {
    fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }
}

fn attribute_value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.chars().all(|c| {
            c == ' ' || c.is_ascii_alphanumeric() || c == '_' || "!#$%&'()*+,-./:;<=>?@[]^`{|}~".contains(c)
        })
}

/// Parse `Hawk id="…", ts="…", …` as hawk's `parseAuthorizationHeader` does.
pub fn parse_header(header: &str) -> Result<Attributes, String> {
    const KEYS: &[&str] = &["id", "ts", "nonce", "hash", "ext", "mac", "app", "dlg"];
    if header.len() > MAX_MATCH_LENGTH {
        return Err("Header length too long".into());
    }
    let (scheme, rest) = match header.find(char::is_whitespace) {
        Some(i) => (&header[..i], header[i..].trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("Invalid header syntax".into());
    }
    if !scheme.eq_ignore_ascii_case("hawk") {
        return Err("Unauthorized".into());
    }
    if rest.is_empty() {
        return Err("Invalid header syntax".into());
    }
    let mut attrs = Attributes::default();
    let mut s = rest;
    while !s.is_empty() {
        // (\w+)="([^"\\]*)"\s*(?:,\s*|$)
        let name_len = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        let name = &s[..name_len];
        let after = &s[name_len..];
        let Some(value_start) = after.strip_prefix("=\"").filter(|_| name_len > 0) else {
            return Err("Bad header format".into());
        };
        let Some(end) = value_start.find(['"', '\\']) else {
            return Err("Bad header format".into());
        };
        if value_start.as_bytes()[end] != b'"' {
            return Err("Bad header format".into());
        }
        let value = &value_start[..end];
        let mut tail = value_start[end + 1..].trim_start();
        if let Some(t) = tail.strip_prefix(',') {
            tail = t.trim_start();
        } else if !tail.is_empty() {
            return Err("Bad header format".into());
        }
        if !KEYS.contains(&name) {
            return Err(format!("Unknown attribute: {name}"));
        }
        if !attribute_value_ok(value) {
            return Err(format!("Bad attribute value: {name}"));
        }
        if attrs.map.insert(name.to_string(), value.to_string()).is_some() {
            return Err(format!("Duplicate attribute: {name}"));
        }
        s = tail;
    }
    Ok(attrs)
}

/// The Hawk payload hash: base64 SHA-256 of `hawk.1.payload\n<content type>\n<payload>\n`.
pub fn payload_hash(payload: &[u8], content_type: Option<&str>) -> String {
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"hawk.1.payload\n");
    h.update(ct.as_bytes());
    h.update(b"\n");
    h.update(payload);
    h.update(b"\n");
    STANDARD.encode(h.finalize())
}

/// What is signed: the request as the server sees it.
#[derive(Debug, Clone)]
pub struct SignedRequest<'a> {
    /// HTTP method, any case.
    pub method: &'a str,
    /// Path and query, exactly as sent.
    pub resource: &'a str,
    /// Host name from the Host header.
    pub host: &'a str,
    /// Port from the Host header (or the scheme default).
    pub port: u16,
}

/// The MAC of a Hawk header (`hawk.1.header` normalized string).
#[allow(clippy::too_many_arguments)]
pub fn header_mac(
    key: &str,
    req: &SignedRequest<'_>,
    ts: &str,
    nonce: &str,
    hash: Option<&str>,
    ext: Option<&str>,
    app: Option<&str>,
    dlg: Option<&str>,
) -> String {
    let mut normalized = format!(
        "hawk.1.header\n{ts}\n{nonce}\n{}\n{}\n{}\n{}\n{}\n",
        req.method.to_ascii_uppercase(),
        req.resource,
        req.host.to_ascii_lowercase(),
        req.port,
        hash.unwrap_or("")
    );
    if let Some(ext) = ext {
        normalized.push_str(&ext.replace('\\', "\\\\").replace('\n', "\\n"));
    }
    normalized.push('\n');
    if let Some(app) = app {
        normalized.push_str(&format!("{app}\n{}\n", dlg.unwrap_or("")));
    }
    STANDARD.encode(hmac_sha256(key, normalized.as_bytes()))
}

/// The outcome of authenticating a request.
#[derive(Debug, Clone)]
pub enum AuthResult {
    /// No Authorization header: the anonymous role.
    NoAuth,
    /// A valid signature.
    Success {
        /// The clientId in the header.
        client_id: String,
        /// Its scopes (plus the anonymous role).
        scopes: Vec<String>,
    },
    /// Anything else; the message says why.
    Failed(String),
}

impl AuthResult {
    /// The scopes the caller holds.
    pub fn scopes(&self) -> Vec<String> {
        match self {
            AuthResult::NoAuth => ANONYMOUS_SCOPES.iter().map(|s| s.to_string()).collect(),
            AuthResult::Success { scopes, .. } => scopes.clone(),
            AuthResult::Failed(_) => vec![],
        }
    }
}

/// Node's `Buffer.from(s, 'base64')` accepts both alphabets, with or without padding.
pub(crate) fn lenient_base64(s: &str) -> Option<Vec<u8>> {
    let cleaned: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let engine = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    engine.decode(cleaned).ok()
}

struct Loaded {
    key: String,
    scopes: Vec<String>,
}

fn merge_anonymous(mut scopes: Vec<String>) -> Vec<String> {
    for s in ANONYMOUS_SCOPES {
        if !scopes.iter().any(|have| have == s) {
            scopes.push(s.to_string());
        }
    }
    scopes
}

/// `loadCredentials` and `limitClientWithExt` of the auth service.
fn load_credentials(
    clients: &HashMap<String, Client>,
    credential_name: &str,
    ext: Option<&str>,
    now_ms: i64,
) -> Result<Loaded, String> {
    let ext: Option<Value> = match ext {
        None => None,
        Some(raw) => {
            let bytes = lenient_base64(raw).ok_or("Failed to parse ext")?;
            Some(serde_json::from_slice(&bytes).map_err(|_| "Failed to parse ext")?)
        }
    };
    let mut issuing = credential_name.to_string();
    if let Some(issuer) = ext
        .as_ref()
        .and_then(|e| e.get("certificate"))
        .and_then(|c| c.get("issuer"))
    {
        if !issuer.is_null() && issuer != &Value::Bool(false) && issuer != "" {
            let issuer = issuer.as_str().ok_or("ext.certificate.issuer must be a string")?;
            if issuer == credential_name {
                return Err("ext.certificate.issuer must differ from the supplied clientId".into());
            }
            issuing = issuer.to_string();
        }
    }
    let client = clients
        .get(&issuing)
        .ok_or_else(|| format!("Client with clientId '{issuing}' not found"))?;
    let mut key = client.access_token.clone();
    let mut held = client.scopes.clone();

    if let Some(ext) = &ext {
        if let Some(cert) = ext.get("certificate").filter(|c| !c.is_null()) {
            let cert = cert.as_object().ok_or("ext.certificate must be a JSON object")?;
            if cert.get("version") != Some(&json!(1)) {
                return Err("ext.certificate.version must be 1".into());
            }
            let seed = cert
                .get("seed")
                .and_then(Value::as_str)
                .ok_or("ext.certificate.seed must be a string")?;
            if seed.chars().count() != 44 {
                return Err("ext.certificate.seed must be 44 characters".into());
            }
            let start = cert
                .get("start")
                .and_then(Value::as_f64)
                .ok_or("ext.certificate.start must be a number")?;
            let expiry = cert
                .get("expiry")
                .and_then(Value::as_f64)
                .ok_or("ext.certificate.expiry must be a number")?;
            let cert_scopes: Vec<String> = cert
                .get("scopes")
                .and_then(Value::as_array)
                .ok_or("ext.certificate.scopes must be an array")?
                .iter()
                .map(|s| s.as_str().filter(|s| scopes::valid_scope(s)).map(str::to_string))
                .collect::<Option<_>>()
                .ok_or("ext.certificate.scopes must be an array of valid scopes")?;
            if start > (now_ms + CERT_TOLERANCE_MS) as f64 {
                return Err("ext.certificate.start > now".into());
            }
            if expiry < (now_ms - CERT_TOLERANCE_MS) as f64 {
                return Err("ext.certificate.expiry < now".into());
            }
            if expiry - start > 31.0 * 24.0 * 3600.0 * 1000.0 {
                return Err("ext.certificate cannot last longer than 31 days!".into());
            }
            if issuing != credential_name {
                let create = format!("auth:create-client:{credential_name}");
                if !held.iter().any(|h| scopes::grants(h, &create)) {
                    return Err(format!(
                        "ext.certificate issuer `{issuing}` doesn't have `{create}` for supplied clientId."
                    ));
                }
            } else if cert.contains_key("clientId") {
                return Err("ext.certificate.clientId must only be used with ext.certificate.issuer".into());
            }
            if !cert_scopes
                .iter()
                .all(|need| held.iter().any(|h| scopes::grants(h, need)))
            {
                return Err(format!(
                    "ext.certificate issuer `{issuing}` doesn't satisfy all certificate scopes {}.  The \
                     temporary credentials were not generated correctly.",
                    cert_scopes.join(", ")
                ));
            }
            let named = (issuing != credential_name).then_some((credential_name, issuing.as_str()));
            // Numbers are rendered as JavaScript would: integral millisecond values.
            let expected = certificate_signature(
                &client.access_token,
                named,
                seed,
                start as i64,
                expiry as i64,
                &cert_scopes,
            );
            let given = cert.get("signature").and_then(Value::as_str).unwrap_or("");
            if given.len() != expected.len() || !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Err(if named.is_some() {
                    "ext.certificate.signature is not valid, or wrong clientId provided".into()
                } else {
                    "ext.certificate.signature is not valid".into()
                });
            }
            key = temporary_token(&client.access_token, seed);
            held = cert_scopes;
        }
        if let Some(authorized) = ext.get("authorizedScopes").filter(|a| !a.is_null()) {
            let authorized: Vec<String> = authorized
                .as_array()
                .ok_or("ext.authorizedScopes must be an array")?
                .iter()
                .map(|s| s.as_str().filter(|s| scopes::valid_scope(s)).map(str::to_string))
                .collect::<Option<_>>()
                .ok_or("ext.authorizedScopes must be an array of valid scopes")?;
            let with_anonymous = merge_anonymous(held.clone());
            if !authorized
                .iter()
                .all(|need| with_anonymous.iter().any(|h| scopes::grants(h, need)))
            {
                return Err(format!(
                    "Supplied credentials do not satisfy authorizedScopes; credentials have scopes:\n\n```\n{}\n\
                     ```\n\nauthorizedScopes are:\n\n```\n{}\n```",
                    with_anonymous.join("\n"),
                    authorized.join("\n")
                ));
            }
            held = authorized;
        }
    }
    Ok(Loaded {
        key,
        scopes: merge_anonymous(held),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Everything about a request that authentication looks at.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    /// The signed parts.
    pub request: SignedRequest<'a>,
    /// The Authorization header, if any.
    pub authorization: Option<&'a str>,
    /// Whether the query string carries a bewit.
    pub has_bewit: bool,
    /// The body text the server parsed (empty unless it was JSON).
    pub body_text: &'a [u8],
    /// The Content-Type header.
    pub content_type: Option<&'a str>,
}

/// Authenticate a request: the auth service's `authenticateHawk` plus the API library's payload hash
/// check.
pub fn authenticate(clients: &HashMap<String, Client>, req: &Incoming<'_>, now: DateTime<Utc>) -> AuthResult {
    if req.authorization.is_some() && req.has_bewit {
        return AuthResult::Failed(
            "Cannot use two authentication schemes at once this request has both bewit in querystring and \
             'authorization' header"
                .into(),
        );
    }
    let Some(header) = req.authorization else {
        if req.has_bewit {
            return AuthResult::Failed(
                "the queue double does not accept bewit (signed URL) authentication".into(),
            );
        }
        return AuthResult::NoAuth;
    };
    let now_ms = now.timestamp_millis();
    let attrs = match parse_header(header) {
        Ok(a) => a,
        Err(e) => return AuthResult::Failed(e),
    };
    let (Some(id), Some(ts), Some(nonce), Some(mac)) = (
        attrs.get("id"),
        attrs.get("ts"),
        attrs.get("nonce"),
        attrs.get("mac"),
    ) else {
        return AuthResult::Failed("Missing attributes".into());
    };
    let loaded = match load_credentials(clients, id, attrs.get("ext"), now_ms) {
        Ok(l) => l,
        Err(e) => return AuthResult::Failed(e),
    };
    let expected = header_mac(
        &loaded.key,
        &req.request,
        ts,
        nonce,
        attrs.get("hash"),
        attrs.get("ext"),
        attrs.get("app"),
        attrs.get("dlg"),
    );
    if !constant_time_eq(expected.as_bytes(), mac.as_bytes()) {
        return AuthResult::Failed("Unauthorized: Bad mac".into());
    }
    let ts_ms = ts.parse::<f64>().map(|t| t * 1000.0).unwrap_or(f64::NAN);
    if ts_ms.is_nan() || (ts_ms - now_ms as f64).abs() > TIMESTAMP_SKEW_MS as f64 {
        return AuthResult::Failed("Unauthorized: Stale timestamp".into());
    }
    if let Some(hash) = attrs.get("hash") {
        let computed = payload_hash(req.body_text, req.content_type);
        if !constant_time_eq(hash.as_bytes(), computed.as_bytes()) {
            return AuthResult::Failed(format!(
                "Invalid payload hash: {hash}\nComputed payload hash: {computed}\nThis happens when your \
                 request carries a signed hash of the payload and the hash doesn't match the hash we've \
                 computed on the server-side."
            ));
        }
    }
    AuthResult::Success {
        client_id: id.to_string(),
        scopes: loaded.scopes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_header_and_rejects_junk() {
        let a = parse_header(r#"Hawk id="c", ts="1", nonce="n", mac="m=", ext="e""#).unwrap();
        assert_eq!(a.get("mac"), Some("m="));
        assert_eq!(a.get("ext"), Some("e"));
        assert!(parse_header(r#"Hawk id="c", id="d""#)
            .unwrap_err()
            .starts_with("Duplicate"));
        assert!(parse_header(r#"Hawk foo="c""#)
            .unwrap_err()
            .starts_with("Unknown attribute"));
        assert!(parse_header(r#"Hawk id="c" junk"#).is_err());
        assert!(parse_header("Basic abc").is_err());
    }

    #[test]
    fn slugids_match_the_task_id_pattern() {
        for _ in 0..200 {
            let s = slugid();
            let b = s.as_bytes();
            assert_eq!(s.len(), 22);
            assert!(b"QRST".contains(&b[8]), "{s}");
            assert!(b"CGKOSWaeimquy26-".contains(&b[10]), "{s}");
            assert!(b"AQgw".contains(&b[21]), "{s}");
            assert_ne!(b[0], b'-');
        }
    }

    #[test]
    fn temporary_credentials_verify_against_their_issuer() {
        let mut clients = HashMap::new();
        clients.insert(
            "issuer".to_string(),
            Client {
                access_token: "secret".into(),
                scopes: vec!["*".into()],
            },
        );
        let now = Utc::now();
        let creds = issue_temp_credentials(
            "issuer",
            "secret",
            "task-client/x",
            &["a:b".to_string()],
            now,
            now + chrono::Duration::minutes(5),
        );
        let cert: Value = serde_json::from_str(&creds.certificate).unwrap();
        let ext = URL_SAFE_NO_PAD.encode(json!({"certificate": cert}).to_string());
        let loaded = load_credentials(&clients, "task-client/x", Some(&ext), now.timestamp_millis()).unwrap();
        assert_eq!(loaded.key, creds.access_token);
        assert!(loaded.scopes.contains(&"a:b".to_string()));
        let err = load_credentials(&clients, "task-client/y", Some(&ext), now.timestamp_millis()).err();
        assert!(err.unwrap().contains("signature is not valid"));
    }
}
