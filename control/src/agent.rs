//! `podlane agent`: keeps one node's dataplane in step with a cluster file.
//!
//! It computes the node's tables from the file, pushes a full sync and an in-sync marker,
//! then watches the file (its modification time and size, every 100 ms) and pushes only what
//! changed ([`crate::diff`]). An invalid edit is logged with the file, line or field, and the
//! last good state stays applied. When the connection breaks — the dataplane restarted or
//! went away — the agent reconnects with exponential backoff (100 ms to 5 s) and syncs from
//! scratch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use podlane_core::api::{Query, Request, Response};
use podlane_core::table::TableSpec;

use crate::client::Client;
use crate::cluster::Cluster;
use crate::diff::diff;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub cluster: PathBuf,
    pub node: String,
    pub socket: PathBuf,
}

/// The file's identity for change detection.
fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn load(config: &AgentConfig) -> anyhow::Result<TableSpec> {
    let cluster = Cluster::from_file(&config.cluster)?;
    cluster
        .tables_for(&config.node)
        .map_err(|e| anyhow::anyhow!("cluster file {}: {e}", config.cluster.display()))
}

/// Runs until `stop()` says so. Fails only when the cluster file is unusable at start.
pub fn run(config: &AgentConfig, stop: impl Fn() -> bool) -> anyhow::Result<()> {
    let mut seen = fingerprint(&config.cluster);
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
            let current = fingerprint(&config.cluster);
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
                        Ok(Response::Error(e)) => {
                            // The dataplane keeps the tables it had; `pushed` still says
                            // what they are. Wait for the next edit.
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
