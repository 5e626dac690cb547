//! Hawk request signing as Taskcluster uses it: HMAC-SHA256 over Hawk's normalized string, with the
//! certificate of temporary credentials carried in `ext`.
//!
//! `ext` is what the official Python client sends: the URL-safe base64 (with padding) of the compact
//! JSON `{"certificate": <object>}`, or of `{}` for permanent credentials. The auth service decodes it
//! with Node's base64 decoder, which takes either alphabet.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::Url;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use sha2::{Digest, Sha256};

use super::Credentials;

/// Signing or checking a Hawk header failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HawkError {
    /// Temporary credentials whose certificate is not a JSON object.
    #[error("the certificate of client {client_id} is not a JSON object: {reason}")]
    BadCertificate {
        /// The client id of the credentials.
        client_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A URL without a host or a known port.
    #[error("cannot sign a request to {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is missing.
        reason: String,
    },
    /// A value that may not appear in a Hawk header attribute.
    #[error("the Hawk attribute {name} has a character Hawk does not allow: {value:?}")]
    BadAttribute {
        /// The attribute, e.g. `id`.
        name: &'static str,
        /// Its value (never a secret: ids, nonces, hashes, ext).
        value: String,
    },
    /// A header that is not a well-formed Hawk header.
    #[error("not a Hawk header: {0}")]
    Malformed(String),
}

/// Everything a Hawk request MAC covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Artifacts<'a> {
    /// The HTTP method, upper case.
    pub method: &'a str,
    /// The path and query exactly as sent, e.g. `/api/queue/v1/claim-work/p%2Fw`.
    pub resource: &'a str,
    /// The host as in the URL.
    pub host: &'a str,
    /// The port, or the scheme's default.
    pub port: u16,
    /// Seconds since the epoch.
    pub ts: u64,
    /// A random string that makes the request unique.
    pub nonce: &'a str,
    /// The payload hash, when the request signs its body.
    pub hash: Option<&'a str>,
    /// The application data (Taskcluster: the certificate and authorized scopes).
    pub ext: Option<&'a str>,
}

/// Hawk's normalized string for a request header MAC.
pub fn normalized_string(a: &Artifacts<'_>) -> String {
    format!(
        "hawk.1.header\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        a.ts,
        a.nonce,
        a.method.to_ascii_uppercase(),
        a.resource,
        a.host.to_ascii_lowercase(),
        a.port,
        a.hash.unwrap_or(""),
        a.ext.unwrap_or(""),
    )
}

/// The base64 HMAC-SHA256 of the normalized string, keyed with the access token.
pub fn mac(access_token: &str, a: &Artifacts<'_>) -> String {
    let mut m =
        Hmac::<Sha256>::new_from_slice(access_token.as_bytes()).expect("HMAC takes a key of any length");
    m.update(normalized_string(a).as_bytes());
    STANDARD.encode(m.finalize().into_bytes())
}

/// Hawk's payload hash of a body sent with `content_type` (its parameters and case are ignored).
pub fn payload_hash(content_type: &str, body: &[u8]) -> String {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut h = Sha256::new();
    h.update(b"hawk.1.payload\n");
    h.update(mime.as_bytes());
    h.update(b"\n");
    h.update(body);
    h.update(b"\n");
    STANDARD.encode(h.finalize())
}

/// The `ext` Taskcluster expects: `{"certificate": <object>}` for temporary credentials, `{}` otherwise.
///
/// The certificate arrives as a JSON string; it is parsed and re-emitted compactly with its keys in
/// their original order, as the official clients do.
pub fn ext(credentials: &Credentials) -> Result<String, HawkError> {
    let json = match &credentials.certificate {
        None => "{}".to_string(),
        Some(text) => {
            let bad = |reason: String| HawkError::BadCertificate {
                client_id: credentials.client_id.clone(),
                reason,
            };
            let cert: OrderedJson = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
            if !matches!(cert, OrderedJson::Object(_)) {
                return Err(bad("it is not an object".to_string()));
            }
            let cert = serde_json::to_string(&cert).map_err(|e| bad(e.to_string()))?;
            format!("{{\"certificate\":{cert}}}")
        }
    };
    Ok(URL_SAFE.encode(json))
}

