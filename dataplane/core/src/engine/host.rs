//! Packets from the host interface: what the node's kernel routed into the overlay — the
//! node's own traffic to pods (kubelet probes, hostNetwork pods), Services after kube-proxy's
//! DNAT, NodePorts, replies a pod's masqueraded connection to the outside gets back — is
//! delivered to a local pod or encapsulated to the node that owns the destination.
//!
//! The kernel already forwarded these packets (and took their TTL down by one when it did),
//! so the dataplane does not decrement again: to IP, the host interface is the overlay's
//! link, as `flannel.1` was. Policy: traffic from the node itself always passes (Kubernetes:
//! a pod and its node always reach each other); a packet whose source is a local pod — one
//! the kernel sent back after DNAT — is judged by that pod's egress policy, on its real
//! destination; a packet for a local pod, unless from the node, by that pod's ingress policy.
//! ICMP redirects the kernel sends (a packet that leaves the host interface it came in on)
//! never reach a pod. A local pod's packet is remembered as a flow through the kernel, whose
//! replies go back that way ([`super::host_flows`]).
//!
//! The host interface takes offloads as a TAP pod does: the kernel's TCP super-packets come
//! whole ([`super::Pipeline::process_segmented`]), and its checksums may be partial. One is
//! finished where the receiver gets the frame as it is (a veth pod, the underlay); a TAP pod
//! takes it as it came.

use std::net::IpAddr;

use crate::table::{RouteTarget, Snapshot};
use crate::wire::icmp::{icmpv4_type, icmpv6_type};
use crate::wire::{EtherType, EthernetFrame, IpProtocol, Ipv4Packet, Ipv6Packet};

use super::encap::{self, Inner};
use super::flow::{self, Flow};
use super::host_flows::FlowKey;
use super::{DropReason, Frame, Pipeline, RouteHint, Verdict};
use super::{pod, policy};

const ETH: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// What routing and policy need of a packet from the host.
struct Packet {
    src: IpAddr,
    dst: IpAddr,
    tos: u8,
    ip_len: usize,
    flow: Flow,
}

pub(super) fn process(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    frame: &mut Frame<'_>,
    hint: RouteHint,
) -> Verdict {
    let packet = {
        let data = frame.data();
        let Ok(eth) = EthernetFrame::new_checked(data) else {
            return Verdict::Drop(DropReason::Truncated);
        };
        let parsed = match eth.ethertype() {
            EtherType::Ipv4 => ipv4(&data[ETH..]),
            EtherType::Ipv6 => ipv6(&data[ETH..]),
            _ => Err(DropReason::UnsupportedEtherType),
        };
        match parsed {
            Ok(packet) => packet,
            Err(reason) => return Verdict::Drop(reason),
        }
    };
    forward(pipeline, snapshot, frame, packet, hint)
}

fn ipv4(bytes: &[u8]) -> Result<Packet, DropReason> {
    let ip = Ipv4Packet::new_checked(bytes).map_err(|_| DropReason::MalformedIpv4)?;
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4Checksum);
    }
    let dst = ip.dst_addr();
    if dst.is_multicast() || dst.is_broadcast() {
        return Err(DropReason::MulticastDestination);
    }
    if ip.protocol() == IpProtocol::Icmp
        && ip.frag_offset() == 0
        && ip.payload().first() == Some(&icmpv4_type::REDIRECT)
    {
        return Err(DropReason::HostRedirect);
    }
    let flow = flow::ipv4(&ip, DropReason::MalformedL4)?;
    Ok(Packet {
        src: IpAddr::V4(ip.src_addr()),
        dst: IpAddr::V4(dst),
        tos: ip.dscp_ecn(),
        ip_len: usize::from(ip.total_len()),
        flow,
    })
}

