//! Memory shared with the kernel: the UMEM area and the four rings of each socket, as
//! mappings. This is where AF_XDP's raw memory is touched, and the accessors that could race
//! with the kernel or alias a `&mut` are `unsafe fn`s: their callers, [`super::ring`] and
//! [`super::umem`], hold the ring protocol and the chunk ownership that make each call sound.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

/// Plain data that may live in shared memory: `Copy`, `#[repr(C)]` of integers, valid for any
/// bit pattern, so a read of whatever the other side wrote is a valid value.
pub(super) trait Plain: Copy {}
impl Plain for u64 {}
impl Plain for libc::xdp_desc {}

/// A memory mapping, unmapped on drop. Bounds and alignment of every access are checked
/// (a failed check is a bug in this module, and panics).
#[derive(Debug)]
pub(super) struct SharedMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this handle alone (no Rust object aliases it; the kernel
// synchronises with us through the ring indices), so moving it to another thread is as safe as
// moving a `Vec<u8>`.
unsafe impl Send for SharedMemory {}
// SAFETY: `&SharedMemory` gives only atomics (safe to share) and the `unsafe fn` accessors,
// whose callers guarantee exclusive access to what they touch.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    fn map(len: usize, prot: i32, flags: i32, fd: i32, offset: u64) -> io::Result<SharedMemory> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let offset = i64::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mapping offset"))?;
        // SAFETY: a fresh mapping at an address the kernel chooses (NULL hint) cannot alias
        // any Rust object; on failure nothing is mapped.
        let ptr = unsafe { libc::mmap64(std::ptr::null_mut(), len, prot, flags, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(SharedMemory { ptr, len })
    }

    /// Zeroed anonymous memory (a UMEM area, or a ring of the in-memory kernel), populated up
    /// front so that the first frames do not take page faults in the kernel's copy path.
    pub(super) fn anonymous(len: usize) -> io::Result<SharedMemory> {
        SharedMemory::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    }

    /// One of an AF_XDP socket's rings, at the page offset the kernel assigns it.
    pub(super) fn ring(
        fd: BorrowedFd<'_>,
        page_offset: u64,
        len: usize,
    ) -> io::Result<SharedMemory> {
        SharedMemory::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            page_offset,
        )
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn address(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn check(&self, offset: usize, size: usize, align: usize) -> *mut u8 {
        assert!(
            offset.checked_add(size).is_some_and(|end| end <= self.len)
                && (self.ptr.as_ptr() as usize + offset) % align == 0,
            "access at {offset}+{size} outside a {}-byte mapping or misaligned",
            self.len
        );
        // SAFETY: `offset` is within the mapping (checked above), so the pointer stays inside
        // the same allocation.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// The ring index (producer, consumer or flags word) at `offset`: a word the kernel reads
    /// and writes concurrently with us, so only ever accessed atomically.
    pub(super) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        let ptr = self.check(offset, 4, 4);
        // SAFETY: in bounds and 4-aligned (checked); the mapping lives as long as the returned
        // reference (tied to `&self`), and every access to the word, ours and the kernel's, is
        // atomic.
        unsafe { &*ptr.cast::<AtomicU32>() }
    }

    /// Reads a `T` at `offset` (a ring slot).
    ///
    /// # Safety
    /// Nothing may write those bytes during the read: the ring protocol must have given the
    /// slot to the reader (the producer published it with a release store that the reader
    /// observed with an acquire load, and will not write it again until the reader releases
    /// it).
    pub(super) unsafe fn read<T: Plain>(&self, offset: usize) -> T {
        let ptr = self.check(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: in bounds and aligned (checked); no concurrent writer (caller's contract);
        // any bit pattern is a valid `T` (`Plain`). Volatile: the other side is the kernel,
        // outside the compiler's view.
        unsafe { ptr.cast::<T>().read_volatile() }
    }

    /// Writes a `T` at `offset` (a ring slot).
    ///
    /// # Safety
    /// Nothing may read or write those bytes during the write: the slot must lie between the
    /// consumer's released index and the writer's unpublished producer index, so that the
    /// other side looks at it only after the writer's release store of the producer index.
    pub(super) unsafe fn write<T: Plain>(&self, offset: usize, value: T) {
        let ptr = self.check(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: in bounds and aligned (checked); no concurrent access (caller's contract).
        unsafe { ptr.cast::<T>().write_volatile(value) }
    }

    /// The `len` bytes at `offset` (a UMEM chunk), to read and write as a slice.
    ///
    /// # Safety
    /// As long as the returned slice lives, nothing else may access those bytes: no other
    /// reference into them may exist or be created, and the kernel must not own them (the
    /// chunk is on no ring and in no driver's hands).
    #[allow(clippy::mut_from_ref)] // exclusivity is the caller's contract, as for `UnsafeCell`
    pub(super) unsafe fn bytes_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        let ptr = self.check(offset, len, 1);
        // SAFETY: in bounds (checked), inside a mapping that lives as long as the slice (tied
        // to `&self`), and exclusively the caller's meanwhile (its contract).
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `map`; no reference into it outlives
        // `self` (every accessor borrows `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
