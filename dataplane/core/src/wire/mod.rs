//! Zero-copy views over frame bytes: Ethernet II (802.1Q detection), ARP, IPv4, IPv6, UDP, TCP,
//! ICMPv4/ICMPv6 (with the neighbour-discovery messages the gateway answers) and VXLAN.
//!
//! # Contract
//!
//! Every protocol is a view `XxxPacket<T: AsRef<[u8]>>` over a borrowed buffer; setters need
//! `T: AsMut<[u8]>`. Nothing here copies or allocates.
//!
//! * `XxxPacket::new_checked(bytes)` is the only way untrusted bytes enter. It verifies that
//!   every fixed field and every length the header claims fit inside the buffer. **After it
//!   succeeds, no accessor can panic**, whatever the bytes say, and neither can a setter of a
//!   fixed field. Emitters of whole messages (`emit_neighbor_advert`) check that they fit.
//!   A setter of a length field (total length, payload length, UDP length, header length)
//!   writes what it is told: read the view again only after re-checking it.
//! * `XxxPacket::new_unchecked(bytes)` is for buffers the caller built itself (emitting
//!   headers into headroom); its accessors panic if the buffer is too short.
//!
//! Field offsets live in a private `field` module per protocol and header lengths derive from
//! them. Malformed input is a [`WireError`]; deciding whether a well-formed frame is "for us" is
//! the engine's job, not this module's.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use arp::{ArpOperation, ArpPacket};
pub use ethernet::{EtherType, EthernetFrame, MacAddr};
pub use icmp::{Icmpv4Packet, Icmpv6Packet};
pub use ipv4::Ipv4Packet;
pub use ipv6::{Ipv6Packet, L4Location};
pub use tcp::TcpPacket;
pub use udp::UdpPacket;
pub use vxlan::VxlanPacket;

/// Why a byte sequence is not a well-formed header of the protocol asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the fixed part of the header does.
    #[error("buffer too short for the header")]
    Truncated,
    /// The version field is not the one of this protocol (IPv4 = 4, IPv6 = 6).
    #[error("wrong IP version")]
    BadVersion,
    /// A length field is impossible: smaller than the header or larger than the buffer.
    #[error("length field inconsistent with the buffer")]
    BadLength,
    /// A field holds a value this view cannot describe (ARP for non-Ethernet/IPv4 hardware, ...).
    #[error("unsupported field value")]
    Unsupported,
}

/// IP protocol numbers (IANA), as carried in IPv4's protocol field and IPv6's next header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    HopByHop,
    Icmp,
    Tcp,
    Udp,
    Ipv6Route,
    Ipv6Frag,
    Esp,
    Ah,
    Icmpv6,
    Ipv6NoNxt,
    Ipv6Opts,
    Sctp,
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            0 => Self::HopByHop,
            1 => Self::Icmp,
            6 => Self::Tcp,
            17 => Self::Udp,
            43 => Self::Ipv6Route,
            44 => Self::Ipv6Frag,
            50 => Self::Esp,
            51 => Self::Ah,
            58 => Self::Icmpv6,
            59 => Self::Ipv6NoNxt,
            60 => Self::Ipv6Opts,
            132 => Self::Sctp,
            other => Self::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::HopByHop => 0,
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Ipv6Route => 43,
            IpProtocol::Ipv6Frag => 44,
            IpProtocol::Esp => 50,
            IpProtocol::Ah => 51,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Ipv6NoNxt => 59,
            IpProtocol::Ipv6Opts => 60,
            IpProtocol::Sctp => 132,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// Big-endian reads and writes at fixed offsets. Callers index only inside lengths that a
/// `new_checked` verified, or inside buffers they sized themselves.
#[inline(always)]
pub(crate) fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

#[inline(always)]
pub(crate) fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The IPv4 address at `at` (four bytes the caller has checked are there).
#[inline(always)]
pub(crate) fn ipv4_at(bytes: &[u8], at: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}

/// The IPv6 address at `at` (sixteen bytes the caller has checked are there).
#[inline(always)]
pub(crate) fn ipv6_at(bytes: &[u8], at: usize) -> std::net::Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&bytes[at..at + 16]);
    std::net::Ipv6Addr::from(a)
}

#[inline(always)]
pub(crate) fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[inline(always)]
pub(crate) fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_protocol_round_trips_every_byte() {
        for raw in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(raw)), raw);
        }
    }
}
