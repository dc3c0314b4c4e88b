//! Pipeline tests on bytes: frames built by etherparse (an encoder independent of `wire`),
//! run through the engine, and the results decoded by etherparse again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use proptest::prelude::*;

use super::*;
use crate::table::{
    EndpointSpec, NodeSpec, PeerSpec, PolicySpec, PortProtocol, PortSpec, RuleSpec, TableSpec,
};

const UPLINK_A: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 0x01]);
const NEXT_HOP_B: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 0, 0x01]);
const VTEP_A: MacAddr = MacAddr([0x0a, 0xaa, 0, 0, 0, 0x01]);
const VTEP_B: MacAddr = MacAddr([0x0a, 0xbb, 0, 0, 0, 0x01]);
const POD_A1_MAC: MacAddr = MacAddr([0x0a, 0x58, 0, 0, 0x01, 0x02]);
const POD_A2_MAC: MacAddr = MacAddr([0x0a, 0x58, 0, 0, 0x01, 0x03]);
const HEADROOM: usize = 256;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pod(name: &str, ips: &[&str], mac: MacAddr, interface: &str) -> EndpointSpec {
    EndpointSpec {
        namespace: "default".into(),
        name: name.into(),
        labels: Default::default(),
        ips: ips.iter().map(|s| ip(s)).collect(),
        mac,
        interface: interface.into(),
        edge: Default::default(),
        ingress_policy: None,
        egress_policy: None,
    }
}

/// node-a (this node, 192.168.50.1, 10.244.1.0/24 + fd00:10:244:1::/64) with pods a1 and a2;
/// node-b (192.168.50.2, 10.244.2.0/24 + fd00:10:244:2::/64).
fn spec_for(local: &str, underlay_v6: bool) -> TableSpec {
    let (ua, ub) =
        if underlay_v6 { ("fd00:50::1", "fd00:50::2") } else { ("192.168.50.1", "192.168.50.2") };
    TableSpec {
        local_node: local.into(),
        nodes: vec![
            NodeSpec {
                name: "node-a".into(),
                underlay: ip(ua),
                vtep_mac: Some(VTEP_A),
                next_hop_mac: Some(UPLINK_A),
                pod_cidrs: vec![
                    "10.244.1.0/24".parse().unwrap(),
                    "fd00:10:244:1::/64".parse().unwrap(),
                ],
                tunnel_ips: Vec::new(),
            },
            NodeSpec {
                name: "node-b".into(),
                underlay: ip(ub),
                vtep_mac: Some(VTEP_B),
                next_hop_mac: Some(NEXT_HOP_B),
                pod_cidrs: vec![
                    "10.244.2.0/24".parse().unwrap(),
                    "fd00:10:244:2::/64".parse().unwrap(),
                ],
                tunnel_ips: Vec::new(),
            },
        ],
        endpoints: if local == "node-a" {
            vec![
                pod("a1", &["10.244.1.2", "fd00:10:244:1::2"], POD_A1_MAC, "veth-a1"),
                pod("a2", &["10.244.1.3"], POD_A2_MAC, "veth-a2"),
            ]
        } else {
            vec![pod("b1", &["10.244.2.5"], MacAddr([0x0a, 0x58, 0, 0, 2, 5]), "veth-b1")]
        },
        policies: vec![],
    }
}

fn snapshot(spec: &TableSpec) -> Snapshot {
    Snapshot::build(spec, 1).unwrap()
}

fn config_for(local: &str) -> EngineConfig {
    let uplink_mac = if local == "node-a" { UPLINK_A } else { NEXT_HOP_B };
    EngineConfig { uplink_mac, ..EngineConfig::default() }
}

/// Runs one frame (copied behind `HEADROOM` bytes of headroom) as a worker does — the
/// pipeline, then for a frame to a local pod the delivery's judgement — and returns the
/// verdict (`Host` for a frame delivery sends to the host interface, the drop where delivery
/// refused it) and the resulting frame bytes.
fn run(p: &mut Pipeline, snap: &Snapshot, ingress: Ingress, bytes: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buffer = vec![0u8; HEADROOM + bytes.len() + 128];
    buffer[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
    let mut span = Span::new(HEADROOM, bytes.len());
    let mut frames = [Frame::new(&mut buffer, &mut span)];
    let mut verdicts = [Verdict::Host];
    p.process_batch(snap, ingress, &mut frames, &mut verdicts);
    let verdict = match verdicts[0] {
        Verdict::Decap(id) | Verdict::Local(id) => match p.deliver(snap, id, frames[0].data()) {
            Delivery::Deliver => verdicts[0],
            Delivery::ViaHost => Verdict::Host,
            Delivery::Drop(reason) => Verdict::Drop(reason),
        },
        other => other,
    };
    (verdict, frames[0].data().to_vec())
}

fn from_a1(snap: &Snapshot) -> Ingress {
    Ingress::Pod(snap.endpoint_by_interface("veth-a1").unwrap())
}

fn udp4(src: &str, dst: &str, sport: u16, dport: u16, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let gw = EngineConfig::default().gateway_mac;
    let b = PacketBuilder::ethernet2(POD_A1_MAC.0, gw.0)
        .ipv4(ip4(src).octets(), ip4(dst).octets(), ttl)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    out
}

fn tcp4(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let gw = EngineConfig::default().gateway_mac;
    let b = PacketBuilder::ethernet2(POD_A1_MAC.0, gw.0)
        .ipv4(ip4(src).octets(), ip4(dst).octets(), 64)
        .tcp(sport, dport, 1, 65535);
    let mut out = Vec::new();
    b.write(&mut out, b"GET / HTTP/1.1\r\n").unwrap();
    out
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Decodes an encapsulated frame: returns (outer sliced, inner frame bytes).
fn outer_and_inner(bytes: &[u8]) -> (SlicedPacket<'_>, &[u8]) {
    let outer = SlicedPacket::from_ethernet(bytes).expect("outer decodes");
    let Some(TransportSlice::Udp(udp)) = &outer.transport else { panic!("outer is not UDP") };
    let vxlan = udp.payload();
    assert_eq!(&vxlan[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0][..], "VXLAN header: I flag, VNI 1");
    let inner = &vxlan[8..];
    (outer, inner)
}

#[test]
fn encap_ipv4_matches_the_kernel_format() {
    let spec = spec_for("node-a", false);
    let snap = snapshot(&spec);
    let mut p = Pipeline::new(config_for("node-a"));
    let frame = udp4("10.244.1.2", "10.244.2.5", 5000, 53, 64, b"hello");
    let (verdict, out) = run(&mut p, &snap, from_a1(&snap), &frame);
    assert_eq!(verdict, Verdict::Encap);
    assert_eq!(out.len(), frame.len() + ENCAP_OVERHEAD_V4);

    let (outer, inner) = outer_and_inner(&out);
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &outer.link else { panic!() };
    assert_eq!(eth.destination(), NEXT_HOP_B.0);
    assert_eq!(eth.source(), UPLINK_A.0);
    let Some(NetSlice::Ipv4(ipv4)) = &outer.net else { panic!("outer IPv4") };
    let h = ipv4.header();
    assert_eq!(h.source(), [192, 168, 50, 1]);
    assert_eq!(h.destination(), [192, 168, 50, 2]);
    assert_eq!(h.ttl(), 64);
    assert!(h.dont_fragment(), "DF set: nothing on the underlay may fragment VXLAN");
    assert_eq!(h.dcp().value(), 0);
    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
    let Some(TransportSlice::Udp(udp)) = &outer.transport else { panic!() };
    assert_eq!(udp.destination_port(), 8472);
    assert!((32768..=60999).contains(&udp.source_port()));
    assert_eq!(udp.checksum(), 0, "IPv4 outer UDP checksum is zero by default");

    let inner = SlicedPacket::from_ethernet(inner).expect("inner decodes");
    let Some(etherparse::LinkSlice::Ethernet2(ieth)) = &inner.link else { panic!() };
    assert_eq!(ieth.destination(), VTEP_B.0, "inner destination = remote VTEP MAC");
    assert_eq!(ieth.source(), VTEP_A.0, "inner source = our VTEP MAC");
    let Some(NetSlice::Ipv4(iip)) = &inner.net else { panic!() };
    assert_eq!(iip.header().ttl(), 63, "forwarded once by this node");
    assert_eq!(iip.header().header_checksum(), iip.header().to_header().calc_header_checksum());
    let Some(TransportSlice::Udp(iudp)) = &inner.transport else { panic!() };
    assert_eq!((iudp.source_port(), iudp.destination_port()), (5000, 53));
    assert_eq!(iudp.payload(), b"hello");
    assert_eq!(p.counters().encap, 1);
    assert_eq!(p.counters().encap_bytes, out.len() as u64, "bytes as they leave: encapsulated");
    assert_eq!(p.counters().rx_bytes, frame.len() as u64);
}

#[test]
fn encap_source_port_is_per_flow() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let sport_of = |p: &mut Pipeline, sport: u16| {
        let (_, out) =
            run(p, &snap, from_a1(&snap), &udp4("10.244.1.2", "10.244.2.5", sport, 53, 64, b"x"));
        u16::from_be_bytes([out[34], out[35]])
    };
    assert_eq!(sport_of(&mut p, 1000), sport_of(&mut p, 1000));
    let distinct: std::collections::HashSet<u16> =
        (0..64).map(|i| sport_of(&mut p, 2000 + i)).collect();
    assert!(distinct.len() > 55, "{} ports for 64 flows", distinct.len());
}

#[test]
fn encap_optional_ipv4_udp_checksum_is_valid() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(EngineConfig { outer_udp_checksum_v4: true, ..config_for("node-a") });
    let (_, out) =
        run(&mut p, &snap, from_a1(&snap), &udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, b"abc"));
    let (outer, _) = outer_and_inner(&out);
    let (Some(NetSlice::Ipv4(ipv4)), Some(TransportSlice::Udp(udp))) =
        (&outer.net, &outer.transport)
    else {
        panic!()
    };
    let expected =
        udp.to_header().calc_checksum_ipv4(&ipv4.header().to_header(), udp.payload()).unwrap();
    assert_ne!(udp.checksum(), 0);
    assert_eq!(udp.checksum(), expected);
}

#[test]
fn encap_ipv6_underlay_has_udp_checksum() {
    let snap = snapshot(&spec_for("node-a", true));
    let mut p = Pipeline::new(config_for("node-a"));
    let frame = tcp4("10.244.1.2", "10.244.2.5", 40000, 80);
    let (verdict, out) = run(&mut p, &snap, from_a1(&snap), &frame);
    assert_eq!(verdict, Verdict::Encap);
    assert_eq!(out.len(), frame.len() + ENCAP_OVERHEAD_V6);
    let (outer, inner) = outer_and_inner(&out);
    let (Some(NetSlice::Ipv6(ipv6)), Some(TransportSlice::Udp(udp))) =
        (&outer.net, &outer.transport)
    else {
        panic!("outer IPv6/UDP")
    };
    assert_eq!(ipv6.header().hop_limit(), 64);
    assert_eq!(ipv6.header().source_addr(), ip6("fd00:50::1"));
    let expected =
        udp.to_header().calc_checksum_ipv6(&ipv6.header().to_header(), udp.payload()).unwrap();
    assert_eq!(udp.checksum(), expected);
    assert_eq!(&inner[..6], &VTEP_B.0);
}

