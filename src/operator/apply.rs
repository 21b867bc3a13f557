//! Apply: carry out the decided actions against the API server and the worker.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tracing::info;

use crate::api::crd::MigrationJob;

use super::context::Context;
use super::decide::{Action, DeleteReason, WorkerCall};
use super::error::{kube, Error, Result};
use super::observe::{Snapshot, FINALIZER};
use super::podspec::{self, WORKER_PORT};
use super::preflight::Outcome;
use super::worker_client::{CallOutcome, WorkerClient};

/// Whether a worker call was made (the caller re-reads /status then), and what a start
/// learnt of the preflight.
pub struct Applied {
    pub called_worker: bool,
    pub preflight: Outcome,
}

pub async fn apply(
    ctx: &Context,
    job: &MigrationJob,
    snap: &Snapshot,
    pod: &Pod,
    actions: &[Action],
) -> Result<Applied> {
    let ns = job.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = job.name_any();
    let jobs: Api<MigrationJob> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut called_worker = false;
    let mut preflight = Outcome::NotRun;
    for a in actions {
        match a {
            Action::AddFinalizer | Action::RemoveFinalizer => {
                let mut list: Vec<String> = job
                    .finalizers()
                    .iter()
                    .filter(|f| *f != FINALIZER)
                    .cloned()
                    .collect();
                if matches!(a, Action::AddFinalizer) {
                    list.push(FINALIZER.into());
                }
                // resourceVersion makes this a compare-and-swap on the list.
                let patch = serde_json::json!({"metadata": {
                    "finalizers": list,
                    "resourceVersion": job.resource_version(),
                }});
                jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube("updating the finalizer"))?;
            }
            Action::CreateTokenSecret => {
                let owner = owner(job)?;
                let s = podspec::token_secret(job, owner, &podspec::new_token());
                let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
                ignore_exists(secrets.create(&PostParams::default(), &s).await)
                    .map_err(kube("creating the API token Secret"))?;
            }
            Action::CreatePod => {
                ignore_exists(pods.create(&PostParams::default(), pod).await)
                    .map_err(kube("creating the worker pod"))?;
                info!(job = %name, pod = %pod.name_any(), "created worker pod");
                ctx.event(
                    job,
                    false,
                    "WorkerPodCreated",
                    format!("created worker pod {}", pod.name_any()),
                )
                .await;
            }
            Action::DeletePod(reason) => {
                let pod_name = podspec::pod_name(&name);
                match pods.delete(&pod_name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(kube("deleting the worker pod")(e)),
                }
                let (reason, note) = match reason {
                    DeleteReason::Outdated => (
                        "WorkerPodReplaced",
                        format!("replacing worker pod {pod_name}: its spec or credentials changed; it resumes from its checkpoint"),
                    ),
                    DeleteReason::Stopping => (
                        "WorkerStopping",
                        format!("stopping worker pod {pod_name}; target data is left in place"),
                    ),
                };
                info!(job = %name, pod = %pod_name, reason, "deleting worker pod");
                ctx.event(job, false, reason, note).await;
            }
            Action::Call(c) => {
                let (Some(ip), Some(token)) = (&snap.pod_ip, &snap.token) else {
                    continue;
                };
                let client = WorkerClient::new(ctx.http.clone(), ip, WORKER_PORT, token.clone());
                called_worker = true;
                match client.call(c).await? {
                    CallOutcome::Accepted { preflight: report } => {
                        info!(job = %name, call = c.name(), "worker accepted");
                        ctx.event(job, false, call_reason(c), call_note(c)).await;
                        if matches!(c, WorkerCall::Start(_)) {
                            preflight = match report {
                                Some(r) => Outcome::Report(r),
                                None => Outcome::Skipped,
                            };
                        }
                    }
                    CallOutcome::Refused {
                        message,
                        preflight: Some(r),
                    } => {
                        info!(job = %name, summary = %r.summary, "preflight refused the start");
                        ctx.event(job, true, "PreflightFailed", message).await;
                        preflight = Outcome::Report(r);
                    }
                    CallOutcome::Refused { message, .. } => {
                        info!(job = %name, call = c.name(), refusal = %message, "worker refused");
                        ctx.event(
                            job,
                            true,
                            "WorkerRefused",
                            format!("{}: {message}", c.name()),
                        )
                        .await;
                    }
                }
            }
        }
    }
    Ok(Applied {
        called_worker,
        preflight,
    })
}

fn call_reason(c: &WorkerCall) -> &'static str {
    match c {
        WorkerCall::Start(_) => "MigrationStarted",
        WorkerCall::Pause => "PauseRequested",
        WorkerCall::Resume {
            from_failure: false,
        } => "ResumeRequested",
        WorkerCall::Resume { from_failure: true } => "RetryRequested",
        WorkerCall::Finalize(_) => "FinalizeRequested",
    }
}

fn call_note(c: &WorkerCall) -> String {
    match c {
        WorkerCall::Start(r) => format!(
            "asked the worker to start (include {:?}, exclude {:?})",
            r.include_namespaces, r.exclude_namespaces
        ),
        WorkerCall::Pause => "asked the worker to pause".into(),
        WorkerCall::Resume { from_failure } => {
            format!("asked the worker to resume (fromFailure {from_failure})")
        }
        WorkerCall::Finalize(r) => format!(
            "asked the worker to finalize (verify {:?}, blockSourceWrites {})",
            r.verify, r.block_source_writes
        )
        .to_lowercase(),
    }
}

pub fn owner(
    job: &MigrationJob,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    use kube::Resource;
    job.controller_owner_ref(&())
        .ok_or(Error::MissingField("uid"))
}

fn ignore_exists<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
