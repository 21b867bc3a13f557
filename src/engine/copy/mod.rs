//! The copy stage: plan `_id` partitions of every collection not yet copied, read them in
//! parallel and insert them through the one insert path, with the bytes in flight bounded by a
//! budget. Finished partitions are recorded, so a restarted worker does not copy them again.
//! Used for the initial copy and for collections replication asks to copy anew.
//!
//! A failure anywhere stops every other task of the stage at once (a shared cancellation),
//! so a fatal error is reported promptly instead of after every other collection finished.

pub mod insert;
pub mod partition;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, RawDocumentBuf};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::catalog;
use super::ctx::Ctx;
use super::error::{EngineError, MongoContext, Result, Side};
use super::filter::NamespaceFilter;
use super::store::{Checkpoint, CollectionEntry, PartitionEntry};
use super::tuning::Tuning;

/// Whether the copy ran to its end or was stopped (pause, finalize, shutdown).
#[derive(Debug, PartialEq, Eq)]
pub enum CopyOutcome {
    Completed,
    Stopped,
}

/// A batch on its way to an insert worker. The permit returns its bytes to the budget.
struct InsertJob {
    db: String,
    coll: String,
    docs: Vec<RawDocumentBuf>,
    bytes: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// `Ok(false)`: not inserted, the copy is stopping.
    done: oneshot::Sender<Result<bool>>,
}

/// What the copy's tasks share.
struct Pools {
    tx: mpsc::Sender<InsertJob>,
    budget: Arc<Semaphore>,
    readers: Arc<Semaphore>,
    /// Cancelled on pause, finalize or shutdown (a child of the caller's token), or by the
    /// first failure.
    stop: CancellationToken,
}

