//! The uplink followed while the daemon runs (issue 15): on a podlane node with two pods and
//! `/readyz` served,
//!
//! * the uplink set down makes `/readyz` say so (503) while the pods still reach each other,
//!   and up again makes it ready;
//! * the uplink renamed is logged and changes nothing else;
//! * its MTU changed stops the daemon with an error naming both MTUs (a supervisor starts it
//!   again, sized for the new one);
//! * the uplink deleted stops the daemon with an error saying it is gone.

use control::client::Client;
use podlane_core::api::{Query, Request, Response};
use podlane_tests::require_root;
use testbed::Pod;
use testbed::cluster::OneNode;
use testbed::podlane::Dataplane;

/// `GET path` from inside the node: the status line.
fn status(node: &Pod, path: &str) -> String {
    node.http_get("127.0.0.1", 9842, path).0
}

/// Waits up to 10 s for `/readyz` to answer `code`.
fn ready_becomes(node: &Pod, code: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if status(node, "/readyz").contains(code) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

#[test]
fn uplink_follow() -> anyhow::Result<()> {
    if !require_root("uplink_follow") {
        return Ok(());
    }
    let one = OneNode::new("uf", 86)?;
    let tables = one.write_tables(&[])?;
    let start = |log: &str| {
        Dataplane::with_tables(
            &one.node,
            "uplink",
            &tables,
            &one.dir.path().join(log),
            &["--metrics-address", "127.0.0.1:9842"],
        )
    };
    let mut daemon = start("d.log")?;
    daemon.wait_ready(2)?;
    daemon.wait_for("metrics and health endpoint up", 1)?;
    let node = Pod::in_namespace(&one.node, "127.0.0.1");
    assert!(ready_becomes(&node, "200"), "{}", daemon.log());

    one.node.ip(&["link", "set", "uplink", "down"])?;
    daemon.wait_for("uplink down", 1)?;
    assert!(ready_becomes(&node, "503"), "not ready with the uplink down\n{}", daemon.log());
    assert_eq!(one.p1.ping(&one.p2.ip, 2), 2, "pods on the node still reach each other");
    one.node.ip(&["link", "set", "uplink", "name", "wan0"])?;
    one.node.ip(&["link", "set", "wan0", "up"])?;
    daemon.wait_for("uplink renamed", 1)?;
    daemon.wait_for("uplink up again", 1)?;
    assert!(ready_becomes(&node, "200"), "ready again\n{}", daemon.log());
    assert_eq!(one.p1.ping(&one.p2.ip, 2), 2, "{}", daemon.log());

    one.node.ip(&["link", "set", "wan0", "mtu", "1400"])?;
    daemon.wait_for("MTU changed from 1500 to 1400", 1)?;
    let exit = daemon.stop()?;
    assert!(!exit.success(), "the daemon stops with an error\n{}", daemon.log());

    // Started again on the uplink as it is now; then the uplink goes away.
    one.node.ip(&["link", "set", "wan0", "name", "uplink"])?;
    let mut daemon = start("d2.log")?;
    daemon.wait_ready(2)?;
    let mut client = Client::connect(daemon.socket(), "uplink_follow")?;
    let Response::Config { config } = client.request(&Request::Query { what: Query::Config })?
    else {
        panic!("no configuration");
    };
    assert_eq!((config.uplink_mtu, config.overlay_mtu), (1400, 1350), "sized for the new MTU");
    one.node.ip(&["link", "del", "uplink"])?;
    daemon.wait_for("is gone", 1)?;
    let exit = daemon.stop()?;
    assert!(!exit.success(), "{}", daemon.log());
    Ok(())
}
