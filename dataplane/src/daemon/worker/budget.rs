//! How a worker's UMEM chunks are shared, so that neither the uplink nor any pod can take
//! them all. A chunk is on a fill ring (waiting for a frame), on an RX ring or in a burst
//! being processed, waiting to be transmitted, or on a TX ring; only the fill rings and the
//! waiting frames grow with load, so those two are bounded:
//!
//! * Fill rings together hold at most half of a UMEM. In a UMEM shared by the uplink and the
//!   pods, the uplink's queues share one quarter and the pods the other; a UMEM of the
//!   uplink's own (zero-copy) gives its queues the whole half, a UMEM of the pods' own gives
//!   them the whole half.
//! * Each uplink queue keeps an equal part of the uplink's share, between [`FILL_MIN`] and the
//!   ring size: 4,096 on one queue of the default UMEM, 2,048 on two, 128 on 32.
//! * Every pod socket is guaranteed a minimum: its share of half the pods' part, between
//!   [`FILL_MIN`] and the ring size (1,024 each for two pods of the default UMEM, 64 for 32).
//!   The minimum is not the pod's usual burst but what arrives while its worker is away: a
//!   worker held off its core for a millisecond meets hundreds of a busy pod's frames, and a
//!   fill level cut down to the usual burst (32 frames from a paced sender) loses them
//!   (measured: `fill_ring_empty` drops at a quarter of the zero-loss rate).
//!   A pod whose burst takes half its level doubles it as long as the pods' part has room;
//!   once a second, a pod whose largest burst used less than a quarter of its level halves it,
//!   down to the minimum, and when new pods left the part over-committed, levels above the
//!   minimum halve whatever their bursts. A busy pod gets what idle pods do not use and gives
//!   it back when it calms down; a pod that floods on purpose gets no more than the part, and
//!   every other pod keeps its minimum.
//! * Frames waiting for room on TX rings are limited to a quarter of the worker's chunks, all
//!   ports together; beyond that they are dropped and counted (`tx_dropped`).

/// The smallest fill level of any socket.
pub(super) const FILL_MIN: u32 = 16;

/// A worker's fill and pending limits.
#[derive(Debug, Clone)]
pub(super) struct Budget {
    /// Each uplink queue's fill level.
    pub(super) uplink_fill: u32,
    /// Chunks all pod fill rings together may hold.
    pub(super) pod_part: u32,
    /// The sum of the pod sockets' fill levels.
    pub(super) pod_committed: u32,
    /// Pod sockets counted.
    pub(super) pod_sockets: u32,
    /// The largest fill level of a socket: its ring's size.
    pub(super) ring: u32,
    /// Frames that may wait for TX room, all ports together.
    pub(super) pending_limit: usize,
}

impl Budget {
    /// The budget of a worker with `uplink_queues` queues and UMEMs of `chunks` chunks, one
    /// shared by uplink and pods or one each (`split`), rings of `ring` slots.
    pub(super) fn new(chunks: u32, uplink_queues: u32, split: bool, ring: u32) -> Budget {
        let (uplink_part, pod_part) =
            if split { (chunks / 2, chunks / 2) } else { (chunks / 4, chunks / 4) };
        let uplink_fill = (uplink_part / uplink_queues.max(1)).clamp(FILL_MIN, ring);
        let total = if split { 2 * chunks } else { chunks };
        Budget {
            uplink_fill,
            pod_part,
            pod_committed: 0,
            pod_sockets: 0,
            ring,
            pending_limit: (total / 4) as usize,
        }
    }

    /// The guaranteed fill level of each pod socket, with `sockets` of them.
    pub(super) fn pod_minimum(&self, sockets: u32) -> u32 {
        // Half the part for minimums, half to grow into.
        (self.pod_part / 2 / sockets.max(1)).clamp(FILL_MIN, self.ring)
    }

