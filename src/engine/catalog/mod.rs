//! The catalog: which collections and views the source has, their options and indexes, and
//! how they are created on the target. Index definitions are relaxed during the sync
//! (unique → non-unique, TTL → disabled, hidden → visible) and restored at finalize.

pub mod build;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

use super::error::{mongo_code, EngineError, MongoContext, Result, Side};
use super::filter::NamespaceFilter;
use super::reply::num;
use super::store::fence::Fence;
use super::store::CollectionEntry;

/// `expireAfterSeconds` used while syncing: the largest value servers accept (~68 years).
pub const TTL_DISABLED: i32 = i32::MAX;

/// Collection options copied to the target at creation. Others (`uuid`, `autoIndexId`, …) are
/// the server's own.
const COPIED_OPTIONS: &[&str] = &[
    "capped",
    "size",
    "max",
    "collation",
    "validator",
    "validationLevel",
    "validationAction",
    "clusteredIndex",
    "changeStreamPreAndPostImages",
    "storageEngine",
    "indexOptionDefaults",
];

/// What the source lists, before it becomes a catalog entry.
#[derive(Debug, Clone)]
pub struct Listed {
    pub entry: CollectionEntry,
    /// Why the collection is not migrated, if it is not (time-series, a system collection…).
    pub unsupported: Option<String>,
    /// A `system.*` collection the patterns name: never migrated, listed to be reported.
    pub system: bool,
}

/// The source's selection: the one listing that both the preflight and the copy use.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Selected collections and views in listing order (views after the collections they
    /// may be defined on, as the server lists them), with the system collections the
    /// patterns name.
    pub listed: Vec<Listed>,
    /// Databases whose collections could not be listed, with why.
    pub unlisted: Vec<(String, EngineError)>,
}

/// Databases listed at once.
const LIST_CONCURRENCY: usize = 8;

/// List the selected collections and views of the source: `listDatabases` (names only) and
/// one `listCollections` per selected database — metadata only, on every server. Fails only
/// when the databases cannot be listed; a database whose collections cannot be listed is
/// reported in `unlisted`.
pub async fn list_selection(source: &Client, filter: &NamespaceFilter) -> Result<Selection> {
    let dbs = source
        .list_database_names()
        .await
        .on(Side::Source, "listing databases")?;
    let dbs: Vec<String> = dbs
        .into_iter()
        .filter(|d| filter.database_selected(d))
        .collect();
    let listed: Vec<(String, Result<Vec<Document>>)> = futures::stream::iter(dbs)
        .map(|db| async move {
            let specs = list_collection_specs(source, &db).await;
            (db, specs)
        })
        .buffered(LIST_CONCURRENCY)
        .collect()
        .await;
    let mut out = Selection::default();
    for (db, specs) in listed {
        let specs = match specs {
            Ok(s) => s,
            Err(e) => {
                out.unlisted.push((db, e));
                continue;
            }
        };
        for spec in specs {
            if let Some(l) = listed_entry(&db, &spec, filter) {
                out.listed.push(l);
            }
        }
    }
    Ok(out)
}

/// The catalog's view of one `listCollections` spec of `db`, if the filter selects it (or
/// names it, for a system collection). Pure.
pub fn listed_entry(db: &str, spec: &Document, filter: &NamespaceFilter) -> Option<Listed> {
    let name = spec.get_str("name").unwrap_or_default().to_string();
    let kind = spec.get_str("type").unwrap_or("collection").to_string();
    let options = spec.get_document("options").cloned().unwrap_or_default();
    let system = name.starts_with("system.");
    let unsupported = if system {
        // `system.views` holds the views (migrated as views); buckets belong to time series
        // (reported with their collection).
        if name == "system.views"
            || name.starts_with("system.buckets.")
            || !filter.patterns_match(db, &name)
        {
            return None;
        }
        Some("system collection".to_string())
    } else {
        if !filter.selected(db, &name) {
            return None;
        }
        unsupported_reason(&kind, &name, &options)
    };
    let capped = options.get_bool("capped").unwrap_or(false);
    Some(Listed {
        entry: CollectionEntry {
            ns: format!("{db}.{name}"),
            db: db.to_string(),
            coll: name,
            kind,
            options,
            capped,
            ..Default::default()
        },
        unsupported,
        system,
    })
}

