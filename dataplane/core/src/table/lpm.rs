//! Longest-prefix match for routes: a multibit trie with strides 16, 8, 8, ... and leaf pushing
//! (controlled prefix expansion, the DIR-24-8 family). An IPv4 lookup touches at most three
//! entries (16 + 8 + 8 bits); an IPv6 lookup descends only as deep as the longest prefix under
//! its first 16 bits, so pod CIDRs of /64 cost at most seven.
//!
//! Why this shape: DIR-24-8 proper needs a 2^24-entry first table (64 MiB with u32 entries) per
//! snapshot, and two snapshots live at once during a swap; a 2^16 first level costs 256 KiB and
//! one more memory access. Routes are a few thousand pod CIDRs and the local pods' host routes,
//! so the deeper chunks stay few. The structure is immutable once built: snapshots are rebuilt,
//! never patched, which is what lets the build sort prefixes by length and push leaves down
//! without tracking which entry came from which prefix.
//!
//! Keys are addresses left-aligned in a `u128` (IPv4 in the top 32 bits), see
//! [`cidr::key_of`](super::cidr::key_of). Values are `u32` below [`Lpm::MAX_VALUE`].

/// Entry encoding: 0 = no route; top bit set = index of a child chunk; else value + 1.
const CHILD: u32 = 0x8000_0000;
const ROOT_STRIDE: u32 = 16;
const STRIDE: u32 = 8;
const CHUNK: usize = 1 << STRIDE;

/// An immutable longest-prefix-match table; build it with [`LpmBuilder`].
#[derive(Clone)]
pub struct Lpm {
    root: Vec<u32>,
    chunks: Vec<u32>,
    prefixes: usize,
}

impl std::fmt::Debug for Lpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lpm")
            .field("prefixes", &self.prefixes)
            .field("chunks", &(self.chunks.len() / CHUNK))
            .finish()
    }
}

/// Collects prefixes, then builds an [`Lpm`]. A later insert of the same prefix replaces an
/// earlier one.
#[derive(Debug, Default, Clone)]
pub struct LpmBuilder {
    entries: Vec<(u128, u8, u32)>,
}

#[inline(always)]
fn bits(key: u128, start: u32, width: u32) -> usize {
    ((key << start) >> (128 - width)) as usize
}

