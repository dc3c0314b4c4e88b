//! The Linux vxlan device as the oracle, with no AF_XDP involved yet: a network namespace plays
//! a remote node whose overlay is the kernel's vxlan device, configured exactly as Flannel's
//! vxlan backend does it (VNI 1, port 8472, `flannel.1`, nolearning, static neighbour, FDB and
//! onlink route) or as Calico does it (VNI 4096, port 4789, `vxlan.calico`). Its underlay is a
//! TAP device whose other end is this test.
//!
//! The pipeline encapsulates an ICMP echo request from a local pod to the kernel node's overlay
//! address and the test writes it into the TAP. The kernel must accept and decapsulate it, and
//! its echo reply comes back out of the TAP encapsulated by the kernel; the pipeline must
//! accept that and deliver it to the pod. A frame the kernel must refuse (wrong VNI) gets no
//! reply, which shows the oracle discriminates.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use podlane_core::engine::{EngineConfig, Frame, Ingress, Pipeline, Span, Verdict};
use podlane_core::table::{Cidr, EndpointSpec, NodeSpec, Snapshot, TableSpec};
use podlane_core::wire::MacAddr;
use podlane_tests::require_root;
use testbed::kernel::{self, KernelProfile, RemoteNode};
use testbed::{Netns, link};
use tun_tap::{Iface, Mode};

const UPLINK_A: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 0x01]);
const UPLINK_B: MacAddr = MacAddr([0x02, 0xbb, 0, 0, 0, 0x01]);
const VTEP_A: MacAddr = MacAddr([0x0a, 0xaa, 0, 0, 0, 0x01]);
const VTEP_B: MacAddr = MacAddr([0x0a, 0xbb, 0, 0, 0, 0x01]);
const POD_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
const NODE_A: &str = "192.168.50.1";
const NODE_B: &str = "192.168.50.2";
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const HEADROOM: usize = 256;

/// How a CNI programs the kernel node, and what podlane must match.
struct Profile {
    name: &'static str,
    device: &'static str,
    vni: u32,
    port: u16,
    /// Pod CIDR (Flannel) or IPAM block (Calico) of node A (podlane) and node B (kernel).
    cidr_a: &'static str,
    cidr_b: &'static str,
    /// The kernel node's own address on its vxlan device (Flannel: the .0 of its subnet;
    /// Calico: its tunnel address), the echo's destination.
    overlay_b: Ipv4Addr,
    /// The next hop through which node B routes to node A's pods (Flannel: A's subnet
    /// address; Calico: A's tunnel address), bound to A's VTEP MAC by a permanent neighbour.
    gateway_a: &'static str,
}

const FLANNEL: Profile = Profile {
    name: "flannel",
    device: "flannel.1",
    vni: 1,
    port: 8472,
    cidr_a: "10.244.1.0/24",
    cidr_b: "10.244.2.0/24",
    overlay_b: Ipv4Addr::new(10, 244, 2, 0),
    gateway_a: "10.244.1.0",
};

const CALICO: Profile = Profile {
    name: "calico",
    device: "vxlan.calico",
    vni: 4096,
    port: 4789,
    cidr_a: "10.244.1.0/26",
    cidr_b: "10.244.2.0/26",
    overlay_b: Ipv4Addr::new(10, 244, 2, 1),
    gateway_a: "10.244.1.1",
};

/// Node B: a namespace with a TAP underlay (our end is the returned `Iface`) and a kernel
/// vxlan device programmed the way the profile's CNI does.
fn kernel_node(profile: &Profile) -> anyhow::Result<(Netns, Iface)> {
    let ns = Netns::create(&format!("k{}", &profile.name[..3]))?;
    ns.disable_ipv6()?;
    // The TAP is created here and moved at once into the namespace; its file descriptor
    // stays ours.
    let tap = Iface::without_packet_info("pltap%d", Mode::Tap)?;
    tap.set_non_blocking()?;
    let dev = tap.name().to_owned();
    link::move_into(&dev, &ns)?;
    ns.ip(&["link", "set", &dev, "address", &UPLINK_B.to_string()])?;
    ns.ip(&["addr", "add", &format!("{NODE_B}/24"), "dev", &dev])?;
    ns.pin_neighbour(NODE_A, &UPLINK_A.to_string(), &dev)?;

    let kernel = KernelProfile {
        name: profile.name,
        device: profile.device,
        vni: profile.vni,
        port: profile.port,
    };
    let remote = RemoteNode {
        underlay: NODE_A,
        vtep_mac: &VTEP_A.to_string(),
        pod_cidr: profile.cidr_a,
        gateway: profile.gateway_a,
    };
    kernel::vxlan_node(
        &ns,
        kernel,
        &dev,
        NODE_B,
        &VTEP_B.to_string(),
        &profile.overlay_b.to_string(),
        &remote,
    )?;
    Ok((ns, tap))
}

/// Node A's tables: podlane's view of the same two-node cluster.
fn tables(profile: &Profile) -> Snapshot {
    let spec = TableSpec {
        local_node: "node-a".into(),
        nodes: vec![
            NodeSpec {
                name: "node-a".into(),
                underlay: NODE_A.parse().unwrap(),
                vtep_mac: Some(VTEP_A),
                next_hop_mac: None,
                pod_cidrs: vec![profile.cidr_a.parse::<Cidr>().unwrap()],
                tunnel_ips: Vec::new(),
            },
            NodeSpec {
                name: "node-b".into(),
                underlay: NODE_B.parse().unwrap(),
                vtep_mac: Some(VTEP_B),
                next_hop_mac: Some(UPLINK_B),
                pod_cidrs: vec![profile.cidr_b.parse::<Cidr>().unwrap()],
                tunnel_ips: Vec::new(),
            },
        ],
        endpoints: vec![EndpointSpec {
            namespace: "default".into(),
            name: "a1".into(),
            labels: Default::default(),
            ips: vec![POD_IP.into()],
            mac: POD_MAC,
            interface: "veth-a1".into(),
            edge: Default::default(),
            ingress_policy: None,
            egress_policy: None,
        }],
        policies: vec![],
    };
    Snapshot::build(&spec, 1).unwrap()
}

