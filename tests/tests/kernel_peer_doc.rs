//! docs/kernel-peer.md, followed literally (issue 15): for each profile the doc's command
//! block runs as written, line by line, in a kernel node's namespace with the doc's variables
//! set; podlane runs on the other node with tables that say what the doc says they must. Then
//! pods on both nodes ping each other and the kernel node's pod reaches the podlane node at
//! its gateway address. A command that fails, or a doc without the block, fails the test.

use podlane_tests::require_root;
use testbed::kernel;
use testbed::podlane::Dataplane;
use testbed::{Netns, Pod, ScratchDir, link, tables};

const DOC: &str = include_str!("../../docs/kernel-peer.md");

/// The lines of the ```sh <profile> block.
fn block(profile: &str) -> Vec<&'static str> {
    let fence = format!("```sh {profile}");
    let start = DOC.find(&fence).unwrap_or_else(|| panic!("no {fence} block in the doc"));
    let body = &DOC[start + fence.len()..];
    let end = body.find("```").expect("the block ends");
    body[..end].lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

struct Profile {
    name: &'static str,
    p_cidr: &'static str,
    k_cidr: &'static str,
    p_gateway: &'static str,
    k_overlay: &'static str,
}

fn follow(profile: &Profile) -> anyhow::Result<()> {
    let dir = ScratchDir::new(&format!("peerdoc-{}", profile.name))?;
    let (p, k) = (Netns::create("pdp")?, Netns::create("pdk")?);
    let (p_ip, k_ip) = ("192.168.89.1", "192.168.89.2");
    let (p_vtep, k_vtep) = ("0a:aa:00:00:00:01", "0a:bb:00:00:00:02");
    link::underlay((&p, "uplink", p_ip), (&k, "eth0", k_ip), 1)?;
    k.sysctl(&[
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ])?;
    let vars = [
        ("$P_IP", p_ip),
        ("$K_IP", k_ip),
        ("$P_VTEP_MAC", p_vtep),
        ("$K_VTEP_MAC", k_vtep),
        ("$P_POD_CIDR", profile.p_cidr),
        ("$P_GATEWAY", profile.p_gateway),
        ("$K_OVERLAY_IP", profile.k_overlay),
        ("$K_UPLINK", "eth0"),
    ];
    let lines = block(profile.name);
    assert!(lines.len() >= 7, "{} block: {lines:?}", profile.name);
    for line in lines {
        let command = vars.iter().fold(line.to_owned(), |l, (var, value)| l.replace(var, value));
        assert!(!command.contains('$'), "a variable the test does not know: {command}");
        let out = k.command("sh").args(["-c", &command]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}: `{command}` failed: {}",
            profile.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let p_pod_ip = profile.p_cidr.replace(".0/", ".10/");
    let p_pod_ip = p_pod_ip.split('/').next().unwrap();
    let k_pod_ip = profile.k_cidr.replace(".0/", ".10/");
    let k_pod_ip = k_pod_ip.split('/').next().unwrap();
    let pod_p = Pod::wire(&p, "a1", "veth-a1", p_pod_ip, "0a:58:0a:f4:01:0a")?;
    let pod_k = kernel::wire_pod(&k, "b1", "veth-b1", k_pod_ip, "0a:58:0a:f4:02:0a")?;
    // podlane's tables, as the doc says: K with its VTEP MAC and pod CIDR, P's gateway among
    // P's tunnel addresses.
    let mut node_p = tables::node("node-p", p_ip, p_vtep, profile.p_cidr)?;
    node_p.tunnel_ips = vec![profile.p_gateway.parse()?];
    let nodes = [node_p, tables::node("node-k", k_ip, k_vtep, profile.k_cidr)?];
    let file = dir.path().join("tables.json");
    tables::write(&file, &tables::for_node("node-p", &nodes, &[&pod_p])?)?;
    let mut daemon = Dataplane::with_tables(
        &p,
        "uplink",
        &file,
        &dir.path().join("podlane.log"),
        &["--profile", profile.name],
    )?;
    daemon.wait_ready(1)?;
    let context = || format!("{}\n{}", profile.name, daemon.log());
    assert_eq!(pod_p.ping(k_pod_ip, 3), 3, "podlane pod → kernel pod: {}", context());
    assert_eq!(pod_k.ping(p_pod_ip, 3), 3, "kernel pod → podlane pod: {}", context());
    assert_eq!(pod_k.ping(profile.p_gateway, 3), 3, "kernel pod → podlane node: {}", context());
    assert!(daemon.stop()?.success(), "{}", daemon.log());
    Ok(())
}

#[test]
fn kernel_peer_doc() -> anyhow::Result<()> {
    if !require_root("kernel_peer_doc") {
        return Ok(());
    }
    follow(&Profile {
        name: "flannel",
        p_cidr: "10.244.1.0/24",
        k_cidr: "10.244.2.0/24",
        p_gateway: "10.244.1.0",
        k_overlay: "10.244.2.0",
    })?;
    follow(&Profile {
        name: "calico",
        p_cidr: "10.244.1.0/26",
        k_cidr: "10.244.2.0/26",
        p_gateway: "10.244.1.1",
        k_overlay: "10.244.2.1",
    })
}
