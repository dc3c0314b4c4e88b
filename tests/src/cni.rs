//! A container runtime's side of CNI, for the tests of `podlane-cni`: it execs the plugins of
//! a conflist in a node's namespace with the CNI environment and each plugin's configuration
//! (with `prevResult`) on stdin, as containerd and CRI-O do.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use testbed::{Netns, binary};

/// The runtime's side: where plugins are, and the node's namespace they run in.
#[derive(Debug)]
pub struct Runtime<'a> {
    pub node: &'a Netns,
    /// `CNI_PATH`: where the plugins are.
    pub cni_path: String,
}

/// One attachment: a container's sandbox and interface.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub netns: String,
    /// `CNI_ARGS`, e.g. `K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web`.
    pub args: String,
}

impl<'a> Runtime<'a> {
    /// A runtime on `node` whose `CNI_PATH` holds this build's `podlane-cni` and the directory
    /// of the distribution's plugins (`host_local`'s: host-local, tuning, portmap).
    pub fn new(node: &'a Netns, host_local: &Path) -> anyhow::Result<Runtime<'a>> {
        let plugin_dir = binary("podlane-cni").parent().map(Path::to_path_buf).unwrap_or_default();
        let distribution = host_local.parent().map(Path::to_path_buf).unwrap_or_default();
        let cni_path = std::env::join_paths([plugin_dir, distribution])?;
        Ok(Runtime { node, cni_path: cni_path.to_string_lossy().into_owned() })
    }

    /// Runs `plugin` for `command` with `conf` on stdin: its exit status and stdout as JSON
    /// (`Null` when it printed nothing).
    pub fn exec(&self, plugin: &str, command: &str, conf: &Value, c: &Container) -> (bool, Value) {
        let program = std::env::split_paths(&self.cni_path)
            .map(|dir| dir.join(plugin))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{plugin} not in {}", self.cni_path));
        let mut child = self
            .node
            .command(&program)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &c.id)
            .env("CNI_NETNS", &c.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", &c.args)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the plugin");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{plugin} {command}: {e}: {text}"))
        };
        if !out.status.success() {
            eprintln!("{plugin} {command}: {value} {}", String::from_utf8_lossy(&out.stderr));
        }
        (out.status.success(), value)
    }

    /// The configuration a runtime gives plugin `i` of `list`.
    pub fn plugin_conf(list: &Value, i: usize, prev: Option<&Value>) -> Value {
        let mut conf = list["plugins"][i].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// ADD through the chain: each plugin gets the previous one's result.
    pub fn add(&self, list: &Value, c: &Container) -> Result<Value, Value> {
        let mut prev: Option<Value> = None;
        for i in 0..list["plugins"].as_array().unwrap().len() {
            let conf = Self::plugin_conf(list, i, prev.as_ref());
            let plugin = conf["type"].as_str().unwrap().to_owned();
            let (ok, result) = self.exec(&plugin, "ADD", &conf, c);
            if !ok {
                return Err(result);
            }
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through the chain in reverse, with the cached result as `prevResult`.
    pub fn del(&self, list: &Value, c: &Container, cached: Option<&Value>) -> bool {
        let mut ok = true;
        for i in (0..list["plugins"].as_array().unwrap().len()).rev() {
            let conf = Self::plugin_conf(list, i, cached);
            let plugin = conf["type"].as_str().unwrap().to_owned();
            ok &= self.exec(&plugin, "DEL", &conf, c).0;
        }
        ok
    }

    /// A command to the first plugin alone (CHECK, STATUS, GC, VERSION).
    pub fn single(
        &self,
        list: &Value,
        command: &str,
        c: &Container,
        extra: Value,
    ) -> (bool, Value) {
        let mut conf = Self::plugin_conf(list, 0, None);
        if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
            conf.extend(extra.clone());
        }
        self.exec("podlane-cni", command, &conf, c)
    }
}
