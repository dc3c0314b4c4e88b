//! The forwarding pipeline: a pure function from (frames, ingress port, snapshot, config) to
//! exactly one [`Verdict`] per frame. Frames are rewritten in place — encapsulation prepends
//! the outer headers into the buffer's headroom, decapsulation moves the start forward — so
//! the I/O layer only has to transmit `frame.data()` where the verdict says.
//!
//! Contract: no I/O, no allocation, no lock and no log line per frame; any byte sequence gets
//! a verdict and never a panic. A frame that is malformed or refused is
//! `Verdict::Drop(reason)` and counted per [`DropReason`]; a well-formed frame for the node
//! itself or for outside the cluster is `Verdict::Host`, for the host interface, through which
//! the node's kernel (kubelet, kube-proxy's Services, masquerade) takes it on.
//!
//! Paths (REFERENCE.md is the authority on what "like the kernel" means):
//!
//! * pod → remote pod: route to the node owning the destination's pod CIDR, egress policy,
//!   TTL decrement (the kernel forwards before its vxlan device encapsulates), encapsulation.
//! * uplink VXLAN → local pod: outer validation and anti-spoofing, decapsulation, ingress
//!   policy, MAC rewrite, TTL decrement.
//! * pod → pod on this node: both policies, MAC rewrite, TTL decrement.
//! * pod → this node or outside the cluster: to the host interface (egress policy for what
//!   leaves the cluster; a pod and its own node always reach each other).
//! * host interface → pod or remote pod ([`host`]): what the node's kernel routes into the
//!   overlay — its own traffic, Services after DNAT, NodePorts — delivered or encapsulated.
//! * ARP for the gateway address / neighbour solicitation for the gateway → reply in place.
//! * TTL running out, or a packet too big for the overlay → the ICMP error a router sends
//!   ([`icmp_error`], rate-limited).

mod encap;
mod flow;
mod host;
mod host_flows;
mod icmp_error;
pub mod offload;
mod pod;
mod policy;
mod uplink;

pub mod coalesce;
pub mod conntrack;
pub mod segment;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::table::{EndpointId, RouteTarget, Snapshot};
use crate::wire::MacAddr;

pub use encap::{flow_hash, source_port};

/// Outer header bytes the engine prepends: Ethernet + IPv4 + UDP + VXLAN.
pub const ENCAP_OVERHEAD_V4: usize = 14 + 20 + 8 + 8;
/// Outer header bytes with an IPv6 underlay.
pub const ENCAP_OVERHEAD_V6: usize = 14 + 40 + 8 + 8;

/// Static configuration of the pipeline; tables come from the [`Snapshot`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// VXLAN network identifier (Flannel 1, Calico 4096).
    pub vni: u32,
    /// Destination UDP port (Flannel 8472, Calico 4789).
    pub vxlan_port: u16,
    /// Range [min, max) for the outer UDP source port, chosen by flow hash, as Linux's
    /// `udp_flow_src_port` does; min ≥ max falls back to Linux's ip_local_port_range default,
    /// 32768–60999 (60999 itself is never chosen, as with the kernel).
    pub source_port_min: u16,
    pub source_port_max: u16,
    /// Outer IPv4 TTL / IPv6 hop limit.
    pub outer_ttl: u8,
    /// Compute the outer UDP checksum over IPv4. Off by default, as RFC 7348 allows and
    /// VPP does; the Linux vxlan device computes it unless created with `noudpcsum`, and every
    /// receiver, Linux and podlane included, accepts both. Over IPv6 it is always computed
    /// (RFC 8200 §8.1).
    pub outer_udp_checksum_v4: bool,
    /// MTU of the uplink: a VTEP must not fragment, so a pod's packet that would not fit once
    /// encapsulated gets the ICMP error that makes its sender use smaller ones (or, IPv4
    /// without DF, goes to the host interface, where the kernel fragments it).
    pub uplink_mtu: u16,
    /// Source MAC of outer frames: the uplink's own address.
    pub uplink_mac: MacAddr,
    /// The MAC pods see for their gateway (source of frames delivered to pods).
    pub gateway_mac: MacAddr,
    /// The gateway address pods route through (Calico: 169.254.1.1).
    pub gateway_v4: Ipv4Addr,
    /// The IPv6 gateway: Calico's, the link-local address derived from the gateway MAC
    /// (fe80::ecee:eeff:feee:eeee), which a pod wired by Calico's CNI routes through.
    pub gateway_v6: Ipv6Addr,
    /// Frames for the node or leaving the cluster go to a host interface (`Verdict::Host`);
    /// without one they are dropped as `no_host_interface`.
    pub host_interface: bool,
    /// Limits and timeouts of each worker's connection tracking.
    pub conntrack: conntrack::ConntrackConfig,
    /// The cluster's Service address ranges (kube-apiserver's `--service-cluster-ip-range`):
    /// a pod's packet to one is judged by its egress policy after kube-proxy's DNAT, on the
    /// backend it goes to, not on the Service's address.
    pub service_cidrs: Vec<crate::table::Cidr>,
}

