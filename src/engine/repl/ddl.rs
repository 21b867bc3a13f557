//! DDL events: parsed (pure) into operations on the target, then applied one at a time
//! behind a barrier (every applier has flushed). Index options that the sync relaxes
//! (unique, TTL, hidden) are recorded as the source defines them and restored at finalize.

use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;
use tracing::info;

use super::super::catalog;
use super::super::ctx::Ctx;
use super::super::error::{mongo_code, EngineError, Result, Side};
use super::super::filter::NamespaceFilter;
use super::super::store::{CollectionEntry, Store};
use super::translate::event_ns;

#[derive(Debug, Clone, PartialEq)]
pub enum DdlOp {
    Create {
        db: String,
        coll: String,
        cmd: Document,
        capped: bool,
    },
    CreateIndexes {
        db: String,
        coll: String,
        specs: Vec<Document>,
    },
    DropIndexes {
        db: String,
        coll: String,
        names: Vec<String>,
    },
    Modify {
        db: String,
        coll: String,
        desc: Document,
    },
    Rename {
        db: String,
        coll: String,
        to_db: String,
        to_coll: String,
    },
    Drop {
        db: String,
        coll: String,
    },
    DropDatabase {
        db: String,
    },
    /// Copy the collection anew from the source's current state (a rename into the
    /// selection, or a rename replayed while catching up with the initial copy).
    Recopy {
        db: String,
        coll: String,
    },
}

impl DdlOp {
    pub fn name(&self) -> &'static str {
        match self {
            DdlOp::Create { .. } => "create",
            DdlOp::CreateIndexes { .. } => "createIndexes",
            DdlOp::DropIndexes { .. } => "dropIndexes",
            DdlOp::Modify { .. } => "modify",
            DdlOp::Rename { .. } => "rename",
            DdlOp::Drop { .. } => "drop",
            DdlOp::DropDatabase { .. } => "dropDatabase",
            DdlOp::Recopy { .. } => "rename",
        }
    }
}

/// What a DDL operation may drop or replace on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wiped {
    Collection { db: String, coll: String },
    Database { db: String },
}

/// The namespaces whose documents applying `op` may drop or replace on the target: replayed
/// after a restart, it undoes what the earlier run applied there (a create is applied as a
/// drop and a create, a rename replaces its target, a copy anew starts from an empty
/// collection). Pure.
pub fn wipes(op: &DdlOp) -> Vec<Wiped> {
    let coll = |db: &str, coll: &str| Wiped::Collection {
        db: db.to_string(),
        coll: coll.to_string(),
    };
    match op {
        DdlOp::Create { db, coll: c, .. }
        | DdlOp::Drop { db, coll: c }
        | DdlOp::Recopy { db, coll: c } => vec![coll(db, c)],
        DdlOp::Rename {
            db,
            coll: c,
            to_db,
            to_coll,
        } => vec![coll(db, c), coll(to_db, to_coll)],
        DdlOp::DropDatabase { db } => vec![Wiped::Database { db: db.clone() }],
        DdlOp::CreateIndexes { .. } | DdlOp::DropIndexes { .. } | DdlOp::Modify { .. } => {
            Vec::new()
        }
    }
}

/// What to do with a DDL event, given the filter. Pure.
#[derive(Debug, Clone, PartialEq)]
pub enum DdlDecision {
    Apply(DdlOp),
    Skip,
    Fail(String),
}

