//! Raw system calls: with [`super::xsk`] (memory shared with the kernel), the only `unsafe`
//! code in podlane. Everything above is safe Rust over the small, checked primitives here:
//!
//! * bpf(2): map creation, lookup and update, program load, link creation, and running a
//!   program on live frames (BPF_PROG_RUN, the packet generator of `podlane-bench`). Each call takes a
//!   `#[repr(C)]` attribute struct laid out as the kernel's `union bpf_attr` member for its
//!   command (include/uapi/linux/bpf.h); unused trailing fields are zero, which the kernel
//!   requires, and the size passed is the struct's, which the kernel accepts for any prefix
//!   of the union.
//! * AF_XDP sockets: socket, setsockopt/getsockopt of the `SOL_XDP` options, bind, the
//!   wake-up calls (sendto, recvfrom, poll).
//! * Interface queries (if_nametoindex, if_indextoname, SIOCGIFHWADDR, SIOCGIFMTU,
//!   SIOCGIFFLAGS, ETHTOOL_GCHANNELS), a
//!   NETLINK_ROUTE socket, signal handlers that set a flag, and the process's capabilities.
//! * TUN and TAP queues (TUNSETIFF, TUNSETPERSIST, TUNSETVNETHDRSZ, TUNSETOFFLOAD) and setns(2)
//!   into a pod's network namespace, where its TAP device is.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
#[cfg(feature = "testing")]
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `test` member of `union bpf_attr` (BPF_PROG_TEST_RUN, alias BPF_PROG_RUN).
#[cfg(feature = "testing")]
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md`, the XDP program's context, as BPF_PROG_RUN takes it.
#[cfg(feature = "testing")]
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// bpf(2); returns the kernel's non-negative result.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` struct matching the
    // kernel's layout for `cmd`, and the size passed is exactly its size, so the kernel reads
    // (and for some commands writes) only memory we own for the duration of the call. Any
    // pointers inside it were set by our callers to buffers that outlive this call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as u32,
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// bpf(2) for a command whose result is a new file descriptor.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let ret = bpf(cmd, attr)?;
    // SAFETY: on success these commands return a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out
        .iter_mut()
        .zip(name.bytes().filter(|b| b.is_ascii_alphanumeric() || *b == b'_').take(15))
    {
        *o = b;
    }
    out
}

/// BPF_MAP_CREATE.
pub(super) fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_name: name16(name),
        ..Default::default()
    };
    bpf_fd(BPF_MAP_CREATE, &mut attr)
}

/// BPF_MAP_UPDATE_ELEM with a u32 key and a u32 value (an XSKMAP slot ← socket fd).
pub(super) fn map_update_u32(map: &OwnedFd, key: u32, value: u32) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..Default::default()
    };
    // `key` and `value` outlive the call (bpf's SAFETY contract).
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// BPF_MAP_LOOKUP_ELEM: copies the value at `key` into `value`, whose length must be the
/// map's value size (for a per-CPU map: the value size rounded up to 8, times the number of
/// possible CPUs).
pub(super) fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    // `key` and `value` outlive the call (bpf's SAFETY contract); the kernel writes at most
    // the map's value size into `value`, which our callers size accordingly.
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(drop)
}

/// BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: runs the XDP program `repeat` times on
/// copies of `frame`, as if received on queue 0 of `ifindex` (an index in the calling
/// thread's network namespace), and carries out the verdicts for real: XDP_TX transmits on
/// that interface, XDP_REDIRECT redirects. Frames are processed `batch` at a time.
#[cfg(feature = "testing")]
pub(super) fn prog_run_live(
    prog: &OwnedFd,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    batch: u32,
) -> io::Result<()> {
    const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
    let mut ctx =
        XdpMd { data_end: frame.len() as u32, ingress_ifindex: ifindex, ..Default::default() };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: &mut ctx as *mut XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    // `frame` and `ctx` outlive the call (bpf's SAFETY contract); in live-frames mode the
    // kernel copies `frame` into its own pages and writes nothing back to us but `attr`.
    bpf(BPF_PROG_TEST_RUN, &mut attr).map(drop)
}

