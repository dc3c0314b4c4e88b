//! SIGINT and SIGTERM as a request to stop: the agent finishes its step and exits 0, the demo
//! removes what it built. The first signal sets a flag; a second one ends the process at
//! once, as the default action would (a stuck clean-up can still be interrupted).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// Whether a stop was asked for.
#[derive(Debug, Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Installs the handlers; the flag turns true on the first SIGINT or SIGTERM.
pub fn stop_on_signals() -> std::io::Result<StopFlag> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it runs when the flag is already set: a second signal exits.
        signal_hook::flag::register_conditional_shutdown(signal, 1, flag.clone())?;
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(StopFlag(flag))
}
