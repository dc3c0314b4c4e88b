//! Frames received from a pod's host-side veth: ARP and neighbour solicitations for the
//! gateway are answered in place; IP is checked against the pod's own addresses
//! (anti-spoofing), routed, policed and then delivered locally, encapsulated to the owning
//! node, or handed to the host interface (for the node itself, or leaving the cluster). A
//! packet whose TTL runs out, or that would not fit the underlay once encapsulated, gets the
//! ICMP error a router would send.

use std::net::{IpAddr, Ipv6Addr};

use crate::table::{Endpoint, EndpointId, RouteTarget, Snapshot};
use crate::wire::checksum;
use crate::wire::icmp::{icmpv6_type, na_flags};
use crate::wire::ipv4::{OptionsVerdict, check_options};
use crate::wire::{
    ArpOperation, ArpPacket, EtherType, EthernetFrame, Icmpv6Packet, IpProtocol, Ipv4Packet,
    Ipv6Packet, MacAddr,
};

use super::encap::{self, Inner};
use super::flow::{self, Flow};
use super::icmp_error::{self, IcmpError};
use super::offload;
use super::policy;
use super::{DropReason, Frame, Pipeline, RouteHint, Verdict};

const ETH: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

pub(super) fn process(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    src_id: EndpointId,
    frame: &mut Frame<'_>,
    hint: RouteHint,
) -> Verdict {
    let Ok(eth) = EthernetFrame::new_checked(frame.data()) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    match eth.ethertype() {
        EtherType::Ipv4 => ipv4(pipeline, snapshot, src_id, frame, hint),
        EtherType::Ipv6 => ipv6(pipeline, snapshot, src_id, frame, hint),
        EtherType::Arp => arp(pipeline, frame),
        EtherType::Vlan | EtherType::QinQ => Verdict::Drop(DropReason::VlanTagged),
        EtherType::Unknown(_) => Verdict::Drop(DropReason::UnsupportedEtherType),
    }
}

/// Answers "who has <gateway>?" with the gateway MAC, rewriting the request in place.
fn arp(pipeline: &Pipeline, frame: &mut Frame<'_>) -> Verdict {
    let config = &pipeline.config;
    let (requester_mac, requester_ip) = {
        let Ok(arp) = ArpPacket::new_checked(&frame.data()[ETH..]) else {
            return Verdict::Drop(DropReason::MalformedArp);
        };
        if arp.operation() != ArpOperation::Request
            || arp.target_protocol_addr() != config.gateway_v4
        {
            return Verdict::Drop(DropReason::ArpNotForGateway);
        }
        (arp.sender_hardware_addr(), arp.sender_protocol_addr())
    };
    // Requests are at least 42 bytes (checked above), so the reply fits where it stands.
    let reply_len = ETH + ArpPacket::<&[u8]>::LEN;
    frame.set_len(reply_len);
    let data = frame.data_mut();
    let mut eth = EthernetFrame::new_unchecked(&mut data[..ETH]);
    eth.set_destination(requester_mac);
    eth.set_source(config.gateway_mac);
    let mut arp = ArpPacket::new_unchecked(&mut data[ETH..]);
    arp.set_operation(ArpOperation::Reply);
    arp.set_sender_hardware_addr(config.gateway_mac);
    arp.set_sender_protocol_addr(config.gateway_v4);
    arp.set_target_hardware_addr(requester_mac);
    arp.set_target_protocol_addr(requester_ip);
    Verdict::Reply
}

/// The facts about a pod's IP packet that forwarding needs, gathered before any rewrite.
struct Packet {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    tos: u8,
    ip_len: usize,
    /// IPv4's don't-fragment flag (always true for IPv6, which routers never fragment).
    dont_frag: bool,
    flow: Flow,
}

