//! The Object service (`services/object/src/api.js` with its S3 backend, `backends/aws.js`, talking to an
//! S3 emulation): `createUpload`, `finishUpload`, `startDownload`, `object` (metadata) and `download`,
//! with the double's [`Storage`](super::storage::Storage) as the bucket.
//!
//! As the real service: the first `createUpload` of a name fixes its `uploadId`, `projectId` and
//! `expires`; calling it again with the same `uploadId` is allowed (and renews the `putUrl`), another
//! `uploadId` is a 409; `dataInline` is preferred over `putUrl` when both are proposed; the `putUrl`
//! carries the headers to send (`Content-Type`, `Content-Length`, `Content-Encoding: identity`);
//! `finishUpload` is idempotent once finished (hashes may then not change or be added); only finished
//! objects can be read; only the `simple` download method exists.
//!
//! Unlike the real service, `finishUpload` checks the data: it answers 400 when nothing was uploaded,
//! or when a `sha256` or `sha512` given in `hashes` is not that of the uploaded bytes. (The real one
//! trusts the uploader; a wrong hash only shows when a downloader verifies it.)

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::hawk::lenient_base64;
use super::queue::{params_of, parse_time, ApiError, Body, Call, Core, Reply};
use super::state::fmt_time;
use super::storage::{GET_URL_VALIDITY, PUT_URL_VALIDITY};

/// Where the Object service lives under the root URL.
pub const OBJECT_PREFIX: &str = "/api/object/v1";

/// How long an unfinished upload lives (`uploadExpires`).
const UPLOAD_VALIDITY_HOURS: i64 = 24;

/// One object, as an `objects` row with its hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// Fixed by the first createUpload.
    pub project_id: String,
    /// Set until finishUpload, then `None`.
    pub upload_id: Option<String>,
    /// Unfinished uploads expire a day after createUpload.
    pub upload_expires: Option<DateTime<Utc>>,
    /// When the object expires.
    pub expires: DateTime<Utc>,
    /// `algorithm → hex hash`.
    pub hashes: BTreeMap<String, String>,
}

/// All objects by name.
#[derive(Debug, Default)]
pub struct Objects {
    /// Objects by name.
    pub objects: HashMap<String, StoredObject>,
}

/// The bucket key of an object's data.
pub fn blob_key(name: &str) -> String {
    format!("object/{name}")
}

fn not_found(name: &str) -> ApiError {
    ApiError::new("ResourceNotFound", format!("Object \"{name}\" not found"))
}

fn hash_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

