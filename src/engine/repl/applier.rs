//! An applier: one of N tasks, each owning the documents whose key hashes to it, buffering
//! their operations and writing them as one fenced batch on a flush marker or when full.

use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use mongodb::ClientSession;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::super::ctx::Ctx;
use super::super::error::{EngineError, Result};
use super::translate::WriteOp;
use super::write::{Op, Plan};

/// What the router sends an applier.
pub enum Msg {
    Op {
        db: String,
        coll: String,
        op: Box<WriteOp>,
        /// Capped collections take no transactional writes: written beside the batch.
        capped: bool,
        /// Returns the event's bytes to the router's budget once written.
        _permit: OwnedSemaphorePermit,
    },
    /// Write everything buffered, then answer how many operations were applied.
    Flush(oneshot::Sender<Result<u64>>),
}

/// Run one applier until its queue closes.
pub async fn run(ctx: Arc<Ctx>, id: usize, mut rx: mpsc::Receiver<Msg>, bulk_ops: usize) {
    let mut buf: Vec<Op> = Vec::new();
    let mut capped: Vec<Op> = Vec::new();
    let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
    // The first failure: every later flush answers it, so the router stops.
    let mut failed: Option<EngineError> = None;
    let mut applied_since_ack: u64 = 0;
    let label = id.to_string();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Op {
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
                    capped.push(o);
                } else {
                    buf.push(o);
                }
                permits.push(_permit);
                if buf.len() + capped.len() >= bulk_ops {
                    match flush(&ctx, &mut buf, &mut capped).await {
                        Ok(n) => applied_since_ack += n,
                        Err(e) => failed = Some(e),
                    }
                    permits.clear();
                }
            }
            Msg::Flush(ack) => {
                let r = match &failed {
                    Some(f) => Err(f.clone()),
                    None => match flush(&ctx, &mut buf, &mut capped).await {
                        Ok(n) => Ok(std::mem::take(&mut applied_since_ack) + n),
                        Err(e) => {
                            failed = Some(e.clone());
                            Err(e)
                        }
                    },
                };
                permits.clear();
                ctx.metrics
                    .applier_queue_depth
                    .with_label_values(&[&label])
                    .set(rx.len() as i64);
                let _ = ack.send(r);
            }
        }
    }
}

/// Write the buffered operations: those of ordinary collections as one fenced transaction,
/// those of capped collections (which take no transactional writes) after a fence check.
async fn flush(ctx: &Ctx, buf: &mut Vec<Op>, capped: &mut Vec<Op>) -> Result<u64> {
    if buf.is_empty() && capped.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    let n = write(ctx, std::mem::take(buf), false).await?
        + write(ctx, std::mem::take(capped), true).await?;
    ctx.metrics
        .flush_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics.flush_ops.observe(n as f64);
    Ok(n)
}

/// Write operations as one fenced batch: a transaction, or for capped collections (which
/// take no transactional writes) beside a fence check. A statement the target refuses is
/// turned into a re-read of the source's document and the batch runs again.
async fn write(ctx: &Ctx, ops: Vec<Op>, capped: bool) -> Result<u64> {
    let mut plan = Plan::new(ops);
    if plan.is_empty() {
        return Ok(0);
    }
    let fence = ctx.store.fence();
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
            Ok(()) => return Ok(plan.ops),
            Err(refused) => plan.refetch(refused),
        }
    }
}