pub fn decide(ev: &Document, filter: &NamespaceFilter) -> DdlDecision {
    let op = ev.get_str("operationType").unwrap_or("");
    let Some((db, coll)) = event_ns(ev) else {
        return DdlDecision::Skip;
    };
    let empty = Document::new();
    let desc = ev.get_document("operationDescription").unwrap_or(&empty);
    if op == "dropDatabase" {
        return if filter.database_selected(&db) {
            DdlDecision::Apply(DdlOp::DropDatabase { db })
        } else {
            DdlDecision::Skip
        };
    }
    let Some(coll) = coll else {
        return DdlDecision::Skip;
    };
    let selected = filter.selected(&db, &coll);
    if op == "rename" {
        let to = desc.get_document("to").or_else(|_| ev.get_document("to"));
        let Ok(to) = to else {
            return DdlDecision::Fail(format!("a rename of {db}.{coll} names no target"));
        };
        let (to_db, to_coll) = (
            to.get_str("db").unwrap_or_default().to_string(),
            to.get_str("coll").unwrap_or_default().to_string(),
        );
        let to_selected = filter.selected(&to_db, &to_coll);
        return match (selected, to_selected) {
            (true, true) => DdlDecision::Apply(DdlOp::Rename {
                db,
                coll,
                to_db,
                to_coll,
            }),
            (true, false) => DdlDecision::Apply(DdlOp::Drop { db, coll }),
            // Renamed into the selection: its documents were never copied; copy them now.
            (false, true) => DdlDecision::Apply(DdlOp::Recopy {
                db: to_db,
                coll: to_coll,
            }),
            (false, false) => DdlDecision::Skip,
        };
    }
    if !selected {
        return DdlDecision::Skip;
    }
    match op {
        "create" => {
            let is_view = desc.contains_key("viewOn");
            let entry = CollectionEntry {
                coll: coll.clone(),
                kind: if is_view { "view" } else { "collection" }.into(),
                options: desc.clone(),
                ..Default::default()
            };
            if desc.contains_key("timeseries") {
                return DdlDecision::Skip;
            }
            DdlDecision::Apply(DdlOp::Create {
                capped: desc.get_bool("capped").unwrap_or(false),
                cmd: catalog::create_command(&entry),
                db,
                coll,
            })
        }
        "createIndexes" => DdlDecision::Apply(DdlOp::CreateIndexes {
            db,
            coll,
            specs: index_list(desc),
        }),
        "dropIndexes" => DdlDecision::Apply(DdlOp::DropIndexes {
            db,
            coll,
            names: index_list(desc)
                .iter()
                .filter_map(|s| s.get_str("name").ok().map(str::to_string))
                .collect(),
        }),
        "modify" => DdlDecision::Apply(DdlOp::Modify {
            db,
            coll,
            desc: desc.clone(),
        }),
        "drop" => DdlDecision::Apply(DdlOp::Drop { db, coll }),
        _ => DdlDecision::Skip,
    }
}

fn index_list(desc: &Document) -> Vec<Document> {
    desc.get_array("indexes")
        .map(|a| a.iter().filter_map(|i| i.as_document().cloned()).collect())
        .unwrap_or_default()
}

/// The operations to apply for a DDL event at `ts`. A rename replayed while catching up
/// with the initial copy (`ts` up to and including the copy's finish) cannot be replayed as a
/// rename: the target's source collection only holds what was replayed, while the copy may
/// already hold the renamed collection in full. Drop the old name and copy the new one anew
/// instead. Pure.
///
/// Up to *and including*: the finish is the source's operation time read after the copy, and
/// a rename still in progress then already carries its time (SecantusDB takes it when the
/// rename starts, and the old name reads as gone once the rename ends): a rename at exactly
/// the finish may have emptied the copy of its old name.
pub fn during_catch_up(
    op: DdlOp,
    ts: mongodb::bson::Timestamp,
    copy_finish: Option<mongodb::bson::Timestamp>,
) -> Vec<DdlOp> {
    match op {
        DdlOp::Rename {
            db,
            coll,
            to_db,
            to_coll,
        } if copy_finish.is_some_and(|f| ts <= f) => vec![
            DdlOp::Drop { db, coll },
            DdlOp::Recopy {
                db: to_db,
                coll: to_coll,
            },
        ],
        other => vec![other],
    }
}

/// Split a `modify` description into the index options to record (applied at finalize)
/// and the `collMod` fields to apply now. Pure.
pub fn split_modify(desc: &Document) -> (Option<Document>, Document) {
    let mut now = Document::new();
    let mut index = None;
    for (k, v) in desc {
        match k.as_str() {
            "index" => index = v.as_document().cloned(),
            // Server bookkeeping, not options.
            "collMod" | "uuid" => {}
            _ => {
                now.insert(k, v.clone());
            }
        }
    }
    (index, now)
}

/// Codes that mean the target is already past this DDL (a replay): skip.
const ALREADY_DONE: &[i32] = &[26, 27, 48, 68, 85, 86, 167];

