//! The translation from Kubernetes objects to a node's tables, on objects in the API's own
//! shapes (tests/fixtures/kube, written from the API reference), and the annotations a
//! podlane node publishes read back as another node reads them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use control::cluster::Cluster;
use control::kubernetes::translate::{
    self, ApiObjects, LocalNode, Overlay, Skipped, cluster_from_api, node_annotations,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use podlane_core::table::{Cidr, PodEdge};
use podlane_core::wire::MacAddr;
use proptest::prelude::*;

mod common;
use common::record;

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/../tests/fixtures/kube/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn local(overlay: Overlay) -> LocalNode {
    LocalNode {
        name: "podlane-a".into(),
        underlay: "192.168.99.1".parse().unwrap(),
        vtep_mac: "0a:aa:00:00:00:01".parse().unwrap(),
        vni: if overlay == Overlay::Calico { 4096 } else { 1 },
        overlay,
    }
}

struct Objects {
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
    policies: Vec<NetworkPolicy>,
}

impl Objects {
    fn all() -> Objects {
        Objects {
            nodes: ["node-new", "node-flannel", "node-flannel-dualstack", "node-calico"]
                .map(|n| fixture(&format!("{n}.json")))
                .into(),
            pods: [
                "pod-running",
                "pod-dualstack",
                "pod-hostnetwork",
                "pod-pending",
                "pod-succeeded",
            ]
            .map(|n| fixture(&format!("{n}.json")))
            .into(),
            namespaces: vec![fixture("namespace.json")],
            policies: ["networkpolicy-test", "networkpolicy-deny-all", "networkpolicy-named-port"]
                .map(|n| fixture(&format!("{n}.json")))
                .into(),
        }
    }

    fn translate(&self, local: &LocalNode) -> (Cluster, Vec<Skipped>) {
        let nodes: Vec<&Node> = self.nodes.iter().collect();
        let pods: Vec<&Pod> = self.pods.iter().collect();
        let namespaces: Vec<&Namespace> = self.namespaces.iter().collect();
        let policies: Vec<&NetworkPolicy> = self.policies.iter().collect();
        cluster_from_api(
            local,
            ApiObjects { nodes: &nodes, pods: &pods, namespaces: &namespaces, policies: &policies },
        )
    }
}

#[test]
fn a_flannel_cluster_gives_the_nodes_on_its_overlay_and_the_pods_that_have_addresses() {
    let (cluster, skipped) = Objects::all().translate(&local(Overlay::Flannel));
    let nodes: Vec<(&str, String, String, Vec<String>)> = cluster
        .nodes
        .iter()
        .map(|n| {
            let cidrs = n.pod_cidrs.iter().map(ToString::to_string).collect();
            (n.name.as_str(), n.underlay.to_string(), n.vtep_mac.to_string(), cidrs)
        })
        .collect();
    assert_eq!(
        nodes,
        [
            (
                "podlane-a",
                "192.168.99.1".into(),
                "0a:aa:00:00:00:01".into(),
                vec!["10.244.1.0/24".into()]
            ),
            (
                "kernel-b",
                "192.168.99.2".into(),
                "0a:bb:00:00:00:02".into(),
                vec!["10.244.2.0/24".into()]
            ),
            (
                "kernel-c",
                "192.168.99.3".into(),
                "0a:cc:00:00:00:03".into(),
                vec!["10.244.3.0/24".into(), "fd00:10:244:3::/64".into()]
            ),
        ],
        "this node from the dataplane, the others from Flannel's annotations"
    );
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].object, "node/calico-d");
    assert!(skipped[0].reason.contains("flannel.alpha.coreos.com/backend-data"), "{}", skipped[0]);
    let pods: Vec<(String, Vec<IpAddr>)> = cluster
        .pods
        .iter()
        .map(|p| (format!("{}/{}", p.namespace, p.name), p.ips.clone()))
        .collect();
    assert_eq!(
        pods,
        [
            (
                "shop/db-0".to_owned(),
                vec!["10.244.3.5".parse().unwrap(), "fd00:10:244:3::5".parse().unwrap()]
            ),
            ("shop/web-7d4b9c8f6d-x2x9q".to_owned(), vec!["10.244.1.2".parse().unwrap()]),
        ],
        "host-network, pending and finished pods are not the overlay's"
    );
    assert_eq!(cluster.namespaces[0].labels.get("team").map(String::as_str), Some("payments"));
    assert_eq!(cluster.network_policies.len(), 3);
}

