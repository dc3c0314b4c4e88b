//! IPv6 headers (RFC 8200 §3) and just enough extension-header walking (§4) to find the
//! upper-layer header, or to give up cleanly on what a dataplane cannot look through (ESP,
//! chains longer than [`MAX_EXTENSION_HEADERS`]).

use std::net::Ipv6Addr;

use super::{IpProtocol, WireError, be16, be32, put16, put32};

mod field {
    pub(super) const VER_TC_FLOW: usize = 0;
    pub(super) const PAYLOAD_LEN: usize = 4;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SRC: usize = 8;
    pub(super) const DST: usize = 24;
    pub(super) const PAYLOAD: usize = 40;
}

/// Longest extension-header chain walked before giving up (a defence against crafted chains).
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Where the upper-layer header of an IPv6 packet starts, as found by [`Ipv6Packet::find_l4`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Location {
    /// The upper-layer protocol (TCP, UDP, ICMPv6, ...), or `Ipv6NoNxt` when there is none.
    pub protocol: IpProtocol,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub offset: usize,
    /// A fragment header was walked (first fragment or later).
    pub fragment: bool,
    /// A fragment other than the first: there is no upper-layer header in this packet.
    pub later_fragment: bool,
}

/// RFC 8200 §3:
/// ```text
/// |Version| Traffic Class |           Flow Label                  |
/// |         Payload Length        |  Next Header  |   Hop Limit   |
/// |                 Source Address (128 bits)                     |
/// |              Destination Address (128 bits)                   |
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const HEADER_LEN: usize = field::PAYLOAD;

    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Verifies version 6 and 40 + Payload Length ≤ buffer length. Jumbograms (payload length
    /// 0 with a hop-by-hop jumbo option) are not supported and read as an empty payload.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < field::PAYLOAD {
            return Err(WireError::Truncated);
        }
        if b[field::VER_TC_FLOW] >> 4 != 6 {
            return Err(WireError::BadVersion);
        }
        if field::PAYLOAD + usize::from(be16(b, field::PAYLOAD_LEN)) > b.len() {
            return Err(WireError::BadLength);
        }
        Ok(Ipv6Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn traffic_class(&self) -> u8 {
        (be16(self.buffer.as_ref(), 0) >> 4) as u8
    }

    pub fn flow_label(&self) -> u32 {
        be32(self.buffer.as_ref(), 0) & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    /// The whole packet length: header plus payload, excluding Ethernet padding.
    pub fn total_len(&self) -> usize {
        field::PAYLOAD + usize::from(self.payload_len())
    }

    pub fn next_header(&self) -> IpProtocol {
        self.buffer.as_ref()[field::NEXT_HEADER].into()
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC..field::SRC + 16]);
        Ipv6Addr::from(a)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST..field::DST + 16]);
        Ipv6Addr::from(a)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..self.total_len()]
    }

    /// Header and payload, excluding Ethernet padding; [`L4Location::offset`] indexes into it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len()]
    }

    /// Walks hop-by-hop, routing, fragment, destination-options and AH headers to the
    /// upper-layer header. Gives `Err(Unsupported)` for ESP (encrypted: nothing to see) and for
    /// chains longer than [`MAX_EXTENSION_HEADERS`]; `Err(Truncated)` when a header runs past
    /// the payload.
    pub fn find_l4(&self) -> Result<L4Location, WireError> {
        let packet = &self.buffer.as_ref()[..self.total_len()];
        let mut next = self.next_header();
        let mut offset = field::PAYLOAD;
        let mut later_fragment = false;
        let mut fragment = false;
        for _ in 0..MAX_EXTENSION_HEADERS {
            let header_len = match next {
                IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => {
                    let len_byte = *packet.get(offset + 1).ok_or(WireError::Truncated)?;
                    (usize::from(len_byte) + 1) * 8
                }
                IpProtocol::Ah => {
                    let len_byte = *packet.get(offset + 1).ok_or(WireError::Truncated)?;
                    (usize::from(len_byte) + 2) * 4
                }
                IpProtocol::Ipv6Frag => {
                    let frag = packet.get(offset..offset + 8).ok_or(WireError::Truncated)?;
                    fragment = true;
                    if be16(frag, 2) & 0xfff8 != 0 {
                        later_fragment = true;
                    }
                    8
                }
                IpProtocol::Esp => return Err(WireError::Unsupported),
                protocol => return Ok(L4Location { protocol, offset, fragment, later_fragment }),
            };
            let next_byte = *packet.get(offset).ok_or(WireError::Truncated)?;
            if offset + header_len > packet.len() {
                return Err(WireError::Truncated);
            }
            next = next_byte.into();
            offset += header_len;
            if later_fragment {
                return Ok(L4Location { protocol: next, offset, fragment, later_fragment });
            }
        }
        Err(WireError::Unsupported)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Writes version 6, a traffic class and a flow label.
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let word = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        put32(self.buffer.as_mut(), field::VER_TC_FLOW, word);
    }

    /// Sets the traffic class, keeping version and flow label.
    pub fn set_traffic_class(&mut self, traffic_class: u8) {
        let word = be32(self.buffer.as_ref(), field::VER_TC_FLOW);
        let word = (word & 0xf00f_ffff) | (u32::from(traffic_class) << 20);
        put32(self.buffer.as_mut(), field::VER_TC_FLOW, word);
    }

    pub fn set_payload_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), field::PAYLOAD_LEN, len);
    }

    pub fn set_next_header(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::NEXT_HEADER] = protocol.into();
    }

    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC..field::SRC + 16].copy_from_slice(&addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST..field::DST + 16].copy_from_slice(&addr.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[field::PAYLOAD..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_class_changes_alone() {
        let mut b = header(59, &[]);
        let mut ip = Ipv6Packet::new_checked(&mut b[..]).unwrap();
        ip.set_traffic_class(0x13);
        assert_eq!((ip.traffic_class(), ip.flow_label()), (0x13, 0xabcde));
        assert_eq!(b[0] >> 4, 6);
    }

    fn header(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 40];
        let mut ip = Ipv6Packet::new_unchecked(&mut b[..]);
        ip.set_version_tc_flow(0x12, 0xabcde);
        ip.set_payload_len(payload.len() as u16);
        ip.set_next_header(next.into());
        ip.set_hop_limit(64);
        ip.set_src_addr("fd00:10:244:1::2".parse().unwrap());
        ip.set_dst_addr("fd00:10:244:2::3".parse().unwrap());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn parse_fields() {
        let b = header(17, &[0u8; 8]);
        let ip = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(ip.traffic_class(), 0x12);
        assert_eq!(ip.flow_label(), 0xabcde);
        assert_eq!(ip.payload_len(), 8);
        assert_eq!(ip.next_header(), IpProtocol::Udp);
        assert_eq!(ip.hop_limit(), 64);
        assert_eq!(ip.src_addr(), "fd00:10:244:1::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.dst_addr(), "fd00:10:244:2::3".parse::<Ipv6Addr>().unwrap());
        let l4 = ip.find_l4().unwrap();
        assert_eq!(
            l4,
            L4Location {
                protocol: IpProtocol::Udp,
                offset: 40,
                fragment: false,
                later_fragment: false
            }
        );
    }

    #[test]
    fn walks_extension_headers() {
        // hop-by-hop (8 bytes) → destination options (16 bytes) → fragment (first) → TCP
        let mut payload = vec![60, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&[44, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&[6, 0, 0x00, 0x01, 0, 0, 0, 7]);
        payload.extend_from_slice(&[0u8; 20]);
        let b = header(0, &payload);
        let l4 = Ipv6Packet::new_checked(&b[..]).unwrap().find_l4().unwrap();
        assert_eq!(
            l4,
            L4Location {
                protocol: IpProtocol::Tcp,
                offset: 72,
                fragment: true,
                later_fragment: false
            }
        );
    }

    #[test]
    fn later_fragment_has_no_l4() {
        let mut payload = vec![17, 0, 0x00, 0xb9, 0, 0, 0, 7]; // offset 23 × 8
        payload.extend_from_slice(&[0u8; 16]);
        let b = header(44, &payload);
        let l4 = Ipv6Packet::new_checked(&b[..]).unwrap().find_l4().unwrap();
        assert!(l4.later_fragment);
        assert_eq!(l4.protocol, IpProtocol::Udp);
    }

    #[test]
    fn gives_up_cleanly() {
        let b = header(50, &[0u8; 16]);
        assert_eq!(Ipv6Packet::new_checked(&b[..]).unwrap().find_l4(), Err(WireError::Unsupported));
        let b = header(0, &[17, 3, 0, 0]); // claims 32 bytes, has 4
        assert_eq!(Ipv6Packet::new_checked(&b[..]).unwrap().find_l4(), Err(WireError::Truncated));
        let mut chain = Vec::new();
        for _ in 0..MAX_EXTENSION_HEADERS + 1 {
            chain.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        }
        let b = header(60, &chain);
        assert_eq!(Ipv6Packet::new_checked(&b[..]).unwrap().find_l4(), Err(WireError::Unsupported));
    }

    #[test]
    fn impossible_lengths() {
        let b = header(17, &[0u8; 8]);
        assert_eq!(Ipv6Packet::new_checked(&b[..39]).unwrap_err(), WireError::Truncated);
        assert_eq!(Ipv6Packet::new_checked(&b[..47]).unwrap_err(), WireError::BadLength);
        let mut v4 = b.clone();
        v4[0] = 0x45;
        assert_eq!(Ipv6Packet::new_checked(&v4[..]).unwrap_err(), WireError::BadVersion);
    }
}
