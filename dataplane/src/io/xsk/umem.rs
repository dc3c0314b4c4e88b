//! The UMEM: one area of equal chunks shared by a worker's sockets, who owns each chunk
//! (userspace or the kernel), and every operation that moves chunks between userspace and the
//! rings: open, fill, receive, lend, transmit, complete, close.

use std::io;
use std::os::fd::AsFd;

use super::ring::{Consumer, Desc, Producer, RingMap};
use super::socket::XskSocket;
use super::{
    BindMode, BindPreference, Chunk, Packet, RingSizes, SocketId, TxOutcome, UmemConfig,
    XDP_PACKET_HEADROOM, XskError,
};
use crate::engine::Span;
use crate::io::sys::{self, ChunkArea};

/// Chunk states (one byte per chunk).
const USER: u8 = 0;
const KERNEL: u8 = 1;

/// The UMEM and the sockets that share it; one per worker.
#[derive(Debug)]
pub struct Umem {
    // Sockets close before the area is unmapped (field order).
    sockets: Vec<Option<XskSocket>>,
    area: ChunkArea,
    config: UmemConfig,
    /// USER or KERNEL per chunk.
    state: Vec<u8>,
    free: Vec<Chunk>,
    /// Descriptors from the kernel that named no chunk it owned (ignored, counted).
    invalid_descriptors: u64,
}

impl Umem {
    /// Allocates the area; no socket exists until [`Umem::open`].
    pub fn new(config: UmemConfig) -> Result<Umem, XskError> {
        if !config.chunk_size.is_power_of_two() || config.chunk_size < 2048 {
            return Err(XskError::Config("chunk size must be a power of two of at least 2048"));
        }
        if config.headroom + XDP_PACKET_HEADROOM + 1514 > config.chunk_size {
            return Err(XskError::Config("headroom leaves no room for a 1514-byte frame"));
        }
        if config.chunks == 0 || u64::from(config.chunks) * u64::from(config.chunk_size) > 1 << 40 {
            return Err(XskError::Config("chunk count must be between 1 and 2^40 bytes' worth"));
        }
        let area = ChunkArea::new(config.chunks, config.chunk_size).map_err(|source| {
            XskError::Memory { bytes: config.chunks as usize * config.chunk_size as usize, source }
        })?;
        Ok(Umem {
            sockets: Vec::new(),
            area,
            config,
            state: vec![USER; config.chunks as usize],
            free: (0..config.chunks).rev().map(Chunk).collect(),
            invalid_descriptors: 0,
        })
    }

    pub fn config(&self) -> &UmemConfig {
        &self.config
    }

    /// Chunks userspace holds idle.
    pub fn free_chunks(&self) -> usize {
        self.free.len()
    }

    pub fn invalid_descriptors(&self) -> u64 {
        self.invalid_descriptors
    }

    pub fn socket(&self, id: SocketId) -> Option<&XskSocket> {
        self.sockets.get(id.0).and_then(Option::as_ref)
    }

    pub fn sockets(&self) -> impl Iterator<Item = (SocketId, &XskSocket)> {
        self.sockets.iter().enumerate().filter_map(|(i, s)| Some((SocketId(i), s.as_ref()?)))
    }

