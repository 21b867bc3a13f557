//! One writer per target (issue 14), against real servers and real worker processes: a worker
//! frozen with SIGSTOP while it holds read-ahead (a stalled VM, a node cut off) that thaws
//! after another took over; two workers with the same host name and PID (replacement pods);
//! a target that belongs to another job; clients that hang up mid-command.
//!
//! The quick cases run in CI. The long ones are `#[ignore]`d and run by the reliability
//! suite (`cargo test -p mongoferry-e2e --test fencing -- --ignored --test-threads=1`);
//! docs/reliability.md has their last results. `FENCING_TRIALS` sets the trial counts,
//! `FENCING_ONLY` one kind of freeze.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use mongoferry_e2e::compare::{assert_same, CompareOptions};
use mongoferry_e2e::fixtures::{pair, worker_opts};
use mongoferry_e2e::servers::MongoServer;
use mongoferry_e2e::worker::{WorkerOptions, WorkerProcess};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const DOCS: i32 = 3_000;

fn trials(default: usize) -> usize {
    std::env::var("FENCING_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn opts(src: &MongoServer, dst: &MongoServer, job: &str) -> WorkerOptions {
    WorkerOptions {
        args: vec!["--job-id".into(), job.into()],
        ..worker_opts(src.uri(), dst.uri())
    }
}

async fn seed(c: &Client) {
    let coll = c.database("f").collection::<Document>("c");
    coll.insert_many((0..DOCS).map(|i| doc! {"_id": i, "v": 0, "pad": "x".repeat(200)}))
        .await
        .expect("seed");
}

/// One round: a `$set` of `v` on every document with `_id < upto` (one change event each).
async fn round(c: &Client, v: i32, upto: i32) {
    c.database("f")
        .collection::<Document>("c")
        .update_many(doc! {"_id": {"$lt": upto}}, doc! {"$set": {"v": v}})
        .await
        .expect("round");
}

/// A labelled metric's value.
fn labelled(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == format!("{name}{{{label}}}")).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(-1.0)
}

