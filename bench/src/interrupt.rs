//! Stopping a long run cleanly. The subcommands that build clusters and run for minutes
//! (`tcp`, `control`, `soak`) install the stop handlers, so SIGINT and SIGTERM set a flag
//! instead of ending the process; their waits go through here and end with an `interrupted`
//! error, and what the run built (namespaces, node daemons, iperf3 and probe processes,
//! scratch directories) is taken down by its guards as that error unwinds, as on any other
//! failure. Ended by the signal instead, the bench took none of it down, and a signal to
//! the bench alone (`kill PID`) left the node daemons and iperf3 running.
//!
//! Ctrl-C signals the whole process group, iperf3 and the daemons too, and one of them may
//! fail first; [`explain`] still names the signal as the reason.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How often a wait looks at the flag: often enough that a run's CPU sample after iperf3
/// ends is taken within a few milliseconds of its end.
const TICK: Duration = Duration::from_millis(5);

/// SIGINT and SIGTERM from now on ask the run to stop (see the module's documentation).
pub fn install() -> anyhow::Result<()> {
    dataplane::io::install_stop_handlers()
        .map_err(|e| anyhow::anyhow!("installing the SIGINT and SIGTERM handlers: {e}"))?;
    // The testbed's own waits (a daemon's readiness, a pod's reachability) end too.
    testbed::process::give_up_waiting_when(dataplane::io::stop_requested);
    Ok(())
}

/// The error of a run stopped by SIGINT or SIGTERM.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Fails with [`Interrupted`] once a stop was asked for.
pub fn check() -> anyhow::Result<()> {
    if dataplane::io::stop_requested() { Err(Interrupted.into()) } else { Ok(()) }
}

/// A run's error, as the reason it ended: [`Interrupted`] when a stop was asked for, whatever
/// failed first once it was (a process of the run that got the same signal, say).
pub fn explain(error: anyhow::Error) -> anyhow::Error {
    let said = error.chain().any(|cause| cause.is::<Interrupted>());
    if dataplane::io::stop_requested() && !said { error.context(Interrupted) } else { error }
}

/// Sleeps for `duration`, or less if a stop is asked for meanwhile (then fails).
pub fn sleep(duration: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + duration;
    loop {
        check()?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(TICK));
    }
}

/// Runs `command` to its end and returns what it printed, as `Command::output` does; on a
/// stop asked for meanwhile it kills the process and fails.
pub fn output(command: &mut Command) -> anyhow::Result<Output> {
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // Drained while the process runs, so that a full pipe never holds it up.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = loop {
        let ended = child.try_wait();
        if let Ok(Some(status)) = ended {
            break status;
        }
        let stopped = check().and(ended.map(drop).map_err(anyhow::Error::from));
        if let Err(error) = stopped {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        std::thread::sleep(TICK);
    };
    let joined = |reader: std::thread::JoinHandle<Vec<u8>>| reader.join().unwrap_or_default();
    Ok(Output { status, stdout: joined(stdout), stderr: joined(stderr) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_returns_what_the_command_printed_and_its_status() {
        let out = output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .expect("sh runs");
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn output_reads_more_than_a_pipe_holds() {
        // 1 MiB: far more than a pipe's 64 KiB, which would block a writer nobody reads.
        let out = output(Command::new("head").args(["-c", "1048576", "/dev/zero"])).unwrap();
        assert_eq!(out.stdout.len(), 1 << 20);
    }
}
