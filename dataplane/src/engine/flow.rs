//! Layer-4 facts of an IP packet: what policy matches on and what the encapsulation's source
//! port hashes. Computed once per frame.

use crate::table::{L4, PortProtocol};
use crate::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, WireError, be16};

use super::DropReason;

/// Protocol and ports of one packet; ports are zero when the packet has none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flow {
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// What policy sees: destination port for TCP/UDP/SCTP, `Other` otherwise.
    pub l4: L4,
}

fn port_protocol(protocol: IpProtocol) -> Option<PortProtocol> {
    match protocol {
        IpProtocol::Tcp => Some(PortProtocol::Tcp),
        IpProtocol::Udp => Some(PortProtocol::Udp),
        IpProtocol::Sctp => Some(PortProtocol::Sctp),
        _ => None,
    }
}

/// Reads the ports at the start of a TCP/UDP/SCTP header (all three put source and
/// destination port in the first four bytes).
#[inline]
fn with_ports(protocol: IpProtocol, l4: &[u8], malformed: DropReason) -> Result<Flow, DropReason> {
    let raw = u8::from(protocol);
    match port_protocol(protocol) {
        Some(p) => {
            if l4.len() < 4 {
                return Err(malformed);
            }
            let (src_port, dst_port) = (be16(l4, 0), be16(l4, 2));
            Ok(Flow {
                protocol: raw,
                src_port,
                dst_port,
                l4: L4::Ports { protocol: p, port: dst_port },
            })
        }
        None => Ok(Flow { protocol: raw, src_port: 0, dst_port: 0, l4: L4::Other }),
    }
}

/// The flow of an IPv4 packet. Later fragments carry no ports: they match only port-less
/// rules until connection tracking (a later issue) remembers the first fragment.
#[inline]
pub(crate) fn ipv4<T: AsRef<[u8]>>(
    ip: &Ipv4Packet<T>,
    malformed: DropReason,
) -> Result<Flow, DropReason> {
    let protocol = ip.protocol();
    if ip.frag_offset() != 0 {
        return Ok(Flow { protocol: protocol.into(), src_port: 0, dst_port: 0, l4: L4::Other });
    }
    with_ports(protocol, ip.payload(), malformed)
}

/// The flow of an IPv6 packet, walking extension headers. ESP and over-long chains have no
/// visible ports (`Other`); truncated extension headers are malformed.
#[inline]
pub(crate) fn ipv6<T: AsRef<[u8]>>(
    ip: &Ipv6Packet<T>,
    malformed_ip: DropReason,
    malformed_l4: DropReason,
) -> Result<Flow, DropReason> {
    match ip.find_l4() {
        Ok(loc) if loc.later_fragment => {
            Ok(Flow { protocol: loc.protocol.into(), src_port: 0, dst_port: 0, l4: L4::Other })
        }
        Ok(loc) => {
            with_ports(loc.protocol, ip.as_bytes().get(loc.offset..).unwrap_or(&[]), malformed_l4)
        }
        Err(WireError::Unsupported) => {
            Ok(Flow { protocol: ip.next_header().into(), src_port: 0, dst_port: 0, l4: L4::Other })
        }
        Err(_) => Err(malformed_ip),
    }
}
