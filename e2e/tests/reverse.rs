//! End-to-end tests of the reverse (issue 17: "Roll back a cutover: reverse sync from the new
//! cluster to the old one after finalize"), standalone: `POST /reverse` on a finalized worker.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use mongoferry_e2e::compare::{assert_converges, assert_same, CompareOptions};
use mongoferry_e2e::fixtures::{self, pair, worker, worker_opts, PasswordFiles};
use mongoferry_e2e::servers::{ServerOptions, User};
use mongoferry_e2e::worker::{WorkerOptions, WorkerProcess};
use mongoferry_e2e::workload::{SizeDistribution, Workload, WorkloadConfig};
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Start, wait until caught up, finalize: the finalized status.
async fn migrate_and_finalize(w: &WorkerProcess, start: Value) -> Value {
    w.start_migration(start).await;
    w.wait_caught_up(2.0, Duration::from_secs(300)).await;
    finalize(w).await
}

async fn finalize(w: &WorkerProcess) -> Value {
    let a = w.post("/finalize", json!({})).await;
    assert_eq!(a.code, 200, "finalize refused: {:?}", a.body);
    let st = w
        .wait_for("finalized", Duration::from_secs(600), |s| {
            s["state"] == "finalized" || s["state"] == "failed"
        })
        .await;
    assert_eq!(st["state"], "finalized", "{st:#}");
    st
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

/// The explicit DDL of acceptance 1 on the new cluster: a collection created, an index
/// created and one dropped, a rename and a drop (on collections the migration copied).
async fn ddl_on(c: &Client) {
    let db = c.database("rv");
    db.create_collection("created").await.expect("create");
    db.collection::<Document>("created")
        .insert_many((0..50).map(|i| doc! {"_id": i, "v": i}))
        .await
        .expect("insert into the created collection");
    db.run_command(doc! {"createIndexes": "a", "indexes": [{"key": {"v": 1}, "name": "v_new"}]})
        .await
        .expect("create index");
    db.run_command(doc! {"dropIndexes": "a", "index": "x_1"})
        .await
        .expect("drop index");
    c.database("admin")
        .run_command(doc! {"renameCollection": "rv.b", "to": "rv.b2"})
        .await
        .expect("rename");
    db.collection::<Document>("c").drop().await.expect("drop");
}

/// What acceptance 4 names: a 10 MB document and a transaction, written on the new cluster.
async fn big_and_txn_on(c: &Client) {
    let big = "x".repeat(10 * MIB);
    c.database("rv")
        .collection::<Document>("big")
        .insert_one(doc! {"_id": "ten-mb", "blob": big})
        .await
        .expect("10 MB document");
    let mut s = c.start_session().await.expect("session");
    s.start_transaction().await.expect("transaction");
    let coll = c.database("rv").collection::<Document>("a");
    coll.insert_one(doc! {"_id": "txn-1", "x": 1, "v": -1})
        .session(&mut s)
        .await
        .expect("txn insert");
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"txn": true}})
        .session(&mut s)
        .await
        .expect("txn update");
    s.commit_transaction().await.expect("commit");
}

async fn seed_rv(c: &Client) {
    for coll in ["a", "b", "c"] {
        c.database("rv")
            .collection::<Document>(coll)
            .insert_many((0..500).map(|i| doc! {"_id": i, "x": i % 7, "v": i}))
            .await
            .expect("seed rv");
    }
    c.database("rv")
        .run_command(doc! {"createIndexes": "a", "indexes": [
            {"key": {"x": 1}, "name": "x_1"},
            {"key": {"v": 1, "x": 1}, "name": "v_unique", "unique": true},
        ]})
        .await
        .expect("indexes");
}

/// Mixed writes and transactions; the DDL kinds are written once each by `ddl_on` (a DDL-heavy
/// workload runs in reliability's reverse_survives_sigkill_at_three_points).
fn workload(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        ddl: false,
        max_doc_bytes: 2048,
        preload_ids: 2_000,
        ..Default::default()
    }
}

