//! The worker's own log: slog, JSON lines for the daemon or readable lines for a terminal. Records of the
//! `log` crate (actix, bollard) are bridged into it.

use slog::{o, Drain, Logger};

use crate::settings::{LogFormat, Settings};

/// Keeps the global `log` bridge alive.
pub struct LoggingGuard {
    _scope: slog_scope::GlobalLoggerGuard,
}

/// Build the root logger and bridge the `log` crate into it. `stderr` keeps stdout free for a task's
/// log (in `docker-worker run`).
pub fn init(settings: &Settings, stderr: bool) -> (Logger, LoggingGuard) {
    let id = &settings.identity;
    let fields = o!(
        "provisionerId" => id.provisioner_id.clone(),
        "workerType" => id.worker_type.clone(),
        "workerGroup" => id.worker_group.clone(),
        "workerId" => id.worker_id.clone(),
    );
    let drain: Box<
        dyn Drain<Ok = (), Err = slog::Never>
            + Send
            + Sync
            + std::panic::RefUnwindSafe
            + std::panic::UnwindSafe,
    > = match settings.log_format {
        LogFormat::Json => {
            let out: Box<dyn std::io::Write + Send> = if stderr {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            };
            let json = slog_json::Json::new(out)
                .set_newlines(true)
                .add_key_value(o!(
                    "time" => slog::PushFnValue(|_, ser| ser.emit(chrono::Utc::now().to_rfc3339())),
                    "level" => slog::FnValue(|r| r.level().as_short_str()),
                    "type" => slog::PushFnValue(|r, ser| ser.emit(r.msg())),
                ))
                .build()
                .ignore_res();
            // A closed stdout must never take the worker down: events are dropped instead.
            Box::new(slog_async::Async::new(json).build().ignore_res())
        }
        LogFormat::Terminal => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            let term = slog_term::FullFormat::new(decorator).build().ignore_res();
            Box::new(slog_async::Async::new(term).build().ignore_res())
        }
    };
    let drain = slog::LevelFilter::new(drain, settings.log_level).fuse();
    let logger = Logger::root(drain, fields);
    let scope = slog_scope::set_global_logger(logger.new(o!("source" => "log")));
    // A second init (in tests) keeps the first bridge; that is harmless.
    let _ = slog_stdlog::init_with_level(to_log_level(settings.log_level));
    (logger, LoggingGuard { _scope: scope })
}

fn to_log_level(level: slog::Level) -> log::Level {
    match level {
        slog::Level::Critical | slog::Level::Error => log::Level::Error,
        slog::Level::Warning => log::Level::Warn,
        slog::Level::Info => log::Level::Info,
        slog::Level::Debug => log::Level::Debug,
        slog::Level::Trace => log::Level::Trace,
    }
}
