//! The UMEM: one area of equal chunks shared by a worker's sockets, the state of every chunk,
//! and every operation that moves a chunk between userspace and the rings. Its invariant,
//! which every method keeps and the soundness of [`Umem::lend`] rests on: a chunk in state
//! `USER` has exactly one [`Chunk`] token and is on no ring; a chunk in any other state has
//! no token.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use super::mem::SharedMemory;
use super::ring::Desc;
use super::socket::XskSocket;
use super::{
    BindMode, BindPreference, Chunk, Packet, RingSizes, SocketId, TxOutcome, UmemConfig,
    UmemHandle, UmemId, XDP_PACKET_HEADROOM, XskError,
};
use crate::engine::Span;

/// On the free list.
const FREE: u32 = 0;
/// Held by userspace through its one token.
const USER: u32 = 1;
/// On the fill ring of the socket whose serial is in the upper 30 bits.
const FILL: u32 = 2;
/// On the TX ring of the socket whose serial is in the upper 30 bits.
const TX: u32 = 3;
/// Wake-ups of the kernel per transmission at most (each sends up to 32 frames in copy mode).
const MAX_KICKS: u32 = 16;
pub(super) const SERIAL_MASK: u32 = (1 << 30) - 1;

fn on_ring(kind: u32, serial: u32) -> u32 {
    (serial << 2) | kind
}

/// Proof that a socket of a UMEM was released (its descriptor closed and its rings
/// unmapped), so the kernel no longer uses the chunks it held; [`Umem::reclaim`] takes them
/// back.
#[derive(Debug)]
#[must_use = "the socket's chunks come back only through Umem::reclaim"]
pub struct Released {
    umem: UmemId,
    serial: u32,
    mode: BindMode,
}

impl Released {
    /// The UMEM whose chunks the socket held.
    pub fn umem(&self) -> UmemId {
        self.umem
    }
}

impl XskSocket {
    /// Releases the socket: the kernel unbinds it (waiting for an RCU grace period, which is
    /// why this can be done away from the worker).
    pub fn release(self) -> Released {
        let released = Released { umem: self.umem, serial: self.serial, mode: self.mode };
        drop(self);
        released
    }
}

/// The UMEM and the sockets that share it; one per worker (two when a zero-copy uplink
/// cannot share with copy-mode pods).
#[derive(Debug)]
pub struct Umem {
    // Sockets close before the area is unmapped (field order; the handle keeps the area too).
    sockets: Vec<Option<XskSocket>>,
    handle: Arc<UmemHandle>,
    /// FREE, USER, or on_ring(FILL | TX, serial), per chunk.
    state: Vec<u32>,
    /// Chunks in state FREE.
    free: Vec<u32>,
    /// Descriptors from the kernel that named no chunk in the state they must be in.
    invalid_descriptors: u64,
    /// Chunks a released zero-copy socket held: a driver may still write into them until
    /// the kernel's deferred release, so they are never reused.
    lost: u64,
}

impl Umem {
    /// Allocates the area; no socket exists until [`Umem::open`] or [`Umem::adopt`].
    pub fn new(config: UmemConfig) -> Result<Umem, XskError> {
        if !config.chunk_size.is_power_of_two() || !(2048..=4096).contains(&config.chunk_size) {
            return Err(XskError::Config("chunk size must be 2048 or 4096"));
        }
        if config.headroom + XDP_PACKET_HEADROOM + 1514 > config.chunk_size {
            return Err(XskError::Config("headroom leaves no room for a 1514-byte frame"));
        }
        if config.chunks == 0 || u64::from(config.chunks) * u64::from(config.chunk_size) > 1 << 40 {
            return Err(XskError::Config("chunk count must be between 1 and 2^40 bytes' worth"));
        }
        let bytes = config.chunks as usize * config.chunk_size as usize;
        let area =
            SharedMemory::anonymous(bytes).map_err(|source| XskError::Memory { bytes, source })?;
        let handle = Arc::new(UmemHandle {
            id: UmemId::next(),
            config,
            area: Arc::new(area),
            anchors: std::sync::Mutex::new(Vec::new()),
            serials: AtomicU32::new(1),
        });
        Ok(Umem {
            sockets: Vec::new(),
            handle,
            state: vec![FREE; config.chunks as usize],
            free: (0..config.chunks).rev().collect(),
            invalid_descriptors: 0,
            lost: 0,
        })
    }

