//! The Index service (`services/index/src/api.js` and `helpers.js`): `findTask` and `insertTask` at
//! `<root>/api/index/v1/`.
//!
//! As the real service: an index path `a.b.c` is the name `c` in the namespace `a.b`; `insertTask` replaces
//! an entry only with a rank at least as high (with a lower rank it keeps the entry it has and still
//! answers 200 with it); `findTask` answers 404 `ResourceNotFound` for a path that has no entry or whose
//! entry has expired. Unlike it, the double keeps no namespace hierarchy: it serves no listings.

use std::collections::HashMap;
use std::sync::MutexGuard;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::queue::{params_of, parse_time, ApiError, Call, Core, Reply};
use super::state::fmt_time;

/// Where the Index service lives under the root URL.
pub const INDEX_PREFIX: &str = "/api/index/v1";

/// One entry of the index, as an `indexed_tasks` row.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedTask {
    /// The task it points at.
    pub task_id: String,
    /// Its rank (any JSON number).
    pub rank: Value,
    /// The user's data (a JSON object).
    pub data: Value,
    /// When the entry expires.
    pub expires: DateTime<Utc>,
}

/// All entries, by `(namespace, name)`.
#[derive(Debug, Default)]
pub struct Index {
    /// Entries by `(namespace, name)`.
    pub entries: HashMap<(String, String), IndexedTask>,
}

/// `splitNamespace`: `a.b.c` is `("a.b", "c")`; a path without a dot is a name in the root namespace.
pub fn split_namespace(path: &str) -> (String, String) {
    match path.rsplit_once('.') {
        Some((namespace, name)) => (namespace.to_string(), name.to_string()),
        None => (String::new(), path.to_string()),
    }
}

/// `namespaceFormat`: dot-separated words of `[a-zA-Z0-9_!~*'()%-]`.
pub fn is_namespace(path: &str) -> bool {
    path.split('.').all(|word| {
        !word.is_empty()
            && word
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_!~*'()%-".contains(&c))
    })
}

/// `taskUtils.serialize`: the `indexed-task-response.json` shape.
fn serialize(namespace: &str, name: &str, task: &IndexedTask) -> Value {
    let full = if namespace.is_empty() || name.is_empty() {
        format!("{namespace}{name}")
    } else {
        format!("{namespace}.{name}")
    };
    json!({
        "namespace": full,
        "taskId": task.task_id,
        "rank": task.rank,
        "data": task.data,
        "expires": fmt_time(task.expires),
    })
}

fn rank_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

impl Core {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `findTask`: `GET /task/<indexPath>`.
    pub(super) fn find_task(&self, call: &Call<'_>, now: DateTime<Utc>) -> Result<Reply, ApiError> {
        let (namespace, name) = split_namespace(call.param("indexPath"));
        let task = self
            .index()
            .entries
            .get(&(namespace.clone(), name.clone()))
            .cloned()
            .filter(|t| t.expires > now)
            .ok_or_else(|| ApiError::new("ResourceNotFound", "Indexed task not found"))?;
        Ok(Reply::ok(serialize(&namespace, &name, &task)))
    }

    /// `insertTask`: `PUT /task/<namespace>`.
    pub(super) fn insert_task(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        let path = call.param("namespace");
        call.authorize(&params_of(&[("namespace", json!(path))]))?;
        let input = &call.body;
        let expires =
            parse_time(&input["expires"]).ok_or_else(|| ApiError::new("InputError", "Invalid `expires`"))?;
        let offered = IndexedTask {
            task_id: input["taskId"].as_str().unwrap_or_default().to_string(),
            rank: input["rank"].clone(),
            data: input["data"].clone(),
            expires,
        };
        let (namespace, name) = split_namespace(path);
        let mut index = self.index();
        let kept = index
            .entries
            .entry((namespace.clone(), name.clone()))
            .and_modify(|existing| {
                // An expired entry still counts here, as in the real service.
                if rank_of(&existing.rank) <= rank_of(&offered.rank) {
                    *existing = offered.clone();
                }
            })
            .or_insert_with(|| offered.clone())
            .clone();
        Ok(Reply::ok(serialize(&namespace, &name, &kept)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_paths_split_at_the_last_dot() {
        assert_eq!(split_namespace("a.b.c"), ("a.b".into(), "c".into()));
        assert_eq!(split_namespace("c"), (String::new(), "c".into()));
    }

    #[test]
    fn namespaces_follow_the_index_pattern() {
        assert!(is_namespace("docker-worker.images.v1.busybox-latest"));
        assert!(is_namespace("a_b!~*'()%-1"));
        assert!(!is_namespace(""));
        assert!(!is_namespace("a..b"));
        assert!(!is_namespace(".a"));
        assert!(!is_namespace("a/b"));
        assert!(!is_namespace("a b"));
    }

    #[test]
    fn serialized_namespaces_join_with_a_dot_only_between_two_parts() {
        let task = IndexedTask {
            task_id: "t".into(),
            rank: json!(0),
            data: json!({}),
            expires: DateTime::from_timestamp(2_000_000_000, 0).unwrap(),
        };
        assert_eq!(serialize("a.b", "c", &task)["namespace"], "a.b.c");
        assert_eq!(serialize("", "c", &task)["namespace"], "c");
    }
}
