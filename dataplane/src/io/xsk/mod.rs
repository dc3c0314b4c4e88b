//! AF_XDP sockets over a shared UMEM, sound by construction: the only module besides
//! [`super::sys`] allowed `unsafe`, because it is where memory shared with the kernel is
//! touched. Everything it exports is safe to use however it is called.
//!
//! * [`mem`] — the mappings (UMEM area, rings); its raw accessors are `unsafe fn`s.
//! * [`ring`] — the ring protocol: reservations that publish on drop, batches that release on
//!   drop, total index arithmetic, the kernel's memory ordering.
//! * [`umem`] — who owns each chunk, and every move of a chunk between userspace and the
//!   rings: fill, receive, lend, transmit, complete, and taking chunks back from a released
//!   socket.
//! * [`socket`] — creating and binding a socket against a [`UmemHandle`] (on any thread:
//!   binding is slow), what can be asked of it.
//! * `memory` (tests) — an in-memory kernel: the kernel's side of a socket's rings, so the
//!   rings, the UMEM and the worker above them run without root.
//!
//! A [`Umem`] is one memory area divided into equal chunks, plus the sockets that use it.
//! The first socket registers the area with the kernel; every later one binds with
//! `XDP_SHARED_UMEM` and gets its own fill and completion rings. So a frame received on a
//! pod's veth can be put on the uplink's TX ring as it is, without a userspace copy.
//!
//! Ownership of chunks is explicit and checked. Each chunk is in one state: free (on the
//! UMEM's free list), user (exactly one [`Chunk`] token exists for it), on socket S's fill
//! ring, or on socket S's TX ring. A token cannot be copied or made outside this module, and
//! carries its UMEM's id: receiving or reaping a completion produces one, filling or
//! transmitting consumes one. Only a token lends a chunk's bytes. A descriptor from the
//! kernel that names a chunk not in the state it must be in (an RX descriptor for a chunk not
//! on that socket's fill ring, a completion for a chunk not on its TX ring, an address outside
//! the UMEM) is counted and ignored, so neither a bug here nor a misbehaving kernel can make
//! two frames alias.
//!
//! Frames start `XDP_PACKET_HEADROOM` (256) bytes into their chunk in both copy and
//! zero-copy mode, plus the UMEM headroom we register ([`UmemConfig::headroom`]); that is the
//! room the engine prepends the outer headers into (50 bytes, 70 over IPv6).

mod mem;
#[cfg(test)]
pub(crate) mod memory;
mod ring;
mod socket;
mod umem;

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::engine::Span;

pub use socket::XskSocket;
pub use umem::{Released, Umem};

/// The kernel's headroom in front of every received frame (include/uapi/linux/bpf.h).
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// Sizes of the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemConfig {
    /// Number of chunks.
    pub chunks: u32,
    /// Bytes per chunk: a power of two from 2048 to 4096 (the page size, the kernel's limit
    /// for a UMEM not in huge pages). A frame fits when
    /// `headroom + 256 + frame length <= chunk_size`.
    pub chunk_size: u32,
    /// Extra headroom in front of received frames, on top of the kernel's 256 bytes.
    pub headroom: u32,
    /// Frames longer than a chunk holds (jumbo frames) are received and sent as several
    /// descriptors (`XDP_USE_SG`); without it the kernel drops them.
    pub multi_buffer: bool,
}

impl Default for UmemConfig {
    /// 16,384 chunks of 2 KiB: 32 MiB. After the kernel's 256-byte headroom (where the outer
    /// headers are prepended) a chunk holds a 1,792-byte frame: MTU 1500 plus headers.
    fn default() -> Self {
        UmemConfig { chunks: 16_384, chunk_size: 2048, headroom: 0, multi_buffer: false }
    }
}

impl UmemConfig {
    /// The longest frame a chunk holds.
    pub fn max_frame(&self) -> u32 {
        self.chunk_size.saturating_sub(XDP_PACKET_HEADROOM + self.headroom)
    }

