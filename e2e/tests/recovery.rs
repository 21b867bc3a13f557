//! Crashes and failures in the middle of the engine's longer steps (issue 14): a reset killed
//! at every step, a large collection copied anew during replication (pause answered at once,
//! a kill resumed by partition), a failing insert in that copy, and how fast a fatal copy
//! error stops every copy task. Data compared document by document afterwards.
//!
//! Quick variants run in CI; `#[ignore]`d full-size ones in the reliability suite
//! (`cargo test -p mongoferry-e2e --test recovery -- --ignored --test-threads=1`).

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use mongoferry_e2e::compare::{assert_same, CompareOptions};
use mongoferry_e2e::fixtures::{pair, server, worker_opts};
use mongoferry_e2e::servers::{is_available, MongoServer, ServerKind, ServerOptions};
use mongoferry_e2e::worker::{WorkerOptions, WorkerProcess};
use serde_json::{json, Value};

fn opts(src: &MongoServer, dst: &MongoServer) -> WorkerOptions {
    WorkerOptions {
        args: vec!["--job-id".into(), "recovery".into()],
        ..worker_opts(src.uri(), dst.uri())
    }
}

/// Two Python servers with failpoints, or `None` where secantusd-py is not installed.
async fn python_pair() -> Option<(MongoServer, MongoServer)> {
    if !is_available(ServerKind::Python) {
        eprintln!("secantusd-py not installed: skipped");
        return None;
    }
    let opts = || ServerOptions {
        enable_test_commands: true,
        ..ServerOptions::python()
    };
    Some((server(opts()).await, server(opts()).await))
}

/// Make the worker's next insert on `dst` fail with BadValue (not a duplicate key).
async fn fail_next_insert(dst: &MongoServer) {
    dst.client()
        .database("admin")
        .run_command(
            doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {
                "failCommands": ["insert"], "appName": "mongoferry-worker", "errorCode": 2,
            }},
        )
        .await
        .expect("failpoint");
}

/// `n` documents of about `size` bytes into `db.coll`, in batches.
async fn fill(c: &Client, db: &str, coll: &str, n: i64, size: usize) {
    let col = c.database(db).collection::<Document>(coll);
    let pad = "p".repeat(size);
    let mut i = 0;
    while i < n {
        let end = (i + 2_000).min(n);
        col.insert_many((i..end).map(|k| doc! {"_id": k, "k": k, "pad": &pad}))
            .await
            .expect("fill");
        i = end;
    }
}

