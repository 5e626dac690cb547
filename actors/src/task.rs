//! What a task is to the worker: its identity, its definition and the worker it runs on.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Who runs the task; these values appear in the log header and the container's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIdentity {
    /// The provisioner id (first half of the task queue id).
    pub provisioner_id: String,
    /// The worker type (second half of the task queue id).
    pub worker_type: String,
    /// The worker group.
    pub worker_group: String,
    /// The worker id.
    pub worker_id: String,
    /// The node type, exported as `TASKCLUSTER_INSTANCE_TYPE` as docker-worker did.
    pub worker_node_type: String,
    /// The public IP, exported as `TASKCLUSTER_PUBLIC_IP`.
    pub public_ip: String,
    /// The Taskcluster root URL.
    pub root_url: String,
    /// `TASKCLUSTER_WORKER_LOCATION`, when the deployment sets one.
    pub worker_location: Option<String>,
    /// The host's name, for the log header.
    pub hostname: String,
}

/// One claimed run of one task.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The task id.
    pub task_id: String,
    /// The run id.
    pub run_id: u32,
    /// The payload as given; the TaskActor validates it so that errors land in the task log.
    pub payload: Value,
    /// The task's scopes.
    pub scopes: Vec<String>,
    /// When the task expires, if known.
    pub expires: Option<DateTime<Utc>>,
}

impl TaskSpec {
    /// A claimed run of a task definition (`task.json`). What the definition lacks is left for the
    /// payload validation to report in the task log.
    pub fn from_definition(task_id: &str, run_id: u32, definition: &Value) -> TaskSpec {
        let scopes = definition["scopes"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let expires = definition["expires"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc));
        TaskSpec {
            task_id: task_id.to_string(),
            run_id,
            payload: definition.get("payload").cloned().unwrap_or(Value::Null),
            scopes,
            expires,
        }
    }
}

/// A task file could not be read as a task.
#[derive(Debug, thiserror::Error)]
pub enum TaskFileError {
    /// The top level is not a mapping.
    #[error("the task file must hold a mapping: a payload, or a task definition with a `payload`")]
    NotAMapping,
    /// A task definition field has the wrong type.
    #[error("{field}: {message}")]
    Field {
        /// The field, as a path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// What a task file holds: a bare payload or a task definition.
#[derive(Debug, Clone)]
pub struct TaskFile {
    /// The payload.
    pub payload: Value,
    /// `scopes` of the definition (empty for a bare payload).
    pub scopes: Vec<String>,
    /// `expires` of the definition.
    pub expires: Option<DateTime<Utc>>,
}

impl TaskFile {
    /// A task definition has a `payload` mapping and no `image`; anything else is taken as a bare payload,
    /// so that a payload's own errors are reported as such.
    pub fn from_value(value: Value) -> Result<TaskFile, TaskFileError> {
        let Value::Object(map) = value else {
            return Err(TaskFileError::NotAMapping);
        };
        let is_definition =
            matches!(map.get("payload"), Some(Value::Object(_))) && !map.contains_key("image");
        if !is_definition {
            return Ok(TaskFile {
                payload: Value::Object(map),
                scopes: Vec::new(),
                expires: None,
            });
        }
        let scopes = match map.get("scopes") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.as_str().map(str::to_owned).ok_or_else(|| TaskFileError::Field {
                        field: format!("scopes[{i}]"),
                        message: "must be a string".into(),
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(TaskFileError::Field {
                    field: "scopes".into(),
                    message: "must be an array of strings".into(),
                })
            }
        };
        let expires = match map.get("expires") {
            None => None,
            Some(Value::String(s)) => Some(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|e| TaskFileError::Field {
                        field: "expires".into(),
                        message: format!("must be an RFC 3339 date-time ({e})"),
                    })?
                    .with_timezone(&Utc),
            ),
            Some(_) => {
                return Err(TaskFileError::Field {
                    field: "expires".into(),
                    message: "must be an RFC 3339 date-time string".into(),
                })
            }
        };
        Ok(TaskFile {
            payload: map["payload"].clone(),
            scopes,
            expires,
        })
    }
}

/// A new task id in Taskcluster's slugid form: 22 url-safe base64 characters of a v4 UUID.
pub fn new_task_id() -> String {
    use base64::Engine as _;
    // slugid's "nice" form: clearing the top bit keeps the id from starting with '-'.
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Scope satisfaction as Taskcluster defines it: equal, or the held scope ends in `*` and is a prefix.
pub fn scope_satisfied(held: &[String], required: &str) -> bool {
    held.iter().any(|s| match s.strip_suffix('*') {
        Some(prefix) => required.starts_with(prefix),
        None => s == required,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bare_payload_and_definition() {
        let bare = TaskFile::from_value(json!({"image": "x", "maxRunTime": 1})).unwrap();
        assert_eq!(bare.payload["image"], "x");
        let def = TaskFile::from_value(json!({
            "payload": {"image": "x", "maxRunTime": 1},
            "scopes": ["a:b"],
            "expires": "2030-01-01T00:00:00.000Z",
        }))
        .unwrap();
        assert_eq!(def.scopes, vec!["a:b".to_string()]);
        assert_eq!(def.payload["maxRunTime"], 1);
        assert!(def.expires.is_some());
    }

    #[test]
    fn definition_field_errors_name_the_field() {
        let err = TaskFile::from_value(json!({"payload": {}, "scopes": [1]})).unwrap_err();
        assert_eq!(err.to_string(), "scopes[0]: must be a string");
        let err = TaskFile::from_value(json!({"payload": {}, "expires": "soon"})).unwrap_err();
        assert!(err.to_string().starts_with("expires: must be an RFC 3339"));
        assert!(matches!(
            TaskFile::from_value(json!([1])),
            Err(TaskFileError::NotAMapping)
        ));
    }

    #[test]
    fn task_ids_are_slugids() {
        let id = new_task_id();
        assert_eq!(id.len(), 22);
        assert!(!id.starts_with('-'));
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn star_scopes_match_prefixes() {
        let held = vec!["docker-worker:image:localhost:5000/*".to_string()];
        assert!(scope_satisfied(&held, "docker-worker:image:localhost:5000/a:b"));
        assert!(!scope_satisfied(&held, "docker-worker:image:other/a"));
        assert!(scope_satisfied(&["a".into()], "a"));
        assert!(!scope_satisfied(&["a".into()], "ab"));
    }
}
