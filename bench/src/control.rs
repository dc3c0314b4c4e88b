//! `podlane-bench control`: what control work costs the data path, and how long it takes
//! (docs/bench.md). On one podlane node in network namespaces, with a UDP stream flowing
//! between two of its pods through the worker:
//!
//! 1. `--pods` more pod interfaces are pushed at once (one full sync): the time until the
//!    daemon has logged every one attached, and the worker's longest round of its loop
//!    meanwhile (the daemon's `longest_round_us`: a forwarding stall shows there) against the
//!    longest round while idle before;
//! 2. the same pods are removed again: the time until every one is logged detached (the data
//!    path has let go of it; the attacher releases its sockets after), and the longest round;
//! 3. the stream's loss over both.
//!
//! Then `--nodes` remote nodes behind one router are pushed: the time the full sync takes to
//! be acknowledged, and the time until every node's next-hop MAC is resolved and published.

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use control::client::Client;
use podlane_core::api::{Query, Request, Response};
use podlane_core::table::{EndpointSpec, NodeSpec, TableSpec};
use serde::Serialize;
use testbed::podlane::Dataplane as Daemon;
use testbed::{Background, Netns, Pod, ScratchDir, link, tables};

use crate::interrupt;

const NODE: &str = "192.168.91.1";
const ROUTER: &str = "192.168.91.254";
const VTEP: &str = "0a:aa:00:00:00:01";
/// Where the remote nodes' underlay addresses are: behind the router.
const REMOTE_UNDERLAY: &str = "10.99.0.0/16";

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub pods: u32,
    pub nodes: u32,
    /// Datagrams a second of the stream between two pods.
    pub rate: u32,
    /// How long the stream runs: long enough to cover attaching and detaching.
    pub stream_seconds: u32,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pods: u32,
    /// From the full sync's acknowledgement to the last pod attached.
    pub attach_seconds: f64,
    /// The worker's longest round while idle, before the push.
    pub idle_longest_round_us: u64,
    /// The longest round seen while the pods were attached.
    pub attach_longest_round_us: u64,
    /// From the full sync without them to the last of their sockets closed.
    pub detach_seconds: f64,
    pub detach_longest_round_us: u64,
    pub stream_sent: u64,
    pub stream_lost: u64,
    pub nodes: u32,
    /// The full sync of all nodes: sent to acknowledged (built and published).
    pub nodes_sync_seconds: f64,
    /// From the acknowledgement to every node's next hop published.
    pub next_hops_seconds: f64,
}

/// Pod `i` of the extra ones: host-side interface `p{i}`, peer `q{i}`.
fn extra_pod(i: u32) -> EndpointSpec {
    let (hi, lo) = ((i + 10) / 250, (i + 10) % 250 + 2);
    EndpointSpec {
        namespace: "bench".into(),
        name: format!("p{i}"),
        labels: Default::default(),
        ips: vec![format!("10.244.{hi}.{lo}").parse().expect("address")],
        mac: podlane_core::wire::MacAddr([0x0a, 0x58, 0x0a, 0xf4, hi as u8, lo as u8]),
        interface: format!("p{i}"),
        edge: Default::default(),
        ingress_policy: None,
        egress_policy: None,
    }
}

/// Remote node `i`: underlay 10.99.x.y, a /26 of 100.64.0.0/10 as its pod CIDR.
fn remote_node(i: u32) -> anyhow::Result<NodeSpec> {
    let underlay = format!("10.99.{}.{}", i / 250, i % 250 + 1);
    let block = 0x6440_0000u32 + i * 64;
    let cidr = format!("{}/26", std::net::Ipv4Addr::from(block));
    let mac = format!("0a:bb:00:00:{:02x}:{:02x}", i / 256, i % 256);
    tables::node(&format!("n{i}"), &underlay, &mac, &cidr)
}

