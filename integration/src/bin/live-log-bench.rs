//! `live-log-bench`: measure docker-worker's live log against `docker logs -f` of the same container, in
//! one run, side by side: per-line latency (container clock vs. host clock, both `/proc/uptime`) and the
//! throughput of one reader of a large log.
//!
//! Needs Docker and the fixture image (`integration/setup.sh`) and a built worker (`cargo build --release`).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use docker_worker_integration::daemon::{assert_no_containers, create, run_state, wait_resolved, Daemon};
use docker_worker_integration::queue_double::{Options, QueueDouble};
use docker_worker_integration::{containers_of_task, require_docker, sh_payload};

const USAGE: &str = "usage: live-log-bench [--worker PATH] [--mb N] [--rounds R]";
const LIVE_LOG: &str = "public/logs/live.log";
const LINE: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const START_MARK: &[u8] = b"0123456789abcdefghij";
const END_MARK: &[u8] = b"BENCH-END";
const LATENCY_LINES: usize = 300;

fn fail(message: &str) -> ! {
    eprintln!("live-log-bench: {message}\n{USAGE}");
    std::process::exit(2);
}

struct Args {
    worker: PathBuf,
    mb: u64,
    rounds: usize,
}

fn parse_args() -> Args {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let release = target.join("release/docker-worker");
    let mut args = Args {
        worker: if release.exists() {
            release
        } else {
            target.join("debug/docker-worker")
        },
        mb: 100,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--worker" => args.worker = PathBuf::from(value("--worker")),
            "--mb" => {
                args.mb = value("--mb")
                    .parse()
                    .unwrap_or_else(|_| fail("--mb needs a whole number"))
            }
            "--rounds" => {
                args.rounds = value("--rounds")
                    .parse()
                    .unwrap_or_else(|_| fail("--rounds needs a whole number"))
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    if args.mb == 0 || args.rounds == 0 {
        fail("--mb and --rounds must be at least 1");
    }
    if !args.worker.exists() {
        fail(&format!(
            "no worker binary at {}; run `cargo build --release` or pass --worker",
            args.worker.display()
        ));
    }
    args
}

/// The host's `/proc/uptime` first field, in seconds (10 ms resolution).
fn host_uptime() -> f64 {
    let s = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime is readable");
    s.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("/proc/uptime starts with a number")
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .expect("an HTTP client")
}

/// The live log URL, once the worker has published the reference artifact.
fn live_url(double: &QueueDouble, task: &str) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(a) = double.artifact(task, 0, LIVE_LOG) {
            if a["storageType"] == "reference" {
                return a["url"].as_str().expect("a reference url").to_string();
            }
        }
        assert!(
            Instant::now() < end,
            "no live log reference for {task} within 60 s"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The task's container id, once it exists and runs (`docker logs -f` does not follow a stopped one).
fn running_container(task: &str) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(id) = containers_of_task(task).into_iter().next() {
            let out = Command::new("docker")
                .args(["inspect", "--format", "{{.State.Running}}", &id])
                .output()
                .expect("docker inspect runs");
            if String::from_utf8_lossy(&out.stdout).trim() == "true" {
                return id;
            }
        }
        assert!(
            Instant::now() < end,
            "no running container for {task} within 60 s"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// `docker logs -f <id>`, its stdout piped.
fn docker_logs(id: &str) -> Child {
    Command::new("docker")
        .args(["logs", "-f", id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker logs runs")
}

/// Wait for `docker logs` to end on its own; kill it if it lingers.
fn reap(mut child: Child) {
    let end = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Per-line latencies (ms) of a stream of lines, each printed as a `/proc/uptime` value.
fn line_latencies(stream: impl Read) -> Vec<f64> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut seen = Vec::new();
    while reader
        .read_until(b'\n', &mut line)
        .map(|n| n > 0)
        .unwrap_or(false)
    {
        let arrived = host_uptime();
        seen.push((String::from_utf8_lossy(&line).into_owned(), arrived));
        line.clear();
    }
    seen.iter()
        .filter_map(|(l, arrived)| {
            let printed: f64 = l.trim().parse().ok()?;
            Some((arrived - printed) * 1000.0)
        })
        .collect()
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
}

fn summarize(mut ms: Vec<f64>) -> Latency {
    assert!(!ms.is_empty(), "no timestamp lines were read");
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Latency {
        p50: pct(0.50),
        p99: pct(0.99),
        max: ms[ms.len() - 1],
        n: ms.len(),
    }
}

fn finish_task(double: &QueueDouble, task: &str) {
    let status = wait_resolved(double, task, 0);
    let (state, reason) = run_state(&status, 0);
    assert_eq!(state, "completed", "task {task} ended {state}/{reason}");
    assert_no_containers(task);
}

/// One latency round: (live log, docker logs -f).
fn latency_round(double: &QueueDouble, tasks: &mut Vec<String>) -> (Latency, Latency) {
    // The leading sleep lets both readers attach before the first timestamp is printed.
    let script = format!(
        "sleep 3; for i in $(seq 1 {LATENCY_LINES}); do cut -d' ' -f1 /proc/uptime; sleep 0.02; done"
    );
    let task = create(double, sh_payload(&script, 300));
    tasks.push(task.clone());
    let url = live_url(double, &task);
    let container = running_container(&task);
    let (live, raw) = read_both(&url, &container, line_latencies);
    finish_task(double, &task);
    for (name, v) in [("live log", &live), ("docker logs", &raw)] {
        if v.len() != LATENCY_LINES {
            eprintln!(
                "warning: {name} reader saw {} of {LATENCY_LINES} timestamp lines",
                v.len()
            );
        }
    }
    (summarize(live), summarize(raw))
}

/// Start a live log reader and a `docker logs -f` of the same container at the same moment, each reading
/// with `read`; their results as (live log, docker logs).
fn read_both<T: Send>(url: &str, container: &str, read: fn(Box<dyn Read + Send>) -> T) -> (T, T) {
    let start = Barrier::new(2);
    thread::scope(|s| {
        let live = s.spawn(|| {
            start.wait();
            let response = client().get(url).send().expect("the live log answers");
            assert!(
                response.status().is_success(),
                "live log: HTTP {}",
                response.status()
            );
            read(Box::new(response))
        });
        let raw = s.spawn(|| {
            start.wait();
            let mut child = docker_logs(container);
            let out = read(Box::new(child.stdout.take().expect("piped stdout")));
            reap(child);
            out
        });
        (
            live.join().expect("live reader"),
            raw.join().expect("docker logs reader"),
        )
    })
}

/// Read a stream to its end in large chunks; the seconds from the chunk holding the first payload bytes to
/// the chunk holding the end marker, and the bytes read.
fn timed_read(mut stream: impl Read) -> (f64, u64) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut total = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the log: {e}"),
        };
        let now = Instant::now();
        total += n as u64;
        // Look for the markers in the chunk and the few bytes before it (a marker may straddle chunks).
        tail.extend_from_slice(&buf[..n.min(64)]);
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        if first.is_none() && (contains(&tail, START_MARK) || contains(&buf[..n], START_MARK)) {
            first = Some(now);
        }
        // The payload has no '-': a memchr for it keeps the scan for the end marker cheap.
        if last.is_none()
            && (contains(&tail, END_MARK) || (buf[..n].contains(&b'-') && contains(&buf[..n], END_MARK)))
        {
            last = Some(now);
        }
        tail.clear();
        tail.extend_from_slice(&buf[n.saturating_sub(32)..n]);
    }
    let (first, last) = (
        first.expect("the payload's first bytes were read"),
        last.expect("the end marker was read"),
    );
    (last.duration_since(first).as_secs_f64(), total)
}

/// One throughput round: MB/s of (live log, docker logs -f), both reading the same task at once.
fn throughput_round(double: &QueueDouble, mb: u64, tasks: &mut Vec<String>) -> (f64, f64) {
    let bytes = mb * 1_000_000;
    let script = format!("sleep 2; yes {LINE} | head -c {bytes}; echo; echo BENCH-END");
    let task = create(double, sh_payload(&script, 900));
    tasks.push(task.clone());
    let url = live_url(double, &task);
    let container = running_container(&task);
    let ((live_s, live_n), (raw_s, raw_n)) = read_both(&url, &container, timed_read);
    finish_task(double, &task);
    for (name, n) in [("live log", live_n), ("docker logs", raw_n)] {
        if n < bytes {
            eprintln!("warning: {name} reader got {n} bytes, fewer than the {bytes} written");
        }
    }
    let mbps = |secs: f64| bytes as f64 / 1e6 / secs.max(1e-6);
    (mbps(live_s), mbps(raw_s))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args = parse_args();
    if std::panic::catch_unwind(require_docker).is_err() {
        eprintln!(
            "live-log-bench: Docker or the fixture image is missing (see above); run integration/setup.sh"
        );
        std::process::exit(3);
    }
    let began = Instant::now();
    println!(
        "live-log-bench: worker {}, {} MB, {} rounds",
        args.worker.display(),
        args.mb,
        args.rounds
    );
    let mut tasks = Vec::new();
    let (mut lat_live, mut lat_raw, mut tp_live, mut tp_raw) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    {
        let double = QueueDouble::start(Options::default());
        let daemon = Daemon::start(&args.worker.to_string_lossy(), &double, &[]);
        for round in 1..=args.rounds {
            let (live, raw) = latency_round(&double, &mut tasks);
            println!(
                "round {round} latency ms (p50/p99/max, n): live log {:.0}/{:.0}/{:.0} ({}), docker logs -f \
                 {:.0}/{:.0}/{:.0} ({})",
                live.p50, live.p99, live.max, live.n, raw.p50, raw.p99, raw.max, raw.n
            );
            lat_live.push(live);
            lat_raw.push(raw);
            let (live, raw) = throughput_round(&double, args.mb, &mut tasks);
            println!(
                "round {round} throughput MB/s: live log {live:.1}, docker logs -f {raw:.1} (ratio {:.2})",
                live / raw
            );
            tp_live.push(live);
            tp_raw.push(raw);
        }
        drop(daemon);
        drop(double);
    }
    for task in &tasks {
        let left = containers_of_task(task);
        assert!(left.is_empty(), "containers left behind for {task}: {left:?}");
    }
    let med = |v: &[Latency], f: fn(&Latency) -> f64| median(v.iter().map(f).collect());
    let (live_mbps, raw_mbps) = (median(tp_live.clone()), median(tp_raw.clone()));
    let ratios: Vec<f64> = tp_live.iter().zip(&tp_raw).map(|(l, r)| l / r).collect();
    println!();
    println!(
        "Medians over {} rounds (worker: {}).\n",
        args.rounds,
        args.worker.display()
    );
    println!("| measurement | live log (HTTP) | docker logs -f (raw) | live / raw |");
    println!("|---|---:|---:|---:|");
    for (name, f) in [
        ("latency p50 (ms)", (|l: &Latency| l.p50) as fn(&Latency) -> f64),
        ("latency p99 (ms)", |l: &Latency| l.p99),
        ("latency max (ms)", |l: &Latency| l.max),
    ] {
        let (l, r) = (med(&lat_live, f), med(&lat_raw, f));
        println!("| {name} | {l:.0} | {r:.0} | |");
    }
    println!(
        "| throughput, {} MB, one reader (MB/s) | {live_mbps:.1} | {raw_mbps:.1} | {:.2} |",
        args.mb,
        median(ratios)
    );
    println!();
    println!(
        "Latency: {LATENCY_LINES} lines, one every ~20 ms, each the container's /proc/uptime; arrival is the \
         host's /proc/uptime when the line is read. Both clocks have 10 ms resolution, so each value is \
         +/-10 ms."
    );
    println!(
        "Throughput: MB = 10^6 bytes of task output (the TTY turns each \\n into \\r\\n, so a little more is \
         transferred), timed from the read holding the first payload bytes to the read holding the end marker. \
         Both readers follow the same task concurrently, started at the same moment, so they share the CPU."
    );
    println!("Total run time: {:.1} s", began.elapsed().as_secs_f64());
}