/// Copy every recorded collection that is not copied yet, building the catalog first if the
/// initial copy has not.
pub async fn run(
    ctx: &Arc<Ctx>,
    cp: &Arc<Mutex<Checkpoint>>,
    tuning: &Tuning,
    cancel: &CancellationToken,
) -> Result<CopyOutcome> {
    let (filter, catalog_done, initial) = {
        let c = cp.lock().await;
        let o = &c.options;
        (
            NamespaceFilter::new(&o.include_namespaces, &o.exclude_namespaces)
                .map_err(|e| EngineError::Invalid(e.to_string()))?,
            c.catalog_done,
            !c.clone_completed,
        )
    };
    if !catalog_done {
        catalog::build::build(ctx, cp, &filter, tuning).await?;
    }
    if let Err(e) = ctx.store.ensure_partition_index().await {
        if matches!(e, EngineError::Fenced { .. }) {
            return Err(e);
        }
        // Only a restarted copy's speed depends on it.
        warn!(error = %e, "cannot index the copy partitions; continuing without");
    }
    let mut pending: Vec<CollectionEntry> = ctx
        .store
        .all_collections()
        .await?
        .into_iter()
        .filter(|c| c.kind == "collection")
        .collect();
    if initial {
        let (done_docs, done_bytes) = ctx.store.copied_totals().await?;
        // Partitions an earlier run finished are not copied again.
        ctx.metrics
            .copy_partitions_skipped
            .inc_by(ctx.store.done_partitions().await?);
        ctx.live
            .cloned_docs
            .store(done_docs as u64, Ordering::Relaxed);
        ctx.live
            .cloned_bytes
            .store(done_bytes as u64, Ordering::Relaxed);
        ctx.live.collections_completed.store(
            pending.iter().filter(|c| c.copied).count() as u64,
            Ordering::Relaxed,
        );
        ctx.live.mark_copy_start();
    }
    pending.retain(|c| !c.copied);
    pending.sort_by_key(|c| std::cmp::Reverse(c.size_bytes));
    if !initial && !pending.is_empty() {
        info!(collections = pending.len(), "copying collections anew");
        ctx.live
            .set_info(format!("copying {} collection(s) anew", pending.len()));
    }

    // Insert workers and the byte budget shared by every reader.
    let stop = cancel.child_token();
    let (tx, rx) = mpsc::channel::<InsertJob>(tuning.insert_workers * 2);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for id in 0..tuning.insert_workers {
        let rx = rx.clone();
        let ctx = ctx.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(
            async move {
                loop {
                    let job = { rx.lock().await.recv().await };
                    let Some(job) = job else { break };
                    if stop.is_cancelled() {
                        let _ = job.done.send(Ok(false));
                        continue;
                    }
                    let r = insert::insert_batch(&ctx, &job.db, &job.coll, &job.docs, false).await;
                    if r.is_ok() {
                        count_inserted(&ctx, job.docs.len() as u64, job.bytes);
                    }
                    let _ = job.done.send(r.map(|_| true));
                }
            }
            .instrument(info_span!("inserter", id)),
        ));
    }
    let pools = Pools {
        tx,
        budget: Arc::new(Semaphore::new(tuning.budget_kib as usize)),
        readers: Arc::new(Semaphore::new(tuning.read_workers)),
        stop,
    };
    let mut first_err: Option<EngineError> = None;
    let mut failed_at: Option<std::time::Instant> = None;
    let mut completed = true;
    {
        let mut copies = futures::stream::iter(pending)
            .map(|c| {
                let span = info_span!("collection", ns = %c.ns);
                copy_collection(ctx, c, tuning, &pools).instrument(span)
            })
            .buffer_unordered(tuning.parallel_collections);
        while let Some(r) = copies.next().await {
            match r {
                Ok(done) => completed &= done,
                Err(e) => {
                    if first_err.is_none() {
                        warn!(error = %e, "copy failed; stopping every copy task");
                        pools.stop.cancel();
                        failed_at = Some(std::time::Instant::now());
                        first_err = Some(e);
                    }
                    completed = false;
                }
            }
        }
    }
    drop(pools);
    for w in workers {
        if let Err(e) = w.await {
            warn!(error = %e, "an insert worker ended abnormally");
        }
    }
    if let Some(e) = first_err {
        if let Some(t) = failed_at {
            info!(
                stopped_after_ms = t.elapsed().as_millis() as u64,
                "every copy task stopped after the failure"
            );
        }
        return Err(e);
    }
    if !completed || cancel.is_cancelled() {
        return Ok(CopyOutcome::Stopped);
    }
    // Replication past this time finds every copied collection consistent; renames it
    // replays up to here are copied anew (see `repl::ddl::during_catch_up`).
    let finish = super::conn::cluster_time(&ctx.source, Side::Source).await?;
    let mut c = cp.lock().await;
    if !c.clone_completed {
        c.clone_completed = true;
        c.copy_finish_ts = Some(finish);
    }
    c.catch_up_ts = Some(c.catch_up_ts.map_or(finish, |f| f.max(finish)));
    ctx.store.save(&mut c).await?;
    info!(finish = %super::optime::ts_string(finish), "copy complete");
    Ok(CopyOutcome::Completed)
}

fn count_inserted(ctx: &Ctx, docs: u64, bytes: u64) {
    ctx.metrics.copy_insert_documents.inc_by(docs);
    ctx.metrics.copy_insert_bytes.inc_by(bytes);
    ctx.live.cloned_docs.fetch_add(docs, Ordering::Relaxed);
    ctx.live.cloned_bytes.fetch_add(bytes, Ordering::Relaxed);
}

