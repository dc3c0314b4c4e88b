//! The host path: a podlane node as Kubernetes uses it. Two podlane nodes and a host outside
//! the cluster on one switch; node A's kernel plays kubelet, kube-proxy (Services in iptables
//! mode: ClusterIPs, NodePorts) and a CNI's masquerade, and the outside host plays the
//! internet. Dual-stack pods; every path is tried over IPv4 and over IPv6, first with an IPv4
//! underlay, then with an IPv6 one:
//!
//! * node → local pod and node → remote pod (a kubelet probe, a hostNetwork ingress
//!   controller), and the replies;
//! * pod → its node's underlay and tunnel addresses, pod → another node's address;
//! * pod → a ClusterIP backed by a pod on the same node and by one on the other node (TCP),
//!   and a DNS-like UDP ClusterIP — the replies come back un-DNATed;
//! * outside host → NodePort, to a remote backend (masqueraded) and a local one (not);
//! * pod → outside the cluster through the node's default route, masqueraded;
//! * remote pod → this node's tunnel address;
//! * with the IPv4 underlay: another VXLAN user (a kernel vxlan device with another VNI on the
//!   same port) keeps working beside podlane.
//!
//! The host interface takes TCP super-packets and partial checksums both ways, so node A's pods
//! are wired with both edges: with the IPv4 underlay a1 and a2 are TAP pods (a1 → ClusterIP →
//! a2 crosses the host interface as super-packets both ways), with the IPv6 underlay a1 is a
//! veth pod (the node's super-packets to it are cut, its segments to the node joined) and a2
//! a TAP pod.
//!
//! A second test kills node A's dataplane (SIGKILL) in the middle of a TCP transfer between
//! pods on the two nodes and restarts it: the transfer completes intact, and a capture on the
//! underlay sees no packet with a pod address that is not encapsulated.

use std::time::Duration;

use control::client::Client;
use podlane_core::api::{Query, Request, Response};
use podlane_tests::{require_root, require_tool};
use testbed::capture::Capture;
use testbed::link::{self, Switch};
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, services, tables};

const CLUSTER_V4: &str = "10.244.0.0/16";
const CLUSTER_V6: &str = "fd00:10:244::/48";

/// Both families' addresses of one thing.
#[derive(Clone, Copy)]
struct Dual {
    v4: &'static str,
    v6: &'static str,
}

const NODE_A: Dual = Dual { v4: "192.168.86.1", v6: "fd00:86::1" };
const NODE_B: Dual = Dual { v4: "192.168.86.2", v6: "fd00:86::2" };
const OUTSIDE: Dual = Dual { v4: "192.168.86.100", v6: "fd00:86::100" };
/// The outside host's "public" addresses (documentation ranges; they exist only in its
/// namespace).
const PUBLIC: Dual = Dual { v4: "198.51.100.1", v6: "2001:db8:100::1" };
/// Node A's tunnel addresses: the first address of each of its pod CIDRs (Flannel's).
const TUNNEL_A: Dual = Dual { v4: "10.244.1.0", v6: "fd00:10:244:1::" };
const LOCAL_SERVICE: Dual = Dual { v4: "10.96.0.10", v6: "fd00:96::10" };
const REMOTE_SERVICE: Dual = Dual { v4: "10.96.0.11", v6: "fd00:96::11" };

/// The cluster of one run.
struct Cluster {
    // Fields drop pods and daemons before the namespaces they live in.
    a1: Pod,
    a2: Pod,
    b1: Pod,
    outside: Pod,
    daemon_a: Dataplane,
    daemon_b: Dataplane,
    node_a: Netns,
    node_b: Netns,
    _switch: Switch,
    dir: ScratchDir,
}

impl Cluster {
    fn logs(&self) -> String {
        format!("node A:\n{}\nnode B:\n{}", self.daemon_a.log(), self.daemon_b.log())
    }
}

fn address(dual: Dual, v6: bool) -> &'static str {
    if v6 { dual.v6 } else { dual.v4 }
}

