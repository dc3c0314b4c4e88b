//! Pods with a TAP edge (issue 16): node A runs podlane with two TAP pods (t1, t2, dual stack,
//! wired as the CNI plugin wires them: a persistent TAP device `eth0` in the pod's namespace)
//! and a veth pod v1; node B is a kernel node as Flannel programs it, with pod b1. The TAP
//! pods' kernels hand podlane TCP super-packets (TSO on the TAP): to node B they are handed
//! to node A's kernel to segment (the tunnel-GSO interface), or with `--no-tunnel-gso` cut
//! once by podlane into VXLAN frames; to v1 they are cut into frames, to t2 they go whole; segments for a TAP pod (from
//! node B, from v1) are joined into super-packets before they are written to it. Every path
//! carries ping and a 10 MB TCP transfer intact; tshark on the underlay verifies every
//! checksum podlane wrote, outer and inner; the counters show super-packets read, segments
//! cut and packets joined. The run without tunnel GSO has two workers on a two-queue uplink,
//! one owning t1 and the other t2: super-packets between them are handed over whole.

use std::path::Path;
use std::time::Duration;

use control::client::Client;
use podlane_core::api::{Query, Request, Response};
use podlane_tests::{require_root, require_tool};
use testbed::capture::Capture;
use testbed::kernel::{self, RemoteNode};
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, link, tables};

const NODE_A: &str = "192.168.84.1";
const NODE_B: &str = "192.168.84.2";
const VTEP_A: &str = "0a:aa:00:00:00:01";
const VTEP_B: &str = "0a:bb:00:00:00:01";

fn transfer(from: &Pod, to: &Pod, address: &str, port: u16, log: &dyn Fn() -> String) {
    let result = from.tcp_via(to, address, port, port, 10_000_000);
    match result {
        Ok(t) => assert!(
            t.intact() && t.sent.starts_with("bytes=10000000 "),
            "TCP {} → {} ({address}): {t:?}\n{}",
            from.name,
            to.name,
            log()
        ),
        Err(e) => panic!("TCP {} → {} ({address}): {e}\n{}", from.name, to.name, log()),
    }
}

