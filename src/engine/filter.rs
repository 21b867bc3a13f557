//! Namespace selection: which `db.collection` namespaces a migration copies and replicates.
//!
//! Patterns are `db.coll`, `db.*`, or a regular expression written `/…/` that is matched
//! against the full namespace `db.coll`. Includes are applied first (no include means
//! "everything"), then excludes. System databases and the engine's own metadata database
//! are never selected, whatever the patterns say.

use regex::Regex;
use thiserror::Error;

/// The database that holds the engine's checkpoint, lease and catalog on the target.
pub const META_DB: &str = "mongoferry";

/// Databases that are never replicated.
pub const SYSTEM_DBS: [&str; 4] = ["admin", "local", "config", META_DB];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("namespace pattern {0:?} is empty")]
    Empty(String),
    #[error("namespace pattern {0:?} must be `db.collection`, `db.*` or a regular expression written `/…/`")]
    Shape(String),
    #[error("namespace pattern {pattern:?} is not a valid regular expression: {reason}")]
    Regex { pattern: String, reason: String },
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact { db: String, coll: String },
    Database(String),
    Regex(Regex),
}

impl Pattern {
    fn parse(raw: &str) -> Result<Self, FilterError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(FilterError::Empty(raw.to_string()));
        }
        if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
            let body = &s[1..s.len() - 1];
            if body.is_empty() {
                return Err(FilterError::Empty(raw.to_string()));
            }
            let re = Regex::new(body).map_err(|e| FilterError::Regex {
                pattern: raw.to_string(),
                reason: e.to_string(),
            })?;
            return Ok(Pattern::Regex(re));
        }
        let (db, coll) = s
            .split_once('.')
            .ok_or_else(|| FilterError::Shape(raw.to_string()))?;
        if db.is_empty() || coll.is_empty() || db.contains(['/', '\\', ' ', '"', '$']) {
            return Err(FilterError::Shape(raw.to_string()));
        }
        if coll == "*" {
            Ok(Pattern::Database(db.to_string()))
        } else {
            Ok(Pattern::Exact {
                db: db.to_string(),
                coll: coll.to_string(),
            })
        }
    }

    fn matches(&self, db: &str, coll: &str) -> bool {
        match self {
            Pattern::Exact { db: d, coll: c } => d == db && c == coll,
            Pattern::Database(d) => d == db,
            Pattern::Regex(re) => re.is_match(&format!("{db}.{coll}")),
        }
    }

    /// Whether some collection of `db` could match (used to skip whole databases).
    fn may_match_db(&self, db: &str) -> bool {
        match self {
            Pattern::Exact { db: d, .. } | Pattern::Database(d) => d == db,
            Pattern::Regex(_) => true,
        }
    }
}

/// A compiled include/exclude selection.
#[derive(Debug, Clone, Default)]
pub struct NamespaceFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl NamespaceFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, FilterError> {
        Ok(Self {
            include: include
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
            exclude: exclude
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether any collection of database `db` may be selected.
    pub fn database_selected(&self, db: &str) -> bool {
        if is_system_db(db) {
            return false;
        }
        if !self.include.is_empty() && !self.include.iter().any(|p| p.may_match_db(db)) {
            return false;
        }
        // A whole-database exclude removes the database; other excludes need the collection.
        !self
            .exclude
            .iter()
            .any(|p| matches!(p, Pattern::Database(d) if d == db))
    }

    /// Whether the namespace `db.coll` is replicated.
    pub fn selected(&self, db: &str, coll: &str) -> bool {
        if is_system_db(db) || coll.starts_with("system.") {
            return false;
        }
        if !self.include.is_empty() && !self.include.iter().any(|p| p.matches(db, coll)) {
            return false;
        }
        !self.exclude.iter().any(|p| p.matches(db, coll))
    }
}

impl NamespaceFilter {
    /// Whether the patterns alone select `db.coll`, ignoring the rule that leaves out
    /// system databases and `system.*` collections (to report what that rule skips).
    pub fn patterns_match(&self, db: &str, coll: &str) -> bool {
        if !self.include.is_empty() && !self.include.iter().any(|p| p.matches(db, coll)) {
            return false;
        }
        !self.exclude.iter().any(|p| p.matches(db, coll))
    }
}

pub fn is_system_db(db: &str) -> bool {
    SYSTEM_DBS.contains(&db)
}

/// Cases for the fuzzing property tests: `PROPTEST_CASES` when set (the full reliability run
/// uses 100,000), else `default`.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &[&str], exc: &[&str]) -> NamespaceFilter {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        NamespaceFilter::new(&s(inc), &s(exc)).expect("valid filter")
    }

