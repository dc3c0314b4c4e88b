//! A Kubernetes API server in-process, for the tests of `podlane agent --kubeconfig`: no
//! API server can be installed here, so this one speaks the parts of the real protocol a
//! watcher and the agent use, over real HTTP/1.1 on loopback.
//!
//! * **Objects** are JSON values in the API's own shapes (the fixtures in
//!   `tests/fixtures/kube/` are written from the API reference). Nodes, Namespaces, Pods and
//!   NetworkPolicies, each at its real path (`/api/v1/nodes`,
//!   `/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies`, …).
//! * **resourceVersion**: one counter for the whole server, stamped on every write, as etcd's
//!   revision is. Lists carry it in `metadata.resourceVersion`; their items carry no `kind` or
//!   `apiVersion`, as the real server's typed lists do not.
//! * **Lists** page with `limit` and an opaque `continue` token; the pages of one list are a
//!   snapshot at its resourceVersion, with `remainingItemCount`. A token older than the
//!   retained history is answered 410 Gone (`Expired`).
//! * **Watches** (`watch=true&resourceVersion=N`) answer 200 with a chunked stream of JSON
//!   events (`ADDED`, `MODIFIED`, `DELETED`, one per line), `BOOKMARK`s every second when
//!   `allowWatchBookmarks=true`, and end after `timeoutSeconds`. A watch from a version older
//!   than the retained history gets what the real server's watch cache sends: 200, then one
//!   `ERROR` event carrying a 410 `Expired` Status, then the end of the stream.
//!   `resourceVersion` 0 or absent starts with an `ADDED` for every object.
//! * **PATCH** with `application/merge-patch+json` (RFC 7386) on an object or its `status`
//!   subresource, which (as the real strategies) leaves `spec` through `status` and `status`
//!   through the object as they were; **GET** of one object. Anything else is 404 or 405 with a
//!   `Status` body. A watch answers with `Connection: close` and ends the connection.
//! * **Authentication**: a bearer token; any other gets 401.
//!
//! Tests change the objects with [`FakeApiServer::put`] and [`FakeApiServer::delete`],
//! expire history with [`FakeApiServer::expire_history`], cut every watch with
//! [`FakeApiServer::drop_watches`], make it go away for a while
//! ([`FakeApiServer::set_unavailable`]), and read every request made ([`FakeApiServer::requests`])
//! to check the RBAC rules against what the agent really called.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A resource the server serves: its API group path, plural name, kind and scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Nodes,
    Namespaces,
    Pods,
    NetworkPolicies,
}

impl Resource {
    const ALL: [Resource; 4] =
        [Resource::Nodes, Resource::Namespaces, Resource::Pods, Resource::NetworkPolicies];

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Nodes => "nodes",
            Resource::Namespaces => "namespaces",
            Resource::Pods => "pods",
            Resource::NetworkPolicies => "networkpolicies",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Nodes => "Node",
            Resource::Namespaces => "Namespace",
            Resource::Pods => "Pod",
            Resource::NetworkPolicies => "NetworkPolicy",
        }
    }

    /// The API group ("" for the core group) and version.
    pub fn group_version(self) -> (&'static str, &'static str) {
        match self {
            Resource::NetworkPolicies => ("networking.k8s.io", "v1"),
            _ => ("", "v1"),
        }
    }

    fn api_version(self) -> String {
        match self.group_version() {
            ("", v) => v.to_owned(),
            (g, v) => format!("{g}/{v}"),
        }
    }

    fn namespaced(self) -> bool {
        matches!(self, Resource::Pods | Resource::NetworkPolicies)
    }

    fn of_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }
}

/// One request as the server understood it, in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    /// RBAC verb: get, list, watch, patch (or the HTTP method for what is not served).
    pub verb: String,
    /// API group ("" for core).
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub name: Option<String>,
    /// The query, for checking what a watcher asked for.
    pub query: BTreeMap<String, String>,
    /// The HTTP status of the answer; 0 when the connection was closed unanswered.
    pub status: u16,
}

type Key = (Resource, String, String);

