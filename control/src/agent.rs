//! `podlane agent`: keeps one node's dataplane in step with a cluster file.
//!
//! It computes the node's tables from the file and from the pods `podlane-cni` wired on this
//! node (the records in its state directory, [`podlane_core::api::CniRecord`]), pushes a full
//! sync and an in-sync marker, then watches both (modification times and sizes, every 100 ms)
//! and pushes only what changed ([`crate::diff`]). A pod the plugin wired keeps its
//! interface, address and MAC from the record; the cluster file, where it names the same pod
//! (`namespace/name`), gives its labels and so its policies. The plugin registers and removes
//! its pods itself, so an update the dataplane refuses because it already did (an upsert
//! done, a deletion of what is gone) is followed by a full sync, which settles any such race. An invalid edit is logged with the file, line or field, and the
//! last good state stays applied. When the connection breaks — the dataplane restarted or
//! went away — the agent reconnects with exponential backoff (100 ms to 5 s) and syncs from
//! scratch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use podlane_core::api::{CniRecord, Query, Request, Response};
use podlane_core::table::TableSpec;

use crate::client::Client;
use crate::cluster::Cluster;
use crate::diff::diff;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub cluster: PathBuf,
    pub node: String,
    pub socket: PathBuf,
    /// `podlane-cni`'s state directory.
    pub cni_state: PathBuf,
}

