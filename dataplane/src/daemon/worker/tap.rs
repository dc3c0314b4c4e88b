//! A worker's TAP pods: frames read from a pod's TAP queue with their virtio-net header, a TCP
//! super-packet (up to 64 KiB, TSO; from a TAP pod or from the host interface) decided once by
//! the pipeline and then sent on whole where the next hop takes it whole (another TAP pod of
//! this node, the host interface, the tunnel-GSO interface) or cut once into segments where
//! it goes as frames (the uplink, a veth pod, another worker); frames written to a TAP pod
//! with a header.
//!
//! Every TAP frame goes through the pipeline from the worker's TAP buffer, one at a time: a
//! read from a TAP is a system call per frame anyway, and a super-packet is up to 44 frames'
//! worth of work decided once.

use super::Worker;
use super::forward::Target;
use super::inbox::Destination;
use super::jumbo::Linear;
use super::port::{PortCounters, PortId};
use crate::engine::coalesce::{Coalesced, Coalescer, Offer};
use crate::engine::offload;
use crate::engine::segment::Segments;
use crate::engine::{Delivery, Frame, Ingress, Span, Verdict};
use crate::io::tap::{TapQueue, TunnelGsoHeader};
use crate::io::vnet::VnetHeader;
use crate::io::xsk::Packet;
use crate::table::{EndpointId, Snapshot};
use crate::wire::{EthernetFrame, Ipv4Packet};

/// Frames read from one TAP per round of the loop, so that one busy pod does not hold the
/// worker (each can be a 64 KiB super-packet).
const TAP_BURST: usize = 32;
/// The largest frame a TAP pod hands over: a 64 KiB IP packet behind its Ethernet header.
const TAP_MAX_FRAME: usize = ETH + 65_535;
const ETH: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// Handle of a TAP among a worker's TAPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TapId(usize);

/// A TAP pod's queue, the pod it belongs to, and its counters.
#[derive(Debug)]
pub(super) struct TapPort {
    queue: TapQueue,
    pub(super) endpoint: EndpointId,
    /// `<interface>@<netns>`, how counters name it.
    pub(super) label: String,
    pub(super) stats: PortCounters,
    /// Of the frames received, TCP super-packets.
    pub(super) rx_super: u64,
    /// Of the packets written, segments joined into one (several each).
    pub(super) tx_super: u64,
    /// The segments for the pod, joined while they continue one another.
    coalescer: Coalescer,
}

impl TapPort {
    pub(super) fn queue(&self) -> &TapQueue {
        &self.queue
    }
}

impl Worker {
    pub(super) fn add_tap(&mut self, endpoint: EndpointId, queue: TapQueue, netns: &str) -> TapId {
        if self.tap_buffer.is_none() {
            let headroom = self.umems.get(self.umems.pods()).frame_headroom() as usize;
            self.tap_buffer = Some(Linear::new(headroom, TAP_MAX_FRAME));
        }
        let label = format!("{}@{netns}", queue.name());
        let port = TapPort {
            queue,
            endpoint,
            label,
            stats: PortCounters::default(),
            rx_super: 0,
            tx_super: 0,
            coalescer: Coalescer::new(),
        };
        let slot = self.taps.iter().position(Option::is_none).unwrap_or(self.taps.len());
        if slot == self.taps.len() {
            self.taps.push(None);
        }
        self.taps[slot] = Some(port);
        TapId(slot)
    }

    /// Takes a TAP out; its queue is returned to be closed where that may take its time.
    pub(super) fn remove_tap(&mut self, id: TapId) -> Option<TapQueue> {
        let port = self.taps.get_mut(id.0)?.take()?;
        Some(port.queue)
    }

    /// The pod a TAP belongs to.
    pub(super) fn tap_endpoint(&self, id: TapId) -> Option<EndpointId> {
        Some(self.taps.get(id.0)?.as_ref()?.endpoint)
    }

