//! The docker-worker task payload, v1, as typed structs, and a validator that reports every
//! problem at once, each naming its field.
//!
//! Validation follows `schemas/docker-worker/v1/payload.json` (draft-06), so the payloads it
//! accepts and rejects are the same ones, apart from the deliberate divergences listed on
//! [`parse_payload`]. serde's derive stops at the first error, so the JSON value is walked by
//! hand and the typed struct is built only when nothing was wrong.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Number, Value};

/// Artifact name of the live log when the payload sets no `log`.
pub const DEFAULT_LIVE_LOG_NAME: &str = "public/logs/live.log";

/// Largest accepted `maxRunTime` in seconds: one week, as docker-worker had it.
pub const MAX_RUN_TIME_LIMIT: u32 = 604_800;

/// Field name used for errors about the payload as a whole.
const ROOT_FIELD: &str = "payload";

/// Top-level keys the schema knows, in the order their errors are reported.
const TOP_LEVEL_FIELDS: &[&str] = &[
    "image",
    "maxRunTime",
    "command",
    "env",
    "log",
    "cache",
    "capabilities",
    "onExitStatus",
    "artifacts",
    "supersederUrl",
    "features",
];

const IMAGE_TYPES_MESSAGE: &str = r#"must be one of "docker-image", "indexed-image", "task-image""#;
const ARTIFACT_TYPES_MESSAGE: &str = r#"must be one of "file", "directory", "volume""#;
const MAX_RUN_TIME_MESSAGE: &str = "must be an integer between 1 and 604800";

/// A validated docker-worker payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The image the task container runs.
    pub image: Image,
    /// Docker `Cmd`; empty means the image's default command.
    pub command: Vec<String>,
    /// Environment variables added to the container.
    pub env: BTreeMap<String, String>,
    /// Maximum run time of the container, in seconds.
    pub max_run_time: u32,
    /// Custom artifact name for the live log; see [`Payload::live_log_name`].
    pub log: Option<String>,
    /// Cache name to mount point in the container.
    pub cache: BTreeMap<String, String>,
    /// Container capabilities and host devices.
    pub capabilities: Capabilities,
    /// Exit statuses that retry the task or purge its caches.
    pub on_exit_status: OnExitStatus,
    /// Artifact name to what to upload.
    pub artifacts: BTreeMap<String, ArtifactSpec>,
    /// Kept for compatibility; docker-worker no longer uses it.
    pub superseder_url: Option<String>,
    /// Feature flags the payload sets.
    pub features: Features,
}

impl Payload {
    /// A payload with the two required fields and every other field at its default.
    pub fn new(image: Image, max_run_time: u32) -> Self {
        Payload {
            image,
            command: Vec::new(),
            env: BTreeMap::new(),
            max_run_time,
            log: None,
            cache: BTreeMap::new(),
            capabilities: Capabilities::default(),
            on_exit_status: OnExitStatus::default(),
            artifacts: BTreeMap::new(),
            superseder_url: None,
            features: Features::default(),
        }
    }

    /// Artifact name of the live log: `log`, or `public/logs/live.log` when unset or empty.
    pub fn live_log_name(&self) -> &str {
        // docker-worker used `payload.log || default`, so an empty name meant the default too.
        match self.log.as_deref() {
            Some(name) if !name.is_empty() => name,
            _ => DEFAULT_LIVE_LOG_NAME,
        }
    }

    /// Artifact name of the backing log, e.g. `public/logs/live_backing.log`.
    pub fn backing_log_name(&self) -> String {
        backing_log_name(self.live_log_name())
    }

    /// Errors for artifacts that would outlive the task (`artifacts["<name>"].expires`).
    pub fn check_artifact_expiry(&self, task_expires: DateTime<Utc>) -> Vec<FieldError> {
        artifact_expiry_errors(&self.artifacts, task_expires)
    }
}

/// The backing log name for a live log name: `<dir>/<stem>_backing<ext>`.
///
/// The extension is split off as node's `path.parse` does it (`apple/banana.log.txt` gives
/// `apple/banana.log_backing.txt`, `.log` has no extension). A name without a directory gets
/// no leading `/`, which docker-worker wrongly added.
pub fn backing_log_name(live_log_name: &str) -> String {
    let name = live_log_name.trim_end_matches('/');
    let (dir, base) = match name.rfind('/') {
        Some(slash) => name.split_at(slash + 1),
        None => ("", name),
    };
    let (stem, ext) = match base.rfind('.') {
        Some(dot) if dot > 0 && base != ".." => base.split_at(dot),
        _ => (base, ""),
    };
    format!("{dir}{stem}_backing{ext}")
}

/// Where the task image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// An image pulled from a registry; a bare string in the payload.
    DockerImage {
        /// The image reference, such as `ubuntu:22.04`.
        name: String,
    },
    /// An image tarball found through the index.
    IndexedImage {
        /// Index namespace of the task that has the tarball.
        namespace: String,
        /// Artifact name of the tarball, such as `public/image.tar`.
        path: String,
    },
    /// An image tarball that another task uploaded.
    TaskImage {
        /// The task that has the tarball.
        task_id: String,
        /// Artifact name of the tarball, such as `public/image.tar.zst`.
        path: String,
    },
}

impl Image {
    /// The image in a few words, for the task log.
    pub fn describe(&self) -> String {
        match self {
            Image::DockerImage { name } => name.clone(),
            Image::IndexedImage { namespace, path } => format!("{path} from index namespace {namespace}"),
            Image::TaskImage { task_id, path } => format!("{path} from task {task_id}"),
        }
    }
}

/// Capabilities the task container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Run the container with `--privileged`.
    pub privileged: bool,
    /// Run without a seccomp profile; accepted for d2g, not supported by docker-worker.
    pub disable_seccomp: bool,
    /// Host devices to attach.
    pub devices: Devices,
}

