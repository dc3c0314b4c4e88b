//! Pods, and traffic between endpoints. A pod is a namespace wired into its node as Calico
//! wires pods (what podlane serves): a veth, `eth0` inside with the pod IP as /32 and a
//! default route via the link-local gateway 169.254.1.1, the host side in the node. Any
//! namespace with an address (a node, a host outside the cluster) can be a traffic endpoint
//! too ([`Pod::wrap`]). Traffic runs through [`crate::probe`] (`podlane-netprobe`) inside the
//! namespaces, and ping.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use podlane_core::table::{EndpointSpec, PodEdge};

use crate::netns::{Netns, run};
use crate::process::{Background, binary};

/// Pod MTU: a 1500-byte underlay less the 50 bytes of VXLAN over IPv4.
pub const POD_MTU: u32 = 1450;

/// The gateway pods route through (Calico's).
pub const GATEWAY_V4: &str = "169.254.1.1";
/// The IPv6 gateway: Calico's, the link-local address derived from ee:ee:ee:ee:ee:ee.
pub const GATEWAY_V6: &str = "fe80::ecee:eeff:feee:eeee";

/// A traffic endpoint: a pod, or any namespace with an address.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub name: String,
    pub ip: String,
    /// Its IPv6 address, when it has one (dual stack).
    pub ip6: Option<String>,
    /// The pod's MAC (empty for a wrapped namespace).
    pub mac: String,
    /// The host side of its veth in the node (empty for a wrapped namespace); a TAP pod's
    /// interface inside its namespace.
    pub host_if: String,
    /// How it meets the dataplane: a veth, or a TAP device in its namespace.
    pub edge: PodEdge,
}

/// What a TCP transfer's two ends reported (`bytes=N digest=H` each), and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub sent: String,
    pub received: String,
    pub elapsed: Duration,
}

impl Transfer {
    /// Everything sent arrived, unchanged.
    pub fn intact(&self) -> bool {
        self.sent == self.received && self.sent.starts_with("bytes=")
    }
}

