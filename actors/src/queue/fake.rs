//! FakeQueue: a scriptable Queue for message-level tests, handling the same four messages as the
//! QueueActor and recording every call with the credentials it carried.
//!
//! Declared from `actor.rs` (`queue::actor::fake`) behind the `test-util` feature.
//!
//! ```ignore
//! let fake = FakeQueue::new();
//! let q = fake.handle();
//! q.push_claim(fake_claim("T1", 0, task_json));
//! q.conflict_after_reclaims(2);            // the third reclaim of any run gets 409
//! q.fail_reports(1, QueueError::Unavailable("down".into()));
//! let port = QueuePort::from_addr(&fake.start());
//! // … drive the Supervisor or a TaskActor …
//! q.wait_for("the run to resolve", Duration::from_secs(5), |q| !q.resolutions("T1", 0).is_empty()).await?;
//! assert_eq!(q.resolutions("T1", 0), vec![Resolution::Completed]);
//! assert!(q.stale_credential_calls().is_empty());
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::watch;

use super::canceled_error;
use crate::lifecycle::Resolution;
use crate::queue::{
    Claim, ClaimWork, Credentials, GetRunState, QueueError, ReclaimTask, Reclaimed, ResolveTask, RunState,
};

/// The certificate every fake temporary credential carries.
pub const FAKE_CERTIFICATE: &str =
    r#"{"version":1,"scopes":[],"start":0,"expiry":0,"seed":"fake","signature":"fake","issuer":"fake"}"#;

/// A claim as the Queue would hand it out: claimed for 20 minutes, with credentials
/// `task-client/<task>/<run>/claim`.
pub fn fake_claim(task_id: &str, run_id: u32, task: serde_json::Value) -> Claim {
    Claim {
        task_id: task_id.to_string(),
        run_id,
        task,
        taken_until: Utc::now() + chrono::Duration::minutes(20),
        credentials: fake_credentials(task_id, run_id, "claim"),
    }
}

/// Temporary credentials named `task-client/<task>/<run>/<label>`.
pub fn fake_credentials(task_id: &str, run_id: u32, label: &str) -> Credentials {
    Credentials {
        client_id: format!("task-client/{task_id}/{run_id}/{label}"),
        access_token: format!("fake-token-{task_id}-{run_id}-{label}"),
        certificate: Some(FAKE_CERTIFICATE.to_string()),
    }
}

/// One message the fake received.
#[derive(Debug, Clone)]
pub enum QueueCall {
    /// A `ClaimWork`.
    ClaimWork(ClaimWork),
    /// A `ReclaimTask`.
    Reclaim(ReclaimTask),
    /// A `ResolveTask`.
    Resolve(ResolveTask),
    /// A `GetRunState`.
    GetRunState(GetRunState),
}

