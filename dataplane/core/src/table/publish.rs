//! Publication of snapshots to the workers, lock-free for the readers.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{Snapshot, TableError, TableSpec};

/// The current snapshot, readable by any number of workers without locks, replaced whole by
/// the control thread.
///
/// Why `arc-swap`: a worker's `load` is a few atomic operations on a thread-local debt slot,
/// never blocks, and never waits for writers; the old snapshot is freed when the last batch
/// that loaded it drops its guard, with no epoch bookkeeping in the worker loop (crossbeam-
/// epoch would need every worker to pin and periodically unpin). Writers serialise on a mutex
/// that readers never touch, so generations are strictly increasing.
#[derive(Debug)]
pub struct SnapshotCell {
    current: ArcSwap<Snapshot>,
    writer: Mutex<()>,
}

impl SnapshotCell {
    pub fn new(initial: Snapshot) -> Self {
        SnapshotCell { current: ArcSwap::from_pointee(initial), writer: Mutex::new(()) }
    }

    /// The snapshot in force now; hold it for one batch.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// A counted reference to the snapshot in force, for holders that outlive a batch.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot from `spec` with the next generation, endpoints keeping their slots
    /// ([`Snapshot::build_next`]), and publishes it. On error the snapshot in force stays and
    /// the error names the offending entry.
    pub fn update(&self, spec: &TableSpec) -> Result<u64, TableError> {
        let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let next = Snapshot::build_next(spec, &self.current.load())?;
        let generation = next.generation();
        self.current.store(Arc::new(next));
        Ok(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::snapshot::tests::good;

    #[test]
    fn rejected_update_keeps_the_snapshot_in_force() {
        let cell = SnapshotCell::new(Snapshot::build(&good(), 1).unwrap());
        let mut bad = good();
        bad.nodes[1].vtep_mac = None;
        assert!(matches!(cell.update(&bad), Err(TableError::MissingVtepMac { .. })));
        assert_eq!(cell.load().generation(), 1);
        assert_eq!(cell.load().nodes().len(), 2);
        let mut next = good();
        next.endpoints.pop();
        assert_eq!(cell.update(&next).unwrap(), 2);
        assert_eq!(cell.load().endpoint_count(), 1);
        // A reader holding the old snapshot keeps it, unchanged, until it lets go.
        let held = cell.load_full();
        cell.update(&good()).unwrap();
        assert_eq!(held.generation(), 2);
        assert_eq!(cell.load().generation(), 3);
    }
}
