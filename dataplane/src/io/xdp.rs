//! XDP programs without a C toolchain (no clang, libbpf, libxdp or bpffs): a small eBPF
//! assembler with named registers and opcodes, the two programs podlane attaches, written out
//! instruction by instruction, loading with bpf(2) and attachment through BPF links.
//!
//! * [`XdpProgram::pod`] — on a pod's host-side veth: redirect every frame to the AF_XDP
//!   socket of its receive queue (`bpf_redirect_map` on an XSKMAP), XDP_PASS when no socket is
//!   bound there.
//! * [`XdpProgram::uplink`] — on the uplink: redirect only UDP to the VXLAN port addressed to
//!   this node (IPv4 without options and not fragmented, or IPv6 with UDP as the first next
//!   header) whose VNI is ours; XDP_PASS for everything else, so SSH, ARP, kubelet, fragments
//!   and another VXLAN user's VNI on the same port keep going through the kernel. What it
//!   passes of the UDP addressed to this node over IPv4 is counted by reason
//!   ([`uplink_passed`]) in a per-CPU array the daemon reads: IP options or a header that is
//!   not plain, fragments, and VXLAN on our port with another VNI.
//!
//! The veth quirk (DESIGN.md): a veth drops frames its peer transmitted through XDP
//! (`XDP_TX`, devmap redirects) unless it runs an XDP program or has GRO on. These programs
//! only redirect into AF_XDP sockets or pass, and podlane's sockets transmit on veth in copy
//! mode, through the peer's ordinary transmit path, so no veth needs either (ARCHITECTURE.md,
//! "veth").
//!
//! The assembler is public so that `podlane-bench` can write its packet generator and sink the
//! same way; with the `testing` feature (the bench's, never the daemon's),
//! `XdpProgram::run_live` runs a program on live frames (BPF_PROG_RUN), which is how that
//! generator transmits.
//!
//! A program is attached with BPF_LINK_CREATE: the attachment is owned by the link's file
//! descriptor, so when the process exits — cleanly, by a panic or by SIGKILL — the kernel
//! detaches the program. Nothing is pinned, nothing is left behind.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::sys;

#[cfg(target_endian = "big")]
compile_error!("the eBPF encoder and the programs' field constants assume a little-endian host");

/// eBPF registers (kernel Documentation/bpf/standardization/instruction-set.rst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// Return value; helper results.
    R0 = 0,
    /// First argument; the program's context (`struct xdp_md *`) on entry.
    R1,
    R2,
    R3,
    R4,
    R5,
    /// Callee-saved: survives helper calls.
    R6,
    R7,
    R8,
    R9,
    /// Read-only frame pointer: the top of the program's 512-byte stack.
    R10,
}

/// Load and store sizes: 1, 2, 4 and 8 bytes.
#[derive(Debug, Clone, Copy)]
pub enum Size {
    B,
    H,
    W,
    DW,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::DW => 0x18,
        }
    }
}

/// Conditional jumps, against an immediate (`_imm`) or a register (`_reg`).
#[derive(Debug, Clone, Copy)]
pub enum Cond {
    Eq,
    Ne,
    /// Unsigned greater than.
    Gt,
    /// `dst & imm != 0`.
    Set,
}

/// A forward or backward jump target.
#[derive(Debug, Clone, Copy)]
pub struct Label(usize);

