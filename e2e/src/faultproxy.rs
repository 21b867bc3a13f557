//! A TCP fault proxy: listens on a free loopback port and forwards every connection to a
//! server, with controls to simulate network faults:
//!
//! - [`FaultProxy::cut`]: close every open connection now (both directions, like a reset);
//! - [`FaultProxy::refuse_for`]: accept-and-close new connections for a while (a server that
//!   is down or unreachable), optionally cutting the open ones too;
//! - [`FaultProxy::set_latency`]: delay every chunk in both directions;
//! - [`FaultProxy::set_throttle`]: limit the bytes per second sent from the client to the
//!   server (a slow target: writes crawl, reads are answered normally).
//!
//! A client must connect with `directConnection=true` ([`FaultProxy::uri`]): a replica-set
//! member advertises its own address in `hello`, and a discovering driver would bypass the
//! proxy.
//!
//! The proxy runs on the current tokio runtime and stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
struct Controls {
    /// Bumped by every cut; connections opened before the bump close.
    cut: watch::Sender<u64>,
    refuse_until: Mutex<Option<Instant>>,
    latency_ms: AtomicU64,
    /// Client → server bytes per second; 0 = unlimited.
    throttle_bps: AtomicU64,
    /// Counters, for tests.
    accepted: AtomicU64,
    refused: AtomicU64,
    cuts: AtomicU64,
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
}

/// A running proxy. See the module docs.
pub struct FaultProxy {
    port: u16,
    upstream: SocketAddr,
    ctl: Arc<Controls>,
    stop: watch::Sender<bool>,
}

