//! VXLAN encapsulation (RFC 7348 §5) exactly as the Linux vxlan device sends it, outer headers
//! written into the frame's headroom so the payload is never copied:
//!
//! * outer Ethernet: underlay next hop ← uplink MAC;
//! * outer IPv4: TOS 0 with the inner ECN encapsulated (`INET_ECN_encapsulate`: CE becomes
//!   ECT(0)), DF set (as the Linux device's `df set`: a VTEP must not fragment, and podlane
//!   does not reassemble, so nothing on the way may fragment either), TTL 64, a per-worker
//!   identification counter; or outer IPv6 with the same ECN rule in the traffic class, flow
//!   label 0, hop limit 64;
//! * UDP: source port = flow hash scaled into [min, max] (Linux's `udp_flow_src_port`), so one
//!   flow keeps one port (ECMP/RSS entropy) and different flows spread; destination = the
//!   configured port; checksum zero over IPv4 unless configured, always computed over IPv6;
//! * VXLAN: I flag, the VNI, every reserved bit zero;
//! * inner Ethernet: this node's VTEP MAC → the remote node's VTEP MAC (the receiving kernel
//!   drops any other destination as PACKET_OTHERHOST).

use std::net::IpAddr;

use crate::table::{Node, Snapshot};
use crate::wire::checksum;
use crate::wire::{
    EtherType, EthernetFrame, IpProtocol, Ipv4Packet, Ipv6Packet, UdpPacket, VxlanPacket,
};

use super::flow::Flow;
use super::{DropReason, ENCAP_OVERHEAD_V4, ENCAP_OVERHEAD_V6, Frame, Pipeline, Verdict};