/// The server's code for a namespace that does not exist.
const NAMESPACE_NOT_FOUND: i32 = 26;

/// How a DDL command ended on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Applied,
    /// Refused with one of `ALREADY_DONE`'s codes.
    Skipped(i32),
}

/// Run a DDL command on the target, fenced; a replay the target is already past is fine.
async fn run(ctx: &Ctx, db: &str, cmd: Document, what: &str) -> Result<()> {
    run_reporting(ctx, db, cmd, what).await.map(|_| ())
}

/// `run`, telling whether the target ran the command or was past it.
async fn run_reporting(ctx: &Ctx, db: &str, cmd: Document, what: &str) -> Result<Ran> {
    let target = &ctx.target;
    ctx.store
        .fence()
        .ddl(what, async {
            match target.database(db).run_command(cmd).await {
                Ok(_) => Ok(Ran::Applied),
                Err(e) => match mongo_code(&e).filter(|c| ALREADY_DONE.contains(c)) {
                    Some(code) => Ok(Ran::Skipped(code)),
                    None => Err(EngineError::mongo(Side::Target, what, e)),
                },
            }
        })
        .await
}

/// What applying a DDL operation left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// A collection was recorded to be copied anew: the copy stage must run before
    /// replication goes on.
    NeedsCopy,
}