/// Counters of a proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub accepted: u64,
    pub refused: u64,
    pub cuts: u64,
    /// Bytes forwarded client → server.
    pub up_bytes: u64,
    /// Bytes forwarded server → client.
    pub down_bytes: u64,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream` (e.g. `127.0.0.1:27017`).
    pub async fn start(upstream: &str) -> std::io::Result<FaultProxy> {
        let upstream: SocketAddr = upstream
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(0u64);
        let ctl = Arc::new(Controls {
            cut,
            refuse_until: Mutex::new(None),
            latency_ms: AtomicU64::new(0),
            throttle_bps: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            up_bytes: AtomicU64::new(0),
            down_bytes: AtomicU64::new(0),
        });
        let (stop, mut stopped) = watch::channel(false);
        let c = ctl.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.changed() => break,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let refusing = c
                    .refuse_until
                    .lock()
                    .ok()
                    .and_then(|r| *r)
                    .is_some_and(|until| Instant::now() < until);
                if refusing {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                c.accepted.fetch_add(1, Ordering::Relaxed);
                let c2 = c.clone();
                let stop_rx = stopped.clone();
                tokio::spawn(async move { connection(client, upstream, c2, stop_rx).await });
            }
        });
        Ok(FaultProxy {
            port,
            upstream,
            ctl,
            stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port` of the proxy.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// A connection string through the proxy, taking the query options (credentials, TLS) of
    /// `server_uri` (a `mongodb://…@127.0.0.1:PORT/?…` string) and adding
    /// `directConnection=true`.
    pub fn uri(&self, server_uri: &str) -> String {
        let up = format!("127.0.0.1:{}", self.upstream.port());
        let mut u = server_uri.replacen(&up, &self.host(), 1);
        if u.contains('?') {
            u.push_str("&directConnection=true");
        } else if u.ends_with('/') {
            u.push_str("?directConnection=true");
        } else {
            u.push_str("/?directConnection=true");
        }
        u
    }

    /// Close every open connection now.
    pub fn cut(&self) {
        self.ctl.cuts.fetch_add(1, Ordering::Relaxed);
        self.ctl.cut.send_modify(|g| *g += 1);
    }

    /// Refuse new connections for `d` (open ones are cut too: a host that went away).
    pub fn refuse_for(&self, d: Duration) {
        if let Ok(mut r) = self.ctl.refuse_until.lock() {
            *r = Some(Instant::now() + d);
        }
        self.cut();
    }

    /// Accept connections again at once.
    pub fn accept(&self) {
        if let Ok(mut r) = self.ctl.refuse_until.lock() {
            *r = None;
        }
    }

    /// Delay each chunk forwarded, in both directions.
    pub fn set_latency(&self, d: Duration) {
        self.ctl
            .latency_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Limit client → server bytes per second (`0` = unlimited).
    pub fn set_throttle(&self, bytes_per_sec: u64) {
        self.ctl
            .throttle_bps
            .store(bytes_per_sec, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.ctl;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
            up_bytes: c.up_bytes.load(Ordering::Relaxed),
            down_bytes: c.down_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.cut();
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    ctl: Arc<Controls>,
    mut stop: watch::Receiver<bool>,
) {
    let mut cut = ctl.cut.subscribe();
    cut.mark_unchanged();
    let server = tokio::select! {
        s = TcpStream::connect(upstream) => s,
        _ = cut.changed() => return,
    };
    let Ok(server) = server else {
        // Upstream down: the client sees its connection close, as with a dead server.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, ctl.clone(), true);
    let down = pump(sr, cw, ctl.clone(), false);
    tokio::select! {
        _ = cut.changed() => {}
        _ = stop.changed() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
    // Dropping the halves closes both sockets.
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    ctl: Arc<Controls>,
    upward: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let lat = ctl.latency_ms.load(Ordering::Relaxed);
        if lat > 0 {
            tokio::time::sleep(Duration::from_millis(lat)).await;
        }
        let mut off = 0;
        while off < n {
            let bps = if upward {
                ctl.throttle_bps.load(Ordering::Relaxed)
            } else {
                0
            };
            // Throttled: send in slices of ~1/20 s worth of bytes.
            let len = if bps > 0 {
                ((bps / 20).max(1) as usize).min(n - off)
            } else {
                n - off
            };
            if to.write_all(&buf[off..off + len]).await.is_err() {
                return;
            }
            off += len;
            let counter = if upward {
                &ctl.up_bytes
            } else {
                &ctl.down_bytes
            };
            counter.fetch_add(len as u64, Ordering::Relaxed);
            if bps > 0 {
                tokio::time::sleep(Duration::from_secs_f64(len as f64 / bps as f64)).await;
            }
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 4096];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(msg).await?;
        let mut out = vec![0u8; msg.len()];
        s.read_exact(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn forwards_cuts_refuses_delays_and_throttles() {
        let up = echo_server().await;
        let p = FaultProxy::start(&up.to_string()).await.expect("proxy");
        assert_eq!(roundtrip(p.port(), b"hello").await.expect("echo"), b"hello");

        // Cut: an open connection fails.
        let mut s = TcpStream::connect(("127.0.0.1", p.port()))
            .await
            .expect("connect");
        s.write_all(b"x").await.expect("w");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("r");
        p.cut();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = async {
            s.write_all(b"y").await?;
            s.read_exact(&mut b).await
        }
        .await;
        assert!(r.is_err(), "connection survived a cut");

        // Refuse: new connections fail until the window ends.
        p.refuse_for(Duration::from_millis(400));
        assert!(roundtrip(p.port(), b"z").await.is_err());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(roundtrip(p.port(), b"z").await.expect("echo"), b"z");

        // Latency.
        p.set_latency(Duration::from_millis(100));
        let t = Instant::now();
        roundtrip(p.port(), b"l").await.expect("echo");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        p.set_latency(Duration::ZERO);

        // Throttle: 20 kB at 40 kB/s takes about half a second.
        p.set_throttle(40_000);
        let t = Instant::now();
        let msg = vec![7u8; 20_000];
        assert_eq!(roundtrip(p.port(), &msg).await.expect("echo"), msg);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        let st = p.stats();
        assert!(
            st.refused >= 1 && st.cuts >= 2 && st.up_bytes >= 20_000,
            "{st:?}"
        );
    }
}
