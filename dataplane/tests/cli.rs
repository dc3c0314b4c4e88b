//! `podlane-dataplane --check` on real files: a valid table, an inconsistent one (the error
//! names the entry), a missing file and a syntax error (the error names line and column).

use std::path::PathBuf;
use std::process::Command;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/two-nodes.json")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_podlane-dataplane")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scratch(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("podlane-cli-{name}-{}.json", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn check_accepts_the_documented_example() {
    let (code, stdout, stderr) = run(&["--check", "--tables", example().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("tables valid"), "{stdout}");
    assert!(stdout.contains("local node:  node-a"), "{stdout}");
    assert!(stdout.contains("routes:      4 IPv4"), "{stdout}");
    assert!(stdout.contains("policies:    1 (1 rules"), "{stdout}");
}

#[test]
fn check_names_the_offending_entry() {
    let text = std::fs::read_to_string(example()).unwrap().replace("10.244.1.3", "10.244.2.3");
    let path = scratch("outside", &text);
    let (code, _, stderr) = run(&["--check", "--tables", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, 1);
    assert!(
        stderr.contains("endpoint default/client: 10.244.2.3 is outside every pod CIDR of this node (\"node-a\")"),
        "{stderr}"
    );
}

#[test]
fn syntax_errors_name_line_and_column() {
    let text = std::fs::read_to_string(example())
        .unwrap()
        .replace("\"10.244.2.0/24\"", "\"10.244.2.7/24\"");
    let path = scratch("hostbits", &text);
    let (code, _, stderr) = run(&["--check", "--tables", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains(", line 15, column"), "{stderr}");
    assert!(stderr.contains("did you mean 10.244.2.0/24?"), "{stderr}");
    let (code, _, stderr) = run(&["--check", "--tables", "/nonexistent/podlane.json"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read tables file /nonexistent/podlane.json"), "{stderr}");
}

#[test]
fn bad_flags_say_what_is_wrong() {
    let (code, _, stderr) = run(&["--tables", example().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--uplink"), "names the missing flag: {stderr}");
    let (code, _, stderr) = run(&["--tabels", "x"]);
    assert_eq!(code, 2, "clap usage error");
    assert!(stderr.contains("--tables"), "clap suggests the right flag: {stderr}");
    let (code, _, stderr) = run(&["--tables", "x", "--uplink", "eth9", "--vni", "16777216"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("16777216 is not in 0..16777216"), "{stderr}");
    let (code, _, stderr) = run(&["--tables", "x", "--uplink", "eth9", "--profile", "cilium"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("[possible values: flannel, calico]"), "{stderr}");
}

/// One line and exit 1 for an interface that does not exist — or, without privileges, for
/// that (whichever the test's user hits first).
#[test]
fn unknown_uplink_or_missing_privileges_is_one_clear_line() {
    let (code, _, stderr) =
        run(&["--tables", example().to_str().unwrap(), "--uplink", "podlane-nope0"]);
    assert_eq!(code, 1, "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains("no interface named \"podlane-nope0\"") || line.contains("needs root"),
        "{stderr}"
    );
}

/// As an unprivileged user (setpriv from util-linux drops to `nobody`): one line saying what
/// is missing and how to fix it. Without root the test above already covers this.
#[test]
fn missing_privileges_name_the_capabilities() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root =
        status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        eprintln!("not root: unknown_uplink_or_missing_privileges_is_one_clear_line covers this");
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_podlane-dataplane"))
        .args(["--uplink", "lo", "--tables", example().to_str().unwrap()])
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("podlane-dataplane: needs root, or CAP_NET_ADMIN"), "{stderr}");
    assert!(
        stderr.contains("missing: CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK, CAP_BPF"),
        "{stderr}"
    );
    assert!(stderr.contains("run it with sudo"), "{stderr}");
}
