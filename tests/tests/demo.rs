//! README's first command, `podlane demo`, runs to the end as root and leaves nothing behind;
//! without root it says that it needs root and changes nothing.

use std::process::Command;

use podlane_tests::require_root;
use testbed::binary;

fn demo_namespaces() -> usize {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("podlane-demo")).count()
}

#[test]
fn podlane_demo_runs_and_cleans_up() {
    if !require_root("podlane_demo_runs_and_cleans_up") {
        return;
    }
    let out = Command::new(binary("podlane")).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "a1 → b1: 3 packets transmitted, 3 received",
        "b2 → a2: 3 packets transmitted, 3 received",
        "a1 → b1: 10 MB in",
        "b1 → a1: 10 MB in",
        "node A → a1 (as a kubelet probe): 1 MB over TCP, intact",
        "a1 → Service 10.96.0.10:80 (kube-proxy's DNAT to b1:8080 on node B): 1 MB over TCP, intact",
        "outside the cluster (masqueraded by node A): 1 MB over TCP, intact",
        "node-b              192.168.99.2",
        "ingress:default/web-ingress",
        "uplink q0",
        "done: nothing of the demo is left on this machine",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // `show config`'s line for the host interface (its column width follows the longest key).
    assert!(
        stdout.lines().any(|l| l.split_whitespace().eq(["host_interface", "podlane0"])),
        "no host_interface line in:\n{stdout}"
    );
    assert_eq!(demo_namespaces(), 0, "namespaces left behind");
}

#[test]
fn podlane_demo_without_root_says_so() {
    if !require_root("podlane_demo_without_root_says_so") {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary("podlane"))
        .arg("demo")
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("podlane demo needs root"), "{stderr}");
    assert!(stderr.contains("run it with sudo"), "{stderr}");
}
