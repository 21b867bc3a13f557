//! End-to-end tests of the operator (issue 4) on the real test control plane
//! (kube-apiserver 1.33 + etcd + GC + pod runner), with SecantusDB servers as source and
//! target. The operator runs as local processes with the admin kubeconfig; worker pods run
//! the project binary through the pod runner.
//!
//! `cargo build && cargo test -p mongoferry-e2e --test operator -- --test-threads=1`

use std::path::Path;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongodb::Client;
use mongoferry_e2e::compare::{assert_same, CompareOptions};
use mongoferry_e2e::controlplane::ControlPlane;
use mongoferry_e2e::fixtures::{self, credentials_secret_yaml, Operator};
use mongoferry_e2e::kubectl::{self, condition, events_applied, tail, Kubectl, CRD};
use mongoferry_e2e::servers::{MongoServer, User};
use mongoferry_e2e::wait::{wait_for, wait_for_or};
use mongoferry_e2e::worker::binary;
use mongoferry_e2e::workload::{seed_dataset, SeedSpec, Workload, WorkloadConfig};
use serde_json::Value;

const PASSWORD: &str = "S3cr3t-Pa55-xyzzy";
const WRONG_PASSWORD: &str = "Wr0ng-Pa55-plugh";

fn user() -> User {
    User::new("ferry", PASSWORD, &[("root", "admin")])
}

async fn server() -> MongoServer {
    fixtures::auth_server(vec![user()]).await
}

fn secret_yaml(name: &str, password: &str) -> String {
    credentials_secret_yaml(name, None, "ferry", password)
}

fn job_yaml(name: &str, src: &MongoServer, dst: &MongoServer, extra: &str) -> String {
    fixtures::job_yaml(name, None, src, dst, extra)
}

async fn wait_job(
    kc: &Kubectl,
    name: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    wait_for_or(
        what,
        timeout,
        || kc.get("mj", name).filter(|j| f(j)),
        || job_status(kc, name),
    )
    .await
}

/// Waits until condition `ty` of job `name` has `status`: the job and the condition.
async fn wait_condition(
    kc: &Kubectl,
    name: &str,
    ty: &str,
    status: &str,
    timeout: Duration,
) -> (Value, kubectl::Condition) {
    let what = format!("{name}: {ty}={status}");
    let j = wait_job(kc, name, &what, timeout, |j| {
        condition(j, ty).is_some_and(|c| c.status == status)
    })
    .await;
    let c = condition(&j, ty).expect("condition");
    (j, c)
}

fn job_status(kc: &Kubectl, name: &str) -> String {
    let status = kc
        .get("mj", name)
        .map_or_else(|| "(not found)".into(), |j| j["status"].to_string());
    format!("; last status of {name}: {status}")
}

async fn seed(c: &Client) {
    let mut s = SeedSpec::new("shop", "orders", 3000);
    s.batch_size = 500;
    seed_dataset(c, &s).await.expect("seed");
    let mut s = SeedSpec::new("shop", "customers", 1000);
    s.seed = 2;
    seed_dataset(c, &s).await.expect("seed");
}

fn workload() -> WorkloadConfig {
    WorkloadConfig {
        seed: 5,
        databases: vec!["shop".into()],
        ops_per_sec: Some(100),
        ..Default::default()
    }
}

fn start_cp() -> (ControlPlane, Kubectl) {
    let cp = ControlPlane::start(&binary()).expect("control plane");
    let kc = Kubectl::new(&cp);
    kc.install_crd(CRD);
    (cp, kc)
}

/// A control plane with the CRD, and a source (seeded) and a target server.
async fn seeded() -> (ControlPlane, Kubectl, MongoServer, MongoServer) {
    let (cp, kc) = start_cp();
    let (src, dst) = (server().await, server().await);
    seed(&src.client()).await;
    (cp, kc, src, dst)
}

fn create_secrets(kc: &Kubectl, source_pw: &str) {
    kc.apply(&secret_yaml("source-credentials", source_pw))
        .expect("secret");
    kc.apply(&secret_yaml("target-credentials", PASSWORD))
        .expect("secret");
}

