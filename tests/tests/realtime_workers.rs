//! `--realtime-priority`: the workers, and only they, run under SCHED_FIFO at the priority
//! asked for and still forward; the combination with spinning workers is refused.

use podlane_tests::cluster::{self, Daemon, Pod, binary};
use podlane_tests::{Netns, ScratchDir, require_root};

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
fn workers_run_under_sched_fifo_and_forward() {
    if !require_root("workers_run_under_sched_fifo_and_forward") {
        return;
    }
    let dir = ScratchDir::new("realtime");
    let node = Netns::new("rtnode");
    let peer = Netns::new("rtpeer");
    cluster::underlay(&node, "uplink", "192.168.84.1", &peer, "eth0", "192.168.84.2");
    let p1 = Pod::new(&node, "p1", "veth-p1", "10.244.1.2", "0a:58:0a:f4:01:02");
    let p2 = Pod::new(&node, "p2", "veth-p2", "10.244.1.3", "0a:58:0a:f4:01:03");
    let nodes = [
        cluster::node_json("node-a", "192.168.84.1", "0a:aa:00:00:00:01", "10.244.1.0/24"),
        cluster::node_json("node-b", "192.168.84.2", "0a:bb:00:00:00:01", "10.244.2.0/24"),
    ];
    let tables = dir.path().join("tables.json");
    cluster::write_tables(&tables, "node-a", &nodes, &[&p1, &p2]);
    let extra = ["--cores", "0", "--realtime-priority", "7"];
    let mut daemon = Daemon::start(&node, "uplink", &tables, dir.path().join("d.log"), &extra);
    daemon.wait_ready(2);
    assert_eq!(p1.ping(&p2.ip, 3), 3, "forwarding under SCHED_FIFO:\n{}", daemon.log());

    let pid = daemon.pid();
    let mut workers = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
        let (policy, priority) = scheduling(pid, &tid);
        if comm.starts_with("podlane-worker") {
            workers += 1;
            assert_eq!((policy, priority), (1, 7), "{comm}: SCHED_FIFO (1) at priority 7");
        } else {
            assert_eq!((policy, priority), (0, 0), "{comm}: not a worker, ordinary scheduling");
        }
    }
    assert_eq!(workers, 1, "one worker thread");
    assert!(daemon.stop().success(), "{}", daemon.log());
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
