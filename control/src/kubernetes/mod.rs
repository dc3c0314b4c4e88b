//! The Kubernetes API as the agent's source of truth: kube-runtime reflectors on Nodes,
//! Pods, Namespaces and NetworkPolicies, and this node's annotations written back.
//!
//! The watchers run on a thread of their own (`podlane-kube`, a single-threaded Tokio
//! runtime); the agent's loop stays synchronous and reads the reflectors' stores. Each
//! watcher lists first (pages of 500), then watches from the list's resourceVersion with
//! bookmarks; a watch that ends is resumed from the last version seen, one that the server
//! answers with 410 Gone starts over with a list, and failures are retried with
//! kube-runtime's default backoff (800 ms growing to 30 s, jittered). A store is replaced
//! whole when a relist completes, so the agent never sees half a list.
//!
//! [`translate`] turns what the stores hold into a [`crate::cluster::Cluster`], which gives
//! the node's tables as a cluster file would.

pub mod translate;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::cluster::Cluster;
use translate::{ApiObjects, LocalNode, Skipped};

/// Where the API server and the credentials come from.
#[derive(Debug, Clone)]
pub enum Connection {
    /// A kubeconfig file (its current context).
    Kubeconfig(std::path::PathBuf),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    InCluster,
}

/// How long a request the agent makes itself (the annotation patch) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds watched, in the order of [`KubeSource::ready`]'s flags.
const KINDS: [&str; 4] = ["nodes", "pods", "namespaces", "networkpolicies"];

/// The reflectors and the thread that feeds them.
pub struct KubeSource {
    client: kube::Client,
    runtime: tokio::runtime::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
    /// Bumped by every event a watcher delivers.
    events: Arc<AtomicU64>,
    /// Per kind: its first list has completed.
    ready: Arc<[AtomicBool; 4]>,
}

impl KubeSource {
    /// Connects (reads the configuration; the first request is the watchers') and starts the
    /// watchers.
    pub fn start(connection: &Connection) -> anyhow::Result<KubeSource> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = runtime.block_on(client(connection))?;
        let (nodes, nodes_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let (namespaces, namespaces_writer) = reflector::store();
        let (policies, policies_writer) = reflector::store();
        let events = Arc::new(AtomicU64::new(0));
        let ready: Arc<[AtomicBool; 4]> = Arc::new(Default::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = runtime.handle().clone();
        let watch = {
            let (client, events, ready) = (client.clone(), events.clone(), ready.clone());
            async move {
                let config = watcher::Config::default();
                let run = futures_util::future::join4(
                    feed(0, Api::all(client.clone()), nodes_writer, &config, &events, &ready),
                    feed(1, Api::all(client.clone()), pods_writer, &config, &events, &ready),
                    feed(2, Api::all(client.clone()), namespaces_writer, &config, &events, &ready),
                    feed(3, Api::all(client), policies_writer, &config, &events, &ready),
                );
                tokio::select! {
                    _ = run => {}
                    _ = stopped => {}
                }
            }
        };
        let thread = std::thread::Builder::new()
            .name("podlane-kube".into())
            .spawn(move || runtime.block_on(watch))?;
        Ok(KubeSource {
            client,
            runtime: handle,
            thread: Some(thread),
            stop: Some(stop),
            nodes,
            pods,
            namespaces,
            policies,
            events,
            ready,
        })
    }

    /// Events seen so far: a change means the stores changed.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Acquire)
    }

    /// Whether every watcher has listed once: before that the tables would be partial.
    pub fn ready(&self) -> bool {
        self.ready.iter().all(|r| r.load(Ordering::Acquire))
    }

    /// The kinds not listed yet, for logs.
    pub fn waiting_for(&self) -> Vec<&'static str> {
        KINDS
            .iter()
            .zip(self.ready.iter())
            .filter(|(_, r)| !r.load(Ordering::Acquire))
            .map(|(k, _)| *k)
            .collect()
    }

    /// The cluster as the stores hold it now, seen from `local`.
    pub fn cluster(&self, local: &LocalNode) -> (Cluster, Vec<Skipped>) {
        let (nodes, pods) = (self.nodes.state(), self.pods.state());
        let (namespaces, policies) = (self.namespaces.state(), self.policies.state());
        let nodes: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
        let pods: Vec<&Pod> = pods.iter().map(|n| n.as_ref()).collect();
        let namespaces: Vec<&Namespace> = namespaces.iter().map(|n| n.as_ref()).collect();
        let policies: Vec<&NetworkPolicy> = policies.iter().map(|n| n.as_ref()).collect();
        translate::cluster_from_api(
            local,
            ApiObjects { nodes: &nodes, pods: &pods, namespaces: &namespaces, policies: &policies },
        )
    }

    /// This node's Node object as last seen.
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(&reflector::ObjectRef::new(name))
    }

    /// Writes `annotations` onto Node `name` (a JSON merge patch of its status subresource,
    /// as Flannel does: RBAC `patch` on `nodes/status`).
    pub fn annotate(
        &self,
        name: &str,
        annotations: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = serde_json::json!({"metadata": {"annotations": annotations}});
        let params = PatchParams::default();
        self.runtime.block_on(async {
            match tokio::time::timeout(
                REQUEST_TIMEOUT,
                api.patch_status(name, &params, &Patch::Merge(&patch)),
            )
            .await
            {
                Ok(result) => {
                    result.map(drop).map_err(|e| anyhow::anyhow!("patching node {name}: {e}"))
                }
                Err(_) => anyhow::bail!("patching node {name}: no answer in {REQUEST_TIMEOUT:?}"),
            }
        })
    }
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("events", &self.events())
            .field("waiting_for", &self.waiting_for())
            .finish_non_exhaustive()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn client(connection: &Connection) -> anyhow::Result<kube::Client> {
    let config = match connection {
        Connection::Kubeconfig(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?
        }
        Connection::InCluster => kube::Config::incluster().map_err(|e| {
            anyhow::anyhow!("in-cluster configuration: {e} (run in a pod, or give --kubeconfig)")
        })?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Runs one kind's watcher into its store, counting events and reporting trouble once per
/// episode (a watcher retries on its own).
async fn feed<K>(
    index: usize,
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    config: &watcher::Config,
    events: &AtomicU64,
    ready: &[AtomicBool; 4],
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kind = KINDS[index];
    let stream = reflector::reflector(writer, watcher(api, config.clone())).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if failing {
                    tracing::info!(kind, "watching again");
                    failing = false;
                }
                if let watcher::Event::InitDone = event {
                    if !ready[index].swap(true, Ordering::AcqRel) {
                        tracing::info!(kind, "listed");
                    } else {
                        tracing::info!(kind, "listed again");
                    }
                }
                events.fetch_add(1, Ordering::AcqRel);
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!(kind, "{}: listing again", status.message);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(kind, "watch failed: {e}; retrying with backoff");
                    failing = true;
                }
            }
        }
    }
}

/// Writes the CNI network configuration podlane-cni is called with, when it differs from
/// what `path` holds (through a temporary file and a rename: the runtime never reads half a
/// file). Returns whether it wrote.
pub fn write_conflist(path: &Path, text: &str) -> anyhow::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|have| have == text) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Not ending in .conflist: a runtime reading the directory meanwhile ignores it.
    let temporary = dir
        .join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("podlane")));
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(true)
}
