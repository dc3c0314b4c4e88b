//! The minimal change from one set of tables to the next: what the agent pushes when the
//! cluster file is edited. Entries are compared whole and keyed by name (endpoints by
//! `namespace/name`); an entry that changed is upserted, one that is gone is deleted, an
//! unchanged one is not sent.

use std::collections::BTreeMap;

use podlane_core::api::Update;
use podlane_core::table::TableSpec;

fn changes<T: Clone + PartialEq>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Vec<String>) {
    let before: BTreeMap<String, &T> = old.iter().map(|x| (key(x), x)).collect();
    let after: BTreeMap<String, &T> = new.iter().map(|x| (key(x), x)).collect();
    let upserts = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(_, v)| (*v).clone())
        .collect();
    let deletes = before.keys().filter(|k| !after.contains_key(*k)).cloned().collect();
    (upserts, deletes)
}

/// The update that turns `old` into `new` (same local node).
pub fn diff(old: &TableSpec, new: &TableSpec) -> Update {
    let (upsert_nodes, delete_nodes) = changes(&old.nodes, &new.nodes, |n| n.name.clone());
    let (upsert_endpoints, delete_endpoints) = changes(&old.endpoints, &new.endpoints, |e| e.key());
    let (upsert_policies, delete_policies) =
        changes(&old.policies, &new.policies, |p| p.name.clone());
    Update {
        upsert_nodes,
        upsert_endpoints,
        upsert_policies,
        delete_nodes,
        delete_endpoints,
        delete_policies,
    }
}
