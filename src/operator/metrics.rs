//! Operator metrics (`mongoferry_operator_*`) and the /metrics + /healthz endpoint.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::api::crd::MigrationJobStatus;
use crate::api::State;

/// Label naming the MigrationJob. Not `job`: Prometheus gives every target a `job` label, and
/// a metric's own `job` would be renamed `exported_job`.
pub const LABEL_JOB: &str = "migrationjob";

pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounter,
    pub reconcile_duration: Histogram,
    pub errors: IntCounterVec,
    pub job_state: GaugeVec,
    pub job_progress: GaugeVec,
    pub job_lag: GaugeVec,
    pub job_eta: GaugeVec,
    pub job_events_applied: IntCounterVec,
    pub job_worker_restarts: IntCounterVec,
    pub leader: IntGauge,
    names: Vec<String>,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("mongoferry_operator".into()), None)?;
        let reconciles = IntCounter::new("reconciles_total", "Reconciliations run")?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "reconcile_duration_seconds",
                "Duration of one reconciliation",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Failed reconciliations by error kind",
            ),
            &["kind"],
        )?;
        let job_state = GaugeVec::new(
            Opts::new("job_state", "1 for the state each MigrationJob is in"),
            &["namespace", LABEL_JOB, "state"],
        )?;
        let job_progress = GaugeVec::new(
            Opts::new("job_copy_progress_ratio", "Initial copy progress (0 to 1)"),
            &["namespace", LABEL_JOB],
        )?;
        let job_lag = GaugeVec::new(
            Opts::new("job_lag_seconds", "Replication lag reported by the worker"),
            &["namespace", LABEL_JOB],
        )?;
        let job_eta = GaugeVec::new(
            Opts::new(
                "job_copy_eta_seconds",
                "Estimated seconds until the initial copy completes",
            ),
            &["namespace", LABEL_JOB],
        )?;
        let job_events_applied = IntCounterVec::new(
            Opts::new(
                "job_events_applied_total",
                "Change events the job's worker applied to the target",
            ),
            &["namespace", LABEL_JOB],
        )?;
        let job_worker_restarts = IntCounterVec::new(
            Opts::new(
                "job_worker_restarts_total",
                "Restarts of the job's worker container",
            ),
            &["namespace", LABEL_JOB],
        )?;
        let leader = IntGauge::new("leader", "1 while this replica runs the controller")?;
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(reconciles.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(errors.clone()),
            Box::new(job_state.clone()),
            Box::new(job_progress.clone()),
            Box::new(job_lag.clone()),
            Box::new(job_eta.clone()),
            Box::new(job_events_applied.clone()),
            Box::new(job_worker_restarts.clone()),
            Box::new(leader.clone()),
        ];
        let mut names = Vec::new();
        for c in collectors {
            names.extend(
                c.desc()
                    .iter()
                    .map(|d| format!("mongoferry_operator_{}", d.fq_name)),
            );
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            job_state,
            job_progress,
            job_lag,
            job_eta,
            job_events_applied,
            job_worker_restarts,
            leader,
            names,
        })
    }

    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn set_job(&self, ns: &str, job: &str, st: &MigrationJobStatus) {
        let current = st.state.as_deref().unwrap_or("pending");
        for s in State::ALL.iter().map(|s| s.as_str()).chain(["pending"]) {
            self.job_state
                .with_label_values(&[ns, job, s])
                .set(if s == current { 1.0 } else { 0.0 });
        }
        if let Some(c) = &st.copy {
            self.job_progress
                .with_label_values(&[ns, job])
                .set(f64::from(c.percent) / 100.0);
        }
        if let Some(l) = st.replication.as_ref().and_then(|r| r.lag_seconds) {
            self.job_lag.with_label_values(&[ns, job]).set(l as f64);
        }
        match st.copy.as_ref().and_then(|c| c.eta_seconds) {
            Some(eta) => self.job_eta.with_label_values(&[ns, job]).set(eta as f64),
            None => {
                let _ = self.job_eta.remove_label_values(&[ns, job]);
            }
        }
        if let Some(r) = &st.replication {
            mirror(&self.job_events_applied, ns, job, r.events_applied);
        }
        if let Some(p) = &st.worker_pod {
            mirror(
                &self.job_worker_restarts,
                ns,
                job,
                u64::try_from(p.restarts).unwrap_or(0),
            );
        }
    }

    /// Full names of every family, including those without samples yet.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    pub fn forget_job(&self, ns: &str, job: &str) {
        for s in State::ALL.iter().map(|s| s.as_str()).chain(["pending"]) {
            let _ = self.job_state.remove_label_values(&[ns, job, s]);
        }
        let _ = self.job_progress.remove_label_values(&[ns, job]);
        let _ = self.job_lag.remove_label_values(&[ns, job]);
        let _ = self.job_eta.remove_label_values(&[ns, job]);
        let _ = self.job_events_applied.remove_label_values(&[ns, job]);
        let _ = self.job_worker_restarts.remove_label_values(&[ns, job]);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Make counter `c{namespace,job}` show `value`, a total kept elsewhere (the job's status).
/// A smaller value (a new worker pod counts restarts from 0) starts the series over, which
/// Prometheus' rate() and increase() read as a counter reset.
fn mirror(c: &IntCounterVec, ns: &str, job: &str, value: u64) {
    let current = c.with_label_values(&[ns, job]).get();
    if value < current {
        let _ = c.remove_label_values(&[ns, job]);
        c.with_label_values(&[ns, job]).inc_by(value);
    } else {
        c.with_label_values(&[ns, job]).inc_by(value - current);
    }
}

/// Serve /metrics and /healthz until the process ends.
pub async fn serve(
    addr: String,
    metrics: std::sync::Arc<Metrics>,
) -> Result<(), super::error::Error> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
        super::error::Error::MetricsListen {
            addr: addr.clone(),
            detail: e.to_string(),
        }
    })?;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        m.render(),
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .await
        .map_err(|e| super::error::Error::MetricsListen {
            addr,
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_families() {
        let m = Metrics::new().expect("metrics");
        m.observe_reconcile(Duration::from_millis(20));
        m.errors.with_label_values(&["kube"]).inc();
        let st = MigrationJobStatus {
            state: Some("running".into()),
            ..Default::default()
        };
        m.set_job("ns", "j", &st);
        let out = m.render();
        for needle in [
            "mongoferry_operator_reconciles_total 1",
            "mongoferry_operator_reconcile_duration_seconds_bucket",
            "mongoferry_operator_reconcile_errors_total{kind=\"kube\"} 1",
            "mongoferry_operator_job_state{migrationjob=\"j\",namespace=\"ns\",state=\"running\"} 1",
        ] {
            assert!(out.contains(needle), "{needle} missing in\n{out}");
        }
        m.forget_job("ns", "j");
        assert!(!m.render().contains("migrationjob=\"j\""));
    }

    #[test]
    fn job_totals_mirror_the_status() {
        let m = Metrics::new().expect("metrics");
        let mut st = MigrationJobStatus {
            state: Some("running".into()),
            copy: Some(crate::api::crd::CopyStatus {
                percent: 40,
                eta_seconds: Some(90),
                ..Default::default()
            }),
            replication: Some(crate::api::crd::ReplicationStatus {
                events_applied: 120,
                ..Default::default()
            }),
            worker_pod: Some(crate::api::crd::WorkerPodStatus {
                name: "j-worker".into(),
                restarts: 2,
                ip: None,
            }),
            ..Default::default()
        };
        m.set_job("ns", "j", &st);
        if let Some(r) = st.replication.as_mut() {
            r.events_applied = 150;
        }
        m.set_job("ns", "j", &st);
        let out = m.render();
        for needle in [
            "mongoferry_operator_job_copy_eta_seconds{migrationjob=\"j\",namespace=\"ns\"} 90",
            "mongoferry_operator_job_events_applied_total{migrationjob=\"j\",namespace=\"ns\"} 150",
            "mongoferry_operator_job_worker_restarts_total{migrationjob=\"j\",namespace=\"ns\"} 2",
        ] {
            assert!(out.contains(needle), "{needle} missing in\n{out}");
        }
        // A replaced pod counts restarts from 0 again: the series starts over.
        st.worker_pod = Some(crate::api::crd::WorkerPodStatus {
            name: "j-worker".into(),
            restarts: 0,
            ip: None,
        });
        st.copy = None;
        m.set_job("ns", "j", &st);
        let out = m.render();
        assert!(
            out.contains(
                "mongoferry_operator_job_worker_restarts_total{migrationjob=\"j\",namespace=\"ns\"} 0"
            ),
            "{out}"
        );
        assert!(!out.contains("job_copy_eta_seconds{"), "{out}");
    }

    /// Every operator metric is documented in docs/metrics.md, and vice versa.
    #[test]
    fn docs_list_exactly_the_operator_metrics() {
        let documented =
            crate::test_support::documented_metrics(|n| n.starts_with("mongoferry_operator_"));
        let mut exported = Metrics::new().expect("metrics").names();
        exported.sort();
        assert_eq!(documented, exported);
    }
}
