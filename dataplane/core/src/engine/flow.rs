//! Layer-4 facts of an IP packet: what policy matches on and what the encapsulation's source
//! port hashes. Computed once per frame.

use crate::table::PortProtocol;
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
    /// What connection tracking needs beyond the addresses ([`Transport`]).
    pub transport: Transport,
    /// Where the layer-4 header starts, from the start of the IP header.
    pub l4_offset: u16,
}

/// A packet's transport as connection tracking sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// TCP with its flags byte (0 when the header is cut short).
    Tcp { src_port: u16, dst_port: u16, flags: u8 },
    /// UDP or SCTP.
    Ports { src_port: u16, dst_port: u16 },
    /// ICMP or ICMPv6 echo request or reply, with its identifier.
    Echo { request: bool, id: u16 },
    /// An ICMP or ICMPv6 error (destination unreachable, fragmentation needed, packet too big,
    /// time exceeded, parameter problem): the packet it quotes starts 8 bytes into the ICMP
    /// header.
    IcmpError,
    /// Anything else: other ICMP messages, other protocols, fragments other than the first
    /// (whose ports are in the first).
    Untracked,
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
            let (src, dst) = (be16(l4, 0), be16(l4, 2));
            let transport = match p {
                PortProtocol::Tcp => Transport::Tcp {
                    src_port: src,
                    dst_port: dst,
                    flags: l4.get(13).copied().unwrap_or(0),
                },
                _ => Transport::Ports { src_port: src, dst_port: dst },
            };
            let (src_port, dst_port) = if first_fragment { (0, 0) } else { (src, dst) };
            Ok(Flow { protocol: raw, src_port, dst_port, transport, l4_offset: 0 })
        }
        None => Ok(Flow {
            protocol: raw,
            src_port: 0,
            dst_port: 0,
            transport: icmp_transport(protocol, l4),
            l4_offset: 0,
        }),
    }
}

/// Echo requests and replies, and the errors that quote a packet, of ICMP and ICMPv6.
fn icmp_transport(protocol: IpProtocol, l4: &[u8]) -> Transport {
    let (Some(&kind), Some(id)) = (l4.first(), l4.get(4..6)) else {
        return Transport::Untracked;
    };
    let id = u16::from_be_bytes([id[0], id[1]]);
    match (protocol, kind) {
        (IpProtocol::Icmp, 8) | (IpProtocol::Icmpv6, 128) => Transport::Echo { request: true, id },
        (IpProtocol::Icmp, 0) | (IpProtocol::Icmpv6, 129) => Transport::Echo { request: false, id },
        (IpProtocol::Icmp, 3 | 11 | 12) | (IpProtocol::Icmpv6, 1..=4) => Transport::IcmpError,
        _ => Transport::Untracked,
    }
}

/// A flow with nothing visible beyond its protocol.
fn portless(protocol: IpProtocol) -> Flow {
    Flow {
        protocol: protocol.into(),
        src_port: 0,
        dst_port: 0,
        transport: Transport::Untracked,
        l4_offset: 0,
    }
}

/// The flow of an IPv4 packet. Later fragments carry no ports: they match only port-less
/// rules, and connection tracking does not follow them (it does not reassemble).
#[inline]
pub(crate) fn ipv4<T: AsRef<[u8]>>(
    ip: &Ipv4Packet<T>,
    malformed: DropReason,
) -> Result<Flow, DropReason> {
    let protocol = ip.protocol();
    if ip.frag_offset() != 0 {
        return Ok(portless(protocol));
    }
    let mut flow = with_ports(protocol, ip.payload(), ip.more_frags(), malformed)?;
    flow.l4_offset = ip.header_len() as u16;
    Ok(flow)
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
        Ok(loc) if loc.later_fragment => Ok(portless(loc.protocol)),
        Ok(loc) => {
            let l4 = ip.as_bytes().get(loc.offset..).unwrap_or(&[]);
            let mut flow = with_ports(loc.protocol, l4, loc.fragment, malformed_l4)?;
            flow.l4_offset = loc.offset as u16;
            Ok(flow)
        }
        Err(WireError::Unsupported) => Ok(portless(ip.next_header())),
        Err(_) => Err(malformed_ip),
    }
}
