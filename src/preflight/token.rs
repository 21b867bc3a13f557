//! SecantusDB's change-stream resume tokens, read to locate oplog entries without reading the
//! oplog. Pure.
//!
//! On SecantusDB a token's `_data` is the hex of a BSON document `{s: <sequence>, t:
//! <Timestamp>, n: <namespace>, k: <document key>}` (docs/known-differences.md): `s` numbers
//! the server's oplog entries consecutively, and `resumeAfter` a token seeks its sequence
//! directly. Every query of `local.oplog.rs` there reads the whole oplog (40 s for a million
//! entries), so the preflight finds the oldest entry by resuming a stream after a sequence
//! number instead. mongod's tokens are KeyStrings: [`decode`] returns `None` for them and the
//! preflight reads the oplog in `$natural` order, which mongod answers from its ends.

use mongodb::bson::{Bson, Document, Timestamp};

/// The sequence number and time of a SecantusDB resume token; `None` for any other shape.
pub fn decode(token: &Document) -> Option<(i64, Timestamp)> {
    let bytes = unhex(token.get_str("_data").ok()?)?;
    let d = Document::from_reader(&mut bytes.as_slice()).ok()?;
    let s = match d.get("s")? {
        Bson::Int64(s) => *s,
        Bson::Int32(s) => i64::from(*s),
        _ => return None,
    };
    Some((s, d.get_timestamp("t").ok()?))
}

/// `template` (a SecantusDB token) moved to sequence `s`: resuming after it delivers the
/// events from sequence `s + 1` on. `None` if `template` is not such a token.
pub fn at_sequence(template: &Document, s: i64) -> Option<Document> {
    let bytes = unhex(template.get_str("_data").ok()?)?;
    let mut d = Document::from_reader(&mut bytes.as_slice()).ok()?;
    if !matches!(d.get("s"), Some(Bson::Int64(_) | Bson::Int32(_))) {
        return None;
    }
    d.insert("s", s.max(0));
    let mut out = Vec::new();
    d.to_writer(&mut out).ok()?;
    let mut t = template.clone();
    t.insert("_data", hex(&out));
    Some(t)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn reads_and_moves_a_secantus_token() {
        // A post-batch token as secantusd-rs 0.5.3-beta.196 returns it.
        let tok = doc! {"_data": "2B000000127300353F10000000000011740001000000A771096B026E000100000000036B00050000000000"};
        let (s, t) = decode(&tok).expect("a SecantusDB token");
        assert_eq!(s, 1_064_757);
        assert_eq!(t.increment, 1);
        let moved = at_sequence(&tok, 42).expect("moved");
        assert_eq!(decode(&moved).map(|(s, _)| s), Some(42));
        assert_eq!(decode(&moved).map(|(_, t2)| t2), Some(t));
    }

    #[test]
    fn mongod_tokens_are_not_read() {
        // A KeyString token (mongod): starts with 82 and the cluster time.
        let tok = doc! {"_data": "82612F653E000000022B0229296E04"};
        assert_eq!(decode(&tok), None);
        assert_eq!(at_sequence(&tok, 1), None);
        assert_eq!(decode(&doc! {"_data": "zz"}), None);
        assert_eq!(decode(&doc! {}), None);
    }
}
