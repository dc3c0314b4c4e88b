//! Connection tracking: the flows each local endpoint takes part in, so that policy judges a
//! connection where it starts and its replies pass both ways.
//!
//! Kubernetes' NetworkPolicy is about connections: an ingress rule lets peers *open*
//! connections to a pod, an egress rule lets the pod open them, and the replies of an allowed
//! connection always pass — a pod under default-deny ingress still gets the answers to its own
//! requests, a server under an egress policy that allows nothing still answers its clients.
//!
//! * **One table per worker**, never shared and never locked: a flow is kept under the local
//!   endpoint it belongs to, and every frame from or to an endpoint meets the worker that owns
//!   it (frames for another worker's pod are handed over before they are judged). A flow
//!   between two local pods has an entry at each, each under its own policy.
//! * **Key**: the endpoint (slot), the protocol and both ends seen from the endpoint's side
//!   (its address and port, the peer's). Echo requests and replies use their identifier as
//!   both ports. The map's hash is keyed at random per table ([`FlowHasher`]): the ports are
//!   the network's choice, and a predictable hash would let a sender pile every flow into one
//!   bucket.
//! * **State**: which side opened the flow ([`Origin`]), TCP's progress read from the flags
//!   (SYN, established, FIN, RST; no sequence or window tracking), whether a reply was seen,
//!   the last packet's time, the tables' generation its opening was last judged in and the
//!   endpoint's instance.
//! * **Timeouts** ([`ConntrackConfig`]): TCP 60 s before the handshake completes, 6 hours
//!   established (Cilium's default; Linux keeps 5 days), 10 s after a FIN or RST; UDP and SCTP
//!   60 s, ICMP echo 30 s, other protocols 60 s, from the last packet either way.
//! * **Ageing** never sweeps the whole table: a cursor walks the slots, a few per new flow and
//!   per batch ([`Conntrack::age`]), and an expired entry is also noticed on lookup.
//! * **Bounded**: at capacity a new flow takes the slot of an expired one, or evicts a flow
//!   that never got a reply or is closing (counted in `evicted`); when the slots looked at hold
//!   only live, answered flows, the new one is refused (`conntrack_full`).
//! * **Policy changes**: a packet of a flow whose opening was judged under older tables is
//!   judged again; a flow the policy no longer allows is cut (counted), and its packet is then
//!   judged as the start of a flow of its own direction — so dropped, unless that direction is
//!   allowed by itself.
//! * **Restarts** keep nothing: a packet of a flow nobody remembers is judged as the start of a
//!   flow of its own direction and, if allowed, picked up mid-stream (a TCP segment without
//!   SYN starts an established entry). Established connections the policy allows survive a
//!   dataplane restart; a reply that arrives before any packet of its opening direction is
//!   judged on its own, and TCP's retransmission brings the opening direction's packet that
//!   re-creates the entry.
//! * **Related ICMP errors** (unreachable, fragmentation needed, packet too big, time
//!   exceeded, parameter problem) that quote a packet of a tracked flow pass both ways;
//!   unrelated ones are judged by policy as any port-less packet.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::net::IpAddr;
use std::time::Duration;

use crate::table::EndpointId;

/// Limits and timeouts of a worker's table.
#[derive(Debug, Clone)]
pub struct ConntrackConfig {
    /// Flows one worker tracks at most.
    pub capacity: usize,
    /// TCP between the first SYN and the handshake's answer.
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    /// TCP after a FIN or an RST.
    pub tcp_closing: Duration,
    /// UDP and SCTP.
    pub udp: Duration,
    /// ICMP and ICMPv6 echo.
    pub icmp: Duration,
    /// Any other protocol.
    pub other: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: 262_144,
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(60),
        }
    }
}

/// Which side opened a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The local endpoint: its egress policy allowed it.
    Local,
    /// The peer: the endpoint's ingress policy allowed it.
    Remote,
}

/// A flow's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// TCP: a SYN, no answer yet.
    SynSent,
    /// TCP: the handshake was answered, or the flow was picked up mid-stream.
    Established,
    /// TCP: a FIN or an RST was seen.
    Closing,
    /// Other protocols: packets of the opening direction only.
    Unreplied,
    /// Other protocols: a reply was seen.
    Replied,
}

