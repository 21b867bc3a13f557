//! End-to-end tests of the Helm chart (issue 6) with Helm built from its Go module
//! (e2e/scripts/install-helm.sh) and the real test control plane (kube-apiserver 1.33 with
//! RBAC + etcd + controllers + pod runner). Installed by `helm install`, the operator runs as
//! the chart's Deployment: its pods run the freshly built binary for the image `mongoferry`,
//! authenticated with the chart's ServiceAccount token, so the chart's RBAC is enforced.
//!
//! `cargo build --workspace --bins && cargo test -p mongoferry-e2e --test chart -- --test-threads=1`

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mongoferry_e2e::compare::{assert_same, CompareOptions};
use mongoferry_e2e::controlplane::ControlPlane;
use mongoferry_e2e::fixtures::{self, credentials_secret_yaml};
use mongoferry_e2e::kubectl::{condition, repo_root as root, Kubectl, CHART_CRD};
use mongoferry_e2e::servers::User;
use mongoferry_e2e::wait::wait_for;
use mongoferry_e2e::worker::binary;
use mongoferry_e2e::workload::{seed_dataset, SeedSpec, Workload, WorkloadConfig};
use serde_json::Value;

const PASSWORD: &str = "Ch4rt-Pa55-quux";
const RELEASE: &str = "mf";
const RELEASE_NS: &str = "mongoferry-system";
/// Where the MigrationJob lives: not the release namespace, so the Role, the worker
/// ServiceAccount and the worker NetworkPolicy must land in a watched namespace of their own.
const JOBS_NS: &str = "migrations";
/// `<release>-<chart>`.
const FULLNAME: &str = "mf-mongoferry";

fn chart_dir() -> String {
    root().join("charts/mongoferry").display().to_string()
}

/// Helm from its Go module, built once (cached in .tools/).
fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let t = Instant::now();
        let out = Command::new(root().join("e2e/scripts/install-helm.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run install-helm.sh");
        assert!(out.status.success(), "install-helm.sh failed");
        let path = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("helm path")
            .trim()
            .to_string();
        println!("helm: {path} ({:.1}s)", t.elapsed().as_secs_f64());
        PathBuf::from(path)
    })
}

/// Helm with its own cache/config/data directories and, given a control plane, its
/// kubeconfig.
fn helm(cp: Option<&ControlPlane>, args: &[&str]) -> Output {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    let mut cmd = Command::new(helm_bin());
    cmd.args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("HELM_NAMESPACE");
    match cp {
        Some(cp) => cmd.env("KUBECONFIG", &cp.kubeconfig),
        None => cmd.env("KUBECONFIG", home.join("no-cluster")),
    };
    cmd.output().expect("run helm")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn helm_ok(cp: Option<&ControlPlane>, args: &[&str]) -> String {
    let o = helm(cp, args);
    assert!(o.status.success(), "helm {args:?} failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Whether every `key: value` of a label selector is among the pod's labels.
fn selects(match_labels: &Value, pod: &Value) -> bool {
    let labels = &pod["metadata"]["labels"];
    match_labels
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

/// Non-root, read-only root filesystem, nothing extra, at pod and container level.
fn assert_hardened(pod: &Value) {
    let name = pod["metadata"]["name"].as_str().unwrap_or("?");
    let psc = &pod["spec"]["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{name}: pod runAsNonRoot");
    assert_eq!(psc["runAsUser"], 65532, "{name}: pod runAsUser");
    assert_eq!(
        psc["seccompProfile"]["type"], "RuntimeDefault",
        "{name}: seccomp"
    );
    for c in pod["spec"]["containers"].as_array().expect("containers") {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}: runAsNonRoot");
        assert_eq!(sc["runAsUser"], 65532, "{name}: runAsUser");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}: read-only root");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}: escalation");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}: capabilities"
        );
    }
}

