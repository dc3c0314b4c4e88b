//! AF_XDP sockets over one shared UMEM, in safe Rust over [`super::sys`].
//!
//! A [`Umem`] is one memory area divided into equal chunks, plus every socket that uses it.
//! The first socket registers the area with the kernel; every later one binds with
//! `XDP_SHARED_UMEM` and gets its own fill and completion rings (the kernel requires that
//! when sockets share a UMEM across devices or queues). So a frame received on a pod's veth
//! can be put on the uplink's TX ring as it is, without a userspace copy: the RX descriptor's
//! address is valid for every socket of the UMEM.
//!
//! Ownership of chunks is explicit. A [`Chunk`] is a token that cannot be copied: whoever
//! holds it owns that chunk's memory. Filling a socket's fill ring or transmitting consumes
//! the token; receiving or reaping a completion produces one. The kernel's descriptors are
//! checked against a per-chunk state (an address outside the UMEM, or a chunk the kernel does
//! not own, is counted as invalid and ignored), so neither a bug here nor a misbehaving
//! kernel can make two frames alias. Rings are written through short-lived reservations
//! that publish what was written when they end: there is no index to get wrong.
//!
//! Memory ordering follows the kernel's own contract (net/xdp/xsk_queue.h). For each ring
//! the producer does `(A)` load the consumer index, write slots, `(B)` store-release the
//! producer index; the consumer does `(C)` load-acquire the producer index, read slots,
//! `(D)` store-release the consumer index. (A) pairs with (D): the producer does not
//! overwrite a slot before the consumer has finished reading it. (B) pairs with (C): the
//! consumer does not read a slot before the producer has written it. The comments at each
//! atomic access say which side of which pair it is.
//!
//! Frames start `XDP_PACKET_HEADROOM` (256) bytes into their chunk in both copy and
//! zero-copy mode, plus the UMEM headroom we register ([`UmemConfig::headroom`]); that is the
//! room the engine prepends the outer headers into (50 bytes, 70 over IPv6).

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::sys::{self, ChunkArea, Mmap};

/// The kernel's headroom in front of every received frame (include/uapi/linux/bpf.h).
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// Sizes of the UMEM.
#[derive(Debug, Clone, Copy)]
pub struct UmemConfig {
    /// Number of chunks.
    pub chunks: u32,
    /// Bytes per chunk: a power of two, at least 2048. A frame fits when
    /// `headroom + 256 + frame length <= chunk_size`.
    pub chunk_size: u32,
    /// Extra headroom in front of received frames, on top of the kernel's 256 bytes.
    pub headroom: u32,
}

impl Default for UmemConfig {
    /// 16,384 chunks of 2 KiB: 32 MiB. After the kernel's 256-byte headroom (where the outer
    /// headers are prepended) a chunk holds a 1,792-byte frame: MTU 1500 plus headers.
    fn default() -> Self {
        UmemConfig { chunks: 16_384, chunk_size: 2048, headroom: 0 }
    }
}

/// Ring sizes of one socket (powers of two).
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    pub rx: u32,
    pub tx: u32,
    pub fill: u32,
    pub completion: u32,
}

impl Default for RingSizes {
    fn default() -> Self {
        RingSizes { rx: 2048, tx: 2048, fill: 2048, completion: 2048 }
    }
}

/// Which bind the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindPreference {
    /// Zero-copy, falling back to copy mode when the driver cannot (veth cannot).
    #[default]
    Auto,
    ZeroCopy,
    Copy,
}

/// How a socket ended up bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    ZeroCopy,
    Copy,
}

impl std::fmt::Display for BindMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindMode::ZeroCopy => "zero-copy",
            BindMode::Copy => "copy",
        })
    }
}

