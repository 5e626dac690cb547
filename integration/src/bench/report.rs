//! The results as a markdown table (the one `BENCHMARKS.md` holds) and as JSON.

use serde_json::{json, Value};

use super::engine::Engine;
use super::{Outcome, Results, Row, Target};

/// The machine a run was taken on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPUs the harness can use.
    pub cores: usize,
    /// The CPU model.
    pub cpu: String,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// The kernel release.
    pub kernel: String,
    /// The Docker engine's version.
    pub docker: String,
    /// `/proc/loadavg` when the run started: other load on the machine shows here.
    pub load_at_start: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Machine {
    /// Look at this machine.
    pub fn probe(engine: &Engine) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
                .unwrap_or_else(|| "unknown CPU".into()),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            docker: engine.version.clone(),
            load_at_start: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB memory, Linux {}, Docker {}; load average at start {}",
            self.cores, self.cpu, self.memory_gib, self.kernel, self.docker, self.load_at_start
        )
    }
}

/// The target as the table prints it: `≤ 25.0 ms`, `≥ 95.0 %`, `—`.
pub fn target_text(row: &Row) -> String {
    let unit = row.spec.unit;
    match row.spec.target {
        Target::AtMost(t) => format!("≤ {}", unit.format(t)),
        Target::AtLeast(t) => format!("≥ {}", unit.format(t)),
        Target::None => "—".into(),
    }
}

/// The result column: met, missed, or why there is no number.
pub fn verdict(row: &Row) -> String {
    match &row.outcome {
        Outcome::Measured => match row.met() {
            Some(true) => "met".into(),
            Some(false) => "**missed**".into(),
            None => "reported".into(),
        },
        Outcome::Skipped(why) | Outcome::NotMeasured(why) => why.clone(),
        Outcome::Failed(e) => {
            // One line, and short: the full message is in the harness's output.
            let line = e.split_whitespace().collect::<Vec<_>>().join(" ");
            match line.char_indices().nth(240) {
                Some((cut, _)) => format!("FAILED: {}…", &line[..cut]),
                None => format!("FAILED: {line}"),
            }
        }
    }
}

fn cell(value: Option<f64>, unit: super::Unit) -> String {
    value.map_or_else(|| "—".into(), |v| unit.format(v))
}

/// The table, one row per [`super::Spec`], and the notes on how each was taken.
pub fn table(results: &Results) -> String {
    let mut out = String::from(
        "| # | figure | docker-worker | raw baseline | worker / raw | measured | target | result |\n\
         |---|---|---:|---|---:|---:|---|---|\n",
    );
    for row in &results.rows {
        let m = row.measurement.as_ref();
        let baseline = match (m.and_then(|m| m.baseline), row.spec.baseline) {
            (_, "—") => "—".to_string(),
            (Some(v), what) => format!("{} ({what})", row.spec.side_unit.format(v)),
            (None, what) => format!("— ({what})"),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.spec.id,
            row.spec.name,
            cell(m.and_then(|m| m.worker), row.spec.side_unit),
            baseline,
            row.ratio().map_or_else(|| "—".into(), |r| format!("{r:.2}")),
            cell(m.map(|m| m.measured), row.spec.unit),
            target_text(row),
            verdict(row).replace('|', "\\|"),
        ));
    }
    out.push('\n');
    for row in &results.rows {
        if let Some(m) = &row.measurement {
            out.push_str(&format!("- **{}**: {}\n", row.spec.id, m.note));
        }
    }
    out
}

/// The whole results file: what was run, where, and the table.
pub fn markdown(results: &Results, machine: &Machine, command: &str, worker: &str, quick: bool) -> String {
    let mut out = format!(
        "# docker-worker benchmark{}\n\n\
         - when: {}\n- machine: {}\n- worker: `{worker}`\n- command: `{command}`\n- run time: {:.0} s\n\n",
        if quick {
            " (--quick: few rounds, small sizes; not for comparison)"
        } else {
            ""
        },
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine.describe(),
        results.seconds,
    );
    out.push_str(&table(results));
    out
}

/// The same as JSON, for tools.
pub fn json(results: &Results, machine: &Machine, command: &str, quick: bool) -> Value {
    let rows: Vec<Value> = results
        .rows
        .iter()
        .map(|row| {
            let m = row.measurement.as_ref();
            json!({
                "id": row.spec.id,
                "figure": row.spec.name,
                "worker": m.and_then(|m| m.worker),
                "baseline": m.and_then(|m| m.baseline),
                "baselineIs": row.spec.baseline,
                "unit": row.spec.side_unit.suffix().trim(),
                "ratio": row.ratio(),
                "measured": m.map(|m| m.measured),
                "measuredUnit": row.spec.unit.suffix().trim(),
                "target": target_text(row),
                "met": row.met(),
                "result": verdict(row),
                "note": m.map(|m| m.note.clone()),
            })
        })
        .collect();
    json!({
        "quick": quick,
        "command": command,
        "machine": machine.describe(),
        "seconds": results.seconds,
        "rows": rows,
    })
}
