//! A worker's UMEMs: one, shared by the uplink's queues and the pods' interfaces, when the
//! uplink is bound in copy mode (veth, drivers without AF_XDP zero-copy); two when the uplink
//! is bound zero-copy, because the kernel lets a UMEM be shared only by sockets of one mode
//! and a pod's veth can only be copy mode. Then a frame that crosses between the uplink and a
//! pod is copied once, from a chunk of one UMEM into a chunk of the other: the price of the
//! uplink's zero-copy, which saves the kernel's copy and skb on every uplink frame.

use crate::engine::Span;
use crate::io::xsk::{BindMode, Chunk, Packet, Released, Umem, XskError};

/// The UMEM of the uplink's sockets.
pub(super) const UPLINK: usize = 0;

#[derive(Debug)]
pub(super) struct Umems {
    /// `[uplink]`, or `[uplink, pods]`.
    list: Vec<Umem>,
}

impl Umems {
    /// The UMEMs for an uplink bound in `uplink_mode` on `uplink`: pods share it in copy
    /// mode and get a UMEM of the same size of their own next to a zero-copy one.
    pub(super) fn new(uplink: Umem, uplink_mode: BindMode) -> Result<Umems, XskError> {
        let mut list = vec![uplink];
        if pods_need_their_own(uplink_mode) {
            list.push(Umem::new(*list[UPLINK].config())?);
        }
        Ok(Umems { list })
    }

    /// Whether pods have a UMEM of their own.
    pub(super) fn split(&self) -> bool {
        self.list.len() > 1
    }

    /// The UMEM the pods' sockets (and the host interface's frames) use.
    pub(super) fn pods(&self) -> usize {
        self.list.len() - 1
    }

    pub(super) fn get(&mut self, index: usize) -> &mut Umem {
        &mut self.list[index]
    }

    pub(super) fn all(&self) -> &[Umem] {
        &self.list
    }

    /// Which of them a chunk belongs to.
    pub(super) fn of(&self, chunk: &Chunk) -> usize {
        self.list.iter().position(|u| u.id() == chunk.umem()).unwrap_or(UPLINK)
    }

    pub(super) fn release(&mut self, packet: Packet) {
        let index = self.of(&packet.chunk);
        self.list[index].release(packet.chunk);
    }

    /// Lends one packet's bytes and span.
    pub(super) fn lend_one(
        &mut self,
        packet: &mut Packet,
        each: impl FnOnce(&mut [u8], &mut Span),
    ) {
        let index = self.of(&packet.chunk);
        let mut each = Some(each);
        self.list[index].lend(std::slice::from_mut(packet), |bytes, span| {
            if let Some(each) = each.take() {
                each(bytes, span);
            }
        });
    }

    /// Takes back the chunks of a released socket.
    pub(super) fn reclaim(&mut self, released: Released) {
        if let Some(umem) = self.list.iter_mut().find(|u| u.id() == released.umem()) {
            let _ = umem.reclaim(released);
        }
    }

    /// The packet in a chunk of UMEM `target`: itself when it is there already, else a copy
    /// (the original released). `None` when `target` has no free chunk (the packet is
    /// released).
    pub(super) fn move_into(&mut self, packet: Packet, target: usize) -> Option<Packet> {
        let source = self.of(&packet.chunk);
        if source == target {
            return Some(packet);
        }
        let Some(chunk) = self.list[target].allocate() else {
            self.list[source].release(packet.chunk);
            return None;
        };
        let mut from = packet;
        let mut to = Packet { chunk, span: from.span, continues: from.continues };
        let (low, high) = self.list.split_at_mut(source.max(target));
        let (source_umem, target_umem) = if source < target {
            (&mut low[source], &mut high[0])
        } else {
            (&mut high[0], &mut low[target])
        };
        source_umem.lend(std::slice::from_mut(&mut from), |src, span| {
            let bytes = &src[span.head as usize..span.end()];
            target_umem.lend(std::slice::from_mut(&mut to), |dst, span| {
                dst[span.head as usize..span.end()].copy_from_slice(bytes);
            });
        });
        source_umem.release(from.chunk);
        Some(to)
    }
}

/// The kernel lets sockets of only one mode share a UMEM, and a pod's veth binds in copy
/// mode only: next to a zero-copy uplink, pods need a UMEM of their own.
pub(super) fn pods_need_their_own(uplink_mode: BindMode) -> bool {
    uplink_mode == BindMode::ZeroCopy
}
