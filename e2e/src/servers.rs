//! Real MongoDB-protocol servers for tests: SecantusDB (`secantusd-rs` / `secantusd-py`), each
//! run as a separate process on a free loopback port with its own storage directory.
//!
//! The server is a third-party GPL program; it is only ever spawned as a child process.
//!
//! Binaries are found through `SECANTUSD_RS` / `SECANTUSD_PY`, then the install directory used
//! by `e2e/scripts/install-secantus.sh` (`${MONGOFERRY_TOOLS:-$HOME/.cache/mongoferry}`), then
//! the repository's `.tools/secantus/bin`, then `PATH`.
//!
//! Storage directories live under the system temp dir and are deleted when the fixture is
//! dropped, unless `MONGOFERRY_KEEP_TEST_DATA` is set. The process is always killed on drop.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;

/// Version of the Rust server the tests are pinned to.
pub const SECANTUS_RS_VERSION: &str = "0.5.3-beta.196";
/// Version of the Python server the tests are pinned to.
pub const SECANTUS_PY_VERSION: &str = "0.7.0b3";

/// How long [`MongoServer::start`] waits for `ping` to answer.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the server fixture.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server binary not found: {0}")]
    BinaryNotFound(String),
    #[error("I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("MongoDB error: {context}: {source}")]
    Mongo {
        context: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("server did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Startup {
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("invalid server options: {0}")]
    InvalidOptions(String),
}

pub type Result<T> = std::result::Result<T, ServerError>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

fn mongo_err(context: impl Into<String>) -> impl FnOnce(mongodb::error::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Mongo { context, source }
}

/// Which SecantusDB implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerKind {
    /// `secantusd-rs` (crates.io `secantus-mdb`), the default: faster.
    #[default]
    Rust,
    /// `secantusd-py` (PyPI `SecantusDB`): a second implementation; supports
    /// `--enable-test-commands` (failpoints).
    Python,
}

impl ServerKind {
    fn binary_name(self) -> &'static str {
        match self {
            ServerKind::Rust => "secantusd-rs",
            ServerKind::Python => "secantusd-py",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            ServerKind::Rust => "SECANTUSD_RS",
            ServerKind::Python => "SECANTUSD_PY",
        }
    }
}

/// A database user created before the server is restarted with `--auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
    /// `(role, db)` pairs, e.g. `("readWrite", "app")`, `("root", "admin")`.
    pub roles: Vec<(String, String)>,
    /// Database the user is created in (its authentication database). `admin` by default.
    pub db: String,
}

impl User {
    /// A user in the `admin` database.
    pub fn new(name: &str, password: &str, roles: &[(&str, &str)]) -> Self {
        User {
            name: name.to_string(),
            password: password.to_string(),
            roles: roles
                .iter()
                .map(|(r, d)| (r.to_string(), d.to_string()))
                .collect(),
            db: "admin".to_string(),
        }
    }

    /// The same user, created in (and authenticating against) `db`.
    pub fn in_db(mut self, db: &str) -> Self {
        self.db = db.to_string();
        self
    }
}

/// TLS files passed to the server (`--tls-cert-file`, `--tls-key-file`, `--tls-ca-file`).
/// The fixture's own client trusts `ca_file` (one CA signing everything, as in tests), or
/// without it accepts any certificate (`tlsInsecure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    /// Client certificate + key in one PEM (for `--tls-require-client-cert` servers).
    pub client_pem: Option<PathBuf>,
}

