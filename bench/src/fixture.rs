//! Synthetic clusters at scale and the frames that cross them, shared by the criterion
//! benchmarks, the memory report and the integration tests. Deterministic: the same
//! parameters always give the same tables and frames.
//!
//! Layout: node `i` (0 is the local node) has underlay 172.16.x.y = 172.16.0.0 + i + 1 and
//! owns `blocks_per_node` Calico-style /26 blocks from 10.0.0.0/8; local pods take the first
//! addresses of node 0's blocks. Frames are built with etherparse, an encoder independent of
//! `podlane_core::wire`.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::PacketBuilder;
use podlane_core::engine::EngineConfig;
use podlane_core::table::{
    Cidr, EndpointSpec, NodeSpec, PeerSpec, PolicySpec, PortProtocol, PortSpec, RuleSpec, TableSpec,
};
use podlane_core::wire::MacAddr;

/// The size of a synthetic cluster.
#[derive(Debug, Clone)]
pub struct ClusterParams {
    pub nodes: usize,
    /// /26 blocks per node: routes = nodes × blocks_per_node.
    pub blocks_per_node: usize,
    pub local_endpoints: usize,
    /// Pods cluster-wide (policy peers are drawn from them).
    pub cluster_endpoints: usize,
    pub rules_per_policy: usize,
    /// Peers (/32 of cluster pods) per rule, as a resolved podSelector gives.
    pub peers_per_rule: usize,
    /// Distinct policies among local endpoints: 1 = all share one, `local_endpoints` = each
    /// its own (the worst case for memory).
    pub distinct_policies: usize,
}

impl ClusterParams {
    /// What the criterion benchmarks run on: 100,000 routes, 1,000 rules on every endpoint.
    pub fn bench() -> ClusterParams {
        ClusterParams {
            nodes: 5000,
            blocks_per_node: 20,
            local_endpoints: 250,
            cluster_endpoints: 100_000,
            rules_per_policy: 1000,
            peers_per_rule: 1,
            distinct_policies: 1,
        }
    }

    /// The memory target of the foundation issue: 5,000 nodes, 100,000 endpoints cluster-wide
    /// (250 local), 1,000 rules per local endpoint, every local endpoint with its own policy.
    pub fn memory_target() -> ClusterParams {
        ClusterParams {
            nodes: 5000,
            blocks_per_node: 5,
            local_endpoints: 250,
            cluster_endpoints: 100_000,
            rules_per_policy: 1000,
            peers_per_rule: 4,
            distinct_policies: 250,
        }
    }
}

/// A tiny deterministic PRNG (xorshift64*), so fixtures need no `rand`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub const LOCAL_UPLINK_MAC: MacAddr = MacAddr([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
pub const GATEWAY_MAC: MacAddr = MacAddr([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
/// The TCP/UDP port the fixture's allowed traffic uses (one of the rules allows it).
pub const ALLOWED_PORT: u16 = 5000;

pub fn node_underlay(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xac10_0000u32 + i as u32 + 1)
}

pub fn node_vtep_mac(i: usize) -> MacAddr {
    let b = (i as u32).to_be_bytes();
    MacAddr([0x0a, 0x10, b[0], b[1], b[2], b[3]])
}

fn next_hop_mac(i: usize) -> MacAddr {
    let b = (i as u32).to_be_bytes();
    MacAddr([0x02, 0x20, b[0], b[1], b[2], b[3]])
}

/// First address of /26 block `b` in 10.0.0.0/8.
fn block(b: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32 + (b as u32) * 64)
}

/// Address `k` (0-based, skipping the network address) of node `n`'s pods.
pub fn pod_ip(params: &ClusterParams, n: usize, k: usize) -> Ipv4Addr {
    let per_block = 62;
    let b = n * params.blocks_per_node + (k / per_block) % params.blocks_per_node;
    Ipv4Addr::from(u32::from(block(b)) + 1 + (k % per_block) as u32)
}

pub fn local_pod_mac(k: usize) -> MacAddr {
    let b = (k as u32).to_be_bytes();
    MacAddr([0x0a, 0x58, b[0], b[1], b[2], b[3]])
}

pub fn local_interface(k: usize) -> String {
    format!("veth{k:04}")
}

/// A random pod of the cluster (any node, including this one).
fn cluster_pod(params: &ClusterParams, rng: &mut Rng) -> Ipv4Addr {
    let per_node = params.cluster_endpoints.div_ceil(params.nodes).max(1);
    pod_ip(params, rng.below(params.nodes), rng.below(per_node))
}

