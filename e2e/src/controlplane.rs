//! Test fixture: a real Kubernetes control plane (etcd + kube-apiserver +
//! garbage collector and a few other controllers + the pod runner), started
//! through `e2e/scripts/controlplane.sh` with a fresh state directory per
//! fixture and stopped on drop. Uses only std.
//!
//! ```no_run
//! # use mongoferry_e2e::controlplane::ControlPlane;
//! let cp = ControlPlane::start(std::path::Path::new("target/debug/mongoferry")).unwrap();
//! let out = cp.kubectl(&["get", "nodes"]).unwrap();
//! assert!(out.status.success());
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A running control plane. Dropping it stops every process it started.
pub struct ControlPlane {
    /// Admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// Per-fixture state directory: PKI, etcd data, pods, logs.
    pub state_dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    script: PathBuf,
    extra_images: String,
    keep: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl ControlPlane {
    /// Starts a control plane whose pod runner runs the image `mongoferry`
    /// (any registry/tag) from the OCI archive `e2e/scripts/build-image.sh
    /// --binary bin` makes (cached), under runc. Blocks until the apiserver is
    /// ready, the default ServiceAccount exists and the node is Ready.
    pub fn start(bin: &Path) -> io::Result<Self> {
        Self::start_with_images(bin, &[])
    }

    /// Like [`start`](Self::start), with extra `(repository, OCI archive)`
    /// images for the pod runner.
    pub fn start_with_images(bin: &Path, images: &[(&str, &Path)]) -> io::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = root.join("e2e/scripts/controlplane.sh").canonicalize()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let state_dir = std::env::temp_dir().join(format!(
            "mongoferry-cp-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            nanos % 1_000_000
        ));
        fs::create_dir_all(&state_dir)?;
        let bin = if bin.exists() {
            bin.canonicalize()?
        } else {
            bin.to_path_buf()
        };
        let extra_images = images
            .iter()
            .map(|(repo, path)| format!("{}={}", repo, path.display()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cp = ControlPlane {
            kubeconfig: state_dir.join("kubeconfig"),
            server: String::new(),
            state_dir,
            script,
            extra_images,
            keep: std::env::var_os("MONGOFERRY_KEEP_CONTROLPLANE").is_some(),
        };
        let out = cp.script_cmd("up").env("MONGOFERRY_BIN", &bin).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "controlplane.sh up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        cp.server = fs::read_to_string(cp.state_dir.join("ready"))?
            .trim()
            .to_string();
        Ok(cp)
    }

    fn script_cmd(&self, action: &str) -> Command {
        let mut cmd = Command::new(&self.script);
        cmd.arg(action)
            .env("CONTROLPLANE_STATE_DIR", &self.state_dir)
            .env("CONTROLPLANE_IMAGES", &self.extra_images);
        cmd
    }

    /// Runs the machine's `kubectl` with `KUBECONFIG` set to the admin
    /// kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> io::Result<Output> {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
    }

    /// The current log of a container, read from the pod runner's files
    /// (empty if the pod or container never ran).
    pub fn pod_log(&self, ns: &str, pod: &str, container: &str) -> String {
        self.log_file(ns, pod, container, "log")
    }

    /// The log of the container's previous run (before its last restart).
    pub fn previous_pod_log(&self, ns: &str, pod: &str, container: &str) -> String {
        self.log_file(ns, pod, container, "log.1")
    }

    fn log_file(&self, ns: &str, pod: &str, container: &str, ext: &str) -> String {
        let prefix = format!("{ns}_{pod}_");
        let Ok(entries) = fs::read_dir(self.state_dir.join("pods")) else {
            return String::new();
        };
        // Several directories exist if the pod was recreated: newest wins.
        let newest = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        newest
            .and_then(|e| fs::read_to_string(e.path().join(format!("{container}.{ext}"))).ok())
            .unwrap_or_default()
    }

    /// The whole control plane log (apiserver, controllers, pod runner).
    pub fn log(&self) -> String {
        fs::read_to_string(self.state_dir.join("cpctl.log")).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.script_cmd("down").output();
        if !self.keep && !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.state_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs Go and a few minutes for the first build of cpctl:
    /// `cargo test -p mongoferry-e2e --lib controlplane -- --ignored`.
    #[test]
    #[ignore]
    fn starts_runs_a_pod_and_stops() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new(root.join("e2e/scripts/build-testbox.sh"))
            .output()
            .expect("build-testbox.sh");
        assert!(out.status.success(), "{out:?}");
        let testbox = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let cp = ControlPlane::start_with_images(
            Path::new("/nonexistent/mongoferry"),
            &[("mongoferry/testbox", &testbox)],
        )
        .expect("start");
        let out = cp.kubectl(&["get", "--raw", "/readyz"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
        let out = cp
            .kubectl(&[
                "run",
                "hi",
                "--image=mongoferry/testbox",
                "--restart=Never",
                "--",
                "-c",
                "echo hi from $HOSTNAME",
            ])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let out = cp
            .kubectl(&[
                "wait",
                "--for=jsonpath={.status.phase}=Succeeded",
                "pod/hi",
                "--timeout=30s",
            ])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(cp.pod_log("default", "hi", "hi"), "hi from hi\n");
        let pid = fs::read_to_string(cp.state_dir.join("cpctl.pid")).unwrap();
        let state = cp.state_dir.clone();
        drop(cp);
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "cpctl still running"
        );
        assert!(!state.exists());
    }
}
