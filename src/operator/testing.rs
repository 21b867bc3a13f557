//! Test support for the operator's I/O: a fake API server behind a real `kube::Client` (a
//! tower `service_fn` in place of the HTTP connection), a fake worker API (axum on loopback),
//! and builders of the objects observation reads. The fake API server records every request and answers from a small in-memory
//! reading of the request; tests assert on the requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{Request, Response};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};

use crate::api::crd::{MigrationJob, MigrationJobSpec};
use crate::api::WorkerStatus;

use super::cache::{testing::cache, Cache};
use super::context::{Context, Shared};
use super::decide::{CredentialsObs, Observed, WorkerObs};
use super::metrics::Metrics;
use super::podspec;

/// One request the fake API server received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub body: Value,
}

impl Call {
    pub fn is(&self, method: &str, path_part: &str) -> bool {
        self.method == method && self.uri.contains(path_part)
    }
}

/// Decides the answer (status code, body) to a request; `None`: the default answer.
pub type Answer = Box<dyn Fn(&Call) -> Option<(u16, Value)> + Send + Sync>;

/// A `kube::Client` talking to a fake API server, and what it was asked.
pub struct FakeApi {
    pub client: Client,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeApi {
    /// A fake API server answering every request the default way: a create echoes the object
    /// (201), a patch or delete answers an object (200).
    pub fn new() -> FakeApi {
        FakeApi::default()
    }

    /// A fake API server that asks `answer` first.
    pub fn answering(answer: Answer) -> FakeApi {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let answer = Arc::new(answer);
        let service = tower::service_fn(move |request: Request<Body>| {
            let (seen, answer) = (seen.clone(), answer.clone());
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let call = Call {
                    method: parts.method.to_string(),
                    uri: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (code, body) = answer(&call).unwrap_or_else(|| default_answer(&call));
                seen.lock().expect("calls").push(call);
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string().into_bytes()))
            }
        });
        FakeApi {
            client: Client::new(service, "default"),
            calls,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// The Events published (their reasons), in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.uri.contains("/events"))
            .filter_map(|c| c.body["reason"].as_str().map(str::to_string))
            .collect()
    }
}

impl Default for FakeApi {
    fn default() -> FakeApi {
        FakeApi::answering(Box::new(|_| None))
    }
}

fn default_answer(call: &Call) -> (u16, Value) {
    match call.method.as_str() {
        "POST" => (201, call.body.clone()),
        "DELETE" => (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => (200, object_for(call)),
    }
}

/// An object that deserialises as whatever resource the URI names.
fn object_for(call: &Call) -> Value {
    let name = call
        .uri
        .split('?')
        .next()
        .unwrap_or_default()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>();
    let obj = name
        .iter()
        .position(|s| *s == "migrationjobs" || *s == "pods" || *s == "secrets" || *s == "events")
        .and_then(|i| name.get(i + 1))
        .copied()
        .unwrap_or("x");
    json!({"metadata": {"name": obj, "namespace": "shop"}, "spec": {
        "source": {"uri": "mongodb://a:1"}, "target": {"uri": "mongodb://b:1"}}})
}

/// A job with its finalizer, token Secret and credentials, no pod yet, the worker not asked,
/// nothing pending: tests change what they are about.
pub fn observed() -> Observed {
    Observed {
        deleting: false,
        deleting_for: std::time::Duration::ZERO,
        has_finalizer: true,
        token_secret: true,
        credentials: CredentialsObs::Ready { hash: "c".into() },
        pod: None,
        worker: WorkerObs::NotAsked,
        retry_annotation: None,
        handled_retry: None,
        reset_annotation: None,
        handled_reset: None,
        failed_for: None,
        preflight_hold: None,
        reverse: None,
        reversed_by: None,
    }
}

/// An API error answer (`Status`), e.g. 409 AlreadyExists or 404 NotFound.
pub fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": reason, "reason": reason, "code": code}),
    )
}

/// A context over the fake API server and these cached pods and Secrets; the worker API is
/// looked for on `worker_port`.
pub fn context(api: &FakeApi, pods: Vec<Pod>, secrets: Vec<Secret>, worker_port: u16) -> Context {
    context_with(api, cache(pods, secrets), worker_port)
}

