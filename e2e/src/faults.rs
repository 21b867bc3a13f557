//! The fault matrix: a worker migrating between two SecantusDB servers under the seeded
//! workload while faults are injected — worker SIGKILLs, server kills and restarts, step-downs,
//! `failCommand` failpoints, a throttled target, TLS with a right and a wrong CA — and a
//! scanner that looks for secrets in everything the worker exposes.
//!
//! Every case ends either with `finalized` and the comparator finding no difference, or with
//! an explicit `failed` state whose message names the cause (only where a case expects it).
//! A case that finalizes with a difference is a *silent difference*, the one outcome that must
//! never happen.
//!
//! Used by `e2e/tests/faults.rs` (quick subset) and `src/bin/faults.rs` (the full matrix,
//! which writes docs/reliability.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::certs::make_certs;
use crate::compare::{compare, render, CompareOptions};
use crate::faultproxy::FaultProxy;
use crate::fixtures::{worker_opts, PasswordFiles};
use crate::servers::{MongoServer, ServerKind, ServerOptions};
use crate::worker::{WorkerOptions, WorkerProcess};
use crate::workload::{seed_dataset, SeedSpec, SizeDistribution, Workload, WorkloadConfig};

/// The outcome of one case.
#[derive(Debug, Clone, Default)]
pub struct CaseResult {
    /// Group in the summary table (e.g. "worker SIGKILL during copy").
    pub group: String,
    pub name: String,
    pub passed: bool,
    /// `Some(true)`: finalized and the comparator found nothing; `Some(false)`: a difference
    /// after finalize (a silent difference); `None`: the case ended in an expected `failed`.
    pub data_equal: Option<bool>,
    /// From the end of the fault until the worker was back where it was (seconds).
    pub recover_secs: Option<f64>,
    /// How the migration ended: `finalized`, or `failed: <message>`.
    pub outcome: String,
    /// Transient errors the worker retried (from its log).
    pub retries: usize,
    pub detail: String,
    pub secs: f64,
}

impl CaseResult {
    pub fn silent_difference(&self) -> bool {
        self.data_equal == Some(false)
    }
}

type R<T> = std::result::Result<T, String>;

