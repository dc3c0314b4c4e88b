//! podlane's forwarding logic, free of I/O: everything a node dataplane decides, and the
//! protocol the control process speaks to it, usable without AF_XDP, threads or system calls
//! (the control process, the benchmarks and the fuzzers depend on this crate alone; the
//! `podlane-dataplane` crate adds the I/O).
//!
//! Layers, bottom up (ARCHITECTURE.md has the packet path):
//!
//! * [`wire`] — zero-copy views over frame bytes; never panics on any input.
//! * [`table`] — what the control process pushes ([`table::TableSpec`]), validated and built
//!   into one immutable [`table::Snapshot`], published lock-free to workers.
//! * [`engine`] — the per-batch pipeline: a pure function from frames, ingress port and
//!   snapshot to one verdict per frame. No I/O, no allocation, no lock, no log line per packet.
//! * [`api`] — the control protocol: messages, framing, versioning.
//!
//! Safe Rust only: `unsafe` is forbidden in this crate.

#![forbid(unsafe_code)]

pub mod api;
pub mod engine;
pub mod table;
pub mod wire;
