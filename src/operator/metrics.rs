//! Operator metrics (`mongoferry_operator_*`) and the /metrics + /healthz endpoint.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::api::crd::MigrationJobStatus;
use crate::api::State;

pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounter,
    pub reconcile_duration: Histogram,
    pub errors: IntCounterVec,
    pub job_state: GaugeVec,
    pub job_progress: GaugeVec,
    pub job_lag: GaugeVec,
    pub leader: IntGauge,
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
            &["namespace", "job", "state"],
        )?;
        let job_progress = GaugeVec::new(
            Opts::new("job_copy_progress_ratio", "Initial copy progress (0 to 1)"),
            &["namespace", "job"],
        )?;
        let job_lag = GaugeVec::new(
            Opts::new("job_lag_seconds", "Replication lag reported by the worker"),
            &["namespace", "job"],
        )?;
        let leader = IntGauge::new("leader", "1 while this replica runs the controller")?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(job_state.clone()))?;
        registry.register(Box::new(job_progress.clone()))?;
        registry.register(Box::new(job_lag.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Metrics {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            job_state,
            job_progress,
            job_lag,
            leader,
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
    }

    pub fn forget_job(&self, ns: &str, job: &str) {
        for s in State::ALL.iter().map(|s| s.as_str()).chain(["pending"]) {
            let _ = self.job_state.remove_label_values(&[ns, job, s]);
        }
        let _ = self.job_progress.remove_label_values(&[ns, job]);
        let _ = self.job_lag.remove_label_values(&[ns, job]);
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
            "mongoferry_operator_job_state{job=\"j\",namespace=\"ns\",state=\"running\"} 1",
        ] {
            assert!(out.contains(needle), "{needle} missing in\n{out}");
        }
        m.forget_job("ns", "j");
        assert!(!m.render().contains("job=\"j\""));
    }
}
