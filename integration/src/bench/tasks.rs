//! Figures 1, 2 and 6: what a task costs beyond the engine's own create → start → wait → remove, how
//! many the worker gets through, and how long a cancellation takes to reach the container.

use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::engine::EventWatch;
use super::stats::{median, percentile};
use super::worker::{wait_completed, wait_resolved, Worker};
use super::{count, BenchError, Context, FigureResult, Measurement};
use crate::fixture_image;
use crate::queue_double::{Options as DoubleOptions, QueueDouble};

const TRIVIAL: &[&str] = &["true"];

fn trivial_payload() -> serde_json::Value {
    json!({"image": fixture_image(), "command": TRIVIAL, "maxRunTime": 300})
}

/// One trivial task from `createTask` to its resolution, in ms.
fn worker_task_ms(double: &QueueDouble, worker: &Worker) -> Result<f64, BenchError> {
    let started = Instant::now();
    let task = worker.create(double, trivial_payload());
    wait_completed(double, &task, Duration::from_secs(120))?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Figure 1: trivial tasks one at a time, each paired with one raw run, alternating which goes first.
pub fn overhead(cx: &Context<'_>) -> FigureResult {
    let n = cx.sizes.overhead_tasks;
    let double = QueueDouble::start(DoubleOptions::default());
    let worker = Worker::start(&cx.options.worker, &double, &cx.log("overhead"), 1, &[])?;
    // Warm-up, not counted: the first task also opens the worker's connections.
    worker_task_ms(&double, &worker)?;
    cx.engine.run_once(fixture_image(), TRIVIAL)?;
    let (mut ours, mut raw, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..n {
        let raw_ms = || -> Result<f64, BenchError> {
            Ok(cx.engine.run_once(fixture_image(), TRIVIAL)?.as_secs_f64() * 1000.0)
        };
        let (w, r) = if round % 2 == 0 {
            let w = worker_task_ms(&double, &worker)?;
            (w, raw_ms()?)
        } else {
            let r = raw_ms()?;
            (worker_task_ms(&double, &worker)?, r)
        };
        ours.push(w);
        raw.push(r);
        diff.push(w - r);
    }
    worker.stop(cx.engine)?;
    Ok(vec![Measurement {
        id: "1",
        worker: Some(median(&ours)),
        baseline: Some(median(&raw)),
        measured: median(&diff),
        note: format!(
            "{n} tasks `true` from `createTask` to resolved, each paired with one raw run; the figure is the \
             median of the {n} paired differences. p90: worker {:.0} ms, raw {:.0} ms.",
            percentile(&ours, 0.9),
            percentile(&raw, 0.9)
        ),
    }])
}

/// Figure 2: rounds of trivial tasks all created at once at capacity 4, against as many raw runs 4 at a time.
pub fn throughput(cx: &Context<'_>) -> FigureResult {
    let (rounds, n) = (cx.sizes.throughput_rounds, cx.sizes.throughput_tasks);
    let double = QueueDouble::start(DoubleOptions::default());
    let worker = Worker::start(&cx.options.worker, &double, &cx.log("throughput"), 4, &[])?;
    worker_task_ms(&double, &worker)?;
    let worker_round = || -> Result<f64, BenchError> {
        let started = Instant::now();
        let tasks: Vec<String> = (0..n)
            .map(|_| worker.create(&double, trivial_payload()))
            .collect();
        for task in &tasks {
            wait_completed(&double, task, Duration::from_secs(600))?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    };
    let raw_round = || -> Result<f64, BenchError> {
        let took = cx.engine.run_many(fixture_image(), TRIVIAL, n, 4)?;
        Ok(n as f64 / took.as_secs_f64())
    };
    let (mut ours, mut raw, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (w, r) = if round % 2 == 0 {
            let w = worker_round()?;
            (w, raw_round()?)
        } else {
            let r = raw_round()?;
            (worker_round()?, r)
        };
        ours.push(w);
        raw.push(r);
        ratio.push(w / r * 100.0);
    }
    worker.stop(cx.engine)?;
    Ok(vec![Measurement {
        id: "2",
        worker: Some(median(&ours)),
        baseline: Some(median(&raw)),
        measured: median(&ratio),
        note: format!(
            "{} of {n} tasks `true` (all created at once, then timed until the last resolved) and {n} raw \
             runs 4 at a time, alternating; the figure is the median of the per-round ratios.",
            count(rounds, "round")
        ),
    }])
}

/// Cancel `rounds` running tasks, each after a delay spread evenly over one poll period (so the sample
/// covers every phase of the worker's status poll); the latencies in seconds.
fn cancel_rounds(
    double: &QueueDouble,
    worker: &Worker,
    rounds: usize,
    period: Duration,
) -> Result<Vec<f64>, BenchError> {
    let mut latencies = Vec::new();
    for round in 0..rounds {
        let task_id = worker.create(
            double,
            json!({"image": fixture_image(), "command": ["sleep", "3600"], "maxRunTime": 3600}),
        );
        let label = format!("docker-worker.task-id={task_id}");
        let started = EventWatch::start(&label, "start", Duration::from_secs(120));
        let gone = EventWatch::start(&label, "destroy", Duration::from_secs(180));
        started.wait(Duration::from_secs(120))?;
        thread::sleep(period.mul_f64((round as f64 + 0.5) / rounds as f64));
        let canceled = SystemTime::now();
        double.cancel_task(&task_id);
        let removed = gone.wait(Duration::from_secs(120))?;
        latencies.push(removed.duration_since(canceled).unwrap_or_default().as_secs_f64());
        let (state, reason) = wait_resolved(double, &task_id, Duration::from_secs(60));
        if (state.as_str(), reason.as_str()) != ("exception", "canceled") {
            return Err(BenchError::Broken(format!(
                "canceled task {task_id} ended {state}/{reason}"
            )));
        }
    }
    Ok(latencies)
}

/// The shipped `queue.cancel_poll_seconds`, from `config/default.toml` (the worker compiles it in).
fn shipped_cancel_poll() -> Result<u64, BenchError> {
    let defaults = include_str!("../../../config/default.toml");
    defaults
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("cancel_poll_seconds")?
                .trim()
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| BenchError::Broken("config/default.toml has no queue.cancel_poll_seconds".into()))
}

/// Figure 6: `cancelTask` on a running task until its container is removed, with the shipped settings;
/// then, for reference, with a 1 s status poll.
pub fn cancel(cx: &Context<'_>) -> FigureResult {
    let rounds = cx.sizes.cancel_rounds;
    let poll = shipped_cancel_poll()?;
    let double = QueueDouble::start(DoubleOptions::default());
    let worker = Worker::start(&cx.options.worker, &double, &cx.log("cancel"), 1, &[])?;
    let shipped = cancel_rounds(&double, &worker, rounds, Duration::from_secs(poll))?;
    worker.stop(cx.engine)?;
    let fast = Worker::start(
        &cx.options.worker,
        &double,
        &cx.log("cancel-poll-1s"),
        1,
        &["queue.cancel_poll_seconds=1".to_string()],
    )?;
    let quick_poll = cancel_rounds(&double, &fast, rounds, Duration::from_secs(1))?;
    fast.stop(cx.engine)?;
    Ok(vec![Measurement {
        id: "6",
        worker: Some(median(&shipped)),
        baseline: None,
        measured: median(&shipped),
        note: format!(
            "{} of a running `sleep 3600`, each after a delay spread evenly over one status poll \
             (queue.cancel_poll_seconds={poll}, the default in config/default.toml; the worker under test must \
             be built from the same tree), timed from `cancelTask` to Docker's `destroy` event; max {:.2} s. \
             With queue.cancel_poll_seconds=1 the median is {:.2} s (max {:.2} s).",
            count(rounds, "cancellation"),
            percentile(&shipped, 1.0),
            median(&quick_poll),
            percentile(&quick_poll, 1.0)
        ),
    }])
}
