//! ICMP errors as a router sends them, to a pod whose packet the dataplane cannot forward:
//! time exceeded when its TTL runs out (RFC 792, RFC 4443 §3.3), fragmentation needed
//! (RFC 1191) or packet too big (RFC 4443 §3.2) when it would not fit the underlay once
//! encapsulated — what makes path MTU discovery work through the overlay, where a silent drop
//! would be a black hole.
//!
//! The error is written in place of the offending frame: new Ethernet, IP and ICMP headers go
//! into the headroom in front of the offending IP packet, which stays where it is as the
//! quoted datagram (cut to 576 bytes of error over IPv4, 1280 over IPv6, as Linux does). It
//! comes from the gateway address the pod routes through. No error answers an ICMP error, a
//! later fragment, or a source that is not a unicast address (RFC 1122 §3.2.2, RFC 4443 §2.4).
//! A per-worker token bucket — 1,000 a second, bursts of 50, Linux's `icmp_msgs_per_sec` and
//! `icmp_msgs_burst` — bounds what a flood can provoke.

use std::net::IpAddr;

use crate::wire::checksum;
use crate::wire::icmp::{icmpv4_type, icmpv6_type};
use crate::wire::{
    EtherType, EthernetFrame, Icmpv4Packet, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
};

use super::{DropReason, Frame, Pipeline, Verdict};

const ETH: usize = EthernetFrame::<&[u8]>::HEADER_LEN;
const V4_HEADERS: usize = Ipv4Packet::<&[u8]>::MIN_HEADER_LEN + 8;
const V6_HEADERS: usize = Ipv6Packet::<&[u8]>::HEADER_LEN + 8;
/// The largest error, IP header included (RFC 1812 §4.3.2.3 for IPv4, the IPv6 minimum MTU).
const V4_MAX_ERROR: usize = 576;
const V6_MAX_ERROR: usize = 1280;

/// Errors a second, and the burst, per worker.
const RATE_PER_SECOND: u64 = 1000;
const BURST: u32 = 50;

/// The token bucket of a worker's ICMP errors.
#[derive(Debug)]
pub(super) struct Budget {
    tokens: u32,
    /// When the bucket was last topped up; `None` until the first clock reading.
    last_ns: Option<u64>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { tokens: BURST, last_ns: None }
    }
}

