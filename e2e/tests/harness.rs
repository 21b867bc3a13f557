//! Proves the e2e harness itself against real servers: the server fixture, the workload
//! generator and the comparator.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::raw::RawDocumentBuf;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

use mongoferry_e2e::certs::make_certs;
use mongoferry_e2e::compare::{compare, render, CompareOptions, Difference, DifferenceKind};
use mongoferry_e2e::fixtures::server as start;
use mongoferry_e2e::servers::{is_available, ServerKind, ServerOptions, User};
use mongoferry_e2e::workload::{
    seed_dataset, IdType, OpKind, SeedSpec, SizeDistribution, Workload, WorkloadConfig,
};

/// Copy one collection document by document (raw bytes preserved) with insert_many.
async fn copy_collection(source: &Client, target: &Client, db: &str, coll: &str) {
    let src = source.database(db).collection::<RawDocumentBuf>(coll);
    let dst = target.database(db).collection::<RawDocumentBuf>(coll);
    let mut cursor = src.find(doc! {}).await.expect("find on source");
    let mut batch = Vec::new();
    while let Some(d) = cursor.try_next().await.expect("read source") {
        batch.push(d);
        if batch.len() == 500 {
            dst.insert_many(std::mem::take(&mut batch))
                .await
                .expect("insert into target");
        }
    }
    if !batch.is_empty() {
        dst.insert_many(batch).await.expect("insert into target");
    }
}

fn kinds(diffs: &[Difference]) -> Vec<&DifferenceKind> {
    diffs.iter().map(|d| &d.kind).collect()
}

#[tokio::test]
async fn comparator_finds_exactly_the_document_differences() {
    let a = start(ServerOptions::default()).await;
    let b = start(ServerOptions::default()).await;
    let (src, dst) = (a.client(), b.client());

    let mut spec = SeedSpec::new("shop", "orders", 700);
    spec.sizes = SizeDistribution::Realistic { max: 20_000 };
    spec.batch_size = 200;
    let report = seed_dataset(&src, &spec).await.expect("seed");
    assert_eq!(report.inserted, 700);
    assert_eq!(report.by_id_type.get("nan"), Some(&1));
    assert_eq!(report.by_id_type.len(), IdType::ALL.len() + 2);
    seed_dataset(&src, &SeedSpec::new("shop", "small", 50))
        .await
        .expect("seed small");
    for client in [&src, &dst] {
        client
            .database("shop")
            .collection::<Document>("orders")
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"kind": 1, "n": -1})
                    .build(),
            )
            .await
            .expect("create index");
    }
    copy_collection(&src, &dst, "shop", "orders").await;
    copy_collection(&src, &dst, "shop", "small").await;

    let diffs = compare(&src, &dst, CompareOptions::default())
        .await
        .expect("compare");
    assert!(diffs.is_empty(), "copy differs:\n{}", render(&diffs));

    // Change one, delete one, add one on the target.
    let orders = dst.database("shop").collection::<Document>("orders");
    let r = orders
        .update_one(doc! {"_id": 22i32}, doc! {"$set": {"kind": "changed"}})
        .await
        .expect("update");
    assert_eq!(r.matched_count, 1, "seeded _id 22 (int32) exists");
    let r = orders
        .delete_one(doc! {"_id": "id-0-00000004"})
        .await
        .expect("delete");
    assert_eq!(r.deleted_count, 1, "seeded string _id exists");
    orders
        .insert_one(doc! {"_id": "brand-new", "x": 1})
        .await
        .expect("insert");

    let diffs = compare(&src, &dst, CompareOptions::default())
        .await
        .expect("compare");
    assert_eq!(
        diffs.len(),
        3,
        "expected 3 differences:\n{}",
        render(&diffs)
    );
    let k = kinds(&diffs);
    assert!(k.iter().any(|k| matches!(k, DifferenceKind::DocumentDiffers { id: Bson::Int32(22), detail } if detail.contains("kind"))), "{}", render(&diffs));
    assert!(k.iter().any(|k| matches!(k, DifferenceKind::MissingDocument { id: Bson::String(s) } if s == "id-0-00000004")), "{}", render(&diffs));
    assert!(k.iter().any(|k| matches!(k, DifferenceKind::ExtraDocument { id: Bson::String(s) } if s == "brand-new")), "{}", render(&diffs));
    for d in &diffs {
        assert_eq!(d.namespace, "shop.orders");
        assert!(!d.to_string().is_empty());
    }

    // Same fields in another order: reported as FieldOrderOnly.
    let small_src = src.database("shop").collection::<Document>("small");
    let small_dst = dst.database("shop").collection::<Document>("small");
    let original = small_src
        .find_one(doc! {"_id": 15i32})
        .await
        .expect("read")
        .expect("seeded _id 15 exists");
    let mut reordered = Document::new();
    reordered.insert("_id", original.get("_id").cloned().expect("_id"));
    let fields: Vec<_> = original.iter().collect();
    for (k, v) in fields.into_iter().rev() {
        if k != "_id" {
            reordered.insert(k.clone(), v.clone());
        }
    }
    small_dst
        .replace_one(doc! {"_id": 15i32}, reordered)
        .await
        .expect("replace");
    // And a collection missing on the target.
    src.database("shop")
        .create_collection("only_on_source")
        .await
        .expect("create");
    let diffs = compare(&src, &dst, CompareOptions::default())
        .await
        .expect("compare");
    assert_eq!(diffs.len(), 5, "{}", render(&diffs));
    assert!(
        diffs
            .iter()
            .any(|d| d.is_field_order_only() && d.namespace == "shop.small"),
        "{}",
        render(&diffs)
    );
    assert!(
        diffs
            .iter()
            .any(|d| d.kind == DifferenceKind::MissingCollection
                && d.namespace == "shop.only_on_source"),
        "{}",
        render(&diffs)
    );

    // The cap: list at most N per collection, count the rest.
    orders.delete_many(doc! {}).await.expect("delete all");
    let diffs = compare(
        &src,
        &dst,
        CompareOptions {
            max_listed_per_collection: 10,
            databases: Some(vec!["shop".into()]),
            ..CompareOptions::default()
        },
    )
    .await
    .expect("compare");
    let in_orders: Vec<_> = diffs
        .iter()
        .filter(|d| d.namespace == "shop.orders")
        .collect();
    assert_eq!(in_orders.len(), 11, "{}", render(&diffs));
    assert!(
        in_orders.iter().any(|d| matches!(
            d.kind,
            DifferenceKind::MoreDocumentDifferences {
                missing: 690,
                extra: 0,
                ..
            }
        )),
        "{}",
        render(&diffs)
    );
}

