//! A worker's queue of the host interface: IP packets the node's kernel routed into the
//! overlay are read into fresh UMEM chunks, behind an Ethernet header the pipeline's host path
//! does not look at, and go through the pipeline like any batch; what the pipeline hands to
//! the host is written to the queue (the kernel copies it) and its chunk released.

use std::net::IpAddr;

use super::Worker;
use super::forward::Target;
use super::inbox::Destination;
use crate::api::HostCounters;
use crate::engine::{Ingress, Span, offload};
use crate::io::tun::TunQueue;
use crate::io::xsk::Packet;
use crate::table::{RouteTarget, Snapshot};
use crate::wire::EthernetFrame;

const ETH: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// A worker's queue of the host interface and its counters.
#[derive(Debug)]
pub(super) struct HostQueue {
    pub(super) tun: TunQueue,
    pub(super) counters: HostCounters,
    /// Where a packet whose checksum is partial is finished before it is written.
    finished: Vec<u8>,
}

impl HostQueue {
    pub(super) fn new(tun: TunQueue, queue: u32) -> HostQueue {
        let counters =
            HostCounters { interface: tun.name().to_owned(), queue, ..HostCounters::default() };
        HostQueue { tun, counters, finished: Vec::new() }
    }
}

impl Worker {
    /// Reads a burst from the host interface and runs it through the pipeline. Returns the
    /// number of packets read.
    pub(super) fn receive_host(&mut self, snapshot: &Snapshot) -> usize {
        let Some(host) = self.host.as_mut() else { return 0 };
        let pods = self.umems.pods();
        let headroom = self.umems.get(pods).frame_headroom() as usize;
        self.rx.clear();
        if self.linear.is_some() {
            return self.receive_host_jumbo(snapshot);
        }
        while self.rx.len() < super::BURST {
            let Some(chunk) = self.umems.get(pods).allocate() else {
                self.io_counters.chunk_exhausted += 1;
                break;
            };
            let mut packet = Packet::new(chunk, Span::new(headroom, 0));
            let mut read = Ok(None);
            self.umems.lend_one(&mut packet, |buffer, span| {
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
                    self.umems.release(packet);
                }
                Ok(None) => {
                    self.umems.release(packet);
                    break;
                }
                Err(e) => {
                    tracing::warn!(worker = self.index, "reading the host interface: {e}");
                    self.umems.release(packet);
                    break;
                }
            }
        }
        let n = self.rx.len();
        if self.shared.workers > 1 {
            self.hand_over_foreign_sources(snapshot);
        }
        if !self.rx.is_empty() {
            self.process_received(Ingress::Host, Target::Host, snapshot);
        }
        n
    }

    /// [`Worker::receive_host`] on a jumbo underlay, where the host interface's MTU is beyond
    /// a chunk: each packet is read into the linear buffer, then copied into a chunk when it
    /// fits one (to go through the pipeline in a batch) or put through the pipeline from there.
    fn receive_host_jumbo(&mut self, snapshot: &Snapshot) -> usize {
        let Some(mut linear) = self.linear.take() else { return 0 };
        let pods = self.umems.pods();
        let headroom = self.umems.get(pods).frame_headroom() as usize;
        let room = self.umems.get(pods).config().max_frame() as usize;
        let mut read = 0;
        while read < super::BURST {
            let Some(host) = self.host.as_mut() else { break };
            let start = linear.headroom;
            let buffer = &mut linear.bytes;
            let n = match host.tun.receive(&mut buffer[start + ETH..]) {
                Ok(Some(n)) if start + ETH + n < buffer.len() => n,
                Ok(Some(_)) => {
                    host.counters.rx_too_long += 1;
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(worker = self.index, "reading the host interface: {e}");
                    break;
                }
            };
            read += 1;
            host.counters.rx_packets += 1;
            host.counters.rx_bytes += n as u64;
            let ethertype: u16 = match buffer[start + ETH] >> 4 {
                4 => 0x0800,
                6 => 0x86dd,
                _ => 0,
            };
            buffer[start..start + 12].fill(0);
            buffer[start + 12..start + ETH].copy_from_slice(&ethertype.to_be_bytes());
            let frame = &buffer[start..start + ETH + n];
            if frame.len() <= room {
                let Some(chunk) = self.umems.get(pods).allocate() else {
                    self.io_counters.chunk_exhausted += 1;
                    continue;
                };
                let mut packet = Packet::new(chunk, Span::new(headroom, frame.len()));
                self.umems.lend_one(&mut packet, |bytes, span| {
                    bytes[span.head as usize..span.end()].copy_from_slice(frame);
                });
                self.rx.push(packet);
                continue;
            }
            let owner = match frame.get(ETH..).and_then(source_of).and_then(|ip| snapshot.route(ip))
            {
                Some(RouteTarget::Endpoint(id)) => match self.target(id) {
                    Target::Worker { worker, .. } => Some(worker),
                    _ => None,
                },
                _ => None,
            };
            match owner {
                Some(worker) => self.hand_off_bytes(worker, Destination::HostIngress, frame),
                None => {
                    let span = Span::new(start, ETH + n);
                    self.process_linear(&mut linear, span, Ingress::Host, Target::Host, snapshot);
                }
            }
        }
        self.linear = Some(linear);
        if self.shared.workers > 1 {
            self.hand_over_foreign_sources(snapshot);
        }
        if !self.rx.is_empty() {
            self.process_received(Ingress::Host, Target::Host, snapshot);
        }
        read
    }

