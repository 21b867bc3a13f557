//! The two jobs of a standalone worker: its migration (forward: old source → new cluster, job
//! kept on the new cluster) and, once that is finalized and `POST /reverse` is accepted, its
//! reverse (new cluster → old source, job kept on the old source). Commands and status go to
//! the reverse once there is one.
//!
//! Where the reverse's records live: every record a job fences its writes with (job document,
//! lease, epoch, catalog) lives on the deployment the job writes to. The reverse writes to the
//! old source, so its lease and fence are in the old source's `mongoferry` database, under its
//! own job id (`<migration job id>:reverse`); the migration's records on the new cluster are
//! only read. A second worker reversing the same migration waits for the reverse's lease on
//! the old source (or is fenced off it), exactly as two workers of one migration do on a
//! target.

use std::sync::Arc;
use std::time::Duration;

use mongodb::Client;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::error::Side;
use super::filter::NamespaceFilter;
use super::reverse::checks;
use super::reverse::{
    checkpoint, old_source_writes, oplog_floor, peek, read_migration, reverse_identity,
    reverse_job_id,
};
use super::store::{Checkpoint, Identity};
use super::{finalize, tuning};
use super::{CommandError, Engine, PreflightOptions, StartGate};
use crate::api::{CheckStatus, Direction, PreflightReport, ReverseRequest, State};
use crate::telemetry::metrics::Metrics;

/// How long a new reverse may take to take its job on the old source.
const TAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a reverse engine is built from.
pub struct ReverseParts {
    /// The migration's source: the reverse's target.
    pub old_source: Client,
    /// The migration's target: the reverse's source.
    pub new_cluster: Client,
    pub metrics: Arc<Metrics>,
    /// The migration's identity (its job id names the reverse's).
    pub me: Identity,
    /// The preflight with the roles swapped (source: the new cluster; target: the old source).
    pub gate: Option<Arc<dyn StartGate>>,
    pub throughput_mbps: Option<f64>,
}

struct Inner {
    forward: Engine,
    reverse: std::sync::Mutex<Option<Engine>>,
    /// Serialises `POST /reverse`.
    begin: Mutex<()>,
    parts: ReverseParts,
}

#[derive(Clone)]
pub struct Engines {
    inner: Arc<Inner>,
}

impl Engines {
    pub fn new(forward: Engine, parts: ReverseParts) -> Self {
        Engines {
            inner: Arc::new(Inner {
                forward,
                reverse: std::sync::Mutex::new(None),
                begin: Mutex::new(()),
                parts,
            }),
        }
    }

    /// The migration's engine.
    pub fn forward(&self) -> &Engine {
        &self.inner.forward
    }

    /// The reverse's engine, once there is one.
    pub fn reverse_engine(&self) -> Option<Engine> {
        self.inner.reverse.lock().ok().and_then(|r| r.clone())
    }

    /// The engine commands and status go to: the reverse once there is one.
    pub fn active(&self) -> Engine {
        self.reverse_engine()
            .unwrap_or_else(|| self.inner.forward.clone())
    }

    fn build(&self) -> Engine {
        let p = &self.inner.parts;
        let rid = reverse_identity(&p.me).with_ttl(p.me.ttl);
        info!(job = %rid.job_id, incarnation = %rid.incarnation, "reverse identity");
        let e = Engine::new(
            p.new_cluster.clone(),
            p.old_source.clone(),
            p.metrics.clone(),
            rid,
        );
        e.spawn_clock();
        e
    }

