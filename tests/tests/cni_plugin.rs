//! `podlane-cni` as a container runtime calls it (issue 14): this test is the runtime. It
//! execs the plugins of a conflist in node A's namespace with the CNI environment and the
//! configuration on stdin — `podlane-cni`, which delegates addresses to Debian's `host-local`,
//! then `tuning` chained after it with `prevResult` — for a pod sandbox (a network namespace
//! of its own). Node A runs podlane with tables that hold the nodes and no pod; node B is a
//! kernel node as Flannel programs it, with a pod. Then:
//!
//! * the result names the interface, the /32 and the routes; the chained plugin saw it; the
//!   dataplane has the pod (registered by the plugin), and ping and 10 MB of TCP cross both
//!   ways between the wired pod and node B's;
//! * ADD again returns the same result; CHECK passes; VERSION and STATUS answer;
//! * DEL (the chain in reverse) leaves no device, no table entry, no address lease and no
//!   record; DEL again succeeds;
//! * GC removes what is not in `cni.dev/valid-attachments`;
//! * a veth pod (`"edge": "veth"`) is wired, reached and removed the same way;
//! * DEL after a "reboot" (namespace and state directory gone) releases the address.

use std::path::{Path, PathBuf};

use control::client::Client;
use podlane_core::api::{Query, Request, Response};
use podlane_core::table::PodEdge;
use podlane_tests::cni::{Container, Runtime};
use podlane_tests::{require_program, require_root};
use serde_json::json;
use testbed::kernel::{self, RemoteNode};
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, link, podlane, tables};

const NODE_A: &str = "192.168.86.1";
const NODE_B: &str = "192.168.86.2";
const VTEP_A: &str = "0a:aa:00:00:00:01";
const VTEP_B: &str = "0a:bb:00:00:00:01";

fn endpoint_keys(socket: &Path) -> Vec<(String, PodEdge)> {
    let mut client = Client::connect(socket, "cni_plugin").expect("control socket");
    let Response::Tables { tables, .. } =
        client.request(&Request::Query { what: Query::Tables }).expect("tables")
    else {
        panic!("no tables");
    };
    tables.endpoints.iter().map(|e| (e.key(), e.edge.clone())).collect()
}

