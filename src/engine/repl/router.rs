//! The router: sends each CRUD event to the applier that owns its document (hash of namespace
//! and document key, so a document's events stay in order), applies DDL behind a barrier, and
//! tracks commit markers.
//!
//! Commit tracking: the reader regularly sends a flush marker down every applier's queue.
//! When all appliers have acknowledged a marker, every event dispatched before it is
//! durably applied, and the marker's op time becomes the resume point.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mongodb::bson::{Document, Timestamp};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use super::super::ctx::Ctx;
use super::super::error::{EngineError, Result};
use super::super::filter::NamespaceFilter;
use super::applier::Msg;
use super::ddl::{self, DdlDecision, DdlOp};
use super::translate::{self, Translated};

/// Bytes of events queued for appliers.
pub const QUEUE_BUDGET_KIB: u32 = 64 * 1024;

struct Marker {
    ts: Timestamp,
    /// The stream position the marker stands for, where known.
    token: Option<Document>,
    /// One acknowledgement per applier; `None` once received.
    acks: Vec<Option<oneshot::Receiver<Result<u64>>>>,
}

/// What dispatching an event led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    Done,
    /// A DDL asked for collections to be copied anew: replication stops here (everything
    /// before the event is applied) and resumes after the copy.
    NeedsCopy,
}

pub struct Router {
    ctx: Arc<Ctx>,
    senders: Vec<mpsc::Sender<Msg>>,
    budget: Arc<Semaphore>,
    markers: VecDeque<Marker>,
    filter: NamespaceFilter,
    /// Capped namespaces: routed to one applier (insertion order) and written outside
    /// transactions.
    capped: HashSet<String>,
    /// Renames replayed up to this time are copied anew (see `ddl::during_catch_up`).
    copy_finish: Option<Timestamp>,
}

impl Router {
    pub fn new(
        ctx: Arc<Ctx>,
        senders: Vec<mpsc::Sender<Msg>>,
        filter: NamespaceFilter,
        capped: HashSet<String>,
        copy_finish: Option<Timestamp>,
    ) -> Self {
        Router {
            ctx,
            senders,
            budget: Arc::new(Semaphore::new(QUEUE_BUDGET_KIB as usize)),
            markers: VecDeque::new(),
            filter,
            capped,
            copy_finish,
        }
    }

    /// Close the appliers' queues (they finish what they hold and end).
    pub fn close(&mut self) {
        self.senders.clear();
    }

    pub fn has_markers(&self) -> bool {
        !self.markers.is_empty()
    }