fn ipv4(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    src_id: EndpointId,
    frame: &mut Frame<'_>,
    hint: RouteHint,
) -> Verdict {
    let packet = {
        let data = frame.data();
        let Ok(ip) = Ipv4Packet::new_checked(&data[ETH..]) else {
            return Verdict::Drop(DropReason::MalformedIpv4);
        };
        if !ip.verify_checksum() {
            return Verdict::Drop(DropReason::Ipv4Checksum);
        }
        if EthernetFrame::new_unchecked(data).destination() != pipeline.config.gateway_mac {
            return Verdict::Drop(DropReason::DstMacNotGateway);
        }
        let dst = ip.dst_addr();
        if dst.is_multicast() || dst.is_broadcast() {
            return Verdict::Drop(DropReason::MulticastDestination);
        }
        // After the checks that drop without an answer, as the kernel's ip_rcv_core does.
        if ip.header_len() > Ipv4Packet::<&[u8]>::MIN_HEADER_LEN {
            match check_options(ip.options()) {
                OptionsVerdict::Valid => {}
                OptionsVerdict::SourceRouted => return Verdict::Drop(DropReason::SourceRouted),
                OptionsVerdict::Invalid { pointer } => {
                    let (ip_len, error) =
                        (usize::from(ip.total_len()), IcmpError::ParameterProblem { pointer });
                    return icmp_error::to_pod(
                        pipeline,
                        frame,
                        ip_len,
                        error,
                        DropReason::BadIpOptions,
                    );
                }
            }
        }
        let flow = match flow::ipv4(&ip, DropReason::MalformedL4) {
            Ok(flow) => flow,
            Err(reason) => return Verdict::Drop(reason),
        };
        Packet {
            src: IpAddr::V4(ip.src_addr()),
            dst: IpAddr::V4(dst),
            ttl: ip.ttl(),
            tos: ip.dscp_ecn(),
            ip_len: usize::from(ip.total_len()),
            dont_frag: ip.dont_frag(),
            flow,
        }
    };
    forward(pipeline, snapshot, src_id, frame, packet, hint)
}

fn ipv6(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    src_id: EndpointId,
    frame: &mut Frame<'_>,
    hint: RouteHint,
) -> Verdict {
    let packet = {
        let data = frame.data();
        let Ok(ip) = Ipv6Packet::new_checked(&data[ETH..]) else {
            return Verdict::Drop(DropReason::MalformedIpv6);
        };
        if ip.next_header() == IpProtocol::Icmpv6 {
            let Ok(icmp) = Icmpv6Packet::new_checked(ip.payload()) else {
                return Verdict::Drop(DropReason::MalformedL4);
            };
            match icmp.msg_type() {
                icmpv6_type::NEIGHBOR_SOLICIT => return neighbour_solicitation(pipeline, frame),
                icmpv6_type::ROUTER_SOLICIT..=137 => {
                    return Verdict::Drop(DropReason::NeighbourDiscoveryIgnored);
                }
                _ => {}
            }
        }
        if EthernetFrame::new_unchecked(data).destination() != pipeline.config.gateway_mac {
            return Verdict::Drop(DropReason::DstMacNotGateway);
        }
        let dst = ip.dst_addr();
        if dst.is_multicast() {
            return Verdict::Drop(DropReason::MulticastDestination);
        }
        let flow = match flow::ipv6(&ip, DropReason::MalformedIpv6, DropReason::MalformedL4) {
            Ok(flow) => flow,
            Err(reason) => return Verdict::Drop(reason),
        };
        Packet {
            src: IpAddr::V6(ip.src_addr()),
            dst: IpAddr::V6(dst),
            ttl: ip.hop_limit(),
            tos: ip.traffic_class(),
            ip_len: ip.total_len(),
            dont_frag: true,
            flow,
        }
    };
    forward(pipeline, snapshot, src_id, frame, packet, hint)
}

