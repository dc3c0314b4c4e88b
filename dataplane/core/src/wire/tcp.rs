//! TCP headers (RFC 9293 §3.1): ports, sequence numbers, data offset and flags. Options are
//! skipped, never interpreted: forwarding and stateless policy need only the ports.

use super::{WireError, be16, be32, put16};

mod field {
    pub(super) const SRC_PORT: usize = 0;
    pub(super) const DST_PORT: usize = 2;
    pub(super) const SEQ: usize = 4;
    pub(super) const ACK: usize = 8;
    pub(super) const OFFSET_FLAGS: usize = 12;
    pub(super) const MIN_HEADER: usize = 20;
}

/// TCP control bits (RFC 9293 §3.1, RFC 3168 for ECE/CWR).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// RFC 9293 §3.1 segment header.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const MIN_HEADER_LEN: usize = field::MIN_HEADER;

    pub fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Verifies the fixed header fits and 20 ≤ data offset × 4 ≤ buffer length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < field::MIN_HEADER {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(b[field::OFFSET_FLAGS] >> 4) * 4;
        if header_len < field::MIN_HEADER || header_len > b.len() {
            return Err(WireError::BadLength);
        }
        Ok(TcpPacket { buffer })
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }

    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK)
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFFSET_FLAGS] >> 4) * 4
    }

    /// The eight control bits; see [`flags`].
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::OFFSET_FLAGS + 1]
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    pub fn set_src_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the data offset (header length in bytes, multiple of 4) and the flags.
    pub fn set_header_len_and_flags(&mut self, header_len: usize, flag_bits: u8) {
        let b = self.buffer.as_mut();
        b[field::OFFSET_FLAGS] = ((header_len / 4) as u8) << 4;
        b[field::OFFSET_FLAGS + 1] = flag_bits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SYN 10.0.0.1:40000 → :80 with a 4-byte MSS option (data offset 6).
    const SYN: [u8; 24] = [
        0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, 0xff,
        0xff, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];

    #[test]
    fn parse_fields() {
        let tcp = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (40000, 80));
        assert_eq!(tcp.seq_number(), 1);
        assert_eq!(tcp.ack_number(), 0);
        assert_eq!(tcp.header_len(), 24);
        assert_eq!(tcp.flags(), flags::SYN);
        assert!(tcp.payload().is_empty());
    }

    #[test]
    fn emit_round_trip() {
        let mut b = SYN;
        b[..4].fill(0);
        b[12..14].fill(0);
        let mut tcp = TcpPacket::new_unchecked(&mut b[..]);
        tcp.set_src_port(40000);
        tcp.set_dst_port(80);
        tcp.set_header_len_and_flags(24, flags::SYN);
        assert_eq!(b, SYN);
    }

    #[test]
    fn impossible_lengths() {
        assert_eq!(TcpPacket::new_checked(&SYN[..19]).unwrap_err(), WireError::Truncated);
        assert_eq!(TcpPacket::new_checked(&SYN[..22]).unwrap_err(), WireError::BadLength);
        let mut b = SYN;
        b[12] = 0x40; // data offset 4 words < 5
        assert_eq!(TcpPacket::new_checked(&b[..]).unwrap_err(), WireError::BadLength);
    }
}
