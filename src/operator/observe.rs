//! Observe: the job's worker pod and Secrets as the watch caches hold them (no API call), and
//! the worker's /status.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::api::crd::{Endpoint, MigrationJob};

use super::cache::Cache;
use super::context::Context;
use super::decide::{CredentialsObs, Observed, PodObs, ReverseObs, WorkerObs};
use super::error::{Error, Result};
use super::podspec::{self, ANNOTATION_SPEC_HASH, TOKEN_KEY};
use super::reverse::{self, Migration};
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
    /// The migration the worker pod serves (`None`: a reverse that cannot start yet).
    pub migration: Option<Migration>,
}

pub async fn observe(ctx: &Context, job: &MigrationJob, now: Timestamp) -> Result<Snapshot> {
    let ns = job.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = job.name_any();
    ctx.cache.ready().await?;
    let token = ctx
        .cache
        .secret(&ns, &podspec::token_secret_name(&name))
        .and_then(|s| secret_value(&s, TOKEN_KEY));
    let referenced = job
        .spec
        .reverse_of_name()
        .and_then(|n| ctx.cache.job(&ns, n));
    let oldest_reverse = job.spec.reverse_of_name().and_then(|n| {
        ctx.cache
            .reverses_of(&ns, n)
            .first()
            .map(|r| format!("{ns}/{}", r.name_any()))
    });
    let resolved = reverse::resolve(job, referenced.as_deref(), oldest_reverse.as_deref());
    let own_state = job.status.as_ref().and_then(|s| s.state.as_deref());
    let started = matches!(
        own_state,
        Some("running" | "paused" | "finalizing" | "finalized")
    );
    let reverse_obs = job.spec.reverse_of.as_ref().map(|_| match &resolved {
        Ok(_) => ReverseObs::Ready { started },
        Err(b) => ReverseObs::Blocked(b.clone()),
    });
    let migration = resolved.ok();
    let finalized = job.status.as_ref().and_then(|s| s.state.as_deref()) == Some("finalized");
    let reversed_by = if finalized && job.spec.reverse_of.is_none() {
        ctx.cache
            .reverses_of(&ns, &name)
            .first()
            .map(|r| format!("{ns}/{}", r.name_any()))
    } else {
        None
    };
    let credentials = match &migration {
        Some(m) => credentials(&ctx.cache, m, &ns),
        None => CredentialsObs::Ready {
            hash: String::new(),
        },
    };
    let credentials_hash = match &credentials {
        CredentialsObs::Ready { hash } => hash.clone(),
        CredentialsObs::Missing { .. } => String::new(),
    };
    let pod = ctx
        .cache
        .pod(&ns, &podspec::pod_name(&name))
        .filter(|p| owned_by(p, job));
    let pod_obs = pod.as_deref().map(pod_obs);
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
        preflight_hold: super::preflight_status::hold(
            job.status.as_ref().and_then(|s| s.preflight.as_ref()),
            job.metadata.generation,
            now,
        ),
        reverse: reverse_obs,
        reversed_by,
    };
    Ok(Snapshot {
        observed,
        token,
        credentials_hash,
        pod_ip,
        migration,
    })
}

