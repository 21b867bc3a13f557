//! The checks before a reverse starts, as pure functions of what was read: the migration it
//! reverses (finalized, with a start point), the new cluster's history (it still holds the
//! start point), the old source's writes since the cutoff, and the preflight of the swapped
//! roles with the checks that do not apply to a reverse marked so. They make one report,
//! answered like a preflight (`409` with the report when a check fails).

use std::collections::BTreeMap;

use mongodb::bson::Timestamp;

use super::super::optime;
use crate::api::{CheckStatus, Direction, PreflightCheck, PreflightReport, State};

pub const CHECK_MIGRATION: &str = "reverse.migration";
pub const CHECK_HISTORY: &str = "reverse.history";
pub const CHECK_OLD_SOURCE_WRITES: &str = "reverse.oldSourceWrites";

/// Checks of the ordinary preflight that do not apply to a reverse, and why.
const NOT_APPLICABLE: &[(&str, &str)] = &[
    (
        "target.namespaces",
        "a reverse writes into the old source's collections, which hold the data as of the cutoff",
    ),
    (
        "target.metadata",
        "the reverse keeps its own job in the old source's mongoferry database",
    ),
    (
        "oplogWindow",
        "a reverse copies nothing; reverse.history checks that the start point is still held",
    ),
    (
        "estimate",
        "a reverse copies nothing: it replicates from the start point",
    ),
];

/// The migration a reverse would roll back, as recorded in the new cluster's `mongoferry`
/// database (its job document and lease).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Migration {
    pub job_id: String,
    pub job_name: String,
    pub state: State,
    pub direction: Direction,
    /// Its cutoff: a time of the old source.
    pub cutoff: Option<Timestamp>,
    /// Its reverse start point: a time of the new cluster.
    pub start: Option<Timestamp>,
}

/// Where a reverse starts: the migration's cutoff (old source) and start point (new cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Points {
    pub cutoff: Timestamp,
    pub start: Timestamp,
}

/// Writes to the selected namespaces found on the old source since the cutoff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// Changes per namespace (`db.coll`, or `db` for a dropped database).
    pub per_namespace: BTreeMap<String, u64>,
    /// Whether every change up to the time of the check was read (false: counting stopped at
    /// its limit or its time budget).
    pub complete: bool,
}

impl Writes {
    pub fn total(&self) -> u64 {
        self.per_namespace.values().sum()
    }
}

/// What was learnt about the old source's writes since the cutoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WritesSeen {
    Counted(Writes),
    /// The old source's oplog begins after the cutoff: its writes since cannot be told.
    HistoryGone {
        oldest: Timestamp,
    },
    /// Reading failed (privileges, network).
    Unreadable(String),
}

fn check(name: &str, status: CheckStatus, reason: String, fix: Option<&str>) -> PreflightCheck {
    PreflightCheck {
        name: name.into(),
        status,
        reason,
        fix: fix.map(str::to_string),
    }
}

fn at(ts: Timestamp) -> String {
    format!("{} ({})", optime::ts_string(ts), optime::ts_iso(ts))
}

/// Whether the migration found can be reversed, and from where. Pure.
pub fn migration_check(m: Option<&Migration>) -> (PreflightCheck, Option<Points>) {
    let fail = |reason: String, fix: &str| {
        (
            check(CHECK_MIGRATION, CheckStatus::Fail, reason, Some(fix)),
            None,
        )
    };
    let Some(m) = m else {
        return fail(
            "the source holds no mongoferry migration: a reverse reads from the cluster a \
             finalized migration wrote to"
                .into(),
            "reverse on the worker that ran the migration (POST /reverse, `mongoferry reverse`), \
             or run the reverse's worker with --source set to the migration's target and \
             --target to its source",
        );
    };
    if m.direction == Direction::Reverse {
        return fail(
            format!(
                "{} is itself a reverse, and a reverse cannot be reversed",
                m.job_name
            ),
            "to move the data forward again, start a new migration",
        );
    }
    if m.state != State::Finalized {
        return fail(
            format!(
                "the migration {} is {}, not finalized: only a finalized migration can be reversed",
                m.job_name, m.state
            ),
            "finalize it first (`mongoferry finalize`, or desiredState: finalized), then reverse",
        );
    }
    let (Some(cutoff), Some(start)) = (m.cutoff, m.start) else {
        return fail(
            format!(
                "the migration {} recorded no reverse start point at its finalize (finalized by \
                 an older mongoferry)",
                m.job_name
            ),
            "a reverse cannot start without it: copy the data back with a new migration from \
             the new cluster to the old source",
        );
    };
    (
        check(
            CHECK_MIGRATION,
            CheckStatus::Pass,
            format!(
                "reverses {} (finalized; cutoff {}, start point {})",
                m.job_name,
                at(cutoff),
                at(start)
            ),
            None,
        ),
        Some(Points { cutoff, start }),
    )
}