impl EngineConfig {
    /// Is `ip` in one of the Service ranges?
    pub fn is_service(&self, ip: IpAddr) -> bool {
        self.service_cidrs.iter().any(|c| c.contains(ip))
    }
}

impl Default for EngineConfig {
    /// Flannel's wire settings and Calico's pod wiring.
    fn default() -> Self {
        EngineConfig {
            vni: 1,
            vxlan_port: 8472,
            source_port_min: 32768,
            source_port_max: 60999,
            outer_ttl: 64,
            outer_udp_checksum_v4: false,
            uplink_mtu: 1500,
            uplink_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
            gateway_mac: MacAddr([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]),
            gateway_v4: Ipv4Addr::new(169, 254, 1, 1),
            gateway_v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee),
            host_interface: true,
            conntrack: conntrack::ConntrackConfig::default(),
            service_cidrs: Vec::new(),
        }
    }
}

/// Where a batch of frames came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// The node's uplink (underlay) interface.
    Uplink,
    /// The host-side veth of a local pod (its slot in the snapshot the batch runs on).
    Pod(EndpointId),
    /// The host interface: IP packets the node's kernel routed into the overlay, each behind
    /// an Ethernet header the I/O layer put in front (its addresses are not looked at).
    Host,
}

/// What to do with one frame, after the engine rewrote it in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Encapsulated: transmit on the uplink.
    Encap,
    /// Decapsulated from the uplink: transmit to this pod.
    Decap(EndpointId),
    /// From a pod to a pod on this node: transmit to this pod.
    Local(EndpointId),
    /// Rewritten into an ARP reply, a neighbour advertisement or an ICMP error: send back out
    /// the ingress port.
    Reply,
    /// For the node itself or for outside the cluster: hand the IP packet (after the Ethernet
    /// header) to the host interface.
    Host,
    /// Refused; counted under the reason.
    Drop(DropReason),
}

macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])* $name:ident => $label:literal, )*) => {
        /// Why a frame was dropped. Each reason has its own counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[doc = $doc])* $name, )*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// A stable snake_case label for metrics and the CLI.
            pub fn label(self) -> &'static str {
                match self { $(DropReason::$name => $label,)* }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than an Ethernet header.
    Truncated => "truncated",
    /// Carries an 802.1Q/802.1ad tag; pods send untagged frames.
    VlanTagged => "vlan_tagged",
    /// From a pod, neither IPv4, IPv6 nor ARP.
    UnsupportedEtherType => "unsupported_ethertype",
    /// ARP that is truncated or not Ethernet/IPv4.
    MalformedArp => "malformed_arp",
    /// ARP other than a request for the gateway address.
    ArpNotForGateway => "arp_not_for_gateway",
    /// IPv4 header with a bad version or impossible lengths.
    MalformedIpv4 => "malformed_ipv4",
    /// IPv4 header checksum does not verify.
    Ipv4Checksum => "ipv4_checksum",
    /// IPv4 options a Linux router rejects (a length past the header, a record-route or
    /// timestamp pointer out of range, two source routes, CIPSO without a domain); a pod
    /// hears so by ICMP parameter problem.
    BadIpOptions => "bad_ip_options",
    /// IPv4 loose or strict source routing, which Linux routers drop by default
    /// (`accept_source_route` 0).
    SourceRouted => "source_routed",
    /// IPv6 header with a bad version, impossible length or truncated extension headers.
    MalformedIpv6 => "malformed_ipv6",
    /// TCP/UDP/SCTP header too short to hold the ports.
    MalformedL4 => "malformed_l4",
    /// Neighbour discovery other than a solicitation for the gateway (router solicitations...).
    NeighbourDiscoveryIgnored => "nd_ignored",
    /// A neighbour solicitation that fails RFC 4861 §7.1.1 validation.
    MalformedNeighbourDiscovery => "malformed_nd",
    /// From a pod, an IP frame not addressed to the gateway MAC.
    DstMacNotGateway => "dst_mac_not_gateway",
    /// From a pod, a source address that is not one of the pod's.
    PodSourceSpoofed => "pod_source_spoofed",
    /// From a pod, to a multicast or broadcast address.
    MulticastDestination => "multicast_destination",
    /// TTL or hop limit would reach zero.
    TtlExpired => "ttl_expired",
    /// The source pod's egress policy denies it.
    PolicyDeniedEgress => "policy_denied_egress",
    /// The destination pod's ingress policy denies it.
    PolicyDeniedIngress => "policy_denied_ingress",
    /// A new flow the policy allows, but the worker's connection tracking table is full of
    /// live, answered flows.
    ConntrackFull => "conntrack_full",
    /// Decapsulated from node N, an inner source that is neither in N's pod CIDRs nor one of
    /// its tunnel addresses: a node (or someone spoofing its underlay address) claiming to be
    /// another node's pod.
    InnerSourceSpoofed => "inner_source_spoofed",
    /// The remote node's underlay next-hop MAC is not resolved yet.
    NextHopUnresolved => "next_hop_unresolved",
    /// Too big to encapsulate within the uplink MTU (a VTEP must not fragment).
    MtuExceeded => "mtu_exceeded",
    /// A pod's super-packet (a TAP edge with TSO) that cannot be cut into segments: not TCP
    /// over IPv4 or IPv6 without extension headers, inconsistent lengths, or a segment size
    /// that would make more than [`segment::MAX_SEGMENTS`] segments.
    BadSuperPacket => "bad_super_packet",
    /// The buffer has no headroom for the outer headers, or no tailroom for a reply.
    NoBufferRoom => "no_buffer_room",
    /// The ingress pod is not in the snapshot the batch ran on.
    UnknownIngress => "unknown_ingress",
    /// VXLAN candidate whose outer IP or UDP header is malformed.
    OuterMalformed => "outer_malformed",
    /// Outer IPv4 header or UDP checksum bad, or a zero UDP checksum over IPv6.
    OuterChecksum => "outer_checksum",
    /// Outer IPv4 or IPv6 fragment: a VTEP must not fragment, so nothing reassembles it.
    OuterFragment => "outer_fragment",
    /// VXLAN header too short, a flag other than I, or reserved bits set.
    VxlanBadFlags => "vxlan_bad_flags",
    /// VXLAN network identifier is not ours.
    VniMismatch => "vni_mismatch",
    /// Outer source is not a known node's underlay address (anti-spoofing).
    UnknownVtep => "unknown_vtep",
    /// Inner frame or inner IP header truncated or malformed.
    InnerMalformed => "inner_malformed",
    /// Inner frame carries a VLAN tag.
    InnerVlan => "inner_vlan",
    /// Inner destination MAC is not this node's VTEP MAC (the kernel's PACKET_OTHERHOST).
    InnerDstMacNotVtep => "inner_dst_mac_not_vtep",
    /// Inner source MAC is this node's own VTEP MAC (a loop).
    InnerSrcIsOwnVtep => "inner_src_is_own_vtep",
    /// Inner frame is neither IPv4 nor IPv6.
    InnerNotIp => "inner_not_ip",
    /// Decapsulated packet not for this node: another node's pod CIDR, or outside the cluster.
    DecapForRemoteNode => "decap_for_remote_node",
    /// Addressed to this node's pod CIDR, but to no pod and no address of the node.
    NoSuchPod => "no_such_pod",
    /// From the host interface, to an address outside every pod CIDR (a route the daemon
    /// has not removed yet).
    HostNoRoute => "host_no_route",
    /// An ICMP redirect from the host: the kernel sends them when a packet leaves the host
    /// interface it came in on, and a pod must never follow one.
    HostRedirect => "host_redirect",
    /// For the node or outside the cluster, and the dataplane runs without a host interface.
    NoHostInterface => "no_host_interface",
    /// On the uplink's socket, a frame that is not VXLAN for this node (the XDP program
    /// leaves those to the kernel).
    NotVxlanForNode => "not_vxlan_for_node",
    /// Outer ECN CE over an inner packet that is not ECN-capable (RFC 6040 §4.2: drop).
    EcnCeNotEct => "ecn_ce_not_ect",
}

