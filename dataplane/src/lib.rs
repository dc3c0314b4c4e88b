//! podlane's dataplane: the forwarding engine that replaces the kernel VXLAN device on a
//! Kubernetes node.
//!
//! Layers, bottom up (ARCHITECTURE.md has the packet path):
//!
//! * [`wire`] — zero-copy views over frame bytes; never panics on any input.
//! * [`table`] — nodes, local endpoints, routes (LPM) and compiled policy, built and validated
//!   into one immutable [`table::Snapshot`] published lock-free to workers.
//! * [`engine`] — the per-batch pipeline: a pure function from frames, ingress port and
//!   snapshot to one verdict per frame. No I/O, no allocation, no lock, no log line per packet.
//!
//! * [`io`] — AF_XDP and XDP: the one module allowed `unsafe`, all of it in `io::sys`.
//!
//! `unsafe` is denied everywhere else.

pub mod api;
pub mod daemon;
pub mod engine;
pub mod io;
pub mod table;
pub mod wire;
