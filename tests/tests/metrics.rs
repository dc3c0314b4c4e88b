//! The metrics and health endpoint (issue 14): a podlane node with two pods serves
//! `--metrics-address`; after traffic between the pods, `/metrics` parses as Prometheus' text
//! exposition (every sample line a name, labels and a number; every family with its TYPE),
//! holds the families README lists with the traffic counted in them (local frames, the pods'
//! packets, a drop reason, conntrack entries, UDP the uplink program left to the kernel by
//! reason), and `/healthz` and `/readyz` answer 200; an unknown path is 404.

use std::collections::BTreeMap;

use podlane_tests::{require_program, require_root};
use testbed::Pod;
use testbed::cluster::OneNode;
use testbed::podlane::Dataplane;

/// `GET path` from inside the node: (status line, body).
fn get(node: &Pod, path: &str) -> (String, String) {
    node.http_get("127.0.0.1", 9842, path)
}

/// The exposition's samples: `name{labels}` → value; panics on a line that is not one.
fn parse(body: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let (mut samples, mut types) = (BTreeMap::new(), BTreeMap::new());
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("value in {line}: {e}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name in {line}"
        );
        samples.insert(series.to_owned(), value);
    }
    (samples, types)
}

#[test]
fn metrics() -> anyhow::Result<()> {
    if !require_root("metrics") {
        return Ok(());
    }
    let one = OneNode::new("mt", 85)?;
    let tables = one.write_tables(&[])?;
    let log = one.dir.path().join("d.log");
    let mut daemon = Dataplane::with_tables(
        &one.node,
        "uplink",
        &tables,
        &log,
        &["--metrics-address", "127.0.0.1:9842"],
    )?;
    daemon.wait_ready(2)?;
    daemon.wait_for("metrics and health endpoint up", 1)?;
    assert_eq!(one.p1.ping(&one.p2.ip, 5), 5, "{}", daemon.log());
    let t = one.p1.tcp_to(&one.p2, 5001, 1_000_000)?;
    assert!(t.intact(), "{t:?}");
    // The node reaches a pod through the host interface (a kubelet probe's path).
    let node_itself = Pod::in_namespace(&one.node, "");
    assert_eq!(node_itself.ping(&one.p1.ip, 3), 3, "{}", daemon.log());
    // A frame to the gateway MAC from an address that is not the pod's: a counted drop.
    let _ = one.p1.ns.ip(&["addr", "add", "10.244.1.99/32", "dev", "eth0"]);
    let spoof = one
        .p1
        .ns
        .command("ping")
        .args(["-c", "1", "-W", "1", "-I", "10.244.1.99", &one.p2.ip])
        .output();
    drop(spoof);
    // UDP to the node that the uplink program leaves to the kernel, sent from the underlay
    // peer by Python's socket module (IP options, fragments and raw VXLAN bytes are all it
    // takes): one datagram with IP options, one fragmented in three, VXLAN with VNI 2.
    let python = require_program("/usr/bin/python3", "python3");
    if let Some(python) = &python {
        let script = [
            "import socket",
            "to = ('192.168.85.1', 8472)",
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
            "s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 1, 1, 0]))",
            "s.sendto(b'options', to)",
            "f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
            // IP_MTU_DISCOVER (10) to IP_PMTUDISC_DONT (0): fragmented here, not refused.
            "f.setsockopt(socket.IPPROTO_IP, 10, 0)",
            "f.sendto(bytes(3000), to)",
            "v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
            "v.sendto(bytes([8, 0, 0, 0, 0, 0, 2, 0]) + bytes(64), to)",
        ]
        .join("\n");
        let out = one.peer.command(python).args(["-c", &script]).output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Counters are published about once a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));

    let node = Pod::in_namespace(&one.node, "127.0.0.1");
    let (status, body) = get(&node, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let (samples, types) = parse(&body);
    for (family, kind) in [
        ("podlane_forward_count", "counter"),
        ("podlane_forward_bytes", "counter"),
        ("podlane_drop_count", "counter"),
        ("podlane_interface_packets", "counter"),
        ("podlane_host_super_packets", "counter"),
        ("podlane_pod_packets", "counter"),
        ("podlane_conntrack_entries", "gauge"),
        ("podlane_worker_longest_round_seconds", "gauge"),
        ("podlane_worker_realtime_pauses", "counter"),
        ("podlane_tables_generation", "gauge"),
        ("podlane_tables_in_sync", "gauge"),
        ("podlane_workers_alive", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{family}:\n{body}");
    }
    let value = |series: &str| samples.get(series).copied().unwrap_or(-1.0);
    assert!(value("podlane_forward_count_total{direction=\"local\"}") >= 10.0, "{body}");
    // At least the 42 bytes of the smallest frame each (these are pings: 98).
    assert!(
        value("podlane_forward_bytes_total{direction=\"local\"}")
            >= 42.0 * value("podlane_forward_count_total{direction=\"local\"}"),
        "{body}"
    );
    assert!(
        value("podlane_pod_packets_total{pod=\"default/p1\",direction=\"from_pod\"}") >= 5.0,
        "{body}"
    );
    assert!(
        value("podlane_pod_packets_total{pod=\"default/p2\",direction=\"to_pod\"}") >= 5.0,
        "{body}"
    );
    assert!(value("podlane_drop_count_total{reason=\"pod_source_spoofed\"}") >= 1.0, "{body}");
    // The host interface's queue: the node's pings in, the pod's replies out.
    for direction in ["rx", "tx"] {
        let series = format!(
            "podlane_interface_packets_total{{interface=\"podlane0\",queue=\"0\",mode=\"host\",\
             direction=\"{direction}\"}}"
        );
        assert!(value(&series) >= 3.0, "{series}:\n{body}");
    }
    assert_eq!(value("podlane_drop_count_total{reason=\"host_tx_dropped\"}"), 0.0, "{body}");
    assert!(value("podlane_conntrack_entries{worker=\"0\"}") >= 0.0, "{body}");
    assert_eq!(value("podlane_tables_in_sync"), 1.0, "tables from a file are in sync:\n{body}");
    assert_eq!(value("podlane_workers_alive"), value("podlane_workers"), "{body}");
    if python.is_some() {
        for (reason, at_least) in [("ip_options", 1.0), ("fragment", 3.0), ("other_vni", 1.0)] {
            let series = format!("podlane_uplink_passed_total{{reason=\"{reason}\"}}");
            assert!(value(&series) >= at_least, "{series}:\n{body}");
        }
    }

    assert_eq!(get(&node, "/healthz").0, "HTTP/1.1 200 OK");
    let (status, body) = get(&node, "/readyz");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(get(&node, "/nothing").0, "HTTP/1.1 404 Not Found");
    assert!(daemon.stop()?.success(), "{}", daemon.log());
    Ok(())
}
