//! End-to-end tests of the replication engine (issue: "Replication engine"): a real worker
//! process between two real SecantusDB servers, driven through its HTTP API.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use mongoferry_e2e::compare::{assert_same, compare, CompareOptions};
use mongoferry_e2e::fixtures::{self, pair, server, worker, PasswordFiles};
use mongoferry_e2e::servers::{ServerOptions, User};
use mongoferry_e2e::worker::{WorkerOptions, WorkerProcess};
use mongoferry_e2e::workload::{SizeDistribution, Workload, WorkloadConfig, DDL_EVENTS};
use serde_json::json;

const MIB: u64 = 1024 * 1024;

async fn seed(c: &Client, db: &str, coll: &str, n: u64, sizes: SizeDistribution, s: u64) -> u64 {
    fixtures::seed(c, db, coll, n, sizes, s, 500).await
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// 1. Copy: 100k documents, ≥150 MB, 20 collections in 3 databases, mixed `_id` types (NaN,
/// embedded documents), 100 B – 2 MB, a capped collection, a view, a collation, a validator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_a_varied_dataset_is_exact() {
    // Loading 100k documents fills the server's default 100,000-entry oplog in seconds, and
    // the preflight (rightly) refuses a copy the oplog window would not cover: size the
    // source's oplog for the migration, as docs/runbook.md asks.
    let src = server(ServerOptions {
        oplog_max_entries: Some(2_000_000),
        ..ServerOptions::rust()
    })
    .await;
    let dst = server(ServerOptions::rust()).await;
    let c = src.client();
    let t0 = Instant::now();
    let mut bytes = 0;
    let mut docs = 0;
    let dbs = ["shop", "crm", "logs"];
    // 16 ordinary collections of small and medium documents.
    for i in 0..16u64 {
        let db = dbs[(i % 3) as usize];
        bytes += seed(
            &c,
            db,
            &format!("c{i}"),
            6_200,
            SizeDistribution::Uniform {
                min: 100,
                max: 2_200,
            },
            i,
        )
        .await;
        docs += 6_200;
    }
    // Big documents: up to 2 MB.
    bytes += seed(
        &c,
        "shop",
        "blobs",
        60,
        SizeDistribution::Uniform {
            min: 512 * 1024,
            max: 2 * 1024 * 1024,
        },
        99,
    )
    .await;
    docs += 60;
    let shop = c.database("shop");
    shop.run_command(
        doc! {"create": "ring", "capped": true, "size": 8 * 1024 * 1024_i64, "max": 5000},
    )
    .await
    .expect("capped");
    shop.collection::<Document>("ring")
        .insert_many((0..3000).map(|i| doc! {"i": i, "pad": "x".repeat(100)}))
        .await
        .expect("capped docs");
    let crm = c.database("crm");
    crm.run_command(doc! {"create": "people", "collation": {"locale": "fr", "strength": 2}})
        .await
        .expect("collation");
    crm.collection::<Document>("people")
        .insert_many((0..500).map(|i| doc! {"_id": format!("p{i}"), "name": format!("Émile {i}")}))
        .await
        .expect("people");
    let logs = c.database("logs");
    logs.run_command(
        doc! {"create": "strict", "validator": {"level": {"$in": ["info", "warn", "error"]}},
        "validationLevel": "moderate", "validationAction": "error"},
    )
    .await
    .expect("validator");
    logs.collection::<Document>("strict")
        .insert_many((0..400).map(|i| doc! {"level": "info", "n": i}))
        .await
        .expect("strict");
    docs += 3900;
    shop.run_command(
        doc! {"create": "cheap", "viewOn": "c0", "pipeline": [{"$match": {"seq": {"$lt": 100}}}]},
    )
    .await
    .expect("view");
    // Indexes of every relaxed kind.
    shop.run_command(doc! {"createIndexes": "c0", "indexes": [
        {"key": {"seq": 1}, "name": "seq_unique", "unique": true},
        {"key": {"created": 1}, "name": "ttl", "expireAfterSeconds": 3600},
        {"key": {"kind": 1, "seq": -1}, "name": "compound_hidden", "hidden": true},
        {"key": {"tags": 1}, "name": "partial", "partialFilterExpression": {"seq": {"$gt": 10}}}
    ]})
    .await
    .expect("indexes");
    let seeded = t0.elapsed();
    assert!(docs >= 100_000, "{docs}");
    assert!(bytes >= 150 * MIB, "only {} MiB", bytes / MIB);

    let w = worker(&src, &dst).await;
    let t1 = Instant::now();
    w.start_migration(json!({})).await;
    let st = w.wait_caught_up(5.0, Duration::from_secs(900)).await;
    let took = t1.elapsed();
    let rss = w.peak_rss();
    println!(
        "copy: {docs} docs, {} MiB in {} => {:.1} MB/s, {:.0} docs/s (seeding took {}); worker peak RSS {} MiB; status {}",
        bytes / MIB,
        secs(took),
        bytes as f64 / 1e6 / took.as_secs_f64(),
        docs as f64 / took.as_secs_f64(),
        secs(seeded),
        rss / MIB,
        st["initialSync"]
    );
    assert_eq!(st["initialSync"]["collectionsTotal"], 20, "{st:#}");
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}

