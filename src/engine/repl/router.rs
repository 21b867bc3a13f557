//! The router: sends each CRUD event to the applier that owns its document, applies DDL
//! behind a barrier, and tracks commit markers.
//!
//! **Ownership.** A document's events go to the applier its key hashes to, so they stay in
//! order — unless a source transaction moved it: a transaction's operations all go to one
//! applier (its *home*) so they are written in one target transaction, and a document it
//! touched stays with that applier until the applier has written it (the router keeps the
//! last applier and dispatch number of every document in flight, and each applier reports the
//! highest dispatch number it has written). Earlier writes to the transaction's documents
//! still buffered by other appliers are written first: the router sends those appliers a
//! barrier, and the home applier waits for them before it commits the batch holding the
//! transaction. Every wait is for a barrier sent before the waiting transaction, so appliers
//! never wait on each other in a cycle.
//!
//! **Commit tracking.** The reader regularly sends a flush marker down every applier's queue.
//! When all appliers have acknowledged a marker, every event dispatched before it is
//! durably applied, and the marker's position becomes the resume point. The reader only
//! marks positions between transactions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mongodb::bson::{Document, Timestamp};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use super::super::ctx::Ctx;
use super::super::error::{EngineError, Result};
use super::super::filter::NamespaceFilter;
use super::super::store::TxnMarker;
use super::applier::{Msg, Progress, Txn};
use super::ddl::{self, DdlDecision, DdlOp};
use super::translate::{self, Translated, WriteOp};
use super::txn;
use super::write::Op;

/// Bytes of events queued for appliers.
pub const QUEUE_BUDGET_KIB: u32 = 64 * 1024;
/// Dispatches between two prunings of the ownership map.
const PRUNE_EVERY: u64 = 4096;

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

/// Where a transaction goes: the applier holding most of its documents' unwritten
/// operations (ties: the lowest), or, when none holds any, the applier of its first
/// document; and the other appliers that hold unwritten operations on its documents (they
/// write them first). `keys`: per operation, its natural applier and the applier holding
/// unwritten operations on its document, if any. Pure.
pub fn place_txn(keys: &[(usize, Option<usize>)]) -> (usize, Vec<usize>) {
    let mut count: std::collections::BTreeMap<usize, usize> = Default::default();
    for (_, held) in keys {
        if let Some(a) = held {
            *count.entry(*a).or_default() += 1;
        }
    }
    let home = count
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(a, _)| *a)
        .or_else(|| keys.first().map(|(n, _)| *n))
        .unwrap_or(0);
    let deps = count.keys().copied().filter(|a| *a != home).collect();
    (home, deps)
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
    /// Renames replayed up to this time are copied anew (see `ddl::during_catch_up`); inserts
    /// up to it are written as replacements (the copy may hold their documents).
    copy_finish: Option<Timestamp>,
    /// Dispatch numbers, and the last applier and number of every document in flight.
    seq: u64,
    owner: HashMap<u64, (usize, u64)>,
    progress: Arc<Progress>,
    /// What an earlier run applied past the checkpoint (skipped when replayed).
    replayed: txn::Replayed,
}

/// An operation ready to route.
struct Routable {
    op: Op,
    /// The document's identity (`translate::key_hash`).
    key: u64,
    capped: bool,
}

impl Router {
    pub fn new(
        ctx: Arc<Ctx>,
        senders: Vec<mpsc::Sender<Msg>>,
        filter: NamespaceFilter,
        capped: HashSet<String>,
        copy_finish: Option<Timestamp>,
        progress: Arc<Progress>,
        replayed: txn::Replayed,
    ) -> Self {
        Router {
            ctx,
            senders,
            budget: Arc::new(Semaphore::new(QUEUE_BUDGET_KIB as usize)),
            markers: VecDeque::new(),
            filter,
            capped,
            copy_finish,
            seq: 0,
            owner: HashMap::new(),
            progress,
            replayed,
        }
    }

