//! The Taskcluster Queue, as the worker sees it: the messages a Supervisor and a TaskActor send to the
//! QueueActor, and what comes back. The QueueActor signs every call with Hawk and retries what is safe
//! to retry.

use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::lifecycle::Resolution;

pub mod actor;
pub mod artifacts;
pub mod client;
pub mod hawk;

pub use actor::QueueActor;
pub use client::QueueClient;

/// Taskcluster credentials: permanent ones, or temporary ones with a certificate.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// The client id.
    pub client_id: String,
    /// The access token (a secret).
    pub access_token: String,
    /// For temporary credentials: the certificate, as the JSON string the Queue sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("temporary", &self.certificate.is_some())
            .finish()
    }
}

/// One task the Queue handed this worker.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The task id.
    pub task_id: String,
    /// The run id.
    pub run_id: u32,
    /// The task definition (`task.json`).
    pub task: serde_json::Value,
    /// The claim lasts until then unless reclaimed.
    pub taken_until: DateTime<Utc>,
    /// Temporary credentials for this run, valid until `taken_until`.
    pub credentials: Credentials,
}

/// A successful reclaim.
#[derive(Debug, Clone)]
pub struct Reclaimed {
    /// The new end of the claim.
    pub taken_until: DateTime<Utc>,
    /// Fresh temporary credentials; use these from now on.
    pub credentials: Credentials,
}

/// The state of one run, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Waiting for a worker.
    Pending,
    /// Claimed and running.
    Running,
    /// Resolved in any way.
    Resolved,
}

/// A Queue call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// 409: the run is resolved, canceled, past its deadline or no longer ours. Authoritative: stop.
    #[error("the queue refused: the run is no longer ours ({0})")]
    Conflict(String),
    /// 401 or 403.
    #[error("the queue refused our credentials ({status}): {message}")]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// The Queue's message.
        message: String,
    },
    /// 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// Another 4xx: our request is wrong.
    #[error("the queue rejected the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The Queue's message.
        message: String,
    },
    /// 5xx or a network error, after the retries the call allows.
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
    /// The QueueActor is gone.
    #[error("the queue actor stopped: {0}")]
    ActorGone(String),
}

impl From<MailboxError> for QueueError {
    fn from(e: MailboxError) -> Self {
        QueueError::ActorGone(e.to_string())
    }
}

/// How calls that are safe to repeat are retried: on network errors and 5xx, with doubling delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, at least 1.
    pub attempts: u32,
    /// The first delay.
    pub initial_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// `claimWork` with the worker's own credentials. Never retried: its outcome may be unknown, and a
/// repeated claim could take tasks nobody then runs.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Vec<Claim>, QueueError>")]
pub struct ClaimWork {
    /// `<provisionerId>/<workerType>`.
    pub task_queue_id: String,
    /// The worker group.
    pub worker_group: String,
    /// The worker id.
    pub worker_id: String,
    /// How many tasks at most (1..=32).
    pub tasks: u32,
}

/// `reclaimTask` with the run's current temporary credentials.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Reclaimed, QueueError>")]
pub struct ReclaimTask {
    /// The task.
    pub task_id: String,
    /// The run.
    pub run_id: u32,
    /// The run's newest credentials.
    pub credentials: Credentials,
}

/// `reportCompleted`, `reportFailed` or `reportException`, by resolution. `Resolution::Canceled` is
/// never sent; asking for it is an error.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), QueueError>")]
pub struct ResolveTask {
    /// The task.
    pub task_id: String,
    /// The run.
    pub run_id: u32,
    /// The run's newest credentials.
    pub credentials: Credentials,
    /// How the run ended.
    pub resolution: Resolution,
}

/// `status`, reduced to the state of one run, for noticing cancellation early.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<RunState, QueueError>")]
pub struct GetRunState {
    /// The task.
    pub task_id: String,
    /// The run.
    pub run_id: u32,
    /// The run's newest credentials.
    pub credentials: Credentials,
}

/// The messages a Supervisor and a TaskActor send to the Queue, so a test can put a fake in its place.
#[derive(Clone)]
pub struct QueuePort {
    /// See [`ClaimWork`].
    pub claim_work: Recipient<ClaimWork>,
    /// See [`ReclaimTask`].
    pub reclaim: Recipient<ReclaimTask>,
    /// See [`ResolveTask`].
    pub resolve: Recipient<ResolveTask>,
    /// See [`GetRunState`].
    pub run_state: Recipient<GetRunState>,
}

impl QueuePort {
    /// The port of any actor that handles all of the Queue's messages.
    pub fn from_addr<A>(addr: &Addr<A>) -> QueuePort
    where
        A: Actor + Handler<ClaimWork> + Handler<ReclaimTask> + Handler<ResolveTask> + Handler<GetRunState>,
        A::Context: actix::dev::ToEnvelope<A, ClaimWork>
            + actix::dev::ToEnvelope<A, ReclaimTask>
            + actix::dev::ToEnvelope<A, ResolveTask>
            + actix::dev::ToEnvelope<A, GetRunState>,
    {
        QueuePort {
            claim_work: addr.clone().recipient(),
            reclaim: addr.clone().recipient(),
            resolve: addr.clone().recipient(),
            run_state: addr.clone().recipient(),
        }
    }
}

/// Send a Queue message and fold a lost actor into the error.
pub async fn call<M, T>(to: &Recipient<M>, msg: M) -> Result<T, QueueError>
where
    M: Message<Result = Result<T, QueueError>> + Send + 'static,
    T: Send + 'static,
{
    to.send(msg).await?
}

/// What a TaskActor needs to keep its claim and resolve its run.
#[derive(Clone)]
pub struct QueueLink {
    /// The Queue.
    pub port: QueuePort,
    /// The claim's temporary credentials; the newest ones after each reclaim.
    pub credentials: Credentials,
    /// The same credentials, shared with whoever else calls the Queue for this run (artifact uploads).
    pub shared_credentials: artifacts::SharedCredentials,
    /// The claim lasts until then unless reclaimed.
    pub taken_until: DateTime<Utc>,
}