/// Why an AF_XDP step failed; each names the step and the interface.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS): {0}")]
    Unsupported(#[source] io::Error),
    #[error("creating an AF_XDP socket: {0} (needs root, or CAP_NET_RAW and CAP_NET_ADMIN)")]
    Socket(#[source] io::Error),
    #[error("allocating a {bytes}-byte UMEM: {source}")]
    Memory { bytes: usize, source: io::Error },
    #[error(
        "registering the UMEM: {0} (needs CAP_IPC_LOCK or a RLIMIT_MEMLOCK above the UMEM size)"
    )]
    Register(#[source] io::Error),
    #[error("setting up the {ring} ring of the socket for {interface} queue {queue}: {source}")]
    Ring { ring: &'static str, interface: String, queue: u32, source: io::Error },
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    #[error("binding an AF_XDP socket to {interface} queue {queue} ({mode}): {source}{hint}")]
    Bind {
        interface: String,
        queue: u32,
        mode: &'static str,
        source: io::Error,
        hint: &'static str,
    },
    #[error("bad UMEM configuration: {0}")]
    Config(&'static str),
}

/// Ownership of one UMEM chunk: only one `Chunk` per chunk exists (not `Clone`), and it is
/// consumed by whatever hands the chunk to the kernel.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk(u32);

impl Chunk {
    pub fn index(&self) -> u32 {
        self.0
    }
}

/// A frame in a chunk that userspace owns: `len` bytes at offset `head` of the chunk.
#[derive(Debug)]
pub struct Packet {
    pub chunk: Chunk,
    pub head: u32,
    pub len: u32,
}

/// Handle of a socket within its [`Umem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId(usize);

/// The kernel's drop counters for one socket (XDP_STATISTICS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdpStatistics {
    /// Dropped for other reasons (frame larger than a chunk, ...).
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// RX ring was full: userspace is not keeping up.
    pub rx_ring_full: u64,
    /// Fill ring had no chunk for a received frame.
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

// ---------------------------------------------------------------------------------------------
// Rings.

/// A slot type of a ring: UMEM addresses (fill, completion) or descriptors (RX, TX).
trait Slot: Sized {
    const SIZE: usize;
    fn read(map: &Mmap, offset: usize) -> Self;
    fn write(self, map: &Mmap, offset: usize);
}

impl Slot for u64 {
    const SIZE: usize = 8;
    fn read(map: &Mmap, offset: usize) -> u64 {
        map.read_u64(offset)
    }
    fn write(self, map: &Mmap, offset: usize) {
        map.write_u64(offset, self)
    }
}

/// `struct xdp_desc`.
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
}

impl Slot for Desc {
    const SIZE: usize = size_of::<libc::xdp_desc>();
    fn read(map: &Mmap, offset: usize) -> Desc {
        let d = map.read_desc(offset);
        Desc { addr: d.addr, len: d.len }
    }
    fn write(self, map: &Mmap, offset: usize) {
        map.write_desc(offset, libc::xdp_desc { addr: self.addr, len: self.len, options: 0 })
    }
}

/// One mapped ring and where its words are.
#[derive(Debug)]
struct RingMap<T> {
    map: Mmap,
    producer: usize,
    consumer: usize,
    flags: usize,
    desc: usize,
    size: u32,
    _slot: PhantomData<T>,
}

impl<T: Slot> RingMap<T> {
    fn new(
        fd: BorrowedFd<'_>,
        offsets: &libc::xdp_ring_offset,
        page: u64,
        size: u32,
    ) -> io::Result<Self> {
        let len = offsets.desc as usize + size as usize * T::SIZE;
        let map = Mmap::ring(fd, page, len)?;
        Ok(RingMap {
            map,
            producer: offsets.producer as usize,
            consumer: offsets.consumer as usize,
            flags: offsets.flags as usize,
            desc: offsets.desc as usize,
            size,
            _slot: PhantomData,
        })
    }

    fn slot(&self, index: u32) -> usize {
        self.desc + (index & (self.size - 1)) as usize * T::SIZE
    }

    fn needs_wakeup(&self) -> bool {
        // Relaxed: the flag is a hint; a stale read costs one extra or one late system call,
        // and the kernel re-checks its own state inside that call.
        self.map.atomic_u32(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// A ring we produce into (fill, TX).
#[derive(Debug)]
struct Producer<T> {
    ring: RingMap<T>,
    /// Our producer index, published at the end of each reservation.
    cached_prod: u32,
    /// The kernel's consumer index plus the ring size: we may write up to here.
    cached_limit: u32,
}

impl<T: Slot> Producer<T> {
    fn new(ring: RingMap<T>) -> Self {
        // At creation both indices are 0 and the ring is empty.
        let size = ring.size;
        Producer { ring, cached_prod: 0, cached_limit: size }
    }

    fn free(&mut self, wanted: u32) -> u32 {
        let mut free = self.cached_limit.wrapping_sub(self.cached_prod);
        if free < wanted {
            // (A), with acquire where the kernel relies on a control dependency: the slots up
            // to this index are no longer read by the kernel, which released them with (D)
            // (smp_store_release in __xskq_cons_release).
            let consumer = self.ring.map.atomic_u32(self.ring.consumer).load(Ordering::Acquire);
            self.cached_limit = consumer.wrapping_add(self.ring.size);
            free = self.cached_limit.wrapping_sub(self.cached_prod);
        }
        free
    }

    /// Reserves up to `wanted` slots. Whatever is pushed is published when the reservation
    /// ends.
    fn reserve(&mut self, wanted: u32) -> Reservation<'_, T> {
        let capacity = self.free(wanted).min(wanted);
        Reservation { producer: self, capacity, written: 0 }
    }

    /// Slots written and not yet consumed, mapped to UMEM addresses (for a closed socket).
    fn unconsumed(&self, addr: impl Fn(T) -> u64, out: &mut Vec<u64>) {
        // Acquire: as in `free`.
        let mut i = self.ring.map.atomic_u32(self.ring.consumer).load(Ordering::Acquire);
        while i != self.cached_prod {
            out.push(addr(T::read(&self.ring.map, self.ring.slot(i))));
            i = i.wrapping_add(1);
        }
    }

    /// Slots written but not yet consumed by the kernel (after a refresh).
    fn outstanding(&mut self) -> u32 {
        self.ring.size - self.free(self.ring.size)
    }
}

/// Slots reserved in a producer ring. `push` fills them in order; dropping the reservation
/// publishes the pushed slots with one release store.
struct Reservation<'r, T: Slot> {
    producer: &'r mut Producer<T>,
    capacity: u32,
    written: u32,
}

impl<T: Slot> Reservation<'_, T> {
    fn remaining(&self) -> u32 {
        self.capacity - self.written
    }

    /// Writes the next slot; gives the value back when the reservation is full.
    fn push(&mut self, value: T) -> Result<(), T> {
        if self.written == self.capacity {
            return Err(value);
        }
        let offset = self.producer.ring.slot(self.producer.cached_prod.wrapping_add(self.written));
        value.write(&self.producer.ring.map, offset);
        self.written += 1;
        Ok(())
    }
}

impl<T: Slot> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        if self.written == 0 {
            return;
        }
        let producer = &mut *self.producer;
        producer.cached_prod = producer.cached_prod.wrapping_add(self.written);
        // (B): the slots written above are visible to the kernel before the index that
        // publishes them; pairs with the kernel's (C), smp_load_acquire of the producer
        // index in __xskq_cons_peek.
        producer
            .ring
            .map
            .atomic_u32(producer.ring.producer)
            .store(producer.cached_prod, Ordering::Release);
    }
}

