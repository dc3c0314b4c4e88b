//! One forwarding worker: a thread pinned to a core that owns a UMEM, the AF_XDP sockets on
//! it (its uplink queues and its pods' interfaces), a pipeline and its counters.
//!
//! The loop: for each socket, take a burst of up to 256 received frames, run the pipeline on
//! them as one batch, and queue each frame on the socket its verdict names — the same UMEM
//! chunk, now rewritten in place, so nothing is copied in userspace. Then transmit, reap
//! completions, top up fill rings. With nothing received, the worker sleeps in poll(2)
//! (event mode, the default) or spins (spin mode).
//!
//! Socket assignment (documented in ARCHITECTURE.md): uplink queue `q` belongs to worker
//! `q % workers`; all queues of a pod interface belong to worker `hash(name) % workers`. A
//! frame for a pod another worker owns is copied into that worker's inbox (a lock-free
//! queue) and the owner is woken — the only copy on any path, and only with several
//! workers.

use std::collections::HashMap;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::{PollMode, Shared};
use crate::api::{SocketCounters, WorkerCounters};
use crate::engine::{DropReason, Frame, Ingress, Pipeline, Verdict};
use crate::io::xdp::{XdpLink, XdpProgram, XskMap};
use crate::io::xsk::{Packet, RingSizes, SocketId, Umem, UmemConfig};
use crate::io::{self, Poller, Readiness};
use crate::table::{EndpointId, Snapshot};

/// Frames per RX burst (DESIGN.md: bursts of 256 with the poll()-driven loop).
pub(super) const BURST: usize = 256;
/// Fill-ring level kept on each uplink queue, and the level a pod queue starts at. A pod's
/// level doubles (up to its ring size) whenever one burst takes half of it: idle pods hold few
/// chunks, busy ones get enough that the kernel never finds the fill ring empty.
const UPLINK_FILL: u32 = 2048;
const POD_FILL: u32 = 128;
/// Ring sizes of pod sockets.
const POD_RING: u32 = 2048;
/// Frames waiting for TX ring room beyond this are dropped (and counted).
const MAX_PENDING: usize = 4096;
/// Sleep bound in poll(), so the worker notices table changes and the stop flag.
const POLL_TIMEOUT_MS: i32 = 50;

/// A frame handed from one worker to the worker that owns its destination pod.
pub(super) struct Handoff {
    ifindex: u32,
    len: u16,
    bytes: Box<[u8; 2048]>,
}

/// The inbox of a worker, shared with the others.
pub(super) struct Inbox {
    queue: ArrayQueue<Handoff>,
    /// Emptied boxes, reused so steady state does not allocate.
    spare: ArrayQueue<Box<[u8; 2048]>>,
    waker: UnixDatagram,
}

impl Inbox {
    pub(super) fn new() -> std::io::Result<(Inbox, UnixDatagram)> {
        let (waker, wakee) = UnixDatagram::pair()?;
        waker.set_nonblocking(true)?;
        wakee.set_nonblocking(true)?;
        Ok((Inbox { queue: ArrayQueue::new(4096), spare: ArrayQueue::new(4096), waker }, wakee))
    }
}

#[derive(Debug)]
enum PortKind {
    Uplink,
    Pod { interface: String },
}

/// One socket and what waits to be sent on it.
struct Port {
    socket: SocketId,
    kind: PortKind,
    ifindex: u32,
    queue: u32,
    pending: Vec<Packet>,
    stats: PortCounters,
    /// Busy polling was looked at: enabled where the socket has a NAPI id.
    busy_poll_checked: bool,
    /// Chunks kept on the fill ring.
    fill_target: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct PortCounters {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    tx_dropped: u64,
}

/// A pod interface this worker has attached: the program and map stay as long as this does.
struct PodAttachment {
    ifindex: u32,
    ports: Vec<usize>,
    _link: XdpLink,
    _map: XskMap,
}

/// Where frames for an endpoint go from this worker.
#[derive(Clone, Copy)]
enum Target {
    Port(usize),
    Worker { worker: usize, ifindex: u32 },
    Nowhere,
}

pub(super) struct Worker {
    index: usize,
    shared: Arc<Shared>,
    umem: Umem,
    ports: Vec<Option<Port>>,
    uplink_port: Option<usize>,
    pods: HashMap<String, PodAttachment>,
    /// Pod interfaces wanted but not attachable yet, with the time of the last attempt.
    pending_pods: HashMap<String, Instant>,
    pipeline: Pipeline,
    generation: u64,
    targets: Vec<Target>,
    /// Ingress per port index (pod ports: the endpoint in the current snapshot).
    ingress: Vec<Option<Ingress>>,
    wakee: UnixDatagram,
    rx: Vec<Packet>,
    verdicts: Vec<Verdict>,
    scratch: Vec<u32>,
    frames: Vec<Frame<'static>>,
    handoff_in: u64,
    handoff_dropped: u64,
    no_socket: u64,
    chunk_exhausted: u64,
}

/// Lends the parked frame vector to a batch (`Vec` is covariant: `'static` shortens to `'a`).
fn recycle<'a>(mut frames: Vec<Frame<'static>>) -> Vec<Frame<'a>> {
    frames.clear();
    frames
}

