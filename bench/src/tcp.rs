//! `podlane-bench tcp`: pod-to-pod TCP through podlane and through the kernel's VXLAN, side
//! by side: throughput with iperf3 (1 and 4 streams), CPU per gigabit, retransmissions, and
//! request/response rate and latency of small messages (`podlane-netprobe tcp-rr`), on two
//! underlays (docs/bench.md).
//!
//! Two nodes in network namespaces share an underlay, with pods a1 and a2 on node A and b1 on
//! node B. A node runs either the Linux vxlan device as Flannel programs it, its pods wired as
//! Calico wires them (a veth and a /32 route), or `podlane-dataplane`, its pods wired with the
//! chosen pod edge (`--pod-edge`: a TAP device in the pod with offloads, the default, or a
//! veth). The pairs:
//!
//! * `kernel-kernel`, `podlane-podlane`, `podlane-kernel` — a1 on node A to b1 on node B, the
//!   nodes running the named dataplanes (A first);
//! * `kernel-same-node`, `podlane-same-node` — a1 to a2 on node A;
//! * `kernel-service`, `podlane-service` — a1 to a ClusterIP Service on node A whose backend
//!   is a2: node A's kernel translates the address as kube-proxy's iptables mode programs it
//!   (DNAT from PREROUTING), so with podlane the traffic goes out of the overlay into the
//!   node's kernel through the host interface and back in, both ways.
//!
//! The underlays:
//!
//! * `veth` — a veth pair with its defaults: it never segments, a 64 KiB packet crosses whole;
//! * `nic` — the same veth pair set to behave as a NIC without tunnel offloads: TSO, GSO and
//!   UDP-tunnel segmentation off (the sender's kernel cuts every packet to the MTU before it
//!   leaves), GRO on at the receiver.
//!
//! CPU is read from /proc/stat over each run: all cores (both nodes, both ends, softirq
//! included), as seconds of CPU per gigabit received.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use testbed::kernel::{self, RemoteNode};
use testbed::podlane::Dataplane as Daemon;
use testbed::{Background, Netns, Pod, ScratchDir, link, services, tables};

use crate::{cpu, interrupt};

/// The underlay the two nodes share.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Underlay {
    /// A veth pair as it comes: nothing is ever segmented on it.
    Veth,
    /// A veth pair without TSO, GSO or UDP-tunnel segmentation, GRO on: a NIC without tunnel
    /// offloads.
    Nic,
}

/// Which nodes run what, and between which pods.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Pair {
    /// Both nodes on the kernel's VXLAN; a pod on A to a pod on B.
    KernelKernel,
    /// Both nodes on podlane; a pod on A to a pod on B.
    PodlanePodlane,
    /// Node A on podlane, node B on the kernel's VXLAN; a pod on A to a pod on B.
    PodlaneKernel,
    /// Two pods of a kernel node.
    KernelSameNode,
    /// Two pods of a podlane node.
    PodlaneSameNode,
    /// A pod of a kernel node to a Service whose backend is another pod of the node.
    KernelService,
    /// A pod of a podlane node to a Service whose backend is another pod of the node, through
    /// the node's kernel.
    PodlaneService,
}

/// The pod edge of podlane's pods.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Edge {
    /// A TAP device in the pod, with TSO and checksum offloads.
    Tap,
    /// A veth pair, as Calico and Flannel wire pods.
    Veth,
}

/// How podlane's workers wait when idle (`podlane-dataplane --poll`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Poll {
    /// In poll(2), woken by the kernel: no CPU when idle, a wake-up per burst.
    Event,
    /// Spinning: a core each, always.
    Spin,
}

impl Poll {
    pub fn name(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Spin => "spin",
        }
    }
}

/// What a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Kernel,
    Podlane,
}

impl Underlay {
    pub fn name(self) -> &'static str {
        match self {
            Self::Veth => "veth",
            Self::Nic => "nic",
        }
    }
}

