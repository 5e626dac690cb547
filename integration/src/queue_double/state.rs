//! Tasks, their runs and the run lifecycle, after the Queue's DB functions (`schedule_task`,
//! `claim_task`, `reclaim_task`, `resolve_task`, `check_task_claim`, `cancel_task` in
//! `db/versions/0028.yml` and `0124.yml`), and the artifacts of the runs (`queue_artifacts`).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

/// Priorities from highest to lowest, as the Queue orders them.
pub const PRIORITIES: &[&str] = &[
    "highest",
    "very-high",
    "high",
    "medium",
    "low",
    "very-low",
    "lowest",
];

/// A timestamp as the Queue writes it: `2026-08-21T17:44:01.123Z`.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, to the millisecond (the Queue's clock is JavaScript's).
pub fn now_ms() -> DateTime<Utc> {
    truncate_ms(Utc::now())
}

/// Drop sub-millisecond precision.
pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// The state of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Waiting for a worker.
    Pending,
    /// Claimed by a worker.
    Running,
    /// Resolved `completed`.
    Completed,
    /// Resolved `failed`.
    Failed,
    /// Resolved `exception`.
    Exception,
}

impl RunState {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Exception => "exception",
        }
    }

    /// Resolved runs never change again.
    pub fn is_resolved(self) -> bool {
        matches!(self, RunState::Completed | RunState::Failed | RunState::Exception)
    }
}

/// Something that happens to a run.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// A worker claims the pending run.
    Claim {
        /// Its group.
        worker_group: String,
        /// Its id.
        worker_id: String,
        /// The end of the claim.
        taken_until: DateTime<Utc>,
    },
    /// The worker extends its claim.
    Reclaim {
        /// The new end of the claim.
        taken_until: DateTime<Utc>,
    },
    /// The worker resolves its run (`completed`, `failed` or `exception` with a reason).
    Resolve {
        /// The final state.
        state: RunState,
        /// `reasonResolved`.
        reason: String,
    },
    /// The queue resolves the run by itself: claim expired, canceled, deadline exceeded. Also applies
    /// to pending runs (cancel, deadline).
    Abort {
        /// `reasonResolved`.
        reason: String,
    },
}

/// One run of a task.
#[derive(Debug, Clone)]
pub struct Run {
    /// Its state.
    pub state: RunState,
    /// `reasonCreated`.
    pub reason_created: String,
    /// `reasonResolved`, once resolved.
    pub reason_resolved: Option<String>,
    /// Set by the claim.
    pub worker_group: Option<String>,
    /// Set by the claim.
    pub worker_id: Option<String>,
    /// Set by the claim and each reclaim.
    pub taken_until: Option<DateTime<Utc>>,
    /// When the run was created.
    pub scheduled: DateTime<Utc>,
    /// When it was claimed.
    pub started: Option<DateTime<Utc>>,
    /// When it was resolved.
    pub resolved: Option<DateTime<Utc>>,
    /// Position in the pending queue (FIFO within a priority).
    pending_seq: u64,
}

impl Run {
    fn new(reason_created: &str, now: DateTime<Utc>, pending_seq: u64) -> Run {
        Run {
            state: RunState::Pending,
            reason_created: reason_created.to_string(),
            reason_resolved: None,
            worker_group: None,
            worker_id: None,
            taken_until: None,
            scheduled: now,
            started: None,
            resolved: None,
            pending_seq,
        }
    }

