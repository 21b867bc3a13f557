//! mongoferry: live MongoDB migrations — the replication engine (`engine`), its HTTP API
//! (`server`), the CLI, and (in later modules) the Kubernetes operator.

pub mod api;
pub mod cli;
pub mod demo;
pub mod engine;
pub mod operator;
pub mod preflight;
pub mod server;
pub mod telemetry;
pub mod worker;

#[cfg(test)]
mod architecture_tests;
#[cfg(test)]
mod chart_tests;
#[cfg(test)]
mod test_support;
