//! `podlane demo`: a two-node cluster in network namespaces on this machine, README's first
//! command.
//!
//! Node A runs podlane (`podlane-dataplane` driven by `podlane agent` from a cluster file);
//! node B runs the Linux vxlan device configured exactly as Flannel's vxlan backend does.
//! That is podlane's reason to exist: one node swapped onto podlane while the others keep
//! the kernel device, talking to each other on the wire. Two pods per node. The demo pings
//! every pod from a pod on node A (across nodes and on the same node), sends 10 MB over TCP
//! from node A's pod to node B's and back, prints the tables and counters the dataplane
//! holds, and removes everything it made — on success, on failure and on Ctrl-C (each piece
//! is owned by a guard that deletes it; the daemon and agent get SIGTERM). Namespaces left by
//! a demo that was killed outright are removed by the next run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::api::{Query, Request, Response};

use crate::client::Client;
use crate::netns::{self, Netns, RemoteNode};
use crate::show;

const NODE_A: &str = "192.168.99.1";
const NODE_B: &str = "192.168.99.2";
const VTEP_A: &str = "0a:aa:00:00:00:01";
const VTEP_B: &str = "0a:bb:00:00:00:01";

/// A process killed and reaped when dropped (SIGTERM first, so the daemon detaches cleanly).
struct Process {
    name: &'static str,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{} had to be killed", self.name);
    }
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn interrupted() -> anyhow::Result<()> {
    if dataplane::io::stop_requested() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Deletes `podlane-demo*` namespaces whose creating process is gone.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("podlane-demo") else { continue };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            println!("removed {name}, left by an earlier demo");
        }
    }
}

fn step(text: &str) {
    println!("==> {text}");
}

/// A pod: its namespace and address.
struct DemoPod {
    ns: Netns,
    name: &'static str,
    ip: &'static str,
}

impl DemoPod {
    fn probe(&self, exe: &Path, args: &[&str]) -> Command {
        let mut cmd = self.ns.command(exe);
        cmd.arg("probe").args(args);
        cmd
    }

    fn ping(&self, to: &DemoPod) -> anyhow::Result<String> {
        let out = self
            .ns
            .command("ping")
            .args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", to.ip])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let summary =
            text.lines().find(|l| l.contains("received")).unwrap_or("no reply").to_owned();
        if !out.status.success() {
            anyhow::bail!("ping {} → {} failed: {summary}", self.name, to.name);
        }
        Ok(summary)
    }

