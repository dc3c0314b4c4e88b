//! Segmentation of TCP super-packets in software: what a NIC's TSO (or the kernel's GSO) does
//! to a packet larger than the path carries.
//!
//! A pod behind a TAP edge with TSO on hands the dataplane TCP packets of up to 64 KiB and the
//! segment size to cut them at (its MSS). The pipeline decides once for the whole packet
//! (route, policy, conntrack, encapsulation: [`super::Pipeline::process_segmented`]); what
//! goes on as frames of at most the path's MTU is cut here, into segments that are exactly
//! what the kernel's `tcp_gso_segment` (and `skb_udp_tunnel_segment` for the outer headers)
//! would produce:
//!
//! * every segment carries a copy of all headers and the next `mss` bytes of payload;
//! * TCP: the sequence number advances by the payload before it, FIN and PSH stay on the last
//!   segment only, CWR on the first only; the checksum is computed over each segment (never
//!   left partial: AF_XDP frames carry no offload flag);
//! * IPv4 (inner and outer): the total length is the segment's, the identification counts up
//!   from the super-packet's by one per segment, the header checksum is recomputed; IPv6: the
//!   payload length is the segment's;
//! * the outer UDP length is the segment's, and its checksum is computed when the
//!   super-packet's outer header asks for one (always over IPv6; over IPv4 only where the
//!   engine is configured to, else 0 as Linux's vxlan device sends by default).
//!
//! The engine leaves a super-packet's length fields as they fit (an encapsulated 64 KiB
//! packet overflows the outer ones); nothing here reads them, every length comes from the
//! buffer. The layout is validated once ([`Segments::new`]); writing a segment cannot panic
//! on any input that passed it.

use crate::wire::checksum::{self, pseudo_header_v4, pseudo_header_v6, sum};
use crate::wire::{be16, be32, ipv4_at, ipv6_at, put16};

const ETH: usize = 14;
const TCP: u8 = 6;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const CWR: u8 = 0x80;
const IPV4: u16 = 0x0800;
const IPV6: u16 = 0x86dd;
const VXLAN_HEADERS: usize = 8 + 8;

/// The most segments one super-packet may be cut into. A pod's kernel sends at most 64 KiB in
/// segments of at least its MSS (536 bytes for IPv4, 1,220 for IPv6): 123 at worst. A segment
/// size far smaller than that is a pod asking the dataplane to multiply its packets.
pub const MAX_SEGMENTS: usize = 128;

/// Why a super-packet cannot be segmented (the frame is dropped, counted under the reason
/// the caller maps it to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("headers truncated or inconsistent")]
    Malformed,
    #[error("not TCP over IPv4 or IPv6 without extension headers")]
    Unsupported,
    #[error("segment size 0, or more than {MAX_SEGMENTS} segments")]
    BadSegmentSize,
}

/// An IP header in the frame: where it starts, its length and its family.
#[derive(Debug, Clone, Copy)]
struct IpAt {
    at: usize,
    header_len: usize,
    v4: bool,
}

/// The outer headers of an encapsulated super-packet.
#[derive(Debug, Clone, Copy)]
struct Outer {
    ip: IpAt,
    udp: usize,
    /// Compute the outer UDP checksum of each segment (else it is 0).
    udp_checksum: bool,
    /// The first segment's outer IPv4 identification.
    ident: u16,
}

/// A super-packet's headers, validated, and how it is cut.
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    frame: &'a [u8],
    outer: Option<Outer>,
    inner: IpAt,
    tcp: usize,
    /// Offset of the payload: every byte before it is copied into each segment.
    payload: usize,
    mss: usize,
    count: usize,
    inner_ident: u16,
    seq: u32,
}

