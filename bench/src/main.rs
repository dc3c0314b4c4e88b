//! `podlane-bench`: measurements that are not criterion micro-benchmarks: packets per second,
//! CPU and latency of podlane against the kernel's VXLAN (`pps`), what the tables cost in
//! memory at cluster scale (`tables`) and how long a full sync takes (`sync`). `endpoint` and
//! `forward` are the harness's own helper processes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use podlane_bench::fixture::ClusterParams;
use podlane_bench::memory;
use podlane_bench::pps::{self, Progress};
use podlane_bench::report::{self, Machine};
use podlane_bench::tcp;
use podlane_bench::topology::{Dataplane, Direction, KernelPlacement, Placement, Topology};

#[derive(Parser, Debug)]
#[command(name = "podlane-bench", version, about = "podlane measurements")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct PpsArgs {
    /// A smoke run in well under a minute: every direction and dataplane, 64-byte frames,
    /// one flow, short trials, a coarse search. Explicit options still apply.
    #[arg(long)]
    quick: bool,
    /// Dataplanes to compare [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    dataplanes: Vec<Dataplane>,
    /// Directions [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    directions: Vec<Direction>,
    /// Frame sizes in bytes, FCS included as in RFC 2544, 64–1518 [default: 64,128,512,1518].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(64..=1518))]
    frame_sizes: Vec<u16>,
    /// Number of flows (distinct UDP source ports) [default: 1,1024,65536].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=65536))]
    flows: Vec<u32>,
    /// Length of each trial [default: 1000; --quick: 150].
    #[arg(long, value_parser = clap::value_parser!(u64).range(20..=600_000))]
    trial_ms: Option<u64>,
    /// Steps of the zero-loss binary search at most [default: 8; --quick: 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=30))]
    search_steps: Option<u32>,
    /// Offered rate of the CPU-per-packet trial, packets per second.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..=100_000_000))]
    cpu_rate: u64,
    /// Core of the generators.
    #[arg(long, default_value_t = 0)]
    gen_core: usize,
    /// Cores of the dataplane's workers: podlane runs one worker on each; the bare forward
    /// and the kernel's moved receive work (--kernel-placement) take one [default: the last
    /// core].
    #[arg(long, alias = "dut-core", value_delimiter = ',', value_name = "CORE,...")]
    dut_cores: Vec<usize>,
    /// Receive queues of the node's veth uplink, each with a generator thread on its own core
    /// (cores 0 to N-1; a veth puts a frame on the queue of the core that sent it), for the
    /// decap direction, where frames arrive on the uplink. The kernel receives on each
    /// generator's core; compare podlane with one worker (--dut-cores 1) and one per queue
    /// (--dut-cores 0,1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    queues: u32,
    /// SCHED_FIFO priority of the dataplane's worker (podlane, bare forward), 0 for ordinary
    /// scheduling. The kernel's path runs in softirq, which no thread can preempt; this gives
    /// the userspace workers the same footing against kernel threads on their core (here
    /// DAMON's kdamond took the worker's core for 2-4 ms at a time).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=99))]
    dut_priority: u8,
    /// Where the kernel dataplane's receive work runs: inline (softirq on the core frames
    /// arrive on: the generator's), rps (RPS to the DUT core) or threaded-napi (the receiving
    /// interface's NAPI in a kthread pinned to the DUT core).
    #[arg(long, value_enum, default_value_t = KernelPlacement::Inline)]
    kernel_placement: KernelPlacement,
    /// Print the log of each dataplane process (podlane-dataplane, the bare forwarder) after
    /// its turn.
    #[arg(long)]
    show_logs: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "pps.json")]
    json: PathBuf,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "pps.svg")]
    svg: PathBuf,
    /// Use this existing interface as the node's uplink instead of a veth (it is moved into
    /// the benchmark's node namespace for the run, then back with its addresses). Needs
    /// --remote.
    #[arg(long, value_name = "INTERFACE", requires = "remote")]
    uplink: Option<String>,
    /// ssh target of the machine at the other end of --uplink; it runs `podlane-bench
    /// endpoint` there (podlane-bench must be on its PATH; root login).
    #[arg(long, value_name = "SSH_TARGET", requires = "uplink")]
    remote: Option<String>,
    /// The far end's interface [default: the --uplink name].
    #[arg(long, value_name = "INTERFACE", requires = "remote")]
    remote_interface: Option<String>,
}