/// List the selected collections and views of the source (system collections left out).
pub async fn list_selected(source: &Client, filter: &NamespaceFilter) -> Result<Vec<Listed>> {
    let sel = list_selection(source, filter).await?;
    if let Some((_, e)) = sel.unlisted.into_iter().next() {
        return Err(e);
    }
    Ok(sel.listed.into_iter().filter(|l| !l.system).collect())
}

/// Why a listed collection is not migrated, if it is not. Pure.
pub fn unsupported_reason(kind: &str, name: &str, options: &Document) -> Option<String> {
    match kind {
        "timeseries" => return Some("time-series collections are not migrated".to_string()),
        "collection" | "view" => {}
        other => return Some(format!("collections of type {other:?} are not migrated")),
    }
    if options.contains_key("encryptedFields") {
        return Some("queryable-encryption collections are not migrated".to_string());
    }
    if name.starts_with("enxcol_.") {
        return Some("queryable-encryption metadata collections are not migrated".to_string());
    }
    None
}

/// Raw `listCollections` specs of one database (views included).
pub async fn list_collection_specs(client: &Client, db: &str) -> Result<Vec<Document>> {
    let side = Side::Source;
    let cur = client
        .database(db)
        .run_cursor_command(doc! {"listCollections": 1})
        .await
        .on(side, "listing collections")?;
    cur.try_collect().await.on(side, "listing collections")
}

/// Estimated size in bytes and document count of a collection.
pub async fn estimate(source: &Client, db: &str, coll: &str) -> Result<(i64, i64)> {
    let d = source.database(db);
    if let Ok(stats) = d.run_command(doc! {"collStats": coll}).await {
        let size = num(stats.get("size"));
        let count = num(stats.get("count"));
        if count == 0 || size > 0 {
            return Ok((size, count));
        }
    }
    // The server keeps no statistics: measure.
    let mut cur = d
        .collection::<Document>(coll)
        .aggregate(vec![doc! {"$group": {
            "_id": Bson::Null, "n": {"$sum": 1}, "b": {"$sum": {"$bsonSize": "$$ROOT"}}
        }}])
        .await
        .on(Side::Source, "estimating collection size")?;
    let mut out = (0, 0);
    if let Some(r) = cur
        .try_next()
        .await
        .on(Side::Source, "estimating collection size")?
    {
        out = (num(r.get("b")), num(r.get("n")));
    }
    Ok(out)
}

/// [`estimate`] answered by `deadline`, or `None`: the server took longer (it reads the
/// collection to size it, as SecantusDB does; mongod answers from its metadata). Every command
/// carries the time left as `maxTimeMS`, so the server stops too.
pub async fn estimate_by(
    source: &Client,
    db: &str,
    coll: &str,
    deadline: std::time::Instant,
) -> Result<Option<(i64, i64)>> {
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .as_millis()
            .max(1) as i64
    };
    let d = source.database(db);
    let stats = match d
        .run_command(doc! {"collStats": coll, "maxTimeMS": left()})
        .await
    {
        Ok(s) => s,
        Err(e) if mongo_code(&e) == Some(MAX_TIME_EXPIRED) => return Ok(None),
        Err(e) => return Err(EngineError::mongo(Side::Source, "sizing a collection", e)),
    };
    let (size, count) = (num(stats.get("size")), num(stats.get("count")));
    if count == 0 || size > 0 {
        return Ok(Some((size, count)));
    }
    // The server keeps no statistics: measure, within what is left.
    let r = d
        .collection::<Document>(coll)
        .aggregate(vec![doc! {"$group": {
            "_id": Bson::Null, "n": {"$sum": 1}, "b": {"$sum": {"$bsonSize": "$$ROOT"}}
        }}])
        .max_time(std::time::Duration::from_millis(left() as u64))
        .await;
    let mut cur = match r {
        Ok(c) => c,
        Err(e) if mongo_code(&e) == Some(MAX_TIME_EXPIRED) => return Ok(None),
        Err(e) => return Err(EngineError::mongo(Side::Source, "sizing a collection", e)),
    };
    match cur.try_next().await {
        Ok(Some(r)) => Ok(Some((num(r.get("b")), num(r.get("n"))))),
        Ok(None) => Ok(Some((0, 0))),
        Err(e) if mongo_code(&e) == Some(MAX_TIME_EXPIRED) => Ok(None),
        Err(e) => Err(EngineError::mongo(Side::Source, "sizing a collection", e)),
    }
}