/// BPF_PROG_LOAD with a verifier log. On failure the error carries the log's text.
pub(super) fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    prog_flags: u32,
    insns: &[u64],
    license: &str,
    name: &str,
) -> Result<OwnedFd, (io::Error, String)> {
    let license = CString::new(license).map_err(|e| (io::Error::other(e), String::new()))?;
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_flags,
        prog_name: name16(name),
        expected_attach_type,
        ..Default::default()
    };
    // Without a log first, as libbpf does: a program that loads costs no 1 MiB buffer. Only
    // a rejected one is loaded again, with the verifier's log. `insns`, `license` and `log`
    // outlive each call (bpf_fd's SAFETY contract).
    if let Ok(fd) = bpf_fd(BPF_PROG_LOAD, &mut attr) {
        return Ok(fd);
    }
    let mut log = vec![0u8; 1 << 20];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        (e, String::from_utf8_lossy(&log[..end]).into_owned())
    })
}

/// BPF_LINK_CREATE: attaches `prog` to `ifindex`; the attachment lives as long as the link.
pub(super) fn link_create(
    prog: &OwnedFd,
    ifindex: u32,
    attach_type: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type,
        flags,
    };
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// if_nametoindex(3): `None` when there is no such interface.
pub(super) fn ifindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the function
    // only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

// ---------------------------------------------------------------------------------------------
// Mapped memory shared with the kernel: the UMEM area and the rings.

// ---------------------------------------------------------------------------------------------
// AF_XDP sockets.

/// socket(AF_XDP, SOCK_RAW).
pub(super) fn xsk_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Plain-data option values: `#[repr(C)]` structs of integers, valid for any bit pattern.
pub(super) trait SockOpt: Copy {}
impl SockOpt for u32 {}
impl SockOpt for libc::xdp_umem_reg {}
impl SockOpt for libc::xdp_mmap_offsets {}
impl SockOpt for libc::xdp_statistics {}
impl SockOpt for libc::xdp_options {}

pub(super) fn setsockopt<T: SockOpt>(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live plain-data value and the length passed is its size; the
    // kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as u32,
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// getsockopt into a zeroed `T`; also returns how many bytes the kernel wrote (older kernels
/// write shorter versions of some structs).
pub(super) fn getsockopt<T: SockOpt>(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
) -> io::Result<(T, usize)> {
    // SAFETY: `T` is plain data (SockOpt), for which all-zero bytes are a valid value.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`, which we own exclusively
    // during the call, and any bytes are a valid `T`.
    let ret = unsafe {
        libc::getsockopt(fd.as_raw_fd(), level, name, (&mut value as *mut T).cast(), &mut len)
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok((value, len as usize)) }
}

/// bind(2) of an AF_XDP socket to (interface, queue).
pub(super) fn xsk_bind(
    fd: BorrowedFd<'_>,
    ifindex: u32,
    queue: u32,
    flags: u16,
    shared_umem_fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: shared_umem_fd.map_or(0, |f| f.as_raw_fd() as u32),
    };
    // SAFETY: `addr` is a complete `sockaddr_xdp` that outlives the call; the kernel reads
    // exactly its size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_xdp).cast(),
            size_of::<libc::sockaddr_xdp>() as u32,
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// sendto(fd, NULL, 0, MSG_DONTWAIT): asks the kernel to process the TX ring (in copy mode,
/// it transmits right in this call).
pub(super) fn xsk_kick_tx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length send with no buffer and no address; the kernel reads nothing
    // from our memory.
    let ret = unsafe {
        libc::sendto(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0)
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// recvfrom(fd, NULL, 0, MSG_DONTWAIT): asks a zero-copy driver to refill from the fill ring.
pub(super) fn xsk_kick_rx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length receive with no buffer and no address; the kernel writes nothing
    // to our memory.
    let ret = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// poll(2) over `fds`; returns the number with events, 0 on timeout or EINTR.
pub(super) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is an exclusively borrowed slice of `pollfd`; the kernel writes only the
    // `revents` fields of its `len()` entries.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(err) };
    }
    Ok(ret as usize)
}

