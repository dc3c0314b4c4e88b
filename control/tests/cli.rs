//! `podlane check -f FILE`: the operator's offline validation of a tables file.

use std::path::PathBuf;
use std::process::Command;

fn podlane(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_podlane")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_what_a_valid_file_holds() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/two-nodes.json");
    let (code, stdout, stderr) = podlane(&["check", "-f", example.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("tables valid"), "{stdout}");
    assert!(stdout.contains("endpoints:   2 local"), "{stdout}");
}

#[test]
fn check_names_the_problem() {
    let path =
        std::env::temp_dir().join(format!("podlane-control-cli-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"local_node": "a", "nodes": []}"#).unwrap();
    let (code, _, stderr) = podlane(&["check", "-f", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains("local node \"a\" is not in the node table"), "{stderr}");
    let (code, _, stderr) = podlane(&["check"]);
    assert_eq!(code, 2, "usage error");
    assert!(stderr.contains("--file"), "{stderr}");
}

#[test]
fn show_without_a_dataplane_says_where_it_looked() {
    let socket = std::env::temp_dir().join(format!("podlane-nothing-{}.sock", std::process::id()));
    let (code, _, stderr) = podlane(&["--socket", socket.to_str().unwrap(), "show", "nodes"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot connect to the dataplane at"), "{stderr}");
    assert!(stderr.contains("is podlane-dataplane running?"), "{stderr}");
    let (code, _, stderr) = podlane(&["show", "everything"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(
            "possible values: nodes, endpoints, routes, policy, counters, conntrack, config"
        ),
        "{stderr}"
    );
}

#[test]
fn agent_refuses_a_file_without_its_node() {
    let path = std::env::temp_dir().join(format!("podlane-agent-cli-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "nodes:\n  - {name: a, underlay: 10.0.0.1, vtepMAC: \"0a:00:00:00:00:01\"}\n",
    )
    .unwrap();
    let (code, _, stderr) = podlane(&["agent", "--cluster", path.to_str().unwrap(), "--node", "b"]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("node \"b\" is not in the cluster's nodes"), "{stderr}");
}
