//! From Kubernetes objects to a [`Cluster`], and from this node's identity to the Node
//! annotations kernel nodes program their vxlan device from. Pure functions: no client, no
//! clock, so that every case can be tested with objects in the API's own shapes.
//!
//! What is read (REFERENCE.md, "How Flannel and Calico program a remote node"):
//!
//! * **Nodes** — pod CIDRs from `spec.podCIDRs` (or `spec.podCIDR`); the underlay address and
//!   VTEP MAC from the annotations of the overlay this node is on: Flannel's
//!   `flannel.alpha.coreos.com/public-ip` and `backend-data` (`{"VNI":1,"VtepMAC":…}`; the
//!   `-v6` pair on an IPv6 underlay), or Calico's `projectcalico.org/IPv4Address`,
//!   `VXLANTunnelMACAddr` and `IPv4VXLANTunnelAddr` (the `IPv6`/`V6` ones on an IPv6
//!   underlay). A node without them is not on the overlay yet and is left out.
//! * **Pods** — `status.podIPs`, labels, `spec.nodeName`, the containers' ports. Pods on the
//!   host's network, and pods that finished (Succeeded, Failed: their addresses may already
//!   be another pod's), are not pods of the overlay.
//! * **Namespaces** (labels) and **NetworkPolicies**, as they are.
//!
//! A bad Node or Pod never blocks the others: it is left out with a [`Skipped`] saying why;
//! a NetworkPolicy rule whose CIDR or port cannot be read is left out of its policy, which
//! then allows less, never more. A selector operator or protocol the API server would have
//! refused is passed on, and the cluster's tables refuse it as a cluster file's would.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Node as KubeNode, Pod as KubePod};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy as KubeNetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KubeLabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podlane_core::table::Cidr;
use podlane_core::wire::MacAddr;
use serde::Deserialize;

use crate::cluster::{
    Cluster, ContainerPort, EgressRule, IngressRule, IpBlock, LabelSelector, Metadata, Namespace,
    NetworkPolicy, NetworkPolicySpec, Node, Peer, Pod, Port, PortValue, Requirement,
};

/// Flannel's annotations (its kube subnet manager's).
pub mod flannel {
    pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
    pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
    pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
    pub const BACKEND_V6_DATA: &str = "flannel.alpha.coreos.com/backend-v6-data";
    pub const PUBLIC_IPV6: &str = "flannel.alpha.coreos.com/public-ipv6";
    pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";
}

/// Calico's annotations (its Kubernetes datastore's).
pub mod calico {
    pub const IPV4_ADDRESS: &str = "projectcalico.org/IPv4Address";
    pub const IPV4_TUNNEL_ADDR: &str = "projectcalico.org/IPv4VXLANTunnelAddr";
    pub const TUNNEL_MAC: &str = "projectcalico.org/VXLANTunnelMACAddr";
    pub const IPV6_ADDRESS: &str = "projectcalico.org/IPv6Address";
    pub const IPV6_TUNNEL_ADDR: &str = "projectcalico.org/IPv6VXLANTunnelAddr";
    pub const TUNNEL_MAC_V6: &str = "projectcalico.org/VXLANTunnelMACAddrV6";
}

/// Which overlay the node is on, from the dataplane's VNI and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    /// Flannel's vxlan backend (its annotations are read and written).
    Flannel,
    /// Calico's VXLAN mode (its annotations are read; Flannel's are written as well).
    Calico,
}

impl Overlay {
    /// Calico for its VNI and port (4096, 4789), Flannel otherwise.
    pub fn of(vni: u32, port: u16) -> Overlay {
        if (vni, port) == (4096, 4789) { Overlay::Calico } else { Overlay::Flannel }
    }
}

/// This node as the dataplane runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    pub name: String,
    pub underlay: IpAddr,
    pub vtep_mac: MacAddr,
    pub vni: u32,
    pub overlay: Overlay,
}

/// An object left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `node/NAME`, `pod/NAMESPACE/NAME`, `networkpolicy/NAMESPACE/NAME`.
    pub object: String,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} left out: {}", self.object, self.reason)
    }
}

