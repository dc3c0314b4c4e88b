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
/// command name, which is in parentheses and may contain spaces. `None` once it has exited.
fn scheduling(pid: u32, tid: &str) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the comm, field 3 (state) is index 0: rt_priority is field 40, policy 41.
    Some((fields[41 - 3].parse().unwrap(), fields[40 - 3].parse().unwrap()))
}

#[test]
fn workers_run_under_sched_fifo_and_forward() -> anyhow::Result<()> {
    if !require_root("workers_run_under_sched_fifo_and_forward") {
        return Ok(());
    }
    // The worker on the first core this test may use; the daemon inherits the same set.
    let ours = allowed_cores(&std::fs::read_to_string("/proc/thread-self/status")?);
    let core = ours[0];
    let one = OneNode::new("rt", 84)?;
    let tables = one.write_tables(&[])?;
    let extra = ["--cores", &core.to_string(), "--realtime-priority", "7"];
    let log = one.dir.path().join("d.log");
    let mut daemon = Dataplane::with_tables(&one.node, "uplink", &tables, &log, &extra)?;
    daemon.wait_ready(2)?;
    assert_eq!(one.p1.ping(&one.p2.ip, 3), 3, "forwarding under SCHED_FIFO:\n{}", daemon.log());

    let pid = daemon.pid().expect("running");
    let rest: Vec<usize> = ours.iter().copied().filter(|&c| c != core).collect();
    if rest.is_empty() {
        eprintln!(
            "NOTE: one core only: the daemon's threads share it with the worker (not tested)"
        );
    }
    let mut workers = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid = task.unwrap().file_name().into_string().unwrap();
        // A short-lived helper thread may be gone by the time it is read: skipped.
        let read = |what: &str| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{what}"));
        let (Ok(comm), Ok(status), Some((policy, priority))) =
            (read("comm"), read("status"), scheduling(pid, &tid))
        else {
            continue;
        };
        let cores = allowed_cores(&status);
        if comm.starts_with("podlane-worker") {
            workers += 1;
            assert_eq!(cores, [core], "{comm}: pinned to core {core}");
            assert_eq!((policy, priority), (1, 7), "{comm}: SCHED_FIFO (1) at priority 7");
        } else {
            if !rest.is_empty() {
                assert_eq!(cores, rest, "{comm}: off the worker's core");
            }
            if comm.starts_with("podlane-attache") {
                // comm is cut to 15 characters.
                assert_eq!((policy, priority), (5, 0), "{comm}: SCHED_IDLE (5)");
            } else {
                assert_eq!((policy, priority), (0, 0), "{comm}: not a worker, ordinary scheduling");
            }
        }
    }
    assert_eq!(workers, 1, "one worker thread");

    // 40,000 datagrams in 0.4 s, each echoed: frames every few microseconds, so the worker
    // forwards without sleeping, and leaves its core for a moment every 2 ms.
    let mut client = Client::connect(daemon.socket(), "realtime_workers")?;
    let mut counters = || -> anyhow::Result<(u64, u64)> {
        let Response::Counters { workers } =
            client.request(&Request::Query { what: Query::Counters })?
        else {
            anyhow::bail!("no counters");
        };
        let pauses = workers.iter().map(|w| w.realtime_pauses).sum();
        Ok((pauses, workers.iter().map(|w| w.local).sum()))
    };
    let _echo = one.p2.serve(&["udp-echo", "7000"])?;
    // Counters are published about once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let (pauses_before, forwarded_before) = counters()?;
    let stream = one
        .p1
        .probe(&["udp-stream", &one.p2.ip, "7000", "40000", "100000"])
        .stdout(Stdio::piped())
        .output()?;
    assert!(stream.status.success(), "{}", String::from_utf8_lossy(&stream.stdout));
    std::thread::sleep(Duration::from_millis(1100));
    let (pauses, forwarded) = counters()?;
    let report = String::from_utf8_lossy(&stream.stdout);
    assert!(forwarded - forwarded_before > 10_000, "the stream went through: {report}");
    // Each pause follows 2 ms of forwarding without a sleep: ten of them are 20 ms of it.
    assert!(
        pauses - pauses_before >= 10,
        "the worker paused while it forwarded without sleeping: {pauses_before} -> {pauses} \
         ({report})"
    );
    assert!(daemon.stop()?.success(), "{}", daemon.log());
    Ok(())
}

#[test]
fn realtime_priority_with_spinning_workers_is_refused() {
    let run = |args: &[&str]| {
        std::process::Command::new(binary("podlane-dataplane"))
            .args(args)
            .output()
            .expect("run podlane-dataplane")
    };
    let out = run(&["--uplink", "uplink", "--poll", "spin", "--realtime-priority", "10"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--poll event"), "says how to fix it: {stderr}");

    // 0 is ordinary scheduling (what deploy/'s ConfigMap passes by default): accepted with
    // spinning workers, so the daemon goes on to its start-up, which stops at the interface
    // that does not exist before it touches anything.
    let out = run(&["--uplink", "podlane-none0", "--poll", "spin", "--realtime-priority", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("--poll event"), "0 is not real-time: {stderr}");
    let out = run(&["--uplink", "podlane-none0", "--realtime-priority", "100"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
