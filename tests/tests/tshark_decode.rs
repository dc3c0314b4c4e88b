//! Every frame the pipeline encapsulates is decoded by tshark — Wireshark's dissectors, an
//! implementation independent of ours — as Ethernet / IP / UDP / VXLAN / Ethernet / IP with the
//! configured VNI and port, the right outer and inner addresses, valid IP and UDP checksums
//! and nothing malformed. Flannel's settings (VNI 1, port 8472), Calico's (VNI 4096, port 4789)
//! and an IPv6 underlay.

use std::net::IpAddr;

use podlane_bench::fixture::{self, ClusterParams};
use podlane_core::engine::{EngineConfig, Frame, Ingress, Pipeline, Span, Verdict};
use podlane_core::table::{EndpointId, Snapshot};
use podlane_tests::{require_tool, tshark_fields, write_pcap};
use testbed::ScratchDir;

const HEADROOM: usize = 256;

fn small_cluster() -> ClusterParams {
    ClusterParams {
        nodes: 8,
        blocks_per_node: 2,
        local_endpoints: 20,
        cluster_endpoints: 160,
        rules_per_policy: 50,
        peers_per_rule: 1,
        distinct_policies: 2,
    }
}

/// Encapsulates frames of several sizes and protocols; returns (input, output) pairs.
fn encapsulate_all(
    params: &ClusterParams,
    config: &EngineConfig,
    underlay_v6: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut spec = fixture::cluster(params);
    if underlay_v6 {
        for (i, node) in spec.nodes.iter_mut().enumerate() {
            node.underlay = format!("fd00:50::{:x}", i + 1).parse().unwrap();
        }
    }
    let snapshot = Snapshot::build(&spec, 1).unwrap();
    let mut pipeline = Pipeline::new(config.clone());
    let mut out = Vec::new();
    // The largest inner frame that fits a 1500-byte underlay: 1464 over IPv4, 1444 over IPv6.
    let largest = if underlay_v6 { 1444 } else { 1464 };
    for frame_len in [60, 64, 128, 512, 1000, largest] {
        for (pod, frame) in fixture::encap_frames(params, 20, frame_len) {
            let mut buffer = vec![0u8; HEADROOM + frame.len()];
            buffer[HEADROOM..].copy_from_slice(&frame);
            let mut span = Span::new(HEADROOM, frame.len());
            let mut f = Frame::new(&mut buffer, &mut span);
            let verdict =
                pipeline.process_one(&snapshot, Ingress::Pod(EndpointId(pod as u32)), &mut f);
            assert_eq!(verdict, Verdict::Encap, "{frame_len}-byte frame from pod {pod}");
            out.push((frame.clone(), f.data().to_vec()));
        }
    }
    out
}

