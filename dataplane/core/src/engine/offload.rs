//! Finishing the transport checksums a sender left to its "hardware".
//!
//! A veth advertises TX checksum offload, so the kernel behind it — a pod's, or a kernel-VXLAN
//! peer's on a veth underlay — hands it TCP and UDP packets whose checksum field holds only
//! the pseudo-header sum (CHECKSUM_PARTIAL), for the device to complete. The kernel at the
//! other end of the veth trusts the skb's flag and never looks; AF_XDP delivers the bytes
//! without the flag, and whoever receives them after podlane would drop the packet as
//! corrupt. So the engine does what a NIC does: a checksum equal to the folded pseudo-header
//! sum is a partial one, and is completed over the segment. A correct checksum equals that
//! value only when the segment's own bytes sum to zero (then the completed value is the same
//! one's-complement zero), so complete packets pass through untouched.
//!
//! Except for a TAP pod and the host interface: what is written to them carries a virtio-net
//! header, which can say NEEDS_CSUM just as the kernel's skb flag does, so a partial checksum
//! goes to them as it came (`partial_checksum` tells where it sits) and the receiving kernel
//! trusts it as it would from a veth. Summing it here only to have that kernel skip it would
//! cost a pass over every segment. So a checksum is finished only where a frame leaves as
//! bytes with no flag: to a veth pod or the underlay. `finish_checksum_at` finishes one the
//! kernel flagged by its offsets, whatever the protocol (the host interface's queue uses it for
//! what `partial_checksum` does not recognise).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::checksum::{fold, pseudo_header_v4, pseudo_header_v6, sum, transport_checksum};
use crate::wire::{Ipv6Packet, be16};

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Where a partial TCP or UDP checksum sits in an IP packet: what a virtio-net header's
/// `csum_start` / `csum_offset` say for it (relative to the IP header here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialChecksum {
    /// Where the transport header starts: the checksum covers from here to the end.
    pub start: usize,
    /// Where its checksum field is, from `start`.
    pub offset: usize,
    /// The pseudo-header's sum, which the field holds.
    pseudo: u32,
}

/// The partial TCP or UDP checksum of the IP packet `ip` (IPv4 or IPv6, exactly the packet's
/// length), if its checksum field holds one; `None` for a complete checksum, a fragment,
/// another protocol or a packet too short to tell.
#[inline]
pub fn partial_checksum(ip: &[u8]) -> Option<PartialChecksum> {
    let first = *ip.first()?;
    let (start, protocol, pseudo) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ip.len() < ihl.max(20) || be16(ip, 6) & 0x3fff != 0 {
                return None;
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            let protocol = ip[9];
            let len = ip.len() - ihl;
            (ihl, protocol, pseudo_header_v4(src, dst, protocol, len as u16))
        }
        6 => {
            let packet = Ipv6Packet::new_checked(ip).ok()?;
            let loc = packet.find_l4().ok()?;
            if loc.fragment || loc.later_fragment || loc.offset > ip.len() {
                return None;
            }
            let protocol = u8::from(loc.protocol);
            let (src, dst): (Ipv6Addr, Ipv6Addr) = (packet.src_addr(), packet.dst_addr());
            let len = (ip.len() - loc.offset) as u32;
            (loc.offset, protocol, pseudo_header_v6(src, dst, protocol, len))
        }
        _ => return None,
    };
    let (offset, min_len) = match protocol {
        TCP => (16, 20),
        UDP => (6, 8),
        _ => return None,
    };
    if ip.len() - start < min_len {
        return None;
    }
    let current = be16(ip, start + offset);
    // UDP over IPv4 with no checksum: nothing to finish.
    if (protocol == UDP && current == 0) || current != fold(u64::from(pseudo)) {
        return None;
    }
    Some(PartialChecksum { start, offset, pseudo })
}

/// Completes a partial TCP or UDP checksum in the IP packet `ip` (IPv4 or IPv6, exactly the
/// packet's length). Fragments and other protocols are left alone. Returns whether it wrote.
#[inline]
pub fn finish_partial_checksum(ip: &mut [u8]) -> bool {
    let Some(PartialChecksum { start, offset, pseudo }) = partial_checksum(ip) else {
        return false;
    };
    let segment = &mut ip[start..];
    segment[offset..offset + 2].fill(0);
    let checksum = transport_checksum(pseudo, segment);
    segment[offset..offset + 2].copy_from_slice(&checksum.to_be_bytes());
    true
}

