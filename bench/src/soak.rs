//! `podlane-bench soak`: a cluster left running under churn, to see what a long run does to
//! podlane (docs/bench.md). Three nodes on one bridged underlay: node A and node B run podlane
//! (dataplane and agent, from one cluster file), node K the kernel's vxlan device as Flannel
//! programs it.
//!
//! * **Flows** (UDP, echoed back, `--rate` datagrams a second each, for the whole run):
//!   a1 → k1 (node A to the kernel node) and a1 → a2 (within node A) are the untouched ones;
//!   b1 → k1 goes through node B, whose dataplane is restarted half-way.
//! * **Churn** on node A from a second client, 100 updates a second: a node that comes and
//!   goes, a policy whose rules flip between allowing everything and nothing, and once a
//!   second a pod (a3, with a real veth) added or removed.
//! * **Restart**: node B's dataplane stopped and started again half-way; its agent syncs it
//!   from scratch.
//! * **Samples** every `--interval`: resident memory and threads of both dataplanes and both
//!   agents, and node A's drop counters; reported as the first and last values and the
//!   extremes, and the counters that grew between the first sample and the last.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use control::client::Client;
use podlane_core::api::{Query, Request, Response, Update};
use podlane_core::table::{NodeSpec, PolicySpec, RuleSpec};
use serde::Serialize;
use testbed::kernel::{self, RemoteNode};
use testbed::link::Switch;
use testbed::podlane::{self, Dataplane};
use testbed::{Background, Netns, Pod, ScratchDir, Service};

use crate::interrupt;

/// The nodes: name, underlay address, VTEP MAC, pod CIDR, the CIDR's first address.
const NODES: [(&str, &str, &str, &str, &str); 3] = [
    ("node-a", "192.168.83.1", "0a:aa:00:00:00:01", "10.244.1.0/24", "10.244.1.0"),
    ("node-b", "192.168.83.2", "0a:bb:00:00:00:01", "10.244.2.0/24", "10.244.2.0"),
    ("node-k", "192.168.83.3", "0a:cc:00:00:00:01", "10.244.3.0/24", "10.244.3.0"),
];

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub seconds: u32,
    /// Datagrams a second of each flow.
    pub rate: u32,
    /// Seconds between samples.
    pub interval: u32,
    /// Updates a second of the churn on node A.
    pub updates_per_second: u32,
}

/// A flow's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub name: String,
    /// Untouched by the restart: any loss is podlane's.
    pub untouched: bool,
    pub sent: u64,
    pub lost: u64,
}

/// One process's samples.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub process: String,
    pub rss_kib_first: u64,
    pub rss_kib_last: u64,
    pub rss_kib_max: u64,
    pub threads_first: u64,
    pub threads_last: u64,
    pub threads_max: u64,
}

/// What a run saw.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seconds: f64,
    pub flows: Vec<Flow>,
    /// Churn updates acknowledged, and those refused.
    pub updates_acked: u64,
    pub updates_refused: u64,
    /// From node B's dataplane started again to its agent's full sync applied.
    pub restart_resync_seconds: f64,
    pub usage: Vec<Usage>,
    /// Node A's drop counters that grew between the first sample and the last: reason →
    /// growth.
    pub drops_grown: BTreeMap<String, u64>,
    pub samples: u32,
}

/// Resident memory (KiB) and threads of a process, from /proc.
fn usage_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmRSS:")?, field("Threads:")?))
}

fn cluster_yaml() -> String {
    let mut text = String::from("nodes:\n");
    for (name, underlay, vtep, cidr, _) in NODES {
        text += &format!(
            "  - {{name: {name}, underlay: {underlay}, vtepMAC: \"{vtep}\", podCIDR: {cidr}}}\n"
        );
    }
    text += "pods:\n";
    for (name, ip, mac, node) in [
        ("a1", "10.244.1.2", "0a:58:0a:f4:01:02", "node-a"),
        ("a2", "10.244.1.3", "0a:58:0a:f4:01:03", "node-a"),
        ("b1", "10.244.2.2", "0a:58:0a:f4:02:02", "node-b"),
    ] {
        text += &format!(
            "  - {{name: {name}, ip: {ip}, mac: \"{mac}\", node: {node}, interface: veth-{name}}}\n"
        );
    }
    text += "  - {name: k1, ip: 10.244.3.2, node: node-k}\n";
    text
}

