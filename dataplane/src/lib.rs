//! podlane's dataplane: the I/O and the daemon around [`podlane_core`]'s pipeline, replacing
//! the kernel VXLAN device on a Kubernetes node.
//!
//! * [`io`] — AF_XDP sockets, XDP programs, rtnetlink: the one module allowed `unsafe`, in
//!   `io::sys` (system calls) and `io::xsk` (memory shared with the kernel).
//! * [`daemon`] — `podlane-dataplane`: start-up, the pinned workers that move frames between
//!   sockets through the pipeline, the control socket, next-hop resolution, shutdown.
//! * [`cni`] — `podlane-cni`, the CNI plugin that wires pods into podlane (it shares `io`'s
//!   namespace, TAP and rtnetlink primitives).
//!
//! The logic without I/O (wire formats, tables, the pipeline, the control protocol) is the
//! `podlane-core` crate; users of both name it there.

// Within this crate, `crate::table` etc. name the core's modules.
use podlane_core::{api, engine, table, wire};

pub mod cni;
pub mod daemon;
pub mod io;