#[test]
fn a_calico_cluster_gives_the_tunnel_address_and_mac() {
    let (cluster, skipped) = Objects::all().translate(&local(Overlay::Calico));
    let calico = cluster.nodes.iter().find(|n| n.name == "calico-d").expect("calico-d is read");
    assert_eq!(calico.underlay.to_string(), "192.168.99.4", "the address without its /24");
    assert_eq!(calico.vtep_mac.to_string(), "66:0e:2c:5e:5f:04");
    assert_eq!(calico.tunnel_ips, ["10.244.4.0".parse::<IpAddr>().unwrap()]);
    let left_out: Vec<&str> = skipped.iter().map(|s| s.object.as_str()).collect();
    assert_eq!(left_out, ["node/kernel-b", "node/kernel-c", "pod/shop/db-0"], "{skipped:?}");
}

#[test]
fn the_tables_have_the_wired_pods_with_the_apis_labels_and_policies() {
    let mut objects = Objects::all();
    // A peer for allow-http's rule (role in frontend, gateway); without one it allows nothing.
    let mut frontend: Pod = fixture("pod-dualstack.json");
    frontend.metadata.name = Some("front".into());
    frontend.metadata.labels = Some([("role".to_owned(), "frontend".to_owned())].into());
    frontend.status.as_mut().unwrap().pod_ips.as_mut().unwrap().truncate(1);
    frontend.status.as_mut().unwrap().pod_ips.as_mut().unwrap()[0].ip = "10.244.3.6".into();
    objects.pods.push(frontend);
    let (cluster, _) = objects.translate(&local(Overlay::Flannel));
    let wired = [record("shop", "web-7d4b9c8f6d-x2x9q", "10.244.1.2")];
    let tables = cluster.tables_for("podlane-a", &wired).expect("tables compute");
    assert_eq!(tables.endpoints.len(), 1);
    let web = &tables.endpoints[0];
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    assert!(matches!(web.edge, PodEdge::Tap { .. }));
    // allow-http and default-deny-ingress select it; the named port "http" is its 8080.
    let name = web.ingress_policy.clone().expect("isolated for ingress");
    assert!(
        name.contains("shop/allow-http") && name.contains("shop/default-deny-ingress"),
        "{name}"
    );
    let policy = tables.policies.iter().find(|p| p.name == name).unwrap();
    let ports: Vec<(Option<u16>, Option<u16>)> =
        policy.rules.iter().flat_map(|r| r.ports.iter().map(|p| (p.port, p.end_port))).collect();
    assert_eq!(ports, [(Some(32000), Some(32768)), (Some(8080), None)]);
    let peers: Vec<String> = policy.rules[0].peers.iter().map(|p| p.cidr.to_string()).collect();
    assert_eq!(peers, ["10.244.3.6/32"], "the frontend pod on kernel-c");
    assert!(web.egress_policy.is_none(), "no policy lists Egress for it");
    // Without a record the pod is not wired yet: a peer, not an endpoint.
    assert!(cluster.tables_for("podlane-a", &[]).unwrap().endpoints.is_empty());
}

#[test]
fn a_pod_just_wired_is_policed_before_the_api_has_its_address() {
    let mut objects = Objects::all();
    let mut fresh: Pod = fixture("pod-pending.json");
    fresh.metadata.name = Some("fresh".into());
    fresh.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    fresh.spec.as_mut().unwrap().node_name = Some("podlane-a".into());
    objects.pods.push(fresh);
    let (cluster, skipped) = objects.translate(&local(Overlay::Flannel));
    assert!(!skipped.iter().any(|s| s.object.contains("fresh")), "{skipped:?}");
    let tables = cluster
        .tables_for("podlane-a", &[record("shop", "fresh", "10.244.1.3")])
        .expect("the record gives its address");
    let fresh = tables.endpoints.iter().find(|e| e.name == "fresh").unwrap();
    assert_eq!(fresh.ips, ["10.244.1.3".parse::<IpAddr>().unwrap()]);
    assert!(fresh.ingress_policy.as_deref().is_some_and(|p| p.contains("default-deny-ingress")));
}

#[test]
fn a_policy_from_the_api_is_the_policy_a_cluster_file_states() {
    let (cluster, _) = Objects::all().translate(&local(Overlay::Flannel));
    let from_api =
        cluster.network_policies.iter().find(|p| p.metadata.name == "test-network-policy").unwrap();
    let file = Cluster::from_yaml(
        r#"
nodes: []
networkPolicies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: test-network-policy, namespace: shop}
    spec:
      podSelector: {matchLabels: {role: db}}
      policyTypes: [Ingress, Egress]
      ingress:
        - from:
            - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
            - namespaceSelector: {matchLabels: {project: myproject}}
            - podSelector: {matchLabels: {role: frontend}}
          ports: [{protocol: TCP, port: 6379}]
      egress:
        - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
          ports: [{protocol: TCP, port: 5978}]
"#,
    )
    .unwrap();
    assert_eq!(from_api, &file.network_policies[0]);
}

