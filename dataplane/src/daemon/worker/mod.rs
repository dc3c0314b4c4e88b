//! One forwarding worker: a thread pinned to a core that owns its UMEMs, the AF_XDP sockets
//! on them (its uplink queues and its pods' interfaces), a pipeline and its counters.
//!
//! The loop ([`Worker::turn`]): take the attacher's answers, follow a new snapshot if there
//! is one ([`pods`]), then for each port take a burst of up to [`BURST`] received frames
//! through the pipeline and onto the ports their verdicts name ([`forward`]), read the host
//! interface ([`host`]), take what other workers handed over ([`inbox`]), transmit, reap
//! completions, top up fill rings. With nothing received, the worker sleeps in poll(2) (event
//! mode, the default) or spins (spin mode). Once a second it looks after its pods' fill
//! levels and retries, busy polling and counters ([`stats`]). Nothing in the loop waits on
//! the kernel beyond the socket calls of the data path: attaching and detaching pods is the
//! attacher's.
//!
//! * [`assign`] — which worker owns which uplink queue and which pod.
//! * [`umems`] — one UMEM, or two beside a zero-copy uplink, and copies between them.
//! * [`budget`] — how the chunks are shared among fill rings and waiting frames.
//! * [`port`] — a socket as a port: pending transmissions, fill level, counters.
//! * [`pods`] — the local endpoints slot by slot: being attached, attached, waiting, or
//!   another worker's.
//! * [`forward`] — receive, route verdicts, transmit.
//! * [`inbox`] — frames for pods another worker owns.
//! * [`host`] — the worker's queue of the host interface.
//! * [`tap`] — TAP pods: super-packets decided once, written whole or cut once.
//! * [`jumbo`] — frames longer than a chunk, through the linear buffer.
//! * [`stats`] — the counters a worker publishes.

mod assign;
mod budget;
mod forward;
mod host;
mod inbox;
mod jumbo;
mod pods;
mod port;
mod stats;
mod tap;
#[cfg(test)]
mod tests;
mod umems;

pub(crate) use inbox::Inbox;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::attacher::WorkerLink;
use super::{PollMode, Shared};
use crate::engine::{Frame, Pipeline, Verdict};
use crate::io::tap::TunnelQueue;
use crate::io::tun::TunQueue;
use crate::io::xdp::{XdpError, XskMap};
use crate::io::xsk::{Packet, RingSizes, Umem, XskError, XskSocket};
use crate::io::{self, Poller};
use assign::uplink_queues;
use budget::Budget;
use port::{Port, PortId, PortKind, Ports};
use umems::Umems;