    /// Reads what every TAP pod sent, a burst each. Returns the number of frames read.
    pub(super) fn receive_taps(&mut self, snapshot: &Snapshot) -> usize {
        let Some(mut buffer) = self.tap_buffer.take() else { return 0 };
        let mut read = 0;
        for slot in 0..self.taps.len() {
            for _ in 0..TAP_BURST {
                let id = TapId(slot);
                let Some(tap) = self.taps.get_mut(slot).and_then(Option::as_mut) else { break };
                let start = buffer.headroom - VnetHeader::LEN;
                let n = match tap.queue.receive(&mut buffer.bytes[start..]) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(e) => {
                        let (endpoint, label) = (tap.endpoint, tap.label.clone());
                        tracing::warn!(worker = self.index, tap = label, "reading the TAP: {e}");
                        if let Some(instance) = self.instance(endpoint) {
                            self.lost(endpoint, instance, "its TAP device is gone");
                        }
                        break;
                    }
                };
                read += 1;
                if n <= VnetHeader::LEN {
                    tap.stats.tx_dropped += 1;
                    continue;
                }
                let mut header = [0u8; VnetHeader::LEN];
                header.copy_from_slice(&buffer.bytes[start..buffer.headroom]);
                let header = VnetHeader::parse(&header);
                let len = n - VnetHeader::LEN;
                tap.stats.rx_packets += 1;
                tap.stats.rx_bytes += len as u64;
                tap.rx_super += u64::from(header.tcp_segment_size().is_some());
                let endpoint = tap.endpoint;
                let span = Span::new(buffer.headroom, len);
                self.process_tap_frame(id, endpoint, &mut buffer, span, header, snapshot);
            }
        }
        self.tap_buffer = Some(buffer);
        read
    }

    /// One frame from TAP `tap` (pod `endpoint`) through the pipeline, then where its verdict
    /// says: a plain frame as any frame from a buffer, a super-packet whole or cut.
    fn process_tap_frame(
        &mut self,
        tap: TapId,
        endpoint: EndpointId,
        buffer: &mut Linear,
        span: Span,
        header: VnetHeader,
        snapshot: &Snapshot,
    ) {
        let (ingress, reply_to) = (Ingress::Pod(endpoint), Target::Tap(tap));
        match header.tcp_segment_size() {
            Some(_) => self.process_super(buffer, span, header, ingress, reply_to, snapshot),
            None => self.process_linear(buffer, span, ingress, reply_to, snapshot),
        }
    }

    /// A super-packet from the host interface or a TAP pod (`header` as a TAP's: its offsets
    /// behind the Ethernet header) through the pipeline, decided once, then on where its
    /// verdict says: whole to a TAP pod, the host interface or the tunnel-GSO interface, cut
    /// into segments for anything else. `reply_to` takes the pipeline's replies.
    pub(super) fn process_super(
        &mut self,
        buffer: &mut Linear,
        mut span: Span,
        header: VnetHeader,
        ingress: Ingress,
        reply_to: Target,
        snapshot: &Snapshot,
    ) {
        let mss = header.tcp_segment_size().unwrap_or_default();
        let verdict = {
            let mut frame = Frame::new(&mut buffer.bytes, &mut span);
            self.pipeline.process_segmented(snapshot, ingress, &mut frame, mss)
        };
        let frame = &mut buffer.bytes[span.head as usize..span.end()];
        if verdict == Verdict::Encap && self.send_tunnel_gso(frame, header) {
            return;
        }
        let frame = &*frame;
        match verdict {
            Verdict::Encap => match self.uplink {
                Some(uplink) => self.send_segments(Target::Port(uplink), frame, true, mss),
                None => self.io_counters.no_socket += 1,
            },
            Verdict::Decap(id) | Verdict::Local(id) => {
                self.deliver_super(self.target(id), frame, header, snapshot)
            }
            Verdict::Host => self.write_host_super(frame, header),
            Verdict::Reply => match reply_to {
                Target::Tap(tap) => self.write_tap(tap, VnetHeader::PLAIN, frame),
                other => self.send_linear(other, frame),
            },
            Verdict::Drop(_) => {}
        }
    }

    /// Hands an encapsulated super-packet to the tunnel-GSO interface, for the kernel to
    /// forward out of the uplink and segment there ([`crate::daemon::tunnel`]). `false` when
    /// it is not for that path (none here, an outer header it cannot take): the caller cuts.
    fn send_tunnel_gso(&mut self, frame: &mut [u8], header: VnetHeader) -> bool {
        const OUTER_IP: usize = 14;
        const OUTER_UDP: usize = OUTER_IP + 20;
        const INNER_IP: usize = OUTER_UDP + 8 + 8 + 14;
        let (Some(queue), Some(tunnel)) = (self.tunnel.as_mut(), self.shared.tunnel.as_ref())
        else {
            return false;
        };
        // The outer header as the engine writes it over IPv4: no options, a UDP checksum of
        // 0 (left as it is by the kernel's segmentation), a length its field can hold.
        let fits = frame.len() - OUTER_IP <= usize::from(u16::MAX);
        if !fits
            || frame.len() <= INNER_IP
            || frame[12..14] != [0x08, 0x00]
            || frame[OUTER_IP] != 0x45
            || frame[OUTER_UDP + 6..OUTER_UDP + 8] != [0, 0]
            || frame[OUTER_IP + 8] == u8::MAX
        {
            return false;
        }
        let (inner_header, inner_type) = match frame[INNER_IP] >> 4 {
            4 => (usize::from(frame[INNER_IP] & 0x0f) * 4, VnetHeader::GSO_TCPV4),
            _ => (40, VnetHeader::GSO_TCPV6),
        };
        let Some(mss) = header.tcp_segment_size() else { return false };
        // Addressed to the device, so that the kernel takes it as its own to forward; one
        // hop more, since forwarding takes one off.
        let next_hop: [u8; 6] = std::array::from_fn(|i| frame[i]);
        frame[..6].copy_from_slice(&tunnel.mac.0);
        set_outer_ttl(frame, frame[OUTER_IP + 8] + 1);
        let gso = TunnelGsoHeader {
            inner_gso_type: inner_type | (header.gso_type & VnetHeader::GSO_ECN),
            gso_size: mss,
            csum_start: (INNER_IP + inner_header) as u16,
            outer_udp: OUTER_UDP as u16,
            inner_ip: INNER_IP as u16,
        };
        match queue.send(gso, frame) {
            Ok(true) => self.io_counters.tunnel_gso += 1,
            Ok(false) => self.io_counters.tunnel_gso_dropped += 1,
            Err(e) => {
                // A kernel without UDP-tunnel GSO refuses the header: cut from now on, this
                // one included, as the engine wrote it.
                tracing::warn!(
                    worker = self.index,
                    interface = tunnel.name,
                    "the kernel did not take a super-packet to segment ({e}): cutting them here"
                );
                self.tunnel = None;
                frame[..6].copy_from_slice(&next_hop);
                set_outer_ttl(frame, frame[OUTER_IP + 8] - 1);
                return false;
            }
        }
        true
    }

    /// A super-packet for a local pod: judged at delivery for this worker's pods, then written
    /// whole to a TAP pod, handed whole to the worker that owns the pod, or cut for a veth
    /// pod.
    pub(super) fn deliver_super(
        &mut self,
        target: Target,
        frame: &[u8],
        header: VnetHeader,
        snapshot: &Snapshot,
    ) {
        let mss = header.tcp_segment_size().unwrap_or_default();
        if let Some(endpoint) = self.endpoint_of(target) {
            match self.pipeline.deliver(snapshot, endpoint, frame) {
                Delivery::Deliver => {}
                Delivery::ViaHost => return self.write_host_super(frame, header),
                Delivery::Drop(_) => return,
            }
        }
        match target {
            Target::Tap(tap) => self.write_tap(tap, header, frame),
            Target::Worker { worker, endpoint, instance, .. } => {
                let destination = Destination::PodSuper { endpoint, instance, header };
                self.hand_off_super(worker, destination, frame)
            }
            other => self.send_segments(other, frame, false, mss),
        }
    }

    /// Cuts a super-packet (`encapsulated` in VXLAN, or not) into segments of `mss` bytes of
    /// payload, each sent to `target` as a frame of its own.
    pub(super) fn send_segments(
        &mut self,
        target: Target,
        frame: &[u8],
        encapsulated: bool,
        mss: u16,
    ) {
        let segments = match Segments::new(frame, encapsulated, mss) {
            Ok(segments) => segments,
            Err(e) => {
                // The pipeline validated the layout; only a bug gets here.
                tracing::debug!(worker = self.index, "a super-packet could not be cut: {e}");
                self.io_counters.segmentation_failed += 1;
                return;
            }
        };
        self.io_counters.segments += segments.count() as u64;
        for i in 0..segments.count() {
            match target {
                Target::Port(port) => self.queue_segment(port, &segments, i),
                _ => {
                    let mut scratch = std::mem::take(&mut self.scratch);
                    scratch.resize(segments.len_of(i), 0);
                    if let Some(len) = segments.write(i, &mut scratch) {
                        self.send_linear(target, &scratch[..len]);
                    }
                    self.scratch = scratch;
                }
            }
        }
    }

    /// Writes segment `i` straight into a chunk of the port's UMEM and queues it (through the
    /// scratch buffer as a chain when it is longer than a chunk: a jumbo underlay).
    fn queue_segment(&mut self, port: PortId, segments: &Segments<'_>, i: usize) {
        let Some(umem) = self.ports.get(port).map(|p| p.umem) else {
            self.io_counters.no_socket += 1;
            return;
        };
        let room = self.umems.get(umem).config().max_frame() as usize;
        if segments.len_of(i) > room {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.resize(segments.len_of(i), 0);
            if let Some(len) = segments.write(i, &mut scratch) {
                self.send_linear(Target::Port(port), &scratch[..len]);
            }
            self.scratch = scratch;
            return;
        }
        let Some(chunk) = self.umems.get(umem).allocate() else {
            self.io_counters.chunk_exhausted += 1;
            return;
        };
        let headroom = self.umems.get(umem).frame_headroom() as usize;
        let mut packet = Packet::new(chunk, Span::new(headroom, 0));
        self.umems.lend_one(&mut packet, |bytes, span| {
            let len = segments.write(i, &mut bytes[headroom..]).unwrap_or(0);
            span.len = len as u32;
        });
        if packet.span.len == 0 {
            self.umems.release(packet);
            return;
        }
        if let Err(packet) = self.ports.queue(port, packet, self.budget.pending_limit) {
            self.umems.release(packet);
        }
    }

    /// Writes a frame to a TAP pod as it is, with its virtio-net header (a super-packet from
    /// another TAP pod, a reply), after the packet the pod's segments were being joined into.
    pub(super) fn write_tap(&mut self, tap: TapId, header: VnetHeader, frame: &[u8]) {
        let Some(port) = self.taps.get_mut(tap.0).and_then(Option::as_mut) else {
            self.io_counters.no_socket += 1;
            return;
        };
        port.write_joined();
        port.write(header, frame);
    }

    /// A frame for a TAP pod (a segment from the uplink, a veth pod, the host, another
    /// worker): joined to the packet being built for the pod, or written.
    pub(super) fn deliver_to_tap(&mut self, tap: TapId, frame: &[u8]) {
        match self.taps.get_mut(tap.0).and_then(Option::as_mut) {
            Some(port) => port.deliver(frame),
            None => self.io_counters.no_socket += 1,
        }
    }

    /// The frame of a chunk for a TAP pod ([`Worker::deliver_to_tap`]); the chunk is released.
    pub(super) fn send_tap(&mut self, tap: TapId, mut packet: Packet) {
        let (taps, io) = (&mut self.taps, &mut self.io_counters);
        self.umems.lend_one(&mut packet, |buffer, span| {
            let frame = buffer.get(span.head as usize..span.end()).unwrap_or_default();
            match taps.get_mut(tap.0).and_then(Option::as_mut) {
                Some(port) => port.deliver(frame),
                None => io.no_socket += 1,
            }
        });
        self.umems.release(packet);
    }

    /// Writes what every TAP pod's packet holds (at the end of a round of the loop: segments
    /// are joined within what one round received, never held longer).
    pub(super) fn flush_taps(&mut self) {
        for port in self.taps.iter_mut().flatten() {
            port.write_joined();
        }
    }
}

