//! A traffic endpoint: the process that generates or sinks test frames on one interface.
//!
//! `podlane-bench endpoint --interface IF` runs where that interface is: inside a namespace
//! (`ip netns exec NS podlane-bench endpoint ...`) or on another machine (`ssh HOST
//! podlane-bench endpoint ...`). The harness drives it with one JSON request per line on its
//! standard input and reads one JSON reply per line on its standard output. Everything the
//! endpoint attaches is owned by BPF links and sockets of this process, so when the harness
//! closes the pipe, or the process dies in any way, nothing is left on the interface.
//!
//! * generator: the XDP_TX program of [`crate::traffic`] stays attached to the interface (so
//!   BPF_PROG_RUN does not wait on RCU per call) and each `send` runs it on live frames,
//!   paced to the requested rate;
//! * sink: the counting program; for latency trials an AF_XDP socket per receive queue takes
//!   the stamped frames and a thread records `arrived − sent` into an HDR histogram.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use dataplane::io::xdp::{PerCpuArray, XdpLink, XdpMode, XdpProgram, XskMap};
use dataplane::io::xsk::{BindPreference, Packet, RingSizes, Umem, UmemConfig};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::traffic::{self, Layout, SinkMode};

/// A request from the harness.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Become the generator of `frame` (whose varying fields are at `layout`) over `flows`
    /// flows; replaces any program attached by this endpoint.
    Generator { frame: Vec<u8>, layout: Layout, flows: u32 },
    /// Become a sink counting frames shaped like `layout`.
    Sink { layout: Layout, mode: SinkMode },
    /// Send for `duration_ms` at `rate` frames per second (`None`: as fast as possible).
    /// `fine`: in small bursts (about 25 µs worth), for latency, at a higher CPU cost.
    /// `cores`: with two or more, one sending thread pinned to each, sharing the rate (on a
    /// multi-queue veth a frame lands on the receive queue of the sender's core); otherwise
    /// the endpoint's own thread sends.
    Send {
        rate: Option<f64>,
        duration_ms: u64,
        fine: bool,
        #[serde(default)]
        cores: Vec<usize>,
    },
    /// The sink's counters.
    Count,
    /// Start recording latency (the sink must be in [`SinkMode::Latency`]).
    LatencyStart,
    /// Stop recording and report.
    LatencyStop,
    /// Detach whatever is attached.
    Detach,
}

/// The endpoint's answer to each request (the first line it writes is a `hello`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        interface: String,
        mac: [u8; 6],
        ipv4: Option<std::net::Ipv4Addr>,
        queues: u32,
    },
    Ok {
        xdp: Option<String>,
    },
    /// `pacing_ns`: CPU the generator's thread spent outside its BPF_PROG_RUN calls, waiting
    /// for the next burst to be due (0 when sending flat out).
    Sent {
        frames: u64,
        elapsed_ns: u64,
        pacing_ns: u64,
    },
    Count {
        frames: u64,
        other: u64,
    },
    Latency(LatencySummary),
    Error {
        message: String,
    },
}

/// Percentiles of one-way latency, in nanoseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            samples: h.len(),
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

struct Generator {
    program: XdpProgram,
    _link: XdpLink,
    frame: Vec<u8>,
}

struct Sink {
    _program: XdpProgram,
    _link: XdpLink,
    layout: Layout,
}