/// Acceptance 1, 2 and 5: columns, copy then replication with lag; pause within 5 s; resume;
/// finalize + `kubectl wait`; comparator; deletion removes pod and Secret, keeps target data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_pause_resume_finalize_delete() {
    let (cp, kc, src, dst) = seeded().await;
    let op = Operator::start(&cp, "op-a", false);
    create_secrets(&kc, PASSWORD);
    kc.apply(&job_yaml("mig", &src, &dst, ""))
        .expect("apply job");

    wait_for_or(
        "worker pod running",
        Duration::from_secs(120),
        || {
            kc.get("pod", "mig-worker")
                .filter(|p| p["status"]["phase"] == "Running")
        },
        || {
            format!(
                "{}\noperator log tail:\n{}",
                job_status(&kc, "mig"),
                tail(&op.log(), 30)
            )
        },
    )
    .await;
    let wl = Workload::spawn(src.client(), workload());
    let j = wait_job(
        &kc,
        "mig",
        "copy progress shown",
        Duration::from_secs(120),
        |j| j["status"]["copy"]["bytesTotal"].as_u64().unwrap_or(0) > 0,
    )
    .await;
    println!("copy: {}", j["status"]["copy"]);
    let j = wait_job(
        &kc,
        "mig",
        "replicating with lag",
        Duration::from_secs(300),
        |j| {
            j["status"]["phase"] == "replicating"
                && j["status"]["replication"]["caughtUp"] == true
                && j["status"]["replication"]["lagSeconds"].is_i64()
        },
    )
    .await;
    println!("replication: {}", j["status"]["replication"]);
    let table = kc.ok(&["get", "mj"]);
    println!("{table}");
    for col in [
        "NAME", "DESIRED", "STATE", "PROGRESS", "LAG", "AGE", "running", "100%",
    ] {
        assert!(
            table.contains(col),
            "`kubectl get mj` lacks {col}:\n{table}"
        );
    }

    // Pause: the Paused condition within 5 s.
    let t = Instant::now();
    kc.set_desired_state(None, "mig", "paused");
    wait_job(&kc, "mig", "Paused", Duration::from_secs(5), |j| {
        condition(j, "Paused").is_some_and(|c| c.status == "True")
    })
    .await;
    println!("ACCEPTANCE 2: paused in {:.2}s", t.elapsed().as_secs_f64());
    let paused_applied = events_applied(&kc.get("mj", "mig").expect("job"));

    // Resume: replication continues.
    kc.set_desired_state(None, "mig", "running");
    wait_job(
        &kc,
        "mig",
        "replication continues",
        Duration::from_secs(60),
        |j| j["status"]["state"] == "running" && events_applied(j) > paused_applied,
    )
    .await;
    let stats = wl.stop().await;
    println!("workload: {} ops", stats.total_ops());

    // Finalize.
    wait_job(&kc, "mig", "caught up", Duration::from_secs(120), |j| {
        j["status"]["replication"]["lagSeconds"]
            .as_i64()
            .is_some_and(|l| l <= 2)
    })
    .await;
    let t = Instant::now();
    kc.finalize(None, "mig", Duration::from_secs(300));
    println!("finalized in {:.1}s", t.elapsed().as_secs_f64());
    assert_same(&src.client(), &dst.client(), CompareOptions::default()).await;
    println!("ACCEPTANCE 2: comparator finds no difference");
    let j = kc.get("mj", "mig").expect("job");
    assert_eq!(
        j["status"]["finalization"]["verification"]["mismatchCount"], 0,
        "{}",
        j["status"]
    );

    // Delete: pod and token Secret go, target data stays.
    let before = dst
        .client()
        .database("shop")
        .collection::<mongodb::bson::Document>("orders")
        .count_documents(doc! {})
        .await
        .expect("count");
    kc.ok(&["delete", "mj", "mig", "--wait=true", "--timeout=120s"]);
    wait_for(
        "pod and token Secret deleted",
        Duration::from_secs(60),
        || {
            (kc.get("pod", "mig-worker").is_none() && kc.get("secret", "mig-api-token").is_none())
                .then_some(())
        },
    )
    .await;
    let after = dst
        .client()
        .database("shop")
        .collection::<mongodb::bson::Document>("orders")
        .count_documents(doc! {})
        .await
        .expect("count");
    assert_eq!(before, after);
    assert!(after >= 3000);
    println!("ACCEPTANCE 5: pod + Secret removed, target keeps {after} orders");
}

