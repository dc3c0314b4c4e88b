//! Pod interfaces are attached and detached here, on a thread of its own, never on a
//! forwarding thread: loading the pod program, creating its XSKMAP, binding one AF_XDP socket
//! per queue against the owning worker's UMEM, attaching the program (each bind and each
//! attach waits for an RCU grace period: 10–30 ms per pod on this machine), and on the way out
//! detaching and releasing (as long again). A worker only asks ([`Request`]), adopts the
//! prepared sockets when the answer comes ([`Reply`]), and hands back what it no longer uses.
//!
//! The attacher also watches the interfaces it attached, once a second: one that disappeared
//! or was recreated under the same name (a new index) is reported, so that its worker detaches
//! it and waits for it to come back.
//!
//! Failing closed: before a pod's program is attached, its host-side interface is told to
//! refuse what the kernel would otherwise do with the pod's frames once no program takes them
//! (the daemon stopped or restarting): not to forward what arrives on it, not to answer ARP on
//! it, no IPv6 on it. Pods address the gateway MAC, which the interface does not have, so
//! their frames die there; and a pod cannot learn the interface's own MAC. The settings live
//! and die with the interface; with `--no-host-interface` (a node whose kernel keeps its own
//! routes to pods) they are left alone.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::{AttachError, XdpModeChoice, attach};
use crate::io::tap::{TapError, TapQueue};
use crate::io::xdp::{XdpError, XdpProgram, XskMap};
use crate::io::xsk::{BindPreference, Released, RingSizes, UmemHandle, XskError, XskSocket};
use crate::io::{self};
use crate::table::EndpointId;

/// Ring sizes of pod sockets.
pub(crate) const POD_RING: u32 = 2048;
/// How often attached interfaces are looked at.
const WATCH: Duration = Duration::from_secs(1);

/// A pod interface with its program attached and a socket bound per queue.
#[derive(Debug)]
pub(crate) struct Attachment {
    pub(crate) interface: String,
    pub(crate) ifindex: u32,
    /// One per queue of the interface, bound to the worker's UMEM; the worker adopts them.
    /// None for a TAP pod.
    pub(crate) sockets: Vec<XskSocket>,
    /// A TAP pod's queue (its `ifindex` is 0: the device is in the pod's namespace).
    pub(crate) tap: Option<TapQueue>,
    /// What keeps the program attached (its BPF link and XSKMAP); dropped to detach it.
    pub(crate) hold: Box<dyn std::fmt::Debug + Send>,
}

/// Why a pod interface could not be attached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PodAttachError {
    #[error("no interface named {0:?}")]
    NoInterface(String),
    #[error(transparent)]
    Map(XdpError),
    #[error(transparent)]
    Socket(XskError),
    #[error(transparent)]
    Program(AttachError),
    #[error(transparent)]
    Tap(TapError),
}

/// How pod interfaces are attached: with XDP and AF_XDP ([`XdpPods`]), or in memory (tests).
pub(crate) trait PodInterfaces: Send {
    fn attach(
        &mut self,
        interface: &str,
        umem: &Arc<UmemHandle>,
    ) -> Result<Attachment, PodAttachError>;

    /// The interface's index now, if it exists.
    fn ifindex(&self, interface: &str) -> Option<u32>;
}

/// What a worker asks of the attacher.
#[derive(Debug)]
pub(crate) enum Request {
    /// Attach the pod in `slot` (`instance`) on `interface`, its sockets bound to `umem`; a
    /// TAP pod's `interface` is in the network namespace `netns`.
    Attach {
        slot: EndpointId,
        instance: u64,
        interface: String,
        netns: Option<String>,
        umem: Arc<UmemHandle>,
    },
    /// Detach and release what the worker no longer uses (its sockets retired from the UMEM).
    Detach(Attachment),
}

