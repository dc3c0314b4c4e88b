//! The cluster description the agent reads (YAML, docs/cluster.md), and how one node's
//! dataplane tables are computed from it: every node with its underlay address, VTEP MAC and
//! pod CIDRs; this node's pods; and for each of them the union of the NetworkPolicies that
//! select it, with selectors resolved to the addresses of the pods they match.
//!
//! NetworkPolicy semantics (REFERENCE.md): a pod is isolated in a direction once any policy
//! listing that direction in its policyTypes selects it, and then allows what any of those
//! policies allows. Pods selected by the same set of policies share one compiled policy.
//! Peers: podSelector (the policy's namespace), namespaceSelector, both (AND), ipBlock with
//! except. Ports: TCP (default), UDP, SCTP; numbers and endPort ranges; named ports resolved
//! against container ports (an ingress rule's against the selected pod's own, an egress rule's
//! against each peer pod's). A rule whose peers select no pod, or whose named port resolves to
//! nothing, allows nothing (it is left out, not turned into "everyone").

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use podlane_core::api::CniRecord;
use podlane_core::table::{
    Cidr, EndpointSpec, NodeSpec, PeerSpec, PolicySpec, PortProtocol, PortSpec, RuleSpec, TableSpec,
};
use podlane_core::wire::MacAddr;
use serde::Deserialize;

/// The whole description.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub pods: Vec<Pod>,
    #[serde(default)]
    pub network_policies: Vec<NetworkPolicy>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    pub underlay: IpAddr,
    #[serde(rename = "vtepMAC")]
    pub vtep_mac: MacAddr,
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<Cidr>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<Cidr>,
    /// The node's own addresses on the overlay (Calico's `IPv4VXLANTunnelAddr`); default: the
    /// first address of each pod CIDR, as Flannel has it.
    #[serde(default, rename = "tunnelIPs")]
    pub tunnel_ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// The pod's MAC and its interface on this node (the host-side veth). Omitted for a pod
    /// `podlane-cni` wires: its record gives them.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    pub node: String,
    #[serde(default)]
    pub interface: Option<String>,
    /// The pod's containers' ports, for NetworkPolicy's named ports.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// A container port, as in a pod's spec: `{name, containerPort, protocol}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u16,
    /// TCP (the default), UDP or SCTP.
    #[serde(default)]
    pub protocol: Option<String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl Pod {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn addresses(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.ip.into_iter().chain(self.ips.iter().copied()).collect();
        ips.dedup();
        ips
    }

    /// The number of this pod's container port named `name` with `protocol`, if it has one.
    fn named_port(&self, name: &str, protocol: PortProtocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| {
                p.name.as_deref() == Some(name)
                    && protocol_of(p.protocol.as_deref()).ok() == Some(protocol)
            })
            .map(|p| p.container_port)
    }
}

/// A NetworkPolicy in Kubernetes' own shape (networking.k8s.io/v1).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub metadata: Metadata,
    pub spec: NetworkPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    #[serde(default)]
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default)]
    pub from: Option<Vec<Peer>>,
    #[serde(default)]
    pub ports: Option<Vec<Port>>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default)]
    pub to: Option<Vec<Peer>>,
    #[serde(default)]
    pub ports: Option<Vec<Port>>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Peer {
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: Cidr,
    #[serde(default)]
    pub except: Vec<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: Option<PortValue>,
    #[serde(default)]
    pub end_port: Option<u16>,
}

