//! The benchmark's network: one node under test and the endpoints around it.
//!
//! ```text
//!   pod1 ns            node ns                                   remote ns (or another VM)
//!   eth0 ─ veth ─ veth-p1 ┐                         ┌ up0 ─ veth ─ up0r
//!   pod2 ns               ├ kernel: routes + flannel.1 ┤
//!   eth0 ─ veth ─ veth-p2 ┘  or podlane, or bare fwd   └ (uplink)
//! ```
//!
//! The node is programmed for both dataplanes at once: the kernel as Flannel programs a node
//! (`flannel.1`, VNI 1, port 8472; pods routed as /32s, as Calico does), and a tables file for
//! `podlane-dataplane`. With no XDP program on its interfaces the kernel forwards; when
//! podlane (or the bare forwarder) runs, its XDP programs take every frame first. So the
//! dataplanes take turns on the same interfaces, and stopping podlane hands the node back to
//! the kernel, as on a real node.
//!
//! Neighbours are permanent entries (the endpoints drop everything, ARP included), and the
//! node-side veths have GRO on: a veth drops frames its peer sent with XDP_TX unless it has an
//! XDP program or GRO (DESIGN.md), and the kernel dataplane has no program.
//!
//! With `--uplink NIC` the node's uplink is a real interface moved into the node namespace
//! for the run (and moved back, addresses restored, at the end); with `--remote TARGET` the
//! far endpoint runs on another machine through ssh.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use podlane_core::wire::MacAddr;
use testbed::kernel::{self, RemoteNode};
use testbed::link::{self, LentNic};
use testbed::podlane;
use testbed::{Netns, Pod, Service};

use crate::endpoint::Client;
use crate::traffic::Hop;

pub const POD1_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const POD2_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
pub const REMOTE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
pub const NODE_VTEP_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0x00, 0x01, 0x01];
pub const REMOTE_VTEP_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0x00, 0x02, 0x01];
const POD1_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0x01, 0x00, 0x02];
const POD2_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0x01, 0x00, 0x03];
const LOCAL_NODE_IP: &str = "10.99.0.1";
const LOCAL_REMOTE_IP: &str = "10.99.0.2";
/// The underlay carries 1518-byte frames (1500-byte packets) encapsulated: 1550 bytes of IP.
const UNDERLAY_MTU: u32 = 1550;
/// Pods get the underlay's MTU too, not 50 less: the bare forward hands the encapsulated
/// decap frame to the pod unchanged, and a veth drops what exceeds its MTU. The generated
/// frames are at most 1518 bytes, so nothing else changes.
const POD_MTU: u32 = 1550;
pub const PROFILE: kernel::KernelProfile = kernel::FLANNEL;

/// Which dataplane forwards.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Dataplane {
    /// The Linux vxlan device, configured as Flannel does.
    Kernel,
    /// podlane-dataplane.
    Podlane,
    /// Bare AF_XDP forward: no parsing, no lookup, no encapsulation.
    BareAfXdp,
}

impl Dataplane {
    pub fn label(self) -> &'static str {
        match self {
            Dataplane::Kernel => "kernel vxlan",
            Dataplane::Podlane => "podlane",
            Dataplane::BareAfXdp => "bare AF_XDP fwd",
        }
    }
}

/// Which way traffic crosses the node.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Pod → remote node: the node encapsulates.
    Encap,
    /// Remote node → pod: the node decapsulates.
    Decap,
    /// Pod → pod on the same node.
    Local,
}

/// Where the far end runs.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// A real interface to use as the node's uplink.
    pub uplink: Option<String>,
    /// ssh target running the far endpoint.
    pub remote: Option<String>,
    /// The far end's interface (default: the same name as `uplink`).
    pub remote_interface: Option<String>,
}

