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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use control::netns::{self, Netns, RemoteNode};
use dataplane::wire::MacAddr;

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
const POD_MTU: &str = "1550";
pub const PROFILE: netns::KernelProfile = netns::FLANNEL;

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

/// A real NIC moved into the node namespace; moved back with its addresses on drop.
#[derive(Debug)]
struct MovedNic {
    name: String,
    node: String,
    addresses: Vec<String>,
    mtu: u32,
}

impl Drop for MovedNic {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.node, "link", "set", &self.name, "netns", "1"])
            .status();
        for a in &self.addresses {
            let _ = Command::new("ip").args(["addr", "add", a, "dev", &self.name]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "set", &self.name, "mtu", &self.mtu.to_string(), "up"])
            .status();
    }
}

/// The built network, its endpoints and what the dataplanes need to know.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: endpoints first, then the NIC goes home, then namespaces.
    pub pod1: Client,
    pub pod2: Client,
    pub remote: Client,
    _nic: Option<MovedNic>,
    pub node: Netns,
    _pods: (Netns, Netns),
    _remote_ns: Option<Netns>,
    pub uplink: String,
    pub node_ip: Ipv4Addr,
    pub remote_ip: Ipv4Addr,
    pub uplink_mac: [u8; 6],
    pub host1_mac: [u8; 6],
    pub tables: PathBuf,
    pub scratch: PathBuf,
    pub gen_core: usize,
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

/// Removes namespaces left by a benchmark that was killed (its process no longer exists).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("podlane-bench") else { continue };
        let pid = rest.split('-').rev().nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn namespace(tag: &str) -> anyhow::Result<Netns> {
    let ns = Netns::create(tag)?;
    // No IPv6: its router and neighbour solicitations would be stray frames at the sinks.
    for s in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"] {
        ns.exec("sysctl", &["-qw", s])?;
    }
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

/// The IPv4 addresses of `interface` as `ADDRESS/PREFIX` (from `ip -4 -o addr`).
pub fn ipv4_and_prefix(ns: Option<&Netns>, interface: &str) -> anyhow::Result<Vec<String>> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns.name()]);
    }
    let out = cmd.args(["-4", "-o", "addr", "show", "dev", interface]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let addrs: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(str::to_owned))
        .collect();
    Ok(addrs)
}