impl<'a> Segments<'a> {
    /// Reads the layout of `frame`: an Ethernet frame carrying TCP over IPv4 or IPv6, inside
    /// VXLAN when `encapsulated` (outer Ethernet, IPv4 or IPv6, UDP, VXLAN, then the inner
    /// frame, as the engine's encapsulation writes them), to be cut into segments of `mss`
    /// bytes of payload.
    pub fn new(frame: &'a [u8], encapsulated: bool, mss: u16) -> Result<Self, SegmentError> {
        let mss = usize::from(mss);
        let (outer, inner_eth) = if encapsulated {
            let ip = match ethertype(frame, 0)? {
                IPV4 => IpAt { at: ETH, header_len: 20, v4: true },
                IPV6 => IpAt { at: ETH, header_len: 40, v4: false },
                _ => return Err(SegmentError::Malformed),
            };
            let udp = ip.at + ip.header_len;
            let check = frame.get(udp + 6..udp + 8).ok_or(SegmentError::Malformed)?;
            let udp_checksum = !ip.v4 || check != [0, 0];
            let ident = if ip.v4 { be16(frame, ip.at + 4) } else { 0 };
            (Some(Outer { ip, udp, udp_checksum, ident }), udp + VXLAN_HEADERS)
        } else {
            (None, 0)
        };
        let at = inner_eth + ETH;
        let inner = match ethertype(frame, inner_eth)? {
            IPV4 => {
                let first = *frame.get(at).ok_or(SegmentError::Malformed)?;
                let header_len = usize::from(first & 0x0f) * 4;
                if first >> 4 != 4 || header_len < 20 || frame.len() < at + header_len {
                    return Err(SegmentError::Malformed);
                }
                if frame[at + 9] != TCP {
                    return Err(SegmentError::Unsupported);
                }
                // A fragment is not a TCP segment to cut.
                if be16(frame, at + 6) & 0x3fff != 0 {
                    return Err(SegmentError::Unsupported);
                }
                if usize::from(be16(frame, at + 2)) != frame.len() - at {
                    return Err(SegmentError::Malformed);
                }
                IpAt { at, header_len, v4: true }
            }
            IPV6 => {
                if frame.len() < at + 40 || frame[at] >> 4 != 6 {
                    return Err(SegmentError::Malformed);
                }
                if frame[at + 6] != TCP {
                    return Err(SegmentError::Unsupported);
                }
                if usize::from(be16(frame, at + 4)) + 40 != frame.len() - at {
                    return Err(SegmentError::Malformed);
                }
                IpAt { at, header_len: 40, v4: false }
            }
            _ => return Err(SegmentError::Unsupported),
        };
        let tcp = inner.at + inner.header_len;
        let offset = usize::from(*frame.get(tcp + 12).ok_or(SegmentError::Malformed)? >> 4) * 4;
        let payload = tcp + offset;
        if offset < 20 || frame.len() < payload {
            return Err(SegmentError::Malformed);
        }
        let count = (frame.len() - payload).div_ceil(mss.max(1)).max(1);
        if mss == 0 || count > MAX_SEGMENTS {
            return Err(SegmentError::BadSegmentSize);
        }
        Ok(Segments {
            frame,
            outer,
            inner,
            tcp,
            payload,
            mss,
            count,
            inner_ident: if inner.v4 { be16(frame, inner.at + 4) } else { 0 },
            seq: be32(frame, tcp + 4),
        })
    }

    /// How many segments the packet is cut into.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Length of segment `i` (of [`Segments::count`]).
    pub fn len_of(&self, i: usize) -> usize {
        let payload = self.frame.len() - self.payload;
        let start = (i * self.mss).min(payload);
        self.payload + (payload - start).min(self.mss)
    }

    /// Bytes of headers in every segment (outer ones included).
    pub fn header_len(&self) -> usize {
        self.payload
    }

