//! Source transactions in the change stream: which events belong together, and when a group
//! is complete. Pure.
//!
//! The events of one transaction carry the same `lsid` and `txnNumber`. On mongod and
//! SecantusDB's Python server they come one after the other (one cluster time); SecantusDB's
//! Rust server gives each operation its own cluster time when it runs, so the events of
//! concurrent transactions come **interleaved**, and a transaction's events are only known to
//! be complete when the stream shows one of these (see [`Open::completed_by`]):
//!
//! - a later event on one of its documents (that write waited for the transaction's commit, so
//!   it comes after every event of the transaction);
//! - a later transaction of the same session (a session runs one transaction at a time);
//! - a DDL event outside transactions (the engine's barrier);
//! - the stream has nothing more to return (a transaction is committed, and so visible, whole).
//!
//! Several transactions may be open at once; those never share a document (a document
//! written in a transaction is locked until it commits), so dispatching them in the order they
//! complete keeps every document's history in order.

use std::collections::{HashMap, HashSet};

use mongodb::bson::{doc, Bson, Document, Timestamp};

use super::super::store::TxnMarker;
use super::ddl::Wiped;

/// At most this many operations, and bytes of events, are applied as one target transaction;
/// a larger source transaction is applied operation by operation (counted and reported).
pub const MAX_TXN_OPS: usize = 10_000;
pub const MAX_TXN_BYTES: usize = 16 * 1024 * 1024;

/// Which transaction an event belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnId {
    pub lsid: Bson,
    pub txn_number: i64,
}

/// The transaction of an event, if it was written in one.
pub fn txn_id(ev: &Document) -> Option<TxnId> {
    let lsid = ev.get("lsid")?.clone();
    let txn_number = match ev.get("txnNumber")? {
        Bson::Int64(n) => *n,
        Bson::Int32(n) => i64::from(*n),
        _ => return None,
    };
    Some(TxnId { lsid, txn_number })
}

/// The events of one source transaction, gathered until it is complete.
#[derive(Debug)]
pub struct Group {
    pub id: TxnId,
    pub events: Vec<(Document, usize)>,
    pub bytes: usize,
    /// The op time and resume token of its last event.
    pub ts: Timestamp,
    pub token: Option<Document>,
    /// Too large: its events are applied one by one as they come.
    pub split: bool,
    /// Routing keys of its documents (`translate::key_hash`).
    pub keys: HashSet<u64>,
    /// The stream position before its first event: a resume point is never past it while
    /// the transaction is open.
    pub before: Position,
}

/// A stream position: an op time and the resume token there, where known.
pub type Position = (Timestamp, Option<Document>);

impl Group {
    pub fn new(id: TxnId, before: Position) -> Group {
        Group {
            keys: HashSet::new(),
            before,
            id,
            events: Vec::new(),
            bytes: 0,
            ts: Timestamp {
                time: 0,
                increment: 0,
            },
            token: None,
            split: false,
        }
    }

    /// Add an event; `true` when the group just outgrew one target transaction.
    pub fn push(&mut self, ev: Document, size: usize, ts: Timestamp) -> bool {
        if let Some(k) = super::translate::event_key(&ev) {
            self.keys.insert(k);
        }
        self.token = ev.get_document("_id").ok().cloned();
        self.ts = self.ts.max(ts);
        self.bytes += size;
        self.events.push((ev, size));
        too_large(self.events.len(), self.bytes)
    }
}

impl TxnId {
    /// The `_id` of its record (`store::TxnMarker`).
    pub fn marker_id(&self) -> Document {
        doc! {"lsid": self.lsid.clone(), "n": self.txn_number}
    }
}

/// What an earlier run applied past the checkpoint this run replays from: the transactions
/// it recorded (`store::TxnMarker`). Replaying them again, or an older event of one of their
/// documents, would show a reader a document from before a transaction whose other documents
/// it already shows.
#[derive(Debug, Default)]
pub struct Replayed {
    txns: HashSet<Vec<u8>>,
    /// Per document (routing key), the op time of the latest transaction applied to it.
    keys: HashMap<u64, Timestamp>,
    /// The op time of the latest: past it, nothing was applied.
    until: Option<Timestamp>,
    /// Collections (`db.coll`) and databases a DDL of this run dropped or replaced on the
    /// target (`ddl::wipes`): what the earlier run applied there is gone, so their events are
    /// applied again whatever the records say.
    wiped: HashSet<String>,
    wiped_dbs: HashSet<String>,
}

