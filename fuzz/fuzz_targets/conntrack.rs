//! Sequences of frames, each from a pod, the uplink or the host interface, through one
//! pipeline and, for frames to a local pod, its delivery (`Pipeline::deliver`), as a worker
//! runs them, with the clock moving on between frames. Pod `client` is under a default-deny
//! ingress policy; its connection tracking holds at most 64 flows. Invariants:
//!
//! * never a panic, one verdict per frame;
//! * the table never holds more than its capacity;
//! * nothing reaches `client` from a peer it has not sent to first (no reply without its
//!   connection), whatever the sequence.
//!
//! Input: records of [selector, length, frame bytes...]; the selector picks the ingress (low
//! two bits) and how far the clock moves (the rest, in seconds).
#![no_main]

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use podlane_core::engine::conntrack::ConntrackConfig;
use podlane_core::engine::{Delivery, EngineConfig, Frame, Ingress, Pipeline, Span, Verdict};
use podlane_core::table::{EndpointId, PolicySpec, Snapshot, TableSpec};
use podlane_core::wire::{EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet};

const HEADROOM: usize = 128;
const CAPACITY: usize = 64;

/// The documented example tables, with `client` (slot 1) under default-deny ingress.
static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let mut spec: TableSpec = serde_json::from_str(include_str!("../../docs/examples/two-nodes.json"))
        .expect("example tables parse");
    spec.policies.push(PolicySpec { name: "deny-all".into(), rules: vec![] });
    spec.endpoints[1].ingress_policy = Some("deny-all".into());
    Snapshot::build(&spec, 1).expect("tables are valid")
});

/// Source and destination of an Ethernet frame's IP packet.
fn addresses(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = &frame[14..];
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let p = Ipv4Packet::new_checked(ip).ok()?;
            Some((IpAddr::V4(p.src_addr()), IpAddr::V4(p.dst_addr())))
        }
        EtherType::Ipv6 => {
            let p = Ipv6Packet::new_checked(ip).ok()?;
            Some((IpAddr::V6(p.src_addr()), IpAddr::V6(p.dst_addr())))
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let snapshot = &*SNAPSHOT;
    let client = snapshot.endpoint_by_interface("veth-client").unwrap_or(EndpointId(1));
    let config = EngineConfig {
        uplink_mtu: 9000,
        conntrack: ConntrackConfig { capacity: CAPACITY, ..ConntrackConfig::default() },
        ..EngineConfig::default()
    };
    let mut pipeline = Pipeline::new(config);
    // Peers `client` has sent something to (that was not dropped).
    let mut contacted: HashSet<IpAddr> = HashSet::new();
    let mut now = 0u64;
    let mut rest = data;
    while let [selector, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        now += u64::from(selector >> 2) * 1_000_000_000;
        pipeline.set_clock(now);
        let ingress = match selector % 4 {
            0 => Ingress::Uplink,
            1 => Ingress::Pod(EndpointId(0)),
            2 => Ingress::Pod(client),
            _ => Ingress::Host,
        };
        let mut buffer = vec![0u8; HEADROOM + frame.len() + 64];
        buffer[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let mut span = Span::new(HEADROOM, frame.len());
        let mut frames = [Frame::new(&mut buffer, &mut span)];
        let mut verdicts = [Verdict::Host];
        pipeline.process_batch(snapshot, ingress, &mut frames, &mut verdicts);
        let verdict = verdicts[0];
        if ingress == Ingress::Pod(client)
            && !matches!(verdict, Verdict::Drop(_) | Verdict::Reply)
            && let Some((_, dst)) = addresses(frame)
        {
            contacted.insert(dst);
        }
        if let Verdict::Decap(id) | Verdict::Local(id) = verdict {
            let delivered = frames[0].data().to_vec();
            let delivery = pipeline.deliver(snapshot, id, &delivered);
            if id == client && delivery == Delivery::Deliver {
                let (src, _) = addresses(&delivered).expect("a delivered frame is IP");
                assert!(
                    contacted.contains(&src) || snapshot.is_local_address(src),
                    "{src} reached client, which never sent to it"
                );
            }
        }
        assert!(pipeline.conntrack().len() <= CAPACITY, "the table outgrew its capacity");
    }
});
