//! Bad input on a live daemon: 20,000 frames of garbage written into a pod interface (a TAP
//! device standing in for a pod's veth, so the test can put any bytes on it) are each a
//! counted drop, the daemon does not fall over, and the real pods beside it keep forwarding.
//!
//! "Counted" covers both places a frame can be dropped: the pipeline's drop reasons for what
//! reached the socket, and the kernel's socket counter (`rx_dropped`, fill ring empty) for what
//! arrived while the worker was not scheduled — on a 2-core machine the writer can outrun it.

use podlane_core::table::PodEdge;
use podlane_tests::require_root;
use testbed::cluster::OneNode;
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, link};
use tun_tap::{Iface, Mode};

/// Deterministic garbage: lengths 14..=300 (a TAP refuses shorter writes), bytes from an
/// xorshift generator, with some frames made to look more plausible (addressed to the gateway
/// MAC, IPv4 or ARP EtherType) so that deeper parsers see them too.
fn garbage(n: usize) -> Vec<Vec<u8>> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let len = 14 + (next() % 287) as usize;
            let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 {
                frame[..6].fill(0xee); // the gateway MAC
                frame[12..14].copy_from_slice(if i % 4 == 0 {
                    &[0x08, 0x00]
                } else {
                    &[0x08, 0x06]
                });
                if i % 8 == 0 && len > 15 {
                    frame[14] = 0x45;
                }
            }
            frame
        })
        .collect()
}

#[test]
fn garbage_frames_are_counted_drops() -> anyhow::Result<()> {
    if !require_root("garbage_frames_are_counted_drops") {
        return Ok(());
    }
    let one = OneNode::new("gb", 83)?;
    let (node, dir, p1, p2) = (&one.node, &one.dir, &one.p1, &one.p2);
    let tap = Iface::without_packet_info("pltap%d", Mode::Tap)?;
    let tap_name = tap.name().to_owned();
    link::move_into(&tap_name, node)?;
    let tap_pod = Pod {
        ns: Netns::borrowed(node.name()),
        name: "garbage".into(),
        ip: "10.244.1.9".into(),
        ip6: None,
        mac: "0a:58:0a:f4:01:09".into(),
        host_if: tap_name.clone(),
        edge: PodEdge::Veth,
    };
    let tables = one.write_tables(&[&tap_pod])?;
    let mut daemon =
        Dataplane::with_tables(node, "uplink", &tables, &dir.path().join("d.log"), &[])?;
    daemon.wait_ready(3)?;

    let frames = garbage(20_000);
    let mut written = 0u64;
    for (i, frame) in frames.iter().enumerate() {
        if tap.send(frame).is_ok() {
            written += 1;
        }
        if i % 5_000 == 0 {
            assert_eq!(p1.ping(&p2.ip, 1), 1, "forwarding between real pods during the garbage");
        }
        if i % 256 == 255 {
            // Give the worker a turn now and then, so most frames reach the parsers.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    assert!(written > 19_000, "only {written} garbage frames written");
    assert_eq!(p1.ping(&p2.ip, 3), 3, "forwarding after the garbage:\n{}", daemon.log());
    assert_eq!(p2.ping(&p1.ip, 3), 3);
    assert!(daemon.stop()?.success(), "{}", daemon.log());

    // The final counters: every frame the TAP's socket received is dropped with a reason.
    let log = daemon.log();
    let tap_line = log
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{tap_name} q0")))
        .unwrap_or_else(|| panic!("no counters for {tap_name}:\n{log}"));
    let received: u64 = tap_line
        .split("rx ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{tap_line}"));
    let kernel_dropped: u64 = tap_line
        .split("kernel rx_dropped ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{tap_line}"));
    let summary = log.lines().find(|l| l.contains("worker 0: rx ")).expect("worker summary");
    let dropped: u64 = summary
        .split(" drop ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    eprintln!("{written} written, {received} received on {tap_name}; {summary}");
    assert!(
        received + kernel_dropped >= written,
        "every frame written reached the socket or is in its kernel drop count: {tap_line}"
    );
    assert!(received >= 1_000, "the parsers saw the garbage: {tap_line}");
    assert!(dropped >= received, "every garbage frame is a counted drop: {summary}");
    for reason in ["unsupported_ethertype", "malformed_arp", "malformed_ipv4"] {
        assert!(summary.contains(reason), "{reason} among the reasons: {summary}");
    }
    Ok(())
}
