//! Change event → target write translation. Pure: no I/O, exhaustively unit-tested.
//!
//! Inserts become inserts (a replacement where the document is already there: a replay) and
//! replaces replace-with-upsert (idempotent on replay); updates become
//! `$set`/`$unset` (after any array truncation); deletes delete. An update whose paths cannot
//! be written as dotted paths (field names with `.` or a `$` prefix) becomes a re-read of the
//! document from the source.

use mongodb::bson::{doc, Bson, Document};

/// One write on the target, addressed by the event's `documentKey`.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Insert the document (an insert event). Written as an insert where the target does not
    /// hold the document yet, else as a replacement (an event replayed): same outcome.
    Insert {
        filter: Document,
        doc: Document,
    },
    /// Replace the document, inserting it if absent.
    Upsert {
        filter: Document,
        doc: Document,
    },
    /// Apply these update documents in order; no upsert.
    Update {
        filter: Document,
        updates: Vec<Document>,
    },
    Delete {
        filter: Document,
    },
    /// Re-read the document from the source; replace it, or delete it if gone.
    Refetch {
        filter: Document,
    },
}

impl WriteOp {
    pub fn filter(&self) -> &Document {
        match self {
            WriteOp::Insert { filter, .. }
            | WriteOp::Upsert { filter, .. }
            | WriteOp::Update { filter, .. }
            | WriteOp::Delete { filter }
            | WriteOp::Refetch { filter } => filter,
        }
    }
}