/// Frames per RX burst (DESIGN.md: bursts of 256 with the poll()-driven loop).
pub(crate) const BURST: usize = 256;
/// Ring sizes of uplink sockets. A single queue takes a whole quarter of the default UMEM
/// onto its fill ring: with 2,048, a worker held up for 5 ms at 4 Gbit/s of pod TCP found
/// the uplink's fill ring empty and the kernel dropped segments (`fill_ring_empty`), and TCP
/// retransmitted them (docs/bench.md: 190–8,234 retransmissions a run, 0–119 with 4,096).
const UPLINK_RING: u32 = 4096;
/// Sleep bound in poll(), so the worker notices table changes and the stop flag.
const POLL_TIMEOUT_MS: i32 = 50;
/// How long an event-mode worker goes on polling after its last work before it sleeps
/// (docs/bench.md, `podlane-bench tcp`: request/response latency).
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(50);
/// Under SCHED_FIFO, the longest a worker keeps its core without leaving it, and how long it
/// then leaves it for. Threads that wait for a real-time thread's core get it only once they
/// have waited 950 ms, and then for up to 50 ms in one go (the kernel's allowance for them,
/// `sched_rt_runtime_us`, or the fair server since Linux 6.12): a worker that forwards without
/// sleeping, as one does from about three quarters of its rate, then stops for tens of
/// milliseconds and its RX ring overflows (docs/bench.md). Leaving the core for 125 µs after
/// 2 ms gives them a little more than that share (5.9 %, against 5 %), so the worker stays
/// under the kernel's 950 ms a second, in turns short enough for the rings to hold what
/// arrives meanwhile (2,048 frames: 125 µs of 16 Mpps).
const REALTIME_SLICE: Duration = Duration::from_millis(2);
const REALTIME_PAUSE: Duration = Duration::from_micros(125);
/// How often fill levels, retries, busy polling and counters are looked after.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("allocating its UMEM: {0}")]
    Umem(#[source] XskError),
    #[error("no interface named {0:?}")]
    NoUplink(String),
    #[error("uplink queue {queue}: {source}")]
    UplinkSocket {
        queue: u32,
        #[source]
        source: XskError,
    },
    #[error("registering uplink queue {queue} in the uplink's XSKMAP: {source}")]
    UplinkMap {
        queue: u32,
        #[source]
        source: XdpError,
    },
    #[error("{0}")]
    Realtime(#[source] std::io::Error),
    #[error("its thread ended before it was ready")]
    Died,
}

impl WorkerError {
    /// The kernel has no AF_XDP sockets at all.
    pub(crate) fn is_af_xdp_missing(&self) -> bool {
        matches!(
            self,
            WorkerError::Umem(XskError::Unsupported(_))
                | WorkerError::UplinkSocket { source: XskError::Unsupported(_), .. }
        )
    }
}

pub(super) struct Worker {
    index: usize,
    shared: Arc<Shared>,
    umems: Umems,
    ports: Ports,
    /// The port frames to the uplink leave on (this worker's first uplink queue).
    uplink: Option<PortId>,
    /// What this worker holds per endpoint slot.
    endpoints: Vec<pods::Slot>,
    pipeline: Pipeline,
    /// The generation of the snapshot `endpoints` follows.
    generation: u64,
    wakee: UnixDatagram,
    /// This worker's queue of the host interface.
    host: Option<host::HostQueue>,
    attacher: WorkerLink,
    budget: Budget,
    /// The origin of the clock the pipeline is given (its ICMP error budget refills by it).
    epoch: Instant,
    // Reused per batch, so the loop does not allocate.
    rx: Vec<Packet>,
    verdicts: Vec<Verdict>,
    frames: Vec<Frame<'static>>,
    io_counters: stats::IoCounters,
    /// The longest round of the loop since counters were last published.
    longest_round: Duration,
    /// Whether the worker runs under SCHED_FIFO, and so takes [`REALTIME_PAUSE`]s.
    realtime: bool,
    /// Where a frame longer than a chunk goes through the pipeline (multi-buffer UMEMs only).
    linear: Option<jumbo::Linear>,
    /// This worker's TAP pods, by [`tap::TapId`].
    taps: Vec<Option<tap::TapPort>>,
    /// Where frames read from TAP pods go through the pipeline (once a TAP pod is attached).
    tap_buffer: Option<jumbo::Linear>,
    /// Room for a segment that goes out of a buffer rather than a chunk.
    scratch: Vec<u8>,
    /// Frames left on TX rings after the last flush, not yet taken by the kernel.
    tx_backlog: u32,
    /// This worker's queue of the tunnel-GSO interface ([`crate::daemon::tunnel`]).
    tunnel: Option<TunnelQueue>,
    /// Segments being joined for other workers' TAP pods.
    joins: inbox::Joins,
}

/// What a worker is made of besides its sockets.
pub(super) struct Parts {
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) wakee: UnixDatagram,
    pub(super) host_queue: Option<TunQueue>,
    pub(super) tunnel_queue: Option<TunnelQueue>,
    pub(super) attacher: WorkerLink,
}

