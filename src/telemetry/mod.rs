//! Logging setup and the worker's metric registry.

pub mod metrics;

use tracing_subscriber::{fmt, EnvFilter};

/// Initialise `tracing`: `RUST_LOG` style filter (default `info`), text or JSON lines on stderr.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
