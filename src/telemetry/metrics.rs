//! Worker metrics (Prometheus, prefix `mongoferry_`). Every name here is documented in
//! docs/metrics.md, and a test keeps the two lists equal.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::api::State;

pub struct Metrics {
    registry: Registry,
    pub events_read: IntCounter,
    pub events_applied: IntCounter,
    pub copy_read_bytes: IntCounter,
    pub copy_read_documents: IntCounter,
    pub copy_insert_bytes: IntCounter,
    pub copy_insert_documents: IntCounter,
    pub copy_partitions_skipped: IntCounter,
    pub estimated_total_bytes: IntGauge,
    pub lag_seconds: Gauge,
    pub applier_queue_depth: IntGaugeVec,
    pub flush_duration: Histogram,
    pub flush_ops: Histogram,
    pub ddl_applied: IntCounterVec,
    pub refetches: IntCounter,
    /// Source transactions applied, each as one target transaction.
    pub txns_applied: IntCounter,
    /// Source transactions applied operation by operation (too large for one target
    /// transaction): the documented exception to atomic transactions.
    pub txns_split: IntCounter,
    /// Source transactions taken as complete after waiting (`repl::OPEN_TXN_WAIT`) without
    /// proof from the change stream (SecantusDB's Rust server only).
    pub txns_unproven: IntCounter,
    pub txn_ops: Histogram,
    /// Time an applier waited for other appliers before committing a transaction.
    pub txn_barrier: Histogram,
    pub errors: IntCounterVec,
    pub state: IntGaugeVec,
    pub verify_documents: IntCounter,
    pub verify_mismatches: IntGauge,
    pub index_restore_failures: IntGauge,
    /// Fenced write batches, by outcome (read from the fence before each scrape).
    pub fence_batches: IntGaugeVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(format!("mongoferry_{name}"), help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(format!("mongoferry_{name}"), help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let applier_queue_depth = IntGaugeVec::new(
            Opts::new(
                "mongoferry_applier_queue_depth",
                "Events waiting in each replication applier's queue",
            ),
            &["worker"],
        )
        .expect("valid metric");
        r.register(Box::new(applier_queue_depth.clone()))
            .expect("unique metric");
        let fence_batches = IntGaugeVec::new(
            Opts::new(
                "mongoferry_fence_batches",
                "Fenced write batches of this process: committed, or refused because another worker took the migration over",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        r.register(Box::new(fence_batches.clone()))
            .expect("unique metric");
        let flush_duration = Histogram::with_opts(
            HistogramOpts::new(
                "mongoferry_flush_duration_seconds",
                "Duration of one applier bulk flush to the target",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(flush_duration.clone()))
            .expect("unique metric");
        let flush_ops = Histogram::with_opts(
            HistogramOpts::new(
                "mongoferry_flush_operations",
                "Write operations in one applier bulk flush",
            )
            .buckets(vec![1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0]),
        )
        .expect("valid metric");
        r.register(Box::new(flush_ops.clone()))
            .expect("unique metric");
        let txn_ops = Histogram::with_opts(
            HistogramOpts::new(
                "mongoferry_transaction_operations",
                "Operations per source transaction applied",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10000.0]),
        )
        .expect("valid metric");
        r.register(Box::new(txn_ops.clone()))
            .expect("unique metric");
        let txn_barrier = Histogram::with_opts(
            HistogramOpts::new(
                "mongoferry_transaction_barrier_seconds",
                "Time an applier waited for the appliers owning a transaction's other documents before committing it",
            )
            .buckets(vec![0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0]),
        )
        .expect("valid metric");
        r.register(Box::new(txn_barrier.clone()))
            .expect("unique metric");
        let ddl_applied = IntCounterVec::new(
            Opts::new(
                "mongoferry_ddl_applied_total",
                "DDL events applied to the target, by operation",
            ),
            &["operation"],
        )
        .expect("valid metric");
        r.register(Box::new(ddl_applied.clone()))
            .expect("unique metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "mongoferry_errors_total",
                "Errors met by the engine, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        r.register(Box::new(errors.clone())).expect("unique metric");
        let state = IntGaugeVec::new(
            Opts::new(
                "mongoferry_state",
                "1 for the engine's current state, 0 for the others",
            ),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(state.clone())).expect("unique metric");
        let lag_seconds = Gauge::new(
            "mongoferry_lag_seconds",
            "Source cluster time minus the op time of the last applied event",
        )
        .expect("valid metric");
        r.register(Box::new(lag_seconds.clone()))
            .expect("unique metric");
        let m = Metrics {
            events_read: counter(
                &r,
                "events_read_total",
                "Change events read from the source",
            ),
            events_applied: counter(
                &r,
                "events_applied_total",
                "Change events applied to the target",
            ),
            copy_read_bytes: counter(
                &r,
                "copy_read_bytes_total",
                "Bytes of documents read from the source by the copy",
            ),
            copy_read_documents: counter(
                &r,
                "copy_read_documents_total",
                "Documents read from the source by the copy",
            ),
            copy_insert_bytes: counter(
                &r,
                "copy_insert_bytes_total",
                "Bytes of documents inserted into the target by the copy",
            ),
            copy_insert_documents: counter(
                &r,
                "copy_insert_documents_total",
                "Documents inserted into the target by the copy",
            ),
            copy_partitions_skipped: counter(
                &r,
                "copy_partitions_skipped_total",
                "Copy partitions found finished by an earlier run and not copied again",
            ),
            estimated_total_bytes: int_gauge(
                &r,
                "estimated_total_bytes",
                "Estimated bytes of all selected collections",
            ),
            refetches: counter(
                &r,
                "refetches_total",
                "Update events applied by re-reading the document from the source",
            ),
            txns_applied: counter(
                &r,
                "transactions_applied_total",
                "Source transactions applied, each as one target transaction",
            ),
            txns_split: counter(
                &r,
                "transactions_split_total",
                "Source transactions too large for one target transaction, applied operation by operation",
            ),
            txns_unproven: counter(
                &r,
                "transactions_unproven_total",
                "Source transactions taken as complete after the wait, without proof from the change stream",
            ),
            txn_ops,
            txn_barrier,
            verify_documents: counter(
                &r,
                "verify_documents_total",
                "Documents compared by finalize's verification",
            ),
            verify_mismatches: int_gauge(
                &r,
                "verify_mismatches",
                "Differences found by the last verification",
            ),
            index_restore_failures: int_gauge(
                &r,
                "index_restore_failures",
                "Indexes finalize could not restore to their source definition",
            ),
            lag_seconds,
            applier_queue_depth,
            flush_duration,
            flush_ops,
            ddl_applied,
            errors,
            state,
            fence_batches,
            registry: r,
        };
        m.set_state(State::Idle);
        // Make the labelled families visible from the start (at 0); the engine adds the DDL
        // operations it knows (`Metrics::show_ddl`).
        m.errors.with_label_values(&["mongo"]);
        m.applier_queue_depth.with_label_values(&["0"]);
        m.set_fence(0, 0);
        m
    }

    /// Show `mongoferry_ddl_applied_total` at 0 for each of these operations.
    pub fn show_ddl(&self, operations: &[&str]) {
        for op in operations {
            self.ddl_applied.with_label_values(&[op]);
        }
    }

    pub fn set_fence(&self, committed: u64, refused: u64) {
        self.fence_batches
            .with_label_values(&["committed"])
            .set(committed as i64);
        self.fence_batches
            .with_label_values(&["refused"])
            .set(refused as i64);
    }

    pub fn set_state(&self, s: State) {
        for st in State::ALL {
            self.state
                .with_label_values(&[st.as_str()])
                .set(i64::from(st == s));
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Names of every metric family (for the docs test).
    pub fn names(&self) -> Vec<String> {
        self.registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the worker exports is documented in docs/metrics.md, and vice versa.
    #[test]
    fn docs_list_exactly_the_exported_metrics() {
        let documented = crate::test_support::documented_metrics(|n| {
            n.starts_with("mongoferry_") && !n.starts_with("mongoferry_operator_")
        });
        let m = Metrics::new();
        // The engine shows its DDL operations at start (`Engine::new`).
        m.show_ddl(&["create"]);
        let mut exported = m.names();
        exported.sort();
        assert_eq!(documented, exported);
        let text = Metrics::new().render();
        assert!(
            text.contains("mongoferry_state{state=\"idle\"} 1"),
            "{text}"
        );
    }
}