#[derive(Debug, Default)]
struct State {
    revision: u64,
    objects: BTreeMap<Key, Value>,
    /// Every write: (revision, resource, event type, object).
    history: Vec<(u64, Resource, &'static str, Value)>,
    /// Revisions up to this one are forgotten.
    compacted: u64,
    /// Bumped to end every open watch.
    watch_epoch: u64,
    snapshots: HashMap<String, (u64, Vec<Value>)>,
    calls: Vec<Call>,
    next_uid: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    /// Every request's connection closed unanswered, as by an API server that is restarting.
    unavailable: AtomicBool,
    token: String,
}

/// The server; stopped when dropped.
#[derive(Debug)]
pub struct FakeApiServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1 (a free port), accepting `Bearer <token>`.
    pub fn start(token: &str) -> anyhow::Result<FakeApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { revision: 100, ..State::default() }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            unavailable: AtomicBool::new(false),
            token: token.to_owned(),
        });
        let accept = shared.clone();
        let thread =
            std::thread::Builder::new().name("fake-apiserver".into()).spawn(move || {
                while !accept.stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let shared = accept.clone();
                            let _ = stream.set_nonblocking(false);
                            std::thread::spawn(move || serve(stream, &shared));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })?;
        Ok(FakeApiServer { address, shared, thread: Some(thread) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A kubeconfig for this server and token, as `kubectl config view --raw` writes one.
    pub fn kubeconfig(&self, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: {user}\n  user:\n    token: {}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: {user}\ncurrent-context: fake\n",
            self.url(),
            self.shared.token
        )
    }

    /// Creates or replaces an object (its `kind` says which resource), as a controller's write
    /// would: the server stamps resourceVersion (and uid, creationTimestamp when absent) and
    /// sends ADDED or MODIFIED to the watchers. Returns the stored object.
    pub fn put(&self, mut object: Value) -> anyhow::Result<Value> {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let resource = Resource::of_kind(&kind)
            .ok_or_else(|| anyhow::anyhow!("the fake API server does not serve kind {kind:?}"))?;
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(!name.is_empty(), "a {kind} without metadata.name");
        let namespace = if resource.namespaced() {
            object["metadata"]["namespace"].as_str().unwrap_or("default").to_owned()
        } else {
            String::new()
        };
        let mut state = self.shared.state.lock().unwrap();
        let key = (resource, namespace, name);
        let event = if state.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        state.next_uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012}", state.next_uid);
        let meta = &mut object["metadata"];
        if meta.get("uid").is_none() {
            meta["uid"] = json!(uid);
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
        }
        let stored = write(&mut state, key, event, object);
        drop(state);
        self.shared.changed.notify_all();
        Ok(stored)
    }

    /// Deletes an object; the watchers get DELETED with its last state.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> anyhow::Result<()> {
        let mut state = self.shared.state.lock().unwrap();
        let namespace = if resource.namespaced() { namespace } else { "" };
        let key = (resource, namespace.to_owned(), name.to_owned());
        let object = state
            .objects
            .remove(&key)
            .ok_or_else(|| anyhow::anyhow!("no {} {namespace}/{name}", resource.kind()))?;
        state.revision += 1;
        let revision = state.revision;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        state.history.push((revision, resource, "DELETED", object));
        drop(state);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// An object as stored now.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let state = self.shared.state.lock().unwrap();
        let namespace = if resource.namespaced() { namespace } else { "" };
        state.objects.get(&(resource, namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Forgets the history up to now, as etcd's compaction does, after writes elsewhere (on a
    /// real cluster Events and Leases advance the revision all the time), and ends every open
    /// watch: each watcher resumes from a version older than what is kept, gets 410 Gone, and
    /// must list again. One step, so that no bookmark slips in between.
    pub fn expire_history(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.revision += 1;
        state.compacted = state.revision;
        state.history.clear();
        state.snapshots.clear();
        state.watch_epoch += 1;
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Ends every open watch stream (the watchers resume from their last version).
    pub fn drop_watches(&self) {
        self.shared.state.lock().unwrap().watch_epoch += 1;
        self.shared.changed.notify_all();
    }

    /// Makes the server close every request's connection unanswered and end every watch
    /// (`true`), as one that is restarting, or serve again (`false`).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::Release);
        self.drop_watches();
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Call> {
        self.shared.state.lock().unwrap().calls.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Stores `object` under a new revision and records the event; returns what was stored.
fn write(state: &mut State, key: Key, event: &'static str, mut object: Value) -> Value {
    state.revision += 1;
    let revision = state.revision;
    let resource = key.0;
    object["metadata"]["resourceVersion"] = json!(revision.to_string());
    object["kind"] = json!(resource.kind());
    object["apiVersion"] = json!(resource.api_version());
    state.history.push((revision, resource, event, object.clone()));
    state.objects.insert(key, object.clone());
    object
}

/// A parsed request.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request { method, path: path.to_owned(), query, headers, body })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a path names: a resource, maybe a namespace, a name and a subresource.
#[derive(Debug)]
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", "v1", rest @ ..] => (false, rest),
        ["apis", "networking.k8s.io", "v1", rest @ ..] => (true, rest),
        _ => return None,
    };
    let (networking, rest) = rest;
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] => {
            (Some(ns.to_string()), [&[*plural][..], rest].concat())
        }
        other => (None, other.to_vec()),
    };
    let resource = Resource::ALL.into_iter().find(|r| r.plural() == rest[0])?;
    if (resource == Resource::NetworkPolicies) != networking {
        return None;
    }
    if namespace.is_some() && !resource.namespaced() {
        return None;
    }
    Some(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Bad Request",
    }
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body)?;
    write!(
        stream,
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Audit-Id: fake\r\n\r\n",
        reason_phrase(code),
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}

fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    while let Some(request) = read_request(&mut reader) {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let keep_open = handle(&mut stream, shared, request);
        if !keep_open {
            return;
        }
    }
}

/// Answers one request; false when the connection is done (after a watch).
fn handle(stream: &mut TcpStream, shared: &Shared, request: Request) -> bool {
    let target = route(&request.path);
    let watching = request.query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (request.method.as_str(), &target) {
        ("GET", Some(t)) if t.name.is_none() && watching => "watch",
        ("GET", Some(t)) if t.name.is_none() => "list",
        ("GET", Some(_)) => "get",
        ("PATCH", Some(_)) => "patch",
        (method, _) => method,
    }
    .to_ascii_lowercase();
    let mut call = Call {
        verb: verb.clone(),
        group: target.as_ref().map(|t| t.resource.group_version().0.to_owned()).unwrap_or_default(),
        resource: target
            .as_ref()
            .map(|t| t.resource.plural().to_owned())
            .unwrap_or(request.path.clone()),
        subresource: target.as_ref().and_then(|t| t.subresource.clone()),
        name: target.as_ref().and_then(|t| t.name.clone()),
        query: request.query.clone(),
        status: 200,
    };
    let authorized = request
        .headers
        .get("authorization")
        .is_some_and(|a| a.strip_prefix("Bearer ") == Some(shared.token.as_str()));
    let record = |call: Call| shared.state.lock().unwrap().calls.push(call);
    if shared.unavailable.load(Ordering::Acquire) {
        // No answer: the connection is closed, as by a server that went away mid-restart.
        // (A 503 would not do: kube's client retries those itself, 15 times.)
        call.status = 0;
        record(call);
        return false;
    }
    if !authorized {
        call.status = 401;
        record(call);
        return respond(stream, 401, &status(401, "Unauthorized", "Unauthorized")).is_ok();
    }
    let Some(target) = target else {
        call.status = 404;
        record(call);
        let message =
            format!("the server could not find the requested resource ({})", request.path);
        return respond(stream, 404, &status(404, "NotFound", &message)).is_ok();
    };
    match verb.as_str() {
        "list" => {
            let (code, body) = list(shared, &target, &request.query);
            call.status = code;
            record(call);
            respond(stream, code, &body).is_ok()
        }
        "watch" => {
            record(call);
            watch(stream, shared, &target, &request.query);
            false
        }
        "get" => {
            let state = shared.state.lock().unwrap();
            let key = key_of(&target);
            let (code, body) = match state.objects.get(&key) {
                Some(object) => (200, object.clone()),
                None => (404, not_found(&target)),
            };
            drop(state);
            call.status = code;
            record(call);
            respond(stream, code, &body).is_ok()
        }
        "patch" => {
            let (code, body) = patch(shared, &target, &request);
            call.status = code;
            record(call);
            respond(stream, code, &body).is_ok()
        }
        _ => {
            call.status = 405;
            record(call);
            respond(
                stream,
                405,
                &status(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                ),
            )
            .is_ok()
        }
    }
}

fn key_of(target: &Target) -> Key {
    (
        target.resource,
        if target.resource.namespaced() {
            target.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        },
        target.name.clone().unwrap_or_default(),
    )
}

fn not_found(target: &Target) -> Value {
    let name = target.name.clone().unwrap_or_default();
    let mut body =
        status(404, "NotFound", &format!("{} \"{name}\" not found", target.resource.plural()));
    body["details"] = json!({"name": name, "kind": target.resource.plural()});
    body
}

/// Whether `object` is in the target's namespace (or the target is cluster-wide).
fn in_scope(target: &Target, key: &Key) -> bool {
    key.0 == target.resource && target.namespace.as_ref().is_none_or(|ns| *ns == key.1)
}