#[derive(clap::Args, Debug)]
struct TcpArgs {
    /// A smoke run: every underlay and pair, one stream, one-second runs.
    #[arg(long)]
    quick: bool,
    /// Underlays [default: all]
    #[arg(long, value_delimiter = ',', value_enum)]
    underlays: Vec<tcp::Underlay>,
    /// Which nodes run what, between which pods [default: all]
    #[arg(long, value_delimiter = ',', value_enum)]
    pairs: Vec<tcp::Pair>,
    /// The pod edge of podlane's pods.
    #[arg(long, value_enum, default_value = "tap")]
    pod_edge: tcp::Edge,
    /// How podlane's workers wait when idle.
    #[arg(long, value_enum, default_value = "event")]
    poll: tcp::Poll,
    /// podlane's workers per node, pinned to cores 0 to N-1 (1: one unpinned worker); the
    /// underlay gets as many queues (podlane runs one worker per uplink queue at most).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Run podlane's workers under SCHED_FIFO at this priority (`podlane-dataplane
    /// --realtime-priority`; event mode only). Default: ordinary scheduling.
    #[arg(long, value_name = "PRIORITY", value_parser = clap::value_parser!(u8).range(1..=99))]
    realtime_priority: Option<u8>,
    /// Parallel streams per run [default: 1,4; --quick: 1].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=128))]
    streams: Vec<u32>,
    /// Length of each throughput run [default: 6; --quick: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=600))]
    seconds: Option<u32>,
    /// Length of each request/response run, in seconds [default: 3; --quick: 0.5].
    #[arg(long)]
    rr_seconds: Option<f64>,
    /// Message size of the request/response runs, in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    rr_bytes: u32,
    /// Where to write the JSON results.
    #[arg(long, default_value = "tcp.json")]
    json: PathBuf,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "tcp.svg")]
    svg: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ControlArgs {
    /// A smoke run: 10 pods, 100 nodes.
    #[arg(long)]
    quick: bool,
    /// Pod interfaces attached at once [default: 100; --quick: 10].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pods: Option<u32>,
    /// Remote nodes pushed at once [default: 5000; --quick: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    nodes: Option<u32>,
    /// Datagrams a second of the stream between two pods.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    rate: u32,
    /// Where to write the JSON results.
    #[arg(long, default_value = "control.json")]
    json: PathBuf,
}

