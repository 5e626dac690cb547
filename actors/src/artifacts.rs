//! ArtifactUploadActor: turns what the task left in its container into artifacts, behind a sink port
//! (a local directory for `docker-worker run`; the Queue later).
//!
//! Archives come from Docker, but their contents come from the task, so they are treated as hostile:
//! absolute or `..` names, links, devices and FIFOs are never written anywhere; each skip is said in the log.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::docker::ByteStream;
use crate::logfmt::{fmt_error_log, fmt_log};
use crate::payload::ArtifactKind;

/// Why an artifact is an error artifact (the Queue's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorReason {
    /// The path does not exist in the container.
    #[serde(rename = "file-missing-on-worker")]
    FileMissingOnWorker,
    /// The path is there but is not what the payload said.
    #[serde(rename = "invalid-resource-on-worker")]
    InvalidResourceOnWorker,
}

impl ErrorReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::FileMissingOnWorker => "file-missing-on-worker",
            ErrorReason::InvalidResourceOnWorker => "invalid-resource-on-worker",
        }
    }
}

/// What is known of an artifact before its bytes are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactMeta {
    /// The artifact name, e.g. `public/logs/live_backing.log`.
    pub name: String,
    /// Its content type.
    pub content_type: String,
    /// `gzip` when the bytes are stored compressed.
    pub content_encoding: Option<String>,
    /// When it expires.
    pub expires: Option<DateTime<Utc>>,
    /// The length of the bytes to store, when known before they flow (a tar entry's size, a file's length).
    pub size: Option<u64>,
}

/// One artifact as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "storageType", rename_all = "camelCase")]
pub enum StoredArtifact {
    /// Bytes were stored.
    #[serde(rename = "file", rename_all = "camelCase")]
    File {
        /// The name.
        name: String,
        /// Bytes stored.
        size: u64,
        /// Hex sha256 of the stored bytes.
        sha256: String,
        /// Content type.
        content_type: String,
        /// Content encoding, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        content_encoding: Option<String>,
        /// Expiry.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires: Option<DateTime<Utc>>,
    },
    /// A reference to a URL (the live log while the task runs).
    #[serde(rename = "reference", rename_all = "camelCase")]
    Reference {
        /// The name.
        name: String,
        /// Where it points.
        url: String,
    },
    /// A link to another artifact of the same run.
    #[serde(rename = "link", rename_all = "camelCase")]
    Link {
        /// The name.
        name: String,
        /// The artifact it points at.
        artifact: String,
    },
    /// An error artifact.
    #[serde(rename = "error", rename_all = "camelCase")]
    Error {
        /// The name.
        name: String,
        /// The reason.
        reason: ErrorReason,
        /// What happened, for a person.
        message: String,
        /// Expiry.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires: Option<DateTime<Utc>>,
    },
}

impl StoredArtifact {
    /// The artifact's name.
    pub fn name(&self) -> &str {
        match self {
            StoredArtifact::File { name, .. }
            | StoredArtifact::Error { name, .. }
            | StoredArtifact::Reference { name, .. }
            | StoredArtifact::Link { name, .. } => name,
        }
    }
}

/// A sink could not store an artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The name can't be stored here.
    #[error("artifact name {name:?} can not be stored: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Storage failed for a reason that may pass (a network error, a 5xx): worth another attempt.
    #[error("storing artifact {name:?} failed: {error}")]
    Transient {
        /// The name.
        name: String,
        /// The error.
        error: String,
    },
    /// Storage failed.
    #[error("storing artifact {name:?} failed: {error}")]
    Io {
        /// The name.
        name: String,
        /// The error.
        error: String,
    },
}