/// One policy of `rules_per_policy` rules: random cluster pods × random TCP ports, plus one
/// rule that admits the fixture's own traffic (UDP and TCP `ALLOWED_PORT` from 10.0.0.0/8).
pub fn policy(params: &ClusterParams, name: &str, rng: &mut Rng) -> PolicySpec {
    let mut rules = Vec::with_capacity(params.rules_per_policy);
    for _ in 1..params.rules_per_policy.max(1) {
        let peers = (0..params.peers_per_rule)
            .map(|_| PeerSpec {
                cidr: Cidr::host(IpAddr::V4(cluster_pod(params, rng))),
                except: vec![],
            })
            .collect();
        let port = 1 + rng.below(ALLOWED_PORT as usize - 1) as u16;
        rules.push(RuleSpec {
            peers,
            ports: vec![PortSpec { protocol: PortProtocol::Tcp, port: Some(port), end_port: None }],
        });
    }
    rules.push(RuleSpec {
        peers: vec![PeerSpec { cidr: "10.0.0.0/8".parse().expect("literal"), except: vec![] }],
        ports: vec![
            PortSpec { protocol: PortProtocol::Udp, port: Some(ALLOWED_PORT), end_port: None },
            PortSpec { protocol: PortProtocol::Tcp, port: Some(ALLOWED_PORT), end_port: None },
        ],
    });
    PolicySpec { name: name.to_owned(), rules }
}

/// The tables of a synthetic cluster as seen from node 0.
pub fn cluster(params: &ClusterParams) -> TableSpec {
    let mut rng = Rng::new(0x9d0d_1a4e);
    let nodes = (0..params.nodes)
        .map(|i| NodeSpec {
            name: format!("node-{i:05}"),
            underlay: IpAddr::V4(node_underlay(i)),
            vtep_mac: Some(node_vtep_mac(i)),
            next_hop_mac: if i == 0 { None } else { Some(next_hop_mac(i)) },
            pod_cidrs: (0..params.blocks_per_node)
                .map(|b| {
                    Cidr::new(IpAddr::V4(block(i * params.blocks_per_node + b)), 26)
                        .expect("aligned")
                })
                .collect(),
            tunnel_ips: Vec::new(),
        })
        .collect();
    let policies: Vec<PolicySpec> = (0..params.distinct_policies.max(1))
        .map(|i| policy(params, &format!("policy-{i:04}"), &mut rng))
        .collect();
    let endpoints = (0..params.local_endpoints)
        .map(|k| {
            let policy = &policies[k % policies.len()].name;
            EndpointSpec {
                namespace: "bench".into(),
                name: format!("pod-{k:04}"),
                labels: [("app".to_owned(), format!("app-{}", k % 10))].into_iter().collect(),
                ips: vec![IpAddr::V4(pod_ip(params, 0, k))],
                mac: local_pod_mac(k),
                interface: local_interface(k),
                edge: Default::default(),
                ingress_policy: Some(policy.clone()),
                egress_policy: Some(policy.clone()),
            }
        })
        .collect();
    TableSpec { local_node: "node-00000".into(), nodes, endpoints, policies }
}

/// The engine configuration the fixture's frames are addressed for (Flannel's VNI and port).
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        uplink_mac: LOCAL_UPLINK_MAC,
        gateway_mac: GATEWAY_MAC,
        ..EngineConfig::default()
    }
}

fn write(builder: PacketBuilder_, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("writing to a Vec cannot fail");
    out
}

type PacketBuilder_ = etherparse::PacketBuilderStep<etherparse::UdpHeader>;

