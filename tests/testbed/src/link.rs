//! Links between namespaces: veth pairs, underlays (a veth with an address on each end), a
//! bridged switch for more than two nodes, devices moved into a namespace, and a real NIC lent
//! to a namespace for the length of a run.

use crate::netns::{self, Netns, run};

/// One end of a link: the namespace, the interface name, and optionally its address with
/// prefix length (`192.168.80.1/24`).
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub ns: &'a Netns,
    pub interface: &'a str,
    pub address: Option<&'a str>,
}

impl<'a> End<'a> {
    pub fn new(ns: &'a Netns, interface: &'a str) -> End<'a> {
        End { ns, interface, address: None }
    }

    pub fn with_address(ns: &'a Netns, interface: &'a str, address: &'a str) -> End<'a> {
        End { ns, interface, address: Some(address) }
    }
}

/// Creates a veth pair between two namespaces with `queues` RX and TX queues on each end,
/// gives each end its address (if any) and brings both up.
pub fn veth_pair(a: End<'_>, b: End<'_>, queues: u32) -> anyhow::Result<()> {
    let queues = queues.to_string();
    run(
        "ip",
        &[
            "link",
            "add",
            a.interface,
            "netns",
            a.ns.name(),
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            b.interface,
            "netns",
            b.ns.name(),
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
        ],
    )?;
    for end in [a, b] {
        if let Some(address) = end.address {
            end.ns.ip(&["addr", "add", address, "dev", end.interface])?;
        }
        end.ns.ip(&["link", "set", end.interface, "up"])?;
    }
    Ok(())
}

/// Joins two node namespaces with a veth underlay: each side (namespace, interface, IPv4
/// address, which gets a /24), with `queues` RX and TX queues on each end.
pub fn underlay(
    a: (&Netns, &str, &str),
    b: (&Netns, &str, &str),
    queues: u32,
) -> anyhow::Result<()> {
    let (a_addr, b_addr) = (format!("{}/24", a.2), format!("{}/24", b.2));
    veth_pair(End::with_address(a.0, a.1, &a_addr), End::with_address(b.0, b.1, &b_addr), queues)
}

/// Adds `address` (with its prefix length) to `interface`; an IPv6 one without duplicate
/// address detection, so that it is usable at once.
pub fn add_address(ns: &Netns, interface: &str, address: &str) -> anyhow::Result<()> {
    if address.contains(':') {
        ns.ip(&["-6", "addr", "add", address, "dev", interface, "nodad"])
    } else {
        ns.ip(&["addr", "add", address, "dev", interface])
    }
}

/// Sets an interface's MTU.
pub fn set_mtu(ns: &Netns, interface: &str, mtu: u32) -> anyhow::Result<()> {
    ns.ip(&["link", "set", interface, "mtu", &mtu.to_string()])
}

/// What a NIC without tunnel offloads does not do, for `ethtool -K`: the kernel segments
/// (and its UDP tunnels) in software before the wire.
pub const NO_SEGMENTATION_OFFLOADS: [&str; 8] = [
    "tso",
    "off",
    "gso",
    "off",
    "tx-udp_tnl-segmentation",
    "off",
    "tx-udp_tnl-csum-segmentation",
    "off",
];

/// `ethtool -K interface FEATURE on|off ...` in the namespace (GRO, TSO, ...).
pub fn set_features(ns: &Netns, interface: &str, features: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["-K", interface];
    args.extend_from_slice(features);
    ns.exec("ethtool", &args).map_err(|e| e.context("ethtool (Debian: apt-get install ethtool)"))
}

/// A layer-2 switch: a bridge `br0` in a namespace of its own, for underlays of more than
/// two nodes.
#[derive(Debug)]
pub struct Switch {
    ns: Netns,
    ports: u32,
}

impl Switch {
    pub fn new(tag: &str) -> anyhow::Result<Switch> {
        let ns = Netns::create(tag)?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Switch { ns, ports: 0 })
    }

    /// Plugs `interface` of `node` (with `address`, a /24 is added) into the switch.
    pub fn plug(&mut self, node: &Netns, interface: &str, address: &str) -> anyhow::Result<()> {
        self.plug_with(node, interface, &[&format!("{address}/24")])
    }

    /// Plugs `interface` of `node` into the switch with `addresses` (each with its prefix
    /// length; IPv6 ones usable at once, without duplicate address detection).
    pub fn plug_with(
        &mut self,
        node: &Netns,
        interface: &str,
        addresses: &[&str],
    ) -> anyhow::Result<()> {
        let port = format!("port{}", self.ports);
        self.ports += 1;
        veth_pair(End::new(node, interface), End::new(&self.ns, &port), 1)?;
        for address in addresses {
            add_address(node, interface, address)?;
        }
        self.ns.ip(&["link", "set", &port, "master", "br0"])
    }
}

/// Moves a device of the root namespace (a TAP this process created, say) into `ns` and
/// brings it up.
pub fn move_into(device: &str, ns: &Netns) -> anyhow::Result<()> {
    run("ip", &["link", "set", device, "netns", ns.name()])?;
    ns.ip(&["link", "set", device, "up"])
}

/// A real NIC moved from the root namespace into a namespace for a run, with its IPv4
/// addresses; moved back, addresses and MTU restored, when dropped.
#[derive(Debug)]
pub struct LentNic {
    name: String,
    ns: String,
    addresses: Vec<String>,
    mtu: u32,
}

impl LentNic {
    /// Moves `nic` into `ns` with its addresses, at an MTU of at least `min_mtu`.
    pub fn lend(nic: &str, ns: &Netns, min_mtu: u32) -> anyhow::Result<LentNic> {
        let addresses = netns::ipv4_addresses(None, nic)?;
        let mtu: u32 = std::fs::read_to_string(format!("/sys/class/net/{nic}/mtu"))
            .map_err(|e| anyhow::anyhow!("reading the MTU of {nic}: {e}"))?
            .trim()
            .parse()?;
        run("ip", &["link", "set", nic, "netns", ns.name()])?;
        let lent = LentNic { name: nic.to_owned(), ns: ns.name().to_owned(), addresses, mtu };
        for a in &lent.addresses {
            ns.ip(&["addr", "add", a, "dev", nic])?;
        }
        ns.ip(&["link", "set", nic, "mtu", &min_mtu.max(mtu).to_string(), "up"])?;
        Ok(lent)
    }

    /// Its IPv4 addresses as `ADDRESS/PREFIX`.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }
}

impl Drop for LentNic {
    fn drop(&mut self) {
        let _ = run("ip", &["-n", &self.ns, "link", "set", &self.name, "netns", "1"]);
        for a in &self.addresses {
            let _ = run("ip", &["addr", "add", a, "dev", &self.name]);
        }
        let _ = run("ip", &["link", "set", &self.name, "mtu", &self.mtu.to_string(), "up"]);
    }
}
