//! The tables as the engine reads them: a [`TableSpec`] validated and built into one immutable
//! [`Snapshot`] — nodes, local endpoints, one LPM of routes per family, compiled policies.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::hash::FastMap;
use super::lpm::{self, Lpm, LpmBuilder};
use super::spec::{NodeSpec, PodEdge, TableSpec};
use super::{Cidr, CompiledPolicy, PolicyError, cidr};
use crate::wire::MacAddr;

/// Why a [`TableSpec`] was rejected. Each variant names the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("local node {0:?} is not in the node table")]
    UnknownLocalNode(String),
    #[error("node {0:?} appears twice")]
    DuplicateNode(String),
    #[error("node {node:?} has no VTEP MAC")]
    MissingVtepMac { node: String },
    #[error("node {node:?}: VTEP MAC {mac} is multicast or zero")]
    InvalidVtepMac { node: String, mac: MacAddr },
    #[error("nodes {first:?} and {second:?} share the underlay address {addr}")]
    DuplicateUnderlay { addr: IpAddr, first: String, second: String },
    #[error("node {node:?}: underlay {addr} is not the same IP family as the local node's")]
    UnderlayFamily { node: String, addr: IpAddr },
    #[error("pod CIDR {first_cidr} of node {first:?} overlaps {second_cidr} of node {second:?}")]
    OverlappingPodCidr { first: String, first_cidr: Cidr, second: String, second_cidr: Cidr },
    #[error("endpoint {0} appears twice")]
    DuplicateEndpoint(String),
    #[error("endpoint {endpoint} has no IP address")]
    EndpointWithoutIp { endpoint: String },
    #[error("endpoint {endpoint}: MAC {mac} is multicast or zero")]
    InvalidEndpointMac { endpoint: String, mac: MacAddr },
    #[error("pod IP {ip} belongs to both {first} and {second}")]
    DuplicatePodIp { ip: IpAddr, first: String, second: String },
    #[error("endpoint {endpoint}: {ip} is outside every pod CIDR of this node ({node:?})")]
    EndpointOutsideNodeCidrs { endpoint: String, ip: IpAddr, node: String },
    #[error("interface {interface:?} is used by both {first} and {second}")]
    DuplicateInterface { interface: String, first: String, second: String },
    #[error("endpoint {endpoint} refers to unknown policy {policy:?}")]
    UnknownPolicy { endpoint: String, policy: String },
    #[error("policy {0:?} appears twice")]
    DuplicatePolicy(String),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("node {node:?}: tunnel address {ip} is outside its pod CIDRs")]
    TunnelIpOutsideCidrs { node: String, ip: IpAddr },
    #[error("endpoint {endpoint} has {ip}, this node's tunnel address")]
    TunnelIpIsPodIp { endpoint: String, ip: IpAddr },
    #[error("too many {what}: {count} (at most {max})")]
    TooMany { what: &'static str, count: usize, max: usize },
}

/// Index of a node in [`Snapshot::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub u32);

/// Where a local endpoint sits in a snapshot. Stable across snapshots built one after the
/// other ([`Snapshot::build_next`]) for as long as the endpoint stays in the tables with the
/// same `namespace/name` and interface, so that a worker keeps what it holds per endpoint (its
/// sockets, where its frames go) under the same id instead of remapping on every generation. A
/// slot freed by a removed endpoint is reused by a later one; [`Endpoint::instance`] tells the
/// two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointId(pub u32);

/// What the route table says about a destination address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// A pod on this node.
    Endpoint(EndpointId),
    /// Inside a node's pod CIDRs (this node's, when no local endpoint has the address).
    Node(NodeId),
}

/// Route values in the LPM: the top bit tells an endpoint from a node.
const ROUTE_ENDPOINT: u32 = 0x4000_0000;

/// A node as the engine uses it.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub underlay: IpAddr,
    pub vtep_mac: MacAddr,
    pub next_hop_mac: Option<MacAddr>,
    pub pod_cidrs: Vec<Cidr>,
    /// The node's own addresses on the overlay ([`NodeSpec::tunnel_ips`], defaults filled
    /// in).
    pub tunnel_ips: Vec<IpAddr>,
}