/// (a) `helm lint --strict` is clean, with the defaults and with the optional parts on.
#[test]
fn lint_is_clean() {
    let chart = chart_dir();
    for set in [
        None,
        Some("watchAllNamespaces=true,networkPolicy.workerNamespaces={a,b}"),
        Some("metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,dashboards.configMap.enabled=true"),
        Some("replicaCount=1,leaderElection.enabled=false,networkPolicy.enabled=false,tests.enabled=false"),
    ] {
        let mut args = vec!["lint", "--strict", &chart];
        if let Some(s) = set {
            args.extend(["--set", s]);
        }
        let out = helm_ok(None, &args);
        assert!(
            out.contains("0 chart(s) failed") && !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint {set:?}:\n{out}"
        );
    }
    println!("helm lint --strict: clean (4 value sets)");
}

/// (c) values.schema.json refuses bad values with Helm's error, naming the value.
#[test]
fn schema_refuses_bad_values() {
    let chart = chart_dir();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "replicaCount=0"],
            "at '/replicaCount': minimum: got 0, want 1",
        ),
        (
            &["--set", "replicaCount=two"],
            "at '/replicaCount': got string, want integer",
        ),
        (
            &["--set", "replicaCaunt=2"],
            "additional properties 'replicaCaunt' not allowed",
        ),
        (
            &["--set", "image.pulPolicy=Always"],
            "additional properties 'pulPolicy' not allowed",
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "at '/image/pullPolicy': value must be one of",
        ),
        (
            &["--set", "logLevel=verbose"],
            "at '/logLevel': value must be one of",
        ),
        (
            &["--set", "logFormat=xml"],
            "at '/logFormat': value must be one of",
        ),
        (
            &["--set", "metrics.port=70000"],
            "at '/metrics/port': maximum",
        ),
        (
            &["--set", "watchNamespaces={Shop_1}"],
            "at '/watchNamespaces/0'",
        ),
        (
            &["--set", "replicaCount=3,leaderElection.enabled=false"],
            "at '/leaderElection/enabled': value must be true",
        ),
    ];
    for (args, msg) in cases {
        let mut a = vec!["template", "t", chart.as_str()];
        a.extend_from_slice(args);
        let o = helm(None, &a);
        let out = text(&o);
        assert!(!o.status.success(), "accepted {args:?}:\n{out}");
        assert!(
            out.contains("values don't meet the specifications of the schema(s)")
                && out.contains(msg),
            "expected {msg:?} for {args:?}, got:\n{out}"
        );
    }
    // And the defaults and a few valid choices pass.
    helm_ok(None, &["template", "t", &chart]);
    helm_ok(
        None,
        &[
            "template",
            "t",
            &chart,
            "--set",
            "replicaCount=1,leaderElection.enabled=false,watchNamespaces={a,b}",
        ],
    );
    println!("values.schema.json refused {} bad value sets", cases.len());
}

/// deploy/mongoferry.yaml is the chart rendered by e2e/scripts/render-manifests.sh.
#[test]
fn plain_manifests_match_the_chart() {
    let out = Command::new(root().join("e2e/scripts/render-manifests.sh"))
        .arg("--stdout")
        .env("HELM", helm_bin())
        .output()
        .expect("render-manifests.sh");
    assert!(out.status.success(), "{}", text(&out));
    let rendered = String::from_utf8_lossy(&out.stdout);
    let checked_in =
        std::fs::read_to_string(root().join("deploy/mongoferry.yaml")).unwrap_or_default();
    assert!(
        rendered == checked_in,
        "deploy/mongoferry.yaml differs from the chart: run e2e/scripts/render-manifests.sh"
    );
    println!("deploy/mongoferry.yaml matches the chart");
}

