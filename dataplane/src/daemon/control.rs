//! The control socket: a Unix stream socket speaking [`crate::api`], served by one thread
//! that accepts and one thread per client. Several clients may be connected; updates
//! serialise on the tables' writer lock (one writer at a time), queries do not take it but
//! for a copy of the tables. Snapshots are built here, off the workers' path, and published
//! with one pointer swap: workers never wait for an update.
//!
//! Two sockets, two roles (docs/protocol.md, "Access"):
//!
//! * the control socket (`--control-socket`) takes every request: root, this process's own
//!   user, `--control-uid`, and members of `--control-gid` (by their primary or any
//!   supplementary group, SO_PEERCRED and SO_PEERGROUPS);
//! * the read-only socket (`--control-socket-ro`) takes queries only (`podlane show`,
//!   scrapers): everyone the control socket takes, and members of `--control-read-gid`.
//!
//! Each socket is created with its final mode from the start (under a umask: 0600, or 0660
//! when a group is given, then handed to that group), so it is never open wider than meant.
//! The directory is created 0755 when missing; an existing one must belong to root or this
//! user and be writable by nobody else (anyone who could write it could put another socket in
//! its place). A socket file left by a crashed run is detected (nothing accepts on it) and
//! replaced; one with a live server behind it is an error. The files are removed on shutdown.

use std::io::BufReader;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Shared;
use super::tables::Tables;
use crate::api::{
    self, ApiError, ConntrackFlow, DaemonInfo, FrameError, PROTOCOL_VERSION, Query, RejectedEntry,
    Request, Response, WorkerCounters,
};
use crate::io;

/// Clients connected at once, at most; one more gets an error reply and is closed.
const MAX_CLIENTS: usize = 64;
/// Time for a client to say hello once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a frame to arrive whole once its first byte has (a 20 MiB full sync takes
/// milliseconds over a Unix socket; a client that trickles bytes is cut off).
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client may stay silent between requests (the agent asks something every second).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long `show conntrack` waits for every worker to list its flows (a worker looks at its
/// flag each round of its loop; an idle one sleeps at most a few milliseconds).
const CONNTRACK_WAIT: Duration = Duration::from_secs(2);

/// Who may talk to the dataplane besides root and the daemon's own user.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access {
    /// May use the control socket.
    pub uid: Option<u32>,
    /// Its members may use the control socket.
    pub gid: Option<u32>,
    /// Its members may use the read-only socket.
    pub read_gid: Option<u32>,
}

/// What a connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Every request.
    Write,
    /// Queries only.
    Read,
}

/// What the server needs from the daemon.
pub(crate) trait Backend: Send + Sync + 'static {
    fn tables(&self) -> &Tables;
    fn counters(&self) -> Vec<WorkerCounters>;
    fn info(&self) -> DaemonInfo;
    /// Every worker's tracked flows; an error when a worker does not answer in time.
    fn conntrack(&self) -> Result<Vec<ConntrackFlow>, ApiError>;
}

impl Backend for Shared {
    fn tables(&self) -> &Tables {
        &self.tables
    }

    fn counters(&self) -> Vec<WorkerCounters> {
        self.stats.iter().filter_map(|s| s.lock().ok().map(|s| s.clone())).collect()
    }

