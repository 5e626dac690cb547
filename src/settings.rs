//! Configuration: a profile from `config/`, then a file, the environment and `--set` flags, checked
//! into settings before any I/O.

use std::path::Path;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use std::collections::{BTreeMap, HashMap};

use docker_worker_actors::images::reference::RegistryCredentials;
use docker_worker_actors::images::{GcPolicy, ImageSettings, PullPolicy};
use docker_worker_actors::queue::artifacts::StorageType;
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
    #[error("--set {0:?}: expected key=value, e.g. --set images.pull_attempts=5")]
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
    queue: RawQueue,
    live_log: RawLiveLog,
    artifacts: RawArtifacts,
    shutdown: RawShutdown,
    docker: RawDocker,
    images: RawImages,
    #[serde(default)]
    registries: BTreeMap<String, RegistryCredentials>,
    logging: RawLogging,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    client_id: String,
    access_token: String,
    task_queue_id: String,
    reclaim_divisor: i64,
    cancel_poll_seconds: i64,
    claim_min_interval_ms: i64,
    claim_max_backoff_seconds: i64,
    retry_attempts: i64,
    retry_initial_delay_ms: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLiveLog {
    bind: String,
    public_url: String,
    reader_idle_timeout_seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifacts {
    storage: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    after_idle_seconds: i64,
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
    capacity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    host: String,
    shm_size: i64,
    output_drain_seconds: i64,
    kill_wait_seconds: i64,
    request_timeout_seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImages {
    pull_attempts: i64,
    pull_initial_delay_ms: i64,
    pull_max_delay_ms: i64,
    stall_timeout_seconds: i64,
    max_parallel_fetches: i64,
    default_registry: String,
    gc_interval_seconds: i64,
    expiry_seconds: i64,
    min_free_disk_mb: i64,
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

/// What `docker-worker start` needs beyond a local run. Checked only when the daemon starts.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub client_id: String,
    pub access_token: String,
    pub task_queue_id: String,
    pub reclaim_divisor: u32,
    pub cancel_poll: Duration,
    pub claim_min_interval: Duration,
    pub claim_max_backoff: Duration,
    pub retry_attempts: u32,
    pub retry_initial_delay: Duration,
}

/// Checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub identity: WorkerIdentity,
    pub capacity: usize,
    pub queue: QueueSettings,
    pub idle_shutdown: Option<Duration>,
    pub storage: StorageType,
    pub live_log_bind: std::net::SocketAddr,
    /// Empty: derived from the public IP or host name and the bound port.
    pub live_log_public_url: String,
    pub live_log_idle_timeout: Duration,
    pub docker_host: Option<String>,
    pub shm_size: Option<i64>,
    pub images: ImageSettings,
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
        // Only DOCKER_WORKER_<SECTION>__<KEY> variables are settings; others that merely share the prefix
        // (DOCKER_WORKER_VERSION, say) are none of the worker's business.
        let settings_vars: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| {
                k.strip_prefix("DOCKER_WORKER_")
                    .is_some_and(|rest| rest.contains("__"))
            })
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("DOCKER_WORKER")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(settings_vars)),
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
        let capacity = w.capacity;
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
        let q = raw.queue;
        let env_or = |v: String, var: &str| {
            if v.is_empty() {
                std::env::var(var).unwrap_or_default()
            } else {
                v
            }
        };
        let task_queue_id = if q.task_queue_id.is_empty() {
            format!("{}/{}", identity.provisioner_id, identity.worker_type)
        } else {
            q.task_queue_id
        };
        let queue = QueueSettings {
            client_id: env_or(q.client_id, "TASKCLUSTER_CLIENT_ID"),
            access_token: env_or(q.access_token, "TASKCLUSTER_ACCESS_TOKEN"),
            task_queue_id,
            reclaim_divisor: positive("queue.reclaim_divisor", q.reclaim_divisor)? as u32,
            cancel_poll: Duration::from_secs(positive("queue.cancel_poll_seconds", q.cancel_poll_seconds)?),
            claim_min_interval: millis("queue.claim_min_interval_ms", q.claim_min_interval_ms)?,
            claim_max_backoff: Duration::from_secs(positive(
                "queue.claim_max_backoff_seconds",
                q.claim_max_backoff_seconds,
            )?),
            retry_attempts: positive("queue.retry_attempts", q.retry_attempts)? as u32,
            retry_initial_delay: millis("queue.retry_initial_delay_ms", q.retry_initial_delay_ms)?,
        };
        let idle = u64::try_from(raw.shutdown.after_idle_seconds).map_err(|_| SettingsError::Invalid {
            key: "shutdown.after_idle_seconds",
            message: "must not be negative".into(),
        })?;
        let storage = match raw.artifacts.storage.as_str() {
            "object" => StorageType::Object,
            "s3" => StorageType::S3,
            other => {
                return Err(SettingsError::Invalid {
                    key: "artifacts.storage",
                    message: format!("must be \"object\" or \"s3\", not {other:?}"),
                })
            }
        };
        let live_log_bind = raw.live_log.bind.parse().map_err(|e| SettingsError::Invalid {
            key: "live_log.bind",
            message: format!("must be an address and port such as 0.0.0.0:60023 ({e})"),
        })?;
        let live_log_idle_timeout = Duration::from_secs(positive(
            "live_log.reader_idle_timeout_seconds",
            raw.live_log.reader_idle_timeout_seconds,
        )?);
        let live_log_public_url = raw.live_log.public_url.trim_end_matches('/').to_string();
        let d = raw.docker;
        let images = image_settings(raw.images, raw.registries)?;
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
            capacity: positive("worker.capacity", capacity)? as usize,
            queue,
            idle_shutdown: (idle > 0).then(|| Duration::from_secs(idle)),
            storage,
            live_log_bind,
            live_log_public_url,
            live_log_idle_timeout,
            identity,
            docker_host: (!d.host.is_empty()).then_some(d.host),
            shm_size: Some(positive("docker.shm_size", d.shm_size)? as i64),
            images,
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

