//! Frames received on the uplink: VXLAN for this node is validated the way the Linux vxlan
//! device and Calico's anti-spoofing would, decapsulated (the outer ECN CE carried to the inner
//! packet, RFC 6040) and delivered to the local pod, or to the host interface when it is for
//! the node's own tunnel address. Everything else is the kernel's (SSH, ARP, kubelet, other
//! VNIs): the XDP program passes it before it gets here, so what does get here is dropped as a
//! mismatch.

use std::net::IpAddr;

use crate::table::{RouteTarget, Snapshot};
use crate::wire::checksum;
use crate::wire::ipv4::{OptionsVerdict, check_options};
use crate::wire::{
    EtherType, EthernetFrame, IpProtocol, Ipv4Packet, Ipv6Packet, UdpPacket, VxlanPacket,
};

use super::flow;
use super::offload;
use super::pod::{decrement_ttl, finish_checksum_for};
use super::{DropReason, Frame, Pipeline, Verdict};

/// ECN codepoints (RFC 3168 §5).
const ECN_MASK: u8 = 0x03;
const ECN_CE: u8 = 0x03;
const NOT_ECT: u8 = 0x00;

const ETH: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// Where the VXLAN payload sits in an outer frame that passed the outer checks.
struct Outer {
    source: IpAddr,
    /// The outer header's ECN bits.
    ecn: u8,
    /// Offset of the VXLAN header in the frame.
    vxlan_start: usize,
    /// End of the UDP datagram in the frame (outer Ethernet padding excluded).
    udp_end: usize,
}

pub(super) fn process(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    frame: &mut Frame<'_>,
) -> Verdict {
    let outer = match outer(pipeline, snapshot, frame.data()) {
        Ok(outer) => outer,
        // Local checksum offload (RFC 7348 senders on this host): the outer checksum was
        // computed for the inner checksum as it will be once finished. Finish it and look
        // again; a checksum that is simply wrong stays wrong.
        Err(Verdict::Drop(DropReason::OuterChecksum)) if finish_inner_checksum(frame) => {
            match outer(pipeline, snapshot, frame.data()) {
                Ok(outer) => outer,
                Err(verdict) => return verdict,
            }
        }
        Err(verdict) => return verdict,
    };
    decapsulate(pipeline, snapshot, frame, outer)
}

#[inline(always)]
fn outer(pipeline: &Pipeline, snapshot: &Snapshot, data: &[u8]) -> Result<Outer, Verdict> {
    let Ok(eth) = EthernetFrame::new_checked(data) else {
        return Err(Verdict::Drop(DropReason::Truncated));
    };
    match eth.ethertype() {
        EtherType::Ipv4 => outer_ipv4(pipeline, snapshot, &data[ETH..]),
        EtherType::Ipv6 => outer_ipv6(pipeline, snapshot, &data[ETH..]),
        _ => Err(Verdict::Drop(DropReason::NotVxlanForNode)),
    }
}

/// Completes a partial inner TCP/UDP checksum of a VXLAN frame whose outer UDP checksum
/// failed (see offload.rs); true when it changed something.
#[cold]
fn finish_inner_checksum(frame: &mut Frame<'_>) -> bool {
    let data = frame.data_mut();
    let outer_ip_len = match data.get(ETH) {
        Some(b) if b >> 4 == 4 => usize::from(b & 0x0f) * 4,
        Some(b) if b >> 4 == 6 => Ipv6Packet::<&[u8]>::HEADER_LEN,
        _ => return false,
    };
    let inner_ip = ETH + outer_ip_len + 8 + VxlanPacket::<&[u8]>::HEADER_LEN + ETH;
    let Some(inner) = data.get_mut(inner_ip..) else { return false };
    let len = match inner.first() {
        Some(b) if b >> 4 == 4 && inner.len() >= 4 => {
            usize::from(u16::from_be_bytes([inner[2], inner[3]]))
        }
        Some(b) if b >> 4 == 6 && inner.len() >= 6 => {
            40 + usize::from(u16::from_be_bytes([inner[4], inner[5]]))
        }
        _ => return false,
    };
    match inner.get_mut(..len) {
        Some(packet) => offload::finish_partial_checksum(packet),
        None => false,
    }
}

