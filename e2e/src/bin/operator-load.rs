//! `operator-load`: the operator's load on the API server with many MigrationJobs.
//!
//! ```sh
//! cargo build --release -p mongoferry-e2e --bin worker-standin
//! cargo run -p mongoferry-e2e --release --bin operator-load -- \
//!     [--jobs 200] [--window 60] [--operator-bin target/release/mongoferry] [--out DIR]
//! ```
//!
//! It starts the project's test control plane (kube-apiserver + etcd + controllers + pod
//! runner), a Secret `creds`, and `--jobs` MigrationJobs whose source and target credentials
//! are in that Secret and whose worker image is `mongoferry-standin`: the pod runner plays it
//! with `worker-standin`, which answers the worker API (`/start` → running, `/status`) and
//! moves no data. Once every job is `running`, it reads the API server's
//! `apiserver_request_total` (and the operator's reconcile counters and histogram) at the
//! start and end of a `--window` with the operator running, then again over a window with the
//! operator stopped (the control plane's own traffic: pod runner, controllers). The difference
//! is the operator's request rate by verb and resource as the API server counts it. The
//! operator's own count comes from its log: it runs with `RUST_LOG=warn,kube_client=debug` and
//! JSON logs, so kube-client logs every request it sends (`requesting`, with method and URL);
//! the requests logged within the window are tallied the same way. The reconcile p95 is
//! interpolated from the operator's `mongoferry_operator_reconcile_duration_seconds` buckets
//! over the window.
//!
//! Run it once per operator binary (`--operator-bin`) to compare two versions on one machine.
//! Writes `operator-load.json` and `operator-load.md` to `--out` (default
//! `target/operator-load`). Nothing is asserted: it measures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mongoferry_e2e::controlplane::ControlPlane;
use mongoferry_e2e::fixtures::{credentials_secret_yaml, Operator};
use mongoferry_e2e::kubectl::{repo_root, Kubectl, CRD};
use mongoferry_e2e::proc::cpu_secs;
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Opts {
    jobs: usize,
    window: Duration,
    operator_bin: PathBuf,
    out: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: operator-load [--jobs N] [--window SECONDS] [--operator-bin PATH] [--out DIR]"
    );
    std::process::exit(2)
}

/// A binary next to this one (same profile), e.g. `worker-standin`.
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn parse_args() -> Opts {
    let mut o = Opts {
        jobs: 200,
        window: Duration::from_secs(60),
        operator_bin: sibling("mongoferry"),
        out: repo_root().join("target/operator-load"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--jobs" => o.jobs = value().parse().unwrap_or_else(|_| usage()),
            "--window" => {
                o.window = Duration::from_secs(value().parse().unwrap_or_else(|_| usage()))
            }
            "--operator-bin" => o.operator_bin = PathBuf::from(value()),
            "--out" => o.out = PathBuf::from(value()),
            _ => usage(),
        }
    }
    o
}

/// `apiserver_request_total` by (verb, resource[/subresource]), summed over the other labels.
fn request_counts(kc: &Kubectl) -> Res<BTreeMap<(String, String), f64>> {
    let text = kc.run(&["get", "--raw", "/metrics"])?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let mut resource = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry((label("verb"), resource)).or_insert(0.0) += v;
    }
    Ok(out)
}

type Rates = BTreeMap<(String, String), f64>;

fn rates(before: &Rates, after: &Rates, secs: f64) -> Rates {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)) / secs,
            )
        })
        .filter(|(_, r)| *r > 0.0)
        .collect()
}

/// (verb, resource[/subresource]) of a request as the API server's metrics name them.
fn classify(method: &str, url: &str) -> (String, String) {
    // kube-client logs the full URL: drop the scheme and the host.
    let url = match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    };
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/GROUP/VERSION/...
    let rest = match segs.first() {
        Some(&"api") => segs.get(2..).unwrap_or_default(),
        _ => segs.get(3..).unwrap_or_default(),
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = rest.first().copied().unwrap_or("?").to_string();
    let named = rest.len() > 1;
    let resource = match rest.get(2) {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource,
    };
    let verb = match method {
        "GET" if query.contains("watch=true") => "WATCH",
        "GET" if !named => "LIST",
        m => m,
    };
    (verb.to_string(), resource)
}