#[test]
fn encap_trims_ethernet_padding() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let mut frame = udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, b"");
    let unpadded = frame.len();
    frame.resize(60, 0xee);
    let (_, out) = run(&mut p, &snap, from_a1(&snap), &frame);
    assert_eq!(out.len(), unpadded + ENCAP_OVERHEAD_V4);
}

#[test]
fn round_trip_node_a_to_node_b_decap() {
    // node-a encapsulates; node-b's pipeline decapsulates and delivers to b1.
    let snap_a = snapshot(&spec_for("node-a", false));
    let snap_b = snapshot(&spec_for("node-b", false));
    let mut pa = Pipeline::new(config_for("node-a"));
    let mut pb = Pipeline::new(config_for("node-b"));
    let original = tcp4("10.244.1.2", "10.244.2.5", 40000, 80);
    let (v, wire) = run(&mut pa, &snap_a, from_a1(&snap_a), &original);
    assert_eq!(v, Verdict::Encap);
    let (v, delivered) = run(&mut pb, &snap_b, Ingress::Uplink, &wire);
    let b1 = snap_b.endpoint_by_interface("veth-b1").unwrap();
    assert_eq!(v, Verdict::Decap(b1));
    assert_eq!(delivered.len(), original.len());
    let pkt = SlicedPacket::from_ethernet(&delivered).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &pkt.link else { panic!() };
    assert_eq!(eth.destination(), [0x0a, 0x58, 0, 0, 2, 5], "pod MAC");
    assert_eq!(eth.source(), EngineConfig::default().gateway_mac.0, "gateway MAC");
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else { panic!() };
    assert_eq!(ip.header().ttl(), 62, "one hop on each node, as with kernel VXLAN");
    assert_eq!(ip.header().header_checksum(), ip.header().to_header().calc_header_checksum());
    assert_eq!(&delivered[34..], &original[34..], "L4 untouched");
}

/// A VXLAN frame from node-b to node-a built entirely with etherparse plus a hand-written
/// VXLAN header, so decap is tested against an independent encoder.
fn vxlan_from_b(flags: [u8; 4], vni: u32, dport: u16, outer_src: [u8; 4], inner: &[u8]) -> Vec<u8> {
    let mut payload = flags.to_vec();
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let b = PacketBuilder::ethernet2(NEXT_HOP_B.0, UPLINK_A.0)
        .ipv4(outer_src, [192, 168, 50, 1], 64)
        .udp(45000, dport);
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

fn inner_to_a2(src_mac: MacAddr, dst_mac: MacAddr, ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4([10, 244, 2, 5], [10, 244, 1, 3], ttl)
        .udp(7, 7);
    let mut out = Vec::new();
    b.write(&mut out, b"payload").unwrap();
    out
}

#[test]
fn decap_validates_like_linux_and_calico() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let good_inner = inner_to_a2(VTEP_B, VTEP_A, 64);
    let a2 = snap.endpoint_by_interface("veth-a2").unwrap();
    let ok = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &good_inner);
    let (v, out) = run(&mut p, &snap, Ingress::Uplink, &ok);
    assert_eq!(v, Verdict::Decap(a2));
    assert_eq!(&out[..6], &POD_A2_MAC.0);

    let cases: Vec<(Vec<u8>, Verdict)> = vec![
        (
            vxlan_from_b([8, 0, 0, 0], 2, 8472, [192, 168, 50, 2], &good_inner),
            Verdict::Drop(DropReason::VniMismatch),
        ),
        (
            vxlan_from_b([0x88, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &good_inner),
            Verdict::Drop(DropReason::VxlanBadFlags),
        ),
        (
            vxlan_from_b([8, 0, 1, 0], 1, 8472, [192, 168, 50, 2], &good_inner),
            Verdict::Drop(DropReason::VxlanBadFlags),
        ),
        (
            vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 99], &good_inner),
            Verdict::Drop(DropReason::UnknownVtep),
        ),
        (
            vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 1], &good_inner),
            Verdict::Drop(DropReason::UnknownVtep),
        ),
        (
            vxlan_from_b([8, 0, 0, 0], 1, 4789, [192, 168, 50, 2], &good_inner),
            Verdict::Drop(DropReason::NotVxlanForNode),
        ),
        (
            vxlan_from_b(
                [8, 0, 0, 0],
                1,
                8472,
                [192, 168, 50, 2],
                &inner_to_a2(VTEP_B, VTEP_B, 64),
            ),
            Verdict::Drop(DropReason::InnerDstMacNotVtep),
        ),
        (
            vxlan_from_b(
                [8, 0, 0, 0],
                1,
                8472,
                [192, 168, 50, 2],
                &inner_to_a2(VTEP_A, VTEP_A, 64),
            ),
            Verdict::Drop(DropReason::InnerSrcIsOwnVtep),
        ),
        (
            vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner_to_a2(VTEP_B, VTEP_A, 1)),
            Verdict::Drop(DropReason::TtlExpired),
        ),
        (
            vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &good_inner[..20]),
            Verdict::Drop(DropReason::InnerMalformed),
        ),
        (
            {
                let b = PacketBuilder::ethernet2(NEXT_HOP_B.0, UPLINK_A.0)
                    .ipv4([192, 168, 50, 2], [192, 168, 50, 1], 64)
                    .udp(1, 8472);
                let mut out = Vec::new();
                b.write(&mut out, &[8, 0, 0]).unwrap();
                out
            },
            Verdict::Drop(DropReason::VxlanBadFlags),
        ),
    ];
    for (i, (frame, expected)) in cases.into_iter().enumerate() {
        assert_eq!(run(&mut p, &snap, Ingress::Uplink, &frame).0, expected, "case {i}");
    }

    // Inner VLAN tag.
    let mut tagged = inner_to_a2(VTEP_B, VTEP_A, 64);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    let frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &tagged);
    assert_eq!(run(&mut p, &snap, Ingress::Uplink, &frame).0, Verdict::Drop(DropReason::InnerVlan));

    // Corrupt outer IPv4 checksum.
    let mut bad = ok.clone();
    bad[24] ^= 0xff;
    assert_eq!(
        run(&mut p, &snap, Ingress::Uplink, &bad).0,
        Verdict::Drop(DropReason::OuterChecksum)
    );

    // A flipped bit anywhere under a non-zero outer UDP checksum (here in the inner payload,
    // which has no checksum of its own for the VNI or inner MACs) is caught, as Linux does.
    assert_ne!(u16::from_be_bytes([ok[40], ok[41]]), 0, "etherparse computes the UDP checksum");
    let mut flipped = ok.clone();
    *flipped.last_mut().unwrap() ^= 0x01;
    assert_eq!(
        run(&mut p, &snap, Ingress::Uplink, &flipped).0,
        Verdict::Drop(DropReason::OuterChecksum)
    );
    // Zero means "no checksum" over IPv4 and is accepted.
    let mut zero = flipped.clone();
    zero[40..42].copy_from_slice(&[0, 0]);
    assert_eq!(run(&mut p, &snap, Ingress::Uplink, &zero).0, Verdict::Decap(a2));
}

#[test]
fn fragments_of_one_datagram_share_the_outer_source_port() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let outer_sport = |out: &[u8]| u16::from_be_bytes([out[34], out[35]]);
    let refragment = |frame: &mut Vec<u8>, flags_offset: u16| {
        frame[20..22].copy_from_slice(&flags_offset.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = !crate::wire::checksum::sum(0, &frame[14..34]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
    };
    let whole = udp4("10.244.1.2", "10.244.2.5", 4000, 53, 64, &[1u8; 32]);
    let mut first = whole.clone();
    refragment(&mut first, 0x2000); // MF, offset 0
    let mut later = whole.clone();
    refragment(&mut later, 0x0005); // offset 40 bytes, last fragment
    let (v1, o1) = run(&mut p, &snap, from_a1(&snap), &first);
    let (v2, o2) = run(&mut p, &snap, from_a1(&snap), &later);
    assert_eq!((v1, v2), (Verdict::Encap, Verdict::Encap));
    assert_eq!(outer_sport(&o1), outer_sport(&o2));
    let (_, o3) = run(&mut p, &snap, from_a1(&snap), &whole);
    let expected = source_port(flow_hash(0x0af4_0102, 0x0af4_0205, 17, 4000, 53), 32768, 60999);
    assert_eq!(outer_sport(&o3), expected, "unfragmented datagrams hash their ports");
}

/// What the XDP program leaves to the kernel (SSH, ARP, VXLAN for another address) is a
/// mismatch if it reaches the pipeline: dropped and counted, never "host".
#[test]
fn uplink_traffic_that_is_not_vxlan_for_the_node() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let ssh = PacketBuilder::ethernet2(NEXT_HOP_B.0, UPLINK_A.0)
        .ipv4([192, 168, 50, 2], [192, 168, 50, 1], 64)
        .tcp(50000, 22, 1, 100);
    let mut frame = Vec::new();
    ssh.write(&mut frame, b"").unwrap();
    let mismatch = Verdict::Drop(DropReason::NotVxlanForNode);
    assert_eq!(run(&mut p, &snap, Ingress::Uplink, &frame).0, mismatch);
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(run(&mut p, &snap, Ingress::Uplink, &arp).0, mismatch);
    let other =
        vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner_to_a2(VTEP_B, VTEP_A, 64));
    let mut other = other;
    other[33] = 77; // outer destination 192.168.50.77 (checksum not revisited: not ours anyway)
    assert_eq!(run(&mut p, &snap, Ingress::Uplink, &other).0, mismatch);
    assert_eq!(p.counters().host, 0);
}

#[test]
fn local_pod_to_pod() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let a2 = snap.endpoint_by_interface("veth-a2").unwrap();
    let (v, out) = run(&mut p, &snap, from_a1(&snap), &tcp4("10.244.1.2", "10.244.1.3", 40000, 80));
    assert_eq!(v, Verdict::Local(a2));
    let pkt = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &pkt.link else { panic!() };
    assert_eq!(eth.destination(), POD_A2_MAC.0);
    assert_eq!(eth.source(), EngineConfig::default().gateway_mac.0);
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else { panic!() };
    assert_eq!(ip.header().ttl(), 63);
    assert_eq!(ip.header().header_checksum(), ip.header().to_header().calc_header_checksum());
}

