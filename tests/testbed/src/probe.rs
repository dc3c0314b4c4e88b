//! The traffic program of the testbed, `podlane-netprobe`, run inside a namespace with
//! `ip netns exec NS podlane-netprobe ...` ([`crate::pod::Pod::probe`]). Every payload is a
//! deterministic byte stream, and both ends print a digest of what they sent or received, so a
//! test can tell "arrived intact" from "arrived". Servers listen on IPv6 and IPv4 alike
//! (IPv4 only where the namespace has IPv6 switched off); addresses are IPv4 or IPv6.
//!
//! * `tcp-sink PORT` — accepts one connection, reads to the end, prints `bytes=N digest=H`.
//!   Prints `ready` once listening.
//! * `tcp-send ADDR PORT BYTES` — connects (retrying for 10 s), sends BYTES, prints the same.
//! * `udp-echo PORT` — echoes datagrams until killed. Prints `ready`.
//! * `udp-send ADDR PORT COUNT` — sends COUNT numbered datagrams of varied sizes and waits for
//!   each echo (retrying a lost one up to 5 times); prints `sent=N echoed=M intact=K`.
//! * `udp-stream ADDR PORT COUNT RATE` — sends COUNT numbered datagrams at RATE a second,
//!   never retrying, to an echo server; prints `sent=N echoed=M lost=K`: loss measured.
//! * `udp-spray ADDR PORT FLOWS COUNT RATE` — sends COUNT datagrams at RATE a second from
//!   FLOWS sockets (each its own source port: FLOWS flows, which hashing spreads over queues)
//!   to ADDR:PORT, expecting nothing back; prints `sent=N`.
//! * `serve PORT...` — on each port a TCP server that answers every connection with one byte,
//!   then echoes what it reads until the client closes, and a UDP echo server; until killed.
//!   Prints `ready`.
//! * `tcp-chat ADDR PORT COUNT INTERVAL_MS` — one TCP connection to a `serve` port: COUNT
//!   8-byte messages, one every INTERVAL_MS, each waiting up to 300 ms for its echo; prints
//!   `sent=N echoed=M`. An established connection that policy cuts stops echoing.
//! * `tcp-rr ADDR PORT SECONDS SIZE` — request/response on one TCP connection to a `serve`
//!   port for SECONDS: a SIZE-byte message, its echo, the next; prints `transactions=N
//!   seconds=S p50_us=X p99_us=Y`.
//! * `http-get ADDR PORT PATH` — one HTTP/1.1 GET; prints the status line, then the body.
//! * `reach TIMEOUT_MS PROTO/ADDR/PORT...` — tries every target at once (PROTO `tcp`: connect
//!   and read the server's byte; `udp`: a datagram and its echo, sent up to three times) and
//!   prints one line per target, in order: `PROTO/ADDR/PORT ok` or `PROTO/ADDR/PORT no`. For
//!   policy matrices: a whole row of probes costs one timeout, not one per refused pair.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// FNV-1a over a stream.
struct Digest(u64);

impl Digest {
    fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The deterministic stream: byte i of the stream, from a cheap mix of i.
fn pattern(offset: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let x = (offset + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        *b = (x >> 56) as u8;
    }
}

/// Binds the wildcard address: `[::]` (which takes IPv4 too), or `0.0.0.0` where the
/// namespace has no IPv6.
fn bind_any<T>(port: u16, bind: impl Fn(SocketAddr) -> std::io::Result<T>) -> std::io::Result<T> {
    bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port))))
}

fn tcp_sink(port: u16) -> std::io::Result<()> {
    let listener = bind_any(port, TcpListener::bind)?;
    println!("ready");
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut digest = Digest::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        total += n as u64;
    }
    println!("bytes={total} digest={:016x}", digest.0);
    Ok(())
}

fn tcp_send(addr: SocketAddr, bytes: u64) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect: {e}, retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut digest = Digest::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let n = buf.len().min((bytes - sent) as usize);
        pattern(sent, &mut buf[..n]);
        stream.write_all(&buf[..n])?;
        digest.update(&buf[..n]);
        sent += n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // Wait for the peer to close, so that everything was read before we report.
    let _ = stream.read(&mut [0u8; 1]);
    println!("bytes={sent} digest={:016x}", digest.0);
    Ok(())
}

