//! `podlane-bench pps`: packets per second, CPU per packet and latency of each dataplane in
//! each direction, in one run.
//!
//! For every cell (direction × frame size × flows) the dataplanes take turns — kernel,
//! podlane, bare AF_XDP forward — each running its whole set of trials on the same node, so
//! that drift over a long run touches them alike. A dataplane's trials:
//!
//! 1. **maximum**: the generator sends as fast as it can; delivered pps is what reached the
//!    sink per second. CPU per core is taken from /proc/stat over the trial.
//! 2. **zero loss** (RFC 2544): binary search on the offered rate, starting at the maximum
//!    delivered rate. A step passes when nothing was lost (loss = sent − delivered) *and* the
//!    generator managed to offer at least 99 % of the rate: on veth the receiving side's work
//!    runs in the generator's own system call, so a dataplane too slow for the rate holds the
//!    generator back instead of dropping.
//! 3. **CPU at a fixed rate** (default 1 Mpps offered): nanoseconds of CPU, all cores, per
//!    delivered packet, less the CPU of the generator's pacing loop. What remains
//!    of the harness is the generator's in-kernel frame production and the sink's XDP drop,
//!    the same for every dataplane.
//! 4. **latency** at 10, 50 and 90 % of the zero-loss rate: one-way, from the generator's XDP
//!    program to the sink's, into an HDR histogram.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cpu::{self, CoreUse};
use crate::endpoint::{Client, LatencySummary, Reply, Request};
use crate::topology::{self, Dataplane, Direction, KernelPlacement, LossPlaces, Running, Topology};
use crate::traffic::{self, Hop, Layout, SinkMode, VXLAN_OVERHEAD};

/// What to measure and how long.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub dataplanes: Vec<Dataplane>,
    pub directions: Vec<Direction>,
    pub frame_sizes: Vec<usize>,
    pub flows: Vec<u32>,
    pub trial_ms: u64,
    pub search_steps: u32,
    /// Stop searching when (high − low) / high falls below this.
    pub resolution: f64,
    pub cpu_rate_pps: f64,
    pub latency_fractions: Vec<f64>,
    /// Core of the endpoints (the generator's thread when it sends from one core).
    pub gen_core: usize,
    /// Receive queues of the node's uplink (decap arrives on them).
    pub queues: u32,
    /// Cores that send, one per uplink queue when there are several: on a multi-queue veth
    /// a frame lands on the queue of the core that sent it.
    pub gen_cores: Vec<usize>,
    /// Cores of the dataplane's workers (podlane runs one worker on each; the bare forward
    /// and the kernel's moved receive work use the first).
    pub dut_cores: Vec<usize>,
    /// SCHED_FIFO priority of the dataplane's worker; `None`: ordinary scheduling.
    pub dut_priority: Option<u8>,
    /// Where the kernel dataplane's receive work runs.
    pub kernel_placement: KernelPlacement,
    /// Print each dataplane process's log after its turn.
    #[serde(skip)]
    pub show_logs: bool,
}

impl Config {
    /// Trials per dataplane and cell, for the progress bar.
    fn trials_per_row(&self) -> usize {
        2 + self.search_steps as usize + self.latency_fractions.len()
    }

    pub fn total_trials(&self) -> usize {
        self.dataplanes.len()
            * self.directions.len()
            * self.frame_sizes.len()
            * self.flows.len()
            * self.trials_per_row()
    }
}

/// One trial's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Requested rate; `None`: as fast as possible.
    pub rate_pps: Option<f64>,
    pub sent: u64,
    pub delivered: u64,
    pub seconds: f64,
    /// What the generator actually offered, per second.
    pub offered_pps: f64,
    pub delivered_pps: f64,
    pub lost: u64,
    #[serde(skip)]
    pub cores: Vec<CoreUse>,
    /// CPU of the generator's pacing loop, when it ran on this machine.
    #[serde(skip)]
    pub generator_pacing_ns: u64,
}

impl Trial {
    /// Busy CPU time of all cores less the generator's pacing loop.
    fn dataplane_busy_ns(&self) -> u64 {
        self.cores.iter().map(|c| c.busy_ns).sum::<u64>().saturating_sub(self.generator_pacing_ns)
    }

    fn passes(&self) -> bool {
        let rate = self.rate_pps.unwrap_or(0.0);
        self.lost == 0 && self.delivered > 0 && self.offered_pps >= 0.99 * rate
    }
}