/// The migration of `app.*` (not `app.tmp_*`), running and caught up.
async fn running(src: &MongoServer, dst: &MongoServer, extra: Value) -> WorkerProcess {
    let w = WorkerProcess::start(opts(src, dst)).await;
    let mut body = json!({"includeNamespaces": ["app.*"], "excludeNamespaces": ["/^app\\.tmp_/"]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    w.start_migration(body).await;
    w.wait_caught_up(2.0, Duration::from_secs(300)).await;
    w
}

async fn rename(c: &Client, from: &str, to: &str) {
    c.database("admin")
        .run_command(doc! {"renameCollection": from, "to": to})
        .await
        .expect("rename");
}

/// A large collection renamed into the selection during replication is copied anew: pause
/// is answered within 2 s during that copy, a SIGKILL during it resumes without copying the
/// finished partitions again, and the target ends equal to the source.
async fn recopy_case(mib: i64) {
    let (src, dst) = pair().await;
    let c = src.client();
    fill(&c, "app", "orders", 2_000, 500).await;
    // ~2 KB documents; partitions of 8 MiB so the copy has several.
    let n = mib * 1024 * 1024 / 2_100;
    fill(&c, "app", "tmp_big", n, 2_000).await;
    let mut w = running(
        &src,
        &dst,
        json!({"clone": {"insertWorkers": 2, "partitionBytes": 8 * 1024 * 1024}}),
    )
    .await;
    let before = w.metric("mongoferry_copy_insert_documents_total").await;
    rename(&c, "app.tmp_big", "app.big").await;
    // Writes to the renamed collection during its copy are replayed onto it.
    let big = c.database("app").collection::<Document>("big");
    w.wait_for("copying anew", Duration::from_secs(60), |s| {
        s["info"].as_str().unwrap_or("").contains("anew")
    })
    .await;
    big.update_many(doc! {"_id": {"$lt": 100}}, doc! {"$set": {"touched": true}})
        .await
        .expect("writes");
    // Pause during the copy: answered within 2 s.
    let t = Instant::now();
    let a = w.post("/pause", json!({})).await;
    let paused_in = t.elapsed().as_secs_f64();
    assert_eq!(a.code, 200, "{:?}", a.body);
    println!("pause during the copy anew answered in {paused_in:.2}s");
    assert!(paused_in <= 2.0, "pause took {paused_in:.2}s");
    assert_eq!(w.post("/resume", json!({})).await.code, 200);
    // Kill once a partition is done, restart: finished partitions are not copied again.
    let meta = dst
        .client()
        .database("mongoferry")
        .collection::<Document>("partitions");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = meta
            .count_documents(doc! {"ns": "app.big", "done": true})
            .await
            .unwrap_or(0);
        if done >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no partition of app.big finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total_parts = meta
        .count_documents(doc! {"ns": "app.big"})
        .await
        .unwrap_or(0);
    let copied_before_kill = w.metric("mongoferry_copy_insert_documents_total").await - before;
    w.kill();
    w.restart().await;
    let st = w.wait_caught_up(1.0, Duration::from_secs(600)).await;
    let skipped = w.metric("mongoferry_copy_partitions_skipped_total").await;
    let copied_after = w.metric("mongoferry_copy_insert_documents_total").await;
    println!(
        "copy anew of {n} documents in {total_parts} partitions: {copied_before_kill} copied before the kill, {copied_after} after the restart, {skipped} partition(s) skipped; lag {}",
        st["lagTimeSeconds"]
    );
    assert!(skipped >= 1.0, "finished partitions were copied again");
    assert!(
        copied_after < n as f64,
        "the restart copied everything again"
    );
    assert_eq!(
        dst.client()
            .database("app")
            .collection::<Document>("big")
            .count_documents(doc! {"touched": true})
            .await
            .expect("count"),
        100
    );
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}

/// CI: a 40 MB collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_anew_is_pausable_and_resumable() {
    recopy_case(40).await;
}

/// Reliability suite: 200 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: minutes"]
async fn copy_anew_of_200_mb() {
    recopy_case(200).await;
}

/// CI (Python server, which has failpoints): an insert of a copy anew that fails with an
/// error other than a duplicate key fails the job, naming the namespace and the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_insert_in_a_copy_anew_fails_the_job() {
    let Some((src, dst)) = python_pair().await else {
        return;
    };
    let c = src.client();
    fill(&c, "app", "orders", 200, 200).await;
    fill(&c, "app", "tmp_x", 500, 200).await;
    let w = running(&src, &dst, json!({})).await;
    fail_next_insert(&dst).await;
    rename(&c, "app.tmp_x", "app.x").await;
    let st = w.wait_state("failed", Duration::from_secs(120)).await;
    let e = st["error"].as_str().unwrap_or_default();
    println!("failed: {e}");
    assert!(e.contains("app.x"), "the namespace: {e}");
    assert!(e.contains("code 2"), "the error: {e}");
    // Nothing silently missing: once the cause is gone, resuming completes the copy.
    let r = w.post("/resume", json!({"fromFailure": true})).await;
    assert_eq!(r.code, 200, "{:?}", r.body);
    w.wait_caught_up(1.0, Duration::from_secs(300)).await;
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}