    pub fn id(&self) -> UmemId {
        self.handle.id
    }

    /// For binding this UMEM's sockets elsewhere ([`XskSocket::bind`]).
    pub fn handle(&self) -> &Arc<UmemHandle> {
        &self.handle
    }

    pub fn config(&self) -> &UmemConfig {
        &self.handle.config
    }

    /// Chunks userspace holds idle.
    pub fn free_chunks(&self) -> usize {
        self.free.len()
    }

    pub fn invalid_descriptors(&self) -> u64 {
        self.invalid_descriptors
    }

    /// Chunks given up with released zero-copy sockets.
    pub fn lost_chunks(&self) -> u64 {
        self.lost
    }

    /// Index values from the kernel's side of the rings that were out of range.
    pub fn ring_anomalies(&self) -> u64 {
        self.sockets
            .iter()
            .flatten()
            .map(|s| {
                s.rx.ring().anomalies()
                    + s.tx.ring().anomalies()
                    + s.fill.ring().anomalies()
                    + s.completion.ring().anomalies()
            })
            .sum()
    }

    pub fn socket(&self, id: SocketId) -> Option<&XskSocket> {
        self.sockets.get(id.slot as usize)?.as_ref().filter(|s| s.serial == id.serial)
    }

    fn socket_mut(&mut self, id: SocketId) -> Option<&mut XskSocket> {
        self.sockets.get_mut(id.slot as usize)?.as_mut().filter(|s| s.serial == id.serial)
    }

    pub fn sockets(&self) -> impl Iterator<Item = (SocketId, &XskSocket)> {
        self.sockets.iter().enumerate().filter_map(|(slot, s)| {
            let s = s.as_ref()?;
            Some((SocketId { slot: slot as u32, serial: s.serial }, s))
        })
    }

    /// Binds a socket to `queue` of `interface` on this thread and adopts it.
    pub fn open(
        &mut self,
        interface: &str,
        queue: u32,
        rings: RingSizes,
        preference: BindPreference,
    ) -> Result<SocketId, XskError> {
        let socket = XskSocket::bind(&self.handle, interface, queue, rings, preference)?;
        Ok(self.adopt(socket))
    }

    /// Takes a socket bound to this UMEM into use.
    ///
    /// # Panics
    /// If the socket was bound to another UMEM: its chunk addresses would name this one's.
    pub fn adopt(&mut self, socket: XskSocket) -> SocketId {
        assert_eq!(socket.umem, self.handle.id, "a socket of another UMEM");
        let id = SocketId { slot: 0, serial: socket.serial };
        let slot = self.sockets.iter().position(Option::is_none).unwrap_or(self.sockets.len());
        if slot == self.sockets.len() {
            self.sockets.push(None);
        }
        self.sockets[slot] = Some(socket);
        SocketId { slot: slot as u32, ..id }
    }

    /// Takes a socket out of use, to be released (here or on another thread); the chunks on
    /// its rings stay the kernel's until [`Umem::reclaim`] is given the [`Released`] proof.
    pub fn retire(&mut self, id: SocketId) -> Option<XskSocket> {
        let slot = self.sockets.get_mut(id.slot as usize)?;
        if slot.as_ref().is_some_and(|s| s.serial == id.serial) { slot.take() } else { None }
    }

