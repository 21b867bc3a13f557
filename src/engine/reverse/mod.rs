//! A reverse: after a migration is finalized, replicate from the cluster it wrote to (the new
//! cluster) back onto its old source, so that a cutover can be rolled back without losing the
//! writes made since. A reverse is a migration with its roles swapped and its copy already
//! done: its source is the new cluster, its target the old source, its job lives in the old
//! source's `mongoferry` database (with its own lease and fence), and it starts replicating at
//! the start point the migration recorded at its finalize — the new cluster's own time once
//! the cutoff was applied and the indexes restored, where both sides were verified equal.
//!
//! This module holds what a reverse reads before it starts (the migration, the new cluster's
//! oplog floor, the old source's writes since the cutoff; decided by `checks`), and the one
//! preparation of its target before the first event: the old source's collections recorded as
//! present, and its unique, TTL and hidden indexes relaxed like a target's during a sync
//! (finalize restores them).

pub mod checks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document, Timestamp};
use mongodb::Client;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::catalog;
use super::ctx::Ctx;
use super::error::{mongo_code, EngineError, MongoContext, Result, Side};
use super::filter::NamespaceFilter;
use super::optime;
use super::store::{self, Checkpoint, CollectionEntry, Identity, ReverseOrigin};
use crate::api::{Direction, ReverseRequest, StartRequest, State};
use checks::{Migration, Points, Writes, WritesSeen};

/// Counting the old source's writes since the cutoff stops after this many changes…
pub const WRITES_LIMIT: u64 = 5_000;
/// …or after this long.
pub const WRITES_BUDGET: Duration = Duration::from_secs(30);

/// The identity of the reverse a standalone worker runs after its migration: the migration's
/// job id with `:reverse`, so the reverse's lease on the old source never names the migration.
pub fn reverse_identity(migration: &Identity) -> Identity {
    Identity::new(
        Some(reverse_job_id(&migration.job_id)),
        Some(format!("{} (reverse)", migration.job_name)),
    )
}

pub fn reverse_job_id(migration_job_id: &str) -> String {
    format!("{migration_job_id}:reverse")
}

/// The op time right after `ts`. Pure.
pub fn next_ts(ts: Timestamp) -> Timestamp {
    match ts.increment.checked_add(1) {
        Some(i) => Timestamp {
            time: ts.time,
            increment: i,
        },
        None => Timestamp {
            time: ts.time.saturating_add(1),
            increment: 0,
        },
    }
}

/// The migration recorded in `client`'s `mongoferry` database, if any, and its options.
pub async fn read_migration(
    client: &Client,
    side: Side,
) -> Result<Option<(Migration, StartRequest)>> {
    let (job, lease) = store::read_job(client, side).await?;
    let Some(job) = job.filter(|j| j.saved_at.is_some()) else {
        return Ok(None);
    };
    let (job_id, job_name) = match lease {
        Some(l) => {
            let id = l.job_id.unwrap_or_default();
            let name = l.job_name.unwrap_or_else(|| id.clone());
            (id, name)
        }
        None => (String::new(), "the migration".into()),
    };
    Ok(Some((
        Migration {
            job_id,
            job_name,
            state: job.state,
            direction: job.direction,
            cutoff: job.cutoff_ts,
            start: job.reverse_start_ts,
        },
        job.options,
    )))
}

/// What an earlier reverse left on `old_source`: its job id (from the lease), state and
/// direction — read without taking anything, to come back in it after a restart.
pub async fn peek(old_source: &Client) -> Result<Option<(String, State, Direction)>> {
    let (job, lease) = store::read_job(old_source, Side::Source).await?;
    Ok(match (job, lease.and_then(|l| l.job_id)) {
        (Some(j), Some(id)) if j.saved_at.is_some() => Some((id, j.state, j.direction)),
        _ => None,
    })
}

/// The oldest entry of a deployment's oplog (`None`: empty).
pub async fn oplog_floor(client: &Client, side: Side) -> Result<Option<Timestamp>> {
    let d = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .hint(mongodb::options::Hint::Keys(doc! {"$natural": 1}))
        .projection(doc! {"ts": 1})
        .await
        .on(side, "reading the oldest oplog entry")?;
    Ok(d.and_then(|d| d.get_timestamp("ts").ok()))
}

