//! The image as users run it (issue 16): worker and plain pods run from the OCI image that
//! e2e/scripts/build-image.sh made, under runc, through the test control plane's pod runner.
//! What is checked is what a kubelet enforces: the read-only root filesystem, runAsNonRoot
//! against the image's user, the memory limit (OOMKilled, restarts, the MigrationJob's
//! condition), and Secrets read at their mountPath with no path shim in the product.
//!
//! `cargo build && cargo test -p mongoferry-e2e --test containers -- --test-threads=1`

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongoferry_e2e::controlplane::ControlPlane;
use mongoferry_e2e::fixtures::{auth_server, Operator};
use mongoferry_e2e::kubectl::{repo_root, Kubectl, CRD};
use mongoferry_e2e::servers::{MongoServer, User};
use mongoferry_e2e::wait::wait_for_or;
use mongoferry_e2e::worker::binary;

const PASSWORD: &str = "Im4ge-Pa55-quux";

async fn server() -> MongoServer {
    auth_server(vec![User::new("ferry", PASSWORD, &[("root", "admin")])]).await
}

fn apply(k: &Kubectl, yaml: &str) {
    k.apply(yaml)
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
}

fn credentials_and_job(k: &Kubectl, src: &MongoServer, dst: &MongoServer, worker: &str) {
    for side in ["source", "target"] {
        apply(
            k,
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: {side}-credentials}}\nstringData: {{username: ferry, password: {PASSWORD:?}}}\n"
            ),
        );
    }
    apply(
        k,
        &format!(
            "apiVersion: mongoferry.io/v1alpha1\nkind: MigrationJob\nmetadata: {{name: mig}}\nspec:\n  source:\n    uri: mongodb://{}/?authSource=admin\n    credentialsSecretRef: {{name: source-credentials}}\n  target:\n    uri: mongodb://{}/?authSource=admin\n    credentialsSecretRef: {{name: target-credentials}}\n{worker}",
            src.host(),
            dst.host()
        ),
    );
}