/// What a thawed worker reports once it has noticed it was deposed: its state and its
/// committed write batches, twice, seconds apart. (A batch whose commit reached the target
/// before the freeze may be acknowledged, and counted, just after the thaw: it committed
/// before the new holder took over. So the counts are read once the worker settled.)
async fn after_thaw(a: &WorkerProcess) -> (Value, f64, f64) {
    let committed = |m: &str| labelled(m, "mongoferry_fence_batches", "outcome=\"committed\"");
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.status().await["state"] != "failed" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = committed(&a.metrics().await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = a.status().await;
    let later = committed(&a.metrics().await);
    (st, first, later)
}

/// Every document of the user databases on `c`, in `_id` order: what a write would change.
async fn snapshot(c: &Client) -> Vec<Document> {
    use futures::TryStreamExt;
    let mut out = Vec::new();
    for coll in ["c", "big"] {
        let docs: Vec<Document> = c
            .database("f")
            .collection::<Document>(coll)
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("read");
        out.extend(docs);
    }
    out
}

/// A frozen worker writes nothing once thawed, and the target ends at the source's latest
/// version of every document. `freeze_in`: "replication", "copy" or "finalize".
async fn frozen_worker_trial(trial: usize, freeze_in: &str) {
    let (src, dst) = pair().await;
    let c = src.client();
    seed(&c).await;
    if freeze_in != "replication" {
        // Enough to copy (and to verify) for a few seconds, and indexes to restore.
        for (name, key, extra) in [
            ("v_1", doc! {"v": 1}, doc! {}),
            ("u_1", doc! {"u": 1}, doc! {"unique": true}),
            ("ttl", doc! {"at": 1}, doc! {"expireAfterSeconds": 3600}),
        ] {
            let mut spec = doc! {"key": key, "name": name};
            spec.extend(extra);
            c.database("f")
                .run_command(doc! {"createIndexes": "big", "indexes": [spec]})
                .await
                .expect("index");
        }
        let big = c.database("f").collection::<Document>("big");
        for chunk in 0..20 {
            big.insert_many((0..500).map(
                |i| doc! {"_id": chunk * 500 + i, "u": chunk * 500 + i, "pad": "y".repeat(4_000)},
            ))
            .await
            .expect("seed big");
        }
    }
    let job = format!("job-{trial}");
    let a = WorkerProcess::start(opts(&src, &dst, &job)).await;
    let start = if freeze_in == "copy" {
        json!({"clone": {"insertWorkers": 1, "readWorkers": 1, "batchBytes": 262144}})
    } else {
        json!({})
    };
    a.start_migration(start).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(trial as u64);
    match freeze_in {
        "copy" => {
            a.wait_for("copying", Duration::from_secs(60), |s| {
                s["initialSync"]["clonedDocuments"].as_u64().unwrap_or(0) > 0
            })
            .await;
        }
        _ => {
            a.wait_caught_up(2.0, Duration::from_secs(120)).await;
            // ≥ 20,000 updates to 3,000 documents; the freeze lands while A applies them.
            for v in 1..=7 {
                round(&c, v, DOCS).await;
            }
            if freeze_in == "finalize" {
                a.wait_caught_up(1.0, Duration::from_secs(120)).await;
                let r = a.post("/finalize", json!({})).await;
                assert_eq!(r.code, 200, "{:?}", r.body);
                // Freeze while it restores indexes or verifies.
                a.wait_for("restoring or verifying", Duration::from_secs(120), |s| {
                    let step = s["finalization"]["step"].as_str().unwrap_or("");
                    step == "indexes" || step == "verifying" || s["state"] == "finalized"
                })
                .await;
            } else {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            }
        }
    }
    let before = a.status().await;
    if before["state"] == "finalized" {
        println!("trial {trial} ({freeze_in}): A finalized before it could be frozen");
        return;
    }
    a.signal("STOP");
    let frozen_at = Instant::now();
    println!(
        "trial {trial} ({freeze_in}): A frozen having read {} events and applied {} (copied {} documents; finalize step {})",
        before["eventsRead"], before["eventsApplied"], before["initialSync"]["clonedDocuments"],
        before["finalization"]["step"]
    );

    // B, another process of the same job, takes over once A's lease expired.
    let b = WorkerProcess::start(WorkerOptions {
        no_wait_ready: true,
        ..opts(&src, &dst, &job)
    })
    .await;
    let want = if freeze_in == "finalize" {
        "finalized"
    } else {
        "running"
    };
    b.wait_for("B took over", Duration::from_secs(90), |s| {
        s["state"] == want || (want == "running" && s["state"] == "finalizing")
    })
    .await;
    let takeover = frozen_at.elapsed().as_secs_f64();
    if freeze_in != "finalize" {
        // More updates, to half of the documents, applied by B while A is frozen.
        for v in 100..103 {
            round(&c, v, DOCS / 2).await;
        }
        b.wait_caught_up(1.0, Duration::from_secs(120)).await;
    }
    let thawed_after = frozen_at.elapsed().as_secs_f64();
    // Nothing writes to the source from here until the check below: the target must not
    // change when A thaws.
    let before_thaw = snapshot(&dst.client()).await;
    a.signal("CONT");
    let (st, first, later) = after_thaw(&a).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        snapshot(&dst.client()).await == before_thaw,
        "the target changed after A thawed"
    );
    println!(
        "trial {trial} ({freeze_in}): B took over {takeover:.1}s after the freeze; A thawed after {thawed_after:.1}s: {} {}, committed batches {first} then {later}",
        st["state"], st["failureReason"]
    );
    assert_eq!(st["state"], "failed", "A must know it was deposed: {st:#}");
    assert_eq!(st["failureReason"], "Deposed", "{st:#}");
    assert!(
        st["error"]
            .as_str()
            .unwrap_or("")
            .contains("another worker"),
        "{st:#}"
    );
    assert!(first >= 0.0, "metric missing");
    assert_eq!(first, later, "A committed a write after the thaw");
    if freeze_in != "finalize" {
        b.wait_caught_up(1.0, Duration::from_secs(60)).await;
        let r = b.post("/finalize", json!({})).await;
        assert_eq!(r.code, 200, "{:?}", r.body);
    }
    let fin = b.wait_state("finalized", Duration::from_secs(120)).await;
    assert_eq!(
        fin["finalization"]["verification"]["mismatchCount"], 0,
        "{fin:#}"
    );
    // Document by document, at the latest version.
    assert_same(&c, &dst.client(), CompareOptions::default()).await;
    if freeze_in != "finalize" {
        // B's updates made while A was frozen are there.
        let t = dst.client().database("f").collection::<Document>("c");
        assert_eq!(
            t.count_documents(doc! {"_id": {"$lt": DOCS / 2}, "v": 102})
                .await
                .expect("count"),
            (DOCS / 2) as u64
        );
    }
    drop(a);
}