impl FlowState {
    pub fn label(self) -> &'static str {
        match self {
            FlowState::SynSent => "syn_sent",
            FlowState::Established => "established",
            FlowState::Closing => "closing",
            FlowState::Unreplied => "unreplied",
            FlowState::Replied => "replied",
        }
    }
}

/// What connection tracking sees of a packet, from the local endpoint's side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub endpoint: EndpointId,
    pub instance: u64,
    /// Sent by the endpoint (else sent to it).
    pub outbound: bool,
    pub protocol: u8,
    /// The endpoint's address and port.
    pub local: (IpAddr, u16),
    /// The peer's address and port.
    pub remote: (IpAddr, u16),
    pub kind: Kind,
}

/// What kind of packet, as far as tracking goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp {
        flags: u8,
    },
    /// UDP, SCTP, other protocols: by timeout.
    Datagram,
    EchoRequest,
    EchoReply,
    /// An ICMP error quoting a packet of the flow `local`/`remote` describe (from the
    /// endpoint's side) with this protocol.
    Error {
        protocol: u8,
    },
    /// Not followed (later fragments, ICMP messages other than echo and errors): judged by
    /// policy alone.
    Untracked,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The policy of the packet's direction does not allow it as a new flow.
    Policy,
    /// A new flow, allowed, but the table is full of live flows.
    Full,
}

/// Counts of what the table did (also what `show counters` reports, under the worker's
/// `conntrack`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ConntrackStats {
    pub created: u64,
    pub expired: u64,
    /// Flows removed early to make room for a new one.
    pub evicted: u64,
    /// Flows removed because a policy change no longer allows them.
    pub cut: u64,
    /// New flows refused because the table was full (also under drops: conntrack_full).
    pub full: u64,
    /// ICMP errors passed as related to a tracked flow.
    pub related: u64,
}

/// One tracked flow, as `show conntrack` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowView {
    pub endpoint: EndpointId,
    pub protocol: u8,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub origin: Origin,
    pub state: FlowState,
    /// Time since the last packet, in nanoseconds.
    pub idle_ns: u64,
    /// Time left before it expires, in nanoseconds.
    pub expires_in_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    endpoint: u32,
    protocol: u8,
    local_port: u16,
    remote_port: u16,
    local: u128,
    remote: u128,
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn address(bits: u128) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bits);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl std::hash::Hash for Key {
    /// Five whole words, where the derived impl would write seven fields of mixed widths.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(
            u64::from(self.endpoint) << 40
                | u64::from(self.protocol) << 32
                | u64::from(self.local_port) << 16
                | u64::from(self.remote_port),
        );
        state.write_u64(self.local as u64);
        state.write_u64((self.local >> 64) as u64);
        state.write_u64(self.remote as u64);
        state.write_u64((self.remote >> 64) as u64);
    }
}

/// The flow table's hasher: a folded multiply per word (as foldhash and aHash's fallback do),
/// keyed with a random seed per table. Not a cryptographic function, but ports and addresses
/// are the network's choice, and without the seed a sender cannot aim its flows at one bucket.
/// With SipHash (std's default) in its place, `pipeline/encap` took about 20 % longer.
#[derive(Debug, Clone, Copy)]
struct FlowHasher {
    state: u64,
    key: u64,
}

impl std::hash::Hasher for FlowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u64(&mut self, word: u64) {
        let product = u128::from(self.state ^ word) * u128::from(self.key);
        self.state = (product as u64) ^ (product >> 64) as u64;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
}

/// Builds [`FlowHasher`]s with the table's random seed.
#[derive(Debug, Clone, Copy)]
struct FlowHashing {
    seed: u64,
    key: u64,
}

impl FlowHashing {
    /// Seeds from std's per-process random keys (the same source `RandomState` uses).
    fn random() -> FlowHashing {
        use std::hash::{BuildHasher, Hasher};
        let mut a = RandomState::new().build_hasher();
        a.write_u64(0x5eed);
        let mut b = RandomState::new().build_hasher();
        b.write_u64(0x6b6579);
        // An odd multiplier keeps the multiply a bijection on the low word.
        FlowHashing { seed: a.finish(), key: b.finish() | 1 }
    }
}

impl std::hash::BuildHasher for FlowHashing {
    type Hasher = FlowHasher;
    fn build_hasher(&self) -> FlowHasher {
        FlowHasher { state: self.seed, key: self.key }
    }
}