/// Whether the new cluster's oplog still holds the start point. Pure.
pub fn history_check(
    start: Timestamp,
    oldest: Result<Option<Timestamp>, String>,
) -> PreflightCheck {
    match oldest {
        Ok(Some(o)) if o > start => check(
            CHECK_HISTORY,
            CheckStatus::Fail,
            format!(
                "history lost: the new cluster's oplog no longer holds the reverse start point {} \
                 (its oldest entry is {}), so the writes made there since the cutoff cannot be \
                 replayed onto the old source",
                at(start),
                at(o)
            ),
            Some(
                "a reverse is no longer possible: copy the data back with a new migration from \
                 the new cluster to the old source (dropTargetNamespaces: true replaces the old \
                 collections); next time size the new cluster's oplog (replSetResizeOplog) to \
                 cover the time from the finalize to the reverse",
            ),
        ),
        Ok(Some(o)) => check(
            CHECK_HISTORY,
            CheckStatus::Pass,
            format!(
                "the new cluster's oplog holds the start point {} (oldest entry {})",
                at(start),
                at(o)
            ),
            None,
        ),
        Ok(None) => check(
            CHECK_HISTORY,
            CheckStatus::Pass,
            format!(
                "the new cluster's oplog is empty; the start point is {}",
                at(start)
            ),
            None,
        ),
        Err(e) => check(
            CHECK_HISTORY,
            CheckStatus::Fail,
            format!("cannot read the new cluster's oplog to find its oldest entry: {e}"),
            Some(
                "grant the new cluster's user clusterMonitor (find on local.oplog.rs), then \
                 reverse again",
            ),
        ),
    }
}

/// Whether the old source was written after the cutoff; `force` turns a refusal into a
/// warning. Pure.
pub fn writes_check(cutoff: Timestamp, seen: &WritesSeen, force: bool) -> PreflightCheck {
    let refuse = if force {
        CheckStatus::Warn
    } else {
        CheckStatus::Fail
    };
    let forced = if force {
        "; reversing anyway (force)"
    } else {
        ""
    };
    match seen {
        WritesSeen::Counted(w) if w.per_namespace.is_empty() && w.complete => check(
            CHECK_OLD_SOURCE_WRITES,
            CheckStatus::Pass,
            format!(
                "no writes to the selected namespaces on the old source since the cutoff {}",
                at(cutoff)
            ),
            None,
        ),
        WritesSeen::Counted(w) if w.per_namespace.is_empty() => check(
            CHECK_OLD_SOURCE_WRITES,
            refuse,
            format!(
                "could not read all of the old source's changes since the cutoff {} in time; \
                 none to the selected namespaces so far{forced}",
                at(cutoff)
            ),
            Some(
                "check that no application writes to the old source, then reverse again, or \
                 reverse with force: true",
            ),
        ),
        WritesSeen::Counted(w) => {
            let list: Vec<String> = w
                .per_namespace
                .iter()
                .map(|(ns, n)| format!("{ns} ({n})"))
                .collect();
            let total = if w.complete {
                format!("{} change(s)", w.total())
            } else {
                format!("at least {} change(s); counting stopped there", w.total())
            };
            check(
                CHECK_OLD_SOURCE_WRITES,
                refuse,
                format!(
                    "the old source received writes to the selected namespaces after the cutoff \
                     {}: {total} in {}{forced}",
                    at(cutoff),
                    list.join(", ")
                ),
                Some(
                    "those writes are not on the new cluster, and a reverse would overwrite the \
                     documents the new cluster changed while keeping the others, so the old \
                     source would not equal the new cluster: stop the applications writing to \
                     the old source and carry those writes over to the new cluster, then \
                     reverse; or reverse with force: true to keep them as they are (finalizing \
                     the reverse then reports them as differences)",
                ),
            )
        }
        WritesSeen::HistoryGone { oldest } => check(
            CHECK_OLD_SOURCE_WRITES,
            refuse,
            format!(
                "cannot tell whether the old source was written after the cutoff {}: its oplog \
                 begins at {}{forced}",
                at(cutoff),
                at(*oldest)
            ),
            Some(
                "make sure no application wrote to the old source since the cutoff, then reverse \
                 with force: true",
            ),
        ),
        WritesSeen::Unreadable(e) => check(
            CHECK_OLD_SOURCE_WRITES,
            refuse,
            format!(
                "cannot read the old source's changes since the cutoff {}: {e}{forced}",
                at(cutoff)
            ),
            Some(
                "grant the old source's user the privileges to read its change stream and \
                 oplog (readAnyDatabase and clusterMonitor; see docs/permissions.md), or make \
                 sure no application wrote to it and reverse with force: true",
            ),
        ),
    }
}

