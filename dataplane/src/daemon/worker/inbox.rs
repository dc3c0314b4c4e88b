//! Frames handed from one worker to another: a frame for a pod that another worker owns is
//! copied into that worker's inbox (a lock-free queue) and the owner is woken through a socket
//! pair — the one copy on any path, and only with several workers (each worker has a UMEM of
//! its own, so a chunk cannot simply change hands).
//!
//! A handed-over frame names its destination by endpoint slot and instance, not by interface:
//! the owner resolves it against its own pods when it drains the inbox, so a pod attached (or
//! re-attached) after the sender last looked is reached at once, and a frame for an endpoint
//! that has since been replaced in its slot is dropped rather than delivered to the newcomer.
//!
//! A packet the host interface hands over whose source is a pod another worker owns travels
//! the same way, unprocessed, to be run through the pipeline by that worker: what a pod's
//! flows through the node's kernel leave behind is kept by the pod's own worker, which is also
//! the one that delivers the replies.
//!
//! A TCP super-packet (a TAP pod's, or the host interface's) travels whole, with its
//! virtio-net header, in a buffer of its own size: cut into segments here only to be joined
//! again by the owner, it would cost both workers a pass per segment. Segments for a TAP pod
//! of another worker (from the uplink, a veth pod, the host) are joined here first
//! ([`Joins`], the kernel's GRO rules as for this worker's own TAP pods), within one round of
//! the loop, and go as one super-packet: one copy and one wake-up for many segments.

use std::os::unix::net::UnixDatagram;

use crossbeam_queue::ArrayQueue;

use super::Worker;
use super::forward::Target;
use super::stats::IoCounters;
use super::tap;
use crate::engine::coalesce::Coalescer;
use crate::engine::{Ingress, Span};
use crate::io::vnet::VnetHeader;
use crate::io::xsk::Packet;
use crate::table::{EndpointId, Snapshot};

/// Frames an inbox holds before further hand-overs are dropped (and counted).
const INBOX_FRAMES: usize = 4096;
/// Room of a super-packet's buffer: a 64 KiB IP packet behind its Ethernet header.
const SUPER_CAPACITY: usize = 14 + 65_535;
/// Emptied super-packet buffers kept for reuse (a megabyte or so).
const SPARE_SUPER: usize = 16;
/// Other workers' TAP pods a worker joins segments for at once; beyond, segments go alone.
const JOINS: usize = 32;

/// What a handed-over frame is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Destination {
    /// Processed already: deliver it to this pod.
    Pod { endpoint: EndpointId, instance: u64 },
    /// From the host interface, its source a pod the receiving worker owns: run it through
    /// the pipeline.
    HostIngress,
    /// A TCP super-packet, processed already, for this pod: written whole to a TAP pod, cut
    /// for a veth pod. `header` as a TAP's (offsets behind the Ethernet header).
    PodSuper { endpoint: EndpointId, instance: u64, header: VnetHeader },
    /// A TCP super-packet from the host interface, its source a pod the receiving worker
    /// owns: run it through the pipeline. `header` as a TAP's.
    HostSuper { header: VnetHeader },
}

/// A frame on its way to another worker.
struct Handoff {
    destination: Destination,
    len: usize,
    /// A chunk's worth of bytes; the frame is the first `len`.
    bytes: Box<[u8]>,
}

/// The inbox of a worker, shared with the others.
pub(crate) struct Inbox {
    queue: ArrayQueue<Handoff>,
    /// Emptied buffers, reused so that steady state does not allocate.
    spare: ArrayQueue<Box<[u8]>>,
    /// The same for super-packets' buffers.
    spare_super: ArrayQueue<Box<[u8]>>,
    /// Room per buffer: the UMEM's chunk size, so any frame a chunk holds fits.
    capacity: usize,
    waker: UnixDatagram,
}

impl Inbox {
    /// An inbox for frames of up to `capacity` bytes, and the socket its owner sleeps on.
    pub(crate) fn new(capacity: usize) -> std::io::Result<(Inbox, UnixDatagram)> {
        let (waker, wakee) = UnixDatagram::pair()?;
        waker.set_nonblocking(true)?;
        wakee.set_nonblocking(true)?;
        let inbox = Inbox {
            queue: ArrayQueue::new(INBOX_FRAMES),
            spare: ArrayQueue::new(INBOX_FRAMES),
            spare_super: ArrayQueue::new(SPARE_SUPER),
            capacity,
            waker,
        };
        Ok((inbox, wakee))
    }

    /// Another handle to wake the inbox's owner with.
    pub(crate) fn waker(&self) -> std::io::Result<UnixDatagram> {
        self.waker.try_clone()
    }
}

impl Worker {
    /// Copies a frame into the owning worker's inbox and wakes it. The packet stays the
    /// caller's to release.
    pub(super) fn hand_off(
        &mut self,
        worker: usize,
        destination: Destination,
        packet: &mut Packet,
    ) {
        let (inbox, io) = (&self.shared.inboxes[worker], &mut self.io_counters);
        self.umems.lend_one(packet, |chunk, span| {
            match chunk.get(span.head as usize..span.end()) {
                Some(frame) => {
                    push(inbox, io, destination, frame);
                }
                None => io.handoff_dropped += 1,
            }
        });
    }

