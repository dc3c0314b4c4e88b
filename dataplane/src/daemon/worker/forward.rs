//! The forwarding path of a worker: a burst received on a port goes through the pipeline as
//! one batch, and each frame's chunk — rewritten in place — is queued on the port its verdict
//! names (the same UMEM, so nothing is copied, except between a zero-copy uplink's UMEM and
//! the pods'), handed to the worker that owns its pod, or released. Then every port transmits
//! what waits, reaps completions and tops up its fill ring.

use super::Worker;
use super::inbox::Destination;
use super::pods::Slot;
use super::port::{PortId, PortKind};
use super::tap::TapId;
use crate::engine::{Delivery, Frame, Ingress, Verdict};
use crate::io::xsk::Packet;
use crate::table::{EndpointId, Snapshot};

/// Where a frame goes from this worker.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    Port(PortId),
    /// The host interface.
    Host,
    /// A TAP pod of this worker.
    Tap(TapId),
    /// A pod another worker owns (`tap`: behind a TAP).
    Worker {
        worker: usize,
        endpoint: EndpointId,
        instance: u64,
        tap: bool,
    },
    /// No socket to send it on (a pod not attached): counted as `no_socket`.
    Nowhere,
}

/// Lends the parked frame vector to a batch (`Vec` is covariant: `'static` shortens to `'a`).
fn recycle<'a>(mut frames: Vec<Frame<'static>>) -> Vec<Frame<'a>> {
    frames.clear();
    frames
}

