//! Writing a buffer of operations to the target, as one fenced batch.
//!
//! The buffer is split into rounds in which every document appears at most once (keeping each
//! document's order), and each round into one `update` command per namespace (replaces and
//! single-step updates), one `delete` command, and the few operations written alone. The plan is
//! built once and can run again: inside a transaction a refused statement aborts the whole
//! batch, so the plan turns that statement into a re-read of the source's document and the batch
//! runs again (every statement is idempotent).

use std::collections::HashMap;

use mongodb::bson::{doc, rawdoc, Bson, Document, RawArrayBuf, RawDocumentBuf};
use mongodb::ClientSession;
use tracing::debug;

use super::super::ctx::Ctx;
use super::super::error::{EngineError, MongoContext, Result, Side};
use super::super::filter::META_DB;
use super::super::reply;
use super::super::store::TXN_MARKERS;
use super::translate::{self, WriteOp};

/// A statement larger than this is written on its own with the driver's helpers.
const BIG_STATEMENT: usize = 4 * 1024 * 1024;
const COMMAND_BYTES: usize = 8 * 1024 * 1024;
/// Refusals in one batch after which every plain update of the batch is re-read instead.
const MAX_REFUSALS: usize = 8;

/// One operation for a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub db: String,
    pub coll: String,
    pub op: WriteOp,
}

/// One namespace's share of a round.
#[derive(Debug, Default)]
struct NsWrites {
    db: String,
    coll: String,
    /// Serialized `update` statements, each with its filter (to re-read the document if the
    /// target refuses the statement).
    updates: Vec<(RawDocumentBuf, Document)>,
    /// Serialized documents of insert events, with their filters (written with one `insert`
    /// command; turned into replacements if the target already holds one of them).
    inserts: Vec<(RawDocumentBuf, Document)>,
    deletes: Vec<Document>,
    /// Written one at a time with the driver's helpers: multi-step updates, replacements with
    /// `$`-prefixed field names, statements too large to share a command.
    alone: Vec<WriteOp>,
    refetch: Vec<Document>,
}

/// A statement the target refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// An insert the target refused (it holds the document already: an event replayed).
    Insert {
        round: usize,
        ns: usize,
    },
    Update {
        round: usize,
        ns: usize,
        stmt: usize,
    },
    Alone {
        round: usize,
        ns: usize,
        idx: usize,
    },
}

/// A buffer of operations, planned.
#[derive(Debug, Default)]
pub struct Plan {
    rounds: Vec<Vec<NsWrites>>,
    refusals: usize,
    pub ops: u64,
    /// Records of the source transactions in the plan (`store::TxnMarker`), written in the
    /// same target transaction as one `store::TxnBatch`.
    pub markers: Vec<RawDocumentBuf>,
}

/// Split operations into rounds in which every document appears at most once, keeping each
/// document's order. Pure.
pub fn rounds(ops: Vec<Op>) -> Vec<Vec<Op>> {
    let mut seen: HashMap<(String, String, Vec<u8>), usize> = HashMap::new();
    let mut out: Vec<Vec<Op>> = Vec::new();
    for o in ops {
        let key = mongodb::bson::to_vec(o.op.filter()).unwrap_or_default();
        let r = seen.entry((o.db.clone(), o.coll.clone(), key)).or_insert(0);
        if out.len() <= *r {
            out.push(Vec::new());
        }
        out[*r].push(o);
        *r += 1;
    }
    out
}

/// Whether a document holds a `$`-prefixed field name at any depth (walked in place).
fn has_dollar_fields(d: &Document) -> bool {
    d.iter()
        .any(|(k, v)| k.starts_with('$') || translate::has_dollar_keys(v))
}