fn echo_request(config: &EngineConfig, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC.0, config.gateway_mac.0)
        .ipv4(POD_IP.octets(), dst.octets(), 64)
        .icmpv4_echo_request(id, seq);
    let mut out = Vec::new();
    b.write(&mut out, b"podlane kernel interop").unwrap();
    out
}

fn process(
    pipeline: &mut Pipeline,
    snapshot: &Snapshot,
    ingress: Ingress,
    frame: &[u8],
) -> (Verdict, Vec<u8>) {
    let mut buffer = vec![0u8; HEADROOM + frame.len()];
    buffer[HEADROOM..].copy_from_slice(frame);
    let mut span = Span::new(HEADROOM, frame.len());
    let mut f = Frame::new(&mut buffer, &mut span);
    let verdict = pipeline.process_one(snapshot, ingress, &mut f);
    (verdict, f.data().to_vec())
}

/// The next VXLAN frame (UDP to `port`) the kernel sends out of the TAP within `wait`.
fn next_vxlan(tap: &Iface, port: u16, wait: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        match tap.recv(&mut buf) {
            Ok(n) => {
                let frame = &buf[..n];
                if let Ok(p) = SlicedPacket::from_ethernet(frame) {
                    if let Some(TransportSlice::Udp(udp)) = p.transport {
                        if udp.destination_port() == port {
                            return Some(frame.to_vec());
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("reading the TAP: {e}"),
        }
    }
    None
}

fn interop(profile: Profile) -> anyhow::Result<()> {
    if !require_root(&format!("kernel_vxlan ({})", profile.name)) {
        return Ok(());
    }
    let (_ns, tap) = kernel_node(&profile)?;
    let snapshot = tables(&profile);
    let config = EngineConfig {
        vni: profile.vni,
        vxlan_port: profile.port,
        uplink_mac: UPLINK_A,
        ..EngineConfig::default()
    };
    let mut pipeline = Pipeline::new(config.clone());
    let pod = Ingress::Pod(snapshot.endpoint_by_interface("veth-a1").unwrap());

    // A frame with a VNI the kernel's device does not have: it must be dropped, no reply.
    let mut wrong = Pipeline::new(EngineConfig { vni: profile.vni + 1, ..config.clone() });
    let (verdict, frame) =
        process(&mut wrong, &snapshot, pod, &echo_request(&config, profile.overlay_b, 7, 0));
    assert_eq!(verdict, Verdict::Encap);
    tap.send(&frame).expect("write to TAP");
    assert!(
        next_vxlan(&tap, profile.port, Duration::from_millis(500)).is_none(),
        "{}: the kernel answered a frame with the wrong VNI",
        profile.name
    );

    for seq in 1..=3u16 {
        let request = echo_request(&config, profile.overlay_b, 0x5151, seq);
        let (verdict, wire) = process(&mut pipeline, &snapshot, pod, &request);
        assert_eq!(verdict, Verdict::Encap);
        tap.send(&wire).expect("write to TAP");

        let reply = next_vxlan(&tap, profile.port, Duration::from_secs(5)).unwrap_or_else(|| {
            panic!("{}: the kernel's vxlan device did not answer echo {seq}: it refused our encapsulation", profile.name)
        });
        // The kernel's own encapsulation, as it put it on the wire.
        let outer = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &outer.link else { panic!() };
        assert_eq!((eth.destination(), eth.source()), (UPLINK_A.0, UPLINK_B.0));
        let Some(NetSlice::Ipv4(ip)) = &outer.net else { panic!("outer IPv4") };
        assert_eq!(ip.header().source(), NODE_B.parse::<Ipv4Addr>().unwrap().octets());
        assert_eq!(ip.header().destination(), NODE_A.parse::<Ipv4Addr>().unwrap().octets());

        // ... accepted and delivered by podlane.
        let (verdict, delivered) = process(&mut pipeline, &snapshot, Ingress::Uplink, &reply);
        assert!(
            matches!(verdict, Verdict::Decap(_)),
            "{}: kernel's VXLAN refused: {verdict:?}",
            profile.name
        );
        let inner = SlicedPacket::from_ethernet(&delivered).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(ieth)) = &inner.link else { panic!() };
        assert_eq!(ieth.destination(), POD_MAC.0);
        let Some(NetSlice::Ipv4(iip)) = &inner.net else { panic!() };
        assert_eq!(iip.header().source(), profile.overlay_b.octets());
        assert_eq!(iip.header().destination(), POD_IP.octets());
        let Some(TransportSlice::Icmpv4(icmp)) = &inner.transport else { panic!("ICMP") };
        assert_eq!(icmp.type_u8(), 0, "echo reply");
        assert_eq!(icmp.payload(), b"podlane kernel interop");
        assert_eq!(
            &icmp.header().to_bytes()[4..8],
            &[0x51, 0x51, 0, seq as u8][..],
            "id and sequence"
        );
    }
    eprintln!("{}: the kernel's vxlan device and podlane exchanged 3 echoes", profile.name);
    Ok(())
}

#[test]
fn kernel_vxlan_flannel() -> anyhow::Result<()> {
    interop(FLANNEL)
}

#[test]
fn kernel_vxlan_calico() -> anyhow::Result<()> {
    interop(CALICO)
}