    /// Creates a socket bound to `queue` of `interface`. The first socket registers the UMEM;
    /// later ones share it (`XDP_SHARED_UMEM`) and inherit its copy or zero-copy mode.
    pub fn open(
        &mut self,
        interface: &str,
        queue: u32,
        rings: RingSizes,
        preference: BindPreference,
    ) -> Result<SocketId, XskError> {
        let ifindex = sys::ifindex(interface)
            .ok_or_else(|| XskError::NoSuchInterface(interface.to_owned()))?;
        let ring_err = |ring: &'static str| {
            let interface = interface.to_owned();
            move |source| XskError::Ring { ring, interface, queue, source }
        };
        let fd = sys::xsk_socket().map_err(|e| match e.raw_os_error() {
            Some(libc::EAFNOSUPPORT) => XskError::Unsupported(e),
            _ => XskError::Socket(e),
        })?;
        let shared = self.sockets.iter().flatten().next().map(|s| s.fd.as_fd());
        if shared.is_none() {
            let reg = libc::xdp_umem_reg {
                addr: self.area.map().address(),
                len: self.area.map().len() as u64,
                chunk_size: self.config.chunk_size,
                headroom: self.config.headroom,
                flags: 0,
                tx_metadata_len: 0,
            };
            sys::setsockopt(fd.as_fd(), libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)
                .map_err(XskError::Register)?;
        }
        for (name, size) in [
            (libc::XDP_UMEM_FILL_RING, rings.fill),
            (libc::XDP_UMEM_COMPLETION_RING, rings.completion),
            (libc::XDP_RX_RING, rings.rx),
            (libc::XDP_TX_RING, rings.tx),
        ] {
            if !size.is_power_of_two() {
                return Err(XskError::Config("ring sizes must be powers of two"));
            }
            sys::setsockopt(fd.as_fd(), libc::SOL_XDP, name, &size).map_err(ring_err("setup"))?;
        }
        let (off, _) = sys::getsockopt::<libc::xdp_mmap_offsets>(
            fd.as_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
        )
        .map_err(ring_err("offsets"))?;
        let rx = RingMap::new(fd.as_fd(), &off.rx, libc::XDP_PGOFF_RX_RING as u64, rings.rx)
            .map_err(ring_err("RX"))?;
        let tx = RingMap::new(fd.as_fd(), &off.tx, libc::XDP_PGOFF_TX_RING as u64, rings.tx)
            .map_err(ring_err("TX"))?;
        let fill = RingMap::new(fd.as_fd(), &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING, rings.fill)
            .map_err(ring_err("fill"))?;
        let completion = RingMap::new(
            fd.as_fd(),
            &off.cr,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            rings.completion,
        )
        .map_err(ring_err("completion"))?;