/// A local endpoint as the engine uses it. Policies are indices into [`Snapshot::policies`].
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Unique among every endpoint of a chain of snapshots (never reused): the same endpoint
    /// in two snapshots has the same instance, a new one in a reused slot a new instance.
    pub instance: u64,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub mac: MacAddr,
    pub interface: String,
    pub edge: PodEdge,
    pub ingress_policy: Option<u32>,
    pub egress_policy: Option<u32>,
}

impl Endpoint {
    /// Is `ip` one of this endpoint's addresses? (Anti-spoofing of pod sources.)
    #[inline]
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip)
    }
}

/// An immutable, validated set of tables. Workers hold an `Arc<Snapshot>` for one batch.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    local_node: NodeId,
    nodes: Vec<Node>,
    node_by_underlay_v4: FastMap<u32, NodeId>,
    node_by_underlay_v6: FastMap<u128, NodeId>,
    /// Indexed by [`EndpointId`]; `None` is a free slot.
    endpoints: Vec<Option<Endpoint>>,
    endpoint_count: usize,
    /// The instance the next new endpoint gets.
    next_instance: u64,
    endpoint_by_interface: HashMap<String, EndpointId>,
    routes_v4: Lpm,
    routes_v6: Lpm,
    policies: Vec<CompiledPolicy>,
    policy_index: HashMap<String, u32>,
}

impl Snapshot {
    /// Validates `spec` and builds the tables. Any inconsistency is a [`TableError`] naming
    /// the entry; nothing is half-built. Endpoints take the slots `0..` in the spec's order.
    pub fn build(spec: &TableSpec, generation: u64) -> Result<Snapshot, TableError> {
        Snapshot::build_after(spec, generation, None)
    }

    /// Validates `spec` and builds the tables that follow `previous`, at the next generation:
    /// an endpoint that `previous` holds too (same `namespace/name`, same interface) keeps its
    /// [`EndpointId`] and instance; a new one takes the lowest free slot and a new instance.
    pub fn build_next(spec: &TableSpec, previous: &Snapshot) -> Result<Snapshot, TableError> {
        Snapshot::build_after(spec, previous.generation + 1, Some(previous))
    }

