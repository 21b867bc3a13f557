//! The initial copy: create the selected collections on the target, plan `_id` partitions,
//! read them in parallel and insert them with unordered bulk inserts, with the bytes in
//! flight bounded by a budget. Finished partitions are recorded, so a restarted worker does
//! not copy them again.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, RawDocumentBuf};
use mongodb::error::ErrorKind;
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::catalog;
use super::checkpoint::{Checkpoint, CollectionEntry, PartitionEntry};
use super::error::{classify_mongo, EngineError, ErrorClass, MongoContext, Result, Side};
use super::filter::NamespaceFilter;
use super::partition;
use super::tuning::Tuning;
use super::Ctx;

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
    done: oneshot::Sender<Result<()>>,
}

pub async fn run(
    ctx: &Arc<Ctx>,
    cp: &Arc<Mutex<Checkpoint>>,
    tuning: &Tuning,
    cancel: &CancellationToken,
) -> Result<CopyOutcome> {
    let (filter, catalog_done) = {
        let c = cp.lock().await;
        let o = &c.options;
        (
            NamespaceFilter::new(&o.include_namespaces, &o.exclude_namespaces)
                .map_err(|e| EngineError::Invalid(e.to_string()))?,
            c.catalog_done,
        )
    };
    if !catalog_done {
        build_catalog(ctx, cp, &filter, tuning).await?;
    }
    if let Err(e) = ctx.store.ensure_partition_index().await {
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
    pending.retain(|c| !c.copied);
    pending.sort_by_key(|c| std::cmp::Reverse(c.size_bytes));
    ctx.live.mark_copy_start();

    // Insert workers and the byte budget shared by every reader.
    let budget = Arc::new(Semaphore::new(tuning.budget_kib as usize));
    let (tx, rx) = mpsc::channel::<InsertJob>(tuning.insert_workers * 2);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..tuning.insert_workers {
        let rx = rx.clone();
        let ctx = ctx.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let job = { rx.lock().await.recv().await };
                let Some(job) = job else { break };
                let r = insert_batch(&ctx, &job.db, &job.coll, &job.docs, false).await;
                if r.is_ok() {
                    ctx.metrics
                        .copy_insert_documents
                        .inc_by(job.docs.len() as u64);
                    ctx.metrics.copy_insert_bytes.inc_by(job.bytes);
                    ctx.live
                        .cloned_docs
                        .fetch_add(job.docs.len() as u64, Ordering::Relaxed);
                    ctx.live
                        .cloned_bytes
                        .fetch_add(job.bytes, Ordering::Relaxed);
                }
                let _ = job.done.send(r);
            }
        }));
    }
    let readers = Arc::new(Semaphore::new(tuning.read_workers));
    let results: Vec<Result<bool>> = futures::stream::iter(pending)
        .map(|c| {
            let tx = tx.clone();
            let budget = budget.clone();
            let readers = readers.clone();
            async move { copy_collection(ctx, c, tuning, tx, budget, readers, cancel).await }
        })
        .buffer_unordered(tuning.parallel_collections)
        .collect()
        .await;
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let mut completed = true;
    for r in results {
        completed &= r?;
    }
    if !completed || cancel.is_cancelled() {
        return Ok(CopyOutcome::Stopped);
    }
    let finish = super::conn::cluster_time(&ctx.source, Side::Source).await?;
    let mut c = cp.lock().await;
    c.clone_completed = true;
    c.copy_finish_ts = Some(finish);
    ctx.store.save(&mut c).await?;
    info!(finish = %super::optime::ts_string(finish), "initial copy complete");
    Ok(CopyOutcome::Completed)
}

/// Catalog entries recorded per batched write.
const CATALOG_RECORD_BATCH: usize = 256;

