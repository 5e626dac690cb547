//! The Queue's artifact endpoints, after `services/queue/src/artifacts.js`: `createArtifact`,
//! `finishArtifact`, `getArtifact`, `getLatestArtifact` and `listArtifacts`, in the order of its checks
//! and with its messages.
//!
//! * `s3` artifacts get a `putUrl` into the double's bucket (valid 45 minutes, signed for the
//!   artifact's `contentType`) and are present at once; downloads redirect to a bucket URL (30 minutes).
//! * `object` artifacts: the Queue locks the upload in with the Object service's `createUpload` (no
//!   proposed methods, a fresh `uploadId`, object name `t/<taskId>/<runId>/<name>`), answers with
//!   credentials for `object:upload:<projectId>:<object name>` (clientId
//!   `artifact-upload/<taskId>/<runId>/on/<workerGroup>/<workerId>`, valid until the artifact expires or
//!   for 24 hours, whichever is first), and shows the artifact only after `finishArtifact`, which asks the
//!   Object service whether the object is finished. Repeating createArtifact for an object artifact makes
//!   the Queue call createUpload with another `uploadId`, which the Object service refuses: the Queue
//!   answers 500, as the real one does.
//! * `reference`, `link`, `error` are metadata only. Links are followed by the download endpoints (each
//!   name in the chain needs `queue:get-artifact:<name>`; a cycle is a 400); an `error` artifact answers
//!   424 `{reason, message}`.
//! * `finishArtifact` on anything but an object artifact is a 500: the real Queue (v106) calls
//!   `res.resportError` there, a typo that throws, although its description promises a 400.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::hawk;
use super::object::{blob_key as object_blob_key, StoredObject};
use super::queue::{check_param, params_of, parse_time, ApiError, Body, Call, Core, Reply, ISSUER_CLIENT_ID};
use super::state::{fmt_time, now_ms, Artifact, RunEvent, RunState};
use super::storage::{Blob, GET_URL_VALIDITY, PUT_URL_VALIDITY};

/// The task queue of the tasks [`Core::seed_artifact`] creates.
pub const SEED_TASK_QUEUE: &str = "docker-worker-test/seeded";
/// The worker that "ran" the runs [`Core::seed_artifact`] completes.
const SEED_WORKER: (&str, &str) = ("queue-double", "seed");

/// The buckets `s3` artifacts go to, by whether their name starts with `public/`.
const PUBLIC_BUCKET: &str = "queue-double-public-artifacts";
const PRIVATE_BUCKET: &str = "queue-double-private-artifacts";

/// Artifacts may still be created this long after a run was resolved `exception`.
const EXCEPTION_GRACE_MS: i64 = 25 * 60 * 1000;
/// `listArtifacts` pages hold at most this many.
const MAX_PAGE: usize = 1000;

/// `artifactToObjectName`: the Object service's name for an object artifact's data.
pub fn object_name(task_id: &str, run_id: usize, name: &str) -> String {
    format!("t/{task_id}/{run_id}/{name}")
}

/// The bucket key of an `s3` artifact's data.
fn s3_key(details: &Value) -> String {
    format!(
        "s3/{}/{}",
        details["bucket"].as_str().unwrap_or_default(),
        details["prefix"].as_str().unwrap_or_default()
    )
}

/// `createArtifactCallsCompatible`: may a createArtifact call with these properties repeat or update
/// `original`?
pub fn calls_compatible(
    original: &Artifact,
    storage_type: &str,
    content_type: &str,
    expires: DateTime<Utc>,
    details: &Value,
) -> bool {
    // Links have no content type of their own.
    if storage_type != "link" && original.content_type != content_type {
        return false;
    }
    // Expiration may be extended, not shortened.
    if original.expires > expires {
        return false;
    }
    if original.storage_type == storage_type {
        // Same type: same details, except that a reference may change its url.
        original.details == *details || storage_type == "reference"
    } else {
        // A link may replace a reference; no other change of type.
        original.storage_type == "reference" && storage_type == "link"
    }
}

/// `{"taskId", runId, "name"}` as a continuation token: base64 of the JSON array, as `paginateResults`
/// makes it from the index columns of the last row.
fn continuation_token(task_id: &str, run_id: usize, name: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(json!([task_id, run_id, name]).to_string())
}

