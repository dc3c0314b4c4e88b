//! An in-memory kernel for tests: the kernel's side of one socket's four rings, over the
//! socket's real UMEM area, doing what the kernel does in copy mode — a received frame is
//! copied into a chunk taken from the fill ring and described on the RX ring; a descriptor on
//! the TX ring is validated, its bytes copied out, its address put on the completion ring.
//! The same ring code runs on both sides, so the UMEM and the worker above it are tested
//! without root, and the kernel's checks (descriptor bounds, ring space) are the oracle.

use std::sync::Arc;

use super::mem::SharedMemory;
use super::ring::{Consumer, Desc, Producer, Ring, RingLayout, Slot};
use super::socket::{Backend, XskSocket};
use super::{BindMode, RingSizes, UmemHandle, XDP_PACKET_HEADROOM};

/// The kernel's counters for the socket, as XDP_STATISTICS names them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelCounters {
    pub(crate) rx_ring_full: u64,
    pub(crate) rx_fill_ring_empty: u64,
    /// Frames longer than a chunk holds.
    pub(crate) rx_dropped: u64,
    /// Fill addresses outside the UMEM.
    pub(crate) fill_invalid: u64,
    pub(crate) tx_invalid: u64,
}

/// The kernel's end of an in-memory socket.
#[derive(Debug)]
pub(crate) struct KernelEnd {
    fill: Consumer<u64>,
    rx: Producer<Desc>,
    tx: Consumer<Desc>,
    completion: Producer<u64>,
    handle: Arc<UmemHandle>,
    /// Chunks taken off the fill ring and not used (the kernel's own free list, in xsk_buff_pool).
    spare: Vec<u64>,
    /// The start of a frame whose last descriptor has not come yet.
    tx_partial: Vec<u8>,
    pub(crate) counters: KernelCounters,
}

fn ring_pair<T: Slot>(size: u32) -> (Ring<T>, Ring<T>) {
    let layout = RingLayout::IN_MEMORY;
    let memory = Arc::new(SharedMemory::anonymous(layout.bytes::<T>(size)).expect("ring memory"));
    (Ring::new(memory.clone(), layout, size), Ring::new(memory, layout, size))
}

impl XskSocket {
    /// A socket of `handle`'s UMEM whose kernel is `KernelEnd`, reporting `mode`.
    pub(crate) fn in_memory(
        handle: &Arc<UmemHandle>,
        interface: &str,
        queue: u32,
        rings: RingSizes,
        mode: BindMode,
    ) -> (XskSocket, KernelEnd) {
        let (rx_user, rx_kernel) = ring_pair::<Desc>(rings.rx);
        let (tx_user, tx_kernel) = ring_pair::<Desc>(rings.tx);
        let (fill_user, fill_kernel) = ring_pair::<u64>(rings.fill);
        let (completion_user, completion_kernel) = ring_pair::<u64>(rings.completion);
        let socket = XskSocket {
            rx: Consumer::new(rx_user),
            tx: Producer::new(tx_user),
            fill: Producer::new(fill_user),
            completion: Consumer::new(completion_user),
            backend: Backend::Memory,
            umem: handle.id,
            serial: handle.next_serial(),
            handle: handle.clone(),
            interface: interface.to_owned(),
            ifindex: 0,
            queue,
            mode,
            tx_in_flight: 0,
        };
        let end = KernelEnd {
            fill: Consumer::new(fill_kernel),
            rx: Producer::new(rx_kernel),
            tx: Consumer::new(tx_kernel),
            completion: Producer::new(completion_kernel),
            handle: handle.clone(),
            spare: Vec::new(),
            tx_partial: Vec::new(),
            counters: KernelCounters::default(),
        };
        (socket, end)
    }
}

impl KernelEnd {
    /// A chunk's base address from the fill ring (or one kept from before), if valid.
    fn take_fill(&mut self) -> Option<u64> {
        if let Some(addr) = self.spare.pop() {
            return Some(addr);
        }
        let config = self.handle.config;
        let area = u64::from(config.chunks) * u64::from(config.chunk_size);
        loop {
            let addr = self.fill.batch(1).next()?;
            // Aligned mode: the kernel masks the offset within the chunk away.
            let base = addr - addr % u64::from(config.chunk_size);
            if base < area {
                return Some(base);
            }
            self.counters.fill_invalid += 1;
        }
    }

