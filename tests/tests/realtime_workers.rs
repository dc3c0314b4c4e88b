//! `--realtime-priority`: the workers, and only they, run under SCHED_FIFO at the priority
//! asked for and still forward (the attacher runs under SCHED_IDLE, the other threads with
//! ordinary scheduling); the daemon's other threads keep off the workers' cores; a worker
//! that forwards without sleeping leaves its core for short pauses; the combination with
//! spinning workers is refused.

use std::process::Stdio;
use std::time::Duration;

use control::client::Client;
use podlane_core::api::{Query, Request, Response};
use podlane_tests::require_root;
use testbed::binary;
use testbed::cluster::OneNode;
use testbed::podlane::Dataplane;

/// The cores a thread may run on, from Cpus_allowed_list in its status (`0-1,4`).
fn allowed_cores(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    list.split(',')
        .flat_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap()
        })
        .collect()
}

/// (policy, priority) of a thread from /proc/PID/task/TID/stat: fields 41 and 40 after the
/// command name, which is in parentheses and may contain spaces.
fn scheduling(pid: u32, tid: &str) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the comm, field 3 (state) is index 0: rt_priority is field 40, policy 41.
    (fields[41 - 3].parse().unwrap(), fields[40 - 3].parse().unwrap())
}

#[test]
fn workers_run_under_sched_fifo_and_forward() -> anyhow::Result<()> {
    if !require_root("workers_run_under_sched_fifo_and_forward") {
        return Ok(());
    }
    let one = OneNode::new("rt", 84)?;
    let tables = one.write_tables(&[])?;
    let extra = ["--cores", "0", "--realtime-priority", "7"];
    let log = one.dir.path().join("d.log");
    let mut daemon = Dataplane::with_tables(&one.node, "uplink", &tables, &log, &extra)?;
    daemon.wait_ready(2)?;
    assert_eq!(one.p1.ping(&one.p2.ip, 3), 3, "forwarding under SCHED_FIFO:\n{}", daemon.log());

    let pid = daemon.pid().expect("running");
    let ours = allowed_cores(&std::fs::read_to_string("/proc/self/status")?);
    let mut workers = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
        let (policy, priority) = scheduling(pid, &tid);
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
        let cores = allowed_cores(&status);
        if comm.starts_with("podlane-worker") {
            assert_eq!(cores, [0], "{comm}: pinned to core 0");
        } else if ours.iter().any(|&c| c != 0) {
            let rest: Vec<usize> = ours.iter().copied().filter(|&c| c != 0).collect();
            assert_eq!(cores, rest, "{comm}: off the worker's core");
        } else {
            eprintln!("NOTE: one core only: {comm} shares it with the worker (nothing to test)");
        }
        if comm.starts_with("podlane-worker") {
            workers += 1;
            assert_eq!((policy, priority), (1, 7), "{comm}: SCHED_FIFO (1) at priority 7");
        } else if comm.starts_with("podlane-attache") {
            // comm is cut to 15 characters.
            assert_eq!((policy, priority), (5, 0), "{comm}: SCHED_IDLE (5)");
        } else {
            assert_eq!((policy, priority), (0, 0), "{comm}: not a worker, ordinary scheduling");
        }
    }
    assert_eq!(workers, 1, "one worker thread");

    // 40,000 datagrams in 0.4 s, each echoed: frames every few microseconds, so the worker
    // forwards without sleeping, and leaves its core for a moment every 2 ms.
    let _echo = one.p2.serve(&["udp-echo", "7000"])?;
    std::thread::sleep(Duration::from_millis(200));
    let stream = one
        .p1
        .probe(&["udp-stream", &one.p2.ip, "7000", "40000", "100000"])
        .stdout(Stdio::piped())
        .output()?;
    assert!(stream.status.success(), "{}", String::from_utf8_lossy(&stream.stdout));
    // Counters are published about once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let mut client = Client::connect(daemon.socket(), "realtime_workers")?;
    let Response::Counters { workers } =
        client.request(&Request::Query { what: Query::Counters })?
    else {
        anyhow::bail!("no counters");
    };
    let pauses: u64 = workers.iter().map(|w| w.realtime_pauses).sum();
    let forwarded: u64 = workers.iter().map(|w| w.local).sum();
    assert!(forwarded > 10_000, "the stream went through: {workers:?}");
    assert!(pauses > 0, "the worker paused while it forwarded without sleeping: {workers:?}");
    assert!(daemon.stop()?.success(), "{}", daemon.log());
    Ok(())
}

#[test]
fn realtime_priority_with_spinning_workers_is_refused() {
    let out = std::process::Command::new(binary("podlane-dataplane"))
        .args(["--uplink", "uplink", "--poll", "spin", "--realtime-priority", "10"])
        .output()
        .expect("run podlane-dataplane");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--poll event"), "says how to fix it: {stderr}");
}
