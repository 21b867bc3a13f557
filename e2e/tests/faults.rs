//! Reliability and security, quick subset (issue 8), run in CI in a few minutes: worker
//! SIGKILLs in the copy, replication and finalize; the source killed and restarted during
//! replication and the target during the copy; one `failCommand` failpoint on the Python
//! server; a throttled (slow) target; TLS with the right and a wrong CA; the secret scan.
//!
//! The full matrix (20 worker kills, every server fault, failpoints on every operation) is
//! `cargo run -p mongoferry-e2e --bin faults -- --full`; its summary is in docs/reliability.md.
//! Fencing, API fuzzing and edge documents are in `reliability.rs`; the API token is enforced
//! by `engine.rs::api_refuses_clearly`.
//!
//! Build the worker first (`cargo build`); run with `--test-threads=1` on small machines.

use std::time::Duration;

use mongoferry_e2e::faults::{
    guarded, secret_scan, server_fault, slow_target, summary, tls_cases, worker_kills, CaseResult,
    Phase, ServerFault, Side,
};

fn check(results: &[CaseResult]) {
    println!("{}", summary(results));
    for r in results {
        assert!(
            !r.silent_difference(),
            "SILENT DIFFERENCE in {}: {}",
            r.name,
            r.detail
        );
        assert!(r.passed, "{} failed: {}\n{}", r.name, r.outcome, r.detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkill_in_copy_replication_and_finalize() {
    check(&guarded("worker SIGKILL", "seed 1", worker_kills(1, 2500, true)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_restart_during_replication() {
    let r = server_fault(
        Side::Source,
        Phase::Replication,
        ServerFault::KillRestart(Duration::from_secs(2)),
    );
    check(
        &guarded(
            "source restart",
            "source restart",
            async move { vec![r.await] },
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_restart_during_copy() {
    let r = server_fault(
        Side::Target,
        Phase::Copy,
        ServerFault::KillRestart(Duration::from_secs(2)),
    );
    check(
        &guarded(
            "target restart",
            "target restart",
            async move { vec![r.await] },
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_on_replication_writes() {
    let r = server_fault(
        Side::Target,
        Phase::Replication,
        ServerFault::FailCommand {
            commands: vec!["update", "delete"],
            error_code: Some(10107),
            wce: false,
            times: 4,
        },
    );
    check(&guarded("failpoint", "failpoint", async move { vec![r.await] }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_target_lags_but_loses_nothing() {
    let r = slow_target(100_000, Duration::from_secs(15));
    check(&guarded("slow target", "slow target", async move { vec![r.await] }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_right_and_wrong_ca() {
    check(&guarded("TLS", "TLS", tls_cases()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_status_or_metrics() {
    check(&guarded("secrets", "secrets", async { vec![secret_scan().await] }).await);
}
