//! Finalize: after replication reached the cutoff, restore every index to its source
//! definition, verify, and record the report. Every step is saved in the checkpoint so the
//! report survives a restart, and a restarted finalize continues where it stopped.

use std::sync::Arc;

use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub mod verify;

use super::catalog;
use super::conn;
use super::ctx::Ctx;
use super::error::{mongo_code, EngineError, Result, Side};
use super::filter::NamespaceFilter;
use super::optime;
use super::store::fence::Fence;
use super::store::{Checkpoint, IndexEntry};
use crate::api::{Direction, FinalizationReport, IndexFailure, State, VerifyMode};

pub fn started_report(cutoff: Timestamp, blocked: bool) -> FinalizationReport {
    let mut r = FinalizationReport {
        started_at: Some(optime::now_rfc3339()),
        cutoff: Some(optime::op_time(cutoff)),
        step: "draining".into(),
        ..Default::default()
    };
    if blocked {
        r.warnings
            .push("user writes on the source are blocked (setUserWriteBlockMode); unblock them only if you switch back".into());
    }
    r
}

/// Whether the source can block user writes; a clear refusal when it cannot.
pub async fn check_write_blocking(source: &Client) -> Result<()> {
    // A no-op probe: disabling a block that is not set changes nothing.
    match source
        .database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": false})
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if matches!(mongo_code(&e), Some(59) | Some(115)) => Err(EngineError::Invalid(
            "blockSourceWrites was requested, but the source does not support \
             setUserWriteBlockMode (MongoDB 6.0+ needed); nothing was changed. Stop the \
             applications' writes yourself and finalize without blockSourceWrites"
                .into(),
        )),
        Err(e) => Err(EngineError::mongo(
            Side::Source,
            "checking write blocking",
            e,
        )),
    }
}

pub async fn block_writes(source: &Client, on: bool) -> Result<()> {
    source
        .database("admin")
        .run_command(doc! {"setUserWriteBlockMode": 1, "global": on})
        .await
        .map_err(|e| EngineError::mongo(Side::Source, "blocking source writes", e))?;
    Ok(())
}

async fn save_step(
    ctx: &Ctx,
    cp: &Arc<Mutex<Checkpoint>>,
    f: impl FnOnce(&mut FinalizationReport),
) -> Result<()> {
    let mut c = cp.lock().await;
    let r = c.finalization.get_or_insert_with(Default::default);
    f(r);
    ctx.store.save(&mut c).await
}