    /// A new pod socket's fill level: its minimum, or what the part has left (at least
    /// [`FILL_MIN`]); the worker then [`Budget::trim_pod`]s and [`Budget::lift_pod`]s every
    /// pod's level.
    pub(super) fn admit_pod(&mut self) -> u32 {
        self.pod_sockets += 1;
        let minimum = self.pod_minimum(self.pod_sockets);
        let level = minimum.min(self.pod_part.saturating_sub(self.pod_committed)).max(FILL_MIN);
        self.pod_committed += level;
        level
    }

    /// After a pod joined: while the part is over-committed, a level above the minimum of
    /// today's number of pods comes down to it (chunks already on the ring stay there until
    /// frames use them; the ring is just not topped up past the new level).
    pub(super) fn trim_pod(&mut self, level: u32) -> u32 {
        let minimum = self.pod_minimum(self.pod_sockets);
        if self.pod_committed <= self.pod_part || level <= minimum {
            return level;
        }
        self.pod_committed = self.pod_committed - level + minimum;
        minimum
    }

    /// A level below the minimum (given when the part was short) rises to it once the part
    /// has room.
    pub(super) fn lift_pod(&mut self, level: u32) -> u32 {
        let minimum = self.pod_minimum(self.pod_sockets);
        let others = self.pod_committed.saturating_sub(level);
        if level >= minimum || others + minimum > self.pod_part {
            return level;
        }
        self.pod_committed = others + minimum;
        minimum
    }

    /// A pod socket with this fill level is gone.
    pub(super) fn remove_pod(&mut self, level: u32) {
        self.pod_sockets = self.pod_sockets.saturating_sub(1);
        self.pod_committed = self.pod_committed.saturating_sub(level);
    }

    /// After a burst of `frames` on a pod socket at fill level `level`: its new level.
    pub(super) fn after_pod_burst(&mut self, level: u32, frames: u32) -> u32 {
        let grown = (level * 2).min(self.ring);
        if frames * 2 >= level
            && grown > level
            && self.pod_committed + (grown - level) <= self.pod_part
        {
            self.pod_committed += grown - level;
            grown
        } else {
            level
        }
    }

