//! Shared state of the reconcilers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource};
use tracing::warn;

use crate::api::crd::MigrationJob;

use super::cache::Cache;
use super::metrics::Metrics;

/// What every scope's controller shares.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    /// Image of worker pods whose job names none.
    pub worker_image: String,
    /// ServiceAccount of worker pods (None: the namespace's default).
    pub worker_service_account: Option<String>,
    /// Port of the worker API on a worker pod's IP (the pod spec's; tests point it elsewhere).
    pub worker_port: i32,
}

/// The context of one scope's reconciler: the shared parts (through `Deref`), its watch
/// caches and its per-job failure counts.
pub struct Context {
    shared: Shared,
    /// The worker pods and Secrets of this scope, as watched.
    pub cache: Cache,
    /// Consecutive failed reconciliations per job, for the error backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// What the last Events announced, per job and topic (its state, its failure): a
    /// reconcile that still reads the status as it was before its own last write (the watch
    /// has not delivered it yet) does not announce the same thing twice.
    announced: Mutex<HashMap<(String, &'static str), String>>,
}

impl std::ops::Deref for Context {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Context {
    pub fn new(shared: Shared, cache: Cache) -> Context {
        Context {
            shared,
            cache,
            failures: Mutex::new(HashMap::new()),
            announced: Mutex::new(HashMap::new()),
        }
    }

    /// Records `what` as announced on `topic` for job `key`; false if it was the last thing
    /// announced there.
    pub fn announce(&self, key: &str, topic: &'static str, what: &str) -> bool {
        self.announced
            .lock()
            .map(|mut m| {
                m.insert((key.to_string(), topic), what.to_string())
                    .as_deref()
                    != Some(what)
            })
            .unwrap_or(true)
    }

    /// Forgets what was announced on `topic` for job `key` (None: every topic).
    pub fn forget_announced(&self, key: &str, topic: Option<&'static str>) {
        if let Ok(mut m) = self.announced.lock() {
            m.retain(|(k, t), _| k != key || topic.is_some_and(|topic| *t != topic));
        }
    }

    /// Publish an Event on the job (events.k8s.io); a failure to publish is only logged.
    pub async fn event(&self, job: &MigrationJob, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &job.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish an Event");
        }
    }

    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .map(|m| m.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn record_failure(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .map(|mut m| {
                let n = m.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1)
    }

    pub fn clear_failures(&self, key: &str) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }
}