    /// The configuration for frames of up to `frame` bytes, with `chunks` chunks: 2 KiB chunks
    /// for an MTU of 1500; beyond, 4 KiB chunks (a page, the largest a UMEM takes) with
    /// frames in several of them where they need it. Multi-buffer from the first byte over
    /// 2 KiB, not only over 4 KiB: drivers (veth among them) split a frame into buffers well
    /// before it reaches a page, and a socket without it would lose those frames.
    pub fn for_frames(frame: u32, chunks: u32) -> UmemConfig {
        let small = UmemConfig { chunks, ..UmemConfig::default() };
        if frame <= small.max_frame() {
            return small;
        }
        UmemConfig { chunk_size: 4096, multi_buffer: true, ..small }
    }
}

/// Ring sizes of one socket (powers of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSizes {
    pub rx: u32,
    pub tx: u32,
    pub fill: u32,
    pub completion: u32,
}

impl RingSizes {
    /// All four rings of `size` slots.
    pub fn all(size: u32) -> RingSizes {
        RingSizes { rx: size, tx: size, fill: size, completion: size }
    }
}

impl Default for RingSizes {
    fn default() -> Self {
        RingSizes::all(2048)
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

/// Identity of a UMEM within the process (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UmemId(u32);

impl UmemId {
    fn next() -> UmemId {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        UmemId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What is needed to bind sockets to a UMEM from another thread: its area and sizes, and a
/// descriptor of each socket bound to it (the kernel wants a bound socket of the UMEM to
/// share it). Shared by the [`Umem`] and whoever binds its sockets.
#[derive(Debug)]
pub struct UmemHandle {
    id: UmemId,
    config: UmemConfig,
    area: std::sync::Arc<mem::SharedMemory>,
    /// (serial, a duplicate of its descriptor) of every live kernel socket of this UMEM.
    anchors: Mutex<Vec<(u32, OwnedFd)>>,
    serials: AtomicU32,
}

impl UmemHandle {
    pub fn id(&self) -> UmemId {
        self.id
    }

    pub fn config(&self) -> &UmemConfig {
        &self.config
    }

    /// A serial for a new socket, never 0 and below 2^30 (chunk states keep it in 30 bits;
    /// a UMEM would need a billion sockets before one came back).
    fn next_serial(&self) -> u32 {
        loop {
            let serial = self.serials.fetch_add(1, Ordering::Relaxed) & umem::SERIAL_MASK;
            if serial != 0 {
                return serial;
            }
        }
    }
}

/// Ownership of one UMEM chunk: only one `Chunk` per chunk exists (not `Clone`, made only
/// here), tied to its UMEM, and consumed by whatever hands the chunk to the kernel or back
/// to the free list.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    umem: UmemId,
    index: u32,
}

impl Chunk {
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn umem(&self) -> UmemId {
        self.umem
    }
}

/// A frame in a chunk that userspace owns: the bytes `span` names in the chunk (the engine's
/// own [`Span`], which it moves when it encapsulates or decapsulates). A frame longer than a
/// chunk (jumbo, with [`UmemConfig::multi_buffer`]) is several packets in a row, each but the
/// last marked `continues`, as the kernel's descriptors are (`XDP_PKT_CONTD`).
#[derive(Debug)]
pub struct Packet {
    pub chunk: Chunk,
    pub span: Span,
    /// The frame goes on in the next packet.
    pub continues: bool,
}

impl Packet {
    /// A whole frame in one chunk.
    pub fn new(chunk: Chunk, span: Span) -> Packet {
        Packet { chunk, span, continues: false }
    }
}

/// Handle of a socket within its [`Umem`]: its slot there and its serial, so a handle kept
/// after its socket went names nothing rather than a newcomer in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    slot: u32,
    serial: u32,
}

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

/// What [`Umem::transmit`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// Descriptors put on the TX ring.
    pub queued: u32,
    /// Their frames' bytes.
    pub bytes: u64,
    /// The kernel refused the wake-up because the interface is gone or down.
    pub interface_down: bool,
    /// Descriptors left on the TX ring, not yet taken by the kernel.
    pub backlog: u32,
}
