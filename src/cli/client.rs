//! The CLI verbs that talk to a worker's HTTP API.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ClientArgs;
use crate::api::{ApiError, State, WorkerStatus};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the worker at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the worker refused: {0}")]
    Refused(String),
    #[error("cannot read the API token file {path}: {detail}")]
    Token { path: String, detail: String },
    #[error("unexpected answer from the worker: {0}")]
    Protocol(String),
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(a: &ClientArgs) -> Result<Self, ClientError> {
        let token = match &a.api_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| ClientError::Token {
                        path: p.display().to_string(),
                        detail: e.to_string(),
                    })?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("MONGOFERRY_API_TOKEN").ok(),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Client {
            base: a.worker.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut rq = self.http.request(method, &url);
        if let Some(t) = &self.token {
            rq = rq.bearer_auth(t);
        }
        if let Some(b) = body {
            rq = rq.json(b);
        }
        let resp = rq.send().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            detail: e.to_string(),
        })?;
        let code = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if !code.is_success() {
            let msg = serde_json::from_str::<ApiError>(&text)
                .map(|e| e.error)
                .unwrap_or(text);
            return Err(ClientError::Refused(format!("{code}: {msg}")));
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(format!("{e}: {text}")))
    }

    pub async fn post<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn status(&self) -> Result<WorkerStatus, ClientError> {
        self.call(reqwest::Method::GET, "/status", None::<&()>)
            .await
    }
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// One line summarising a status (also the bar's message).
pub fn summary(s: &WorkerStatus) -> String {
    let mut parts = vec![format!("state={}", s.state)];
    if let Some(p) = s.phase {
        parts.push(format!(
            "phase={}",
            serde_json::to_string(&p)
                .unwrap_or_default()
                .trim_matches('"')
        ));
    }
    if let Some(l) = s.lag_time_seconds {
        parts.push(format!("lag={l:.1}s"));
    }
    let is = &s.initial_sync;
    if !is.clone_completed && is.estimated_clone_size_bytes > 0 {
        parts.push(format!(
            "copied={}/{}",
            human_bytes(is.cloned_size_bytes),
            human_bytes(is.estimated_clone_size_bytes)
        ));
        if let Some(eta) = is.eta_seconds {
            parts.push(format!("eta={eta:.0}s"));
        }
    }
    parts.push(format!("applied={}", s.events_applied));
    if let Some(e) = &s.error {
        parts.push(format!("error={e}"));
    }
    parts.join("  ")
}

/// Follow a worker with a progress bar until it is finalized or failed.
pub async fn watch(c: &Client, interval: f64) -> Result<WorkerStatus, ClientError> {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {percent:>3}%  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let s = c.status().await?;
        let is = &s.initial_sync;
        let pct = if is.clone_completed {
            100
        } else {
            (is.cloned_size_bytes * 100)
                .checked_div(is.estimated_clone_size_bytes)
                .unwrap_or(0)
                .min(99)
        };
        bar.set_position(pct);
        bar.set_message(summary(&s));
        if matches!(s.state, State::Finalized | State::Failed) {
            bar.finish();
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_secs_f64(interval.max(0.1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let mut s = WorkerStatus {
            state: State::Running,
            lag_time_seconds: Some(1.25),
            ..Default::default()
        };
        s.initial_sync.estimated_clone_size_bytes = 2048;
        s.initial_sync.cloned_size_bytes = 1024;
        let t = summary(&s);
        assert!(
            t.contains("state=running")
                && t.contains("lag=1.2s")
                && t.contains("copied=1.0 KiB/2.0 KiB"),
            "{t}"
        );
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
