//! Polling until a condition holds, with the time it took printed and a timeout that says what
//! was awaited and where things stood (CI keeps only the test's output).

use std::time::{Duration, Instant};

/// How often the waits poll.
pub const POLL: Duration = Duration::from_millis(250);

/// Poll `f` until it returns `Some`, printing how long it took; panics after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, timeout, f, String::new).await
}

/// [`wait_for`], whose timeout message adds `context()`.
pub async fn wait_for_or<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            println!("{what}: {:.1}s", t.elapsed().as_secs_f64());
            return v;
        }
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}{}",
            context()
        );
        tokio::time::sleep(POLL).await;
    }
}
