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
//! Every endpoint has policies, so connection tracking is on: each batch runs as a worker runs
//! it — the pipeline, then delivery's judgement (`Pipeline::deliver`: the ingress side) for
//! frames to local pods — in a table already holding 100,000 live flows. The batch's own
//! flows are known after the first run, so these are the costs of a packet of an existing
//! flow. `conntrack/new_flow` times flows that are new every time: encap frames whose source
//! port changes before every batch, into a full table (262,144 flows), where each new flow
//! evicts an unanswered one — the rate at which a worker sets flows up and tears them down.
//! Before the runs it prints the memory a tracked flow takes (resident set growth over
//! 100,000 flows).
//!
//! Run: `cargo bench -p podlane-bench --bench pipeline`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podlane_bench::fixture::{self, ClusterParams};
use podlane_core::engine::{Delivery, Frame, Ingress, Pipeline, Span, Verdict};
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

    let encap_frames = encap.clone();
    let local_frames = local.clone();
    let cases: [Case; 5] = [
        ("encap", ingress_pod, encap, |v| *v == Verdict::Encap),
        ("decap", Ingress::Uplink, decap, |v| matches!(v, Verdict::Decap(_))),
        ("decap_zero_csum", Ingress::Uplink, decap_zero_csum, |v| matches!(v, Verdict::Decap(_))),
        ("local", ingress_pod, local, |v| matches!(v, Verdict::Local(_))),
        ("arp", ingress_pod, arp, |v| *v == Verdict::Reply),
    ];

    // What a tracked flow costs in memory.
    {
        let mut pipeline = Pipeline::new(config.clone());
        let before = resident_bytes();
        populate(&mut pipeline, &snapshot, ingress_pod, &local_frames, LIVE_FLOWS);
        let grown = resident_bytes().saturating_sub(before);
        println!(
            "conntrack: {} flows grew the resident set by {:.1} MiB: {} bytes per flow \
             (entry and index: {} bytes, the rest is the hash table's control bytes and \
             spare capacity)",
            pipeline.conntrack().len(),
            grown as f64 / (1 << 20) as f64,
            grown / pipeline.conntrack().len().max(1) as u64,
            podlane_core::engine::conntrack::Conntrack::bytes_per_flow()
        );
    }

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, ingress, frames, expected) in cases {
        assert_eq!(frames.len(), BATCH, "{name}: fixture produced {} frames", frames.len());
        let template = Batch::new(&frames);
        let mut pipeline = Pipeline::new(config.clone());
        populate(&mut pipeline, &snapshot, ingress_pod, &local_frames, LIVE_FLOWS);
        let mut verdicts = vec![Verdict::Host; BATCH];
        let mut work = template.clone();
        // Check once, untimed, that the batch takes the path the benchmark is named for.
        run_batch(&mut pipeline, &snapshot, ingress, &mut work.frames(), &mut verdicts);
        assert!(verdicts.iter().all(expected), "{name}: unexpected verdicts {verdicts:?}");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    work.restore_from(&template);
                    let mut frames = work.frames();
                    let started = Instant::now();
                    run_batch(&mut pipeline, &snapshot, ingress, &mut frames, &mut verdicts);
                    timed += started.elapsed();
                }
                timed
            })
        });
    }
    group.finish();

    // New flows, one per frame, into a full table.
    let mut group = c.benchmark_group("conntrack");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut pipeline = Pipeline::new(config.clone());
    let capacity = pipeline.conntrack().config().capacity;
    populate(&mut pipeline, &snapshot, ingress_pod, &encap_frames, capacity);
    let template = Batch::new(&encap_frames);
    let mut work = template.clone();
    let mut verdicts = vec![Verdict::Host; BATCH];
    let mut port = 0u16;
    set_source_ports(&mut work, port);
    run_batch(&mut pipeline, &snapshot, ingress_pod, &mut work.frames(), &mut verdicts);
    assert!(verdicts.iter().all(|v| *v == Verdict::Encap), "new flows: {verdicts:?}");
    let evicted = pipeline.conntrack().stats().evicted;
    assert!(evicted > 0, "a full table evicts: {:?}", pipeline.conntrack().stats());
    group.bench_function("new_flow", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                work.restore_from(&template);
                port = port.wrapping_add(1);
                set_source_ports(&mut work, port);
                let mut frames = work.frames();
                let started = Instant::now();
                run_batch(&mut pipeline, &snapshot, ingress_pod, &mut frames, &mut verdicts);
                timed += started.elapsed();
            }
            timed
        })
    });
    assert_eq!(pipeline.conntrack().stats().full, 0, "nothing refused while it could evict");
    group.finish();
}

/// Flows in the table before timing.
const LIVE_FLOWS: usize = 100_000;

/// As a worker runs a batch: the pipeline, then delivery's judgement for frames to local pods.
fn run_batch(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    ingress: Ingress,
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
) {
    pipeline.process_batch(snapshot, ingress, frames, verdicts);
    for (frame, verdict) in frames.iter().zip(verdicts.iter_mut()) {
        if let Verdict::Decap(id) | Verdict::Local(id) = *verdict
            && let Delivery::Drop(reason) = pipeline.deliver(snapshot, id, frame.data())
        {
            *verdict = Verdict::Drop(reason);
        }
    }
}

/// Sets every frame's UDP source port (IPv4 without options, from a pod) to `port`, and its
/// UDP checksum to zero (none, which IPv4 allows).
fn set_source_ports(batch: &mut Batch, port: u16) {
    for buffer in &mut batch.buffers {
        let udp = HEADROOM + 34;
        buffer[udp..udp + 2].copy_from_slice(&port.to_be_bytes());
        buffer[udp + 6..udp + 8].copy_from_slice(&[0, 0]);
    }
}

/// Runs pod frames shaped like `frames` with ever new source ports until the pipeline tracks
/// `flows` flows (or a pass over every port adds none).
fn populate(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    ingress: Ingress,
    frames: &[Vec<u8>],
    flows: usize,
) {
    let pod_frames: Vec<Vec<u8>> = frames.iter().filter(|f| f.len() >= 42).cloned().collect();
    if !matches!(ingress, Ingress::Pod(_)) || pod_frames.is_empty() {
        return;
    }
    let mut batch = Batch::new(&pod_frames);
    let template = batch.clone();
    let mut verdicts = vec![Verdict::Host; pod_frames.len()];
    for port in 1..=u16::MAX {
        if pipeline.conntrack().len() >= flows {
            return;
        }
        batch.restore_from(&template);
        set_source_ports(&mut batch, port);
        run_batch(pipeline, snapshot, ingress, &mut batch.frames(), &mut verdicts);
    }
}

/// This process's resident set, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
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