/// Where a frame lies in its buffer: `len` bytes from offset `head`. The I/O layer keeps one
/// with every frame it owns (next to the buffer's handle) and the engine moves it in place
/// when it encapsulates or decapsulates, so both speak of a frame the same way and nothing is
/// copied back and forth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub head: u32,
    pub len: u32,
}

impl Span {
    pub fn new(head: usize, len: usize) -> Span {
        Span { head: head as u32, len: len as u32 }
    }

    /// One past the frame's last byte.
    pub fn end(&self) -> usize {
        self.head as usize + self.len as usize
    }
}

/// A frame in a buffer with headroom: the bytes of `buffer` that `span` names. The engine
/// grows it at the front for encapsulation and shrinks it for decapsulation, through the span.
#[derive(Debug)]
pub struct Frame<'a> {
    buffer: &'a mut [u8],
    span: &'a mut Span,
}

impl<'a> Frame<'a> {
    /// The frame `span` names in `buffer`.
    ///
    /// # Panics
    /// If the span reaches past the buffer: that is the I/O layer's bug, not bad input (it
    /// checks every descriptor the kernel hands it against its buffers).
    pub fn new(buffer: &'a mut [u8], span: &'a mut Span) -> Frame<'a> {
        assert!(span.end() <= buffer.len(), "frame outside buffer");
        Frame { buffer, span }
    }

    pub fn data(&self) -> &[u8] {
        &self.buffer[self.span.head as usize..self.span.end()]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        let end = self.span.end();
        &mut self.buffer[self.span.head as usize..end]
    }

    /// Offset of the frame's first byte in the buffer (the UMEM descriptor adds it).
    pub fn head(&self) -> usize {
        self.span.head as usize
    }

    pub fn len(&self) -> usize {
        self.span.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }

    /// Grows the frame by `n` bytes at the front; false when the headroom is too small.
    fn push_head(&mut self, n: usize) -> bool {
        if n > self.span.head as usize {
            return false;
        }
        self.span.head -= n as u32;
        self.span.len += n as u32;
        true
    }

    /// Drops the first `n` bytes (at most the frame's length).
    fn pull_head(&mut self, n: usize) {
        let n = (n as u32).min(self.span.len);
        self.span.head += n;
        self.span.len -= n;
    }

    /// Sets the length: trims Ethernet padding, or grows into tailroom; false when the buffer
    /// is too small.
    fn set_len(&mut self, len: usize) -> bool {
        if self.span.head as usize + len > self.buffer.len() {
            return false;
        }
        self.span.len = len as u32;
        true
    }
}

/// Frames whose routes are looked up together before their per-frame work (AF_XDP bursts
/// are up to 256; 64 keeps the hints on the stack small).
const LOOKAHEAD: usize = 64;

/// A route looked up ahead of the frame's own processing, keyed by the destination it was
/// read for. The frame is parsed properly later; the hint is used only if that parse finds
/// the same destination, so a malformed frame can never be misrouted by it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteHint {
    dst: Option<std::net::IpAddr>,
    target: Option<RouteTarget>,
}

impl RouteHint {
    const NONE: RouteHint = RouteHint { dst: None, target: None };

    /// Peeks at the IPv4/IPv6 destination of an untagged Ethernet frame, unvalidated.
    #[inline]
    fn lookup(snapshot: &Snapshot, frame: &[u8]) -> RouteHint {
        let dst = match (frame.get(12..14), frame.get(30..34), frame.get(38..54)) {
            (Some([0x08, 0x00]), Some(d), _) => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::new(d[0], d[1], d[2], d[3]))
            }
            (Some([0x86, 0xdd]), _, Some(d)) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(d);
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(a))
            }
            _ => return RouteHint::NONE,
        };
        RouteHint { dst: Some(dst), target: snapshot.route(dst) }
    }

    /// The route of `dst`: the hint's when it was looked up for `dst`, else a lookup now.
    #[inline]
    pub(crate) fn route(self, snapshot: &Snapshot, dst: std::net::IpAddr) -> Option<RouteTarget> {
        if self.dst == Some(dst) { self.target } else { snapshot.route(dst) }
    }
}