/// The preflight of the swapped roles as a reverse judges it: the checks that do not apply
/// pass, saying why. Pure.
pub fn adjust_preflight(checks: Vec<PreflightCheck>) -> Vec<PreflightCheck> {
    checks
        .into_iter()
        .map(
            |c| match NOT_APPLICABLE.iter().find(|(n, _)| *n == c.name) {
                Some((_, why)) => PreflightCheck {
                    status: CheckStatus::Pass,
                    reason: format!("not applicable: {why}"),
                    fix: None,
                    ..c
                },
                None => PreflightCheck {
                    reason: format!("{}{}", role(&c.name), c.reason),
                    ..c
                },
            },
        )
        .collect()
}

/// Which deployment a check of the swapped preflight is about, said plainly. Pure.
fn role(check: &str) -> &'static str {
    if check.starts_with("target.") {
        "the old source (the reverse's target): "
    } else if check.starts_with("source.") {
        "the new cluster (the reverse's source): "
    } else {
        ""
    }
}

/// One report of the reverse's checks followed by the preflight's. Pure.
pub fn report(
    mut checks: Vec<PreflightCheck>,
    preflight: Option<PreflightReport>,
) -> PreflightReport {
    let estimate = match preflight {
        Some(p) => {
            checks.extend(adjust_preflight(p.checks));
            p.estimate
        }
        None => Default::default(),
    };
    let ok = !checks.iter().any(|c| c.status == CheckStatus::Fail);
    PreflightReport {
        ok,
        summary: summary(&checks),
        checks,
        estimate,
    }
}

