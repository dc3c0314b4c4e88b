//! One AF_XDP socket: created and bound on any thread against a [`UmemHandle`], then adopted
//! by its [`super::Umem`], which alone moves chunks through its rings. Also what can be asked
//! of a socket (NAPI id, busy polling, the kernel's counters) and the wake-up calls.
//!
//! Binding is slow (a few milliseconds: the kernel waits for an RCU grace period), and so is
//! releasing a socket; that is why both can happen away from the worker that uses the
//! socket, which only adopts and retires it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::mem::SharedMemory;
use super::ring::{Consumer, Desc, Producer, Ring, RingLayout, Slot};
use super::{BindMode, BindPreference, RingSizes, UmemHandle, UmemId, XdpStatistics, XskError};
use crate::io::sys;

/// What the socket's rings are shared with.
#[derive(Debug)]
pub(super) enum Backend {
    /// The kernel, through this socket's file descriptor.
    Kernel(OwnedFd),
    /// The in-memory kernel of the tests ([`super::memory`]), which has no descriptor.
    #[cfg(test)]
    Memory,
}

/// One AF_XDP socket bound to (interface, queue), with its four rings.
#[derive(Debug)]
pub struct XskSocket {
    pub(super) rx: Consumer<Desc>,
    pub(super) tx: Producer<Desc>,
    pub(super) fill: Producer<u64>,
    pub(super) completion: Consumer<u64>,
    pub(super) backend: Backend,
    /// The UMEM it was bound to, and its serial there (never reused within the UMEM): chunk
    /// states name the socket by serial.
    pub(super) umem: UmemId,
    pub(super) serial: u32,
    pub(super) handle: Arc<UmemHandle>,
    pub(super) interface: String,
    pub(super) ifindex: u32,
    pub(super) queue: u32,
    pub(super) mode: BindMode,
    /// Descriptors pushed to TX whose completion has not been reaped.
    pub(super) tx_in_flight: u32,
}

impl XskSocket {
    /// Creates a socket bound to `queue` of `interface` over the UMEM of `handle`. The first
    /// socket of a UMEM registers its area; later ones share it (`XDP_SHARED_UMEM`) and
    /// inherit its copy or zero-copy mode.
    pub fn bind(
        handle: &Arc<UmemHandle>,
        interface: &str,
        queue: u32,
        rings: RingSizes,
        preference: BindPreference,
    ) -> Result<XskSocket, XskError> {
        let ifindex = sys::ifindex(interface)
            .ok_or_else(|| XskError::NoSuchInterface(interface.to_owned()))?;
        let ring_err = |ring: &'static str| {
            let interface = interface.to_owned();
            move |source| XskError::Ring { ring, interface, queue, source }
        };
        for size in [rings.rx, rings.tx, rings.fill, rings.completion] {
            if !size.is_power_of_two() {
                return Err(XskError::Config("ring sizes must be powers of two"));
            }
        }
        let fd = sys::xsk_socket().map_err(|e| match e.raw_os_error() {
            Some(libc::EAFNOSUPPORT) => XskError::Unsupported(e),
            _ => XskError::Socket(e),
        })?;
        // Held for the whole bind: the anchor (a bound socket of this UMEM, if any) must stay
        // bound until ours is, and a concurrent first bind must not register twice.
        let mut anchors = handle.anchors.lock().unwrap_or_else(|e| e.into_inner());
        let anchor = anchors.first().map(|(_, fd)| fd.as_fd());
        if anchor.is_none() {
            let area = &handle.area;
            let reg = libc::xdp_umem_reg {
                addr: area.address(),
                len: area.len() as u64,
                chunk_size: handle.config.chunk_size,
                headroom: handle.config.headroom,
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
            sys::setsockopt(fd.as_fd(), libc::SOL_XDP, name, &size).map_err(ring_err("setup"))?;
        }
        let (off, _) = sys::getsockopt::<libc::xdp_mmap_offsets>(
            fd.as_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
        )
        .map_err(ring_err("offsets"))?;
        let rx = map_ring(fd.as_fd(), &off.rx, libc::XDP_PGOFF_RX_RING as u64, rings.rx)
            .map_err(ring_err("RX"))?;
        let tx = map_ring(fd.as_fd(), &off.tx, libc::XDP_PGOFF_TX_RING as u64, rings.tx)
            .map_err(ring_err("TX"))?;
        let fill = map_ring(fd.as_fd(), &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING, rings.fill)
            .map_err(ring_err("fill"))?;
        let completion =
            map_ring(fd.as_fd(), &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING, rings.completion)
                .map_err(ring_err("completion"))?;

        let bind_err = |mode: &'static str, source: io::Error| {
            let hint = match source.raw_os_error() {
                Some(libc::EBUSY) => " (another AF_XDP socket is bound to that queue)",
                Some(libc::EINVAL) if mode == "shared" => {
                    " (a UMEM is shared only by sockets of one mode, and this one's is \
                     zero-copy: the interface cannot join it)"
                }
                Some(libc::EOPNOTSUPP) => " (the driver has no AF_XDP zero-copy support)",
                _ => "",
            };
            XskError::Bind { interface: interface.to_owned(), queue, mode, source, hint }
        };
        let mut flags = libc::XDP_USE_NEED_WAKEUP;
        if handle.config.multi_buffer {
            // The UMEM takes it from its first socket; those that share it inherit it.
            flags |= libc::XDP_USE_SG;
        }
        let bind = |flags, owner| {
            bind_when_free(|| sys::xsk_bind(fd.as_fd(), ifindex, queue, flags, owner))
        };
        if let Some(owner) = anchor {
            // The kernel refuses mode flags with XDP_SHARED_UMEM: the mode is the UMEM's.
            bind(libc::XDP_SHARED_UMEM, Some(owner)).map_err(|e| bind_err("shared", e))?;
        } else {
            let zero_copy = || bind(libc::XDP_ZEROCOPY | flags, None);
            let copy = || bind(libc::XDP_COPY | flags, None);
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
        let serial = handle.next_serial();
        let anchor = fd.try_clone().map_err(ring_err("anchor"))?;
        anchors.push((serial, anchor));
        drop(anchors);
        Ok(XskSocket {
            rx: Consumer::new(rx),
            tx: Producer::new(tx),
            fill: Producer::new(fill),
            completion: Consumer::new(completion),
            backend: Backend::Kernel(fd),
            umem: handle.id,
            serial,
            handle: handle.clone(),
            interface: interface.to_owned(),
            ifindex,
            queue,
            mode,
            tx_in_flight: 0,
        })
    }

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