/// Parks the batch's frame vector for the next batch, keeping its allocation: it is emptied
/// first, so no frame outlives its borrow, and collecting an emptied `into_iter` reuses the
/// buffer in place.
fn park<'a>(mut frames: Vec<Frame<'a>>) -> Vec<Frame<'static>> {
    frames.clear();
    frames.into_iter().map(|_| -> Frame<'static> { unreachable!("emptied") }).collect()
}

/// Stable owner of a pod interface among `workers`.
pub(super) fn pod_owner(interface: &str, workers: usize) -> usize {
    // FNV-1a: stable across runs and versions, unlike the std hasher.
    let hash = interface
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % workers as u64) as usize
}

impl Worker {
    /// Creates the UMEM and binds this worker's uplink queues. Runs on the worker's thread.
    pub(super) fn start(
        index: usize,
        shared: Arc<Shared>,
        uplink_map: &XskMap,
        wakee: UnixDatagram,
    ) -> Result<Worker, String> {
        let umem = Umem::new(shared.umem).map_err(|e| e.to_string())?;
        let pipeline = Pipeline::for_worker(shared.engine.clone(), index as u16);
        let mut worker = Worker {
            index,
            shared: shared.clone(),
            umem,
            ports: Vec::new(),
            uplink_port: None,
            pods: HashMap::new(),
            pending_pods: HashMap::new(),
            pipeline,
            generation: u64::MAX,
            targets: Vec::new(),
            ingress: Vec::new(),
            wakee,
            rx: Vec::with_capacity(BURST),
            verdicts: vec![Verdict::Host; BURST],
            scratch: Vec::with_capacity(BURST),
            frames: Vec::with_capacity(BURST),
            handoff_in: 0,
            handoff_dropped: 0,
            no_socket: 0,
            chunk_exhausted: 0,
        };
        let ifindex = io::interface_index(&shared.uplink)
            .ok_or_else(|| format!("no interface named {:?}", shared.uplink))?;
        for queue in (0..shared.uplink_queues).filter(|q| *q as usize % shared.workers == index) {
            let socket = worker
                .umem
                .open(&shared.uplink, queue, RingSizes::default(), shared.bind)
                .map_err(|e| e.to_string())?;
            let sock = worker.umem.socket(socket).ok_or("socket vanished")?;
            uplink_map.insert(queue, sock).map_err(|e| e.to_string())?;
            tracing::info!(
                worker = index,
                interface = %shared.uplink,
                queue,
                mode = %sock.mode(),
                "uplink socket bound"
            );
            let port = worker.add_port(socket, PortKind::Uplink, ifindex, queue);
            worker.uplink_port.get_or_insert(port);
            worker.umem.refill(socket, UPLINK_FILL);
        }
        Ok(worker)
    }

    fn add_port(&mut self, socket: SocketId, kind: PortKind, ifindex: u32, queue: u32) -> usize {
        let fill_target = if matches!(kind, PortKind::Uplink) { UPLINK_FILL } else { POD_FILL };
        let port = Port {
            socket,
            kind,
            ifindex,
            queue,
            pending: Vec::new(),
            stats: PortCounters::default(),
            busy_poll_checked: false,
            fill_target,
        };
        let slot = self.ports.iter().position(Option::is_none).unwrap_or(self.ports.len());
        if slot == self.ports.len() {
            self.ports.push(None);
            self.ingress.push(None);
        }
        self.ports[slot] = Some(port);
        self.ingress[slot] = None;
        slot
    }

