//! IPv4 headers (RFC 791 §3.1), options included: the header length comes from IHL, and the
//! payload ends where Total Length says (Ethernet may pad short frames beyond it).

use std::net::Ipv4Addr;

use super::checksum;
use super::{IpProtocol, WireError, be16, put16};

mod field {
    pub(super) const VER_IHL: usize = 0;
    pub(super) const DSCP_ECN: usize = 1;
    pub(super) const LENGTH: usize = 2;
    pub(super) const IDENT: usize = 4;
    pub(super) const FLAGS_FRAG: usize = 6;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: usize = 10;
    pub(super) const SRC: usize = 12;
    pub(super) const DST: usize = 16;
    pub(super) const OPTIONS: usize = 20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// RFC 791 §3.1:
/// ```text
///  0                   1                   2                   3
/// |Version|  IHL  |Type of Service|          Total Length         |
/// |         Identification        |Flags|      Fragment Offset    |
/// |  Time to Live |    Protocol   |         Header Checksum       |
/// |                       Source Address                          |
/// |                    Destination Address                        |
/// |                    Options                    |    Padding    |
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Length of a header without options.
    pub const MIN_HEADER_LEN: usize = field::OPTIONS;

    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Verifies version 4, IHL ≥ 5, the header inside the buffer, and
    /// header length ≤ Total Length ≤ buffer length. The checksum is not verified here
    /// (see [`verify_checksum`](Self::verify_checksum)).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < field::OPTIONS {
            return Err(WireError::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::BadVersion);
        }
        let header_len = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        let total_len = usize::from(be16(b, field::LENGTH));
        if header_len < field::OPTIONS || header_len > total_len || total_len > b.len() {
            return Err(WireError::BadLength);
        }
        Ok(Ipv4Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_MF != 0
    }

    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FRAG_OFFSET_MASK
    }

    /// True for any fragment (first or not): MF set or a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> IpProtocol {
        self.buffer.as_ref()[field::PROTOCOL].into()
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[field::SRC], b[field::SRC + 1], b[field::SRC + 2], b[field::SRC + 3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[field::DST], b[field::DST + 1], b[field::DST + 2], b[field::DST + 3])
    }

    /// The options bytes (empty when IHL is 5).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }

    /// True when the header sums to 0xffff (RFC 1071).
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        header_sum(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }

    /// The payload up to Total Length, excluding any Ethernet padding.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Writes version 4 and the header length (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Sets the ECN bits (the low two of the TOS byte) and patches the header checksum
    /// incrementally (RFC 1624), as a router that marks CE does.
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = self.buffer.as_mut();
        let old_word = be16(b, field::VER_IHL);
        b[field::DSCP_ECN] = (b[field::DSCP_ECN] & !0x03) | (ecn & 0x03);
        let new_word = be16(b, field::VER_IHL);
        let updated = checksum::update_u16(be16(b, field::CHECKSUM), old_word, new_word);
        put16(b, field::CHECKSUM, updated);
    }

    pub fn set_total_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), field::LENGTH, len);
    }

    pub fn set_ident(&mut self, ident: u16) {
        put16(self.buffer.as_mut(), field::IDENT, ident);
    }

    /// Sets the flags (DF only; MF is never set by podlane) and a zero fragment offset.
    pub fn set_dont_frag_no_offset(&mut self, dont_frag: bool) {
        put16(self.buffer.as_mut(), field::FLAGS_FRAG, if dont_frag { FLAG_DF } else { 0 });
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol.into();
    }

    pub fn set_checksum(&mut self, value: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC..field::SRC + 4].copy_from_slice(&addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST..field::DST + 4].copy_from_slice(&addr.octets());
    }

    /// Recomputes the header checksum from scratch.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let len = self.header_len();
        let value = !header_sum(&self.buffer.as_ref()[..len]);
        self.set_checksum(value);
    }

    /// Decrements TTL by one and patches the checksum incrementally (RFC 1624), as a router
    /// does. Returns the new TTL; the caller drops the packet first when TTL ≤ 1.
    pub fn decrement_ttl(&mut self) -> u8 {
        let b = self.buffer.as_mut();
        let old_word = be16(b, field::TTL);
        b[field::TTL] = b[field::TTL].wrapping_sub(1);
        let new_word = be16(b, field::TTL);
        let updated = checksum::update_u16(be16(b, field::CHECKSUM), old_word, new_word);
        put16(b, field::CHECKSUM, updated);
        b[field::TTL]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[start..end]
    }
}

