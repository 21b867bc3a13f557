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
            WorkerCall::Reverse(r) => self.post("reverse", "/reverse", r).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FinalizeRequest, StartRequest, State, VerifyMode};
    use crate::operator::testing::fake_worker;
    use serde_json::json;

    fn client(port: u16, token: &str) -> WorkerClient {
        WorkerClient::new(
            WorkerClient::http(),
            "127.0.0.1",
            i32::from(port),
            token.into(),
        )
    }

    #[test]
    fn base_url_brackets_ipv6() {
        let c = WorkerClient::new(reqwest::Client::new(), "fd00::7", 2242, "t".into());
        assert_eq!(c.base, "http://[fd00::7]:2242");
        let c = WorkerClient::new(reqwest::Client::new(), "10.0.0.7", 2242, "t".into());
        assert_eq!(c.base, "http://10.0.0.7:2242");
    }

    #[tokio::test]
    async fn status_is_read_with_the_bearer_token() {
        let (port, worker) = fake_worker(WorkerStatus {
            ok: false,
            state: State::Failed,
            error: Some("the target belongs to shop/first".into()),
            failure_reason: Some("TargetInUse".into()),
            ..Default::default()
        })
        .await;
        let s = client(port, "tok").status().await.expect("status");
        assert_eq!(s.state, State::Failed);
        assert_eq!(s.failure_reason.as_deref(), Some("TargetInUse"));
        let w = worker.lock().expect("worker");
        assert_eq!(
            (w.calls.as_slice(), w.tokens.as_slice()),
            (&["GET /status".to_string()][..], &["tok".to_string()][..])
        );
    }

    #[tokio::test]
    async fn status_errors_say_what_answered() {
        let (port, worker) = fake_worker(WorkerStatus::default()).await;
        worker.lock().expect("worker").answers.insert(
            "GET /status".into(),
            (
                401,
                json!({"ok": false, "error": "a bearer token is required"}),
            ),
        );
        match client(port, "wrong").status().await {
            Err(Error::WorkerHttp {
                call,
                status,
                detail,
            }) => {
                assert_eq!((call, status), ("status", 401));
                assert_eq!(detail, "a bearer token is required");
            }
            other => panic!("{other:?}"),
        }
        worker
            .lock()
            .expect("worker")
            .answers
            .insert("GET /status".into(), (200, json!({"not": "a status"})));
        assert!(matches!(
            client(port, "t").status().await,
            Err(Error::WorkerUnreachable { .. })
        ));
        match client(1, "t").status().await {
            Err(e @ Error::WorkerUnreachable { .. }) => {
                assert!(e.to_string().contains("http://127.0.0.1:1"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn calls_post_their_bodies_and_read_the_outcome() {
        let (port, worker) = fake_worker(WorkerStatus::default()).await;
        let c = client(port, "t");
        let accepted = c
            .call(&WorkerCall::Start(StartRequest {
                include_namespaces: vec!["app.*".into()],
                ..Default::default()
            }))
            .await
            .expect("start");
        assert_eq!(accepted, CallOutcome::Accepted { preflight: None });
        for call in [
            WorkerCall::Pause,
            WorkerCall::Resume { from_failure: true },
            WorkerCall::Finalize(FinalizeRequest {
                verify: VerifyMode::Counts,
                block_source_writes: false,
            }),
        ] {
            c.call(&call).await.expect("call");
        }
        assert_eq!(
            worker.lock().expect("worker").calls,
            vec![
                "POST /start",
                "POST /pause",
                "POST /resume",
                "POST /finalize"
            ]
        );
        // 409 with a plain error: refused with its message.
        worker.lock().expect("worker").answers.insert(
            "POST /resume".into(),
            (
                409,
                json!({"ok": false, "error": "target in use by shop/first"}),
            ),
        );
        assert_eq!(
            c.call(&WorkerCall::Resume {
                from_failure: false
            })
            .await
            .expect("resume"),
            CallOutcome::Refused {
                message: "target in use by shop/first".into(),
                preflight: None
            }
        );
        // Another status code is an error naming the call.
        worker.lock().expect("worker").answers.insert(
            "POST /pause".into(),
            (500, json!({"ok": false, "error": "boom"})),
        );
        match c.call(&WorkerCall::Pause).await {
            Err(Error::WorkerHttp {
                call,
                status,
                detail,
            }) => assert_eq!((call, status, detail.as_str()), ("pause", 500, "boom")),
            other => panic!("{other:?}"),
        }
    }
}