    fn close_port(&mut self, port: usize) {
        if let Some(mut p) = self.ports.get_mut(port).and_then(Option::take) {
            for packet in p.pending.drain(..) {
                self.umem.release(packet.chunk);
            }
            let lost = self.umem.close(p.socket);
            if lost > 0 {
                tracing::warn!(worker = self.index, lost, "chunks still in the kernel at close");
            }
            self.ingress[port] = None;
        }
    }

    /// The worker's loop, until the daemon stops.
    pub(super) fn run(mut self) {
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
            for port in 0..self.ports.len() {
                work += self.receive(port, &snapshot);
            }
            work += self.drain_inbox();
            self.flush();
            if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                last_housekeeping = Instant::now();
                self.housekeeping(&snapshot);
            }
            if work > 0 {
                idle_rounds = 0;
                continue;
            }
            idle_rounds += 1;
            match self.shared.poll_mode {
                PollMode::Spin => std::hint::spin_loop(),
                // A few empty rounds before sleeping: a burst often follows a burst.
                PollMode::Event if idle_rounds > 4 => {
                    let backlog = self.ports.iter().flatten().any(|p| !p.pending.is_empty());
                    let timeout = if backlog { 1 } else { POLL_TIMEOUT_MS };
                    let mut fds: Vec<BorrowedFd<'_>> = vec![self.wakee.as_fd()];
                    fds.extend(
                        self.ports
                            .iter()
                            .flatten()
                            .filter_map(|p| self.umem.socket(p.socket))
                            .map(AsFd::as_fd),
                    );
                    if poller.wait(&fds, timeout, &mut readiness).is_ok()
                        && readiness.first().is_some_and(|r: &Readiness| r.readable)
                    {
                        let mut buf = [0u8; 64];
                        while self.wakee.recv(&mut buf).is_ok() {}
                    }
                }
                PollMode::Event => {}
            }
        }
        self.publish_stats();
        for port in 0..self.ports.len() {
            self.close_port(port);
        }
        self.pods.clear();
    }

    /// Follows a new snapshot: attach pods that appeared, detach those that went, and map
    /// endpoint ids (which are per snapshot) to ports.
    fn sync(&mut self, snapshot: &Snapshot) {
        self.generation = snapshot.generation();
        let workers = self.shared.workers;
        let wanted: HashMap<&str, ()> = snapshot
            .endpoints()
            .iter()
            .filter(|e| pod_owner(&e.interface, workers) == self.index)
            .map(|e| (e.interface.as_str(), ()))
            .collect();
        let gone: Vec<String> =
            self.pods.keys().filter(|name| !wanted.contains_key(name.as_str())).cloned().collect();
        for name in gone {
            self.detach_pod(&name, "its endpoint was removed");
        }
        self.pending_pods.retain(|name, _| wanted.contains_key(name.as_str()));
        for name in wanted.keys() {
            if !self.pods.contains_key(*name) && !self.pending_pods.contains_key(*name) {
                self.attach_pod(name);
            }
        }
        self.remap(snapshot);
    }

    fn remap(&mut self, snapshot: &Snapshot) {
        let workers = self.shared.workers;
        self.targets.clear();
        for endpoint in snapshot.endpoints() {
            let owner = pod_owner(&endpoint.interface, workers);
            let target = if owner == self.index {
                self.pods
                    .get(&endpoint.interface)
                    .and_then(|pod| pod.ports.first().copied())
                    .map_or(Target::Nowhere, Target::Port)
            } else {
                io::interface_index(&endpoint.interface)
                    .map_or(Target::Nowhere, |ifindex| Target::Worker { worker: owner, ifindex })
            };
            self.targets.push(target);
        }
        for (slot, port) in self.ports.iter().enumerate() {
            self.ingress[slot] = port.as_ref().and_then(|p| match &p.kind {
                PortKind::Uplink => Some(Ingress::Uplink),
                PortKind::Pod { interface } => {
                    snapshot.endpoint_by_interface(interface).map(Ingress::Pod)
                }
            });
        }
    }

    fn attach_pod(&mut self, name: &str) {
        match self.try_attach_pod(name) {
            Ok(pod) => {
                tracing::info!(
                    worker = self.index,
                    interface = name,
                    queues = pod.ports.len(),
                    "pod interface attached"
                );
                self.pods.insert(name.to_owned(), pod);
                self.pending_pods.remove(name);
            }
            Err(e) => {
                if self.pending_pods.insert(name.to_owned(), Instant::now()).is_none() {
                    tracing::warn!(
                        worker = self.index,
                        interface = name,
                        "pod interface not attached, retrying every second: {e}"
                    );
                }
            }
        }
    }

    fn try_attach_pod(&mut self, name: &str) -> Result<PodAttachment, String> {
        let ifindex =
            io::interface_index(name).ok_or_else(|| format!("no interface named {name:?}"))?;
        let queues = io::interface_queues(name);
        let map = XskMap::new(queues).map_err(|e| e.to_string())?;
        let program = XdpProgram::pod(&map).map_err(|e| e.to_string())?;
        let rings = RingSizes { rx: POD_RING, tx: POD_RING, fill: POD_RING, completion: POD_RING };
        let mut ports = Vec::new();
        let fail = |worker: &mut Worker, ports: &[usize], e: String| {
            for &p in ports {
                worker.close_port(p);
            }
            e
        };
        for queue in 0..queues {
            let socket = match self.umem.open(name, queue, rings, self.shared.bind) {
                Ok(s) => s,
                Err(e) => return Err(fail(self, &ports, e.to_string())),
            };
            let port =
                self.add_port(socket, PortKind::Pod { interface: name.to_owned() }, ifindex, queue);
            ports.push(port);
            let inserted = match self.umem.socket(socket) {
                Some(s) => map.insert(queue, s).map_err(|e| e.to_string()),
                None => Err("socket vanished".to_owned()),
            };
            if let Err(e) = inserted {
                return Err(fail(self, &ports, e));
            }
            self.umem.refill(socket, POD_FILL);
        }
        let link = match super::attach(&program, name, self.shared.xdp_mode) {
            Ok(link) => link,
            Err(e) => return Err(fail(self, &ports, e)),
        };
        Ok(PodAttachment { ifindex, ports, _link: link, _map: map })
    }

    fn detach_pod(&mut self, name: &str, why: &str) {
        if let Some(pod) = self.pods.remove(name) {
            for &port in &pod.ports {
                self.close_port(port);
            }
            tracing::info!(worker = self.index, interface = name, "pod interface detached: {why}");
        }
    }

    /// Once a second: retry pods that could not be attached, notice pod interfaces that
    /// disappeared, publish counters.
    fn housekeeping(&mut self, snapshot: &Snapshot) {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(name, pod)| io::interface_index(name) != Some(pod.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        let changed = !gone.is_empty() || !self.pending_pods.is_empty();
        for name in gone {
            self.detach_pod(&name, "the interface disappeared");
            self.pending_pods.insert(name, Instant::now());
        }
        let retry: Vec<String> = self
            .pending_pods
            .iter()
            .filter(|(_, at)| at.elapsed() >= Duration::from_secs(1))
            .map(|(n, _)| n.clone())
            .collect();
        for name in retry {
            self.attach_pod(&name);
        }
        if changed {
            self.remap(snapshot);
        }
        self.busy_poll();
        self.publish_stats();
    }

    /// SO_BUSY_POLL only where the driver reports a NAPI id for the socket (real NICs); on
    /// veth the socket never gets one (DESIGN.md) and busy polling would change nothing. The
    /// id shows up once frames arrived, so sockets are looked at until they had traffic.
    fn busy_poll(&mut self) {
        for port in self.ports.iter_mut().flatten().filter(|p| !p.busy_poll_checked) {
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

    /// One RX burst on `port`: pipeline, then sort frames onto their TX queues.
    fn receive(&mut self, port: usize, snapshot: &Snapshot) -> usize {
        let Some(p) = self.ports.get(port).and_then(Option::as_ref) else { return 0 };
        let socket = p.socket;
        let n = self.umem.receive(socket, BURST as u32, &mut self.rx) as usize;
        if n == 0 {
            return 0;
        }
        let bytes: u64 = self.rx.iter().map(|pkt| u64::from(pkt.len)).sum();
        if let Some(p) = self.ports[port].as_mut() {
            p.stats.rx_packets += n as u64;
            p.stats.rx_bytes += bytes;
            if n as u32 * 2 >= p.fill_target && p.fill_target < POD_RING {
                p.fill_target *= 2;
            }
        }
        let Some(ingress) = self.ingress[port] else {
            // A pod interface whose endpoint left the tables: nothing to forward for it.
            self.no_socket += n as u64;
            for packet in self.rx.drain(..) {
                self.umem.release(packet.chunk);
            }
            return n;
        };
        {
            let mut frames = recycle(std::mem::take(&mut self.frames));
            let mut heads = self.rx.iter();
            self.umem.lend(&self.rx, &mut self.scratch, |buffer| {
                if let Some(pkt) = heads.next() {
                    frames.push(Frame::new(buffer, pkt.head as usize, pkt.len as usize));
                }
            });
            self.pipeline.process_batch(snapshot, ingress, &mut frames, &mut self.verdicts[..n]);
            for (pkt, frame) in self.rx.iter_mut().zip(frames.iter()) {
                pkt.head = frame.head() as u32;
                pkt.len = frame.len() as u32;
            }
            self.frames = park(frames);
        }
        let mut rx = std::mem::take(&mut self.rx);
        for (i, packet) in rx.drain(..).enumerate() {
            let verdict = self.verdicts[i];
            let target = match verdict {
                Verdict::Encap => self.uplink_port.map_or(Target::Nowhere, Target::Port),
                Verdict::Decap(EndpointId(id)) | Verdict::Local(EndpointId(id)) => {
                    self.targets.get(id as usize).copied().unwrap_or(Target::Nowhere)
                }
                Verdict::Reply => Target::Port(port),
                // Host: the exception path (a TAP to the host stack) is later work; until
                // then such frames are counted by the pipeline and dropped here.
                Verdict::Host | Verdict::Drop(_) => {
                    self.umem.release(packet.chunk);
                    continue;
                }
            };
            self.send(target, packet);
        }
        self.rx = rx;
        n
    }

    fn send(&mut self, target: Target, packet: Packet) {
        match target {
            Target::Port(port) => match self.ports.get_mut(port).and_then(Option::as_mut) {
                Some(p) if p.pending.len() < MAX_PENDING => p.pending.push(packet),
                Some(p) => {
                    p.stats.tx_dropped += 1;
                    self.umem.release(packet.chunk);
                }
                None => {
                    self.no_socket += 1;
                    self.umem.release(packet.chunk);
                }
            },
            Target::Worker { worker, ifindex } => {
                self.hand_off(worker, ifindex, &packet);
                self.umem.release(packet.chunk);
            }
            Target::Nowhere => {
                self.no_socket += 1;
                self.umem.release(packet.chunk);
            }
        }
    }

    /// Copies a frame into the owning worker's inbox and wakes it.
    fn hand_off(&mut self, worker: usize, ifindex: u32, packet: &Packet) {
        let inbox = &self.shared.inboxes[worker];
        let len = packet.len as usize;
        if len > 2048 {
            self.handoff_dropped += 1;
            return;
        }
        let mut bytes = inbox.spare.pop().unwrap_or_else(|| Box::new([0u8; 2048]));
        let mut copied = false;
        // Borrow the chunk's bytes to copy the frame out.
        let head = packet.head as usize;
        self.umem.lend(std::slice::from_ref(packet), &mut self.scratch, |chunk| {
            if let Some(src) = chunk.get(head..head + len) {
                bytes[..len].copy_from_slice(src);
                copied = true;
            }
        });
        if !copied || inbox.queue.push(Handoff { ifindex, len: len as u16, bytes }).is_err() {
            self.handoff_dropped += 1;
            return;
        }
        let _ = inbox.waker.send(&[1]);
    }

    /// Frames other workers handed to this one's pods.
    fn drain_inbox(&mut self) -> usize {
        let shared = self.shared.clone();
        let inbox = &shared.inboxes[self.index];
        let mut n = 0;
        while let Some(handoff) = inbox.queue.pop() {
            n += 1;
            self.handoff_in += 1;
            let port = self
                .pods
                .values()
                .find(|pod| pod.ifindex == handoff.ifindex)
                .and_then(|pod| pod.ports.first().copied());
            match (port, self.umem.allocate()) {
                (Some(port), Some(chunk)) => {
                    let head = 256usize;
                    let len = handoff.len as usize;
                    let packet = Packet { chunk, head: head as u32, len: len as u32 };
                    self.umem.lend(std::slice::from_ref(&packet), &mut self.scratch, |dst| {
                        dst[head..head + len].copy_from_slice(&handoff.bytes[..len]);
                    });
                    self.send(Target::Port(port), packet);
                }
                (_, chunk) => {
                    if let Some(chunk) = chunk {
                        self.umem.release(chunk);
                    } else {
                        self.chunk_exhausted += 1;
                    }
                    self.handoff_dropped += 1;
                }
            }
            let _ = inbox.spare.push(handoff.bytes);
        }
        n
    }

    /// Transmits what is pending, reaps completions, refills.
    fn flush(&mut self) {
        let mut down = Vec::new();
        for (slot, port) in self.ports.iter_mut().enumerate() {
            let Some(p) = port.as_mut() else { continue };
            // Also with nothing pending: frames still in flight may need another kick.
            let outcome = self.umem.transmit(p.socket, &mut p.pending);
            p.stats.tx_packets += u64::from(outcome.queued);
            p.stats.tx_bytes += outcome.bytes;
            if outcome.interface_down {
                down.push(slot);
            }
            self.umem.complete(p.socket);
            self.umem.refill(p.socket, p.fill_target);
        }
        for slot in down {
            if let Some(Port { kind: PortKind::Pod { interface }, ifindex, .. }) =
                self.ports[slot].as_ref()
                && io::interface_index(interface) != Some(*ifindex)
            {
                let name = interface.clone();
                self.detach_pod(&name, "the interface disappeared");
                self.pending_pods.insert(name, Instant::now());
            }
        }
    }

    fn publish_stats(&self) {
        let sockets = self
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let socket = self.umem.socket(p.socket);
                let xdp = socket.and_then(|s| s.statistics().ok()).unwrap_or_default();
                SocketCounters {
                    interface: socket.map(|s| s.interface().to_owned()).unwrap_or_default(),
                    queue: p.queue,
                    mode: socket.map(|s| s.mode().to_string()).unwrap_or_default(),
                    rx_packets: p.stats.rx_packets,
                    rx_bytes: p.stats.rx_bytes,
                    tx_packets: p.stats.tx_packets,
                    tx_bytes: p.stats.tx_bytes,
                    tx_dropped: p.stats.tx_dropped,
                    rx_ring_full: xdp.rx_ring_full,
                    rx_fill_ring_empty: xdp.rx_fill_ring_empty_descs,
                    rx_invalid_descs: xdp.rx_invalid_descs,
                    tx_invalid_descs: xdp.tx_invalid_descs,
                    rx_dropped: xdp.rx_dropped,
                }
            })
            .collect();
        let c = self.pipeline.counters();
        let stats = WorkerCounters {
            worker: self.index,
            rx_frames: c.rx_frames,
            rx_bytes: c.rx_bytes,
            encap: c.encap,
            decap: c.decap,
            local: c.local,
            reply: c.reply,
            host: c.host,
            drops: DropReason::ALL
                .iter()
                .filter(|r| c.dropped(**r) > 0)
                .map(|r| (r.label().to_owned(), c.dropped(*r)))
                .collect(),
            no_socket: self.no_socket,
            handoff_in: self.handoff_in,
            handoff_dropped: self.handoff_dropped,
            chunk_exhausted: self.chunk_exhausted,
            free_chunks: self.umem.free_chunks(),
            invalid_descriptors: self.umem.invalid_descriptors(),
            sockets,
        };
        if let Ok(mut slot) = self.shared.stats[self.index].lock() {
            *slot = stats;
        }
    }
}