#[test]
fn ipv6_pod_traffic_encapsulates() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let gw = EngineConfig::default().gateway_mac;
    let b = PacketBuilder::ethernet2(POD_A1_MAC.0, gw.0)
        .ipv6(ip6("fd00:10:244:1::2").octets(), ip6("fd00:10:244:2::9").octets(), 64)
        .udp(1234, 53);
    let mut frame = Vec::new();
    b.write(&mut frame, b"q").unwrap();
    let (v, out) = run(&mut p, &snap, from_a1(&snap), &frame);
    assert_eq!(v, Verdict::Encap);
    let (_, inner) = outer_and_inner(&out);
    let inner = SlicedPacket::from_ethernet(inner).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &inner.net else { panic!() };
    assert_eq!(ip.header().hop_limit(), 63);
}

#[test]
fn arp_for_gateway_is_answered() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let cfg = EngineConfig::default();
    let mut req = vec![0xff; 6];
    req.extend_from_slice(&POD_A1_MAC.0);
    req.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    req.extend_from_slice(&POD_A1_MAC.0);
    req.extend_from_slice(&[10, 244, 1, 2, 0, 0, 0, 0, 0, 0, 169, 254, 1, 1]);
    req.resize(60, 0); // padded to the Ethernet minimum
    let (v, out) = run(&mut p, &snap, from_a1(&snap), &req);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(out.len(), 42);
    assert_eq!(&out[0..6], &POD_A1_MAC.0);
    assert_eq!(&out[6..12], &cfg.gateway_mac.0);
    let arp = crate::wire::ArpPacket::new_checked(&out[14..]).unwrap();
    assert_eq!(arp.operation(), crate::wire::ArpOperation::Reply);
    assert_eq!(arp.sender_hardware_addr(), cfg.gateway_mac);
    assert_eq!(arp.sender_protocol_addr(), cfg.gateway_v4);
    assert_eq!(arp.target_hardware_addr(), POD_A1_MAC);
    assert_eq!(arp.target_protocol_addr(), ip4("10.244.1.2"));

    let mut other = req.clone();
    other[41] = 2; // who has 169.254.1.2
    assert_eq!(
        run(&mut p, &snap, from_a1(&snap), &other).0,
        Verdict::Drop(DropReason::ArpNotForGateway)
    );
    assert_eq!(
        run(&mut p, &snap, from_a1(&snap), &req[..30]).0,
        Verdict::Drop(DropReason::MalformedArp)
    );
}

fn neighbour_solicitation(src: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    let target = EngineConfig::default().gateway_v6;
    let dst = ip6("ff02::1:ff00:1");
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    if !src.is_unspecified() {
        icmp.extend_from_slice(&[1, 1]);
        icmp.extend_from_slice(&POD_A1_MAC.0);
    }
    let pseudo = crate::wire::checksum::pseudo_header_v6(src, dst, 58, icmp.len() as u32);
    let sum = crate::wire::checksum::transport_checksum(pseudo, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = MacAddr::ipv6_multicast(dst).0.to_vec();
    frame.extend_from_slice(&POD_A1_MAC.0);
    frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, hop_limit]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&icmp);
    frame
}

#[test]
fn neighbour_solicitation_for_gateway_is_answered() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let cfg = EngineConfig::default();
    let (v, out) =
        run(&mut p, &snap, from_a1(&snap), &neighbour_solicitation(ip6("fe80::a1"), 255));
    assert_eq!(v, Verdict::Reply);
    let pkt = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &pkt.link else { panic!() };
    assert_eq!(eth.destination(), POD_A1_MAC.0);
    assert_eq!(eth.source(), cfg.gateway_mac.0);
    let Some(NetSlice::Ipv6(ip)) = &pkt.net else { panic!() };
    assert_eq!(ip.header().source_addr(), cfg.gateway_v6);
    assert_eq!(ip.header().destination_addr(), ip6("fe80::a1"));
    assert_eq!(ip.header().hop_limit(), 255);
    let Some(TransportSlice::Icmpv6(icmp)) = &pkt.transport else { panic!("ICMPv6") };
    assert_eq!(icmp.type_u8(), 136);
    let expected = icmp
        .header()
        .icmp_type
        .calc_checksum(ip.header().source(), ip.header().destination(), icmp.payload())
        .unwrap();
    assert_eq!(icmp.checksum(), expected, "ICMPv6 checksum");
    let na = crate::wire::Icmpv6Packet::new_checked(&out[54..]).unwrap();
    assert_eq!(na.nd_target(), Some(cfg.gateway_v6));
    assert_eq!(na.nd_link_addr_option(2), Some(cfg.gateway_mac));
    assert_eq!(out[58], 0xe0, "router, solicited, override");

    // Duplicate address detection gets an unsolicited answer to all nodes.
    let (v, out) =
        run(&mut p, &snap, from_a1(&snap), &neighbour_solicitation(Ipv6Addr::UNSPECIFIED, 255));
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&out[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(out[58], 0xa0);

    let (v, _) = run(&mut p, &snap, from_a1(&snap), &neighbour_solicitation(ip6("fe80::a1"), 64));
    assert_eq!(v, Verdict::Drop(DropReason::MalformedNeighbourDiscovery), "hop limit must be 255");
}

#[test]
fn pod_checks() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let a1 = from_a1(&snap);
    let spoofed = udp4("10.244.1.3", "10.244.2.5", 1, 2, 64, b"");
    assert_eq!(run(&mut p, &snap, a1, &spoofed).0, Verdict::Drop(DropReason::PodSourceSpoofed));
    let expired = udp4("10.244.1.2", "10.244.2.5", 1, 2, 1, b"");
    assert_eq!(run(&mut p, &snap, a1, &expired).0, Verdict::Reply, "ICMP time exceeded");
    let mcast = udp4("10.244.1.2", "224.0.0.251", 5353, 5353, 1, b"");
    assert_eq!(run(&mut p, &snap, a1, &mcast).0, Verdict::Drop(DropReason::MulticastDestination));
    let mut wrong_mac = udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, b"");
    wrong_mac[0] = 0x02;
    assert_eq!(run(&mut p, &snap, a1, &wrong_mac).0, Verdict::Drop(DropReason::DstMacNotGateway));
    let mut bad_sum = udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, b"");
    bad_sum[24] ^= 1;
    assert_eq!(run(&mut p, &snap, a1, &bad_sum).0, Verdict::Drop(DropReason::Ipv4Checksum));
    let mut tagged = udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, b"");
    tagged[12..14].copy_from_slice(&[0x81, 0]);
    assert_eq!(run(&mut p, &snap, a1, &tagged).0, Verdict::Drop(DropReason::VlanTagged));
    assert_eq!(run(&mut p, &snap, a1, &[0u8; 10]).0, Verdict::Drop(DropReason::Truncated));
    let gone = Ingress::Pod(crate::table::EndpointId(99));
    assert_eq!(run(&mut p, &snap, gone, &spoofed).0, Verdict::Drop(DropReason::UnknownIngress));
    // Outside the cluster, and the node itself: the host's.
    assert_eq!(
        run(&mut p, &snap, a1, &udp4("10.244.1.2", "8.8.8.8", 1, 53, 64, b"")).0,
        Verdict::Host
    );
    assert_eq!(
        run(&mut p, &snap, a1, &udp4("10.244.1.2", "192.168.50.1", 1, 53, 64, b"")).0,
        Verdict::Host
    );
    assert_eq!(
        run(&mut p, &snap, a1, &udp4("10.244.1.2", "10.244.1.0", 1, 53, 64, b"")).0,
        Verdict::Host
    );
    // An address of the node's pod CIDR that is neither a pod nor the node's.
    assert_eq!(
        run(&mut p, &snap, a1, &udp4("10.244.1.2", "10.244.1.77", 1, 53, 64, b"")).0,
        Verdict::Drop(DropReason::NoSuchPod)
    );
    assert_eq!(p.counters().host, 3);
    // Without a host interface, what is the host's is a counted drop instead.
    let mut p = Pipeline::new(EngineConfig { host_interface: false, ..config_for("node-a") });
    assert_eq!(
        run(&mut p, &snap, a1, &udp4("10.244.1.2", "8.8.8.8", 1, 53, 64, b"")).0,
        Verdict::Drop(DropReason::NoHostInterface)
    );
}

#[test]
fn encap_limits() {
    let mut spec = spec_for("node-a", false);
    let snap = snapshot(&spec);
    let mut p = Pipeline::new(config_for("node-a"));
    // Too big for the overlay: DF set gets "fragmentation needed", DF clear goes to the host
    // interface (the kernel fragments it there).
    let mut big = udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, &[0u8; 1451 - 28]);
    set_dont_fragment(&mut big, false);
    assert_eq!(run(&mut p, &snap, from_a1(&snap), &big).0, Verdict::Host);
    set_dont_fragment(&mut big, true);
    assert_eq!(run(&mut p, &snap, from_a1(&snap), &big).0, Verdict::Reply);
    let fits = udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, &[0u8; 1450 - 28]);
    assert_eq!(run(&mut p, &snap, from_a1(&snap), &fits).0, Verdict::Encap);
    // No headroom in the buffer.
    let frame = udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, b"");
    let mut buffer = frame.clone();
    let mut span = Span::new(0, frame.len());
    let mut frames = [Frame::new(&mut buffer, &mut span)];
    let mut verdicts = [Verdict::Host];
    p.process_batch(&snap, from_a1(&snap), &mut frames, &mut verdicts);
    assert_eq!(verdicts[0], Verdict::Drop(DropReason::NoBufferRoom));
    // Next hop not resolved yet.
    spec.nodes[1].next_hop_mac = None;
    let snap = snapshot(&spec);
    assert_eq!(
        run(&mut p, &snap, from_a1(&snap), &frame).0,
        Verdict::Drop(DropReason::NextHopUnresolved)
    );
}