/// A step of the zero-loss search, as printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub rate_pps: f64,
    pub offered_pps: f64,
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub pass: bool,
    /// Drop and error counters of the path that grew during the step ("where/interface
    /// counter": count), when any did.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lost_at: std::collections::BTreeMap<String, u64>,
    /// Milliseconds the hypervisor took from each core during the step (`/proc/stat` steal,
    /// in 10 ms ticks).
    #[serde(default)]
    pub steal_ms: Vec<u64>,
    /// The longest total time one of the userspace dataplane's forwarding threads spent
    /// runnable but waiting for a core during the step (its schedstat run delay), in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dut_wait_ms: Option<f64>,
}

/// Latency at one offered rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyPoint {
    pub fraction: f64,
    pub rate_pps: f64,
    #[serde(flatten)]
    pub summary: LatencySummary,
}

/// One core's busy share at the zero-loss rate (flat out when no rate passed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoreShare {
    pub core: usize,
    pub busy: f64,
    pub user: f64,
    pub system: f64,
    pub softirq: f64,
}

/// One row of the results: a dataplane in one cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub dataplane: Dataplane,
    pub direction: Direction,
    /// RFC 2544 size of the frame the pod sends or receives (FCS included).
    pub frame_size: usize,
    /// Size of the same frame encapsulated, as it crosses the underlay.
    pub outer_frame_size: usize,
    pub flows: u32,
    pub max_pps: f64,
    /// What the generator managed to offer during the maximum trial.
    pub max_offered_pps: f64,
    pub zero_loss_pps: f64,
    pub search: Vec<Step>,
    pub gbps_inner: f64,
    pub gbps_outer: f64,
    pub cpu_rate_pps: f64,
    pub cpu_delivered_pps: f64,
    pub cpu_ns_per_packet: Option<f64>,
    pub pps_per_busy_core: Option<f64>,
    /// Cores kept busy at the zero-loss rate, less the generator's pacing loop.
    pub busy_cores: f64,
    /// Each core's busy share at the zero-loss rate (generator included).
    pub cores: Vec<CoreShare>,
    pub latency: Vec<LatencyPoint>,
    /// `max_pps` and `zero_loss_pps` over the kernel's in the same cell.
    pub max_vs_kernel: Option<f64>,
    pub zero_loss_vs_kernel: Option<f64>,
    /// Whether latency samples are valid (generator and sink share a clock).
    pub latency_valid: bool,
}

/// Where a run reports as it goes: `line` for results and search steps (standard output),
/// `trial` as each trial starts (a progress bar on a terminal).
pub trait Progress {
    fn trial(&mut self, what: &str);
    fn line(&mut self, text: &str);
}

/// Who generates, who sinks, and what each sees in one (dataplane, direction, size).
struct Path<'t> {
    generator: &'t mut Client,
    sink: &'t mut Client,
    frame: Vec<u8>,
    layout: Layout,
    sink_layout: Layout,
    gen_cores: Vec<usize>,
    loss_places: &'t LossPlaces,
    /// The userspace dataplane's process, whose forwarding threads' scheduling delays each
    /// search step records.
    dut: Option<u32>,
}

/// Nanoseconds each forwarding thread of process `pid` has waited, runnable, for a core
/// (`/proc/PID/task/TID/schedstat`, second field), by thread: podlane's `podlane-worker-N`,
/// else (the bare forward) every thread of the process.
fn run_delays(pid: u32) -> std::collections::BTreeMap<u32, u64> {
    let mut delays = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return delays };
    let mut all = std::collections::BTreeMap::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let Some(delay) = stat.split_whitespace().nth(1).and_then(|d| d.parse::<u64>().ok()) else {
            continue;
        };
        all.insert(tid, delay);
        if comm.starts_with("podlane-worker") {
            delays.insert(tid, delay);
        }
    }
    if delays.is_empty() { all } else { delays }
}

/// The longest wait of one thread between two readings, in milliseconds.
fn longest_wait_ms(
    before: &std::collections::BTreeMap<u32, u64>,
    after: &std::collections::BTreeMap<u32, u64>,
) -> Option<f64> {
    after
        .iter()
        .filter_map(|(tid, a)| Some(a.saturating_sub(*before.get(tid)?)))
        .max()
        .map(|ns| ns as f64 / 1e6)
}

