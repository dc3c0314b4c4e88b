//! The tables the control process pushes — nodes, local endpoints (pods), routes and policy —
//! validated and built into one immutable [`Snapshot`] with a generation number, and published
//! to workers lock-free through a [`SnapshotCell`].
//!
//! Build, then publish: [`Snapshot::build`] checks the whole [`TableSpec`] and either returns a
//! complete snapshot or a [`TableError`] naming the offending entry. Nothing is ever patched in
//! place, so a rejected update cannot leave half-applied state: the snapshot in use stays.
//!
//! Routes map every node's pod CIDRs to that node and every local endpoint's addresses (as host
//! prefixes) to that endpoint, in one LPM per family: one lookup on the destination tells the
//! engine "local pod", "this node" or "remote node".

pub mod cidr;
pub mod lpm;
pub mod policy;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

pub use cidr::{Cidr, CidrError};
pub use lpm::{Lpm, LpmBuilder};
pub use policy::{
    CompiledPolicy, L4, PeerSpec, PolicyError, PolicySpec, PortProtocol, PortSpec, RuleSpec,
};

use crate::wire::MacAddr;

/// Everything the dataplane needs to forward, as pushed by the control process.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TableSpec {
    /// The name of the node this dataplane runs on; must be one of `nodes`.
    pub local_node: String,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// The pods on this node.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

/// Why a tables file could not be read; names the file and, for syntax, line and column.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read tables file {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("tables file {path}, line {line}, column {column}: {message}")]
    Parse { path: std::path::PathBuf, line: usize, column: usize, message: String },
}

impl TableSpec {
    /// Reads a tables file in the JSON encoding of [`TableSpec`] (the encoding the control
    /// protocol will carry; `docs/tables.md` shows an example).
    pub fn from_json_file(path: &std::path::Path) -> Result<TableSpec, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
        serde_json::from_str(&text).map_err(|e| LoadError::Parse {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string().split(" at line ").next().unwrap_or_default().to_owned(),
        })
    }
}

/// A node of the cluster (this one included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    /// The node's address on the underlay: outer source/destination of VXLAN.
    pub underlay: IpAddr,
    /// The node's VTEP MAC: inner destination MAC of frames sent to it (Flannel's VtepMAC,
    /// Calico's VXLANTunnelMACAddr). Optional in the encoding so that its absence is a
    /// validation error naming the node, not a parse error.
    #[serde(default)]
    pub vtep_mac: Option<MacAddr>,
    /// Underlay next-hop MAC for the outer frame, resolved by the daemon from the kernel's
    /// neighbour table. Unresolved: frames to this node are dropped as `NextHopUnresolved`.
    #[serde(default)]
    pub next_hop_mac: Option<MacAddr>,
    #[serde(default)]
    pub pod_cidrs: Vec<Cidr>,
}

/// A pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub mac: MacAddr,
    /// Host-side veth of the pod.
    pub interface: String,
    /// Name of the compiled policy for traffic into the pod; `None`: no policy selects the
    /// pod for ingress, everything is allowed.
    #[serde(default)]
    pub ingress_policy: Option<String>,
    /// Same for traffic from the pod.
    #[serde(default)]
    pub egress_policy: Option<String>,
}

impl EndpointSpec {
    /// `namespace/name`, how errors and the CLI name a pod.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

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
    #[error("too many {what}: {count} (at most {max})")]
    TooMany { what: &'static str, count: usize, max: usize },
}

/// Index of a node in [`Snapshot::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub u32);

/// Index of an endpoint in [`Snapshot::endpoints`]. Valid for one snapshot only.
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
}

/// A local endpoint as the engine uses it. Policies are indices into [`Snapshot::policies`].
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub mac: MacAddr,
    pub interface: String,
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

/// A fast hasher for the snapshot's small integer-keyed maps (addresses of nodes). The keys
/// come from the control process, not the network, so hash flooding is not a concern and
/// SipHash's cost per packet is not worth paying.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }

    /// The multiply mixes bits only upwards, while hashbrown picks buckets with the low bits:
    /// without the rotation, pod addresses that share their low bits (block-aligned IPAM)
    /// collide into long probe sequences. Rotating brings the well-mixed high bits down (as
    /// rustc-hash 2 does).
    #[inline]
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// An immutable, validated set of tables. Workers hold an `Arc<Snapshot>` for one batch.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    local_node: NodeId,
    nodes: Vec<Node>,
    node_by_underlay_v4: FastMap<u32, NodeId>,
    node_by_underlay_v6: FastMap<u128, NodeId>,
    endpoints: Vec<Endpoint>,
    endpoint_by_interface: HashMap<String, EndpointId>,
    routes_v4: Lpm,
    routes_v6: Lpm,
    policies: Vec<CompiledPolicy>,
    policy_index: HashMap<String, u32>,
}

