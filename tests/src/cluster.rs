//! Virtual clusters in network namespaces for the live tests: node namespaces joined by a
//! veth underlay, pods as namespaces with a veth into their node (Calico's wiring: the pod IP
//! as /32, default route via 169.254.1.1), `podlane-dataplane` started inside a node, and
//! traffic between pods through `podlane-netprobe` and ping.
//!
//! Everything is owned: namespaces go (with their devices) when dropped, daemons and helper
//! processes are killed when dropped, so a failing test leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::Netns;

pub use control::netns::POD_MTU;

/// A binary of the workspace, next to the running test's directory (`target/<profile>/`).
/// `cargo test --workspace` builds every package's binaries before running tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) and reaped when dropped, unless already waited for.
#[derive(Debug)]
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// `podlane-dataplane` running in a node namespace, its log in a file.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon on `uplink` of `node` with `tables`, plus `extra` arguments.
    pub fn start(
        node: &Netns,
        uplink: &str,
        tables: &Path,
        log: PathBuf,
        extra: &[&str],
    ) -> Daemon {
        let mut args = vec!["--tables", tables.to_str().unwrap()];
        args.extend(extra);
        Daemon::start_with(node, uplink, log, &args)
    }

    /// Starts the daemon on `uplink` of `node` with exactly `extra` besides the uplink and
    /// the control socket ([`Daemon::socket`]: the log's path with the extension `sock`).
    pub fn start_with(node: &Netns, uplink: &str, log: PathBuf, extra: &[&str]) -> Daemon {
        let file = std::fs::File::create(&log).expect("daemon log file");
        let bin = binary("podlane-dataplane");
        let socket = log.with_extension("sock");
        let mut args = vec!["netns", "exec", node.name(), bin.to_str().unwrap()];
        args.extend(["--uplink", uplink]);
        args.extend(["--control-socket", socket.to_str().unwrap()]);
        args.extend(extra);
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start podlane-dataplane");
        Daemon { child: Some(child), log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` `count` times; panics with the log after 20 s or if
    /// the daemon exits first.
    pub fn wait_for(&mut self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("podlane-dataplane exited ({status}) before logging {needle:?}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the daemon's log after 20 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's process id (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon still owned").id()
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.log.with_extension("sock")
    }

    /// Until the uplink program is attached and `pods` pod interfaces too.
    pub fn wait_ready(&mut self, pods: usize) {
        self.wait_for("forwarding", 1);
        self.wait_for("pod interface attached", pods);
        self.wait_for("next hop resolved", 1);
    }

    fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon still owned");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("podlane-dataplane did not exit within 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(child) = &self.child {
            signal(child.id(), "-TERM");
        }
        self.wait()
    }

    /// SIGKILL, and the exit status.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(child) = &self.child {
            signal(child.id(), "-KILL");
        }
        self.wait()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pod: its namespace, address, MAC and the host-side veth in its node.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub host_if: String,
}

impl Pod {
    /// Creates the pod `name` in `node` with a veth (`eth0` inside, `host_if` in the node).
    pub fn new(node: &Netns, name: &str, host_if: &str, ip: &str, mac: &str) -> Pod {
        let ns = Netns::new("pod");
        control::netns::wire_pod(node.inner(), ns.inner(), host_if, ip, mac)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Pod {
            ns,
            name: name.to_owned(),
            ip: ip.to_owned(),
            mac: mac.to_owned(),
            host_if: host_if.to_owned(),
        }
    }

    /// Treats an existing namespace (a plain host on the underlay) as a traffic endpoint.
    pub fn wrap(ns: Netns, name: &str, ip: &str) -> Pod {
        Pod {
            ns,
            name: name.to_owned(),
            ip: ip.to_owned(),
            mac: String::new(),
            host_if: String::new(),
        }
    }

    /// Sends `bytes` over TCP to a sink running in the namespace `node` at `ip`.
    pub fn tcp_to_node(&self, node: &Netns, ip: &str, port: u16, bytes: u64) -> (String, String) {
        let receiver = Pod {
            ns: Netns::borrowed(node.name()),
            name: node.name().to_owned(),
            ip: ip.to_owned(),
            mac: String::new(),
            host_if: String::new(),
        };
        self.tcp_to(&receiver, port, bytes)
    }

    /// The endpoint entry of this pod in a tables file.
    pub fn endpoint_json(&self) -> String {
        format!(
            r#"{{"namespace": "default", "name": "{}", "ips": ["{}"], "mac": "{}", "interface": "{}"}}"#,
            self.name, self.ip, self.mac, self.host_if
        )
    }

    /// `ping -c COUNT` to `dst`; the number of replies.
    pub fn ping(&self, dst: &str, count: u32) -> u32 {
        let out = Command::new("ip")
            .args(["netns", "exec", self.ns.name(), "ping", "-n", "-q", "-c", &count.to_string()])
            .args(["-i", "0.2", "-W", "2", dst])
            .output()
            .expect("run ping");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(", ")
            .find_map(|part| part.strip_suffix(" received").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    }

    fn probe(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()]).arg(binary("podlane-netprobe")).args(args);
        cmd
    }

    /// Starts a helper that prints `ready` when listening, and waits for that line.
    fn serve(&self, args: &[&str]) -> (Background, BufReader<std::process::ChildStdout>) {
        let mut child = self
            .probe(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start podlane-netprobe");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read helper output");
        assert_eq!(line.trim(), "ready", "podlane-netprobe {args:?} did not start");
        (Background(child), stdout)
    }

    /// Sends `bytes` over TCP to `dst` (a pod in `receiver`), returning what the sender and
    /// the receiver report (`bytes=N digest=H` each).
    pub fn tcp_to(&self, receiver: &Pod, port: u16, bytes: u64) -> (String, String) {
        let port = port.to_string();
        let (mut sink, mut sink_out) = receiver.serve(&["tcp-sink", &port]);
        let out = self
            .probe(&["tcp-send", &receiver.ip, &port, &bytes.to_string()])
            .output()
            .expect("run tcp-send");
        let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "tcp-send {} → {} failed: {}",
            self.name,
            receiver.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut received = String::new();
        sink_out.read_line(&mut received).expect("read tcp-sink result");
        let _ = sink.0.wait();
        (sent, received.trim().to_owned())
    }

    /// Sends `count` UDP datagrams to an echo server in `receiver`; the sender's report
    /// (`sent=N echoed=M intact=K`).
    pub fn udp_to(&self, receiver: &Pod, port: u16, count: u32) -> String {
        let port = port.to_string();
        let _echo = receiver.serve(&["udp-echo", &port]);
        let out = self
            .probe(&["udp-send", &receiver.ip, &port, &count.to_string()])
            .output()
            .expect("run udp-send");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Connects two node namespaces with a veth underlay: `a_if` in `a` with `a_ip/24`, `b_if`
/// in `b` with `b_ip/24`.
pub fn underlay(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    underlay_with_queues((a, a_if, a_ip), (b, b_if, b_ip), 1);
}

/// [`underlay`] with `queues` RX and TX queues on each end (one AF_XDP socket per queue):
/// each side is (namespace, interface, address).
pub fn underlay_with_queues(a: (&Netns, &str, &str), b: (&Netns, &str, &str), queues: u32) {
    control::netns::underlay((a.0.inner(), a.1, a.2), (b.0.inner(), b.1, b.2), queues)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// A node entry of a tables file.
pub fn node_json(name: &str, underlay: &str, vtep_mac: &str, pod_cidr: &str) -> String {
    format!(
        r#"{{"name": "{name}", "underlay": "{underlay}", "vtep_mac": "{vtep_mac}", "pod_cidrs": ["{pod_cidr}"]}}"#
    )
}

/// A tables file for `local`, written to `path`.
pub fn write_tables(path: &Path, local: &str, nodes: &[String], pods: &[&Pod]) {
    let endpoints: Vec<String> = pods.iter().map(|p| p.endpoint_json()).collect();
    let text = format!(
        "{{\"local_node\": \"{local}\",\n \"nodes\": [{}],\n \"endpoints\": [{}]}}\n",
        nodes.join(",\n  "),
        endpoints.join(",\n  ")
    );
    std::fs::write(path, text).expect("write tables");
}

/// Interfaces in `ns` with an XDP program attached (from `ip -d link`).
pub fn xdp_attached(ns: &Netns) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-d", "-o", "link", "show"])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" xdp") || l.contains("prog/xdp"))
        .map(|l| l.split(": ").nth(1).unwrap_or(l).split('@').next().unwrap_or_default().to_owned())
        .collect()
}

/// The single-node set-up of several tests: `node-a` (namespace `<tag>node`, its uplink
/// `uplink` at 192.168.`subnet`.1) with an underlay peer `node-b` (`<tag>peer`, .2) and two
/// local pods, p1 (10.244.1.2) and p2 (10.244.1.3). Fields drop pods first, as locals would.
#[derive(Debug)]
pub struct OneNode {
    pub p1: Pod,
    pub p2: Pod,
    pub peer: Netns,
    pub node: Netns,
    pub dir: crate::ScratchDir,
    subnet: u8,
}

impl OneNode {
    pub fn new(tag: &str, subnet: u8) -> OneNode {
        let dir = crate::ScratchDir::new(tag);
        let node = Netns::new(&format!("{tag}node"));
        let peer = Netns::new(&format!("{tag}peer"));
        let (node_ip, peer_ip) = (format!("192.168.{subnet}.1"), format!("192.168.{subnet}.2"));
        underlay(&node, "uplink", &node_ip, &peer, "eth0", &peer_ip);
        let p1 = Pod::new(&node, "p1", "veth-p1", "10.244.1.2", "0a:58:0a:f4:01:02");
        let p2 = Pod::new(&node, "p2", "veth-p2", "10.244.1.3", "0a:58:0a:f4:01:03");
        OneNode { p1, p2, peer, node, dir, subnet }
    }

    /// Writes node-a's tables (both nodes, p1, p2 and `more` pods) and returns their path.
    pub fn write_tables(&self, more: &[&Pod]) -> PathBuf {
        let underlay_ip = |host: u8| format!("192.168.{}.{host}", self.subnet);
        let nodes = [
            node_json("node-a", &underlay_ip(1), "0a:aa:00:00:00:01", "10.244.1.0/24"),
            node_json("node-b", &underlay_ip(2), "0a:bb:00:00:00:01", "10.244.2.0/24"),
        ];
        let pods: Vec<&Pod> =
            [&self.p1, &self.p2].into_iter().chain(more.iter().copied()).collect();
        let path = self.dir.path().join("tables.json");
        write_tables(&path, "node-a", &nodes, &pods);
        path
    }
}
