//! Types shared by the worker's HTTP API, its CLI client and the operator.

pub mod crd;
pub mod crd_reference;
pub mod preflight_report;
pub mod status;

pub use preflight_report::*;
pub use status::*;
