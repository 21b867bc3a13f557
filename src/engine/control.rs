//! Commands: start, pause, resume, finalize.
//!
//! Each command runs as its own task, detached from its caller: a client that hangs up (an
//! HTTP request cancelled midway) cancels nothing, so a pause never stops halfway through its
//! drain. Commands are serialised; the same command sent again while it is in progress joins
//! it and gets its answer. Every answer gives the state the command led to.

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::state::{self, Command, Progress, Refusal};
use super::{optime, tuning, Engine, PreflightQuery, Running};
use crate::api::{FinalizeRequest, PreflightReport, StartRequest, State};
use crate::engine::error::EngineError;
use crate::engine::store::Checkpoint;

/// Why a command was refused: 409 (conflict), 400 (invalid), 503 (internal).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
    /// The automatic preflight found a failing check (409 with the report).
    #[error("{}", .0.summary)]
    Preflight(Box<PreflightReport>),
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
            e @ (EngineError::Fenced { .. }
            | EngineError::TargetInUse { .. }
            | EngineError::NotHolding) => CommandError::Conflict(e.to_string()),
            other => CommandError::Internal(other.to_string()),
        }
    }
}

/// A command's answer: the state it led to, and for a start the preflight it was judged by.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub state: State,
    pub preflight: Option<Box<PreflightReport>>,
}

type Answer = Result<Accepted, CommandError>;

