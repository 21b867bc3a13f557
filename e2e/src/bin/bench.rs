//! `bench`: mongoferry's copy throughput, apply lag, memory and scale, each reported beside
//! baselines measured in the same run on the same machine. See `docs/benchmarks.md`.
//!
//! ```sh
//! cargo run -p mongoferry-e2e --release --bin bench -- [--quick] [--out DIR] [--only LIST] [--collections N]
//! ```
//!
//! It starts its own SecantusDB servers (a fresh target per measurement), builds the worker
//! in release (or runs `MONGOFERRY_BIN`), and writes `bench.json` and `bench.md` to `--out`
//! (default `target/bench`, `target/bench-quick` with `--quick`), and ends with `summary:`
//! lines. The operator section starts the project's test control plane (full runs).
//! Nothing is asserted: benchmarks measure.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;
use mongoferry_e2e::controlplane::ControlPlane;
use mongoferry_e2e::fixtures::Operator;
use mongoferry_e2e::kubectl::{repo_root, Kubectl, CRD};
use mongoferry_e2e::proc::cpu_secs;
use mongoferry_e2e::servers::{MongoServer, ServerOptions, SECANTUS_RS_VERSION};
use mongoferry_e2e::worker::{WorkerOptions, WorkerProcess};
use mongoferry_e2e::workload::{
    generate_document, seed_dataset, IdType, SeedSpec, SizeDistribution, Workload, WorkloadConfig,
    WorkloadStats,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: u64 = 1 << 20;
/// The engine's default insert batch (`clone.batchBytes`); the baselines use it too.
const BATCH_BYTES: u64 = MIB;
/// Seeded workload generators of the mixed apply row (each is sequential: one write per
/// request).
const MIXED_GENERATORS: u32 = 16;
const SECTIONS: &[&str] = &["copy", "apply", "txn", "memory", "scale", "operator"];
/// Sections run only when named (`--peers`, or in `--only`).
const EXTRA_SECTIONS: &[&str] = &["peers"];

struct Opts {
    quick: bool,
    out: PathBuf,
    only: Vec<String>,
    /// Overrides the number of collections of the Scale section.
    collections: Option<usize>,
    /// Overrides the data per mix of the Copy section, MiB.
    copy_mib: Option<u64>,
    /// MiB of regular and of small documents the peers section copies (peerbench's sizes).
    peers_mib: (u64, u64),
}

/// Sizes of one run (`--quick` or full).
struct Sizes {
    copy_bytes: u64,
    copy_collections: usize,
    apply_window: Duration,
    apply_rates: Vec<u32>,
    mem_sizes: [u64; 2],
    many_collections: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                copy_bytes: 8 * MIB,
                copy_collections: 4,
                apply_window: Duration::from_secs(5),
                apply_rates: vec![500, 1000, 2000],
                mem_sizes: [24 * MIB, 72 * MIB],
                many_collections: 200,
            }
        } else {
            Sizes {
                copy_bytes: 128 * MIB,
                copy_collections: 4,
                apply_window: Duration::from_secs(20),
                apply_rates: vec![500, 1000, 2000],
                // 2,000 documents of 1 MB, and 3 GiB.
                mem_sizes: [2_000_000_000, 3 * 1024 * MIB],
                many_collections: 10_000,
            }
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--quick] [--out DIR] [--only {}] [--collections N] [--copy-mib N] [--peers] [--peers-mib REGULAR,SMALL]",
        SECTIONS.iter().chain(EXTRA_SECTIONS).copied().collect::<Vec<_>>().join(",")
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let root = repo_root();
    let mut o = Opts {
        quick: false,
        out: PathBuf::new(),
        only: SECTIONS.iter().map(|s| s.to_string()).collect(),
        collections: None,
        copy_mib: None,
        peers_mib: (256, 64),
    };
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => out = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "--collections" => {
                let n = args.next().unwrap_or_else(|| usage());
                o.collections = Some(n.parse().unwrap_or_else(|_| usage()));
            }
            "--copy-mib" => {
                let n = args.next().unwrap_or_else(|| usage());
                o.copy_mib = Some(n.parse().unwrap_or_else(|_| usage()));
            }
            "--only" => {
                let list = args.next().unwrap_or_else(|| usage());
                o.only = list.split(',').map(|s| s.trim().to_string()).collect();
                let known = |s: &String| {
                    SECTIONS.contains(&s.as_str()) || EXTRA_SECTIONS.contains(&s.as_str())
                };
                if !o.only.iter().all(known) {
                    usage();
                }
            }
            "--peers" => {
                if !o.only.iter().any(|s| s == "peers") {
                    o.only.push("peers".into());
                }
            }
            "--peers-mib" => {
                let sizes = args.next().unwrap_or_else(|| usage());
                let v: Vec<u64> = sizes
                    .split(',')
                    .map(|v| v.trim().parse().unwrap_or_else(|_| usage()))
                    .collect();
                match v[..] {
                    [r, s] => o.peers_mib = (r, s),
                    _ => usage(),
                }
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    // Results go under target/ unless told otherwise (CI must not dirty the tree).
    o.out = out.unwrap_or_else(|| {
        root.join(if o.quick {
            "target/bench-quick"
        } else {
            "target/bench"
        })
    });
    o
}

/// `MONGOFERRY_BIN`, else build the worker in release and use it.
fn worker_binary() -> Res<PathBuf> {
    if let Ok(p) = std::env::var("MONGOFERRY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench: building the worker (cargo build --release --bin mongoferry)");
    let st = Command::new(cargo)
        .args(["build", "--release", "--bin", "mongoferry"])
        .current_dir(&root)
        .status()?;
    if !st.success() {
        return Err("cargo build --release --bin mongoferry failed".into());
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target.join("release/mongoferry"))
}

fn main() {
    let opts = parse_args();
    let bin = match worker_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1)
        }
    };
    // Set before any thread exists: the fixture reads it when it spawns workers.
    std::env::set_var("MONGOFERRY_BIN", &bin);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(opts, bin)) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn mem_total_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds used by the worker, the source server and the target server.
#[derive(Clone, Copy, Default)]
struct Cpu {
    worker: f64,
    source: f64,
    target: f64,
}

impl Cpu {
    fn now(w: &WorkerProcess, src: &MongoServer, dst: &MongoServer) -> Cpu {
        Cpu {
            worker: cpu_secs(w.pid()),
            source: cpu_secs(src.pid()),
            target: cpu_secs(dst.pid()),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            worker: self.worker - before.worker,
            source: self.source - before.source,
            target: self.target - before.target,
        }
    }

    fn label(self) -> String {
        format!(
            "{:.1} / {:.1} / {:.1}",
            self.worker, self.source, self.target
        )
    }

    fn json(self) -> Value {
        json!({"worker": self.worker, "source": self.source, "target": self.target})
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", mib(bytes))
    }
}

/// Nearest-rank percentile of unsorted samples.
fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

async fn server() -> Res<MongoServer> {
    Ok(MongoServer::start(ServerOptions::rust()).await?)
}

/// Entries of a source server's oplog: loading the copy sets (268k documents in the small mix)
/// fills the server's default 100,000 entries in seconds, and the worker's preflight rightly
/// refuses a copy the oplog window would not cover. Sized as docs/runbook.md asks.
const SOURCE_OPLOG_ENTRIES: u64 = 5_000_000;

/// A source server: its oplog sized for the largest load of the run.
async fn source_server() -> Res<MongoServer> {
    Ok(MongoServer::start(ServerOptions {
        oplog_max_entries: Some(SOURCE_OPLOG_ENTRIES),
        ..ServerOptions::rust()
    })
    .await?)
}

async fn worker(src: &MongoServer, dst: &MongoServer) -> WorkerProcess {
    worker_for_cpus(src, dst, None).await
}

/// A worker sized for `cpus` cores (`--cpus`) instead of the ones it detects.
async fn worker_for_cpus(src: &MongoServer, dst: &MongoServer, cpus: Option<u16>) -> WorkerProcess {
    let mut env = vec![("RUST_LOG".to_string(), "info".to_string())];
    if let Some(n) = cpus {
        env.push(("MONGOFERRY_CPUS".into(), n.to_string()));
    }
    WorkerProcess::start(WorkerOptions {
        source: src.uri(),
        target: dst.uri(),
        env,
        ..Default::default()
    })
    .await
}

