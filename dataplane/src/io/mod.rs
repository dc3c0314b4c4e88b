//! The dataplane's I/O: AF_XDP sockets and the XDP programs that steer frames to them. This is
//! the AF_XDP module of DESIGN.md, the one place in podlane where `unsafe` is allowed, in two
//! submodules: [`sys`] (system calls) and [`xsk`] (memory shared with the kernel). Each
//! `unsafe` block has a `SAFETY:` comment, each `unsafe fn` a `# Safety` section, and both sit
//! behind safe types that own their file descriptors and mappings.
//!
//! * [`xdp`] — XDP programs without a C toolchain: a small eBPF assembler, the two programs
//!   podlane attaches (pod interfaces, uplink), loading with bpf(2) (the verifier's log in the
//!   error) and attachment through BPF links, so a program goes away with the process that
//!   attached it, even after SIGKILL.
//! * [`xsk`] — AF_XDP sockets sharing a UMEM: rings with the kernel's memory ordering and
//!   total index arithmetic, checked chunk ownership with tokens tied to their UMEM, binding
//!   on any thread, zero-copy with a fallback to copy mode; an in-memory kernel for tests.
//! * [`netlink`] — routes and neighbours from the kernel, for underlay next-hop MACs; the
//!   host interface's link, addresses and routes.
//! * [`tun`] — the host interface: a multi-queue TUN device, one queue per worker.
//! * [`tap`] — a pod's TAP interface with virtio-net headers and offloads: the pod edge that
//!   keeps TCP super-packets whole.
//! * [`vnet`] — the virtio-net header of TAP and TUN queues.
//! * Here: interface facts (index, MAC, MTU, queue count), `poll(2)` over sockets, and the
//!   stop signals.

pub mod netlink;
// The only `unsafe` in podlane (DESIGN.md): system calls, each block with its SAFETY comment.
#[allow(unsafe_code)]
mod sys;
pub mod tap;
pub mod tun;
pub mod vnet;
pub mod xdp;
// Memory shared with the kernel: the ring protocol and chunk ownership, sound by construction.
#[allow(unsafe_code)]
pub mod xsk;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::wire::MacAddr;

/// Runs `f` inside the network namespace whose file is `netns` (`/var/run/netns/NAME`,
/// `/proc/PID/ns/net`), on a short-lived thread of its own, so that no other thread of the
/// process changes namespace. Sockets and devices `f` opens stay in that namespace.
pub fn in_network_namespace<R: Send>(
    netns: &std::path::Path,
    f: impl FnOnce() -> R + Send,
) -> io::Result<R> {
    let namespace = std::fs::File::open(netns)?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("podlane-netns".into())
            .spawn_scoped(scope, move || {
                sys::enter_network_namespace(std::os::fd::AsFd::as_fd(&namespace))?;
                Ok(f())
            })?
            .join()
            .map_err(|_| io::Error::other("the thread in the network namespace panicked"))?
    })
}

/// The interface's index in this network namespace, if it exists.
pub fn interface_index(name: &str) -> Option<u32> {
    sys::ifindex(name)
}

/// The interface's MAC address.
pub fn interface_mac(name: &str) -> io::Result<MacAddr> {
    sys::interface_mac(name).map(MacAddr)
}

/// The interface's MTU.
pub fn interface_mtu(name: &str) -> io::Result<u32> {
    sys::interface_mtu(name)
}

/// The name of the interface with this index now, `None` when it is gone.
pub fn interface_name(index: u32) -> Option<String> {
    sys::interface_name(index)
}

/// Whether the interface is up and has carrier (IFF_UP and IFF_RUNNING).
pub fn interface_running(name: &str) -> io::Result<bool> {
    let flags = sys::interface_flags(name)?;
    Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}

/// How many receive queues the interface has (ethtool channels: the larger of RX and
/// combined; 1 when the driver does not say).
pub fn interface_queues(name: &str) -> u32 {
    match sys::interface_channels(name) {
        Ok(c) => c.rx_count.max(c.combined_count).max(1),
        Err(_) => 1,
    }
}

/// The pid, uid and gid of the process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_credentials(socket: &impl std::os::fd::AsFd) -> io::Result<(i32, u32, u32)> {
    sys::peer_credentials(socket.as_fd())
}