impl Snapshot {
    /// Validates `spec` and builds the tables. Any inconsistency is a [`TableError`] naming
    /// the entry; nothing is half-built.
    pub fn build(spec: &TableSpec, generation: u64) -> Result<Snapshot, TableError> {
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
            nodes.push(Node {
                name: n.name.clone(),
                underlay: n.underlay,
                vtep_mac,
                next_hop_mac: n.next_hop_mac,
                pod_cidrs: n.pod_cidrs.clone(),
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

        // Endpoints.
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        let mut endpoint_keys: HashMap<String, ()> = HashMap::with_capacity(spec.endpoints.len());
        let mut ip_owner: HashMap<IpAddr, usize> = HashMap::new();
        let mut endpoint_by_interface = HashMap::with_capacity(spec.endpoints.len());
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
            if let Some(first) =
                endpoint_by_interface.insert(e.interface.clone(), EndpointId(i as u32))
            {
                return Err(TableError::DuplicateInterface {
                    interface: e.interface.clone(),
                    first: spec.endpoints[first.0 as usize].key(),
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
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                labels: e.labels.clone(),
                ips: e.ips.clone(),
                mac: e.mac,
                interface: e.interface.clone(),
                ingress_policy: resolve(&e.ingress_policy)?,
                egress_policy: resolve(&e.egress_policy)?,
            });
        }

        // Routes: node CIDRs, then local endpoints as host routes (longer, so they win).
        let (mut v4, mut v6) = (LpmBuilder::new(), LpmBuilder::new());
        for (i, n) in nodes.iter().enumerate() {
            for c in &n.pod_cidrs {
                let b = if c.is_ipv4() { &mut v4 } else { &mut v6 };
                b.insert(c.key(), c.len(), i as u32);
            }
        }
        for (i, e) in endpoints.iter().enumerate() {
            for &ip in &e.ips {
                let c = Cidr::host(ip);
                let b = if c.is_ipv4() { &mut v4 } else { &mut v6 };
                b.insert(c.key(), c.len(), ROUTE_ENDPOINT | i as u32);
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

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    #[inline]
    pub fn endpoint(&self, id: EndpointId) -> &Endpoint {
        &self.endpoints[id.0 as usize]
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
        let endpoints: usize = self
            .endpoints
            .iter()
            .map(|e| {
                std::mem::size_of::<Endpoint>()
                    + e.namespace.capacity()
                    + e.name.capacity()
                    + e.interface.capacity()
                    + e.ips.capacity() * std::mem::size_of::<IpAddr>()
                    + e.labels.iter().map(|(k, v)| k.capacity() + v.capacity() + 48).sum::<usize>()
            })
            .sum();
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
        let _ = writeln!(out, "endpoints:   {} local", self.endpoints.len());
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

    /// Builds a snapshot from `spec` with the next generation and publishes it. On error the
    /// snapshot in force stays and the error names the offending entry.
    pub fn update(&self, spec: &TableSpec) -> Result<u64, TableError> {
        let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = self.current.load().generation + 1;
        let next = Snapshot::build(spec, generation)?;
        self.current.store(Arc::new(next));
        Ok(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ingress_policy: None,
            egress_policy: None,
        }
    }

    fn good() -> TableSpec {
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
        ];
        for (break_it, message) in cases {
            let mut spec = good();
            break_it(&mut spec);
            let err = Snapshot::build(&spec, 1).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }

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
        assert_eq!(cell.load().endpoints().len(), 1);
        // A reader holding the old snapshot keeps it, unchanged, until it lets go.
        let held = cell.load_full();
        cell.update(&good()).unwrap();
        assert_eq!(held.generation(), 2);
        assert_eq!(cell.load().generation(), 3);
    }

    #[test]
    fn spec_json_round_trip() {
        let mut spec = good();
        spec.policies.push(PolicySpec {
            name: "web".into(),
            rules: vec![RuleSpec {
                peers: vec![PeerSpec {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    except: vec!["10.1.0.0/16".parse().unwrap()],
                }],
                ports: vec![PortSpec {
                    protocol: PortProtocol::Tcp,
                    port: Some(80),
                    end_port: Some(90),
                }],
            }],
        });
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"endPort\":90"), "{json}");
        assert!(json.contains("\"vtep_mac\":\"0a:58:00:00:00:01\""), "{json}");
        let back: TableSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        let err = serde_json::from_str::<TableSpec>(&json.replace("10.0.0.0/8", "10.0.0.1/8"))
            .unwrap_err();
        assert!(err.to_string().contains("has host bits set"), "{err}");
    }
}
