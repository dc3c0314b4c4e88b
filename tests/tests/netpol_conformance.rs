//! NetworkPolicy as Kubernetes defines it, live, in the shape of the upstream truth-table
//! tests: namespaces x, y and z with pods a, b and c each, spread over two podlane nodes driven
//! by `podlane agent` from one cluster file, and a pod d in each namespace on a third node that
//! runs the kernel's vxlan device as Flannel programs it (and enforces no policy, as a Flannel
//! node would not); TCP and UDP servers on ports 80 and 81 in every pod.
//! For each policy case the cluster file is rewritten, the test waits until both dataplanes
//! hold the tables the agent computes for them, and every pod probes every pod on both
//! protocols and ports (12 × 12 × 2 × 2); the matrix is compared with the case's expectation and
//! printed whole on a mismatch. A pod probing itself is expected to reach itself whatever the
//! policy, as upstream's `AllowLoopback` has it: the packet never leaves the pod.
//!
//! A policy selecting a pod on the kernel node has no effect there: the expectation of an
//! ingress case exempts probes to the kernel node's pods, that of an egress case probes from
//! them. Last, a policy change under two established TCP connections: the one the new policy
//! no longer allows is cut, the other goes on.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use control::client::Client;
use control::cluster::Cluster;
use podlane_core::api::{Query, Request, Response};
use podlane_tests::require_root;
use testbed::link::Switch;
use testbed::podlane::{self, Dataplane};
use testbed::{Netns, Pod, ScratchDir, Service, kernel};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const NAMES: [&str; 3] = ["a", "b", "c"];
const NODES: [(&str, &str, &str, &str); 3] = [
    ("node-a", "192.168.86.1", "0a:aa:00:00:00:01", "10.244.1"),
    ("node-b", "192.168.86.2", "0a:bb:00:00:00:01", "10.244.2"),
    ("node-c", "192.168.86.3", "0a:cc:00:00:00:01", "10.244.3"),
];
/// Nodes 0 and 1 run podlane; node 2 the kernel's vxlan device.
const KERNEL_NODE: usize = 2;

/// A pod of the matrix: namespace, name, node index, address.
#[derive(Debug, Clone)]
struct Spot {
    namespace: &'static str,
    name: &'static str,
    node: usize,
    ip: String,
    mac: String,
    interface: String,
}