/// Routes, polices and rewrites a pod's IP packet.
fn forward(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    src_id: EndpointId,
    frame: &mut Frame<'_>,
    packet: Packet,
    hint: RouteHint,
) -> Verdict {
    let source = snapshot.endpoint(src_id);
    if !source.owns(packet.src) {
        return Verdict::Drop(DropReason::PodSourceSpoofed);
    }
    // The egress side of policy, through the pod's connection tracking: a packet of a flow
    // it tracks passes (a reply, or the pod's own allowed connection), a new flow is judged
    // by the pod's egress policy. The destination's ingress side is judged where the packet
    // is delivered (`Pipeline::deliver`), by the worker that owns the destination.
    let egress = |pipeline: &mut Pipeline, frame: &Frame<'_>, policed: bool| {
        let ip = frame.data().get(ETH..).unwrap_or_default();
        let judged = policy::Judged { src: packet.src, dst: packet.dst, flow: &packet.flow, ip };
        policy::judge(pipeline, snapshot, src_id, true, &judged, policed)
    };
    match hint.route(snapshot, packet.dst) {
        Some(RouteTarget::Endpoint(dst_id)) => {
            if let Err(reason) = egress(pipeline, frame, true) {
                return Verdict::Drop(reason);
            }
            let destination = snapshot.endpoint(dst_id);
            if packet.ttl <= 1 {
                return time_exceeded(pipeline, frame, &packet);
            }
            frame.set_len(ETH + packet.ip_len);
            finish_checksum_for(pipeline, frame, destination);
            decrement_ttl(frame, packet.dst);
            let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
            eth.set_destination(destination.mac);
            eth.set_source(pipeline.config.gateway_mac);
            Verdict::Local(dst_id)
        }
        // An address of this node inside its own pod CIDR (Flannel's flannel.1 address,
        // Calico's tunnel address): pod ↔ own node is always allowed.
        Some(RouteTarget::Node(node)) if node == snapshot.local_node_id() => {
            if snapshot.is_local_address(packet.dst) {
                to_host(pipeline, frame, packet.ip_len)
            } else {
                Verdict::Drop(DropReason::NoSuchPod)
            }
        }
        Some(RouteTarget::Node(node)) => {
            if let Err(reason) = egress(pipeline, frame, true) {
                return Verdict::Drop(reason);
            }
            if packet.ttl <= 1 {
                return time_exceeded(pipeline, frame, &packet);
            }
            let fits = encap::max_inner_ip_len(pipeline, snapshot);
            let largest = pipeline.segmented.map_or(packet.ip_len, |s| s.largest_ip_len);
            if largest > fits {
                return too_big(pipeline, frame, &packet, fits);
            }
            frame.set_len(ETH + packet.ip_len);
            finish_checksum(pipeline, frame);
            decrement_ttl(frame, packet.dst);
            let inner =
                Inner::of_flow(packet.src, packet.dst, &packet.flow, packet.tos, packet.ip_len);
            encap::encapsulate(pipeline, snapshot, snapshot.node(node), frame, inner)
        }
        // The node itself (its underlay address, the gateway the pod routes through) is
        // always reachable from its pods, whatever their egress policy.
        None if packet.dst == snapshot.local_node().underlay
            || packet.dst == IpAddr::V4(pipeline.config.gateway_v4)
            || packet.dst == IpAddr::V6(pipeline.config.gateway_v6) =>
        {
            to_host(pipeline, frame, packet.ip_len)
        }
        // Outside the cluster, or a Service: the node's kernel takes it on. A Service's
        // address is not where the packet goes: kube-proxy's DNAT picks a backend, and the
        // pod's egress policy judges the packet when it comes back from the kernel with the
        // backend as destination (`host`). Tracked here all the same, so that the replies,
        // which come back from the Service's address, pass.
        None => {
            let policed = !pipeline.config.is_service(packet.dst);
            if let Err(reason) = egress(pipeline, frame, policed) {
                return Verdict::Drop(reason);
            }
            to_host(pipeline, frame, packet.ip_len)
        }
    }
}

/// Hands a pod's IP packet to the host interface, Ethernet padding trimmed. A checksum the
/// pod's kernel left for offload stays partial: the host interface's virtio-net header says
/// so to the node's kernel, as a TAP pod's does.
fn to_host(pipeline: &Pipeline, frame: &mut Frame<'_>, ip_len: usize) -> Verdict {
    if !pipeline.config.host_interface {
        return Verdict::Drop(DropReason::NoHostInterface);
    }
    frame.set_len(ETH + ip_len);
    Verdict::Host
}

/// [`finish_checksum`] for a frame delivered to local pod `destination`: for a veth pod,
/// which gets the frame as it is; a TAP pod takes a partial checksum as it came, flagged in
/// the virtio-net header (`offload`).
pub(super) fn finish_checksum_for(
    pipeline: &Pipeline,
    frame: &mut Frame<'_>,
    destination: &Endpoint,
) {
    if destination.edge.is_veth() {
        finish_checksum(pipeline, frame);
    }
}

/// Finishes a transport checksum the sender's kernel left partial, since the receiver gets
/// the frame as it is; not for a super-packet, whose segments each get their own when it is
/// cut.
pub(super) fn finish_checksum(pipeline: &Pipeline, frame: &mut Frame<'_>) {
    if pipeline.segmented.is_none() {
        offload::finish_partial_checksum(&mut frame.data_mut()[ETH..]);
    }
}

/// A pod's packet whose TTL runs out here: the pod hears so from the gateway.
fn time_exceeded(pipeline: &mut Pipeline, frame: &mut Frame<'_>, packet: &Packet) -> Verdict {
    let error = IcmpError::TimeExceeded;
    icmp_error::to_pod(pipeline, frame, packet.ip_len, error, DropReason::TtlExpired)
}

/// A pod's packet too big for the overlay (`fits` bytes of IP at most). With DF (and always
/// over IPv6) the pod learns the path MTU from an ICMP error; an IPv4 packet without DF goes
/// to the host interface, whose MTU is the overlay's, so that the kernel fragments it and the
/// fragments come back to be encapsulated, as they would through the Linux vxlan device.
fn too_big(
    pipeline: &mut Pipeline,
    frame: &mut Frame<'_>,
    packet: &Packet,
    fits: usize,
) -> Verdict {
    if !packet.dont_frag && pipeline.config.host_interface {
        return to_host(pipeline, frame, packet.ip_len);
    }
    let mtu = fits.min(usize::from(u16::MAX)) as u16;
    icmp_error::to_pod(
        pipeline,
        frame,
        packet.ip_len,
        IcmpError::TooBig { mtu },
        DropReason::MtuExceeded,
    )
}

