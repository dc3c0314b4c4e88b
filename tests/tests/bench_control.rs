//! Smoke test of `podlane-bench control --quick`: pods attached and detached under a stream,
//! next hops of remote nodes resolved; the JSON has the documented fields, nothing is left
//! behind. It asserts no time: those are the benchmark's to report.

use std::process::Command;

use podlane_tests::require_root;
use testbed::{ScratchDir, binary};

#[test]
fn quick_run_attaches_detaches_and_resolves() {
    if !require_root("quick_run_attaches_detaches_and_resolves") {
        return;
    }
    let dir = ScratchDir::new("bench-control").expect("scratch directory");
    let json = dir.path().join("control.json");
    let out = Command::new(binary("podlane-bench"))
        .args(["control", "--quick", "--json"])
        .arg(&json)
        .output()
        .expect("run podlane-bench control");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    let report = &doc["report"];
    assert_eq!(report["pods"], 10);
    assert_eq!(report["nodes"], 100);
    for key in [
        "attach_seconds",
        "idle_longest_round_us",
        "attach_longest_round_us",
        "detach_seconds",
        "detach_longest_round_us",
        "stream_lost",
        "nodes_sync_seconds",
        "next_hops_seconds",
    ] {
        assert!(report[key].is_number(), "{key} is {}", report[key]);
    }
    assert!(report["stream_sent"].as_u64().unwrap() > 0, "the stream ran: {stdout}");
    assert!(report["attach_longest_round_us"].as_u64().unwrap() > 0, "rounds were measured");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("podlane-bench-ctl"), "namespaces left behind: {left}");
}