/// The interfaces frames cross, as (namespace, interface, label), whose drop counters say
/// where a trial's lost frames went.
#[derive(Debug, Default)]
pub struct LossPlaces(Vec<(String, String, &'static str)>);

impl LossPlaces {
    /// Every drop and error counter of the places, by "label/interface counter": the veths'
    /// per-queue counters (`ethtool -S`: XDP redirect failures such as a full AF_XDP ring or
    /// an empty fill ring show as `rx_queue_N_drops`) and the interfaces' own
    /// `rx_dropped`/`tx_dropped` (a veth's XDP transmit into a full peer ring). Read between
    /// trials (it starts a few processes), never during one.
    pub fn read(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counters = std::collections::BTreeMap::new();
        for (ns, dev, label) in &self.0 {
            let ns = Netns::borrowed(ns);
            let stats = ns.command("ethtool").args(["-S", dev]).output();
            let text = stats.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            for line in text.unwrap_or_default().lines() {
                let Some((name, value)) = line.trim().split_once(':') else { continue };
                // The sinks' own XDP_DROP is how they count, not loss.
                let counts_loss = ["drop", "err", "full", "empty"].iter().any(|w| name.contains(w))
                    && !name.contains("xdp_drops");
                if let (true, Ok(value)) = (counts_loss, value.trim().parse::<u64>()) {
                    counters.insert(format!("{label}/{dev} {name}"), value);
                }
            }
            for name in ["rx_dropped", "tx_dropped"] {
                let path = format!("/sys/class/net/{dev}/statistics/{name}");
                if let Ok(out) = ns.command("cat").arg(&path).output()
                    && let Ok(value) = String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()
                {
                    counters.insert(format!("{label}/{dev} {name}"), value);
                }
            }
        }
        counters
    }

    /// The counters that grew from `before` to `after`, and by how much.
    pub fn grown(
        before: &std::collections::BTreeMap<String, u64>,
        after: &std::collections::BTreeMap<String, u64>,
    ) -> std::collections::BTreeMap<String, u64> {
        after
            .iter()
            .filter_map(|(k, v)| {
                let grew = v.saturating_sub(before.get(k).copied().unwrap_or(0));
                (grew > 0).then(|| (k.clone(), grew))
            })
            .collect()
    }
}

/// The built network, its endpoints and what the dataplanes need to know.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: endpoints first, then the NIC goes home, then namespaces.
    pub pod1: Client,
    pub pod2: Client,
    pub remote: Client,
    _pods: (Pod, Pod),
    _nic: Option<LentNic>,
    pub node: Netns,
    _remote_ns: Option<Netns>,
    pub uplink: String,
    pub node_ip: Ipv4Addr,
    pub remote_ip: Ipv4Addr,
    pub uplink_mac: [u8; 6],
    pub host1_mac: [u8; 6],
    pub tables: PathBuf,
    pub scratch: PathBuf,
    pub gen_core: usize,
    pub loss_places: LossPlaces,
    /// The node's permanent neighbour entries: (address, MAC, interface).
    neighbours: Vec<(String, String, String)>,
}

fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let mac: MacAddr = text.parse().with_context(|| format!("not a MAC address: {text:?}"))?;
    Ok(mac.0)
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    MacAddr(*mac).to_string()
}

/// A namespace of the benchmark, without IPv6: its router and neighbour solicitations would
/// be stray frames at the sinks.
fn namespace(tag: &str) -> anyhow::Result<Netns> {
    let ns = Netns::create(tag)?;
    ns.disable_ipv6()?;
    Ok(ns)
}

/// This program, to run its `endpoint` and `forward` subcommands elsewhere.
fn this_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding podlane-bench's own path")
}

fn local_endpoint(ns: &Netns, interface: &str, core: usize) -> anyhow::Result<Client> {
    let mut cmd = ns.command(this_binary()?);
    cmd.args(["endpoint", "--interface", interface, "--core", &core.to_string()]);
    Client::start(&format!("{}:{interface}", ns.name()), cmd, true)
}