impl Pair {
    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::KernelKernel => "kernel-kernel",
            Self::PodlanePodlane => "podlane-podlane",
            Self::PodlaneKernel => "podlane-kernel",
            Self::KernelSameNode => "kernel-same-node",
            Self::PodlaneSameNode => "podlane-same-node",
            Self::KernelService => "kernel-service",
            Self::PodlaneService => "podlane-service",
        }
    }

    /// The cluster the pair runs on: what nodes A and B run, and whether node A's kernel has
    /// the Service (kube-proxy's rules load connection tracking into the node's kernel, which
    /// the other pairs run without).
    fn cluster(self) -> ((NodeKind, NodeKind), bool) {
        let nodes = match self {
            Self::KernelKernel | Self::KernelSameNode | Self::KernelService => {
                (NodeKind::Kernel, NodeKind::Kernel)
            }
            Self::PodlanePodlane | Self::PodlaneSameNode | Self::PodlaneService => {
                (NodeKind::Podlane, NodeKind::Podlane)
            }
            Self::PodlaneKernel => (NodeKind::Podlane, NodeKind::Kernel),
        };
        (nodes, self.service())
    }

    fn same_node(self) -> bool {
        matches!(self, Self::KernelSameNode | Self::PodlaneSameNode)
    }

    fn service(self) -> bool {
        matches!(self, Self::KernelService | Self::PodlaneService)
    }

    /// Whether podlane carries the pair's traffic anywhere (its pod edge applies).
    fn uses_podlane(self) -> bool {
        !matches!(self, Self::KernelKernel | Self::KernelSameNode | Self::KernelService)
    }
}

impl Edge {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tap => "tap",
            Self::Veth => "veth",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub underlays: Vec<Underlay>,
    pub pairs: Vec<Pair>,
    pub streams: Vec<u32>,
    pub seconds: u32,
    /// podlane's pod edge.
    pub pod_edge: Edge,
    /// How podlane's workers wait.
    pub poll: Poll,
    /// podlane's workers per node (pinned to cores 0 to N-1; 1: one unpinned worker); the
    /// underlay veth has as many queues, since podlane runs one worker per uplink queue at
    /// most.
    pub workers: usize,
    /// SCHED_FIFO priority of podlane's workers, if any.
    pub realtime_priority: Option<u8>,
    /// Length of each request/response run, and its message size.
    pub rr_seconds: f64,
    pub rr_bytes: usize,
}

/// One throughput run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub underlay: Underlay,
    pub pair: Pair,
    /// The pod edge of podlane's pods (`null` where only the kernel carries the traffic).
    pub pod_edge: Option<Edge>,
    pub streams: u32,
    pub seconds: f64,
    /// Received, in Gbit/s.
    pub gbps: f64,
    pub retransmits: u64,
    /// CPU busy over the run, all cores, in seconds, per gigabit received.
    pub cpu_s_per_gbit: f64,
}

/// One request/response run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RrRow {
    pub underlay: Underlay,
    pub pair: Pair,
    pub pod_edge: Option<Edge>,
    pub message_bytes: usize,
    pub transactions_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// A two-node cluster.
struct Cluster {
    a1: Pod,
    a2: Pod,
    b1: Pod,
    _daemons: Vec<Daemon>,
    _node_a: Netns,
    _node_b: Netns,
    _dir: ScratchDir,
}

const NODE_A: &str = "192.168.87.1";
const NODE_B: &str = "192.168.87.2";
const VTEP_A: &str = "0a:aa:00:00:00:01";
const VTEP_B: &str = "0a:bb:00:00:00:01";
/// The Service of the `*-service` pairs, on node A, backed by a2.
const SERVICE: (&str, u16) = ("10.96.0.10", 5201);
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The pods' MTU: a 1500-byte underlay less VXLAN's 50 bytes.
const POD_MTU: u32 = 1450;