/// The `Authorization` header value for a request, with an explicit timestamp and nonce.
///
/// `payload_hash` is [`payload_hash`] of the body, or `None` to leave the body unsigned.
pub fn header_at(
    credentials: &Credentials,
    method: &str,
    url: &Url,
    payload_hash: Option<&str>,
    ts: u64,
    nonce: &str,
) -> Result<String, HawkError> {
    let bad_url = |reason: &str| HawkError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let host = url.host_str().ok_or_else(|| bad_url("it has no host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| bad_url("its scheme has no known port"))?;
    let resource = match url.query() {
        Some(q) => format!("{}?{}", url.path(), q),
        None => url.path().to_string(),
    };
    let ext = ext(credentials)?;
    let artifacts = Artifacts {
        method,
        resource: &resource,
        host,
        port,
        ts,
        nonce,
        hash: payload_hash,
        ext: Some(&ext),
    };
    let mac = mac(&credentials.access_token, &artifacts);
    HawkHeader {
        id: credentials.client_id.clone(),
        ts,
        nonce: nonce.to_string(),
        hash: payload_hash.map(str::to_string),
        ext: Some(ext),
        mac,
    }
    .to_header()
}

/// The `Authorization` header value for a request made now, with a fresh random nonce.
pub fn header(
    credentials: &Credentials,
    method: &str,
    url: &Url,
    payload_hash: Option<&str>,
) -> Result<String, HawkError> {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    header_at(credentials, method, url, payload_hash, ts, &random_nonce())
}

/// Eight URL-safe characters from 48 random bits.
fn random_nonce() -> String {
    // The first six bytes of a v4 UUID are all random.
    let bytes = uuid::Uuid::new_v4().into_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..6])
}

/// The attributes of a request's Hawk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HawkHeader {
    /// The client id.
    pub id: String,
    /// Seconds since the epoch.
    pub ts: u64,
    /// The nonce.
    pub nonce: String,
    /// The payload hash, if the body is signed.
    pub hash: Option<String>,
    /// The application data.
    pub ext: Option<String>,
    /// The MAC.
    pub mac: String,
}