    fn conntrack(&self) -> Result<Vec<ConntrackFlow>, ApiError> {
        for (i, slot) in self.conntrack_dumps.iter().enumerate() {
            if let Ok(mut slot) = slot.lock() {
                *slot = None;
            }
            self.conntrack_wanted[i].store(true, Ordering::Relaxed);
            let _ = self.inboxes[i].waker().map(|w| w.send(&[1]));
        }
        let deadline = std::time::Instant::now() + CONNTRACK_WAIT;
        let mut flows = Vec::new();
        for (i, slot) in self.conntrack_dumps.iter().enumerate() {
            loop {
                if let Some(dump) = slot.lock().ok().and_then(|mut s| s.take()) {
                    flows.extend(dump);
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(ApiError::new(format!(
                        "worker {i} did not list its flows within {} s",
                        CONNTRACK_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        Ok(flows)
    }

    fn info(&self) -> DaemonInfo {
        let mut info = self.info.clone();
        if let Ok(host) = self.host_state.lock() {
            info.host_interface = host.name.clone();
            info.host_addresses = host.addresses.clone();
            info.host_routes = host.routes.clone();
        }
        info
    }
}

/// The running server; dropping it stops accepting and removes the socket files.
#[derive(Debug)]
pub(crate) struct ControlServer {
    paths: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Why the control socket could not be served; each names the path and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("creating the control socket's directory {}: {source}", path.display())]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("{} exists and is not a socket; remove it or choose another --control-socket", path.display())]
    NotASocket { path: PathBuf },
    #[error(
        "another dataplane is serving {}; stop it first or choose another --control-socket",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("removing the stale socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: std::io::Error },
    #[error("binding the control socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("handing {} to group {gid}: {source}", path.display())]
    Group { path: PathBuf, gid: u32, source: std::io::Error },
    #[error(
        "the control socket's directory {} is {what}: anyone who can write it can replace the \
         socket; make it belong to root and writable by root alone (chmod 0755), or choose \
         another --control-socket",
        path.display()
    )]
    InsecureDirectory { path: PathBuf, what: String },
    #[error("starting the control socket's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Binds the control socket at `path`, and the read-only one at `read_only` if given
/// (handling stale ones), and starts serving.
pub(crate) fn serve<B: Backend>(
    path: &Path,
    read_only: Option<&Path>,
    backend: Arc<B>,
    access: Access,
) -> Result<ControlServer, ControlError> {
    let mut listeners = vec![(bind(path, access.gid)?, Role::Write)];
    let mut paths = vec![path.to_owned()];
    if let Some(ro) = read_only {
        match bind(ro, access.read_gid) {
            Ok(listener) => listeners.push((listener, Role::Read)),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        }
        paths.push(ro.to_owned());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("podlane-control".into())
            .spawn(move || accept_loop(listeners, backend, access, stop))
            .map_err(ControlError::Thread)?
    };
    for (p, role) in paths.iter().zip(["control", "read-only"]) {
        tracing::info!(path = %p.display(), "{role} socket listening");
    }
    Ok(ControlServer { paths, stop, thread: Some(thread) })
}

/// Binds one socket: its directory checked (or created), a stale socket replaced, the socket
/// created 0600, or 0660 and handed to `group`.
fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ControlError> {
    let at = |path: &Path| path.to_owned();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir.exists() {
            check_directory(dir)?;
        } else {
            std::fs::create_dir_all(dir)
                .map_err(|source| ControlError::Directory { path: at(dir), source })?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket { path: at(path) });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse { path: at(path) });
        }
        std::fs::remove_file(path)
            .map_err(|source| ControlError::RemoveStale { path: at(path), source })?;
        tracing::info!(path = %path.display(), "removed a stale control socket left by an earlier run");
    }
    // Created with its final mode: never readable by more than meant, not even for a moment.
    let mask = if group.is_some() { 0o117 } else { 0o177 };
    let listener = io::with_umask(mask, || UnixListener::bind(path))
        .map_err(|source| ControlError::Bind { path: at(path), source })?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| ControlError::Group {
            path: at(path),
            gid,
            source,
        })?;
    }
    listener
        .set_nonblocking(true)
        .map_err(|source| ControlError::Bind { path: at(path), source })?;
    Ok(listener)
}

