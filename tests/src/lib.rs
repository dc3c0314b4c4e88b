//! Shared helpers for podlane's integration tests: writing frames to pcap files, and finding
//! the external decoders and tools the tests use as oracles (tshark today; real kernels in
//! network namespaces with the AF_XDP daemon).
//!
//! A test that needs a tool which is missing fails under CI (`CI` set in the environment) or
//! `scripts/test`, and otherwise skips with a loud message naming the command that installs it.

pub mod cluster;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes frames as a classic pcap file (LINKTYPE_ETHERNET, microsecond timestamps).
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(24 + frames.iter().map(|f| f.len() + 16).sum::<usize>());
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic
    out.extend_from_slice(&2u16.to_le_bytes()); // version major
    out.extend_from_slice(&4u16.to_le_bytes()); // version minor
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, frame) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes()); // seconds: the frame's index
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(frame);
    }
    std::fs::File::create(path)?.write_all(&out)
}

/// Under CI or `scripts/test` (`PODLANE_REQUIRE_TOOLS`) a test must run, never skip.
fn must_not_skip() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("PODLANE_REQUIRE_TOOLS").is_some()
}

/// The path of `tool` if it is installed. Under CI, or through `scripts/test`
/// (`PODLANE_REQUIRE_TOOLS`), a missing tool is a failure; elsewhere `None`, after a loud
/// message, so the caller can skip.
pub fn require_tool(tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => Some(path),
        None if must_not_skip() => {
            panic!("{tool} is not installed; the test command (scripts/test) installs it")
        }
        None => {
            eprintln!(
                "\n*** SKIPPED: {tool} is not installed. Run scripts/test (it installs {tool}) to run this test. ***\n"
            );
            None
        }
    }
}

/// A scratch directory removed on drop, unique per test and process.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(test: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("podlane-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs tshark on a pcap and returns one line per frame with the requested fields,
/// `|`-separated, every occurrence of a field (outer and inner headers) joined by `,`.
/// Checksum validation is switched on so that tshark reports bad checksums as such.
pub fn tshark_fields(
    tshark: &Path,
    pcap: &Path,
    decode_as: &[&str],
    fields: &[&str],
) -> Vec<String> {
    let mut cmd = Command::new(tshark);
    cmd.arg("-n").arg("-r").arg(pcap);
    for d in decode_as {
        cmd.arg("-d").arg(d);
    }
    cmd.args(["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", "-T", "fields"]);
    cmd.args(["-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]);
    for f in fields {
        cmd.arg("-e").arg(f);
    }
    let output = cmd.output().expect("run tshark");
    assert!(output.status.success(), "tshark failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .expect("tshark prints UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// True when running as root. Tests that need root (namespaces, TAP devices) call
/// [`require_root`] instead.
pub fn is_root() -> bool {
    control::netns::is_root()
}

/// Root, or a loud skip (a failure under CI or `scripts/test`).
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if must_not_skip() {
        panic!("{test} needs root (network namespaces); CI and scripts/test run as root");
    }
    eprintln!(
        "\n*** SKIPPED: {test} needs root (network namespaces). Run scripts/test as root. ***\n"
    );
    false
}

/// Runs a command, panicking with its output when it fails.
pub fn run(program: &str, args: &[&str]) {
    control::netns::run(program, args).unwrap_or_else(|e| panic!("{e:#}"));
}

/// A network namespace of this test process ([`control::netns::Netns`], which the demo uses
/// too), deleted with every device in it on drop, also when the test fails. Its methods panic
/// on failure, as a test wants.
#[derive(Debug)]
pub struct Netns(control::netns::Netns);

impl Netns {
    /// Creates `podlane-<tag>-<pid>-<n>`: unique per process and call, so tests run in parallel.
    pub fn new(tag: &str) -> Netns {
        Netns(control::netns::Netns::create(tag).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// A handle on a namespace owned elsewhere: not deleted when dropped.
    pub fn borrowed(name: &str) -> Netns {
        Netns(control::netns::Netns::borrowed(name))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    pub fn inner(&self) -> &control::netns::Netns {
        &self.0
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        self.0.ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Any command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) {
        self.0.exec(program, args).unwrap_or_else(|e| panic!("{e:#}"));
    }
}