#[test]
fn policy_at_egress_and_ingress() {
    let mut spec = spec_for("node-a", false);
    spec.policies = vec![
        PolicySpec {
            name: "web-only".into(),
            rules: vec![RuleSpec {
                peers: vec![PeerSpec { cidr: "10.244.0.0/16".parse().unwrap(), except: vec![] }],
                ports: vec![PortSpec {
                    protocol: PortProtocol::Tcp,
                    port: Some(80),
                    end_port: None,
                }],
            }],
        },
        PolicySpec { name: "deny-all".into(), rules: vec![] },
    ];
    spec.endpoints[0].egress_policy = Some("web-only".into());
    spec.endpoints[1].ingress_policy = Some("deny-all".into());
    let snap = snapshot(&spec);
    let mut p = Pipeline::new(config_for("node-a"));
    let a1 = from_a1(&snap);
    assert_eq!(
        run(&mut p, &snap, a1, &tcp4("10.244.1.2", "10.244.2.5", 4000, 80)).0,
        Verdict::Encap
    );
    assert_eq!(
        run(&mut p, &snap, a1, &tcp4("10.244.1.2", "10.244.2.5", 4000, 81)).0,
        Verdict::Drop(DropReason::PolicyDeniedEgress)
    );
    assert_eq!(
        run(&mut p, &snap, a1, &udp4("10.244.1.2", "8.8.8.8", 1, 53, 64, b"")).0,
        Verdict::Drop(DropReason::PolicyDeniedEgress),
        "egress policy covers traffic leaving the cluster"
    );
    assert_eq!(
        run(&mut p, &snap, a1, &udp4("10.244.1.2", "192.168.50.1", 1, 53, 64, b"")).0,
        Verdict::Host,
        "a pod may always reach its own node"
    );
    assert_eq!(
        run(&mut p, &snap, a1, &udp4("10.244.1.2", "169.254.1.1", 1, 53, 64, b"")).0,
        Verdict::Host,
        "... and its gateway"
    );
    assert_eq!(
        run(&mut p, &snap, a1, &tcp4("10.244.1.2", "10.244.1.3", 4000, 80)).0,
        Verdict::Drop(DropReason::PolicyDeniedIngress)
    );
    let frame =
        vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner_to_a2(VTEP_B, VTEP_A, 64));
    assert_eq!(
        run(&mut p, &snap, Ingress::Uplink, &frame).0,
        Verdict::Drop(DropReason::PolicyDeniedIngress)
    );
    assert_eq!(p.counters().dropped(DropReason::PolicyDeniedIngress), 2);
}

#[test]
fn drop_reason_labels_are_unique() {
    let labels: std::collections::HashSet<&str> =
        DropReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), DropReason::COUNT);
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "counter index of {r:?}");
    }
}

/// Well-formed frames with random addresses, ports, protocols and TTLs, as a pod or a remote
/// node would send them.
fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            "10.244.1.2",
            "10.244.1.3",
            "10.244.2.5",
            "10.9.9.9",
            "192.168.50.2",
        ]),
        prop::sample::select(vec![
            "10.244.1.2",
            "10.244.1.3",
            "10.244.2.5",
            "10.244.1.0",
            "8.8.8.8",
            "192.168.50.1",
            "255.255.255.255",
        ]),
        0u8..4,
        any::<u16>(),
        any::<u16>(),
        0u8..=255,
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(src, dst, kind, sport, dport, ttl, payload)| {
            let gw = EngineConfig::default().gateway_mac;
            let base = PacketBuilder::ethernet2(POD_A1_MAC.0, gw.0).ipv4(
                ip4(src).octets(),
                ip4(dst).octets(),
                ttl,
            );
            let mut out = Vec::new();
            match kind {
                0 => base.udp(sport, dport).write(&mut out, &payload).unwrap(),
                1 => base.tcp(sport, dport, 7, 1000).write(&mut out, &payload).unwrap(),
                2 => base.icmpv4_echo_request(sport, dport).write(&mut out, &payload).unwrap(),
                _ => {
                    // The same inner frame wrapped as VXLAN from node-b.
                    let inner = inner_to_a2(VTEP_B, VTEP_A, ttl);
                    out = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner);
                }
            }
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_get_exactly_one_verdict(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..32),
        port in 0..3u8,
    ) {
        let snap = snapshot(&spec_for("node-a", false));
        let mut p = Pipeline::new(config_for("node-a"));
        let ingress = match port {
            0 => Ingress::Uplink,
            1 => Ingress::Host,
            _ => from_a1(&snap),
        };
        let mut buffers: Vec<Vec<u8>> = frames.iter().map(|f| {
            let mut b = vec![0u8; HEADROOM + f.len() + 64];
            b[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
            b
        }).collect();
        let mut spans: Vec<Span> = frames.iter().map(|f| Span::new(HEADROOM, f.len())).collect();
        let mut batch: Vec<Frame<'_>> = buffers.iter_mut().zip(spans.iter_mut()).map(|(b, span)| Frame::new(b, span)).collect();
        let mut verdicts = vec![Verdict::Host; batch.len()];
        p.process_batch(&snap, ingress, &mut batch, &mut verdicts);
        let c = p.counters();
        prop_assert_eq!(c.rx_frames, frames.len() as u64);
        prop_assert_eq!(c.encap + c.decap + c.local + c.reply + c.host + c.total_drops(), frames.len() as u64);
    }

    #[test]
    fn well_formed_frames_round_trip(frame in arb_frame(), from_uplink in any::<bool>()) {
        let snap_a = snapshot(&spec_for("node-a", false));
        let snap_b = snapshot(&spec_for("node-b", false));
        let mut pa = Pipeline::new(config_for("node-a"));
        let mut pb = Pipeline::new(config_for("node-b"));
        let ingress = if from_uplink { Ingress::Uplink } else { from_a1(&snap_a) };
        let (verdict, out) = run(&mut pa, &snap_a, ingress, &frame);
        prop_assert_eq!(pa.counters().rx_frames, 1);
        match verdict {
            Verdict::Encap => {
                // Whatever node-a encapsulates, etherparse decodes and node-b accepts.
                let (outer, _) = outer_and_inner(&out);
                prop_assert!(outer.net.is_some());
                let (v, _) = run(&mut pb, &snap_b, Ingress::Uplink, &out);
                prop_assert!(matches!(v, Verdict::Decap(_) | Verdict::Host | Verdict::Drop(DropReason::TtlExpired)), "{:?}", v);
            }
            Verdict::Decap(_) | Verdict::Local(_) => {
                let pkt = SlicedPacket::from_ethernet(&out);
                prop_assert!(pkt.is_ok());
            }
            _ => {}
        }
    }
}

/// Workers forward on whatever snapshot is current while the control side publishes: readers
/// never block or see a half-built table, generations only grow, a rejected update changes
/// nothing, and every frame gets its verdict throughout.
#[test]
fn forwarding_continues_while_tables_are_replaced() {
    use crate::table::SnapshotCell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let base = spec_for("node-a", false);
    let cell = Arc::new(SnapshotCell::new(Snapshot::build(&base, 1).unwrap()));
    let stop = Arc::new(AtomicBool::new(false));
    let frame = udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, b"x");
    let workers: Vec<_> = (0..2)
        .map(|worker| {
            let (cell, stop, frame) = (cell.clone(), stop.clone(), frame.clone());
            std::thread::spawn(move || {
                let mut p = Pipeline::for_worker(config_for("node-a"), worker);
                let (mut last, mut generations, mut batches) = (0, 0u32, 0u64);
                while !stop.load(Ordering::Relaxed) || batches < 100 {
                    let snap = cell.load(); // once per batch, as a worker does
                    assert!(snap.generation() >= last, "generations only grow");
                    if snap.generation() > last {
                        generations += 1;
                        last = snap.generation();
                    }
                    let a1 = from_a1(&snap);
                    let mut buffers: Vec<Vec<u8>> = (0..16)
                        .map(|_| {
                            let mut b = vec![0u8; HEADROOM + frame.len()];
                            b[HEADROOM..].copy_from_slice(&frame);
                            b
                        })
                        .collect();
                    let mut spans = vec![Span::new(HEADROOM, frame.len()); buffers.len()];
                    let mut frames: Vec<Frame<'_>> = buffers
                        .iter_mut()
                        .zip(spans.iter_mut())
                        .map(|(b, span)| Frame::new(b, span))
                        .collect();
                    let mut verdicts = [Verdict::Host; 16];
                    p.process_batch(&snap, a1, &mut frames, &mut verdicts);
                    // Node-b is in every table the writer publishes: always encapsulated.
                    assert!(verdicts.iter().all(|v| *v == Verdict::Encap), "{verdicts:?}");
                    batches += 1;
                }
                (generations, p.counters().encap)
            })
        })
        .collect();

    let mut bad = base.clone();
    bad.nodes[1].vtep_mac = None;
    for i in 0..300u32 {
        let mut next = base.clone();
        // Alternate the local pods and node-b's next hop, and try a broken table now and then.
        if i % 2 == 0 {
            next.endpoints.truncate(1);
        }
        next.nodes[1].next_hop_mac = Some(MacAddr([0x02, 0xbb, 0, 0, (i >> 8) as u8, i as u8]));
        let before = cell.load().generation();
        cell.update(&next).unwrap();
        if i % 10 == 0 {
            assert!(cell.update(&bad).is_err());
            assert_eq!(cell.load().generation(), before + 1, "a rejected update publishes nothing");
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(cell.load().generation(), 301);
    for worker in workers {
        let (generations, encapsulated) = worker.join().expect("worker never panics");
        assert!(generations >= 1 && encapsulated >= 100 * 16);
    }
}

const ETH: usize = 14;

/// What a kernel behind a veth hands over with TX checksum offload (CHECKSUM_PARTIAL): the
/// transport checksum field holds the folded pseudo-header sum.
fn make_partial(ip_packet: &mut [u8]) {
    use crate::wire::checksum::{fold, pseudo_header_v4};
    let ihl = usize::from(ip_packet[0] & 0x0f) * 4;
    let (src, dst) = (
        Ipv4Addr::new(ip_packet[12], ip_packet[13], ip_packet[14], ip_packet[15]),
        Ipv4Addr::new(ip_packet[16], ip_packet[17], ip_packet[18], ip_packet[19]),
    );
    let protocol = ip_packet[9];
    let len = (ip_packet.len() - ihl) as u16;
    let at = ihl + if protocol == 6 { 16 } else { 6 };
    let partial = fold(u64::from(pseudo_header_v4(src, dst, protocol, len)));
    ip_packet[at..at + 2].copy_from_slice(&partial.to_be_bytes());
}

/// A TCP segment from pod b5 (node-b, a kernel VTEP) to a2, as decapsulated.
fn tcp_from_kernel_pod_b5() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(VTEP_B.0, VTEP_A.0)
        .ipv4([10, 244, 2, 5], [10, 244, 1, 3], 64)
        .tcp(5000, 80, 7, 1000);
    let mut out = Vec::new();
    b.write(&mut out, b"segment from a kernel pod").unwrap();
    out
}

fn tcp_checksum_verifies(frame: &[u8]) -> bool {
    let pkt = SlicedPacket::from_ethernet(frame).unwrap();
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (&pkt.net, &pkt.transport)
    else {
        panic!("not TCP over IPv4")
    };
    let h = ip.header();
    tcp.to_header().calc_checksum_ipv4_raw(h.source(), h.destination(), tcp.payload()).unwrap()
        == tcp.checksum()
}

