//! `podlane agent`: keeps one node's dataplane in step with the cluster.
//!
//! The cluster is a file ([`crate::cluster`], for tests and demos) or the Kubernetes API
//! ([`crate::kubernetes`]); either way the node's tables are computed from it and from the
//! pods `podlane-cni` wired on this node (the records in its state directory,
//! [`podlane_core::api::CniRecord`]). The agent pushes a full sync and an in-sync marker, then
//! watches its sources (the file's modification time and size, the watchers' events, the
//! records; every 100 ms) and pushes only what changed ([`crate::diff`]). A pod the plugin
//! wired keeps its interface, address and MAC from the record; the cluster, where it names
//! the same pod (`namespace/name`), gives its labels and so its policies. The plugin
//! registers and removes its pods itself, so an update the dataplane refuses because it
//! already did (a deletion of what is gone) is followed by a full sync, which settles any
//! such race. An invalid edit is logged with the file, line or field, and the
//! last good state stays applied. Entries the dataplane leaves out (an address two pods
//! briefly share, a node it cannot validate) are logged, the rest applies, and the next change
//! is pushed as a full sync, which retries them. When the connection breaks — the dataplane restarted or
//! went away — the agent reconnects with exponential backoff (100 ms to 5 s) and syncs from
//! scratch.
//!
//! With the Kubernetes API, the agent also writes this node's annotations (Flannel's, and
//! Calico's on a Calico overlay) so that kernel nodes program their vxlan device for it, and,
//! when asked, the CNI network configuration with this node's pod CIDRs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use podlane_core::api::{CniRecord, DaemonInfo, Query, Request, Response};
use podlane_core::table::TableSpec;

use crate::client::Client;
use crate::cluster::Cluster;
use crate::diff::diff;
use crate::kubernetes::translate::{self, LocalNode, Overlay};
use crate::kubernetes::{Connection, KubeSource};

/// Where the cluster comes from.
#[derive(Debug, Clone)]
pub enum ClusterSource {
    /// A cluster file (YAML, docs/cluster.md).
    File(PathBuf),
    /// The Kubernetes API; with `conflist`, the CNI configuration is written there.
    Kubernetes { connection: Connection, conflist: Option<PathBuf> },
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: ClusterSource,
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

/// What the tables are computed from, as a value that changes when they may have: the
/// cluster file's fingerprint or the watchers' event count, and every CNI record's
/// fingerprint.
#[derive(Debug, Clone, PartialEq)]
struct Stamp {
    cluster: Result<Fingerprint, u64>,
    records: Vec<(PathBuf, Fingerprint)>,
}

/// The running source: the file's path, or the watchers with what the agent wrote to the
/// API.
#[derive(Debug)]
enum Source {
    File(PathBuf),
    Kubernetes(Box<KubeState>),
}

#[derive(Debug)]
struct KubeState {
    source: KubeSource,
    conflist: Option<PathBuf>,
    /// The annotations last written, and when; the next attempt after a failure.
    published: Option<(BTreeMap<String, String>, Instant)>,
    retry_at: Instant,
    retry_backoff: Duration,
    /// What was left out at the last computation (each reported once).
    skipped: BTreeSet<String>,
    waiting_reported: bool,
}

impl Source {
    fn stamp(&self, config: &AgentConfig) -> Stamp {
        let mut records: Vec<(PathBuf, Fingerprint)> = std::fs::read_dir(&config.cni_state)
            .map(|entries| entries.flatten().map(|e| (e.path(), fingerprint(&e.path()))).collect())
            .unwrap_or_default();
        records.sort();
        let cluster = match self {
            Source::File(path) => Ok(fingerprint(path)),
            Source::Kubernetes(kube) => Err(kube.source.events()),
        };
        Stamp { cluster, records }
    }

