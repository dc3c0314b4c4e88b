//! One forwarding worker: a thread pinned to a core that owns a UMEM, the AF_XDP sockets on
//! it (its uplink queues and its pods' interfaces), a pipeline and its counters.
//!
//! The loop: follow a new snapshot if there is one ([`pods`]), then for each port take a
//! burst of up to [`BURST`] received frames through the pipeline and onto the ports their
//! verdicts name ([`forward`]), take what other workers handed over ([`inbox`]), transmit,
//! reap completions, top up fill rings. With nothing received, the worker sleeps in poll(2)
//! (event mode, the default) or spins (spin mode). Once a second it looks after its pods,
//! busy polling and counters ([`stats`]).
//!
//! * [`assign`] — which worker owns which uplink queue and which pod.
//! * [`port`] — a socket as a port: pending transmissions, fill level, counters.
//! * [`pods`] — the local endpoints slot by slot: attached, waiting, or another worker's.
//! * [`forward`] — receive, route verdicts, transmit.
//! * [`inbox`] — frames for pods another worker owns.
//! * [`host`] — the worker's queue of the host interface.
//! * [`stats`] — the counters a worker publishes.

mod assign;
mod forward;
mod host;
mod inbox;
mod pods;
mod port;
mod stats;

pub(crate) use inbox::Inbox;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::{PollMode, Shared};
use crate::engine::{Frame, Pipeline, Verdict};
use crate::io::tun::TunQueue;
use crate::io::xdp::{XdpError, XskMap};
use crate::io::xsk::{Packet, RingSizes, Umem, XskError};
use crate::io::{self, Poller};
use port::{Port, PortId, PortKind, Ports, UPLINK_FILL};

/// Frames per RX burst (DESIGN.md: bursts of 256 with the poll()-driven loop).
pub(crate) const BURST: usize = 256;
/// Sleep bound in poll(), so the worker notices table changes and the stop flag.
const POLL_TIMEOUT_MS: i32 = 50;
/// How often pods, busy polling and counters are looked after.
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
    umem: Umem,
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
    /// The origin of the clock the pipeline is given (its ICMP error budget refills by it).
    epoch: Instant,
    // Reused per batch, so the loop does not allocate.
    rx: Vec<Packet>,
    verdicts: Vec<Verdict>,
    frames: Vec<Frame<'static>>,
    io_counters: stats::IoCounters,
}

impl Worker {
    /// Creates the UMEM and binds this worker's uplink queues. Runs on the worker's thread.
    fn start(
        index: usize,
        shared: Arc<Shared>,
        uplink_map: &XskMap,
        wakee: UnixDatagram,
        host_queue: Option<TunQueue>,
    ) -> Result<Worker, WorkerError> {
        let umem = Umem::new(shared.umem).map_err(WorkerError::Umem)?;
        let pipeline = Pipeline::for_worker(shared.engine.clone(), index as u16);
        let mut worker = Worker {
            index,
            shared: shared.clone(),
            umem,
            ports: Ports::default(),
            uplink: None,
            endpoints: Vec::new(),
            pipeline,
            generation: u64::MAX,
            wakee,
            host: host_queue.map(|tun| host::HostQueue::new(tun, index as u32)),
            epoch: Instant::now(),
            rx: Vec::with_capacity(BURST),
            verdicts: vec![Verdict::Host; BURST],
            frames: Vec::with_capacity(BURST),
            io_counters: stats::IoCounters::default(),
        };
        if io::interface_index(&shared.uplink).is_none() {
            return Err(WorkerError::NoUplink(shared.uplink.clone()));
        }
        for queue in assign::uplink_queues(index, shared.workers, shared.uplink_queues) {
            let socket = worker
                .umem
                .open(&shared.uplink, queue, RingSizes::default(), shared.bind)
                .map_err(|source| WorkerError::UplinkSocket { queue, source })?;
            if let Some(sock) = worker.umem.socket(socket) {
                uplink_map
                    .insert(queue, sock)
                    .map_err(|source| WorkerError::UplinkMap { queue, source })?;
                tracing::info!(
                    worker = index,
                    interface = %shared.uplink,
                    queue,
                    mode = %sock.mode(),
                    "uplink socket bound"
                );
            }
            let port = worker.ports.add(Port::new(socket, PortKind::Uplink, &shared.uplink, queue));
            worker.uplink.get_or_insert(port);
            worker.umem.refill(socket, UPLINK_FILL);
        }
        Ok(worker)
    }