impl TapPort {
    /// [`Worker::deliver_to_tap`].
    fn deliver(&mut self, frame: &[u8]) {
        let TapPort { queue, stats, label, tx_super, coalescer, .. } = self;
        join(coalescer, frame, sink(queue, stats, label, tx_super));
    }

    /// Writes the packet being joined, if any.
    fn write_joined(&mut self) {
        let TapPort { queue, stats, label, tx_super, coalescer, .. } = self;
        write_joined(coalescer, &mut sink(queue, stats, label, tx_super));
    }

    /// Writes one frame with its header, counted.
    fn write(&mut self, header: VnetHeader, frame: &[u8]) {
        count(&mut self.stats, &self.label, self.queue.send(header, frame), frame.len());
    }
}

/// What writes a TAP pod's packets for [`join`]: each counted, a joined one that was written
/// also under `tx_super`.
fn sink<'a>(
    queue: &'a mut TapQueue,
    stats: &'a mut PortCounters,
    label: &'a str,
    tx_super: &'a mut u64,
) -> impl FnMut(VnetHeader, &[u8], bool) + 'a {
    move |header, frame, joined| {
        let written = count(stats, label, queue.send(header, frame), frame.len());
        *tx_super += u64::from(joined && written);
    }
}

/// Offers a frame to `coalescer` (a TAP pod's, the host queue's) and writes what that gives
/// with `write` (a frame, its header, whether it was joined from several segments): the
/// packet being joined once it is complete or the frame does not continue it, and the frame
/// itself, with a header of its own, when it joins nothing.
pub(super) fn join(
    coalescer: &mut Coalescer,
    frame: &[u8],
    mut write: impl FnMut(VnetHeader, &[u8], bool),
) {
    loop {
        match coalescer.offer(frame) {
            Offer::Joined => return,
            Offer::Complete => return write_joined(coalescer, &mut write),
            // Taken, the frame opens the next packet.
            Offer::Mismatch => write_joined(coalescer, &mut write),
            Offer::Alone => {
                write_joined(coalescer, &mut write);
                return write(header_for(frame), frame, false);
            }
        }
    }
}

