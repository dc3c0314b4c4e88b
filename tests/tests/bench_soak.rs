//! Smoke test of `podlane-bench soak --quick` (issue 15): 20 s of three flows, table churn on
//! node A and node B's dataplane restarted half-way. The JSON has the documented fields; the
//! flows node B's restart does not touch lose nothing; the churn was acknowledged; nothing is
//! left behind. It asserts no time: that is the benchmark's to report.

use std::process::Command;

use podlane_tests::require_root;
use testbed::{ScratchDir, binary};

#[test]
fn quick_soak_keeps_untouched_flows_whole() {
    if !require_root("quick_soak_keeps_untouched_flows_whole") {
        return;
    }
    let dir = ScratchDir::new("bench-soak").expect("scratch directory");
    let json = dir.path().join("soak.json");
    let out = Command::new(binary("podlane-bench"))
        .args(["soak", "--quick", "--json"])
        .arg(&json)
        .output()
        .expect("run podlane-bench soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    let report = &doc["report"];
    for key in ["seconds", "updates_acked", "updates_refused", "restart_resync_seconds", "samples"]
    {
        assert!(report[key].is_number(), "{key} is {}", report[key]);
    }
    assert!(report["updates_acked"].as_u64().unwrap() > 0, "the churn ran: {stdout}");
    assert_eq!(report["updates_refused"], 0, "{stdout}");
    let flows = report["flows"].as_array().expect("flows");
    assert_eq!(flows.len(), 3);
    for flow in flows {
        assert!(flow["sent"].as_u64().unwrap() > 0, "{flow}");
        if flow["untouched"] == true {
            assert_eq!(
                flow["lost"], 0,
                "a flow the restart does not touch lost datagrams\n{stdout}"
            );
        }
    }
    let usage = report["usage"].as_array().expect("usage");
    assert_eq!(usage.len(), 4, "both dataplanes and both agents sampled: {stdout}");
    for u in usage {
        for key in ["rss_kib_first", "rss_kib_last", "rss_kib_max", "threads_max"] {
            assert!(u[key].as_u64().is_some_and(|n| n > 0), "{key} of {}", u["process"]);
        }
    }
    assert!(report["drops_grown"].is_object());
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("podlane-soak"), "namespaces left behind: {left}");
}