/// What the attacher answers.
#[derive(Debug)]
pub(crate) enum Reply {
    Attached {
        slot: EndpointId,
        instance: u64,
        result: Result<Attachment, PodAttachError>,
    },
    /// The sockets of a detached pod are released: their chunks can be taken back.
    Released(Vec<Released>),
    /// The interface of this attached pod disappeared or is another one now.
    Gone {
        slot: EndpointId,
        instance: u64,
    },
}

/// A worker's end: its requests go out, replies come in, and the attacher wakes it.
#[derive(Debug)]
pub(crate) struct WorkerLink {
    pub(crate) requests: Sender<(usize, Request)>,
    pub(crate) replies: Receiver<Reply>,
}

/// The attacher: requests from every worker, one thread.
pub(crate) struct Attacher {
    interfaces: Box<dyn PodInterfaces>,
    requests: Receiver<(usize, Request)>,
    /// Per worker: where replies go and how it is woken.
    workers: Vec<(Sender<Reply>, UnixDatagram)>,
    /// Attached interfaces, to watch: (worker, slot, instance) → (interface, index).
    watched: HashMap<(usize, EndpointId, u64), (String, u32)>,
    last_watch: Instant,
}

impl std::fmt::Debug for Attacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attacher").field("watched", &self.watched.len()).finish_non_exhaustive()
    }
}

impl Attacher {
    /// An attacher for workers woken through `wakers` (one per worker), and each worker's
    /// link to it.
    pub(crate) fn new(
        interfaces: Box<dyn PodInterfaces>,
        wakers: Vec<UnixDatagram>,
    ) -> (Attacher, Vec<WorkerLink>) {
        let (request_tx, requests) = mpsc::channel();
        let mut workers = Vec::new();
        let mut links = Vec::new();
        for waker in wakers {
            let (reply_tx, replies) = mpsc::channel();
            workers.push((reply_tx, waker));
            links.push(WorkerLink { requests: request_tx.clone(), replies });
        }
        let attacher = Attacher {
            interfaces,
            requests,
            workers,
            watched: HashMap::new(),
            last_watch: Instant::now(),
        };
        (attacher, links)
    }

