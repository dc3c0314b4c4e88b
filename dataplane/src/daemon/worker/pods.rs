//! The local endpoints as a worker sees them, slot by slot ([`EndpointId`] is stable across
//! generations): pods it owns are being attached (asked of the attacher), attached (one
//! socket per queue of the pod's interface, adopted into the pods' UMEM) or waiting for their
//! interface; pods other workers own are reached through their inboxes. On a new generation
//! only slots whose endpoint changed (a different instance) are touched; the other pods keep
//! their sockets.
//!
//! Nothing slow happens here: the attacher ([`crate::daemon::attacher`]) binds and releases
//! sockets and attaches programs on its own thread, and this worker adopts the sockets it is
//! given and hands back those it no longer uses.

use std::time::{Duration, Instant};

use super::Worker;
use super::assign::pod_owner;
use super::port::{Port, PortId, PortKind};
use super::tap::TapId;
use crate::daemon::attacher::{self, Attachment, PodAttachError, Reply, Request};
use crate::table::{EndpointId, Snapshot};

/// How often a pod whose interface could not be attached is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What a worker holds for one endpoint slot.
pub(super) enum Slot {
    Vacant,
    /// Another worker owns the pod: frames for it go to that worker's inbox. `tap`: the pod
    /// is behind a TAP, so its segments may be joined before they go.
    Elsewhere {
        worker: usize,
        instance: u64,
        tap: bool,
    },
    /// This worker's pod, asked of the attacher; `first`: not tried before.
    Attaching {
        instance: u64,
        interface: String,
        netns: Option<String>,
        first: bool,
    },
    /// This worker's pod, attached.
    Attached {
        instance: u64,
        pod: PodPorts,
    },
    /// This worker's pod, whose interface could not be attached yet.
    Waiting {
        instance: u64,
        interface: String,
        netns: Option<String>,
        since: Instant,
    },
}

impl Slot {
    fn instance(&self) -> Option<u64> {
        match self {
            Slot::Vacant => None,
            Slot::Elsewhere { instance, .. }
            | Slot::Attaching { instance, .. }
            | Slot::Attached { instance, .. }
            | Slot::Waiting { instance, .. } => Some(*instance),
        }
    }
}

/// A pod interface this worker uses: its ports (or its TAP queue), and what keeps its program
/// attached.
pub(super) struct PodPorts {
    interface: String,
    ifindex: u32,
    /// One per queue of the interface; frames to the pod leave on the first.
    pub(super) ports: Vec<PortId>,
    /// A TAP pod's queue, among the worker's TAPs.
    pub(super) tap: Option<TapId>,
    /// A TAP pod's network namespace.
    netns: Option<String>,
    hold: Box<dyn std::fmt::Debug + Send>,
}

impl Worker {
    /// The endpoint's instance as this worker knows it.
    pub(super) fn instance(&self, id: EndpointId) -> Option<u64> {
        self.endpoints.get(id.0 as usize)?.instance()
    }

    /// Follows a new snapshot: every slot whose endpoint changed is set up again (its old pod
    /// detached, the new one asked for here or noted as another worker's).
    pub(super) fn sync(&mut self, snapshot: &Snapshot) {
        self.generation = snapshot.generation();
        let slots = snapshot.endpoint_slots().max(self.endpoints.len());
        self.endpoints.resize_with(slots, || Slot::Vacant);
        for slot in 0..slots {
            let id = EndpointId(slot as u32);
            let wanted = snapshot.get_endpoint(id);
            if wanted.map(|e| e.instance) == self.endpoints[slot].instance() {
                continue;
            }
            self.detach(id, "its endpoint was removed or replaced");
            self.endpoints[slot] = match wanted {
                None => Slot::Vacant,
                // A TAP pod's interface has the same name in every pod: its namespace tells.
                Some(e) => {
                    match pod_owner(e.edge.netns().unwrap_or(&e.interface), self.shared.workers) {
                        owner if owner == self.index => {
                            let netns = e.edge.netns().map(str::to_owned);
                            self.ask_attach(id, e.instance, &e.interface, netns, true)
                        }
                        worker => {
                            let tap = !e.edge.is_veth();
                            Slot::Elsewhere { worker, instance: e.instance, tap }
                        }
                    }
                }
            };
        }
        while matches!(self.endpoints.last(), Some(Slot::Vacant)) {
            self.endpoints.pop();
        }
    }

