//! Coalescing of TCP segments into super-packets, for a pod whose edge takes them (a TAP with
//! virtio-net headers): what the kernel's GRO does before a packet reaches a socket.
//!
//! Frames for such a pod arrive one segment at a time (decapsulated from the uplink, or from a
//! veth pod of the node). Consecutive in-order segments of one TCP flow are joined into one
//! packet of up to 64 KiB, written to the pod with the segment size and a partial checksum:
//! the pod's kernel then runs its TCP once for them all, as it would after GRO. The rules are
//! the kernel's (`tcp_gro_receive`, `inet_gro_receive`, `ipv6_gro_receive`), kept strict:
//!
//! * IPv4 without options and not a fragment, with DF set (else the identification would
//!   have to count up, and nothing here needs to guess), or IPv6 with TCP as the next header;
//!   both ends' addresses, ports, TOS / traffic class and flow label, TTL / hop limit equal;
//! * TCP header length and option bytes equal (timestamps included), the same ACK number,
//!   only ACK and PSH set; the sequence number the next expected one;
//! * every segment but the last carries exactly the first one's payload (its length is the
//!   segment size); a shorter one, or one with PSH, ends the packet; so does the 64 KiB
//!   limit;
//! * each segment's TCP checksum verifies before it is joined: the joined packet carries a
//!   partial checksum the receiver does not check again, so a corrupt segment is never
//!   hidden in it (it is written on its own, for the pod's kernel to drop). A segment whose
//!   checksum is itself partial (the engine leaves those for TAP pods, `offload`) is joined
//!   unsummed: it was never going to be checked, as the kernel's GRO trusts CHECKSUM_PARTIAL.
//!
//! A packet of one segment goes out as it came. The joined packet's IPv4 total length and
//! header checksum, or IPv6 payload length, are rewritten; its TCP checksum field holds the
//! pseudo-header sum, and its PSH flag is the last segment's.

use crate::wire::checksum::{fold, pseudo_header_v4, pseudo_header_v6, sum};
use crate::wire::{be16, be32, ipv4_at, ipv6_at, put16};

const ETH: usize = 14;
const TCP: u8 = 6;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
/// The largest IP packet (its length field's limit).
const MAX_IP_LEN: usize = 65_535;

/// What became of a frame offered to the [`Coalescer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Joined to the open packet (or opened one); more may follow.
    Joined,
    /// Joined, and the packet is complete: take it ([`Coalescer::take`]).
    Complete,
    /// It does not continue the open packet: take that one, then offer the frame again.
    Mismatch,
    /// Not a segment that joins any packet: take the open one, then send this frame alone.
    Alone,
}

/// A packet taken from the [`Coalescer`]: its frame, and for a joined packet (more than one
/// segment) what its virtio-net header says.
#[derive(Debug, PartialEq, Eq)]
pub struct Coalesced<'a> {
    pub frame: &'a [u8],
    /// `None` for a packet of one segment, sent as it came.
    pub gso: Option<Gso>,
    /// Where the TCP header starts when its checksum is partial, left for the receiver: always
    /// for a joined packet, and for one segment that came so.
    pub partial_checksum_at: Option<u16>,
}

/// The segmentation facts of a joined packet, for its virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    pub ipv6: bool,
    /// Bytes of headers (Ethernet to TCP options).
    pub header_len: u16,
    /// Payload bytes per segment.
    pub segment_size: u16,
    /// Where the TCP header starts (the checksum left to finish is at +16).
    pub csum_start: u16,
    pub segments: u16,
}

/// The open packet's facts.
#[derive(Debug, Clone, Copy)]
struct Open {
    v4: bool,
    tcp: usize,
    /// Offset of the payload: the headers before it are the first segment's.
    payload: usize,
    segment_size: usize,
    next_seq: u32,
    segments: u16,
    /// The first segment's checksum is partial (only that matters for a packet of one).
    partial: bool,
}

/// Joins segments one pod receives, a packet at a time.
#[derive(Debug, Default)]
pub struct Coalescer {
    bytes: Vec<u8>,
    open: Option<Open>,
}

