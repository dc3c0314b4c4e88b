//! The tables a running daemon forwards with: what the control process pushed (the base),
//! plus the next-hop MACs the daemon resolved itself, built into snapshots and published to
//! the workers. One writer at a time (a mutex the workers never touch). A request's entries
//! that do not validate are left out or kept as they were ([`crate::table::salvage`]) and
//! listed as rejected until a later request replaces or deletes them; a request that cannot
//! be salvaged (its local node, too many bad entries) is refused whole and the snapshot in
//! force stays.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::api::{ApiError, RejectedEntry, Update};
use crate::table::{NodeSpec, Snapshot, SnapshotCell, TableError, TableSpec, build_salvaging};
use crate::wire::MacAddr;

#[derive(Debug)]
struct State {
    base: TableSpec,
    next_hops: HashMap<String, MacAddr>,
    in_sync: bool,
    /// Entries pushed but not in force, as the last requests left them.
    rejected: Vec<RejectedEntry>,
}

/// The daemon's tables.
#[derive(Debug)]
pub(crate) struct Tables {
    cell: SnapshotCell,
    state: Mutex<State>,
    node: String,
    node_ip: IpAddr,
}

impl Tables {
    /// Starts from `base`, whose local node must be `node` at `node_ip`.
    pub(crate) fn new(base: TableSpec, node_ip: IpAddr) -> Result<Tables, TableError> {
        let snapshot = Snapshot::build(&base, 1)?;
        Ok(Tables {
            cell: SnapshotCell::new(snapshot),
            node: base.local_node.clone(),
            node_ip,
            state: Mutex::new(State {
                base,
                next_hops: HashMap::new(),
                in_sync: false,
                rejected: Vec::new(),
            }),
        })
    }