    /// The one transition function of the run lifecycle. Returns false, changing nothing, when the
    /// event does not apply to the run's state.
    pub fn apply(&mut self, event: RunEvent, now: DateTime<Utc>) -> bool {
        match (self.state, event) {
            (
                RunState::Pending,
                RunEvent::Claim {
                    worker_group,
                    worker_id,
                    taken_until,
                },
            ) => {
                self.state = RunState::Running;
                self.worker_group = Some(worker_group);
                self.worker_id = Some(worker_id);
                self.taken_until = Some(taken_until);
                self.started = Some(now);
                true
            }
            (RunState::Running, RunEvent::Reclaim { taken_until }) => {
                self.taken_until = Some(taken_until);
                true
            }
            (RunState::Running, RunEvent::Resolve { state, reason }) if state.is_resolved() => {
                self.state = state;
                self.reason_resolved = Some(reason);
                self.resolved = Some(now);
                true
            }
            (RunState::Pending | RunState::Running, RunEvent::Abort { reason }) => {
                self.state = RunState::Exception;
                self.reason_resolved = Some(reason);
                self.resolved = Some(now);
                true
            }
            _ => false,
        }
    }

    fn to_json(&self, run_id: usize) -> Value {
        let mut m = Map::new();
        m.insert("runId".into(), json!(run_id));
        m.insert("state".into(), json!(self.state.as_str()));
        m.insert("reasonCreated".into(), json!(self.reason_created));
        if let Some(r) = &self.reason_resolved {
            m.insert("reasonResolved".into(), json!(r));
        }
        if let Some(g) = &self.worker_group {
            m.insert("workerGroup".into(), json!(g));
        }
        if let Some(w) = &self.worker_id {
            m.insert("workerId".into(), json!(w));
        }
        if let Some(t) = self.taken_until {
            m.insert("takenUntil".into(), json!(fmt_time(t)));
        }
        m.insert("scheduled".into(), json!(fmt_time(self.scheduled)));
        if let Some(t) = self.started {
            m.insert("started".into(), json!(fmt_time(t)));
        }
        if let Some(t) = self.resolved {
            m.insert("resolved".into(), json!(fmt_time(t)));
        }
        Value::Object(m)
    }
}

/// A task as the Queue stores it.
#[derive(Debug, Clone)]
pub struct Task {
    /// Its id.
    pub task_id: String,
    /// The definition as `task` returns it (defaults filled in, dates normalized).
    pub definition: Value,
    /// `provisionerId/workerType`.
    pub task_queue_id: String,
    /// Index into [`PRIORITIES`].
    pub priority: usize,
    /// Retries left.
    pub retries_left: u64,
    /// The deadline.
    pub deadline: DateTime<Utc>,
    /// The task's scopes (given to its runs' temporary credentials).
    pub scopes: Vec<String>,
    /// Its runs; index is runId.
    pub runs: Vec<Run>,
}

impl Task {
    fn def_str(&self, key: &str) -> &str {
        self.definition[key].as_str().unwrap_or_default()
    }

    /// `schedulerId`.
    pub fn scheduler_id(&self) -> &str {
        self.def_str("schedulerId")
    }

    /// `taskGroupId`.
    pub fn task_group_id(&self) -> &str {
        self.def_str("taskGroupId")
    }

    /// `projectId`.
    pub fn project_id(&self) -> &str {
        self.def_str("projectId")
    }