impl Key {
    fn new(endpoint: EndpointId, protocol: u8, local: (IpAddr, u16), remote: (IpAddr, u16)) -> Key {
        Key {
            endpoint: endpoint.0,
            protocol,
            local_port: local.1,
            remote_port: remote.1,
            local: bits(local.0),
            remote: bits(remote.0),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    origin: Origin,
    state: FlowState,
    /// Judged by policy when it opened (a pod's flow to a Service address is not: its policy
    /// is judged on the backend, after the node's kernel translated it).
    policed: bool,
    last_seen: u64,
    generation: u64,
    instance: u64,
}

impl Entry {
    /// The destination port of the opening direction: what its policy judged.
    fn opening_port(&self) -> u16 {
        match self.origin {
            Origin::Local => self.key.remote_port,
            Origin::Remote => self.key.local_port,
        }
    }

    /// Whether the packet goes the other way from the flow's opening.
    fn is_reply(&self, outbound: bool) -> bool {
        outbound != (self.origin == Origin::Local)
    }

    /// Whether a new flow may take this entry's place when the table is full.
    fn evictable(&self) -> bool {
        !matches!(self.state, FlowState::Established | FlowState::Replied)
    }
}

/// Slots looked at per new flow and per [`Conntrack::age`] call for expired entries.
const SWEEP: usize = 8;
/// Slots looked at for one to reuse when the table is full.
const ROOM_SEARCH: usize = 64;

/// One worker's flows.
#[derive(Debug)]
pub struct Conntrack {
    config: ConntrackConfig,
    timeouts: [u64; 5],
    index: HashMap<Key, u32, FlowHashing>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    cursor: usize,
    stats: ConntrackStats,
}

const T_SYN: usize = 0;
const T_ESTABLISHED: usize = 1;
const T_CLOSING: usize = 2;
const T_DATAGRAM: usize = 3;
const T_ECHO: usize = 4;

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl Conntrack {
    pub fn new(config: ConntrackConfig) -> Conntrack {
        Conntrack {
            timeouts: [
                ns(config.tcp_syn),
                ns(config.tcp_established),
                ns(config.tcp_closing),
                ns(config.udp),
                ns(config.icmp),
            ],
            index: HashMap::with_hasher(FlowHashing::random()),
            slots: Vec::new(),
            free: Vec::new(),
            cursor: 0,
            stats: ConntrackStats::default(),
            config,
        }
    }

    pub fn config(&self) -> &ConntrackConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn stats(&self) -> ConntrackStats {
        self.stats
    }

    fn timeout(&self, e: &Entry) -> u64 {
        match e.state {
            FlowState::SynSent => self.timeouts[T_SYN],
            FlowState::Established => self.timeouts[T_ESTABLISHED],
            FlowState::Closing => self.timeouts[T_CLOSING],
            FlowState::Unreplied | FlowState::Replied => match e.key.protocol {
                1 | 58 => self.timeouts[T_ECHO],
                17 | 132 => self.timeouts[T_DATAGRAM],
                _ => ns(self.config.other),
            },
        }
    }

    fn expired(&self, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_seen) >= self.timeout(e)
    }

    fn remove(&mut self, slot: u32) {
        if let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) {
            self.index.remove(&entry.key);
            self.free.push(slot);
        }
    }