/// Apply one DDL operation (of the event at `ts`) to the target and the index catalog.
pub async fn apply(
    ctx: &Ctx,
    filter: &NamespaceFilter,
    op: &DdlOp,
    ts: Timestamp,
) -> Result<Applied> {
    let (source, store) = (&ctx.source, &ctx.store);
    info!(op = op.name(), detail = ?ddl_summary(op), "applying DDL");
    match op {
        DdlOp::Create { db, coll, cmd, .. } => {
            run(ctx, db, doc! {"drop": coll}, "replaying a create").await?;
            store
                .delete_indexes(doc! {"ns": format!("{db}.{coll}")})
                .await?;
            let mut cmd = cmd.clone();
            if cmd.contains_key("viewOn") {
                // Some servers describe a view's create incompletely: take its definition
                // from the source (a later drop or modify replays on top of it).
                cmd.extend(current_options(source, db, coll).await?);
            }
            run(ctx, db, cmd, &format!("creating {db}.{coll}")).await?;
            // Recorded as this job's own (a reset drops it), with nothing left to copy.
            store
                .upsert_collection(&CollectionEntry {
                    ns: format!("{db}.{coll}"),
                    db: db.clone(),
                    coll: coll.clone(),
                    kind: if op_is_view(op) { "view" } else { "collection" }.into(),
                    capped: matches!(op, DdlOp::Create { capped: true, .. }),
                    created: true,
                    planned: true,
                    copied: true,
                    indexes_built: true,
                    ..Default::default()
                })
                .await?;
        }
        DdlOp::CreateIndexes { db, coll, specs } => {
            let ns = format!("{db}.{coll}");
            let specs: Vec<Document> = specs
                .iter()
                .filter(|s| s.get_str("name") != Ok("_id_"))
                .cloned()
                .collect();
            let normalized: Vec<Document> = specs.iter().map(catalog::normalize_index).collect();
            store.save_index_specs(&ns, &normalized).await?;
            catalog::create_relaxed_indexes(&ctx.target, store.fence(), db, coll, &specs).await?;
        }
        DdlOp::DropIndexes { db, coll, names } => {
            let ns = format!("{db}.{coll}");
            for n in names {
                run(
                    ctx,
                    db,
                    doc! {"dropIndexes": coll, "index": n},
                    &format!("dropping index {n} of {ns}"),
                )
                .await?;
                store
                    .delete_indexes(doc! {"_id": format!("{ns}#{n}")})
                    .await?;
            }
        }
        DdlOp::Modify { db, coll, desc } => {
            let ns = format!("{db}.{coll}");
            let (index, now) = split_modify(desc);
            let had_index = index.is_some();
            if let Some(ix) = index {
                record_index_options(store, &ns, &ix).await?;
            }
            let now = if now.is_empty() && !had_index {
                // Some servers send `modify` without its description: take the options
                // from the source as they are now (later events re-apply later changes).
                current_options(source, db, coll).await?
            } else {
                now
            };
            if !now.is_empty() {
                let mut cmd = doc! {"collMod": coll};
                cmd.extend(now);
                run(ctx, db, cmd, &format!("modifying {ns}")).await?;
            }
        }
        DdlOp::Rename {
            db,
            coll,
            to_db,
            to_coll,
        } => {
            let (from, to) = (format!("{db}.{coll}"), format!("{to_db}.{to_coll}"));
            if store
                .collection(&from)
                .await?
                .is_some_and(|e| e.kind == MOVED_ON)
            {
                // `from` never arrived: its copy anew found it already renamed on the source,
                // so its data is under `to` now (or a later name). What the target holds
                // under `from` are only writes replayed since. Copy `to` anew (recorded
                // first, so a crash in between replays this again), then drop `from`.
                info!(from = %from, to = %to, "renamed before its copy anew; copying the new name anew");
                let applied = request_copy(ctx, to_db, to_coll, ts).await?;
                run(ctx, db, doc! {"drop": coll}, &format!("dropping {from}")).await?;
                store.forget_collection(&from).await?;
                return Ok(applied);
            }
            let ran = run_reporting(
                ctx,
                "admin",
                doc! {"renameCollection": &from, "to": &to, "dropTarget": true},
                &format!("renaming {from} to {to}"),
            )
            .await?;
            let recorded_to = store.collection(&to).await?.is_some();
            if rename_lost_its_data(ran, recorded_to) {
                // The target never held `from` under this job's records (an earlier copy
                // anew found it already renamed on the source, say): its data is only on the
                // source, now under `to` or a later name. Copy `to` anew from here.
                info!(from = %from, to = %to, "renamed collection not on the target; copying it anew");
                return request_copy(ctx, to_db, to_coll, ts).await;
            }
            store.delete_indexes(doc! {"ns": &to}).await?;
            for mut e in store
                .all_indexes()
                .await?
                .into_iter()
                .filter(|e| e.ns == from)
            {
                store.delete_indexes(doc! {"_id": &e.id}).await?;
                e.ns = to.clone();
                e.id = format!("{to}#{}", e.name);
                store.save_index(&e).await?;
            }
            if let Some(mut entry) = store.collection(&from).await? {
                store.forget_collection(&from).await?;
                entry.ns = to.clone();
                entry.db = to_db.clone();
                entry.coll = to_coll.clone();
                store.upsert_collection(&entry).await?;
            }
        }
        DdlOp::Drop { db, coll } => {
            run(
                ctx,
                db,
                doc! {"drop": coll},
                &format!("dropping {db}.{coll}"),
            )
            .await?;
            store.forget_collection(&format!("{db}.{coll}")).await?;
        }
        DdlOp::Recopy { db, coll } => return request_copy(ctx, db, coll, ts).await,
        DdlOp::DropDatabase { db } => {
            let names = ctx
                .target
                .database(db)
                .list_collection_names()
                .await
                .map_err(|e| EngineError::mongo(Side::Target, "dropping a database", e))?;
            for c in names.iter().filter(|c| filter.selected(db, c)) {
                run(ctx, db, doc! {"drop": c}, &format!("dropping {db}.{c}")).await?;
                store.forget_collection(&format!("{db}.{c}")).await?;
            }
        }
    }
    Ok(Applied::Done)
}

/// Whether a rename the target refused left the renamed data nowhere on the target: `from`
/// was not there (`NamespaceNotFound`) and `to` is not recorded either. A replayed rename the
/// target already ran finds `to` recorded (the rename moves the record). Pure.
fn rename_lost_its_data(ran: Ran, to_recorded: bool) -> bool {
    ran == Ran::Skipped(NAMESPACE_NOT_FOUND) && !to_recorded
}

fn op_is_view(op: &DdlOp) -> bool {
    matches!(op, DdlOp::Create { cmd, .. } if cmd.contains_key("viewOn"))
}

/// The `kind` of a catalog record of a collection that was to be copied anew but had already
/// been renamed (or dropped) on the source: nothing to copy under this name, and its data
/// never reached the target.
pub const MOVED_ON: &str = "movedOn";

