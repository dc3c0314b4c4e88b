//! The metrics and health endpoint (`--metrics-address`): Prometheus' text exposition on
//! `/metrics`, and `/healthz` and `/readyz` for a DaemonSet's probes, served over plain
//! HTTP/1.1 by one thread of its own.
//!
//! Every value is read at scrape time from what the workers already publish about once a
//! second (their counters) and from the tables; nothing is added to the packet path. Names
//! follow Cilium's and Calico-VPP's style (`podlane_forward_count_total{direction}`,
//! `podlane_drop_count_total{reason}`).
//!
//! `/healthz` answers 200 while the daemon serves; `/readyz` answers 200 once every worker is
//! alive, the uplink is up and the tables are in sync (the control process said so, or they came from a tables
//! file), else 503 with the reason.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Shared;
use crate::api::WorkerCounters;
use crate::io::xdp::uplink_passed;
use crate::table::PodEdge;

/// The serving thread; stopped and joined when dropped.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `address` and serves it until the server is dropped.
pub(crate) fn serve(address: SocketAddr, shared: Arc<Shared>) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(address)?;
    let address = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new().name("podlane-metrics".into()).spawn(move || {
        let collector = Arc::new(Podlane { shared: shared.clone() });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = answer(stream, &registry, &shared) {
                        tracing::debug!("metrics: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    tracing::warn!("metrics: accepting: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    })?;
    tracing::info!(%address, "metrics and health endpoint up");
    Ok(MetricsServer { stop, thread: Some(thread) })
}

/// Reads one request and answers it (one request per connection).
fn answer(stream: TcpStream, registry: &Registry, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // The headers are read and ignored: nothing here depends on them.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => {
                    ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
                }
                Err(_) => ("500 Internal Server Error", "text/plain", "encoding failed\n".into()),
            }
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".into()),
        ("GET", "/readyz") => match not_ready(shared) {
            None => ("200 OK", "text/plain", "ready\n".into()),
            Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "/metrics, /healthz, /readyz\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let mut writer = &stream;
    write!(
        writer,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    writer.flush()
}

/// Why the daemon is not ready, if it is not.
fn not_ready(shared: &Shared) -> Option<String> {
    let alive = shared.live_workers.load(Ordering::Relaxed);
    if alive < shared.workers {
        return Some(format!("{} of {} workers alive", alive, shared.workers));
    }
    if !shared.uplink_running.load(Ordering::Relaxed) {
        return Some(format!("the uplink {} is down", shared.uplink));
    }
    let (generation, in_sync) = shared.tables.status();
    if !in_sync && !shared.static_tables {
        return Some(format!("tables not in sync yet (generation {generation})"));
    }
    None
}

/// The collector: reads the published counters at each scrape.
struct Podlane {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Podlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Podlane").finish_non_exhaustive()
    }
}

fn counter<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            // A family of one sample without labels: no `{}` after its name.
            return ConstCounter::new(value).encode(family);
        }
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            return ConstGauge::new(value).encode(family);
        }
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One queue's packets and bytes, received and sent, and the labels that name it (interface,
/// queue, mode).
struct QueueCounts {
    labels: [String; 3],
    packets: [u64; 2],
    bytes: [u64; 2],
}

impl QueueCounts {
    fn labels(&self, direction: &str) -> Vec<(&'static str, String)> {
        let [interface, queue, mode] = self.labels.clone();
        vec![
            ("interface", interface),
            ("queue", queue),
            ("mode", mode),
            ("direction", direction.to_owned()),
        ]
    }
}

