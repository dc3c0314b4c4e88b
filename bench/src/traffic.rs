//! What the packet-rate harness puts on the wire and how it counts what arrives: the test
//! frames of each direction, the generator's XDP program (run through BPF_PROG_RUN on live
//! frames, then XDP_TX) and the sink's XDP program (count, stamp, drop or hand to AF_XDP).
//!
//! Frame sizes follow RFC 2544: a "64-byte frame" counts the 4-byte FCS, so its buffer is 60
//! bytes. Every test frame is UDP over IPv4 with a zero UDP checksum (legal over IPv4), so the
//! generator can rewrite ports and timestamps per frame without fixing any checksum.
//!
//! The payload of the innermost UDP datagram carries two CLOCK_MONOTONIC timestamps: the
//! generator's program writes the time it produced the frame at [`Layout::stamp`], the sink's
//! program writes the time the frame arrived 8 bytes later. Both are read in the kernel at the
//! XDP hook, so a latency sample is the one-way time through the dataplane under test, free of
//! either end's userspace. (Both ends must share a clock: true in namespaces on one machine.)

use std::net::Ipv4Addr;

use dataplane::io::xdp::{Asm, Cond, MD_DATA, MD_DATA_END, Reg, Size, action, helper};
use dataplane::io::xdp::{PerCpuArray, XskMap};

/// Ethernet + IPv4 (no options) + UDP.
pub const HEADERS: usize = 14 + 20 + 8;
/// Outer Ethernet + IPv4 + UDP + VXLAN.
pub const VXLAN_OVERHEAD: usize = 50;
/// The FCS counted in RFC 2544 frame sizes but absent from the buffers Linux hands around.
pub const FCS: usize = 4;
/// The smallest frame size: 60 bytes of buffer hold the headers and both timestamps.
pub const MIN_FRAME: usize = 64;
/// The destination port of test datagrams (discard).
pub const TEST_PORT: u16 = 9;
/// The first source port of the flows; flow `i` uses `FIRST_PORT + i`.
pub const FIRST_PORT: u16 = 1024;

/// One end of a flow: addresses as the frame carries them.
#[derive(Debug, Clone, Copy)]
pub struct Hop {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
}

/// Where the varying fields of a test frame are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// Buffer length of the frame as sent.
    pub len: usize,
    /// Offsets of the 16-bit UDP source ports rewritten per frame (the flow).
    pub ports: Vec<usize>,
    /// Offset of the generator's timestamp; the sink's follows 8 bytes later.
    pub stamp: usize,
}

/// A pod frame: Ethernet, IPv4, UDP to [`TEST_PORT`], padded to `size` (RFC 2544 size, FCS
/// included). The source port is the first flow's; the payload is zero until stamped.
pub fn udp_frame(size: usize, src: Hop, dst: Hop) -> (Vec<u8>, Layout) {
    let len = size.max(MIN_FRAME) - FCS;
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&dst.mac);
    frame.extend_from_slice(&src.mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    push_ipv4_udp(&mut frame, src.ip, dst.ip, FIRST_PORT, TEST_PORT, len - 14);
    frame.resize(len, 0);
    (frame, Layout { len, ports: vec![34], stamp: HEADERS })
}

/// `inner` encapsulated as a VXLAN peer sends it (`outer_src` → `outer_dst`, UDP to `port`,
/// flags 0x08, `vni`, outer UDP checksum zero as Flannel and Calico send it). The outer
/// source port varies with the flow as a kernel VTEP's flow hash does.
pub fn vxlan_frame(
    inner: &(Vec<u8>, Layout),
    outer_src: Hop,
    outer_dst: Hop,
    port: u16,
    vni: u32,
) -> (Vec<u8>, Layout) {
    let (inner, inner_layout) = inner;
    let len = inner.len() + VXLAN_OVERHEAD;
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&outer_dst.mac);
    frame.extend_from_slice(&outer_src.mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    push_ipv4_udp(&mut frame, outer_src.ip, outer_dst.ip, 49152, port, len - 14);
    frame.extend_from_slice(&[0x08, 0, 0, 0]);
    frame.extend_from_slice(&(vni << 8).to_be_bytes());
    frame.extend_from_slice(inner);
    let mut ports = vec![34];
    ports.extend(inner_layout.ports.iter().map(|p| p + VXLAN_OVERHEAD));
    (frame, Layout { len, ports, stamp: inner_layout.stamp + VXLAN_OVERHEAD })
}

