//! Any bytes, as a frame from a pod, the uplink or the host interface, get exactly one verdict
//! and never a panic. Taken as a TCP super-packet (a TAP pod's or the host interface's, with a
//! segment size from the input), they too get one verdict, and whatever the pipeline sends on
//! can be cut into segments: the worker relies on that.
#![no_main]

use podlane_core::engine::segment::Segments;
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
    // Bit 2: a super-packet, its segment size in the next two bytes.
    let (mss, frame) = match (selector & 4 != 0, frame) {
        (true, [a, b, rest @ ..]) => (Some(u16::from_le_bytes([*a, *b])), rest),
        (true, _) => return,
        (false, frame) => (None, frame),
    };
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
    let mut pipeline = Pipeline::new(config);
    let verdict = match mss {
        Some(mss) => {
            let mut frame = Frame::new(&mut buffer, &mut span);
            let verdict = pipeline.process_segmented(snapshot, ingress, &mut frame, mss);
            // What goes on is cut where it goes as frames (a reply is the pipeline's own).
            let out = frame.data();
            match verdict {
                Verdict::Encap => assert!(Segments::new(out, true, mss).is_ok()),
                Verdict::Decap(_) | Verdict::Local(_) | Verdict::Host => {
                    assert!(Segments::new(out, false, mss).is_ok())
                }
                Verdict::Reply | Verdict::Drop(_) => {}
            }
            verdict
        }
        None => {
            let mut frames = [Frame::new(&mut buffer, &mut span)];
            let mut verdicts = [Verdict::Host];
            pipeline.process_batch(snapshot, ingress, &mut frames, &mut verdicts);
            verdicts[0]
        }
    };
    let c = pipeline.counters();
    assert_eq!(c.rx_frames, 1, "{verdict:?}");
    assert_eq!(c.encap + c.decap + c.local + c.reply + c.host + c.total_drops(), 1);
});
