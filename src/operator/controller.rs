//! The reconcile pipeline: observe → decide (pure) → act → status (server-side apply on
//! the status subresource, field manager `mongoferry-operator`; spec is never written).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Api, ResourceExt};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::api::crd::{MigrationJob, MigrationJobStatus};

use super::context::Context;
use super::decide::{decide, Action};
use super::error::{kube, Error, Result};
use super::observe::{observe, worker_status};
use super::podspec::{self, PodInputs, ANNOTATION_SPEC_HASH};
use super::{act, status};

pub const FIELD_MANAGER: &str = "mongoferry-operator";

fn key(job: &MigrationJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// One reconciliation, in a span `reconcile` carrying the job (`namespace/name`), so every
/// log line of it (text or JSON) names the job.
pub async fn reconcile(job: Arc<MigrationJob>, ctx: Arc<Context>) -> Result<Requeue> {
    let span = info_span!("reconcile", job = %key(&job));
    async {
        let started = Instant::now();
        let r = reconcile_job(&job, &ctx).await;
        let took = started.elapsed();
        ctx.metrics.observe_reconcile(took);
        debug!(
            took_ms = took.as_millis() as u64,
            ok = r.is_ok(),
            "reconciled"
        );
        if r.is_ok() {
            ctx.clear_failures(&key(&job));
        }
        r
    }
    .instrument(span)
    .await
}

/// Failed reconciliations back off exponentially per job: 1 s, 2 s, 4 s … 5 min.
pub fn error_policy(job: Arc<MigrationJob>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.errors.with_label_values(&[err.kind()]).inc();
    let n = ctx.record_failure(&key(&job));
    let delay = backoff(n);
    warn!(job = %key(&job), error = %err, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

async fn reconcile_job(job: &MigrationJob, ctx: &Context) -> Result<Requeue> {
    let now = Timestamp::now();
    let mut snap = observe(ctx, job, now).await?;
    // A reverse that cannot start yet has no pod to build (its decision creates none).
    let pod = match &snap.migration {
        Some(m) => podspec::worker_pod(
            job,
            &PodInputs {
                default_image: &ctx.worker_image,
                service_account: ctx.worker_service_account.as_deref(),
                credentials_hash: &snap.credentials_hash,
                owner: act::owner(job)?,
                migration: m,
            },
        ),
        None => Default::default(),
    };
    let hash = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SPEC_HASH).cloned())
        .unwrap_or_default();
    let decision = decide(&job.spec, &snap.observed, &hash);
    debug!(actions = ?decision.actions, "decided");
    let applied = act::run(ctx, job, &snap, &pod, &decision.actions).await?;
    if snap.observed.deleting {
        if decision.actions.contains(&Action::RemoveFinalizer) {
            info!("worker stopped; finalizer removed");
            let ns = job.namespace().unwrap_or_default();
            ctx.metrics.forget_job(&ns, &job.name_any());
            ctx.forget_announced(&key(job), None);
        }
        return Ok(Requeue::requeue(decision.requeue));
    }
    if applied.called_worker {
        if let (Some(ip), Some(tok)) = (&snap.pod_ip, &snap.token) {
            snap.observed.worker = worker_status(ctx, ip, tok).await;
        }
    }
    let new = status::compute(&status::Inputs {
        spec: &job.spec,
        generation: job.metadata.generation,
        observed: &snap.observed,
        decision: &decision,
        previous: job.status.as_ref(),
        now: Time(now),
        preflight: &applied.preflight,
    });
    write_status(ctx, job, &new).await?;
    let ns = job.namespace().unwrap_or_default();
    ctx.metrics.set_job(&ns, &job.name_any(), &new);
    Ok(Requeue::requeue(decision.requeue))
}

async fn write_status(ctx: &Context, job: &MigrationJob, new: &MigrationJobStatus) -> Result<()> {
    let old = job.status.clone().unwrap_or_default();
    if &old == new {
        return Ok(());
    }
    let ns = job.namespace().ok_or(Error::MissingField("namespace"))?;
    let api: Api<MigrationJob> = Api::namespaced(ctx.client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": "mongoferry.io/v1alpha1",
        "kind": "MigrationJob",
        "status": new,
    });
    api.patch_status(
        &job.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube("writing the status"))?;
    state_events(ctx, job, &old, new).await;
    Ok(())
}