    /// The UMEM this socket belongs to.
    pub fn umem(&self) -> UmemId {
        self.umem
    }

    /// The socket's descriptor (for poll(2) and the XSKMAP); `None` for an in-memory socket.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.backend {
            Backend::Kernel(fd) => Some(fd.as_fd()),
            #[cfg(test)]
            Backend::Memory => None,
        }
    }

    /// The NAPI instance that feeds this socket, once a frame arrived through one; `None`
    /// where the driver has no per-queue NAPI (veth).
    pub fn napi_id(&self) -> Option<u32> {
        const SO_INCOMING_NAPI_ID: i32 = 56;
        sys::getsockopt::<u32>(self.fd()?, libc::SOL_SOCKET, SO_INCOMING_NAPI_ID)
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
        let Some(fd) = self.fd() else { return Ok(()) };
        sys::setsockopt(fd, libc::SOL_SOCKET, SO_PREFER_BUSY_POLL, &1u32)?;
        sys::setsockopt(fd, libc::SOL_SOCKET, SO_BUSY_POLL, &usecs)?;
        sys::setsockopt(fd, libc::SOL_SOCKET, SO_BUSY_POLL_BUDGET, &budget)
    }

    /// The kernel's counters for this socket (zero for an in-memory one).
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        let Some(fd) = self.fd() else { return Ok(XdpStatistics::default()) };
        let (s, _) =
            sys::getsockopt::<libc::xdp_statistics>(fd, libc::SOL_XDP, libc::XDP_STATISTICS)?;
        Ok(XdpStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// Asks the kernel to process the TX ring (copy mode transmits within this call).
    pub(super) fn kick_tx(&self) -> io::Result<()> {
        match self.fd() {
            Some(fd) => sys::xsk_kick_tx(fd),
            None => Ok(()),
        }
    }

    /// Asks a zero-copy driver to look at the fill ring again.
    pub(super) fn kick_rx(&self) {
        if let Some(fd) = self.fd() {
            let _ = sys::xsk_kick_rx(fd);
        }
    }
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        // The anchor copy of the descriptor goes too, or the socket would stay bound.
        let mut anchors = self.handle.anchors.lock().unwrap_or_else(|e| e.into_inner());
        anchors.retain(|(serial, _)| *serial != self.serial);
    }
}

/// Maps one of a socket's rings where the kernel's offsets say its words are.
fn map_ring<T: Slot>(
    fd: BorrowedFd<'_>,
    offsets: &libc::xdp_ring_offset,
    page_offset: u64,
    size: u32,
) -> io::Result<Ring<T>> {
    let layout = RingLayout::from_kernel(offsets);
    let memory = SharedMemory::ring(fd, page_offset, layout.bytes::<T>(size))?;
    Ok(Ring::new(Arc::new(memory), layout, size))
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
