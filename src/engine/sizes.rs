//! Collection sizes measured moments ago, handed from the preflight to the copy.
//!
//! A start runs the preflight, which sizes every selected collection (`collStats`), and then
//! the copy's catalog, which needs the same figures. On mongod `collStats` answers from
//! metadata; SecantusDB reads every document to answer it, so measuring twice costs the source
//! a second full read at the moment the copy starts. The preflight leaves what it measured
//! here; the catalog takes each figure once, if it is fresh, and measures the rest itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a measured size stands in for a new measurement.
pub const FRESH: Duration = Duration::from_secs(60);

/// `(db, coll)` → (bytes, documents, when measured).
type Table = HashMap<(String, String), (i64, i64, Instant)>;

/// Shared between an engine and its preflight gate (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Sizes(Arc<Mutex<Table>>);

impl Sizes {
    /// Remember a collection's size and document count, measured now.
    pub fn put(&self, db: &str, coll: &str, bytes: i64, docs: i64) {
        self.put_at(db, coll, bytes, docs, Instant::now());
    }

    /// A fresh size of the collection, once (a later copy measures again).
    pub fn take(&self, db: &str, coll: &str) -> Option<(i64, i64)> {
        self.take_at(db, coll, Instant::now())
    }

    fn put_at(&self, db: &str, coll: &str, bytes: i64, docs: i64, at: Instant) {
        if let Ok(mut t) = self.0.lock() {
            // Drop stale entries (a preflight whose start never came).
            t.retain(|_, (_, _, when)| at.saturating_duration_since(*when) < FRESH);
            t.insert((db.to_string(), coll.to_string()), (bytes, docs, at));
        }
    }

    fn take_at(&self, db: &str, coll: &str, now: Instant) -> Option<(i64, i64)> {
        let mut t = self.0.lock().ok()?;
        let (bytes, docs, when) = t.remove(&(db.to_string(), coll.to_string()))?;
        (now.saturating_duration_since(when) < FRESH).then_some((bytes, docs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_size_is_taken_once() {
        let s = Sizes::default();
        let t0 = Instant::now();
        s.put_at("d", "c", 100, 2, t0);
        assert_eq!(
            s.take_at("d", "c", t0 + Duration::from_secs(5)),
            Some((100, 2))
        );
        assert_eq!(s.take_at("d", "c", t0 + Duration::from_secs(5)), None);
        assert_eq!(s.take_at("d", "other", t0), None);
    }

    #[test]
    fn a_stale_size_is_not_used() {
        let s = Sizes::default();
        let t0 = Instant::now();
        s.put_at("d", "c", 100, 2, t0);
        assert_eq!(s.take_at("d", "c", t0 + FRESH), None);
    }

    #[test]
    fn clones_share_the_table_and_stale_entries_are_dropped() {
        let s = Sizes::default();
        let t0 = Instant::now();
        s.put_at("d", "old", 1, 1, t0);
        let other = s.clone();
        other.put_at("d", "c", 7, 3, t0 + FRESH);
        assert_eq!(s.0.lock().map(|t| t.len()).unwrap_or(0), 1);
        assert_eq!(s.take_at("d", "c", t0 + FRESH), Some((7, 3)));
    }
}