/// Host devices a task asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    /// A v4l2loopback video device.
    pub loopback_video: bool,
    /// An snd-aloop audio device.
    pub loopback_audio: bool,
    /// The host's `/dev/shm`.
    pub host_shared_memory: bool,
    /// The host's `/dev/kvm`.
    pub kvm: bool,
}

impl Devices {
    /// Payload names of the devices set to true, as used in `docker-worker:capability:device:<name>`.
    pub fn requested(&self) -> impl Iterator<Item = &'static str> {
        [
            ("loopbackVideo", self.loopback_video),
            ("loopbackAudio", self.loopback_audio),
            ("hostSharedMemory", self.host_shared_memory),
            ("kvm", self.kvm),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
    }
}

/// What an unsuccessful exit status does besides failing the task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnExitStatus {
    /// Statuses that resolve the run as `exception/intermittent-task`, so the queue retries it.
    pub retry: Vec<i64>,
    /// Statuses that purge every cache the task used.
    pub purge_caches: Vec<i64>,
}

/// One entry of `artifacts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSpec {
    /// What `path` points at.
    pub kind: ArtifactKind,
    /// Path in the container.
    pub path: String,
    /// When the artifact expires; the task's expiry when unset.
    pub expires: Option<DateTime<Utc>>,
}

/// The `type` of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArtifactKind {
    /// A single file.
    File,
    /// A directory, uploaded file by file.
    Directory,
    /// A host directory mounted into the container (d2g), uploaded file by file.
    Volume,
}

impl ArtifactKind {
    /// The payload spelling: `file`, `directory` or `volume`.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::File => "file",
            ArtifactKind::Directory => "directory",
            ArtifactKind::Volume => "volume",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "file" => Some(ArtifactKind::File),
            "directory" => Some(ArtifactKind::Directory),
            "volume" => Some(ArtifactKind::Volume),
            _ => None,
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A feature flag of `payload.features`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// Live log sidecar plus the gzipped backing log (on by default).
    LocalLiveLog,
    /// Upload `payload.artifacts` (on by default).
    Artifacts,
    /// Upload the whole log as `public/logs/terminal_bulk.log.gz`.
    BulkLog,
    /// Signed chain-of-trust artifacts.
    ChainOfTrust,
    /// taskcluster-proxy sidecar, reachable as `http://taskcluster`.
    TaskclusterProxy,
    /// docker-exec websocket shell and VNC.
    Interactive,
    /// `SYS_PTRACE` in the container.
    AllowPtrace,
    /// Docker-in-docker sidecar (legacy, not in the current schema).
    Dind,
    /// Save the container and caches as artifacts (legacy).
    DockerSave,
    /// Balrog VPN proxy sidecar (legacy).
    BalrogVpnProxy,
    /// Balrog stage VPN proxy sidecar (legacy).
    BalrogStageVpnProxy,
    /// RelengAPI proxy sidecar (legacy).
    RelengApiProxy,
}

impl Feature {
    /// Every feature, in the order [`Features::requested`] yields them.
    pub const ALL: [Feature; 12] = [
        Feature::LocalLiveLog,
        Feature::Artifacts,
        Feature::BulkLog,
        Feature::ChainOfTrust,
        Feature::TaskclusterProxy,
        Feature::Interactive,
        Feature::AllowPtrace,
        Feature::Dind,
        Feature::DockerSave,
        Feature::BalrogVpnProxy,
        Feature::BalrogStageVpnProxy,
        Feature::RelengApiProxy,
    ];

    /// The payload key, e.g. `localLiveLog` or `balrogVPNProxy`.
    pub fn name(self) -> &'static str {
        match self {
            Feature::LocalLiveLog => "localLiveLog",
            Feature::Artifacts => "artifacts",
            Feature::BulkLog => "bulkLog",
            Feature::ChainOfTrust => "chainOfTrust",
            Feature::TaskclusterProxy => "taskclusterProxy",
            Feature::Interactive => "interactive",
            Feature::AllowPtrace => "allowPtrace",
            Feature::Dind => "dind",
            Feature::DockerSave => "dockerSave",
            Feature::BalrogVpnProxy => "balrogVPNProxy",
            Feature::BalrogStageVpnProxy => "balrogStageVPNProxy",
            Feature::RelengApiProxy => "relengAPIProxy",
        }
    }

    /// The feature with this payload key, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Feature::ALL.into_iter().find(|feature| feature.name() == name)
    }

    /// Whether the feature is on when the payload doesn't say.
    ///
    /// These are docker-worker's defaults; the schema's `default: true` on `bulkLog` was
    /// never applied by docker-worker.
    pub fn default_enabled(self) -> bool {
        matches!(self, Feature::LocalLiveLog | Feature::Artifacts)
    }

    /// Whether the current payload schema lists the feature (the others are docker-worker's
    /// older features, still accepted so that existing tasks parse).
    pub fn in_schema(self) -> bool {
        !matches!(
            self,
            Feature::Dind
                | Feature::DockerSave
                | Feature::BalrogVpnProxy
                | Feature::BalrogStageVpnProxy
                | Feature::RelengApiProxy
        )
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The feature flags a payload sets explicitly; absent flags take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    explicit: BTreeMap<Feature, bool>,
}

impl Features {
    /// Sets a flag explicitly, as if the payload had given it.
    pub fn set(&mut self, feature: Feature, on: bool) {
        self.explicit.insert(feature, on);
    }

    /// The value the payload gave, if it gave one.
    pub fn explicit(&self, feature: Feature) -> Option<bool> {
        self.explicit.get(&feature).copied()
    }