    /// Judges a packet at time `now` under tables of generation `generation`. `allows(origin,
    /// port)` is the policy of the endpoint for a flow opened from `origin` to destination
    /// port `port` (the peer is the packet's). `policed`: whether a new flow's opening is
    /// judged at all (a flow to a Service address is tracked but judged later, on its
    /// backend).
    pub(crate) fn judge(
        &mut self,
        now: u64,
        generation: u64,
        seen: &Seen,
        policed: bool,
        allows: impl Fn(Origin, u16) -> bool,
    ) -> Result<(), Refusal> {
        let origin = if seen.outbound { Origin::Local } else { Origin::Remote };
        let opening_port = if seen.outbound { seen.remote.1 } else { seen.local.1 };
        let judged_alone =
            || if !policed || allows(origin, opening_port) { Ok(()) } else { Err(Refusal::Policy) };
        match seen.kind {
            Kind::Untracked => return judged_alone(),
            Kind::Error { protocol } => {
                let key = Key::new(seen.endpoint, protocol, seen.local, seen.remote);
                if self.live(&key, seen.instance, now).is_some() {
                    self.stats.related += 1;
                    return Ok(());
                }
                return judged_alone();
            }
            _ => {}
        }
        let key = Key::new(seen.endpoint, seen.protocol, seen.local, seen.remote);
        if let Some(slot) = self.live(&key, seen.instance, now) {
            let entry = self.slots[slot as usize].as_ref().expect("live slot");
            let still_allowed = entry.generation == generation
                || !entry.policed
                || allows(entry.origin, entry.opening_port());
            if still_allowed {
                let entry = self.slots[slot as usize].as_mut().expect("live slot");
                entry.generation = generation;
                entry.last_seen = now;
                advance(entry, seen);
                return Ok(());
            }
            self.remove(slot);
            self.stats.cut += 1;
        }
        judged_alone()?;
        let state = match seen.kind {
            // A reply with nothing to reply to, or a reset: passed as judged, not remembered.
            Kind::EchoReply => return Ok(()),
            Kind::Tcp { flags } if flags & TCP_RST != 0 => return Ok(()),
            Kind::Tcp { flags } if flags & (TCP_SYN | TCP_ACK) == TCP_SYN => FlowState::SynSent,
            Kind::Tcp { flags } if flags & TCP_FIN != 0 => FlowState::Closing,
            Kind::Tcp { .. } => FlowState::Established,
            _ => FlowState::Unreplied,
        };
        let entry = Entry {
            key,
            origin,
            state,
            policed,
            last_seen: now,
            generation,
            instance: seen.instance,
        };
        self.insert(entry, now)
    }

    /// The slot of `key`'s entry if it is live; an expired or outdated one is removed.
    fn live(&mut self, key: &Key, instance: u64, now: u64) -> Option<u32> {
        let slot = *self.index.get(key)?;
        let entry = self.slots[slot as usize].as_ref()?;
        if entry.instance == instance && !self.expired(entry, now) {
            return Some(slot);
        }
        self.remove(slot);
        self.stats.expired += 1;
        None
    }