/// A port number or (unsupported here) a named port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Kubernetes label selector semantics; an empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> Result<bool, String> {
        if !self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return Ok(false);
        }
        for r in &self.match_expressions {
            let value = labels.get(&r.key);
            let ok = match r.operator.as_str() {
                "In" => value.is_some_and(|v| r.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => {
                    return Err(format!(
                        "unknown selector operator {other:?} (In, NotIn, Exists, DoesNotExist)"
                    ));
                }
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Cluster {
    /// Reads and parses a cluster file; errors name the file and the line or field.
    pub fn from_file(path: &Path) -> anyhow::Result<Cluster> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read cluster file {}: {e}", path.display()))?;
        Cluster::from_yaml(&text)
            .map_err(|e| anyhow::anyhow!("cluster file {}: {e}", path.display()))
    }

    pub fn from_yaml(text: &str) -> Result<Cluster, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// Labels of a namespace: those listed, plus Kubernetes' automatic
    /// `kubernetes.io/metadata.name`.
    fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), name.to_owned());
        labels
    }

    /// The tables of node `node`, whose pods `podlane-cni` wired as `wired` records.
    ///
    /// A pod of this node is an endpoint when it is wired: by a record (its interface,
    /// addresses and MAC from there, its labels and policies from here), or by the `mac` and
    /// `interface` given here. One that is neither is not wired yet and only a policy peer.
    /// A record whose pod is not described here is an endpoint as recorded, without labels
    /// or policies.
    pub fn tables_for(&self, node: &str, wired: &[CniRecord]) -> Result<TableSpec, String> {
        if !self.nodes.iter().any(|n| n.name == node) {
            return Err(format!("node {node:?} is not in the cluster's nodes"));
        }
        let mut seen = BTreeSet::new();
        for n in &self.nodes {
            if !seen.insert(&n.name) {
                return Err(format!("nodes: {:?} appears twice", n.name));
            }
        }
        for p in &self.pods {
            if !self.nodes.iter().any(|n| n.name == p.node) {
                return Err(format!("pods: {} is on unknown node {:?}", p.key(), p.node));
            }
            // A pod podlane-cni wired has the record's addresses before the API has them; one
            // not wired yet and without addresses is neither an endpoint nor a peer. A pod
            // wired by hand (mac, interface) must say its addresses.
            let recorded = || wired.iter().any(|r| r.endpoint.key() == p.key());
            let by_hand = p.mac.is_some() || p.interface.is_some();
            if p.addresses().is_empty() && by_hand && !recorded() {
                return Err(format!("pods: {} has no ip", p.key()));
            }
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeSpec {
                name: n.name.clone(),
                underlay: n.underlay,
                vtep_mac: Some(n.vtep_mac),
                next_hop_mac: None,
                pod_cidrs: n.pod_cidr.into_iter().chain(n.pod_cidrs.iter().copied()).collect(),
                tunnel_ips: n.tunnel_ips.clone(),
            })
            .collect();
        let mut policies: BTreeMap<String, PolicySpec> = BTreeMap::new();
        let mut endpoints = Vec::new();
        for pod in self.pods.iter().filter(|p| p.node == node) {
            let record = wired.iter().find(|r| r.endpoint.key() == pod.key());
            let mut endpoint = match (record, pod.mac, &pod.interface) {
                (Some(record), _, _) => {
                    let ips = pod.addresses();
                    if !ips.is_empty() && record.endpoint.ips != ips {
                        // Policies computed from this description's addresses name the old
                        // ones until it says what the pod has.
                        tracing::warn!(
                            pod = pod.key(),
                            "the cluster gives {ips:?}, podlane-cni wired {:?}: using the latter",
                            record.endpoint.ips
                        );
                    }
                    record.endpoint.clone()
                }
                (None, Some(mac), Some(interface)) => EndpointSpec {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    labels: BTreeMap::new(),
                    ips: pod.addresses(),
                    mac,
                    interface: interface.clone(),
                    edge: Default::default(),
                    ingress_policy: None,
                    egress_policy: None,
                },
                (None, _, _) => continue,
            };
            endpoint.labels = pod.labels.clone();
            endpoint.ingress_policy = self.policy_for(pod, Direction::Ingress, &mut policies)?;
            endpoint.egress_policy = self.policy_for(pod, Direction::Egress, &mut policies)?;
            endpoints.push(endpoint);
        }
        for record in wired {
            if !endpoints.iter().any(|e| e.key() == record.endpoint.key()) {
                endpoints.push(record.endpoint.clone());
            }
        }
        Ok(TableSpec {
            local_node: node.to_owned(),
            nodes,
            endpoints,
            policies: policies.into_values().collect(),
        })
    }

    /// The compiled policy of `pod` in `direction` (created on first use), or `None` when no
    /// policy isolates it in that direction.
    fn policy_for(
        &self,
        pod: &Pod,
        direction: Direction,
        policies: &mut BTreeMap<String, PolicySpec>,
    ) -> Result<Option<String>, String> {
        let mut selecting = Vec::new();
        for np in &self.network_policies {
            let key = format!("{}/{}", np.metadata.namespace, np.metadata.name);
            if np.metadata.namespace != pod.namespace || !direction.listed_in(&np.spec) {
                continue;
            }
            if np
                .spec
                .pod_selector
                .matches(&pod.labels)
                .map_err(|e| format!("networkPolicies {key}: {e}"))?
            {
                selecting.push((key, np));
            }
        }
        if selecting.is_empty() {
            return Ok(None);
        }
        // An ingress rule's named port is the selected pod's own container port: such a
        // policy is compiled for the pod alone.
        let per_pod = matches!(direction, Direction::Ingress)
            && selecting.iter().any(|(_, np)| direction.rules(&np.spec).iter().any(has_named_port));
        let mut name = format!(
            "{}:{}",
            direction.label(),
            selecting.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join("+")
        );
        if per_pod {
            name = format!("{name}@{}", pod.key());
        }
        if !policies.contains_key(&name) {
            let mut rules = Vec::new();
            for (key, np) in &selecting {
                for (peers, ports) in direction.rules(&np.spec) {
                    let rule = self
                        .rules(np, peers, ports, direction, pod)
                        .map_err(|e| format!("networkPolicies {key}: {e}"))?;
                    rules.extend(rule);
                }
            }
            policies.insert(name.clone(), PolicySpec { name: name.clone(), rules });
        }
        Ok(Some(name))
    }

    /// One rule of a policy selecting `subject`, selectors resolved: the rules of its numbered
    /// ports, and one per number its named ports resolve to (an ingress rule's names against
    /// `subject`'s container ports, an egress rule's against each peer pod's). Nothing for
    /// peers that select no pod, or a name nothing resolves: such a rule allows nothing.
    fn rules(
        &self,
        np: &NetworkPolicy,
        peers: Option<&Vec<Peer>>,
        ports: Option<&Vec<Port>>,
        direction: Direction,
        subject: &Pod,
    ) -> Result<Vec<RuleSpec>, String> {
        let mut numbered = Vec::new();
        let mut named = Vec::new();
        for port in ports.into_iter().flatten() {
            let protocol = protocol_of(port.protocol.as_deref())?;
            match &port.port {
                Some(PortValue::Name(name)) => named.push((name.as_str(), protocol)),
                Some(PortValue::Number(n)) => {
                    numbered.push(PortSpec { protocol, port: Some(*n), end_port: port.end_port })
                }
                None => numbered.push(PortSpec { protocol, port: None, end_port: None }),
            }
        }
        let everyone = peers.is_none_or(|p| p.is_empty());
        let (blocks, pods) = match peers.filter(|p| !p.is_empty()) {
            Some(peers) => self.resolve(np, peers)?,
            None => (Vec::new(), self.pods.iter().collect()),
        };
        let host = |pods: &[&Pod]| -> Vec<PeerSpec> {
            let ips: BTreeSet<IpAddr> = pods.iter().flat_map(|p| p.addresses()).collect();
            ips.into_iter()
                .map(|ip| PeerSpec { cidr: Cidr::host(ip), except: Vec::new() })
                .collect()
        };
        let mut rules = Vec::new();
        // Numbered ports (or none: every port) with every peer.
        if !numbered.is_empty() || named.is_empty() {
            let peers = if everyone {
                Vec::new()
            } else {
                blocks.iter().cloned().chain(host(&pods)).collect::<Vec<_>>()
            };
            if everyone || !peers.is_empty() {
                rules.push(RuleSpec { peers, ports: numbered });
            }
        }
        for (name, protocol) in named {
            match direction {
                Direction::Ingress => {
                    let Some(number) = subject.named_port(name, protocol) else { continue };
                    let peers = if everyone {
                        Vec::new()
                    } else {
                        blocks.iter().cloned().chain(host(&pods)).collect::<Vec<_>>()
                    };
                    if everyone || !peers.is_empty() {
                        let ports = vec![PortSpec { protocol, port: Some(number), end_port: None }];
                        rules.push(RuleSpec { peers, ports });
                    }
                }
                // The peers that are pods with that named port, grouped by its number (an
                // ipBlock peer has no container ports).
                Direction::Egress => {
                    let mut by_number: BTreeMap<u16, Vec<&Pod>> = BTreeMap::new();
                    for pod in &pods {
                        if let Some(number) = pod.named_port(name, protocol) {
                            by_number.entry(number).or_default().push(pod);
                        }
                    }
                    for (number, pods) in by_number {
                        let ports = vec![PortSpec { protocol, port: Some(number), end_port: None }];
                        rules.push(RuleSpec { peers: host(&pods), ports });
                    }
                }
            }
        }
        Ok(rules)
    }

    /// The peers of a rule: its ipBlocks, and the pods its selectors match.
    fn resolve(
        &self,
        np: &NetworkPolicy,
        peers: &[Peer],
    ) -> Result<(Vec<PeerSpec>, Vec<&Pod>), String> {
        let mut blocks = Vec::new();
        let mut pods = Vec::new();
        for peer in peers {
            if let Some(block) = &peer.ip_block {
                if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                    return Err("a peer with ipBlock cannot also have selectors".into());
                }
                blocks.push(PeerSpec { cidr: block.cidr, except: block.except.clone() });
                continue;
            }
            for pod in &self.pods {
                let namespace_ok = match &peer.namespace_selector {
                    Some(sel) => sel.matches(&self.namespace_labels(&pod.namespace))?,
                    None => pod.namespace == np.metadata.namespace,
                };
                let pod_ok = match &peer.pod_selector {
                    Some(sel) => sel.matches(&pod.labels)?,
                    None => peer.namespace_selector.is_some(),
                };
                if namespace_ok && pod_ok && !pods.iter().any(|p: &&Pod| p.key() == pod.key()) {
                    pods.push(pod);
                }
            }
        }
        Ok((blocks, pods))
    }
}

