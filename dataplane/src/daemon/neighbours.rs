//! Keeps every remote node's underlay next-hop MAC resolved from the kernel (see
//! [`crate::io::netlink`]) and hands changes to [`Tables`].
//!
//! A node whose entry in the tables carries `next_hop_mac` keeps it (a static override); the
//! others are resolved here. Unresolved nodes are retried every 100 ms, resolved ones are
//! re-confirmed every 30 s (`NTF_USE`, which also keeps the kernel's entry fresh although
//! podlane's traffic bypasses it). A lookup that fails keeps the last known MAC: a stale
//! entry the kernel garbage-collected is not a reason to stop forwarding.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::tables::Tables;
use crate::io::netlink::Rtnetlink;
use crate::wire::MacAddr;

const RETRY: Duration = Duration::from_millis(100);
const REFRESH: Duration = Duration::from_secs(30);

pub(super) struct Resolver {
    uplink: u32,
    netlink: Option<Rtnetlink>,
    /// Per node: the underlay address it was resolved for, and the MAC.
    resolved: HashMap<String, (IpAddr, MacAddr)>,
    last_attempt: HashMap<String, Instant>,
    warned: HashSet<String>,
}

impl Resolver {
    pub(super) fn new(uplink: u32) -> Resolver {
        let netlink = match Rtnetlink::open() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!("cannot open rtnetlink, next hops will not be resolved: {e}");
                None
            }
        };
        Resolver {
            uplink,
            netlink,
            resolved: HashMap::new(),
            last_attempt: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    /// Looks at the nodes that are due and publishes any next hop that changed.
    pub(super) fn tick(&mut self, tables: &Tables) {
        let Some(netlink) = self.netlink.as_mut() else { return };
        for (name, underlay) in tables.nodes_to_resolve() {
            let known = self.resolved.get(&name).filter(|(ip, _)| *ip == underlay).map(|(_, m)| *m);
            let due = if known.is_some() { REFRESH } else { RETRY };
            if self.last_attempt.get(&name).is_some_and(|at| at.elapsed() < due) {
                continue;
            }
            self.last_attempt.insert(name.clone(), Instant::now());
            let route = match netlink.route_to(underlay) {
                Ok(route) => route,
                Err(e) => {
                    if self.warned.insert(name.clone()) {
                        tracing::warn!(node = %name, %underlay, "no route to the node: {e}");
                    }
                    continue;
                }
            };
            if route.interface != self.uplink && self.warned.insert(name.clone()) {
                tracing::warn!(node = %name, %underlay, "the kernel routes this node via another interface than the uplink");
            }
            match netlink.neighbour(self.uplink, route.next_hop) {
                Ok(Some(mac)) if known != Some(mac) => {
                    tracing::info!(node = %name, next_hop = %route.next_hop, %mac, "next hop resolved");
                    self.resolved.insert(name.clone(), (underlay, mac));
                    if let Err(e) = tables.set_next_hop(&name, mac) {
                        tracing::error!(node = %name, "tables with the resolved next hop rejected: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(node = %name, "neighbour lookup failed: {e}"),
            }
            if let Err(e) = netlink.resolve(self.uplink, route.next_hop) {
                tracing::debug!(node = %name, next_hop = %route.next_hop, "NTF_USE failed: {e}");
            }
        }
    }
}