#[test]
fn checksums_left_for_offload_are_finished() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let a2 = snap.endpoint_by_interface("veth-a2").unwrap();

    // From a pod: completed before the frame leaves, locally or encapsulated.
    let mut frame = tcp4("10.244.1.2", "10.244.1.3", 40000, 80);
    make_partial(&mut frame[ETH..]);
    assert!(!tcp_checksum_verifies(&frame));
    let (v, out) = run(&mut p, &snap, from_a1(&snap), &frame);
    assert_eq!(v, Verdict::Local(a2));
    assert!(tcp_checksum_verifies(&out));
    let mut frame = tcp4("10.244.1.2", "10.244.2.9", 40000, 80);
    make_partial(&mut frame[ETH..]);
    let (v, out) = run(&mut p, &snap, from_a1(&snap), &frame);
    assert_eq!(v, Verdict::Encap);
    assert!(tcp_checksum_verifies(outer_and_inner(&out).1));

    // From a kernel VTEP on a veth: the inner checksum is partial and the outer UDP checksum
    // was computed by local checksum offload for the finished inner one.
    let inner = tcp_from_kernel_pod_b5();
    let mut frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner);
    let inner_ip = ETH + 20 + 8 + 8 + ETH;
    make_partial(&mut frame[inner_ip..]);
    let (v, out) = run(&mut p, &snap, Ingress::Uplink, &frame);
    assert_eq!(v, Verdict::Decap(a2));
    assert!(tcp_checksum_verifies(&out));

    // The outer UDP checksum itself left partial is accepted; a wrong one is not.
    let mut frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner);
    make_partial(&mut frame[ETH..]);
    assert_eq!(run(&mut p, &snap, Ingress::Uplink, &frame).0, Verdict::Decap(a2));
    frame[40] ^= 0x55;
    assert_eq!(
        run(&mut p, &snap, Ingress::Uplink, &frame).0,
        Verdict::Drop(DropReason::OuterChecksum)
    );
}

/// Node A's tables with pod a2 behind a TAP (a1 stays behind a veth).
fn spec_with_tap_a2() -> TableSpec {
    let mut spec = spec_for("node-a", false);
    spec.endpoints[1].edge = crate::table::PodEdge::Tap { netns: "/run/netns/a2".into() };
    spec
}

#[test]
fn checksums_left_for_offload_stay_partial_for_a_tap_pod() {
    // a2 behind a TAP: what it receives goes out with a virtio-net header that flags the
    // checksum, so the engine leaves it as it came (the kernel's veth passes it so too).
    let snap = snapshot(&spec_with_tap_a2());
    let mut p = Pipeline::new(config_for("node-a"));
    let a2 = snap.endpoint_by_interface("veth-a2").unwrap();

    let mut frame = tcp4("10.244.1.2", "10.244.1.3", 40000, 80);
    make_partial(&mut frame[ETH..]);
    let (v, out) = run(&mut p, &snap, from_a1(&snap), &frame);
    assert_eq!(v, Verdict::Local(a2));
    assert!(offload::partial_checksum(&out[ETH..]).is_some());
    assert!(!tcp_checksum_verifies(&out));

    let inner = tcp_from_kernel_pod_b5();
    // As Flannel's kernel VTEP sends it: no outer UDP checksum (one computed for the finished
    // inner packet makes the engine finish it first, to check the outer one).
    let mut frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner);
    make_partial(&mut frame[ETH + 20 + 8 + 8 + ETH..]);
    frame[ETH + 20 + 6..ETH + 20 + 8].fill(0);
    let (v, out) = run(&mut p, &snap, Ingress::Uplink, &frame);
    assert_eq!(v, Verdict::Decap(a2));
    let partial = offload::partial_checksum(&out[ETH..]).expect("left partial");
    assert_eq!((partial.start, partial.offset), (20, 16));
    // Finished, it is the segment the kernel pod sent.
    let mut finished = out.clone();
    assert!(offload::finish_partial_checksum(&mut finished[ETH..]));
    assert!(tcp_checksum_verifies(&finished));

    // A veth pod of the same node still gets it finished.
    let mut frame = tcp4("10.244.1.3", "10.244.1.2", 80, 40000);
    frame[6..12].copy_from_slice(&POD_A2_MAC.0);
    make_partial(&mut frame[ETH..]);
    let a1 = snap.endpoint_by_interface("veth-a1").unwrap();
    let from_a2 = Ingress::Pod(a2);
    let (v, out) = run(&mut p, &snap, from_a2, &frame);
    assert_eq!(v, Verdict::Local(a1));
    assert!(tcp_checksum_verifies(&out));
}

/// Sets or clears DF on the IPv4 packet of an Ethernet frame (etherparse sets it) and
/// refreshes its header checksum.
fn set_dont_fragment(frame: &mut [u8], dont_fragment: bool) {
    frame[14 + 6] = if dont_fragment { frame[14 + 6] | 0x40 } else { frame[14 + 6] & !0x40 };
    let mut ip = crate::wire::Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.fill_checksum();
}

/// A frame as the worker builds it from the host interface: the IP packet behind an Ethernet
/// header whose addresses the engine does not look at.
fn from_host(ip_packet: &[u8], ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(ip_packet);
    frame
}

fn ipv4_packet(src: &str, dst: &str, ttl: u8, tcp_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ipv4(ip4(src).octets(), ip4(dst).octets(), ttl)
        .tcp(40000, tcp_port, 1, 65535);
    let mut out = Vec::new();
    b.write(&mut out, b"probe").unwrap();
    out
}

/// Checks an ICMPv4 error for pod a1: from the gateway, to the pod, quoting `original`.
fn assert_icmpv4_error(out: &[u8], original: &[u8], msg_type: u8, code: u8, rest: [u8; 4]) {
    let cfg = EngineConfig::default();
    let pkt = SlicedPacket::from_ethernet(out).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &pkt.link else { panic!() };
    assert_eq!((eth.destination(), eth.source()), (POD_A1_MAC.0, cfg.gateway_mac.0));
    let Some(NetSlice::Ipv4(ip)) = &pkt.net else { panic!("IPv4") };
    assert_eq!(ip.header().source_addr(), cfg.gateway_v4);
    assert_eq!(ip.header().destination_addr(), ip4("10.244.1.2"));
    assert_eq!(ip.header().header_checksum(), ip.header().to_header().calc_header_checksum());
    let icmp = &out[34..];
    assert_eq!((icmp[0], icmp[1]), (msg_type, code));
    assert_eq!(&icmp[4..8], &rest);
    assert_eq!(crate::wire::checksum::sum(0, icmp), 0xffff, "ICMP checksum");
    let quoted = &icmp[8..];
    assert_eq!(quoted, &original[14..14 + quoted.len()], "the offending datagram, quoted");
    assert!(quoted.len() >= 28, "at least the IP header and 8 bytes");
    assert!(out.len() - 14 <= 576, "at most 576 bytes of error");
}

#[test]
fn expired_packets_get_time_exceeded_from_the_gateway() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let a1 = from_a1(&snap);
    for dst in ["10.244.2.5", "10.244.1.3"] {
        let expired = udp4("10.244.1.2", dst, 33434, 33435, 1, &[7u8; 100]);
        let (v, out) = run(&mut p, &snap, a1, &expired);
        assert_eq!(v, Verdict::Reply, "to {dst}");
        assert_icmpv4_error(&out, &expired, 11, 0, [0; 4]);
    }
    assert_eq!(p.counters().icmp_errors, 2);
    // Not about an ICMP error: that gets nothing back.
    let b = PacketBuilder::ethernet2(POD_A1_MAC.0, EngineConfig::default().gateway_mac.0)
        .ipv4(ip4("10.244.1.2").octets(), ip4("10.244.2.5").octets(), 1)
        .icmpv4(etherparse::Icmpv4Type::TimeExceeded(
            etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
        ));
    let mut error = Vec::new();
    b.write(&mut error, &[0u8; 28]).unwrap();
    assert_eq!(run(&mut p, &snap, a1, &error).0, Verdict::Drop(DropReason::TtlExpired));
    // IPv6: hop limit exceeded, from the gateway's link-local address.
    let b = PacketBuilder::ethernet2(POD_A1_MAC.0, EngineConfig::default().gateway_mac.0)
        .ipv6(ip6("fd00:10:244:1::2").octets(), ip6("fd00:10:244:2::9").octets(), 1)
        .udp(33434, 33435);
    let mut v6 = Vec::new();
    b.write(&mut v6, &[1u8; 40]).unwrap();
    let (v, out) = run(&mut p, &snap, a1, &v6);
    assert_eq!(v, Verdict::Reply);
    let pkt = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &pkt.net else { panic!("IPv6") };
    assert_eq!(ip.header().source_addr(), EngineConfig::default().gateway_v6);
    assert_eq!(ip.header().destination_addr(), ip6("fd00:10:244:1::2"));
    let Some(TransportSlice::Icmpv6(icmp)) = &pkt.transport else { panic!("ICMPv6") };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 0));
    let expected = icmp
        .header()
        .icmp_type
        .calc_checksum(ip.header().source(), ip.header().destination(), icmp.payload())
        .unwrap();
    assert_eq!(icmp.checksum(), expected);
    assert_eq!(icmp.payload(), &v6[14..], "the whole packet fits the quote");
}

#[test]
fn packets_too_big_for_the_overlay_teach_the_pod_its_path_mtu() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let mut big = udp4("10.244.1.2", "10.244.2.5", 1, 2, 64, &[3u8; 1472]);
    set_dont_fragment(&mut big, true);
    let (v, out) = run(&mut p, &snap, from_a1(&snap), &big);
    assert_eq!(v, Verdict::Reply);
    assert_icmpv4_error(&out, &big, 3, 4, [0, 0, 0x05, 0xaa]); // next-hop MTU 1450
    assert_eq!(out.len(), 14 + 576, "cut to 576 bytes");
    // IPv6 over an IPv6 underlay: packet too big with 1430.
    let spec6 = spec_for("node-a", true);
    let snap6 = snapshot(&spec6);
    let b = PacketBuilder::ethernet2(POD_A1_MAC.0, EngineConfig::default().gateway_mac.0)
        .ipv6(ip6("fd00:10:244:1::2").octets(), ip6("fd00:10:244:2::9").octets(), 64)
        .udp(1, 2);
    let mut v6 = Vec::new();
    b.write(&mut v6, &[5u8; 1400]).unwrap();
    let (v, out) =
        run(&mut p, &snap6, Ingress::Pod(snap6.endpoint_by_interface("veth-a1").unwrap()), &v6);
    assert_eq!(v, Verdict::Reply);
    let icmp = &out[14 + 40..];
    assert_eq!((icmp[0], icmp[1]), (2, 0));
    assert_eq!(&icmp[4..8], &1430u32.to_be_bytes());
    assert_eq!(out.len(), 14 + 1280, "cut to the IPv6 minimum MTU");
}

#[test]
fn icmp_errors_are_rate_limited() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    p.set_clock(1_000_000_000);
    let expired = udp4("10.244.1.2", "10.244.2.5", 1, 2, 1, b"");
    let verdicts: Vec<Verdict> =
        (0..80).map(|_| run(&mut p, &snap, from_a1(&snap), &expired).0).collect();
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Reply).count(), 50);
    assert_eq!(p.counters().dropped(DropReason::TtlExpired), 30);
    p.set_clock(1_020_000_000); // 20 ms: 20 more
    let more = (0..80).filter(|_| run(&mut p, &snap, from_a1(&snap), &expired).0 == Verdict::Reply);
    assert_eq!(more.count(), 20);
}

