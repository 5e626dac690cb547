//! Figure 5: a large artifact from a task's container to the double's upload endpoint, against `curl -T`
//! of the same bytes to the same endpoint, and how much the worker's memory grows meanwhile.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use super::engine::EventWatch;
use super::stats::median;
use super::worker::{wait_completed, Worker};
use super::{count, BenchError, Context, FigureResult, Measurement};
use crate::fixture_image;
use crate::queue_double::hawk::{header_mac, slugid, SignedRequest};
use crate::queue_double::{Options as DoubleOptions, QueueDouble};

const ARTIFACT: &str = "public/bench/blob.bin";
const CONTENT_TYPE: &str = "application/octet-stream";

/// A Hawk `Authorization` header for a request without a signed payload hash.
fn hawk(client: &(String, String), method: &str, url: &reqwest::Url) -> String {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let nonce = slugid()[..10].to_string();
    let resource = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let request = SignedRequest {
        method,
        resource: &resource,
        host: url.host_str().unwrap_or_default(),
        port: url.port_or_known_default().unwrap_or(80),
    };
    let mac = header_mac(&client.1, &request, &ts, &nonce, None, None, None, None);
    format!(
        "Hawk id=\"{}\", ts=\"{ts}\", nonce=\"{nonce}\", mac=\"{mac}\"",
        client.0
    )
}