/// Record that `db.coll` must be copied anew from the source (it was renamed into the
/// selection, or a rename was replayed while catching up with a copy), and replace it on the
/// target by an empty collection with the source's options. The copy itself runs as the copy
/// stage — outside the DDL barrier, cancellable, resumable by partition — before replication
/// goes on from this event. Replaying the same event again (a restart) finds the request
/// recorded and asks nothing more.
async fn request_copy(ctx: &Ctx, db: &str, coll: &str, ts: Timestamp) -> Result<Applied> {
    let ns = format!("{db}.{coll}");
    let store = &ctx.store;
    if store
        .collection(&ns)
        .await?
        .is_some_and(|e| e.recopy_ts == Some(ts))
    {
        return Ok(Applied::Done);
    }
    let specs = catalog::list_collection_specs(&ctx.source, db).await?;
    let spec = specs.into_iter().find(|s| s.get_str("name") == Ok(coll));
    store.forget_collection(&ns).await?;
    run(ctx, db, doc! {"drop": coll}, &format!("dropping {ns}")).await?;
    let Some(spec) = spec else {
        // Gone from the source since: a later event drops or renames it. Remember that its
        // data never arrived, so that a later rename copies the new name anew.
        store
            .upsert_collection(&CollectionEntry {
                ns: ns.clone(),
                db: db.to_string(),
                coll: coll.to_string(),
                kind: MOVED_ON.into(),
                recopy_ts: Some(ts),
                ..Default::default()
            })
            .await?;
        return Ok(Applied::Done);
    };
    let options = spec.get_document("options").cloned().unwrap_or_default();
    let kind = spec.get_str("type").unwrap_or("collection").to_string();
    let mut e = CollectionEntry {
        ns: ns.clone(),
        db: db.to_string(),
        coll: coll.to_string(),
        capped: options.get_bool("capped").unwrap_or(false),
        options,
        recopy_ts: Some(ts),
        ..Default::default()
    };
    e.kind = kind;
    catalog::create_on_target_known(&ctx.target, store.fence(), &e, true, false).await?;
    e.created = true;
    if e.kind != "collection" {
        // A view: created, nothing to copy.
        e.copied = true;
        store.upsert_collection(&e).await?;
        return Ok(Applied::Done);
    }
    let (b, n) = catalog::estimate(&ctx.source, db, coll).await?;
    e.size_bytes = b;
    e.documents = n;
    store.upsert_collection(&e).await?;
    info!(ns = %ns, "collection to be copied anew");
    Ok(Applied::NeedsCopy)
}

/// The `collMod`-able options of a source collection or view, as they are now.
async fn current_options(source: &Client, db: &str, coll: &str) -> Result<Document> {
    let specs = catalog::list_collection_specs(source, db).await?;
    let Some(spec) = specs.into_iter().find(|s| s.get_str("name") == Ok(coll)) else {
        return Ok(Document::new());
    };
    let opts = spec.get_document("options").cloned().unwrap_or_default();
    let mut out = Document::new();
    let keys: &[&str] = if spec.get_str("type") == Ok("view") {
        &["viewOn", "pipeline"]
    } else {
        &["validator", "validationLevel", "validationAction"]
    };
    for k in keys {
        if let Some(v) = opts.get(*k) {
            out.insert(*k, v.clone());
        }
    }
    Ok(out)
}

/// Record changed index options (hidden, TTL, unique, prepareUnique) in the catalog; the
/// target keeps its relaxed index until finalize.
async fn record_index_options(store: &Store, ns: &str, ix: &Document) -> Result<()> {
    let entries = store.all_indexes().await?;
    let found = entries.into_iter().find(|e| {
        e.ns == ns
            && (ix.get_str("name").ok() == Some(e.name.as_str())
                || ix
                    .get("keyPattern")
                    .is_some_and(|k| e.spec.get("key") == Some(k)))
    });
    let Some(mut e) = found else {
        return Ok(());
    };
    for (k, v) in ix {
        if matches!(k.as_str(), "name" | "keyPattern") {
            continue;
        }
        if v == &Bson::Boolean(false) {
            e.spec.remove(k);
        } else {
            e.spec.insert(k, v.clone());
        }
    }
    e.spec = catalog::normalize_index(&e.spec);
    store.save_index(&e).await
}