/// The one-line summary: a refusal names each failed check with its reason and fix. Pure.
pub fn summary(checks: &[PreflightCheck]) -> String {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| match &c.fix {
            Some(f) => format!("{}: {} (fix: {f})", c.name, c.reason),
            None => format!("{}: {}", c.name, c.reason),
        })
        .collect();
    let warned: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Warn)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        format!("the reverse cannot start: {}", failed.join("; "))
    } else if !warned.is_empty() {
        format!(
            "the reverse can start, with {} warning(s): {}",
            warned.len(),
            warned.join(", ")
        )
    } else {
        format!("all {} checks passed: the reverse can start", checks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(t: u32) -> Timestamp {
        Timestamp {
            time: t,
            increment: 1,
        }
    }

    fn finalized() -> Migration {
        Migration {
            job_id: "u1".into(),
            job_name: "ns/orders".into(),
            state: State::Finalized,
            direction: Direction::Forward,
            cutoff: Some(ts(100)),
            start: Some(ts(200)),
        }
    }

    #[test]
    fn only_a_finalized_migration_with_a_start_point_is_reversed() {
        let (c, p) = migration_check(Some(&finalized()));
        assert_eq!(c.status, CheckStatus::Pass, "{c:?}");
        assert_eq!(
            p,
            Some(Points {
                cutoff: ts(100),
                start: ts(200)
            })
        );
        let running = Migration {
            state: State::Running,
            ..finalized()
        };
        let (c, p) = migration_check(Some(&running));
        assert_eq!((c.status, p), (CheckStatus::Fail, None));
        assert!(c.reason.contains("running, not finalized"), "{c:?}");
        assert!(c.fix.unwrap_or_default().contains("finalize it first"));
        let old = Migration {
            start: None,
            ..finalized()
        };
        assert!(migration_check(Some(&old))
            .0
            .reason
            .contains("no reverse start point"));
        let rev = Migration {
            direction: Direction::Reverse,
            ..finalized()
        };
        assert!(migration_check(Some(&rev))
            .0
            .reason
            .contains("cannot be reversed"));
        let (none, _) = migration_check(None);
        assert_eq!(none.status, CheckStatus::Fail);
        assert!(none.fix.unwrap_or_default().contains("--source"));
    }

    #[test]
    fn a_start_point_older_than_the_oplog_is_history_lost() {
        let lost = history_check(ts(200), Ok(Some(ts(250))));
        assert_eq!(lost.status, CheckStatus::Fail);
        assert!(lost.reason.starts_with("history lost"), "{lost:?}");
        assert!(lost.fix.unwrap_or_default().contains("new migration"));
        assert_eq!(
            history_check(ts(200), Ok(Some(ts(200)))).status,
            CheckStatus::Pass
        );
        assert_eq!(history_check(ts(200), Ok(None)).status, CheckStatus::Pass);
        assert_eq!(
            history_check(ts(200), Err("unauthorized".into())).status,
            CheckStatus::Fail
        );
    }

    #[test]
    fn old_source_writes_refuse_unless_forced_and_are_listed() {
        let mut w = Writes {
            complete: true,
            ..Default::default()
        };
        assert_eq!(
            writes_check(ts(100), &WritesSeen::Counted(w.clone()), false).status,
            CheckStatus::Pass
        );
        w.per_namespace.insert("app.orders".into(), 12);
        w.per_namespace.insert("app.users".into(), 3);
        let c = writes_check(ts(100), &WritesSeen::Counted(w.clone()), false);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(
            c.reason.contains("app.orders (12), app.users (3)") && c.reason.contains("15 change"),
            "{c:?}"
        );
        assert!(c.fix.unwrap_or_default().contains("force: true"));
        let forced = writes_check(ts(100), &WritesSeen::Counted(w.clone()), true);
        assert_eq!(forced.status, CheckStatus::Warn);
        assert!(forced.reason.contains("force"));
        w.complete = false;
        assert!(writes_check(ts(100), &WritesSeen::Counted(w), false)
            .reason
            .contains("at least 15"));
        let gone = writes_check(ts(100), &WritesSeen::HistoryGone { oldest: ts(150) }, false);
        assert_eq!(gone.status, CheckStatus::Fail);
        assert!(gone.reason.contains("cannot tell"));
        let incomplete = Writes::default();
        assert_eq!(
            writes_check(ts(100), &WritesSeen::Counted(incomplete), false).status,
            CheckStatus::Fail
        );
    }

    #[test]
    fn the_report_passes_what_a_reverse_does_not_need_and_names_failures_with_fixes() {
        let pre = PreflightReport {
            ok: false,
            summary: String::new(),
            checks: vec![
                check(
                    "target.namespaces",
                    CheckStatus::Fail,
                    "occupied".into(),
                    Some("drop"),
                ),
                check(
                    "target.privileges",
                    CheckStatus::Fail,
                    "lacks insert on app".into(),
                    Some("grant readWriteAnyDatabase"),
                ),
            ],
            estimate: Default::default(),
        };
        let (mig, _) = migration_check(Some(&finalized()));
        let r = report(vec![mig], Some(pre));
        assert!(!r.ok);
        assert_eq!(
            r.check("target.namespaces").map(|c| c.status),
            Some(CheckStatus::Pass)
        );
        assert!(
            r.summary.contains(
                "target.privileges: the old source (the reverse's target): lacks insert on app"
            ) && r.summary.contains("fix: grant readWriteAnyDatabase"),
            "{}",
            r.summary
        );
        let good = report(
            vec![check(CHECK_HISTORY, CheckStatus::Pass, "ok".into(), None)],
            None,
        );
        assert!(good.ok && good.summary.contains("all 1 checks passed"));
    }
}