/// Acceptance 3: invalid specs refused at admission with their messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused() {
    let (_cp, kc) = start_cp();
    let base = |spec: &str| {
        format!("apiVersion: mongoferry.io/v1alpha1\nkind: MigrationJob\nmetadata:\n  name: bad\nspec:\n{spec}")
    };
    let ep = "  source: {uri: 'mongodb://a:1/?replicaSet=rs'}\n  target: {uri: 'mongodb://b:1/?replicaSet=rs'}\n";
    let cases: Vec<(String, &str)> = vec![
        (
            base("  source: {uri: 'mongodb://alice:pw@a:1'}\n  target: {uri: 'mongodb://b:1'}\n"),
            "must not contain a user name or password",
        ),
        (
            base("  source: {uri: 'http://a:1/x'}\n  target: {uri: 'mongodb://b:1'}\n"),
            "must start with mongodb:// or mongodb+srv://",
        ),
        (
            base(&format!("{ep}  desiredState: stopped\n")),
            "Unsupported value: \"stopped\"",
        ),
        (
            base(&format!("{ep}  tuning: {{clone: {{readWorkers: 0}}}}\n")),
            "should be greater than or equal to 1",
        ),
        (
            base(&format!(
                "{ep}  tuning: {{replication: {{bulkOps: 200000}}}}\n"
            )),
            "should be less than or equal to 100000",
        ),
        (
            base(&format!("{ep}  tuning: {{clone: {{batchBytes: 10}}}}\n")),
            "should be greater than or equal to 65536",
        ),
        (
            base(&format!("{ep}  namespaces: {{include: ['nodot']}}\n")),
            "each include pattern must be db.collection",
        ),
        (
            base(&format!("{ep}  finalize: {{verify: partial}}\n")),
            "Unsupported value: \"partial\"",
        ),
        (
            base("  source: {uri: 'mongodb://a:1'}\n"),
            "spec.source and spec.target are required (unless spec.reverseOf names",
        ),
        (
            base(&format!("{ep}  reverseOf: {{name: mig}}\n")),
            "with spec.reverseOf, leave out spec.source, spec.target and spec.namespaces",
        ),
        (base("  reverseOf: {name: ''}\n"), "spec.reverseOf.name"),
        (
            base(
                &format!(
                    "{ep}  source: {{uri: 'mongodb://a:1', credentialsSecretRef: {{name: ''}}}}\n"
                )
                .replace("  source: {uri: 'mongodb://a:1/?replicaSet=rs'}\n", ""),
            ),
            "spec.source.credentialsSecretRef.name",
        ),
    ];
    let mut refused = 0;
    for (yaml, msg) in &cases {
        match kc.apply(yaml) {
            Ok(out) => panic!("accepted:\n{yaml}\n{out}"),
            Err(e) => {
                assert!(e.contains(msg), "expected {msg:?} in:\n{e}\nfor\n{yaml}");
                refused += 1;
            }
        }
    }
    // Transition rules on a valid object.
    kc.apply(&base(&format!(
        "{ep}  namespaces: {{include: ['app.*']}}\n  desiredState: finalized\n"
    )))
    .expect("valid job");
    let updates: Vec<(String, &str)> = vec![
        (base(&format!("{ep}  namespaces: {{include: ['app.*']}}\n  desiredState: running\n")), "desiredState cannot leave finalized"),
        (base("  source: {uri: 'mongodb://other:1/?replicaSet=rs'}\n  target: {uri: 'mongodb://b:1/?replicaSet=rs'}\n  namespaces: {include: ['app.*']}\n  desiredState: finalized\n"), "spec.source is immutable"),
        (base(&format!("{ep}  namespaces: {{include: ['other.*']}}\n  desiredState: finalized\n")), "spec.namespaces is immutable once set"),
        (base("  reverseOf: {name: mig}\n  desiredState: finalized\n"), "spec.reverseOf cannot be added or removed"),
    ];
    for (yaml, msg) in &updates {
        match kc.apply(yaml) {
            Ok(out) => panic!("update accepted:\n{yaml}\n{out}"),
            Err(e) => {
                assert!(e.contains(msg), "expected {msg:?} in:\n{e}");
                refused += 1;
            }
        }
    }
    // A reverse's reference cannot switch migrations.
    let reverse = |name: &str| {
        format!("apiVersion: mongoferry.io/v1alpha1\nkind: MigrationJob\nmetadata:\n  name: back\nspec:\n  reverseOf: {{name: {name}}}\n")
    };
    kc.apply(&reverse("bad")).expect("valid reverse");
    let e = kc
        .apply(&reverse("other"))
        .expect_err("reverseOf.name changed");
    assert!(e.contains("spec.reverseOf.name is immutable"), "{e}");
    refused += 1;
    println!("ACCEPTANCE 3: {refused} invalid specs refused with their messages");
    assert!(refused >= 8);
}

/// Acceptance 4 and 6: worker pod deleted mid-replication → recreated, resumes from its
/// checkpoint; operator restarted → the worker is not disturbed and status continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_deletion_and_operator_restart() {
    let (cp, kc, src, dst) = seeded().await;
    let mut op = Operator::start(&cp, "op-a", false);
    create_secrets(&kc, PASSWORD);
    kc.apply(&job_yaml("mig", &src, &dst, ""))
        .expect("apply job");
    let wl = Workload::spawn(src.client(), workload());
    wait_job(&kc, "mig", "replicating", Duration::from_secs(300), |j| {
        j["status"]["phase"] == "replicating" && j["status"]["replication"]["caughtUp"] == true
    })
    .await;

    // 6: operator restart.
    let pod = kc.get("pod", "mig-worker").expect("pod");
    let (uid, restarts) = (
        pod["metadata"]["uid"].clone(),
        pod["status"]["containerStatuses"][0]["restartCount"].clone(),
    );
    op.kill();
    let before = events_applied(&kc.get("mj", "mig").expect("job"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _op2 = Operator::start(&cp, "op-b", false);
    wait_job(
        &kc,
        "mig",
        "status continues after operator restart",
        Duration::from_secs(30),
        |j| events_applied(j) > before,
    )
    .await;
    let pod = kc.get("pod", "mig-worker").expect("pod");
    assert_eq!(
        pod["metadata"]["uid"], uid,
        "worker pod replaced by an operator restart"
    );
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"],
        restarts
    );
    println!("ACCEPTANCE 6: worker undisturbed (same pod uid, same restarts), status continues");

    // 4: worker pod deleted.
    let before = events_applied(&kc.get("mj", "mig").expect("job"));
    kc.ok(&["delete", "pod", "mig-worker", "--wait=false"]);
    let t = Instant::now();
    wait_for("a new worker pod runs", Duration::from_secs(90), || {
        kc.get("pod", "mig-worker")
            .filter(|p| p["metadata"]["uid"] != uid && p["status"]["phase"] == "Running")
    })
    .await;
    wait_job(
        &kc,
        "mig",
        "replication resumed",
        Duration::from_secs(120),
        |j| j["status"]["state"] == "running" && events_applied(j) > before,
    )
    .await;
    println!("recreated and resumed in {:.1}s", t.elapsed().as_secs_f64());
    let log = cp.pod_log("default", "mig-worker", "worker");
    assert!(
        !log.contains("initial copy"),
        "the recreated worker copied again:\n{log}"
    );
    wl.stop().await;
    wait_job(&kc, "mig", "caught up", Duration::from_secs(120), |j| {
        j["status"]["replication"]["lagSeconds"]
            .as_i64()
            .is_some_and(|l| l <= 2)
    })
    .await;
    kc.finalize(None, "mig", Duration::from_secs(300));
    assert_same(&src.client(), &dst.client(), CompareOptions::default()).await;
    println!("ACCEPTANCE 4: recreated worker resumed from its checkpoint; data identical");
}

