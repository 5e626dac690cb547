//! The benchmark harness behind `bench`: docker-worker (the real `docker-worker start` binary, against
//! the queue double) measured side by side with the Docker engine doing the same work directly, in the
//! same run, interleaved round by round, with medians over the rounds.
//!
//! Each figure of `BENCHMARKS.md` is one function in a submodule: [`tasks`] (per-task overhead,
//! throughput, cancel latency), [`logs`] (resident memory, live log throughput and latency),
//! [`upload`] (artifact upload) and [`images`] (image sharing). A figure returns its measurements or
//! says why it has none; [`run`] turns them into [`Row`]s with their targets, and [`report`] and
//! [`chart`] write the table and the PNG.
//!
//! The harness judges nothing in CI: it exits non-zero only when a figure could not be measured at all.

pub mod chart;
pub mod engine;
pub mod images;
pub mod local_registry;
pub mod logs;
pub mod report;
pub mod stats;
pub mod tasks;
pub mod upload;
pub mod worker;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use engine::Engine;

/// Why a measurement could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A Docker engine call failed.
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// The worker process misbehaved (did not start, exited, left containers behind).
    #[error("the worker: {0}")]
    Worker(String),
    /// Something awaited did not happen in time.
    #[error("{0} did not happen within {1} s")]
    Timeout(String, u64),
    /// A file or process of the harness itself.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A task or a reader ended in a way that makes the measurement meaningless.
    #[error("{0}")]
    Broken(String),
}

/// The unit of a number in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds.
    Ms,
    /// Seconds.
    Seconds,
    /// Mebibytes (memory).
    MiB,
    /// Megabytes (10^6 bytes) per second.
    MBps,
    /// Tasks (or raw container runs) per second.
    PerSecond,
    /// Percent of the raw baseline.
    Percent,
    /// A multiple of the raw baseline.
    Times,
}

impl Unit {
    /// The unit as the table prints it after a number.
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Ms => " ms",
            Unit::Seconds => " s",
            Unit::MiB => " MiB",
            Unit::MBps => " MB/s",
            Unit::PerSecond => " /s",
            Unit::Percent => " %",
            Unit::Times => "×",
        }
    }

    /// A number in this unit, with as many decimals as its size deserves.
    pub fn format(self, value: f64) -> String {
        let digits = match self {
            Unit::Times => 2,
            _ if value.abs() >= 100.0 => 0,
            _ if value.abs() >= 10.0 => 1,
            _ => 2,
        };
        format!("{value:.digits$}{}", self.suffix())
    }
}

/// What a figure must reach, in the unit of its measured value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The measured value must not exceed this.
    AtMost(f64),
    /// The measured value must reach at least this.
    AtLeast(f64),
    /// Reported, not judged.
    None,
}

/// One row of the table, before measuring: what is measured, against what, and the target.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The figure number and a letter when a figure has several rows: `1`, `3a`.
    pub id: &'static str,
    /// What is measured.
    pub name: &'static str,
    /// A few words for the chart.
    pub short: &'static str,
    /// The worker side and the baseline's unit.
    pub side_unit: Unit,
    /// What the baseline is, or `—`.
    pub baseline: &'static str,
    /// The unit of the value the target is about.
    pub unit: Unit,
    /// The target.
    pub target: Target,
}

/// Every row, in table order.
pub const SPECS: &[Spec] = &[
    Spec {
        id: "1",
        name: "per-task overhead, p50 (trivial tasks, capacity 1)",
        short: "per-task overhead p50",
        side_unit: Unit::Ms,
        baseline: "bollard create → start → wait → remove",
        unit: Unit::Ms,
        target: Target::AtMost(25.0),
    },
    Spec {
        id: "2",
        name: "throughput (trivial tasks, capacity 4)",
        short: "throughput, capacity 4",
        side_unit: Unit::PerSecond,
        baseline: "the same raw sequence, 4 at a time",
        unit: Unit::Percent,
        target: Target::AtLeast(95.0),
    },
    Spec {
        id: "3a",
        name: "resident memory, idle",
        short: "memory, idle",
        side_unit: Unit::MiB,
        baseline: "—",
        unit: Unit::MiB,
        target: Target::AtMost(15.0),
    },
    Spec {
        id: "3b",
        name: "resident memory, peak: 8 tasks each streaming 20 MB to a live log reader",
        short: "memory, peak (8 × 20 MB logs)",
        side_unit: Unit::MiB,
        baseline: "—",
        unit: Unit::MiB,
        target: Target::AtMost(40.0),
    },
    Spec {
        id: "4a",
        name: "log throughput, one live log reader of a 200 MB log",
        short: "live log throughput",
        side_unit: Unit::MBps,
        baseline: "raw attach stream of a same-sized container",
        unit: Unit::Percent,
        target: Target::AtLeast(90.0),
    },
    Spec {
        id: "4b",
        name: "log latency p50, container write → live log reader",
        short: "live log latency p50",
        side_unit: Unit::Ms,
        baseline: "raw attach stream (for reference)",
        unit: Unit::Ms,
        target: Target::AtMost(100.0),
    },
    Spec {
        id: "4c",
        name: "log latency p99, container write → live log reader",
        short: "live log latency p99",
        side_unit: Unit::Ms,
        baseline: "raw attach stream (for reference)",
        unit: Unit::Ms,
        target: Target::None,
    },
    Spec {
        id: "5a",
        name: "artifact upload, 1 GiB to the double's upload endpoint",
        short: "artifact upload, 1 GiB",
        side_unit: Unit::MBps,
        baseline: "`curl -T` of the same bytes to the same endpoint",
        unit: Unit::Percent,
        target: Target::AtLeast(90.0),
    },
    Spec {
        id: "5b",
        name: "memory growth during the 1 GiB upload",
        short: "memory growth, upload",
        side_unit: Unit::MiB,
        baseline: "—",
        unit: Unit::MiB,
        target: Target::AtMost(16.0),
    },
    Spec {
        id: "6",
        name: "cancel latency p50, `cancelTask` → container gone, default settings",
        short: "cancel latency p50",
        side_unit: Unit::Seconds,
        baseline: "—",
        unit: Unit::Seconds,
        target: Target::AtMost(2.0),
    },
    Spec {
        id: "7",
        name: "image sharing: 4 tasks start together on one uncached image",
        short: "image sharing, 4 tasks",
        side_unit: Unit::Seconds,
        baseline: "one `docker pull` from the local registry",
        unit: Unit::Times,
        target: Target::AtMost(1.2),
    },
];