/// The namespace a change event counts against, if the filter selects it.
fn counted_ns(ev: &Document, filter: &NamespaceFilter) -> Option<String> {
    let ns = ev.get_document("ns").ok()?;
    let db = ns.get_str("db").ok()?;
    match ns.get_str("coll") {
        Ok(coll) => {
            let to_selected = ev
                .get_document("to")
                .ok()
                .and_then(|t| Some(filter.selected(t.get_str("db").ok()?, t.get_str("coll").ok()?)))
                .unwrap_or(false);
            (filter.selected(db, coll) || to_selected).then(|| format!("{db}.{coll}"))
        }
        Err(_) => filter.database_selected(db).then(|| db.to_string()),
    }
}

/// The changes to the selected namespaces on the old source after `cutoff`, read from its
/// change stream up to its time when asked (at most [`WRITES_LIMIT`] changes, for at most
/// [`WRITES_BUDGET`]). The oplog floor is checked first: some servers start a change stream
/// at a time their oplog no longer holds without complaint.
pub async fn old_source_writes(
    old_source: &Client,
    filter: &NamespaceFilter,
    cutoff: Timestamp,
) -> WritesSeen {
    match count_writes(old_source, filter, cutoff).await {
        Ok(seen) => seen,
        Err(e) => WritesSeen::Unreadable(e.to_string()),
    }
}

async fn count_writes(
    old_source: &Client,
    filter: &NamespaceFilter,
    cutoff: Timestamp,
) -> Result<WritesSeen> {
    let side = Side::Target;
    if let Some(oldest) = oplog_floor(old_source, side).await? {
        if oldest > cutoff {
            return Ok(WritesSeen::HistoryGone { oldest });
        }
    }
    let until = super::conn::cluster_time(old_source, side).await?;
    let mut w = Writes::default();
    if until <= cutoff {
        w.complete = true;
        return Ok(WritesSeen::Counted(w));
    }
    let what = "reading the old source's changes since the cutoff";
    let mut stream = old_source
        .watch()
        .show_expanded_events(true)
        .start_at_operation_time(next_ts(cutoff))
        .max_await_time(Duration::from_millis(300))
        .batch_size(1000)
        .await
        .on(side, what)?
        .with_type::<Document>();
    let began = Instant::now();
    loop {
        match stream.next_if_any().await.on(side, what)? {
            Some(ev) => {
                if ev.get_timestamp("clusterTime").is_ok_and(|t| t > until) {
                    w.complete = true;
                    break;
                }
                if let Some(ns) = counted_ns(&ev, filter) {
                    *w.per_namespace.entry(ns).or_default() += 1;
                    if w.total() >= WRITES_LIMIT {
                        break;
                    }
                }
            }
            None => {
                // An empty batch: everything up to the post-batch token was seen (where the
                // server gives none, every change up to `until` was already committed when
                // the stream opened, and it returned none).
                let seen = stream
                    .resume_token()
                    .and_then(|t| mongodb::bson::to_bson(&t).ok())
                    .and_then(|b| optime::token_timestamp(&b));
                if seen.is_none_or(|t| t >= until) {
                    w.complete = true;
                    break;
                }
            }
        }
        if began.elapsed() >= WRITES_BUDGET {
            break;
        }
    }
    Ok(WritesSeen::Counted(w))
}

/// The reverse's checkpoint: running, its copy done, replicating from right after the start
/// point with the migration's filters. Pure.
pub fn checkpoint(
    m: &Migration,
    options: &StartRequest,
    points: Points,
    req: &ReverseRequest,
) -> Checkpoint {
    let resume = next_ts(points.start);
    Checkpoint {
        state: State::Running,
        direction: Direction::Reverse,
        reverse_of: Some(ReverseOrigin {
            job_id: m.job_id.clone(),
            job_name: m.job_name.clone(),
            cutoff_ts: Some(points.cutoff),
            start_ts: Some(points.start),
            indexes_relaxed: false,
            forced: req.force,
        }),
        options: StartRequest {
            include_namespaces: options.include_namespaces.clone(),
            exclude_namespaces: options.exclude_namespaces.clone(),
            clone: options.clone.clone(),
            replication: req
                .replication
                .clone()
                .or_else(|| options.replication.clone()),
            ..Default::default()
        },
        start_ts: Some(points.start),
        resume_ts: Some(resume),
        copy_finish_ts: Some(points.start),
        catch_up_ts: Some(points.start),
        catalog_done: true,
        clone_completed: true,
        ..Default::default()
    }
}