impl Cluster {
    fn build(
        underlay: Underlay,
        ((a, b), service): ((NodeKind, NodeKind), bool),
        config: &Config,
    ) -> anyhow::Result<Self> {
        let (edge, poll) = (config.pod_edge, config.poll);
        let cores = (0..config.workers).map(|c| c.to_string()).collect::<Vec<_>>().join(",");
        let dir = ScratchDir::new("bench-tcp")?;
        let node_a = Netns::create("bench-tcpa")?;
        let node_b = Netns::create("bench-tcpb")?;
        // One queue per worker: podlane runs a worker per uplink queue at most.
        let queues = config.workers as u32;
        link::underlay((&node_a, "uplink", NODE_A), (&node_b, "uplink", NODE_B), queues)?;
        if underlay == Underlay::Nic {
            // Both ends as a NIC without tunnel offloads, coalescing what it receives.
            let mut features = link::NO_SEGMENTATION_OFFLOADS.to_vec();
            features.extend(["gro", "on"]);
            for node in [&node_a, &node_b] {
                link::set_features(node, "uplink", &features)?;
            }
        }
        // Per node: namespace, name, underlay address, VTEP MAC, tunnel address (Flannel's
        // first address of the subnet), pod CIDR, dataplane.
        let nodes = [
            (&node_a, "node-a", NODE_A, VTEP_A, "10.244.1.0", "10.244.1.0/24", a),
            (&node_b, "node-b", NODE_B, VTEP_B, "10.244.2.0", "10.244.2.0/24", b),
        ];
        let pods = [
            (0, "a1", "veth-a1", "10.244.1.2", "0a:58:0a:f4:01:02"),
            (0, "a2", "veth-a2", "10.244.1.3", "0a:58:0a:f4:01:03"),
            (1, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02"),
        ];
        let mut wired = Vec::new();
        for (node, name, host_if, ip, mac) in pods {
            let (ns, .., kind) = nodes[node];
            wired.push(match (kind, edge) {
                (NodeKind::Kernel, _) => kernel::wire_pod(ns, name, host_if, ip, mac)?,
                (NodeKind::Podlane, Edge::Veth) => Pod::wire(ns, name, host_if, ip, mac)?,
                (NodeKind::Podlane, Edge::Tap) => {
                    Pod::wire_tap(ns, name, (ip, None), mac, POD_MTU)?
                }
            });
        }
        let mut specs = Vec::new();
        for (_, name, underlay_ip, vtep, tunnel, cidr, _) in nodes {
            let mut spec = tables::node(name, underlay_ip, vtep, cidr)?;
            spec.tunnel_ips = vec![tunnel.parse()?];
            specs.push(spec);
        }
        let mut daemons = Vec::new();
        for (i, (ns, name, underlay_ip, vtep, tunnel, _, kind)) in nodes.into_iter().enumerate() {
            let (_, _, other_ip, other_vtep, other_tunnel, other_cidr, _) = nodes[1 - i];
            let local_pods: Vec<&Pod> =
                if i == 0 { vec![&wired[0], &wired[1]] } else { vec![&wired[2]] };
            match kind {
                NodeKind::Kernel => {
                    let remote = RemoteNode {
                        underlay: other_ip,
                        vtep_mac: other_vtep,
                        pod_cidr: other_cidr,
                        gateway: other_tunnel,
                    };
                    kernel::vxlan_node(
                        ns,
                        kernel::FLANNEL,
                        "uplink",
                        underlay_ip,
                        vtep,
                        tunnel,
                        &remote,
                    )?;
                }
                NodeKind::Podlane => {
                    let file = dir.path().join(format!("{name}.json"));
                    tables::write(&file, &tables::for_node(name, &specs, &local_pods)?)?;
                    let log = dir.path().join(format!("{name}.log"));
                    let mut args = vec!["--profile", "flannel", "--poll", poll.name()];
                    if config.workers > 1 {
                        args.extend(["--cores", &cores]);
                    }
                    let priority = config.realtime_priority.map(|p| p.to_string());
                    if let Some(priority) = &priority {
                        args.extend(["--realtime-priority", priority]);
                    }
                    let mut daemon = Daemon::with_tables(ns, "uplink", &file, &log, &args)?;
                    daemon.wait_ready(local_pods.len())?;
                    daemon.wait_for("routes to pod CIDRs installed", 1)?;
                    daemons.push(daemon);
                }
            }
        }
        if service {
            // kube-proxy's rules on node A, which forwards as a node does.
            node_a.sysctl(&["net.ipv4.ip_forward=1"])?;
            services::install(&node_a)?;
            services::cluster_ip(&node_a, "tcp", SERVICE, (&wired[1].ip, 5201), CLUSTER_CIDR)?;
        }
        let [a1, a2, b1]: [Pod; 3] =
            wired.try_into().map_err(|_| anyhow::anyhow!("three pods wired"))?;
        Ok(Cluster { a1, a2, b1, _daemons: daemons, _node_a: node_a, _node_b: node_b, _dir: dir })
    }

    /// The sender and the receiver of a pair, and the address the sender connects to.
    fn ends(&self, pair: Pair) -> (&Pod, &Pod, &str) {
        if pair.service() {
            (&self.a1, &self.a2, SERVICE.0)
        } else if pair.same_node() {
            (&self.a1, &self.a2, &self.a2.ip)
        } else {
            (&self.a1, &self.b1, &self.b1.ip)
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

/// One iperf3 run from `from` to `to`, connecting to `address`.
fn iperf(
    from: &Pod,
    (to, address): (&Pod, &str),
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
    let out = interrupt::output(
        from.ns.command("iperf3").args(["-c", address, "-p", "5201", "-J"]).args([
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
        ]),
    )?;
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

/// One request/response run: transactions a second, p50 and p99 in microseconds. The server
/// listens on the Service's port in `to`; the client connects to `address`.
fn request_response(
    from: &Pod,
    (to, address): (&Pod, &str),
    seconds: f64,
    bytes: usize,
) -> anyhow::Result<[f64; 3]> {
    let port = SERVICE.1.to_string();
    let _server = to.serve(&["serve", &port])?;
    let out = interrupt::output(&mut from.probe(&[
        "tcp-rr",
        address,
        &port,
        &seconds.to_string(),
        &bytes.to_string(),
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "tcp-rr {} → {}: {text}{}",
        from.name,
        to.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> anyhow::Result<f64> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .with_context(|| format!("no {name} in tcp-rr's report {text:?}"))
    };
    let (transactions, elapsed) = (field("transactions")?, field("seconds")?);
    anyhow::ensure!(transactions > 0.0, "no transaction completed: {text}");
    Ok([transactions / elapsed, field("p50_us")?, field("p99_us")?])
}

/// Runs every configured cell; `progress` is told each one.
pub fn run(
    config: &Config,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<(Vec<Row>, Vec<RrRow>)> {
    let (mut rows, mut rr_rows) = (Vec::new(), Vec::new());
    for &underlay in &config.underlays {
        // Each cluster once per underlay, in the order of the first pair that needs it.
        let mut clusters = Vec::new();
        for pair in &config.pairs {
            if !clusters.contains(&pair.cluster()) {
                clusters.push(pair.cluster());
            }
        }
        for kinds in clusters {
            let pairs: Vec<Pair> =
                config.pairs.iter().copied().filter(|p| p.cluster() == kinds).collect();
            progress(&format!(
                "{} underlay: building nodes for {}",
                underlay.name(),
                names(&pairs)
            ));
            interrupt::check()?;
            let cluster = Cluster::build(underlay, kinds, config)?;
            // Neighbour entries and, for podlane, the pods' fill rings warm up.
            interrupt::sleep(Duration::from_millis(300))?;
            for pair in pairs {
                let pod_edge = pair.uses_podlane().then_some(config.pod_edge);
                let (from, to, address) = cluster.ends(pair);
                for &streams in &config.streams {
                    interrupt::check()?;
                    let cell = format!("{} {} {streams} stream(s)", underlay.name(), pair.name());
                    progress(&cell);
                    let (report, cores) = iperf(from, (to, address), streams, config.seconds)
                        .with_context(|| cell.clone())?;
                    let received = &report.end.sum_received;
                    let gigabits = received.bits_per_second * received.seconds / 1e9;
                    let busy_s: f64 = cores.iter().map(|c| c.busy_ns as f64 / 1e9).sum();
                    rows.push(Row {
                        underlay,
                        pair,
                        pod_edge,
                        streams,
                        seconds: received.seconds,
                        gbps: received.bits_per_second / 1e9,
                        retransmits: report.end.sum_sent.retransmits,
                        cpu_s_per_gbit: if gigabits > 0.0 { busy_s / gigabits } else { 0.0 },
                    });
                }
                let cell = format!("{} {} request/response", underlay.name(), pair.name());
                progress(&cell);
                let [rate, p50, p99] =
                    request_response(from, (to, address), config.rr_seconds, config.rr_bytes)
                        .with_context(|| cell.clone())?;
                rr_rows.push(RrRow {
                    underlay,
                    pair,
                    pod_edge,
                    message_bytes: config.rr_bytes,
                    transactions_per_s: rate,
                    p50_us: p50,
                    p99_us: p99,
                });
            }
        }
    }
    Ok((rows, rr_rows))
}

fn names(pairs: &[Pair]) -> String {
    pairs.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

/// The results as tables.
pub fn table(rows: &[Row], rr_rows: &[RrRow]) -> String {
    let mut out = format!(
        "{:<9} {:<18} {:<5} {:>7} {:>8} {:>13} {:>14}\n",
        "underlay", "pair", "edge", "streams", "Gbit/s", "retransmits", "CPU s / Gbit"
    );
    for r in rows {
        out += &format!(
            "{:<9} {:<18} {:<5} {:>7} {:>8.2} {:>13} {:>14.3}\n",
            r.underlay.name(),
            r.pair.name(),
            r.pod_edge.map_or("-", Edge::name),
            r.streams,
            r.gbps,
            r.retransmits,
            r.cpu_s_per_gbit
        );
    }
    out += &format!(
        "\n{:<9} {:<18} {:<5} {:>7} {:>14} {:>9} {:>9}\n",
        "underlay", "pair", "edge", "bytes", "transactions/s", "p50 us", "p99 us"
    );
    for r in rr_rows {
        out += &format!(
            "{:<9} {:<18} {:<5} {:>7} {:>14.0} {:>9.1} {:>9.1}\n",
            r.underlay.name(),
            r.pair.name(),
            r.pod_edge.map_or("-", Edge::name),
            r.message_bytes,
            r.transactions_per_s,
            r.p50_us,
            r.p99_us
        );
    }
    out
}

/// A chart of the throughput runs: Gbit/s per pair, grouped by underlay and stream count.
pub fn svg(rows: &[Row], title: &str) -> String {
    use std::fmt::Write as _;
    let pairs = [
        Pair::KernelKernel,
        Pair::PodlanePodlane,
        Pair::PodlaneKernel,
        Pair::KernelSameNode,
        Pair::PodlaneSameNode,
        Pair::KernelService,
        Pair::PodlaneService,
    ];
    let colour = |p: Pair| match p {
        Pair::KernelKernel => "#888888",
        Pair::PodlanePodlane => "#1f77b4",
        Pair::PodlaneKernel => "#9467bd",
        Pair::KernelSameNode => "#bbbbbb",
        Pair::PodlaneSameNode => "#2ca02c",
        Pair::KernelService => "#dddddd",
        Pair::PodlaneService => "#ff7f0e",
    };
    let mut groups: Vec<(Underlay, u32)> = Vec::new();
    for r in rows {
        if !groups.contains(&(r.underlay, r.streams)) {
            groups.push((r.underlay, r.streams));
        }
    }
    let top = rows.iter().map(|r| r.gbps).fold(1.0, f64::max).ceil();
    let (left, base, height, bar) = (60.0, 340.0, 280.0, 22.0);
    let group_width = bar * pairs.len() as f64 + 30.0;
    let legend = 20.0 + 140.0 * pairs.len() as f64;
    let width = (left + group_width * groups.len().max(1) as f64 + 20.0).max(legend);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="430" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = title.replace('&', "&amp;").replace('<', "&lt;");
    let _ = writeln!(svg, r#"<text x="20" y="24" font-size="14">{title}</text>"#);
    for tick in 0..=4 {
        let value = top * f64::from(tick) / 4.0;
        let y = base - height * f64::from(tick) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.0}" y2="{y:.1}" stroke="#dddddd"/><text x="{:.0}" y="{:.1}" font-size="10" text-anchor="end">{value:.1}</text>"##,
            width - 20.0,
            left - 4.0,
            y + 3.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{:.0}" font-size="11" transform="rotate(-90 14 {:.0})">Gbit/s</text>"#,
        base - height / 2.0,
        base - height / 2.0
    );
    for (g, (underlay, streams)) in groups.iter().enumerate() {
        let x0 = left + 10.0 + group_width * g as f64;
        for (i, pair) in pairs.iter().enumerate() {
            let Some(r) = rows
                .iter()
                .find(|r| r.underlay == *underlay && r.streams == *streams && r.pair == *pair)
            else {
                continue;
            };
            let h = height * r.gbps / top;
            let x = x0 + bar * i as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
                base - h,
                bar - 3.0,
                colour(*pair)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.0}" font-size="11" text-anchor="middle">{} underlay, {streams} stream(s)</text>"#,
            x0 + bar * pairs.len() as f64 / 2.0,
            base + 16.0,
            underlay.name()
        );
    }
    let mut x = 20.0;
    for pair in pairs {
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="395" width="12" height="12" fill="{}"/><text x="{}" y="406" font-size="11">{}</text>"#,
            colour(pair),
            x + 16.0,
            pair.name()
        );
        x += 140.0;
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The names printed in tables are the ones the command line and the JSON use.
    #[test]
    fn names_match_the_command_line_and_the_json() {
        for pair in Pair::value_variants() {
            let cli = pair.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), pair.name());
            assert_eq!(serde_json::to_value(pair).unwrap(), pair.name());
        }
        for underlay in Underlay::value_variants() {
            let cli = underlay.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), underlay.name());
            assert_eq!(serde_json::to_value(underlay).unwrap(), underlay.name());
        }
        for edge in Edge::value_variants() {
            let cli = edge.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), edge.name());
            assert_eq!(serde_json::to_value(edge).unwrap(), edge.name());
        }
    }

    #[test]
    fn the_chart_draws_a_bar_per_run() {
        let row = |underlay, pair, streams, gbps| Row {
            underlay,
            pair,
            pod_edge: None,
            streams,
            seconds: 1.0,
            gbps,
            retransmits: 0,
            cpu_s_per_gbit: 0.1,
        };
        let rows = [
            row(Underlay::Veth, Pair::KernelKernel, 1, 10.0),
            row(Underlay::Veth, Pair::PodlanePodlane, 1, 5.0),
            row(Underlay::Nic, Pair::KernelKernel, 4, 7.5),
        ];
        let svg = svg(&rows, "t <&>");
        assert_eq!(svg.matches("<rect x=").count(), 3 + 7, "3 bars and 7 legend keys");
        assert!(svg.contains("t &lt;&amp;>"));
    }
}
