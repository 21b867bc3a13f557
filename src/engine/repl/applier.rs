//! An applier: one of N tasks, each owning the documents routed to it, buffering their
//! operations and writing them as one fenced batch (one target transaction) on a flush
//! marker, a barrier, or when its buffer is full.
//!
//! A source transaction arrives as one message and goes into the buffer whole, so it is always
//! part of exactly one target transaction. The router attaches to it the barriers of the other
//! appliers that still hold earlier writes to its documents: the batch holding the transaction
//! waits for them before it commits (see `router.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use mongodb::ClientSession;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::super::ctx::Ctx;
use super::super::error::{EngineError, Result};
use super::translate::WriteOp;
use super::write::{Op, Plan};

/// After the target refused an insert (it held the document: events replayed after a
/// restart), inserts are written as replacements for this long.
const REPLAY_UPSERTS: Duration = Duration::from_secs(5);

/// What the router sends an applier.
pub enum Msg {
    Op {
        /// The router's dispatch number (see `Applier::applied`).
        seq: u64,
        db: String,
        coll: String,
        op: Box<WriteOp>,
        /// Capped collections take no transactional writes: written beside the batch.
        capped: bool,
        /// Returns the event's bytes to the router's budget once written.
        _permit: OwnedSemaphorePermit,
    },
    /// One source transaction, written in one target transaction.
    Txn(Box<Txn>),
    /// Write everything buffered, then answer (a transaction on another applier waits for it).
    Barrier(oneshot::Sender<Result<()>>),
    /// Write everything buffered, then answer how many operations were applied.
    Flush(oneshot::Sender<Result<u64>>),
}

/// A source transaction on its way to an applier.
pub struct Txn {
    pub seq: u64,
    pub ops: Vec<Op>,
    /// Barriers of the other appliers holding earlier writes to these documents: written
    /// before this transaction commits.
    pub after: Vec<oneshot::Receiver<Result<()>>>,
    /// Its record (`store::TxnMarker`), written with it.
    pub marker: mongodb::bson::RawDocumentBuf,
    pub _permit: OwnedSemaphorePermit,
}

/// How an applier reports progress to the router.
pub struct Progress {
    /// Per applier: the highest dispatch number durably written.
    pub applied: Vec<AtomicU64>,
}