#[tokio::test]
async fn comparator_checks_collection_options_and_relaxed_indexes() {
    let a = start(ServerOptions::default()).await;
    let b = start(ServerOptions::default()).await;
    let (src, dst) = (a.client(), b.client());

    for (client, unique_ttl_hidden) in [(&src, true), (&dst, false)] {
        let db = client.database("meta");
        db.create_collection("capped")
            .capped(true)
            .size(1 << 20)
            .await
            .expect("capped");
        db.create_collection("validated")
            .validator(doc! {"n": {"$type": "number"}})
            .validation_action(mongodb::options::ValidationAction::Warn)
            .await
            .expect("validated");
        let coll = db.collection::<Document>("indexed");
        coll.insert_one(doc! {"_id": 1, "email": "a@b", "at": mongodb::bson::DateTime::from_millis(1_700_000_000_000)})
            .await
            .expect("insert");
        let (unique, ttl, hidden) = if unique_ttl_hidden {
            (true, 3600u64, true)
        } else {
            (false, 2_147_483_647u64, false)
        };
        for model in [
            IndexModel::builder()
                .keys(doc! {"email": 1})
                .options(
                    IndexOptions::builder()
                        .name("email_1".to_string())
                        .unique(unique)
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! {"at": 1})
                .options(
                    IndexOptions::builder()
                        .name("at_ttl".to_string())
                        .expire_after(Duration::from_secs(ttl))
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! {"h": 1})
                .options(
                    IndexOptions::builder()
                        .name("h_1".to_string())
                        .hidden(hidden)
                        .build(),
                )
                .build(),
        ] {
            coll.create_index(model).await.expect("create index");
        }
    }
    // One real option difference and one index only on the source.
    src.database("meta")
        .create_collection("collated")
        .collation(
            mongodb::options::Collation::builder()
                .locale("en")
                .strength(mongodb::options::CollationStrength::Secondary)
                .build(),
        )
        .await
        .expect("collated");
    dst.database("meta")
        .create_collection("collated")
        .await
        .expect("collated plain");

    let strict = compare(&src, &dst, CompareOptions::default())
        .await
        .expect("compare");
    let relaxed = compare(&src, &dst, CompareOptions::relaxed())
        .await
        .expect("compare");
    println!("strict:\n{}relaxed:\n{}", render(&strict), render(&relaxed));
    let index_fields = |diffs: &[Difference]| -> Vec<String> {
        diffs
            .iter()
            .filter_map(|d| match &d.kind {
                DifferenceKind::IndexField { name, field, .. } if d.namespace == "meta.indexed" => {
                    Some(format!("{name}.{field}"))
                }
                _ => None,
            })
            .collect()
    };
    let mut strict_fields = index_fields(&strict);
    strict_fields.sort();
    assert_eq!(
        strict_fields,
        vec!["at_ttl.expireAfterSeconds", "email_1.unique", "h_1.hidden"],
        "{}",
        render(&strict)
    );
    assert!(index_fields(&relaxed).is_empty(), "{}", render(&relaxed));
    for diffs in [&strict, &relaxed] {
        let options: Vec<_> = diffs
            .iter()
            .filter(|d| matches!(d.kind, DifferenceKind::CollectionOption { .. }))
            .collect();
        assert_eq!(options.len(), 1, "{}", render(diffs));
        assert_eq!(options[0].namespace, "meta.collated");
    }
    // The collation difference also shows on the collated collection's `_id_` index.
    assert_eq!(relaxed.len(), 2, "{}", render(&relaxed));
    assert!(
        relaxed.iter().all(|d| d.namespace == "meta.collated"),
        "{}",
        render(&relaxed)
    );

    // Views: same definition is equal; a different pipeline is reported.
    src.database("meta")
        .run_command(doc! {"create": "v", "viewOn": "indexed", "pipeline": [{"$match": {"x": 1}}]})
        .await
        .expect("create view");
    dst.database("meta")
        .run_command(doc! {"create": "v", "viewOn": "indexed", "pipeline": [{"$match": {"x": 2}}]})
        .await
        .expect("create view");
    let diffs = compare(&src, &dst, CompareOptions::relaxed())
        .await
        .expect("compare");
    assert!(
        diffs.iter().any(|d| d.namespace == "meta.v"
            && matches!(&d.kind, DifferenceKind::CollectionOption { option, .. } if option == "pipeline")),
        "{}",
        render(&diffs)
    );
}

