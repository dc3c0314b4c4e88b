//! The dataplane's I/O: AF_XDP sockets and the XDP programs that steer frames to them. This is
//! the one place in podlane where `unsafe` is allowed (DESIGN.md): every system call and raw
//! memory access lives in [`sys`], each `unsafe` block with a `SAFETY:` comment, behind safe
//! types that own their file descriptors.
//!
//! * [`xdp`] — XDP programs without a C toolchain: a small eBPF assembler, the two programs
//!   podlane attaches (pod interfaces, uplink), loading with bpf(2) (the verifier's log in the
//!   error) and attachment through BPF links, so a program goes away with the process that
//!   attached it, even after SIGKILL.
//! * AF_XDP sockets (UMEM, rings) come next.

// The only `unsafe` in podlane (DESIGN.md): system calls, each block with its SAFETY comment.
#[allow(unsafe_code)]
mod sys;
pub mod xdp;
