//! The Kubernetes operator: a kube-runtime Controller over MigrationJob.
//!
//! observe (worker pod, Secrets, worker /status) → decide (pure) → apply → status.
//! Only the holder of the leader Lease runs the controller; losing it ends the process.

pub mod apply;
pub mod check;
pub mod context;
pub mod controller;
pub mod decide;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod podspec;
pub mod preflight;
pub mod status;
pub mod worker_client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::api::crd::MigrationJob;
use crate::cli::OperatorArgs;

use context::Context;
use error::{Error, Result};

pub async fn run(args: OperatorArgs) -> Result<()> {
    let client = Client::try_default()
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    let metrics = Arc::new(metrics::Metrics::new().map_err(|e| Error::MetricsListen {
        addr: args.metrics_listen.clone(),
        detail: e.to_string(),
    })?);
    let server = tokio::spawn(metrics::serve(args.metrics_listen.clone(), metrics.clone()));
    let identity = leader::identity(args.identity.clone());
    info!(identity = %identity, namespaces = ?args.namespaces, worker_image = %args.worker_image,
          metrics = %args.metrics_listen, leader_election = args.leader_election, "starting operator");
    let work = async {
        if args.leader_election {
            let lease_ns = args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            let lease =
                leader::Leader::acquire(client.clone(), &args.lease_name, &lease_ns, &identity)
                    .await?;
            metrics.leader.set(1);
            let out = tokio::select! {
                r = run_controller(client.clone(), &args, &identity, metrics.clone()) => r,
                lost = lease.lost() => Err(lost),
            };
            metrics.leader.set(0);
            lease.release().await;
            out
        } else {
            metrics.leader.set(1);
            run_controller(client.clone(), &args, &identity, metrics.clone()).await
        }
    };
    tokio::select! {
        r = work => r,
        r = server => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::MetricsListen { addr: args.metrics_listen.clone(), detail: e.to_string() }),
        },
    }
}

/// One controller per watched namespace (or one over all namespaces), sharing the context:
/// with `--namespace a,b` every API call stays inside those namespaces, so a Role in each is
/// all the operator needs.
async fn run_controller(
    client: Client,
    args: &OperatorArgs,
    identity: &str,
    metrics: Arc<metrics::Metrics>,
) -> Result<()> {
    let scopes = scopes(&args.namespaces);
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
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        http: worker_client::WorkerClient::http(),
        worker_image: args.worker_image.clone(),
        worker_service_account: args.worker_service_account.clone(),
        failures: Mutex::new(HashMap::new()),
    });
    info!(namespaces = ?scopes, "controller running");
    futures::future::join_all(
        scopes
            .iter()
            .map(|scope| controller_in(client.clone(), scope.as_deref(), ctx.clone())),
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

async fn controller_in(client: Client, ns: Option<&str>, ctx: Arc<Context>) {
    let (jobs, pods, secrets): (Api<MigrationJob>, Api<Pod>, Api<Secret>) =
        (api(&client, ns), api(&client, ns), api(&client, ns));
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        podspec::LABEL_MANAGED_BY,
        podspec::MANAGED_BY
    ));
    let controller = Controller::new(jobs, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(pods, owned)
        // Credentials Secrets are the user's: map each to the jobs that name it, so a
        // rotation (or a Secret created late) is acted upon at once.
        .watches(secrets, watcher::Config::default(), move |s: Secret| {
            let ns = s.namespace();
            let name = s.name_any();
            store
                .state()
                .into_iter()
                .filter(|j| j.namespace() == ns && references(j, &name))
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

/// Whether the job names Secret `name` (credentials, CA, or its own token).
fn references(job: &MigrationJob, name: &str) -> bool {
    let eps = [&job.spec.source, &job.spec.target];
    podspec::token_secret_name(&job.name_any()) == name
        || eps.iter().any(|e| {
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
