//! What the control process pushes: the tables in their exchange form ([`TableSpec`]), as the
//! control protocol carries them and tables files hold them (docs/tables.md). Validation
//! happens when they are built into a [`super::Snapshot`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Cidr, PolicySpec};
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
    /// The node's own addresses on the overlay, inside its pod CIDRs: Flannel's `flannel.1`
    /// address, Calico's `IPv4VXLANTunnelAddr`. Other nodes and the node's pods reach the node
    /// itself there. Empty: the first address of each pod CIDR (Flannel's choice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel_ips: Vec<IpAddr>,
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
    /// The pod's interface as the dataplane reaches it: the host-side veth (`edge: veth`, the
    /// default), or the TAP device's name inside the pod's network namespace (`edge: tap`).
    pub interface: String,
    /// How the pod's interface meets the dataplane.
    #[serde(default, skip_serializing_if = "PodEdge::is_veth")]
    pub edge: PodEdge,
    /// Name of the compiled policy for traffic into the pod; `None`: no policy selects the
    /// pod for ingress, everything is allowed.
    #[serde(default)]
    pub ingress_policy: Option<String>,
    /// Same for traffic from the pod.
    #[serde(default)]
    pub egress_policy: Option<String>,
}

/// How a pod's interface meets the dataplane (README, "Wiring a pod").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PodEdge {
    /// A veth pair, as Calico and Flannel wire pods: the dataplane attaches an XDP program
    /// and AF_XDP sockets to its host-side end. Every TCP segment crosses as a frame of its
    /// own (a veth peer loses GSO while an XDP program is attached).
    #[default]
    Veth,
    /// A TAP device in the pod's network namespace (the file `netns`, such as
    /// `/var/run/netns/<name>` or `/proc/<pid>/ns/net`), created persistent by whoever wires
    /// the pod; the dataplane attaches a queue with virtio-net headers and offloads, so TCP
    /// crosses as super-packets of up to 64 KiB, cut once where they must be.
    Tap { netns: String },
}

impl PodEdge {
    pub fn is_veth(&self) -> bool {
        matches!(self, PodEdge::Veth)
    }

    /// The pod's network namespace, for a TAP edge.
    pub fn netns(&self) -> Option<&str> {
        match self {
            PodEdge::Veth => None,
            PodEdge::Tap { netns } => Some(netns),
        }
    }
}

impl EndpointSpec {
    /// `namespace/name`, how errors and the CLI name a pod.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::snapshot::tests::good;
    use crate::table::{PeerSpec, PortProtocol, PortSpec, RuleSpec};

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