/// How to run a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub kind: ServerKind,
    /// Users to create. When non-empty, the server is first started without auth, the
    /// [`ServerOptions::admin`] user (or a generated `root` user) and these users are created
    /// with `createUser`, and the server is restarted with `--auth`.
    pub auth_users: Vec<User>,
    /// Admin user the fixture's own client authenticates as when auth is on.
    /// Default: `mongoferry-admin` with a random password and role `root@admin`.
    pub admin: Option<User>,
    /// Force `--auth` even without extra users (the admin user is created anyway).
    pub auth: bool,
    pub oplog_retention_seconds: Option<u64>,
    pub oplog_max_entries: Option<u64>,
    /// `--sync-on-commit`: needed for tests that SIGKILL a server and expect acknowledged
    /// writes to survive.
    pub sync_on_commit: bool,
    /// `--enable-test-commands` (Python server only: `configureFailPoint`).
    pub enable_test_commands: bool,
    pub tls: Option<TlsFiles>,
    /// `--cache-size` (WiredTiger cache). Default for the Rust server in tests: `512M`
    /// (its own default is 4G, too much for many servers side by side).
    pub cache_size: Option<String>,
    /// `--log-file-max` (Rust server only; the WAL file is allocated in full). Default in
    /// tests: `32MB` (the server's default is 128MB per store).
    pub log_file_max: Option<String>,
    /// More command-line arguments, appended as given.
    pub extra_args: Vec<String>,
    /// Use this storage directory instead of a fresh temporary one (it is never deleted).
    pub storage_dir: Option<PathBuf>,
    /// Use this port instead of a free one.
    pub port: Option<u16>,
}

impl ServerOptions {
    pub fn rust() -> Self {
        ServerOptions::default()
    }

    pub fn python() -> Self {
        ServerOptions {
            kind: ServerKind::Python,
            ..ServerOptions::default()
        }
    }

    fn auth_enabled(&self) -> bool {
        self.auth || !self.auth_users.is_empty()
    }
}

/// A running (or stopped) SecantusDB server owned by a test.
pub struct MongoServer {
    opts: ServerOptions,
    binary: PathBuf,
    port: u16,
    storage: PathBuf,
    /// Whether `storage` was created by the fixture (and is deleted on drop).
    owns_storage: bool,
    log_path: PathBuf,
    child: Option<Child>,
    admin: Option<User>,
    client: Option<Client>,
    starts: u32,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Locate a server binary: env var, install dir, repository `.tools`, then `PATH`.
pub fn find_binary(kind: ServerKind) -> Result<PathBuf> {
    if let Ok(path) = std::env::var(kind.env_var()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(ServerError::BinaryNotFound(format!(
            "{}={} does not exist",
            kind.env_var(),
            path.display()
        )));
    }
    let mut candidates = Vec::new();
    if kind == ServerKind::Rust {
        let tools = std::env::var_os("MONGOFERRY_TOOLS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mongoferry"))
            });
        if let Some(tools) = tools {
            candidates.push(
                tools
                    .join(format!("secantus-{SECANTUS_RS_VERSION}"))
                    .join("bin/secantusd-rs"),
            );
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        candidates.push(repo.join(".tools/secantus/bin/secantusd-rs"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            candidates.push(dir.join(kind.binary_name()));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        ServerError::BinaryNotFound(format!(
            "{} (set {} or run e2e/scripts/install-secantus.sh)",
            kind.binary_name(),
            kind.env_var()
        ))
    })
}

/// Whether a server binary of this kind can be found (for tests that skip otherwise).
pub fn is_available(kind: ServerKind) -> bool {
    find_binary(kind).is_ok()
}

/// A loopback port that was free a moment ago.
/// Whether a process's log says it lost the race for the port [`free_port`] found free: another
/// process (a server, a client's outgoing connection) took it before the process bound it.
pub fn lost_port_race(log: &str) -> bool {
    log.contains("in use") || log.contains("AddrInUse")
}

pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("bind a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("read local address"))?
        .port();
    Ok(port)
}

fn random_password() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..24)
        .map(|_| {
            let i = rng.random_range(0..62u8);
            (match i {
                0..=9 => b'0' + i,
                10..=35 => b'a' + i - 10,
                _ => b'A' + i - 36,
            }) as char
        })
        .collect()
}