// ---------------------------------------------------------------------------------------------
// Interfaces, netlink, signals.

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: `ifreq` is plain data (a name array and a union of integers and pointers),
    // for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn interface_ioctl(request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    let sock = ioctl_socket()?;
    // SAFETY: `req` is a live, exclusively borrowed `ifreq` with a NUL-terminated name; for
    // the requests used here (SIOCGIFHWADDR, SIOCGIFMTU, SIOCGIFFLAGS, SIOCETHTOOL) the kernel reads the
    // name and writes into the union, or (ETHTOOL) follows `ifr_data` to a struct the caller
    // keeps alive for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The interface's MAC address (SIOCGIFHWADDR).
pub(super) fn interface_mac(name: &str) -> io::Result<[u8; 6]> {
    let mut req = ifreq(name)?;
    interface_ioctl(libc::SIOCGIFHWADDR, &mut req)?;
    // SAFETY: after SIOCGIFHWADDR the union holds `ifru_hwaddr`.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// The interface's MTU (SIOCGIFMTU).
pub(super) fn interface_mtu(name: &str) -> io::Result<u32> {
    let mut req = ifreq(name)?;
    interface_ioctl(libc::SIOCGIFMTU, &mut req)?;
    // SAFETY: after SIOCGIFMTU the union holds `ifru_mtu`.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// The interface's flags (SIOCGIFFLAGS): IFF_UP, IFF_RUNNING, …
pub(super) fn interface_flags(name: &str) -> io::Result<i32> {
    let mut req = ifreq(name)?;
    interface_ioctl(libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: after SIOCGIFFLAGS the union holds `ifru_flags`.
    Ok(i32::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// The name of the interface with index `index` (if_indextoname), `None` when there is none.
pub(super) fn interface_name(index: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` is a writable buffer of IF_NAMESIZE bytes, as if_indextoname requires; it
    // writes a NUL-terminated name there or returns null.
    let ret = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if ret.is_null() {
        return None;
    }
    let bytes: Vec<u8> = name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8(bytes).ok()
}

/// `struct ethtool_channels` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct EthtoolChannels {
    pub(super) cmd: u32,
    pub(super) max_rx: u32,
    pub(super) max_tx: u32,
    pub(super) max_other: u32,
    pub(super) max_combined: u32,
    pub(super) rx_count: u32,
    pub(super) tx_count: u32,
    pub(super) other_count: u32,
    pub(super) combined_count: u32,
}

/// The interface's queue counts (ETHTOOL_GCHANNELS).
pub(super) fn interface_channels(name: &str) -> io::Result<EthtoolChannels> {
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let mut channels = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    interface_ioctl(libc::SIOCETHTOOL as libc::Ioctl, &mut req)?;
    Ok(channels)
}

/// Makes `tun` (an open `/dev/net/tun`) a queue of the multi-queue TUN device `name`:
/// IFF_TUN (IP packets, no Ethernet), IFF_NO_PI (no packet-information prefix),
/// IFF_VNET_HDR (a virtio-net header before every packet; the flag is the device's, so every
/// queue attached sets it), IFF_MULTI_QUEUE (one descriptor per worker). The device is created
/// if it does not exist.
pub(super) fn tun_attach(tun: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    let flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
    req.ifr_ifru.ifru_flags = flags as i16;
    // SAFETY: `tun` is an open /dev/net/tun descriptor the caller keeps alive for the call;
    // TUNSETIFF reads the name and flags from `req`, a live, exclusively borrowed `ifreq`,
    // and writes the device's name back into it.
    let ret =
        unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut libc::ifreq) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Attaches `tap` (an open `/dev/net/tun`) to the existing TAP device `name` in the calling
/// thread's network namespace: IFF_TAP (Ethernet frames), IFF_NO_PI, IFF_VNET_HDR (a virtio-net
/// header before every frame), and IFF_MULTI_QUEUE when `multi_queue` (it must match how the
/// device was created).
pub(super) fn tap_attach(tap: BorrowedFd<'_>, name: &str, multi_queue: bool) -> io::Result<()> {
    let mut req = ifreq(name)?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    req.ifr_ifru.ifru_flags = flags as i16;
    // SAFETY: as in `tun_attach`: a live /dev/net/tun descriptor and a live, exclusively
    // borrowed `ifreq`.
    let ret =
        unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut libc::ifreq) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// TUNSETVNETHDRSZ: the length of the virtio-net header before each frame.
pub(super) fn tun_set_vnet_header_len(tun: BorrowedFd<'_>, len: i32) -> io::Result<()> {
    // SAFETY: an attached TUN/TAP queue; TUNSETVNETHDRSZ reads an `int` through the pointer,
    // which points at a live local for the duration of the call.
    let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len as *const i32) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// TUNSETOFFLOAD: which offloads (TUN_F_*) the reader takes, i.e. what the kernel may hand
/// over unsegmented or with a partial checksum.
pub(super) fn tun_set_offload(tun: BorrowedFd<'_>, offloads: u32) -> io::Result<()> {
    // SAFETY: an attached TUN/TAP queue; TUNSETOFFLOAD takes its argument by value.
    let ret =
        unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(offloads)) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// setns(2) into the network namespace `netns` (an open namespace file), for the calling
/// thread only.
pub(super) fn enter_network_namespace(netns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain system call on a descriptor the caller keeps open for the call.
    let ret = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// TUNSETPERSIST: whether the device outlives the last descriptor attached to it.
pub(super) fn tun_set_persist(tun: BorrowedFd<'_>, persist: bool) -> io::Result<()> {
    // SAFETY: `tun` is an attached TUN queue; TUNSETPERSIST takes its argument by value.
    let ret =
        unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(persist)) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A NETLINK_ROUTE socket; reads and writes go through `std::fs::File`.
/// An rtnetlink socket whose reads give up after `timeout` (`WouldBlock`), so that a kernel
/// that never answers cannot hang the thread that asked (and with it a shutdown).
pub(super) fn netlink_route_socket(timeout: std::time::Duration) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let value = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: `fd` is the open socket `socket` owns; the option value is a timeval that lives
    // across the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const value).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    STOP_REQUESTED.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM set the flag `stop_requested` reads, instead of killing the
/// process, so that the daemon can detach and close everything on its way out.
pub(super) fn install_stop_handlers() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sigaction` is plain data; zeroed is a valid empty mask and no flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SA_RESTART: other threads' system calls are not failed with EINTR because of us.
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: installs a handler that only performs an atomic store; `action` outlives
        // the call and the old action is not requested.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(super) fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::Relaxed)
}

#[cfg(feature = "testing")]
pub(super) fn request_stop() {
    STOP_REQUESTED.store(true, Ordering::Relaxed);
}

impl SockOpt for libc::ucred {}

/// The credentials of a Unix socket's peer (SO_PEERCRED): pid, uid, gid.
pub(super) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<(i32, u32, u32)> {
    let (cred, _) = getsockopt::<libc::ucred>(fd, libc::SOL_SOCKET, libc::SO_PEERCRED)?;
    Ok((cred.pid, cred.uid, cred.gid))
}

/// The supplementary groups of a Unix socket's peer (SO_PEERGROUPS, Linux 4.13).
pub(super) fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `groups`, a live buffer of that
        // many bytes we own exclusively during the call; any bytes are valid gid_t values.
        let ret = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if ret == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        // ERANGE: the buffer was too small, and `len` says how large it must be.
        if error.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(error);
        }
        groups.resize(count, 0);
    }
}

/// Sets the process's file mode creation mask; returns the previous one.
pub(super) fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask(2) only swaps an integer in the process's state; it cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// CPU time the calling thread has used, user and system, in nanoseconds
/// (CLOCK_THREAD_CPUTIME_ID: the scheduler's exact runtime, not tick samples).
#[cfg(feature = "testing")]
pub(super) fn thread_cpu_ns() -> io::Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call; the kernel writes
    // only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Lets the calling thread (and the threads it starts from now on, which inherit it) run
/// only on `cores` (sched_setaffinity).
pub(super) fn set_thread_affinity(cores: &[usize]) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cores {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no core {cpu}")));
        }
        // SAFETY: `cpu` is below CPU_SETSIZE (checked above); CPU_SET writes only into `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed, outliving the call; pid 0 names
    // the calling thread, so no other thread's affinity changes.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Puts the calling thread under SCHED_FIFO at `priority` (1–99).
pub(super) fn set_fifo_priority(priority: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `param` is a valid, initialised sched_param that outlives the call; pid 0 names
    // the calling thread, so no other thread's state is touched.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Puts the calling thread under SCHED_IDLE: it runs only when nothing else wants its core.
pub(super) fn set_idle_policy() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as for `set_fifo_priority`: a valid sched_param, and pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
