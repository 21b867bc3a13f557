//! `mongoferry worker`: wire the engine to its clients, its HTTP API and the signals.

use std::path::Path;
use std::sync::Arc;

use tracing::{error, info};

use crate::cli::{EndpointArgs, WorkerArgs};
use crate::engine::conn::{redact_uri, Endpoint};
use crate::engine::error::Side;
use crate::engine::reversal::{Engines, ReverseParts};
use crate::engine::store::Identity;
use crate::engine::Engine;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot read {what} from {path}: {detail}")]
    File {
        what: &'static str,
        path: String,
        detail: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {detail}")]
    Listen { addr: String, detail: String },
}

pub fn read_secret(path: &Path, what: &'static str) -> Result<String, WorkerError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| WorkerError::File {
            what,
            path: path.display().to_string(),
            detail: e.to_string(),
        })
}

/// Both endpoints from the arguments, passwords read from their files.
pub fn endpoints(a: &EndpointArgs) -> Result<(Endpoint, Endpoint), WorkerError> {
    let pw = |p: &Option<std::path::PathBuf>, what| {
        p.as_deref().map(|p| read_secret(p, what)).transpose()
    };
    let src = Endpoint {
        uri: a.source.clone(),
        username: a.source_username.clone(),
        password: pw(&a.source_password_file, "the source password")?,
        tls_ca_file: a
            .source_tls_ca_file
            .as_ref()
            .map(|p| p.display().to_string()),
    };
    let dst = Endpoint {
        uri: a.target.clone(),
        username: a.target_username.clone(),
        password: pw(&a.target_password_file, "the target password")?,
        tls_ca_file: a
            .target_tls_ca_file
            .as_ref()
            .map(|p| p.display().to_string()),
    };
    if src.uri == dst.uri {
        return Err(WorkerError::Config(
            "the source and target URIs are the same; a migration needs two deployments".into(),
        ));
    }
    Ok((src, dst))
}

pub async fn run(args: WorkerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (src, dst) = endpoints(&args.endpoints)?;
    let token = args
        .api_token_file
        .as_deref()
        .map(|p| read_secret(p, "the API token"))
        .transpose()?;
    info!(
        source = %redact_uri(&src.uri),
        target = %redact_uri(&dst.uri),
        listen = %args.listen,
        token = token.is_some(),
        "starting worker"
    );
    let source = src.client(Side::Source, "mongoferry-worker").await?;
    let target = dst.client(Side::Target, "mongoferry-worker").await?;
    let metrics = Arc::new(Metrics::new());
    let me = Identity::new(Some(args.job_id.clone()), args.job_name.clone())
        .with_ttl(std::time::Duration::from_secs(args.lease_ttl));
    info!(job = %me.job_id, name = %me.job_name, incarnation = %me.incarnation,
          lease_ttl_s = me.ttl.as_secs(), "worker identity");
    let gate = Arc::new(crate::preflight::Gate {
        source: source.clone(),
        target: target.clone(),
    });
    // A reverse (POST /reverse, after finalize) runs the preflight with the roles swapped.
    let swapped = Arc::new(crate::preflight::Gate {
        source: target.clone(),
        target: source.clone(),
    });
    let parts = ReverseParts {
        old_source: source.clone(),
        new_cluster: target.clone(),
        metrics: metrics.clone(),
        me: me.clone(),
        gate: Some(swapped),
        throughput_mbps: args.throughput_mbps,
    };
    let engine = Engine::new(source, target, metrics, me).with_gate(gate, args.throughput_mbps);
    engine.spawn_clock();
    let engines = Engines::new(engine.clone(), parts);
    {
        let e = engine.clone();
        let pair = engines.clone();
        let reset = args.reset;
        tokio::spawn(async move {
            e.bootstrap(reset).await;
            pair.resume_reverse_if_any().await;
        });
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| WorkerError::Listen {
            addr: args.listen.clone(),
            detail: e.to_string(),
        })?;
    let app = crate::server::router(engines.clone(), token);
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "cannot watch SIGTERM");
                    return std::future::pending().await;
                }
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        info!("shutting down: draining and checkpointing");
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    engines.shutdown().await;
    info!("worker stopped");
    Ok(())
}

/// `mongoferry preflight`: connect with the worker's credential flags and run it.
pub async fn preflight(
    a: &crate::cli::PreflightArgs,
) -> Result<crate::api::PreflightReport, Box<dyn std::error::Error>> {
    let (src, dst) = endpoints(&a.endpoints)?;
    let source = src.client(Side::Source, "mongoferry-preflight").await?;
    let target = dst.client(Side::Target, "mongoferry-preflight").await?;
    let mut opts = crate::preflight::Options {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
        drop_target_namespaces: a.drop_target_namespaces,
        reset: a.reset,
        throughput_mbps: a.throughput_mbps,
        owned: Default::default(),
        sizes: None,
    };
    opts.filter()?;
    // Namespaces an earlier run of a job on this target created are replaced, not refused.
    match crate::engine::store::owned_namespaces(&target).await {
        Ok(owned) => opts.owned = owned,
        Err(e) => tracing::warn!(error = %e, "cannot read the namespaces an earlier run created"),
    }
    Ok(crate::preflight::run(&source, &target, &opts).await)
}