/// The requests the operator logged (kube-client's `requesting`) in `log[from..]`.
fn logged_requests(log: &str, from: usize) -> Rates {
    let mut out = Rates::new();
    for line in log.get(from..).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["message"] != "requesting" && v["fields"]["message"] != "requesting" {
            continue;
        }
        let span = &v["span"];
        let (Some(method), Some(url)) = (span["http.method"].as_str(), span["http.url"].as_str())
        else {
            continue;
        };
        *out.entry(classify(method, url)).or_insert(0.0) += 1.0;
    }
    out
}

/// The operator's reconcile counter and duration histogram (cumulative buckets).
#[derive(Default, Clone)]
struct Reconciles {
    count: f64,
    buckets: Vec<(f64, f64)>,
}

async fn reconciles(op: &Operator) -> Reconciles {
    let text = op.metrics_text().await.unwrap_or_default();
    let mut r = Reconciles::default();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("mongoferry_operator_reconciles_total ") {
            r.count = v.trim().parse().unwrap_or(0.0);
        }
        if let Some(rest) =
            line.strip_prefix("mongoferry_operator_reconcile_duration_seconds_bucket{le=\"")
        {
            if let Some((le, v)) = rest.split_once("\"} ") {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                r.buckets.push((le, v.trim().parse().unwrap_or(0.0)));
            }
        }
    }
    r
}

/// The p-th percentile of the observations between two histogram readings, interpolated
/// linearly within its bucket.
fn histogram_percentile(before: &Reconciles, after: &Reconciles, p: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .map(|(le, v)| {
            let b = before
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, v)| *v);
            (*le, v - b)
        })
        .collect();
    let total = delta.last().map_or(0.0, |(_, v)| *v);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = p / 100.0 * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, cum) in delta {
        if cum >= rank {
            if le.is_infinite() {
                return lower;
            }
            let inside = cum - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return lower + (le - lower) * frac;
        }
        lower = le;
        below = cum;
    }
    lower
}

