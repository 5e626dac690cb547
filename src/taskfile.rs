//! Reading a task file: YAML or JSON, a bare payload or a whole task definition.

use std::path::Path;
use std::process::ExitCode;

use docker_worker_actors::payload::{parse_payload, parse_task_payload, PayloadErrors};
use docker_worker_actors::task::TaskFile;

use crate::exit;

/// The file could not be read as a task.
#[derive(Debug, thiserror::Error)]
pub enum TaskFileError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: not valid YAML or JSON: {error}")]
    Parse { path: String, error: String },
    #[error("{path}: {error}")]
    Shape {
        path: String,
        error: docker_worker_actors::task::TaskFileError,
    },
}

/// Read and parse a task file.
pub fn read(path: &Path) -> Result<TaskFile, TaskFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| TaskFileError::Read {
        path: shown.clone(),
        error,
    })?;
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let value: serde_json::Value = if is_json {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())
    }
    .map_err(|error| TaskFileError::Parse {
        path: shown.clone(),
        error,
    })?;
    TaskFile::from_value(value).map_err(|error| TaskFileError::Shape { path: shown, error })
}

/// Check the payload as the worker will.
pub fn check(file: &TaskFile) -> Result<(), PayloadErrors> {
    match file.expires {
        Some(expires) => parse_task_payload(&file.payload, expires).map(drop),
        None => parse_payload(&file.payload).map(drop),
    }
}

/// Print every payload problem to stderr.
pub fn report(path: &Path, errors: &PayloadErrors) {
    eprintln!(
        "{}: the payload is invalid ({} problem(s)):",
        path.display(),
        errors.0.len()
    );
    for e in &errors.0 {
        eprintln!("  {e}");
    }
}

/// `docker-worker validate`.
pub fn validate_main(path: &Path) -> ExitCode {
    let file = match read(path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("docker-worker: {e}");
            return ExitCode::from(exit::MALFORMED_PAYLOAD);
        }
    };
    match check(&file) {
        Ok(()) => {
            println!("{}: the payload is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report(path, &errors);
            ExitCode::from(exit::MALFORMED_PAYLOAD)
        }
    }
}