    /// A frame arrives on the socket's queue: copied into a chunk from the fill ring and
    /// described on the RX ring — into several chunks, each described with `XDP_PKT_CONTD`
    /// but the last, when it is longer than a chunk and the UMEM is multi-buffer. False when
    /// it is dropped (counted as the kernel would).
    pub(crate) fn deliver(&mut self, frame: &[u8]) -> bool {
        let config = self.handle.config;
        let head = u64::from(XDP_PACKET_HEADROOM + config.headroom);
        let room = (u64::from(config.chunk_size) - head) as usize;
        let parts = frame.len().div_ceil(room).max(1);
        if parts > 1 && !config.multi_buffer {
            self.counters.rx_dropped += 1;
            return false;
        }
        if (self.rx.reserve(parts as u32).remaining() as usize) < parts {
            self.counters.rx_ring_full += 1;
            return false;
        }
        let mut bases = Vec::with_capacity(parts);
        for _ in 0..parts {
            match self.take_fill() {
                Some(base) => bases.push(base),
                None => {
                    self.counters.rx_fill_ring_empty += 1;
                    self.spare.extend(bases);
                    return false;
                }
            }
        }
        let mut reservation = self.rx.reserve(parts as u32);
        for (i, (base, part)) in bases.into_iter().zip(frame.chunks(room)).enumerate() {
            // SAFETY: the chunk came off the fill ring, so userspace gave it to the kernel:
            // it is in a fill state in its UMEM, with no token, and userspace does not touch
            // it until it comes back on the RX ring below. The range lies inside the chunk
            // (`part` is at most `room` bytes) and so inside the area.
            let bytes = unsafe { self.handle.area.bytes_mut((base + head) as usize, part.len()) };
            bytes.copy_from_slice(part);
            let options = if i + 1 < parts { libc::XDP_PKT_CONTD } else { 0 };
            let _ = reservation.push(Desc { addr: base + head, len: part.len() as u32, options });
        }
        true
    }

    /// Frames userspace put on the TX ring since the last call, copied out (a frame in
    /// several descriptors joined up); their addresses go on the completion ring (as far as
    /// it has room: what does not fit stays on the TX ring, as the kernel leaves it).
    pub(crate) fn transmitted(&mut self) -> Vec<Vec<u8>> {
        let config = self.handle.config;
        let area = u64::from(config.chunks) * u64::from(config.chunk_size);
        let room = self.completion.reserve(u32::MAX).remaining();
        let mut frames = Vec::new();
        let mut current = std::mem::take(&mut self.tx_partial);
        let mut done = Vec::new();
        for d in self.tx.batch(room) {
            let offset = d.addr % u64::from(config.chunk_size);
            let valid = d.addr < area
                && d.len > 0
                && offset + u64::from(d.len) <= u64::from(config.chunk_size);
            if !valid {
                // The kernel skips an invalid descriptor without completing it.
                self.counters.tx_invalid += 1;
                continue;
            }
            // SAFETY: userspace put the chunk on the TX ring: it is in a TX state with no
            // token, and comes back to userspace only through the completion ring below. The
            // range lies inside the area (checked above).
            let bytes = unsafe { self.handle.area.bytes_mut(d.addr as usize, d.len as usize) };
            current.extend_from_slice(bytes);
            if d.options & libc::XDP_PKT_CONTD == 0 {
                frames.push(std::mem::take(&mut current));
            }
            done.push(d.addr);
        }
        self.tx_partial.extend(current);
        let mut reservation = self.completion.reserve(done.len() as u32);
        for addr in done {
            let _ = reservation.push(addr);
        }
        drop(reservation);
        frames
    }

    /// Chunks on the fill ring, not yet taken for a frame.
    pub(crate) fn fill_level(&mut self) -> u32 {
        // A batch that reads nothing releases nothing: this only looks.
        self.fill.batch(u32::MAX).size_hint().0 as u32
    }
}

#[cfg(test)]
impl KernelEnd {
    /// Puts a descriptor on the RX ring as it is: a misbehaving kernel.
    pub(super) fn inject_rx(&mut self, desc: Desc) {
        let mut reservation = self.rx.reserve(1);
        let _ = reservation.push(desc);
    }

    /// Puts an address on the completion ring as it is: a misbehaving kernel.
    pub(super) fn inject_completion(&mut self, addr: u64) {
        let mut reservation = self.completion.reserve(1);
        let _ = reservation.push(addr);
    }
}