pub async fn run(
    ctx: &Arc<Ctx>,
    cp: &Arc<Mutex<Checkpoint>>,
    cancel: &CancellationToken,
) -> Result<()> {
    let (mode, filter) = {
        let c = cp.lock().await;
        (
            c.verify_mode.unwrap_or_default(),
            NamespaceFilter::new(&c.options.include_namespaces, &c.options.exclude_namespaces)
                .map_err(|e| EngineError::Invalid(e.to_string()))?,
        )
    };
    save_step(ctx, cp, |r| r.step = "indexes".into()).await?;
    // The source's definitions at the cutoff are the truth (some servers do not describe
    // index changes in their change events, so the recorded catalog may lag behind).
    let entries = source_indexes(ctx, &filter).await?;
    let mut restored = 0u64;
    let mut failed = Vec::new();
    for e in &entries {
        if cancel.is_cancelled() {
            // Shutdown: the restarted worker restores and verifies again.
            return Ok(());
        }
        match restore_index(&ctx.target, ctx.store.fence(), e).await {
            Ok(()) => restored += 1,
            Err(RestoreError::Engine(e)) => return Err(e),
            Err(RestoreError::Refused(reason)) => {
                warn!(ns = %e.ns, index = %e.name, %reason, "index not restored");
                failed.push(IndexFailure {
                    namespace: e.ns.clone(),
                    name: e.name.clone(),
                    reason,
                });
            }
        }
    }
    ctx.metrics.index_restore_failures.set(failed.len() as i64);
    info!(restored, failed = failed.len(), "indexes restored");
    let nfailed = failed.len();
    // The reverse start point: the target's own time now that the cutoff is applied and the
    // indexes restored (verified equal to the source just below). A reverse of this job
    // replicates the target's changes after it. Taken again by a restarted finalize: nothing
    // but this job's own records is written to the target in between.
    let start = if cp.lock().await.direction == Direction::Forward {
        Some(conn::cluster_time(&ctx.target, Side::Target).await?)
    } else {
        None
    };
    {
        let mut c = cp.lock().await;
        c.reverse_start_ts = start;
        let r = c.finalization.get_or_insert_with(Default::default);
        r.indexes.restored = restored;
        r.indexes.failed = failed;
        r.step = "verifying".into();
        r.reverse_start_point = start.map(optime::op_time);
        ctx.store.save(&mut c).await?;
    }
    if let Some(t) = start {
        info!(start_point = %optime::ts_string(t), "reverse start point recorded");
    }
    if cancel.is_cancelled() {
        return Ok(());
    }
    let report = verify::run(ctx, &filter, mode).await?;
    info!(
        mode = ?mode,
        documents = report.documents_checked,
        mismatches = report.mismatch_count,
        "verification done"
    );
    let mut c = cp.lock().await;
    let r = c.finalization.get_or_insert_with(Default::default);
    if nfailed > 0 {
        r.warnings.push(format!(
            "{nfailed} index(es) could not be restored to their source definition; see finalization.indexes.failed"
        ));
    }
    if report.mismatch_count > 0 {
        r.warnings.push(format!(
            "verification found {} difference(s) between source and target; see finalization.verification",
            report.mismatch_count
        ));
    }
    if mode == VerifyMode::None {
        r.warnings
            .push("verification was skipped (verify: none)".into());
    }
    r.verification = Some(report);
    r.step = "done".into();
    r.completed_at = Some(optime::now_rfc3339());
    let warnings = r.warnings.clone();
    c.warnings.extend(warnings);
    c.state = State::Finalized;
    ctx.store.save(&mut c).await?;
    Ok(())
}

/// Every index of the selected source collections, as defined now.
async fn source_indexes(ctx: &Ctx, filter: &NamespaceFilter) -> Result<Vec<IndexEntry>> {
    let mut out = Vec::new();
    let dbs = ctx
        .source
        .list_database_names()
        .await
        .map_err(|e| EngineError::mongo(Side::Source, "listing databases", e))?;
    for db in dbs.into_iter().filter(|d| filter.database_selected(d)) {
        for spec in catalog::list_collection_specs(&ctx.source, &db).await? {
            let coll = spec.get_str("name").unwrap_or_default().to_string();
            if spec.get_str("type").unwrap_or("collection") != "collection"
                || !filter.selected(&db, &coll)
            {
                continue;
            }
            let ns = format!("{db}.{coll}");
            for ix in catalog::list_indexes(&ctx.source, Side::Source, &db, &coll).await? {
                let name = ix.get_str("name").unwrap_or_default().to_string();
                out.push(IndexEntry {
                    id: format!("{ns}#{name}"),
                    ns: ns.clone(),
                    name,
                    spec: catalog::normalize_index(&ix),
                });
            }
        }
    }
    Ok(out)
}

/// Why an index was not restored: the target refused the definition (reported, the
/// finalize goes on), or the engine cannot write at all (the finalize stops).
enum RestoreError {
    Refused(String),
    Engine(EngineError),
}

impl From<EngineError> for RestoreError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Mongo { source, .. } => RestoreError::Refused(source.to_string()),
            other => RestoreError::Engine(other),
        }
    }
}

