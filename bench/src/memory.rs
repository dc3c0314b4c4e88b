//! What the tables cost in memory: the snapshot's own structural count, and the process's
//! resident set as the kernel reports it (`/proc/self/status`), before and after building.

use std::time::{Duration, Instant};

use podlane_core::table::{Snapshot, TableSpec};

use crate::fixture::{self, ClusterParams};

/// Resident set now and at its peak, in bytes, from `/proc/self/status` (VmRSS, VmHWM).
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One measurement of a synthetic cluster's tables.
#[derive(Debug, Clone)]
pub struct TableMemory {
    pub params: ClusterParams,
    pub routes: usize,
    pub policies: usize,
    pub policy_rules: usize,
    /// Heap bytes of the built snapshot (structural count).
    pub snapshot_bytes: usize,
    /// Compiled policies' share of `snapshot_bytes`.
    pub policy_bytes: usize,
    pub rss_before_spec: u64,
    pub rss_with_spec: u64,
    pub rss_with_snapshot: u64,
    pub peak_rss: u64,
    pub build_time: Duration,
}

/// Generates the cluster's tables, builds the snapshot and measures both.
pub fn measure(params: &ClusterParams) -> Result<TableMemory, podlane_core::table::TableError> {
    let (rss_before_spec, _) = rss();
    let spec: TableSpec = fixture::cluster(params);
    let (rss_with_spec, _) = rss();
    let started = Instant::now();
    let snapshot = Snapshot::build(&spec, 1)?;
    let build_time = started.elapsed();
    let (rss_with_snapshot, peak_rss) = rss();
    let (v4, v6) = snapshot.route_counts();
    Ok(TableMemory {
        params: params.clone(),
        routes: v4 + v6,
        policies: snapshot.policies().len(),
        policy_rules: snapshot.policies().iter().map(|p| p.rule_count()).sum(),
        snapshot_bytes: snapshot.memory_bytes(),
        policy_bytes: snapshot.policies().iter().map(|p| p.memory_bytes()).sum(),
        rss_before_spec,
        rss_with_spec,
        rss_with_snapshot,
        peak_rss,
        build_time,
    })
}