impl Topology {
    /// Builds the network, its uplink with `queues` receive queues, and starts the three
    /// endpoints (pinned to `gen_core`).
    pub fn build(placement: &Placement, gen_core: usize, queues: u32) -> anyhow::Result<Topology> {
        testbed::netns::remove_stale("bench");
        let node = namespace("bench-node")?;
        let scratch = std::env::temp_dir().join(format!("{}-files", node.name()));
        std::fs::create_dir_all(&scratch)?;

        // The uplink: a veth to a local "remote" namespace, or a real NIC.
        let (uplink, nic, remote_ns, remote, node_ip) = match &placement.uplink {
            None => {
                let remote_ns = namespace("bench-remote")?;
                link::underlay(
                    (&node, "up0", LOCAL_NODE_IP),
                    (&remote_ns, "up0r", LOCAL_REMOTE_IP),
                    queues,
                )?;
                for (ns, dev) in [(&node, "up0"), (&remote_ns, "up0r")] {
                    link::set_mtu(ns, dev, UNDERLAY_MTU)?;
                }
                let remote = local_endpoint(&remote_ns, "up0r", gen_core)?;
                ("up0".to_owned(), None, Some(remote_ns), remote, LOCAL_NODE_IP.parse()?)
            }
            Some(nic_name) => {
                let addresses = testbed::netns::ipv4_addresses(None, nic_name)?;
                let first = addresses.first().with_context(|| {
                    format!("--uplink {nic_name}: it has no IPv4 address; give it the node's underlay address first")
                })?;
                let node_ip: Ipv4Addr = first.split('/').next().unwrap_or_default().parse()?;
                let target = placement
                    .remote
                    .as_deref()
                    .context("--uplink needs --remote (the far end's ssh target)")?;
                let remote_if =
                    placement.remote_interface.clone().unwrap_or_else(|| nic_name.clone());
                let mut cmd = Command::new("ssh");
                cmd.args([
                    "-o",
                    "BatchMode=yes",
                    target,
                    "podlane-bench",
                    "endpoint",
                    "--interface",
                    &remote_if,
                ]);
                let remote = Client::start(&format!("{target}:{remote_if}"), cmd, false)?;
                let lent = LentNic::lend(nic_name, &node, UNDERLAY_MTU)?;
                (nic_name.clone(), Some(lent), None, remote, node_ip)
            }
        };
        let remote_ip = remote.ipv4.context("the far endpoint's interface has no IPv4 address")?;

        // Pods, wired as Calico wires them.
        let mut pods = Vec::new();
        for (name, host_if, ip, mac) in
            [("pod1", "veth-p1", POD1_IP, POD1_MAC), ("pod2", "veth-p2", POD2_IP, POD2_MAC)]
        {
            let pod = kernel::wire_pod(&node, name, host_if, &ip.to_string(), &mac_string(&mac))?;
            pod.ns.disable_ipv6()?;
            link::set_mtu(&pod.ns, "eth0", POD_MTU)?;
            link::set_mtu(&node, host_if, POD_MTU)?;
            pods.push(pod);
        }
        let (Some(pod2), Some(pod1)) = (pods.pop(), pods.pop()) else { unreachable!("two pods") };

        // The kernel dataplane, as Flannel programs it.
        let remote_ip_s = remote_ip.to_string();
        kernel::vxlan_node(
            &node,
            PROFILE,
            &uplink,
            &node_ip.to_string(),
            &mac_string(&NODE_VTEP_MAC),
            "10.244.1.0",
            &RemoteNode {
                underlay: &remote_ip_s,
                vtep_mac: &mac_string(&REMOTE_VTEP_MAC),
                pod_cidr: "10.244.2.0/24",
                gateway: "10.244.2.0",
            },
        )?;
        let neighbours = vec![
            (POD1_IP.to_string(), mac_string(&POD1_MAC), "veth-p1".to_owned()),
            (POD2_IP.to_string(), mac_string(&POD2_MAC), "veth-p2".to_owned()),
            (remote_ip_s.clone(), mac_string(&remote.mac), uplink.clone()),
        ];
        for dev in ["veth-p1", "veth-p2", uplink.as_str()] {
            link::set_features(&node, dev, &["gro", "on"])?;
        }

        // The same node for podlane.
        let uplink_mac = parse_mac(&node.mac_of(&uplink)?)?;
        let host1_mac = parse_mac(&node.mac_of("veth-p1")?)?;
        let tables = scratch.join("tables.json");
        std::fs::write(&tables, tables_json(node_ip, remote_ip))?;

        let mut places = vec![
            (node.name().to_owned(), "veth-p1".to_owned(), "node"),
            (node.name().to_owned(), "veth-p2".to_owned(), "node"),
            (node.name().to_owned(), uplink.clone(), "node"),
            (pod1.ns.name().to_owned(), "eth0".to_owned(), "pod1"),
            (pod2.ns.name().to_owned(), "eth0".to_owned(), "pod2"),
        ];
        if let Some(remote) = &remote_ns {
            places.push((remote.name().to_owned(), "up0r".to_owned(), "remote"));
        }
        let pod1_endpoint = local_endpoint(&pod1.ns, "eth0", gen_core)?;
        let pod2_endpoint = local_endpoint(&pod2.ns, "eth0", gen_core)?;
        let topology = Topology {
            pod1: pod1_endpoint,
            pod2: pod2_endpoint,
            remote,
            _pods: (pod1, pod2),
            _nic: nic,
            node,
            _remote_ns: remote_ns,
            uplink,
            node_ip,
            remote_ip,
            uplink_mac,
            host1_mac,
            tables,
            scratch,
            gen_core,
            loss_places: LossPlaces(places),
            neighbours,
        };
        topology.pin_neighbours()?;
        Ok(topology)
    }

