//! Decide: from the job's spec and what was observed, the actions to take (pure).
//!
//! No I/O and no clock here: everything the decision depends on is in [`Observed`], so every
//! case is a unit test.

use std::time::Duration;

use super::preflight_status::RECHECK;
use super::reverse::Blocked;
use crate::api::crd::{DesiredState, MigrationJobSpec, Verify};
use crate::api::{
    CloneTuning, Direction, FinalizeRequest, ReplicationTuning, ReverseRequest, StartRequest,
    State, VerifyMode, WorkerStatus,
};

/// For a job with `spec.reverseOf`: what it found of the job it reverses.
#[derive(Debug, Clone, PartialEq)]
pub enum ReverseObs {
    /// Finalized: the worker pod serves its migration. `started`: the job's status already
    /// showed the reverse under way (a restarted worker comes back in it by itself).
    Ready { started: bool },
    /// Not yet (or never): why, and what to do.
    Blocked(Blocked),
}

/// The referenced credential and CA Secrets.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialsObs {
    /// All present; hash of the data the worker uses.
    Ready { hash: String },
    /// A Secret or key is missing (the message names it).
    Missing { message: String },
}

/// The worker pod as observed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodObs {
    pub name: String,
    pub ip: Option<String>,
    pub terminating: bool,
    pub restarts: i32,
    pub spec_hash: Option<String>,
    /// A container problem worth showing (`reason: message`), e.g. CrashLoopBackOff.
    pub problem: Option<String>,
}

