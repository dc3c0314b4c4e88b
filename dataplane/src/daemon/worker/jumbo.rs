//! Frames longer than a chunk: on a jumbo underlay (an MTU up to 9,000 and beyond) sockets are
//! multi-buffer, and such a frame arrives as a chain of packets, each but the last marked
//! `continues`. The pipeline works on contiguous frames, so a chain is copied into the
//! worker's one linear buffer, goes through the pipeline alone, and leaves as a chain again
//! (or as one write to the host interface, or one hand-over): two userspace copies per jumbo
//! frame, on top of the kernel's in copy mode. Frames that fit a chunk (4 KiB on a jumbo
//! underlay) never come here.

use super::Worker;
use super::forward::Target;
use super::inbox::Destination;
use super::port::PortId;
use crate::engine::{Delivery, Frame, Ingress, Span, Verdict};
use crate::io::xsk::Packet;
use crate::table::Snapshot;

/// The worker's buffer for one frame at a time: the UMEM's headroom in front (for the outer
/// headers), then room for the largest frame the uplink carries.
#[derive(Debug)]
pub(super) struct Linear {
    pub(super) bytes: Box<[u8]>,
    pub(super) headroom: usize,
}

impl Linear {
    pub(super) fn new(headroom: usize, max_frame: usize) -> Linear {
        Linear { bytes: vec![0; headroom + max_frame].into_boxed_slice(), headroom }
    }

    /// The longest frame it holds.
    pub(super) fn capacity(&self) -> usize {
        self.bytes.len() - self.headroom
    }
}

impl Worker {
    /// Takes the chains out of `self.rx` (received on `port`), leaving the frames that fit a
    /// chunk; each whole chain goes through the pipeline on its own. A chain cut at the end of
    /// a burst waits on the port for the rest.
    pub(super) fn take_chains(&mut self, port: PortId, ingress: Ingress, snapshot: &Snapshot) {
        let Some(p) = self.ports.get_mut(port) else { return };
        if p.partial.is_empty() && !self.rx.iter().any(|packet| packet.continues) {
            return;
        }
        let mut partial = std::mem::take(&mut p.partial);
        let mut rx = std::mem::take(&mut self.rx);
        let mut chains = Vec::new();
        for packet in rx.drain(..) {
            if packet.continues || !partial.is_empty() {
                let last = !packet.continues;
                partial.push(packet);
                if last {
                    chains.push(std::mem::take(&mut partial));
                }
            } else {
                self.rx.push(packet);
            }
        }
        if let Some(p) = self.ports.get_mut(port) {
            p.partial = partial;
        }
        for chain in chains {
            self.process_chain(chain, ingress, Target::Port(port), snapshot);
        }
    }