/// Decrements TTL (with an incremental checksum update) or hop limit of the IP packet after
/// the Ethernet header. The caller checked TTL > 1 and the header's validity.
#[inline]
pub(super) fn decrement_ttl(frame: &mut Frame<'_>, family: IpAddr) {
    let ip = &mut frame.data_mut()[ETH..];
    match family {
        IpAddr::V4(_) => {
            Ipv4Packet::new_unchecked(ip).decrement_ttl();
        }
        IpAddr::V6(_) => {
            let mut ip = Ipv6Packet::new_unchecked(ip);
            let hop_limit = ip.hop_limit();
            ip.set_hop_limit(hop_limit - 1);
        }
    }
}

/// Answers a neighbour solicitation for the gateway address with a neighbour advertisement
/// (RFC 4861 §7.2.4), rewriting the frame in place. Validation per §7.1.1.
fn neighbour_solicitation(pipeline: &Pipeline, frame: &mut Frame<'_>) -> Verdict {
    let config = &pipeline.config;
    let (requester_mac, requester_ip) = {
        let data = frame.data();
        let ip = Ipv6Packet::new_unchecked(&data[ETH..]);
        let icmp = Icmpv6Packet::new_unchecked(ip.payload());
        let pseudo = checksum::pseudo_header_v6(
            ip.src_addr(),
            ip.dst_addr(),
            IpProtocol::Icmpv6.into(),
            u32::from(ip.payload_len()),
        );
        let valid = ip.hop_limit() == 255
            && icmp.msg_code() == 0
            && ip.payload().len() >= Icmpv6Packet::<&[u8]>::ND_LEN
            && icmp.nd_options_valid()
            && checksum::sum(pseudo, ip.payload()) == 0xffff;
        if !valid {
            return Verdict::Drop(DropReason::MalformedNeighbourDiscovery);
        }
        if icmp.nd_target() != Some(config.gateway_v6) {
            return Verdict::Drop(DropReason::NeighbourDiscoveryIgnored);
        }
        (EthernetFrame::new_unchecked(data).source(), ip.src_addr())
    };
    // A solicitation from the unspecified address is duplicate address detection: answer
    // all nodes, unsolicited (§7.2.4).
    let (dst_ip, dst_mac, flags) = if requester_ip.is_unspecified() {
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        (all_nodes, MacAddr::ipv6_multicast(all_nodes), na_flags::ROUTER | na_flags::OVERRIDE)
    } else {
        (requester_ip, requester_mac, na_flags::ROUTER | na_flags::SOLICITED | na_flags::OVERRIDE)
    };
    let icmp_len = Icmpv6Packet::<&[u8]>::ND_LEN + 8;
    let ip_start = ETH;
    let icmp_start = ip_start + Ipv6Packet::<&[u8]>::HEADER_LEN;
    if !frame.set_len(icmp_start + icmp_len) {
        return Verdict::Drop(DropReason::NoBufferRoom);
    }
    let data = frame.data_mut();
    let mut eth = EthernetFrame::new_unchecked(&mut data[..ETH]);
    eth.set_destination(dst_mac);
    eth.set_source(config.gateway_mac);
    let mut ip = Ipv6Packet::new_unchecked(&mut data[ip_start..icmp_start]);
    ip.set_version_tc_flow(0, 0);
    ip.set_payload_len(icmp_len as u16);
    ip.set_next_header(IpProtocol::Icmpv6);
    ip.set_hop_limit(255);
    ip.set_src_addr(config.gateway_v6);
    ip.set_dst_addr(dst_ip);
    let mut icmp = Icmpv6Packet::new_unchecked(&mut data[icmp_start..]);
    if icmp.emit_neighbor_advert(config.gateway_v6, flags, config.gateway_mac).is_err() {
        return Verdict::Drop(DropReason::NoBufferRoom);
    }
    let pseudo = checksum::pseudo_header_v6(
        config.gateway_v6,
        dst_ip,
        IpProtocol::Icmpv6.into(),
        icmp_len as u32,
    );
    let sum = checksum::transport_checksum(pseudo, &data[icmp_start..]);
    Icmpv6Packet::new_unchecked(&mut data[icmp_start..]).set_checksum(sum);
    Verdict::Reply
}
