//! The worker's HTTP API: control verbs, status, health and Prometheus metrics.
//!
//! JSON in and out; a refused transition is 409, a malformed body 400, a missing or wrong
//! token 401 (every endpoint but `/healthz` and `/readyz` needs it when one is configured).
//! Commands run detached inside the engine: a client that hangs up cancels nothing.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{RawQuery, Request, State as AxState};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::api::{
    ApiError, ApiOk, FinalizeRequest, ResumeRequest, ReverseRequest, StartRefused, StartRequest,
    State,
};
use crate::engine::reversal::Engines;
use crate::engine::{CommandError, Engine, PreflightQuery};

#[derive(Clone)]
struct App {
    engines: Engines,
    token: Option<Arc<String>>,
}

impl App {
    /// The job commands go to: the reverse once one was started, else the migration.
    fn engine(&self) -> Engine {
        self.engines.active()
    }
}

pub fn router(engines: Engines, token: Option<String>) -> Router {
    let app = App {
        engines,
        token: token.map(Arc::new),
    };
    let guarded = Router::new()
        .route("/start", post(start))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/finalize", post(finalize))
        .route("/reverse", post(reverse))
        .route("/status", get(status))
        .route("/preflight", get(preflight))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see docs/worker-api.md".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(app)
}

fn error(code: StatusCode, msg: String) -> Response {
    (
        code,
        Json(ApiError {
            ok: false,
            error: msg,
        }),
    )
        .into_response()
}

async fn auth(AxState(app): AxState<App>, req: Request, next: Next) -> Response {
    if let Some(tok) = &app.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), tok.as_bytes()));
        if !ok {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API token: send `Authorization: Bearer <token>` (the worker's --api-token-file)".into(),
            );
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parse an optional JSON body: empty means the default.
#[allow(clippy::result_large_err)]
fn body<T: DeserializeOwned + Default>(
    r: Result<Json<T>, JsonRejection>,
    raw_empty: bool,
) -> Result<T, Response> {
    match r {
        Ok(Json(v)) => Ok(v),
        Err(_) if raw_empty => Ok(T::default()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {}", e.body_text()),
        )),
    }
}

fn outcome(r: Result<State, CommandError>) -> Response {
    match r {
        Ok(state) => (
            StatusCode::OK,
            Json(ApiOk {
                ok: true,
                state,
                preflight: None,
            }),
        )
            .into_response(),
        Err(CommandError::Conflict(m)) => error(StatusCode::CONFLICT, m),
        Err(CommandError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(CommandError::Internal(m)) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        Err(CommandError::Preflight(report)) => (
            StatusCode::CONFLICT,
            Json(StartRefused {
                ok: false,
                error: format!("preflight failed: {}", report.summary),
                preflight: *report,
            }),
        )
            .into_response(),
    }
}

/// Parse `GET /preflight` parameters: repeated `include` / `exclude` (or
/// `includeNamespaces` / `excludeNamespaces`), `dropTargetNamespaces`, `reset`,
/// `throughputMbps`. Pure.
pub fn parse_preflight_query(raw: &str) -> Result<PreflightQuery, String> {
    let mut q = PreflightQuery::default();
    let decode = |v: &str| {
        percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|e| format!("bad query encoding: {e}"))
    };
    let flag = |k: &str, v: &str| match v {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("{k} must be true or false, not {other:?}")),
    };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v)?;
        match decode(k)?.as_str() {
            "include" | "includeNamespaces" => q.include.get_or_insert_with(Vec::new).push(v),
            "exclude" | "excludeNamespaces" => q.exclude.get_or_insert_with(Vec::new).push(v),
            "dropTargetNamespaces" => q.drop_target_namespaces = Some(flag(k, &v)?),
            "reset" => q.reset = flag(k, &v)?,
            "throughputMbps" => {
                let t: f64 = v
                    .parse()
                    .map_err(|_| format!("throughputMbps must be a number, not {v:?}"))?;
                if !(t > 0.0 && t.is_finite()) {
                    return Err("throughputMbps must be positive".into());
                }
                q.throughput_mbps = Some(t);
            }
            other => return Err(format!("unknown preflight parameter {other:?}")),
        }
    }
    Ok(q)
}

