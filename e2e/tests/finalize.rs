//! End-to-end tests of finalize (issue: "Finalize: cut over at a point in time, restore
//! indexes, verify every document, report").

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use mongoferry_e2e::compare::{assert_same, CompareOptions};
use mongoferry_e2e::fixtures::{self, pair, worker};
use mongoferry_e2e::worker::WorkerProcess;
use mongoferry_e2e::workload::{SizeDistribution, Workload, WorkloadConfig, DEFAULT_BATCH_SIZE};
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;

async fn seed(c: &Client, db: &str, coll: &str, n: u64, sizes: SizeDistribution, s: u64) -> u64 {
    fixtures::seed(c, db, coll, n, sizes, s, DEFAULT_BATCH_SIZE).await
}

async fn finalize(w: &WorkerProcess, body: Value) -> Value {
    let a = w.post("/finalize", body).await;
    assert_eq!(a.code, 200, "finalize refused: {:?}", a.body);
    w.wait_for("finalized", Duration::from_secs(900), |s| {
        s["state"] == "finalized" || s["state"] == "failed"
    })
    .await
}

/// 1. After a live workload, finalize → finalized, full verification with 0 mismatches, the
/// independent comparator agrees, and unique/TTL/hidden indexes equal the source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_after_a_workload_restores_and_verifies() {
    let (src, dst) = pair().await;
    let c = src.client();
    for j in 0..3 {
        seed(
            &c,
            "wl_app",
            &format!("c{j}"),
            3_000,
            SizeDistribution::Realistic { max: 32 * 1024 },
            j,
        )
        .await;
    }
    c.database("wl_app")
        .run_command(doc! {"createIndexes": "c0", "indexes": [
            {"key": {"seq": 1}, "name": "seq_unique", "unique": true},
            {"key": {"created": 1}, "name": "ttl", "expireAfterSeconds": 86400},
            {"key": {"kind": 1}, "name": "hidden_kind", "hidden": true},
        ]})
        .await
        .expect("indexes");
    let wl = Workload::spawn(
        src.client(),
        WorkloadConfig {
            seed: 21,
            ops_per_sec: Some(300),
            ddl: true,
            ..Default::default()
        },
    );
    let w = worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    w.wait_for("initial sync", Duration::from_secs(600), |s| {
        s["initialSync"]["completed"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let stats = wl.stop().await;
    assert_eq!(stats.errors, 0, "{:?}", stats.error_samples);
    let t = Instant::now();
    let st = finalize(&w, json!({})).await;
    let f = &st["finalization"];
    println!("finalized in {:.1}s: {}", t.elapsed().as_secs_f64(), f);
    assert_eq!(st["state"], "finalized", "{st:#}");
    assert_eq!(f["verification"]["mode"], "full");
    assert_eq!(f["verification"]["mismatchCount"], 0, "{f:#}");
    // The DDL workload drops and renames collections, so fewer than the seeded documents remain.
    assert!(
        f["verification"]["documentsChecked"].as_u64().unwrap_or(0) > 500,
        "{f:#}"
    );
    assert_eq!(f["indexes"]["failed"], json!([]));
    // Strict comparison: indexes must now be exactly the source's.
    assert_same(&c, &dst.client(), CompareOptions::default()).await;
}

/// 2 and 3. Planted differences are reported exactly; a unique index that cannot be restored
/// is listed with the duplicate key, and the migration still finalizes, with a warning.
/// 5. Finalize from `paused`, and the report survives a worker restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_differences_and_unrestorable_index_are_reported() {
    let (src, dst) = pair().await;
    let c = src.client();
    let coll = c.database("shop").collection::<Document>("items");
    coll.insert_many((0..1000).map(|i| doc! {"_id": i, "sku": format!("sku-{i}"), "qty": i}))
        .await
        .expect("seed");
    c.database("shop")
        .run_command(doc! {"createIndexes": "items", "indexes": [{"key": {"sku": 1}, "name": "sku_unique", "unique": true}]})
        .await
        .expect("index");
    let mut w = worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    w.wait_caught_up(2.0, Duration::from_secs(120)).await;
    assert_eq!(w.post("/pause", json!({})).await.code, 200);
    w.wait_state("paused", Duration::from_secs(10)).await;
    // Plant: one missing, one changed (to a duplicate sku), one extra.
    let t = dst
        .client()
        .database("shop")
        .collection::<Document>("items");
    t.delete_one(doc! {"_id": 10}).await.expect("plant missing");
    t.update_one(doc! {"_id": 20}, doc! {"$set": {"sku": "sku-21"}})
        .await
        .expect("plant changed");
    t.insert_one(doc! {"_id": 5000, "sku": "extra"})
        .await
        .expect("plant extra");
    let st = finalize(&w, json!({"verify": "full"})).await;
    assert_eq!(st["state"], "finalized", "{st:#}");
    let f = st["finalization"].clone();
    let v = &f["verification"];
    // The three planted documents, plus the unique index left non-unique (reported below).
    assert_eq!(v["mismatchCount"], 4, "{v:#}");
    let mut got: Vec<(String, String, String)> = v["mismatches"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| {
            (
                m["namespace"].as_str().unwrap_or("").into(),
                m["id"].as_str().unwrap_or("").into(),
                m["kind"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "shop.items".into(),
                "(index sku_unique)".into(),
                "metadata".into()
            ),
            ("shop.items".into(), "10".into(), "missing".into()),
            ("shop.items".into(), "20".into(), "different".into()),
            ("shop.items".into(), "5000".into(), "extra".into()),
        ]
    );
    let failed = f["indexes"]["failed"].as_array().expect("failed list");
    assert_eq!(failed.len(), 1, "{f:#}");
    assert_eq!(failed[0]["namespace"], "shop.items");
    assert_eq!(failed[0]["name"], "sku_unique");
    let reason = failed[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("duplicate") && reason.contains("sku-21"),
        "{reason}"
    );
    let warnings = f["warnings"].as_array().expect("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap_or("").contains("index")),
        "{warnings:?}"
    );
    let m = w.metrics().await;
    assert!(
        m.contains("mongoferry_verify_mismatches 4")
            && m.contains("mongoferry_index_restore_failures 1"),
        "{m}"
    );
    // The report survives a restart; finalized is terminal.
    w.restart().await;
    let st2 = w.wait_state("finalized", Duration::from_secs(30)).await;
    assert_eq!(st2["finalization"], f);
    let a = w.post("/start", json!({})).await;
    assert_eq!(a.code, 409);
    assert!(
        a.body["error"].as_str().unwrap_or("").contains("reset"),
        "{:?}",
        a.body
    );
}

/// 5. Finalize before the copy completes → 409 with the reason; 6. `blockSourceWrites` on a
/// server without `setUserWriteBlockMode` → a clear refusal before any step is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_refusals() {
    let (src, dst) = pair().await;
    let c = src.client();
    for i in 0..6 {
        seed(
            &c,
            "slow",
            &format!("c{i}"),
            3_000,
            SizeDistribution::Uniform {
                min: 1_000,
                max: 4_000,
            },
            i,
        )
        .await;
    }
    let w = worker(&src, &dst).await;
    w.start_migration(json!({"clone": {"parallelCollections": 1, "readWorkers": 1, "insertWorkers": 1, "batchBytes": 65536}}))
        .await;
    w.wait_for("copy started", Duration::from_secs(60), |s| {
        s["initialSync"]["clonedDocuments"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let a = w.post("/finalize", json!({})).await;
    assert_eq!(a.code, 409, "{:?}", a.body);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap_or("")
            .contains("initial copy is not complete"),
        "{:?}",
        a.body
    );
    w.wait_caught_up(2.0, Duration::from_secs(300)).await;
    let before = w.status().await;
    let a = w
        .post("/finalize", json!({"blockSourceWrites": true}))
        .await;
    assert_eq!(a.code, 409, "{:?}", a.body);
    let e = a.body["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("setUserWriteBlockMode") && e.contains("nothing was changed"),
        "{e}"
    );
    let after = w.status().await;
    assert_eq!(after["state"], "running");
    assert_eq!(after["finalization"], Value::Null);
    assert_eq!(before["state"], after["state"]);
    // Writes still replicate: nothing was stopped.
    c.database("slow")
        .collection::<Document>("c0")
        .insert_one(doc! {"after": true})
        .await
        .expect("write");
    w.wait_caught_up(1.0, Duration::from_secs(60)).await;
    let st = finalize(&w, json!({"verify": "counts"})).await;
    assert_eq!(st["state"], "finalized");
    assert_eq!(st["finalization"]["verification"]["mode"], "counts");
    assert_eq!(
        st["finalization"]["verification"]["mismatchCount"], 0,
        "{st:#}"
    );
}

/// 4. Verifying ≥ 1 GB keeps the worker's peak RSS under 256 MiB; prints the throughput.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_memory_is_bounded() {
    let (src, dst) = pair().await;
    let c = src.client();
    let mut bytes = 0;
    for i in 0..4u64 {
        bytes += seed(
            &c,
            "vbig",
            &format!("c{i}"),
            2_600,
            SizeDistribution::Fixed(100 * 1024),
            70 + i,
        )
        .await;
    }
    assert!(bytes >= 1000 * MIB, "{} MiB", bytes / MIB);
    let w = worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    w.wait_caught_up(5.0, Duration::from_secs(900)).await;
    let t = Instant::now();
    let a = w.post("/finalize", json!({})).await;
    assert_eq!(a.code, 200);
    let (st, peak) = w
        .wait_with_peak_rss("finalize", Duration::from_secs(900), |s| {
            s["state"] == "finalized" || s["state"] == "failed"
        })
        .await;
    let took = t.elapsed().as_secs_f64();
    let v = &st["finalization"]["verification"];
    let checked = v["bytesChecked"].as_u64().unwrap_or(0);
    println!(
        "verification: {} MiB ({} documents) in {:.1}s => {:.1} MB/s of source data (both sides read); worker peak RSS {} MiB",
        checked / MIB,
        v["documentsChecked"],
        took,
        checked as f64 / 1e6 / took,
        peak / MIB
    );
    assert_eq!(st["state"], "finalized", "{st:#}");
    assert_eq!(v["mismatchCount"], 0);
    assert!(checked >= 1000 * MIB);
    assert!(peak < 256 * MIB, "peak RSS {} MiB", peak / MIB);
}
