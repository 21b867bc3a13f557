//! What the stages share: both deployments, the job's store, the metrics and the live
//! progress.

use std::sync::Arc;

use mongodb::Client;

use super::live::Live;
use super::store::Store;
use crate::telemetry::metrics::Metrics;

pub struct Ctx {
    pub source: Client,
    pub target: Client,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub live: Live,
    /// Sizes the preflight measured before a start, for the copy's catalog.
    pub sizes: super::sizes::Sizes,
}