/// What a figure measured for one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The row's [`Spec::id`].
    pub id: &'static str,
    /// The worker side, in [`Spec::side_unit`].
    pub worker: Option<f64>,
    /// The raw baseline, in [`Spec::side_unit`].
    pub baseline: Option<f64>,
    /// The value the target is about, in [`Spec::unit`].
    pub measured: f64,
    /// How it was taken: rounds, sizes, anything a reader needs to weigh it.
    pub note: String,
}

/// Why a figure has no measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Measured.
    Measured,
    /// Deliberately not run here (e.g. no registry); not an error.
    Skipped(String),
    /// Not implemented yet; not an error.
    NotMeasured(String),
    /// Something broke: the harness exits non-zero.
    Failed(String),
}

/// A figure's result: its measurements, or why there are none.
pub type FigureResult = Result<Vec<Measurement>, Outcome>;

impl From<BenchError> for Outcome {
    fn from(e: BenchError) -> Outcome {
        Outcome::Failed(e.to_string())
    }
}

/// One row of the finished table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What the row is.
    pub spec: Spec,
    /// Its measurement, when there is one.
    pub measurement: Option<Measurement>,
    /// Measured, or why not.
    pub outcome: Outcome,
}

impl Row {
    /// worker / baseline, when both sides were measured.
    pub fn ratio(&self) -> Option<f64> {
        let m = self.measurement.as_ref()?;
        Some(m.worker? / m.baseline?)
    }

    /// Whether the target is met: `None` when there is no target or nothing was measured.
    pub fn met(&self) -> Option<bool> {
        let measured = self.measurement.as_ref()?.measured;
        match self.spec.target {
            Target::AtMost(t) => Some(measured <= t),
            Target::AtLeast(t) => Some(measured >= t),
            Target::None => None,
        }
    }
}

/// How big and how many: the full run, or `--quick`.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Figure 1: trivial tasks (and as many raw runs), one at a time.
    pub overhead_tasks: usize,
    /// Figure 2: rounds, and trivial tasks per round on each side.
    pub throughput_rounds: usize,
    /// Figure 2: tasks per round.
    pub throughput_tasks: usize,
    /// Figure 3: tasks streaming at once.
    pub memory_tasks: usize,
    /// Figure 3: bytes of log each writes.
    pub memory_log_bytes: u64,
    /// Figure 4: rounds (each one worker task and one raw container per measurement).
    pub log_rounds: usize,
    /// Figure 4: bytes of the throughput log.
    pub log_bytes: u64,
    /// Figure 4: timestamps per latency round.
    pub latency_samples: usize,
    /// Figure 5: rounds.
    pub upload_rounds: usize,
    /// Figure 5: the artifact's size in bytes.
    pub upload_bytes: u64,
    /// Figure 6: rounds.
    pub cancel_rounds: usize,
    /// Figure 7: rounds.
    pub image_rounds: usize,
    /// Figure 7: the random bytes in the image's own layer.
    pub image_bytes: usize,
}

impl Sizes {
    /// The sizes `BENCHMARKS.md` reports.
    pub const FULL: Sizes = Sizes {
        overhead_tasks: 50,
        throughput_rounds: 4,
        throughput_tasks: 50,
        memory_tasks: 8,
        memory_log_bytes: 20_000_000,
        log_rounds: 3,
        log_bytes: 200_000_000,
        latency_samples: 300,
        upload_rounds: 3,
        upload_bytes: 1 << 30,
        cancel_rounds: 5,
        image_rounds: 3,
        image_bytes: 64 << 20,
    };

