//! The worker's HTTP API: control verbs, status, health and Prometheus metrics.
//!
//! JSON in and out; a refused transition is 409, a malformed body 400, a missing or wrong
//! token 401 (every endpoint but `/healthz` and `/readyz` needs it when one is configured).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State as AxState};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::api::{ApiError, ApiOk, FinalizeRequest, ResumeRequest, StartRequest, State};
use crate::engine::{CommandError, Engine};

#[derive(Clone)]
struct App {
    engine: Engine,
    token: Option<Arc<String>>,
}

pub fn router(engine: Engine, token: Option<String>) -> Router {
    let app = App {
        engine,
        token: token.map(Arc::new),
    };
    let guarded = Router::new()
        .route("/start", post(start))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/finalize", post(finalize))
        .route("/status", get(status))
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
        Ok(state) => (StatusCode::OK, Json(ApiOk { ok: true, state })).into_response(),
        Err(CommandError::Conflict(m)) => error(StatusCode::CONFLICT, m),
        Err(CommandError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(CommandError::Internal(m)) => error(StatusCode::SERVICE_UNAVAILABLE, m),
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
        Ok(b) => outcome(app.engine.start(b).await),
        Err(r) => r,
    }
}

async fn pause(AxState(app): AxState<App>, req: Request) -> Response {
    match parse::<serde_json::Map<String, serde_json::Value>>(req).await {
        Ok(m) if m.is_empty() => outcome(app.engine.pause().await),
        Ok(_) => error(StatusCode::BAD_REQUEST, "pause takes no parameters".into()),
        Err(r) => r,
    }
}

async fn resume(AxState(app): AxState<App>, req: Request) -> Response {
    match parse::<ResumeRequest>(req).await {
        Ok(b) => outcome(app.engine.resume(b.from_failure).await),
        Err(r) => r,
    }
}

async fn finalize(AxState(app): AxState<App>, req: Request) -> Response {
    match parse::<FinalizeRequest>(req).await {
        Ok(b) => outcome(app.engine.finalize(b).await),
        Err(r) => r,
    }
}

async fn status(AxState(app): AxState<App>) -> Response {
    Json(app.engine.status().await).into_response()
}

async fn readyz(AxState(app): AxState<App>) -> Response {
    // Ready once the job is loaded from the target (or the failure to load it is known).
    if app.engine.is_ready() {
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.engine.ctx().metrics.render(),
    )
        .into_response()
}
