//! NetworkPolicy with connection tracking, on two podlane nodes and real kernels: what a
//! policy allows opens connections, and their replies pass both ways, whatever the replying
//! side's own policy says; what it does not allow is refused; a policy change cuts a flow it
//! no longer allows and leaves the others alone; a dataplane restart leaves an established TCP
//! connection that the policy allows alone (picked up mid-stream).
//!
//! node-a: a2 (ingress: deny all), a3 (no policy). node-b: b2 (ingress: TCP 5001 and UDP 7000
//! from a2 and a3; egress: deny all), b3 (no policy).

use std::process::Command;

use podlane_core::table::{PeerSpec, PolicySpec, PortProtocol, PortSpec, RuleSpec, TableSpec};
use podlane_tests::require_root;
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, binary, link, tables};

fn rule(peers: &[&str], ports: &[(PortProtocol, u16)]) -> RuleSpec {
    RuleSpec {
        peers: peers
            .iter()
            .map(|c| PeerSpec { cidr: c.parse().expect("CIDR"), except: vec![] })
            .collect(),
        ports: ports
            .iter()
            .map(|&(protocol, port)| PortSpec { protocol, port: Some(port), end_port: None })
            .collect(),
    }
}

/// node-b's tables, b2's ingress allowing `clients`.
fn tables_b(nodes: &[podlane_core::table::NodeSpec], b: [&Pod; 2], clients: &[&str]) -> TableSpec {
    let mut spec = tables::for_node("node-b", nodes, &b).expect("tables");
    let ports = [(PortProtocol::Tcp, 5001), (PortProtocol::Udp, 7000)];
    spec.policies = vec![
        PolicySpec { name: "b2-in".into(), rules: vec![rule(clients, &ports)] },
        PolicySpec { name: "deny-all".into(), rules: vec![] },
    ];
    spec.endpoints[0].ingress_policy = Some("b2-in".into());
    spec.endpoints[0].egress_policy = Some("deny-all".into());
    spec
}

/// `key=N` out of a probe's report.
fn field(report: &str, key: &str) -> u32 {
    report
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {report:?}"))
}

