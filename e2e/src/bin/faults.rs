//! The fault matrix (issue 8), as its own command:
//!
//! ```text
//! cargo build && cargo run -p mongoferry-e2e --bin faults -- --full
//! ```
//!
//! Runs every case one after the other (each starts its own servers and worker) and writes the
//! summary table into docs/reliability.md (between the `results` markers). `--quick` runs the
//! CI subset; `--only TEXT` runs the cases whose group contains TEXT; `--out FILE` writes
//! elsewhere; `--no-write` only prints.

use std::time::{Duration, Instant};

use mongoferry_e2e::faults::{
    guarded, secret_scan, server_fault, slow_target, summary, tls_cases, worker_kills, CaseResult,
    Phase, ServerFault, Side,
};

type Case = (
    &'static str,
    String,
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<CaseResult>> + Send>>,
);

fn one(
    group: &'static str,
    f: impl std::future::Future<Output = CaseResult> + Send + 'static,
) -> Case {
    (
        group,
        group.to_string(),
        Box::pin(async move { vec![f.await] }),
    )
}

fn fail(commands: &[&'static str], code: Option<i32>, wce: bool, times: i32) -> ServerFault {
    ServerFault::FailCommand {
        commands: commands.to_vec(),
        error_code: code,
        wce,
        times,
    }
}

fn cases(full: bool) -> Vec<Case> {
    let mut v: Vec<Case> = Vec::new();
    let kill_runs: &[u64] = if full { &[1, 2, 3, 4] } else { &[1] };
    for &seed in kill_runs {
        v.push((
            "worker SIGKILL",
            format!("seed {seed}"),
            Box::pin(worker_kills(seed, 2500, !full)),
        ));
    }
    let restart = ServerFault::KillRestart(Duration::from_secs(2));
    let mut servers = vec![
        (Side::Source, Phase::Replication, restart.clone()),
        (Side::Target, Phase::Copy, restart.clone()),
    ];
    if full {
        servers.extend([
            (Side::Source, Phase::Copy, restart.clone()),
            (Side::Target, Phase::Replication, restart.clone()),
            (Side::Source, Phase::Replication, ServerFault::StepDown),
            (Side::Target, Phase::Replication, ServerFault::StepDown),
            (Side::Source, Phase::Copy, ServerFault::StepDown),
            (Side::Target, Phase::Copy, ServerFault::StepDown),
            (
                Side::Source,
                Phase::Replication,
                ServerFault::NetworkCut(Duration::from_secs(5)),
            ),
            (
                Side::Target,
                Phase::Copy,
                ServerFault::NetworkCut(Duration::from_secs(5)),
            ),
            // Copy reads.
            (
                Side::Source,
                Phase::Copy,
                fail(&["find", "getMore"], None, false, 4),
            ),
            (
                Side::Source,
                Phase::Copy,
                fail(&["find", "getMore"], Some(10107), false, 4),
            ),
            (
                Side::Source,
                Phase::Copy,
                fail(&["getMore"], Some(43), false, 2),
            ),
            // Copy inserts.
            (Side::Target, Phase::Copy, fail(&["insert"], None, false, 4)),
            (
                Side::Target,
                Phase::Copy,
                fail(&["insert"], Some(10107), false, 4),
            ),
            (Side::Target, Phase::Copy, fail(&["insert"], None, true, 4)),
            // The change stream.
            (
                Side::Source,
                Phase::Replication,
                fail(&["aggregate", "getMore"], None, false, 4),
            ),
            (
                Side::Source,
                Phase::Replication,
                fail(&["aggregate", "getMore"], Some(10107), false, 4),
            ),
            (
                Side::Source,
                Phase::Replication,
                fail(&["getMore"], Some(43), false, 2),
            ),
            // Bulk writes of replication.
            (
                Side::Target,
                Phase::Replication,
                fail(&["update", "delete"], None, false, 4),
            ),
            (
                Side::Target,
                Phase::Replication,
                fail(&["update", "delete"], Some(10107), false, 4),
            ),
            (
                Side::Target,
                Phase::Replication,
                fail(&["update", "delete"], None, true, 4),
            ),
        ]);
    } else {
        servers.push((
            Side::Target,
            Phase::Replication,
            fail(&["update", "delete"], Some(10107), false, 4),
        ));
    }
    for (side, phase, fault) in servers {
        v.push(one("server fault", server_fault(side, phase, fault)));
    }
    v.push(one(
        "slow target",
        slow_target(100_000, Duration::from_secs(if full { 30 } else { 15 })),
    ));
    v.push(("TLS", "TLS".into(), Box::pin(tls_cases())));
    v.push(one("secret scan", secret_scan()));
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = !args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reliability.md").to_string()
        });
    let write = !args.iter().any(|a| a == "--no-write");
    let t0 = Instant::now();
    let mut results: Vec<CaseResult> = Vec::new();
    for (group, name, fut) in cases(full) {
        if let Some(o) = &only {
            if !group.contains(o.as_str()) && !name.contains(o.as_str()) {
                continue;
            }
        }
        let t = Instant::now();
        eprintln!("== {group}: {name}");
        let rs = guarded(group, &name, fut).await;
        for r in &rs {
            eprintln!(
                "   {} {} — {} (data equal {:?}, recovery {:?})",
                if r.passed { "PASS" } else { "FAIL" },
                r.name,
                r.outcome,
                r.data_equal,
                r.recover_secs
            );
            if !r.passed {
                eprintln!("{}", r.detail.chars().take(4000).collect::<String>());
            }
        }
        eprintln!("   ({:.0}s)", t.elapsed().as_secs_f64());
        results.extend(rs);
    }
    let table = summary(&results);
    println!("{table}");
    let passed = results.iter().filter(|r| r.passed).count();
    println!(
        "{passed}/{} cases passed in {:.0} min",
        results.len(),
        t0.elapsed().as_secs_f64() / 60.0
    );
    if write && only.is_none() {
        let doc = std::fs::read_to_string(&out).unwrap_or_default();
        let (start, end) = ("<!-- results:start -->", "<!-- results:end -->");
        let when = format!(
            "Run: `cargo run -p mongoferry-e2e --bin faults -- {}` — {passed}/{} cases passed in {:.0} min.\n\n",
            if full { "--full" } else { "--quick" },
            results.len(),
            t0.elapsed().as_secs_f64() / 60.0
        );
        let body = format!("{start}\n{when}{table}{end}");
        let new = match (doc.find(start), doc.find(end)) {
            (Some(a), Some(b)) if b > a => {
                format!("{}{body}{}", &doc[..a], &doc[b + end.len()..])
            }
            _ => format!("{doc}\n{body}\n"),
        };
        std::fs::write(&out, new).expect("write the summary");
        eprintln!("summary written to {out}");
    }
    if passed != results.len() {
        std::process::exit(1);
    }
}
