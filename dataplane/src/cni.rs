//! `podlane-cni`, the CNI plugin (spec 1.1: ADD, DEL, CHECK, STATUS, GC, VERSION) that wires a
//! pod into podlane as a container runtime calls it: the command and the container in the
//! environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
//! `CNI_PATH`), the network configuration on stdin, the result or error as JSON on stdout.
//!
//! ADD delegates addresses to the configured IPAM plugin (`host-local` and others of spec 1.0
//! and earlier are called at 1.0.0), wires the pod with the configured edge
//! (docs/wiring-a-pod.md: a persistent TAP `CNI_IFNAME` in the pod's namespace, or a veth pair
//! with its host side `pl…` in the node, as Calico wires pods; the addresses as /32 and /128,
//! routes via the link-local gateways), registers the endpoint with the dataplane over its control
//! socket (an acknowledged update: when ADD returns, the dataplane has the pod) and records
//! what it did in its state directory, where `podlane agent` finds the pods it did not wire
//! itself. DEL undoes all of it, each step whatever became of the others (a device already
//! gone, a namespace gone after a reboot, a dataplane down: the table entry then goes with
//! the agent's next sync, which no longer finds the record). ADD twice returns the first
//! result; DEL of what is gone succeeds.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{self, CniRecord as Record, PROTOCOL_VERSION, Query, Request, Response, Update};
use crate::io::netlink::Rtnetlink;
use crate::io::{self, tap};
use crate::table::{EndpointSpec, PodEdge};
use crate::wire::MacAddr;

/// The versions of the spec this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The pods' gateways (Calico's), and the MAC podlane answers for them.
const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
const DEFAULT_SOCKET: &str = "/run/podlane/dataplane.sock";
const DEFAULT_STATE: &str = "/run/podlane/cni";

/// A CNI error, as the spec's error object (`code`, `msg`, `details`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }
    /// Codes of the spec: 1 incompatible version, 4 invalid environment variables, 6 decoding
    /// failure, 7 invalid network config, 11 try again later, 50 plugin not available; 999 and
    /// above are the plugin's own.
    fn config(details: impl Into<String>) -> CniError {
        CniError::new(7, "invalid network configuration", details)
    }
    fn env(details: impl Into<String>) -> CniError {
        CniError::new(4, "invalid environment variables", details)
    }
    fn failed(msg: &str, details: impl std::fmt::Display) -> CniError {
        CniError::new(999, msg, details.to_string())
    }
}