/// (b) Every template, for several value sets, passes the API server's validation
/// (`kubectl apply --dry-run=server`), and so do the plain manifests.
#[test]
fn rendered_chart_passes_server_dry_run() {
    let cp = ControlPlane::start(&binary()).expect("control plane");
    let kc = Kubectl::new(&cp);
    kc.install_crd(CHART_CRD);
    for ns in [RELEASE_NS, "a", "b"] {
        kc.ok(&["create", "namespace", ns]);
    }
    let chart = chart_dir();
    // (values, objects rendered): the defaults; two watched namespaces (a Role, worker
    // ServiceAccount and worker NetworkPolicy each) with the dashboard ConfigMap;
    // cluster-wide; one replica without leader election (no Lease Role).
    let sets = [
        (None, 10),
        (
            Some("watchNamespaces={a,b},dashboards.configMap.enabled=true"),
            15,
        ),
        (
            Some("watchAllNamespaces=true,networkPolicy.workerNamespaces={a},worker.serviceAccount.name=ferry-worker"),
            9,
        ),
        (
            Some("replicaCount=1,leaderElection.enabled=false,networkPolicy.metricsFrom=null,logFormat=json"),
            8,
        ),
    ];
    for (i, (set, objects)) in sets.iter().enumerate() {
        // The test Pod is a hook that Helm creates after the release's objects: admission
        // refuses a Pod whose ServiceAccount does not exist yet, so it is checked below.
        let mut args = vec![
            "template",
            RELEASE,
            chart.as_str(),
            "--namespace",
            RELEASE_NS,
            "--skip-tests",
        ];
        if let Some(s) = set {
            args.extend(["--set", s]);
        }
        let yaml = helm_ok(None, &args);
        let path = kc.write_manifest(&format!("rendered-{i}.yaml"), &yaml);
        let out = kc
            .run(&["apply", "--dry-run=server", "-f", &path])
            .unwrap_or_else(|e| panic!("server dry-run of {set:?} failed:\n{e}\n{yaml}"));
        let created = out
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        println!("dry-run=server {set:?}: {created} objects");
        assert_eq!(created, *objects, "{out}");
    }
    // The `helm test` Pod, once the release's ServiceAccount exists (as Helm orders it).
    let yaml = helm_ok(
        None,
        &[
            "template",
            RELEASE,
            &chart,
            "--namespace",
            RELEASE_NS,
            "--show-only",
            "templates/serviceaccount.yaml",
        ],
    );
    kc.ok(&["apply", "-f", &kc.write_manifest("sa.yaml", &yaml)]);
    let yaml = helm_ok(
        None,
        &[
            "template",
            RELEASE,
            &chart,
            "--namespace",
            RELEASE_NS,
            "--show-only",
            "templates/tests/check.yaml",
        ],
    );
    let out = kc
        .run(&[
            "apply",
            "--dry-run=server",
            "-f",
            &kc.write_manifest("test-pod.yaml", &yaml),
        ])
        .unwrap_or_else(|e| panic!("server dry-run of the test Pod failed:\n{e}\n{yaml}"));
    assert!(
        out.contains("pod/mf-mongoferry-check created (server dry run)"),
        "{out}"
    );
    // The monitors need prometheus-operator's CRDs (absent here): they render and are the
    // right kinds.
    let yaml = helm_ok(
        None,
        &[
            "template",
            RELEASE,
            &chart,
            "--namespace",
            RELEASE_NS,
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true",
        ],
    );
    assert!(yaml.contains("kind: ServiceMonitor") && yaml.contains("kind: PodMonitor"));
    assert!(yaml.contains("honorLabels: true"));
    let manifests = root().join("deploy/mongoferry.yaml").display().to_string();
    let out = kc
        .run(&["apply", "--dry-run=server", "-f", &manifests])
        .unwrap_or_else(|e| panic!("deploy/mongoferry.yaml:\n{e}"));
    println!("dry-run=server deploy/mongoferry.yaml:\n{out}");
}