/// The latency receiver: its sockets stay bound from the first `latency_start` until the sink
/// is detached, because the kernel releases a closed socket's hold on a queue only after a
/// grace period, and binding again at once fails with EBUSY.
struct Recorder {
    stop: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
    histogram: Arc<std::sync::Mutex<Histogram<u64>>>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

/// The endpoint's state between requests.
struct Endpoint {
    interface: String,
    ifindex: u32,
    queues: u32,
    counters: PerCpuArray,
    sockets: Arc<XskMap>,
    generator: Option<Generator>,
    sink: Option<Sink>,
    recorder: Option<Recorder>,
}

/// Attaches natively (veth and XDP-capable NICs), else in generic mode.
fn attach(program: &XdpProgram, interface: &str) -> anyhow::Result<XdpLink> {
    program
        .attach(interface, XdpMode::Native)
        .or_else(|_| program.attach(interface, XdpMode::Generic))
        .map_err(Into::into)
}

/// Runs the endpoint on `interface` until its input ends.
pub fn serve(interface: &str, core: Option<usize>) -> anyhow::Result<()> {
    if let Some(core) = core {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    let ifindex = dataplane::io::interface_index(interface)
        .with_context(|| format!("no interface {interface:?} here"))?;
    let mac = dataplane::io::interface_mac(interface)?.0;
    let queues = dataplane::io::interface_queues(interface).max(1);
    let mut endpoint = Endpoint {
        interface: interface.to_owned(),
        ifindex,
        queues,
        counters: PerCpuArray::new("bench_sink", 2)?,
        sockets: Arc::new(XskMap::new(queues)?),
        generator: None,
        sink: None,
        recorder: None,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let hello =
        Reply::Hello { interface: interface.to_owned(), mac, ipv4: ipv4_of(interface), queues };
    writeln!(out, "{}", serde_json::to_string(&hello)?)?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => endpoint
                .handle(request)
                .unwrap_or_else(|e| Reply::Error { message: format!("{e:#}") }),
            Err(e) => Reply::Error { message: format!("bad request {line:?}: {e}") },
        };
        writeln!(out, "{}", serde_json::to_string(&reply)?)?;
        out.flush()?;
    }
    Ok(())
}

/// The first IPv4 address of `interface`, to tell the harness.
fn ipv4_of(interface: &str) -> Option<std::net::Ipv4Addr> {
    let addresses = testbed::netns::ipv4_addresses(None, interface).ok()?;
    addresses.first()?.split('/').next()?.parse().ok()
}

impl Endpoint {
    fn detach(&mut self) {
        if let Some(r) = self.recorder.take() {
            r.stop.store(true, Ordering::Relaxed);
            let _ = r.thread.join();
        }
        // The link must go before another program can be attached to the interface.
        self.generator = None;
        self.sink = None;
    }