/// 2. The seeded workload runs during the copy and for 60 s after; once the worker reports
/// lag < 1 s after the workload stops, the comparator finds no difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_workload_during_and_after_copy() {
    let (src, dst) = pair().await;
    let c = src.client();
    for (i, db) in ["wl_app", "wl_logs"].iter().enumerate() {
        for j in 0..3 {
            seed(
                &c,
                db,
                &format!("c{j}"),
                4_000,
                SizeDistribution::Realistic { max: 64 * 1024 },
                (i * 10 + j) as u64,
            )
            .await;
        }
    }
    let cfg = WorkloadConfig {
        seed: 7,
        ops_per_sec: Some(400),
        ddl: true,
        ..Default::default()
    };
    let wl = Workload::spawn(src.client(), cfg);
    let w = worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    w.wait_for("initial sync complete", Duration::from_secs(600), |s| {
        s["initialSync"]["completed"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let stats = wl.stop().await;
    let started = Instant::now();
    let st = w.wait_caught_up(1.0, Duration::from_secs(120)).await;
    println!(
        "workload: {} ops ({:?}), unexpected errors {}; caught up {} after it stopped; events applied {}",
        stats.total_ops(),
        stats.ops,
        stats.errors,
        secs(started.elapsed()),
        st["eventsApplied"]
    );
    assert_eq!(
        stats.errors, 0,
        "workload errors: {:?}",
        stats.error_samples
    );
    let diffs = compare(&c, &dst.client(), CompareOptions::relaxed())
        .await
        .expect("compare");
    // SecantusDB occasionally leaves an empty collection on the source that no oplog entry or
    // change event ever announced (docs/known-differences.md): invisible to any change-stream
    // replicator, so it is reported but not failed on. Everything else must be equal.
    for d in diffs {
        if d.kind == mongoferry_e2e::compare::DifferenceKind::MissingCollection {
            let (db, coll) = d.namespace.split_once('.').expect("namespace");
            let n = c
                .database(db)
                .collection::<Document>(coll)
                .estimated_document_count()
                .await
                .expect("count");
            if n == 0 {
                println!(
                    "ignored: {d} (empty on the source, never announced by its change stream)"
                );
                continue;
            }
        }
        panic!("target differs from source: {d}");
    }
}

/// 3. Each DDL kind done on the source during replication is reflected on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_is_replicated() {
    let (src, dst) = pair().await;
    let c = src.client();
    let app = c.database("app");
    app.collection::<Document>("base")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("seed");
    let w = worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    w.wait_caught_up(2.0, Duration::from_secs(60)).await;

    // create (with options), createIndexes, insert
    app.run_command(doc! {"create": "made", "validator": {"x": {"$type": "int"}}})
        .await
        .expect("create");
    app.run_command(doc! {"createIndexes": "made", "indexes": [
        {"key": {"x": 1}, "name": "x_u", "unique": true},
        {"key": {"t": 1}, "name": "t_ttl", "expireAfterSeconds": 60}
    ]})
    .await
    .expect("createIndexes");
    app.collection::<Document>("made")
        .insert_many((0..50).map(|i| doc! {"x": i, "t": mongodb::bson::DateTime::now()}))
        .await
        .expect("insert");
    // capped create and a view
    app.run_command(doc! {"create": "capped2", "capped": true, "size": 65536})
        .await
        .expect("capped");
    app.collection::<Document>("capped2")
        .insert_many((0..20).map(|i| doc! {"i": i}))
        .await
        .expect("capped");
    app.run_command(
        doc! {"create": "v", "viewOn": "made", "pipeline": [{"$match": {"x": {"$gt": 10}}}]},
    )
    .await
    .expect("view");
    // dropIndexes, modify (validator)
    app.run_command(doc! {"createIndexes": "base", "indexes": [{"key": {"y": 1}, "name": "y_1"}]})
        .await
        .expect("ix");
    app.run_command(doc! {"dropIndexes": "base", "index": "y_1"})
        .await
        .expect("dropIndexes");
    app.run_command(doc! {"collMod": "made", "validator": {"x": {"$type": "number"}}, "validationLevel": "moderate"})
        .await
        .expect("collMod");
    // rename, with and without dropTarget
    app.collection::<Document>("r1")
        .insert_one(doc! {"_id": "a"})
        .await
        .expect("r1");
    app.collection::<Document>("r2")
        .insert_one(doc! {"_id": "b"})
        .await
        .expect("r2");
    c.database("admin")
        .run_command(doc! {"renameCollection": "app.r1", "to": "app.r3"})
        .await
        .expect("rename");
    c.database("admin")
        .run_command(doc! {"renameCollection": "app.r3", "to": "app.r2", "dropTarget": true})
        .await
        .expect("rename dropTarget");
    // drop, dropDatabase
    app.collection::<Document>("gone")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("gone");
    app.collection::<Document>("gone")
        .drop()
        .await
        .expect("drop");
    let tmp = c.database("tmpdb");
    tmp.collection::<Document>("x")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("tmp");
    tmp.drop().await.expect("dropDatabase");

    w.wait_caught_up(1.0, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = dst.client();
    let names = t
        .database("app")
        .list_collection_names()
        .await
        .expect("names");
    assert!(
        names.contains(&"r2".to_string())
            && !names.contains(&"r1".to_string())
            && !names.contains(&"r3".to_string()),
        "{names:?}"
    );
    assert!(!names.contains(&"gone".to_string()), "{names:?}");
    assert!(!t
        .list_database_names()
        .await
        .expect("dbs")
        .contains(&"tmpdb".to_string()));
    assert_same(&c, &t, CompareOptions::relaxed()).await;
    let m = w.metrics().await;
    for op in DDL_EVENTS {
        assert!(
            m.contains(&format!(
                "mongoferry_ddl_applied_total{{operation=\"{op}\"}}"
            )),
            "{op} not counted:\n{m}"
        );
    }
}

/// 4. Filters select exactly the expected namespaces, for the copy and for replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_exactly() {
    let (src, dst) = pair().await;
    let c = src.client();
    let all = [
        ("a", "one"),
        ("a", "two"),
        ("a", "secret"),
        ("b", "keep"),
        ("b", "drop"),
        ("c", "x_1"),
        ("c", "x_22"),
        ("c", "x_y"),
        ("d", "other"),
    ];
    for (db, coll) in all {
        c.database(db)
            .collection::<Document>(coll)
            .insert_many((0..10).map(|i| doc! {"i": i}))
            .await
            .expect("seed");
    }
    let w = worker(&src, &dst).await;
    w.start_migration(json!({
        "includeNamespaces": ["a.*", "b.keep", "/^c\\.x_\\d+$/"],
        "excludeNamespaces": ["a.secret"]
    }))
    .await;
    w.wait_caught_up(2.0, Duration::from_secs(60)).await;
    // Writes during replication, selected and not, including a new selected collection.
    for (db, coll) in all
        .iter()
        .chain([("a", "new"), ("c", "x_3"), ("c", "nope")].iter())
    {
        c.database(db)
            .collection::<Document>(coll)
            .insert_one(doc! {"late": true})
            .await
            .expect("late");
    }
    w.wait_caught_up(1.0, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = dst.client();
    let mut got = Vec::new();
    for db in t.list_database_names().await.expect("dbs") {
        if ["admin", "local", "config", "mongoferry"].contains(&db.as_str()) {
            continue;
        }
        for coll in t
            .database(&db)
            .list_collection_names()
            .await
            .expect("colls")
        {
            got.push(format!("{db}.{coll}"));
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec!["a.new", "a.one", "a.two", "b.keep", "c.x_1", "c.x_22", "c.x_3"]
    );
    for ns in &got {
        let (db, coll) = ns.split_once('.').expect("ns");
        let n = |cl: &Client| {
            let cl = cl.clone();
            let (db, coll) = (db.to_string(), coll.to_string());
            async move {
                cl.database(&db)
                    .collection::<Document>(&coll)
                    .count_documents(doc! {})
                    .await
                    .expect("count")
            }
        };
        assert_eq!(n(&c).await, n(&t).await, "{ns}");
    }
}

/// 5. SIGKILL at ≥3 points of the copy and ≥3 of replication under writes: the worker
/// resumes, finished partitions are not copied again, and the data is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_during_copy_and_replication() {
    let (src, dst) = pair().await;
    let c = src.client();
    let mut total_docs = 0u64;
    for i in 0..12u64 {
        seed(
            &c,
            "kdb",
            &format!("c{i}"),
            3_000,
            SizeDistribution::Uniform {
                min: 500,
                max: 3_000,
            },
            100 + i,
        )
        .await;
        total_docs += 3_000;
    }
    let mut w = worker(&src, &dst).await;
    // One collection and one reader at a time, small batches: a slow copy to kill inside.
    w.start_migration(json!({"clone": {"parallelCollections": 1, "readWorkers": 1, "insertWorkers": 1, "batchBytes": 65536}}))
        .await;
    let wl = Workload::spawn(
        src.client(),
        WorkloadConfig {
            seed: 11,
            databases: vec!["kdb".into()],
            collections_per_db: 12,
            ops_per_sec: Some(200),
            ..Default::default()
        },
    );
    let mut skipped_seen = 0.0;
    for (k, frac) in [0.2, 0.45, 0.7].iter().enumerate() {
        let want = (total_docs as f64 * frac) as u64;
        w.wait_for(
            &format!("copy past {want} docs"),
            Duration::from_secs(300),
            |s| {
                s["initialSync"]["clonedDocuments"].as_u64().unwrap_or(0) >= want
                    || s["initialSync"]["cloneCompleted"] == true
            },
        )
        .await;
        w.kill();
        w.restart().await;
        let st = w.wait_state("running", Duration::from_secs(30)).await;
        if st["initialSync"]["cloneCompleted"] == true {
            println!("copy finished before kill {k}");
            continue;
        }
        // The restarted worker counts the partitions it skips once its copy resumes.
        let mut skipped = 0.0;
        for _ in 0..50 {
            skipped = w.metric("mongoferry_copy_partitions_skipped_total").await;
            if skipped > 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let read = w.metric("mongoferry_copy_read_documents_total").await;
        println!(
            "copy kill {k}: restarted; partitions skipped {skipped}, documents read so far {read}"
        );
        assert!(
            skipped >= 1.0,
            "kill {k}: no finished partition was skipped"
        );
        skipped_seen += skipped;
    }
    assert!(skipped_seen >= 3.0);
    w.wait_for("copy complete", Duration::from_secs(600), |s| {
        s["initialSync"]["completed"] == true
    })
    .await;
    let read_last_run = w.metric("mongoferry_copy_read_documents_total").await;
    assert!(
        (read_last_run as u64) < total_docs,
        "the last run re-read everything: {read_last_run}"
    );
    for k in 0..3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        w.kill();
        w.restart().await;
        w.wait_state("running", Duration::from_secs(30)).await;
        println!("replication kill {k}: restarted");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = wl.stop().await;
    w.wait_caught_up(1.0, Duration::from_secs(120)).await;
    println!(
        "workload during kills: {} ops, unexpected errors {}",
        stats.total_ops(),
        stats.errors
    );
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}

/// 5b. SIGKILL while the catalog is being built (collections created on the target
/// concurrently and recorded in batches): the restarted worker replaces what it had created
/// but not yet recorded (no "target already holds" refusal), and the copy is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_while_building_the_catalog() {
    use futures::StreamExt;
    let (src, dst) = pair().await;
    let c = src.client();
    let n = 2_000usize;
    let results: Vec<mongodb::error::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let c = c.clone();
            async move {
                let coll = c
                    .database(&format!("cat{}", i % 4))
                    .collection::<Document>(&format!("c{i}"));
                coll.insert_many((0..3).map(|k| doc! {"_id": k, "i": i as i64, "k": k}))
                    .await?;
                if i % 100 == 0 {
                    coll.create_index(
                        mongodb::IndexModel::builder()
                            .keys(doc! {"k": 1})
                            .options(
                                mongodb::options::IndexOptions::builder()
                                    .unique(true)
                                    .build(),
                            )
                            .build(),
                    )
                    .await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r.expect("seed a collection");
    }
    c.database("cat0")
        .create_collection("v")
        .view_on("c0".to_string())
        .pipeline(vec![doc! {"$match": {"k": {"$gte": 1}}}])
        .await
        .expect("view");
    let meta = dst.client();
    let recorded = || async {
        meta.database("mongoferry")
            .collection::<Document>("collections")
            .count_documents(doc! {})
            .await
            .unwrap_or(0)
    };
    let catalog_done = || async {
        meta.database("mongoferry")
            .collection::<Document>("checkpoint")
            .find_one(doc! {"_id": "job"})
            .await
            .ok()
            .flatten()
            .and_then(|d| d.get_bool("catalogDone").ok())
            .unwrap_or(false)
    };
    let mut w = worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    let mut kills_in_catalog = 0;
    let mut last = 0;
    for k in 0..2 {
        // Kill as soon as one more batch of entries is recorded, while the catalog is not done.
        let t = Instant::now();
        let mut killed = false;
        while t.elapsed() < Duration::from_secs(120) {
            let now = recorded().await;
            if now > last {
                if catalog_done().await {
                    break;
                }
                w.kill();
                println!("catalog kill {k}: {now} of {n} entries recorded");
                last = now;
                killed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !killed {
            println!("catalog kill {k}: the catalog finished first");
            break;
        }
        kills_in_catalog += 1;
        w.restart().await;
    }
    assert!(kills_in_catalog >= 1, "no kill landed inside the catalog");
    w.wait_for("copy complete", Duration::from_secs(600), |s| {
        s["initialSync"]["completed"] == true || s["state"] == "failed"
    })
    .await;
    let st = w.status().await;
    assert_eq!(st["state"], "running", "status: {st}");
    assert_eq!(
        st["initialSync"]["collectionsTotal"].as_u64(),
        Some(n as u64),
        "status: {st}"
    );
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}

/// 6. Pause 30 s under writes, resume, catch up; a pause spanning a worker restart stays
/// paused, then resumes correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_also_across_a_restart() {
    let (src, dst) = pair().await;
    let c = src.client();
    seed(
        &c,
        "wl_app",
        "c0",
        2_000,
        SizeDistribution::Realistic { max: 16 * 1024 },
        5,
    )
    .await;
    let mut w = worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    w.wait_caught_up(2.0, Duration::from_secs(120)).await;
    let wl = Workload::spawn(
        src.client(),
        WorkloadConfig {
            seed: 3,
            ops_per_sec: Some(300),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let a = w.post("/pause", json!({})).await;
    assert_eq!(a.code, 200, "{:?}", a.body);
    w.wait_state("paused", Duration::from_secs(5)).await;
    println!("paused in {}", secs(t.elapsed()));
    let applied = w.status().await["eventsApplied"].clone();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        w.status().await["eventsApplied"],
        applied,
        "events applied while paused"
    );
    assert_eq!(w.post("/resume", json!({})).await.code, 200);
    w.wait_caught_up(2.0, Duration::from_secs(120)).await;

    // Pause, restart the worker: it stays paused; then resume.
    assert_eq!(w.post("/pause", json!({})).await.code, 200);
    w.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = w.wait_state("paused", Duration::from_secs(10)).await;
    assert_eq!(st["state"], "paused");
    assert_eq!(w.post("/resume", json!({})).await.code, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = wl.stop().await;
    w.wait_caught_up(1.0, Duration::from_secs(120)).await;
    assert_eq!(stats.errors, 0, "{:?}", stats.error_samples);
    assert_same(&c, &dst.client(), CompareOptions::relaxed()).await;
}

/// 7. A source with a short oplog, paused past it: on resume the state is `failed` within
/// 10 s with a message naming lost history and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lost_fails_clearly() {
    let src = server(ServerOptions {
        oplog_max_entries: Some(50),
        ..ServerOptions::rust()
    })
    .await;
    let dst = server(ServerOptions::rust()).await;
    let c = src.client();
    c.database("h")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 0})
        .await
        .expect("seed");
    let w = worker(&src, &dst).await;
    w.start_migration(json!({})).await;
    w.wait_caught_up(2.0, Duration::from_secs(60)).await;
    assert_eq!(w.post("/pause", json!({})).await.code, 200);
    w.wait_state("paused", Duration::from_secs(10)).await;
    let coll = c.database("h").collection::<Document>("c");
    for chunk in 0..30 {
        coll.insert_many((0..100).map(|i| doc! {"_id": 1 + chunk * 100 + i}))
            .await
            .expect("writes");
    }
    // The server prunes its oplog every ~1,000 entries or ~10 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    coll.insert_one(doc! {"_id": -1}).await.expect("one more");
    let t = Instant::now();
    assert_eq!(w.post("/resume", json!({})).await.code, 200);
    let st = w.wait_state("failed", Duration::from_secs(10)).await;
    println!("failed {} after resume: {}", secs(t.elapsed()), st["error"]);
    let e = st["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("history lost") && e.contains("oplog") && e.contains("reset"),
        "{e}"
    );
}

/// 8. SCRAM users: right credentials work; a wrong password fails clearly; no password is
/// ever logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_secrets() {
    let spw = "Src-pw-9f3Kx!";
    let tpw = "Tgt-pw-27Qz#";
    let suser = User::new(
        "ferry_src",
        spw,
        &[
            ("backup", "admin"),
            ("readAnyDatabase", "admin"),
            ("clusterMonitor", "admin"),
        ],
    );
    let tuser = User::new(
        "ferry_dst",
        tpw,
        &[
            ("restore", "admin"),
            ("readWriteAnyDatabase", "admin"),
            ("clusterMonitor", "admin"),
            ("clusterManager", "admin"),
        ],
    );
    let src = server(ServerOptions {
        auth_users: vec![suser.clone()],
        ..ServerOptions::rust()
    })
    .await;
    let dst = server(ServerOptions {
        auth_users: vec![tuser.clone()],
        ..ServerOptions::rust()
    })
    .await;
    let c = src.client();
    seed(&c, "sec", "c", 500, SizeDistribution::Fixed(300), 1).await;
    let files = PasswordFiles::new("auth", suser.clone(), tuser.clone());
    files.add("bad", "not-the-password");
    let args = |sfile: &str| files.args_with_source_file(sfile);
    let good = WorkerProcess::start(WorkerOptions {
        source: src.uri_without_credentials(),
        target: dst.uri_without_credentials(),
        args: args("s"),
        ..Default::default()
    })
    .await;
    good.start_migration(json!({})).await;
    good.wait_caught_up(2.0, Duration::from_secs(60)).await;
    c.database("sec")
        .collection::<Document>("c")
        .insert_one(doc! {"late": 1})
        .await
        .expect("late");
    good.wait_caught_up(1.0, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let diffs = compare(
        &c,
        &dst.client(),
        CompareOptions {
            databases: Some(vec!["sec".into()]),
            ..CompareOptions::relaxed()
        },
    )
    .await
    .expect("compare");
    assert!(diffs.is_empty(), "{diffs:?}");

    let bad = WorkerProcess::start(WorkerOptions {
        source: src.uri_without_credentials(),
        target: dst.uri_without_credentials(),
        args: args("bad"),
        ..Default::default()
    })
    .await;
    let st = bad.wait_state("failed", Duration::from_secs(30)).await;
    let e = st["error"].as_str().unwrap_or_default();
    assert!(e.contains("authentication") && e.contains("source"), "{e}");
    for (name, log) in [("good", good.log()), ("bad", bad.log())] {
        for pw in [spw, tpw, "not-the-password"] {
            assert!(!log.contains(pw), "{name} worker log contains a password");
        }
        let m = if name == "good" {
            good.metrics().await
        } else {
            bad.metrics().await
        };
        assert!(!m.contains(spw) && !m.contains(tpw));
    }
    let s = serde_json::to_string(&st).expect("json");
    assert!(!s.contains("not-the-password"));
}

/// 9. API errors: 409 on invalid transitions, 400 on malformed bodies, 401 without the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_clearly() {
    let (src, dst) = pair().await;
    let w = WorkerProcess::start(WorkerOptions {
        source: src.uri(),
        target: dst.uri(),
        token: Some("tok-123".into()),
        ..Default::default()
    })
    .await;
    let msg = |a: &mongoferry_e2e::worker::Answer| {
        a.body["error"].as_str().unwrap_or_default().to_string()
    };
    // 401
    for (m, p) in [
        ("GET", "/status"),
        ("POST", "/start"),
        ("GET", "/metrics"),
        ("POST", "/pause"),
    ] {
        let a = w.call(m, p, None, Some("")).await;
        assert_eq!(a.code, 401, "{m} {p}");
        assert!(msg(&a).contains("token"), "{:?}", a.body);
        assert_eq!(w.call(m, p, None, Some("wrong")).await.code, 401);
    }
    assert_eq!(w.call("GET", "/healthz", None, Some("")).await.code, 200);
    assert_eq!(w.call("GET", "/readyz", None, Some("")).await.code, 200);
    // 409 in idle
    for p in ["/pause", "/resume", "/finalize"] {
        let a = w.post(p, json!({})).await;
        assert_eq!(a.code, 409, "{p}: {:?}", a.body);
        assert!(msg(&a).len() > 20, "{:?}", a.body);
    }
    // 400
    for (p, b) in [
        ("/start", "{not json"),
        ("/start", r#"{"includeNamespaces": "app.x"}"#),
        ("/start", r#"{"bogus": 1}"#),
        ("/start", r#"{"includeNamespaces": ["nodot"]}"#),
        ("/start", r#"{"clone": {"readWorkers": 0}}"#),
        ("/resume", r#"{"fromFailure": "yes"}"#),
        ("/finalize", r#"{"verify": "some"}"#),
        ("/pause", r#"{"x": 1}"#),
    ] {
        let a = w.post_raw(p, b, "application/json").await;
        assert_eq!(a.code, 400, "{p} {b}: {:?}", a.body);
        assert!(!msg(&a).is_empty(), "{p} {b}");
    }
    // start, then start again → 409; finalize during copy of nothing is allowed once complete
    w.start_migration(json!({})).await;
    let a = w.post("/start", json!({})).await;
    assert_eq!(a.code, 409);
    assert!(msg(&a).contains("already"), "{:?}", a.body);
    let a = w.post("/resume", json!({})).await;
    assert_eq!(a.code, 409);
}

/// 10. Copying 2,000 documents of 1 MB with default tuning keeps the worker under 256 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_memory_is_bounded() {
    let (src, dst) = pair().await;
    let c = src.client();
    let mut bytes = 0;
    for i in 0..4u64 {
        bytes += seed(
            &c,
            "big",
            &format!("c{i}"),
            500,
            SizeDistribution::Fixed(1024 * 1024),
            50 + i,
        )
        .await;
    }
    let w = worker(&src, &dst).await;
    let t = Instant::now();
    w.start_migration(json!({})).await;
    let (_, peak) = w
        .wait_with_peak_rss("copy", Duration::from_secs(900), |s| {
            s["initialSync"]["completed"] == true
        })
        .await;
    let took = t.elapsed();
    println!(
        "1 MB documents: {} MiB copied in {} ({:.1} MB/s); worker peak RSS {} MiB",
        bytes / MIB,
        secs(took),
        bytes as f64 / 1e6 / took.as_secs_f64(),
        peak / MIB
    );
    assert!(peak < 256 * MIB, "peak RSS {} MiB", peak / MIB);
    // Correctness of the copy is the other tests' subject; here, metadata and counts.
    let opts = CompareOptions {
        documents: false,
        ..CompareOptions::relaxed()
    };
    let diffs = compare(&c, &dst.client(), opts).await.expect("compare");
    assert!(diffs.is_empty(), "{diffs:?}");
    for i in 0..4 {
        let coll = format!("c{i}");
        let a = c
            .database("big")
            .collection::<Document>(&coll)
            .count_documents(doc! {})
            .await
            .expect("count");
        let b = dst
            .client()
            .database("big")
            .collection::<Document>(&coll)
            .count_documents(doc! {})
            .await
            .expect("count");
        assert_eq!(a, b, "big.{coll}");
    }
}