fn list(shared: &Shared, target: &Target, query: &BTreeMap<String, String>) -> (u16, Value) {
    let mut state = shared.state.lock().unwrap();
    let limit: usize =
        query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let (revision, items, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match state.snapshots.get(token) {
            Some((revision, items)) => {
                let offset: usize =
                    token.rsplit(':').next().and_then(|o| o.parse().ok()).unwrap_or(0);
                (*revision, items.clone(), offset)
            }
            None => {
                return (
                    410,
                    status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                );
            }
        },
        None => {
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|(key, _)| in_scope(target, key))
                .map(|(_, object)| {
                    // Items of a typed list carry no kind or apiVersion.
                    let mut item = object.clone();
                    if let Some(map) = item.as_object_mut() {
                        map.remove("kind");
                        map.remove("apiVersion");
                    }
                    item
                })
                .collect();
            (state.revision, items, 0)
        }
    };
    let end = offset.saturating_add(limit).min(items.len());
    let page = items[offset.min(end)..end].to_vec();
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if end < items.len() {
        let token = format!("{}:{}:{end}", target.resource.plural(), revision);
        state.snapshots.insert(token.clone(), (revision, items.clone()));
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    let body = json!({
        "kind": format!("{}List", target.resource.kind()),
        "apiVersion": target.resource.api_version(),
        "metadata": metadata,
        "items": page,
    });
    (200, body)
}

fn write_chunk(stream: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    write!(stream, "{:x}\r\n", line.len())?;
    stream.write_all(&line)?;
    stream.write_all(b"\r\n")?;
    stream.flush()
}