impl Pod {
    /// Creates pod `name` in a new namespace (tagged after the node's) and wires it into
    /// `node`: `eth0` inside with `mac` and `ip`/32, `host_if` in the node, both at
    /// [`POD_MTU`], a default route via [`GATEWAY_V4`].
    pub fn wire(
        node: &Netns,
        name: &str,
        host_if: &str,
        ip: &str,
        mac: &str,
    ) -> anyhow::Result<Pod> {
        let ns = Netns::create(&format!("{}-pod", node.tag()))?;
        let mtu = POD_MTU.to_string();
        run(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                ns.name(),
                "address",
                mac,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                host_if,
                "netns",
                node.name(),
                "mtu",
                &mtu,
            ],
        )?;
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", GATEWAY_V4, "dev", "eth0"])?;
        node.ip(&["link", "set", host_if, "up"])?;
        Ok(Pod {
            ns,
            name: name.to_owned(),
            ip: ip.to_owned(),
            ip6: None,
            mac: mac.to_owned(),
            host_if: host_if.to_owned(),
            edge: PodEdge::Veth,
        })
    }

    /// Creates pod `name` with a TAP edge, wired as the CNI plugin wires one: a persistent TAP
    /// device `eth0` in a new namespace (tagged after `node`'s), with `mac`, `ip`/32 and
    /// `ip6`/128 when given, at `mtu`, default routes via the gateways. podlane attaches to
    /// it from the node once the pod's endpoint (`edge: tap`) is in its tables.
    pub fn wire_tap(
        node: &Netns,
        name: &str,
        (ip, ip6): (&str, Option<&str>),
        mac: &str,
        mtu: u32,
    ) -> anyhow::Result<Pod> {
        let ns = Netns::create(&format!("{}-pod", node.tag()))?;
        ns.ip(&["tuntap", "add", "dev", "eth0", "mode", "tap"])?;
        ns.ip(&["link", "set", "eth0", "address", mac, "mtu", &mtu.to_string()])?;
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        if let Some(ip6) = ip6 {
            ns.ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
        }
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", GATEWAY_V4, "dev", "eth0"])?;
        if ip6.is_some() {
            ns.ip(&["-6", "route", "add", "default", "via", GATEWAY_V6, "dev", "eth0"])?;
        }
        let netns = format!("/var/run/netns/{}", ns.name());
        Ok(Pod {
            ns,
            name: name.to_owned(),
            ip: ip.to_owned(),
            ip6: ip6.map(str::to_owned),
            mac: mac.to_owned(),
            host_if: "eth0".to_owned(),
            edge: PodEdge::Tap { netns },
        })
    }

    /// A dual-stack pod: [`Pod::wire`] with the pod MTU `mtu`, plus `ip6`/128 and a default
    /// IPv6 route via [`GATEWAY_V6`], as Calico wires IPv6.
    pub fn wire_dual(
        node: &Netns,
        name: &str,
        host_if: &str,
        (ip, ip6): (&str, &str),
        mac: &str,
        mtu: u32,
    ) -> anyhow::Result<Pod> {
        let mut pod = Pod::wire(node, name, host_if, ip, mac)?;
        pod.ns.ip(&["link", "set", "eth0", "mtu", &mtu.to_string()])?;
        node.ip(&["link", "set", host_if, "mtu", &mtu.to_string()])?;
        // No duplicate address detection: the address is the pod's alone, and a tentative
        // address could not be used for a second or two.
        pod.ns.ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
        pod.ns.ip(&["-6", "route", "add", "default", "via", GATEWAY_V6, "dev", "eth0"])?;
        pod.ip6 = Some(ip6.to_owned());
        Ok(pod)
    }

    /// Treats a namespace (a node, a plain host on the underlay) as a traffic endpoint at
    /// `ip`.
    pub fn wrap(ns: Netns, name: &str, ip: &str) -> Pod {
        Pod {
            ns,
            name: name.to_owned(),
            ip: ip.to_owned(),
            ip6: None,
            mac: String::new(),
            host_if: String::new(),
            edge: PodEdge::Veth,
        }
    }

    /// A handle on a namespace owned elsewhere, as a traffic endpoint at `ip`.
    pub fn in_namespace(ns: &Netns, ip: &str) -> Pod {
        Pod::wrap(Netns::borrowed(ns.name()), ns.name(), ip)
    }

    /// This pod's entry in its node's tables (namespace `default`, no labels or policy).
    pub fn endpoint(&self) -> anyhow::Result<EndpointSpec> {
        Ok(EndpointSpec {
            namespace: "default".into(),
            name: self.name.clone(),
            labels: Default::default(),
            ips: std::iter::once(&self.ip)
                .chain(&self.ip6)
                .map(|ip| ip.parse::<IpAddr>())
                .collect::<Result<_, _>>()?,
            mac: self.mac.parse().map_err(|e| anyhow::anyhow!("pod {}: {e}", self.name))?,
            interface: self.host_if.clone(),
            edge: self.edge.clone(),
            ingress_policy: None,
            egress_policy: None,
        })
    }

    /// `ping -c COUNT` to `dst`; the number of replies.
    pub fn ping(&self, dst: &str, count: u32) -> u32 {
        self.ping_summary(dst, count).0
    }

    /// `ping -c COUNT` to `dst`: the number of replies and ping's summary line.
    pub fn ping_summary(&self, dst: &str, count: u32) -> (u32, String) {
        let out = self
            .ns
            .command("ping")
            .args(["-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2", dst])
            .output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let summary =
            text.lines().find(|l| l.contains("received")).unwrap_or("no reply").to_owned();
        let received = summary
            .split(", ")
            .find_map(|part| part.strip_suffix(" received").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0);
        (received, summary)
    }

    /// Pings until it gets a reply (`reachable`) or none, or 10 s pass (or waits give up,
    /// [`crate::process::give_up_waiting_when`]); whether that held.
    pub fn ping_until(&self, dst: &str, reachable: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !crate::process::giving_up() {
            if (self.ping(dst, 1) == 1) == reachable {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `podlane-netprobe ARGS` inside the namespace.
    pub fn probe(&self, args: &[&str]) -> Command {
        let mut cmd = self.ns.command(binary("podlane-netprobe"));
        cmd.args(args);
        cmd
    }

    /// `GET path` from `host:port` inside the namespace (`podlane-netprobe http-get`): the
    /// status line and the body; empty when nothing answered.
    pub fn http_get(&self, host: &str, port: u16, path: &str) -> (String, String) {
        let out = self.probe(&["http-get", host, &port.to_string(), path]).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
        (status.to_owned(), body.to_owned())
    }

    /// Starts a probe server that prints `ready` when listening, and waits for that line.
    pub fn serve(&self, args: &[&str]) -> anyhow::Result<(Background, BufReader<ChildStdout>)> {
        let mut child = self
            .probe(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting podlane-netprobe in {}: {e}", self.name))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no probe stdout"))?;
        let server = Background(child);
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        anyhow::ensure!(
            line.trim() == "ready",
            "podlane-netprobe {args:?} in {} did not start",
            self.name
        );
        Ok((server, stdout))
    }

    /// Sends `bytes` over TCP to `receiver` (a sink started there on `port`).
    pub fn tcp_to(&self, receiver: &Pod, port: u16, bytes: u64) -> anyhow::Result<Transfer> {
        self.tcp_via(receiver, &receiver.ip, port, port, bytes)
    }

    /// Sends `bytes` over TCP to `address:port` — a Service's address, a NodePort — that
    /// leads to a sink started in `receiver` on `sink_port`.
    pub fn tcp_via(
        &self,
        receiver: &Pod,
        address: &str,
        port: u16,
        sink_port: u16,
        bytes: u64,
    ) -> anyhow::Result<Transfer> {
        let (mut sink, mut sink_out) = receiver.serve(&["tcp-sink", &sink_port.to_string()])?;
        let started = Instant::now();
        let out =
            self.probe(&["tcp-send", address, &port.to_string(), &bytes.to_string()]).output()?;
        let elapsed = started.elapsed();
        let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        anyhow::ensure!(
            out.status.success(),
            "tcp-send {} → {} ({address} port {port}) failed: {}",
            self.name,
            receiver.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut received = String::new();
        sink_out.read_line(&mut received)?;
        let _ = sink.0.wait();
        Ok(Transfer { sent, received: received.trim().to_owned(), elapsed })
    }

    /// Sends `count` UDP datagrams to an echo server started in `receiver`; the sender's
    /// report (`sent=N echoed=M intact=K`).
    pub fn udp_to(&self, receiver: &Pod, port: u16, count: u32) -> anyhow::Result<String> {
        self.udp_via(receiver, &receiver.ip, port, port, count)
    }

    /// Sends `count` UDP datagrams to `address:port`, which leads to an echo server started
    /// in `receiver` on `echo_port`; the sender's report.
    pub fn udp_via(
        &self,
        receiver: &Pod,
        address: &str,
        port: u16,
        echo_port: u16,
        count: u32,
    ) -> anyhow::Result<String> {
        let _echo = receiver.serve(&["udp-echo", &echo_port.to_string()])?;
        let out =
            self.probe(&["udp-send", address, &port.to_string(), &count.to_string()]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}
