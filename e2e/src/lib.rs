//! Test harnesses shared by the end-to-end suites.

pub mod certs;
pub mod compare;
pub mod controlplane;
pub mod faultproxy;
pub mod faults;
pub mod fixtures;
pub mod kubectl;
pub mod proc;
pub mod servers;
pub mod transfers;
pub mod wait;
pub mod worker;
pub mod workload;