pub fn context_with(api: &FakeApi, cache: Cache, worker_port: u16) -> Context {
    let reporter = Reporter {
        controller: "mongoferry-operator".into(),
        instance: Some("test".into()),
    };
    let shared = Shared {
        client: api.client.clone(),
        recorder: Recorder::new(api.client.clone(), reporter),
        metrics: Arc::new(Metrics::new().expect("metrics")),
        http: super::worker_client::WorkerClient::http(),
        worker_image: "mongoferry:test".into(),
        worker_service_account: None,
        worker_port: i32::from(worker_port),
    };
    Context::new(shared, cache)
}

/// MigrationJob `shop/mig` (uid `uid-1`) from `spec` (JSON), with a resourceVersion.
pub fn job(spec: Value) -> MigrationJob {
    let spec: MigrationJobSpec = serde_json::from_value(spec).expect("spec");
    let mut j = MigrationJob::new("mig", spec);
    j.metadata.namespace = Some("shop".into());
    j.metadata.uid = Some("uid-1".into());
    j.metadata.resource_version = Some("41".into());
    j
}

/// A job whose source and target credentials are in Secret `creds`.
pub fn job_with_credentials() -> MigrationJob {
    job(json!({
        "source": {"uri": "mongodb://a:1", "credentialsSecretRef": {"name": "creds"}},
        "target": {"uri": "mongodb://b:1", "credentialsSecretRef": {"name": "creds"}}
    }))
}

pub fn owner(uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "mongoferry.io/v1alpha1".into(),
        kind: "MigrationJob".into(),
        name: "mig".into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The worker pod of `shop/mig`, owned by `owner_uid`, in `phase` at 127.0.0.1.
pub fn worker_pod(owner_uid: &str, phase: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(podspec::pod_name("mig"));
    p.metadata.namespace = Some("shop".into());
    p.metadata.owner_references = Some(vec![owner(owner_uid)]);
    p.status = Some(PodStatus {
        phase: Some(phase.into()),
        pod_ip: Some("127.0.0.1".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: podspec::CONTAINER.into(),
            restart_count: 1,
            ..Default::default()
        }]),
        ..Default::default()
    });
    p
}

/// Secret `name` of namespace `shop` with `data`.
pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("shop".into());
    s.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    s
}

/// The API token Secret of `shop/mig` holding `token`.
pub fn token_secret(token: &str) -> Secret {
    secret(
        &podspec::token_secret_name("mig"),
        &[(podspec::TOKEN_KEY, token)],
    )
}

/// What the fake worker was asked, and how it answers.
#[derive(Default)]
pub struct WorkerState {
    /// `METHOD /path` of every request, in order.
    pub calls: Vec<String>,
    /// The bearer token of every request.
    pub tokens: Vec<String>,
    /// Answers by `METHOD /path` (default: 200 `{"ok": true, "state": "running"}`).
    pub answers: HashMap<String, (u16, Value)>,
    pub status: WorkerStatus,
}

/// A worker API on 127.0.0.1 (an ephemeral port): its port and its shared state.
pub async fn fake_worker(status: WorkerStatus) -> (u16, Arc<Mutex<WorkerState>>) {
    let state = Arc::new(Mutex::new(WorkerState {
        status,
        ..Default::default()
    }));
    let app = Router::new()
        .route("/status", get(worker_status))
        .route("/{call}", post(worker_call))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, state)
}

fn note(state: &Mutex<WorkerState>, call: String, headers: &HeaderMap) {
    let mut s = state.lock().expect("worker state");
    s.calls.push(call);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_start_matches("Bearer ")
        .to_string();
    s.tokens.push(token);
}

async fn worker_status(
    State(state): State<Arc<Mutex<WorkerState>>>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    note(&state, "GET /status".into(), &headers);
    let s = state.lock().expect("worker state");
    if let Some((code, body)) = s.answers.get("GET /status") {
        return (
            StatusCode::from_u16(*code).expect("code"),
            Json(body.clone()),
        );
    }
    (
        StatusCode::OK,
        Json(serde_json::to_value(&s.status).expect("status json")),
    )
}

async fn worker_call(
    State(state): State<Arc<Mutex<WorkerState>>>,
    Path(call): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let key = format!("POST /{call}");
    note(&state, key.clone(), &headers);
    let s = state.lock().expect("worker state");
    let (code, body) = s
        .answers
        .get(&key)
        .cloned()
        .unwrap_or((200, json!({"ok": true, "state": "running"})));
    (StatusCode::from_u16(code).expect("code"), Json(body))
}