fn workload_config(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        databases: vec!["wl_app".into(), "wl_logs".into()],
        collections_per_db: 3,
        ops_per_sec: None,
        ddl: true,
        transactions: true,
        max_doc_bytes: 32 * 1024,
        preload_ids: 1000,
    }
}

#[tokio::test]
async fn workload_runs_without_unexpected_errors() {
    let server = start(ServerOptions::default()).await;
    let client = server.client();
    seed_dataset(&client, &SeedSpec::new("wl_app", "c0", 300))
        .await
        .expect("seed");

    let mut workload = Workload::new(workload_config(7));
    let stats = workload.run_for(&client, Duration::from_secs(3)).await;
    println!("{stats:#?}");
    assert_eq!(
        stats.errors, 0,
        "unexpected errors: {:#?}",
        stats.error_samples
    );
    assert!(stats.total_ops() > 100, "too few operations: {stats:?}");
    for kind in [
        OpKind::Insert,
        OpKind::UpdateSet,
        OpKind::Replace,
        OpKind::Delete,
    ] {
        assert!(stats.count(kind) > 0, "no {kind:?}: {stats:?}");
    }
    assert!(stats.docs_inserted > 0);
    assert_eq!(stats.transactions_supported, Some(true), "{stats:?}");
    assert!(
        stats.ops.keys().any(|k| k.is_ddl()),
        "no DDL ran: {stats:?}"
    );

    // A spawned workload stops on request and never touches reserved databases.
    let handle = Workload::spawn(
        client.clone(),
        WorkloadConfig {
            ops_per_sec: Some(200),
            ..workload_config(8)
        },
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stats = handle.stop().await;
    assert!(
        stats.total_ops() > 20 && stats.total_ops() < 300,
        "{stats:?}"
    );
    assert_eq!(stats.errors, 0, "{:#?}", stats.error_samples);
    let dbs = client.list_database_names().await.expect("list");
    assert!(!dbs.iter().any(|d| d == "mongoferry"), "{dbs:?}");
}

#[tokio::test]
async fn workload_is_deterministic_for_a_seed() {
    let a = start(ServerOptions::default()).await;
    let b = start(ServerOptions::default()).await;
    for server in [&a, &b] {
        let client = server.client();
        seed_dataset(&client, &SeedSpec::new("wl_app", "c1", 100))
            .await
            .expect("seed");
        let stats = Workload::new(workload_config(99))
            .run_ops(&client, 400)
            .await;
        assert_eq!(stats.errors, 0, "{:#?}", stats.error_samples);
        assert_eq!(stats.attempted(), 400, "{stats:?}");
    }
    let diffs = compare(&a.client(), &b.client(), CompareOptions::default())
        .await
        .expect("compare");
    assert!(
        diffs.is_empty(),
        "same seed, different results:\n{}",
        render(&diffs)
    );
}

#[tokio::test]
async fn killed_server_keeps_acknowledged_writes() {
    let mut server = start(ServerOptions {
        sync_on_commit: true,
        ..ServerOptions::default()
    })
    .await;
    let port = server.port();
    let coll = server
        .client()
        .database("durable")
        .collection::<Document>("c");
    for i in 0..100 {
        coll.insert_one(doc! {"_id": i, "v": "x"})
            .await
            .expect("insert");
    }
    server.kill();
    assert!(!server.is_running());
    server.restart().await.expect("restart");
    assert_eq!(server.port(), port);
    let coll = server
        .client()
        .database("durable")
        .collection::<Document>("c");
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 100);
    // Graceful stop and restart also keep it.
    server.stop();
    server.restart().await.expect("restart after stop");
    let coll = server
        .client()
        .database("durable")
        .collection::<Document>("c");
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 100);
}

fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        mongodb::error::ErrorKind::Authentication { .. } => Some(18),
        _ => None,
    }
}

#[tokio::test]
async fn auth_server_rejects_a_wrong_password() {
    let app = User::new("app", "app-secret", &[("readWrite", "appdb")]);
    let server = start(ServerOptions {
        auth_users: vec![app.clone()],
        ..ServerOptions::default()
    })
    .await;
    // The fixture's admin client works.
    server
        .client()
        .database("appdb")
        .collection::<Document>("c")
        .insert_one(doc! {"x": 1})
        .await
        .expect("admin insert");
    // The app user works.
    let app_client = server.client_for(&app).await.expect("client");
    app_client
        .database("appdb")
        .collection::<Document>("c")
        .count_documents(doc! {})
        .await
        .expect("app user reads");
    // A wrong password fails authentication.
    let wrong = User {
        password: "wrong".into(),
        ..app.clone()
    };
    let bad = server.client_for(&wrong).await.expect("client");
    let err = bad
        .database("appdb")
        .run_command(doc! {"ping": 1})
        .await
        .expect_err("wrong password must be rejected");
    assert!(
        matches!(
            err.kind.as_ref(),
            mongodb::error::ErrorKind::Authentication { .. }
        ) || command_code(&err) == Some(18),
        "unexpected error: {err:?}"
    );
    // No credentials: commands are refused (13 Unauthorized).
    let anon = server.client_without_credentials().await.expect("client");
    let err = anon
        .database("appdb")
        .collection::<Document>("c")
        .count_documents(doc! {})
        .await
        .expect_err("unauthenticated read must be refused");
    assert_eq!(command_code(&err), Some(13), "{err:?}");
}

#[tokio::test]
async fn python_server_starts_and_compares() {
    if !is_available(ServerKind::Python) {
        eprintln!("secantusd-py not installed; skipping");
        return;
    }
    let py = start(ServerOptions::python()).await;
    let rs = start(ServerOptions::default()).await;
    for server in [&py, &rs] {
        seed_dataset(&server.client(), &SeedSpec::new("cross", "c", 200))
            .await
            .expect("seed");
    }
    let diffs = compare(&rs.client(), &py.client(), CompareOptions::default())
        .await
        .expect("compare");
    assert!(diffs.is_empty(), "{}", render(&diffs));
}

#[tokio::test]
async fn tls_server_accepts_a_client_trusting_its_ca() {
    let dir = std::env::temp_dir().join(format!("mongoferry-e2e-tls-{}", std::process::id()));
    let Some(mut tls) = make_certs(&dir) else {
        eprintln!("openssl not usable; skipping");
        return;
    };
    // The server gets --tls-ca-file (it verifies client certificates only if some are sent,
    // unless --tls-require-client-cert); the fixture's client trusts the same CA.
    tls.ca_file = Some(dir.join("ca.pem"));
    let mut server = start(ServerOptions {
        tls: Some(tls),
        ..ServerOptions::default()
    })
    .await;
    assert!(
        server.uri().contains("tls=true&tlsCAFile="),
        "{}",
        server.uri()
    );
    server
        .client()
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .expect("ping over TLS with the CA trusted");
    // A plain-text client cannot talk to it.
    let plain = Client::with_options({
        let mut o = mongodb::options::ClientOptions::parse(server.uri_without_credentials())
            .await
            .expect("parse");
        o.tls = None;
        o.server_selection_timeout = Some(Duration::from_secs(2));
        o
    })
    .expect("client");
    assert!(plain
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .is_err());
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