    /// A few rounds of small sizes, so CI runs every figure's code in a minute or two.
    pub const QUICK: Sizes = Sizes {
        overhead_tasks: 5,
        throughput_rounds: 1,
        throughput_tasks: 12,
        memory_tasks: 8,
        memory_log_bytes: 2_000_000,
        log_rounds: 1,
        log_bytes: 20_000_000,
        latency_samples: 50,
        upload_rounds: 1,
        upload_bytes: 64 << 20,
        cancel_rounds: 1,
        image_rounds: 1,
        image_bytes: 8 << 20,
    };
}

/// What a run measures and where it writes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `docker-worker` binary.
    pub worker: PathBuf,
    /// `--quick`.
    pub quick: bool,
    /// The figures to run (1–7); empty: all.
    pub only: Vec<u8>,
    /// The results folder.
    pub out: PathBuf,
    /// Why there is no registry for figure 7, when there is none.
    pub registry_missing: Option<String>,
}

impl Options {
    /// The sizes for this run.
    pub fn sizes(&self) -> Sizes {
        if self.quick {
            Sizes::QUICK
        } else {
            Sizes::FULL
        }
    }
}

/// What every figure gets.
pub struct Context<'a> {
    /// The run's options.
    pub options: &'a Options,
    /// Its sizes.
    pub sizes: Sizes,
    /// The engine, for the raw side.
    pub engine: &'a Engine,
}

impl Context<'_> {
    /// Where a figure's worker writes its output.
    pub fn log(&self, name: &str) -> PathBuf {
        self.options.out.join("logs").join(format!("worker-{name}.log"))
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Results {
    /// Every row, in [`SPECS`] order.
    pub rows: Vec<Row>,
    /// Seconds the whole run took.
    pub seconds: f64,
}

impl Results {
    /// Whether some figure could not be measured at all.
    pub fn broken(&self) -> bool {
        self.rows.iter().any(|r| matches!(r.outcome, Outcome::Failed(_)))
    }
}

type Figure = fn(&Context<'_>) -> FigureResult;

/// The figures in order, each with the row ids it fills.
const FIGURES: &[(u8, &[&str], Figure)] = &[
    (1, &["1"], tasks::overhead),
    (2, &["2"], tasks::throughput),
    (3, &["3a", "3b"], logs::memory),
    (4, &["4a", "4b", "4c"], logs::live_log),
    (5, &["5a", "5b"], upload::artifact),
    (6, &["6"], tasks::cancel),
    (7, &["7"], images::sharing),
];

/// Run the selected figures; a figure that panics or fails marks its rows failed and the others go on.
pub fn run(options: &Options, engine: &Engine) -> Results {
    let began = Instant::now();
    let context = Context {
        options,
        sizes: options.sizes(),
        engine,
    };
    let mut rows: Vec<Row> = SPECS
        .iter()
        .map(|spec| Row {
            spec: *spec,
            measurement: None,
            outcome: Outcome::Skipped("not selected (--only)".into()),
        })
        .collect();
    let mut engine_down: Option<String> = None;
    for (number, ids, figure) in FIGURES {
        if !options.only.is_empty() && !options.only.contains(number) {
            continue;
        }
        if engine_down.is_none() {
            if let Err(e) = engine.check(Duration::from_secs(60)) {
                engine_down = Some(format!(
                    "the Docker engine stopped working before figure {number} ({e}); if `docker ps` still \
                     answers, dockerd may be deadlocked: `kill -USR1 $(cat /var/run/docker.pid)` dumps its \
                     goroutines"
                ));
            }
        }
        eprintln!("bench: figure {number}…");
        let started = Instant::now();
        let result = match &engine_down {
            Some(why) => Err(Outcome::Failed(why.clone())),
            None => match catch_unwind(AssertUnwindSafe(|| figure(&context))) {
                Ok(result) => result,
                Err(panic) => Err(Outcome::Failed(panic_message(panic.as_ref()))),
            },
        };
        for row in rows.iter_mut().filter(|r| ids.contains(&r.spec.id)) {
            match &result {
                Ok(measurements) => match measurements.iter().find(|m| m.id == row.spec.id) {
                    Some(m) => {
                        row.measurement = Some(m.clone());
                        row.outcome = Outcome::Measured;
                    }
                    None => row.outcome = Outcome::Failed("the figure produced no value for this row".into()),
                },
                Err(outcome) => row.outcome = outcome.clone(),
            }
        }
        eprintln!(
            "bench: figure {number} done in {:.1} s{}",
            started.elapsed().as_secs_f64(),
            match &result {
                Err(Outcome::Failed(e)) => format!(": FAILED: {e}"),
                Err(Outcome::Skipped(why) | Outcome::NotMeasured(why)) => format!(": {why}"),
                _ => String::new(),
            }
        );
    }
    Results {
        rows,
        seconds: began.elapsed().as_secs_f64(),
    }
}

/// `n` and the noun, plural when `n` is not 1: `1 round`, `3 rounds`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into());
    format!("panicked: {text}")
}
