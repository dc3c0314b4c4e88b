//! Smoke test of `podlane-bench tcp --quick`: every underlay and pair produced a throughput
//! run with traffic in it and a request/response run with transactions, the JSON has the
//! documented fields, the chart is drawn, nothing is left behind. It asserts no rate: those
//! are the benchmark's to report. And a run stopped with SIGTERM in the middle of an iperf3
//! run takes down everything it built.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let bench = Command::new(binary("podlane-bench"))
        .args(["tcp", "--quick", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(dir.path().join("tcp.svg"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run podlane-bench tcp");
    let pid = bench.id();
    let out = bench.wait_with_output().expect("podlane-bench tcp ran");
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
    assert_eq!(namespaces_of(pid), Vec::<String>::new(), "namespaces left behind");
}

/// The network namespaces a podlane-bench process with this pid created.
fn namespaces_of(pid: u32) -> Vec<String> {
    let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with("podlane-bench-") && name.contains(&format!("-{pid}-")))
        .map(str::to_owned)
        .collect()
}

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Process {
    pid: String,
    started: String,
}

impl Process {
    fn of(pid: &str) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22, counted after the command name's closing parenthesis (field 2).
        let started = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.to_owned();
        Some(Process { pid: pid.to_owned(), started })
    }

    fn alive(&self) -> bool {
        Process::of(&self.pid).as_ref() == Some(self)
    }

    fn cmdline(&self) -> String {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).replace('\0', " ")
    }
}

/// The processes in network namespace `ns`.
fn processes_in(ns: &str) -> Vec<Process> {
    let pids = Command::new("ip").args(["netns", "pids", ns]).output().expect("ip netns pids");
    String::from_utf8_lossy(&pids.stdout).split_whitespace().filter_map(Process::of).collect()
}

/// Processes whose command line mentions `text`.
fn processes_mentioning(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(process) = Process::of(&entry.file_name().to_string_lossy()) else { continue };
        let cmdline = process.cmdline();
        if cmdline.contains(text) {
            found.push(format!("{}: {cmdline}", process.pid));
        }
    }
    found
}

/// The bench under test, sent SIGTERM if the test fails before it does (the bench then takes
/// its cluster down), so that a failed test leaves nothing running.
struct Bench(std::process::Child);

impl Drop for Bench {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn a_stopped_run_takes_down_what_it_built() {
    if !require_root("a_stopped_run_takes_down_what_it_built") {
        return;
    }
    if require_tool("iperf3").is_none() {
        return;
    }
    let dir = ScratchDir::new("bench-tcp-stop").expect("scratch directory");
    let mut bench = Bench(
        Command::new(binary("podlane-bench"))
            .args(["tcp", "--underlays", "nic", "--pairs", "podlane-podlane", "--streams", "1"])
            .args(["--seconds", "60", "--json"])
            .arg(dir.path().join("tcp.json"))
            .arg("--svg")
            .arg(dir.path().join("tcp.svg"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run podlane-bench tcp"),
    );
    let pid = bench.0.id();
    // Its progress, read to the end (a closed pipe would fail its next line).
    let (lines, progress) = std::sync::mpsc::channel();
    let stderr = bench.0.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // Past this line the cluster is built and the 60 s iperf3 run starts.
    let mut said = String::new();
    while let Ok(line) = progress.recv_timeout(Duration::from_secs(120)) {
        said += &line;
        said.push('\n');
        if line.contains("podlane-podlane 1 stream(s)") {
            break;
        }
    }
    assert!(said.contains("podlane-podlane 1 stream(s)"), "the run ended early:\n{said}");
    // The daemons run from the bench's scratch directory.
    let scratch = format!("podlane-bench-tcp-{pid}/");
    // Wait for the iperf3 client in the bench's pod to start.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (namespaces, in_namespaces) = loop {
        let namespaces = namespaces_of(pid);
        let processes: Vec<Process> = namespaces.iter().flat_map(|ns| processes_in(ns)).collect();
        if processes.iter().any(|p| p.cmdline().starts_with("iperf3 -c ")) {
            break (namespaces, processes);
        }
        assert!(Instant::now() < deadline, "no iperf3 client started:\n{said}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(namespaces.len() >= 2, "the nodes' namespaces: {namespaces:?}");
    assert!(!processes_mentioning(&scratch).is_empty(), "no daemon runs from {scratch}");

    let kill = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(kill.success());
    // A watchdog, not a measurement: a run that ignored the signal would go on for a minute.
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(status) = bench.0.try_wait().expect("wait for podlane-bench") {
            break status;
        }
        assert!(Instant::now() < deadline, "podlane-bench tcp did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(namespaces_of(pid), Vec::<String>::new(), "namespaces left behind");
    assert_eq!(processes_mentioning(&scratch), Vec::<String>::new(), "daemons left running");
    let alive: Vec<&Process> = in_namespaces.iter().filter(|p| p.alive()).collect();
    assert!(alive.is_empty(), "processes of the nodes and pods left running: {alive:?}");
    let tmp = std::env::temp_dir().join(&scratch);
    assert!(!tmp.exists(), "{} left behind", tmp.display());
    // Whatever it printed since (nothing of the run holds its stderr any more).
    while let Ok(line) = progress.recv_timeout(Duration::from_secs(5)) {
        said += &line;
        said.push('\n');
    }
    assert!(!status.success(), "a stopped run reports failure: {status}\n{said}");
    assert!(said.contains("interrupted"), "the run says why it ended:\n{said}");
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