impl QueueCall {
    /// The task and run a task call is about; `None` for `ClaimWork`.
    pub fn run(&self) -> Option<(&str, u32)> {
        match self {
            QueueCall::ClaimWork(_) => None,
            QueueCall::Reclaim(m) => Some((&m.task_id, m.run_id)),
            QueueCall::Resolve(m) => Some((&m.task_id, m.run_id)),
            QueueCall::GetRunState(m) => Some((&m.task_id, m.run_id)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Resolved(Resolution),
    Canceled,
}

struct Run {
    phase: Phase,
    newest: Credentials,
    reclaims: u32,
}

struct Recorded {
    call: QueueCall,
    /// Whether a task call carried the newest credentials issued for its run (`None`: unknown run).
    fresh: Option<bool>,
    /// Whether the fake answered it with success.
    ok: bool,
}

struct State {
    claims: VecDeque<Claim>,
    claim_errors: VecDeque<QueueError>,
    claim_poll: Duration,
    reclaim_answers: VecDeque<Result<Reclaimed, QueueError>>,
    reclaim_extension: Duration,
    conflict_after_reclaims: Option<u32>,
    run_state_answers: VecDeque<Result<RunState, QueueError>>,
    report_failures: VecDeque<QueueError>,
    runs: HashMap<(String, u32), Run>,
    calls: Vec<Recorded>,
}

/// A Queue that follows a script; see the module docs.
pub struct FakeQueue {
    handle: FakeQueueHandle,
}

/// Scripts and inspects a [`FakeQueue`], before and while it runs. Cheap to clone.
#[derive(Clone)]
pub struct FakeQueueHandle {
    state: Arc<Mutex<State>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for FakeQueue {
    fn default() -> Self {
        FakeQueue::new()
    }
}

impl FakeQueue {
    /// A fake with no claims, reclaims that always succeed and reports that always succeed.
    pub fn new() -> FakeQueue {
        FakeQueue {
            handle: FakeQueueHandle {
                state: Arc::new(Mutex::new(State {
                    claims: VecDeque::new(),
                    claim_errors: VecDeque::new(),
                    claim_poll: Duration::from_millis(250),
                    reclaim_answers: VecDeque::new(),
                    reclaim_extension: Duration::from_secs(20 * 60),
                    conflict_after_reclaims: None,
                    run_state_answers: VecDeque::new(),
                    report_failures: VecDeque::new(),
                    runs: HashMap::new(),
                    calls: Vec::new(),
                })),
                changed: Arc::new(watch::channel(0).0),
            },
        }
    }

    /// The handle to script and inspect this fake.
    pub fn handle(&self) -> FakeQueueHandle {
        self.handle.clone()
    }
}

impl FakeQueueHandle {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; keep answering.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.bump();
        out
    }

    /// Hand this claim out on a coming `ClaimWork`, in order.
    pub fn push_claim(&self, claim: Claim) {
        self.with(|s| s.claims.push_back(claim));
    }

    /// Answer the next `ClaimWork` with this error (before any claim is handed out).
    pub fn fail_next_claim(&self, error: QueueError) {
        self.with(|s| s.claim_errors.push_back(error));
    }

    /// How long a `ClaimWork` with nothing to hand out waits for a claim before answering `[]`
    /// (the real Queue waits 20 s; the default here is 250 ms).
    pub fn set_claim_poll(&self, wait: Duration) {
        self.with(|s| s.claim_poll = wait);
    }

    /// Treat a run as claimed with `credentials`, without a `ClaimWork`.
    pub fn register_run(&self, task_id: &str, run_id: u32, credentials: Credentials) {
        self.with(|s| {
            s.runs.insert(
                (task_id.to_string(), run_id),
                Run {
                    phase: Phase::Running,
                    newest: credentials,
                    reclaims: 0,
                },
            )
        });
    }

    /// Answer the next `ReclaimTask` with this (before the rules below). An `Ok` answer's credentials
    /// become the run's newest.
    pub fn push_reclaim_answer(&self, answer: Result<Reclaimed, QueueError>) {
        self.with(|s| s.reclaim_answers.push_back(answer));
    }

    /// How far a successful reclaim moves `takenUntil` (default 20 minutes).
    pub fn set_reclaim_extension(&self, extension: Duration) {
        self.with(|s| s.reclaim_extension = extension);
    }

    /// After `n` successful reclaims of a run, cancel it: later reclaims and reports get 409.
    pub fn conflict_after_reclaims(&self, n: u32) {
        self.with(|s| s.conflict_after_reclaims = Some(n));
    }

    /// Cancel a run at the Queue: reclaims and reports get 409, its state reads `Resolved`.
    pub fn cancel(&self, task_id: &str, run_id: u32) {
        self.with(|s| {
            let run = s
                .runs
                .entry((task_id.to_string(), run_id))
                .or_insert_with(|| Run {
                    phase: Phase::Running,
                    newest: fake_credentials(task_id, run_id, "claim"),
                    reclaims: 0,
                });
            run.phase = Phase::Canceled;
        });
    }

    /// Answer the next `GetRunState` with this instead of the run's state.
    pub fn push_run_state_answer(&self, answer: Result<RunState, QueueError>) {
        self.with(|s| s.run_state_answers.push_back(answer));
    }

    /// Fail the next `n` reports (of a real resolution) with `error`, leaving the run as it is.
    pub fn fail_reports(&self, n: usize, error: QueueError) {
        self.with(|s| s.report_failures.extend(std::iter::repeat_n(error, n)));
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<QueueCall> {
        self.lock().calls.iter().map(|r| r.call.clone()).collect()
    }

    /// How many `ClaimWork`s arrived (counted on arrival, before they are answered).
    pub fn claim_work_calls(&self) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|r| matches!(r.call, QueueCall::ClaimWork(_)))
            .count()
    }

    /// Every `ResolveTask` for the run, answered well or not.
    pub fn resolve_calls(&self, task_id: &str, run_id: u32) -> Vec<ResolveTask> {
        self.lock()
            .calls
            .iter()
            .filter_map(|r| match &r.call {
                QueueCall::Resolve(m) if m.task_id == task_id && m.run_id == run_id => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    /// The resolutions the fake accepted for the run, in order: "resolved exactly once" is a
    /// one-element list.
    pub fn resolutions(&self, task_id: &str, run_id: u32) -> Vec<Resolution> {
        self.lock()
            .calls
            .iter()
            .filter_map(|r| match &r.call {
                QueueCall::Resolve(m) if r.ok && m.task_id == task_id && m.run_id == run_id => {
                    Some(m.resolution)
                }
                _ => None,
            })
            .collect()
    }

    /// How many reclaims of the run succeeded.
    pub fn reclaims(&self, task_id: &str, run_id: u32) -> u32 {
        self.lock()
            .runs
            .get(&(task_id.to_string(), run_id))
            .map_or(0, |r| r.reclaims)
    }

    /// The newest credentials issued for the run.
    pub fn newest_credentials(&self, task_id: &str, run_id: u32) -> Option<Credentials> {
        self.lock()
            .runs
            .get(&(task_id.to_string(), run_id))
            .map(|r| r.newest.clone())
    }

    /// Task calls that did not carry the newest credentials issued for their run at the time.
    pub fn stale_credential_calls(&self) -> Vec<QueueCall> {
        self.lock()
            .calls
            .iter()
            .filter(|r| r.fresh == Some(false))
            .map(|r| r.call.clone())
            .collect()
    }

    /// Wait until `done` holds, checking after every change; fail with `what` after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&FakeQueueHandle) -> bool,
    ) -> Result<(), String> {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                if done(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    // The sender lives in this handle, so this does not happen; don't spin if it does.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            format!(
                "timed out after {timeout:?} waiting for {what}; calls: {:?}",
                self.calls()
            )
        })
    }

    fn record(&self, state: &mut State, call: QueueCall, ok: bool) {
        let fresh = match &call {
            QueueCall::ClaimWork(_) => None,
            QueueCall::Reclaim(ReclaimTask {
                task_id,
                run_id,
                credentials,
            })
            | QueueCall::Resolve(ResolveTask {
                task_id,
                run_id,
                credentials,
                ..
            })
            | QueueCall::GetRunState(GetRunState {
                task_id,
                run_id,
                credentials,
            }) => state
                .runs
                .get(&(task_id.clone(), *run_id))
                .map(|r| r.newest == *credentials),
        };
        state.calls.push(Recorded { call, fresh, ok });
    }

    /// Answer the `ClaimWork` recorded at `index`, if there is an answer yet.
    fn take_claims(&self, msg: &ClaimWork, index: usize) -> Option<Result<Vec<Claim>, QueueError>> {
        let mut s = self.lock();
        if let Some(e) = s.claim_errors.pop_front() {
            s.calls[index].ok = false;
            return Some(Err(e));
        }
        if s.claims.is_empty() {
            return None;
        }
        let n = (msg.tasks.max(1) as usize).min(s.claims.len());
        let claims: Vec<Claim> = s.claims.drain(..n).collect();
        for c in &claims {
            s.runs.insert(
                (c.task_id.clone(), c.run_id),
                Run {
                    phase: Phase::Running,
                    newest: c.credentials.clone(),
                    reclaims: 0,
                },
            );
        }
        Some(Ok(claims))
    }

    async fn claim_work(&self, msg: ClaimWork) -> Result<Vec<Claim>, QueueError> {
        let mut rx = self.changed.subscribe();
        // Recorded on arrival, so a test can wait for a poll to be under way.
        let (poll, index) = {
            let mut s = self.lock();
            self.record(&mut s, QueueCall::ClaimWork(msg.clone()), true);
            (s.claim_poll, s.calls.len() - 1)
        };
        self.bump();
        let deadline = tokio::time::Instant::now() + poll;
        loop {
            if let Some(answer) = self.take_claims(&msg, index) {
                self.bump();
                return answer;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
        let answer = self.take_claims(&msg, index).unwrap_or(Ok(Vec::new()));
        self.bump();
        answer
    }

    fn reclaim(&self, msg: ReclaimTask) -> Result<Reclaimed, QueueError> {
        let mut s = self.lock();
        let key = (msg.task_id.clone(), msg.run_id);
        let answer = if let Some(answer) = s.reclaim_answers.pop_front() {
            answer
        } else {
            let limit = s.conflict_after_reclaims;
            let extension = s.reclaim_extension;
            let run = s.runs.entry(key.clone()).or_insert_with(|| Run {
                phase: Phase::Running,
                newest: msg.credentials.clone(),
                reclaims: 0,
            });
            if limit.is_some_and(|n| run.reclaims >= n) && run.phase == Phase::Running {
                run.phase = Phase::Canceled;
            }
            match run.phase {
                Phase::Running => Ok(Reclaimed {
                    taken_until: Utc::now()
                        + chrono::Duration::from_std(extension).unwrap_or(chrono::Duration::MAX),
                    credentials: fake_credentials(
                        &msg.task_id,
                        msg.run_id,
                        &format!("reclaim-{}", run.reclaims + 1),
                    ),
                }),
                _ => Err(QueueError::Conflict(format!(
                    "run {} of task {} is resolved or not running",
                    msg.run_id, msg.task_id
                ))),
            }
        };
        let ok = answer.is_ok();
        self.record(&mut s, QueueCall::Reclaim(msg), ok);
        if let Ok(r) = &answer {
            let run = s.runs.entry(key).or_insert_with(|| Run {
                phase: Phase::Running,
                newest: r.credentials.clone(),
                reclaims: 0,
            });
            run.newest = r.credentials.clone();
            run.reclaims += 1;
        }
        drop(s);
        self.bump();
        answer
    }

    fn resolve(&self, msg: ResolveTask) -> Result<(), QueueError> {
        let mut s = self.lock();
        let answer = if msg.resolution == Resolution::Canceled {
            Err(canceled_error())
        } else if let Some(e) = s.report_failures.pop_front() {
            Err(e)
        } else {
            let run = s
                .runs
                .entry((msg.task_id.clone(), msg.run_id))
                .or_insert_with(|| Run {
                    phase: Phase::Running,
                    newest: msg.credentials.clone(),
                    reclaims: 0,
                });
            match run.phase {
                Phase::Running => {
                    run.phase = Phase::Resolved(msg.resolution);
                    Ok(())
                }
                // The Queue accepts a repeat of the same report.
                Phase::Resolved(r) if r == msg.resolution => Ok(()),
                _ => Err(QueueError::Conflict(format!(
                    "run {} of task {} is resolved or not running",
                    msg.run_id, msg.task_id
                ))),
            }
        };
        let ok = answer.is_ok();
        self.record(&mut s, QueueCall::Resolve(msg), ok);
        drop(s);
        self.bump();
        answer
    }

    fn run_state(&self, msg: GetRunState) -> Result<RunState, QueueError> {
        let mut s = self.lock();
        let answer = if let Some(answer) = s.run_state_answers.pop_front() {
            answer
        } else {
            match s.runs.get(&(msg.task_id.clone(), msg.run_id)) {
                Some(Run {
                    phase: Phase::Running,
                    ..
                }) => Ok(RunState::Running),
                Some(_) => Ok(RunState::Resolved),
                None => Err(QueueError::NotFound(format!(
                    "task {} has no run {}",
                    msg.task_id, msg.run_id
                ))),
            }
        };
        let ok = answer.is_ok();
        self.record(&mut s, QueueCall::GetRunState(msg), ok);
        drop(s);
        self.bump();
        answer
    }
}

impl Actor for FakeQueue {
    type Context = Context<Self>;
}

impl Handler<ClaimWork> for FakeQueue {
    type Result = ResponseFuture<Result<Vec<Claim>, QueueError>>;
    fn handle(&mut self, msg: ClaimWork, _: &mut Context<Self>) -> Self::Result {
        let handle = self.handle.clone();
        Box::pin(async move { handle.claim_work(msg).await })
    }
}

impl Handler<ReclaimTask> for FakeQueue {
    type Result = Result<Reclaimed, QueueError>;
    fn handle(&mut self, msg: ReclaimTask, _: &mut Context<Self>) -> Self::Result {
        self.handle.reclaim(msg)
    }
}

impl Handler<ResolveTask> for FakeQueue {
    type Result = Result<(), QueueError>;
    fn handle(&mut self, msg: ResolveTask, _: &mut Context<Self>) -> Self::Result {
        self.handle.resolve(msg)
    }
}

impl Handler<GetRunState> for FakeQueue {
    type Result = Result<RunState, QueueError>;
    fn handle(&mut self, msg: GetRunState, _: &mut Context<Self>) -> Self::Result {
        self.handle.run_state(msg)
    }
}