fn path<'t>(
    t: &'t mut Topology,
    config: &Config,
    dataplane: Dataplane,
    direction: Direction,
    size: usize,
    dut: Option<u32>,
) -> Path<'t> {
    let pod1 = t.pod1_hop();
    // The pod's frames go to the MAC its gateway resolves to: podlane answers ARP for the
    // gateway with its own gateway MAC (as Calico does); the kernel node with the host-side
    // veth's MAC (proxy ARP).
    let gateway_mac = match dataplane {
        Dataplane::Podlane => podlane_core::engine::EngineConfig::default().gateway_mac.0,
        _ => t.host1_mac,
    };
    let to_gateway = |ip| Hop { mac: gateway_mac, ip };
    let (frame, layout) = match direction {
        Direction::Encap => traffic::udp_frame(size, pod1, to_gateway(topology::REMOTE_POD_IP)),
        Direction::Local => traffic::udp_frame(size, pod1, to_gateway(topology::POD2_IP)),
        Direction::Decap => {
            let inner = traffic::udp_frame(
                size,
                Hop { mac: topology::REMOTE_VTEP_MAC, ip: topology::REMOTE_POD_IP },
                Hop { mac: topology::NODE_VTEP_MAC, ip: topology::POD1_IP },
            );
            traffic::vxlan_frame(
                &inner,
                Hop { mac: t.remote.mac, ip: t.remote_ip },
                Hop { mac: t.uplink_mac, ip: t.node_ip },
                topology::PROFILE.port,
                topology::PROFILE.vni,
            )
        }
    };
    // What arrives: encapsulated, decapsulated, or (bare forward) the frame as sent.
    let sink_layout = match (dataplane, direction) {
        (Dataplane::BareAfXdp, _) | (_, Direction::Local) => layout.clone(),
        (_, Direction::Encap) => Layout {
            len: layout.len + VXLAN_OVERHEAD,
            ports: vec![],
            stamp: layout.stamp + VXLAN_OVERHEAD,
        },
        (_, Direction::Decap) => Layout {
            len: layout.len - VXLAN_OVERHEAD,
            ports: vec![],
            stamp: layout.stamp - VXLAN_OVERHEAD,
        },
    };
    let (generator, sink) = match direction {
        Direction::Encap => (&mut t.pod1, &mut t.remote),
        Direction::Decap => (&mut t.remote, &mut t.pod1),
        Direction::Local => (&mut t.pod1, &mut t.pod2),
    };
    let gen_cores = config.gen_cores.clone();
    let loss_places = &t.loss_places;
    Path { generator, sink, frame, layout, sink_layout, gen_cores, loss_places, dut }
}

/// Runs one trial at `rate` (None: flat out).
fn trial(p: &mut Path<'_>, rate: Option<f64>, ms: u64) -> anyhow::Result<Trial> {
    run_trial(p, rate, ms, false)
}

/// A trial; `fine` sends in small bursts (latency trials).
fn run_trial(p: &mut Path<'_>, rate: Option<f64>, ms: u64, fine: bool) -> anyhow::Result<Trial> {
    let before = p.sink.count()?;
    let cpu_before = cpu::sample();
    let cores = p.gen_cores.clone();
    let reply = p.generator.call(&Request::Send { rate, duration_ms: ms, fine, cores })?;
    let cpu_after = cpu::sample();
    // Frames still in rings arrive within a few milliseconds.
    std::thread::sleep(Duration::from_millis(30));
    let delivered = p.sink.count()?.saturating_sub(before);
    let Reply::Sent { frames: sent, elapsed_ns, pacing_ns } = reply else {
        anyhow::bail!("generator replied {reply:?} to send");
    };
    let seconds = elapsed_ns.max(1) as f64 / 1e9;
    Ok(Trial {
        rate_pps: rate,
        sent,
        delivered,
        seconds,
        offered_pps: sent as f64 / seconds.max(ms as f64 / 1000.0),
        delivered_pps: delivered as f64 / seconds,
        lost: sent.saturating_sub(delivered),
        cores: cpu::between(&cpu_before, &cpu_after),
        generator_pacing_ns: if p.generator.local { pacing_ns } else { 0 },
    })
}

fn sink_mode(p: &mut Path<'_>, mode: SinkMode) -> anyhow::Result<()> {
    p.sink.call(&Request::Sink { layout: p.sink_layout.clone(), mode }).map(drop)
}