    /// Hands the packets of `self.rx` whose source is a pod another worker owns to that
    /// worker, unprocessed: the flows a pod has through the node's kernel are that worker's to
    /// remember (inbox module doc).
    fn hand_over_foreign_sources(&mut self, snapshot: &Snapshot) {
        let mut rx = std::mem::take(&mut self.rx);
        for mut packet in rx.drain(..) {
            let mut source = None;
            self.umems.lend_one(&mut packet, |buffer, span| {
                source = buffer.get(span.head as usize + ETH..span.end()).and_then(source_of);
            });
            let owner = match source.and_then(|ip| snapshot.route(ip)) {
                Some(RouteTarget::Endpoint(id)) => match self.target(id) {
                    Target::Worker { worker, .. } => Some(worker),
                    _ => None,
                },
                _ => None,
            };
            match owner {
                Some(worker) => {
                    self.hand_off(worker, Destination::HostIngress, &mut packet);
                    self.umems.release(packet);
                }
                None => self.rx.push(packet),
            }
        }
        // Keep the vector's allocation for the next burst.
        if self.rx.is_empty() {
            self.rx = rx;
        }
    }

    /// Hands a frame's IP packet to the host interface and releases its chunk.
    pub(super) fn send_host(&mut self, mut packet: Packet) {
        let host = &mut self.host;
        let counters = &mut self.io_counters;
        self.umems.lend_one(&mut packet, |buffer, span| {
            let frame = buffer.get(span.head as usize..span.end()).unwrap_or_default();
            write(host, counters, frame);
        });
        self.umems.release(packet);
    }

    /// Hands a frame's IP packet (from a buffer) to the host interface.
    pub(super) fn write_host(&mut self, frame: &[u8]) {
        write(&mut self.host, &mut self.io_counters, frame);
    }
}

/// Writes the IP packet of `frame` (after its Ethernet header) to the host queue, counted.
fn write(host: &mut Option<HostQueue>, io: &mut super::stats::IoCounters, frame: &[u8]) {
    let Some(host) = host.as_mut() else {
        io.no_socket += 1;
        return;
    };
    let mut ip = frame.get(ETH..).unwrap_or_default();
    // A frame for a TAP pod keeps a partial checksum (`offload`); one that turns to the host
    // instead (the reply of a flow through the node's kernel) is finished here, since the
    // host interface carries no offload flags.
    if offload::partial_checksum(ip).is_some() {
        host.finished.clear();
        host.finished.extend_from_slice(ip);
        offload::finish_partial_checksum(&mut host.finished);
        ip = &host.finished;
    }
    if !ip.is_empty() && matches!(host.tun.send(ip), Ok(true)) {
        host.counters.tx_packets += 1;
        host.counters.tx_bytes += ip.len() as u64;
    } else {
        host.counters.tx_dropped += 1;
    }
}

/// The source address of an IP packet (version from the first nibble).
fn source_of(ip: &[u8]) -> Option<IpAddr> {
    match ip.first()? >> 4 {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?)),
        _ => None,
    }
}