fn log_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return "(no log)".to_string();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max_bytes {
        let _ = f.seek(SeekFrom::Start(len - max_bytes));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn keep_data() -> bool {
    std::env::var_os("MONGOFERRY_KEEP_TEST_DATA").is_some()
}

impl MongoServer {
    /// Start a server and wait until it answers `ping`. With auth users, the users are
    /// created first and the server is restarted with `--auth`.
    pub async fn start(opts: ServerOptions) -> Result<MongoServer> {
        if opts.enable_test_commands && opts.kind == ServerKind::Rust {
            return Err(ServerError::InvalidOptions(
                "--enable-test-commands exists on the Python server only".into(),
            ));
        }
        let binary = find_binary(opts.kind)?;
        let (storage, owns_storage) = match &opts.storage_dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let dir = std::env::temp_dir().join("mongoferry-e2e").join(format!(
                    "{}-{}-{}-{:08x}",
                    opts.kind.binary_name(),
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    nanos
                ));
                (dir, true)
            }
        };
        fs::create_dir_all(&storage)
            .map_err(io_err(format!("create storage dir {}", storage.display())))?;
        // The server's own data lives in a sub-directory so the log can sit beside it.
        let log_path = storage.join("server.log");
        let admin = if opts.auth_enabled() {
            Some(opts.admin.clone().unwrap_or_else(|| {
                User::new("mongoferry-admin", &random_password(), &[("root", "admin")])
            }))
        } else {
            None
        };
        let mut server = MongoServer {
            port: 0,
            opts,
            binary,
            storage,
            owns_storage,
            log_path,
            child: None,
            admin,
            client: None,
            starts: 0,
        };

        // Pick a port; retry on a lost race for it.
        let mut last_err = None;
        for _ in 0..3 {
            server.port = match server.opts.port {
                Some(p) => p,
                None => free_port()?,
            };
            match server.launch(false).await {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => {
                    server.kill_process();
                    let tail = log_tail(&server.log_path, 4000);
                    last_err = Some(e);
                    if !lost_port_race(&tail) || server.opts.port.is_some() {
                        break;
                    }
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }

        if server.opts.auth_enabled() {
            server.create_users().await?;
            server.stop_process(Duration::from_secs(10));
            server.launch(true).await?;
        }
        Ok(server)
    }

    /// Start a default Rust server.
    pub async fn start_default() -> Result<MongoServer> {
        MongoServer::start(ServerOptions::default()).await
    }

    async fn create_users(&mut self) -> Result<()> {
        let client = self.client.clone().ok_or_else(|| {
            ServerError::InvalidOptions("create_users called before start".into())
        })?;
        let mut users: Vec<User> = self.admin.iter().cloned().collect();
        users.extend(self.opts.auth_users.iter().cloned());
        for user in users {
            let roles: Vec<Bson> = user
                .roles
                .iter()
                .map(|(role, db)| Bson::Document(doc! {"role": role, "db": db}))
                .collect();
            client
                .database(&user.db)
                .run_command(doc! {"createUser": &user.name, "pwd": &user.password, "roles": roles})
                .await
                .map_err(mongo_err(format!("createUser {}", user.name)))?;
        }
        Ok(())
    }

    fn args(&self, with_auth: bool) -> Vec<String> {
        let mut args = vec![
            "--host".to_string(),
            "127.0.0.1".to_string(),
            "--port".to_string(),
            self.port.to_string(),
            "--storage-path".to_string(),
            self.data_dir().display().to_string(),
        ];
        if with_auth {
            args.push("--auth".into());
        }
        if let Some(n) = self.opts.oplog_retention_seconds {
            args.extend(["--oplog-retention-seconds".into(), n.to_string()]);
        }
        if let Some(n) = self.opts.oplog_max_entries {
            args.extend(["--oplog-max-entries".into(), n.to_string()]);
        }
        if self.opts.sync_on_commit {
            args.push("--sync-on-commit".into());
        }
        if self.opts.enable_test_commands {
            args.push("--enable-test-commands".into());
        }
        let cache = self
            .opts
            .cache_size
            .clone()
            .or_else(|| (self.opts.kind == ServerKind::Rust).then(|| "512M".to_string()));
        if let Some(cache) = cache {
            args.extend(["--cache-size".into(), cache]);
        }
        if self.opts.kind == ServerKind::Rust {
            let max = self
                .opts
                .log_file_max
                .clone()
                .unwrap_or_else(|| "32MB".to_string());
            args.extend(["--log-file-max".into(), max]);
        }
        if let Some(tls) = &self.opts.tls {
            args.extend([
                "--tls-cert-file".into(),
                tls.cert_file.display().to_string(),
                "--tls-key-file".into(),
                tls.key_file.display().to_string(),
            ]);
            if let Some(ca) = &tls.ca_file {
                args.extend(["--tls-ca-file".into(), ca.display().to_string()]);
            }
        }
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    async fn launch(&mut self, with_auth: bool) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err(format!("open {}", self.log_path.display())))?;
        let log2 = log.try_clone().map_err(io_err("clone log handle"))?;
        self.starts += 1;
        let args = self.args(with_auth);
        {
            use std::io::Write;
            let mut header = &log;
            let _ = writeln!(
                header,
                "=== mongoferry-e2e: start #{}: {} {}",
                self.starts,
                self.binary.display(),
                args.join(" ")
            );
        }
        let child = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(io_err(format!("spawn {}", self.binary.display())))?;
        self.child = Some(child);
        self.client = None;

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // First wait for the port, watching for an early exit.
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(self.startup_error(format!("process exited with {status}")));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(self.startup_error(format!(
                    "port {} not listening after {:?}",
                    self.port, STARTUP_TIMEOUT
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Users exist only once the server runs with --auth; before that, no credentials.
        let user = if with_auth { self.admin.as_ref() } else { None };
        let client = self.make_client(user).await?;
        loop {
            let ping = tokio::time::timeout(
                Duration::from_secs(5),
                client.database("admin").run_command(doc! {"ping": 1}),
            )
            .await;
            match ping {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if Instant::now() > deadline => {
                    return Err(self.startup_error(format!("ping failed: {e}")));
                }
                Err(_) if Instant::now() > deadline => {
                    return Err(self.startup_error("ping timed out".to_string()));
                }
                _ => {}
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(self.startup_error(format!("process exited with {status}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.client = Some(client);
        Ok(())
    }

    fn startup_error(&self, reason: String) -> ServerError {
        ServerError::Startup {
            reason,
            log: self.log_path.clone(),
            tail: log_tail(&self.log_path, 3000),
        }
    }

    async fn make_client(&self, user: Option<&User>) -> Result<Client> {
        let uri = self.uri_with(user);
        let mut options = ClientOptions::parse(&uri)
            .await
            .map_err(mongo_err(format!("parse {uri}")))?;
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(5));
        Client::with_options(options).map_err(mongo_err("create client"))
    }

    /// Directory holding the server's data files (inside [`MongoServer::storage_dir`]).
    pub fn data_dir(&self) -> PathBuf {
        self.storage.join("data")
    }

    /// The fixture's directory: `data/` and `server.log`.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `max_bytes` of the server log.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        log_tail(&self.log_path, max_bytes)
    }

    pub fn kind(&self) -> ServerKind {
        self.opts.kind
    }

    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connection string of a fully privileged client: with the admin user's credentials
    /// when auth is on, and TLS options when TLS is on.
    pub fn uri(&self) -> String {
        self.uri_with(self.admin.as_ref())
    }

    /// Connection string without credentials.
    pub fn uri_without_credentials(&self) -> String {
        self.uri_with(None)
    }

    /// Connection string authenticating as `user`.
    pub fn uri_for(&self, user: &User) -> String {
        self.uri_with(Some(user))
    }

    fn uri_with(&self, user: Option<&User>) -> String {
        let mut params: Vec<String> = Vec::new();
        let creds = match user {
            Some(u) => {
                params.push(format!("authSource={}", pct(&u.db)));
                params.push("authMechanism=SCRAM-SHA-256".into());
                format!("{}:{}@", pct(&u.name), pct(&u.password))
            }
            None => String::new(),
        };
        if let Some(tls) = &self.opts.tls {
            params.push("tls=true".into());
            match &tls.ca_file {
                Some(ca) => params.push(format!("tlsCAFile={}", pct(&ca.display().to_string()))),
                None => params.push("tlsInsecure=true".into()),
            }
            if let Some(pem) = &tls.client_pem {
                params.push(format!(
                    "tlsCertificateKeyFile={}",
                    pct(&pem.display().to_string())
                ));
            }
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        format!("mongodb://{creds}127.0.0.1:{}/{query}", self.port)
    }

    /// The admin user (when auth is on).
    pub fn admin_user(&self) -> Option<&User> {
        self.admin.as_ref()
    }

    /// A client of the fixture (authenticated as admin when auth is on).
    ///
    /// Panics when the server is not running: a test using a stopped server is a test bug.
    pub fn client(&self) -> Client {
        self.client
            .clone()
            .expect("MongoServer::client called while the server is not running")
    }

    /// A new client authenticating as `user` (without checking the credentials).
    pub async fn client_for(&self, user: &User) -> Result<Client> {
        self.make_client(Some(user)).await
    }

    /// A new client without credentials.
    pub async fn client_without_credentials(&self) -> Result<Client> {
        self.make_client(None).await
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn kill_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.client = None;
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop_process(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.client = None;
    }

    /// SIGKILL the server (a crash). Storage is kept; [`MongoServer::restart`] brings it back.
    pub fn kill(&mut self) {
        self.kill_process();
    }

    /// Graceful stop (SIGTERM, SIGKILL after 10 s). Storage is kept.
    pub fn stop(&mut self) {
        self.stop_process(Duration::from_secs(10));
    }

    /// Start again on the same port with the same storage (stopping it first if running).
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop();
        }
        // The port may linger for a moment after the old process died.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind(("127.0.0.1", self.port)).is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let with_auth = self.opts.auth_enabled();
        self.launch(with_auth).await
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.kill_process();
        if self.owns_storage {
            if keep_data() || std::thread::panicking() {
                eprintln!(
                    "mongoferry-e2e: kept server storage and log at {}",
                    self.storage.display()
                );
                if !keep_data() {
                    // Keep the log of a failed test, drop the bulky data files.
                    let _ = fs::remove_dir_all(self.data_dir());
                }
            } else {
                let _ = fs::remove_dir_all(&self.storage);
            }
        }
    }
}

impl std::fmt::Debug for MongoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoServer")
            .field("kind", &self.opts.kind)
            .field("port", &self.port)
            .field("storage", &self.storage)
            .field("pid", &self.pid())
            .finish()
    }
}

/// Percent-encode the characters that matter inside a connection string.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Run a command on `admin` and return the reply, for probing server features.
pub async fn admin_command(client: &Client, command: Document) -> mongodb::error::Result<Document> {
    client.database("admin").run_command(command).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding() {
        assert_eq!(pct("a b/c@d:e"), "a%20b%2Fc%40d%3Ae");
        assert_eq!(pct("plain-1.2_3~"), "plain-1.2_3~");
    }

    #[test]
    fn uri_shapes() {
        let server = MongoServer {
            opts: ServerOptions::default(),
            binary: PathBuf::from("/bin/false"),
            port: 12345,
            storage: PathBuf::from("/nonexistent"),
            owns_storage: false,
            log_path: PathBuf::from("/nonexistent/server.log"),
            child: None,
            admin: Some(User::new("u", "p@ss", &[("root", "admin")])),
            client: None,
            starts: 0,
        };
        assert_eq!(
            server.uri(),
            "mongodb://u:p%40ss@127.0.0.1:12345/?authSource=admin&authMechanism=SCRAM-SHA-256"
        );
        assert_eq!(
            server.uri_without_credentials(),
            "mongodb://127.0.0.1:12345/"
        );
    }
}
