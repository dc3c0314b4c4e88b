//! The kernel's routing and neighbour tables over rtnetlink: how the daemon learns the
//! underlay next-hop MAC of each node without anyone typing it in.
//!
//! For a node's underlay address: `RTM_GETROUTE` gives the next hop (the route's gateway, or
//! the address itself when it is on-link) and the outgoing interface; `RTM_GETNEIGH` reads
//! that next hop's entry in the neighbour table; when there is none, or it is not usable, an
//! `RTM_NEWNEIGH` with `NTF_USE` asks the kernel to resolve it (ARP or neighbour discovery,
//! sent by the kernel itself) — the same mechanism Cilium uses for its managed neighbours.
//! Since podlane's own traffic bypasses the kernel, nothing else would keep those entries
//! fresh; the daemon repeats the `NTF_USE` periodically.
//!
//! For the host interface it also sets a link up with its MTU, and lists, adds and removes
//! the addresses and routes of that one interface (`RTM_*LINK`, `RTM_*ADDR`, `RTM_*ROUTE`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::sys;
use crate::wire::MacAddr;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// NLM_F_ROOT | NLM_F_MATCH: every entry.
const NLM_F_DUMP: u16 = 0x300;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// No duplicate address detection: an IPv6 address usable at once (it is the node's own
/// address on a point-to-point link nothing else shares).
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NTF_USE: u8 = 0x01;
/// NUD_REACHABLE | NUD_PERMANENT | NUD_NOARP | NUD_STALE | NUD_DELAY | NUD_PROBE: states
/// with a usable link-layer address (include/net/neighbour.h NUD_VALID).
const NUD_VALID: u16 = 0x02 | 0x80 | 0x40 | 0x04 | 0x08 | 0x10;

/// Where the kernel would send packets for an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The gateway, or the destination itself when it is on-link.
    pub next_hop: IpAddr,
    pub interface: u32,
}

/// A NETLINK_ROUTE socket.
#[derive(Debug)]
pub struct Rtnetlink {
    socket: File,
    buffer: Vec<u8>,
}

static SEQUENCE: AtomicU32 = AtomicU32::new(1);

fn family(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Appends one route attribute (length, type, value, padding to 4 bytes).
fn push_attr(msg: &mut Vec<u8>, kind: u16, value: &[u8]) {
    msg.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(value);
    msg.resize(msg.len().next_multiple_of(4), 0);
}

/// Iterates `(type, value)` over attributes.
fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let value = &bytes[4..len];
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        Some((kind, value))
    })
}

