//! podlane's benchmarks: shared fixtures for the criterion micro-benchmarks of the pipeline
//! (`benches/`), the table memory report of `podlane-bench tables`, and the integration tests.
//! `podlane-bench sync` times a control-protocol full sync (`sync`). The namespace/VM
//! packet-rate harness is a later issue.

pub mod fixture;
pub mod memory;
pub mod sync;