/// Where artifacts go. Methods are called on a blocking thread, so they may do plain I/O.
pub trait ArtifactSink: Send + Sync + 'static {
    /// Store one artifact from `body`; returns the bytes stored.
    fn put(&self, meta: &ArtifactMeta, body: &mut dyn Read) -> Result<u64, SinkError>;
    /// Store one artifact; returns the bytes stored and their hex sha256. By default this hashes what
    /// passes to [`ArtifactSink::put`]; a sink that hashes for its upload anyway returns its own, so the
    /// bytes are hashed once.
    fn put_hashed(&self, meta: &ArtifactMeta, body: &mut dyn Read) -> Result<(u64, String), SinkError> {
        let mut hashing = HashingReader {
            inner: body,
            hasher: Sha256::new(),
        };
        let size = self.put(meta, &mut hashing)?;
        Ok((size, hex::encode(hashing.hasher.finalize())))
    }
    /// Record an error artifact, expiring when the payload's artifact would have.
    fn put_error(
        &self,
        name: &str,
        reason: ErrorReason,
        message: &str,
        expires: Option<DateTime<Utc>>,
    ) -> Result<(), SinkError>;
    /// Record a reference to a URL; a sink without URLs only lists it.
    fn put_reference(&self, _name: &str, _url: &str, _content_type: &str) -> Result<(), SinkError> {
        Ok(())
    }
    /// Record a link to another artifact of the run; a sink without links only lists it.
    fn put_link(&self, _name: &str, _target: &str) -> Result<(), SinkError> {
        Ok(())
    }
    /// Everything is stored; `records` lists it all.
    fn finish(&self, records: &[StoredArtifact]) -> Result<(), SinkError>;
}

/// What one artifact request came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactReport {
    /// Artifacts recorded, error artifacts included.
    pub stored: Vec<StoredArtifact>,
    /// Lines for the task log, already formatted.
    pub log: Vec<String>,
    /// Uploads that failed for good; any entry fails the task.
    pub failures: Vec<String>,
    /// Files whose upload failed in a way worth another attempt, to fetch again from the container.
    pub retry: Vec<RetryEntry>,
}

/// A file to upload again: the archive it came in is spent, so it is fetched anew by its own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryEntry {
    /// The artifact name.
    pub name: String,
    /// The file's path in the container.
    pub path: String,
    /// Why the last attempt failed.
    pub error: String,
}

/// Turn a `payload.artifacts` entry's tar archive into artifacts.
#[derive(Message)]
#[rtype(result = "ArtifactReport")]
pub struct UploadFromArchive {
    /// The artifact name from the payload.
    pub name: String,
    /// `file` or `directory`.
    pub kind: ArtifactKind,
    /// The path in the container the archive was taken from.
    pub path: String,
    /// Expiry.
    pub expires: Option<DateTime<Utc>>,
    /// The tar stream from Docker.
    pub archive: ByteStream,
}

/// Record a reference artifact (the live log's URL while the task runs).
#[derive(Message)]
#[rtype(result = "Result<StoredArtifact, SinkError>")]
pub struct CreateReference {
    /// The name.
    pub name: String,
    /// The URL.
    pub url: String,
    /// The content type behind the URL.
    pub content_type: String,
}

/// Record a link artifact (the live log, once the task ends, pointing at the backing log).
#[derive(Message)]
#[rtype(result = "Result<StoredArtifact, SinkError>")]
pub struct CreateLink {
    /// The name.
    pub name: String,
    /// The artifact it points at.
    pub artifact: String,
}

/// The path of a `payload.artifacts` entry is missing: record a `file-missing-on-worker` error artifact.
#[derive(Message)]
#[rtype(result = "ArtifactReport")]
pub struct RecordMissing {
    /// The artifact name.
    pub name: String,
    /// The path in the container.
    pub path: String,
    /// Expiry.
    pub expires: Option<DateTime<Utc>>,
}

/// Upload a file of the worker's own (the backing log), optionally gzipping it on the way.
#[derive(Message)]
#[rtype(result = "Result<StoredArtifact, SinkError>")]
pub struct UploadFile {
    /// How to record it; `content_encoding: Some("gzip")` with `gzip: true` compresses.
    pub meta: ArtifactMeta,
    /// The file.
    pub path: PathBuf,
    /// Compress while uploading.
    pub gzip: bool,
}