/// What a Linux router makes of a received packet's IPv4 options (`ip_options_compile` in
/// net/ipv4/ip_options.c, then `ip_rcv_options`), so that podlane forwards and drops what the
/// kernel would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionsVerdict {
    /// Forwarded (unknown options included: the kernel ignores them on received packets).
    Valid,
    /// Loose or strict source routing, well formed: dropped without an answer by a node whose
    /// `accept_source_route` is 0, Linux's default for IPv4 forwarding.
    SourceRouted,
    /// Malformed: dropped and answered with ICMP parameter problem, whose pointer is the
    /// offset of the byte at fault from the header's first byte.
    Invalid { pointer: u8 },
}

/// Option types (RFC 791, RFC 2113, FIPS 188).
mod option {
    pub(super) const END: u8 = 0;
    pub(super) const NOOP: u8 = 1;
    pub(super) const RECORD_ROUTE: u8 = 7;
    pub(super) const TIMESTAMP: u8 = 68;
    pub(super) const LOOSE_SOURCE_ROUTE: u8 = 131;
    pub(super) const CIPSO: u8 = 134;
    pub(super) const STRICT_SOURCE_ROUTE: u8 = 137;
    pub(super) const ROUTER_ALERT: u8 = 148;
}

/// Checks the options of a received IPv4 header (`options`: the bytes after the fixed 20) as
/// the kernel's forwarding does.
pub fn check_options(options: &[u8]) -> OptionsVerdict {
    let invalid = |at: usize| OptionsVerdict::Invalid {
        pointer: u8::try_from(Ipv4Packet::<&[u8]>::MIN_HEADER_LEN + at).unwrap_or(u8::MAX),
    };
    let (mut source_route, mut record_route, mut timestamp) = (false, false, false);
    let mut i = 0;
    while i < options.len() {
        let kind = options[i];
        match kind {
            // The rest is padding (the kernel overwrites whatever follows with END).
            option::END => break,
            option::NOOP => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let Some(&len) = options.get(i + 1) else { return invalid(i) };
        let len = usize::from(len);
        if len < 2 || len > options.len() - i {
            return invalid(i);
        }
        let opt = &options[i..i + len];
        match kind {
            option::LOOSE_SOURCE_ROUTE | option::STRICT_SOURCE_ROUTE => {
                if len < 3 {
                    return invalid(i + 1);
                }
                if opt[2] < 4 {
                    return invalid(i + 2);
                }
                if source_route {
                    // Two source routes (RFC 1812 §5.2.4.1).
                    return invalid(i);
                }
                source_route = true;
            }
            option::RECORD_ROUTE => {
                if record_route {
                    return invalid(i);
                }
                if len < 3 {
                    return invalid(i + 1);
                }
                let pointer = usize::from(opt[2]);
                if pointer < 4 || (pointer <= len && pointer + 3 > len) {
                    return invalid(i + 2);
                }
                record_route = true;
            }
            option::TIMESTAMP => {
                if timestamp {
                    return invalid(i);
                }
                if len < 4 {
                    return invalid(i + 1);
                }
                let pointer = usize::from(opt[2]);
                if pointer < 5 {
                    return invalid(i + 2);
                }
                if pointer <= len {
                    // Room for a timestamp at the pointer, whatever the flags; flags 1 and 3
                    // (address and timestamp) need 8 bytes. Other flags are left alone on
                    // received packets.
                    let room = match opt[3] & 0x0f {
                        1 | 3 => 7,
                        _ => 3,
                    };
                    if pointer + room > len {
                        return invalid(i + 2);
                    }
                } else if opt[3] & 0xf0 == 0xf0 {
                    // Full, and its overflow count would wrap.
                    return invalid(i + 3);
                }
                timestamp = true;
            }
            option::ROUTER_ALERT if len < 4 => return invalid(i + 1),
            // Valid only with a CIPSO domain of interpretation configured, which a node
            // without labelled networking has none of (cipso_v4_validate).
            option::CIPSO if len < 8 => return invalid(i + 1),
            option::CIPSO => return invalid(i + 2),
            _ => {}
        }
        i += len;
    }
    if source_route { OptionsVerdict::SourceRouted } else { OptionsVerdict::Valid }
}

/// One's-complement sum of a header, unrolled for the common option-less 20 bytes.
#[inline(always)]
fn header_sum(header: &[u8]) -> u16 {
    match <&[u8; 20]>::try_from(header) {
        Ok(fixed) => checksum::sum_20(fixed),
        Err(_) => checksum::sum(0, header),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_judged_as_the_kernel_forwards() {
        use OptionsVerdict::{Invalid, SourceRouted, Valid};
        let cases: &[(&[u8], OptionsVerdict)] = &[
            (&[1, 1, 1, 0], Valid),
            (&[0, 7, 7, 7], Valid),
            // Record route: room for one address, pointer at it; full (pointer past the end).
            (&[7, 7, 4, 0, 0, 0, 0, 0], Valid),
            (&[7, 7, 8, 10, 0, 0, 1, 0], Valid),
            // Record route whose length runs past the header.
            (&[7, 39, 4, 0, 0, 0, 0, 0], Invalid { pointer: 20 }),
            // Record route pointer below 4, or without room for the address it points at.
            (&[7, 7, 3, 0, 0, 0, 0, 0], Invalid { pointer: 22 }),
            (&[7, 7, 5, 0, 0, 0, 0, 0], Invalid { pointer: 22 }),
            // Timestamp of length 0; of length 3; pointer 4.
            (&[68, 0, 5, 0], Invalid { pointer: 20 }),
            (&[68, 3, 5, 0], Invalid { pointer: 21 }),
            (&[68, 8, 4, 0, 0, 0, 0, 0], Invalid { pointer: 22 }),
            (&[68, 8, 5, 0, 0, 0, 0, 0], Valid),
            // Address and timestamp (flag 1) need 8 bytes at the pointer.
            (&[68, 8, 5, 1, 0, 0, 0, 0], Invalid { pointer: 22 }),
            // An unknown flag still needs room for a timestamp at the pointer.
            (&[68, 8, 7, 2, 0, 0, 0, 0], Invalid { pointer: 22 }),
            (&[68, 8, 5, 2, 0, 0, 0, 0], Valid),
            // Full, overflow counter at 15: it would wrap.
            (&[68, 8, 9, 0xf0, 0, 0, 0, 0], Invalid { pointer: 23 }),
            (&[68, 8, 9, 0x10, 0, 0, 0, 0], Valid),
            // Loose source route: well formed, dropped; twice: malformed.
            (&[131, 7, 4, 10, 0, 0, 1, 0], SourceRouted),
            (&[131, 3, 4, 137, 3, 4, 0, 0], Invalid { pointer: 23 }),
            (&[137, 7, 3, 10, 0, 0, 1, 0], Invalid { pointer: 22 }),
            // Router alert; unknown options pass; CIPSO without a domain does not.
            (&[148, 4, 0, 0], Valid),
            (&[148, 2, 0, 0], Invalid { pointer: 21 }),
            (&[130, 4, 1, 2], Valid),
            (&[134, 8, 0, 0, 0, 3, 1, 2], Invalid { pointer: 22 }),
            // A type without its length byte.
            (&[1, 1, 1, 7], Invalid { pointer: 23 }),
        ];
        for (options, expected) in cases {
            assert_eq!(check_options(options), *expected, "{options:?}");
        }
    }

    /// ICMP echo 10.244.1.2 → 10.244.2.3 with a 4-byte Record Route-style option (IHL 6).
    fn fixture() -> Vec<u8> {
        let mut b = vec![
            0x46, 0x00, 0x00, 0x20, 0xbe, 0xef, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 244, 1, 2,
            10, 244, 2, 3, 0x01, 0x01, 0x01, 0x00, // options: NOP NOP NOP EOL
            0x08, 0x00, 0xf7, 0xff, 0x00, 0x00, 0x00, 0x00, // ICMP echo request
            0x00, 0x00, // Ethernet padding beyond Total Length
        ];
        let c = checksum::checksum(&b[..24]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        b
    }

    #[test]
    fn parse_with_options_and_padding() {
        let bytes = fixture();
        let ip = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(ip.header_len(), 24);
        assert_eq!(ip.options(), &[1, 1, 1, 0]);
        assert_eq!(ip.total_len(), 32);
        assert_eq!(ip.ident(), 0xbeef);
        assert!(ip.dont_frag());
        assert!(!ip.is_fragment());
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), IpProtocol::Icmp);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!(ip.payload().len(), 8, "padding is not payload");
        assert!(ip.verify_checksum());
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut bytes = fixture();
        let mut ip = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(ip.decrement_ttl(), 63);
        assert!(ip.verify_checksum());
        let incremental = ip.checksum();
        ip.fill_checksum();
        assert_eq!(ip.checksum(), incremental);
    }

    #[test]
    fn emit_round_trip() {
        let original = fixture();
        let mut bytes = vec![0u8; original.len()];
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        ip.set_version_and_header_len(24);
        ip.set_total_len(32);
        ip.set_ident(0xbeef);
        ip.set_dont_frag_no_offset(true);
        ip.set_ttl(64);
        ip.set_protocol(IpProtocol::Icmp);
        ip.set_src_addr(Ipv4Addr::new(10, 244, 1, 2));
        ip.set_dst_addr(Ipv4Addr::new(10, 244, 2, 3));
        bytes[20..].copy_from_slice(&original[20..]);
        Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        assert_eq!(bytes, original);
    }

    #[test]
    fn impossible_lengths() {
        let bytes = fixture();
        assert_eq!(Ipv4Packet::new_checked(&bytes[..19]).unwrap_err(), WireError::Truncated);
        let mut b = bytes.clone();
        b[0] = 0x64;
        assert_eq!(Ipv4Packet::new_checked(&b[..]).unwrap_err(), WireError::BadVersion);
        let mut b = bytes.clone();
        b[0] = 0x44; // IHL 4 < 5
        assert_eq!(Ipv4Packet::new_checked(&b[..]).unwrap_err(), WireError::BadLength);
        let mut b = bytes.clone();
        b[0] = 0x4f; // IHL 15 = 60 bytes > total length
        assert_eq!(Ipv4Packet::new_checked(&b[..]).unwrap_err(), WireError::BadLength);
        let mut b = bytes.clone();
        b[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(Ipv4Packet::new_checked(&b[..]).unwrap_err(), WireError::BadLength);
    }

    #[test]
    fn fragments_detected() {
        let mut b = fixture();
        b[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().is_fragment());
        b[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        let ip = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(ip.is_fragment());
        assert_eq!(ip.frag_offset(), 16);
    }

    #[test]
    fn ecn_marking_keeps_the_checksum_valid() {
        let mut b = fixture();
        let dscp = b[1] & !0x03;
        let mut ip = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        ip.set_ecn(0x03);
        assert_eq!(ip.dscp_ecn(), dscp | 0x03, "DSCP kept, CE set");
        assert!(ip.verify_checksum());
    }
}
