//! The storage behind artifacts and objects: a bucket of blobs in a temporary directory the double owns,
//! reached through unguessable, expiring URLs the way an S3 bucket is reached through presigned URLs.
//! The Queue hands out such a URL as an `s3` artifact's `putUrl` and as the download URL of `s3`
//! artifacts; the Object service hands one out for a `putUrl` upload and for a `simple` download.
//!
//! Uploads are streamed to disk chunk by chunk, never held in memory, so tests can upload blobs larger
//! than RAM would comfortably allow. The PUT is checked the way S3 checks a presigned PUT: the URL must
//! be known and unexpired (403 `AccessDenied`), the `Content-Type` must be the one the URL was signed
//! for (403 `SignatureDoesNotMatch`), a `Content-Length` is required (411 `MissingContentLength`), and a
//! body shorter than it is rejected (400 `IncompleteBody`). A failed PUT stores nothing and leaves an
//! earlier blob under the same key as it was. `Content-Type` and `Content-Encoding` are kept and served
//! back on download. Errors are S3's XML error documents.
//!
//! Fault knobs for the PUTs: fail the next uploads with a 500 (`InternalError`, after reading the whole
//! body), truncate the next uploads (read half of the declared body, then close the connection without a
//! response, storing nothing: what a client sees when the connection breaks partway), and throttle the
//! rate at which bodies are read.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::hawk::slugid;
use super::server::dropped_connection;

/// Where the bucket's URLs live under the root URL: `<root>/__queue_double/bucket/<token>`.
pub const BUCKET_PREFIX: &str = "/__queue_double/bucket";

/// How long a presigned PUT URL is valid: the Queue's and the Object service's 45 minutes, plus the
/// 10 s they add for clock skew.
pub const PUT_URL_VALIDITY: Duration = Duration::from_secs(45 * 60 + 10);
/// How long a download URL is valid (the Queue's signed S3 GET URLs: 30 minutes).
pub const GET_URL_VALIDITY: Duration = Duration::from_secs(30 * 60);

const DOWNLOAD_CHUNK: usize = 64 * 1024;
/// Received chunks are gathered up to this size before each write to disk (a write is a trip to
/// tokio's blocking pool; the chunks of a socket read are much smaller).
const WRITE_BATCH: usize = 1024 * 1024;

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The file holding it.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// The `Content-Type` it was uploaded with.
    pub content_type: Option<String>,
    /// The `Content-Encoding` it was uploaded with.
    pub content_encoding: Option<String>,
    /// Hex SHA-256, for blobs of the Object service (which finishUpload checks).
    pub sha256: Option<String>,
    /// Hex SHA-512, likewise.
    pub sha512: Option<String>,
}

/// A fault for the next PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFault {
    /// Read the whole body, store nothing, answer 500 `InternalError`.
    Fail,
    /// Read half the declared body, store nothing, close the connection without an answer.
    Truncate,
}

/// What a URL token allows.
#[derive(Debug, Clone)]
enum Grant {
    Put {
        key: String,
        content_type: String,
        hash: bool,
        expires: DateTime<Utc>,
    },
    Get {
        key: String,
        expires: DateTime<Utc>,
    },
}

#[derive(Debug, Default)]
struct State {
    blobs: HashMap<String, Blob>,
    grants: HashMap<String, Grant>,
    faults: VecDeque<UploadFault>,
    /// GETs answered with the blob, by key.
    downloads: HashMap<String, usize>,
}

/// The bucket.
#[derive(Debug)]
pub struct Storage {
    dir: tempfile::TempDir,
    state: Mutex<State>,
    uploads: AtomicUsize,
    /// Bytes per second the PUT bodies are read at; 0 is unlimited.
    rate: AtomicU64,
    files: AtomicU64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An S3 error document.
fn s3_error(status: u16, code: &str, message: &str) -> HttpResponse {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message>\
         <RequestId>queue-double</RequestId></Error>",
        xml_escape(message)
    );
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("application/xml")
        .body(body)
}