    /// Copies a frame from a buffer into the owning worker's inbox and wakes it.
    pub(super) fn hand_off_bytes(&mut self, worker: usize, destination: Destination, frame: &[u8]) {
        push(&self.shared.inboxes[worker], &mut self.io_counters, destination, frame);
    }

    /// Copies a super-packet into the owning worker's inbox, whole, and wakes it, after the
    /// segments being joined for the same pod.
    pub(super) fn hand_off_super(&mut self, worker: usize, destination: Destination, frame: &[u8]) {
        if let Destination::PodSuper { endpoint, instance, .. } = destination {
            let key = (worker, endpoint, instance);
            self.joins.flush_one(&self.shared.inboxes, &mut self.io_counters, key);
        }
        push(&self.shared.inboxes[worker], &mut self.io_counters, destination, frame);
    }

    /// Hands over what every join holds (at the end of a round of the loop).
    pub(super) fn flush_joins(&mut self) {
        self.joins.flush(&self.shared.inboxes, &mut self.io_counters);
    }

    /// Frames other workers handed to this one, each into a fresh chunk: a pod's frame queued
    /// on the pod's port, a host packet run through the pipeline. Returns how many were taken.
    pub(super) fn drain_inbox(&mut self, snapshot: &Snapshot) -> usize {
        let shared = self.shared.clone();
        let inbox = &shared.inboxes[self.index];
        let pods = self.umems.pods();
        let headroom = self.umems.get(pods).frame_headroom() as usize;
        let chunk_size = self.umems.get(pods).config().chunk_size as usize;
        let mut n = 0;
        let mut host_batch = Vec::new();
        while let Some(handoff) = inbox.queue.pop() {
            n += 1;
            self.io_counters.handoff_in += 1;
            let frame = &handoff.bytes[..handoff.len];
            match handoff.destination {
                Destination::PodSuper { endpoint, instance, header } => {
                    match self.target(endpoint) {
                        target @ (Target::Port(_) | Target::Tap(_))
                            if self.instance(endpoint) == Some(instance) =>
                        {
                            self.deliver_super(target, frame, header, snapshot)
                        }
                        _ => self.io_counters.handoff_dropped += 1,
                    }
                    let _ = inbox.spare_super.push(handoff.bytes);
                    continue;
                }
                Destination::HostSuper { header } => {
                    // The host's packets before it first: a flow keeps its order.
                    self.run_host_batch(&mut host_batch, snapshot);
                    self.take_host_super(frame, header, snapshot);
                    let _ = inbox.spare_super.push(handoff.bytes);
                    continue;
                }
                Destination::Pod { .. } | Destination::HostIngress => {}
            }
            let target = match handoff.destination {
                Destination::Pod { endpoint, instance } => match self.target(endpoint) {
                    target @ (Target::Port(_) | Target::Tap(_))
                        if self.instance(endpoint) == Some(instance) =>
                    {
                        Some(target)
                    }
                    _ => None,
                },
                Destination::HostIngress => Some(Target::Host),
                Destination::PodSuper { .. } | Destination::HostSuper { .. } => None,
            };
            let fits = headroom + handoff.len <= chunk_size;
            if let (Some(target), false) = (target, fits) {
                // A jumbo frame: through the linear buffer, after the host's packets before it.
                if matches!(target, Target::Host) {
                    self.run_host_batch(&mut host_batch, snapshot);
                }
                self.take_long_handoff(target, &handoff.bytes[..handoff.len], snapshot);
                let _ = inbox.spare.push(handoff.bytes);
                continue;
            }
            match (target, fits) {
                (Some(target), true) => match self.umems.get(pods).allocate() {
                    Some(chunk) => {
                        let mut packet = Packet::new(chunk, Span::new(headroom, handoff.len));
                        self.umems.lend_one(&mut packet, |dst, span| {
                            dst[span.head as usize..span.end()]
                                .copy_from_slice(&handoff.bytes[..handoff.len]);
                        });
                        match target {
                            // Run through the pipeline below, as one batch.
                            Target::Host => host_batch.push(packet),
                            _ => self.deliver(target, packet, snapshot),
                        }
                    }
                    None => {
                        self.io_counters.chunk_exhausted += 1;
                        self.io_counters.handoff_dropped += 1;
                    }
                },
                _ => self.io_counters.handoff_dropped += 1,
            }
            let _ = inbox.spare.push(handoff.bytes);
        }
        self.run_host_batch(&mut host_batch, snapshot);
        n
    }

    /// Runs the host's packets handed over so far through the pipeline, a burst at a time.
    fn run_host_batch(&mut self, batch: &mut Vec<Packet>, snapshot: &Snapshot) {
        while !batch.is_empty() {
            let burst = batch.len().min(super::BURST);
            self.rx.clear();
            self.rx.extend(batch.drain(..burst));
            self.process_received(Ingress::Host, Target::Host, snapshot);
        }
    }