/// Parks the batch's frame vector for the next batch, keeping its allocation: it is emptied
/// first, so no frame outlives its borrow, and collecting an emptied `into_iter` reuses the
/// buffer in place.
fn park(mut frames: Vec<Frame<'_>>) -> Vec<Frame<'static>> {
    frames.clear();
    frames.into_iter().map(|_| -> Frame<'static> { unreachable!("emptied") }).collect()
}

impl Worker {
    /// Where frames for the endpoint in slot `id` go.
    pub(super) fn target(&self, id: EndpointId) -> Target {
        match self.endpoints.get(id.0 as usize) {
            Some(Slot::Attached { pod, .. }) => match pod.tap {
                Some(tap) => Target::Tap(tap),
                None => pod.ports.first().map_or(Target::Nowhere, |p| Target::Port(*p)),
            },
            Some(Slot::Elsewhere { worker, instance, tap }) => {
                Target::Worker { worker: *worker, endpoint: id, instance: *instance, tap: *tap }
            }
            _ => Target::Nowhere,
        }
    }

    /// The pod a target of this worker's is (a pod's port or TAP).
    pub(super) fn endpoint_of(&self, target: Target) -> Option<EndpointId> {
        match target {
            Target::Port(port) => match self.ports.get(port)?.kind {
                PortKind::Pod(endpoint) => Some(endpoint),
                PortKind::Uplink => None,
            },
            Target::Tap(tap) => self.tap_endpoint(tap),
            _ => None,
        }
    }

    /// One RX burst on `port`: pipeline, then each frame to its target. Returns the number of
    /// frames received.
    pub(super) fn receive(&mut self, port: PortId, snapshot: &Snapshot) -> usize {
        let Some(p) = self.ports.get(port) else { return 0 };
        let (socket, umem) = (p.socket, p.umem);
        let ingress = match p.kind {
            PortKind::Uplink => Ingress::Uplink,
            PortKind::Pod(endpoint) => Ingress::Pod(endpoint),
        };
        self.rx.clear();
        let n = self.umems.get(umem).receive(socket, super::BURST as u32, &mut self.rx);
        if n == 0 {
            return 0;
        }
        let bytes: u64 = self.rx.iter().map(|pkt| u64::from(pkt.span.len)).sum();
        if let Some(p) = self.ports.get_mut(port) {
            p.received(n, bytes);
            if matches!(p.kind, PortKind::Pod(_)) {
                p.fill_target = self.budget.after_pod_burst(p.fill_target, n);
            }
        }
        if self.linear.is_some() {
            self.take_chains(port, ingress, snapshot);
        }
        self.process_received(ingress, Target::Port(port), snapshot);
        n as usize
    }

    /// Runs the frames in `self.rx` (all of one UMEM) through the pipeline as one batch from
    /// `ingress`, and sends each where its verdict says (`reply_to` for replies).
    pub(super) fn process_received(
        &mut self,
        ingress: Ingress,
        reply_to: Target,
        snapshot: &Snapshot,
    ) {
        let n = self.rx.len();
        let Some(first) = self.rx.first() else { return };
        let umem = self.umems.of(&first.chunk);
        {
            let mut frames = recycle(std::mem::take(&mut self.frames));
            self.umems.get(umem).lend(&mut self.rx, |buffer, span| {
                frames.push(Frame::new(buffer, span));
            });
            let verdicts = &mut self.verdicts[..n];
            self.pipeline.process_batch(snapshot, ingress, &mut frames, verdicts);
            self.frames = park(frames);
        }
        let mut rx = std::mem::take(&mut self.rx);
        for (i, packet) in rx.drain(..).enumerate() {
            let target = match self.verdicts[i] {
                Verdict::Encap => self.uplink.map_or(Target::Nowhere, Target::Port),
                Verdict::Decap(id) | Verdict::Local(id) => {
                    self.deliver(self.target(id), packet, snapshot);
                    continue;
                }
                Verdict::Reply => reply_to,
                Verdict::Host => Target::Host,
                Verdict::Drop(_) => {
                    self.umems.release(packet);
                    continue;
                }
            };
            self.send(target, packet);
        }
        self.rx = rx;
    }

    /// A frame for a local pod: to another worker that owns the pod as it is; for one of this
    /// worker's pods, the ingress side of policy first (`Pipeline::deliver`): queued, sent to
    /// the host interface (the reply of a flow through the node's kernel), or dropped.
    pub(super) fn deliver(&mut self, target: Target, mut packet: Packet, snapshot: &Snapshot) {
        if let Some(endpoint) = self.endpoint_of(target) {
            match self.judge_delivery(endpoint, &mut packet, snapshot) {
                Delivery::Deliver => {}
                Delivery::ViaHost => return self.send_host(packet),
                Delivery::Drop(_) => return self.umems.release(packet),
            }
        }
        self.send(target, packet);
    }

    /// Queues a frame on its target, or releases it.
    pub(super) fn send(&mut self, target: Target, mut packet: Packet) {
        match target {
            Target::Port(port) => self.queue(port, packet),
            Target::Tap(tap) => self.send_tap(tap, packet),
            Target::Host => self.send_host(packet),
            Target::Worker { worker, endpoint, instance, tap: true } => {
                let (joins, io) = (&mut self.joins, &mut self.io_counters);
                let inboxes = &self.shared.inboxes;
                self.umems.lend_one(&mut packet, |buffer, span| {
                    let frame = buffer.get(span.head as usize..span.end()).unwrap_or_default();
                    joins.join(inboxes, io, (worker, endpoint, instance), frame);
                });
                self.umems.release(packet);
            }
            Target::Worker { worker, endpoint, instance, tap: false } => {
                let destination = Destination::Pod { endpoint, instance };
                self.hand_off(worker, destination, &mut packet);
                self.umems.release(packet);
            }
            Target::Nowhere => {
                self.io_counters.no_socket += 1;
                self.umems.release(packet);
            }
        }
    }

    /// Queues a frame on a port, in a chunk of the port's UMEM (copied there if it is in the
    /// other one).
    fn queue(&mut self, port: PortId, packet: Packet) {
        let Some(umem) = self.ports.get(port).map(|p| p.umem) else {
            self.io_counters.no_socket += 1;
            self.umems.release(packet);
            return;
        };
        let Some(packet) = self.umems.move_into(packet, umem) else {
            self.io_counters.chunk_exhausted += 1;
            return;
        };
        if let Err(packet) = self.ports.queue(port, packet, self.budget.pending_limit) {
            self.umems.release(packet);
        }
    }

    fn judge_delivery(
        &mut self,
        endpoint: EndpointId,
        packet: &mut Packet,
        snapshot: &Snapshot,
    ) -> Delivery {
        let mut delivery = Delivery::Deliver;
        let pipeline = &mut self.pipeline;
        self.umems.lend_one(packet, |buffer, span| {
            let frame = buffer.get(span.head as usize..span.end()).unwrap_or_default();
            delivery = pipeline.deliver(snapshot, endpoint, frame);
        });
        delivery
    }

    /// Transmits what is pending on every port, reaps completions, refills.
    pub(super) fn flush(&mut self) {
        self.flush_taps();
        self.flush_host();
        self.flush_joins();
        let umems = &mut self.umems;
        let mut backlog = 0;
        self.ports.transmit_all(|_, p| {
            let umem = umems.get(p.umem);
            // Also with nothing pending: frames still in flight may need another kick.
            let outcome = umem.transmit(p.socket, &mut p.pending);
            backlog += outcome.backlog;
            p.stats.tx_packets += u64::from(outcome.queued);
            p.stats.tx_bytes += outcome.bytes;
            umem.complete(p.socket);
            umem.refill(p.socket, p.fill_target);
        });
        self.tx_backlog = backlog;
    }
}