    fn build_after(
        spec: &TableSpec,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, TableError> {
        let max = lpm::Lpm::MAX_VALUE as usize & (ROUTE_ENDPOINT as usize - 1);
        for (what, count) in [("nodes", spec.nodes.len()), ("endpoints", spec.endpoints.len())] {
            if count > max {
                return Err(TableError::TooMany { what, count, max });
            }
        }

        // Nodes.
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        let mut node_by_name: HashMap<&str, NodeId> = HashMap::with_capacity(spec.nodes.len());
        let mut underlay_owner: HashMap<IpAddr, &str> = HashMap::with_capacity(spec.nodes.len());
        for (i, n) in spec.nodes.iter().enumerate() {
            if node_by_name.insert(&n.name, NodeId(i as u32)).is_some() {
                return Err(TableError::DuplicateNode(n.name.clone()));
            }
            let vtep_mac =
                n.vtep_mac.ok_or_else(|| TableError::MissingVtepMac { node: n.name.clone() })?;
            if vtep_mac.is_multicast() || vtep_mac.is_zero() {
                return Err(TableError::InvalidVtepMac { node: n.name.clone(), mac: vtep_mac });
            }
            if let Some(first) = underlay_owner.insert(n.underlay, &n.name) {
                return Err(TableError::DuplicateUnderlay {
                    addr: n.underlay,
                    first: first.to_owned(),
                    second: n.name.clone(),
                });
            }
            let tunnel_ips = if n.tunnel_ips.is_empty() {
                n.pod_cidrs.iter().map(Cidr::addr).collect()
            } else {
                n.tunnel_ips.clone()
            };
            if let Some(&ip) =
                tunnel_ips.iter().find(|ip| !n.pod_cidrs.iter().any(|c| c.contains(**ip)))
            {
                return Err(TableError::TunnelIpOutsideCidrs { node: n.name.clone(), ip });
            }
            nodes.push(Node {
                name: n.name.clone(),
                underlay: n.underlay,
                vtep_mac,
                next_hop_mac: n.next_hop_mac,
                pod_cidrs: n.pod_cidrs.clone(),
                tunnel_ips,
            });
        }
        let local_node = *node_by_name
            .get(spec.local_node.as_str())
            .ok_or_else(|| TableError::UnknownLocalNode(spec.local_node.clone()))?;
        let local = &spec.nodes[local_node.0 as usize];
        for n in &spec.nodes {
            if n.underlay.is_ipv4() != local.underlay.is_ipv4() {
                return Err(TableError::UnderlayFamily { node: n.name.clone(), addr: n.underlay });
            }
        }
        check_cidr_overlaps(&spec.nodes)?;

        // Policies, compiled once each however many endpoints use them.
        let mut policies = Vec::with_capacity(spec.policies.len());
        let mut policy_index = HashMap::with_capacity(spec.policies.len());
        for p in &spec.policies {
            if policy_index.insert(p.name.clone(), policies.len() as u32).is_some() {
                return Err(TableError::DuplicatePolicy(p.name.clone()));
            }
            policies.push(CompiledPolicy::compile(p)?);
        }

        // Endpoints, validated in the spec's order.
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        let mut endpoint_keys: HashMap<String, ()> = HashMap::with_capacity(spec.endpoints.len());
        let mut ip_owner: HashMap<IpAddr, usize> = HashMap::new();
        let mut interface_owner: HashMap<(Option<&str>, &str), usize> =
            HashMap::with_capacity(spec.endpoints.len());
        for (i, e) in spec.endpoints.iter().enumerate() {
            let key = e.key();
            if endpoint_keys.insert(key.clone(), ()).is_some() {
                return Err(TableError::DuplicateEndpoint(key));
            }
            if e.ips.is_empty() {
                return Err(TableError::EndpointWithoutIp { endpoint: key });
            }
            if e.mac.is_multicast() || e.mac.is_zero() {
                return Err(TableError::InvalidEndpointMac { endpoint: key, mac: e.mac });
            }
            for &ip in &e.ips {
                if nodes[local_node.0 as usize].tunnel_ips.contains(&ip) {
                    return Err(TableError::TunnelIpIsPodIp { endpoint: key, ip });
                }
                if let Some(&first) = ip_owner.get(&ip) {
                    return Err(TableError::DuplicatePodIp {
                        ip,
                        first: spec.endpoints[first].key(),
                        second: key,
                    });
                }
                ip_owner.insert(ip, i);
                if !local.pod_cidrs.iter().any(|c| c.contains(ip)) {
                    return Err(TableError::EndpointOutsideNodeCidrs {
                        endpoint: key,
                        ip,
                        node: local.name.clone(),
                    });
                }
            }
            if let Some(first) = interface_owner.insert((e.edge.netns(), &e.interface), i) {
                return Err(TableError::DuplicateInterface {
                    interface: match e.edge.netns() {
                        None => e.interface.clone(),
                        Some(netns) => format!("{} in {netns}", e.interface),
                    },
                    first: spec.endpoints[first].key(),
                    second: key,
                });
            }
            let resolve = |name: &Option<String>| -> Result<Option<u32>, TableError> {
                name.as_ref()
                    .map(|p| {
                        policy_index.get(p).copied().ok_or_else(|| TableError::UnknownPolicy {
                            endpoint: e.key(),
                            policy: p.clone(),
                        })
                    })
                    .transpose()
            };
            endpoints.push(Endpoint {
                instance: 0, // given with the slot below
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                labels: e.labels.clone(),
                ips: e.ips.clone(),
                mac: e.mac,
                interface: e.interface.clone(),
                edge: e.edge.clone(),
                ingress_policy: resolve(&e.ingress_policy)?,
                egress_policy: resolve(&e.egress_policy)?,
            });
        }

        let (endpoints, next_instance) = place_endpoints(endpoints, previous);
        let endpoint_count = spec.endpoints.len();
        let endpoint_by_interface: HashMap<String, EndpointId> = (endpoints.iter().enumerate())
            .filter_map(|(slot, e)| Some((e.as_ref()?.interface.clone(), EndpointId(slot as u32))))
            .collect();

        // Routes: node CIDRs, then local endpoints as host routes (longer, so they win).
        let (mut v4, mut v6) = (LpmBuilder::new(), LpmBuilder::new());
        for (i, n) in nodes.iter().enumerate() {
            for c in &n.pod_cidrs {
                let b = if c.is_ipv4() { &mut v4 } else { &mut v6 };
                b.insert(c.key(), c.len(), i as u32);
            }
        }
        for (slot, e) in endpoints.iter().enumerate() {
            let Some(e) = e else { continue };
            for &ip in &e.ips {
                let c = Cidr::host(ip);
                let b = if c.is_ipv4() { &mut v4 } else { &mut v6 };
                b.insert(c.key(), c.len(), ROUTE_ENDPOINT | slot as u32);
            }
        }

        let mut node_by_underlay_v4 = FastMap::default();
        let mut node_by_underlay_v6 = FastMap::default();
        for (i, n) in nodes.iter().enumerate() {
            match n.underlay {
                IpAddr::V4(a) => node_by_underlay_v4.insert(u32::from(a), NodeId(i as u32)),
                IpAddr::V6(a) => node_by_underlay_v6.insert(u128::from(a), NodeId(i as u32)),
            };
        }

        Ok(Snapshot {
            generation,
            local_node,
            nodes,
            node_by_underlay_v4,
            node_by_underlay_v6,
            endpoints,
            endpoint_count,
            next_instance,
            endpoint_by_interface,
            routes_v4: v4.build(),
            routes_v6: v6.build(),
            policies,
            policy_index,
        })
    }

    /// The generation this snapshot was built as; the control side confirms updates with it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn local_node_id(&self) -> NodeId {
        self.local_node
    }