impl Progress {
    pub fn new(workers: usize) -> Arc<Progress> {
        Arc::new(Progress {
            applied: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub fn applied(&self, worker: usize) -> u64 {
        self.applied
            .get(worker)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }
}

/// What one applier holds between two writes.
struct Buffer {
    ops: Vec<Op>,
    capped: Vec<Op>,
    permits: Vec<OwnedSemaphorePermit>,
    kib: usize,
    waits: Vec<oneshot::Receiver<Result<()>>>,
    /// Operations of each source transaction in the buffer (for the metrics), and their
    /// records.
    txns: Vec<usize>,
    markers: Vec<mongodb::bson::RawDocumentBuf>,
    /// The highest dispatch number received.
    seq: u64,
}

impl Buffer {
    fn len(&self) -> usize {
        self.ops.len() + self.capped.len()
    }
}

/// An applier's limits: operations and KiB of events buffered before it writes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub ops: usize,
    pub kib: usize,
}

/// Run one applier until its queue closes.
pub async fn run(
    ctx: Arc<Ctx>,
    id: usize,
    mut rx: mpsc::Receiver<Msg>,
    limits: Limits,
    progress: Arc<Progress>,
) {
    let mut b = Buffer {
        ops: Vec::new(),
        capped: Vec::new(),
        permits: Vec::new(),
        kib: 0,
        waits: Vec::new(),
        txns: Vec::new(),
        markers: Vec::new(),
        seq: 0,
    };
    // The first failure: every later flush answers it, so the router stops.
    let mut failed: Option<EngineError> = None;
    let mut applied_since_ack: u64 = 0;
    let mut upserts_until: Option<Instant> = None;
    let label = id.to_string();
    while let Some(msg) = rx.recv().await {
        let mut full = false;
        match msg {
            Msg::Op {
                seq,
                db,
                coll,
                op,
                capped: is_capped,
                _permit,
            } => {
                if failed.is_some() {
                    continue;
                }
                let o = Op { db, coll, op: *op };
                if is_capped {
                    b.capped.push(o);
                } else {
                    b.ops.push(o);
                }
                b.kib += _permit.num_permits();
                b.permits.push(_permit);
                b.seq = b.seq.max(seq);
                full = true;
            }
            Msg::Txn(t) => {
                if failed.is_some() {
                    continue;
                }
                let t = *t;
                b.txns.push(t.ops.len());
                b.markers.push(t.marker);
                b.ops.extend(t.ops);
                b.waits.extend(t.after);
                b.kib += t._permit.num_permits();
                b.permits.push(t._permit);
                b.seq = b.seq.max(t.seq);
                full = true;
            }
            Msg::Barrier(ack) => {
                let r = match &failed {
                    Some(f) => Err(f.clone()),
                    None => match flush(&ctx, &mut b, &mut upserts_until, &progress, id).await {
                        Ok(n) => {
                            applied_since_ack += n;
                            Ok(())
                        }
                        Err(e) => {
                            failed = Some(e.clone());
                            Err(e)
                        }
                    },
                };
                let _ = ack.send(r);
            }
            Msg::Flush(ack) => {
                let r = match &failed {
                    Some(f) => Err(f.clone()),
                    None => match flush(&ctx, &mut b, &mut upserts_until, &progress, id).await {
                        Ok(n) => Ok(std::mem::take(&mut applied_since_ack) + n),
                        Err(e) => {
                            failed = Some(e.clone());
                            Err(e)
                        }
                    },
                };
                ctx.metrics
                    .applier_queue_depth
                    .with_label_values(&[&label])
                    .set(rx.len() as i64);
                let _ = ack.send(r);
            }
        }
        if full && (b.len() >= limits.ops || b.kib >= limits.kib) {
            match flush(&ctx, &mut b, &mut upserts_until, &progress, id).await {
                Ok(n) => applied_since_ack += n,
                Err(e) => failed = Some(e),
            }
        }
    }
}

/// Write the buffer: the operations of ordinary collections as one fenced transaction (after
/// the barriers its transactions wait for), those of capped collections (which take no
/// transactional writes) after a fence check. On success, report the dispatch number.
async fn flush(
    ctx: &Ctx,
    b: &mut Buffer,
    upserts_until: &mut Option<Instant>,
    progress: &Progress,
    id: usize,
) -> Result<u64> {
    if b.len() == 0 {
        return Ok(0);
    }
    if !b.waits.is_empty() {
        let waited = Instant::now();
        for w in std::mem::take(&mut b.waits) {
            w.await
                .map_err(|_| EngineError::TaskStopped("an applier"))??;
        }
        ctx.metrics
            .txn_barrier
            .observe(waited.elapsed().as_secs_f64());
    }
    let started = Instant::now();
    let inserts = upserts_until.is_none_or(|u| Instant::now() >= u);
    let markers = std::mem::take(&mut b.markers);
    let (n, replayed) = write(ctx, std::mem::take(&mut b.ops), markers, false, inserts).await?;
    let (m, _) = write(ctx, std::mem::take(&mut b.capped), Vec::new(), true, false).await?;
    if replayed {
        *upserts_until = Some(Instant::now() + REPLAY_UPSERTS);
    }
    for t in b.txns.drain(..) {
        ctx.metrics.txns_applied.inc();
        ctx.metrics.txn_ops.observe(t as f64);
    }
    b.permits.clear();
    b.kib = 0;
    if let Some(a) = progress.applied.get(id) {
        a.fetch_max(b.seq, Ordering::Release);
    }
    ctx.metrics
        .flush_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics.flush_ops.observe((n + m) as f64);
    Ok(n + m)
}

/// Write operations as one fenced batch: a transaction, or for capped collections (which
/// take no transactional writes) beside a fence check. A statement the target refuses is
/// turned into a re-read of the source's document, an insert of a document it already holds
/// into a replacement, and the batch runs again. Returns the operations written and whether
/// an insert was refused (events replayed).
async fn write(
    ctx: &Ctx,
    ops: Vec<Op>,
    markers: Vec<mongodb::bson::RawDocumentBuf>,
    capped: bool,
    inserts: bool,
) -> Result<(u64, bool)> {
    let mut plan = Plan::new(ops, inserts);
    plan.markers = markers;
    if plan.is_empty() {
        return Ok((0, false));
    }
    let fence = ctx.store.fence();
    let mut replayed = false;
    loop {
        let body = |mut s: ClientSession| {
            let plan = &plan;
            async move {
                let r = plan.run(ctx, &mut s).await;
                (s, r)
            }
            .boxed()
        };
        let r = if capped {
            fence
                .beside("applying changes to a capped collection", body)
                .await?
        } else {
            fence.txn_or_abort("applying changes", body).await?
        };
        match r {
            Ok(()) => return Ok((plan.ops, replayed)),
            Err(refused) => {
                replayed |= matches!(refused, super::write::Refused::Insert { .. });
                plan.refetch(refused)
            }
        }
    }
}
