//! The replication engine: copy, replicate, pause/resume, finalize. No Kubernetes here.
//!
//! Stages, one module each: `catalog` (list, size and create the selected collections),
//! `copy` (partitioned parallel copy), `repl` (change stream reader, router, appliers, DDL),
//! `finalize` (cutoff, index restoration, verification), and `store` (the records kept in the
//! target, the lease and the fence). This module is the orchestration: [`Engine`] takes the
//! job, runs commands detached from their callers (`control`), and runs the pipeline with its
//! retries (`pipeline`). The stages are reached through the traits of `stages`, so that logic
//! is unit-tested without servers.

pub mod catalog;
pub mod conn;
mod control;
pub mod copy;
pub mod ctx;
pub mod error;
pub mod filter;
pub mod finalize;
pub mod live;
pub mod optime;
mod pipeline;
pub mod repl;
pub mod reply;
pub mod reversal;
pub mod reverse;
pub mod sizes;
pub mod stages;
pub mod state;
pub mod store;
pub mod tuning;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mongodb::Client;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::api::{PreflightReport, State, WorkerStatus};
use crate::telemetry::metrics::Metrics;
use error::{EngineError, Result, Side};
pub use live::Live;
use stages::{JobStore, SharedCheckpoint, Stages};
use store::{Checkpoint, Identity, Store};

pub use control::{Accepted, CommandError};
pub use ctx::Ctx;

/// Copy throughput the preflight assumes for its estimate, MB/s.
pub const DEFAULT_THROUGHPUT_MBPS: f64 = 20.0;

/// What a preflight checks.
#[derive(Debug, Clone, Default)]
pub struct PreflightOptions {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub drop_target_namespaces: bool,
    /// An earlier run will be forgotten (its namespaces dropped) before the start.
    pub reset: bool,
    /// Assumed copy throughput, MB/s (default [`DEFAULT_THROUGHPUT_MBPS`]).
    pub throughput_mbps: Option<f64>,
    /// Target namespaces created by an earlier run of this job (replaced, not refused).
    pub owned: HashSet<String>,
    /// Where to leave the collection sizes measured, for the copy that may follow.
    pub sizes: Option<sizes::Sizes>,
}

impl PreflightOptions {
    pub fn filter(&self) -> std::result::Result<filter::NamespaceFilter, filter::FilterError> {
        filter::NamespaceFilter::new(&self.include, &self.exclude)
    }

    pub fn throughput(&self) -> f64 {
        self.throughput_mbps
            .filter(|t| *t > 0.0 && t.is_finite())
            .unwrap_or(DEFAULT_THROUGHPUT_MBPS)
    }
}

/// The checks a start must pass (the preflight, provided by the `preflight` module: the
/// engine does not depend on it).
pub trait StartGate: Send + Sync {
    fn check(&self, opts: PreflightOptions) -> BoxFuture<'_, PreflightReport>;
}

/// `GET /preflight` parameters; absent ones default to the job's.
#[derive(Debug, Clone, Default)]
pub struct PreflightQuery {
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub drop_target_namespaces: Option<bool>,
    pub reset: bool,
    pub throughput_mbps: Option<f64>,
}

/// The pipeline task while it runs.
struct Running {
    cancel: CancellationToken,
    join: JoinHandle<()>,
}

struct Inner {
    ctx: Arc<Ctx>,
    jobs: Arc<dyn JobStore>,
    stages: Arc<dyn Stages>,
    cp: SharedCheckpoint,
    /// Serialises commands; holds the current pipeline.
    control: Mutex<Option<Running>>,
    /// The running pipeline's token, reachable without the control lock (to stop it at once
    /// when this worker is deposed).
    pipeline_cancel: std::sync::Mutex<Option<CancellationToken>>,
    /// Whether the job was taken (commands wait for it).
    ready: tokio::sync::watch::Sender<bool>,
    gate: Option<Arc<dyn StartGate>>,
    preflight_throughput: Option<f64>,
    /// Ends the engine's background tasks (the clock, the lease keeper).
    stop: CancellationToken,
    background: std::sync::Mutex<Vec<JoinHandle<()>>>,
    inflight: std::sync::Mutex<Option<control::Inflight>>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine on real deployments, as the job `me`.
    pub fn new(source: Client, target: Client, metrics: Arc<Metrics>, me: Identity) -> Self {
        metrics.show_ddl(repl::translate::DDL_TYPES);
        let store = Store::new(&target, me);
        let ctx = Arc::new(Ctx {
            source,
            target,
            store,
            metrics,
            live: Live::default(),
            sizes: Default::default(),
        });
        let mongo = Arc::new(stages::Mongo { ctx: ctx.clone() });
        Self::with_parts(ctx, mongo.clone(), mongo)
    }