/// All artifacts are in: let the sink write its index.
#[derive(Message)]
#[rtype(result = "Result<Vec<StoredArtifact>, SinkError>")]
pub struct FinishArtifacts;

/// The port a TaskActor uses for artifacts.
#[derive(Clone)]
pub struct ArtifactPort {
    /// See [`UploadFromArchive`].
    pub from_archive: Recipient<UploadFromArchive>,
    /// See [`RecordMissing`].
    pub missing: Recipient<RecordMissing>,
    /// See [`UploadFile`].
    pub file: Recipient<UploadFile>,
    /// See [`FinishArtifacts`].
    pub finish: Recipient<FinishArtifacts>,
    /// See [`CreateReference`].
    pub reference: Recipient<CreateReference>,
    /// See [`CreateLink`].
    pub link: Recipient<CreateLink>,
}

impl ArtifactPort {
    /// The port of an ArtifactUploadActor.
    pub fn from_addr(addr: &Addr<ArtifactUploadActor>) -> ArtifactPort {
        ArtifactPort {
            from_archive: addr.clone().recipient(),
            missing: addr.clone().recipient(),
            file: addr.clone().recipient(),
            finish: addr.clone().recipient(),
            reference: addr.clone().recipient(),
            link: addr.clone().recipient(),
        }
    }
}

/// One per task. Work happens on blocking threads, one request at a time, so memory stays bounded.
pub struct ArtifactUploadActor {
    sink: Arc<dyn ArtifactSink>,
    records: Vec<StoredArtifact>,
}

impl ArtifactUploadActor {
    /// An actor storing into `sink`.
    pub fn new(sink: Arc<dyn ArtifactSink>) -> ArtifactUploadActor {
        ArtifactUploadActor {
            sink,
            records: Vec::new(),
        }
    }
}

impl Actor for ArtifactUploadActor {
    type Context = Context<Self>;
}

fn record_report(act: &mut ArtifactUploadActor, report: ArtifactReport) -> ArtifactReport {
    act.records.extend(report.stored.iter().cloned());
    report
}

impl Handler<UploadFromArchive> for ArtifactUploadActor {
    type Result = AtomicResponse<Self, ArtifactReport>;

    fn handle(&mut self, msg: UploadFromArchive, _: &mut Context<Self>) -> Self::Result {
        let sink = self.sink.clone();
        let reader = StreamReader::new(msg.archive.map_err(io::Error::other));
        let work = async move {
            let name = msg.name.clone();
            tokio::task::spawn_blocking(move || {
                let bridge = SyncIoBridge::new(reader);
                extract_archive(&msg.name, msg.kind, &msg.path, msg.expires, bridge, sink.as_ref())
            })
            .await
            .unwrap_or_else(|e| ArtifactReport {
                failures: vec![format!("{name}: {e}")],
                log: vec![fmt_error_log(&format!(
                    "Error uploading \"{name}\" artifact. {e}"
                ))],
                ..Default::default()
            })
        };
        AtomicResponse::new(Box::pin(
            work.into_actor(self).map(|r, act, _| record_report(act, r)),
        ))
    }
}

impl Handler<RecordMissing> for ArtifactUploadActor {
    type Result = AtomicResponse<Self, ArtifactReport>;

    fn handle(&mut self, msg: RecordMissing, _: &mut Context<Self>) -> Self::Result {
        let sink = self.sink.clone();
        let work = async move {
            let message = format!("Artifact \"{}\" not found at \"{}\"", msg.name, msg.path);
            let mut report = ArtifactReport {
                log: vec![fmt_log(&message)],
                ..Default::default()
            };
            let name = msg.name.clone();
            let stored = tokio::task::spawn_blocking(move || {
                store_error(
                    sink.as_ref(),
                    &msg.name,
                    ErrorReason::FileMissingOnWorker,
                    &message,
                    msg.expires,
                )
            })
            .await;
            match stored {
                Ok(Ok(a)) => report.stored.push(a),
                Ok(Err(e)) => report.failures.push(e.to_string()),
                Err(e) => report.failures.push(format!("{name}: {e}")),
            }
            report
        };
        AtomicResponse::new(Box::pin(
            work.into_actor(self).map(|r, act, _| record_report(act, r)),
        ))
    }
}