fn addr_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// How long a request waits for the kernel's answer.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Rtnetlink {
    pub fn open() -> io::Result<Rtnetlink> {
        Ok(Rtnetlink {
            socket: File::from(sys::netlink_route_socket(REPLY_TIMEOUT)?),
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and returns the payloads (after the 16-byte header) of the replies
    /// of type `reply`, until the kernel acknowledges, errs or ends the dump.
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
        reply: u16,
    ) -> io::Result<Vec<Vec<u8>>> {
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        self.socket.write_all(&msg)?;
        let mut out = Vec::new();
        loop {
            let n = self.socket.read(&mut self.buffer).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from the kernel's rtnetlink in {REPLY_TIMEOUT:?}"),
                ),
                _ => e,
            })?;
            let mut data = &self.buffer[..n];
            while data.len() >= 16 {
                let len = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes([data[4], data[5]]);
                let msg_seq = u32::from_ne_bytes(data[8..12].try_into().unwrap_or_default());
                if len < 16 || len > data.len() {
                    return Err(io::Error::other("malformed netlink reply"));
                }
                let payload = &data[16..len];
                if msg_seq == seq {
                    match kind {
                        NLMSG_ERROR => {
                            let code = payload.get(0..4).map_or(0, |b| {
                                i32::from_ne_bytes(b.try_into().unwrap_or_default())
                            });
                            return if code == 0 {
                                Ok(out)
                            } else {
                                Err(io::Error::from_raw_os_error(-code))
                            };
                        }
                        NLMSG_DONE => return Ok(out),
                        k if k == reply => {
                            out.push(payload.to_vec());
                            // A plain request gets one reply; a dump or an acknowledged
                            // request ends with NLMSG_DONE or the acknowledgement.
                            if flags & (NLM_F_ACK | NLM_F_DUMP) == 0 {
                                return Ok(out);
                            }
                        }
                        _ => {}
                    }
                }
                data = &data[len.next_multiple_of(4).min(data.len())..];
            }
        }
    }

    /// The route the kernel would use to reach `dst`.
    pub fn route_to(&mut self, dst: IpAddr) -> io::Result<Route> {
        let addr = octets(dst);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut body = vec![family(dst), (addr.len() * 8) as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        push_attr(&mut body, RTA_DST, &addr);
        let replies = self.request(RTM_GETROUTE, 0, &body, RTM_NEWROUTE)?;
        let reply = replies.first().ok_or_else(|| io::Error::other("no route reply"))?;
        let mut route = Route { next_hop: dst, interface: 0 };
        for (kind, value) in attrs(reply.get(12..).unwrap_or_default()) {
            match kind {
                RTA_GATEWAY => route.next_hop = addr_from(value).unwrap_or(dst),
                RTA_OIF if value.len() == 4 => {
                    route.interface = u32::from_ne_bytes(value.try_into().unwrap_or_default())
                }
                _ => {}
            }
        }
        Ok(route)
    }

    /// The link-layer address of `addr` on `interface`, when the kernel has a usable one.
    pub fn neighbour(&mut self, interface: u32, addr: IpAddr) -> io::Result<Option<MacAddr>> {
        let body = ndmsg(addr, interface, 0, 0);
        let replies = match self.request(RTM_GETNEIGH, 0, &body, RTM_NEWNEIGH) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(reply) = replies.first() else { return Ok(None) };
        let state = reply.get(8..10).map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
        if state & NUD_VALID == 0 {
            return Ok(None);
        }
        Ok(attrs(reply.get(12..).unwrap_or_default())
            .find(|(kind, v)| *kind == NDA_LLADDR && v.len() == 6)
            .map(|(_, v)| MacAddr([v[0], v[1], v[2], v[3], v[4], v[5]])))
    }

    /// Asks the kernel to resolve (or re-confirm) `addr` on `interface` (`NTF_USE`); the
    /// answer shows up in [`Rtnetlink::neighbour`] once the kernel's ARP/ND completes.
    pub fn resolve(&mut self, interface: u32, addr: IpAddr) -> io::Result<()> {
        let body = ndmsg(addr, interface, 0, NTF_USE);
        self.request(RTM_NEWNEIGH, NLM_F_ACK | NLM_F_CREATE, &body, RTM_NEWNEIGH).map(drop)
    }
}

/// An address with its prefix length.
pub type Prefix = (IpAddr, u8);

impl Rtnetlink {
    /// Sets the link up, with `mtu` (RTM_NEWLINK on an existing link).
    pub fn set_link_up(&mut self, interface: u32, mtu: u32) -> io::Result<()> {
        // struct ifinfomsg: family, pad, type, index, flags, change.
        let mut body = vec![0u8, 0, 0, 0];
        body.extend_from_slice(&(interface as i32).to_ne_bytes());
        body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        push_attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        self.request(RTM_NEWLINK, NLM_F_ACK, &body, RTM_NEWLINK).map(drop)
    }

