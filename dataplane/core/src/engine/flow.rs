//! Layer-4 facts of an IP packet: what policy matches on and what the encapsulation's source
//! port hashes. Computed once per frame.

use crate::table::{L4, PortProtocol};
use crate::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, WireError, be16};

use super::DropReason;

/// Protocol and ports of one packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flow {
    pub protocol: u8,
    /// Ports for the encapsulation's flow hash: zero for every fragment, first included, so
    /// that all fragments of a datagram take one outer source port (as Linux's flow
    /// dissector does without FLOW_DISSECTOR_F_PARSE_1ST_FRAG) and one underlay path.
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
/// destination port in the first four bytes). A first fragment's ports serve policy but
/// not the flow hash.
#[inline]
fn with_ports(
    protocol: IpProtocol,
    l4: &[u8],
    first_fragment: bool,
    malformed: DropReason,
) -> Result<Flow, DropReason> {
    let raw = u8::from(protocol);
    match port_protocol(protocol) {
        Some(p) => {
            if l4.len() < 4 {
                return Err(malformed);
            }
            let dst_port = be16(l4, 2);
            let l4_policy = L4::Ports { protocol: p, port: dst_port };
            let (src_port, dst_port) =
                if first_fragment { (0, 0) } else { (be16(l4, 0), dst_port) };
            Ok(Flow { protocol: raw, src_port, dst_port, l4: l4_policy })
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
    with_ports(protocol, ip.payload(), ip.more_frags(), malformed)
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
            let l4 = ip.as_bytes().get(loc.offset..).unwrap_or(&[]);
            with_ports(loc.protocol, l4, loc.fragment, malformed_l4)
        }
        Err(WireError::Unsupported) => {
            Ok(Flow { protocol: ip.next_header().into(), src_port: 0, dst_port: 0, l4: L4::Other })
        }
        Err(_) => Err(malformed_ip),
    }
}
