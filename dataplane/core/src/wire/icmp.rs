//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) headers — type, code, checksum — the error
//! messages a router sends (time exceeded, fragmentation needed / packet too big), plus the
//! two neighbour-discovery messages the gateway handles (RFC 4861 §4.3 and §4.4).

use std::net::Ipv6Addr;

use super::{MacAddr, WireError, be16, put16};

mod field {
    pub(super) const TYPE: usize = 0;
    pub(super) const CODE: usize = 1;
    pub(super) const CHECKSUM: usize = 2;
    pub(super) const REST: usize = 4;
    /// Neighbour solicitation / advertisement: target address, then options.
    pub(super) const ND_TARGET: usize = 8;
    pub(super) const ND_OPTIONS: usize = 24;
}

/// ICMPv4 message types and codes podlane sends or looks at (RFC 792, RFC 1191).
pub mod icmpv4_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Code of [`DEST_UNREACHABLE`]: fragmentation needed and DF set; the next-hop MTU is in
    /// the low 16 bits of the rest of the header (RFC 1191 §4).
    pub const CODE_FRAG_NEEDED: u8 = 4;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    /// Code of [`TIME_EXCEEDED`]: TTL exceeded in transit.
    pub const CODE_TTL_EXCEEDED: u8 = 0;
    /// Code 0: the pointer (the first byte of the rest of the header) names the header byte
    /// at fault.
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// ICMPv6 message types podlane looks at.
pub mod icmpv6_type {
    /// The MTU is the whole rest of the header (RFC 4443 §3.2).
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Code 0: hop limit exceeded in transit (RFC 4443 §3.3).
    pub const TIME_EXCEEDED: u8 = 3;
    /// The pointer is the whole rest of the header (RFC 4443 §3.4).
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
    pub const REDIRECT: u8 = 137;
}

/// NDP option types (RFC 4861 §4.6).
pub mod nd_option {
    pub const SOURCE_LINK_ADDR: u8 = 1;
    pub const TARGET_LINK_ADDR: u8 = 2;
}

/// Neighbour advertisement flag bits (RFC 4861 §4.4), in the first byte after the checksum.
pub mod na_flags {
    pub const ROUTER: u8 = 0x80;
    pub const SOLICITED: u8 = 0x40;
    pub const OVERRIDE: u8 = 0x20;
}

/// RFC 792: type, code, checksum, then a type-specific rest of header.
#[derive(Debug, Clone, Copy)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    pub const HEADER_LEN: usize = field::REST;

    pub fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < field::REST {
            return Err(WireError::Truncated);
        }
        Ok(Icmpv4Packet { buffer })
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Writes an error message header: type, code, the 32-bit rest of the header (the
    /// next-hop MTU for fragmentation needed, zero for time exceeded), checksum zeroed. The
    /// offending datagram follows in the buffer; the caller fills the checksum over both.
    /// `Err(Truncated)`, writing nothing, when the buffer is shorter than 8 bytes.
    pub fn emit_error(&mut self, msg_type: u8, code: u8, rest: u32) -> Result<(), WireError> {
        let b = self.buffer.as_mut();
        if b.len() < field::REST + 4 {
            return Err(WireError::Truncated);
        }
        b[field::TYPE] = msg_type;
        b[field::CODE] = code;
        put16(b, field::CHECKSUM, 0);
        b[field::REST..field::REST + 4].copy_from_slice(&rest.to_be_bytes());
        Ok(())
    }

    pub fn set_checksum(&mut self, value: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, value);
    }
}

