//! The MigrationJob status from what was observed and decided (pure), and the conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::crd::{
    CopyStatus, DesiredState, FinalizationStatus, MigrationJobSpec, MigrationJobStatus,
    ReplicationStatus, VerificationStatus, WorkerPodStatus,
};
use crate::api::{Direction, FinalizationReport, State, WorkerStatus};

use super::decide::{CredentialsObs, Decision, Observed, WorkerObs};
use super::preflight_status::{self as preflight, PREFLIGHT_PASSED};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const PAUSED: &str = "Paused";
pub const FINALIZED: &str = "Finalized";
pub const FAILED: &str = "Failed";
/// Reason of the Failed condition (and of its Event) when the worker refuses a target that
/// another migration owns; the worker's `failureReason` carries the same word.
pub const TARGET_IN_USE: &str = "TargetInUse";
const MAX_LIST: usize = 20;

pub struct Inputs<'a> {
    pub spec: &'a MigrationJobSpec,
    pub generation: Option<i64>,
    pub observed: &'a Observed,
    pub decision: &'a Decision,
    pub previous: Option<&'a MigrationJobStatus>,
    pub now: Time,
    /// What this reconcile's start call learnt of the preflight.
    pub preflight: &'a preflight::Outcome,
}

pub fn compute(i: &Inputs<'_>) -> MigrationJobStatus {
    let prev = i.previous.cloned().unwrap_or_default();
    let obs = i.observed;
    let mut st = MigrationJobStatus {
        observed_generation: i.generation,
        handled_retry: i
            .decision
            .handled_retry
            .clone()
            .or(prev.handled_retry.clone()),
        handled_reset: i
            .decision
            .handled_reset
            .clone()
            .or(prev.handled_reset.clone()),
        worker_pod: obs.pod.as_ref().map(|p| WorkerPodStatus {
            name: p.name.clone(),
            restarts: p.restarts,
            ip: p.ip.clone(),
        }),
        ..Default::default()
    };
    let worker = match &obs.worker {
        WorkerObs::Status(ws) => Some(ws.as_ref()),
        _ => None,
    };
    // A reverse's worker serves the finalized migration until the reverse starts: that is not
    // the reverse's state (it has not started), only a failure to load it is shown.
    let reverse = i.spec.reverse_of.is_some();
    let not_started;
    let worker = match worker {
        // A restarted worker loads the migration before coming back in the reverse: keep the
        // reverse's last figures meanwhile.
        Some(ws)
            if reverse
                && ws.direction == Direction::Forward
                && matches!(
                    i.observed.reverse,
                    Some(super::decide::ReverseObs::Ready { started: true })
                ) =>
        {
            None
        }
        Some(ws) if reverse && ws.direction == Direction::Forward && ws.state != State::Failed => {
            not_started = WorkerStatus {
                ok: true,
                state: State::Idle,
                direction: Direction::Reverse,
                info: ws.info.clone(),
                ..Default::default()
            };
            Some(&not_started)
        }
        // A migration's worker that came back in the reverse (its reverse MigrationJob was
        // deleted): not this job's figures.
        Some(ws) if !reverse && ws.direction == Direction::Reverse => None,
        w => w,
    };
    let handed_over = handed_over(obs, &prev);
    match worker {
        Some(ws) => {
            st.state = Some(ws.state.as_str().into());
            st.phase = ws.phase.map(|p| {
                match p {
                    crate::api::Phase::Copying => "copying",
                    crate::api::Phase::Replicating => "replicating",
                }
                .to_string()
            });
            st.direction = Some(
                if reverse {
                    "reverse"
                } else {
                    ws.direction.as_str()
                }
                .into(),
            );
            st.copy = Some(copy_status(ws));
            st.replication = Some(replication_status(ws));
            st.finalization = ws.finalization.as_ref().map(finalization_status);
        }
        None => {
            // Keep the last known figures while the worker is out of sight.
            st.state = prev.state.clone().or(Some("pending".into()));
            st.phase = prev.phase.clone();
            st.direction = prev
                .direction
                .clone()
                .or_else(|| reverse.then(|| "reverse".into()));
            st.copy = prev.copy.clone();
            st.replication = prev.replication.clone();
            st.finalization = prev.finalization.clone();
        }
    }
    st.progress = st.copy.as_ref().map(|c| format!("{}%", c.percent));
    st.message = message(i, worker);
    st.preflight = preflight::next(i.preflight, prev.preflight.as_ref(), &i.now, i.generation);
    st.conditions = conditions(i, worker, &prev, handed_over);
    if let Some(p) = &st.preflight {
        let (on, reason, message) = preflight::condition(p);
        let c = Cond {
            type_: PREFLIGHT_PASSED,
            on,
            reason,
            message,
        };
        st.conditions
            .push(condition(c, i.generation, &i.now, &prev));
    }
    st
}