    /// The worker's loop, until the daemon stops.
    fn run(mut self) {
        let mut poller = Poller::default();
        let mut readiness = Vec::new();
        let mut last_housekeeping = Instant::now();
        let mut idle_rounds = 0u32;
        while !self.shared.stop.load(Ordering::Relaxed) {
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
            work += self.drain_inbox(&snapshot);
            self.flush();
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                last_housekeeping = Instant::now();
                self.check_pods();
                self.busy_poll();
                self.publish_stats();
            }
            if work > 0 {
                idle_rounds = 0;
                continue;
            }
            idle_rounds += 1;
            match self.shared.poll_mode {
                PollMode::Spin => std::hint::spin_loop(),
                // A few empty rounds before sleeping: a burst often follows a burst.
                PollMode::Event if idle_rounds > 4 => self.sleep(&mut poller, &mut readiness),
                PollMode::Event => {}
            }
        }
        self.publish_stats();
        // The uplink first: the kernel lets go of a queue only some time after its socket
        // closes (see io::xsk), and the uplink's is the one a restarted dataplane wants back.
        for port in self.ports.handles() {
            self.ports.close(port, &mut self.umem, self.index);
        }
        self.release_all();
    }

    /// Sleeps in poll(2) until a socket has frames, another worker hands some over, or the
    /// timeout passes (1 ms while frames wait for TX ring room).
    fn sleep(&mut self, poller: &mut Poller, readiness: &mut Vec<io::Readiness>) {
        let backlog = self.ports.iter().any(|p| !p.pending.is_empty());
        let timeout = if backlog { 1 } else { POLL_TIMEOUT_MS };
        let mut fds: Vec<BorrowedFd<'_>> = vec![self.wakee.as_fd()];
        fds.extend(self.host.as_ref().map(|h| h.tun.as_fd()));
        fds.extend(self.ports.iter().filter_map(|p| self.umem.socket(p.socket)?.fd()));
        if poller.wait(&fds, timeout, readiness).is_ok()
            && readiness.first().is_some_and(|r| r.readable)
        {
            let mut buf = [0u8; 64];
            while self.wakee.recv(&mut buf).is_ok() {}
        }
    }

    /// SO_BUSY_POLL only where the driver reports a NAPI id for the socket (real NICs); on
    /// veth the socket never gets one (DESIGN.md) and busy polling would change nothing. The
    /// id shows up once frames arrived, so sockets are looked at until they had traffic.
    fn busy_poll(&mut self) {
        for (_, port) in self.ports.iter_mut().filter(|(_, p)| !p.busy_poll_checked) {
            let Some(socket) = self.umem.socket(port.socket) else { continue };
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
    /// Where other workers wake this one (the other end is its inbox's).
    pub(crate) wakee: UnixDatagram,
    /// Its queue of the host interface.
    pub(crate) host_queue: Option<TunQueue>,
}

/// Spawns a worker; it reports its startup's success or failure on `ready`.
pub(crate) fn spawn(
    setup: WorkerSetup,
    ready: mpsc::Sender<(usize, Result<(), WorkerError>)>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let WorkerSetup { index, core, realtime_priority, shared, uplink_map, wakee, host_queue } =
        setup;
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
        match Worker::start(index, shared, &uplink_map, wakee, host_queue) {
            Ok(worker) => {
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