    /// The applier holding unwritten operations on the document `key`, if any.
    fn holder(&self, key: u64) -> Option<usize> {
        self.owner
            .get(&key)
            .filter(|(a, s)| *s > self.progress.applied(*a))
            .map(|(a, _)| *a)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        if self.seq.is_multiple_of(PRUNE_EVERY) {
            let p = &self.progress;
            self.owner.retain(|_, (a, s)| *s > p.applied(*a));
        }
        self.seq
    }

    /// An event's operation (`t`, its translation), ready to route: `None` when it is not
    /// replicated.
    fn crud(&self, ev: &Document, t: Translated) -> Result<Option<Routable>> {
        match t {
            Translated::Crud { db, coll, op } => {
                if !self.filter.selected(&db, &coll) {
                    return Ok(None);
                }
                let capped = self.capped.contains(&format!("{db}.{coll}"));
                let key = if capped {
                    translate::key_hash(&db, &coll, &Document::new())
                } else {
                    translate::key_hash(&db, &coll, op.filter())
                };
                // Up to the copy's end, the copy may hold an inserted document already.
                let op = match op {
                    WriteOp::Insert { filter, doc }
                        if self.copy_finish.is_some_and(|f| {
                            ev.get_timestamp("clusterTime").is_ok_and(|t| t <= f)
                        }) =>
                    {
                        WriteOp::Upsert { filter, doc }
                    }
                    other => other,
                };
                Ok(Some(Routable {
                    op: Op { db, coll, op },
                    key,
                    capped,
                }))
            }
            Translated::Unsupported(m) => Err(EngineError::UnexpectedDdl(m)),
            Translated::Ddl | Translated::Skip(_) => Ok(None),
        }
    }

