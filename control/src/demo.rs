//! `podlane demo`: a two-node cluster in network namespaces on this machine, README's first
//! command.
//!
//! Node A runs podlane (`podlane-dataplane` driven by `podlane agent` from a cluster file);
//! node B runs the Linux vxlan device configured exactly as Flannel's vxlan backend does.
//! That is podlane's reason to exist: one node swapped onto podlane while the others keep
//! the kernel device, talking to each other on the wire. Two pods per node, and a host outside
//! the cluster on the same switch; node A's kernel has a Service as kube-proxy programs one
//! and masquerades what its pods send out of the cluster. The demo pings every pod from a pod
//! on node A (across nodes and on the same node), sends 10 MB over TCP from node A's pod to
//! node B's and back, connects node A to its pod (as a kubelet probe does), its pod to the
//! Service and to the outside host — through the host interface — prints the tables,
//! counters and configuration the dataplane holds, and removes everything it made — on success, on failure and on Ctrl-C (each piece
//! is owned by a guard that deletes it; the daemon and agent get SIGTERM). Namespaces left by
//! a demo that was killed outright are removed by the next run.

use std::path::Path;
use std::time::{Duration, Instant};

use podlane_core::api::{Query, Request, Response};
use testbed::kernel;
use testbed::link::Switch;
use testbed::{Netns, Pod, ScratchDir, podlane, services};

use crate::client::Client;
use crate::show;
use crate::signals::StopFlag;

const NODE_A: &str = "192.168.99.1";
const NODE_B: &str = "192.168.99.2";
const VTEP_A: &str = "0a:aa:00:00:00:01";
const VTEP_B: &str = "0a:bb:00:00:00:01";
/// The host outside the cluster: on the switch, and at a "public" address (a documentation
/// range; it exists only in its namespace).
const OUTSIDE: &str = "192.168.99.100";
const PUBLIC: &str = "198.51.100.1";
/// A ClusterIP on node A whose backend is b1, on the kernel node.
const SERVICE: &str = "10.96.0.10";

fn step(text: &str) {
    println!("==> {text}");
}

fn ping(from: &Pod, to: &Pod) -> anyhow::Result<String> {
    let (received, summary) = from.ping_summary(&to.ip, 3);
    anyhow::ensure!(received == 3, "ping {} → {} failed: {summary}", from.name, to.name);
    Ok(summary)
}

/// 10 MB over TCP to `to`; the sender's and receiver's digests must agree.
fn tcp(from: &Pod, to: &Pod, port: u16) -> anyhow::Result<String> {
    let transfer = from.tcp_to(to, port, 10_000_000)?;
    anyhow::ensure!(
        transfer.intact(),
        "TCP {} → {}: sent {}, received {}",
        from.name,
        to.name,
        transfer.sent,
        transfer.received
    );
    Ok(format!("10 MB in {:.2} s, intact ({})", transfer.elapsed.as_secs_f64(), transfer.sent))
}

/// 1 MB over TCP from `from` to `address:port`, received in `to` on `sink_port`; intact.
fn transfer(
    from: &Pod,
    to: &Pod,
    address: &str,
    port: u16,
    sink_port: u16,
) -> anyhow::Result<String> {
    let t = from.tcp_via(to, address, port, sink_port, 1_000_000)?;
    anyhow::ensure!(
        t.intact(),
        "TCP {} → {address}: sent {}, received {}",
        from.name,
        t.sent,
        t.received
    );
    Ok(format!("1 MB over TCP, intact ({:.0} ms)", t.elapsed.as_secs_f64() * 1000.0))
}

