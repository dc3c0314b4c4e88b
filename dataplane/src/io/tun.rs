//! The host interface: a multi-queue TUN device (`podlane0`) in the node's network namespace,
//! one queue per worker. The node's kernel routes the cluster's pod CIDRs into it, and a
//! worker reads those IP packets from its queue; what the dataplane hands to the node, it
//! writes into its queue, and the kernel receives it as if it arrived on that interface.
//!
//! TUN rather than TAP: the host path is a route into the dataplane, an IP link with no
//! neighbours to resolve on either side and no MAC address to invent. The device persists
//! when the daemon exits (see `daemon::host`): routes through a TUN device no process reads
//! drop what they carry, so a stopped dataplane leaks nothing onto the underlay.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::sys;

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
}

/// One queue of the host interface.
#[derive(Debug)]
pub struct TunQueue {
    file: File,
    name: String,
}

impl TunQueue {
    /// Attaches a new queue to the TUN device `name`, creating the device if needed.
    /// Non-blocking: reads and writes never wait.
    pub fn attach(name: &str) -> Result<TunQueue, TunError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TunError::Open)?;
        sys::tun_attach(file.as_fd(), name)
            .map_err(|source| TunError::Attach { name: name.to_owned(), source })?;
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

    /// Reads one packet into `buffer`: its length, or `None` when none waits. A packet longer
    /// than `buffer` arrives cut to its length.
    pub fn receive(&mut self, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buffer) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one packet; `false` when the kernel's queue for it is full.
    pub fn send(&mut self, packet: &[u8]) -> io::Result<bool> {
        match self.file.write(packet) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
