//! Typed errors of the operator. Each variant is also a metric label (`kind`).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed ({action}): {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot reach the worker API at {url}: {detail}")]
    WorkerUnreachable { url: String, detail: String },
    #[error("the worker API answered {status} to {call}: {detail}")]
    WorkerHttp {
        call: &'static str,
        status: u16,
        detail: String,
    },
    #[error("the MigrationJob has no {0}; is it a namespaced object from the API server?")]
    MissingField(&'static str),
    #[error("cannot serialize {what}: {detail}")]
    Serialize { what: &'static str, detail: String },
    #[error("the worker is still stopping; cleanup continues in {0:?}")]
    CleanupPending(Duration),
    #[error("cannot serve metrics on {addr}: {detail}")]
    MetricsListen { addr: String, detail: String },
    #[error("leader election failed: {0}")]
    Lease(String),
    #[error("lost the leader lease; exiting so that Kubernetes restarts the operator")]
    LeadershipLost,
    #[error(
        "cannot connect to Kubernetes: {0}. Set KUBECONFIG or run in a pod with a ServiceAccount"
    )]
    Connect(String),
    #[error(
        "the operator's watch of pods and Secrets stopped; restarting the operator resumes it"
    )]
    CacheClosed,
    #[error(
        "the watch caches of pods and Secrets are not filled after {0:?}; may this ServiceAccount list and watch pods and secrets? (mongoferry operator check)"
    )]
    CacheNotReady(Duration),
}

impl Error {
    /// Short label for `mongoferry_operator_reconcile_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::WorkerUnreachable { .. } => "worker_unreachable",
            Error::WorkerHttp { .. } => "worker_http",
            Error::MissingField(_) => "invalid_object",
            Error::Serialize { .. } => "serialize",
            Error::CleanupPending(_) => "cleanup_pending",
            Error::MetricsListen { .. } => "metrics",
            Error::Lease(_) => "lease",
            Error::LeadershipLost => "leadership",
            Error::Connect(_) => "connect",
            Error::CacheClosed | Error::CacheNotReady(_) => "cache",
        }
    }
}

pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