/// Whether the reverse's target still needs its preparation (see [`prepare`]). Pure.
pub fn needs_prepare(cp: &Checkpoint) -> bool {
    cp.direction == Direction::Reverse && cp.reverse_of.as_ref().is_some_and(|o| !o.indexes_relaxed)
}

/// Prepare the reverse's target (the old source) before the first event, once: record its
/// selected collections in the catalog as present (copied, not created by the reverse, so a
/// reset never drops them), and relax its unique, TTL and hidden indexes as a target's are
/// during a sync — events are applied in parallel by document, which a unique index could
/// refuse midway, and a TTL index would delete on its own. Finalizing the reverse restores
/// every index to the new cluster's definition. Idempotent: a restarted worker does it again
/// until it is recorded as done.
pub async fn prepare(ctx: &Ctx, cp: &Arc<Mutex<Checkpoint>>) -> Result<()> {
    let filter = {
        let c = cp.lock().await;
        if !needs_prepare(&c) {
            return Ok(());
        }
        NamespaceFilter::new(&c.options.include_namespaces, &c.options.exclude_namespaces)
            .map_err(|e| EngineError::Invalid(e.to_string()))?
    };
    ctx.live
        .set_info("reverse: relaxing the old source's indexes for the sync".into());
    let entries = present_collections(&ctx.target, &filter).await?;
    ctx.store.upsert_collections(&entries).await?;
    let mut relaxed = 0u64;
    for e in entries.iter().filter(|e| e.kind == "collection") {
        for spec in catalog::list_indexes(&ctx.target, Side::Target, &e.db, &e.coll).await? {
            if relax_one(ctx, &e.db, &e.coll, &spec).await? {
                relaxed += 1;
            }
        }
    }
    info!(
        collections = entries.len(),
        indexes = relaxed,
        "reverse: old source prepared (indexes relaxed)"
    );
    let mut c = cp.lock().await;
    if let Some(o) = c.reverse_of.as_mut() {
        o.indexes_relaxed = true;
    }
    c.collections_total = entries.len() as i64;
    ctx.store.save(&mut c).await
}

/// The old source's selected collections and views, as catalog entries of what is there.
async fn present_collections(
    old_source: &Client,
    filter: &NamespaceFilter,
) -> Result<Vec<CollectionEntry>> {
    let side = Side::Target;
    let dbs = old_source
        .list_database_names()
        .await
        .on(side, "listing the old source's databases")?;
    let mut out = Vec::new();
    for db in dbs.into_iter().filter(|d| filter.database_selected(d)) {
        let specs: Vec<Document> = {
            use futures::TryStreamExt;
            old_source
                .database(&db)
                .run_cursor_command(doc! {"listCollections": 1})
                .await
                .on(side, "listing the old source's collections")?
                .try_collect()
                .await
                .on(side, "listing the old source's collections")?
        };
        for spec in specs {
            let coll = spec.get_str("name").unwrap_or_default().to_string();
            let kind = spec.get_str("type").unwrap_or("collection").to_string();
            if !filter.selected(&db, &coll) || !matches!(kind.as_str(), "collection" | "view") {
                continue;
            }
            let options = spec.get_document("options").cloned().unwrap_or_default();
            out.push(CollectionEntry {
                ns: format!("{db}.{coll}"),
                db: db.clone(),
                capped: options.get_bool("capped").unwrap_or(false),
                coll,
                kind,
                options,
                created: false,
                planned: true,
                copied: true,
                indexes_built: true,
                ..Default::default()
            });
        }
    }
    Ok(out)
}

