//! Keeps every remote node's underlay next-hop MAC resolved from the kernel (see
//! [`crate::io::netlink`]), and says when the tables need republishing.
//!
//! A node whose entry in the tables carries `next_hop_mac` keeps it (a static override); the
//! others are resolved here. Unresolved nodes are retried every 100 ms, resolved ones are
//! re-confirmed every 30 s (`NTF_USE`, which also keeps the kernel's entry fresh although
//! podlane's traffic bypasses it). A lookup that fails keeps the last known MAC: a stale
//! entry the kernel garbage-collected is not a reason to stop forwarding.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::io::netlink::Rtnetlink;
use crate::table::TableSpec;
use crate::wire::MacAddr;

const RETRY: Duration = Duration::from_millis(100);
const REFRESH: Duration = Duration::from_secs(30);

pub(super) struct Resolver {
    uplink: u32,
    base: TableSpec,
    netlink: Option<Rtnetlink>,
    resolved: HashMap<String, MacAddr>,
    last_attempt: HashMap<String, Instant>,
    warned: HashSet<String>,
    published: bool,
}

impl Resolver {
    pub(super) fn new(uplink: u32, base: TableSpec) -> Resolver {
        let netlink = match Rtnetlink::open() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!("cannot open rtnetlink, next hops will not be resolved: {e}");
                None
            }
        };
        Resolver {
            uplink,
            base,
            netlink,
            resolved: HashMap::new(),
            last_attempt: HashMap::new(),
            warned: HashSet::new(),
            published: false,
        }
    }

    /// The tables with next hops filled in, when they changed since the last call.
    pub(super) fn tick(&mut self) -> Option<TableSpec> {
        let netlink = self.netlink.as_mut()?;
        let mut changed = false;
        let local = self.base.local_node.clone();
        for node in self.base.nodes.iter().filter(|n| n.name != local && n.next_hop_mac.is_none()) {
            let known = self.resolved.get(&node.name).copied();
            let due = if known.is_some() { REFRESH } else { RETRY };
            if self.last_attempt.get(&node.name).is_some_and(|at| at.elapsed() < due) {
                continue;
            }
            self.last_attempt.insert(node.name.clone(), Instant::now());
            let route = match netlink.route_to(node.underlay) {
                Ok(route) => route,
                Err(e) => {
                    if self.warned.insert(node.name.clone()) {
                        tracing::warn!(node = %node.name, underlay = %node.underlay, "no route to the node: {e}");
                    }
                    continue;
                }
            };
            if route.interface != self.uplink && self.warned.insert(node.name.clone()) {
                tracing::warn!(node = %node.name, underlay = %node.underlay, "the kernel routes this node via another interface than the uplink");
            }
            match netlink.neighbour(self.uplink, route.next_hop) {
                Ok(Some(mac)) if known != Some(mac) => {
                    tracing::info!(node = %node.name, next_hop = %route.next_hop, %mac, "next hop resolved");
                    self.resolved.insert(node.name.clone(), mac);
                    changed = true;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(node = %node.name, "neighbour lookup failed: {e}"),
            }
            if let Err(e) = netlink.resolve(self.uplink, route.next_hop) {
                tracing::debug!(node = %node.name, next_hop = %route.next_hop, "NTF_USE failed: {e}");
            }
        }
        if !changed && self.published {
            return None;
        }
        self.published = true;
        Some(self.effective())
    }

    fn effective(&self) -> TableSpec {
        let mut spec = self.base.clone();
        for node in &mut spec.nodes {
            if node.next_hop_mac.is_none() {
                node.next_hop_mac = self.resolved.get(&node.name).copied();
            }
        }
        spec
    }

    /// The unresolved remote nodes (for logging).
    #[allow(dead_code)]
    pub(super) fn unresolved(&self) -> Vec<IpAddr> {
        self.base
            .nodes
            .iter()
            .filter(|n| n.name != self.base.local_node && n.next_hop_mac.is_none())
            .filter(|n| !self.resolved.contains_key(&n.name))
            .map(|n| n.underlay)
            .collect()
    }
}
