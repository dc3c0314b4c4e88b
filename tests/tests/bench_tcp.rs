//! Smoke test of `podlane-bench tcp --quick`: every dataplane and path produced a run with
//! traffic in it, the JSON has the documented fields, nothing is left behind. It asserts no
//! rate: those are the benchmark's to report.

use std::process::Command;

use podlane_tests::{require_root, require_tool};
use testbed::{ScratchDir, binary};

#[test]
fn quick_run_measures_every_dataplane_and_path() {
    if !require_root("quick_run_measures_every_dataplane_and_path") {
        return;
    }
    if require_tool("iperf3").is_none() {
        return;
    }
    let dir = ScratchDir::new("bench-tcp").expect("scratch directory");
    let json = dir.path().join("tcp.json");
    let out = Command::new(binary("podlane-bench"))
        .args(["tcp", "--quick", "--json"])
        .arg(&json)
        .output()
        .expect("run podlane-bench tcp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 8, "2 dataplanes x 4 paths:\n{stdout}");
    for row in rows {
        let name = format!("{} {}", row["dataplane"], row["path"]);
        assert_eq!(row["underlay"], "veth");
        for key in ["streams", "seconds", "gbps", "retransmits", "cpu_s_per_gbit"] {
            assert!(row[key].is_number(), "{name}: {key} is {}", row[key]);
        }
        assert!(row["gbps"].as_f64().unwrap() > 0.0, "{name}: no traffic went through");
    }
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("podlane-bench-tcp"), "namespaces left behind: {left}");
}

#[test]
fn bad_arguments_are_explained() {
    let out = Command::new(binary("podlane-bench"))
        .args(["tcp", "--paths", "sideways"])
        .output()
        .expect("run podlane-bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host-pod"), "{out:?}");
}