#[test]
fn one_bad_object_leaves_the_others_in() {
    let mut objects = Objects::all();
    let mut bad_pod: Pod = fixture("pod-dualstack.json");
    bad_pod.metadata.name = Some("broken".into());
    bad_pod.status.as_mut().unwrap().pod_ips.as_mut().unwrap()[0].ip = "10.244.3.999".into();
    objects.pods.push(bad_pod);
    let mut twin: Node = fixture("node-flannel.json");
    twin.metadata.name = Some("kernel-b-twin".into());
    objects.nodes.push(twin);
    let mut bad_rule: NetworkPolicy = fixture("networkpolicy-test.json");
    bad_rule.metadata.name = Some("bad-cidr".into());
    let spec = bad_rule.spec.as_mut().unwrap();
    spec.ingress.as_mut().unwrap()[0].from.as_mut().unwrap()[0].ip_block.as_mut().unwrap().cidr =
        "172.17.0.0/40".into();
    objects.policies.push(bad_rule);
    let (cluster, skipped) = objects.translate(&local(Overlay::Flannel));
    let reasons: BTreeMap<&str, &str> =
        skipped.iter().map(|s| (s.object.as_str(), s.reason.as_str())).collect();
    assert!(reasons["pod/shop/broken"].contains("10.244.3.999"), "{reasons:?}");
    assert!(reasons["node/kernel-b-twin"].contains("node kernel-b's"), "{reasons:?}");
    assert!(
        reasons["networkpolicy/shop/bad-cidr ingress[0]"].contains("allows nothing"),
        "{reasons:?}"
    );
    assert_eq!(cluster.pods.len(), 2, "the good pods stay");
    assert_eq!(cluster.nodes.len(), 3, "the good nodes stay");
    let bad = cluster.network_policies.iter().find(|p| p.metadata.name == "bad-cidr").unwrap();
    assert_eq!(bad.spec.ingress.as_ref().map(Vec::len), Some(0), "the policy still isolates");
    let tables = cluster
        .tables_for("podlane-a", &[record("shop", "web-7d4b9c8f6d-x2x9q", "10.244.1.2")])
        .expect("the rest still computes");
    assert_eq!(tables.nodes.len(), 3);
}

#[test]
fn the_cni_configuration_hands_out_the_nodes_pod_cidrs() {
    let cidrs: Vec<Cidr> =
        vec!["10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap()];
    let text = translate::conflist(
        &cidrs,
        1450,
        "/run/podlane/dataplane.sock".as_ref(),
        "/run/podlane/cni".as_ref(),
    );
    let conf: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(conf["plugins"][0]["type"], "podlane-cni");
    assert_eq!(conf["plugins"][0]["mtu"], 1450);
    assert_eq!(conf["plugins"][0]["ipam"]["ranges"][1][0]["subnet"], "fd00:10:244:1::/64");
    assert_eq!(conf["plugins"][1]["type"], "portmap");
}

/// A Node object carrying `annotations` and pod CIDRs, as the API would return it.
fn node_with(name: &str, annotations: BTreeMap<String, String>, cidrs: &[Cidr]) -> Node {
    let mut node: Node = fixture("node-new.json");
    node.metadata.name = Some(name.into());
    node.metadata.annotations = Some(annotations);
    let spec = node.spec.as_mut().unwrap();
    spec.pod_cidr = cidrs.first().map(ToString::to_string);
    spec.pod_cidrs = Some(cidrs.iter().map(ToString::to_string).collect());
    node
}

fn arb_mac() -> impl Strategy<Value = MacAddr> {
    // Unicast: the multicast bit clear; not all zero.
    (any::<[u8; 6]>()).prop_filter_map("unicast", |mut b| {
        b[0] &= 0xfe;
        (b != [0; 6]).then_some(MacAddr(b))
    })
}

fn arb_underlay() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..224, any::<[u8; 3]>()).prop_map(|(a, r)| IpAddr::from([a, r[0], r[1], r[2]])),
        any::<[u16; 7]>().prop_map(|r| IpAddr::from([
            0xfd00,
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6] | 1
        ])),
    ]
}

