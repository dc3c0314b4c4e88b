//! A worker's queue of the host interface. Each packet the node's kernel routed into the
//! overlay is read with its virtio-net header into the queue's buffer, behind an Ethernet
//! header the pipeline's host path does not look at. A TCP super-packet (the kernel's TSO)
//! goes through the pipeline from there, decided once, and on whole where the next hop takes
//! it whole (a TAP pod) or cut where it goes as frames; any other packet is copied into a
//! fresh UMEM chunk and goes through the pipeline in a batch (or from the buffer, when it is
//! longer than a chunk: a jumbo underlay). Packets keep the order they were read in: a batch
//! is run before a packet that does not join it.
//!
//! What the pipeline hands to the host is written with a header that says what it is: a
//! super-packet from a TAP pod whole, with its segment size; a checksum left partial,
//! flagged, so that the kernel trusts it as it trusts one from a veth. Segments for the host
//! (from veth pods, decapsulated) are joined first, as for a TAP pod (`engine::coalesce`, the
//! kernel's GRO rules), within one round of the worker's loop.

use std::net::IpAddr;

use super::Worker;
use super::forward::Target;
use super::inbox::Destination;
use super::jumbo::Linear;
use super::tap;
use crate::api::HostCounters;
use crate::engine::coalesce::Coalescer;
use crate::engine::{Ingress, Span, offload};
use crate::io::tun::TunQueue;
use crate::io::vnet::VnetHeader;
use crate::io::xsk::Packet;
use crate::table::{RouteTarget, Snapshot};
use crate::wire::EthernetFrame;

const ETH: usize = EthernetFrame::<&[u8]>::HEADER_LEN;
/// The longest packet the node's kernel hands over: a 64 KiB IP packet (a TSO super-packet,
/// or a packet of a jumbo underlay's MTU).
const MAX_PACKET: usize = 65_535;

/// A worker's queue of the host interface and its counters.
#[derive(Debug)]
pub(super) struct HostQueue {
    pub(super) tun: TunQueue,
    pub(super) counters: HostCounters,
    /// Where packets are read: the UMEM's headroom, the Ethernet header the pipeline
    /// expects, then the IP packet (its virtio-net header read just before it). Allocated at
    /// the first read.
    buffer: Option<Linear>,
    /// The segments for the node's kernel, joined while they continue one another.
    coalescer: Coalescer,
}

impl HostQueue {
    pub(super) fn new(tun: TunQueue, queue: u32) -> HostQueue {
        let counters =
            HostCounters { interface: tun.name().to_owned(), queue, ..HostCounters::default() };
        HostQueue { tun, counters, buffer: None, coalescer: Coalescer::new() }
    }

    /// A frame for the node's kernel: joined to the packet being built, or written.
    fn deliver(&mut self, frame: &[u8]) {
        let HostQueue { tun, counters, coalescer, .. } = self;
        tap::join(coalescer, frame, sink(tun, counters));
    }

    /// Writes the packet being joined, if any.
    pub(super) fn write_joined(&mut self) {
        let HostQueue { tun, counters, coalescer, .. } = self;
        tap::write_joined(coalescer, &mut sink(tun, counters));
    }
}

/// What writes packets to the host queue `tun`, for [`tap::join`]: the IP packet of each
/// frame (after its Ethernet header), `header` as a TAP's (offsets behind the Ethernet
/// header), counted; a super-packet (`joined`, or whole from a TAP pod) that was written also
/// under `tx_super_packets`.
fn sink<'a>(
    tun: &'a mut TunQueue,
    counters: &'a mut HostCounters,
) -> impl FnMut(VnetHeader, &[u8], bool) + 'a {
    move |header, frame, joined| {
        let ip = frame.get(ETH..).unwrap_or_default();
        if !ip.is_empty() && matches!(tun.send(header.moved(-(ETH as i32)), ip), Ok(true)) {
            counters.tx_packets += 1;
            counters.tx_bytes += ip.len() as u64;
            counters.tx_super_packets += u64::from(joined);
        } else {
            counters.tx_dropped += 1;
        }
    }
}

/// What one read from the host queue gave.
enum Read {
    /// A packet of `len` bytes of IP behind the buffer's Ethernet header, and its header.
    Packet { len: usize, header: VnetHeader },
    /// Nothing (more) to read.
    Empty,
    /// A packet that could not be taken (counted).
    Refused,
}

