//! Live progress shared by the pipeline's tasks and read by `GET /status` without waiting
//! on any lock the pipeline holds for long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use mongodb::bson::{Document, Timestamp};

use super::optime;
use super::store::Checkpoint;
use crate::api::{CheckpointInfo, InitialSync, Phase, ReverseInfo, State, WorkerStatus};

#[derive(Default)]
struct Text {
    state: State,
    phase: Option<Phase>,
    info: String,
    error: Option<String>,
    reason: Option<String>,
}

#[derive(Default)]
pub struct Live {
    applied: AtomicU64,
    /// The resume token of the applied position and its op time (packed): valid while that
    /// op time is the applied one.
    applied_token: Mutex<Option<(u64, Document)>>,
    source_now: AtomicU64,
    /// Source time up to which the stream was seen empty with nothing left to apply.
    caught_up: AtomicU64,
    pub events_read: AtomicU64,
    pub events_applied: AtomicU64,
    pub cloned_bytes: AtomicU64,
    pub cloned_docs: AtomicU64,
    pub collections_completed: AtomicU64,
    /// The transactions-applied count when the records of applied transactions were last
    /// pruned.
    pub txns_forgotten: AtomicU64,
    /// When this process started copying, and the bytes already copied then (for the ETA).
    copy_start: Mutex<Option<(Instant, u64)>>,
    text: Mutex<Text>,
}

fn pack(ts: Timestamp) -> u64 {
    (u64::from(ts.time) << 32) | u64::from(ts.increment)
}

fn unpack(v: u64) -> Option<Timestamp> {
    (v != 0).then_some(Timestamp {
        time: (v >> 32) as u32,
        increment: v as u32,
    })
}

impl Live {
    /// Load counters from a checkpoint (worker start, reset).
    pub fn restore(&self, cp: &Checkpoint) {
        self.caught_up.store(0, Ordering::Relaxed);
        let (at, token) = match cp.resume_ts {
            Some(ts) => (Some(ts), cp.resume_token.clone()),
            None => (cp.start_ts, cp.start_token.clone()),
        };
        self.applied
            .store(at.map(pack).unwrap_or(0), Ordering::SeqCst);
        if let Ok(mut t) = self.applied_token.lock() {
            *t = at.zip(token).map(|(ts, tok)| (pack(ts), tok));
        }
        self.events_read
            .store(cp.events_read.max(0) as u64, Ordering::Relaxed);
        self.events_applied
            .store(cp.events_applied.max(0) as u64, Ordering::Relaxed);
        if cp.start_ts.is_none() {
            self.cloned_bytes.store(0, Ordering::Relaxed);
            self.cloned_docs.store(0, Ordering::Relaxed);
            self.collections_completed.store(0, Ordering::Relaxed);
        }
    }

    /// Monotonic: the applied op time never goes back.
    pub fn set_applied(&self, ts: Timestamp) {
        self.applied.fetch_max(pack(ts), Ordering::SeqCst);
    }

    /// Everything up to and including the event (or post-batch position) of `token`, at op
    /// time `ts`, is durably applied. Positions are recorded in stream order, so a later call
    /// at the same op time is a later position.
    pub fn set_applied_at(&self, ts: Timestamp, token: Option<Document>) {
        if let (Some(tok), Ok(mut cur)) = (token, self.applied_token.lock()) {
            if cur.as_ref().is_none_or(|(p, _)| pack(ts) >= *p) {
                *cur = Some((pack(ts), tok));
            }
        }
        self.set_applied(ts);
    }

    /// The applied op time and, where known, the resume token of that position (none when
    /// the op time moved past the last token recorded).
    pub fn applied_position(&self) -> (Timestamp, Option<Document>) {
        let applied = self.applied();
        let token = self.applied_token.lock().ok().and_then(|t| {
            t.as_ref()
                .filter(|(p, _)| *p == pack(applied))
                .map(|(_, tok)| tok.clone())
        });
        (applied, token)
    }

    /// The op time up to which the target is known to be consistent with the source: the
    /// last applied event, or a later time at which the stream was seen empty.
    pub fn effective_applied(&self) -> Option<Timestamp> {
        unpack(
            self.applied
                .load(Ordering::SeqCst)
                .max(self.caught_up.load(Ordering::Relaxed)),
        )
    }

    pub fn applied(&self) -> Timestamp {
        unpack(self.applied.load(Ordering::SeqCst)).unwrap_or(Timestamp {
            time: 0,
            increment: 0,
        })
    }

    pub fn source_now(&self) -> Option<Timestamp> {
        unpack(self.source_now.load(Ordering::Relaxed))
    }

    pub fn set_caught_up(&self, ts: Timestamp) {
        self.caught_up.fetch_max(pack(ts), Ordering::Relaxed);
    }

    pub fn set_source_now(&self, ts: Timestamp) {
        self.source_now.fetch_max(pack(ts), Ordering::Relaxed);
    }

    pub fn mark_copy_start(&self) {
        if let Ok(mut g) = self.copy_start.lock() {
            *g = Some((Instant::now(), self.cloned_bytes.load(Ordering::Relaxed)));
        }
    }