    /// (Re)installs the node's permanent neighbour entries; returns those that had been
    /// lost. The kernel flushes even permanent entries of an interface that goes down.
    pub fn pin_neighbours(&self) -> anyhow::Result<Vec<String>> {
        let mut lost = Vec::new();
        for (ip, mac, dev) in &self.neighbours {
            if !self.node.pin_neighbour(ip, mac, dev)? {
                lost.push(format!("{ip} on {dev}"));
            }
        }
        Ok(lost)
    }

    pub fn pod1_hop(&self) -> Hop {
        Hop { mac: POD1_MAC, ip: POD1_IP }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// podlane's tables for the node: itself and the remote node, two local pods, no policy.
fn tables_json(node_ip: Ipv4Addr, remote_ip: Ipv4Addr) -> String {
    let endpoint = |name: &str, ip: Ipv4Addr, mac: &[u8; 6], interface: &str| {
        format!(
            r#"{{"namespace": "bench", "name": "{name}", "ips": ["{ip}"], "mac": "{}", "interface": "{interface}"}}"#,
            mac_string(mac)
        )
    };
    format!(
        r#"{{"local_node": "node",
 "nodes": [{{"name": "node", "underlay": "{node_ip}", "vtep_mac": "{}", "pod_cidrs": ["10.244.1.0/24"]}},
           {{"name": "remote", "underlay": "{remote_ip}", "vtep_mac": "{}", "pod_cidrs": ["10.244.2.0/24"]}}],
 "endpoints": [{}, {}]}}
"#,
        mac_string(&NODE_VTEP_MAC),
        mac_string(&REMOTE_VTEP_MAC),
        endpoint("pod1", POD1_IP, &POD1_MAC, "veth-p1"),
        endpoint("pod2", POD2_IP, &POD2_MAC, "veth-p2"),
    )
}

/// Where the kernel dataplane's receive work runs (`--kernel-placement`). By itself the
/// kernel processes a frame in softirq on the core where it arrived: here the generator's,
/// since a veth's receive work runs in its sender's system call.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum KernelPlacement {
    /// Where the kernel puts it: in softirq on the core the frame arrived on (the generator's).
    #[default]
    Inline,
    /// RPS on the node's receiving interface: the protocol work moves to the DUT core.
    Rps,
    /// The node's receiving interface polled in a threaded NAPI kthread pinned to the DUT core.
    ThreadedNapi,
}

/// A dataplane process running in the node (none for the kernel), and the settings its turn
/// changed, restored when it stops.
#[derive(Debug)]
pub struct Running {
    service: Option<Service>,
    restore: Vec<(Netns, String, String)>,
}

/// The node's interface a direction's frames arrive on.
fn ingress(topology: &Topology, direction: Direction) -> String {
    match direction {
        Direction::Encap | Direction::Local => "veth-p1".into(),
        Direction::Decap => topology.uplink.clone(),
    }
}

/// Writes `value` to a sysfs file of the node; returns what was there.
fn write_sys(node: &Netns, path: &str, value: &str) -> anyhow::Result<String> {
    let old = node.command("cat").arg(path).output()?;
    let old = String::from_utf8_lossy(&old.stdout).trim().to_owned();
    let out = node.command("sh").args(["-c", &format!("echo {value} > {path}")]).output()?;
    anyhow::ensure!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(old)
}

