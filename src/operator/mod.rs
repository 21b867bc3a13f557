//! The Kubernetes operator: a kube-runtime Controller over MigrationJob.
//!
//! observe (worker pod, Secrets, worker /status) → decide (pure) → apply → status.
//! Only the holder of the leader Lease runs the controller; losing it ends the process.

pub mod act;
pub mod cache;
pub mod check;
pub mod context;
pub mod controller;
pub mod decide;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod podspec;
pub mod preflight_status;
pub mod reverse;
pub mod status;
#[cfg(test)]
pub mod testing;
pub mod worker_client;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::api::crd::MigrationJob;

use context::Context;
use error::{Error, Result};

/// How the operator runs (the CLI builds it from its flags; see `mongoferry operator --help`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Watch MigrationJobs in these namespaces only (empty: all namespaces).
    pub namespaces: Vec<String>,
    /// Image of the worker pods whose job names none.
    pub worker_image: String,
    /// ServiceAccount of the worker pods (None: the namespace's `default`).
    pub worker_service_account: Option<String>,
    /// Address of /metrics and /healthz.
    pub metrics_listen: String,
    /// Run the controller only while holding the leader Lease.
    pub leader_election: bool,
    /// Namespace of the leader Lease (None: the client's default namespace).
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// Identity in the Lease and in Events (None: host name plus a random suffix).
    pub identity: Option<String>,
}

pub async fn run(opts: Options) -> Result<()> {
    let client = Client::try_default()
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    let metrics = Arc::new(metrics::Metrics::new().map_err(|e| Error::MetricsListen {
        addr: opts.metrics_listen.clone(),
        detail: e.to_string(),
    })?);
    let server = tokio::spawn(metrics::serve(opts.metrics_listen.clone(), metrics.clone()));
    let identity = leader::identity(opts.identity.clone());
    info!(identity = %identity, namespaces = ?opts.namespaces, worker_image = %opts.worker_image,
          metrics = %opts.metrics_listen, leader_election = opts.leader_election, "starting operator");
    let work = async {
        if opts.leader_election {
            let lease_ns = opts
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            let lease =
                leader::Leader::acquire(client.clone(), &opts.lease_name, &lease_ns, &identity)
                    .await?;
            metrics.leader.set(1);
            let out = tokio::select! {
                r = run_controller(client.clone(), &opts, &identity, metrics.clone()) => r,
                lost = lease.lost() => Err(lost),
            };
            metrics.leader.set(0);
            lease.release().await;
            out
        } else {
            metrics.leader.set(1);
            run_controller(client.clone(), &opts, &identity, metrics.clone()).await
        }
    };
    tokio::select! {
        r = work => r,
        r = server => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::MetricsListen { addr: opts.metrics_listen.clone(), detail: e.to_string() }),
        },
    }
}

/// One controller per watched namespace (or one over all namespaces), each with its own watch
/// caches: with `--namespace a,b` every API call stays inside those namespaces, so a Role in
/// each is all the operator needs.
async fn run_controller(
    client: Client,
    opts: &Options,
    identity: &str,
    metrics: Arc<metrics::Metrics>,
) -> Result<()> {
    let scopes = scopes(&opts.namespaces);
    for scope in &scopes {
        let jobs: Api<MigrationJob> = api(&client, scope.as_deref());
        jobs.list(&ListParams::default().limit(1))
            .await
            .map_err(error::kube(
                "listing MigrationJobs (is the CRD installed, and may this ServiceAccount list them? kubectl apply -f crds/)",
            ))?;
    }
    let reporter = Reporter {
        controller: controller::FIELD_MANAGER.into(),
        instance: Some(identity.to_string()),
    };
    let shared = context::Shared {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        http: worker_client::WorkerClient::http(),
        worker_image: opts.worker_image.clone(),
        worker_service_account: opts.worker_service_account.clone(),
        worker_port: podspec::WORKER_PORT,
    };
    info!(namespaces = ?scopes, "controller running");
    futures::future::join_all(
        scopes
            .iter()
            .map(|scope| controller_in(client.clone(), scope.as_deref(), shared.clone())),
    )
    .await;
    info!("controller stopped");
    Ok(())
}

