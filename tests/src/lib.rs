//! Shared helpers for podlane's integration tests: writing frames to pcap files, decoding them
//! with tshark, and the rule for tests that need root or a tool. The clusters the live tests
//! run on (namespaces, kernel nodes, podlane nodes, pods, traffic) come from the
//! `podlane-testbed` crate.
//!
//! A test that needs a tool which is missing fails under CI (`CI` set in the environment) or
//! `scripts/test`, and otherwise skips with a loud message naming the command that installs it.

pub mod apiserver;
pub mod cni;

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

/// The path of a program installed outside `PATH` (`/usr/lib/cni/host-local`, from Debian's
/// `package`), with the same rules as [`require_tool`].
pub fn require_program(path: &str, package: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    if path.is_file() {
        return Some(path);
    }
    if must_not_skip() {
        panic!(
            "{} is not installed; the test command (scripts/test) installs {package}",
            path.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: {} is not installed. Run scripts/test (it installs {package}) to run this test. ***\n",
        path.display()
    );
    None
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
    tshark_fields_with(tshark, pcap, decode_as, &[], fields)
}

/// [`tshark_fields`] with more preferences (`-o NAME:VALUE` each).
pub fn tshark_fields_with(
    tshark: &Path,
    pcap: &Path,
    decode_as: &[&str],
    preferences: &[&str],
    fields: &[&str],
) -> Vec<String> {
    let mut cmd = Command::new(tshark);
    cmd.arg("-n").arg("-r").arg(pcap);
    for d in decode_as {
        cmd.arg("-d").arg(d);
    }
    for p in preferences {
        cmd.arg("-o").arg(p);
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

/// Root, or a loud skip (a failure under CI or `scripts/test`).
pub fn require_root(test: &str) -> bool {
    if testbed::is_root() {
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
