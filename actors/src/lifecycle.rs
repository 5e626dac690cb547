//! A task's lifecycle, written once: its states, the events that move it, and how it resolves.

use std::fmt;

/// The `reasonResolved` values a worker may send with `reportException`, from the Queue's enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExceptionReason {
    /// The payload does not match the schema, or asks for something it may not have.
    MalformedPayload,
    /// The worker is shutting down.
    WorkerShutdown,
    /// Something the task needs (a registry, the Docker daemon) cannot be reached.
    ResourceUnavailable,
    /// The worker itself failed.
    InternalError,
    /// The task exited with a status listed in `onExitStatus.retry`.
    IntermittentTask,
}

impl ExceptionReason {
    /// The wire name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionReason::MalformedPayload => "malformed-payload",
            ExceptionReason::WorkerShutdown => "worker-shutdown",
            ExceptionReason::ResourceUnavailable => "resource-unavailable",
            ExceptionReason::InternalError => "internal-error",
            ExceptionReason::IntermittentTask => "intermittent-task",
        }
    }
}

impl fmt::Display for ExceptionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ends, as the Queue would record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `reportCompleted`.
    Completed,
    /// `reportFailed`.
    Failed,
    /// `reportException` with a reason.
    Exception(ExceptionReason),
    /// The queue resolved the run already (canceled, deadline exceeded, claim lost): report nothing.
    Canceled,
}

impl Resolution {
    /// The run state the Queue would show (`completed`, `failed`, `exception`), or `canceled`.
    pub fn state(self) -> &'static str {
        match self {
            Resolution::Completed => "completed",
            Resolution::Failed => "failed",
            Resolution::Exception(_) => "exception",
            Resolution::Canceled => "canceled",
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolution::Exception(reason) => write!(f, "exception/{reason}"),
            other => f.write_str(other.state()),
        }
    }
}

/// Why a running task is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The worker is shutting down (SIGTERM, Ctrl-C).
    WorkerShutdown,
    /// The queue says the run is over (canceled, deadline exceeded).
    Canceled,
}

/// The states of one task run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Claimed; the payload is being checked.
    Validating,
    /// The image is being pulled or found.
    PreparingImage,
    /// The container is being created and started.
    Starting,
    /// The container runs.
    Running,
    /// The container exited on its own; artifacts are being collected. The exit status gave this resolution.
    Collecting(Resolution),
    /// Stopped early (timeout, shutdown, cancel, error) and winding down; `Resolution` is fixed.
    Aborting(Resolution),
    /// Finished with this resolution.
    Resolved(Resolution),
}

/// What happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// The payload is valid and this worker can run it.
    PayloadAccepted,
    /// The payload is invalid.
    PayloadRejected,
    /// The payload is valid, but asks for something that fails the task (unsupported feature, missing scope).
    TaskRefused,
    /// The image is ready.
    ImageReady,
    /// The image could not be had; the resolution says whose fault that is.
    ImageFailed(Resolution),
    /// The container runs.
    ContainerStarted,
    /// The container could not be created or started because of the task (bad command).
    ContainerStartFailed,
    /// The container exited by itself with this status.
    ContainerExited(i64),
    /// `maxRunTime` passed.
    TimedOut,
    /// Someone outside stopped the task.
    Stopped(StopReason),
    /// The worker failed (Docker daemon error, panic).
    WorkerFault,
    /// Artifacts are stored; `ok` is false when an upload failed.
    ArtifactsDone {
        /// Whether every artifact was stored.
        ok: bool,
    },
    /// An aborted run has wound down (log written, container gone).
    Finished,
}

/// An event that is not legal in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} is not legal in state {state:?}")]
pub struct IllegalTransition {
    /// The state the task was in.
    pub state: TaskState,
    /// The event that arrived.
    pub event: TaskEvent,
}

/// What the task does on `ContainerExited` when it was not stopped from outside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitPolicy {
    /// Exit statuses that resolve as `exception/intermittent-task`.
    pub retry: Vec<i64>,
}

impl TaskState {
    /// The one transition function. Stops from outside win over anything that has not resolved yet,
    /// and once a task aborts, nothing can turn it into a success.
    pub fn on(self, event: TaskEvent, policy: &ExitPolicy) -> Result<TaskState, IllegalTransition> {
        use TaskEvent as E;
        use TaskState as S;
        let illegal = IllegalTransition { state: self, event };
        let stop = |reason: StopReason| match reason {
            StopReason::WorkerShutdown => Resolution::Exception(ExceptionReason::WorkerShutdown),
            StopReason::Canceled => Resolution::Canceled,
        };
        let next = match (self, event) {
            (S::Resolved(_), _) => return Err(illegal),
            // A worker fault while aborting keeps the abort's resolution: the reason it stopped is the news.
            (S::Aborting(r), E::WorkerFault) => S::Aborting(r),
            (S::Aborting(_), E::Stopped(_) | E::TimedOut | E::ContainerExited(_)) => self,
            (S::Aborting(r), E::Finished) => S::Resolved(r),
            (_, E::Stopped(reason)) => S::Aborting(stop(reason)),
            (_, E::WorkerFault) => S::Aborting(Resolution::Exception(ExceptionReason::InternalError)),
            (S::Validating, E::PayloadAccepted) => S::PreparingImage,
            (S::Validating, E::PayloadRejected) => {
                S::Aborting(Resolution::Exception(ExceptionReason::MalformedPayload))
            }
            (S::Validating | S::PreparingImage, E::TaskRefused) => S::Aborting(Resolution::Failed),
            (S::PreparingImage, E::ImageReady) => S::Starting,
            (S::PreparingImage, E::ImageFailed(r)) => S::Aborting(r),
            (S::Starting, E::ContainerStarted) => S::Running,
            (S::Starting, E::ContainerStartFailed) => S::Aborting(Resolution::Failed),
            (S::Running, E::TimedOut) => S::Aborting(Resolution::Failed),
            // Artifacts are collected whatever the exit status: a failed task's outputs are what its author needs.
            (S::Running, E::ContainerExited(code)) => S::Collecting(match code {
                0 => Resolution::Completed,
                code if policy.retry.contains(&code) => {
                    Resolution::Exception(ExceptionReason::IntermittentTask)
                }
                _ => Resolution::Failed,
            }),
            (S::Collecting(r), E::ArtifactsDone { ok: true }) => S::Resolved(r),
            (S::Collecting(Resolution::Completed), E::ArtifactsDone { ok: false }) => {
                S::Resolved(Resolution::Failed)
            }
            (S::Collecting(r), E::ArtifactsDone { ok: false }) => S::Resolved(r),
            _ => return Err(illegal),
        };
        Ok(next)
    }

