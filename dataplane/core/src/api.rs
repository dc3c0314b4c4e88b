//! The control protocol between the control process (`podlane`) and the dataplane, over a
//! Unix stream socket. The dataplane owns it; `control` depends on it. docs/protocol.md has
//! the schema and an example exchange.
//!
//! Framing: a 4-byte big-endian length, then that many bytes of JSON. A length above
//! [`MAX_FRAME`] is refused before anything is read or allocated. The first request on a
//! connection must be [`Request::Hello`] with [`PROTOCOL_VERSION`]; a different version gets
//! an error naming both versions and the connection is closed.
//!
//! Every request gets exactly one response. Updates ([`Request::FullSync`],
//! [`Request::Update`]) are applied whole or not at all: the response is
//! [`Response::Ack`] with the generation now in force, or [`Response::Error`] naming the
//! offending entry, and then the tables in use are unchanged.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::engine::conntrack::ConntrackStats;
use crate::table::{EndpointSpec, NodeSpec, PolicySpec, TableSpec};

/// Version of this protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts: a full sync of 5,000 nodes, 100,000 endpoints and
/// their policies is well under it.
pub const MAX_FRAME: usize = 256 << 20;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Opens the conversation.
    Hello { version: u32, client: String },
    /// Replaces all tables.
    FullSync { tables: TableSpec },
    /// Incremental change, applied atomically: deletions, then upserts (insert or replace by
    /// name; endpoints by `namespace/name`).
    Update(Update),
    /// The client has pushed everything it knows (after a full sync and its first updates).
    InSync,
    /// A read-only query.
    Query { what: Query },
}

/// An incremental change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Update {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_nodes: Vec<NodeSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_endpoints: Vec<EndpointSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_policies: Vec<PolicySpec>,
    /// Node names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_nodes: Vec<String>,
    /// `namespace/name` of endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_endpoints: Vec<String>,
    /// Policy names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete_policies: Vec<String>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        *self == Update::default()
    }

    /// Applies the change to `tables`; an error names the entry that does not exist, and
    /// leaves `tables` as it was. Linear in the tables' size plus the change's (each table is
    /// indexed once by name), so a small update to large tables stays cheap.
    pub fn apply_to(&self, tables: &mut TableSpec) -> Result<(), ApiError> {
        use std::collections::{HashMap, HashSet};
        // Every deletion must name an entry that exists: checked before anything changes.
        let node_names: HashSet<&str> = tables.nodes.iter().map(|n| n.name.as_str()).collect();
        if let Some(name) = self.delete_nodes.iter().find(|n| !node_names.contains(n.as_str())) {
            return Err(ApiError::unknown("node", name));
        }
        let endpoint_keys: HashSet<(&str, &str)> =
            tables.endpoints.iter().map(|e| (e.namespace.as_str(), e.name.as_str())).collect();
        if let Some(key) = self.delete_endpoints.iter().find(|k| {
            let (namespace, name) = k.split_once('/').unwrap_or(("", k.as_str()));
            !endpoint_keys.contains(&(namespace, name))
        }) {
            return Err(ApiError::unknown("endpoint", key));
        }
        let policy_names: HashSet<&str> = tables.policies.iter().map(|p| p.name.as_str()).collect();
        if let Some(name) = self.delete_policies.iter().find(|n| !policy_names.contains(n.as_str()))
        {
            return Err(ApiError::unknown("policy", name));
        }

        let gone: HashSet<&str> = self.delete_nodes.iter().map(String::as_str).collect();
        tables.nodes.retain(|n| !gone.contains(n.name.as_str()));
        let gone: HashSet<(&str, &str)> = (self.delete_endpoints.iter())
            .map(|k| k.split_once('/').unwrap_or(("", k.as_str())))
            .collect();
        tables.endpoints.retain(|e| !gone.contains(&(e.namespace.as_str(), e.name.as_str())));
        let gone: HashSet<&str> = self.delete_policies.iter().map(String::as_str).collect();
        tables.policies.retain(|p| !gone.contains(p.name.as_str()));

        let mut at: HashMap<String, usize> =
            tables.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        for node in &self.upsert_nodes {
            match at.get(&node.name) {
                Some(&i) => tables.nodes[i] = node.clone(),
                None => {
                    at.insert(node.name.clone(), tables.nodes.len());
                    tables.nodes.push(node.clone());
                }
            }
        }
        if !self.upsert_endpoints.is_empty() {
            let mut at: HashMap<(String, String), usize> = (tables.endpoints.iter().enumerate())
                .map(|(i, e)| ((e.namespace.clone(), e.name.clone()), i))
                .collect();
            for endpoint in &self.upsert_endpoints {
                let key = (endpoint.namespace.clone(), endpoint.name.clone());
                match at.get(&key) {
                    Some(&i) => tables.endpoints[i] = endpoint.clone(),
                    None => {
                        at.insert(key, tables.endpoints.len());
                        tables.endpoints.push(endpoint.clone());
                    }
                }
            }
        }
        let mut at: HashMap<String, usize> =
            tables.policies.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        for policy in &self.upsert_policies {
            match at.get(&policy.name) {
                Some(&i) => tables.policies[i] = policy.clone(),
                None => {
                    at.insert(policy.name.clone(), tables.policies.len());
                    tables.policies.push(policy.clone());
                }
            }
        }
        Ok(())
    }
}

