//! docker-worker's task log lines, byte for byte.

use chrono::{DateTime, Utc};

/// `[taskcluster <ts>] <line>\n`, with the ISO timestamp's `T` replaced by a space.
pub fn fmt_log(line: &str) -> String {
    fmt_log_at(Utc::now(), line)
}

/// `fmt_log` at a given time.
pub fn fmt_log_at(at: DateTime<Utc>, line: &str) -> String {
    format!("[taskcluster {}] {line}\n", at.format("%Y-%m-%d %H:%M:%S%.3fZ"))
}

/// `\n[taskcluster:error] <line>\n`: the leading newline makes it start a line whatever came before.
pub fn fmt_error_log(line: &str) -> String {
    format!("\n[taskcluster:error] {line}\n")
}

/// What the header says about the worker.
#[derive(Debug, Clone)]
pub struct HeaderFields<'a> {
    /// The task's id.
    pub task_id: &'a str,
    /// The worker's id.
    pub worker_id: &'a str,
    /// The worker group.
    pub worker_group: &'a str,
    /// The worker node type.
    pub worker_node_type: &'a str,
    /// The worker type.
    pub worker_type: &'a str,
    /// The public IP, or empty.
    pub public_ip: &'a str,
    /// The host's name.
    pub hostname: &'a str,
}

/// The header docker-worker wrote at the start of every task log, ending in a bare `\r\n`.
pub fn header(fields: &HeaderFields<'_>) -> String {
    let now = Utc::now();
    let mut out = String::new();
    for line in [
        format!("Task ID: {}", fields.task_id),
        format!("Worker ID: {}", fields.worker_id),
        format!("Worker Group: {}", fields.worker_group),
        format!("Worker Node Type: {}", fields.worker_node_type),
        format!("Worker Type: {}", fields.worker_type),
        format!("Public IP: {}", fields.public_ip),
        format!("Hostname: {}", fields.hostname),
    ] {
        out.push_str(&fmt_log_at(now, &line));
    }
    out.push_str("\r\n");
    out
}

/// The footer: `Successful task run with exit code: 0 completed in 3.456 seconds`.
pub fn footer(success: bool, exit_code: i64, elapsed: std::time::Duration) -> String {
    let verdict = if success { "Successful" } else { "Unsuccessful" };
    fmt_log(&format!(
        "{verdict} task run with exit code: {exit_code} completed in {} seconds",
        seconds(elapsed)
    ))
}

/// Seconds with millisecond precision, printed the way JavaScript prints a number (`3`, `3.4`, `3.456`).
pub fn seconds(elapsed: std::time::Duration) -> f64 {
    elapsed.as_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn log_line_format() {
        let at = DateTime::parse_from_rfc3339("2020-04-01T12:34:56.789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            fmt_log_at(at, "Task ID: abc"),
            "[taskcluster 2020-04-01 12:34:56.789Z] Task ID: abc\n"
        );
        assert_eq!(fmt_error_log("boom"), "\n[taskcluster:error] boom\n");
    }

    #[test]
    fn footer_prints_seconds_like_javascript() {
        let f = footer(true, 0, Duration::from_millis(3456));
        assert!(f.ends_with("] Successful task run with exit code: 0 completed in 3.456 seconds\n"));
        let f = footer(false, -1, Duration::from_millis(3000));
        assert!(f.ends_with("] Unsuccessful task run with exit code: -1 completed in 3 seconds\n"));
        let f = footer(false, 5, Duration::from_millis(3400));
        assert!(f.ends_with("exit code: 5 completed in 3.4 seconds\n"));
    }

    #[test]
    fn header_has_seven_lines_in_order_then_crlf() {
        let h = header(&HeaderFields {
            task_id: "T",
            worker_id: "W",
            worker_group: "G",
            worker_node_type: "N",
            worker_type: "WT",
            public_ip: "1.2.3.4",
            hostname: "host",
        });
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines.len(), 8);
        let want = [
            "Task ID: T",
            "Worker ID: W",
            "Worker Group: G",
            "Worker Node Type: N",
            "Worker Type: WT",
            "Public IP: 1.2.3.4",
            "Hostname: host",
        ];
        for (line, want) in lines.iter().zip(want) {
            assert!(line.starts_with("[taskcluster "), "{line}");
            assert!(line.ends_with(want), "{line} should end with {want}");
        }
        assert!(h.ends_with("\n\r\n"));
    }
}
