//! Images from task artifacts (`task-image`, `indexed-image`): the tarball streams from the Queue
//! through a hash, a decompressor and a tar rewriter straight into `docker load`, without staging it
//! on disk. The rewriter renames the image to the worker's own name for the artifact, so a tarball
//! can never replace an image other tasks use by name.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::ImportImageOptionsBuilder;
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use md5::{Digest as _, Md5};
use serde_json::{Map, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::{ImageError, ImageProgress, PullPolicy, Watchers};
use crate::logfmt::{fmt_error_log, fmt_log};
use crate::queue::client::QueueClient;
use crate::queue::{Credentials, QueueError};

/// How an image tarball is compressed, from its name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.tar`
    None,
    /// `.tar.lz4`
    Lz4,
    /// `.tar.zst`
    Zstd,
}

impl Compression {
    /// The compression of an artifact named `path`, or the sentence docker-worker gave for others.
    pub fn of(path: &str) -> Result<Compression, String> {
        if path.ends_with(".tar") {
            Ok(Compression::None)
        } else if path.ends_with(".tar.lz4") {
            Ok(Compression::Lz4)
        } else if path.ends_with(".tar.zst") {
            Ok(Compression::Zstd)
        } else {
            Err(
                "Unsupported image file format. Expected tarball with extension: .tar.zst, .tar.lz4 or .tar"
                    .into(),
            )
        }
    }
}

/// The local name of the image loaded from artifact `path` of `task_id`: md5 of both, hex, as
/// docker-worker named it, so a later task with the same artifact finds it.
pub fn local_name(task_id: &str, path: &str) -> String {
    let mut h = Md5::new();
    h.update(task_id.as_bytes());
    h.update(path.as_bytes());
    hex::encode(h.finalize())
}

/// What a load produced.
pub(crate) struct Loaded {
    /// `sha256:<hex>` of the artifact's bytes as downloaded (before decompression).
    pub sha256: String,
}

/// Download artifact `path` of `task_id` and load it as `<name>:latest`, retrying transient download
/// failures as `policy` says.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn download_and_load(
    docker: &Docker,
    queue: &QueueClient,
    task_id: &str,
    path: &str,
    name: &str,
    credentials: Option<&Credentials>,
    policy: &PullPolicy,
    watchers: &Watchers,
) -> Result<Loaded, ImageError> {
    let image = format!("{path} from task {task_id}");
    let compression = Compression::of(path).map_err(|message| ImageError::Artifact {
        image: image.clone(),
        message,
        task_fault: true,
    })?;
    let attempts = policy.attempts.max(1);
    let mut delay = policy.initial_delay;
    for attempt in 1..=attempts {
        watchers
            .line(fmt_log(&format!(
                "Downloading artifact \"{path}\" from task ID: {task_id}."
            )))
            .await;
        let err = match attempt_load(
            docker,
            queue,
            task_id,
            path,
            name,
            credentials,
            compression,
            policy,
            watchers,
        )
        .await
        {
            Ok(loaded) => return Ok(loaded),
            Err(e) => e,
        };
        let (message, retry) = match err {
            Failure::Download { message, retry } => (message, retry),
            Failure::Archive(message) => {
                return Err(ImageError::Artifact {
                    image,
                    message: format!("Error loading docker image. {message}"),
                    task_fault: true,
                })
            }
            Failure::Docker(message) => {
                return Err(ImageError::Artifact {
                    image,
                    message: format!("Error loading docker image. {message}"),
                    task_fault: false,
                })
            }
        };
        if !retry || attempt == attempts {
            return Err(ImageError::Artifact {
                image,
                message: format!(
                    "Could not download artifact \"{path}\" from task \"{task_id}\" after {attempt} attempt(s). Error: {message}"
                ),
                // A missing or forbidden artifact (not retried) is the task's to fix; a Queue that can't
                // be reached isn't.
                task_fault: !retry,
            });
        }
        watchers
            .line(fmt_error_log(&format!(
                "Error downloading \"{path}\" from task ID \"{task_id}\". {message} Next Attempt in: {} ms.",
                delay.as_millis()
            )))
            .await;
        actix_rt::time::sleep(delay).await;
        delay = (delay * 2).min(policy.max_delay);
    }
    unreachable!("the last attempt returns")
}