    fn insert(&mut self, entry: Entry, now: u64) -> Result<(), Refusal> {
        self.sweep(now, SWEEP);
        if self.index.len() >= self.config.capacity && !self.make_room(now) {
            self.stats.full += 1;
            return Err(Refusal::Full);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(entry.key, slot);
        self.slots[slot as usize] = Some(entry);
        self.stats.created += 1;
        Ok(())
    }

    /// Frees one slot when the table is full: an expired entry among the next few, else the
    /// first of them that is not an answered, live flow.
    fn make_room(&mut self, now: u64) -> bool {
        let mut candidate = None;
        for _ in 0..ROOM_SEARCH.min(self.slots.len()) {
            self.cursor = (self.cursor + 1) % self.slots.len();
            let Some(entry) = &self.slots[self.cursor] else { continue };
            if self.expired(entry, now) {
                self.remove(self.cursor as u32);
                self.stats.expired += 1;
                return true;
            }
            if candidate.is_none() && entry.evictable() {
                candidate = Some(self.cursor as u32);
            }
        }
        match candidate {
            Some(slot) => {
                self.remove(slot);
                self.stats.evicted += 1;
                true
            }
            None => false,
        }
    }

    /// Looks at the next `n` slots and removes the expired entries among them.
    fn sweep(&mut self, now: u64, n: usize) {
        for _ in 0..n.min(self.slots.len()) {
            self.cursor = (self.cursor + 1) % self.slots.len();
            if self.slots[self.cursor].as_ref().is_some_and(|e| self.expired(e, now)) {
                self.remove(self.cursor as u32);
                self.stats.expired += 1;
            }
        }
    }

    /// Ages a few entries: call once per batch.
    pub fn age(&mut self, now: u64) {
        self.sweep(now, SWEEP);
    }

    /// The live flows at time `now`, for `show conntrack`.
    pub fn flows(&self, now: u64) -> Vec<FlowView> {
        self.slots
            .iter()
            .flatten()
            .filter(|e| !self.expired(e, now))
            .map(|e| {
                let idle_ns = now.saturating_sub(e.last_seen);
                FlowView {
                    endpoint: EndpointId(e.key.endpoint),
                    protocol: e.key.protocol,
                    local: (address(e.key.local), e.key.local_port),
                    remote: (address(e.key.remote), e.key.remote_port),
                    origin: e.origin,
                    state: e.state,
                    idle_ns,
                    expires_in_ns: self.timeout(e).saturating_sub(idle_ns),
                }
            })
            .collect()
    }

    /// Bytes the table holds per tracked flow: its index entry and its slot (hash-table
    /// control bytes and spare capacity aside).
    pub fn bytes_per_flow() -> usize {
        std::mem::size_of::<(Key, u32)>() + std::mem::size_of::<Option<Entry>>()
    }
}

/// A packet of a live flow moves its state on.
fn advance(entry: &mut Entry, seen: &Seen) {
    let reply = entry.is_reply(seen.outbound);
    entry.state = match (entry.state, seen.kind) {
        (_, Kind::Tcp { flags }) if flags & (TCP_RST | TCP_FIN) != 0 => FlowState::Closing,
        // The same ends open a new connection after the last one closed.
        (FlowState::Closing, Kind::Tcp { flags }) if flags & (TCP_SYN | TCP_ACK) == TCP_SYN => {
            FlowState::SynSent
        }
        (FlowState::SynSent, Kind::Tcp { flags }) if reply && flags & TCP_ACK != 0 => {
            FlowState::Established
        }
        (FlowState::Unreplied, _) if reply => FlowState::Replied,
        (state, _) => state,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "10.244.1.2";
    const PEER: &str = "10.244.2.5";

    fn seen(outbound: bool, local_port: u16, remote_port: u16, kind: Kind) -> Seen {
        let protocol = match kind {
            Kind::Tcp { .. } => 6,
            Kind::EchoRequest | Kind::EchoReply => 1,
            Kind::Error { .. } => 1,
            _ => 17,
        };
        Seen {
            endpoint: EndpointId(3),
            instance: 7,
            outbound,
            protocol,
            local: (POD.parse().unwrap(), local_port),
            remote: (PEER.parse().unwrap(), remote_port),
            kind,
        }
    }

    fn tcp(outbound: bool, flags: u8) -> Seen {
        if outbound {
            seen(true, 40000, 80, Kind::Tcp { flags })
        } else {
            seen(false, 40000, 80, Kind::Tcp { flags })
        }
    }

    const S: u64 = 1_000_000_000;

    /// A pod whose ingress allows nothing and whose egress allows port 80.
    fn egress_80(origin: Origin, port: u16) -> bool {
        origin == Origin::Local && port == 80
    }

    #[test]
    fn replies_to_an_allowed_connection_pass_and_nothing_else_does() {
        let mut ct = Conntrack::new(ConntrackConfig::default());
        assert_eq!(ct.judge(0, 1, &tcp(true, TCP_SYN), true, egress_80), Ok(()));
        // The SYN-ACK comes in: ingress allows nothing, but it is a reply.
        assert_eq!(ct.judge(1, 1, &tcp(false, TCP_SYN | TCP_ACK), true, egress_80), Ok(()));
        assert_eq!(ct.flows(1)[0].state, FlowState::Established);
        assert_eq!(ct.judge(2, 1, &tcp(true, TCP_ACK), true, egress_80), Ok(()));
        // The peer opening a connection of its own to the pod is not a reply.
        let other = seen(false, 22, 50000, Kind::Tcp { flags: TCP_SYN });
        assert_eq!(ct.judge(3, 1, &other, true, egress_80), Err(Refusal::Policy));
        // Nor is egress to another port.
        let elsewhere = seen(true, 40001, 443, Kind::Tcp { flags: TCP_SYN });
        assert_eq!(ct.judge(4, 1, &elsewhere, true, egress_80), Err(Refusal::Policy));
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn a_server_under_an_egress_policy_that_allows_nothing_answers_its_clients() {
        let ingress_80 = |origin: Origin, port: u16| origin == Origin::Remote && port == 80;
        let mut ct = Conntrack::new(ConntrackConfig::default());
        let syn = seen(false, 80, 51000, Kind::Tcp { flags: TCP_SYN });
        assert_eq!(ct.judge(0, 1, &syn, true, ingress_80), Ok(()));
        let syn_ack = seen(true, 80, 51000, Kind::Tcp { flags: TCP_SYN | TCP_ACK });
        assert_eq!(ct.judge(1, 1, &syn_ack, true, ingress_80), Ok(()));
        // UDP too.
        let query = seen(false, 80, 53000, Kind::Datagram);
        let answer = seen(true, 80, 53000, Kind::Datagram);
        assert_eq!(ct.judge(2, 1, &query, true, ingress_80), Ok(()));
        assert_eq!(ct.judge(3, 1, &answer, true, ingress_80), Ok(()));
        assert_eq!(ct.flows(3).iter().filter(|f| f.state == FlowState::Replied).count(), 1);
    }

    #[test]
    fn flows_expire_by_state_and_protocol() {
        let config = ConntrackConfig::default();
        let mut ct = Conntrack::new(config.clone());
        ct.judge(0, 1, &tcp(true, TCP_SYN), true, egress_80).unwrap();
        let syn_timeout = ns(config.tcp_syn);
        // The SYN's entry is gone after 60 s: the late SYN-ACK is judged alone, and refused.
        assert_eq!(
            ct.judge(syn_timeout, 1, &tcp(false, TCP_SYN | TCP_ACK), true, egress_80),
            Err(Refusal::Policy)
        );
        // Established: still there after an hour of silence.
        ct.judge(0, 1, &tcp(true, TCP_SYN), true, egress_80).unwrap();
        ct.judge(S, 1, &tcp(false, TCP_SYN | TCP_ACK), true, egress_80).unwrap();
        assert_eq!(ct.judge(3601 * S, 1, &tcp(false, TCP_ACK), true, egress_80), Ok(()));
        // A FIN: ten seconds later it is gone.
        ct.judge(3602 * S, 1, &tcp(true, TCP_FIN | TCP_ACK), true, egress_80).unwrap();
        assert_eq!(ct.flows(3602 * S)[0].state, FlowState::Closing);
        assert_eq!(
            ct.judge(3613 * S, 1, &tcp(false, TCP_ACK), true, egress_80),
            Err(Refusal::Policy)
        );
        // UDP after 60 s, echo after 30 s.
        let allow_all = |_: Origin, _: u16| true;
        ct.judge(0, 1, &seen(true, 5000, 53, Kind::Datagram), true, allow_all).unwrap();
        ct.judge(0, 1, &seen(true, 9, 9, Kind::EchoRequest), true, allow_all).unwrap();
        assert_eq!(ct.flows(29 * S).len(), 2);
        assert_eq!(ct.flows(31 * S).len(), 1);
        assert_eq!(ct.flows(61 * S).len(), 0);
    }

    #[test]
    fn a_policy_change_cuts_flows_it_no_longer_allows_and_keeps_the_others() {
        let mut ct = Conntrack::new(ConntrackConfig::default());
        ct.judge(0, 1, &tcp(true, TCP_SYN), true, egress_80).unwrap();
        ct.judge(1, 1, &tcp(false, TCP_SYN | TCP_ACK), true, egress_80).unwrap();
        // Generation 2 still allows port 80: the flow goes on.
        assert_eq!(ct.judge(2, 2, &tcp(false, TCP_ACK), true, egress_80), Ok(()));
        // Generation 3 allows nothing: the next packet either way is refused, the entry gone.
        let deny = |_: Origin, _: u16| false;
        assert_eq!(ct.judge(3, 3, &tcp(false, TCP_ACK), true, deny), Err(Refusal::Policy));
        assert_eq!(ct.stats().cut, 1);
        assert!(ct.is_empty());
        assert_eq!(ct.judge(4, 3, &tcp(true, TCP_ACK), true, deny), Err(Refusal::Policy));
    }

    #[test]
    fn a_restart_picks_up_allowed_flows_mid_stream() {
        let mut ct = Conntrack::new(ConntrackConfig::default());
        // The reply direction first: judged alone, refused.
        assert_eq!(ct.judge(0, 1, &tcp(false, TCP_ACK), true, egress_80), Err(Refusal::Policy));
        // The opening direction's next segment: allowed, tracked as established.
        assert_eq!(ct.judge(1, 1, &tcp(true, TCP_ACK), true, egress_80), Ok(()));
        assert_eq!(ct.flows(1)[0].state, FlowState::Established);
        assert_eq!(ct.judge(2, 1, &tcp(false, TCP_ACK), true, egress_80), Ok(()));
    }

    #[test]
    fn related_icmp_errors_pass_and_unrelated_ones_are_judged() {
        let deny_in = |origin: Origin, _: u16| origin == Origin::Local;
        let mut ct = Conntrack::new(ConntrackConfig::default());
        ct.judge(0, 1, &seen(true, 5000, 53, Kind::Datagram), true, deny_in).unwrap();
        // Port unreachable quoting the pod's datagram comes back.
        let error = seen(false, 5000, 53, Kind::Error { protocol: 17 });
        assert_eq!(ct.judge(1, 1, &error, true, deny_in), Ok(()));
        assert_eq!(ct.stats().related, 1);
        // One quoting a flow nobody opened is judged as port-less ingress: refused.
        let stray = seen(false, 5001, 53, Kind::Error { protocol: 17 });
        assert_eq!(ct.judge(2, 1, &stray, true, deny_in), Err(Refusal::Policy));
    }

    #[test]
    fn a_new_pod_in_the_same_slot_does_not_inherit_flows() {
        let mut ct = Conntrack::new(ConntrackConfig::default());
        ct.judge(0, 1, &tcp(true, TCP_SYN), true, egress_80).unwrap();
        let mut reply = tcp(false, TCP_SYN | TCP_ACK);
        reply.instance = 8;
        assert_eq!(ct.judge(1, 1, &reply, true, egress_80), Err(Refusal::Policy));
    }

    #[test]
    fn the_table_is_bounded_evicts_unanswered_flows_and_refuses_when_all_are_live() {
        let config = ConntrackConfig { capacity: 100, ..ConntrackConfig::default() };
        let mut ct = Conntrack::new(config);
        let allow_all = |_: Origin, _: u16| true;
        for port in 0..100 {
            ct.judge(0, 1, &seen(true, port, 53, Kind::Datagram), true, allow_all).unwrap();
        }
        // Full of unanswered flows: a new one evicts one.
        assert_eq!(ct.judge(1, 1, &seen(true, 200, 53, Kind::Datagram), true, allow_all), Ok(()));
        assert_eq!(ct.stats().evicted, 1);
        assert_eq!(ct.len(), 100);
        // Every flow answered: nothing to evict, the new flow is refused.
        for port in (0..100).chain([200]) {
            let _ = ct.judge(2, 1, &seen(false, port, 53, Kind::Datagram), true, allow_all);
        }
        let refused = ct.judge(3, 1, &seen(true, 300, 53, Kind::Datagram), true, allow_all);
        assert_eq!(refused, Err(Refusal::Full));
        assert_eq!(ct.stats().full, 1);
        // A minute later they have expired: room again, found without a full sweep.
        assert_eq!(
            ct.judge(70 * S, 1, &seen(true, 300, 53, Kind::Datagram), true, allow_all),
            Ok(())
        );
        assert!(ct.len() <= 100);
    }

    #[test]
    fn ageing_removes_expired_flows_a_few_at_a_time() {
        let mut ct = Conntrack::new(ConntrackConfig::default());
        let allow_all = |_: Origin, _: u16| true;
        for port in 0..64 {
            ct.judge(0, 1, &seen(true, port, 53, Kind::Datagram), true, allow_all).unwrap();
        }
        ct.age(61 * S);
        assert_eq!(ct.len(), 64 - SWEEP);
        for _ in 0..16 {
            ct.age(61 * S);
        }
        assert!(ct.is_empty());
        assert_eq!(ct.stats().expired, 64);
    }

    #[test]
    fn unpoliced_flows_are_tracked_without_a_judgement_and_never_cut() {
        let deny = |_: Origin, _: u16| false;
        let mut ct = Conntrack::new(ConntrackConfig::default());
        assert_eq!(
            ct.judge(0, 1, &seen(true, 40000, 80, Kind::Tcp { flags: TCP_SYN }), false, deny),
            Ok(())
        );
        let reply = seen(false, 40000, 80, Kind::Tcp { flags: TCP_SYN | TCP_ACK });
        assert_eq!(ct.judge(1, 2, &reply, true, deny), Ok(()));
    }

    #[test]
    fn addresses_come_back_as_they_went_in() {
        for a in ["10.0.0.1", "fd00::1", "::ffff:10.0.0.1"] {
            let ip: IpAddr = a.parse().unwrap();
            let back = address(bits(ip));
            // IPv4-mapped IPv6 addresses are not pod addresses; they come back as IPv4.
            assert!(back == ip || back == IpAddr::V4("10.0.0.1".parse().unwrap()), "{a}");
        }
    }
}