fn ipv6(bytes: &[u8]) -> Result<Packet, DropReason> {
    let ip = Ipv6Packet::new_checked(bytes).map_err(|_| DropReason::MalformedIpv6)?;
    let dst = ip.dst_addr();
    if dst.is_multicast() {
        return Err(DropReason::MulticastDestination);
    }
    if let Ok(location) = ip.find_l4()
        && location.protocol == IpProtocol::Icmpv6
        && !location.later_fragment
    {
        match ip.as_bytes().get(location.offset) {
            Some(&icmpv6_type::REDIRECT) => return Err(DropReason::HostRedirect),
            // Router and neighbour discovery belong to a link, not to the overlay.
            Some(&(icmpv6_type::ROUTER_SOLICIT..=icmpv6_type::NEIGHBOR_ADVERT)) => {
                return Err(DropReason::NeighbourDiscoveryIgnored);
            }
            _ => {}
        }
    }
    let flow = flow::ipv6(&ip, DropReason::MalformedIpv6, DropReason::MalformedL4)?;
    Ok(Packet {
        src: IpAddr::V6(ip.src_addr()),
        dst: IpAddr::V6(dst),
        tos: ip.traffic_class(),
        ip_len: ip.total_len(),
        flow,
    })
}

fn forward(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    frame: &mut Frame<'_>,
    packet: Packet,
    hint: RouteHint,
) -> Verdict {
    let from_node = snapshot.is_local_address(packet.src);
    let source = match snapshot.route(packet.src) {
        Some(RouteTarget::Endpoint(id)) if snapshot.endpoint(id).owns(packet.src) => Some(id),
        _ => None,
    };
    // A local pod's packet, back from the kernel after DNAT: the pod's egress policy judges
    // where it really goes, through the pod's connection tracking (the worker that owns the
    // pod processes it: host frames from another worker's pod are handed over first).
    let egress = |pipeline: &mut Pipeline, frame: &Frame<'_>| match source {
        Some(id) => {
            let ip = frame.data().get(ETH..).unwrap_or_default();
            let judged =
                policy::Judged { src: packet.src, dst: packet.dst, flow: &packet.flow, ip };
            policy::judge(pipeline, snapshot, id, true, &judged, true)
        }
        None => Ok(()),
    };
    let remember = |pipeline: &mut Pipeline| {
        if let Some(endpoint) = source {
            let key = FlowKey {
                endpoint,
                protocol: packet.flow.protocol,
                local: (packet.src, packet.flow.src_port),
                remote: (packet.dst, packet.flow.dst_port),
            };
            pipeline.host_flows.remember(key, pipeline.now_ns);
        }
    };
    match hint.route(snapshot, packet.dst) {
        Some(RouteTarget::Endpoint(id)) => {
            let destination = snapshot.endpoint(id);
            // The destination's ingress side is judged where it is delivered
            // (`Pipeline::deliver`), which lets the node's own packets through.
            if !from_node && let Err(reason) = egress(pipeline, frame) {
                return Verdict::Drop(reason);
            }
            remember(pipeline);
            frame.set_len(ETH + packet.ip_len);
            pod::finish_checksum_for(pipeline, frame, destination);
            let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
            eth.set_destination(destination.mac);
            eth.set_source(pipeline.config.gateway_mac);
            Verdict::Local(id)
        }
        Some(RouteTarget::Node(node)) if node != snapshot.local_node_id() => {
            if let Err(reason) = egress(pipeline, frame) {
                return Verdict::Drop(reason);
            }
            if frame.set_len(ETH + packet.ip_len) {
                pod::finish_checksum(pipeline, frame);
            }
            let inner =
                Inner::of_flow(packet.src, packet.dst, &packet.flow, packet.tos, packet.ip_len);
            let verdict = encap::encapsulate(pipeline, snapshot, snapshot.node(node), frame, inner);
            if verdict == Verdict::Encap {
                remember(pipeline);
            }
            verdict
        }
        // This node's pod CIDR, but no pod there (its own addresses are the kernel's and
        // never come this way).
        Some(RouteTarget::Node(_)) => Verdict::Drop(DropReason::NoSuchPod),
        None => Verdict::Drop(DropReason::HostNoRoute),
    }
}

/// The addresses, flow and IP packet of an Ethernet frame; `None` when it is not a
/// well-formed IPv4 or IPv6 packet.
pub(super) fn parsed(frame: &[u8]) -> Option<(IpAddr, IpAddr, Flow, &[u8])> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let bytes = &frame[ETH..];
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_checked(bytes).ok()?;
            let flow = flow::ipv4(&ip, DropReason::MalformedL4).ok()?;
            Some((IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()), flow, bytes))
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(bytes).ok()?;
            let flow = flow::ipv6(&ip, DropReason::MalformedIpv6, DropReason::MalformedL4).ok()?;
            Some((IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()), flow, bytes))
        }
        _ => None,
    }
}
