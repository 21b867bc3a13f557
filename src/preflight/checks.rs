//! The pure decisions of the preflight: each function turns gathered facts into one check.

use crate::api::{CheckStatus, PreflightCheck, PreflightEstimate};

/// Oldest and newest major versions the engine supports (change streams with expanded
/// events need 6.0).
pub const MIN_MAJOR: u32 = 6;
pub const MAX_TESTED_MAJOR: u32 = 8;
/// Default copy throughput assumed for the estimate, MB/s.
pub use crate::engine::DEFAULT_THROUGHPUT_MBPS;
/// The oplog must cover this many times the estimated copy…
pub const SAFETY_FACTOR: f64 = 2.0;
/// …plus this margin (listing, index builds, start-up), seconds.
pub const MARGIN_SECONDS: f64 = 60.0;
/// An oplog at least this full is treated as rolling over.
const FULL: f64 = 0.9;
/// mongod's smallest `replSetResizeOplog` size, MB.
const MONGOD_MIN_OPLOG_MB: u64 = 990;

pub fn check(
    name: &str,
    status: CheckStatus,
    reason: impl Into<String>,
    fix: Option<String>,
) -> PreflightCheck {
    PreflightCheck {
        name: name.to_string(),
        status,
        reason: reason.into(),
        fix,
    }
}

pub fn pass(name: &str, reason: impl Into<String>) -> PreflightCheck {
    check(name, CheckStatus::Pass, reason, None)
}

/// A check that could not run because an earlier one failed.
pub fn not_checked(name: &str, why: &str) -> PreflightCheck {
    check(
        name,
        CheckStatus::Warn,
        format!("not checked: {why}"),
        Some("fix the failed checks above and run the preflight again".into()),
    )
}

/// Parse the major version of `buildInfo.version`.
pub fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

pub fn versions_check(source: &str, target: &str) -> PreflightCheck {
    let name = "versions";
    let (Some(s), Some(t)) = (major(source), major(target)) else {
        return check(
            name,
            CheckStatus::Warn,
            format!("cannot read the versions (source {source:?}, target {target:?})"),
            Some("check that both servers are MongoDB 6.0 or later".into()),
        );
    };
    let supported = format!("supported: {MIN_MAJOR}.0 to {MAX_TESTED_MAJOR}.x");
    if s < MIN_MAJOR || t < MIN_MAJOR {
        return check(
            name,
            CheckStatus::Fail,
            format!("source {source}, target {target}: older than {MIN_MAJOR}.0 ({supported})"),
            Some(format!(
                "upgrade both deployments to MongoDB {MIN_MAJOR}.0 or later"
            )),
        );
    }
    if s > t {
        return check(
            name,
            CheckStatus::Fail,
            format!("source {source} is newer than target {target}: a migration cannot downgrade"),
            Some(format!("upgrade the target to {s}.x or later")),
        );
    }
    if s > MAX_TESTED_MAJOR || t > MAX_TESTED_MAJOR {
        return check(
            name,
            CheckStatus::Warn,
            format!("source {source}, target {target}: newer than tested ({supported})"),
            Some("test the migration on a copy first".into()),
        );
    }
    pass(
        name,
        format!("source {source} ≤ target {target} ({supported})"),
    )
}

/// What `hello` says about the deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub set_name: Option<String>,
    /// `msg: "isdbgrid"`: a mongos.
    pub mongos: bool,
}

pub fn topology_check(side: &str, t: &Topology) -> PreflightCheck {
    let name = format!("{side}.topology");
    if t.mongos {
        return check(
            &name,
            CheckStatus::Fail,
            format!("the {side} is a sharded cluster (mongos): not supported yet"),
            Some("migrate each shard's replica set separately, or wait for sharded support".into()),
        );
    }
    match &t.set_name {
        Some(s) => pass(&name, format!("replica set {s:?}")),
        None => check(
            &name,
            CheckStatus::Fail,
            format!("the {side} is a standalone server: change streams need a replica set"),
            Some("run it as a replica set (even of one member: --replSet + rs.initiate())".into()),
        ),
    }
}

/// The source's oplog, as measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OplogFacts {
    /// Seconds between the oldest entry and the source's current time.
    pub age_seconds: f64,
    /// Entries in the oplog.
    pub count: u64,
    /// Entries in the last `recent_span_seconds` (ending now).
    pub recent_entries: Option<u64>,
    pub recent_span_seconds: f64,
    /// Count-based oplog (SecantusDB): its capacity in entries.
    pub max_entries: Option<u64>,
    /// Size-based oplog (mongod): bytes used and capacity.
    pub used_bytes: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// Writes per second, measured on the recent span (or on the whole oplog when it is younger).