/// The directory of a pod's newest run under the pod runner's state.
fn pod_dir(cp: &ControlPlane, ns: &str, pod: &str) -> Option<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(cp.state_dir.join("pods"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// The host pid of a running container's init (runc writes it).
fn container_pid(cp: &ControlPlane, ns: &str, pod: &str, container: &str) -> Option<u32> {
    let dir = pod_dir(cp, ns, pod)?;
    std::fs::read_to_string(dir.join(format!("{container}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Tries to create a file at `/` of a container's root filesystem: a child process joins
/// the container's mount namespace (setns resets its root to the container's root) and
/// opens `/mongoferry-write-probe` for writing. Ok(()) if the file could be created.
fn write_to_container_root(pid: u32) -> io::Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("/nonexistent-never-executed");
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setns, open, close, unlink).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            let path = c"/mongoferry-write-probe";
            let f = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
            if f < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(f);
            libc::unlink(path.as_ptr());
            // Written: report it with an errno open(O_CREAT) without O_EXCL never gives.
            Err(io::Error::from_raw_os_error(libc::EEXIST))
        });
    }
    match cmd.spawn() {
        Ok(mut c) => {
            let _ = c.kill();
            Err(io::Error::other("probe child was not expected to exec"))
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

fn image_digest() -> String {
    let path = repo_root().join("target/image/mongoferry-dev.oci.tar.digest");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Acceptance 3 (read-only root, Secrets at their mountPath) and the worker under the
/// image: it runs as 65532 from the image's root filesystem, a write to `/` inside its
/// container fails with EROFS, and it authenticates to both servers with the passwords it
/// reads from its Secret volumes at /etc/mongoferry/... (the product has no path shim and the
/// pod runner sets no mapping variable). `kubectl exec` reaches the same container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_container_has_a_read_only_root_and_reads_secrets_at_their_mount_path() {
    let cp = ControlPlane::start(&binary()).expect("control plane");
    let k = Kubectl::new(&cp);
    k.install_crd(CRD);
    let (src, dst) = (server().await, server().await);
    let c = src.client();
    let docs: Vec<Document> = (0..500).map(|i| doc! {"_id": i, "v": "x"}).collect();
    c.database("shop")
        .collection::<Document>("orders")
        .insert_many(docs)
        .await
        .expect("seed");
    let _op = Operator::start(&cp, "op", false);
    credentials_and_job(&k, &src, &dst, "");

    let job = wait_for_or(
        "MigrationJob replicating (worker authenticated with its Secret files)",
        Duration::from_secs(180),
        || {
            k.get("mj", "mig")
                .filter(|j| j["status"]["phase"] == "replicating")
        },
        || {
            format!(
                "job {}; worker log: {}",
                k.get("mj", "mig")
                    .map(|j| j["status"].to_string())
                    .unwrap_or_default(),
                cp.pod_log("default", "mig-worker", "worker")
            )
        },
    )
    .await;
    println!("job status: {}", job["status"]);

    let pod = k.get("pod", "mig-worker").expect("worker pod");
    let cs = &pod["status"]["containerStatuses"][0];
    let image_id = cs["imageID"].as_str().unwrap_or_default();
    assert!(
        image_id.ends_with(&image_digest()),
        "the worker does not run the image build-image.sh made: imageID {image_id}"
    );
    assert!(cs["containerID"]
        .as_str()
        .unwrap_or_default()
        .starts_with("runc://"));

    let pid = container_pid(&cp, "default", "mig-worker", "worker").expect("worker pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default();
    assert!(uid.split_whitespace().nth(1) == Some("65532"), "{uid}");
    let cap = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .unwrap_or_default();
    assert!(
        cap.ends_with("0000000000000000"),
        "capabilities not dropped: {cap}"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        !String::from_utf8_lossy(&environ).contains("POD_RUNNER_MOUNTS"),
        "a path-mapping variable reached the worker"
    );

    let err = write_to_container_root(pid).expect_err("a write to / inside the worker succeeded");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "a write to / must fail with EROFS, got {err}"
    );
    println!("write to / inside the worker container: {err}");

    let version = k
        .run(&[
            "exec",
            "mig-worker",
            "--",
            "/usr/local/bin/mongoferry",
            "--version",
        ])
        .expect("kubectl exec in the worker");
    assert!(version.contains("mongoferry"), "{version}");
    let missing = k.run(&["exec", "mig-worker", "--", "/no/such/binary"]);
    assert!(missing.is_err(), "exec of a missing binary succeeded");
}

/// Acceptance 3 (runAsNonRoot): a pod whose image user is 0 is refused with the kubelet's
/// reason (CreateContainerConfigError) and never runs; the project's image (user 65532)
/// under the same securityContext runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_non_root_refuses_an_image_whose_user_is_root() {
    let out = Command::new(repo_root().join("e2e/scripts/build-testbox.sh"))
        .output()
        .expect("build-testbox.sh");
    assert!(out.status.success(), "{out:?}");
    let testbox = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let cp = ControlPlane::start_with_images(&binary(), &[("mongoferry/testbox", &testbox)])
        .expect("control plane");
    let k = Kubectl::new(&cp);
    let pod = |name: &str, image: &str, command: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  securityContext: {{runAsNonRoot: true}}\n  containers:\n  - name: main\n    image: {image}\n    {command}\n"
        )
    };
    apply(
        &k,
        &pod(
            "rootimage",
            "ghcr.io/mongoferry/testbox:1",
            "command: [sh, -c, 'echo ran']",
        ),
    );
    apply(
        &k,
        &pod(
            "ours",
            "ghcr.io/mongoferry/mongoferry:0.1.0",
            "args: [--version]",
        ),
    );

    let waiting = wait_for_or(
        "rootimage refused",
        Duration::from_secs(60),
        || {
            k.get("pod", "rootimage").and_then(|p| {
                let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
                (w["reason"] == "CreateContainerConfigError").then_some(w)
            })
        },
        || {
            format!(
                "{:?}",
                k.get("pod", "rootimage").map(|p| p["status"].clone())
            )
        },
    )
    .await;
    let msg = waiting["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("runAsNonRoot and image will run as root"),
        "message: {msg}"
    );
    let events = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=rootimage",
            "-o",
            "json",
        ])
        .unwrap_or_default();
    assert!(
        events.contains("image will run as root"),
        "no Failed event: {events}"
    );

    wait_for_or(
        "the project's image (user 65532) runs under runAsNonRoot",
        Duration::from_secs(60),
        || {
            k.get("pod", "ours")
                .filter(|p| p["status"]["phase"] == "Succeeded")
        },
        || format!("{:?}", k.get("pod", "ours").map(|p| p["status"].clone())),
    )
    .await;
    let log = k.run(&["logs", "ours"]).expect("logs");
    assert!(log.starts_with("mongoferry "), "{log}");
    let p = k.get("pod", "rootimage").expect("pod");
    assert_eq!(p["status"]["phase"], "Pending");
    assert!(
        cp.pod_log("default", "rootimage", "main").is_empty(),
        "the refused container ran"
    );
}

