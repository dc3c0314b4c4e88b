//! UDP headers (RFC 768).

use super::{WireError, be16, put16};

mod field {
    pub(super) const SRC_PORT: usize = 0;
    pub(super) const DST_PORT: usize = 2;
    pub(super) const LENGTH: usize = 4;
    pub(super) const CHECKSUM: usize = 6;
    pub(super) const PAYLOAD: usize = 8;
}

/// RFC 768: source port, destination port, length (header + data), checksum.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const HEADER_LEN: usize = field::PAYLOAD;

    pub fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Verifies the header fits and 8 ≤ Length ≤ buffer length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < field::PAYLOAD {
            return Err(WireError::Truncated);
        }
        let len = usize::from(be16(b, field::LENGTH));
        if len < field::PAYLOAD || len > b.len() {
            return Err(WireError::BadLength);
        }
        Ok(UdpPacket { buffer })
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) == field::PAYLOAD
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    pub fn set_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), field::LENGTH, len);
    }

    pub fn set_checksum(&mut self, value: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;
    use std::net::Ipv4Addr;

    /// DNS-sized datagram 10.0.0.1:53 → 10.0.0.2:33000 carrying "hi".
    const DATAGRAM: [u8; 10] = [0x00, 0x35, 0x80, 0xe8, 0x00, 0x0a, 0x00, 0x00, b'h', b'i'];

    #[test]
    fn parse_and_checksum() {
        let udp = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port(), udp.len()), (53, 33000, 10));
        assert_eq!(udp.payload(), b"hi");
        let pseudo = checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            17,
            10,
        );
        let c = checksum::transport_checksum(pseudo, &DATAGRAM);
        let mut with = DATAGRAM;
        with[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum::sum(pseudo, &with), 0xffff);
    }

    #[test]
    fn emit_round_trip() {
        let mut b = [0u8; 10];
        let mut udp = UdpPacket::new_unchecked(&mut b[..]);
        udp.set_src_port(53);
        udp.set_dst_port(33000);
        udp.set_len(10);
        udp.set_checksum(0);
        b[8..].copy_from_slice(b"hi");
        assert_eq!(b, DATAGRAM);
    }

    #[test]
    fn impossible_lengths() {
        assert_eq!(UdpPacket::new_checked(&DATAGRAM[..7]).unwrap_err(), WireError::Truncated);
        assert_eq!(UdpPacket::new_checked(&DATAGRAM[..9]).unwrap_err(), WireError::BadLength);
        let mut b = DATAGRAM;
        b[4..6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(UdpPacket::new_checked(&b[..]).unwrap_err(), WireError::BadLength);
    }
}
