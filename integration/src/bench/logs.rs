//! Figures 3 and 4: the worker's resident memory idle and while tasks stream logs to live log readers,
//! and one live log reader's throughput and latency against the engine's raw attach stream.

use std::io::Read;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::stats::{median, percentile};
use super::worker::{wait_completed, Worker};
use super::{count, BenchError, Context, FigureResult, Measurement};
use crate::queue_double::{Options as DoubleOptions, QueueDouble};
use crate::{fixture_image, sh_payload};

const LIVE_LOG: &str = "public/logs/live.log";
const LINE: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const START_MARK: &[u8] = b"0123456789abcdefghij";
const END_MARK: &[u8] = b"BENCH-END";

/// `bytes` of log (MB = 10^6), then the end marker. The leading sleep lets a reader attach first.
fn flood_script(bytes: u64) -> String {
    format!("sleep 2; yes {LINE} | head -c {bytes}; echo; echo BENCH-END")
}

/// `samples` readings of the clock, ~20 ms apart. busybox's `adjtimex` prints the wall clock in µs
/// (`time.tv_sec`, `time.tv_usec`) straight to the TTY, with no pipe in between to add delay.
fn clock_script(samples: usize) -> String {
    format!("sleep 2; i=0; while [ $i -lt {samples} ]; do adjtimex; usleep 20000; i=$((i+1)); done")
}