/// A continuation token back to `(taskId, runId, name)`; anything else starts at the first row.
fn decode_token(token: &str) -> Option<(String, i64, String)> {
    let bytes = hawk::lenient_base64(token)?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    match value.as_array()?.as_slice() {
        [Value::String(t), Value::Number(r), Value::String(n)] => Some((t.clone(), r.as_i64()?, n.clone())),
        _ => None,
    }
}

impl Core {
    /// `createArtifact`: `POST /task/<taskId>/runs/<runId>/artifacts/<name>`.
    pub(super) fn create_artifact(&self, call: &Call<'_>, now: DateTime<Utc>) -> Result<Reply, ApiError> {
        let task_id = call.param("taskId");
        let name = call.param("name");
        let input = &call.body;
        let storage_type = input["storageType"].as_str().unwrap_or_default().to_string();
        let content_type = input
            .get("contentType")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .unwrap_or("application/binary")
            .to_string();
        let content_length = input.get("contentLength").and_then(Value::as_u64);
        let in_future = || ApiError::new("InputError", "Expires must be in the future");
        let expires = parse_time(&input["expires"]).ok_or_else(in_future)?;
        if expires < now - chrono::Duration::minutes(15) {
            return Err(in_future());
        }

        let task = self
            .lock()
            .tasks
            .get(task_id)
            .cloned()
            .ok_or_else(|| ApiError::new("InputError", "Task not found"))?;
        let run = call
            .param("runId")
            .parse::<usize>()
            .ok()
            .and_then(|r| task.runs.get(r).map(|run| (r, run.clone())));
        let Some((run_id, run)) = run else {
            return Err(ApiError::new("InputError", "Run not found"));
        };
        let (Some(worker_group), Some(worker_id)) = (run.worker_group.clone(), run.worker_id.clone()) else {
            return Err(ApiError::new(
                "InputError",
                "Run was not claimed by a worker and so no artifacts can exist",
            ));
        };
        call.authorize(&params_of(&[
            ("taskId", json!(task_id)),
            ("runId", json!(run_id)),
            ("workerGroup", json!(worker_group)),
            ("workerId", json!(worker_id)),
            ("name", json!(name)),
        ]))?;
        let task_expires = task.expires().unwrap_or(now);
        if expires > task_expires {
            return Err(ApiError::new(
                "InputError",
                format!(
                    "Artifact expires ({}) after the task expiration {} (task.expires < expires) - this is not \
                     allowed, artifacts may not expire after the task they belong to expires",
                    fmt_time(expires),
                    fmt_time(task_expires)
                ),
            ));
        }
        if run.state != RunState::Running {
            let allow = run.state == RunState::Exception
                && run
                    .resolved
                    .is_some_and(|r| r.timestamp_millis() > now.timestamp_millis() - EXCEPTION_GRACE_MS);
            if !allow {
                return Err(ApiError::new(
                    "RequestConflict",
                    format!(
                        "Artifacts cannot be created for a task after it is resolved, unless it is resolved \
                         'exception', and even in this case only up to 25 min past resolution.This to ensure \
                         that artifacts have been uploaded before a task is 'completed' and output is consumed \
                         by a dependent task\n\nTask status: {}",
                        task.status()
                    ),
                ));
            }
        }

        let project_id = task.project_id().to_string();
        let mut upload = None;
        let (details, present) = match storage_type.as_str() {
            "object" => {
                // Lock the upload in with the Object service.
                let upload_id = hawk::slugid();
                let object = object_name(task_id, run_id, name);
                self.service_call(
                    "createUpload",
                    &[("name", object.as_str())],
                    json!({
                        "expires": fmt_time(expires),
                        "projectId": project_id,
                        "uploadId": upload_id,
                        "proposedUploadMethods": {},
                    }),
                )
                .map_err(|e| {
                    ApiError::internal(format!(
                        "The Object service's createUpload failed, so the Queue fails: {}: {}",
                        e.code, e.message
                    ))
                })?;
                let details = json!({ "uploadId": upload_id });
                upload = Some((upload_id, object));
                (details, false)
            }
            "s3" => {
                let bucket = if name.starts_with("public/") {
                    PUBLIC_BUCKET
                } else {
                    PRIVATE_BUCKET
                };
                (
                    json!({"bucket": bucket, "prefix": format!("{task_id}/{run_id}/{name}")}),
                    true,
                )
            }
            "reference" => (json!({ "url": input["url"] }), true),
            "link" => (json!({ "artifact": input["artifact"] }), true),
            "error" => (
                json!({"message": input["message"], "reason": input["reason"]}),
                true,
            ),
            other => return Err(ApiError::internal(format!("Unknown storageType: {other}"))),
        };

        let key = (task_id.to_string(), run_id, name.to_string());
        let artifact = self.mutate(|store| match store.artifacts.get_mut(&key) {
            None => {
                let artifact = Artifact {
                    storage_type: storage_type.clone(),
                    content_type: content_type.clone(),
                    details: details.clone(),
                    present,
                    expires,
                    content_length,
                };
                store.artifacts.insert(key.clone(), artifact.clone());
                (Ok(artifact), true)
            }
            Some(original) => {
                if !calls_compatible(original, &storage_type, &content_type, expires, &details) {
                    let message = format!(
                        "Artifact already exists with different properties, and none of the allowed \
                         exceptions apply: {}",
                        json!({
                            "storageType": original.storage_type,
                            "contentType": original.content_type,
                            "expires": fmt_time(original.expires),
                        })
                    );
                    return (Err(ApiError::new("RequestConflict", message)), false);
                }
                original.details = details.clone();
                original.storage_type = storage_type.clone();
                original.expires = expires;
                (Ok(original.clone()), true)
            }
        })?;

        match artifact.storage_type.as_str() {
            "object" => {
                let Some((upload_id, object)) = upload else {
                    return Err(ApiError::internal("an object artifact without an upload"));
                };
                let one_day = now + chrono::Duration::hours(24);
                let expiry = if expires < one_day { expires } else { one_day };
                let credentials = hawk::issue_temp_credentials(
                    ISSUER_CLIENT_ID,
                    &self.issuer_token,
                    &format!("artifact-upload/{task_id}/{run_id}/on/{worker_group}/{worker_id}"),
                    &[format!("object:upload:{project_id}:{object}")],
                    now,
                    expiry,
                );
                Ok(Reply::ok(json!({
                    "storageType": "object",
                    "name": object,
                    "projectId": project_id,
                    "uploadId": upload_id,
                    "expires": fmt_time(expires),
                    "credentials": credentials.to_json(),
                })))
            }
            "s3" => {
                let validity = chrono::Duration::from_std(PUT_URL_VALIDITY).unwrap_or_default();
                let put_url = self.storage.put_url(
                    self.root_url(),
                    &s3_key(&artifact.details),
                    &artifact.content_type,
                    false,
                    now + validity,
                );
                Ok(Reply::ok(json!({
                    "storageType": "s3",
                    "contentType": artifact.content_type,
                    "expires": fmt_time(now + chrono::Duration::minutes(45)),
                    "putUrl": put_url,
                })))
            }
            _ => Ok(Reply::ok(json!({ "storageType": storage_type }))),
        }
    }