/// One Event per change of state, and one Warning per new failure: a Failed condition that
/// appears or changes its message (for `TargetInUse`, only its appearance: the worker repeats
/// the same refusal for as long as the other job owns the target).
async fn state_events(
    ctx: &Context,
    job: &MigrationJob,
    old: &MigrationJobStatus,
    new: &MigrationJobStatus,
) {
    let from = old.state.as_deref().unwrap_or("none");
    let to = new.state.as_deref().unwrap_or("pending");
    let k = key(job);
    if let Some((reason, message)) = new_block(old, new) {
        if ctx.announce(&k, "blocked", &format!("{reason}: {message}")) {
            ctx.event(job, true, &reason, message).await;
        }
    }
    if from != to && ctx.announce(&k, "state", to) {
        info!(from, to, "state changed");
        ctx.event(
            job,
            to == "failed",
            "StateChanged",
            format!("{from} → {to}"),
        )
        .await;
    }
    match new_failure(old, new) {
        Some((reason, message)) if ctx.announce(&k, "failure", &format!("{reason}: {message}")) => {
            ctx.event(job, true, &reason, message).await;
        }
        Some(_) => {}
        None if !status::is_true(new, status::FAILED) => ctx.forget_announced(&k, Some("failure")),
        None => {}
    }
}