/// Why one attempt failed.
enum Failure {
    /// Getting the bytes failed; `retry` when another attempt may succeed.
    Download { message: String, retry: bool },
    /// The bytes are not a usable image tarball: the task's artifact is at fault.
    Archive(String),
    /// Docker failed to load a well-formed tarball.
    Docker(String),
}

#[allow(clippy::too_many_arguments)]
async fn attempt_load(
    docker: &Docker,
    queue: &QueueClient,
    task_id: &str,
    path: &str,
    name: &str,
    credentials: Option<&Credentials>,
    compression: Compression,
    policy: &PullPolicy,
    watchers: &Watchers,
) -> Result<Loaded, Failure> {
    let response = queue
        .artifact_download(task_id, path, credentials, policy.stall_timeout)
        .await
        .map_err(|e| match e {
            QueueError::Unavailable(message) => Failure::Download { message, retry: true },
            QueueError::Unauthorized { status, message } => Failure::Download {
                message: format!("HTTP {status}: {message}"),
                retry: false,
            },
            QueueError::NotFound(message) => Failure::Download {
                message: format!("HTTP 404: {message}"),
                retry: false,
            },
            other => Failure::Download {
                message: other.to_string(),
                retry: false,
            },
        })?;
    let expected = response.content_length();
    let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(16);
    let (tar_tx, mut tar_rx) = mpsc::channel::<Result<Bytes, io::Error>>(16);
    let image_name = name.to_string();
    let rewrite_done = Arc::new(AtomicBool::new(false));
    let rewrite_flag = rewrite_done.clone();
    let rewrite = tokio::task::spawn_blocking(move || {
        let input = ChannelReader::new(raw_rx);
        let output = ChannelWriter::new(tar_tx);
        let decoded: Box<dyn Read> = match compression {
            Compression::None => Box::new(input),
            Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
            Compression::Zstd => match ruzstd::decoding::StreamingDecoder::new(input) {
                Ok(d) => Box::new(d),
                Err(e) => return Err(format!("the zstd stream is unreadable: {e}")),
            },
        };
        let result = retag_image_tar(decoded, output, &image_name);
        // Set before the reader drops, so the download knows a closed channel means "done".
        rewrite_flag.store(result.is_ok(), Ordering::SeqCst);
        result
    });
    let download = async {
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut body = response.bytes_stream();
        let mut last_line = Instant::now();
        let started = Instant::now();
        loop {
            let chunk = match tokio::time::timeout(policy.stall_timeout, body.next()).await {
                Err(_) => {
                    return Err(Failure::Download {
                        message: format!("no bytes arrived for {} s", policy.stall_timeout.as_secs()),
                        retry: true,
                    })
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(Failure::Download {
                        message: format!("the download broke: {e}"),
                        retry: true,
                    })
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            hasher.update(&chunk);
            received += chunk.len() as u64;
            if last_line.elapsed() >= Duration::from_secs(5) {
                last_line = Instant::now();
                if let Some(total) = expected.filter(|t| *t > 0) {
                    watchers
                        .line(fmt_log(&format!(
                            "Download Progress: {:.2}%",
                            received as f64 * 100.0 / total as f64
                        )))
                        .await;
                }
            }
            watchers.display(ImageProgress {
                image: format!("{path} from task {task_id}"),
                done_bytes: received,
                total_bytes: expected,
                parts_done: 0,
                parts: 1,
                done: false,
            });
            // A closed channel: the rewriter failed (its error says why) or read the whole tarball and
            // what follows is padding, which still counts towards the artifact's hash.
            let gone = raw_tx.is_closed() || raw_tx.send(chunk).await.is_err();
            if gone && !rewrite_done.load(Ordering::SeqCst) {
                return Ok((received, hex::encode(hasher.finalize()), started.elapsed()));
            }
        }
        drop(raw_tx);
        if let Some(total) = expected.filter(|t| *t != received) {
            return Err(Failure::Download {
                message: format!("Expected size is '{total}' but received '{received}'"),
                retry: true,
            });
        }
        Ok((received, hex::encode(hasher.finalize()), started.elapsed()))
    };
    let load = async {
        let body = futures_util::stream::poll_fn(move |cx| tar_rx.poll_recv(cx));
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut answers = Box::pin(docker.import_image_stream(options, body, None));
        let mut error = None;
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(info) => {
                    if let Some(message) = info.error_detail.and_then(|d| d.message) {
                        error.get_or_insert(message);
                    }
                }
                Err(e) => {
                    error.get_or_insert(e.to_string());
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    };
    let (downloaded, rewritten, loaded) = tokio::join!(download, rewrite, load);
    let rewritten = rewritten.unwrap_or_else(|e| Err(format!("the tarball rewriter failed: {e}")));
    let (received, sha256, took) = downloaded?;
    rewritten.map_err(Failure::Archive)?;
    loaded.map_err(Failure::Docker)?;
    watchers.line(fmt_log("Downloaded artifact successfully.")).await;
    watchers
        .line(fmt_log(&format!(
            "Downloaded {:.3} mb in {:.1} s and loaded it into Docker as it arrived.",
            received as f64 / 1_000_000.0,
            took.as_secs_f64()
        )))
        .await;
    Ok(Loaded {
        sha256: format!("sha256:{sha256}"),
    })
}

/// Copy a `docker save` tarball from `input` to `output`, naming its one image `<name>:latest` in
/// `manifest.json` and `repositories`. A tarball of several images is refused, as docker-worker did.
pub fn retag_image_tar(input: impl Read, output: impl Write, name: &str) -> Result<(), String> {
    const ONE_IMAGE: &str = "Image tarballs must only contain one image";
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(output);
    let mut named = false;
    let entries = archive
        .entries()
        .map_err(|e| format!("the tarball is unreadable: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the tarball is unreadable: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("the tarball has an unreadable entry name: {e}"))?
            .into_owned();
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        let rewritten = match path.to_str() {
            Some("manifest.json") => {
                let mut manifest: Vec<Value> = read_json(&mut entry, "manifest.json")?;
                if manifest.len() != 1 {
                    return Err(ONE_IMAGE.into());
                }
                let Some(first) = manifest[0].as_object_mut() else {
                    return Err("manifest.json does not describe an image".into());
                };
                first.insert("RepoTags".into(), Value::from(vec![format!("{name}:latest")]));
                Some(serde_json::to_vec(&manifest).expect("JSON serializes"))
            }
            Some("repositories") => {
                let repositories: Map<String, Value> = read_json(&mut entry, "repositories")?;
                if repositories.len() != 1 {
                    return Err(ONE_IMAGE.into());
                }
                let id = repositories
                    .values()
                    .next()
                    .and_then(Value::as_object)
                    .and_then(|tags| tags.values().next())
                    .cloned()
                    .ok_or("repositories names no image id")?;
                let renamed = serde_json::json!({ name: { "latest": id } });
                Some(serde_json::to_vec(&renamed).expect("JSON serializes"))
            }
            _ => None,
        };
        let written = match rewritten {
            Some(data) => {
                named = true;
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, &path, data.as_slice())
            }
            None if kind.is_symlink() || kind.is_hard_link() => {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("the tarball has an unreadable link: {e}"))?
                    .ok_or("a link entry without a target")?
                    .into_owned();
                builder.append_link(&mut header, &path, target)
            }
            None => builder.append_data(&mut header, &path, &mut entry),
        };
        written.map_err(|e| write_error(&e))?;
    }
    if !named {
        return Err(
            "the tarball has neither manifest.json nor repositories, so it is not a `docker save` image"
                .into(),
        );
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| write_error(&e))
}

fn read_json<T: serde::de::DeserializeOwned>(entry: &mut impl Read, what: &str) -> Result<T, String> {
    let mut data = Vec::new();
    entry
        .take(16 << 20)
        .read_to_end(&mut data)
        .map_err(|e| format!("{what} is unreadable: {e}"))?;
    serde_json::from_slice(&data).map_err(|e| format!("{what} is not valid: {e}"))
}

fn write_error(e: &io::Error) -> String {
    // A bad compressed stream surfaces on read and is reported as such; a write fails when Docker
    // stopped reading, and Docker's own error says why.
    format!("the tarball could not be passed on: {e}")
}

/// A blocking reader over chunks arriving on a channel.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A blocking writer that sends 64 KiB chunks down a channel.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 64 * 1024;

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Result<Bytes, io::Error>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "Docker stopped reading the image"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn entries(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn the_one_image_is_renamed_and_everything_else_passes_through() {
        let layer = vec![7u8; 5000];
        let input = tarball(&[
            ("abc/layer.tar", &layer),
            (
                "manifest.json",
                br#"[{"Config":"c.json","RepoTags":["busybox:latest"],"Layers":["abc/layer.tar"]}]"#,
            ),
            ("repositories", br#"{"busybox":{"latest":"abc"}}"#),
        ]);
        let mut out = Vec::new();
        retag_image_tar(input.as_slice(), &mut out, "0123abcd").unwrap();
        let got = entries(&out);
        assert_eq!(got[0], ("abc/layer.tar".to_string(), layer));
        let manifest: Value = serde_json::from_slice(&got[1].1).unwrap();
        assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["0123abcd:latest"]));
        assert_eq!(manifest[0]["Layers"], serde_json::json!(["abc/layer.tar"]));
        let repositories: Value = serde_json::from_slice(&got[2].1).unwrap();
        assert_eq!(repositories, serde_json::json!({"0123abcd": {"latest": "abc"}}));
    }

    #[test]
    fn tarballs_of_several_images_or_none_are_refused() {
        let two = tarball(&[("manifest.json", br#"[{"Config":"a"},{"Config":"b"}]"#)]);
        let e = retag_image_tar(two.as_slice(), Vec::new(), "n").unwrap_err();
        assert_eq!(e, "Image tarballs must only contain one image");
        let two = tarball(&[("repositories", br#"{"a":{"latest":"1"},"b":{"latest":"2"}}"#)]);
        assert!(retag_image_tar(two.as_slice(), Vec::new(), "n").is_err());
        let none = tarball(&[("x/layer.tar", b"data")]);
        let e = retag_image_tar(none.as_slice(), Vec::new(), "n").unwrap_err();
        assert!(e.contains("neither manifest.json nor repositories"), "{e}");
        let garbage = vec![1u8; 2000];
        assert!(retag_image_tar(garbage.as_slice(), Vec::new(), "n").is_err());
    }

    #[test]
    fn names_and_formats_follow_docker_worker() {
        assert_eq!(
            local_name("csTL863FQYCK82XEFjMhMw", "public/image.tar"),
            hex::encode(Md5::digest(b"csTL863FQYCK82XEFjMhMwpublic/image.tar"))
        );
        assert_eq!(Compression::of("public/image.tar"), Ok(Compression::None));
        assert_eq!(Compression::of("public/image.tar.lz4"), Ok(Compression::Lz4));
        assert_eq!(Compression::of("public/image.tar.zst"), Ok(Compression::Zstd));
        assert!(Compression::of("public/image.tgz")
            .unwrap_err()
            .starts_with("Unsupported image file format"));
    }
}
