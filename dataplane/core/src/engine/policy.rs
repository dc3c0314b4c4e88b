//! NetworkPolicy on packets, through connection tracking: the egress side where a local pod's
//! packet enters the pipeline, the ingress side where a packet is about to be delivered to a
//! local pod ([`super::Pipeline::deliver`]), each at the worker that owns the pod
//! ([`super::conntrack`] explains why).
//!
//! An endpoint with no policy at all is not tracked: everything passes, and should a policy
//! come, packets of its live flows are judged as the start of a flow of their own direction
//! and picked up mid-stream. A packet between a pod and its own node (the node's addresses)
//! is never judged: Kubernetes lets a pod and its node always reach each other.

use std::net::IpAddr;

use crate::table::{EndpointId, L4, PortProtocol, Snapshot};

use super::conntrack::{Kind, Origin, Refusal, Seen};
use super::flow::{Flow, Transport};
use super::{DropReason, Pipeline};

/// What policy sees of a packet's transport for destination port `port`.
fn l4(protocol: u8, port: u16) -> L4 {
    let protocol = match protocol {
        6 => PortProtocol::Tcp,
        17 => PortProtocol::Udp,
        132 => PortProtocol::Sctp,
        _ => return L4::Other,
    };
    L4::Ports { protocol, port }
}

/// An address and a port.
type End = (IpAddr, u16);

/// The packet a quoting ICMP error carries: protocol, source and destination with ports
/// (an echo's identifier as both ports).
fn quoted(ip: &[u8], flow: &Flow) -> Option<(u8, End, End)> {
    let inner = ip.get(usize::from(flow.l4_offset) + 8..)?;
    let (protocol, src, dst, l4) = match inner.first()? >> 4 {
        4 => {
            let header = usize::from(inner.first()? & 0x0f) * 4;
            let src: [u8; 4] = inner.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = inner.get(16..20)?.try_into().ok()?;
            (*inner.get(9)?, IpAddr::from(src), IpAddr::from(dst), inner.get(header..)?)
        }
        6 => {
            let src: [u8; 16] = inner.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = inner.get(24..40)?.try_into().ok()?;
            (*inner.get(6)?, IpAddr::from(src), IpAddr::from(dst), inner.get(40..)?)
        }
        _ => return None,
    };
    let port = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (sport, dport) = match protocol {
        6 | 17 | 132 => (port(0)?, port(2)?),
        1 | 58 => (port(4)?, port(4)?),
        _ => (0, 0),
    };
    Some((protocol, (src, sport), (dst, dport)))
}

/// A packet to judge: its addresses, its flow and the IP packet itself.
pub(super) struct Judged<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub flow: &'a Flow,
    pub ip: &'a [u8],
}

/// The packet as the tracking of endpoint `id` sees it.
fn seen(id: EndpointId, instance: u64, outbound: bool, packet: &Judged<'_>) -> Seen {
    let Judged { src, dst, flow, ip } = *packet;
    let (local, remote) = if outbound { (src, dst) } else { (dst, src) };
    let oriented = |sport: u16, dport: u16| if outbound { (sport, dport) } else { (dport, sport) };
    let (kind, (local_port, remote_port)) = match flow.transport {
        Transport::Tcp { src_port, dst_port, flags } => {
            (Kind::Tcp { flags }, oriented(src_port, dst_port))
        }
        Transport::Ports { src_port, dst_port } => (Kind::Datagram, oriented(src_port, dst_port)),
        Transport::Echo { request, id } => {
            (if request { Kind::EchoRequest } else { Kind::EchoReply }, (id, id))
        }
        Transport::IcmpError => match quoted(ip, flow) {
            // The quoted packet went the other way from the error.
            Some((protocol, (qsrc, qsport), (qdst, qdport))) => {
                let (l, r) = if outbound {
                    ((qdst, qdport), (qsrc, qsport))
                } else {
                    ((qsrc, qsport), (qdst, qdport))
                };
                return Seen {
                    endpoint: id,
                    instance,
                    outbound,
                    protocol: flow.protocol,
                    local: l,
                    remote: r,
                    kind: Kind::Error { protocol },
                };
            }
            None => (Kind::Untracked, (0, 0)),
        },
        Transport::Untracked => (Kind::Untracked, (0, 0)),
    };
    Seen {
        endpoint: id,
        instance,
        outbound,
        protocol: flow.protocol,
        local: (local, local_port),
        remote: (remote, remote_port),
        kind,
    }
}

/// Judges a packet of local endpoint `id` — sent by it (`outbound`) or to it — with its
/// policies and its worker's connection tracking. `policed`: whether a flow it opens is
/// judged here (a flow to a Service address is judged on its backend, after the node's
/// kernel translated it, and only tracked here so that its replies pass).
pub(super) fn judge(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    id: EndpointId,
    outbound: bool,
    packet: &Judged<'_>,
    policed: bool,
) -> Result<(), DropReason> {
    let Some(endpoint) = snapshot.get_endpoint(id) else {
        return Err(DropReason::NoSuchPod);
    };
    if endpoint.ingress_policy.is_none() && endpoint.egress_policy.is_none() {
        return Ok(());
    }
    let seen = seen(id, endpoint.instance, outbound, packet);
    let flow = packet.flow;
    let peer = seen.remote.0;
    // Ports policy can see: not those of a later fragment, nor an ICMP error's quoted ones.
    let ports_visible = !matches!(seen.kind, Kind::Error { .. } | Kind::Untracked);
    let allows = |origin: Origin, port: u16| {
        let policy = match origin {
            Origin::Local => endpoint.egress_policy,
            Origin::Remote => endpoint.ingress_policy,
        };
        let l4 = if ports_visible { l4(flow.protocol, port) } else { L4::Other };
        policy.is_none_or(|p| snapshot.policy(p).allows(peer, l4))
    };
    let now = pipeline.now_ns;
    let generation = snapshot.generation();
    match pipeline.conntrack.judge(now, generation, &seen, policed, allows) {
        Ok(()) => Ok(()),
        Err(Refusal::Policy) if outbound => Err(DropReason::PolicyDeniedEgress),
        Err(Refusal::Policy) => Err(DropReason::PolicyDeniedIngress),
        Err(Refusal::Full) => Err(DropReason::ConntrackFull),
    }
}
