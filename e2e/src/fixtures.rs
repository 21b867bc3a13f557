//! The fixtures the suites share: SecantusDB servers (alone, in pairs, with users), a worker
//! between two of them, password files for its credentials, the operator as a local process,
//! seeded collections, and the MigrationJob and Secret manifests of the operator suites.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::Client;

use crate::controlplane::ControlPlane;
use crate::servers::{free_port, lost_port_race, MongoServer, ServerOptions, User};
use crate::worker::{binary, WorkerOptions, WorkerProcess};
use crate::workload::{seed_dataset, SeedSpec, SizeDistribution};

/// Starts a server; panics when it cannot (a test cannot go on without it).
pub async fn server(opts: ServerOptions) -> MongoServer {
    MongoServer::start(opts)
        .await
        .expect("start a SecantusDB server (run e2e/scripts/install-secantus.sh)")
}

/// A source and a target: two default (Rust) servers.
pub async fn pair() -> (MongoServer, MongoServer) {
    (
        server(ServerOptions::rust()).await,
        server(ServerOptions::rust()).await,
    )
}

/// A server with `--auth` and these users.
pub async fn auth_server(users: Vec<User>) -> MongoServer {
    server(ServerOptions {
        auth_users: users,
        ..ServerOptions::rust()
    })
    .await
}

/// The options of a worker from `source` to `target`.
pub fn worker_opts(source: String, target: String) -> WorkerOptions {
    WorkerOptions {
        source,
        target,
        ..Default::default()
    }
}

/// A worker between two servers, connecting as their admins.
pub async fn worker(src: &MongoServer, dst: &MongoServer) -> WorkerProcess {
    WorkerProcess::start(worker_opts(src.uri(), dst.uri())).await
}

/// Seeds `n` documents of `sizes` into `db.coll` (seed `seed_no`, `batch_size` documents per
/// `insert_many`); the bytes. The batch size changes the source's oplog and so the timing of
/// what follows: each suite keeps the one its assertions were established with.
pub async fn seed(
    c: &Client,
    db: &str,
    coll: &str,
    n: u64,
    sizes: SizeDistribution,
    seed_no: u64,
    batch_size: usize,
) -> u64 {
    let mut spec = SeedSpec::new(db, coll, n);
    spec.sizes = sizes;
    spec.seed = seed_no;
    spec.batch_size = batch_size;
    seed_dataset(c, &spec).await.expect("seed").bytes
}

/// Password files for a worker or `mongoferry preflight`: the source and target users'
/// passwords, and any others under names of their own. Removed on drop.
pub struct PasswordFiles {
    pub dir: PathBuf,
    pub source: User,
    pub target: User,
}

impl PasswordFiles {
    pub fn new(tag: &str, source: User, target: User) -> PasswordFiles {
        let dir = std::env::temp_dir().join(format!("mf-pw-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("password dir");
        let files = PasswordFiles {
            dir,
            source,
            target,
        };
        files.add("s", &files.source.password);
        files.add("t", &files.target.password);
        files
    }

    /// Writes another password file (e.g. a wrong password) named `name`.
    pub fn add(&self, name: &str, password: &str) {
        std::fs::write(self.dir.join(name), password).expect("password file");
    }

    /// The worker's credential flags with the right passwords.
    pub fn args(&self) -> Vec<String> {
        self.args_with_source_file("s")
    }

    /// The credential flags with the source password read from file `name`.
    pub fn args_with_source_file(&self, name: &str) -> Vec<String> {
        vec![
            "--source-username".into(),
            self.source.name.clone(),
            "--source-password-file".into(),
            self.dir.join(name).display().to_string(),
            "--target-username".into(),
            self.target.name.clone(),
            "--target-password-file".into(),
            self.dir.join("t").display().to_string(),
        ]
    }
}

impl Drop for PasswordFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `mongoferry operator` as a local process with the control plane's admin kubeconfig;
/// killed on drop.
pub struct Operator {
    child: Child,
    /// `http://127.0.0.1:PORT/metrics`.
    pub metrics: String,
    pub log: PathBuf,
    pub identity: String,
}

impl Operator {
    /// Starts the workspace's binary as the operator (worker image `mongoferry:dev`).
    pub fn start(cp: &ControlPlane, identity: &str, leader_election: bool) -> Operator {
        Operator::start_with(cp, &binary(), identity, leader_election, &[])
    }

    /// Starts `bin` as the operator with extra `(name, value)` environment variables; retries
    /// on another port when its metrics port was taken between `free_port` and its bind.
    pub fn start_with(
        cp: &ControlPlane,
        bin: &Path,
        identity: &str,
        leader_election: bool,
        env: &[(&str, &str)],
    ) -> Operator {
        for _ in 0..5 {
            let port = free_port().expect("port");
            let mut op = Operator::spawn(cp, bin, identity, leader_election, port, env);
            let t = Instant::now();
            loop {
                if let Ok(Some(st)) = op.child.try_wait() {
                    let log = op.log();
                    if lost_port_race(&log) {
                        eprintln!("operator {identity}: metrics port taken, retrying");
                        break;
                    }
                    panic!("operator {identity} exited at start ({st}):\n{log}");
                }
                let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                if listening || t.elapsed() > Duration::from_secs(20) {
                    // Listening: ours, unless it exits now for having lost the port.
                    std::thread::sleep(Duration::from_millis(300));
                    if matches!(op.child.try_wait(), Ok(None)) {
                        return op;
                    }
                    continue;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("operator {identity}: no free metrics port after 5 tries");
    }

    fn spawn(
        cp: &ControlPlane,
        bin: &Path,
        identity: &str,
        leader_election: bool,
        port: u16,
        env: &[(&str, &str)],
    ) -> Operator {
        let log = cp.state_dir.join(format!("operator-{identity}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(bin);
        cmd.args([
            "operator",
            "--worker-image",
            "mongoferry:dev",
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--identity",
            identity,
            "--lease-namespace",
            "default",
        ]);
        if leader_election {
            cmd.arg("--leader-election");
        }
        let child = cmd
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn operator");
        Operator {
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
            log,
            identity: identity.into(),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first sample of metric `name` (a family name or a name with labels).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics_text().await?;
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The whole `/metrics` page.
    pub async fn metrics_text(&self) -> Option<String> {
        reqwest::get(&self.metrics).await.ok()?.text().await.ok()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Secret holding `username` and `password` (namespace: kubectl's current one unless given).
pub fn credentials_secret_yaml(
    name: &str,
    ns: Option<&str>,
    username: &str,
    password: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n{}type: Opaque\nstringData:\n  username: {username}\n  password: {password:?}\n",
        namespace_line(ns)
    )
}

/// A MigrationJob from `src` to `dst` whose credentials are in the Secrets
/// `source-credentials` and `target-credentials`; `extra` is appended to the spec.
pub fn job_yaml(
    name: &str,
    ns: Option<&str>,
    src: &MongoServer,
    dst: &MongoServer,
    extra: &str,
) -> String {
    format!(
        "apiVersion: mongoferry.io/v1alpha1\nkind: MigrationJob\nmetadata:\n  name: {name}\n{}spec:\n  source:\n    uri: mongodb://{}/?authSource=admin\n    credentialsSecretRef: {{name: source-credentials}}\n  target:\n    uri: mongodb://{}/?authSource=admin\n    credentialsSecretRef: {{name: target-credentials}}\n{extra}",
        namespace_line(ns),
        src.host(),
        dst.host()
    )
}

fn namespace_line(ns: Option<&str>) -> String {
    ns.map(|n| format!("  namespace: {n}\n"))
        .unwrap_or_default()
}
