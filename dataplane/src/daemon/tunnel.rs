//! The tunnel-GSO interface (`podlane-gso` by default): where a worker hands the node's kernel
//! a TAP pod's TCP super-packet, already encapsulated, for the kernel to cut into segments on
//! its way out of the uplink (UDP-tunnel GSO, Linux 6.17 and later), instead of cutting it
//! itself and sending each segment through AF_XDP.
//!
//! Why: on a copy-mode uplink every AF_XDP frame costs the kernel an skb and a copy, and a
//! segment sent on its own reaches the receiver one frame per softirq run, where nothing
//! coalesces it. Handed over whole, the super-packet is forwarded once and segmented in the
//! uplink's transmit, where the segments leave as one batch, as the kernel's own vxlan device
//! sends them (docs/bench.md, `podlane-bench tcp`: about four times the throughput to a
//! kernel node on an underlay that segments).
//!
//! The device is a multi-queue TAP in the daemon's namespace, one queue per worker, up at the
//! uplink's MTU, and not persistent: it goes when the daemon exits. What is written to it is
//! received by the kernel as if it arrived there, addressed to the device's own MAC, and
//! forwarded (the worker writes the outer TTL one higher, since forwarding takes one off). For
//! the kernel to take a packet whose source is one of its own addresses, the device accepts
//! local sources (`accept_local`), forwards, and does no reverse-path filtering; the
//! node-wide `rp_filter` must be 0 (the larger of the node-wide and the device's value
//! applies), else the path is not used and the daemon says so. It is used for IPv4 underlays
//! without an outer UDP checksum (`--udp-checksum`); otherwise the worker cuts.

use crate::io::netlink::Rtnetlink;
use crate::io::tap::{TapError, TunnelQueue};
use crate::io::{self};
use crate::wire::MacAddr;

/// The tunnel-GSO interface, as the workers need it.
#[derive(Debug, Clone)]
pub(crate) struct Tunnel {
    pub(crate) name: String,
    /// The device's MAC: the outer destination the kernel takes as its own.
    pub(crate) mac: MacAddr,
}

/// Why the tunnel-GSO interface could not be set up (the daemon then cuts super-packets
/// itself, and says why).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("{what}: {source}")]
    Setup { what: String, source: std::io::Error },
    #[error(
        "net.ipv4.conf.all.rp_filter is {0}: reverse-path filtering would drop what the \
         kernel is handed to segment (set it to 0 to use the path)"
    )]
    ReversePathFilter(String),
}

/// Creates the device `name` with one queue per worker, up at `mtu`, set to forward what it
/// is handed.
pub(crate) fn open(
    name: &str,
    workers: usize,
    mtu: u32,
) -> Result<(Tunnel, Vec<TunnelQueue>), TunnelError> {
    let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
        .unwrap_or_default()
        .trim()
        .to_owned();
    if all != "0" {
        return Err(TunnelError::ReversePathFilter(all));
    }
    let queues =
        (0..workers.max(1)).map(|_| TunnelQueue::attach(name)).collect::<Result<Vec<_>, _>>()?;
    let setup = |what: &str| {
        let what = format!("the tunnel-GSO interface {name}: {what}");
        move |source| TunnelError::Setup { what, source }
    };
    for (file, value) in [
        (format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1"),
        (format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1"),
        (format!("/proc/sys/net/ipv4/conf/{name}/accept_local"), "1"),
        (format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "0"),
    ] {
        std::fs::write(&file, value).map_err(setup(&format!("writing {value} to {file}")))?;
    }
    let ifindex = io::interface_index(name).ok_or_else(|| TunnelError::Setup {
        what: format!("the tunnel-GSO interface {name} vanished"),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let mut netlink = Rtnetlink::open().map_err(setup("opening rtnetlink"))?;
    netlink.set_link_up(ifindex, mtu).map_err(setup("setting it up"))?;
    let mac = io::interface_mac(name).map_err(setup("reading its MAC"))?;
    tracing::info!(interface = name, queues = queues.len(), "tunnel-GSO interface up");
    Ok((Tunnel { name: name.to_owned(), mac }, queues))
}