/// A TCP segment's layout, if it is one that may join a packet.
#[derive(Debug, Clone, Copy)]
struct Segment {
    v4: bool,
    tcp: usize,
    payload: usize,
    seq: u32,
    flags: u8,
    /// Its checksum is partial, not verified.
    partial: bool,
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer::default()
    }

    /// Whether a packet is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Offers the next frame for the pod.
    pub fn offer(&mut self, frame: &[u8]) -> Offer {
        let Some(segment) = parse(frame) else { return Offer::Alone };
        let payload = frame.len() - segment.payload;
        let Some(open) = self.open else {
            self.bytes.clear();
            self.bytes.extend_from_slice(frame);
            self.open = Some(Open {
                v4: segment.v4,
                tcp: segment.tcp,
                payload: segment.payload,
                segment_size: payload,
                next_seq: segment.seq.wrapping_add(payload as u32),
                segments: 1,
                partial: segment.partial,
            });
            return if segment.flags & PSH != 0 { Offer::Complete } else { Offer::Joined };
        };
        if !self.continues(&open, frame, &segment) {
            return Offer::Mismatch;
        }
        if self.bytes.len() - ETH + payload > MAX_IP_LEN {
            return Offer::Mismatch;
        }
        self.bytes.extend_from_slice(&frame[segment.payload..]);
        let tcp_flags = open.tcp + 13;
        self.bytes[tcp_flags] |= segment.flags & PSH;
        let open = self.open.insert(Open {
            next_seq: open.next_seq.wrapping_add(payload as u32),
            segments: open.segments + 1,
            ..open
        });
        let full = self.bytes.len() - ETH + open.segment_size > MAX_IP_LEN;
        if payload < open.segment_size || segment.flags & PSH != 0 || full {
            Offer::Complete
        } else {
            Offer::Joined
        }
    }

    /// Whether `frame` (`segment`) continues the open packet.
    fn continues(&self, open: &Open, frame: &[u8], segment: &Segment) -> bool {
        let payload = frame.len() - segment.payload;
        let held = &self.bytes;
        // The last segment joined was shorter than the first: the packet is complete.
        let joined = held.len() - open.payload;
        if joined != open.segment_size * usize::from(open.segments) {
            return false;
        }
        if segment.v4 != open.v4
            || segment.tcp != open.tcp
            || segment.payload != open.payload
            || segment.seq != open.next_seq
            || payload > open.segment_size
        {
            return false;
        }
        // Ethernet header, IP header but its lengths, identification and checksum, then the
        // TCP header but its sequence number, flags, window and checksum: all equal.
        let ip = ETH;
        let same = |from: usize, to: usize| held[from..to] == frame[from..to];
        let ip_same = if open.v4 {
            // Version/IHL, TOS; flags and fragment offset, TTL, protocol, addresses.
            same(0, ip + 2) && same(ip + 6, ip + 10) && same(ip + 12, ip + 20)
        } else {
            // Version, traffic class, flow label; next header, hop limit, addresses.
            same(0, ip + 4) && same(ip + 6, ip + 40)
        };
        let tcp = open.tcp;
        ip_same && same(tcp, tcp + 4) && same(tcp + 8, tcp + 13) && same(tcp + 18, open.payload)
    }

    /// Takes the open packet, its headers rewritten when it joined several segments.
    pub fn take(&mut self) -> Option<Coalesced<'_>> {
        let open = self.open.take()?;
        if open.segments == 1 {
            let partial_checksum_at = open.partial.then_some(open.tcp as u16);
            return Some(Coalesced { frame: &self.bytes, gso: None, partial_checksum_at });
        }
        let bytes = &mut self.bytes;
        let ip = ETH;
        let l4_len = bytes.len() - open.tcp;
        let ip_len = bytes.len() - ip;
        let pseudo = if open.v4 {
            put16(bytes, ip + 2, ip_len as u16);
            put16(bytes, ip + 10, 0);
            let check = !sum(0, &bytes[ip..open.tcp]);
            put16(bytes, ip + 10, check);
            let (src, dst) = (ipv4_at(bytes, ip + 12), ipv4_at(bytes, ip + 16));
            pseudo_header_v4(src, dst, TCP, l4_len as u16)
        } else {
            put16(bytes, ip + 4, l4_len as u16);
            let (src, dst) = (ipv6_at(bytes, ip + 8), ipv6_at(bytes, ip + 24));
            pseudo_header_v6(src, dst, TCP, l4_len as u32)
        };
        // A partial checksum: the pseudo-header's sum, folded, for the receiver to finish.
        put16(bytes, open.tcp + 16, fold(u64::from(pseudo)));
        Some(Coalesced {
            frame: bytes,
            partial_checksum_at: Some(open.tcp as u16),
            gso: Some(Gso {
                ipv6: !open.v4,
                header_len: open.payload as u16,
                segment_size: open.segment_size as u16,
                csum_start: open.tcp as u16,
                segments: open.segments,
            }),
        })
    }
}