    /// Whether the feature is on, applying [`Feature::default_enabled`] when unset.
    pub fn enabled(&self, feature: Feature) -> bool {
        self.explicit(feature)
            .unwrap_or_else(|| feature.default_enabled())
    }

    /// The features that are on, in [`Feature::ALL`] order.
    pub fn requested(&self) -> impl Iterator<Item = Feature> + '_ {
        Feature::ALL
            .into_iter()
            .filter(move |feature| self.enabled(*feature))
    }
}

/// One problem with a payload, naming the field it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Where the problem is, e.g. `image.type`, `command[2]` or `artifacts["public/x"].path`.
    pub field: String,
    /// What is wrong, e.g. `must be a string`.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a payload, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadErrors(pub Vec<FieldError>);

impl PayloadErrors {
    /// The errors, in the order they were found.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }
}

impl fmt::Display for PayloadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PayloadErrors {}

/// Validates a payload against the v1 schema and builds the typed [`Payload`].
///
/// Every problem is reported, each naming its field. Accepts and rejects what
/// `payload.json` does, except that it deliberately:
/// * rejects `maxRunTime` above 604800 (one week, as docker-worker did; the schema has no maximum);
/// * rejects an empty docker image name, bare or `{"type": "docker-image", "name": ""}`;
/// * accepts docker-worker's older features `dind`, `dockerSave`, `balrogVPNProxy`,
///   `balrogStageVPNProxy` and `relengAPIProxy`, which the current schema dropped;
/// * rejects `onExitStatus` statuses outside the `i64` range (the schema allows any integer).
///
/// The artifact-expiry rule needs the task; see [`parse_task_payload`].
pub fn parse_payload(value: &Value) -> Result<Payload, PayloadErrors> {
    let mut walk = Walk::default();
    let partial = walk.payload(value);
    walk.finish(partial)
}

/// [`parse_payload`] plus [`Payload::check_artifact_expiry`], with both kinds of error in one list.
pub fn parse_task_payload(value: &Value, task_expires: DateTime<Utc>) -> Result<Payload, PayloadErrors> {
    let mut walk = Walk::default();
    let partial = walk.payload(value);
    if let Some(partial) = &partial {
        let expiry = artifact_expiry_errors(&partial.artifacts, task_expires);
        walk.errors.extend(expiry);
    }
    walk.finish(partial)
}

fn artifact_expiry_errors(
    artifacts: &BTreeMap<String, ArtifactSpec>,
    task_expires: DateTime<Utc>,
) -> Vec<FieldError> {
    artifacts
        .iter()
        .filter_map(|(name, spec)| {
            let expires = spec.expires.filter(|expires| *expires > task_expires)?;
            Some(FieldError::new(
                format!("{}.expires", entry_field("artifacts", name)),
                format!(
                    "must not be greater than task expiration ({} > {})",
                    rfc3339(expires),
                    rfc3339(task_expires)
                ),
            ))
        })
        .collect()
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses a `date-time` string, accepting exactly what the `jsonschema` crate's `date-time`
/// format check accepts: `YYYY-MM-DD`, `T` or `t`, `HH:MM:SS`, optional fraction, then `Z`,
/// `z` or `±HH:MM`; second 60 only at 23:59 UTC.
pub fn parse_date_time(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    let separator = bytes.iter().position(|b| matches!(b, b'T' | b't'))?;
    let date = parse_date(&bytes[..separator])?;
    let (time, offset_seconds) = parse_time(&bytes[separator + 1..])?;
    FixedOffset::east_opt(offset_seconds)?
        .from_local_datetime(&date.and_time(time))
        .single()
        .map(|time| time.with_timezone(&Utc))
}

fn parse_date(bytes: &[u8]) -> Option<NaiveDate> {
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year = digits(&bytes[0..4])?;
    let month = digits(&bytes[5..7])?;
    let day = digits(&bytes[8..10])?;
    NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)
}