/// The objects the agent watches.
#[derive(Debug, Clone, Copy)]
pub struct ApiObjects<'a> {
    pub nodes: &'a [&'a KubeNode],
    pub pods: &'a [&'a KubePod],
    pub namespaces: &'a [&'a KubeNamespace],
    pub policies: &'a [&'a KubeNetworkPolicy],
}

/// The cluster as `local` sees it, and what was left out.
pub fn cluster_from_api(local: &LocalNode, objects: ApiObjects<'_>) -> (Cluster, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut sorted_nodes = objects.nodes.to_vec();
    sorted_nodes.sort_by(|a, b| name_of(&a.metadata).cmp(name_of(&b.metadata)));
    // This node first: its own address wins over a stale annotation elsewhere claiming it.
    sorted_nodes.sort_by_key(|n| name_of(&n.metadata) != local.name);
    for node in sorted_nodes {
        let name = name_of(&node.metadata).to_owned();
        match node_from_api(local, node) {
            Ok(n) => match nodes.iter().find(|o| o.underlay == n.underlay) {
                Some(other) => skipped.push(Skipped {
                    object: format!("node/{name}"),
                    reason: format!("its underlay address {} is node {}'s", n.underlay, other.name),
                }),
                None => nodes.push(n),
            },
            Err(reason) => skipped.push(Skipped { object: format!("node/{name}"), reason }),
        }
    }
    if !nodes.iter().any(|n| n.name == local.name) {
        // The tables need this node; without its Node object it has no pod CIDRs yet.
        nodes.insert(0, local_node(local, &[]));
    }
    let mut pods = Vec::new();
    for pod in objects.pods {
        let key = format!(
            "pod/{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            name_of(&pod.metadata)
        );
        match pod_from_api(pod, &local.name) {
            Ok(Some(p)) if nodes.iter().any(|n| n.name == p.node) => pods.push(p),
            Ok(Some(p)) => skipped.push(Skipped {
                object: key,
                reason: format!("its node {:?} is not on the overlay", p.node),
            }),
            Ok(None) => {}
            Err(reason) => skipped.push(Skipped { object: key, reason }),
        }
    }
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut namespaces: Vec<Namespace> = objects
        .namespaces
        .iter()
        .map(|ns| Namespace {
            name: name_of(&ns.metadata).to_owned(),
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        })
        .collect();
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    let mut network_policies = Vec::new();
    for np in objects.policies {
        network_policies.push(policy_from_api(np, &mut skipped));
    }
    network_policies.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    (Cluster { namespaces, nodes, pods, network_policies }, skipped)
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

/// This node's entry: the dataplane's address and VTEP MAC, the API's pod CIDRs.
fn local_node(local: &LocalNode, pod_cidrs: &[Cidr]) -> Node {
    Node {
        name: local.name.clone(),
        underlay: local.underlay,
        vtep_mac: local.vtep_mac,
        pod_cidr: None,
        pod_cidrs: pod_cidrs.to_vec(),
        tunnel_ips: Vec::new(),
    }
}

/// A node's pod CIDRs: `spec.podCIDRs`, else `spec.podCIDR`.
pub fn pod_cidrs_of(node: &KubeNode) -> Result<Vec<Cidr>, String> {
    let spec = node.spec.as_ref();
    let listed = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    let texts = if listed.is_empty() {
        spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect()
    } else {
        listed
    };
    texts.iter().map(|t| t.parse::<Cidr>().map_err(|e| format!("pod CIDR {t:?}: {e}"))).collect()
}

/// Flannel's `backend-data`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FlannelBackendData {
    /// Absent in what some external VTEPs publish; Flannel does not check it either.
    #[serde(rename = "VNI", default)]
    vni: Option<u32>,
    #[serde(rename = "VtepMAC")]
    vtep_mac: String,
}

