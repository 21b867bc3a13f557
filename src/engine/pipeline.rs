//! The pipeline: copy what waits to be copied, replicate, and at a cutoff finalize — run until
//! stopped, finalized or failed, retrying transient errors from the checkpoint.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::copy::CopyOutcome;
use super::error::{EngineError, ErrorClass, Result};
use super::repl::ReplOutcome;
use super::{tuning, Engine};
use crate::api::{Direction, Phase, State};

/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run that went well this long starts the backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The next wait after a failed run of `ran` that waited `delay` before. Pure.
pub fn next_backoff(delay: Duration, ran: Duration) -> Duration {
    let base = if ran >= HEALTHY_RUN {
        Duration::from_secs(1)
    } else {
        delay
    };
    (base * 2).min(MAX_BACKOFF)
}

impl Engine {
    /// Run until stopped, finalized or failed, retrying transient errors from the checkpoint.
    pub(super) async fn pipeline(&self, cancel: CancellationToken) {
        let mut delay = Duration::from_secs(1);
        loop {
            let began = std::time::Instant::now();
            let r = self.run_once(&cancel).await;
            let ran = began.elapsed();
            match r {
                Ok(()) => return,
                Err(e) if cancel.is_cancelled() && e.class() == ErrorClass::Transient => return,
                Err(e) if e.class() == ErrorClass::Transient => {
                    // One fault an hour must not wait out the longest delay.
                    if ran >= HEALTHY_RUN {
                        delay = Duration::from_secs(1);
                    }
                    self.count_error(&e);
                    warn!(error = %e, retry_in = ?delay, "transient error; resuming from the checkpoint");
                    self.inner.ctx.live.set_info(format!("retrying after: {e}"));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = next_backoff(delay, Duration::ZERO);
                    self.reload().await;
                }
                Err(e) => {
                    self.count_error(&e);
                    let mut cp = self.inner.cp.lock().await;
                    let e = if cp.direction == Direction::Reverse {
                        e.in_reverse()
                    } else {
                        e
                    };
                    error!(error = %e, direction = %cp.direction, "job failed");
                    self.fail(&mut cp, &e);
                    // A deposed worker records nothing: the target is another's now.
                    if !matches!(e, EngineError::Fenced { .. } | EngineError::NotHolding) {
                        if let Err(se) = self.inner.jobs.save(&mut cp).await {
                            warn!(error = %se, "could not record the failure in the checkpoint");
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Before a retry: take back what was durably saved (the run may have advanced the
    /// in-memory copy past it).
    async fn reload(&self) {
        let Some(saved) = self.inner.ctx.store.last_saved() else {
            return;
        };
        let mut cp = self.inner.cp.lock().await;
        if saved.epoch == cp.epoch && saved.state == cp.state {
            *cp = saved;
        } else {
            warn!(
                saved_epoch = saved.epoch,
                epoch = cp.epoch,
                "the saved checkpoint is not this run's; keeping the one in memory"
            );
        }
    }

    async fn run_once(&self, cancel: &CancellationToken) -> Result<()> {
        let (jobs, stages, live) = (&self.inner.jobs, &self.inner.stages, &self.inner.ctx.live);
        jobs.probe().await?;
        let (opts, resetting, cutoff, finalizing) = {
            let cp = self.inner.cp.lock().await;
            (
                cp.options.clone(),
                cp.resetting,
                cp.cutoff_ts,
                cp.state == State::Finalizing,
            )
        };
        if resetting {
            // Never replicate onto half-dropped data.
            return Err(EngineError::Invalid(
                "a reset is unfinished; restart the worker to finish it".into(),
            ));
        }
        let tuning = tuning::resolve(&opts).map_err(EngineError::Invalid)?;
        // A reverse prepares the old source once, before its first event.
        super::reverse::prepare(&self.inner.ctx, &self.inner.cp).await?;
        loop {
            let clone_done = self.inner.cp.lock().await.clone_completed;
            if !clone_done || stages.copy_pending().await? {
                live.set_phase(
                    Some(Phase::Copying),
                    if clone_done {
                        "copying collections anew"
                    } else {
                        "initial sync: copying data"
                    },
                );
                if stages.copy(&self.inner.cp, &tuning, cancel).await? == CopyOutcome::Stopped {
                    return Ok(());
                }
            }
            live.set_phase(
                Some(Phase::Replicating),
                if finalizing {
                    "finalizing: applying events up to the cutoff"
                } else {
                    "replicating changes"
                },
            );
            let outcome = stages
                .replicate(
                    &self.inner.cp,
                    &tuning,
                    cancel,
                    cutoff.filter(|_| finalizing),
                )
                .await?;
            match outcome {
                ReplOutcome::NeedsCopy if !cancel.is_cancelled() => continue,
                ReplOutcome::NeedsCopy | ReplOutcome::Stopped => return Ok(()),
                ReplOutcome::ReachedCutoff if finalizing => {
                    live.set_phase(None, "finalizing: restoring indexes and verifying");
                    stages.finalize(&self.inner.cp, cancel).await?;
                    let cp = self.inner.cp.lock().await;
                    self.publish(&cp);
                    return Ok(());
                }
                ReplOutcome::ReachedCutoff => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_starts_afresh_after_a_healthy_run() {
        let s = Duration::from_secs;
        assert_eq!(next_backoff(s(1), s(0)), s(2));
        assert_eq!(next_backoff(s(16), s(0)), s(30));
        assert_eq!(next_backoff(s(30), s(5)), s(30));
        assert_eq!(next_backoff(s(30), s(61)), s(2));
    }
}