/// The host interface: what the node's kernel routes into the overlay.
#[test]
fn host_packets_reach_pods_and_remote_pods() {
    let mut spec = spec_for("node-a", false);
    spec.policies = vec![PolicySpec { name: "deny-all".into(), rules: vec![] }];
    spec.endpoints[1].ingress_policy = Some("deny-all".into()); // a2 takes nothing
    spec.endpoints[0].egress_policy = Some("deny-all".into()); // a1 sends nothing
    let snap = snapshot(&spec);
    let a2 = snap.endpoint_by_interface("veth-a2").unwrap();
    let mut p = Pipeline::new(config_for("node-a"));
    let run_host =
        |p: &mut Pipeline, packet: &[u8]| run(p, &snap, Ingress::Host, &from_host(packet, 0x0800));

    // The node itself (its tunnel address, its underlay address) reaches a2 whatever a2's
    // policy: a kubelet probe. The TTL is the kernel's to take down, not ours.
    for src in ["10.244.1.0", "192.168.50.1"] {
        let probe = ipv4_packet(src, "10.244.1.3", 64, 8080);
        let (v, out) = run_host(&mut p, &probe);
        assert_eq!(v, Verdict::Local(a2), "from {src}");
        assert_eq!(&out[..6], &POD_A2_MAC.0);
        assert_eq!(&out[6..12], &EngineConfig::default().gateway_mac.0);
        assert_eq!(&out[14..], &probe[..], "the packet itself is untouched (TTL too)");
    }
    // Anyone else (a NodePort client, DNAT to a2) meets a2's ingress policy.
    let outside = ipv4_packet("203.0.113.9", "10.244.1.3", 63, 8080);
    assert_eq!(run_host(&mut p, &outside).0, Verdict::Drop(DropReason::PolicyDeniedIngress));
    // To a remote pod: encapsulated, inner TTL as the kernel left it.
    let remote = ipv4_packet("10.244.1.0", "10.244.2.5", 64, 80);
    let (v, out) = run_host(&mut p, &remote);
    assert_eq!(v, Verdict::Encap);
    let (_, inner) = outer_and_inner(&out);
    let inner = SlicedPacket::from_ethernet(inner).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &inner.net else { panic!() };
    assert_eq!(ip.header().ttl(), 64);
    // a1's own packet back from the kernel after a Service's DNAT: a1's egress policy judges
    // its real destination.
    let dnat = ipv4_packet("10.244.1.2", "10.244.2.5", 63, 80);
    assert_eq!(run_host(&mut p, &dnat).0, Verdict::Drop(DropReason::PolicyDeniedEgress));
    // What the host interface must not carry to pods, or cannot deliver.
    let mut redirect = ipv4_packet("10.244.1.0", "10.244.1.3", 64, 80);
    redirect[9] = 1; // ICMP
    redirect[20] = 5; // redirect
    crate::wire::Ipv4Packet::new_unchecked(&mut redirect[..]).fill_checksum();
    assert_eq!(run_host(&mut p, &redirect).0, Verdict::Drop(DropReason::HostRedirect));
    let nobody = ipv4_packet("10.244.1.0", "10.244.1.99", 64, 80);
    assert_eq!(run_host(&mut p, &nobody).0, Verdict::Drop(DropReason::NoSuchPod));
    let stale = ipv4_packet("10.244.1.0", "10.9.0.1", 64, 80);
    assert_eq!(run_host(&mut p, &stale).0, Verdict::Drop(DropReason::HostNoRoute));
    // IPv6 from the host to a1, and the neighbour discovery a kernel may try on the link.
    let b =
        PacketBuilder::ipv6(ip6("fd00:10:244:1::").octets(), ip6("fd00:10:244:1::2").octets(), 64)
            .tcp(1, 80, 1, 100);
    let mut v6 = Vec::new();
    b.write(&mut v6, b"x").unwrap();
    let a1 = snap.endpoint_by_interface("veth-a1").unwrap();
    assert_eq!(run(&mut p, &snap, Ingress::Host, &from_host(&v6, 0x86dd)).0, Verdict::Local(a1));
    let b = PacketBuilder::ipv6(ip6("fe80::1").octets(), ip6("fd00:10:244:1::2").octets(), 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown { type_u8: 135, code_u8: 0, bytes5to8: [0; 4] });
    let mut ns = Vec::new();
    b.write(&mut ns, &[0u8; 16]).unwrap();
    assert_eq!(
        run(&mut p, &snap, Ingress::Host, &from_host(&ns, 0x86dd)).0,
        Verdict::Drop(DropReason::NeighbourDiscoveryIgnored)
    );
}

#[test]
fn decap_carries_congestion_marks_and_serves_the_tunnel_address() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let with_ecn = |outer_ecn: u8, inner_ecn: u8, dst: [u8; 4]| {
        let inner =
            PacketBuilder::ethernet2(VTEP_B.0, VTEP_A.0).ipv4([10, 244, 2, 5], dst, 64).udp(7, 7);
        let mut bytes = Vec::new();
        inner.write(&mut bytes, b"payload").unwrap();
        bytes[15] |= inner_ecn;
        crate::wire::Ipv4Packet::new_unchecked(&mut bytes[14..]).fill_checksum();
        let mut frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &bytes);
        frame[15] |= outer_ecn;
        crate::wire::Ipv4Packet::new_unchecked(&mut frame[14..]).fill_checksum();
        frame
    };
    let (v, out) = run(&mut p, &snap, Ingress::Uplink, &with_ecn(3, 2, [10, 244, 1, 3]));
    assert!(matches!(v, Verdict::Decap(_)));
    assert_eq!(out[15] & 3, 3, "CE carried to the inner ECT(0) packet");
    let ip = crate::wire::Ipv4Packet::new_checked(&out[14..]).unwrap();
    assert!(ip.verify_checksum());
    let (v, out) = run(&mut p, &snap, Ingress::Uplink, &with_ecn(2, 1, [10, 244, 1, 3]));
    assert!(matches!(v, Verdict::Decap(_)));
    assert_eq!(out[15] & 3, 1, "no CE outside: the inner ECN stays");
    assert_eq!(
        run(&mut p, &snap, Ingress::Uplink, &with_ecn(3, 0, [10, 244, 1, 3])).0,
        Verdict::Drop(DropReason::EcnCeNotEct)
    );
    // A remote pod pinging this node's tunnel address: the host's; an unused address: no one's.
    assert_eq!(
        run(&mut p, &snap, Ingress::Uplink, &with_ecn(0, 0, [10, 244, 1, 0])).0,
        Verdict::Host
    );
    assert_eq!(
        run(&mut p, &snap, Ingress::Uplink, &with_ecn(0, 0, [10, 244, 1, 77])).0,
        Verdict::Drop(DropReason::NoSuchPod)
    );
}

/// A pod's connection to a Service: DNATed by the node's kernel, it comes back from the host
/// interface as pod → backend; the backend's replies, remote or local, must go back to the
/// host (for the kernel to translate them), not to the pod.
#[test]
fn replies_of_flows_through_the_kernel_go_back_through_it() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let a1 = snap.endpoint_by_interface("veth-a1").unwrap();
    let a2 = snap.endpoint_by_interface("veth-a2").unwrap();
    // a1 → (ClusterIP, DNAT) → b1, a remote backend.
    let to_remote = ipv4_packet("10.244.1.2", "10.244.2.5", 63, 80);
    assert_eq!(run(&mut p, &snap, Ingress::Host, &from_host(&to_remote, 0x0800)).0, Verdict::Encap);
    let b = PacketBuilder::ethernet2(VTEP_B.0, VTEP_A.0)
        .ipv4([10, 244, 2, 5], [10, 244, 1, 2], 64)
        .tcp(80, 40000, 1, 100);
    let mut reply = Vec::new();
    b.write(&mut reply, b"").unwrap();
    let (v, _) = run(
        &mut p,
        &snap,
        Ingress::Uplink,
        &vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &reply),
    );
    // Decapsulated for a1, and at delivery sent to the kernel instead.
    assert_eq!(v, Verdict::Host, "the backend's reply goes to the kernel");
    // a1 → (ClusterIP, DNAT) → a2, a backend on this node; a2's reply.
    let to_local = ipv4_packet("10.244.1.2", "10.244.1.3", 63, 8080);
    assert_eq!(
        run(&mut p, &snap, Ingress::Host, &from_host(&to_local, 0x0800)).0,
        Verdict::Local(a2)
    );
    let b = PacketBuilder::ethernet2(POD_A2_MAC.0, EngineConfig::default().gateway_mac.0)
        .ipv4([10, 244, 1, 3], [10, 244, 1, 2], 64)
        .tcp(8080, 40000, 1, 100);
    let mut reply = Vec::new();
    b.write(&mut reply, b"").unwrap();
    let (v, _) = run(&mut p, &snap, Ingress::Pod(a2), &reply);
    assert_eq!(v, Verdict::Host);
    // Another flow between the same pods (a2's own connection to a1) is delivered directly.
    let b = PacketBuilder::ethernet2(POD_A2_MAC.0, EngineConfig::default().gateway_mac.0)
        .ipv4([10, 244, 1, 3], [10, 244, 1, 2], 64)
        .tcp(5555, 40000, 1, 100);
    let mut other = Vec::new();
    b.write(&mut other, b"").unwrap();
    let (v, _) = run(&mut p, &snap, Ingress::Pod(a2), &other);
    assert_eq!(v, Verdict::Local(a1));
    assert_eq!(p.counters().returned_via_host, 2);
    assert_eq!(p.host_flows(), (2, 0));
}

/// A TCP segment with `flags` (etherparse builder flags set through the closure).
fn tcp_segment(
    (src_mac, dst_mac): (MacAddr, MacAddr),
    (src, dst): ([u8; 4], [u8; 4]),
    (sport, dport): (u16, u16),
    flags: fn(
        etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
) -> Vec<u8> {
    let b = flags(
        PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 65535),
    );
    let mut out = Vec::new();
    b.write(&mut out, b"").unwrap();
    out
}

fn syn(
    b: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
    b.syn()
}

fn syn_ack(
    b: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
    b.syn().ack(1)
}

fn ack(
    b: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
    b.ack(1)
}