fn message(i: &Inputs<'_>, worker: Option<&WorkerStatus>) -> Option<String> {
    if let Some(ws) = worker.filter(|w| w.state == State::Failed) {
        return Some(
            ws.error
                .clone()
                .unwrap_or_else(|| "the worker reports a failure".into()),
        );
    }
    if let Some(w) = &i.decision.waiting {
        return Some(w.clone());
    }
    worker.map(|ws| ws.info.clone()).filter(|s| !s.is_empty())
}

fn copy_status(ws: &WorkerStatus) -> CopyStatus {
    let s = &ws.initial_sync;
    let percent = if s.clone_completed {
        100
    } else if s.estimated_clone_size_bytes == 0 {
        0
    } else {
        ((s.cloned_size_bytes as f64 / s.estimated_clone_size_bytes as f64) * 100.0)
            .clamp(0.0, 99.0) as u8
    };
    CopyStatus {
        bytes_copied: s.cloned_size_bytes,
        bytes_total: s.estimated_clone_size_bytes,
        documents_copied: s.cloned_documents,
        documents_total: s.estimated_documents,
        collections_copied: s.collections_completed,
        collections_total: s.collections_total,
        percent,
        eta_seconds: s
            .eta_seconds
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| e.round() as u64),
        completed: s.clone_completed,
    }
}

fn replication_status(ws: &WorkerStatus) -> ReplicationStatus {
    ReplicationStatus {
        lag_seconds: ws
            .lag_time_seconds
            .filter(|l| l.is_finite())
            .map(|l| l.round() as i64),
        events_applied: ws.events_applied,
        last_applied_op_time: ws
            .last_replicated_op_time
            .as_ref()
            .map(|o| o.iso_date.clone()),
        checkpoint_time: ws.checkpoint.as_ref().and_then(|c| c.saved_at.clone()),
        caught_up: ws.initial_sync.completed,
    }
}

fn finalization_status(f: &FinalizationReport) -> FinalizationStatus {
    FinalizationStatus {
        step: f.step.clone(),
        started_at: f.started_at.clone(),
        completed_at: f.completed_at.clone(),
        cutoff: f.cutoff.as_ref().map(|c| c.iso_date.clone()),
        indexes_restored: f.indexes.restored,
        index_failures: f
            .indexes
            .failed
            .iter()
            .take(MAX_LIST)
            .map(|x| format!("{}.{}: {}", x.namespace, x.name, x.reason))
            .collect(),
        index_failure_count: f.indexes.failed.len() as u64,
        verification: f.verification.as_ref().map(|v| VerificationStatus {
            mode: serde_json::to_value(v.mode)
                .ok()
                .and_then(|m| m.as_str().map(str::to_string))
                .unwrap_or_default(),
            collections_checked: v.collections_checked,
            documents_checked: v.documents_checked,
            mismatch_count: v.mismatch_count,
            mismatches: v
                .mismatches
                .iter()
                .take(MAX_LIST)
                .map(|m| format!("{:?} {} {}", m.kind, m.namespace, m.id).to_lowercase())
                .collect(),
        }),
        warnings: f.warnings.iter().take(MAX_LIST).cloned().collect(),
        reverse_start_point: f.reverse_start_point.as_ref().map(|o| o.iso_date.clone()),
    }
}

