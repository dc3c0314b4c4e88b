//! The host interface: a multi-queue TUN device (`podlane0`) in the node's network namespace,
//! one queue per worker. The node's kernel routes the cluster's pod CIDRs into it, and a
//! worker reads those IP packets from its queue; what the dataplane hands to the node, it
//! writes into its queue, and the kernel receives it as if it arrived on that interface.
//!
//! Every packet carries a virtio-net header ([`VnetHeader`]) and the device's offloads are on
//! (checksum, TSO for IPv4 and IPv6, with ECN), as on a TAP pod: the node's kernel hands over
//! TCP super-packets of up to 64 KiB with a partial checksum (its own connections to pods, a
//! pod's traffic to a Service after the DNAT) and takes them the same way, one system call per
//! super-packet instead of per segment.
//!
//! TUN rather than TAP: the host path is a route into the dataplane, an IP link with no
//! neighbours to resolve on either side and no MAC address to invent. The device persists
//! when the daemon exits (see `daemon::host`): routes through a TUN device no process reads
//! drop what they carry, so a stopped dataplane leaks nothing onto the underlay.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::sys;
use super::vnet::{VnetHeader, write_with_header};

/// The offloads the node's kernel may use towards the dataplane (the same as a TAP pod's).
const OFFLOADS: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Why a queue of the host interface could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("opening /dev/net/tun: {0} (the kernel needs CONFIG_TUN; the daemon CAP_NET_ADMIN)")]
    Open(#[source] io::Error),
    #[error(
        "attaching a queue of the TUN device {name}: {source} (a device of that name that is not \
         a multi-queue TUN device is in the way: choose another --host-interface)"
    )]
    Attach { name: String, source: io::Error },
    #[error("making the TUN device {name} persistent: {source}")]
    Persist { name: String, source: io::Error },
    #[error("setting the virtio-net header and offloads of the TUN device {name}: {source}")]
    Offloads { name: String, source: io::Error },
}

/// One queue of the host interface.
#[derive(Debug)]
pub struct TunQueue {
    file: File,
    name: String,
}

impl TunQueue {
    /// Attaches a new queue to the TUN device `name`, creating the device if needed, with
    /// virtio-net headers and the offloads on (an existing device, left by an earlier run,
    /// takes them too). Non-blocking: reads and writes never wait.
    pub fn attach(name: &str) -> Result<TunQueue, TunError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TunError::Open)?;
        sys::tun_attach(file.as_fd(), name)
            .map_err(|source| TunError::Attach { name: name.to_owned(), source })?;
        let offloads = |source| TunError::Offloads { name: name.to_owned(), source };
        sys::tun_set_vnet_header_len(file.as_fd(), VnetHeader::LEN as i32).map_err(offloads)?;
        sys::tun_set_offload(file.as_fd(), OFFLOADS).map_err(offloads)?;
        Ok(TunQueue { file, name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the device stays when its last queue closes.
    pub fn set_persistent(&self, persist: bool) -> Result<(), TunError> {
        sys::tun_set_persist(self.file.as_fd(), persist)
            .map_err(|source| TunError::Persist { name: self.name.clone(), source })
    }

    /// Reads one packet into `buffer`, its virtio-net header first: the bytes read (header
    /// included), or `None` when none waits. A packet longer than `buffer` arrives cut to its
    /// length.
    pub fn receive(&mut self, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buffer) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one packet with its header (one writev); `false` when the kernel's queue for
    /// it is full.
    pub fn send(&mut self, header: VnetHeader, packet: &[u8]) -> io::Result<bool> {
        write_with_header(&mut self.file, &header.to_bytes(), packet)
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
