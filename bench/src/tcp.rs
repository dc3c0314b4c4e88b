//! `podlane-bench tcp`: TCP throughput over the paths a node's traffic takes, through podlane
//! and through the kernel's VXLAN, side by side, measured with iperf3 between network
//! namespaces (docs/bench.md).
//!
//! Each dataplane gets a cluster of its own, built with the testbed: two nodes on a veth
//! underlay, pods a1 and a2 on node A, b1 on node B. For the kernel, both nodes run the Linux
//! vxlan device as Flannel programs it, pods wired as Calico wires them (a /32 route to each
//! pod's veth); for podlane, both run `podlane-dataplane`, whose host interface carries the
//! node's own traffic. The paths:
//!
//! * `host-pod` — node A's own TCP to its pod a1, as an ingress controller or a kubelet on the
//!   node (through the host interface, for podlane);
//! * `host-remote-pod` — node A to b1 on node B;
//! * `pod-remote-pod` — a1 to b1;
//! * `pod-pod` — a1 to a2 on the same node.
//!
//! Per run: throughput as iperf3's receiver counts it, the sender's retransmissions, and CPU
//! from /proc/stat over the run (all cores: both nodes, both ends, softirq included), as
//! seconds of CPU per gigabit carried.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use testbed::kernel::{self, RemoteNode};
use testbed::podlane::Dataplane as Daemon;
use testbed::{Background, Netns, Pod, ScratchDir, link, tables};

use crate::cpu;

/// Which dataplane the two nodes run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TcpDataplane {
    /// The Linux vxlan device on both nodes, as Flannel programs it.
    Kernel,
    /// podlane-dataplane on both nodes.
    Podlane,
}

/// The path a run's TCP takes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TcpPath {
    /// Node A to its own pod.
    HostPod,
    /// Node A to a pod on node B.
    HostRemotePod,
    /// A pod on node A to a pod on node B.
    PodRemotePod,
    /// A pod to a pod on the same node.
    PodPod,
}

impl TcpDataplane {
    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Podlane => "podlane",
        }
    }
}

impl TcpPath {
    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::HostPod => "host-pod",
            Self::HostRemotePod => "host-remote-pod",
            Self::PodRemotePod => "pod-remote-pod",
            Self::PodPod => "pod-pod",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub dataplanes: Vec<TcpDataplane>,
    pub paths: Vec<TcpPath>,
    pub streams: Vec<u32>,
    pub seconds: u32,
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The underlay the nodes share (`veth`: a veth pair, which never segments).
    pub underlay: String,
    pub dataplane: TcpDataplane,
    pub path: TcpPath,
    pub streams: u32,
    pub seconds: f64,
    /// Received, in Gbit/s.
    pub gbps: f64,
    pub retransmits: u64,
    /// CPU busy over the run, all cores, in seconds, per gigabit received.
    pub cpu_s_per_gbit: f64,
}

/// A two-node cluster of one dataplane.
struct Cluster {
    a1: Pod,
    a2: Pod,
    b1: Pod,
    _daemons: Vec<Daemon>,
    node_a: Netns,
    _node_b: Netns,
    _dir: ScratchDir,
}

const NODE_A: &str = "192.168.87.1";
const NODE_B: &str = "192.168.87.2";
const VTEP_A: &str = "0a:aa:00:00:00:01";
const VTEP_B: &str = "0a:bb:00:00:00:01";

