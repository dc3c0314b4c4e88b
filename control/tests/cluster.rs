//! The agent's translation of a cluster file into one node's tables, checked against
//! Kubernetes NetworkPolicy semantics, and its diff: an edit produces the minimal update.

use control::cluster::Cluster;
use control::diff::diff;
use podlane_core::table::{PeerSpec, PodEdge, PortProtocol, Snapshot};

mod common;
use common::record;

const CLUSTER: &str = r#"
namespaces:
  - name: prod
    labels: {env: prod}
  - name: dev
nodes:
  - {name: node-a, underlay: 192.168.90.1, vtepMAC: "0a:aa:00:00:00:01", podCIDR: 10.244.1.0/24}
  - {name: node-b, underlay: 192.168.90.2, vtepMAC: "0a:bb:00:00:00:01", podCIDRs: [10.244.2.0/24]}
pods:
  - {namespace: prod, name: web, ip: 10.244.1.2, mac: "0a:58:0a:f4:01:02", node: node-a, interface: veth-web, labels: {app: web}}
  - {namespace: prod, name: api, ip: 10.244.1.3, mac: "0a:58:0a:f4:01:03", node: node-a, interface: veth-api, labels: {app: api}}
  - {namespace: prod, name: db, ip: 10.244.2.2, mac: "0a:58:0a:f4:02:02", node: node-b, interface: veth-db, labels: {app: db}}
  - {namespace: dev, name: tool, ip: 10.244.2.3, mac: "0a:58:0a:f4:02:03", node: node-b, interface: veth-tool, labels: {app: tool}}
networkPolicies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: web-ingress, namespace: prod}
    spec:
      podSelector: {matchLabels: {app: web}}
      ingress:
        - from:
            - podSelector: {matchExpressions: [{key: app, operator: In, values: [api, db]}]}
            - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}
            - ipBlock: {cidr: 10.0.0.0/8, except: [10.244.0.0/16]}
          ports:
            - {port: 80}
            - {protocol: UDP, port: 5000, endPort: 5100}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny-egress, namespace: prod}
    spec:
      podSelector: {}
      policyTypes: [Egress]
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: api-egress-nowhere, namespace: prod}
    spec:
      podSelector: {matchLabels: {app: api}}
      policyTypes: [Egress]
      egress:
        - to: [{podSelector: {matchLabels: {app: nothing-has-this}}}]
"#;

#[test]
fn node_tables_follow_networkpolicy_semantics() {
    let cluster = Cluster::from_yaml(CLUSTER).unwrap();
    let tables = cluster.tables_for("node-a", &[]).unwrap();
    Snapshot::build(&tables, 1).expect("the computed tables validate");
    assert_eq!(tables.nodes.len(), 2);
    assert_eq!(
        tables.endpoints.iter().map(|e| e.key()).collect::<Vec<_>>(),
        ["prod/web", "prod/api"]
    );

    let web = &tables.endpoints[0];
    assert_eq!(web.ingress_policy.as_deref(), Some("ingress:prod/web-ingress"));
    // Selected by deny-egress (Egress, no rules): isolated for egress, nothing allowed.
    assert_eq!(web.egress_policy.as_deref(), Some("egress:prod/deny-egress"));
    let ingress = tables.policies.iter().find(|p| p.name == "ingress:prod/web-ingress").unwrap();
    assert_eq!(ingress.rules.len(), 1);
    let peers: Vec<String> = ingress.rules[0].peers.iter().map(|p| p.cidr.to_string()).collect();
    // ipBlock, then the selected pods as host routes: api and db by podSelector (same
    // namespace), tool by namespaceSelector; web itself is not selected.
    assert_eq!(peers, ["10.0.0.0/8", "10.244.1.3/32", "10.244.2.2/32", "10.244.2.3/32"]);
    assert_eq!(ingress.rules[0].peers[0].except, vec!["10.244.0.0/16".parse().unwrap()]);
    let ports = &ingress.rules[0].ports;
    assert_eq!(
        (ports[0].protocol, ports[0].port, ports[0].end_port),
        (PortProtocol::Tcp, Some(80), None)
    );
    assert_eq!(
        (ports[1].protocol, ports[1].port, ports[1].end_port),
        (PortProtocol::Udp, Some(5000), Some(5100))
    );

    let api = &tables.endpoints[1];
    // Not selected for ingress by anything: no ingress policy.
    assert_eq!(api.ingress_policy, None);
    // Two egress policies select it: their union, under one name.
    assert_eq!(
        api.egress_policy.as_deref(),
        Some("egress:prod/deny-egress+prod/api-egress-nowhere")
    );
    let egress = tables
        .policies
        .iter()
        .find(|p| p.name == "egress:prod/deny-egress+prod/api-egress-nowhere")
        .unwrap();
    // The rule whose peers select no pod allows nothing: it is left out, not "everyone".
    assert!(egress.rules.is_empty());

    let b = cluster.tables_for("node-b", &[]).unwrap();
    // db is in prod, selected by deny-egress; tool (dev) is selected by nothing.
    assert_eq!(b.endpoints[0].egress_policy.as_deref(), Some("egress:prod/deny-egress"));
    assert_eq!(b.endpoints[1].ingress_policy, None);
    assert_eq!(b.endpoints[1].egress_policy, None);
    let _ = PeerSpec { cidr: "10.0.0.0/8".parse().unwrap(), except: vec![] };
}