fn parse_time(bytes: &[u8]) -> Option<(NaiveTime, i32)> {
    if bytes.len() < 9 || bytes[2] != b':' || bytes[5] != b':' {
        return None;
    }
    let hour = digits(&bytes[0..2])?;
    let minute = digits(&bytes[3..5])?;
    let second = digits(&bytes[6..8])?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 8;
    let mut nanos = 0;
    if bytes[i] == b'.' {
        i += 1;
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let fraction = &bytes[start..i];
        if fraction.is_empty() {
            return None;
        }
        // Nanosecond precision; further digits are dropped.
        nanos = (0..9).fold(0, |acc, k| {
            acc * 10 + fraction.get(k).map_or(0, |digit| u32::from(digit - b'0'))
        });
    }
    let offset_minutes = match bytes.get(i)? {
        b'Z' | b'z' if i + 1 == bytes.len() => 0,
        sign @ (b'+' | b'-') if bytes.len() - i == 6 && bytes[i + 3] == b':' => {
            let hours = digits(&bytes[i + 1..i + 3])?;
            let minutes = digits(&bytes[i + 4..i + 6])?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let minutes = i32::try_from(hours * 60 + minutes).ok()?;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let time = if second == 60 {
        let local_minutes = i32::try_from(hour * 60 + minute).ok()?;
        if (local_minutes - offset_minutes).rem_euclid(24 * 60) != 23 * 60 + 59 {
            return None;
        }
        // chrono writes a leap second as second 59 with a nanosecond count past one second.
        NaiveTime::from_hms_nano_opt(hour, minute, 59, 1_000_000_000 + nanos)?
    } else {
        NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?
    };
    Some((time, offset_minutes * 60))
}

fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// The payload's fields as far as they parsed; used only when nothing was wrong, or for the
/// expiry check of the artifacts that did parse.
#[derive(Default)]
struct Partial {
    image: Option<Image>,
    max_run_time: Option<u32>,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    log: Option<String>,
    cache: BTreeMap<String, String>,
    capabilities: Capabilities,
    on_exit_status: OnExitStatus,
    artifacts: BTreeMap<String, ArtifactSpec>,
    superseder_url: Option<String>,
    features: Features,
}

/// Walks a payload value, collecting every error.
#[derive(Default)]
struct Walk {
    errors: Vec<FieldError>,
}

impl Walk {
    fn finish(self, partial: Option<Partial>) -> Result<Payload, PayloadErrors> {
        let Some(partial) = partial else {
            return Err(PayloadErrors(self.errors));
        };
        match (partial.image, partial.max_run_time) {
            (Some(image), Some(max_run_time)) if self.errors.is_empty() => Ok(Payload {
                image,
                command: partial.command,
                env: partial.env,
                max_run_time,
                log: partial.log,
                cache: partial.cache,
                capabilities: partial.capabilities,
                on_exit_status: partial.on_exit_status,
                artifacts: partial.artifacts,
                superseder_url: partial.superseder_url,
                features: partial.features,
            }),
            _ => {
                debug_assert!(!self.errors.is_empty(), "a missing field was not reported");
                Err(PayloadErrors(self.errors))
            }
        }
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    fn payload(&mut self, value: &Value) -> Option<Partial> {
        let map = self.object(ROOT_FIELD, value)?;
        let mut partial = Partial::default();
        match map.get("image") {
            Some(image) => partial.image = self.image(image),
            None => self.error("image", "is required"),
        }
        match map.get("maxRunTime") {
            Some(max_run_time) => partial.max_run_time = self.max_run_time(max_run_time),
            None => self.error("maxRunTime", "is required"),
        }
        if let Some(command) = map.get("command") {
            partial.command = self.string_list("command", command);
        }
        if let Some(env) = map.get("env") {
            partial.env = self.string_map("env", env);
        }
        if let Some(log) = map.get("log") {
            partial.log = self.string("log", log);
        }
        if let Some(cache) = map.get("cache") {
            partial.cache = self.string_map("cache", cache);
        }
        if let Some(capabilities) = map.get("capabilities") {
            partial.capabilities = self.capabilities(capabilities);
        }
        if let Some(on_exit_status) = map.get("onExitStatus") {
            partial.on_exit_status = self.on_exit_status(on_exit_status);
        }
        if let Some(artifacts) = map.get("artifacts") {
            partial.artifacts = self.artifacts(artifacts);
        }
        if let Some(url) = map.get("supersederUrl") {
            partial.superseder_url = self.string("supersederUrl", url);
        }
        if let Some(features) = map.get("features") {
            partial.features = self.features(features);
        }
        self.unknown_fields("", map, TOP_LEVEL_FIELDS);
        Some(partial)
    }

    fn max_run_time(&mut self, value: &Value) -> Option<u32> {
        let seconds = integer(value)
            .filter(|seconds| (1..=i128::from(MAX_RUN_TIME_LIMIT)).contains(seconds))
            .and_then(|seconds| u32::try_from(seconds).ok());
        if seconds.is_none() {
            self.error("maxRunTime", MAX_RUN_TIME_MESSAGE);
        }
        seconds
    }

    fn image(&mut self, value: &Value) -> Option<Image> {
        let map = match value {
            Value::String(name) if name.is_empty() => {
                self.error("image", "must not be empty");
                return None;
            }
            Value::String(name) => return Some(Image::DockerImage { name: name.clone() }),
            Value::Object(map) => map,
            _ => {
                self.error("image", "must be a string or an object");
                return None;
            }
        };
        let (kind, fields): (&str, &[&str]) = match map.get("type") {
            None => {
                self.error("image.type", format!("is required ({IMAGE_TYPES_MESSAGE})"));
                return None;
            }
            Some(Value::String(kind)) if kind == "docker-image" => ("docker-image", &["name"]),
            Some(Value::String(kind)) if kind == "indexed-image" => ("indexed-image", &["namespace", "path"]),
            Some(Value::String(kind)) if kind == "task-image" => ("task-image", &["taskId", "path"]),
            Some(_) => {
                self.error("image.type", IMAGE_TYPES_MESSAGE);
                return None;
            }
        };
        let values: Vec<Option<String>> = fields
            .iter()
            .map(|key| {
                let field = child_field("image", key);
                match map.get(*key) {
                    Some(value) => self.string(&field, value),
                    None => {
                        self.error(field, "is required");
                        None
                    }
                }
            })
            .collect();
        let mut allowed = vec!["type"];
        allowed.extend_from_slice(fields);
        self.unknown_fields("image", map, &allowed);
        match (kind, values.as_slice()) {
            ("docker-image", [Some(name)]) if name.is_empty() => {
                self.error("image.name", "must not be empty");
                None
            }
            ("docker-image", [Some(name)]) => Some(Image::DockerImage { name: name.clone() }),
            ("indexed-image", [Some(namespace), Some(path)]) => Some(Image::IndexedImage {
                namespace: namespace.clone(),
                path: path.clone(),
            }),
            ("task-image", [Some(task_id), Some(path)]) => Some(Image::TaskImage {
                task_id: task_id.clone(),
                path: path.clone(),
            }),
            _ => None,
        }
    }

    fn capabilities(&mut self, value: &Value) -> Capabilities {
        let mut capabilities = Capabilities::default();
        let Some(map) = self.object("capabilities", value) else {
            return capabilities;
        };
        if let Some(value) = map.get("privileged") {
            capabilities.privileged = self.boolean("capabilities.privileged", value);
        }
        if let Some(value) = map.get("disableSeccomp") {
            capabilities.disable_seccomp = self.boolean("capabilities.disableSeccomp", value);
        }
        if let Some(devices) = map.get("devices") {
            capabilities.devices = self.devices(devices);
        }
        self.unknown_fields("capabilities", map, &["privileged", "disableSeccomp", "devices"]);
        capabilities
    }

    fn devices(&mut self, value: &Value) -> Devices {
        const FIELD: &str = "capabilities.devices";
        let mut devices = Devices::default();
        let Some(map) = self.object(FIELD, value) else {
            return devices;
        };
        let slots = [
            ("loopbackVideo", &mut devices.loopback_video),
            ("loopbackAudio", &mut devices.loopback_audio),
            ("hostSharedMemory", &mut devices.host_shared_memory),
            ("kvm", &mut devices.kvm),
        ];
        for (key, slot) in slots {
            if let Some(value) = map.get(key) {
                *slot = self.boolean(&child_field(FIELD, key), value);
            }
        }
        self.unknown_fields(
            FIELD,
            map,
            &["loopbackVideo", "loopbackAudio", "hostSharedMemory", "kvm"],
        );
        devices
    }

    fn on_exit_status(&mut self, value: &Value) -> OnExitStatus {
        let mut on_exit_status = OnExitStatus::default();
        let Some(map) = self.object("onExitStatus", value) else {
            return on_exit_status;
        };
        if let Some(retry) = map.get("retry") {
            on_exit_status.retry = self.exit_statuses("onExitStatus.retry", retry);
        }
        if let Some(purge) = map.get("purgeCaches") {
            on_exit_status.purge_caches = self.exit_statuses("onExitStatus.purgeCaches", purge);
        }
        self.unknown_fields("onExitStatus", map, &["retry", "purgeCaches"]);
        on_exit_status
    }

    fn exit_statuses(&mut self, field: &str, value: &Value) -> Vec<i64> {
        let Value::Array(items) = value else {
            self.error(field, "must be an array of integers");
            return Vec::new();
        };
        let mut statuses = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match integer(item).map(i64::try_from) {
                Some(Ok(status)) => statuses.push(status),
                Some(Err(_)) => self.error(
                    format!("{field}[{i}]"),
                    format!("must be an integer between {} and {}", i64::MIN, i64::MAX),
                ),
                None => self.error(format!("{field}[{i}]"), "must be an integer"),
            }
        }
        statuses
    }

    fn artifacts(&mut self, value: &Value) -> BTreeMap<String, ArtifactSpec> {
        let mut artifacts = BTreeMap::new();
        let Some(map) = self.object("artifacts", value) else {
            return artifacts;
        };
        for (name, spec) in sorted_entries(map) {
            if let Some(spec) = self.artifact(&entry_field("artifacts", name), spec) {
                artifacts.insert(name.clone(), spec);
            }
        }
        artifacts
    }

    fn artifact(&mut self, field: &str, value: &Value) -> Option<ArtifactSpec> {
        let map = self.object(field, value)?;
        let type_field = child_field(field, "type");
        let kind = match map.get("type") {
            None => {
                self.error(type_field, "is required");
                None
            }
            Some(kind) => {
                let kind = kind.as_str().and_then(ArtifactKind::from_name);
                if kind.is_none() {
                    self.error(type_field, ARTIFACT_TYPES_MESSAGE);
                }
                kind
            }
        };
        let path_field = child_field(field, "path");
        let path = match map.get("path") {
            None => {
                self.error(path_field, "is required");
                None
            }
            Some(path) => self.string(&path_field, path),
        };
        let mut expires = Ok(None);
        if let Some(value) = map.get("expires") {
            let expires_field = child_field(field, "expires");
            expires = match self.string(&expires_field, value) {
                Some(text) => match parse_date_time(&text) {
                    Some(time) => Ok(Some(time)),
                    None => {
                        self.error(
                            expires_field,
                            r#"must be an RFC 3339 date-time such as "2016-05-28T16:12:56.693Z""#,
                        );
                        Err(())
                    }
                },
                None => Err(()),
            };
        }
        self.unknown_fields(field, map, &["type", "path", "expires"]);
        match (kind, path, expires) {
            (Some(kind), Some(path), Ok(expires)) => Some(ArtifactSpec { kind, path, expires }),
            _ => None,
        }
    }

    fn features(&mut self, value: &Value) -> Features {
        let mut features = Features::default();
        let Some(map) = self.object("features", value) else {
            return features;
        };
        for (name, on) in sorted_entries(map) {
            let field = child_field("features", name);
            match Feature::from_name(name) {
                Some(feature) => {
                    if let Value::Bool(on) = on {
                        features.set(feature, *on);
                    } else {
                        self.error(field, "must be a boolean");
                    }
                }
                None => self.error(field, format!("unknown feature (known: {})", known_features())),
            }
        }
        features
    }

    fn object<'v>(&mut self, field: &str, value: &'v Value) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            _ => {
                self.error(field, "must be an object");
                None
            }
        }
    }

    fn string(&mut self, field: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(text) => Some(text.clone()),
            _ => {
                self.error(field, "must be a string");
                None
            }
        }
    }

    fn boolean(&mut self, field: &str, value: &Value) -> bool {
        match value {
            Value::Bool(on) => *on,
            _ => {
                self.error(field, "must be a boolean");
                false
            }
        }
    }

    fn string_list(&mut self, field: &str, value: &Value) -> Vec<String> {
        let Value::Array(items) = value else {
            self.error(field, "must be an array of strings");
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(&format!("{field}[{i}]"), item))
            .collect()
    }

    fn string_map(&mut self, field: &str, value: &Value) -> BTreeMap<String, String> {
        let Some(map) = self.object(field, value) else {
            return BTreeMap::new();
        };
        sorted_entries(map)
            .into_iter()
            .filter_map(|(key, value)| {
                let text = self.string(&child_field(field, key), value)?;
                Some((key.clone(), text))
            })
            .collect()
    }

    fn unknown_fields(&mut self, field: &str, map: &Map<String, Value>, allowed: &[&str]) {
        for (key, _) in sorted_entries(map) {
            if !allowed.contains(&key.as_str()) {
                self.error(child_field(field, key), "unknown field");
            }
        }
    }
}