    /// The node's tables now; `None` while the watchers have not listed everything once, or
    /// before the dataplane said who this node is.
    fn load(
        &mut self,
        config: &AgentConfig,
        local: Option<&LocalNode>,
    ) -> anyhow::Result<Option<TableSpec>> {
        let records = CniRecord::read_dir(&config.cni_state);
        let cluster = match self {
            Source::File(path) => Cluster::from_file(path)?,
            Source::Kubernetes(kube) => {
                let Some(local) = local else { return Ok(None) };
                if !kube.source.ready() {
                    if !kube.waiting_reported {
                        tracing::info!(
                            "waiting for the API server's first lists ({})",
                            kube.source.waiting_for().join(", ")
                        );
                        kube.waiting_reported = true;
                    }
                    return Ok(None);
                }
                let (cluster, skipped) = kube.source.cluster(local);
                let now: BTreeSet<String> = skipped.iter().map(ToString::to_string).collect();
                for line in now.difference(&kube.skipped) {
                    tracing::warn!("{line}");
                }
                kube.skipped = now;
                cluster
            }
        };
        let tables = cluster.tables_for(&config.node, &records).map_err(|e| match self {
            Source::File(path) => anyhow::anyhow!("cluster file {}: {e}", path.display()),
            Source::Kubernetes(_) => anyhow::anyhow!("the cluster from the API: {e}"),
        })?;
        Ok(Some(tables))
    }

