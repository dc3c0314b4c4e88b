//! A worker's sockets as ports: one AF_XDP socket on one queue of one interface (the uplink's,
//! or a pod's), the UMEM it belongs to, what waits to be transmitted on it, its fill level and
//! its counters.

use super::umems::Umems;
use crate::io::xsk::{Packet, SocketId, XskSocket};
use crate::table::EndpointId;

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
    /// Which of the worker's UMEMs the socket is bound to.
    pub(super) umem: usize,
    pub(super) kind: PortKind,
    pub(super) interface: String,
    pub(super) queue: u32,
    pub(super) pending: Vec<Packet>,
    /// The start of a frame in several chunks whose end has not been received yet.
    pub(super) partial: Vec<Packet>,
    pub(super) stats: PortCounters,
    /// Busy polling was looked at: enabled where the socket has a NAPI id.
    pub(super) busy_poll_checked: bool,
    /// Chunks kept on the fill ring (set by the worker's fill budget).
    pub(super) fill_target: u32,
    /// The largest burst received since the budget last looked.
    pub(super) largest_burst: u32,
}

impl Port {
    pub(super) fn new(
        socket: SocketId,
        umem: usize,
        kind: PortKind,
        interface: &str,
        queue: u32,
        fill_target: u32,
    ) -> Port {
        Port {
            socket,
            umem,
            kind,
            interface: interface.to_owned(),
            queue,
            pending: Vec::new(),
            partial: Vec::new(),
            stats: PortCounters::default(),
            busy_poll_checked: false,
            fill_target,
            largest_burst: 0,
        }
    }

    /// Notes a received burst of `frames` frames and `bytes` bytes.
    pub(super) fn received(&mut self, frames: u32, bytes: u64) {
        self.stats.rx_packets += u64::from(frames);
        self.stats.rx_bytes += bytes;
        self.largest_burst = self.largest_burst.max(frames);
    }
}

/// A worker's ports, by handle, and how many frames wait in all of them together. A handle
/// stays valid until its port is removed.
#[derive(Debug, Default)]
pub(super) struct Ports {
    slots: Vec<Option<Port>>,
    pending: usize,
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

    /// Frames waiting on all ports.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// Queues a frame on a port for transmission, unless `limit` frames already wait on all
    /// ports together; gives it back then (counted as the port's `tx_dropped`).
    pub(super) fn queue(&mut self, id: PortId, packet: Packet, limit: usize) -> Result<(), Packet> {
        let total = self.pending;
        let Some(port) = self.get_mut(id) else { return Err(packet) };
        if total < limit {
            port.pending.push(packet);
            self.pending += 1;
            Ok(())
        } else {
            port.stats.tx_dropped += 1;
            Err(packet)
        }
    }

    /// Takes a port out: what waited on it is released and its socket retired from its UMEM
    /// (returned, to be released where that may take its time).
    pub(super) fn remove(&mut self, id: PortId, umems: &mut Umems) -> Option<XskSocket> {
        let mut port = self.slots.get_mut(id.0).and_then(Option::take)?;
        self.pending -= port.pending.len();
        for packet in port.pending.drain(..).chain(port.partial.drain(..)) {
            umems.release(packet);
        }
        umems.get(port.umem).retire(port.socket)
    }

    /// Transmits what waits on each port (`each` takes what it can from `pending`), keeping
    /// the count of waiting frames.
    pub(super) fn transmit_all(&mut self, mut each: impl FnMut(PortId, &mut Port)) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(port) = slot.as_mut() {
                let before = port.pending.len();
                each(PortId(i), port);
                self.pending -= before - port.pending.len();
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Port> {
        self.slots.iter().flatten()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (PortId, &mut Port)> {
        (self.slots.iter_mut().enumerate()).filter_map(|(i, p)| Some((PortId(i), p.as_mut()?)))
    }

    /// Every handle that may name a port (open or removed), for a pass over them during which
    /// ports may be removed: `get` of a removed one is `None`.
    pub(super) fn handles(&self) -> impl Iterator<Item = PortId> + use<> {
        (0..self.slots.len()).map(PortId)
    }
}