/// Outer IPv4 + UDP checks; what is not VXLAN for this node is a mismatch with the XDP
/// program, which passes it to the kernel.
#[inline(always)]
fn outer_ipv4(pipeline: &Pipeline, snapshot: &Snapshot, bytes: &[u8]) -> Result<Outer, Verdict> {
    let Ok(ip) = Ipv4Packet::new_checked(bytes) else {
        return Err(Verdict::Drop(DropReason::OuterMalformed));
    };
    if IpAddr::V4(ip.dst_addr()) != snapshot.local_node().underlay
        || ip.protocol() != IpProtocol::Udp
        || ip.frag_offset() != 0
    {
        // Later fragments carry no port: they may be anything UDP, so the kernel reassembles.
        return Err(Verdict::Drop(DropReason::NotVxlanForNode));
    }
    if !ip.verify_checksum() {
        return Err(Verdict::Drop(DropReason::OuterChecksum));
    }
    let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
        return Err(Verdict::Drop(DropReason::OuterMalformed));
    };
    if udp.dst_port() != pipeline.config.vxlan_port {
        return Err(Verdict::Drop(DropReason::NotVxlanForNode));
    }
    if ip.more_frags() {
        return Err(Verdict::Drop(DropReason::OuterFragment));
    }
    // Linux verifies a non-zero UDP checksum before VXLAN sees the datagram (and its vxlan
    // devices send one by default); zero means "none" over IPv4.
    let datagram = &ip.payload()[..usize::from(udp.len())];
    if udp.checksum() != 0 {
        let pseudo = checksum::pseudo_header_v4(ip.src_addr(), ip.dst_addr(), 17, udp.len());
        if checksum::sum(pseudo, datagram) != 0xffff && !partial(udp.checksum(), pseudo) {
            return Err(Verdict::Drop(DropReason::OuterChecksum));
        }
    }
    let udp_start = ETH + ip.header_len();
    Ok(Outer {
        source: IpAddr::V4(ip.src_addr()),
        ecn: ip.dscp_ecn() & ECN_MASK,
        vxlan_start: udp_start + UdpPacket::<&[u8]>::HEADER_LEN,
        udp_end: udp_start + usize::from(udp.len()),
    })
}

/// A checksum left for offload: the kernel of a VTEP on the same host (a kernel-VXLAN node
/// on a veth underlay) hands its veth the outer UDP checksum as the bare pseudo-header sum
/// (CHECKSUM_PARTIAL), which the veth never completes; the receiving kernel would trust the
/// skb's flag, so podlane accepts it too (offload.rs has the full story). On a NIC underlay
/// the wire always carries complete checksums.
#[inline]
fn partial(field: u16, pseudo: u32) -> bool {
    field == checksum::fold(u64::from(pseudo))
}

/// Outer IPv6 + UDP checks. Extension headers before UDP are left to the kernel.
#[inline(always)]
fn outer_ipv6(pipeline: &Pipeline, snapshot: &Snapshot, bytes: &[u8]) -> Result<Outer, Verdict> {
    let Ok(ip) = Ipv6Packet::new_checked(bytes) else {
        return Err(Verdict::Drop(DropReason::OuterMalformed));
    };
    if IpAddr::V6(ip.dst_addr()) != snapshot.local_node().underlay
        || ip.next_header() != IpProtocol::Udp
    {
        return Err(Verdict::Drop(DropReason::NotVxlanForNode));
    }
    let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
        return Err(Verdict::Drop(DropReason::OuterMalformed));
    };
    if udp.dst_port() != pipeline.config.vxlan_port {
        return Err(Verdict::Drop(DropReason::NotVxlanForNode));
    }
    // RFC 8200 §8.1: a zero UDP checksum over IPv6 is invalid (Linux drops it unless the
    // device enables udp6zerocsumrx).
    let pseudo = checksum::pseudo_header_v6(ip.src_addr(), ip.dst_addr(), 17, u32::from(udp.len()));
    if udp.checksum() == 0
        || (checksum::sum(pseudo, &ip.payload()[..usize::from(udp.len())]) != 0xffff
            && !partial(udp.checksum(), pseudo))
    {
        return Err(Verdict::Drop(DropReason::OuterChecksum));
    }
    let udp_start = ETH + Ipv6Packet::<&[u8]>::HEADER_LEN;
    Ok(Outer {
        source: IpAddr::V6(ip.src_addr()),
        ecn: ip.traffic_class() & ECN_MASK,
        vxlan_start: udp_start + UdpPacket::<&[u8]>::HEADER_LEN,
        udp_end: udp_start + usize::from(udp.len()),
    })
}