/// Read-only queries (the `podlane show` commands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// The flows connection tracking holds, of one pod (`namespace/name`) or of all.
    Conntrack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<String>,
    },
    /// The tables in force (with resolved next hops) and their generation.
    Tables,
    /// Counters per worker and socket.
    Counters,
    /// The daemon's configuration.
    Config,
    Version,
}

/// What the dataplane answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Welcome {
        version: u32,
        node: String,
        generation: u64,
    },
    /// The request is applied; `generation` is in force. Entries of it that did not validate
    /// are listed in `rejected` and are not in force (an entry the tables held before keeps
    /// its previous version): docs/protocol.md, "Atomicity".
    Ack {
        generation: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rejected: Vec<RejectedEntry>,
    },
    Error(ApiError),
    Tables {
        generation: u64,
        in_sync: bool,
        tables: TableSpec,
        /// The entries the control process pushed that are not in force (quarantined) since
        /// they did not validate; each stays listed until a later request replaces or
        /// deletes it, or a full sync leaves it out.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rejected: Vec<RejectedEntry>,
    },
    Counters {
        workers: Vec<WorkerCounters>,
    },
    Conntrack {
        flows: Vec<ConntrackFlow>,
    },
    Config {
        config: Box<DaemonInfo>,
    },
    Version {
        dataplane: String,
        protocol: u32,
    },
}

/// An entry of a request that is not in force because it did not validate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedEntry {
    /// `node`, `endpoint` or `policy`.
    pub kind: String,
    /// Its name (`namespace/name` for an endpoint).
    pub name: String,
    /// Why.
    pub message: String,
    /// Whether the tables keep the version they held before (else the entry is absent).
    pub kept_previous: bool,
}

impl std::fmt::Display for RejectedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = if self.kept_previous { "; its previous version stays" } else { "" };
        write!(f, "{} {}: {}{kept}", self.kind, self.name, self.message)
    }
}

/// An error reply: what went wrong, and the entry it concerns when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
}

impl ApiError {
    pub fn new(message: impl Into<String>) -> ApiError {
        ApiError { message: message.into(), entry: None }
    }

    fn unknown(kind: &str, name: &str) -> ApiError {
        ApiError {
            message: format!("cannot delete {kind} {name:?}: no such {kind}"),
            entry: Some(name.to_owned()),
        }
    }
}

