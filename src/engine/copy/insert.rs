//! The copy's one insert path, used by the initial copy and by copies anew during
//! replication: a batch of source documents inserted into the target in one fenced
//! transaction, validation bypassed, documents an earlier attempt already inserted skipped,
//! transient errors retried. Any other refusal fails the copy naming the namespace: no
//! document is ever dropped silently.

use std::collections::HashSet;
use std::time::Duration;

use futures::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::error::ErrorKind;
use mongodb::ClientSession;

use super::super::ctx::Ctx;
use super::super::error::{classify_mongo, EngineError, ErrorClass, MongoContext, Result, Side};

/// How a batch went into the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    pub documents: u64,
    /// Documents already on the target (an earlier, interrupted attempt).
    pub already_there: u64,
}

/// Whether every write error of an insert is a duplicate key and no write concern failed.
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w.code == 11000))
        }
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// The `_id` of a raw document.
fn raw_id(d: &RawDocumentBuf) -> Option<Bson> {
    d.get("_id")
        .ok()
        .flatten()
        .and_then(|v| v.to_raw_bson().try_into().ok())
}

/// Insert `docs` into `db.coll` (ordered for capped collections, which keep insertion order).
pub async fn insert_batch(
    ctx: &Ctx,
    db: &str,
    coll: &str,
    docs: &[RawDocumentBuf],
    ordered: bool,
) -> Result<Inserted> {
    let c = ctx.target.database(db).collection::<RawDocumentBuf>(coll);
    let ns = format!("{db}.{coll}");
    let what = format!("inserting into {ns}");
    let mut todo: Vec<&RawDocumentBuf> = docs.iter().collect();
    let mut out = Inserted::default();
    let mut attempt = 0u32;
    loop {
        let write = |mut s: ClientSession| {
            let (c, todo, what) = (&c, &todo, &what);
            async move {
                let r = c
                    .insert_many(todo.iter().copied())
                    .ordered(ordered)
                    .bypass_document_validation(true)
                    .session(&mut s)
                    .await
                    .map(|_| ())
                    .map_err(|e| EngineError::mongo(Side::Target, what.clone(), e));
                (s, r)
            }
            .boxed()
        };
        let fence = ctx.store.fence();
        // Capped collections take no transactional writes: written beside a fence check.
        let r = if ordered {
            fence.beside(&what, write).await
        } else {
            fence.txn(&what, write).await
        };
        let e = match r {
            Ok(()) => {
                out.documents += todo.len() as u64;
                return Ok(out);
            }
            Err(e) => e,
        };
        let source = match &e {
            EngineError::Mongo { source, .. } => Some(source),
            _ => None,
        };
        if source.is_some_and(only_duplicates) {
            // An earlier attempt inserted some of these (the transaction wrote nothing): keep
            // the target's copies and insert the rest.
            let before = todo.len();
            let present = existing_ids(ctx, db, coll, &todo).await?;
            todo.retain(|d| raw_id(d).is_none_or(|id| !present.contains(&id_key(&id))));
            out.already_there += (before - todo.len()) as u64;
            if todo.is_empty() {
                return Ok(out);
            }
            if todo.len() < before {
                continue;
            }
        }
        attempt += 1;
        let transient = match &e {
            EngineError::Mongo { source, .. } => classify_mongo(source) == ErrorClass::Transient,
            other => other.class() == ErrorClass::Transient,
        };
        if transient && attempt < 8 {
            ctx.metrics
                .errors
                .with_label_values(&["copy_insert_retry"])
                .inc();
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            continue;
        }
        return Err(if transient {
            // Still transient after the retries here: retry from the checkpoint.
            EngineError::Retry(e.to_string())
        } else {
            e
        });
    }
}

/// A comparable key of an `_id` (BSON bytes of a one-field document: equal values, equal
/// keys, whatever their Rust representation).
fn id_key(id: &Bson) -> Vec<u8> {
    mongodb::bson::to_vec(&doc! {"k": id.clone()}).unwrap_or_default()
}

/// Which of `docs` the target already holds, by `_id`.
async fn existing_ids(
    ctx: &Ctx,
    db: &str,
    coll: &str,
    docs: &[&RawDocumentBuf],
) -> Result<HashSet<Vec<u8>>> {
    let ids: Vec<Bson> = docs.iter().filter_map(|d| raw_id(d)).collect();
    let mut out = HashSet::new();
    for chunk in ids.chunks(10_000) {
        let found: Vec<Document> = ctx
            .target
            .database(db)
            .collection::<Document>(coll)
            .find(doc! {"_id": {"$in": chunk.to_vec()}})
            .projection(doc! {"_id": 1})
            .await
            .on(Side::Target, "reading which documents are already copied")?
            .try_collect()
            .await
            .on(Side::Target, "reading which documents are already copied")?;
        out.extend(found.iter().filter_map(|d| d.get("_id")).map(id_key));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::rawdoc;

    #[test]
    fn ids_compare_by_value() {
        let a = rawdoc! {"_id": 5_i32, "x": 1};
        let id = raw_id(&a).expect("id");
        assert_eq!(id_key(&id), id_key(&Bson::Int32(5)));
        assert_ne!(id_key(&id), id_key(&Bson::Int64(5)));
        assert!(raw_id(&rawdoc! {"x": 1}).is_none());
    }
}