/// Spawns worker `index` pinned to `core` (under SCHED_FIFO at `realtime_priority` if
/// given); reports startup success or failure on `ready`.
pub(super) fn spawn(
    index: usize,
    core: Option<core_affinity::CoreId>,
    realtime_priority: Option<u8>,
    shared: Arc<Shared>,
    uplink_map: Arc<XskMap>,
    wakee: UnixDatagram,
    ready: mpsc::Sender<Result<(), String>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("podlane-worker-{index}")).spawn(move || {
        if let Some(core) = core {
            if !core_affinity::set_for_current(core) {
                tracing::warn!(worker = index, core = core.id, "could not pin to core");
            }
        }
        if let Some(priority) = realtime_priority {
            // Asked for explicitly: a worker that silently ran without it would lose frames
            // whenever something else takes its core, so this is a startup error.
            if let Err(e) = io::set_realtime_priority(priority) {
                let _ = ready.send(Err(format!("worker {index}: {e}")));
                return;
            }
        }
        match Worker::start(index, shared, &uplink_map, wakee) {
            Ok(worker) => {
                let _ = ready.send(Ok(()));
                drop(uplink_map);
                worker.run();
            }
            Err(e) => {
                let _ = ready.send(Err(format!("worker {index}: {e}")));
            }
        }
    })
}

/// Sizes a UMEM for the worker: the uplink's fill level per queue, the pods', TX in flight.
pub(super) fn umem_config(chunks: u32) -> UmemConfig {
    UmemConfig { chunks, ..UmemConfig::default() }
}