impl NsWrites {
    fn add(&mut self, op: WriteOp, inserts: bool) {
        let op = match op {
            WriteOp::Insert { filter, doc } if inserts => {
                match RawDocumentBuf::from_document(&doc)
                    .ok()
                    .filter(|r| r.as_bytes().len() < BIG_STATEMENT)
                {
                    Some(raw) => {
                        self.inserts.push((raw, filter));
                        return;
                    }
                    None => WriteOp::Upsert { filter, doc },
                }
            }
            WriteOp::Insert { filter, doc } => WriteOp::Upsert { filter, doc },
            other => other,
        };
        let (filter, stmt) = match op {
            WriteOp::Upsert { ref doc, .. } if has_dollar_fields(doc) => {
                // A replacement may not hold `$`-prefixed field names: written alone.
                self.alone.push(op);
                return;
            }
            WriteOp::Upsert { filter, doc } => {
                let stmt = doc! {"q": filter.clone(), "u": doc, "upsert": true};
                (filter, stmt)
            }
            WriteOp::Update {
                filter,
                mut updates,
            } if updates.len() == 1 => {
                let u = updates.pop().unwrap_or_default();
                (filter.clone(), doc! {"q": filter, "u": u})
            }
            op @ WriteOp::Update { .. } => {
                // Several steps (truncation, then sets): applied in order, alone.
                self.alone.push(op);
                return;
            }
            WriteOp::Delete { filter } => {
                self.deletes.push(doc! {"q": filter, "limit": 1});
                return;
            }
            WriteOp::Refetch { filter } => {
                self.refetch.push(filter);
                return;
            }
            WriteOp::Insert { .. } => return, // turned into an upsert above
        };
        match RawDocumentBuf::from_document(&stmt)
            .ok()
            .filter(|r| r.as_bytes().len() < BIG_STATEMENT)
        {
            Some(raw) => self.updates.push((raw, filter)),
            None => self.alone.push(statement_op(filter, stmt)),
        }
    }
}

/// The operation a serialized statement stands for (to write it alone).
fn statement_op(filter: Document, mut stmt: Document) -> WriteOp {
    let upsert = stmt.get_bool("upsert").unwrap_or(false);
    let u = match stmt.remove("u") {
        Some(Bson::Document(d)) => d,
        _ => Document::new(),
    };
    if upsert {
        WriteOp::Upsert { filter, doc: u }
    } else {
        WriteOp::Update {
            filter,
            updates: vec![u],
        }
    }
}

/// The `update` command for serialized statements.
pub fn update_command(coll: &str, stmts: &[(RawDocumentBuf, Document)]) -> RawDocumentBuf {
    let mut updates = RawArrayBuf::new();
    for (s, _) in stmts {
        updates.push(s.clone());
    }
    rawdoc! {"update": coll, "updates": updates, "ordered": false, "bypassDocumentValidation": true}
}