    /// Tables that hold only this node (no pods, no routes) until the control process syncs.
    pub(crate) fn empty(node: &str, node_ip: IpAddr, vtep_mac: MacAddr) -> TableSpec {
        TableSpec {
            local_node: node.to_owned(),
            nodes: vec![NodeSpec {
                name: node.to_owned(),
                underlay: node_ip,
                vtep_mac: Some(vtep_mac),
                next_hop_mac: None,
                pod_cidrs: Vec::new(),
                tunnel_ips: Vec::new(),
            }],
            endpoints: Vec::new(),
            policies: Vec::new(),
        }
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// This node's underlay address.
    pub(crate) fn node_ip(&self) -> IpAddr {
        self.node_ip
    }

    pub(crate) fn load_full(&self) -> Arc<Snapshot> {
        self.cell.load_full()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Builds and publishes `base` with the resolved next hops, leaving out the entries that
    /// do not validate; what was built becomes the base. Returns the generation and the
    /// entries left out (or kept at their previous version).
    fn publish(
        &self,
        state: &mut State,
        base: TableSpec,
    ) -> Result<(u64, Vec<RejectedEntry>), ApiError> {
        if base.local_node != self.node {
            return Err(ApiError {
                message: format!(
                    "local node {:?} is not this dataplane's node {:?}",
                    base.local_node, self.node
                ),
                entry: Some(base.local_node.clone()),
            });
        }
        if let Some(local) = base.nodes.iter().find(|n| n.name == self.node)
            && local.underlay != self.node_ip
        {
            return Err(ApiError {
                message: format!(
                    "node {:?} has underlay {} but this dataplane runs on {}",
                    self.node, local.underlay, self.node_ip
                ),
                entry: Some(self.node.clone()),
            });
        }
        let next_hops = &state.next_hops;
        let (generation, applied, rejected) = build_salvaging(base, Some(&state.base), |spec| {
            self.cell.update(&effective(spec, next_hops))
        })
        .map_err(|e| ApiError {
            message: format!("tables rejected: {e}"),
            entry: e.parties().first().map(|p| p.name().to_owned()),
        })?;
        let rejected: Vec<RejectedEntry> = rejected
            .into_iter()
            .map(|r| RejectedEntry {
                kind: r.entry.kind().to_owned(),
                name: r.entry.name().to_owned(),
                message: r.error.to_string(),
                kept_previous: r.kept_previous,
            })
            .collect();
        for r in &rejected {
            tracing::warn!("rejected {r}");
        }
        state.base = applied;
        Ok((generation, rejected))
    }

    /// Replaces everything; what is left out is all that stays rejected.
    pub(crate) fn full_sync(
        &self,
        tables: TableSpec,
    ) -> Result<(u64, Vec<RejectedEntry>), ApiError> {
        let mut state = self.lock();
        state.in_sync = false;
        let (generation, rejected) = self.publish(&mut state, tables)?;
        state.rejected = rejected.clone();
        Ok((generation, rejected))
    }

    /// Applies an incremental change as one generation. An entry rejected before stays
    /// listed unless this update upserts or deletes it.
    pub(crate) fn update(&self, update: &Update) -> Result<(u64, Vec<RejectedEntry>), ApiError> {
        let mut state = self.lock();
        let mut base = state.base.clone();
        update.apply_to(&mut base)?;
        let (generation, rejected) = self.publish(&mut state, base)?;
        let touched = |r: &RejectedEntry| {
            let name = r.name.as_str();
            match r.kind.as_str() {
                "node" => {
                    update.upsert_nodes.iter().any(|n| n.name == name)
                        || update.delete_nodes.iter().any(|n| n == name)
                }
                "endpoint" => {
                    update.upsert_endpoints.iter().any(|e| e.key() == name)
                        || update.delete_endpoints.iter().any(|e| e == name)
                }
                _ => {
                    update.upsert_policies.iter().any(|p| p.name == name)
                        || update.delete_policies.iter().any(|p| p == name)
                }
            }
        };
        state.rejected.retain(|r| !touched(r));
        for r in &rejected {
            state.rejected.retain(|old| (&old.kind, &old.name) != (&r.kind, &r.name));
            state.rejected.push(r.clone());
        }
        Ok((generation, rejected))
    }

    /// The entries pushed but not in force.
    pub(crate) fn rejected(&self) -> Vec<RejectedEntry> {
        self.lock().rejected.clone()
    }

    /// The generation in force, and whether the control process said it is in sync.
    pub(crate) fn status(&self) -> (u64, bool) {
        let in_sync = self.lock().in_sync;
        (self.cell.load().generation(), in_sync)
    }

    pub(crate) fn set_in_sync(&self) -> u64 {
        let mut state = self.lock();
        state.in_sync = true;
        self.cell.load().generation()
    }

    /// Remote nodes whose next hop the daemon must resolve: those without a static one.
    pub(crate) fn nodes_to_resolve(&self) -> Vec<(String, IpAddr)> {
        let state = self.lock();
        state
            .base
            .nodes
            .iter()
            .filter(|n| n.name != self.node && n.next_hop_mac.is_none())
            .map(|n| (n.name.clone(), n.underlay))
            .collect()
    }

    /// Records resolved next hops and republishes once; the base stays as it is.
    pub(crate) fn set_next_hops(&self, resolved: &[(String, MacAddr)]) -> Result<u64, ApiError> {
        let mut state = self.lock();
        state.next_hops.extend(resolved.iter().cloned());
        let base = state.base.clone();
        self.publish(&mut state, base).map(|(generation, _)| generation)
    }

    /// The tables in force, next hops filled in.
    pub(crate) fn current(&self) -> (u64, bool, TableSpec) {
        let state = self.lock();
        (self.cell.load().generation(), state.in_sync, effective(&state.base, &state.next_hops))
    }
}

fn effective(base: &TableSpec, next_hops: &HashMap<String, MacAddr>) -> TableSpec {
    let mut spec = base.clone();
    for node in &mut spec.nodes {
        if node.next_hop_mac.is_none() {
            node.next_hop_mac = next_hops.get(&node.name).copied();
        }
    }
    spec
}
