//! Reliability and security (quick subset run in CI): fencing of concurrent workers, bad
//! input to the API, and documents at the edges of BSON.

use std::time::{Duration, Instant};

use mongodb::bson::{
    doc, oid::ObjectId, spec::BinarySubtype, Binary, Bson, DateTime, Decimal128, Document,
    JavaScriptCodeWithScope, Regex, Timestamp,
};
use mongoferry_e2e::compare::{assert_converges, assert_same, CompareOptions};
use mongoferry_e2e::fixtures::{self, pair};
use mongoferry_e2e::worker::{WorkerOptions, WorkerProcess};
use mongoferry_e2e::workload::{SizeDistribution, Workload, WorkloadConfig};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// A second worker on the same target cannot write while the first runs; it takes over only
/// when the first is gone. A worker whose lease was taken stops writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_keeps_one_writer() {
    let (src, dst) = pair().await;
    let c = src.client();
    let coll = c.database("f").collection::<Document>("c");
    coll.insert_many((0..100).map(|i| doc! {"_id": i}))
        .await
        .expect("seed");
    let opts = WorkerOptions {
        source: src.uri(),
        target: dst.uri(),
        ..Default::default()
    };
    let mut w1 = WorkerProcess::start(opts.clone()).await;
    w1.start_migration(json!({})).await;
    w1.wait_caught_up(2.0, Duration::from_secs(60)).await;
    let epoch = |d: Option<Document>| d.and_then(|d| d.get_i64("epoch").ok()).unwrap_or(-1);
    let meta = dst
        .client()
        .database("mongoferry")
        .collection::<Document>("checkpoint");
    let e1 = epoch(meta.find_one(doc! {"_id": "job"}).await.expect("job"));

    let w2 = WorkerProcess::start(WorkerOptions {
        no_wait_ready: true,
        ..opts.clone()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    w2.assert_waits_for_the_lease().await;
    assert_eq!(w2.call("GET", "/readyz", None, None).await.code, 503);
    assert_eq!(w2.post("/start", json!({})).await.code, 409);
    // The first keeps replicating; the second wrote nothing and did not take the job.
    coll.insert_many((100..200).map(|i| doc! {"_id": i}))
        .await
        .expect("writes");
    w1.wait_caught_up(1.0, Duration::from_secs(60)).await;
    assert_eq!(
        epoch(meta.find_one(doc! {"_id": "job"}).await.expect("job")),
        e1
    );
    assert_eq!(w2.metric("mongoferry_events_applied_total").await, 0.0);
    assert_eq!(
        w2.metric("mongoferry_copy_insert_documents_total").await,
        0.0
    );
    assert_eq!(
        dst.client()
            .database("f")
            .collection::<Document>("c")
            .count_documents(doc! {})
            .await
            .expect("n"),
        200
    );

    // The first dies: the second takes over (its holder is gone) and resumes the job.
    w1.kill();
    let t = Instant::now();
    w2.wait_state("running", Duration::from_secs(30)).await;
    println!(
        "takeover after the holder died: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    coll.insert_many((200..300).map(|i| doc! {"_id": i}))
        .await
        .expect("writes");
    w2.wait_caught_up(1.0, Duration::from_secs(60)).await;
    assert!(epoch(meta.find_one(doc! {"_id": "job"}).await.expect("job")) > e1);

    // A worker that loses its lease (taken by another after a stall) stops: simulate the
    // take-over by rewriting the lease, as a successor would.
    meta.update_one(
        doc! {"_id": "lease"},
        doc! {"$set": {"holder": "elsewhere-1-1", "renewedAt": DateTime::now()}},
    )
    .await
    .expect("steal");
    meta.update_one(doc! {"_id": "job"}, doc! {"$inc": {"epoch": 1_i64}})
        .await
        .expect("bump");
    let st = w2.wait_state("failed", Duration::from_secs(15)).await;
    assert!(
        st["error"]
            .as_str()
            .unwrap_or("")
            .contains("another worker"),
        "{st:#}"
    );
    let before = w2.metric("mongoferry_events_applied_total").await;
    coll.insert_many((300..310).map(|i| doc! {"_id": i}))
        .await
        .expect("writes");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w2.metric("mongoferry_events_applied_total").await,
        before,
        "a fenced worker applied events"
    );
}

/// Random and malformed bodies to every endpoint: never a crash, never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_survives_random_input() {
    let (src, dst) = pair().await;
    let w = WorkerProcess::start(WorkerOptions {
        source: src.uri(),
        target: dst.uri(),
        token: Some("t0k".into()),
        ..Default::default()
    })
    .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let samples = [
        "",
        "{}",
        "[]",
        "null",
        "1",
        "\"x\"",
        "{\"a\":",
        "{\"includeNamespaces\":[1,2]}",
        "{\"clone\":{\"readWorkers\":-1}}",
        "{\"clone\":{\"batchBytes\":1e99}}",
        "{\"verify\":null}",
        "{\"fromFailure\":1}",
        "{\"reset\":\"yes\"}",
        "{\"includeNamespaces\":[\"/(/\"]}",
    ];
    let mut n = 0;
    for path in [
        "/start",
        "/pause",
        "/resume",
        "/finalize",
        "/status",
        "/metrics",
        "/nope",
        "/healthz",
    ] {
        for body in samples {
            let a = w.post_raw(path, body, "application/json").await;
            assert!(a.code < 500, "{path} {body:?} -> {}: {:?}", a.code, a.body);
            n += 1;
        }
        for _ in 0..60 {
            let len = rng.random_range(0..300);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let body = String::from_utf8_lossy(&bytes).to_string();
            for ct in ["application/json", "text/plain"] {
                let a = w.post_raw(path, &body, ct).await;
                assert!(a.code < 500, "{path} random body -> {}", a.code);
                n += 1;
            }
        }
    }
    assert_eq!(w.call("GET", "/healthz", None, None).await.code, 200);
    println!("{n} malformed requests, no 5xx, worker alive");
}

