//! The control socket: a Unix stream socket speaking [`crate::api`], served by one thread
//! that accepts and one thread per client. Several clients may be connected; updates
//! serialise on the tables' writer lock (one writer at a time), queries do not take it but
//! for a copy of the tables. Snapshots are built here, off the workers' path, and published
//! with one pointer swap: workers never wait for an update.
//!
//! Safety of the socket: created mode 0600 (owner only) in a directory created 0755 if
//! missing; every connection's peer credentials (SO_PEERCRED) are checked: root, this
//! process's own uid, or the uid/gid configured with `--control-uid` / `--control-gid`. A
//! socket file left by a crashed run is detected (nothing accepts on it) and replaced; one
//! with a live server behind it is an error. The file is removed on shutdown.

use std::io::BufReader;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::tables::Tables;
use super::{Shared, WorkerStats};
use crate::api::{
    self, ApiError, DaemonInfo, FrameError, PROTOCOL_VERSION, Query, Request, Response,
    SocketCounters, WorkerCounters,
};
use crate::engine::DropReason;
use crate::io;

/// Who may talk to the dataplane besides root and the daemon's own user.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// What the server needs from the daemon.
pub(crate) trait Backend: Send + Sync + 'static {
    fn tables(&self) -> &Tables;
    fn counters(&self) -> Vec<WorkerCounters>;
    fn info(&self) -> DaemonInfo;
}

impl Backend for Shared {
    fn tables(&self) -> &Tables {
        &self.tables
    }

    fn counters(&self) -> Vec<WorkerCounters> {
        self.stats.iter().filter_map(|s| s.lock().ok().map(|s| worker_counters(&s))).collect()
    }

    fn info(&self) -> DaemonInfo {
        self.info.clone()
    }
}

fn worker_counters(s: &WorkerStats) -> WorkerCounters {
    let c = &s.pipeline;
    WorkerCounters {
        worker: s.worker,
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
        no_socket: s.no_socket,
        handoff_in: s.handoff_in,
        handoff_dropped: s.handoff_dropped,
        free_chunks: s.free_chunks,
        invalid_descriptors: s.invalid_descriptors,
        sockets: s
            .ports
            .iter()
            .map(|p| SocketCounters {
                interface: p.interface.clone(),
                queue: p.queue,
                mode: p.mode.clone(),
                rx_packets: p.rx_packets,
                rx_bytes: p.rx_bytes,
                tx_packets: p.tx_packets,
                tx_bytes: p.tx_bytes,
                tx_dropped: p.tx_dropped,
                rx_ring_full: p.xdp.rx_ring_full,
                rx_fill_ring_empty: p.xdp.rx_fill_ring_empty_descs,
                rx_invalid_descs: p.xdp.rx_invalid_descs,
                tx_invalid_descs: p.xdp.tx_invalid_descs,
                rx_dropped: p.xdp.rx_dropped,
            })
            .collect(),
    }
}

/// The running server; dropping it stops accepting and removes the socket file.
#[derive(Debug)]
pub(crate) struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket (handling a stale one) and starts serving.
pub(crate) fn serve<B: Backend>(
    path: &Path,
    backend: Arc<B>,
    access: Access,
) -> Result<ControlServer, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; remove it or choose another --control-socket",
                path.display()
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another dataplane is serving {}; stop it first or choose another --control-socket",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("removing the stale socket {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "removed a stale control socket left by an earlier run");
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("binding the control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("setting mode 0600 on {}: {e}", path.display()))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("podlane-control".into())
            .spawn(move || accept_loop(listener, backend, access, stop))
            .map_err(|e| e.to_string())?
    };
    tracing::info!(path = %path.display(), "control socket listening");
    Ok(ControlServer { path: path.to_owned(), stop, thread: Some(thread) })
}

fn accept_loop<B: Backend>(
    listener: UnixListener,
    backend: Arc<B>,
    access: Access,
    stop: Arc<AtomicBool>,
) {
    let own_uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let allowed = match io::peer_credentials(&stream) {
                    Ok((_, uid, gid)) => {
                        uid == 0
                            || uid == own_uid
                            || access.uid == Some(uid)
                            || access.gid == Some(gid)
                    }
                    Err(_) => false,
                };
                if !allowed {
                    tracing::warn!("control connection refused: peer credentials not allowed");
                    let _ = api::write_frame(
                        &stream,
                        &Response::Error(ApiError::new(
                            "permission denied: root, the dataplane's user or the --control-uid/--control-gid peer only",
                        )),
                    );
                    continue;
                }
                let backend = backend.clone();
                let _ = std::thread::Builder::new()
                    .name("podlane-client".into())
                    .spawn(move || serve_client(stream, &*backend));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One client: handshake, then requests until it leaves or breaks the framing.
fn serve_client(stream: UnixStream, backend: &impl Backend) {
    let _ = stream.set_nonblocking(false);
    let mut reader = BufReader::new(&stream);
    let reply = |response: &Response| api::write_frame(&stream, response).is_ok();
    match api::read_frame::<Request>(&mut reader) {
        Ok(Request::Hello { version, client }) if version == PROTOCOL_VERSION => {
            tracing::debug!(client, "control client connected");
            let generation = backend.tables().load_full().generation();
            let node = backend.tables().node().to_owned();
            if !reply(&Response::Welcome { version: PROTOCOL_VERSION, node, generation }) {
                return;
            }
        }
        Ok(Request::Hello { version, .. }) => {
            reply(&Response::Error(ApiError::new(format!(
                "protocol version {version} is not supported: this dataplane speaks version {PROTOCOL_VERSION}"
            ))));
            return;
        }
        Ok(_) => {
            reply(&Response::Error(ApiError::new("the first message must be hello")));
            return;
        }
        Err(e) => {
            reply(&Response::Error(ApiError::new(format!("handshake: {e}"))));
            return;
        }
    }
    loop {
        let request = match api::read_frame::<Request>(&mut reader) {
            Ok(r) => r,
            Err(FrameError::Closed) => return,
            // The frame was read whole: the connection is still in step. Say what was wrong.
            Err(FrameError::Decode(e)) => {
                if !reply(&Response::Error(ApiError::new(format!("invalid message: {e}")))) {
                    return;
                }
                continue;
            }
            // Too large (not read) or truncated: the stream is out of step; say so and close.
            Err(e) => {
                tracing::warn!("control client dropped: {e}");
                reply(&Response::Error(ApiError::new(e.to_string())));
                return;
            }
        };
        if !reply(&handle(request, backend)) {
            return;
        }
    }
}

/// The response to one request after the handshake.
pub(crate) fn handle(request: Request, backend: &impl Backend) -> Response {
    let tables = backend.tables();
    let acked = |result: Result<u64, ApiError>| match result {
        Ok(generation) => Response::Ack { generation },
        Err(e) => {
            tracing::warn!("update rejected, tables unchanged: {e}");
            Response::Error(e)
        }
    };
    match request {
        Request::Hello { .. } => Response::Error(ApiError::new("already said hello")),
        Request::FullSync { tables: spec } => acked(tables.full_sync(spec)),
        Request::Update(update) => acked(tables.update(&update)),
        Request::InSync => Response::Ack { generation: tables.set_in_sync() },
        Request::Query { what: Query::Tables } => {
            let (generation, in_sync, tables) = tables.current();
            Response::Tables { generation, in_sync, tables }
        }
        Request::Query { what: Query::Counters } => {
            Response::Counters { workers: backend.counters() }
        }
        Request::Query { what: Query::Config } => Response::Config { config: backend.info() },
        Request::Query { what: Query::Version } => Response::Version {
            dataplane: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
        },
    }
}
