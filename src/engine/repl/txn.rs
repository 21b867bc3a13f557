//! Source transactions in the change stream: which events belong together, and when a group
//! is complete. Pure.
//!
//! The events of one transaction carry the same `lsid` and `txnNumber` and come one after
//! the other (mongod and SecantusDB's Python server give them one cluster time; SecantusDB's
//! Rust server gives each its own, consecutive). A group ends at the first event that is not
//! of the same transaction, or when the stream has nothing more to return (a transaction is
//! committed, and so visible, whole).

use mongodb::bson::{Bson, Document, Timestamp};

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