/// Bring one index of the old source to its relaxed form: in place (`collMod`) for TTL and
/// hidden, by a rebuild for unique. True when it changed.
async fn relax_one(ctx: &Ctx, db: &str, coll: &str, spec: &Document) -> Result<bool> {
    let want = catalog::normalize_index(&catalog::relax_index(spec));
    if catalog::normalize_index(spec) == want {
        return Ok(false);
    }
    let name = spec.get_str("name").unwrap_or_default().to_string();
    let fence = ctx.store.fence();
    let target = &ctx.target;
    let what = format!("relaxing index {name} of {db}.{coll} for the reverse");
    let rebuild =
        spec.get_bool("unique").unwrap_or(false) || spec.get_bool("prepareUnique").unwrap_or(false);
    if !rebuild {
        let mut change = doc! {"name": &name};
        if spec.contains_key("expireAfterSeconds") {
            change.insert("expireAfterSeconds", catalog::TTL_DISABLED);
        }
        if spec.get_bool("hidden").unwrap_or(false) {
            change.insert("hidden", false);
        }
        let modified = fence
            .ddl(&what, async {
                Ok(target
                    .database(db)
                    .run_command(doc! {"collMod": coll, "index": change})
                    .await)
            })
            .await?;
        match modified {
            Ok(_) => return Ok(true),
            Err(e) => {
                warn!(error = %e, index = %name, "collMod refused; rebuilding the index relaxed")
            }
        }
    }
    fence
        .ddl(&what, async {
            match target
                .database(db)
                .run_command(doc! {"dropIndexes": coll, "index": &name})
                .await
            {
                Ok(_) => Ok(()),
                // Already dropped by an interrupted earlier attempt.
                Err(e) if mongo_code(&e) == Some(27) => Ok(()),
                Err(e) => Err(EngineError::mongo(Side::Target, what.clone(), e)),
            }
        })
        .await?;
    catalog::create_relaxed_indexes(target, fence, db, coll, std::slice::from_ref(spec)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_ts_is_the_next_op_time() {
        let t = Timestamp {
            time: 5,
            increment: 7,
        };
        assert_eq!(
            next_ts(t),
            Timestamp {
                time: 5,
                increment: 8
            }
        );
        let edge = Timestamp {
            time: 5,
            increment: u32::MAX,
        };
        assert_eq!(
            next_ts(edge),
            Timestamp {
                time: 6,
                increment: 0
            }
        );
    }

    #[test]
    fn the_reverse_starts_after_the_start_point_with_the_copy_done() {
        let m = Migration {
            job_id: "u1".into(),
            job_name: "ns/m".into(),
            state: State::Finalized,
            ..Default::default()
        };
        let opts = StartRequest {
            include_namespaces: vec!["app.*".into()],
            ..Default::default()
        };
        let p = Points {
            cutoff: Timestamp {
                time: 10,
                increment: 1,
            },
            start: Timestamp {
                time: 20,
                increment: 3,
            },
        };
        let cp = checkpoint(&m, &opts, p, &ReverseRequest::default());
        assert_eq!(cp.direction, Direction::Reverse);
        assert_eq!(cp.state, State::Running);
        assert!(cp.clone_completed && cp.catalog_done);
        assert_eq!(cp.options.include_namespaces, vec!["app.*".to_string()]);
        assert_eq!(cp.resume_ts, Some(next_ts(p.start)));
        assert_eq!(cp.copy_finish_ts, Some(p.start));
        assert!(needs_prepare(&cp));
        let mut done = cp.clone();
        if let Some(o) = done.reverse_of.as_mut() {
            o.indexes_relaxed = true;
        }
        assert!(!needs_prepare(&done));
        assert!(!needs_prepare(&Checkpoint::default()));
    }

    #[test]
    fn writes_count_against_selected_namespaces_only() {
        let f = NamespaceFilter::new(&["app.*".to_string()], &[]).expect("filter");
        let ev = |db: &str, coll: Option<&str>| {
            let mut ns = doc! {"db": db};
            if let Some(c) = coll {
                ns.insert("coll", c);
            }
            doc! {"operationType": "insert", "ns": ns}
        };
        assert_eq!(counted_ns(&ev("app", Some("c")), &f), Some("app.c".into()));
        assert_eq!(counted_ns(&ev("other", Some("c")), &f), None);
        assert_eq!(counted_ns(&ev("mongoferry", Some("checkpoint")), &f), None);
        assert_eq!(counted_ns(&ev("app", None), &f), Some("app".into()));
        let rename_in = doc! {"operationType": "rename", "ns": {"db": "other", "coll": "x"},
        "to": {"db": "app", "coll": "y"}};
        assert_eq!(counted_ns(&rename_in, &f), Some("other.x".into()));
    }

    #[test]
    fn the_reverse_job_id_names_the_migration() {
        let me = Identity::new(Some("u1".into()), Some("ns/m".into()));
        let r = reverse_identity(&me);
        assert_eq!(r.job_id, "u1:reverse");
        assert_eq!(r.job_name, "ns/m (reverse)");
        assert_ne!(r.incarnation, me.incarnation);
    }
}