impl HawkHeader {
    /// The header value, `Hawk id="…", ts="…", nonce="…", [hash="…", ][ext="…", ]mac="…"`.
    pub fn to_header(&self) -> Result<String, HawkError> {
        let mut out = String::from("Hawk ");
        let mut attr = |name: &'static str, value: &str, last: bool| -> Result<(), HawkError> {
            if !value.chars().all(allowed_in_attribute) {
                return Err(HawkError::BadAttribute {
                    name,
                    value: value.to_string(),
                });
            }
            let _ = write!(out, "{name}=\"{value}\"{}", if last { "" } else { ", " });
            Ok(())
        };
        attr("id", &self.id, false)?;
        attr("ts", &self.ts.to_string(), false)?;
        attr("nonce", &self.nonce, false)?;
        if let Some(hash) = &self.hash {
            attr("hash", hash, false)?;
        }
        if let Some(ext) = &self.ext {
            attr("ext", ext, false)?;
        }
        attr("mac", &self.mac, true)?;
        Ok(out)
    }

    /// Parse an `Authorization` header value (attributes in any order).
    pub fn parse(value: &str) -> Result<HawkHeader, HawkError> {
        let malformed = |why: &str| HawkError::Malformed(why.to_string());
        let rest = value
            .trim()
            .strip_prefix("Hawk ")
            .ok_or_else(|| malformed("it does not start with `Hawk `"))?;
        let mut attrs: Vec<(String, String)> = Vec::new();
        let mut rest = rest.trim_start();
        while !rest.is_empty() {
            let eq = rest
                .find("=\"")
                .ok_or_else(|| malformed("an attribute has no =\"…\""))?;
            let name = rest[..eq].trim().to_string();
            let after = &rest[eq + 2..];
            let close = after
                .find('"')
                .ok_or_else(|| malformed("an attribute value is not closed"))?;
            if attrs.iter().any(|(n, _)| *n == name) {
                return Err(HawkError::Malformed(format!("attribute {name} appears twice")));
            }
            attrs.push((name, after[..close].to_string()));
            rest = after[close + 1..].trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        }
        let mut take = |name: &str| {
            attrs
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| attrs.remove(i).1)
        };
        let id = take("id").ok_or_else(|| malformed("no id"))?;
        let ts = take("ts")
            .ok_or_else(|| malformed("no ts"))?
            .parse::<u64>()
            .map_err(|_| malformed("ts is not a number"))?;
        let nonce = take("nonce").ok_or_else(|| malformed("no nonce"))?;
        let hash = take("hash");
        let ext = take("ext");
        let mac = take("mac").ok_or_else(|| malformed("no mac"))?;
        if let Some((name, _)) = attrs.first() {
            return Err(HawkError::Malformed(format!("unknown attribute {name}")));
        }
        Ok(HawkHeader {
            id,
            ts,
            nonce,
            hash,
            ext,
            mac,
        })
    }

    /// Whether the MAC is right for this request under `access_token` (a server's check; it does
    /// not look at the clock, the nonce or the payload hash).
    pub fn verify(&self, access_token: &str, method: &str, resource: &str, host: &str, port: u16) -> bool {
        let expected = mac(
            access_token,
            &Artifacts {
                method,
                resource,
                host,
                port,
                ts: self.ts,
                nonce: &self.nonce,
                hash: self.hash.as_deref(),
                ext: self.ext.as_deref(),
            },
        );
        // Compare without an early exit, so timing does not reveal a prefix of the right MAC.
        expected.len() == self.mac.len()
            && expected
                .bytes()
                .zip(self.mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The JSON that `ext` carries (either base64 alphabet), if any.
    pub fn ext_json(&self) -> Result<Option<serde_json::Value>, HawkError> {
        let Some(ext) = &self.ext else { return Ok(None) };
        let standard: String = ext
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        let standard = standard.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(standard)
            .map_err(|e| HawkError::Malformed(format!("ext is not base64: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| HawkError::Malformed(format!("ext is not JSON: {e}")))
    }
}

/// Hawk's attribute alphabet: printable ASCII except `"` and `\`.
fn allowed_in_attribute(c: char) -> bool {
    c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\')
}

/// JSON that keeps the order of object keys, so a certificate is re-emitted as it came.
enum OrderedJson {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<OrderedJson>),
    Object(Vec<(String, OrderedJson)>),
}

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OrderedJson, E> {
                serde_json::Number::from_f64(v)
                    .map(OrderedJson::Number)
                    .ok_or_else(|| E::custom("a number JSON cannot hold"))
            }
            fn visit_str<E>(self, v: &str) -> Result<OrderedJson, E> {
                Ok(OrderedJson::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<OrderedJson, E> {
                Ok(OrderedJson::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedJson, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OrderedJson::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedJson, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedJson::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for OrderedJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OrderedJson::Null => s.serialize_unit(),
            OrderedJson::Bool(b) => s.serialize_bool(*b),
            OrderedJson::Number(n) => n.serialize(s),
            OrderedJson::String(v) => s.serialize_str(v),
            OrderedJson::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            OrderedJson::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(id: &str, key: &str, certificate: Option<&str>) -> Credentials {
        Credentials {
            client_id: id.to_string(),
            access_token: key.to_string(),
            certificate: certificate.map(str::to_string),
        }
    }

    // The vectors of the Hawk README and of its test suite (hueniverse/hawk, test/client.js):
    // id dh37fgj492je, key werxhqb98rpaxn39848xrunpaw3489ruxnpa98w4rxn, sha256.
    const KEY: &str = "werxhqb98rpaxn39848xrunpaw3489ruxnpa98w4rxn";

    #[test]
    fn spec_vector_get_with_ext() {
        let a = Artifacts {
            method: "GET",
            resource: "/resource/1?b=1&a=2",
            host: "example.com",
            port: 8000,
            ts: 1353832234,
            nonce: "j4h3g2",
            hash: None,
            ext: Some("some-app-ext-data"),
        };
        let mac = mac(KEY, &a);
        assert_eq!(mac, "6R4rV5iE+NPoym+WwjeHzjAGXUtLNIxmo1vpMofpLAE=");
        let header = HawkHeader {
            id: "dh37fgj492je".into(),
            ts: a.ts,
            nonce: a.nonce.into(),
            hash: None,
            ext: a.ext.map(Into::into),
            mac,
        };
        assert_eq!(
            header.to_header().unwrap(),
            r#"Hawk id="dh37fgj492je", ts="1353832234", nonce="j4h3g2", ext="some-app-ext-data", mac="6R4rV5iE+NPoym+WwjeHzjAGXUtLNIxmo1vpMofpLAE=""#
        );
    }

    #[test]
    fn spec_vector_post_with_payload() {
        let hash = payload_hash("text/plain", b"Thank you for flying Hawk");
        assert_eq!(hash, "Yi9LfIIFRtBEPt74PVmbTF/xVAwPn7ub15ePICfgnuY=");
        let a = Artifacts {
            method: "POST",
            resource: "/resource/1?b=1&a=2",
            host: "example.com",
            port: 8000,
            ts: 1353832234,
            nonce: "j4h3g2",
            hash: Some(&hash),
            ext: Some("some-app-ext-data"),
        };
        assert_eq!(mac(KEY, &a), "aSe1DERmZuRl3pI36/9BdZmnErTw3sNzOOAUlfeKjVw=");
    }

    #[test]
    fn payload_hash_ignores_content_type_parameters_and_case() {
        assert_eq!(
            payload_hash("Text/Plain; charset=utf-8", b"Thank you for flying Hawk"),
            payload_hash("text/plain", b"Thank you for flying Hawk"),
        );
    }

    #[test]
    fn header_round_trips_and_verifies() {
        let url = Url::parse("https://tc.example.com/api/queue/v1/claim-work/p%2Fw?x=1").unwrap();
        let c = creds("worker/1", KEY, None);
        let hash = payload_hash("application/json", b"{}");
        let value = header_at(&c, "POST", &url, Some(&hash), 1353832234, "abc123").unwrap();
        assert!(value.starts_with("Hawk id=\"worker/1\", ts=\"1353832234\", nonce=\"abc123\", hash=\""));
        let parsed = HawkHeader::parse(&value).unwrap();
        assert_eq!(parsed.to_header().unwrap(), value);
        assert!(parsed.verify(
            KEY,
            "POST",
            "/api/queue/v1/claim-work/p%2Fw?x=1",
            "tc.example.com",
            443
        ));
        assert!(!parsed.verify(
            KEY,
            "POST",
            "/api/queue/v1/claim-work/p/w?x=1",
            "tc.example.com",
            443
        ));
        assert!(!parsed.verify(
            "other",
            "POST",
            "/api/queue/v1/claim-work/p%2Fw?x=1",
            "tc.example.com",
            443
        ));
        assert_eq!(parsed.ext_json().unwrap(), Some(serde_json::json!({})));
    }

    #[test]
    fn temporary_credentials_carry_the_certificate_as_an_object_in_order() {
        let cert = r#"{"version":1,"scopes":["queue:a","b"],"start":1,"expiry":2,"seed":"s","signature":"x+/=","issuer":"i"}"#;
        let e = ext(&creds("task-client/x", KEY, Some(cert))).unwrap();
        let json = String::from_utf8(URL_SAFE.decode(&e).unwrap()).unwrap();
        assert_eq!(json, format!("{{\"certificate\":{cert}}}"));
        let spaced = "{ \"version\" : 1,\n \"scopes\": [] }";
        let e = ext(&creds("task-client/x", KEY, Some(spaced))).unwrap();
        assert_eq!(
            URL_SAFE.decode(e).unwrap(),
            br#"{"certificate":{"version":1,"scopes":[]}}"#
        );
    }

    #[test]
    fn a_certificate_that_is_not_an_object_is_an_error() {
        for bad in ["not json", "[1]", "\"string\""] {
            let err = ext(&creds("task-client/x", KEY, Some(bad))).unwrap_err();
            assert!(matches!(err, HawkError::BadCertificate { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn a_client_id_with_a_quote_cannot_be_signed() {
        let url = Url::parse("https://tc.example.com/x").unwrap();
        let err = header_at(&creds("a\"b", KEY, None), "GET", &url, None, 1, "n").unwrap_err();
        assert!(matches!(err, HawkError::BadAttribute { name: "id", .. }), "{err}");
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(random_nonce(), random_nonce());
        assert_eq!(random_nonce().len(), 8);
    }
}