fn node_from_api(local: &LocalNode, node: &KubeNode) -> Result<Node, String> {
    let pod_cidrs = pod_cidrs_of(node)?;
    let name = name_of(&node.metadata).to_owned();
    if name == local.name {
        return Ok(local_node(local, &pod_cidrs));
    }
    if pod_cidrs.is_empty() {
        return Err("it has no pod CIDR (spec.podCIDRs)".into());
    }
    let empty = BTreeMap::new();
    let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
    let get = |key: &str| {
        annotations
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("no {key} annotation: not on the overlay yet"))
    };
    let v6 = local.underlay.is_ipv6();
    let (underlay, vtep_mac, tunnel_ips) = match local.overlay {
        Overlay::Flannel => {
            let (ip_key, data_key) = if v6 {
                (flannel::PUBLIC_IPV6, flannel::BACKEND_V6_DATA)
            } else {
                (flannel::PUBLIC_IP, flannel::BACKEND_DATA)
            };
            let data: FlannelBackendData =
                serde_json::from_str(get(data_key)?).map_err(|e| format!("{data_key}: {e}"))?;
            if let Some(vni) = data.vni
                && vni != local.vni
            {
                return Err(format!("{data_key} says VNI {vni}, this node's is {}", local.vni));
            }
            let underlay = get(ip_key)?;
            (underlay.to_owned(), data.vtep_mac, Vec::new())
        }
        Overlay::Calico => {
            let (ip_key, mac_key, tunnel_key) = if v6 {
                (calico::IPV6_ADDRESS, calico::TUNNEL_MAC_V6, calico::IPV6_TUNNEL_ADDR)
            } else {
                (calico::IPV4_ADDRESS, calico::TUNNEL_MAC, calico::IPV4_TUNNEL_ADDR)
            };
            // "192.168.99.4/24": the address and its subnet's length.
            let address = get(ip_key)?;
            let underlay = address.split('/').next().unwrap_or(address);
            let tunnel = get(tunnel_key)?;
            let tunnel: IpAddr =
                tunnel.parse().map_err(|e| format!("{tunnel_key} {tunnel:?}: {e}"))?;
            (underlay.to_owned(), get(mac_key)?.to_owned(), vec![tunnel])
        }
    };
    let underlay: IpAddr =
        underlay.parse().map_err(|e| format!("underlay address {underlay:?}: {e}"))?;
    if underlay.is_ipv6() != v6 {
        return Err(format!("underlay address {underlay} is not of this node's family"));
    }
    let vtep_mac: MacAddr = vtep_mac.parse().map_err(|e| format!("VTEP MAC {vtep_mac:?}: {e}"))?;
    if vtep_mac.is_multicast() || vtep_mac.is_zero() {
        return Err(format!("VTEP MAC {vtep_mac} is not a unicast address"));
    }
    if let Some(ip) = tunnel_ips.iter().find(|ip| !pod_cidrs.iter().any(|c| c.contains(**ip))) {
        // Calico's tunnel address is in one of its IPAM blocks, which podlane does not read
        // (it routes the node's podCIDRs).
        return Err(format!("tunnel address {ip} is outside its pod CIDRs"));
    }
    Ok(Node { name, underlay, vtep_mac, pod_cidr: None, pod_cidrs, tunnel_ips })
}