/// A UDP frame of `frame_len` bytes (Ethernet header included, at least 42) from local pod
/// `k` to `dst`, addressed to the gateway as a pod sends it.
pub fn pod_udp_frame(
    params: &ClusterParams,
    k: usize,
    dst: Ipv4Addr,
    src_port: u16,
    frame_len: usize,
) -> Vec<u8> {
    let src = pod_ip(params, 0, k);
    let builder = PacketBuilder::ethernet2(local_pod_mac(k).0, GATEWAY_MAC.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(src_port, ALLOWED_PORT);
    write(builder, &vec![0x5a; frame_len.saturating_sub(42)])
}

/// `count` frames from local pods to pods on random remote nodes (the encap path).
pub fn encap_frames(
    params: &ClusterParams,
    count: usize,
    frame_len: usize,
) -> Vec<(usize, Vec<u8>)> {
    let mut rng = Rng::new(0xe1ca9);
    (0..count)
        .map(|i| {
            let k = rng.below(params.local_endpoints);
            let node = 1 + rng.below(params.nodes - 1);
            let dst = pod_ip(params, node, rng.below(62));
            (k, pod_udp_frame(params, k, dst, 10_000 + i as u16, frame_len))
        })
        .collect()
}

/// `count` frames from local pods to other local pods (the local path).
pub fn local_frames(
    params: &ClusterParams,
    count: usize,
    frame_len: usize,
) -> Vec<(usize, Vec<u8>)> {
    let mut rng = Rng::new(0x10ca1);
    (0..count)
        .map(|i| {
            let k = rng.below(params.local_endpoints);
            let mut j = rng.below(params.local_endpoints);
            if j == k {
                j = (j + 1) % params.local_endpoints;
            }
            (k, pod_udp_frame(params, k, pod_ip(params, 0, j), 10_000 + i as u16, frame_len))
        })
        .collect()
}

/// A VXLAN frame as remote node `node` (≥ 1) sends it to node 0, carrying a UDP packet of
/// `inner_len` bytes (inner Ethernet included) for local pod `k`.
pub fn vxlan_frame(
    params: &ClusterParams,
    config: &EngineConfig,
    node: usize,
    k: usize,
    src_port: u16,
    inner_len: usize,
) -> Vec<u8> {
    let inner_builder = PacketBuilder::ethernet2(node_vtep_mac(node).0, node_vtep_mac(0).0)
        .ipv4(pod_ip(params, node, 1).octets(), pod_ip(params, 0, k).octets(), 64)
        .udp(src_port, ALLOWED_PORT);
    let inner = write(inner_builder, &vec![0xa5; inner_len.saturating_sub(42)]);
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(config.vni << 8).to_be_bytes());
    payload.extend_from_slice(&inner);
    let outer = PacketBuilder::ethernet2(next_hop_mac(node).0, LOCAL_UPLINK_MAC.0)
        .ipv4(node_underlay(node).octets(), node_underlay(0).octets(), 64)
        .udp(32768 + src_port % 28000, config.vxlan_port);
    write(outer, &payload)
}

/// `count` VXLAN frames from random remote nodes to random local pods (the decap path).
pub fn decap_frames(
    params: &ClusterParams,
    config: &EngineConfig,
    count: usize,
    inner_len: usize,
) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(0xdeca9);
    (0..count)
        .map(|i| {
            let node = 1 + rng.below(params.nodes - 1);
            let k = rng.below(params.local_endpoints);
            vxlan_frame(params, config, node, k, 10_000 + i as u16, inner_len)
        })
        .collect()
}

/// An ARP request from local pod `k` for the gateway address, padded to 60 bytes.
pub fn arp_request(params: &ClusterParams, config: &EngineConfig, k: usize) -> Vec<u8> {
    let mut f = MacAddr::BROADCAST.0.to_vec();
    f.extend_from_slice(&local_pod_mac(k).0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&local_pod_mac(k).0);
    f.extend_from_slice(&pod_ip(params, 0, k).octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&config.gateway_v4.octets());
    f.resize(60, 0);
    f
}

/// A full sync at the control protocol's target scale: the cluster's nodes (with `params`'
/// blocks) and `endpoints` local endpoints, which the local node holds in an extra
/// 100.64.0.0/10 pod CIDR (room for four million). Endpoints share one policy of
/// `params.rules_per_policy` rules.
pub fn full_sync(params: &ClusterParams, endpoints: usize) -> TableSpec {
    let mut spec =
        cluster(&ClusterParams { local_endpoints: 1, distinct_policies: 1, ..params.clone() });
    let local_cidr: Cidr = "100.64.0.0/10".parse().expect("valid");
    spec.nodes[0].pod_cidrs.push(local_cidr);
    let policy = spec.policies[0].name.clone();
    spec.endpoints = (0..endpoints)
        .map(|k| EndpointSpec {
            namespace: "bench".into(),
            name: format!("pod-{k:06}"),
            labels: [("app".to_owned(), format!("app-{}", k % 10))].into_iter().collect(),
            ips: vec![IpAddr::V4(Ipv4Addr::from(0x6440_0001u32 + k as u32))],
            mac: local_pod_mac(k),
            interface: format!("veth{k:06}"),
            edge: Default::default(),
            ingress_policy: Some(policy.clone()),
            egress_policy: None,
        })
        .collect();
    spec
}