/// List, size and create every selected collection on the target.
///
/// Collections are sized and created `tuning.catalog_workers` at a time (each is a few
/// metadata round trips, so a serial loop spends its time waiting), and recorded in batches.
/// Crash safety: an entry is recorded only after its collection was created; a collection
/// created but not yet recorded when the worker died is empty (no copy starts before the
/// whole catalog is recorded) and the next run replaces it.
async fn build_catalog(
    ctx: &Arc<Ctx>,
    cp: &Arc<Mutex<Checkpoint>>,
    filter: &NamespaceFilter,
    tuning: &Tuning,
) -> Result<()> {
    {
        let mut c = cp.lock().await;
        if c.start_ts.is_none() {
            // Replication starts here: taken before listing, so nothing is missed.
            c.start_ts = Some(super::conn::cluster_time(&ctx.source, Side::Source).await?);
            ctx.store.save(&mut c).await?;
        }
    }
    // With dropTargetNamespaces, every selected namespace may be replaced.
    let drop_any = cp.lock().await.options.drop_target_namespaces;
    let owned: HashSet<String> = ctx
        .store
        .all_collections()
        .await?
        .into_iter()
        .filter(|c| c.created)
        .map(|c| c.ns)
        .collect();
    let listed = catalog::list_selected(&ctx.source, filter).await?;
    let mut warnings = Vec::new();
    let mut entries = Vec::new();
    for l in listed {
        match l.unsupported {
            Some(why) => {
                warn!(ns = %l.entry.ns, reason = %why, "skipping");
                warnings.push(format!("{}: {why}", l.entry.ns));
            }
            None => entries.push(l.entry),
        }
    }
    // What the target already holds: one listing per database.
    let mut existing: HashSet<String> = HashSet::new();
    let dbs: std::collections::BTreeSet<&str> = entries.iter().map(|e| e.db.as_str()).collect();
    for db in dbs {
        for name in catalog::target_collection_names(&ctx.target, db).await? {
            existing.insert(format!("{db}.{name}"));
        }
    }
    let known = Known {
        owned: &owned,
        existing: &existing,
        drop_any,
    };
    // Collections before views (a view may be defined on a collection); views one at a time,
    // in the order listed (a view may be defined on another view).
    let (colls, views): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.kind != "view");
    let total = colls.len() as i64;
    let (bytes, docs) = create_entries(ctx, colls, &known, tuning.catalog_workers).await?;
    create_entries(ctx, views, &known, 1).await?;
    let mut c = cp.lock().await;
    c.catalog_done = true;
    c.estimated_bytes = bytes;
    c.estimated_docs = docs;
    c.collections_total = total;
    c.warnings.extend(warnings);
    ctx.metrics.estimated_total_bytes.set(bytes);
    ctx.store.save(&mut c).await?;
    info!(
        collections = total,
        bytes,
        documents = docs,
        "catalog created on target"
    );
    Ok(())
}

/// What the catalog knows of the target before creating anything.
struct Known<'a> {
    /// Created by an earlier run of this job (replaced without asking).
    owned: &'a HashSet<String>,
    /// Present on the target when the catalog started.
    existing: &'a HashSet<String>,
    drop_any: bool,
}