/// CI: two trials of the freeze during replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_writes_nothing_after_it_thaws() {
    for t in 0..trials(2) {
        frozen_worker_trial(t, "replication").await;
    }
}

/// Reliability suite: ten trials during replication, three during the copy and three during
/// finalize's index restore and verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: minutes"]
async fn frozen_worker_trials_full() {
    // `FENCING_ONLY=copy` (or replication, finalize) runs one kind.
    let only = std::env::var("FENCING_ONLY").unwrap_or_default();
    for (kind, base, n) in [
        ("replication", 100, trials(10)),
        ("copy", 200, trials(3).min(3)),
        ("finalize", 300, trials(3).min(3)),
    ] {
        if only.is_empty() || only == kind {
            for t in 0..n {
                frozen_worker_trial(base + t, kind).await;
            }
        }
    }
}

/// The wrapper that runs a worker as PID 1 of its own PID namespace with a fixed host name,
/// as a replacement pod of the same name would.
fn as_pod() -> Vec<String> {
    [
        "unshare",
        "-p",
        "-f",
        "-u",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
        "hostname job-worker && exec \"$0\" \"$@\"",
    ]
    .map(String::from)
    .to_vec()
}

/// CI: two workers of one job, both PID 1 with the same host name: while A lives, B neither
/// writes nor takes over; when A exits gracefully, B takes over within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_and_pid_do_not_make_a_live_worker_look_dead() {
    let (src, dst) = pair().await;
    let c = src.client();
    seed(&c).await;
    let pod = |no_wait_ready| WorkerOptions {
        wrap: as_pod(),
        no_wait_ready,
        ..opts(&src, &dst, "pod-job")
    };
    let mut a = WorkerProcess::start(pod(false)).await;
    a.start_migration(json!({})).await;
    a.wait_caught_up(2.0, Duration::from_secs(60)).await;
    let ns_pid = std::fs::read_to_string(format!(
        "/proc/{}/status",
        a.worker_pid().expect("worker pid")
    ))
    .unwrap_or_default();
    assert!(
        ns_pid
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "A is not PID 1 of its namespace:\n{ns_pid}"
    );
    let b = WorkerProcess::start(pod(true)).await;
    // Longer than the lease TTL: a live holder keeps B out however long B waits.
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        round(&c, 1, 10).await;
        let s = b.status().await;
        assert_ne!(s["state"], "running", "B took over a live worker: {s:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s = b.status().await;
    assert!(
        s["info"]
            .as_str()
            .unwrap_or("")
            .contains("another worker holds"),
        "{s:#}"
    );
    assert_eq!(b.metric("mongoferry_events_applied_total").await, 0.0);
    assert_eq!(
        b.metric("mongoferry_copy_insert_documents_total").await,
        0.0
    );
    assert_eq!(
        labelled(
            &b.metrics().await,
            "mongoferry_fence_batches",
            "outcome=\"committed\""
        ),
        0.0
    );
    a.wait_caught_up(2.0, Duration::from_secs(30)).await;
    // A stops gracefully (SIGTERM, as the kubelet does): B takes over at once.
    a.terminate();
    let t = Instant::now();
    b.wait_state("running", Duration::from_secs(10)).await;
    let took = t.elapsed().as_secs_f64();
    println!("B took over {took:.2}s after A exited");
    assert!(
        took <= 2.0,
        "B took {took:.2}s to take over a released lease"
    );
    round(&c, 2, DOCS).await;
    b.wait_caught_up(1.0, Duration::from_secs(60)).await;
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}