/// Writes the packet `coalescer` was joining, if any, with `write` ([`join`]).
pub(super) fn write_joined(
    coalescer: &mut Coalescer,
    write: &mut impl FnMut(VnetHeader, &[u8], bool),
) {
    if let Some(joined) = coalescer.take() {
        write(header_of(&joined), joined.frame, joined.gso.is_some());
    }
}

/// The virtio-net header of a packet taken from a [`Coalescer`] (offsets behind its Ethernet
/// header): the segment size of a joined one, a checksum left partial.
fn header_of(joined: &Coalesced<'_>) -> VnetHeader {
    match (joined.gso, joined.partial_checksum_at) {
        (None, None) => VnetHeader::PLAIN,
        (None, Some(tcp)) => VnetHeader::partial_checksum(tcp, 16),
        (Some(gso), _) => VnetHeader {
            flags: VnetHeader::NEEDS_CSUM,
            gso_type: if gso.ipv6 { VnetHeader::GSO_TCPV6 } else { VnetHeader::GSO_TCPV4 },
            header_len: gso.header_len,
            gso_size: gso.segment_size,
            csum_start: gso.csum_start,
            csum_offset: 16,
        },
    }
}

/// The virtio-net header of a frame written on its own (offsets behind its Ethernet header):
/// a checksum the engine left partial (`offload`) is flagged for the receiving kernel, which
/// trusts it as it trusts CHECKSUM_PARTIAL from a veth.
fn header_for(frame: &[u8]) -> VnetHeader {
    match frame.get(ETH..).and_then(offload::partial_checksum) {
        Some(partial) => {
            VnetHeader::partial_checksum((ETH + partial.start) as u16, partial.offset as u16)
        }
        None => VnetHeader::PLAIN,
    }
}

