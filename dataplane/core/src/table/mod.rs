//! The tables the control process pushes — nodes, local endpoints (pods), routes and policy —
//! validated and built into one immutable [`Snapshot`] with a generation number, and published
//! to workers lock-free through a [`SnapshotCell`].
//!
//! Build, then publish: [`Snapshot::build`] checks the whole [`TableSpec`] and either returns a
//! complete snapshot or a [`TableError`] naming the offending entry. Nothing is ever patched in
//! place, so a rejected update cannot leave half-applied state: the snapshot in use stays.
//! [`build_salvaging`] builds around entries at fault instead of refusing the whole spec.
//!
//! Routes map every node's pod CIDRs to that node and every local endpoint's addresses (as host
//! prefixes) to that endpoint, in one LPM per family: one lookup on the destination tells the
//! engine "local pod", "this node" or "remote node".
//!
//! * [`spec`] — the exchange form: [`TableSpec`] and its entries, tables files.
//! * [`snapshot`] — validation and build, the lookups the engine makes.
//! * [`publish`] — [`SnapshotCell`]: one writer at a time, readers never block.
//! * [`salvage`] — building what validates: the entry at fault left out (or kept as it was),
//!   the rest built.
//! * [`cidr`], [`lpm`], [`policy`] — prefixes, the longest-prefix-match trie, compiled policy.

pub mod cidr;
mod hash;
pub mod lpm;
pub mod policy;
pub mod publish;
pub mod salvage;
pub mod snapshot;
pub mod spec;

pub use cidr::{Cidr, CidrError};
pub use hash::FastHasher;
pub(crate) use hash::FastMap;
pub use lpm::{Lpm, LpmBuilder};
pub use policy::{
    CompiledPolicy, L4, PeerSpec, PolicyError, PolicySpec, PortProtocol, PortSpec, RuleSpec,
};
pub use publish::SnapshotCell;
pub use salvage::{Entry, MAX_REJECTED, Rejected, build_salvaging};
pub use snapshot::{Endpoint, EndpointId, Node, NodeId, RouteTarget, Snapshot, TableError};
pub use spec::{EndpointSpec, LoadError, NodeSpec, PodEdge, TableSpec};