/// Runs the demo; `dataplane_bin` is the `podlane-dataplane` binary, `podlane_bin` this one.
pub fn run(podlane_bin: &Path, dataplane_bin: &Path, stop: &StopFlag) -> anyhow::Result<()> {
    if !testbed::is_root() {
        anyhow::bail!(
            "podlane demo needs root: it creates network namespaces and attaches XDP programs (run it with sudo)"
        );
    }
    for tool in ["ip", "bridge", "ping", "sysctl", "iptables"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).exists()));
        anyhow::ensure!(
            found,
            "podlane demo needs `{tool}` (Debian: apt-get install iproute2 iputils-ping procps iptables)"
        );
    }
    let probe = testbed::binary("podlane-netprobe");
    for binary in [dataplane_bin, probe.as_path()] {
        anyhow::ensure!(
            binary.is_file(),
            "{} not found: build the workspace first (scripts/run does)",
            binary.display()
        );
    }
    for name in testbed::netns::remove_stale("demo") {
        println!("removed {name}, left by an earlier demo");
    }
    let interrupted = || -> anyhow::Result<()> {
        anyhow::ensure!(!stop.requested(), "interrupted");
        Ok(())
    };

    step(
        "creating the cluster: node A on podlane, node B on the Linux vxlan device as Flannel programs it",
    );
    let scratch = ScratchDir::new("demo")?;
    let mut switch = Switch::new("demo-switch")?;
    let node_a = Netns::create("demo-nodea")?;
    let node_b = Netns::create("demo-nodeb")?;
    let outside = Netns::create("demo-outside")?;
    switch.plug(&node_a, "uplink", NODE_A)?;
    switch.plug(&node_b, "eth0", NODE_B)?;
    switch.plug(&outside, "eth0", OUTSIDE)?;
    outside.ip(&["addr", "add", &format!("{PUBLIC}/32"), "dev", "lo"])?;
    // Node A's kernel: a node's forwarding and default route, kube-proxy's Service, the
    // CNI's masquerade for what leaves the cluster.
    node_a.sysctl(&["net.ipv4.ip_forward=1"])?;
    node_a.ip(&["route", "add", "default", "via", OUTSIDE])?;
    services::install(&node_a)?;
    services::cluster_ip(&node_a, "tcp", (SERVICE, 80), ("10.244.2.2", 8080), "10.244.0.0/16")?;
    services::masquerade_outbound(&node_a, "10.244.0.0/16")?;
    let a1 = Pod::wire(&node_a, "a1", "veth-a1", "10.244.1.2", "0a:58:0a:f4:01:02")?;
    let a2 = Pod::wire(&node_a, "a2", "veth-a2", "10.244.1.3", "0a:58:0a:f4:01:03")?;
    kernel::flannel_node_b(&node_b, "eth0", NODE_B, VTEP_B, NODE_A, VTEP_A)?;
    let b1 = kernel::wire_pod(&node_b, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02")?;
    let b2 = kernel::wire_pod(&node_b, "b2", "veth-b2", "10.244.2.3", "0a:58:0a:f4:02:03")?;
    interrupted()?;

    let cluster = scratch.path().join("cluster.yaml");
    std::fs::write(&cluster, CLUSTER)?;
    step(&format!(
        "starting podlane-dataplane on node A and `podlane agent --cluster {}`",
        cluster.display()
    ));
    let daemon = podlane::Dataplane::start_binary(
        dataplane_bin,
        &node_a,
        "uplink",
        &scratch.path().join("dataplane.log"),
        &["--node-name", "node-a", "--node-ip", NODE_A, "--profile", "flannel"],
    )?;
    let agent = podlane::agent_binary(
        podlane_bin,
        "node-a",
        daemon.socket(),
        &cluster,
        &scratch.path().join("agent.log"),
    )?;
    let outside = Pod::wrap(outside, "outside", PUBLIC);
    let result = exercise(daemon.socket(), [&a1, &a2, &b1, &b2], (&node_a, &outside), &interrupted);
    if result.is_err() {
        for service in [&*daemon, &agent] {
            eprintln!("--- {} ---\n{}", service.name(), service.log().trim_end());
        }
    }
    step("cleaning up: stopping the daemon and the agent, deleting the namespaces");
    drop(agent);
    drop(daemon);
    drop((a1, a2, b1, b2, outside, node_a, node_b, switch));
    drop(scratch);
    result?;
    println!("done: nothing of the demo is left on this machine");
    Ok(())
}

