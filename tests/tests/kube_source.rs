//! `podlane agent --kubeconfig` against an API server (issue 14). No Kubernetes API server can
//! be installed here, so the test runs one in-process that speaks the real list/watch protocol
//! ([`podlane_tests::apiserver`]), serving objects in the API's shapes (tests/fixtures/kube).
//! Node A runs podlane, started with nothing but its name and address; node B is a kernel
//! node as Flannel programs it, which knows podlane's node only from what podlane published.
//!
//! * The agent lists and watches, and pushes node B (from its Flannel annotations) to the
//!   dataplane; it writes node A's annotations in Flannel's format, and node B's vxlan device
//!   is programmed from them as flanneld would.
//! * The agent writes the CNI configuration with node A's pod CIDR; the test, as the runtime,
//!   runs it (podlane-cni, host-local, portmap) for a pod, then creates the Pod in the API as
//!   the kubelet reports it. Ping and TCP cross both ways.
//! * A NetworkPolicy created through the API isolates the pod; another allows node B's pod.
//! * The watches are cut: they resume from their version, without a new list. The history is
//!   compacted and the watches cut: the watchers get 410 Gone, list again, and a deletion
//!   made afterwards takes effect. The API server goes away for a while (connections closed
//!   unanswered): the watchers back off, come back, and a change made meanwhile takes effect.
//! * Every request the agent made is one that deploy/rbac.yaml allows, and every rule there
//!   was used.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use control::client::Client;
use k8s_openapi::api::rbac::v1::ClusterRole;
use podlane_core::api::{Query, Request, Response};
use podlane_core::table::TableSpec;
use podlane_tests::apiserver::{FakeApiServer, Resource};
use podlane_tests::cni::{Container, Runtime};
use podlane_tests::{require_program, require_root};
use serde_json::{Value, json};
use testbed::kernel::{self, RemoteNode};
use testbed::podlane::{self, Dataplane};
use testbed::{Netns, Pod, ScratchDir, link};

/// The fixtures' addresses: podlane-a and kernel-b.
const NODE_A: &str = "192.168.99.1";
const NODE_B: &str = "192.168.99.2";
const VTEP_B: &str = "0a:bb:00:00:00:02";

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/kube/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A running Pod as the kubelet reports it: `pod-running.json` renamed, placed and addressed.
fn pod_object(name: &str, node: &str, ip: &str, labels: Value) -> Value {
    let mut pod = fixture("pod-running.json");
    for field in ["uid", "resourceVersion", "ownerReferences", "generateName"] {
        pod["metadata"].as_object_mut().unwrap().remove(field);
    }
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["labels"] = labels;
    pod["spec"]["nodeName"] = json!(node);
    pod["status"]["podIP"] = json!(ip);
    pod["status"]["podIPs"] = json!([{"ip": ip}]);
    pod
}