/// The layout of a frame that may join a packet: TCP over IPv4 (no options, DF, no fragment)
/// or IPv6 (no extension headers), a payload, only ACK (and PSH) set, a checksum that
/// verifies or is partial.
fn parse(frame: &[u8]) -> Option<Segment> {
    let ip = ETH;
    let (v4, tcp, pseudo) = match frame.get(12..14)? {
        [0x08, 0x00] => {
            let header = frame.get(ip..ip + 20)?;
            if header[0] != 0x45 || header[9] != TCP || be16(header, 6) != 0x4000 {
                return None;
            }
            if usize::from(be16(header, 2)) != frame.len() - ip {
                return None;
            }
            let (src, dst) = (ipv4_at(header, 12), ipv4_at(header, 16));
            (true, ip + 20, pseudo_header_v4(src, dst, TCP, (frame.len() - ip - 20) as u16))
        }
        [0x86, 0xdd] => {
            let header = frame.get(ip..ip + 40)?;
            if header[0] >> 4 != 6 || header[6] != TCP {
                return None;
            }
            if usize::from(be16(header, 4)) + 40 != frame.len() - ip {
                return None;
            }
            let (src, dst) = (ipv6_at(header, 8), ipv6_at(header, 24));
            (false, ip + 40, pseudo_header_v6(src, dst, TCP, (frame.len() - ip - 40) as u32))
        }
        _ => return None,
    };
    let offset = usize::from(*frame.get(tcp + 12)? >> 4) * 4;
    let payload = tcp + offset;
    if offset < 20 || payload >= frame.len() {
        return None;
    }
    let flags = frame[tcp + 13];
    if flags & !PSH != ACK {
        return None;
    }
    // Partial: the field holds the pseudo-header's sum (`offload`); else it must verify.
    let partial = be16(frame, tcp + 16) == fold(u64::from(pseudo));
    if !partial && sum(pseudo, &frame[tcp..]) != 0xffff {
        return None;
    }
    Some(Segment { v4, tcp, payload, seq: be32(frame, tcp + 4), flags, partial })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::segment::Segments;
    use crate::engine::segment::tests::tcp_frame;

    /// The segments of a super-packet, as the kernel's GSO would send them.
    fn cut(frame: &[u8], mss: u16) -> Vec<Vec<u8>> {
        let segments = Segments::new(frame, false, mss).unwrap();
        (0..segments.count())
            .map(|i| {
                let mut out = vec![0u8; segments.len_of(i)];
                segments.write(i, &mut out).unwrap();
                out
            })
            .collect()
    }

    /// The joined packet equals the super-packet they were cut from, but for the IPv4
    /// identification (the first segment's) and the checksums.
    fn assert_rejoined(joined: &[u8], original: &[u8], v4: bool) {
        assert_eq!(joined.len(), original.len());
        let tcp = if v4 { 34 } else { 54 };
        let same = |from: usize, to: usize| assert_eq!(joined[from..to], original[from..to]);
        if v4 {
            same(0, 24);
            same(26, tcp + 16);
            assert_eq!(sum(0, &joined[14..34]), 0xffff, "IPv4 header checksum");
        } else {
            same(0, tcp + 16);
        }
        same(tcp + 18, original.len());
    }

    #[test]
    fn segments_of_a_super_packet_join_into_it_again() {
        for v4 in [true, false] {
            let original = tcp_frame(v4, 20_000, ACK | PSH);
            let mut c = Coalescer::new();
            let segments = cut(&original, 1400);
            for (i, s) in segments.iter().enumerate() {
                let expected = if i + 1 < segments.len() { Offer::Joined } else { Offer::Complete };
                assert_eq!(c.offer(s), expected, "segment {i}");
            }
            let taken = c.take().unwrap();
            let gso = taken.gso.unwrap();
            assert_eq!(gso.segments as usize, segments.len());
            assert_eq!(gso.segment_size, 1400);
            assert_eq!(gso.ipv6, !v4);
            let tcp = usize::from(gso.csum_start);
            assert_eq!(usize::from(gso.header_len), tcp + 32);
            assert_rejoined(taken.frame, &original, v4);
            // The partial checksum completes to a valid one.
            let mut frame = taken.frame.to_vec();
            let partial = be16(&frame, tcp + 16);
            put16(&mut frame, tcp + 16, 0);
            let check = !sum(u32::from(partial), &frame[tcp..]);
            put16(&mut frame, tcp + 16, check);
            let pseudo = if v4 {
                pseudo_header_v4(
                    ipv4_at(&frame, 26),
                    ipv4_at(&frame, 30),
                    TCP,
                    (frame.len() - tcp) as u16,
                )
            } else {
                pseudo_header_v6(
                    ipv6_at(&frame, 22),
                    ipv6_at(&frame, 38),
                    TCP,
                    (frame.len() - tcp) as u32,
                )
            };
            assert_eq!(sum(pseudo, &frame[tcp..]), 0xffff);
            assert!(!c.is_open());
        }
    }

    #[test]
    fn what_does_not_continue_the_packet_ends_it() {
        let segments = cut(&tcp_frame(true, 14_000, ACK), 1400);
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&segments[0]), Offer::Joined);
        // Out of order: a gap.
        assert_eq!(c.offer(&segments[2]), Offer::Mismatch);
        assert_eq!(c.take().unwrap().gso, None, "one segment goes as it came");
        assert_eq!(c.offer(&segments[2]), Offer::Joined);
        // Another flow (another port), another ACK number, changed options.
        for (at, value) in [(14 + 20, 0x12u8), (14 + 20 + 8, 0x99), (14 + 20 + 28, 0x77)] {
            let mut other = segments[3].clone();
            other[at] ^= value;
            // Keep its checksum valid: any mismatch must come from the rule, not the sum.
            fix_tcp_checksum(&mut other, true);
            assert_eq!(c.offer(&other), Offer::Mismatch, "byte {at}");
        }
        assert_eq!(c.offer(&segments[3]), Offer::Joined);
        let taken = c.take().unwrap();
        assert_eq!(taken.gso.unwrap().segments, 2);
    }

    #[test]
    fn what_never_joins_goes_alone() {
        let mut syn = tcp_frame(true, 0, 0x02);
        fix_tcp_checksum(&mut syn, true);
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&syn), Offer::Alone, "no payload, SYN");
        let mut bad = cut(&tcp_frame(true, 3000, ACK), 1400).remove(0);
        bad[100] ^= 1;
        assert_eq!(c.offer(&bad), Offer::Alone, "a checksum that fails");
        let mut fin = tcp_frame(true, 100, ACK | 0x01);
        fix_tcp_checksum(&mut fin, true);
        assert_eq!(c.offer(&fin), Offer::Alone, "FIN");
        let mut no_df = cut(&tcp_frame(true, 3000, ACK), 1400).remove(0);
        no_df[14 + 6] = 0;
        no_df[14 + 10..14 + 12].fill(0);
        let check = !sum(0, &no_df[14..34]);
        put16(&mut no_df, 14 + 10, check);
        assert_eq!(c.offer(&no_df), Offer::Alone, "IPv4 without DF");
        assert_eq!(c.offer(&[0u8; 10]), Offer::Alone);
        assert!(!c.is_open());
    }

    #[test]
    fn a_short_or_pushed_segment_completes_the_packet_and_64_kib_is_the_limit() {
        let segments = cut(&tcp_frame(true, 3000, ACK | PSH), 1400);
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&segments[0]), Offer::Joined);
        assert_eq!(c.offer(&segments[1]), Offer::Joined);
        assert_eq!(c.offer(&segments[2]), Offer::Complete, "200 bytes, PSH");
        let taken = c.take().unwrap();
        assert_eq!(taken.frame[14 + 20 + 13] & PSH, PSH, "PSH kept from the last");
        let segments = cut(&tcp_frame(true, 60_000, ACK), 1448);
        let mut c = Coalescer::new();
        let mut complete = 0;
        for s in &segments {
            match c.offer(s) {
                Offer::Joined => {}
                Offer::Complete => {
                    complete += 1;
                    assert!(c.take().unwrap().frame.len() - ETH <= MAX_IP_LEN);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(complete, 1, "the 60,000 bytes fit one packet");
        // Two super-packets of 40 full segments each, back to back: 45 segments fill 64 KiB.
        let first = tcp_frame(true, 40 * 1448, ACK);
        let stream: Vec<Vec<u8>> =
            cut(&first, 1448).into_iter().chain(cut(&next_after(&first), 1448)).collect();
        let mut c = Coalescer::new();
        let mut sizes = Vec::new();
        for s in &stream {
            loop {
                match c.offer(s) {
                    Offer::Joined => break,
                    Offer::Complete => {
                        sizes.push(c.take().unwrap().gso.unwrap().segments);
                        break;
                    }
                    Offer::Mismatch => sizes.push(c.take().unwrap().gso.unwrap().segments),
                    Offer::Alone => panic!("a full segment went alone"),
                }
            }
        }
        sizes.push(c.take().unwrap().gso.unwrap().segments);
        assert_eq!(sizes, [45, 35], "64 KiB at most");
    }

    #[test]
    fn segments_with_partial_checksums_join_and_one_alone_stays_partial() {
        for v4 in [true, false] {
            let tcp = if v4 { 34 } else { 54 };
            let mut segments = cut(&tcp_frame(v4, 5000, ACK), 1400);
            for s in &mut segments {
                make_partial(s, v4);
            }
            let mut c = Coalescer::new();
            assert_eq!(c.offer(&segments[0]), Offer::Joined);
            let one = c.take().unwrap();
            assert_eq!((one.gso, one.partial_checksum_at), (None, Some(tcp as u16)));
            for s in &segments {
                assert_ne!(c.offer(s), Offer::Alone);
            }
            let joined = c.take().unwrap();
            assert_eq!(joined.gso.unwrap().segments as usize, segments.len());
            assert_eq!(joined.partial_checksum_at, Some(tcp as u16));
        }
        // A verified segment taken alone says nothing is partial.
        let mut c = Coalescer::new();
        c.offer(&cut(&tcp_frame(true, 3000, ACK), 1400)[0]);
        assert_eq!(c.take().unwrap().partial_checksum_at, None);
    }

    /// The checksum field as a sender with TX offload leaves it: the pseudo-header's sum.
    fn make_partial(frame: &mut [u8], v4: bool) {
        let (tcp, pseudo) = tcp_pseudo_header(frame, v4);
        put16(frame, tcp + 16, fold(u64::from(pseudo)));
    }

    /// Where the TCP header of a test frame starts, and its pseudo-header's sum.
    fn tcp_pseudo_header(frame: &[u8], v4: bool) -> (usize, u32) {
        let tcp = if v4 { 34 } else { 54 };
        let pseudo = if v4 {
            pseudo_header_v4(
                ipv4_at(frame, 26),
                ipv4_at(frame, 30),
                TCP,
                (frame.len() - tcp) as u16,
            )
        } else {
            pseudo_header_v6(
                ipv6_at(frame, 22),
                ipv6_at(frame, 38),
                TCP,
                (frame.len() - tcp) as u32,
            )
        };
        (tcp, pseudo)
    }

    /// The super-packet that follows `frame` in its stream.
    fn next_after(frame: &[u8]) -> Vec<u8> {
        let mut next = frame.to_vec();
        let payload = frame.len() - 14 - 20 - 32;
        let seq = be32(frame, 14 + 20 + 4).wrapping_add(payload as u32);
        next[14 + 20 + 4..14 + 20 + 8].copy_from_slice(&seq.to_be_bytes());
        next
    }

    fn fix_tcp_checksum(frame: &mut [u8], v4: bool) {
        put16(frame, if v4 { 34 + 16 } else { 54 + 16 }, 0);
        let (tcp, pseudo) = tcp_pseudo_header(frame, v4);
        let check = !sum(pseudo, &frame[tcp..]);
        put16(frame, tcp + 16, check);
    }

    /// Any bytes: an offer never panics.
    #[test]
    fn never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut c = Coalescer::new();
        let bases: Vec<Vec<u8>> = cut(&tcp_frame(true, 6000, ACK), 1400)
            .into_iter()
            .chain(cut(&tcp_frame(false, 6000, ACK), 1400))
            .collect();
        for _ in 0..20_000 {
            let mut frame = bases[(next() as usize) % bases.len()].clone();
            for _ in 0..(next() % 3) {
                let at = (next() as usize) % frame.len();
                frame[at] = next() as u8;
            }
            frame.truncate((next() as usize) % (frame.len() + 1));
            match c.offer(&frame) {
                Offer::Complete | Offer::Mismatch | Offer::Alone => {
                    let _ = c.take();
                }
                Offer::Joined => {}
            }
        }
    }
}
