//! The host interface (`podlane0` by default): a multi-queue TUN device through which the
//! node's kernel and the overlay meet, as they met through `flannel.1` or `vxlan.calico`.
//!
//! What the daemon installs, and nothing else: the device itself (one queue per worker), up,
//! with the overlay's MTU (the uplink's less the encapsulation); this node's tunnel addresses
//! on it (Flannel's `flannel.1` address, Calico's tunnel address: the source the kernel picks
//! for the node's own traffic to pods, the address remote pods reach the node at); and a route
//! through it for every node's pod CIDRs, this node's included, so that the node's traffic to
//! any pod — kubelet probes, hostNetwork pods, Services after kube-proxy's DNAT, NodePorts —
//! enters the dataplane. Routes and addresses follow the tables as they change. A route that
//! some other owner already installed for the same destination is left alone and reported.
//!
//! The device persists across the daemon's exits, on purpose: while no dataplane reads it, the
//! routes through it drop what they carry, so pod traffic neither leaves the node bare nor goes
//! where policy forbids while podlane is stopped or restarting (a restarted daemon adopts the
//! device and its routes). `podlane-dataplane --remove-host-interface` deletes it, and with it
//! every address and route on it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::io::netlink::{Prefix, Rtnetlink};
use crate::io::tun::{TunError, TunQueue};
use crate::io::{self};
use crate::table::Snapshot;

/// Why the host interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("the host interface {name}: {what}: {source}")]
    Netlink { name: String, what: &'static str, source: std::io::Error },
    #[error("the host interface {0} vanished as it was being set up")]
    Vanished(String),
}

/// What the host interface holds, for `podlane show config`.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostState {
    pub(crate) name: String,
    pub(crate) addresses: Vec<String>,
    pub(crate) routes: Vec<String>,
}

/// The host interface and what the daemon installed on it.
#[derive(Debug)]
pub(crate) struct HostInterface {
    name: String,
    ifindex: u32,
    netlink: Rtnetlink,
    addresses: BTreeSet<Prefix>,
    routes: BTreeSet<Prefix>,
    /// Routes another owner holds for the same destination: reported once, not retried.
    refused: BTreeSet<Prefix>,
    generation: Option<u64>,
}

fn host_prefix(ip: IpAddr) -> Prefix {
    (ip, if ip.is_ipv4() { 32 } else { 128 })
}

fn show((ip, len): &Prefix) -> String {
    format!("{ip}/{len}")
}

