//! The local endpoints as a worker sees them, slot by slot ([`EndpointId`] is stable across
//! generations): pods it owns are attached (the pod program, an XSKMAP and one socket per
//! queue of the pod's interface) or waiting for their interface; pods other workers own are
//! reached through their inboxes. On a new generation only slots whose endpoint changed
//! (a different instance) are touched; the other pods keep their sockets.
//!
//! Failing closed: before its program is attached, a pod's host-side interface is told to
//! refuse what the kernel would otherwise do with the pod's frames once no program takes them
//! (the daemon stopped or restarting): not to forward what arrives on it, not to answer ARP on
//! it, no IPv6 on it. Pods address the gateway MAC, which the interface does not have, so
//! their frames die there; and a pod cannot learn the interface's own MAC. The settings live
//! and die with the interface; with `--no-host-interface` (a node whose kernel keeps its own
//! routes to pods) they are left alone.

use std::time::{Duration, Instant};

use super::Worker;
use super::assign::pod_owner;
use super::port::{POD_FILL, POD_RING, Port, PortId, PortKind};
use crate::daemon::{AttachError, attach};
use crate::io::xdp::{XdpError, XdpLink, XdpProgram, XskMap};
use crate::io::xsk::{RingSizes, XskError};
use crate::io::{self};
use crate::table::{EndpointId, Snapshot};

/// How often a pod whose interface is missing is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What a worker holds for one endpoint slot.
pub(super) enum Slot {
    Vacant,
    /// Another worker owns the pod: frames for it go to that worker's inbox.
    Elsewhere {
        worker: usize,
        instance: u64,
    },
    /// This worker's pod, attached.
    Attached {
        instance: u64,
        pod: PodAttachment,
    },
    /// This worker's pod, whose interface could not be attached yet.
    Waiting {
        instance: u64,
        interface: String,
        since: Instant,
    },
}

impl Slot {
    fn instance(&self) -> Option<u64> {
        match self {
            Slot::Vacant => None,
            Slot::Elsewhere { instance, .. }
            | Slot::Attached { instance, .. }
            | Slot::Waiting { instance, .. } => Some(*instance),
        }
    }
}

/// A pod interface this worker has attached: the program and the map stay as long as this.
pub(super) struct PodAttachment {
    interface: String,
    ifindex: u32,
    /// One per queue of the interface; frames to the pod leave on the first.
    pub(super) ports: Vec<PortId>,
    _link: XdpLink,
    _map: XskMap,
}

/// Why a pod interface could not be attached.
#[derive(Debug, thiserror::Error)]
pub(super) enum PodAttachError {
    #[error("no interface named {0:?}")]
    NoInterface(String),
    #[error(transparent)]
    Map(XdpError),
    #[error(transparent)]
    Socket(XskError),
    #[error(transparent)]
    Program(AttachError),
}

impl Worker {
    /// The endpoint's instance as this worker knows it.
    pub(super) fn instance(&self, id: EndpointId) -> Option<u64> {
        self.endpoints.get(id.0 as usize)?.instance()
    }

