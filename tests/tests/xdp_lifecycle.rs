//! Nothing of podlane stays on the machine: after the daemon exits — on SIGTERM, and by
//! SIGKILL — no XDP program is left on its uplink or its pods' veths, and the kernel's own
//! traffic on the uplink (here: ping and a TCP connection to the node's underlay address,
//! standing in for SSH and the kubelet) flows before, during and after.

use std::process::ExitStatus;

use podlane_tests::cluster::{self, Daemon, Pod};
use podlane_tests::{Netns, ScratchDir, require_root};

/// The node's own traffic on the uplink: ping, and a TCP transfer to its underlay address.
fn kernel_traffic_flows(node: &Netns, peer: &Pod) {
    assert_eq!(peer.ping("192.168.81.1", 3), 3, "ping to the node's underlay address");
    let (sent, received) = peer.tcp_to_node(node, "192.168.81.1", 7000, 1_000_000);
    assert_eq!(sent, received, "TCP to the node through the kernel");
}

/// Ends the daemon one way or another.
type Stop = fn(&mut Daemon) -> ExitStatus;

#[test]
fn xdp_lifecycle() {
    if !require_root("xdp_lifecycle") {
        return;
    }
    let dir = ScratchDir::new("xdp-lifecycle");
    let node = Netns::new("lcnode");
    // The peer on the underlay is a plain namespace, as another host on the node's network.
    let peer_ns = Netns::new("lcpeer");
    cluster::underlay(&node, "uplink", "192.168.81.1", &peer_ns, "eth0", "192.168.81.2");
    let peer = Pod::wrap(peer_ns, "peer", "192.168.81.2");
    let pod = Pod::new(&node, "p1", "veth-p1", "10.244.1.2", "0a:58:0a:f4:01:02");
    let nodes = [
        cluster::node_json("node-a", "192.168.81.1", "0a:aa:00:00:00:01", "10.244.1.0/24"),
        cluster::node_json("node-b", "192.168.81.2", "0a:bb:00:00:00:01", "10.244.2.0/24"),
    ];
    let tables = dir.path().join("tables.json");
    cluster::write_tables(&tables, "node-a", &nodes, &[&pod]);

    kernel_traffic_flows(&node, &peer);
    let stops: [(&str, Stop); 2] = [("SIGTERM", Daemon::stop), ("SIGKILL", Daemon::kill9)];
    for (how, stop) in stops {
        let mut daemon =
            Daemon::start(&node, "uplink", &tables, dir.path().join(format!("{how}.log")), &[]);
        daemon.wait_ready(1);
        let attached = cluster::xdp_attached(&node);
        assert!(
            attached.contains(&"uplink".to_owned()) && attached.contains(&"veth-p1".to_owned()),
            "programs on the uplink and the pod's veth while running: {attached:?}"
        );
        kernel_traffic_flows(&node, &peer);
        let status = stop(&mut daemon);
        if how == "SIGTERM" {
            assert!(status.success(), "clean exit on SIGTERM ({status}):\n{}", daemon.log());
            assert!(daemon.log().contains("stopping"), "{}", daemon.log());
        } else {
            assert!(!status.success());
        }
        assert!(
            cluster::xdp_attached(&node).is_empty(),
            "XDP left after {how}: {:?}",
            cluster::xdp_attached(&node)
        );
        kernel_traffic_flows(&node, &peer);
    }
}