impl Topology {
    /// Builds the network and starts the three endpoints (the generator ones pinned to
    /// `gen_core`).
    pub fn build(placement: &Placement, gen_core: usize) -> anyhow::Result<Topology> {
        remove_stale_namespaces();
        let node = namespace("bench-node")?;
        let pod1_ns = namespace("bench-pod1")?;
        let pod2_ns = namespace("bench-pod2")?;
        let scratch = std::env::temp_dir().join(format!("{}-files", node.name()));
        std::fs::create_dir_all(&scratch)?;

        // The uplink: a veth to a local "remote" namespace, or a real NIC.
        let (uplink, nic, remote_ns, remote, node_ip) = match &placement.uplink {
            None => {
                let remote_ns = namespace("bench-remote")?;
                netns::underlay(
                    (&node, "up0", LOCAL_NODE_IP),
                    (&remote_ns, "up0r", LOCAL_REMOTE_IP),
                    1,
                )?;
                for (ns, dev) in [(&node, "up0"), (&remote_ns, "up0r")] {
                    ns.ip(&["link", "set", dev, "mtu", &UNDERLAY_MTU.to_string()])?;
                }
                let remote = local_endpoint(&remote_ns, "up0r", gen_core)?;
                ("up0".to_owned(), None, Some(remote_ns), remote, LOCAL_NODE_IP.parse()?)
            }
            Some(nic_name) => {
                let addresses = ipv4_and_prefix(None, nic_name)?;
                let first = addresses.first().with_context(|| {
                    format!("--uplink {nic_name}: it has no IPv4 address; give it the node's underlay address first")
                })?;
                let node_ip: Ipv4Addr = first.split('/').next().unwrap_or_default().parse()?;
                let mtu = dataplane::io::interface_mtu(nic_name)?;
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
                netns::run("ip", &["link", "set", nic_name, "netns", node.name()])?;
                let moved = MovedNic {
                    name: nic_name.clone(),
                    node: node.name().to_owned(),
                    addresses: addresses.clone(),
                    mtu,
                };
                for a in &addresses {
                    node.ip(&["addr", "add", a, "dev", nic_name])?;
                }
                node.ip(&[
                    "link",
                    "set",
                    nic_name,
                    "mtu",
                    &UNDERLAY_MTU.max(mtu).to_string(),
                    "up",
                ])?;
                (nic_name.clone(), Some(moved), None, remote, node_ip)
            }
        };
        let remote_ip = remote.ipv4.context("the far endpoint's interface has no IPv4 address")?;

        // Pods, wired as Calico wires them.
        for (pod, host_if, ip, mac) in
            [(&pod1_ns, "veth-p1", POD1_IP, POD1_MAC), (&pod2_ns, "veth-p2", POD2_IP, POD2_MAC)]
        {
            netns::wire_kernel_pod(&node, pod, host_if, &ip.to_string(), &mac_string(&mac))?;
            pod.ip(&["link", "set", "eth0", "mtu", POD_MTU])?;
            node.ip(&["link", "set", host_if, "mtu", POD_MTU])?;
        }

        // The kernel dataplane, as Flannel programs it.
        let remote_ip_s = remote_ip.to_string();
        netns::kernel_vxlan_node(
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
            node.exec("ethtool", &["-K", dev, "gro", "on"])
                .context("ethtool -K gro on (apt-get install ethtool)")?;
        }

        // The same node for podlane.
        let uplink_mac = parse_mac(&node.mac_of(&uplink)?)?;
        let host1_mac = parse_mac(&node.mac_of("veth-p1")?)?;
        let tables = scratch.join("tables.json");
        std::fs::write(&tables, tables_json(node_ip, remote_ip))?;

        let pod1 = local_endpoint(&pod1_ns, "eth0", gen_core)?;
        let pod2 = local_endpoint(&pod2_ns, "eth0", gen_core)?;
        let topology = Topology {
            pod1,
            pod2,
            remote,
            _nic: nic,
            node,
            _pods: (pod1_ns, pod2_ns),
            _remote_ns: remote_ns,
            uplink,
            node_ip,
            remote_ip,
            uplink_mac,
            host1_mac,
            tables,
            scratch,
            gen_core,
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
            let out = Command::new("ip")
                .args(["-n", self.node.name(), "neigh", "show", ip, "dev", dev])
                .output()?;
            if !String::from_utf8_lossy(&out.stdout).contains("PERMANENT") {
                lost.push(format!("{ip} on {dev}"));
            }
            self.node.ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
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

/// A dataplane process running in the node (none for the kernel).
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    log: PathBuf,
}

/// podlane-dataplane beside this binary (`target/release/`), else on PATH.
fn dataplane_binary() -> PathBuf {
    let sibling =
        std::env::current_exe().ok().and_then(|p| Some(p.parent()?.join("podlane-dataplane")));
    sibling.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("podlane-dataplane"))
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
        core: usize,
        priority: Option<u8>,
    ) -> anyhow::Result<Running> {
        let priority = priority.map(|p| p.to_string());
        let log = topology.scratch.join(format!("{dataplane:?}.log"));
        let mut cmd = match dataplane {
            Dataplane::Kernel => return Ok(Running { child: None, log }),
            Dataplane::Podlane => {
                let mut cmd = topology.node.command(dataplane_binary());
                cmd.arg("--tables")
                    .arg(&topology.tables)
                    .args(["--uplink", &topology.uplink, "--no-control-socket"])
                    .args(["--cores", &core.to_string(), "--log-level", "info"]);
                if let Some(priority) = &priority {
                    cmd.args(["--realtime-priority", priority]);
                }
                cmd
            }
            Dataplane::BareAfXdp => {
                let (from, to) = bare_path(topology, direction);
                let mut cmd = topology.node.command(this_binary()?);
                cmd.args(["forward", "--from", &from, "--to", &to, "--core", &core.to_string()]);
                if let Some(priority) = &priority {
                    cmd.args(["--realtime-priority", priority]);
                }
                cmd
            }
        };
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let mut running = Running { child: Some(child), log };
        let needles: &[(&str, usize)] = match dataplane {
            Dataplane::Podlane => {
                &[("forwarding", 1), ("pod interface attached", 2), ("next hop resolved", 1)]
            }
            _ => &[("ready", 1)],
        };
        if let Err(e) = running.wait_for(needles) {
            let neigh = Command::new("ip")
                .args(["-n", topology.node.name(), "neigh", "show"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let route = Command::new("ip")
                .args(["-n", topology.node.name(), "route", "get", &topology.remote_ip.to_string()])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr)
                })
                .unwrap_or_default();
            return Err(e.context(format!(
                "{} did not come up; neighbours:\n{neigh}route: {route}",
                dataplane.label()
            )));
        }
        Ok(running)
    }

    fn wait_for(&mut self, needles: &[(&str, usize)]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if needles.iter().all(|(n, count)| text.matches(n).count() >= *count) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("it exited ({status}):\n{text}");
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "waited 15 s; its log:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s) and returns its log.
    pub fn stop(mut self) -> String {
        self.terminate();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.terminate();
    }
}
