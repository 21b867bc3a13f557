//! `worker-standin`: a stand-in for `mongoferry worker` in measurements of the operator
//! (`operator-load`): the worker API's control surface without any data. It takes the worker's
//! arguments (only `--listen` matters), keeps the state machine of `/start`, `/pause`,
//! `/resume` and `/finalize`, and answers `GET /status` with a status document of the worker's
//! shape whose figures do not move. No database is touched. The pod runner plays it for the
//! image `mongoferry-standin`; it accepts any API token.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

fn listen_addr() -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "127.0.0.1:2242".into())
}

fn status(state: &str) -> Value {
    let replicating = state == "running";
    json!({
        "ok": true,
        "state": state,
        "phase": if replicating { Value::from("replicating") } else { Value::Null },
        "info": "worker stand-in (operator-load): no data is moved",
        "error": null,
        "lagTimeSeconds": if replicating { Value::from(0.0) } else { Value::Null },
        "eventsRead": 0,
        "eventsApplied": 0,
        "lastReplicatedOpTime": null,
        "checkpoint": null,
        "initialSync": {
            "completed": state != "idle",
            "cloneCompleted": state != "idle",
            "estimatedCloneSizeBytes": 0,
            "clonedSizeBytes": 0,
            "estimatedDocuments": 0,
            "clonedDocuments": 0,
            "collectionsTotal": 0,
            "collectionsCompleted": 0,
            "etaSeconds": null
        },
        "finalization": null,
        "warnings": []
    })
}

type Shared = Arc<Mutex<String>>;

async fn get_status(State(s): State<Shared>) -> Json<Value> {
    let state = s
        .lock()
        .map(|g| g.clone())
        .unwrap_or_else(|_| "idle".into());
    Json(status(&state))
}

async fn call(State(s): State<Shared>, Path(verb): Path<String>) -> (StatusCode, Json<Value>) {
    let Ok(mut state) = s.lock() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"ok": false})),
        );
    };
    let next = match (verb.as_str(), state.as_str()) {
        ("start", "idle" | "paused") | ("resume", "paused") => "running",
        ("pause", "running") => "paused",
        ("finalize", "running" | "paused") => "finalized",
        _ => {
            let error = format!("{verb} is not possible in state {state}");
            return (
                StatusCode::CONFLICT,
                Json(json!({"ok": false, "error": error})),
            );
        }
    };
    *state = next.to_string();
    (StatusCode::OK, Json(json!({"ok": true, "state": next})))
}

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker-standin: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let addr = listen_addr();
    let state: Shared = Arc::new(Mutex::new("idle".into()));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/status", get(get_status))
        .route("/{verb}", post(call))
        .with_state(state);
    let r = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("worker-standin: listening on {addr}");
        axum::serve(listener, app).await
    });
    if let Err(e) = r {
        eprintln!("worker-standin: {e}");
        std::process::exit(1);
    }
}