    /// Creates a veth pair: `name` here, its peer `peer` in the network namespace open as
    /// `peer_netns` (a descriptor of its namespace file), both at `mtu`, both down.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: std::os::fd::BorrowedFd<'_>,
        mtu: u32,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let ifname = |n: &str| {
            let mut bytes = n.as_bytes().to_vec();
            bytes.push(0);
            bytes
        };
        // The peer: its own struct ifinfomsg, then its attributes.
        let mut peer_info = vec![0u8; 16];
        push_attr(&mut peer_info, IFLA_IFNAME, &ifname(peer));
        push_attr(&mut peer_info, IFLA_MTU, &mtu.to_ne_bytes());
        push_attr(&mut peer_info, IFLA_NET_NS_FD, &(peer_netns.as_raw_fd() as u32).to_ne_bytes());
        let mut data = Vec::new();
        push_attr(&mut data, VETH_INFO_PEER, &peer_info);
        let mut link_info = Vec::new();
        push_attr(&mut link_info, IFLA_INFO_KIND, b"veth");
        push_attr(&mut link_info, IFLA_INFO_DATA, &data);
        let mut body = vec![0u8; 16];
        push_attr(&mut body, IFLA_IFNAME, &ifname(name));
        push_attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        push_attr(&mut body, IFLA_LINKINFO, &link_info);
        self.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &body, RTM_NEWLINK)
            .map(drop)
    }

    /// Sets the link's MAC address.
    pub fn set_link_address(&mut self, interface: u32, mac: MacAddr) -> io::Result<()> {
        let mut body = vec![0u8, 0, 0, 0];
        body.extend_from_slice(&(interface as i32).to_ne_bytes());
        body.extend_from_slice(&[0u8; 8]);
        push_attr(&mut body, IFLA_ADDRESS, &mac.0);
        self.request(RTM_NEWLINK, NLM_F_ACK, &body, RTM_NEWLINK).map(drop)
    }

    /// Routes `destination` via `gateway` out of `interface` (main table; the gateway must be
    /// reachable on the link: an IPv6 link-local one, or one with a link route of its own).
    pub fn add_route_via(
        &mut self,
        interface: u32,
        (destination, len): Prefix,
        gateway: IpAddr,
    ) -> io::Result<()> {
        let mut body =
            rtmsg(family(destination), len, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST);
        push_attr(&mut body, RTA_DST, &octets(destination));
        push_attr(&mut body, RTA_GATEWAY, &octets(gateway));
        push_attr(&mut body, RTA_OIF, &interface.to_ne_bytes());
        self.request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &body, RTM_NEWROUTE)
            .map(drop)
    }

    /// Deletes the link (and with it its addresses and routes).
    pub fn delete_link(&mut self, interface: u32) -> io::Result<()> {
        let mut body = vec![0u8, 0, 0, 0];
        body.extend_from_slice(&(interface as i32).to_ne_bytes());
        body.extend_from_slice(&[0u8; 8]);
        self.request(RTM_DELLINK, NLM_F_ACK, &body, RTM_DELLINK).map(drop)
    }

    /// The addresses of `interface`, both families, with their prefix lengths.
    pub fn addresses(&mut self, interface: u32) -> io::Result<Vec<Prefix>> {
        let body = ifaddrmsg(libc::AF_UNSPEC as u8, 0, 0);
        let replies = self.request(RTM_GETADDR, NLM_F_DUMP, &body, RTM_NEWADDR)?;
        Ok(replies
            .iter()
            .filter(|r| r.len() >= 8 && u32::from_ne_bytes([r[4], r[5], r[6], r[7]]) == interface)
            .filter_map(|r| {
                let mut address = None;
                for (kind, value) in attrs(&r[8..]) {
                    // IFA_LOCAL is the interface's own address where a peer is set.
                    match kind {
                        IFA_LOCAL => address = addr_from(value),
                        IFA_ADDRESS if address.is_none() => address = addr_from(value),
                        _ => {}
                    }
                }
                Some((address?, r[1]))
            })
            .collect())
    }

    /// Adds `address/prefix` to `interface` (an IPv6 one without duplicate address detection).
    pub fn add_address(&mut self, interface: u32, (address, prefix): Prefix) -> io::Result<()> {
        let mut body = ifaddrmsg(family(address), prefix, interface);
        body[2] = IFA_F_NODAD;
        push_attr(&mut body, IFA_LOCAL, &octets(address));
        push_attr(&mut body, IFA_ADDRESS, &octets(address));
        self.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &body, RTM_NEWADDR)
            .map(drop)
    }

    pub fn delete_address(&mut self, interface: u32, (address, prefix): Prefix) -> io::Result<()> {
        let mut body = ifaddrmsg(family(address), prefix, interface);
        push_attr(&mut body, IFA_LOCAL, &octets(address));
        push_attr(&mut body, IFA_ADDRESS, &octets(address));
        self.request(RTM_DELADDR, NLM_F_ACK, &body, RTM_DELADDR).map(drop)
    }

    /// The destinations of the main table's static routes through `interface` (the kind
    /// [`Rtnetlink::add_route`] installs; not the kernel's own, such as fe80::/64), both
    /// families.
    pub fn routes(&mut self, interface: u32) -> io::Result<Vec<Prefix>> {
        let mut out = Vec::new();
        for af in [libc::AF_INET, libc::AF_INET6] {
            let body = rtmsg(af as u8, 0, 0, 0, 0);
            for reply in self.request(RTM_GETROUTE, NLM_F_DUMP, &body, RTM_NEWROUTE)? {
                if reply.len() < 12 {
                    continue;
                }
                let (mut dst, mut oif, mut table) = (None, None, u32::from(reply[4]));
                for (kind, value) in attrs(&reply[12..]) {
                    match kind {
                        RTA_DST => dst = addr_from(value),
                        RTA_OIF if value.len() == 4 => {
                            oif = Some(u32::from_ne_bytes(value.try_into().unwrap_or_default()))
                        }
                        RTA_TABLE if value.len() == 4 => {
                            table = u32::from_ne_bytes(value.try_into().unwrap_or_default())
                        }
                        _ => {}
                    }
                }
                let protocol = reply[5];
                if oif == Some(interface)
                    && table == u32::from(RT_TABLE_MAIN)
                    && protocol == RTPROT_STATIC
                {
                    // A route without RTA_DST is a default route.
                    let dst = dst.unwrap_or(if af == libc::AF_INET {
                        IpAddr::from([0u8; 4])
                    } else {
                        IpAddr::from([0u8; 16])
                    });
                    out.push((dst, reply[1]));
                }
            }
        }
        Ok(out)
    }

    /// Routes `destination` through `interface` (main table, link scope). A route to the
    /// same destination that exists already, through any interface, is left alone: EEXIST.
    pub fn add_route(&mut self, interface: u32, destination: Prefix) -> io::Result<()> {
        let body = route_body(interface, destination);
        self.request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &body, RTM_NEWROUTE)
            .map(drop)
    }

    pub fn delete_route(&mut self, interface: u32, destination: Prefix) -> io::Result<()> {
        let body = route_body(interface, destination);
        self.request(RTM_DELROUTE, NLM_F_ACK, &body, RTM_DELROUTE).map(drop)
    }
}

