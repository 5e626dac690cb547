//! The Queue's, the Object service's and the Index service's API references and JSON schemas, read from
//! `shared/taskcluster`, and validation against them.
//!
//! The real services validate every request body against its input schema (Ajv, draft-06, formats on,
//! `useDefaults`) and every reply against its output schema; this module does the same with the
//! `jsonschema` crate forced to draft 6.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::{Map, Value};

/// The made-up origin the schema ids (`/schemas/queue/v1/task.json#`) are resolved against.
const BASE: &str = "https://taskcluster.invalid";

/// Failures loading the reference material.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The `shared/` folder is not where it should be.
    #[error(
        "the shared folder with the Taskcluster schemas is missing at {0} (expected beside the checkout, \
         as ../shared)"
    )]
    SharedMissing(PathBuf),
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    /// A file is not JSON.
    #[error("{path} is not JSON: {error}")]
    Json { path: PathBuf, error: serde_json::Error },
    /// api.json lacks something the double needs.
    #[error("api.json: {0}")]
    Reference(String),
    /// A schema does not compile.
    #[error("schema {id} does not compile: {error}")]
    Compile { id: String, error: String },
}

/// The `shared/` folder: `../shared` beside the checkout.
pub fn shared_dir() -> Result<PathBuf, SchemaError> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    let marker = dir.join("taskcluster/references/queue/v1/api.json");
    if !marker.is_file() {
        return Err(SchemaError::SharedMissing(dir));
    }
    Ok(dir)
}

/// The path of the Queue's api.json.
pub fn api_json_path() -> Result<PathBuf, SchemaError> {
    Ok(shared_dir()?.join("taskcluster/references/queue/v1/api.json"))
}

/// The path of the Object service's api.json.
pub fn object_api_json_path() -> Result<PathBuf, SchemaError> {
    Ok(shared_dir()?.join("taskcluster/references/object/v1/api.json"))
}

/// The path of the Index service's api.json.
pub fn index_api_json_path() -> Result<PathBuf, SchemaError> {
    Ok(shared_dir()?.join("taskcluster/references/index/v1/api.json"))
}

fn read_json(path: &Path) -> Result<Value, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|error| SchemaError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_str(&text).map_err(|error| SchemaError::Json {
        path: path.to_path_buf(),
        error,
    })
}

/// The Queue, in [`ApiEntry::service`].
pub const QUEUE: &str = "queue";
/// The Object service, in [`ApiEntry::service`].
pub const OBJECT: &str = "object";
/// The Index service, in [`ApiEntry::service`].
pub const INDEX: &str = "index";

/// One entry of api.json.
#[derive(Debug, Clone)]
pub struct ApiEntry {
    /// [`QUEUE`], [`OBJECT`] or [`INDEX`].
    pub service: &'static str,
    /// The method name, e.g. `claimWork`.
    pub name: String,
    /// Lower-case HTTP method.
    pub method: String,
    /// The route with `<param>` placeholders.
    pub route: String,
    /// Route parameters in order.
    pub args: Vec<String>,
    /// The query-string parameters it accepts.
    pub query: Vec<String>,
    /// The scope expression template, if any.
    pub scopes: Option<Value>,
    /// The input schema id, e.g. `v1/claim-work-request.json#` (the Queue's) or
    /// `/schemas/object/v1/create-upload-request.json#` (the Object and Index services', made absolute).
    pub input: Option<String>,
    /// The output schema id.
    pub output: Option<String>,
}

/// Parse the Queue's api.json, then the Object service's and the Index service's.
pub fn load_api_entries() -> Result<Vec<ApiEntry>, SchemaError> {
    let mut entries = parse_api(&api_json_path()?, QUEUE)?;
    entries.extend(parse_api(&object_api_json_path()?, OBJECT)?);
    entries.extend(parse_api(&index_api_json_path()?, INDEX)?);
    Ok(entries)
}

/// The entries of one api.json. Schema ids other than the Queue's are made absolute
/// (`/schemas/<service>/v1/...`), as [`schema_path`] resolves relative ids against the Queue.
fn parse_api(path: &Path, service: &'static str) -> Result<Vec<ApiEntry>, SchemaError> {
    let api = read_json(path)?;
    let entries = api["entries"]
        .as_array()
        .ok_or_else(|| SchemaError::Reference(format!("{service}: no entries array")))?;
    let text = |e: &Value, key: &str| e[key].as_str().map(str::to_string);
    let strings = |e: &Value, key: &str| -> Vec<String> {
        e[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let schema_id = |e: &Value, key: &str| {
        text(e, key).map(|id| {
            if service == QUEUE || id.starts_with('/') {
                id
            } else {
                format!("/schemas/{service}/{id}")
            }
        })
    };
    entries
        .iter()
        .filter(|e| e["type"] == "function")
        .map(|e| {
            let name = text(e, "name")
                .ok_or_else(|| SchemaError::Reference(format!("{service}: an entry has no name")))?;
            Ok(ApiEntry {
                service,
                method: text(e, "method")
                    .ok_or_else(|| SchemaError::Reference(format!("{service}: {name} has no method")))?,
                route: text(e, "route")
                    .ok_or_else(|| SchemaError::Reference(format!("{service}: {name} has no route")))?,
                args: strings(e, "args"),
                query: strings(e, "query"),
                scopes: e.get("scopes").cloned(),
                input: schema_id(e, "input"),
                output: schema_id(e, "output"),
                name,
            })
        })
        .collect()
}

/// Maps `https://taskcluster.invalid/schemas/...` to files under `shared/taskcluster/schemas`.
struct SharedRetriever {
    root: PathBuf,
}

impl Retrieve for SharedRetriever {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let text = uri.as_str();
        let rest = text
            .strip_prefix(BASE)
            .ok_or_else(|| format!("the queue double only resolves schemas under {BASE}, not {text}"))?;
        let path = self
            .root
            .join(rest.split('#').next().unwrap_or(rest).trim_start_matches('/'));
        let mut value = read_json(&path)?;
        strip_meta(&mut value);
        Ok(value)
    }
}

/// The `$schema` of Taskcluster's schemas is a relative URI no validator knows; draft 6 is forced instead.
fn strip_meta(schema: &mut Value) {
    if let Some(map) = schema.as_object_mut() {
        map.remove("$schema");
    }
}

/// The schema file for an id such as `v1/task.json#` (relative to `/schemas/queue/`) or
/// `/schemas/queue/v1/task.json#`.
fn schema_path(id: &str) -> String {
    let id = id.split('#').next().unwrap_or(id);
    if id.starts_with('/') {
        id.to_string()
    } else {
        format!("/schemas/queue/{id}")
    }
}

/// Compiled validators for the Queue's schemas, plus raw schemas for filling in defaults.
pub struct Schemas {
    root: PathBuf,
    validators: Mutex<HashMap<String, std::sync::Arc<Validator>>>,
    raw: Mutex<HashMap<String, Value>>,
}

/// A body that does not match its schema.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// One line per error, `<path>: <what is wrong>`.
    pub errors: Vec<String>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.errors {
            writeln!(f, "  * {e}")?;
        }
        Ok(())
    }
}