    /// An engine whose job store and stages are given (tests).
    pub fn with_parts(ctx: Arc<Ctx>, jobs: Arc<dyn JobStore>, stages: Arc<dyn Stages>) -> Self {
        let (ready, _) = tokio::sync::watch::channel(false);
        Engine {
            inner: Arc::new(Inner {
                ctx,
                jobs,
                stages,
                cp: Arc::new(Mutex::new(Checkpoint::default())),
                control: Mutex::new(None),
                pipeline_cancel: std::sync::Mutex::new(None),
                ready,
                gate: None,
                preflight_throughput: None,
                stop: CancellationToken::new(),
                background: std::sync::Mutex::new(Vec::new()),
                inflight: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Run the preflight through `gate` before every start; `throughput` is the copy rate it
    /// assumes unless asked otherwise (MB/s). Call before sharing the engine.
    pub fn with_gate(mut self, gate: Arc<dyn StartGate>, throughput: Option<f64>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.gate = Some(gate);
            inner.preflight_throughput = throughput;
        }
        self
    }

    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.inner.ctx
    }

    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Run the preflight for `q`: absent filters default to the job's; namespaces created by
    /// this job on the target are not counted as occupied.
    pub async fn preflight(
        &self,
        q: PreflightQuery,
    ) -> std::result::Result<PreflightReport, CommandError> {
        let Some(gate) = self.inner.gate.clone() else {
            return Err(CommandError::Internal(
                "this worker runs no preflight".into(),
            ));
        };
        let job = { self.inner.cp.lock().await.options.clone() };
        let mut opts = PreflightOptions {
            include: q.include.unwrap_or(job.include_namespaces),
            exclude: q.exclude.unwrap_or(job.exclude_namespaces),
            drop_target_namespaces: q
                .drop_target_namespaces
                .unwrap_or(job.drop_target_namespaces),
            reset: q.reset,
            throughput_mbps: q.throughput_mbps.or(self.inner.preflight_throughput),
            owned: Default::default(),
            sizes: Some(self.inner.ctx.sizes.clone()),
        };
        opts.filter()
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        match store::owned_namespaces(&self.inner.ctx.target).await {
            Ok(owned) => opts.owned = owned,
            Err(e) => warn!(error = %e, "cannot read the namespaces an earlier run created"),
        }
        Ok(gate.check(opts).await)
    }

    /// Keep the source's cluster time fresh for the lag figure, until the engine stops.
    pub fn spawn_clock(&self) {
        let ctx = self.inner.ctx.clone();
        let stop = self.inner.stop.clone();
        let h = tokio::spawn(
            async move {
                loop {
                    match conn::cluster_time(&ctx.source, Side::Source).await {
                        Ok(ts) => {
                            ctx.live.set_source_now(ts);
                            if let Some(l) = ctx.live.lag() {
                                ctx.metrics.lag_seconds.set(l);
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot read the source's time"),
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            .instrument(tracing::info_span!("clock")),
        );
        self.keep_task(h);
    }

    fn keep_task(&self, h: JoinHandle<()>) {
        if let Ok(mut b) = self.inner.background.lock() {
            b.push(h);
        }
    }

    fn publish(&self, cp: &Checkpoint) {
        self.inner
            .ctx
            .live
            .set_state(cp.state, cp.error.clone(), cp.failure_reason.clone());
        self.inner.ctx.metrics.set_state(cp.state);
    }

    /// Record a failure in memory (and say so); saving it is the caller's business.
    fn fail(&self, cp: &mut Checkpoint, e: &EngineError) {
        cp.state = State::Failed;
        cp.error = Some(e.to_string());
        cp.failure_reason = e.reason().map(str::to_string);
        self.publish(cp);
    }

    /// Take the job and resume what an earlier worker left running. Runs in the background:
    /// failures become the `failed` state (fatal) or a retry (transient).
    pub async fn bootstrap(&self, reset: bool) {
        let live = &self.inner.ctx.live;
        live.set_info("connecting to the source and target".into());
        let Some(loaded) = self
            .retrying("cannot take the job yet", || self.take_job())
            .await
        else {
            return;
        };
        self.keep_lease();
        // Each attempt starts from the job as taken (a reset is idempotent).
        self.retrying("cannot load the job yet", || {
            self.load_job(loaded.clone(), reset)
        })
        .await;
    }

    /// Run `step` until it succeeds, retrying transient errors with a backoff; a fatal error
    /// fails the job. `None` when it failed.
    async fn retrying<T, F, Fut>(&self, what: &str, mut step: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut delay = Duration::from_secs(1);
        loop {
            match step().await {
                Ok(t) => return Some(t),
                Err(e) if e.class() == error::ErrorClass::Transient => {
                    self.inner.ctx.live.set_info(format!("waiting: {e}"));
                    warn!(error = %e, "{what}; retrying");
                    self.count_error(&e);
                    tokio::select! {
                        _ = self.inner.stop.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start");
                    self.count_error(&e);
                    let mut cp = self.inner.cp.lock().await;
                    self.fail(&mut cp, &e);
                    self.inner.ready.send_replace(true);
                    return None;
                }
            }
        }
    }

    fn count_error(&self, e: &EngineError) {
        self.inner
            .ctx
            .metrics
            .errors
            .with_label_values(&[e.kind_label()])
            .inc();
    }

    async fn take_job(&self) -> Result<Checkpoint> {
        self.inner.jobs.probe().await?;
        let live_info = self.inner.ctx.clone();
        self.inner
            .jobs
            .acquire(Box::new(move |why: &EngineError| {
                live_info.live.set_info(why.to_string())
            }))
            .await
    }

    /// Renew the job until the engine stops; when another worker takes it over, stop the
    /// pipeline at once and fail with the reason.
    fn keep_lease(&self) {
        let this = self.clone();
        let h = self.inner.jobs.keep(
            self.inner.stop.clone(),
            Box::new(move |e: EngineError| {
                tokio::spawn(async move { this.deposed(e).await });
            }),
        );
        self.keep_task(h);
    }

    async fn deposed(&self, e: EngineError) {
        tracing::error!(error = %e, "deposed: stopping every write");
        if let Some(c) = self
            .inner
            .pipeline_cancel
            .lock()
            .ok()
            .and_then(|c| c.clone())
        {
            c.cancel();
        }
        self.count_error(&e);
        let mut cp = self.inner.cp.lock().await;
        self.fail(&mut cp, &e);
    }

    /// With the job taken: finish an interrupted reset, restore the progress figures, and
    /// resume the pipeline if the job was running.
    async fn load_job(&self, mut loaded: Checkpoint, reset: bool) -> Result<()> {
        if reset {
            info!("--reset: forgetting the previous run");
            self.reset_to(&mut loaded, Checkpoint::default()).await?;
        } else if loaded.resetting {
            info!("finishing a reset that was interrupted");
            let next = loaded.clone();
            self.reset_to(&mut loaded, next).await?;
        }
        let live = &self.inner.ctx.live;
        live.restore(&loaded);
        let p = self.inner.jobs.progress().await?;
        live.cloned_docs
            .store(p.documents, std::sync::atomic::Ordering::Relaxed);
        live.cloned_bytes
            .store(p.bytes, std::sync::atomic::Ordering::Relaxed);
        live.collections_completed
            .store(p.collections, std::sync::atomic::Ordering::Relaxed);
        let resume = matches!(loaded.state, State::Running | State::Finalizing);
        info!(state = %loaded.state, "job loaded");
        {
            let mut cp = self.inner.cp.lock().await;
            *cp = loaded;
            self.publish(&cp);
        }
        self.inner.ready.send_replace(true);
        if resume {
            let mut ctl = self.inner.control.lock().await;
            self.spawn(&mut ctl);
        }
        Ok(())
    }

    /// Forget the earlier run and continue as `next`, crash-atomically: `resetting` is saved
    /// first, then the namespaces are dropped and the records cleared, then `next` is saved.
    /// A worker restarted anywhere in between finishes the reset (see `load_job`) and never
    /// replicates onto half-dropped data.
    async fn reset_to(&self, cp: &mut Checkpoint, next: Checkpoint) -> Result<()> {
        let mut marker = Checkpoint {
            resetting: true,
            ..next.clone()
        };
        self.inner.jobs.save(&mut marker).await?;
        *cp = marker;
        self.inner.jobs.drop_namespaces().await?;
        self.inner.jobs.clear_records().await?;
        let mut fresh = Checkpoint {
            resetting: false,
            ..next
        };
        self.inner.jobs.save(&mut fresh).await?;
        *cp = fresh;
        self.inner.ctx.live.restore(cp);
        Ok(())
    }

    /// The status, with the lag measured against the source's time as of now.
    pub async fn status(&self) -> WorkerStatus {
        let ctx = &self.inner.ctx;
        let fresh = tokio::time::timeout(
            Duration::from_secs(2),
            conn::cluster_time(&ctx.source, Side::Source),
        )
        .await;
        if let Ok(Ok(ts)) = fresh {
            ctx.live.set_source_now(ts);
        }
        self.refresh_metrics();
        ctx.live.status(|| ctx.store.last_saved())
    }

    /// Bring the metrics that are read from elsewhere up to date (before a scrape).
    pub fn refresh_metrics(&self) {
        let ctx = &self.inner.ctx;
        let (committed, refused) = ctx.store.fence().counts();
        ctx.metrics.set_fence(committed, refused);
    }

    /// Stop on shutdown: let a command in progress finish, stop the pipeline (drain, flush,
    /// checkpoint), end the background tasks, and give the job up.
    pub async fn shutdown(&self) {
        let mut ctl = self.inner.control.lock().await;
        self.stop_pipeline(&mut ctl).await;
        self.inner.stop.cancel();
        let tasks: Vec<JoinHandle<()>> = self
            .inner
            .background
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        for t in tasks {
            if let Err(e) = t.await {
                warn!(error = %e, "a background task ended abnormally");
            }
        }
        if self.is_ready() {
            if let Err(e) = self.inner.jobs.release().await {
                warn!(error = %e, "cannot release the job lease; a successor waits for it to expire");
            }
        }
    }
}

#[cfg(test)]
mod tests;
