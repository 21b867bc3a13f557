//! Checks of the Helm chart's static files that need no Kubernetes (charts/mongoferry/):
//! its appVersion is the crate's version, and its Grafana dashboard uses only metrics that
//! docs/metrics.md documents (tests in telemetry::metrics and operator::metrics keep that page
//! equal to what /metrics exports). The CRD copy is checked in api::crd; rendering, install
//! and `helm test` in e2e/tests/chart.rs.

use std::collections::BTreeSet;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mongoferry");

fn read(rel: &str) -> String {
    let path = format!("{CHART}/{rel}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn app_version_is_the_crate_version() {
    let chart: serde_yaml::Value = serde_yaml::from_str(&read("Chart.yaml")).expect("Chart.yaml");
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "charts/mongoferry/Chart.yaml appVersion must be the crate version"
    );
}

/// Every string under a key named `expr`, `query` or `definition` (PromQL of panels and
/// template variables).
fn promql(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => promql(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| promql(x, out)),
        _ => {}
    }
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bmongoferry_[a-z0-9_]*[a-z0-9]").expect("regex");
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

fn documented_metrics() -> BTreeSet<String> {
    crate::test_support::documented_metrics(|n| n.starts_with("mongoferry_"))
        .into_iter()
        .collect()
}

#[test]
fn dashboard_uses_only_documented_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("dashboards/mongoferry.json")).expect("dashboard is JSON");
    let mut queries = Vec::new();
    promql(&dash, &mut queries);
    assert!(queries.len() >= 10, "only {} queries", queries.len());
    let documented = documented_metrics();
    let mut used = BTreeSet::new();
    for q in &queries {
        for name in metric_names(q) {
            // Histograms are documented by their base name.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| documented.contains(*b))
                .map(str::to_string)
                .unwrap_or_else(|| name.clone());
            assert!(
                documented.contains(&base),
                "the dashboard queries {name}, which docs/metrics.md does not list:\n{q}"
            );
            used.insert(base);
        }
    }
    // What the dashboard is for: progress and ETA, lag, events/s, errors, worker restarts.
    for needed in [
        "mongoferry_operator_job_copy_progress_ratio",
        "mongoferry_operator_job_copy_eta_seconds",
        "mongoferry_operator_job_lag_seconds",
        "mongoferry_operator_job_events_applied_total",
        "mongoferry_operator_reconcile_errors_total",
        "mongoferry_operator_job_worker_restarts_total",
    ] {
        assert!(used.contains(needed), "the dashboard lacks {needed}");
    }
    // Panel ids are unique (Grafana keys panels by id).
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    let q = "sum by (le) (rate(mongoferry_operator_reconcile_duration_seconds_bucket[5m])) / max(mongoferry_lag_seconds{state=\"x\"})";
    let names: Vec<String> = metric_names(q).into_iter().collect();
    assert_eq!(
        names,
        vec![
            "mongoferry_lag_seconds".to_string(),
            "mongoferry_operator_reconcile_duration_seconds_bucket".to_string()
        ]
    );
}