    /// One chain through the pipeline, through the linear buffer.
    fn process_chain(
        &mut self,
        chain: Vec<Packet>,
        ingress: Ingress,
        reply_to: Target,
        snapshot: &Snapshot,
    ) {
        let Some(mut linear) = self.linear.take() else {
            // No linear buffer: sockets are not multi-buffer, so no chain can arrive.
            for packet in chain {
                self.umems.release(packet);
            }
            return;
        };
        let total: usize = chain.iter().map(|p| p.span.len as usize).sum();
        let fits = total <= linear.capacity();
        let mut at = linear.headroom;
        for mut packet in chain {
            if fits {
                let dst = &mut linear.bytes;
                self.umems.lend_one(&mut packet, |bytes, span| {
                    let part = &bytes[span.head as usize..span.end()];
                    dst[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                });
            }
            self.umems.release(packet);
        }
        self.io_counters.jumbo_frames += 1;
        if !fits {
            self.io_counters.jumbo_too_long += 1;
            self.linear = Some(linear);
            return;
        }
        let span = Span::new(linear.headroom, total);
        self.process_linear(&mut linear, span, ingress, reply_to, snapshot);
        self.linear = Some(linear);
    }

    /// A frame in the linear buffer through the pipeline, then to where its verdict says.
    pub(super) fn process_linear(
        &mut self,
        linear: &mut Linear,
        mut span: Span,
        ingress: Ingress,
        reply_to: Target,
        snapshot: &Snapshot,
    ) {
        let mut verdict = [Verdict::Host];
        {
            let mut frames = [Frame::new(&mut linear.bytes, &mut span)];
            self.pipeline.process_batch(snapshot, ingress, &mut frames, &mut verdict);
        }
        let frame = &linear.bytes[span.head as usize..span.end()];
        let target = match verdict[0] {
            Verdict::Encap => self.uplink.map_or(Target::Nowhere, Target::Port),
            Verdict::Decap(id) | Verdict::Local(id) => {
                return self.deliver_linear(self.target(id), frame, snapshot);
            }
            Verdict::Reply => reply_to,
            Verdict::Host => Target::Host,
            Verdict::Drop(_) => return,
        };
        self.send_linear(target, frame);
    }

    /// [`Worker::deliver`] for a frame in a buffer.
    pub(super) fn deliver_linear(&mut self, target: Target, frame: &[u8], snapshot: &Snapshot) {
        if let Some(endpoint) = self.endpoint_of(target) {
            match self.pipeline.deliver(snapshot, endpoint, frame) {
                Delivery::Deliver => {}
                Delivery::ViaHost => return self.write_host(frame),
                Delivery::Drop(_) => return,
            }
        }
        self.send_linear(target, frame);
    }

    /// Sends a frame from a buffer: as a chain of chunks of the port's UMEM, to the host
    /// interface, or to another worker.
    pub(super) fn send_linear(&mut self, target: Target, frame: &[u8]) {
        match target {
            Target::Port(port) => self.queue_chain(port, frame),
            Target::Tap(tap) => self.deliver_to_tap(tap, frame),
            Target::Host => self.write_host(frame),
            Target::Worker { worker, endpoint, instance, tap: true } => {
                let key = (worker, endpoint, instance);
                self.joins.join(&self.shared.inboxes, &mut self.io_counters, key, frame)
            }
            Target::Worker { worker, endpoint, instance, tap: false } => {
                self.hand_off_bytes(worker, Destination::Pod { endpoint, instance }, frame)
            }
            Target::Nowhere => self.io_counters.no_socket += 1,
        }
    }

    /// Cuts a frame into chunks of the port's UMEM (each with the kernel's headroom in front,
    /// as received ones have) and queues them as one chain, or not at all.
    fn queue_chain(&mut self, port: PortId, frame: &[u8]) {
        let Some(umem) = self.ports.get(port).map(|p| p.umem) else {
            self.io_counters.no_socket += 1;
            return;
        };
        let room = self.umems.get(umem).config().max_frame() as usize;
        let headroom = self.umems.get(umem).frame_headroom() as usize;
        let parts = frame.len().div_ceil(room).max(1);
        if self.ports.pending() + parts > self.budget.pending_limit {
            if let Some(p) = self.ports.get_mut(port) {
                p.stats.tx_dropped += 1;
            }
            return;
        }
        let mut chain = Vec::with_capacity(parts);
        for (i, part) in frame.chunks(room).enumerate() {
            let Some(chunk) = self.umems.get(umem).allocate() else {
                self.io_counters.chunk_exhausted += 1;
                for packet in chain {
                    self.umems.release(packet);
                }
                return;
            };
            let mut packet =
                Packet { chunk, span: Span::new(headroom, part.len()), continues: i + 1 < parts };
            self.umems.lend_one(&mut packet, |bytes, span| {
                bytes[span.head as usize..span.end()].copy_from_slice(part);
            });
            chain.push(packet);
        }
        for packet in chain {
            if let Err(packet) = self.ports.queue(port, packet, usize::MAX) {
                self.umems.release(packet);
            }
        }
    }
}