impl Worker {
    /// A worker whose uplink queues are `uplink` (bound to `uplink_umem`, the first one's
    /// mode deciding whether pods share it: [`umems`]).
    fn new(parts: Parts, uplink_umem: Umem, uplink: Vec<XskSocket>) -> Result<Worker, XskError> {
        let Parts { index, shared, wakee, host_queue, tunnel_queue, attacher } = parts;
        let mode = uplink.first().map_or(crate::io::xsk::BindMode::Copy, XskSocket::mode);
        let mut umems = Umems::new(uplink_umem, mode)?;
        let chunks = umems.get(umems::UPLINK).config().chunks;
        let budget = Budget::new(chunks, uplink.len() as u32, umems.split(), UPLINK_RING);
        let pipeline = Pipeline::for_worker(shared.engine.clone(), index as u16);
        let config = *umems.get(umems::UPLINK).config();
        let linear = config.multi_buffer.then(|| {
            let headroom = umems.get(umems::UPLINK).frame_headroom() as usize;
            jumbo::Linear::new(headroom, shared.max_frame())
        });
        let mut ports = Ports::default();
        let mut first = None;
        for socket in uplink {
            let (interface, queue) = (socket.interface().to_owned(), socket.queue());
            let id = umems.get(umems::UPLINK).adopt(socket);
            let port = Port::new(
                id,
                umems::UPLINK,
                PortKind::Uplink,
                &interface,
                queue,
                budget.uplink_fill,
            );
            umems.get(umems::UPLINK).refill(id, budget.uplink_fill);
            first.get_or_insert(ports.add(port));
        }
        Ok(Worker {
            index,
            shared,
            umems,
            ports,
            uplink: first,
            endpoints: Vec::new(),
            pipeline,
            generation: u64::MAX,
            wakee,
            host: host_queue.map(|tun| host::HostQueue::new(tun, index as u32)),
            attacher,
            budget,
            epoch: Instant::now(),
            rx: Vec::with_capacity(BURST),
            verdicts: vec![Verdict::Host; BURST],
            frames: Vec::with_capacity(BURST),
            io_counters: stats::IoCounters::default(),
            longest_round: Duration::ZERO,
            realtime: false,
            linear,
            taps: Vec::new(),
            tap_buffer: None,
            scratch: Vec::new(),
            joins: inbox::Joins::default(),
            tx_backlog: 0,
            tunnel: tunnel_queue,
        })
    }

    /// Creates the uplink's UMEM and binds this worker's uplink queues into the uplink's
    /// XSKMAP. Runs on the worker's thread, before it forwards anything.
    fn start(parts: Parts, uplink_map: &XskMap) -> Result<Worker, WorkerError> {
        let shared = parts.shared.clone();
        let umem = Umem::new(shared.umem).map_err(WorkerError::Umem)?;
        if io::interface_index(&shared.uplink).is_none() {
            return Err(WorkerError::NoUplink(shared.uplink.clone()));
        }
        let mut sockets = Vec::new();
        for queue in uplink_queues(parts.index, shared.workers, shared.uplink_queues) {
            let rings = RingSizes::all(UPLINK_RING);
            let socket = XskSocket::bind(umem.handle(), &shared.uplink, queue, rings, shared.bind)
                .map_err(|source| WorkerError::UplinkSocket { queue, source })?;
            uplink_map
                .insert(queue, &socket)
                .map_err(|source| WorkerError::UplinkMap { queue, source })?;
            tracing::info!(
                worker = parts.index,
                interface = %shared.uplink,
                queue,
                mode = %socket.mode(),
                "uplink socket bound"
            );
            sockets.push(socket);
        }
        let index = parts.index;
        let worker = Worker::new(parts, umem, sockets).map_err(WorkerError::Umem)?;
        if worker.umems.split() {
            tracing::info!(
                worker = index,
                "the uplink is zero-copy: pods get a UMEM of their own (one copy between them)"
            );
        }
        Ok(worker)
    }

    /// One round of the loop, without sleeping. Returns the number of frames taken in.
    fn turn(&mut self) -> usize {
        self.take_replies();
        let snapshot = self.shared.tables.load_full();
        if snapshot.generation() != self.generation {
            self.sync(&snapshot);
        }
        let mut work = 0;
        self.pipeline.set_clock(self.epoch.elapsed().as_nanos() as u64);
        for port in self.ports.handles() {
            work += self.receive(port, &snapshot);
        }
        work += self.receive_host(&snapshot);
        work += self.receive_taps(&snapshot);
        work += self.drain_inbox(&snapshot);
        self.flush();
        if self.shared.conntrack_wanted[self.index].swap(false, Ordering::Relaxed) {
            self.dump_conntrack(&snapshot);
        }
        work
    }

