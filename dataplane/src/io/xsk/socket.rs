//! One AF_XDP socket: its file descriptor, its rings, and what can be asked of it (NAPI id,
//! busy polling, the kernel's counters). Sockets are created by [`super::Umem::open`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::ring::{Consumer, Desc, Producer};
use super::{BindMode, XdpStatistics};
use crate::io::sys;

/// One AF_XDP socket: bound to (interface, queue), with its four rings.
#[derive(Debug)]
pub struct XskSocket {
    // Rings are unmapped before the socket closes (field order).
    pub(super) rx: Consumer<Desc>,
    pub(super) tx: Producer<Desc>,
    pub(super) fill: Producer<u64>,
    pub(super) completion: Consumer<u64>,
    pub(super) fd: OwnedFd,
    pub(super) interface: String,
    pub(super) ifindex: u32,
    pub(super) queue: u32,
    pub(super) mode: BindMode,
    /// Descriptors pushed to TX whose completion has not been reaped.
    pub(super) tx_in_flight: u32,
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
