//! Source transactions in the change stream: which events belong together, and when a group
//! is complete. Pure.
//!
//! The events of one transaction carry the same `lsid` and `txnNumber` and come one after
//! the other (mongod and SecantusDB's Python server give them one cluster time; SecantusDB's
//! Rust server gives each its own, consecutive). A group ends at the first event that is not
//! of the same transaction, or when the stream has nothing more to return (a transaction is
//! committed, and so visible, whole).

use std::collections::{HashMap, HashSet};

use mongodb::bson::{doc, Bson, Document, Timestamp};

use super::super::store::TxnMarker;

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
}

impl Group {
    pub fn new(id: TxnId) -> Group {
        Group {
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
}

fn id_bytes(d: &Document) -> Vec<u8> {
    mongodb::bson::to_vec(d).unwrap_or_default()
}

/// Whether a transaction of `ops` operations and `bytes` of events is too large for one
/// target transaction.
pub fn too_large(ops: usize, bytes: usize) -> bool {
    ops > MAX_TXN_OPS || bytes > MAX_TXN_BYTES
}

#[cfg(test)]
mod tests {
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
    fn a_group_keeps_its_last_position_and_knows_its_limits() {
        let id = txn_id(&ev(Some(1))).expect("id");
        let mut g = Group::new(id);
        let t = |i| Timestamp {
            time: 10,
            increment: i,
        };
        assert!(!g.push(ev(Some(1)), 100, t(2)));
        assert!(!g.push(ev(Some(1)), 100, t(1)));
        assert_eq!(g.ts, t(2));
        assert_eq!(g.bytes, 200);
        assert_eq!(g.token, Some(doc! {"_data": "00"}));
        assert!(too_large(MAX_TXN_OPS + 1, 0));
        assert!(too_large(1, MAX_TXN_BYTES + 1));
        assert!(!too_large(MAX_TXN_OPS, MAX_TXN_BYTES));
    }
}