#[test]
fn bad_files_name_the_line_or_the_entry() {
    let typo = CLUSTER.replace(
        "podSelector: {matchLabels: {app: web}}",
        "podSelecter: {matchLabels: {app: web}}",
    );
    let e = Cluster::from_yaml(&typo).unwrap_err();
    assert!(e.contains("unknown field `podSelecter`") && e.contains("line"), "{e}");
    let bad_mac = CLUSTER.replace("0a:58:0a:f4:01:02", "0a:58:zz");
    let e = Cluster::from_yaml(&bad_mac).unwrap_err();
    assert!(e.contains("line 10"), "{e}");
    // A named port that no container port resolves allows nothing for that entry and breaks
    // nothing: the rule keeps its other port.
    let named = CLUSTER.replace("- {port: 80}", "- {port: http}");
    let tables = Cluster::from_yaml(&named).unwrap().tables_for("node-a", &[]).unwrap();
    let web = tables.policies.iter().find(|p| p.name == "ingress:prod/web-ingress@prod/web");
    let ports: Vec<_> = web.unwrap().rules.iter().flat_map(|r| &r.ports).map(|p| p.port).collect();
    assert_eq!(ports, [Some(5000)]);
    let protocol = CLUSTER.replace("protocol: UDP", "protocol: ICMP");
    let e = Cluster::from_yaml(&protocol).unwrap().tables_for("node-a", &[]).unwrap_err();
    assert!(e.contains("networkPolicies prod/web-ingress: unknown protocol \"ICMP\""), "{e}");
    let op = CLUSTER.replace("operator: In", "operator: Within");
    let e = Cluster::from_yaml(&op).unwrap().tables_for("node-a", &[]).unwrap_err();
    assert!(e.contains("unknown selector operator \"Within\""), "{e}");
    let orphan =
        CLUSTER.replace("node: node-b, interface: veth-db", "node: node-z, interface: veth-db");
    let e = Cluster::from_yaml(&orphan).unwrap().tables_for("node-a", &[]).unwrap_err();
    assert!(e.contains("prod/db is on unknown node \"node-z\""), "{e}");
    let e = Cluster::from_yaml(CLUSTER).unwrap().tables_for("node-q", &[]).unwrap_err();
    assert!(e.contains("node \"node-q\" is not in the cluster"), "{e}");
}