/// Inner facts gathered before the frame is rewritten.
struct InnerPacket {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    ecn: u8,
    ip_len: usize,
}

#[inline(always)]
fn decapsulate(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    frame: &mut Frame<'_>,
    outer: Outer,
) -> Verdict {
    let local = snapshot.local_node();
    let inner_start = outer.vxlan_start + VxlanPacket::<&[u8]>::HEADER_LEN;
    let inner = {
        let data = frame.data();
        let sender = match snapshot.node_by_underlay(outer.source) {
            Some(node) if node != snapshot.local_node_id() => node,
            _ => return Verdict::Drop(DropReason::UnknownVtep),
        };
        let Ok(vxlan) = VxlanPacket::new_checked(&data[outer.vxlan_start..outer.udp_end]) else {
            return Verdict::Drop(DropReason::VxlanBadFlags);
        };
        if !vxlan.has_valid_flags() {
            return Verdict::Drop(DropReason::VxlanBadFlags);
        }
        if vxlan.vni() != pipeline.config.vni {
            return Verdict::Drop(DropReason::VniMismatch);
        }
        let inner_frame = &data[inner_start..outer.udp_end];
        let Ok(eth) = EthernetFrame::new_checked(inner_frame) else {
            return Verdict::Drop(DropReason::InnerMalformed);
        };
        if eth.is_vlan_tagged() {
            return Verdict::Drop(DropReason::InnerVlan);
        }
        if eth.destination() != local.vtep_mac {
            return Verdict::Drop(DropReason::InnerDstMacNotVtep);
        }
        if eth.source() == local.vtep_mac {
            return Verdict::Drop(DropReason::InnerSrcIsOwnVtep);
        }
        let parsed = match eth.ethertype() {
            EtherType::Ipv4 => inner_ipv4(&inner_frame[ETH..]),
            EtherType::Ipv6 => inner_ipv6(&inner_frame[ETH..]),
            _ => Err(DropReason::InnerNotIp),
        };
        let inner = match parsed {
            Ok(inner) => inner,
            Err(reason) => return Verdict::Drop(reason),
        };
        // A node speaks for its own pods and its own overlay addresses only; anything else
        // would let it (or whoever spoofs its underlay address) pass as any pod.
        let node = snapshot.node(sender);
        if !node.pod_cidrs.iter().any(|c| c.contains(inner.src))
            && !node.tunnel_ips.contains(&inner.src)
        {
            return Verdict::Drop(DropReason::InnerSourceSpoofed);
        }
        inner
    };

    // RFC 6040 §4.2, as Linux's INET_ECN_decapsulate: congestion the underlay marked stays
    // visible to the inner transport; a CE mark on a packet that cannot carry it is a drop.
    let mark_ce = outer.ecn == ECN_CE && inner.ecn != ECN_CE;
    if outer.ecn == ECN_CE && inner.ecn == NOT_ECT {
        return Verdict::Drop(DropReason::EcnCeNotEct);
    }
    let target = snapshot.route(inner.dst);
    match target {
        Some(RouteTarget::Endpoint(id)) => {
            // The ingress side of policy is judged where the frame is delivered, by the worker
            // that owns the pod (`Pipeline::deliver`).
            let endpoint = snapshot.endpoint(id);
            if inner.ttl <= 1 {
                return Verdict::Drop(DropReason::TtlExpired);
            }
            frame.pull_head(inner_start);
            frame.set_len(ETH + inner.ip_len);
            // A kernel VTEP on a veth underlay leaves inner checksums partial (offload.rs).
            finish_checksum_for(pipeline, frame, endpoint);
            if mark_ce {
                set_ce(frame, inner.dst);
            }
            decrement_ttl(frame, inner.dst);
            let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
            eth.set_destination(endpoint.mac);
            eth.set_source(pipeline.config.gateway_mac);
            Verdict::Decap(id)
        }
        // This node's own tunnel address: for the node's kernel.
        Some(RouteTarget::Node(node))
            if node == snapshot.local_node_id() && snapshot.is_local_address(inner.dst) =>
        {
            if !pipeline.config.host_interface {
                return Verdict::Drop(DropReason::NoHostInterface);
            }
            frame.pull_head(inner_start);
            frame.set_len(ETH + inner.ip_len);
            // A checksum left partial goes to the node's kernel flagged, as a pod's does.
            if mark_ce {
                set_ce(frame, inner.dst);
            }
            Verdict::Host
        }
        Some(RouteTarget::Node(node)) if node == snapshot.local_node_id() => {
            Verdict::Drop(DropReason::NoSuchPod)
        }
        // Another node's pods, or outside the cluster: not this node's to deliver.
        _ => Verdict::Drop(DropReason::DecapForRemoteNode),
    }
}

