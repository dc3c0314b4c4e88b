//! Building tables entry by entry: when a [`TableSpec`] does not validate, the entry at fault
//! is left out (or kept as it was before the request) and the rest is built, so that one bad
//! entry — two pods briefly sharing an address while one is reused, a node whose annotation
//! is wrong — never blocks the good ones.
//!
//! The rules a client can rely on (docs/protocol.md, "Atomicity"):
//!
//! * The entry at fault is the one an error names; of two in conflict, the one the request
//!   adds or changes, and when both are new, the later one in the request.
//! * An entry at fault that the tables held before the request keeps its previous version;
//!   one they did not hold is left out. Either way the reply lists it under `rejected`.
//! * An entry the request did not change is never left out: a fault among unchanged entries
//!   only (a policy deleted while an unchanged endpoint uses it, this node's pod CIDRs changed
//!   under its pods) refuses the request whole.
//! * The local node is never left out: a request whose local node does not validate is
//!   refused whole, as is one with more than [`MAX_REJECTED`] entries at fault (so that a
//!   request of garbage costs at most that many builds and one more), and one over the
//!   tables' capacity.

use super::snapshot::TableError;
use super::spec::TableSpec;

/// Entries a request may have at fault before it is refused whole.
pub const MAX_REJECTED: usize = 64;

/// An entry of a [`TableSpec`], by key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    Node(String),
    /// `namespace/name`.
    Endpoint(String),
    Policy(String),
}

impl Entry {
    /// `node`, `endpoint` or `policy`.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Node(_) => "node",
            Entry::Endpoint(_) => "endpoint",
            Entry::Policy(_) => "policy",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Entry::Node(n) | Entry::Endpoint(n) | Entry::Policy(n) => n,
        }
    }

    /// Where the last entry with this key sits in `spec`.
    fn position(&self, spec: &TableSpec) -> Option<usize> {
        match self {
            Entry::Node(n) => spec.nodes.iter().rposition(|x| x.name == *n),
            Entry::Endpoint(k) => spec.endpoints.iter().rposition(|x| x.key() == *k),
            Entry::Policy(n) => spec.policies.iter().rposition(|x| x.name == *n),
        }
    }

    /// Puts `previous`'s version of this entry in place of `spec`'s last one (`Some(true)`),
    /// or removes that one when `previous` has none (`Some(false)`). `None` when `spec` has no
    /// such entry.
    fn revert(&self, spec: &mut TableSpec, previous: Option<&TableSpec>) -> Option<bool> {
        let at = self.position(spec)?;
        let old = previous.and_then(|p| self.position(p).map(|i| (p, i)));
        let kept = match self {
            Entry::Node(_) => keep_or_remove(&mut spec.nodes, at, old.map(|(p, i)| &p.nodes[i])),
            Entry::Endpoint(_) => {
                keep_or_remove(&mut spec.endpoints, at, old.map(|(p, i)| &p.endpoints[i]))
            }
            Entry::Policy(_) => {
                keep_or_remove(&mut spec.policies, at, old.map(|(p, i)| &p.policies[i]))
            }
        };
        Some(kept)
    }
}