type StoreOne = AtomicResponse<ArtifactUploadActor, Result<StoredArtifact, SinkError>>;

impl ArtifactUploadActor {
    /// Store one artifact on a blocking thread and record it; it replaces an earlier record of the same
    /// name (the live log's link replaces its reference).
    fn store_one<F>(&mut self, name: String, work: F) -> StoreOne
    where
        F: FnOnce(&dyn ArtifactSink) -> Result<StoredArtifact, SinkError> + Send + 'static,
    {
        let sink = self.sink.clone();
        let task = async move {
            tokio::task::spawn_blocking(move || work(sink.as_ref()))
                .await
                .unwrap_or_else(|e| {
                    Err(SinkError::Io {
                        name,
                        error: e.to_string(),
                    })
                })
        };
        AtomicResponse::new(Box::pin(task.into_actor(self).map(|r, act, _| {
            if let Ok(a) = &r {
                act.records.retain(|x| x.name() != a.name());
                act.records.push(a.clone());
            }
            r
        })))
    }
}

impl Handler<UploadFile> for ArtifactUploadActor {
    type Result = StoreOne;

    fn handle(&mut self, msg: UploadFile, _: &mut Context<Self>) -> StoreOne {
        self.store_one(msg.meta.name.clone(), move |sink| upload_file(sink, &msg))
    }
}

impl Handler<CreateReference> for ArtifactUploadActor {
    type Result = StoreOne;

    fn handle(&mut self, msg: CreateReference, _: &mut Context<Self>) -> StoreOne {
        self.store_one(msg.name.clone(), move |sink| {
            sink.put_reference(&msg.name, &msg.url, &msg.content_type)
                .map(|()| StoredArtifact::Reference {
                    name: msg.name,
                    url: msg.url,
                })
        })
    }
}

impl Handler<CreateLink> for ArtifactUploadActor {
    type Result = StoreOne;

    fn handle(&mut self, msg: CreateLink, _: &mut Context<Self>) -> StoreOne {
        self.store_one(msg.name.clone(), move |sink| {
            sink.put_link(&msg.name, &msg.artifact)
                .map(|()| StoredArtifact::Link {
                    name: msg.name,
                    artifact: msg.artifact,
                })
        })
    }
}

impl Handler<FinishArtifacts> for ArtifactUploadActor {
    type Result = AtomicResponse<Self, Result<Vec<StoredArtifact>, SinkError>>;

    fn handle(&mut self, _: FinishArtifacts, _: &mut Context<Self>) -> Self::Result {
        let sink = self.sink.clone();
        let records = self.records.clone();
        let work = async move {
            tokio::task::spawn_blocking(move || sink.finish(&records).map(|()| records))
                .await
                .unwrap_or_else(|e| {
                    Err(SinkError::Io {
                        name: "(index)".into(),
                        error: e.to_string(),
                    })
                })
        };
        AtomicResponse::new(Box::pin(work.into_actor(self)))
    }
}

/// Attempts at storing one of the worker's own files, and the first wait between them (it doubles).
const FILE_ATTEMPTS: u32 = 5;
const FILE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