/// Acceptance 7: two operator replicas; only the leader reconciles; the leader killed → the
/// other takes over within 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_failover() {
    let (cp, kc) = start_cp();
    let (src, dst) = (server().await, server().await);
    let mut a = Operator::start(&cp, "op-a", true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut b = Operator::start(&cp, "op-b", true);
    create_secrets(&kc, PASSWORD);
    kc.apply(&job_yaml("mig", &src, &dst, ""))
        .expect("apply job");
    let holder = wait_for("a leader", Duration::from_secs(30), || {
        kc.get("lease", "mongoferry-operator")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    })
    .await;
    wait_job(&kc, "mig", "running", Duration::from_secs(120), |j| {
        j["status"]["state"] == "running"
    })
    .await;
    let (leader, standby) = if holder == a.identity {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(leader.metric("mongoferry_operator_leader").await, Some(1.0));
    assert_eq!(
        standby.metric("mongoferry_operator_leader").await,
        Some(0.0)
    );
    assert_eq!(
        standby.metric("mongoferry_operator_reconciles_total").await,
        Some(0.0),
        "the standby reconciled"
    );
    leader.kill();
    let t = Instant::now();
    let standby_id = standby.identity.clone();
    wait_for(
        "the standby holds the lease",
        Duration::from_secs(15),
        || {
            kc.get("lease", "mongoferry-operator")
                .filter(|l| l["spec"]["holderIdentity"] == standby_id.as_str())
        },
    )
    .await;
    loop {
        if standby
            .metric("mongoferry_operator_reconciles_total")
            .await
            .unwrap_or(0.0)
            > 0.0
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the standby did not take over"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = t.elapsed();
    println!("ACCEPTANCE 7: takeover in {:.1}s", took.as_secs_f64());
    assert!(took <= Duration::from_secs(15));
}

/// Acceptance 8: wrong password → Failed with a clear message, an Event, no hot loop, the
/// password nowhere; then the Secret fixed → the worker restarts and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_cleanly() {
    let (cp, kc) = start_cp();
    let (src, dst) = (server().await, server().await);
    let op = Operator::start(&cp, "op-a", false);
    create_secrets(&kc, WRONG_PASSWORD);
    kc.apply(&job_yaml("mig", &src, &dst, ""))
        .expect("apply job");
    let (_, failed) = wait_condition(&kc, "mig", "Failed", "True", Duration::from_secs(120)).await;
    let msg = failed.message;
    println!("Failed: {msg}");
    assert!(
        msg.contains("authentication") && msg.contains("source"),
        "{msg}"
    );
    let r0 = op
        .metric("mongoferry_operator_reconciles_total")
        .await
        .unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let r1 = op
        .metric("mongoferry_operator_reconciles_total")
        .await
        .unwrap_or(0.0);
    println!("reconciles in 20 s while failed: {}", r1 - r0);
    assert!(r1 - r0 <= 12.0, "hot loop: {} reconciles in 20 s", r1 - r0);
    let events = kc.ok(&["get", "events.events.k8s.io", "-o", "json"]);
    assert!(
        events.contains("Warning") && events.contains("authentication"),
        "no Warning event:\n{events}"
    );
    let everything = [
        kc.ok(&["get", "mj", "mig", "-o", "yaml"]),
        events,
        op.log(),
        cp.pod_log("default", "mig-worker", "worker"),
    ];
    for text in &everything {
        assert!(
            !text.contains(WRONG_PASSWORD) && !text.contains(PASSWORD),
            "password leaked:\n{text}"
        );
    }
    println!("ACCEPTANCE 8: Failed + Event + backoff, no password in status, events, logs");

    // Rotation: the fixed Secret restarts the worker, which then runs.
    let uid = kc.get("pod", "mig-worker").expect("pod")["metadata"]["uid"].clone();
    kc.apply(&secret_yaml("source-credentials", PASSWORD))
        .expect("rotate");
    wait_job(
        &kc,
        "mig",
        "running after rotation",
        Duration::from_secs(120),
        |j| {
            j["status"]["state"] == "running"
                && condition(j, "Failed").is_some_and(|c| c.status == "False")
        },
    )
    .await;
    assert_ne!(
        kc.get("pod", "mig-worker").expect("pod")["metadata"]["uid"],
        uid
    );
    println!("credentials rotation replaced the worker pod");
}

/// Acceptance 1 with the shipped examples: `kubectl apply -f deploy/examples/migrationjob.yaml`
/// (its URIs, users and passwords pointed at the test servers) runs a worker that copies and
/// replicates; the filtered example passes the API server's validation as shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_examples_apply_and_run() {
    let (cp, kc, src, dst) = seeded().await;
    let _op = Operator::start(&cp, "op-examples", false);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let filtered = examples.join("migrationjob-filtered.yaml");
    let out = kc.ok(&[
        "apply",
        "--dry-run=server",
        "-f",
        &filtered.display().to_string(),
    ]);
    println!("{out}");
    let text = std::fs::read_to_string(examples.join("migrationjob.yaml")).expect("example");
    let mut lines = Vec::new();
    for l in text.lines() {
        let l = if l.trim_start().starts_with("uri: mongodb://old-db") {
            format!("    uri: mongodb://{}/?authSource=admin", src.host())
        } else if l.trim_start().starts_with("uri: mongodb://new-db") {
            format!("    uri: mongodb://{}/?authSource=admin", dst.host())
        } else if l.contains("change-me-") {
            format!("  password: {PASSWORD:?}")
        } else if l.trim() == "username: migrator" {
            "  username: ferry".to_string()
        } else if l.trim() == "blockSourceWrites: true" {
            // The test servers lack setUserWriteBlockMode (docs/known-differences.md).
            "    blockSourceWrites: false".to_string()
        } else {
            l.to_string()
        };
        lines.push(l);
    }
    kc.apply(&(lines.join("\n") + "\n"))
        .expect("apply the example");
    let name = "orders-migration";
    let j = wait_job(&kc, name, "replicating", Duration::from_secs(300), |j| {
        j["status"]["phase"] == "replicating" && j["status"]["replication"]["caughtUp"] == true
    })
    .await;
    println!(
        "example job: copy {} replication {}",
        j["status"]["copy"], j["status"]["replication"]
    );
    let table = kc.ok(&["get", "mj"]);
    println!("{table}");
    assert!(
        table.contains(name) && table.contains("PROGRESS") && table.contains("100%"),
        "{table}"
    );
    assert!(
        kc.get("pod", &format!("{name}-worker")).is_some(),
        "no worker pod"
    );
    println!("ACCEPTANCE 1: the shipped example runs a worker that copies and replicates");
}