/// Counters of one worker, as the CLI shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkerCounters {
    pub worker: usize,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// The pipeline's verdicts, frame by frame. A `decap` or `local` frame is judged once more
    /// where it is delivered, by the worker that owns its pod (ingress policy); one refused
    /// there is also counted under `drops` (`policy_denied_ingress`, `conntrack_full`), and
    /// one sent back through the node's kernel under `returned_via_host`.
    pub encap: u64,
    pub decap: u64,
    pub local: u64,
    pub reply: u64,
    /// Frames handed to the host interface.
    pub host: u64,
    /// Bytes of the frames of each verdict, as the verdict leaves them (encap: with the
    /// outer headers; a TAP pod's super-packet whole).
    #[serde(default)]
    pub encap_bytes: u64,
    #[serde(default)]
    pub decap_bytes: u64,
    #[serde(default)]
    pub local_bytes: u64,
    #[serde(default)]
    pub reply_bytes: u64,
    #[serde(default)]
    pub host_bytes: u64,
    /// Of `reply`, ICMP errors sent to pods (time exceeded, too big).
    #[serde(default)]
    pub icmp_errors: u64,
    /// Of `decap` and `local`, replies of flows through the node's kernel (Services) sent to
    /// the host interface for the kernel to translate back.
    #[serde(default)]
    pub returned_via_host: u64,
    /// Flows through the node's kernel remembered now, and those not remembered for lack of
    /// room.
    #[serde(default)]
    pub host_flows: usize,
    #[serde(default)]
    pub host_flows_refused: u64,
    /// The worker's connection tracking.
    #[serde(default)]
    pub conntrack: ConntrackCounters,
    /// Drops by reason label (only reasons that occurred).
    pub drops: BTreeMap<String, u64>,
    pub no_socket: u64,
    pub handoff_in: u64,
    pub handoff_dropped: u64,
    /// Of the frames handed to other workers, packets joined from several segments for their
    /// TAP pods.
    #[serde(default)]
    pub handoff_joined: u64,
    /// Frames dropped because a UMEM had no free chunk for them (a hand-over, a copy between
    /// UMEMs, a read from the host interface).
    pub chunk_exhausted: u64,
    /// Under SCHED_FIFO (`--realtime-priority`): times the worker left its core for a moment
    /// after running a while without sleeping, so that the other threads there run in short
    /// turns instead of in the kernel's one long one.
    #[serde(default)]
    pub realtime_pauses: u64,
    /// Idle chunks, over the worker's UMEMs.
    pub free_chunks: usize,
    /// The worker's UMEMs: 1, or 2 when pods have one of their own beside a zero-copy uplink.
    #[serde(default)]
    pub umems: usize,
    pub invalid_descriptors: u64,
    /// Frames longer than a chunk (a jumbo underlay's), put through the pipeline whole from
    /// the worker's linear buffer, and those longer than the uplink's MTU allows (dropped).
    #[serde(default)]
    pub jumbo_frames: u64,
    #[serde(default)]
    pub jumbo_too_long: u64,
    /// Segments cut from TAP pods' TCP super-packets (for the uplink, veth pods, the host
    /// interface, other workers), and super-packets that could not be cut (dropped).
    #[serde(default)]
    pub segments: u64,
    #[serde(default)]
    pub segmentation_failed: u64,
    /// TAP pods' super-packets handed to the tunnel-GSO interface for the kernel to segment,
    /// and those it did not take (its queue full: dropped).
    #[serde(default)]
    pub tunnel_gso: u64,
    #[serde(default)]
    pub tunnel_gso_dropped: u64,
    /// The longest round of the worker's loop since the last publication (about a second),
    /// in microseconds: a forwarding stall shows here.
    #[serde(default)]
    pub longest_round_us: u64,
    pub sockets: Vec<SocketCounters>,
    /// The worker's queue of the host interface, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<HostCounters>,
}

/// A flow connection tracking holds, from its pod's side.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConntrackFlow {
    pub worker: usize,
    /// `namespace/name` of the local pod the flow is tracked for.
    pub pod: String,
    /// `tcp`, `udp`, `sctp`, `icmp`, `icmpv6` or the protocol number.
    pub protocol: String,
    /// The pod's address and port, `address:port` (`[address]:port` for IPv6); an echo's
    /// identifier stands for the ports.
    pub local: String,
    pub remote: String,
    /// Who opened it: `pod` (its egress allowed it) or `peer` (its ingress did).
    pub opened_by: String,
    /// `syn_sent`, `established`, `closing`, `unreplied` or `replied`.
    pub state: String,
    /// Milliseconds since its last packet, and before it expires without another.
    pub idle_ms: u64,
    pub expires_in_ms: u64,
}

/// One worker's connection tracking: flows tracked now (of at most `capacity`) and what
/// happened to flows since the start (`created`, `expired`, `evicted`, `cut`, `full`,
/// `related`: [`ConntrackStats`], flattened into this object).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConntrackCounters {
    pub flows: usize,
    pub capacity: usize,
    #[serde(flatten)]
    pub events: ConntrackStats,
}