impl Cluster {
    fn build(dataplane: TcpDataplane) -> anyhow::Result<Cluster> {
        let dir = ScratchDir::new("bench-tcp")?;
        let node_a = Netns::create("bench-tcpa")?;
        let node_b = Netns::create("bench-tcpb")?;
        link::underlay((&node_a, "uplink", NODE_A), (&node_b, "uplink", NODE_B), 1)?;
        let pods = [
            (&node_a, "a1", "veth-a1", "10.244.1.2", "0a:58:0a:f4:01:02"),
            (&node_a, "a2", "veth-a2", "10.244.1.3", "0a:58:0a:f4:01:03"),
            (&node_b, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02"),
        ];
        let (a1, a2, b1, daemons) = match dataplane {
            TcpDataplane::Kernel => {
                for (node, local, vtep, overlay, remote) in [
                    (
                        &node_a,
                        NODE_A,
                        VTEP_A,
                        "10.244.1.0",
                        RemoteNode {
                            underlay: NODE_B,
                            vtep_mac: VTEP_B,
                            pod_cidr: "10.244.2.0/24",
                            gateway: "10.244.2.0",
                        },
                    ),
                    (
                        &node_b,
                        NODE_B,
                        VTEP_B,
                        "10.244.2.0",
                        RemoteNode {
                            underlay: NODE_A,
                            vtep_mac: VTEP_A,
                            pod_cidr: "10.244.1.0/24",
                            gateway: "10.244.1.0",
                        },
                    ),
                ] {
                    kernel::vxlan_node(
                        node,
                        kernel::FLANNEL,
                        "uplink",
                        local,
                        vtep,
                        overlay,
                        &remote,
                    )?;
                }
                let [a1, a2, b1] = pods.map(|(node, name, host_if, ip, mac)| {
                    kernel::wire_pod(node, name, host_if, ip, mac)
                });
                (a1?, a2?, b1?, Vec::new())
            }
            TcpDataplane::Podlane => {
                let [a1, a2, b1] = pods
                    .map(|(node, name, host_if, ip, mac)| Pod::wire(node, name, host_if, ip, mac));
                let (a1, a2, b1) = (a1?, a2?, b1?);
                let nodes = [
                    tables::node("node-a", NODE_A, VTEP_A, "10.244.1.0/24")?,
                    tables::node("node-b", NODE_B, VTEP_B, "10.244.2.0/24")?,
                ];
                let mut daemons = Vec::new();
                for (name, node, pods, count) in
                    [("node-a", &node_a, vec![&a1, &a2], 2), ("node-b", &node_b, vec![&b1], 1)]
                {
                    let file = dir.path().join(format!("{name}.json"));
                    tables::write(&file, &tables::for_node(name, &nodes, &pods)?)?;
                    let log = dir.path().join(format!("{name}.log"));
                    let mut daemon = Daemon::with_tables(node, "uplink", &file, &log, &[])?;
                    daemon.wait_ready(count)?;
                    daemon.wait_for("routes to pod CIDRs installed", 1)?;
                    daemons.push(daemon);
                }
                (a1, a2, b1, daemons)
            }
        };
        Ok(Cluster { a1, a2, b1, _daemons: daemons, node_a, _node_b: node_b, _dir: dir })
    }

    /// The sender and the receiver of a path.
    fn ends(&self, path: TcpPath) -> (Pod, &Pod) {
        let host = Pod::in_namespace(&self.node_a, NODE_A);
        match path {
            TcpPath::HostPod => (host, &self.a1),
            TcpPath::HostRemotePod => (host, &self.b1),
            TcpPath::PodRemotePod => (Pod::in_namespace(&self.a1.ns, &self.a1.ip), &self.b1),
            TcpPath::PodPod => (Pod::in_namespace(&self.a1.ns, &self.a1.ip), &self.a2),
        }
    }
}

/// iperf3's summary, the parts used here.
#[derive(Debug, Deserialize)]
struct Iperf {
    end: IperfEnd,
}

#[derive(Debug, Deserialize)]
struct IperfEnd {
    sum_received: IperfSum,
    sum_sent: IperfSum,
}

#[derive(Debug, Deserialize)]
struct IperfSum {
    seconds: f64,
    bits_per_second: f64,
    #[serde(default)]
    retransmits: u64,
}

/// One iperf3 run from `from` to `to`.
fn iperf(
    from: &Pod,
    to: &Pod,
    streams: u32,
    seconds: u32,
) -> anyhow::Result<(Iperf, Vec<cpu::CoreUse>)> {
    let mut server = to
        .ns
        .command("iperf3")
        .args(["-s", "-1", "-p", "5201", "--forceflush"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (Debian: apt-get install iperf3)")?;
    let stdout = server.stdout.take().context("iperf3's output")?;
    let _server = Background(server);
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    while !line.contains("listening") {
        line.clear();
        anyhow::ensure!(reader.read_line(&mut line)? > 0, "iperf3 -s did not start");
    }
    let before = cpu::sample();
    let out = from
        .ns
        .command("iperf3")
        .args(["-c", &to.ip, "-p", "5201", "-J"])
        .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
        .output()?;
    let after = cpu::sample();
    anyhow::ensure!(
        out.status.success(),
        "iperf3 {} → {}: {}{}",
        from.name,
        to.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Iperf = serde_json::from_slice(&out.stdout).context("iperf3's JSON")?;
    Ok((report, cpu::between(&before, &after)))
}

/// Runs every configured cell; `progress` is told each one.
pub fn run(config: &Config, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &dataplane in &config.dataplanes {
        progress(&format!("building the {} cluster", dataplane.name()));
        let cluster = Cluster::build(dataplane)?;
        // Neighbour entries and, for podlane, the pods' fill rings warm up.
        std::thread::sleep(Duration::from_millis(300));
        for &path in &config.paths {
            for &streams in &config.streams {
                let cell = format!("{} {} {streams} stream(s)", dataplane.name(), path.name());
                progress(&cell);
                let (from, to) = cluster.ends(path);
                let (report, cores) =
                    iperf(&from, to, streams, config.seconds).with_context(|| cell.clone())?;
                let received = &report.end.sum_received;
                let gigabits = received.bits_per_second * received.seconds / 1e9;
                let busy_s: f64 = cores.iter().map(|c| c.busy_ns as f64 / 1e9).sum();
                rows.push(Row {
                    underlay: "veth".into(),
                    dataplane,
                    path,
                    streams,
                    seconds: received.seconds,
                    gbps: received.bits_per_second / 1e9,
                    retransmits: report.end.sum_sent.retransmits,
                    cpu_s_per_gbit: if gigabits > 0.0 { busy_s / gigabits } else { 0.0 },
                });
            }
        }
    }
    Ok(rows)
}

/// The results as a table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<9} {:<16} {:<9} {:>7} {:>8} {:>13} {:>14}\n",
        "underlay", "path", "dataplane", "streams", "Gbit/s", "retransmits", "CPU s / Gbit"
    );
    for r in rows {
        out += &format!(
            "{:<9} {:<16} {:<9} {:>7} {:>8.2} {:>13} {:>14.3}\n",
            r.underlay,
            r.path.name(),
            r.dataplane.name(),
            r.streams,
            r.gbps,
            r.retransmits,
            r.cpu_s_per_gbit
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The names printed in tables are the ones the command line and the JSON use.
    #[test]
    fn names_match_the_command_line_and_the_json() {
        for dataplane in TcpDataplane::value_variants() {
            let cli = dataplane.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), dataplane.name());
            assert_eq!(serde_json::to_value(dataplane).unwrap(), dataplane.name());
        }
        for path in TcpPath::value_variants() {
            let cli = path.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), path.name());
            assert_eq!(serde_json::to_value(path).unwrap(), path.name());
        }
    }
}
