//! A worker's sockets as ports: one AF_XDP socket on one queue of one interface (the uplink's,
//! or a pod's), what waits to be transmitted on it, its fill level and its counters.

use crate::io::xsk::{Packet, SocketId, Umem};
use crate::table::EndpointId;

/// Fill-ring level kept on each uplink queue, and the level a pod queue starts at. A pod's
/// level doubles (up to its ring size) whenever one burst takes half of it: idle pods hold few
/// chunks, busy ones get enough that the kernel never finds the fill ring empty.
pub(super) const UPLINK_FILL: u32 = 2048;
pub(super) const POD_FILL: u32 = 128;
/// Ring sizes of pod sockets.
pub(super) const POD_RING: u32 = 2048;
/// Frames waiting for TX ring room beyond this are dropped (and counted).
const MAX_PENDING: usize = 4096;

/// Handle of a port among a worker's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PortId(usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PortKind {
    Uplink,
    /// A queue of the interface of the local endpoint in this slot.
    Pod(EndpointId),
}

/// Counters of one port, published with the worker's.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PortCounters {
    pub(super) rx_packets: u64,
    pub(super) rx_bytes: u64,
    pub(super) tx_packets: u64,
    pub(super) tx_bytes: u64,
    pub(super) tx_dropped: u64,
}

/// One socket and what waits to be sent on it.
#[derive(Debug)]
pub(super) struct Port {
    pub(super) socket: SocketId,
    pub(super) kind: PortKind,
    pub(super) interface: String,
    pub(super) queue: u32,
    pub(super) pending: Vec<Packet>,
    pub(super) stats: PortCounters,
    /// Busy polling was looked at: enabled where the socket has a NAPI id.
    pub(super) busy_poll_checked: bool,
    /// Chunks kept on the fill ring.
    pub(super) fill_target: u32,
}

impl Port {
    pub(super) fn new(socket: SocketId, kind: PortKind, interface: &str, queue: u32) -> Port {
        let fill_target = match kind {
            PortKind::Uplink => UPLINK_FILL,
            PortKind::Pod(_) => POD_FILL,
        };
        Port {
            socket,
            kind,
            interface: interface.to_owned(),
            queue,
            pending: Vec::new(),
            stats: PortCounters::default(),
            busy_poll_checked: false,
            fill_target,
        }
    }

    /// Notes a received burst of `frames` frames and `bytes` bytes; a pod port whose burst
    /// took half its fill level gets twice the level.
    pub(super) fn received(&mut self, frames: u32, bytes: u64) {
        self.stats.rx_packets += u64::from(frames);
        self.stats.rx_bytes += bytes;
        if frames * 2 >= self.fill_target && self.fill_target < POD_RING {
            self.fill_target *= 2;
        }
    }

    /// Queues a frame for transmission; gives it back when too many already wait.
    pub(super) fn queue(&mut self, packet: Packet) -> Result<(), Packet> {
        if self.pending.len() < MAX_PENDING {
            self.pending.push(packet);
            Ok(())
        } else {
            self.stats.tx_dropped += 1;
            Err(packet)
        }
    }
}

/// A worker's ports, by handle. A handle stays valid until its port is closed.
#[derive(Debug, Default)]
pub(super) struct Ports {
    slots: Vec<Option<Port>>,
}

impl Ports {
    pub(super) fn add(&mut self, port: Port) -> PortId {
        let slot = self.slots.iter().position(Option::is_none).unwrap_or(self.slots.len());
        if slot == self.slots.len() {
            self.slots.push(None);
        }
        self.slots[slot] = Some(port);
        PortId(slot)
    }

    pub(super) fn get(&self, id: PortId) -> Option<&Port> {
        self.slots.get(id.0)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, id: PortId) -> Option<&mut Port> {
        self.slots.get_mut(id.0)?.as_mut()
    }

    /// Closes the port's socket and takes back its chunks (what waited to be sent, what sat
    /// on its rings).
    pub(super) fn close(&mut self, id: PortId, umem: &mut Umem, worker: usize) {
        let Some(mut port) = self.slots.get_mut(id.0).and_then(Option::take) else { return };
        for packet in port.pending.drain(..) {
            umem.release(packet.chunk);
        }
        let lost = umem.close(port.socket);
        if lost > 0 {
            tracing::warn!(worker, lost, "chunks still in the kernel at close");
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Port> {
        self.slots.iter().flatten()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (PortId, &mut Port)> {
        (self.slots.iter_mut().enumerate()).filter_map(|(i, p)| Some((PortId(i), p.as_mut()?)))
    }

    /// Every handle that may name a port (open or closed), for a pass over them during which
    /// ports may be closed: `get` of a closed one is `None`.
    pub(super) fn handles(&self) -> impl Iterator<Item = PortId> + use<> {
        (0..self.slots.len()).map(PortId)
    }
}
