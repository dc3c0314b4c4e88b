//! podlane's benchmarks: shared fixtures for the criterion micro-benchmarks of the pipeline
//! (`benches/`), the table memory report of `podlane-bench tables`, and the integration tests.
//! The namespace/VM packet-rate harness is a later issue.

pub mod fixture;
pub mod memory;
