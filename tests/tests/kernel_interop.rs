//! podlane swaps in for the kernel's VXLAN: node A runs podlane, node B runs the Linux vxlan
//! device configured exactly as Flannel's vxlan backend does (`flannel.1`, VNI 1, port 8472,
//! nolearning, a permanent neighbour and FDB entry per remote node, an onlink route per
//! remote pod CIDR), then exactly as Calico does (`vxlan.calico`, VNI 4096, port 4789, routes
//! via the remote tunnel address). A pod on each node; ping and a 10 MB TCP transfer in both
//! directions, and tshark on the underlay decodes well-formed VXLAN with the profile's VNI.
//!
//! Node B's pod is wired as Calico wires pods (veth, /32 route, proxy ARP) in both cases: the
//! pod side of a node does not show on the wire, the vxlan device's configuration does.
//!
//! With a host path: the kernel node's pod reaches the podlane node at its tunnel address
//! (Flannel's first address of the subnet, Calico's tunnel address), and a Service of the
//! kernel node whose backend is the podlane node's pod.

use std::path::Path;

use podlane_tests::{require_root, require_tool};
use testbed::capture::Capture;
use testbed::kernel::{self, KernelProfile, RemoteNode};
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, link, services, tables};

const NODE_A: &str = "192.168.82.1";
const NODE_B: &str = "192.168.82.2";
const VTEP_A: &str = "0a:aa:00:00:00:01";
const VTEP_B: &str = "0a:bb:00:00:00:01";
const SERVICE: &str = "10.96.0.20";

/// A kernel CNI profile and the addresses of this two-node cluster under it.
struct Profile {
    kernel: KernelProfile,
    cidr_a: &'static str,
    cidr_b: &'static str,
    /// Node B's address on its vxlan device (Flannel: the .0 of its subnet; Calico: its
    /// tunnel address).
    overlay_b: &'static str,
    /// B's next hop for A's pods, bound to A's VTEP MAC (Flannel: A's subnet address;
    /// Calico: A's tunnel address).
    gateway_a: &'static str,
}

const FLANNEL: Profile = Profile {
    kernel: kernel::FLANNEL,
    cidr_a: "10.244.1.0/24",
    cidr_b: "10.244.2.0/24",
    overlay_b: "10.244.2.0",
    gateway_a: "10.244.1.0",
};

const CALICO: Profile = Profile {
    kernel: kernel::CALICO,
    cidr_a: "10.244.1.0/26",
    cidr_b: "10.244.2.0/26",
    overlay_b: "10.244.2.1",
    gateway_a: "10.244.1.1",
};