/// Counters of one worker's queue of the host interface.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostCounters {
    pub interface: String,
    pub queue: u32,
    /// Packets the node's kernel routed into the overlay, read from the queue.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets longer than the queue's buffer holds (64 KiB; cut short by the read): dropped.
    pub rx_too_long: u64,
    /// Packets handed to the node's kernel.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets the kernel did not take (its queue full, or an error): dropped.
    pub tx_dropped: u64,
    /// Of `rx_packets`, TCP super-packets (the kernel's TSO).
    #[serde(default)]
    pub rx_super_packets: u64,
    /// Of `tx_packets`, TCP super-packets handed over whole (from TAP pods).
    #[serde(default)]
    pub tx_super_packets: u64,
    /// Packets whose virtio-net header did not fit them (a checksum to finish outside the
    /// packet, or no packet behind it): dropped.
    #[serde(default)]
    pub rx_bad_header: u64,
}

/// Counters of one AF_XDP socket, or of a TAP pod's queue (`mode` "tap", the interface named
/// `<name>@<netns>`; the AF_XDP ring counters stay 0).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SocketCounters {
    pub interface: String,
    pub queue: u32,
    pub mode: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_dropped: u64,
    /// Chunks the worker keeps on the socket's fill ring (its fill budget).
    #[serde(default)]
    pub fill_level: u32,
    /// Of `rx_packets` from a TAP pod, TCP super-packets (TSO).
    #[serde(default)]
    pub rx_super_packets: u64,
    /// Of `tx_packets` to a TAP pod, packets joined from several segments (GRO).
    #[serde(default)]
    pub tx_super_packets: u64,
}

/// What `podlane-cni` records, one JSON file per attachment in its state directory
/// (`/run/podlane/cni/<containerID>-<ifname>.json`), and `podlane agent` reads: the pods the
/// plugin wired and registered, which the agent keeps in every table it pushes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniRecord {
    pub container_id: String,
    pub ifname: String,
    /// The pod's network namespace file.
    pub netns: String,
    /// The endpoint registered with the dataplane.
    pub endpoint: EndpointSpec,
    /// The result ADD returned (without `cniVersion`), for ADD again and CHECK.
    pub result: serde_json::Value,
    /// The IPAM configuration, for DEL and GC.
    pub ipam: serde_json::Value,
    /// The CNI network's name (GC only touches its own network's records).
    pub network: String,
}

impl CniRecord {
    /// The records in `dir` (none when it does not exist; unreadable files are skipped).
    pub fn read_dir(dir: &std::path::Path) -> Vec<CniRecord> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut records: Vec<CniRecord> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
            .collect();
        records.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        records
    }
}

/// The daemon's configuration as `podlane show config` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub node: String,
    pub node_ip: String,
    pub uplink: String,
    pub uplink_mac: String,
    pub uplink_mtu: u16,
    pub uplink_queues: u32,
    pub vni: u32,
    pub vxlan_port: u16,
    pub workers: usize,
    pub cores: Vec<usize>,
    pub xdp_mode: String,
    pub poll_mode: String,
    pub control_socket: String,
    /// The MTU pods must use (the uplink's less the encapsulation), also the host
    /// interface's.
    #[serde(default)]
    pub overlay_mtu: u32,
    /// The interface TAP pods' super-packets to other nodes are handed to, for the kernel
    /// to segment (empty: the workers cut them).
    #[serde(default)]
    pub tunnel_gso_interface: String,
    /// This node's VTEP MAC and its addresses on the overlay (tunnel addresses), as the tables
    /// in force have them: what a kernel peer programs for this node (docs/kernel-peer.md).
    #[serde(default)]
    pub vtep_mac: String,
    #[serde(default)]
    pub tunnel_addresses: Vec<String>,
    /// What pods route through, and what answers them (docs/wiring-a-pod.md).
    #[serde(default)]
    pub gateway_v4: String,
    #[serde(default)]
    pub gateway_v6: String,
    #[serde(default)]
    pub gateway_mac: String,
    /// The host interface, empty when the daemon runs without one.
    #[serde(default)]
    pub host_interface: String,
    /// Its addresses (this node's tunnel addresses) and the routes through it (every node's
    /// pod CIDRs), as installed.
    #[serde(default)]
    pub host_addresses: Vec<String>,
    #[serde(default)]
    pub host_routes: Vec<String>,
    /// The Service ranges (`--service-cidrs`).
    #[serde(default)]
    pub service_cidrs: Vec<String>,
    /// Flows each worker's connection tracking holds at most, and its timeouts
    /// (`NAME=SECONDS`).
    #[serde(default)]
    pub conntrack_max: usize,
    #[serde(default)]
    pub conntrack_timeouts: Vec<String>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("invalid message: {0}")]
    Decode(#[from] serde_json::Error),
    /// A frame read whole whose body does not decode, with the body, so that the error can
    /// say where ([`locate_decode_error`]).
    #[error("invalid message: {source}")]
    Invalid { body: Vec<u8>, source: serde_json::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<(Vec<u8>, serde_json::Error)> for FrameError {
    fn from((body, source): (Vec<u8>, serde_json::Error)) -> FrameError {
        FrameError::Invalid { body, source }
    }
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(mut w: impl Write, message: &T) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, FrameError::TooLarge(body.len())));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame's bytes (the length is checked before the body is read).
pub fn read_frame_bytes(mut r: impl Read) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    // Read as it arrives: memory grows with the bytes received, not with what the length
    // prefix promises (a prefix alone must not make the reader allocate 256 MiB).
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(FrameError::Truncated);
    }
    Ok(body)
}