    pub fn local_node(&self) -> &Node {
        &self.nodes[self.local_node.0 as usize]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    #[inline]
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    /// Is `ip` an address of this node: its underlay address or one of its tunnel addresses?
    /// (Traffic between a pod and its own node is always allowed.)
    #[inline]
    pub fn is_local_address(&self, ip: IpAddr) -> bool {
        let local = self.local_node();
        local.underlay == ip || local.tunnel_ips.contains(&ip)
    }

    /// The local endpoints with their slots, in slot order.
    pub fn endpoints(&self) -> impl Iterator<Item = (EndpointId, &Endpoint)> {
        (self.endpoints.iter().enumerate())
            .filter_map(|(slot, e)| Some((EndpointId(slot as u32), e.as_ref()?)))
    }

    /// How many local endpoints there are.
    pub fn endpoint_count(&self) -> usize {
        self.endpoint_count
    }

    /// One past the highest slot in use: per-endpoint arrays indexed by [`EndpointId`] need
    /// this length.
    pub fn endpoint_slots(&self) -> usize {
        self.endpoints.len()
    }

    /// The endpoint in slot `id`, if there is one.
    #[inline]
    pub fn get_endpoint(&self, id: EndpointId) -> Option<&Endpoint> {
        self.endpoints.get(id.0 as usize)?.as_ref()
    }

    /// The endpoint of an id this snapshot handed out (a route's target, an entry of
    /// [`Snapshot::endpoints`]).
    ///
    /// # Panics
    /// If `id` is not one of this snapshot's endpoints: ids from elsewhere go through
    /// [`Snapshot::get_endpoint`].
    #[inline]
    pub fn endpoint(&self, id: EndpointId) -> &Endpoint {
        match self.get_endpoint(id) {
            Some(e) => e,
            None => panic!("endpoint {id:?} is not in snapshot {}", self.generation),
        }
    }

    /// The endpoint whose host-side interface is `interface`.
    pub fn endpoint_by_interface(&self, interface: &str) -> Option<EndpointId> {
        self.endpoint_by_interface.get(interface).copied()
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    #[inline]
    pub fn policy(&self, index: u32) -> &CompiledPolicy {
        &self.policies[index as usize]
    }

    pub fn policy_by_name(&self, name: &str) -> Option<&CompiledPolicy> {
        self.policy_index.get(name).map(|&i| &self.policies[i as usize])
    }

    /// Longest-prefix match of a destination address.
    #[inline]
    pub fn route(&self, dst: IpAddr) -> Option<RouteTarget> {
        let value = match dst {
            IpAddr::V4(a) => self.routes_v4.lookup_v4(u32::from(a)),
            IpAddr::V6(_) => self.routes_v6.lookup(cidr::key_of(dst)),
        }?;
        Some(if value & ROUTE_ENDPOINT != 0 {
            RouteTarget::Endpoint(EndpointId(value & !ROUTE_ENDPOINT))
        } else {
            RouteTarget::Node(NodeId(value))
        })
    }

    /// The node whose underlay address is `addr` (anti-spoofing of VXLAN sources).
    #[inline]
    pub fn node_by_underlay(&self, addr: IpAddr) -> Option<NodeId> {
        match addr {
            IpAddr::V4(a) => self.node_by_underlay_v4.get(&u32::from(a)).copied(),
            IpAddr::V6(a) => self.node_by_underlay_v6.get(&u128::from(a)).copied(),
        }
    }

    /// Heap bytes held by the tables, counted structurally (containers' capacities and the
    /// strings they own; hash maps as capacity × entry size). An estimate for reports, not a
    /// substitute for measuring the process.
    pub fn memory_bytes(&self) -> usize {
        fn map_bytes<K, V, S>(m: &HashMap<K, V, S>) -> usize {
            m.capacity() * (std::mem::size_of::<(K, V)>() + 1)
        }
        let nodes: usize = self
            .nodes
            .iter()
            .map(|n| {
                std::mem::size_of::<Node>()
                    + n.name.capacity()
                    + n.pod_cidrs.capacity() * std::mem::size_of::<Cidr>()
            })
            .sum();
        let endpoints: usize = self.endpoints.capacity() * std::mem::size_of::<Option<Endpoint>>()
            + self
                .endpoints()
                .map(|(_, e)| {
                    e.namespace.capacity()
                        + e.name.capacity()
                        + e.interface.capacity()
                        + e.ips.capacity() * std::mem::size_of::<IpAddr>()
                        + e.labels
                            .iter()
                            .map(|(k, v)| k.capacity() + v.capacity() + 48)
                            .sum::<usize>()
                })
                .sum::<usize>();
        let policies: usize = self.policies.iter().map(|p| p.memory_bytes()).sum();
        nodes
            + endpoints
            + policies
            + self.routes_v4.memory_bytes()
            + self.routes_v6.memory_bytes()
            + map_bytes(&self.node_by_underlay_v4)
            + map_bytes(&self.node_by_underlay_v6)
            + map_bytes(&self.endpoint_by_interface)
            + map_bytes(&self.policy_index)
    }

    /// A human summary: what the tables hold and what they cost.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let (v4, v6) = self.route_counts();
        let mut out = String::new();
        let local = self.local_node();
        let _ = writeln!(out, "generation:  {}", self.generation);
        let _ = writeln!(
            out,
            "local node:  {} (underlay {}, VTEP MAC {})",
            local.name, local.underlay, local.vtep_mac
        );
        let local_id = self.local_node.0 as usize;
        let unresolved = (self.nodes.iter().enumerate())
            .filter(|&(i, n)| i != local_id && n.next_hop_mac.is_none())
            .count();
        let _ = writeln!(
            out,
            "nodes:       {} ({} remote without a resolved next hop)",
            self.nodes.len(),
            unresolved
        );
        let _ = writeln!(out, "endpoints:   {} local", self.endpoint_count);
        let _ = writeln!(
            out,
            "routes:      {v4} IPv4, {v6} IPv6 (pod CIDRs and local pod host routes)"
        );
        let rules: usize = self.policies.iter().map(CompiledPolicy::rule_count).sum();
        let classes: usize = self.policies.iter().map(CompiledPolicy::class_count).sum();
        let _ = writeln!(
            out,
            "policies:    {} ({rules} rules, {classes} peer classes)",
            self.policies.len()
        );
        let _ =
            write!(out, "memory:      {:.1} KiB of tables", self.memory_bytes() as f64 / 1024.0);
        out
    }

    /// Route entries per family (v4, v6).
    pub fn route_counts(&self) -> (usize, usize) {
        (self.routes_v4.len(), self.routes_v6.len())
    }
}

/// Puts validated endpoints (in the spec's order) into slots: where `previous` had the same
/// endpoint (same `namespace/name` and interface) it keeps that slot and instance; the others
/// take the lowest free slots, in order, with new instances. Returns the slots and the next
/// instance.
fn place_endpoints(
    endpoints: Vec<Endpoint>,
    previous: Option<&Snapshot>,
) -> (Vec<Option<Endpoint>>, u64) {
    let mut next_instance = previous.map_or(1, |p| p.next_instance);
    // The same pod on the same interface keeps its slot and instance; a pod whose interface
    // changed (another veth, another network namespace) is a new instance, attached anew.
    fn key(e: &Endpoint) -> (&str, &str, &str, Option<&str>) {
        (&e.namespace, &e.name, &e.interface, e.edge.netns())
    }
    let kept: HashMap<_, (EndpointId, u64)> = previous
        .into_iter()
        .flat_map(Snapshot::endpoints)
        .map(|(id, e)| (key(e), (id, e.instance)))
        .collect();
    let mut slots: Vec<Option<Endpoint>> = Vec::new();
    let mut new = Vec::new();
    for mut e in endpoints {
        match kept.get(&key(&e)) {
            Some(&(id, instance)) => {
                let slot = id.0 as usize;
                if slots.len() <= slot {
                    slots.resize_with(slot + 1, || None);
                }
                e.instance = instance;
                slots[slot] = Some(e);
            }
            None => new.push(e),
        }
    }
    let mut free = 0;
    for mut e in new {
        while slots.get(free).is_some_and(Option::is_some) {
            free += 1;
        }
        if slots.len() <= free {
            slots.resize_with(free + 1, || None);
        }
        e.instance = next_instance;
        next_instance += 1;
        slots[free] = Some(e);
    }
    (slots, next_instance)
}

/// Rejects pod CIDRs that overlap, naming both owners. Prefixes either nest or are disjoint,
/// so after sorting by (family, first address, length) an overlap always involves the most
/// recent prefix that is still open.
fn check_cidr_overlaps(nodes: &[NodeSpec]) -> Result<(), TableError> {
    let mut all: Vec<(Cidr, &str)> =
        nodes.iter().flat_map(|n| n.pod_cidrs.iter().map(move |c| (*c, n.name.as_str()))).collect();
    all.sort();
    let mut open: Option<(Cidr, &str)> = None;
    for (c, owner) in all {
        if let Some((o, o_owner)) = open {
            if o.contains_cidr(&c) {
                return Err(TableError::OverlappingPodCidr {
                    first: o_owner.to_owned(),
                    first_cidr: o,
                    second: owner.to_owned(),
                    second_cidr: c,
                });
            }
        }
        open = Some((c, owner));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::table::{EndpointSpec, PolicySpec};

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x0a, 0x58, 0, 0, 0, last])
    }

    fn node(name: &str, underlay: &str, cidr: &str, last: u8) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            underlay: underlay.parse().unwrap(),
            vtep_mac: Some(mac(last)),
            next_hop_mac: Some(mac(100 + last)),
            pod_cidrs: vec![cidr.parse().unwrap()],
            tunnel_ips: Vec::new(),
        }
    }

    fn endpoint(name: &str, ip: &str, interface: &str) -> EndpointSpec {
        EndpointSpec {
            namespace: "default".into(),
            name: name.into(),
            labels: BTreeMap::from([("app".into(), name.into())]),
            ips: vec![ip.parse().unwrap()],
            mac: mac(200),
            interface: interface.into(),
            edge: Default::default(),
            ingress_policy: None,
            egress_policy: None,
        }
    }

    pub(crate) fn good() -> TableSpec {
        TableSpec {
            local_node: "a".into(),
            nodes: vec![
                node("a", "192.168.50.1", "10.244.1.0/24", 1),
                node("b", "192.168.50.2", "10.244.2.0/24", 2),
            ],
            endpoints: vec![
                endpoint("web", "10.244.1.2", "veth1"),
                endpoint("db", "10.244.1.3", "veth2"),
            ],
            policies: vec![PolicySpec { name: "deny".into(), rules: vec![] }],
        }
    }

    #[test]
    fn builds_routes_and_lookups() {
        let snap = Snapshot::build(&good(), 7).unwrap();
        assert_eq!(snap.generation(), 7);
        assert_eq!(snap.local_node().name, "a");
        let web = snap.endpoint_by_interface("veth1").unwrap();
        assert_eq!(snap.route("10.244.1.2".parse().unwrap()), Some(RouteTarget::Endpoint(web)));
        assert_eq!(snap.route("10.244.1.9".parse().unwrap()), Some(RouteTarget::Node(NodeId(0))));
        assert_eq!(snap.route("10.244.2.9".parse().unwrap()), Some(RouteTarget::Node(NodeId(1))));
        assert_eq!(snap.route("10.9.0.1".parse().unwrap()), None);
        assert_eq!(snap.node_by_underlay("192.168.50.2".parse().unwrap()), Some(NodeId(1)));
        assert_eq!(snap.node_by_underlay("192.168.50.3".parse().unwrap()), None);
        assert_eq!(snap.route_counts(), (4, 0));
    }

    /// Each broken table is rejected with the error that names the offending entry.
    #[test]
    fn inconsistent_tables_are_typed_errors() {
        type Breaker = Box<dyn Fn(&mut TableSpec)>;
        let cases: Vec<(Breaker, &str)> = vec![
            (Box::new(|s| s.local_node = "z".into()), "local node \"z\" is not in the node table"),
            (Box::new(|s| s.nodes[1].name = "a".into()), "node \"a\" appears twice"),
            (Box::new(|s| s.nodes[1].vtep_mac = None), "node \"b\" has no VTEP MAC"),
            (
                Box::new(|s| s.nodes[1].vtep_mac = Some(MacAddr::BROADCAST)),
                "node \"b\": VTEP MAC ff:ff:ff:ff:ff:ff is multicast or zero",
            ),
            (
                Box::new(|s| s.nodes[1].underlay = "192.168.50.1".parse().unwrap()),
                "nodes \"a\" and \"b\" share the underlay address 192.168.50.1",
            ),
            (
                Box::new(|s| s.nodes[1].underlay = "fd00::2".parse().unwrap()),
                "node \"b\": underlay fd00::2 is not the same IP family as the local node's",
            ),
            (
                Box::new(|s| s.nodes[1].pod_cidrs = vec!["10.244.0.0/16".parse().unwrap()]),
                "pod CIDR 10.244.0.0/16 of node \"b\" overlaps 10.244.1.0/24 of node \"a\"",
            ),
            (
                Box::new(|s| s.endpoints[1].name = "web".into()),
                "endpoint default/web appears twice",
            ),
            (Box::new(|s| s.endpoints[1].ips.clear()), "endpoint default/db has no IP address"),
            (
                Box::new(|s| s.endpoints[1].ips = vec!["10.244.1.2".parse().unwrap()]),
                "pod IP 10.244.1.2 belongs to both default/web and default/db",
            ),
            (
                Box::new(|s| s.endpoints[1].ips = vec!["10.244.2.3".parse().unwrap()]),
                "endpoint default/db: 10.244.2.3 is outside every pod CIDR of this node (\"a\")",
            ),
            (
                Box::new(|s| s.endpoints[1].interface = "veth1".into()),
                "interface \"veth1\" is used by both default/web and default/db",
            ),
            (
                Box::new(|s| s.endpoints[1].ingress_policy = Some("nope".into())),
                "endpoint default/db refers to unknown policy \"nope\"",
            ),
            (Box::new(|s| s.policies.push(s.policies[0].clone())), "policy \"deny\" appears twice"),
            (
                Box::new(|s| s.endpoints[0].mac = MacAddr::ZERO),
                "endpoint default/web: MAC 00:00:00:00:00:00 is multicast or zero",
            ),
            (
                Box::new(|s| s.nodes[0].tunnel_ips = vec!["10.244.2.1".parse().unwrap()]),
                "node \"a\": tunnel address 10.244.2.1 is outside its pod CIDRs",
            ),
            (
                Box::new(|s| s.endpoints[0].ips = vec!["10.244.1.0".parse().unwrap()]),
                "endpoint default/web has 10.244.1.0, this node's tunnel address",
            ),
        ];
        for (break_it, message) in cases {
            let mut spec = good();
            break_it(&mut spec);
            let err = Snapshot::build(&spec, 1).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn tunnel_addresses_default_to_each_pod_cidr_and_are_the_nodes_own() {
        let mut spec = good();
        let snap = Snapshot::build(&spec, 1).unwrap();
        assert_eq!(snap.local_node().tunnel_ips, ["10.244.1.0".parse::<IpAddr>().unwrap()]);
        assert!(snap.is_local_address("10.244.1.0".parse().unwrap()));
        assert!(snap.is_local_address("192.168.50.1".parse().unwrap()));
        assert!(!snap.is_local_address("10.244.1.2".parse().unwrap()));
        // Calico's tunnel address: one chosen address of the block.
        spec.nodes[0].tunnel_ips = vec!["10.244.1.1".parse().unwrap()];
        let snap = Snapshot::build(&spec, 1).unwrap();
        assert!(snap.is_local_address("10.244.1.1".parse().unwrap()));
        assert!(!snap.is_local_address("10.244.1.0".parse().unwrap()));
    }

    #[test]
    fn endpoints_keep_their_slots_across_generations() {
        let first = Snapshot::build(&good(), 1).unwrap();
        let web = first.endpoint_by_interface("veth1").unwrap();
        let db = first.endpoint_by_interface("veth2").unwrap();
        assert_eq!((web, db), (EndpointId(0), EndpointId(1)));
        let (web_instance, db_instance) =
            (first.endpoint(web).instance, first.endpoint(db).instance);

        // web goes, cache comes: db keeps slot and instance, cache takes web's slot with a
        // new instance; the route to web's address is gone.
        let mut spec = good();
        spec.endpoints.remove(0);
        spec.endpoints.push(endpoint("cache", "10.244.1.4", "veth3"));
        let second = Snapshot::build_next(&spec, &first).unwrap();
        assert_eq!(second.generation(), 2);
        assert_eq!(second.endpoint_by_interface("veth2"), Some(db));
        assert_eq!(second.endpoint(db).instance, db_instance);
        let cache = second.endpoint_by_interface("veth3").unwrap();
        assert_eq!(cache, web);
        assert!(second.endpoint(cache).instance > db_instance.max(web_instance));
        assert_eq!(second.route("10.244.1.2".parse().unwrap()), Some(RouteTarget::Node(NodeId(0))));
        assert_eq!(second.route("10.244.1.4".parse().unwrap()), Some(RouteTarget::Endpoint(cache)));

        // The same pod on another interface (its veth re-created) is a new instance; a pod
        // whose addresses or labels change keeps its instance.
        spec.endpoints[0].ips = vec!["10.244.1.9".parse().unwrap()];
        spec.endpoints[1].interface = "veth4".into();
        let third = Snapshot::build_next(&spec, &second).unwrap();
        assert_eq!(third.endpoint(db).instance, db_instance);
        let moved = third.endpoint_by_interface("veth4").unwrap();
        assert!(third.endpoint(moved).instance > second.endpoint(cache).instance);
        assert_eq!(third.endpoint_count(), 2);
        assert_eq!(third.endpoints().count(), 2);
        assert_eq!(third.get_endpoint(EndpointId(7)).map(|e| e.instance), None);
    }

    #[test]
    fn a_freed_slot_in_the_middle_stays_free_until_reused() {
        let mut spec = good();
        spec.endpoints.push(endpoint("cache", "10.244.1.4", "veth3"));
        let first = Snapshot::build(&spec, 1).unwrap();
        spec.endpoints.remove(1); // db, slot 1
        let second = Snapshot::build_next(&spec, &first).unwrap();
        assert_eq!(second.endpoint_slots(), 3);
        assert_eq!(second.get_endpoint(EndpointId(1)).map(|e| e.name.as_str()), None);
        let names: Vec<(u32, &str)> =
            second.endpoints().map(|(id, e)| (id.0, e.name.as_str())).collect();
        assert_eq!(names, [(0, "web"), (2, "cache")]);
    }
}