/// A file's identity for change detection.
type Fingerprint = Option<(SystemTime, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The cluster file's and every CNI record's fingerprint.
fn sources(config: &AgentConfig) -> (Fingerprint, Vec<(PathBuf, Fingerprint)>) {
    let mut records: Vec<(PathBuf, Fingerprint)> = std::fs::read_dir(&config.cni_state)
        .map(|entries| entries.flatten().map(|e| (e.path(), fingerprint(&e.path()))).collect())
        .unwrap_or_default();
    records.sort();
    (fingerprint(&config.cluster), records)
}

fn load(config: &AgentConfig) -> anyhow::Result<TableSpec> {
    let cluster = Cluster::from_file(&config.cluster)?;
    let mut tables = cluster
        .tables_for(&config.node)
        .map_err(|e| anyhow::anyhow!("cluster file {}: {e}", config.cluster.display()))?;
    merge_cni(&mut tables, &CniRecord::read_dir(&config.cni_state));
    Ok(tables)
}

/// Puts the pods `podlane-cni` wired into `tables`: a pod the cluster file names too keeps
/// its labels and policies from there, and takes its interface, addresses and MAC from the
/// record; another is added as the record has it.
pub fn merge_cni(tables: &mut TableSpec, records: &[CniRecord]) {
    for record in records {
        let wired = &record.endpoint;
        match tables.endpoints.iter_mut().find(|e| e.key() == wired.key()) {
            Some(known) => {
                if known.ips != wired.ips {
                    // Policies computed from the file's addresses name the old ones until
                    // the file says what the pod has.
                    tracing::warn!(
                        pod = wired.key(),
                        "the cluster file gives {:?}, podlane-cni wired {:?}: using the latter",
                        known.ips,
                        wired.ips
                    );
                }
                known.ips = wired.ips.clone();
                known.mac = wired.mac;
                known.interface = wired.interface.clone();
                known.edge = wired.edge.clone();
            }
            None => tables.endpoints.push(wired.clone()),
        }
    }
}

/// Runs until `stop()` says so. Fails only when the cluster file is unusable at start.
pub fn run(config: &AgentConfig, stop: impl Fn() -> bool) -> anyhow::Result<()> {
    let mut seen = sources(config);
    let mut wanted = load(config)?;
    let mut backoff = Duration::from_millis(100);
    let mut reported_down = false;
    while !stop() {
        let mut client = match Client::connect(&config.socket, "podlane-agent") {
            Ok(client) => client,
            Err(e) => {
                if !reported_down {
                    tracing::warn!("{e}; retrying");
                    reported_down = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        reported_down = false;
        tracing::info!(node = %client.node, generation = client.generation, "connected to the dataplane");
        // What the dataplane holds from us; `None` until a full sync is accepted.
        let mut pushed: Option<TableSpec> = None;
        // Tables the dataplane refused: not retried until the file changes again.
        let mut rejected: Option<TableSpec> = None;
        let mut last_check = Instant::now();
        loop {
            if stop() {
                return Ok(());
            }
            let current = sources(config);
            if current != seen {
                seen = current;
                match load(config) {
                    Ok(tables) => wanted = tables,
                    Err(e) => tracing::error!("{e:#}; the last good state stays applied"),
                }
            }
            let request = match &pushed {
                _ if rejected.as_ref() == Some(&wanted) => None,
                None => Some(Request::FullSync { tables: wanted.clone() }),
                Some(old) if *old != wanted => {
                    let update = diff(old, &wanted);
                    (!update.is_empty()).then_some(Request::Update(update))
                }
                Some(_) => None,
            };
            let result = match request {
                Some(request) => {
                    let full = matches!(request, Request::FullSync { .. });
                    match client.request(&request) {
                        Ok(Response::Ack { generation }) => {
                            if full {
                                tracing::info!(generation, "full sync applied");
                                if let Err(e) = client.request(&Request::InSync) {
                                    tracing::warn!("in-sync marker: {e}");
                                }
                            } else {
                                tracing::info!(generation, "update applied");
                            }
                            pushed = Some(wanted.clone());
                            Ok(())
                        }
                        Ok(Response::Error(e)) if !full => {
                            // What the dataplane holds is not what was pushed: podlane-cni
                            // registered or removed a pod first. Settled by a full sync.
                            tracing::info!("update refused ({e}); syncing in full");
                            pushed = None;
                            Ok(())
                        }
                        Ok(Response::Error(e)) => {
                            // The dataplane keeps the tables it had. Wait for the next edit.
                            tracing::error!("the dataplane rejected the tables: {e}");
                            rejected = Some(wanted.clone());
                            Ok(())
                        }
                        Ok(other) => Err(anyhow::anyhow!("unexpected reply {other:?}")),
                        Err(e) => Err(e),
                    }
                }
                None if last_check.elapsed() >= Duration::from_secs(1) => {
                    last_check = Instant::now();
                    client.request(&Request::Query { what: Query::Version }).map(drop)
                }
                None => {
                    std::thread::sleep(Duration::from_millis(100));
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::warn!("lost the dataplane ({e}); reconnecting and syncing from scratch");
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use podlane_core::table::{EndpointSpec, PodEdge};

    fn endpoint(name: &str, ip: &str, interface: &str, edge: PodEdge) -> EndpointSpec {
        EndpointSpec {
            namespace: "shop".into(),
            name: name.into(),
            labels: [("app".to_owned(), name.to_owned())].into(),
            ips: vec![ip.parse().unwrap()],
            mac: "0a:58:0a:f4:01:07".parse().unwrap(),
            interface: interface.into(),
            edge,
            ingress_policy: Some("ingress:shop/p".into()),
            egress_policy: None,
        }
    }

    #[test]
    fn wired_pods_join_the_tables_with_the_files_labels_and_policies() {
        let mut tables = TableSpec::default();
        tables.endpoints.push(endpoint("web", "10.244.1.7", "veth-web", PodEdge::Veth));
        let tap = PodEdge::Tap { netns: "/var/run/netns/p1".into() };
        let record = |e: EndpointSpec| CniRecord {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/p1".into(),
            endpoint: e,
            result: serde_json::Value::Null,
            ipam: serde_json::Value::Null,
            network: "podlane".into(),
        };
        let mut web = endpoint("web", "10.244.1.7", "eth0", tap.clone());
        web.labels.clear();
        web.ingress_policy = None;
        let mut other = endpoint("api", "10.244.1.8", "eth0", tap.clone());
        other.labels.clear();
        merge_cni(&mut tables, &[record(web), record(other.clone())]);
        assert_eq!(tables.endpoints.len(), 2);
        let merged = &tables.endpoints[0];
        assert_eq!((merged.interface.as_str(), &merged.edge), ("eth0", &tap));
        assert_eq!(merged.ingress_policy.as_deref(), Some("ingress:shop/p"), "the file's policy");
        assert_eq!(merged.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(tables.endpoints[1], other, "a pod the file does not name: as wired");
    }
}