fn upload_file(sink: &dyn ArtifactSink, msg: &UploadFile) -> Result<StoredArtifact, SinkError> {
    let io_err = |e: io::Error| SinkError::Io {
        name: msg.meta.name.clone(),
        error: e.to_string(),
    };
    // A compressed copy first, so its length is known before the upload starts.
    let compressed = if msg.gzip {
        let mut tmp = tempfile::NamedTempFile::new().map_err(io_err)?;
        let mut gz = flate2::write::GzEncoder::new(&mut tmp, flate2::Compression::default());
        io::copy(
            &mut io::BufReader::new(fs::File::open(&msg.path).map_err(io_err)?),
            &mut gz,
        )
        .map_err(io_err)?;
        gz.finish().map_err(io_err)?;
        Some(tmp)
    } else {
        None
    };
    let path = compressed.as_ref().map_or(msg.path.as_path(), |t| t.path());
    let mut delay = FILE_RETRY_DELAY;
    let mut attempt = 1;
    loop {
        let file = fs::File::open(path).map_err(io_err)?;
        let mut meta = msg.meta.clone();
        meta.size = Some(file.metadata().map_err(io_err)?.len());
        match put_hashed(sink, &meta, &mut io::BufReader::new(file)) {
            Err(SinkError::Transient { .. }) if attempt < FILE_ATTEMPTS => {
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Store through the sink while hashing what passes.
fn put_hashed(
    sink: &dyn ArtifactSink,
    meta: &ArtifactMeta,
    body: &mut dyn Read,
) -> Result<StoredArtifact, SinkError> {
    let (size, sha256) = sink.put_hashed(meta, body)?;
    Ok(StoredArtifact::File {
        name: meta.name.clone(),
        size,
        sha256,
        content_type: meta.content_type.clone(),
        content_encoding: meta.content_encoding.clone(),
        expires: meta.expires,
    })
}

fn store_error(
    sink: &dyn ArtifactSink,
    name: &str,
    reason: ErrorReason,
    message: &str,
    expires: Option<DateTime<Utc>>,
) -> Result<StoredArtifact, SinkError> {
    sink.put_error(name, reason, message, expires)?;
    Ok(StoredArtifact::Error {
        name: name.into(),
        reason,
        message: message.into(),
        expires,
    })
}

struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    hasher: Sha256,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The name tar-stream (and so docker-worker) gave each entry type, for messages.
fn type_name(t: tar::EntryType) -> &'static str {
    match t {
        t if t.is_file() || t.is_gnu_sparse() => "file",
        t if t.is_dir() => "directory",
        t if t.is_symlink() => "symlink",
        t if t.is_hard_link() => "link",
        t if t.is_character_special() => "character-device",
        t if t.is_block_special() => "block-device",
        t if t.is_fifo() => "fifo",
        _ => "unknown",
    }
}

/// The part of an entry name below the archive's top directory, if it is safe to use.
/// `Err` explains why the name is refused.
fn entry_rest(raw: &str) -> Result<String, &'static str> {
    if raw.starts_with('/') {
        return Err("its name is absolute");
    }
    let mut parts = raw.split('/').filter(|p| !p.is_empty() && *p != ".");
    let _top = parts.next();
    let mut rest = Vec::new();
    for part in parts {
        if part == ".." {
            return Err("its name contains '..'");
        }
        rest.push(part);
    }
    Ok(rest.join("/"))
}

/// Where a tar entry lives in the container: Docker names entries from the last part of the path it archived.
fn entry_container_path(archived: &str, entry: &str) -> String {
    let archived = archived.trim_end_matches('/');
    let parent = match archived.rfind('/') {
        Some(i) => &archived[..i],
        None => "",
    };
    format!("{parent}/{}", entry.trim_start_matches("./"))
}

/// Walk a Docker archive of one `payload.artifacts` entry. Runs on a blocking thread.
pub fn extract_archive(
    name: &str,
    kind: ArtifactKind,
    path: &str,
    expires: Option<DateTime<Utc>>,
    reader: impl Read,
    sink: &dyn ArtifactSink,
) -> ArtifactReport {
    let mut report = ArtifactReport::default();
    let fail = |report: &mut ArtifactReport, entry: &str, why: String| {
        report.log.push(fmt_error_log(&format!(
            "Error uploading \"{entry}\" artifact. {why}"
        )));
        report.failures.push(format!("{entry}: {why}"));
    };
    let mut archive = tar::Archive::new(reader);
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            fail(&mut report, name, format!("could not read the archive: {e}"));
            return report;
        }
    };
    for (index, entry) in entries.enumerate() {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                fail(&mut report, name, format!("could not read the archive: {e}"));
                return report;
            }
        };
        let etype = entry.header().entry_type();
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if index == 0 {
            let wanted = match kind {
                ArtifactKind::File => etype.is_file() || etype.is_gnu_sparse(),
                ArtifactKind::Directory => etype.is_dir(),
                ArtifactKind::Volume => false,
            };
            if !wanted {
                let message = format!(
                    "Error uploading \"{name}\". Expected artifact to be a \"{}\" but was \"{}\"",
                    kind.as_str(),
                    type_name(etype)
                );
                report.log.push(fmt_error_log(&message));
                match store_error(
                    sink,
                    name,
                    ErrorReason::InvalidResourceOnWorker,
                    &message,
                    expires,
                ) {
                    Ok(a) => report.stored.push(a),
                    Err(e) => report.failures.push(e.to_string()),
                }
                return report;
            }
        }
        if etype.is_dir() {
            continue;
        }
        let rest = match entry_rest(&raw) {
            Ok(rest) => rest,
            Err(why) => {
                report.log.push(fmt_log(&format!(
                    "Skipped \"{raw}\" in artifact \"{name}\": {why}, so it could leave the artifact."
                )));
                continue;
            }
        };
        let artifact_name = if rest.is_empty() {
            name.to_string()
        } else {
            format!("{name}/{rest}")
        };
        if !(etype.is_file() || etype.is_gnu_sparse()) {
            report.log.push(fmt_log(&format!(
                "Skipped \"{artifact_name}\": it is a {}, and only regular files become artifacts.",
                type_name(etype)
            )));
            continue;
        }
        let meta = ArtifactMeta {
            content_type: mime_guess::from_path(&raw)
                .first_raw()
                .unwrap_or("application/octet-stream")
                .to_string(),
            name: artifact_name.clone(),
            content_encoding: None,
            expires,
            size: Some(entry.header().size().unwrap_or(0)),
        };
        match put_hashed(sink, &meta, &mut entry) {
            Ok(a) => report.stored.push(a),
            Err(SinkError::Transient { error, .. }) => report.retry.push(RetryEntry {
                name: artifact_name,
                path: entry_container_path(path, &raw),
                error,
            }),
            Err(e) => fail(&mut report, &artifact_name, e.to_string()),
        }
    }
    report
}

