//! The `podlane-dataplane` daemon: wires the tables, the pipeline and AF_XDP together.
//!
//! Start-up, in order: check privileges; read the uplink's MAC, MTU and queue count; load the
//! tables; create the uplink's XSKMAP and program; start one [`worker`] per configured core
//! (each binds its uplink queues into the map); attach the uplink program (native XDP, or
//! generic as the fallback or by choice). Then the main thread keeps the underlay next hops
//! resolved ([`neighbours`]) and logs counters, until SIGINT or SIGTERM: it then stops the
//! workers, which close their sockets and detach their pods' programs, and drops the uplink
//! link. A crash or SIGKILL leaves nothing either: every attachment is a BPF link owned by
//! the process.

mod attacher;
mod control;
mod host;
mod metrics;
mod neighbours;
mod tables;
mod tunnel;
mod uplink_watch;
mod worker;

pub use control::{Access, ControlError};
pub use host::{HostError, remove as remove_host_interface};
pub use worker::WorkerError;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::api::{DaemonInfo, WorkerCounters};
use crate::engine::EngineConfig;
use crate::io::xdp::{PerCpuArray, XdpError, XdpLink, XdpMode, XdpProgram, XskMap, uplink_passed};
use crate::io::xsk::{BindPreference, UmemConfig};
use crate::io::{self};
use crate::table::{LoadError, TableError, TableSpec};
use tables::Tables;

/// Which XDP attach mode to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpModeChoice {
    /// Native, falling back to generic where the driver has no native XDP.
    Auto,
    Native,
    Generic,
}

/// How a worker waits when its rings are empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Sleep in poll(2) (need_wakeup): least CPU per packet (DESIGN.md).
    Event,
    /// Spin: lowest latency, a full core per worker.
    Spin,
}

