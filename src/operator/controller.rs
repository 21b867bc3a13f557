//! The reconcile pipeline: observe → decide (pure) → apply → status (server-side apply on
//! the status subresource, field manager `mongoferry-operator`; spec is never written).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::crd::{MigrationJob, MigrationJobStatus};

use super::context::Context;
use super::decide::{decide, Action};
use super::error::{kube, Error, Result};
use super::observe::{observe, worker_status};
use super::podspec::{self, PodInputs, ANNOTATION_SPEC_HASH};
use super::{apply, status};

pub const FIELD_MANAGER: &str = "mongoferry-operator";

fn key(job: &MigrationJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

pub async fn reconcile(job: Arc<MigrationJob>, ctx: Arc<Context>) -> Result<Requeue> {
    let started = Instant::now();
    let r = reconcile_job(&job, &ctx).await;
    ctx.metrics.observe_reconcile(started.elapsed());
    if r.is_ok() {
        ctx.clear_failures(&key(&job));
    }
    r
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
    let inputs = PodInputs {
        default_image: &ctx.worker_image,
        service_account: ctx.worker_service_account.as_deref(),
        credentials_hash: &snap.credentials_hash,
        owner: apply::owner(job)?,
    };
    let pod = podspec::worker_pod(job, &inputs);
    let hash = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SPEC_HASH).cloned())
        .unwrap_or_default();
    let decision = decide(&job.spec, &snap.observed, &hash);
    debug!(job = %key(job), actions = ?decision.actions, "decided");
    let applied = apply::apply(ctx, job, &snap, &pod, &decision.actions).await?;
    if snap.observed.deleting {
        if decision.actions.contains(&Action::RemoveFinalizer) {
            info!(job = %key(job), "worker stopped; finalizer removed");
            let ns = job.namespace().unwrap_or_default();
            ctx.metrics.forget_job(&ns, &job.name_any());
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

/// One Event per change of state (and of the failure message).
async fn state_events(
    ctx: &Context,
    job: &MigrationJob,
    old: &MigrationJobStatus,
    new: &MigrationJobStatus,
) {
    let from = old.state.as_deref().unwrap_or("none");
    let to = new.state.as_deref().unwrap_or("pending");
    let failed_now = status::is_true(new, status::FAILED);
    let fail_msg = |s: &MigrationJobStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::FAILED && c.status == "True")
            .map(|c| c.message.clone())
    };
    if from != to {
        info!(job = %key(job), from, to, "state changed");
        ctx.event(
            job,
            to == "failed",
            "StateChanged",
            format!("{from} → {to}"),
        )
        .await;
    }
    if failed_now && fail_msg(old) != fail_msg(new) {
        let reason = new
            .conditions
            .iter()
            .find(|c| c.type_ == status::FAILED)
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| "Failed".into());
        ctx.event(job, true, &reason, fail_msg(new).unwrap_or_default())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }
}
