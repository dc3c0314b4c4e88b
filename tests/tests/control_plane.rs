//! The control plane live: three podlane nodes on a bridged underlay, each dataplane started
//! without tables and driven by `podlane agent` from one cluster file. While a UDP stream runs
//! between two pods that are never touched, the cluster file is edited — a pod added on node
//! B, another removed, node C added — and a second client pushes table updates to node A 100
//! times a second. Forwarding to the new pod and the new node starts, forwarding to the removed
//! pod stops, the untouched stream loses no datagram. Then node B's dataplane restarts and its
//! agent syncs it again from scratch. Last, a pod given another pod's address is left out while
//! the rest applies, and is in once its address is its own.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use control::client::Client;
use podlane_core::api::{Query, Request, Response, Update};
use podlane_core::table::NodeSpec;
use podlane_tests::require_root;
use testbed::link::Switch;
use testbed::podlane::{self, Dataplane};
use testbed::{Netns, Pod, ScratchDir, Service};

struct NodeDef {
    name: &'static str,
    underlay: &'static str,
    vtep: &'static str,
    cidr: &'static str,
}

const NODES: [NodeDef; 3] = [
    NodeDef {
        name: "node-a",
        underlay: "192.168.84.1",
        vtep: "0a:aa:00:00:00:01",
        cidr: "10.244.1.0/24",
    },
    NodeDef {
        name: "node-b",
        underlay: "192.168.84.2",
        vtep: "0a:bb:00:00:00:01",
        cidr: "10.244.2.0/24",
    },
    NodeDef {
        name: "node-c",
        underlay: "192.168.84.3",
        vtep: "0a:cc:00:00:00:01",
        cidr: "10.244.3.0/24",
    },
];

/// The cluster file: `nodes` of NODES, and pods as (name, ip, mac, node, interface).
fn cluster_yaml(nodes: usize, pods: &[(&str, &str, &str, &str, &str)]) -> String {
    let mut text = String::from("nodes:\n");
    for n in &NODES[..nodes] {
        text += &format!(
            "  - {{name: {}, underlay: {}, vtepMAC: \"{}\", podCIDR: {}}}\n",
            n.name, n.underlay, n.vtep, n.cidr
        );
    }
    text += "pods:\n";
    for (name, ip, mac, node, interface) in pods {
        text += &format!(
            "  - {{name: {name}, ip: {ip}, mac: \"{mac}\", node: {node}, interface: {interface}}}\n"
        );
    }
    text
}