    /// Once a second: fill levels, pods to retry, busy polling, counters.
    fn housekeeping(&mut self) {
        self.decay_fill_levels();
        self.retry_pods();
        self.busy_poll();
        self.publish_stats();
    }

    /// The worker's loop, until the daemon stops.
    fn run(mut self) {
        let mut poller = Poller::default();
        let mut readiness = Vec::new();
        let mut last_housekeeping = Instant::now();
        let mut last_work = Instant::now();
        // When the worker last left its core for at least a pause (slept in poll, or paused).
        let mut off_core = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let work = self.turn();
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                last_housekeeping = Instant::now();
                self.housekeeping();
            }
            self.longest_round = self.longest_round.max(started.elapsed());
            if self.realtime && off_core.elapsed() >= REALTIME_SLICE {
                std::thread::sleep(REALTIME_PAUSE);
                self.io_counters.realtime_pauses += 1;
                off_core = Instant::now();
            }
            if work > 0 {
                last_work = started;
                continue;
            }
            match self.shared.poll_mode {
                PollMode::Spin => std::hint::spin_loop(),
                // Polling on for a moment before sleeping: what a burst causes (a reply, an
                // acknowledgement, the next request) often comes back within it, and is then
                // taken without a wake-up, which costs tens of microseconds on a VM.
                PollMode::Event if last_work.elapsed() < SPIN_BEFORE_SLEEP => {
                    std::hint::spin_loop()
                }
                PollMode::Event => {
                    let asleep = Instant::now();
                    self.sleep(&mut poller, &mut readiness);
                    // poll() returns at once when something came meanwhile: only a sleep as
                    // long as a pause gave the core to others.
                    if asleep.elapsed() >= REALTIME_PAUSE {
                        off_core = Instant::now();
                    }
                }
            }
        }
        self.publish_stats();
        self.shutdown();
    }

    /// Detaches the pods and closes the uplink's sockets, here: at shutdown the time it takes
    /// no longer matters.
    fn shutdown(&mut self) {
        self.release_all();
        // The kernel lets go of a queue only some time after its socket closes (see io::xsk),
        // and the uplink's is the one a restarted dataplane wants back first.
        for port in self.ports.handles() {
            if let Some(socket) = self.ports.remove(port, &mut self.umems) {
                self.umems.reclaim(socket.release());
            }
        }
    }

    /// Sleeps in poll(2) until a socket has frames, another worker or the attacher wakes
    /// this one, or the timeout passes (1 ms while frames wait to be sent).
    fn sleep(&mut self, poller: &mut Poller, readiness: &mut Vec<io::Readiness>) {
        // Frames waiting for room on a TX ring, or on one for the kernel to take them: back
        // soon to send them, however quiet the receive side.
        let waiting = self.ports.pending() > 0 || self.tx_backlog > 0;
        let timeout = if waiting { 1 } else { POLL_TIMEOUT_MS };
        let mut fds: Vec<BorrowedFd<'_>> = vec![self.wakee.as_fd()];
        fds.extend(self.host.as_ref().map(|h| h.tun.as_fd()));
        fds.extend(self.taps.iter().flatten().map(|t| t.queue().as_fd()));
        let umems = self.umems.all();
        fds.extend(self.ports.iter().filter_map(|p| umems[p.umem].socket(p.socket)?.fd()));
        if poller.wait(&fds, timeout, readiness).is_ok()
            && readiness.first().is_some_and(|r| r.readable)
        {
            let mut buf = [0u8; 64];
            while self.wakee.recv(&mut buf).is_ok() {}
        }
    }

    /// After a pod joined, levels above the new minimum come down while the pods' part is
    /// over-committed, then levels below it rise where there is room ([`budget`]).
    fn trim_fill_levels(&mut self) {
        for (_, port) in self.ports.iter_mut() {
            if matches!(port.kind, PortKind::Pod(_)) {
                port.fill_target = self.budget.trim_pod(port.fill_target);
            }
        }
        for (_, port) in self.ports.iter_mut() {
            if matches!(port.kind, PortKind::Pod(_)) {
                port.fill_target = self.budget.lift_pod(port.fill_target);
            }
        }
    }

    /// Pod fill levels come down where bursts no longer use them ([`budget`]).
    fn decay_fill_levels(&mut self) {
        for (_, port) in self.ports.iter_mut() {
            if matches!(port.kind, PortKind::Pod(_)) {
                port.fill_target = self.budget.decay_pod(port.fill_target, port.largest_burst);
            }
            port.largest_burst = 0;
        }
    }

    /// SO_BUSY_POLL only where the driver reports a NAPI id for the socket (real NICs); on
    /// veth the socket never gets one (DESIGN.md) and busy polling would change nothing. The
    /// id shows up once frames arrived, so sockets are looked at until they had traffic.
    fn busy_poll(&mut self) {
        let umems = self.umems.all();
        for (_, port) in self.ports.iter_mut().filter(|(_, p)| !p.busy_poll_checked) {
            let Some(socket) = umems[port.umem].socket(port.socket) else { continue };
            if port.stats.rx_packets == 0 {
                continue;
            }
            port.busy_poll_checked = true;
            match socket.napi_id() {
                Some(napi) => match socket.enable_busy_poll(20, BURST as u32) {
                    Ok(()) => tracing::info!(
                        worker = self.index,
                        interface = socket.interface(),
                        queue = port.queue,
                        napi,
                        "preferred busy polling on (20 µs, budget 256)"
                    ),
                    Err(e) => tracing::warn!(interface = socket.interface(), "busy polling: {e}"),
                },
                None => tracing::debug!(
                    interface = socket.interface(),
                    queue = port.queue,
                    "no NAPI id: busy polling would do nothing here"
                ),
            }
        }
    }
}

