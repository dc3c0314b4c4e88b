//! A node whose overlay is the Linux vxlan device, programmed exactly as Flannel's vxlan
//! backend or Calico's VXLAN mode program it (../shared/REFERENCE.md), and pods wired into
//! such a node. This is the peer podlane must interoperate with, and the kernel side of every
//! comparison.

use crate::netns::Netns;
use crate::pod::{self, Pod};

/// How a CNI programs the Linux vxlan device.
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
pub fn vxlan_node(
    node: &Netns,
    profile: KernelProfile,
    uplink: &str,
    local: &str,
    vtep_mac: &str,
    overlay_ip: &str,
    remote: &RemoteNode<'_>,
) -> anyhow::Result<()> {
    vxlan_device(node, profile, uplink, local, vtep_mac, overlay_ip)?;
    add_remote(node, profile, remote)
}

/// [`vxlan_node`] before it knows any remote node: the device alone, as the CNI's agent
/// creates it at start, and the forwarding settings. Remote nodes come with [`add_remote`].
pub fn vxlan_device(
    node: &Netns,
    profile: KernelProfile,
    uplink: &str,
    local: &str,
    vtep_mac: &str,
    overlay_ip: &str,
) -> anyhow::Result<()> {
    node.sysctl(&[
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ])?;
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
    Ok(())
}

/// Programs `node`'s vxlan device for one more remote node: an onlink route to its pod CIDR
/// via its gateway, a permanent neighbour entry binding the gateway to its VTEP MAC, and a
/// permanent FDB entry sending that MAC to its underlay address (what Flannel adds per node).
pub fn add_remote(
    node: &Netns,
    profile: KernelProfile,
    remote: &RemoteNode<'_>,
) -> anyhow::Result<()> {
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

/// Node B of the testbed's two-node clusters as Flannel programs it: subnet 10.244.2.0/24
/// (vxlan address 10.244.2.0), facing node A (`peer`, VTEP `peer_vtep`) and its subnet
/// 10.244.1.0/24 behind A's subnet address. Pods are wired separately ([`wire_pod`]).
pub fn flannel_node_b(
    node: &Netns,
    uplink: &str,
    local: &str,
    vtep_mac: &str,
    peer: &str,
    peer_vtep: &str,
) -> anyhow::Result<()> {
    let remote = RemoteNode {
        underlay: peer,
        vtep_mac: peer_vtep,
        pod_cidr: "10.244.1.0/24",
        gateway: "10.244.1.0",
    };
    vxlan_node(node, FLANNEL, uplink, local, vtep_mac, "10.244.2.0", &remote)
}

/// Wires a pod into a kernel node (Calico style): the veth, a /32 route to it and proxy ARP
/// on the host side. Proxy ARP answers for 169.254.1.1 only when the node routes that address
/// through another interface (on a real node, its default route); a node in a namespace has
/// none, so the pod gets the answer proxy ARP would give as a permanent entry.
pub fn wire_pod(
    node: &Netns,
    name: &str,
    host_if: &str,
    ip: &str,
    mac: &str,
) -> anyhow::Result<Pod> {
    let pod = pod::Pod::wire(node, name, host_if, ip, mac)?;
    node.ip(&["route", "add", &format!("{ip}/32"), "dev", host_if])?;
    node.sysctl(&[&format!("net.ipv4.conf.{host_if}.proxy_arp=1")])?;
    let host_mac = node.mac_of(host_if)?;
    pod.ns.pin_neighbour(pod::GATEWAY_V4, &host_mac, "eth0")?;
    Ok(pod)
}
