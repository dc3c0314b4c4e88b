//! Two nodes, both on podlane, two pods each — the whole dataplane on real kernels: AF_XDP
//! on veth uplinks and pod veths, the pipeline in between, next hops resolved through the
//! kernel's neighbour table. Every pod pair pings (same node and across nodes); a 10 MB TCP
//! transfer and a UDP exchange between pods on different nodes arrive intact. Node B runs two
//! workers, each owning one of its pods: a pod's TCP to a Service backed by the other pod
//! crosses the node's kernel and the host interface's two queues, whose packets reach the
//! worker that owns their source. A pod whose veth appears after the tables were pushed is
//! reached from the other node through the worker that did not attach it.

use podlane_tests::require_root;
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, link, services, tables};

#[test]
fn two_nodes() -> anyhow::Result<()> {
    if !require_root("two_nodes") {
        return Ok(());
    }
    let dir = ScratchDir::new("two-nodes")?;
    let (node_a, node_b) = (Netns::create("nodea")?, Netns::create("nodeb")?);
    link::underlay(
        (&node_a, "uplink-a", "192.168.80.1"),
        (&node_b, "uplink-b", "192.168.80.2"),
        2,
    )?;
    let pods = [
        Pod::wire(&node_a, "a2", "veth-a2", "10.244.1.2", "0a:58:0a:f4:01:02")?,
        Pod::wire(&node_a, "a3", "veth-a3", "10.244.1.3", "0a:58:0a:f4:01:03")?,
        Pod::wire(&node_b, "b2", "veth-b2", "10.244.2.2", "0a:58:0a:f4:02:02")?,
        Pod::wire(&node_b, "b3", "veth-b3", "10.244.2.3", "0a:58:0a:f4:02:03")?,
    ];
    let nodes = [
        tables::node("node-a", "192.168.80.1", "0a:aa:00:00:00:01", "10.244.1.0/24")?,
        tables::node("node-b", "192.168.80.2", "0a:bb:00:00:00:01", "10.244.2.0/24")?,
    ];
    let tables_a = dir.path().join("tables-a.json");
    let tables_b = dir.path().join("tables-b.json");
    tables::write(&tables_a, &tables::for_node("node-a", &nodes, &[&pods[0], &pods[1]])?)?;
    // Node B's tables also hold b4, whose veth does not exist yet: it is wired later, while
    // the daemon runs (as a CNI plugin would after the table push).
    let b4 = ("b4", "veth-b4", "10.244.2.4", "0a:58:0a:f4:02:04");
    let mut spec_b = tables::for_node("node-b", &nodes, &[&pods[2], &pods[3]])?;
    let mut b4_endpoint = pods[2].endpoint()?;
    (b4_endpoint.name, b4_endpoint.interface) = (b4.0.into(), b4.1.into());
    (b4_endpoint.ips, b4_endpoint.mac) = (vec![b4.2.parse()?], b4.3.parse()?);
    spec_b.endpoints.push(b4_endpoint);
    tables::write(&tables_b, &spec_b)?;
    let mut daemon_a = Dataplane::with_tables(
        &node_a,
        "uplink-a",
        &tables_a,
        &dir.path().join("a.log"),
        &["--log-level", "debug"],
    )?;
    let mut daemon_b = Dataplane::with_tables(
        &node_b,
        "uplink-b",
        &tables_b,
        &dir.path().join("b.log"),
        &["--log-level", "debug", "--cores", "0,1"],
    )?;
    daemon_a.wait_ready(2)?;
    daemon_b.wait_ready(2)?;

    for from in &pods {
        for to in pods.iter().filter(|p| p.name != from.name) {
            let replies = from.ping(&to.ip, 3);
            assert_eq!(
                replies,
                3,
                "{} → {}: {replies}/3 replies\nnode-a:\n{}\nnode-b:\n{}",
                from.name,
                to.name,
                daemon_a.log(),
                daemon_b.log()
            );
        }
    }

    let transfer = pods[0].tcp_to(&pods[2], 5001, 10_000_000)?;
    assert!(transfer.sent.starts_with("bytes=10000000 "), "{}", transfer.sent);
    assert_eq!(transfer.sent, transfer.received, "the TCP stream arrived intact");
    let transfer = pods[3].tcp_to(&pods[1], 5002, 10_000_000)?;
    assert_eq!(transfer.sent, transfer.received, "the TCP stream arrived intact the other way");

    let report = pods[1].udp_to(&pods[2], 6000, 300)?;
    assert_eq!(report, "sent=300 echoed=300 intact=300");

    // A Service on node B as kube-proxy programs it, b2 → ClusterIP → b3: the kernel picks a
    // queue of the host interface per flow, and a packet read by the worker that does not own
    // its source pod (a super-packet: as segments) is handed over to the one that does.
    node_b.sysctl(&["net.ipv4.ip_forward=1"])?;
    services::install(&node_b)?;
    let service = ("10.96.0.20", 80);
    services::cluster_ip(&node_b, "tcp", service, (&pods[3].ip, 8080), "10.244.0.0/16")?;
    for _ in 0..4 {
        let transfer = pods[2].tcp_via(&pods[3], service.0, service.1, 8080, 2_000_000)?;
        assert!(
            transfer.intact(),
            "b2 → ClusterIP → b3: sent {}, received {}\n{}",
            transfer.sent,
            transfer.received,
            daemon_b.log()
        );
    }

    let log_b = daemon_b.log();
    assert!(log_b.contains("workers=2"), "{log_b}");
    // Each of node B's workers owns one of its pods, so frames from the uplink (all on queue
    // 0, where node A's single worker sends) cross between workers.
    let owners: std::collections::BTreeSet<&str> = log_b
        .lines()
        .filter(|l| l.contains("pod interface attached"))
        .filter_map(|l| l.split(" worker=").nth(1).and_then(|w| w.get(..1)))
        .collect();
    assert_eq!(owners.into_iter().collect::<Vec<_>>(), ["0", "1"], "{log_b}");

    // b4's veth appears: its worker (worker 1; node B's uplink frames arrive on worker 0's
    // queue) attaches it, and frames from node A reach it through worker 0's hand-over.
    let pod_b4 = Pod::wire(&node_b, b4.0, b4.1, b4.2, b4.3)?;
    daemon_b.wait_for("pod interface attached", 3)?;
    assert!(
        daemon_b.log().contains(r#"pod interface attached worker=1 interface="veth-b4""#),
        "{}",
        daemon_b.log()
    );
    assert!(
        pods[0].ping_until(&pod_b4.ip, true),
        "a2 → b4 after its veth appeared\n{}",
        daemon_b.log()
    );

    // A pod's interface disappears: logged, its socket closed, the others keep forwarding.
    node_a.ip(&["link", "del", "veth-a3"])?;
    daemon_a.wait_for("pod interface detached: the interface disappeared", 1)?;
    assert_eq!(pods[0].ping(&pods[2].ip, 3), 3, "{}", daemon_a.log());
    assert_eq!(pods[3].ping(&pods[0].ip, 3), 3, "{}", daemon_a.log());

    // Both daemons stop cleanly and report what they forwarded.
    assert!(daemon_a.stop()?.success(), "{}", daemon_a.log());
    assert!(daemon_b.stop()?.success(), "{}", daemon_b.log());
    let log = daemon_a.log();
    assert!(log.contains("uplink-a q0 (copy)"), "the bind mode is shown:\n{log}");
    for ns in [&node_a, &node_b] {
        assert!(ns.xdp_attached()?.is_empty(), "no XDP program left in {}", ns.name());
    }
    Ok(())
}