/// Copy one collection; `Ok(false)` when stopped before the end.
async fn copy_collection(
    ctx: &Arc<Ctx>,
    c: CollectionEntry,
    tuning: &Tuning,
    pools: &Pools,
) -> Result<bool> {
    if pools.stop.is_cancelled() {
        return Ok(false);
    }
    // An unplanned collection is planned afresh: its saved partitions, if any, are not read.
    let mut parts = if c.planned {
        ctx.store.partitions_of(&c.ns).await?
    } else {
        Vec::new()
    };
    if parts.is_empty() {
        parts = plan_collection(ctx, &c, tuning).await?;
        ctx.store.save_partitions(&parts).await?;
        ctx.store
            .mark_collection(&c.ns, doc! {"planned": true})
            .await?;
    }
    let skipped = parts.iter().filter(|p| p.done).count();
    if c.recopy_ts.is_some() {
        // A copy anew resumed after a restart (the initial copy counts its own at start).
        ctx.metrics.copy_partitions_skipped.inc_by(skipped as u64);
    }
    let todo: Vec<PartitionEntry> = parts.into_iter().filter(|p| !p.done).collect();
    info!(partitions = todo.len(), skipped, "copying");
    let mut parts = futures::stream::iter(todo)
        .map(|p| {
            let c = &c;
            let span = info_span!("partition", index = p.index);
            async move {
                let _r = pools
                    .readers
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| EngineError::TaskStopped("the copy reader pool"))?;
                copy_partition(ctx, c, &p, tuning, pools).await
            }
            .instrument(span)
        })
        .buffer_unordered(tuning.read_workers);
    let mut complete = true;
    let mut failed = None;
    while let Some(r) = parts.next().await {
        match r {
            Ok(done) => complete &= done,
            Err(e) => {
                // Stop the other partitions now (they end within a batch: every write in
                // flight is let finish, none is cut off); the error is the collection's.
                pools.stop.cancel();
                complete = false;
                failed.get_or_insert(e);
            }
        }
    }
    drop(parts);
    if let Some(e) = failed {
        return Err(e);
    }
    if !complete || pools.stop.is_cancelled() {
        return Ok(false);
    }
    // Indexes are built after the data: faster than maintaining them during the inserts.
    let specs = catalog::list_indexes(&ctx.source, Side::Source, &c.db, &c.coll).await?;
    let normalized: Vec<_> = specs.iter().map(catalog::normalize_index).collect();
    ctx.store.save_index_specs(&c.ns, &normalized).await?;
    catalog::create_relaxed_indexes(&ctx.target, ctx.store.fence(), &c.db, &c.coll, &specs).await?;
    ctx.store
        .mark_collection(&c.ns, doc! {"copied": true, "indexesBuilt": true})
        .await?;
    ctx.live
        .collections_completed
        .fetch_add(1, Ordering::Relaxed);
    info!(indexes = specs.len(), "collection copied");
    Ok(true)
}

async fn plan_collection(
    ctx: &Arc<Ctx>,
    c: &CollectionEntry,
    tuning: &Tuning,
) -> Result<Vec<PartitionEntry>> {
    if c.capped {
        return Ok(partition::plan(&c.ns, None, &Default::default(), true));
    }
    let avg = if c.documents > 0 {
        (c.size_bytes / c.documents).max(1)
    } else {
        1024
    };
    let per_partition = (tuning.partition_bytes as i64 / avg).max(1000);
    if small_enough_for_one_partition(c.documents, per_partition) {
        // Far too small to be split: one partition reading the whole collection (which
        // matches every `_id` type), without the census's round trip.
        return Ok(partition::plan(&c.ns, None, &Default::default(), false));
    }
    let census = partition::census(&ctx.source, &c.db, &c.coll).await;
    let mut splits = std::collections::BTreeMap::new();
    if let Some(cen) = &census {
        let only = cen.brackets.len() == 1;
        for (b, (n, seen)) in &cen.brackets {
            if *n > per_partition {
                let f = partition::bracket_filter(*b, seen, only);
                let s = partition::split_points(&ctx.source, &c.db, &c.coll, f, *n, per_partition)
                    .await?;
                splits.insert(*b, s);
            }
        }
    }
    Ok(partition::plan(&c.ns, census.as_ref(), &splits, false))
}

/// Whether a collection of `documents` (estimated at the catalog) is certainly copied as one
/// partition: no bracket could reach `per_partition`, even if it quadrupled since. Pure.
fn small_enough_for_one_partition(documents: i64, per_partition: i64) -> bool {
    documents >= 0 && documents.saturating_mul(4) < per_partition
}