/// Opcode fields (include/uapi/linux/bpf.h, bpf_common.h).
mod op {
    pub(super) const LD: u8 = 0x00;
    pub(super) const LDX: u8 = 0x01;
    pub(super) const ST: u8 = 0x02;
    pub(super) const STX: u8 = 0x03;
    pub(super) const ALU: u8 = 0x04;
    pub(super) const ALU64: u8 = 0x07;
    pub(super) const JMP: u8 = 0x05;
    pub(super) const JMP32: u8 = 0x06;
    pub(super) const MEM: u8 = 0x60;
    pub(super) const IMM: u8 = 0x00;
    pub(super) const DW: u8 = 0x18;
    pub(super) const K: u8 = 0x00;
    pub(super) const X: u8 = 0x08;
    pub(super) const ADD: u8 = 0x00;
    pub(super) const AND: u8 = 0x50;
    pub(super) const SUB: u8 = 0x10;
    pub(super) const MOD: u8 = 0x90;
    pub(super) const MOV: u8 = 0xb0;
    /// Byte swap; with `X` (BPF_TO_BE) to big-endian.
    pub(super) const END: u8 = 0xd0;
    pub(super) const JA: u8 = 0x00;
    pub(super) const JEQ: u8 = 0x10;
    pub(super) const JGT: u8 = 0x20;
    pub(super) const JSET: u8 = 0x40;
    pub(super) const JNE: u8 = 0x50;
    pub(super) const CALL: u8 = 0x80;
    pub(super) const EXIT: u8 = 0x90;
    /// `src_reg` of a 64-bit immediate load that holds a map file descriptor.
    pub(super) const PSEUDO_MAP_FD: u8 = 1;
}

/// Helper function ids (include/uapi/linux/bpf.h, `___BPF_FUNC_MAPPER`).
pub mod helper {
    /// `void *bpf_map_lookup_elem(map, key)`
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    /// `u64 bpf_ktime_get_ns(void)`: CLOCK_MONOTONIC.
    pub const KTIME_GET_NS: i32 = 5;
    /// `u32 bpf_get_prandom_u32(void)`
    pub const GET_PRANDOM_U32: i32 = 7;
    /// `long bpf_redirect_map(map, key, flags)`
    pub const REDIRECT_MAP: i32 = 51;
}
use helper::REDIRECT_MAP as HELPER_REDIRECT_MAP;

/// XDP actions (a program's return value).
pub mod action {
    pub const ABORTED: i32 = 0;
    pub const DROP: i32 = 1;
    pub const PASS: i32 = 2;
    pub const TX: i32 = 3;
}
use action::PASS as XDP_PASS;
/// `struct xdp_md` field offsets.
pub const MD_DATA: i16 = 0;
pub const MD_DATA_END: i16 = 4;
pub const MD_RX_QUEUE_INDEX: i16 = 16;

/// Why the uplink program passed UDP addressed to this node to the kernel: the indices of its
/// counters ([`XdpProgram::uplink`]'s `passed`).
pub mod uplink_passed {
    /// An IPv4 header with options, or a version/length byte other than 0x45.
    pub const IP_OPTIONS: u32 = 0;
    /// A fragment (the first or a later one): the kernel reassembles it, whatever service it
    /// is for.
    pub const FRAGMENT: u32 = 1;
    /// VXLAN on our port with a VNI that is not ours (another vxlan device's).
    pub const OTHER_VNI: u32 = 2;
    pub const COUNT: u32 = 3;
    /// Labels, by index. Over an IPv6 underlay only `other_vni` is counted.
    pub const LABELS: [&str; COUNT as usize] = ["ip_options", "fragment", "other_vni"];
}

/// An eBPF program under construction: instructions as the kernel's 8-byte `struct bpf_insn`
/// (code, dst/src registers, 16-bit offset, 32-bit immediate), and labels resolved when done.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<u64>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

