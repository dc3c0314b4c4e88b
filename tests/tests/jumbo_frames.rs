//! A jumbo underlay: node A runs podlane and node B the kernel's vxlan device as Flannel
//! programs it, joined by a veth underlay of MTU 9,000; pods on both nodes get the overlay
//! MTU, 8,950. Full-size pings (8,922 bytes of ICMP payload, don't fragment) and 10 MB of TCP
//! cross both ways; podlane's frames, each in three 4 KiB chunks, go through its linear buffer
//! (`jumbo frames` in its counters) and reach the kernel's vxlan device intact, and the
//! kernel's reach podlane's pod intact. `podlane show config` gives pods their MTU.

use control::client::Client;
use podlane_core::api::{Query, Request, Response};
use podlane_tests::require_root;
use testbed::kernel;
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, link, tables};

const NODE_A: &str = "192.168.85.1";
const NODE_B: &str = "192.168.85.2";
const VTEP_A: &str = "0a:aa:00:00:00:01";
const VTEP_B: &str = "0a:bb:00:00:00:01";
const UNDERLAY_MTU: u32 = 9000;
const POD_MTU: u32 = UNDERLAY_MTU - 50;

/// Sets a pod's MTU on both ends of its veth.
fn set_pod_mtu(node: &Netns, pod: &Pod, mtu: u32) -> anyhow::Result<()> {
    link::set_mtu(&pod.ns, "eth0", mtu)?;
    link::set_mtu(node, &pod.host_if, mtu)
}

#[test]
fn jumbo_frames() -> anyhow::Result<()> {
    if !require_root("jumbo_frames") {
        return Ok(());
    }
    let dir = ScratchDir::new("jumbo")?;
    let (node_a, node_b) = (Netns::create("jba")?, Netns::create("jbb")?);
    link::underlay((&node_a, "uplink", NODE_A), (&node_b, "eth0", NODE_B), 1)?;
    link::set_mtu(&node_a, "uplink", UNDERLAY_MTU)?;
    link::set_mtu(&node_b, "eth0", UNDERLAY_MTU)?;
    // Created after the underlay's MTU: the vxlan device takes it less 50.
    kernel::flannel_node_b(&node_b, "eth0", NODE_B, VTEP_B, NODE_A, VTEP_A)?;
    let b1 = kernel::wire_pod(&node_b, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02")?;
    set_pod_mtu(&node_b, &b1, POD_MTU)?;
    let a1 = Pod::wire(&node_a, "a1", "veth-a1", "10.244.1.2", "0a:58:0a:f4:01:02")?;
    set_pod_mtu(&node_a, &a1, POD_MTU)?;
    let nodes = [
        tables::node("node-a", NODE_A, VTEP_A, "10.244.1.0/24")?,
        tables::node("node-b", NODE_B, VTEP_B, "10.244.2.0/24")?,
    ];
    let file = dir.path().join("tables.json");
    tables::write(&file, &tables::for_node("node-a", &nodes, &[&a1])?)?;
    let mut daemon =
        Dataplane::with_tables(&node_a, "uplink", &file, &dir.path().join("podlane.log"), &[])?;
    daemon.wait_ready(1)?;
    let context = |what: &str| format!("{what}\n{}", daemon.log());

    let mut client = Client::connect(daemon.socket(), "jumbo_frames")?;
    let Response::Config { config } = client.request(&Request::Query { what: Query::Config })?
    else {
        anyhow::bail!("no config")
    };
    assert_eq!(config.overlay_mtu, POD_MTU, "pods' MTU as show config gives it");

    let size = (POD_MTU - 28).to_string();
    for (from, to) in [(&a1, &b1), (&b1, &a1)] {
        let out = from
            .ns
            .command("ping")
            .args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", &size, &to.ip])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(" 3 received"),
            "{}",
            context(&format!("{} → {}: {text}", from.name, to.name))
        );
    }
    let transfer = a1.tcp_to(&b1, 5001, 10_000_000)?;
    assert!(transfer.intact(), "{}", context(&format!("TCP a1 → b1: {transfer:?}")));
    let transfer = b1.tcp_to(&a1, 5002, 10_000_000)?;
    assert!(transfer.intact(), "{}", context(&format!("TCP b1 → a1: {transfer:?}")));

    // Workers publish about once a second.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let Response::Counters { workers } =
        client.request(&Request::Query { what: Query::Counters })?
    else {
        anyhow::bail!("no counters")
    };
    let jumbo: u64 = workers.iter().map(|w| w.jumbo_frames).sum();
    let too_long: u64 = workers.iter().map(|w| w.jumbo_too_long).sum();
    assert!(jumbo > 1000, "{}", context(&format!("{jumbo} jumbo frames")));
    assert_eq!(too_long, 0, "{}", context("jumbo frames too long"));
    Ok(())
}