/// `struct ifaddrmsg`: family, prefix length, flags, scope, index.
fn ifaddrmsg(family: u8, prefix: u8, interface: u32) -> Vec<u8> {
    let mut body = vec![family, prefix, 0, 0];
    body.extend_from_slice(&interface.to_ne_bytes());
    body
}

/// `struct rtmsg`: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
fn rtmsg(family: u8, dst_len: u8, protocol: u8, scope: u8, kind: u8) -> Vec<u8> {
    vec![family, dst_len, 0, 0, RT_TABLE_MAIN, protocol, scope, kind, 0, 0, 0, 0]
}

fn route_body(interface: u32, (destination, len): Prefix) -> Vec<u8> {
    let mut body = rtmsg(family(destination), len, RTPROT_STATIC, RT_SCOPE_LINK, RTN_UNICAST);
    push_attr(&mut body, RTA_DST, &octets(destination));
    push_attr(&mut body, RTA_OIF, &interface.to_ne_bytes());
    body
}

/// `struct ndmsg` (family, pad, pad, ifindex, state, flags, type) plus NDA_DST.
fn ndmsg(addr: IpAddr, interface: u32, state: u16, flags: u8) -> Vec<u8> {
    let mut body = vec![family(addr), 0, 0, 0];
    body.extend_from_slice(&(interface as i32).to_ne_bytes());
    body.extend_from_slice(&state.to_ne_bytes());
    body.push(flags);
    body.push(0);
    push_attr(&mut body, NDA_DST, &octets(addr));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut msg = Vec::new();
        push_attr(&mut msg, NDA_LLADDR, &[1, 2, 3, 4, 5, 6]);
        push_attr(&mut msg, NDA_DST, &[10, 0, 0, 1]);
        assert_eq!(msg.len(), 12 + 8);
        let got: Vec<_> = attrs(&msg).collect();
        assert_eq!(
            got,
            vec![(NDA_LLADDR, &[1u8, 2, 3, 4, 5, 6][..]), (NDA_DST, &[10u8, 0, 0, 1][..])]
        );
    }

    #[test]
    fn truncated_attributes_end_iteration() {
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }
}
