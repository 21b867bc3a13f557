//! The preflight report: whether a migration can succeed, before it starts (JSON, camelCase).

use serde::{Deserialize, Serialize};

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
        }
    }
}

/// One check: a stable `name` (e.g. `source.privileges`), its verdict, a one-line reason and,
/// unless it passed, what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreflightCheck {
    pub name: String,
    pub status: CheckStatus,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What the copy will move, and how long it should take at the assumed throughput.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreflightEstimate {
    pub bytes: u64,
    pub documents: u64,
    /// Selected collections (views not counted).
    pub collections: u64,
    pub views: u64,
    /// Secondary indexes (`_id` not counted).
    pub indexes: u64,
    /// Assumed copy throughput, in MB/s (1 MB = 10^6 bytes).
    pub throughput_mbps: f64,
    pub copy_seconds: f64,
    /// Selected collections the source did not size within the preflight's time budget (a
    /// server that reads a collection to size it, such as SecantusDB): counted as 0 bytes and
    /// 0 documents, so `bytes`, `documents` and `copySeconds` are lower bounds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unsized_collections: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `GET /preflight`, `mongoferry preflight --json`, and the body of a refused `POST /start`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreflightReport {
    /// No check failed (warnings allowed).
    pub ok: bool,
    pub summary: String,
    pub checks: Vec<PreflightCheck>,
    pub estimate: PreflightEstimate,
}

impl PreflightReport {
    pub fn failed(&self) -> impl Iterator<Item = &PreflightCheck> {
        self.checks.iter().filter(|c| c.status == CheckStatus::Fail)
    }

    pub fn check(&self, name: &str) -> Option<&PreflightCheck> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Body of `POST /start` refused by the preflight (HTTP 409).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartRefused {
    pub ok: bool,
    pub error: String,
    pub preflight: PreflightReport,
}