impl Plan {
    /// Plan `ops`; with `inserts`, insert events are written as inserts (else as
    /// replacements, as when the target may already hold their documents).
    pub fn new(ops: Vec<Op>, inserts: bool) -> Plan {
        let n = ops.len() as u64;
        let rounds = rounds(ops)
            .into_iter()
            .map(|round| {
                let mut by_ns: Vec<NsWrites> = Vec::new();
                let mut index: HashMap<(String, String), usize> = HashMap::new();
                for o in round {
                    let i = *index
                        .entry((o.db.clone(), o.coll.clone()))
                        .or_insert_with(|| {
                            by_ns.push(NsWrites {
                                db: o.db.clone(),
                                coll: o.coll.clone(),
                                ..Default::default()
                            });
                            by_ns.len() - 1
                        });
                    by_ns[i].add(o.op, inserts);
                }
                by_ns
            })
            .collect();
        Plan {
            rounds,
            refusals: 0,
            ops: n,
            markers: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Re-read the refused statement's document from the source instead of writing it; a
    /// refused insert turns every insert of the plan into a replacement.
    pub fn refetch(&mut self, r: Refused) {
        self.refusals += 1;
        match r {
            Refused::Insert { .. } => {
                for w in self.rounds.iter_mut().flatten() {
                    for (doc, filter) in std::mem::take(&mut w.inserts) {
                        let stmt = rawdoc! {"q": raw_filter(&filter), "u": doc, "upsert": true};
                        w.updates.push((stmt, filter));
                    }
                }
            }
            Refused::Update { round, ns, stmt } => {
                if let Some(w) = self.rounds.get_mut(round).and_then(|r| r.get_mut(ns)) {
                    if stmt < w.updates.len() {
                        let (_, filter) = w.updates.remove(stmt);
                        w.refetch.push(filter);
                    }
                }
            }
            Refused::Alone { round, ns, idx } => {
                if let Some(w) = self.rounds.get_mut(round).and_then(|r| r.get_mut(ns)) {
                    if idx < w.alone.len() {
                        let op = w.alone.remove(idx);
                        w.refetch.push(op.filter().clone());
                    }
                }
            }
        }
        if self.refusals >= MAX_REFUSALS {
            // The target's documents differ in shape from the events (a catch-up after the
            // copy): re-read every plain update of the batch rather than run it once per
            // refusal.
            for w in self.rounds.iter_mut().flatten() {
                let updates = std::mem::take(&mut w.updates);
                for (stmt, filter) in updates {
                    if is_upsert(&stmt) {
                        w.updates.push((stmt, filter));
                    } else {
                        w.refetch.push(filter);
                    }
                }
            }
        }
    }

    /// Write the plan with session `s` (in a transaction or not). `Ok(Err(r))`: the target
    /// refused a statement; in a transaction nothing of the plan was written.
    pub async fn run(
        &self,
        ctx: &Ctx,
        s: &mut ClientSession,
    ) -> Result<std::result::Result<(), Refused>> {
        for (ri, round) in self.rounds.iter().enumerate() {
            for (ni, w) in round.iter().enumerate() {
                if let Err(r) = w.run(ctx, s, ri, ni).await? {
                    return Ok(Err(r));
                }
            }
        }
        if !self.markers.is_empty() {
            // One record for the batch, holding each transaction's (see `store::TxnBatch`).
            let what = "recording applied transactions";
            let mut txns = RawArrayBuf::new();
            let mut ts: Option<mongodb::bson::Timestamp> = None;
            for m in &self.markers {
                if let Ok(t) = m.get_timestamp("ts") {
                    ts = Some(ts.map_or(t, |u| u.max(t)));
                }
                txns.push(m.clone());
            }
            let mut rec = rawdoc! {"_id": mongodb::bson::oid::ObjectId::new(), "txns": txns};
            if let Some(t) = ts {
                rec.append("ts", t);
            }
            let mut docs = RawArrayBuf::new();
            docs.push(rec);
            let cmd = rawdoc! {"insert": TXN_MARKERS, "documents": docs, "ordered": true};
            let reply = ctx
                .target
                .database(META_DB)
                .run_raw_command(cmd)
                .session(&mut *s)
                .await
                .map_err(|e| EngineError::mongo(Side::Target, what, e))?;
            reply::require_all(&reply, what)?;
        }
        Ok(Ok(()))
    }
}

/// Whether the plan holds inserts (a refusal of one turns them all into replacements).
impl Plan {
    pub fn has_inserts(&self) -> bool {
        self.rounds.iter().flatten().any(|w| !w.inserts.is_empty())
    }
}

fn raw_filter(filter: &Document) -> RawDocumentBuf {
    RawDocumentBuf::from_document(filter).unwrap_or_default()
}

fn is_upsert(stmt: &RawDocumentBuf) -> bool {
    stmt.get_bool("upsert").unwrap_or(false)
}

impl NsWrites {
    async fn run(
        &self,
        ctx: &Ctx,
        s: &mut ClientSession,
        round: usize,
        ns: usize,
    ) -> Result<std::result::Result<(), Refused>> {
        let name = format!("{}.{}", self.db, self.coll);
        let db = ctx.target.database(&self.db);
        let mut start = 0usize;
        while start < self.inserts.len() {
            let (mut end, mut bytes) = (start, 0usize);
            let mut docs = RawArrayBuf::new();
            while end < self.inserts.len()
                && (end == start || bytes + self.inserts[end].0.as_bytes().len() <= COMMAND_BYTES)
            {
                bytes += self.inserts[end].0.as_bytes().len();
                docs.push(self.inserts[end].0.clone());
                end += 1;
            }
            let cmd = rawdoc! {"insert": self.coll.as_str(), "documents": docs, "ordered": false,
            "bypassDocumentValidation": true};
            let reply =
                db.run_raw_command(cmd).session(&mut *s).await.map_err(|e| {
                    EngineError::mongo(Side::Target, format!("inserting into {name}"), e)
                });
            let reply = match reply {
                Ok(r) => r,
                // Some servers answer a duplicate key in a transaction with an error of the
                // command rather than a write error.
                Err(EngineError::Mongo { source, .. })
                    if super::super::error::mongo_code(&source) == Some(11000) =>
                {
                    return Ok(Err(Refused::Insert { round, ns }));
                }
                Err(e) => return Err(e),
            };
            if !reply::write_errors(&reply).is_empty() {
                debug!(ns = %name, "insert refused (a replayed event); writing replacements");
                return Ok(Err(Refused::Insert { round, ns }));
            }
            if let Some(e) = reply::write_concern_error(&reply, &format!("inserting into {name}")) {
                return Err(e);
            }
            start = end;
        }
        start = 0;
        while start < self.updates.len() {
            let (mut end, mut bytes) = (start, 0usize);
            while end < self.updates.len()
                && (end == start || bytes + self.updates[end].0.as_bytes().len() <= COMMAND_BYTES)
            {
                bytes += self.updates[end].0.as_bytes().len();
                end += 1;
            }
            let cmd = update_command(&self.coll, &self.updates[start..end]);
            let reply = db
                .run_raw_command(cmd)
                .session(&mut *s)
                .await
                .map_err(|e| EngineError::mongo(Side::Target, format!("updating {name}"), e))?;
            if let Some(e) = reply::write_errors(&reply).first() {
                // The target's document cannot take this update (its shape differs from the
                // source's at the time of the event): take the source's current document.
                debug!(ns = %name, code = e.code, "update refused; re-reading the document");
                return Ok(Err(Refused::Update {
                    round,
                    ns,
                    stmt: start + e.index,
                }));
            }
            if let Some(e) = reply::write_concern_error(&reply, &format!("updating {name}")) {
                return Err(e);
            }
            start = end;
        }
        for chunk in self.deletes.chunks(10_000) {
            let cmd = doc! {"delete": &self.coll, "deletes": chunk.to_vec(), "ordered": false};
            let reply =
                db.run_command(cmd).session(&mut *s).await.map_err(|e| {
                    EngineError::mongo(Side::Target, format!("deleting in {name}"), e)
                })?;
            reply::require_all(&reply, &format!("deleting in {name}"))?;
        }
        for (idx, op) in self.alone.iter().enumerate() {
            if let Err(e) = write_alone(ctx, s, &self.db, &self.coll, op).await {
                let refusable = matches!(op, WriteOp::Update { .. })
                    && matches!(&e, EngineError::Mongo { source, .. }
                        if super::super::error::classify_mongo(source)
                            == super::super::error::ErrorClass::Fatal
                            && !source.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR));
                if refusable {
                    return Ok(Err(Refused::Alone { round, ns, idx }));
                }
                return Err(e);
            }
        }
        for filter in &self.refetch {
            refetch_one(ctx, s, &self.db, &self.coll, filter.clone()).await?;
        }
        Ok(Ok(()))
    }
}

async fn write_alone(
    ctx: &Ctx,
    s: &mut ClientSession,
    db: &str,
    coll: &str,
    op: &WriteOp,
) -> Result<()> {
    let c = ctx.target.database(db).collection::<Document>(coll);
    let ns = format!("{db}.{coll}");
    match op {
        WriteOp::Insert { filter, doc } | WriteOp::Upsert { filter, doc } => {
            put_document(ctx, s, db, coll, filter.clone(), doc.clone()).await?
        }
        WriteOp::Update { filter, updates } => {
            for u in updates {
                c.update_one(filter.clone(), u.clone())
                    .bypass_document_validation(true)
                    .session(&mut *s)
                    .await
                    .on(Side::Target, &format!("writing to {ns}"))?;
            }
        }
        WriteOp::Delete { filter } => {
            c.delete_one(filter.clone())
                .session(&mut *s)
                .await
                .on(Side::Target, &format!("deleting in {ns}"))?;
        }
        WriteOp::Refetch { filter } => {
            return refetch_one(ctx, s, db, coll, filter.clone()).await;
        }
    }
    Ok(())
}

/// Make the target's document equal `doc`: a replace with upsert, or — for documents with
/// `$`-prefixed field names, which no replacement may carry — a delete then an insert (both in
/// this batch, so the document's order of events is kept).
async fn put_document(
    ctx: &Ctx,
    s: &mut ClientSession,
    db: &str,
    coll: &str,
    filter: Document,
    doc: Document,
) -> Result<()> {
    let ns = format!("{db}.{coll}");
    let c = ctx.target.database(db).collection::<Document>(coll);
    if has_dollar_fields(&doc) {
        c.delete_one(filter)
            .session(&mut *s)
            .await
            .on(Side::Target, &format!("writing to {ns}"))?;
        c.insert_one(doc)
            .bypass_document_validation(true)
            .session(&mut *s)
            .await
            .on(Side::Target, &format!("writing to {ns}"))?;
    } else {
        c.replace_one(filter, doc)
            .upsert(true)
            .bypass_document_validation(true)
            .session(&mut *s)
            .await
            .on(Side::Target, &format!("writing to {ns}"))?;
    }
    Ok(())
}

/// Replace the target's document by the source's current one, or delete it if it is gone.
async fn refetch_one(
    ctx: &Ctx,
    s: &mut ClientSession,
    db: &str,
    coll: &str,
    filter: Document,
) -> Result<()> {
    ctx.metrics.refetches.inc();
    let ns = format!("{db}.{coll}");
    let cur = ctx
        .source
        .database(db)
        .collection::<Document>(coll)
        .find_one(filter.clone())
        .await
        .on(Side::Source, &format!("re-reading a document of {ns}"))?;
    match cur {
        Some(d) => put_document(ctx, s, db, coll, filter, d).await?,
        None => {
            ctx.target
                .database(db)
                .collection::<Document>(coll)
                .delete_one(filter)
                .session(&mut *s)
                .await
                .on(Side::Target, &format!("deleting in {ns}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: i32) -> Op {
        Op {
            db: "d".into(),
            coll: "c".into(),
            op: WriteOp::Upsert {
                filter: doc! {"_id": id},
                doc: doc! {"_id": id},
            },
        }
    }

    fn set(id: i32) -> Op {
        Op {
            db: "d".into(),
            coll: "c".into(),
            op: WriteOp::Update {
                filter: doc! {"_id": id},
                updates: vec![doc! {"$set": {"a": 1}}],
            },
        }
    }

    #[test]
    fn update_command_carries_the_statements_as_given() {
        let stmts = vec![
            (
                RawDocumentBuf::from_document(
                    &doc! {"q": {"_id": 1}, "u": {"_id": 1, "a": 1}, "upsert": true},
                )
                .expect("encode"),
                doc! {"_id": 1},
            ),
            (
                RawDocumentBuf::from_document(&doc! {"q": {"_id": 2}, "u": {"$set": {"b.c": 2}}})
                    .expect("encode"),
                doc! {"_id": 2},
            ),
        ];
        let cmd = update_command("c", &stmts).to_document().expect("decode");
        assert_eq!(
            cmd,
            doc! {"update": "c", "updates": [
                {"q": {"_id": 1}, "u": {"_id": 1, "a": 1}, "upsert": true},
                {"q": {"_id": 2}, "u": {"$set": {"b.c": 2}}},
            ], "ordered": false, "bypassDocumentValidation": true}
        );
        // The command name comes first, as servers require.
        assert_eq!(cmd.keys().next().map(String::as_str), Some("update"));
    }

    #[test]
    fn rounds_keep_document_order() {
        let ops = vec![up(1), up(2), up(1), up(3), up(1)];
        let r = rounds(ops);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].len(), 3);
        assert_eq!(r[1].len(), 1);
        assert_eq!(r[2].len(), 1);
        // Same _id in another collection is another document.
        let mut other = up(1);
        other.coll = "x".into();
        assert_eq!(rounds(vec![up(1), other]).len(), 1);
    }

    #[test]
    fn a_refused_statement_becomes_a_re_read_and_the_rest_stays() {
        let mut p = Plan::new(vec![up(1), set(2), set(3)], true);
        assert_eq!(p.rounds[0][0].updates.len(), 3);
        p.refetch(Refused::Update {
            round: 0,
            ns: 0,
            stmt: 1,
        });
        let w = &p.rounds[0][0];
        assert_eq!(w.updates.len(), 2);
        assert_eq!(w.refetch, vec![doc! {"_id": 2}]);
        // Out-of-range refusals change nothing.
        p.refetch(Refused::Alone {
            round: 3,
            ns: 0,
            idx: 0,
        });
        assert_eq!(p.rounds[0][0].updates.len(), 2);
    }

    #[test]
    fn many_refusals_re_read_every_plain_update() {
        let mut ops = vec![up(100)];
        ops.extend((0..20).map(set));
        let mut p = Plan::new(ops, true);
        for _ in 0..MAX_REFUSALS {
            p.refetch(Refused::Update {
                round: 0,
                ns: 0,
                stmt: 1,
            });
        }
        let w = &p.rounds[0][0];
        // The upsert stays a statement; every update is re-read.
        assert_eq!(w.updates.len(), 1);
        assert_eq!(w.refetch.len(), 20);
    }

    #[test]
    fn operations_are_sorted_into_their_kinds() {
        let ops = vec![
            Op {
                db: "d".into(),
                coll: "c".into(),
                op: WriteOp::Delete {
                    filter: doc! {"_id": 1},
                },
            },
            Op {
                db: "d".into(),
                coll: "c".into(),
                op: WriteOp::Upsert {
                    filter: doc! {"_id": 2},
                    doc: doc! {"_id": 2, "$x": 1},
                },
            },
            Op {
                db: "d".into(),
                coll: "c".into(),
                op: WriteOp::Update {
                    filter: doc! {"_id": 3},
                    updates: vec![doc! {"$set": {"a": 1}}, doc! {"$unset": {"b": 1}}],
                },
            },
            Op {
                db: "d".into(),
                coll: "c".into(),
                op: WriteOp::Refetch {
                    filter: doc! {"_id": 4},
                },
            },
        ];
        let p = Plan::new(ops, true);
        let w = &p.rounds[0][0];
        assert_eq!(w.deletes.len(), 1);
        assert_eq!(w.alone.len(), 2);
        assert_eq!(w.refetch.len(), 1);
        assert!(w.updates.is_empty());
        assert_eq!(p.ops, 4);
    }
}
