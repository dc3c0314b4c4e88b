//! Criterion benchmarks of the pipeline: ids `pipeline/encap`, `pipeline/decap` (outer UDP
//! checksum present and verified, as the Linux vxlan device sends it),
//! `pipeline/decap_zero_csum` (zero checksum, as podlane sends by default), `pipeline/local`,
//! `pipeline/arp`, each a batch of 64 frames on a table of 100,000 routes with
//! 1,000 policy rules on every endpoint involved; throughput in elements, so reports read per
//! frame. Frames are 64-byte (inner) UDP in 2 KiB buffers with 256 bytes of headroom, as in
//! UMEM. Before every batch the frames are restored in place (the pipeline rewrites them),
//! outside the timed part: the buffers are then cache-warm, as they are under AF_XDP copy mode,
//! where the kernel has just copied the frame in. The route and policy tables are whatever the
//! batch's lookups leave in cache.
//!
//! Run: `cargo bench -p podlane-bench --bench pipeline`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podlane_bench::fixture::{self, ClusterParams};
use podlane_core::engine::{Frame, Ingress, Pipeline, Span, Verdict};
use podlane_core::table::{EndpointId, Snapshot};

/// (benchmark id, ingress, frames, the verdict every frame must get).
type Case = (&'static str, Ingress, Vec<Vec<u8>>, fn(&Verdict) -> bool);

const BATCH: usize = 64;
const HEADROOM: usize = 256;
const FRAME_LEN: usize = 64;

/// Frames placed in UMEM-like 2 KiB buffers with headroom, plus where each came from.
#[derive(Clone)]
struct Batch {
    buffers: Vec<Vec<u8>>,
    lens: Vec<usize>,
    /// Where each frame lies; reset from `lens` for every run (encapsulation moves them).
    spans: Vec<Span>,
}

impl Batch {
    fn new(frames: &[Vec<u8>]) -> Batch {
        let buffers = frames
            .iter()
            .map(|f| {
                let mut b = vec![0u8; 2048];
                b[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
                b
            })
            .collect();
        Batch {
            buffers,
            lens: frames.iter().map(Vec::len).collect(),
            spans: vec![Span::default(); frames.len()],
        }
    }
}

impl Batch {
    /// Puts the template's frames back into these buffers.
    fn restore_from(&mut self, template: &Batch) {
        for ((b, t), &len) in self.buffers.iter_mut().zip(&template.buffers).zip(&template.lens) {
            b[..HEADROOM + len].copy_from_slice(&t[..HEADROOM + len]);
        }
    }

    fn frames(&mut self) -> Vec<Frame<'_>> {
        for (span, &len) in self.spans.iter_mut().zip(&self.lens) {
            *span = Span::new(HEADROOM, len);
        }
        self.buffers.iter_mut().zip(&mut self.spans).map(|(b, span)| Frame::new(b, span)).collect()
    }
}

fn bench_pipeline(c: &mut Criterion) {
    let params = ClusterParams::bench();
    let spec = fixture::cluster(&params);
    let snapshot = Snapshot::build(&spec, 1).expect("fixture tables are valid");
    let config = fixture::engine_config();
    let (routes_v4, _) = snapshot.route_counts();
    assert!(routes_v4 >= 100_000, "{routes_v4} routes");
    assert!(snapshot.policies().iter().all(|p| p.rule_count() >= 1000));

    // All frames of a pod-ingress batch come from one pod (one RX ring = one veth).
    let pod = 7;
    let ingress_pod = Ingress::Pod(EndpointId(pod as u32));
    let encap: Vec<Vec<u8>> = fixture::encap_frames(&params, BATCH * 4, FRAME_LEN)
        .into_iter()
        .map(|(_, f)| f)
        .map(|f| retarget_source(&params, &f, pod))
        .take(BATCH)
        .collect();
    let local: Vec<Vec<u8>> = fixture::local_frames(&params, BATCH * 4, FRAME_LEN)
        .into_iter()
        .map(|(_, f)| retarget_source(&params, &f, pod))
        .filter(|f| f[30..34] != fixture::pod_ip(&params, 0, pod).octets())
        .take(BATCH)
        .collect();
    let decap = fixture::decap_frames(&params, &config, BATCH, FRAME_LEN);
    // The same frames as a podlane peer sends them by default: outer UDP checksum zero, so
    // there is no checksum to verify (the Linux vxlan device sends one; `decap` has it).
    let decap_zero_csum: Vec<Vec<u8>> = decap
        .iter()
        .map(|f| {
            let mut f = f.clone();
            f[40..42].copy_from_slice(&[0, 0]);
            f
        })
        .collect();
    let arp: Vec<Vec<u8>> =
        (0..BATCH).map(|_| fixture::arp_request(&params, &config, pod)).collect();

    let cases: [Case; 5] = [
        ("encap", ingress_pod, encap, |v| *v == Verdict::Encap),
        ("decap", Ingress::Uplink, decap, |v| matches!(v, Verdict::Decap(_))),
        ("decap_zero_csum", Ingress::Uplink, decap_zero_csum, |v| matches!(v, Verdict::Decap(_))),
        ("local", ingress_pod, local, |v| matches!(v, Verdict::Local(_))),
        ("arp", ingress_pod, arp, |v| *v == Verdict::Reply),
    ];

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, ingress, frames, expected) in cases {
        assert_eq!(frames.len(), BATCH, "{name}: fixture produced {} frames", frames.len());
        let template = Batch::new(&frames);
        let mut pipeline = Pipeline::new(config.clone());
        let mut verdicts = vec![Verdict::Host; BATCH];
        let mut work = template.clone();
        // Check once, untimed, that the batch takes the path the benchmark is named for.
        pipeline.process_batch(&snapshot, ingress, &mut work.frames(), &mut verdicts);
        assert!(verdicts.iter().all(expected), "{name}: unexpected verdicts {verdicts:?}");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    work.restore_from(&template);
                    let mut frames = work.frames();
                    let started = Instant::now();
                    pipeline.process_batch(&snapshot, ingress, &mut frames, &mut verdicts);
                    timed += started.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
}

/// Rewrites a fixture frame so that it comes from local pod `pod` (source MAC and IP, with
/// the IPv4 checksum fixed), keeping its destination.
fn retarget_source(params: &ClusterParams, frame: &[u8], pod: usize) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[6..12].copy_from_slice(&fixture::local_pod_mac(pod).0);
    f[26..30].copy_from_slice(&fixture::pod_ip(params, 0, pod).octets());
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = !podlane_core::wire::checksum::sum(0, &f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