impl LpmBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key/len` → `value`. `key` must be left-aligned with host bits zero (as
    /// [`Cidr::key`](super::Cidr::key) gives) and `value` ≤ [`Lpm::MAX_VALUE`].
    pub fn insert(&mut self, key: u128, len: u8, value: u32) {
        assert!(value <= Lpm::MAX_VALUE, "LPM value {value} out of range");
        assert!(len <= 128);
        self.entries.push((key, len, value));
    }

    pub fn build(mut self) -> Lpm {
        // Shorter prefixes first: a longer prefix then overwrites the part of a shorter one it
        // covers, and a chunk is only ever created under an entry that already holds the
        // shorter prefix's value (leaf pushing). Stable sort keeps "last insert wins".
        self.entries.sort_by_key(|&(_, len, _)| len);
        // An empty table (no IPv6 pods, say) costs nothing: lookups of an empty root miss.
        let root = if self.entries.is_empty() { Vec::new() } else { vec![0; 1 << ROOT_STRIDE] };
        let mut lpm = Lpm { root, chunks: Vec::new(), prefixes: 0 };
        let mut seen = std::collections::HashSet::new();
        for &(key, len, value) in &self.entries {
            seen.insert((key, len));
            lpm.insert(key, len, value);
        }
        lpm.prefixes = seen.len();
        lpm
    }
}

impl Lpm {
    pub const MAX_VALUE: u32 = CHILD - 2;

    /// The value of the longest prefix containing `key`.
    #[inline]
    pub fn lookup(&self, key: u128) -> Option<u32> {
        let mut entry = *self.root.get(bits(key, 0, ROOT_STRIDE))?;
        let mut start = ROOT_STRIDE;
        while entry & CHILD != 0 {
            let chunk = (entry & !CHILD) as usize * CHUNK;
            entry = self.chunks[chunk + bits(key, start, STRIDE)];
            start += STRIDE;
        }
        entry.checked_sub(1)
    }

    /// [`lookup`](Self::lookup) for a table of IPv4 keys, on 32-bit arithmetic: the same
    /// walk, since an IPv4 key's bits are the top 32 of its left-aligned form.
    #[inline]
    pub fn lookup_v4(&self, addr: u32) -> Option<u32> {
        let mut entry = *self.root.get((addr >> (32 - ROOT_STRIDE)) as usize)?;
        let mut start = ROOT_STRIDE;
        while entry & CHILD != 0 && start < 32 {
            let chunk = (entry & !CHILD) as usize * CHUNK;
            entry = self.chunks[chunk + ((addr << start) >> (32 - STRIDE)) as usize];
            start += STRIDE;
        }
        entry.checked_sub(1)
    }

    /// Number of distinct prefixes installed.
    pub fn len(&self) -> usize {
        self.prefixes
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes == 0
    }

    /// Heap bytes held by the table.
    pub fn memory_bytes(&self) -> usize {
        (self.root.capacity() + self.chunks.capacity()) * std::mem::size_of::<u32>()
    }

    fn insert(&mut self, key: u128, len: u8, value: u32) {
        let len = u32::from(len);
        let leaf = value + 1;
        // Level 0: the root table.
        if len <= ROOT_STRIDE {
            let first = bits(key, 0, ROOT_STRIDE);
            let span = 1usize << (ROOT_STRIDE - len);
            self.root[first..first + span].fill(leaf);
            return;
        }
        let index = bits(key, 0, ROOT_STRIDE);
        let mut chunk = self.child_of_root(index);
        let mut start = ROOT_STRIDE;
        loop {
            let offset = bits(key, start, STRIDE);
            if len <= start + STRIDE {
                let span = 1usize << (start + STRIDE - len);
                let base = chunk * CHUNK + offset;
                self.chunks[base..base + span].fill(leaf);
                return;
            }
            chunk = self.child_of_chunk(chunk * CHUNK + offset);
            start += STRIDE;
        }
    }

    fn new_chunk(&mut self, inherited: u32) -> usize {
        let id = self.chunks.len() / CHUNK;
        assert!(id < (CHILD - 1) as usize, "LPM chunk space exhausted");
        self.chunks.resize(self.chunks.len() + CHUNK, inherited);
        id
    }

    fn child_of_root(&mut self, index: usize) -> usize {
        let entry = self.root[index];
        if entry & CHILD != 0 {
            return (entry & !CHILD) as usize;
        }
        let id = self.new_chunk(entry);
        self.root[index] = CHILD | id as u32;
        id
    }

    fn child_of_chunk(&mut self, slot: usize) -> usize {
        let entry = self.chunks[slot];
        if entry & CHILD != 0 {
            return (entry & !CHILD) as usize;
        }
        let id = self.new_chunk(entry);
        self.chunks[slot] = CHILD | id as u32;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::cidr::{Cidr, key_of};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn build(routes: &[(&str, u32)]) -> Lpm {
        let mut b = LpmBuilder::new();
        for (cidr, value) in routes {
            let c: Cidr = cidr.parse().unwrap();
            b.insert(c.key(), c.len(), *value);
        }
        b.build()
    }

    fn v4(s: &str) -> u128 {
        key_of(s.parse().unwrap())
    }

    #[test]
    fn nested_prefixes() {
        let lpm = build(&[
            ("10.0.0.0/8", 1),
            ("10.244.0.0/16", 2),
            ("10.244.1.0/24", 3),
            ("10.244.1.64/26", 4),
            ("10.244.1.77/32", 5),
            ("0.0.0.0/0", 0),
        ]);
        assert_eq!(lpm.lookup(v4("10.244.1.77")), Some(5));
        assert_eq!(lpm.lookup(v4("10.244.1.78")), Some(4));
        assert_eq!(lpm.lookup(v4("10.244.1.1")), Some(3));
        assert_eq!(lpm.lookup(v4("10.244.9.1")), Some(2));
        assert_eq!(lpm.lookup(v4("10.9.9.9")), Some(1));
        assert_eq!(lpm.lookup(v4("192.168.0.1")), Some(0));
        assert_eq!(lpm.len(), 6);
    }

    #[test]
    fn empty_and_miss() {
        let lpm = build(&[("10.244.1.0/24", 7)]);
        assert_eq!(lpm.lookup(v4("10.244.2.1")), None);
        assert!(LpmBuilder::new().build().is_empty());
    }

    #[test]
    fn ipv6_deep() {
        let lpm = build(&[
            ("fd00:10:244::/48", 1),
            ("fd00:10:244:1::/64", 2),
            ("fd00:10:244:1::5/128", 3),
        ]);
        let k = |s: &str| key_of(s.parse().unwrap());
        assert_eq!(lpm.lookup(k("fd00:10:244:1::5")), Some(3));
        assert_eq!(lpm.lookup(k("fd00:10:244:1::6")), Some(2));
        assert_eq!(lpm.lookup(k("fd00:10:244:2::6")), Some(1));
        assert_eq!(lpm.lookup(k("fd00:10:245::1")), None);
    }

    #[test]
    fn later_insert_of_same_prefix_wins() {
        let lpm = build(&[("10.244.1.0/24", 1), ("10.244.1.0/24", 2)]);
        assert_eq!(lpm.lookup(v4("10.244.1.1")), Some(2));
        assert_eq!(lpm.len(), 1);
    }

    /// The oracle: scan every prefix, keep the longest that contains the address.
    fn oracle(routes: &[(Cidr, u32)], ip: IpAddr) -> Option<u32> {
        let mut best: Option<(u8, u32)> = None;
        for (c, v) in routes {
            if c.contains(ip) && best.is_none_or(|(len, _)| c.len() >= len) {
                best = Some((c.len(), *v));
            }
        }
        best.map(|(_, v)| v)
    }

    fn check(prefixes: Vec<(IpAddr, u8)>, probes: Vec<IpAddr>) {
        // Normalise: mask host bits; later duplicates replace earlier ones, as in the builder.
        let mut routes: Vec<(Cidr, u32)> = Vec::new();
        for (i, (addr, len)) in prefixes.into_iter().enumerate() {
            let masked = match addr {
                IpAddr::V4(a) => {
                    let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                    IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
                }
                IpAddr::V6(a) => {
                    let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
                    IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
                }
            };
            let c = Cidr::new(masked, len).unwrap();
            routes.retain(|(r, _)| *r != c);
            routes.push((c, i as u32));
        }
        let mut b = LpmBuilder::new();
        for (c, v) in &routes {
            b.insert(c.key(), c.len(), *v);
        }
        let lpm = b.build();
        // Probe the given addresses and the first and last address of every prefix.
        let mut all = probes;
        for (c, _) in &routes {
            all.push(c.addr());
            if let Some((_, end)) = c.v4_range() {
                all.push(IpAddr::V4(end.into()));
            }
            if let Some((_, end)) = c.v6_range() {
                all.push(IpAddr::V6(end.into()));
            }
        }
        for ip in all {
            assert_eq!(lpm.lookup(key_of(ip)), oracle(&routes, ip), "lookup of {ip}");
            if let IpAddr::V4(a) = ip {
                assert_eq!(lpm.lookup_v4(u32::from(a)), oracle(&routes, ip), "lookup_v4 of {ip}");
            }
        }
    }

    /// Addresses clustered in a few /8s so that random prefixes nest often.
    fn clustered_v4() -> impl Strategy<Value = IpAddr> {
        (prop::sample::select(vec![10u32, 172, 192]), any::<u32>())
            .prop_map(|(hi, lo)| IpAddr::V4(Ipv4Addr::from((hi << 24) | (lo & 0x00ff_ffff))))
    }

    fn clustered_v6() -> impl Strategy<Value = IpAddr> {
        (prop::sample::select(vec![0xfd00u128, 0x2001]), any::<u128>())
            .prop_map(|(hi, lo)| IpAddr::V6(Ipv6Addr::from((hi << 112) | (lo & (u128::MAX >> 16)))))
    }

    proptest! {
        #[test]
        fn ipv4_matches_oracle(
            prefixes in prop::collection::vec((clustered_v4(), 0u8..=32), 0..60),
            probes in prop::collection::vec(clustered_v4(), 0..60),
        ) {
            check(prefixes, probes);
        }

        #[test]
        fn ipv6_matches_oracle(
            prefixes in prop::collection::vec((clustered_v6(), 0u8..=128), 0..40),
            probes in prop::collection::vec(clustered_v6(), 0..40),
        ) {
            check(prefixes, probes);
        }
    }
}
