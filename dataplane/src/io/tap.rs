//! A pod's TAP interface: the pod edge that keeps large packets whole.
//!
//! The pod's interface is a TAP device inside the pod's network namespace (created there,
//! persistent, by the CNI plugin or the test that wires the pod); the dataplane attaches a
//! queue to it from its own namespace, and from then on reads the frames the pod sends and
//! writes the frames it receives. Each frame is preceded by a virtio-net header
//! (`IFF_VNET_HDR`), and the device's offloads are on (checksum, TSO for IPv4 and IPv6, with
//! ECN): the pod's kernel hands over TCP super-packets of up to 64 KiB with a partial
//! checksum and the segment size to cut them at, and takes the same from the dataplane, which
//! is what makes pod TCP cheap (docs/bench.md, `podlane-bench tcp`). On a veth with an XDP
//! program the peer loses GSO and every segment is a frame of its own.
//!
//! While no queue is attached (the dataplane stopped), the device has no carrier and drops
//! what the pod sends: it fails closed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::sys;
use super::vnet::{VnetHeader, write_with_header};

/// The offloads a TAP pod's kernel may use towards the dataplane.
const OFFLOADS: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Why a pod's TAP device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("opening the network namespace {path}: {source}")]
    Namespace { path: PathBuf, source: io::Error },
    #[error("no interface named {name:?} in the network namespace {netns}")]
    NoInterface { name: String, netns: PathBuf },
    #[error(
        "attaching to {name:?} in {netns}: {source} (it must be a TAP device, created \
         persistent, e.g. `ip tuntap add dev {name} mode tap`, and not attached elsewhere)"
    )]
    Attach { name: String, netns: PathBuf, source: io::Error },
    #[error("setting up the TAP queue of {name:?}: {source}")]
    Setup { name: String, source: io::Error },
    #[error("the thread entering the pod's network namespace failed")]
    Thread,
}

/// `struct virtio_net_hdr_v1_hash_tunnel` (include/uapi/linux/virtio_net.h, Linux 6.17): the
/// header that asks the kernel to segment a UDP-tunnelled TCP super-packet (GSO over UDP
/// tunnels). A TAP queue whose header length is set to its 24 bytes takes it on write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelGsoHeader {
    /// The inner packet's GSO type ([`VnetHeader::GSO_TCPV4`] or `GSO_TCPV6`, with
    /// [`VnetHeader::GSO_ECN`] when it carries CWR).
    pub inner_gso_type: u8,
    pub gso_size: u16,
    /// Offsets from the frame's start: the inner TCP header (its checksum is left partial),
    /// the outer UDP header and the inner IP header.
    pub csum_start: u16,
    pub outer_udp: u16,
    pub inner_ip: u16,
}

impl TunnelGsoHeader {
    pub const LEN: usize = 24;
    /// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`: the outer header is IPv4.
    const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;

    /// The header's bytes. The offsets are little-endian by definition; the rest is in the
    /// host's order, as [`VnetHeader`]'s.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = VnetHeader::NEEDS_CSUM;
        b[1] = Self::GSO_UDP_TUNNEL_IPV4 | self.inner_gso_type;
        // hdr_len 0: the kernel takes it from the checksum's position.
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&16u16.to_ne_bytes());
        b[20..22].copy_from_slice(&self.outer_udp.to_le_bytes());
        b[22..24].copy_from_slice(&self.inner_ip.to_le_bytes());
        b
    }
}

/// A queue of the node's tunnel-GSO interface: a multi-queue TAP in the dataplane's own
/// namespace, created with the first queue and gone with the last (it is not persistent).
/// What is written to it is received by the node's kernel as if it arrived on that interface,
/// and forwarded out of the uplink, segmented on the way ([`TunnelGsoHeader`]).
#[derive(Debug)]
pub struct TunnelQueue {
    file: File,
}

impl TunnelQueue {
    /// Attaches a new queue to the multi-queue TAP `name`, creating it if needed.
    pub fn attach(name: &str) -> Result<TunnelQueue, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::Setup { name: name.to_owned(), source })?;
        let attach = |source| TapError::Attach {
            name: name.to_owned(),
            netns: PathBuf::from("the dataplane's namespace"),
            source,
        };
        sys::tap_attach(file.as_fd(), name, true).map_err(attach)?;
        sys::tun_set_vnet_header_len(file.as_fd(), TunnelGsoHeader::LEN as i32)
            .map_err(|source| TapError::Setup { name: name.to_owned(), source })?;
        Ok(TunnelQueue { file })
    }

    /// Writes an encapsulated super-packet for the kernel to segment; `false` when the
    /// device's queue is full.
    pub fn send(&mut self, header: TunnelGsoHeader, frame: &[u8]) -> io::Result<bool> {
        write_with_header(&mut self.file, &header.to_bytes(), frame)
    }
}