/// Per-worker counters: one instance per core, never shared, so plain integers suffice.
#[derive(Debug, Clone)]
pub struct Counters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub encap: u64,
    pub decap: u64,
    pub local: u64,
    pub reply: u64,
    pub host: u64,
    /// Bytes of the frames of each verdict above, as the verdict leaves them (an encapsulated
    /// frame with its outer headers; a super-packet whole).
    pub encap_bytes: u64,
    pub decap_bytes: u64,
    pub local_bytes: u64,
    pub reply_bytes: u64,
    pub host_bytes: u64,
    pub drops: [u64; DropReason::COUNT],
    /// Of `reply`, the ICMP errors (time exceeded, fragmentation needed, packet too big).
    pub icmp_errors: u64,
    /// Of `decap` and `local`, replies of flows that came through the node's kernel, sent
    /// back to the host interface instead ([`Pipeline::deliver`]).
    pub returned_via_host: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            rx_frames: 0,
            rx_bytes: 0,
            encap: 0,
            decap: 0,
            local: 0,
            reply: 0,
            host: 0,
            encap_bytes: 0,
            decap_bytes: 0,
            local_bytes: 0,
            reply_bytes: 0,
            host_bytes: 0,
            drops: [0; DropReason::COUNT],
            icmp_errors: 0,
            returned_via_host: 0,
        }
    }
}

impl Counters {
    /// Counts a verdict, and the `bytes` of the frame it leaves.
    #[inline]
    fn record(&mut self, verdict: Verdict, bytes: usize) {
        let (frames, total) = match verdict {
            Verdict::Encap => (&mut self.encap, &mut self.encap_bytes),
            Verdict::Decap(_) => (&mut self.decap, &mut self.decap_bytes),
            Verdict::Local(_) => (&mut self.local, &mut self.local_bytes),
            Verdict::Reply => (&mut self.reply, &mut self.reply_bytes),
            Verdict::Host => (&mut self.host, &mut self.host_bytes),
            Verdict::Drop(reason) => {
                self.drops[reason as usize] += 1;
                return;
            }
        };
        *frames += 1;
        *total += bytes as u64;
    }

    /// Count of drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another worker's counters into these (for totals).
    pub fn merge(&mut self, other: &Counters) {
        self.rx_frames += other.rx_frames;
        self.rx_bytes += other.rx_bytes;
        self.encap += other.encap;
        self.decap += other.decap;
        self.local += other.local;
        self.reply += other.reply;
        self.host += other.host;
        self.encap_bytes += other.encap_bytes;
        self.decap_bytes += other.decap_bytes;
        self.local_bytes += other.local_bytes;
        self.reply_bytes += other.reply_bytes;
        self.host_bytes += other.host_bytes;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
        self.icmp_errors += other.icmp_errors;
        self.returned_via_host += other.returned_via_host;
    }
}

/// One worker's pipeline: the configuration, its counters and the per-worker state the
/// outer headers need (the IPv4 identification counter) and ICMP errors obey (a rate limit).
#[derive(Debug)]
pub struct Pipeline {
    config: EngineConfig,
    counters: Counters,
    next_ip_id: u16,
    icmp_budget: icmp_error::Budget,
    host_flows: host_flows::HostFlows,
    conntrack: conntrack::Conntrack,
    /// The time [`Pipeline::set_clock`] last gave, in nanoseconds.
    now_ns: u64,
    /// The super-packet being processed ([`Pipeline::process_segmented`]), if any.
    segmented: Option<SuperPacket>,
}

/// The shape of a TCP super-packet, known before it is processed.
#[derive(Debug, Clone, Copy)]
struct SuperPacket {
    /// How many segments it is cut into.
    segments: usize,
    /// The IP length of its largest segment: what must fit the path.
    largest_ip_len: usize,
}

/// What becomes of a frame about to be delivered to a local pod ([`Pipeline::deliver`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Transmit it to the pod.
    Deliver,
    /// The reply of a flow through the node's kernel: to the host interface instead.
    ViaHost,
    /// Refused (already counted under the reason).
    Drop(DropReason),
}

impl Pipeline {
    pub fn new(config: EngineConfig) -> Pipeline {
        Pipeline::for_worker(config, 0)
    }