struct Cond {
    type_: &'static str,
    on: bool,
    reason: &'static str,
    message: String,
}

/// A finalized migration whose worker a reverse took over (or whose worker came back in the
/// reverse) stays finalized.
fn handed_over(obs: &Observed, prev: &MigrationJobStatus) -> bool {
    let worker_reverses =
        matches!(&obs.worker, WorkerObs::Status(ws) if ws.direction == Direction::Reverse);
    (obs.reversed_by.is_some() || worker_reverses)
        && obs.reverse.is_none()
        && prev.state.as_deref() == Some("finalized")
}

fn conditions(
    i: &Inputs<'_>,
    worker: Option<&WorkerStatus>,
    prev: &MigrationJobStatus,
    handed_over: bool,
) -> Vec<Condition> {
    let obs = i.observed;
    let desired = i.spec.desired_state;
    let state = worker
        .map(|w| w.state)
        .or(handed_over.then_some(State::Finalized));
    let waiting = i.decision.waiting.clone().unwrap_or_default();
    let acting = i
        .decision
        .actions
        .iter()
        .any(|a| matches!(a, super::decide::Action::Call(_)));

    let failed = match (&obs.credentials, worker) {
        (CredentialsObs::Missing { message }, _) => Cond {
            type_: FAILED,
            on: true,
            reason: "CredentialsMissing",
            message: message.clone(),
        },
        (_, Some(ws)) if ws.state == State::Failed => Cond {
            type_: FAILED,
            on: true,
            reason: if target_in_use(ws) {
                TARGET_IN_USE
            } else {
                "WorkerFailed"
            },
            message: ws.error.clone().unwrap_or_default(),
        },
        _ => match obs.pod.as_ref().and_then(|p| p.problem.clone()) {
            Some(p) => Cond {
                type_: FAILED,
                on: true,
                reason: "WorkerPodFailing",
                message: p,
            },
            None => Cond {
                type_: FAILED,
                on: false,
                reason: "NoFailure",
                message: String::new(),
            },
        },
    };
    let paused = Cond {
        type_: PAUSED,
        on: state == Some(State::Paused),
        reason: if state == Some(State::Paused) {
            "Paused"
        } else {
            "NotPaused"
        },
        message: String::new(),
    };
    let fin_msg = worker
        .and_then(|w| w.finalization.as_ref())
        .and_then(|f| f.verification.as_ref())
        .map(|v| {
            format!(
                "verified {} documents in {} collections: {} mismatches",
                v.documents_checked, v.collections_checked, v.mismatch_count
            )
        })
        .or_else(|| {
            handed_over
                .then(|| {
                    prev.conditions
                        .iter()
                        .find(|c| c.type_ == FINALIZED && c.status == "True")
                        .map(|c| c.message.clone())
                })
                .flatten()
        })
        .unwrap_or_default();
    let finalized = Cond {
        type_: FINALIZED,
        on: state == Some(State::Finalized),
        reason: if state == Some(State::Finalized) {
            "Finalized"
        } else {
            "NotFinalized"
        },
        message: if state == Some(State::Finalized) {
            fin_msg
        } else {
            String::new()
        },
    };
    let (prog_on, prog_reason) = match (state, worker.and_then(|w| w.phase)) {
        _ if failed.on => (false, "Failed"),
        (Some(State::Running), Some(crate::api::Phase::Copying)) => (true, "Copying"),
        (Some(State::Running), _) => (true, "Replicating"),
        (Some(State::Finalizing), _) => (true, "Finalizing"),
        _ if acting => (true, "Transitioning"),
        (None, _) => (true, "WorkerStarting"),
        (Some(State::Paused), _) => (false, "Paused"),
        (Some(State::Finalized), _) => (false, "Finalized"),
        (Some(_), _) => (false, "Idle"),
    };
    let progressing = Cond {
        type_: PROGRESSING,
        on: prog_on,
        reason: prog_reason,
        message: waiting.clone(),
    };
    let at_desired = matches!(
        (desired, state),
        (DesiredState::Running, Some(State::Running))
            | (DesiredState::Paused, Some(State::Paused))
            | (DesiredState::Finalized, Some(State::Finalized))
    );
    let ready = Cond {
        type_: READY,
        on: at_desired && !failed.on && i.decision.blocked.is_none(),
        reason: if failed.on {
            "Failed"
        } else if let Some(b) = i.decision.blocked {
            b
        } else if at_desired {
            "AtDesiredState"
        } else if worker.is_none() {
            "WorkerUnavailable"
        } else {
            "Transitioning"
        },
        // A failure is why the job is not ready: Ready carries its message (kstatus-based
        // tools show Ready's message).
        message: if failed.on {
            failed.message.clone()
        } else if i.decision.blocked.is_some() {
            waiting
        } else if at_desired {
            String::new()
        } else {
            waiting
        },
    };
    [ready, progressing, paused, finalized, failed]
        .into_iter()
        .map(|c| condition(c, i.generation, &i.now, prev))
        .collect()
}