/// A pod of the overlay, `None` for one that is not (host network, finished, not yet
/// scheduled, or not yet addressed on another node). A pod of this node is kept before the
/// API has its addresses: podlane-cni's record has them, and the pod's labels (so its
/// policies) apply from the moment it is wired.
fn pod_from_api(pod: &KubePod, local: &str) -> Result<Option<Pod>, String> {
    let Some(spec) = &pod.spec else { return Ok(None) };
    if spec.host_network == Some(true) {
        return Ok(None);
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) else { return Ok(None) };
    let mut texts: Vec<String> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
        .unwrap_or_default();
    if texts.is_empty() {
        texts.extend(status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()));
    }
    if texts.is_empty() && node != local {
        return Ok(None);
    }
    let ips = texts
        .iter()
        .map(|t| t.parse::<IpAddr>().map_err(|e| format!("pod IP {t:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = Vec::new();
    for container in &spec.containers {
        for port in container.ports.iter().flatten() {
            let number = u16::try_from(port.container_port)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("container port {}", port.container_port))?;
            ports.push(ContainerPort {
                name: port.name.clone(),
                container_port: number,
                protocol: port.protocol.clone(),
            });
        }
    }
    Ok(Some(Pod {
        namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: name_of(&pod.metadata).to_owned(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ip: None,
        ips,
        mac: None,
        node,
        interface: None,
        ports,
    }))
}

fn policy_from_api(np: &KubeNetworkPolicy, skipped: &mut Vec<Skipped>) -> NetworkPolicy {
    let namespace = np.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = name_of(&np.metadata).to_owned();
    let object = format!("networkpolicy/{namespace}/{name}");
    let spec = np.spec.clone().unwrap_or_default();
    let mut rule_error = |direction: &str, index: usize, reason: String| {
        skipped.push(Skipped {
            object: format!("{object} {direction}[{index}]"),
            reason: format!("{reason}; the rule allows nothing"),
        })
    };
    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        match peers_and_ports(rule.from.as_deref(), rule.ports.as_deref()) {
            Ok((from, ports)) => ingress.push(IngressRule { from, ports }),
            Err(e) => rule_error("ingress", i, e),
        }
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        match peers_and_ports(rule.to.as_deref(), rule.ports.as_deref()) {
            Ok((to, ports)) => egress.push(EgressRule { to, ports }),
            Err(e) => rule_error("egress", i, e),
        }
    }
    NetworkPolicy {
        api_version: Some("networking.k8s.io/v1".into()),
        kind: Some("NetworkPolicy".into()),
        metadata: Metadata { name, namespace },
        spec: NetworkPolicySpec {
            pod_selector: spec.pod_selector.as_ref().map(selector).unwrap_or_default(),
            policy_types: spec.policy_types.clone(),
            // A rule dropped above still counts as present: with policyTypes absent, an egress
            // list makes the policy isolate egress even when none of its rules could be read.
            ingress: spec.ingress.as_ref().map(|_| ingress),
            egress: spec.egress.as_ref().map(|_| egress),
        },
    }
}

type PeersAndPorts = (Option<Vec<Peer>>, Option<Vec<Port>>);

fn peers_and_ports(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<PeersAndPorts, String> {
    let peers = peers
        .map(|peers| {
            peers
                .iter()
                .map(|p| {
                    let ip_block = match &p.ip_block {
                        Some(block) => Some(IpBlock {
                            cidr: parse_cidr(&block.cidr)?,
                            except: block
                                .except
                                .iter()
                                .flatten()
                                .map(|c| parse_cidr(c))
                                .collect::<Result<_, _>>()?,
                        }),
                        None => None,
                    };
                    Ok(Peer {
                        pod_selector: p.pod_selector.as_ref().map(selector),
                        namespace_selector: p.namespace_selector.as_ref().map(selector),
                        ip_block,
                    })
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()?;
    let ports = ports
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let port = match &p.port {
                        Some(IntOrString::Int(n)) => Some(PortValue::Number(
                            u16::try_from(*n)
                                .ok()
                                .filter(|n| *n > 0)
                                .ok_or_else(|| format!("port {n}"))?,
                        )),
                        Some(IntOrString::String(name)) => Some(PortValue::Name(name.clone())),
                        None => None,
                    };
                    let end_port = p
                        .end_port
                        .map(|n| u16::try_from(n).map_err(|_| format!("endPort {n}")))
                        .transpose()?;
                    Ok(Port { protocol: p.protocol.clone(), port, end_port })
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()?;
    Ok((peers, ports))
}

/// An ipBlock's CIDR. The API server accepts host bits set ("10.0.0.1/24") and means the
/// network; so does this.
fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr, len) = text.split_once('/').ok_or_else(|| format!("CIDR {text:?}: no prefix"))?;
    let addr: IpAddr = addr.parse().map_err(|e| format!("CIDR {text:?}: {e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("CIDR {text:?}: {e}"))?;
    let masked = match addr {
        IpAddr::V4(a) if len <= 32 => IpAddr::V4(
            (u32::from(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)).into(),
        ),
        IpAddr::V6(a) if len <= 128 => IpAddr::V6(
            (u128::from(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)).into(),
        ),
        _ => return Err(format!("CIDR {text:?}: prefix length {len} is too long")),
    };
    Cidr::new(masked, len).map_err(|e| format!("CIDR {text:?}: {e}"))
}

fn selector(s: &KubeLabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions: s
            .match_expressions
            .iter()
            .flatten()
            .map(|r| Requirement {
                key: r.key.clone(),
                operator: r.operator.clone(),
                values: r.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// The annotations this node publishes so that kernel nodes program their vxlan device for
/// it: Flannel's always (a Flannel node reads them; so does another podlane node), Calico's
/// too on a Calico overlay. `pod_cidrs` are this node's.
pub fn node_annotations(local: &LocalNode, pod_cidrs: &[Cidr]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let data = serde_json::json!({"VNI": local.vni, "VtepMAC": local.vtep_mac.to_string()});
    let (ip_key, data_key) = if local.underlay.is_ipv6() {
        (flannel::PUBLIC_IPV6, flannel::BACKEND_V6_DATA)
    } else {
        (flannel::PUBLIC_IP, flannel::BACKEND_DATA)
    };
    out.insert(data_key.to_owned(), data.to_string());
    out.insert(ip_key.to_owned(), local.underlay.to_string());
    out.insert(flannel::BACKEND_TYPE.to_owned(), "vxlan".to_owned());
    out.insert(flannel::KUBE_SUBNET_MANAGER.to_owned(), "true".to_owned());
    if local.overlay == Overlay::Calico {
        let v6 = local.underlay.is_ipv6();
        let (ip_key, mac_key, tunnel_key) = if v6 {
            (calico::IPV6_ADDRESS, calico::TUNNEL_MAC_V6, calico::IPV6_TUNNEL_ADDR)
        } else {
            (calico::IPV4_ADDRESS, calico::TUNNEL_MAC, calico::IPV4_TUNNEL_ADDR)
        };
        let host_len = if v6 { 128 } else { 32 };
        out.insert(ip_key.to_owned(), format!("{}/{host_len}", local.underlay));
        out.insert(mac_key.to_owned(), local.vtep_mac.to_string());
        // The dataplane's default tunnel address: the first of the node's pod CIDR of the
        // family (what a Flannel node's flannel.1 has too).
        if let Some(cidr) = pod_cidrs.iter().find(|c| c.is_ipv4() != v6) {
            out.insert(tunnel_key.to_owned(), cidr.addr().to_string());
        }
    }
    out
}

/// The node's annotations as they would be with `wanted` applied: whether anything differs.
pub fn annotations_differ(node: &KubeNode, wanted: &BTreeMap<String, String>) -> bool {
    let have = node.metadata.annotations.as_ref();
    wanted.iter().any(|(k, v)| have.and_then(|a| a.get(k)) != Some(v))
}

/// The CNI network configuration for this node: `podlane-cni` with host-local handing out
/// the node's pod CIDRs, then portmap for hostPorts (docs/wiring-a-pod.md).
pub fn conflist(
    pod_cidrs: &[Cidr],
    mtu: u32,
    control_socket: &std::path::Path,
    state_dir: &std::path::Path,
) -> String {
    let ranges: Vec<serde_json::Value> =
        pod_cidrs.iter().map(|c| serde_json::json!([{"subnet": c.to_string()}])).collect();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "podlane",
        "plugins": [
            {
                "type": "podlane-cni",
                "mtu": mtu,
                "controlSocket": control_socket,
                "stateDir": state_dir,
                "ipam": {"type": "host-local", "ranges": ranges},
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    let mut text = serde_json::to_string_pretty(&conf).unwrap_or_default();
    text.push('\n');
    text
}
