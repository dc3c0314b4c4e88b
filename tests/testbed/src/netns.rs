//! Network namespaces that delete themselves, and commands inside them. Everything goes
//! through `ip` (iproute2) and the namespace's own tools; nothing touches the root namespace
//! beyond creating namespaces and moving devices into them.

use std::process::Command;

/// True when this process runs as root (real uid 0): what namespaces need.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command; an error carries its standard error.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    output(program, args).map(drop)
}

/// Runs a command and returns its standard output; an error carries its standard error.
pub fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("{program}: {e} (is it installed?)"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted with every device in it when dropped (when owned).
#[derive(Debug)]
pub struct Netns {
    name: String,
    tag: String,
    owned: bool,
}

impl Netns {
    /// Creates `podlane-<tag>-<pid>-<n>`: unique per process and call, so tests run in
    /// parallel; [`remove_stale`] recognises the pid of a run that was killed.
    pub fn create(tag: &str) -> anyhow::Result<Netns> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("podlane-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name, tag: tag.to_owned(), owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on a namespace owned elsewhere: not deleted when dropped.
    pub fn borrowed(name: &str) -> Netns {
        Netns { name: name.to_owned(), tag: name.to_owned(), owned: false }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag it was created with (its whole name when borrowed): namespaces that belong
    /// to it, such as its pods', are named after it.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        self.ip_output(args).map(drop)
    }

    /// `ip ARGS` inside the namespace, and what it printed.
    pub fn ip_output(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        output("ip", &full)
    }

    /// Any command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `sysctl -w` each `key=value` inside the namespace.
    pub fn sysctl(&self, settings: &[&str]) -> anyhow::Result<()> {
        for setting in settings {
            self.exec("sysctl", &["-qw", setting])?;
        }
        Ok(())
    }

    /// Switches IPv6 off in the namespace (no router or neighbour solicitations as stray
    /// frames, e.g. at a benchmark's sinks).
    pub fn disable_ipv6(&self) -> anyhow::Result<()> {
        self.sysctl(&["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The MAC address of an interface in the namespace.
    pub fn mac_of(&self, interface: &str) -> anyhow::Result<String> {
        let text = self.ip_output(&["-br", "link", "show", interface])?;
        text.split_whitespace()
            .nth(2)
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no MAC for {interface} in {}", self.name))
    }

    /// The IPv4 addresses of `interface` as `ADDRESS/PREFIX`.
    pub fn ipv4_addresses(&self, interface: &str) -> anyhow::Result<Vec<String>> {
        ipv4_addresses(Some(self), interface)
    }

    /// Makes `ip` resolve to `mac` on `dev` permanently; returns whether such a permanent
    /// entry was already there (the kernel flushes even permanent entries of an interface
    /// that goes down).
    pub fn pin_neighbour(&self, ip: &str, mac: &str, dev: &str) -> anyhow::Result<bool> {
        let present = self.ip_output(&["neigh", "show", ip, "dev", dev])?.contains("PERMANENT");
        self.ip(&["neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent"])?;
        Ok(present)
    }

    /// Packets the interface has received, as the kernel counts them.
    pub fn rx_packets(&self, interface: &str) -> anyhow::Result<u64> {
        // `ip netns exec` mounts the namespace's own sysfs.
        let path = format!("/sys/class/net/{interface}/statistics/rx_packets");
        let out = self.command("cat").arg(&path).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().map_err(|e| anyhow::anyhow!("{path} in {}: {e} ({text:?})", self.name))
    }

    /// Interfaces with an XDP program attached (from `ip -d link`).
    pub fn xdp_attached(&self) -> anyhow::Result<Vec<String>> {
        let text = self.ip_output(&["-d", "-o", "link", "show"])?;
        Ok(text
            .lines()
            .filter(|l| l.contains(" xdp") || l.contains("prog/xdp"))
            .map(|l| {
                l.split(": ").nth(1).unwrap_or(l).split('@').next().unwrap_or_default().to_owned()
            })
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        }
    }
}

/// The IPv4 addresses of `interface` in `ns` (the root namespace when `None`) as
/// `ADDRESS/PREFIX`.
pub fn ipv4_addresses(ns: Option<&Netns>, interface: &str) -> anyhow::Result<Vec<String>> {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns.name()]);
    }
    args.extend(["-4", "-o", "addr", "show", "dev", interface]);
    let text = output("ip", &args)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(str::to_owned))
        .collect())
}

/// Deletes namespaces named `podlane-<prefix>...-<pid>-<n>` whose creating process is gone
/// (left by a run that was killed); returns their names.
pub fn remove_stale(prefix: &str) -> Vec<String> {
    let Ok(list) = output("ip", &["netns", "list"]) else { return Vec::new() };
    let mut removed = Vec::new();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if !name.starts_with(&format!("podlane-{prefix}")) {
            continue;
        }
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            && run("ip", &["netns", "del", name]).is_ok()
        {
            removed.push(name.to_owned());
        }
    }
    removed
}
