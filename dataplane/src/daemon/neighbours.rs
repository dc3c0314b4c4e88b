//! Keeps every remote node's underlay next-hop MAC resolved from the kernel (see
//! [`crate::io::netlink`]) and hands changes to [`Tables`], all of one look in one
//! publication.
//!
//! Resolution goes by next hop, not by node: nodes in other subnets share their gateway, so
//! 5,000 nodes behind one router are one neighbour lookup. A node's route (which next hop it
//! goes through) is looked up when the node appears or its underlay address changes, and again
//! every 30 s. A next hop not yet resolved is retried every 100 ms; a resolved one is
//! re-confirmed every 30 s (`NTF_USE`, which also keeps the kernel's entry fresh although
//! podlane's traffic bypasses it). A lookup that fails keeps the last known MAC: a stale
//! entry the kernel garbage-collected is not a reason to stop forwarding. A node whose entry
//! in the tables carries `next_hop_mac` keeps it (a static override) and is not looked at.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::tables::Tables;
use crate::io::netlink::Rtnetlink;
use crate::wire::MacAddr;

const RETRY: Duration = Duration::from_millis(100);
const REFRESH: Duration = Duration::from_secs(30);

/// A node's route, as last looked up.
struct NodeRoute {
    underlay: IpAddr,
    /// `None`: no route (looked up again at the next retry).
    next_hop: Option<IpAddr>,
    looked_up: Instant,
}

/// A next hop's MAC, as last looked up.
struct Hop {
    mac: Option<MacAddr>,
    looked_up: Instant,
}

pub(super) struct Resolver {
    uplink: u32,
    netlink: Option<Rtnetlink>,
    routes: HashMap<String, NodeRoute>,
    hops: HashMap<IpAddr, Hop>,
    /// What was last handed to the tables, per node.
    published: HashMap<String, MacAddr>,
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
            routes: HashMap::new(),
            hops: HashMap::new(),
            published: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    /// Looks at the routes and next hops that are due and publishes, at once, every node
    /// whose next-hop MAC changed.
    pub(super) fn tick(&mut self, tables: &Tables) {
        let Some(netlink) = self.netlink.as_mut() else { return };
        let nodes = tables.nodes_to_resolve();
        let now = Instant::now();
        let names: HashSet<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
        self.routes.retain(|name, _| names.contains(name.as_str()));
        self.published.retain(|name, _| names.contains(name.as_str()));

        for (name, underlay) in &nodes {
            let due = match self.routes.get(name) {
                None => true,
                Some(r) if r.underlay != *underlay => true,
                Some(r) if r.next_hop.is_none() => now - r.looked_up >= RETRY,
                Some(r) => now - r.looked_up >= REFRESH,
            };
            if !due {
                continue;
            }
            let next_hop = match netlink.route_to(*underlay) {
                Ok(route) => {
                    if route.interface != self.uplink && self.warned.insert(name.clone()) {
                        tracing::warn!(node = %name, %underlay, "the kernel routes this node via another interface than the uplink");
                    }
                    Some(route.next_hop)
                }
                Err(e) => {
                    if self.warned.insert(name.clone()) {
                        tracing::warn!(node = %name, %underlay, "no route to the node: {e}");
                    }
                    None
                }
            };
            let route = NodeRoute { underlay: *underlay, next_hop, looked_up: now };
            self.routes.insert(name.clone(), route);
        }

        let wanted: HashSet<IpAddr> = self.routes.values().filter_map(|r| r.next_hop).collect();
        self.hops.retain(|hop, _| wanted.contains(hop));
        for hop in wanted {
            let entry = self.hops.get(&hop);
            let due = match entry {
                None => true,
                Some(h) if h.mac.is_none() => now - h.looked_up >= RETRY,
                Some(h) => now - h.looked_up >= REFRESH,
            };
            if !due {
                continue;
            }
            let known = entry.and_then(|h| h.mac);
            let mac = match netlink.neighbour(self.uplink, hop) {
                Ok(Some(mac)) => Some(mac),
                Ok(None) => known,
                Err(e) => {
                    tracing::debug!(next_hop = %hop, "neighbour lookup failed: {e}");
                    known
                }
            };
            if let Err(e) = netlink.resolve(self.uplink, hop) {
                tracing::debug!(next_hop = %hop, "NTF_USE failed: {e}");
            }
            if let Some(mac) = mac
                && Some(mac) != known
            {
                tracing::info!(next_hop = %hop, %mac, "next hop resolved");
            }
            self.hops.insert(hop, Hop { mac, looked_up: now });
        }

        let mut changed = Vec::new();
        for (name, route) in &self.routes {
            let mac = route.next_hop.and_then(|hop| self.hops.get(&hop)?.mac);
            if let Some(mac) = mac
                && self.published.get(name) != Some(&mac)
            {
                changed.push((name.clone(), mac));
            }
        }
        if changed.is_empty() {
            return;
        }
        match tables.set_next_hops(&changed) {
            Ok(_) => {
                tracing::debug!(nodes = changed.len(), "next hops published");
                self.published.extend(changed);
            }
            Err(e) => tracing::error!("tables with the resolved next hops rejected: {e}"),
        }
    }
}