    /// Route one event of `size` bytes: CRUD to its applier, DDL behind a barrier.
    pub async fn dispatch(&mut self, ev: &Document, size: usize) -> Result<Routed> {
        match translate::translate(ev) {
            Translated::Crud { db, coll, op } => {
                if !self.filter.selected(&db, &coll) {
                    return Ok(Routed::Done);
                }
                let ns = format!("{db}.{coll}");
                let capped = self.capped.contains(&ns);
                let key = if capped {
                    Document::new()
                } else {
                    op.filter().clone()
                };
                let w = translate::route(&db, &coll, &key, self.senders.len());
                let kib = ((size / 1024).max(1) as u32).min(QUEUE_BUDGET_KIB);
                let permit = self
                    .budget
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|_| EngineError::TaskStopped("the applier budget"))?;
                let tx = &self.senders[w];
                self.ctx
                    .metrics
                    .applier_queue_depth
                    .with_label_values(&[&w.to_string()])
                    .set((tx.max_capacity() - tx.capacity()) as i64);
                tx.send(Msg::Op {
                    db,
                    coll,
                    op: Box::new(op),
                    capped,
                    _permit: permit,
                })
                .await
                .map_err(|_| EngineError::TaskStopped("an applier"))?;
            }
            Translated::Ddl => match ddl::decide(ev, &self.filter) {
                DdlDecision::Skip => {}
                DdlDecision::Fail(m) => return Err(EngineError::UnexpectedDdl(m)),
                DdlDecision::Apply(op) => return self.apply_ddl(ev, op).await,
            },
            Translated::Skip(why) => debug!(why, "event skipped"),
            Translated::Unsupported(m) => return Err(EngineError::UnexpectedDdl(m)),
        }
        Ok(Routed::Done)
    }

    async fn apply_ddl(&mut self, ev: &Document, op: DdlOp) -> Result<Routed> {
        let ts = ev.get_timestamp("clusterTime").unwrap_or(Timestamp {
            time: 0,
            increment: 0,
        });
        let ops = ddl::during_catch_up(op, ts, self.copy_finish);
        // Barrier: everything before the DDL is written first.
        let before = Timestamp {
            time: ts.time,
            increment: ts.increment.saturating_sub(1),
        };
        self.mark(before, None).await?;
        self.settle(true).await?;
        let mut routed = Routed::Done;
        for op in &ops {
            if ddl::apply(&self.ctx, &self.filter, op, ts).await? == ddl::Applied::NeedsCopy {
                routed = Routed::NeedsCopy;
            }
            self.track_capped(op);
            self.ctx
                .metrics
                .ddl_applied
                .with_label_values(&[op.name()])
                .inc();
        }
        self.ctx
            .live
            .set_applied_at(ts, ev.get_document("_id").ok().cloned());
        self.ctx.metrics.events_applied.inc();
        self.ctx.live.events_applied.fetch_add(1, Ordering::Relaxed);
        Ok(routed)
    }

    /// Keep the set of capped namespaces in step with DDL.
    fn track_capped(&mut self, op: &DdlOp) {
        match op {
            DdlOp::Create {
                db,
                coll,
                capped: true,
                ..
            } => {
                self.capped.insert(format!("{db}.{coll}"));
            }
            DdlOp::Drop { db, coll } => {
                self.capped.remove(&format!("{db}.{coll}"));
            }
            DdlOp::Rename {
                db,
                coll,
                to_db,
                to_coll,
            } if self.capped.remove(&format!("{db}.{coll}")) => {
                self.capped.insert(format!("{to_db}.{to_coll}"));
            }
            _ => {}
        }
    }

    /// Send a flush marker for everything dispatched up to `ts`, the stream position `token`.
    pub async fn mark(&mut self, ts: Timestamp, token: Option<Document>) -> Result<()> {
        let mut acks = Vec::with_capacity(self.senders.len());
        for s in &self.senders {
            let (tx, rx) = oneshot::channel();
            s.send(Msg::Flush(tx))
                .await
                .map_err(|_| EngineError::TaskStopped("an applier"))?;
            acks.push(Some(rx));
        }
        self.markers.push_back(Marker { ts, token, acks });
        Ok(())
    }

    /// Advance the applied op time past every fully acknowledged marker; with `wait`, wait
    /// for all.
    pub async fn settle(&mut self, wait: bool) -> Result<()> {
        while let Some(front) = self.markers.front_mut() {
            let mut all = true;
            for slot in front.acks.iter_mut() {
                let Some(rx) = slot.as_mut() else { continue };
                let r = if wait {
                    rx.await
                        .map_err(|_| EngineError::TaskStopped("an applier"))?
                } else {
                    match rx.try_recv() {
                        Ok(r) => r,
                        Err(oneshot::error::TryRecvError::Empty) => {
                            all = false;
                            break;
                        }
                        Err(oneshot::error::TryRecvError::Closed) => {
                            return Err(EngineError::TaskStopped("an applier"))
                        }
                    }
                };
                *slot = None;
                let n = r?;
                self.ctx.metrics.events_applied.inc_by(n);
                self.ctx.live.events_applied.fetch_add(n, Ordering::Relaxed);
            }
            if !all {
                break;
            }
            if let Some(m) = self.markers.pop_front() {
                self.ctx.live.set_applied_at(m.ts, m.token);
            }
        }
        Ok(())
    }
}