/// Hash of an inner flow's 5-tuple (addresses as integers, IPv4 in the low 32 bits). Stable
/// for a flow, well mixed across flows; not symmetric, like the kernel's skb hash.
#[inline]
pub fn flow_hash(src: u128, dst: u128, protocol: u8, src_port: u16, dst_port: u16) -> u32 {
    let a = (src as u64) ^ ((src >> 64) as u64);
    let b = (dst as u64) ^ ((dst >> 64) as u64);
    let c = (u64::from(protocol) << 32) | (u64::from(src_port) << 16) | u64::from(dst_port);
    let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ b.rotate_left(29).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ c.wrapping_mul(0x1656_67b1_9e37_79f9);
    // MurmurHash3's fmix64 finaliser.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// Scales a 32-bit hash into [min, max) with a multiply, not a modulo, exactly as Linux's
/// `udp_flow_src_port` does, including its fallback to the default local port range when
/// min ≥ max.
#[inline]
pub fn source_port(hash: u32, min: u16, max: u16) -> u16 {
    let (min, max) = if min >= max { (32768, 60999) } else { (min, max) };
    min + ((u64::from(hash) * u64::from(max - min)) >> 32) as u16
}

/// RFC 6040 / Linux `INET_ECN_encapsulate` with a zero outer TOS: copy ECT(0)/ECT(1), turn
/// CE into ECT(0).
#[inline]
fn ecn_encapsulate(inner_tos: u8) -> u8 {
    match inner_tos & 0x03 {
        0x03 => 0x02,
        ecn => ecn,
    }
}

/// The largest inner IP packet that fits the uplink once encapsulated: the MTU pods must use
/// (1450 on a 1500-byte IPv4 underlay, 1430 over IPv6).
#[inline]
pub(super) fn max_inner_ip_len(pipeline: &Pipeline, snapshot: &Snapshot) -> usize {
    let overhead = match snapshot.local_node().underlay {
        IpAddr::V4(_) => ENCAP_OVERHEAD_V4,
        IpAddr::V6(_) => ENCAP_OVERHEAD_V6,
    };
    // The overhead counts the inner Ethernet header's 14 bytes as the outer Ethernet's: the
    // outer Ethernet header is not part of the MTU, the inner one is part of the payload.
    usize::from(pipeline.config.uplink_mtu).saturating_sub(overhead)
}

/// What the encapsulation needs to know about the inner packet.
pub(super) struct Inner {
    /// Inner IP packet length (the frame is trimmed to 14 + this, dropping Ethernet padding).
    pub ip_len: usize,
    /// Inner TOS / traffic class, for the ECN copy.
    pub tos: u8,
    /// Flow hash for the source port.
    pub hash: u32,
}

/// An address as the flow hash takes it.
fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Inner {
    /// The inner packet of a flow, its hash taken from its addresses and `flow`'s ports.
    pub(super) fn of_flow(src: IpAddr, dst: IpAddr, flow: &Flow, tos: u8, ip_len: usize) -> Self {
        let hash = flow_hash(key(src), key(dst), flow.protocol, flow.src_port, flow.dst_port);
        Inner { ip_len, tos, hash }
    }
}

/// Encapsulates the inner frame in `frame` towards `node`. The inner IP header is already
/// rewritten (TTL decremented) by the caller.
pub(super) fn encapsulate(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    node: &Node,
    frame: &mut Frame<'_>,
    inner: Inner,
) -> Verdict {
    let config = &pipeline.config;
    let Some(next_hop) = node.next_hop_mac else {
        return Verdict::Drop(DropReason::NextHopUnresolved);
    };
    let local = snapshot.local_node();
    let inner_len = EthernetFrame::<&[u8]>::HEADER_LEN + inner.ip_len;
    let (overhead, outer_ip_header) = match local.underlay {
        IpAddr::V4(_) => (ENCAP_OVERHEAD_V4, Ipv4Packet::<&[u8]>::MIN_HEADER_LEN),
        IpAddr::V6(_) => (ENCAP_OVERHEAD_V6, Ipv6Packet::<&[u8]>::HEADER_LEN),
    };
    let udp_len = UdpPacket::<&[u8]>::HEADER_LEN + VxlanPacket::<&[u8]>::HEADER_LEN + inner_len;
    // A super-packet's lengths overflow the outer fields; its segments get their own.
    let largest = pipeline.segmented.map_or(inner.ip_len, |s| s.largest_ip_len);
    let largest_udp_len = udp_len - inner.ip_len + largest;
    if outer_ip_header + largest_udp_len > usize::from(config.uplink_mtu) {
        return Verdict::Drop(DropReason::MtuExceeded);
    }
    // Trim Ethernet padding: the kernel encapsulates the IP packet's length, not the wire's.
    if !frame.set_len(inner_len) {
        return Verdict::Drop(DropReason::InnerMalformed);
    }
    {
        let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
        eth.set_destination(node.vtep_mac);
        eth.set_source(local.vtep_mac);
    }
    if !frame.push_head(overhead) {
        return Verdict::Drop(DropReason::NoBufferRoom);
    }
    let ip_start = EthernetFrame::<&[u8]>::HEADER_LEN;
    let udp_start = ip_start + outer_ip_header;
    let vxlan_start = udp_start + UdpPacket::<&[u8]>::HEADER_LEN;
    let sport = source_port(inner.hash, config.source_port_min, config.source_port_max);
    let ecn = ecn_encapsulate(inner.tos);
    let data = frame.data_mut();

    let mut eth = EthernetFrame::new_unchecked(&mut data[..ip_start]);
    eth.set_destination(next_hop);
    eth.set_source(config.uplink_mac);
    VxlanPacket::new_unchecked(&mut data[vxlan_start..]).emit(config.vni);
    let mut udp = UdpPacket::new_unchecked(&mut data[udp_start..]);
    udp.set_src_port(sport);
    udp.set_dst_port(config.vxlan_port);
    udp.set_len(udp_len as u16);
    udp.set_checksum(0);

    match (local.underlay, node.underlay) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            EthernetFrame::new_unchecked(&mut data[..ip_start]).set_ethertype(EtherType::Ipv4);
            let mut ip = Ipv4Packet::new_unchecked(&mut data[ip_start..udp_start]);
            ip.set_version_and_header_len(outer_ip_header);
            ip.set_dscp_ecn(ecn);
            ip.set_total_len((outer_ip_header + udp_len) as u16);
            ip.set_ident(pipeline.next_ip_id);
            ip.set_dont_frag_no_offset(true);
            ip.set_ttl(config.outer_ttl);
            ip.set_protocol(IpProtocol::Udp);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.fill_checksum();
            let segments = pipeline.segmented.map_or(1, |s| s.segments);
            pipeline.next_ip_id = pipeline.next_ip_id.wrapping_add(segments as u16);
            if config.outer_udp_checksum_v4 && pipeline.segmented.is_some() {
                // Asks the segmentation for one per segment.
                UdpPacket::new_unchecked(&mut data[udp_start..]).set_checksum(0xffff);
            } else if config.outer_udp_checksum_v4 {
                let pseudo = checksum::pseudo_header_v4(src, dst, 17, udp_len as u16);
                let sum = checksum::transport_checksum(pseudo, &data[udp_start..]);
                UdpPacket::new_unchecked(&mut data[udp_start..]).set_checksum(sum);
            }
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            EthernetFrame::new_unchecked(&mut data[..ip_start]).set_ethertype(EtherType::Ipv6);
            let mut ip = Ipv6Packet::new_unchecked(&mut data[ip_start..udp_start]);
            ip.set_version_tc_flow(ecn, 0);
            ip.set_payload_len(udp_len as u16);
            ip.set_next_header(IpProtocol::Udp);
            ip.set_hop_limit(config.outer_ttl);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            // Each segment of a super-packet gets its own, when it is cut.
            if pipeline.segmented.is_none() {
                let pseudo = checksum::pseudo_header_v6(src, dst, 17, udp_len as u32);
                let sum = checksum::transport_checksum(pseudo, &data[udp_start..]);
                UdpPacket::new_unchecked(&mut data[udp_start..]).set_checksum(sum);
            }
        }
        // Snapshot validation keeps every node in the local node's family.
        _ => return Verdict::Drop(DropReason::NextHopUnresolved),
    }
    Verdict::Encap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_port_stays_in_range() {
        for hash in [0u32, 1, 0x8000_0000, u32::MAX] {
            let p = source_port(hash, 32768, 60999);
            assert!((32768..60999).contains(&p), "{p}");
        }
        assert_eq!(source_port(u32::MAX, 32768, 60999), 60998, "max is exclusive, as in Linux");
        assert_eq!(source_port(0, 32768, 60999), 32768);
        assert_eq!(source_port(u32::MAX, 4000, 4000), 60998, "min ≥ max: Linux's default range");
    }

    #[test]
    fn flows_spread_over_ports() {
        let mut ports = std::collections::HashSet::new();
        for sport in 0..1000u16 {
            let h = flow_hash(0x0af4_0102, 0x0af4_0203, 6, 40000 + sport, 80);
            ports.insert(source_port(h, 32768, 60999));
        }
        assert!(ports.len() > 950, "only {} distinct ports for 1000 flows", ports.len());
        let h1 = flow_hash(1, 2, 17, 3, 4);
        assert_eq!(h1, flow_hash(1, 2, 17, 3, 4), "stable per flow");
    }

    #[test]
    fn ecn_rules() {
        assert_eq!(ecn_encapsulate(0xb8), 0x00);
        assert_eq!(ecn_encapsulate(0x01), 0x01);
        assert_eq!(ecn_encapsulate(0x02), 0x02);
        assert_eq!(ecn_encapsulate(0x03), 0x02);
    }
}