impl Worker {
    /// Reads a burst from the host interface and runs it through the pipeline. Returns the
    /// number of packets read.
    pub(super) fn receive_host(&mut self, snapshot: &Snapshot) -> usize {
        let Some(host) = self.host.as_mut() else { return 0 };
        let pods = self.umems.pods();
        let headroom = self.umems.get(pods).frame_headroom() as usize;
        let room = self.umems.get(pods).config().max_frame() as usize;
        let mut buffer =
            host.buffer.take().unwrap_or_else(|| Linear::new(headroom, ETH + MAX_PACKET));
        self.rx.clear();
        let mut read = 0;
        while read < super::BURST {
            let (len, header) = match self.read_host(&mut buffer) {
                Read::Packet { len, header } => (len, header),
                Read::Empty => break,
                Read::Refused => {
                    read += 1;
                    continue;
                }
            };
            read += 1;
            let span = Span::new(buffer.headroom, ETH + len);
            let frame = &buffer.bytes[span.head as usize..span.end()];
            if header.tcp_segment_size().is_none() && frame.len() <= room {
                let Some(chunk) = self.umems.get(pods).allocate() else {
                    self.io_counters.chunk_exhausted += 1;
                    continue;
                };
                let mut packet = Packet::new(chunk, Span::new(headroom, frame.len()));
                self.umems.lend_one(&mut packet, |bytes, span| {
                    bytes[span.head as usize..span.end()].copy_from_slice(frame);
                });
                self.rx.push(packet);
                continue;
            }
            // Not for the batch: the batch goes first, so that a flow keeps its order.
            self.process_host_batch(snapshot);
            let owner = self.owner_of_source(frame, snapshot);
            let header = header.moved(ETH as i32);
            match (owner, header.tcp_segment_size()) {
                (Some(worker), Some(_)) => {
                    self.hand_off_super(worker, Destination::HostSuper { header }, frame)
                }
                (Some(worker), None) => {
                    self.hand_off_bytes(worker, Destination::HostIngress, frame)
                }
                (None, Some(_)) => self.process_super(
                    &mut buffer,
                    span,
                    header,
                    Ingress::Host,
                    Target::Host,
                    snapshot,
                ),
                (None, None) => {
                    self.process_linear(&mut buffer, span, Ingress::Host, Target::Host, snapshot)
                }
            }
        }
        if let Some(host) = self.host.as_mut() {
            host.buffer = Some(buffer);
        }
        self.process_host_batch(snapshot);
        read
    }

    /// Reads one packet into `buffer`, its IP packet behind the Ethernet header the pipeline
    /// expects. A checksum the kernel left partial where the engine would not see it
    /// ([`offload::partial_checksum`]: not TCP or UDP) is finished here, by the header.
    fn read_host(&mut self, buffer: &mut Linear) -> Read {
        let Some(host) = self.host.as_mut() else { return Read::Empty };
        let ip_at = buffer.headroom + ETH;
        let header_at = ip_at - VnetHeader::LEN;
        let n = match host.tun.receive(&mut buffer.bytes[header_at..]) {
            Ok(Some(n)) => n,
            Ok(None) => return Read::Empty,
            Err(e) => {
                tracing::warn!(worker = self.index, "reading the host interface: {e}");
                return Read::Empty;
            }
        };
        // Filled the buffer to its end: the packet may be longer, and cut.
        if header_at + n >= buffer.bytes.len() {
            host.counters.rx_too_long += 1;
            return Read::Refused;
        }
        if n <= VnetHeader::LEN {
            host.counters.rx_bad_header += 1;
            return Read::Refused;
        }
        let len = n - VnetHeader::LEN;
        let mut bytes = [0u8; VnetHeader::LEN];
        bytes.copy_from_slice(&buffer.bytes[header_at..ip_at]);
        let header = VnetHeader::parse(&bytes);
        host.counters.rx_packets += 1;
        host.counters.rx_bytes += len as u64;
        host.counters.rx_super_packets += u64::from(header.tcp_segment_size().is_some());
        let ethertype: u16 = match buffer.bytes[ip_at] >> 4 {
            4 => 0x0800,
            6 => 0x86dd,
            _ => 0,
        };
        let eth = &mut buffer.bytes[buffer.headroom..ip_at];
        eth[..12].fill(0);
        eth[12..].copy_from_slice(&ethertype.to_be_bytes());
        let ip = &mut buffer.bytes[ip_at..ip_at + len];
        if header.needs_checksum()
            && header.tcp_segment_size().is_none()
            && offload::partial_checksum(ip).is_none()
        {
            let (start, offset) = (usize::from(header.csum_start), usize::from(header.csum_offset));
            if !offload::finish_checksum_at(ip, start, offset) {
                host.counters.rx_bad_header += 1;
                return Read::Refused;
            }
        }
        Read::Packet { len, header }
    }

    /// Runs the packets read into chunks (`self.rx`) through the pipeline, after handing the
    /// ones whose source is another worker's pod to that worker.
    fn process_host_batch(&mut self, snapshot: &Snapshot) {
        if self.shared.workers > 1 && !self.rx.is_empty() {
            self.hand_over_foreign_sources(snapshot);
        }
        if !self.rx.is_empty() {
            self.process_received(Ingress::Host, Target::Host, snapshot);
        }
    }

