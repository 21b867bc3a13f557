//! Transfers between accounts, and a checker of their invariant on the target.
//!
//! The source holds [`ACCOUNTS`] accounts in three collections of database [`BANK_DB`]
//! (account `i` in `a`, `b` or `c` by `i % 3`), each starting with [`START_BALANCE`]. Each
//! transfer is one source transaction that moves amounts between 2–5 accounts (so 1–3
//! collections) with `$inc`: the sum of all balances never changes. The checker reads the
//! target with snapshot reads (a transaction with `readConcern: snapshot` holding one
//! `$group` per collection) and counts sums that differ from the total: a reader that saw part
//! of a transaction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::ReadConcern;
use mongodb::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::compare::CompareOptions;
use crate::servers::MongoServer;
use crate::worker::{WorkerOptions, WorkerProcess};
use crate::workload::{SizeDistribution, Workload, WorkloadConfig};

pub const BANK_DB: &str = "bank";
pub const COLLECTIONS: [&str; 3] = ["a", "b", "c"];
pub const ACCOUNTS: i64 = 1_000;
pub const START_BALANCE: i64 = 1_000;
pub const TOTAL: i64 = ACCOUNTS * START_BALANCE;

/// The collection of account `i`.
pub fn collection_of(i: i64) -> &'static str {
    COLLECTIONS[(i % 3) as usize]
}

/// Create the accounts on the source.
pub async fn seed_accounts(c: &Client) {
    for (k, name) in COLLECTIONS.iter().enumerate() {
        let docs: Vec<Document> = (0..ACCOUNTS)
            .filter(|i| (i % 3) as usize == k)
            .map(|i| doc! {"_id": i, "balance": START_BALANCE, "owner": format!("owner-{i}")})
            .collect();
        c.database(BANK_DB)
            .collection::<Document>(name)
            .insert_many(docs)
            .await
            .expect("seed accounts");
    }
}

/// The amounts of one transfer: `n` accounts (distinct) and their changes, summing to 0.
/// Pure.
pub fn plan_transfer(rng: &mut StdRng) -> Vec<(i64, i64)> {
    let n = rng.random_range(2..=5);
    let mut ids: Vec<i64> = Vec::with_capacity(n);
    while ids.len() < n {
        let i = rng.random_range(0..ACCOUNTS);
        if !ids.contains(&i) {
            ids.push(i);
        }
    }
    let mut deltas: Vec<i64> = (0..n - 1).map(|_| rng.random_range(-50..=50)).collect();
    deltas.push(-deltas.iter().sum::<i64>());
    ids.into_iter().zip(deltas).collect()
}

/// What the transfer tasks did.
#[derive(Debug, Default, Clone, Copy)]
pub struct TransferStats {
    pub committed: u64,
    /// Aborted (write conflicts between the tasks, mostly): nothing of them was written.
    pub aborted: u64,
    /// Operations of the committed transfers.
    pub operations: u64,
}

/// Transfer tasks on the source, until stopped.
pub struct Transfers {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<TransferStats>>,
}

impl Transfers {
    /// `tasks` concurrent transfer loops, each at most `per_task_rate` transfers a second.
    pub fn spawn(c: &Client, tasks: usize, per_task_rate: u32, seed: u64) -> Transfers {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let tasks = (0..tasks)
            .map(|t| {
                let (c, stop, committed) = (c.clone(), stop.clone(), committed.clone());
                tokio::spawn(async move {
                    transfer_loop(c, stop, committed, per_task_rate, seed + t as u64).await
                })
            })
            .collect();
        Transfers {
            stop,
            committed,
            tasks,
        }
    }

    /// Transfers committed so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> TransferStats {
        self.stop.store(true, Ordering::SeqCst);
        let mut s = TransferStats::default();
        for t in self.tasks {
            let r = t.await.expect("transfer task");
            s.committed += r.committed;
            s.aborted += r.aborted;
            s.operations += r.operations;
        }
        s
    }
}

async fn transfer_loop(
    c: Client,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    rate: u32,
    seed: u64,
) -> TransferStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = TransferStats::default();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let db = c.database(BANK_DB);
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let plan = plan_transfer(&mut rng);
        let mut session = c.start_session().await.expect("session");
        let mut ok = session.start_transaction().await.is_ok();
        for (i, d) in &plan {
            if !ok {
                break;
            }
            ok = db
                .collection::<Document>(collection_of(*i))
                .update_one(doc! {"_id": i}, doc! {"$inc": {"balance": d}})
                .session(&mut session)
                .await
                .is_ok_and(|r| r.modified_count == 1);
        }
        if ok {
            ok = session.commit_transaction().await.is_ok();
        } else {
            let _ = session.abort_transaction().await;
        }
        if ok {
            s.committed += 1;
            s.operations += plan.len() as u64;
            committed.fetch_add(1, Ordering::Relaxed);
        } else {
            s.aborted += 1;
        }
        if let Some(rest) = period.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    s
}