async fn preflight(AxState(app): AxState<App>, RawQuery(raw): RawQuery) -> Response {
    let q = match parse_preflight_query(raw.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    match app.engine().preflight(q).await {
        Ok(r) => Json(r).into_response(),
        Err(CommandError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Read the body as bytes first so an empty body is accepted as `{}`.
#[allow(clippy::result_large_err)]
async fn parse<T: DeserializeOwned + Default>(req: Request) -> Result<T, Response> {
    let bytes = axum::body::to_bytes(req.into_body(), 1024 * 1024)
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("unreadable request body: {e}"),
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let r: Result<Json<T>, JsonRejection> = Json::from_bytes(&bytes);
    body(r, false)
}

async fn start(AxState(app): AxState<App>, req: Request) -> Response {
    match parse::<StartRequest>(req).await {
        Ok(b) => match app.engine().start(b).await {
            Ok((state, preflight)) => (
                StatusCode::OK,
                Json(ApiOk {
                    ok: true,
                    state,
                    preflight: preflight.map(Box::new),
                }),
            )
                .into_response(),
            Err(e) => outcome(Err(e)),
        },
        Err(r) => r,
    }
}

async fn reverse(AxState(app): AxState<App>, req: Request) -> Response {
    match parse::<ReverseRequest>(req).await {
        Ok(b) => match app.engines.reverse(b).await {
            Ok((state, report)) => (
                StatusCode::OK,
                Json(ApiOk {
                    ok: true,
                    state,
                    preflight: Some(Box::new(report)),
                }),
            )
                .into_response(),
            Err(CommandError::Preflight(report)) => (
                StatusCode::CONFLICT,
                Json(StartRefused {
                    ok: false,
                    error: report.summary.clone(),
                    preflight: *report,
                }),
            )
                .into_response(),
            Err(e) => outcome(Err(e)),
        },
        Err(r) => r,
    }
}

async fn pause(AxState(app): AxState<App>, req: Request) -> Response {
    match parse::<serde_json::Map<String, serde_json::Value>>(req).await {
        Ok(m) if m.is_empty() => outcome(app.engine().pause().await),
        Ok(_) => error(StatusCode::BAD_REQUEST, "pause takes no parameters".into()),
        Err(r) => r,
    }
}

async fn resume(AxState(app): AxState<App>, req: Request) -> Response {
    match parse::<ResumeRequest>(req).await {
        Ok(b) => outcome(app.engine().resume(b.from_failure).await),
        Err(r) => r,
    }
}

async fn finalize(AxState(app): AxState<App>, req: Request) -> Response {
    match parse::<FinalizeRequest>(req).await {
        Ok(b) => outcome(app.engine().finalize(b).await),
        Err(r) => r,
    }
}

async fn status(AxState(app): AxState<App>) -> Response {
    Json(app.engine().status().await).into_response()
}

async fn readyz(AxState(app): AxState<App>) -> Response {
    // Ready once the job is loaded from the target (or the failure to load it is known).
    if app.engines.forward().is_ready() {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "connecting to the source and target",
        )
            .into_response()
    }
}

async fn metrics(AxState(app): AxState<App>) -> Response {
    app.engine().refresh_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.engine().ctx().metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_query() {
        let q = parse_preflight_query(
            "include=app.*&include=%2Fx%5C.y%2F&exclude=app.tmp&dropTargetNamespaces=true&throughputMbps=2.5",
        )
        .expect("valid");
        assert_eq!(
            q.include,
            Some(vec!["app.*".to_string(), "/x\\.y/".to_string()])
        );
        assert_eq!(q.exclude, Some(vec!["app.tmp".to_string()]));
        assert_eq!(q.drop_target_namespaces, Some(true));
        assert_eq!(q.throughput_mbps, Some(2.5));
        assert!(!q.reset);
        let empty = parse_preflight_query("").expect("empty");
        assert!(empty.include.is_none() && empty.drop_target_namespaces.is_none());
        assert!(parse_preflight_query("throughputMbps=0").is_err());
        assert!(parse_preflight_query("dropTargetNamespaces=maybe").is_err());
        assert!(parse_preflight_query("bogus=1").is_err());
        assert!(parse_preflight_query("reset").expect("flag").reset);
    }
}