fn encode(code: u8, dst: Reg, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst as u8 | (src << 4)) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `label` at the next instruction.
    pub fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.insns.len());
    }

    /// `dst = *(size *)(src + off)`
    pub fn ldx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.insns.push(encode(op::LDX | op::MEM | size.bits(), dst, src as u8, off, 0));
    }

    /// `*(size *)(dst + off) = src`
    pub fn stx(&mut self, size: Size, dst: Reg, off: i16, src: Reg) {
        self.insns.push(encode(op::STX | op::MEM | size.bits(), dst, src as u8, off, 0));
    }

    /// `*(size *)(dst + off) = imm`
    pub fn st_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) {
        self.insns.push(encode(op::ST | op::MEM | size.bits(), dst, 0, off, imm));
    }

    /// `dst += src`
    pub fn add_reg(&mut self, dst: Reg, src: Reg) {
        self.insns.push(encode(op::ALU64 | op::ADD | op::X, dst, src as u8, 0, 0));
    }

    /// `dst -= src`
    pub fn sub_reg(&mut self, dst: Reg, src: Reg) {
        self.insns.push(encode(op::ALU64 | op::SUB | op::X, dst, src as u8, 0, 0));
    }

    /// `dst = (u32)dst % (u32)imm`; `imm` must not be zero.
    pub fn mod32_imm(&mut self, dst: Reg, imm: u32) {
        assert!(imm != 0, "modulo by zero");
        self.insns.push(encode(op::ALU | op::MOD | op::K, dst, 0, 0, imm as i32));
    }

    /// `dst = htobe16(dst)`: the low 16 bits in network order, the rest zero.
    pub fn to_be16(&mut self, dst: Reg) {
        self.insns.push(encode(op::ALU | op::END | op::X, dst, 0, 0, 16));
    }

    /// `dst = imm` (64-bit, sign-extended)
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) {
        self.insns.push(encode(op::ALU64 | op::MOV | op::K, dst, 0, 0, imm));
    }

    /// `dst = src`
    pub fn mov_reg(&mut self, dst: Reg, src: Reg) {
        self.insns.push(encode(op::ALU64 | op::MOV | op::X, dst, src as u8, 0, 0));
    }

    /// `dst += imm`
    pub fn add_imm(&mut self, dst: Reg, imm: i32) {
        self.insns.push(encode(op::ALU64 | op::ADD | op::K, dst, 0, 0, imm));
    }

    /// `dst = (u32)(dst & imm)`.
    pub fn and32_imm(&mut self, dst: Reg, imm: u32) {
        self.insns.push(encode(op::ALU | op::AND | op::K, dst, 0, 0, imm as i32));
    }

    /// `dst = map` (a 64-bit immediate load the kernel rewrites into the map's address).
    pub fn ld_map(&mut self, dst: Reg, map: &impl AsFd) {
        let fd = map.as_fd().as_raw_fd();
        self.insns.push(encode(op::LD | op::IMM | op::DW, dst, op::PSEUDO_MAP_FD, 0, fd));
        self.insns.push(0);
    }

    fn jump(&mut self, code: u8, dst: Reg, src: u8, imm: i32, target: Label) {
        self.fixups.push((self.insns.len(), target));
        self.insns.push(encode(code, dst, src, 0, imm));
    }

    fn cond(cond: Cond) -> u8 {
        match cond {
            Cond::Eq => op::JEQ,
            Cond::Ne => op::JNE,
            Cond::Gt => op::JGT,
            Cond::Set => op::JSET,
        }
    }

    /// `if dst <cond> imm goto target` (64-bit compare, imm sign-extended)
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) {
        self.jump(op::JMP | Self::cond(cond) | op::K, dst, 0, imm, target);
    }

    /// `if (u32)dst <cond> (u32)imm goto target`
    pub fn jmp32_imm(&mut self, cond: Cond, dst: Reg, imm: u32, target: Label) {
        self.jump(op::JMP32 | Self::cond(cond) | op::K, dst, 0, imm as i32, target);
    }

    /// `if dst <cond> src goto target`
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, target: Label) {
        self.jump(op::JMP | Self::cond(cond) | op::X, dst, src as u8, 0, target);
    }

    /// `goto target`
    pub fn ja(&mut self, target: Label) {
        self.jump(op::JMP | op::JA, Reg::R0, 0, 0, target);
    }

    /// `r0 = helper(r1, ..., r5)`
    pub fn call(&mut self, helper: i32) {
        self.insns.push(encode(op::JMP | op::CALL, Reg::R0, 0, 0, helper));
    }

    pub fn exit(&mut self) {
        self.insns.push(encode(op::JMP | op::EXIT, Reg::R0, 0, 0, 0));
    }

    /// The instructions with every jump resolved. Panics on an unbound label (a bug in the
    /// program text, not an input).
    pub fn finish(mut self) -> Vec<u64> {
        for &(at, label) in &self.fixups {
            let target = self.labels[label.0].expect("every label is bound");
            let off = (target as i64 - at as i64 - 1) as i16;
            self.insns[at] = (self.insns[at] & !0xffff_0000) | (u64::from(off as u16) << 16);
        }
        self.insns
    }
}