/// Acceptance 1 (standalone) and 4: migrate and finalize; then on the new cluster, between the
/// finalize and the reverse, 20,000 mixed operations with transactions, each DDL kind,
/// a 10 MB document and a transaction; the reverse catches up with a lag under 1 s, the old
/// source equals the new cluster, and finalizing the reverse reports 0 mismatches. (Writes
/// while a reverse runs, and restarts: reliability's reverse_survives_sigkill_at_three_points.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_brings_the_old_source_level_with_the_new_cluster() {
    let t0 = Instant::now();
    let (src, dst) = pair().await;
    let (old, new) = (src.client(), dst.client());
    for j in 0..3 {
        fixtures::seed(
            &old,
            "wl_app",
            &format!("c{j}"),
            1_000,
            SizeDistribution::Realistic { max: 4096 },
            j,
            1_000,
        )
        .await;
    }
    seed_rv(&old).await;
    let w = worker(&src, &dst).await;
    let st = migrate_and_finalize(&w, json!({})).await;
    let f = &st["finalization"];
    assert_eq!(f["verification"]["mismatchCount"], 0, "{f:#}");
    assert!(f["reverseStartPoint"]["ts"].is_string(), "{f:#}");
    println!("migrated and finalized in {}", secs(t0.elapsed()));

    // Between finalize and the reverse: the applications write to the new cluster.
    let t = Instant::now();
    big_and_txn_on(&new).await;
    ddl_on(&new).await;
    let done = Workload::new(workload(41)).run_ops(&new, 20_400).await;
    assert_eq!(done.errors, 0, "{:?}", done.error_samples);
    let ops = done.total_ops();
    println!(
        "{ops} operations on the new cluster before the reverse in {}",
        secs(t.elapsed())
    );

    let t = Instant::now();
    let a = w.post("/reverse", json!({})).await;
    assert_eq!(a.code, 200, "reverse refused: {:#}", a.body);
    assert_eq!(a.body["state"], "running");
    assert_eq!(a.body["preflight"]["ok"], true, "{:#}", a.body);
    let st = w.wait_caught_up(1.0, Duration::from_secs(300)).await;
    assert_eq!(st["direction"], "reverse", "{st:#}");
    assert!(st["reverse"]["startPoint"]["ts"].is_string(), "{st:#}");
    println!(
        "reverse caught up {} after it started (lag {}s, {} events applied)",
        secs(t.elapsed()),
        st["lagTimeSeconds"],
        st["eventsApplied"]
    );
    assert!(ops >= 20_000, "{ops}");
    let opts = CompareOptions {
        relaxed_indexes: true,
        ..Default::default()
    };
    // Caught up to within a second: the last writes may still be on their way.
    assert_converges(&new, &old, opts, Duration::from_secs(30)).await;
    for (db, coll) in [("rv", "created"), ("rv", "b2"), ("rv", "big")] {
        let n = old
            .database(db)
            .collection::<Document>(coll)
            .count_documents(doc! {})
            .await
            .expect("count");
        assert!(n > 0, "{db}.{coll} missing on the old source");
    }

    let t = Instant::now();
    let st = finalize(&w).await;
    let f = &st["finalization"];
    println!(
        "reverse finalized in {}: {} documents verified, {} mismatches",
        secs(t.elapsed()),
        f["verification"]["documentsChecked"],
        f["verification"]["mismatchCount"]
    );
    assert_eq!(st["direction"], "reverse");
    assert_eq!(f["verification"]["mismatchCount"], 0, "{f:#}");
    assert_eq!(f["indexes"]["failed"], json!([]), "{f:#}");
    assert_same(&new, &old, CompareOptions::default()).await;
    println!("test took {}", secs(t0.elapsed()));
}

