//! podlane's XDP programs on real veths in network namespaces: they pass the kernel's
//! verifier, attach natively and generically through BPF links, let the kernel's own traffic
//! through (ping), and are gone after the attaching process exits cleanly or is SIGKILLed. A
//! program the verifier rejects comes back with the verifier's log in the error.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::io::xdp::{XdpError, XdpProgram, XskMap};
use podlane_tests::require_root;
use testbed::Netns;
use testbed::link::{self, End};

/// Two namespaces joined by a veth: `up0` (192.168.77.1) in the first, `up1` (.2) in the other.
fn pair() -> (Netns, Netns) {
    let (a, b) = (Netns::create("xdpa").unwrap(), Netns::create("xdpb").unwrap());
    link::veth_pair(
        End::with_address(&a, "up0", "192.168.77.1/24"),
        End::with_address(&b, "up1", "192.168.77.2/24"),
        1,
    )
    .unwrap();
    (a, b)
}

/// Starts the probe in `ns`, waits for it to report the attachment.
fn attach(ns: &Netns, args: &[&str]) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_podlane-xdp-probe")])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start podlane-xdp-probe");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    if !line.starts_with("attached") {
        let out = child.wait_with_output().unwrap();
        panic!("probe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    child
}

fn xdp_attached(ns: &Netns, dev: &str) -> bool {
    ns.xdp_attached().unwrap().iter().any(|d| d == dev)
}

fn wait_detached(ns: &Netns, dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_attached(ns, dev) {
        assert!(
            Instant::now() < deadline,
            "XDP program still attached to {dev} after its process ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(from: &Netns, to: &str) {
    from.exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", to]).unwrap();
}

#[test]
fn uplink_program_passes_kernel_traffic_and_dies_with_its_process() {
    if !require_root("xdp_attach") {
        return;
    }
    let (a, b) = pair();
    for mode in ["native", "generic"] {
        // Clean exit: closing stdin ends the probe, which drops the link.
        let mut probe = attach(&a, &["up0", "uplink", mode, "192.168.77.1", "8472"]);
        assert!(xdp_attached(&a, "up0"), "{mode}: attached");
        ping(&b, "192.168.77.1"); // ICMP is not VXLAN: XDP_PASS, the kernel answers
        drop(probe.stdin.take());
        assert!(probe.wait().unwrap().success());
        wait_detached(&a, "up0");

        // SIGKILL: the kernel releases the link with the process.
        let mut probe = attach(&a, &["up0", "uplink", mode, "192.168.77.1", "8472"]);
        assert!(xdp_attached(&a, "up0"));
        probe.kill().unwrap();
        probe.wait().unwrap();
        wait_detached(&a, "up0");
        ping(&b, "192.168.77.1");
    }
}

#[test]
fn pod_and_ipv6_uplink_programs_load_and_pass_without_sockets() {
    if !require_root("xdp_attach") {
        return;
    }
    let (a, b) = pair();
    let mut probe = attach(&a, &["up0", "pod", "native"]);
    ping(&b, "192.168.77.1"); // no AF_XDP socket bound: the redirect falls back to XDP_PASS
    probe.kill().unwrap();
    probe.wait().unwrap();
    wait_detached(&a, "up0");
    let mut probe = attach(&a, &["up0", "uplink", "generic", "fd00:77::1", "4789"]);
    ping(&b, "192.168.77.1");
    drop(probe.stdin.take());
    probe.wait().unwrap();
    wait_detached(&a, "up0");
}

#[test]
fn verifier_rejection_carries_the_log() {
    if !require_root("xdp_attach") {
        return;
    }
    let _map = XskMap::new(1).expect("XSKMAP");
    // Reads packet data without a bounds check: the verifier must refuse it.
    let mut asm = dataplane::io::xdp::Asm::new();
    use dataplane::io::xdp::{Reg, Size};
    asm.ldx(Size::W, Reg::R2, Reg::R1, 0);
    asm.ldx(Size::B, Reg::R0, Reg::R2, 0);
    asm.exit();
    match XdpProgram::load("podlane_bad", &asm.finish()) {
        Err(XdpError::Load { log, .. }) => {
            assert!(log.contains("invalid access to packet"), "verifier log: {log}");
        }
        other => panic!("the verifier accepted an unchecked packet read: {other:?}"),
    }
}