/// Policies by name for the stateful tests: default deny, web (TCP 80 from the cluster).
fn stateful_spec(a1: (Option<&str>, Option<&str>), a2: (Option<&str>, Option<&str>)) -> TableSpec {
    let mut spec = spec_for("node-a", false);
    spec.policies = vec![
        PolicySpec { name: "deny-all".into(), rules: vec![] },
        PolicySpec {
            name: "web".into(),
            rules: vec![RuleSpec {
                peers: vec![PeerSpec { cidr: "10.244.0.0/16".parse().unwrap(), except: vec![] }],
                ports: vec![PortSpec {
                    protocol: PortProtocol::Tcp,
                    port: Some(80),
                    end_port: None,
                }],
            }],
        },
    ];
    let name = |n: Option<&str>| n.map(str::to_owned);
    (spec.endpoints[0].ingress_policy, spec.endpoints[0].egress_policy) = (name(a1.0), name(a1.1));
    (spec.endpoints[1].ingress_policy, spec.endpoints[1].egress_policy) = (name(a2.0), name(a2.1));
    spec
}

const A1: [u8; 4] = [10, 244, 1, 2];
const A2: [u8; 4] = [10, 244, 1, 3];
const B1: [u8; 4] = [10, 244, 2, 5];

/// A pod under default-deny ingress opens connections and gets the replies, to a pod on the
/// same node and across nodes; nobody can open one to it.
#[test]
fn replies_reach_a_pod_under_default_deny_ingress() {
    let snap = snapshot(&stateful_spec((Some("deny-all"), None), (None, None)));
    let mut p = Pipeline::new(config_for("node-a"));
    let (a1, a2) = (from_a1(&snap), Ingress::Pod(snap.endpoint_by_interface("veth-a2").unwrap()));
    let gw = EngineConfig::default().gateway_mac;
    // a1 → a2 (same node): SYN out, SYN-ACK back, ACK out.
    let out = tcp_segment((POD_A1_MAC, gw), (A1, A2), (40000, 80), syn);
    assert!(matches!(run(&mut p, &snap, a1, &out).0, Verdict::Local(_)));
    let back = tcp_segment((POD_A2_MAC, gw), (A2, A1), (80, 40000), syn_ack);
    assert!(matches!(run(&mut p, &snap, a2, &back).0, Verdict::Local(_)), "the reply passes");
    // a2 opening its own connection to a1 does not.
    let own = tcp_segment((POD_A2_MAC, gw), (A2, A1), (41000, 22), syn);
    assert_eq!(run(&mut p, &snap, a2, &own).0, Verdict::Drop(DropReason::PolicyDeniedIngress));
    // a1 → b1 (remote node): the reply comes back decapsulated.
    let out = tcp_segment((POD_A1_MAC, gw), (A1, B1), (40001, 443), syn);
    assert_eq!(run(&mut p, &snap, a1, &out).0, Verdict::Encap);
    let back = tcp_segment((VTEP_B, VTEP_A), (B1, A1), (443, 40001), syn_ack);
    let frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &back);
    assert!(matches!(run(&mut p, &snap, Ingress::Uplink, &frame).0, Verdict::Decap(_)));
    // ... and b1's own connection attempt is refused.
    let own = tcp_segment((VTEP_B, VTEP_A), (B1, A1), (443, 40002), syn);
    let frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &own);
    assert_eq!(
        run(&mut p, &snap, Ingress::Uplink, &frame).0,
        Verdict::Drop(DropReason::PolicyDeniedIngress)
    );
    assert_eq!(p.conntrack().len(), 2, "one flow per connection at a1; a2 has no policy");
}

/// A server whose egress policy allows nothing answers the clients its ingress lets in.
#[test]
fn a_server_under_egress_deny_all_answers_its_clients() {
    let snap = snapshot(&stateful_spec((None, None), (Some("web"), Some("deny-all"))));
    let mut p = Pipeline::new(config_for("node-a"));
    let (a1, a2) = (from_a1(&snap), Ingress::Pod(snap.endpoint_by_interface("veth-a2").unwrap()));
    let gw = EngineConfig::default().gateway_mac;
    let hello = tcp_segment((POD_A1_MAC, gw), (A1, A2), (40000, 80), syn);
    assert!(matches!(run(&mut p, &snap, a1, &hello).0, Verdict::Local(_)));
    let answer = tcp_segment((POD_A2_MAC, gw), (A2, A1), (80, 40000), syn_ack);
    assert!(matches!(run(&mut p, &snap, a2, &answer).0, Verdict::Local(_)));
    // Its own connection out is refused; so is a client on a port ingress does not allow.
    let out = tcp_segment((POD_A2_MAC, gw), (A2, B1), (40000, 80), syn);
    assert_eq!(run(&mut p, &snap, a2, &out).0, Verdict::Drop(DropReason::PolicyDeniedEgress));
    let other = tcp_segment((POD_A1_MAC, gw), (A1, A2), (40001, 81), syn);
    assert_eq!(run(&mut p, &snap, a1, &other).0, Verdict::Drop(DropReason::PolicyDeniedIngress));
    // From the remote node as well.
    let hello = tcp_segment((VTEP_B, VTEP_A), (B1, A2), (50000, 80), syn);
    let frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &hello);
    assert!(matches!(run(&mut p, &snap, Ingress::Uplink, &frame).0, Verdict::Decap(_)));
    let answer = tcp_segment((POD_A2_MAC, gw), (A2, B1), (80, 50000), syn_ack);
    assert_eq!(run(&mut p, &snap, a2, &answer).0, Verdict::Encap);
}

/// Tables that no longer allow a flow cut it at its next packet; tables that still do keep it.
#[test]
fn a_policy_change_cuts_the_flows_it_forbids() {
    let spec = stateful_spec((None, None), (Some("web"), None));
    let first = snapshot(&spec);
    let mut p = Pipeline::new(config_for("node-a"));
    let a1 = from_a1(&first);
    let gw = EngineConfig::default().gateway_mac;
    let segment = tcp_segment((POD_A1_MAC, gw), (A1, A2), (40000, 80), ack);
    assert!(matches!(run(&mut p, &first, a1, &segment).0, Verdict::Local(_)));
    // A new generation with the same policy: the flow goes on.
    let same = Snapshot::build_next(&spec, &first).unwrap();
    assert!(matches!(run(&mut p, &same, a1, &segment).0, Verdict::Local(_)));
    // a2's ingress becomes deny-all: the next segment is refused, the entry gone.
    let denied = stateful_spec((None, None), (Some("deny-all"), None));
    let after = Snapshot::build_next(&denied, &same).unwrap();
    assert_eq!(run(&mut p, &after, a1, &segment).0, Verdict::Drop(DropReason::PolicyDeniedIngress));
    assert_eq!(p.conntrack().stats().cut, 1);
}

/// A node speaks for its own pods only.
#[test]
fn decap_drops_inner_sources_outside_the_senders_pod_cidrs() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    // From node B's underlay address, an inner source in node A's own CIDR, and one outside
    // the cluster.
    for src in [[10, 244, 1, 9], [8, 8, 8, 8]] {
        let forged = tcp_segment((VTEP_B, VTEP_A), (src, A1), (1234, 80), syn);
        let frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &forged);
        assert_eq!(
            run(&mut p, &snap, Ingress::Uplink, &frame).0,
            Verdict::Drop(DropReason::InnerSourceSpoofed)
        );
    }
    // Node B's tunnel address (its CIDR's first address) is its own.
    let own = tcp_segment((VTEP_B, VTEP_A), ([10, 244, 2, 0], A1), (1234, 80), syn);
    let frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &own);
    assert!(matches!(run(&mut p, &snap, Ingress::Uplink, &frame).0, Verdict::Decap(_)));
}

/// A pod's packet to a Service address is judged by its egress policy on the backend, after
/// the kernel's DNAT, and the Service's replies pass its ingress.
#[test]
fn service_flows_are_judged_on_their_backend() {
    let spec = stateful_spec((Some("deny-all"), Some("web")), (None, None));
    let snap = snapshot(&spec);
    let config = EngineConfig {
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..config_for("node-a")
    };
    let mut p = Pipeline::new(config);
    let a1 = from_a1(&snap);
    let gw = EngineConfig::default().gateway_mac;
    // To the Service on port 443: not judged here (web allows only 80) but tracked.
    let to_vip = tcp_segment((POD_A1_MAC, gw), (A1, [10, 96, 0, 10]), (40000, 443), syn);
    assert_eq!(run(&mut p, &snap, a1, &to_vip).0, Verdict::Host);
    // The kernel DNATs it to b1:443: the egress policy judges that, and refuses.
    let dnat = ipv4_packet("10.244.1.2", "10.244.2.5", 63, 443);
    assert_eq!(
        run(&mut p, &snap, Ingress::Host, &from_host(&dnat, 0x0800)).0,
        Verdict::Drop(DropReason::PolicyDeniedEgress)
    );
    // To b1:80 it allows; the reply, translated back by the kernel, comes from the Service
    // address and passes a1's default-deny ingress.
    let to_vip = tcp_segment((POD_A1_MAC, gw), (A1, [10, 96, 0, 10]), (40001, 80), syn);
    assert_eq!(run(&mut p, &snap, a1, &to_vip).0, Verdict::Host);
    let dnat = ipv4_packet("10.244.1.2", "10.244.2.5", 63, 80);
    assert_eq!(run(&mut p, &snap, Ingress::Host, &from_host(&dnat, 0x0800)).0, Verdict::Encap);
    let b = PacketBuilder::ipv4([10, 96, 0, 10], A1, 63).tcp(80, 40001, 1, 100).syn().ack(1);
    let mut reply = Vec::new();
    b.write(&mut reply, b"").unwrap();
    assert!(matches!(
        run(&mut p, &snap, Ingress::Host, &from_host(&reply, 0x0800)).0,
        Verdict::Local(_)
    ));
}

/// [`run`] for a super-packet from pod a1, cut at `mss`, without delivery's judgement.
fn run_segmented(p: &mut Pipeline, snap: &Snapshot, bytes: &[u8], mss: u16) -> (Verdict, Vec<u8>) {
    run_segmented_from(p, snap, from_a1(snap), bytes, mss)
}