/// RFC 4443 §2.1: type, code, checksum; for NS/NA, the target address and options follow.
#[derive(Debug, Clone, Copy)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    pub const HEADER_LEN: usize = field::REST;
    /// Length of a neighbour solicitation or advertisement without options.
    pub const ND_LEN: usize = field::ND_OPTIONS;

    pub fn new_unchecked(buffer: T) -> Self {
        Icmpv6Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < field::REST {
            return Err(WireError::Truncated);
        }
        Ok(Icmpv6Packet { buffer })
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The target address of a neighbour solicitation or advertisement; `None` when the
    /// message is too short to hold one.
    pub fn nd_target(&self) -> Option<Ipv6Addr> {
        let bytes = self.buffer.as_ref().get(field::ND_TARGET..field::ND_OPTIONS)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(bytes);
        Some(Ipv6Addr::from(a))
    }

    /// The link-layer address carried in the first NDP option of `option_type`, if any.
    /// Walks the options with bounds checks; a zero-length option ends the walk (RFC 4861
    /// §4.6 says such a message must be discarded, and the caller may check
    /// [`nd_options_valid`](Self::nd_options_valid)).
    pub fn nd_link_addr_option(&self, option_type: u8) -> Option<MacAddr> {
        let mut options = self.buffer.as_ref().get(field::ND_OPTIONS..)?;
        while options.len() >= 2 {
            let len = usize::from(options[1]) * 8;
            if len == 0 || len > options.len() {
                return None;
            }
            if options[0] == option_type && len >= 8 {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&options[2..8]);
                return Some(MacAddr(mac));
            }
            options = &options[len..];
        }
        None
    }

    /// Every NDP option has a non-zero length and fits in the message (RFC 4861 §4.6).
    pub fn nd_options_valid(&self) -> bool {
        let Some(mut options) = self.buffer.as_ref().get(field::ND_OPTIONS..) else {
            return false;
        };
        while !options.is_empty() {
            if options.len() < 2 {
                return false;
            }
            let len = usize::from(options[1]) * 8;
            if len == 0 || len > options.len() {
                return false;
            }
            options = &options[len..];
        }
        true
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    pub fn set_checksum(&mut self, value: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Writes an error message header: type, code, the 32-bit rest of the header (the MTU for
    /// packet too big, zero for time exceeded), checksum zeroed (the caller fills it).
    /// `Err(Truncated)`, writing nothing, when the buffer is shorter than 8 bytes.
    pub fn emit_error(&mut self, msg_type: u8, code: u8, rest: u32) -> Result<(), WireError> {
        let b = self.buffer.as_mut();
        if b.len() < field::REST + 4 {
            return Err(WireError::Truncated);
        }
        b[field::TYPE] = msg_type;
        b[field::CODE] = code;
        put16(b, field::CHECKSUM, 0);
        b[field::REST..field::REST + 4].copy_from_slice(&rest.to_be_bytes());
        Ok(())
    }

    /// Writes a neighbour advertisement for `target` with `flags` ([`na_flags`]) and one
    /// target link-layer address option: 32 bytes, checksum zeroed (the caller fills it).
    /// `Err(Truncated)`, writing nothing, when the buffer is shorter.
    pub fn emit_neighbor_advert(
        &mut self,
        target: Ipv6Addr,
        flags: u8,
        mac: MacAddr,
    ) -> Result<(), WireError> {
        let b = self.buffer.as_mut();
        if b.len() < field::ND_OPTIONS + 8 {
            return Err(WireError::Truncated);
        }
        b[field::TYPE] = icmpv6_type::NEIGHBOR_ADVERT;
        b[field::CODE] = 0;
        put16(b, field::CHECKSUM, 0);
        b[field::REST..field::ND_TARGET].copy_from_slice(&[flags, 0, 0, 0]);
        b[field::ND_TARGET..field::ND_OPTIONS].copy_from_slice(&target.octets());
        b[field::ND_OPTIONS] = nd_option::TARGET_LINK_ADDR;
        b[field::ND_OPTIONS + 1] = 1;
        b[field::ND_OPTIONS + 2..field::ND_OPTIONS + 8].copy_from_slice(&mac.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_headers_carry_type_code_and_rest() {
        let mut b = [0xffu8; 12];
        let mut icmp = Icmpv4Packet::new_checked(&mut b[..]).unwrap();
        icmp.emit_error(icmpv4_type::DEST_UNREACHABLE, icmpv4_type::CODE_FRAG_NEEDED, 1450)
            .unwrap();
        assert_eq!(&b[..8], &[3, 4, 0, 0, 0, 0, 0x05, 0xaa]);
        assert_eq!(&b[8..], &[0xff; 4], "the quoted datagram after the header is left alone");
        let mut b = [0u8; 8];
        let mut icmp = Icmpv6Packet::new_checked(&mut b[..]).unwrap();
        icmp.emit_error(icmpv6_type::PACKET_TOO_BIG, 0, 1430).unwrap();
        assert_eq!(b, [2, 0, 0, 0, 0, 0, 0x05, 0x96]);
        let mut short = [0u8; 6];
        let mut icmp = Icmpv4Packet::new_checked(&mut short[..]).unwrap();
        assert_eq!(icmp.emit_error(icmpv4_type::TIME_EXCEEDED, 0, 0), Err(WireError::Truncated));
    }

    /// Neighbour solicitation for fe80::1 with a source link-layer address option.
    fn solicitation() -> Vec<u8> {
        let mut b = vec![135, 0, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&"fe80::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&[1, 1, 0x0a, 0x58, 0, 0, 0, 2]);
        b
    }

    #[test]
    fn parse_solicitation() {
        let b = solicitation();
        let icmp = Icmpv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(icmp.msg_type(), icmpv6_type::NEIGHBOR_SOLICIT);
        assert_eq!(icmp.nd_target(), Some("fe80::1".parse().unwrap()));
        assert!(icmp.nd_options_valid());
        assert_eq!(
            icmp.nd_link_addr_option(nd_option::SOURCE_LINK_ADDR),
            Some(MacAddr([0x0a, 0x58, 0, 0, 0, 2]))
        );
        assert_eq!(icmp.nd_link_addr_option(nd_option::TARGET_LINK_ADDR), None);
    }

    #[test]
    fn bad_options() {
        let mut b = solicitation();
        b[25] = 0;
        let icmp = Icmpv6Packet::new_checked(&b[..]).unwrap();
        assert!(!icmp.nd_options_valid());
        assert_eq!(icmp.nd_link_addr_option(nd_option::SOURCE_LINK_ADDR), None);
        let mut b = solicitation();
        b[25] = 2; // claims 16 bytes, has 8
        assert!(!Icmpv6Packet::new_checked(&b[..]).unwrap().nd_options_valid());
        assert_eq!(Icmpv6Packet::new_checked(&b[..10]).unwrap().nd_target(), None);
    }

    #[test]
    fn emit_advert() {
        let mut b = [0u8; 32];
        let mac = MacAddr([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
        let target = "fe80::1".parse().unwrap();
        Icmpv6Packet::new_unchecked(&mut b[..])
            .emit_neighbor_advert(
                target,
                na_flags::ROUTER | na_flags::SOLICITED | na_flags::OVERRIDE,
                mac,
            )
            .unwrap();
        let mut short = [0u8; 31];
        assert_eq!(
            Icmpv6Packet::new_checked(&mut short[..]).unwrap().emit_neighbor_advert(target, 0, mac),
            Err(WireError::Truncated)
        );
        let icmp = Icmpv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(icmp.msg_type(), icmpv6_type::NEIGHBOR_ADVERT);
        assert_eq!(b[4], 0xe0);
        assert_eq!(icmp.nd_target(), Some(target));
        assert_eq!(icmp.nd_link_addr_option(nd_option::TARGET_LINK_ADDR), Some(mac));
    }

    #[test]
    fn icmpv4_fields() {
        let b = [8u8, 0, 0xf7, 0xff, 0, 0, 0, 0];
        let icmp = Icmpv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code(), icmp.checksum()), (8, 0, 0xf7ff));
        assert_eq!(Icmpv4Packet::new_checked(&b[..3]).unwrap_err(), WireError::Truncated);
    }
}