/// Rewrites the cluster file so that the agents see a change (atomically, by rename).
fn write_cluster(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A node on the bridged underlay running a dataplane with no tables, and its agent.
fn podlane_node(
    dir: &Path,
    switch: &mut Switch,
    def: &NodeDef,
    cluster: &Path,
) -> anyhow::Result<(Netns, Dataplane, Service)> {
    let ns = Netns::create(&format!("cp{}", &def.name[5..]))?;
    switch.plug(&ns, "uplink", def.underlay)?;
    let daemon = Dataplane::start(
        &ns,
        "uplink",
        &dir.join(format!("{}.log", def.name)),
        &["--node-name", def.name, "--node-ip", def.underlay],
    )?;
    let agent = podlane::agent(
        def.name,
        daemon.socket(),
        cluster,
        &dir.join(format!("agent-{}.log", def.name)),
    )?;
    Ok((ns, daemon, agent))
}

/// `ip -s link` of the namespaces, for a failure's message.
fn kernel_drops(namespaces: &[&Netns]) -> String {
    let mut out = String::new();
    for ns in namespaces {
        let o = Command::new("ip").args(["-n", ns.name(), "-s", "-o", "link"]).output().unwrap();
        let n = Command::new("ip")
            .args(["netns", "exec", ns.name(), "nstat", "-az"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains("Udp") && !l.contains(" 0 "))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        out += &format!("{}:\n{}\n{n}\n", ns.name(), String::from_utf8_lossy(&o.stdout));
    }
    out
}

#[test]
fn control_plane() -> anyhow::Result<()> {
    if !require_root("control_plane") {
        return Ok(());
    }
    let dir = ScratchDir::new("control-plane")?;
    let cluster = dir.path().join("cluster.yaml");
    let mut switch = Switch::new("cpsw")?;

    let a1 = ("a1", "10.244.1.2", "0a:58:0a:f4:01:02", "node-a", "veth-a1");
    let b1 = ("b1", "10.244.2.2", "0a:58:0a:f4:02:02", "node-b", "veth-b1");
    let b2 = ("b2", "10.244.2.3", "0a:58:0a:f4:02:03", "node-b", "veth-b2");
    let b3 = ("b3", "10.244.2.4", "0a:58:0a:f4:02:04", "node-b", "veth-b3");
    let c1 = ("c1", "10.244.3.2", "0a:58:0a:f4:03:02", "node-c", "veth-c1");
    write_cluster(&cluster, &cluster_yaml(2, &[a1, b1, b2]));

    let (node_a, daemon_a, mut agent_a) =
        podlane_node(dir.path(), &mut switch, &NODES[0], &cluster)?;
    let (node_b, mut daemon_b, agent_b) =
        podlane_node(dir.path(), &mut switch, &NODES[1], &cluster)?;
    let pod = |node: &Netns, p: (&str, &str, &str, &str, &str)| Pod::wire(node, p.0, p.4, p.1, p.2);
    let pod_a1 = pod(&node_a, a1)?;
    let pod_b1 = pod(&node_b, b1)?;
    let pod_b2 = pod(&node_b, b2)?;
    let logs = || format!("node-a:\n{}\nnode-b:\n{}", daemon_a.log(), daemon_b.log());
    assert!(pod_a1.ping_until(&pod_b1.ip, true), "a1 → b1 after the first sync\n{}", logs());
    assert!(pod_a1.ping_until(&pod_b2.ip, true), "a1 → b2 after the first sync");

    // The untouched flow: a1 → b1, 5,000 datagrams at 500 a second, echoed back. The stream
    // starts only once the echo server is bound: a datagram before that would be the test's
    // own loss.
    let echo = pod_b1.serve(&["udp-echo", "7000"])?;
    let stream = pod_a1
        .probe(&["udp-stream", &pod_b1.ip, "7000", "5000", "500"])
        .stdout(Stdio::piped())
        .spawn()?;

    // 100 updates a second to node A from a second client: a node that comes and goes.
    let churning = Arc::new(AtomicBool::new(true));
    let churned = Arc::new(AtomicU32::new(0));
    let churn = {
        let (churning, churned, socket) =
            (churning.clone(), churned.clone(), daemon_a.socket().to_owned());
        std::thread::spawn(move || {
            let mut client = Client::connect(&socket, "churn").expect("churn client");
            let node = NodeSpec {
                name: "churn".into(),
                underlay: "192.168.84.99".parse().unwrap(),
                vtep_mac: Some("0a:99:00:00:00:01".parse().unwrap()),
                next_hop_mac: None,
                pod_cidrs: vec!["10.244.99.0/24".parse().unwrap()],
                tunnel_ips: Vec::new(),
            };
            let start = Instant::now();
            let mut i = 0u32;
            while churning.load(Ordering::Relaxed) {
                let update = if i % 2 == 0 {
                    Update { upsert_nodes: vec![node.clone()], ..Update::default() }
                } else {
                    Update { delete_nodes: vec!["churn".into()], ..Update::default() }
                };
                match client.request(&Request::Update(update)).expect("churn update") {
                    Response::Ack { .. } => churned.fetch_add(1, Ordering::Relaxed),
                    other => panic!("churn update refused: {other:?}"),
                };
                i += 1;
                let due = start + Duration::from_millis(10) * i;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            if i % 2 == 1 {
                let _ = client.request(&Request::Update(Update {
                    delete_nodes: vec!["churn".into()],
                    ..Update::default()
                }));
            }
        })
    };

    // Meanwhile, through the agents: b3 added, b2 removed, node C with c1 added.
    std::thread::sleep(Duration::from_secs(1));
    let pod_b3 = pod(&node_b, b3)?;
    write_cluster(&cluster, &cluster_yaml(2, &[a1, b1, b2, b3]));
    assert!(pod_a1.ping_until(&pod_b3.ip, true), "forwarding to the new pod b3 starts\n{}", logs());
    write_cluster(&cluster, &cluster_yaml(2, &[a1, b1, b3]));
    assert!(pod_a1.ping_until(&pod_b2.ip, false), "forwarding to the removed pod b2 stops");
    // Node C joins the cluster file, then comes up (its agent needs its node in the file;
    // its worker attaches c1's veth as soon as it exists).
    write_cluster(&cluster, &cluster_yaml(3, &[a1, b1, b3, c1]));
    let (node_c, daemon_c, _agent_c) = podlane_node(dir.path(), &mut switch, &NODES[2], &cluster)?;
    let pod_c1 = pod(&node_c, c1)?;
    assert!(
        pod_a1.ping_until(&pod_c1.ip, true),
        "forwarding to the new node's pod starts\n{}\nnode-c:\n{}",
        logs(),
        daemon_c.log()
    );

    let output = stream.wait_with_output()?;
    churning.store(false, Ordering::Relaxed);
    churn.join().expect("churn thread");
    drop(echo);
    let report = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let updates = churned.load(Ordering::Relaxed);
    eprintln!("untouched flow: {report}; {updates} churn updates acknowledged");
    let counters = |socket: &Path| {
        let mut client = Client::connect(socket, "test").unwrap();
        let response = client.request(&Request::Query { what: Query::Counters }).unwrap();
        let Response::Counters { workers } = response else { panic!() };
        control::show::counters(&workers)
    };
    assert_eq!(
        report,
        "sent=5000 echoed=5000 lost=0",
        "the untouched flow lost datagrams\nnode-a:\n{}\nnode-b:\n{}\n{}",
        counters(daemon_a.socket()),
        counters(daemon_b.socket()),
        kernel_drops(&[&node_a, &node_b, &pod_a1.ns, &pod_b1.ns])
    );
    assert!(updates >= 500, "only {updates} updates in the stream's 10 s");

    // Node B's dataplane restarts: its agent reconnects and syncs from scratch.
    assert!(daemon_b.stop()?.success(), "{}", daemon_b.log());
    // Same control socket (it follows the log's name); the first run's log is kept aside.
    std::fs::rename(dir.path().join("node-b.log"), dir.path().join("node-b-first.log"))?;
    let mut daemon_b = Dataplane::start(
        &node_b,
        "uplink",
        &dir.path().join("node-b.log"),
        &["--node-name", "node-b", "--node-ip", NODES[1].underlay],
    )?;
    daemon_b.wait_for("pod interface attached", 2)?;
    assert!(pod_a1.ping_until(&pod_b3.ip, true), "after node B's restart\n{}", daemon_b.log());
    let agent_log = agent_b.log();
    assert!(agent_log.contains("reconnecting and syncing from scratch"), "{agent_log}");
    assert!(agent_log.matches("full sync applied").count() >= 2, "{agent_log}");
    drop(agent_b);

    // Read back what node A holds: the three nodes, its one pod, no leftover churn node.
    let mut client = Client::connect(daemon_a.socket(), "test")?;
    let Response::Tables { tables, in_sync, .. } =
        client.request(&Request::Query { what: Query::Tables })?
    else {
        panic!()
    };
    assert!(in_sync);
    let names: Vec<&str> = tables.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b", "node-c"]);

    // A pod that briefly has a1's address (an IP reused before the old pod is gone): left
    // out, a1 untouched, the rest applied; once its address is its own, it is in.
    let a9 = ("a9", "10.244.1.2", "0a:58:0a:f4:01:09", "node-a", "veth-a9");
    write_cluster(&cluster, &cluster_yaml(3, &[a1, b1, b3, c1, a9]));
    agent_a.wait_for("the dataplane left out endpoint default/a9", 1)?;
    let rejected =
        |client: &mut Client| match client.request(&Request::Query { what: Query::Tables }) {
            Ok(Response::Tables { rejected, .. }) => rejected,
            other => panic!("{other:?}"),
        };
    let listed = rejected(&mut client);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        listed[0].message.contains("belongs to both default/a1 and default/a9"),
        "{}",
        listed[0]
    );
    assert!(pod_b3.ping_until(&pod_a1.ip, true), "a1 keeps its address\n{}", daemon_a.log());
    let a9 = ("a9", "10.244.1.9", "0a:58:0a:f4:01:09", "node-a", "veth-a9");
    write_cluster(&cluster, &cluster_yaml(3, &[a1, b1, b3, c1, a9]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rejected(&mut client).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let Response::Tables { tables, rejected, .. } =
        client.request(&Request::Query { what: Query::Tables })?
    else {
        panic!()
    };
    assert!(rejected.is_empty(), "{rejected:?}\n{}", agent_a.log());
    assert!(tables.endpoints.iter().any(|e| e.name == "a9"), "{}", agent_a.log());
    Ok(())
}
