//! Test harnesses shared by the end-to-end suites.

pub mod compare;
pub mod controlplane;
pub mod faultproxy;
pub mod faults;
pub mod servers;
pub mod worker;
pub mod workload;