#[derive(clap::Args, Debug)]
struct SoakArgs {
    /// A smoke run: 20 s, 200 datagrams/s per flow, a sample every 2 s.
    #[arg(long)]
    quick: bool,
    /// How long to run [default: 30; --quick: 20 s].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1440))]
    minutes: Option<u32>,
    /// Datagrams a second of each of the three flows [default: 500; --quick: 200].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: Option<u32>,
    /// Seconds between samples of memory, threads and counters [default: 10; --quick: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3600))]
    interval: Option<u32>,
    /// Updates a second of the churn on node A.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(10..=10_000))]
    updates_per_second: u32,
    /// Where to write the JSON results.
    #[arg(long, default_value = "soak.json")]
    json: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Packets per second, CPU per packet and latency of podlane, the kernel's VXLAN and a bare
    /// AF_XDP forward, side by side, on a node built in network namespaces (needs root).
    Pps(Box<PpsArgs>),
    /// Pod-to-pod TCP through podlane and the kernel's VXLAN side by side: throughput (iperf3),
    /// CPU per gigabit, retransmissions, request/response rate and latency, on a plain veth
    /// underlay and on one that segments as a NIC without tunnel offloads (needs root).
    Tcp(TcpArgs),
    /// What control work costs the data path: pods attached and detached under a UDP stream
    /// (the worker's longest loop round, the stream's loss), and next hops at many nodes
    /// (needs root).
    Control(ControlArgs),
    /// A cluster (two podlane nodes, a kernel node) left running under table churn, with a
    /// dataplane restarted half-way: loss on flows it does not touch, memory and threads
    /// over time, counters that grew (needs root).
    Soak(SoakArgs),
    /// Prints the table of a JSON file written by `pps` and, with --svg, draws its chart again
    /// (for results copied back from VMs, or a chart lost).
    Report {
        /// The JSON results.
        json: PathBuf,
        /// Where to write the SVG chart.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// (internal) A traffic generator/sink on one interface, driven over stdin/stdout.
    #[command(hide = true)]
    Endpoint {
        #[arg(long)]
        interface: String,
        #[arg(long)]
        core: Option<usize>,
    },
    /// (internal) The bare AF_XDP forward baseline.
    #[command(hide = true)]
    Forward {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        core: Option<usize>,
        /// SCHED_FIFO priority (1-99); default: ordinary scheduling.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
        realtime_priority: Option<u8>,
    },
    /// Time a control-protocol full sync as the dataplane handles it: decode the frame's
    /// JSON, then build and publish the snapshot (defaults: 5,000 nodes, 100,000 endpoints).
    Sync {
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
        nodes: u32,
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=4_000_000))]
        endpoints: u32,
        /// Rules of the policy the endpoints share.
        #[arg(long, default_value_t = 100)]
        rules: u32,
        /// Timed runs (the best and the worst are reported).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
    },
    /// Build a synthetic cluster's tables and report their memory (defaults: the foundation
    /// issue's target — 5,000 nodes, 100,000 pods, 250 local, 1,000 rules per local pod).
    Tables {
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
        nodes: u32,
        /// /26 pod blocks per node (routes = nodes × blocks).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=64))]
        blocks_per_node: u32,
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=4096))]
        local_endpoints: u32,
        #[arg(long, default_value_t = 100_000)]
        cluster_endpoints: u32,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rules: u32,
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
        peers_per_rule: u32,
        /// Distinct policies among local pods (1: all share one; = local endpoints: each its own).
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=4096))]
        distinct_policies: u32,
        /// Also write the tables as a JSON tables file (for `podlane-dataplane --check`).
        #[arg(long, value_name = "FILE")]
        write_json: Option<std::path::PathBuf>,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A progress bar on standard error when it is a terminal; result lines on standard output.
struct Bar {
    done: usize,
    total: usize,
    tty: bool,
    current: String,
}