fn header(headers: &HeaderMap, name: actix_web::http::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Paces the reading of a body to the configured rate.
struct Pace {
    start: Instant,
    received: u64,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            start: Instant::now(),
            received: 0,
        }
    }

    async fn account(&mut self, n: usize, rate: &AtomicU64) {
        self.received += n as u64;
        let rate = rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.received as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            actix_rt::time::sleep(due - elapsed).await;
        }
    }
}

impl Storage {
    /// A new, empty bucket in a fresh temporary directory.
    pub fn new() -> std::io::Result<Storage> {
        Ok(Storage {
            dir: tempfile::Builder::new().prefix("queue-double-blobs-").tempdir()?,
            state: Mutex::new(State::default()),
            uploads: AtomicUsize::new(0),
            rate: AtomicU64::new(0),
            files: AtomicU64::new(0),
        })
    }

    /// The directory holding the blobs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn grant(&self, root_url: &str, grant: Grant) -> String {
        let token = format!("{}{}", slugid(), slugid());
        self.lock().grants.insert(token.clone(), grant);
        format!("{root_url}{BUCKET_PREFIX}/{token}")
    }

    /// A URL to PUT the blob `key` to until `expires`, signed for `content_type`. `hash` keeps SHA-256
    /// and SHA-512 of the data (the Object service's blobs).
    pub fn put_url(
        &self,
        root_url: &str,
        key: &str,
        content_type: &str,
        hash: bool,
        expires: DateTime<Utc>,
    ) -> String {
        self.grant(
            root_url,
            Grant::Put {
                key: key.to_string(),
                content_type: content_type.to_string(),
                hash,
                expires,
            },
        )
    }

    /// A URL to GET the blob `key` from until `expires` (whether or not it exists yet, as with S3).
    pub fn get_url(&self, root_url: &str, key: &str, expires: DateTime<Utc>) -> String {
        self.grant(
            root_url,
            Grant::Get {
                key: key.to_string(),
                expires,
            },
        )
    }

    /// The blob stored under `key`.
    pub fn blob(&self, key: &str) -> Option<Blob> {
        self.lock().blobs.get(key).cloned()
    }

    fn new_file(&self) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("blob-{n}"))
    }

    /// Make `blob` the blob under `key`, removing the file of the one it replaces.
    fn commit(&self, key: &str, blob: Blob) {
        let old = self.lock().blobs.insert(key.to_string(), blob);
        if let Some(old) = old {
            let _ = std::fs::remove_file(old.path);
        }
    }

    /// Store a small blob given whole (the Object service's `dataInline`), with its hashes.
    pub fn store(&self, key: &str, data: &[u8], content_type: Option<&str>) -> std::io::Result<()> {
        self.store_from(key, data, content_type).map(drop)
    }

    /// Store a blob read from `source` to its end, chunk by chunk (never whole in memory), with its
    /// hashes. Blocking: not for use inside a request handler.
    pub fn store_from(
        &self,
        key: &str,
        mut source: impl std::io::Read,
        content_type: Option<&str>,
    ) -> std::io::Result<Blob> {
        let path = self.new_file();
        let written = (|| {
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
            let (mut sha256, mut sha512) = (Sha256::new(), Sha512::new());
            let mut buf = vec![0u8; WRITE_BATCH];
            let mut len = 0u64;
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                sha256.update(&buf[..n]);
                sha512.update(&buf[..n]);
                std::io::Write::write_all(&mut file, &buf[..n])?;
                len += n as u64;
            }
            std::io::Write::flush(&mut file)?;
            Ok(Blob {
                path: path.clone(),
                len,
                content_type: content_type.map(str::to_string),
                content_encoding: None,
                sha256: Some(hex(&sha256.finalize())),
                sha512: Some(hex(&sha512.finalize())),
            })
        })();
        match written {
            Ok(blob) => {
                self.commit(key, blob.clone());
                Ok(blob)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// How many GETs of a download URL for `key` were answered with the blob.
    pub fn downloads(&self, key: &str) -> usize {
        self.lock().downloads.get(key).copied().unwrap_or(0)
    }

    /// Forget every blob and remove the directory (the double is going away).
    pub fn remove_all(&self) {
        self.lock().blobs.clear();
        let _ = std::fs::remove_dir_all(self.dir.path());
    }

    /// Queue `n` faults for the next PUTs.
    pub fn queue_faults(&self, fault: UploadFault, n: usize) {
        self.lock().faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Read PUT bodies at `bytes_per_sec` at most (`None`: as fast as they come).
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        self.rate.store(bytes_per_sec.unwrap_or(0), Ordering::Relaxed);
    }

    /// How many PUTs the bucket has received (faulted and rejected ones included).
    pub fn uploads(&self) -> usize {
        self.uploads.load(Ordering::Relaxed)
    }

    /// Answer a PUT to `<root>/__queue_double/bucket/<token>`.
    pub async fn put(&self, token: &str, req: &HttpRequest, mut payload: web::Payload) -> HttpResponse {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        let grant = self.lock().grants.get(token).cloned();
        let (key, content_type, hash) =
            match grant {
                None => {
                    return s3_error(
                        403,
                        "AccessDenied",
                        "Access Denied: the queue double issued no such URL",
                    )
                }
                Some(Grant::Get { .. }) => return s3_error(
                    403,
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you provided: this \
                     URL is signed for GET, not PUT.",
                ),
                Some(Grant::Put { expires, .. }) if expires < Utc::now() => {
                    return s3_error(403, "AccessDenied", "Request has expired")
                }
                Some(Grant::Put {
                    key,
                    content_type,
                    hash,
                    ..
                }) => (key, content_type, hash),
            };
        let headers = req.headers();
        let Some(declared) = header(headers, CONTENT_LENGTH).and_then(|l| l.trim().parse::<u64>().ok())
        else {
            return s3_error(
                411,
                "MissingContentLength",
                "You must provide the Content-Length HTTP header.",
            );
        };
        let given_type = header(headers, CONTENT_TYPE).unwrap_or_default();
        if given_type != content_type {
            return s3_error(
                403,
                "SignatureDoesNotMatch",
                &format!(
                    "The request signature we calculated does not match the signature you provided: the URL \
                     is signed for Content-Type `{content_type}`, the request has `{given_type}`."
                ),
            );
        }
        let content_encoding = header(headers, CONTENT_ENCODING).map(str::to_string);

        let fault = self.lock().faults.pop_front();
        let mut pace = Pace::new();
        match fault {
            Some(UploadFault::Fail) => {
                while let Some(Ok(chunk)) = payload.next().await {
                    pace.account(chunk.len(), &self.rate).await;
                }
                return s3_error(
                    500,
                    "InternalError",
                    "We encountered an internal error. Please try again. (queue double: injected fault)",
                );
            }
            Some(UploadFault::Truncate) => {
                while pace.received < declared / 2 {
                    match payload.next().await {
                        Some(Ok(chunk)) => pace.account(chunk.len(), &self.rate).await,
                        _ => break,
                    }
                }
                return dropped_connection();
            }
            None => {}
        }

        let path = self.new_file();
        let outcome = self.receive(&path, &mut payload, &mut pace, declared, hash).await;
        match outcome {
            Ok(hashes) => {
                let (sha256, sha512) = hashes.unzip();
                self.commit(
                    &key,
                    Blob {
                        path,
                        len: declared,
                        content_type: Some(content_type),
                        content_encoding,
                        sha256,
                        sha512,
                    },
                );
                HttpResponse::Ok().finish()
            }
            Err(reply) => {
                let _ = tokio::fs::remove_file(&path).await;
                reply
            }
        }
    }

    /// Stream a body of `declared` bytes into the file at `path`, with its hashes if `hash`.
    async fn receive(
        &self,
        path: &Path,
        payload: &mut web::Payload,
        pace: &mut Pace,
        declared: u64,
        hash: bool,
    ) -> Result<Option<(String, String)>, HttpResponse> {
        let internal = |e: std::io::Error| {
            s3_error(
                500,
                "InternalError",
                &format!("queue double: writing the blob: {e}"),
            )
        };
        let incomplete = || {
            s3_error(
                400,
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header.",
            )
        };
        let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
        let mut hashers = hash.then(|| (Sha256::new(), Sha512::new()));
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| incomplete())?;
            if let Some((a, b)) = hashers.as_mut() {
                a.update(&chunk);
                b.update(&chunk);
            }
            batch.extend_from_slice(&chunk);
            if batch.len() >= WRITE_BATCH {
                file.write_all(&batch).await.map_err(internal)?;
                batch.clear();
            }
            pace.account(chunk.len(), &self.rate).await;
        }
        file.write_all(&batch).await.map_err(internal)?;
        file.flush().await.map_err(internal)?;
        if pace.received != declared {
            return Err(incomplete());
        }
        Ok(hashers.map(|(a, b)| (hex(&a.finalize()), hex(&b.finalize()))))
    }

    /// Answer a GET of `<root>/__queue_double/bucket/<token>`: the blob, streamed from disk.
    pub async fn get(&self, token: &str) -> HttpResponse {
        let grant = self.lock().grants.get(token).cloned();
        let key =
            match grant {
                None => {
                    return s3_error(
                        403,
                        "AccessDenied",
                        "Access Denied: the queue double issued no such URL",
                    )
                }
                Some(Grant::Put { .. }) => return s3_error(
                    403,
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you provided: this \
                     URL is signed for PUT, not GET.",
                ),
                Some(Grant::Get { expires, .. }) if expires < Utc::now() => {
                    return s3_error(403, "AccessDenied", "Request has expired")
                }
                Some(Grant::Get { key, .. }) => key,
            };
        let missing = || s3_error(404, "NoSuchKey", "The specified key does not exist.");
        let Some(blob) = self.blob(&key) else {
            return missing();
        };
        let Ok(file) = tokio::fs::File::open(&blob.path).await else {
            return missing();
        };
        *self.lock().downloads.entry(key).or_default() += 1;
        let body = futures_util::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; DOWNLOAD_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(web::Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err::<web::Bytes, _>(e), None)),
            }
        });
        let mut reply = HttpResponse::Ok();
        // S3's default for an object stored without a Content-Type.
        reply.content_type(blob.content_type.as_deref().unwrap_or("binary/octet-stream"));
        if let Some(encoding) = &blob.content_encoding {
            reply.insert_header((CONTENT_ENCODING, encoding.as_str()));
        }
        reply.no_chunking(blob.len).streaming(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn stored_blobs_replace_earlier_ones_and_keep_their_hashes() {
        let storage = Storage::new().unwrap();
        storage.store("k", b"one", Some("text/plain")).unwrap();
        let first = storage.blob("k").unwrap();
        storage.store("k", b"two!", None).unwrap();
        let second = storage.blob("k").unwrap();
        assert!(!first.path.exists(), "the replaced file is removed");
        assert_eq!(std::fs::read(&second.path).unwrap(), b"two!");
        assert_eq!(second.len, 4);
        assert_eq!(
            second.sha256.as_deref(),
            Some("a97b629a5b1da759586c3353a9bc284bf673970d8eca56e11e556b715c329614")
        );
        assert_eq!(second.sha512.as_deref().map(str::len), Some(128));
        let streamed = storage
            .store_from("k2", std::io::repeat(7).take(3 << 20), None)
            .unwrap();
        assert_eq!(streamed.len, 3 << 20);
        assert_eq!(std::fs::metadata(&streamed.path).unwrap().len(), 3 << 20);
        assert_eq!(
            streamed.sha256.as_deref(),
            Some(hex(&Sha256::digest(vec![7u8; 3 << 20])).as_str())
        );
    }

    #[test]
    fn urls_are_unguessable_and_distinct() {
        let storage = Storage::new().unwrap();
        let expires = Utc::now();
        let a = storage.get_url("http://h", "k", expires);
        let b = storage.get_url("http://h", "k", expires);
        assert_ne!(a, b);
        assert!(a.starts_with("http://h/__queue_double/bucket/"));
        assert!(a.len() > "http://h/__queue_double/bucket/".len() + 40);
    }
}