/// Reads and decodes one frame.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: impl Read) -> Result<T, FrameError> {
    let body = read_frame_bytes(r)?;
    Ok(serde_json::from_slice(&body)?)
}

/// Where in a request's JSON the value that failed to decode is (`tables.endpoints[1].ips[0]`),
/// for an error that names the entry: serde's own error loses the path inside a tagged
/// message, so the tables or the update are decoded again, on their own, with the path kept.
pub fn locate_decode_error(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let (prefix, part) = match value.get("type")?.as_str()? {
        "full_sync" => ("tables.", value.get("tables")?.clone()),
        "update" => ("", value),
        _ => return None,
    };
    let failed = match prefix {
        "" => serde_path_to_error::deserialize::<_, Update>(part).err()?.path().to_string(),
        _ => serde_path_to_error::deserialize::<_, TableSpec>(part).err()?.path().to_string(),
    };
    Some(format!("{prefix}{failed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(m: T) {
        let mut buf = Vec::new();
        write_frame(&mut buf, &m).unwrap();
        assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize, buf.len() - 4);
        let back: T = read_frame(&buf[..]).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn messages_round_trip() {
        let tables: TableSpec =
            serde_json::from_str(include_str!("../../../docs/examples/two-nodes.json")).unwrap();
        round_trip(Request::Hello { version: PROTOCOL_VERSION, client: "test".into() });
        round_trip(Request::FullSync { tables: tables.clone() });
        round_trip(Request::Update(Update {
            upsert_endpoints: tables.endpoints.clone(),
            delete_nodes: vec!["node-b".into()],
            ..Update::default()
        }));
        round_trip(Request::InSync);
        for what in [Query::Tables, Query::Counters, Query::Config, Query::Version] {
            round_trip(Request::Query { what });
        }
        round_trip(Response::Welcome { version: 1, node: "node-a".into(), generation: 3 });
        round_trip(Response::Ack { generation: 4, rejected: Vec::new() });
        round_trip(Response::Ack {
            generation: 5,
            rejected: vec![RejectedEntry {
                kind: "endpoint".into(),
                name: "shop/b".into(),
                message: "pod IP 10.244.1.5 belongs to both shop/a and shop/b".into(),
                kept_previous: false,
            }],
        });
        round_trip(Response::Error(ApiError {
            message: "x".into(),
            entry: Some("default/web".into()),
        }));
        round_trip(Response::Tables { generation: 4, in_sync: true, tables, rejected: Vec::new() });
        round_trip(Response::Counters { workers: vec![WorkerCounters::default()] });
        round_trip(Response::Config { config: Box::default() });
        round_trip(Response::Version { dataplane: "0.1.0".into(), protocol: 1 });
    }

    #[test]
    fn the_wire_format_is_tagged_json() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Query { what: Query::Counters }).unwrap();
        assert_eq!(&buf[4..], br#"{"type":"query","what":"counters"}"#);
    }

    #[test]
    fn framing_errors_are_distinguished() {
        assert!(matches!(read_frame_bytes(&[][..]), Err(FrameError::Closed)));
        assert!(matches!(read_frame_bytes(&[0, 0][..]), Err(FrameError::Truncated)));
        assert!(matches!(read_frame_bytes(&[0, 0, 0, 9, b'{'][..]), Err(FrameError::Truncated)));
        assert!(matches!(
            read_frame_bytes(&[0xff, 0xff, 0xff, 0xff][..]),
            Err(FrameError::TooLarge(_))
        ));
        let bad = [0, 0, 0, 2, b'{', b'x'];
        assert!(matches!(read_frame::<Request>(&bad[..]), Err(FrameError::Decode(_))));
        let unknown = br#"{"type":"reboot"}"#;
        let mut framed = (unknown.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(unknown);
        let err = read_frame::<Request>(&framed[..]).unwrap_err().to_string();
        assert!(err.contains("unknown variant `reboot`"), "{err}");
    }

    #[test]
    fn a_decode_error_is_located_in_the_tables() {
        let mut tables: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/examples/two-nodes.json")).unwrap();
        tables["endpoints"][1]["ips"][0] = serde_json::json!("10.244.1.999");
        let body = serde_json::json!({"type": "full_sync", "tables": tables}).to_string();
        assert!(
            read_frame::<Request>(
                &[&(body.len() as u32).to_be_bytes()[..], body.as_bytes()].concat()[..]
            )
            .is_err()
        );
        assert_eq!(
            locate_decode_error(body.as_bytes()).as_deref(),
            Some("tables.endpoints[1].ips[0]")
        );
        let update =
            serde_json::json!({"type": "update", "upsert_nodes": [{"name": "n", "underlay": "x"}]});
        let at = locate_decode_error(update.to_string().as_bytes()).unwrap();
        assert!(at.starts_with("upsert_nodes[0]"), "{at}");
        assert_eq!(locate_decode_error(br#"{"type":"query","what":"nope"}"#), None);
    }

    #[test]
    fn updates_apply_whole_or_name_the_missing_entry() {
        let mut tables: TableSpec =
            serde_json::from_str(include_str!("../../../docs/examples/two-nodes.json")).unwrap();
        let mut web = tables.endpoints[0].clone();
        web.labels.insert("tier".into(), "front".into());
        let update = Update {
            upsert_endpoints: vec![web.clone()],
            delete_nodes: vec!["node-b".into()],
            ..Update::default()
        };
        update.apply_to(&mut tables).unwrap();
        assert_eq!(tables.nodes.len(), 1);
        assert_eq!(tables.endpoints[0], web);
        let missing = Update { delete_endpoints: vec!["default/nope".into()], ..Update::default() };
        let err = missing.apply_to(&mut tables).unwrap_err();
        assert_eq!(err.entry.as_deref(), Some("default/nope"));
        assert!(err.message.contains("no such endpoint"), "{err}");
    }

    /// The indexed update against the obvious one (a scan per entry), over large tables.
    #[test]
    fn indexed_updates_match_a_scan_per_entry() {
        let base: TableSpec =
            serde_json::from_str(include_str!("../../../docs/examples/two-nodes.json")).unwrap();
        let template = base.endpoints[0].clone();
        let mut tables = base.clone();
        tables.endpoints = (0..5000)
            .map(|i| EndpointSpec {
                namespace: format!("ns{}", i % 7),
                name: format!("pod{i}"),
                ..template.clone()
            })
            .collect();
        let mut changed = tables.endpoints[1234].clone();
        changed.labels.insert("v".into(), "2".into());
        let added = EndpointSpec { name: "new".into(), ..template.clone() };
        let update = Update {
            upsert_endpoints: vec![changed.clone(), added.clone()],
            delete_endpoints: vec![tables.endpoints[10].key(), tables.endpoints[4999].key()],
            ..Update::default()
        };
        let mut expected = tables.clone();
        expected.endpoints.retain(|e| !update.delete_endpoints.contains(&e.key()));
        let i = expected.endpoints.iter().position(|e| e.key() == changed.key()).unwrap();
        expected.endpoints[i] = changed;
        expected.endpoints.push(added);
        let mut got = tables.clone();
        update.apply_to(&mut got).unwrap();
        assert_eq!(got, expected);
        // A deletion of what does not exist changes nothing.
        let bad = Update {
            delete_endpoints: vec![tables.endpoints[0].key(), "ns0/none".into()],
            ..Update::default()
        };
        let mut untouched = tables.clone();
        assert!(bad.apply_to(&mut untouched).is_err());
        assert_eq!(untouched, tables);
    }
}
