//! Shared state of the reconcilers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource};
use tracing::warn;

use crate::api::crd::MigrationJob;

use super::metrics::Metrics;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    /// Image of worker pods whose job names none.
    pub worker_image: String,
    /// ServiceAccount of worker pods (None: the namespace's default).
    pub worker_service_account: Option<String>,
    /// Consecutive failed reconciliations per job, for the error backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

impl Context {
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