    /// The worker that owns the pod a host frame comes from, when that is another worker: the
    /// flows a pod has through the node's kernel are that worker's to remember (inbox module
    /// doc).
    fn owner_of_source(&self, frame: &[u8], snapshot: &Snapshot) -> Option<usize> {
        self.owner_of(frame.get(ETH..).and_then(source_of), snapshot)
    }

    /// The worker that owns the pod `source`, when that is another worker.
    fn owner_of(&self, source: Option<IpAddr>, snapshot: &Snapshot) -> Option<usize> {
        if self.shared.workers <= 1 {
            return None;
        }
        match snapshot.route(source?)? {
            RouteTarget::Endpoint(id) => match self.target(id) {
                Target::Worker { worker, .. } => Some(worker),
                _ => None,
            },
            RouteTarget::Node(_) => None,
        }
    }

    /// Hands the packets of `self.rx` whose source is a pod another worker owns to that
    /// worker, unprocessed.
    fn hand_over_foreign_sources(&mut self, snapshot: &Snapshot) {
        let mut rx = std::mem::take(&mut self.rx);
        for mut packet in rx.drain(..) {
            let mut source = None;
            self.umems.lend_one(&mut packet, |buffer, span| {
                source = buffer.get(span.head as usize + ETH..span.end()).and_then(source_of);
            });
            match self.owner_of(source, snapshot) {
                Some(worker) => {
                    self.hand_off(worker, Destination::HostIngress, &mut packet);
                    self.umems.release(packet);
                }
                None => self.rx.push(packet),
            }
        }
        // Keep the vector's allocation for the next burst.
        if self.rx.is_empty() {
            self.rx = rx;
        }
    }

    /// A super-packet from the host interface that another worker read, its source one of
    /// this worker's pods: through the pipeline from this worker's host buffer.
    pub(super) fn take_host_super(
        &mut self,
        frame: &[u8],
        header: VnetHeader,
        snapshot: &Snapshot,
    ) {
        let pods = self.umems.pods();
        let headroom = self.umems.get(pods).frame_headroom() as usize;
        let Some(host) = self.host.as_mut() else {
            self.io_counters.handoff_dropped += 1;
            return;
        };
        let mut buffer =
            host.buffer.take().unwrap_or_else(|| Linear::new(headroom, ETH + MAX_PACKET));
        if frame.len() <= buffer.capacity() {
            let start = buffer.headroom;
            buffer.bytes[start..start + frame.len()].copy_from_slice(frame);
            let span = Span::new(start, frame.len());
            self.process_super(&mut buffer, span, header, Ingress::Host, Target::Host, snapshot);
        } else {
            self.io_counters.handoff_dropped += 1;
        }
        if let Some(host) = self.host.as_mut() {
            host.buffer = Some(buffer);
        }
    }

    /// Hands a frame to the host interface (joined to the segments before it where it
    /// continues them) and releases its chunk.
    pub(super) fn send_host(&mut self, mut packet: Packet) {
        let (host, io) = (&mut self.host, &mut self.io_counters);
        self.umems.lend_one(&mut packet, |buffer, span| {
            let frame = buffer.get(span.head as usize..span.end()).unwrap_or_default();
            match host.as_mut() {
                Some(host) => host.deliver(frame),
                None => io.no_socket += 1,
            }
        });
        self.umems.release(packet);
    }

    /// [`Worker::send_host`] for a frame in a buffer.
    pub(super) fn write_host(&mut self, frame: &[u8]) {
        match self.host.as_mut() {
            Some(host) => host.deliver(frame),
            None => self.io_counters.no_socket += 1,
        }
    }

    /// Hands a TCP super-packet (behind its Ethernet header; `header` as a TAP's) to the host
    /// interface whole, after the packet being joined, for the node's kernel to take as it
    /// came.
    pub(super) fn write_host_super(&mut self, frame: &[u8], header: VnetHeader) {
        let Some(host) = self.host.as_mut() else {
            self.io_counters.no_socket += 1;
            return;
        };
        host.write_joined();
        sink(&mut host.tun, &mut host.counters)(header, frame, true);
    }

    /// Writes the packet the host queue was joining (at the end of a round of the loop).
    pub(super) fn flush_host(&mut self) {
        if let Some(host) = self.host.as_mut() {
            host.write_joined();
        }
    }
}

/// The source address of an IP packet (version from the first nibble).
fn source_of(ip: &[u8]) -> Option<IpAddr> {
    match ip.first()? >> 4 {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?)),
        _ => None,
    }
}
