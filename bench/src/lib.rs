//! podlane's benchmarks: shared fixtures for the criterion micro-benchmarks of the pipeline
//! (`benches/`), the table memory report of `podlane-bench tables`, the full-sync timing of
//! `podlane-bench sync`, and the packet-rate harness `podlane-bench pps` (docs/bench.md):
//! `topology` builds the node and its endpoints, `traffic` the frames and XDP programs,
//! `endpoint` the generator/sink processes, `forward` the bare AF_XDP baseline, `cpu` the
//! /proc/stat accounting, `pps` the trials and searches, `report` the table, JSON and SVG;
//! `tcp` the TCP throughput runs of `podlane-bench tcp`; `control` the attach, detach and
//! next-hop timings of `podlane-bench control`; `soak` the long run under churn of
//! `podlane-bench soak`; `interrupt` how the long runs stop on SIGINT and SIGTERM.

pub mod control;
pub mod cpu;
pub mod endpoint;
pub mod fixture;
pub mod forward;
pub mod interrupt;
pub mod memory;
pub mod pps;
pub mod report;
pub mod soak;
pub mod sync;
pub mod tcp;
pub mod topology;
pub mod traffic;
