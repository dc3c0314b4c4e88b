//! The virtio-net header (`IFF_VNET_HDR`) that precedes every frame read from or written to a
//! TAP pod's queue and every packet of the host interface's queues: how the kernel and the
//! dataplane hand each other a TCP super-packet (the segment size to cut it at) or a checksum
//! left for the receiver to trust (`NEEDS_CSUM`), instead of one segment per system call with
//! every checksum summed.

use std::fs::File;
use std::io::{self, IoSlice, Write};

/// `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h), in the host's byte order (the
/// TAP device's default on a little-endian host, and the only order on a big-endian one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers of a GSO packet (to the end of its TCP header). This and
    /// `csum_start` count from the frame's start: the Ethernet header on a TAP, the IP header
    /// on the host interface (a TUN).
    pub header_len: u16,
    /// Payload bytes per segment of a GSO packet (the MSS).
    pub gso_size: u16,
    /// Where the checksum a partial packet leaves undone starts, and its field's offset from
    /// there (`flags & NEEDS_CSUM`).
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    pub const LEN: usize = 10;
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` holds only
    /// the pseudo-header sum.
    pub const NEEDS_CSUM: u8 = 1;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_TCPV6: u8 = 4;
    /// Flag on `gso_type`: the packet carries CWR, to be kept on the first segment only.
    pub const GSO_ECN: u8 = 0x80;

    /// A header saying nothing: a whole frame with complete checksums.
    pub const PLAIN: VnetHeader = VnetHeader {
        flags: 0,
        gso_type: 0,
        header_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// A whole frame (no GSO) whose checksum at `csum_start + csum_offset` holds only the
    /// pseudo-header sum: the receiving kernel trusts it as CHECKSUM_PARTIAL.
    pub const fn partial_checksum(csum_start: u16, csum_offset: u16) -> VnetHeader {
        VnetHeader { flags: Self::NEEDS_CSUM, csum_start, csum_offset, ..Self::PLAIN }
    }

    /// Whether the frame's transport checksum is left partial (`NEEDS_CSUM`).
    pub fn needs_checksum(&self) -> bool {
        self.flags & Self::NEEDS_CSUM != 0
    }

    /// The header with its offsets moved by `by` bytes: between a frame behind an Ethernet
    /// header (a TAP's) and the bare IP packet (the host interface's). Offsets that say
    /// nothing (0) stay 0.
    pub fn moved(self, by: i32) -> VnetHeader {
        let at = |offset: u16| match offset {
            0 => 0,
            _ => (i32::from(offset) + by).clamp(0, i32::from(u16::MAX)) as u16,
        };
        VnetHeader { header_len: at(self.header_len), csum_start: at(self.csum_start), ..self }
    }

    pub fn parse(bytes: &[u8; Self::LEN]) -> VnetHeader {
        let u16_at = |i: usize| u16::from_ne_bytes([bytes[i], bytes[i + 1]]);
        VnetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            header_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.header_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// The segment size of a TCP super-packet, `None` for a plain frame. Other GSO types
    /// (UDP) are never offered to the pod's kernel; they read as `Some(0)`, which the pipeline
    /// refuses.
    pub fn tcp_segment_size(&self) -> Option<u16> {
        match self.gso_type & !Self::GSO_ECN {
            Self::GSO_NONE => None,
            Self::GSO_TCPV4 | Self::GSO_TCPV6 => Some(self.gso_size),
            _ => Some(0),
        }
    }
}

/// Writes a virtio-net header and its frame in one writev; `false` when the device's queue
/// is full.
pub(super) fn write_with_header(file: &mut File, header: &[u8], frame: &[u8]) -> io::Result<bool> {
    match file.write_vectored(&[IoSlice::new(header), IoSlice::new(frame)]) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = VnetHeader {
            flags: VnetHeader::NEEDS_CSUM,
            gso_type: VnetHeader::GSO_TCPV4 | VnetHeader::GSO_ECN,
            header_len: 66,
            gso_size: 1398,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(VnetHeader::parse(&h.to_bytes()), h);
        assert_eq!(h.tcp_segment_size(), Some(1398));
        assert_eq!(VnetHeader::PLAIN.tcp_segment_size(), None);
        let udp = VnetHeader { gso_type: 5, gso_size: 1400, ..VnetHeader::PLAIN };
        assert_eq!(udp.tcp_segment_size(), Some(0), "refused downstream");
        let bare = h.moved(-14);
        assert_eq!((bare.header_len, bare.csum_start, bare.csum_offset), (52, 20, 16));
        assert_eq!(bare.moved(14), h);
        assert_eq!(VnetHeader::PLAIN.moved(14), VnetHeader::PLAIN, "no offsets to move");
    }
}
