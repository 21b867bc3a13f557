//! Preflight: before a migration starts, tell whether it can succeed and what to fix —
//! connectivity, authentication, versions, topology, privileges (listed and probed), the
//! source's oplog window against the estimated copy time, namespaces already on the target,
//! an earlier run's metadata, unsupported objects, and the size of the copy.
//!
//! `gather` does the I/O (harmless commands only; on the target a scratch collection in the
//! `mongoferry` database, dropped again); `checks` and `privileges` decide, purely.

pub mod checks;
pub mod gather;
pub mod privileges;
pub mod token;

use mongodb::Client;

use crate::api::{PreflightCheck, PreflightEstimate, PreflightReport};
use checks::{MetadataFacts, Occupied, OplogFacts, Topology, Unsupported};
use privileges::{AuthInfo, Probe};

/// What to check (defined by the engine, which runs the preflight before a start).
pub use crate::engine::PreflightOptions as Options;

/// How reaching one side went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Connected,
    Unreachable(String),
    AuthFailed(String),
    /// Reached, but `hello`/`buildInfo` failed otherwise.
    Error(String),
}

/// Everything gathered about one side.
#[derive(Debug, Clone)]
pub struct SideFacts {
    pub reach: Reach,
    pub version: String,
    pub topology: Topology,
    pub auth: Option<AuthInfo>,
    pub probes: Vec<Probe>,
}

/// Everything gathered, for [`evaluate`].
#[derive(Debug, Clone)]
pub struct Facts {
    pub source: SideFacts,
    pub target: SideFacts,
    /// Selected, supported collections as `(db, coll)`.
    pub selected: Vec<(String, String)>,
    pub capped: bool,
    pub estimate: PreflightEstimate,
    pub unsupported: Vec<Unsupported>,
    pub oplog: Option<OplogFacts>,
    /// Why the oplog could not be measured.
    pub oplog_error: Option<String>,
    pub occupied: Option<Vec<Occupied>>,
    pub metadata: Option<MetadataFacts>,
}

fn connectivity(side: &str, f: &SideFacts) -> Vec<PreflightCheck> {
    use crate::api::CheckStatus::Fail;
    let conn = format!("{side}.connectivity");
    let auth = format!("{side}.authentication");
    match &f.reach {
        Reach::Unreachable(e) => vec![
            checks::check(
                &conn,
                Fail,
                format!("cannot reach the {side}: {e}"),
                Some("check the URI, DNS, the network path and that the server is up".into()),
            ),
            checks::not_checked(&auth, &format!("the {side} is unreachable")),
        ],
        Reach::AuthFailed(e) => vec![
            checks::pass(&conn, format!("the {side} answers")),
            checks::check(
                &auth,
                Fail,
                format!("authentication to the {side} failed: {e}"),
                Some("check the user name, the password file and authSource".into()),
            ),
        ],
        Reach::Error(e) => vec![checks::check(
            &conn,
            Fail,
            format!("the {side} answered with an error: {e}"),
            Some("check the URI points at a MongoDB replica set".into()),
        )],
        Reach::Connected => {
            let who = match f.auth.as_ref().map(|a| a.users.join(", ")) {
                Some(u) if !u.is_empty() => format!("authenticated as {u}"),
                _ => "no user authenticated (none given, or the server lists none)".to_string(),
            };
            vec![
                checks::pass(&conn, format!("reachable, version {}", f.version)),
                checks::pass(&auth, who),
            ]
        }
    }
}

