//! Frames handed from one worker to another: a frame for a pod that another worker owns is
//! copied into that worker's inbox (a lock-free queue) and the owner is woken through a socket
//! pair — the one copy on any path, and only with several workers (each worker has a UMEM of
//! its own, so a chunk cannot simply change hands).
//!
//! A handed-over frame names its destination by endpoint slot and instance, not by interface:
//! the owner resolves it against its own pods when it drains the inbox, so a pod attached (or
//! re-attached) after the sender last looked is reached at once, and a frame for an endpoint
//! that has since been replaced in its slot is dropped rather than delivered to the newcomer.

use std::os::unix::net::UnixDatagram;

use crossbeam_queue::ArrayQueue;

use super::Worker;
use super::forward::Target;
use crate::io::xsk::Packet;
use crate::table::EndpointId;

/// Frames an inbox holds before further hand-overs are dropped (and counted).
const INBOX_FRAMES: usize = 4096;

/// A frame on its way to the worker that owns its destination pod.
struct Handoff {
    endpoint: EndpointId,
    instance: u64,
    len: usize,
    /// A chunk's worth of bytes; the frame is the first `len`.
    bytes: Box<[u8]>,
}

/// The inbox of a worker, shared with the others.
pub(crate) struct Inbox {
    queue: ArrayQueue<Handoff>,
    /// Emptied buffers, reused so that steady state does not allocate.
    spare: ArrayQueue<Box<[u8]>>,
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
            capacity,
            waker,
        };
        Ok((inbox, wakee))
    }
}

impl Worker {
    /// Copies a frame into the owning worker's inbox and wakes it. The packet stays the
    /// caller's to release.
    pub(super) fn hand_off(
        &mut self,
        worker: usize,
        endpoint: EndpointId,
        instance: u64,
        packet: &mut Packet,
    ) {
        let shared = self.shared.clone();
        let inbox = &shared.inboxes[worker];
        let len = packet.span.len as usize;
        if len > inbox.capacity {
            self.io_counters.handoff_dropped += 1;
            return;
        }
        let mut bytes =
            inbox.spare.pop().unwrap_or_else(|| vec![0u8; inbox.capacity].into_boxed_slice());
        let mut copied = false;
        self.umem.lend(std::slice::from_mut(packet), &mut self.scratch, |chunk, span| {
            if let Some(src) = chunk.get(span.head as usize..span.end()) {
                bytes[..len].copy_from_slice(src);
                copied = true;
            }
        });
        if !copied || inbox.queue.push(Handoff { endpoint, instance, len, bytes }).is_err() {
            self.io_counters.handoff_dropped += 1;
            return;
        }
        let _ = inbox.waker.send(&[1]);
    }

    /// Frames other workers handed to this one's pods: each into a fresh chunk, queued on the
    /// pod's port. Returns how many were taken.
    pub(super) fn drain_inbox(&mut self) -> usize {
        let shared = self.shared.clone();
        let inbox = &shared.inboxes[self.index];
        let headroom = self.umem.frame_headroom() as usize;
        let mut n = 0;
        while let Some(handoff) = inbox.queue.pop() {
            n += 1;
            self.io_counters.handoff_in += 1;
            let port = match self.target(handoff.endpoint) {
                Target::Port(port) if self.instance(handoff.endpoint) == Some(handoff.instance) => {
                    Some(port)
                }
                _ => None,
            };
            let fits = headroom + handoff.len <= self.umem.config().chunk_size as usize;
            match (port, fits) {
                (Some(port), true) => match self.umem.allocate() {
                    Some(chunk) => {
                        let span = crate::engine::Span::new(headroom, handoff.len);
                        let mut packet = Packet { chunk, span };
                        self.umem.lend(
                            std::slice::from_mut(&mut packet),
                            &mut self.scratch,
                            |dst, span| {
                                dst[span.head as usize..span.end()]
                                    .copy_from_slice(&handoff.bytes[..handoff.len]);
                            },
                        );
                        self.send(Target::Port(port), packet);
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
        n
    }
}