fn entry_rate(o: &OplogFacts) -> Option<f64> {
    // Op times have a one-second resolution: entries all within this second span one second.
    let age = if o.count > 0 {
        o.age_seconds.max(1.0)
    } else {
        o.age_seconds
    };
    if age > 0.0 && age <= o.recent_span_seconds {
        return Some(o.count as f64 / age);
    }
    match o.recent_entries {
        Some(n) if o.recent_span_seconds > 0.0 => Some(n as f64 / o.recent_span_seconds),
        _ if age > 0.0 => Some(o.count as f64 / age),
        _ => None,
    }
}

fn human_secs(s: f64) -> String {
    if !s.is_finite() {
        "unlimited".into()
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// The oplog window against the estimated copy time.
pub fn oplog_check(o: &OplogFacts, copy_seconds: f64) -> PreflightCheck {
    let name = "oplogWindow";
    let need = copy_seconds * SAFETY_FACTOR + MARGIN_SECONDS;
    let rate = entry_rate(o).unwrap_or(0.0);
    // Capacity and use, in entries or bytes.
    let (capacity, used, per_sec, unit) = match (o.max_entries, o.max_bytes) {
        (Some(cap), _) if cap > 0 => (cap as f64, o.count as f64, rate, "entries"),
        (_, Some(cap)) if cap > 0 => {
            let used = o.used_bytes.unwrap_or(0) as f64;
            let avg = if o.count > 0 {
                used / o.count as f64
            } else {
                0.0
            };
            (cap as f64, used, rate * avg, "bytes")
        }
        _ => {
            return check(
                name,
                if o.age_seconds >= need {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Warn
                },
                format!(
                    "oplog capacity unknown; its oldest entry is {} old, the copy needs about {}",
                    human_secs(o.age_seconds),
                    human_secs(need)
                ),
                (o.age_seconds < need).then(|| {
                    "make sure the source's oplog holds more history than the copy takes".into()
                }),
            )
        }
    };
    let full = used >= FULL * capacity;
    let window = if per_sec > 0.0 {
        capacity / per_sec
    } else {
        f64::INFINITY
    };
    let measured = format!(
        "oplog {}{} {unit}, {:.0}% full, oldest entry {} old, {:.1} writes/s → window ≈ {}",
        if unit == "bytes" { "" } else { "of " },
        if unit == "bytes" {
            format!(
                "{} MB of {} MB",
                (used / 1e6).round(),
                (capacity / 1e6).round()
            )
        } else {
            format!("{}", capacity as u64)
        },
        100.0 * used / capacity,
        human_secs(o.age_seconds),
        rate,
        human_secs(window)
    );
    let need_text = format!(
        "the copy needs ≈ {} (×{SAFETY_FACTOR} + {MARGIN_SECONDS:.0} s = {})",
        human_secs(copy_seconds),
        human_secs(need)
    );
    if window >= need {
        return pass(name, format!("{measured}; {need_text}"));
    }
    // What to set: enough for `need` at the measured rate, with 25 % headroom.
    let fix = if unit == "entries" {
        let n = (per_sec * need * 1.25).ceil() as u64;
        format!(
            "raise the source's oplog to at least {n} entries (--oplog-max-entries {n}) and its \
             retention to at least {} s (--oplog-retention-seconds); on mongod, \
             db.adminCommand({{replSetResizeOplog: 1, size: <MB>}}), or copy with a higher throughput",
            need.ceil() as u64
        )
    } else {
        let mb = ((per_sec * need * 1.25) / 1e6).ceil() as u64;
        let mb = mb.max(MONGOD_MIN_OPLOG_MB);
        format!(
            "raise the source's oplog to at least {mb} MB: db.adminCommand({{replSetResizeOplog: 1, \
             size: {mb}}}) (or set minRetentionHours ≥ {:.1})",
            need / 3600.0
        )
    };
    // The copy alone outlasts the window: history will be lost.
    let status = if window < copy_seconds * SAFETY_FACTOR && (full || o.recent_entries.is_some()) {
        CheckStatus::Fail
    } else {
        CheckStatus::Warn
    };
    check(
        name,
        status,
        format!("{measured}; {need_text}: too short"),
        Some(fix),
    )
}

/// One selected namespace that already holds documents on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupied {
    pub ns: String,
    /// `None`: it holds documents, but the target did not count them within the budget.
    pub documents: Option<u64>,
    /// Created by an earlier run of this job (the engine replaces it anyway).
    pub owned: bool,
}

pub fn target_namespaces_check(occupied: &[Occupied], drop: bool) -> PreflightCheck {
    let name = "target.namespaces";
    let foreign: Vec<&Occupied> = occupied.iter().filter(|o| !o.owned).collect();
    let list = |v: &[&Occupied]| {
        v.iter()
            .map(|o| match o.documents {
                Some(n) => format!("{} ({n} documents)", o.ns),
                None => format!("{} (holds documents)", o.ns),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let owned: Vec<&Occupied> = occupied.iter().filter(|o| o.owned).collect();
    if foreign.is_empty() {
        return pass(
            name,
            if owned.is_empty() {
                "no selected namespace holds documents on the target".to_string()
            } else {
                format!(
                    "only namespaces created by an earlier run of this job hold documents: {}",
                    list(&owned)
                )
            },
        );
    }
    if drop {
        return pass(
            name,
            format!(
                "dropTargetNamespaces is set: these target namespaces will be dropped and replaced: {}",
                list(&foreign)
            ),
        );
    }
    check(
        name,
        CheckStatus::Fail,
        format!(
            "the target already holds selected namespaces: {}",
            list(&foreign)
        ),
        Some(
            "drop them on the target, exclude them (--exclude / excludeNamespaces), or let the \
             migration replace them (--drop-target-namespaces / dropTargetNamespaces: true)"
                .into(),
        ),
    )
}

/// What the target's `mongoferry` database says about earlier runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataFacts {
    /// State of the job document, if there is one.
    pub job_state: Option<String>,
    /// Namespaces recorded by an earlier run.
    pub collections: u64,
}

pub fn metadata_check(m: &MetadataFacts, reset: bool) -> PreflightCheck {
    let name = "target.metadata";
    let idle = matches!(m.job_state.as_deref(), None | Some("idle"));
    if idle && m.collections == 0 {
        return pass(name, "no earlier mongoferry run recorded on the target");
    }
    let what = format!(
        "the target's mongoferry database records an earlier run (state {}, {} namespaces)",
        m.job_state.as_deref().unwrap_or("unknown"),
        m.collections
    );
    if reset {
        return pass(
            name,
            format!("{what}; reset is requested: it will be forgotten and its namespaces dropped"),
        );
    }
    check(
        name,
        CheckStatus::Warn,
        what,
        Some(
            "a worker resumes that run; to start over, run the worker with --reset or start with \
             reset: true (drops the namespaces it created)"
                .into(),
        ),
    )
}

/// A selected object the migration will not copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub ns: String,
    pub why: String,
}

pub fn unsupported_check(u: &[Unsupported]) -> PreflightCheck {
    let name = "unsupportedObjects";
    if u.is_empty() {
        return pass(name, "every selected collection and view is supported");
    }
    let list: Vec<String> = u.iter().map(|x| format!("{} ({})", x.ns, x.why)).collect();
    check(
        name,
        CheckStatus::Warn,
        format!("{} object(s) will be skipped: {}", u.len(), list.join(", ")),
        Some("migrate them by other means (e.g. mongodump/mongorestore) or exclude them".into()),
    )
}

/// Estimated copy time, seconds.
pub fn copy_seconds(bytes: u64, throughput_mbps: f64) -> f64 {
    if throughput_mbps <= 0.0 {
        return f64::INFINITY;
    }
    bytes as f64 / (throughput_mbps * 1e6)
}

pub fn estimate_check(e: &PreflightEstimate) -> PreflightCheck {
    let name = "estimate";
    let text = format!(
        "{}{:.1} MB in {} documents, {} collections, {} views, {} indexes: copy ≈ {} at {} MB/s{}",
        if e.unsized_collections > 0 {
            "at least "
        } else {
            ""
        },
        e.bytes as f64 / 1e6,
        e.documents,
        e.collections,
        e.views,
        e.indexes,
        human_secs(e.copy_seconds),
        e.throughput_mbps,
        unsized_note(e)
    );
    if e.collections == 0 && e.views == 0 {
        return check(
            name,
            CheckStatus::Warn,
            format!("nothing is selected: {text}"),
            Some("check the include/exclude filters and the source user's databases".into()),
        );
    }
    pass(name, text)
}

/// What an estimate leaves out: the collections the source did not size in time.
pub fn unsized_note(e: &PreflightEstimate) -> String {
    if e.unsized_collections == 0 {
        return String::new();
    }
    format!(
        " ({} collection(s) not sized within the preflight's time budget, counted as empty: \
         this server reads a collection's documents to size it)",
        e.unsized_collections
    )
}

/// The one-line summary of a report.
pub fn summary(checks: &[PreflightCheck]) -> String {
    let fails: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| c.name.as_str())
        .collect();
    let warns: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Warn)
        .map(|c| c.name.as_str())
        .collect();
    if !fails.is_empty() {
        format!(
            "the migration cannot start: {} check(s) failed ({}){}",
            fails.len(),
            fails.join(", "),
            if warns.is_empty() {
                String::new()
            } else {
                format!(", {} warning(s) ({})", warns.len(), warns.join(", "))
            }
        )
    } else if !warns.is_empty() {
        format!(
            "the migration can start, with {} warning(s): {}",
            warns.len(),
            warns.join(", ")
        )
    } else {
        format!(
            "all {} checks passed: the migration can start",
            checks.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rules() {
        assert_eq!(versions_check("7.0.2", "8.0.1").status, CheckStatus::Pass);
        assert_eq!(versions_check("8.2.11", "8.2.11").status, CheckStatus::Pass);
        let down = versions_check("8.0.0", "7.0.5");
        assert_eq!(down.status, CheckStatus::Fail);
        assert!(down.fix.as_deref().unwrap_or("").contains("8.x"));
        assert_eq!(versions_check("5.0.3", "8.0.0").status, CheckStatus::Fail);
        assert_eq!(versions_check("9.0.0", "9.0.0").status, CheckStatus::Warn);
        assert_eq!(versions_check("x", "8.0.0").status, CheckStatus::Warn);
    }

    #[test]
    fn topology_rules() {
        let rs = Topology {
            set_name: Some("rs0".into()),
            mongos: false,
        };
        assert_eq!(topology_check("source", &rs).status, CheckStatus::Pass);
        let sa = topology_check("target", &Topology::default());
        assert_eq!(sa.status, CheckStatus::Fail);
        assert!(sa.reason.contains("standalone") && sa.name == "target.topology");
        let ms = Topology {
            set_name: None,
            mongos: true,
        };
        assert!(topology_check("source", &ms).reason.contains("sharded"));
    }

    fn counted(age: f64, count: u64, recent: Option<u64>, max: u64) -> OplogFacts {
        OplogFacts {
            age_seconds: age,
            count,
            recent_entries: recent,
            recent_span_seconds: 60.0,
            max_entries: Some(max),
            ..Default::default()
        }
    }

    #[test]
    fn oplog_roomy_passes() {
        // 100k entries, 2k written in the last 10 s (young oplog): 200/s → 500 s window.
        let c = oplog_check(&counted(10.0, 2_000, Some(2_000), 100_000), 1.0);
        assert_eq!(c.status, CheckStatus::Pass, "{}", c.reason);
        assert!(c.reason.contains("window"));
    }

    #[test]
    fn idle_source_passes_whatever_the_fill() {
        let c = oplog_check(&counted(3_600.0, 100_000, Some(0), 100_000), 10_000.0);
        assert_eq!(c.status, CheckStatus::Pass, "{}", c.reason);
        assert!(c.reason.contains("unlimited"));
    }

    #[test]
    fn full_oplog_shorter_than_copy_fails_with_the_size_to_set() {
        // 1000 entries all written in the last 5 s: 200/s → 5 s window; copy 100 s.
        let c = oplog_check(&counted(5.0, 1_000, Some(1_000), 1_000), 100.0);
        assert_eq!(c.status, CheckStatus::Fail, "{}", c.reason);
        let fix = c.fix.unwrap_or_default();
        // need = 100×2+60 = 260 s at 200/s ×1.25 = 65000 entries.
        assert!(fix.contains("--oplog-max-entries 65000"), "{fix}");
        assert!(fix.contains("260 s"), "{fix}");
    }

    #[test]
    fn entries_all_within_this_second_are_a_high_rate() {
        // Age 0 s (one-second op times): 1000 entries in under a second.
        let c = oplog_check(&counted(0.0, 1_000, None, 1_000), 100.0);
        assert_eq!(c.status, CheckStatus::Fail, "{}", c.reason);
    }

    #[test]
    fn short_but_longer_than_copy_warns() {
        // Window 50 s, copy 10 s (needs 80 s with the margin).
        let c = oplog_check(&counted(5.0, 1_000, Some(1_000), 10_000), 10.0);
        assert_eq!(c.status, CheckStatus::Warn, "{}", c.reason);
    }

    #[test]
    fn size_based_oplog_names_megabytes() {
        let o = OplogFacts {
            age_seconds: 3_600.0,
            count: 1_000_000,
            recent_entries: Some(60_000),
            recent_span_seconds: 60.0,
            max_entries: None,
            used_bytes: Some(1_000_000_000),
            max_bytes: Some(1_000_000_000),
        };
        // 1000 entries/s × 1000 B = 1 MB/s: window 1000 s; copy 3600 s.
        let c = oplog_check(&o, 3_600.0);
        assert_eq!(c.status, CheckStatus::Fail, "{}", c.reason);
        let fix = c.fix.unwrap_or_default();
        assert!(
            fix.contains("replSetResizeOplog") && fix.contains("size: 9075"),
            "{fix}"
        );
    }

    #[test]
    fn unknown_capacity_uses_the_age() {
        let o = OplogFacts {
            age_seconds: 30.0,
            count: 10,
            ..Default::default()
        };
        assert_eq!(oplog_check(&o, 100.0).status, CheckStatus::Warn);
        let o = OplogFacts {
            age_seconds: 86_400.0,
            ..o
        };
        assert_eq!(oplog_check(&o, 100.0).status, CheckStatus::Pass);
    }

    #[test]
    fn occupied_target_fails_unless_dropped() {
        let occ = vec![
            Occupied {
                ns: "app.users".into(),
                documents: Some(12),
                owned: false,
            },
            Occupied {
                ns: "app.old".into(),
                documents: Some(3),
                owned: true,
            },
        ];
        let c = target_namespaces_check(&occ, false);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.reason.contains("app.users (12 documents)") && !c.reason.contains("app.old"));
        assert!(c.fix.unwrap_or_default().contains("drop-target-namespaces"));
        let c = target_namespaces_check(&occ, true);
        assert_eq!(c.status, CheckStatus::Pass);
        assert!(c.reason.contains("app.users"));
        assert_eq!(
            target_namespaces_check(&occ[1..], false).status,
            CheckStatus::Pass
        );
        assert_eq!(
            target_namespaces_check(&[], false).status,
            CheckStatus::Pass
        );
    }

    #[test]
    fn earlier_run_warns_about_reset() {
        assert_eq!(
            metadata_check(&MetadataFacts::default(), false).status,
            CheckStatus::Pass
        );
        let idle = MetadataFacts {
            job_state: Some("idle".into()),
            collections: 0,
        };
        assert_eq!(metadata_check(&idle, false).status, CheckStatus::Pass);
        let done = MetadataFacts {
            job_state: Some("finalized".into()),
            collections: 4,
        };
        let c = metadata_check(&done, false);
        assert_eq!(c.status, CheckStatus::Warn);
        assert!(c.fix.unwrap_or_default().contains("--reset"));
        assert_eq!(metadata_check(&done, true).status, CheckStatus::Pass);
    }

    #[test]
    fn unsupported_lists_names() {
        assert_eq!(unsupported_check(&[]).status, CheckStatus::Pass);
        let c = unsupported_check(&[Unsupported {
            ns: "m.ts".into(),
            why: "time-series collection: skipped".into(),
        }]);
        assert_eq!(c.status, CheckStatus::Warn);
        assert!(c.reason.contains("m.ts (time-series"));
    }

    #[test]
    fn estimates_and_summary() {
        assert!((copy_seconds(40_000_000, 20.0) - 2.0).abs() < 1e-9);
        assert!(copy_seconds(1, 0.0).is_infinite());
        let e = PreflightEstimate {
            bytes: 40_000_000,
            documents: 10,
            collections: 1,
            throughput_mbps: 20.0,
            copy_seconds: 2.0,
            ..Default::default()
        };
        assert_eq!(estimate_check(&e).status, CheckStatus::Pass);
        assert_eq!(
            estimate_check(&PreflightEstimate::default()).status,
            CheckStatus::Warn
        );
        let checks = vec![
            pass("a", "x"),
            check("b", CheckStatus::Warn, "w", None),
            check("c", CheckStatus::Fail, "f", None),
        ];
        let s = summary(&checks);
        assert!(s.contains("cannot start") && s.contains("(c)") && s.contains("(b)"));
        assert!(summary(&checks[..2]).contains("can start, with 1 warning"));
        assert!(summary(&checks[..1]).contains("all 1 checks passed"));
    }
}