    /// `finishArtifact`: `PUT /task/<taskId>/runs/<runId>/artifacts/<name>`.
    pub(super) fn finish_artifact(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        let task_id = call.param("taskId");
        let run_param = call.param("runId");
        let name = call.param("name");
        let run_id = run_param.parse::<usize>().ok();
        let found = {
            let store = self.lock();
            let task = store.tasks.get(task_id);
            run_id.and_then(|r| {
                let artifact = store.artifacts.get(&(task_id.to_string(), r, name.to_string()))?;
                task.filter(|t| t.runs.len() > r)?;
                Some((r, artifact.clone()))
            })
        };
        let Some((run_id, artifact)) = found else {
            return Err(ApiError::new(
                "ResourceNotFound",
                format!("Artifact with taskId `{task_id}`, runId {run_param}, name `{name}` not found"),
            ));
        };
        if artifact.storage_type != "object" {
            return Err(ApiError::internal(
                "TypeError: res.resportError is not a function (the real Queue has this typo where it means \
                 to answer 400 `Only object artifacts can be finished`; the queue double answers its 500)",
            ));
        }
        if artifact.present {
            return Ok(Reply::no_content());
        }
        let upload_id = call.body["uploadId"].as_str().unwrap_or_default();
        if artifact.details["uploadId"].as_str() != Some(upload_id) {
            return Err(ApiError::new(
                "InputError",
                "given uploadId does not match that for the artifact",
            ));
        }
        match self.service_call(
            "object",
            &[("name", object_name(task_id, run_id, name).as_str())],
            json!({}),
        ) {
            Ok(_) => {}
            Err(e) if e.status() == 404 => {
                return Err(ApiError::new(
                    "InputError",
                    "Object storing artifact data does not exist",
                ))
            }
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "The Object service's object call failed: {}: {}",
                    e.code, e.message
                )))
            }
        }
        let key = (task_id.to_string(), run_id, name.to_string());
        self.mutate(|store| {
            let changed = match store.artifacts.get_mut(&key) {
                Some(a) => {
                    a.present = true;
                    // The uploadId is no longer relevant.
                    a.details = json!({});
                    true
                }
                None => false,
            };
            ((), changed)
        });
        Ok(Reply::no_content())
    }

    /// `getArtifact` and `getLatestArtifact`: a 303 to the data, following links.
    pub(super) fn get_artifact(
        &self,
        call: &Call<'_>,
        latest: bool,
        now: DateTime<Utc>,
    ) -> Result<Reply, ApiError> {
        let task_id = call.param("taskId");
        let mut name = call.param("name").to_string();
        let run_id = if latest {
            // Permission first, before a 404 for the task or run can leak anything.
            call.authorize(&params_of(&[("names", json!([name]))]))?;
            let store = self.lock();
            let task = store
                .tasks
                .get(task_id)
                .ok_or_else(|| ApiError::new("ResourceNotFound", "Task not found"))?;
            if task.runs.is_empty() {
                return Err(ApiError::new("ResourceNotFound", "Task doesn't have any runs"));
            }
            Some(task.runs.len() - 1)
        } else {
            call.param("runId").parse::<usize>().ok()
        };

        let mut names: Vec<String> = vec![];
        let artifact = loop {
            names.push(name.clone());
            call.authorize(&params_of(&[("names", json!(names))]))?;
            let artifact = run_id.and_then(|r| {
                self.lock()
                    .artifacts
                    .get(&(task_id.to_string(), r, name.clone()))
                    .cloned()
            });
            let Some(artifact) = artifact.filter(|a| a.present) else {
                return Err(ApiError::new("ResourceNotFound", "Artifact not found"));
            };
            if artifact.expires < now {
                return Err(ApiError::new("ResourceExpired", "Artifact expired"));
            }
            if artifact.storage_type != "link" {
                break artifact;
            }
            let target = artifact.details["artifact"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if names.contains(&target) {
                return Err(ApiError::new("InputError", "Artifact leads to a link cycle"));
            }
            name = target;
        };
        let run_id = run_id.unwrap_or_default();

        let storage_type = artifact.storage_type.clone();
        let header = ("x-taskcluster-artifact-storage-type", storage_type.clone());
        let url = match storage_type.as_str() {
            "object" => {
                let reply = self.service_call(
                    "startDownload",
                    &[("name", object_name(task_id, run_id, &name).as_str())],
                    json!({"acceptDownloadMethods": {"simple": true}}),
                );
                let body = match reply {
                    Ok(reply) => reply.json(),
                    Err(e) if e.status() == 404 => {
                        return Err(ApiError::new("ResourceNotFound", "Object does not exist."))
                    }
                    Err(e) => {
                        return Err(ApiError::internal(format!(
                            "The Object service's startDownload failed: {}: {}",
                            e.code, e.message
                        )))
                    }
                };
                if body["method"] != "simple" {
                    return Err(ApiError::new(
                        "ResourceNotFound",
                        "Object does not support simple downloads.",
                    ));
                }
                body["url"].as_str().unwrap_or_default().to_string()
            }
            "s3" => {
                let validity = chrono::Duration::from_std(GET_URL_VALIDITY).unwrap_or_default();
                self.storage
                    .get_url(self.root_url(), &s3_key(&artifact.details), now + validity)
            }
            "reference" => artifact.details["url"].as_str().unwrap_or_default().to_string(),
            "error" => {
                return Ok(Reply {
                    status: 424,
                    body: Body::Json(json!({
                        "reason": artifact.details["reason"],
                        "message": artifact.details["message"],
                    })),
                    headers: vec![header],
                    checked: false,
                })
            }
            other => {
                return Err(ApiError::internal(format!(
                    "Unknown artifact storageType: {other}"
                )))
            }
        };
        Ok(Reply {
            status: 303,
            body: Body::Json(json!({"storageType": storage_type, "url": url})),
            headers: vec![header, ("location", url)],
            checked: true,
        })
    }

    /// `listArtifacts`: `GET /task/<taskId>/runs/<runId>/artifacts`, paginated.
    pub(super) fn list_artifacts(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        let task_id = call.param("taskId");
        let run_param = call.param("runId");
        let store = self.lock();
        let task = store
            .tasks
            .get(task_id)
            .ok_or_else(|| ApiError::new("ResourceNotFound", "Task not found"))?;
        if task.runs.is_empty() {
            return Err(ApiError::new("ResourceNotFound", "Task doesn't have any runs"));
        }
        let Some(run_id) = run_param.parse::<usize>().ok().filter(|r| *r < task.runs.len()) else {
            return Err(ApiError::new(
                "ResourceNotFound",
                format!("Task with taskId: `{task_id}` has no run with runId: {run_param}"),
            ));
        };
        let page = match call.query_param("limit") {
            Some(l) => l.parse::<usize>().unwrap_or(MAX_PAGE).min(MAX_PAGE),
            None => MAX_PAGE,
        };
        let after = call.query_param("continuationToken").and_then(decode_token);
        let rows: Vec<(&String, &Artifact)> = store
            .artifacts
            .iter()
            .filter(|((t, r, _), a)| t == task_id && *r == run_id && a.present)
            .filter(|((t, r, n), _)| match &after {
                None => true,
                Some((at, ar, an)) => (t.as_str(), *r as i64, n.as_str()) > (at.as_str(), *ar, an.as_str()),
            })
            .map(|((_, _, n), a)| (n, a))
            .take(page + 1)
            .collect();
        let mut out = json!({
            "artifacts": rows.iter().take(page).map(|(n, a)| a.serialize(n)).collect::<Vec<_>>(),
        });
        if rows.len() > page && page > 0 {
            out["continuationToken"] = json!(continuation_token(task_id, run_id, rows[page - 1].0));
        }
        Ok(Reply::ok(out))
    }

    /// Every present artifact of a run, as `listArtifacts` pages them, for the Rust API.
    pub fn artifact_list(&self, task_id: &str, run_id: usize) -> Vec<Value> {
        self.lock()
            .artifacts
            .iter()
            .filter(|((t, r, _), a)| t == task_id && *r == run_id && a.present)
            .map(|((_, _, n), a)| a.serialize(n))
            .collect()
    }

    /// The bucket key holding an artifact's data (following links), if it has one.
    fn artifact_blob_key(&self, task_id: &str, run_id: usize, name: &str) -> Option<String> {
        let mut name = name.to_string();
        let mut seen = vec![];
        loop {
            let artifact = self
                .lock()
                .artifacts
                .get(&(task_id.to_string(), run_id, name.clone()))
                .cloned()?;
            match artifact.storage_type.as_str() {
                "s3" => return Some(s3_key(&artifact.details)),
                "object" => return Some(object_blob_key(&object_name(task_id, run_id, &name))),
                "link" => {
                    seen.push(name.clone());
                    name = artifact.details["artifact"].as_str()?.to_string();
                    if seen.contains(&name) {
                        return None;
                    }
                }
                _ => return None,
            }
        }
    }

    /// The stored data of an artifact (following links).
    pub fn artifact_blob(&self, task_id: &str, run_id: usize, name: &str) -> Option<Blob> {
        self.storage.blob(&self.artifact_blob_key(task_id, run_id, name)?)
    }

    /// How many times the data of artifact `name` of any run of `task_id` was downloaded: GETs of the
    /// URLs `getArtifact`, `getLatestArtifact` or the Object service redirect to, answered with the data.
    pub fn artifact_downloads(&self, task_id: &str, name: &str) -> usize {
        let runs = self.lock().tasks.get(task_id).map_or(0, |t| t.runs.len());
        let keys: std::collections::BTreeSet<String> = (0..runs)
            .filter_map(|r| self.artifact_blob_key(task_id, r, name))
            .collect();
        keys.iter().map(|k| self.storage.downloads(k)).sum()
    }

    /// The run [`Core::seed_artifact`] puts artifacts on: a new task's run 0, completed (the task is
    /// created on [`SEED_TASK_QUEUE`] if it does not exist); for an existing task, its latest run, claimed
    /// and completed first if it is pending (scheduled first if the task has no run yet). A run that is
    /// running or resolved stays as it is. Dependents of a completed task are scheduled, as by the Queue.
    fn seed_run(&self, task_id: &str) -> Result<usize, ApiError> {
        if !self.lock().tasks.contains_key(task_id) {
            let definition = super::task_definition(SEED_TASK_QUEUE, json!({}));
            self.internal_call("createTask", &[("taskId", task_id)], definition)?;
        }
        let now = now_ms();
        let taken_until = now + chrono::Duration::from_std(self.timing.claim_timeout).unwrap_or_default();
        self.mutate(|store| {
            let mut changed = false;
            if store.tasks.get(task_id).is_some_and(|t| t.runs.is_empty()) {
                changed |= store.schedule(task_id, now);
            }
            let Some(run_id) = store.tasks.get(task_id).and_then(|t| t.runs.len().checked_sub(1)) else {
                return (
                    Err(ApiError::internal(format!("task {task_id} has no run"))),
                    changed,
                );
            };
            if store.tasks[task_id].runs[run_id].state == RunState::Pending {
                let claim = RunEvent::Claim {
                    worker_group: SEED_WORKER.0.to_string(),
                    worker_id: SEED_WORKER.1.to_string(),
                    taken_until,
                };
                let complete = RunEvent::Resolve {
                    state: RunState::Completed,
                    reason: RunState::Completed.as_str().to_string(),
                };
                let done = store.apply_latest(task_id, run_id, claim, now).is_ok()
                    && store.apply_latest(task_id, run_id, complete, now).is_ok();
                if !done {
                    return (
                        Err(ApiError::internal(format!(
                            "run {run_id} of {task_id} could not be completed"
                        ))),
                        true,
                    );
                }
                store.schedule_ready_dependents(now);
                changed = true;
            }
            (Ok(run_id), changed)
        })
    }

    /// Give `task_id` a finished `object` artifact `name` holding what `data` yields (read to its end,
    /// chunk by chunk, onto disk), stored as a worker's upload would be: the Object service knows the
    /// object (with its SHA-256 and SHA-512), and `getArtifact` and `getLatestArtifact` redirect to a
    /// download URL the double serves. The run is chosen by `seed_run`; an artifact of the same name on
    /// it is replaced. It expires with the task. Returns the run id.
    pub fn seed_artifact(
        &self,
        task_id: &str,
        name: &str,
        data: impl std::io::Read,
        content_type: &str,
    ) -> Result<usize, ApiError> {
        check_param("taskId", task_id).map_err(|m| ApiError::new("InvalidRequestArguments", m))?;
        check_param("name", name).map_err(|m| ApiError::new("InvalidRequestArguments", m))?;
        let run_id = self.seed_run(task_id)?;
        let (project_id, expires) = {
            let store = self.lock();
            let task = &store.tasks[task_id];
            (
                task.project_id().to_string(),
                task.expires().unwrap_or_else(now_ms),
            )
        };
        let object = object_name(task_id, run_id, name);
        let blob = self
            .storage
            .store_from(&object_blob_key(&object), data, Some(content_type))
            .map_err(|e| ApiError::internal(format!("the queue double could not store {name}: {e}")))?;
        let hashes = [("sha256", blob.sha256), ("sha512", blob.sha512)]
            .into_iter()
            .filter_map(|(algo, hash)| Some((algo.to_string(), hash?)))
            .collect();
        self.objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .objects
            .insert(
                object,
                StoredObject {
                    project_id,
                    upload_id: None,
                    upload_expires: None,
                    expires,
                    hashes,
                },
            );
        let artifact = Artifact {
            storage_type: "object".into(),
            content_type: content_type.to_string(),
            details: json!({}),
            present: true,
            expires,
            content_length: Some(blob.len),
        };
        self.mutate(|store| {
            store
                .artifacts
                .insert((task_id.to_string(), run_id, name.to_string()), artifact);
            ((), true)
        });
        Ok(run_id)
    }

    /// An artifact with everything the double knows about it, for the Rust API.
    pub fn artifact_details(&self, task_id: &str, run_id: usize, name: &str) -> Option<Value> {
        let artifact = self
            .lock()
            .artifacts
            .get(&(task_id.to_string(), run_id, name.to_string()))
            .cloned()?;
        let mut out = artifact.serialize(name);
        out["present"] = json!(artifact.present);
        out["details"] = artifact.details.clone();
        match artifact.storage_type.as_str() {
            "reference" => out["url"] = artifact.details["url"].clone(),
            "link" => out["artifact"] = artifact.details["artifact"].clone(),
            "error" => {
                out["reason"] = artifact.details["reason"].clone();
                out["message"] = artifact.details["message"].clone();
            }
            "object" => out["objectName"] = json!(object_name(task_id, run_id, name)),
            _ => {}
        }
        if matches!(artifact.storage_type.as_str(), "s3" | "object") {
            let blob = self.artifact_blob(task_id, run_id, name);
            out["stored"] = json!(blob.is_some());
            out["contentEncoding"] = json!(blob.as_ref().and_then(|b| b.content_encoding.clone()));
            out["storedContentType"] = json!(blob.as_ref().and_then(|b| b.content_type.clone()));
            out["size"] = json!(blob.as_ref().map(|b| b.len));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(storage_type: &str, content_type: &str, details: Value) -> Artifact {
        Artifact {
            storage_type: storage_type.into(),
            content_type: content_type.into(),
            details,
            present: true,
            expires: DateTime::from_timestamp(2_000_000_000, 0).unwrap(),
            content_length: None,
        }
    }

    #[test]
    fn compatibility_follows_the_queue() {
        let later = DateTime::from_timestamp(2_000_000_100, 0).unwrap();
        let earlier = DateTime::from_timestamp(1_999_999_000, 0).unwrap();
        let reference = artifact("reference", "text/plain", json!({"url": "http://a"}));
        let same = reference.expires;
        assert!(calls_compatible(
            &reference,
            "reference",
            "text/plain",
            same,
            &json!({"url": "http://b"})
        ));
        assert!(calls_compatible(
            &reference,
            "link",
            "other/type",
            later,
            &json!({"artifact": "x"})
        ));
        assert!(!calls_compatible(
            &reference,
            "reference",
            "text/html",
            same,
            &json!({"url": "http://a"})
        ));
        assert!(!calls_compatible(
            &reference,
            "reference",
            "text/plain",
            earlier,
            &json!({"url": "http://a"})
        ));
        let error = artifact(
            "error",
            "application/binary",
            json!({"message": "m", "reason": "file-missing-on-worker"}),
        );
        assert!(!calls_compatible(
            &error,
            "error",
            "application/binary",
            same,
            &json!({"message": "n", "reason": "file-missing-on-worker"})
        ));
        assert!(!calls_compatible(
            &error,
            "reference",
            "application/binary",
            same,
            &json!({"url": "http://a"})
        ));
        let link = artifact("link", "application/binary", json!({"artifact": "x"}));
        assert!(!calls_compatible(
            &link,
            "reference",
            "application/binary",
            same,
            &json!({"url": "http://a"})
        ));
    }

    #[test]
    fn continuation_tokens_round_trip() {
        let t = continuation_token("abc", 3, "public/a b");
        assert_eq!(decode_token(&t), Some(("abc".into(), 3, "public/a b".into())));
        assert_eq!(decode_token("!@$%"), None);
        use base64::Engine;
        let odd = base64::engine::general_purpose::STANDARD.encode("[1, 2, 3]");
        assert_eq!(decode_token(&odd), None);
    }
}