/// MaxTimeMSExpired.
const MAX_TIME_EXPIRED: i32 = 50;

/// The `create` command for a catalog entry on the target. Pure.
pub fn create_command(e: &CollectionEntry) -> Document {
    let mut cmd = doc! {"create": &e.coll};
    if e.kind == "view" {
        for k in ["viewOn", "pipeline", "collation"] {
            if let Some(v) = e.options.get(k) {
                cmd.insert(k, v.clone());
            }
        }
        return cmd;
    }
    for k in COPIED_OPTIONS {
        if let Some(v) = e.options.get(*k) {
            cmd.insert(*k, v.clone());
        }
    }
    cmd
}

/// Create the collection or view on the target. An existing, empty collection is replaced;
/// one holding documents is refused unless `owned` (created by an earlier run of this job).
pub async fn create_on_target(
    target: &Client,
    fence: &Fence,
    e: &CollectionEntry,
    owned: bool,
) -> Result<()> {
    let existing = target
        .database(&e.db)
        .list_collection_names()
        .filter(doc! {"name": &e.coll})
        .await
        .on(Side::Target, "listing target collections")?;
    create_on_target_known(target, fence, e, owned, !existing.is_empty()).await
}

/// Names of the target's collections and views in `db` (one `listCollections` for a whole
/// database, instead of one per collection).
pub async fn target_collection_names(
    target: &Client,
    db: &str,
) -> Result<std::collections::HashSet<String>> {
    Ok(target
        .database(db)
        .list_collection_names()
        .await
        .on(Side::Target, "listing target collections")?
        .into_iter()
        .collect())
}

/// [`create_on_target`] when whether the namespace `exists` on the target is already known.
pub async fn create_on_target_known(
    target: &Client,
    fence: &Fence,
    e: &CollectionEntry,
    owned: bool,
    exists: bool,
) -> Result<()> {
    let db = target.database(&e.db);
    if exists {
        let docs = db
            .collection::<Document>(&e.coll)
            .estimated_document_count()
            .await
            .unwrap_or(0);
        if docs > 0 && !owned {
            return Err(EngineError::TargetNotEmpty(e.ns.clone()));
        }
        let what = "replacing a target collection";
        fence
            .ddl(what, async {
                db.collection::<Document>(&e.coll)
                    .drop()
                    .await
                    .on(Side::Target, what)
            })
            .await?;
    }
    let what = format!("creating {}", e.ns);
    fence
        .ddl(&what, async {
            db.run_command(create_command(e))
                .await
                .on(Side::Target, &what)
        })
        .await?;
    Ok(())
}

/// Index specs of a source collection, without `_id_` and clustered indexes.
pub async fn list_indexes(
    client: &Client,
    side: Side,
    db: &str,
    coll: &str,
) -> Result<Vec<Document>> {
    let res = client
        .database(db)
        .run_cursor_command(doc! {"listIndexes": coll})
        .await;
    let cur = match res {
        Ok(c) => c,
        Err(e) if mongo_code(&e) == Some(26) => return Ok(vec![]),
        Err(e) => return Err(EngineError::mongo(side, "listing indexes", e)),
    };
    let specs: Vec<Document> = cur.try_collect().await.on(side, "listing indexes")?;
    Ok(specs
        .into_iter()
        .filter(|s| s.get_str("name") != Ok("_id_") && !s.get_bool("clustered").unwrap_or(false))
        .collect())
}

/// The spec to build during the sync: unique off, TTL disabled, hidden off. Pure.
pub fn relax_index(spec: &Document) -> Document {
    let mut out = Document::new();
    for (k, v) in spec {
        match k.as_str() {
            "v" | "ns" | "background" | "prepareUnique" | "hidden" => {}
            "unique" => {}
            "expireAfterSeconds" => {
                out.insert(k, TTL_DISABLED);
            }
            _ => {
                out.insert(k, v.clone());
            }
        }
    }
    out
}

/// A spec as it should be compared or recreated: server-managed fields removed. Pure.
pub fn normalize_index(spec: &Document) -> Document {
    let mut out = Document::new();
    for (k, v) in spec {
        if matches!(k.as_str(), "v" | "ns" | "background") {
            continue;
        }
        let flag = matches!(k.as_str(), "unique" | "hidden" | "sparse" | "prepareUnique");
        if flag && v.as_bool() == Some(false) {
            continue;
        }
        out.insert(k, v.clone());
    }
    out
}

