//! QueueActor: one per worker, the only place that talks to the Queue. Each message runs as its own
//! future, so a long `claimWork` poll never holds up a task's reclaim or report.
//!
//! The scriptable [`fake::FakeQueue`] for tests lives in `fake.rs` beside this file, behind the
//! `test-util` feature (declared here because `mod.rs` names only `actor`, `client` and `hawk`).

use actix::prelude::*;

use super::client::{QueueClient, TaskStatus};
use super::{ClaimWork, GetRunState, QueueError, ReclaimTask, ResolveTask, RunState};
use crate::lifecycle::Resolution;

#[cfg(feature = "test-util")]
#[path = "fake.rs"]
pub mod fake;

/// The message of the error a `ResolveTask` with [`Resolution::Canceled`] gets.
pub const CANCELED_NOT_REPORTED: &str = "a canceled run is never reported";

/// The real thing: a [`QueueClient`] behind messages.
pub struct QueueActor {
    client: QueueClient,
}

impl QueueActor {
    /// An actor over `client`.
    pub fn new(client: QueueClient) -> QueueActor {
        QueueActor { client }
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;
}

impl Handler<ClaimWork> for QueueActor {
    type Result = ResponseFuture<Result<Vec<super::Claim>, QueueError>>;
    fn handle(&mut self, msg: ClaimWork, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        Box::pin(async move { client.claim_work(&msg).await })
    }
}

impl Handler<ReclaimTask> for QueueActor {
    type Result = ResponseFuture<Result<super::Reclaimed, QueueError>>;
    fn handle(&mut self, msg: ReclaimTask, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        Box::pin(async move {
            client
                .reclaim_task(&msg.task_id, msg.run_id, &msg.credentials)
                .await
        })
    }
}

impl Handler<ResolveTask> for QueueActor {
    type Result = ResponseFuture<Result<(), QueueError>>;
    fn handle(&mut self, msg: ResolveTask, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        Box::pin(async move { resolve(&client, &msg).await })
    }
}

impl Handler<GetRunState> for QueueActor {
    type Result = ResponseFuture<Result<RunState, QueueError>>;
    fn handle(&mut self, msg: GetRunState, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        Box::pin(async move {
            let status = client.status(&msg.task_id, &msg.credentials).await?;
            run_state(&status, msg.run_id)
        })
    }
}

/// Report a resolution; a canceled run is refused without a call.
async fn resolve(client: &QueueClient, msg: &ResolveTask) -> Result<(), QueueError> {
    let (task_id, run_id, creds) = (msg.task_id.as_str(), msg.run_id, &msg.credentials);
    match msg.resolution {
        Resolution::Completed => client.report_completed(task_id, run_id, creds).await,
        Resolution::Failed => client.report_failed(task_id, run_id, creds).await,
        Resolution::Exception(reason) => client.report_exception(task_id, run_id, creds, reason).await,
        Resolution::Canceled => Err(canceled_error()),
    }
}

/// What asking to report [`Resolution::Canceled`] gets.
pub fn canceled_error() -> QueueError {
    QueueError::Rejected {
        status: 0,
        message: CANCELED_NOT_REPORTED.to_string(),
    }
}

/// The state of `run_id` in a task's status.
pub fn run_state(status: &TaskStatus, run_id: u32) -> Result<RunState, QueueError> {
    let run = status
        .run(run_id)
        .ok_or_else(|| QueueError::NotFound(format!("task {} has no run {run_id}", status.task_id)))?;
    run.run_state().ok_or_else(|| {
        QueueError::Unavailable(format!(
            "status: run {run_id} of task {} is in a state this worker does not know: {}",
            status.task_id, run.state
        ))
    })
}