    /// `expires` of the definition.
    pub fn expires(&self) -> Option<DateTime<Utc>> {
        self.definition["expires"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    }

    /// The dependencies.
    pub fn dependencies(&self) -> Vec<String> {
        self.definition["dependencies"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// The task's state: that of its last run, or `unscheduled`.
    pub fn state(&self) -> &'static str {
        self.runs.last().map_or("unscheduled", |r| r.state.as_str())
    }

    /// Is the task resolved (its last run resolved, no retry pending)?
    pub fn is_resolved(&self) -> bool {
        self.runs.last().is_some_and(|r| r.state.is_resolved())
    }

    /// The `task-status.json` structure.
    pub fn status(&self) -> Value {
        let (provisioner_id, worker_type) = self
            .task_queue_id
            .split_once('/')
            .unwrap_or((&self.task_queue_id, ""));
        json!({
            "taskId": self.task_id,
            "provisionerId": provisioner_id,
            "workerType": worker_type,
            "taskQueueId": self.task_queue_id,
            "schedulerId": self.scheduler_id(),
            "projectId": self.project_id(),
            "taskGroupId": self.task_group_id(),
            "priority": PRIORITIES[self.priority],
            "deadline": fmt_time(self.deadline),
            "expires": self.definition["expires"],
            "retriesLeft": self.retries_left,
            "state": self.state(),
            "runs": self.runs.iter().enumerate().map(|(i, r)| r.to_json(i)).collect::<Vec<_>>(),
        })
    }
}

/// One artifact, as a `queue_artifacts` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// `s3`, `object`, `reference`, `link` or `error`.
    pub storage_type: String,
    /// Fixed by the first createArtifact.
    pub content_type: String,
    /// `{bucket, prefix}` (s3), `{uploadId}` (object, until finished, then `{}`), `{url}` (reference),
    /// `{artifact}` (link), `{message, reason}` (error).
    pub details: Value,
    /// False for an object artifact until finishArtifact.
    pub present: bool,
    /// When it expires.
    pub expires: DateTime<Utc>,
    /// `contentLength` of the first createArtifact, if given.
    pub content_length: Option<u64>,
}

impl Artifact {
    /// `artifactUtils.serialize`: the `artifact-response.json` shape.
    pub fn serialize(&self, name: &str) -> Value {
        let mut m = Map::new();
        m.insert("storageType".into(), json!(self.storage_type));
        m.insert("name".into(), json!(name));
        m.insert("expires".into(), json!(fmt_time(self.expires)));
        m.insert("contentType".into(), json!(self.content_type));
        if let Some(len) = self.content_length {
            m.insert("contentLength".into(), json!(len));
        }
        Value::Object(m)
    }
}

/// `(taskId, runId, name)`, ordered as the Queue's artifact pages are.
pub type ArtifactKey = (String, usize, String);

/// All tasks, their artifacts, and the pending queue's insertion counter.
#[derive(Debug, Default)]
pub struct Store {
    /// Tasks by id.
    pub tasks: HashMap<String, Task>,
    /// Artifacts of all runs.
    pub artifacts: BTreeMap<ArtifactKey, Artifact>,
    seq: u64,
}

/// Why a claim or resolution did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoChange {
    /// No such task.
    NoTask,
    /// The run is not the task's latest, or its state does not allow the change.
    Conflict,
}

impl Store {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Insert a new task (no runs yet).
    pub fn insert(&mut self, task: Task) {
        self.tasks.insert(task.task_id.clone(), task);
    }

    /// `schedule_task`: add run 0 as pending if the task has no runs.
    pub fn schedule(&mut self, task_id: &str, now: DateTime<Utc>) -> bool {
        let seq = self.next_seq();
        match self.tasks.get_mut(task_id) {
            Some(t) if t.runs.is_empty() => {
                t.runs.push(Run::new("scheduled", now, seq));
                true
            }
            _ => false,
        }
    }

    /// Apply `event` to the latest run `run_id` of `task_id` (the DB functions all insist on the
    /// latest run).
    pub fn apply_latest(
        &mut self,
        task_id: &str,
        run_id: usize,
        event: RunEvent,
        now: DateTime<Utc>,
    ) -> Result<(), NoChange> {
        let task = self.tasks.get_mut(task_id).ok_or(NoChange::NoTask)?;
        if task.runs.len() != run_id + 1 {
            return Err(NoChange::Conflict);
        }
        if task.runs[run_id].apply(event, now) {
            Ok(())
        } else {
            Err(NoChange::Conflict)
        }
    }

    /// Add a retry run (`retry` or `task-retry`) if retries are left; `resolve_task` and
    /// `check_task_claim` do this in the same transaction as the resolution.
    pub fn add_retry(&mut self, task_id: &str, reason_created: &str, now: DateTime<Utc>) -> bool {
        let seq = self.next_seq();
        match self.tasks.get_mut(task_id) {
            Some(t) if t.retries_left > 0 => {
                t.retries_left -= 1;
                t.runs.push(Run::new(reason_created, now, seq));
                true
            }
            _ => false,
        }
    }