/// Acceptance 2: a reverse of a migration that is not finalized, and one after the old source
/// was written since the cutoff, are refused with the cause and the fix; `force` overrides
/// the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_refusals_not_finalized_and_old_source_written() {
    let (src, dst) = pair().await;
    let old = src.client();
    seed_rv(&old).await;
    let w = worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    w.wait_caught_up(2.0, Duration::from_secs(120)).await;
    let a = w.post("/reverse", json!({})).await;
    assert_eq!(a.code, 409, "{:#}", a.body);
    let c = check(&a.body["preflight"], "reverse.migration");
    assert_eq!(c["status"], "fail");
    assert!(
        c["reason"]
            .as_str()
            .unwrap_or("")
            .contains("running, not finalized")
            && c["fix"]
                .as_str()
                .unwrap_or("")
                .contains("finalize it first"),
        "{c:#}"
    );
    println!("not finalized: {}", a.body["error"]);
    finalize(&w).await;
    // The old source is written after the cutoff.
    let coll = old.database("rv").collection::<Document>("a");
    coll.insert_many((1000..1012).map(|i| doc! {"_id": i, "x": 0, "v": i}))
        .await
        .expect("late writes");
    old.database("rv")
        .collection::<Document>("b")
        .delete_one(doc! {"_id": 3})
        .await
        .expect("late delete");
    let a = w.post("/reverse", json!({})).await;
    assert_eq!(a.code, 409, "{:#}", a.body);
    let c = check(&a.body["preflight"], "reverse.oldSourceWrites");
    let reason = c["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("rv.a (12)") && reason.contains("rv.b (1)") && reason.contains("13 change"),
        "{c:#}"
    );
    assert!(c["fix"].as_str().unwrap_or("").contains("force"), "{c:#}");
    println!("old source written: {}", a.body["error"]);
    let a = w.post("/reverse", json!({"force": true})).await;
    assert_eq!(a.code, 200, "{:#}", a.body);
    assert_eq!(
        check(&a.body["preflight"], "reverse.oldSourceWrites")["status"],
        "warn"
    );
    let st = w.wait_caught_up(2.0, Duration::from_secs(60)).await;
    assert_eq!(st["direction"], "reverse");
    // A second reverse is refused while this one runs.
    assert_eq!(w.post("/reverse", json!({})).await.code, 409);
    // The reverse pauses and resumes like a migration.
    assert_eq!(w.post("/pause", json!({})).await.code, 200);
    let st = w.wait_state("paused", Duration::from_secs(30)).await;
    assert_eq!(st["direction"], "reverse");
    assert_eq!(w.post("/resume", json!({})).await.code, 200);
    w.wait_caught_up(2.0, Duration::from_secs(60)).await;
    // Forced: finalizing the reverse reports the old source's own writes as differences
    // (12 documents only the old source has, 1 it deleted).
    let st = finalize(&w).await;
    let v = &st["finalization"]["verification"];
    assert_eq!(v["mismatchCount"], 13, "{v:#}");
}

/// Acceptance 2: the new cluster's oplog no longer holds the start point → history lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_refused_when_history_is_lost() {
    let src = fixtures::server(ServerOptions::rust()).await;
    let dst = fixtures::server(ServerOptions {
        oplog_max_entries: Some(50),
        ..ServerOptions::rust()
    })
    .await;
    let old = src.client();
    seed_rv(&old).await;
    let w = worker(&src, &dst).await;
    migrate_and_finalize(&w, json!({})).await;
    let coll = dst.client().database("rv").collection::<Document>("a");
    for chunk in 0..30 {
        coll.insert_many(
            (0..100).map(|i| doc! {"_id": 10_000 + chunk * 100 + i, "v": -1 - chunk * 100 - i}),
        )
        .await
        .expect("writes");
    }
    // The server prunes its oplog every ~1,000 entries or ~10 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    coll.insert_one(doc! {"_id": -1, "v": -100_000})
        .await
        .expect("one more");
    let a = w.post("/reverse", json!({})).await;
    assert_eq!(a.code, 409, "{:#}", a.body);
    let c = check(&a.body["preflight"], "reverse.history");
    assert_eq!(c["status"], "fail", "{c:#}");
    assert!(
        c["reason"].as_str().unwrap_or("").contains("history lost")
            && c["fix"].as_str().unwrap_or("").contains("new migration"),
        "{c:#}"
    );
    println!("history lost: {}", a.body["error"]);
}

/// Acceptance 2: the old source's user may read (all a migration's source needs) but not
/// write: the preflight with the roles swapped refuses the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_refused_without_write_privileges_on_the_old_source() {
    let suser = User::new(
        "ferry_src",
        "src-Pw-71f3e0",
        &[("readAnyDatabase", "admin"), ("clusterMonitor", "admin")],
    );
    let tuser = User::new(
        "ferry_dst",
        "dst-Pw-93ab1c",
        &[
            ("readWriteAnyDatabase", "admin"),
            ("dbAdminAnyDatabase", "admin"),
            ("clusterMonitor", "admin"),
        ],
    );
    let src = fixtures::auth_server(vec![suser.clone()]).await;
    let dst = fixtures::auth_server(vec![tuser.clone()]).await;
    seed_rv(&src.client()).await;
    let files = PasswordFiles::new("reverse", suser, tuser);
    let w = WorkerProcess::start(WorkerOptions {
        args: files.args(),
        ..worker_opts(src.uri_without_credentials(), dst.uri_without_credentials())
    })
    .await;
    migrate_and_finalize(&w, json!({})).await;
    let a = w.post("/reverse", json!({})).await;
    assert_eq!(a.code, 409, "{:#}", a.body);
    let c = check(&a.body["preflight"], "target.privileges");
    assert_eq!(c["status"], "fail", "{c:#}");
    println!("privileges: {}", a.body["error"]);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap_or("")
            .contains("target.privileges"),
        "{:#}",
        a.body
    );
}
