//! A worker's counters, published about once a second for the control socket and the log:
//! the pipeline's (forwarded by verdict, dropped by reason), each port's, the kernel's per
//! socket (XDP_STATISTICS) and the worker's own (hand-overs, frames with no socket).

use super::Worker;
use std::net::IpAddr;

use crate::api::{ConntrackCounters, ConntrackFlow, SocketCounters, WorkerCounters};
use crate::engine::DropReason;
use crate::engine::conntrack::Origin;
use crate::table::Snapshot;

/// What the worker counts itself, beside the pipeline and the sockets.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct IoCounters {
    /// Frames for a pod with no socket to send on (not attached, or its port closed).
    pub(super) no_socket: u64,
    /// Frames other workers handed to this one.
    pub(super) handoff_in: u64,
    /// Frames that could not be handed over or delivered after a hand-over.
    pub(super) handoff_dropped: u64,
    /// Packets joined from several segments for another worker's TAP pod, handed over.
    pub(super) handoff_joined: u64,
    /// Frames dropped because a UMEM had no free chunk for them (a hand-over, a copy between
    /// UMEMs, a read from the host interface).
    pub(super) chunk_exhausted: u64,
    /// Frames in several chunks (jumbo), put through the pipeline from the linear buffer.
    pub(super) jumbo_frames: u64,
    /// Of those, frames longer than the uplink's MTU allows: dropped.
    pub(super) jumbo_too_long: u64,
    /// Segments cut from TAP pods' TCP super-packets.
    pub(super) segments: u64,
    /// Super-packets that could not be cut (the pipeline validated them: a bug if ever).
    pub(super) segmentation_failed: u64,
    /// Pauses taken under SCHED_FIFO ([`super::REALTIME_SLICE`]).
    pub(super) realtime_pauses: u64,
    /// Super-packets handed to the tunnel-GSO interface, and those it did not take.
    pub(super) tunnel_gso: u64,
    pub(super) tunnel_gso_dropped: u64,
}

impl Worker {
    pub(super) fn publish_stats(&mut self) {
        let sockets = self
            .ports
            .iter()
            .map(|p| {
                let socket = self.umems.all()[p.umem].socket(p.socket);
                let xdp = socket.and_then(|s| s.statistics().ok()).unwrap_or_default();
                SocketCounters {
                    interface: p.interface.clone(),
                    queue: p.queue,
                    mode: socket.map(|s| s.mode().to_string()).unwrap_or_default(),
                    rx_packets: p.stats.rx_packets,
                    rx_bytes: p.stats.rx_bytes,
                    tx_packets: p.stats.tx_packets,
                    tx_bytes: p.stats.tx_bytes,
                    tx_dropped: p.stats.tx_dropped,
                    rx_ring_full: xdp.rx_ring_full,
                    rx_fill_ring_empty: xdp.rx_fill_ring_empty_descs,
                    rx_invalid_descs: xdp.rx_invalid_descs,
                    tx_invalid_descs: xdp.tx_invalid_descs,
                    rx_dropped: xdp.rx_dropped,
                    fill_level: p.fill_target,
                    rx_super_packets: 0,
                    tx_super_packets: 0,
                }
            })
            .chain(self.taps.iter().flatten().map(|t| SocketCounters {
                interface: t.label.clone(),
                queue: 0,
                mode: "tap".to_owned(),
                rx_packets: t.stats.rx_packets,
                rx_bytes: t.stats.rx_bytes,
                tx_packets: t.stats.tx_packets,
                tx_bytes: t.stats.tx_bytes,
                tx_dropped: t.stats.tx_dropped,
                rx_super_packets: t.rx_super,
                tx_super_packets: t.tx_super,
                ..SocketCounters::default()
            }))
            .collect();
        let c = self.pipeline.counters();
        let io = self.io_counters;
        let stats = WorkerCounters {
            worker: self.index,
            rx_frames: c.rx_frames,
            rx_bytes: c.rx_bytes,
            encap: c.encap,
            decap: c.decap,
            local: c.local,
            reply: c.reply,
            host: c.host,
            encap_bytes: c.encap_bytes,
            decap_bytes: c.decap_bytes,
            local_bytes: c.local_bytes,
            reply_bytes: c.reply_bytes,
            host_bytes: c.host_bytes,
            icmp_errors: c.icmp_errors,
            returned_via_host: c.returned_via_host,
            host_flows: self.pipeline.host_flows().0,
            host_flows_refused: self.pipeline.host_flows().1,
            conntrack: ConntrackCounters {
                flows: self.pipeline.conntrack().len(),
                capacity: self.pipeline.conntrack().config().capacity,
                events: self.pipeline.conntrack().stats(),
            },
            drops: DropReason::ALL
                .iter()
                .filter(|r| c.dropped(**r) > 0)
                .map(|r| (r.label().to_owned(), c.dropped(*r)))
                .collect(),
            no_socket: io.no_socket,
            handoff_in: io.handoff_in,
            handoff_dropped: io.handoff_dropped,
            handoff_joined: io.handoff_joined,
            chunk_exhausted: io.chunk_exhausted,
            realtime_pauses: io.realtime_pauses,
            free_chunks: self.umems.all().iter().map(|u| u.free_chunks()).sum(),
            umems: self.umems.all().len(),
            jumbo_frames: io.jumbo_frames,
            jumbo_too_long: io.jumbo_too_long,
            segments: io.segments,
            segmentation_failed: io.segmentation_failed,
            tunnel_gso: io.tunnel_gso,
            tunnel_gso_dropped: io.tunnel_gso_dropped,
            longest_round_us: self.longest_round.as_micros() as u64,
            invalid_descriptors: self.umems.all().iter().map(|u| u.invalid_descriptors()).sum(),
            sockets,
            host_interface: self.host.as_ref().map(|h| h.counters.clone()),
        };
        if let Ok(mut slot) = self.shared.stats[self.index].lock() {
            *slot = stats;
        }
        self.longest_round = std::time::Duration::ZERO;
    }

    /// Lists this worker's tracked flows into its slot (`show conntrack`).
    pub(super) fn dump_conntrack(&mut self, snapshot: &Snapshot) {
        let now = self.pipeline.now_ns();
        let end = |(ip, port): (IpAddr, u16)| match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        let flows = self
            .pipeline
            .conntrack()
            .flows(now)
            .into_iter()
            .map(|f| ConntrackFlow {
                worker: self.index,
                pod: snapshot.get_endpoint(f.endpoint).map_or_else(
                    || format!("slot {}", f.endpoint.0),
                    |e| format!("{}/{}", e.namespace, e.name),
                ),
                protocol: match f.protocol {
                    6 => "tcp".to_owned(),
                    17 => "udp".to_owned(),
                    132 => "sctp".to_owned(),
                    1 => "icmp".to_owned(),
                    58 => "icmpv6".to_owned(),
                    n => n.to_string(),
                },
                local: end(f.local),
                remote: end(f.remote),
                opened_by: match f.origin {
                    Origin::Local => "pod",
                    Origin::Remote => "peer",
                }
                .to_owned(),
                state: f.state.label().to_owned(),
                idle_ms: f.idle_ns / 1_000_000,
                expires_in_ms: f.expires_in_ns / 1_000_000,
            })
            .collect();
        if let Ok(mut slot) = self.shared.conntrack_dumps[self.index].lock() {
            *slot = Some(flows);
        }
    }
}
