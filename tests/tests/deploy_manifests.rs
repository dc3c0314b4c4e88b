//! The files in deploy/ (issue 14), read as Kubernetes would: every document parses into its
//! Kubernetes type (k8s-openapi) and serialises back to what the file says, so a misspelt
//! field cannot hide; the DaemonSet's commands use flags the binaries have; its mounts name
//! its volumes. That the RBAC rules cover exactly what the agent calls is checked against the
//! agent's real requests in `kube_source`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use testbed::binary;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every manifest, as JSON values, with the file each came from.
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize_from(document, &path);
            if !value.is_null() {
                out.push((path.file_name().unwrap().to_string_lossy().into_owned(), value));
            }
        }
    }
    out
}

trait FromYaml {
    fn deserialize_from(document: serde_yaml::Deserializer<'_>, path: &std::path::Path) -> Self;
}

impl FromYaml for Value {
    fn deserialize_from(document: serde_yaml::Deserializer<'_>, path: &std::path::Path) -> Value {
        serde::Deserialize::deserialize(document)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
    }
}

/// `value` as a `T`, checked to serialise back to itself: a field the type does not have
/// (a typo) would be dropped and fail the comparison.
fn typed<T: DeserializeOwned + Serialize>(file: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{file}: {} {}: {e}", value["kind"], value["metadata"]["name"]));
    let back = serde_json::to_value(&typed).unwrap();
    let mut lost = Vec::new();
    differences(&normalise(value), &normalise(&back), String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{file}: {} {}: not fields of its type (misspelt?) or changed by it: {lost:?}",
        value["kind"],
        value["metadata"]["name"]
    );
    typed
}

/// The paths where `written` and `read` (the value after the round trip) differ.
fn differences(written: &Value, read: &Value, path: String, out: &mut Vec<String>) {
    match (written, read) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => differences(v, w, format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(v, w, format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a != b => out.push(path),
        _ => {}
    }
}

/// Numbers written as strings where the type has strings, and empty maps, compare equal.
fn normalise(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        Value::Number(n) => Value::String(n.to_string()),
        other => other.clone(),
    }
}

/// The long flags `program [subcommand] --help` lists.
fn flags_of(program: &str, subcommand: Option<&str>) -> BTreeSet<String> {
    let mut command = std::process::Command::new(binary(program));
    command.args(subcommand).arg("--help");
    let out = command.output().unwrap_or_else(|e| panic!("{program} --help: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches([',', '.']).split(['=', '[', '<']).next().unwrap().to_owned())
        .collect()
}

/// The long flags a command line uses (`--name=value` or `--name value`).
fn flags_used(command: &[String]) -> Vec<String> {
    command
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let documents = documents();
    let mut kinds = Vec::new();
    for (file, value) in &documents {
        let kind = value["kind"].as_str().unwrap_or_default();
        match kind {
            "ServiceAccount" => drop(typed::<ServiceAccount>(file, value)),
            "ClusterRole" => drop(typed::<ClusterRole>(file, value)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(file, value)),
            "ValidatingAdmissionPolicy" => drop(typed::<ValidatingAdmissionPolicy>(file, value)),
            "ValidatingAdmissionPolicyBinding" => {
                drop(typed::<ValidatingAdmissionPolicyBinding>(file, value))
            }
            "ConfigMap" => drop(typed::<ConfigMap>(file, value)),
            "DaemonSet" => drop(typed::<DaemonSet>(file, value)),
            other => panic!("{file}: a {other:?} this test does not know"),
        }
        kinds.push(kind.to_owned());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
}

#[test]
fn the_daemonset_runs_what_the_binaries_accept_with_what_it_mounts() {
    let (file, value) = documents().into_iter().find(|(_, v)| v["kind"] == "DaemonSet").unwrap();
    let daemonset: DaemonSet = typed(&file, &value);
    let pod = daemonset.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("podlane"));
    let configmap = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "ConfigMap")
        .map(|(f, v)| typed::<ConfigMap>(&f, &v))
        .unwrap();
    let settings = configmap.data.unwrap_or_default();
    let volumes: BTreeSet<String> = pod.volumes.iter().flatten().map(|v| v.name.clone()).collect();
    let containers: Vec<_> =
        pod.init_containers.iter().flatten().chain(pod.containers.iter()).collect();
    for container in &containers {
        for mount in container.volume_mounts.iter().flatten() {
            assert!(volumes.contains(&mount.name), "{}: no volume {}", container.name, mount.name);
        }
        for env in container.env.iter().flatten() {
            if let Some(key) = env
                .value_from
                .as_ref()
                .and_then(|v| v.config_map_key_ref.as_ref())
                .map(|r| r.key.clone())
            {
                assert!(settings.contains_key(&key), "{}: no ConfigMap key {key}", container.name);
            }
        }
    }
    let command = |name: &str| {
        containers.iter().find(|c| c.name == name).unwrap().command.clone().unwrap_or_default()
    };
    let dataplane = command("dataplane");
    assert_eq!(dataplane[0], "podlane-dataplane");
    let known = flags_of("podlane-dataplane", None);
    for flag in flags_used(&dataplane) {
        assert!(known.contains(&flag), "podlane-dataplane has no --{flag}: {known:?}");
    }
    let agent = command("agent");
    assert_eq!((agent[0].as_str(), agent[2].as_str()), ("podlane", "agent"));
    let known: BTreeSet<String> =
        flags_of("podlane", Some("agent")).union(&flags_of("podlane", None)).cloned().collect();
    for flag in flags_used(&agent) {
        assert!(known.contains(&flag), "podlane agent has no --{flag}: {known:?}");
    }
    assert!(agent.iter().any(|a| a == "--in-cluster"));
    // The conflist goes where the cni-conf volume is mounted; the plugin where cni-bin is.
    let mount_of = |container: &str, volume: &str| {
        containers
            .iter()
            .find(|c| c.name == container)
            .and_then(|c| c.volume_mounts.iter().flatten().find(|m| m.name == volume))
            .map(|m| m.mount_path.clone())
            .unwrap_or_else(|| panic!("{container} does not mount {volume}"))
    };
    let conflist = agent.iter().find_map(|a| a.strip_prefix("--write-cni-config=")).unwrap();
    assert!(conflist.starts_with(&mount_of("agent", "cni-conf")), "{conflist}");
    assert!(conflist.ends_with(".conflist"), "runtimes read *.conflist: {conflist}");
    let install = command("install-cni");
    assert!(install.last().unwrap().starts_with(&mount_of("install-cni", "cni-bin")));
    // The dataplane and the agent share the control socket's directory.
    assert_eq!(mount_of("dataplane", "run-podlane"), mount_of("agent", "run-podlane"));
    assert!(settings.contains_key("profile") && settings.contains_key("uplink"));
}