fn wait_synced(
    socket: &Path,
    interrupted: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        interrupted()?;
        if let Ok(mut client) = Client::connect(socket, "podlane-demo")
            && let Ok(Response::Tables { in_sync: true, tables, .. }) =
                client.request(&Request::Query { what: Query::Tables })
            && tables.nodes.iter().all(|n| n.name == "node-a" || n.next_hop_mac.is_some())
        {
            return Ok(client);
        }
        anyhow::ensure!(Instant::now() < deadline, "the dataplane was not in sync after 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn exercise(
    socket: &Path,
    pods: [&Pod; 4],
    (node_a, outside): (&Netns, &Pod),
    interrupted: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let [a1, a2, b1, b2] = pods;
    let mut client = wait_synced(socket, interrupted)?;
    // The pod veths are attached a moment after the tables arrive.
    std::thread::sleep(Duration::from_millis(300));
    step("ping");
    for (from, to) in [(a1, b1), (a1, b2), (a1, a2), (b2, a2)] {
        interrupted()?;
        println!("    {} → {}: {}", from.name, to.name, ping(from, to)?);
    }
    step("TCP");
    println!("    a1 → b1: {}", tcp(a1, b1, 5001)?);
    interrupted()?;
    println!("    b1 → a1: {}", tcp(b1, a1, 5002)?);
    step("the host path: the node's kernel and the overlay, through podlane0");
    interrupted()?;
    let node = Pod::in_namespace(node_a, NODE_A);
    let probe = transfer(&node, a1, &a1.ip, 8080, 8080)?;
    println!("    node A → a1 (as a kubelet probe): {probe}");
    let service = transfer(a1, b1, SERVICE, 80, 8080)?;
    println!("    a1 → Service {SERVICE}:80 (kube-proxy's DNAT to b1:8080 on node B): {service}");
    let out = transfer(a1, outside, PUBLIC, 8090, 8090)?;
    println!("    a1 → {PUBLIC}, outside the cluster (masqueraded by node A): {out}");
    let Response::Tables { generation, tables, .. } =
        client.request(&Request::Query { what: Query::Tables })?
    else {
        anyhow::bail!("unexpected reply to a tables query");
    };
    step(&format!("what node A's dataplane holds (generation {generation}; `podlane show ...`)"));
    for (title, text) in [
        ("nodes", show::nodes(&tables)),
        ("endpoints", show::endpoints(&tables)),
        ("routes", show::routes(&tables)),
        ("policy", show::policy(&tables)),
    ] {
        println!("--- {title}");
        print!("{text}");
    }
    if let Response::Config { config } = client.request(&Request::Query { what: Query::Config })? {
        println!("--- config");
        print!("{}", show::config(&config));
    }
    // Workers publish their counters once a second.
    std::thread::sleep(Duration::from_millis(1100));
    if let Response::Counters { workers } =
        client.request(&Request::Query { what: Query::Counters })?
    {
        println!("--- counters");
        print!("{}", show::counters(&workers));
    }
    Ok(())
}

/// The cluster the agent reads: both nodes, all four pods, and a NetworkPolicy that lets
/// only node B's pods and a1 reach a2 (its effect shows in `policy` and the counters).
const CLUSTER: &str = r#"# podlane demo cluster (docs/cluster.md)
nodes:
  - {name: node-a, underlay: 192.168.99.1, vtepMAC: "0a:aa:00:00:00:01", podCIDR: 10.244.1.0/24}
  - {name: node-b, underlay: 192.168.99.2, vtepMAC: "0a:bb:00:00:00:01", podCIDR: 10.244.2.0/24}
pods:
  - {name: a1, ip: 10.244.1.2, mac: "0a:58:0a:f4:01:02", node: node-a, interface: veth-a1, labels: {app: client}}
  - {name: a2, ip: 10.244.1.3, mac: "0a:58:0a:f4:01:03", node: node-a, interface: veth-a2, labels: {app: web}}
  - {name: b1, ip: 10.244.2.2, mac: "0a:58:0a:f4:02:02", node: node-b, interface: veth-b1, labels: {app: web}}
  - {name: b2, ip: 10.244.2.3, mac: "0a:58:0a:f4:02:03", node: node-b, interface: veth-b2, labels: {app: api}}
networkPolicies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: web-ingress}
    spec:
      podSelector: {matchLabels: {app: web}}
      policyTypes: [Ingress]
      ingress:
        - from:
            - podSelector: {matchExpressions: [{key: app, operator: In, values: [client, api]}]}
            - ipBlock: {cidr: 10.244.2.0/24}
"#;