/// Why an XDP step failed; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("creating the XSKMAP: {0} (needs root or CAP_BPF)")]
    MapCreate(#[source] std::io::Error),
    #[error("creating BPF map {name}: {source} (needs root or CAP_BPF)")]
    ArrayCreate { name: &'static str, source: std::io::Error },
    #[error("reading BPF map {name}: {source}")]
    MapLookup { name: &'static str, source: std::io::Error },
    #[error("running XDP program {program} on live frames on interface index {ifindex}: {source}")]
    Run { program: &'static str, ifindex: u32, source: std::io::Error },
    #[error("loading XDP program {program}: {source}\nverifier log:\n{log}")]
    Load { program: &'static str, source: std::io::Error, log: String },
    #[error("adding the socket of queue {queue} to the XSKMAP: {source}")]
    MapUpdate { queue: u32, source: std::io::Error },
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    #[error("attaching XDP program {program} to {interface} in {mode:?} mode: {source}")]
    Attach { program: &'static str, interface: String, mode: XdpMode, source: std::io::Error },
}

/// Where the program runs: in the driver (native), or after the kernel built an skb (generic,
/// works everywhere, slower).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
}

/// An XSKMAP: receive queue index → AF_XDP socket.
#[derive(Debug)]
pub struct XskMap {
    fd: OwnedFd,
}

impl XskMap {
    /// A map for `queues` receive queues.
    pub fn new(queues: u32) -> Result<XskMap, XdpError> {
        const BPF_MAP_TYPE_XSKMAP: u32 = 17;
        let fd = sys::map_create(BPF_MAP_TYPE_XSKMAP, 4, 4, queues.max(1), "podlane_xsks")
            .map_err(XdpError::MapCreate)?;
        Ok(XskMap { fd })
    }

    /// Points the map's slot for receive queue `queue` at `socket`; frames the program
    /// redirects there go to that socket from now on.
    pub fn insert(&self, queue: u32, socket: &super::xsk::XskSocket) -> Result<(), XdpError> {
        let Some(fd) = socket.fd() else {
            let source =
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a kernel socket");
            return Err(XdpError::MapUpdate { queue, source });
        };
        sys::map_update_u32(&self.fd, queue, fd.as_raw_fd() as u32)
            .map_err(|source| XdpError::MapUpdate { queue, source })
    }
}

impl AsFd for XskMap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A per-CPU array of `u64` values (BPF_MAP_TYPE_PERCPU_ARRAY): a program updates its own
/// CPU's copy without atomics; userspace reads the sum over CPUs.
#[derive(Debug)]
pub struct PerCpuArray {
    fd: OwnedFd,
    name: &'static str,
    entries: u32,
    cpus: usize,
}

impl PerCpuArray {
    pub fn new(name: &'static str, entries: u32) -> Result<PerCpuArray, XdpError> {
        const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
        let fd = sys::map_create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, entries.max(1), name)
            .map_err(|source| XdpError::ArrayCreate { name, source })?;
        Ok(PerCpuArray { fd, name, entries: entries.max(1), cpus: possible_cpus() })
    }

    /// The sum over CPUs of the value at `index`.
    pub fn sum(&self, index: u32) -> Result<u64, XdpError> {
        if index >= self.entries {
            return Ok(0);
        }
        let mut values = vec![0u8; 8 * self.cpus];
        sys::map_lookup(&self.fd, &index.to_ne_bytes(), &mut values)
            .map_err(|source| XdpError::MapLookup { name: self.name, source })?;
        Ok(values.chunks_exact(8).map(|v| u64::from_ne_bytes(v.try_into().unwrap_or([0; 8]))).sum())
    }
}

impl AsFd for PerCpuArray {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. "0-3"): the number
/// of copies a per-CPU map holds.
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let highest = text
        .trim()
        .split(',')
        .filter_map(|range| range.rsplit('-').next()?.parse::<usize>().ok())
        .max();
    highest.map_or_else(|| std::thread::available_parallelism().map_or(1, usize::from), |h| h + 1)
}

/// A loaded XDP program (it holds a reference to its map).
#[derive(Debug)]
pub struct XdpProgram {
    fd: OwnedFd,
    name: &'static str,
}

/// Ends every program: redirect to the socket of this receive queue, or pass when none.
fn redirect_to_queue_socket(asm: &mut Asm, ctx: Reg, map: &XskMap) {
    asm.ldx(Size::W, Reg::R2, ctx, MD_RX_QUEUE_INDEX);
    asm.ld_map(Reg::R1, map);
    // The flags' low bits are the action when the map has no socket at that index.
    asm.mov_imm(Reg::R3, XDP_PASS);
    asm.call(HELPER_REDIRECT_MAP);
    asm.exit();
}

impl XdpProgram {
    /// The pod-interface program (module doc). `frags`: it handles frames in several
    /// buffers (an interface whose MTU is beyond a page; see [`XdpProgram::load_with`]).
    pub fn pod(map: &XskMap, frags: bool) -> Result<XdpProgram, XdpError> {
        let mut asm = Asm::new();
        redirect_to_queue_socket(&mut asm, Reg::R1, map);
        XdpProgram::load_with("podlane_pod", &asm.finish(), frags)
    }

    /// The uplink program (module doc) for a node with underlay address `node`, VXLAN
    /// destination port `port` and VNI `vni`, counting what it passes in `passed` (at least
    /// [`uplink_passed::COUNT`] entries); `frags` as for [`XdpProgram::pod`].
    pub fn uplink(
        map: &XskMap,
        passed: &PerCpuArray,
        node: IpAddr,
        port: u16,
        vni: u32,
        frags: bool,
    ) -> Result<XdpProgram, XdpError> {
        let insns = uplink_program(map, passed, node, port, vni);
        XdpProgram::load_with("podlane_uplink", &insns, frags)
    }

    /// Loads any XDP program given as instructions; a rejection carries the verifier's log.
    pub fn load(name: &'static str, insns: &[u64]) -> Result<XdpProgram, XdpError> {
        XdpProgram::load_with(name, insns, false)
    }

    /// Loads an XDP program; with `frags` (BPF_F_XDP_HAS_FRAGS) it may be attached where a
    /// frame spans several buffers (jumbo frames on veth and most drivers). Both programs
    /// look only at headers in the first buffer, so they are the same either way.
    pub fn load_with(
        name: &'static str,
        insns: &[u64],
        frags: bool,
    ) -> Result<XdpProgram, XdpError> {
        const BPF_PROG_TYPE_XDP: u32 = 6;
        const BPF_XDP: u32 = 37;
        const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
        let flags = if frags { BPF_F_XDP_HAS_FRAGS } else { 0 };
        let fd = sys::prog_load(BPF_PROG_TYPE_XDP, BPF_XDP, flags, insns, "Dual MIT/GPL", name)
            .map_err(|(source, log)| XdpError::Load { program: name, source, log })?;
        Ok(XdpProgram { fd, name })
    }

    /// Runs the program `repeat` times on copies of `frame` as if they arrived on
    /// `interface` (queue 0) and carries out its verdicts for real (BPF_PROG_RUN with
    /// BPF_F_TEST_XDP_LIVE_FRAMES): an XDP_TX program transmits them there. `batch` frames are
    /// processed per batch (at most 256). Keep the same program attached to the interface:
    /// then a call does not wait for an RCU grace period (DESIGN.md).
    #[cfg(feature = "testing")]
    pub fn run_live(
        &self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
        batch: u32,
    ) -> Result<(), XdpError> {
        sys::prog_run_live(&self.fd, frame, ifindex, repeat, batch)
            .map_err(|source| XdpError::Run { program: self.name, ifindex, source })
    }

    /// Attaches the program to `interface` through a BPF link. Dropping the link, or the
    /// process ending in any way, detaches it.
    pub fn attach(&self, interface: &str, mode: XdpMode) -> Result<XdpLink, XdpError> {
        const BPF_XDP: u32 = 37;
        const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
        const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
        let ifindex = sys::ifindex(interface)
            .ok_or_else(|| XdpError::NoSuchInterface(interface.to_owned()))?;
        let flags = match mode {
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
        };
        let fd = sys::link_create(&self.fd, ifindex, BPF_XDP, flags).map_err(|source| {
            XdpError::Attach { program: self.name, interface: interface.to_owned(), mode, source }
        })?;
        Ok(XdpLink { _fd: fd, interface: interface.to_owned(), mode })
    }
}

/// An attached program; the attachment ends when this is dropped.
#[derive(Debug)]
pub struct XdpLink {
    _fd: OwnedFd,
    interface: String,
    mode: XdpMode,
}

impl XdpLink {
    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn mode(&self) -> XdpMode {
        self.mode
    }
}

/// A network-order value as the program sees it after a little-endian load.
fn le16(network: u16) -> i32 {
    i32::from(u16::from_le_bytes(network.to_be_bytes()))
}

/// The uplink program's instructions.
fn uplink_program(
    map: &XskMap,
    passed: &PerCpuArray,
    node: IpAddr,
    port: u16,
    vni: u32,
) -> Vec<u64> {
    let mut asm = Asm::new();
    let pass = asm.label();
    let redirect = asm.label();
    let (with_options, fragment, other_vni) = (asm.label(), asm.label(), asm.label());
    // Where the VXLAN header starts: after Ethernet, the IP header and UDP.
    let vxlan: i16 = match node {
        IpAddr::V4(_) => 42,
        IpAddr::V6(_) => 62,
    };
    // r6 = ctx (callee-saved across the helper call); r2 = data; r3 = data_end.
    asm.mov_reg(Reg::R6, Reg::R1);
    asm.ldx(Size::W, Reg::R2, Reg::R6, MD_DATA);
    asm.ldx(Size::W, Reg::R3, Reg::R6, MD_DATA_END);
    match node {
        IpAddr::V4(addr) => {
            // Ethernet 14 + IPv4 without options 20 + UDP 8 = 42 bytes must be present; the
            // verifier allows the reads below only after this comparison.
            asm.mov_reg(Reg::R4, Reg::R2);
            asm.add_imm(Reg::R4, 42);
            asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, pass);
            asm.ldx(Size::H, Reg::R5, Reg::R2, 12); // EtherType
            asm.jmp_imm(Cond::Ne, Reg::R5, le16(0x0800), pass);
            // Protocol and destination sit where they are whatever the header's length.
            asm.ldx(Size::B, Reg::R5, Reg::R2, 23); // protocol
            asm.jmp_imm(Cond::Ne, Reg::R5, 17, pass);
            asm.ldx(Size::W, Reg::R5, Reg::R2, 30); // destination address
            asm.jmp32_imm(Cond::Ne, Reg::R5, u32::from_le_bytes(addr.octets()), pass);
            // UDP to this node from here on: what the kernel gets of it is counted.
            asm.ldx(Size::B, Reg::R5, Reg::R2, 14); // version 4, IHL 5: no options
            asm.jmp_imm(Cond::Ne, Reg::R5, 0x45, with_options);
            asm.ldx(Size::H, Reg::R5, Reg::R2, 20); // flags + fragment offset: MF or offset
            asm.jmp_imm(Cond::Set, Reg::R5, le16(0x3fff), fragment);
            asm.ldx(Size::H, Reg::R5, Reg::R2, 36); // UDP destination port
            asm.jmp_imm(Cond::Ne, Reg::R5, le16(port), pass);
        }
        IpAddr::V6(addr) => {
            // Ethernet 14 + IPv6 40 + UDP 8 = 62 bytes.
            asm.mov_reg(Reg::R4, Reg::R2);
            asm.add_imm(Reg::R4, 62);
            asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, pass);
            asm.ldx(Size::H, Reg::R5, Reg::R2, 12);
            asm.jmp_imm(Cond::Ne, Reg::R5, le16(0x86dd), pass);
            asm.ldx(Size::B, Reg::R5, Reg::R2, 20); // next header: UDP directly
            asm.jmp_imm(Cond::Ne, Reg::R5, 17, pass);
            for (i, word) in addr.octets().chunks_exact(4).enumerate() {
                asm.ldx(Size::W, Reg::R5, Reg::R2, 38 + 4 * i as i16);
                asm.jmp32_imm(
                    Cond::Ne,
                    Reg::R5,
                    u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
                    pass,
                );
            }
            asm.ldx(Size::H, Reg::R5, Reg::R2, 56);
            asm.jmp_imm(Cond::Ne, Reg::R5, le16(port), pass);
        }
    }
    // Another VNI on our port is another VXLAN user's (a kernel vxlan device with that VNI):
    // the kernel's. A header too short to tell goes to the pipeline, which counts it.
    asm.mov_reg(Reg::R4, Reg::R2);
    asm.add_imm(Reg::R4, i32::from(vxlan) + 8);
    asm.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, redirect);
    asm.ldx(Size::W, Reg::R5, Reg::R2, vxlan + 4); // VNI (3 bytes, network order), reserved
    asm.and32_imm(Reg::R5, 0x00ff_ffff);
    let vni = vni.to_be_bytes();
    asm.jmp32_imm(Cond::Ne, Reg::R5, u32::from_le_bytes([vni[1], vni[2], vni[3], 0]), other_vni);
    asm.bind(redirect);
    redirect_to_queue_socket(&mut asm, Reg::R6, map);
    // Counted passes: this CPU's counter at the reason's index, plus one (a per-CPU value:
    // no other CPU writes it). Only blocks something jumps to: the verifier refuses a program
    // with unreachable instructions, and the IPv6 path counts only another VNI.
    let mut counted = vec![(other_vni, uplink_passed::OTHER_VNI)];
    if node.is_ipv4() {
        counted.extend([
            (with_options, uplink_passed::IP_OPTIONS),
            (fragment, uplink_passed::FRAGMENT),
        ]);
    }
    for (label, reason) in counted {
        asm.bind(label);
        asm.st_imm(Size::W, Reg::R10, -4, reason as i32);
        asm.mov_reg(Reg::R2, Reg::R10);
        asm.add_imm(Reg::R2, -4);
        asm.ld_map(Reg::R1, passed);
        asm.call(helper::MAP_LOOKUP_ELEM);
        asm.jmp_imm(Cond::Eq, Reg::R0, 0, pass);
        asm.ldx(Size::DW, Reg::R1, Reg::R0, 0);
        asm.add_imm(Reg::R1, 1);
        asm.stx(Size::DW, Reg::R0, 0, Reg::R1);
        asm.ja(pass);
    }
    asm.bind(pass);
    asm.mov_imm(Reg::R0, XDP_PASS);
    asm.exit();
    asm.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodings checked against the kernel's instruction-set document.
    #[test]
    fn encodes_instructions() {
        let mut asm = Asm::new();
        asm.mov_imm(Reg::R0, 2); // b7 00 0000 02000000
        asm.ldx(Size::W, Reg::R2, Reg::R1, 16); // 61 12 1000 00000000
        asm.exit(); // 95 00 0000 00000000
        assert_eq!(asm.finish(), vec![0x0000_0002_0000_00b7, 0x0000_0000_0010_1261, 0x95]);
    }

    #[test]
    fn resolves_jumps_both_ways() {
        let mut asm = Asm::new();
        let (top, end) = (asm.label(), asm.label());
        asm.bind(top);
        asm.jmp_imm(Cond::Eq, Reg::R1, 0, end); // 0: forward over 1 instruction
        asm.ja(top); // 1: back to 0
        asm.bind(end);
        asm.exit(); // 2
        let insns = asm.finish();
        assert_eq!((insns[0] >> 16) as u16 as i16, 1);
        assert_eq!((insns[1] >> 16) as u16 as i16, -2);
        assert_eq!(insns[0] & 0xff, 0x15, "JMP | JEQ | K");
    }

    #[test]
    fn network_order_constants() {
        assert_eq!(le16(0x0800), 0x0008);
        assert_eq!(le16(8472), 0x1821);
    }
}
