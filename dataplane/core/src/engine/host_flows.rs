//! Flows that went through the node's kernel, whose replies must go back through it.
//!
//! A pod's connection to a Service leaves the pod for the host interface, kube-proxy's DNAT in
//! the node's kernel rewrites its destination to a backend pod, and the kernel routes it back
//! into the overlay: the dataplane then sees a packet from a local pod to the backend. The
//! backend answers the pod directly — and that answer must not be delivered as it is: only the
//! kernel, whose conntrack holds the translation, can give it the Service's address back. So
//! for every packet the host interface hands over with a local pod as its source, the
//! dataplane remembers the flow (the pod's end, the other end, the protocol), and a packet of
//! the reverse direction on its way to that pod goes to the host interface instead, where the
//! kernel un-DNATs it and routes it to the pod through the overlay again. Symmetric by
//! construction: whatever way a flow's first direction took, its replies take back.
//!
//! The table belongs to the worker that owns the pod (the I/O layer brings both directions
//! there), is bounded, and forgets a flow after [`IDLE_TIMEOUT_NS`] without a packet either way;
//! expired entries are swept a few at a time as new ones arrive, never all at once (each
//! insertion looks at the next few flows in a round-robin line).

use std::collections::VecDeque;
use std::net::IpAddr;

use crate::table::{EndpointId, FastMap};

/// A flow is forgotten after this long without a packet (either way): longer than any
/// keep-alive kube-proxy's conntrack entries would survive without.
pub(super) const IDLE_TIMEOUT_NS: u64 = 300 * 1_000_000_000;
/// Flows remembered per worker; beyond that new ones are not (and are counted).
pub(super) const CAPACITY: usize = 65_536;
/// Entries looked at for expiry per insertion.
const SWEEP: usize = 8;

/// One flow, as seen from its local pod's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FlowKey {
    pub(super) endpoint: EndpointId,
    pub(super) protocol: u8,
    pub(super) local: (IpAddr, u16),
    pub(super) remote: (IpAddr, u16),
}

/// The flows of one worker.
#[derive(Debug, Default)]
pub(super) struct HostFlows {
    /// Last packet seen, per flow.
    flows: FastMap<FlowKey, u64>,
    /// Every remembered flow once, in the order the sweep visits them.
    order: VecDeque<FlowKey>,
    /// Flows not remembered because the table was full.
    pub(super) refused: u64,
}

impl HostFlows {
    pub(super) fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }

    /// Remembers (or refreshes) a flow at time `now`.
    pub(super) fn remember(&mut self, key: FlowKey, now: u64) {
        if let Some(seen) = self.flows.get_mut(&key) {
            *seen = now;
            return;
        }
        self.sweep(now);
        if self.flows.len() >= CAPACITY {
            self.refused += 1;
            return;
        }
        self.flows.insert(key, now);
        self.order.push_back(key);
    }

    /// Whether `key` is a remembered flow (refreshing it), at time `now`.
    pub(super) fn contains(&mut self, key: &FlowKey, now: u64) -> bool {
        match self.flows.get_mut(key) {
            Some(seen) if now.saturating_sub(*seen) < IDLE_TIMEOUT_NS => {
                *seen = now;
                true
            }
            _ => false,
        }
    }

    /// Looks at the next [`SWEEP`] flows in turn: an expired one is dropped, a live one goes
    /// to the back of the line.
    fn sweep(&mut self, now: u64) {
        for _ in 0..SWEEP {
            let Some(key) = self.order.pop_front() else { return };
            match self.flows.get(&key) {
                Some(seen) if now.saturating_sub(*seen) >= IDLE_TIMEOUT_NS => {
                    self.flows.remove(&key);
                }
                Some(_) => self.order.push_back(key),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            endpoint: EndpointId(0),
            protocol: 6,
            local: ("10.244.1.2".parse().unwrap(), port),
            remote: ("10.244.2.5".parse().unwrap(), 80),
        }
    }

    #[test]
    fn flows_are_remembered_refreshed_and_forgotten() {
        let mut flows = HostFlows::default();
        flows.remember(key(1000), 0);
        assert!(flows.contains(&key(1000), IDLE_TIMEOUT_NS - 1), "a reply refreshes it");
        assert!(flows.contains(&key(1000), 2 * IDLE_TIMEOUT_NS - 2));
        assert!(!flows.contains(&key(1000), 3 * IDLE_TIMEOUT_NS), "idle too long");
        assert!(!flows.contains(&key(1001), 0));
    }

    #[test]
    fn the_table_is_bounded_and_swept_as_it_fills() {
        let mut flows = HostFlows::default();
        for port in 0..CAPACITY as u32 {
            flows.remember(key(port as u16), 0);
        }
        // Only 65,536 ports: every key was new.
        assert_eq!(flows.len(), CAPACITY);
        let other = FlowKey { protocol: 17, ..key(1) };
        flows.remember(other, 1);
        assert_eq!(flows.refused, 1, "full, and nothing expired yet");
        // Much later, insertions sweep expired flows a few at a time: room again.
        flows.remember(other, IDLE_TIMEOUT_NS + 10);
        assert!(flows.len() < CAPACITY + 1);
        assert!(flows.contains(&other, IDLE_TIMEOUT_NS + 11));
    }
}