/// The worker API as observed.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerObs {
    /// No pod, no address or no token yet: not asked.
    NotAsked,
    Unreachable(String),
    Status(Box<WorkerStatus>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub deleting: bool,
    /// How long ago deletion was requested.
    pub deleting_for: Duration,
    pub has_finalizer: bool,
    pub token_secret: bool,
    pub credentials: CredentialsObs,
    pub pod: Option<PodObs>,
    pub worker: WorkerObs,
    /// The `mongoferry.io/retry` annotation.
    pub retry_annotation: Option<String>,
    /// `status.handledRetry`.
    pub handled_retry: Option<String>,
    /// The `mongoferry.io/reset` annotation.
    pub reset_annotation: Option<String>,
    /// `status.handledReset`.
    pub handled_reset: Option<String>,
    /// How long the job has been in the failed state (from its Failed condition).
    pub failed_for: Option<Duration>,
    /// A failed preflight of this generation, holding the start back.
    pub preflight_hold: Option<super::preflight_status::Hold>,
    /// Set for a reverse (a job with `spec.reverseOf`).
    pub reverse: Option<ReverseObs>,
    /// For a finalized job: the reverse (`namespace/name`) that rolls it back, whose worker
    /// replaces this job's.
    pub reversed_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WorkerCall {
    Start(StartRequest),
    Pause,
    Resume { from_failure: bool },
    Finalize(FinalizeRequest),
    Reverse(ReverseRequest),
}

impl WorkerCall {
    pub fn name(&self) -> &'static str {
        match self {
            WorkerCall::Start(_) => "start",
            WorkerCall::Pause => "pause",
            WorkerCall::Resume { .. } => "resume",
            WorkerCall::Finalize(_) => "finalize",
            WorkerCall::Reverse(_) => "reverse",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// The pod was built from another spec or from credentials since rotated.
    Outdated,
    /// The job is being deleted.
    Stopping,
    /// The job is finalized and a reverse's worker takes over its migration.
    Reversed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    AddFinalizer,
    RemoveFinalizer,
    CreateTokenSecret,
    CreatePod,
    DeletePod(DeleteReason),
    Call(WorkerCall),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub requeue: Duration,
    /// Why nothing more happens now (shown in status.message), if anything.
    pub waiting: Option<String>,
    /// The retry annotation consumed by this decision.
    pub handled_retry: Option<String>,
    /// The reset annotation consumed by this decision.
    pub handled_reset: Option<String>,
    /// Why the job is blocked (the Ready condition's reason), e.g. `ReverseOfNotFinalized`.
    pub blocked: Option<&'static str>,
}

impl Decision {
    fn new(actions: Vec<Action>, requeue: Duration) -> Self {
        Decision {
            actions,
            requeue,
            waiting: None,
            handled_retry: None,
            handled_reset: None,
            blocked: None,
        }
    }
    fn waiting(mut self, why: impl Into<String>) -> Self {
        self.waiting = Some(why.into());
        self
    }
}

const FAST: Duration = Duration::from_secs(1);
const SHORT: Duration = Duration::from_secs(2);
const ACTIVE: Duration = Duration::from_secs(3);
const CALM: Duration = Duration::from_secs(5);
const SLOW: Duration = Duration::from_secs(60);
/// How long deletion waits for a pause before stopping the pod anyway.
pub const PAUSE_BEFORE_DELETE: Duration = Duration::from_secs(60);

pub fn decide(spec: &MigrationJobSpec, obs: &Observed, desired_pod_hash: &str) -> Decision {
    if obs.deleting {
        return cleanup(obs);
    }
    let mut actions = Vec::new();
    if !obs.has_finalizer {
        actions.push(Action::AddFinalizer);
    }
    if !obs.token_secret {
        actions.push(Action::CreateTokenSecret);
    }
    if let Some(ReverseObs::Blocked(b)) = &obs.reverse {
        let mut d = Decision::new(actions, CALM).waiting(b.message.clone());
        d.blocked = Some(b.reason);
        return d;
    }
    if let Some(by) = &obs.reversed_by {
        if let Some(pod) = obs.pod.as_ref().filter(|p| !p.terminating) {
            actions.push(Action::DeletePod(DeleteReason::Reversed));
            return Decision::new(actions, SHORT).waiting(format!(
                "stopping worker pod {}: MigrationJob {by} reverses this finalized migration \
                 with its own worker",
                pod.name
            ));
        }
        return Decision::new(actions, SLOW).waiting(format!(
            "finalized; MigrationJob {by} reverses this migration (its worker runs the reverse)"
        ));
    }
    if let CredentialsObs::Missing { message } = &obs.credentials {
        // Leave a running pod alone: it already holds what it needs.
        return Decision::new(actions, Duration::from_secs(15)).waiting(message.clone());
    }
    let Some(pod) = &obs.pod else {
        actions.push(Action::CreatePod);
        return Decision::new(actions, SHORT).waiting("creating the worker pod");
    };
    if pod.terminating {
        return Decision::new(actions, SHORT).waiting(format!(
            "waiting for the old worker pod {} to stop",
            pod.name
        ));
    }
    if pod.spec_hash.as_deref() != Some(desired_pod_hash) {
        actions.push(Action::DeletePod(DeleteReason::Outdated));
        return Decision::new(actions, SHORT).waiting(format!(
            "replacing worker pod {}: its spec or credentials changed",
            pod.name
        ));
    }
    let ws = match &obs.worker {
        WorkerObs::Status(ws) => ws,
        WorkerObs::NotAsked => {
            let why = pod
                .problem
                .clone()
                .unwrap_or_else(|| format!("worker pod {} is starting", pod.name));
            return Decision::new(actions, SHORT).waiting(why);
        }
        WorkerObs::Unreachable(e) => {
            return Decision::new(actions, SHORT).waiting(format!("worker API unreachable: {e}"))
        }
    };
    let mut d = worker_step(spec, ws, obs);
    actions.append(&mut d.actions);
    d.actions = actions;
    d
}

/// What to ask a reachable worker, by desired and actual state.
fn worker_step(spec: &MigrationJobSpec, ws: &WorkerStatus, obs: &Observed) -> Decision {
    use State as S;
    let call = |c: WorkerCall| Decision::new(vec![Action::Call(c)], FAST);
    match (obs.reverse.is_some(), ws.direction) {
        (true, Direction::Forward) => return reverse_start(spec, ws, obs),
        (false, Direction::Reverse) => {
            return Decision::new(vec![], SLOW).waiting(
                "this worker runs the reverse of this migration (begun by a MigrationJob with \
                 spec.reverseOf); this job sends it nothing: recreate the reverse \
                 MigrationJob to drive it",
            )
        }
        _ => {}
    }
    if obs.reverse.is_some()
        && obs
            .reset_annotation
            .as_ref()
            .is_some_and(|r| obs.handled_reset.as_ref() != Some(r))
    {
        return Decision::new(vec![], CALM).waiting(
            "mongoferry.io/reset does not apply to a reverse; remove the annotation (to start \
             the reverse over, delete this MigrationJob and the old source's mongoferry \
             database, then create it again)",
        );
    }
    if super::status::target_in_use(ws) {
        // Another migration owns the target: the worker refuses every start and resume, and
        // a retry, a reset or a new pod would only be refused again. Wait (slowly) for the
        // user to point this job elsewhere or to release the target.
        return Decision::new(vec![], failed_backoff(obs.failed_for)).waiting(
            ws.error
                .clone()
                .unwrap_or_else(|| "the target belongs to another migration".into()),
        );
    }
    if let Some(r) = obs
        .reset_annotation
        .clone()
        .filter(|r| obs.handled_reset.as_ref() != Some(r))
    {
        return match ws.state {
            S::Failed | S::Paused => {
                let mut req = start_request(spec);
                req.reset = true;
                let mut d = call(WorkerCall::Start(req));
                d.handled_reset = Some(r);
                d
            }
            S::Idle => {
                // Nothing to forget: consume it and start as usual.
                let mut d = worker_step_state(spec, ws, obs);
                d.handled_reset = Some(r);
                d
            }
            _ => Decision::new(vec![], CALM).waiting(
                "mongoferry.io/reset is set: pause the migration first (desiredState: paused); \
                 a finalized migration is not reset (create a new MigrationJob)",
            ),
        };
    }
    worker_step_state(spec, ws, obs)
}

/// What to ask a reachable worker, by desired and actual state (no reset pending).
fn worker_step_state(spec: &MigrationJobSpec, ws: &WorkerStatus, obs: &Observed) -> Decision {
    use DesiredState as D;
    use State as S;
    let call = |c: WorkerCall| Decision::new(vec![Action::Call(c)], FAST);
    match (spec.desired_state, ws.state) {
        (_, S::Failed) => match fresh_retry(obs) {
            Some(r) => {
                let mut d = call(WorkerCall::Resume { from_failure: true });
                d.handled_retry = Some(r);
                d
            }
            None => Decision::new(vec![], failed_backoff(obs.failed_for)).waiting(
                "the migration failed; fix the cause, then set annotation \
                     mongoferry.io/retry to a new value to resume from the checkpoint",
            ),
        },
        (D::Running | D::Finalized, S::Idle) => {
            let fresh = fresh_retry(obs);
            match &obs.preflight_hold {
                Some(h) if h.age < RECHECK && fresh.is_none() => {
                    Decision::new(vec![], (RECHECK - h.age).max(FAST)).waiting(format!(
                        "the preflight failed ({}); nothing was started. Fix what \
                         status.preflight names; it is checked again within {} s, at once \
                         on a spec change or a new mongoferry.io/retry annotation value",
                        h.summary,
                        RECHECK.as_secs()
                    ))
                }
                _ => {
                    let mut d = call(WorkerCall::Start(start_request(spec)));
                    d.handled_retry = fresh;
                    d
                }
            }
        }
        (D::Running, S::Paused) => call(WorkerCall::Resume {
            from_failure: false,
        }),
        (D::Paused, S::Running) => call(WorkerCall::Pause),
        (D::Paused, S::Idle) => Decision::new(vec![], CALM)
            .waiting("paused before starting; set desiredState to running to start"),
        (D::Finalized, S::Running | S::Paused) if ws.initial_sync.clone_completed => {
            call(WorkerCall::Finalize(finalize_request(spec)))
        }
        (D::Finalized, S::Running | S::Paused) => Decision::new(vec![], ACTIVE)
            .waiting("finalize requested: waiting for the initial copy to complete"),
        (_, S::Running | S::Finalizing) => Decision::new(vec![], ACTIVE),
        (D::Running | D::Paused, S::Finalized) => Decision::new(vec![], SLOW).waiting(
            "the target holds a finalized migration; nothing more to do \
             (set desiredState to finalized, or use a new target)",
        ),
        (D::Finalized, S::Finalized) => Decision::new(vec![], SLOW),
        (D::Paused, S::Paused) => Decision::new(vec![], CALM),
    }
}

/// A reverse whose worker still serves the migration (direction forward): once that is loaded
/// as finalized, ask for the reverse.
fn reverse_start(spec: &MigrationJobSpec, ws: &WorkerStatus, obs: &Observed) -> Decision {
    use State as S;
    match (ws.state, spec.desired_state) {
        (S::Finalized, DesiredState::Paused) => Decision::new(vec![], CALM).waiting(
            "paused before the reverse started; set desiredState to running (or finalized) to \
             start it",
        ),
        (S::Finalized, _) if matches!(obs.reverse, Some(ReverseObs::Ready { started: true })) => {
            Decision::new(vec![], SHORT).waiting(
                "the worker restarted: waiting for it to come back in the reverse begun earlier \
                 (from its checkpoint on the old source)",
            )
        }
        (S::Finalized, _) => {
            let fresh = fresh_retry(obs);
            match &obs.preflight_hold {
                Some(h) if h.age < RECHECK && fresh.is_none() => {
                    Decision::new(vec![], (RECHECK - h.age).max(FAST)).waiting(format!(
                        "the reverse's checks failed ({}); nothing was started. Fix what \
                         status.preflight names (for writes to the old source since the \
                         cutoff: carry them over, or set spec.reverseOf.force: true); it is \
                         checked again within {} s, at once on a spec change or a new \
                         mongoferry.io/retry annotation value",
                        h.summary,
                        RECHECK.as_secs()
                    ))
                }
                _ => {
                    let mut d = Decision::new(
                        vec![Action::Call(WorkerCall::Reverse(reverse_request(spec)))],
                        FAST,
                    );
                    d.handled_retry = fresh;
                    d
                }
            }
        }
        (S::Failed, _) => Decision::new(vec![], failed_backoff(obs.failed_for)).waiting(format!(
            "the worker cannot load the migration to reverse: {}",
            ws.error.as_deref().unwrap_or("it failed")
        )),
        (state, _) => Decision::new(vec![], SHORT).waiting(format!(
            "waiting for the worker to load the finalized migration from the new cluster \
             (worker: {state}{})",
            if ws.info.is_empty() {
                String::new()
            } else {
                format!(", {}", ws.info)
            }
        )),
    }
}

/// The `POST /reverse` body of a reverse job.
pub fn reverse_request(spec: &MigrationJobSpec) -> ReverseRequest {
    ReverseRequest {
        force: spec.reverse_of.as_ref().is_some_and(|r| r.force),
        replication: spec
            .tuning
            .as_ref()
            .and_then(|t| t.replication.clone())
            .map(|r| ReplicationTuning {
                workers: r.workers,
                bulk_ops: r.bulk_ops,
            }),
        skip_preflight: spec.skip_preflight,
    }
}

/// A `mongoferry.io/retry` value not acted upon yet.
fn fresh_retry(obs: &Observed) -> Option<String> {
    obs.retry_annotation
        .clone()
        .filter(|r| obs.handled_retry.as_ref() != Some(r))
}

/// Polling interval while failed: grows with time in the failed state (5 s to 2 min).
pub fn failed_backoff(failed_for: Option<Duration>) -> Duration {
    (failed_for.unwrap_or_default() / 4).clamp(CALM, Duration::from_secs(120))
}

fn cleanup(obs: &Observed) -> Decision {
    if !obs.has_finalizer {
        return Decision::new(vec![], SLOW);
    }
    let Some(pod) = &obs.pod else {
        return Decision::new(vec![Action::RemoveFinalizer], SLOW);
    };
    if pod.terminating {
        return Decision::new(vec![], SHORT).waiting("stopping the worker pod");
    }
    let running = matches!(&obs.worker, WorkerObs::Status(ws) if ws.state == State::Running);
    if running && obs.deleting_for < PAUSE_BEFORE_DELETE {
        return Decision::new(vec![Action::Call(WorkerCall::Pause)], FAST)
            .waiting("pausing the worker before deletion");
    }
    Decision::new(vec![Action::DeletePod(DeleteReason::Stopping)], SHORT)
        .waiting("stopping the worker pod")
}

pub fn start_request(spec: &MigrationJobSpec) -> StartRequest {
    let ns = spec.namespaces.clone().unwrap_or_default();
    let t = spec.tuning.clone().unwrap_or_default();
    StartRequest {
        include_namespaces: ns.include,
        exclude_namespaces: ns.exclude,
        clone: t.clone.map(|c| CloneTuning {
            parallel_collections: c.parallel_collections,
            read_workers: c.read_workers,
            insert_workers: c.insert_workers,
            batch_bytes: c.batch_bytes,
            partition_bytes: None,
        }),
        replication: t.replication.map(|r| ReplicationTuning {
            workers: r.workers,
            bulk_ops: r.bulk_ops,
        }),
        drop_target_namespaces: spec.drop_target_namespaces,
        skip_preflight: spec.skip_preflight,
        ..Default::default()
    }
}

pub fn finalize_request(spec: &MigrationJobSpec) -> FinalizeRequest {
    let f = spec.finalize.clone().unwrap_or_default();
    FinalizeRequest {
        verify: match f.verify {
            Verify::Full => VerifyMode::Full,
            Verify::Counts => VerifyMode::Counts,
            Verify::None => VerifyMode::None,
        },
        block_source_writes: f.block_source_writes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "h1";

    fn spec(desired: &str) -> MigrationJobSpec {
        serde_json::from_value(serde_json::json!({
            "source": {"uri": "mongodb://a:1"},
            "target": {"uri": "mongodb://b:1"},
            "desiredState": desired,
            "namespaces": {"include": ["app.*"], "exclude": ["app.tmp"]},
            "tuning": {"clone": {"readWorkers": 4}, "replication": {"bulkOps": 500}},
            "finalize": {"verify": "counts", "blockSourceWrites": true}
        }))
        .expect("spec")
    }

    fn ws(state: State, cloned: bool) -> WorkerObs {
        let mut s = WorkerStatus {
            ok: state != State::Failed,
            state,
            ..Default::default()
        };
        s.initial_sync.clone_completed = cloned;
        WorkerObs::Status(Box::new(s))
    }

    fn obs(worker: WorkerObs) -> Observed {
        Observed {
            pod: Some(PodObs {
                name: "mig-worker".into(),
                ip: Some("127.0.0.9".into()),
                spec_hash: Some(HASH.into()),
                ..Default::default()
            }),
            worker,
            ..crate::operator::testing::observed()
        }
    }

    fn calls(d: &Decision) -> Vec<&'static str> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Call(c) => Some(c.name()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn state_table() {
        use State::*;
        let table: &[(&str, State, bool, &[&str])] = &[
            ("running", Idle, false, &["start"]),
            ("running", Running, false, &[]),
            ("running", Paused, false, &["resume"]),
            ("running", Finalizing, true, &[]),
            ("running", Finalized, true, &[]),
            ("running", Failed, false, &[]),
            ("paused", Idle, false, &[]),
            ("paused", Running, false, &["pause"]),
            ("paused", Paused, false, &[]),
            ("paused", Finalizing, true, &[]),
            ("paused", Failed, false, &[]),
            ("finalized", Idle, false, &["start"]),
            ("finalized", Running, false, &[]),
            ("finalized", Running, true, &["finalize"]),
            ("finalized", Paused, true, &["finalize"]),
            ("finalized", Paused, false, &[]),
            ("finalized", Finalizing, true, &[]),
            ("finalized", Finalized, true, &[]),
            ("finalized", Failed, true, &[]),
        ];
        for (desired, state, cloned, want) in table {
            let d = decide(&spec(desired), &obs(ws(*state, *cloned)), HASH);
            assert_eq!(&calls(&d), want, "desired {desired}, worker {state}");
            assert!(d.requeue >= FAST, "no hot loop");
        }
    }

    #[test]
    fn start_and_finalize_carry_the_spec() {
        let d = decide(&spec("running"), &obs(ws(State::Idle, false)), HASH);
        let Some(Action::Call(WorkerCall::Start(req))) = d.actions.first() else {
            panic!("{d:?}")
        };
        assert_eq!(req.include_namespaces, vec!["app.*"]);
        assert_eq!(req.exclude_namespaces, vec!["app.tmp"]);
        assert_eq!(req.clone.as_ref().and_then(|c| c.read_workers), Some(4));
        assert_eq!(req.replication.as_ref().and_then(|r| r.bulk_ops), Some(500));
        assert!(!req.reset);
        let d = decide(&spec("finalized"), &obs(ws(State::Running, true)), HASH);
        assert_eq!(
            d.actions,
            vec![Action::Call(WorkerCall::Finalize(FinalizeRequest {
                verify: VerifyMode::Counts,
                block_source_writes: true
            }))]
        );
    }

    #[test]
    fn bootstraps_finalizer_secret_and_pod() {
        let mut o = obs(WorkerObs::NotAsked);
        o.has_finalizer = false;
        o.token_secret = false;
        o.pod = None;
        let d = decide(&spec("running"), &o, HASH);
        assert_eq!(
            d.actions,
            vec![
                Action::AddFinalizer,
                Action::CreateTokenSecret,
                Action::CreatePod
            ]
        );
    }

    #[test]
    fn missing_credentials_wait_without_pod() {
        let mut o = obs(WorkerObs::NotAsked);
        o.pod = None;
        o.credentials = CredentialsObs::Missing {
            message: "Secret src not found".into(),
        };
        let d = decide(&spec("running"), &o, HASH);
        assert!(d.actions.is_empty());
        assert_eq!(d.waiting.as_deref(), Some("Secret src not found"));
        assert!(d.requeue >= Duration::from_secs(10));
    }

    #[test]
    fn outdated_or_terminating_pods() {
        let mut o = obs(ws(State::Running, false));
        o.pod.as_mut().expect("pod").spec_hash = Some("old".into());
        let d = decide(&spec("running"), &o, HASH);
        assert_eq!(d.actions, vec![Action::DeletePod(DeleteReason::Outdated)]);
        o.pod.as_mut().expect("pod").terminating = true;
        let d = decide(&spec("running"), &o, HASH);
        assert!(d.actions.is_empty());
    }

    #[test]
    fn unreachable_or_starting_worker_only_waits() {
        for w in [
            WorkerObs::NotAsked,
            WorkerObs::Unreachable("refused".into()),
        ] {
            let d = decide(&spec("paused"), &obs(w), HASH);
            assert!(d.actions.is_empty());
            assert!(d.waiting.is_some());
            assert_eq!(d.requeue, SHORT);
        }
    }

    #[test]
    fn failed_waits_with_backoff_until_retry_annotation() {
        let mut o = obs(ws(State::Failed, false));
        o.failed_for = Some(Duration::from_secs(400));
        let d = decide(&spec("running"), &o, HASH);
        assert!(d.actions.is_empty());
        assert_eq!(d.requeue, Duration::from_secs(100));
        assert_eq!(failed_backoff(None), CALM);
        assert_eq!(
            failed_backoff(Some(Duration::from_secs(9999))),
            Duration::from_secs(120)
        );
        o.retry_annotation = Some("1".into());
        let d = decide(&spec("running"), &o, HASH);
        assert_eq!(
            d.actions,
            vec![Action::Call(WorkerCall::Resume { from_failure: true })]
        );
        assert_eq!(d.handled_retry.as_deref(), Some("1"));
        o.handled_retry = Some("1".into());
        assert!(decide(&spec("running"), &o, HASH).actions.is_empty());
    }

    #[test]
    fn deletion_pauses_then_stops_then_releases() {
        let mut o = obs(ws(State::Running, false));
        o.deleting = true;
        assert_eq!(
            decide(&spec("running"), &o, HASH).actions,
            vec![Action::Call(WorkerCall::Pause)]
        );
        o.deleting_for = PAUSE_BEFORE_DELETE;
        assert_eq!(
            decide(&spec("running"), &o, HASH).actions,
            vec![Action::DeletePod(DeleteReason::Stopping)]
        );
        o.worker = ws(State::Paused, false);
        o.deleting_for = Duration::ZERO;
        assert_eq!(
            decide(&spec("running"), &o, HASH).actions,
            vec![Action::DeletePod(DeleteReason::Stopping)]
        );
        o.pod.as_mut().expect("pod").terminating = true;
        assert!(decide(&spec("running"), &o, HASH).actions.is_empty());
        o.pod = None;
        assert_eq!(
            decide(&spec("running"), &o, HASH).actions,
            vec![Action::RemoveFinalizer]
        );
        o.has_finalizer = false;
        assert!(decide(&spec("running"), &o, HASH).actions.is_empty());
    }

    #[test]
    fn failed_preflight_holds_the_start_until_recheck_spec_change_or_retry() {
        use crate::operator::preflight_status::Hold;
        let mut o = obs(ws(State::Idle, false));
        o.preflight_hold = Some(Hold {
            summary: "1 check failed".into(),
            age: Duration::from_secs(20),
        });
        let d = decide(&spec("running"), &o, HASH);
        assert!(calls(&d).is_empty());
        assert_eq!(d.requeue, Duration::from_secs(40));
        assert!(d
            .waiting
            .as_deref()
            .unwrap_or("")
            .contains("1 check failed"));
        o.preflight_hold.as_mut().expect("hold").age = RECHECK;
        assert_eq!(calls(&decide(&spec("running"), &o, HASH)), vec!["start"]);
        o.preflight_hold.as_mut().expect("hold").age = Duration::ZERO;
        o.retry_annotation = Some("7".into());
        let d = decide(&spec("finalized"), &o, HASH);
        assert_eq!(calls(&d), vec!["start"]);
        assert_eq!(d.handled_retry.as_deref(), Some("7"));
        o.handled_retry = Some("7".into());
        assert!(calls(&decide(&spec("running"), &o, HASH)).is_empty());
    }

    #[test]
    fn target_in_use_never_starts_resumes_or_replaces_the_pod() {
        let refusal = "the target already belongs to MigrationJob shop/first (uid u-1); \
                       point this job at another target";
        let mut s = WorkerStatus {
            ok: false,
            state: State::Failed,
            error: Some(refusal.into()),
            failure_reason: Some("TargetInUse".into()),
            ..Default::default()
        };
        s.initial_sync.clone_completed = false;
        let mut o = obs(WorkerObs::Status(Box::new(s)));
        o.retry_annotation = Some("again".into());
        o.reset_annotation = Some("over".into());
        o.failed_for = Some(Duration::from_secs(8));
        for desired in ["running", "paused", "finalized"] {
            let d = decide(&spec(desired), &o, HASH);
            assert!(d.actions.is_empty(), "{desired}: {:?}", d.actions);
            assert_eq!(d.waiting.as_deref(), Some(refusal));
            assert_eq!(d.handled_retry, None, "the retry stays pending");
            assert_eq!(d.handled_reset, None, "the reset stays pending");
            assert!(d.requeue >= CALM, "no hot loop");
        }
    }

    #[test]
    fn start_carries_drop_and_skip_options() {
        let mut s = spec("running");
        s.drop_target_namespaces = true;
        s.skip_preflight = true;
        let r = start_request(&s);
        assert!(r.drop_target_namespaces && r.skip_preflight);
        let r = start_request(&spec("running"));
        assert!(!r.drop_target_namespaces && !r.skip_preflight);
    }

    #[test]
    fn reset_annotation_restarts_a_failed_or_paused_run_once() {
        let mut o = obs(ws(State::Failed, true));
        o.reset_annotation = Some("r1".into());
        let d = decide(&spec("running"), &o, HASH);
        let Some(Action::Call(WorkerCall::Start(req))) = d.actions.first() else {
            panic!("{d:?}")
        };
        assert!(req.reset);
        assert_eq!(d.handled_reset.as_deref(), Some("r1"));
        o.handled_reset = Some("r1".into());
        assert!(
            calls(&decide(&spec("running"), &o, HASH)).is_empty(),
            "once"
        );
        o.handled_reset = None;
        o.worker = ws(State::Paused, true);
        assert_eq!(calls(&decide(&spec("paused"), &o, HASH)), vec!["start"]);
        o.worker = ws(State::Running, true);
        let d = decide(&spec("running"), &o, HASH);
        assert!(d.actions.is_empty());
        assert!(d.waiting.as_deref().unwrap_or("").contains("pause"));
        assert_eq!(d.handled_reset, None, "kept for when it is paused");
        o.worker = ws(State::Idle, false);
        let d = decide(&spec("running"), &o, HASH);
        assert_eq!(calls(&d), vec!["start"]);
        assert_eq!(d.handled_reset.as_deref(), Some("r1"));
    }

    fn reverse_spec(desired: &str, force: bool) -> MigrationJobSpec {
        serde_json::from_value(serde_json::json!({
            "reverseOf": {"name": "mig", "force": force},
            "desiredState": desired,
            "tuning": {"replication": {"workers": 3}},
        }))
        .expect("spec")
    }

    fn reverse_ws(state: State, direction: Direction) -> WorkerObs {
        let mut s = WorkerStatus {
            ok: state != State::Failed,
            state,
            direction,
            ..Default::default()
        };
        s.initial_sync.clone_completed = true;
        WorkerObs::Status(Box::new(s))
    }

    #[test]
    fn a_blocked_reverse_creates_no_pod_and_says_why() {
        let mut o = crate::operator::testing::observed();
        o.reverse = Some(ReverseObs::Blocked(Blocked {
            reason: crate::operator::reverse::NOT_FINALIZED,
            message: "MigrationJob shop/mig is not finalized (state: running)".into(),
        }));
        let d = decide(&reverse_spec("running", false), &o, HASH);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert_eq!(d.blocked, Some("ReverseOfNotFinalized"));
        assert!(d.waiting.as_deref().unwrap_or("").contains("not finalized"));
        assert_eq!(d.requeue, CALM, "checked again until it is finalized");
    }

    #[test]
    fn a_reverse_starts_once_its_worker_loaded_the_finalized_migration() {
        let mut o = obs(reverse_ws(State::Idle, Direction::Forward));
        o.reverse = Some(ReverseObs::Ready { started: false });
        let d = decide(&reverse_spec("running", true), &o, HASH);
        assert!(calls(&d).is_empty());
        assert!(d
            .waiting
            .as_deref()
            .unwrap_or("")
            .contains("waiting for the worker"));
        o.worker = reverse_ws(State::Finalized, Direction::Forward);
        let d = decide(&reverse_spec("finalized", true), &o, HASH);
        let Some(Action::Call(WorkerCall::Reverse(req))) = d.actions.first() else {
            panic!("{d:?}")
        };
        assert!(req.force);
        assert_eq!(req.replication.as_ref().and_then(|r| r.workers), Some(3));
        assert!(calls(&decide(&reverse_spec("paused", false), &o, HASH)).is_empty());
        // A refused reverse waits for a fix, like a failed preflight.
        o.preflight_hold = Some(crate::operator::preflight_status::Hold {
            age: Duration::from_secs(1),
            summary: "reverse.oldSourceWrites failed".into(),
        });
        let d = decide(&reverse_spec("running", false), &o, HASH);
        assert!(calls(&d).is_empty());
        assert!(
            d.waiting
                .as_deref()
                .unwrap_or("")
                .contains("spec.reverseOf.force"),
            "{d:?}"
        );
        o.retry_annotation = Some("r1".into());
        assert_eq!(
            calls(&decide(&reverse_spec("running", false), &o, HASH)),
            vec!["reverse"]
        );
        // A restarted worker loads the migration first, then comes back in the reverse: it
        // is not asked to begin another.
        o.reverse = Some(ReverseObs::Ready { started: true });
        let d = decide(&reverse_spec("running", false), &o, HASH);
        assert!(calls(&d).is_empty(), "{d:?}");
        assert!(d.waiting.as_deref().unwrap_or("").contains("come back"));
    }

    #[test]
    fn a_started_reverse_is_driven_like_a_migration() {
        let mut o = obs(reverse_ws(State::Running, Direction::Reverse));
        o.reverse = Some(ReverseObs::Ready { started: false });
        assert!(calls(&decide(&reverse_spec("running", false), &o, HASH)).is_empty());
        assert_eq!(
            calls(&decide(&reverse_spec("paused", false), &o, HASH)),
            vec!["pause"]
        );
        assert_eq!(
            calls(&decide(&reverse_spec("finalized", false), &o, HASH)),
            vec!["finalize"]
        );
        o.reset_annotation = Some("x".into());
        o.worker = reverse_ws(State::Paused, Direction::Reverse);
        let d = decide(&reverse_spec("paused", false), &o, HASH);
        assert!(calls(&d).is_empty(), "no reset of a reverse");
        // A forward job whose worker came back in the reverse sends it nothing.
        let o = obs(reverse_ws(State::Running, Direction::Reverse));
        assert!(calls(&decide(&spec("finalized"), &o, HASH)).is_empty());
    }

    #[test]
    fn a_reversed_migration_hands_its_worker_over() {
        let mut o = obs(ws(State::Finalized, true));
        o.reversed_by = Some("shop/back".into());
        let d = decide(&spec("finalized"), &o, HASH);
        assert_eq!(d.actions, vec![Action::DeletePod(DeleteReason::Reversed)]);
        o.pod = None;
        o.worker = WorkerObs::NotAsked;
        let d = decide(&spec("finalized"), &o, HASH);
        assert!(d.actions.is_empty(), "no new pod: {:?}", d.actions);
        assert!(d.waiting.as_deref().unwrap_or("").contains("shop/back"));
    }
}
