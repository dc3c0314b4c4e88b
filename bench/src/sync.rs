//! Timing of a control-protocol full sync as the dataplane's control thread handles it:
//! the frame's JSON decoded into a `Request`, the tables cloned (the daemon keeps the base
//! apart from the resolved next hops) and built into a snapshot that is published.

use std::time::{Duration, Instant};

use podlane_core::api::{self, Request};
use podlane_core::table::{Snapshot, SnapshotCell, TableSpec};

use crate::fixture::{ClusterParams, full_sync};

/// One timed full sync.
#[derive(Debug, Clone, Copy)]
pub struct SyncRun {
    pub decode: Duration,
    pub apply: Duration,
}

#[derive(Debug)]
pub struct SyncReport {
    pub frame_bytes: usize,
    pub runs: Vec<SyncRun>,
}

/// Encodes the full sync once, then decodes and applies it `runs` times.
pub fn measure(
    params: &ClusterParams,
    endpoints: usize,
    runs: usize,
) -> anyhow::Result<SyncReport> {
    let spec = full_sync(params, endpoints);
    let mut frame = Vec::new();
    api::write_frame(&mut frame, &Request::FullSync { tables: spec })?;
    let cell = SnapshotCell::new(Snapshot::build(&minimal(), 0)?);
    let mut report = SyncReport { frame_bytes: frame.len(), runs: Vec::new() };
    for _ in 0..runs {
        let start = Instant::now();
        let request: Request = api::read_frame(&frame[..])?;
        let decode = start.elapsed();
        let Request::FullSync { tables } = request else { anyhow::bail!("not a full sync") };
        let start = Instant::now();
        let effective = tables.clone();
        cell.update(&effective)?;
        let apply = start.elapsed();
        report.runs.push(SyncRun { decode, apply });
    }
    Ok(report)
}

/// The smallest valid tables: one node.
fn minimal() -> TableSpec {
    serde_json::from_str(
        r#"{"local_node": "x", "nodes": [{"name": "x", "underlay": "10.0.0.1", "vtep_mac": "0a:00:00:00:00:01"}]}"#,
    )
    .expect("valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small scale: the measurement runs and the synced tables are the ones built.
    #[test]
    fn a_small_full_sync_decodes_and_applies() {
        let params =
            ClusterParams { nodes: 20, rules_per_policy: 5, ..ClusterParams::memory_target() };
        let report = measure(&params, 500, 2).unwrap();
        assert_eq!(report.runs.len(), 2);
        assert!(report.frame_bytes > 500 * 100);
    }
}