fn check(name: &str, config: EngineConfig, underlay_v6: bool) {
    let Some(tshark) = require_tool("tshark") else { return };
    let params = small_cluster();
    let pairs = encapsulate_all(&params, &config, underlay_v6);
    let dir = ScratchDir::new(name).expect("scratch directory");
    let pcap = dir.path().join("encap.pcap");
    write_pcap(&pcap, &pairs.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>()).unwrap();
    let decode_as = format!("udp.port=={},vxlan", config.vxlan_port);
    let lines = tshark_fields(
        &tshark,
        &pcap,
        &[&decode_as],
        &[
            "frame.protocols",
            "vxlan.vni",
            "vxlan.flags",
            "udp.dstport",
            "udp.srcport",
            "udp.checksum.status",
            "ipv6.src",
            "ipv6.dst",
            "ip.src",
            "ip.dst",
            "ip.checksum.status",
            "eth.dst",
            "eth.src",
            "_ws.malformed",
            "_ws.expert.severity",
        ],
    );
    assert_eq!(lines.len(), pairs.len(), "tshark saw every frame");
    let outer_proto = if underlay_v6 { "ipv6" } else { "ip" };
    let expected_protocols =
        format!("eth:ethertype:{outer_proto}:udp:vxlan:eth:ethertype:ip:udp:data");
    for (line, (input, _)) in lines.iter().zip(&pairs) {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f[0], expected_protocols, "{line}");
        assert_eq!(f[1], config.vni.to_string(), "VNI: {line}");
        // Wireshark shows the first 16 bits of the header: 0x0800 is the I flag alone.
        assert_eq!(f[2], "0x0800", "VXLAN flags: only I: {line}");
        // udp.dstport lists the outer then the inner datagram's port.
        let dports: Vec<&str> = f[3].split(',').collect();
        assert_eq!(dports[0], config.vxlan_port.to_string(), "{line}");
        assert_eq!(dports[1], fixture::ALLOWED_PORT.to_string(), "{line}");
        let sport: u16 = f[4].split(',').next().unwrap().parse().unwrap();
        assert!((config.source_port_min..=config.source_port_max).contains(&sport), "{line}");
        // 1 = good, 2 = unverified, 3 = not present (zero over IPv4). Never 0 (bad).
        assert!(!f[5].split(',').any(|s| s == "0"), "a UDP checksum is bad: {line}");
        if underlay_v6 || config.outer_udp_checksum_v4 {
            assert!(f[5].starts_with('1'), "outer UDP checksum must be present and verify: {line}");
        } else {
            assert!(f[5].starts_with('3'), "outer UDP checksum is zero by default: {line}");
        }
        let inner_src = IpAddr::from([input[26], input[27], input[28], input[29]]).to_string();
        let inner_dst = IpAddr::from([input[30], input[31], input[32], input[33]]).to_string();
        // Outer addresses are the IPv6 ones, or the first of the IPv4 occurrences.
        let (outer_src, outer_dst) = if underlay_v6 {
            (f[6], f[7])
        } else {
            (f[8].split(',').next().unwrap(), f[9].split(',').next().unwrap())
        };
        let local = if underlay_v6 {
            "fd00:50::1".to_owned()
        } else {
            fixture::node_underlay(0).to_string()
        };
        assert_eq!(outer_src, local, "{line}");
        assert_ne!(outer_dst, local, "{line}");
        assert!(f[8].ends_with(&inner_src), "inner source: {line}");
        assert!(f[9].ends_with(&inner_dst), "inner destination: {line}");
        assert!(f[10].split(',').all(|s| s == "1"), "IPv4 header checksums verify: {line}");
        // eth.dst: outer (next hop), inner (remote VTEP MAC); eth.src: uplink, our VTEP MAC.
        let eth_dst: Vec<&str> = f[11].split(',').collect();
        let eth_src: Vec<&str> = f[12].split(',').collect();
        assert!(eth_dst[1].starts_with("0a:10:"), "inner destination is a VTEP MAC: {line}");
        assert_eq!(eth_src[0], config.uplink_mac.to_string(), "{line}");
        assert_eq!(eth_src[1], fixture::node_vtep_mac(0).to_string(), "{line}");
        assert!(f[13].is_empty(), "tshark found a malformed packet: {line}");
        assert!(f[14].is_empty(), "tshark raised an expert warning: {line}");
    }
    eprintln!("{name}: tshark decoded {} encapsulated frames", lines.len());
}

#[test]
fn flannel_vxlan_decodes_in_tshark() {
    check("tshark-flannel", fixture::engine_config(), false);
}

#[test]
fn calico_vxlan_decodes_in_tshark() {
    let config = EngineConfig { vni: 4096, vxlan_port: 4789, ..fixture::engine_config() };
    check("tshark-calico", config, false);
}

#[test]
fn computed_ipv4_udp_checksum_verifies_in_tshark() {
    let config = EngineConfig { outer_udp_checksum_v4: true, ..fixture::engine_config() };
    check("tshark-udpcsum", config, false);
}

#[test]
fn ipv6_underlay_decodes_in_tshark() {
    check("tshark-ipv6", fixture::engine_config(), true);
}