fn watch(
    stream: &mut TcpStream,
    shared: &Shared,
    target: &Target,
    query: &BTreeMap<String, String>,
) {
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    // The stream is the connection's last answer here, and says so.
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: \
                chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let deadline = Instant::now() + timeout;
    let mut state = shared.state.lock().unwrap();
    let epoch = state.watch_epoch;
    let mut sent = from;
    let mut pending: Vec<Value> = Vec::new();
    if from == 0 {
        // "Any version": the current state as ADDED events.
        for (key, object) in &state.objects {
            if in_scope(target, key) {
                pending.push(json!({"type": "ADDED", "object": object}));
            }
        }
        sent = state.revision;
    } else if from < state.compacted {
        let message = format!("too old resource version: {from} ({})", state.compacted);
        drop(state);
        let _ = write_chunk(
            stream,
            &json!({"type": "ERROR", "object": status(410, "Expired", &message)}),
        );
        let _ = stream.write_all(b"0\r\n\r\n");
        return;
    }
    let mut last_bookmark = Instant::now();
    loop {
        for (revision, resource, event, object) in &state.history {
            if *revision > sent && *resource == target.resource {
                let key_namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
                if target.namespace.as_deref().is_none_or(|ns| ns == key_namespace) {
                    pending.push(json!({"type": event, "object": object}));
                }
            }
        }
        sent = sent.max(state.revision);
        let revision = state.revision;
        drop(state);
        for event in pending.drain(..) {
            if write_chunk(stream, &event).is_err() {
                return;
            }
        }
        if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(1) {
            last_bookmark = Instant::now();
            let bookmark = json!({"type": "BOOKMARK", "object": {
                "kind": target.resource.kind(),
                "apiVersion": target.resource.api_version(),
                "metadata": {"resourceVersion": revision.to_string()},
            }});
            if write_chunk(stream, &bookmark).is_err() {
                return;
            }
        }
        if Instant::now() >= deadline
            || shared.stop.load(Ordering::Acquire)
            || shared.unavailable.load(Ordering::Acquire)
        {
            break;
        }
        state = shared.state.lock().unwrap();
        if state.watch_epoch != epoch {
            drop(state);
            break;
        }
        if state.revision <= sent {
            state = shared.changed.wait_timeout(state, Duration::from_millis(250)).unwrap().0;
        }
        if state.watch_epoch != epoch {
            drop(state);
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let _ = stream.flush();
}

fn patch(shared: &Shared, target: &Target, request: &Request) -> (u16, Value) {
    let content_type = request.headers.get("content-type").map(String::as_str).unwrap_or("");
    if !content_type.starts_with("application/merge-patch+json") {
        return (
            415,
            status(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json (got {content_type:?})"
                ),
            ),
        );
    }
    if target.subresource.as_deref().is_some_and(|s| s != "status") {
        return (404, not_found(target));
    }
    let patch: Value = match serde_json::from_slice(&request.body) {
        Ok(patch) => patch,
        Err(e) => return (400, status(400, "BadRequest", &format!("error decoding patch: {e}"))),
    };
    let mut state = shared.state.lock().unwrap();
    let key = key_of(target);
    let Some(old) = state.objects.get(&key).cloned() else {
        return (404, not_found(target));
    };
    let mut object = old.clone();
    merge_patch(&mut object, &patch);
    // As the real strategies do: a write through `status` changes no `spec`, a write to the
    // object itself no `status` (metadata goes through either).
    let kept = if target.subresource.is_some() { "spec" } else { "status" };
    match old.get(kept) {
        Some(value) => object[kept] = value.clone(),
        None => {
            if let Some(map) = object.as_object_mut() {
                map.remove(kept);
            }
        }
    }
    let stored = write(&mut state, key, "MODIFIED", object);
    drop(state);
    shared.changed.notify_all();
    (200, stored)
}

/// RFC 7386: objects merge key by key, null removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let map = target.as_object_mut().expect("made an object above");
            for (key, value) in fields {
                if value.is_null() {
                    map.remove(key);
                } else {
                    merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request over a fresh connection, as a client that then closes its side: the
    /// status and the body (chunks joined).
    fn raw(server: &FakeApiServer, path: &str, token: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(server.address).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = if head.contains("Transfer-Encoding: chunked") {
            // Each chunk: its size in hex, CRLF, the data, CRLF.
            let mut joined = String::new();
            let mut rest = body;
            while let Some((size, after)) = rest.split_once("\r\n") {
                let size = usize::from_str_radix(size, 16).unwrap();
                if size == 0 {
                    break;
                }
                joined.push_str(&after[..size]);
                rest = &after[size + 2..];
            }
            joined
        } else {
            body.to_owned()
        };
        (code, body)
    }

    fn namespace(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    }

    #[test]
    fn lists_page_on_a_snapshot_and_expire_with_the_history() {
        let server = FakeApiServer::start("t").unwrap();
        for name in ["a", "b", "c"] {
            server.put(namespace(name)).unwrap();
        }
        let (code, body) = raw(&server, "/api/v1/namespaces?limit=2", "t");
        assert_eq!(code, 200);
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["kind"], "NamespaceList");
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert!(page["items"][0].get("kind").is_none(), "list items carry no kind");
        assert_eq!(page["metadata"]["remainingItemCount"], 1);
        let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
        server.put(namespace("d")).unwrap();
        let (_, body) = raw(&server, &format!("/api/v1/namespaces?limit=2&continue={token}"), "t");
        let rest: Value = serde_json::from_str(&body).unwrap();
        let names: Vec<&str> = rest["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["c"], "the snapshot of the first page, not d");
        assert_eq!(rest["metadata"]["resourceVersion"], page["metadata"]["resourceVersion"]);
        let version = page["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
        server.expire_history();
        let (code, body) =
            raw(&server, &format!("/api/v1/namespaces?limit=2&continue={token}"), "t");
        assert_eq!(code, 410, "{body}");
        let (code, body) =
            raw(&server, &format!("/api/v1/namespaces?watch=true&resourceVersion={version}"), "t");
        assert_eq!(code, 200, "a watch too old is answered in its stream");
        let event: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
        assert_eq!(
            (event["type"].as_str(), event["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410))
        );
        assert_eq!(event["object"]["reason"], "Expired");
        let (code, _) = raw(&server, "/api/v1/namespaces", "wrong");
        assert_eq!(code, 401);
        let (code, _) = raw(&server, "/api/v1/secrets", "t");
        assert_eq!(code, 404);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn paths_route_to_resources() {
        let t = route("/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/p").unwrap();
        assert_eq!(
            (t.resource, t.namespace.as_deref(), t.name.as_deref()),
            (Resource::NetworkPolicies, Some("shop"), Some("p"))
        );
        let t = route("/api/v1/nodes/a/status").unwrap();
        assert_eq!((t.resource, t.subresource.as_deref()), (Resource::Nodes, Some("status")));
        assert!(route("/api/v1/networkpolicies").is_none(), "not in the core group");
        assert!(route("/api/v1/namespaces/x/nodes").is_none(), "nodes are cluster-wide");
        assert_eq!(route("/api/v1/namespaces").unwrap().resource, Resource::Namespaces);
        assert_eq!(percent_decode("a%3Db+c"), "a=b c");
    }
}