/// CI: after a fatal error in one partition, every copy task has stopped within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_copy_error_stops_every_copy_task_within_a_second() {
    let Some((src, dst)) = python_pair().await else {
        return;
    };
    let c = src.client();
    for i in 0..6 {
        fill(&c, "app", &format!("c{i}"), 3_000, 1_000).await;
    }
    let w = WorkerProcess::start(opts(&src, &dst)).await;
    // The first insert after a few succeeded fails for good.
    w.start_migration(
        json!({"clone": {"parallelCollections": 4, "insertWorkers": 4, "batchBytes": 262144}}),
    )
    .await;
    w.wait_for("copying", Duration::from_secs(60), |s| {
        s["initialSync"]["clonedDocuments"].as_u64().unwrap_or(0) > 0
    })
    .await;
    fail_next_insert(&dst).await;
    let st = w.wait_state("failed", Duration::from_secs(120)).await;
    assert!(
        st["error"].as_str().unwrap_or("").contains("code 2"),
        "{st:#}"
    );
    let log = w.log();
    let ms: u64 = log
        .lines()
        .filter(|l| l.contains("every copy task stopped after the failure"))
        .filter_map(|l| {
            let i = l.find("stopped_after_ms=")? + "stopped_after_ms=".len();
            l[i..]
                .split(|ch: char| !ch.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .next_back()
        .unwrap_or_else(|| panic!("no stop measurement in the log:\n{}", w.log_tail()));
    println!("every copy task stopped {ms} ms after the failure");
    assert!(ms <= 1_000, "copy tasks stopped {ms} ms after the failure");
    // No copy task writes any more.
    let n = w.metric("mongoferry_copy_insert_documents_total").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.metric("mongoferry_copy_insert_documents_total").await, n);
}

/// Where a reset was killed.
#[derive(Debug, Clone, Copy)]
enum ResetPoint {
    Recorded,
    Dropping,
    DroppingLate,
    /// The end of the drops, or the first moment after (clearing the records is short).
    Clearing,
    Catalog,
    Copy,
}

/// The checkpoint document and what of the earlier run is left on the target.
async fn reset_progress(dst: &Client) -> (Document, u64, bool) {
    let meta = dst.database("mongoferry");
    let job = meta
        .collection::<Document>("checkpoint")
        .find_one(doc! {"_id": "job"})
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let left = dst
        .database("app")
        .list_collection_names()
        .await
        .map(|v| v.len() as u64)
        .unwrap_or(0);
    let records = meta
        .list_collection_names()
        .await
        .map(|v| v.iter().any(|n| n == "collections"))
        .unwrap_or(false);
    (job, left, records)
}

/// Reliability suite: SIGKILL at six points of a reset; the restarted worker completes it,
/// nothing is replicated onto missing data, and the target ends equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: minutes"]
async fn a_reset_killed_at_any_step_is_completed() {
    let (src, dst) = pair().await;
    let c = src.client();
    // Many collections, so that dropping them takes a while.
    for i in 0..300 {
        fill(&c, "app", &format!("c{i:03}"), 20, 100).await;
    }
    fill(&c, "app", "large", 60_000, 1_000).await;
    let d = dst.client();
    let mut w = running(&src, &dst, json!({})).await;
    for point in [
        ResetPoint::Recorded,
        ResetPoint::Dropping,
        ResetPoint::DroppingLate,
        ResetPoint::Clearing,
        ResetPoint::Catalog,
        ResetPoint::Copy,
    ] {
        assert_eq!(w.post("/pause", json!({})).await.code, 200);
        let body = json!({"reset": true, "includeNamespaces": ["app.*"], "excludeNamespaces": ["/^app\\.tmp_/"], "skipPreflight": true});
        let url = format!("{}/start", w.url());
        tokio::spawn(async move {
            let _ = reqwest::Client::new().post(url).json(&body).send().await;
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let (job, left, records) = reset_progress(&d).await;
            let resetting = job.get_bool("resetting").unwrap_or(false);
            // Each point, or the first moment after it (some steps are short).
            let hit = match point {
                ResetPoint::Recorded => resetting,
                ResetPoint::Dropping => resetting && left < 250,
                ResetPoint::DroppingLate => resetting && left < 60,
                ResetPoint::Clearing => left == 0 || !resetting,
                ResetPoint::Catalog => {
                    !resetting && !job.get_bool("catalogDone").unwrap_or(true) && records
                }
                ResetPoint::Copy => {
                    !resetting
                        && job.get_bool("catalogDone").unwrap_or(false)
                        && !job.get_bool("cloneCompleted").unwrap_or(true)
                }
            };
            if hit {
                break;
            }
            assert!(Instant::now() < deadline, "{point:?} never seen: {job}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        w.kill();
        let (job, left, records) = reset_progress(&d).await;
        println!(
            "killed at {point:?}: resetting={} catalogDone={} cloneCompleted={} collections left={left} records={records}",
            job.get_bool("resetting").unwrap_or(false),
            job.get_bool("catalogDone").unwrap_or(false),
            job.get_bool("cloneCompleted").unwrap_or(false),
        );
        w.restart().await;
        let st = w.status().await;
        assert_ne!(st["state"], "failed", "{st:#}");
        let (job, _, _) = reset_progress(&d).await;
        assert!(
            !job.get_bool("resetting").unwrap_or(false),
            "reset not finished: {job}"
        );
        w.wait_caught_up(1.0, Duration::from_secs(600)).await;
        assert_same(&c, &d, CompareOptions::relaxed()).await;
    }
}