impl Schemas {
    /// Schemas read from `shared/taskcluster/schemas`.
    pub fn load() -> Result<Schemas, SchemaError> {
        Ok(Schemas {
            root: shared_dir()?.join("taskcluster"),
            validators: Mutex::new(HashMap::new()),
            raw: Mutex::new(HashMap::new()),
        })
    }

    fn raw_file(&self, path: &str) -> Result<Value, SchemaError> {
        let mut raw = self.raw.lock().expect("schema cache lock");
        if let Some(v) = raw.get(path) {
            return Ok(v.clone());
        }
        let mut value = read_json(&self.root.join(path.trim_start_matches('/')))?;
        strip_meta(&mut value);
        raw.insert(path.to_string(), value.clone());
        Ok(value)
    }

    /// The compiled validator for a schema id (`v1/task.json#` or `/schemas/queue/v1/task.json#`).
    pub fn validator(&self, id: &str) -> Result<std::sync::Arc<Validator>, SchemaError> {
        let path = schema_path(id);
        if let Some(v) = self.validators.lock().expect("validator cache lock").get(&path) {
            return Ok(v.clone());
        }
        let schema = self.raw_file(&path)?;
        let validator = jsonschema::draft6::options()
            .should_validate_formats(true)
            .with_base_uri(format!("{BASE}{path}"))
            .with_retriever(SharedRetriever {
                root: self.root.clone(),
            })
            .build(&schema)
            .map_err(|error| SchemaError::Compile {
                id: id.to_string(),
                error: error.to_string(),
            })?;
        let validator = std::sync::Arc::new(validator);
        self.validators
            .lock()
            .expect("validator cache lock")
            .insert(path, validator.clone());
        Ok(validator)
    }

    /// Check `instance` against the schema `id`.
    pub fn validate(&self, id: &str, instance: &Value) -> Result<Result<(), Invalid>, SchemaError> {
        let validator = self.validator(id)?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| {
                let path = e.instance_path().to_string();
                format!("{}: {e}", if path.is_empty() { "/" } else { &path })
            })
            .collect();
        Ok(if errors.is_empty() {
            Ok(())
        } else {
            Err(Invalid { errors })
        })
    }

    /// Fill in `default`s the way Ajv's `useDefaults` does: a missing property whose schema (in
    /// `properties`) carries a `default` gets a copy of it, recursively through present objects.
    pub fn apply_defaults(&self, id: &str, instance: &mut Value) -> Result<(), SchemaError> {
        let path = schema_path(id);
        let schema = self.raw_file(&path)?;
        self.defaults_in(&path, &schema, instance, 0)
    }

    fn resolve_ref(&self, file: &str, reference: &str) -> Result<(String, Value), SchemaError> {
        let (target, pointer) = reference.split_once('#').unwrap_or((reference, ""));
        let target_file = if target.is_empty() {
            file.to_string()
        } else if target.starts_with('/') {
            target.to_string()
        } else {
            let dir = file.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            format!("{dir}/{target}")
        };
        let doc = self.raw_file(&target_file)?;
        let value = if pointer.is_empty() {
            doc
        } else {
            doc.pointer(pointer).cloned().ok_or_else(|| {
                SchemaError::Reference(format!("{reference} (from {file}) points at nothing"))
            })?
        };
        Ok((target_file, value))
    }

    fn defaults_in(
        &self,
        file: &str,
        schema: &Value,
        instance: &mut Value,
        depth: usize,
    ) -> Result<(), SchemaError> {
        if depth > 16 {
            return Ok(());
        }
        let (file, schema) = match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => self.resolve_ref(file, r)?,
            None => (file.to_string(), schema.clone()),
        };
        let (Some(props), Some(obj)) = (
            schema.get("properties").and_then(Value::as_object),
            instance.as_object_mut(),
        ) else {
            return Ok(());
        };
        for (name, sub) in props {
            if !obj.contains_key(name) {
                if let Some(default) = sub.get("default") {
                    obj.insert(name.clone(), default.clone());
                }
                continue;
            }
            if let Some(child) = obj.get_mut(name) {
                if child.is_object() {
                    self.defaults_in(&file, sub, child, depth + 1)?;
                }
            }
        }
        Ok(())
    }
}

/// A JSON object from pairs, for building replies.
pub fn object(pairs: Vec<(&str, Value)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Map<_, _>>(),
    )
}