        let bind_err = |mode: &'static str, source: io::Error| {
            let hint = match source.raw_os_error() {
                Some(libc::EBUSY) => " (another AF_XDP socket is bound to that queue)",
                Some(libc::EINVAL) if mode == "shared" => {
                    " (sharing a UMEM across devices needs the same copy or zero-copy mode \
                     on all of them: try copy mode)"
                }
                Some(libc::EOPNOTSUPP) => " (the driver has no AF_XDP zero-copy support)",
                _ => "",
            };
            XskError::Bind { interface: interface.to_owned(), queue, mode, source, hint }
        };
        let wakeup = libc::XDP_USE_NEED_WAKEUP;
        let bind = |flags, owner| {
            bind_when_free(|| sys::xsk_bind(fd.as_fd(), ifindex, queue, flags, owner))
        };
        if let Some(owner) = shared {
            // The kernel refuses mode flags with XDP_SHARED_UMEM: the mode is the UMEM's.
            bind(libc::XDP_SHARED_UMEM, Some(owner)).map_err(|e| bind_err("shared", e))?;
        } else {
            let zero_copy = || bind(libc::XDP_ZEROCOPY | wakeup, None);
            let copy = || bind(libc::XDP_COPY | wakeup, None);
            match preference {
                BindPreference::ZeroCopy => zero_copy().map_err(|e| bind_err("zero-copy", e))?,
                BindPreference::Copy => copy().map_err(|e| bind_err("copy", e))?,
                BindPreference::Auto => match zero_copy() {
                    Ok(()) => {}
                    // EOPNOTSUPP: no zero-copy in this driver (veth); EINVAL or EPROTONOSUPPORT
                    // on drivers that reject the flag differently.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::EPROTONOSUPPORT)
                        ) =>
                    {
                        copy().map_err(|e| bind_err("copy", e))?
                    }
                    Err(e) => return Err(bind_err("zero-copy", e)),
                },
            }
        }
        let (options, _) =
            sys::getsockopt::<libc::xdp_options>(fd.as_fd(), libc::SOL_XDP, libc::XDP_OPTIONS)
                .map_err(ring_err("options"))?;
        let mode = if options.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 {
            BindMode::ZeroCopy
        } else {
            BindMode::Copy
        };
        if mode == BindMode::Copy {
            // Lets one sendto() hand up to 256 frames to the driver in copy mode instead of
            // 32 (kernel 6.17+; DESIGN.md measured it). Older kernels lack the option: fine.
            let budget = rings.tx.min(256);
            let _ = sys::setsockopt(
                fd.as_fd(),
                libc::SOL_XDP,
                9, /* XDP_MAX_TX_SKB_BUDGET */
                &budget,
            );
        }
        let socket = XskSocket {
            rx: Consumer::new(rx),
            tx: Producer::new(tx),
            fill: Producer::new(fill),
            completion: Consumer::new(completion),
            fd,
            interface: interface.to_owned(),
            ifindex,
            queue,
            mode,
            tx_in_flight: 0,
        };
        let slot = self.sockets.iter().position(Option::is_none).unwrap_or(self.sockets.len());
        if slot == self.sockets.len() {
            self.sockets.push(None);
        }
        self.sockets[slot] = Some(socket);
        Ok(SocketId(slot))
    }

    /// Closes a socket and takes back the chunks still on its rings. Returns how many chunks
    /// could not be taken back (in the kernel's hands when it closed, e.g. frames on their
    /// way out of a zero-copy driver).
    pub fn close(&mut self, id: SocketId) -> u32 {
        let Some(socket) = self.sockets.get_mut(id.0).and_then(Option::take) else {
            return 0;
        };
        let XskSocket { mut rx, tx, mut fill, mut completion, fd, tx_in_flight, .. } = socket;
        let fill_outstanding = fill.outstanding();
        // Closing first: the kernel no longer touches the rings, which stay mapped.
        drop(fd);
        let mut chunks = Vec::new();
        rx.drain(u32::MAX, |d: Desc| chunks.push(d.addr));
        completion.drain(u32::MAX, |a| chunks.push(a));
        tx.unconsumed(|d| d.addr, &mut chunks);
        fill.unconsumed(|a| a, &mut chunks);
        let before = self.free.len();
        for addr in chunks {
            if let Some(chunk) =
                take(&mut self.state, &mut self.invalid_descriptors, self.config.chunk_size, addr)
            {
                self.free.push(chunk);
            }
        }
        let reclaimed = (self.free.len() - before) as u32;
        (fill_outstanding + tx_in_flight).saturating_sub(reclaimed)
    }

    /// Returns a chunk to the free list.
    #[inline]
    pub fn release(&mut self, chunk: Chunk) {
        self.free.push(chunk);
    }

    /// Takes a free chunk (to build a frame from scratch).
    pub fn allocate(&mut self) -> Option<Chunk> {
        self.free.pop()
    }

    /// Tops the socket's fill ring up to `target` chunks owned by the kernel. Returns how
    /// many were added.
    pub fn refill(&mut self, id: SocketId, target: u32) -> u32 {
        let Some(socket) = self.sockets.get_mut(id.0).and_then(Option::as_mut) else {
            return 0;
        };
        let outstanding = socket.fill.outstanding();
        let wanted = target.saturating_sub(outstanding).min(self.free.len() as u32);
        if wanted == 0 {
            return 0;
        }
        let chunk_size = u64::from(self.config.chunk_size);
        let mut reservation = socket.fill.reserve(wanted);
        let mut added = 0;
        while reservation.remaining() > 0 {
            let Some(chunk) = self.free.pop() else { break };
            self.state[chunk.0 as usize] = KERNEL;
            let _ = reservation.push(u64::from(chunk.0) * chunk_size);
            added += 1;
        }
        drop(reservation);
        if added > 0 && socket.fill.ring.needs_wakeup() {
            // Zero-copy drivers wait for this to look at the fill ring again.
            let _ = sys::xsk_kick_rx(socket.fd.as_fd());
        }
        added
    }

    /// Takes up to `max` received frames off the socket's RX ring into `out`.
    pub fn receive(&mut self, id: SocketId, max: u32, out: &mut Vec<Packet>) -> u32 {
        let Some(socket) = self.sockets.get_mut(id.0).and_then(Option::as_mut) else {
            return 0;
        };
        let chunk_size = u64::from(self.config.chunk_size);
        let state = &mut self.state;
        let invalid = &mut self.invalid_descriptors;
        let before = out.len();
        socket.rx.drain(max, |d: Desc| {
            let index = d.addr / chunk_size;
            let head = d.addr % chunk_size;
            let valid = usize::try_from(index)
                .ok()
                .and_then(|i| state.get_mut(i))
                .filter(|s| **s == KERNEL && head + u64::from(d.len) <= chunk_size);
            match valid {
                Some(s) => {
                    *s = USER;
                    let span = Span { head: head as u32, len: d.len };
                    out.push(Packet { chunk: Chunk(index as u32), span });
                }
                None => *invalid += 1,
            }
        });
        (out.len() - before) as u32
    }

    /// Lends the bytes of each packet's chunk with the packet's span, in order, for the
    /// engine to rewrite the frame in place (it moves the span as it does).
    pub fn lend<'a>(
        &'a mut self,
        packets: &'a mut [Packet],
        scratch: &mut Vec<u32>,
        mut each: impl FnMut(&'a mut [u8], &'a mut Span),
    ) {
        scratch.clear();
        scratch.extend(packets.iter().map(|p| p.chunk.0));
        let mut spans = packets.iter_mut().map(|p| &mut p.span);
        self.area.lend(scratch, |buffer| {
            if let Some(span) = spans.next() {
                each(buffer, span);
            }
        });
    }

    /// Where a received frame starts in its chunk: the kernel's headroom plus ours. A frame
    /// built from scratch starts there too, so that it has the same room in front.
    pub fn frame_headroom(&self) -> u32 {
        XDP_PACKET_HEADROOM + self.config.headroom
    }

    /// Puts packets from `pending` on the socket's TX ring, as many as fit, and wakes the
    /// kernel when it asks for it (always, in copy mode: the transmit happens in that call).
    /// The packets that did not fit stay in `pending`.
    pub fn transmit(&mut self, id: SocketId, pending: &mut Vec<Packet>) -> TxOutcome {
        let mut outcome = TxOutcome::default();
        let Some(socket) = self.sockets.get_mut(id.0).and_then(Option::as_mut) else {
            return outcome;
        };
        if !pending.is_empty() {
            let chunk_size = u64::from(self.config.chunk_size);
            let mut reservation = socket.tx.reserve(pending.len() as u32);
            let n = reservation.remaining() as usize;
            for packet in pending.drain(..n) {
                outcome.bytes += u64::from(packet.span.len);
                self.state[packet.chunk.0 as usize] = KERNEL;
                let addr = u64::from(packet.chunk.0) * chunk_size + u64::from(packet.span.head);
                let _ = reservation.push(Desc { addr, len: packet.span.len });
            }
            drop(reservation);
            socket.tx_in_flight += n as u32;
            outcome.queued = n as u32;
        }
        if socket.tx_in_flight > 0 && socket.tx.ring.needs_wakeup() {
            if let Err(e) = sys::xsk_kick_tx(socket.fd.as_fd()) {
                // EAGAIN / EBUSY / ENOBUFS: the kernel will take the rest on the next call.
                outcome.interface_down =
                    matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENXIO));
            }
        }
        outcome
    }

    /// Reaps the socket's completion ring into the free list; returns how many.
    pub fn complete(&mut self, id: SocketId) -> u32 {
        let Some(socket) = self.sockets.get_mut(id.0).and_then(Option::as_mut) else {
            return 0;
        };
        let mut addrs = [0u64; 256];
        let mut total = 0;
        loop {
            let mut n = 0;
            socket.completion.drain(addrs.len() as u32, |a| {
                addrs[n] = a;
                n += 1;
            });
            socket.tx_in_flight = socket.tx_in_flight.saturating_sub(n as u32);
            total += n as u32;
            for &addr in &addrs[..n] {
                let chunk_size = self.config.chunk_size;
                if let Some(chunk) =
                    take(&mut self.state, &mut self.invalid_descriptors, chunk_size, addr)
                {
                    self.free.push(chunk);
                }
            }
            if n < addrs.len() {
                return total;
            }
        }
    }
}

/// Binds, waiting up to a second while the queue is busy. A socket's hold on a queue outlives
/// the socket: the kernel releases its buffer pool, and with it the queue, from a work queue
/// after the last reference goes (net/xdp/xsk_buff_pool.c, `xp_release_deferred`), so a
/// dataplane restarted at once, or another program taking over the queue, would find it busy
/// for a few milliseconds. A queue that stays busy belongs to a live socket: that is the error.
fn bind_when_free(bind: impl Fn() -> io::Result<()>) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match bind() {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// The chunk a kernel-provided address names, if the kernel owned it; otherwise the address
/// is counted as invalid.
#[inline]
fn take(state: &mut [u8], invalid: &mut u64, chunk_size: u32, addr: u64) -> Option<Chunk> {
    let index = addr / u64::from(chunk_size);
    match usize::try_from(index).ok().and_then(|i| state.get_mut(i)) {
        Some(s) if *s == KERNEL => {
            *s = USER;
            Some(Chunk(index as u32))
        }
        _ => {
            *invalid += 1;
            None
        }
    }
}