/// Everything the daemon is started with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub uplink: String,
    /// The node's underlay address; defaults to the local node's entry in the tables.
    pub node_ip: Option<IpAddr>,
    /// The node's name; defaults to the tables' local node.
    pub node_name: Option<String>,
    pub engine: EngineConfig,
    /// Cores to pin one worker each to; empty: one unpinned worker.
    pub cores: Vec<usize>,
    pub xdp_mode: XdpModeChoice,
    pub bind: BindPreference,
    pub poll_mode: PollMode,
    /// SCHED_FIFO priority of the workers (1–99); `None`: ordinary scheduling.
    pub realtime_priority: Option<u8>,
    /// Chunks per UMEM; `None`: [`default_umem_chunks`].
    pub umem_chunks: Option<u32>,
    /// Initial tables; without them the daemon forwards nothing until the control process
    /// pushes a full sync (and then needs `node_name` and `node_ip`).
    pub tables: Option<PathBuf>,
    /// The control socket; `None`: no socket (tables from the file only).
    pub control_socket: Option<PathBuf>,
    /// The read-only socket (queries only), beside the control socket.
    pub control_socket_ro: Option<PathBuf>,
    /// Who besides root and the daemon's user may use the sockets.
    pub access: Access,
    /// How often counters are logged at debug level.
    pub stats_interval: Duration,
    /// The host interface's name (`podlane0`); `None`: no host path (frames for the node or
    /// leaving the cluster are dropped as `no_host_interface`).
    pub host_interface: Option<String>,
    /// The tunnel-GSO interface's name (`podlane-gso`); `None`: TAP pods' super-packets to
    /// other nodes are cut by the workers ([`tunnel`]).
    pub tunnel_gso: Option<String>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` ([`metrics`]); `None`: nowhere.
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// Why the daemon could not start; each is one clear line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "needs root, or CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_IPC_LOCK \
         (missing: {missing}); run it with sudo"
    )]
    Privileges { missing: String },
    #[error("no interface named {0:?} in this network namespace (see `ip link`)")]
    NoSuchInterface(String),
    #[error("reading the {what} of {interface}: {source}")]
    Interface { interface: String, what: &'static str, source: std::io::Error },
    #[error("this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS=y is required)")]
    NoAfXdp,
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error("installing the SIGINT/SIGTERM handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("creating a worker's inbox: {0}")]
    Inbox(#[source] std::io::Error),
    #[error("the uplink program's maps: {0}")]
    UplinkMap(#[source] XdpError),
    #[error("the uplink program: {0}")]
    UplinkProgram(#[source] XdpError),
    #[error("attaching the uplink program to {interface}: {source}")]
    UplinkAttach { interface: String, source: AttachError },
    #[error("starting worker {index}: {source}")]
    WorkerThread { index: usize, source: std::io::Error },
    #[error("worker {index}: {source}")]
    Worker { index: usize, source: WorkerError },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{alive} of {workers} workers running: a worker stopped, so the daemon did too")]
    WorkerStopped { alive: usize, workers: usize },
    #[error(
        "the uplink {name}'s MTU changed from {from} to {to}: the daemon stops so that it is \
         started again with buffers and a pod MTU that fit"
    )]
    UplinkMtuChanged { name: String, from: u32, to: u32 },
    #[error("the uplink {name} (index {index}) is gone: nothing left to forward on")]
    UplinkGone { name: String, index: u32 },
    #[error("serving metrics on {address}: {source} (choose another --metrics-address)")]
    Metrics { address: std::net::SocketAddr, source: std::io::Error },
}

/// Why the tables the daemon starts with are not usable.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("tables file {}: {source}", path.display())]
    Rejected { path: PathBuf, source: TableError },
    #[error("tables: {0}")]
    Invalid(#[source] TableError),
    #[error("--node-name {name} is not the local node {local:?} of {}", path.display())]
    NodeName { name: String, local: String, path: PathBuf },
    #[error(
        "without --tables, give --node-name and --node-ip: the control process pushes the rest"
    )]
    NoIdentity,
    #[error("tables: local node {0:?} is not in the node table")]
    NoLocalNode(String),
    #[error(
        "--node-ip {given} is not the underlay address of the local node {node:?} in the tables ({tables})"
    )]
    NodeIp { given: IpAddr, node: String, tables: IpAddr },
}

/// Why an XDP program could not be attached in the chosen mode.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error("{native}; generic mode too: {generic}")]
    NeitherMode { native: Box<XdpError>, generic: Box<XdpError> },
}

/// The log line of one worker's counters (debug every `--stats-interval`, info at exit):
/// the same figures `podlane show counters` prints.
fn log_line(w: &WorkerCounters) -> String {
    use std::fmt::Write as _;
    let mut line = format!(
        "worker {}: rx {} frames {} bytes; encap {} decap {} local {} reply {} host {} drop {}",
        w.worker,
        w.rx_frames,
        w.rx_bytes,
        w.encap,
        w.decap,
        w.local,
        w.reply,
        w.host,
        w.drops.values().sum::<u64>()
    );
    for (reason, n) in &w.drops {
        let _ = write!(line, " [{reason}: {n}]");
    }
    let _ = write!(
        line,
        "; no_socket {} handoff in {} dropped {} joined {}; icmp errors {}; returned via host {}; free \
         chunks {}, none free {} times; longest round {} µs; real-time pauses {}",
        w.no_socket,
        w.handoff_in,
        w.handoff_dropped,
        w.handoff_joined,
        w.icmp_errors,
        w.returned_via_host,
        w.free_chunks,
        w.chunk_exhausted,
        w.longest_round_us,
        w.realtime_pauses
    );
    if let Some(h) = &w.host_interface {
        let _ = write!(
            line,
            "\n  {} q{} (host): rx {} pkts {} B ({} super), tx {} pkts {} B ({} super), \
             tx_dropped {}, rx_too_long {}, rx_bad_header {}",
            h.interface,
            h.queue,
            h.rx_packets,
            h.rx_bytes,
            h.rx_super_packets,
            h.tx_packets,
            h.tx_bytes,
            h.tx_super_packets,
            h.tx_dropped,
            h.rx_too_long,
            h.rx_bad_header
        );
    }
    for s in &w.sockets {
        let _ = write!(
            line,
            "\n  {} q{} ({}): rx {} pkts {} B, tx {} pkts {} B, tx_dropped {}, rx_ring_full {}, \
             fill_ring_empty {}, invalid rx/tx {}/{}, kernel rx_dropped {}",
            s.interface,
            s.queue,
            s.mode,
            s.rx_packets,
            s.rx_bytes,
            s.tx_packets,
            s.tx_bytes,
            s.tx_dropped,
            s.rx_ring_full,
            s.rx_fill_ring_empty,
            s.rx_invalid_descs,
            s.tx_invalid_descs,
            s.rx_dropped
        );
    }
    line
}

/// State shared by the main thread and the workers.
pub(crate) struct Shared {
    uplink: String,
    uplink_queues: u32,
    workers: usize,
    engine: EngineConfig,
    umem: UmemConfig,
    bind: BindPreference,
    poll_mode: PollMode,
    tables: Tables,
    info: DaemonInfo,
    /// The host interface's addresses and routes as last installed.
    host_state: Mutex<host::HostState>,
    /// The tunnel-GSO interface, when TAP pods' super-packets are segmented by the kernel.
    tunnel: Option<tunnel::Tunnel>,
    /// Workers whose thread still runs (the main loop counts them every 100 ms).
    live_workers: std::sync::atomic::AtomicUsize,
    /// The uplink is up with carrier (the main loop looks every second).
    uplink_running: AtomicBool,
    /// What the uplink program passed to the kernel of the UDP addressed to this node, by
    /// reason ([`uplink_passed`]); none in unit tests, which load no program.
    uplink_passed: Option<PerCpuArray>,
    /// The tables came from a file (`--tables`): complete, with nothing to sync.
    static_tables: bool,
    stop: AtomicBool,
    /// Each worker's counters, published by the worker about once a second.
    stats: Vec<Mutex<WorkerCounters>>,
    /// `show conntrack`: the control thread raises a worker's flag and wakes it; the worker
    /// lists its flows into its slot at its next round.
    conntrack_wanted: Vec<AtomicBool>,
    conntrack_dumps: Vec<Mutex<Option<Vec<crate::api::ConntrackFlow>>>>,
    inboxes: Vec<worker::Inbox>,
}

impl Shared {
    /// The longest frame the uplink carries: its MTU and the Ethernet header.
    pub(crate) fn max_frame(&self) -> usize {
        usize::from(self.engine.uplink_mtu) + crate::wire::EthernetFrame::<&[u8]>::HEADER_LEN
    }
}

#[cfg(test)]
impl Shared {
    /// State for `workers` workers over in-memory sockets, and each worker's wake-up socket.
    pub(crate) fn for_tests(
        tables: Tables,
        workers: usize,
        uplink_queues: u32,
        engine: EngineConfig,
        umem: UmemConfig,
    ) -> (Arc<Shared>, Vec<std::os::unix::net::UnixDatagram>) {
        let capacity = (umem.chunk_size as usize).max(usize::from(engine.uplink_mtu) + 14);
        let (inboxes, wakees) =
            (0..workers).map(|_| worker::Inbox::new(capacity).expect("socket pair")).unzip();
        let shared = Shared {
            uplink: "up0".into(),
            uplink_queues,
            workers,
            engine,
            umem,
            bind: BindPreference::Copy,
            poll_mode: PollMode::Event,
            tables,
            info: DaemonInfo::default(),
            host_state: Mutex::new(host::HostState::default()),
            tunnel: None,
            live_workers: std::sync::atomic::AtomicUsize::new(workers),
            uplink_running: AtomicBool::new(true),
            uplink_passed: None,
            static_tables: false,
            stop: AtomicBool::new(false),
            stats: (0..workers).map(|_| Mutex::new(WorkerCounters::default())).collect(),
            conntrack_wanted: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            conntrack_dumps: (0..workers).map(|_| Mutex::new(None)).collect(),
            inboxes,
        };
        (Arc::new(shared), wakees)
    }
}

/// Confines the daemon's own threads other than the workers (this one, and the attacher, the
/// control server, its clients and the metrics server, which inherit its affinity) to the
/// cores no worker is pinned to. Left beside a worker, they are runnable on its core while it
/// forwards; under SCHED_FIFO they then wait until the kernel lets starved threads run, up to
/// 50 ms a second in one go, and the worker stops for as long (docs/bench.md: a worker at 75 %
/// of its rate lost frames to exactly that). When the workers hold every core, nothing is
/// moved. Workers pin themselves to their own core after they start.
fn keep_housekeeping_off(worker_cores: &[usize]) {
    if worker_cores.is_empty() {
        return;
    }
    let allowed = match io::thread_affinity() {
        Ok(allowed) => allowed,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the daemon's cores; its threads stay as they are");
            return;
        }
    };
    match housekeeping_cores(&allowed, worker_cores) {
        Some(cores) => match io::set_thread_affinity(&cores) {
            Ok(()) => {
                tracing::info!(?cores, "the daemon's other threads run beside the workers' cores")
            }
            Err(e) => {
                tracing::warn!(error = %e, ?cores, "could not move the daemon's other threads off the workers' cores")
            }
        },
        None => tracing::info!(
            workers = ?worker_cores,
            "the workers hold every core the daemon may use: its other threads share them"
        ),
    }
}

/// The cores for the daemon's other threads: those allowed that no worker holds, if any.
fn housekeeping_cores(allowed: &[usize], worker_cores: &[usize]) -> Option<Vec<usize>> {
    let rest: Vec<usize> = allowed.iter().copied().filter(|c| !worker_cores.contains(c)).collect();
    (!rest.is_empty()).then_some(rest)
}

/// Chunks per UMEM by default, for a worker with `queues` uplink queues: 16,384, or 2,048 per
/// queue where that is more (each queue's fill ring then holds at least 512: a quarter of the
/// UMEM is the uplink's, see the worker's fill budget), at most 131,072.
pub fn default_umem_chunks(queues: u32) -> u32 {
    queues.saturating_mul(2048).clamp(16_384, 131_072)
}

/// Attaches `program` in the chosen mode; `Auto` tries native, then generic.
pub(crate) fn attach(
    program: &XdpProgram,
    interface: &str,
    mode: XdpModeChoice,
) -> Result<XdpLink, AttachError> {
    let native = || program.attach(interface, XdpMode::Native);
    let generic = || program.attach(interface, XdpMode::Generic);
    match mode {
        XdpModeChoice::Native => Ok(native()?),
        XdpModeChoice::Generic => Ok(generic()?),
        XdpModeChoice::Auto => native().or_else(|native| {
            generic().map_err(|generic| AttachError::NeitherMode {
                native: Box::new(native),
                generic: Box::new(generic),
            })
        }),
    }
}

/// Capabilities the daemon needs, from /proc/self/status (root has them all).
fn missing_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    const CAPS: [(u32, &str); 4] =
        [(12, "CAP_NET_ADMIN"), (13, "CAP_NET_RAW"), (14, "CAP_IPC_LOCK"), (39, "CAP_BPF")];
    const CAP_SYS_ADMIN: u32 = 21;
    CAPS.iter()
        .filter(|(bit, name)| {
            let has = effective & (1 << bit) != 0;
            // CAP_SYS_ADMIN stands in for CAP_BPF on older kernels.
            !(has || (*name == "CAP_BPF" && effective & (1 << CAP_SYS_ADMIN) != 0))
        })
        .map(|(_, name)| *name)
        .collect()
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let missing = missing_capabilities();
    if !missing.is_empty() {
        return Err(DaemonError::Privileges { missing: missing.join(", ") });
    }
    let uplink_index = io::interface_index(&config.uplink)
        .ok_or_else(|| DaemonError::NoSuchInterface(config.uplink.clone()))?;
    let interface_error = |what| {
        let interface = config.uplink.clone();
        move |source| DaemonError::Interface { interface, what, source }
    };
    let mut engine = config.engine.clone();
    engine.uplink_mac = io::interface_mac(&config.uplink).map_err(interface_error("MAC"))?;
    engine.uplink_mtu = io::interface_mtu(&config.uplink)
        .map_err(interface_error("MTU"))?
        .min(u32::from(u16::MAX)) as u16;
    let uplink_queues = io::interface_queues(&config.uplink);
    let tables = initial_tables(&config, engine.uplink_mac)?;
    let node_ip = tables.node_ip();

    let workers = config.cores.len().max(1).min(uplink_queues as usize);
    if workers < config.cores.len() {
        tracing::warn!(
            cores = config.cores.len(),
            uplink_queues,
            "more cores than uplink queues: running {workers} worker(s), one per queue at most"
        );
    }
    keep_housekeeping_off(&config.cores[..config.cores.len().min(workers)]);
    // The host interface carries the overlay's packets: its MTU is the pods'.
    let overlay_mtu = u32::from(engine.uplink_mtu).saturating_sub(match node_ip {
        IpAddr::V4(_) => crate::engine::ENCAP_OVERHEAD_V4,
        IpAddr::V6(_) => crate::engine::ENCAP_OVERHEAD_V6,
    } as u32);
    engine.host_interface = config.host_interface.is_some();
    let (mut host, host_queues) = match &config.host_interface {
        Some(name) => {
            let (host, queues) = host::HostInterface::open(name, workers, overlay_mtu)?;
            (Some(host), queues.into_iter().map(Some).collect())
        }
        None => (None, (0..workers).map(|_| None).collect::<Vec<_>>()),
    };
    let no_tunnel = || (None, (0..workers).map(|_| None).collect::<Vec<_>>());
    let (tunnel, tunnel_queues) = match &config.tunnel_gso {
        Some(name) if node_ip.is_ipv4() && !engine.outer_udp_checksum_v4 => {
            match tunnel::open(name, workers, u32::from(engine.uplink_mtu)) {
                Ok((tunnel, queues)) => (Some(tunnel), queues.into_iter().map(Some).collect()),
                Err(e) => {
                    tracing::warn!("TAP pods' super-packets are cut by the workers: {e}");
                    no_tunnel()
                }
            }
        }
        Some(_) => {
            tracing::info!(
                "TAP pods' super-packets are cut by the workers: the kernel segments UDP \
                 tunnels here only over IPv4 without an outer UDP checksum"
            );
            no_tunnel()
        }
        None => no_tunnel(),
    };
    // Chunks for the largest frame the uplink carries (jumbo underlays: 4 KiB chunks and
    // frames in several of them).
    let max_frame =
        u32::from(engine.uplink_mtu) + crate::wire::EthernetFrame::<&[u8]>::HEADER_LEN as u32;
    let chunks = config
        .umem_chunks
        .unwrap_or_else(|| default_umem_chunks(uplink_queues.div_ceil(workers as u32)));
    let umem = UmemConfig::for_frames(max_frame, chunks);
    let mut inboxes = Vec::new();
    let mut wakees = Vec::new();
    for _ in 0..workers {
        // Frames of any length the uplink carries can be handed over.
        let capacity = (umem.chunk_size as usize).max(max_frame as usize);
        let (inbox, wakee) = worker::Inbox::new(capacity).map_err(DaemonError::Inbox)?;
        inboxes.push(inbox);
        wakees.push(wakee);
    }
    let passed =
        PerCpuArray::new("podlane_passed", uplink_passed::COUNT).map_err(DaemonError::UplinkMap)?;
    let shared = Arc::new(Shared {
        uplink: config.uplink.clone(),
        uplink_queues,
        workers,
        engine: engine.clone(),
        umem,
        bind: config.bind,
        poll_mode: config.poll_mode,
        info: DaemonInfo {
            node: tables.node().to_owned(),
            node_ip: node_ip.to_string(),
            uplink: config.uplink.clone(),
            uplink_mac: engine.uplink_mac.to_string(),
            uplink_mtu: engine.uplink_mtu,
            uplink_queues,
            vni: engine.vni,
            vxlan_port: engine.vxlan_port,
            workers,
            cores: config.cores.clone(),
            xdp_mode: format!("{:?}", config.xdp_mode).to_lowercase(),
            poll_mode: format!("{:?}", config.poll_mode).to_lowercase(),
            control_socket: config
                .control_socket
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            overlay_mtu,
            tunnel_gso_interface: tunnel.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
            gateway_v4: engine.gateway_v4.to_string(),
            gateway_v6: engine.gateway_v6.to_string(),
            gateway_mac: engine.gateway_mac.to_string(),
            service_cidrs: engine.service_cidrs.iter().map(ToString::to_string).collect(),
            conntrack_max: engine.conntrack.capacity,
            conntrack_timeouts: {
                let c = &engine.conntrack;
                [
                    ("tcp-syn", c.tcp_syn),
                    ("tcp-established", c.tcp_established),
                    ("tcp-close", c.tcp_closing),
                    ("udp", c.udp),
                    ("icmp", c.icmp),
                    ("other", c.other),
                ]
                .iter()
                .map(|(name, d)| format!("{name}={}", d.as_secs()))
                .collect()
            },
            ..DaemonInfo::default()
        },
        host_state: Mutex::new(host::HostState::default()),
        tunnel,
        live_workers: std::sync::atomic::AtomicUsize::new(workers),
        uplink_running: AtomicBool::new(true),
        uplink_passed: Some(passed),
        static_tables: config.tables.is_some(),
        tables,
        stop: AtomicBool::new(false),
        stats: (0..workers).map(|_| Mutex::new(WorkerCounters::default())).collect(),
        conntrack_wanted: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        conntrack_dumps: (0..workers).map(|_| Mutex::new(None)).collect(),
        inboxes,
    });

    io::install_stop_handlers().map_err(DaemonError::Signals)?;
    let wakers = shared
        .inboxes
        .iter()
        .map(worker::Inbox::waker)
        .collect::<Result<Vec<_>, _>>()
        .map_err(DaemonError::Inbox)?;
    let pods = attacher::XdpPods {
        bind: config.bind,
        xdp_mode: config.xdp_mode,
        guard: config.host_interface.is_some(),
        frags: umem.multi_buffer,
    };
    let (attacher, links) = attacher::Attacher::new(Box::new(pods), wakers);
    let uplink_map = Arc::new(XskMap::new(uplink_queues).map_err(DaemonError::UplinkMap)?);
    let passed = shared.uplink_passed.as_ref().ok_or_else(|| {
        DaemonError::UplinkProgram(XdpError::MapCreate(std::io::Error::other("no pass counters")))
    })?;
    let uplink_program = XdpProgram::uplink(
        &uplink_map,
        passed,
        node_ip,
        engine.vxlan_port,
        engine.vni,
        umem.multi_buffer,
    )
    .map_err(DaemonError::UplinkProgram)?;

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    let attacher_thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("podlane-attacher".into())
            .spawn(move || attacher.run(&shared.stop))
            .map_err(|source| DaemonError::WorkerThread { index: workers, source })?
    };
    // Joined with the workers: it ends when the stop flag is set.
    handles.push(attacher_thread);
    let per_worker = wakees.into_iter().zip(host_queues).zip(tunnel_queues).zip(links);
    for (index, (((wakee, host_queue), tunnel_queue), attacher)) in per_worker.enumerate() {
        let core = config.cores.get(index).map(|&id| core_affinity::CoreId { id });
        let setup = worker::WorkerSetup {
            index,
            core,
            realtime_priority: config.realtime_priority,
            shared: shared.clone(),
            uplink_map: uplink_map.clone(),
            wakee,
            host_queue,
            tunnel_queue,
            attacher,
        };
        let handle = worker::spawn(setup, ready_tx.clone())
            .map_err(|source| DaemonError::WorkerThread { index, source })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut startup_error = None;
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((index, Err(source))) => {
                startup_error = startup_error.or(Some(DaemonError::Worker { index, source }))
            }
            Err(_) => {
                let source = WorkerError::Died;
                startup_error = startup_error.or(Some(DaemonError::Worker { index: 0, source }))
            }
        }
    }
    let stop_workers = |handles: Vec<std::thread::JoinHandle<()>>| {
        shared.stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
    };
    if let Some(e) = startup_error {
        stop_workers(handles);
        return Err(match e {
            DaemonError::Worker { source, .. } if source.is_af_xdp_missing() => {
                DaemonError::NoAfXdp
            }
            other => other,
        });
    }
    let uplink_link = match attach(&uplink_program, &config.uplink, config.xdp_mode) {
        Ok(link) => link,
        Err(source) => {
            stop_workers(handles);
            return Err(DaemonError::UplinkAttach { interface: config.uplink.clone(), source });
        }
    };
    tracing::info!(
        uplink = %config.uplink,
        node = %node_ip,
        vni = engine.vni,
        port = engine.vxlan_port,
        workers,
        queues = uplink_queues,
        xdp = ?uplink_link.mode(),
        "forwarding"
    );

    let control = match &config.control_socket {
        Some(path) => match control::serve(
            path,
            config.control_socket_ro.as_deref(),
            shared.clone(),
            config.access,
        ) {
            Ok(server) => Some(server),
            Err(e) => {
                drop(uplink_link);
                stop_workers(handles);
                return Err(e.into());
            }
        },
        None => None,
    };
    let metrics = match config.metrics_address {
        Some(address) => match metrics::serve(address, shared.clone()) {
            Ok(server) => Some(server),
            Err(source) => {
                drop(control);
                drop(uplink_link);
                stop_workers(handles);
                return Err(DaemonError::Metrics { address, source });
            }
        },
        None => None,
    };
    let mut resolver = neighbours::Resolver::new(uplink_index);
    let mut uplink_watch = uplink_watch::UplinkWatch::new(
        uplink_index,
        &config.uplink,
        u32::from(shared.info.uplink_mtu),
    );
    let mut last_stats = Instant::now();
    while !io::stop_requested() {
        // The attacher's thread first, then the workers'. A worker that ended while the
        // daemon runs leaves its pods and queues unserved: the daemon stops, with an error, so
        // that whatever supervises it (the DaemonSet) starts it again.
        let alive = handles.iter().skip(1).filter(|h| !h.is_finished()).count();
        shared.live_workers.store(alive, Ordering::Relaxed);
        if alive < workers {
            tracing::error!(alive, workers, "a worker stopped: stopping the daemon");
            drop(metrics);
            drop(control);
            drop(uplink_link);
            stop_workers(handles);
            return Err(DaemonError::WorkerStopped { alive, workers });
        }
        match uplink_watch.check() {
            Ok(running) => shared.uplink_running.store(running, Ordering::Relaxed),
            Err(e) => {
                tracing::error!("{e}");
                drop(metrics);
                drop(control);
                drop(uplink_link);
                stop_workers(handles);
                return Err(e);
            }
        }
        resolver.tick(&shared.tables);
        if let Some(host) = host.as_mut() {
            host.follow(&shared.tables.load_full());
            if let Ok(mut state) = shared.host_state.lock() {
                *state = host.state();
            }
        }
        if last_stats.elapsed() >= config.stats_interval {
            last_stats = Instant::now();
            for stats in &shared.stats {
                if let Ok(s) = stats.lock() {
                    tracing::debug!("{}", log_line(&s));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("stopping");
    drop(metrics);
    drop(control);
    drop(uplink_link);
    stop_workers(handles);
    for stats in &shared.stats {
        if let Ok(s) = stats.lock() {
            tracing::info!("{}", log_line(&s));
        }
    }
    Ok(())
}

/// The tables the daemon starts with: a tables file, or only this node (`--node-name`,
/// `--node-ip`) until the control process pushes the rest.
fn initial_tables(
    config: &DaemonConfig,
    vtep_mac: crate::wire::MacAddr,
) -> Result<Tables, TablesError> {
    let spec = match (&config.tables, &config.node_name, config.node_ip) {
        (Some(path), _, _) => {
            let spec = TableSpec::from_json_file(path)?;
            if let Some(name) = &config.node_name
                && name != &spec.local_node
            {
                return Err(TablesError::NodeName {
                    name: name.clone(),
                    local: spec.local_node.clone(),
                    path: path.clone(),
                });
            }
            spec
        }
        (None, Some(name), Some(ip)) => Tables::empty(name, ip, vtep_mac),
        (None, _, _) => return Err(TablesError::NoIdentity),
    };
    let Some(local) = spec.nodes.iter().find(|n| n.name == spec.local_node) else {
        return Err(TablesError::NoLocalNode(spec.local_node.clone()));
    };
    let node_ip = local.underlay;
    if let Some(given) = config.node_ip
        && given != node_ip
    {
        return Err(TablesError::NodeIp { given, node: spec.local_node.clone(), tables: node_ip });
    }
    Tables::new(spec, node_ip).map_err(|source| match &config.tables {
        Some(path) => TablesError::Rejected { path: path.clone(), source },
        None => TablesError::Invalid(source),
    })
}

#[cfg(test)]
mod tests {
    use super::housekeeping_cores;

    #[test]
    fn the_daemons_other_threads_go_where_no_worker_is_pinned() {
        assert_eq!(housekeeping_cores(&[0, 1], &[1]), Some(vec![0]));
        assert_eq!(housekeeping_cores(&[0, 1, 2, 3], &[2, 3]), Some(vec![0, 1]));
        // A worker pinned outside the daemon's own set takes nothing from it.
        assert_eq!(housekeeping_cores(&[2, 3], &[0]), Some(vec![2, 3]));
        // Workers on every core: nothing is left to move them to.
        assert_eq!(housekeeping_cores(&[0, 1], &[0, 1]), None);
    }

    #[test]
    fn the_calling_threads_affinity_is_read_and_set() {
        // In a thread of its own, so the test runner's threads keep theirs.
        std::thread::spawn(|| {
            let allowed = crate::io::thread_affinity().expect("sched_getaffinity");
            assert!(!allowed.is_empty());
            let one = allowed[0];
            crate::io::set_thread_affinity(&[one]).expect("sched_setaffinity");
            assert_eq!(crate::io::thread_affinity().unwrap(), vec![one]);
            let child = std::thread::spawn(crate::io::thread_affinity).join().unwrap().unwrap();
            assert_eq!(child, vec![one], "threads started later inherit it");
            assert!(crate::io::set_thread_affinity(&[usize::MAX]).is_err());
        })
        .join()
        .unwrap();
    }
}