/// CI: a worker of another job never touches a target that belongs to a job, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_of_another_job_is_refused() {
    let (src, dst) = pair().await;
    let c = src.client();
    seed(&c).await;
    let first = WorkerProcess::start(WorkerOptions {
        args: vec![
            "--job-id".into(),
            "uid-1".into(),
            "--job-name".into(),
            "shop/first".into(),
        ],
        ..opts(&src, &dst, "")
    })
    .await;
    first.start_migration(json!({})).await;
    first.wait_caught_up(2.0, Duration::from_secs(60)).await;
    let second = WorkerProcess::start(WorkerOptions {
        args: vec![
            "--job-id".into(),
            "uid-2".into(),
            "--job-name".into(),
            "shop/second".into(),
        ],
        ..opts(&src, &dst, "")
    })
    .await;
    let st = second.wait_state("failed", Duration::from_secs(10)).await;
    assert_eq!(st["failureReason"], "TargetInUse", "{st:#}");
    let e = st["error"].as_str().unwrap_or_default();
    assert!(e.contains("shop/first") && e.contains("uid-1"), "{e}");
    let r = second.post("/start", json!({"reset": true})).await;
    assert_eq!(r.code, 409, "{:?}", r.body);
    assert!(r.body["error"]
        .as_str()
        .unwrap_or("")
        .contains("shop/first"));
    // The first goes on undisturbed.
    round(&c, 5, DOCS).await;
    first.wait_caught_up(1.0, Duration::from_secs(60)).await;
    assert_eq!(second.metric("mongoferry_events_applied_total").await, 0.0);
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}

/// CI: 50 commands with 5 ms client timeouts at random moments, under writes: the reported
/// state always matches what the worker does, and a final resume catches up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_survive_clients_that_hang_up() {
    let (src, dst) = pair().await;
    let c = src.client();
    seed(&c).await;
    let w = WorkerProcess::start(opts(&src, &dst, "hangups")).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(5))
        .build()
        .expect("client");
    let url = w.url();
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut v = 1000;
            loop {
                v += 1;
                round(&c, v, 200).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let paths = ["/pause", "/resume", "/start", "/finalize"];
    let mut sent = 0;
    let mut checks = 0;
    while sent < 50 {
        let p = paths[rng.random_range(0..paths.len())];
        // /finalize only with a body it refuses, so the migration goes on to the end.
        let body = if p == "/finalize" {
            json!({"verify": "bogus"})
        } else {
            json!({})
        };
        let _ = impatient.post(format!("{url}{p}")).json(&body).send().await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        // Whatever it says now, it does: paused applies nothing, running applies.
        let s1 = w.status().await;
        if s1["state"] == "paused" {
            let n1 = s1["eventsApplied"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(400)).await;
            let s2 = w.status().await;
            if s2["state"] == "paused" {
                assert_eq!(
                    s2["eventsApplied"].as_u64().unwrap_or(0),
                    n1,
                    "paused yet applying"
                );
                checks += 1;
            }
        } else if s1["state"] == "running" && s1["initialSync"]["completed"] == true {
            let n1 = s1["eventsApplied"].as_u64().unwrap_or(0);
            let mut moved = false;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let s2 = w.status().await;
                if s2["state"] != "running" {
                    // A command changed it meanwhile: nothing to conclude.
                    moved = true;
                    break;
                }
                if s2["eventsApplied"].as_u64().unwrap_or(0) > n1 {
                    moved = true;
                    checks += 1;
                    break;
                }
            }
            assert!(moved, "running yet applying nothing");
        }
        assert_ne!(w.status().await["state"], "failed");
    }
    writer.abort();
    // Settle: resume if paused, then catch up.
    let s = w.status().await;
    if s["state"] == "paused" {
        assert_eq!(w.post("/resume", json!({})).await.code, 200);
    } else if s["state"] == "idle" {
        w.start_migration(json!({})).await;
    }
    w.wait_caught_up(1.0, Duration::from_secs(120)).await;
    println!("{sent} hung-up commands, {checks} state checks");
    assert!(checks >= 10, "too few state checks: {checks}");
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}
