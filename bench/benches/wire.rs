//! Hand-written header access (`podlane_core::wire`) against etherparse, on the work the hot path
//! does per frame: parsing a VXLAN frame down to the inner ports (decap), and writing the 50
//! bytes of outer headers (encap). This is the measurement behind writing our own views
//! instead of calling etherparse on the hot path; etherparse stays as the tests' independent
//! decoder.
//!
//! Run: `cargo bench -p podlane-bench --bench wire`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podlane_bench::fixture::{self, ClusterParams};
use podlane_core::wire::{
    EtherType, EthernetFrame, IpProtocol, Ipv4Packet, UdpPacket, VxlanPacket,
};

/// Our views: outer Ethernet/IPv4/UDP/VXLAN, inner Ethernet/IPv4/UDP ports.
fn parse_podlane(frame: &[u8]) -> Option<(u32, u16)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EtherType::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.protocol() != IpProtocol::Udp || !ip.verify_checksum() {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    let vxlan = VxlanPacket::new_checked(udp.payload()).ok()?;
    let inner = EthernetFrame::new_checked(vxlan.payload()).ok()?;
    let inner_ip = Ipv4Packet::new_checked(inner.payload()).ok()?;
    let inner_udp = UdpPacket::new_checked(inner_ip.payload()).ok()?;
    Some((vxlan.vni(), inner_udp.dst_port()))
}

/// The same with etherparse's slicing decoder (which validates as it goes).
fn parse_etherparse(frame: &[u8]) -> Option<(u32, u16)> {
    use etherparse::{SlicedPacket, TransportSlice};
    let outer = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(TransportSlice::Udp(udp)) = outer.transport else { return None };
    let vx = udp.payload();
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    let inner = SlicedPacket::from_ethernet(vx.get(8..)?).ok()?;
    let Some(TransportSlice::Udp(inner_udp)) = inner.transport else { return None };
    Some((vni, inner_udp.destination_port()))
}

fn emit_podlane(out: &mut [u8]) {
    let mut eth = EthernetFrame::new_unchecked(&mut out[..14]);
    eth.set_destination(fixture::node_vtep_mac(2));
    eth.set_source(fixture::LOCAL_UPLINK_MAC);
    eth.set_ethertype(EtherType::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(&mut out[14..34]);
    ip.set_version_and_header_len(20);
    ip.set_dscp_ecn(0);
    ip.set_total_len(100);
    ip.set_ident(7);
    ip.set_dont_frag_no_offset(false);
    ip.set_ttl(64);
    ip.set_protocol(IpProtocol::Udp);
    ip.set_src_addr(fixture::node_underlay(0));
    ip.set_dst_addr(fixture::node_underlay(2));
    ip.fill_checksum();
    let mut udp = UdpPacket::new_unchecked(&mut out[34..42]);
    udp.set_src_port(40000);
    udp.set_dst_port(8472);
    udp.set_len(80);
    udp.set_checksum(0);
    VxlanPacket::new_unchecked(&mut out[42..50]).emit(1);
}

fn emit_etherparse(out: &mut [u8]) {
    use etherparse::{EtherType as Et, Ethernet2Header, IpNumber, Ipv4Header, UdpHeader};
    let eth = Ethernet2Header {
        source: fixture::LOCAL_UPLINK_MAC.0,
        destination: fixture::node_vtep_mac(2).0,
        ether_type: Et::IPV4,
    };
    let mut ip = Ipv4Header::new(
        80,
        64,
        IpNumber::UDP,
        fixture::node_underlay(0).octets(),
        fixture::node_underlay(2).octets(),
    )
    .expect("valid length");
    ip.identification = 7;
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    let udp = UdpHeader { source_port: 40000, destination_port: 8472, length: 80, checksum: 0 };
    let mut cursor = &mut out[..];
    eth.write_to_slice(cursor).expect("room");
    cursor = &mut cursor[14..];
    ip.write(&mut std::io::Cursor::new(&mut cursor[..20])).expect("room");
    cursor = &mut cursor[20..];
    cursor[..8].copy_from_slice(&udp.to_bytes());
    cursor[8..16].copy_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
}

fn bench_wire(c: &mut Criterion) {
    let params = ClusterParams { nodes: 16, blocks_per_node: 1, ..ClusterParams::bench() };
    let config = fixture::engine_config();
    let frame = fixture::vxlan_frame(&params, &config, 3, 5, 1234, 64);
    assert_eq!(parse_podlane(&frame), parse_etherparse(&frame));
    assert!(parse_podlane(&frame).is_some());
    let mut a = [0u8; 64];
    let mut b = [0u8; 64];
    emit_podlane(&mut a);
    emit_etherparse(&mut b);
    assert_eq!(a[..50], b[..50], "both emitters write the same outer headers");

    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    group
        .bench_function("parse_vxlan/podlane", |bch| bch.iter(|| parse_podlane(black_box(&frame))));
    group.bench_function("parse_vxlan/etherparse", |bch| {
        bch.iter(|| parse_etherparse(black_box(&frame)))
    });
    group.bench_function("emit_outer/podlane", |bch| bch.iter(|| emit_podlane(black_box(&mut a))));
    group.bench_function("emit_outer/etherparse", |bch| {
        bch.iter(|| emit_etherparse(black_box(&mut b)))
    });
    group.finish();
}

criterion_group!(benches, bench_wire);
criterion_main!(benches);