    /// Serves requests until `stop` is set or every worker is gone, at the lowest scheduling
    /// priority: attaching a pod may wait, forwarding may not.
    pub(crate) fn run(mut self, stop: &AtomicBool) {
        if let Err(e) = io::yield_to_forwarding() {
            tracing::warn!("the attacher runs at normal priority: {e}");
        }
        while !stop.load(Ordering::Relaxed) {
            match self.requests.recv_timeout(Duration::from_millis(100)) {
                Ok((worker, request)) => self.serve(worker, request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.last_watch.elapsed() >= WATCH {
                self.watch();
            }
        }
    }

    /// Serves every request waiting now (the tests' way to run the attacher).
    #[cfg(test)]
    pub(crate) fn serve_pending(&mut self) {
        while let Ok((worker, request)) = self.requests.try_recv() {
            self.serve(worker, request);
        }
    }

    fn reply(&self, worker: usize, reply: Reply) {
        if let Some((replies, waker)) = self.workers.get(worker) {
            // A worker that is gone drops what it is sent (an attachment is released then).
            if replies.send(reply).is_ok() {
                let _ = waker.send(&[1]);
            }
        }
    }

    fn serve(&mut self, worker: usize, request: Request) {
        match request {
            Request::Attach { slot, instance, interface, netns: Some(netns), .. } => {
                // A TAP pod: its worker notices a device that is gone when reading it fails.
                let result = TapQueue::open_in(Path::new(&netns), &interface)
                    .map(|tap| Attachment {
                        interface,
                        ifindex: 0,
                        sockets: Vec::new(),
                        tap: Some(tap),
                        hold: Box::new(()),
                    })
                    .map_err(PodAttachError::Tap);
                self.reply(worker, Reply::Attached { slot, instance, result });
            }
            Request::Attach { slot, instance, interface, netns: None, umem } => {
                let result = self.interfaces.attach(&interface, &umem);
                if let Ok(a) = &result {
                    self.watched.insert((worker, slot, instance), (interface, a.ifindex));
                }
                self.reply(worker, Reply::Attached { slot, instance, result });
            }
            Request::Detach(attachment) => {
                self.watched.retain(|(w, _, _), (name, index)| {
                    !(*w == worker && *name == attachment.interface && *index == attachment.ifindex)
                });
                let released = release(attachment);
                self.reply(worker, Reply::Released(released));
            }
        }
    }

    /// Reports attached interfaces that disappeared or were recreated.
    #[cfg_attr(test, allow(dead_code))]
    pub(crate) fn watch(&mut self) {
        self.last_watch = Instant::now();
        let gone: Vec<_> = self
            .watched
            .iter()
            .filter(|(_, (name, index))| self.interfaces.ifindex(name) != Some(*index))
            .map(|(key, _)| *key)
            .collect();
        for (worker, slot, instance) in gone {
            self.watched.remove(&(worker, slot, instance));
            self.reply(worker, Reply::Gone { slot, instance });
        }
    }
}

/// Detaches the program, then releases the sockets (in that order: no frame is redirected to
/// a socket being released). A TAP queue is closed (which waits for an RCU grace period, as a
/// socket's release does).
pub(crate) fn release(attachment: Attachment) -> Vec<Released> {
    let Attachment { sockets, tap, hold, .. } = attachment;
    drop(tap);
    drop(hold);
    sockets.into_iter().map(XskSocket::release).collect()
}

/// Pod interfaces attached with the pod XDP program and AF_XDP sockets.
#[derive(Debug)]
pub(crate) struct XdpPods {
    pub(crate) bind: BindPreference,
    pub(crate) xdp_mode: XdpModeChoice,
    /// Set the fail-closed settings on each interface (with a host interface).
    pub(crate) guard: bool,
    /// Frames may span several buffers (a jumbo underlay): the program says it copes.
    pub(crate) frags: bool,
}

impl PodInterfaces for XdpPods {
    fn attach(&mut self, name: &str, umem: &Arc<UmemHandle>) -> Result<Attachment, PodAttachError> {
        let ifindex = io::interface_index(name)
            .ok_or_else(|| PodAttachError::NoInterface(name.to_owned()))?;
        let queues = io::interface_queues(name);
        if self.guard {
            guard_pod_interface(name);
        }
        let map = XskMap::new(queues).map_err(PodAttachError::Map)?;
        let program =
            XdpProgram::pod(&map, self.frags).map_err(|e| PodAttachError::Program(e.into()))?;
        let mut sockets = Vec::new();
        for queue in 0..queues {
            let socket = XskSocket::bind(umem, name, queue, RingSizes::all(POD_RING), self.bind)
                .map_err(PodAttachError::Socket)?;
            map.insert(queue, &socket).map_err(PodAttachError::Map)?;
            sockets.push(socket);
        }
        let link = attach(&program, name, self.xdp_mode).map_err(PodAttachError::Program)?;
        Ok(Attachment {
            interface: name.to_owned(),
            ifindex,
            sockets,
            tap: None,
            hold: Box::new((link, map)),
        })
    }

    fn ifindex(&self, interface: &str) -> Option<u32> {
        io::interface_index(interface)
    }
}

/// The fail-closed settings of a pod's host-side interface (module doc). A setting that
/// cannot be written is reported; the pod is attached all the same.
fn guard_pod_interface(name: &str) {
    for (file, value) in [
        (format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "0"),
        // 8: reply to no ARP request at all on this interface.
        (format!("/proc/sys/net/ipv4/conf/{name}/arp_ignore"), "8"),
        (format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1"),
    ] {
        if let Err(e) = std::fs::write(&file, value) {
            tracing::warn!(interface = name, "{file}: {e}: the interface does not fail closed");
        }
    }
}