/// Size (collections) and create `entries` on the target, `workers` at a time, recording them
/// in batches as they are created. Returns the estimated bytes and documents.
async fn create_entries(
    ctx: &Arc<Ctx>,
    entries: Vec<CollectionEntry>,
    known: &Known<'_>,
    workers: usize,
) -> Result<(i64, i64)> {
    if entries.is_empty() {
        return Ok((0, 0));
    }
    let n = entries.len();
    // Recording runs beside the creation, so a batch write does not hold the creators up.
    let (tx, mut rx) = mpsc::channel::<Vec<CollectionEntry>>(2);
    let store = ctx.store.clone();
    let recorder = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            store.upsert_collections(&batch).await?;
        }
        Ok::<(), EngineError>(())
    });
    let mut created = futures::stream::iter(entries)
        .map(|mut e| async move {
            if e.kind == "collection" {
                let (b, n) = catalog::estimate(&ctx.source, &e.db, &e.coll).await?;
                e.size_bytes = b;
                e.documents = n;
            }
            let owned = known.drop_any || known.owned.contains(&e.ns);
            let exists = known.existing.contains(&e.ns);
            catalog::create_on_target_known(&ctx.target, &e, owned, exists).await?;
            e.created = true;
            debug!(ns = %e.ns, kind = %e.kind, "created on target");
            Ok::<CollectionEntry, EngineError>(e)
        })
        .buffer_unordered(workers.max(1));
    let (mut bytes, mut docs, mut done) = (0i64, 0i64, 0usize);
    let mut pending = Vec::new();
    let mut failed = None;
    while let Some(r) = created.next().await {
        match r {
            Ok(e) => {
                bytes += e.size_bytes;
                docs += e.documents;
                done += 1;
                pending.push(e);
                if pending.len() >= CATALOG_RECORD_BATCH {
                    ctx.live
                        .set_info(format!("initial sync: catalog {done}/{n} created"));
                    if tx.send(std::mem::take(&mut pending)).await.is_err() {
                        break; // the recorder failed: its error is returned below
                    }
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(created);
    // What was created is recorded even when another creation failed.
    if !pending.is_empty() {
        let _ = tx.send(pending).await;
    }
    drop(tx);
    let recorded = recorder
        .await
        .map_err(|e| EngineError::Other(format!("recording the catalog: {e}")))?;
    if let Some(e) = failed {
        return Err(e);
    }
    recorded?;
    Ok((bytes, docs))
}

/// Copy one collection; `Ok(false)` when stopped before the end.
#[allow(clippy::too_many_arguments)]
async fn copy_collection(
    ctx: &Arc<Ctx>,
    c: CollectionEntry,
    tuning: &Tuning,
    tx: mpsc::Sender<InsertJob>,
    budget: Arc<Semaphore>,
    readers: Arc<Semaphore>,
    cancel: &CancellationToken,
) -> Result<bool> {
    if cancel.is_cancelled() {
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
    let todo: Vec<PartitionEntry> = parts.into_iter().filter(|p| !p.done).collect();
    info!(ns = %c.ns, partitions = todo.len(), skipped, "copying");
    let results: Vec<Result<bool>> = futures::stream::iter(todo)
        .map(|p| {
            let tx = tx.clone();
            let budget = budget.clone();
            let readers = readers.clone();
            let c = &c;
            async move {
                let _r = readers
                    .acquire_owned()
                    .await
                    .map_err(|_| EngineError::Other("copy reader pool closed".into()))?;
                copy_partition(ctx, c, &p, tuning, tx, budget, cancel).await
            }
        })
        .buffer_unordered(tuning.read_workers)
        .collect()
        .await;
    let mut complete = true;
    for r in results {
        complete &= r?;
    }
    if !complete {
        return Ok(false);
    }
    // Indexes are built after the data: faster than maintaining them during the inserts.
    let specs = catalog::list_indexes(&ctx.source, Side::Source, &c.db, &c.coll).await?;
    ctx.store.save_index_specs(&c.ns, &specs).await?;
    catalog::create_relaxed_indexes(&ctx.target, &c.db, &c.coll, &specs).await?;
    ctx.store
        .mark_collection(&c.ns, doc! {"copied": true, "indexesBuilt": true})
        .await?;
    ctx.live
        .collections_completed
        .fetch_add(1, Ordering::Relaxed);
    info!(ns = %c.ns, indexes = specs.len(), "collection copied");
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
    tx: mpsc::Sender<InsertJob>,
    budget: Arc<Semaphore>,
    cancel: &CancellationToken,
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
    let mut pending: Vec<oneshot::Receiver<Result<()>>> = Vec::new();
    let (mut docs_n, mut bytes_n) = (0i64, 0i64);
    let mut batch: Vec<RawDocumentBuf> = Vec::new();
    let mut batch_bytes = 0u64;
    let mut stopped = false;
    loop {
        if cancel.is_cancelled() {
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
                warn!(ns = %c.ns, "collection dropped or renamed while being copied");
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
                insert_batch(ctx, &c.db, &c.coll, &docs, true).await?;
                ctx.metrics.copy_insert_documents.inc_by(docs.len() as u64);
                ctx.metrics.copy_insert_bytes.inc_by(bytes);
                ctx.live
                    .cloned_docs
                    .fetch_add(docs.len() as u64, Ordering::Relaxed);
                ctx.live.cloned_bytes.fetch_add(bytes, Ordering::Relaxed);
            } else {
                let kib = ((bytes / 1024).max(1) as u32).min(tuning.budget_kib);
                let permit = budget
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|_| EngineError::Other("copy budget closed".into()))?;
                let (done, rx) = oneshot::channel();
                let job = InsertJob {
                    db: c.db.clone(),
                    coll: c.coll.clone(),
                    docs,
                    bytes,
                    _permit: permit,
                    done,
                };
                if tx.send(job).await.is_err() {
                    return Err(EngineError::Other("copy insert workers stopped".into()));
                }
                pending.push(rx);
            }
        }
        if end {
            break;
        }
    }
    for rx in pending {
        rx.await
            .map_err(|_| EngineError::Other("an insert worker stopped".into()))??;
    }
    if stopped {
        return Ok(false);
    }
    ctx.store
        .mark_partition_done(&p.id, docs_n, bytes_n)
        .await?;
    Ok(true)
}

/// Insert a batch: unordered (ordered for capped collections), validation bypassed,
/// duplicates of an earlier partial copy ignored, transient errors retried.
async fn insert_batch(
    ctx: &Ctx,
    db: &str,
    coll: &str,
    docs: &[RawDocumentBuf],
    ordered: bool,
) -> Result<()> {
    let c = ctx.target.database(db).collection::<RawDocumentBuf>(coll);
    let mut attempt = 0u32;
    loop {
        let r = c
            .insert_many(docs)
            .ordered(ordered)
            .bypass_document_validation(true)
            .await;
        let e = match r {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if let ErrorKind::InsertMany(m) = e.kind.as_ref() {
            let only_dups = m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|w| w.code == 11000));
            if only_dups {
                if ordered {
                    // An ordered insert stops at the first duplicate: insert the rest one by one.
                    for d in docs {
                        let r = c.insert_one(d).bypass_document_validation(true).await;
                        if let Err(e) = r {
                            if super::error::mongo_code(&e) != Some(11000) {
                                return Err(EngineError::mongo(
                                    Side::Target,
                                    format!("inserting into {db}.{coll}"),
                                    e,
                                ));
                            }
                        }
                    }
                }
                return Ok(());
            }
        }
        attempt += 1;
        // Duplicates (of an earlier attempt) plus a write-concern error: the write concern
        // decides. Classifying by the first write error (11000) would make a transient
        // write-concern error (a retried batch on a stepping-down target) fatal.
        let class = match e.kind.as_ref() {
            ErrorKind::InsertMany(m)
                if m.write_errors
                    .as_ref()
                    .is_none_or(|w| w.iter().all(|w| w.code == 11000)) =>
            {
                match &m.write_concern_error {
                    Some(w) => super::error::classify_parts(Some(w.code), &[], false),
                    None => classify_mongo(&e),
                }
            }
            _ => classify_mongo(&e),
        };
        if class == ErrorClass::Transient && attempt < 8 {
            ctx.metrics
                .errors
                .with_label_values(&["copy_insert_retry"])
                .inc();
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            continue;
        }
        let err = EngineError::mongo(Side::Target, format!("inserting into {db}.{coll}"), e);
        return Err(if class == ErrorClass::Transient {
            // Still transient after the retries here: retry from the checkpoint.
            EngineError::Retry(err.to_string())
        } else {
            err
        });
    }
}

/// Copy one collection anew from the source's current state: drop it on the target, create it
/// with the source's options, copy its documents and build its relaxed indexes. Used inside the
/// replication barrier when a rename cannot be replayed as a rename. Replaying the events that
/// follow onto this newer copy converges, exactly as for the initial copy.
pub async fn recopy_collection(
    source: &mongodb::Client,
    target: &mongodb::Client,
    store: &super::checkpoint::Store,
    db: &str,
    coll: &str,
) -> Result<()> {
    let specs = catalog::list_collection_specs(source, db).await?;
    let ns = format!("{db}.{coll}");
    let Some(spec) = specs.into_iter().find(|s| s.get_str("name") == Ok(coll)) else {
        // Gone from the source since: a later event drops or renames it.
        target
            .database(db)
            .collection::<mongodb::bson::Document>(coll)
            .drop()
            .await
            .on(Side::Target, &format!("dropping {ns}"))?;
        return Ok(());
    };
    let options = spec.get_document("options").cloned().unwrap_or_default();
    let mut e = CollectionEntry {
        ns: ns.clone(),
        db: db.to_string(),
        coll: coll.to_string(),
        kind: spec.get_str("type").unwrap_or("collection").to_string(),
        capped: options.get_bool("capped").unwrap_or(false),
        options,
        ..Default::default()
    };
    catalog::create_on_target(target, &e, true).await?;
    e.created = true;
    if e.kind == "collection" {
        let src = source.database(db).collection::<RawDocumentBuf>(coll);
        let mut find = src.find(doc! {});
        if e.capped {
            find = find.sort(doc! {"$natural": 1});
        }
        let mut cur = find.await.on(Side::Source, &format!("reading {ns}"))?;
        let dst = target.database(db).collection::<RawDocumentBuf>(coll);
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        loop {
            let next = cur
                .try_next()
                .await
                .on(Side::Source, &format!("reading {ns}"))?;
            let end = next.is_none();
            if let Some(d) = next {
                bytes += d.as_bytes().len();
                batch.push(d);
            }
            if !batch.is_empty() && (end || bytes >= 4 * 1024 * 1024) {
                let r = dst
                    .insert_many(std::mem::take(&mut batch))
                    .ordered(e.capped)
                    .bypass_document_validation(true)
                    .await;
                bytes = 0;
                if let Err(err) = r {
                    if super::error::mongo_code(&err) != Some(11000) {
                        return Err(EngineError::mongo(
                            Side::Target,
                            format!("copying {ns}"),
                            err,
                        ));
                    }
                }
            }
            if end {
                break;
            }
        }
        let specs = catalog::list_indexes(source, Side::Source, db, coll).await?;
        store.delete_indexes(doc! {"ns": &ns}).await?;
        store.save_index_specs(&ns, &specs).await?;
        catalog::create_relaxed_indexes(target, db, coll, &specs).await?;
        e.planned = true;
        e.copied = true;
        e.indexes_built = true;
    }
    store.upsert_collection(&e).await?;
    info!(ns = %ns, "collection copied anew");
    Ok(())
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