/// Runs the measurement; `progress` is told each step.
pub fn run(config: &Config, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let dir = ScratchDir::new("bench-control")?;
    let node = Netns::create("bench-ctl")?;
    let router = Netns::create("bench-ctlr")?;
    link::underlay((&node, "uplink", NODE), (&router, "uplink", ROUTER), 1)?;
    node.ip(&["route", "add", REMOTE_UNDERLAY, "via", ROUTER])?;
    let a1 = Pod::wire(&node, "a1", "veth-a1", "10.244.0.2", "0a:58:0a:f4:00:02")?;
    let a2 = Pod::wire(&node, "a2", "veth-a2", "10.244.0.3", "0a:58:0a:f4:00:03")?;
    progress(&format!("creating {} pod interfaces", config.pods));
    let batch = dir.path().join("links.batch");
    let mut lines = String::new();
    for i in 0..config.pods {
        lines += &format!(
            "link add p{i} type veth peer name q{i}\nlink set p{i} up\nlink set q{i} up\n"
        );
    }
    std::fs::write(&batch, lines)?;
    node.ip(&["-batch", &batch.to_string_lossy()])?;

    let local = tables::node("node-a", NODE, VTEP, "10.244.0.0/16")?;
    let base = TableSpec {
        local_node: "node-a".into(),
        nodes: vec![local.clone()],
        endpoints: vec![a1.endpoint()?, a2.endpoint()?],
        policies: Vec::new(),
    };
    let file = dir.path().join("tables.json");
    tables::write(&file, &base)?;
    let mut daemon =
        Daemon::with_tables(&node, "uplink", &file, &dir.path().join("daemon.log"), &[])?;
    // No remote node yet, so no next hop to wait for.
    daemon.wait_for_all(
        &[("forwarding", 1), ("pod interface attached", 2)],
        Duration::from_secs(20),
    )?;
    let mut client = Client::connect(daemon.socket(), "podlane-bench")?;

    progress("starting the stream a1 → a2");
    let (_echo, _) = a2.serve(&["udp-echo", "7000"])?;
    let count = config.rate * config.stream_seconds;
    // Killed if the run ends before it does.
    let mut stream = a1
        .probe(&["udp-stream", &a2.ip, "7000", &count.to_string(), &config.rate.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map(Background)
        .context("starting the UDP stream")?;
    // A second of idle first: the baseline of the worker's longest round.
    interrupt::sleep(Duration::from_millis(1100))?;
    let idle = longest_round(&mut client)?;

    progress(&format!("attaching {} pods", config.pods));
    let mut with_pods = base.clone();
    with_pods.endpoints.extend((0..config.pods).map(extra_pod));
    sync(&mut client, with_pods)?;
    let started = Instant::now();
    let attached = |d: &Daemon| d.log().matches("pod interface attached").count();
    let (attach_seconds, attach_longest) =
        poll_until(&mut client, started, || attached(&daemon) >= 2 + config.pods as usize)?;

    progress(&format!("detaching {} pods", config.pods));
    sync(&mut client, base.clone())?;
    let started = Instant::now();
    let detached = |d: &Daemon| d.log().matches("pod interface detached").count();
    let (detach_seconds, detach_longest) =
        poll_until(&mut client, started, || detached(&daemon) >= config.pods as usize)?;

    progress("waiting for the stream to end");
    // It prints one short line, at its end: nothing fills the pipe meanwhile.
    let status = loop {
        if let Some(status) = stream.0.try_wait()? {
            break status;
        }
        interrupt::sleep(Duration::from_millis(20))?;
    };
    let mut report = String::new();
    if let Some(out) = stream.0.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            report += &line?;
        }
    }
    anyhow::ensure!(status.success(), "udp-stream: {report}");
    let field = |name: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };

    progress(&format!("pushing {} remote nodes behind one router", config.nodes));
    let mut with_nodes = base;
    for i in 0..config.nodes {
        with_nodes.nodes.push(remote_node(i)?);
    }
    let sent = Instant::now();
    sync(&mut client, with_nodes)?;
    let nodes_sync_seconds = sent.elapsed().as_secs_f64();
    let acked = Instant::now();
    let deadline = acked + Duration::from_secs(120);
    loop {
        let resolved = match client.request(&Request::Query { what: Query::Tables })? {
            Response::Tables { tables, .. } => tables
                .nodes
                .iter()
                .filter(|n| n.name != "node-a" && n.next_hop_mac.is_some())
                .count(),
            other => anyhow::bail!("unexpected reply to a tables query: {other:?}"),
        };
        if resolved >= config.nodes as usize {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{resolved} of {} next hops resolved after 120 s",
            config.nodes
        );
        interrupt::sleep(Duration::from_millis(20))?;
    }
    let next_hops_seconds = acked.elapsed().as_secs_f64();
    Ok(Report {
        pods: config.pods,
        attach_seconds,
        idle_longest_round_us: idle,
        attach_longest_round_us: attach_longest,
        detach_seconds,
        detach_longest_round_us: detach_longest,
        stream_sent: field("sent"),
        stream_lost: field("lost"),
        nodes: config.nodes,
        nodes_sync_seconds,
        next_hops_seconds,
    })
}

fn sync(client: &mut Client, tables: TableSpec) -> anyhow::Result<()> {
    match client.request(&Request::FullSync { tables })? {
        Response::Ack { rejected, .. } if rejected.is_empty() => Ok(()),
        other => anyhow::bail!("full sync refused: {other:?}"),
    }
}

fn counters(client: &mut Client) -> anyhow::Result<Vec<podlane_core::api::WorkerCounters>> {
    match client.request(&Request::Query { what: Query::Counters })? {
        Response::Counters { workers } => Ok(workers),
        other => anyhow::bail!("unexpected reply to a counters query: {other:?}"),
    }
}

/// The longest round of any worker in the last publication.
fn longest_round(client: &mut Client) -> anyhow::Result<u64> {
    Ok(counters(client)?.iter().map(|w| w.longest_round_us).max().unwrap_or(0))
}

/// Polls every 10 ms until `done` (a count of the daemon's log lines), then a second and a bit
/// more, for the counters covering the end to be published (workers publish once a second);
/// returns the time `done` took and the longest round seen meanwhile.
fn poll_until(
    client: &mut Client,
    started: Instant,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<(f64, u64)> {
    let mut longest = 0;
    let mut polled = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let elapsed = loop {
        if done() {
            break started.elapsed().as_secs_f64();
        }
        if polled.elapsed() >= Duration::from_millis(100) {
            polled = Instant::now();
            longest = longest.max(longest_round(client)?);
        }
        anyhow::ensure!(Instant::now() < deadline, "not done after 120 s");
        interrupt::sleep(Duration::from_millis(10))?;
    };
    let settle = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < settle {
        longest = longest.max(longest_round(client)?);
        interrupt::sleep(Duration::from_millis(50))?;
    }
    Ok((elapsed, longest))
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    format!(
        "{} pods attached in {:.2} s, detached in {:.2} s\n\
         worker's longest round: {} µs idle, {} µs while attaching, {} µs while detaching\n\
         UDP stream between two pods meanwhile: {} sent, {} lost\n\
         {} remote nodes: full sync acknowledged in {:.2} s, every next hop published {:.2} s later\n",
        r.pods,
        r.attach_seconds,
        r.detach_seconds,
        r.idle_longest_round_us,
        r.attach_longest_round_us,
        r.detach_longest_round_us,
        r.stream_sent,
        r.stream_lost,
        r.nodes,
        r.nodes_sync_seconds,
        r.next_hops_seconds
    )
}