    fn handle(&mut self, request: Request) -> anyhow::Result<Reply> {
        match request {
            Request::Generator { frame, layout, flows } => {
                anyhow::ensure!(
                    layout.len == frame.len(),
                    "layout is for {} bytes, frame has {}",
                    layout.len,
                    frame.len()
                );
                self.detach();
                let program = XdpProgram::load(
                    "bench_gen",
                    &traffic::generator_program(&layout, flows.max(1)),
                )?;
                let link = attach(&program, &self.interface)?;
                let xdp = format!("{:?}", link.mode());
                self.generator = Some(Generator { program, _link: link, frame });
                Ok(Reply::Ok { xdp: Some(xdp) })
            }
            Request::Sink { layout, mode } => {
                self.detach();
                let insns = traffic::sink_program(&layout, mode, &self.counters, &self.sockets);
                let program = XdpProgram::load("bench_sink", &insns)?;
                let link = attach(&program, &self.interface)?;
                let xdp = format!("{:?}", link.mode());
                self.sink = Some(Sink { _program: program, _link: link, layout });
                Ok(Reply::Ok { xdp: Some(xdp) })
            }
            Request::Send { rate, duration_ms, fine, cores } => {
                let generator = self
                    .generator
                    .as_ref()
                    .context("send: not a generator (send a generator request first)")?;
                let duration = Duration::from_millis(duration_ms);
                if cores.len() < 2 {
                    return send(generator, self.ifindex, rate, duration, fine);
                }
                send_from_cores(generator, self.ifindex, rate, duration, fine, &cores)
            }
            Request::Count => {
                Ok(Reply::Count { frames: self.counters.sum(0)?, other: self.counters.sum(1)? })
            }
            Request::LatencyStart => {
                let sink = self.sink.as_ref().context("latency_start: not a sink")?;
                if self.recorder.is_none() {
                    self.recorder = Some(record(
                        &self.interface,
                        self.queues,
                        &self.sockets,
                        sink.layout.clone(),
                    )?);
                }
                let r = self.recorder.as_ref().context("recorder")?;
                anyhow::ensure!(
                    !r.recording.load(Ordering::Relaxed),
                    "latency_start: already recording"
                );
                r.histogram.lock().map_err(|_| anyhow::anyhow!("latency recorder failed"))?.reset();
                r.recording.store(true, Ordering::Relaxed);
                Ok(Reply::Ok { xdp: None })
            }
            Request::LatencyStop => {
                let r = self.recorder.as_ref().context("latency_stop: not recording")?;
                anyhow::ensure!(
                    r.recording.swap(false, Ordering::Relaxed),
                    "latency_stop: not recording"
                );
                anyhow::ensure!(!r.thread.is_finished(), "the latency receiver stopped");
                let histogram =
                    r.histogram.lock().map_err(|_| anyhow::anyhow!("latency recorder failed"))?;
                Ok(Reply::Latency(LatencySummary::of(&histogram)))
            }
            Request::Detach => {
                self.detach();
                Ok(Reply::Ok { xdp: None })
            }
        }
    }
}

/// Frames per BPF_PROG_RUN call at `rate`. Each call sets up and tears down a page pool for
/// its live frames (perf: `xdp_test_run_init_page`, `page_pool_release`), which costs more than
/// tens of frames, on the core the dataplane's veth receive work shares. So a call carries
/// about 100 µs worth of frames, between 32 and 256: no more than a veth's receive ring holds,
/// since larger bursts overflow it and show up as the dataplane's loss (measured: the kernel's
/// local zero-loss rate fell tenfold with 4,096-frame bursts). For latency (`fine`) bursts
/// are about 25 µs worth, from 8, so that a frame does not queue behind its own burst.
fn burst_for(rate: Option<f64>, fine: bool) -> u32 {
    let (seconds, min) = if fine { (25e-6, 8.0) } else { (100e-6, 32.0) };
    rate.map_or(MAX_BURST, |r| (r * seconds).round().clamp(min, f64::from(MAX_BURST)) as u32)
}

/// The largest burst: what a veth's receive ring holds.
const MAX_BURST: u32 = 256;

/// Sends for `duration` at `rate`, spinning between bursts: sleeping in a VM overshoots by
/// tens of microseconds, which would make bursts irregular. Frames not sent by the
/// deadline are not sent: a dataplane whose receive work holds the generator back (on veth
/// it runs in the generator's own system call) shows up as a lower offered rate.
///
/// At a given rate each burst is due at a random point of the first half of its slot (the
/// rate is kept; bursts keep their size). With bursts on a fixed grid at a round rate, 1 Mpps
/// in 100-frame bursts, every 4 ms scheduler tick fell at the same point of the 100 µs burst
/// cycle, and /proc/stat, which books each whole tick to what the core is doing at it, booked
/// the generator's core as all user or all system time: the same trial read 1,200 or 2,400
/// CPU ns per packet. (Varying burst sizes by a quarter instead cut the kernel's local zero-loss
/// rate from 0.64 to 0.51 Mpps, for reasons not looked into.) The pacing loop's own
/// CPU is measured exactly, with the thread's CPU clock outside BPF_PROG_RUN.
fn send(
    generator: &Generator,
    ifindex: u32,
    rate: Option<f64>,
    duration: Duration,
    fine: bool,
) -> anyhow::Result<Reply> {
    let burst = burst_for(rate, fine);
    let mut jitter = Jitter::seeded();
    let mut slack = 0.0;
    let cpu_start = thread_cpu()?;
    let mut in_kernel = Duration::ZERO;
    let start = Instant::now();
    let deadline = start + duration;
    let total = rate.map(|r| (r * duration.as_secs_f64()) as u64);
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline || total.is_some_and(|t| sent >= t) {
            break;
        }
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64((sent as f64 + slack) / r);
            if due > now {
                std::hint::spin_loop();
                continue;
            }
        }
        let n = total.map_or(burst, |t| burst.min((t - sent) as u32));
        let batch = n.min(64);
        if rate.is_some() {
            let before = thread_cpu()?;
            generator.program.run_live(ifindex, &generator.frame, n, batch)?;
            in_kernel += thread_cpu()?.saturating_sub(before);
        } else {
            generator.program.run_live(ifindex, &generator.frame, n, batch)?;
        }
        sent += u64::from(n);
        slack = jitter.fraction() * f64::from(burst) / 2.0;
    }
    let elapsed = start.elapsed();
    let pacing = if rate.is_some() {
        thread_cpu()?.saturating_sub(cpu_start).saturating_sub(in_kernel)
    } else {
        Duration::ZERO
    };
    Ok(Reply::Sent {
        frames: sent,
        elapsed_ns: elapsed.as_nanos() as u64,
        pacing_ns: pacing.as_nanos() as u64,
    })
}

