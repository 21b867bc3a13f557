//! `mongoferry demo`: a real migration on this machine with embedded defaults. Starts two
//! local MongoDB-protocol servers (SecantusDB, run as separate processes), loads a sample
//! dataset, keeps live writes going, runs a worker, and walks it through copy, replication,
//! pause, resume and finalize, printing progress and the final verification.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;

use crate::api::{State, WorkerStatus};
use crate::cli::client::{self, Client as Api};
use crate::cli::ClientArgs;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the SecantusDB server binary was not found; run e2e/scripts/install-secantus.sh (or set SECANTUSD_RS)")]
    NoServer,
    #[error("{0}")]
    Step(String),
}

fn step(e: impl std::fmt::Display) -> DemoError {
    DemoError::Step(e.to_string())
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SECANTUSD_RS") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("MONGOFERRY_TOOLS")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cache/mongoferry")))
        .ok()?;
    let p = home.join("secantus-0.5.3-beta.196/bin/secantusd-rs");
    p.is_file().then_some(p)
}

fn free_port() -> Result<u16, DemoError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(step)?;
    Ok(l.local_addr().map_err(step)?.port())
}

fn start_server(bin: &Path, dir: &Path, name: &str) -> Result<(Proc, String), DemoError> {
    let port = free_port()?;
    let data = dir.join(name);
    std::fs::create_dir_all(&data).map_err(step)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(step)?;
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--storage-path")
        .arg(&data)
        .args(["--cache-size", "256M", "--log-file-max", "32MB"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(step)?)
        .stderr(log)
        .spawn()
        .map_err(|e| step(format!("cannot start {}: {e}", bin.display())))?;
    Ok((Proc(child), format!("mongodb://127.0.0.1:{port}/")))
}

async fn wait_ping(c: &Client) -> Result<(), DemoError> {
    for _ in 0..100 {
        if c.database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(step("a demo server did not answer ping"))
}

/// The sample dataset: a shop and a CRM, with unique and TTL indexes.
async fn load_sample(c: &Client, docs: u32) -> Result<u64, DemoError> {
    let shop = c.database("shop");
    let customers: Vec<Document> = (0..docs / 4)
        .map(|i| {
            let tier = ["free", "pro", "team"][(i % 3) as usize];
            doc! {"_id": i as i64, "email": format!("user{i}@example.com"), "name": format!("Customer {i}"),
                "since": mongodb::bson::DateTime::now(), "tier": tier}
        })
        .collect();
    shop.collection::<Document>("customers")
        .insert_many(customers)
        .await
        .map_err(step)?;
    for chunk in 0..4u32 {
        let orders: Vec<Document> = (0..docs / 8)
            .map(|i| {
                let n = chunk * docs / 8 + i;
                doc! {"customer": (n % (docs / 4).max(1)) as i64, "total": f64::from(n % 500) + 0.99,
                    "items": (0..(n % 5 + 1)).map(|k| doc!{"sku": format!("sku-{k}"), "qty": k + 1}).collect::<Vec<_>>(),
                    "note": "x".repeat((n % 40 * 20) as usize)}
            })
            .collect();
        shop.collection::<Document>("orders")
            .insert_many(orders)
            .await
            .map_err(step)?;
    }
    shop.run_command(doc! {"createIndexes": "customers", "indexes": [
    {"key": {"email": 1}, "name": "email_unique", "unique": true}]})
        .await
        .map_err(step)?;
    let crm = c.database("crm");
    crm.collection::<Document>("tickets")
        .insert_many((0..docs / 8).map(|i| doc! {"_id": format!("T-{i}"), "open": i % 3 == 0, "at": mongodb::bson::DateTime::now()}))
        .await
        .map_err(step)?;
    crm.run_command(doc! {"createIndexes": "tickets", "indexes": [
    {"key": {"at": 1}, "name": "expire_after_90d", "expireAfterSeconds": 90 * 86400}]})
        .await
        .map_err(step)?;
    Ok(u64::from(docs / 4 + docs / 2 + docs / 8))
}

/// Live writes on the source until the returned sender is dropped or signalled.
fn live_writes(c: Client) -> tokio::sync::oneshot::Sender<()> {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let orders = c.database("shop").collection::<Document>("orders");
        let customers = c.database("shop").collection::<Document>("customers");
        let mut i: i64 = 0;
        loop {
            if !matches!(
                rx.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ) {
                return;
            }
            let _ = orders
                .insert_one(doc! {"customer": i % 1000, "total": 1.5, "live": true})
                .await;
            let _ = customers
                .update_one(
                    doc! {"_id": i % 1000},
                    doc! {"$inc": {"visits": 1}, "$set": {"seen": mongodb::bson::DateTime::now()}},
                )
                .await;
            if i % 7 == 0 {
                let _ = orders.delete_one(doc! {"live": true}).await;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    tx
}

async fn wait_until(
    api: &Api,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&WorkerStatus) -> bool,
) -> Result<WorkerStatus, DemoError> {
    let t = Instant::now();
    loop {
        let s = api.status().await.map_err(step)?;
        if pred(&s) {
            return Ok(s);
        }
        if s.state == State::Failed {
            return Err(step(format!(
                "the migration failed: {}",
                s.error.unwrap_or_default()
            )));
        }
        if t.elapsed() > timeout {
            return Err(step(format!(
                "timed out waiting for {what}: {}",
                client::summary(&s)
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub mod kube;

/// The demo's data side: two local servers, the sample dataset, live writes on the source.
pub struct Sample {
    pub source_uri: String,
    pub target_uri: String,
    pub dir: PathBuf,
    src: Client,
    dst: Client,
    writes: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    servers: std::sync::Mutex<Vec<Proc>>,
}

impl Sample {
    /// Start both servers, load `documents` sample documents and start live writes (steps 1–2).
    pub async fn start(documents: u32) -> Result<Sample, DemoError> {
        let bin = server_binary().ok_or(DemoError::NoServer)?;
        let dir = std::env::temp_dir().join(format!("mongoferry-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(step)?;
        println!("mongoferry demo — working directory {}", dir.display());
        let (s, source_uri) = start_server(&bin, &dir, "source")?;
        let (t, target_uri) = start_server(&bin, &dir, "target")?;
        let src = Client::with_uri_str(&source_uri).await.map_err(step)?;
        let dst = Client::with_uri_str(&target_uri).await.map_err(step)?;
        wait_ping(&src).await?;
        wait_ping(&dst).await?;
        println!(
            "1. source {source_uri} and target {target_uri} are up (SecantusDB, one-node replica sets)"
        );
        let n = load_sample(&src, documents).await?;
        println!("2. loaded {n} sample documents into shop.customers, shop.orders and crm.tickets");
        let writes = live_writes(src.clone());
        println!("   live writes are running on the source (inserts, updates, deletes)");
        Ok(Sample {
            source_uri,
            target_uri,
            dir,
            src,
            dst,
            writes: std::sync::Mutex::new(Some(writes)),
            servers: std::sync::Mutex::new(vec![s, t]),
        })
    }

    /// Stop the live writes and let the last ones land.
    pub async fn stop_writes(&self) {
        if let Ok(mut w) = self.writes.lock() {
            w.take();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Documents in the sample collections on (source, target).
    pub async fn counts(&self) -> Result<(u64, u64), DemoError> {
        Ok((count(&self.src).await?, count(&self.dst).await?))
    }

    /// Stop the servers and remove the working directory.
    pub fn stop(&self) {
        if let Ok(mut w) = self.writes.lock() {
            w.take();
        }
        if let Ok(mut s) = self.servers.lock() {
            s.clear();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The standalone demo: the worker run directly and driven over its HTTP API.
pub async fn run(documents: u32) -> Result<(), DemoError> {
    let started = Instant::now();
    let sample = Sample::start(documents).await?;
    let r = standalone(&sample, started).await;
    sample.stop();
    r
}

async fn standalone(sample: &Sample, started: Instant) -> Result<(), DemoError> {
    let (src_uri, dst_uri, dir) = (&sample.source_uri, &sample.target_uri, &sample.dir);
    let port = free_port()?;
    let token = format!("demo-{}", std::process::id());
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).map_err(step)?;
    let exe = std::env::current_exe().map_err(step)?;
    let wlog = std::fs::File::create(dir.join("worker.log")).map_err(step)?;
    let worker = Command::new(exe)
        .args(["worker", "--source", src_uri, "--target", dst_uri])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--api-token-file")
        .arg(&token_file)
        .stdin(Stdio::null())
        .stdout(wlog.try_clone().map_err(step)?)
        .stderr(wlog)
        .spawn()
        .map_err(step)?;
    let _w = Proc(worker);
    let api = Api::new(&ClientArgs {
        worker: format!("http://127.0.0.1:{port}"),
        api_token_file: Some(token_file.clone()),
    })
    .map_err(step)?;
    for _ in 0..100 {
        if api.status().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "3. worker listening on 127.0.0.1:{port} (logs: {})",
        dir.join("worker.log").display()
    );
    api.post("/start", &serde_json::json!({}))
        .await
        .map_err(step)?;
    println!("4. migration started: copying, then replicating the change stream");
    let last = std::cell::RefCell::new(String::new());
    let s = wait_until(&api, "the initial sync", Duration::from_secs(600), |s| {
        let line = client::summary(s);
        if line != *last.borrow() {
            println!("   {line}");
            *last.borrow_mut() = line;
        }
        s.initial_sync.completed
    })
    .await?;
    println!(
        "5. initial sync complete: {} documents, {} bytes copied; now replicating",
        s.initial_sync.cloned_documents, s.initial_sync.cloned_size_bytes
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = api.status().await.map_err(step)?;
    println!("   {}", client::summary(&s));
    api.post("/pause", &serde_json::json!({}))
        .await
        .map_err(step)?;
    println!("6. paused (writes continue on the source and are replicated after resume)");
    tokio::time::sleep(Duration::from_secs(3)).await;
    api.post("/resume", &serde_json::json!({}))
        .await
        .map_err(step)?;
    let s = wait_until(
        &api,
        "catch-up after resume",
        Duration::from_secs(120),
        |s| s.state == State::Running && s.lag_time_seconds.is_some_and(|l| l < 2.0),
    )
    .await?;
    println!("7. resumed and caught up: {}", client::summary(&s));
    sample.stop_writes().await;
    println!("8. live writes stopped (cutover window); finalizing");
    api.post("/finalize", &serde_json::json!({"verify": "full"}))
        .await
        .map_err(step)?;
    let s = wait_until(&api, "finalize", Duration::from_secs(600), |s| {
        s.state == State::Finalized
    })
    .await?;
    let f = s.finalization.unwrap_or_default();
    let v = f.verification.unwrap_or_default();
    println!(
        "9. finalized at cutoff {}",
        f.cutoff.map(|c| c.iso_date).unwrap_or_default()
    );
    println!(
        "   indexes restored: {}, failed: {}",
        f.indexes.restored,
        f.indexes.failed.len()
    );
    println!(
        "   verification ({:?}): {} collections, {} documents, {} bytes compared, {} mismatches",
        v.mode, v.collections_checked, v.documents_checked, v.bytes_checked, v.mismatch_count
    );
    let (n_src, n_dst) = sample.counts().await?;
    println!("   documents: source {n_src}, target {n_dst}");
    println!(
        "done in {:.0}s; cleaning up",
        started.elapsed().as_secs_f64()
    );
    drop(_w);
    if v.mismatch_count > 0 || n_src != n_dst {
        return Err(step("the target differs from the source"));
    }
    Ok(())
}

async fn count(c: &Client) -> Result<u64, DemoError> {
    let mut n = 0;
    for (db, coll) in [
        ("shop", "customers"),
        ("shop", "orders"),
        ("crm", "tickets"),
    ] {
        n += c
            .database(db)
            .collection::<Document>(coll)
            .count_documents(doc! {})
            .await
            .map_err(step)?;
    }
    Ok(n)
}