impl Replayed {
    pub fn new(markers: &[TxnMarker]) -> Replayed {
        let mut r = Replayed::default();
        for m in markers {
            let Some(ts) = m.ts else { continue };
            r.txns.insert(id_bytes(&m.id));
            for k in &m.keys {
                let e = r.keys.entry(*k as u64).or_insert(ts);
                *e = (*e).max(ts);
            }
            r.until = Some(r.until.map_or(ts, |u| u.max(ts)));
        }
        r
    }

    /// A DDL of this run dropped or replaced `w` on the target (only matters while an
    /// earlier run's records are being replayed).
    pub fn wipe(&mut self, w: &Wiped) {
        if self.until.is_none() {
            return;
        }
        match w {
            Wiped::Collection { db, coll } => self.wiped.insert(format!("{db}.{coll}")),
            Wiped::Database { db } => self.wiped_dbs.insert(db.clone()),
        };
    }

    /// Whether a DDL of this run dropped or replaced `db.coll` (what the earlier run applied
    /// there is gone).
    pub fn wiped(&self, db: &str, coll: &str) -> bool {
        self.wiped_dbs.contains(db) || self.wiped.contains(&format!("{db}.{coll}"))
    }

    /// Whether anything was wiped.
    pub fn any_wiped(&self) -> bool {
        !self.wiped.is_empty() || !self.wiped_dbs.is_empty()
    }

    /// Whether events at `ts` may have been applied already.
    pub fn covers(&self, ts: Timestamp) -> bool {
        self.until.is_some_and(|u| ts <= u)
    }

    /// Whether the transaction `id` (its events up to `ts`) was applied already.
    pub fn txn_applied(&self, id: &TxnId, ts: Timestamp) -> bool {
        self.covers(ts) && self.txns.contains(&id_bytes(&id.marker_id()))
    }

    /// Whether an event at `ts` of the document `key` is older than a transaction already
    /// applied to it (so the document must not go back to it).
    pub fn behind(&self, key: u64, ts: Timestamp) -> bool {
        self.covers(ts) && self.keys.get(&key).is_some_and(|t| *t > ts)
    }

    /// Whether to skip an event at `ts` of the document `key` in `db.coll`: it is older than a
    /// transaction applied to that document, and no DDL of this run wiped the collection
    /// since (a wiped collection holds only what this run applied: all its events are
    /// needed).
    pub fn skips(&self, db: &str, coll: &str, key: u64, ts: Timestamp) -> bool {
        self.behind(key, ts) && !self.wiped(db, coll)
    }
}

fn id_bytes(d: &Document) -> Vec<u8> {
    mongodb::bson::to_vec(d).unwrap_or_default()
}

/// The transactions being gathered, oldest first.
#[derive(Debug, Default)]
pub struct Open {
    groups: Vec<Group>,
    /// Whether the events of a transaction share one cluster time (mongod, SecantusDB's
    /// Python server), learnt from the first transaction of several events: then an event at
    /// another cluster time proves a transaction complete.
    shared_time: Option<bool>,
}

impl Open {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether the server was seen giving a transaction's events one cluster time.
    pub fn shared_time(&self) -> bool {
        self.shared_time == Some(true)
    }

    pub fn contains(&self, id: &TxnId) -> bool {
        self.groups.iter().any(|g| &g.id == id)
    }

    /// The group of `id`, opened at `before` if new.
    pub fn get_or_open(&mut self, id: TxnId, before: Position) -> &mut Group {
        let i = match self.groups.iter().position(|g| g.id == id) {
            Some(i) => i,
            None => {
                self.groups.push(Group::new(id, before));
                self.groups.len() - 1
            }
        };
        &mut self.groups[i]
    }

    /// Learn from an event of `id` at `ts` whether the server gives a transaction's events
    /// one cluster time.
    pub fn observe(&mut self, id: &TxnId, ts: Timestamp) {
        if self.shared_time.is_some() {
            return;
        }
        if let Some(g) = self
            .groups
            .iter()
            .find(|g| &g.id == id && !g.events.is_empty())
        {
            self.shared_time = Some(g.ts == ts);
        }
    }

