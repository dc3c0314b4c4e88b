//! podlane on a multi-queue uplink: node A runs podlane with two workers (`--cores 0,1`) on a
//! veth uplink with 1, 2 and 8 queues; node B runs the kernel's vxlan device (Flannel). Many
//! flows from B's pod to A's pod spread over the queues as RSS would (a veth delivers a frame
//! on the receive queue matching the sender's transmit queue, which the kernel picks by flow
//! hash): every queue of the uplink gets traffic, every socket has buffers, every datagram
//! reaches the pod, both ways.
//!
//! Then 32 pods on node A while B floods one of them: every pod keeps answering.

use std::time::Duration;

use control::client::Client;
use podlane_core::api::{Query, Request, Response, WorkerCounters};
use podlane_tests::require_root;
use testbed::kernel;
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, link, tables};

const NODE_A: &str = "192.168.84.1";
const NODE_B: &str = "192.168.84.2";
const VTEP_A: &str = "0a:aa:00:00:00:01";
const VTEP_B: &str = "0a:bb:00:00:00:01";

/// Two nodes joined by an uplink of `queues` queues: A runs podlane with `pods` pods, B the
/// kernel's VXLAN with pod b1.
struct Cluster {
    pods: Vec<Pod>,
    b1: Pod,
    daemon: Dataplane,
    _node_b: Netns,
    _node_a: Netns,
    _dir: ScratchDir,
}

fn cluster(tag: &str, queues: u32, pods: u32) -> anyhow::Result<Cluster> {
    let dir = ScratchDir::new(&format!("multi-queue-{tag}"))?;
    let (node_a, node_b) = (Netns::create("mqa")?, Netns::create("mqb")?);
    link::underlay((&node_a, "uplink", NODE_A), (&node_b, "eth0", NODE_B), queues)?;
    kernel::flannel_node_b(&node_b, "eth0", NODE_B, VTEP_B, NODE_A, VTEP_A)?;
    let b1 = kernel::wire_pod(&node_b, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02")?;
    let pods = (0..pods)
        .map(|i| {
            let ip = format!("10.244.1.{}", i + 2);
            let mac = format!("0a:58:0a:f4:01:{:02x}", i + 2);
            Pod::wire(&node_a, &format!("a{i}"), &format!("veth-a{i}"), &ip, &mac)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nodes = [
        tables::node("node-a", NODE_A, VTEP_A, "10.244.1.0/24")?,
        tables::node("node-b", NODE_B, VTEP_B, "10.244.2.0/24")?,
    ];
    let file = dir.path().join("tables.json");
    tables::write(&file, &tables::for_node("node-a", &nodes, &pods.iter().collect::<Vec<_>>())?)?;
    let log = dir.path().join("podlane.log");
    let mut daemon = Dataplane::with_tables(&node_a, "uplink", &file, &log, &["--cores", "0,1"])?;
    daemon.wait_ready(pods.len())?;
    Ok(Cluster { pods, b1, daemon, _node_b: node_b, _node_a: node_a, _dir: dir })
}

fn counters(daemon: &Dataplane) -> anyhow::Result<Vec<WorkerCounters>> {
    // Workers publish about once a second: what the last second did shows after the next.
    std::thread::sleep(Duration::from_millis(1200));
    let mut client = Client::connect(daemon.socket(), "multi_queue")?;
    match client.request(&Request::Query { what: Query::Counters })? {
        Response::Counters { workers } => Ok(workers),
        other => anyhow::bail!("unexpected reply: {other:?}"),
    }
}

/// Sprays `count` datagrams over 256 flows from `from` to `to`; how many reached `to`'s
/// interface (the kernel's own count, less what was there before).
fn spray(from: &Pod, to: &Pod, count: u32) -> anyhow::Result<u64> {
    let before = to.ns.rx_packets("eth0")?;
    let out =
        from.probe(&["udp-spray", &to.ip, "9000", "256", &count.to_string(), "20000"]).output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(report.trim() == format!("sent={count}"), "udp-spray: {report}");
    std::thread::sleep(Duration::from_millis(300));
    Ok(to.ns.rx_packets("eth0")? - before)
}

fn spreads_over(queues: u32) -> anyhow::Result<()> {
    let cluster = cluster(&queues.to_string(), queues, 1)?;
    let a0 = &cluster.pods[0];
    let context = || cluster.daemon.log();
    let count = 4096;
    let arrived = spray(&cluster.b1, a0, count)?;
    assert!(
        arrived >= u64::from(count),
        "{queues} queues: {arrived} of {count} reached a0\n{}",
        context()
    );
    let arrived = spray(a0, &cluster.b1, count)?;
    assert!(
        arrived >= u64::from(count),
        "{queues} queues: {arrived} of {count} reached b1\n{}",
        context()
    );
    let workers = counters(&cluster.daemon)?;
    assert_eq!(workers.len(), queues.min(2) as usize, "one worker per queue, two at most");
    for queue in 0..queues {
        let socket = workers
            .iter()
            .flat_map(|w| &w.sockets)
            .find(|s| s.interface == "uplink" && s.queue == queue)
            .unwrap_or_else(|| {
                panic!("{queues} queues: no socket on queue {queue}\n{}", context())
            });
        assert!(socket.rx_packets > 0, "{queues} queues: nothing on queue {queue}: {workers:#?}");
        assert!(socket.fill_level >= 16, "{queues} queues: queue {queue}: {socket:?}");
        assert_eq!(socket.rx_fill_ring_empty, 0, "{queues} queues: queue {queue}: {socket:?}");
    }
    Ok(())
}

#[test]
fn multi_queue() -> anyhow::Result<()> {
    if !require_root("multi_queue") {
        return Ok(());
    }
    for queues in [1, 2, 8] {
        spreads_over(queues)?;
    }
    thirty_two_pods_under_load()
}

fn thirty_two_pods_under_load() -> anyhow::Result<()> {
    let cluster = cluster("32", 2, 32)?;
    let context = || cluster.daemon.log();
    // B floods a0 for the whole round of pings: 50,000 datagrams a second (for a minute at
    // most; it is stopped when the round ends).
    let flooded_before = cluster.pods[0].ns.rx_packets("eth0")?;
    let flood = cluster
        .b1
        .probe(&["udp-spray", &cluster.pods[0].ip, "9000", "64", "3000000", "50000"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let mut flood = testbed::Background(flood);
    for pod in &cluster.pods {
        let (received, summary) = cluster.b1.ping_summary(&pod.ip, 3);
        assert_eq!(received, 3, "{} under load: {summary}\n{}", pod.name, context());
    }
    assert!(flood.0.try_wait()?.is_none(), "the flood lasted the whole round of pings");
    drop(flood);
    let flooded = cluster.pods[0].ns.rx_packets("eth0")? - flooded_before;
    assert!(flooded > 100_000, "the flood reached a0: {flooded} datagrams");
    let workers = counters(&cluster.daemon)?;
    for socket in workers.iter().flat_map(|w| &w.sockets).filter(|s| s.interface != "uplink") {
        assert!(socket.fill_level >= 16, "{socket:?}");
    }
    Ok(())
}
