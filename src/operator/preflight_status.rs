//! The preflight as the operator shows it: the worker's report → `status.preflight` and the
//! `PreflightPassed` condition, and when a failed preflight is run again (pure).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::crd::{PreflightCheckStatus, PreflightStatus};
use crate::api::{CheckStatus, PreflightReport};

pub const PREFLIGHT_PASSED: &str = "PreflightPassed";

/// How long a failed preflight stands before the operator asks the worker to start (and so
/// to check) again. A spec change or a new `mongoferry.io/retry` value checks at once.
pub const RECHECK: Duration = Duration::from_secs(60);

/// What a reconcile learnt about the preflight.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Outcome {
    /// No start was attempted, or it was refused for another reason.
    #[default]
    NotRun,
    /// The worker judged a start by this report (accepted or refused).
    Report(Box<PreflightReport>),
    /// The start was accepted without a preflight (`skipPreflight`).
    Skipped,
}

/// A failed preflight holding the start back.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub summary: String,
    /// Time since the report was received.
    pub age: Duration,
}

pub fn to_status(r: &PreflightReport, now: &Time, generation: Option<i64>) -> PreflightStatus {
    PreflightStatus {
        passed: r.ok,
        summary: r.summary.clone(),
        checked_at: now.0.to_string(),
        observed_generation: generation,
        checks: r
            .checks
            .iter()
            .map(|c| PreflightCheckStatus {
                name: c.name.clone(),
                status: c.status.as_str().into(),
                reason: c.reason.clone(),
                fix: c.fix.clone(),
            })
            .collect(),
        estimated_bytes: r.estimate.bytes,
        estimated_documents: r.estimate.documents,
        estimated_copy_seconds: r.estimate.copy_seconds.max(0.0).round() as u64,
    }
}

/// The new `status.preflight` from this reconcile's outcome and the previous one.
pub fn next(
    outcome: &Outcome,
    prev: Option<&PreflightStatus>,
    now: &Time,
    generation: Option<i64>,
) -> Option<PreflightStatus> {
    match outcome {
        Outcome::NotRun => prev.cloned(),
        Outcome::Report(r) => Some(to_status(r, now, generation)),
        Outcome::Skipped => None,
    }
}

/// `(status, reason, message)` of the `PreflightPassed` condition, when a report exists.
pub fn condition(p: &PreflightStatus) -> (bool, &'static str, String) {
    if !p.passed {
        let failed: Vec<String> = p
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail.as_str())
            .map(|c| match &c.fix {
                Some(fix) => format!("{}: {} (fix: {fix})", c.name, c.reason),
                None => format!("{}: {}", c.name, c.reason),
            })
            .collect();
        return (
            false,
            "ChecksFailed",
            format!("{}; {}", p.summary, failed.join("; ")),
        );
    }
    let warned = p
        .checks
        .iter()
        .any(|c| c.status == CheckStatus::Warn.as_str());
    let reason = if warned {
        "PassedWithWarnings"
    } else {
        "Passed"
    };
    (true, reason, p.summary.clone())
}

/// The failed preflight that holds the start back, if the report is for this generation.
pub fn hold(
    p: Option<&PreflightStatus>,
    generation: Option<i64>,
    now: k8s_openapi::jiff::Timestamp,
) -> Option<Hold> {
    let p = p.filter(|p| !p.passed && p.observed_generation == generation)?;
    let at: k8s_openapi::jiff::Timestamp = p.checked_at.parse().ok()?;
    let age = Duration::try_from(now.duration_since(at)).unwrap_or_default();
    Some(Hold {
        summary: p.summary.clone(),
        age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PreflightCheck, PreflightEstimate};
    use k8s_openapi::jiff::Timestamp;

    fn report(fail: bool, warn: bool) -> PreflightReport {
        let mut checks = vec![PreflightCheck {
            name: "source.connectivity".into(),
            status: CheckStatus::Pass,
            reason: "connected".into(),
            fix: None,
        }];
        if fail {
            checks.push(PreflightCheck {
                name: "source.privileges".into(),
                status: CheckStatus::Fail,
                reason: "missing find on local.oplog.rs".into(),
                fix: Some("grant the role readAnyDatabase".into()),
            });
        }
        if warn {
            checks.push(PreflightCheck {
                name: "source.oplogWindow".into(),
                status: CheckStatus::Warn,
                reason: "tight".into(),
                fix: None,
            });
        }
        PreflightReport {
            ok: !fail,
            summary: if fail { "1 failed" } else { "all passed" }.into(),
            checks,
            estimate: PreflightEstimate {
                bytes: 10,
                documents: 2,
                copy_seconds: 1.6,
                ..Default::default()
            },
        }
    }

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).expect("ts"))
    }

    #[test]
    fn failed_report_names_the_check_and_its_fix() {
        let st = to_status(&report(true, false), &t(100), Some(2));
        assert!(!st.passed);
        assert_eq!(st.estimated_copy_seconds, 2);
        let (on, reason, msg) = condition(&st);
        assert!(!on);
        assert_eq!(reason, "ChecksFailed");
        assert!(msg.contains("source.privileges: missing find on local.oplog.rs"));
        assert!(msg.contains("fix: grant the role readAnyDatabase"));
        assert!(!msg.contains("source.connectivity"));
    }

    #[test]
    fn passing_reports_say_whether_they_warned() {
        let clean = to_status(&report(false, false), &t(1), None);
        assert_eq!(condition(&clean), (true, "Passed", "all passed".into()));
        let warned = to_status(&report(false, true), &t(1), None);
        assert_eq!(condition(&warned).1, "PassedWithWarnings");
    }

    #[test]
    fn outcome_replaces_keeps_or_clears() {
        let prev = to_status(&report(true, false), &t(1), Some(1));
        let kept = next(&Outcome::NotRun, Some(&prev), &t(5), Some(1));
        assert_eq!(kept.as_ref(), Some(&prev));
        let new = next(
            &Outcome::Report(Box::new(report(false, false))),
            Some(&prev),
            &t(5),
            Some(1),
        )
        .expect("report");
        assert!(new.passed);
        assert_eq!(new.checked_at, t(5).0.to_string());
        assert_eq!(next(&Outcome::Skipped, Some(&prev), &t(5), Some(1)), None);
    }

    #[test]
    fn only_a_failed_report_of_this_generation_holds() {
        let failed = to_status(&report(true, false), &t(100), Some(2));
        let now = Timestamp::from_second(130).expect("ts");
        let h = hold(Some(&failed), Some(2), now).expect("holds");
        assert_eq!(h.age, Duration::from_secs(30));
        assert_eq!(h.summary, "1 failed");
        assert_eq!(hold(Some(&failed), Some(3), now), None, "spec changed");
        let passed = to_status(&report(false, false), &t(100), Some(2));
        assert_eq!(hold(Some(&passed), Some(2), now), None);
        assert_eq!(hold(None, Some(2), now), None);
    }
}
