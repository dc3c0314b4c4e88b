//! Tables for a testbed node, written with the dataplane's own spec types
//! ([`podlane_core::table`]) in the JSON encoding `podlane-dataplane --tables` reads.

use std::path::Path;

use podlane_core::table::{NodeSpec, TableSpec};

use crate::pod::Pod;

/// A node entry: its name, underlay address, VTEP MAC and one pod CIDR.
pub fn node(
    name: &str,
    underlay: &str,
    vtep_mac: &str,
    pod_cidr: &str,
) -> anyhow::Result<NodeSpec> {
    Ok(NodeSpec {
        name: name.to_owned(),
        underlay: underlay.parse().map_err(|e| anyhow::anyhow!("node {name}: {e}"))?,
        vtep_mac: Some(vtep_mac.parse().map_err(|e| anyhow::anyhow!("node {name}: {e}"))?),
        next_hop_mac: None,
        pod_cidrs: vec![pod_cidr.parse().map_err(|e| anyhow::anyhow!("node {name}: {e}"))?],
        tunnel_ips: Vec::new(),
    })
}

/// A node entry with several pod CIDRs (dual stack: one per family).
pub fn node_with_cidrs(
    name: &str,
    underlay: &str,
    vtep_mac: &str,
    pod_cidrs: &[&str],
) -> anyhow::Result<NodeSpec> {
    let mut node = node(name, underlay, vtep_mac, pod_cidrs.first().copied().unwrap_or_default())?;
    node.pod_cidrs = pod_cidrs
        .iter()
        .map(|c| c.parse().map_err(|e| anyhow::anyhow!("node {name}: {e}")))
        .collect::<anyhow::Result<_>>()?;
    Ok(node)
}

/// The tables of node `local`: every node, and `pods` as its endpoints.
pub fn for_node(local: &str, nodes: &[NodeSpec], pods: &[&Pod]) -> anyhow::Result<TableSpec> {
    Ok(TableSpec {
        local_node: local.to_owned(),
        nodes: nodes.to_vec(),
        endpoints: pods.iter().map(|p| p.endpoint()).collect::<anyhow::Result<_>>()?,
        policies: Vec::new(),
    })
}

/// Writes tables to `path`.
pub fn write(path: &Path, tables: &TableSpec) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(tables)?;
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}