/// The cluster, traffic on every path, the counters, then tshark; `tunnel_gso`: super-packets
/// to node B are handed to node A's kernel to segment (the default), else cut by podlane;
/// `worker_count`: podlane's workers on node A (1 or 2), with an uplink queue each.
fn run(tshark: &Path, tunnel_gso: bool, worker_count: u32) -> anyhow::Result<()> {
    let dir = ScratchDir::new("tap-pods")?;
    let (node_a, node_b) = (Netns::create("tpa")?, Netns::create("tpb")?);
    // The TAP pods' namespaces right after the nodes': their names end in consecutive
    // numbers, 8 and 9 in the second run, which differ in the last byte's parity and so in
    // the parity of the hash that picks a pod's worker (`fnv1a(namespace) % workers`): t1
    // and t2 on different workers (the counters check it).
    let t1 = Pod::wire_tap(
        &node_a,
        "t1",
        ("10.244.1.2", Some("fd00:10:244:1::2")),
        "0a:58:0a:f4:01:02",
        1450,
    )?;
    let t2 = Pod::wire_tap(
        &node_a,
        "t2",
        ("10.244.1.3", Some("fd00:10:244:1::3")),
        "0a:58:0a:f4:01:03",
        1450,
    )?;
    link::underlay((&node_a, "uplink", NODE_A), (&node_b, "eth0", NODE_B), worker_count)?;
    // Node A's uplink as a NIC without offloads: what its kernel sends (the segments of the
    // tunnel-GSO path, the node's own traffic) is segmented and checksummed before the wire,
    // where tshark sees it.
    let mut features = link::NO_SEGMENTATION_OFFLOADS.to_vec();
    features.extend(["tx", "off"]);
    link::set_features(&node_a, "uplink", &features)?;
    let remote = RemoteNode {
        underlay: NODE_A,
        vtep_mac: VTEP_A,
        pod_cidr: "10.244.1.0/24",
        gateway: "10.244.1.0",
    };
    kernel::vxlan_node(&node_b, kernel::FLANNEL, "eth0", NODE_B, VTEP_B, "10.244.2.0", &remote)?;
    let b1 = kernel::wire_pod(&node_b, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02")?;
    let v1 = Pod::wire_dual(
        &node_a,
        "v1",
        "veth-v1",
        ("10.244.1.4", "fd00:10:244:1::4"),
        "0a:58:0a:f4:01:04",
        1450,
    )?;
    let mut node_a_entry = tables::node_with_cidrs(
        "node-a",
        NODE_A,
        VTEP_A,
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
    )?;
    node_a_entry.tunnel_ips = vec!["10.244.1.0".parse()?];
    let nodes = [node_a_entry, tables::node("node-b", NODE_B, VTEP_B, "10.244.2.0/24")?];
    let tables_file = dir.path().join("tables.json");
    tables::write(&tables_file, &tables::for_node("node-a", &nodes, &[&t1, &t2, &v1])?)?;
    let mut args = vec!["--profile", "flannel"];
    if !tunnel_gso {
        args.push("--no-tunnel-gso");
    }
    if worker_count == 2 {
        args.extend(["--cores", "0,1"]);
    }
    let mut daemon = Dataplane::with_tables(
        &node_a,
        "uplink",
        &tables_file,
        &dir.path().join("podlane.log"),
        &args,
    )?;
    daemon.wait_ready(3)?;
    let log = || daemon.log();

    let pcap = dir.path().join("underlay.pcapng");
    let capture = Capture::start(tshark, &node_b, "eth0", "udp port 8472", &pcap)?;
    for (from, _, address) in [
        (&t1, &b1, "10.244.2.2"),
        (&b1, &t1, "10.244.1.2"),
        (&t1, &t2, "10.244.1.3"),
        (&t1, &t2, "fd00:10:244:1::3"),
        (&t1, &v1, "10.244.1.4"),
        (&v1, &t1, "fd00:10:244:1::2"),
    ] {
        assert_eq!(from.ping(address, 3), 3, "ping {} → {address}\n{}", from.name, log());
    }
    // Cut once for the uplink, into VXLAN frames; written to the TAP from the uplink.
    transfer(&t1, &b1, "10.244.2.2", 5001, &log);
    transfer(&b1, &t1, "10.244.1.2", 5002, &log);
    // Whole between TAP pods, over IPv4 and IPv6.
    transfer(&t1, &t2, "10.244.1.3", 5003, &log);
    transfer(&t2, &t1, "fd00:10:244:1::2", 5004, &log);
    // Cut for a veth pod; a veth pod's frames written to a TAP pod.
    transfer(&t1, &v1, "10.244.1.4", 5005, &log);
    transfer(&t1, &v1, "fd00:10:244:1::4", 5006, &log);
    transfer(&v1, &t2, "10.244.1.3", 5007, &log);
    // And to t1: with two workers, v1 shares its worker with one of the TAP pods and not with
    // the other, whose segments from v1 are joined before they are handed over.
    transfer(&v1, &t1, "10.244.1.2", 5008, &log);
    capture.stop();

    // Counters (published once a second): super-packets read from the TAPs, segments cut.
    std::thread::sleep(Duration::from_millis(1100));
    let mut client = Client::connect(daemon.socket(), "tap_pods")?;
    let Response::Counters { workers } =
        client.request(&Request::Query { what: Query::Counters })?
    else {
        anyhow::bail!("no counters");
    };
    let taps: Vec<_> =
        workers.iter().flat_map(|w| &w.sockets).filter(|s| s.mode == "tap").collect();
    assert_eq!(taps.len(), 2, "{taps:?}");
    if worker_count == 2 {
        // One TAP pod each: t1 ⇄ t2 crossed between the workers, super-packets whole.
        let owners: Vec<usize> =
            workers.iter().map(|w| w.sockets.iter().filter(|s| s.mode == "tap").count()).collect();
        assert_eq!(owners, [1, 1], "the TAP pods' namespaces hashed to one worker: {workers:?}");
        assert!(workers.iter().all(|w| w.handoff_in > 0 && w.handoff_dropped == 0), "{workers:?}");
        let joined: u64 = workers.iter().map(|w| w.handoff_joined).sum();
        assert!(joined > 0, "v1's segments joined for the other worker's TAP pod: {workers:?}");
    }
    let super_packets: u64 = taps.iter().map(|s| s.rx_super_packets).sum();
    let segments: u64 = workers.iter().map(|w| w.segments).sum();
    assert!(super_packets > 100, "TSO super-packets read from the TAPs: {taps:?}");
    let joined: u64 = taps.iter().map(|s| s.tx_super_packets).sum();
    assert!(joined > 100, "segments joined into packets written to the TAPs: {taps:?}");
    assert!(segments > super_packets, "{segments} segments cut from {super_packets}");
    assert!(workers.iter().all(|w| w.segmentation_failed == 0), "{workers:?}");
    let handed: u64 = workers.iter().map(|w| w.tunnel_gso).sum();
    if tunnel_gso {
        assert!(handed > 100, "super-packets handed to the kernel to segment: {workers:?}");
        assert!(daemon.log().contains("tunnel-GSO interface up"), "{}", daemon.log());
    } else {
        assert_eq!(handed, 0, "{workers:?}");
    }
    eprintln!(
        "tap_pods (tunnel GSO {tunnel_gso}): {super_packets} super-packets read, {segments} \
         segments cut, {handed} handed to the kernel, {joined} packets joined"
    );
    assert!(daemon.stop()?.success(), "{}", daemon.log());

    // Every frame podlane sent on the underlay: outer IPv4 and inner IPv4 and TCP checksums
    // verify, nothing malformed, each frame within the underlay's MTU.
    let lines = podlane_tests::tshark_fields_with(
        tshark,
        &pcap,
        &["udp.port==8472,vxlan", "tcp.port==5001,data", "tcp.port==5002,data"],
        &["tcp.check_checksum:TRUE"],
        &["ip.src", "frame.len", "ip.checksum.status", "tcp.checksum.status", "_ws.malformed"],
    );
    let (mut from_podlane, mut tcp) = (0, 0);
    for line in &lines {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 5, "{line}");
        assert!(f[4].is_empty(), "tshark found a malformed frame: {line}");
        if !f[0].starts_with(NODE_A) {
            continue;
        }
        from_podlane += 1;
        assert!(f[1].parse::<usize>()? <= 1514, "a frame beyond the underlay MTU: {line}");
        assert_eq!(f[2], "1,1", "outer and inner IPv4 header checksums: {line}");
        if !f[3].is_empty() {
            assert_eq!(f[3], "1", "inner TCP checksum: {line}");
            tcp += 1;
        }
    }
    assert!(tcp > 5000, "{tcp} VXLAN frames of TCP from podlane, of {from_podlane}");
    eprintln!("tap_pods: tshark verified {from_podlane} VXLAN frames from podlane");
    Ok(())
}

#[test]
fn tap_pods() -> anyhow::Result<()> {
    if !require_root("tap_pods") {
        return Ok(());
    }
    let Some(tshark) = require_tool("tshark") else { return Ok(()) };
    run(&tshark, true, 1)?;
    run(&tshark, false, 2)
}
