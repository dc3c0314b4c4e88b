//! The "bare AF_XDP forward" baseline: every frame received on one interface is transmitted
//! unchanged on another — no parsing, no lookup, no encapsulation. It uses the same I/O as
//! podlane's workers (one UMEM shared by both sockets so nothing is copied in userspace,
//! bursts of 256, sleeping in poll() when the rings are empty), so the difference between
//! this row and podlane's is what the pipeline costs, and this row is the machine's I/O limit.
//!
//! Run as `podlane-bench forward --from IF --to IF` inside the node; it prints `ready` once
//! attached and stops on SIGINT/SIGTERM or when its standard input closes.

use std::io::Write;

use anyhow::Context;
use dataplane::io::xdp::{XdpMode, XdpProgram, XskMap};
use dataplane::io::xsk::{BindPreference, Packet, RingSizes, Umem, UmemConfig};
use dataplane::io::{Poller, Readiness};

const BURST: u32 = 256;
const FILL: u32 = 2048;

/// Forwards `from` → `to` until asked to stop.
pub fn run(
    from: &str,
    to: &str,
    core: Option<usize>,
    realtime_priority: Option<u8>,
) -> anyhow::Result<()> {
    dataplane::io::install_stop_handlers()?;
    if let Some(core) = core {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    // Standard input closing (the harness went away) also stops the forwarder.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        dataplane::io::request_stop();
    });
    // After spawning the watcher, which would otherwise inherit the real-time policy.
    if let Some(priority) = realtime_priority {
        dataplane::io::set_realtime_priority(priority)?;
    }
    let mut umem = Umem::new(UmemConfig::default())?;
    let rx = umem.open(from, 0, RingSizes::default(), BindPreference::Auto)?;
    let tx = umem.open(to, 0, RingSizes::default(), BindPreference::Auto)?;
    let map = XskMap::new(1)?;
    map.insert(0, umem.socket(rx).context("rx socket")?)?;
    let program = XdpProgram::pod(&map, false)?;
    let _link = program
        .attach(from, XdpMode::Native)
        .or_else(|_| program.attach(from, XdpMode::Generic))?;
    let mode = umem.socket(rx).map(|s| s.mode().to_string()).unwrap_or_default();
    println!("ready ({from} -> {to}, {mode})");
    std::io::stdout().flush()?;

    let mut packets: Vec<Packet> = Vec::with_capacity(BURST as usize);
    let (mut poller, mut ready) = (Poller::default(), Vec::<Readiness>::new());
    let (mut forwarded, mut dropped) = (0u64, 0u64);
    while !dataplane::io::stop_requested() {
        umem.complete(tx);
        umem.refill(rx, FILL);
        let got = umem.receive(rx, BURST, &mut packets);
        if got == 0 {
            let fd = umem.socket(rx).and_then(|s| s.fd()).context("rx socket")?;
            let _ = poller.wait(&[fd], 100, &mut ready);
            continue;
        }
        let outcome = umem.transmit(tx, &mut packets);
        forwarded += u64::from(outcome.queued);
        // What did not fit on the TX ring is dropped, as a dataplane would.
        for p in packets.drain(..) {
            dropped += 1;
            umem.release(p.chunk);
        }
    }
    eprintln!(
        "forward {from} -> {to}: {forwarded} frames forwarded, {dropped} dropped on a full TX ring"
    );
    Ok(())
}