    /// `cancel_task`: abort the pending or running latest run with `reason`, or add a resolved run if
    /// the task has none. False if there was nothing to cancel.
    pub fn cancel(&mut self, task_id: &str, reason: &str, now: DateTime<Utc>) -> bool {
        let seq = self.next_seq();
        let Some(task) = self.tasks.get_mut(task_id) else {
            return false;
        };
        match task.runs.last_mut() {
            Some(run) => run.apply(
                RunEvent::Abort {
                    reason: reason.to_string(),
                },
                now,
            ),
            None => {
                let mut run = Run::new("exception", now, seq);
                run.apply(
                    RunEvent::Abort {
                        reason: reason.to_string(),
                    },
                    now,
                );
                task.runs.push(run);
                true
            }
        }
    }

    /// Pending runs of `task_queue_id` that a worker may claim, highest priority first, then in the
    /// order they became pending. Runs past their task's deadline are not claimable.
    pub fn claimable(&self, task_queue_id: &str, now: DateTime<Utc>, count: usize) -> Vec<(String, usize)> {
        let mut pending: Vec<(usize, u64, &str, usize)> = self
            .tasks
            .values()
            .filter(|t| t.task_queue_id == task_queue_id && t.deadline > now)
            .filter_map(|t| {
                let run = t.runs.last()?;
                (run.state == RunState::Pending)
                    .then(|| (t.priority, run.pending_seq, t.task_id.as_str(), t.runs.len() - 1))
            })
            .collect();
        pending.sort_by_key(|&(priority, seq, _, _)| (priority, seq));
        pending
            .into_iter()
            .take(count)
            .map(|(_, _, id, run)| (id.to_string(), run))
            .collect()
    }

    /// Schedule tasks whose dependencies are now satisfied (the dependency tracker).
    pub fn schedule_ready_dependents(&mut self, now: DateTime<Utc>) -> bool {
        let ready: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.runs.is_empty() && t.deadline > now)
            .filter(|t| {
                let deps = t.dependencies();
                let all_resolved = t.definition["requires"] == "all-resolved";
                !deps.is_empty()
                    && deps.iter().all(|d| {
                        self.tasks.get(d).is_some_and(|dep| {
                            if all_resolved {
                                dep.is_resolved()
                            } else {
                                dep.state() == "completed"
                            }
                        })
                    })
            })
            .map(|t| t.task_id.clone())
            .collect();
        let mut any = false;
        for id in ready {
            any |= self.schedule(&id, now);
        }
        any
    }

    /// The claim resolver and the deadline resolver: expire claims whose `takenUntil` has passed
    /// (retrying if retries are left, unless the deadline has passed too), and resolve tasks
    /// `deadline-exceeded` once `deadline + deadline_delay` has passed. Returns whether anything
    /// changed.
    pub fn sweep(&mut self, now: DateTime<Utc>, deadline_delay: chrono::Duration) -> bool {
        let mut expired = Vec::new();
        let mut past_deadline = Vec::new();
        for t in self.tasks.values() {
            let latest = t.runs.last();
            if let Some(run) = latest {
                if run.state == RunState::Running
                    && run.taken_until.is_some_and(|tu| tu < now)
                    && t.deadline >= now
                {
                    expired.push((t.task_id.clone(), t.runs.len() - 1));
                }
            }
            let open = latest.is_none_or(|r| !r.state.is_resolved());
            if open && t.deadline + deadline_delay <= now {
                past_deadline.push(t.task_id.clone());
            }
        }
        let mut changed = false;
        for (id, run_id) in expired {
            let abort = RunEvent::Abort {
                reason: "claim-expired".into(),
            };
            if self.apply_latest(&id, run_id, abort, now).is_ok() {
                self.add_retry(&id, "retry", now);
                changed = true;
            }
        }
        for id in past_deadline {
            changed |= self.cancel(&id, "deadline-exceeded", now);
        }
        if changed {
            self.schedule_ready_dependents(now);
        }
        changed
    }
}