/// The supplementary groups of the process at the other end of a Unix socket (SO_PEERGROUPS).
pub fn peer_groups(socket: &impl std::os::fd::AsFd) -> io::Result<Vec<u32>> {
    sys::peer_groups(socket.as_fd())
}

/// Runs `f` with the process's file mode creation mask set to `mask` (files and sockets it
/// creates get no bit of the mask, from their creation on), then restores it. The mask is the
/// process's: other threads creating files meanwhile get it too. Two calls at once are taken
/// one after the other: interleaved, one would restore the other's mask as its own "previous"
/// and create its file under the wrong one.
pub fn with_umask<R>(mask: u32, f: impl FnOnce() -> R) -> R {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let previous = sys::set_umask(mask);
    let result = f();
    sys::set_umask(previous);
    result
}

/// SIGINT and SIGTERM set a flag ([`stop_requested`]) instead of ending the process.
pub fn install_stop_handlers() -> io::Result<()> {
    sys::install_stop_handlers()
}

/// Whether SIGINT or SIGTERM arrived (or [`request_stop`] was called).
pub fn stop_requested() -> bool {
    sys::stop_requested()
}

/// Sets the flag [`stop_requested`] reads, as a signal would (e.g. when a controlling pipe
/// closes).
#[cfg(feature = "testing")]
pub fn request_stop() {
    sys::request_stop()
}

/// The cores the calling thread may run on (core_affinity reads its sched_getaffinity mask).
pub fn thread_affinity() -> io::Result<Vec<usize>> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .ok_or_else(|| io::Error::other("sched_getaffinity failed"))
}

/// Lets the calling thread, and every thread it starts from now on, run only on `cores`.
pub fn set_thread_affinity(cores: &[usize]) -> io::Result<()> {
    sys::set_thread_affinity(cores)
}

/// Runs the calling thread under SCHED_FIFO at `priority` (1–99), so that ordinary threads
/// and kernel threads on its core wait for it instead of taking the core for milliseconds.
/// A poll-mode thread that sleeps when idle gives the core back; one that spins would starve
/// it. Needs CAP_SYS_NICE.
pub fn set_realtime_priority(priority: u8) -> io::Result<()> {
    set_realtime_priority_inner(priority)
}

/// Lets the calling thread run only when nothing else wants its core (SCHED_IDLE): for work
/// that must never take a core from forwarding, however long it waits.
pub fn yield_to_forwarding() -> io::Result<()> {
    sys::set_idle_policy()
}

fn set_realtime_priority_inner(priority: u8) -> io::Result<()> {
    if !(1..=99).contains(&priority) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("real-time priority {priority} is outside 1-99"),
        ));
    }
    sys::set_fifo_priority(i32::from(priority)).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) { " (needs CAP_SYS_NICE)" } else { "" };
        io::Error::new(e.kind(), format!("SCHED_FIFO priority {priority}: {e}{hint}"))
    })
}

/// CPU time the calling thread has used (user and system), exact to the nanosecond, unlike
/// /proc's tick-sampled figures. podlane-bench uses it to take its generator's pacing loop out
/// of the CPU it charges to a dataplane.
#[cfg(feature = "testing")]
pub fn thread_cpu_time() -> io::Result<std::time::Duration> {
    sys::thread_cpu_ns().map(std::time::Duration::from_nanos)
}

/// What `poll(2)` reported for one descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    /// POLLERR / POLLHUP / POLLNVAL: for an AF_XDP socket, its interface went away.
    pub failed: bool,
}

/// A reusable `poll(2)` set.
#[derive(Debug, Default)]
pub struct Poller {
    fds: Vec<libc::pollfd>,
}

impl Poller {
    /// Waits up to `timeout_ms` for any of `fds` to be readable or failed; `out[i]` is
    /// `fds[i]`'s readiness. Returns how many are ready (0 on timeout or a signal).
    pub fn wait(
        &mut self,
        fds: &[BorrowedFd<'_>],
        timeout_ms: i32,
        out: &mut Vec<Readiness>,
    ) -> io::Result<usize> {
        self.fds.clear();
        self.fds.extend(fds.iter().map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let ready = sys::poll(&mut self.fds, timeout_ms)?;
        out.clear();
        out.extend(self.fds.iter().map(|p| Readiness {
            readable: p.revents & libc::POLLIN != 0,
            failed: p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
        }));
        Ok(ready)
    }
}
