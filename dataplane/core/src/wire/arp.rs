//! ARP (RFC 826) for Ethernet hardware and IPv4 protocol addresses — the only kind a pod sends,
//! and the only kind the gateway answers.

use std::net::Ipv4Addr;

use super::{MacAddr, WireError, be16, put16};

/// ARP operation codes (RFC 826, RFC 5494).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOperation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(value: u16) -> Self {
        match value {
            1 => Self::Request,
            2 => Self::Reply,
            other => Self::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(value: ArpOperation) -> Self {
        match value {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

mod field {
    use std::ops::Range;
    pub(super) const HTYPE: usize = 0;
    pub(super) const PTYPE: usize = 2;
    pub(super) const HLEN: usize = 4;
    pub(super) const PLEN: usize = 5;
    pub(super) const OPER: usize = 6;
    pub(super) const SHA: Range<usize> = 8..14;
    pub(super) const SPA: Range<usize> = 14..18;
    pub(super) const THA: Range<usize> = 18..24;
    pub(super) const TPA: Range<usize> = 24..28;
}

/// RFC 826 packet with htype 1 (Ethernet), ptype 0x0800 (IPv4), hlen 6, plen 4: 28 bytes.
#[derive(Debug, Clone, Copy)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub const LEN: usize = field::TPA.end;

    pub fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Accepts only Ethernet/IPv4 ARP; any other hardware or protocol type is `Unsupported`.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < Self::LEN {
            return Err(WireError::Truncated);
        }
        if be16(b, field::HTYPE) != 1
            || be16(b, field::PTYPE) != 0x0800
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(WireError::Unsupported);
        }
        Ok(ArpPacket { buffer })
    }

    pub fn operation(&self) -> ArpOperation {
        be16(self.buffer.as_ref(), field::OPER).into()
    }

    pub fn sender_hardware_addr(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SHA]);
        MacAddr(m)
    }

    pub fn sender_protocol_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn target_hardware_addr(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::THA]);
        MacAddr(m)
    }

    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::TPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes the fixed Ethernet/IPv4 preamble (htype, ptype, hlen, plen).
    pub fn set_ethernet_ipv4(&mut self) {
        let b = self.buffer.as_mut();
        put16(b, field::HTYPE, 1);
        put16(b, field::PTYPE, 0x0800);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
    }

    pub fn set_operation(&mut self, op: ArpOperation) {
        put16(self.buffer.as_mut(), field::OPER, op.into());
    }

    pub fn set_sender_hardware_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&mac.0);
    }

    pub fn set_sender_protocol_addr(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&ip.octets());
    }

    pub fn set_target_hardware_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&mac.0);
    }

    pub fn set_target_protocol_addr(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod asking who has 169.254.1.1 (as captured from iputils arping).
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // preamble, request
        0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02, 10, 244, 1, 2, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 169, 254, 1, 1, // target
    ];

    #[test]
    fn parse_request() {
        let arp = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(arp.operation(), ArpOperation::Request);
        assert_eq!(arp.sender_hardware_addr(), MacAddr([0x0a, 0x58, 0x0a, 0xf4, 1, 2]));
        assert_eq!(arp.sender_protocol_addr(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(arp.target_hardware_addr(), MacAddr::ZERO);
        assert_eq!(arp.target_protocol_addr(), Ipv4Addr::new(169, 254, 1, 1));
    }

    #[test]
    fn emit_round_trip() {
        let mut bytes = [0u8; 28];
        let mut arp = ArpPacket::new_unchecked(&mut bytes[..]);
        arp.set_ethernet_ipv4();
        arp.set_operation(ArpOperation::Request);
        arp.set_sender_hardware_addr(MacAddr([0x0a, 0x58, 0x0a, 0xf4, 1, 2]));
        arp.set_sender_protocol_addr(Ipv4Addr::new(10, 244, 1, 2));
        arp.set_target_protocol_addr(Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(bytes, REQUEST);
    }

    #[test]
    fn rejects_short_and_foreign() {
        assert_eq!(ArpPacket::new_checked(&REQUEST[..27]).unwrap_err(), WireError::Truncated);
        let mut ipv6ish = REQUEST;
        ipv6ish[2] = 0x86;
        assert_eq!(ArpPacket::new_checked(&ipv6ish[..]).unwrap_err(), WireError::Unsupported);
    }
}
