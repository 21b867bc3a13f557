//! Leader election with a coordination.k8s.io Lease (kube-lease-manager).
//!
//! The lease lasts 10 s and is renewed 3 s before it expires, so a replica that dies without
//! releasing it is replaced within about 10–13 s; a replica stopped by SIGTERM releases it at
//! once. A replica that loses the lease stops (the process exits non-zero and Kubernetes
//! restarts it as a standby): a stale leader never keeps reconciling.

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::error::{Error, Result};

pub const LEASE_SECONDS: u64 = 10;
pub const GRACE_SECONDS: u64 = 3;

pub struct Leader {
    rx: watch::Receiver<bool>,
    handle: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

/// This replica's identity: the given one (POD_NAME) or the host name plus a random suffix.
pub fn identity(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mongoferry-operator".into());
        format!("{host}-{}", &super::podspec::new_token()[..8])
    })
}

impl Leader {
    /// Wait until this replica holds the lease.
    pub async fn acquire(client: Client, name: &str, ns: &str, identity: &str) -> Result<Leader> {
        let mgr = LeaseManagerBuilder::new(client, name)
            .with_namespace(ns)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(GRACE_SECONDS)
            .build()
            .await
            .map_err(|e| Error::Lease(e.to_string()))?;
        let (mut rx, handle) = mgr.watch().await;
        info!(lease = %format!("{ns}/{name}"), identity, "waiting for the leader lease");
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return Err(Error::Lease("the lease manager stopped".into()));
            }
        }
        info!(identity, "acquired the leader lease");
        Ok(Leader { rx, handle })
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) -> Error {
        let mut rx = self.rx.clone();
        loop {
            if !*rx.borrow_and_update() {
                warn!("lost the leader lease");
                return Error::LeadershipLost;
            }
            if rx.changed().await.is_err() {
                return Error::LeadershipLost;
            }
        }
    }

    /// Give the lease up (dropping the receiver makes the manager release it).
    pub async fn release(self) {
        drop(self.rx);
        match self.handle.await {
            Ok(Ok(_)) => info!("released the leader lease"),
            Ok(Err(e)) => warn!(error = %e, "could not release the leader lease"),
            Err(e) => warn!(error = %e, "lease task failed"),
        }
    }
}