/// The value as an integer if draft-06 calls it one (`5.0` is one); huge floats saturate.
fn integer(value: &Value) -> Option<i128> {
    let Value::Number(number) = value else {
        return None;
    };
    number_integer(number)
}

fn number_integer(number: &Number) -> Option<i128> {
    if let Some(n) = number.as_i64() {
        return Some(i128::from(n));
    }
    if let Some(n) = number.as_u64() {
        return Some(i128::from(n));
    }
    let n = number.as_f64()?;
    // `as` saturates, which is all the range checks after this need.
    (n.is_finite() && n.fract() == 0.0).then_some(n as i128)
}

/// Object entries sorted by key, so errors come out in the same order whatever the map type.
fn sorted_entries(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// `parent.key`, or `parent["key"]` when the key isn't a plain name.
fn child_field(parent: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => entry_field(parent, key),
    }
}

/// `parent["key"]`, used for names that are data rather than field names, like artifact names.
fn entry_field(parent: &str, key: &str) -> String {
    format!("{parent}[{}]", Value::String(key.to_owned()))
}

fn known_features() -> String {
    let mut names: Vec<&str> = Feature::ALL.iter().map(|feature| feature.name()).collect();
    names.sort_unstable();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde_json::json;

    fn fields(errors: &PayloadErrors) -> Vec<&str> {
        errors.iter().map(|error| error.field.as_str()).collect()
    }

    fn errors_of(value: Value) -> PayloadErrors {
        match parse_payload(&value) {
            Ok(payload) => panic!("expected errors, got {payload:?}"),
            Err(errors) => errors,
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        parse_date_time(text).unwrap_or_else(|| panic!("bad test time {text}"))
    }

    #[test]
    fn reports_every_error_at_once_in_a_stable_order() {
        let errors = errors_of(json!({
            "maxRunTime": "hello",
            "command": ["ok", 2, "ok", null],
            "env": {"GOOD": "x", "BAD": 1},
            "capabilities": {"privileged": "yes", "devices": {"kvm": 1, "gpu": true}},
            "onExitStatus": {"retry": ["1", 2, 2.5]},
            "artifacts": {
                "public/a": {"type": "socket", "path": 3},
                "public/b": {"path": "/b", "expires": "tomorrow"},
            },
            "features": {"invalidFeature": true, "bulkLog": "on"},
            "cmd": ["ls"],
        }));
        assert_eq!(
            fields(&errors),
            [
                "image",
                "maxRunTime",
                "command[1]",
                "command[3]",
                "env.BAD",
                "capabilities.privileged",
                "capabilities.devices.kvm",
                "capabilities.devices.gpu",
                "onExitStatus.retry[0]",
                "onExitStatus.retry[2]",
                r#"artifacts["public/a"].type"#,
                r#"artifacts["public/a"].path"#,
                r#"artifacts["public/b"].type"#,
                r#"artifacts["public/b"].expires"#,
                "features.bulkLog",
                "features.invalidFeature",
                "cmd",
            ]
        );
        let text = errors.to_string();
        assert_eq!(text.lines().count(), errors.0.len());
        assert!(text.starts_with("image: is required\nmaxRunTime: must be an integer between 1 and 604800\n"));
        assert!(text.contains("\ncmd: unknown field"));
        assert!(text.contains(
            "\nfeatures.invalidFeature: unknown feature (known: allowPtrace, artifacts, \
             balrogStageVPNProxy, balrogVPNProxy, bulkLog, chainOfTrust, dind, dockerSave, \
             interactive, localLiveLog, relengAPIProxy, taskclusterProxy)"
        ));
        assert!(text.contains(r#"artifacts["public/a"].type: must be one of "file", "directory", "volume""#));
    }

    #[test]
    fn image_forms_and_their_errors() {
        let parse = |image: Value| parse_payload(&json!({"image": image, "maxRunTime": 1}));
        assert_eq!(
            parse(json!("ubuntu:22.04")).map(|p| p.image),
            Ok(Image::DockerImage {
                name: "ubuntu:22.04".into()
            })
        );
        assert_eq!(
            parse(json!({"type": "docker-image", "name": "ubuntu"})).map(|p| p.image),
            Ok(Image::DockerImage {
                name: "ubuntu".into()
            })
        );
        assert_eq!(
            parse(json!({"type": "indexed-image", "namespace": "a.b", "path": "public/image.tar"}))
                .map(|p| p.image),
            Ok(Image::IndexedImage {
                namespace: "a.b".into(),
                path: "public/image.tar".into()
            })
        );
        assert_eq!(
            parse(json!({"type": "task-image", "taskId": "abc", "path": "public/image.tar"}))
                .map(|p| p.image),
            Ok(Image::TaskImage {
                task_id: "abc".into(),
                path: "public/image.tar".into()
            })
        );

        let errors = errors_of(json!({"image": {"type": "dockerimage", "name": "x"}, "maxRunTime": 1}));
        assert_eq!(
            errors.to_string(),
            r#"image.type: must be one of "docker-image", "indexed-image", "task-image""#
        );
        let errors =
            errors_of(json!({"image": {"type": "indexed-image", "path": 1, "foo": 2}, "maxRunTime": 1}));
        assert_eq!(
            errors.to_string(),
            "image.namespace: is required\nimage.path: must be a string\nimage.foo: unknown field"
        );
        assert_eq!(
            errors_of(json!({"image": "", "maxRunTime": 1})).to_string(),
            "image: must not be empty"
        );
        assert_eq!(
            errors_of(json!({"image": 7, "maxRunTime": 1})).to_string(),
            "image: must be a string or an object"
        );
    }

    #[test]
    fn defaults_of_a_minimal_payload() {
        let payload = parse_payload(&json!({"image": "ubuntu", "maxRunTime": 600})).unwrap();
        assert_eq!(
            payload,
            Payload::new(
                Image::DockerImage {
                    name: "ubuntu".into()
                },
                600
            )
        );
        assert!(payload.command.is_empty());
        assert!(payload.env.is_empty() && payload.cache.is_empty() && payload.artifacts.is_empty());
        assert_eq!(payload.capabilities, Capabilities::default());
        assert_eq!(payload.capabilities.devices.requested().count(), 0);
        assert_eq!(payload.on_exit_status, OnExitStatus::default());
        assert_eq!(payload.live_log_name(), "public/logs/live.log");
        assert_eq!(payload.backing_log_name(), "public/logs/live_backing.log");
        assert_eq!(payload.superseder_url, None);
    }

    #[test]
    fn full_payload_parses_into_typed_fields() {
        let payload = parse_payload(&json!({
            "image": "ubuntu",
            "maxRunTime": 5.0,
            "command": ["/bin/sh", "-c", "ls"],
            "env": {"FOO": "bar"},
            "log": "private/logs/live.log",
            "cache": {"my-cache": "/cache"},
            "capabilities": {"privileged": true, "devices": {"kvm": true, "loopbackAudio": false}},
            "onExitStatus": {"retry": [36, -1], "purgeCaches": [2.0]},
            "artifacts": {"public/x": {"type": "directory", "path": "/x", "expires": "2030-01-01T01:00:00+01:00"}},
            "supersederUrl": "https://example.com",
            "features": {"bulkLog": true, "localLiveLog": false, "dind": true},
        }))
        .unwrap();
        assert_eq!(payload.max_run_time, 5);
        assert_eq!(payload.command, ["/bin/sh", "-c", "ls"]);
        assert_eq!(payload.env["FOO"], "bar");
        assert_eq!(payload.cache["my-cache"], "/cache");
        assert!(payload.capabilities.privileged && !payload.capabilities.disable_seccomp);
        assert_eq!(
            payload.capabilities.devices.requested().collect::<Vec<_>>(),
            ["kvm"]
        );
        assert_eq!(payload.on_exit_status.retry, [36, -1]);
        assert_eq!(payload.on_exit_status.purge_caches, [2]);
        let artifact = &payload.artifacts["public/x"];
        assert_eq!(artifact.kind, ArtifactKind::Directory);
        assert_eq!(artifact.kind.as_str(), "directory");
        assert_eq!(artifact.path, "/x");
        assert_eq!(artifact.expires, Some(utc("2030-01-01T00:00:00Z")));
        assert_eq!(payload.superseder_url.as_deref(), Some("https://example.com"));
        assert_eq!(payload.live_log_name(), "private/logs/live.log");
        assert_eq!(
            payload.features.requested().collect::<Vec<_>>(),
            [Feature::Artifacts, Feature::BulkLog, Feature::Dind]
        );
    }

    #[test]
    fn backing_log_names() {
        for (live, backing) in [
            ("public/logs/live.log", "public/logs/live_backing.log"),
            ("private/x/logs/live.log", "private/x/logs/live_backing.log"),
            ("apple/banana.log.txt", "apple/banana.log_backing.txt"),
            ("live.log", "live_backing.log"),
            ("a/b", "a/b_backing"),
            ("plain", "plain_backing"),
            ("logs/.hidden", "logs/.hidden_backing"),
            ("/live.log", "/live_backing.log"),
        ] {
            assert_eq!(backing_log_name(live), backing, "live log {live:?}");
        }
        let mut payload = Payload::new(Image::DockerImage { name: "x".into() }, 1);
        payload.log = Some("live.log".into());
        assert_eq!(payload.backing_log_name(), "live_backing.log");
        payload.log = Some(String::new());
        assert_eq!(payload.live_log_name(), DEFAULT_LIVE_LOG_NAME);
        assert_eq!(payload.backing_log_name(), "public/logs/live_backing.log");
    }

    #[test]
    fn feature_defaults_and_names() {
        let features = Features::default();
        for feature in Feature::ALL {
            let on = matches!(feature, Feature::LocalLiveLog | Feature::Artifacts);
            assert_eq!(feature.default_enabled(), on, "{feature}");
            assert_eq!(features.enabled(feature), on, "{feature}");
            assert_eq!(features.explicit(feature), None);
            assert_eq!(Feature::from_name(feature.name()), Some(feature));
        }
        assert!(
            !features.enabled(Feature::BulkLog),
            "the schema's bulkLog default is not applied"
        );
        assert_eq!(
            features.requested().collect::<Vec<_>>(),
            [Feature::LocalLiveLog, Feature::Artifacts]
        );
        assert_eq!(Feature::BalrogVpnProxy.name(), "balrogVPNProxy");
        assert_eq!(Feature::BalrogStageVpnProxy.name(), "balrogStageVPNProxy");
        assert_eq!(Feature::RelengApiProxy.name(), "relengAPIProxy");
        assert_eq!(Feature::ALL.iter().filter(|f| f.in_schema()).count(), 7);

        let payload = parse_payload(&json!({
            "image": "x", "maxRunTime": 1,
            "features": {"artifacts": false, "taskclusterProxy": true},
        }))
        .unwrap();
        assert_eq!(payload.features.explicit(Feature::Artifacts), Some(false));
        assert_eq!(
            payload.features.requested().collect::<Vec<_>>(),
            [Feature::LocalLiveLog, Feature::TaskclusterProxy]
        );
    }

    #[test]
    fn max_run_time_bounds() {
        let parse = |max: Value| parse_payload(&json!({"image": "x", "maxRunTime": max}));
        assert_eq!(parse(json!(1)).unwrap().max_run_time, 1);
        assert_eq!(parse(json!(604800)).unwrap().max_run_time, 604_800);
        assert_eq!(parse(json!(600.0)).unwrap().max_run_time, 600);
        for bad in [
            json!(0),
            json!(-5),
            json!(604801),
            json!(1.5),
            json!("5"),
            json!(null),
            json!(1e300),
        ] {
            let errors = parse(bad.clone()).unwrap_err();
            assert_eq!(
                errors.to_string(),
                "maxRunTime: must be an integer between 1 and 604800",
                "{bad}"
            );
        }
    }

    #[test]
    fn artifact_expiry_check() {
        let task_expires = utc("2030-01-01T00:00:00Z");
        let mut payload = Payload::new(Image::DockerImage { name: "x".into() }, 1);
        for (name, expires) in [
            ("public/late", Some(task_expires + Duration::milliseconds(1500))),
            ("public/same", Some(task_expires)),
            ("public/early", Some(task_expires - Duration::days(1))),
            ("public/default", None),
        ] {
            let spec = ArtifactSpec {
                kind: ArtifactKind::File,
                path: "/x".into(),
                expires,
            };
            payload.artifacts.insert(name.into(), spec);
        }
        let errors = payload.check_artifact_expiry(task_expires);
        assert_eq!(
            errors,
            [FieldError::new(
                r#"artifacts["public/late"].expires"#,
                "must not be greater than task expiration (2030-01-01T00:00:01.500Z > 2030-01-01T00:00:00Z)"
            )]
        );
        assert_eq!(
            errors[0].to_string(),
            r#"artifacts["public/late"].expires: must not be greater than task expiration (2030-01-01T00:00:01.500Z > 2030-01-01T00:00:00Z)"#
        );
    }

    #[test]
    fn task_payload_reports_schema_and_expiry_errors_together() {
        // invalid_payload_schema_test "multiple errors": a bad maxRunTime and an artifact
        // outliving the task are reported in one list.
        let errors = parse_task_payload(
            &json!({
                "image": "x",
                "maxRunTime": "hello",
                "artifacts": {"public/x": {"type": "file", "path": "/x", "expires": "2040-01-01T00:00:00Z"}},
            }),
            utc("2030-01-01T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(
            fields(&errors),
            ["maxRunTime", r#"artifacts["public/x"].expires"#]
        );
        assert!(errors.0[1]
            .message
            .starts_with("must not be greater than task expiration"));

        let ok = parse_task_payload(
            &json!({"image": "x", "maxRunTime": 1}),
            utc("2030-01-01T00:00:00Z"),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn date_times_follow_the_jsonschema_format_check() {
        assert_eq!(
            utc("2016-05-28T16:12:56.693817Z").timestamp_micros(),
            1_464_451_976_693_817
        );
        assert_eq!(utc("2030-01-01t02:30:00+02:30"), utc("2030-01-01T00:00:00Z"));
        assert_eq!(utc("2029-12-31T19:00:00-05:00"), utc("2030-01-01T00:00:00z"));
        assert!(parse_date_time("2016-12-31T23:59:60Z").is_some());
        assert_eq!(
            utc("2016-12-31T15:59:60-08:00"),
            utc("2016-12-31T23:59:60Z"),
            "a leap second keeps its instant across offsets"
        );
        assert_eq!(
            utc("2016-12-31T23:59:60.5Z").timestamp_millis(),
            utc("2016-12-31T23:59:59Z").timestamp_millis() + 1500
        );
        assert_eq!(
            utc("2016-02-29T00:00:00.123456789123Z").timestamp_subsec_nanos(),
            123_456_789,
            "digits past nanoseconds are dropped"
        );
        for bad in [
            "",
            "2016-05-28",
            "2016-05-28 16:12:56Z",
            "2016-05-28T16:12:56",
            "2016-05-28T16:12:56+0100",
            "2016-05-28T16:12:56.Z",
            "2016-05-28T24:00:00Z",
            "2016-05-28T16:60:00Z",
            "2016-05-28T16:12:56+24:00",
            "2016-12-31T22:59:60Z",
            "2015-02-29T00:00:00Z",
            "16-05-28T16:12:56Z",
            "2016-5-28T16:12:56Z",
            "2016-05-28T16:12:56Zx",
            "2016-05-28T16:12:56ZT",
            "२०१६-05-28T16:12:56Z",
        ] {
            assert_eq!(parse_date_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn odd_keys_are_quoted_in_field_names() {
        let errors = errors_of(json!({
            "image": "x", "maxRunTime": 1,
            "env": {"A.B": 1, "": 2},
            "cache": {"level-3-checkouts": false},
            "weird key": 1,
        }));
        assert_eq!(
            fields(&errors),
            [
                r#"env[""]"#,
                r#"env["A.B"]"#,
                "cache.level-3-checkouts",
                r#"["weird key"]"#
            ]
        );
    }

    #[test]
    fn non_object_payload() {
        assert_eq!(errors_of(json!([1])).to_string(), "payload: must be an object");
        assert_eq!(
            errors_of(json!({})).to_string(),
            "image: is required\nmaxRunTime: is required"
        );
    }

    #[test]
    fn exit_status_range() {
        let errors = errors_of(json!({
            "image": "x", "maxRunTime": 1,
            "onExitStatus": {"purgeCaches": [18446744073709551615u64], "retry": "36", "other": []},
        }));
        assert_eq!(
            errors.to_string(),
            "onExitStatus.retry: must be an array of integers\n\
             onExitStatus.purgeCaches[0]: must be an integer between -9223372036854775808 and 9223372036854775807\n\
             onExitStatus.other: unknown field"
        );
    }
}