/// The reason and message of a reverse's block (`ReverseOf…` on Ready) that `new` shows and
/// `old` did not.
pub fn new_block(old: &MigrationJobStatus, new: &MigrationJobStatus) -> Option<(String, String)> {
    let blocked = |s: &MigrationJobStatus| {
        s.conditions
            .iter()
            .find(|c| {
                c.type_ == status::READY && c.status == "False" && c.reason.starts_with("ReverseOf")
            })
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let now = blocked(new)?;
    (blocked(old).as_ref() != Some(&now)).then_some(now)
}

/// The Failed condition (reason, message) of `new` worth an Event: True now, and not the one
/// already reported in `old`.
pub fn new_failure(old: &MigrationJobStatus, new: &MigrationJobStatus) -> Option<(String, String)> {
    let failed = |s: &MigrationJobStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::FAILED && c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let now = failed(new)?;
    let before = failed(old);
    let same = match &before {
        Some((reason, _)) if now.0 == status::TARGET_IN_USE => reason == &now.0,
        Some(b) => b == &now,
        None => false,
    };
    (!same).then_some(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(reason: &str, message: &str) -> MigrationJobStatus {
        MigrationJobStatus {
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: status::FAILED.into(),
                status: "True".into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn one_failure_event_per_transition() {
        let ok = MigrationJobStatus::default();
        let a = failed("WorkerFailed", "auth failed");
        assert_eq!(
            new_failure(&ok, &a),
            Some(("WorkerFailed".into(), "auth failed".into()))
        );
        assert_eq!(new_failure(&a, &a), None, "same failure: no new Event");
        let b = failed("WorkerFailed", "network down");
        assert!(
            new_failure(&a, &b).is_some(),
            "another message: a new Event"
        );
        assert_eq!(new_failure(&a, &ok), None, "recovered: no failure Event");
        let t1 = failed(status::TARGET_IN_USE, "owned by shop/first (uid 1)");
        let t2 = failed(status::TARGET_IN_USE, "owned by shop/first (uid 1), again");
        assert_eq!(
            new_failure(&ok, &t1).map(|f| f.0),
            Some(status::TARGET_IN_USE.to_string())
        );
        assert_eq!(
            new_failure(&t1, &t2),
            None,
            "TargetInUse: once per transition"
        );
        assert!(new_failure(&a, &t1).is_some());
    }

    #[tokio::test]
    async fn target_in_use_fails_the_job_once_and_never_starts_it() {
        use crate::api::{State, WorkerStatus};
        use crate::operator::testing::{
            context, fake_worker, job_with_credentials, secret, token_secret, FakeApi,
        };
        let refusal = "target b:1 belongs to MigrationJob shop/first (uid u-first); point this \
                       job at another target, or drop the target's mongoferry database";
        let (port, worker) = fake_worker(WorkerStatus {
            ok: false,
            state: State::Failed,
            error: Some(refusal.into()),
            failure_reason: Some(status::TARGET_IN_USE.into()),
            ..Default::default()
        })
        .await;
        let api = FakeApi::new();
        let mut job = job_with_credentials();
        job.metadata.finalizers = Some(vec![super::super::observe::FINALIZER.into()]);
        job.metadata.generation = Some(1);
        // The pod as this operator builds it (so its spec hash is current).
        let creds = secret("creds", &[("username", "u"), ("password", "p")]);
        let probe = context(&api, vec![], vec![token_secret("t"), creds.clone()], port);
        let hash = observe(&probe, &job, Timestamp::now())
            .await
            .expect("observe")
            .credentials_hash;
        let mut pod = podspec::worker_pod(
            &job,
            &PodInputs {
                default_image: &probe.worker_image,
                service_account: None,
                credentials_hash: &hash,
                owner: act::owner(&job).expect("owner"),
                migration: &crate::operator::reverse::own(&job).expect("migration"),
            },
        );
        pod.status = crate::operator::testing::worker_pod("uid-1", "Running").status;
        let ctx = context(&api, vec![pod], vec![token_secret("t"), creds], port);

        reconcile_job(&job, &ctx).await.expect("reconcile");
        let calls = api.calls();
        let patch = calls
            .iter()
            .find(|c| c.is("PATCH", "/migrationjobs/mig/status"))
            .expect("status written");
        assert!(
            patch.uri.contains("fieldManager=mongoferry-operator"),
            "{}",
            patch.uri
        );
        let st: MigrationJobStatus =
            serde_json::from_value(patch.body["status"].clone()).expect("status");
        let cond = |t: &str| {
            st.conditions
                .iter()
                .find(|c| c.type_ == t)
                .cloned()
                .expect("condition")
        };
        let failed = cond(status::FAILED);
        assert_eq!(
            (
                failed.status.as_str(),
                failed.reason.as_str(),
                failed.message.as_str()
            ),
            ("True", status::TARGET_IN_USE, refusal)
        );
        let ready = cond(status::READY);
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            ("False", refusal)
        );
        assert_eq!(cond(status::PROGRESSING).status, "False");
        assert_eq!(st.message.as_deref(), Some(refusal));
        assert_eq!(
            api.event_reasons(),
            vec!["StateChanged", status::TARGET_IN_USE]
        );

        // A reconcile that still reads the job as it was before the status write (the watch
        // has not delivered it yet) writes the status again but announces nothing twice.
        reconcile_job(&job, &ctx).await.expect("reconcile");
        assert_eq!(
            api.event_reasons(),
            vec!["StateChanged", status::TARGET_IN_USE]
        );

        // Next reconcile, status as written: no new Event, no status write, no start.
        job.status = Some(st);
        let before = api.calls().len();
        reconcile_job(&job, &ctx).await.expect("reconcile");
        assert_eq!(api.calls().len(), before, "{:?}", &api.calls()[before..]);
        let w = worker.lock().expect("worker");
        assert!(
            w.calls.iter().all(|c| c == "GET /status"),
            "only status was read: {:?}",
            w.calls
        );
    }

    #[test]
    fn error_backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }
}