/// The namespaces to watch: each given one once, or `[None]` (all namespaces).
pub fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = Vec::new();
    for ns in namespaces
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
    {
        if !out.iter().any(|o| o.as_deref() == Some(ns)) {
            out.push(Some(ns.to_string()));
        }
    }
    if out.is_empty() {
        out.push(None);
    }
    out
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The controller of one scope. Worker pods and Secrets are watched once each; the watch
/// streams fill the caches that observation reads (no GET per reconcile) and trigger the jobs
/// they concern.
async fn controller_in(client: Client, ns: Option<&str>, shared: context::Shared) {
    let (jobs, pods, secrets): (Api<MigrationJob>, Api<Pod>, Api<Secret>) =
        (api(&client, ns), api(&client, ns), api(&client, ns));
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        podspec::LABEL_MANAGED_BY,
        podspec::MANAGED_BY
    ));
    let (pod_cache, pod_writer) = reflector::store::<Pod>();
    let pod_events = watcher(pods, owned)
        .default_backoff()
        .modify(cache::slim)
        .reflect(pod_writer)
        .touched_objects();
    let (secret_cache, secret_writer) = reflector::store::<Secret>();
    let secret_events = watcher(secrets, watcher::Config::default())
        .default_backoff()
        .modify(cache::slim)
        .reflect(secret_writer)
        .touched_objects();
    let controller = Controller::new(jobs.clone(), watcher::Config::default());
    let store = controller.store();
    let ctx = Arc::new(Context::new(
        shared,
        cache::Cache::new(pod_cache, secret_cache, store.clone()),
    ));
    let job_store = store.clone();
    controller
        .owns_stream(pod_events)
        // A reverse and the job it reverses act on each other's changes at once: the reverse
        // starts when that job is finalized, and that job hands its worker over.
        .watches(jobs, watcher::Config::default(), move |j: MigrationJob| {
            related(&job_store.state(), &j)
        })
        // Credentials Secrets are the user's: map each to the jobs that name it, so a
        // rotation (or a Secret created late) is acted upon at once.
        .watches_stream(secret_events, move |s: Secret| {
            let ns = s.namespace();
            let name = s.name_any();
            let all = store.state();
            all.iter()
                .filter(|j| j.namespace() == ns && references(&all, j, &name))
                .map(|j| ObjectRef::from_obj(j.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(controller::reconcile, controller::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "controller event");
            }
        })
        .await;
}

/// The jobs that act on a change of `j`: the job a reverse names, or the reverses of `j`.
fn related(all: &[Arc<MigrationJob>], j: &MigrationJob) -> Vec<ObjectRef<MigrationJob>> {
    let ns = j.namespace();
    let name = j.name_any();
    all.iter()
        .filter(|o| o.namespace() == ns)
        .filter(|o| {
            j.spec.reverse_of_name() == Some(o.name_any().as_str())
                || o.spec.reverse_of_name() == Some(name.as_str())
        })
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Whether the job names Secret `name` (credentials, CA, or its own token); a reverse names
/// the Secrets of the job it reverses.
fn references(all: &[Arc<MigrationJob>], job: &MigrationJob, name: &str) -> bool {
    let of = job.spec.reverse_of_name().and_then(|r| {
        all.iter()
            .find(|o| o.namespace() == job.namespace() && o.name_any() == r)
    });
    let spec = of.map(|o| &o.spec).unwrap_or(&job.spec);
    let eps = [&spec.source, &spec.target];
    podspec::token_secret_name(&job.name_any()) == name
        || eps.iter().flat_map(|e| e.iter()).any(|e| {
            e.credentials_secret_ref
                .as_ref()
                .is_some_and(|c| c.name == name)
                || e.tls
                    .as_ref()
                    .and_then(|t| t.ca_secret_ref.as_ref())
                    .is_some_and(|c| c.name == name)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_the_given_namespaces_or_all() {
        assert_eq!(scopes(&[]), vec![None]);
        assert_eq!(scopes(&["".into(), " ".into()]), vec![None]);
        assert_eq!(
            scopes(&["a".into(), "b".into(), "a".into(), " c ".into()]),
            vec![Some("a".into()), Some("b".into()), Some("c".into())]
        );
    }
}