/// Appends an IPv4 header (TTL 64, no DF, checksum computed) and a UDP header with a zero
/// checksum, for an IP packet of `ip_len` bytes.
fn push_ipv4_udp(
    out: &mut Vec<u8>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ip_len: usize,
) {
    let ip_start = out.len();
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&(ip_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let sum = podlane_core::wire::checksum::checksum(&out[ip_start..ip_start + 20]);
    out[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    out.extend_from_slice(&((ip_len - 20) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// The generator's program: pick a flow (a random one of `flows`, so 64k flows spread
/// evenly), write its source port at every port offset, write the time, transmit (XDP_TX).
/// Run through BPF_PROG_RUN on live frames, every call sends `repeat` such frames.
pub fn generator_program(layout: &Layout, flows: u32) -> Vec<u64> {
    let mut asm = Asm::new();
    let send = asm.label();
    asm.mov_reg(Reg::R6, Reg::R1);
    // Helpers first: they clobber r1–r5, and packet pointers would need checking again.
    asm.mov_imm(Reg::R7, 0);
    if flows > 1 {
        asm.call(helper::GET_PRANDOM_U32);
        asm.mov_reg(Reg::R7, Reg::R0);
        asm.mod32_imm(Reg::R7, flows);
    }
    asm.add_imm(Reg::R7, i32::from(FIRST_PORT));
    asm.to_be16(Reg::R7);
    asm.call(helper::KTIME_GET_NS);
    asm.mov_reg(Reg::R8, Reg::R0);
    asm.ldx(Size::W, Reg::R2, Reg::R6, MD_DATA);
    asm.ldx(Size::W, Reg::R3, Reg::R6, MD_DATA_END);
    // The verifier allows the stores below only inside a range checked against data_end.
    let end = layout.ports.iter().map(|p| p + 2).chain([layout.stamp + 8]).max().unwrap_or(0);
    asm.mov_reg(Reg::R4, Reg::R2);
    asm.add_imm(Reg::R4, end as i32);
    asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, send);
    for &port in &layout.ports {
        asm.stx(Size::H, Reg::R2, port as i16, Reg::R7);
    }
    asm.stx(Size::DW, Reg::R2, layout.stamp as i16, Reg::R8);
    asm.bind(send);
    asm.mov_imm(Reg::R0, action::TX);
    asm.exit();
    asm.finish()
}

/// What the sink does with a test frame after counting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkMode {
    /// Drop it: the cheapest possible receiver, for throughput.
    Count,
    /// Write the arrival time after the generator's and hand the frame to the AF_XDP socket
    /// of its queue (dropped when none is bound), for latency.
    Latency,
}

/// The sink's program: count frames of exactly `layout.len` bytes with EtherType IPv4 in
/// slot 0 of `counters` (everything else in slot 1), then drop or, in
/// [`SinkMode::Latency`], stamp and redirect into `sockets`.
pub fn sink_program(
    layout: &Layout,
    mode: SinkMode,
    counters: &PerCpuArray,
    sockets: &XskMap,
) -> Vec<u64> {
    let mut asm = Asm::new();
    let (other, counted, drop) = (asm.label(), asm.label(), asm.label());
    asm.mov_reg(Reg::R6, Reg::R1);
    asm.ldx(Size::W, Reg::R2, Reg::R6, MD_DATA);
    asm.ldx(Size::W, Reg::R3, Reg::R6, MD_DATA_END);
    asm.mov_reg(Reg::R4, Reg::R2);
    asm.add_imm(Reg::R4, 14);
    asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, other);
    asm.ldx(Size::H, Reg::R5, Reg::R2, 12);
    asm.jmp_imm(Cond::Ne, Reg::R5, i32::from(u16::from_le_bytes(0x0800u16.to_be_bytes())), other);
    asm.mov_reg(Reg::R4, Reg::R3);
    asm.sub_reg(Reg::R4, Reg::R2);
    asm.jmp_imm(Cond::Ne, Reg::R4, layout.len as i32, other);
    asm.mov_imm(Reg::R7, 0);
    asm.ja(counted);
    asm.bind(other);
    asm.mov_imm(Reg::R7, 1);
    asm.bind(counted);
    // counters[r7] += 1 on this CPU: the key lives on the stack.
    asm.stx(Size::W, Reg::R10, -4, Reg::R7);
    asm.mov_reg(Reg::R2, Reg::R10);
    asm.add_imm(Reg::R2, -4);
    asm.ld_map(Reg::R1, counters);
    asm.call(helper::MAP_LOOKUP_ELEM);
    let skip = asm.label();
    asm.jmp_imm(Cond::Eq, Reg::R0, 0, skip);
    asm.ldx(Size::DW, Reg::R1, Reg::R0, 0);
    asm.add_imm(Reg::R1, 1);
    asm.stx(Size::DW, Reg::R0, 0, Reg::R1);
    asm.bind(skip);
    if mode == SinkMode::Latency {
        asm.jmp_imm(Cond::Ne, Reg::R7, 0, drop);
        asm.call(helper::KTIME_GET_NS);
        asm.ldx(Size::W, Reg::R2, Reg::R6, MD_DATA);
        asm.ldx(Size::W, Reg::R3, Reg::R6, MD_DATA_END);
        asm.mov_reg(Reg::R4, Reg::R2);
        asm.add_imm(Reg::R4, (layout.stamp + 16) as i32);
        asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, drop);
        asm.stx(Size::DW, Reg::R2, (layout.stamp + 8) as i16, Reg::R0);
        asm.ldx(Size::W, Reg::R2, Reg::R6, dataplane::io::xdp::MD_RX_QUEUE_INDEX);
        asm.ld_map(Reg::R1, sockets);
        asm.mov_imm(Reg::R3, action::DROP);
        asm.call(helper::REDIRECT_MAP);
        asm.exit();
    }
    asm.bind(drop);
    asm.mov_imm(Reg::R0, action::DROP);
    asm.exit();
    asm.finish()
}

/// The two timestamps of a frame the sink handed over, if it is long enough: (sent, arrived).
pub fn stamps(frame: &[u8], layout: &Layout) -> Option<(u64, u64)> {
    let at = |o: usize| Some(u64::from_ne_bytes(frame.get(o..o + 8)?.try_into().ok()?));
    Some((at(layout.stamp)?, at(layout.stamp + 8)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn hop(last: u8) -> Hop {
        Hop { mac: [2, 0, 0, 0, 0, last], ip: Ipv4Addr::new(10, 244, 1, last) }
    }

    #[test]
    fn sizes_count_the_fcs_and_headers_decode() {
        for size in [64, 128, 512, 1518] {
            let (frame, layout) = udp_frame(size, hop(2), hop(3));
            assert_eq!(frame.len(), size - 4);
            assert_eq!(layout.len, size - 4);
            let p = SlicedPacket::from_ethernet(&frame).unwrap();
            let Some(NetSlice::Ipv4(ip)) = p.net else { panic!("not IPv4") };
            assert_eq!(ip.header().total_len() as usize, size - 4 - 14);
            assert!(
                ip.header().to_header().calc_header_checksum() == ip.header().header_checksum()
            );
            let Some(TransportSlice::Udp(udp)) = p.transport else { panic!("not UDP") };
            assert_eq!((udp.source_port(), udp.destination_port()), (FIRST_PORT, TEST_PORT));
            assert_eq!(udp.checksum(), 0);
            assert!(layout.stamp + 16 <= frame.len(), "both timestamps fit in a {size}-byte frame");
        }
    }

    #[test]
    fn vxlan_frames_wrap_the_inner_frame() {
        let inner = udp_frame(64, hop(2), hop(3));
        let (frame, layout) = vxlan_frame(&inner, hop(10), hop(11), 8472, 1);
        assert_eq!(frame.len(), 60 + 50);
        assert_eq!(&frame[50..], &inner.0[..]);
        assert_eq!(layout.ports, vec![34, 84]);
        assert_eq!(layout.stamp, 92);
        let p = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(TransportSlice::Udp(udp)) = p.transport else { panic!("not UDP") };
        assert_eq!(udp.destination_port(), 8472);
        assert_eq!(udp.length() as usize, 60 + 16);
        assert_eq!(&frame[42..50], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn programs_assemble() {
        let (_, layout) = udp_frame(64, hop(2), hop(3));
        assert!(generator_program(&layout, 1).len() > 10);
        assert!(generator_program(&layout, 65536).len() > generator_program(&layout, 1).len());
    }

    #[test]
    fn stamps_are_read_where_they_were_written() {
        let (mut frame, layout) = udp_frame(64, hop(2), hop(3));
        frame[layout.stamp..layout.stamp + 8].copy_from_slice(&5u64.to_ne_bytes());
        frame[layout.stamp + 8..layout.stamp + 16].copy_from_slice(&9u64.to_ne_bytes());
        assert_eq!(stamps(&frame, &layout), Some((5, 9)));
        assert_eq!(stamps(&frame[..50], &layout), None);
    }
}
