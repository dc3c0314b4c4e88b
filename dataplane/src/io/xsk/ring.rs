//! The rings of an AF_XDP socket: single-producer single-consumer queues in memory shared
//! with the kernel. [`Producer`] writes through a [`Reservation`] that publishes what was
//! written when it ends; [`Consumer`] reads through a [`Batch`] that releases what was read
//! when it ends. The indices are the only shared state, and their arithmetic is total: a
//! peer that publishes an index it could not have reached (the kernel misbehaving, or a bug
//! in the in-memory kernel) is clamped to the ring's size and counted, never trusted.
//!
//! Memory ordering is the kernel's contract (net/xdp/xsk_queue.h). The producer does (A) load
//! the consumer index, write slots, (B) store-release the producer index; the consumer does
//! (C) load-acquire the producer index, read slots, (D) store-release the consumer index. (A)
//! pairs with (D): the producer does not overwrite a slot before the consumer has finished
//! reading it. (B) pairs with (C): the consumer does not read a slot before the producer has
//! written it. Each atomic access below says which it is.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::mem::{Plain, SharedMemory};

/// Where one ring's words are within its mapping (the kernel's `struct xdp_ring_offset`).
#[derive(Debug, Clone, Copy)]
pub(super) struct RingLayout {
    pub(super) producer: usize,
    pub(super) consumer: usize,
    pub(super) flags: usize,
    pub(super) desc: usize,
}

impl RingLayout {
    pub(super) fn from_kernel(offsets: &libc::xdp_ring_offset) -> RingLayout {
        RingLayout {
            producer: offsets.producer as usize,
            consumer: offsets.consumer as usize,
            flags: offsets.flags as usize,
            desc: offsets.desc as usize,
        }
    }

    /// The layout the in-memory kernel uses: each index on a cache line of its own, as the
    /// kernel lays them out.
    #[cfg(test)]
    pub(super) const IN_MEMORY: RingLayout =
        RingLayout { producer: 0, consumer: 64, flags: 128, desc: 192 };

    /// Bytes a ring of `size` slots of `T` needs.
    pub(super) fn bytes<T: Slot>(&self, size: u32) -> usize {
        self.desc + size as usize * size_of::<T::Raw>()
    }
}

/// A ring's slot type: a UMEM address (fill, completion) or a descriptor (RX, TX).
pub(super) trait Slot: Copy {
    type Raw: Plain;
    fn from_raw(raw: Self::Raw) -> Self;
    fn into_raw(self) -> Self::Raw;
}

impl Slot for u64 {
    type Raw = u64;
    fn from_raw(raw: u64) -> u64 {
        raw
    }
    fn into_raw(self) -> u64 {
        self
    }
}

/// `struct xdp_desc`: where a frame is in the UMEM, its length, and `XDP_PKT_CONTD` when the
/// frame continues in the next descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Desc {
    pub(super) addr: u64,
    pub(super) len: u32,
    pub(super) options: u32,
}

impl Slot for Desc {
    type Raw = libc::xdp_desc;
    fn from_raw(raw: libc::xdp_desc) -> Desc {
        Desc { addr: raw.addr, len: raw.len, options: raw.options }
    }
    fn into_raw(self) -> libc::xdp_desc {
        libc::xdp_desc { addr: self.addr, len: self.len, options: self.options }
    }
}

/// One ring in its mapping.
#[derive(Debug)]
pub(super) struct Ring<T> {
    memory: Arc<SharedMemory>,
    layout: RingLayout,
    size: u32,
    /// Indices from the other side that were out of range, clamped.
    anomalies: u64,
    _slot: PhantomData<T>,
}

impl<T: Slot> Ring<T> {
    /// A ring of `size` slots (a power of two) laid out as `layout` in `memory`.
    ///
    /// # Panics
    /// If `size` is not a power of two or `memory` is too small for the layout: the caller
    /// sized both.
    pub(super) fn new(memory: Arc<SharedMemory>, layout: RingLayout, size: u32) -> Ring<T> {
        assert!(size.is_power_of_two(), "ring size {size} is not a power of two");
        assert!(layout.bytes::<T>(size) <= memory.len(), "ring mapping too small");
        Ring { memory, layout, size, anomalies: 0, _slot: PhantomData }
    }

    pub(super) fn anomalies(&self) -> u64 {
        self.anomalies
    }

    fn offset(&self, index: u32) -> usize {
        self.layout.desc + (index & (self.size - 1)) as usize * size_of::<T::Raw>()
    }