/// Acceptance 3 (memory limit): a worker limited to 64Mi copying 1 MB documents is killed
/// by the kernel (cgroup v1 memory controller), reported OOMKilled and restarted; the
/// MigrationJob shows it: Failed=True with reason WorkerPodFailing naming OOMKilled, and
/// the restarts in status.workerPod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_over_its_memory_limit_is_oom_killed_and_the_job_shows_it() {
    let cp = ControlPlane::start(&binary()).expect("control plane");
    let k = Kubectl::new(&cp);
    k.install_crd(CRD);
    let (src, dst) = (server().await, server().await);
    let coll = src
        .client()
        .database("media")
        .collection::<Document>("blobs");
    let mb = vec![7u8; 1024 * 1024];
    for chunk in 0..12 {
        let docs: Vec<Document> = (0..10)
            .map(|i| {
                doc! {"_id": chunk * 10 + i, "data": Binary { subtype: BinarySubtype::Generic, bytes: mb.clone() }}
            })
            .collect();
        coll.insert_many(docs).await.expect("seed 1 MB documents");
    }
    let _op = Operator::start(&cp, "op", false);
    credentials_and_job(
        &k,
        &src,
        &dst,
        // 32 MiB batches: each attempt holds well over 64 MiB (a cursor batch, the batch it
        // fills, the batches in flight). With its default 1 MiB batches the worker copies
        // these documents within 64 MiB once a first attempt has copied part of them.
        "  worker:\n    resources: {limits: {memory: 64Mi}, requests: {memory: 64Mi}}\n  tuning:\n    clone: {batchBytes: 33554432}\n",
    );

    let last = wait_for_or(
        "worker OOMKilled and restarted",
        Duration::from_secs(180),
        || {
            let p = k.get("pod", "mig-worker")?;
            let cs = p["status"]["containerStatuses"][0].clone();
            (cs["restartCount"].as_i64().unwrap_or(0) >= 1
                && cs["lastState"]["terminated"]["reason"] == "OOMKilled")
                .then_some(cs)
        },
        || {
            format!(
                "pod {:?}; worker log: {}",
                k.get("pod", "mig-worker").map(|p| p["status"].clone()),
                cp.pod_log("default", "mig-worker", "worker")
            )
        },
    )
    .await;
    assert_eq!(last["lastState"]["terminated"]["exitCode"], 137);
    println!(
        "worker's log before the kill: {}",
        cp.previous_pod_log("default", "mig-worker", "worker")
            .lines()
            .last()
            .unwrap_or_default()
    );

    let job = wait_for_or(
        "MigrationJob Failed=True WorkerPodFailing (OOMKilled) with the restarts",
        Duration::from_secs(120),
        || {
            k.get("mj", "mig").filter(|j| {
                let failed = j["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Failed"))
                    .cloned()
                    .unwrap_or_default();
                failed["status"] == "True"
                    && failed["reason"] == "WorkerPodFailing"
                    && failed["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("OOMKilled")
                    && j["status"]["workerPod"]["restarts"].as_i64().unwrap_or(0) >= 1
            })
        },
        || format!("{:?}", k.get("mj", "mig").map(|j| j["status"].clone())),
    )
    .await;
    println!("job status: {}", job["status"]);
}