impl HostInterface {
    /// Creates (or adopts, after an earlier run) the TUN device `name` with one queue per
    /// worker, persistent, up at `mtu`. Returns the queues, one per worker.
    pub(crate) fn open(
        name: &str,
        workers: usize,
        mtu: u32,
    ) -> Result<(HostInterface, Vec<TunQueue>), HostError> {
        let queues =
            (0..workers.max(1)).map(|_| TunQueue::attach(name)).collect::<Result<Vec<_>, _>>()?;
        queues[0].set_persistent(true)?;
        let netlink_error = |what| {
            let name = name.to_owned();
            move |source| HostError::Netlink { name, what, source }
        };
        let ifindex =
            io::interface_index(name).ok_or_else(|| HostError::Vanished(name.to_owned()))?;
        let mut netlink = Rtnetlink::open().map_err(netlink_error("opening rtnetlink"))?;
        netlink.set_link_up(ifindex, mtu).map_err(netlink_error("setting it up"))?;
        // An adopted device keeps what an earlier run installed: start from what is there.
        // Link-local addresses are the kernel's, not the tables'.
        let addresses: BTreeSet<Prefix> = (netlink.addresses(ifindex))
            .map_err(netlink_error("reading its addresses"))?
            .into_iter()
            .filter(|(ip, _)| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect();
        let routes: BTreeSet<Prefix> = (netlink.routes(ifindex))
            .map_err(netlink_error("reading its routes"))?
            .into_iter()
            .collect();
        let adopted = !addresses.is_empty() || !routes.is_empty();
        tracing::info!(interface = name, queues = queues.len(), mtu, adopted, "host interface up");
        let host = HostInterface {
            name: name.to_owned(),
            ifindex,
            netlink,
            addresses,
            routes,
            refused: BTreeSet::new(),
            generation: None,
        };
        Ok((host, queues))
    }

    /// Makes the addresses and routes match `snapshot`: this node's tunnel addresses, every
    /// node's pod CIDRs. Errors are logged; the rest is still applied.
    pub(crate) fn follow(&mut self, snapshot: &Snapshot) {
        if self.generation == Some(snapshot.generation()) {
            return;
        }
        self.generation = Some(snapshot.generation());
        let addresses: BTreeSet<Prefix> =
            snapshot.local_node().tunnel_ips.iter().map(|ip| host_prefix(*ip)).collect();
        let routes: BTreeSet<Prefix> = (snapshot.nodes().iter())
            .flat_map(|n| n.pod_cidrs.iter().map(|c| (c.addr(), c.len())))
            .collect();
        for gone in self.addresses.difference(&addresses).copied().collect::<Vec<_>>() {
            match self.netlink.delete_address(self.ifindex, gone) {
                Ok(()) => {
                    tracing::info!(interface = self.name, address = show(&gone), "address removed")
                }
                Err(e) => tracing::warn!(
                    interface = self.name,
                    address = show(&gone),
                    "removing the address: {e}"
                ),
            }
            self.addresses.remove(&gone);
        }
        for new in addresses.difference(&self.addresses.clone()) {
            match self.netlink.add_address(self.ifindex, *new) {
                Ok(()) => {
                    tracing::info!(interface = self.name, address = show(new), "address added");
                    self.addresses.insert(*new);
                }
                Err(e) => tracing::warn!(
                    interface = self.name,
                    address = show(new),
                    "adding the address: {e}"
                ),
            }
        }
        for gone in self.routes.difference(&routes).copied().collect::<Vec<_>>() {
            if let Err(e) = self.netlink.delete_route(self.ifindex, gone) {
                tracing::warn!(
                    interface = self.name,
                    route = show(&gone),
                    "removing the route: {e}"
                );
            }
            self.routes.remove(&gone);
        }
        self.refused.retain(|r| routes.contains(r));
        let mut added = 0;
        let wanted: Vec<Prefix> = (routes.iter())
            .filter(|r| !self.routes.contains(r) && !self.refused.contains(r))
            .copied()
            .collect();
        for new in &wanted {
            match self.netlink.add_route(self.ifindex, *new) {
                Ok(()) => {
                    self.routes.insert(*new);
                    added += 1;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    tracing::warn!(
                        interface = self.name,
                        route = show(new),
                        "a route to this pod CIDR exists through another interface: left as it \
                         is (is the node still programmed for kernel VXLAN? see docs/host-path.md)"
                    );
                    self.refused.insert(*new);
                }
                Err(e) => tracing::warn!(
                    interface = self.name,
                    route = show(new),
                    "adding the route: {e}"
                ),
            }
        }
        if added > 0 {
            tracing::info!(
                interface = self.name,
                added,
                routes = self.routes.len(),
                "routes to pod CIDRs installed"
            );
        }
    }

    pub(crate) fn state(&self) -> HostState {
        HostState {
            name: self.name.clone(),
            addresses: self.addresses.iter().map(show).collect(),
            routes: self.routes.iter().map(show).collect(),
        }
    }
}

/// Deletes the host interface `name` (and with it its addresses and routes). `Ok(false)` when
/// there is none.
pub fn remove(name: &str) -> Result<bool, HostError> {
    let Some(ifindex) = io::interface_index(name) else { return Ok(false) };
    let netlink_error = |what| {
        let name = name.to_owned();
        move |source| HostError::Netlink { name, what, source }
    };
    let mut netlink = Rtnetlink::open().map_err(netlink_error("opening rtnetlink"))?;
    netlink.delete_link(ifindex).map_err(netlink_error("deleting it"))?;
    Ok(true)
}