impl Core {
    fn objects(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A finished object.
    fn finished_object(&self, name: &str) -> Result<StoredObject, ApiError> {
        self.objects()
            .objects
            .get(name)
            .filter(|o| o.upload_id.is_none())
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// `createUpload`: `PUT /upload/<name>`.
    pub(super) fn create_upload(&self, call: &Call<'_>, now: DateTime<Utc>) -> Result<Reply, ApiError> {
        let name = call.param("name").to_string();
        let body = &call.body;
        let project_id = body["projectId"].as_str().unwrap_or_default().to_string();
        let upload_id = body["uploadId"].as_str().unwrap_or_default().to_string();
        call.authorize(&params_of(&[
            ("projectId", json!(project_id)),
            ("name", json!(name)),
        ]))?;
        let expires =
            parse_time(&body["expires"]).ok_or_else(|| ApiError::new("InputError", "Invalid `expires`"))?;
        let given_hashes: Map<String, Value> = body["hashes"].as_object().cloned().unwrap_or_default();
        {
            let mut objects = self.objects();
            // create_object_for_upload: idempotent for the same uploadId, a unique violation otherwise.
            let object = objects
                .objects
                .entry(name.clone())
                .or_insert_with(|| StoredObject {
                    project_id: project_id.clone(),
                    upload_id: Some(upload_id.clone()),
                    upload_expires: Some(now + chrono::Duration::hours(UPLOAD_VALIDITY_HOURS)),
                    expires,
                    hashes: BTreeMap::new(),
                });
            if object.upload_id.as_deref() != Some(upload_id.as_str()) {
                return Err(ApiError::new("RequestConflict", "Object already exists"));
            }
            // add_object_hashes
            if given_hashes
                .iter()
                .any(|(algo, hash)| object.hashes.get(algo).is_some_and(|h| *h != hash_text(hash)))
            {
                return Err(ApiError::new(
                    "RequestConflict",
                    "Content hash already exists with a different value",
                ));
            }
            for (algo, hash) in &given_hashes {
                object.hashes.insert(algo.clone(), hash_text(hash));
            }
        }

        // The S3 backend's preference: dataInline, then putUrl.
        let proposed = &body["proposedUploadMethods"];
        let upload_method = if let Some(inline) = proposed.get("dataInline") {
            let data = lenient_base64(inline["objectData"].as_str().unwrap_or_default())
                .ok_or_else(|| ApiError::new("InputError", "Invalid base64 objectData"))?;
            self.storage
                .store(&blob_key(&name), &data, inline["contentType"].as_str())
                .map_err(|e| ApiError::internal(format!("the queue double could not store the data: {e}")))?;
            json!({"dataInline": true})
        } else if let Some(put) = proposed.get("putUrl") {
            let content_type = put["contentType"].as_str().unwrap_or_default();
            let length = put["contentLength"].as_i64().unwrap_or_default();
            let expires_at = now + chrono::Duration::minutes(45);
            let validity = chrono::Duration::from_std(PUT_URL_VALIDITY).unwrap_or_default();
            let url = self.storage.put_url(
                self.root_url(),
                &blob_key(&name),
                content_type,
                true,
                now + validity,
            );
            json!({"putUrl": {
                "url": url,
                "expires": fmt_time(expires_at),
                "headers": {
                    "Content-Type": content_type,
                    "Content-Length": length.to_string(),
                    "Content-Encoding": "identity",
                },
            }})
        } else {
            json!({})
        };
        Ok(Reply::ok(json!({
            "projectId": project_id,
            "uploadId": upload_id,
            "expires": body["expires"],
            "uploadMethod": upload_method,
        })))
    }

    /// `finishUpload`: `POST /finish-upload/<name>`.
    pub(super) fn finish_upload(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        let name = call.param("name").to_string();
        let body = &call.body;
        let project_id = body["projectId"].as_str().unwrap_or_default();
        let upload_id = body["uploadId"].as_str().unwrap_or_default();
        call.authorize(&params_of(&[
            ("projectId", json!(project_id)),
            ("name", json!(name)),
        ]))?;
        let given: Map<String, Value> = body["hashes"].as_object().cloned().unwrap_or_default();
        let conflict = |message: String| Err(ApiError::new("RequestConflict", message));

        let object = self
            .objects()
            .objects
            .get(&name)
            .cloned()
            .ok_or_else(|| not_found(&name))?;
        if object.project_id != project_id {
            return Err(ApiError::new(
                "InputError",
                format!("Object \"{name}\" does not have projectId {project_id}"),
            ));
        }
        if object.upload_id.is_none() {
            // Finished: idempotent as long as the hashes agree and add nothing.
            for (algo, hash) in &given {
                match object.hashes.get(algo) {
                    None => {
                        return conflict(format!(
                            "Object \"{name}\" is already finished, but without hash algorithm {algo}"
                        ))
                    }
                    Some(h) if *h != hash_text(hash) => {
                        return conflict(format!(
                            "Object \"{name}\" is already finished, but with a different hash for algorithm \
                             {algo}"
                        ))
                    }
                    Some(_) => {}
                }
            }
            return Ok(Reply::ok(json!({})));
        }
        if object.upload_id.as_deref() != Some(upload_id) {
            return conflict(format!("Object \"{name}\" does not have uploadId {upload_id}"));
        }
        if given
            .iter()
            .any(|(algo, hash)| object.hashes.get(algo).is_some_and(|h| *h != hash_text(hash)))
        {
            return conflict("Content hash already exists with a different value".into());
        }

        // The double's own check of the data (see the module documentation).
        let blob = self.storage.blob(&blob_key(&name)).ok_or_else(|| {
            ApiError::new(
                "InputError",
                format!(
                    "Object \"{name}\" has no data: nothing was uploaded for it (neither dataInline nor a PUT \
                     to its putUrl that completed). The queue double refuses to finish it."
                ),
            )
        })?;
        for (algo, computed) in [("sha256", &blob.sha256), ("sha512", &blob.sha512)] {
            let (Some(given), Some(computed)) = (given.get(algo).map(hash_text), computed) else {
                continue;
            };
            if given != *computed {
                return Err(ApiError::new(
                    "InputError",
                    format!(
                        "Object \"{name}\": the {algo} given to finishUpload, {given}, is not that of the {} \
                         bytes uploaded, {computed}. The queue double checks the hashes against the data.",
                        blob.len
                    ),
                ));
            }
        }

        let mut objects = self.objects();
        let Some(object) = objects.objects.get_mut(&name) else {
            return Err(not_found(&name));
        };
        if object.upload_id.as_deref() != Some(upload_id) {
            return conflict(format!("Object \"{name}\" does not have uploadId {upload_id}"));
        }
        for (algo, hash) in &given {
            object.hashes.insert(algo.clone(), hash_text(hash));
        }
        object.upload_id = None;
        object.upload_expires = None;
        Ok(Reply::ok(json!({})))
    }

    /// A `simple` download URL for a finished object.
    fn simple_url(&self, name: &str, now: DateTime<Utc>) -> String {
        let validity = chrono::Duration::from_std(GET_URL_VALIDITY).unwrap_or_default();
        self.storage
            .get_url(self.root_url(), &blob_key(name), now + validity)
    }

    /// `startDownload`: `PUT /start-download/<name>`. Only `simple` is offered, as by the S3 backend.
    pub(super) fn start_download(&self, call: &Call<'_>, now: DateTime<Utc>) -> Result<Reply, ApiError> {
        let name = call.param("name");
        self.finished_object(name)?;
        let accepted = call.body["acceptDownloadMethods"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if !accepted.contains_key("simple") {
            return Err(ApiError::new(
                "NoMatchingMethod",
                "Object supports methods simple",
            ));
        }
        Ok(Reply::ok(
            json!({"method": "simple", "url": self.simple_url(name, now)}),
        ))
    }

    /// `object`: `GET /metadata/<name>`.
    pub(super) fn object_metadata(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        let object = self.finished_object(call.param("name"))?;
        Ok(Reply::ok(json!({
            "projectId": object.project_id,
            "expires": fmt_time(object.expires),
            "hashes": object.hashes,
        })))
    }

    /// `download`: `GET /download/<name>`, a 303 to the data.
    pub(super) fn download(&self, call: &Call<'_>, now: DateTime<Utc>) -> Result<Reply, ApiError> {
        let name = call.param("name");
        self.finished_object(name)?;
        let url = self.simple_url(name, now);
        Ok(Reply {
            status: 303,
            body: Body::Text(format!("See Other. Redirecting to {url}")),
            headers: vec![("location", url)],
            checked: false,
        })
    }
}