/// Documents at the edges: every BSON type, dotted and `$`-prefixed field names, a 16 MB
/// document, 100-level nesting, empty and huge arrays — copied and then replicated exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_documents_migrate_exactly() {
    let (src, dst) = pair().await;
    let c = src.client();
    let coll = c.database("edge").collection::<Document>("docs");
    let edge = |k: i32| -> Vec<Document> {
        let mut nested = doc! {"leaf": k};
        for _ in 0..99 {
            nested = doc! {"n": nested};
        }
        vec![
            doc! {"_id": k * 100 + 1, "all": [
                Bson::Double(1.5), Bson::String("s".into()), Bson::Document(doc!{"a": 1}), Bson::Array(vec![]),
                Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2] }),
                Bson::Binary(Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] }),
                Bson::ObjectId(ObjectId::new()), Bson::Boolean(true), Bson::DateTime(DateTime::from_millis(-1)),
                Bson::Null, Bson::RegularExpression(Regex { pattern: "^a.*b$".into(), options: "im".into() }),
                Bson::JavaScriptCode("function(){return 1}".into()),
                Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope { code: "x".into(), scope: doc!{"x": 1} }),
                Bson::Int32(-5), Bson::Timestamp(Timestamp { time: 5, increment: 6 }), Bson::Int64(i64::MIN),
                Bson::Decimal128("1234.5678".parse::<Decimal128>().expect("decimal")), Bson::MinKey, Bson::MaxKey,
                Bson::Symbol("sym".into()), Bson::Undefined,
            ]},
            doc! {"_id": k * 100 + 2, "a.b": 1, "$dollar": {"$x": 2}, "x": {"c.d": [1, {"$e": 3}]}},
            doc! {"_id": k * 100 + 3, "deep": nested},
            doc! {"_id": k * 100 + 4, "empty": [], "huge": (0..100_000).collect::<Vec<i32>>()},
            doc! {"_id": Bson::MinKey, "k": k}.into_iter().filter(|_| k == 0).collect(),
            doc! {"_id": k * 100 + 5, "big": "x".repeat(16 * 1024 * 1024 - 200)},
        ]
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect()
    };
    for d in edge(0) {
        coll.insert_one(d).await.expect("insert edge document");
    }
    let w = WorkerProcess::start(WorkerOptions {
        source: src.uri(),
        target: dst.uri(),
        ..Default::default()
    })
    .await;
    w.start_migration(json!({})).await;
    w.wait_caught_up(2.0, Duration::from_secs(300)).await;
    // The same shapes again through the change stream, plus updates on odd paths.
    for d in edge(1) {
        coll.insert_one(d).await.expect("insert edge document");
    }
    coll.update_one(doc! {"_id": 102}, doc! {"$set": {"x.y": 1}})
        .await
        .expect("update");
    coll.update_one(
        doc! {"_id": 104},
        doc! {"$push": {"empty": 1}, "$pop": {"huge": 1}},
    )
    .await
    .expect("update");
    // A replacement cannot hold a top-level `$` field (the driver takes it for an update, the
    // server refuses it with 52, like mongod); nested ones are allowed.
    coll.replace_one(
        doc! {"_id": 103},
        doc! {"plain": 1, "x": {"$odd": 1}, "a.b": {"c.d": 2}},
    )
    .await
    .expect("replace");
    w.wait_caught_up(1.0, Duration::from_secs(300)).await;
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}