    /// A handed-over frame longer than a chunk: delivered as a chain, or (from the host
    /// interface) put through the pipeline from the linear buffer.
    fn take_long_handoff(&mut self, target: Target, frame: &[u8], snapshot: &Snapshot) {
        match target {
            Target::Host => {
                let Some(mut linear) = self.linear.take() else {
                    self.io_counters.handoff_dropped += 1;
                    return;
                };
                let start = linear.headroom;
                if start + frame.len() > linear.bytes.len() {
                    self.io_counters.handoff_dropped += 1;
                } else {
                    linear.bytes[start..start + frame.len()].copy_from_slice(frame);
                    let span = Span::new(start, frame.len());
                    self.process_linear(&mut linear, span, Ingress::Host, Target::Host, snapshot);
                }
                self.linear = Some(linear);
            }
            other => self.deliver_linear(other, frame, snapshot),
        }
    }
}

/// Copies `frame` into `inbox` as `destination` (a super-packet into a buffer of its own
/// size) and wakes the inbox's owner; counted in `io` when the frame is too long or the inbox
/// full. Whether it was handed over.
fn push(inbox: &Inbox, io: &mut IoCounters, destination: Destination, frame: &[u8]) -> bool {
    let whole = matches!(destination, Destination::PodSuper { .. } | Destination::HostSuper { .. });
    let (spare, capacity) =
        if whole { (&inbox.spare_super, SUPER_CAPACITY) } else { (&inbox.spare, inbox.capacity) };
    let len = frame.len();
    if len == 0 || len > capacity {
        io.handoff_dropped += 1;
        return false;
    }
    let mut bytes = spare.pop().unwrap_or_else(|| vec![0u8; capacity].into_boxed_slice());
    bytes[..len].copy_from_slice(frame);
    match inbox.queue.push(Handoff { destination, len, bytes }) {
        Ok(()) => {
            let _ = inbox.waker.send(&[1]);
            true
        }
        Err(_) => {
            io.handoff_dropped += 1;
            false
        }
    }
}

/// Which pod a join is for: its worker, endpoint slot and instance.
type JoinKey = (usize, EndpointId, u64);

/// The segments a worker is joining for other workers' TAP pods, one [`Coalescer`] per pod
/// (up to [`JOINS`]; their buffers are kept for the next pods).
#[derive(Debug, Default)]
pub(super) struct Joins {
    joins: Vec<(JoinKey, Coalescer)>,
}

impl Joins {
    /// Joins a frame for the TAP pod `key` to what is being joined for it, handing over what
    /// that gives; a frame goes alone when every join is taken this round.
    pub(super) fn join(
        &mut self,
        inboxes: &[Inbox],
        io: &mut IoCounters,
        key: JoinKey,
        frame: &[u8],
    ) {
        let (worker, endpoint, instance) = key;
        let at = match self.joins.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            // One whose packet went at the last flush serves another pod.
            None => match self.joins.iter().position(|(_, c)| !c.is_open()) {
                Some(at) => {
                    self.joins[at].0 = key;
                    at
                }
                None if self.joins.len() < JOINS => {
                    self.joins.push((key, Coalescer::new()));
                    self.joins.len() - 1
                }
                None => {
                    push(&inboxes[worker], io, Destination::Pod { endpoint, instance }, frame);
                    return;
                }
            },
        };
        tap::join(&mut self.joins[at].1, frame, sink(inboxes, io, key));
    }

    /// Hands over what the join for `key` holds, if any.
    fn flush_one(&mut self, inboxes: &[Inbox], io: &mut IoCounters, key: JoinKey) {
        if let Some((_, coalescer)) = self.joins.iter_mut().find(|(k, _)| *k == key) {
            tap::write_joined(coalescer, &mut sink(inboxes, io, key));
        }
    }

    /// Hands over what every join holds.
    fn flush(&mut self, inboxes: &[Inbox], io: &mut IoCounters) {
        for (key, coalescer) in &mut self.joins {
            tap::write_joined(coalescer, &mut sink(inboxes, io, *key));
        }
    }
}

/// What hands over what a join for the TAP pod `key` gives, for [`tap::join`]: a joined
/// packet as a super-packet with its header (counted under `handoff_joined` once handed
/// over), one segment as a frame (its owner flags a partial checksum, as for any frame).
fn sink<'a>(
    inboxes: &'a [Inbox],
    io: &'a mut IoCounters,
    (worker, endpoint, instance): JoinKey,
) -> impl FnMut(VnetHeader, &[u8], bool) + 'a {
    move |header, frame, joined| {
        let destination = match joined {
            true => Destination::PodSuper { endpoint, instance, header },
            false => Destination::Pod { endpoint, instance },
        };
        if push(&inboxes[worker], io, destination, frame) {
            io.handoff_joined += u64::from(joined);
        }
    }
}
