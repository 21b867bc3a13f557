//! Op times: BSON timestamps of the source's oplog, their text forms, and the time inside a
//! change-stream resume token.

use mongodb::bson::{self, Bson, Timestamp};

use crate::api::OpTime;

/// `"<secs>.<inc>"`, the form PCSM and mongosync print.
pub fn ts_string(ts: Timestamp) -> String {
    format!("{}.{}", ts.time, ts.increment)
}

/// RFC 3339 of the timestamp's seconds.
pub fn ts_iso(ts: Timestamp) -> String {
    bson::DateTime::from_millis(i64::from(ts.time) * 1000)
        .try_to_rfc3339_string()
        .unwrap_or_default()
}

pub fn op_time(ts: Timestamp) -> OpTime {
    OpTime {
        ts: ts_string(ts),
        iso_date: ts_iso(ts),
    }
}

/// Seconds from `from` to `to` (may be negative), counting the increment as a fraction.
pub fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    f64::from(to.time) - f64::from(from.time)
}

/// Lag in seconds: how far `applied` is behind the source's `now`. Op times count whole
/// seconds, so anything behind counts as at least one second: 0 means caught up.
pub fn lag_seconds(applied: Timestamp, now: Timestamp) -> f64 {
    if now <= applied {
        0.0
    } else {
        seconds_between(applied, now).max(1.0)
    }
}

pub fn now_rfc3339() -> String {
    bson::DateTime::now()
        .try_to_rfc3339_string()
        .unwrap_or_default()
}

/// The cluster time inside a resume token, where the server encodes it the way mongod does:
/// `_data` is a hex KeyString whose first value is a Timestamp (type byte 0x82, then the
/// seconds and the increment as big-endian u32). Returns `None` for any other shape; the
/// caller then simply does not advance on idle batches.
pub fn token_timestamp(token: &Bson) -> Option<Timestamp> {
    let data = match token {
        Bson::Document(d) => d.get_str("_data").ok()?,
        _ => return None,
    };
    let bytes = data.as_bytes();
    if bytes.len() < 18 || !data.get(0..2)?.eq_ignore_ascii_case("82") {
        return None;
    }
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    Some(Timestamp {
        time: hex(data.get(2..10)?)?,
        increment: hex(data.get(10..18)?)?,
    })
}

/// Parse `"<secs>.<inc>"`.
pub fn parse_ts(s: &str) -> Option<Timestamp> {
    let (t, i) = s.split_once('.')?;
    Some(Timestamp {
        time: t.parse().ok()?,
        increment: i.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn decodes_mongod_token() {
        // Vector from the public resume-token decoder: timestamp (1630496062, 2).
        let t = Bson::Document(doc! {"_data": "82612F653E000000022B0229296E04"});
        assert_eq!(
            token_timestamp(&t),
            Some(Timestamp {
                time: 1630496062,
                increment: 2
            })
        );
        assert_eq!(token_timestamp(&Bson::Document(doc! {"_data": "zz"})), None);
        assert_eq!(token_timestamp(&Bson::Int32(1)), None);
    }

    #[test]
    fn formats_and_parses() {
        let ts = Timestamp {
            time: 1700000000,
            increment: 7,
        };
        assert_eq!(ts_string(ts), "1700000000.7");
        assert_eq!(parse_ts("1700000000.7"), Some(ts));
        assert!(ts_iso(ts).starts_with("2023-11-14T22:13:20"));
        assert_eq!(
            lag_seconds(
                ts,
                Timestamp {
                    time: 1700000003,
                    increment: 1
                }
            ),
            3.0
        );
        assert_eq!(
            lag_seconds(
                ts,
                Timestamp {
                    time: 1,
                    increment: 1
                }
            ),
            0.0
        );
        // Behind within the same second still counts as behind.
        assert_eq!(
            lag_seconds(
                ts,
                Timestamp {
                    time: ts.time,
                    increment: 9
                }
            ),
            1.0
        );
    }
}
