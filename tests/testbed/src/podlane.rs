//! podlane on a node of the testbed: `podlane-dataplane` inside a node namespace and
//! `podlane agent` beside it, each a [`Service`] with its log in a file.

use std::ffi::OsStr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::Netns;
use crate::process::{Service, binary};

/// `podlane-dataplane` running in a node namespace. Its control socket sits beside its log
/// (the log's path with the extension `sock`), so that a restarted daemon with the same log
/// name serves the same socket.
#[derive(Debug)]
pub struct Dataplane {
    service: Service,
    socket: PathBuf,
}

impl Dataplane {
    /// Starts the daemon on `uplink` of `node` with `args` besides the uplink and the control
    /// socket.
    pub fn start(
        node: &Netns,
        uplink: &str,
        log: &Path,
        args: &[&str],
    ) -> anyhow::Result<Dataplane> {
        Dataplane::start_binary(&binary("podlane-dataplane"), node, uplink, log, args)
    }

    /// [`Dataplane::start`] with a given `podlane-dataplane` binary.
    pub fn start_binary(
        program: &Path,
        node: &Netns,
        uplink: &str,
        log: &Path,
        args: &[&str],
    ) -> anyhow::Result<Dataplane> {
        let socket = log.with_extension("sock");
        let mut command = node.command(program);
        command.args(["--uplink", uplink]).arg("--control-socket").arg(&socket).args(args);
        Ok(Dataplane { service: Service::start("podlane-dataplane", command, log)?, socket })
    }

    /// Starts the daemon with a tables file (`--tables`), plus `args`.
    pub fn with_tables(
        node: &Netns,
        uplink: &str,
        tables: &Path,
        log: &Path,
        args: &[&str],
    ) -> anyhow::Result<Dataplane> {
        let tables = tables.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 tables path"))?;
        let mut all = vec!["--tables", tables];
        all.extend(args);
        Dataplane::start(node, uplink, log, &all)
    }

    /// The process alone, for a caller that only starts, waits and stops it.
    pub fn into_service(self) -> Service {
        self.service
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Until the uplink program is attached, `pods` pod interfaces too, and a next hop is
    /// resolved.
    pub fn wait_ready(&mut self, pods: usize) -> anyhow::Result<()> {
        self.service.wait_for_all(
            &[("forwarding", 1), ("pod interface attached", pods), ("next hop resolved", 1)],
            Duration::from_secs(20),
        )
    }
}

impl Deref for Dataplane {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.service
    }
}

impl DerefMut for Dataplane {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

/// `podlane agent` keeping a dataplane in step with a cluster file. Its `--cni-state-dir` is
/// beside its log (the log's path with the extension `cni`), not the machine's
/// /run/podlane/cni.
pub fn agent(node: &str, socket: &Path, cluster: &Path, log: &Path) -> anyhow::Result<Service> {
    agent_binary(&binary("podlane"), node, socket, cluster, log)
}

/// [`agent`] with more arguments after `agent` (`--cni-state-dir DIR` replaces the default).
pub fn agent_with(
    node: &str,
    socket: &Path,
    cluster: &Path,
    log: &Path,
    args: &[&str],
) -> anyhow::Result<Service> {
    let source = [OsStr::new("--cluster"), cluster.as_os_str()];
    start_agent(&binary("podlane"), node, socket, &source, log, args)
}

/// [`agent`] with a given `podlane` binary.
pub fn agent_binary(
    program: &Path,
    node: &str,
    socket: &Path,
    cluster: &Path,
    log: &Path,
) -> anyhow::Result<Service> {
    let source = [OsStr::new("--cluster"), cluster.as_os_str()];
    start_agent(program, node, socket, &source, log, &[])
}

/// `podlane agent` watching a Kubernetes API server through `kubeconfig`, plus `args` after
/// `agent` (`--cni-state-dir DIR`, `--write-cni-config FILE`).
pub fn agent_kubernetes(
    node: &str,
    socket: &Path,
    kubeconfig: &Path,
    log: &Path,
    args: &[&str],
) -> anyhow::Result<Service> {
    let source = [OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
    start_agent(&binary("podlane"), node, socket, &source, log, args)
}

/// `PROGRAM --socket SOCKET agent --node NODE SOURCE… ARGS…`, with `--cni-state-dir` beside
/// the log unless `args` gives one.
fn start_agent(
    program: &Path,
    node: &str,
    socket: &Path,
    source: &[&OsStr],
    log: &Path,
    args: &[&str],
) -> anyhow::Result<Service> {
    let mut command = std::process::Command::new(program);
    command.arg("--socket").arg(socket).args(["agent", "--node", node]).args(source);
    if !args.contains(&"--cni-state-dir") {
        command.arg("--cni-state-dir").arg(log.with_extension("cni"));
    }
    command.args(args);
    Service::start("podlane agent", command, log)
}