/// Stores artifacts as files under a directory, `<root>/<artifact name>`, plus an index, `summary.json`.
pub struct LocalDirSink {
    root: PathBuf,
}

/// The index a [`LocalDirSink`] writes; an artifact can't take this name.
pub const SUMMARY_FILE: &str = "summary.json";

impl LocalDirSink {
    /// A sink under `root`. An existing `root` is emptied only if a previous run wrote it (it holds
    /// `summary.json`); any other non-empty directory is refused rather than mixed with.
    pub fn prepare(root: &Path) -> io::Result<LocalDirSink> {
        if root.exists() {
            let mut entries = fs::read_dir(root)?;
            if entries.next().is_some() {
                if !root.join(SUMMARY_FILE).is_file() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{} is not empty and was not written by docker-worker run; choose another --artifacts-dir",
                            root.display()
                        ),
                    ));
                }
                fs::remove_dir_all(root)?;
            }
        }
        fs::create_dir_all(root)?;
        Ok(LocalDirSink {
            root: root.canonicalize()?,
        })
    }

    /// Where an artifact's bytes are written.
    pub fn path_of(&self, name: &str) -> Result<PathBuf, SinkError> {
        let bad = |reason: &str| SinkError::BadName {
            name: name.into(),
            reason: reason.into(),
        };
        if name == SUMMARY_FILE {
            return Err(bad("the name is reserved for the run's summary"));
        }
        let rel = Path::new(name);
        if name.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(bad("it must be a relative path without '.' or '..' parts"));
        }
        Ok(self.root.join(rel))
    }

    fn write(&self, name: &str, body: &mut dyn Read) -> Result<u64, SinkError> {
        let path = self.path_of(name)?;
        let io_err = |e: io::Error| SinkError::Io {
            name: name.into(),
            error: e.to_string(),
        };
        let dir = path.parent().expect("artifact paths are below the root");
        fs::create_dir_all(dir).map_err(io_err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
        let size = io::copy(body, &mut tmp).map_err(io_err)?;
        tmp.flush().map_err(io_err)?;
        tmp.persist(&path).map_err(|e| io_err(e.error))?;
        Ok(size)
    }
}

