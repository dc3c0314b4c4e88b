//! Smoke test of `podlane-bench tcp --quick`: every underlay and pair produced a throughput
//! run with traffic in it and a request/response run with transactions, the JSON has the
//! documented fields, the chart is drawn, nothing is left behind. It asserts no rate: those
//! are the benchmark's to report.

use std::process::Command;

use podlane_tests::{require_root, require_tool};
use testbed::{ScratchDir, binary};

#[test]
fn quick_run_measures_every_underlay_and_pair() {
    if !require_root("quick_run_measures_every_underlay_and_pair") {
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
        .arg("--svg")
        .arg(dir.path().join("tcp.svg"))
        .output()
        .expect("run podlane-bench tcp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 14, "2 underlays x 7 pairs:\n{stdout}");
    for row in rows {
        let name = format!("{} {}", row["underlay"], row["pair"]);
        assert!(["veth", "nic"].contains(&row["underlay"].as_str().unwrap()), "{name}");
        for key in ["streams", "seconds", "gbps", "retransmits", "cpu_s_per_gbit"] {
            assert!(row[key].is_number(), "{name}: {key} is {}", row[key]);
        }
        assert!(row["gbps"].as_f64().unwrap() > 0.0, "{name}: no traffic went through");
        let podlane = row["pair"].as_str().unwrap().contains("podlane");
        assert_eq!(row["pod_edge"].as_str(), podlane.then_some("tap"), "{name}");
    }
    let rr = doc["request_response"].as_array().expect("request_response");
    assert_eq!(rr.len(), 14, "one request/response run per underlay and pair:\n{stdout}");
    for row in rr {
        let name = format!("{} {}", row["underlay"], row["pair"]);
        for key in ["message_bytes", "transactions_per_s", "p50_us", "p99_us"] {
            assert!(row[key].is_number(), "{name}: {key} is {}", row[key]);
        }
        assert!(row["transactions_per_s"].as_f64().unwrap() > 0.0, "{name}: no transaction");
    }
    let svg = std::fs::read_to_string(dir.path().join("tcp.svg")).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.matches("<rect x=").count() >= 14, "{svg}");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("podlane-bench-tcp"), "namespaces left behind: {left}");
}

#[test]
fn bad_arguments_are_explained() {
    let out = Command::new(binary("podlane-bench"))
        .args(["tcp", "--pairs", "sideways"])
        .output()
        .expect("run podlane-bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kernel-kernel"), "{out:?}");
}