/// Issue 9, acceptance 5: a MigrationJob whose preflight fails shows `PreflightPassed=False`
/// with the failing check and its fix, keeps the full report in status, starts nothing and
/// does not hammer the worker; the option the report names (`dropTargetNamespaces`) lets it
/// start at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_preflight_shows_condition_and_starts_nothing() {
    let (cp, kc, src, dst) = seeded().await;
    let target = dst.client();
    let planted = target
        .database("shop")
        .collection::<mongodb::bson::Document>("orders");
    planted
        .insert_one(doc! {"_id": "left-over", "note": "from an earlier attempt"})
        .await
        .expect("plant");
    let _op = Operator::start(&cp, "op-preflight", false);
    create_secrets(&kc, PASSWORD);
    kc.apply(&job_yaml("mig", &src, &dst, ""))
        .expect("apply job");
    let (j, preflight) = wait_condition(
        &kc,
        "mig",
        "PreflightPassed",
        "False",
        Duration::from_secs(120),
    )
    .await;
    let msg = preflight.message;
    println!("PreflightPassed=False: {msg}");
    assert!(
        msg.contains("target.namespaces") && msg.contains("shop.orders"),
        "{msg}"
    );
    assert!(msg.contains("fix:"), "the fix is named: {msg}");
    assert_eq!(j["status"]["state"], "idle", "nothing started");
    assert_eq!(j["status"]["preflight"]["passed"], false);
    let checks = j["status"]["preflight"]["checks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(checks.len() >= 10, "full report in status: {checks:?}");
    assert!(checks
        .iter()
        .any(|c| c["name"] == "target.namespaces" && c["status"] == "fail"));
    let reason = j["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PreflightPassed"))
        .map(|c| c["reason"].clone());
    assert_eq!(reason, Some(Value::from("ChecksFailed")));

    // Nothing was copied, and the start is not retried in a hot loop.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(planted.count_documents(doc! {}).await.expect("count"), 1);
    let names = target
        .database("shop")
        .list_collection_names()
        .await
        .expect("list");
    assert_eq!(names, vec!["orders".to_string()], "nothing copied");
    let j = kc.get("mj", "mig").expect("job");
    assert_eq!(j["status"]["state"], "idle");
    let events = kc.ok(&["get", "events.events.k8s.io", "-o", "json"]);
    let refusals = events.matches("\"PreflightFailed\"").count();
    assert!(refusals >= 1, "a PreflightFailed Event:\n{events}");
    println!("PreflightFailed events after 10 s: {refusals}");

    // The option the report names lets the start through.
    let t = Instant::now();
    kc.ok(&[
        "patch",
        "mj",
        "mig",
        "--type=merge",
        "-p",
        r#"{"spec":{"dropTargetNamespaces":true}}"#,
    ]);
    wait_job(
        &kc,
        "mig",
        "PreflightPassed=True, running",
        Duration::from_secs(60),
        |j| {
            condition(j, "PreflightPassed").is_some_and(|c| c.status == "True")
                && j["status"]["state"] == "running"
        },
    )
    .await;
    println!("started {:.1}s after the patch", t.elapsed().as_secs_f64());
    wait_job(&kc, "mig", "copy complete", Duration::from_secs(120), |j| {
        j["status"]["copy"]["completed"] == true
    })
    .await;
    assert_eq!(
        planted
            .count_documents(doc! {"_id": "left-over"})
            .await
            .expect("count"),
        0
    );
    assert_eq!(planted.count_documents(doc! {}).await.expect("count"), 3000);
    println!("ISSUE 9 ACCEPTANCE 5: PreflightPassed=False with the reason, nothing started; dropTargetNamespaces then started it");
}