    /// Follows a new snapshot: every slot whose endpoint changed is set up again (its old pod
    /// detached, the new one attached here or noted as another worker's).
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
            self.release(id, "its endpoint was removed or replaced");
            self.endpoints[slot] = match wanted {
                None => Slot::Vacant,
                Some(e) => match pod_owner(&e.interface, self.shared.workers) {
                    owner if owner == self.index => self.attach(id, e.instance, &e.interface),
                    worker => Slot::Elsewhere { worker, instance: e.instance },
                },
            };
        }
        while matches!(self.endpoints.last(), Some(Slot::Vacant)) {
            self.endpoints.pop();
        }
    }

    /// Attaches the pod in slot `id` on `interface`, or notes it as waiting (saying why on the
    /// first attempt only: a retry that fails again changes nothing worth a line).
    fn attach(&mut self, id: EndpointId, instance: u64, interface: &str) -> Slot {
        self.attach_attempt(id, instance, interface, true)
    }

    fn attach_attempt(
        &mut self,
        id: EndpointId,
        instance: u64,
        interface: &str,
        first: bool,
    ) -> Slot {
        match self.try_attach(id, interface) {
            Ok(pod) => {
                tracing::info!(
                    worker = self.index,
                    interface,
                    queues = pod.ports.len(),
                    "pod interface attached"
                );
                Slot::Attached { instance, pod }
            }
            Err(e) => {
                if first {
                    tracing::warn!(
                        worker = self.index,
                        interface,
                        "pod interface not attached, retrying every second: {e}"
                    );
                }
                Slot::Waiting { instance, interface: interface.to_owned(), since: Instant::now() }
            }
        }
    }

    fn try_attach(&mut self, id: EndpointId, name: &str) -> Result<PodAttachment, PodAttachError> {
        let ifindex = io::interface_index(name)
            .ok_or_else(|| PodAttachError::NoInterface(name.to_owned()))?;
        let queues = io::interface_queues(name);
        if self.shared.engine.host_interface {
            guard_pod_interface(name);
        }
        let map = XskMap::new(queues).map_err(PodAttachError::Map)?;
        let program = XdpProgram::pod(&map).map_err(|e| PodAttachError::Program(e.into()))?;
        let rings = RingSizes { rx: POD_RING, tx: POD_RING, fill: POD_RING, completion: POD_RING };
        let mut ports = Vec::new();
        let result = (|| {
            for queue in 0..queues {
                let socket = self
                    .umem
                    .open(name, queue, rings, self.shared.bind)
                    .map_err(PodAttachError::Socket)?;
                ports.push(self.ports.add(Port::new(socket, PortKind::Pod(id), name, queue)));
                let inserted = match self.umem.socket(socket) {
                    Some(s) => map.insert(queue, s).map_err(PodAttachError::Map),
                    None => Err(PodAttachError::NoInterface(name.to_owned())),
                };
                inserted?;
                self.umem.refill(socket, POD_FILL);
            }
            attach(&program, name, self.shared.xdp_mode).map_err(PodAttachError::Program)
        })();
        match result {
            Ok(link) => Ok(PodAttachment {
                interface: name.to_owned(),
                ifindex,
                ports,
                _link: link,
                _map: map,
            }),
            Err(e) => {
                for port in ports {
                    self.ports.close(port, &mut self.umem, self.index);
                }
                Err(e)
            }
        }
    }

    /// Gives up what slot `id` holds: an attached pod is detached (its sockets closed).
    fn release(&mut self, id: EndpointId, why: &str) {
        let Some(slot) = self.endpoints.get_mut(id.0 as usize) else { return };
        if let Slot::Attached { pod, .. } = std::mem::replace(slot, Slot::Vacant) {
            for port in &pod.ports {
                self.ports.close(*port, &mut self.umem, self.index);
            }
            tracing::info!(
                worker = self.index,
                interface = pod.interface,
                "pod interface detached: {why}"
            );
        }
    }

    /// A pod whose interface disappeared (a failed transmit said so, or housekeeping saw it):
    /// detached, and waiting for the interface to come back.
    pub(super) fn interface_gone(&mut self, id: EndpointId) {
        let Some(Slot::Attached { instance, pod }) = self.endpoints.get(id.0 as usize) else {
            return;
        };
        if io::interface_index(&pod.interface) == Some(pod.ifindex) {
            return;
        }
        let (instance, interface) = (*instance, pod.interface.clone());
        self.release(id, "the interface disappeared");
        self.endpoints[id.0 as usize] =
            Slot::Waiting { instance, interface, since: Instant::now() };
    }

    /// Once a second: notice pod interfaces that disappeared, retry pods that wait.
    pub(super) fn check_pods(&mut self) {
        for slot in 0..self.endpoints.len() {
            let id = EndpointId(slot as u32);
            match &self.endpoints[slot] {
                Slot::Attached { .. } => self.interface_gone(id),
                Slot::Waiting { instance, interface, since } if since.elapsed() >= RETRY => {
                    let (instance, interface) = (*instance, interface.clone());
                    self.endpoints[slot] = self.attach_attempt(id, instance, &interface, false);
                }
                _ => {}
            }
        }
    }

    /// Detaches every pod (at shutdown).
    pub(super) fn release_all(&mut self) {
        for slot in 0..self.endpoints.len() {
            self.release(EndpointId(slot as u32), "the dataplane is stopping");
        }
    }
}

/// The fail-closed settings of a pod's host-side interface (module doc). A setting that
/// cannot be written is reported; the pod is attached all the same.
fn guard_pod_interface(name: &str) {
    for (file, value) in [
        (format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "0"),
        // 8: reply to no ARP request at all on this interface.
        (format!("/proc/sys/net/ipv4/conf/{name}/arp_ignore"), "8"),
        (format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1"),
    ] {
        if let Err(e) = std::fs::write(&file, value) {
            tracing::warn!(interface = name, "{file}: {e}: the interface does not fail closed");
        }
    }
}