/// `entries[at]` replaced by `old` when there is a different one (true), else removed.
fn keep_or_remove<T: Clone + PartialEq>(entries: &mut Vec<T>, at: usize, old: Option<&T>) -> bool {
    match old {
        Some(old) if *old != entries[at] => {
            entries[at] = old.clone();
            true
        }
        _ => {
            entries.remove(at);
            false
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

impl TableError {
    /// The entries this error is about, the one to blame first: the entry it names, or of
    /// two in conflict the later one, then the earlier. Empty when the error is the
    /// request's as a whole (its local node, its size).
    pub fn parties(&self) -> Vec<Entry> {
        use TableError as E;
        let nodes = |ns: &[&String]| ns.iter().map(|n| Entry::Node((*n).clone())).collect();
        let endpoints = |es: &[&String]| es.iter().map(|e| Entry::Endpoint((*e).clone())).collect();
        match self {
            E::UnknownLocalNode(_) | E::TooMany { .. } => Vec::new(),
            E::DuplicateNode(n) => nodes(&[n]),
            E::MissingVtepMac { node: n }
            | E::InvalidVtepMac { node: n, .. }
            | E::UnderlayFamily { node: n, .. }
            | E::TunnelIpOutsideCidrs { node: n, .. } => nodes(&[n]),
            E::DuplicateUnderlay { first, second, .. }
            | E::OverlappingPodCidr { first, second, .. } => nodes(&[second, first]),
            E::DuplicateEndpoint(e) => endpoints(&[e]),
            E::EndpointWithoutIp { endpoint: e }
            | E::InvalidEndpointMac { endpoint: e, .. }
            | E::EndpointOutsideNodeCidrs { endpoint: e, .. }
            | E::UnknownPolicy { endpoint: e, .. }
            | E::TunnelIpIsPodIp { endpoint: e, .. } => endpoints(&[e]),
            E::DuplicatePodIp { first, second, .. }
            | E::DuplicateInterface { first, second, .. } => endpoints(&[second, first]),
            E::DuplicatePolicy(p) => vec![Entry::Policy(p.clone())],
            E::Policy(e) => vec![Entry::Policy(e.policy().to_owned())],
        }
    }
}

/// Whether `spec`'s last entry with this key is the same as `previous`'s.
fn unchanged(entry: &Entry, spec: &TableSpec, previous: Option<&TableSpec>) -> bool {
    let (Some(at), Some(previous)) = (entry.position(spec), previous) else { return false };
    let Some(was) = entry.position(previous) else { return false };
    match entry {
        Entry::Node(_) => spec.nodes[at] == previous.nodes[was],
        Entry::Endpoint(_) => spec.endpoints[at] == previous.endpoints[was],
        Entry::Policy(_) => spec.policies[at] == previous.policies[was],
    }
}

/// An entry left out of (or kept as it was by) a request, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub entry: Entry,
    pub error: TableError,
    /// The tables keep the version they held before; else the entry is absent.
    pub kept_previous: bool,
}

/// Builds `spec` with `build`, leaving out entries at fault as the module says. `previous` is
/// what the tables held before (none for a first build). Returns what was built, the spec it
/// was built from, and the entries at fault; or the error that refuses the request whole.
pub fn build_salvaging<T>(
    mut spec: TableSpec,
    previous: Option<&TableSpec>,
    mut build: impl FnMut(&TableSpec) -> Result<T, TableError>,
) -> Result<(T, TableSpec, Vec<Rejected>), TableError> {
    let mut rejected: Vec<Rejected> = Vec::new();
    loop {
        let error = match build(&spec) {
            Ok(built) => return Ok((built, spec, rejected)),
            Err(error) => error,
        };
        // Blame an entry the request added or changed (of two in conflict, the later first).
        // When it changed none of them, the fault is in something else it did — a policy
        // deleted while an unchanged endpoint uses it, this node's pod CIDRs changed under
        // its pods — and leaving out an entry that was in force would cut off what worked:
        // the request is refused whole.
        let Some(entry) = error.parties().into_iter().find(|e| !unchanged(e, &spec, previous))
        else {
            return Err(error);
        };
        if entry == Entry::Node(spec.local_node.clone()) || rejected.len() >= MAX_REJECTED {
            return Err(error);
        }
        // Back to its previous version, which is unchanged from then on and never blamed
        // again; or out, for an entry the tables did not hold.
        let Some(kept_previous) = entry.revert(&mut spec, previous) else {
            return Err(error);
        };
        rejected.push(Rejected { entry, error, kept_previous });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::snapshot::tests::good;
    use crate::table::{PolicySpec, PortProtocol, PortSpec, RuleSpec, Snapshot};

    fn build(
        spec: TableSpec,
        previous: Option<&TableSpec>,
    ) -> Result<(TableSpec, Vec<Rejected>), TableError> {
        build_salvaging(spec, previous, |s| Snapshot::build(s, 1)).map(|(_, s, r)| (s, r))
    }

    fn keys(rejected: &[Rejected]) -> Vec<String> {
        rejected.iter().map(|r| r.entry.to_string()).collect()
    }

    #[test]
    fn a_new_pod_on_a_taken_address_is_left_out_wherever_it_sits() {
        let previous = good();
        let mut taken = previous.endpoints[0].clone();
        taken.name = "web-2".into();
        taken.interface = "veth9".into();
        for at_front in [false, true] {
            let mut spec = previous.clone();
            if at_front {
                spec.endpoints.insert(0, taken.clone());
            } else {
                spec.endpoints.push(taken.clone());
            }
            let (applied, rejected) = build(spec, Some(&previous)).expect("salvaged");
            assert_eq!(keys(&rejected), ["endpoint default/web-2"], "at front: {at_front}");
            assert!(matches!(rejected[0].error, TableError::DuplicatePodIp { .. }));
            assert_eq!(applied, previous, "the pod that had the address keeps it");
        }
    }

    #[test]
    fn a_changed_entry_at_fault_keeps_its_previous_version() {
        let previous = good();
        let mut spec = previous.clone();
        spec.nodes[1].underlay = spec.nodes[0].underlay; // b claims a's address
        spec.nodes.push(crate::table::NodeSpec { name: "c".into(), ..previous.nodes[1].clone() });
        spec.nodes[2].underlay = "192.168.50.3".parse().unwrap();
        spec.nodes[2].pod_cidrs = vec!["10.244.3.0/24".parse().unwrap()];
        let (applied, rejected) = build(spec, Some(&previous)).expect("salvaged");
        assert_eq!(keys(&rejected), ["node b"]);
        assert_eq!(applied.nodes[1], previous.nodes[1], "b as it was");
        assert_eq!(applied.nodes[2].name, "c", "the good node of the request is in");
    }

    #[test]
    fn a_bad_policy_leaves_out_what_needs_it_and_nothing_else() {
        let previous = good();
        let mut spec = previous.clone();
        let port = PortSpec { protocol: PortProtocol::Tcp, port: Some(90), end_port: Some(80) };
        spec.policies.push(PolicySpec {
            name: "broken".into(),
            rules: vec![RuleSpec { peers: vec![], ports: vec![port] }],
        });
        let mut api = spec.endpoints[0].clone();
        api.name = "api".into();
        api.ips = vec!["10.244.1.9".parse().unwrap()];
        api.interface = "veth7".into();
        api.ingress_policy = Some("broken".into());
        spec.endpoints.push(api);
        let (applied, rejected) = build(spec, Some(&previous)).expect("salvaged");
        assert_eq!(keys(&rejected), ["policy broken", "endpoint default/api"]);
        assert_eq!(applied, previous);
    }

    #[test]
    fn a_fault_among_unchanged_entries_refuses_the_request_whole() {
        let mut previous = good();
        previous.endpoints[0].ingress_policy = Some("deny".into());
        let mut spec = previous.clone();
        spec.policies.clear(); // deleted while web uses it
        assert!(
            matches!(build(spec, Some(&previous)), Err(TableError::UnknownPolicy { .. })),
            "web, unchanged, is not cut off"
        );
        let mut spec = previous.clone();
        spec.nodes[0].pod_cidrs = vec!["10.244.9.0/24".parse().unwrap()];
        assert!(matches!(
            build(spec, Some(&previous)),
            Err(TableError::EndpointOutsideNodeCidrs { .. })
        ));
    }

    #[test]
    fn the_local_node_and_a_flood_of_faults_refuse_the_request_whole() {
        let mut spec = good();
        spec.nodes[0].vtep_mac = None;
        assert!(matches!(build(spec, None), Err(TableError::MissingVtepMac { .. })));
        let mut spec = good();
        for i in 0..=MAX_REJECTED {
            let mut e = spec.endpoints[0].clone();
            e.name = format!("dup-{i}");
            e.interface = format!("dup{i}");
            spec.endpoints.push(e);
        }
        assert!(
            matches!(build(spec, None), Err(TableError::DuplicatePodIp { .. })),
            "{} faults are too many",
            MAX_REJECTED + 1
        );
    }

    #[test]
    fn a_clean_request_builds_at_once() {
        let mut builds = 0;
        let (_, applied, rejected) = build_salvaging(good(), None, |s| {
            builds += 1;
            Snapshot::build(s, 1)
        })
        .unwrap();
        assert_eq!((builds, applied, rejected), (1, good(), vec![]));
    }
}
