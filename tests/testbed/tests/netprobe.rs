//! `podlane-netprobe`, the testbed's traffic program, on the loopback of a namespace of its
//! own: a TCP transfer and a UDP exchange arrive intact over IPv4 and IPv6, with the digests
//! and counts every live test relies on; bad arguments are explained.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use testbed::Netns;

const PROBE: &str = env!("CARGO_BIN_EXE_podlane-netprobe");

/// Starts a server in `ns` and returns it once it says `ready`.
fn serve(ns: &Netns, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child =
        ns.command(PROBE).args(args).stdout(Stdio::piped()).spawn().expect("start the probe");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read ready");
    assert_eq!(line.trim(), "ready");
    (child, out)
}

fn loopback(ns: &Netns, address: &str, tcp_port: &str, udp_port: &str) {
    let (mut sink, mut sink_out) = serve(ns, &["tcp-sink", tcp_port]);
    let sent = ns.command(PROBE).args(["tcp-send", address, tcp_port, "300000"]).output().unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let sent = String::from_utf8_lossy(&sent.stdout).trim().to_owned();
    let mut received = String::new();
    sink_out.read_line(&mut received).unwrap();
    sink.wait().unwrap();
    assert!(sent.starts_with("bytes=300000 digest="), "{sent}");
    assert_eq!(sent, received.trim(), "{address}: the stream arrived intact");

    let (mut echo, _out) = serve(ns, &["udp-echo", udp_port]);
    let report = ns.command(PROBE).args(["udp-send", address, udp_port, "50"]).output().unwrap();
    echo.kill().unwrap();
    echo.wait().unwrap();
    assert_eq!(String::from_utf8_lossy(&report.stdout).trim(), "sent=50 echoed=50 intact=50");
}

#[test]
fn tcp_and_udp_over_ipv4_and_ipv6() {
    if !testbed::is_root() {
        // CI and scripts/test run as root, where the live tests need it too.
        eprintln!("\n*** SKIPPED: tcp_and_udp_over_ipv4_and_ipv6 needs root (a namespace) ***\n");
        return;
    }
    let ns = Netns::create("netprobe").unwrap();
    loopback(&ns, "127.0.0.1", "5001", "5002");
    loopback(&ns, "::1", "5003", "5004");
}

#[test]
fn bad_arguments_are_explained() {
    let out = Command::new(PROBE).args(["tcp-send", "10.0.0.300", "80", "1"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad address \"10.0.0.300\""), "{stderr}");
    let out = Command::new(PROBE).arg("fly").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("usage: podlane-netprobe"), "{stderr}");
}