    /// The pipeline of worker `index`. Workers start their outer IPv4 identification
    /// counters 4096 apart, so that two workers sending to the same node do not emit the same
    /// IDs in lockstep (DF is clear, so an underlay that fragments reassembles by ID).
    pub fn for_worker(config: EngineConfig, index: u16) -> Pipeline {
        Pipeline {
            counters: Counters::default(),
            next_ip_id: index.wrapping_mul(4096),
            icmp_budget: icmp_error::Budget::default(),
            host_flows: host_flows::HostFlows::default(),
            conntrack: conntrack::Conntrack::new(config.conntrack.clone()),
            config,
            now_ns: 0,
            segmented: None,
        }
    }

    /// Tells the pipeline the time (any monotonic clock, in nanoseconds), before a batch: the
    /// ICMP error budget refills with it. Without it the budget never refills beyond its
    /// initial burst.
    pub fn set_clock(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
        self.icmp_budget.refill(now_ns);
        self.conntrack.age(now_ns);
    }

    /// For a frame about to be transmitted to local endpoint `endpoint` (a `Local` or `Decap`
    /// verdict, rewritten, possibly by another worker): the ingress side of policy, which the
    /// worker that owns the endpoint decides, since the endpoint's flows are tracked there.
    /// First, the reply of a flow that came from the endpoint through the node's kernel (a
    /// Service's DNAT) goes back to the host interface, where the kernel translates it back;
    /// then a packet from the node itself passes; anything else is judged by the endpoint's
    /// connection tracking and ingress policy. The frame is parsed once, and not at all when
    /// the worker remembers no flow through the kernel and the endpoint has no policy.
    pub fn deliver(&mut self, snapshot: &Snapshot, endpoint: EndpointId, frame: &[u8]) -> Delivery {
        let policed = snapshot
            .get_endpoint(endpoint)
            .map(|e| e.ingress_policy.is_some() || e.egress_policy.is_some());
        if self.host_flows.is_empty() && policed != Some(true) {
            return match policed {
                Some(false) => Delivery::Deliver,
                _ => self.refuse(DropReason::NoSuchPod),
            };
        }
        let Some((src, dst, flow, ip)) = host::parsed(frame) else {
            // Not IP: nothing a pipeline verdict delivers.
            return match policed {
                None => self.refuse(DropReason::NoSuchPod),
                Some(_) => Delivery::Deliver,
            };
        };
        if self.returns_via_host(endpoint, (src, dst), &flow) {
            return Delivery::ViaHost;
        }
        match policed {
            None => return self.refuse(DropReason::NoSuchPod),
            Some(false) => return Delivery::Deliver,
            Some(true) if snapshot.is_local_address(src) => return Delivery::Deliver,
            Some(true) => {}
        }
        let judged = policy::Judged { src, dst, flow: &flow, ip };
        match policy::judge(self, snapshot, endpoint, false, &judged, true) {
            Ok(()) => Delivery::Deliver,
            Err(reason) => self.refuse(reason),
        }
    }

    /// A frame refused at delivery, counted under its reason.
    fn refuse(&mut self, reason: DropReason) -> Delivery {
        self.counters.drops[reason as usize] += 1;
        Delivery::Drop(reason)
    }

    /// This worker's connection tracking (counts, flows for `show conntrack`).
    pub fn conntrack(&self) -> &conntrack::Conntrack {
        &self.conntrack
    }

    /// The time the pipeline was last told, in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Whether a packet (`src` → `dst`, `flow`) about to be delivered to local endpoint
    /// `endpoint` is the reply of a flow that came from that endpoint through the node's
    /// kernel, remembered by this worker (the one that owns the endpoint).
    fn returns_via_host(
        &mut self,
        endpoint: EndpointId,
        (src, dst): (IpAddr, IpAddr),
        flow: &flow::Flow,
    ) -> bool {
        if self.host_flows.is_empty() {
            return false;
        }
        let key = host_flows::FlowKey {
            endpoint,
            protocol: flow.protocol,
            local: (dst, flow.dst_port),
            remote: (src, flow.src_port),
        };
        let back = self.host_flows.contains(&key, self.now_ns);
        self.counters.returned_via_host += u64::from(back);
        back
    }