pub async fn worker_status(ctx: &Context, ip: &str, token: &str) -> WorkerObs {
    let c = WorkerClient::new(ctx.http.clone(), ip, ctx.worker_port, token.to_string());
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
fn credentials(cache: &Cache, m: &Migration, ns: &str) -> CredentialsObs {
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
    add("source", &m.source);
    add("target", &m.target);
    let mut h = Sha256::new();
    for (field, name, key) in refs {
        let Some(s) = cache.secret(ns, &name) else {
            return CredentialsObs::Missing {
                message: format!(
                    "Secret {name} (named by {field}) does not exist in namespace {ns}; create it"
                ),
            };
        };
        let value = s
            .data
            .as_ref()
            .and_then(|d| d.get(&key))
            .map(|b| b.0.clone());
        let Some(value) = value else {
            return CredentialsObs::Missing {
                message: format!("Secret {name} (named by {field}) has no key {key:?}"),
            };
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
    CredentialsObs::Ready { hash }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::State;
    use crate::operator::testing::{
        context, fake_worker, job_with_credentials, secret, token_secret, worker_pod, FakeApi,
    };

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).expect("ts")
    }

    fn running() -> crate::api::WorkerStatus {
        crate::api::WorkerStatus {
            ok: true,
            state: State::Running,
            events_applied: 12,
            ..Default::default()
        }
    }

    fn creds() -> k8s_openapi::api::core::v1::Secret {
        secret("creds", &[("username", "ferry"), ("password", "pw-1")])
    }

    #[tokio::test]
    async fn reads_pod_and_secrets_from_the_cache_without_api_calls() {
        let api = FakeApi::new();
        let (port, worker) = fake_worker(running()).await;
        let ctx = context(
            &api,
            vec![worker_pod("uid-1", "Running")],
            vec![token_secret("tok-1"), creds()],
            port,
        );
        let snap = observe(&ctx, &job_with_credentials(), now())
            .await
            .expect("observe");
        let o = &snap.observed;
        assert!(o.token_secret && !o.has_finalizer);
        assert_eq!(snap.token.as_deref(), Some("tok-1"));
        assert!(matches!(&o.credentials, CredentialsObs::Ready { hash } if hash.len() == 16));
        assert_eq!(snap.credentials_hash.len(), 16);
        let pod = o.pod.as_ref().expect("pod");
        assert_eq!((pod.name.as_str(), pod.restarts), ("mig-worker", 1));
        assert_eq!(snap.pod_ip.as_deref(), Some("127.0.0.1"));
        match &o.worker {
            WorkerObs::Status(s) => assert_eq!((s.state, s.events_applied), (State::Running, 12)),
            other => panic!("{other:?}"),
        }
        assert!(api.calls().is_empty(), "no API call: {:?}", api.calls());
        let w = worker.lock().expect("worker");
        assert_eq!(w.calls, vec!["GET /status"]);
        assert_eq!(w.tokens, vec!["tok-1"], "the token from the cached Secret");
    }

    #[tokio::test]
    async fn missing_secret_or_key_is_named() {
        let api = FakeApi::new();
        let ctx = context(&api, vec![], vec![], 1);
        let snap = observe(&ctx, &job_with_credentials(), now())
            .await
            .expect("observe");
        match &snap.observed.credentials {
            CredentialsObs::Missing { message } => assert!(
                message.contains("Secret creds")
                    && message.contains("spec.source.credentialsSecretRef")
                    && message.contains("namespace shop"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(!snap.observed.token_secret);
        assert_eq!(snap.observed.pod, None);
        assert_eq!(snap.observed.worker, WorkerObs::NotAsked);
        let ctx = context(&api, vec![], vec![secret("creds", &[("username", "u")])], 1);
        let snap = observe(&ctx, &job_with_credentials(), now())
            .await
            .expect("observe");
        match &snap.observed.credentials {
            CredentialsObs::Missing { message } => {
                assert!(message.contains("has no key \"password\""), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(api.calls().is_empty());
    }

    #[tokio::test]
    async fn credentials_hash_follows_a_rotation() {
        let api = FakeApi::new();
        let hash = |pw: &str| {
            let ctx = context(
                &api,
                vec![],
                vec![secret("creds", &[("username", "ferry"), ("password", pw)])],
                1,
            );
            async move {
                observe(&ctx, &job_with_credentials(), now())
                    .await
                    .expect("observe")
                    .credentials_hash
            }
        };
        let a = hash("pw-1").await;
        assert_eq!(a, hash("pw-1").await);
        assert_ne!(a, hash("pw-2").await);
    }

    #[tokio::test]
    async fn foreign_pending_or_terminating_pods_are_not_asked() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let api = FakeApi::new();
        let (port, worker) = fake_worker(running()).await;
        let job = job_with_credentials();
        let with_pod = |pod| context(&api, vec![pod], vec![token_secret("t"), creds()], port);
        let ctx = with_pod(worker_pod("someone-else", "Running"));
        let snap = observe(&ctx, &job, now()).await.expect("observe");
        assert_eq!(
            snap.observed.pod, None,
            "a pod of another owner is not ours"
        );
        let ctx = with_pod(worker_pod("uid-1", "Pending"));
        let snap = observe(&ctx, &job, now()).await.expect("observe");
        assert!(snap.observed.pod.is_some());
        assert_eq!(snap.observed.worker, WorkerObs::NotAsked);
        let mut gone = worker_pod("uid-1", "Running");
        gone.metadata.deletion_timestamp = Some(Time(now()));
        let snap = observe(&with_pod(gone), &job, now())
            .await
            .expect("observe");
        assert!(snap.observed.pod.as_ref().is_some_and(|p| p.terminating));
        assert_eq!(snap.observed.worker, WorkerObs::NotAsked);
        assert!(worker.lock().expect("worker").calls.is_empty());
    }

    #[tokio::test]
    async fn container_problems_and_unreachable_workers_are_shown() {
        use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting};
        let api = FakeApi::new();
        let mut pod = worker_pod("uid-1", "Running");
        if let Some(cs) = pod
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
        {
            cs[0].state = Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    message: Some("back-off 10s".into()),
                }),
                ..Default::default()
            });
        }
        // Port 1 on loopback: nothing listens.
        let ctx = context(&api, vec![pod], vec![token_secret("t"), creds()], 1);
        let snap = observe(&ctx, &job_with_credentials(), now())
            .await
            .expect("observe");
        let p = snap.observed.pod.as_ref().expect("pod");
        assert_eq!(
            p.problem.as_deref(),
            Some("worker pod: CrashLoopBackOff: back-off 10s")
        );
        assert!(
            matches!(&snap.observed.worker, WorkerObs::Unreachable(e) if e.contains("127.0.0.1:1")),
            "{:?}",
            snap.observed.worker
        );
    }

    #[tokio::test]
    async fn job_fields_become_observations() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let api = FakeApi::new();
        let ctx = context(&api, vec![], vec![creds()], 1);
        let mut job = job_with_credentials();
        job.metadata.finalizers = Some(vec![FINALIZER.into()]);
        job.metadata.deletion_timestamp =
            Some(Time(Timestamp::from_second(1_000_000 - 30).expect("ts")));
        job.metadata.annotations = Some(
            [
                (RETRY_ANNOTATION.to_string(), "r2".to_string()),
                (RESET_ANNOTATION.to_string(), "x".to_string()),
            ]
            .into(),
        );
        let snap = observe(&ctx, &job, now()).await.expect("observe");
        let o = snap.observed;
        assert!(o.deleting && o.has_finalizer);
        assert_eq!(o.deleting_for, Duration::from_secs(30));
        assert_eq!(o.retry_annotation.as_deref(), Some("r2"));
        assert_eq!(o.reset_annotation.as_deref(), Some("x"));
    }

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

    #[tokio::test]
    async fn a_reverse_reads_the_job_it_reverses_from_the_cache() {
        use crate::api::crd::MigrationJobStatus;
        use crate::operator::cache::testing::cache_with_jobs;
        use crate::operator::testing::{context_with, job};
        let api = FakeApi::new();
        let mut fwd = job_with_credentials();
        let mut back = job(serde_json::json!({"reverseOf": {"name": "mig"}}));
        back.metadata.name = Some("back".into());
        back.metadata.uid = Some("uid-2".into());
        let observe_with = |fwd: MigrationJob, subject: MigrationJob| {
            let ctx = context_with(
                &api,
                cache_with_jobs(vec![], vec![creds()], vec![fwd, back.clone()]),
                1,
            );
            async move { observe(&ctx, &subject, now()).await.expect("observe") }
        };
        let snap = observe_with(fwd.clone(), back.clone()).await;
        assert_eq!(snap.migration, None);
        match &snap.observed.reverse {
            Some(ReverseObs::Blocked(b)) => {
                assert_eq!(b.reason, reverse::NOT_FINALIZED);
                assert!(b
                    .message
                    .contains("shop/mig is not finalized (state: pending)"));
            }
            other => panic!("{other:?}"),
        }
        fwd.status = Some(MigrationJobStatus {
            state: Some("finalized".into()),
            ..Default::default()
        });
        let snap = observe_with(fwd.clone(), back.clone()).await;
        assert_eq!(
            snap.observed.reverse,
            Some(ReverseObs::Ready { started: false })
        );
        let m = snap.migration.expect("migration");
        assert_eq!(
            (m.job_id.as_str(), m.job_name.as_str()),
            ("uid-1", "shop/mig")
        );
        assert!(
            matches!(&snap.observed.credentials, CredentialsObs::Ready { hash } if hash.len() == 16),
            "the Secrets of the job it reverses"
        );
        // The finalized job learns that a reverse takes its migration over.
        let snap = observe_with(fwd.clone(), fwd.clone()).await;
        assert_eq!(snap.observed.reversed_by.as_deref(), Some("shop/back"));
        assert_eq!(snap.observed.reverse, None);
        assert!(api.calls().is_empty());
    }
}