impl ArtifactSink for LocalDirSink {
    fn put(&self, meta: &ArtifactMeta, body: &mut dyn Read) -> Result<u64, SinkError> {
        self.write(&meta.name, body)
    }

    fn put_error(
        &self,
        name: &str,
        _: ErrorReason,
        _: &str,
        _: Option<DateTime<Utc>>,
    ) -> Result<(), SinkError> {
        // Error artifacts exist only in the summary, but their names must still be storable names.
        self.path_of(name).map(drop)
    }

    fn finish(&self, records: &[StoredArtifact]) -> Result<(), SinkError> {
        let json = serde_json::to_vec_pretty(&serde_json::json!({ "artifacts": records }))
            .expect("artifact records serialize");
        fs::write(self.root.join(SUMMARY_FILE), json).map_err(|e| SinkError::Io {
            name: SUMMARY_FILE.into(),
            error: e.to_string(),
        })
    }
}

/// An in-memory sink, for tests and dry runs.
#[derive(Clone, Default)]
pub struct MemoryArtifactSink {
    /// Stored bytes by artifact name.
    pub files: Arc<Mutex<std::collections::BTreeMap<String, Vec<u8>>>>,
    /// Error artifacts by name: reason and message.
    pub errors: Arc<Mutex<std::collections::BTreeMap<String, (ErrorReason, String)>>>,
}