    /// The resolution, once one is fixed.
    pub fn resolution(self) -> Option<Resolution> {
        match self {
            TaskState::Collecting(r) | TaskState::Aborting(r) | TaskState::Resolved(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the run was stopped early and must skip the container's remaining steps.
    pub fn is_aborting(self) -> bool {
        matches!(self, TaskState::Aborting(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[TaskEvent]) -> TaskState {
        let policy = ExitPolicy { retry: vec![36] };
        events
            .iter()
            .try_fold(TaskState::Validating, |s, e| s.on(*e, &policy))
            .expect("legal transitions")
    }

    const TO_RUNNING: [TaskEvent; 3] = [
        TaskEvent::PayloadAccepted,
        TaskEvent::ImageReady,
        TaskEvent::ContainerStarted,
    ];

    #[test]
    fn exit_zero_with_artifacts_completes() {
        let mut events = TO_RUNNING.to_vec();
        events.extend([
            TaskEvent::ContainerExited(0),
            TaskEvent::ArtifactsDone { ok: true },
        ]);
        assert_eq!(run(&events), TaskState::Resolved(Resolution::Completed));
    }

    #[test]
    fn artifact_failure_fails_a_successful_run() {
        let mut events = TO_RUNNING.to_vec();
        events.extend([
            TaskEvent::ContainerExited(0),
            TaskEvent::ArtifactsDone { ok: false },
        ]);
        assert_eq!(run(&events), TaskState::Resolved(Resolution::Failed));
    }

    #[test]
    fn exit_codes_map_to_failed_and_retry() {
        let mut failed = TO_RUNNING.to_vec();
        failed.extend([
            TaskEvent::ContainerExited(5),
            TaskEvent::ArtifactsDone { ok: true },
        ]);
        assert_eq!(run(&failed), TaskState::Resolved(Resolution::Failed));
        let mut retry = TO_RUNNING.to_vec();
        retry.extend([
            TaskEvent::ContainerExited(36),
            TaskEvent::ArtifactsDone { ok: false },
        ]);
        assert_eq!(
            run(&retry).resolution(),
            Some(Resolution::Exception(ExceptionReason::IntermittentTask))
        );
    }

    #[test]
    fn a_stopped_task_can_not_complete() {
        let mut events = TO_RUNNING.to_vec();
        events.extend([
            TaskEvent::Stopped(StopReason::Canceled),
            TaskEvent::ContainerExited(0),
            TaskEvent::Finished,
        ]);
        assert_eq!(run(&events), TaskState::Resolved(Resolution::Canceled));
    }

    #[test]
    fn timeout_fails_and_later_shutdown_does_not_change_it() {
        let mut events = TO_RUNNING.to_vec();
        events.extend([
            TaskEvent::TimedOut,
            TaskEvent::Stopped(StopReason::WorkerShutdown),
        ]);
        assert_eq!(run(&events).resolution(), Some(Resolution::Failed));
    }

    #[test]
    fn shutdown_during_pull_is_worker_shutdown() {
        let state = run(&[
            TaskEvent::PayloadAccepted,
            TaskEvent::Stopped(StopReason::WorkerShutdown),
        ]);
        assert_eq!(
            state.resolution(),
            Some(Resolution::Exception(ExceptionReason::WorkerShutdown))
        );
    }

    #[test]
    fn shutdown_while_collecting_wins() {
        let mut events = TO_RUNNING.to_vec();
        events.extend([
            TaskEvent::ContainerExited(0),
            TaskEvent::Stopped(StopReason::WorkerShutdown),
            TaskEvent::Finished,
        ]);
        assert_eq!(
            run(&events),
            TaskState::Resolved(Resolution::Exception(ExceptionReason::WorkerShutdown))
        );
    }

    #[test]
    fn resolved_is_final() {
        let state = TaskState::Resolved(Resolution::Completed);
        assert!(state.on(TaskEvent::WorkerFault, &ExitPolicy::default()).is_err());
    }

    #[test]
    fn container_exit_before_start_is_illegal() {
        let err = TaskState::PreparingImage
            .on(TaskEvent::ContainerExited(0), &ExitPolicy::default())
            .unwrap_err();
        assert_eq!(err.state, TaskState::PreparingImage);
    }
}