#[test]
fn an_edit_produces_the_minimal_update() {
    let before = Cluster::from_yaml(CLUSTER).unwrap().tables_for("node-a", &[]).unwrap();
    assert!(diff(&before, &before).is_empty(), "no edit, no update");

    // A new pod on node-a that no policy's peers select (it is in prod, so deny-egress
    // isolates it, with the compiled policy that exists already): one endpoint upsert.
    let added = CLUSTER.replace(
        "  - {namespace: dev, name: tool,",
        "  - {namespace: prod, name: new, ip: 10.244.1.9, mac: \"0a:58:0a:f4:01:09\", node: node-a, interface: veth-new}\n  - {namespace: dev, name: tool,",
    );
    let after = Cluster::from_yaml(&added).unwrap().tables_for("node-a", &[]).unwrap();
    let update = diff(&before, &after);
    assert_eq!(update.upsert_endpoints.iter().map(|e| e.key()).collect::<Vec<_>>(), ["prod/new"]);
    assert_eq!(
        update.upsert_endpoints[0].egress_policy.as_deref(),
        Some("egress:prod/deny-egress")
    );
    assert!(update.upsert_nodes.is_empty() && update.upsert_policies.is_empty());
    assert!(
        update.delete_nodes.is_empty()
            && update.delete_endpoints.is_empty()
            && update.delete_policies.is_empty()
    );

    // A pod on another node changes address: node-a's tables see only the web-ingress peer
    // set change (db is a selected peer), nothing else.
    let moved = CLUSTER.replace("ip: 10.244.2.2,", "ip: 10.244.2.7,");
    let after = Cluster::from_yaml(&moved).unwrap().tables_for("node-a", &[]).unwrap();
    let update = diff(&before, &after);
    assert_eq!(
        update.upsert_policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["ingress:prod/web-ingress"]
    );
    assert!(update.upsert_endpoints.is_empty() && update.upsert_nodes.is_empty());

    // A node leaves (with its pods): one node deletion, and the peers it took along.
    let mut cluster = Cluster::from_yaml(CLUSTER).unwrap();
    cluster.nodes.retain(|n| n.name != "node-b");
    cluster.pods.retain(|p| p.node != "node-b");
    let after = cluster.tables_for("node-a", &[]).unwrap();
    let update = diff(&before, &after);
    assert_eq!(update.delete_nodes, ["node-b"]);
    assert_eq!(update.upsert_policies.len(), 1);
    assert!(update.delete_endpoints.is_empty());

    // Applying the update to the old tables gives the new ones.
    let mut applied = before.clone();
    update.apply_to(&mut applied).unwrap();
    applied.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(applied.nodes, after.nodes);
}

const NAMED_PORTS: &str = r#"
nodes:
  - {name: node-a, underlay: 192.168.90.1, vtepMAC: "0a:aa:00:00:00:01", podCIDR: 10.244.1.0/24}
pods:
  - {name: web1, ip: 10.244.1.2, mac: "0a:58:0a:f4:01:02", node: node-a, interface: veth-w1, labels: {app: web},
     ports: [{name: http, containerPort: 8080}, {name: metrics, containerPort: 9090, protocol: TCP}]}
  - {name: web2, ip: 10.244.1.3, mac: "0a:58:0a:f4:01:03", node: node-a, interface: veth-w2, labels: {app: web},
     ports: [{name: http, containerPort: 80}]}
  - {name: dns, ip: 10.244.1.4, mac: "0a:58:0a:f4:01:04", node: node-a, interface: veth-dns, labels: {app: dns},
     ports: [{name: dns, containerPort: 53, protocol: UDP}]}
  - {name: client, ip: 10.244.1.5, mac: "0a:58:0a:f4:01:05", node: node-a, interface: veth-c, labels: {app: client}}
networkPolicies:
  - metadata: {name: web-http}
    spec:
      podSelector: {matchLabels: {app: web}}
      ingress:
        - ports: [{port: http}, {port: nothing-has-this}]
  - metadata: {name: client-out}
    spec:
      podSelector: {matchLabels: {app: client}}
      policyTypes: []
      egress:
        - ports: [{port: http}]
        - to: [{podSelector: {matchLabels: {app: dns}}}]
          ports: [{protocol: UDP, port: dns}, {protocol: TCP, port: dns}]
"#;