/// The worker API token of job `name`, from its Secret.
fn api_token(kc: &Kubectl, name: &str) -> String {
    kc.ok(&[
        "get",
        "secret",
        &format!("{name}-api-token"),
        "-o",
        "go-template={{.data.token | base64decode}}",
    ])
    .trim()
    .to_string()
}

/// A metric of job `name`'s worker, read from its `/metrics` at the pod's IP.
async fn worker_metric(kc: &Kubectl, name: &str, metric: &str) -> f64 {
    let pod = kc
        .get("pod", &format!("{name}-worker"))
        .expect("worker pod");
    let ip = pod["status"]["podIP"].as_str().expect("pod IP").to_string();
    let text = reqwest::Client::new()
        .get(format!("http://{ip}:2242/metrics"))
        .bearer_auth(api_token(kc, name))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == metric).then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("{metric} missing in /metrics of {name}:\n{text}"))
}

/// Issue 14, acceptance 3: a second MigrationJob on the target of a running one gets
/// Failed=True with reason TargetInUse and a message naming the first job; Ready=False
/// carries the message, Progressing=False, one Warning Event. It never copies nor replicates,
/// even while the first job's worker pod is deleted and recreated 5 times; the first job's
/// data stays equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_job_on_a_used_target_fails_with_target_in_use() {
    let (cp, kc, src, dst) = seeded().await;
    let _op = Operator::start(&cp, "op-a", false);
    create_secrets(&kc, PASSWORD);
    kc.apply(&job_yaml("first", &src, &dst, ""))
        .expect("apply first");
    wait_job(
        &kc,
        "first",
        "first replicating",
        Duration::from_secs(300),
        |j| j["status"]["phase"] == "replicating" && j["status"]["replication"]["caughtUp"] == true,
    )
    .await;
    let first_uid = kc.get("mj", "first").expect("first")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let wl = Workload::spawn(src.client(), workload());

    kc.apply(&job_yaml("second", &src, &dst, ""))
        .expect("apply second");
    let (j, failed) =
        wait_condition(&kc, "second", "Failed", "True", Duration::from_secs(120)).await;
    println!("second: Failed {} {}", failed.reason, failed.message);
    assert_eq!(failed.reason, "TargetInUse", "{}", j["status"]);
    assert!(
        failed.message.contains("first") && failed.message.contains(&first_uid),
        "the message names the owning job and its uid: {}",
        failed.message
    );
    let ready = condition(&j, "Ready").expect("Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.message, failed.message, "Ready carries the message");
    assert_eq!(
        condition(&j, "Progressing").expect("Progressing").status,
        "False"
    );
    assert_eq!(j["status"]["message"], failed.message.as_str());

    // The first job's worker pod is deleted and recreated 5 times: the second job never
    // takes the target over.
    let second_stays_refused = |j: &Value| {
        condition(j, "Failed").is_some_and(|c| c.status == "True" && c.reason == "TargetInUse")
            && j["status"]["state"] != "running"
    };
    for round in 1..=5 {
        let uid = kc.get("pod", "first-worker").expect("first pod")["metadata"]["uid"].clone();
        kc.ok(&["delete", "pod", "first-worker", "--wait=false"]);
        wait_for_or(
            &format!("first's worker pod recreated ({round}/5)"),
            Duration::from_secs(120),
            || {
                if let Some(j) = kc.get("mj", "second") {
                    assert!(second_stays_refused(&j), "round {round}: {}", j["status"]);
                }
                kc.get("pod", "first-worker")
                    .filter(|p| p["metadata"]["uid"] != uid && p["status"]["phase"] == "Running")
            },
            || job_status(&kc, "second"),
        )
        .await;
        wait_job(
            &kc,
            "first",
            &format!("first running again ({round}/5)"),
            Duration::from_secs(120),
            |j| j["status"]["state"] == "running",
        )
        .await;
        let j = kc.get("mj", "second").expect("second");
        assert!(second_stays_refused(&j), "round {round}: {}", j["status"]);
    }
    println!(
        "ISSUE 14 ACCEPTANCE 3: second stayed TargetInUse through 5 recreations of first's worker"
    );

    // The second's worker wrote nothing; it was never started; one TargetInUse Event.
    assert_eq!(
        worker_metric(&kc, "second", "mongoferry_copy_insert_documents_total").await,
        0.0
    );
    assert_eq!(
        worker_metric(&kc, "second", "mongoferry_events_applied_total").await,
        0.0
    );
    let events: Value =
        serde_json::from_str(&kc.ok(&["get", "events.events.k8s.io", "-o", "json"]))
            .expect("events json");
    let of_second: Vec<&Value> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["regarding"]["name"] == "second")
        .collect();
    let reasons: Vec<&str> = of_second
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    println!("events of second: {reasons:?}");
    assert!(
        !reasons.contains(&"MigrationStarted") && !reasons.contains(&"ResumeRequested"),
        "{reasons:?}"
    );
    let in_use: Vec<&&Value> = of_second
        .iter()
        .filter(|e| e["reason"] == "TargetInUse")
        .collect();
    assert_eq!(in_use.len(), 1, "{in_use:?}");
    assert_eq!(in_use[0]["type"], "Warning");
    assert!(
        in_use[0]["series"].is_null(),
        "published once, not on every reconcile: {}",
        in_use[0]
    );
    assert!(
        of_second.iter().all(|e| !e["note"]
            .as_str()
            .unwrap_or("")
            .contains("still connecting")),
        "no misleading \"still connecting\" Event: {of_second:?}"
    );

    // The first job's data equals the source.
    wl.stop().await;
    wait_job(
        &kc,
        "first",
        "first caught up",
        Duration::from_secs(120),
        |j| {
            j["status"]["replication"]["lagSeconds"]
                .as_i64()
                .is_some_and(|l| l <= 2)
        },
    )
    .await;
    kc.finalize(None, "first", Duration::from_secs(300));
    assert_same(&src.client(), &dst.client(), CompareOptions::default()).await;
    let j = kc.get("mj", "second").expect("second");
    assert_eq!(
        condition(&j, "Failed").map(|c| c.reason).as_deref(),
        Some("TargetInUse"),
        "{}",
        j["status"]
    );
    println!("ISSUE 14 ACCEPTANCE 3: first finalized equal to the source; second never wrote");
}