#[test]
fn stateful_policy() -> anyhow::Result<()> {
    if !require_root("stateful_policy") {
        return Ok(());
    }
    let dir = ScratchDir::new("stateful")?;
    let (node_a, node_b) = (Netns::create("sfa")?, Netns::create("sfb")?);
    link::underlay(
        (&node_a, "uplink-a", "192.168.81.1"),
        (&node_b, "uplink-b", "192.168.81.2"),
        1,
    )?;
    let a2 = Pod::wire(&node_a, "a2", "veth-a2", "10.244.1.2", "0a:58:0a:f4:01:02")?;
    let a3 = Pod::wire(&node_a, "a3", "veth-a3", "10.244.1.3", "0a:58:0a:f4:01:03")?;
    let b2 = Pod::wire(&node_b, "b2", "veth-b2", "10.244.2.2", "0a:58:0a:f4:02:02")?;
    let b3 = Pod::wire(&node_b, "b3", "veth-b3", "10.244.2.3", "0a:58:0a:f4:02:03")?;
    let nodes = [
        tables::node("node-a", "192.168.81.1", "0a:aa:00:00:00:01", "10.244.1.0/24")?,
        tables::node("node-b", "192.168.81.2", "0a:bb:00:00:00:01", "10.244.2.0/24")?,
    ];
    let mut spec_a = tables::for_node("node-a", &nodes, &[&a2, &a3])?;
    spec_a.policies = vec![PolicySpec { name: "deny-all".into(), rules: vec![] }];
    spec_a.endpoints[0].ingress_policy = Some("deny-all".into());
    let (path_a, path_b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    tables::write(&path_a, &spec_a)?;
    let both = ["10.244.1.2/32", "10.244.1.3/32"];
    tables::write(&path_b, &tables_b(&nodes, [&b2, &b3], &both))?;
    let mut daemon_a =
        Dataplane::with_tables(&node_a, "uplink-a", &path_a, &dir.path().join("a.log"), &[])?;
    let flags = ["--conntrack-timeouts", "udp=120", "--service-cidrs", "10.96.0.0/12"];
    let mut daemon_b =
        Dataplane::with_tables(&node_b, "uplink-b", &path_b, &dir.path().join("b.log"), &flags)?;
    daemon_a.wait_ready(2)?;
    daemon_b.wait_ready(2)?;
    let logs = || format!("node-a:\n{}\nnode-b:\n{}", daemon_a.log(), daemon_b.log());

    // a2 is under default-deny ingress: it reaches b3, and the echo replies come back; b3 does
    // not reach it.
    assert_eq!(a2.ping(&b3.ip, 2), 2, "a2 → b3: replies to a2's own pings pass\n{}", logs());
    assert_eq!(b3.ping(&a2.ip, 2), 0, "b3 → a2: refused by a2's ingress\n{}", logs());
    // A TCP transfer from a2 to b2: a2's ingress allows nothing, b2's egress allows nothing;
    // every ACK is a reply.
    let transfer = a2.tcp_to(&b2, 5001, 5_000_000)?;
    assert!(transfer.sent.starts_with("bytes=5000000 "), "{}\n{}", transfer.sent, logs());
    assert_eq!(transfer.sent, transfer.received, "the stream arrived intact");
    // b2 answers UDP clients its ingress allows, though its egress allows nothing; it cannot
    // open anything itself.
    let report = a3.udp_to(&b2, 7000, 20)?;
    assert_eq!(field(&report, "intact"), 20, "{report}\n{}", logs());
    assert_eq!(b2.ping(&a3.ip, 2), 0, "b2 → a3: refused by b2's egress\n{}", logs());

    // A row of the policy matrix at once: b2 serves TCP and UDP on 5001, 7000 and 80; from a2
    // its ingress lets TCP 5001 and UDP 7000 in, nothing else; b3 reaches nothing on a2.
    let (_servers, _) = b2.serve(&["serve", "5001", "7000", "80"])?;
    let (_a2_servers, _) = a2.serve(&["serve", "80"])?;
    let targets =
        ["tcp/10.244.2.2/5001", "udp/10.244.2.2/7000", "tcp/10.244.2.2/80", "udp/10.244.2.2/80"];
    let row = a2.probe(&[&["reach", "600"][..], &targets[..]].concat()).output()?;
    let row = String::from_utf8_lossy(&row.stdout).into_owned();
    let verdicts: Vec<&str> = row.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(verdicts, ["ok", "ok", "no", "no"], "a2 → b2:\n{row}");
    let row = b3.probe(&["reach", "600", "tcp/10.244.1.2/80", "udp/10.244.1.2/80"]).output()?;
    let row = String::from_utf8_lossy(&row.stdout).into_owned();
    assert!(row.lines().all(|l| l.ends_with(" no")) && row.lines().count() == 2, "b3 → a2:\n{row}");
    drop(_servers);

    // The flows as node-b's connection tracking holds them.
    let show = Command::new(binary("podlane"))
        .args(["show", "conntrack", "--pod", "default/b2", "--socket"])
        .arg(daemon_b.socket())
        .output()?;
    let listing = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "show conntrack: {show:?}");
    assert!(
        listing
            .lines()
            .any(|l| l.contains("default/b2") && l.contains("udp") && l.contains("peer")),
        "no UDP flow opened by a peer in:\n{listing}"
    );
    let json = Command::new(binary("podlane"))
        .args(["show", "conntrack", "-o", "json", "--socket"])
        .arg(daemon_a.socket())
        .output()?;
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let flows = doc["flows"].as_array().expect("flows");
    assert!(
        flows.iter().any(|f| f["pod"] == "default/a2" && f["opened_by"] == "pod"),
        "a2's own flows tracked on node-a: {doc}"
    );

    // Two UDP streams to b2, from a2 and a3; halfway, b2's ingress stops allowing a2. a2's flow
    // is cut at its next datagram, a3's goes on untouched.
    let (_echo, _) = b2.serve(&["udp-echo", "7000"])?;
    let stream = |pod: &Pod| {
        pod.probe(&["udp-stream", &b2.ip, "7000", "400", "100"])
            .stdout(std::process::Stdio::piped())
            .spawn()
    };
    let (from_a2, from_a3) = (stream(&a2)?, stream(&a3)?);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    tables::write(&path_b, &tables_b(&nodes, [&b2, &b3], &["10.244.1.3/32"]))?;
    let apply = Command::new(binary("podlane"))
        .arg("apply")
        .arg("-f")
        .arg(&path_b)
        .arg("--socket")
        .arg(daemon_b.socket())
        .output()?;
    assert!(apply.status.success(), "podlane apply: {apply:?}");
    let (a2_report, a3_report) = (from_a2.wait_with_output()?, from_a3.wait_with_output()?);
    let (a2_report, a3_report) = (
        String::from_utf8_lossy(&a2_report.stdout).into_owned(),
        String::from_utf8_lossy(&a3_report.stdout).into_owned(),
    );
    assert_eq!(field(&a3_report, "lost"), 0, "a3's flow is still allowed: {a3_report}");
    assert!(field(&a2_report, "echoed") >= 50, "a2's flow passed before the change: {a2_report}");
    assert!(field(&a2_report, "lost") >= 150, "a2's flow was cut by the change: {a2_report}");

    // The settings in force, as `show config` gives them.
    let config = Command::new(binary("podlane"))
        .args(["show", "config", "-o", "json", "--socket"])
        .arg(daemon_b.socket())
        .output()?;
    let config: serde_json::Value = serde_json::from_slice(&config.stdout)?;
    let config = &config["config"];
    assert_eq!(config["conntrack_max"], 262_144, "{config}");
    assert!(
        config["conntrack_timeouts"].as_array().is_some_and(|t| t.iter().any(|v| v == "udp=120")),
        "{config}"
    );
    assert_eq!(config["service_cidrs"], serde_json::json!(["10.96.0.0/12"]), "{config}");

    let counters = Command::new(binary("podlane"))
        .args(["show", "counters", "--socket"])
        .arg(daemon_b.socket())
        .output()?;
    let counters = String::from_utf8_lossy(&counters.stdout);
    assert!(counters.contains("conntrack: "), "{counters}");
    assert!(!counters.contains("cut by policy 0,"), "the cut flow is counted: {counters}");
    // A dataplane restart under an established TCP connection the policy allows (a3 → b2,
    // port 5001): node-b's tables are the file's, its connection tracking starts empty, and
    // the connection goes on, picked up mid-stream.
    let (_b2_serve, _) = b2.serve(&["serve", "5001"])?;
    let chat = a3
        .probe(&["tcp-chat", &b2.ip, "5001", "80", "50"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(800));
    daemon_b.stop()?;
    let mut daemon_b =
        Dataplane::with_tables(&node_b, "uplink-b", &path_b, &dir.path().join("b2.log"), &flags)?;
    daemon_b.wait_ready(2)?;
    let report = String::from_utf8_lossy(&chat.wait_with_output()?.stdout).trim().to_owned();
    let echoed = field(&report, "echoed");
    assert!(echoed >= 60, "the connection went on after the restart: {report}");

    Ok(())
}