/// Decide every check from the facts. Pure.
pub fn evaluate(f: &Facts, opts: &Options) -> PreflightReport {
    let mut out = Vec::new();
    out.extend(connectivity("source", &f.source));
    out.extend(connectivity("target", &f.target));
    let src_ok = f.source.reach == Reach::Connected;
    let dst_ok = f.target.reach == Reach::Connected;
    if src_ok && dst_ok {
        out.push(checks::versions_check(&f.source.version, &f.target.version));
    } else {
        out.push(checks::not_checked("versions", "a side is not connected"));
    }
    for (side, s, ok) in [("source", &f.source, src_ok), ("target", &f.target, dst_ok)] {
        if ok {
            out.push(checks::topology_check(side, &s.topology));
        } else {
            out.push(checks::not_checked(
                &format!("{side}.topology"),
                &format!("the {side} is not connected"),
            ));
        }
    }
    if src_ok {
        let needs = privileges::source_needs(&f.selected);
        out.push(privileges::privileges_check(
            "source",
            f.source.auth.as_ref(),
            &needs,
            &f.source.probes,
        ));
    } else {
        out.push(checks::not_checked(
            "source.privileges",
            "the source is not connected",
        ));
    }
    if dst_ok {
        let mut dbs: Vec<String> = f.selected.iter().map(|(d, _)| d.clone()).collect();
        dbs.sort();
        dbs.dedup();
        let needs = privileges::target_needs(&dbs, f.capped);
        out.push(privileges::privileges_check(
            "target",
            f.target.auth.as_ref(),
            &needs,
            &f.target.probes,
        ));
    } else {
        out.push(checks::not_checked(
            "target.privileges",
            "the target is not connected",
        ));
    }
    match (&f.oplog, &f.oplog_error) {
        (Some(o), _) => {
            let mut c = checks::oplog_check(o, f.estimate.copy_seconds);
            c.reason.push_str(&checks::unsized_note(&f.estimate));
            out.push(c)
        }
        (None, Some(e)) => out.push(checks::not_checked("oplogWindow", e)),
        (None, None) => out.push(checks::not_checked(
            "oplogWindow",
            "the source is not connected",
        )),
    }
    match &f.occupied {
        Some(o) => out.push(checks::target_namespaces_check(
            o,
            opts.drop_target_namespaces,
        )),
        None => out.push(checks::not_checked(
            "target.namespaces",
            "the target's selected databases could not be listed",
        )),
    }
    match &f.metadata {
        Some(m) => out.push(checks::metadata_check(m, opts.reset)),
        None => out.push(checks::not_checked(
            "target.metadata",
            "the target's mongoferry database could not be read",
        )),
    }
    if src_ok {
        out.push(checks::unsupported_check(&f.unsupported));
        out.push(checks::estimate_check(&f.estimate));
    } else {
        out.push(checks::not_checked(
            "unsupportedObjects",
            "the source is not connected",
        ));
        out.push(checks::not_checked(
            "estimate",
            "the source is not connected",
        ));
    }
    let ok = !out
        .iter()
        .any(|c| c.status == crate::api::CheckStatus::Fail);
    PreflightReport {
        ok,
        summary: checks::summary(&out),
        checks: out,
        estimate: f.estimate.clone(),
    }
}

/// Gather the facts and decide.
pub async fn run(source: &Client, target: &Client, opts: &Options) -> PreflightReport {
    let facts = gather::gather(source, target, opts).await;
    evaluate(&facts, opts)
}

/// The preflight as the engine's start gate.
pub struct Gate {
    pub source: Client,
    pub target: Client,
}

impl crate::engine::StartGate for Gate {
    fn check(&self, opts: Options) -> futures::future::BoxFuture<'_, PreflightReport> {
        use futures::FutureExt;
        async move { run(&self.source, &self.target, &opts).await }.boxed()
    }
}

