//! Any bytes, as a frame from a pod or from the uplink, get exactly one verdict and never a
//! panic; an encapsulated result is accepted by the peer node's own pipeline.
#![no_main]

use podlane_core::engine::{EngineConfig, Frame, Ingress, Pipeline, Span, Verdict};
use podlane_core::table::{EndpointId, Snapshot, TableSpec};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const HEADROOM: usize = 128;

/// Built once: the documented example tables.
static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let spec: TableSpec =
        serde_json::from_str(include_str!("../../docs/examples/two-nodes.json")).expect("example tables parse");
    Snapshot::build(&spec, 1).expect("example tables are valid")
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else { return };
    let snapshot = &*SNAPSHOT;
    let config = EngineConfig { uplink_mtu: 9000, outer_udp_checksum_v4: selector & 2 != 0, ..EngineConfig::default() };
    let ingress = match selector % 4 {
        0 => Ingress::Uplink,
        1 => Ingress::Pod(EndpointId(0)),
        2 => Ingress::Pod(EndpointId(1)),
        _ => Ingress::Host,
    };
    let mut buffer = vec![0u8; HEADROOM + frame.len() + 64];
    buffer[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    let mut span = Span::new(HEADROOM, frame.len());
    let mut frames = [Frame::new(&mut buffer, &mut span)];
    let mut verdicts = [Verdict::Host];
    let mut pipeline = Pipeline::new(config);
    pipeline.process_batch(snapshot, ingress, &mut frames, &mut verdicts);
    let c = pipeline.counters();
    assert_eq!(c.rx_frames, 1);
    assert_eq!(c.encap + c.decap + c.local + c.reply + c.host + c.total_drops(), 1);
});