/// Bring one target index to its source definition: `collMod` where the server can change
/// the option in place, else drop and rebuild.
async fn restore_index(
    target: &Client,
    fence: &Fence,
    e: &IndexEntry,
) -> std::result::Result<(), RestoreError> {
    let (db, coll) =
        e.ns.split_once('.')
            .ok_or_else(|| RestoreError::Refused("bad namespace".into()))?;
    let current = catalog::list_indexes(target, Side::Target, db, coll)
        .await
        .map_err(RestoreError::Engine)?;
    let cur = current
        .iter()
        .find(|s| s.get_str("name") == Ok(e.name.as_str()))
        .map(catalog::normalize_index);
    let want = catalog::normalize_index(&e.spec);
    if cur.as_ref() == Some(&want) {
        return Ok(());
    }
    let d = target.database(db);
    let what = format!("restoring index {} of {}", e.name, e.ns);
    if cur.is_some() {
        let modified = fence
            .ddl(&what, async {
                try_coll_mod(target, db, coll, &e.name, &want)
                    .await
                    .map_err(|err| EngineError::mongo(Side::Target, what.clone(), err))
            })
            .await;
        match modified {
            Ok(()) => {
                let now = catalog::list_indexes(target, Side::Target, db, coll)
                    .await
                    .map_err(RestoreError::Engine)?;
                if now.iter().any(|s| {
                    s.get_str("name") == Ok(e.name.as_str()) && catalog::normalize_index(s) == want
                }) {
                    return Ok(());
                }
            }
            Err(EngineError::Mongo { .. }) => {}
            Err(other) => return Err(RestoreError::Engine(other)),
        }
        // Rebuild from the source definition.
        fence
            .ddl(&what, async {
                d.run_command(doc! {"dropIndexes": coll, "index": &e.name})
                    .await
                    .map_err(|err| EngineError::mongo(Side::Target, what.clone(), err))
            })
            .await
            .map_err(|err| match RestoreError::from(err) {
                RestoreError::Refused(m) => RestoreError::Refused(format!(
                    "could not drop the relaxed index to rebuild it: {m}"
                )),
                other => other,
            })?;
    }
    let built = fence
        .ddl(&what, async {
            Ok(
                d.run_command(doc! {"createIndexes": coll, "indexes": [want.clone()]})
                    .await,
            )
        })
        .await?;
    match built {
        Ok(_) => Ok(()),
        Err(err) => {
            // Keep the relaxed index so queries still have it.
            let relaxed = catalog::relax_index(&want);
            fence
                .ddl(&what, async {
                    if let Err(e) = d
                        .run_command(doc! {"createIndexes": coll, "indexes": [relaxed]})
                        .await
                    {
                        warn!(error = %e, index = %e_name(&want), "cannot rebuild the relaxed index either");
                    }
                    Ok(())
                })
                .await?;
            let msg = err.to_string();
            Err(RestoreError::Refused(if mongo_code(&err) == Some(11000) {
                format!("the target holds duplicate keys for this unique index: {msg}")
            } else {
                msg
            }))
        }
    }
}

fn e_name(spec: &Document) -> &str {
    spec.get_str("name").unwrap_or("?")
}

/// Change unique / TTL / hidden in place (unique via prepareUnique, then unique).
async fn try_coll_mod(
    target: &Client,
    db: &str,
    coll: &str,
    name: &str,
    want: &Document,
) -> mongodb::error::Result<()> {
    let d = target.database(db);
    let mut steps: Vec<Document> = Vec::new();
    if want.get_bool("unique") == Ok(true) {
        steps.push(doc! {"name": name, "prepareUnique": true});
        steps.push(doc! {"name": name, "unique": true});
    }
    if let Some(t) = want.get("expireAfterSeconds") {
        steps.push(doc! {"name": name, "expireAfterSeconds": t.clone()});
    }
    steps.push(doc! {"name": name, "hidden": want.get_bool("hidden").unwrap_or(false)});
    for s in steps {
        d.run_command(doc! {"collMod": coll, "index": Bson::Document(s)})
            .await?;
    }
    Ok(())
}