/// What an event asks of the engine. (Made once per event and moved on at once: its size
/// costs nothing a box would save.)
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Translated {
    Crud {
        db: String,
        coll: String,
        op: WriteOp,
    },
    /// A DDL event, applied behind a barrier (see `ddl`).
    Ddl,
    /// Nothing to do (with the reason, for debug logs).
    Skip(&'static str),
    /// An event the engine cannot replicate; the run stops with this message.
    Unsupported(String),
}

pub const DDL_TYPES: &[&str] = &[
    "create",
    "createIndexes",
    "dropIndexes",
    "modify",
    "rename",
    "drop",
    "dropDatabase",
];

/// The namespace of an event: (`db`, `coll` if any).
pub fn event_ns(ev: &Document) -> Option<(String, Option<String>)> {
    let ns = ev.get_document("ns").ok()?;
    let db = ns.get_str("db").ok()?.to_string();
    let coll = ns.get_str("coll").ok().map(str::to_string);
    Some((db, coll))
}

/// Whether an event is DDL, without translating it (no copy of its documents).
pub fn is_ddl(ev: &Document) -> bool {
    ev.get_str("operationType")
        .is_ok_and(|op| DDL_TYPES.contains(&op))
}

pub fn translate(ev: &Document) -> Translated {
    if is_ddl(ev) {
        return Translated::Ddl;
    }
    let op = ev.get_str("operationType").unwrap_or("");
    match op {
        "insert" | "replace" | "update" | "delete" => {}
        "shardCollection" => return Translated::Skip("shardCollection is not mirrored"),
        "reshardCollection" | "refineCollectionShardKey" | "invalidate" => {
            return Translated::Unsupported(format!(
                "a {op} event on {} cannot be replicated; finalize or restart the migration after it",
                ns_text(ev)
            ))
        }
        _ => return Translated::Skip("event type not replicated"),
    }
    let Some((db, Some(coll))) = event_ns(ev) else {
        return Translated::Skip("event without a collection");
    };
    let Ok(key) = ev.get_document("documentKey") else {
        return Translated::Unsupported(format!("a {op} event on {db}.{coll} has no documentKey"));
    };
    let filter = key.clone();
    let op = match op {
        "insert" => match ev.get_document("fullDocument") {
            Ok(d) => WriteOp::Insert {
                filter,
                doc: d.clone(),
            },
            Err(_) => WriteOp::Refetch { filter },
        },
        "replace" => match ev.get_document("fullDocument") {
            Ok(d) => WriteOp::Upsert {
                filter,
                doc: d.clone(),
            },
            Err(_) => WriteOp::Refetch { filter },
        },
        "delete" => WriteOp::Delete { filter },
        _ => match ev.get_document("updateDescription") {
            Ok(ud) => match update_ops(ud) {
                Some(u) if u.is_empty() => return Translated::Skip("empty update"),
                Some(updates) => WriteOp::Update { filter, updates },
                None => WriteOp::Refetch { filter },
            },
            Err(_) => WriteOp::Refetch { filter },
        },
    };
    Translated::Crud { db, coll, op }
}

/// The routing key (`key_hash`) of a CRUD event's document, without translating the event.
pub fn event_key(ev: &Document) -> Option<u64> {
    let op = ev.get_str("operationType").ok()?;
    if !matches!(op, "insert" | "replace" | "update" | "delete") {
        return None;
    }
    let (db, coll) = event_ns(ev)?;
    let key = ev.get_document("documentKey").ok()?;
    Some(key_hash(&db, &coll?, key))
}

fn ns_text(ev: &Document) -> String {
    match event_ns(ev) {
        Some((db, Some(c))) => format!("{db}.{c}"),
        Some((db, None)) => db,
        None => "?".into(),
    }
}

/// Update documents for an `updateDescription`, or `None` when it cannot be written as
/// dotted-path updates.
pub fn update_ops(ud: &Document) -> Option<Vec<Document>> {
    let empty = Document::new();
    let updated = ud.get_document("updatedFields").unwrap_or(&empty);
    let removed: Vec<&str> = match ud.get_array("removedFields") {
        Ok(a) => a.iter().filter_map(Bson::as_str).collect(),
        Err(_) => vec![],
    };
    let disamb = ud.get_document("disambiguatedPaths").ok();
    let path_ok = |k: &str| -> bool {
        if let Some(Bson::Array(parts)) = disamb.and_then(|d| d.get(k)) {
            return parts.iter().all(|p| match p {
                Bson::String(s) => plain_field(s),
                Bson::Int32(_) | Bson::Int64(_) => true,
                _ => false,
            });
        }
        k.split('.').all(plain_field)
    };
    let mut out = Vec::new();
    if let Ok(trunc) = ud.get_array("truncatedArrays") {
        let mut push = Document::new();
        for t in trunc {
            let t = t.as_document()?;
            let field = t.get_str("field").ok()?;
            if !path_ok(field) {
                return None;
            }
            let n = match t.get("newSize")? {
                Bson::Int32(n) => i64::from(*n),
                Bson::Int64(n) => *n,
                _ => return None,
            };
            push.insert(field, doc! {"$each": [], "$slice": n});
        }
        if !push.is_empty() {
            out.push(doc! {"$push": push});
        }
    }
    let mut set = Document::new();
    for (k, v) in updated {
        if !path_ok(k) || has_dollar_keys(v) {
            return None;
        }
        set.insert(k, v.clone());
    }
    let mut unset = Document::new();
    for k in removed {
        if !path_ok(k) {
            return None;
        }
        unset.insert(k, "");
    }
    let mut u = Document::new();
    if !set.is_empty() {
        u.insert("$set", set);
    }
    if !unset.is_empty() {
        u.insert("$unset", unset);
    }
    if !u.is_empty() {
        out.push(u);
    }
    Some(out)
}

/// A field name usable as one component of a dotted update path.
fn plain_field(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('$') && !s.contains('.')
}

/// Whether a value holds a `$`-prefixed field name at any depth (update operators refuse them).
pub fn has_dollar_keys(v: &Bson) -> bool {
    match v {
        Bson::Document(d) => d
            .iter()
            .any(|(k, v)| k.starts_with('$') || has_dollar_keys(v)),
        Bson::Array(a) => a.iter().any(has_dollar_keys),
        _ => false,
    }
}

/// A document's identity for routing: a hash of namespace and `_id` (BSON bytes: equal
/// values of one type, equal keys). FNV-1a, so it is the same in every run and every build
/// (it is saved with applied transactions, see `store::TxnMarker`).
pub fn key_hash(db: &str, coll: &str, key: &Document) -> u64 {
    let mut h = Fnv::default();
    h.write(db.as_bytes());
    h.write(&[0]);
    h.write(coll.as_bytes());
    h.write(&[0]);
    if let Some(id) = key.get("_id") {
        if let Ok(bytes) = mongodb::bson::to_vec(&doc! {"k": id}) {
            h.write(&bytes);
        }
    }
    h.0
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The applier an event goes to: documents keep their order because all events of one
/// document (namespace + `_id`) hash to the same applier.
pub fn route(db: &str, coll: &str, key: &Document, workers: usize) -> usize {
    (key_hash(db, coll, key) % workers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: &str, extra: Document) -> Document {
        let mut d = doc! {"_id": {"_data": "00"}, "operationType": op,
        "ns": {"db": "app", "coll": "users"}, "documentKey": {"_id": 7}};
        d.extend(extra);
        d
    }

    #[test]
    fn insert_inserts_and_replace_upserts() {
        let t = translate(&ev("insert", doc! {"fullDocument": {"_id": 7, "a": 1}}));
        assert_eq!(
            t,
            Translated::Crud {
                db: "app".into(),
                coll: "users".into(),
                op: WriteOp::Insert {
                    filter: doc! {"_id": 7},
                    doc: doc! {"_id": 7, "a": 1}
                }
            }
        );
        let t = translate(&ev("replace", doc! {"fullDocument": {"_id": 7, "a": 1}}));
        assert_eq!(
            t,
            Translated::Crud {
                db: "app".into(),
                coll: "users".into(),
                op: WriteOp::Upsert {
                    filter: doc! {"_id": 7},
                    doc: doc! {"_id": 7, "a": 1}
                }
            }
        );
    }

    #[test]
    fn delete_deletes() {
        let t = translate(&ev("delete", doc! {}));
        assert!(matches!(
            t,
            Translated::Crud {
                op: WriteOp::Delete { .. },
                ..
            }
        ));
    }

    #[test]
    fn update_sets_and_unsets() {
        let t = translate(&ev(
            "update",
            doc! {"updateDescription": {"updatedFields": {"a.b": 1, "c": [1, 2]},
            "removedFields": ["d", "e.f"], "truncatedArrays": []}},
        ));
        let Translated::Crud {
            op: WriteOp::Update { updates, .. },
            ..
        } = t
        else {
            panic!("not an update: {t:?}")
        };
        assert_eq!(
            updates,
            vec![doc! {"$set": {"a.b": 1, "c": [1, 2]}, "$unset": {"d": "", "e.f": ""}}]
        );
    }

    #[test]
    fn truncation_comes_first() {
        let u = update_ops(&doc! {"updatedFields": {"arr.1": 5},
        "removedFields": [], "truncatedArrays": [{"field": "arr", "newSize": 2}]})
        .expect("expressible");
        assert_eq!(
            u,
            vec![
                doc! {"$push": {"arr": {"$each": [], "$slice": 2_i64}}},
                doc! {"$set": {"arr.1": 5}}
            ]
        );
    }

    #[test]
    fn ambiguous_paths_fall_back_to_refetch() {
        // A field literally named "a.b" (disambiguated as one component).
        let t = translate(&ev(
            "update",
            doc! {"updateDescription": {"updatedFields": {"a.b": 1}, "removedFields": [],
            "disambiguatedPaths": {"a.b": ["a.b"]}}},
        ));
        assert!(matches!(
            t,
            Translated::Crud {
                op: WriteOp::Refetch { .. },
                ..
            }
        ));
        // Numeric components that are array indexes are fine.
        let u = update_ops(&doc! {"updatedFields": {"a.0.1": 1}, "removedFields": [],
        "disambiguatedPaths": {"a.0.1": ["a", 0, "1"]}});
        assert_eq!(u, Some(vec![doc! {"$set": {"a.0.1": 1}}]));
        // `$`-prefixed names anywhere cannot go through $set.
        assert_eq!(
            update_ops(&doc! {"updatedFields": {"$x": 1}, "removedFields": []}),
            None
        );
        assert_eq!(
            update_ops(&doc! {"updatedFields": {"x": {"$y": 1}}, "removedFields": []}),
            None
        );
        assert_eq!(
            update_ops(&doc! {"updatedFields": {}, "removedFields": ["$z"]}),
            None
        );
    }

    #[test]
    fn empty_update_is_skipped() {
        let t = translate(&ev(
            "update",
            doc! {"updateDescription": {"updatedFields": {}, "removedFields": []}},
        ));
        assert_eq!(t, Translated::Skip("empty update"));
    }

    #[test]
    fn ddl_and_others() {
        assert_eq!(translate(&ev("create", doc! {})), Translated::Ddl);
        assert_eq!(translate(&ev("dropDatabase", doc! {})), Translated::Ddl);
        assert!(matches!(
            translate(&ev("reshardCollection", doc! {})),
            Translated::Unsupported(_)
        ));
        assert!(matches!(
            translate(&ev("whatever", doc! {})),
            Translated::Skip(_)
        ));
        let no_full = translate(&ev("insert", doc! {}));
        assert!(matches!(
            no_full,
            Translated::Crud {
                op: WriteOp::Refetch { .. },
                ..
            }
        ));
    }

    #[test]
    fn is_ddl_agrees_with_translate() {
        let kinds = DDL_TYPES.iter().copied().chain([
            "insert",
            "update",
            "replace",
            "delete",
            "invalidate",
            "shardCollection",
            "whatever",
        ]);
        for k in kinds {
            let e = ev(k, doc! {"fullDocument": {"_id": 1}});
            assert_eq!(is_ddl(&e), translate(&e) == Translated::Ddl, "{k}");
        }
        assert!(!is_ddl(&Document::new()));
    }

    #[test]
    fn keys_are_the_same_in_every_build() {
        // Saved with applied transactions: must never change.
        assert_eq!(key_hash("", "", &Document::new()), 0x0832_8807_b4eb_6fed);
        assert_ne!(
            key_hash("a", "bc", &doc! {"_id": 1}),
            key_hash("ab", "c", &doc! {"_id": 1})
        );
        assert_ne!(
            key_hash("a", "b", &doc! {"_id": 1}),
            key_hash("a", "b", &doc! {"_id": 1_i64})
        );
    }

    #[test]
    fn routing_is_stable_and_spread() {
        let k = doc! {"_id": 1};
        assert_eq!(route("a", "b", &k, 8), route("a", "b", &k, 8));
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            seen.insert(route("a", "b", &doc! {"_id": i}, 8));
        }
        assert_eq!(seen.len(), 8);
    }

    proptest::proptest! {
        // 5000 cases by default; `PROPTEST_CASES=100000` in the full reliability run
        // (docs/reliability.md).
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            crate::engine::filter::fuzz_cases(5000)
        ))]
        /// Translation never panics, and a produced update only uses plain dotted paths.
        #[test]
        fn fuzz_update_translation(
            keys in proptest::collection::vec("[a-z0-9.$]{0,6}", 0..5),
            removed in proptest::collection::vec("[a-z0-9.$]{0,6}", 0..3),
            trunc in proptest::collection::vec(("[a-z.$]{0,4}", -2i32..5), 0..2),
        ) {
            let mut upd = Document::new();
            for (i, k) in keys.iter().enumerate() { upd.insert(k.clone(), i as i32); }
            let tr: Vec<Bson> = trunc.iter().map(|(f, n)| Bson::Document(doc!{"field": f, "newSize": *n})).collect();
            let ud = doc!{"updatedFields": upd, "removedFields": removed.clone(), "truncatedArrays": tr};
            if let Some(ops) = update_ops(&ud) {
                for u in ops {
                    for (_, body) in u {
                        if let Bson::Document(b) = body {
                            for (k, _) in b {
                                proptest::prop_assert!(k.split('.').all(|p| !p.is_empty() && !p.starts_with('$')), "{}", k);
                            }
                        }
                    }
                }
            }
        }
    }
}