fn tables(socket: &Path) -> TableSpec {
    let mut client = Client::connect(socket, "kube_source").expect("control socket");
    match client.request(&Request::Query { what: Query::Tables }).expect("tables") {
        Response::Tables { tables, .. } => tables,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Waits up to 10 s for the dataplane's tables to satisfy `what`.
fn until_tables(socket: &Path, what: impl Fn(&TableSpec) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if what(&tables(socket)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Waits up to 10 s for `what` to give something.
fn until<T>(what: impl Fn() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(value) = what() {
            return Some(value);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Both logs, for a failure message.
fn logs(agent: &testbed::Service, daemon: &Dataplane) -> String {
    format!("agent:\n{}\ndataplane:\n{}", agent.log(), daemon.log())
}

fn ingress_policy_of(tables: &TableSpec, pod: &str) -> Option<String> {
    tables.endpoints.iter().find(|e| e.key() == pod).and_then(|e| e.ingress_policy.clone())
}

#[test]
fn kube_source() -> anyhow::Result<()> {
    if !require_root("kube_source") {
        return Ok(());
    }
    let Some(host_local) =
        require_program("/usr/lib/cni/host-local", "containernetworking-plugins")
    else {
        return Ok(());
    };
    let dir = ScratchDir::new("kube")?;
    let api = FakeApiServer::start("podlane-test-token")?;
    api.put(fixture("namespace.json"))?;
    api.put(fixture("node-new.json"))?; // podlane-a, as kubelet registered it
    api.put(fixture("node-flannel.json"))?; // kernel-b, with flanneld's annotations
    api.put(pod_object("b1", "kernel-b", "10.244.2.2", json!({"app": "client"})))?;

    let (node_a, node_b) = (Netns::create("kua")?, Netns::create("kub")?);
    link::underlay((&node_a, "uplink", NODE_A), (&node_b, "eth0", NODE_B), 1)?;
    // Node B as flanneld starts it: its own device, no peer yet.
    kernel::vxlan_device(&node_b, kernel::FLANNEL, "eth0", NODE_B, VTEP_B, "10.244.2.0")?;
    let b1 = kernel::wire_pod(&node_b, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02")?;

    // Node A: the dataplane knows only itself; the agent knows only the API server.
    let log = dir.path().join("podlane.log");
    let mut daemon = Dataplane::start(
        &node_a,
        "uplink",
        &log,
        &["--node-name", "podlane-a", "--node-ip", NODE_A, "--profile", "flannel"],
    )?;
    daemon.wait_for("forwarding", 1)?;
    let socket = daemon.socket().to_path_buf();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig("podlane"))?;
    let state = dir.path().join("state");
    let conflist_path = dir.path().join("net.d/00-podlane.conflist");
    let agent_log = dir.path().join("agent.log");
    let (state_arg, conflist_arg) =
        (state.to_string_lossy().into_owned(), conflist_path.to_string_lossy().into_owned());
    let mut agent = podlane::agent_kubernetes(
        "podlane-a",
        &socket,
        &kubeconfig,
        &agent_log,
        &["--cni-state-dir", &state_arg, "--write-cni-config", &conflist_arg],
    )?;
    agent.wait_for("full sync applied", 1)?;
    let synced = tables(&socket);
    let nodes: Vec<&str> = synced.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nodes, ["podlane-a", "kernel-b"], "{}", logs(&agent, &daemon));
    assert_eq!(synced.nodes[1].vtep_mac.map(|m| m.to_string()).as_deref(), Some(VTEP_B));

    // podlane-a's annotations, in Flannel's format, and node B programmed from them.
    let annotations = until(|| {
        let node = api.get(Resource::Nodes, "", "podlane-a")?;
        let annotations = node["metadata"]["annotations"].clone();
        let published = annotations.get("flannel.alpha.coreos.com/backend-data").is_some();
        published.then_some(annotations)
    })
    .unwrap_or_else(|| panic!("no annotations published\n{}", logs(&agent, &daemon)));
    let uplink_mac = node_a.mac_of("uplink")?;
    let backend: Value = serde_json::from_str(
        annotations["flannel.alpha.coreos.com/backend-data"].as_str().unwrap(),
    )?;
    assert_eq!(backend, json!({"VNI": 1, "VtepMAC": uplink_mac}));
    assert_eq!(annotations["flannel.alpha.coreos.com/public-ip"], NODE_A);
    assert_eq!(annotations["flannel.alpha.coreos.com/backend-type"], "vxlan");
    assert_eq!(annotations["kubernetes.io/hostname"], Value::Null, "labels stay labels");
    assert!(annotations.get("node.alpha.kubernetes.io/ttl").is_some(), "kubelet's kept");
    let node_a_object = api.get(Resource::Nodes, "", "podlane-a").unwrap();
    let pod_cidr = node_a_object["spec"]["podCIDR"].as_str().unwrap().to_owned();
    let gateway = pod_cidr.split('/').next().unwrap().to_owned();
    let public_ip = annotations["flannel.alpha.coreos.com/public-ip"].as_str().unwrap();
    let vtep_mac = backend["VtepMAC"].as_str().unwrap();
    kernel::add_remote(
        &node_b,
        kernel::FLANNEL,
        &RemoteNode { underlay: public_ip, vtep_mac, pod_cidr: &pod_cidr, gateway: &gateway },
    )?;

    // The CNI configuration for podlane-a, run as the runtime runs it.
    let text = until(|| std::fs::read_to_string(&conflist_path).ok())
        .unwrap_or_else(|| panic!("no conflist written\n{}", logs(&agent, &daemon)));
    let mut conflist: Value = serde_json::from_str(&text)?;
    assert_eq!(conflist["plugins"][0]["ipam"]["ranges"], json!([[{"subnet": pod_cidr}]]));
    assert_eq!(conflist["plugins"][0]["mtu"], 1450, "the dataplane's pod MTU");
    // Leases in the scratch directory rather than /var/lib/cni of this machine.
    conflist["plugins"][0]["ipam"]["dataDir"] = json!(dir.path().join("ipam"));
    let runtime = Runtime::new(&node_a, &host_local)?;
    let sandbox = Netns::create("kubepod")?;
    let web = Container {
        id: "feed0001".into(),
        netns: format!("/var/run/netns/{}", sandbox.name()),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web".into(),
    };
    let result = runtime
        .add(&conflist, &web)
        .map_err(|e| anyhow::anyhow!("ADD: {e}\n{}", logs(&agent, &daemon)))?;
    let ip = result["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").to_owned();
    api.put(pod_object("web", "podlane-a", &ip, json!({"app": "web"})))?;
    daemon.wait_for("pod interface attached", 1)?;
    // Node B's underlay MAC is resolved once node B is in the tables.
    daemon.wait_for("next hop resolved", 1)?;
    let pod = Pod::in_namespace(&sandbox, &ip);
    assert_eq!(pod.ping(&b1.ip, 3), 3, "web → b1\n{}", logs(&agent, &daemon));
    assert_eq!(b1.ping(&ip, 3), 3, "b1 → web\n{}", logs(&agent, &daemon));
    let t = b1.tcp_to(&pod, 5001, 2_000_000)?;
    assert!(t.intact(), "TCP b1 → web: {t:?}\n{}", logs(&agent, &daemon));

    // A NetworkPolicy through the API: web isolated for ingress.
    api.put(fixture("networkpolicy-deny-all.json"))?;
    assert!(
        until_tables(&socket, |t| ingress_policy_of(t, "shop/web").is_some()),
        "the policy never reached the dataplane\n{}",
        logs(&agent, &daemon)
    );
    assert!(b1.ping_until(&ip, false), "b1 still reaches web\n{}", logs(&agent, &daemon));
    assert_eq!(pod.ping(&b1.ip, 3), 3, "web's own connections and their replies still pass");
    let allow = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-client", "namespace": "shop"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
        },
    });
    // A watch cut (a restarted API server, a load balancer's idle timeout) resumes from its
    // version: the next change arrives without a new list.
    let count_lists = |api: &FakeApiServer| {
        api.requests()
            .iter()
            .filter(|c| c.verb == "list" && c.resource == "networkpolicies")
            .count()
    };
    let lists_before = count_lists(&api);
    api.drop_watches();
    api.put(allow.clone())?;
    assert!(
        until_tables(&socket, |t| ingress_policy_of(t, "shop/web")
            .is_some_and(|p| p.contains("allow-client"))),
        "{}",
        logs(&agent, &daemon)
    );
    assert!(b1.ping_until(&ip, true), "allow-client lets b1 in\n{}", logs(&agent, &daemon));

    // History compacted, watches cut: 410 Gone, lists again, and still follows.
    assert_eq!(count_lists(&api), lists_before, "resumed, not listed again");
    api.expire_history();
    agent.wait_for("listing again", 4)?;
    api.delete(Resource::NetworkPolicies, "shop", "allow-client")?;
    assert!(
        until_tables(&socket, |t| ingress_policy_of(t, "shop/web")
            .is_some_and(|p| !p.contains("allow-client"))),
        "a deletion after the relist\n{}",
        logs(&agent, &daemon)
    );
    assert!(b1.ping_until(&ip, false), "b1 shut out again\n{}", logs(&agent, &daemon));

    // The API server away for a while: the watchers back off and come back, and what changed
    // meanwhile arrives.
    api.set_unavailable(true);
    agent.wait_for("watch failed", 1)?;
    api.put(allow.clone())?;
    std::thread::sleep(Duration::from_secs(2));
    api.set_unavailable(false);
    agent.wait_for("watching again", 1)?;
    assert!(
        until_tables(&socket, |t| ingress_policy_of(t, "shop/web")
            .is_some_and(|p| p.contains("allow-client"))),
        "a change made while the API server was away\n{}",
        logs(&agent, &daemon)
    );
    assert!(b1.ping_until(&ip, true), "{}", logs(&agent, &daemon));
    assert!(count_lists(&api) > lists_before, "no relist after 410");
    let calls = api.requests();
    assert!(
        calls
            .iter()
            .filter(|c| c.verb == "watch")
            .all(|c| c.query.get("allowWatchBookmarks") == Some(&"true".to_owned())
                && c.query.contains_key("resourceVersion")),
        "watches resume from a version, with bookmarks"
    );

    // Every request was allowed by deploy/rbac.yaml, and every rule was used.
    assert!(calls.iter().all(|c| c.status != 401), "all requests authenticated");
    assert!(calls.iter().any(|c| c.status == 0), "the outage was seen");
    let made: BTreeSet<(String, String, String)> = calls
        .iter()
        .map(|c| {
            let resource = match &c.subresource {
                Some(sub) => format!("{}/{sub}", c.resource),
                None => c.resource.clone(),
            };
            (c.group.clone(), resource, c.verb.clone())
        })
        .collect();
    let rbac =
        std::fs::read_to_string(format!("{}/../deploy/rbac.yaml", env!("CARGO_MANIFEST_DIR")))?;
    let mut allowed = BTreeSet::new();
    for document in serde_yaml::Deserializer::from_str(&rbac) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if value["kind"] != "ClusterRole" {
            continue;
        }
        let role: ClusterRole = serde_json::from_value(value)?;
        for rule in role.rules.unwrap_or_default() {
            for group in rule.api_groups.unwrap_or_default() {
                for resource in rule.resources.clone().unwrap_or_default() {
                    for verb in &rule.verbs {
                        allowed.insert((group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    assert_eq!(made, allowed, "the agent's requests and the ClusterRole's rules");

    // The pod goes: DEL through the chain, then the API forgets it.
    assert!(runtime.del(&conflist, &web, Some(&result)), "DEL\n{}", logs(&agent, &daemon));
    api.delete(Resource::Pods, "shop", "web")?;
    assert!(until_tables(&socket, |t| t.endpoints.is_empty()), "{}", logs(&agent, &daemon));
    assert!(!agent.log().contains("rejected"), "{}", agent.log());
    drop(agent);
    Ok(())
}