/// Node B as the profile's CNI programs it, with one pod.
fn kernel_node(profile: &Profile, node: &Netns) -> anyhow::Result<Pod> {
    let remote = RemoteNode {
        underlay: NODE_A,
        vtep_mac: VTEP_A,
        pod_cidr: profile.cidr_a,
        gateway: profile.gateway_a,
    };
    kernel::vxlan_node(node, profile.kernel, "eth0", NODE_B, VTEP_B, profile.overlay_b, &remote)?;
    kernel::wire_pod(node, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02")
}

fn interop(profile: &Profile, tshark: &Path) -> anyhow::Result<()> {
    let dir = ScratchDir::new(&format!("interop-{}", profile.kernel.name))?;
    let (node_a, node_b) = (Netns::create("ipa")?, Netns::create("ipb")?);
    link::underlay((&node_a, "uplink", NODE_A), (&node_b, "eth0", NODE_B), 1)?;
    let pod_a = Pod::wire(&node_a, "a1", "veth-a1", "10.244.1.2", "0a:58:0a:f4:01:02")?;
    let pod_b = kernel_node(profile, &node_b)?;
    // Node A's tunnel address is where the kernel node routes node A's pods through (its
    // onlink gateway): Flannel's first address of the subnet, Calico's tunnel address.
    let mut node_a_entry = tables::node("node-a", NODE_A, VTEP_A, profile.cidr_a)?;
    node_a_entry.tunnel_ips = vec![profile.gateway_a.parse()?];
    let nodes = [node_a_entry, tables::node("node-b", NODE_B, VTEP_B, profile.cidr_b)?];
    // Node B's kube-proxy: a Service whose backend is podlane's pod.
    services::install(&node_b)?;
    services::cluster_ip(&node_b, "tcp", (SERVICE, 80), (&pod_a.ip, 5003), "10.244.0.0/16")?;
    let tables_file = dir.path().join("tables.json");
    tables::write(&tables_file, &tables::for_node("node-a", &nodes, &[&pod_a])?)?;
    let mut daemon = Dataplane::with_tables(
        &node_a,
        "uplink",
        &tables_file,
        &dir.path().join("podlane.log"),
        &["--profile", profile.kernel.name],
    )?;
    daemon.wait_ready(1)?;

    let pcap = dir.path().join("underlay.pcapng");
    let filter = format!("udp port {}", profile.kernel.port);
    let capture = Capture::start(tshark, &node_b, "eth0", &filter, &pcap)?;
    let context = |what: &str| format!("{}: {what}\n{}", profile.kernel.name, daemon.log());
    assert_eq!(pod_a.ping(&pod_b.ip, 3), 3, "{}", context("podlane pod → kernel pod"));
    assert_eq!(pod_b.ping(&pod_a.ip, 3), 3, "{}", context("kernel pod → podlane pod"));
    assert_eq!(
        pod_a.ping(profile.overlay_b, 3),
        3,
        "{}",
        context("podlane pod → kernel node's vxlan address")
    );
    let transfer = pod_a.tcp_to(&pod_b, 5001, 10_000_000)?;
    assert!(transfer.sent.starts_with("bytes=10000000 "), "{}", transfer.sent);
    assert_eq!(transfer.sent, transfer.received, "{}", context("TCP podlane → kernel"));
    let transfer = pod_b.tcp_to(&pod_a, 5002, 10_000_000)?;
    assert_eq!(transfer.sent, transfer.received, "{}", context("TCP kernel → podlane"));
    // The kernel node's pod reaches the podlane node itself, at its tunnel address, and a
    // Service (node B's kube-proxy) backed by podlane's pod.
    assert_eq!(pod_b.ping(profile.gateway_a, 3), 3, "{}", context("kernel pod → podlane node"));
    let node_a_host = Pod::in_namespace(&node_a, profile.gateway_a);
    let transfer = pod_b.tcp_to(&node_a_host, 5004, 1_000_000)?;
    assert!(transfer.intact(), "{}", context("TCP kernel pod → podlane node's tunnel address"));
    let transfer = pod_b.tcp_via(&pod_a, SERVICE, 80, 5003, 1_000_000)?;
    assert!(transfer.intact(), "{}", context("TCP kernel pod → Service → podlane pod"));
    capture.stop();
    assert!(daemon.stop()?.success(), "{}", daemon.log());

    // What crossed the underlay, decoded by Wireshark's dissectors.
    let decode_as = format!("udp.port=={},vxlan", profile.kernel.port);
    // The transfers' payload is an arbitrary byte stream: shown as data, so that no heuristic
    // dissector (Thrift, say) mistakes a segment for its protocol and reports errors in it.
    let lines = podlane_tests::tshark_fields(
        tshark,
        &pcap,
        &[
            &decode_as,
            "tcp.port==5001,data",
            "tcp.port==5002,data",
            "tcp.port==5003,data",
            "tcp.port==5004,data",
            "tcp.port==80,data",
        ],
        &[
            "ip.src",
            "vxlan.flags",
            "vxlan.vni",
            "eth.dst",
            "_ws.malformed",
            "_ws.expert.severity",
            "_ws.expert.message",
        ],
    );
    let (mut from_podlane, mut from_kernel) = (0, 0);
    for line in &lines {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 7, "{line}");
        assert_eq!(f[1], "0x0800", "VXLAN flags: only I ({line})");
        assert_eq!(f[2], profile.kernel.vni.to_string(), "VNI ({line})");
        assert!(f[4].is_empty(), "tshark found a malformed frame: {line}");
        if f[0].starts_with(NODE_A) {
            from_podlane += 1;
            // Inner destination: node B's VTEP MAC, as the kernel requires.
            assert!(f[3].ends_with(VTEP_B), "inner destination MAC ({line})");
            // Checksums podlane wrote verify, and no other expert complaint at error level.
            assert!(
                !f[5].split(',').any(|s| s == "8388608"),
                "tshark error on podlane's frame: {line}"
            );
        } else {
            from_kernel += 1;
            assert!(f[3].ends_with(VTEP_A), "kernel sends to podlane's VTEP MAC ({line})");
        }
    }
    assert!(
        from_podlane > 1000 && from_kernel > 1000,
        "{from_podlane} / {from_kernel} VXLAN frames each way"
    );
    eprintln!(
        "{}: tshark decoded {from_podlane} VXLAN frames from podlane, {from_kernel} from the kernel",
        profile.kernel.name
    );
    Ok(())
}

#[test]
fn kernel_interop() -> anyhow::Result<()> {
    if !require_root("kernel_interop") {
        return Ok(());
    }
    let Some(tshark) = require_tool("tshark") else { return Ok(()) };
    interop(&FLANNEL, &tshark)?;
    interop(&CALICO, &tshark)
}
