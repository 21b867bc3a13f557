//! The operator's watch caches: the worker pods it manages and the Secrets of the namespaces
//! it watches, kept current by one watch each (reflector stores). Observation reads them
//! instead of asking the API server on every reconcile, so the API load does not grow with
//! the number of jobs, pods or Secrets.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Resource;

use crate::api::crd::MigrationJob;

use super::error::{Error, Result};

/// How long a reconcile waits for the caches' first list (at start-up only).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Cache {
    pods: Store<Pod>,
    secrets: Store<Secret>,
    /// The MigrationJobs (the controller's own store): a reverse reads the job it reverses.
    jobs: Store<MigrationJob>,
}

impl Cache {
    pub fn new(pods: Store<Pod>, secrets: Store<Secret>, jobs: Store<MigrationJob>) -> Cache {
        Cache {
            pods,
            secrets,
            jobs,
        }
    }

    /// Resolves once both caches hold a first complete list: a job is never judged on a
    /// cache still being filled (a Secret not listed yet would read as missing).
    pub async fn ready(&self) -> Result<()> {
        let both = async {
            self.pods.wait_until_ready().await?;
            self.secrets.wait_until_ready().await?;
            self.jobs.wait_until_ready().await
        };
        match tokio::time::timeout(READY_TIMEOUT, both).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::CacheClosed),
            Err(_) => Err(Error::CacheNotReady(READY_TIMEOUT)),
        }
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(ns))
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&ObjectRef::new(name).within(ns))
    }

    pub fn job(&self, ns: &str, name: &str) -> Option<Arc<MigrationJob>> {
        self.jobs.get(&ObjectRef::new(name).within(ns))
    }

    /// The jobs of namespace `ns` that reverse the job `name`, oldest first.
    pub fn reverses_of(&self, ns: &str, name: &str) -> Vec<Arc<MigrationJob>> {
        use kube::ResourceExt;
        let mut v: Vec<_> = self
            .jobs
            .state()
            .into_iter()
            .filter(|j| {
                j.namespace().as_deref() == Some(ns) && j.spec.reverse_of_name() == Some(name)
            })
            .collect();
        v.sort_by_key(|j| (j.creation_timestamp().map(|t| t.0), j.name_any()));
        v
    }
}

/// What the caches need not keep: the managed fields (often the largest part of an object).
pub fn slim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

#[cfg(test)]
pub mod testing {
    //! Caches filled by hand, for tests of observation and reconciliation.

    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher::Event;

    use super::Cache;
    use crate::api::crd::MigrationJob;

    /// Ready caches holding exactly these objects.
    pub fn cache(pods: Vec<Pod>, secrets: Vec<Secret>) -> Cache {
        cache_with_jobs(pods, secrets, vec![])
    }

    /// Ready caches holding exactly these objects, MigrationJobs included.
    pub fn cache_with_jobs(pods: Vec<Pod>, secrets: Vec<Secret>, jobs: Vec<MigrationJob>) -> Cache {
        let (pod_store, mut pw) = reflector::store::<Pod>();
        let (secret_store, mut sw) = reflector::store::<Secret>();
        let (job_store, mut jw) = reflector::store::<MigrationJob>();
        fill(&mut pw, pods);
        fill(&mut sw, secrets);
        fill(&mut jw, jobs);
        Cache::new(pod_store, secret_store, job_store)
    }

    fn fill<K>(w: &mut Writer<K>, objs: Vec<K>)
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        w.apply_watcher_event(&Event::Init);
        for o in objs {
            w.apply_watcher_event(&Event::InitApply(o));
        }
        w.apply_watcher_event(&Event::InitDone);
    }
}
