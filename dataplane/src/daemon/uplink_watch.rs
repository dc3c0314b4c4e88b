//! The uplink followed while the daemon runs, once a second from the main loop.
//!
//! * **Renamed** (same interface index, another name): logged; everything the daemon holds
//!   is by index (the XDP link, the sockets), so forwarding goes on.
//! * **Down** (not up, or no carrier): logged, and `/readyz` says not ready until it is back;
//!   the daemon keeps running, since the link may come back.
//! * **MTU changed**, or **gone** (the index no longer exists): the daemon stops with an
//!   error saying so. Its buffers, the pods' MTU (`overlay_mtu`) and its interfaces are sized
//!   from the uplink's MTU at start, and its programs and sockets die with the interface; a
//!   supervisor (the DaemonSet) starts it again on the uplink as it now is.

use std::time::{Duration, Instant};

use super::DaemonError;
use crate::io;

/// How often the uplink is looked at.
const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct UplinkWatch {
    index: u32,
    name: String,
    mtu: u32,
    running: bool,
    checked: Instant,
}

impl UplinkWatch {
    /// The uplink as the daemon started on it.
    pub(crate) fn new(index: u32, name: &str, mtu: u32) -> UplinkWatch {
        let running = io::interface_running(name).unwrap_or(true);
        UplinkWatch { index, name: name.to_owned(), mtu, running, checked: Instant::now() }
    }

    /// Looks at the uplink (at most once per [`INTERVAL`]): whether it is up, or why the
    /// daemon must stop.
    pub(crate) fn check(&mut self) -> Result<bool, DaemonError> {
        if self.checked.elapsed() < INTERVAL {
            return Ok(self.running);
        }
        self.checked = Instant::now();
        let Some(name) = io::interface_name(self.index) else {
            return Err(DaemonError::UplinkGone { name: self.name.clone(), index: self.index });
        };
        if name != self.name {
            tracing::info!(index = self.index, from = %self.name, to = %name, "uplink renamed");
            self.name = name;
        }
        // A failed query is taken as no news: the next second asks again.
        if let Ok(mtu) = io::interface_mtu(&self.name)
            && mtu != self.mtu
        {
            return Err(DaemonError::UplinkMtuChanged {
                name: self.name.clone(),
                from: self.mtu,
                to: mtu,
            });
        }
        if let Ok(running) = io::interface_running(&self.name)
            && running != self.running
        {
            if running {
                tracing::info!(uplink = %self.name, "uplink up again");
            } else {
                tracing::warn!(uplink = %self.name, "uplink down (not up, or no carrier): not ready");
            }
            self.running = running;
        }
        Ok(self.running)
    }
}