proptest! {
    /// What a podlane node publishes is what another podlane node (and so a Flannel or Calico
    /// node, which reads the same keys) learns about it.
    #[test]
    fn published_annotations_read_back_as_the_same_node(
        underlay in arb_underlay(),
        vtep_mac in arb_mac(),
        calico in any::<bool>(),
        block in 0u8..=255,
    ) {
        let overlay = if calico { Overlay::Calico } else { Overlay::Flannel };
        let vni = if calico { 4096 } else { 1 };
        let a = LocalNode { name: "a".into(), underlay, vtep_mac, vni, overlay };
        let cidrs: Vec<Cidr> = vec![format!("10.{block}.0.0/16").parse().unwrap()];
        let published = node_annotations(&a, &cidrs);
        let other_underlay: IpAddr = if underlay.is_ipv4() { "192.0.2.200".parse().unwrap() } else { "2001:db8::200".parse().unwrap() };
        prop_assume!(other_underlay != underlay);
        let b = LocalNode { name: "b".into(), underlay: other_underlay, vtep_mac: "0a:bb:00:00:00:02".parse().unwrap(), vni, overlay };
        let node = node_with("a", published.clone(), &cidrs);
        let nodes = [&node];
        let (cluster, skipped) = cluster_from_api(&b, ApiObjects { nodes: &nodes, pods: &[], namespaces: &[], policies: &[] });
        // Calico's tunnel address for an IPv6 underlay comes from an IPv6 pod CIDR, which
        // this node lacks: then Calico's keys are incomplete and the node is left out.
        if calico && underlay.is_ipv6() {
            prop_assert_eq!(skipped.len(), 1);
        } else {
            prop_assert!(skipped.is_empty(), "{:?}", skipped);
            let read = cluster.nodes.iter().find(|n| n.name == "a").unwrap();
            prop_assert_eq!(read.underlay, underlay);
            prop_assert_eq!(read.vtep_mac, vtep_mac);
            prop_assert_eq!(&read.pod_cidrs, &cidrs);
            prop_assert!(!translate::annotations_differ(&node, &published));
        }
    }

    /// Whatever one node's annotations hold, the other nodes are read the same, and nothing
    /// panics.
    #[test]
    fn garbage_annotations_touch_only_their_node(
        garbage in proptest::collection::btree_map(
            prop_oneof![
                Just(translate::flannel::BACKEND_DATA.to_owned()),
                Just(translate::flannel::PUBLIC_IP.to_owned()),
                Just(translate::calico::IPV4_ADDRESS.to_owned()),
                Just(translate::calico::TUNNEL_MAC.to_owned()),
                Just(translate::calico::IPV4_TUNNEL_ADDR.to_owned()),
            ],
            ".{0,40}",
            0..5,
        ),
        calico in any::<bool>(),
    ) {
        let overlay = if calico { Overlay::Calico } else { Overlay::Flannel };
        let mut objects = Objects::all();
        let bad = node_with("garbage", garbage, &["10.99.0.0/16".parse().unwrap()]);
        let clean = objects.translate(&local(overlay)).0;
        objects.nodes.push(bad);
        let (cluster, _) = objects.translate(&local(overlay));
        let others: Vec<_> = cluster.nodes.iter().filter(|n| n.name != "garbage").cloned().collect();
        prop_assert_eq!(others, clean.nodes);
    }
}

#[test]
fn a_pod_of_this_node_not_wired_yet_blocks_nothing() {
    let mut objects = Objects::all();
    let mut stuck: Pod = fixture("pod-pending.json");
    stuck.metadata.name = Some("stuck".into());
    stuck.spec.as_mut().unwrap().node_name = Some("podlane-a".into());
    objects.pods.push(stuck);
    let (cluster, _) = objects.translate(&local(Overlay::Flannel));
    let tables = cluster.tables_for("podlane-a", &[]).expect("the rest of the tables compute");
    assert!(tables.endpoints.is_empty(), "not wired: not an endpoint");
    assert_eq!(tables.nodes.len(), 3);
}

#[test]
fn backend_data_without_a_vni_is_read() {
    let mut node: Node = fixture("node-flannel.json");
    node.metadata.annotations.as_mut().unwrap().insert(
        translate::flannel::BACKEND_DATA.into(),
        r#"{"VtepMAC":"0a:bb:00:00:00:09"}"#.into(),
    );
    let nodes = [&node];
    let (cluster, skipped) = cluster_from_api(
        &local(Overlay::Flannel),
        ApiObjects { nodes: &nodes, pods: &[], namespaces: &[], policies: &[] },
    );
    assert!(skipped.is_empty(), "{skipped:?}");
    let b = cluster.nodes.iter().find(|n| n.name == "kernel-b").unwrap();
    assert_eq!(b.vtep_mac.to_string(), "0a:bb:00:00:00:09");
}
