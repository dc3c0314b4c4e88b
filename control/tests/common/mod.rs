//! What several of this crate's tests build: a podlane-cni record of a wired TAP pod.

use std::collections::BTreeMap;

use podlane_core::api::CniRecord;
use podlane_core::table::{EndpointSpec, PodEdge};

/// The record podlane-cni leaves for pod `namespace/name` wired as a TAP with address `ip`.
pub(crate) fn record(namespace: &str, name: &str, ip: &str) -> CniRecord {
    let netns = format!("/var/run/netns/{name}");
    CniRecord {
        container_id: format!("c-{name}"),
        ifname: "eth0".into(),
        netns: netns.clone(),
        endpoint: EndpointSpec {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            ips: vec![ip.parse().unwrap()],
            mac: "0a:58:0a:f4:01:02".parse().unwrap(),
            interface: "eth0".into(),
            edge: PodEdge::Tap { netns },
            ingress_policy: None,
            egress_policy: None,
        },
        result: serde_json::Value::Null,
        ipam: serde_json::Value::Null,
        network: "podlane".into(),
    }
}