/// (d)–(g): `helm install` (namespaced RBAC, two replicas, leader election), a MigrationJob
/// driven by the operator pods to Finalized with identical data, hardened operator and worker
/// pods, `helm test` passing (and failing without the Role), `helm uninstall` leaving no
/// operator pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_migrate_test_uninstall() {
    let started = Instant::now();
    let cp = ControlPlane::start(&binary()).expect("control plane");
    let kc = Kubectl::new(&cp);
    // Both namespaces enforce the `restricted` Pod Security Standard: the API server's
    // PodSecurity admission refuses operator, worker or test pods that are not hardened.
    for ns in [RELEASE_NS, JOBS_NS] {
        kc.ok(&["create", "namespace", ns]);
        kc.ok(&[
            "label",
            "namespace",
            ns,
            "pod-security.kubernetes.io/enforce=restricted",
        ]);
    }
    let refused = kc.run(&[
        "run",
        "plain",
        "-n",
        JOBS_NS,
        "--image=mongoferry",
        "--restart=Never",
        "--dry-run=server",
    ]);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("violates PodSecurity \"restricted:latest\"")),
        "PodSecurity admission is not enforced: {refused:?}"
    );
    let user = User::new("ferry", PASSWORD, &[("root", "admin")]);
    let (src, dst) = (
        fixtures::auth_server(vec![user.clone()]).await,
        fixtures::auth_server(vec![user.clone()]).await,
    );
    let mut seed = SeedSpec::new("shop", "orders", 2000);
    seed.batch_size = 500;
    seed_dataset(&src.client(), &seed).await.expect("seed");

    // (d) helm install. The default image (ghcr.io/mongoferry/mongoferry:<appVersion>) is
    // played by target/debug/mongoferry.
    let t = Instant::now();
    let out = helm_ok(
        Some(&cp),
        &[
            "install",
            RELEASE,
            &chart_dir(),
            "--namespace",
            RELEASE_NS,
            "--set",
            &format!("watchNamespaces={{{JOBS_NS}}}"),
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    println!("helm install --wait: {:.1}s", t.elapsed().as_secs_f64());
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains(&format!(
            "kubectl -n {JOBS_NS} apply -f deploy/examples/migrationjob.yaml"
        )),
        "NOTES.txt:\n{out}"
    );

    let operator_sel =
        format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator");
    let pods = wait_for("both operator pods Ready", Duration::from_secs(60), || {
        let pods = kc.list(RELEASE_NS, "pods", &operator_sel);
        (pods.len() == 2 && pods.iter().all(ready)).then_some(pods)
    })
    .await;
    let names: Vec<String> = pods
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for p in &pods {
        assert_eq!(
            p["spec"]["serviceAccountName"], FULLNAME,
            "operator pod's ServiceAccount"
        );
        assert_eq!(
            p["spec"]["containers"][0]["image"],
            "ghcr.io/mongoferry/mongoferry:0.1.0"
        );
        assert_hardened(p); // (e)
    }
    let holder = wait_for(
        "an operator pod holds the Lease",
        Duration::from_secs(30),
        || {
            kc.get_in(RELEASE_NS, "lease", FULLNAME)
                .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
                .filter(|h| names.contains(h))
        },
    )
    .await;
    println!("operator pods {names:?}, leader {holder}");

    // Namespaced RBAC only: the chart's ServiceAccount may act in the watched namespace and
    // nowhere else.
    let sa = format!("system:serviceaccount:{RELEASE_NS}:{FULLNAME}");
    let can = |verb: &str, res: &str, ns: &str| {
        let o = cp
            .kubectl(&["auth", "can-i", verb, res, "-n", ns, "--as", &sa])
            .expect("kubectl auth can-i");
        String::from_utf8_lossy(&o.stdout).trim() == "yes"
    };
    assert!(can("create", "pods", JOBS_NS));
    assert!(can("patch", "migrationjobs.mongoferry.io", JOBS_NS));
    assert!(!can("list", "migrationjobs.mongoferry.io", "default"));
    assert!(!can("list", "secrets", "default"));
    assert!(!can("create", "pods", RELEASE_NS));
    assert!(
        kc.ok(&["get", "clusterrolebindings", "-o", "name"])
            .lines()
            .all(|l| !l.contains(FULLNAME)),
        "a ClusterRoleBinding was created in namespaced mode"
    );
    println!("RBAC: namespaced to {JOBS_NS} (+ the Lease in {RELEASE_NS})");

    // A MigrationJob, run by the operator pods.
    let secret = |name: &str| credentials_secret_yaml(name, Some(JOBS_NS), "ferry", PASSWORD);
    let job = fixtures::job_yaml(
        "mig",
        Some(JOBS_NS),
        &src,
        &dst,
        "  finalize:\n    verify: full\n    # The test servers lack setUserWriteBlockMode (docs/known-differences.md).\n    blockSourceWrites: false\n",
    );
    let manifest = [
        secret("source-credentials"),
        secret("target-credentials"),
        job,
    ]
    .join("---\n");
    let path = kc.write_manifest("job.yaml", &manifest);
    kc.ok(&["apply", "-f", &path]);
    let worker = wait_for("worker pod running", Duration::from_secs(60), || {
        kc.get_in(JOBS_NS, "pod", "mig-worker")
            .filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    assert_eq!(
        worker["spec"]["serviceAccountName"],
        format!("{FULLNAME}-worker"),
        "worker pod's ServiceAccount"
    );
    assert_eq!(worker["spec"]["automountServiceAccountToken"], false);
    assert!(
        worker["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().all(|v| !v["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("kube-api-access"))),
        "the worker pod got an API token"
    );
    assert_hardened(&worker); // (e)
    println!("operator and worker pods: non-root, read-only root filesystem, admitted under PodSecurity restricted");

    // The NetworkPolicies and the metrics Service select the pods that really exist (the
    // pod runner does not enforce policies, so at least their selectors must be right).
    let np = kc
        .get_in(JOBS_NS, "networkpolicy", &format!("{FULLNAME}-workers"))
        .expect("worker NetworkPolicy in the watched namespace");
    assert!(selects(&np["spec"]["podSelector"]["matchLabels"], &worker));
    let from = &np["spec"]["ingress"][0]["from"][0];
    assert_eq!(
        from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        RELEASE_NS
    );
    assert!(pods
        .iter()
        .all(|p| selects(&from["podSelector"]["matchLabels"], p)));
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 2242);
    let np = kc
        .get_in(RELEASE_NS, "networkpolicy", &format!("{FULLNAME}-operator"))
        .expect("operator NetworkPolicy");
    assert!(pods
        .iter()
        .all(|p| selects(&np["spec"]["podSelector"]["matchLabels"], p)));
    let svc = kc
        .get_in(RELEASE_NS, "service", &format!("{FULLNAME}-metrics"))
        .expect("Service");
    assert!(pods.iter().all(|p| selects(&svc["spec"]["selector"], p)));
    assert!(!selects(&svc["spec"]["selector"], &worker));
    println!("NetworkPolicies and the metrics Service select the operator and worker pods");

    let wl = Workload::spawn(
        src.client(),
        WorkloadConfig {
            seed: 6,
            databases: vec!["shop".into()],
            ops_per_sec: Some(100),
            ..Default::default()
        },
    );
    let get_job = || kc.get_in(JOBS_NS, "mj", "mig");
    wait_for("replicating, caught up", Duration::from_secs(120), || {
        get_job().filter(|j| {
            j["status"]["phase"] == "replicating" && j["status"]["replication"]["caughtUp"] == true
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = wl.stop().await;
    println!("workload: {} ops", stats.total_ops());
    wait_for("lag ≤ 2 s", Duration::from_secs(60), || {
        get_job().filter(|j| {
            j["status"]["replication"]["lagSeconds"]
                .as_i64()
                .is_some_and(|l| l <= 2)
        })
    })
    .await;
    kc.finalize(Some(JOBS_NS), "mig", Duration::from_secs(180));
    let j = get_job().expect("job");
    assert_eq!(
        condition(&j, "Finalized").map(|c| c.status).as_deref(),
        Some("True")
    );
    assert_eq!(
        j["status"]["finalization"]["verification"]["mismatchCount"], 0,
        "{}",
        j["status"]
    );
    assert_same(&src.client(), &dst.client(), CompareOptions::default()).await;
    println!("MigrationJob Finalized by the chart's operator; comparator: no difference");

    // The leader's /metrics (pod IP, port 8080) has the series the dashboard uses.
    let leader_ip = pods
        .iter()
        .find(|p| p["metadata"]["name"] == holder.as_str())
        .and_then(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .expect("leader pod IP");
    let metrics = reqwest::get(format!("http://{leader_ip}:8080/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    for needle in [
        "mongoferry_operator_leader 1",
        "mongoferry_operator_job_state{migrationjob=\"mig\",namespace=\"migrations\",state=\"finalized\"} 1",
        "mongoferry_operator_job_copy_progress_ratio{migrationjob=\"mig\",namespace=\"migrations\"} 1",
        "mongoferry_operator_job_events_applied_total{migrationjob=\"mig\",namespace=\"migrations\"}",
        "mongoferry_operator_job_worker_restarts_total{migrationjob=\"mig\",namespace=\"migrations\"} 0",
        "mongoferry_operator_job_lag_seconds{migrationjob=\"mig\",namespace=\"migrations\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in /metrics:\n{metrics}");
    }
    println!("leader /metrics at {leader_ip}:8080 has the dashboard's job series");

    // (f) helm test: the check Pod, under the operator's ServiceAccount.
    let t = Instant::now();
    let out = helm_ok(
        Some(&cp),
        &[
            "test",
            RELEASE,
            "--namespace",
            RELEASE_NS,
            "--timeout",
            "90s",
        ],
    );
    println!("helm test: {:.1}s\n{out}", t.elapsed().as_secs_f64());
    assert!(out.contains("Phase:          Succeeded"), "{out}");

    // Delete the job while the operator can still stop its worker.
    kc.ok(&[
        "delete",
        "mj",
        "mig",
        "-n",
        JOBS_NS,
        "--wait=true",
        "--timeout=90s",
    ]);
    assert!(kc.get_in(JOBS_NS, "pod", "mig-worker").is_none());

    // The check is not vacuous: without the Role binding in the watched namespace it fails.
    kc.ok(&["delete", "rolebinding", FULLNAME, "-n", JOBS_NS]);
    let o = helm(
        Some(&cp),
        &[
            "test",
            RELEASE,
            "--namespace",
            RELEASE_NS,
            "--timeout",
            "90s",
        ],
    );
    assert!(
        !o.status.success(),
        "helm test passed without RBAC:\n{}",
        text(&o)
    );
    let log = cp.pod_log(RELEASE_NS, &format!("{FULLNAME}-check"), "check");
    println!("helm test without the RoleBinding fails:\n{log}");
    assert!(
        log.contains(&format!("FAIL list MigrationJobs in namespace {JOBS_NS}"))
            && log.contains(&format!("FAIL can create pods -n {JOBS_NS}")),
        "{log}"
    );

    // (g) helm uninstall: no operator pod is left.
    assert_eq!(kc.list(RELEASE_NS, "pods", &operator_sel).len(), 2);
    let t = Instant::now();
    helm_ok(
        Some(&cp),
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            RELEASE_NS,
            "--wait",
            "--timeout",
            "90s",
        ],
    );
    wait_for("no operator pods", Duration::from_secs(60), || {
        kc.list(RELEASE_NS, "pods", &operator_sel)
            .is_empty()
            .then_some(())
    })
    .await;
    println!("helm uninstall: {:.1}s", t.elapsed().as_secs_f64());
    assert!(kc.get_in(RELEASE_NS, "deployment", FULLNAME).is_none());
    println!(
        "whole install test: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