/// The dataplane's queue of one pod's TAP device.
#[derive(Debug)]
pub struct TapQueue {
    file: File,
    name: String,
}

impl TapQueue {
    /// Attaches a queue to the existing TAP device `name` in the network namespace whose
    /// file is `netns` (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`), with virtio-net
    /// headers and the offloads on. The namespace is entered on a short-lived thread of its
    /// own, so no other thread of the process changes namespace. Non-blocking.
    pub fn open_in(netns: &Path, name: &str) -> Result<TapQueue, TapError> {
        let namespace = File::open(netns)
            .map_err(|source| TapError::Namespace { path: netns.to_owned(), source })?;
        let (netns_path, tap_name) = (netns.to_owned(), name.to_owned());
        let opened = std::thread::Builder::new()
            .name("podlane-tap-open".into())
            .spawn(move || {
                sys::enter_network_namespace(namespace.as_fd())
                    .map_err(|source| TapError::Namespace { path: netns_path.clone(), source })?;
                attach_here(&netns_path, &tap_name)
            })
            .map_err(|_| TapError::Thread)?
            .join()
            .map_err(|_| TapError::Thread)??;
        Ok(TapQueue { file: opened, name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame into `buffer`, its virtio-net header first: the bytes read (header
    /// included), or `None` when nothing waits. A frame longer than the buffer arrives cut
    /// (the buffer is sized for the largest super-packet, so that means a broken device).
    pub fn receive(&mut self, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buffer) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame with its header (one writev); `false` when the device's queue is full.
    pub fn send(&mut self, header: VnetHeader, frame: &[u8]) -> io::Result<bool> {
        write_with_header(&mut self.file, &header.to_bytes(), frame)
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Creates the persistent TAP device `name` in the calling thread's namespace (what wires a
/// TAP pod: the device then waits, without carrier, for the dataplane to attach a queue).
pub fn create_persistent(name: &str) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    sys::tap_attach(file.as_fd(), name, false)?;
    sys::tun_set_persist(file.as_fd(), true)
}

/// Attaches to `name` in the calling thread's namespace, which must hold it: TUNSETIFF on a
/// name that does not exist would create a device, and the pod must get no interface the
/// dataplane made.
fn attach_here(netns: &Path, name: &str) -> Result<File, TapError> {
    if sys::ifindex(name).is_none() {
        return Err(TapError::NoInterface { name: name.to_owned(), netns: netns.to_owned() });
    }
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
    };
    let attach_error =
        |source| TapError::Attach { name: name.to_owned(), netns: netns.to_owned(), source };
    let file = open().map_err(attach_error)?;
    // A single-queue device refuses IFF_MULTI_QUEUE and a multi-queue one its absence.
    let file = match sys::tap_attach(file.as_fd(), name, false) {
        Ok(()) => file,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let file = open().map_err(attach_error)?;
            sys::tap_attach(file.as_fd(), name, true).map_err(|_| attach_error(e))?;
            file
        }
        Err(e) => return Err(attach_error(e)),
    };
    let setup = |source| TapError::Setup { name: name.to_owned(), source };
    sys::tun_set_vnet_header_len(file.as_fd(), VnetHeader::LEN as i32).map_err(setup)?;
    sys::tun_set_offload(file.as_fd(), OFFLOADS).map_err(setup)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_header_is_laid_out_as_the_kernel_reads_it() {
        let h = TunnelGsoHeader {
            inner_gso_type: VnetHeader::GSO_TCPV4,
            gso_size: 1398,
            csum_start: 84,
            outer_udp: 34,
            inner_ip: 64,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 1, "NEEDS_CSUM");
        assert_eq!(b[1], 0x21, "UDP tunnel over IPv4, inner TCPv4");
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 1398);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 84);
        assert_eq!(u16::from_ne_bytes([b[8], b[9]]), 16);
        assert_eq!(&b[10..20], &[0; 10], "num_buffers, hash: unused");
        assert_eq!(&b[20..24], &[34, 0, 64, 0]);
    }
}