impl ArtifactSink for MemoryArtifactSink {
    fn put(&self, meta: &ArtifactMeta, body: &mut dyn Read) -> Result<u64, SinkError> {
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes).map_err(|e| SinkError::Io {
            name: meta.name.clone(),
            error: e.to_string(),
        })?;
        let size = bytes.len() as u64;
        self.files
            .lock()
            .expect("sink lock")
            .insert(meta.name.clone(), bytes);
        Ok(size)
    }

    fn put_error(
        &self,
        name: &str,
        reason: ErrorReason,
        message: &str,
        _: Option<DateTime<Utc>>,
    ) -> Result<(), SinkError> {
        self.errors
            .lock()
            .expect("sink lock")
            .insert(name.into(), (reason, message.into()));
        Ok(())
    }

    fn finish(&self, _: &[StoredArtifact]) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, etype, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*etype);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(link) = link {
                h.set_link_name(link).unwrap();
            }
            // Write the raw name so hostile names reach the reader unchanged.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_directory_becomes_one_artifact_per_file() {
        use tar::EntryType as T;
        let archive = tar_of(&[
            ("xfoo/", T::Directory, b"", None),
            ("xfoo/test.html", T::Regular, b"<p>", None),
            ("xfoo/wow/", T::Directory, b"", None),
            ("xfoo/wow/bar.txt", T::Regular, b"xfoo\n", None),
        ]);
        let sink = MemoryArtifactSink::default();
        let report = extract_archive(
            "public/dir",
            ArtifactKind::Directory,
            "/xfoo/",
            None,
            &archive[..],
            &sink,
        );
        assert!(report.failures.is_empty(), "{report:?}");
        let names: Vec<&str> = report.stored.iter().map(|a| a.name()).collect();
        assert_eq!(names, ["public/dir/test.html", "public/dir/wow/bar.txt"]);
        match &report.stored[0] {
            StoredArtifact::File {
                content_type, size, ..
            } => {
                assert_eq!(content_type, "text/html");
                assert_eq!(*size, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sink.files.lock().unwrap()["public/dir/wow/bar.txt"], b"xfoo\n");
    }

    #[test]
    fn a_file_keeps_the_artifact_name_and_gets_its_hash() {
        let archive = tar_of(&[("xfoo.txt", tar::EntryType::Regular, b"xfoo\n", None)]);
        let sink = MemoryArtifactSink::default();
        let report = extract_archive(
            "public/xfoo",
            ArtifactKind::File,
            "/xfoo.txt",
            None,
            &archive[..],
            &sink,
        );
        match &report.stored[..] {
            [StoredArtifact::File {
                name,
                sha256,
                content_type,
                ..
            }] => {
                assert_eq!(name, "public/xfoo");
                assert_eq!(content_type, "text/plain");
                assert_eq!(
                    sha256,
                    "cebff86446aff2b1039749f09ef2922f9ad4f35ea2576a84e206708d8e8bf7b4"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_wrong_type_is_an_error_artifact() {
        let archive = tar_of(&[("etc/", tar::EntryType::Directory, b"", None)]);
        let sink = MemoryArtifactSink::default();
        let report = extract_archive(
            "public/etc",
            ArtifactKind::File,
            "/etc/",
            None,
            &archive[..],
            &sink,
        );
        assert!(report.failures.is_empty());
        assert_eq!(
            sink.errors.lock().unwrap()["public/etc"],
            (
                ErrorReason::InvalidResourceOnWorker,
                "Error uploading \"public/etc\". Expected artifact to be a \"file\" but was \"directory\""
                    .into()
            )
        );
        assert!(report.log[0].contains("[taskcluster:error] Error uploading \"public/etc\"."));
    }

    #[test]
    fn hostile_entries_are_skipped_and_said() {
        use tar::EntryType as T;
        let archive = tar_of(&[
            ("out/", T::Directory, b"", None),
            ("out/../../etc/passwd", T::Regular, b"evil", None),
            ("/etc/shadow", T::Regular, b"evil", None),
            ("out/link", T::Symlink, b"", Some("/etc/passwd")),
            ("out/hard", T::Link, b"", Some("/etc/passwd")),
            ("out/dev", T::Char, b"", None),
            ("out/pipe", T::Fifo, b"", None),
            ("out/ok.txt", T::Regular, b"ok", None),
        ]);
        let sink = MemoryArtifactSink::default();
        let report = extract_archive(
            "public/out",
            ArtifactKind::Directory,
            "/out",
            None,
            &archive[..],
            &sink,
        );
        let files = sink.files.lock().unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["public/out/ok.txt"]);
        let log = report.log.concat();
        for said in [
            "'..'",
            "absolute",
            "symlink",
            "a link",
            "character-device",
            "fifo",
        ] {
            assert!(log.contains(said), "log should mention {said}: {log}");
        }
    }

    #[test]
    fn entries_map_back_to_their_container_paths() {
        assert_eq!(
            entry_container_path("/xfoo/", "xfoo/wow/bar.txt"),
            "/xfoo/wow/bar.txt"
        );
        assert_eq!(
            entry_container_path("/artifacts/x.txt", "x.txt"),
            "/artifacts/x.txt"
        );
        assert_eq!(entry_container_path("/a/b", "b/c"), "/a/b/c");
    }

    #[test]
    fn local_dir_sink_refuses_names_that_leave_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::prepare(&dir.path().join("a")).unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "summary.json", "./x"] {
            assert!(sink.path_of(bad).is_err(), "{bad} should be refused");
        }
        let meta = ArtifactMeta {
            name: "public/x.txt".into(),
            content_type: "text/plain".into(),
            content_encoding: None,
            expires: None,
            size: Some(2),
        };
        assert_eq!(sink.put(&meta, &mut &b"hi"[..]).unwrap(), 2);
        assert_eq!(fs::read(dir.path().join("a/public/x.txt")).unwrap(), b"hi");
    }

    #[test]
    fn local_dir_sink_only_clears_its_own_output() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("precious"), "keep").unwrap();
        assert!(LocalDirSink::prepare(&root).is_err());
        assert!(root.join("precious").exists());
        fs::remove_file(root.join("precious")).unwrap();
        let sink = LocalDirSink::prepare(&root).unwrap();
        sink.finish(&[]).unwrap();
        fs::write(root.join("old-artifact"), "x").unwrap();
        LocalDirSink::prepare(&root).unwrap();
        assert!(!root.join("old-artifact").exists());
    }
}
