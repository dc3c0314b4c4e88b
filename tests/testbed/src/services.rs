//! Services on a node, as kube-proxy's iptables mode programs them (`-t nat`, both families):
//! KUBE-SERVICES hooked from PREROUTING (traffic through the node) and OUTPUT (the node's
//! own), one DNAT per Service port, KUBE-MARK-MASQ for what must be masqueraded (NodePorts,
//! off-cluster sources) and KUBE-POSTROUTING doing it; and a CNI's ipMasq, which masquerades
//! pod traffic leaving the cluster. The node's kernel does the rest; the dataplane under test
//! must carry it.

use crate::netns::Netns;

/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000/0x4000";

/// The `iptables` of `address`'s family.
fn tool(address: &str) -> &'static str {
    if address.contains(':') { "ip6tables" } else { "iptables" }
}

/// `address:port` as a DNAT target (`[v6]:port`).
fn target(address: &str, port: u16) -> String {
    if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") }
}

/// kube-proxy's chains, empty, in both families.
pub fn install(node: &Netns) -> anyhow::Result<()> {
    for tool in ["iptables", "ip6tables"] {
        for chain in ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"] {
            node.exec(tool, &["-w", "-t", "nat", "-N", chain])?;
        }
        node.exec(
            tool,
            &["-w", "-t", "nat", "-A", "KUBE-MARK-MASQ", "-j", "MARK", "--set-xmark", MASQ_MARK],
        )?;
        node.exec(
            tool,
            &[
                "-w",
                "-t",
                "nat",
                "-A",
                "KUBE-POSTROUTING",
                "-m",
                "mark",
                "--mark",
                MASQ_MARK,
                "-j",
                "MASQUERADE",
            ],
        )?;
        for (hook, chain) in [
            ("PREROUTING", "KUBE-SERVICES"),
            ("OUTPUT", "KUBE-SERVICES"),
            ("POSTROUTING", "KUBE-POSTROUTING"),
        ] {
            node.exec(tool, &["-w", "-t", "nat", "-A", hook, "-j", chain])?;
        }
    }
    Ok(())
}

/// A ClusterIP Service `ip:port` (`protocol` tcp or udp) with one backend; sources outside
/// `cluster_cidr` are masqueraded, as kube-proxy does with `--cluster-cidr`.
pub fn cluster_ip(
    node: &Netns,
    protocol: &str,
    (ip, port): (&str, u16),
    (backend, backend_port): (&str, u16),
    cluster_cidr: &str,
) -> anyhow::Result<()> {
    let tool = tool(ip);
    let port = port.to_string();
    let to = target(backend, backend_port);
    node.exec(
        tool,
        &[
            "-w",
            "-t",
            "nat",
            "-A",
            "KUBE-SERVICES",
            "-d",
            ip,
            "-p",
            protocol,
            "--dport",
            &port,
            "!",
            "-s",
            cluster_cidr,
            "-j",
            "KUBE-MARK-MASQ",
        ],
    )?;
    node.exec(
        tool,
        &[
            "-w",
            "-t",
            "nat",
            "-A",
            "KUBE-SERVICES",
            "-d",
            ip,
            "-p",
            protocol,
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ],
    )
}

/// A NodePort `port` on every local address of the family of `backend`. `masquerade`: as
/// `externalTrafficPolicy: Cluster` (the backend sees the node); without it, as `Local` (the
/// backend sees the client).
pub fn node_port(
    node: &Netns,
    port: u16,
    (backend, backend_port): (&str, u16),
    masquerade: bool,
) -> anyhow::Result<()> {
    let tool = tool(backend);
    let port = port.to_string();
    let local = ["-m", "addrtype", "--dst-type", "LOCAL", "-p", "tcp", "--dport", &port];
    if masquerade {
        let mut args = vec!["-w", "-t", "nat", "-A", "KUBE-SERVICES"];
        args.extend(local);
        args.extend(["-j", "KUBE-MARK-MASQ"]);
        node.exec(tool, &args)?;
    }
    let to = target(backend, backend_port);
    let mut args = vec!["-w", "-t", "nat", "-A", "KUBE-SERVICES"];
    args.extend(local);
    args.extend(["-j", "DNAT", "--to-destination", &to]);
    node.exec(tool, &args)
}

/// A CNI's ipMasq: pod traffic from `cluster_cidr` to anywhere outside it is masqueraded.
pub fn masquerade_outbound(node: &Netns, cluster_cidr: &str) -> anyhow::Result<()> {
    node.exec(
        tool(cluster_cidr),
        &[
            "-w",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            cluster_cidr,
            "!",
            "-d",
            cluster_cidr,
            "-j",
            "MASQUERADE",
        ],
    )
}