    /// Takes back what a released socket held. After a copy-mode socket is released the
    /// kernel holds none of its chunks (it copied frames in and out within its system calls);
    /// a zero-copy socket's chunks may still be written by the driver until the kernel's
    /// deferred release, so they are counted lost and never reused.
    ///
    /// # Panics
    /// If the socket was another UMEM's.
    pub fn reclaim(&mut self, released: Released) -> u32 {
        assert_eq!(released.umem, self.handle.id, "a socket of another UMEM");
        let fill = on_ring(FILL, released.serial);
        let tx = on_ring(TX, released.serial);
        let mut reclaimed = 0;
        for (index, state) in self.state.iter_mut().enumerate() {
            if *state == fill || *state == tx {
                match released.mode {
                    BindMode::Copy => {
                        *state = FREE;
                        self.free.push(index as u32);
                        reclaimed += 1;
                    }
                    // Left in its state: no socket has that serial any more, so nothing
                    // can move it again.
                    BindMode::ZeroCopy => self.lost += 1,
                }
            }
        }
        reclaimed
    }

    /// Closes a socket here and takes back its chunks. Returns how many chunks could not be
    /// taken back (a zero-copy socket's: see [`Umem::reclaim`]).
    pub fn close(&mut self, id: SocketId) -> u64 {
        let Some(socket) = self.retire(id) else { return 0 };
        let before = self.lost;
        let _ = self.reclaim(socket.release());
        self.lost - before
    }

    /// Returns a chunk to the free list.
    ///
    /// # Panics
    /// If the chunk is another UMEM's.
    #[inline]
    pub fn release(&mut self, chunk: Chunk) {
        assert_eq!(chunk.umem, self.handle.id, "a chunk of another UMEM");
        self.state[chunk.index as usize] = FREE;
        self.free.push(chunk.index);
    }

    /// Takes a free chunk (to build a frame from scratch).
    pub fn allocate(&mut self) -> Option<Chunk> {
        let index = self.free.pop()?;
        self.state[index as usize] = USER;
        Some(Chunk { umem: self.handle.id, index })
    }

    /// Where a received frame starts in its chunk: the kernel's headroom plus ours. A frame
    /// built from scratch starts there too, so that it has the same room in front.
    pub fn frame_headroom(&self) -> u32 {
        XDP_PACKET_HEADROOM + self.handle.config.headroom
    }

    /// Chunks the socket's fill ring holds (the kernel's, not yet used for a frame).
    pub fn fill_level(&mut self, id: SocketId) -> u32 {
        self.socket_mut(id).map_or(0, |s| s.fill.outstanding())
    }

    /// Tops the socket's fill ring up to `target` chunks, as far as free chunks go. Returns
    /// how many were added.
    pub fn refill(&mut self, id: SocketId, target: u32) -> u32 {
        let chunk_size = u64::from(self.handle.config.chunk_size);
        let Some(socket) = self.sockets.get_mut(id.slot as usize).and_then(Option::as_mut) else {
            return 0;
        };
        if socket.serial != id.serial {
            return 0;
        }
        let outstanding = socket.fill.outstanding();
        let wanted = target.saturating_sub(outstanding).min(self.free.len() as u32);
        if wanted == 0 {
            return 0;
        }
        let state = on_ring(FILL, socket.serial);
        let mut reservation = socket.fill.reserve(wanted);
        let mut added = 0;
        while reservation.remaining() > 0 {
            let Some(index) = self.free.pop() else { break };
            self.state[index as usize] = state;
            let _ = reservation.push(u64::from(index) * chunk_size);
            added += 1;
        }
        drop(reservation);
        if added > 0 && socket.fill.ring().needs_wakeup() {
            // Zero-copy drivers wait for this to look at the fill ring again.
            socket.kick_rx();
        }
        added
    }

    /// Takes up to `max` received frames off the socket's RX ring into `out`.
    pub fn receive(&mut self, id: SocketId, max: u32, out: &mut Vec<Packet>) -> u32 {
        let umem = self.handle.id;
        let chunk_size = u64::from(self.handle.config.chunk_size);
        let Some(socket) = self.sockets.get_mut(id.slot as usize).and_then(Option::as_mut) else {
            return 0;
        };
        if socket.serial != id.serial {
            return 0;
        }
        let expected = on_ring(FILL, socket.serial);
        let before = out.len();
        for d in socket.rx.batch(max) {
            let (index, head) = (d.addr / chunk_size, d.addr % chunk_size);
            let state = usize::try_from(index).ok().and_then(|i| self.state.get_mut(i));
            match state {
                Some(s) if *s == expected && head + u64::from(d.len) <= chunk_size => {
                    *s = USER;
                    let span = Span { head: head as u32, len: d.len };
                    let chunk = Chunk { umem, index: index as u32 };
                    let continues = d.options & libc::XDP_PKT_CONTD != 0;
                    out.push(Packet { chunk, span, continues });
                }
                _ => self.invalid_descriptors += 1,
            }
        }
        (out.len() - before) as u32
    }