    /// Once a second, for a pod socket at `level` whose largest burst since was `largest`:
    /// its new level. Above the minimum it halves (never below the minimum) when it used
    /// less than a quarter, or when the part is over-committed; below the minimum (admitted
    /// when the part was short) it rises to the minimum once the part has room.
    pub(super) fn decay_pod(&mut self, level: u32, largest: u32) -> u32 {
        let minimum = self.pod_minimum(self.pod_sockets);
        let others = self.pod_committed.saturating_sub(level);
        let over = self.pod_committed > self.pod_part;
        if level < minimum {
            return self.lift_pod(level);
        }
        let new = if level > minimum && (over || largest.saturating_mul(4) < level) {
            (level / 2).max(minimum)
        } else {
            level
        };
        self.pod_committed = others + new;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod joins as the worker does it: admitted, then every level trimmed.
    fn admit(budget: &mut Budget, levels: &mut Vec<u32>) {
        levels.push(budget.admit_pod());
        for level in levels.iter_mut() {
            *level = budget.trim_pod(*level);
        }
        for level in levels.iter_mut() {
            *level = budget.lift_pod(*level);
        }
    }

    #[test]
    fn uplink_queues_share_their_part_from_one_to_sixty_four() {
        for (queues, each) in [(1, 4096), (2, 2048), (8, 512), (32, 128), (64, 64)] {
            let budget = Budget::new(16_384, queues, false, 4096);
            assert_eq!(budget.uplink_fill, each, "{queues} queues");
            assert!(budget.uplink_fill * queues <= 16_384 / 4);
        }
        // A zero-copy uplink's own UMEM gives its queues half.
        assert_eq!(Budget::new(16_384, 8, true, 2048).uplink_fill, 1024);
    }

    #[test]
    fn the_default_umem_gives_every_queue_512_or_more_up_to_64() {
        for queues in 1..=64 {
            let chunks = crate::daemon::default_umem_chunks(queues);
            let budget = Budget::new(chunks, queues, false, 2048);
            assert!(budget.uplink_fill >= 512, "{queues} queues, {chunks} chunks: {budget:?}");
        }
        assert_eq!(crate::daemon::default_umem_chunks(1), 16_384);
        assert_eq!(crate::daemon::default_umem_chunks(64), 131_072);
    }

    #[test]
    fn pods_grow_within_their_part_and_decay_when_idle() {
        let mut budget = Budget::new(16_384, 1, false, 2048);
        let mut levels = Vec::new();
        for _ in 0..32 {
            admit(&mut budget, &mut levels);
            assert!(budget.pod_committed <= budget.pod_part, "{budget:?}");
        }
        assert!(levels.iter().all(|&l| l >= FILL_MIN));
        assert!(budget.pod_committed <= budget.pod_part);
        // A second passes: the idle pods come down to their minimum.
        for level in &mut levels {
            *level = budget.decay_pod(*level, 0);
        }
        // Pod 0 floods: it grows as long as the part has room, never past it.
        for _ in 0..20 {
            levels[0] = budget.after_pod_burst(levels[0], 256);
        }
        assert!(levels[0] > budget.pod_minimum(32));
        assert!(budget.pod_committed <= budget.pod_part, "{budget:?}");
        assert_eq!(budget.pod_committed, levels.iter().sum::<u32>());
        // Every other pod keeps at least its minimum.
        let minimum = budget.pod_minimum(32);
        assert!(levels[1..].iter().all(|&l| l >= minimum));
        // The flood stops: a few seconds later pod 0 is back near the others.
        for _ in 0..8 {
            levels[0] = budget.decay_pod(levels[0], 0);
        }
        assert_eq!(levels[0], minimum);
        assert_eq!(budget.pod_committed, levels.iter().sum::<u32>());
    }

    #[test]
    fn a_few_pods_get_levels_that_ride_out_a_stall_and_make_room_for_more() {
        let mut budget = Budget::new(16_384, 1, false, 2048);
        // Two pods of the default UMEM: a millisecond at a million frames a second fits.
        let mut levels = Vec::new();
        admit(&mut budget, &mut levels);
        admit(&mut budget, &mut levels);
        assert!(levels.iter().all(|&l| l >= 1024), "{levels:?}");
        // A burst of 32 every 100 µs keeps them there.
        for level in &mut levels {
            *level = budget.decay_pod(*level, 32);
        }
        assert!(levels.iter().all(|&l| l >= 1024), "{levels:?}");
        // Thirty more pods: the newcomers get what is left, the part is never exceeded for
        // long, and after a few seconds every pod has the minimum of 32 pods.
        for _ in 0..30 {
            admit(&mut budget, &mut levels);
            assert!(budget.pod_committed <= budget.pod_part, "{budget:?}");
        }
        for _ in 0..6 {
            for level in &mut levels {
                *level = budget.decay_pod(*level, 32);
            }
        }
        assert!(budget.pod_committed <= budget.pod_part, "{budget:?}");
        assert_eq!(budget.pod_committed, levels.iter().sum::<u32>());
        let minimum = budget.pod_minimum(32);
        assert!(levels.iter().all(|&l| l >= minimum), "{levels:?}");
    }

    #[test]
    fn many_pods_share_what_there_is() {
        let mut budget = Budget::new(16_384, 1, false, 2048);
        let levels: Vec<u32> = (0..500).map(|_| budget.admit_pod()).collect();
        // 500 minimums of 16 are 8,000: more than the part (4,096). The floor keeps each pod
        // able to receive at all; a node with that many pods wants a larger --umem-chunks.
        assert!(levels.iter().all(|&l| l >= FILL_MIN));
        let mut grown = levels[0];
        grown = budget.after_pod_burst(grown, 1000);
        assert_eq!(grown, levels[0], "no growth beyond the part");
    }
}