/// Read one partition and hand its batches to the insert workers; `Ok(false)` if stopped.
async fn copy_partition(
    ctx: &Arc<Ctx>,
    c: &CollectionEntry,
    p: &PartitionEntry,
    tuning: &Tuning,
    pools: &Pools,
) -> Result<bool> {
    let coll = ctx
        .source
        .database(&c.db)
        .collection::<RawDocumentBuf>(&c.coll);
    let avg = if c.documents > 0 {
        (c.size_bytes / c.documents).max(1) as u64
    } else {
        1024
    };
    // Ask the server for about one insert batch per round trip.
    let batch_docs = (tuning.batch_bytes / avg).clamp(1, 10_000) as u32;
    let mut find = coll.find(p.filter.clone()).batch_size(batch_docs);
    if p.natural {
        find = find.sort(doc! {"$natural": 1});
    }
    let reading = format!("reading {}", c.ns);
    let mut cursor = find.await.on(Side::Source, &reading)?;
    let mut pending: Vec<oneshot::Receiver<Result<bool>>> = Vec::new();
    let (mut docs_n, mut bytes_n) = (0i64, 0i64);
    let mut batch: Vec<RawDocumentBuf> = Vec::new();
    let mut batch_bytes = 0u64;
    let mut stopped = false;
    loop {
        if pools.stop.is_cancelled() {
            stopped = true;
            break;
        }
        let next = match cursor.try_next().await {
            Ok(n) => n,
            // Dropped or renamed while being copied: replication replays the drop or the
            // rename (which copies the new name anew), so what was copied is enough.
            Err(e)
                if super::error::mongo_code(&e)
                    .is_some_and(|c| super::error::COLLECTION_GONE_CODES.contains(&c)) =>
            {
                warn!("collection dropped or renamed while being copied");
                None
            }
            Err(e) => return Err(EngineError::mongo(Side::Source, reading, e)),
        };
        let end = next.is_none();
        if let Some(d) = next {
            let len = d.as_bytes().len() as u64;
            ctx.metrics.copy_read_documents.inc();
            ctx.metrics.copy_read_bytes.inc_by(len);
            batch_bytes += len;
            batch.push(d);
        }
        if (end && !batch.is_empty()) || batch_bytes >= tuning.batch_bytes || batch.len() >= 100_000
        {
            let docs = std::mem::take(&mut batch);
            let bytes = std::mem::take(&mut batch_bytes);
            docs_n += docs.len() as i64;
            bytes_n += bytes as i64;
            if p.natural {
                // Capped collections keep their insertion order: one ordered writer.
                insert::insert_batch(ctx, &c.db, &c.coll, &docs, true).await?;
                count_inserted(ctx, docs.len() as u64, bytes);
            } else {
                let kib = ((bytes / 1024).max(1) as u32).min(tuning.budget_kib);
                let permit = pools
                    .budget
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|_| EngineError::TaskStopped("the copy budget"))?;
                let (done, rx) = oneshot::channel();
                let job = InsertJob {
                    db: c.db.clone(),
                    coll: c.coll.clone(),
                    docs,
                    bytes,
                    _permit: permit,
                    done,
                };
                if pools.tx.send(job).await.is_err() {
                    return Err(EngineError::TaskStopped("the copy insert workers"));
                }
                pending.push(rx);
            }
        }
        if end {
            break;
        }
    }
    for rx in pending {
        let inserted = rx
            .await
            .map_err(|_| EngineError::TaskStopped("an insert worker"))??;
        stopped |= !inserted;
    }
    if stopped {
        return Ok(false);
    }
    ctx.store
        .mark_partition_done(&p.id, docs_n, bytes_n)
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tiny_collections_skip_the_census() {
        assert!(small_enough_for_one_partition(0, 1000));
        assert!(small_enough_for_one_partition(5, 1000));
        assert!(small_enough_for_one_partition(249, 1000));
        assert!(!small_enough_for_one_partition(250, 1000));
        assert!(!small_enough_for_one_partition(i64::MAX, 1000));
        // An unknown (negative) estimate is planned with the census.
        assert!(!small_enough_for_one_partition(-1, 1000));
    }
}