/// [`send`] from one thread pinned to each of `cores`, each at an equal share of `rate`;
/// the reply adds up their frames and pacing and takes the longest elapsed time.
fn send_from_cores(
    generator: &Generator,
    ifindex: u32,
    rate: Option<f64>,
    duration: Duration,
    fine: bool,
    cores: &[usize],
) -> anyhow::Result<Reply> {
    let share = rate.map(|r| r / cores.len() as f64);
    let replies: Vec<anyhow::Result<Reply>> = std::thread::scope(|scope| {
        let senders: Vec<_> = cores
            .iter()
            .map(|&core| {
                scope.spawn(move || {
                    anyhow::ensure!(
                        core_affinity::set_for_current(core_affinity::CoreId { id: core }),
                        "cannot pin a sending thread to core {core}"
                    );
                    send(generator, ifindex, share, duration, fine)
                })
            })
            .collect();
        senders
            .into_iter()
            .map(|s| s.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a sending thread panicked"))))
            .collect()
    });
    let (mut frames, mut elapsed_ns, mut pacing_ns) = (0, 0, 0);
    for reply in replies {
        let Reply::Sent { frames: f, elapsed_ns: e, pacing_ns: p } = reply? else {
            anyhow::bail!("a sending thread replied with something other than sent");
        };
        frames += f;
        elapsed_ns = elapsed_ns.max(e);
        pacing_ns += p;
    }
    Ok(Reply::Sent { frames, elapsed_ns, pacing_ns })
}

fn thread_cpu() -> anyhow::Result<Duration> {
    dataplane::io::thread_cpu_time().context("reading the generator thread's CPU clock")
}

/// Uniform numbers in [0, 1) for the burst schedule (xorshift64: statistical quality is beside
/// the point, breaking the phase lock with the scheduler tick is the point).
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(nanos | 1)
    }

    fn fraction(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Opens an AF_XDP socket on every queue of `interface`, points the sink's map at them and,
/// while `recording` is set, records each frame's one-way latency.
fn record(
    interface: &str,
    queues: u32,
    sockets: &Arc<XskMap>,
    layout: Layout,
) -> anyhow::Result<Recorder> {
    let stop = Arc::new(AtomicBool::new(false));
    let recording = Arc::new(AtomicBool::new(false));
    let histogram =
        Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (interface, sockets, stop_flag) =
        (interface.to_owned(), Arc::clone(sockets), Arc::clone(&stop));
    let (recording_flag, shared) = (Arc::clone(&recording), Arc::clone(&histogram));
    let thread = std::thread::spawn(move || -> anyhow::Result<()> {
        let open = |umem: &mut Umem, q: u32| {
            // A socket this process closed moments ago may still hold the queue (EBUSY).
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match umem.open(&interface, q, RingSizes::default(), BindPreference::Auto) {
                    Err(e)
                        if Instant::now() < deadline && format!("{e}").contains("os error 16") =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    other => return other,
                }
            }
        };
        let setup = || -> anyhow::Result<_> {
            let mut umem =
                Umem::new(UmemConfig { chunks: 4096 * queues.min(4), ..UmemConfig::default() })?;
            let mut ids = Vec::new();
            for q in 0..queues {
                let id = open(&mut umem, q)?;
                sockets.insert(q, umem.socket(id).context("socket just opened")?)?;
                ids.push(id);
            }
            Ok((umem, ids))
        };
        let (mut umem, ids) = match setup() {
            Ok(v) => {
                let _ = ready_tx.send(Ok(()));
                v
            }
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return Err(e);
            }
        };
        let mut packets: Vec<Packet> = Vec::with_capacity(256);
        while !stop_flag.load(Ordering::Relaxed) {
            let mut got = 0;
            for &id in &ids {
                umem.refill(id, 1024);
                got += umem.receive(id, 256, &mut packets);
            }
            if got == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            if recording_flag.load(Ordering::Relaxed) {
                let mut histogram = shared.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?;
                umem.lend(&mut packets, |chunk, span| {
                    let frame = &chunk[span.head as usize..span.end()];
                    if let Some((sent, arrived)) = traffic::stamps(frame, &layout) {
                        if arrived > sent {
                            let _ = histogram.record(arrived - sent);
                        }
                    }
                });
            }
            for p in packets.drain(..) {
                umem.release(p.chunk);
            }
        }
        Ok(())
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Recorder { stop, recording, histogram, thread }),
        Ok(Err(e)) => Err(anyhow::anyhow!("latency receiver on {}: {e}", "the sink")),
        Err(_) => Err(anyhow::anyhow!("latency receiver thread ended before it was ready")),
    }
}