/// Build relaxed indexes on the target; indexes that already exist are left alone.
pub async fn create_relaxed_indexes(
    target: &Client,
    fence: &Fence,
    db: &str,
    coll: &str,
    specs: &[Document],
) -> Result<()> {
    for spec in specs {
        let relaxed = relax_index(spec);
        let what = format!(
            "building index {} on {db}.{coll}",
            spec.get_str("name").unwrap_or("?")
        );
        fence
            .ddl(&what, async {
                let r = target
                    .database(db)
                    .run_command(doc! {"createIndexes": coll, "indexes": [relaxed]})
                    .await;
                match r {
                    Ok(_) => Ok(()),
                    // Already there (a replay or a restarted copy): fine.
                    Err(e) if matches!(mongo_code(&e), Some(68 | 85 | 86)) => Ok(()),
                    Err(e) => Err(EngineError::mongo(Side::Target, what.clone(), e)),
                }
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxes_unique_ttl_hidden() {
        let spec = doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true,
        "expireAfterSeconds": 60, "hidden": true, "partialFilterExpression": {"a": {"$gt": 1}}};
        let r = relax_index(&spec);
        assert_eq!(
            r,
            doc! {"key": {"a": 1}, "name": "a_1", "expireAfterSeconds": TTL_DISABLED,
            "partialFilterExpression": {"a": {"$gt": 1}}}
        );
    }

    #[test]
    fn create_commands_keep_options() {
        let e = CollectionEntry {
            coll: "c".into(),
            kind: "collection".into(),
            options: doc! {"capped": true, "size": 4096, "max": 10, "uuid": 1,
            "collation": {"locale": "fr"}, "validator": {"a": {"$type": "int"}},
            "validationLevel": "moderate"},
            ..Default::default()
        };
        assert_eq!(
            create_command(&e),
            doc! {"create": "c", "capped": true, "size": 4096, "max": 10,
            "collation": {"locale": "fr"}, "validator": {"a": {"$type": "int"}},
            "validationLevel": "moderate"}
        );
        let v = CollectionEntry {
            coll: "v".into(),
            kind: "view".into(),
            options: doc! {"viewOn": "c", "pipeline": [{"$match": {"a": 1}}]},
            ..Default::default()
        };
        assert_eq!(
            create_command(&v),
            doc! {"create": "v", "viewOn": "c", "pipeline": [{"$match": {"a": 1}}]}
        );
    }

    #[test]
    fn unsupported_kinds() {
        let none = Document::new();
        assert!(unsupported_reason("collection", "c", &none).is_none());
        assert!(unsupported_reason("view", "v", &none).is_none());
        assert!(unsupported_reason("timeseries", "t", &none)
            .unwrap_or_default()
            .contains("time-series"));
        let qe = doc! {"encryptedFields": {"fields": []}};
        assert!(unsupported_reason("collection", "p", &qe)
            .unwrap_or_default()
            .contains("queryable-encryption"));
        assert!(unsupported_reason("collection", "enxcol_.p.esc", &none).is_some());
    }

    #[test]
    fn the_selection_is_one_rule_for_preflight_and_copy() {
        let f = NamespaceFilter::new(&["app.*".into()], &["app.skip".into()]).expect("filter");
        let spec = |name: &str| doc! {"name": name, "type": "collection", "options": {}};
        assert!(listed_entry("app", &spec("orders"), &f)
            .is_some_and(|l| l.unsupported.is_none() && !l.system && l.entry.ns == "app.orders"));
        assert!(listed_entry("app", &spec("skip"), &f).is_none());
        assert!(listed_entry("other", &spec("orders"), &f).is_none());
        // System collections the patterns name are listed to be reported, never copied.
        let js = listed_entry("app", &spec("system.js"), &f).expect("reported");
        assert!(js.system && js.unsupported.is_some());
        assert!(listed_entry("app", &spec("system.views"), &f).is_none());
        let ts = doc! {"name": "t", "type": "timeseries", "options": {}};
        assert!(listed_entry("app", &ts, &f).is_some_and(|l| l.unsupported.is_some()));
    }

    #[test]
    fn normalizes_specs() {
        let a = doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": false, "background": true};
        assert_eq!(normalize_index(&a), doc! {"key": {"a": 1}, "name": "a_1"});
    }
}