/// Whether the dataplane's tables come to hold no endpoint within 5 s: the agent may push a
/// pod it read a moment before the plugin removed it, and drops it at its next look (100 ms).
fn endpoints_go(socket: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if endpoint_keys(socket).is_empty() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

fn leases(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("podlane")) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

#[test]
fn cni_plugin() -> anyhow::Result<()> {
    if !require_root("cni_plugin") {
        return Ok(());
    }
    let Some(host_local) =
        require_program("/usr/lib/cni/host-local", "containernetworking-plugins")
    else {
        return Ok(());
    };
    let dir = ScratchDir::new("cni")?;
    let (node_a, node_b) = (Netns::create("cna")?, Netns::create("cnb")?);
    link::underlay((&node_a, "uplink", NODE_A), (&node_b, "eth0", NODE_B), 1)?;
    let remote = RemoteNode {
        underlay: NODE_A,
        vtep_mac: VTEP_A,
        pod_cidr: "10.244.1.0/24",
        gateway: "10.244.1.0",
    };
    kernel::vxlan_node(&node_b, kernel::FLANNEL, "eth0", NODE_B, VTEP_B, "10.244.2.0", &remote)?;
    let b1 = kernel::wire_pod(&node_b, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02")?;
    let mut node_a_entry = tables::node("node-a", NODE_A, VTEP_A, "10.244.1.0/24")?;
    node_a_entry.tunnel_ips = vec!["10.244.1.0".parse()?];
    let nodes = [node_a_entry, tables::node("node-b", NODE_B, VTEP_B, "10.244.2.0/24")?];
    let tables_file = dir.path().join("tables.json");
    tables::write(&tables_file, &tables::for_node("node-a", &nodes, &[])?)?;
    let log = dir.path().join("podlane.log");
    let mut daemon =
        Dataplane::with_tables(&node_a, "uplink", &tables_file, &log, &["--profile", "flannel"])?;
    daemon.wait_for("forwarding", 1)?;
    // The agent keeps what the plugin wires in the tables it pushes.
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(
        &cluster,
        format!(
            "nodes:\n  - {{name: node-a, underlay: {NODE_A}, vtepMAC: \"{VTEP_A}\", podCIDR: 10.244.1.0/24}}\n  - {{name: node-b, underlay: {NODE_B}, vtepMAC: \"{VTEP_B}\", podCIDR: 10.244.2.0/24}}\n"
        ),
    )?;
    let state: PathBuf = dir.path().join("state");
    let state_arg = state.to_string_lossy().into_owned();
    let agent_log = dir.path().join("agent.log");
    let socket = daemon.socket().to_path_buf();
    let start_agent = || {
        podlane::agent_with(
            "node-a",
            &socket,
            &cluster,
            &agent_log,
            &["--cni-state-dir", &state_arg],
        )
    };
    let mut agent = start_agent()?;
    agent.wait_for("full sync applied", 1)?;

    let runtime = Runtime::new(&node_a, &host_local)?;
    let ipam_dir = dir.path().join("ipam");
    let podlane_conf = json!({
        "type": "podlane-cni",
        "mtu": 1450,
        "controlSocket": daemon.socket(),
        "stateDir": state,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10",
                         "rangeEnd": "10.244.1.50"}]],
            "dataDir": ipam_dir,
        },
    });
    // Chained as a runtime runs a conflist: host-local and tuning speak up to 1.0.0.
    let chain = json!({
        "cniVersion": "1.0.0",
        "name": "podlane",
        "plugins": [podlane_conf, {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}],
    });
    let alone = json!({"cniVersion": "1.1.0", "name": "podlane", "plugins": [podlane_conf]});

    let sandbox = Netns::create("cnipod")?;
    let web = Container {
        id: "c0ffee01".into(),
        netns: format!("/var/run/netns/{}", sandbox.name()),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1".into(),
    };
    let (ok, version) = runtime.single(&alone, "VERSION", &web, json!({}));
    assert!(ok && version["supportedVersions"].to_string().contains("1.1.0"), "{version}");
    assert!(runtime.single(&alone, "STATUS", &web, json!({})).0, "STATUS\n{}", daemon.log());

    let result =
        runtime.add(&chain, &web).map_err(|e| anyhow::anyhow!("ADD: {e}\n{}", daemon.log()))?;
    // Registered and acknowledged when ADD returns; attached by the daemon's attacher soon.
    daemon.wait_for("pod interface attached", 1)?;
    let context = || daemon.log();
    assert_eq!(result["interfaces"][0]["name"], "eth0", "{result}");
    assert_eq!(result["interfaces"][0]["sandbox"], web.netns.as_str(), "{result}");
    let address = result["ips"][0]["address"].as_str().unwrap_or_default().to_owned();
    assert!(address.starts_with("10.244.1.") && address.ends_with("/32"), "{result}");
    assert_eq!(result["routes"][0]["gw"], "169.254.1.1", "{result}");
    let ip = address.trim_end_matches("/32").to_owned();
    // The chained plugin got the result and did its part inside the pod.
    let notify = sandbox.command("cat").arg("/proc/sys/net/ipv4/conf/eth0/arp_notify").output()?;
    assert_eq!(String::from_utf8_lossy(&notify.stdout).trim(), "1", "tuning ran in the pod");
    let keys = endpoint_keys(daemon.socket());
    assert!(
        keys.iter().any(|(k, e)| k == "shop/web-1" && matches!(e, PodEdge::Tap { .. })),
        "{keys:?}"
    );
    let pod = Pod::in_namespace(&sandbox, &ip);
    assert_eq!(pod.ping(&b1.ip, 3), 3, "wired pod → kernel node's pod\n{}", context());
    assert_eq!(b1.ping(&ip, 3), 3, "kernel node's pod → wired pod\n{}", context());
    let t = pod.tcp_to(&b1, 5001, 10_000_000)?;
    assert!(t.intact(), "TCP wired pod → b1: {t:?}\n{}", context());
    let t = b1.tcp_to(&pod, 5002, 10_000_000)?;
    assert!(t.intact(), "TCP b1 → wired pod: {t:?}\n{}", context());

    // The agent restarted syncs in full, the wired pod included: it keeps forwarding.
    drop(agent);
    let mut agent = start_agent()?;
    agent.wait_for("full sync applied", 1)?;
    let keys = endpoint_keys(daemon.socket());
    assert!(keys.iter().any(|(k, _)| k == "shop/web-1"), "after the agent's full sync: {keys:?}");
    assert_eq!(pod.ping(&b1.ip, 3), 3, "after the agent's full sync\n{}", context());

    // ADD again: the same result. CHECK passes.
    let again = runtime.add(&chain, &web).map_err(|e| anyhow::anyhow!("ADD again: {e}"))?;
    assert_eq!(again["ips"], result["ips"]);
    assert!(runtime.single(&chain, "CHECK", &web, json!({"prevResult": result})).0, "CHECK");

    // DEL: nothing left; DEL again succeeds.
    assert!(runtime.del(&chain, &web, Some(&result)), "DEL\n{}", context());
    let links = sandbox.ip_output(&["-o", "link", "show"])?;
    assert!(!links.contains("eth0"), "device left behind: {links}");
    assert!(endpoints_go(daemon.socket()), "table entry left behind");
    assert!(leases(&ipam_dir).is_empty(), "lease left behind: {:?}", leases(&ipam_dir));
    assert_eq!(std::fs::read_dir(&state)?.count(), 0, "record left behind");
    assert!(runtime.del(&chain, &web, Some(&result)), "DEL of what is gone");
    // The agent follows (its update for the pod is refused: the plugin removed it first;
    // a full sync settles it) and rejects nothing.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(endpoints_go(daemon.socket()), "the agent put the pod back");
    assert!(!agent.log().contains("rejected"), "{}", agent.log());
    assert!(
        !runtime.single(&chain, "CHECK", &web, json!({"prevResult": result})).0,
        "CHECK after DEL"
    );

    // GC: an attachment the runtime no longer lists is removed.
    let sandbox2 = Netns::create("cnipod")?;
    let stale = Container {
        id: "dead0002".into(),
        netns: format!("/var/run/netns/{}", sandbox2.name()),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=old".into(),
    };
    runtime.add(&alone, &stale).map_err(|e| anyhow::anyhow!("ADD for GC: {e}"))?;
    assert_eq!(leases(&ipam_dir).len(), 1);
    let (ok, _) = runtime.single(&alone, "GC", &stale, json!({"cni.dev/valid-attachments": []}));
    assert!(ok, "GC");
    assert!(endpoints_go(daemon.socket()), "GC left the table entry");
    assert!(leases(&ipam_dir).is_empty(), "GC left the lease");

    // A veth pod, wired as Calico wires pods: its host side in node A, podlane on it.
    let mut veth_plugin = podlane_conf.clone();
    veth_plugin["edge"] = json!("veth");
    let veth_list = json!({"cniVersion": "1.1.0", "name": "podlane", "plugins": [veth_plugin]});
    let sandbox4 = Netns::create("cnipod")?;
    let db = Container {
        id: "0db00004".into(),
        netns: format!("/var/run/netns/{}", sandbox4.name()),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=db".into(),
    };
    let result = runtime.add(&veth_list, &db).map_err(|e| anyhow::anyhow!("ADD veth: {e}"))?;
    let ip = result["ips"][0]["address"].as_str().unwrap_or_default().trim_end_matches("/32");
    let keys = endpoint_keys(daemon.socket());
    assert!(keys.iter().any(|(k, e)| k == "shop/db" && *e == PodEdge::Veth), "{keys:?}");
    daemon.wait_for("pod interface attached", 2)?;
    let pod = Pod::in_namespace(&sandbox4, ip);
    assert_eq!(pod.ping(&b1.ip, 3), 3, "veth pod → kernel node's pod\n{}", daemon.log());
    let t = b1.tcp_to(&pod, 5003, 10_000_000)?;
    assert!(t.intact(), "TCP b1 → veth pod: {t:?}\n{}", daemon.log());
    assert!(runtime.del(&veth_list, &db, Some(&result)), "DEL veth");
    let host_links = node_a.ip_output(&["-o", "link", "show"])?;
    assert!(!host_links.contains(": pl"), "host side left behind: {host_links}");
    assert!(endpoints_go(daemon.socket()), "veth pod's table entry left behind");

    // After a reboot: the namespace and the state directory are gone; DEL still releases.
    let sandbox3 = Netns::create("cnipod")?;
    let rebooted = Container {
        id: "b007b007".into(),
        netns: format!("/var/run/netns/{}", sandbox3.name()),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=before-reboot".into(),
    };
    runtime.add(&alone, &rebooted).map_err(|e| anyhow::anyhow!("ADD before reboot: {e}"))?;
    drop(sandbox3);
    std::fs::remove_dir_all(&state)?;
    let gone = Container { netns: String::new(), ..rebooted };
    assert!(runtime.del(&alone, &gone, None), "DEL after a reboot");
    assert!(leases(&ipam_dir).is_empty(), "lease left after the reboot's DEL");
    assert!(daemon.stop()?.success(), "{}", daemon.log());
    Ok(())
}
