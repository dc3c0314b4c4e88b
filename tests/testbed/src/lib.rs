//! podlane's testbed: virtual clusters on one machine, built from network namespaces, for the
//! demo (`podlane demo`), the benchmark harness (`podlane-bench`) and every live test. It is
//! the only place that creates namespaces, links, kernel VXLAN nodes, podlane processes and
//! pods, so that "a node as Flannel programs it" or "a pod as Calico wires it" is written
//! once.
//!
//! * [`netns`] — namespaces that delete themselves, commands inside them, leftovers of killed
//!   runs.
//! * [`link`] — veth pairs and underlays (queues, MTU), a bridged switch, a real NIC lent to a
//!   namespace for a run.
//! * [`kernel`] — a node running the Linux vxlan device exactly as Flannel or Calico program
//!   it, and pods wired into such a node.
//! * [`pod`] — pods wired as Calico wires them (what podlane serves), and traffic between any
//!   two endpoints: ping, TCP and UDP with digests.
//! * [`podlane`] — `podlane-dataplane` inside a node namespace, and `podlane agent` beside it (on a
//!   cluster file or a Kubernetes API server).
//! * [`process`] — child processes that are stopped when dropped, and finding the
//!   workspace's binaries.
//! * [`capture`] — tshark captures on an interface of a namespace.
//! * [`probe`] — the traffic program (`podlane-netprobe`) that runs inside namespaces.
//! * [`services`] — Services as kube-proxy's iptables mode programs a node, and a CNI's
//!   masquerade of traffic leaving the cluster.
//! * [`tables`] — tables for a node, written with the dataplane's own spec types.
//! * [`cluster`] — small ready-made clusters several tests share.
//!
//! Everything is owned: a namespace goes with its devices when dropped, a process is stopped
//! when dropped, so a failing test or an interrupted demo leaves nothing behind. Errors are
//! `anyhow` errors carrying the failed command and its standard error.

pub mod capture;
pub mod cluster;
pub mod kernel;
pub mod link;
pub mod netns;
pub mod pod;
pub mod podlane;
pub mod probe;
pub mod process;
pub mod services;
pub mod tables;

pub use netns::{Netns, is_root, run};
pub use pod::Pod;
pub use process::{Background, Service, binary};

use std::path::{Path, PathBuf};

/// A scratch directory removed when dropped, unique per tag and process.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> anyhow::Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!("podlane-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