/// Counts a write to a TAP; whether the frame was written.
fn count(stats: &mut PortCounters, label: &str, sent: std::io::Result<bool>, len: usize) -> bool {
    match sent {
        Ok(true) => {
            stats.tx_packets += 1;
            stats.tx_bytes += len as u64;
            return true;
        }
        Ok(false) => stats.tx_dropped += 1,
        Err(e) => {
            stats.tx_dropped += 1;
            tracing::debug!(tap = label, "writing to the TAP: {e}");
        }
    }
    false
}

/// Sets the outer IPv4 header's TTL (the header at offset 14, without options) and its
/// checksum.
fn set_outer_ttl(frame: &mut [u8], ttl: u8) {
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..34]);
    ip.set_ttl(ttl);
    ip.fill_checksum();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP segment behind an Ethernet header, its checksum complete.
    fn segment(v4: bool) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6]);
        let builder = if v4 {
            builder.ipv4([10, 244, 2, 5], [10, 244, 1, 3], 64)
        } else {
            builder.ipv6([0xfd; 16], [0xfe; 16], 64)
        };
        let mut out = Vec::new();
        builder.tcp(5000, 80, 7, 1000).ack(1).write(&mut out, &[0x5a; 1000]).unwrap();
        out
    }

    #[test]
    fn a_partial_checksum_written_alone_is_flagged_and_a_complete_one_is_not() {
        for (v4, tcp) in [(true, 14 + 20), (false, 14 + 40)] {
            let mut frame = segment(v4);
            let complete = frame.clone();
            assert_eq!(header_for(&frame), VnetHeader::PLAIN, "complete");
            // What a kernel behind a veth leaves: the pseudo-header's sum in the field.
            let pseudo = partial_field(&frame, v4, tcp);
            frame[tcp + 16..tcp + 18].copy_from_slice(&pseudo.to_be_bytes());
            let header = header_for(&frame);
            assert_eq!(header.flags, VnetHeader::NEEDS_CSUM);
            assert_eq!((header.csum_start, header.csum_offset), (tcp as u16, 16));
            assert_eq!(header.gso_type, VnetHeader::GSO_NONE);
            // What the pod's kernel completes is the segment as it was.
            assert!(offload::finish_partial_checksum(&mut frame[ETH..]));
            assert_eq!(frame, complete);
        }
        assert_eq!(header_for(&[0u8; 10]), VnetHeader::PLAIN, "too short to tell");
    }

    /// The folded pseudo-header sum of the segment at `tcp`.
    fn partial_field(frame: &[u8], v4: bool, tcp: usize) -> u16 {
        use crate::wire::checksum::{fold, pseudo_header_v4, pseudo_header_v6};
        let len = frame.len() - tcp;
        let pseudo = if v4 {
            let at =
                |i: usize| std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&frame[i..i + 4]).unwrap());
            pseudo_header_v4(at(26), at(30), 6, len as u16)
        } else {
            let at = |i: usize| {
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&frame[i..i + 16]).unwrap())
            };
            pseudo_header_v6(at(22), at(38), 6, len as u32)
        };
        fold(u64::from(pseudo))
    }
}
