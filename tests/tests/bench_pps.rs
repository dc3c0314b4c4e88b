//! Smoke test of the packet-rate harness: `podlane-bench pps --quick` builds its namespaces,
//! runs every dataplane (kernel VXLAN, podlane, bare AF_XDP forward) in every direction, and
//! writes its table, JSON and SVG. It asserts that traffic flowed through each dataplane and
//! that every documented field was produced, and that nothing is left behind. It asserts no
//! rate or duration: those are the benchmark's to report, not a test's to judge.

use std::process::Command;

use podlane_tests::{require_root, require_tool};
use testbed::{ScratchDir, binary};

/// One `pps` run at a time: each removes stale `podlane-bench` namespaces as it starts and
/// checks that none is left when it ends.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bench_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("podlane-bench"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn quick_run_measures_every_dataplane_and_direction() {
    if !require_root("quick_run_measures_every_dataplane_and_direction") {
        return;
    }
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if require_tool("ethtool").is_none() {
        return;
    }
    let dir = ScratchDir::new("bench-pps").expect("scratch directory");
    let (json, svg) = (dir.path().join("pps.json"), dir.path().join("pps.svg"));
    let out = Command::new(binary("podlane-bench"))
        .args(["pps", "--quick", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run podlane-bench pps");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "podlane-bench pps --quick failed:\n{stdout}\n{stderr}");
    for needle in ["search  1:", "kernel vxlan", "podlane", "bare AF_XDP fwd", "0-loss Mpps"] {
        assert!(stdout.contains(needle), "output lacks {needle:?}:\n{stdout}");
    }

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("JSON parses");
    assert_eq!(doc["schema"], 1);
    for key in ["cpu_model", "cpus", "kernel"] {
        assert!(!doc["machine"][key].is_null(), "machine.{key} missing");
    }
    // How the kernel dataplane was given its cores is part of the result.
    assert_eq!(doc["config"]["kernel_placement"], "inline", "{}", doc["config"]);
    assert_eq!(doc["config"]["queues"], 1);
    assert!(doc["config"]["dut_cores"].as_array().is_some_and(|c| c.len() == 1));
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 9, "3 dataplanes x 3 directions:\n{stdout}");
    for row in rows {
        let name = format!("{} {}", row["dataplane"], row["direction"]);
        for key in [
            "frame_size",
            "outer_frame_size",
            "flows",
            "max_pps",
            "max_offered_pps",
            "zero_loss_pps",
            "gbps_inner",
            "gbps_outer",
            "cpu_ns_per_packet",
            "pps_per_busy_core",
            "busy_cores",
            "cpu_delivered_pps",
        ] {
            assert!(row[key].is_number(), "{name}: {key} is {}", row[key]);
        }
        assert_eq!(row["frame_size"], 64);
        assert!(row["max_pps"].as_f64().unwrap() > 0.0, "{name}: no traffic went through");
        let steps = row["search"].as_array().expect("search steps");
        assert!(!steps.is_empty(), "{name}: no search step");
        assert!(
            steps.iter().any(|s| s["delivered"].as_u64().unwrap() > 0),
            "{name}: nothing delivered"
        );
        let cores = row["cores"].as_array().expect("cores");
        assert!(!cores.is_empty() && cores.iter().all(|c| c["busy"].is_number()), "{name}: cores");
        let latency = row["latency"].as_array().expect("latency");
        assert_eq!(latency.len(), 3, "{name}: latency at 10, 50 and 90 %");
        for point in latency {
            for key in ["fraction", "rate_pps", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"] {
                assert!(point[key].is_number(), "{name}: latency.{key} missing");
            }
            assert!(point["samples"].as_u64().unwrap() > 0, "{name}: no latency samples");
            assert!(
                point["p50_ns"].as_u64() <= point["p99_ns"].as_u64(),
                "{name}: percentiles out of order"
            );
        }
        if row["dataplane"] != "kernel" {
            assert!(row["max_vs_kernel"].is_number(), "{name}: no ratio to the kernel");
        }
    }

    let chart = std::fs::read_to_string(&svg).expect("SVG written");
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    assert!(chart.matches("<rect").count() > 9, "the chart has bars");

    // `report` reads the JSON back: the same table, the same chart.
    let redrawn = dir.path().join("again.svg");
    let out = Command::new(binary("podlane-bench"))
        .arg("report")
        .arg(&json)
        .arg("--svg")
        .arg(&redrawn)
        .output()
        .expect("run podlane-bench report");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "podlane-bench report failed: {out:?}");
    let table = |text: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("encap ") || l.starts_with("decap ") || l.starts_with("local ")
            })
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&report), table(&stdout), "report's table differs from the run's");
    assert_eq!(table(&report).len(), 9);
    assert_eq!(std::fs::read_to_string(&redrawn).expect("chart redrawn"), chart);

    assert!(bench_namespaces().is_empty(), "namespaces left behind: {:?}", bench_namespaces());
}

/// `--queues 2`: a two-queue uplink with a generator per core, the kernel receiving on both
/// cores and podlane with a worker per queue; the configuration is in the JSON.
#[test]
fn quick_run_with_two_uplink_queues() {
    if !require_root("quick_run_with_two_uplink_queues") {
        return;
    }
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if require_tool("ethtool").is_none() {
        return;
    }
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("SKIPPED quick_run_with_two_uplink_queues: it needs two cores");
        return;
    }
    let dir = ScratchDir::new("bench-pps-queues").expect("scratch directory");
    let (json, svg) = (dir.path().join("pps.json"), dir.path().join("pps.svg"));
    let out = Command::new(binary("podlane-bench"))
        .args(["pps", "--quick", "--queues", "2", "--dut-cores", "0,1", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run podlane-bench pps");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pps --queues 2 failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("JSON parses");
    assert_eq!(doc["config"]["queues"], 2);
    assert_eq!(doc["config"]["gen_cores"], serde_json::json!([0, 1]));
    assert_eq!(doc["config"]["dut_cores"], serde_json::json!([0, 1]));
    let rows = doc["rows"].as_array().expect("rows");
    let cells: Vec<(String, String)> =
        rows.iter().map(|r| (r["dataplane"].to_string(), r["direction"].to_string())).collect();
    assert_eq!(
        cells,
        [("\"kernel\"", "\"decap\""), ("\"podlane\"", "\"decap\"")]
            .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{stdout}"
    );
    for row in rows {
        assert!(
            row["max_pps"].as_f64().unwrap() > 0.0,
            "{}: nothing went through",
            row["dataplane"]
        );
    }
    assert!(bench_namespaces().is_empty(), "namespaces left behind: {:?}", bench_namespaces());
}

#[test]
fn bad_arguments_are_explained() {
    let run =
        |args: &[&str]| Command::new(binary("podlane-bench")).args(args).output().expect("run");
    let out = run(&["pps", "--frame-sizes", "32"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("64..=1518"), "{out:?}");
    let out = run(&["pps", "--uplink", "eth9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--remote"), "{out:?}");
    let out = run(&["pps", "--queues", "2", "--directions", "encap"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--directions decap"), "{out:?}");
    let out = run(&["pps", "--directions", "sideways"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("encap"), "{out:?}");

    let dir = ScratchDir::new("bench-report").expect("scratch directory");
    let not_results = dir.path().join("cluster.json");
    std::fs::write(&not_results, "{\"nodes\": []}").expect("write");
    let out = Command::new(binary("podlane-bench"))
        .arg("report")
        .arg(&not_results)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not the JSON that podlane-bench pps writes"), "{stderr}");
}
