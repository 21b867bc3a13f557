//! A `mongoferry worker` process driven through its HTTP API, as users and the operator do.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The project binary: `MONGOFERRY_BIN`, else the workspace's debug build.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("MONGOFERRY_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("mongoferry")
}

/// How to start a worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    pub source: String,
    pub target: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub token: Option<String>,
    pub reset: bool,
    /// Return once the process answers `/healthz`, without waiting for `/readyz`.
    pub no_wait_ready: bool,
    /// A command the worker runs under (`unshare … --`, say): it execs the worker binary
    /// with the worker's arguments appended.
    pub wrap: Vec<String>,
}

pub struct WorkerProcess {
    pub opts: WorkerOptions,
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
    starts: u32,
    /// Whether the last spawn was asked to reset (a spawn retried on another port keeps it).
    last_reset: bool,
}

/// An answer of the API: HTTP status and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: u16,
    pub body: Value,
}

impl WorkerProcess {
    pub async fn start(opts: WorkerOptions) -> WorkerProcess {
        let port = crate::servers::free_port().expect("free port");
        let dir =
            std::env::temp_dir().join(format!("mongoferry-worker-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).expect("worker dir");
        let mut w = WorkerProcess {
            opts,
            port,
            dir,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .expect("http client"),
            starts: 0,
            last_reset: false,
        };
        w.spawn(w.opts.reset);
        w.wait_healthy().await;
        w
    }

    fn spawn(&mut self, reset: bool) {
        self.starts += 1;
        self.last_reset = reset;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("worker log");
        let mut cmd = match self.opts.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("worker")
            .arg("--source")
            .arg(&self.opts.source)
            .arg("--target")
            .arg(&self.opts.target)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.opts.args)
            .env("RUST_LOG", "info,mongoferry=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if reset {
            cmd.arg("--reset");
        }
        if let Some(t) = &self.opts.token {
            let f = self.dir.join("token");
            std::fs::write(&f, t).expect("token file");
            cmd.arg("--api-token-file").arg(f);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {} (build it with `cargo build`): {e}",
                binary().display()
            )
        }));
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("worker.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last few thousand characters of the log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let start = log.len().saturating_sub(6000);
        let start = (start..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log[start..].to_string()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The worker process itself: the spawned process, or under `wrap` the process it runs
    /// (its first child).
    pub fn worker_pid(&self) -> Option<u32> {
        let pid = self.pid()?;
        if self.opts.wrap.is_empty() {
            return Some(pid);
        }
        for _ in 0..100 {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(c) = children
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
            {
                return Some(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Send a signal (`STOP`, `CONT`, `TERM`, …) to the worker process.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.worker_pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut port_retries = 0;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    let log = self.log();
                    // The log is appended across restarts: only this start's last lines count.
                    let last: Vec<&str> = log.lines().rev().take(5).collect();
                    if crate::servers::lost_port_race(&last.join("\n")) && port_retries < 5 {
                        port_retries += 1;
                        self.child = None;
                        self.port = crate::servers::free_port().expect("free port");
                        eprintln!("worker: port taken at start, retrying on {}", self.port);
                        self.spawn(self.last_reset);
                        continue;
                    }
                    panic!("worker exited at start ({st}):\n{log}");
                }
            }
            let probe = if self.opts.no_wait_ready {
                "healthz"
            } else {
                "readyz"
            };
            if let Ok(r) = self
                .http
                .get(format!("{}/{probe}", self.url()))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("worker did not become ready (/readyz):\n{}", self.log());
    }

    /// Call the API; `token` overrides the configured one (`Some("")` sends none).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Answer {
        let url = format!("{}{path}", self.url());
        let mut rq = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url),
        };
        let tok = token
            .map(str::to_string)
            .or_else(|| self.opts.token.clone());
        if let Some(t) = tok.filter(|t| !t.is_empty()) {
            rq = rq.bearer_auth(t);
        }
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.expect("worker reachable");
        let code = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { code, body }
    }

    /// Raw body POST (for malformed-input tests).
    pub async fn post_raw(&self, path: &str, body: &str, content_type: &str) -> Answer {
        let mut rq = self
            .http
            .post(format!("{}{path}", self.url()))
            .header("content-type", content_type)
            .body(body.to_string());
        if let Some(t) = &self.opts.token {
            rq = rq.bearer_auth(t);
        }
        let r = rq.send().await.expect("worker reachable");
        let code = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        Answer {
            code,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call("POST", path, Some(body), None).await
    }

    pub async fn start_migration(&self, body: Value) {
        let a = self.post("/start", body).await;
        assert_eq!(a.code, 200, "start refused: {:?}\n{}", a.body, self.log());
    }

    pub async fn status(&self) -> Value {
        self.call("GET", "/status", None, None).await.body
    }

    pub async fn metrics(&self) -> String {
        match self.call("GET", "/metrics", None, None).await.body {
            Value::String(s) => s,
            other => other.to_string(),
        }
    }

    /// The value of an unlabelled metric.
    pub async fn metric(&self, name: &str) -> f64 {
        let m = self.metrics().await;
        m.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// Poll status until `pred` holds; panics with the last status and the log on timeout.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = json!(null);
        while Instant::now() < deadline {
            last = self.status().await;
            if pred(&last) {
                return last;
            }
            if last["state"] == "failed" {
                panic!(
                    "the migration failed while waiting for {what}: {}\n{}",
                    last["error"],
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; last status: {last:#}\nlog tail:\n{}",
            self.log_tail()
        );
    }

    pub async fn wait_state(&self, state: &str, timeout: Duration) -> Value {
        self.wait_for(&format!("state {state}"), timeout, |s| s["state"] == state)
            .await
    }

    /// Wait until the initial sync is complete and the lag is under `max_lag` seconds.
    pub async fn wait_caught_up(&self, max_lag: f64, timeout: Duration) -> Value {
        self.wait_for("caught up", timeout, |s| {
            s["initialSync"]["completed"] == true
                && s["lagTimeSeconds"].as_f64().is_some_and(|l| l < max_lag)
        })
        .await
    }

    /// SIGKILL the worker.
    pub fn kill(&mut self) {
        if !self.opts.wrap.is_empty() {
            self.signal("KILL");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) {
        let target = self.worker_pid();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(target.unwrap_or(c.id()).to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again (same port, same target): the worker resumes from its checkpoint.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn(false);
        self.wait_healthy().await;
    }

    /// Peak resident memory (VmHWM) in bytes of the running worker.
    pub fn peak_rss(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// Poll status until `done` holds, sampling the peak resident memory meanwhile: the
    /// last status and the peak in bytes. Panics after `timeout`, naming `what`.
    pub async fn wait_with_peak_rss(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> (Value, u64) {
        let deadline = Instant::now() + timeout;
        let mut peak = 0;
        loop {
            peak = peak.max(self.peak_rss());
            let s = self.status().await;
            if done(&s) {
                return (s, peak.max(self.peak_rss()));
            }
            assert!(Instant::now() < deadline, "{what} did not finish: {s:#}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("MONGOFERRY_KEEP_TEST_DATA").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