/// A fresh `putUrl` from the double's object service (`createUpload`), with the headers it wants.
fn put_url(double: &QueueDouble, len: u64) -> Result<(String, Vec<(String, String)>), BenchError> {
    let url = reqwest::Url::parse(&format!(
        "{}/api/object/v1/upload/bench-raw-{}",
        double.root_url(),
        slugid()
    ))
    .map_err(|e| BenchError::Broken(format!("the createUpload URL: {e}")))?;
    let expires = (Utc::now() + chrono::Duration::days(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let body = json!({
        "projectId": "docker-worker-bench",
        "uploadId": slugid(),
        "expires": expires,
        "proposedUploadMethods": {"putUrl": {"contentType": CONTENT_TYPE, "contentLength": len}},
    });
    let reply: Value = reqwest::blocking::Client::new()
        .put(url.clone())
        .header("Authorization", hawk(&double.root_credentials(), "PUT", &url))
        .json(&body)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .map_err(|e| BenchError::Broken(format!("createUpload: {e}")))?;
    let put = &reply["uploadMethod"]["putUrl"];
    let target = put["url"]
        .as_str()
        .ok_or_else(|| BenchError::Broken(format!("createUpload gave no putUrl: {reply}")))?;
    let headers = put["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("content-length"))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok((target.to_string(), headers))
}

/// `curl -T` of the file to a fresh putUrl; MB/s. `Expect:` is cleared so curl does not wait for a
/// `100 Continue` before sending.
fn curl_mbps(double: &QueueDouble, file: &std::path::Path, len: u64) -> Result<f64, BenchError> {
    let (url, headers) = put_url(double, len)?;
    // As the task does before it exits: nothing of the worker's upload is still being flushed.
    let _ = Command::new("sync").status();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-f", "-o", "/dev/null", "-H", "Expect:"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    cmd.arg("-T").arg(file).arg(&url).stdin(Stdio::null());
    let started = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| BenchError::Io("running curl".into(), e))?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(BenchError::Broken(format!(
            "curl -T failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(len as f64 / 1e6 / took.as_secs_f64())
}

/// The engine's own way out of a container, for reference: Docker's archive API read with curl, untarred,
/// and piped into `curl -T -` to a fresh putUrl. MB/s.
fn archive_pipe_mbps(cx: &Context<'_>, double: &QueueDouble, len: u64) -> Result<f64, BenchError> {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let id = cx.engine.run_kept(
        fixture_image(),
        &format!("head -c {len} /dev/zero > /tmp/blob.bin && sync"),
    )?;
    let measured = (|| {
        let (url, headers) = put_url(double, len)?;
        let mut put =
            format!("curl -sS -f -o /dev/null -H Expect: -H Transfer-Encoding: -H 'Content-Length: {len}'");
        for (k, v) in headers {
            put.push_str(&format!(" -H '{k}: {v}'"));
        }
        let script = format!(
            "set -o pipefail; curl -sS -f --unix-socket {socket} \
             'http://docker/containers/{id}/archive?path=/tmp/blob.bin' | tar -xO | {put} -T - '{url}'"
        );
        let started = Instant::now();
        let out = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BenchError::Io("running the archive pipe".into(), e))?;
        let took = started.elapsed();
        if !out.status.success() {
            return Err(BenchError::Broken(format!(
                "the archive pipe failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(len as f64 / 1e6 / took.as_secs_f64())
    })();
    cx.engine.remove_all(&[id]);
    measured
}

/// One worker round, and where its time went.
struct Round {
    /// MB/s from the container's `die` to the artifact being finished.
    mbps: f64,
    /// Peak resident memory during the task minus resident memory before it, MiB.
    grew: f64,
    /// The uploaded blob, for curl to send again.
    blob: std::path::PathBuf,
    /// Seconds from `die` to the PUT's start, of the PUT, and from its end to the artifact being finished.
    phases: [f64; 3],
}

/// One worker round: the task writes the artifact and exits; timed from the container's `die` to the
/// artifact being finished on the Queue, with the PUT's start and end seen from the double.
fn worker_round(double: &QueueDouble, worker: &Worker, len: u64) -> Result<Round, BenchError> {
    worker.reset_peak()?;
    let before = worker.rss_mib()?;
    let payload = json!({
        "image": fixture_image(),
        // sync: no side starts with the other's writes still being flushed to disk.
        "command": ["/bin/sh", "-c", format!("head -c {len} /dev/zero > /tmp/blob.bin && sync")],
        "maxRunTime": 900,
        "artifacts": {ARTIFACT: {"type": "file", "path": "/tmp/blob.bin"}},
    });
    let (puts, finishes) = (double.uploads(), double.calls("finishUpload"));
    let task = worker.create(double, payload);
    let died = EventWatch::start(
        &format!("docker-worker.task-id={task}"),
        "die",
        Duration::from_secs(600),
    );
    let end = Instant::now() + Duration::from_secs(900);
    let (mut put_started, mut put_done) = (None, None);
    let finished = loop {
        let now = SystemTime::now();
        if put_started.is_none() && double.uploads() > puts {
            put_started = Some(now);
        }
        if put_done.is_none() && double.calls("finishUpload") > finishes {
            put_done = Some(now);
        }
        if double
            .artifact(&task, 0, ARTIFACT)
            .is_some_and(|a| a["present"] == true)
        {
            break now;
        }
        if Instant::now() > end {
            return Err(BenchError::Timeout(format!("the artifact of {task}"), 900));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let peak = worker.peak_mib()?;
    let died = died.wait(Duration::from_secs(10))?;
    wait_completed(double, &task, Duration::from_secs(300))?;
    let path = double
        .artifact_path(&task, 0, ARTIFACT)
        .ok_or_else(|| BenchError::Broken(format!("{task} has no stored {ARTIFACT}")))?;
    let stored = std::fs::metadata(&path)
        .map_err(|e| BenchError::Io(path.display().to_string(), e))?
        .len();
    if stored != len {
        return Err(BenchError::Broken(format!(
            "the stored artifact has {stored} bytes, not {len}"
        )));
    }
    let secs = |from: SystemTime, to: SystemTime| to.duration_since(from).unwrap_or_default().as_secs_f64();
    let (put_started, put_done) = (put_started.unwrap_or(died), put_done.unwrap_or(finished));
    Ok(Round {
        mbps: len as f64 / 1e6 / secs(died, finished).max(1e-6),
        grew: peak - before,
        blob: path,
        phases: [
            secs(died, put_started),
            secs(put_started, put_done),
            secs(put_done, finished),
        ],
    })
}

/// Figure 5: rounds of one worker upload and one `curl -T` of the blob it stored, to the same endpoint.
pub fn artifact(cx: &Context<'_>) -> FigureResult {
    let (rounds, len) = (cx.sizes.upload_rounds, cx.sizes.upload_bytes);
    let double = QueueDouble::start(DoubleOptions::default());
    let worker = Worker::start(&cx.options.worker, &double, &cx.log("upload"), 1, &[])?;
    let (mut ours, mut raw, mut ratio, mut growth) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut phases, mut pipe): ([Vec<f64>; 3], _) = (Default::default(), Vec::new());
    for _ in 0..rounds {
        // The worker goes first: its upload makes the bytes curl sends.
        let round = worker_round(&double, &worker, len)?;
        let r = curl_mbps(&double, &round.blob, len)?;
        pipe.push(archive_pipe_mbps(cx, &double, len)?);
        ours.push(round.mbps);
        raw.push(r);
        ratio.push(round.mbps / r * 100.0);
        growth.push(round.grew);
        for (all, one) in phases.iter_mut().zip(round.phases) {
            all.push(one);
        }
    }
    worker.stop(cx.engine)?;
    let size = if len >= 1 << 30 {
        format!("{} GiB", len >> 30)
    } else {
        format!("{} MiB", len >> 20)
    };
    Ok(vec![
        Measurement {
            id: "5a",
            worker: Some(median(&ours)),
            baseline: Some(median(&raw)),
            measured: median(&ratio),
            note: format!(
                "{} of a {size} file artifact (object storage): the worker timed from the \
                 container's `die` event to the artifact being finished (Docker archive read, createArtifact, \
                 createUpload, PUT, finishUpload, finishArtifact); curl timed for its PUT of the same bytes to a \
                 fresh putUrl of the same double. MB = 10^6 bytes. The worker's time, medians: {:.2} s from `die` \
                 to the PUT's start, {:.2} s of PUT, {:.2} s from its end to the artifact being finished. For \
                 reference, the same bytes out of a container through Docker's archive API, untarred and piped into \
                 `curl -T -` to the same endpoint (no hashing): {:.0} MB/s, {:.0} % of `curl -T`.",
                count(rounds, "round"),
                median(&phases[0]),
                median(&phases[1]),
                median(&phases[2]),
                median(&pipe),
                median(&pipe) / median(&raw) * 100.0
            ),
        },
        Measurement {
            id: "5b",
            worker: Some(median(&growth)),
            baseline: None,
            measured: median(&growth),
            note: format!(
                "VmHWM during the task minus VmRSS before it; max over {} {:.1} MiB.",
                count(rounds, "round"),
                growth.iter().copied().fold(f64::NAN, f64::max)
            ),
        },
    ])
}
