//! Virtual-cluster plumbing on one machine, shared by `podlane demo` and the live tests:
//! network namespaces that delete themselves, veth underlays, pods wired as Calico wires
//! them, and a node running the Linux vxlan device exactly as Flannel or Calico program it.
//! Everything goes through `ip` and `bridge` (iproute2); nothing touches the root namespace
//! beyond creating the namespaces and moving devices into them.

use std::process::Command;

/// True when this process runs as root (real uid 0): what namespaces need.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command; an error carries its standard error.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("{program}: {e} (is it installed?)"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace, deleted with every device in it when dropped (when owned).
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates `podlane-<tag>-<pid>-<n>`: unique per process and call.
    pub fn create(tag: &str) -> anyhow::Result<Netns> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("podlane-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on a namespace owned elsewhere: not deleted when dropped.
    pub fn borrowed(name: &str) -> Netns {
        Netns { name: name.to_owned(), owned: false }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Any command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The MAC address of an interface in the namespace.
    pub fn mac_of(&self, interface: &str) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-br", "link", "show", interface])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .nth(2)
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no MAC for {interface} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        }
    }
}

/// Joins two namespaces with a veth pair: each side (namespace, interface, address/24), with
/// `queues` RX and TX queues on each end.
pub fn underlay(
    a: (&Netns, &str, &str),
    b: (&Netns, &str, &str),
    queues: u32,
) -> anyhow::Result<()> {
    let ((a, a_if, a_ip), (b, b_if, b_ip)) = (a, b);
    let command = format!(
        "link add {a_if} netns {} numtxqueues {queues} numrxqueues {queues} type veth \
         peer name {b_if} netns {} numtxqueues {queues} numrxqueues {queues}",
        a.name(),
        b.name()
    );
    run("ip", &command.split_whitespace().collect::<Vec<_>>())?;
    for (ns, dev, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Pod MTU: a 1500-byte underlay less the 50 bytes of VXLAN over IPv4.
pub const POD_MTU: &str = "1450";

/// Wires `pod` into `node` as Calico does: a veth (`eth0` in the pod with `mac`, `host_if` in
/// the node), the pod IP as /32, a default route via 169.254.1.1.
pub fn wire_pod(
    node: &Netns,
    pod: &Netns,
    host_if: &str,
    ip: &str,
    mac: &str,
) -> anyhow::Result<()> {
    run(
        "ip",
        &format!(
            "link add eth0 netns {} address {mac} mtu {POD_MTU} type veth peer name {host_if} netns {} mtu {POD_MTU}",
            pod.name(),
            node.name()
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
    )?;
    pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
    pod.ip(&["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
    node.ip(&["link", "set", host_if, "up"])
}

/// How a CNI programs the Linux vxlan device (REFERENCE.md).
#[derive(Debug, Clone, Copy)]
pub struct KernelProfile {
    pub name: &'static str,
    pub device: &'static str,
    pub vni: u32,
    pub port: u16,
}

/// Flannel's vxlan backend: `flannel.1`, VNI 1, port 8472.
pub const FLANNEL: KernelProfile =
    KernelProfile { name: "flannel", device: "flannel.1", vni: 1, port: 8472 };
/// Calico's VXLAN mode: `vxlan.calico`, VNI 4096, port 4789.
pub const CALICO: KernelProfile =
    KernelProfile { name: "calico", device: "vxlan.calico", vni: 4096, port: 4789 };

/// A remote node as the kernel node is told about it.
#[derive(Debug, Clone)]
pub struct RemoteNode<'a> {
    pub underlay: &'a str,
    pub vtep_mac: &'a str,
    pub pod_cidr: &'a str,
    /// The next hop for its pods, bound to its VTEP MAC by a permanent neighbour entry
    /// (Flannel: the remote subnet's address; Calico: the remote tunnel address).
    pub gateway: &'a str,
}

/// Programs `node` as the profile's CNI does: the vxlan device (`nolearning`, this node's
/// `local` underlay address, on `uplink`) with `vtep_mac` and `overlay_ip`, and for the remote
/// node an onlink route via its gateway, a permanent neighbour and a permanent FDB entry.
/// Also what a node needs to forward for its pods: IP forwarding, no reverse-path filter.
pub fn kernel_vxlan_node(
    node: &Netns,
    profile: KernelProfile,
    uplink: &str,
    local: &str,
    vtep_mac: &str,
    overlay_ip: &str,
    remote: &RemoteNode<'_>,
) -> anyhow::Result<()> {
    for setting in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        node.exec("sysctl", &["-qw", setting])?;
    }
    let (vni, port) = (profile.vni.to_string(), profile.port.to_string());
    node.ip(&[
        "link",
        "add",
        profile.device,
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        local,
        "dev",
        uplink,
        "dstport",
        &port,
        "nolearning",
    ])?;
    node.ip(&["link", "set", profile.device, "address", vtep_mac])?;
    node.ip(&["addr", "add", &format!("{overlay_ip}/32"), "dev", profile.device])?;
    node.ip(&["link", "set", profile.device, "up"])?;
    node.ip(&[
        "route",
        "add",
        remote.pod_cidr,
        "via",
        remote.gateway,
        "dev",
        profile.device,
        "onlink",
    ])?;
    node.ip(&[
        "neigh",
        "add",
        remote.gateway,
        "lladdr",
        remote.vtep_mac,
        "dev",
        profile.device,
        "nud",
        "permanent",
    ])?;
    node.exec(
        "bridge",
        &["fdb", "add", remote.vtep_mac, "dev", profile.device, "dst", remote.underlay],
    )
}

/// Wires a pod into a kernel node (Calico style): the veth, a /32 route to it and proxy ARP
/// on the host side. Proxy ARP answers for 169.254.1.1 only when the node routes that address
/// through another interface (on a real node, its default route); a node in a namespace has
/// none, so the pod gets the answer proxy ARP would give as a permanent entry.
pub fn wire_kernel_pod(
    node: &Netns,
    pod: &Netns,
    host_if: &str,
    ip: &str,
    mac: &str,
) -> anyhow::Result<()> {
    wire_pod(node, pod, host_if, ip, mac)?;
    node.ip(&["route", "add", &format!("{ip}/32"), "dev", host_if])?;
    node.exec("sysctl", &["-qw", &format!("net.ipv4.conf.{host_if}.proxy_arp=1")])?;
    let host_mac = node.mac_of(host_if)?;
    pod.ip(&[
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        &host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
}