/// A reverse MigrationJob (`spec.reverseOf`) of job `of`.
fn reverse_yaml(name: &str, of: &str, extra: &str) -> String {
    format!(
        "apiVersion: mongoferry.io/v1alpha1\nkind: MigrationJob\nmetadata:\n  name: {name}\nspec:\n  reverseOf: {{name: {of}}}\n{extra}"
    )
}

/// Writes on the new cluster after the cutover: inserts, updates, deletes, a collection
/// created and one renamed.
async fn write_after_cutover(c: &Client) {
    let db = c.database("shop");
    let orders = db.collection::<mongodb::bson::Document>("orders");
    orders
        .insert_many((0..200).map(|i| doc! {"_id": format!("after-{i}"), "v": i}))
        .await
        .expect("insert");
    orders
        .update_many(
            doc! {"_id": {"$in": ["after-1", "after-2"]}},
            doc! {"$set": {"touched": true}},
        )
        .await
        .expect("update");
    orders
        .delete_many(doc! {"_id": {"$in": ["after-3", "after-4", "after-5"]}})
        .await
        .expect("delete");
    db.create_collection("created").await.expect("create");
    db.collection::<mongodb::bson::Document>("created")
        .insert_many((0..50).map(|i| doc! {"_id": i}))
        .await
        .expect("insert into the created collection");
    c.database("admin")
        .run_command(doc! {"renameCollection": "shop.customers", "to": "shop.clients"})
        .await
        .expect("rename");
}