/// A UDP stream from `from` to `to`'s echo server on `port`, for `seconds`.
/// Killed if the run ends before it does.
fn stream(from: &Pod, to: &Pod, port: u16, rate: u32, seconds: u32) -> anyhow::Result<Background> {
    let count = (u64::from(rate) * u64::from(seconds)).to_string();
    from.probe(&["udp-stream", &to.ip, &port.to_string(), &count, &rate.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map(Background)
        .context("starting a UDP stream")
}

/// Waits for a stream and reads its `sent=… lost=…` line.
fn finish(mut stream: Background) -> anyhow::Result<(u64, u64)> {
    let child = &mut stream.0;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "udp-stream: {out}");
    let field = |name: &str| -> u64 {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("sent"), field("lost")))
}

/// Node A's drops by reason, summed over its workers.
fn drops(socket: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut client = Client::connect(socket, "podlane-bench-soak")?;
    let Response::Counters { workers } =
        client.request(&Request::Query { what: Query::Counters })?
    else {
        anyhow::bail!("no counters");
    };
    let mut out = BTreeMap::new();
    for w in workers {
        for (reason, n) in w.drops {
            *out.entry(reason).or_default() += n;
        }
        for (reason, n) in [
            ("no_socket", w.no_socket),
            ("handoff_dropped", w.handoff_dropped),
            ("chunk_exhausted", w.chunk_exhausted),
        ] {
            *out.entry(reason.to_owned()).or_default() += n;
        }
    }
    Ok(out)
}