impl Running {
    /// The kernel's turn with its receive work placed as asked: nothing to start.
    fn kernel(
        topology: &Topology,
        direction: Direction,
        core: usize,
        placement: KernelPlacement,
    ) -> anyhow::Result<Running> {
        let dev = ingress(topology, direction);
        let mut restore = Vec::new();
        let node = Netns::borrowed(topology.node.name());
        match placement {
            KernelPlacement::Inline => {}
            KernelPlacement::Rps => {
                let path = format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus");
                let old = write_sys(&node, &path, &format!("{:x}", 1u64 << core))?;
                restore.push((Netns::borrowed(node.name()), path, old));
            }
            KernelPlacement::ThreadedNapi => {
                let path = format!("/sys/class/net/{dev}/threaded");
                let old = write_sys(&node, &path, "1")?;
                restore.push((Netns::borrowed(node.name()), path, old));
                // The kthreads are named napi/<dev>-<id>; pin them to the DUT core.
                let threads =
                    std::process::Command::new("pgrep").arg(format!("^napi/{dev}-")).output()?;
                let pids = String::from_utf8_lossy(&threads.stdout).into_owned();
                anyhow::ensure!(!pids.trim().is_empty(), "no NAPI thread for {dev}");
                for pid in pids.split_whitespace() {
                    let out = std::process::Command::new("taskset")
                        .args(["-pc", &core.to_string(), pid])
                        .output()?;
                    anyhow::ensure!(out.status.success(), "taskset {pid}: {:?}", out);
                }
            }
        }
        Ok(Running { service: None, restore })
    }
}

/// The interfaces a bare forward reads from and writes to in `direction`.
pub fn bare_path(topology: &Topology, direction: Direction) -> (String, String) {
    match direction {
        Direction::Encap => ("veth-p1".into(), topology.uplink.clone()),
        Direction::Decap => (topology.uplink.clone(), "veth-p1".into()),
        Direction::Local => ("veth-p1".into(), "veth-p2".into()),
    }
}

impl Running {
    /// Starts `dataplane` in the node, its forwarding thread pinned to `core` (under
    /// SCHED_FIFO at `priority` if given), and waits until it forwards.
    pub fn start(
        topology: &Topology,
        dataplane: Dataplane,
        direction: Direction,
        cores: &[usize],
        priority: Option<u8>,
        placement: KernelPlacement,
    ) -> anyhow::Result<Running> {
        let first = *cores.first().context("no core for the dataplane")?;
        if dataplane == Dataplane::Kernel {
            return Running::kernel(topology, direction, first, placement);
        }
        let priority = priority.map(|p| p.to_string());
        let log = topology.scratch.join(format!("{dataplane:?}.log"));
        let core = first.to_string();
        let worker_cores = cores.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let mut service = match dataplane {
            Dataplane::Kernel => unreachable!("returned above"),
            Dataplane::Podlane => {
                // The node's kernel keeps its own routes to the pods (it takes its turns on
                // the same node): no host interface, pod interfaces left to the kernel.
                let mut args =
                    vec!["--cores", &worker_cores, "--log-level", "info", "--no-host-interface"];
                if let Some(priority) = &priority {
                    args.extend(["--realtime-priority", priority]);
                }
                let daemon = podlane::Dataplane::with_tables(
                    &topology.node,
                    &topology.uplink,
                    &topology.tables,
                    &log,
                    &args,
                )?;
                daemon.into_service()
            }
            Dataplane::BareAfXdp => {
                let (from, to) = bare_path(topology, direction);
                let mut cmd = topology.node.command(this_binary()?);
                cmd.args(["forward", "--from", &from, "--to", &to, "--core", &core]);
                if let Some(priority) = &priority {
                    cmd.args(["--realtime-priority", priority]);
                }
                Service::start("bare AF_XDP forward", cmd, &log)?
            }
        };
        let needles: &[(&str, usize)] = match dataplane {
            Dataplane::Podlane => {
                &[("forwarding", 1), ("pod interface attached", 2), ("next hop resolved", 1)]
            }
            _ => &[("ready", 1)],
        };
        if let Err(e) = service.wait_for_all(needles, Duration::from_secs(15)) {
            let neigh = topology.node.ip_output(&["neigh", "show"]).unwrap_or_default();
            let route = topology
                .node
                .ip_output(&["route", "get", &topology.remote_ip.to_string()])
                .unwrap_or_else(|e| e.to_string());
            return Err(e.context(format!(
                "{} did not come up; neighbours:\n{neigh}route: {route}",
                dataplane.label()
            )));
        }
        Ok(Running { service: Some(service), restore: Vec::new() })
    }

    /// The dataplane process's id (none for the kernel).
    pub fn pid(&self) -> Option<u32> {
        self.service.as_ref().and_then(Service::pid)
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s) and returns its log.
    pub fn stop(mut self) -> String {
        let Some(mut service) = self.service.take() else { return String::new() };
        let _ = service.stop();
        service.log()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (node, path, value) in self.restore.drain(..) {
            let _ = write_sys(&node, &path, &value);
        }
    }
}