/// Issue 17 through the operator: migrate and finalize, write on the new cluster, then
/// `kubectl apply` a reverse MigrationJob: it replicates those writes back onto the old
/// source (direction reverse, its own lag), and `kubectl wait --for=condition=Finalized` on
/// it ends with a verification of 0 mismatches. The migration stays Finalized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_through_the_operator() {
    let t0 = Instant::now();
    let (cp, kc, src, dst) = seeded().await;
    let op = Operator::start(&cp, "op-rev", false);
    create_secrets(&kc, PASSWORD);
    kc.apply(&job_yaml("mig", &src, &dst, ""))
        .expect("apply job");
    wait_job(&kc, "mig", "replicating", Duration::from_secs(300), |j| {
        j["status"]["phase"] == "replicating" && j["status"]["replication"]["caughtUp"] == true
    })
    .await;
    kc.finalize(None, "mig", Duration::from_secs(300));
    let mig = kc.get("mj", "mig").expect("job");
    assert_eq!(mig["status"]["direction"], "forward");
    assert!(
        mig["status"]["finalization"]["reverseStartPoint"].is_string(),
        "{}",
        mig["status"]
    );
    let (old, new) = (src.client(), dst.client());
    write_after_cutover(&new).await;

    kc.apply(&reverse_yaml("back", "mig", ""))
        .expect("apply reverse");
    let t = Instant::now();
    let j = wait_for_or(
        "reverse replicating",
        Duration::from_secs(180),
        || {
            kc.get("mj", "back").filter(|j| {
                j["status"]["direction"] == "reverse"
                    && j["status"]["state"] == "running"
                    && j["status"]["phase"] == "replicating"
                    && j["status"]["replication"]["lagSeconds"].is_i64()
            })
        },
        || {
            format!(
                "{}{}\noperator log tail:\n{}",
                job_status(&kc, "back"),
                job_status(&kc, "mig"),
                tail(&op.log(), 30)
            )
        },
    )
    .await;
    println!(
        "reverse replicating {:.1}s after apply: {}",
        t.elapsed().as_secs_f64(),
        j["status"]["replication"]
    );
    let table = kc.ok(&["get", "mj"]);
    println!("{table}");
    assert!(
        table.contains("DIRECTION") && table.contains("reverse"),
        "{table}"
    );
    assert!(
        kc.get("pod", "mig-worker").is_none(),
        "the migration's worker handed over"
    );
    let opts = CompareOptions {
        relaxed_indexes: true,
        ..Default::default()
    };
    mongoferry_e2e::compare::assert_converges(&new, &old, opts, Duration::from_secs(60)).await;
    println!("the old source equals the new cluster (indexes relaxed)");

    // The reverse's worker pod deleted: the new one comes back in the reverse (it is not asked
    // to begin another) and goes on from its checkpoint.
    let before = events_applied(&kc.get("mj", "back").expect("reverse"));
    let old_uid = kc.get("pod", "back-worker").expect("pod")["metadata"]["uid"].clone();
    kc.ok(&["delete", "pod", "back-worker", "--wait=false"]);
    new.database("shop")
        .collection::<mongodb::bson::Document>("orders")
        .insert_many((0..20).map(|i| doc! {"_id": format!("after-restart-{i}")}))
        .await
        .expect("insert");
    wait_for_or(
        "a new reverse worker pod, replicating again",
        Duration::from_secs(180),
        || {
            let pod = kc.get("pod", "back-worker")?;
            let j = kc.get("mj", "back")?;
            (pod["metadata"]["uid"] != old_uid
                && j["status"]["direction"] == "reverse"
                && j["status"]["state"] == "running"
                && events_applied(&j) > before)
                .then_some(())
        },
        || job_status(&kc, "back"),
    )
    .await;
    let events = kc.ok(&["get", "events.events.k8s.io", "-o", "json"]);
    assert_eq!(
        events.matches("\"reason\": \"ReverseStarted\"").count(),
        1,
        "one reverse begun:\n{events}"
    );
    assert!(
        !events.contains("\"note\": \"reverse: "),
        "no reverse refused: {events}"
    );
    println!("the reverse's worker restarted and came back in the reverse");

    kc.finalize(None, "back", Duration::from_secs(300));
    let back = kc.get("mj", "back").expect("reverse");
    assert_eq!(back["status"]["direction"], "reverse");
    assert_eq!(
        back["status"]["finalization"]["verification"]["mismatchCount"], 0,
        "{}",
        back["status"]
    );
    assert_same(&new, &old, CompareOptions::default()).await;
    let fin = condition(&back, "Finalized").expect("Finalized");
    println!("reverse Finalized: {}", fin.message);
    let mig = kc.get("mj", "mig").expect("job");
    assert!(
        condition(&mig, "Finalized").is_some_and(|c| c.is_true()),
        "the migration stays finalized: {}",
        mig["status"]
    );
    println!(
        "ISSUE 17 (operator): reverse finalized with 0 mismatches in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

/// A reverse of a job that is not finalized waits, saying why and what to do (Ready=False,
/// reason ReverseOfNotFinalized, and a Warning Event); it starts on its own once the job is
/// finalized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_of_an_unfinalized_job_waits_for_it() {
    let (cp, kc, src, dst) = seeded().await;
    let _op = Operator::start(&cp, "op-rev-wait", false);
    create_secrets(&kc, PASSWORD);
    kc.apply(&job_yaml("mig", &src, &dst, ""))
        .expect("apply job");
    kc.apply(&reverse_yaml("back", "mig", ""))
        .expect("apply reverse");
    let (j, ready) = wait_condition(&kc, "back", "Ready", "False", Duration::from_secs(60)).await;
    let ready = if ready.reason == "ReverseOfNotFinalized" {
        ready
    } else {
        wait_job(
            &kc,
            "back",
            "ReverseOfNotFinalized",
            Duration::from_secs(60),
            |j| condition(j, "Ready").is_some_and(|c| c.reason == "ReverseOfNotFinalized"),
        )
        .await;
        condition(&kc.get("mj", "back").expect("reverse"), "Ready").expect("Ready")
    };
    println!("Ready=False {}: {}", ready.reason, ready.message);
    assert!(
        ready
            .message
            .contains("MigrationJob default/mig is not finalized")
            && ready.message.contains("desiredState to finalized"),
        "{}",
        ready.message
    );
    assert_eq!(j["status"]["direction"], "reverse");
    assert!(
        kc.get("pod", "back-worker").is_none(),
        "no worker while it waits"
    );
    let events = kc.ok(&["get", "events.events.k8s.io", "-o", "json"]);
    assert!(
        events.contains("\"ReverseOfNotFinalized\""),
        "a ReverseOfNotFinalized Event:\n{events}"
    );

    wait_job(&kc, "mig", "replicating", Duration::from_secs(300), |j| {
        j["status"]["phase"] == "replicating" && j["status"]["replication"]["caughtUp"] == true
    })
    .await;
    kc.finalize(None, "mig", Duration::from_secs(300));
    let t = Instant::now();
    wait_job(
        &kc,
        "back",
        "reverse running",
        Duration::from_secs(180),
        |j| j["status"]["direction"] == "reverse" && j["status"]["state"] == "running",
    )
    .await;
    println!(
        "the reverse started {:.1}s after the migration was finalized",
        t.elapsed().as_secs_f64()
    );
}
