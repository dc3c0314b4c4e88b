//! Packet captures on an interface of a namespace, with tshark, to a pcapng file: what crossed
//! a wire, for an independent decoder to read afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::process::Background;

/// A running capture; [`Capture::stop`] (or dropping it) ends it.
#[derive(Debug)]
pub struct Capture {
    tshark: Background,
    pcap: PathBuf,
}

impl Capture {
    /// Starts `tshark` on `interface` of `ns` with the capture filter `filter`, writing
    /// `pcap`, and returns once it captures.
    pub fn start(
        tshark: &Path,
        ns: &Netns,
        interface: &str,
        filter: &str,
        pcap: &Path,
    ) -> anyhow::Result<Capture> {
        let child = ns
            .command(tshark)
            .args(["-n", "-q", "-i", interface, "-f", filter, "-w"])
            .arg(pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting tshark in {}: {e}", ns.name()))?;
        let tshark = Background(child);
        // tshark writes the file's header once it captures.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(pcap).map_or(0, |m| m.len()) == 0 {
            anyhow::ensure!(Instant::now() < deadline, "tshark did not start capturing");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(Capture { tshark, pcap: pcap.to_owned() })
    }

    /// Stops the capture (SIGINT, so tshark finishes the file) and returns the file's path.
    pub fn stop(mut self) -> PathBuf {
        let _ = Command::new("kill").args(["-INT", &self.tshark.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.tshark.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.pcap.clone()
    }
}