/// Measures one dataplane in one cell; `dataplane` must already be forwarding.
#[allow(clippy::too_many_arguments)]
fn measure(
    t: &mut Topology,
    config: &Config,
    dut: Option<u32>,
    dataplane: Dataplane,
    direction: Direction,
    size: usize,
    flows: u32,
    progress: &mut dyn Progress,
) -> anyhow::Result<Row> {
    let mut p = path(t, config, dataplane, direction, size, dut);
    p.generator.call(&Request::Generator {
        frame: p.frame.clone(),
        layout: p.layout.clone(),
        flows,
    })?;
    sink_mode(&mut p, SinkMode::Count)?;
    drop(p);
    // Attaching XDP to a veth can flush its peer's neighbour entries, permanent ones too:
    // put the node's back before any frame needs them.
    t.pin_neighbours()?;
    let mut p = path(t, config, dataplane, direction, size, dut);
    let label = format!("{} {direction:?} {size}B {flows} flow(s)", dataplane.label());
    let ms = config.trial_ms;
    // A short warm-up so that neighbour entries, fill rings and caches are in place.
    trial(&mut p, Some(10_000.0), 50)?;

    progress.trial(&format!("{label}: maximum"));
    let max = trial(&mut p, None, ms)?;
    progress.line(&format!(
        "  {label}: maximum {:.3} Mpps delivered of {:.3} offered",
        max.delivered_pps / 1e6,
        max.offered_pps / 1e6
    ));

    // Zero-loss binary search between nothing and what the generator offered flat out,
    // starting at the rate delivered flat out. (Flat out, the generator competes with the
    // dataplane's receive work on its core, so a paced rate can deliver more.)
    let (mut low, mut high) = (0.0f64, max.offered_pps.max(max.delivered_pps).max(1.0));
    let mut rate = max.delivered_pps.max(high / 100.0);
    let mut best_delivered = max.delivered_pps;
    let mut at_zero_loss: Option<Trial> = None;
    let mut search = Vec::new();
    for _ in 0..config.search_steps {
        if dataplane::io::stop_requested() {
            anyhow::bail!("interrupted");
        }
        progress.trial(&format!("{label}: zero-loss search at {:.3} Mpps", rate / 1e6));
        let counters_before = p.loss_places.read();
        let waits_before = p.dut.map(run_delays).unwrap_or_default();
        let step = trial(&mut p, Some(rate), ms)?;
        let waits_after = p.dut.map(run_delays).unwrap_or_default();
        let dut_wait_ms = longest_wait_ms(&waits_before, &waits_after);
        let lost_at = LossPlaces::grown(&counters_before, &p.loss_places.read());
        let pass = step.passes();
        best_delivered = best_delivered.max(step.delivered_pps);
        progress.line(&format!(
            "    search {:>2}: {:.3} Mpps offered ({:.3} achieved), {} sent, {} delivered, {} lost: {}",
            search.len() + 1,
            rate / 1e6,
            step.offered_pps / 1e6,
            step.sent,
            step.delivered,
            step.lost,
            if pass { "pass" } else { "FAIL" }
        ));
        if !lost_at.is_empty() {
            let places: Vec<String> = lost_at.iter().map(|(k, v)| format!("{k} +{v}")).collect();
            progress.line(&format!("      drop counters: {}", places.join(", ")));
        }
        if let Some(ms) = dut_wait_ms {
            progress.line(&format!(
                "      dataplane's forwarding thread waited {ms:.1} ms in all for a core while runnable"
            ));
        }
        let steal_ms: Vec<u64> = step.cores.iter().map(|c| c.steal_ns / 1_000_000).collect();
        if steal_ms.iter().any(|&ms| ms > 0) {
            let cores: Vec<String> =
                steal_ms.iter().enumerate().map(|(i, ms)| format!("core {i} {ms} ms")).collect();
            progress.line(&format!("      stolen by the hypervisor: {}", cores.join(", ")));
        }
        search.push(Step {
            rate_pps: rate,
            offered_pps: step.offered_pps,
            sent: step.sent,
            delivered: step.delivered,
            lost: step.lost,
            pass,
            lost_at,
            steal_ms,
            dut_wait_ms,
        });
        if pass {
            low = rate;
            at_zero_loss = Some(step);
        } else {
            high = rate;
        }
        if (high - low) / high < config.resolution {
            break;
        }
        rate = (low + high) / 2.0;
    }
    let zero_loss = low;

    progress.trial(&format!("{label}: CPU at {:.2} Mpps", config.cpu_rate_pps / 1e6));
    let at_rate = trial(&mut p, Some(config.cpu_rate_pps), ms)?;
    let cpu_ns_per_packet = (at_rate.delivered > 0)
        .then(|| at_rate.dataplane_busy_ns() as f64 / at_rate.delivered as f64);
    // Steady state at the zero-loss rate (flat out when nothing passed) says how many cores
    // the dataplane keeps busy and which.
    let steady = at_zero_loss.as_ref().unwrap_or(&max);
    let busy_cores = steady.dataplane_busy_ns() as f64 / (steady.seconds * 1e9);
    let pps_per_busy_core = (busy_cores > 0.0).then(|| steady.delivered_pps / busy_cores);

    // Latency at fractions of the zero-loss rate (of the maximum when no rate was loss-free).
    let base = if zero_loss > 0.0 { zero_loss } else { max.delivered_pps };
    let mut latency = Vec::new();
    sink_mode(&mut p, SinkMode::Latency)?;
    for &fraction in &config.latency_fractions {
        if dataplane::io::stop_requested() {
            anyhow::bail!("interrupted");
        }
        let rate = (base * fraction).max(1000.0);
        progress.trial(&format!(
            "{label}: latency at {:.0} % ({:.3} Mpps)",
            fraction * 100.0,
            rate / 1e6
        ));
        p.sink.call(&Request::LatencyStart)?;
        let t = run_trial(&mut p, Some(rate), ms, true);
        let summary = match p.sink.call(&Request::LatencyStop)? {
            Reply::Latency(s) => s,
            other => anyhow::bail!("sink replied {other:?} to latency_stop"),
        };
        t?;
        latency.push(LatencyPoint { fraction, rate_pps: rate, summary });
    }
    sink_mode(&mut p, SinkMode::Count)?;
    let latency_valid = p.generator.local && p.sink.local;

    let outer_frame_size = match direction {
        Direction::Local => size,
        _ => size + VXLAN_OVERHEAD,
    };
    Ok(Row {
        dataplane,
        direction,
        frame_size: size,
        outer_frame_size,
        flows,
        max_pps: best_delivered,
        max_offered_pps: max.offered_pps,
        zero_loss_pps: zero_loss,
        search,
        gbps_inner: best_delivered * size as f64 * 8.0 / 1e9,
        gbps_outer: best_delivered * outer_frame_size as f64 * 8.0 / 1e9,
        cpu_rate_pps: config.cpu_rate_pps,
        cpu_delivered_pps: at_rate.delivered_pps,
        cpu_ns_per_packet,
        pps_per_busy_core,
        busy_cores,
        cores: steady
            .cores
            .iter()
            .map(|c| {
                let share =
                    |ns: u64| if c.total_ns == 0 { 0.0 } else { ns as f64 / c.total_ns as f64 };
                CoreShare {
                    core: c.core,
                    busy: c.busy_fraction(),
                    user: share(c.user_ns),
                    system: share(c.system_ns),
                    softirq: share(c.softirq_ns),
                }
            })
            .collect(),
        latency,
        max_vs_kernel: None,
        zero_loss_vs_kernel: None,
        latency_valid,
    })
}