/// Whether a rule names a port.
fn has_named_port(rule: &RuleRef<'_>) -> bool {
    rule.1.into_iter().flatten().any(|p| matches!(p.port, Some(PortValue::Name(_))))
}

/// A protocol as a NetworkPolicy or a container port gives it (TCP when absent).
fn protocol_of(protocol: Option<&str>) -> Result<PortProtocol, String> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(PortProtocol::Tcp),
        "UDP" => Ok(PortProtocol::Udp),
        "SCTP" => Ok(PortProtocol::Sctp),
        other => Err(format!("unknown protocol {other:?} (TCP, UDP or SCTP)")),
    }
}

/// One ingress or egress rule: its peers (`from` / `to`) and ports.
type RuleRef<'a> = (Option<&'a Vec<Peer>>, Option<&'a Vec<Port>>);

#[derive(Debug, Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// Whether a policy isolates in this direction: listed in policyTypes, or, as the API
    /// server defaults it when policyTypes is absent or empty, Ingress always and Egress when
    /// the policy has at least one egress rule.
    fn listed_in(self, spec: &NetworkPolicySpec) -> bool {
        match (spec.policy_types.as_deref().filter(|t| !t.is_empty()), self) {
            (Some(types), d) => types.iter().any(|t| t.eq_ignore_ascii_case(d.label())),
            (None, Direction::Ingress) => true,
            (None, Direction::Egress) => spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
        }
    }

    fn rules(self, spec: &NetworkPolicySpec) -> Vec<RuleRef<'_>> {
        match self {
            Direction::Ingress => {
                spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect()
            }
            Direction::Egress => {
                spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect()
            }
        }
    }
}
