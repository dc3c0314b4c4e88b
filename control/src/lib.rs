//! podlane's control side: today, offline checks of tables files for operators. The agent
//! that computes a node's tables from a cluster description and pushes them to the dataplane
//! over its Unix socket, the `show`/`apply` CLI and `podlane demo` arrive with the control
//! plane and AF_XDP work.

use std::path::Path;

use dataplane::table::{Snapshot, TableSpec};

/// Validates a tables file exactly as the dataplane will when it is pushed, and returns a
/// summary of what it holds; the error names the file and the offending entry.
pub fn check_tables(path: &Path) -> anyhow::Result<String> {
    let spec = TableSpec::from_json_file(path)?;
    let snapshot = Snapshot::build(&spec, 1)
        .map_err(|e| anyhow::anyhow!("{}: tables rejected: {e}", path.display()))?;
    Ok(snapshot.summary())
}