/// Runs every cell; rows come back in run order with ratios to the kernel filled in.
pub fn run(
    topology: &mut Topology,
    config: &Config,
    progress: &mut dyn Progress,
) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    for &direction in &config.directions {
        for &size in &config.frame_sizes {
            for &flows in &config.flows {
                progress.line(&format!("{direction:?}, {size}-byte frames, {flows} flow(s):"));
                for &dataplane in &config.dataplanes {
                    if dataplane::io::stop_requested() {
                        anyhow::bail!("interrupted");
                    }
                    let running = Running::start(
                        topology,
                        dataplane,
                        direction,
                        &config.dut_cores,
                        config.dut_priority,
                        config.kernel_placement,
                    )?;
                    let dut = running.pid();
                    let row =
                        measure(topology, config, dut, dataplane, direction, size, flows, progress);
                    let log = running.stop();
                    if config.show_logs && !log.is_empty() {
                        progress.line(&format!(
                            "--- {} log ---\n{}",
                            dataplane.label(),
                            log.trim_end()
                        ));
                    }
                    match row {
                        Ok(row) => rows.push(row),
                        Err(e) => {
                            return Err(e.context(format!(
                                "{} ({direction:?}, {size} B); its log:\n{log}",
                                dataplane.label()
                            )));
                        }
                    }
                }
            }
        }
    }
    fill_ratios(&mut rows);
    Ok(rows)
}

fn fill_ratios(rows: &mut [Row]) {
    let kernel: Vec<(Direction, usize, u32, f64, f64)> = rows
        .iter()
        .filter(|r| r.dataplane == Dataplane::Kernel)
        .map(|r| (r.direction, r.frame_size, r.flows, r.max_pps, r.zero_loss_pps))
        .collect();
    for row in rows.iter_mut() {
        if let Some(&(_, _, _, max, zero)) =
            kernel.iter().find(|k| (k.0, k.1, k.2) == (row.direction, row.frame_size, row.flows))
        {
            row.max_vs_kernel = (max > 0.0).then(|| row.max_pps / max);
            row.zero_loss_vs_kernel = (zero > 0.0).then(|| row.zero_loss_pps / zero);
        }
    }
}
