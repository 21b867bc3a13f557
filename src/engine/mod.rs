//! The replication engine: copy, replicate, pause/resume, finalize. No Kubernetes here.
//!
//! `Engine` owns the state machine and one pipeline task at a time. Commands (from the HTTP
//! API) are serialised; the pipeline runs copy then replication from the checkpoint, and on
//! a transient error restarts from the checkpoint after a backoff.

pub mod apply;
pub mod catalog;
pub mod checkpoint;
pub mod conn;
pub mod copy;
pub mod ddl;
pub mod error;
pub mod filter;
pub mod finalize;
pub mod live;
pub mod optime;
pub mod partition;
pub mod state;
pub mod translate;
pub mod tuning;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use mongodb::Client;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{FinalizeRequest, Phase, StartRequest, State, WorkerStatus};
use crate::telemetry::metrics::Metrics;
use checkpoint::{Checkpoint, Store};
use error::{EngineError, ErrorClass, Result, Side};
pub use live::Live;
use state::{Command, Facts, Refusal};

/// Everything the pipeline needs, shared by its tasks.
pub struct Ctx {
    pub source: Client,
    pub target: Client,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub live: Live,
}

/// What a command returns on refusal: 409 or 400.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
    /// The automatic preflight found a failing check (409 with the report).
    #[error("{}", .0.summary)]
    Preflight(Box<crate::api::PreflightReport>),
}

impl From<Refusal> for CommandError {
    fn from(r: Refusal) -> Self {
        CommandError::Conflict(r.0)
    }
}

impl From<EngineError> for CommandError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(m) => CommandError::Invalid(m),
            other => CommandError::Internal(other.to_string()),
        }
    }
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

struct Running {
    cancel: CancellationToken,
    join: JoinHandle<()>,
}

#[derive(Clone)]
pub struct Engine {
    ctx: Arc<Ctx>,
    cp: Arc<Mutex<Checkpoint>>,
    /// Serialises commands; holds the current pipeline.
    control: Arc<Mutex<Option<Running>>>,
    /// Whether the checkpoint was loaded (commands wait for it).
    ready: Arc<tokio::sync::watch::Sender<bool>>,
    /// Copy throughput the preflight assumes unless asked otherwise, MB/s.
    preflight_throughput: Option<f64>,
}

impl Engine {
    pub fn new(source: Client, target: Client, metrics: Arc<Metrics>) -> Self {
        let store = Store::new(&target);
        let (ready, _) = tokio::sync::watch::channel(false);
        Engine {
            ctx: Arc::new(Ctx {
                source,
                target,
                store,
                metrics,
                live: Live::default(),
            }),
            cp: Arc::new(Mutex::new(Checkpoint::default())),
            control: Arc::new(Mutex::new(None)),
            ready: Arc::new(ready),
            preflight_throughput: None,
        }
    }

    /// The copy throughput the preflight assumes by default, MB/s.
    pub fn with_preflight_throughput(mut self, mbps: Option<f64>) -> Self {
        self.preflight_throughput = mbps;
        self
    }