fn node(tag: &str, switch: &mut Switch, me: Dual) -> anyhow::Result<Netns> {
    let ns = Netns::create(tag)?;
    switch.plug_with(&ns, "uplink", &[&format!("{}/24", me.v4), &format!("{}/64", me.v6)])?;
    ns.sysctl(&["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
    ns.ip(&["route", "add", "default", "via", OUTSIDE.v4])?;
    ns.ip(&["-6", "route", "add", "default", "via", OUTSIDE.v6])?;
    Ok(ns)
}

/// Builds the cluster with an IPv4 (`underlay_v6` false) or IPv6 underlay, with pods a1 and
/// a2 behind TAP devices where `taps` says so (else veths).
fn cluster(tag: &str, underlay_v6: bool, taps: (bool, bool)) -> anyhow::Result<Cluster> {
    let dir = ScratchDir::new(tag)?;
    let mut switch = Switch::new(&format!("{tag}sw"))?;
    let node_a = node(&format!("{tag}a"), &mut switch, NODE_A)?;
    let node_b = node(&format!("{tag}b"), &mut switch, NODE_B)?;
    let outside_ns = Netns::create(&format!("{tag}out"))?;
    switch.plug_with(
        &outside_ns,
        "eth0",
        &[&format!("{}/24", OUTSIDE.v4), &format!("{}/64", OUTSIDE.v6)],
    )?;
    link::add_address(&outside_ns, "lo", &format!("{}/32", PUBLIC.v4))?;
    link::add_address(&outside_ns, "lo", &format!("{}/128", PUBLIC.v6))?;
    let outside = Pod::wrap(outside_ns, "outside", PUBLIC.v4);

    let mtu = if underlay_v6 { 1430 } else { 1450 };
    let wire = |tap: bool, name: &str, host_if: &str, (ip, ip6): (&str, &str), mac: &str| {
        if tap {
            Pod::wire_tap(&node_a, name, (ip, Some(ip6)), mac, mtu)
        } else {
            Pod::wire_dual(&node_a, name, host_if, (ip, ip6), mac, mtu)
        }
    };
    let a1 =
        wire(taps.0, "a1", "veth-a1", ("10.244.1.2", "fd00:10:244:1::2"), "0a:58:0a:f4:01:02")?;
    let a2 =
        wire(taps.1, "a2", "veth-a2", ("10.244.1.3", "fd00:10:244:1::3"), "0a:58:0a:f4:01:03")?;
    let b1 = Pod::wire_dual(
        &node_b,
        "b1",
        "veth-b1",
        ("10.244.2.2", "fd00:10:244:2::2"),
        "0a:58:0a:f4:02:02",
        mtu,
    )?;
    let nodes = [
        tables::node_with_cidrs(
            "node-a",
            address(NODE_A, underlay_v6),
            "0a:aa:00:00:00:01",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
        )?,
        tables::node_with_cidrs(
            "node-b",
            address(NODE_B, underlay_v6),
            "0a:bb:00:00:00:01",
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
        )?,
    ];
    let (tables_a, tables_b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    tables::write(&tables_a, &tables::for_node("node-a", &nodes, &[&a1, &a2])?)?;
    tables::write(&tables_b, &tables::for_node("node-b", &nodes, &[&b1])?)?;

    // Node A's kernel: kube-proxy's Services and a CNI's masquerade.
    services::install(&node_a)?;
    for v6 in [false, true] {
        let cluster_cidr = if v6 { CLUSTER_V6 } else { CLUSTER_V4 };
        let a2_ip = if v6 { a2.ip6.as_deref().unwrap_or_default() } else { a2.ip.as_str() };
        let b1_ip = if v6 { b1.ip6.as_deref().unwrap_or_default() } else { b1.ip.as_str() };
        let (local, remote) = (address(LOCAL_SERVICE, v6), address(REMOTE_SERVICE, v6));
        services::cluster_ip(&node_a, "tcp", (local, 80), (a2_ip, 8080), cluster_cidr)?;
        services::cluster_ip(&node_a, "udp", (local, 53), (a2_ip, 5353), cluster_cidr)?;
        services::cluster_ip(&node_a, "tcp", (remote, 80), (b1_ip, 8080), cluster_cidr)?;
        services::node_port(&node_a, 30080, (b1_ip, 8080), true)?;
        services::node_port(&node_a, 30081, (a2_ip, 8080), false)?;
        services::masquerade_outbound(&node_a, cluster_cidr)?;
    }

    let mut daemon_a =
        Dataplane::with_tables(&node_a, "uplink", &tables_a, &dir.path().join("a.log"), &[])?;
    let mut daemon_b =
        Dataplane::with_tables(&node_b, "uplink", &tables_b, &dir.path().join("b.log"), &[])?;
    daemon_a.wait_ready(2)?;
    daemon_b.wait_ready(1)?;
    daemon_a.wait_for("routes to pod CIDRs installed", 1)?;
    Ok(Cluster { a1, a2, b1, outside, daemon_a, daemon_b, node_a, node_b, _switch: switch, dir })
}

/// The address of `pod` in one family.
fn ip_of(pod: &Pod, v6: bool) -> &str {
    if v6 { pod.ip6.as_deref().unwrap_or_default() } else { &pod.ip }
}

/// A TCP transfer from `from` to `address:port`, received by a sink in `to` on `sink_port`;
/// it must arrive intact.
fn tcp(
    c: &Cluster,
    what: &str,
    from: &Pod,
    to: &Pod,
    (address, port): (&str, u16),
    sink_port: u16,
) -> anyhow::Result<()> {
    let transfer = from
        .tcp_via(to, address, port, sink_port, 200_000)
        .map_err(|e| e.context(format!("{what}\n{}", c.logs())))?;
    anyhow::ensure!(
        transfer.intact(),
        "{what}: sent {}, received {}\n{}",
        transfer.sent,
        transfer.received,
        c.logs()
    );
    eprintln!("{what}: intact");
    Ok(())
}

/// Every path of the module doc, in one family of pod addresses.
fn paths(c: &Cluster, v6: bool) -> anyhow::Result<()> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    let node_a = Pod::in_namespace(&c.node_a, address(NODE_A, v6));
    let node_b = Pod::in_namespace(&c.node_b, address(NODE_B, v6));
    let a1 = ip_of(&c.a1, v6);
    let b1 = ip_of(&c.b1, v6);
    // Node → pods (kubelet probes, hostNetwork pods).
    tcp(c, &format!("{family}: node A → local pod a1"), &node_a, &c.a1, (a1, 8081), 8081)?;
    tcp(c, &format!("{family}: node A → remote pod b1"), &node_a, &c.b1, (b1, 8082), 8082)?;
    // Pod → nodes.
    let underlay = address(NODE_A, v6);
    tcp(c, &format!("{family}: a1 → its node's address"), &c.a1, &node_a, (underlay, 8083), 8083)?;
    let tunnel = address(TUNNEL_A, v6);
    tcp(
        c,
        &format!("{family}: a1 → its node's tunnel address"),
        &c.a1,
        &node_a,
        (tunnel, 8084),
        8084,
    )?;
    let other = address(NODE_B, v6);
    tcp(c, &format!("{family}: a1 → node B's address"), &c.a1, &node_b, (other, 8085), 8085)?;
    // Services.
    let local = address(LOCAL_SERVICE, v6);
    tcp(
        c,
        &format!("{family}: a1 → ClusterIP, backend a2 on this node"),
        &c.a1,
        &c.a2,
        (local, 80),
        8080,
    )?;
    let remote = address(REMOTE_SERVICE, v6);
    tcp(
        c,
        &format!("{family}: a1 → ClusterIP, backend b1 on node B"),
        &c.a1,
        &c.b1,
        (remote, 80),
        8080,
    )?;
    let report = c.a1.udp_via(&c.a2, local, 53, 5353, 50)?;
    anyhow::ensure!(
        report == "sent=50 echoed=50 intact=50",
        "{family}: UDP ClusterIP: {report}\n{}",
        c.logs()
    );
    let outside = Pod::in_namespace(&c.outside.ns, address(OUTSIDE, v6));
    tcp(
        c,
        &format!("{family}: outside → NodePort, backend b1 on node B"),
        &outside,
        &c.b1,
        (underlay, 30080),
        8080,
    )?;
    tcp(
        c,
        &format!("{family}: outside → NodePort, backend a2 on this node"),
        &outside,
        &c.a2,
        (underlay, 30081),
        8080,
    )?;
    // Leaving the cluster.
    let public = address(PUBLIC, v6);
    tcp(
        c,
        &format!("{family}: a1 → outside the cluster"),
        &c.a1,
        &c.outside,
        (public, 8086),
        8086,
    )?;
    // A remote pod → this node's tunnel address.
    anyhow::ensure!(
        c.b1.ping(tunnel, 3) == 3,
        "{family}: b1 pings node A's tunnel address\n{}",
        c.logs()
    );
    tcp(
        c,
        &format!("{family}: b1 → node A's tunnel address"),
        &c.b1,
        &node_a,
        (tunnel, 8087),
        8087,
    )?;
    Ok(())
}

fn run(tag: &str, underlay_v6: bool) -> anyhow::Result<()> {
    let taps = if underlay_v6 { (false, true) } else { (true, true) };
    let c = cluster(tag, underlay_v6, taps)?;
    paths(&c, false)?;
    paths(&c, true)?;
    if !underlay_v6 {
        another_vxlan_user(&c)?;
    }
    // What the host path carried, in the counters (published once a second).
    std::thread::sleep(Duration::from_millis(1100));
    let mut client = Client::connect(c.daemon_a.socket(), "host_path")?;
    let Response::Counters { workers } =
        client.request(&Request::Query { what: Query::Counters })?
    else {
        anyhow::bail!("no counters");
    };
    let host = workers[0].host_interface.clone().unwrap_or_default();
    anyhow::ensure!(
        host.interface == "podlane0" && host.rx_packets > 0 && host.tx_packets > 0,
        "{host:?}"
    );
    anyhow::ensure!(workers[0].host > 0, "frames handed to the host are counted");
    // The node's own TCP to a1 and a2, and the Services' traffic, came as super-packets;
    // a1's traffic to the Services went to the kernel as super-packets too: a TAP pod's as
    // it sent them, a veth pod's segments joined.
    anyhow::ensure!(host.rx_super_packets > 0, "no super-packet from the kernel: {host:?}");
    anyhow::ensure!(host.tx_super_packets > 0, "no super-packet to the kernel: {host:?}");
    anyhow::ensure!(host.rx_too_long == 0 && host.rx_bad_header == 0, "{host:?}");
    anyhow::ensure!(
        workers[0].returned_via_host > 0 && workers[0].host_flows > 0,
        "the ClusterIP replies went back through the kernel: {:?}",
        workers[0]
    );
    let log = c.daemon_a.log();
    anyhow::ensure!(log.contains("host interface up"), "{log}");
    let routes = c.node_a.ip_output(&["route", "show", "dev", "podlane0"])?;
    anyhow::ensure!(routes.contains("10.244.2.0/24"), "routes via podlane0: {routes}");
    let addresses = c.node_a.ip_output(&["addr", "show", "dev", "podlane0"])?;
    anyhow::ensure!(
        addresses.contains(TUNNEL_A.v4) && addresses.contains(TUNNEL_A.v6),
        "{addresses}"
    );
    drop(c.dir);
    Ok(())
}

/// A kernel vxlan device with VNI 2 on node A's VXLAN port, and its peer on the outside host:
/// podlane's uplink program leaves that VNI to the kernel.
fn another_vxlan_user(c: &Cluster) -> anyhow::Result<()> {
    for (ns, local, remote, overlay) in [
        (&c.node_a, NODE_A.v4, OUTSIDE.v4, "10.99.2.1/24"),
        (&c.outside.ns, OUTSIDE.v4, NODE_A.v4, "10.99.2.2/24"),
    ] {
        ns.ip(&[
            "link", "add", "vx2", "type", "vxlan", "id", "2", "local", local, "remote", remote,
            "dstport", "8472",
        ])?;
        ns.ip(&["addr", "add", overlay, "dev", "vx2"])?;
        ns.ip(&["link", "set", "vx2", "up"])?;
    }
    let a = Pod::in_namespace(&c.node_a, "10.99.2.1");
    anyhow::ensure!(a.ping("10.99.2.2", 3) == 3, "VNI 2 beside podlane's VNI 1\n{}", c.logs());
    eprintln!("another VXLAN user on port 8472 (VNI 2): ping through");
    Ok(())
}

#[test]
fn host_path_over_an_ipv4_underlay() -> anyhow::Result<()> {
    if !require_root("host_path_over_an_ipv4_underlay") {
        return Ok(());
    }
    run("hp4", false)
}

#[test]
fn host_path_over_an_ipv6_underlay() -> anyhow::Result<()> {
    if !require_root("host_path_over_an_ipv6_underlay") {
        return Ok(());
    }
    run("hp6", true)
}

/// SIGKILL in the middle of a transfer, restart: nothing bare on the underlay meanwhile,
/// and the transfer finishes intact.
#[test]
fn a_restart_fails_closed() -> anyhow::Result<()> {
    if !require_root("a_restart_fails_closed") {
        return Ok(());
    }
    let Some(tshark) = require_tool("tshark") else { return Ok(()) };
    let mut c = cluster("hpr", false, (false, false))?;
    let pcap = c.dir.path().join("underlay.pcapng");
    // Everything on node B's link that is not VXLAN.
    let capture = Capture::start(&tshark, &c.node_b, "uplink", "not udp port 8472", &pcap)?;
    let (mut sink, mut sink_out) = c.b1.serve(&["tcp-sink", "9000"])?;
    let mut sender =
        c.a1.probe(&["tcp-send", &c.b1.ip, "9000", "300000000"])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    anyhow::ensure!(sender.try_wait()?.is_none(), "the transfer ended before the kill: too short");
    anyhow::ensure!(!c.daemon_a.kill9()?.success());
    // While it is down: the host interface and its routes stay, and drop what they carry.
    std::thread::sleep(Duration::from_secs(2));
    let routes = c.node_a.ip_output(&["route", "show", "dev", "podlane0"])?;
    anyhow::ensure!(routes.contains("10.244.2.0/24"), "routes kept while stopped: {routes}");
    let node_a = Pod::in_namespace(&c.node_a, NODE_A.v4);
    anyhow::ensure!(node_a.ping(&c.b1.ip, 2) == 0, "node → pod while the dataplane is down");
    anyhow::ensure!(c.a1.ping(&c.b1.ip, 2) == 0, "pod → pod while the dataplane is down");
    let tables = c.dir.path().join("a.json");
    let log = c.dir.path().join("a.log");
    std::fs::rename(&log, c.dir.path().join("a-before.log"))?;
    c.daemon_a = Dataplane::with_tables(&c.node_a, "uplink", &tables, &log, &[])?;
    c.daemon_a.wait_ready(2)?;
    let status = sender.wait()?;
    let mut sent = String::new();
    std::io::Read::read_to_string(sender.stdout.as_mut().expect("piped"), &mut sent)?;
    let mut received = String::new();
    std::io::BufRead::read_line(&mut sink_out, &mut received)?;
    let _ = sink.0.wait();
    anyhow::ensure!(status.success(), "the transfer failed across the restart\n{}", c.logs());
    anyhow::ensure!(
        sent.trim() == received.trim() && sent.starts_with("bytes=300000000 "),
        "sent {sent}, received {received}"
    );
    let pcap = capture.stop();
    let bare = podlane_tests::tshark_fields(
        &tshark,
        &pcap,
        &[],
        &["ip.src", "ip.dst", "ipv6.src", "ipv6.dst"],
    );
    let leaked: Vec<&String> =
        bare.iter().filter(|l| l.contains("10.244.") || l.contains("fd00:10:244:")).collect();
    anyhow::ensure!(leaked.is_empty(), "bare pod-addressed packets on the underlay: {leaked:?}");
    eprintln!(
        "restart: the transfer finished intact ({}); {} packets on the underlay besides VXLAN, \
         none with a pod address",
        sent.trim(),
        bare.len()
    );
    Ok(())
}

/// A pod whose MTU is the underlay's (too big for the overlay) learns the path MTU from
/// podlane's ICMP errors — ping with DF, and TCP whose MSS is too large, both families —
/// and a packet whose TTL runs out gets "time exceeded" from the gateway.
#[test]
fn icmp_errors_reach_pods() -> anyhow::Result<()> {
    if !require_root("icmp_errors_reach_pods") {
        return Ok(());
    }
    let c = cluster("hpi", false, (false, false))?;
    for (ns, dev) in [(&c.a1.ns, "eth0"), (&c.node_a, "veth-a1")] {
        link::set_mtu(ns, dev, 1500)?;
    }
    let ping = |args: &[&str]| -> anyhow::Result<String> {
        let out =
            c.a1.ns
                .command("ping")
                .args(["-n", "-c", "2", "-i", "0.2", "-W", "1"])
                .args(args)
                .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    };
    let b1_v6 = c.b1.ip6.clone().unwrap_or_default();
    let out = ping(&["-M", "do", "-s", "1472", &c.b1.ip])?;
    anyhow::ensure!(
        out.contains("mtu = 1450") || out.contains("mtu=1450"),
        "ping -M do: {out}\n{}",
        c.logs()
    );
    let out = ping(&["-6", "-M", "do", "-s", "1452", &b1_v6])?;
    anyhow::ensure!(out.contains("mtu=1450") || out.contains("mtu = 1450"), "ping -6 -M do: {out}");
    let out = ping(&["-t", "1", &c.b1.ip])?;
    anyhow::ensure!(
        out.contains("From 169.254.1.1") && out.contains("Time to live exceeded"),
        "ping -t 1: {out}"
    );
    let out = ping(&["-6", "-t", "1", &b1_v6])?;
    anyhow::ensure!(out.to_lowercase().contains("time exceeded"), "ping -6 -t 1: {out}");
    // TCP with an MSS for 1,500-byte packets: the first full segments are too big, the ICMP
    // error brings the MSS down, the stream arrives whole. (Fresh destinations: the pings above
    // already taught the pod the path MTU to b1's addresses.)
    let b2 = Pod::wire_dual(
        &c.node_b,
        "b2",
        "veth-b2",
        ("10.244.2.3", "fd00:10:244:2::3"),
        "0a:58:0a:f4:02:03",
        1450,
    )?;
    let mut spec = tables::for_node("node-b", &[], &[&c.b1, &b2])?;
    spec.nodes =
        podlane_core::table::TableSpec::from_json_file(&c.dir.path().join("b.json"))?.nodes;
    let mut client = Client::connect(c.daemon_b.socket(), "host_path")?;
    anyhow::ensure!(matches!(
        client.request(&Request::FullSync { tables: spec })?,
        Response::Ack { .. }
    ));
    let mut daemon_b_attached = false;
    for _ in 0..100 {
        if c.daemon_b.log().matches("pod interface attached").count() >= 2 {
            daemon_b_attached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::ensure!(daemon_b_attached, "b2 attached\n{}", c.logs());
    for address in [b2.ip.clone(), b2.ip6.clone().unwrap_or_default()] {
        let transfer = c.a1.tcp_via(&b2, &address, 9100, 9100, 2_000_000)?;
        anyhow::ensure!(
            transfer.intact(),
            "TCP to {address} with a too-large MSS: {transfer:?}\n{}",
            c.logs()
        );
    }
    let mut client = Client::connect(c.daemon_a.socket(), "host_path")?;
    std::thread::sleep(Duration::from_millis(1100));
    let Response::Counters { workers } =
        client.request(&Request::Query { what: Query::Counters })?
    else {
        anyhow::bail!("no counters");
    };
    anyhow::ensure!(workers[0].icmp_errors >= 4, "ICMP errors counted: {:?}", workers[0]);
    Ok(())
}