fn jobs_manifest(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: mongoferry.io/v1alpha1\nkind: MigrationJob\nmetadata:\n  name: load-{i:03}\n  namespace: default\nspec:\n  source:\n    uri: mongodb://source.invalid:27017/\n    credentialsSecretRef: {{name: creds}}\n  target:\n    uri: mongodb://target-{i:03}.invalid:27017/\n    credentialsSecretRef: {{name: creds}}\n  worker:\n    image: mongoferry-standin:dev\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// How many jobs report `running`.
fn running(kc: &Kubectl) -> usize {
    kc.run(&["get", "mj", "-o", "jsonpath={.items[*].status.state}"])
        .unwrap_or_default()
        .split_whitespace()
        .filter(|s| *s == "running")
        .count()
}

/// One row per (verb, resource): the API server's rate with and without the operator, their
/// difference, and the rate in the operator's own log.
fn table(with_operator: &Rates, background: &Rates, logged: &Rates) -> String {
    let mut keys: Vec<&(String, String)> = with_operator
        .keys()
        .chain(background.keys())
        .chain(logged.keys())
        .collect();
    keys.sort();
    keys.dedup();
    let mut md = String::from(
        "| verb | resource | API server, operator running (req/s) | API server, control plane alone (req/s) | difference (req/s) | operator's log (req/s) |\n|---|---|---|---|---|---|\n",
    );
    let rate = |r: &Rates, k: &(String, String)| r.get(k).copied().unwrap_or(0.0);
    // Two readings of one counter differ by rounding only: no "-0.00".
    let diff = |a: f64, b: f64| if (a - b).abs() < 0.005 { 0.0 } else { a - b };
    // 0.0 + …: an empty f64 sum is -0.0.
    let total = |r: &Rates| 0.0 + r.values().sum::<f64>();
    for k in keys {
        let (w, b, l) = (rate(with_operator, k), rate(background, k), rate(logged, k));
        md.push_str(&format!(
            "| {} | {} | {w:.2} | {b:.2} | {:.2} | {l:.2} |\n",
            k.0,
            k.1,
            diff(w, b)
        ));
    }
    let (w, b, l) = (total(with_operator), total(background), total(logged));
    md.push_str(&format!(
        "| **all** | | **{w:.2}** | {b:.2} | **{:.2}** | **{l:.2}** |\n",
        diff(w, b)
    ));
    md
}

async fn run(o: Opts) -> Res<()> {
    let standin = sibling("worker-standin");
    if !standin.is_file() {
        return Err(format!(
            "{} missing: cargo build -p mongoferry-e2e --bin worker-standin (same profile)",
            standin.display()
        )
        .into());
    }
    eprintln!("operator-load: starting the test control plane");
    let bin = o.operator_bin.clone();
    let sb = standin.clone();
    let cp = tokio::task::spawn_blocking(move || {
        ControlPlane::start_with_images(&bin, &[("mongoferry-standin", &sb)])
    })
    .await??;
    let kc = Kubectl::new(&cp);
    kc.install_crd(CRD);
    kc.apply(&credentials_secret_yaml(
        "creds",
        None,
        "ferry",
        "not-a-real-password",
    ))?;
    let env = [
        ("RUST_LOG", "warn,kube_client=debug"),
        ("MONGOFERRY_LOG_JSON", "true"),
    ];
    let mut op = Operator::start_with(&cp, &o.operator_bin, "load", false, &env);
    let t = Instant::now();
    kc.apply(&jobs_manifest(o.jobs))?;
    loop {
        let n = running(&kc);
        if n == o.jobs {
            break;
        }
        if t.elapsed() > Duration::from_secs(1200) {
            return Err(format!("only {n} of {} jobs running after 20 min", o.jobs).into());
        }
        eprintln!(
            "operator-load: {n}/{} jobs running ({:.0} s)",
            o.jobs,
            t.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let ramp = t.elapsed().as_secs_f64();
    eprintln!(
        "operator-load: all {} jobs running after {ramp:.0} s; settling 20 s",
        o.jobs
    );
    tokio::time::sleep(Duration::from_secs(20)).await;

    eprintln!("operator-load: measuring {:?} with the operator", o.window);
    let log_from = op.log().len();
    let (r0, h0, c0, t0) = (
        request_counts(&kc)?,
        reconciles(&op).await,
        cpu_secs(Some(op.pid())),
        Instant::now(),
    );
    tokio::time::sleep(o.window).await;
    let (r1, h1, c1, secs) = (
        request_counts(&kc)?,
        reconciles(&op).await,
        cpu_secs(Some(op.pid())),
        t0.elapsed().as_secs_f64(),
    );
    let log = op.log();
    let logged: Rates = logged_requests(&log, log_from)
        .into_iter()
        .map(|(k, n)| (k, n / secs))
        .collect();
    let with_operator = rates(&r0, &r1, secs);
    let reconcile_rate = (h1.count - h0.count) / secs;
    let p50 = histogram_percentile(&h0, &h1, 50.0);
    let p95 = histogram_percentile(&h0, &h1, 95.0);
    let op_cpu = (c1 - c0) / secs;

    eprintln!(
        "operator-load: measuring {:?} without the operator",
        o.window
    );
    op.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (b0, tb) = (request_counts(&kc)?, Instant::now());
    tokio::time::sleep(o.window).await;
    let background = rates(&b0, &request_counts(&kc)?, tb.elapsed().as_secs_f64());

    let total = |r: &Rates| 0.0 + r.values().sum::<f64>();
    let operator_rate = total(&with_operator) - total(&background);
    let logged_rate = total(&logged);
    let md = format!(
        "## Operator API load: {} MigrationJobs\n\n\
         Operator binary: `{}`. {} jobs running (worker stand-ins), each naming one credentials \
         Secret for source and target; window {:.0} s with the operator, {:.0} s without.\n\n{}\n\
         Reconciles: {reconcile_rate:.1}/s; reconcile duration p50 {:.1} ms, **p95 {:.1} ms** \
         (interpolated in the histogram's buckets); operator CPU {:.0}% of one core. \
         All {} jobs were running {ramp:.0} s after they were applied.\n",
        o.jobs,
        o.operator_bin.display(),
        o.jobs,
        secs,
        o.window.as_secs_f64(),
        table(&with_operator, &background, &logged),
        p50 * 1000.0,
        p95 * 1000.0,
        op_cpu * 100.0,
        o.jobs,
    );
    let as_json = |r: &Rates| {
        r.iter()
            .map(|((verb, res), v)| json!({"verb": verb, "resource": res, "perSecond": v}))
            .collect::<Vec<Value>>()
    };
    let report = json!({
        "jobs": o.jobs,
        "operatorBin": o.operator_bin.display().to_string(),
        "windowSeconds": secs,
        "withOperator": as_json(&with_operator),
        "controlPlaneAlone": as_json(&background),
        "operatorLog": as_json(&logged),
        "operatorRequestsPerSecond": operator_rate,
        "operatorLoggedRequestsPerSecond": logged_rate,
        "reconcilesPerSecond": reconcile_rate,
        "reconcileP50Seconds": p50,
        "reconcileP95Seconds": p95,
        "operatorCpuCores": op_cpu,
        "rampSeconds": ramp,
    });
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(o.out.join("operator.log"), &log)?;
    std::fs::write(o.out.join("operator-load.md"), &md)?;
    std::fs::write(
        o.out.join("operator-load.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{md}");
    println!(
        "summary: operator {operator_rate:.1} API requests/s by the API server's count, {logged_rate:.1}/s by its own log, with {} jobs; reconcile p95 {:.1} ms",
        o.jobs,
        p95 * 1000.0
    );
    let _ = kc.run(&["delete", "mj", "--all", "--wait=false"]);
    drop(cp);
    Ok(())
}

fn main() {
    let o = parse_args();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("operator-load: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(o)) {
        eprintln!("operator-load: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_as_the_api_server_counts_them() {
        let c = |m: &str, u: &str| classify(m, u);
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            c(
                "GET",
                "/api/v1/namespaces/default/secrets/load-001-api-token"
            ),
            s("GET", "secrets")
        );
        assert_eq!(
            c("PATCH", "/apis/mongoferry.io/v1alpha1/namespaces/default/migrationjobs/load-001/status?fieldManager=x&force=true"),
            s("PATCH", "migrationjobs/status")
        );
        assert_eq!(
            c(
                "GET",
                "/api/v1/pods?labelSelector=a%3Db&watch=true&resourceVersion=5"
            ),
            s("WATCH", "pods")
        );
        assert_eq!(c("GET", "/api/v1/secrets?limit=500"), s("LIST", "secrets"));
        assert_eq!(
            c(
                "GET",
                "https://127.0.0.1:43597/apis/mongoferry.io/v1alpha1/migrationjobs?&limit=1"
            ),
            s("LIST", "migrationjobs")
        );
        assert_eq!(
            c("POST", "/apis/events.k8s.io/v1/namespaces/default/events"),
            s("POST", "events")
        );
        let log = concat!(
            r#"{"message":"requesting","span":{"http.method":"GET","http.url":"/api/v1/namespaces/d/pods/p","name":"HTTP"}}"#,
            "\n",
            r#"{"message":"other"}"#,
            "\n"
        );
        assert_eq!(logged_requests(log, 0).get(&s("GET", "pods")), Some(&1.0));
    }

    #[test]
    fn percentile_interpolates_within_the_bucket() {
        let h = |v: &[(f64, f64)]| Reconciles {
            count: 0.0,
            buckets: v.to_vec(),
        };
        let before = h(&[(0.01, 10.0), (0.1, 10.0), (f64::INFINITY, 10.0)]);
        let after = h(&[(0.01, 60.0), (0.1, 110.0), (f64::INFINITY, 110.0)]);
        // 100 new: 50 ≤ 10 ms, 50 in (10 ms, 100 ms]; the 95th is 90% into the second bucket.
        let p95 = histogram_percentile(&before, &after, 95.0);
        assert!((p95 - 0.091).abs() < 1e-9, "{p95}");
        assert!((histogram_percentile(&before, &after, 50.0) - 0.01).abs() < 1e-9);
    }
}