/// [`run_segmented`] for a super-packet from `ingress`.
fn run_segmented_from(
    p: &mut Pipeline,
    snap: &Snapshot,
    ingress: Ingress,
    bytes: &[u8],
    mss: u16,
) -> (Verdict, Vec<u8>) {
    let mut buffer = vec![0u8; HEADROOM + bytes.len() + 128];
    buffer[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
    let mut span = Span::new(HEADROOM, bytes.len());
    let mut frame = Frame::new(&mut buffer, &mut span);
    let verdict = p.process_segmented(snap, ingress, &mut frame, mss);
    (verdict, frame.data().to_vec())
}

#[test]
fn the_host_interface_takes_and_gives_offloads_as_a_tap_pod_does() {
    // a1 behind a veth, a2 behind a TAP.
    let snap = snapshot(&spec_with_tap_a2());
    let mut p = Pipeline::new(config_for("node-a"));
    let a1 = snap.endpoint_by_interface("veth-a1").unwrap();
    let a2 = snap.endpoint_by_interface("veth-a2").unwrap();

    // A pod's checksum left partial stays so on its way to the node: the host interface's
    // virtio-net header flags it.
    let mut frame = tcp4("10.244.1.2", "192.168.50.1", 40000, 80);
    make_partial(&mut frame[ETH..]);
    let (v, out) = run(&mut p, &snap, from_a1(&snap), &frame);
    assert_eq!(v, Verdict::Host);
    assert!(offload::partial_checksum(&out[ETH..]).is_some());

    // The node's own partial checksum: finished for a veth pod and for a remote pod, left
    // for a TAP pod.
    let from_node = |dst: &str| {
        let mut ip = ipv4_packet("192.168.50.1", dst, 64, 8080);
        make_partial(&mut ip);
        from_host(&ip, 0x0800)
    };
    let (v, out) = run(&mut p, &snap, Ingress::Host, &from_node("10.244.1.2"));
    assert_eq!(v, Verdict::Local(a1));
    assert!(tcp_checksum_verifies(&out));
    let (v, out) = run(&mut p, &snap, Ingress::Host, &from_node("10.244.1.3"));
    assert_eq!(v, Verdict::Local(a2));
    assert!(offload::partial_checksum(&out[ETH..]).is_some());
    let (v, out) = run(&mut p, &snap, Ingress::Host, &from_node("10.244.2.5"));
    assert_eq!(v, Verdict::Encap);
    assert!(tcp_checksum_verifies(outer_and_inner(&out).1));
    // A kernel VTEP's partial inner checksum for the node's tunnel address: to the kernel as
    // it came, flagged by the host interface's header.
    let b = PacketBuilder::ethernet2(VTEP_B.0, VTEP_A.0)
        .ipv4([10, 244, 2, 5], [10, 244, 1, 0], 64)
        .tcp(5000, 80, 7, 1000);
    let mut inner = Vec::new();
    b.write(&mut inner, b"to the node").unwrap();
    let mut frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner);
    make_partial(&mut frame[ETH + 20 + 8 + 8 + ETH..]);
    frame[ETH + 20 + 6..ETH + 20 + 8].fill(0);
    let (v, out) = run(&mut p, &snap, Ingress::Uplink, &frame);
    assert_eq!(v, Verdict::Host);
    assert!(offload::partial_checksum(&out[ETH..]).is_some());

    // The kernel's TCP super-packet (a1's flow through it, after a Service's DNAT): decided
    // once, encapsulated whole for cutting, to a remote pod.
    let frame = segment::tests::tcp_frame(true, 30_000, 0x10);
    let before = p.counters().clone();
    let (v, out) = run_segmented_from(&mut p, &snap, Ingress::Host, &frame, 1398);
    assert_eq!(v, Verdict::Encap);
    assert_eq!(p.counters().rx_frames, before.rx_frames + 1, "counted once");
    let segments = segment::Segments::new(&out, true, 1398).unwrap();
    assert_eq!(segments.count(), 30_000usize.div_ceil(1398));
    assert_eq!(segments.len_of(0), 14 + 1500, "the first segment fills the underlay MTU");
    // To the TAP pod a2: whole, its checksum still partial, its TTL the kernel's.
    let mut to_a2 = frame.clone();
    to_a2[14 + 18] = 1;
    crate::wire::Ipv4Packet::new_unchecked(&mut to_a2[14..34]).fill_checksum();
    let (v, out) = run_segmented_from(&mut p, &snap, Ingress::Host, &to_a2, 1398);
    assert_eq!(v, Verdict::Local(a2));
    assert_eq!(out[14..], to_a2[14..], "not cut, not changed");
    // Segments too large for the overlay (the kernel's MSS follows the host interface's
    // MTU, so only a broken header asks for them): dropped.
    let (v, _) = run_segmented_from(&mut p, &snap, Ingress::Host, &frame, 1399);
    assert_eq!(v, Verdict::Drop(DropReason::MtuExceeded));
    // The uplink never hands over super-packets.
    let (v, _) = run_segmented_from(&mut p, &snap, Ingress::Uplink, &frame, 1398);
    assert_eq!(v, Verdict::Drop(DropReason::BadSuperPacket));
}

#[test]
fn super_packets_are_decided_once_and_cut_to_fit_the_overlay() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    // The largest segment that fits a 1,450-byte overlay MTU: 1,398 bytes of payload behind
    // IPv4 and TCP with timestamps (52 bytes), 1,378 behind IPv6 (72).
    for (v4, mss) in [(true, 1398u16), (false, 1378)] {
        let frame = segment::tests::tcp_frame(v4, 20_000, 0x18);
        let before = p.counters().clone();
        let (verdict, out) = run_segmented(&mut p, &snap, &frame, mss);
        assert_eq!(verdict, Verdict::Encap, "v4 {v4}");
        assert_eq!(p.counters().encap, before.encap + 1, "counted once");
        assert_eq!(p.counters().rx_frames, before.rx_frames + 1);
        let segments = segment::Segments::new(&out, true, mss).unwrap();
        assert_eq!(segments.count(), 20_000usize.div_ceil(usize::from(mss)));
        assert_eq!(segments.len_of(0), 14 + 1500, "the first segment fills the underlay MTU");
        let mut first = vec![0u8; segments.len_of(0)];
        segments.write(0, &mut first).unwrap();
        let (outer, inner) = outer_and_inner(&first);
        assert!(outer.transport.is_some());
        assert_eq!(inner.len(), 14 + 1450);
        // The next packet's outer identification follows the segments'.
        let (_, small) =
            run(&mut p, &snap, from_a1(&snap), &tcp4("10.244.1.2", "10.244.2.3", 1, 2));
        let first_id = u16::from_be_bytes([out[18], out[19]]);
        assert_eq!(u16::from_be_bytes([small[18], small[19]]), first_id + segments.count() as u16);
    }
    // One byte of segment too many: the pod learns the path MTU, as for any packet too big.
    let frame = segment::tests::tcp_frame(true, 20_000, 0x18);
    let (verdict, out) = run_segmented(&mut p, &snap, &frame, 1399);
    assert_eq!(verdict, Verdict::Reply);
    assert_eq!(&out[14 + 20..14 + 22], &[3, 4], "fragmentation needed");
    assert_eq!(&out[14 + 26..14 + 28], &[0x05, 0xaa], "next-hop MTU 1450");
}

#[test]
fn super_packets_between_pods_of_the_node_stay_whole_and_partial() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let mut frame = segment::tests::tcp_frame(true, 30_000, 0x10);
    // To a2 (10.244.1.3): the destination and the header checksum rewritten.
    frame[14 + 18] = 1;
    frame[14 + 10..14 + 12].fill(0);
    let check = crate::wire::checksum::checksum(&frame[14..34]);
    frame[14 + 10..14 + 12].copy_from_slice(&check.to_be_bytes());
    let a2 = snap.endpoint_by_interface("veth-a2").unwrap();
    let (verdict, out) = run_segmented(&mut p, &snap, &frame, 1398);
    assert_eq!(verdict, Verdict::Local(a2));
    assert_eq!(out.len(), frame.len(), "not cut");
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(&out[14 + 36..14 + 38], &frame[14 + 36..14 + 38], "TCP checksum left partial");
    // What is not a TCP super-packet is refused, counted.
    let mut udp = frame.clone();
    udp[14 + 9] = 17;
    let (verdict, _) = run_segmented(&mut p, &snap, &udp, 1398);
    assert_eq!(verdict, Verdict::Drop(DropReason::BadSuperPacket));
    assert_eq!(p.counters().dropped(DropReason::BadSuperPacket), 1);
}

/// `frame` (Ethernet, IPv4) with `options` spliced into its IPv4 header: IHL, total length
/// and header checksum updated (the UDP checksum does not cover the IP options).
fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "options fill whole 32-bit words");
    let mut out = frame[..34].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[34..]);
    out[14] = 0x45 + (options.len() / 4) as u8;
    let total = u16::from_be_bytes([out[16], out[17]]) + options.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out[24..26].copy_from_slice(&[0, 0]);
    let sum = !crate::wire::checksum::sum(0, &out[14..34 + options.len()]);
    out[24..26].copy_from_slice(&sum.to_be_bytes());
    out
}

#[test]
fn ipv4_options_are_judged_as_a_linux_router_does() {
    let snap = snapshot(&spec_for("node-a", false));
    let mut p = Pipeline::new(config_for("node-a"));
    let a1 = from_a1(&snap);
    let plain = udp4("10.244.1.2", "10.244.2.5", 5000, 53, 64, b"hello");
    let padded = with_ipv4_options(&plain, &[1, 1, 1, 0]);
    assert_eq!(run(&mut p, &snap, a1, &padded).0, Verdict::Encap, "NOPs and an end: forwarded");
    // Record route whose length runs past the header: parameter problem pointing at it.
    let bad = with_ipv4_options(&plain, &[7, 39, 4, 0, 0, 0, 0, 0]);
    let (v, out) = run(&mut p, &snap, a1, &bad);
    assert_eq!(v, Verdict::Reply);
    let reply = SlicedPacket::from_ethernet(&out).expect("the error decodes");
    let Some(NetSlice::Ipv4(ip)) = &reply.net else { panic!("IPv4") };
    assert_eq!(ip.header().destination_addr(), ip4("10.244.1.2"));
    let icmp = &out[14 + 20..];
    assert_eq!((icmp[0], icmp[1], icmp[4]), (12, 0, 20), "parameter problem at byte 20");
    assert_eq!(crate::wire::checksum::sum(0, icmp), 0xffff, "ICMP checksum");
    assert_eq!(&icmp[8..8 + 28], &bad[14..14 + 28], "quotes the offending header");
    // A timestamp of length 0: dropped (the rate limit spent on the first one aside).
    let zero = with_ipv4_options(&plain, &[68, 0, 5, 0]);
    assert!(matches!(
        run(&mut p, &snap, a1, &zero).0,
        Verdict::Reply | Verdict::Drop(DropReason::BadIpOptions)
    ));
    let routed = with_ipv4_options(&plain, &[131, 7, 4, 10, 244, 2, 9, 0]);
    assert_eq!(run(&mut p, &snap, a1, &routed).0, Verdict::Drop(DropReason::SourceRouted));
    // Decapsulated the same way, without an answer across the overlay.
    let inner = with_ipv4_options(&inner_to_a2(VTEP_B, VTEP_A, 64), &[7, 39, 4, 0, 0, 0, 0, 0]);
    let frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner);
    assert_eq!(
        run(&mut p, &snap, Ingress::Uplink, &frame).0,
        Verdict::Drop(DropReason::BadIpOptions)
    );
    let inner = with_ipv4_options(&inner_to_a2(VTEP_B, VTEP_A, 64), &[1, 1, 1, 0]);
    let frame = vxlan_from_b([8, 0, 0, 0], 1, 8472, [192, 168, 50, 2], &inner);
    assert!(matches!(run(&mut p, &snap, Ingress::Uplink, &frame).0, Verdict::Decap(_)));
}