/// Issue 17, acceptance 3: a reverse (rollback of a finalized migration) survives SIGKILL of
/// its worker at three points — right after it started, while replicating under writes, and
/// during its finalize: each time the restarted worker finds the reverse on the old source
/// and resumes it; the old source ends equal to the new cluster, verified with 0 mismatches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_survives_sigkill_at_three_points() {
    let t0 = Instant::now();
    let (src, dst) = pair().await;
    let (old, new) = (src.client(), dst.client());
    for j in 0..2 {
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
    // Test workers run with a 5 s lease (e2e/src/worker.rs): each restart waits it out.
    let mut w = fixtures::worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    w.wait_caught_up(2.0, Duration::from_secs(120)).await;
    assert_eq!(w.post("/finalize", json!({})).await.code, 200);
    w.wait_state("finalized", Duration::from_secs(120)).await;
    let cfg = |seed| WorkloadConfig {
        seed,
        ddl: true,
        max_doc_bytes: 2048,
        preload_ids: 2_000,
        ..Default::default()
    };
    let before = Workload::new(cfg(7)).run_ops(&new, 1_500).await;
    assert_eq!(before.errors, 0, "{:?}", before.error_samples);
    let a = w.post("/reverse", json!({})).await;
    assert_eq!(a.code, 200, "{:#}", a.body);
    let resumed = |st: &serde_json::Value| {
        st["direction"] == "reverse"
            && matches!(
                st["state"].as_str(),
                Some("running" | "finalizing" | "finalized")
            )
    };
    // 1. Right after the start (preparing the old source, first events).
    w.restart().await;
    let t = Instant::now();
    let st = w
        .wait_for("the reverse resumed", Duration::from_secs(60), resumed)
        .await;
    println!(
        "kill 1 (just started): resumed in {:.1}s ({})",
        t.elapsed().as_secs_f64(),
        st["state"]
    );
    // 2. While replicating under writes.
    let wl = Workload::spawn(
        new.clone(),
        WorkloadConfig {
            ops_per_sec: Some(200),
            ..cfg(8)
        },
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.restart().await;
    let t = Instant::now();
    w.wait_for("the reverse resumed", Duration::from_secs(60), resumed)
        .await;
    println!(
        "kill 2 (replicating under writes): resumed in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = wl.stop().await;
    assert_eq!(stats.errors, 0, "{:?}", stats.error_samples);
    let st = w.wait_caught_up(1.0, Duration::from_secs(120)).await;
    assert_eq!(st["direction"], "reverse");
    // Caught up to within a second: the last writes may still be on their way.
    assert_converges(
        &new,
        &old,
        CompareOptions::relaxed(),
        Duration::from_secs(30),
    )
    .await;
    // 3. During the reverse's finalize.
    assert_eq!(w.post("/finalize", json!({})).await.code, 200);
    let at = w
        .wait_for("finalizing", Duration::from_secs(30), |s| {
            s["state"] == "finalizing" || s["state"] == "finalized"
        })
        .await;
    w.restart().await;
    println!(
        "kill 3 at state {}, step {}",
        at["state"], at["finalization"]["step"]
    );
    let t = Instant::now();
    let st = w
        .wait_for("the reverse finalized", Duration::from_secs(120), |s| {
            s["direction"] == "reverse"
                && matches!(s["state"].as_str(), Some("finalized" | "failed"))
        })
        .await;
    println!(
        "kill 3 (finalizing): finalized {:.1}s after the restart",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(st["state"], "finalized", "{st:#}");
    let f = &st["finalization"];
    assert_eq!(f["verification"]["mismatchCount"], 0, "{f:#}");
    assert_same(&new, &old, CompareOptions::default()).await;
    println!(
        "{} + {} operations on the new cluster; test took {:.1}s",
        before.total_ops(),
        stats.total_ops(),
        t0.elapsed().as_secs_f64()
    );
}

/// Transactions stay whole across crashes: the invariant scenario (transfers between 1,000
/// accounts, see `transfers`) with the worker SIGKILLed at 5 points of replication while
/// transfers are in flight, restarted each time: after every restart the checker still sees
/// no wrong sum on the target, and the comparator is clean at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_survive_sigkill() {
    use mongoferry_e2e::transfers::{run_scenario, Scenario};
    let (src, dst) = pair().await;
    let out = run_scenario(
        &src,
        &dst,
        Scenario {
            load: Duration::from_secs(36),
            min_sums: 0,
            max_load: Duration::from_secs(36),
            kills: 5,
            filler_docs: 2_000,
            transfer_tasks: 3,
            transfer_rate: 30,
        },
    )
    .await;
    assert_eq!(out.kills, 5);
    assert_eq!(out.check.violations, 0, "{:?}", out.check.samples);
    assert!(out.check.sums > 0, "{out:?}");
}