impl Budget {
    pub(super) fn refill(&mut self, now_ns: u64) {
        let Some(last) = self.last_ns else {
            self.last_ns = Some(now_ns);
            return;
        };
        let earned = now_ns.saturating_sub(last) * RATE_PER_SECOND / 1_000_000_000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(BURST)) as u32;
            // Credit only whole tokens, so that frequent calls do not round the rate away.
            self.last_ns = Some(last + earned * 1_000_000_000 / RATE_PER_SECOND);
        }
    }

    fn take(&mut self) -> bool {
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Which error to send.
#[derive(Debug, Clone, Copy)]
pub(super) enum IcmpError {
    TimeExceeded,
    /// Fragmentation needed (IPv4) or packet too big (IPv6), with the largest packet that fits.
    TooBig {
        mtu: u16,
    },
    /// IPv4 parameter problem, pointing at the header byte at fault (RFC 792).
    ParameterProblem {
        pointer: u8,
    },
}

/// Rewrites a pod's frame (Ethernet, then its IP packet of `ip_len` bytes) into `error` for
/// the pod, from the gateway: `Verdict::Reply`. When no error may be sent (rate limit, an
/// error about an error, a later fragment, a source that is not unicast), the frame is
/// dropped as `fallback`.
pub(super) fn to_pod(
    pipeline: &mut Pipeline,
    frame: &mut Frame<'_>,
    ip_len: usize,
    error: IcmpError,
    fallback: DropReason,
) -> Verdict {
    let Some((pod_mac, source)) = offender(frame.data(), ip_len) else {
        return Verdict::Drop(fallback);
    };
    if !pipeline.icmp_budget.take() {
        return Verdict::Drop(fallback);
    }
    let (headers, max_error) = match source {
        IpAddr::V4(_) => (V4_HEADERS, V4_MAX_ERROR),
        IpAddr::V6(_) => (V6_HEADERS, V6_MAX_ERROR),
    };
    let quoted = ip_len.min(max_error - headers);
    if !frame.push_head(headers) || !frame.set_len(ETH + headers + quoted) {
        return Verdict::Drop(DropReason::NoBufferRoom);
    }
    let config = &pipeline.config;
    let data = frame.data_mut();
    let mut eth = EthernetFrame::new_unchecked(&mut data[..ETH]);
    eth.set_destination(pod_mac);
    eth.set_source(config.gateway_mac);
    let icmp_start = ETH + headers - 8;
    match source {
        IpAddr::V4(dst) => {
            EthernetFrame::new_unchecked(&mut data[..ETH]).set_ethertype(EtherType::Ipv4);
            let (msg_type, code, rest) = match error {
                IcmpError::TimeExceeded => {
                    (icmpv4_type::TIME_EXCEEDED, icmpv4_type::CODE_TTL_EXCEEDED, 0)
                }
                IcmpError::TooBig { mtu } => {
                    (icmpv4_type::DEST_UNREACHABLE, icmpv4_type::CODE_FRAG_NEEDED, u32::from(mtu))
                }
                IcmpError::ParameterProblem { pointer } => {
                    (icmpv4_type::PARAMETER_PROBLEM, 0, u32::from(pointer) << 24)
                }
            };
            let mut icmp = Icmpv4Packet::new_unchecked(&mut data[icmp_start..]);
            if icmp.emit_error(msg_type, code, rest).is_err() {
                return Verdict::Drop(DropReason::NoBufferRoom);
            }
            let sum = checksum::checksum(&data[icmp_start..]);
            Icmpv4Packet::new_unchecked(&mut data[icmp_start..]).set_checksum(sum);
            let mut ip = Ipv4Packet::new_unchecked(&mut data[ETH..icmp_start]);
            ip.set_version_and_header_len(Ipv4Packet::<&[u8]>::MIN_HEADER_LEN);
            // Precedence "internetwork control", as Linux marks its ICMP errors.
            ip.set_dscp_ecn(0xc0);
            ip.set_total_len((headers + quoted) as u16);
            ip.set_ident(pipeline.next_ip_id);
            ip.set_dont_frag_no_offset(false);
            ip.set_ttl(64);
            ip.set_protocol(IpProtocol::Icmp);
            ip.set_src_addr(config.gateway_v4);
            ip.set_dst_addr(dst);
            ip.fill_checksum();
            pipeline.next_ip_id = pipeline.next_ip_id.wrapping_add(1);
        }
        IpAddr::V6(dst) => {
            EthernetFrame::new_unchecked(&mut data[..ETH]).set_ethertype(EtherType::Ipv6);
            let (msg_type, rest) = match error {
                IcmpError::TimeExceeded => (icmpv6_type::TIME_EXCEEDED, 0),
                IcmpError::TooBig { mtu } => (icmpv6_type::PACKET_TOO_BIG, u32::from(mtu)),
                IcmpError::ParameterProblem { pointer } => {
                    (icmpv6_type::PARAMETER_PROBLEM, u32::from(pointer))
                }
            };
            let mut icmp = Icmpv6Packet::new_unchecked(&mut data[icmp_start..]);
            if icmp.emit_error(msg_type, 0, rest).is_err() {
                return Verdict::Drop(DropReason::NoBufferRoom);
            }
            let icmp_len = 8 + quoted;
            let pseudo = checksum::pseudo_header_v6(
                config.gateway_v6,
                dst,
                IpProtocol::Icmpv6.into(),
                icmp_len as u32,
            );
            let sum = checksum::transport_checksum(pseudo, &data[icmp_start..]);
            Icmpv6Packet::new_unchecked(&mut data[icmp_start..]).set_checksum(sum);
            let mut ip = Ipv6Packet::new_unchecked(&mut data[ETH..icmp_start]);
            ip.set_version_tc_flow(0, 0);
            ip.set_payload_len(icmp_len as u16);
            ip.set_next_header(IpProtocol::Icmpv6);
            ip.set_hop_limit(64);
            ip.set_src_addr(config.gateway_v6);
            ip.set_dst_addr(dst);
        }
    }
    pipeline.counters.icmp_errors += 1;
    Verdict::Reply
}

/// The offending frame's source MAC and source address, when an error may answer it.
fn offender(data: &[u8], ip_len: usize) -> Option<(crate::wire::MacAddr, IpAddr)> {
    let mac = EthernetFrame::new_checked(data).ok()?.source();
    let ip = data.get(ETH..ETH + ip_len)?;
    match ip.first()? >> 4 {
        4 => {
            let packet = Ipv4Packet::new_checked(ip).ok()?;
            let src = packet.src_addr();
            let is_error = packet.protocol() == IpProtocol::Icmp
                && matches!(packet.payload().first(), Some(3 | 4 | 5 | 11 | 12));
            let answerable = !(packet.frag_offset() != 0
                || is_error
                || src.is_unspecified()
                || src.is_broadcast()
                || src.is_multicast());
            answerable.then_some((mac, IpAddr::V4(src)))
        }
        6 => {
            let packet = Ipv6Packet::new_checked(ip).ok()?;
            let src = packet.src_addr();
            let location = packet.find_l4().ok();
            let later_fragment = location.is_some_and(|l| l.later_fragment);
            let is_error = location.is_some_and(|l| {
                l.protocol == IpProtocol::Icmpv6
                    && packet.as_bytes().get(l.offset).is_some_and(|t| *t < 128)
            });
            let answerable =
                !(later_fragment || is_error || src.is_unspecified() || src.is_multicast());
            answerable.then_some((mac, IpAddr::V6(src)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bursts_then_follows_the_rate() {
        let mut budget = Budget::default();
        budget.refill(1_000_000_000);
        assert_eq!((0..100).filter(|_| budget.take()).count(), 50, "a burst of 50");
        budget.refill(1_000_000_000 + 10_000_000); // 10 ms: 10 more
        assert_eq!((0..100).filter(|_| budget.take()).count(), 10);
        for step in 1..=1000u64 {
            budget.refill(1_010_000_000 + step * 100_000); // every 0.1 ms for 0.1 s
        }
        assert_eq!((0..200).filter(|_| budget.take()).count(), 50, "capped at the burst");
        // Read every 10 µs for a second, taking whenever it can: the burst plus 1,000, none
        // lost to rounding the small steps.
        let mut budget = Budget::default();
        let taken = (0..100_000u64)
            .filter(|step| {
                budget.refill(step * 10_000);
                budget.take()
            })
            .count();
        assert!((1049..=1050).contains(&taken), "{taken}");
    }
}