fn ms(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Poll the worker's status until `pred` holds. `failed` ends the wait with its message.
pub async fn poll(
    w: &WorkerProcess,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> R<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = w.status().await;
        if pred(&last) {
            return Ok(last);
        }
        if last["state"] == "failed" {
            return Err(format!(
                "failed while waiting for {what}: {}",
                last["error"].as_str().unwrap_or("")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "timed out after {timeout:?} waiting for {what}; last status: state {} info {} lag {} initialSync {}",
        last["state"], last["info"], last["lagTimeSeconds"], last["initialSync"]
    ))
}

fn cloned(s: &Value) -> u64 {
    s["initialSync"]["clonedDocuments"].as_u64().unwrap_or(0)
}

fn copy_done(s: &Value) -> bool {
    s["initialSync"]["cloneCompleted"] == true || s["initialSync"]["completed"] == true
}

fn caught_up(s: &Value, lag: f64) -> bool {
    s["initialSync"]["completed"] == true && s["lagTimeSeconds"].as_f64().is_some_and(|l| l < lag)
}

/// Write a marker document on the source and wait until the worker has replicated it to the
/// target: the end-to-end proof that replication works again. Returns the seconds it took.
pub async fn marker_through(
    w: &WorkerProcess,
    src: &Client,
    dst: &Client,
    tag: &str,
    timeout: Duration,
) -> R<f64> {
    let t = Instant::now();
    let deadline = t + timeout;
    let id = format!("marker-{tag}");
    let coll = |c: &Client| c.database("wl_app").collection::<Document>("fault_markers");
    loop {
        match coll(src).insert_one(doc! {"_id": &id}).await {
            Ok(_) => break,
            Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(we)) if we.code == 11000) => {
                break
            }
            Err(e) if Instant::now() > deadline => return Err(format!("marker insert: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    loop {
        if let Ok(Some(_)) = coll(dst).find_one(doc! {"_id": &id}).await {
            return Ok(t.elapsed().as_secs_f64());
        }
        let s = w.status().await;
        if s["state"] == "failed" {
            return Err(format!(
                "failed while waiting for the marker: {}",
                s["error"].as_str().unwrap_or("")
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the marker did not reach the target within {timeout:?}: state {} info {} lag {}",
                s["state"], s["info"], s["lagTimeSeconds"]
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Errors the worker counted (`mongoferry_errors_total`, every kind: retries in place and
/// from the checkpoint), plus the retries it logged — evidence that a fault reached it.
pub async fn retries_of(w: &WorkerProcess) -> usize {
    let m = w.metrics().await;
    let counted: f64 = m
        .lines()
        .filter(|l| l.starts_with("mongoferry_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (counted as usize).max(retries_in(&w.log()))
}

/// Transient errors the worker logged and retried.
pub fn retries_in(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains("transient error")
                || l.contains("; retrying")
                || l.contains("cannot start yet")
        })
        .count()
}

/// Slow copy settings: one collection, one reader, small batches (faults land inside it).
pub fn slow_copy() -> Value {
    json!({"clone": {"parallelCollections": 1, "readWorkers": 1, "insertWorkers": 1, "batchBytes": 65536}})
}

/// Seed `colls` collections of `docs` documents in each workload database (with the `_id: NaN`
/// and `_id: null` documents).
pub async fn seed(c: &Client, colls: usize, docs: u64, seed_no: u64) -> R<u64> {
    seed_with(c, colls, docs, seed_no, true).await
}

/// [`seed`], choosing whether to add the `_id: NaN` / `null` documents: secantusd-py refuses
/// every update of a document whose `_id` is NaN (code 66, docs/known-differences.md), so the
/// cases that fault the Python server leave them out.
pub async fn seed_with(c: &Client, colls: usize, docs: u64, seed_no: u64, special: bool) -> R<u64> {
    let mut total = 0;
    for (i, db) in ["wl_app", "wl_logs"].iter().enumerate() {
        for j in 0..colls {
            let mut spec = SeedSpec::new(db, &format!("c{j}"), docs);
            spec.sizes = SizeDistribution::Realistic { max: 16 * 1024 };
            spec.seed = seed_no * 100 + (i * 10 + j) as u64;
            spec.batch_size = 500;
            spec.special_ids = special;
            total += seed_dataset(c, &spec).await.map_err(ms)?.inserted;
        }
    }
    Ok(total)
}

pub fn workload_cfg(seed: u64, colls: usize, rate: u32) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        collections_per_db: colls,
        ops_per_sec: Some(rate),
        ddl: false,
        ..Default::default()
    }
}

/// Finalize (full verification) and compare strictly. Returns (outcome, data equal, detail).
pub async fn finalize_and_compare(
    w: &WorkerProcess,
    src: &Client,
    dst: &Client,
) -> (String, Option<bool>, String) {
    if let Err(e) = poll(
        w,
        "caught up before finalize",
        Duration::from_secs(300),
        |s| caught_up(s, 2.0),
    )
    .await
    {
        return (e.clone(), None, e);
    }
    let a = w.post("/finalize", json!({})).await;
    if a.code != 200 {
        let m = format!("finalize refused: {}", a.body);
        return (m.clone(), None, m);
    }
    finished_and_compared(w, src, dst).await
}

async fn finished_and_compared(
    w: &WorkerProcess,
    src: &Client,
    dst: &Client,
) -> (String, Option<bool>, String) {
    let st = match poll(w, "finalized", Duration::from_secs(600), |s| {
        s["state"] == "finalized"
    })
    .await
    {
        Ok(s) => s,
        Err(e) => return (e.clone(), None, e),
    };
    let mismatches = st["finalization"]["verification"]["mismatchCount"]
        .as_u64()
        .unwrap_or(0);
    match compare(src, dst, CompareOptions::default()).await {
        Ok(d) if d.is_empty() && mismatches == 0 => (
            "finalized".into(),
            Some(true),
            format!(
                "verified {} documents",
                st["finalization"]["verification"]["documentsChecked"]
            ),
        ),
        Ok(d) => (
            "finalized".into(),
            Some(false),
            format!(
                "{} differences (verification mismatches {mismatches}):\n{}",
                d.len(),
                render(&d[..d.len().min(10)])
            ),
        ),
        Err(e) => ("finalized".into(), None, format!("comparator error: {e}")),
    }
}

async fn server(kind: ServerKind, sync: bool, test_cmds: bool) -> R<MongoServer> {
    MongoServer::start(ServerOptions {
        kind,
        sync_on_commit: sync,
        enable_test_commands: test_cmds,
        ..Default::default()
    })
    .await
    .map_err(ms)
}

/// Run a case body as a task: a panic becomes a failed case instead of aborting the run.
pub async fn guarded<F>(group: &str, name: &str, f: F) -> Vec<CaseResult>
where
    F: std::future::Future<Output = Vec<CaseResult>> + Send + 'static,
{
    let t = Instant::now();
    match tokio::spawn(f).await {
        Ok(v) => v,
        Err(e) => {
            let msg = if e.is_panic() {
                let p = e.into_panic();
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into())
            } else {
                e.to_string()
            };
            vec![CaseResult {
                group: group.into(),
                name: name.into(),
                passed: false,
                outcome: "harness panic".into(),
                detail: msg.chars().take(3000).collect(),
                secs: t.elapsed().as_secs_f64(),
                ..Default::default()
            }]
        }
    }
}

// ---------------------------------------------------------------------------------------
// Worker SIGKILL at seeded random points.

#[derive(Debug, Clone, Copy, PartialEq)]
enum KillAt {
    /// Fraction of the documents copied.
    Copy(f64),
    /// Seconds after the copy completed.
    Replication(f64),
    /// Seconds after finalize was requested.
    Finalize(f64),
}

/// The kill points of run `seed`: two in the copy, two in replication, one in finalize.
fn kill_points(seed: u64) -> Vec<KillAt> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let c: [f64; 2] = [rng.random_range(0.05..0.5), rng.random_range(0.5..0.95)];
    vec![
        KillAt::Copy(c[0]),
        KillAt::Copy(c[1]),
        KillAt::Replication(rng.random_range(0.5..4.0)),
        KillAt::Replication(rng.random_range(0.5..4.0)),
        KillAt::Finalize(rng.random_range(0.0..1.5)),
    ]
}

/// One migration under the workload, SIGKILLed at five seeded random points (two in the copy,
/// two in replication, one in finalize); `quick` keeps three (copy, replication, finalize).
pub async fn worker_kills(seed: u64, docs_per_coll: u64, quick: bool) -> Vec<CaseResult> {
    let mut out: Vec<CaseResult> = Vec::new();
    let t0 = Instant::now();
    let r: R<()> = async {
        let src = server(ServerKind::Rust, false, false).await?;
        let dst = server(ServerKind::Rust, false, false).await?;
        let c = src.client();
        let total = self::seed(&c, 3, docs_per_coll, seed).await?;
        let mut w = WorkerProcess::start(worker_opts(src.uri(), dst.uri())).await;
        w.start_migration(slow_copy()).await;
        let wl = Workload::spawn(c.clone(), workload_cfg(seed, 3, 150));
        let mut wl = Some(wl);
        let points: Vec<KillAt> = kill_points(seed)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !quick || i % 2 == 0)
            .map(|(_, k)| k)
            .collect();
        for (i, at) in points.into_iter().enumerate() {
            let started = Instant::now();
            let (group, name) = match at {
                KillAt::Copy(f) => (
                    "worker SIGKILL during copy",
                    format!("seed {seed} kill {i}: copy at {:.0}%", f * 100.0),
                ),
                KillAt::Replication(s) => (
                    "worker SIGKILL during replication",
                    format!("seed {seed} kill {i}: replication +{s:.1}s"),
                ),
                KillAt::Finalize(s) => (
                    "worker SIGKILL during finalize",
                    format!("seed {seed} kill {i}: finalize +{s:.1}s"),
                ),
            };
            let mut res = CaseResult {
                group: group.into(),
                name,
                ..Default::default()
            };
            let prep: R<Value> = async {
                match at {
                    KillAt::Copy(f) => {
                        let want = (total as f64 * f) as u64;
                        poll(&w, "copy progress", Duration::from_secs(300), |s| {
                            cloned(s) >= want || copy_done(s)
                        })
                        .await
                    }
                    KillAt::Replication(s) => {
                        let st = poll(&w, "copy complete", Duration::from_secs(300), |s| {
                            s["initialSync"]["completed"] == true
                        })
                        .await?;
                        tokio::time::sleep(Duration::from_secs_f64(s)).await;
                        Ok(st)
                    }
                    KillAt::Finalize(s) => {
                        if let Some(h) = wl.take() {
                            h.stop().await;
                        }
                        poll(&w, "caught up", Duration::from_secs(300), |s| {
                            caught_up(s, 2.0)
                        })
                        .await?;
                        let a = w.post("/finalize", json!({})).await;
                        if a.code != 200 {
                            return Err(format!("finalize refused: {}", a.body));
                        }
                        tokio::time::sleep(Duration::from_secs_f64(s)).await;
                        Ok(w.status().await)
                    }
                }
            }
            .await;
            let before = match prep {
                Ok(s) => s,
                Err(e) => {
                    res.outcome = e.clone();
                    res.detail = e;
                    out.push(res);
                    continue;
                }
            };
            let before_now = w.status().await;
            let at_kill = cloned(&before_now).max(cloned(&before));
            let copy_was_done = copy_done(&before_now);
            let state_at_kill = before_now["state"].as_str().unwrap_or("").to_string();
            w.kill();
            let t = Instant::now();
            w.restart().await;
            let back = match at {
                KillAt::Copy(_) if !copy_was_done => {
                    // Past where it was, and past what the restarted worker restored from its
                    // finished partitions (copying really resumed).
                    let base = cloned(&w.status().await).max(at_kill);
                    poll(
                        &w,
                        "copy back where it was",
                        Duration::from_secs(300),
                        |s| cloned(s) > base || copy_done(s),
                    )
                    .await
                }
                KillAt::Finalize(_) => {
                    poll(&w, "finalized", Duration::from_secs(600), |s| {
                        s["state"] == "finalized"
                    })
                    .await
                }
                _ => {
                    let m = marker_through(
                        &w,
                        &c,
                        &dst.client(),
                        &format!("{seed}-{i}"),
                        Duration::from_secs(300),
                    )
                    .await;
                    m.map(|_| Value::Null)
                }
            };
            res.secs = started.elapsed().as_secs_f64();
            match back {
                Ok(_) => {
                    res.recover_secs = Some(t.elapsed().as_secs_f64());
                    res.passed = true;
                    res.outcome = format!(
                        "recovered (state at kill: {state_at_kill}{})",
                        if copy_was_done && matches!(at, KillAt::Copy(_)) {
                            ", copy had finished"
                        } else {
                            ""
                        }
                    );
                }
                Err(e) => {
                    res.outcome = e.clone();
                    res.detail = w.log_tail();
                }
            }
            out.push(res);
        }
        // The end: finalized (the last kill was inside finalize) and compared.
        let (outcome, equal, detail) = finished_and_compared(&w, &c, &dst.client()).await;
        for r in out.iter_mut() {
            r.data_equal = equal;
            r.passed &= equal == Some(true);
            if equal != Some(true) {
                r.detail = format!("{outcome}: {detail}\n{}", r.detail);
            }
            r.retries = retries_in(&w.log());
        }
        if let Some(h) = wl.take() {
            h.stop().await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        out.push(CaseResult {
            group: "worker SIGKILL".into(),
            name: format!("seed {seed}: setup"),
            outcome: e.clone(),
            detail: e,
            secs: t0.elapsed().as_secs_f64(),
            ..Default::default()
        });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Server faults.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Copy,
    Replication,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Copy => "copy",
            Phase::Replication => "replication",
        })
    }
}

/// What to do to a server.
#[derive(Debug, Clone)]
pub enum ServerFault {
    /// SIGKILL, wait this long, restart (storage kept; `--sync-on-commit`).
    KillRestart(Duration),
    /// `replSetStepDown`.
    StepDown,
    /// A `failCommand` failpoint (Python server with test commands) scoped to the worker.
    FailCommand {
        commands: Vec<&'static str>,
        /// `errorCode`, `closeConnection: true` (None), or a write-concern error (`wce`).
        error_code: Option<i32>,
        wce: bool,
        times: i32,
    },
    /// The proxy in front of the server cuts every connection and refuses new ones for a while.
    NetworkCut(Duration),
}

impl ServerFault {
    fn label(&self) -> String {
        match self {
            ServerFault::KillRestart(d) => format!("killed, restarted after {}s", d.as_secs()),
            ServerFault::StepDown => "replSetStepDown".into(),
            ServerFault::FailCommand {
                commands,
                error_code,
                wce,
                times,
            } => {
                let what = if *wce {
                    "writeConcernError 64".to_string()
                } else {
                    match error_code {
                        Some(c) => format!("error {c}"),
                        None => "closeConnection".into(),
                    }
                };
                format!("failCommand {} {what} ×{times}", commands.join("/"))
            }
            ServerFault::NetworkCut(d) => {
                format!("proxy: connections cut, refused for {}s", d.as_secs())
            }
        }
    }
}

/// One migration under the workload with one fault on one server in one phase.
pub async fn server_fault(side: Side, phase: Phase, fault: ServerFault) -> CaseResult {
    let t0 = Instant::now();
    let group = match &fault {
        ServerFault::KillRestart(_) => format!("{side} server killed + restarted"),
        ServerFault::StepDown => format!("replSetStepDown on {side}"),
        ServerFault::FailCommand { .. } => format!("failCommand on {side}"),
        ServerFault::NetworkCut(_) => format!("network cut to {side}"),
    };
    let mut res = CaseResult {
        group,
        name: format!("{side}, {phase}: {}", fault.label()),
        ..Default::default()
    };
    let r: R<()> = async {
        let failpoint = matches!(fault, ServerFault::FailCommand { .. });
        let kill = matches!(fault, ServerFault::KillRestart(_));
        let kind_of = |s: Side| {
            if failpoint && s == side {
                ServerKind::Python
            } else {
                ServerKind::Rust
            }
        };
        let mut src = server(
            kind_of(Side::Source),
            kill && side == Side::Source,
            failpoint && side == Side::Source,
        )
        .await?;
        let mut dst = server(
            kind_of(Side::Target),
            kill && side == Side::Target,
            failpoint && side == Side::Target,
        )
        .await?;
        // The Python server is slower: less data.
        let (colls, docs, rate) = if failpoint { (2, 400, 40) } else { (3, 2500, 150) };
        let c = src.client();
        seed_with(&c, colls, docs, 5, !failpoint).await?;
        let proxy = if matches!(fault, ServerFault::NetworkCut(_)) {
            let s = if side == Side::Source { &src } else { &dst };
            Some(FaultProxy::start(&s.host()).await.map_err(ms)?)
        } else {
            None
        };
        let uri = |s: &MongoServer, sd: Side| match (&proxy, sd == side) {
            (Some(p), true) => p.uri(&s.uri()),
            _ => s.uri(),
        };
        let w = WorkerProcess::start(worker_opts(uri(&src, Side::Source), uri(&dst, Side::Target))).await;
        let body = slow_copy();
        w.start_migration(body).await;
        let wl = Workload::spawn(c.clone(), workload_cfg(9, colls, rate));
        // Wait for the phase.
        let total = (colls * 2) as u64 * docs;
        match phase {
            Phase::Copy => {
                poll(&w, "copy 30%", Duration::from_secs(300), |s| {
                    cloned(s) >= total * 3 / 10 || copy_done(s)
                })
                .await?;
            }
            Phase::Replication => {
                poll(&w, "copy complete", Duration::from_secs(600), |s| {
                    s["initialSync"]["completed"] == true
                })
                .await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        let at = w.status().await;
        let copy_was_done = copy_done(&at);
        let at_cloned = cloned(&at);
        // Inject.
        let fault_end;
        match &fault {
            ServerFault::KillRestart(d) => {
                let s = if side == Side::Source { &mut src } else { &mut dst };
                s.kill();
                tokio::time::sleep(*d).await;
                s.restart().await.map_err(ms)?;
                fault_end = Instant::now();
            }
            ServerFault::StepDown => {
                let s = if side == Side::Source { &src } else { &dst };
                let r = s
                    .client()
                    .database("admin")
                    .run_command(doc! {"replSetStepDown": 5, "force": true})
                    .await;
                res.detail = format!("replSetStepDown answered: {}", match r {
                    Ok(d) => d.to_string(),
                    Err(e) => e.to_string(),
                });
                fault_end = Instant::now();
            }
            ServerFault::FailCommand {
                commands,
                error_code,
                wce,
                times,
            } => {
                let s = if side == Side::Source { &src } else { &dst };
                let mut data = doc! {"failCommands": commands.clone(), "appName": "mongoferry-worker"};
                if *wce {
                    data.insert(
                        "writeConcernError",
                        doc! {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out (injected)"},
                    );
                } else if let Some(code) = error_code {
                    data.insert("errorCode", *code);
                } else {
                    data.insert("closeConnection", true);
                }
                s.client()
                    .database("admin")
                    .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": *times}, "data": data})
                    .await
                    .map_err(|e| format!("configureFailPoint: {e}"))?;
                // The failpoint fires on the worker's next matching commands.
                tokio::time::sleep(Duration::from_secs(3)).await;
                fault_end = Instant::now();
            }
            ServerFault::NetworkCut(d) => {
                if let Some(p) = &proxy {
                    p.refuse_for(*d);
                }
                tokio::time::sleep(*d).await;
                fault_end = Instant::now();
            }
        }
        // Recovery: back where it was.
        let back = if phase == Phase::Copy && !copy_was_done {
            poll(&w, "copy progress after the fault", Duration::from_secs(300), |s| {
                cloned(s) > at_cloned || copy_done(s)
            })
            .await
        } else {
            let src_c = src.client();
            marker_through(&w, &src_c, &dst.client(), "fault", Duration::from_secs(300))
                .await
                .map(|_| Value::Null)
        };
        match back {
            Ok(_) => res.recover_secs = Some(fault_end.elapsed().as_secs_f64()),
            Err(e) => {
                wl.stop().await;
                res.retries = retries_of(&w).await;
                res.outcome = e.clone();
                return Err(format!("{e}\n{}", w.log_tail()));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stats = wl.stop().await;
        let (outcome, equal, detail) = finalize_and_compare(&w, &c, &dst.client()).await;
        res.retries = retries_of(&w).await;
        res.outcome = outcome;
        res.data_equal = equal;
        res.passed = equal == Some(true);
        let extra = if copy_was_done && phase == Phase::Copy {
            " (the copy had finished before the fault)"
        } else {
            ""
        };
        res.detail = format!(
            "{}{extra}; workload {} ops ({} errors during the fault); {detail}{}",
            res.detail,
            stats.total_ops(),
            stats.errors,
            if res.passed { String::new() } else { format!("\n{}", w.log_tail()) }
        );
        Ok(())
    }
    .await;
    if let Err(e) = r {
        res.passed = false;
        if res.outcome.is_empty() {
            res.outcome = e.lines().next().unwrap_or("").to_string();
        }
        res.detail = format!("{}\n{e}", res.detail);
    }
    res.secs = t0.elapsed().as_secs_f64();
    res
}

// ---------------------------------------------------------------------------------------
// A slow target.

/// The target behind a proxy throttled to `bps` bytes/s during replication under a heavy
/// workload: lag grows, the worker's memory stays bounded, and once the throttle is lifted
/// it catches up and nothing is lost.
pub async fn slow_target(bps: u64, hold: Duration) -> CaseResult {
    let t0 = Instant::now();
    let mut res = CaseResult {
        group: "slow target (proxy throttle)".into(),
        name: format!(
            "target throttled to {} KB/s for {}s",
            bps / 1000,
            hold.as_secs()
        ),
        ..Default::default()
    };
    let r: R<()> = async {
        let src = server(ServerKind::Rust, false, false).await?;
        let dst = server(ServerKind::Rust, false, false).await?;
        let c = src.client();
        seed(&c, 2, 1000, 3).await?;
        let p = FaultProxy::start(&dst.host()).await.map_err(ms)?;
        let w = WorkerProcess::start(worker_opts(src.uri(), p.uri(&dst.uri()))).await;
        w.start_migration(json!({})).await;
        poll(&w, "caught up", Duration::from_secs(300), |s| caught_up(s, 2.0)).await?;
        let rss0 = w.peak_rss();
        let wl = Workload::spawn(c.clone(), workload_cfg(13, 2, 400));
        p.set_throttle(bps);
        let t = Instant::now();
        let mut max_lag = 0f64;
        let mut peak = 0u64;
        while t.elapsed() < hold {
            let s = w.status().await;
            if s["state"] == "failed" {
                return Err(format!("failed under a slow target: {}", s["error"]));
            }
            max_lag = max_lag.max(s["lagTimeSeconds"].as_f64().unwrap_or(0.0));
            peak = peak.max(w.peak_rss());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let stats = wl.stop().await;
        p.set_throttle(0);
        let t = Instant::now();
        poll(&w, "caught up after the throttle", Duration::from_secs(300), |s| caught_up(s, 2.0))
            .await?;
        res.recover_secs = Some(t.elapsed().as_secs_f64());
        peak = peak.max(w.peak_rss());
        let (outcome, equal, detail) = finalize_and_compare(&w, &c, &dst.client()).await;
        res.outcome = format!(
            "{outcome}; max lag {max_lag:.0}s, worker peak RSS {} MiB",
            peak >> 20
        );
        res.data_equal = equal;
        let bounded = peak < 256 * 1024 * 1024;
        let lag_grew = max_lag >= 5.0;
        res.passed = equal == Some(true) && bounded && lag_grew;
        res.retries = retries_of(&w).await;
        res.detail = format!(
            "max lag {max_lag:.1}s (must grow ≥5s), worker peak RSS {} MiB (before {} MiB; bound 256 MiB), workload {} ops, proxy {:?}; {detail}",
            peak >> 20,
            rss0 >> 20,
            stats.total_ops(),
            p.stats()
        );
        Ok(())
    }
    .await;
    if let Err(e) = r {
        res.passed = false;
        res.outcome = e.lines().next().unwrap_or("").to_string();
        res.detail = format!("{}\n{e}", res.detail);
    }
    res.secs = t0.elapsed().as_secs_f64();
    res
}

// ---------------------------------------------------------------------------------------
// TLS.

fn temp_dir(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("mongoferry-{tag}-{}-{n:08x}", std::process::id()))
}

/// TLS to both servers with the worker's `--source-tls-ca-file/--target-tls-ca-file`: with the
/// right CA the migration finalizes equal; with a wrong CA the worker says clearly that TLS
/// (the certificate) is the problem.
pub async fn tls_cases() -> Vec<CaseResult> {
    let group = "TLS with a CA file";
    let mut ok = CaseResult {
        group: group.into(),
        name: "both servers TLS, right CA files".into(),
        ..Default::default()
    };
    let mut bad = CaseResult {
        group: group.into(),
        name: "source CA file of another CA".into(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let r: R<()> = async {
        let dir = temp_dir("tls");
        let tls = make_certs(&dir).ok_or("openssl not usable")?;
        let other_dir = dir.join("other");
        make_certs(&other_dir).ok_or("openssl not usable")?;
        let start = || async {
            MongoServer::start(ServerOptions {
                tls: Some(tls.clone()),
                ..Default::default()
            })
            .await
            .map_err(ms)
        };
        let src = start().await?;
        let dst = start().await?;
        let c = src.client();
        seed(&c, 1, 500, 1).await?;
        // URIs without tlsCAFile: the CA comes from the worker's flags.
        let plain = |s: &MongoServer| format!("mongodb://127.0.0.1:{}/?tls=true", s.port());
        let ca = tls
            .ca_file
            .clone()
            .unwrap_or_default()
            .display()
            .to_string();
        let w = WorkerProcess::start(WorkerOptions {
            args: vec![
                "--source-tls-ca-file".into(),
                ca.clone(),
                "--target-tls-ca-file".into(),
                ca.clone(),
            ],
            ..worker_opts(plain(&src), plain(&dst))
        })
        .await;
        w.start_migration(json!({})).await;
        c.database("wl_app")
            .collection::<Document>("c0")
            .insert_many((0..100).map(|i| doc! {"late": i}))
            .await
            .map_err(ms)?;
        let (outcome, equal, detail) = finalize_and_compare(&w, &c, &dst.client()).await;
        ok.outcome = outcome;
        ok.data_equal = equal;
        ok.passed = equal == Some(true);
        ok.detail = detail;
        ok.secs = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let wrong = other_dir.join("ca.pem").display().to_string();
        let w2 = WorkerProcess::start(WorkerOptions {
            args: vec![
                "--source-tls-ca-file".into(),
                wrong,
                "--target-tls-ca-file".into(),
                ca,
            ],
            no_wait_ready: true,
            ..worker_opts(
                plain(&src),
                format!("mongodb://127.0.0.1:{}/?tls=true", dst.port()),
            )
        })
        .await;
        // Either `failed`, or waiting with a message naming TLS / the certificate.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Value::Null;
        let mentions = |m: &str| {
            let m = m.to_lowercase();
            m.contains("tls") || m.contains("certificate")
        };
        while Instant::now() < deadline {
            last = w2.status().await;
            let msg = format!(
                "{} {}",
                last["error"].as_str().unwrap_or(""),
                last["info"].as_str().unwrap_or("")
            );
            if mentions(&msg) && msg.contains("source") {
                bad.passed = true;
                bad.outcome = if last["state"] == "failed" {
                    format!("failed: {}", last["error"].as_str().unwrap_or(""))
                } else {
                    format!("waiting: {}", last["info"].as_str().unwrap_or(""))
                };
                bad.recover_secs = Some(t1.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !bad.passed {
            bad.outcome = format!(
                "no clear TLS message within 60s: state {} error {} info {}",
                last["state"], last["error"], last["info"]
            );
        }
        bad.secs = t1.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
    .await;
    if let Err(e) = r {
        ok.outcome = e.clone();
        bad.outcome = e;
    }
    vec![ok, bad]
}

// ---------------------------------------------------------------------------------------
// Secrets.

/// Where a secret was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFinding {
    /// Which text (e.g. `worker log`, `/status`, `/metrics`).
    pub place: String,
    /// The secret, masked but for its first two characters.
    pub secret: String,
    /// 1-based line of the first occurrence.
    pub line: usize,
}

/// Look for each secret (as given, and percent-encoded as in a URI) in every text. Pure.
pub fn scan_secrets(secrets: &[&str], texts: &[(&str, &str)]) -> Vec<SecretFinding> {
    let mut out = Vec::new();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        let encoded: String = s
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        for (place, text) in texts {
            let hit = text
                .lines()
                .enumerate()
                .find(|(_, l)| l.contains(s) || l.contains(&encoded));
            if let Some((i, _)) = hit {
                out.push(SecretFinding {
                    place: place.to_string(),
                    secret: format!("{}…", s.chars().take(2).collect::<String>()),
                    line: i + 1,
                });
            }
        }
    }
    out
}

/// Everything a worker exposes: its log, `/status` and `/metrics`.
pub async fn worker_surfaces(w: &WorkerProcess) -> Vec<(String, String)> {
    vec![
        ("worker log".into(), w.log()),
        ("/status".into(), w.status().await.to_string()),
        ("/metrics".into(), w.metrics().await),
    ]
}

/// Servers with SCRAM users; one worker with passwords from files (right and wrong), one with
/// the password inside its URI; each runs, fails or retries; then no password appears in any
/// log, status or metric.
pub async fn secret_scan() -> CaseResult {
    let t0 = Instant::now();
    let mut res = CaseResult {
        group: "secret scan (logs, /status, /metrics)".into(),
        name: "passwords from files and in a URI, right and wrong".into(),
        ..Default::default()
    };
    let r: R<()> = async {
        use crate::servers::User;
        let spw = "S3cr3t-Src-Pw-7781";
        let tpw = "T@rget/Pw:9920?x";
        let wrong = "Wr0ng-Pw-5566";
        let roles = [("root", "admin")];
        let suser = User::new("ferry_src", spw, &roles);
        let tuser = User::new("ferry_dst", tpw, &roles);
        let src = MongoServer::start(ServerOptions {
            auth_users: vec![suser.clone()],
            ..Default::default()
        })
        .await
        .map_err(ms)?;
        let dst = MongoServer::start(ServerOptions {
            auth_users: vec![tuser.clone()],
            ..Default::default()
        })
        .await
        .map_err(ms)?;
        seed(&src.client(), 1, 300, 2).await?;
        let passwords = PasswordFiles::new("secrets", suser.clone(), tuser.clone());
        passwords.add("bad", wrong);
        let files = |sfile: &str| passwords.args_with_source_file(sfile);
        let good = WorkerProcess::start(WorkerOptions {
            args: files("s"),
            token: Some("api-T0ken-4411".into()),
            ..worker_opts(src.uri_without_credentials(), dst.uri_without_credentials())
        })
        .await;
        good.start_migration(json!({})).await;
        poll(&good, "caught up", Duration::from_secs(120), |s| {
            caught_up(s, 2.0)
        })
        .await?;
        let bad = WorkerProcess::start(WorkerOptions {
            args: files("bad"),
            no_wait_ready: true,
            ..worker_opts(src.uri_without_credentials(), dst.uri_without_credentials())
        })
        .await;
        let bst = poll(&bad, "failed", Duration::from_secs(60), |s| {
            s["state"] == "failed"
        })
        .await
        .map(|s| s["error"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|e| e);
        // A password inside the URI (allowed, though files are recommended): redacted.
        let inline = WorkerProcess::start(WorkerOptions {
            no_wait_ready: true,
            ..worker_opts(src.uri_for(&suser), dst.uri_for(&tuser))
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut texts = Vec::new();
        for (name, w) in [("good", &good), ("bad", &bad), ("inline", &inline)] {
            for (place, text) in worker_surfaces(w).await {
                texts.push((format!("{name} worker {place}"), text));
            }
        }
        let refs: Vec<(&str, &str)> = texts
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let secrets = [spw, tpw, wrong, "api-T0ken-4411"];
        let found = scan_secrets(&secrets, &refs);
        let scanned: usize = texts.iter().map(|(_, t)| t.len()).sum();
        res.passed = found.is_empty() && bst.contains("authentication");
        res.data_equal = None;
        res.outcome = if found.is_empty() {
            format!(
                "no secret in {} texts ({} KiB)",
                texts.len(),
                scanned / 1024
            )
        } else {
            format!("secrets found: {found:?}")
        };
        res.detail = format!("wrong password → {bst}");
        Ok(())
    }
    .await;
    if let Err(e) = r {
        res.passed = false;
        res.outcome = e;
    }
    res.secs = t0.elapsed().as_secs_f64();
    res
}

// ---------------------------------------------------------------------------------------
// The summary.

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// A Markdown summary: one row per group, then every case.
pub fn summary(results: &[CaseResult]) -> String {
    let mut groups: Vec<String> = Vec::new();
    for r in results {
        if !groups.contains(&r.group) {
            groups.push(r.group.clone());
        }
    }
    let mut s = String::from(
        "| Fault | Cases | Passed | Data equal after finalize | Silent differences | Time to recover (median / max) |\n|---|---|---|---|---|---|\n",
    );
    for g in &groups {
        let rs: Vec<&CaseResult> = results.iter().filter(|r| &r.group == g).collect();
        let passed = rs.iter().filter(|r| r.passed).count();
        let equal = rs.iter().filter(|r| r.data_equal == Some(true)).count();
        let na = rs.iter().filter(|r| r.data_equal.is_none()).count();
        let silent = rs.iter().filter(|r| r.silent_difference()).count();
        let mut rec: Vec<f64> = rs.iter().filter_map(|r| r.recover_secs).collect();
        let max = rec.iter().cloned().fold(0.0, f64::max);
        let recover = median(&mut rec)
            .map(|m| format!("{m:.1}s / {max:.1}s"))
            .unwrap_or_else(|| "–".into());
        let eq = if na == rs.len() {
            "n/a".to_string()
        } else {
            format!("{equal}/{}", rs.len() - na)
        };
        s.push_str(&format!(
            "| {g} | {} | {passed}/{} | {eq} | {silent} | {recover} |\n",
            rs.len(),
            rs.len()
        ));
    }
    let total = results.len();
    let passed = results.iter().filter(|r| r.passed).count();
    let silent = results.iter().filter(|r| r.silent_difference()).count();
    s.push_str(&format!(
        "| **all** | **{total}** | **{passed}/{total}** | | **{silent}** | |\n\n"
    ));
    s.push_str("| Case | Passed | Outcome | Data equal | Recovery | Retries logged | Took |\n|---|---|---|---|---|---|---|\n");
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0}s |\n",
            r.name,
            if r.passed { "yes" } else { "**no**" },
            r.outcome
                .replace('|', "\\|")
                .replace('\n', " ")
                .chars()
                .take(160)
                .collect::<String>(),
            match r.data_equal {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "n/a",
            },
            r.recover_secs
                .map(|x| format!("{x:.1}s"))
                .unwrap_or_else(|| "–".into()),
            r.retries,
            r.secs
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_plain_and_encoded_secrets() {
        let f = scan_secrets(
            &["p@ss/word", "abc"],
            &[
                ("log", "line1\nuri mongodb://u:p%40ss%2Fword@h\n"),
                ("status", "{\"x\": \"p@ss/word\"}"),
                ("metrics", "nothing here abc"),
            ],
        );
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].place, "log");
        assert_eq!(f[0].line, 2);
        assert_eq!(f[1].place, "status");
        assert!(!format!("{f:?}").contains("ss/word"));
    }

    #[test]
    fn kill_points_are_seeded_and_spread() {
        assert_eq!(kill_points(3), kill_points(3));
        let all: Vec<KillAt> = (1..=4).flat_map(kill_points).collect();
        assert_eq!(all.len(), 20);
        assert_eq!(
            all.iter().filter(|k| matches!(k, KillAt::Copy(_))).count(),
            8
        );
        assert_eq!(
            all.iter()
                .filter(|k| matches!(k, KillAt::Finalize(_)))
                .count(),
            4
        );
    }
}
