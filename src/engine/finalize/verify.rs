//! Verification at finalize: walks each collection of the source and the target in `_id`
//! order, partition by partition and in parallel, compares documents byte for byte, and
//! confirms every suspected difference by re-reading both sides. Memory is bounded by the
//! cursors' batches, whatever the data size. Collection options and indexes are compared too.

use std::cmp::Ordering;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;
use tokio::sync::Mutex;

use super::super::catalog;
use super::super::ctx::Ctx;
use super::super::error::{MongoContext, Result, Side};
use super::super::filter::NamespaceFilter;
use crate::api::{Mismatch, MismatchKind, VerificationReport, VerifyMode};

/// At most this many mismatches are listed; all are counted.
pub const MAX_LISTED: usize = 100;

/// BSON comparison order of two values, as servers sort `_id` (simple collation).
pub fn cmp_bson(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        _ if ra == 3 => cmp_num(a, b),
        (Bson::String(x), Bson::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::Symbol(x), Bson::Symbol(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::String(x), Bson::Symbol(y)) | (Bson::Symbol(x), Bson::String(y)) => {
            x.as_bytes().cmp(y.as_bytes())
        }
        (Bson::Document(x), Bson::Document(y)) => cmp_doc(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                let c = cmp_bson(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => x.cmp(y),
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => {
            x.pattern.cmp(&y.pattern).then(x.options.cmp(&y.options))
        }
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

fn rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 1,
        Bson::Null | Bson::Undefined => 2,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 3,
        Bson::String(_) | Bson::Symbol(_) => 4,
        Bson::Document(_) => 5,
        Bson::Array(_) => 6,
        Bson::Binary(_) => 7,
        Bson::ObjectId(_) => 8,
        Bson::Boolean(_) => 9,
        Bson::DateTime(_) => 10,
        Bson::Timestamp(_) => 11,
        Bson::RegularExpression(_) => 12,
        Bson::DbPointer(_) => 13,
        Bson::JavaScriptCode(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::MaxKey => 16,
    }
}

fn num(v: &Bson) -> f64 {
    match v {
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        Bson::Decimal128(d) => d.to_string().parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

/// Numbers by value; NaN sorts before every other number. Exact for integers.
fn cmp_num(a: &Bson, b: &Bson) -> Ordering {
    if let (Bson::Int64(x), Bson::Int64(y)) = (a, b) {
        return x.cmp(y);
    }
    let (x, y) = (num(a), num(b));
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

fn cmp_doc(x: &Document, y: &Document) -> Ordering {
    let mut xi = x.iter();
    let mut yi = y.iter();
    loop {
        match (xi.next(), yi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let c = rank(va)
                    .cmp(&rank(vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| cmp_bson(va, vb));
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
    }
}

/// Relaxed extended JSON of an `_id`, for reports.
pub fn id_text(v: &Bson) -> String {
    v.clone().into_relaxed_extjson().to_string()
}

#[derive(Default)]
struct Tally {
    report: VerificationReport,
}

impl Tally {
    fn mismatch(&mut self, ns: &str, id: String, kind: MismatchKind) {
        self.report.mismatch_count += 1;
        if self.report.mismatches.len() < MAX_LISTED {
            self.report.mismatches.push(Mismatch {
                namespace: ns.to_string(),
                id,
                kind,
            });
        } else {
            self.report.truncated = true;
        }
    }
}

/// Verify every selected namespace.
pub async fn run(
    ctx: &Arc<Ctx>,
    filter: &NamespaceFilter,
    mode: VerifyMode,
) -> Result<VerificationReport> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    tally.lock().await.report.mode = mode;
    if mode == VerifyMode::None {
        let t = tally.lock().await;
        return Ok(t.report.clone());
    }
    let src = namespaces(&ctx.source, Side::Source, filter).await?;
    let dst = namespaces(&ctx.target, Side::Target, filter).await?;
    let mut work = Vec::new();
    {
        let mut t = tally.lock().await;
        for (ns, spec) in &src {
            match dst.iter().find(|(n, _)| n == ns) {
                None => t.mismatch(ns, "(collection)".into(), MismatchKind::Missing),
                Some((_, tspec)) => {
                    if comparable_spec(spec) != comparable_spec(tspec) {
                        t.mismatch(ns, "(collection options)".into(), MismatchKind::Metadata);
                    }
                    if spec.get_str("type").unwrap_or("collection") == "collection" {
                        work.push(ns.clone());
                    }
                }
            }
        }
        for (ns, _) in &dst {
            if !src.iter().any(|(n, _)| n == ns) {
                t.mismatch(ns, "(collection)".into(), MismatchKind::Extra);
            }
        }
    }
    let parallel = 4;
    let results: Vec<Result<()>> = futures::stream::iter(work)
        .map(|ns| {
            let tally = tally.clone();
            async move { verify_collection(ctx, &ns, mode, &tally).await }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let t = tally.lock().await;
    ctx.metrics
        .verify_mismatches
        .set(t.report.mismatch_count as i64);
    Ok(t.report.clone())
}

/// Selected namespaces with their `listCollections` spec.
async fn namespaces(
    c: &Client,
    side: Side,
    filter: &NamespaceFilter,
) -> Result<Vec<(String, Document)>> {
    let mut out = Vec::new();
    for db in c
        .list_database_names()
        .await
        .on(side, "listing databases")?
        .into_iter()
        .filter(|d| filter.database_selected(d))
    {
        let cur = c
            .database(&db)
            .run_cursor_command(doc! {"listCollections": 1})
            .await
            .on(side, "listing collections")?;
        let specs: Vec<Document> = cur.try_collect().await.on(side, "listing collections")?;
        for s in specs {
            let name = s.get_str("name").unwrap_or_default().to_string();
            if filter.selected(&db, &name) && s.get_str("type") != Ok("timeseries") {
                out.push((format!("{db}.{name}"), s));
            }
        }
    }
    Ok(out)
}

/// The parts of a `listCollections` spec that must match. Pure.
pub fn comparable_spec(spec: &Document) -> Document {
    let mut out = doc! {"type": spec.get_str("type").unwrap_or("collection")};
    if let Ok(o) = spec.get_document("options") {
        let mut opts = Document::new();
        for (k, v) in o {
            if !matches!(k.as_str(), "uuid" | "autoIndexId" | "idIndex") {
                opts.insert(k, v.clone());
            }
        }
        out.insert("options", opts);
    }
    out
}

async fn verify_collection(
    ctx: &Arc<Ctx>,
    ns: &str,
    mode: VerifyMode,
    tally: &Arc<Mutex<Tally>>,
) -> Result<()> {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    // Indexes: the target's must equal the source's definitions.
    let si = index_map(&ctx.source, Side::Source, db, coll).await?;
    let ti = index_map(&ctx.target, Side::Target, db, coll).await?;
    {
        let mut t = tally.lock().await;
        t.report.collections_checked += 1;
        for (name, spec) in &si {
            match ti.iter().find(|(n, _)| n == name) {
                Some((_, s)) if s == spec => {}
                Some(_) => t.mismatch(ns, format!("(index {name})"), MismatchKind::Metadata),
                None => t.mismatch(ns, format!("(index {name})"), MismatchKind::Missing),
            }
        }
        for (name, _) in &ti {
            if !si.iter().any(|(n, _)| n == name) {
                t.mismatch(ns, format!("(index {name})"), MismatchKind::Extra);
            }
        }
    }
    if mode == VerifyMode::Counts {
        let s = ctx
            .source
            .database(db)
            .collection::<Document>(coll)
            .count_documents(doc! {})
            .await
            .on(Side::Source, "counting")?;
        let d = ctx
            .target
            .database(db)
            .collection::<Document>(coll)
            .count_documents(doc! {})
            .await
            .on(Side::Target, "counting")?;
        let mut t = tally.lock().await;
        t.report.documents_checked += s;
        if s != d {
            let kind = if d < s {
                MismatchKind::Missing
            } else {
                MismatchKind::Extra
            };
            t.mismatch(ns, format!("(count: source {s}, target {d})"), kind);
        }
        return Ok(());
    }
    // About 4 MiB per server batch whatever the document size: memory stays bounded by the
    // number of collections verified at once, not by their documents.
    let (size, count) = catalog::estimate(&ctx.source, db, coll)
        .await
        .unwrap_or((0, 0));
    let avg = if count > 0 {
        (size / count).max(1)
    } else {
        1024
    };
    let batch = (4 * 1024 * 1024 / avg).clamp(8, 5000) as u32;
    let sc = ctx.source.database(db).collection::<RawDocumentBuf>(coll);
    let tc = ctx.target.database(db).collection::<RawDocumentBuf>(coll);
    let mut s = sc
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .batch_size(batch)
        .await
        .on(Side::Source, "verifying")?;
    let mut d = tc
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .batch_size(batch)
        .await
        .on(Side::Target, "verifying")?;
    let mut a = s.try_next().await.on(Side::Source, "verifying")?;
    let mut b = d.try_next().await.on(Side::Target, "verifying")?;
    let (mut docs, mut bytes) = (0u64, 0u64);
    let mut suspects: Vec<Bson> = Vec::new();
    loop {
        let step = match (&a, &b) {
            (None, None) => break,
            (Some(x), None) => {
                suspects.push(raw_id(x));
                1
            }
            (None, Some(y)) => {
                suspects.push(raw_id(y));
                2
            }
            (Some(x), Some(y)) => {
                let (ix, iy) = (raw_id(x), raw_id(y));
                match cmp_bson(&ix, &iy) {
                    Ordering::Equal => {
                        if x.as_bytes() != y.as_bytes() {
                            suspects.push(ix);
                        }
                        3
                    }
                    Ordering::Less => {
                        suspects.push(ix);
                        1
                    }
                    Ordering::Greater => {
                        suspects.push(iy);
                        2
                    }
                }
            }
        };
        if step & 1 != 0 {
            if let Some(x) = &a {
                docs += 1;
                bytes += x.as_bytes().len() as u64;
            }
            a = s.try_next().await.on(Side::Source, "verifying")?;
        }
        if step & 2 != 0 {
            b = d.try_next().await.on(Side::Target, "verifying")?;
        }
        // Bounded memory: confirm suspects as they accumulate.
        if suspects.len() >= 1000 {
            confirm(ctx, db, coll, ns, std::mem::take(&mut suspects), tally).await?;
        }
    }
    confirm(ctx, db, coll, ns, suspects, tally).await?;
    ctx.metrics.verify_documents.inc_by(docs);
    let mut t = tally.lock().await;
    t.report.documents_checked += docs;
    t.report.bytes_checked += bytes;
    Ok(())
}

fn raw_id(d: &RawDocumentBuf) -> Bson {
    d.get("_id")
        .ok()
        .flatten()
        .and_then(|v| v.to_raw_bson().try_into().ok())
        .unwrap_or(Bson::Null)
}

/// Re-read each suspect on both sides and record the differences that remain.
async fn confirm(
    ctx: &Ctx,
    db: &str,
    coll: &str,
    ns: &str,
    suspects: Vec<Bson>,
    tally: &Arc<Mutex<Tally>>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for id in suspects {
        let key = mongodb::bson::to_vec(&doc! {"k": &id}).unwrap_or_default();
        if !seen.insert(key) {
            continue;
        }
        let sc = ctx.source.database(db).collection::<RawDocumentBuf>(coll);
        let tc = ctx.target.database(db).collection::<RawDocumentBuf>(coll);
        let s = sc
            .find_one(doc! {"_id": id.clone()})
            .await
            .on(Side::Source, "re-reading a suspect")?;
        let t = tc
            .find_one(doc! {"_id": id.clone()})
            .await
            .on(Side::Target, "re-reading a suspect")?;
        let kind = match (s, t) {
            (Some(x), Some(y)) if x.as_bytes() == y.as_bytes() => continue,
            (Some(_), Some(_)) => MismatchKind::Different,
            (Some(_), None) => MismatchKind::Missing,
            (None, Some(_)) => MismatchKind::Extra,
            (None, None) => continue,
        };
        tally.lock().await.mismatch(ns, id_text(&id), kind);
    }
    Ok(())
}

async fn index_map(
    c: &Client,
    side: Side,
    db: &str,
    coll: &str,
) -> Result<Vec<(String, Document)>> {
    Ok(catalog::list_indexes(c, side, db, coll)
        .await?
        .iter()
        .map(|s| {
            (
                s.get_str("name").unwrap_or_default().to_string(),
                catalog::normalize_index(s),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn bson_order_across_types() {
        let mut v = vec![
            Bson::MaxKey,
            Bson::ObjectId(ObjectId::new()),
            Bson::String("a".into()),
            Bson::Int32(5),
            Bson::Double(f64::NAN),
            Bson::Document(doc! {"a": 1}),
            Bson::Null,
            Bson::MinKey,
            Bson::Double(2.5),
            Bson::Int64(-3),
            Bson::Boolean(false),
        ];
        v.sort_by(cmp_bson);
        let ranks: Vec<u8> = v.iter().map(rank).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(v[0], Bson::MinKey);
        assert!(matches!(v[2], Bson::Double(d) if d.is_nan()));
        assert_eq!(v[3], Bson::Int64(-3));
        assert_eq!(v[4], Bson::Double(2.5));
        assert_eq!(v[5], Bson::Int32(5));
    }

    #[test]
    fn documents_compare_field_by_field() {
        let a = Bson::Document(doc! {"a": 1, "b": 2});
        let b = Bson::Document(doc! {"a": 1, "c": 0});
        assert_eq!(cmp_bson(&a, &b), Ordering::Less);
        let c = Bson::Document(doc! {"a": 1});
        assert_eq!(cmp_bson(&c, &a), Ordering::Less);
        assert_eq!(
            cmp_bson(&Bson::Int32(1), &Bson::Double(1.0)),
            Ordering::Equal
        );
    }

    #[test]
    fn comparable_spec_ignores_uuid() {
        let a = doc! {"name": "c", "type": "collection", "options": {"capped": true}, "info": {"uuid": 1}};
        let b = doc! {"name": "c", "type": "collection", "options": {"capped": true}, "info": {"uuid": 2}};
        assert_eq!(comparable_spec(&a), comparable_spec(&b));
    }

    #[test]
    fn tally_caps_the_list() {
        let mut t = Tally::default();
        for i in 0..(MAX_LISTED + 5) {
            t.mismatch("d.c", i.to_string(), MismatchKind::Missing);
        }
        assert_eq!(t.report.mismatches.len(), MAX_LISTED);
        assert_eq!(t.report.mismatch_count as usize, MAX_LISTED + 5);
        assert!(t.report.truncated);
    }
}
