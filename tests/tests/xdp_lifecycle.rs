//! Nothing of podlane stays on the machine: after the daemon exits — on SIGTERM, and by
//! SIGKILL — no XDP program is left on its uplink or its pods' veths, and the kernel's own
//! traffic on the uplink (here: ping and a TCP connection to the node's underlay address,
//! standing in for SSH and the kubelet) flows before, during and after.

use std::process::ExitStatus;

use podlane_tests::require_root;
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, Service, link, tables};

/// The node's own traffic on the uplink: ping, and a TCP transfer to its underlay address.
fn kernel_traffic_flows(node: &Netns, peer: &Pod) -> anyhow::Result<()> {
    assert_eq!(peer.ping("192.168.81.1", 3), 3, "ping to the node's underlay address");
    let transfer = peer.tcp_to(&Pod::in_namespace(node, "192.168.81.1"), 7000, 1_000_000)?;
    assert_eq!(transfer.sent, transfer.received, "TCP to the node through the kernel");
    Ok(())
}

/// Ends the daemon one way or another.
type Stop = fn(&mut Service) -> anyhow::Result<ExitStatus>;

#[test]
fn xdp_lifecycle() -> anyhow::Result<()> {
    if !require_root("xdp_lifecycle") {
        return Ok(());
    }
    let dir = ScratchDir::new("xdp-lifecycle")?;
    let node = Netns::create("lcnode")?;
    // The peer on the underlay is a plain namespace, as another host on the node's network.
    let peer_ns = Netns::create("lcpeer")?;
    link::underlay((&node, "uplink", "192.168.81.1"), (&peer_ns, "eth0", "192.168.81.2"), 1)?;
    let peer = Pod::wrap(peer_ns, "peer", "192.168.81.2");
    let pod = Pod::wire(&node, "p1", "veth-p1", "10.244.1.2", "0a:58:0a:f4:01:02")?;
    let nodes = [
        tables::node("node-a", "192.168.81.1", "0a:aa:00:00:00:01", "10.244.1.0/24")?,
        tables::node("node-b", "192.168.81.2", "0a:bb:00:00:00:01", "10.244.2.0/24")?,
    ];
    let tables_file = dir.path().join("tables.json");
    tables::write(&tables_file, &tables::for_node("node-a", &nodes, &[&pod])?)?;

    kernel_traffic_flows(&node, &peer)?;
    let stops: [(&str, Stop); 2] = [("SIGTERM", Service::stop), ("SIGKILL", Service::kill9)];
    for (how, stop) in stops {
        let log = dir.path().join(format!("{how}.log"));
        let mut daemon = Dataplane::with_tables(&node, "uplink", &tables_file, &log, &[])?;
        daemon.wait_ready(1)?;
        let attached = node.xdp_attached()?;
        assert!(
            attached.contains(&"uplink".to_owned()) && attached.contains(&"veth-p1".to_owned()),
            "programs on the uplink and the pod's veth while running: {attached:?}"
        );
        kernel_traffic_flows(&node, &peer)?;
        let status = stop(&mut daemon)?;
        if how == "SIGTERM" {
            assert!(status.success(), "clean exit on SIGTERM ({status}):\n{}", daemon.log());
            assert!(daemon.log().contains("stopping"), "{}", daemon.log());
        } else {
            assert!(!status.success());
        }
        let left = node.xdp_attached()?;
        assert!(left.is_empty(), "XDP left after {how}: {left:?}");
        kernel_traffic_flows(&node, &peer)?;
    }
    Ok(())
}