fn condition(c: Cond, generation: Option<i64>, now: &Time, prev: &MigrationJobStatus) -> Condition {
    let status = if c.on { "True" } else { "False" };
    let since = prev
        .conditions
        .iter()
        .find(|p| p.type_ == c.type_ && p.status == status)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: c.type_.into(),
        status: status.into(),
        reason: c.reason.into(),
        message: truncate(&c.message, 1024),
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Whether the worker refuses its target because another migration owns it.
pub fn target_in_use(ws: &WorkerStatus) -> bool {
    ws.state == State::Failed && ws.failure_reason.as_deref() == Some(TARGET_IN_USE)
}

/// The condition of `type_` if True.
pub fn is_true(st: &MigrationJobStatus, type_: &str) -> bool {
    st.conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Since when `type_` has been True.
pub fn true_since(st: &MigrationJobStatus, type_: &str) -> Option<Time> {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.last_transition_time.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::decide::{PodObs, WorkerObs};
    use std::time::Duration;

    fn spec(d: &str) -> MigrationJobSpec {
        serde_json::from_value(serde_json::json!({
            "source": {"uri": "mongodb://a:1"}, "target": {"uri": "mongodb://b:1"}, "desiredState": d
        }))
        .expect("spec")
    }

    fn observed(worker: WorkerObs) -> Observed {
        Observed {
            pod: Some(PodObs {
                name: "p".into(),
                restarts: 2,
                ..Default::default()
            }),
            worker,
            ..crate::operator::testing::observed()
        }
    }

    fn decision() -> Decision {
        Decision {
            actions: vec![],
            requeue: Duration::from_secs(1),
            waiting: None,
            handled_retry: None,
            handled_reset: None,
            blocked: None,
        }
    }

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("ts"))
    }

    fn cond<'a>(st: &'a MigrationJobStatus, ty: &str) -> &'a Condition {
        st.conditions
            .iter()
            .find(|c| c.type_ == ty)
            .expect("condition")
    }

    fn run(
        d: &str,
        w: WorkerObs,
        prev: Option<&MigrationJobStatus>,
        now: i64,
    ) -> MigrationJobStatus {
        let sp = spec(d);
        let o = observed(w);
        let dec = decision();
        compute(&Inputs {
            spec: &sp,
            generation: Some(3),
            observed: &o,
            decision: &dec,
            previous: prev,
            now: t(now),
            preflight: &preflight::Outcome::NotRun,
        })
    }

    fn worker(state: State, f: impl FnOnce(&mut WorkerStatus)) -> WorkerObs {
        let mut ws = WorkerStatus {
            ok: true,
            state,
            ..Default::default()
        };
        f(&mut ws);
        WorkerObs::Status(Box::new(ws))
    }

    #[test]
    fn replicating_is_ready_and_progressing() {
        let st = run(
            "running",
            worker(State::Running, |w| {
                w.phase = Some(crate::api::Phase::Replicating);
                w.lag_time_seconds = Some(1.6);
                w.initial_sync.clone_completed = true;
                w.initial_sync.completed = true;
                w.events_applied = 7;
            }),
            None,
            100,
        );
        assert_eq!(st.state.as_deref(), Some("running"));
        assert_eq!(st.progress.as_deref(), Some("100%"));
        assert_eq!(st.replication.as_ref().and_then(|r| r.lag_seconds), Some(2));
        assert_eq!(cond(&st, READY).status, "True");
        assert_eq!(cond(&st, PROGRESSING).reason, "Replicating");
        assert_eq!(cond(&st, PAUSED).status, "False");
        assert!(st
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(3)));
        assert_eq!(st.worker_pod.as_ref().map(|p| p.restarts), Some(2));
    }

    #[test]
    fn copy_percent_and_transition_times() {
        let first = run(
            "running",
            worker(State::Running, |w| {
                w.phase = Some(crate::api::Phase::Copying);
                w.initial_sync.estimated_clone_size_bytes = 200;
                w.initial_sync.cloned_size_bytes = 50;
            }),
            None,
            100,
        );
        assert_eq!(first.progress.as_deref(), Some("25%"));
        let paused = run("paused", worker(State::Paused, |_| {}), Some(&first), 200);
        assert_eq!(cond(&paused, PAUSED).status, "True");
        assert_eq!(cond(&paused, PAUSED).last_transition_time, t(200));
        assert_eq!(cond(&paused, FAILED).last_transition_time, t(100));
        assert_eq!(cond(&paused, READY).status, "True");
    }

    #[test]
    fn failure_carries_the_worker_message() {
        let st = run(
            "running",
            worker(State::Failed, |w| {
                w.ok = false;
                w.error = Some("authentication to the source deployment failed".into());
            }),
            None,
            5,
        );
        assert_eq!(cond(&st, FAILED).status, "True");
        assert_eq!(cond(&st, FAILED).reason, "WorkerFailed");
        assert!(cond(&st, FAILED).message.contains("authentication"));
        assert_eq!(cond(&st, READY).status, "False");
        assert_eq!(
            st.message.as_deref(),
            Some("authentication to the source deployment failed")
        );
        assert!(is_true(&st, FAILED));
        assert_eq!(true_since(&st, FAILED), Some(t(5)));
    }

    #[test]
    fn target_in_use_is_a_failure_naming_the_owner() {
        let refusal = "target mongodb://b:1 already belongs to MigrationJob shop/first \
                       (uid 7c1e); point this job at another target";
        let st = run(
            "running",
            worker(State::Failed, |w| {
                w.ok = false;
                w.error = Some(refusal.into());
                w.failure_reason = Some(TARGET_IN_USE.into());
            }),
            None,
            5,
        );
        let failed = cond(&st, FAILED);
        assert_eq!(
            (failed.status.as_str(), failed.reason.as_str()),
            ("True", TARGET_IN_USE)
        );
        assert_eq!(failed.message, refusal);
        let ready = cond(&st, READY);
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            ("False", refusal)
        );
        assert_eq!(cond(&st, PROGRESSING).status, "False");
        assert_eq!(st.message.as_deref(), Some(refusal));
        // Another failure keeps its own reason.
        let other = run(
            "running",
            worker(State::Failed, |w| w.error = Some("oplog lost".into())),
            None,
            5,
        );
        assert_eq!(cond(&other, FAILED).reason, "WorkerFailed");
    }

    #[test]
    fn unreachable_worker_keeps_last_figures() {
        let first = run(
            "running",
            worker(State::Running, |w| w.events_applied = 9),
            None,
            1,
        );
        let st = run(
            "running",
            WorkerObs::Unreachable("refused".into()),
            Some(&first),
            2,
        );
        assert_eq!(st.state.as_deref(), Some("running"));
        assert_eq!(st.replication.as_ref().map(|r| r.events_applied), Some(9));
        assert_eq!(cond(&st, READY).reason, "WorkerUnavailable");
        let fresh = run("running", WorkerObs::NotAsked, None, 1);
        assert_eq!(fresh.state.as_deref(), Some("pending"));
    }

    #[test]
    fn finalized_reports_verification() {
        let st = run(
            "finalized",
            worker(State::Finalized, |w| {
                w.finalization = Some(FinalizationReport {
                    step: "done".into(),
                    verification: Some(crate::api::VerificationReport {
                        documents_checked: 10,
                        collections_checked: 2,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            None,
            1,
        );
        assert_eq!(cond(&st, FINALIZED).status, "True");
        assert!(cond(&st, FINALIZED).message.contains("0 mismatches"));
        assert_eq!(cond(&st, PROGRESSING).status, "False");
        assert_eq!(
            st.finalization.as_ref().map(|f| f.step.as_str()),
            Some("done")
        );
    }

    #[test]
    fn preflight_report_becomes_status_and_condition() {
        let sp = spec("running");
        let o = observed(worker(State::Idle, |_| {}));
        let dec = decision();
        let report = crate::api::PreflightReport {
            ok: false,
            summary: "1 of 2 checks failed".into(),
            checks: vec![crate::api::PreflightCheck {
                name: "target.namespaces".into(),
                status: crate::api::CheckStatus::Fail,
                reason: "app.users already exists on the target".into(),
                fix: Some("set spec.dropTargetNamespaces".into()),
            }],
            estimate: Default::default(),
        };
        let outcome = preflight::Outcome::Report(Box::new(report));
        let inputs = |prev, outcome, now| Inputs {
            spec: &sp,
            generation: Some(3),
            observed: &o,
            decision: &dec,
            previous: prev,
            now: t(now),
            preflight: outcome,
        };
        let st = compute(&inputs(None, &outcome, 10));
        let c = cond(&st, PREFLIGHT_PASSED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ChecksFailed")
        );
        assert!(c.message.contains("app.users already exists"));
        let p = st.preflight.as_ref().expect("report kept in status");
        assert_eq!((p.passed, p.observed_generation), (false, Some(3)));
        // Later reconciles without a start keep the report and its transition time.
        let later = compute(&inputs(Some(&st), &preflight::Outcome::NotRun, 50));
        assert_eq!(later.preflight, st.preflight);
        assert_eq!(cond(&later, PREFLIGHT_PASSED).last_transition_time, t(10));
        // No report, no condition.
        let none = compute(&inputs(None, &preflight::Outcome::NotRun, 10));
        assert!(none.conditions.iter().all(|c| c.type_ != PREFLIGHT_PASSED));
    }

    #[test]
    fn a_reverse_shows_its_own_direction_and_progress() {
        let sp: MigrationJobSpec =
            serde_json::from_value(serde_json::json!({"reverseOf": {"name": "mig"}}))
                .expect("spec");
        let dec = decision();
        let status_of = |w: WorkerObs| {
            let o = observed(w);
            compute(&Inputs {
                spec: &sp,
                generation: Some(1),
                observed: &o,
                decision: &dec,
                previous: None,
                now: t(1),
                preflight: &preflight::Outcome::NotRun,
            })
        };
        // Its worker still serves the finalized migration: the reverse has not started.
        let st = status_of(worker(State::Finalized, |w| {
            w.initial_sync.clone_completed = true;
            w.finalization = Some(FinalizationReport::default());
        }));
        assert_eq!(st.state.as_deref(), Some("idle"));
        assert_eq!(st.direction.as_deref(), Some("reverse"));
        assert_eq!(st.finalization, None);
        assert_eq!(cond(&st, FINALIZED).status, "False");
        // Started: the reverse's state, lag and events.
        let st = status_of(worker(State::Running, |w| {
            w.direction = Direction::Reverse;
            w.phase = Some(crate::api::Phase::Replicating);
            w.lag_time_seconds = Some(0.4);
            w.events_applied = 5;
            w.initial_sync.clone_completed = true;
        }));
        assert_eq!(
            (st.state.as_deref(), st.direction.as_deref()),
            (Some("running"), Some("reverse"))
        );
        assert_eq!(st.replication.as_ref().map(|r| r.events_applied), Some(5));
        assert_eq!(cond(&st, READY).status, "True");
        // Its worker restarted and loads the migration again: the reverse's figures stay.
        let mut o = observed(worker(State::Finalized, |_| {}));
        o.reverse = Some(crate::operator::decide::ReverseObs::Ready { started: true });
        let again = compute(&Inputs {
            spec: &sp,
            generation: Some(1),
            observed: &o,
            decision: &dec,
            previous: Some(&st),
            now: t(2),
            preflight: &preflight::Outcome::NotRun,
        });
        assert_eq!(again.state.as_deref(), Some("running"));
        assert_eq!(again.replication, st.replication);
        // Blocked: Ready says why.
        let blocked = Decision {
            blocked: Some("ReverseOfNotFinalized"),
            waiting: Some("MigrationJob shop/mig is not finalized".into()),
            ..decision()
        };
        let o = observed(WorkerObs::NotAsked);
        let st = compute(&Inputs {
            spec: &sp,
            generation: Some(1),
            observed: &o,
            decision: &blocked,
            previous: None,
            now: t(1),
            preflight: &preflight::Outcome::NotRun,
        });
        let ready = cond(&st, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ReverseOfNotFinalized")
        );
        assert!(ready.message.contains("not finalized"));
        assert_eq!(st.direction.as_deref(), Some("reverse"));
    }

    #[test]
    fn a_migration_handed_over_to_its_reverse_stays_finalized() {
        let done = run(
            "finalized",
            worker(State::Finalized, |w| {
                w.finalization = Some(FinalizationReport {
                    verification: Some(crate::api::VerificationReport::default()),
                    ..Default::default()
                })
            }),
            None,
            1,
        );
        let sp = spec("finalized");
        let mut o = observed(WorkerObs::NotAsked);
        o.pod = None;
        o.reversed_by = Some("shop/back".into());
        let dec = decision();
        let st = compute(&Inputs {
            spec: &sp,
            generation: Some(3),
            observed: &o,
            decision: &dec,
            previous: Some(&done),
            now: t(2),
            preflight: &preflight::Outcome::NotRun,
        });
        assert_eq!(st.state.as_deref(), Some("finalized"));
        assert_eq!(cond(&st, FINALIZED).status, "True");
        assert_eq!(cond(&st, FINALIZED).last_transition_time, t(1));
        assert!(cond(&st, FINALIZED).message.contains("0 mismatches"));
        assert_eq!(cond(&st, READY).status, "True");
        // Its worker came back in the reverse (the reverse MigrationJob was deleted): still
        // the migration's figures.
        let mut o = observed(worker(State::Paused, |w| {
            w.direction = Direction::Reverse;
            w.events_applied = 999;
        }));
        o.reversed_by = None;
        let st = compute(&Inputs {
            spec: &sp,
            generation: Some(3),
            observed: &o,
            decision: &dec,
            previous: Some(&done),
            now: t(3),
            preflight: &preflight::Outcome::NotRun,
        });
        assert_eq!(
            (st.state.as_deref(), st.direction.as_deref()),
            (Some("finalized"), Some("forward"))
        );
        assert_eq!(cond(&st, FINALIZED).status, "True");
        assert_ne!(st.replication.as_ref().map(|r| r.events_applied), Some(999));
    }
}