/// Marks the inner packet (after the Ethernet header) CE.
fn set_ce(frame: &mut Frame<'_>, family: IpAddr) {
    let ip = &mut frame.data_mut()[ETH..];
    match family {
        IpAddr::V4(_) => Ipv4Packet::new_unchecked(ip).set_ecn(ECN_CE),
        IpAddr::V6(_) => {
            let mut ip = Ipv6Packet::new_unchecked(ip);
            let tc = ip.traffic_class();
            ip.set_traffic_class(tc | ECN_CE);
        }
    }
}

#[inline(always)]
fn inner_ipv4(bytes: &[u8]) -> Result<InnerPacket, DropReason> {
    let ip = Ipv4Packet::new_checked(bytes).map_err(|_| DropReason::InnerMalformed)?;
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4Checksum);
    }
    // As the receiving node's kernel would after its vxlan device; no error goes back across
    // the overlay for it.
    if ip.header_len() > Ipv4Packet::<&[u8]>::MIN_HEADER_LEN {
        match check_options(ip.options()) {
            OptionsVerdict::Valid => {}
            OptionsVerdict::SourceRouted => return Err(DropReason::SourceRouted),
            OptionsVerdict::Invalid { .. } => return Err(DropReason::BadIpOptions),
        }
    }
    // A transport header too short for its ports is dropped here; policy reads the ports
    // again where the frame is delivered.
    flow::ipv4(&ip, DropReason::MalformedL4)?;
    Ok(InnerPacket {
        src: IpAddr::V4(ip.src_addr()),
        dst: IpAddr::V4(ip.dst_addr()),
        ttl: ip.ttl(),
        ecn: ip.dscp_ecn() & ECN_MASK,
        ip_len: usize::from(ip.total_len()),
    })
}

#[inline(always)]
fn inner_ipv6(bytes: &[u8]) -> Result<InnerPacket, DropReason> {
    let ip = Ipv6Packet::new_checked(bytes).map_err(|_| DropReason::InnerMalformed)?;
    flow::ipv6(&ip, DropReason::InnerMalformed, DropReason::MalformedL4)?;
    Ok(InnerPacket {
        src: IpAddr::V6(ip.src_addr()),
        dst: IpAddr::V6(ip.dst_addr()),
        ttl: ip.hop_limit(),
        ecn: ip.traffic_class() & ECN_MASK,
        ip_len: ip.total_len(),
    })
}
