//! podlane's control side: the agent that computes a node's tables from the cluster (a file
//! or the Kubernetes API) and keeps the dataplane in step over its Unix socket, the operator CLI's
//! client and output, and offline checks of tables files.
//!
//! * [`cluster`] — the cluster file (nodes, pods, namespaces, NetworkPolicies) and the
//!   tables of one node computed from it.
//! * [`diff`] — the minimal update between two sets of tables.
//! * [`client`] — the control-socket client ([`podlane_core::api`] is the protocol).
//! * [`kubernetes`] — the Kubernetes API as the cluster: watchers, the translation of its
//!   objects, this node's annotations.
//! * [`agent`] — `podlane agent`: full sync, watch, incremental updates, reconnects.
//! * [`show`] — `podlane show`: tables and counters for people.
//! * [`signals`] — SIGINT/SIGTERM as a request to stop.
//! * [`demo`] — `podlane demo`: a two-node cluster in network namespaces, end to end, built
//!   with the `podlane-testbed` crate (the only part of this crate that uses it).

pub mod agent;
pub mod client;
pub mod cluster;
pub mod demo;
pub mod kubernetes;

pub mod diff;
pub mod show;
pub mod signals;

use std::path::Path;

use podlane_core::table::{Snapshot, TableSpec};

/// Validates a tables file exactly as the dataplane will when it is pushed, and returns a
/// summary of what it holds; the error names the file and the offending entry.
pub fn check_tables(path: &Path) -> anyhow::Result<String> {
    let spec = TableSpec::from_json_file(path)?;
    let snapshot = Snapshot::build(&spec, 1)
        .map_err(|e| anyhow::anyhow!("{}: tables rejected: {e}", path.display()))?;
    Ok(snapshot.summary())
}
