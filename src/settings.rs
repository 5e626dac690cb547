//! Configuration: a profile from `config/`, then a file, the environment and `--set` flags, checked
//! into settings before any I/O.

use std::path::Path;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use docker_worker_actors::docker::PullPolicy;
use docker_worker_actors::task::WorkerIdentity;
use serde::Deserialize;

/// Built-in profiles, compiled in so the binary runs from anywhere.
const PROFILES: &[(&str, &str)] = &[
    ("local", include_str!("../config/local.toml")),
    ("test", include_str!("../config/test.toml")),
    ("production", include_str!("../config/production.toml")),
];
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Configuration is wrong; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Unknown profile.
    #[error("unknown profile {0:?} (known: local, test, production)")]
    UnknownProfile(String),
    /// A `--set` flag is not `key=value`.
    #[error("--set {0:?}: expected key=value, e.g. --set docker.pull_attempts=5")]
    BadOverride(String),
    /// The config crate refused the layers.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("configuration key {key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    worker: RawWorker,
    docker: RawDocker,
    logging: RawLogging,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    provisioner_id: String,
    worker_type: String,
    worker_group: String,
    worker_id: String,
    worker_node_type: String,
    public_ip: String,
    root_url: String,
    worker_location: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    host: String,
    shm_size: i64,
    pull_attempts: i64,
    pull_initial_delay_ms: i64,
    output_drain_seconds: i64,
    kill_wait_seconds: i64,
    request_timeout_seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    format: String,
    level: String,
}

/// How the worker's own events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines on stdout.
    Json,
    /// Readable lines on stderr.
    Terminal,
}

/// Checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub identity: WorkerIdentity,
    pub docker_host: Option<String>,
    pub shm_size: Option<i64>,
    pub pull: PullPolicy,
    pub output_drain: Duration,
    pub kill_wait: Duration,
    pub request_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: slog::Level,
}

/// Where settings come from, lowest precedence first after the defaults.
pub struct Sources<'a> {
    pub profile: &'a str,
    pub file: Option<&'a Path>,
    pub overrides: &'a [String],
}

impl Settings {
    /// Load and check the layers.
    pub fn load(sources: &Sources<'_>) -> Result<Settings, SettingsError> {
        let profile = PROFILES
            .iter()
            .find(|(name, _)| *name == sources.profile)
            .ok_or_else(|| SettingsError::UnknownProfile(sources.profile.into()))?;
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from_str(profile.1, FileFormat::Toml));
        if let Some(file) = sources.file {
            builder = builder.add_source(File::from(file).required(true));
        }
        builder = builder.add_source(
            Environment::with_prefix("DOCKER_WORKER")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        );
        for item in sources.overrides {
            let (key, value) = item
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| SettingsError::BadOverride(item.clone()))?;
            builder = builder.set_override(key, value)?;
        }
        let raw: RawSettings = builder.build()?.try_deserialize()?;
        Settings::check(raw)
    }

    fn check(raw: RawSettings) -> Result<Settings, SettingsError> {
        fn positive(key: &'static str, v: i64) -> Result<u64, SettingsError> {
            u64::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .ok_or(SettingsError::Invalid {
                    key,
                    message: format!("must be a positive integer, not {v}"),
                })
        }
        fn non_empty(key: &'static str, v: String) -> Result<String, SettingsError> {
            if v.trim().is_empty() {
                Err(SettingsError::Invalid {
                    key,
                    message: "must not be empty".into(),
                })
            } else {
                Ok(v)
            }
        }
        let w = raw.worker;
        let hostname = hostname();
        let root_url = if w.root_url.is_empty() {
            std::env::var("TASKCLUSTER_ROOT_URL").unwrap_or_default()
        } else {
            w.root_url
        };
        let identity = WorkerIdentity {
            provisioner_id: non_empty("worker.provisioner_id", w.provisioner_id)?,
            worker_type: non_empty("worker.worker_type", w.worker_type)?,
            worker_group: non_empty("worker.worker_group", w.worker_group)?,
            worker_id: if w.worker_id.is_empty() {
                hostname.clone()
            } else {
                w.worker_id
            },
            worker_node_type: w.worker_node_type,
            public_ip: w.public_ip,
            root_url: root_url.trim_end_matches('/').to_string(),
            worker_location: (!w.worker_location.is_empty()).then_some(w.worker_location),
            hostname,
        };
        let d = raw.docker;
        let log_format = match raw.logging.format.as_str() {
            "json" => LogFormat::Json,
            "terminal" => LogFormat::Terminal,
            other => {
                return Err(SettingsError::Invalid {
                    key: "logging.format",
                    message: format!("must be \"json\" or \"terminal\", not {other:?}"),
                })
            }
        };
        let log_level = raw
            .logging
            .level
            .parse::<slog::Level>()
            .map_err(|()| SettingsError::Invalid {
                key: "logging.level",
                message: format!(
                    "must be one of critical, error, warning, info, debug, trace, not {:?}",
                    raw.logging.level
                ),
            })?;
        Ok(Settings {
            identity,
            docker_host: (!d.host.is_empty()).then_some(d.host),
            shm_size: Some(positive("docker.shm_size", d.shm_size)? as i64),
            pull: PullPolicy {
                attempts: positive("docker.pull_attempts", d.pull_attempts)? as u32,
                initial_delay: Duration::from_millis(u64::try_from(d.pull_initial_delay_ms).map_err(
                    |_| SettingsError::Invalid {
                        key: "docker.pull_initial_delay_ms",
                        message: "must not be negative".into(),
                    },
                )?),
            },
            output_drain: Duration::from_secs(positive(
                "docker.output_drain_seconds",
                d.output_drain_seconds,
            )?),
            kill_wait: Duration::from_secs(positive("docker.kill_wait_seconds", d.kill_wait_seconds)?),
            request_timeout: Duration::from_secs(positive(
                "docker.request_timeout_seconds",
                d.request_timeout_seconds,
            )?),
            log_format,
            log_level,
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(profile: &str, overrides: &[&str]) -> Result<Settings, SettingsError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Settings::load(&Sources {
            profile,
            file: None,
            overrides: &overrides,
        })
    }

    #[test]
    fn profiles_layer_over_the_defaults() {
        let s = load("test", &[]).unwrap();
        assert_eq!(s.identity.worker_type, "test-worker-type");
        assert_eq!(s.pull.attempts, 2);
        let s = load("local", &[]).unwrap();
        assert_eq!(s.log_format, LogFormat::Terminal);
        assert!(
            !s.identity.worker_id.is_empty(),
            "worker_id defaults to the host name"
        );
    }

    #[test]
    fn overrides_win_and_errors_name_the_key() {
        let s = load("local", &["docker.pull_attempts=7"]).unwrap();
        assert_eq!(s.pull.attempts, 7);
        let e = load("local", &["docker.pull_attempts=0"]).unwrap_err();
        assert!(e.to_string().contains("docker.pull_attempts"), "{e}");
        let e = load("local", &["logging.level=loud"]).unwrap_err();
        assert!(e.to_string().contains("logging.level"), "{e}");
        let e = load("local", &["docker.colour=blue"]).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        assert!(matches!(load("nope", &[]), Err(SettingsError::UnknownProfile(_))));
        assert!(matches!(
            load("local", &["novalue"]),
            Err(SettingsError::BadOverride(_))
        ));
    }
}