    /// Lends the bytes of each packet's chunk with the packet's span, in order, for the
    /// engine to rewrite the frame in place (it moves the span as it does).
    ///
    /// # Panics
    /// If a packet's chunk is another UMEM's.
    pub fn lend<'a>(
        &'a mut self,
        packets: &'a mut [Packet],
        mut each: impl FnMut(&'a mut [u8], &'a mut Span),
    ) {
        let chunk_size = self.handle.config.chunk_size as usize;
        let area: &'a SharedMemory = &self.handle.area;
        for packet in packets.iter_mut() {
            let chunk = &packet.chunk;
            assert_eq!(chunk.umem, self.handle.id, "a chunk of another UMEM");
            debug_assert_eq!(self.state[chunk.index as usize], USER);
            // SAFETY: `chunk` is a token of this UMEM (asserted), so its chunk is in state
            // USER: on no ring and in no driver's hands (the module invariant), and the kernel
            // does not touch it. Tokens are unique per chunk, so the packets of this call name
            // distinct chunks and their slices do not overlap; the slices live for `'a`, for
            // which `self` (every other way to lend or give away a chunk) and the packets
            // (the tokens) are borrowed exclusively. The index is below the chunk count (only
            // this UMEM makes its tokens), so the range lies inside the area.
            let bytes = unsafe { area.bytes_mut(chunk.index as usize * chunk_size, chunk_size) };
            each(bytes, &mut packet.span);
        }
    }

    /// Puts packets from `pending` on the socket's TX ring, as many as fit, and wakes the
    /// kernel when it asks for it (always, in copy mode: the transmit happens in that call).
    /// The packets that did not fit stay in `pending`.
    ///
    /// # Panics
    /// If a packet's chunk is another UMEM's.
    pub fn transmit(&mut self, id: SocketId, pending: &mut Vec<Packet>) -> TxOutcome {
        let mut outcome = TxOutcome::default();
        let umem = self.handle.id;
        let chunk_size = u64::from(self.handle.config.chunk_size);
        let Some(socket) = self.sockets.get_mut(id.slot as usize).and_then(Option::as_mut) else {
            return outcome;
        };
        if socket.serial != id.serial {
            return outcome;
        }
        if !pending.is_empty() {
            let state = on_ring(TX, socket.serial);
            let mut reservation = socket.tx.reserve(pending.len() as u32);
            // Whole frames only: a frame in several chunks is not split across two calls.
            let mut n = reservation.remaining() as usize;
            while n > 0 && pending[n - 1].continues {
                n -= 1;
            }
            for packet in pending.drain(..n) {
                assert_eq!(packet.chunk.umem, umem, "a chunk of another UMEM");
                outcome.bytes += u64::from(packet.span.len);
                self.state[packet.chunk.index as usize] = state;
                let addr = u64::from(packet.chunk.index) * chunk_size + u64::from(packet.span.head);
                let options = if packet.continues { libc::XDP_PKT_CONTD } else { 0 };
                let _ = reservation.push(Desc { addr, len: packet.span.len, options });
            }
            drop(reservation);
            socket.tx_in_flight += n as u32;
            outcome.queued = n as u32;
        }
        // In copy mode one sendto() sends at most 32 frames (the kernel's TX_BATCH_SIZE) and
        // leaves the rest on the ring: kick again while the kernel keeps taking frames, so
        // that a burst (a TCP super-packet cut into 45 segments) leaves now, not at the next
        // round of the loop, which may be a sleep away.
        let mut outstanding = socket.tx.outstanding();
        for _ in 0..MAX_KICKS {
            if outstanding == 0 || !socket.tx.ring().needs_wakeup() {
                break;
            }
            if let Err(e) = socket.kick_tx() {
                // EAGAIN / EBUSY / ENOBUFS: the kernel will take the rest on the next call.
                outcome.interface_down =
                    matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENXIO));
                break;
            }
            let left = socket.tx.outstanding();
            if left >= outstanding {
                break;
            }
            outstanding = left;
        }
        outcome.backlog = outstanding;
        outcome
    }

    /// Reaps the socket's completion ring into the free list; returns how many.
    pub fn complete(&mut self, id: SocketId) -> u32 {
        let chunk_size = u64::from(self.handle.config.chunk_size);
        let Some(socket) = self.sockets.get_mut(id.slot as usize).and_then(Option::as_mut) else {
            return 0;
        };
        if socket.serial != id.serial {
            return 0;
        }
        let expected = on_ring(TX, socket.serial);
        let mut total = 0;
        for addr in socket.completion.batch(u32::MAX) {
            total += 1;
            let index = addr / chunk_size;
            match usize::try_from(index).ok().and_then(|i| self.state.get_mut(i)) {
                Some(s) if *s == expected => {
                    *s = FREE;
                    self.free.push(index as u32);
                }
                _ => self.invalid_descriptors += 1,
            }
        }
        socket.tx_in_flight = socket.tx_in_flight.saturating_sub(total);
        total
    }

    /// The socket's mode, or `None` for a handle that names no socket.
    pub fn mode(&self, id: SocketId) -> Option<BindMode> {
        self.socket(id).map(XskSocket::mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::xsk::memory::KernelEnd;

    fn umem(chunks: u32) -> Umem {
        Umem::new(UmemConfig { chunks, ..UmemConfig::default() }).unwrap()
    }

    fn socket(umem: &mut Umem, mode: BindMode) -> (SocketId, KernelEnd) {
        let (socket, end) =
            XskSocket::in_memory(umem.handle(), "mem0", 0, RingSizes::all(64), mode);
        (umem.adopt(socket), end)
    }

    fn bytes_of(umem: &mut Umem, packet: &mut Packet) -> Vec<u8> {
        let mut out = Vec::new();
        umem.lend(std::slice::from_mut(packet), |chunk, span| {
            out = chunk[span.head as usize..span.end()].to_vec();
        });
        out
    }

    #[test]
    fn frames_go_round_and_every_chunk_comes_back() {
        let mut umem = umem(256);
        let (id, mut kernel) = socket(&mut umem, BindMode::Copy);
        assert_eq!(umem.refill(id, 32), 32);
        assert_eq!(kernel.fill_level(), 32);
        for i in 0..5u8 {
            assert!(kernel.deliver(&[i; 60]));
        }
        let mut rx = Vec::new();
        assert_eq!(umem.receive(id, 64, &mut rx), 5);
        for (i, packet) in rx.iter_mut().enumerate() {
            assert_eq!(packet.span.head, umem.frame_headroom());
            assert_eq!(bytes_of(&mut umem, packet), [i as u8; 60]);
        }
        // Rewritten in place, then sent back out.
        umem.lend(&mut rx, |chunk, span| chunk[span.head as usize] = 0xee);
        let outcome = umem.transmit(id, &mut rx);
        assert_eq!((outcome.queued, outcome.bytes), (5, 300));
        let sent = kernel.transmitted();
        assert_eq!(sent.len(), 5);
        assert!(sent.iter().all(|f| f[0] == 0xee && f.len() == 60));
        assert_eq!(umem.complete(id), 5);
        assert_eq!(umem.free_chunks(), 256 - 27, "27 still on the fill ring");
        assert_eq!(umem.invalid_descriptors(), 0);
        let released = umem.retire(id).unwrap().release();
        assert_eq!(umem.reclaim(released), 27);
        assert_eq!(umem.free_chunks(), 256);
    }

    #[test]
    fn descriptors_for_chunks_the_kernel_does_not_hold_are_refused() {
        let mut umem = umem(64);
        let (a, mut kernel_a) = socket(&mut umem, BindMode::Copy);
        let (b, mut kernel_b) = socket(&mut umem, BindMode::Copy);
        umem.refill(a, 8);
        let chunk_size = u64::from(umem.config().chunk_size);
        let serial_a = umem.socket(a).unwrap().serial;
        let on_fill_a = |umem: &Umem| {
            (0..64u64).find(|i| umem.state[*i as usize] == on_ring(FILL, serial_a)).unwrap()
        };
        let mut rx = Vec::new();
        assert!(kernel_a.deliver(&[1; 60]));
        assert_eq!(umem.receive(a, 1, &mut rx), 1);
        let filled = on_fill_a(&umem);
        let free = (0..64u64).find(|i| umem.state[*i as usize] == FREE).unwrap();
        // A chunk on the free list; one on A's fill ring, reported by B; one beyond the area;
        // one running past its chunk's end.
        kernel_b.inject_rx(Desc { addr: free * chunk_size + 256, len: 60, options: 0 });
        kernel_b.inject_rx(Desc { addr: filled * chunk_size + 256, len: 60, options: 0 });
        kernel_b.inject_rx(Desc { addr: 64 * chunk_size + 256, len: 60, options: 0 });
        kernel_a.inject_rx(Desc { addr: filled * chunk_size + 2000, len: 100, options: 0 });
        assert_eq!(umem.receive(b, 64, &mut rx), 0);
        assert_eq!(umem.receive(a, 64, &mut rx), 0);
        assert_eq!(umem.invalid_descriptors(), 4);
        // A completion for a chunk on a fill ring, and for the chunk userspace holds.
        kernel_a.inject_completion(filled * chunk_size);
        kernel_a.inject_completion(u64::from(rx[0].chunk.index()) * chunk_size);
        assert_eq!(umem.complete(a), 2);
        assert_eq!(umem.invalid_descriptors(), 6);
        assert_eq!(umem.state[filled as usize], on_ring(FILL, serial_a), "left where it was");
    }

    #[test]
    fn a_released_zero_copy_socket_keeps_its_chunks() {
        let mut umem = umem(64);
        let (id, _kernel) = socket(&mut umem, BindMode::ZeroCopy);
        umem.refill(id, 16);
        assert_eq!(umem.close(id), 16);
        assert_eq!(umem.lost_chunks(), 16);
        assert_eq!(umem.free_chunks(), 48);
    }

    #[test]
    fn a_stale_socket_handle_names_nothing() {
        let mut umem = umem(64);
        let (old, _kernel) = socket(&mut umem, BindMode::Copy);
        umem.close(old);
        let (new, _kernel) = socket(&mut umem, BindMode::Copy);
        assert_ne!(old, new);
        assert!(umem.socket(old).is_none());
        assert_eq!(umem.refill(old, 8), 0);
        assert!(umem.socket(new).is_some());
    }

    #[test]
    fn a_full_tx_ring_leaves_the_rest_pending() {
        let mut umem = umem(256);
        let (id, mut kernel) = socket(&mut umem, BindMode::Copy);
        let headroom = umem.frame_headroom() as usize;
        let mut pending: Vec<Packet> = (0..100)
            .map(|_| Packet::new(umem.allocate().unwrap(), Span::new(headroom, 64)))
            .collect();
        assert_eq!(umem.transmit(id, &mut pending).queued, 64);
        assert_eq!(pending.len(), 36);
        assert_eq!(kernel.transmitted().len(), 64);
        umem.complete(id);
        assert_eq!(umem.transmit(id, &mut pending).queued, 36);
    }

    #[test]
    #[should_panic(expected = "a chunk of another UMEM")]
    fn a_token_of_another_umem_is_refused() {
        let mut a = umem(8);
        let mut b = umem(8);
        let chunk = a.allocate().unwrap();
        b.release(chunk);
    }
}