    fn ask_attach(
        &mut self,
        id: EndpointId,
        instance: u64,
        interface: &str,
        netns: Option<String>,
        first: bool,
    ) -> Slot {
        let umem = self.umems.get(self.umems.pods()).handle().clone();
        let request = Request::Attach {
            slot: id,
            instance,
            interface: interface.to_owned(),
            netns: netns.clone(),
            umem,
        };
        if self.attacher.requests.send((self.index, request)).is_err() {
            // The attacher is gone: the daemon is stopping.
            return Slot::Waiting {
                instance,
                interface: interface.to_owned(),
                netns,
                since: Instant::now(),
            };
        }
        Slot::Attaching { instance, interface: interface.to_owned(), netns, first }
    }

    /// Takes what the attacher answered since the last look.
    pub(super) fn take_replies(&mut self) {
        while let Ok(reply) = self.attacher.replies.try_recv() {
            match reply {
                Reply::Attached { slot, instance, result } => self.attached(slot, instance, result),
                Reply::Released(released) => {
                    for r in released {
                        self.umems.reclaim(r);
                    }
                }
                Reply::Gone { slot, instance } => {
                    if self.instance(slot) == Some(instance)
                        && matches!(self.endpoints[slot.0 as usize], Slot::Attached { .. })
                    {
                        self.lost(slot, instance, "the interface disappeared");
                    }
                }
            }
        }
    }

    /// The attacher's answer for slot `id`: adopted if the slot still wants it, else handed
    /// back at once.
    fn attached(
        &mut self,
        id: EndpointId,
        instance: u64,
        result: Result<Attachment, PodAttachError>,
    ) {
        let (wanted, first) = match self.endpoints.get(id.0 as usize) {
            Some(Slot::Attaching { instance: i, first, .. }) if *i == instance => (true, *first),
            _ => (false, false),
        };
        match (wanted, result) {
            (true, Ok(attachment)) => {
                let netns = match self.endpoints.get(id.0 as usize) {
                    Some(Slot::Attaching { netns, .. }) => netns.clone(),
                    _ => None,
                };
                let pod = self.adopt(id, attachment, netns);
                tracing::info!(
                    worker = self.index,
                    interface = pod.interface,
                    queues = pod.ports.len(),
                    "pod interface attached"
                );
                self.endpoints[id.0 as usize] = Slot::Attached { instance, pod };
            }
            (true, Err(e)) => {
                let Some(Slot::Attaching { interface, netns, .. }) =
                    self.endpoints.get(id.0 as usize)
                else {
                    return;
                };
                let (interface, netns) = (interface.clone(), netns.clone());
                if first {
                    tracing::warn!(
                        worker = self.index,
                        interface,
                        "pod interface not attached, retrying every second: {e}"
                    );
                }
                self.endpoints[id.0 as usize] =
                    Slot::Waiting { instance, interface, netns, since: Instant::now() };
            }
            (false, Ok(attachment)) => {
                let _ = self.attacher.requests.send((self.index, Request::Detach(attachment)));
            }
            (false, Err(_)) => {}
        }
    }