/// The command in progress, which an identical one joins.
pub(super) struct Inflight {
    key: String,
    id: u64,
    answer: Shared<BoxFuture<'static, Answer>>,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Engine {
    /// Run `work` as a detached task, or join the identical command in progress.
    async fn command<F>(&self, key: String, work: F) -> Answer
    where
        F: FnOnce(Engine) -> BoxFuture<'static, Answer> + Send + 'static,
    {
        let answer = {
            let Ok(mut slot) = self.inner.inflight.lock() else {
                return Err(CommandError::Internal("command state poisoned".into()));
            };
            match slot.as_ref().filter(|i| i.key == key) {
                Some(i) => i.answer.clone(),
                None => {
                    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let this = self.clone();
                    let span = tracing::info_span!("command", name = %key);
                    let task = tokio::spawn(
                        async move {
                            let r = work(this.clone()).await;
                            // Done: a later identical command is a new command.
                            if let Ok(mut s) = this.inner.inflight.lock() {
                                if s.as_ref().is_some_and(|i| i.id == id) {
                                    *s = None;
                                }
                            }
                            r
                        }
                        .instrument(span),
                    );
                    let answer = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(CommandError::Internal(format!("the command stopped: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    *slot = Some(Inflight {
                        key,
                        id,
                        answer: answer.clone(),
                    });
                    answer
                }
            }
        };
        answer.await
    }

    async fn wait_ready(&self) -> Result<(), CommandError> {
        if self.is_ready() {
            // A worker that never took the job (another job owns the target) or lost it
            // takes no command.
            let cp = self.inner.cp.lock().await;
            if matches!(
                cp.failure_reason.as_deref(),
                Some(EngineError::TARGET_IN_USE | EngineError::DEPOSED)
            ) {
                return Err(CommandError::Conflict(cp.error.clone().unwrap_or_default()));
            }
            return Ok(());
        }
        Err(CommandError::Conflict(format!(
            "the worker is still taking the job on the target ({}); try again shortly",
            self.inner.ctx.live.info()
        )))
    }

    fn progress(&self, cp: &Checkpoint) -> Progress {
        let est = cp.estimated_bytes.max(1) as f64;
        let done = self
            .inner
            .ctx
            .live
            .cloned_bytes
            .load(std::sync::atomic::Ordering::Relaxed) as f64;
        Progress {
            clone_completed: cp.clone_completed,
            copy_percent: ((done / est) * 100.0).clamp(0.0, 100.0) as u8,
        }
    }

    /// Start the migration; the answer carries the preflight report the start was judged by
    /// (none with `skipPreflight`).
    pub async fn start(
        &self,
        req: StartRequest,
    ) -> Result<(State, Option<PreflightReport>), CommandError> {
        self.wait_ready().await?;
        super::filter::NamespaceFilter::new(&req.include_namespaces, &req.exclude_namespaces)
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        tuning::resolve(&req).map_err(CommandError::Invalid)?;
        let key = format!("start {}", serde_json::to_string(&req).unwrap_or_default());
        let a = self
            .command(key, move |e| async move { e.do_start(req).await }.boxed())
            .await?;
        Ok((a.state, a.preflight.map(|p| *p)))
    }

    async fn do_start(&self, req: StartRequest) -> Answer {
        let mut ctl = self.inner.control.lock().await;
        {
            let cp = self.inner.cp.lock().await;
            state::next_state(
                cp.state,
                Command::Start { reset: req.reset },
                self.progress(&cp),
            )?;
        }
        let mut judged_by = None;
        if !req.skip_preflight && self.inner.gate.is_some() {
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
            judged_by = Some(Box::new(report));
        } else if req.skip_preflight {
            warn!("starting without the preflight (skipPreflight)");
        }
        let mut cp = self.inner.cp.lock().await;
        let next = state::next_state(
            cp.state,
            Command::Start { reset: req.reset },
            self.progress(&cp),
        )?;
        let options = StartRequest {
            reset: false,
            skip_preflight: false,
            ..req.clone()
        };
        if req.reset || cp.state != State::Idle {
            drop(cp);
            self.stop_pipeline(&mut ctl).await;
            cp = self.inner.cp.lock().await;
            let next_cp = Checkpoint {
                options,
                state: next,
                ..Default::default()
            };
            let mut work = cp.clone();
            if let Err(e) = self.reset_to(&mut work, next_cp).await {
                // The reset is recorded: a restarted worker (or a new start) finishes it.
                *cp = work;
                return Err(e.into());
            }
            *cp = work;
        } else {
            cp.options = options;
            self.enter(&mut cp, next).await?;
        }
        self.publish(&cp);
        drop(cp);
        self.spawn(&mut ctl);
        info!("migration started");
        Ok(Accepted {
            state: next,
            preflight: judged_by,
        })
    }

    /// Record `next` (clearing an earlier failure) and say so.
    async fn enter(&self, cp: &mut Checkpoint, next: State) -> Result<(), CommandError> {
        cp.state = next;
        cp.error = None;
        cp.failure_reason = None;
        self.inner.jobs.save(cp).await?;
        self.publish(cp);
        Ok(())
    }

    pub async fn pause(&self) -> Result<State, CommandError> {
        self.wait_ready().await?;
        let a = self
            .command("pause".into(), |e| {
                async move { e.do_pause().await }.boxed()
            })
            .await?;
        Ok(a.state)
    }

    async fn do_pause(&self) -> Answer {
        let mut ctl = self.inner.control.lock().await;
        let next = {
            let cp = self.inner.cp.lock().await;
            state::next_state(cp.state, Command::Pause, self.progress(&cp))?
        };
        self.stop_pipeline(&mut ctl).await;
        let mut cp = self.inner.cp.lock().await;
        // The pipeline may have failed while draining.
        if cp.state == State::Failed {
            return Err(CommandError::Conflict(format!(
                "the migration failed while pausing: {}",
                cp.error.clone().unwrap_or_default()
            )));
        }
        self.enter(&mut cp, next).await?;
        info!("migration paused");
        Ok(Accepted {
            state: next,
            preflight: None,
        })
    }

    pub async fn resume(&self, from_failure: bool) -> Result<State, CommandError> {
        self.wait_ready().await?;
        let a = self
            .command(format!("resume {from_failure}"), move |e| {
                async move { e.do_resume(from_failure).await }.boxed()
            })
            .await?;
        Ok(a.state)
    }

    async fn do_resume(&self, from_failure: bool) -> Answer {
        let mut ctl = self.inner.control.lock().await;
        let mut cp = self.inner.cp.lock().await;
        let next = state::next_state(
            cp.state,
            Command::Resume { from_failure },
            self.progress(&cp),
        )?;
        // A failure during finalize resumes the finalize.
        let next = if cp.state == State::Failed && cp.cutoff_ts.is_some() {
            State::Finalizing
        } else {
            next
        };
        self.enter(&mut cp, next).await?;
        drop(cp);
        self.spawn(&mut ctl);
        info!("migration resumed");
        Ok(Accepted {
            state: next,
            preflight: None,
        })
    }

    pub async fn finalize(&self, req: FinalizeRequest) -> Result<State, CommandError> {
        self.wait_ready().await?;
        let key = format!(
            "finalize {}",
            serde_json::to_string(&req).unwrap_or_default()
        );
        let a = self
            .command(key, move |e| {
                async move { e.do_finalize(req).await }.boxed()
            })
            .await?;
        Ok(a.state)
    }

    async fn do_finalize(&self, req: FinalizeRequest) -> Answer {
        let mut ctl = self.inner.control.lock().await;
        {
            let cp = self.inner.cp.lock().await;
            state::next_state(cp.state, Command::Finalize, self.progress(&cp))?;
        }
        if req.block_source_writes {
            // Refuse before any step is taken when the source cannot block writes.
            self.inner
                .jobs
                .check_write_blocking()
                .await
                .map_err(|e| CommandError::Conflict(e.to_string()))?;
        }
        self.stop_pipeline(&mut ctl).await;
        let mut cp = self.inner.cp.lock().await;
        if cp.state == State::Failed {
            return Err(CommandError::Conflict(format!(
                "the migration failed before finalize could start: {}",
                cp.error.clone().unwrap_or_default()
            )));
        }
        if req.block_source_writes {
            self.inner
                .jobs
                .block_writes()
                .await
                .map_err(|e| CommandError::Conflict(e.to_string()))?;
        }
        let cutoff = self.inner.jobs.source_time().await?;
        cp.cutoff_ts = Some(cutoff);
        cp.verify_mode = Some(req.verify);
        cp.finalization = Some(super::finalize::started_report(
            cutoff,
            req.block_source_writes,
        ));
        self.enter(&mut cp, State::Finalizing).await?;
        drop(cp);
        self.spawn(&mut ctl);
        info!(cutoff = %optime::ts_string(cutoff), "finalizing");
        Ok(Accepted {
            state: State::Finalizing,
            preflight: None,
        })
    }

    /// Stop the pipeline (drain, flush, checkpoint) and wait for it.
    pub(super) async fn stop_pipeline(&self, ctl: &mut Option<Running>) {
        if let Some(r) = ctl.take() {
            r.cancel.cancel();
            if let Err(e) = r.join.await {
                warn!(error = %e, "the pipeline task ended abnormally");
            }
        }
        if let Ok(mut c) = self.inner.pipeline_cancel.lock() {
            *c = None;
        }
    }

    pub(super) fn spawn(&self, ctl: &mut Option<Running>) {
        let cancel = CancellationToken::new();
        if let Ok(mut c) = self.inner.pipeline_cancel.lock() {
            *c = Some(cancel.clone());
        }
        let this = self.clone();
        let c = cancel.clone();
        let join = tokio::spawn(
            async move { this.pipeline(c).await }.instrument(tracing::info_span!("pipeline")),
        );
        *ctl = Some(Running { cancel, join });
    }
}
