//! The four rings of an AF_XDP socket, mapped from the kernel: producer and consumer sides
//! with cached indices, and reservations that publish what was written when they end. The
//! memory ordering of each index access is the kernel's contract (module doc of
//! [`super`]).

use std::marker::PhantomData;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;

use std::io;

use crate::io::sys::Mmap;

/// A slot type of a ring: UMEM addresses (fill, completion) or descriptors (RX, TX).
pub(super) trait Slot: Sized {
    const SIZE: usize;
    fn read(map: &Mmap, offset: usize) -> Self;
    fn write(self, map: &Mmap, offset: usize);
}

impl Slot for u64 {
    const SIZE: usize = 8;
    fn read(map: &Mmap, offset: usize) -> u64 {
        map.read_u64(offset)
    }
    fn write(self, map: &Mmap, offset: usize) {
        map.write_u64(offset, self)
    }
}

/// `struct xdp_desc`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Desc {
    pub(super) addr: u64,
    pub(super) len: u32,
}

impl Slot for Desc {
    const SIZE: usize = size_of::<libc::xdp_desc>();
    fn read(map: &Mmap, offset: usize) -> Desc {
        let d = map.read_desc(offset);
        Desc { addr: d.addr, len: d.len }
    }
    fn write(self, map: &Mmap, offset: usize) {
        map.write_desc(offset, libc::xdp_desc { addr: self.addr, len: self.len, options: 0 })
    }
}

/// One mapped ring and where its words are.
#[derive(Debug)]
pub(super) struct RingMap<T> {
    pub(super) map: Mmap,
    pub(super) producer: usize,
    pub(super) consumer: usize,
    pub(super) flags: usize,
    pub(super) desc: usize,
    pub(super) size: u32,
    pub(super) _slot: PhantomData<T>,
}

impl<T: Slot> RingMap<T> {
    pub(super) fn new(
        fd: BorrowedFd<'_>,
        offsets: &libc::xdp_ring_offset,
        page: u64,
        size: u32,
    ) -> io::Result<Self> {
        let len = offsets.desc as usize + size as usize * T::SIZE;
        let map = Mmap::ring(fd, page, len)?;
        Ok(RingMap {
            map,
            producer: offsets.producer as usize,
            consumer: offsets.consumer as usize,
            flags: offsets.flags as usize,
            desc: offsets.desc as usize,
            size,
            _slot: PhantomData,
        })
    }

    pub(super) fn slot(&self, index: u32) -> usize {
        self.desc + (index & (self.size - 1)) as usize * T::SIZE
    }

    pub(super) fn needs_wakeup(&self) -> bool {
        // Relaxed: the flag is a hint; a stale read costs one extra or one late system call,
        // and the kernel re-checks its own state inside that call.
        self.map.atomic_u32(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// A ring we produce into (fill, TX).
#[derive(Debug)]
pub(super) struct Producer<T> {
    pub(super) ring: RingMap<T>,
    /// Our producer index, published at the end of each reservation.
    pub(super) cached_prod: u32,
    /// The kernel's consumer index plus the ring size: we may write up to here.
    pub(super) cached_limit: u32,
}

impl<T: Slot> Producer<T> {
    pub(super) fn new(ring: RingMap<T>) -> Self {
        // At creation both indices are 0 and the ring is empty.
        let size = ring.size;
        Producer { ring, cached_prod: 0, cached_limit: size }
    }

    pub(super) fn free(&mut self, wanted: u32) -> u32 {
        let mut free = self.cached_limit.wrapping_sub(self.cached_prod);
        if free < wanted {
            // (A), with acquire where the kernel relies on a control dependency: the slots up
            // to this index are no longer read by the kernel, which released them with (D)
            // (smp_store_release in __xskq_cons_release).
            let consumer = self.ring.map.atomic_u32(self.ring.consumer).load(Ordering::Acquire);
            self.cached_limit = consumer.wrapping_add(self.ring.size);
            free = self.cached_limit.wrapping_sub(self.cached_prod);
        }
        free
    }

    /// Reserves up to `wanted` slots. Whatever is pushed is published when the reservation
    /// ends.
    pub(super) fn reserve(&mut self, wanted: u32) -> Reservation<'_, T> {
        let capacity = self.free(wanted).min(wanted);
        Reservation { producer: self, capacity, written: 0 }
    }

    /// Slots written and not yet consumed, mapped to UMEM addresses (for a closed socket).
    pub(super) fn unconsumed(&self, addr: impl Fn(T) -> u64, out: &mut Vec<u64>) {
        // Acquire: as in `free`.
        let mut i = self.ring.map.atomic_u32(self.ring.consumer).load(Ordering::Acquire);
        while i != self.cached_prod {
            out.push(addr(T::read(&self.ring.map, self.ring.slot(i))));
            i = i.wrapping_add(1);
        }
    }

    /// Slots written but not yet consumed by the kernel (after a refresh).
    pub(super) fn outstanding(&mut self) -> u32 {
        self.ring.size - self.free(self.ring.size)
    }
}

/// Slots reserved in a producer ring. `push` fills them in order; dropping the reservation
/// publishes the pushed slots with one release store.
pub(super) struct Reservation<'r, T: Slot> {
    pub(super) producer: &'r mut Producer<T>,
    pub(super) capacity: u32,
    pub(super) written: u32,
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
        let offset = self.producer.ring.slot(self.producer.cached_prod.wrapping_add(self.written));
        value.write(&self.producer.ring.map, offset);
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
        // (B): the slots written above are visible to the kernel before the index that
        // publishes them; pairs with the kernel's (C), smp_load_acquire of the producer
        // index in __xskq_cons_peek.
        producer
            .ring
            .map
            .atomic_u32(producer.ring.producer)
            .store(producer.cached_prod, Ordering::Release);
    }
}

/// A ring we consume from (RX, completion).
#[derive(Debug)]
pub(super) struct Consumer<T> {
    pub(super) ring: RingMap<T>,
    pub(super) cached_prod: u32,
    pub(super) cached_cons: u32,
}

impl<T: Slot> Consumer<T> {
    pub(super) fn new(ring: RingMap<T>) -> Self {
        Consumer { ring, cached_prod: 0, cached_cons: 0 }
    }

    /// Reads up to `max` slots into `each` and releases them to the kernel.
    pub(super) fn drain(&mut self, max: u32, mut each: impl FnMut(T)) -> u32 {
        let mut available = self.cached_prod.wrapping_sub(self.cached_cons);
        if available < max {
            // (C): pairs with the kernel's (B), smp_store_release of the producer index in
            // __xskq_prod_submit; the slots below it are written before we read them.
            self.cached_prod = self.ring.map.atomic_u32(self.ring.producer).load(Ordering::Acquire);
            available = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        let n = available.min(max);
        for i in 0..n {
            each(T::read(&self.ring.map, self.ring.slot(self.cached_cons.wrapping_add(i))));
        }
        if n > 0 {
            self.cached_cons = self.cached_cons.wrapping_add(n);
            // (D): our reads of the slots happen before the kernel may overwrite them; pairs
            // with the kernel's (A), its read of the consumer index in xskq_prod_nb_free.
            self.ring.map.atomic_u32(self.ring.consumer).store(self.cached_cons, Ordering::Release);
        }
        n
    }
}