/// The network configuration this plugin reads (the runtime adds `name`, `cniVersion`, and
/// for chained plugins `prevResult`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    cni_version: String,
    #[serde(default)]
    name: String,
    /// Passed to the IPAM plugin as it is.
    #[serde(default)]
    ipam: Option<Value>,
    /// The pod's MTU (the underlay's less 50, or 70 over IPv6): `podlane show config`'s
    /// `overlay_mtu`.
    #[serde(default)]
    mtu: Option<u32>,
    /// The dataplane's control socket.
    #[serde(default)]
    control_socket: Option<PathBuf>,
    /// Where the plugin records what it wired.
    #[serde(default)]
    state_dir: Option<PathBuf>,
    /// The pod edge: `tap` (default) or `veth` (docs/wiring-a-pod.md).
    #[serde(default)]
    edge: Option<String>,
    /// GC: the attachments that must stay.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The invocation: the environment a runtime sets.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Invocation {
    pub fn from_env() -> Invocation {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Invocation {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }

    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS`, or a name from the container.
    fn pod(&self) -> (String, String) {
        let args: BTreeMap<&str, &str> =
            self.args.split(';').filter_map(|kv| kv.split_once('=')).collect();
        match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
            (Some(ns), Some(name)) => ((*ns).to_owned(), (*name).to_owned()),
            _ => ("cni".to_owned(), self.container_id.chars().take(63).collect()),
        }
    }
}

/// Runs one command; returns what to print on stdout and the exit code.
pub fn run(invocation: &Invocation, stdin: &str) -> (String, i32) {
    let version = serde_json::from_str::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.1.0".to_owned());
    let outcome = match invocation.command.as_str() {
        "VERSION" => Ok(Some(json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED_VERSIONS,
        }))),
        "ADD" | "DEL" | "CHECK" | "STATUS" | "GC" => parse(stdin)
            .and_then(|conf| command(invocation, &conf, stdin).map(|v| (conf, v)))
            .map(|(conf, value)| {
                value.map(|mut v| {
                    v["cniVersion"] = json!(conf.cni_version);
                    v
                })
            }),
        other => Err(CniError::env(format!(
            "CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, STATUS, GC or VERSION"
        ))),
    };
    match outcome {
        Ok(Some(value)) => (value.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => (
            json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details})
                .to_string(),
            1,
        ),
    }
}

fn parse(stdin: &str) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_str(stdin)
        .map_err(|e| CniError::new(6, "decoding the network configuration", e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            1,
            "incompatible CNI version",
            format!("cniVersion {}: this plugin supports {SUPPORTED_VERSIONS:?}", conf.cni_version),
        ));
    }
    Ok(conf)
}

fn command(inv: &Invocation, conf: &NetConf, stdin: &str) -> Result<Option<Value>, CniError> {
    let socket = conf.control_socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
    let state = conf.state_dir.clone().unwrap_or_else(|| DEFAULT_STATE.into());
    match inv.command.as_str() {
        "ADD" => add(inv, conf, stdin, &socket, &state).map(Some),
        "DEL" => del(inv, conf, stdin, &socket, &state).map(|()| None),
        "CHECK" => check(inv, &socket, &state).map(|()| None),
        "STATUS" => status(&socket).map(|()| None),
        "GC" => gc(inv, conf, stdin, &socket, &state).map(|()| None),
        _ => unreachable!("commands are matched in run"),
    }
}

fn require(value: &str, name: &str) -> Result<(), CniError> {
    if value.is_empty() {
        return Err(CniError::env(format!("{name} is not set")));
    }
    Ok(())
}

fn record_path(state: &Path, container_id: &str, ifname: &str) -> PathBuf {
    state.join(format!("{container_id}-{ifname}.json"))
}

fn read_record(path: &Path) -> Option<Record> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Every record in the state directory (what `podlane agent` merges into its tables).
pub fn records(state: &Path) -> Vec<Record> {
    Record::read_dir(state)
}

fn add(
    inv: &Invocation,
    conf: &NetConf,
    stdin: &str,
    socket: &Path,
    state: &Path,
) -> Result<Value, CniError> {
    for (value, name) in [
        (&inv.container_id, "CNI_CONTAINERID"),
        (&inv.netns, "CNI_NETNS"),
        (&inv.ifname, "CNI_IFNAME"),
    ] {
        require(value, name)?;
    }
    let path = record_path(state, &inv.container_id, &inv.ifname);
    if let Some(record) = read_record(&path) {
        // ADD again: the same result, once the pod is still wired and registered.
        check(inv, socket, state)?;
        return Ok(record.result);
    }
    let ipam_conf = conf.ipam.clone().ok_or_else(|| CniError::config("no ipam section"))?;
    let ips = ipam(inv, "ADD", &ipam_conf, stdin)?;
    let wired = wire(inv, conf, &ips).and_then(|endpoint| {
        let result = result_of(inv, &endpoint, &ips);
        let record = Record {
            container_id: inv.container_id.clone(),
            ifname: inv.ifname.clone(),
            netns: inv.netns.clone(),
            endpoint: endpoint.clone(),
            result: result.clone(),
            ipam: ipam_conf.clone(),
            network: conf.name.clone(),
        };
        write_record(state, &path, &record)?;
        register(socket, Update { upsert_endpoints: vec![endpoint], ..Update::default() })?;
        Ok(result)
    });
    if wired.is_err() {
        // Nothing stays of a failed ADD: the device, the record, the addresses.
        unwire(inv);
        let _ = std::fs::remove_file(&path);
        let _ = ipam(inv, "DEL", &ipam_conf, stdin);
    }
    wired
}

fn write_record(state: &Path, path: &Path, record: &Record) -> Result<(), CniError> {
    std::fs::create_dir_all(state)
        .map_err(|e| CniError::failed("creating the state directory", e))?;
    let temporary = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(record).map_err(|e| CniError::failed("encoding", e))?;
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| CniError::failed("writing the state record", e))
}

/// The addresses the IPAM plugin gave, with their prefix lengths.
#[derive(Debug, Clone)]
struct Addresses(Vec<(IpAddr, u8)>);

/// Calls the IPAM plugin (`ipam.type`, found in `CNI_PATH`) for `command`, at the newest
/// version it speaks up to 1.0.0 (host-local and the other reference plugins of Debian's
/// containernetworking-plugins speak up to 1.0.0).
fn ipam(inv: &Invocation, command: &str, conf: &Value, stdin: &str) -> Result<Addresses, CniError> {
    let kind = conf
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| CniError::config("ipam.type is missing"))?;
    let plugin = std::env::split_paths(&inv.path)
        .map(|dir| dir.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
        CniError::config(format!("IPAM plugin {kind:?} not found in CNI_PATH {:?}", inv.path))
    })?;
    let mut delegated: Value =
        serde_json::from_str(stdin).map_err(|e| CniError::config(e.to_string()))?;
    delegated["ipam"] = conf.clone();
    delegated["cniVersion"] = json!("1.0.0");
    if let Some(map) = delegated.as_object_mut() {
        map.remove("prevResult");
    }
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.args)
        .env("CNI_PATH", &inv.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::failed("running the IPAM plugin", format!("{}: {e}", plugin.display()))
        })?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(delegated.to_string().as_bytes());
    }
    let out =
        child.wait_with_output().map_err(|e| CniError::failed("running the IPAM plugin", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let msg = reply.get("msg").and_then(Value::as_str).unwrap_or("failed");
        return Err(CniError::failed(
            &format!("IPAM plugin {kind} {command}"),
            format!("{msg} {}", String::from_utf8_lossy(&out.stderr)).trim(),
        ));
    }
    if command != "ADD" {
        return Ok(Addresses(Vec::new()));
    }
    let reply: Value = serde_json::from_str(&text)
        .map_err(|e| CniError::failed("IPAM plugin's result", format!("{e}: {text}")))?;
    let mut addresses = Vec::new();
    for ip in reply.get("ips").and_then(Value::as_array).into_iter().flatten() {
        let address = ip.get("address").and_then(Value::as_str).unwrap_or_default();
        let (addr, len) = address.split_once('/').unwrap_or((address, ""));
        match (addr.parse::<IpAddr>(), len.parse::<u8>()) {
            (Ok(addr), Ok(len)) => addresses.push((addr, len)),
            _ => {
                return Err(CniError::failed(
                    "IPAM plugin's result",
                    format!("address {address:?}"),
                ));
            }
        }
    }
    if addresses.is_empty() {
        return Err(CniError::failed("IPAM plugin's result", format!("no address in {text}")));
    }
    Ok(Addresses(addresses))
}

/// The pod's MAC, derived from its first IPv4 address as Kubernetes' plugins do
/// (`0a:58:` and the address), else from the container's ID; locally administered, unicast.
fn pod_mac(inv: &Invocation, ips: &Addresses) -> MacAddr {
    if let Some(IpAddr::V4(v4)) = ips.0.iter().map(|(ip, _)| *ip).find(IpAddr::is_ipv4) {
        let o = v4.octets();
        return MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]]);
    }
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for b in inv.container_id.bytes().chain(inv.ifname.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let h = hash.to_be_bytes();
    MacAddr([0x0a, 0x58, h[0], h[1], h[2], h[3]])
}

/// The host side of a veth pod's pair: `pl` and a hash of the attachment, unique per
/// container and interface (as Calico's `cali` names), within the 15 characters allowed.
fn host_veth_name(inv: &Invocation) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for b in inv.container_id.bytes().chain([0]).chain(inv.ifname.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("pl{:011x}", hash >> 20)
}

/// Wires the pod with the configured edge: a persistent TAP in its namespace, or a veth pair
/// with its host side in this namespace; then the pod's side gets its MAC, MTU, addresses
/// and routes.
fn wire(inv: &Invocation, conf: &NetConf, ips: &Addresses) -> Result<EndpointSpec, CniError> {
    let mac = pod_mac(inv, ips);
    let mtu = conf.mtu.unwrap_or(1450);
    let edge = match conf.edge.as_deref().unwrap_or("tap") {
        "tap" => PodEdge::Tap { netns: inv.netns.clone() },
        "veth" => PodEdge::Veth,
        other => return Err(CniError::config(format!("edge {other:?}: tap or veth"))),
    };
    let failed = |e: std::io::Error| {
        CniError::failed("wiring the pod", format!("{} in {}: {e}", inv.ifname, inv.netns))
    };
    let netns = Path::new(&inv.netns);
    let ifname = inv.ifname.clone();
    let exists = io::in_network_namespace(netns, || io::interface_index(&ifname).is_some())
        .map_err(failed)?;
    if exists {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("an interface {ifname} exists in the pod already"),
        )));
    }
    let interface = match edge {
        PodEdge::Tap { .. } => {
            io::in_network_namespace(netns, || tap::create_persistent(&ifname))
                .and_then(|r| r)
                .map_err(failed)?;
            inv.ifname.clone()
        }
        PodEdge::Veth => {
            let host = host_veth_name(inv);
            let pod_namespace = std::fs::File::open(netns).map_err(failed)?;
            let mut netlink = Rtnetlink::open().map_err(failed)?;
            netlink
                .add_veth(&host, &ifname, std::os::fd::AsFd::as_fd(&pod_namespace), mtu)
                .map_err(failed)?;
            let index = io::interface_index(&host)
                .ok_or_else(|| failed(std::io::Error::other(format!("{host} vanished"))))?;
            netlink.set_link_up(index, mtu).map_err(failed)?;
            host
        }
    };
    let addresses = ips.0.clone();
    io::in_network_namespace(netns, move || -> std::io::Result<()> {
        let index = io::interface_index(&ifname)
            .ok_or_else(|| std::io::Error::other(format!("{ifname} vanished")))?;
        let mut netlink = Rtnetlink::open()?;
        netlink.set_link_address(index, mac)?;
        netlink.set_link_up(index, mtu)?;
        if let Some(lo) = io::interface_index("lo") {
            netlink.set_link_up(lo, 65536)?;
        }
        for (ip, _) in &addresses {
            let host = if ip.is_ipv4() { 32 } else { 128 };
            netlink.add_address(index, (*ip, host))?;
        }
        if addresses.iter().any(|(ip, _)| ip.is_ipv4()) {
            netlink.add_route(index, (IpAddr::V4(GATEWAY_V4), 32))?;
            let default = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
            netlink.add_route_via(index, default, GATEWAY_V4.into())?;
        }
        if addresses.iter().any(|(ip, _)| ip.is_ipv6()) {
            let default = (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
            netlink.add_route_via(index, default, GATEWAY_V6.into())?;
        }
        Ok(())
    })
    .and_then(|r| r)
    .map_err(failed)?;
    let (namespace, name) = inv.pod();
    Ok(EndpointSpec {
        namespace,
        name,
        labels: BTreeMap::new(),
        ips: ips.0.iter().map(|(ip, _)| *ip).collect(),
        mac,
        interface,
        edge,
        ingress_policy: None,
        egress_policy: None,
    })
}

/// Deletes what wiring the attachment made, whatever is left of it: the host side of a veth
/// pair (which takes the pod's side with it), the device in the pod's namespace.
fn unwire(inv: &Invocation) {
    if let Some(index) = io::interface_index(&host_veth_name(inv))
        && let Ok(mut netlink) = Rtnetlink::open()
    {
        let _ = netlink.delete_link(index);
    }
    if inv.netns.is_empty() || !Path::new(&inv.netns).exists() {
        return;
    }
    let ifname = inv.ifname.clone();
    let _ = io::in_network_namespace(Path::new(&inv.netns), move || -> std::io::Result<()> {
        if let Some(index) = io::interface_index(&ifname) {
            Rtnetlink::open()?.delete_link(index)?;
        }
        Ok(())
    });
}

fn result_of(inv: &Invocation, endpoint: &EndpointSpec, ips: &Addresses) -> Value {
    let mut routes = Vec::new();
    if ips.0.iter().any(|(ip, _)| ip.is_ipv4()) {
        routes.push(json!({"dst": "0.0.0.0/0", "gw": GATEWAY_V4.to_string()}));
    }
    if ips.0.iter().any(|(ip, _)| ip.is_ipv6()) {
        routes.push(json!({"dst": "::/0", "gw": GATEWAY_V6.to_string()}));
    }
    json!({
        "interfaces": [{
            "name": inv.ifname,
            "mac": endpoint.mac.to_string(),
            "sandbox": inv.netns,
        }],
        "ips": ips.0.iter().map(|(ip, _)| json!({
            "address": format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
            "interface": 0,
        })).collect::<Vec<_>>(),
        "routes": routes,
        "dns": {},
    })
}

/// One acknowledged request to the dataplane.
fn register(socket: &Path, update: Update) -> Result<(), CniError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        CniError::new(
            11,
            "the podlane dataplane is not reachable",
            format!("{}: {e} (is podlane-dataplane running? controlSocket)", socket.display()),
        )
    };
    let mut stream = connect(socket).map_err(|e| unavailable(&e))?;
    match request(&mut stream, &Request::Update(update)).map_err(|e| unavailable(&e))? {
        Response::Ack { rejected, .. } if rejected.is_empty() => Ok(()),
        Response::Ack { rejected, .. } => {
            let why: Vec<String> = rejected.iter().map(ToString::to_string).collect();
            Err(CniError::failed("the dataplane refused the pod", why.join("; ")))
        }
        Response::Error(e) => Err(CniError::failed("the dataplane refused the pod", e)),
        other => Err(CniError::failed("unexpected reply from the dataplane", format!("{other:?}"))),
    }
}

fn connect(socket: &Path) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let hello = Request::Hello { version: PROTOCOL_VERSION, client: "podlane-cni".into() };
    match request(&mut stream, &hello)? {
        Response::Welcome { .. } => Ok(stream),
        other => Err(format!("unexpected handshake reply {other:?}")),
    }
}

fn request(stream: &mut UnixStream, request: &Request) -> Result<Response, String> {
    api::write_frame(&*stream, request).map_err(|e| e.to_string())?;
    api::read_frame(&*stream).map_err(|e| e.to_string())
}

fn del(
    inv: &Invocation,
    conf: &NetConf,
    stdin: &str,
    socket: &Path,
    state: &Path,
) -> Result<(), CniError> {
    require(&inv.container_id, "CNI_CONTAINERID")?;
    require(&inv.ifname, "CNI_IFNAME")?;
    let path = record_path(state, &inv.container_id, &inv.ifname);
    let record = read_record(&path);
    if let Some(record) = &record {
        // Best effort: a dataplane that is down forgets the pod with the agent's next sync.
        let key = record.endpoint.key();
        if let Err(e) =
            register(socket, Update { delete_endpoints: vec![key], ..Update::default() })
        {
            eprintln!("podlane-cni: {}: {}", e.msg, e.details);
        }
    }
    unwire(inv);
    let _ = std::fs::remove_file(&path);
    let ipam_conf = record.map(|r| r.ipam).or_else(|| conf.ipam.clone());
    match ipam_conf {
        Some(ipam_conf) => ipam(inv, "DEL", &ipam_conf, stdin).map(drop),
        None => Ok(()),
    }
}

fn check(inv: &Invocation, socket: &Path, state: &Path) -> Result<(), CniError> {
    let path = record_path(state, &inv.container_id, &inv.ifname);
    let record = read_record(&path).ok_or_else(|| {
        CniError::failed("not wired by podlane-cni", format!("no record {}", path.display()))
    })?;
    let ifname = inv.ifname.clone();
    let want: Vec<IpAddr> = record.endpoint.ips.clone();
    let found = io::in_network_namespace(Path::new(&record.netns), move || {
        let index = io::interface_index(&ifname)?;
        let addresses = Rtnetlink::open().ok()?.addresses(index).ok()?;
        Some(addresses.into_iter().map(|(ip, _)| ip).collect::<Vec<_>>())
    })
    .ok()
    .flatten()
    .ok_or_else(|| {
        CniError::failed(
            "the pod's interface is gone",
            format!("{} in {}", inv.ifname, record.netns),
        )
    })?;
    if let Some(missing) = want.iter().find(|ip| !found.contains(ip)) {
        return Err(CniError::failed("the pod's address is gone", missing.to_string()));
    }
    let mut stream = connect(socket)
        .map_err(|e| CniError::new(11, "the podlane dataplane is not reachable", e))?;
    let key = record.endpoint.key();
    match request(&mut stream, &Request::Query { what: Query::Tables })
        .map_err(|e| CniError::new(11, "the podlane dataplane is not reachable", e))?
    {
        Response::Tables { tables, .. } if tables.endpoints.iter().any(|e| e.key() == key) => {
            Ok(())
        }
        _ => Err(CniError::failed("the dataplane does not have the pod", key)),
    }
}

fn status(socket: &Path) -> Result<(), CniError> {
    connect(socket).map(drop).map_err(|e| {
        CniError::new(
            50,
            "the podlane dataplane is not available",
            format!("{}: {e}", socket.display()),
        )
    })
}

fn gc(
    inv: &Invocation,
    conf: &NetConf,
    stdin: &str,
    socket: &Path,
    state: &Path,
) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    for record in records(state) {
        let attachment =
            Attachment { container_id: record.container_id.clone(), ifname: record.ifname.clone() };
        if record.network != conf.name || valid.contains(&attachment) {
            continue;
        }
        let stale = Invocation {
            command: "DEL".into(),
            container_id: record.container_id.clone(),
            netns: record.netns.clone(),
            ifname: record.ifname.clone(),
            ..inv.clone()
        };
        del(&stale, conf, stdin, socket, state)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lists_what_the_plugin_speaks() {
        let inv = Invocation { command: "VERSION".into(), ..Invocation::default() };
        let (out, code) = run(&inv, r#"{"cniVersion":"1.1.0"}"#);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("1.1.0")));
    }

    #[test]
    fn bad_invocations_get_the_spec_error_codes() {
        let add = Invocation { command: "ADD".into(), ..Invocation::default() };
        let code = |out: &str| serde_json::from_str::<Value>(out).unwrap()["code"].clone();
        let (out, exit) = run(&add, "not json");
        assert_eq!((code(&out), exit), (json!(6), 1));
        let (out, _) = run(&add, r#"{"cniVersion":"9.9.9","name":"n","type":"podlane-cni"}"#);
        assert_eq!(code(&out), json!(1));
        let (out, _) = run(&add, r#"{"cniVersion":"1.1.0","name":"n","type":"podlane-cni"}"#);
        assert_eq!(code(&out), json!(4), "no CNI_CONTAINERID: {out}");
        let nothing = Invocation { command: "FROB".into(), ..Invocation::default() };
        let (out, _) = run(&nothing, r#"{"cniVersion":"1.1.0"}"#);
        assert_eq!(code(&out), json!(4));
    }

    #[test]
    fn host_side_names_fit_and_differ() {
        let a =
            Invocation { container_id: "c1".into(), ifname: "eth0".into(), ..Default::default() };
        let b =
            Invocation { container_id: "c1".into(), ifname: "eth1".into(), ..Default::default() };
        let (na, nb) = (host_veth_name(&a), host_veth_name(&b));
        assert!(na.len() <= 15 && na.starts_with("pl"), "{na}");
        assert_ne!(na, nb);
        assert_eq!(na, host_veth_name(&a), "stable: DEL finds it without a record");
    }

    #[test]
    fn the_pod_is_named_from_cni_args() {
        let inv = Invocation {
            container_id: "abc".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1".into(),
            ..Invocation::default()
        };
        assert_eq!(inv.pod(), ("shop".to_owned(), "web-1".to_owned()));
        let bare = Invocation { container_id: "abc".into(), ..Invocation::default() };
        assert_eq!(bare.pod(), ("cni".to_owned(), "abc".to_owned()));
        let ips = Addresses(vec![("10.244.1.7".parse().unwrap(), 24)]);
        assert_eq!(pod_mac(&inv, &ips).to_string(), "0a:58:0a:f4:01:07");
        let v6 = Addresses(vec![("fd00::7".parse().unwrap(), 64)]);
        let mac = pod_mac(&inv, &v6);
        assert!(!mac.is_multicast() && mac.0[0] & 0x02 == 0x02, "{mac}");
    }
}