    /// Run the preflight against this worker's source and target. Absent filters default to
    /// the job's; namespaces created by this job on the target are not counted as occupied.
    pub async fn preflight(
        &self,
        q: PreflightQuery,
    ) -> std::result::Result<crate::api::PreflightReport, CommandError> {
        let job = { self.cp.lock().await.options.clone() };
        let mut opts = crate::preflight::Options {
            include: q.include.unwrap_or(job.include_namespaces),
            exclude: q.exclude.unwrap_or(job.exclude_namespaces),
            drop_target_namespaces: q
                .drop_target_namespaces
                .unwrap_or(job.drop_target_namespaces),
            reset: q.reset,
            throughput_mbps: q.throughput_mbps.or(self.preflight_throughput),
            owned: Default::default(),
        };
        opts.filter()
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        if let Ok(all) = self.ctx.store.all_collections().await {
            opts.owned = all
                .into_iter()
                .filter(|c| c.created)
                .map(|c| c.ns)
                .collect();
        }
        Ok(crate::preflight::run(&self.ctx.source, &self.ctx.target, &opts).await)
    }

    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Keep the source's cluster time fresh for the lag figure.
    pub fn spawn_clock(&self) {
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(ts) = conn::cluster_time(&ctx.source, Side::Source).await {
                    ctx.live.set_source_now(ts);
                    if let Some(l) = ctx.live.lag() {
                        ctx.metrics.lag_seconds.set(l);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Connect, take the job, and resume what an earlier worker left running. Runs in the
    /// background: failures become the `failed` state (fatal) or a retry (transient).
    pub async fn bootstrap(&self, reset: bool) {
        self.ctx
            .live
            .set_info("connecting to the source and target".into());
        let mut delay = Duration::from_secs(1);
        loop {
            match self.try_bootstrap(reset).await {
                Ok(()) => return,
                Err(e) if e.class() == ErrorClass::Transient => {
                    self.ctx.live.set_info(format!("waiting: {e}"));
                    warn!(error = %e, "cannot start yet; retrying");
                    self.ctx
                        .metrics
                        .errors
                        .with_label_values(&[e.kind_label()])
                        .inc();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
                Err(e) => {
                    error!(error = %e, "cannot start");
                    self.ctx
                        .metrics
                        .errors
                        .with_label_values(&[e.kind_label()])
                        .inc();
                    let mut cp = self.cp.lock().await;
                    cp.state = State::Failed;
                    cp.error = Some(e.to_string());
                    self.publish(&cp);
                    self.ready.send_replace(true);
                    return;
                }
            }
        }
    }

    async fn try_bootstrap(&self, reset: bool) -> Result<()> {
        conn::probe(&self.ctx.source, Side::Source).await?;
        conn::probe(&self.ctx.target, Side::Target).await?;
        let mut loaded = self.ctx.store.acquire().await?;
        if reset {
            info!("--reset: forgetting the previous run");
            drop_owned_namespaces(&self.ctx).await?;
            self.ctx.store.reset().await?;
            loaded = Checkpoint::default();
            self.ctx.store.save(&mut loaded).await?;
        }
        self.ctx.live.restore(&loaded);
        // Copy progress of earlier runs, for the status of a restarted worker.
        let (docs, bytes) = self.ctx.store.copied_totals().await?;
        let copied = self
            .ctx
            .store
            .all_collections()
            .await?
            .iter()
            .filter(|c| c.copied)
            .count();
        let live = &self.ctx.live;
        live.cloned_docs
            .store(docs.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
        live.cloned_bytes
            .store(bytes.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
        live.collections_completed
            .store(copied as u64, std::sync::atomic::Ordering::Relaxed);
        let resume = matches!(loaded.state, State::Running | State::Finalizing);
        info!(state = %loaded.state, epoch = self.ctx.store.epoch(), "job loaded");
        *self.cp.lock().await = loaded;
        {
            let cp = self.cp.lock().await;
            self.publish(&cp);
        }
        self.ready.send_replace(true);
        self.spawn_lease_renewal();
        if resume {
            let mut ctl = self.control.lock().await;
            self.spawn(&mut ctl);
        }
        Ok(())
    }

    async fn wait_ready(&self) -> std::result::Result<(), CommandError> {
        if *self.ready.borrow() {
            return Ok(());
        }
        Err(CommandError::Conflict(format!(
            "the worker is still connecting to the source and target ({}); try again shortly",
            self.ctx.live.info()
        )))
    }

    fn publish(&self, cp: &Checkpoint) {
        self.ctx.live.set_state(cp.state, cp.error.clone());
        self.ctx.metrics.set_state(cp.state);
    }

    fn facts(&self, cp: &Checkpoint) -> Facts {
        let est = cp.estimated_bytes.max(1) as f64;
        let done = self
            .ctx
            .live
            .cloned_bytes
            .load(std::sync::atomic::Ordering::Relaxed) as f64;
        Facts {
            clone_completed: cp.clone_completed,
            copy_percent: ((done / est) * 100.0).clamp(0.0, 100.0) as u8,
        }
    }

    /// Start the migration; the answer carries the preflight report the start was judged by
    /// (none with `skipPreflight`).
    pub async fn start(
        &self,
        req: StartRequest,
    ) -> std::result::Result<(State, Option<crate::api::PreflightReport>), CommandError> {
        self.wait_ready().await?;
        filter::NamespaceFilter::new(&req.include_namespaces, &req.exclude_namespaces)
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        tuning::resolve(&req).map_err(CommandError::Invalid)?;
        let mut ctl = self.control.lock().await;
        {
            let cp = self.cp.lock().await;
            state::next_state(
                cp.state,
                Command::Start { reset: req.reset },
                self.facts(&cp),
            )?;
        }
        let mut judged_by = None;
        if !req.skip_preflight {
            let report = self
                .preflight(PreflightQuery {
                    include: Some(req.include_namespaces.clone()),
                    exclude: Some(req.exclude_namespaces.clone()),
                    drop_target_namespaces: Some(req.drop_target_namespaces),
                    reset: req.reset,
                    throughput_mbps: None,
                })
                .await?;
            if !report.ok {
                warn!(summary = %report.summary, "start refused by the preflight");
                return Err(CommandError::Preflight(Box::new(report)));
            }
            for c in report
                .checks
                .iter()
                .filter(|c| c.status == crate::api::CheckStatus::Warn)
            {
                warn!(check = %c.name, reason = %c.reason, "preflight warning");
            }
            judged_by = Some(report);
        } else {
            warn!("starting without the preflight (skipPreflight)");
        }
        let mut cp = self.cp.lock().await;
        let next = state::next_state(
            cp.state,
            Command::Start { reset: req.reset },
            self.facts(&cp),
        )?;
        if req.reset || cp.state != State::Idle {
            drop(cp);
            self.stop_pipeline(&mut ctl).await;
            drop_owned_namespaces(&self.ctx).await?;
            self.ctx.store.reset().await?;
            cp = self.cp.lock().await;
            *cp = Checkpoint::default();
            self.ctx.live.restore(&cp);
        }
        cp.options = StartRequest {
            reset: false,
            skip_preflight: false,
            ..req
        };
        cp.state = next;
        cp.error = None;
        self.ctx.store.save(&mut cp).await?;
        self.publish(&cp);
        drop(cp);
        self.spawn(&mut ctl);
        info!("migration started");
        Ok((next, judged_by))
    }

    pub async fn pause(&self) -> std::result::Result<State, CommandError> {
        self.wait_ready().await?;
        let mut ctl = self.control.lock().await;
        let st = { self.cp.lock().await.state };
        let facts = {
            let cp = self.cp.lock().await;
            self.facts(&cp)
        };
        let next = state::next_state(st, Command::Pause, facts)?;
        self.stop_pipeline(&mut ctl).await;
        let mut cp = self.cp.lock().await;
        // The pipeline may have failed while draining.
        if cp.state == State::Failed {
            return Err(CommandError::Conflict(format!(
                "the migration failed while pausing: {}",
                cp.error.clone().unwrap_or_default()
            )));
        }
        cp.state = next;
        self.ctx.store.save(&mut cp).await?;
        self.publish(&cp);
        info!("migration paused");
        Ok(next)
    }

    pub async fn resume(&self, from_failure: bool) -> std::result::Result<State, CommandError> {
        self.wait_ready().await?;
        let mut ctl = self.control.lock().await;
        let mut cp = self.cp.lock().await;
        let next = state::next_state(cp.state, Command::Resume { from_failure }, self.facts(&cp))?;
        // A failure during finalize resumes the finalize.
        let next = if cp.state == State::Failed && cp.cutoff_ts.is_some() {
            State::Finalizing
        } else {
            next
        };
        cp.state = next;
        cp.error = None;
        self.ctx.store.save(&mut cp).await?;
        self.publish(&cp);
        drop(cp);
        self.spawn(&mut ctl);
        info!("migration resumed");
        Ok(next)
    }

    pub async fn finalize(&self, req: FinalizeRequest) -> std::result::Result<State, CommandError> {
        self.wait_ready().await?;
        let mut ctl = self.control.lock().await;
        {
            let cp = self.cp.lock().await;
            state::next_state(cp.state, Command::Finalize, self.facts(&cp))?;
        }
        if req.block_source_writes {
            // Refuse before any step is taken when the source cannot block writes.
            finalize::check_write_blocking(&self.ctx.source)
                .await
                .map_err(|e| CommandError::Conflict(e.to_string()))?;
        }
        self.stop_pipeline(&mut ctl).await;
        let mut cp = self.cp.lock().await;
        if cp.state == State::Failed {
            return Err(CommandError::Conflict(format!(
                "the migration failed before finalize could start: {}",
                cp.error.clone().unwrap_or_default()
            )));
        }
        if req.block_source_writes {
            finalize::block_writes(&self.ctx.source, true)
                .await
                .map_err(|e| CommandError::Conflict(e.to_string()))?;
        }
        let cutoff = conn::cluster_time(&self.ctx.source, Side::Source).await?;
        cp.cutoff_ts = Some(cutoff);
        cp.verify_mode = Some(req.verify);
        cp.finalization = Some(finalize::started_report(cutoff, req.block_source_writes));
        cp.state = State::Finalizing;
        self.ctx.store.save(&mut cp).await?;
        self.publish(&cp);
        drop(cp);
        self.spawn(&mut ctl);
        info!(cutoff = %optime::ts_string(cutoff), "finalizing");
        Ok(State::Finalizing)
    }

    /// Stop the pipeline (drain, flush, checkpoint) and wait for it.
    async fn stop_pipeline(&self, ctl: &mut Option<Running>) {
        if let Some(r) = ctl.take() {
            r.cancel.cancel();
            let _ = r.join.await;
        }
    }

    fn spawn(&self, ctl: &mut Option<Running>) {
        let cancel = CancellationToken::new();
        let this = self.clone();
        let c = cancel.clone();
        let join = tokio::spawn(async move { this.pipeline(c).await });
        *ctl = Some(Running { cancel, join });
    }

    /// Run until stopped, finalized or failed, retrying transient errors from the checkpoint.
    async fn pipeline(&self, cancel: CancellationToken) {
        let mut delay = Duration::from_secs(1);
        loop {
            let began = std::time::Instant::now();
            let r = self.run_once(&cancel).await;
            // A run that went well for a while starts the backoff afresh: one fault an hour
            // must not wait out the longest delay.
            if began.elapsed() >= Duration::from_secs(60) {
                delay = Duration::from_secs(1);
            }
            match r {
                Ok(()) => return,
                Err(e) if e.class() == ErrorClass::Transient && !cancel.is_cancelled() => {
                    self.ctx
                        .metrics
                        .errors
                        .with_label_values(&[e.kind_label()])
                        .inc();
                    warn!(error = %e, retry_in = ?delay, "transient error; resuming from the checkpoint");
                    self.ctx.live.set_info(format!("retrying after: {e}"));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                    // Reload what was durably saved.
                    if let Ok(Some(saved)) = self.ctx.store.load().await {
                        let mut cp = self.cp.lock().await;
                        if saved.epoch == cp.epoch {
                            *cp = saved;
                        }
                    }
                }
                Err(e) if cancel.is_cancelled() && e.class() == ErrorClass::Transient => return,
                Err(e) => {
                    self.ctx
                        .metrics
                        .errors
                        .with_label_values(&[e.kind_label()])
                        .inc();
                    error!(error = %e, "migration failed");
                    let mut cp = self.cp.lock().await;
                    cp.state = State::Failed;
                    cp.error = Some(e.to_string());
                    if !matches!(e, EngineError::Fenced { .. }) {
                        if let Err(se) = self.ctx.store.save(&mut cp).await {
                            warn!(error = %se, "could not record the failure in the checkpoint");
                        }
                    }
                    self.publish(&cp);
                    return;
                }
            }
        }
    }

    async fn run_once(&self, cancel: &CancellationToken) -> Result<()> {
        let ctx = &self.ctx;
        conn::probe(&ctx.source, Side::Source).await?;
        conn::probe(&ctx.target, Side::Target).await?;
        let (opts, clone_done, cutoff, finalizing) = {
            let cp = self.cp.lock().await;
            (
                cp.options.clone(),
                cp.clone_completed,
                cp.cutoff_ts,
                cp.state == State::Finalizing,
            )
        };
        let tuning = tuning::resolve(&opts).map_err(EngineError::Invalid)?;
        if !clone_done {
            ctx.live
                .set_phase(Some(Phase::Copying), "initial sync: copying data");
            if copy::run(ctx, &self.cp, &tuning, cancel).await? == copy::CopyOutcome::Stopped {
                return Ok(());
            }
        }
        ctx.live.set_phase(
            Some(Phase::Replicating),
            if finalizing {
                "finalizing: applying events up to the cutoff"
            } else {
                "replicating changes"
            },
        );
        let outcome = apply::replicate(
            ctx,
            &self.cp,
            &tuning,
            cancel,
            cutoff.filter(|_| finalizing),
        )
        .await?;
        if outcome == apply::ReplOutcome::ReachedCutoff && finalizing {
            ctx.live
                .set_phase(None, "finalizing: restoring indexes and verifying");
            finalize::run(ctx, &self.cp, cancel).await?;
            let cp = self.cp.lock().await;
            self.publish(&cp);
        }
        Ok(())
    }

    /// The status, with the lag measured against the source's time as of now.
    pub async fn status(&self) -> WorkerStatus {
        let fresh = tokio::time::timeout(
            Duration::from_secs(2),
            conn::cluster_time(&self.ctx.source, Side::Source),
        )
        .await;
        if let Ok(Ok(ts)) = fresh {
            self.ctx.live.set_source_now(ts);
        }
        self.ctx.live.status(self.ctx.store.last_saved().as_ref())
    }

    /// Stop the pipeline on shutdown, leaving a checkpoint behind, and give the lease up.
    pub async fn shutdown(&self) {
        let mut ctl = self.control.lock().await;
        self.stop_pipeline(&mut ctl).await;
        if self.is_ready() {
            self.ctx.store.release_lease().await;
        }
    }

    /// Renew the job lease while this worker lives; losing it stops the pipeline in `failed`
    /// (another worker took over: this one must not write any more).
    fn spawn_lease_renewal(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(checkpoint::LEASE_RENEW).await;
                match this.ctx.store.renew_lease().await {
                    Ok(()) => {}
                    Err(e @ EngineError::Fenced { .. }) => {
                        error!(error = %e, "lost the job lease; stopping");
                        let mut ctl = this.control.lock().await;
                        if let Some(r) = ctl.take() {
                            r.cancel.cancel();
                            r.join.abort();
                        }
                        let mut cp = this.cp.lock().await;
                        cp.state = State::Failed;
                        cp.error = Some(e.to_string());
                        this.publish(&cp);
                        return;
                    }
                    Err(e) => warn!(error = %e, "cannot renew the job lease; retrying"),
                }
            }
        });
    }
}

/// Drop, on the target, every namespace an earlier run of this job created (for reset).
async fn drop_owned_namespaces(ctx: &Ctx) -> Result<()> {
    use error::MongoContext;
    for c in ctx.store.all_collections().await? {
        ctx.target
            .database(&c.db)
            .collection::<mongodb::bson::Document>(&c.coll)
            .drop()
            .await
            .on(Side::Target, "dropping a namespace of the previous run")?;
    }
    Ok(())
}