/// `POST /start`; a refusal (e.g. by the preflight) fails the section with its answer.
async fn start(w: &WorkerProcess, body: Value) -> Res<()> {
    let a = w.post("/start", body).await;
    if a.code != 200 {
        return Err(format!("POST /start answered {}: {}", a.code, a.body).into());
    }
    Ok(())
}

/// Seed `colls` collections of `db` with `bytes` in total of documents of about `doc_bytes`.
async fn seed_db(
    c: &Client,
    db: &str,
    colls: usize,
    bytes: u64,
    doc_bytes: usize,
    seed: u64,
) -> Res<(u64, u64)> {
    let per = (bytes / colls as u64 / doc_bytes as u64).max(1);
    let batch = ((BATCH_BYTES as usize) / doc_bytes).clamp(1, 1000);
    let runs = (0..colls).map(|i| {
        let spec = SeedSpec {
            seed: seed * 100 + i as u64,
            database: db.to_string(),
            collection: format!("c{i}"),
            count: per,
            sizes: SizeDistribution::Fixed(doc_bytes),
            id_types: vec![IdType::ObjectId],
            special_ids: false,
            batch_size: batch,
        };
        async move { seed_dataset(c, &spec).await }
    });
    let mut docs = 0;
    let mut total = 0;
    for r in futures::future::join_all(runs).await {
        let r = r?;
        docs += r.inserted;
        total += r.bytes;
    }
    Ok((docs, total))
}

/// What one worker copy measured.
struct CopyRun {
    /// `POST /start` answered (the worker's preflight) to `cloneCompleted`.
    secs: f64,
    /// `POST /start` until it answered: the preflight the worker runs before it accepts a start.
    preflight_secs: f64,
    docs: u64,
    bytes: u64,
    peak_rss: u64,
    /// Until the first collection completed (catalog: list, size, create every collection).
    first_done_secs: f64,
    /// Longest time without a collection completing, after the first.
    max_gap_secs: f64,
    /// CPU used during the copy (after the preflight).
    cpu: Cpu,
}

/// Copy `include` with a fresh worker; time from the answer to `POST /start` (after the
/// worker's preflight, timed apart) to `cloneCompleted`.
async fn worker_copy(src: &MongoServer, dst: &MongoServer, include: &[String]) -> Res<CopyRun> {
    worker_copy_cpus(src, dst, include, None).await
}

