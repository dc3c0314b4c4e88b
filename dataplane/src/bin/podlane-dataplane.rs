//! `podlane-dataplane`, the forwarding daemon: AF_XDP sockets on the uplink and on every
//! local pod's veth, one pinned worker per core, the pipeline in between. `--check` only
//! validates a tables file.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dataplane::daemon::{self, DaemonConfig, PollMode, XdpModeChoice};
use dataplane::io::xsk::BindPreference;
use podlane_core::engine::EngineConfig;
use podlane_core::engine::conntrack::ConntrackConfig;
use podlane_core::table::{Snapshot, TableSpec};

/// Wire settings of the overlay this node joins.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    /// Flannel's vxlan backend: VNI 1, UDP port 8472.
    Flannel,
    /// Calico's VXLAN mode: VNI 4096, UDP port 4789.
    Calico,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XdpModeArg {
    /// Native (driver) XDP, generic where the driver has none.
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XskModeArg {
    /// Zero-copy where the driver supports it, copy mode otherwise (veth: copy).
    Auto,
    ZeroCopy,
    Copy,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PollArg {
    /// Sleep in poll() when idle: the least CPU per packet.
    Event,
    /// Busy-poll: lowest latency, one full core per worker.
    Spin,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Parser, Debug)]
#[command(
    name = "podlane-dataplane",
    version,
    about = "podlane's userspace VXLAN dataplane: AF_XDP in place of the kernel's vxlan device"
)]
struct Cli {
    /// Initial tables: JSON with local_node, nodes, endpoints and policies (docs/tables.md).
    /// Without it the dataplane forwards nothing until the control process syncs
    /// (`podlane agent`), and needs --node-name and --node-ip.
    #[arg(long, value_name = "FILE", required_if_eq("check", "true"))]
    tables: Option<PathBuf>,
    /// Validate the tables, print what they hold, and exit (0: valid, 1: rejected).
    #[arg(long)]
    check: bool,
    /// This node's name in the cluster (the tables' local node).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// The control socket the control process (`podlane`) talks to.
    #[arg(long, value_name = "PATH", default_value = "/run/podlane/dataplane.sock")]
    control_socket: PathBuf,
    /// Serve no control socket: the tables file is all there is.
    #[arg(long, conflicts_with = "control_socket")]
    no_control_socket: bool,
    /// The read-only socket: queries only (`podlane show`, scrapers), for --control-read-gid
    /// [default: beside the control socket, `-ro` added to its name:
    /// /run/podlane/dataplane-ro.sock].
    #[arg(long, value_name = "PATH")]
    control_socket_ro: Option<PathBuf>,
    /// A uid, besides root and the daemon's own, allowed on the control socket.
    #[arg(long, value_name = "UID")]
    control_uid: Option<u32>,
    /// A gid whose members (by primary or supplementary group) are allowed on the control
    /// socket, which is then created 0660 and handed to this group.
    #[arg(long, value_name = "GID")]
    control_gid: Option<u32>,
    /// A gid whose members may use the read-only socket (0660, handed to this group).
    #[arg(long, value_name = "GID")]
    control_read_gid: Option<u32>,
    /// The node's underlay interface (VXLAN is sent and received here).
    #[arg(long, value_name = "IFACE", required_unless_present_any = ["check", "remove_host_interface"])]
    uplink: Option<String>,
    /// The node's underlay address; must match the local node in the tables (the default).
    #[arg(long, value_name = "IP")]
    node_ip: Option<IpAddr>,
    /// VNI and port of Flannel or Calico; --vni and --vxlan-port override it.
    #[arg(long, value_enum, default_value = "flannel")]
    profile: Profile,
    /// VXLAN network identifier (0 to 16777215).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..(1 << 24)))]
    vni: Option<u32>,
    /// VXLAN UDP destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    vxlan_port: Option<u16>,
    /// Cores to run one pinned worker each on, e.g. 1 or 0,1; the daemon's other threads then
    /// keep to the remaining cores, if any. Default: one worker, unpinned.
    #[arg(long, value_delimiter = ',', value_name = "CORE,...")]
    cores: Vec<usize>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    /// AF_XDP bind mode.
    #[arg(long, value_enum, default_value = "auto")]
    xsk_mode: XskModeArg,
    /// How idle workers wait.
    #[arg(long, value_enum, default_value = "event")]
    poll: PollArg,
    /// Run the workers under SCHED_FIFO at this priority (1-99), so that other threads and
    /// kernel threads on their cores wait instead of taking a core for milliseconds while
    /// the rings overflow. A worker that has run 2 ms without sleeping leaves its core for
    /// 125 µs, so that they get it in short turns rather than in the kernel's 50 ms one.
    /// Event mode only: a spinning real-time worker would starve its core. Needs
    /// CAP_SYS_NICE, and real-time runtime for the daemon's cgroup where the kernel has
    /// CONFIG_RT_GROUP_SCHED. 0, like no flag: ordinary scheduling (the default).
    #[arg(long, value_name = "PRIORITY", value_parser = clap::value_parser!(u8).range(0..=99))]
    realtime_priority: Option<u8>,
    /// Chunks per UMEM (2 KiB each; 4 KiB on an underlay whose MTU is beyond 1,778). A worker
    /// has one UMEM, two beside a zero-copy uplink. Default: 16,384, or 2,048 per uplink queue
    /// of a worker where that is more (at most 131,072), so that each queue's fill ring holds
    /// at least 512.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1024..=1 << 20))]
    umem_chunks: Option<u32>,
    /// Compute the outer UDP checksum over IPv4 (Linux's vxlan default; off is RFC 7348's
    /// and VPP's default, and every receiver accepts both).
    #[arg(long)]
    udp_checksum: bool,
    /// The cluster's Service address ranges (kube-apiserver's --service-cluster-ip-range), e.g.
    /// 10.96.0.0/12,fd00:96::/108: a pod's connection to a Service is judged by its egress
    /// policy on the backend kube-proxy picks, not on the Service's address.
    #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
    service_cidrs: Vec<podlane_core::table::Cidr>,
    /// Flows each worker's connection tracking holds at most; a new flow beyond that takes the
    /// place of an unanswered or closing one, or is dropped (conntrack_full).
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1024..=1 << 24))]
    conntrack_max: u32,
    /// Connection tracking timeouts in seconds, any of: tcp-syn (default 60), tcp-established
    /// (21600), tcp-close (10, after a FIN or RST), udp (60, also SCTP), icmp (30, echo),
    /// other (60). E.g. tcp-established=86400,udp=120.
    #[arg(long, value_delimiter = ',', value_name = "NAME=SECONDS,...", value_parser = parse_timeout)]
    conntrack_timeouts: Vec<(String, u64)>,
    /// Log level (to stderr).
    #[arg(long, value_enum, default_value = "info")]
    log_level: LogLevel,
    /// Seconds between counter logs at debug level.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    stats_interval: u64,
    /// The host interface: a TUN device the daemon creates (or adopts) through which the
    /// node's kernel reaches pods and pods reach the node and the outside (docs/host-path.md).
    #[arg(long, value_name = "NAME", default_value = "podlane0")]
    host_interface: String,
    /// Run without a host interface: frames for the node or leaving the cluster are dropped
    /// (for a node whose kernel keeps its own routes to pods, as podlane-bench's does).
    #[arg(long, conflicts_with = "remove_host_interface")]
    no_host_interface: bool,
    /// The tunnel-GSO interface: a TAP the daemon creates, through which TAP pods' TCP
    /// super-packets to other nodes are handed to the kernel to segment on its way out of the
    /// uplink (IPv4 underlays, Linux 6.17 and later; docs/wiring-a-pod.md).
    #[arg(long, value_name = "NAME", default_value = "podlane-gso")]
    tunnel_gso_interface: String,
    /// Serve Prometheus metrics on /metrics, and /healthz and /readyz, at this address (e.g.
    /// 127.0.0.1:9842). Default: not served.
    #[arg(long, value_name = "ADDRESS:PORT")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Cut TAP pods' super-packets in the workers and send every segment through AF_XDP,
    /// without the tunnel-GSO interface.
    #[arg(long)]
    no_tunnel_gso: bool,
    /// Delete the host interface (--host-interface NAME) and with it its addresses and
    /// routes, then exit: the host interface outlives the daemon on purpose (fail closed).
    #[arg(long)]
    remove_host_interface: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.log_level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();

    if cli.remove_host_interface {
        return match daemon::remove_host_interface(&cli.host_interface) {
            Ok(true) => {
                println!("removed {}", cli.host_interface);
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("no interface named {}: nothing to remove", cli.host_interface);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("podlane-dataplane: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if cli.check {
        let Some(tables) = &cli.tables else {
            eprintln!("podlane-dataplane: --check needs --tables FILE");
            return ExitCode::from(2);
        };
        return check(tables);
    }
    let Some(uplink) = cli.uplink.clone() else {
        eprintln!("podlane-dataplane: --uplink IFACE is required to forward");
        return ExitCode::from(2);
    };
    let realtime_priority = cli.realtime_priority.filter(|&priority| priority > 0);
    if realtime_priority.is_some() && matches!(cli.poll, PollArg::Spin) {
        eprintln!(
            "podlane-dataplane: --realtime-priority with --poll spin would let the workers \
             starve everything else on their cores; use --poll event (the default) with it"
        );
        return ExitCode::from(2);
    }
    let (vni, port) = match cli.profile {
        Profile::Flannel => (1, 8472),
        Profile::Calico => (4096, 4789),
    };
    let mut conntrack =
        ConntrackConfig { capacity: cli.conntrack_max as usize, ..ConntrackConfig::default() };
    for (name, seconds) in &cli.conntrack_timeouts {
        let value = Duration::from_secs(*seconds);
        match name.as_str() {
            "tcp-syn" => conntrack.tcp_syn = value,
            "tcp-established" => conntrack.tcp_established = value,
            "tcp-close" => conntrack.tcp_closing = value,
            "udp" => conntrack.udp = value,
            "icmp" => conntrack.icmp = value,
            _ => conntrack.other = value,
        }
    }
    let engine = EngineConfig {
        vni: cli.vni.unwrap_or(vni),
        vxlan_port: cli.vxlan_port.unwrap_or(port),
        outer_udp_checksum_v4: cli.udp_checksum,
        conntrack,
        service_cidrs: cli.service_cidrs,
        ..EngineConfig::default()
    };
    let config = DaemonConfig {
        uplink,
        node_ip: cli.node_ip,
        node_name: cli.node_name,
        control_socket_ro: (!cli.no_control_socket).then(|| {
            cli.control_socket_ro.clone().unwrap_or_else(|| {
                let stem = cli.control_socket.file_stem().unwrap_or_default().to_string_lossy();
                cli.control_socket.with_file_name(format!("{stem}-ro.sock"))
            })
        }),
        control_socket: (!cli.no_control_socket).then_some(cli.control_socket),
        access: daemon::Access {
            uid: cli.control_uid,
            gid: cli.control_gid,
            read_gid: cli.control_read_gid,
        },
        engine,
        cores: cli.cores,
        xdp_mode: match cli.xdp_mode {
            XdpModeArg::Auto => XdpModeChoice::Auto,
            XdpModeArg::Native => XdpModeChoice::Native,
            XdpModeArg::Generic => XdpModeChoice::Generic,
        },
        bind: match cli.xsk_mode {
            XskModeArg::Auto => BindPreference::Auto,
            XskModeArg::ZeroCopy => BindPreference::ZeroCopy,
            XskModeArg::Copy => BindPreference::Copy,
        },
        poll_mode: match cli.poll {
            PollArg::Event => PollMode::Event,
            PollArg::Spin => PollMode::Spin,
        },
        realtime_priority,
        umem_chunks: cli.umem_chunks,
        tables: cli.tables,
        stats_interval: Duration::from_secs(cli.stats_interval.max(1)),
        host_interface: (!cli.no_host_interface).then_some(cli.host_interface),
        tunnel_gso: (!cli.no_tunnel_gso).then_some(cli.tunnel_gso_interface),
        metrics_address: cli.metrics_address,
    };
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podlane-dataplane: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One `NAME=SECONDS` of --conntrack-timeouts.
fn parse_timeout(text: &str) -> Result<(String, u64), String> {
    const NAMES: [&str; 6] = ["tcp-syn", "tcp-established", "tcp-close", "udp", "icmp", "other"];
    let (name, seconds) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=SECONDS (e.g. udp=120)"))?;
    if !NAMES.contains(&name) {
        return Err(format!("no timeout named {name:?}; the names are {}", NAMES.join(", ")));
    }
    match seconds.parse::<u64>() {
        Ok(s) if s > 0 => Ok((name.to_owned(), s)),
        _ => Err(format!("{name}: {seconds:?} is not a whole number of seconds above 0")),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let spec = match TableSpec::from_json_file(path) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("podlane-dataplane: {e}");
            return ExitCode::FAILURE;
        }
    };
    match Snapshot::build(&spec, 1) {
        Ok(snapshot) => {
            println!("{}: tables valid", path.display());
            println!("{}", snapshot.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podlane-dataplane: {}: tables rejected: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