    /// Whether the kernel asks to be woken (XDP_RING_NEED_WAKEUP).
    pub(super) fn needs_wakeup(&self) -> bool {
        // Relaxed: the flag is a hint; a stale read costs one extra or one late system call,
        // and the kernel re-checks its own state inside that call.
        let flags = self.memory.atomic_u32(self.layout.flags).load(Ordering::Relaxed);
        flags & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// The producing side of a ring (ours for fill and TX; the kernel's for RX and completion).
#[derive(Debug)]
pub(super) struct Producer<T> {
    ring: Ring<T>,
    /// Our producer index: published at the end of each reservation.
    cached_prod: u32,
    /// The peer's consumer index as last read.
    cached_cons: u32,
}

impl<T: Slot> Producer<T> {
    /// A producer over a fresh ring (both indices 0).
    pub(super) fn new(ring: Ring<T>) -> Self {
        Producer { ring, cached_prod: 0, cached_cons: 0 }
    }

    pub(super) fn ring(&self) -> &Ring<T> {
        &self.ring
    }

    /// Free slots, reading the peer's consumer index again when fewer than `wanted` are
    /// known to be free.
    pub(super) fn free(&mut self, wanted: u32) -> u32 {
        let size = self.ring.size;
        let mut free = size - self.in_use();
        if free < wanted {
            // (A), with acquire: the slots up to this index are no longer read by the peer,
            // which released them with (D) (the kernel's smp_store_release in
            // __xskq_cons_release).
            let consumer =
                self.ring.memory.atomic_u32(self.ring.layout.consumer).load(Ordering::Acquire);
            // The peer can only have consumed what we published: a consumer index outside
            // [cached_cons, cached_prod] is not believed.
            let consumed = consumer.wrapping_sub(self.cached_cons);
            if consumed <= self.cached_prod.wrapping_sub(self.cached_cons) {
                self.cached_cons = consumer;
            } else {
                self.ring.anomalies += 1;
            }
            free = size - self.in_use();
        }
        free
    }

    /// Slots published and not yet consumed, as last read.
    fn in_use(&self) -> u32 {
        // At most `size`: we never publish beyond cached_cons + size.
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Slots published and not yet consumed, after reading the peer's index again.
    pub(super) fn outstanding(&mut self) -> u32 {
        self.free(self.ring.size);
        self.in_use()
    }

    /// Reserves up to `wanted` free slots.
    pub(super) fn reserve(&mut self, wanted: u32) -> Reservation<'_, T> {
        let capacity = self.free(wanted).min(wanted);
        Reservation { producer: self, capacity, written: 0 }
    }
}

/// Free slots of a producer ring, written in order by [`Reservation::push`]; what was pushed
/// is published, with one release store, when the reservation ends.
#[must_use = "a reservation publishes only what is pushed into it"]
#[derive(Debug)]
pub(super) struct Reservation<'r, T: Slot> {
    producer: &'r mut Producer<T>,
    capacity: u32,
    written: u32,
}

impl<T: Slot> Reservation<'_, T> {
    pub(super) fn remaining(&self) -> u32 {
        self.capacity - self.written
    }

    /// Writes the next slot; gives the value back when the reservation is full.
    pub(super) fn push(&mut self, value: T) -> Result<(), T> {
        if self.written == self.capacity {
            return Err(value);
        }
        let producer = &mut *self.producer;
        let offset = producer.ring.offset(producer.cached_prod.wrapping_add(self.written));
        // SAFETY: the slot lies in [cached_prod, cached_cons + size): past our last published
        // index, so the peer does not read it before our release store (B), and at or after
        // the peer's released consumer index (A), so it has finished reading it.
        unsafe { producer.ring.memory.write(offset, value.into_raw()) };
        self.written += 1;
        Ok(())
    }
}

impl<T: Slot> Drop for Reservation<'_, T> {
    fn drop(&mut self) {
        if self.written == 0 {
            return;
        }
        let producer = &mut *self.producer;
        producer.cached_prod = producer.cached_prod.wrapping_add(self.written);
        // (B): the slots written above become visible to the peer before the index that
        // publishes them; pairs with the peer's (C) (the kernel's smp_load_acquire of the
        // producer index in __xskq_cons_peek).
        let index = producer.ring.memory.atomic_u32(producer.ring.layout.producer);
        index.store(producer.cached_prod, Ordering::Release);
    }
}

/// The consuming side of a ring (ours for RX and completion; the kernel's for fill and TX).
#[derive(Debug)]
pub(super) struct Consumer<T> {
    ring: Ring<T>,
    /// The peer's producer index as last read.
    cached_prod: u32,
    /// Our consumer index: released at the end of each batch.
    cached_cons: u32,
}

impl<T: Slot> Consumer<T> {
    /// A consumer over a fresh ring (both indices 0).
    pub(super) fn new(ring: Ring<T>) -> Self {
        Consumer { ring, cached_prod: 0, cached_cons: 0 }
    }

    pub(super) fn ring(&self) -> &Ring<T> {
        &self.ring
    }

    /// Slots ready to read, reading the peer's producer index again when fewer than `wanted`
    /// are known.
    fn available(&mut self, wanted: u32) -> u32 {
        let mut available = self.cached_prod.wrapping_sub(self.cached_cons);
        if available < wanted {
            // (C): pairs with the peer's (B) (the kernel's smp_store_release of the producer
            // index in __xskq_prod_submit): the slots below it are written before we read them.
            let producer =
                self.ring.memory.atomic_u32(self.ring.layout.producer).load(Ordering::Acquire);
            // The peer cannot have published more than a ring's worth past our index, nor
            // moved its index back: anything else is not believed.
            let published = producer.wrapping_sub(self.cached_cons);
            if published <= self.ring.size
                && published >= self.cached_prod.wrapping_sub(self.cached_cons)
            {
                self.cached_prod = producer;
            } else {
                self.ring.anomalies += 1;
            }
            available = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        available
    }

    /// Up to `max` slots to read; they are released to the peer when the batch ends.
    pub(super) fn batch(&mut self, max: u32) -> Batch<'_, T> {
        let len = self.available(max).min(max);
        Batch { consumer: self, len, read: 0 }
    }
}