impl Collector for Podlane {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shared = &self.shared;
        let workers: Vec<WorkerCounters> =
            shared.stats.iter().filter_map(|s| s.lock().ok().map(|s| s.clone())).collect();
        let sum = |f: fn(&WorkerCounters) -> u64| workers.iter().map(f).sum::<u64>();
        let e = &mut encoder;
        // Each verdict's frames and their bytes.
        let directions = [
            ("encap", sum(|w| w.encap), sum(|w| w.encap_bytes)),
            ("decap", sum(|w| w.decap), sum(|w| w.decap_bytes)),
            ("local", sum(|w| w.local), sum(|w| w.local_bytes)),
            ("reply", sum(|w| w.reply), sum(|w| w.reply_bytes)),
            ("host", sum(|w| w.host), sum(|w| w.host_bytes)),
        ];
        counter(
            e,
            "podlane_forward_count",
            "Frames forwarded, by direction (the pipeline's verdict)",
            directions.map(|(d, frames, _)| (vec![("direction", d.to_owned())], frames)),
        )?;
        counter(
            e,
            "podlane_forward_bytes",
            "Bytes forwarded, by direction (the frames as the verdict leaves them)",
            directions.map(|(d, _, bytes)| (vec![("direction", d.to_owned())], bytes)),
        )?;
        counter(
            e,
            "podlane_receive_count",
            "Frames received by the pipelines",
            [(vec![], sum(|w| w.rx_frames))],
        )?;
        counter(
            e,
            "podlane_receive_bytes",
            "Bytes received by the pipelines",
            [(vec![], sum(|w| w.rx_bytes))],
        )?;
        // Read from the uplink program's per-CPU counters now.
        if let Some(passed) = &shared.uplink_passed {
            counter(
                e,
                "podlane_uplink_passed",
                "UDP to this node the uplink program left to the kernel, by reason",
                (0..uplink_passed::COUNT).map(|i| {
                    let label = uplink_passed::LABELS[i as usize].to_owned();
                    (vec![("reason", label)], passed.sum(i).unwrap_or(0))
                }),
            )?;
        }
        let mut drops: BTreeMap<&str, u64> = BTreeMap::new();
        for w in &workers {
            for (reason, n) in &w.drops {
                *drops.entry(reason).or_default() += n;
            }
        }
        let io_drops = [
            ("no_socket", sum(|w| w.no_socket)),
            ("handoff_dropped", sum(|w| w.handoff_dropped)),
            ("chunk_exhausted", sum(|w| w.chunk_exhausted)),
            ("jumbo_too_long", sum(|w| w.jumbo_too_long)),
            ("tunnel_gso_dropped", sum(|w| w.tunnel_gso_dropped)),
            ("host_tx_dropped", sum(|w| w.host_interface.as_ref().map_or(0, |h| h.tx_dropped))),
            ("host_rx_too_long", sum(|w| w.host_interface.as_ref().map_or(0, |h| h.rx_too_long))),
            (
                "host_rx_bad_header",
                sum(|w| w.host_interface.as_ref().map_or(0, |h| h.rx_bad_header)),
            ),
        ];
        counter(
            e,
            "podlane_drop_count",
            "Frames dropped, by reason (the pipeline's reasons, then the workers' own)",
            drops
                .into_iter()
                .map(|(r, n)| (r.to_owned(), n))
                .chain(io_drops.map(|(r, n)| (r.to_owned(), n)))
                .map(|(r, n)| (vec![("reason", r)], n)),
        )?;
        // Interfaces, and the pods they belong to.
        let snapshot = shared.tables.load_full();
        let mut pods: BTreeMap<String, String> = BTreeMap::new();
        for (_, endpoint) in snapshot.endpoints() {
            let label = match &endpoint.edge {
                PodEdge::Veth => endpoint.interface.clone(),
                PodEdge::Tap { netns } => format!("{}@{netns}", endpoint.interface),
            };
            pods.insert(label, format!("{}/{}", endpoint.namespace, endpoint.name));
        }
        let sockets: Vec<_> = workers.iter().flat_map(|w| w.sockets.iter()).collect();
        // Every queue: AF_XDP sockets, TAP queues and the host interface's queues.
        let queues: Vec<QueueCounts> = sockets
            .iter()
            .map(|s| QueueCounts {
                labels: [s.interface.as_str(), &s.queue.to_string(), s.mode.as_str()]
                    .map(str::to_owned),
                packets: [s.rx_packets, s.tx_packets],
                bytes: [s.rx_bytes, s.tx_bytes],
            })
            .chain(workers.iter().filter_map(|w| w.host_interface.as_ref()).map(|h| QueueCounts {
                labels: [h.interface.as_str(), &h.queue.to_string(), "host"].map(str::to_owned),
                packets: [h.rx_packets, h.tx_packets],
                bytes: [h.rx_bytes, h.tx_bytes],
            }))
            .collect();
        counter(
            e,
            "podlane_interface_packets",
            "Packets received from and sent to each socket, TAP queue or host interface queue",
            queues
                .iter()
                .flat_map(|q| [(q.labels("rx"), q.packets[0]), (q.labels("tx"), q.packets[1])]),
        )?;
        counter(
            e,
            "podlane_interface_bytes",
            "Bytes received from and sent to each socket, TAP queue or host interface queue",
            queues
                .iter()
                .flat_map(|q| [(q.labels("rx"), q.bytes[0]), (q.labels("tx"), q.bytes[1])]),
        )?;
        counter(
            e,
            "podlane_host_super_packets",
            "TCP super-packets through the host interface: from the node's kernel (rx), to it (tx)",
            workers.iter().filter_map(|w| w.host_interface.as_ref()).flat_map(|h| {
                let labels = |direction: &str| {
                    vec![
                        ("interface", h.interface.clone()),
                        ("queue", h.queue.to_string()),
                        ("direction", direction.to_owned()),
                    ]
                };
                [(labels("rx"), h.rx_super_packets), (labels("tx"), h.tx_super_packets)]
            }),
        )?;
        let mut per_pod: BTreeMap<(String, &str), (u64, u64)> = BTreeMap::new();
        for s in &sockets {
            if let Some(pod) = pods.get(&s.interface) {
                // rx from the pod is what it sent; tx to it, what it received.
                let sent = per_pod.entry((pod.clone(), "from_pod")).or_default();
                sent.0 += s.rx_packets;
                sent.1 += s.rx_bytes;
                let received = per_pod.entry((pod.clone(), "to_pod")).or_default();
                received.0 += s.tx_packets;
                received.1 += s.tx_bytes;
            }
        }
        counter(
            e,
            "podlane_pod_packets",
            "Packets from and to each local pod",
            per_pod.iter().map(|((pod, d), (p, _))| {
                (vec![("pod", pod.clone()), ("direction", (*d).to_owned())], *p)
            }),
        )?;
        counter(
            e,
            "podlane_pod_bytes",
            "Bytes from and to each local pod",
            per_pod.iter().map(|((pod, d), (_, b))| {
                (vec![("pod", pod.clone()), ("direction", (*d).to_owned())], *b)
            }),
        )?;
        gauge(
            e,
            "podlane_conntrack_entries",
            "Flows connection tracking holds, per worker",
            workers
                .iter()
                .map(|w| (vec![("worker", w.worker.to_string())], w.conntrack.flows as f64)),
        )?;
        gauge(
            e,
            "podlane_conntrack_capacity",
            "Flows a worker's connection tracking can hold",
            workers
                .iter()
                .map(|w| (vec![("worker", w.worker.to_string())], w.conntrack.capacity as f64)),
        )?;
        gauge(
            e,
            "podlane_worker_longest_round_seconds",
            "The longest round of each worker's loop over the last second (a stall shows here)",
            workers
                .iter()
                .map(|w| (vec![("worker", w.worker.to_string())], w.longest_round_us as f64 / 1e6)),
        )?;
        counter(
            e,
            "podlane_worker_realtime_pauses",
            "Times a worker under SCHED_FIFO left its core for a moment after running a while without sleeping",
            workers.iter().map(|w| (vec![("worker", w.worker.to_string())], w.realtime_pauses)),
        )?;
        gauge(
            e,
            "podlane_worker_free_chunks",
            "Idle UMEM chunks, per worker",
            workers.iter().map(|w| (vec![("worker", w.worker.to_string())], w.free_chunks as f64)),
        )?;
        gauge(
            e,
            "podlane_workers_alive",
            "Workers running, of podlane_workers",
            [(vec![], shared.live_workers.load(Ordering::Relaxed) as f64)],
        )?;
        gauge(e, "podlane_workers", "Workers started", [(vec![], shared.workers as f64)])?;
        let (generation, in_sync) = shared.tables.status();
        gauge(
            e,
            "podlane_tables_generation",
            "Generation of the tables in force",
            [(vec![], generation as f64)],
        )?;
        gauge(
            e,
            "podlane_tables_in_sync",
            "1 once the control process pushed everything it knows (or tables came from a file)",
            [(vec![], f64::from(u8::from(in_sync || shared.static_tables)))],
        )?;
        // At most as many series as a request may have entries at fault (table::MAX_REJECTED
        // per request; a later request replaces or deletes them).
        gauge(
            e,
            "podlane_tables_rejected",
            "1 per entry pushed by the control process that is not in force (quarantined)",
            shared
                .tables
                .rejected()
                .into_iter()
                .map(|r| (vec![("kind", r.kind), ("name", r.name)], 1.0)),
        )?;
        Ok(())
    }
}