/// The harness's side: an endpoint process and its pipes.
#[derive(Debug)]
pub struct Client {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
    pub name: String,
    pub interface: String,
    pub mac: [u8; 6],
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// On this machine (its generator's CPU shows in our /proc/stat).
    pub local: bool,
}

impl Client {
    /// Starts `command` (an endpoint, possibly behind `ip netns exec` or `ssh`) and reads its
    /// hello.
    pub fn start(
        name: &str,
        mut command: std::process::Command,
        local: bool,
    ) -> anyhow::Result<Client> {
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting endpoint {name}: {command:?}"))?;
        let input = child.stdin.take().context("endpoint stdin")?;
        let output = std::io::BufReader::new(child.stdout.take().context("endpoint stdout")?);
        let mut client = Client {
            child,
            input,
            output,
            name: name.to_owned(),
            interface: String::new(),
            mac: [0; 6],
            ipv4: None,
            local,
        };
        match client.read()? {
            Reply::Hello { interface, mac, ipv4, .. } => {
                client.interface = interface;
                client.mac = mac;
                client.ipv4 = ipv4;
                Ok(client)
            }
            other => anyhow::bail!("endpoint {name} said {other:?} instead of hello"),
        }
    }

    fn read(&mut self) -> anyhow::Result<Reply> {
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            anyhow::bail!("endpoint {} exited ({status}); its errors are above", self.name);
        }
        serde_json::from_str(&line)
            .with_context(|| format!("endpoint {} replied {line:?}", self.name))
    }

    /// Sends `request` and returns the reply; an error reply becomes an error.
    pub fn call(&mut self, request: &Request) -> anyhow::Result<Reply> {
        writeln!(self.input, "{}", serde_json::to_string(request)?)?;
        self.input.flush()?;
        match self.read()? {
            Reply::Error { message } => anyhow::bail!("endpoint {}: {message}", self.name),
            reply => Ok(reply),
        }
    }

    /// Frames the sink has counted so far.
    pub fn count(&mut self) -> anyhow::Result<u64> {
        match self.call(&Request::Count)? {
            Reply::Count { frames, .. } => Ok(frames),
            other => anyhow::bail!("endpoint {}: unexpected {other:?}", self.name),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing stdin ends the endpoint, which detaches everything it attached.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