    /// How many flows through the node's kernel this worker remembers, and how many it could
    /// not for lack of room.
    pub fn host_flows(&self) -> (usize, u64) {
        (self.host_flows.len(), self.host_flows.refused)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Decides and applies a verdict for every frame of a batch received on `ingress`.
    /// `verdicts[i]` is frame `i`'s verdict.
    ///
    /// # Panics
    /// If `verdicts` and `frames` differ in length (a caller bug).
    pub fn process_batch(
        &mut self,
        snapshot: &Snapshot,
        ingress: Ingress,
        frames: &mut [Frame<'_>],
        verdicts: &mut [Verdict],
    ) {
        assert_eq!(frames.len(), verdicts.len(), "one verdict slot per frame");
        if let Ingress::Uplink = ingress {
            for (frame, verdict) in frames.iter_mut().zip(verdicts.iter_mut()) {
                *verdict = self.process_one(snapshot, ingress, frame);
            }
            return;
        }
        // From pods, routes are looked up for the whole batch first: a tight loop of
        // independent lookups lets the CPU overlap their cache misses, where one lookup per
        // frame, buried in the rest of the frame's work, waits on each miss in turn.
        for (frames, verdicts) in frames.chunks_mut(LOOKAHEAD).zip(verdicts.chunks_mut(LOOKAHEAD)) {
            let mut hints = [RouteHint::NONE; LOOKAHEAD];
            for (hint, frame) in hints.iter_mut().zip(frames.iter()) {
                *hint = RouteHint::lookup(snapshot, frame.data());
            }
            for ((frame, verdict), hint) in frames.iter_mut().zip(verdicts.iter_mut()).zip(hints) {
                *verdict = self.process_with_hint(snapshot, ingress, frame, hint);
            }
        }
    }

    /// The verdict for a TCP super-packet from a pod (a TAP edge with TSO on) or from the
    /// node's kernel (the host interface, with TSO on): up to 64 KiB of payload, to be cut
    /// into segments of `mss` bytes. Route, policy, connection tracking
    /// and encapsulation decide once for the whole packet; the path's MTU is checked against
    /// its largest segment; transport checksums are left as they are (each segment gets its
    /// own where the caller cuts the packet with [`segment::Segments`]: towards the uplink or
    /// a veth pod); an encapsulation reserves one outer IPv4 identification per segment. A
    /// receiver that takes it whole (a TAP pod on this node, the host interface) gets the
    /// packet as it came, its checksum still partial for the receiving kernel. Counted as one
    /// frame.
    pub fn process_segmented(
        &mut self,
        snapshot: &Snapshot,
        ingress: Ingress,
        frame: &mut Frame<'_>,
        mss: u16,
    ) -> Verdict {
        let shape = match (ingress, segment::Segments::new(frame.data(), false, mss)) {
            (Ingress::Pod(_) | Ingress::Host, Ok(s)) => {
                let eth = crate::wire::EthernetFrame::<&[u8]>::HEADER_LEN;
                SuperPacket { segments: s.count(), largest_ip_len: s.len_of(0) - eth }
            }
            _ => {
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += frame.len() as u64;
                let verdict = Verdict::Drop(DropReason::BadSuperPacket);
                self.counters.record(verdict, frame.len());
                return verdict;
            }
        };
        self.segmented = Some(shape);
        let verdict = self.process_one(snapshot, ingress, frame);
        self.segmented = None;
        verdict
    }

    /// The verdict for one frame on its own.
    #[inline]
    pub fn process_one(
        &mut self,
        snapshot: &Snapshot,
        ingress: Ingress,
        frame: &mut Frame<'_>,
    ) -> Verdict {
        self.process_with_hint(snapshot, ingress, frame, RouteHint::NONE)
    }

    #[inline]
    fn process_with_hint(
        &mut self,
        snapshot: &Snapshot,
        ingress: Ingress,
        frame: &mut Frame<'_>,
        hint: RouteHint,
    ) -> Verdict {
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len() as u64;
        let verdict = match ingress {
            Ingress::Uplink => uplink::process(self, snapshot, frame),
            Ingress::Host => host::process(self, snapshot, frame, hint),
            Ingress::Pod(id) => match snapshot.get_endpoint(id) {
                Some(_) => pod::process(self, snapshot, id, frame, hint),
                None => Verdict::Drop(DropReason::UnknownIngress),
            },
        };
        self.counters.record(verdict, frame.len());
        verdict
    }
}

#[cfg(test)]
mod tests;