/// The live log URL, once the worker has published the reference artifact.
pub fn live_url(double: &QueueDouble, task: &str) -> Result<String, BenchError> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(a) = double.artifact(task, 0, LIVE_LOG) {
            if a["storageType"] == "reference" {
                if let Some(url) = a["url"].as_str() {
                    return Ok(url.to_string());
                }
            }
        }
        if Instant::now() > end {
            return Err(BenchError::Timeout(
                format!("the live log reference of {task}"),
                60,
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Read the live log at `url` to its end, handing each chunk to `on_chunk` as it arrives.
pub fn read_live(url: &str, on_chunk: &mut dyn FnMut(&[u8])) -> Result<(), BenchError> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .map_err(|e| BenchError::Broken(format!("an HTTP client: {e}")))?;
    let mut response = client
        .get(url)
        .send()
        .map_err(|e| BenchError::Broken(format!("GET {url}: {e}")))?;
    if !response.status().is_success() {
        return Err(BenchError::Broken(format!(
            "GET {url}: HTTP {}",
            response.status()
        )));
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match response.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => on_chunk(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BenchError::Io(format!("reading {url}"), e)),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Times a stream from the chunk holding the payload's first bytes to the chunk holding the end marker.
#[derive(Debug, Default)]
pub struct Throughput {
    first: Option<Instant>,
    last: Option<Instant>,
    tail: Vec<u8>,
    /// Bytes seen.
    pub total: u64,
}

impl Throughput {
    /// Take the next chunk, just arrived.
    pub fn feed(&mut self, chunk: &[u8]) {
        let now = Instant::now();
        self.total += chunk.len() as u64;
        // A marker may straddle two chunks: look at the seam too.
        self.tail.extend_from_slice(&chunk[..chunk.len().min(64)]);
        if self.first.is_none() && (contains(&self.tail, START_MARK) || contains(chunk, START_MARK)) {
            self.first = Some(now);
        }
        // The payload has no '-': a scan for it keeps the search for the end marker cheap.
        if self.last.is_none()
            && (contains(&self.tail, END_MARK) || (chunk.contains(&b'-') && contains(chunk, END_MARK)))
        {
            self.last = Some(now);
        }
        self.tail.clear();
        self.tail
            .extend_from_slice(&chunk[chunk.len().saturating_sub(32)..]);
    }

    /// Whether the end marker came through.
    pub fn ended(&self) -> bool {
        self.last.is_some()
    }

    /// MB/s of `bytes` of payload, from its first bytes to the end marker.
    pub fn mbps(&self, bytes: u64) -> Result<f64, BenchError> {
        match (self.first, self.last) {
            (Some(first), Some(last)) if self.total >= bytes => {
                Ok(bytes as f64 / 1e6 / last.duration_since(first).as_secs_f64().max(1e-6))
            }
            _ => Err(BenchError::Broken(format!(
                "a reader saw {} bytes (of {bytes}), start marker {}, end marker {}",
                self.total,
                self.first.is_some(),
                self.last.is_some()
            ))),
        }
    }
}

/// Collects latencies from `adjtimex` output: each `time.tv_usec` line completes one clock reading,
/// compared with the host's clock when the chunk holding it arrived.
#[derive(Debug, Default)]
pub struct Latency {
    partial: Vec<u8>,
    seconds: Option<u64>,
    /// Milliseconds from each reading to its arrival.
    pub samples_ms: Vec<f64>,
}

impl Latency {
    /// Take the next chunk, just arrived.
    pub fn feed(&mut self, chunk: &[u8]) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.partial.extend_from_slice(chunk);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            let value = |key: &str| line.strip_prefix(key)?.trim().parse::<u64>().ok();
            if let Some(s) = value("time.tv_sec:") {
                self.seconds = Some(s);
            } else if let (Some(us), Some(s)) = (value("time.tv_usec:"), self.seconds.take()) {
                let written = s as f64 + us as f64 / 1e6;
                self.samples_ms.push((now - written) * 1000.0);
            }
        }
    }
}

/// Run `script` as a task and read its live log, handing each chunk to `on_chunk`.
fn worker_stream(
    double: &QueueDouble,
    worker: &Worker,
    script: &str,
    on_chunk: &mut dyn FnMut(&[u8]),
) -> Result<(), BenchError> {
    let task = worker.create(double, sh_payload(script, 900));
    let url = live_url(double, &task)?;
    read_live(&url, on_chunk)?;
    wait_completed(double, &task, Duration::from_secs(300))
}

/// Figure 3: resident memory idle, then the peak while tasks stream logs to one live log reader each.
pub fn memory(cx: &Context<'_>) -> FigureResult {
    let (n, bytes) = (cx.sizes.memory_tasks, cx.sizes.memory_log_bytes);
    let double = QueueDouble::start(DoubleOptions::default());
    let worker = Worker::start(&cx.options.worker, &double, &cx.log("memory"), n, &[])?;
    // Idle: started, and waiting on its first claimWork.
    double.wait_for_calls("claimWork", 1, Duration::from_secs(30));
    let idle = worker.rss_mib()?;
    worker.reset_peak()?;
    let tasks: Vec<String> = (0..n)
        .map(|_| worker.create(&double, sh_payload(&flood_script(bytes), 600)))
        .collect();
    let readers: Vec<Result<(), BenchError>> = thread::scope(|s| {
        let handles: Vec<_> = tasks
            .iter()
            .map(|task| {
                let double = &double;
                s.spawn(move || {
                    let url = live_url(double, task)?;
                    let mut scan = Throughput::default();
                    read_live(&url, &mut |c| scan.feed(c))?;
                    scan.mbps(bytes).map(|_| ())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Broken("a reader panicked".into())))
            })
            .collect()
    });
    for task in &tasks {
        wait_completed(&double, task, Duration::from_secs(300))?;
    }
    readers.into_iter().collect::<Result<Vec<()>, _>>()?;
    let peak = worker.peak_mib()?;
    let after = worker.rss_mib()?;
    worker.stop(cx.engine)?;
    Ok(vec![
        Measurement {
            id: "3a",
            worker: Some(idle),
            baseline: None,
            measured: idle,
            note: format!(
                "VmRSS of the worker process once started and waiting on its first claimWork; {after:.1} MiB \
                 after the streaming tasks of 3b ended."
            ),
        },
        Measurement {
            id: "3b",
            worker: Some(peak),
            baseline: None,
            measured: peak,
            note: format!(
                "VmHWM (peak reset just before) while {n} tasks at capacity {n} each wrote {} MB of log, each \
                 read to its end by its own live log reader.",
                bytes / 1_000_000
            ),
        },
    ])
}

/// Figure 4: one live log reader of a task against the raw attach stream of the same script in a bare
/// container (TTY, attached before start, as the worker does), alternating, for throughput and latency.
pub fn live_log(cx: &Context<'_>) -> FigureResult {
    let (rounds, bytes, samples) = (cx.sizes.log_rounds, cx.sizes.log_bytes, cx.sizes.latency_samples);
    let double = QueueDouble::start(DoubleOptions::default());
    let worker = Worker::start(&cx.options.worker, &double, &cx.log("live-log"), 1, &[])?;
    let (flood, clock) = (flood_script(bytes), clock_script(samples));
    let (mut ours, mut raw, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lat_ours, mut lat_raw) = (Latency::default(), Latency::default());
    for round in 0..rounds {
        let worker_mbps = || -> Result<f64, BenchError> {
            let mut scan = Throughput::default();
            worker_stream(&double, &worker, &flood, &mut |c| scan.feed(c))?;
            scan.mbps(bytes)
        };
        let raw_mbps = || -> Result<f64, BenchError> {
            let mut scan = Throughput::default();
            cx.engine
                .run_attached(fixture_image(), &flood, &mut |c| scan.feed(c))?;
            scan.mbps(bytes)
        };
        let (w, r) = if round % 2 == 0 {
            let w = worker_mbps()?;
            (w, raw_mbps()?)
        } else {
            let r = raw_mbps()?;
            (worker_mbps()?, r)
        };
        ours.push(w);
        raw.push(r);
        ratio.push(w / r * 100.0);
        worker_stream(&double, &worker, &clock, &mut |c| lat_ours.feed(c))?;
        cx.engine
            .run_attached(fixture_image(), &clock, &mut |c| lat_raw.feed(c))?;
    }
    worker.stop(cx.engine)?;
    for (side, lat) in [("live log", &lat_ours), ("raw attach", &lat_raw)] {
        if lat.samples_ms.len() < rounds * samples * 9 / 10 {
            return Err(BenchError::Broken(format!(
                "the {side} reader saw {} of {} clock readings",
                lat.samples_ms.len(),
                rounds * samples
            ))
            .into());
        }
    }
    let (ours_ms, raw_ms) = (&lat_ours.samples_ms, &lat_raw.samples_ms);
    let latency_note = format!(
        "{} clock readings per side ({rounds} × {samples}, ~20 ms apart), each the container's wall clock in µs \
         (`adjtimex`) against the host's when the reader got it; max: live log {:.0} ms, raw {:.0} ms.",
        ours_ms.len(),
        percentile(ours_ms, 1.0),
        percentile(raw_ms, 1.0)
    );
    Ok(vec![
        Measurement {
            id: "4a",
            worker: Some(median(&ours)),
            baseline: Some(median(&raw)),
            measured: median(&ratio),
            note: format!(
                "{}, alternating; {} MB (10^6 bytes) of task output, timed from the chunk holding its first \
                 bytes to the chunk holding the end marker; the figure is the median of the per-round ratios.",
                count(rounds, "round"),
                bytes / 1_000_000
            ),
        },
        Measurement {
            id: "4b",
            worker: Some(percentile(ours_ms, 0.5)),
            baseline: Some(percentile(raw_ms, 0.5)),
            measured: percentile(ours_ms, 0.5),
            note: latency_note.clone(),
        },
        Measurement {
            id: "4c",
            worker: Some(percentile(ours_ms, 0.99)),
            baseline: Some(percentile(raw_ms, 0.99)),
            measured: percentile(ours_ms, 0.99),
            note: latency_note,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_finds_markers_across_chunk_seams() {
        let mut scan = Throughput::default();
        scan.feed(b"header\r\n0123456789ab");
        scan.feed(b"cdefghij rest");
        scan.feed(b" more BENCH-");
        scan.feed(b"END\r\n");
        assert!(scan.ended());
        assert!(scan.mbps(10).is_ok());
        assert!(scan.mbps(10_000).is_err(), "fewer bytes than the payload");
    }

    #[test]
    fn latency_pairs_seconds_with_microseconds_across_chunks() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let mut lat = Latency::default();
        lat.feed(format!("    time.tv_sec:  {}\r\n    time.tv_u", now.as_secs()).as_bytes());
        lat.feed(format!("sec: {}\r\n    return value: 5\r\n", now.subsec_micros()).as_bytes());
        assert_eq!(lat.samples_ms.len(), 1);
        assert!((0.0..1000.0).contains(&lat.samples_ms[0]), "{:?}", lat.samples_ms);
    }
}
