//! The machine's `kubectl`, as the README tells users to drive MigrationJobs (apply, get,
//! patch, wait), plus readers of the JSON it prints. Shared by the operator, chart and
//! container suites and the benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::controlplane::ControlPlane;

/// The CRD as generated into the repository (`mongoferry crd`).
pub const CRD: &str = "crds/mongoferry.io_migrationjobs.yaml";
/// The same CRD as the chart ships it (a drift test keeps both equal).
pub const CHART_CRD: &str = "charts/mongoferry/crds/mongoferry.io_migrationjobs.yaml";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

static MANIFESTS: AtomicU64 = AtomicU64::new(0);

/// `kubectl` against one cluster: a test control plane's admin kubeconfig, or whatever
/// `KUBECONFIG` names.
#[derive(Debug, Clone)]
pub struct Kubectl {
    kubeconfig: Option<PathBuf>,
    /// Where manifests given as text are written before `kubectl apply -f`.
    scratch: PathBuf,
}

impl Kubectl {
    /// The test control plane, as its admin.
    pub fn new(cp: &ControlPlane) -> Kubectl {
        Kubectl {
            kubeconfig: Some(cp.kubeconfig.clone()),
            scratch: cp.state_dir.clone(),
        }
    }

    /// The cluster of the environment's `KUBECONFIG` (or kubectl's default).
    pub fn ambient() -> Kubectl {
        Kubectl {
            kubeconfig: None,
            scratch: std::env::temp_dir(),
        }
    }

    /// A `kubectl` command for this cluster, without arguments (e.g. for a `-w` watch).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        if let Some(k) = &self.kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        cmd
    }

    /// Runs kubectl: its stdout, or its stdout and stderr as the error.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|e| format!("cannot run kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// [`run`](Self::run), panicking with kubectl's output when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    /// Writes `body` to a file named after `name` in the scratch directory; its path.
    pub fn write_manifest(&self, name: &str, body: &str) -> String {
        let n = MANIFESTS.fetch_add(1, Ordering::Relaxed);
        let path = self.scratch.join(format!("{n}-{name}"));
        std::fs::write(&path, body)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path.display().to_string()
    }

    /// `kubectl apply -f` of manifests given as text.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        let path = self.write_manifest("apply.yaml", yaml);
        self.run(&["apply", "-f", &path])
    }

    /// One object as JSON, in kubectl's current namespace; None if it does not exist.
    pub fn get(&self, kind: &str, name: &str) -> Option<Value> {
        json(self.run(&["get", kind, name, "-o", "json"]).ok()?)
    }

    /// One object of namespace `ns` as JSON; None if it does not exist.
    pub fn get_in(&self, ns: &str, kind: &str, name: &str) -> Option<Value> {
        json(
            self.run(&["get", "-n", ns, kind, name, "-o", "json"])
                .ok()?,
        )
    }

    /// The objects of `kind` in `ns` that match a label selector.
    pub fn list(&self, ns: &str, kind: &str, selector: &str) -> Vec<Value> {
        let s = self.ok(&["get", "-n", ns, kind, "-l", selector, "-o", "json"]);
        let v: Value = serde_json::from_str(&s).expect("list json");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Applies the CRD file (relative to the repository root) and waits until it is served
    /// (`kubectl wait` errors, instead of waiting, while the new CRD has no conditions yet).
    pub fn install_crd(&self, path: &str) {
        let crd = repo_root().join(path);
        self.ok(&["apply", "-f", &crd.display().to_string()]);
        let t = Instant::now();
        loop {
            let r = self.run(&[
                "wait",
                "--for=condition=Established",
                "crd/migrationjobs.mongoferry.io",
                "--timeout=10s",
            ]);
            match r {
                Ok(_) => return,
                Err(e) if t.elapsed() < Duration::from_secs(30) => {
                    eprintln!("waiting for the CRD: {e}");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("the CRD was not established: {e}"),
            }
        }
    }

    /// `kubectl patch mj NAME --type merge -p '{"spec":{"desiredState":STATE}}'`.
    pub fn set_desired_state(&self, ns: Option<&str>, name: &str, state: &str) {
        let patch = format!(r#"{{"spec":{{"desiredState":"{state}"}}}}"#);
        self.patch_job(ns, name, &patch);
    }

    /// A merge patch of MigrationJob `name`.
    pub fn patch_job(&self, ns: Option<&str>, name: &str, patch: &str) {
        let mut args = vec!["patch", "mj", name, "--type", "merge", "-p", patch];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        self.ok(&args);
    }

    /// `kubectl wait mj/NAME --for=condition=COND --timeout=…`, panicking on a timeout.
    pub fn wait_condition(&self, ns: Option<&str>, name: &str, cond: &str, timeout: Duration) {
        let (obj, cond) = (format!("mj/{name}"), format!("--for=condition={cond}"));
        let timeout = format!("--timeout={}s", timeout.as_secs());
        let mut args = vec!["wait", obj.as_str(), cond.as_str(), timeout.as_str()];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        self.ok(&args);
    }

    /// Sets `desiredState: finalized` and waits (`kubectl wait`) for the Finalized condition.
    pub fn finalize(&self, ns: Option<&str>, name: &str, timeout: Duration) {
        self.set_desired_state(ns, name, "finalized");
        self.wait_condition(ns, name, "Finalized", timeout);
    }
}

fn json(text: String) -> Option<Value> {
    serde_json::from_str(&text).ok()
}

/// One entry of `status.conditions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }

    pub fn is_false(&self) -> bool {
        self.status == "False"
    }
}

/// The condition `ty` of an object printed by `kubectl get -o json`.
pub fn condition(obj: &Value, ty: &str) -> Option<Condition> {
    let c = obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)?;
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    Some(Condition {
        status: s("status"),
        reason: s("reason"),
        message: s("message"),
    })
}

/// Whether condition `ty` is True.
pub fn condition_true(obj: &Value, ty: &str) -> bool {
    condition(obj, ty).is_some_and(|c| c.is_true())
}

/// `status.replication.eventsApplied` of a MigrationJob (0 when absent).
pub fn events_applied(job: &Value) -> u64 {
    job["status"]["replication"]["eventsApplied"]
        .as_u64()
        .unwrap_or(0)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