    /// Take the groups an event at `ts` proves complete, oldest first: those holding its
    /// document (`key`), an earlier transaction of its session (`id`), all for a DDL event
    /// outside transactions (`barrier`), and where a transaction's events share one cluster
    /// time, those of another time.
    pub fn completed_by(
        &mut self,
        id: Option<&TxnId>,
        key: Option<u64>,
        ts: Timestamp,
        barrier: bool,
    ) -> Vec<Group> {
        let shared = self.shared_time == Some(true);
        let done = |g: &Group| {
            if id == Some(&g.id) {
                return false;
            }
            barrier
                || (shared && g.ts != ts)
                || key.is_some_and(|k| g.keys.contains(&k))
                || id.is_some_and(|i| i.lsid == g.id.lsid)
        };
        let (out, keep): (Vec<Group>, Vec<Group>) = std::mem::take(&mut self.groups)
            .into_iter()
            .partition(|g| done(g));
        self.groups = keep;
        out
    }

    /// Take every group (the stream has nothing more to return: all are complete).
    pub fn take_all(&mut self) -> Vec<Group> {
        std::mem::take(&mut self.groups)
    }

    /// Where a resume point may be: before the oldest group gathered whole, else `now`.
    pub fn resume_point(&self, now: &Position) -> Position {
        self.groups
            .iter()
            .find(|g| !g.split)
            .map_or_else(|| now.clone(), |g| g.before.clone())
    }
}

/// Whether a transaction of `ops` operations and `bytes` of events is too large for one
/// target transaction.
pub fn too_large(ops: usize, bytes: usize) -> bool {
    ops > MAX_TXN_OPS || bytes > MAX_TXN_BYTES
}

#[cfg(test)]
mod tests {
    use super::super::translate;
    use super::*;
    use mongodb::bson::{doc, Binary};