    /// Writes segment `i` at the start of `out`, which must hold [`Segments::len_of`] bytes
    /// (`None` when it does not, or `i` is past the last segment). Returns its length.
    pub fn write(&self, i: usize, out: &mut [u8]) -> Option<usize> {
        let len = self.len_of(i);
        if i >= self.count || out.len() < len {
            return None;
        }
        let start = self.payload + i * self.mss;
        let out = &mut out[..len];
        out[..self.payload].copy_from_slice(&self.frame[..self.payload]);
        out[self.payload..].copy_from_slice(&self.frame[start..start + len - self.payload]);
        let step = i as u16;

        let IpAt { at, header_len, v4 } = self.inner;
        let l4_len = len - self.tcp;
        let pseudo = if v4 {
            put16(out, at + 2, (len - at) as u16);
            put16(out, at + 4, self.inner_ident.wrapping_add(step));
            set_ipv4_checksum(out, at, header_len);
            let (src, dst) = (ipv4_at(out, at + 12), ipv4_at(out, at + 16));
            pseudo_header_v4(src, dst, TCP, l4_len as u16)
        } else {
            put16(out, at + 4, (len - at - 40) as u16);
            let (src, dst) = (ipv6_at(out, at + 8), ipv6_at(out, at + 24));
            pseudo_header_v6(src, dst, TCP, l4_len as u32)
        };
        let tcp = self.tcp;
        out[tcp + 4..tcp + 8]
            .copy_from_slice(&self.seq.wrapping_add((i * self.mss) as u32).to_be_bytes());
        let mut flags = out[tcp + 13];
        if i + 1 < self.count {
            flags &= !(FIN | PSH);
        }
        if i > 0 {
            flags &= !CWR;
        }
        out[tcp + 13] = flags;
        put16(out, tcp + 16, 0);
        // Not `transport_checksum`: TCP sends a computed 0 as 0, as the kernel does.
        let check = !sum(pseudo, &out[tcp..]);
        put16(out, tcp + 16, check);

        if let Some(Outer { ip, udp, udp_checksum, ident }) = self.outer {
            let udp_len = len - udp;
            put16(out, udp + 4, udp_len as u16);
            let pseudo = if ip.v4 {
                put16(out, ip.at + 2, (len - ip.at) as u16);
                put16(out, ip.at + 4, ident.wrapping_add(step));
                set_ipv4_checksum(out, ip.at, ip.header_len);
                pseudo_header_v4(
                    ipv4_at(out, ip.at + 12),
                    ipv4_at(out, ip.at + 16),
                    17,
                    udp_len as u16,
                )
            } else {
                put16(out, ip.at + 4, udp_len as u16);
                pseudo_header_v6(
                    ipv6_at(out, ip.at + 8),
                    ipv6_at(out, ip.at + 24),
                    17,
                    udp_len as u32,
                )
            };
            put16(out, udp + 6, 0);
            if udp_checksum {
                let check = checksum::transport_checksum(pseudo, &out[udp..]);
                put16(out, udp + 6, check);
            }
        }
        Some(len)
    }
}

/// The ethertype of the Ethernet header at `at`.
fn ethertype(frame: &[u8], at: usize) -> Result<u16, SegmentError> {
    frame
        .get(at + 12..at + 14)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(SegmentError::Malformed)
}