    /// With the API: this node's annotations and the CNI configuration kept as they should
    /// be. Failures are logged and retried with backoff (1 s to 30 s). The CNI configuration
    /// waits for the dataplane's first full sync (`synced`): before that it would refuse the
    /// pods the runtime starts.
    fn maintain(
        &mut self,
        config: &AgentConfig,
        local: &LocalNode,
        info: &DaemonInfo,
        synced: bool,
    ) {
        let Source::Kubernetes(kube) = self else { return };
        let Some(node) = kube.source.node(&local.name) else { return };
        let pod_cidrs = translate::pod_cidrs_of(&node).unwrap_or_default();
        let wanted = translate::node_annotations(local, &pod_cidrs);
        let now = Instant::now();
        let stale = match &kube.published {
            // Written: wait for the watcher to show it, or write again after 30 s.
            Some((written, at)) => *written != wanted || at.elapsed() >= Duration::from_secs(30),
            None => true,
        };
        if translate::annotations_differ(&node, &wanted) && stale && now >= kube.retry_at {
            match kube.source.annotate(&local.name, &wanted) {
                Ok(()) => {
                    tracing::info!(node = local.name, "published this node's annotations");
                    kube.published = Some((wanted, now));
                    kube.retry_backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!("{e:#}; retrying in {:?}", kube.retry_backoff);
                    kube.retry_at = now + kube.retry_backoff;
                    kube.retry_backoff = (kube.retry_backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        if let Some(path) = &kube.conflist
            && !pod_cidrs.is_empty()
            && synced
        {
            let text = translate::conflist(
                &pod_cidrs,
                info.overlay_mtu,
                &config.socket,
                &config.cni_state,
            );
            match crate::kubernetes::write_conflist(path, &text) {
                Ok(true) => tracing::info!("wrote the CNI configuration {}", path.display()),
                Ok(false) => {}
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
    }
}

/// Who the dataplane says this node is: its address, VTEP MAC (the uplink's) and overlay.
fn local_node(client: &mut Client, node: &str) -> anyhow::Result<(LocalNode, DaemonInfo)> {
    let info = match client.request(&Request::Query { what: Query::Config })? {
        Response::Config { config } => *config,
        other => anyhow::bail!("unexpected reply to a configuration query: {other:?}"),
    };
    if info.node != node {
        anyhow::bail!(
            "the dataplane runs node {:?}, this agent was given --node {node:?}",
            info.node
        );
    }
    let local = LocalNode {
        name: info.node.clone(),
        underlay: info
            .node_ip
            .parse()
            .map_err(|e| anyhow::anyhow!("the dataplane's node address {:?}: {e}", info.node_ip))?,
        vtep_mac: info.uplink_mac.parse().map_err(|e| {
            anyhow::anyhow!("the dataplane's uplink MAC {:?}: {e}", info.uplink_mac)
        })?,
        vni: info.vni,
        overlay: Overlay::of(info.vni, info.vxlan_port),
    };
    Ok((local, info))
}

/// Runs until `stop()` says so. Fails only when the source is unusable at start (a cluster
/// file that does not parse, a kubeconfig that cannot be read).
pub fn run(config: &AgentConfig, stop: impl Fn() -> bool) -> anyhow::Result<()> {
    let mut source = match &config.source {
        ClusterSource::File(path) => Source::File(path.clone()),
        ClusterSource::Kubernetes { connection, conflist } => {
            Source::Kubernetes(Box::new(KubeState {
                source: KubeSource::start(connection)?,
                conflist: conflist.clone(),
                published: None,
                retry_at: Instant::now(),
                retry_backoff: Duration::from_secs(1),
                skipped: BTreeSet::new(),
                waiting_reported: false,
            }))
        }
    };
    let mut seen = source.stamp(config);
    let mut wanted = source.load(config, None)?;
    let mut backoff = Duration::from_millis(100);
    let mut reported_down = false;
    while !stop() {
        let connected = Client::connect(&config.socket, "podlane-agent").and_then(|mut client| {
            let local = match &source {
                Source::Kubernetes(_) => Some(local_node(&mut client, &config.node)?),
                Source::File(_) => None,
            };
            Ok((client, local))
        });
        let (mut client, local) = match connected {
            Ok(connected) => connected,
            Err(e) => {
                if !reported_down {
                    tracing::warn!("{e:#}; retrying");
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
        // The dataplane's identity is known now: compute again.
        let mut dirty = local.is_some();
        // What the dataplane holds from us; `None` until a full sync is accepted.
        let mut pushed: Option<TableSpec> = None;
        // Tables the dataplane refused whole: not retried until a source changes again.
        let mut rejected: Option<TableSpec> = None;
        // Whether the dataplane left entries of what was pushed out: then `pushed` is not what
        // it holds, and the next change is pushed as a full sync, which retries them.
        let mut partial = false;
        let mut last_check = Instant::now();
        // The annotations and the conflist are looked at when a source changed, and once a
        // second for the retries and the first full sync (not on every 100 ms turn).
        let mut maintained: Option<Instant> = None;
        loop {
            if stop() {
                return Ok(());
            }
            let current = source.stamp(config);
            let changed = current != seen || dirty;
            if changed {
                seen = current;
                dirty = false;
                match source.load(config, local.as_ref().map(|(l, _)| l)) {
                    Ok(Some(tables)) => wanted = Some(tables),
                    Ok(None) => {}
                    Err(e) => tracing::error!("{e:#}; the last good state stays applied"),
                }
            }
            if let Some((local, info)) = &local
                && (changed || maintained.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)))
            {
                source.maintain(config, local, info, pushed.is_some());
                maintained = Some(Instant::now());
            }
            let request = match (&pushed, &wanted) {
                (_, None) => None,
                (_, Some(wanted)) if rejected.as_ref() == Some(wanted) => None,
                (None, Some(wanted)) => Some(Request::FullSync { tables: wanted.clone() }),
                (Some(old), Some(wanted)) if old != wanted && partial => {
                    Some(Request::FullSync { tables: wanted.clone() })
                }
                (Some(old), Some(wanted)) if old != wanted => {
                    let update = diff(old, wanted);
                    (!update.is_empty()).then_some(Request::Update(update))
                }
                (Some(_), Some(_)) => None,
            };
            let result = match request {
                Some(request) => {
                    let full = matches!(request, Request::FullSync { .. });
                    match client.request(&request) {
                        Ok(Response::Ack { generation, rejected: left_out }) => {
                            for entry in &left_out {
                                tracing::warn!("the dataplane left out {entry}");
                            }
                            partial = !left_out.is_empty() || (partial && !full);
                            if full {
                                tracing::info!(generation, "full sync applied");
                                if let Err(e) = client.request(&Request::InSync) {
                                    tracing::warn!("in-sync marker: {e}");
                                }
                            } else {
                                tracing::info!(generation, "update applied");
                            }
                            pushed = wanted.clone();
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
                            // The dataplane keeps the tables it had. Wait for the next change.
                            tracing::error!("the dataplane rejected the tables: {e}");
                            rejected = wanted.clone();
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