/// Named ports resolve against container ports: an ingress rule's against each selected pod's
/// own (so pods whose `http` differs get policies of their own), an egress rule's against the
/// peers'; a name nothing has allows nothing and breaks nothing. `policyTypes: []` defaults as
/// the API server does it: Ingress, and Egress because there are egress rules.
#[test]
fn named_ports_resolve_against_container_ports() {
    let cluster = Cluster::from_yaml(NAMED_PORTS).unwrap();
    let tables = cluster.tables_for("node-a", &[]).unwrap();
    Snapshot::build(&tables, 1).expect("the computed tables validate");
    let policy = |name: &str| tables.policies.iter().find(|p| p.name == name).unwrap();
    let ports = |name: &str| -> Vec<(PortProtocol, Option<u16>, usize)> {
        policy(name)
            .rules
            .iter()
            .flat_map(|r| r.ports.iter().map(|p| (p.protocol, p.port, r.peers.len())))
            .collect()
    };
    let endpoint = |name: &str| tables.endpoints.iter().find(|e| e.name == name).unwrap();
    assert_eq!(
        endpoint("web1").ingress_policy.as_deref(),
        Some("ingress:default/web-http@default/web1")
    );
    assert_eq!(
        endpoint("web2").ingress_policy.as_deref(),
        Some("ingress:default/web-http@default/web2")
    );
    // From everyone (no peers), to the pod's own `http`.
    assert_eq!(
        ports("ingress:default/web-http@default/web1"),
        [(PortProtocol::Tcp, Some(8080), 0)]
    );
    assert_eq!(ports("ingress:default/web-http@default/web2"), [(PortProtocol::Tcp, Some(80), 0)]);
    // Egress: `http` to any destination means the pods that have it, each at its number;
    // `dns` over UDP resolves, over TCP nothing has it.
    let client = endpoint("client");
    assert_eq!(client.ingress_policy.as_deref(), Some("ingress:default/client-out"));
    assert!(
        policy("ingress:default/client-out").rules.is_empty(),
        "isolated for ingress, nothing allowed"
    );
    let egress = policy(client.egress_policy.as_deref().unwrap());
    let rules: Vec<(Vec<String>, Option<u16>)> = egress
        .rules
        .iter()
        .map(|r| (r.peers.iter().map(|p| p.cidr.to_string()).collect(), r.ports[0].port))
        .collect();
    assert_eq!(
        rules,
        [
            (vec!["10.244.1.3/32".to_owned()], Some(80)),
            (vec!["10.244.1.2/32".to_owned()], Some(8080)),
            (vec!["10.244.1.4/32".to_owned()], Some(53)),
        ]
    );
}

/// A cluster for the pods podlane-cni wired: one node, a pod the cluster describes without
/// wiring, one it names and that is not wired, and a policy.
const WIRED: &str = r#"
nodes:
  - {name: node-a, underlay: 192.168.99.1, vtepMAC: "0a:aa:00:00:00:01", podCIDR: 10.244.1.0/24}
pods:
  - {namespace: shop, name: web, labels: {app: web}, ip: 10.244.1.7, node: node-a}
  - {namespace: shop, name: old, ip: 10.244.1.9, node: node-a}
networkPolicies:
  - metadata: {namespace: shop, name: p}
    spec: {podSelector: {matchLabels: {app: web}}, ingress: [{}]}
"#;

#[test]
fn wired_pods_are_endpoints_with_the_clusters_labels_and_policies() {
    let cluster = Cluster::from_yaml(WIRED).unwrap();
    let records = [record("shop", "web", "10.244.1.7"), record("shop", "api", "10.244.1.8")];
    let tables = cluster.tables_for("node-a", &records).unwrap();
    let keys: Vec<String> = tables.endpoints.iter().map(|e| e.key()).collect();
    assert_eq!(keys, ["shop/web", "shop/api"], "shop/old is not wired: a policy peer only");
    let web = &tables.endpoints[0];
    assert!(matches!(web.edge, PodEdge::Tap { .. }), "wiring from the record");
    assert_eq!(web.ingress_policy.as_deref(), Some("ingress:shop/p"), "the cluster's policy");
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(tables.endpoints[1], records[1].endpoint, "a pod the cluster does not name");
}
