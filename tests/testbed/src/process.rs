//! Child processes that never outlive the testbed that started them, and the workspace's
//! binaries they run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A binary of the workspace: beside the running executable (`target/<profile>/podlane`),
/// or one directory up (a test in `target/<profile>/deps/`), else found on PATH.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let dirs = exe.iter().flat_map(|e| {
        let parent = e.parent();
        [parent, parent.and_then(Path::parent)].into_iter().flatten()
    });
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(name)
}

/// What tells this process's waits to give up (see [`give_up_waiting_when`]).
static GIVE_UP: std::sync::OnceLock<fn() -> bool> = std::sync::OnceLock::new();

/// Makes the waits of this process for a service's log or a pod's reachability end early,
/// as failures, once `stop` returns true: a harness that takes SIGINT and SIGTERM as a
/// request to stop passes its flag, so that it need not sit out a 20 s readiness wait
/// before taking its cluster down. Stopping a service ([`Service::stop`]) still waits: that
/// is the taking down. Set once; later calls change nothing.
pub fn give_up_waiting_when(stop: fn() -> bool) {
    let _ = GIVE_UP.set(stop);
}

/// Whether waits should give up now.
pub(crate) fn giving_up() -> bool {
    GIVE_UP.get().is_some_and(|stop| stop())
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// A child process killed (SIGKILL) and reaped when dropped, unless already waited for.
#[derive(Debug)]
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A long-running process (a daemon, an agent) with its log in a file: stopped with SIGTERM
/// (SIGKILL after 10 s) when dropped, so that a daemon detaches cleanly. Its standard input is
/// a pipe held open for as long as the service lives, for programs that take its end as the
/// signal to stop (the benchmark's forwarder).
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Starts `command` with its standard output and error going to `log`.
    pub fn start(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Service> {
        let file = std::fs::File::create(log)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", log.display()))?;
        let child = command
            .stdin(Stdio::piped())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name} ({command:?}): {e}"))?;
        Ok(Service { name: name.to_owned(), child: Some(child), log: log.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (`ip netns exec` execs the program in place, so this is the program's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until the log holds each `(needle, count)`; an error with the log after
    /// `timeout`, or as soon as the process exits (or waits give up, [`give_up_waiting_when`]).
    pub fn wait_for_all(
        &mut self,
        needles: &[(&str, usize)],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if needles.iter().all(|(needle, count)| log.matches(needle).count() >= *count) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                anyhow::bail!("{} exited ({status}) before logging {needles:?}:\n{log}", self.name);
            }
            anyhow::ensure!(!giving_up(), "gave up waiting for {needles:?} from {}", self.name);
            anyhow::ensure!(
                Instant::now() < deadline,
                "no {needles:?} in the log of {} after {} s:\n{log}",
                self.name,
                timeout.as_secs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log holds `needle` `count` times (20 s at most).
    pub fn wait_for(&mut self, needle: &str, count: usize) -> anyhow::Result<()> {
        self.wait_for_all(&[(needle, count)], Duration::from_secs(20))
    }

    fn wait(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        let mut child =
            self.child.take().ok_or_else(|| anyhow::anyhow!("{} already stopped", self.name))?;
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "{} did not exit within {} s:\n{}",
                    self.name,
                    grace.as_secs(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, and the exit status (an error if it takes more than 10 s).
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.pid() {
            signal(pid, "-TERM");
        }
        self.wait(Duration::from_secs(10))
    }

    /// SIGKILL, and the exit status.
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.pid() {
            signal(pid, "-KILL");
        }
        self.wait(Duration::from_secs(10))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.is_some() && self.stop().is_err() {
            eprintln!("{} had to be killed", self.name);
        }
    }
}