fn udp_echo(port: u16) -> std::io::Result<()> {
    let socket = bind_any(port, UdpSocket::bind)?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
    }
}

/// An unbound-port UDP socket of `addr`'s family.
fn udp_client(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    match addr {
        SocketAddr::V4(_) => UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}

fn udp_send(addr: SocketAddr, count: u32) -> std::io::Result<()> {
    let socket = udp_client(addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let (mut echoed, mut intact) = (0, 0);
    let mut reply = vec![0u8; 65536];
    for seq in 0..count {
        // Sizes from 8 bytes up to what fits in a 1450-byte pod MTU (IP and UDP headers
        // taken off: 28 bytes over IPv4, 48 over IPv6).
        let headers = if addr.is_ipv4() { 28 } else { 48 };
        let len = 8 + (seq as usize * 97) % (1450 - headers - 8);
        let mut datagram = vec![0u8; len];
        pattern(u64::from(seq) << 20, &mut datagram);
        datagram[..4].copy_from_slice(&seq.to_be_bytes());
        for _attempt in 0..5 {
            socket.send_to(&datagram, addr)?;
            match socket.recv_from(&mut reply) {
                Ok((n, _)) if reply[..4] == seq.to_be_bytes() => {
                    echoed += 1;
                    intact += u32::from(reply[..n] == datagram[..]);
                    break;
                }
                _ => continue,
            }
        }
    }
    println!("sent={count} echoed={echoed} intact={intact}");
    Ok(())
}

fn udp_stream(addr: SocketAddr, count: u32, rate: u32) -> std::io::Result<()> {
    let socket = udp_client(addr)?;
    socket.connect(addr)?;
    let receiver = socket.try_clone()?;
    receiver.set_read_timeout(Some(Duration::from_millis(200)))?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = vec![false; count as usize];
            let mut buf = [0u8; 64];
            let mut quiet_since: Option<Instant> = None;
            loop {
                match receiver.recv(&mut buf) {
                    Ok(n) if n >= 4 => {
                        let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        if let Some(slot) = seen.get_mut(seq) {
                            *slot = true;
                        }
                        quiet_since = None;
                    }
                    _ if done.load(std::sync::atomic::Ordering::Relaxed) => {
                        // After the last send, stop once nothing came for a second.
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= Duration::from_secs(1) {
                            return seen.iter().filter(|s| **s).count() as u32;
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let start = Instant::now();
    let interval = Duration::from_secs(1) / rate.max(1);
    for seq in 0..count {
        let due = start + interval * seq;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut datagram = [0u8; 32];
        datagram[..4].copy_from_slice(&seq.to_be_bytes());
        socket.send(&datagram)?;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let echoed = collector.join().unwrap_or(0);
    println!("sent={count} echoed={echoed} lost={}", count - echoed);
    Ok(())
}

fn udp_spray(addr: SocketAddr, flows: u32, count: u32, rate: u32) -> std::io::Result<()> {
    let sockets =
        (0..flows.max(1)).map(|_| udp_client(addr)).collect::<std::io::Result<Vec<_>>>()?;
    let start = Instant::now();
    let interval = Duration::from_secs(1) / rate.max(1);
    let mut sent = 0u32;
    for seq in 0..count {
        let due = start + interval * seq;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut datagram = [0u8; 64];
        datagram[..4].copy_from_slice(&seq.to_be_bytes());
        // A refused datagram (an ICMP error from an earlier one) is not a reason to stop.
        if sockets[seq as usize % sockets.len()].send_to(&datagram, addr).is_ok() {
            sent += 1;
        }
    }
    println!("sent={sent}");
    Ok(())
}

/// TCP and UDP servers on every port of `ports` (see the module docs).
fn serve(ports: &[u16]) -> std::io::Result<()> {
    let mut threads = Vec::new();
    for &port in ports {
        let listener = bind_any(port, TcpListener::bind)?;
        threads.push(std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = stream.set_nodelay(true);
                    let _ = stream.write_all(b"k");
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
        let socket = bind_any(port, UdpSocket::bind)?;
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }));
    }
    println!("ready");
    std::io::stdout().flush()?;
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

/// One TCP connection, `count` messages `interval` apart, each echoed or not within 300 ms.
fn tcp_chat(addr: SocketAddr, count: u32, interval: Duration) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut hello = [0u8; 1];
    stream.read_exact(&mut hello)?;
    let (mut echoed, mut pending) = (0u32, Vec::new());
    for seq in 0..count {
        let started = Instant::now();
        let message = u64::from(seq).to_be_bytes();
        stream.write_all(&message)?;
        // Echoes arrive in order; a late one (after a cut that was lifted) still counts.
        pending.extend_from_slice(&message);
        let mut buf = [0u8; 64];
        if let Ok(n @ 1..) = stream.read(&mut buf) {
            let n = n.min(pending.len());
            echoed += (n / 8) as u32;
            pending.drain(..n - n % 8);
        }
        if let Some(rest) = interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    println!("sent={count} echoed={echoed}");
    Ok(())
}

/// Request/response over one TCP connection to a `serve` port for `seconds`: a `size`-byte
/// message, then its echo, then the next. Prints `transactions=N seconds=S p50_us=X
/// p99_us=Y` (latencies from the send to the last byte of the echo).
fn tcp_rr(addr: SocketAddr, seconds: f64, size: usize) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut hello = [0u8; 1];
    stream.read_exact(&mut hello)?;
    let message = vec![0x5au8; size.max(1)];
    let mut echo = vec![0u8; message.len()];
    let mut latencies_ns: Vec<u64> = Vec::new();
    let started = Instant::now();
    let length = Duration::from_secs_f64(seconds);
    while started.elapsed() < length {
        let sent = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut echo)?;
        latencies_ns.push(sent.elapsed().as_nanos() as u64);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies_ns.sort_unstable();
    let at = |q: f64| -> f64 {
        let i = ((latencies_ns.len() as f64 - 1.0) * q).round() as usize;
        latencies_ns.get(i).map_or(0.0, |&ns| ns as f64 / 1e3)
    };
    println!(
        "transactions={} seconds={elapsed:.3} p50_us={:.1} p99_us={:.1}",
        latencies_ns.len(),
        at(0.50),
        at(0.99)
    );
    Ok(())
}

/// `GET PATH` over HTTP/1.1 to ADDR:PORT: prints the status line, then the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    println!("{}", head.lines().next().unwrap_or_default());
    print!("{body}");
    Ok(())
}

/// Whether one target answers within `timeout`.
fn reaches(protocol: &str, addr: SocketAddr, timeout: Duration) -> bool {
    match protocol {
        "tcp" => {
            let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else { return false };
            let _ = stream.set_read_timeout(Some(timeout));
            let mut byte = [0u8; 1];
            matches!(stream.read(&mut byte), Ok(1))
        }
        _ => {
            let Ok(socket) = udp_client(addr) else { return false };
            let _ = socket.set_read_timeout(Some(timeout / 3));
            let mut reply = [0u8; 64];
            (0..3).any(|_| {
                socket.send_to(b"reach", addr).is_ok()
                    && matches!(socket.recv_from(&mut reply), Ok((5, _)))
            })
        }
    }
}

/// Tries every target at once; one line per target, in order.
fn reach(timeout_ms: u64, targets: &[String]) -> Result<(), String> {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let parsed = targets
        .iter()
        .map(|t| {
            let parts: Vec<&str> = t.split('/').collect();
            let [protocol @ ("tcp" | "udp"), ip, port] = parts[..] else {
                return Err(format!("target {t:?} is not tcp/ADDR/PORT or udp/ADDR/PORT"));
            };
            let ip: std::net::IpAddr = ip.parse().map_err(|e| format!("target {t:?}: {e}"))?;
            let port: u16 = port.parse().map_err(|e| format!("target {t:?}: {e}"))?;
            Ok((protocol.to_owned(), SocketAddr::new(ip, port)))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let results: Vec<bool> = std::thread::scope(|scope| {
        let probes: Vec<_> = parsed
            .iter()
            .map(|(protocol, addr)| scope.spawn(move || reaches(protocol, *addr, timeout)))
            .collect();
        probes.into_iter().map(|p| p.join().unwrap_or(false)).collect()
    });
    for (target, ok) in targets.iter().zip(results) {
        println!("{target} {}", if ok { "ok" } else { "no" });
    }
    Ok(())
}

/// Runs one probe command (`args` without the program name).
pub fn run(args: &[String]) -> ExitCode {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let addr = || -> Result<SocketAddr, String> {
        let ip: std::net::IpAddr =
            arg(1).parse().map_err(|e| format!("bad address {:?}: {e}", arg(1)))?;
        let port: u16 = arg(2).parse().map_err(|e| format!("bad port {:?}: {e}", arg(2)))?;
        Ok(SocketAddr::new(ip, port))
    };
    let result = match arg(0) {
        "tcp-sink" => arg(1).parse().map_err(|e| format!("{e}")).and_then(|p| tcp_sink(p).map_err(|e| e.to_string())),
        "tcp-send" => addr().and_then(|a| {
            let bytes = arg(3).parse().map_err(|e| format!("bad byte count: {e}"))?;
            tcp_send(a, bytes).map_err(|e| e.to_string())
        }),
        "udp-echo" => arg(1).parse().map_err(|e| format!("{e}")).and_then(|p| udp_echo(p).map_err(|e| e.to_string())),
        "udp-stream" => addr().and_then(|a| {
            let count = arg(3).parse().map_err(|e| format!("bad count: {e}"))?;
            let rate = arg(4).parse().map_err(|e| format!("bad rate: {e}"))?;
            udp_stream(a, count, rate).map_err(|e| e.to_string())
        }),
        "udp-spray" => addr().and_then(|a| {
            let flows = arg(3).parse().map_err(|e| format!("bad flow count: {e}"))?;
            let count = arg(4).parse().map_err(|e| format!("bad count: {e}"))?;
            let rate = arg(5).parse().map_err(|e| format!("bad rate: {e}"))?;
            udp_spray(a, flows, count, rate).map_err(|e| e.to_string())
        }),
        "udp-send" => addr().and_then(|a| {
            let count = arg(3).parse().map_err(|e| format!("bad count: {e}"))?;
            udp_send(a, count).map_err(|e| e.to_string())
        }),
        "serve" => args[1..]
            .iter()
            .map(|p| p.parse::<u16>().map_err(|e| format!("bad port {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|ports| serve(&ports).map_err(|e| e.to_string())),
        "tcp-chat" => addr().and_then(|a| {
            let count = arg(3).parse().map_err(|e| format!("bad count: {e}"))?;
            let interval: u64 = arg(4).parse().map_err(|e| format!("bad interval: {e}"))?;
            tcp_chat(a, count, Duration::from_millis(interval)).map_err(|e| e.to_string())
        }),
        "tcp-rr" => addr().and_then(|a| {
            let seconds: f64 = arg(3).parse().map_err(|e| format!("bad seconds: {e}"))?;
            let size = arg(4).parse().map_err(|e| format!("bad message size: {e}"))?;
            tcp_rr(a, seconds, size).map_err(|e| e.to_string())
        }),
        "http-get" => addr().and_then(|a| http_get(a, arg(3)).map_err(|e| e.to_string())),
        "reach" => arg(1)
            .parse()
            .map_err(|e| format!("bad timeout {:?}: {e}", arg(1)))
            .and_then(|ms| reach(ms, args.get(2..).unwrap_or_default())),
        _ => Err("usage: podlane-netprobe tcp-sink PORT | tcp-send ADDR PORT BYTES | udp-echo PORT | udp-send ADDR PORT COUNT | udp-stream ADDR PORT COUNT RATE | udp-spray ADDR PORT FLOWS COUNT RATE | serve PORT... | reach TIMEOUT_MS PROTO/ADDR/PORT... | tcp-chat ADDR PORT COUNT INTERVAL_MS | tcp-rr ADDR PORT SECONDS SIZE | http-get ADDR PORT PATH".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podlane-netprobe: {e}");
            ExitCode::FAILURE
        }
    }
}