    /// Adopts an attachment's sockets into the pods' UMEM as ports of slot `id` (or its TAP
    /// queue among the worker's TAPs).
    fn adopt(&mut self, id: EndpointId, attachment: Attachment, netns: Option<String>) -> PodPorts {
        let Attachment { interface, ifindex, sockets, tap, hold } = attachment;
        let tap = tap.map(|queue| self.add_tap(id, queue, netns.as_deref().unwrap_or_default()));
        let umem = self.umems.pods();
        let mut ports = Vec::new();
        for socket in sockets {
            let queue = socket.queue();
            let socket = self.umems.get(umem).adopt(socket);
            let fill = self.budget.admit_pod();
            let port = Port::new(socket, umem, PortKind::Pod(id), &interface, queue, fill);
            self.umems.get(umem).refill(socket, fill);
            ports.push(self.ports.add(port));
        }
        self.trim_fill_levels();
        PodPorts { interface, ifindex, ports, tap, netns, hold }
    }

    /// Gives up what slot `id` holds: an attached pod's ports are removed and their sockets
    /// handed to the attacher to release. Returns the interface of a pod that was attached.
    fn detach(&mut self, id: EndpointId, why: &str) -> Option<String> {
        let slot = self.endpoints.get_mut(id.0 as usize)?;
        let Slot::Attached { pod, .. } = std::mem::replace(slot, Slot::Vacant) else {
            return None;
        };
        let PodPorts { interface, ifindex, ports, tap, netns: _, hold } = pod;
        let tap = tap.and_then(|t| self.remove_tap(t));
        let mut sockets = Vec::new();
        for port in ports {
            if let Some(level) = self.ports.get(port).map(|p| p.fill_target) {
                self.budget.remove_pod(level);
            }
            sockets.extend(self.ports.remove(port, &mut self.umems));
        }
        tracing::info!(worker = self.index, interface, "pod interface detached: {why}");
        let attachment = Attachment { interface: interface.clone(), ifindex, sockets, tap, hold };
        if let Err(unsent) = self.attacher.requests.send((self.index, Request::Detach(attachment)))
        {
            // No attacher (stopping): released here, and the chunks taken back.
            let Request::Detach(attachment) = unsent.0.1 else { return Some(interface) };
            self.release_here(attachment);
        }
        Some(interface)
    }

    /// Slot `id`'s attached pod lost its interface (`instance`, the one attached): detached,
    /// and asked for again after [`RETRY`].
    pub(super) fn lost(&mut self, id: EndpointId, instance: u64, why: &str) {
        let netns = match self.endpoints.get(id.0 as usize) {
            Some(Slot::Attached { pod, .. }) => pod.netns.clone(),
            _ => return,
        };
        if let Some(interface) = self.detach(id, why) {
            self.endpoints[id.0 as usize] =
                Slot::Waiting { instance, interface, netns, since: Instant::now() };
        }
    }

    /// Releases an attachment on this thread (at shutdown, when stalling no longer matters).
    fn release_here(&mut self, attachment: Attachment) {
        for released in attacher::release(attachment) {
            self.umems.reclaim(released);
        }
    }

    /// Once a second: pods that wait are asked for again.
    pub(super) fn retry_pods(&mut self) {
        for slot in 0..self.endpoints.len() {
            if let Slot::Waiting { instance, interface, netns, since } = &self.endpoints[slot]
                && since.elapsed() >= RETRY
            {
                let (instance, interface, netns) = (*instance, interface.clone(), netns.clone());
                let id = EndpointId(slot as u32);
                self.endpoints[slot] = self.ask_attach(id, instance, &interface, netns, false);
            }
        }
    }

    /// Detaches every pod, here (at shutdown).
    pub(super) fn release_all(&mut self) {
        for slot in 0..self.endpoints.len() {
            let Slot::Attached { pod, .. } =
                std::mem::replace(&mut self.endpoints[slot], Slot::Vacant)
            else {
                continue;
            };
            let PodPorts { interface, ifindex, ports, tap, netns: _, hold } = pod;
            let tap = tap.and_then(|t| self.remove_tap(t));
            let sockets =
                ports.into_iter().filter_map(|p| self.ports.remove(p, &mut self.umems)).collect();
            self.release_here(Attachment { interface, ifindex, sockets, tap, hold });
        }
    }
}