    #[test]
    fn empty_selects_everything_but_system() {
        let f = f(&[], &[]);
        assert!(f.selected("app", "users"));
        for db in ["admin", "local", "config", "mongoferry"] {
            assert!(!f.selected(db, "x"), "{db}");
            assert!(!f.database_selected(db));
        }
        assert!(!f.selected("app", "system.views"));
        assert!(!f.selected("app", "system.profile"));
    }

    #[test]
    fn patterns_alone_see_system_collections() {
        let sel = f(&["app.*"], &["app.secret"]);
        assert!(sel.patterns_match("app", "system.js"));
        assert!(!sel.selected("app", "system.js"));
        assert!(!sel.patterns_match("app", "secret"));
        assert!(!sel.patterns_match("other", "c"));
    }

    #[test]
    fn exact_and_wildcard_includes() {
        let f = f(&["app.users", "logs.*"], &[]);
        assert!(f.selected("app", "users"));
        assert!(!f.selected("app", "orders"));
        assert!(f.selected("logs", "anything"));
        assert!(!f.selected("other", "users"));
        assert!(f.database_selected("app"));
        assert!(!f.database_selected("other"));
    }

    #[test]
    fn excludes_win_over_includes() {
        let f = f(&["app.*"], &["app.secrets", "/^app\\.tmp_/"]);
        assert!(f.selected("app", "users"));
        assert!(!f.selected("app", "secrets"));
        assert!(!f.selected("app", "tmp_1"));
        assert!(f.selected("app", "x_tmp_1"));
    }

    #[test]
    fn regex_over_full_namespace() {
        let f = f(&["/^(shop|crm)\\.orders_\\d+$/"], &[]);
        assert!(f.selected("shop", "orders_1"));
        assert!(f.selected("crm", "orders_22"));
        assert!(!f.selected("shop", "orders_x"));
        assert!(!f.selected("hr", "orders_1"));
        assert!(f.database_selected("hr"), "regex may match any db");
    }

    #[test]
    fn whole_database_exclude() {
        let f = f(&[], &["archive.*"]);
        assert!(!f.database_selected("archive"));
        assert!(!f.selected("archive", "a"));
        assert!(f.selected("live", "a"));
    }

    #[test]
    fn collection_names_with_dots() {
        let f = f(&["app.a.b"], &[]);
        assert!(f.selected("app", "a.b"));
        assert!(!f.selected("app", "a"));
    }

    #[test]
    fn rejects_malformed_patterns() {
        let s = |x: &str| vec![x.to_string()];
        assert!(matches!(
            NamespaceFilter::new(&s(""), &[]),
            Err(FilterError::Empty(_))
        ));
        assert!(matches!(
            NamespaceFilter::new(&s("nodot"), &[]),
            Err(FilterError::Shape(_))
        ));
        assert!(matches!(
            NamespaceFilter::new(&s(".coll"), &[]),
            Err(FilterError::Shape(_))
        ));
        assert!(matches!(
            NamespaceFilter::new(&[], &s("/(/")),
            Err(FilterError::Regex { .. })
        ));
        assert!(matches!(
            NamespaceFilter::new(&s("//"), &[]),
            Err(FilterError::Empty(_))
        ));
    }

    proptest::proptest! {
        // 2000 cases by default; `PROPTEST_CASES=100000` in the full reliability run
        // (docs/reliability.md).
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            crate::engine::filter::fuzz_cases(2000)
        ))]
        /// The parser never panics, and a parsed filter never selects a system database.
        #[test]
        fn fuzz_patterns(p in ".{0,40}", db in "[a-z]{1,8}", coll in "[a-z.]{1,12}") {
            if let Ok(f) = NamespaceFilter::new(std::slice::from_ref(&p), &[]) {
                proptest::prop_assert!(!f.selected("admin", &coll));
                proptest::prop_assert!(!f.selected("mongoferry", &coll));
                let _ = f.selected(&db, &coll);
            }
            let _ = NamespaceFilter::new(&[], std::slice::from_ref(&p));
        }
    }
}