impl Bar {
    fn draw(&self) {
        if self.tty {
            let width = 30;
            let filled = (self.done * width).checked_div(self.total).unwrap_or(0).min(width);
            eprint!(
                "\r\x1b[K[{}{}] {}/{} {}",
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.done,
                self.total,
                self.current
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

impl Progress for Bar {
    fn trial(&mut self, what: &str) {
        self.done += 1;
        self.current = what.to_owned();
        self.draw();
    }

    fn line(&mut self, text: &str) {
        self.clear();
        println!("{text}");
        self.draw();
    }
}

/// `given`, or `default` when the option was not given.
fn or<T>(given: Vec<T>, default: Vec<T>) -> Vec<T> {
    if given.is_empty() { default } else { given }
}

fn pps_command(args: PpsArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let dut_cores = or(args.dut_cores, vec![cores - 1]);
    for (flag, core) in std::iter::once(("--gen-core", args.gen_core))
        .chain(dut_cores.iter().map(|&c| ("--dut-cores", c)))
    {
        anyhow::ensure!(core < cores, "{flag} {core}: this machine has cores 0 to {}", cores - 1);
    }
    let queues = args.queues as usize;
    let gen_cores: Vec<usize> =
        if queues > 1 { (0..queues).collect() } else { vec![args.gen_core] };
    if queues > 1 {
        anyhow::ensure!(
            args.directions.iter().all(|&d| d == Direction::Decap),
            "--queues {queues}: only decap arrives on the uplink's queues; use --directions decap"
        );
        anyhow::ensure!(
            queues <= cores,
            "--queues {queues}: each queue needs a generator on its own core and this machine \
             has {cores}"
        );
        anyhow::ensure!(
            args.uplink.is_none(),
            "--queues is for the veth uplink; a real --uplink keeps its own queues and RSS"
        );
        anyhow::ensure!(
            !args.dataplanes.contains(&Dataplane::BareAfXdp),
            "--queues {queues}: the bare forward reads one queue; leave bare-af-xdp out"
        );
        anyhow::ensure!(
            args.kernel_placement == KernelPlacement::Inline,
            "--queues {queues}: the kernel receives inline on each generator's core; drop \
             --kernel-placement"
        );
    } else {
        anyhow::ensure!(
            dut_cores.len() == 1 || !args.dataplanes.iter().any(|&d| d != Dataplane::Podlane),
            "--dut-cores with several cores compares podlane's workers; add --dataplanes podlane \
             (or --queues to give the kernel a queue per core)"
        );
    }
    let default_dataplanes = if queues > 1 {
        vec![Dataplane::Kernel, Dataplane::Podlane]
    } else {
        vec![Dataplane::Kernel, Dataplane::Podlane, Dataplane::BareAfXdp]
    };
    let default_directions = if queues > 1 {
        vec![Direction::Decap]
    } else {
        vec![Direction::Encap, Direction::Decap, Direction::Local]
    };
    anyhow::ensure!(
        testbed::is_root(),
        "podlane-bench pps builds network namespaces and attaches XDP programs: run it as root"
    );
    let quick = args.quick;
    let config = pps::Config {
        dataplanes: or(args.dataplanes, default_dataplanes),
        directions: or(args.directions, default_directions),
        frame_sizes: or(
            args.frame_sizes.into_iter().map(usize::from).collect(),
            if quick { vec![64] } else { vec![64, 128, 512, 1518] },
        ),
        flows: or(args.flows, if quick { vec![1] } else { vec![1, 1024, 65536] }),
        trial_ms: args.trial_ms.unwrap_or(if quick { 150 } else { 1000 }),
        search_steps: args.search_steps.unwrap_or(if quick { 4 } else { 8 }),
        resolution: 0.01,
        cpu_rate_pps: args.cpu_rate as f64,
        latency_fractions: vec![0.1, 0.5, 0.9],
        gen_core: args.gen_core,
        queues: args.queues,
        gen_cores,
        dut_cores,
        dut_priority: (args.dut_priority > 0).then_some(args.dut_priority),
        kernel_placement: args.kernel_placement,
        show_logs: args.show_logs,
    };
    dataplane::io::install_stop_handlers()?;
    let machine = Machine::this();
    let list = |cores: &[usize]| cores.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    println!(
        "podlane-bench pps on {} CPUs ({}), Linux {}: {} uplink queue(s), generators on core(s) {}, dataplane workers on core(s) {}, the kernel's receive work {}",
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        config.queues,
        list(&config.gen_cores),
        list(&config.dut_cores),
        match config.kernel_placement {
            KernelPlacement::Inline => "inline (softirq where frames arrive)".to_owned(),
            KernelPlacement::Rps => format!("moved by RPS to core {}", config.dut_cores[0]),
            KernelPlacement::ThreadedNapi =>
                format!("in threaded NAPI pinned to core {}", config.dut_cores[0]),
        }
    );
    let placement = Placement {
        uplink: args.uplink,
        remote: args.remote,
        remote_interface: args.remote_interface,
    };
    let mut topology = Topology::build(&placement, config.gen_core, config.queues)
        .context("building the benchmark's network")?;
    let mut bar = Bar {
        done: 0,
        total: config.total_trials(),
        tty: std::io::stderr().is_terminal(),
        current: String::new(),
    };
    let result = pps::run(&mut topology, &config, &mut bar);
    bar.clear();
    drop(topology);
    let rows = result?;
    println!();
    print!("{}", report::table(&rows));
    println!(
        "frame in/out: RFC 2544 sizes (FCS included) of the pod's frame and of the same frame on the underlay (VXLAN adds 50)"
    );
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let doc = report::Report {
        schema: 1,
        command,
        machine: machine.clone(),
        config: &config,
        rows: &rows,
    };
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    std::fs::write(&args.svg, report::svg(&rows, &machine))
        .with_context(|| format!("writing {}", args.svg.display()))?;
    println!("results: {} and {}", args.json.display(), args.svg.display());
    Ok(())
}

/// The line a run starts with: which command, on what machine; the machine for its JSON.
fn announce(command: &str) -> Machine {
    let machine = Machine::this();
    println!(
        "podlane-bench {command} on {} CPUs ({}), Linux {}",
        machine.cpus, machine.cpu_model, machine.kernel
    );
    machine
}

/// Writes a run's JSON (schema 1: the command line, the machine, its config and its report).
fn write_report(
    path: &std::path::Path,
    machine: &Machine,
    config: &impl serde::Serialize,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "schema": 1,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine,
        "config": config,
        "report": report,
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results: {}", path.display());
    Ok(())
}

fn control_command(args: ControlArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        testbed::is_root(),
        "podlane-bench control builds network namespaces and attaches XDP programs: run it as root"
    );
    let config = podlane_bench::control::Config {
        pods: args.pods.unwrap_or(if args.quick { 10 } else { 100 }),
        nodes: args.nodes.unwrap_or(if args.quick { 100 } else { 5000 }),
        rate: args.rate,
        stream_seconds: if args.quick { 6 } else { 12 },
    };
    testbed::netns::remove_stale("bench");
    podlane_bench::interrupt::install()?;
    let machine = announce("control");
    let report = podlane_bench::control::run(&config, &mut |step| eprintln!("  {step}"))
        .map_err(podlane_bench::interrupt::explain)?;
    podlane_bench::interrupt::check()?;
    print!("{}", podlane_bench::control::table(&report));
    write_report(&args.json, &machine, &config, &report)
}

fn soak_command(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        testbed::is_root(),
        "podlane-bench soak builds network namespaces and attaches XDP programs: run it as root"
    );
    let quick = args.quick;
    let config = podlane_bench::soak::Config {
        seconds: match (args.minutes, quick) {
            (Some(minutes), _) => minutes * 60,
            (None, true) => 20,
            (None, false) => 30 * 60,
        },
        rate: args.rate.unwrap_or(if quick { 200 } else { 500 }),
        interval: args.interval.unwrap_or(if quick { 2 } else { 10 }),
        updates_per_second: args.updates_per_second,
    };
    testbed::netns::remove_stale("soak");
    podlane_bench::interrupt::install()?;
    let machine = announce("soak");
    let report = podlane_bench::soak::run(&config, &mut |step| eprintln!("  {step}"))
        .map_err(podlane_bench::interrupt::explain)?;
    podlane_bench::interrupt::check()?;
    print!("{}", podlane_bench::soak::table(&report));
    write_report(&args.json, &machine, &config, &report)
}

fn tcp_command(args: TcpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        testbed::is_root(),
        "podlane-bench tcp builds network namespaces and attaches XDP programs: run it as root"
    );
    let quick = args.quick;
    let rr_seconds = args.rr_seconds.unwrap_or(if quick { 0.5 } else { 3.0 });
    anyhow::ensure!(
        rr_seconds > 0.0 && rr_seconds <= 600.0,
        "--rr-seconds {rr_seconds}: give a length between 0 and 600 seconds"
    );
    anyhow::ensure!(
        args.realtime_priority.is_none() || args.poll == tcp::Poll::Event,
        "--realtime-priority with --poll spin: a spinning real-time worker would starve its \
         core; use --poll event with it"
    );
    let config = tcp::Config {
        underlays: or(args.underlays, vec![tcp::Underlay::Veth, tcp::Underlay::Nic]),
        pairs: or(
            args.pairs,
            vec![
                tcp::Pair::KernelKernel,
                tcp::Pair::PodlanePodlane,
                tcp::Pair::PodlaneKernel,
                tcp::Pair::KernelSameNode,
                tcp::Pair::PodlaneSameNode,
                tcp::Pair::KernelService,
                tcp::Pair::PodlaneService,
            ],
        ),
        streams: or(args.streams, if quick { vec![1] } else { vec![1, 4] }),
        seconds: args.seconds.unwrap_or(if quick { 1 } else { 6 }),
        pod_edge: args.pod_edge,
        poll: args.poll,
        workers: args.workers as usize,
        realtime_priority: args.realtime_priority,
        rr_seconds,
        rr_bytes: args.rr_bytes as usize,
    };
    testbed::netns::remove_stale("bench");
    podlane_bench::interrupt::install()?;
    let machine = Machine::this();
    let title = format!(
        "podlane-bench tcp on {} CPUs ({}), Linux {}: iperf3, {} s per run, podlane's pods on {}",
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        config.seconds,
        config.pod_edge.name()
    );
    println!("{title}");
    let (rows, rr) = tcp::run(&config, &mut |step| eprintln!("  {step}"))
        .map_err(podlane_bench::interrupt::explain)?;
    podlane_bench::interrupt::check()?;
    print!("{}", tcp::table(&rows, &rr));
    let doc = serde_json::json!({
        "schema": 2,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine,
        "config": config,
        "rows": rows,
        "request_response": rr,
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    std::fs::write(&args.svg, tcp::svg(&rows, &title))
        .with_context(|| format!("writing {}", args.svg.display()))?;
    println!("results: {} and {}", args.json.display(), args.svg.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Pps(args) => pps_command(*args)?,
        Command::Tcp(args) => tcp_command(args)?,
        Command::Control(args) => control_command(args)?,
        Command::Soak(args) => soak_command(args)?,
        Command::Report { json, svg } => {
            let saved = report::Saved::read(&json)?;
            let mut text = format!("{}\n{}", saved.command, report::table(&saved.rows));
            if let Some(svg) = svg {
                std::fs::write(&svg, report::svg(&saved.rows, &saved.machine))
                    .with_context(|| format!("writing {}", svg.display()))?;
                text += &format!("chart: {}\n", svg.display());
            }
            // Piped into `head`, a closed pipe ends the output, not the program with a panic.
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("writing the table")?,
            }
        }
        Command::Endpoint { interface, core } => podlane_bench::endpoint::serve(&interface, core)?,
        Command::Forward { from, to, core, realtime_priority } => {
            podlane_bench::forward::run(&from, &to, core, realtime_priority)?
        }
        Command::Sync { nodes, endpoints, rules, runs } => {
            let params = ClusterParams {
                nodes: nodes as usize,
                rules_per_policy: rules as usize,
                ..ClusterParams::memory_target()
            };
            let report = podlane_bench::sync::measure(&params, endpoints as usize, runs as usize)?;
            println!(
                "full sync: {nodes} nodes, {endpoints} endpoints, 1 policy of {rules} rules; frame {}",
                mib(report.frame_bytes as u64)
            );
            for (i, run) in report.runs.iter().enumerate() {
                println!(
                    "run {}: decode {:.0?}, build and publish {:.0?}, total {:.0?}",
                    i + 1,
                    run.decode,
                    run.apply,
                    run.decode + run.apply
                );
            }
        }
        Command::Tables {
            nodes,
            blocks_per_node,
            local_endpoints,
            cluster_endpoints,
            rules,
            peers_per_rule,
            distinct_policies,
            write_json,
        } => {
            let usable = blocks_per_node as usize * 62;
            anyhow::ensure!(
                local_endpoints as usize <= usable,
                "--local-endpoints {local_endpoints} does not fit in {blocks_per_node} /26 blocks \
                 ({usable} addresses): raise --blocks-per-node"
            );
            anyhow::ensure!(
                distinct_policies <= local_endpoints,
                "--distinct-policies {distinct_policies} exceeds --local-endpoints {local_endpoints}"
            );
            let params = ClusterParams {
                nodes: nodes as usize,
                blocks_per_node: blocks_per_node as usize,
                local_endpoints: local_endpoints as usize,
                cluster_endpoints: cluster_endpoints as usize,
                rules_per_policy: rules as usize,
                peers_per_rule: peers_per_rule as usize,
                distinct_policies: distinct_policies as usize,
            };
            let m = memory::measure(&params).context("building the synthetic tables")?;
            println!(
                "cluster: {nodes} nodes, {cluster_endpoints} pods ({local_endpoints} local), {} routes",
                m.routes
            );
            println!(
                "policy:  {} compiled policies, {} rules in all ({rules} per local pod, {peers_per_rule} peers per rule)",
                m.policies, m.policy_rules
            );
            println!("snapshot build time:          {:.2?}", m.build_time);
            println!("snapshot heap (structural):   {}", mib(m.snapshot_bytes as u64));
            println!("  of which compiled policies: {}", mib(m.policy_bytes as u64));
            println!(
                "  per local pod (policies):   {:.1} KiB",
                m.policy_bytes as f64 / 1024.0 / local_endpoints as f64
            );
            println!("process RSS before tables:    {}", mib(m.rss_before_spec));
            println!("process RSS with input spec:  {}", mib(m.rss_with_spec));
            println!("process RSS with snapshot:    {}", mib(m.rss_with_snapshot));
            println!("process peak RSS:             {}", mib(m.peak_rss));
            if let Some(path) = write_json {
                let spec = podlane_bench::fixture::cluster(&params);
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                serde_json::to_writer(std::io::BufWriter::new(file), &spec)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("tables written to {}", path.display());
            }
        }
    }
    Ok(())
}
