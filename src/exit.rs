//! Exit statuses of `docker-worker run`: one per resolution, so scripts can tell them apart.

use std::process::ExitCode;

use docker_worker_actors::lifecycle::{ExceptionReason, Resolution};

/// The task completed.
pub const COMPLETED: u8 = 0;
/// The task failed (its own exit status, a timeout, an image that does not exist).
pub const FAILED: u8 = 1;
/// The command line or configuration is wrong (EX_USAGE).
pub const USAGE: u8 = 64;
/// The payload is malformed (EX_DATAERR).
pub const MALFORMED_PAYLOAD: u8 = 65;
/// Something the task needs could not be reached: the Docker daemon, a registry (EX_UNAVAILABLE).
pub const RESOURCE_UNAVAILABLE: u8 = 69;
/// docker-worker itself failed (EX_SOFTWARE).
pub const INTERNAL_ERROR: u8 = 70;
/// The task exited with a status listed in `onExitStatus.retry` (EX_TEMPFAIL).
pub const INTERMITTENT_TASK: u8 = 75;
/// Stopped by SIGINT (Ctrl-C): worker-shutdown.
pub const INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM: worker-shutdown.
pub const TERMINATED: u8 = 143;

/// The exit status for a resolution; `signal` says which signal stopped a worker-shutdown run.
pub fn for_resolution(resolution: Resolution, signal: Option<u8>) -> ExitCode {
    ExitCode::from(match resolution {
        Resolution::Completed => COMPLETED,
        Resolution::Failed => FAILED,
        Resolution::Exception(ExceptionReason::MalformedPayload) => MALFORMED_PAYLOAD,
        Resolution::Exception(ExceptionReason::ResourceUnavailable) => RESOURCE_UNAVAILABLE,
        Resolution::Exception(ExceptionReason::InternalError) => INTERNAL_ERROR,
        Resolution::Exception(ExceptionReason::IntermittentTask) => INTERMITTENT_TASK,
        Resolution::Exception(ExceptionReason::WorkerShutdown) | Resolution::Canceled => {
            signal.unwrap_or(TERMINATED)
        }
    })
}