/// The report as a readable table.
pub fn render_table(r: &PreflightReport) -> String {
    let width = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(10);
    let mut s = String::new();
    for c in &r.checks {
        let mark = match c.status {
            crate::api::CheckStatus::Pass => "PASS",
            crate::api::CheckStatus::Warn => "WARN",
            crate::api::CheckStatus::Fail => "FAIL",
        };
        s.push_str(&format!("{mark}  {:<width$}  {}\n", c.name, c.reason));
        if let Some(fix) = &c.fix {
            s.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
        }
    }
    let e = &r.estimate;
    s.push_str(&format!(
        "\nestimate: {:.1} MB, {} documents, {} collections, {} views, {} indexes; copy ≈ {:.0} s at {} MB/s\n",
        e.bytes as f64 / 1e6,
        e.documents,
        e.collections,
        e.views,
        e.indexes,
        e.copy_seconds,
        e.throughput_mbps
    ));
    s.push_str(&format!(
        "{}: {}\n",
        if r.ok { "OK" } else { "FAILED" },
        r.summary
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CheckStatus;

    fn side(reach: Reach) -> SideFacts {
        SideFacts {
            reach,
            version: "8.2.11".into(),
            topology: Topology {
                set_name: Some("rs".into()),
                mongos: false,
            },
            auth: Some(AuthInfo {
                users: vec!["u@admin".into()],
                ..Default::default()
            }),
            probes: vec![],
        }
    }

    fn facts() -> Facts {
        Facts {
            source: side(Reach::Connected),
            target: side(Reach::Connected),
            selected: vec![("app".into(), "c".into())],
            capped: false,
            estimate: PreflightEstimate {
                bytes: 1_000_000,
                documents: 10,
                collections: 1,
                throughput_mbps: 20.0,
                copy_seconds: 0.05,
                ..Default::default()
            },
            unsupported: vec![],
            oplog: Some(OplogFacts {
                age_seconds: 100.0,
                count: 100,
                recent_entries: Some(0),
                recent_span_seconds: 60.0,
                max_entries: Some(1000),
                ..Default::default()
            }),
            oplog_error: None,
            occupied: Some(vec![]),
            metadata: Some(MetadataFacts::default()),
        }
    }

    #[test]
    fn all_good_passes_with_every_check_named() {
        let r = evaluate(&facts(), &Options::default());
        assert!(r.ok, "{r:#?}");
        for n in [
            "source.connectivity",
            "source.authentication",
            "target.connectivity",
            "target.authentication",
            "versions",
            "source.topology",
            "target.topology",
            "source.privileges",
            "target.privileges",
            "oplogWindow",
            "target.namespaces",
            "target.metadata",
            "unsupportedObjects",
            "estimate",
        ] {
            assert_eq!(
                r.check(n).map(|c| c.status),
                Some(CheckStatus::Pass),
                "{n}: {r:#?}"
            );
        }
        assert!(r.summary.contains("all 14 checks passed"));
        let t = render_table(&r);
        assert!(t.contains("PASS  source.connectivity") && t.contains("OK: "));
    }

    #[test]
    fn unreachable_source_fails_and_skips_dependents() {
        let mut f = facts();
        f.source.reach = Reach::Unreachable("timeout".into());
        f.oplog = None;
        let r = evaluate(&f, &Options::default());
        assert!(!r.ok);
        assert_eq!(
            r.check("source.connectivity").map(|c| c.status),
            Some(CheckStatus::Fail)
        );
        assert_eq!(
            r.check("versions").map(|c| c.status),
            Some(CheckStatus::Warn)
        );
        assert!(r
            .check("oplogWindow")
            .is_some_and(|c| c.reason.contains("not checked")));
        assert!(render_table(&r).contains("FAILED"));
    }

    #[test]
    fn wrong_password_fails_authentication_only() {
        let mut f = facts();
        f.target.reach = Reach::AuthFailed("bad".into());
        let r = evaluate(&f, &Options::default());
        assert_eq!(
            r.check("target.connectivity").map(|c| c.status),
            Some(CheckStatus::Pass)
        );
        assert_eq!(
            r.check("target.authentication").map(|c| c.status),
            Some(CheckStatus::Fail)
        );
        assert!(!r.ok);
    }

    #[test]
    fn warnings_do_not_fail() {
        let mut f = facts();
        f.unsupported.push(Unsupported {
            ns: "app.ts".into(),
            why: "x".into(),
        });
        let r = evaluate(&f, &Options::default());
        assert!(r.ok);
        assert!(r.summary.contains("warning"));
    }

    #[test]
    fn throughput_default_and_override() {
        assert_eq!(
            Options::default().throughput(),
            checks::DEFAULT_THROUGHPUT_MBPS
        );
        let o = Options {
            throughput_mbps: Some(0.5),
            ..Default::default()
        };
        assert_eq!(o.throughput(), 0.5);
        let bad = Options {
            throughput_mbps: Some(-1.0),
            ..Default::default()
        };
        assert_eq!(bad.throughput(), checks::DEFAULT_THROUGHPUT_MBPS);
    }
}
