//! The catalog stage: take the start time, list the selected source collections and views,
//! size them, create them on the target and record them, so the copy knows its work.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, Mutex};
use tracing::{debug, info, warn};

use super::super::ctx::Ctx;
use super::super::error::{EngineError, Result};
use super::super::filter::NamespaceFilter;
use super::super::store::{Checkpoint, CollectionEntry};
use super::super::tuning::Tuning;

/// Catalog entries recorded per batched write.
const CATALOG_RECORD_BATCH: usize = 256;

/// List, size and create every selected collection on the target.
///
/// Collections are sized and created `tuning.catalog_workers` at a time (each is a few
/// metadata round trips, so a serial loop spends its time waiting), and recorded in batches.
/// Crash safety: an entry is recorded only after its collection was created; a collection
/// created but not yet recorded when the worker died is empty (no copy starts before the
/// whole catalog is recorded) and the next run replaces it.
pub async fn build(
    ctx: &Arc<Ctx>,
    cp: &Arc<Mutex<Checkpoint>>,
    filter: &NamespaceFilter,
    tuning: &Tuning,
) -> Result<()> {
    {
        let mut c = cp.lock().await;
        if c.start_ts.is_none() {
            // Replication starts here: taken before listing, so nothing is missed.
            let (ts, token) = super::super::conn::stream_position(&ctx.source).await?;
            c.start_ts = Some(ts);
            c.start_token = token;
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
    let listed = super::list_selected(&ctx.source, filter).await?;
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
        for name in super::target_collection_names(&ctx.target, db).await? {
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
                // Measured by the preflight moments ago, or now.
                let (b, n) = match ctx.sizes.take(&e.db, &e.coll) {
                    Some(s) => s,
                    None => super::estimate(&ctx.source, &e.db, &e.coll).await?,
                };
                e.size_bytes = b;
                e.documents = n;
            }
            let owned = known.drop_any || known.owned.contains(&e.ns);
            let exists = known.existing.contains(&e.ns);
            super::create_on_target_known(&ctx.target, ctx.store.fence(), &e, owned, exists)
                .await?;
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
        .map_err(|_| EngineError::TaskStopped("the catalog recorder"))?;
    if let Some(e) = failed {
        return Err(e);
    }
    recorded?;
    Ok((bytes, docs))
}