fn ddl_summary(op: &DdlOp) -> String {
    match op {
        DdlOp::Create { db, coll, .. }
        | DdlOp::CreateIndexes { db, coll, .. }
        | DdlOp::DropIndexes { db, coll, .. }
        | DdlOp::Modify { db, coll, .. }
        | DdlOp::Drop { db, coll } => format!("{db}.{coll}"),
        DdlOp::Rename {
            db,
            coll,
            to_db,
            to_coll,
        } => format!("{db}.{coll} -> {to_db}.{to_coll}"),
        DdlOp::DropDatabase { db } => db.clone(),
        DdlOp::Recopy { db, coll } => format!("{db}.{coll} (copied anew)"),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_rename_of_what_the_target_never_held_is_a_copy_anew() {
        // `from` missing on the target and `to` not recorded: the data is only on the source.
        assert!(rename_lost_its_data(
            Ran::Skipped(NAMESPACE_NOT_FOUND),
            false
        ));
        // A replay of a rename already run: `to` is recorded.
        assert!(!rename_lost_its_data(
            Ran::Skipped(NAMESPACE_NOT_FOUND),
            true
        ));
        assert!(!rename_lost_its_data(Ran::Applied, false));
        assert!(!rename_lost_its_data(Ran::Skipped(48), false));
    }

    use super::*;

    #[test]
    fn ddl_that_drops_or_replaces_documents_wipes_its_collections() {
        let c = |db: &str, coll: &str| Wiped::Collection {
            db: db.into(),
            coll: coll.into(),
        };
        let (db, coll) = ("app".to_string(), "c".to_string());
        let create = DdlOp::Create {
            db: db.clone(),
            coll: coll.clone(),
            cmd: doc! {"create": "c"},
            capped: false,
        };
        assert_eq!(wipes(&create), vec![c("app", "c")]);
        let drop = DdlOp::Drop {
            db: db.clone(),
            coll: coll.clone(),
        };
        assert_eq!(wipes(&drop), vec![c("app", "c")]);
        let recopy = DdlOp::Recopy {
            db: db.clone(),
            coll: coll.clone(),
        };
        assert_eq!(wipes(&recopy), vec![c("app", "c")]);
        let rename = DdlOp::Rename {
            db: db.clone(),
            coll: coll.clone(),
            to_db: "other".into(),
            to_coll: "d".into(),
        };
        assert_eq!(wipes(&rename), vec![c("app", "c"), c("other", "d")]);
        assert_eq!(
            wipes(&DdlOp::DropDatabase { db: db.clone() }),
            vec![Wiped::Database { db: db.clone() }]
        );
        // Index and option changes keep every document.
        for op in [
            DdlOp::CreateIndexes {
                db: db.clone(),
                coll: coll.clone(),
                specs: vec![],
            },
            DdlOp::DropIndexes {
                db: db.clone(),
                coll: coll.clone(),
                names: vec!["a_1".into()],
            },
            DdlOp::Modify {
                db: db.clone(),
                coll: coll.clone(),
                desc: doc! {"validationLevel": "off"},
            },
        ] {
            assert!(wipes(&op).is_empty(), "{op:?}");
        }
    }

    fn ev(op: &str, coll: Option<&str>, desc: Document) -> Document {
        let mut ns = doc! {"db": "app"};
        if let Some(c) = coll {
            ns.insert("coll", c);
        }
        doc! {"operationType": op, "ns": ns, "operationDescription": desc}
    }

    fn all() -> NamespaceFilter {
        NamespaceFilter::default()
    }

    #[test]
    fn create_collection_and_view() {
        let d = decide(
            &ev(
                "create",
                Some("c"),
                doc! {"idIndex": {"v": 2}, "capped": true, "size": 100},
            ),
            &all(),
        );
        assert_eq!(
            d,
            DdlDecision::Apply(DdlOp::Create {
                db: "app".into(),
                coll: "c".into(),
                cmd: doc! {"create": "c", "capped": true, "size": 100},
                capped: true
            })
        );
        let v = decide(
            &ev("create", Some("v"), doc! {"viewOn": "c", "pipeline": []}),
            &all(),
        );
        let DdlDecision::Apply(DdlOp::Create { cmd, .. }) = v else {
            panic!("{v:?}")
        };
        assert_eq!(cmd, doc! {"create": "v", "viewOn": "c", "pipeline": []});
    }

    #[test]
    fn renames_across_the_filter() {
        let f =
            NamespaceFilter::new(&["app.*".to_string()], &["app.tmp".to_string()]).expect("filter");
        let r = |from: &str, to: &str| {
            decide(
                &ev("rename", Some(from), doc! {"to": {"db": "app", "coll": to}}),
                &f,
            )
        };
        assert!(matches!(
            r("a", "b"),
            DdlDecision::Apply(DdlOp::Rename { .. })
        ));
        assert!(matches!(
            r("a", "tmp"),
            DdlDecision::Apply(DdlOp::Drop { .. })
        ));
        assert!(matches!(
            r("tmp", "a"),
            DdlDecision::Apply(DdlOp::Recopy { .. })
        ));
        let other = decide(
            &doc! {"operationType": "rename", "ns": {"db": "x", "coll": "a"},
            "operationDescription": {"to": {"db": "x", "coll": "b"}}},
            &f,
        );
        assert_eq!(other, DdlDecision::Skip);
    }

    #[test]
    fn unselected_is_skipped() {
        let f = NamespaceFilter::new(&["app.a".to_string()], &[]).expect("filter");
        assert_eq!(
            decide(&ev("drop", Some("b"), doc! {}), &f),
            DdlDecision::Skip
        );
        assert!(matches!(
            decide(&ev("drop", Some("a"), doc! {}), &f),
            DdlDecision::Apply(DdlOp::Drop { .. })
        ));
        assert!(matches!(
            decide(&ev("dropDatabase", None, doc! {}), &f),
            DdlDecision::Apply(DdlOp::DropDatabase { .. })
        ));
    }

    #[test]
    fn catch_up_renames_copy_anew() {
        use mongodb::bson::Timestamp;
        let r = DdlOp::Rename {
            db: "a".into(),
            coll: "x".into(),
            to_db: "a".into(),
            to_coll: "y".into(),
        };
        let t = |s| Timestamp {
            time: s,
            increment: 1,
        };
        assert_eq!(
            during_catch_up(r.clone(), t(5), Some(t(9))),
            vec![
                DdlOp::Drop {
                    db: "a".into(),
                    coll: "x".into()
                },
                DdlOp::Recopy {
                    db: "a".into(),
                    coll: "y".into()
                }
            ]
        );
        // A rename at the copy's finish itself (in progress when the finish was read).
        assert_eq!(during_catch_up(r.clone(), t(9), Some(t(9))).len(), 2);
        assert_eq!(
            during_catch_up(r.clone(), t(10), Some(t(9))),
            vec![r.clone()]
        );
        assert_eq!(during_catch_up(r.clone(), t(10), None), vec![r]);
    }

    #[test]
    fn modify_splits_index_options() {
        let (ix, now) = split_modify(
            &doc! {"index": {"name": "a_1", "hidden": true}, "validationLevel": "off"},
        );
        assert_eq!(ix, Some(doc! {"name": "a_1", "hidden": true}));
        assert_eq!(now, doc! {"validationLevel": "off"});
    }

    #[test]
    fn index_events() {
        let d = decide(
            &ev(
                "createIndexes",
                Some("c"),
                doc! {"indexes": [{"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true}]},
            ),
            &all(),
        );
        let DdlDecision::Apply(DdlOp::CreateIndexes { specs, .. }) = d else {
            panic!()
        };
        assert_eq!(specs.len(), 1);
        let d = decide(
            &ev(
                "dropIndexes",
                Some("c"),
                doc! {"indexes": [{"name": "a_1", "key": {"a": 1}}]},
            ),
            &all(),
        );
        assert_eq!(
            d,
            DdlDecision::Apply(DdlOp::DropIndexes {
                db: "app".into(),
                coll: "c".into(),
                names: vec!["a_1".into()]
            })
        );
    }
}
