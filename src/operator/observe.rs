//! Observe: read the job's worker pod, its Secrets and the worker's /status.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::crd::{Endpoint, MigrationJob};

use super::context::Context;
use super::decide::{CredentialsObs, Observed, PodObs, WorkerObs};
use super::error::{kube, Error, Result};
use super::podspec::{self, ANNOTATION_SPEC_HASH, TOKEN_KEY, WORKER_PORT};
use super::status::{true_since, FAILED};
use super::worker_client::WorkerClient;

pub const FINALIZER: &str = "mongoferry.io/stop-worker";
pub const RETRY_ANNOTATION: &str = "mongoferry.io/retry";
pub const RESET_ANNOTATION: &str = "mongoferry.io/reset";

/// What observation produced besides [`Observed`].
pub struct Snapshot {
    pub observed: Observed,
    pub token: Option<String>,
    pub credentials_hash: String,
    pub pod_ip: Option<String>,
}

pub async fn observe(ctx: &Context, job: &MigrationJob, now: Timestamp) -> Result<Snapshot> {
    let ns = job.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = job.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    let token = secrets
        .get_opt(&podspec::token_secret_name(&name))
        .await
        .map_err(kube("reading the API token Secret"))?
        .and_then(|s| secret_value(&s, TOKEN_KEY));
    let credentials = credentials(&secrets, job, &ns).await?;
    let credentials_hash = match &credentials {
        CredentialsObs::Ready { hash } => hash.clone(),
        CredentialsObs::Missing { .. } => String::new(),
    };
    let pod = pods
        .get_opt(&podspec::pod_name(&name))
        .await
        .map_err(kube("reading the worker pod"))?
        .filter(|p| owned_by(p, job));
    let pod_obs = pod.as_ref().map(pod_obs);
    let pod_ip = pod
        .as_ref()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .and_then(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()));
    let worker = match (&pod_obs, &pod_ip, &token) {
        (Some(p), Some(ip), Some(tok)) if !p.terminating => worker_status(ctx, ip, tok).await,
        _ => WorkerObs::NotAsked,
    };
    let elapsed = |t: Timestamp| Duration::try_from(now.duration_since(t)).unwrap_or_default();
    let observed = Observed {
        deleting: job.metadata.deletion_timestamp.is_some(),
        deleting_for: job
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| elapsed(t.0))
            .unwrap_or_default(),
        has_finalizer: job.finalizers().iter().any(|f| f == FINALIZER),
        token_secret: token.is_some(),
        credentials,
        pod: pod_obs,
        worker,
        retry_annotation: job.annotations().get(RETRY_ANNOTATION).cloned(),
        handled_retry: job.status.as_ref().and_then(|s| s.handled_retry.clone()),
        reset_annotation: job.annotations().get(RESET_ANNOTATION).cloned(),
        handled_reset: job.status.as_ref().and_then(|s| s.handled_reset.clone()),
        failed_for: job
            .status
            .as_ref()
            .and_then(|s| true_since(s, FAILED))
            .map(|t| elapsed(t.0)),
        preflight_hold: super::preflight::hold(
            job.status.as_ref().and_then(|s| s.preflight.as_ref()),
            job.metadata.generation,
            now,
        ),
    };
    Ok(Snapshot {
        observed,
        token,
        credentials_hash,
        pod_ip,
    })
}

pub async fn worker_status(ctx: &Context, ip: &str, token: &str) -> WorkerObs {
    let c = WorkerClient::new(ctx.http.clone(), ip, WORKER_PORT, token.to_string());
    match c.status().await {
        Ok(s) => WorkerObs::Status(Box::new(s)),
        Err(e) => WorkerObs::Unreachable(e.to_string()),
    }
}

fn owned_by(p: &Pod, job: &MigrationJob) -> bool {
    let uid = job.uid();
    p.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == uid.as_ref())
}

fn pod_obs(p: &Pod) -> PodObs {
    let status = p.status.as_ref();
    let cs = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|v| v.iter().find(|c| c.name == podspec::CONTAINER));
    let problem = cs
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .filter(|w| {
            matches!(
                w.reason.as_deref(),
                Some(
                    "CrashLoopBackOff"
                        | "CreateContainerConfigError"
                        | "CreateContainerError"
                        | "ErrImagePull"
                        | "ImagePullBackOff"
                        | "ErrImageNeverPull"
                        | "InvalidImageName"
                )
            )
        })
        .map(|w| {
            let mut msg = format!(
                "worker pod: {}: {}",
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            );
            // Why the last run ended (OOMKilled names the memory limit).
            if let Some(t) = cs
                .and_then(|c| c.last_state.as_ref())
                .and_then(|l| l.terminated.as_ref())
            {
                msg.push_str(&format!(
                    "; last run ended: {} (exit code {})",
                    t.reason.as_deref().unwrap_or("unknown"),
                    t.exit_code
                ));
            }
            msg
        });
    PodObs {
        name: p.name_any(),
        ip: status.and_then(|s| s.pod_ip.clone()),
        terminating: p.metadata.deletion_timestamp.is_some(),
        restarts: cs.map(|c| c.restart_count).unwrap_or(0),
        spec_hash: p.annotations().get(ANNOTATION_SPEC_HASH).cloned(),
        problem,
    }
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim_end().to_string())
        .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key).cloned()))
}

/// Check every referenced Secret and key; hash the data the worker will use.
async fn credentials(
    secrets: &Api<Secret>,
    job: &MigrationJob,
    ns: &str,
) -> Result<CredentialsObs> {
    let mut refs: Vec<(String, String, String)> = Vec::new();
    let mut add = |side: &str, ep: &Endpoint| {
        if let Some(c) = &ep.credentials_secret_ref {
            let field = format!("spec.{side}.credentialsSecretRef");
            refs.push((field.clone(), c.name.clone(), c.username_key.clone()));
            refs.push((field, c.name.clone(), c.password_key.clone()));
        }
        if let Some(ca) = ep.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
            refs.push((
                format!("spec.{side}.tls.caSecretRef"),
                ca.name.clone(),
                ca.key.clone(),
            ));
        }
    };
    add("source", &job.spec.source);
    add("target", &job.spec.target);
    let mut h = Sha256::new();
    for (field, name, key) in refs {
        let Some(s) = secrets
            .get_opt(&name)
            .await
            .map_err(kube("reading a credentials Secret"))?
        else {
            return Ok(CredentialsObs::Missing {
                message: format!(
                    "Secret {name} (named by {field}) does not exist in namespace {ns}; create it"
                ),
            });
        };
        let value = s
            .data
            .as_ref()
            .and_then(|d| d.get(&key))
            .map(|b| b.0.clone());
        let Some(value) = value else {
            return Ok(CredentialsObs::Missing {
                message: format!("Secret {name} (named by {field}) has no key {key:?}"),
            });
        };
        h.update(name.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        h.update([0]);
        h.update(&value);
        h.update([0]);
    }
    let hash: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(CredentialsObs::Ready { hash })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_looping_worker_names_its_last_termination() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "mig-worker"},
            "status": {"podIP": "10.0.0.7", "containerStatuses": [{
                "name": podspec::CONTAINER, "image": "mongoferry", "imageID": "", "ready": false,
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
            }]}
        }))
        .expect("pod");
        let obs = pod_obs(&pod);
        assert_eq!(obs.restarts, 3);
        assert_eq!(
            obs.problem.as_deref(),
            Some(
                "worker pod: CrashLoopBackOff: back-off 10s; last run ended: OOMKilled (exit code 137)"
            )
        );
    }
}
