//! AF_XDP sockets over one shared UMEM, in safe Rust over [`super::sys`]: `ring` (the four
//! mapped rings), `socket` (one socket and what it reports), `umem` (the area, chunk
//! ownership, and every move of a chunk between userspace and the rings).
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

mod ring;
mod socket;
mod umem;

use std::io;

use crate::engine::Span;

pub use socket::XskSocket;
pub use umem::Umem;

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

/// A frame in a chunk that userspace owns: the bytes `span` names in the chunk (the engine's
/// own [`Span`], which it moves when it encapsulates or decapsulates).
#[derive(Debug)]
pub struct Packet {
    pub chunk: Chunk,
    pub span: Span,
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
