//! HTTP client of one worker's API (bearer token, short timeouts).

use std::time::Duration;

use serde::Serialize;

use crate::api::{ApiError, ApiOk, PreflightReport, StartRefused, WorkerStatus};

use super::decide::WorkerCall;
use super::error::{Error, Result};

pub struct WorkerClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// What a state-changing call answered, with the preflight report a start was judged by.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    Accepted {
        preflight: Option<Box<PreflightReport>>,
    },
    /// 409: the worker refused the transition (the message says why).
    Refused {
        message: String,
        preflight: Option<Box<PreflightReport>>,
    },
}

impl WorkerClient {
    pub fn new(http: reqwest::Client, ip: &str, port: i32, token: String) -> Self {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        WorkerClient {
            http,
            base: format!("http://{host}:{port}"),
            token,
        }
    }

    pub fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default()
    }

    pub async fn status(&self) -> Result<WorkerStatus> {
        let url = format!("{}/status", self.base);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let code = resp.status();
        if !code.is_success() {
            return Err(Error::WorkerHttp {
                call: "status",
                status: code.as_u16(),
                detail: error_text(resp).await,
            });
        }
        resp.json::<WorkerStatus>()
            .await
            .map_err(|e| self.unreachable(e))
    }

    pub async fn call(&self, c: &WorkerCall) -> Result<CallOutcome> {
        match c {
            WorkerCall::Start(r) => self.post("start", "/start", r).await,
            WorkerCall::Pause => self.post("pause", "/pause", &serde_json::json!({})).await,
            WorkerCall::Resume { from_failure } => {
                let body = crate::api::ResumeRequest {
                    from_failure: *from_failure,
                };
                self.post("resume", "/resume", &body).await
            }
            WorkerCall::Finalize(r) => self.post("finalize", "/finalize", r).await,
        }
    }

    async fn post<T: Serialize>(
        &self,
        call: &'static str,
        path: &str,
        body: &T,
    ) -> Result<CallOutcome> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if code.is_success() {
            let preflight = serde_json::from_str::<ApiOk>(&text)
                .ok()
                .and_then(|ok| ok.preflight);
            return Ok(CallOutcome::Accepted { preflight });
        }
        if code == reqwest::StatusCode::CONFLICT {
            if let Ok(r) = serde_json::from_str::<StartRefused>(&text) {
                return Ok(CallOutcome::Refused {
                    message: r.error,
                    preflight: Some(Box::new(r.preflight)),
                });
            }
            return Ok(CallOutcome::Refused {
                message: error_message(text),
                preflight: None,
            });
        }
        let detail = error_message(text);
        Err(Error::WorkerHttp {
            call,
            status: code.as_u16(),
            detail,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> Error {
        Error::WorkerUnreachable {
            url: self.base.clone(),
            detail: e.to_string(),
        }
    }
}

async fn error_text(resp: reqwest::Response) -> String {
    error_message(resp.text().await.unwrap_or_default())
}

fn error_message(text: String) -> String {
    serde_json::from_str::<ApiError>(&text)
        .map(|e| e.error)
        .unwrap_or(text)
}
