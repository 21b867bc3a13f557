//! Finalize: after replication reached the cutoff, restore every index to its source
//! definition, verify, and record the report. Every step is saved in the checkpoint so the
//! report survives a restart, and a restarted finalize continues where it stopped.

use std::sync::Arc;

use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::catalog;
use super::checkpoint::{Checkpoint, IndexEntry};
use super::error::{mongo_code, EngineError, Result, Side};
use super::filter::NamespaceFilter;
use super::optime;
use super::verify;
use super::Ctx;
use crate::api::{FinalizationReport, IndexFailure, State, VerifyMode};

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
    _cancel: &CancellationToken,
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
        match restore_index(&ctx.target, e).await {
            Ok(()) => restored += 1,
            Err(reason) => {
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
    save_step(ctx, cp, |r| {
        r.indexes.restored = restored;
        r.indexes.failed = failed;
        r.step = "verifying".into();
    })
    .await?;
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

/// Bring one target index to its source definition: `collMod` where the server can change
/// the option in place, else drop and rebuild. Returns the reason when it cannot.
async fn restore_index(target: &Client, e: &IndexEntry) -> std::result::Result<(), String> {
    let (db, coll) = e.ns.split_once('.').ok_or("bad namespace")?;
    let current = catalog::list_indexes(target, Side::Target, db, coll)
        .await
        .map_err(|e| e.to_string())?;
    let cur = current
        .iter()
        .find(|s| s.get_str("name") == Ok(e.name.as_str()))
        .map(catalog::normalize_index);
    let want = catalog::normalize_index(&e.spec);
    if cur.as_ref() == Some(&want) {
        return Ok(());
    }
    let d = target.database(db);
    if cur.is_some() && try_coll_mod(target, db, coll, &e.name, &want).await.is_ok() {
        let now = catalog::list_indexes(target, Side::Target, db, coll)
            .await
            .map_err(|e| e.to_string())?;
        if now.iter().any(|s| {
            s.get_str("name") == Ok(e.name.as_str()) && catalog::normalize_index(s) == want
        }) {
            return Ok(());
        }
    }
    // Rebuild from the source definition.
    if cur.is_some() {
        d.run_command(doc! {"dropIndexes": coll, "index": &e.name})
            .await
            .map_err(|err| format!("could not drop the relaxed index to rebuild it: {err}"))?;
    }
    match d
        .run_command(doc! {"createIndexes": coll, "indexes": [want.clone()]})
        .await
    {
        Ok(_) => Ok(()),
        Err(err) => {
            // Keep the relaxed index so queries still have it.
            let _ = d
                .run_command(doc! {"createIndexes": coll, "indexes": [catalog::relax_index(&want)]})
                .await;
            let msg = err.to_string();
            Err(if mongo_code(&err) == Some(11000) {
                format!("the target holds duplicate keys for this unique index: {msg}")
            } else {
                msg
            })
        }
    }
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