/// The sum of all balances and the number of accounts in one snapshot read of `c`.
pub async fn snapshot_sum(c: &Client) -> mongodb::error::Result<(i64, i64)> {
    let mut s = c.start_session().await?;
    s.start_transaction()
        .read_concern(ReadConcern::snapshot())
        .await?;
    let mut sum = 0;
    let mut n = 0;
    for name in COLLECTIONS {
        let mut cur = c
            .database(BANK_DB)
            .collection::<Document>(name)
            .aggregate([
                doc! {"$group": {"_id": null, "s": {"$sum": "$balance"}, "n": {"$sum": 1}}},
            ])
            .session(&mut s)
            .await?;
        let docs: Vec<Document> = cur.stream(&mut s).try_collect().await?;
        for d in docs {
            sum += number(&d, "s");
            n += number(&d, "n");
        }
    }
    let _ = s.commit_transaction().await;
    Ok((sum, n))
}

fn number(d: &Document, k: &str) -> i64 {
    match d.get(k) {
        Some(mongodb::bson::Bson::Int32(v)) => i64::from(*v),
        Some(mongodb::bson::Bson::Int64(v)) => *v,
        Some(mongodb::bson::Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

/// What the checker saw.
#[derive(Debug, Default, Clone)]
pub struct CheckStats {
    /// Sums read after the copy completed (`armed`), and those among them that were wrong.
    pub sums: u64,
    pub violations: u64,
    /// Sums read before (during the copy: not all accounts there yet, not counted).
    pub sums_before: u64,
    /// Reads that failed (a target busy or restarting): not counted as sums.
    pub errors: u64,
    pub samples: Vec<String>,
}

/// Checker tasks reading the target continuously; sums count once `armed` is set.
pub struct Checker {
    stop: Arc<AtomicBool>,
    pub armed: Arc<AtomicBool>,
    /// Sums read since armed, so far.
    pub sums: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<CheckStats>>,
}

impl Checker {
    pub fn spawn(target: &Client, tasks: usize) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let armed = Arc::new(AtomicBool::new(false));
        let sums = Arc::new(AtomicU64::new(0));
        let tasks = (0..tasks)
            .map(|_| {
                let (c, stop, armed, sums) =
                    (target.clone(), stop.clone(), armed.clone(), sums.clone());
                tokio::spawn(async move { check_loop(c, stop, armed, sums).await })
            })
            .collect();
        Checker {
            stop,
            armed,
            sums,
            tasks,
        }
    }

    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub async fn stop(self) -> CheckStats {
        self.stop.store(true, Ordering::SeqCst);
        let mut s = CheckStats::default();
        for t in self.tasks {
            let r = t.await.expect("checker task");
            s.sums += r.sums;
            s.violations += r.violations;
            s.sums_before += r.sums_before;
            s.errors += r.errors;
            s.samples.extend(r.samples);
        }
        s.samples.truncate(20);
        s
    }
}

async fn check_loop(
    c: Client,
    stop: Arc<AtomicBool>,
    armed: Arc<AtomicBool>,
    sums: Arc<AtomicU64>,
) -> CheckStats {
    let mut s = CheckStats::default();
    while !stop.load(Ordering::SeqCst) {
        let on = armed.load(Ordering::SeqCst);
        match snapshot_sum(&c).await {
            Ok((sum, n)) if on => {
                s.sums += 1;
                sums.fetch_add(1, Ordering::Relaxed);
                if sum != TOTAL || n != ACCOUNTS {
                    s.violations += 1;
                    if s.samples.len() < 20 {
                        s.samples.push(format!(
                            "sum {sum} over {n} accounts (expected {TOTAL}) at {:?}",
                            std::time::SystemTime::now()
                        ));
                    }
                }
            }
            Ok(_) => s.sums_before += 1,
            Err(_) => {
                s.errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    s
}

/// The invariant scenario: what runs and for how long.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// How long the source runs transfers and other writes, from before the copy starts, at
    /// least; and longer, up to `max_load`, until the checker read `min_sums` sums after the
    /// copy.
    pub load: Duration,
    pub min_sums: u64,
    pub max_load: Duration,
    /// Worker SIGKILLs (and restarts) during replication, spread over the load.
    pub kills: usize,
    /// Documents of other data copied with the accounts (so the copy takes a while).
    pub filler_docs: u64,
    /// Concurrent transfer loops on the source and transfers a second each.
    pub transfer_tasks: usize,
    pub transfer_rate: u32,
}

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub transfers: TransferStats,
    pub other_writes: u64,
    pub check: CheckStats,
    pub kills: usize,
    /// How long the load ran.
    pub load_secs: f64,
    /// From the start of the load to the copy's completion.
    pub copy_done_after: Duration,
    pub transactions_applied: f64,
    pub transactions_split: f64,
    pub elapsed: Duration,
}

/// Run the scenario from `src` to `dst`: accounts and filler seeded, transfers and
/// non-transactional writes (the workload generator, database `mix`) during the copy and
/// replication, the checker on the target armed once `initialSync.completed`, `kills` worker
/// SIGKILLs spread over replication; then the load stops, the worker catches up and the
/// comparator must find the target equal to the source.
pub async fn run_scenario(src: &MongoServer, dst: &MongoServer, sc: Scenario) -> Outcome {
    let started = Instant::now();
    let c = src.client();
    seed_accounts(&c).await;
    crate::fixtures::seed(
        &c,
        BANK_DB,
        "filler",
        sc.filler_docs,
        SizeDistribution::Fixed(2048),
        7,
        1_000,
    )
    .await;
    let transfers = Transfers::spawn(&c, sc.transfer_tasks, sc.transfer_rate, 11);
    let others = Workload::spawn(
        c.clone(),
        WorkloadConfig {
            seed: 5,
            databases: vec!["mix".into()],
            collections_per_db: 2,
            ops_per_sec: Some(50),
            transactions: false,
            max_doc_bytes: 4096,
            ..Default::default()
        },
    );
    let checker = Checker::spawn(&dst.client(), 3);
    let load_start = Instant::now();
    let mut args = Vec::new();
    if sc.kills > 0 {
        args.extend(["--lease-ttl".to_string(), "5".to_string()]);
    }
    let mut w = WorkerProcess::start(WorkerOptions {
        args,
        ..crate::fixtures::worker_opts(src.uri(), dst.uri())
    })
    .await;
    w.start_migration(json!({})).await;
    w.wait_for("the copy", Duration::from_secs(300), |s| {
        s["initialSync"]["completed"] == true
    })
    .await;
    checker.arm();
    let copy_done_after = load_start.elapsed();
    println!(
        "copy completed after {:.1}s ({} transfers committed so far)",
        copy_done_after.as_secs_f64(),
        transfers.committed()
    );
    let left = sc.load.saturating_sub(load_start.elapsed());
    let slot = left / (sc.kills as u32 + 1);
    for k in 0..sc.kills {
        // Kill points: each later in its slot, never at the same moment of a flush cycle.
        let jitter = Duration::from_millis(137 * (k as u64 + 1));
        tokio::time::sleep(slot.saturating_sub(jitter)).await;
        let before = transfers.committed();
        w.kill();
        println!(
            "kill {} at {:.1}s ({} transfers committed)",
            k + 1,
            load_start.elapsed().as_secs_f64(),
            before
        );
        w.restart().await;
        w.wait_state("running", Duration::from_secs(60)).await;
    }
    tokio::time::sleep(sc.load.saturating_sub(load_start.elapsed())).await;
    while checker.sums.load(Ordering::Relaxed) < sc.min_sums && load_start.elapsed() < sc.max_load {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let load_secs = load_start.elapsed().as_secs_f64();
    let transfers = transfers.stop().await;
    let other = others.stop().await;
    w.wait_caught_up(1.0, Duration::from_secs(300)).await;
    // Past the lag's 1-s resolution: everything written is applied.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let check = checker.stop().await;
    let (sum, n) = snapshot_sum(&dst.client()).await.expect("final sum");
    assert_eq!((sum, n), (TOTAL, ACCOUNTS), "the target's final balances");
    crate::compare::assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
    let out = Outcome {
        transfers,
        other_writes: other.total_ops(),
        check,
        kills: sc.kills,
        load_secs,
        copy_done_after,
        transactions_applied: w.metric("mongoferry_transactions_applied_total").await,
        transactions_split: w.metric("mongoferry_transactions_split_total").await,
        elapsed: started.elapsed(),
    };
    println!(
        "load {:.0}s, copy completed after {:.0}s; transfers: {} committed ({} operations, {} aborted), other writes: {}, kills: {}; \
         checker: {} sums after the copy, {} violations ({} before, {} read errors); \
         transactions applied by the last worker: {}, split: {}; {:.0}s",
        out.load_secs,
        out.copy_done_after.as_secs_f64(),
        out.transfers.committed,
        out.transfers.operations,
        out.transfers.aborted,
        out.other_writes,
        out.kills,
        out.check.sums,
        out.check.violations,
        out.check.sums_before,
        out.check.errors,
        out.transactions_applied,
        out.transactions_split,
        out.elapsed.as_secs_f64()
    );
    assert_eq!(other.errors, 0, "{:?}", other.error_samples);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_keeps_the_sum() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..1000 {
            let p = plan_transfer(&mut rng);
            assert!((2..=5).contains(&p.len()));
            assert_eq!(p.iter().map(|(_, d)| d).sum::<i64>(), 0);
            let mut ids: Vec<i64> = p.iter().map(|(i, _)| *i).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), p.len());
        }
    }
}