impl Spot {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn spots() -> Vec<Spot> {
    let mut spots = Vec::new();
    for (i, (namespace, name)) in
        NAMESPACES.iter().flat_map(|ns| NAMES.iter().map(move |n| (*ns, *n))).enumerate()
    {
        let node = i % 2;
        let host = 10 + i;
        spots.push(Spot {
            namespace,
            name,
            node,
            ip: format!("{}.{host}", NODES[node].3),
            mac: format!("0a:58:0a:f4:0{}:{host:02x}", node + 1),
            interface: format!("v{namespace}{name}"),
        });
    }
    for (j, namespace) in NAMESPACES.iter().enumerate() {
        let host = 10 + j;
        spots.push(Spot {
            namespace,
            name: "d",
            node: KERNEL_NODE,
            ip: format!("{}.{host}", NODES[KERNEL_NODE].3),
            mac: format!("0a:58:0a:f4:03:{host:02x}"),
            interface: format!("v{namespace}d"),
        });
    }
    spots
}

/// The cluster file: the nodes, the namespaces (labelled `ns: <name>`), the pods (labelled
/// `pod: <name>`, with named container ports), and `policies` (YAML list items).
fn cluster_yaml(spots: &[Spot], policies: &str) -> String {
    let mut text = String::from("namespaces:\n");
    for ns in NAMESPACES {
        text += &format!("  - {{name: {ns}, labels: {{ns: {ns}}}}}\n");
    }
    text += "nodes:\n";
    for (name, underlay, vtep, prefix) in NODES {
        text += &format!(
            "  - {{name: {name}, underlay: {underlay}, vtepMAC: \"{vtep}\", podCIDR: {prefix}.0/24}}\n"
        );
    }
    text += "pods:\n";
    for s in spots {
        text += &format!(
            "  - {{namespace: {}, name: {}, ip: {}, mac: \"{}\", node: {}, interface: {}, \
             labels: {{pod: {}}}, ports: [{{name: serve-80-tcp, containerPort: 80}}, \
             {{name: serve-81-udp, containerPort: 81, protocol: UDP}}]}}\n",
            s.namespace, s.name, s.ip, s.mac, NODES[s.node].0, s.interface, s.name
        );
    }
    text += "networkPolicies:\n";
    text += if policies.trim().is_empty() { "  []\n" } else { policies };
    text
}

/// One probe: from, to, protocol, port.
type Probe = (String, String, &'static str, u16);

/// Every pod probes every pod on TCP and UDP, ports 80 and 81, all at once.
fn matrix(spots: &[Spot], pods: &[Pod]) -> BTreeMap<Probe, bool> {
    let targets: Vec<(String, &'static str, u16, String)> = spots
        .iter()
        .flat_map(|to| {
            ["tcp", "udp"].into_iter().flat_map(move |protocol| {
                [80u16, 81].into_iter().map(move |port| {
                    (to.key(), protocol, port, format!("{protocol}/{}/{port}", to.ip))
                })
            })
        })
        .collect();
    let children: Vec<_> = pods
        .iter()
        .map(|pod| {
            let mut args = vec!["reach".to_owned(), "800".to_owned()];
            args.extend(targets.iter().map(|t| t.3.clone()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pod.probe(&args).stdout(Stdio::piped()).spawn().expect("reach")
        })
        .collect();
    let mut result = BTreeMap::new();
    for (from, child) in spots.iter().zip(children) {
        let out = child.wait_with_output().expect("reach output");
        let lines: Vec<String> =
            String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), targets.len(), "reach from {}: {lines:?}", from.key());
        for ((to, protocol, port, _), line) in targets.iter().zip(lines) {
            result.insert((from.key(), to.clone(), *protocol, *port), line.ends_with(" ok"));
        }
    }
    result
}

/// The matrix as a table: one line per source pod, `.` reachable, `X` not, per target and
/// (tcp/80, tcp/81, udp/80, udp/81).
fn render(spots: &[Spot], m: &BTreeMap<Probe, bool>) -> String {
    let mut out = format!("{:6}", "");
    for to in spots {
        out += &format!(" {:5}", to.key());
    }
    out += "\n";
    for from in spots {
        out += &format!("{:6}", from.key());
        for to in spots {
            let cell: String = [("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81)]
                .iter()
                .map(|(p, port)| if m[&(from.key(), to.key(), *p, *port)] { '.' } else { 'X' })
                .collect();
            out += &format!(" {cell} ");
        }
        out += "\n";
    }
    out
}

/// Waits until every node's dataplane holds the tables the agent computes from `text`.
fn wait_applied(text: &str, sockets: &[&Path]) {
    let cluster = Cluster::from_yaml(text).expect("the case's cluster file parses");
    for (i, socket) in sockets.iter().enumerate() {
        let expected = cluster.tables_for(NODES[i].0, &[]).expect("the case's tables compute");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let held = Client::connect(socket, "netpol-conformance")
                .and_then(|mut c| c.request(&Request::Query { what: Query::Tables }));
            if let Ok(Response::Tables { tables, .. }) = held
                && tables.policies == expected.policies
                && tables
                    .endpoints
                    .iter()
                    .map(|e| (&e.ingress_policy, &e.egress_policy))
                    .eq(expected.endpoints.iter().map(|e| (&e.ingress_policy, &e.egress_policy)))
            {
                break;
            }
            assert!(Instant::now() < deadline, "{}: the agent did not apply the case", NODES[i].0);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Which side a case's policies police.
#[derive(PartialEq)]
enum Side {
    None,
    Ingress,
    Egress,
}

/// A policy case: its name, its policies (YAML list items), what they police, and what they
/// allow.
struct Case {
    name: &'static str,
    policies: &'static str,
    side: Side,
    allows: fn(from: &Spot, to: &Spot, protocol: &str, port: u16) -> bool,
}

const CASES: &[Case] = &[
    Case { name: "no policy", side: Side::None, policies: "", allows: |_, _, _, _| true },
    Case {
        name: "default-deny ingress in x",
        side: Side::Ingress,
        policies: "  - metadata: {name: deny, namespace: x}\n    spec: {podSelector: {}, policyTypes: [Ingress]}\n",
        allows: |_, to, _, _| to.namespace != "x",
    },
    Case {
        name: "allow from the same namespace in x",
        side: Side::Ingress,
        policies: "  - metadata: {name: same, namespace: x}\n    spec:\n      podSelector: {}\n      ingress: [{from: [{podSelector: {}}]}]\n",
        allows: |from, to, _, _| to.namespace != "x" || from.namespace == "x",
    },
    Case {
        name: "allow to x/a from namespace y by label, TCP 80 only",
        side: Side::Ingress,
        policies: "  - metadata: {name: from-y, namespace: x}\n    spec:\n      podSelector: {matchLabels: {pod: a}}\n      ingress:\n        - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n          ports: [{port: 80}]\n",
        allows: |from, to, protocol, port| {
            to.key() != "x/a" || (from.namespace == "y" && protocol == "tcp" && port == 80)
        },
    },
    Case {
        name: "pod selector AND namespace selector: to x/a from pods b of namespace z",
        side: Side::Ingress,
        policies: "  - metadata: {name: and, namespace: x}\n    spec:\n      podSelector: {matchLabels: {pod: a}}\n      ingress:\n        - from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}]\n",
        allows: |from, to, _, _| to.key() != "x/a" || from.key() == "z/b",
    },
    Case {
        name: "named port and endPort: x/a takes serve-81-udp, x/b TCP 80 to 81",
        side: Side::Ingress,
        policies: "  - metadata: {name: named, namespace: x}\n    spec:\n      podSelector: {matchLabels: {pod: a}}\n      ingress: [{ports: [{protocol: UDP, port: serve-81-udp}]}]\n  - metadata: {name: range, namespace: x}\n    spec:\n      podSelector: {matchLabels: {pod: b}}\n      ingress: [{ports: [{port: 80, endPort: 81}]}]\n",
        allows: |_, to, protocol, port| match to.key().as_str() {
            "x/a" => protocol == "udp" && port == 81,
            "x/b" => protocol == "tcp",
            _ => true,
        },
    },
    Case {
        name: "ipBlock with except: to y/c from the pod network but y/a",
        side: Side::Ingress,
        policies: "  - metadata: {name: block, namespace: y}\n    spec:\n      podSelector: {matchLabels: {pod: c}}\n      ingress:\n        - from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.13/32]}}]\n",
        allows: |from, to, _, _| to.key() != "y/c" || from.key() != "y/a",
    },
    Case {
        name: "deny all to y, plus an allow for TCP 81",
        side: Side::Ingress,
        policies: "  - metadata: {name: deny, namespace: y}\n    spec: {podSelector: {}, policyTypes: [Ingress]}\n  - metadata: {name: allow-81, namespace: y}\n    spec:\n      podSelector: {}\n      ingress: [{ports: [{port: 81}]}]\n",
        allows: |_, to, protocol, port| to.namespace != "y" || (protocol == "tcp" && port == 81),
    },
    Case {
        name: "default-deny egress in z with DNS allowed",
        side: Side::Egress,
        policies: "  - metadata: {name: dns-only, namespace: z}\n    spec:\n      podSelector: {}\n      policyTypes: [Egress]\n      egress: [{ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]}]\n",
        allows: |from, _, _, _| from.namespace != "z",
    },
    Case {
        name: "egress from z to a CIDR: node-a's pods",
        side: Side::Egress,
        policies: "  - metadata: {name: to-node-a, namespace: z}\n    spec:\n      podSelector: {}\n      policyTypes: [Egress]\n      egress: [{to: [{ipBlock: {cidr: 10.244.1.0/24}}]}]\n",
        allows: |from, to, _, _| from.namespace != "z" || to.node == 0,
    },
    Case {
        name: "default-deny egress in z (replies to z still pass)",
        side: Side::Egress,
        policies: "  - metadata: {name: deny-out, namespace: z}\n    spec: {podSelector: {}, policyTypes: [Egress]}\n",
        allows: |from, _, _, _| from.namespace != "z",
    },
];

#[test]
fn netpol_conformance() -> anyhow::Result<()> {
    if !require_root("netpol_conformance") {
        return Ok(());
    }
    let dir = ScratchDir::new("netpol")?;
    let spots = spots();
    assert_eq!(spots.iter().find(|s| s.key() == "y/a").map(|s| s.ip.as_str()), Some("10.244.2.13"));
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, cluster_yaml(&spots, ""))?;
    let mut switch = Switch::new("np")?;
    let mut nodes: Vec<(Netns, Dataplane, Service)> = Vec::new();
    for (name, underlay, _, _) in &NODES[..KERNEL_NODE] {
        let (name, underlay) = (*name, *underlay);
        let ns = Netns::create(&format!("np{}", &name[5..]))?;
        switch.plug(&ns, "uplink", underlay)?;
        let daemon = Dataplane::start(
            &ns,
            "uplink",
            &dir.path().join(format!("{name}.log")),
            &["--node-name", name, "--node-ip", underlay],
        )?;
        let agent = podlane::agent(
            name,
            daemon.socket(),
            &cluster,
            &dir.path().join(format!("agent-{name}.log")),
        )?;
        nodes.push((ns, daemon, agent));
    }
    // Node C: the kernel's vxlan device as Flannel programs it, facing nodes A and B.
    let kernel_ns = Netns::create("npc")?;
    let (_, c_underlay, c_vtep, c_prefix) = NODES[KERNEL_NODE];
    switch.plug(&kernel_ns, "uplink", c_underlay)?;
    for (i, (_, underlay, vtep, prefix)) in NODES[..KERNEL_NODE].iter().enumerate() {
        let (cidr, gateway) = (format!("{prefix}.0/24"), format!("{prefix}.0"));
        let remote =
            kernel::RemoteNode { underlay, vtep_mac: vtep, pod_cidr: &cidr, gateway: &gateway };
        if i == 0 {
            let overlay = format!("{c_prefix}.0");
            let profile = kernel::FLANNEL;
            kernel::vxlan_node(
                &kernel_ns, profile, "uplink", c_underlay, c_vtep, &overlay, &remote,
            )?;
        } else {
            kernel::add_remote(&kernel_ns, kernel::FLANNEL, &remote)?;
        }
    }
    let pods: Vec<Pod> = spots
        .iter()
        .map(|s| {
            let name = s.key().replace('/', "-");
            if s.node == KERNEL_NODE {
                kernel::wire_pod(&kernel_ns, &name, &s.interface, &s.ip, &s.mac)
            } else {
                Pod::wire(&nodes[s.node].0, &name, &s.interface, &s.ip, &s.mac)
            }
        })
        .collect::<anyhow::Result<_>>()?;
    for (i, (_, daemon, _)) in nodes.iter_mut().enumerate() {
        daemon.wait_ready(spots.iter().filter(|s| s.node == i).count())?;
    }
    let servers: Vec<_> =
        pods.iter().map(|p| p.serve(&["serve", "80", "81"])).collect::<anyhow::Result<_>>()?;
    let sockets: Vec<&Path> = nodes.iter().map(|(_, d, _)| d.socket()).collect();

    let mut failures = Vec::new();
    for case in CASES {
        let text = cluster_yaml(&spots, case.policies);
        let tmp = cluster.with_extension("tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &cluster)?;
        wait_applied(&text, &sockets);
        let expect = |got: &BTreeMap<Probe, bool>| -> BTreeMap<Probe, bool> {
            got.keys()
                .map(|k| {
                    let from = spots.iter().find(|s| s.key() == k.0).expect("from");
                    let to = spots.iter().find(|s| s.key() == k.1).expect("to");
                    // As upstream (`AllowLoopback`): a pod reaching itself never leaves it. The
                    // kernel node polices nothing.
                    let unpoliced = (case.side == Side::Ingress && to.node == KERNEL_NODE)
                        || (case.side == Side::Egress && from.node == KERNEL_NODE);
                    let allowed =
                        from.key() == to.key() || unpoliced || (case.allows)(from, to, k.2, k.3);
                    (k.clone(), allowed)
                })
                .collect()
        };
        let mut got = matrix(&spots, &pods);
        // The first case, where everything must reach everything, also waits for the
        // cluster to be whole (every pod's first neighbour resolutions), for up to 20 s.
        let settle = Instant::now() + Duration::from_secs(20);
        while case.policies.is_empty() && got != expect(&got) && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(500));
            got = matrix(&spots, &pods);
        }
        let want = expect(&got);
        if got != want {
            let wrong: Vec<String> = got
                .iter()
                .filter(|(k, v)| want[*k] != **v)
                .map(|(k, v)| format!("{} → {} {}/{}: got {v}", k.0, k.1, k.2, k.3))
                .collect();
            failures.push(format!(
                "case {:?}: {} probes differ, e.g. {:?}\nexpected:\n{}got:\n{}",
                case.name,
                wrong.len(),
                &wrong[..wrong.len().min(5)],
                render(&spots, &want),
                render(&spots, &got)
            ));
        }
    }
    // A policy change under established TCP connections: y/a and z/a each hold one to x/a;
    // a second in, x/a starts allowing ingress from namespace y only. z/a's connection is cut,
    // y/a's goes on.
    let pod = |key: &str| &pods[spots.iter().position(|s| s.key() == key).expect("pod")];
    let x_a = spots.iter().find(|s| s.key() == "x/a").expect("x/a").ip.clone();
    let text = cluster_yaml(&spots, "");
    std::fs::write(cluster.with_extension("tmp"), &text)?;
    std::fs::rename(cluster.with_extension("tmp"), &cluster)?;
    wait_applied(&text, &sockets);
    let chat = |from: &str| {
        pod(from).probe(&["tcp-chat", &x_a, "80", "60", "50"]).stdout(Stdio::piped()).spawn()
    };
    let (from_y, from_z) = (chat("y/a")?, chat("z/a")?);
    std::thread::sleep(Duration::from_secs(1));
    let policy = "  - metadata: {name: from-y, namespace: x}\n    spec:\n      podSelector: {matchLabels: {pod: a}}\n      ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n";
    let text = cluster_yaml(&spots, policy);
    std::fs::write(cluster.with_extension("tmp"), &text)?;
    std::fs::rename(cluster.with_extension("tmp"), &cluster)?;
    wait_applied(&text, &sockets);
    let report = |child: std::process::Child| {
        let out = child.wait_with_output().expect("tcp-chat");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (kept, cut) = (report(from_y), report(from_z));
    let echoed = |r: &str| -> u32 {
        r.split_whitespace()
            .find_map(|kv| kv.strip_prefix("echoed="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no echoed= in {r:?}"))
    };
    eprintln!("policy change under TCP: y/a → x/a (kept) {kept}; z/a → x/a (cut) {cut}");
    if echoed(&kept) != 60 {
        failures.push(format!("y/a → x/a, still allowed, lost messages: {kept}"));
    }
    if !(5..=45).contains(&echoed(&cut)) {
        failures.push(format!("z/a → x/a should pass until the change, then be cut: {cut}"));
    }
    drop(servers);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
