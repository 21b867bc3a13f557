//! Act: carry out the decided actions against the API server and the worker.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tracing::info;

use crate::api::crd::MigrationJob;

use super::context::Context;
use super::decide::{Action, DeleteReason, WorkerCall};
use super::error::{kube, Error, Result};
use super::observe::{Snapshot, FINALIZER};
use super::podspec;
use super::preflight_status::Outcome;
use super::worker_client::{CallOutcome, WorkerClient};

/// Whether a worker call was made (the caller re-reads /status then), and what a start
/// learnt of the preflight.
pub struct Applied {
    pub called_worker: bool,
    pub preflight: Outcome,
}

pub async fn run(
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
                // The cache may lag behind a pod created a moment ago: then the pod exists
                // already, and nothing happened worth an Event.
                let created = ignore_exists(pods.create(&PostParams::default(), pod).await)
                    .map_err(kube("creating the worker pod"))?;
                if created {
                    info!(pod = %pod.name_any(), "created worker pod");
                    ctx.event(
                        job,
                        false,
                        "WorkerPodCreated",
                        format!("created worker pod {}", pod.name_any()),
                    )
                    .await;
                }
            }
            Action::DeletePod(reason) => {
                let pod_name = podspec::pod_name(&name);
                match pods.delete(&pod_name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    // Already gone (the cache had not seen it yet).
                    Err(kube::Error::Api(s)) if s.code == 404 => continue,
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
                    DeleteReason::Reversed => (
                        "WorkerHandedOver",
                        format!("stopping worker pod {pod_name}: this migration is finalized and a reverse's worker takes it over"),
                    ),
                };
                info!(pod = %pod_name, reason, "deleting worker pod");
                ctx.event(job, false, reason, note).await;
            }
            Action::Call(c) => {
                let (Some(ip), Some(token)) = (&snap.pod_ip, &snap.token) else {
                    continue;
                };
                let client =
                    WorkerClient::new(ctx.http.clone(), ip, ctx.worker_port, token.clone());
                called_worker = true;
                match client.call(c).await? {
                    CallOutcome::Accepted { preflight: report } => {
                        info!(call = c.name(), "worker accepted");
                        ctx.event(job, false, call_reason(c), call_note(c)).await;
                        if matches!(c, WorkerCall::Start(_) | WorkerCall::Reverse(_)) {
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
                        info!(summary = %r.summary, "preflight refused the start");
                        ctx.event(job, true, "PreflightFailed", message).await;
                        preflight = Outcome::Report(r);
                    }
                    CallOutcome::Refused { message, .. } => {
                        info!(call = c.name(), refusal = %message, "worker refused");
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
        WorkerCall::Reverse(_) => "ReverseStarted",
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
        WorkerCall::Reverse(r) => {
            format!("asked the worker to start the reverse (force {})", r.force)
        }
    }
}

pub fn owner(
    job: &MigrationJob,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    use kube::Resource;
    job.controller_owner_ref(&())
        .ok_or(Error::MissingField("uid"))
}

/// Whether the object was created (false: it existed already).
fn ignore_exists<T>(r: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StartRequest;
    use crate::operator::decide::{CredentialsObs, Observed};
    use crate::operator::podspec::PodInputs;
    use crate::operator::testing::{
        context, fake_worker, job_with_credentials, observed, status, FakeApi,
    };

    fn snapshot(ip: Option<&str>, token: Option<&str>) -> Snapshot {
        Snapshot {
            observed: Observed {
                has_finalizer: false,
                token_secret: token.is_some(),
                credentials: CredentialsObs::Ready { hash: "h".into() },
                ..observed()
            },
            token: token.map(str::to_string),
            credentials_hash: "h".into(),
            pod_ip: ip.map(str::to_string),
            migration: crate::operator::reverse::own(&job_with_credentials()),
        }
    }

    fn pod_for(job: &MigrationJob) -> Pod {
        let m = crate::operator::reverse::own(job).expect("migration");
        let inputs = PodInputs {
            default_image: "mongoferry:test",
            service_account: None,
            credentials_hash: "h",
            owner: owner(job).expect("owner"),
            migration: &m,
        };
        podspec::worker_pod(job, &inputs)
    }

    #[tokio::test]
    async fn bootstrap_adds_finalizer_then_creates_secret_and_pod() {
        let api = FakeApi::new();
        let ctx = context(&api, vec![], vec![], 1);
        let job = job_with_credentials();
        let actions = [
            Action::AddFinalizer,
            Action::CreateTokenSecret,
            Action::CreatePod,
        ];
        let out = run(&ctx, &job, &snapshot(None, None), &pod_for(&job), &actions)
            .await
            .expect("apply");
        assert!(!out.called_worker);
        let calls = api.calls();
        let kinds: Vec<(&str, &str)> = calls
            .iter()
            .map(|c| (c.method.as_str(), c.uri.split('?').next().unwrap_or("")))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    "PATCH",
                    "/apis/mongoferry.io/v1alpha1/namespaces/shop/migrationjobs/mig"
                ),
                ("POST", "/api/v1/namespaces/shop/secrets"),
                ("POST", "/api/v1/namespaces/shop/pods"),
                ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events"),
            ]
        );
        // The finalizer patch is a compare-and-swap on the job's resourceVersion.
        assert_eq!(
            calls[0].body,
            serde_json::json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "41"}})
        );
        let secret = &calls[1].body;
        assert_eq!(secret["metadata"]["name"], "mig-api-token");
        assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            secret["stringData"]["token"].as_str().map(str::len),
            Some(64)
        );
        assert_eq!(calls[2].body["metadata"]["name"], "mig-worker");
        assert_eq!(api.event_reasons(), vec!["WorkerPodCreated"]);
    }

    #[tokio::test]
    async fn what_exists_or_is_gone_already_is_not_announced() {
        let api = FakeApi::answering(Box::new(|c| {
            if c.is("POST", "/pods") || c.is("POST", "/secrets") {
                Some(status(409, "AlreadyExists"))
            } else if c.is("DELETE", "/pods/") {
                Some(status(404, "NotFound"))
            } else {
                None
            }
        }));
        let ctx = context(&api, vec![], vec![], 1);
        let job = job_with_credentials();
        let actions = [
            Action::CreateTokenSecret,
            Action::CreatePod,
            Action::DeletePod(DeleteReason::Outdated),
        ];
        run(&ctx, &job, &snapshot(None, None), &pod_for(&job), &actions)
            .await
            .expect("a pod or Secret that exists is no error");
        assert_eq!(api.calls().len(), 3, "{:?}", api.calls());
        assert!(api.event_reasons().is_empty(), "{:?}", api.event_reasons());
    }

    #[tokio::test]
    async fn deleting_the_pod_says_why_and_finalizer_removal_keeps_others() {
        let api = FakeApi::new();
        let ctx = context(&api, vec![], vec![], 1);
        let mut job = job_with_credentials();
        job.metadata.finalizers = Some(vec!["other.io/keep".into(), FINALIZER.into()]);
        let actions = [
            Action::DeletePod(DeleteReason::Stopping),
            Action::RemoveFinalizer,
        ];
        run(&ctx, &job, &snapshot(None, None), &pod_for(&job), &actions)
            .await
            .expect("apply");
        let calls = api.calls();
        assert!(calls[0].is("DELETE", "/api/v1/namespaces/shop/pods/mig-worker"));
        assert_eq!(api.event_reasons(), vec!["WorkerStopping"]);
        let patch = calls
            .iter()
            .find(|c| c.is("PATCH", "/migrationjobs/mig"))
            .expect("finalizer patch");
        assert_eq!(
            patch.body["metadata"]["finalizers"],
            serde_json::json!(["other.io/keep"])
        );
    }

    #[tokio::test]
    async fn api_errors_name_the_action() {
        let api = FakeApi::answering(Box::new(|_| Some(status(403, "Forbidden"))));
        let ctx = context(&api, vec![], vec![], 1);
        let job = job_with_credentials();
        let err = run(
            &ctx,
            &job,
            &snapshot(None, None),
            &pod_for(&job),
            &[Action::CreatePod],
        )
        .await
        .err()
        .expect("a refused create is an error");
        assert_eq!(err.kind(), "kube");
        assert!(err.to_string().contains("creating the worker pod"), "{err}");
    }

    #[tokio::test]
    async fn worker_calls_carry_the_token_and_report_the_outcome() {
        let api = FakeApi::new();
        let (port, worker) = fake_worker(Default::default()).await;
        let ctx = context(&api, vec![], vec![], port);
        let job = job_with_credentials();
        let snap = snapshot(Some("127.0.0.1"), Some("tok-9"));
        let start = Action::Call(WorkerCall::Start(StartRequest::default()));
        let out = run(
            &ctx,
            &job,
            &snap,
            &pod_for(&job),
            std::slice::from_ref(&start),
        )
        .await
        .expect("apply");
        assert!(out.called_worker);
        assert_eq!(out.preflight, Outcome::Skipped, "accepted without a report");
        assert_eq!(api.event_reasons(), vec!["MigrationStarted"]);
        {
            let w = worker.lock().expect("worker");
            assert_eq!(w.calls, vec!["POST /start"]);
            assert_eq!(w.tokens, vec!["tok-9"]);
        }
        // Refused: a Warning Event with the worker's message; no error.
        worker.lock().expect("worker").answers.insert(
            "POST /resume".into(),
            (
                409,
                serde_json::json!({"ok": false, "error": "the migration is running"}),
            ),
        );
        let resume = Action::Call(WorkerCall::Resume {
            from_failure: false,
        });
        run(&ctx, &job, &snap, &pod_for(&job), &[resume])
            .await
            .expect("a refusal is no error");
        assert_eq!(
            api.event_reasons(),
            vec!["MigrationStarted", "WorkerRefused"]
        );
        let refused = api
            .calls()
            .into_iter()
            .rfind(|c| c.uri.contains("/events"))
            .expect("event");
        assert_eq!(refused.body["type"], "Warning");
        assert_eq!(refused.body["note"], "resume: the migration is running");
        // Without a pod IP or token the call is skipped.
        let out = run(&ctx, &job, &snapshot(None, None), &pod_for(&job), &[start])
            .await
            .expect("apply");
        assert!(!out.called_worker);
        assert_eq!(worker.lock().expect("worker").calls.len(), 2);
    }

    #[tokio::test]
    async fn a_refused_start_keeps_the_preflight_report() {
        let api = FakeApi::new();
        let (port, worker) = fake_worker(Default::default()).await;
        worker.lock().expect("worker").answers.insert(
            "POST /start".into(),
            (
                409,
                serde_json::to_value(crate::api::StartRefused {
                    ok: false,
                    error: "preflight failed: 1 check failed".into(),
                    preflight: crate::api::PreflightReport {
                        summary: "1 check failed".into(),
                        ..Default::default()
                    },
                })
                .expect("json"),
            ),
        );
        let ctx = context(&api, vec![], vec![], port);
        let job = job_with_credentials();
        let start = Action::Call(WorkerCall::Start(StartRequest::default()));
        let out = run(
            &ctx,
            &job,
            &snapshot(Some("127.0.0.1"), Some("t")),
            &pod_for(&job),
            &[start],
        )
        .await
        .expect("apply");
        match out.preflight {
            Outcome::Report(r) => assert_eq!(r.summary, "1 check failed"),
            other => panic!("{other:?}"),
        }
        assert_eq!(api.event_reasons(), vec!["PreflightFailed"]);
    }
}
