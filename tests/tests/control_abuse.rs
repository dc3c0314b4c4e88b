//! A node's control socket under abuse (issue 15): while a UDP stream crosses the node
//! between its two pods, the test connects 40 clients that never say hello, one that
//! trickles its hello a byte a second, one that sends a length prefix of 256 MiB and nothing
//! after it, and one that sends garbage; then 100 more idle clients at once. Meanwhile:
//!
//! * a well-behaved client (`podlane show counters`) is answered while fewer than the cap are
//!   connected, and refused with a reason ("too many clients") at the cap, never hung;
//! * the daemon's threads stay bounded by the cap, its memory does not grow by the prefix's
//!   promise, and silent or trickling clients are cut off after the handshake timeout (5 s),
//!   after which the thread count is back near where it started;
//! * the stream loses nothing.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podlane_tests::require_root;
use testbed::binary;
use testbed::cluster::OneNode;
use testbed::podlane::Dataplane;

/// A field of /proc/PID/status (`Threads`, `VmRSS` in kB).
fn status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn show(socket: &Path) -> (bool, String) {
    let out = Command::new(binary("podlane"))
        .arg("--socket")
        .arg(socket)
        .args(["show", "counters"])
        .output()
        .expect("podlane show");
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn control_abuse() -> anyhow::Result<()> {
    if !require_root("control_abuse") {
        return Ok(());
    }
    let one = OneNode::new("ab", 88)?;
    let tables = one.write_tables(&[])?;
    let log = one.dir.path().join("d.log");
    let mut daemon = Dataplane::with_tables(&one.node, "uplink", &tables, &log, &[])?;
    daemon.wait_ready(2)?;
    let socket = daemon.socket().to_owned();
    let pid = daemon.pid().expect("daemon's pid");
    let (threads_before, rss_before) = (status(pid, "Threads"), status(pid, "VmRSS"));

    let echo = one.p2.serve(&["udp-echo", "7000"])?;
    let stream = one
        .p1
        .probe(&["udp-stream", &one.p2.ip, "7000", "12000", "1000"])
        .stdout(Stdio::piped())
        .spawn()?;

    // Silent clients, a trickler, a huge promise, garbage.
    let mut held: Vec<UnixStream> =
        (0..40).map(|_| UnixStream::connect(&socket)).collect::<Result<_, _>>()?;
    let mut promise = UnixStream::connect(&socket)?;
    promise.write_all(&0x0fff_ffffu32.to_be_bytes())?;
    let mut garbage = UnixStream::connect(&socket)?;
    garbage.write_all(&[0, 0, 0, 9, b'{', b'o', b'o', b'p', b's', b'!', b'}', b'}', b'}'])?;
    let mut reply = Vec::new();
    garbage.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = garbage.read_to_end(&mut reply);
    assert!(String::from_utf8_lossy(&reply).contains("handshake"), "garbage got {reply:?}");
    let trickle = {
        let socket = socket.clone();
        std::thread::spawn(move || -> Duration {
            let started = Instant::now();
            let Ok(mut s) = UnixStream::connect(&socket) else { return Duration::ZERO };
            let hello = br#"{"hello":{"version":1,"client":"slow"}}"#;
            let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(hello);
            for byte in frame {
                if s.write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
            started.elapsed()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (ok, said) = show(&socket);
    assert!(ok, "a well-behaved client among 43 misbehaving ones: {said}");
    let threads = status(pid, "Threads");
    assert!(threads <= threads_before + 64, "{threads} threads (started with {threads_before})");
    let rss = status(pid, "VmRSS");
    assert!(
        rss < rss_before + 64 * 1024,
        "RSS {rss} kB after a 256 MiB promise (was {rss_before} kB)"
    );

    // At the cap: refused with a reason, not hung.
    held.extend((0..100).filter_map(|_| UnixStream::connect(&socket).ok()));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (ok, said) = show(&socket);
    assert!(!ok && said.contains("too many clients"), "at the cap: {said}");
    assert!(started.elapsed() < Duration::from_secs(5), "the refusal took {:?}", started.elapsed());
    let threads = status(pid, "Threads");
    assert!(
        threads <= threads_before + 64 + 2,
        "{threads} threads at the cap (started with {threads_before})"
    );

    // Silent and trickling clients are cut off after the handshake timeout.
    let cut_after = trickle.join().expect("trickler");
    assert!(cut_after < Duration::from_secs(15), "the trickler went on for {cut_after:?}");
    std::thread::sleep(Duration::from_secs(6));
    let (ok, said) = show(&socket);
    assert!(ok, "after the silent clients were cut off: {said}");
    let threads = status(pid, "Threads");
    assert!(
        threads <= threads_before + 2,
        "{threads} threads left (started with {threads_before})"
    );
    drop(held);
    drop(promise);

    let out = stream.wait_with_output()?;
    drop(echo);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("lost=0"), "the stream while the socket was abused: {report}");
    assert!(daemon.stop()?.success(), "{}", daemon.log());
    Ok(())
}
