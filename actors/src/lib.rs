//! The actors of docker-worker and the messages between them.
//!
//! A [`supervisor::Supervisor`] owns capacity and spawns one [`task_actor::TaskActor`] per task. A
//! TaskActor reaches Docker, its log and artifact storage only through messages to a
//! [`docker::DockerActor`], a [`log_stream::LogStreamActor`] and an [`artifacts::ArtifactUploadActor`],
//! so a crash, a timeout or a cancellation stays inside one task.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod artifacts;
pub mod attach;
pub mod docker;
pub mod images;
pub mod lifecycle;
pub mod live_log;
pub mod log_stream;
pub mod logfmt;
pub mod payload;
pub mod queue;
pub mod supervisor;
pub mod task;
pub mod task_actor;

#[cfg(feature = "test-util")]
pub mod test_util;