/// A ring we consume from (RX, completion).
#[derive(Debug)]
struct Consumer<T> {
    ring: RingMap<T>,
    cached_prod: u32,
    cached_cons: u32,
}

impl<T: Slot> Consumer<T> {
    fn new(ring: RingMap<T>) -> Self {
        Consumer { ring, cached_prod: 0, cached_cons: 0 }
    }

    /// Reads up to `max` slots into `each` and releases them to the kernel.
    fn drain(&mut self, max: u32, mut each: impl FnMut(T)) -> u32 {
        let mut available = self.cached_prod.wrapping_sub(self.cached_cons);
        if available < max {
            // (C): pairs with the kernel's (B), smp_store_release of the producer index in
            // __xskq_prod_submit; the slots below it are written before we read them.
            self.cached_prod = self.ring.map.atomic_u32(self.ring.producer).load(Ordering::Acquire);
            available = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        let n = available.min(max);
        for i in 0..n {
            each(T::read(&self.ring.map, self.ring.slot(self.cached_cons.wrapping_add(i))));
        }
        if n > 0 {
            self.cached_cons = self.cached_cons.wrapping_add(n);
            // (D): our reads of the slots happen before the kernel may overwrite them; pairs
            // with the kernel's (A), its read of the consumer index in xskq_prod_nb_free.
            self.ring.map.atomic_u32(self.ring.consumer).store(self.cached_cons, Ordering::Release);
        }
        n
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets.

/// One AF_XDP socket: bound to (interface, queue), with its four rings.
#[derive(Debug)]
pub struct XskSocket {
    // Rings are unmapped before the socket closes (field order).
    rx: Consumer<Desc>,
    tx: Producer<Desc>,
    fill: Producer<u64>,
    completion: Consumer<u64>,
    fd: OwnedFd,
    interface: String,
    ifindex: u32,
    queue: u32,
    mode: BindMode,
    /// Descriptors pushed to TX whose completion has not been reaped.
    tx_in_flight: u32,
}

impl XskSocket {
    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    pub fn mode(&self) -> BindMode {
        self.mode
    }

    /// The NAPI instance that feeds this socket, once a frame arrived through one; `None`
    /// where the driver has no per-queue NAPI (veth).
    pub fn napi_id(&self) -> Option<u32> {
        const SO_INCOMING_NAPI_ID: i32 = 56;
        sys::getsockopt::<u32>(self.fd.as_fd(), libc::SOL_SOCKET, SO_INCOMING_NAPI_ID)
            .ok()
            .map(|(id, _)| id)
            .filter(|&id| id != 0)
    }

    /// Preferred busy polling (SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET): the
    /// socket's own wake-up calls run the driver's NAPI instead of waiting for its softirq.
    /// Only meaningful with a NAPI id.
    pub fn enable_busy_poll(&self, usecs: u32, budget: u32) -> io::Result<()> {
        const SO_BUSY_POLL: i32 = 46;
        const SO_PREFER_BUSY_POLL: i32 = 69;
        const SO_BUSY_POLL_BUDGET: i32 = 70;
        let fd = self.fd.as_fd();
        sys::setsockopt(fd, libc::SOL_SOCKET, SO_PREFER_BUSY_POLL, &1u32)?;
        sys::setsockopt(fd, libc::SOL_SOCKET, SO_BUSY_POLL, &usecs)?;
        sys::setsockopt(fd, libc::SOL_SOCKET, SO_BUSY_POLL_BUDGET, &budget)
    }

    /// The kernel's counters for this socket.
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        let (s, _) = sys::getsockopt::<libc::xdp_statistics>(
            self.fd.as_fd(),
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
        )?;
        Ok(XdpStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What [`Umem::transmit`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// Descriptors put on the TX ring.
    pub queued: u32,
    /// Their frames' bytes.
    pub bytes: u64,
    /// The kernel refused the wake-up because the interface is gone or down.
    pub interface_down: bool,
}

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
        if let Some(owner) = shared {
            // The kernel refuses mode flags with XDP_SHARED_UMEM: the mode is the UMEM's.
            sys::xsk_bind(fd.as_fd(), ifindex, queue, libc::XDP_SHARED_UMEM, Some(owner))
                .map_err(|e| bind_err("shared", e))?;
        } else {
            let zero_copy =
                || sys::xsk_bind(fd.as_fd(), ifindex, queue, libc::XDP_ZEROCOPY | wakeup, None);
            let copy = || sys::xsk_bind(fd.as_fd(), ifindex, queue, libc::XDP_COPY | wakeup, None);
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
                    out.push(Packet { chunk: Chunk(index as u32), head: head as u32, len: d.len });
                }
                None => *invalid += 1,
            }
        });
        (out.len() - before) as u32
    }

    /// Lends the bytes of each packet's chunk, in order, for the engine to rewrite in place.
    pub fn lend<'a>(
        &'a mut self,
        packets: &[Packet],
        scratch: &mut Vec<u32>,
        each: impl FnMut(&'a mut [u8]),
    ) {
        scratch.clear();
        scratch.extend(packets.iter().map(|p| p.chunk.0));
        self.area.lend(scratch, each);
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
                outcome.bytes += u64::from(packet.len);
                self.state[packet.chunk.0 as usize] = KERNEL;
                let addr = u64::from(packet.chunk.0) * chunk_size + u64::from(packet.head);
                let _ = reservation.push(Desc { addr, len: packet.len });
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