    /// At the worker's start, once the migration is loaded: come back in the reverse an
    /// earlier run of this worker began (its job is on the old source), resuming it if it was
    /// running or finalizing.
    pub async fn resume_reverse_if_any(&self) {
        while !self.inner.forward.is_ready() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let want = reverse_job_id(&self.inner.parts.me.job_id);
        let mut delay = Duration::from_secs(1);
        let found = loop {
            match peek(&self.inner.parts.old_source).await {
                Ok(f) => break f,
                Err(e) => {
                    warn!(error = %e, "cannot read the old source for an earlier reverse; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
            }
        };
        let Some((id, state, Direction::Reverse)) = found else {
            return;
        };
        if id != want {
            return;
        }
        let e = {
            let _g = self.inner.begin.lock().await;
            if self.reverse_engine().is_some() {
                return;
            }
            info!(%state, "coming back in the reverse begun earlier");
            let e = self.build();
            if let Ok(mut r) = self.inner.reverse.lock() {
                *r = Some(e.clone());
            }
            e
        };
        // Not under the lock: taking the job may wait for an earlier holder's lease, and a
        // `POST /reverse` meanwhile is answered at once (the reverse exists).
        e.bootstrap(false).await;
    }

    /// `POST /reverse`: check, take the reverse's job on the old source, and start replicating
    /// from the start point. The answer carries the report the reverse was judged by; a failed
    /// check is a refusal with that report.
    pub async fn reverse(
        &self,
        req: ReverseRequest,
    ) -> Result<(State, PreflightReport), CommandError> {
        if let Some(r) = &req.replication {
            tuning::resolve(&crate::api::StartRequest {
                replication: Some(r.clone()),
                ..Default::default()
            })
            .map_err(CommandError::Invalid)?;
        }
        let _g = self.inner.begin.lock().await;
        if let Some(r) = self.reverse_engine() {
            let s = r.status().await;
            return Err(CommandError::Conflict(format!(
                "this worker already runs the reverse ({}); follow it with GET /status, \
                 finalize it with POST /finalize",
                s.state
            )));
        }
        if !self.inner.forward.is_ready() {
            return Err(CommandError::Conflict(
                "the worker is still taking the migration's job; try again shortly".into(),
            ));
        }
        let p = &self.inner.parts;
        let report = self.checks(&req).await?;
        if !report.ok {
            warn!(summary = %report.summary, "reverse refused");
            return Err(CommandError::Preflight(Box::new(report)));
        }
        for c in report
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Warn)
        {
            warn!(check = %c.name, reason = %c.reason, "reverse warning");
        }
        // The checks passed, so the migration is there and finalized.
        let Some((m, options)) = read_migration(&p.new_cluster, Side::Source).await? else {
            return Err(CommandError::Conflict(
                "the migration's job vanished from the new cluster".into(),
            ));
        };
        let (_, Some(points)) = checks::migration_check(Some(&m)) else {
            return Err(CommandError::Conflict(format!(
                "the migration {} can no longer be reversed",
                m.job_name
            )));
        };
        let e = self.build();
        {
            let e2 = e.clone();
            tokio::spawn(async move { e2.bootstrap(false).await });
        }
        let began = std::time::Instant::now();
        while !e.is_ready() {
            if began.elapsed() > TAKE_TIMEOUT {
                let info = e.ctx().live.info();
                e.shutdown().await;
                return Err(CommandError::Conflict(format!(
                    "the reverse could not take its job on the old source within {}s: {info}",
                    TAKE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A migration finalized with blockSourceWrites left the old source's user writes
        // blocked; the reverse writes there.
        if let Err(err) = finalize::block_writes(&p.old_source, false).await {
            info!(error = %err, "could not lift a write block on the old source (none set, or not supported)");
        }
        let cp = checkpoint(&m, &options, points, &req);
        match e.begin_reverse(cp).await {
            Ok(state) => {
                if let Ok(mut r) = self.inner.reverse.lock() {
                    *r = Some(e);
                }
                info!(of = %m.job_name, "reverse started");
                Ok((state, report))
            }
            Err(err) => {
                e.shutdown().await;
                Err(err)
            }
        }
    }

    /// The reverse's checks and the preflight of the swapped roles, as one report.
    async fn checks(&self, req: &ReverseRequest) -> Result<PreflightReport, CommandError> {
        let p = &self.inner.parts;
        let migration = read_migration(&p.new_cluster, Side::Source).await?;
        let (mcheck, points) = checks::migration_check(migration.as_ref().map(|(m, _)| m));
        let mut out = vec![mcheck];
        let mut preflight = None;
        if let (Some(points), Some((_, options))) = (points, migration.as_ref()) {
            let floor = oplog_floor(&p.new_cluster, Side::Source)
                .await
                .map_err(|e| e.to_string());
            out.push(checks::history_check(points.start, floor));
            let filter =
                NamespaceFilter::new(&options.include_namespaces, &options.exclude_namespaces)
                    .map_err(|e| CommandError::Invalid(e.to_string()))?;
            let seen = old_source_writes(&p.old_source, &filter, points.cutoff).await;
            out.push(checks::writes_check(points.cutoff, &seen, req.force));
            match (&p.gate, req.skip_preflight) {
                (Some(gate), false) => {
                    preflight = Some(
                        gate.check(PreflightOptions {
                            include: options.include_namespaces.clone(),
                            exclude: options.exclude_namespaces.clone(),
                            throughput_mbps: p.throughput_mbps,
                            ..Default::default()
                        })
                        .await,
                    );
                }
                (_, true) => warn!("reversing without the preflight of the swapped roles"),
                (None, false) => {}
            }
        }
        Ok(checks::report(out, preflight))
    }

    /// Stop both jobs (drain, checkpoint, release the leases).
    pub async fn shutdown(&self) {
        if let Some(r) = self.reverse_engine() {
            r.shutdown().await;
        }
        self.inner.forward.shutdown().await;
    }
}

impl Engine {
    /// Begin a reverse on this engine, which took its job on the old source: save its first
    /// checkpoint (`cp`, from [`checkpoint`]) and start the pipeline.
    pub async fn begin_reverse(&self, cp: Checkpoint) -> Result<State, CommandError> {
        let mut ctl = self.inner.control.lock().await;
        let mut c = self.inner.cp.lock().await;
        if c.state != State::Idle {
            return Err(CommandError::Conflict(format!(
                "the old source already holds a {} job of this migration in state {}: {}",
                c.direction,
                c.state,
                if c.direction == Direction::Reverse {
                    "restart the worker to come back in it"
                } else {
                    "it is not a reverse; clear the old source's mongoferry database only if no job runs there"
                }
            )));
        }
        let mut next = Checkpoint {
            id: c.id.clone(),
            epoch: c.epoch,
            ..cp
        };
        self.inner.jobs.save(&mut next).await?;
        *c = next;
        self.inner.ctx.live.restore(&c);
        self.publish(&c);
        drop(c);
        self.spawn(&mut ctl);
        Ok(State::Running)
    }
}