fn set_ipv4_checksum(bytes: &mut [u8], at: usize, header_len: usize) {
    put16(bytes, at + 10, 0);
    let check = checksum::checksum(&bytes[at..at + header_len]);
    put16(bytes, at + 10, check);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    /// An Ethernet frame with a TCP packet of `payload` bytes (bytes counting up), IPv4 or
    /// IPv6, flags `flags`, the TCP checksum left partial as a pod's kernel leaves it.
    pub(crate) fn tcp_frame(v4: bool, payload: usize, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[0..6].copy_from_slice(&[0xee; 6]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        let l4 = 20 + 12 + payload; // TCP header with 12 bytes of options (timestamps)
        if v4 {
            f[12..14].copy_from_slice(&IPV4.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, TCP, 0, 0];
            ip.extend_from_slice(&[10, 244, 1, 2, 10, 244, 2, 3]);
            put16(&mut ip, 2, (20 + l4) as u16);
            let check = checksum::checksum(&ip);
            put16(&mut ip, 10, check);
            f.extend_from_slice(&ip);
        } else {
            f[12..14].copy_from_slice(&IPV6.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0, 0, 0, TCP, 64];
            put16(&mut ip, 4, l4 as u16);
            ip.extend_from_slice(&"fd00:10:244:1::2".parse::<Ipv6Addr>().unwrap().octets());
            ip.extend_from_slice(&"fd00:10:244:2::3".parse::<Ipv6Addr>().unwrap().octets());
            f.extend_from_slice(&ip);
        }
        let mut tcp = vec![0u8; 32];
        tcp[0..4].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        tcp[4..8].copy_from_slice(&0xffff_f000u32.to_be_bytes()); // wraps within the packet
        tcp[8..12].copy_from_slice(&77u32.to_be_bytes());
        tcp[12] = 8 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&[0xfa, 0xf0]);
        tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
        f.extend_from_slice(&tcp);
        f.extend((0..payload).map(|i| (i % 251) as u8));
        f
    }

    /// `frame` behind outer headers as the engine writes them (lengths left stale).
    pub(crate) fn encapsulated(frame: &[u8], v4: bool, udp_checksum: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        if v4 {
            f[12..14].copy_from_slice(&IPV4.to_be_bytes());
            f.extend_from_slice(&[0x45, 0, 0xff, 0xff, 0x00, 0x07, 0x40, 0, 64, 17, 0, 0]);
            f.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 2]);
        } else {
            f[12..14].copy_from_slice(&IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0, 0xff, 0xff, 17, 64]);
            f.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
            f.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        }
        let check = if udp_checksum { [0xff, 0xff] } else { [0, 0] };
        f.extend_from_slice(&[0xc0, 0x01, 0x21, 0x18, 0xff, 0xff, check[0], check[1]]);
        f.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
        f.extend_from_slice(frame);
        f
    }

    fn cut(frame: &[u8], encap: bool, mss: u16) -> Vec<Vec<u8>> {
        let segments = Segments::new(frame, encap, mss).unwrap();
        (0..segments.count())
            .map(|i| {
                let mut out = vec![0u8; segments.len_of(i)];
                assert_eq!(segments.write(i, &mut out), Some(out.len()));
                out
            })
            .collect()
    }

    /// Checks an IP packet's header and TCP checksums and returns (seq, flags, ident, payload).
    fn check_inner(ip: &[u8]) -> (u32, u8, u16, Vec<u8>) {
        let (tcp, pseudo, ident) = if ip[0] >> 4 == 4 {
            assert_eq!(usize::from(be16(ip, 2)), ip.len(), "total length");
            assert_eq!(sum(0, &ip[..20]), 0xffff, "IPv4 header checksum");
            let pseudo =
                pseudo_header_v4(ipv4_at(ip, 12), ipv4_at(ip, 16), TCP, (ip.len() - 20) as u16);
            (20, pseudo, be16(ip, 4))
        } else {
            assert_eq!(usize::from(be16(ip, 4)) + 40, ip.len(), "payload length");
            let pseudo =
                pseudo_header_v6(ipv6_at(ip, 8), ipv6_at(ip, 24), TCP, (ip.len() - 40) as u32);
            (40, pseudo, 0)
        };
        assert_eq!(sum(pseudo, &ip[tcp..]), 0xffff, "TCP checksum");
        (be32(ip, tcp + 4), ip[tcp + 13], ident, ip[tcp + 32..].to_vec())
    }

    #[test]
    fn cuts_a_super_packet_as_the_kernel_does() {
        for v4 in [true, false] {
            let payload = 5000;
            let frame = tcp_frame(v4, payload, 0x80 | 0x10 | PSH | FIN); // CWR ACK PSH FIN
            let segments = cut(&frame, false, 1400);
            assert_eq!(segments.len(), 4);
            let mut joined = Vec::new();
            for (i, s) in segments.iter().enumerate() {
                assert_eq!(&s[..14], &frame[..14], "Ethernet header copied");
                let (seq, flags, ident, data) = check_inner(&s[14..]);
                assert_eq!(seq, 0xffff_f000u32.wrapping_add(1400 * i as u32));
                let last = i == 3;
                assert_eq!(flags & (PSH | FIN) != 0, last, "PSH and FIN on the last only");
                assert_eq!(flags & CWR != 0, i == 0, "CWR on the first only");
                assert_eq!(flags & 0x10, 0x10, "ACK on all");
                if v4 {
                    assert_eq!(ident, 0x1234 + i as u16);
                }
                assert_eq!(data.len(), if last { 800 } else { 1400 });
                joined.extend_from_slice(&data);
            }
            assert_eq!(joined, frame[frame.len() - payload..]);
        }
    }

    #[test]
    fn encapsulated_segments_get_their_own_outer_lengths_identities_and_checksums() {
        for (v4, udp_checksum) in [(true, false), (true, true), (false, true)] {
            let inner = tcp_frame(true, 3000, 0x10);
            let frame = encapsulated(&inner, v4, udp_checksum);
            let outer_ip = if v4 { 20 } else { 40 };
            let udp = 14 + outer_ip;
            let segments = cut(&frame, true, 1398);
            assert_eq!(segments.len(), 3);
            for (i, s) in segments.iter().enumerate() {
                assert_eq!(usize::from(be16(s, udp + 4)), s.len() - udp, "UDP length");
                let ip = &s[14..];
                let pseudo = if v4 {
                    assert_eq!(usize::from(be16(ip, 2)), ip.len());
                    assert_eq!(be16(ip, 4), 7 + i as u16, "outer identification counts up");
                    assert_eq!(sum(0, &ip[..20]), 0xffff);
                    pseudo_header_v4(ipv4_at(ip, 12), ipv4_at(ip, 16), 17, (s.len() - udp) as u16)
                } else {
                    assert_eq!(usize::from(be16(ip, 4)), s.len() - udp);
                    pseudo_header_v6(ipv6_at(ip, 8), ipv6_at(ip, 24), 17, (s.len() - udp) as u32)
                };
                if udp_checksum {
                    assert_eq!(sum(pseudo, &s[udp..]), 0xffff, "outer UDP checksum");
                } else {
                    assert_eq!(be16(s, udp + 6), 0, "no outer UDP checksum");
                }
                check_inner(&s[udp + 16 + 14..]);
            }
        }
    }

    #[test]
    fn a_packet_within_one_segment_comes_out_whole_and_checksummed() {
        let frame = tcp_frame(true, 100, 0x18);
        let segments = cut(&frame, false, 1400);
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0].len(), frame.len());
        let (_, flags, ..) = check_inner(&segments[0][14..]);
        assert_eq!(flags, 0x18, "PSH stays on the only segment");
    }

    #[test]
    fn refuses_what_it_cannot_cut() {
        let frame = tcp_frame(true, 3000, 0x10);
        assert_eq!(Segments::new(&frame, false, 0).err(), Some(SegmentError::BadSegmentSize));
        assert_eq!(Segments::new(&frame, false, 20).err(), Some(SegmentError::BadSegmentSize));
        let mut udp = frame.clone();
        udp[14 + 9] = 17;
        assert_eq!(Segments::new(&udp, false, 1400).err(), Some(SegmentError::Unsupported));
        let mut fragment = frame.clone();
        fragment[14 + 6] |= 0x20;
        assert_eq!(Segments::new(&fragment, false, 1400).err(), Some(SegmentError::Unsupported));
        let short = &frame[..frame.len() - 1];
        assert_eq!(Segments::new(short, false, 1400).err(), Some(SegmentError::Malformed));
        assert!(Segments::new(&frame, true, 1400).is_err(), "not encapsulated");
        let segments = Segments::new(&frame, false, 1400).unwrap();
        assert_eq!(segments.write(3, &mut [0u8; 2000]), None, "past the last segment");
        assert_eq!(segments.write(0, &mut [0u8; 100]), None, "room too small");
    }

    /// Any bytes, cut anywhere: an error or segments, never a panic.
    #[test]
    fn never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let bases = [
            tcp_frame(true, 4000, 0x10),
            tcp_frame(false, 4000, 0x10),
            encapsulated(&tcp_frame(true, 4000, 0x10), true, false),
            encapsulated(&tcp_frame(false, 4000, 0x10), false, true),
        ];
        let mut out = vec![0u8; 70_000];
        for _ in 0..20_000 {
            let base = &bases[(next() % 4) as usize];
            let mut frame = base.clone();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % 140;
                frame[at] = next() as u8;
            }
            frame.truncate((next() as usize) % (frame.len() + 1));
            let encap = next() % 2 == 0;
            if let Ok(segments) = Segments::new(&frame, encap, (next() % 3000) as u16) {
                for i in 0..segments.count() {
                    segments.write(i, &mut out);
                }
            }
        }
    }
}