    /// The state, with the error and its known reason (`TargetInUse`, …) when failed.
    pub fn set_state(&self, s: State, error: Option<String>, reason: Option<String>) {
        if let Ok(mut t) = self.text.lock() {
            t.state = s;
            t.error = error;
            t.reason = reason;
            match s {
                State::Running | State::Finalizing => {}
                State::Idle => {
                    t.phase = None;
                    t.info = "idle: waiting for start".into();
                }
                State::Paused => {
                    t.phase = None;
                    t.info = "paused".into();
                }
                State::Finalized => {
                    t.phase = None;
                    t.info = "finalized".into();
                }
                State::Failed => {
                    t.phase = None;
                    t.info = "failed".into();
                }
            }
        }
    }

    pub fn set_phase(&self, p: Option<Phase>, info: &str) {
        if let Ok(mut t) = self.text.lock() {
            t.phase = p;
            t.info = info.to_string();
        }
    }

    pub fn set_info(&self, info: String) {
        if let Ok(mut t) = self.text.lock() {
            t.info = info;
        }
    }

    pub fn info(&self) -> String {
        self.text.lock().map(|t| t.info.clone()).unwrap_or_default()
    }

    pub fn state(&self) -> State {
        self.text.lock().map(|t| t.state).unwrap_or_default()
    }

    /// Lag of the applied op time behind the source, in seconds.
    pub fn lag(&self) -> Option<f64> {
        let now = unpack(self.source_now.load(Ordering::Relaxed))?;
        let applied = self.effective_applied()?;
        Some(optime::lag_seconds(applied, now))
    }

    /// The status: the state, then the job as last saved (`saved`), read in that order. A
    /// state is published only after the checkpoint that records it is saved (a failure
    /// excepted: it is published even when it cannot be saved), so a status that says
    /// `finalized` always carries the finalization's report. Read the other way round, a
    /// status taken between the save and the publish paired the new state with the checkpoint
    /// before it (seen: `finalized` with the verification still running).
    pub fn status(&self, saved: impl FnOnce() -> Option<Checkpoint>) -> WorkerStatus {
        let (state, phase, info, error, reason) = self
            .text
            .lock()
            .map(|t| {
                (
                    t.state,
                    t.phase,
                    t.info.clone(),
                    t.error.clone(),
                    t.reason.clone(),
                )
            })
            .unwrap_or_default();
        let applied = self.effective_applied();
        let cloned_bytes = self.cloned_bytes.load(Ordering::Relaxed);
        let mut s = WorkerStatus {
            ok: error.is_none(),
            state,
            phase,
            info,
            error,
            failure_reason: reason,
            events_read: self.events_read.load(Ordering::Relaxed),
            events_applied: self.events_applied.load(Ordering::Relaxed),
            ..Default::default()
        };
        let saved = saved();
        let Some(cp) = saved.as_ref() else { return s };
        s.direction = cp.direction;
        s.reverse = cp.reverse_of.as_ref().map(|o| ReverseInfo {
            job_id: o.job_id.clone(),
            job_name: o.job_name.clone(),
            cutoff: o.cutoff_ts.map(optime::op_time),
            start_point: o.start_ts.map(optime::op_time),
        });
        if state == State::Idle {
            return s;
        }
        let clone_completed = cp.clone_completed;
        let completed =
            clone_completed && matches!((applied, cp.copy_finish_ts), (Some(a), Some(f)) if a >= f);
        let est = cp.estimated_bytes.max(0) as u64;
        let eta = if clone_completed {
            Some(0.0)
        } else {
            self.copy_start.lock().ok().and_then(|g| {
                let (t0, b0) = (*g)?;
                let secs = t0.elapsed().as_secs_f64();
                let rate = (cloned_bytes.saturating_sub(b0)) as f64 / secs.max(0.001);
                (rate > 0.0 && secs > 1.0).then(|| (est.saturating_sub(cloned_bytes)) as f64 / rate)
            })
        };
        s.initial_sync = InitialSync {
            completed,
            clone_completed,
            estimated_clone_size_bytes: est,
            cloned_size_bytes: cloned_bytes,
            estimated_documents: cp.estimated_docs.max(0) as u64,
            cloned_documents: self.cloned_docs.load(Ordering::Relaxed),
            collections_total: cp.collections_total.max(0) as u64,
            collections_completed: self.collections_completed.load(Ordering::Relaxed),
            eta_seconds: eta,
        };
        if matches!(
            state,
            State::Running | State::Paused | State::Finalizing | State::Failed | State::Finalized
        ) {
            s.lag_time_seconds = self.lag();
        }
        if clone_completed {
            s.last_replicated_op_time = applied.map(optime::op_time);
        }
        s.checkpoint = Some(CheckpointInfo {
            op_time: cp.resume_ts.map(optime::op_time),
            saved_at: cp.saved_at.and_then(|d| d.try_to_rfc3339_string().ok()),
        });
        s.finalization = cp.finalization.clone();
        s.warnings = cp.warnings.clone();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_read_before_the_checkpoint() {
        // The finalize saves its report, then publishes `finalized`. A status taken across
        // both must not pair the published state with the checkpoint read before the save.
        let live = Live::default();
        live.set_state(State::Finalizing, None, None);
        let st = live.status(|| {
            live.set_state(State::Finalized, None, None);
            Some(Checkpoint {
                state: State::Finalized,
                ..Default::default()
            })
        });
        assert_eq!(st.state, State::Finalizing);
        assert_eq!(live.status(|| None).state, State::Finalized);
    }
}
