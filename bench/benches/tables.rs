//! Lookup costs of the tables on their own: policy decisions at 10, 1,000 and 10,000 rules
//! (the cost must not grow linearly with rules), and route lookups among 100,000 routes.
//!
//! Run: `cargo bench -p podlane-bench --bench tables`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use podlane_bench::fixture::{self, ClusterParams, Rng};
use podlane_core::table::{CompiledPolicy, L4, PortProtocol, Snapshot};

const LOOKUPS: usize = 1024;

fn bench_tables(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    for rules in [10usize, 1000, 10_000] {
        let params = ClusterParams { rules_per_policy: rules, ..ClusterParams::bench() };
        let policy =
            CompiledPolicy::compile(&fixture::policy(&params, "p", &mut Rng::new(5))).unwrap();
        // Peers: half are /32 members of the policy's rules' universe (cluster pods), half not.
        let mut rng = Rng::new(11);
        let probes: Vec<(IpAddr, L4)> = (0..LOOKUPS)
            .map(|_| {
                let node = rng.below(params.nodes);
                let ip = fixture::pod_ip(&params, node, rng.below(20));
                let port =
                    if rng.below(2) == 0 { fixture::ALLOWED_PORT } else { rng.below(5000) as u16 };
                (IpAddr::V4(ip), L4::Ports { protocol: PortProtocol::Tcp, port })
            })
            .collect();
        group.bench_with_input(BenchmarkId::new("allows", rules), &probes, |b, probes| {
            b.iter(|| {
                probes.iter().filter(|(peer, l4)| policy.allows(black_box(*peer), *l4)).count()
            })
        });
    }
    group.finish();

    let params = ClusterParams::bench();
    let snapshot = Snapshot::build(&fixture::cluster(&params), 1).unwrap();
    let mut rng = Rng::new(13);
    let dsts: Vec<IpAddr> = (0..LOOKUPS)
        .map(|_| IpAddr::V4(fixture::pod_ip(&params, rng.below(params.nodes), rng.below(62))))
        .collect();
    let local: Vec<IpAddr> = (0..LOOKUPS)
        .map(|i| IpAddr::V4(fixture::pod_ip(&params, 0, i % params.local_endpoints)))
        .collect();
    let outside: Vec<IpAddr> =
        (0..LOOKUPS).map(|i| IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 + i as u32))).collect();
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    for (name, set) in [("remote_100k", &dsts), ("local_pods", &local), ("outside", &outside)] {
        group.bench_with_input(BenchmarkId::new("lookup", name), set, |b, set| {
            b.iter(|| set.iter().filter(|d| snapshot.route(black_box(**d)).is_some()).count())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_tables);
criterion_main!(benches);