/// Published slots of a consumer ring, read in order by iterating; every slot read is
/// released to the peer, with one release store, when the batch ends.
#[must_use = "a batch releases only the slots read from it"]
#[derive(Debug)]
pub(super) struct Batch<'c, T: Slot> {
    consumer: &'c mut Consumer<T>,
    len: u32,
    read: u32,
}

impl<T: Slot> Iterator for Batch<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.read == self.len {
            return None;
        }
        let consumer = &*self.consumer;
        let offset = consumer.ring.offset(consumer.cached_cons.wrapping_add(self.read));
        // SAFETY: the slot lies in [cached_cons, cached_prod): published by the peer with
        // its release store, which our acquire load (C) observed, and not reused by the peer
        // until our release store (D) of a consumer index past it.
        let raw = unsafe { consumer.ring.memory.read::<T::Raw>(offset) };
        self.read += 1;
        Some(T::from_raw(raw))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.len - self.read) as usize;
        (left, Some(left))
    }
}

impl<T: Slot> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        if self.read == 0 {
            return;
        }
        let consumer = &mut *self.consumer;
        consumer.cached_cons = consumer.cached_cons.wrapping_add(self.read);
        // (D): our reads of the slots happen before the peer may overwrite them; pairs with
        // the peer's (A) (the kernel's read of the consumer index in xskq_prod_nb_free).
        let index = consumer.ring.memory.atomic_u32(consumer.ring.layout.consumer);
        index.store(consumer.cached_cons, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(size: u32) -> (Producer<u64>, Consumer<u64>) {
        let layout = RingLayout::IN_MEMORY;
        let memory = Arc::new(SharedMemory::anonymous(layout.bytes::<u64>(size)).unwrap());
        let producer = Producer::new(Ring::new(memory.clone(), layout, size));
        (producer, Consumer::new(Ring::new(memory, layout, size)))
    }

    #[test]
    fn slots_pass_in_order_and_wrap() {
        let (mut p, mut c) = pair(8);
        let mut next = 0u64;
        let mut expected = 0u64;
        for round in 0..50u32 {
            let mut r = p.reserve(5);
            while r.push(next).is_ok() {
                next += 1;
            }
            drop(r);
            let take = round % 7 + 1;
            for value in c.batch(take) {
                assert_eq!(value, expected);
                expected += 1;
            }
        }
        assert!(expected > 100, "the ring wrapped many times");
        assert_eq!(p.ring().anomalies() + c.ring().anomalies(), 0);
    }

    #[test]
    fn a_full_ring_takes_nothing_more() {
        let (mut p, mut c) = pair(4);
        let mut r = p.reserve(10);
        assert_eq!(r.remaining(), 4);
        for i in 0..4 {
            r.push(i).unwrap();
        }
        assert_eq!(r.push(99), Err(99));
        drop(r);
        assert_eq!(p.reserve(1).remaining(), 0);
        assert_eq!(c.batch(2).count(), 2);
        assert_eq!(p.reserve(10).remaining(), 2);
        assert_eq!(p.outstanding(), 2);
    }

    #[test]
    fn slots_not_read_are_not_released() {
        let (mut p, mut c) = pair(4);
        let mut r = p.reserve(4);
        for i in 0..4 {
            r.push(i).unwrap();
        }
        drop(r);
        let mut batch = c.batch(4);
        assert_eq!(batch.next(), Some(0));
        drop(batch);
        // One read, one released; the next batch starts at the second slot.
        assert_eq!(p.outstanding(), 3);
        assert_eq!(c.batch(4).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn impossible_indices_from_the_peer_are_clamped_and_counted() {
        let (mut p, mut c) = pair(8);
        let memory = p.ring.memory.clone();
        let layout = p.ring.layout;
        // A producer index a whole ring and more ahead: not believed.
        memory.atomic_u32(layout.producer).store(1000, Ordering::Release);
        assert_eq!(c.batch(u32::MAX).count(), 0);
        assert_eq!(c.ring().anomalies(), 1);
        // A consumer index past what was ever published: not believed either.
        memory.atomic_u32(layout.producer).store(0, Ordering::Release);
        memory.atomic_u32(layout.consumer).store(5, Ordering::Release);
        assert_eq!(p.reserve(8).remaining(), 8);
        let mut r = p.reserve(8);
        r.push(1).unwrap();
        drop(r);
        memory.atomic_u32(layout.consumer).store(7, Ordering::Release);
        assert_eq!(p.reserve(8).remaining(), 7, "one slot still in use");
        assert!(p.ring().anomalies() >= 1);
    }
}