fn positive(key: &'static str, v: i64) -> Result<u64, SettingsError> {
    u64::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .ok_or(SettingsError::Invalid {
            key,
            message: format!("must be a positive integer, not {v}"),
        })
}

fn non_negative(key: &'static str, value: i64) -> Result<u64, SettingsError> {
    u64::try_from(value).map_err(|_| SettingsError::Invalid {
        key,
        message: format!("must not be negative, not {value}"),
    })
}

fn millis(key: &'static str, value: i64) -> Result<Duration, SettingsError> {
    non_negative(key, value).map(Duration::from_millis)
}

fn image_settings(
    raw: RawImages,
    registries: BTreeMap<String, RegistryCredentials>,
) -> Result<ImageSettings, SettingsError> {
    if let Some(key) = registries.keys().find(|k| k.trim_matches('/').is_empty()) {
        return Err(SettingsError::Invalid {
            key: "registries",
            message: format!("{key:?} is not a registry: use host[:port][/user]"),
        });
    }
    if raw.default_registry.is_empty() {
        return Err(SettingsError::Invalid {
            key: "images.default_registry",
            message: "must name a registry host".into(),
        });
    }
    Ok(ImageSettings {
        pull: PullPolicy {
            attempts: positive("images.pull_attempts", raw.pull_attempts)? as u32,
            initial_delay: millis("images.pull_initial_delay_ms", raw.pull_initial_delay_ms)?,
            max_delay: Duration::from_millis(non_negative(
                "images.pull_max_delay_ms",
                raw.pull_max_delay_ms,
            )?),
            stall_timeout: Duration::from_secs(positive(
                "images.stall_timeout_seconds",
                raw.stall_timeout_seconds,
            )?),
        },
        registries,
        default_registry: raw.default_registry,
        max_parallel: positive("images.max_parallel_fetches", raw.max_parallel_fetches)? as usize,
        gc: GcPolicy {
            interval: Duration::from_secs(positive("images.gc_interval_seconds", raw.gc_interval_seconds)?),
            expiry: Duration::from_secs(non_negative("images.expiry_seconds", raw.expiry_seconds)?),
            min_free_bytes: non_negative("images.min_free_disk_mb", raw.min_free_disk_mb)?
                .saturating_mul(1_000_000),
        },
    })
}

impl Settings {
    /// What `docker-worker start` needs on top: a root URL and credentials, each named when missing.
    pub fn check_daemon(&self) -> Result<(), SettingsError> {
        let missing = |key: &'static str, env: &str| SettingsError::Invalid {
            key,
            message: format!("must be set (or the environment variable {env})"),
        };
        if self.identity.root_url.is_empty() {
            return Err(missing("worker.root_url", "TASKCLUSTER_ROOT_URL"));
        }
        if self.queue.client_id.is_empty() {
            return Err(missing("queue.client_id", "TASKCLUSTER_CLIENT_ID"));
        }
        if self.queue.access_token.is_empty() {
            return Err(missing("queue.access_token", "TASKCLUSTER_ACCESS_TOKEN"));
        }
        Ok(())
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
        assert_eq!(s.images.pull.attempts, 2);
        let s = load("local", &[]).unwrap();
        assert_eq!(s.log_format, LogFormat::Terminal);
        assert!(
            !s.identity.worker_id.is_empty(),
            "worker_id defaults to the host name"
        );
    }

    #[test]
    fn overrides_win_and_errors_name_the_key() {
        let s = load("local", &["images.pull_attempts=7"]).unwrap();
        assert_eq!(s.images.pull.attempts, 7);
        let e = load("local", &["images.pull_attempts=0"]).unwrap_err();
        assert!(e.to_string().contains("images.pull_attempts"), "{e}");
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

    #[test]
    fn registries_keep_hosts_ports_and_users_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "[registries]\n\"127.0.0.1:5000/\" = { username = \"testuser\", password = \"pw\" }\n\
             \"Registry.Example.com/Team\" = { username = \"robot\", password = \"token\" }\n",
        )
        .unwrap();
        let s = Settings::load(&Sources {
            profile: "test",
            file: Some(&file),
            overrides: &[],
        })
        .unwrap();
        let keys: Vec<&str> = s.images.registries.keys().map(String::as_str).collect();
        assert_eq!(keys, ["127.0.0.1:5000/", "Registry.Example.com/Team"]);
        assert_eq!(s.images.registries["127.0.0.1:5000/"].username, "testuser");
        std::fs::write(
            &file,
            "[registries]\n\"/\" = { username = \"a\", password = \"b\" }\n",
        )
        .unwrap();
        let e = Settings::load(&Sources {
            profile: "test",
            file: Some(&file),
            overrides: &[],
        })
        .unwrap_err();
        assert!(e.to_string().contains("registries"), "{e}");
    }
}