async fn worker_copy_cpus(
    src: &MongoServer,
    dst: &MongoServer,
    include: &[String],
    cpus: Option<u16>,
) -> Res<CopyRun> {
    let w = worker_for_cpus(src, dst, cpus).await;
    let p0 = Instant::now();
    start(&w, json!({ "includeNamespaces": include })).await?;
    let preflight_secs = p0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let cpu0 = Cpu::now(&w, src, dst);
    let mut last_done = 0u64;
    let mut last_change: Option<Instant> = None;
    let mut first_done = None;
    let mut max_gap = 0f64;
    let deadline = t0 + Duration::from_secs(3 * 3600);
    let st = loop {
        let s = w.status().await;
        if s["state"] == "failed" {
            return Err(format!("worker failed: {}", s["error"]).into());
        }
        let done = s["initialSync"]["collectionsCompleted"]
            .as_u64()
            .unwrap_or(0);
        let now = Instant::now();
        if done > last_done {
            if first_done.is_none() {
                first_done = Some(now - t0);
            }
            if let Some(l) = last_change {
                max_gap = max_gap.max((now - l).as_secs_f64());
            }
            last_change = Some(now);
            last_done = done;
        }
        if s["initialSync"]["cloneCompleted"] == true {
            break s;
        }
        if now > deadline {
            return Err("copy did not finish in 3 hours".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let secs = t0.elapsed().as_secs_f64();
    let cpu = Cpu::now(&w, src, dst).since(cpu0);
    Ok(CopyRun {
        secs,
        preflight_secs,
        docs: st["initialSync"]["clonedDocuments"].as_u64().unwrap_or(0),
        bytes: st["initialSync"]["clonedSizeBytes"].as_u64().unwrap_or(0),
        peak_rss: w.peak_rss(),
        first_done_secs: first_done.map(|d| d.as_secs_f64()).unwrap_or(secs),
        max_gap_secs: max_gap,
        cpu,
    })
}

fn collections(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

/// Baseline (a): one cursor per collection feeding `insertMany`, collection after collection.
async fn naive_copy(src: &Client, dst: &Client, db: &str, colls: &[String]) -> Res<f64> {
    let t0 = Instant::now();
    for c in colls {
        let mut cur = src
            .database(db)
            .collection::<RawDocumentBuf>(c)
            .find(doc! {})
            .await?;
        let out = dst.database(db).collection::<RawDocumentBuf>(c);
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(d) = cur.try_next().await? {
            bytes += d.as_bytes().len() as u64;
            batch.push(d);
            if bytes >= BATCH_BYTES {
                out.insert_many(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            out.insert_many(batch).await?;
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Baseline (b), the target-ingest limit: the same documents, already in memory in batches
/// of the engine's batch size, written by as many parallel unordered `insertMany`s as the
/// engine has insert workers. Only the writing is timed.
async fn ingest_limit(
    src: &Client,
    dst: &Client,
    db: &str,
    colls: &[String],
    workers: usize,
) -> Res<f64> {
    let mut batches: VecDeque<(String, Vec<RawDocumentBuf>)> = VecDeque::new();
    for c in colls {
        let mut cur = src
            .database(db)
            .collection::<RawDocumentBuf>(c)
            .find(doc! {})
            .await?;
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(d) = cur.try_next().await? {
            bytes += d.as_bytes().len() as u64;
            batch.push(d);
            if bytes >= BATCH_BYTES {
                batches.push_back((c.clone(), std::mem::take(&mut batch)));
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            batches.push_back((c.clone(), batch));
        }
    }
    // Round-robin over collections, as parallel readers would deliver them.
    let queue = Arc::new(std::sync::Mutex::new(batches));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let queue = queue.clone();
            let dst = dst.clone();
            let db = db.to_string();
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).ok().flatten();
                    let Some((c, docs)) = next else { break };
                    dst.database(&db)
                        .collection::<RawDocumentBuf>(&c)
                        .insert_many(docs)
                        .ordered(false)
                        .bypass_document_validation(true)
                        .await?;
                }
                Ok::<(), mongodb::error::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(t0.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    json: serde_json::Map<String, Value>,
    md: String,
    /// One line per headline figure, printed last (`summary: …`).
    summary: Vec<String>,
}

impl Report {
    fn section(&mut self, title: &str, table: &str) {
        self.md.push_str(&format!("\n### {title}\n\n{table}\n"));
        println!("\n### {title}\n\n{table}");
    }
}

fn f1(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "–".into()
    }
}

fn f2(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "–".into()
    }
}

// ---------------------------------------------------------------------------------------------
// Sections

async fn bench_copy(sz: &Sizes, rep: &mut Report) -> Res<()> {
    let mixes: [(&str, usize); 3] = [("small", 500), ("regular", 5_000), ("big", 100_000)];
    let src = source_server().await?;
    let sc = src.client();
    let colls = collections(sz.copy_collections);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let insert_workers = (cpus * 2).clamp(4, 16);
    let mut rows = Vec::new();
    let mut md = String::from(
        "| mix | avg doc | data | docs | mongoferry MB/s | mongoferry docs/s | naive MB/s | limit MB/s | ×naive | ×limit | preflight | CPU s worker / source / target | worker peak RSS | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, (name, size)) in mixes.iter().enumerate() {
        let db = format!("bench_{name}");
        eprintln!("bench: copy/{name}: seeding {}", size_label(sz.copy_bytes));
        let (docs, bytes) = seed_db(
            &sc,
            &db,
            sz.copy_collections,
            sz.copy_bytes,
            *size,
            i as u64 + 1,
        )
        .await?;
        let l0 = load();
        let run = {
            let dst = server().await?;
            worker_copy(&src, &dst, &[format!("{db}.*")]).await?
        };
        eprintln!("bench: copy/{name}: mongoferry {:.1}s", run.secs);
        let naive = {
            let dst = server().await?;
            naive_copy(&sc, &dst.client(), &db, &colls).await?
        };
        eprintln!("bench: copy/{name}: naive {naive:.1}s");
        let limit = {
            let dst = server().await?;
            ingest_limit(&sc, &dst.client(), &db, &colls, insert_workers).await?
        };
        eprintln!("bench: copy/{name}: limit {limit:.1}s");
        let l1 = load();
        let (mf, nv, lm) = (mb(bytes) / run.secs, mb(bytes) / naive, mb(bytes) / limit);
        md.push_str(&format!(
            "| {name} | {} B | {} | {docs} | **{}** | {:.0} | {} | {} | **{}** | **{}** | {:.1} s | {} | {:.0} MiB | {l0:.1}–{l1:.1} |\n",
            bytes / docs.max(1),
            size_label(bytes),
            f1(mf),
            docs as f64 / run.secs,
            f1(nv),
            f1(lm),
            f2(ratio(mf, nv)),
            f2(ratio(mf, lm)),
            run.preflight_secs,
            run.cpu.label(),
            mib(run.peak_rss),
        ));
        rep.summary.push(format!(
            "copy {name}: mongoferry {} MB/s, naive {} MB/s, limit {} MB/s: x{} naive, x{} limit; preflight {:.1} s apart (load {l0:.1}-{l1:.1})",
            f1(mf),
            f1(nv),
            f1(lm),
            f2(ratio(mf, nv)),
            f2(ratio(mf, lm)),
            run.preflight_secs
        ));
        rows.push(json!({
            "mix": name, "docBytes": bytes / docs.max(1), "documents": docs, "bytes": bytes,
            "mongoferry": {"seconds": run.secs, "mbPerSec": mf, "docsPerSec": docs as f64 / run.secs,
                "preflightSeconds": run.preflight_secs, "peakRssBytes": run.peak_rss,
                "cpuSeconds": run.cpu.json()},
            "naive": {"seconds": naive, "mbPerSec": nv, "docsPerSec": docs as f64 / naive},
            "limit": {"seconds": limit, "mbPerSec": lm, "docsPerSec": docs as f64 / limit,
                "insertWorkers": insert_workers},
            "ratioNaive": ratio(mf, nv), "ratioLimit": ratio(mf, lm), "load": [l0, l1],
        }));
        // Free the source for the next mix.
        sc.database(&db).drop().await?;
    }
    md.push_str(&format!(
        "\nMB = 10⁶ bytes of BSON. mongoferry: the answer to `POST /start` to `initialSync.cloneCompleted` (catalog, partitioning, \
         data, `_id` index, checkpoints), engine defaults; the preflight the worker runs before it answers `POST /start` \
         is timed apart (preflight column). CPU: seconds of CPU (user + system) the worker, the source server and \
         the target server used during the copy, out of {cpus} cores × its duration. Naive: one cursor per collection feeding `insertMany` \
         ({} MiB batches, ordered), collection after collection. Limit: the same documents already in memory, \
         {insert_workers} parallel unordered `insertMany`s of {} MiB. Each on a fresh target server.\n",
        BATCH_BYTES / MIB,
        BATCH_BYTES / MIB
    ));
    rep.section("Copy", &md);
    rep.json.insert("copy".into(), Value::Array(rows));
    Ok(())
}

/// Run the seeded mixed workload (`WORKLOADS` sequential generators, one write per request:
/// every kind of update, replaces, deletes, transactions) as fast as the source answers.
fn spawn_mixed(client: &Client, seed: u64) -> Vec<mongoferry_e2e::workload::WorkloadHandle> {
    (0..MIXED_GENERATORS)
        .map(|i| {
            Workload::spawn(
                client.clone(),
                WorkloadConfig {
                    seed: seed * 100 + u64::from(i),
                    ops_per_sec: None,
                    ddl: false,
                    transactions: true,
                    max_doc_bytes: 16 * 1024,
                    preload_ids: 2_000,
                    ..Default::default()
                },
            )
        })
        .collect()
}

async fn stop_mixed(h: Vec<mongoferry_e2e::workload::WorkloadHandle>) -> (u64, u64, f64) {
    let mut attempted = 0;
    let mut errors = 0;
    let mut elapsed = 0f64;
    for w in h {
        let s: WorkloadStats = w.stop().await;
        attempted += s.attempted();
        errors += s.errors;
        elapsed = elapsed.max(s.elapsed.as_secs_f64());
    }
    (attempted, errors, elapsed)
}

/// Writers of the batched load, sharing its rate: one per 250 ops/s, 2 to 8 (8 unthrottled).
fn batch_writers(rate: Option<u32>) -> usize {
    rate.map_or(8, |r| (r as usize / 250).clamp(2, 8))
}

/// The batched load: `writers` concurrent writers sharing `rate` write operations per second
/// (`None`: as fast as the source takes them). Each request writes `LOAD_BATCH` documents of
/// one collection: an `insert` of `LOAD_BATCH` new documents, an `update` of `LOAD_BATCH`
/// distinct documents (`$set` + `$inc`), `LOAD_BATCH` replacements, or a `delete` of
/// `LOAD_BATCH` documents. One request is thus `LOAD_BATCH` write operations — as the
/// server's opcounters and `mongostat` count them — and `LOAD_BATCH` change events.
struct BatchLoad {
    stop: Arc<AtomicBool>,
    started: Instant,
    writers: Vec<tokio::task::JoinHandle<LoadCount>>,
}

#[derive(Default)]
struct LoadCount {
    ops: u64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

impl BatchLoad {
    fn spawn(client: &Client, rate: Option<u32>, seed: u64) -> BatchLoad {
        let n = batch_writers(rate);
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..n)
            .map(|t| {
                let client = client.clone();
                let stop = stop.clone();
                let share = rate.map(|r| f64::from(r) / n as f64);
                tokio::spawn(async move { batch_writer(client, seed, t, share, stop).await })
            })
            .collect();
        BatchLoad {
            stop,
            started: Instant::now(),
            writers,
        }
    }

    /// Stop; (write operations, requests, errors, first error, seconds).
    async fn stop(self) -> (u64, u64, u64, Option<String>, f64) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut ops, mut requests, mut errors, mut first) = (0, 0, 0, None);
        for w in self.writers {
            if let Ok(c) = w.await {
                ops += c.ops;
                requests += c.requests;
                errors += c.errors;
                first = first.or(c.first_error);
            }
        }
        (
            ops,
            requests,
            errors,
            first,
            self.started.elapsed().as_secs_f64(),
        )
    }
}

/// Documents written per request of the batched load.
const LOAD_BATCH: usize = 10;
/// The collections the apply section writes (seeded, then migrated).
const LOAD_COLLS: [(&str, &str); 6] = [
    ("wl_app", "c0"),
    ("wl_app", "c1"),
    ("wl_app", "c2"),
    ("wl_logs", "c0"),
    ("wl_logs", "c1"),
    ("wl_logs", "c2"),
];

/// A document size like the mixed workload's: mostly small, some of a few KiB, a few 16 KiB.
fn load_doc_size(rng: &mut StdRng) -> usize {
    let p: f64 = rng.random();
    let hi = if p < 0.80 {
        512
    } else if p < 0.95 {
        8 * 1024
    } else {
        16 * 1024
    };
    rng.random_range(200..=hi)
}

async fn batch_writer(
    client: Client,
    seed: u64,
    task: usize,
    share: Option<f64>,
    stop: Arc<AtomicBool>,
) -> LoadCount {
    let mut rng = StdRng::seed_from_u64(seed * 1000 + task as u64);
    // This writer's live documents per collection: `_id`s no other writer uses.
    let mut live: Vec<Vec<i64>> = vec![Vec::new(); LOAD_COLLS.len()];
    let mut next_id: i64 = ((seed as i64 & 0xffff) << 40) + ((task as i64) << 32);
    let mut n = LoadCount::default();
    let t0 = Instant::now();
    loop {
        if let Some(share) = share {
            let due = t0 + Duration::from_secs_f64(n.ops as f64 / share);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let c = rng.random_range(0..LOAD_COLLS.len());
        let (db, coll) = LOAD_COLLS[c];
        let ids = &mut live[c];
        let roll = rng.random_range(0..100);
        let seq = next_id;
        let cmd = if ids.len() < LOAD_BATCH * 4 || roll < 40 {
            let docs: Vec<Document> = (0..LOAD_BATCH)
                .map(|_| {
                    next_id += 1;
                    ids.push(next_id);
                    let size = load_doc_size(&mut rng);
                    generate_document(&mut rng, Bson::Int64(next_id), next_id, size)
                })
                .collect();
            doc! {"insert": coll, "documents": docs, "ordered": false}
        } else if roll < 85 {
            let picked = rand::seq::index::sample(&mut rng, ids.len(), LOAD_BATCH);
            let stmts: Vec<Document> = picked
                .iter()
                .map(|i| {
                    let id = ids[i];
                    if roll < 75 {
                        doc! {"q": {"_id": id}, "u": {"$set": {"status": format!("s{}", seq % 7), "touched": seq}, "$inc": {"n": 1}}}
                    } else {
                        let size = load_doc_size(&mut rng);
                        doc! {"q": {"_id": id}, "u": generate_document(&mut rng, Bson::Int64(id), seq, size)}
                    }
                })
                .collect();
            doc! {"update": coll, "updates": stmts, "ordered": false}
        } else {
            let stmts: Vec<Document> = (0..LOAD_BATCH)
                .map(|_| {
                    let i = rng.random_range(0..ids.len());
                    doc! {"q": {"_id": ids.swap_remove(i)}, "limit": 1}
                })
                .collect();
            doc! {"delete": coll, "deletes": stmts, "ordered": false}
        };
        match client.database(db).run_command(cmd).await {
            Ok(reply) => {
                n.requests += 1;
                let failed = reply.get_array("writeErrors").map_or(0, |a| a.len()) as u64;
                n.errors += failed;
                n.ops += LOAD_BATCH as u64 - failed.min(LOAD_BATCH as u64);
            }
            Err(e) => {
                n.errors += 1;
                n.first_error.get_or_insert_with(|| e.to_string());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    n
}

struct Sampled {
    lags: Vec<f64>,
    applied: u64,
    secs: f64,
}

/// Sample `GET /status` every 250 ms for `window`.
async fn sample(w: &WorkerProcess, window: Duration) -> Sampled {
    let a0 = w.status().await["eventsApplied"].as_u64().unwrap_or(0);
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lags = Vec::new();
    let mut applied = a0;
    while t0.elapsed() < window {
        tick.tick().await;
        let s = w.status().await;
        if let Some(l) = s["lagTimeSeconds"].as_f64() {
            lags.push(l);
        }
        applied = s["eventsApplied"].as_u64().unwrap_or(applied);
    }
    Sampled {
        lags,
        applied: applied - a0,
        secs: t0.elapsed().as_secs_f64(),
    }
}

/// Seconds until the worker reports no lag.
async fn catch_up(w: &WorkerProcess) -> f64 {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(600) {
        let s = w.status().await;
        if s["lagTimeSeconds"].as_f64().is_some_and(|l| l < 0.5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t0.elapsed().as_secs_f64()
}

/// One row of the apply table: which load ran.
#[derive(Clone, Copy)]
enum ApplyLoad {
    Batched(Option<u32>),
    Mixed,
}

async fn bench_apply(sz: &Sizes, rep: &mut Report) -> Res<()> {
    let src = source_server().await?;
    let dst = server().await?;
    let sc = src.client();
    for (i, db) in ["wl_app", "wl_logs"].iter().enumerate() {
        for j in 0..3 {
            let spec = SeedSpec {
                seed: (i * 10 + j) as u64,
                batch_size: 500,
                sizes: SizeDistribution::Realistic { max: 16 * 1024 },
                ..SeedSpec::new(db, &format!("c{j}"), 2_000)
            };
            seed_dataset(&sc, &spec).await?;
        }
    }
    let w = worker(&src, &dst).await;
    start(&w, json!({"includeNamespaces": ["wl_app.*", "wl_logs.*"]})).await?;
    w.wait_caught_up(1.0, Duration::from_secs(600)).await;

    let mut md = String::from(
        "| source load | writers | achieved ops/s | events applied/s | lag p50 | lag p99 | lag max | catch-up after stop | load |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    let mut runs: Vec<ApplyLoad> = sz
        .apply_rates
        .iter()
        .map(|r| ApplyLoad::Batched(Some(*r)))
        .collect();
    runs.push(ApplyLoad::Batched(None));
    runs.push(ApplyLoad::Mixed);
    for (k, load_kind) in runs.iter().enumerate() {
        let (label, writers) = match load_kind {
            ApplyLoad::Batched(Some(r)) => (format!("{r} ops/s"), batch_writers(Some(*r))),
            ApplyLoad::Batched(None) => ("batched, unthrottled".to_string(), batch_writers(None)),
            ApplyLoad::Mixed => (
                "mixed workload, unthrottled (1 write per request)".to_string(),
                MIXED_GENERATORS as usize,
            ),
        };
        eprintln!("bench: apply/{label}");
        let l0 = load();
        let seed = 100 + k as u64;
        enum Running {
            Batched(BatchLoad),
            Mixed(Vec<mongoferry_e2e::workload::WorkloadHandle>),
        }
        let running = match load_kind {
            ApplyLoad::Batched(rate) => Running::Batched(BatchLoad::spawn(&sc, *rate, seed)),
            ApplyLoad::Mixed => Running::Mixed(spawn_mixed(&sc, seed)),
        };
        // Let the generators reach their rate.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = sample(&w, sz.apply_window).await;
        let (ops, errors, elapsed, first_error) = match running {
            Running::Batched(b) => {
                let (ops, _, errors, first, secs) = b.stop().await;
                (ops, errors, secs, first)
            }
            Running::Mixed(h) => {
                let (ops, errors, secs) = stop_mixed(h).await;
                (ops, errors, secs, None)
            }
        };
        let cu = catch_up(&w).await;
        let l1 = load();
        let achieved = ops as f64 / elapsed.max(0.001);
        let ev = s.applied as f64 / s.secs;
        let (p50, p99) = (percentile(&s.lags, 50.0), percentile(&s.lags, 99.0));
        let max = s.lags.iter().cloned().fold(0f64, f64::max);
        md.push_str(&format!(
            "| {label} | {writers} | {achieved:.0} | {ev:.0} | {} s | **{} s** | {} s | {} s | {l0:.1}–{l1:.1} |\n",
            f1(p50),
            f1(p99),
            f1(max),
            f1(cu)
        ));
        rep.summary.push(format!(
            "apply {label}: achieved {achieved:.0} ops/s, applied {ev:.0} events/s, lag p50 {} s p99 {} s (load {l0:.1}-{l1:.1})",
            f1(p50),
            f1(p99)
        ));
        rows.push(json!({
            "load": match load_kind { ApplyLoad::Batched(_) => "batched", ApplyLoad::Mixed => "mixed" },
            "targetOpsPerSec": match load_kind { ApplyLoad::Batched(r) => json!(r), ApplyLoad::Mixed => Value::Null },
            "writers": writers, "achievedOpsPerSec": achieved, "workloadErrors": errors,
            "firstWorkloadError": first_error,
            "eventsAppliedPerSec": ev, "lagP50": p50, "lagP99": p99, "lagMax": max,
            "samples": s.lags.len(), "catchUpSeconds": cu, "loadAverage": [l0, l1],
        }));
    }

    // Maximum apply rate: a backlog built while paused, drained after resume.
    eprintln!("bench: apply/drain");
    let a = w.post("/pause", json!({})).await;
    if a.code != 200 {
        return Err(format!("pause refused: {:?}", a.body).into());
    }
    w.wait_state("paused", Duration::from_secs(120)).await;
    let b = BatchLoad::spawn(&sc, None, 999);
    tokio::time::sleep(sz.apply_window).await;
    let (ops, _, _, _, _) = b.stop().await;
    let l0 = load();
    let a0 = w.status().await["eventsApplied"].as_u64().unwrap_or(0);
    let t0 = Instant::now();
    let cpu0 = Cpu::now(&w, &src, &dst);
    let a = w.post("/resume", json!({})).await;
    if a.code != 200 {
        return Err(format!("resume refused: {:?}", a.body).into());
    }
    let mut best_1s = 0f64;
    let mut hist: VecDeque<(Instant, u64)> = VecDeque::new();
    let end = loop {
        let s = w.status().await;
        let now = Instant::now();
        let ap = s["eventsApplied"].as_u64().unwrap_or(0);
        hist.push_back((now, ap));
        while hist.len() > 1 && now - hist[0].0 > Duration::from_secs(1) {
            let (t, a) = hist.pop_front().unwrap_or((now, ap));
            best_1s = best_1s.max((ap - a) as f64 / (now - t).as_secs_f64());
        }
        if s["state"] == "running"
            && s["lagTimeSeconds"].as_f64().is_some_and(|l| l < 0.5)
            && now - t0 > Duration::from_millis(500)
        {
            break (now, ap);
        }
        if now - t0 > Duration::from_secs(900) {
            break (now, ap);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let secs = (end.0 - t0).as_secs_f64();
    let cpu = Cpu::now(&w, &src, &dst).since(cpu0);
    let drained = end.1 - a0;
    let l1 = load();
    let rate = drained as f64 / secs;
    md.push_str(&format!(
        "\n**Maximum apply rate** (backlog of {drained} events from {ops} write operations of the batched load, built while paused, \
         drained after resume): **{rate:.0} events/s** on average (resume → caught up in {secs:.1} s), \
         best 1-s window {best_1s:.0} events/s; CPU s worker / source / target {} ({:.0} µs of worker CPU per event); \
         load {l0:.1}–{l1:.1}.\n",
        cpu.label(),
        1e6 * cpu.worker / (drained.max(1) as f64),
    ));
    rep.summary.push(format!(
        "apply drain: {drained} events in {secs:.1} s = {rate:.0} events/s (best 1 s {best_1s:.0}) (load {l0:.1}-{l1:.1})"
    ));
    md.push_str(&format!(
        "\nRate rows and the drain: the **batched load** — {} writers (one per 250 ops/s, 2 to 8; 8 unthrottled) \
         sharing the rate, each request writing {LOAD_BATCH} documents of one of 6 collections: an insert of \
         {LOAD_BATCH} new documents (40%), an update of {LOAD_BATCH} distinct documents ($set + $inc, 35%), \
         {LOAD_BATCH} replacements (10%) or a delete of {LOAD_BATCH} documents (15%); documents 200 B – 16 KiB. \
         **ops = write operations as the server's opcounters and mongostat count them** (one per document \
         written); each is one change event. Mixed row: {MIXED_GENERATORS} seeded workload generators, one \
         write per request (inserts, every kind of update, replaces, deletes, transactions). {}-s windows \
         sampled every 250 ms. Lag is the source's cluster time minus the applied op time: 1-second resolution.\n",
        batch_writers(Some(2000)),
        sz.apply_window.as_secs()
    ));
    rows.push(
        json!({"drain": {"events": drained, "operations": ops, "seconds": secs,
        "eventsPerSec": rate, "best1sEventsPerSec": best_1s, "cpuSeconds": cpu.json(),
        "loadAverage": [l0, l1]}}),
    );
    rep.section("Apply (replication)", &md);
    rep.json.insert("apply".into(), Value::Array(rows));
    Ok(())
}

/// Write `units` units of 4 `$inc` updates on distinct accounts (`transfers`), from 4
/// writers; with `in_txn`, every other unit is one transaction (half of the operations).
/// The operations written.
async fn txn_backlog(c: &Client, units: u64, in_txn: bool, seed: u64) -> Res<u64> {
    use mongoferry_e2e::transfers::{collection_of, ACCOUNTS, BANK_DB};
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed + t);
            let db = c.database(BANK_DB);
            let mut ops = 0u64;
            let mut u = t;
            while u < units {
                let mut ids: Vec<i64> = Vec::with_capacity(4);
                while ids.len() < 4 {
                    let i = rng.random_range(0..ACCOUNTS);
                    if !ids.contains(&i) {
                        ids.push(i);
                    }
                }
                let txn = in_txn && u % 2 == 0;
                let mut s = c.start_session().await?;
                // A transaction that meets another's write (a write conflict) runs again.
                for attempt in 0.. {
                    if txn {
                        s.start_transaction().await?;
                    }
                    let mut r = Ok(());
                    for (k, i) in ids.iter().enumerate() {
                        let d = if k % 2 == 0 { 1 } else { -1 };
                        let coll = db.collection::<Document>(collection_of(*i));
                        let up = coll.update_one(doc! {"_id": i}, doc! {"$inc": {"balance": d}});
                        r = if txn {
                            up.session(&mut s).await.map(|_| ())
                        } else {
                            // Outside transactions, an update that meets a transaction's
                            // write is retried on its own.
                            let mut r = up.await.map(|_| ());
                            for _ in 0..20 {
                                if r.is_ok() {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                r = coll
                                    .update_one(doc! {"_id": i}, doc! {"$inc": {"balance": d}})
                                    .await
                                    .map(|_| ());
                            }
                            r
                        };
                        if r.is_err() {
                            break;
                        }
                    }
                    if txn && r.is_ok() {
                        r = s.commit_transaction().await;
                    }
                    match r {
                        Ok(()) => break,
                        Err(e) if txn && attempt < 20 => {
                            let _ = s.abort_transaction().await;
                            if !e.contains_label("TransientTransactionError") {
                                return Err(e);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                ops += 4;
                u += 4;
            }
            Ok::<u64, mongodb::error::Error>(ops)
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.map_err(|e| e.to_string())??;
    }
    // The backlog ends with a write outside transactions, as a live source keeps writing:
    // otherwise a transaction aborted last (a write conflict, retried) leaves the source's
    // clock past the last event, and the last transactions wait `OPEN_TXN_WAIT` (5 s) before
    // they are taken as complete — a tail of latency, not of throughput.
    c.database(mongoferry_e2e::transfers::BANK_DB)
        .collection::<Document>("a")
        .update_one(doc! {"_id": 0}, doc! {"$inc": {"balance": 1}})
        .await?;
    Ok(n + 1)
}

/// Drain a backlog built while paused: (events applied, seconds from resume to caught up).
async fn drain(w: &WorkerProcess, expected: u64) -> Res<(u64, f64)> {
    let a0 = w.status().await["eventsApplied"].as_u64().unwrap_or(0);
    let t0 = Instant::now();
    let a = w.post("/resume", json!({})).await;
    if a.code != 200 {
        return Err(format!("resume refused: {:?}", a.body).into());
    }
    loop {
        let s = w.status().await;
        let ap = s["eventsApplied"].as_u64().unwrap_or(0) - a0;
        if s["state"] == "running"
            && ap >= expected
            && s["lagTimeSeconds"].as_f64().is_some_and(|l| l < 0.5)
        {
            return Ok((ap, t0.elapsed().as_secs_f64()));
        }
        if t0.elapsed() > Duration::from_secs(900) {
            return Err(format!("drain: {ap} of {expected} events after 900 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Apply throughput of a transaction-heavy load (half of the operations in transactions of
/// 4 updates) against the same operations without transactions: each a backlog built while
/// the worker is paused, drained after resume, both in this run (plain first, then with
/// transactions, then plain again; the ratio is against the mean of the two plain drains).
async fn bench_txn(sz: &Sizes, rep: &mut Report) -> Res<()> {
    use mongoferry_e2e::transfers::seed_accounts;
    let src = source_server().await?;
    let dst = server().await?;
    let sc = src.client();
    seed_accounts(&sc).await;
    let w = worker(&src, &dst).await;
    start(&w, json!({"includeNamespaces": ["bank.*"]})).await?;
    w.wait_caught_up(1.0, Duration::from_secs(600)).await;
    let units: u64 = if sz.apply_window.as_secs() < 10 {
        2_000
    } else {
        10_000
    };
    let mut rates = Vec::new();
    let mut rows = Vec::new();
    for (k, in_txn) in [false, true, false].into_iter().enumerate() {
        eprintln!(
            "bench: txn/{}",
            if in_txn { "transactions" } else { "plain" }
        );
        let a = w.post("/pause", json!({})).await;
        if a.code != 200 {
            return Err(format!("pause refused: {:?}", a.body).into());
        }
        w.wait_state("paused", Duration::from_secs(120)).await;
        let txns0 = w.metric("mongoferry_transactions_applied_total").await;
        let flushes0 = w.metric("mongoferry_flush_operations_count").await;
        let barriers0 = w
            .metric("mongoferry_transaction_barrier_seconds_count")
            .await;
        let ops = txn_backlog(&sc, units, in_txn, 500 + k as u64).await?;
        let l0 = load();
        let (events, secs) = drain(&w, ops).await?;
        let txns = w.metric("mongoferry_transactions_applied_total").await - txns0;
        let flushes = w.metric("mongoferry_flush_operations_count").await - flushes0;
        let barriers = w
            .metric("mongoferry_transaction_barrier_seconds_count")
            .await
            - barriers0;
        let barrier_secs = w.metric("mongoferry_transaction_barrier_seconds_sum").await;
        let rate = events as f64 / secs;
        rates.push(rate);
        rows.push(
            json!({"transactions": in_txn, "operations": ops, "events": events,
            "seconds": secs, "eventsPerSec": rate, "transactionsApplied": txns,
            "flushes": flushes, "batchesThatWaited": barriers, "barrierSecondsTotal": barrier_secs,
            "loadAverage": [l0, load()]}),
        );
        rep.summary.push(format!(
            "txn {}: {events} events in {secs:.1} s = {rate:.0} events/s ({txns} transactions applied, {flushes} target batches, {barriers} waited for barriers)",
            if in_txn { "half in transactions" } else { "no transactions" }
        ));
    }
    let plain = (rates[0] + rates[2]) / 2.0;
    let ratio = rates[1] / plain;
    let md = format!(
        "| load ({units} units of 4 `$inc` updates on 1,000 accounts, 4 writers) | events | drain | events applied/s | target batches |\n|---|---|---|---|---|\n\
         | no transactions (before) | {} | {:.1} s | {:.0} | {} |\n\
         | half of the operations in transactions of 4 | {} | {:.1} s | {:.0} | {} |\n\
         | no transactions (after) | {} | {:.1} s | {:.0} | {} |\n\n\
         **Ratio** with transactions / without (mean of the two plain drains): **{ratio:.2}**. Each \
         backlog built while the worker is paused, drained after resume (resume → caught up and \
         every event applied).\n",
        rows[0]["events"], rows[0]["seconds"].as_f64().unwrap_or(0.0), rates[0], rows[0]["flushes"],
        rows[1]["events"], rows[1]["seconds"].as_f64().unwrap_or(0.0), rates[1], rows[1]["flushes"],
        rows[2]["events"], rows[2]["seconds"].as_f64().unwrap_or(0.0), rates[2], rows[2]["flushes"],
    );
    rep.summary
        .push(format!("txn ratio (transactions / plain): {ratio:.2}"));
    rep.section("Transactions (apply throughput)", &md);
    rep.json
        .insert("txn".into(), json!({"runs": rows, "ratio": ratio}));
    Ok(())
}

/// Cores the worker is sized for in the Memory section's extra row: its memory must not grow
/// with them (the copy's workers do).
const MEMORY_CPUS: u16 = 16;

async fn bench_memory(sz: &Sizes, rep: &mut Report) -> Res<Vec<(u64, f64)>> {
    let src = source_server().await?;
    let sc = src.client();
    let mut md = String::from(
        "| data (1 MB documents) | documents | worker cores | copy time | MB/s | s/GB | preflight | worker peak RSS (VmHWM) | load |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    let mut per_gb = Vec::new();
    let detected = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for (i, bytes) in sz.mem_sizes.iter().enumerate() {
        let db = format!("bench_mem{i}");
        eprintln!("bench: memory/{}: seeding", size_label(*bytes));
        let (docs, seeded) = seed_db(&sc, &db, 2, *bytes, 1_000_000, 50 + i as u64).await?;
        // The first size also with the worker sized for MEMORY_CPUS cores.
        let cores: &[Option<u16>] = if i == 0 {
            &[None, Some(MEMORY_CPUS)]
        } else {
            &[None]
        };
        for cpus in cores {
            let l0 = load();
            let run = {
                let dst = server().await?;
                worker_copy_cpus(&src, &dst, &[format!("{db}.*")], *cpus).await?
            };
            let l1 = load();
            let s_gb = run.secs / (seeded as f64 / 1e9);
            let cores_label = match cpus {
                Some(n) => format!("{n} (`--cpus`)"),
                None => format!("{detected} (detected)"),
            };
            if cpus.is_none() {
                per_gb.push((seeded, s_gb));
            }
            md.push_str(&format!(
                "| {} | {docs} | {cores_label} | {:.1} s | {} | {:.1} | {:.1} s | **{:.0} MiB** | {l0:.1}–{l1:.1} |\n",
                size_label(seeded),
                run.secs,
                f1(mb(seeded) / run.secs),
                s_gb,
                run.preflight_secs,
                mib(run.peak_rss)
            ));
            rep.summary.push(format!(
                "memory {} ({cores_label} cores): copy {:.1} s, worker peak RSS {:.0} MiB (load {l0:.1}-{l1:.1})",
                size_label(seeded),
                run.secs,
                mib(run.peak_rss)
            ));
            rows.push(
                json!({"bytes": seeded, "documents": docs, "cpus": cpus.map(usize::from).unwrap_or(detected),
                "cpusOverride": cpus, "seconds": run.secs, "preflightSeconds": run.preflight_secs,
                "copiedBytes": run.bytes, "peakRssBytes": run.peak_rss, "load": [l0, l1]}),
            );
        }
        sc.database(&db).drop().await?;
    }
    rep.section("Memory", &md);
    rep.json.insert("memory".into(), Value::Array(rows));
    Ok(per_gb)
}

async fn bench_scale(sz: &Sizes, per_gb: &[(u64, f64)], rep: &mut Report) -> Res<()> {
    let src = source_server().await?;
    let sc = src.client();
    let n = sz.many_collections;
    let dbs = 10usize;
    eprintln!("bench: scale: creating {n} collections");
    let names: Vec<(String, String)> = (0..n)
        .map(|i| (format!("bench_many{}", i % dbs), format!("c{i}")))
        .collect();
    let docs: Vec<mongodb::bson::Document> = (0..5)
        .map(|i| doc! {"i": i, "pad": "x".repeat(450)})
        .collect();
    let results: Vec<mongodb::error::Result<()>> = futures::stream::iter(names.iter())
        .map(|(db, c)| {
            let sc = sc.clone();
            let docs = docs.clone();
            async move {
                sc.database(db)
                    .collection::<mongodb::bson::Document>(c)
                    .insert_many(docs)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let l0 = load();
    let dst = server().await?;
    let include: Vec<String> = (0..dbs).map(|d| format!("bench_many{d}.*")).collect();
    let run = worker_copy(&src, &dst, &include).await?;
    let l1 = load();
    let mut md = String::from("| measurement | result |\n|---|---|\n");
    md.push_str(&format!(
        "| copy {n} collections (5 docs each, 10 databases) | **{:.1} s** ({:.1} ms/collection; {} docs) |\n",
        run.secs,
        run.secs * 1000.0 / n as f64,
        run.docs
    ));
    md.push_str(&format!(
        "| … preflight (`POST /start` until it answered; not in the copy time) | {:.1} s |\n| … catalog (list, size, create all) until the first collection completed | {:.1} s |\n| … longest time without a collection completing after that | {:.1} s |\n| … worker peak RSS | {:.0} MiB; load {l0:.1}–{l1:.1} |\n",
        run.preflight_secs,
        run.first_done_secs,
        run.max_gap_secs,
        mib(run.peak_rss)
    ));
    let mut lin = Value::Null;
    if per_gb.len() == 2 {
        let r = ratio(per_gb[1].1, per_gb[0].1);
        md.push_str(&format!(
            "| time per GB (1 MB documents, from Memory) at {} / {} | {:.1} s / {:.1} s (×{:.2}: {}) |\n",
            size_label(per_gb[0].0),
            size_label(per_gb[1].0),
            per_gb[0].1,
            per_gb[1].1,
            r,
            if (0.85..=1.15).contains(&r) { "linear" } else { "not linear" }
        ));
        lin = json!({"sizes": [per_gb[0].0, per_gb[1].0], "secondsPerGb": [per_gb[0].1, per_gb[1].1], "ratio": r});
    }
    rep.summary.push(format!(
        "scale {n} collections: {:.1} s, catalog {:.1} s, longest stall after it {:.1} s, preflight {:.1} s apart, peak RSS {:.0} MiB (load {l0:.1}-{l1:.1})",
        run.secs,
        run.first_done_secs,
        run.max_gap_secs,
        run.preflight_secs,
        mib(run.peak_rss)
    ));
    rep.section("Scale", &md);
    rep.json.insert(
        "scale".into(),
        json!({"collections": n, "seconds": run.secs, "catalogSeconds": run.first_done_secs,
            "maxGapSeconds": run.max_gap_secs, "preflightSeconds": run.preflight_secs, "peakRssBytes": run.peak_rss, "load": [l0, l1],
            "timePerGb": lin}),
    );
    Ok(())
}

/// The peers (PCSM, mongodump|mongorestore) beside mongoferry, run by their own harness
/// (`peerbench` in `../shared/peers`, or `MONGOFERRY_PEERS_DIR`) on the same servers and data
/// in one run. Skipped, with a line saying so, where the peers are not present.
fn bench_peers(opts: &Opts, bin: &Path, rep: &mut Report) -> Res<()> {
    let root = repo_root();
    let dir = std::env::var("MONGOFERRY_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/peers"));
    let script = dir.join("run.sh");
    if !script.exists() {
        let msg = format!(
            "skipped: no peers at {} (set MONGOFERRY_PEERS_DIR)",
            dir.display()
        );
        rep.section("Against the peers", &msg);
        rep.json.insert("peers".into(), json!({ "skipped": msg }));
        return Ok(());
    }
    let out = opts.out.join("peers");
    let (regular, small) = opts.peers_mib;
    let server = mongoferry_e2e::servers::find_binary(mongoferry_e2e::servers::ServerKind::Rust)
        .map_err(|e| format!("secantusd-rs: {e}"))?;
    eprintln!(
        "bench: peers: {} {regular} {small} -> {}",
        script.display(),
        out.display()
    );
    let st = Command::new("bash")
        .arg(&script)
        .args([regular.to_string(), small.to_string()])
        .env("MONGOFERRY_BIN", bin)
        .env("SECANTUSD_RS", &server)
        .env("OUT", &out)
        .env("WORK", root.join("target/peerbench-work"))
        .current_dir(&root)
        .status()?;
    let results = std::fs::read_to_string(out.join("results.md")).unwrap_or_default();
    // peerbench's own headings, one level below this report's sections.
    let table = results
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if l.starts_with("# ") || l.starts_with("## ") => format!("###{rest}"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    rep.section(
        &format!("Against the peers (peerbench {regular} {small}, same run)"),
        &format!(
            "Reproduce: `{} {regular} {small}`. Every number: `{}`.\n\n{table}",
            script.display(),
            out.join("results.json").display()
        ),
    );
    if let Ok(j) = std::fs::read_to_string(out.join("results.json")) {
        rep.json.insert(
            "peers".into(),
            serde_json::from_str(&j).unwrap_or(Value::String(j)),
        );
    }
    if !st.success() {
        return Err(format!("peerbench exited with {st}").into());
    }
    rep.summary
        .push(format!("peers: peerbench results in {}", out.display()));
    Ok(())
}

/// `kubectl patch desiredState` (paused ⇄ running) → `.status.state`, p50/p95 over 20 patches:
/// on the MigrationJob named by `MONGOFERRY_BENCH_MIGRATIONJOB` (`namespace/name`, running, in
/// the cluster of `KUBECONFIG`), else — in full runs — on one this run creates on the
/// project's test control plane (kube-apiserver + etcd + controllers + pod runner, built from
/// Go modules by `e2e/scripts/controlplane.sh`), with the operator and its worker pod running
/// the release binary.
async fn bench_operator(quick: bool, bin: &Path, rep: &mut Report) {
    let l0 = load();
    let r: Res<(Vec<(String, f64)>, String)> = match std::env::var("MONGOFERRY_BENCH_MIGRATIONJOB")
    {
        Ok(mj) => tokio::task::spawn_blocking(move || {
            let (ns, name) = mj
                .split_once('/')
                .ok_or("MONGOFERRY_BENCH_MIGRATIONJOB must be namespace/name")?;
            let worker_url = std::env::var("MONGOFERRY_BENCH_WORKER_URL").ok();
            let v = patch_latencies(&Kubectl::ambient(), ns, name, worker_url.as_deref())?;
            Ok((v, format!("MigrationJob {mj} of the cluster in KUBECONFIG")))
        })
        .await
        .unwrap_or_else(|e| Err(format!("operator measurement panicked: {e}").into())),
        Err(_) if quick => Err(
            "--quick starts no control plane (where cpctl is not built yet, its first build takes ~15 min of CPU); the full run measures it"
                .into(),
        ),
        Err(_) => operator_on_test_control_plane(bin).await,
    };
    let l1 = load();
    let md = match &r {
        Ok((v, what)) => {
            let all: Vec<f64> = v.iter().map(|(_, t)| *t).collect();
            let of = |want: &str| -> Vec<f64> {
                v.iter()
                    .filter(|(w, _)| w == want)
                    .map(|(_, t)| *t)
                    .collect()
            };
            let (p50, p95) = (percentile(&all, 50.0), percentile(&all, 95.0));
            let (pause, resume) = (of("paused"), of("running"));
            rep.json.insert(
                "operator".into(),
                json!({"patches": v.len(), "p50Seconds": p50, "p95Seconds": p95,
                    "pause": {"p50Seconds": percentile(&pause, 50.0), "p95Seconds": percentile(&pause, 95.0)},
                    "resume": {"p50Seconds": percentile(&resume, 50.0), "p95Seconds": percentile(&resume, 95.0)},
                    "samples": v.iter().map(|(w, t)| json!({"desired": w, "seconds": t})).collect::<Vec<_>>(),
                    "on": what, "loadAverage": [l0, l1]}),
            );
            rep.summary.push(format!(
                "operator patch-to-state: p50 {p50:.2} s, p95 {p95:.2} s over {} patches (load {l0:.1}-{l1:.1})",
                v.len()
            ));
            format!(
                "| patches | p50 | p95 | pause p50 / p95 | resume p50 / p95 | max | load |\n|---|---|---|---|---|---|---|\n\
                 | {} | **{p50:.2} s** | **{p95:.2} s** | {:.2} s / {:.2} s | {:.2} s / {:.2} s | {:.2} s | {l0:.1}–{l1:.1} |\n\n\
                 `kubectl patch mj … --type merge -p '{{\"spec\":{{\"desiredState\":…}}}}'` (paused ⇄ running, alternating) \
                 until `kubectl get mj -w` shows `.status.state` equal to the desired state: the apiserver, the operator's \
                 watch and reconcile, its call to the worker (`/pause`: drain, flush, checkpoint; `/resume`), its status \
                 update, and the watch back. On: {what}.\n",
                v.len(),
                percentile(&pause, 50.0),
                percentile(&pause, 95.0),
                percentile(&resume, 50.0),
                percentile(&resume, 95.0),
                all.iter().cloned().fold(0f64, f64::max),
            )
        }
        Err(why) => {
            rep.json
                .insert("operator".into(), json!({"notMeasured": why.to_string()}));
            rep.summary
                .push(format!("operator patch-to-state: not measured: {why}"));
            format!("not measured: {why}\n")
        }
    };
    rep.section("Operator", &md);
}

/// Start the test control plane, the operator and a MigrationJob between two fresh SecantusDB
/// servers; wait until it replicates; measure; stop everything.
async fn operator_on_test_control_plane(bin: &Path) -> Res<(Vec<(String, f64)>, String)> {
    eprintln!("bench: operator: starting the test control plane (e2e/scripts/controlplane.sh)");
    let t = Instant::now();
    let b = bin.to_path_buf();
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&b)).await??;
    eprintln!(
        "bench: operator: control plane up in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let kc = Kubectl::new(&cp);
    kc.install_crd(CRD);
    let src = source_server().await?;
    let dst = server().await?;
    let mut spec = SeedSpec::new("shop", "orders", 2_000);
    spec.batch_size = 500;
    seed_dataset(&src.client(), &spec).await?;
    let _op = Operator::start_with(&cp, bin, "bench", false, &[]);
    let job = format!(
        "apiVersion: mongoferry.io/v1alpha1\nkind: MigrationJob\nmetadata:\n  name: bench\n  namespace: default\nspec:\n  desiredState: running\n  source:\n    uri: mongodb://{}/\n  target:\n    uri: mongodb://{}/\n  namespaces:\n    include: ['shop.*']\n",
        src.host(),
        dst.host()
    );
    let path = cp.state_dir.join("bench-job.yaml");
    std::fs::write(&path, job)?;
    kc.run(&["apply", "-f", &path.display().to_string()])?;
    let t = Instant::now();
    loop {
        let j = kc.get("mj", "bench").unwrap_or(Value::Null);
        if j["status"]["state"] == "running" && j["status"]["phase"] == "replicating" {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "the MigrationJob did not reach running/replicating in 300 s: {}",
                j["status"]
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "bench: operator: MigrationJob replicating after {:.0} s; patching",
        t.elapsed().as_secs_f64()
    );
    // A light write load: the migration is live while it is paused and resumed.
    let wl = Workload::spawn(
        src.client(),
        WorkloadConfig {
            seed: 7,
            databases: vec!["shop".into()],
            ops_per_sec: Some(20),
            ..Default::default()
        },
    );
    let kc2 = kc.clone();
    let r = tokio::task::spawn_blocking(move || patch_latencies(&kc2, "default", "bench", None))
        .await
        .unwrap_or_else(|e| Err(format!("operator measurement panicked: {e}").into()));
    wl.stop().await;
    let _ = kc.run(&["delete", "mj", "bench", "--wait=false"]);
    drop(cp);
    Ok((
        r?,
        "a MigrationJob created by this run on the test control plane (kube-apiserver 1.33, etcd, \
         pod runner; e2e/scripts/controlplane.sh), operator and worker pod running the release binary, \
         SecantusDB source and target, 20 ops/s of writes"
            .to_string(),
    ))
}

/// 20 patches alternating paused/running; (desired state, seconds to see it) each.
fn patch_latencies(
    kc: &Kubectl,
    ns: &str,
    name: &str,
    worker_url: Option<&str>,
) -> Res<Vec<(String, f64)>> {
    let first = kc.run(&[
        "get",
        "mj",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.status.state}",
    ])?;
    if first != "running" {
        return Err(format!("MigrationJob {ns}/{name} is not running (state {first:?})").into());
    }
    let mut out = Vec::new();
    for i in 0..20 {
        let want = if i % 2 == 0 { "paused" } else { "running" };
        // Watch before patching, so the change is seen as soon as the apiserver sends it.
        let mut watch = kc.command();
        watch
            .args([
                "get",
                "mj",
                name,
                "-n",
                ns,
                "-w",
                "-o",
                "jsonpath={.status.state}{\"\\n\"}",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut watch = watch.spawn()?;
        let stdout = watch.stdout.take().ok_or("kubectl watch without stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line.trim().to_string())).is_err() {
                    break;
                }
            }
        });
        // The first line is the current state.
        let _ = rx.recv_timeout(Duration::from_secs(10));
        let t0 = Instant::now();
        let patch = format!("{{\"spec\":{{\"desiredState\":\"{want}\"}}}}");
        if let Err(e) = kc.run(&[
            "patch", "mj", name, "-n", ns, "--type", "merge", "-p", &patch,
        ]) {
            let _ = watch.kill();
            let _ = watch.wait();
            return Err(e.into());
        }
        let seen = match worker_url {
            Some(url) => poll_worker(url, want, t0),
            None => loop {
                match rx.recv_timeout(Duration::from_secs(120)) {
                    Ok((t, s)) if s == want => break Some(t),
                    Ok(_) => continue,
                    Err(_) => break None,
                }
            },
        };
        let _ = watch.kill();
        let _ = watch.wait();
        let t = seen.ok_or(format!("state {want} not reached in 120 s"))?;
        out.push((want.to_string(), (t - t0).as_secs_f64()));
    }
    Ok(out)
}

/// Poll the worker's `/status` (via curl) until its state is `want`.
fn poll_worker(url: &str, want: &str, t0: Instant) -> Option<Instant> {
    while t0.elapsed() < Duration::from_secs(120) {
        let body = sh("curl", &["-fsS", &format!("{url}/status")]);
        if serde_json::from_str::<Value>(&body)
            .ok()
            .is_some_and(|v| v["state"] == want)
        {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

// ---------------------------------------------------------------------------------------------

async fn run(opts: Opts, bin: PathBuf) -> Res<()> {
    let mut sz = Sizes::new(opts.quick);
    if let Some(n) = opts.copy_mib {
        sz.copy_bytes = n * MIB;
    }
    if let Some(n) = opts.collections {
        sz.many_collections = n;
    }
    let started = Instant::now();
    let root = repo_root();
    let machine = json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))),
        "memoryGiB": mem_total_gib(),
        "loadAtStart": sh("cat", &["/proc/loadavg"]),
        "kernel": sh("uname", &["-r"]),
    });
    let versions = json!({
        "mongoferry": sh(&bin.display().to_string(), &["--version"]),
        "commit": sh("git", &["-C", &root.display().to_string(), "rev-parse", "--short", "HEAD"]),
        "server": format!("secantusd-rs {SECANTUS_RS_VERSION}"),
        "rustc": sh("rustc", &["-V"]),
        // A debug worker (e.g. CI's smoke run) is several times slower than a release one.
        "workerBuild": if bin.components().any(|c| c.as_os_str() == "debug") { "debug" } else { "release" },
        "benchBuild": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    let date = sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let mut rep = Report::default();
    let on = |s: &str| opts.only.iter().any(|o| o == s);
    let mut failures = Vec::new();
    if on("copy") {
        if let Err(e) = bench_copy(&sz, &mut rep).await {
            failures.push(format!("copy: {e}"));
        }
    }
    if on("apply") {
        if let Err(e) = bench_apply(&sz, &mut rep).await {
            failures.push(format!("apply: {e}"));
        }
    }
    if on("txn") {
        if let Err(e) = bench_txn(&sz, &mut rep).await {
            failures.push(format!("txn: {e}"));
        }
    }
    let mut per_gb = Vec::new();
    if on("memory") {
        match bench_memory(&sz, &mut rep).await {
            Ok(v) => per_gb = v,
            Err(e) => failures.push(format!("memory: {e}")),
        }
    }
    if on("scale") {
        if let Err(e) = bench_scale(&sz, &per_gb, &mut rep).await {
            failures.push(format!("scale: {e}"));
        }
    }
    if on("operator") {
        bench_operator(opts.quick, &bin, &mut rep).await;
    }
    if on("peers") {
        if let Err(e) = bench_peers(&opts, &bin, &mut rep) {
            failures.push(format!("peers: {e}"));
        }
    }
    let total = started.elapsed().as_secs_f64();
    let header = format!(
        "## Benchmark results ({mode})\n\n- date: {date}\n- machine: {} CPUs ({}), {:.1} GiB memory, kernel {}; load average at start {}, at end {}\n- versions: {} (commit {}, {} build), {}, {}\n- settings: engine defaults (no tuning in `/start`); copy {} per mix in {} collections; apply windows {} s; memory {} and {}; {} collections; total run {:.0} s\n",
        machine["nproc"],
        machine["cpu"].as_str().unwrap_or("?"),
        mem_total_gib(),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["loadAtStart"].as_str().unwrap_or("?"),
        sh("cat", &["/proc/loadavg"]),
        versions["mongoferry"].as_str().unwrap_or("?"),
        versions["commit"].as_str().unwrap_or("?"),
        versions["workerBuild"].as_str().unwrap_or("?"),
        versions["server"].as_str().unwrap_or("?"),
        versions["rustc"].as_str().unwrap_or("?"),
        size_label(sz.copy_bytes),
        sz.copy_collections,
        sz.apply_window.as_secs(),
        size_label(sz.mem_sizes[0]),
        size_label(sz.mem_sizes[1]),
        sz.many_collections,
        total,
        mode = if opts.quick { "--quick" } else { "full" },
    );
    let mut md = header;
    md.push_str(&rep.md);
    if !failures.is_empty() {
        md.push_str("\n### Failed sections\n\n");
        for f in &failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("date".into(), json!(date));
    out.insert("quick".into(), json!(opts.quick));
    out.insert("machine".into(), machine);
    out.insert("versions".into(), versions);
    out.insert("totalSeconds".into(), json!(total));
    out.insert("failures".into(), json!(failures));
    out.insert("summary".into(), json!(rep.summary));
    let rep_summary = rep.summary;
    out.extend(rep.json);
    std::fs::create_dir_all(&opts.out)?;
    std::fs::write(
        opts.out.join("bench.json"),
        serde_json::to_string_pretty(&Value::Object(out))?,
    )?;
    std::fs::write(opts.out.join("bench.md"), &md)?;
    for l in &rep_summary {
        println!("summary: {l}");
    }
    eprintln!(
        "bench: wrote {} and {} ({total:.0} s)",
        opts.out.join("bench.json").display(),
        opts.out.join("bench.md").display()
    );
    if !failures.is_empty() {
        return Err(failures.join("; ").into());
    }
    Ok(())
}