/// Clears its flag when dropped: the run's end, by any path, stops the churn thread.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The churn: `per_second` updates a second to node A until `running` clears.
fn churn(
    socket: &Path,
    per_second: u32,
    a3: podlane_core::table::EndpointSpec,
    running: &AtomicBool,
    acked: &AtomicU64,
    refused: &AtomicU64,
) -> anyhow::Result<()> {
    let mut client = Client::connect(socket, "podlane-bench-churn")?;
    let node = NodeSpec {
        name: "churn".into(),
        underlay: "192.168.83.99".parse()?,
        vtep_mac: Some("0a:99:00:00:00:01".parse()?),
        next_hop_mac: None,
        pod_cidrs: vec!["10.244.99.0/24".parse()?],
        tunnel_ips: Vec::new(),
    };
    let policy = |open: bool| PolicySpec {
        name: "soak-flip".into(),
        rules: if open { vec![RuleSpec { peers: vec![], ports: vec![] }] } else { vec![] },
    };
    let start = Instant::now();
    let mut i: u64 = 0;
    let (mut node_in, mut pod_in) = (false, false);
    // The policy first: the pod refers to it.
    client.request(&Request::Update(Update {
        upsert_policies: vec![policy(true)],
        ..Update::default()
    }))?;
    while running.load(Ordering::Relaxed) {
        let update = if i % u64::from(per_second) == 0 {
            pod_in = !pod_in;
            if pod_in {
                Update { upsert_endpoints: vec![a3.clone()], ..Update::default() }
            } else {
                Update { delete_endpoints: vec![a3.key()], ..Update::default() }
            }
        } else if i % 2 == 0 {
            node_in = !node_in;
            if node_in {
                Update { upsert_nodes: vec![node.clone()], ..Update::default() }
            } else {
                Update { delete_nodes: vec!["churn".into()], ..Update::default() }
            }
        } else {
            Update { upsert_policies: vec![policy(i % 4 == 1)], ..Update::default() }
        };
        match client.request(&Request::Update(update))? {
            Response::Ack { rejected, .. } if rejected.is_empty() => {
                acked.fetch_add(1, Ordering::Relaxed)
            }
            _ => refused.fetch_add(1, Ordering::Relaxed),
        };
        i += 1;
        let due = start + Duration::from_secs(1) / per_second * (i as u32);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // Leave nothing of the churn behind.
    let mut last = Update::default();
    if node_in {
        last.delete_nodes.push("churn".into());
    }
    if pod_in {
        last.delete_endpoints.push(a3.key());
    }
    last.delete_policies.push("soak-flip".into());
    client.request(&Request::Update(last))?;
    Ok(())
}

/// Runs the soak; `progress` is told each step.
pub fn run(config: &Config, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let dir = ScratchDir::new("bench-soak")?;
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, cluster_yaml())?;
    let mut switch = Switch::new("soaksw")?;
    let (node_a, node_b, node_k) =
        (Netns::create("soaka")?, Netns::create("soakb")?, Netns::create("soakk")?);
    for (ns, interface, (_, ip, ..)) in
        [(&node_a, "uplink", NODES[0]), (&node_b, "uplink", NODES[1]), (&node_k, "eth0", NODES[2])]
    {
        switch.plug(ns, interface, ip)?;
    }
    progress("node K: the kernel's vxlan device as Flannel programs it");
    let (_, k_ip, k_vtep, _, k_gateway) = NODES[2];
    kernel::vxlan_device(&node_k, kernel::FLANNEL, "eth0", k_ip, k_vtep, k_gateway)?;
    for (_, underlay, vtep_mac, pod_cidr, gateway) in &NODES[..2] {
        let remote = RemoteNode { underlay, vtep_mac, pod_cidr, gateway };
        kernel::add_remote(&node_k, kernel::FLANNEL, &remote)?;
    }
    let k1 = kernel::wire_pod(&node_k, "k1", "veth-k1", "10.244.3.2", "0a:58:0a:f4:03:02")?;

    progress("nodes A and B: podlane, each with its agent");
    let start_daemon = |ns: &Netns, (name, ip, ..): (&str, &str, &str, &str, &str)| {
        Dataplane::start(
            ns,
            "uplink",
            &dir.path().join(format!("{name}.log")),
            &["--node-name", name, "--node-ip", ip],
        )
    };
    let agent = |name: &str, daemon: &Dataplane| {
        podlane::agent(
            name,
            daemon.socket(),
            &cluster,
            &dir.path().join(format!("agent-{name}.log")),
        )
    };
    let daemon_a = start_daemon(&node_a, NODES[0])?;
    let mut daemon_b = start_daemon(&node_b, NODES[1])?;
    let a1 = Pod::wire(&node_a, "a1", "veth-a1", "10.244.1.2", "0a:58:0a:f4:01:02")?;
    let a2 = Pod::wire(&node_a, "a2", "veth-a2", "10.244.1.3", "0a:58:0a:f4:01:03")?;
    let a3 = Pod::wire(&node_a, "a3", "veth-a3", "10.244.1.4", "0a:58:0a:f4:01:04")?;
    let b1 = Pod::wire(&node_b, "b1", "veth-b1", "10.244.2.2", "0a:58:0a:f4:02:02")?;
    let mut agent_a = agent("node-a", &daemon_a)?;
    let mut agent_b = agent("node-b", &daemon_b)?;
    agent_a.wait_for("full sync applied", 1)?;
    agent_b.wait_for("full sync applied", 1)?;
    for (from, to) in [(&a1, &k1), (&a1, &a2), (&b1, &k1)] {
        anyhow::ensure!(
            from.ping_until(&to.ip, true),
            "{} cannot reach {} before the run\n{}\n{}",
            from.name,
            to.name,
            daemon_a.log(),
            daemon_b.log()
        );
    }

    progress(&format!(
        "running {} s: three flows at {} datagrams/s, {} updates/s, node B restarted half-way",
        config.seconds, config.rate, config.updates_per_second
    ));
    let (_echo_k, _) = k1.serve(&["udp-echo", "7000"])?;
    let (_echo_a2, _) = a2.serve(&["udp-echo", "7001"])?;
    let flows = [
        (
            "a1 → k1 (node A to the kernel node)",
            true,
            stream(&a1, &k1, 7000, config.rate, config.seconds)?,
        ),
        ("a1 → a2 (within node A)", true, stream(&a1, &a2, 7001, config.rate, config.seconds)?),
        (
            "b1 → k1 (through the restarted node B)",
            false,
            stream(&b1, &k1, 7000, config.rate, config.seconds)?,
        ),
    ];
    let running = Arc::new(AtomicBool::new(true));
    let (acked, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let churner = {
        let (running, acked, refused) = (running.clone(), acked.clone(), refused.clone());
        let socket = daemon_a.socket().to_owned();
        let per_second = config.updates_per_second;
        let mut a3_endpoint = a3.endpoint()?;
        a3_endpoint.ingress_policy = Some("soak-flip".into());
        std::thread::spawn(move || {
            churn(&socket, per_second, a3_endpoint, &running, &acked, &refused)
        })
    };

    let started = Instant::now();
    let mut samples: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut sample = |processes: &[(&str, &Service)]| {
        for (name, service) in processes {
            if let Some(usage) = service.pid().and_then(usage_of) {
                samples.entry((*name).to_owned()).or_default().push(usage);
            }
        }
    };
    let (mut first_drops, mut last_drops) = (None, BTreeMap::new());
    let mut count = 0u32;
    let mut restart_resync_seconds = f64::NAN;
    let half = Duration::from_secs(u64::from(config.seconds) / 2);
    let end = Duration::from_secs(u64::from(config.seconds));
    let mut next = Duration::ZERO;
    // The churn thread stops when the run does, however it ends.
    let _stop_churn = StopOnDrop(running.clone());
    while started.elapsed() < end {
        interrupt::check()?;
        if started.elapsed() >= next {
            sample(&[
                ("dataplane node-a", &daemon_a),
                ("dataplane node-b", &daemon_b),
                ("agent node-a", &agent_a),
                ("agent node-b", &agent_b),
            ]);
            last_drops = drops(daemon_a.socket())?;
            first_drops.get_or_insert_with(|| last_drops.clone());
            count += 1;
            next += Duration::from_secs(u64::from(config.interval));
        }
        if restart_resync_seconds.is_nan() && started.elapsed() >= half {
            progress("restarting node B's dataplane");
            anyhow::ensure!(daemon_b.stop()?.success(), "node B's dataplane:\n{}", daemon_b.log());
            std::fs::rename(dir.path().join("node-b.log"), dir.path().join("node-b-first.log"))?;
            let synced = agent_b.log().matches("full sync applied").count();
            daemon_b = start_daemon(&node_b, NODES[1])?;
            let restarted = Instant::now();
            agent_b.wait_for("full sync applied", synced + 1)?;
            restart_resync_seconds = restarted.elapsed().as_secs_f64();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    running.store(false, Ordering::Relaxed);
    churner.join().map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;
    let first_drops = first_drops.unwrap_or_default();
    progress("waiting for the flows to end");
    let mut flow_reports = Vec::new();
    for (name, untouched, child) in flows {
        let (sent, lost) = finish(child)?;
        flow_reports.push(Flow { name: name.to_owned(), untouched, sent, lost });
    }
    let usage = samples
        .into_iter()
        .map(|(process, values)| {
            let rss = values.iter().map(|v| v.0);
            let threads = values.iter().map(|v| v.1);
            Usage {
                process,
                rss_kib_first: values.first().map_or(0, |v| v.0),
                rss_kib_last: values.last().map_or(0, |v| v.0),
                rss_kib_max: rss.max().unwrap_or(0),
                threads_first: values.first().map_or(0, |v| v.1),
                threads_last: values.last().map_or(0, |v| v.1),
                threads_max: threads.max().unwrap_or(0),
            }
        })
        .collect();
    let drops_grown = last_drops
        .into_iter()
        .filter_map(|(reason, n)| {
            let grown = n.saturating_sub(first_drops.get(&reason).copied().unwrap_or(0));
            (grown > 0).then_some((reason, grown))
        })
        .collect();
    Ok(Report {
        seconds: started.elapsed().as_secs_f64(),
        flows: flow_reports,
        updates_acked: acked.load(Ordering::Relaxed),
        updates_refused: refused.load(Ordering::Relaxed),
        restart_resync_seconds,
        usage,
        drops_grown,
        samples: count,
    })
}

/// The report as text.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "{:.0} s; churn on node A: {} updates acknowledged, {} refused; node B's dataplane \
         restarted, synced again in {:.2} s\n\nflow                                      sent      lost\n",
        r.seconds, r.updates_acked, r.updates_refused, r.restart_resync_seconds
    );
    for f in &r.flows {
        out += &format!("{:<40} {:>8} {:>9}\n", f.name, f.sent, f.lost);
    }
    out += &format!(
        "\n{} samples            RSS KiB first / last / max    threads first / last / max\n",
        r.samples
    );
    for u in &r.usage {
        out += &format!(
            "{:<20} {:>9} / {:>9} / {:>9}    {:>5} / {:>5} / {:>5}\n",
            u.process,
            u.rss_kib_first,
            u.rss_kib_last,
            u.rss_kib_max,
            u.threads_first,
            u.threads_last,
            u.threads_max
        );
    }
    if r.drops_grown.is_empty() {
        out += "\nnode A's drop counters: none grew\n";
    } else {
        let grown: Vec<String> = r.drops_grown.iter().map(|(k, v)| format!("{k} +{v}")).collect();
        out += &format!("\nnode A's drop counters that grew: {}\n", grown.join(", "));
    }
    out
}
