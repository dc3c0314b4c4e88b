//! Every view's checked constructor on any bytes, then every accessor: none may panic once
//! `new_checked` succeeded (the contract of `podlane_core::wire`).
#![no_main]

use podlane_core::wire::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = EthernetFrame::new_checked(data) {
        let _ = (p.destination(), p.source(), p.ethertype(), p.is_vlan_tagged(), p.payload().len());
    }
    if let Ok(p) = ArpPacket::new_checked(data) {
        let _ = (p.operation(), p.sender_hardware_addr(), p.sender_protocol_addr());
        let _ = (p.target_hardware_addr(), p.target_protocol_addr());
    }
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let _ = (p.header_len(), p.dscp_ecn(), p.total_len(), p.ident(), p.dont_frag(), p.more_frags());
        let _ = (p.frag_offset(), p.is_fragment(), p.ttl(), p.protocol(), p.checksum());
        let _ = (p.src_addr(), p.dst_addr(), p.options().len(), p.verify_checksum(), p.payload().len());
        let mut owned = data.to_vec();
        let mut m = Ipv4Packet::new_checked(&mut owned[..]).unwrap();
        m.decrement_ttl();
        m.fill_checksum();
        assert!(m.verify_checksum());
    }
    if let Ok(p) = Ipv6Packet::new_checked(data) {
        let _ = (p.traffic_class(), p.flow_label(), p.payload_len(), p.next_header(), p.hop_limit());
        let _ = (p.src_addr(), p.dst_addr(), p.payload().len(), p.as_bytes().len(), p.find_l4());
    }
    if let Ok(p) = UdpPacket::new_checked(data) {
        let _ = (p.src_port(), p.dst_port(), p.len(), p.checksum(), p.payload().len());
    }
    if let Ok(p) = TcpPacket::new_checked(data) {
        let _ = (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number(), p.flags(), p.payload().len());
    }
    if let Ok(p) = Icmpv4Packet::new_checked(data) {
        let _ = (p.msg_type(), p.msg_code(), p.checksum());
    }
    if let Ok(p) = Icmpv6Packet::new_checked(data) {
        let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.nd_target(), p.nd_options_valid());
        let _ = (p.nd_link_addr_option(1), p.nd_link_addr_option(2));
    }
    if let Ok(p) = VxlanPacket::new_checked(data) {
        let _ = (p.flags_word(), p.has_valid_flags(), p.vni(), p.payload().len());
    }
});