/// What one worker is started with.
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    /// The core to pin to; `None`: unpinned.
    pub(crate) core: Option<core_affinity::CoreId>,
    /// SCHED_FIFO priority, if any.
    pub(crate) realtime_priority: Option<u8>,
    pub(crate) shared: Arc<Shared>,
    /// The uplink's XSKMAP, where the worker registers its uplink queues' sockets.
    pub(crate) uplink_map: Arc<XskMap>,
    /// Where other workers and the attacher wake this one (the other end is its inbox's).
    pub(crate) wakee: UnixDatagram,
    /// Its queue of the host interface.
    pub(crate) host_queue: Option<TunQueue>,
    /// Its queue of the tunnel-GSO interface.
    pub(crate) tunnel_queue: Option<TunnelQueue>,
    /// Its link to the attacher.
    pub(crate) attacher: WorkerLink,
}

/// Spawns a worker; it reports its startup's success or failure on `ready`.
pub(crate) fn spawn(
    setup: WorkerSetup,
    ready: mpsc::Sender<(usize, Result<(), WorkerError>)>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let WorkerSetup {
        index,
        core,
        realtime_priority,
        shared,
        uplink_map,
        wakee,
        host_queue,
        tunnel_queue,
        attacher,
    } = setup;
    std::thread::Builder::new().name(format!("podlane-worker-{index}")).spawn(move || {
        if let Some(core) = core
            && !core_affinity::set_for_current(core)
        {
            tracing::warn!(worker = index, core = core.id, "could not pin to core");
        }
        if let Some(priority) = realtime_priority {
            // Asked for explicitly: a worker that silently ran without it would lose frames
            // whenever something else takes its core, so this is a startup error.
            if let Err(e) = io::set_realtime_priority(priority) {
                let _ = ready.send((index, Err(WorkerError::Realtime(e))));
                return;
            }
        }
        let parts = Parts { index, shared, wakee, host_queue, tunnel_queue, attacher };
        match Worker::start(parts, &uplink_map) {
            Ok(mut worker) => {
                worker.realtime = realtime_priority.is_some();
                let _ = ready.send((index, Ok(())));
                drop(uplink_map);
                worker.run();
            }
            Err(e) => {
                let _ = ready.send((index, Err(e)));
            }
        }
    })
}