/// Completes a checksum left partial at `start + offset` of `ip`, where a virtio-net header
/// (the kernel's skb) says it is, whatever the protocol: the field holds the seed (for TCP and
/// UDP, the pseudo-header's sum) and the checksum covers everything from `start` to the end.
/// What the kernel's `skb_checksum_help` does, a result of 0 written as 0xffff as it does.
/// `false`, with nothing written, when the field does not lie inside the packet.
pub fn finish_checksum_at(ip: &mut [u8], start: usize, offset: usize) -> bool {
    let field = start.saturating_add(offset);
    if start >= ip.len() || field.saturating_add(2) > ip.len() {
        return false;
    }
    let checksum = match !sum(0, &ip[start..]) {
        0 => 0xffff,
        value => value,
    };
    ip[field..field + 2].copy_from_slice(&checksum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_v4(payload: &[u8]) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .tcp(40000, 80, 1, 1000);
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    /// A complete checksum verifies: the segment plus pseudo-header sums to 0xffff.
    fn verifies_v4(ip: &[u8]) -> bool {
        let pseudo = pseudo_header_v4(
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            ip[9],
            (ip.len() - 20) as u16,
        );
        sum(pseudo, &ip[20..]) == 0xffff
    }

    #[test]
    fn completes_a_partial_tcp_checksum_as_the_kernel_leaves_it() {
        let mut ip = tcp_v4(b"hello, pod");
        let good = ip.clone();
        // What a pod's kernel writes with TX offload: the folded pseudo-header sum.
        let pseudo = pseudo_header_v4(
            [10, 244, 1, 2].into(),
            [10, 244, 2, 2].into(),
            6,
            (ip.len() - 20) as u16,
        );
        ip[36..38].copy_from_slice(&fold(u64::from(pseudo)).to_be_bytes());
        assert!(!verifies_v4(&ip));
        assert!(finish_partial_checksum(&mut ip));
        assert!(verifies_v4(&ip));
        assert_eq!(ip, good);
    }

    #[test]
    fn leaves_complete_checksums_and_zero_udp_alone() {
        let mut ip = tcp_v4(b"already fine");
        let before = ip.clone();
        assert!(!finish_partial_checksum(&mut ip));
        assert_eq!(ip, before);

        let builder = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2);
        let mut udp = Vec::new();
        builder.write(&mut udp, b"x").unwrap();
        udp[26..28].fill(0); // IPv4 UDP without a checksum
        assert!(!finish_partial_checksum(&mut udp));
        assert_eq!(&udp[26..28], &[0, 0]);
    }

    #[test]
    fn completes_partial_udp_over_ipv6() {
        let builder = etherparse::PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64).udp(5000, 6000);
        let mut ip = Vec::new();
        builder.write(&mut ip, b"payload bytes").unwrap();
        let good = ip.clone();
        let len = (ip.len() - 40) as u32;
        let pseudo =
            pseudo_header_v6(Ipv6Addr::from([0xfd; 16]), Ipv6Addr::from([0xfe; 16]), 17, len);
        ip[46..48].copy_from_slice(&fold(u64::from(pseudo)).to_be_bytes());
        assert!(finish_partial_checksum(&mut ip));
        assert_eq!(ip, good);
    }

    #[test]
    fn completes_by_the_offsets_as_the_kernel_does() {
        let mut ip = tcp_v4(b"hello, node");
        let good = ip.clone();
        let pseudo = pseudo_header_v4([10, 244, 1, 2].into(), [10, 244, 2, 2].into(), 6, 31);
        ip[36..38].copy_from_slice(&fold(u64::from(pseudo)).to_be_bytes());
        assert!(finish_checksum_at(&mut ip, 20, 16));
        assert_eq!(ip, good, "the same checksum as the sender's");
        for (start, offset) in [(ip.len(), 0), (ip.len() - 1, 0), (20, usize::MAX), (usize::MAX, 1)]
        {
            let before = ip.clone();
            assert!(!finish_checksum_at(&mut ip, start, offset), "{start} + {offset}");
            assert_eq!(ip, before);
        }
    }

    #[test]
    fn never_panics_on_short_or_odd_input() {
        for len in 0..64 {
            let mut bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 0x45) as u8).collect();
            let _ = finish_partial_checksum(&mut bytes);
            if let Some(b) = bytes.first_mut() {
                *b = 0x60;
            }
            let _ = finish_partial_checksum(&mut bytes);
        }
    }
}