/// An existing socket directory must belong to root or this user, and be writable by nobody
/// else.
fn check_directory(dir: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)
        .map_err(|source| ControlError::Directory { path: dir.to_owned(), source })?;
    let own = own_uid();
    let insecure = |what: String| ControlError::InsecureDirectory { path: dir.to_owned(), what };
    if meta.uid() != 0 && meta.uid() != own {
        return Err(insecure(format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(insecure(format!(
            "mode {:o}, writable by group or others",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
}

/// The role a peer gets on a socket of `role`, if any.
fn admitted(stream: &UnixStream, role: Role, access: Access, own_uid: u32) -> Option<Role> {
    let (_, uid, gid) = io::peer_credentials(stream).ok()?;
    let groups = io::peer_groups(stream).unwrap_or_default();
    let member = |wanted: Option<u32>| wanted.is_some_and(|g| gid == g || groups.contains(&g));
    let writer = uid == 0 || uid == own_uid || access.uid == Some(uid) || member(access.gid);
    match role {
        Role::Write => writer.then_some(Role::Write),
        Role::Read => (writer || member(access.read_gid)).then_some(Role::Read),
    }
}

fn accept_loop<B: Backend>(
    listeners: Vec<(UnixListener, Role)>,
    backend: Arc<B>,
    access: Access,
    stop: Arc<AtomicBool>,
) {
    let own_uid = own_uid();
    let clients = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for (listener, role) in &listeners {
            match listener.accept() {
                Ok((stream, _)) => {
                    idle = false;
                    let Some(role) = admitted(&stream, *role, access, own_uid) else {
                        tracing::warn!("control connection refused: peer credentials not allowed");
                        let _ = api::write_frame(
                            &stream,
                            &Response::Error(ApiError::new(match role {
                                Role::Write => {
                                    "permission denied: root, the dataplane's user, --control-uid or members of --control-gid only"
                                }
                                Role::Read => {
                                    "permission denied: those the control socket admits, or members of --control-read-gid only"
                                }
                            })),
                        );
                        continue;
                    };
                    let Some(slot) = ClientSlot::take(&clients) else {
                        tracing::warn!(
                            "control connection refused: {MAX_CLIENTS} clients connected"
                        );
                        let _ = api::write_frame(
                            &stream,
                            &Response::Error(ApiError::new(format!(
                                "too many clients: {MAX_CLIENTS} are connected; try again later"
                            ))),
                        );
                        continue;
                    };
                    let backend = backend.clone();
                    let _ = std::thread::Builder::new().name("podlane-client".into()).spawn(
                        move || {
                            serve_client(stream, &*backend, role);
                            drop(slot);
                        },
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!("control socket accept: {e}");
                }
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A connected client's place among [`MAX_CLIENTS`]; given back when dropped.
struct ClientSlot(Arc<std::sync::atomic::AtomicUsize>);

impl ClientSlot {
    fn take(clients: &Arc<std::sync::atomic::AtomicUsize>) -> Option<ClientSlot> {
        let taken = clients.fetch_add(1, Ordering::AcqRel);
        if taken >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ClientSlot(clients.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads from a client under deadlines: `idle` until a frame's first byte, then `frame` for
/// the rest of it. A client that says nothing, or trickles a frame, times out.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    idle: Duration,
    frame: Duration,
    /// The current frame's deadline, once its first byte arrived.
    deadline: Option<std::time::Instant>,
}

impl DeadlineReader<'_> {
    /// The next read starts a new frame.
    fn next_frame(&mut self, idle: Duration, frame: Duration) {
        (self.idle, self.frame, self.deadline) = (idle, frame, None);
    }
}

impl std::io::Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let wait = match self.deadline {
            None => self.idle,
            Some(deadline) => deadline.saturating_duration_since(std::time::Instant::now()),
        };
        if wait.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("a frame took longer than {} s to arrive", self.frame.as_secs()),
            ));
        }
        self.stream.set_read_timeout(Some(wait))?;
        let n = std::io::Read::read(&mut self.stream, buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the client went silent")
            }
            _ => e,
        })?;
        if self.deadline.is_none() && n > 0 {
            self.deadline = Some(std::time::Instant::now() + self.frame);
        }
        Ok(n)
    }
}

/// One client: handshake, then requests until it leaves, breaks the framing or times out.
fn serve_client(stream: UnixStream, backend: &impl Backend, role: Role) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(FRAME_TIMEOUT));
    // The hello, whole, within the handshake timeout.
    let mut reader = BufReader::new(DeadlineReader {
        stream: &stream,
        idle: HANDSHAKE_TIMEOUT,
        frame: HANDSHAKE_TIMEOUT,
        deadline: None,
    });
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
        reader.get_mut().next_frame(IDLE_TIMEOUT, FRAME_TIMEOUT);
        let decoded = api::read_frame_bytes(&mut reader).and_then(|body| {
            serde_json::from_slice::<Request>(&body).map_err(|e| (body, e).into())
        });
        let request = match decoded {
            Ok(r) => r,
            Err(FrameError::Closed) => return,
            // The frame was read whole: the connection is still in step. Say what was wrong,
            // and where.
            Err(FrameError::Invalid { body, source }) => {
                let at = api::locate_decode_error(&body);
                let message = match &at {
                    Some(at) => format!("invalid message at {at}: {source}"),
                    None => format!("invalid message: {source}"),
                };
                if !reply(&Response::Error(ApiError { message, entry: at })) {
                    return;
                }
                continue;
            }
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
        let response = match (&request, role) {
            (Request::FullSync { .. } | Request::Update(_) | Request::InSync, Role::Read) => {
                Response::Error(ApiError::new(
                    "this is the read-only socket: it answers queries only; changes go through the control socket",
                ))
            }
            _ => handle(request, backend),
        };
        if !reply(&response) {
            return;
        }
    }
}

/// The response to one request after the handshake.
pub(crate) fn handle(request: Request, backend: &impl Backend) -> Response {
    let tables = backend.tables();
    let acked = |result: Result<(u64, Vec<RejectedEntry>), ApiError>| match result {
        Ok((generation, rejected)) => Response::Ack { generation, rejected },
        Err(e) => {
            tracing::warn!("update rejected, tables unchanged: {e}");
            Response::Error(e)
        }
    };
    match request {
        Request::Hello { .. } => Response::Error(ApiError::new("already said hello")),
        Request::FullSync { tables: spec } => acked(tables.full_sync(spec)),
        Request::Update(update) => acked(tables.update(&update)),
        Request::InSync => Response::Ack { generation: tables.set_in_sync(), rejected: Vec::new() },
        Request::Query { what: Query::Tables } => {
            let rejected = tables.rejected();
            let (generation, in_sync, tables) = tables.current();
            Response::Tables { generation, in_sync, tables, rejected }
        }
        Request::Query { what: Query::Counters } => {
            Response::Counters { workers: backend.counters() }
        }
        Request::Query { what: Query::Conntrack { pod } } => match backend.conntrack() {
            Ok(mut flows) => {
                if let Some(pod) = pod {
                    flows.retain(|f| f.pod == pod);
                }
                Response::Conntrack { flows }
            }
            Err(e) => Response::Error(e),
        },
        Request::Query { what: Query::Config } => {
            let mut config = backend.info();
            // This node as the tables in force have it: what a kernel peer programs.
            let snapshot = tables.load_full();
            let local = snapshot.local_node();
            config.vtep_mac = local.vtep_mac.to_string();
            config.tunnel_addresses = local.tunnel_ips.iter().map(ToString::to_string).collect();
            Response::Config { config: Box::new(config) }
        }
        Request::Query { what: Query::Version } => Response::Version {
            dataplane: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::IpAddr;

    use super::*;
    use crate::api::Update;
    use crate::engine::{EngineConfig, Frame, Ingress, Pipeline, Span, Verdict};
    use crate::table::TableSpec;

    /// A backend without AF_XDP: the tables, no workers.
    struct TestBackend {
        tables: Tables,
    }

    impl Backend for TestBackend {
        fn tables(&self) -> &Tables {
            &self.tables
        }
        fn counters(&self) -> Vec<WorkerCounters> {
            vec![WorkerCounters::default()]
        }
        fn info(&self) -> DaemonInfo {
            DaemonInfo { node: "node-a".into(), ..DaemonInfo::default() }
        }
        fn conntrack(&self) -> Result<Vec<ConntrackFlow>, ApiError> {
            Ok(Vec::new())
        }
    }

    fn example() -> TableSpec {
        serde_json::from_str(include_str!("../../../docs/examples/two-nodes.json")).unwrap()
    }

    /// A test's socket directory, removed when the test ends, however it ends.
    struct SocketDir(PathBuf);

    impl SocketDir {
        fn new(tag: &str) -> SocketDir {
            let dir =
                std::env::temp_dir().join(format!("podlane-control-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            SocketDir(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("dataplane.sock")
        }
    }

    impl Drop for SocketDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A control server on a fresh socket. Bind the directory first, so that it outlives the
    /// server: `let (_dir, _server, backend, path) = start(..)`.
    fn start(tag: &str) -> (SocketDir, ControlServer, Arc<TestBackend>, PathBuf) {
        let dir = SocketDir::new(tag);
        let path = dir.socket();
        let node_ip: IpAddr = "192.168.50.1".parse().unwrap();
        let backend = Arc::new(TestBackend { tables: Tables::new(example(), node_ip).unwrap() });
        let server = serve(&path, None, backend.clone(), Access::default()).unwrap();
        (dir, server, backend, path)
    }

    fn hello(path: &Path) -> UnixStream {
        let stream = UnixStream::connect(path).unwrap();
        api::write_frame(
            &stream,
            &Request::Hello { version: PROTOCOL_VERSION, client: "test".into() },
        )
        .unwrap();
        match api::read_frame::<Response>(&stream).unwrap() {
            Response::Welcome { version, node, .. } => {
                assert_eq!((version, node.as_str()), (PROTOCOL_VERSION, "node-a"));
            }
            other => panic!("{other:?}"),
        }
        stream
    }

    fn ask(stream: &UnixStream, request: &Request) -> Response {
        api::write_frame(stream, request).unwrap();
        api::read_frame(stream).unwrap()
    }

    fn error_of(response: Response) -> ApiError {
        match response {
            Response::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// The pipeline still forwards pod a1 → pod a2 on the tables in force.
    fn still_forwards(backend: &TestBackend) {
        let snapshot = backend.tables.load_full();
        let gw = EngineConfig::default().gateway_mac;
        let client = snapshot.endpoint_by_interface("veth-client").unwrap();
        let web = snapshot.endpoint_by_interface("veth-web").unwrap();
        let src = snapshot.endpoint(client).mac;
        let builder = etherparse::PacketBuilder::ethernet2(src.0, gw.0)
            .ipv4([10, 244, 1, 3], [10, 244, 1, 2], 64)
            .tcp(40000, 80, 1, 1000);
        let mut frame = vec![0u8; 128];
        let mut bytes = Vec::new();
        builder.write(&mut bytes, b"x").unwrap();
        frame[64..64 + bytes.len()].copy_from_slice(&bytes);
        let mut span = Span::new(64, bytes.len());
        let mut frames = [Frame::new(&mut frame, &mut span)];
        let mut verdicts = [Verdict::Host];
        Pipeline::new(EngineConfig::default()).process_batch(
            &snapshot,
            Ingress::Pod(client),
            &mut frames,
            &mut verdicts,
        );
        assert_eq!(verdicts[0], Verdict::Local(web));
    }

    #[test]
    fn handshake_queries_and_updates() {
        let (_dir, _server, backend, path) = start("ok");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let stream = hello(&path);
        let Response::Tables { generation: g1, tables, .. } =
            ask(&stream, &Request::Query { what: Query::Tables })
        else {
            panic!()
        };
        assert_eq!(tables.endpoints.len(), 2);
        let mut web = tables.endpoints[0].clone();
        web.labels.insert("tier".into(), "front".into());
        let update = Update { upsert_endpoints: vec![web], ..Update::default() };
        let ack = |generation| Response::Ack { generation, rejected: Vec::new() };
        assert_eq!(ask(&stream, &Request::Update(update)), ack(g1 + 1));
        assert_eq!(ask(&stream, &Request::InSync), ack(g1 + 1));
        let Response::Tables { in_sync, .. } =
            ask(&stream, &Request::Query { what: Query::Tables })
        else {
            panic!()
        };
        assert!(in_sync);
        assert!(matches!(
            ask(&stream, &Request::Query { what: Query::Counters }),
            Response::Counters { .. }
        ));
        assert!(matches!(
            ask(&stream, &Request::Query { what: Query::Version }),
            Response::Version { protocol: 1, .. }
        ));
        // A second client at the same time.
        let other = hello(&path);
        let Response::Config { config } = ask(&other, &Request::Query { what: Query::Config })
        else {
            panic!("no configuration")
        };
        let local = &example().nodes[0];
        let vtep = local.vtep_mac.map(|m| m.to_string()).unwrap_or_default();
        assert_eq!(config.vtep_mac, vtep, "this node's VTEP MAC from the tables in force");
        let first = local.pod_cidrs[0].addr().to_string();
        assert_eq!(config.tunnel_addresses, [first], "defaulted to the pod CIDR's first address");
        still_forwards(&backend);
    }

    #[test]
    fn an_entry_at_fault_is_left_out_and_the_rest_applies() {
        let (_dir, _server, backend, path) = start("reject");
        let stream = hello(&path);
        let before = backend.tables.load_full().generation();
        let mut tables = example();
        let client_before = tables.endpoints[1].clone();
        tables.endpoints[1].ips = vec!["10.244.2.3".parse().unwrap()]; // outside node-a's CIDR
        let mut added = tables.endpoints[0].clone();
        added.name = "added".into();
        added.interface = "veth-added".into();
        added.ips = vec!["10.244.1.50".parse().unwrap()];
        tables.endpoints.push(added);
        let Response::Ack { generation, rejected } = ask(&stream, &Request::FullSync { tables })
        else {
            panic!("not applied")
        };
        assert_eq!(generation, before + 1, "one generation for the request");
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(
            (rejected[0].kind.as_str(), rejected[0].name.as_str()),
            ("endpoint", "default/client")
        );
        assert!(rejected[0].message.contains("10.244.2.3 is outside"), "{}", rejected[0]);
        assert!(rejected[0].kept_previous, "the client keeps the address it had");
        let Response::Tables { tables, rejected: listed, .. } =
            ask(&stream, &Request::Query { what: Query::Tables })
        else {
            panic!()
        };
        assert_eq!(listed, rejected, "listed until replaced");
        assert!(tables.endpoints.iter().any(|e| e.name == "added"), "the rest applied");
        let client = tables.endpoints.iter().find(|e| e.name == "client").unwrap();
        assert_eq!(client.ips, client_before.ips);
        still_forwards(&backend);
        // The client pushed again as it should be: no longer listed.
        let update = Update { upsert_endpoints: vec![client_before], ..Update::default() };
        assert!(matches!(
            ask(&stream, &Request::Update(update)),
            Response::Ack { rejected, .. } if rejected.is_empty()
        ));
        assert!(backend.tables.rejected().is_empty());

        // Refused whole: a deletion of what is not there, tables for another node.
        let generation = backend.tables.load_full().generation();
        let e = error_of(ask(
            &stream,
            &Request::Update(Update { delete_nodes: vec!["node-z".into()], ..Update::default() }),
        ));
        assert_eq!(e.entry.as_deref(), Some("node-z"));
        let mut foreign = example();
        foreign.local_node = "node-b".into();
        let e = error_of(ask(&stream, &Request::FullSync { tables: foreign }));
        assert!(e.message.contains("is not this dataplane's node"), "{e}");
        let mut broken_local = example();
        broken_local.nodes[0].vtep_mac = None;
        let e = error_of(ask(&stream, &Request::FullSync { tables: broken_local }));
        assert!(e.message.contains("has no VTEP MAC"), "{e}");
        assert_eq!(backend.tables.load_full().generation(), generation);
        still_forwards(&backend);
    }

    #[test]
    fn malformed_input_gets_an_error_or_a_closed_connection() {
        let (_dir, _server, backend, path) = start("bad");
        let before = backend.tables.load_full().generation();

        // Wrong version: a clear error, then the connection closes.
        let stream = UnixStream::connect(&path).unwrap();
        api::write_frame(&stream, &Request::Hello { version: 99, client: "old".into() }).unwrap();
        let e = error_of(api::read_frame(&stream).unwrap());
        assert!(
            e.message
                .contains("protocol version 99 is not supported: this dataplane speaks version 1"),
            "{e}"
        );
        assert!(matches!(api::read_frame::<Response>(&stream), Err(FrameError::Closed)));

        // Anything before hello.
        let stream = UnixStream::connect(&path).unwrap();
        api::write_frame(&stream, &Request::InSync).unwrap();
        assert!(
            error_of(api::read_frame(&stream).unwrap())
                .message
                .contains("first message must be hello")
        );

        // Invalid payload and an unknown message type: an error each, the connection stays.
        let mut stream = hello(&path);
        stream.write_all(&[0, 0, 0, 3, b'{', b'x', b'}']).unwrap();
        assert!(error_of(api::read_frame(&stream).unwrap()).message.contains("invalid message"));
        let unknown = br#"{"type":"reboot"}"#;
        stream.write_all(&(unknown.len() as u32).to_be_bytes()).unwrap();
        stream.write_all(unknown).unwrap();
        let e = error_of(api::read_frame(&stream).unwrap());
        assert!(e.message.contains("unknown variant `reboot`"), "{e}");
        // A full sync with one bad address: the error says which.
        let mut tables = serde_json::to_value(backend.tables.current().2).unwrap();
        tables["nodes"][0]["underlay"] = serde_json::json!("192.168.1.300");
        let body = serde_json::json!({"type": "full_sync", "tables": tables}).to_string();
        stream.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let e = error_of(api::read_frame(&stream).unwrap());
        assert_eq!(e.entry.as_deref(), Some("tables.nodes[0].underlay"), "{e}");
        assert!(e.message.contains("at tables.nodes[0].underlay: invalid IP address"), "{e}");
        assert!(matches!(
            ask(&stream, &Request::Query { what: Query::Version }),
            Response::Version { .. }
        ));

        // An oversized length: refused without reading it, then closed.
        stream.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(error_of(api::read_frame(&stream).unwrap()).message.contains("over the"));
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(rest.is_empty());

        // A client that disconnects in the middle of a frame.
        let mut stream = hello(&path);
        stream.write_all(&[0, 0, 1, 0, b'{']).unwrap();
        drop(stream);

        // The server is still there, the tables unchanged, forwarding unaffected.
        let stream = hello(&path);
        assert!(matches!(
            ask(&stream, &Request::Query { what: Query::Tables }),
            Response::Tables { .. }
        ));
        assert_eq!(backend.tables.load_full().generation(), before);
        still_forwards(&backend);
    }

    #[test]
    fn stale_sockets_are_replaced_and_live_ones_refused() {
        let dir = SocketDir::new("stale");
        let path = dir.socket();
        std::fs::create_dir_all(&dir.0).unwrap();
        drop(UnixListener::bind(&path).unwrap()); // what a crash leaves: the file, no server
        let node_ip: IpAddr = "192.168.50.1".parse().unwrap();
        let backend = Arc::new(TestBackend { tables: Tables::new(example(), node_ip).unwrap() });
        let server = serve(&path, None, backend.clone(), Access::default()).unwrap();
        hello(&path);
        let err = serve(&path, None, backend.clone(), Access::default()).unwrap_err();
        assert!(matches!(err, ControlError::InUse { .. }));
        assert!(err.to_string().contains("another dataplane is serving"), "{err}");
        drop(server);
        assert!(!path.exists(), "the socket file is removed on shutdown");
        std::fs::write(&path, "not a socket").unwrap();
        let err = serve(&path, None, backend, Access::default()).unwrap_err();
        assert!(matches!(err, ControlError::NotASocket { .. }));
        assert!(err.to_string().contains("exists and is not a socket"), "{err}");
    }
}