    /// 10 MB over TCP to `to`; the sender's and receiver's digests must agree.
    fn tcp(&self, exe: &Path, to: &DemoPod, port: &str) -> anyhow::Result<String> {
        let mut sink = to.probe(exe, &["tcp-sink", port]).stdout(Stdio::piped()).spawn()?;
        let mut lines = BufReader::new(sink.stdout.take().expect("piped")).lines();
        let ready = lines.next().transpose()?.unwrap_or_default();
        anyhow::ensure!(ready == "ready", "the TCP receiver in {} did not start", to.name);
        let sink = Process { name: "tcp receiver", child: sink };
        let started = Instant::now();
        let out = self.probe(exe, &["tcp-send", to.ip, port, "10000000"]).output()?;
        let elapsed = started.elapsed();
        let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        anyhow::ensure!(
            out.status.success(),
            "TCP {} → {} failed: {}",
            self.name,
            to.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let received = lines.next().transpose()?.unwrap_or_default();
        drop(sink);
        anyhow::ensure!(
            sent == received,
            "TCP {} → {}: sent {sent}, received {received}",
            self.name,
            to.name
        );
        Ok(format!("10 MB in {:.2} s, intact ({sent})", elapsed.as_secs_f64()))
    }
}

/// Runs the demo; `exe` is this `podlane` binary, `dataplane` the `podlane-dataplane` one.
pub fn run(exe: &Path, dataplane_bin: &Path) -> anyhow::Result<()> {
    if !netns::is_root() {
        anyhow::bail!(
            "podlane demo needs root: it creates network namespaces and attaches XDP programs (run it with sudo)"
        );
    }
    for tool in ["ip", "bridge", "ping", "sysctl"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).exists()));
        anyhow::ensure!(
            found,
            "podlane demo needs `{tool}` (Debian: apt-get install iproute2 iputils-ping procps)"
        );
    }
    anyhow::ensure!(
        dataplane_bin.exists(),
        "{} not found: build the workspace first",
        dataplane_bin.display()
    );
    dataplane::io::install_stop_handlers()?;
    remove_leftovers();

    step(
        "creating the cluster: node A on podlane, node B on the Linux vxlan device as Flannel programs it",
    );
    let scratch =
        Scratch(std::env::temp_dir().join(format!("podlane-demo-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    let node_a = Netns::create("demo-nodea")?;
    let node_b = Netns::create("demo-nodeb")?;
    netns::underlay((&node_a, "uplink", NODE_A), (&node_b, "eth0", NODE_B), 1)?;
    let pod = |node: &Netns,
               name: &'static str,
               host_if: &str,
               ip: &'static str,
               mac: &str,
               kernel: bool|
     -> anyhow::Result<DemoPod> {
        let ns = Netns::create("demo-pod")?;
        if kernel {
            netns::wire_kernel_pod(node, &ns, host_if, ip, mac)?;
        } else {
            netns::wire_pod(node, &ns, host_if, ip, mac)?;
        }
        Ok(DemoPod { ns, name, ip })
    };
    let a1 = pod(&node_a, "a1", "veth-a1", "10.244.1.2", "0a:58:0a:f4:01:02", false)?;
    let a2 = pod(&node_a, "a2", "veth-a2", "10.244.1.3", "0a:58:0a:f4:01:03", false)?;
    let remote = RemoteNode {
        underlay: NODE_A,
        vtep_mac: VTEP_A,
        pod_cidr: "10.244.1.0/24",
        gateway: "10.244.1.0",
    };
    netns::kernel_vxlan_node(
        &node_b,
        netns::FLANNEL,
        "eth0",
        NODE_B,
        VTEP_B,
        "10.244.2.0",
        &remote,
    )?;
    let b1 = pod(&node_b, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02", true)?;
    let b2 = pod(&node_b, "b2", "veth-b2", "10.244.2.3", "0a:58:0a:f4:02:03", true)?;
    interrupted()?;

    let cluster = scratch.0.join("cluster.yaml");
    std::fs::write(&cluster, CLUSTER)?;
    let socket = scratch.0.join("dataplane.sock");
    step(&format!(
        "starting podlane-dataplane on node A and `podlane agent --cluster {}`",
        cluster.display()
    ));
    let log = std::fs::File::create(scratch.0.join("dataplane.log"))?;
    let daemon = Process {
        name: "podlane-dataplane",
        child: node_a
            .command(dataplane_bin)
            .args([
                "--uplink",
                "uplink",
                "--node-name",
                "node-a",
                "--node-ip",
                NODE_A,
                "--profile",
                "flannel",
            ])
            .arg("--control-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    };
    let agent_log = std::fs::File::create(scratch.0.join("agent.log"))?;
    let agent = Process {
        name: "podlane agent",
        child: Command::new(exe)
            .arg("--socket")
            .arg(&socket)
            .args(["agent", "--node", "node-a", "--cluster"])
            .arg(&cluster)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(agent_log)
            .spawn()?,
    };
    let result = exercise(&socket, exe, [&a1, &a2, &b1, &b2]);
    if result.is_err() {
        for file in ["dataplane.log", "agent.log"] {
            let text = std::fs::read_to_string(scratch.0.join(file)).unwrap_or_default();
            eprintln!("--- {file} ---\n{}", text.trim_end());
        }
    }
    step("cleaning up: stopping the daemon and the agent, deleting the namespaces");
    drop(agent);
    drop(daemon);
    drop((a1, a2, b1, b2, node_a, node_b));
    drop(scratch);
    result?;
    println!("done: nothing of the demo is left on this machine");
    Ok(())
}

fn wait_synced(socket: &Path) -> anyhow::Result<Client> {
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

fn exercise(socket: &Path, exe: &Path, pods: [&DemoPod; 4]) -> anyhow::Result<()> {
    let [a1, a2, b1, b2] = pods;
    let mut client = wait_synced(socket)?;
    // The pod veths are attached a moment after the tables arrive.
    std::thread::sleep(Duration::from_millis(300));
    step("ping");
    for (from, to) in [(a1, b1), (a1, b2), (a1, a2), (b2, a2)] {
        interrupted()?;
        println!("    {} → {}: {}", from.name, to.name, from.ping(to)?);
    }
    step("TCP");
    println!("    a1 → b1: {}", a1.tcp(exe, b1, "5001")?);
    interrupted()?;
    println!("    b1 → a1: {}", b1.tcp(exe, a1, "5002")?);
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
