//! A worker's queue of the host interface: IP packets the node's kernel routed into the
//! overlay are read into fresh UMEM chunks, behind an Ethernet header the pipeline's host path
//! does not look at, and go through the pipeline like any batch; what the pipeline hands to
//! the host is written to the queue (the kernel copies it) and its chunk released.

use super::Worker;
use super::forward::Target;
use crate::api::HostCounters;
use crate::engine::{Ingress, Span};
use crate::io::tun::TunQueue;
use crate::io::xsk::Packet;
use crate::table::Snapshot;
use crate::wire::EthernetFrame;

const ETH: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// A worker's queue of the host interface and its counters.
#[derive(Debug)]
pub(super) struct HostQueue {
    pub(super) tun: TunQueue,
    pub(super) counters: HostCounters,
}

impl HostQueue {
    pub(super) fn new(tun: TunQueue, queue: u32) -> HostQueue {
        let counters =
            HostCounters { interface: tun.name().to_owned(), queue, ..HostCounters::default() };
        HostQueue { tun, counters }
    }
}

impl Worker {
    /// Reads a burst from the host interface and runs it through the pipeline. Returns the
    /// number of packets read.
    pub(super) fn receive_host(&mut self, snapshot: &Snapshot) -> usize {
        let Some(host) = self.host.as_mut() else { return 0 };
        let headroom = self.umem.frame_headroom() as usize;
        self.rx.clear();
        while self.rx.len() < super::BURST {
            let Some(chunk) = self.umem.allocate() else {
                self.io_counters.chunk_exhausted += 1;
                break;
            };
            let mut packet = Packet { chunk, span: Span::new(headroom, 0) };
            let mut read = Ok(None);
            self.umem.lend(std::slice::from_mut(&mut packet), &mut self.scratch, |buffer, span| {
                let room = buffer.len() - headroom - ETH;
                read = host.tun.receive(&mut buffer[headroom + ETH..]).map(|n| {
                    n.map(|n| {
                        let ethertype: u16 = match buffer[headroom + ETH] >> 4 {
                            4 => 0x0800,
                            6 => 0x86dd,
                            _ => 0,
                        };
                        buffer[headroom..headroom + 12].fill(0);
                        buffer[headroom + 12..headroom + ETH]
                            .copy_from_slice(&ethertype.to_be_bytes());
                        span.len = (ETH + n) as u32;
                        (n, n == room)
                    })
                });
            });
            match read {
                Ok(Some((n, false))) => {
                    host.counters.rx_packets += 1;
                    host.counters.rx_bytes += n as u64;
                    self.rx.push(packet);
                }
                // Filled the chunk to its end: the packet may be longer, and cut.
                Ok(Some((_, true))) => {
                    host.counters.rx_too_long += 1;
                    self.umem.release(packet.chunk);
                }
                Ok(None) => {
                    self.umem.release(packet.chunk);
                    break;
                }
                Err(e) => {
                    tracing::warn!(worker = self.index, "reading the host interface: {e}");
                    self.umem.release(packet.chunk);
                    break;
                }
            }
        }
        let n = self.rx.len();
        if n > 0 {
            self.process_received(Ingress::Host, Target::Host, snapshot);
        }
        n
    }

    /// Hands a frame's IP packet to the host interface and releases its chunk.
    pub(super) fn send_host(&mut self, mut packet: Packet) {
        let Some(host) = self.host.as_mut() else {
            self.umem.release(packet.chunk);
            return;
        };
        let mut sent = false;
        self.umem.lend(std::slice::from_mut(&mut packet), &mut self.scratch, |buffer, span| {
            let ip = buffer.get(span.head as usize + ETH..span.end()).unwrap_or_default();
            sent = !ip.is_empty() && matches!(host.tun.send(ip), Ok(true));
        });
        if sent {
            host.counters.tx_packets += 1;
            host.counters.tx_bytes += u64::from(packet.span.len).saturating_sub(ETH as u64);
        } else {
            host.counters.tx_dropped += 1;
        }
        self.umem.release(packet.chunk);
    }
}