    async fn permit(&self, size: usize) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let kib = ((size / 1024).max(1) as u32).min(QUEUE_BUDGET_KIB);
        self.budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| EngineError::TaskStopped("the applier budget"))
    }

    async fn send(&self, w: usize, msg: Msg) -> Result<()> {
        let tx = &self.senders[w];
        self.ctx
            .metrics
            .applier_queue_depth
            .with_label_values(&[&w.to_string()])
            .set((tx.max_capacity() - tx.capacity()) as i64);
        tx.send(msg)
            .await
            .map_err(|_| EngineError::TaskStopped("an applier"))
    }

    /// Send one operation to the applier that owns its document.
    async fn send_op(&mut self, r: Routable, size: usize) -> Result<()> {
        let n = self.senders.len() as u64;
        let w = self.holder(r.key).unwrap_or((r.key % n) as usize);
        let permit = self.permit(size).await?;
        let seq = self.next_seq();
        self.owner.insert(r.key, (w, seq));
        self.send(
            w,
            Msg::Op {
                seq,
                db: r.op.db,
                coll: r.op.coll,
                op: Box::new(r.op.op),
                capped: r.capped,
                _permit: permit,
            },
        )
        .await
    }

    /// Route the events of one source transaction (`events` with their sizes) so that it is
    /// written in one target transaction, in order with every other write to its documents.
    /// Its DDL, if any (a collection created in the transaction), is applied first.
    pub async fn dispatch_txn(
        &mut self,
        id: &txn::TxnId,
        ts: Timestamp,
        events: &[(Document, usize)],
    ) -> Result<Routed> {
        let mut routed = Routed::Done;
        // Kept for the whole run: transactions complete out of op-time order (several may be
        // gathered at once), so a later one is no sign that the recorded ones are behind.
        let applied = self.replayed.txn_applied(id, ts);
        if applied && !self.replayed.any_wiped() {
            debug!("transaction skipped: an earlier run applied it");
            return Ok(routed);
        }
        // Applied by an earlier run, but a DDL replayed since wiped some of its collections:
        // only its operations there are applied again (elsewhere the target holds them, and
        // maybe later writes).
        let again = |r: &txn::Replayed, db: &str, coll: Option<&str>| {
            !applied || r.wiped(db, coll.unwrap_or(""))
        };
        let mut ops: Vec<Routable> = Vec::with_capacity(events.len());
        let mut size = 0usize;
        for (ev, sz) in events {
            if translate::is_ddl(ev) {
                let ns = translate::event_ns(ev);
                if ns.is_some_and(|(db, coll)| again(&self.replayed, &db, coll.as_deref()))
                    && self.dispatch(ev, *sz).await? == Routed::NeedsCopy
                {
                    routed = Routed::NeedsCopy;
                }
                continue;
            }
            if let Some(r) = self.crud(ev, translate::translate(ev))? {
                if again(&self.replayed, &r.op.db, Some(&r.op.coll)) {
                    ops.push(r);
                    size += sz;
                }
            }
        }
        if applied {
            debug!(
                operations = ops.len(),
                "transaction applied by an earlier run: applying again its operations on collections wiped since"
            );
        }
        if applied || ops.len() <= 1 || ops.iter().any(|r| r.capped) {
            // Nothing to keep together (or only the part of an applied one on wiped
            // collections, which readers saw wiped anyway), or a capped collection (which
            // takes no transactional writes; servers refuse them in transactions anyway).
            for r in ops {
                if self.replayed.skips(&r.op.db, &r.op.coll, r.key, ts) {
                    debug!("event skipped: a transaction applied by an earlier run is newer");
                    continue;
                }
                self.send_op(r, size / events.len().max(1)).await?;
            }
            return Ok(routed);
        }
        let n = self.senders.len() as u64;
        let keys: Vec<(usize, Option<usize>)> = ops
            .iter()
            .map(|r| ((r.key % n) as usize, self.holder(r.key)))
            .collect();
        let (home, deps) = place_txn(&keys);
        let permit = self.permit(size).await?;
        let mut after = Vec::with_capacity(deps.len());
        for a in deps {
            let (tx, rx) = oneshot::channel();
            self.send(a, Msg::Barrier(tx)).await?;
            after.push(rx);
        }
        let seq = self.next_seq();
        for r in &ops {
            self.owner.insert(r.key, (home, seq));
        }
        let marker = TxnMarker {
            id: id.marker_id(),
            ts: Some(ts),
            keys: ops.iter().map(|r| r.key as i64).collect(),
        };
        let marker =
            mongodb::bson::to_raw_document_buf(&marker).map_err(|e| EngineError::Encode {
                what: "a transaction record".into(),
                detail: e.to_string(),
            })?;
        self.send(
            home,
            Msg::Txn(Box::new(Txn {
                seq,
                ops: ops.into_iter().map(|r| r.op).collect(),
                after,
                marker,
                _permit: permit,
            })),
        )
        .await?;
        Ok(routed)
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
        // Translated once: a translation copies the event's documents.
        match translate::translate(ev) {
            t @ Translated::Crud { .. } => {
                if let Some(r) = self.crud(ev, t)? {
                    let ts = ev.get_timestamp("clusterTime").ok();
                    if ts.is_some_and(|t| self.replayed.skips(&r.op.db, &r.op.coll, r.key, t)) {
                        debug!("event skipped: a transaction applied by an earlier run is newer");
                        return Ok(Routed::Done);
                    }
                    self.send_op(r, size).await?;
                }
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
            // Recorded first: applying it may wipe part of what an earlier run applied.
            for w in ddl::wipes(op) {
                self.replayed.wipe(&w);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_goes_where_its_documents_wait() {
        // Nothing in flight: the first document's applier, no barrier.
        assert_eq!(place_txn(&[(2, None), (0, None)]), (2, vec![]));
        // Two documents still held by applier 1, one by 3: home 1, applier 3 writes first.
        assert_eq!(
            place_txn(&[(0, Some(1)), (2, Some(3)), (1, Some(1)), (2, None)]),
            (1, vec![3])
        );
        // A tie goes to the lowest applier; the other holders are barriers.
        assert_eq!(place_txn(&[(0, Some(2)), (1, Some(1))]), (1, vec![2]));
        assert_eq!(place_txn(&[]), (0, vec![]));
    }
}