    fn ev(n: Option<i64>) -> Document {
        let mut d = doc! {"_id": {"_data": "00"}, "operationType": "update"};
        if let Some(n) = n {
            let id = Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Uuid,
                bytes: vec![7; 16],
            };
            d.insert("lsid", doc! {"id": id, "uid": Binary {subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![1; 32]}});
            d.insert("txnNumber", n);
        }
        d
    }

    #[test]
    fn events_of_one_transaction_share_an_id() {
        assert_eq!(txn_id(&ev(None)), None);
        let a = txn_id(&ev(Some(3))).expect("in a transaction");
        assert_eq!(Some(a.clone()), txn_id(&ev(Some(3))));
        assert_ne!(Some(a), txn_id(&ev(Some(4))));
        // A retryable write carries a txnNumber but is no transaction only with neither field.
        let mut lone = ev(None);
        lone.insert("txnNumber", 5_i64);
        assert_eq!(txn_id(&lone), None);
    }

    #[test]
    fn a_replay_skips_what_was_applied_and_never_goes_back() {
        let t = |i| Timestamp {
            time: 10,
            increment: i,
        };
        let a = txn_id(&ev(Some(1))).expect("id");
        let b = txn_id(&ev(Some(2))).expect("id");
        let r = Replayed::new(&[TxnMarker {
            id: a.marker_id(),
            ts: Some(t(5)),
            keys: vec![7, 8],
        }]);
        assert!(r.txn_applied(&a, t(5)));
        assert!(!r.txn_applied(&b, t(5)));
        // Document 7 was written at 5: an older event of it is skipped, a newer one not.
        assert!(r.behind(7, t(4)));
        assert!(!r.behind(7, t(6)));
        assert!(!r.behind(9, t(1)));
        // Past the last applied transaction, nothing was applied.
        assert!(!r.covers(t(6)));
        assert!(!Replayed::default().covers(t(0)));
    }

    #[test]
    fn a_replay_applies_again_what_a_replayed_ddl_wiped() {
        let t = |i| Timestamp {
            time: 10,
            increment: i,
        };
        let a = txn_id(&ev(Some(1))).expect("id");
        let mut r = Replayed::new(&[TxnMarker {
            id: a.marker_id(),
            ts: Some(t(5)),
            keys: vec![7],
        }]);
        // Before any DDL: an older event of document 7 is skipped wherever it is.
        assert!(r.skips("app", "c", 7, t(4)));
        assert!(!r.any_wiped());
        // A create of app.c replayed (a drop and a create on the target): the transaction's
        // writes there are gone, so older events of its documents there are needed again.
        r.wipe(&Wiped::Collection {
            db: "app".into(),
            coll: "c".into(),
        });
        assert!(r.any_wiped());
        assert!(r.wiped("app", "c"));
        assert!(!r.skips("app", "c", 7, t(4)));
        // Elsewhere the records still hold.
        assert!(!r.wiped("app", "d"));
        assert!(r.skips("app", "d", 7, t(4)));
        assert!(r.txn_applied(&a, t(5)));
        // A database dropped: all its collections.
        r.wipe(&Wiped::Database { db: "logs".into() });
        assert!(r.wiped("logs", "any"));
        assert!(!r.skips("logs", "any", 7, t(4)));
        // Without records of an earlier run there is nothing to forget.
        let mut none = Replayed::default();
        none.wipe(&Wiped::Database { db: "logs".into() });
        assert!(!none.any_wiped());
    }

    #[test]
    fn a_group_keeps_its_last_position_and_knows_its_limits() {
        let id = txn_id(&ev(Some(1))).expect("id");
        let t = |i| Timestamp {
            time: 10,
            increment: i,
        };
        let mut g = Group::new(id, (t(0), None));
        assert!(!g.push(ev(Some(1)), 100, t(2)));
        assert!(!g.push(ev(Some(1)), 100, t(1)));
        assert_eq!(g.ts, t(2));
        assert_eq!(g.bytes, 200);
        assert_eq!(g.token, Some(doc! {"_data": "00"}));
        assert!(too_large(MAX_TXN_OPS + 1, 0));
        assert!(too_large(1, MAX_TXN_BYTES + 1));
        assert!(!too_large(MAX_TXN_OPS, MAX_TXN_BYTES));
    }

    fn op(n: i64, lsid: u8, id: i32) -> Document {
        let mut d = ev(Some(n));
        d.insert(
            "lsid",
            doc! {"id": Binary {subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![lsid; 16]}},
        );
        d.insert("ns", doc! {"db": "d", "coll": "c"});
        d.insert("documentKey", doc! {"_id": id});
        d
    }

    #[test]
    fn interleaved_transactions_complete_when_the_stream_proves_it() {
        let t = |i| Timestamp {
            time: 10,
            increment: i,
        };
        let pos = |i| (t(i), None);
        let mut open = Open::default();
        // Transactions A (session 1) and B (session 2) interleaved.
        let (a1, b1, a2) = (op(1, 1, 10), op(1, 2, 20), op(1, 1, 11));
        let a = txn_id(&a1).expect("a");
        let b = txn_id(&b1).expect("b");
        open.get_or_open(a.clone(), pos(0)).push(a1, 1, t(1));
        assert!(open
            .completed_by(Some(&b), translate::event_key(&b1), t(2), false)
            .is_empty());
        open.get_or_open(b.clone(), pos(1)).push(b1, 1, t(2));
        assert!(open
            .completed_by(Some(&a), translate::event_key(&a2), t(3), false)
            .is_empty());
        open.observe(&a, t(3));
        open.get_or_open(a.clone(), pos(0)).push(a2, 1, t(3));
        assert_eq!(open.resume_point(&pos(3)), pos(0));
        // A write outside transactions to B's document: B is complete, A not.
        let w = op(0, 9, 20);
        let done = open.completed_by(None, translate::event_key(&w), t(4), false);
        assert_eq!(
            done.iter().map(|g| g.id.clone()).collect::<Vec<_>>(),
            vec![b]
        );
        assert_eq!(done[0].events.len(), 1);
        // Session 1's next transaction: A is complete.
        let a_next = txn_id(&op(2, 1, 30)).expect("a next");
        let done = open.completed_by(Some(&a_next), Some(0), t(5), false);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].events.len(), 2);
        assert!(open.is_empty());
        assert_eq!(open.resume_point(&pos(7)), pos(7));
        // A DDL barrier completes every group.
        open.get_or_open(a_next, pos(8));
        assert_eq!(open.completed_by(None, None, t(9), true).len(), 1);
    }

    #[test]
    fn where_a_transaction_shares_one_time_another_time_completes_it() {
        let t = |i| Timestamp {
            time: 10,
            increment: i,
        };
        let mut open = Open::default();
        let (a1, a2, b1) = (op(1, 1, 10), op(1, 1, 11), op(1, 2, 20));
        let a = txn_id(&a1).expect("a");
        let b = txn_id(&b1).expect("b");
        open.get_or_open(a.clone(), (t(0), None)).push(a1, 1, t(1));
        open.observe(&a, t(1));
        open.get_or_open(a.clone(), (t(0), None)).push(a2, 1, t(1));
        // Same time: not yet; another time: complete.
        assert!(open.completed_by(Some(&b), None, t(1), false).is_empty());
        assert_eq!(open.completed_by(Some(&b), None, t(2), false).len(), 1);
    }
}
