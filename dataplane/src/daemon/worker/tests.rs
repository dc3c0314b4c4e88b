//! The worker without root: its sockets are in-memory ([`crate::io::xsk::memory`]), the
//! attacher attaches in-memory pod interfaces, and the test plays the kernel — it delivers
//! frames onto RX rings and collects what the worker put on TX rings. Everything between is
//! the worker's own code: verdict routing, hand-overs between workers, the attach lifecycle,
//! fill budgeting, the UMEMs and their chunk accounting.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

use super::*;
use crate::daemon::attacher::{Attacher, Attachment, POD_RING, PodAttachError, PodInterfaces};
use crate::daemon::tables::Tables;
use crate::engine::EngineConfig;
use crate::io::xsk::memory::KernelEnd;
use crate::io::xsk::{BindMode, UmemConfig, UmemHandle};
use crate::table::{EndpointSpec, NodeSpec, TableSpec};
use crate::wire::MacAddr;

const NODE_A: [u8; 4] = [192, 168, 50, 1];
const NODE_B: [u8; 4] = [192, 168, 50, 2];
const VTEP_A: [u8; 6] = [0x0a, 0xaa, 0, 0, 0, 1];
const VTEP_B: [u8; 6] = [0x0a, 0xbb, 0, 0, 0, 1];
const NEXT_HOP_B: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const GATEWAY_MAC: [u8; 6] = [0xee; 6];
const REMOTE_POD: [u8; 4] = [10, 244, 2, 5];

/// An in-memory pod interface: its queues' kernel ends once attached.
#[derive(Debug)]
struct Interface {
    ifindex: u32,
    queues: u32,
    kernels: Vec<KernelEnd>,
}

type Registry = Arc<Mutex<HashMap<String, Interface>>>;

/// Pod interfaces attached in memory, from a registry the test fills.
struct MemoryPods(Registry);

impl PodInterfaces for MemoryPods {
    fn attach(&mut self, name: &str, umem: &Arc<UmemHandle>) -> Result<Attachment, PodAttachError> {
        let mut registry = self.0.lock().unwrap();
        let interface =
            registry.get_mut(name).ok_or_else(|| PodAttachError::NoInterface(name.into()))?;
        let mut sockets = Vec::new();
        interface.kernels.clear();
        for queue in 0..interface.queues {
            let rings = RingSizes::all(POD_RING);
            let (socket, kernel) = XskSocket::in_memory(umem, name, queue, rings, BindMode::Copy);
            sockets.push(socket);
            interface.kernels.push(kernel);
        }
        Ok(Attachment {
            interface: name.into(),
            ifindex: interface.ifindex,
            sockets,
            tap: None,
            hold: Box::new(()),
        })
    }

    fn ifindex(&self, interface: &str) -> Option<u32> {
        self.0.lock().unwrap().get(interface).map(|i| i.ifindex)
    }
}

/// A node: its workers over in-memory sockets, the attacher, the pods' interfaces.
struct Node {
    shared: Arc<Shared>,
    attacher: Attacher,
    interfaces: Registry,
    workers: Vec<Worker>,
    /// Per worker, the kernel end of each of its uplink queues.
    uplinks: Vec<Vec<KernelEnd>>,
    next_ifindex: u32,
}

fn pod(name: &str, last: u8) -> EndpointSpec {
    EndpointSpec {
        namespace: "default".into(),
        name: name.into(),
        labels: Default::default(),
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 244, 1, last))],
        mac: MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, last]),
        interface: format!("veth-{name}"),
        edge: Default::default(),
        ingress_policy: None,
        egress_policy: None,
    }
}

fn tables(pods: Vec<EndpointSpec>) -> TableSpec {
    let node =
        |name: &str, ip: [u8; 4], vtep: [u8; 6], next_hop: Option<[u8; 6]>, cidr: &str| NodeSpec {
            name: name.into(),
            underlay: IpAddr::from(ip),
            vtep_mac: Some(MacAddr(vtep)),
            next_hop_mac: next_hop.map(MacAddr),
            pod_cidrs: vec![cidr.parse().unwrap()],
            tunnel_ips: Vec::new(),
        };
    TableSpec {
        local_node: "a".into(),
        nodes: vec![
            node("a", NODE_A, VTEP_A, None, "10.244.1.0/24"),
            node("b", NODE_B, VTEP_B, Some(NEXT_HOP_B), "10.244.2.0/24"),
        ],
        endpoints: pods,
        policies: Vec::new(),
    }
}

impl Node {
    fn new(
        pods: Vec<EndpointSpec>,
        workers: usize,
        queues: u32,
        mode: BindMode,
        chunks: u32,
    ) -> Node {
        Node::with_mtu(pods, workers, queues, mode, chunks, 1500)
    }

    /// A node whose uplink has MTU `mtu` (its UMEMs sized for it as the daemon sizes them).
    fn with_mtu(
        pods: Vec<EndpointSpec>,
        workers: usize,
        queues: u32,
        mode: BindMode,
        chunks: u32,
        mtu: u16,
    ) -> Node {
        let engine = EngineConfig {
            uplink_mac: MacAddr(UPLINK_MAC),
            uplink_mtu: mtu,
            host_interface: false,
            ..EngineConfig::default()
        };
        let umem_config = UmemConfig::for_frames(u32::from(mtu) + 14, chunks);
        let tables = Tables::new(tables(pods), IpAddr::from(NODE_A)).unwrap();
        let (shared, wakees) = Shared::for_tests(tables, workers, queues, engine, umem_config);
        let wakers = shared.inboxes.iter().map(|i| i.waker().unwrap()).collect();
        let interfaces = Registry::default();
        let (attacher, links) = Attacher::new(Box::new(MemoryPods(interfaces.clone())), wakers);
        let mut node = Node {
            shared: shared.clone(),
            attacher,
            interfaces,
            workers: Vec::new(),
            uplinks: Vec::new(),
            next_ifindex: 10,
        };
        for (index, (wakee, link)) in wakees.into_iter().zip(links).enumerate() {
            let umem = Umem::new(umem_config).unwrap();
            let mut sockets = Vec::new();
            let mut kernels = Vec::new();
            for queue in uplink_queues(index, workers, queues) {
                let rings = RingSizes::all(UPLINK_RING);
                let (socket, kernel) =
                    XskSocket::in_memory(umem.handle(), "up0", queue, rings, mode);
                sockets.push(socket);
                kernels.push(kernel);
            }
            let parts = Parts {
                index,
                shared: shared.clone(),
                wakee,
                host_queue: None,
                tunnel_queue: None,
                attacher: link,
            };
            node.workers.push(Worker::new(parts, umem, sockets).unwrap());
            node.uplinks.push(kernels);
        }
        node
    }

    /// A pod interface appears on the node.
    fn plug(&mut self, name: &str, queues: u32) {
        self.next_ifindex += 1;
        let interface = Interface { ifindex: self.next_ifindex, queues, kernels: Vec::new() };
        self.interfaces.lock().unwrap().insert(name.into(), interface);
    }

    fn unplug(&mut self, name: &str) {
        self.interfaces.lock().unwrap().remove(name);
    }

    /// Every worker takes a turn and the attacher answers, twice: what was asked in the
    /// first round is adopted in the second.
    fn turn(&mut self) {
        for _ in 0..2 {
            for worker in &mut self.workers {
                worker.turn();
            }
            self.attacher.serve_pending();
        }
        for worker in &mut self.workers {
            worker.turn();
        }
    }

    fn interface(&self, name: &str) -> MutexGuard<'_, HashMap<String, Interface>> {
        let registry = self.interfaces.lock().unwrap();
        assert!(registry.contains_key(name), "no interface {name}");
        registry
    }

    /// What the pod's interface received (its queue 0).
    fn pod_received(&self, name: &str) -> Vec<Vec<u8>> {
        let mut registry = self.interface(name);
        registry
            .get_mut(name)
            .unwrap()
            .kernels
            .first_mut()
            .map(|k| k.transmitted())
            .unwrap_or_default()
    }

    /// The pod sends a frame (on its queue 0); false if the kernel had to drop it.
    fn pod_sends(&self, name: &str, frame: &[u8]) -> bool {
        let mut registry = self.interface(name);
        registry.get_mut(name).unwrap().kernels[0].deliver(frame)
    }

    fn free_chunks(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.umems.all().iter().map(Umem::free_chunks).sum::<usize>())
            .sum()
    }

    fn publish(&self, pods: Vec<EndpointSpec>) {
        self.shared.tables.full_sync(tables(pods)).unwrap();
    }
}

/// A UDP datagram from a pod of node A (source `last`) to `to`, as the pod's kernel sends it
/// to its gateway.
fn from_pod(last: u8, to: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([0x0a, 0x58, 0x0a, 0xf4, 0x01, last], GATEWAY_MAC)
        .ipv4([10, 244, 1, last], to, 64)
        .udp(1000, 2000)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

/// A VXLAN frame from node B carrying a datagram from a pod of B to pod `last` of node A.
fn from_node_b(last: u8, payload: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    PacketBuilder::ethernet2(VTEP_B, VTEP_A)
        .ipv4(REMOTE_POD, [10, 244, 1, last], 63)
        .udp(2000, 1000)
        .write(&mut inner, payload)
        .unwrap();
    let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    vxlan.extend(inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(NEXT_HOP_B, UPLINK_MAC)
        .ipv4(NODE_B, NODE_A, 64)
        .udp(40000, 8472)
        .write(&mut frame, &vxlan)
        .unwrap();
    frame
}

/// The UDP payload of a frame (the innermost, for VXLAN).
fn payload(frame: &[u8]) -> Vec<u8> {
    let packet = SlicedPacket::from_ethernet(frame).expect("a well-formed frame");
    match packet.transport {
        Some(TransportSlice::Udp(udp)) if udp.destination_port() == 8472 => {
            payload(&udp.payload()[8..])
        }
        Some(TransportSlice::Udp(udp)) => udp.payload().to_vec(),
        other => panic!("not UDP: {other:?}"),
    }
}

#[test]
fn frames_cross_between_the_uplink_and_pods_both_ways() {
    let mut node = Node::new(vec![pod("a1", 2)], 1, 1, BindMode::Copy, 4096);
    node.plug("veth-a1", 1);
    node.turn();
    assert!(node.pod_sends("veth-a1", &from_pod(2, REMOTE_POD, b"to b")));
    assert!(node.uplinks[0][0].deliver(&from_node_b(2, b"to a1")));
    node.turn();
    let out = node.uplinks[0][0].transmitted();
    assert_eq!(out.len(), 1);
    let outer = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = outer.net else { panic!("not IPv4") };
    assert_eq!(ip.header().destination(), NODE_B);
    assert_eq!(payload(&out[0]), b"to b");
    let delivered = node.pod_received("veth-a1");
    assert_eq!(delivered.len(), 1);
    assert_eq!(&delivered[0][..6], &[0x0a, 0x58, 0x0a, 0xf4, 0x01, 2], "to the pod's MAC");
    assert_eq!(&delivered[0][6..12], &GATEWAY_MAC, "from the gateway");
    assert_eq!(payload(&delivered[0]), b"to a1");
}

#[test]
fn a_pod_is_attached_off_the_worker_and_every_chunk_comes_back_when_it_goes() {
    let mut node = Node::new(Vec::new(), 1, 1, BindMode::Copy, 4096);
    node.turn();
    let idle = node.free_chunks();
    node.plug("veth-a1", 2);
    node.publish(vec![pod("a1", 2)]);
    // Asked for, not yet attached: the worker does not wait for the attacher.
    node.workers[0].turn();
    assert!(matches!(node.workers[0].endpoints[0], pods::Slot::Attaching { .. }));
    node.attacher.serve_pending();
    node.workers[0].turn();
    let pods::Slot::Attached { pod, .. } = &node.workers[0].endpoints[0] else {
        panic!("not attached")
    };
    assert_eq!(pod.ports.len(), 2, "a port per queue");
    // Traffic through it, then the pod goes.
    for i in 0..10 {
        assert!(node.pod_sends("veth-a1", &from_pod(2, REMOTE_POD, &[i])));
    }
    node.turn();
    assert_eq!(node.uplinks[0][0].transmitted().len(), 10);
    node.publish(Vec::new());
    node.turn();
    assert!(matches!(node.workers[0].endpoints.first(), None | Some(pods::Slot::Vacant)));
    assert_eq!(node.free_chunks(), idle, "every chunk the pod's rings held came back");
}

#[test]
fn a_missing_interface_waits_and_a_vanished_one_is_detached() {
    let mut node = Node::new(vec![pod("a1", 2)], 1, 1, BindMode::Copy, 4096);
    node.turn();
    assert!(matches!(node.workers[0].endpoints[0], pods::Slot::Waiting { .. }));
    node.plug("veth-a1", 1);
    // Retried once a second.
    std::thread::sleep(std::time::Duration::from_millis(1050));
    node.workers[0].housekeeping();
    node.turn();
    assert!(matches!(node.workers[0].endpoints[0], pods::Slot::Attached { .. }));
    let idle_after_attach = node.free_chunks();
    node.unplug("veth-a1");
    node.attacher.watch();
    node.turn();
    assert!(matches!(node.workers[0].endpoints[0], pods::Slot::Waiting { .. }));
    assert!(node.free_chunks() > idle_after_attach, "its fill ring's chunks came back");
}

/// A zero-copy uplink (here a socket that reports zero-copy) gives pods a UMEM of their own;
/// frames cross between the two both ways, pod to pod stays in the pods' one, nothing leaks.
#[test]
fn mixed_xsk_modes() {
    let mut node = Node::new(vec![pod("a1", 2), pod("a2", 3)], 1, 1, BindMode::ZeroCopy, 4096);
    assert!(node.workers[0].umems.split());
    node.plug("veth-a1", 1);
    node.plug("veth-a2", 1);
    node.turn();
    let idle = node.free_chunks();
    assert!(node.pod_sends("veth-a1", &from_pod(2, REMOTE_POD, b"out")));
    assert!(node.pod_sends("veth-a1", &from_pod(2, [10, 244, 1, 3], b"local")));
    assert!(node.uplinks[0][0].deliver(&from_node_b(3, b"in")));
    node.turn();
    let out = node.uplinks[0][0].transmitted();
    assert_eq!(out.iter().map(|f| payload(f)).collect::<Vec<_>>(), [b"out".to_vec()]);
    let delivered = node.pod_received("veth-a2");
    let mut payloads: Vec<_> = delivered.iter().map(|f| payload(f)).collect();
    payloads.sort();
    assert_eq!(payloads, [b"in".to_vec(), b"local".to_vec()]);
    node.turn();
    assert_eq!(node.free_chunks(), idle, "copies between the UMEMs leak nothing");
}

#[test]
fn frames_for_another_workers_pod_go_through_its_inbox() {
    // Two workers, two uplink queues: the pod belongs to one of them, its frames from the
    // uplink arrive at both.
    let spec = pod("a1", 2);
    let owner = assign::pod_owner(&spec.interface, 2);
    let mut node = Node::new(vec![spec], 2, 2, BindMode::Copy, 4096);
    node.plug("veth-a1", 1);
    node.turn();
    let other = 1 - owner;
    assert!(node.uplinks[other][0].deliver(&from_node_b(2, b"via the inbox")));
    assert!(node.uplinks[owner][0].deliver(&from_node_b(2, b"direct")));
    node.turn();
    let mut payloads: Vec<_> = node.pod_received("veth-a1").iter().map(|f| payload(f)).collect();
    payloads.sort();
    assert_eq!(payloads, [b"direct".to_vec(), b"via the inbox".to_vec()]);
    assert_eq!(node.workers[owner].io_counters.handoff_in, 1);
}

#[test]
fn every_uplink_queue_gets_buffers_and_the_pods_still_do() {
    for queues in [1u32, 2, 8, 64] {
        let pods: Vec<_> = (0..4).map(|i| pod(&format!("p{i}"), 10 + i)).collect();
        let mut node = Node::new(pods, 1, queues, BindMode::Copy, 16_384);
        for i in 0..4 {
            node.plug(&format!("veth-p{i}"), 1);
        }
        node.turn();
        for (q, kernel) in node.uplinks[0].iter_mut().enumerate() {
            assert!(kernel.fill_level() >= budget::FILL_MIN, "{queues} queues: queue {q}");
            assert!(kernel.deliver(&from_node_b(10, b"x")), "{queues} queues: queue {q}");
        }
        for i in 0..4 {
            let mut registry = node.interfaces.lock().unwrap();
            let level = registry.get_mut(&format!("veth-p{i}")).unwrap().kernels[0].fill_level();
            assert!(level >= budget::FILL_MIN, "{queues} queues: pod {i} has {level}");
        }
    }
}

#[test]
fn busy_pods_and_a_stalled_uplink_do_not_starve_the_others() {
    let names: Vec<String> = (0..32).map(|i| format!("p{i}")).collect();
    let pods: Vec<_> = names.iter().enumerate().map(|(i, n)| pod(n, 10 + i as u8)).collect();
    let mut node = Node::new(pods, 1, 1, BindMode::Copy, 16_384);
    for name in &names {
        node.plug(&format!("veth-{name}"), 1);
    }
    node.turn();
    // Every pod in turn sends as much as its kernel takes, towards an uplink whose kernel
    // takes nothing off its TX ring: fill levels grow, frames pile up waiting.
    for round in 0..4 {
        for (i, name) in names.iter().enumerate() {
            let frame = from_pod(10 + i as u8, REMOTE_POD, &[round; 1000]);
            while node.pod_sends(&format!("veth-{name}"), &frame) {}
            node.turn();
        }
    }
    let budget = node.workers[0].budget.clone();
    assert!(budget.pod_committed <= budget.pod_part, "{budget:?}");
    assert!(node.workers[0].ports.pending() <= budget.pending_limit);
    // Every pod can still receive: its fill ring has chunks.
    let minimum = budget.pod_minimum(32);
    for name in &names {
        let mut registry = node.interfaces.lock().unwrap();
        let level = registry.get_mut(&format!("veth-{name}")).unwrap().kernels[0].fill_level();
        assert!(level >= minimum, "{name}: fill level {level} below {minimum}");
    }
    assert!(node.free_chunks() > 0);
    // The uplink drains; a second later the pods' levels come down again.
    node.uplinks[0][0].transmitted();
    node.turn();
    node.workers[0].housekeeping();
    node.workers[0].housekeeping();
    assert!(node.workers[0].budget.pod_committed < budget.pod_committed);
}

/// A jumbo underlay (MTU 9,000): frames of up to 9,014 bytes cross as chains of 4 KiB chunks,
/// intact, both ways and pod to pod, with every chunk back at the end.
#[test]
fn jumbo_frames_cross_as_chains() {
    for workers in [1, 2] {
        let pods = vec![pod("a1", 2), pod("a2", 3)];
        let mut node = Node::with_mtu(pods, workers, workers as u32, BindMode::Copy, 4096, 9000);
        node.plug("veth-a1", 1);
        node.plug("veth-a2", 1);
        node.turn();
        let idle = node.free_chunks();
        let big: Vec<u8> = (0..8900u32).map(|i| (i * 7 % 251) as u8).collect();
        // From node B, 8,850 bytes of UDP payload: an 8,928-byte inner frame in an 8,978-byte
        // VXLAN frame (9,000 of MTU hold 8,986).
        let payload_in = &big[..8850];
        for uplink in 0..workers {
            assert!(node.uplinks[uplink][0].deliver(&from_node_b(2, payload_in)));
        }
        assert!(node.pod_sends("veth-a1", &from_pod(2, REMOTE_POD, &big[..8850])));
        assert!(node.pod_sends("veth-a1", &from_pod(2, [10, 244, 1, 3], &big[..8900])));
        node.turn();
        node.turn();
        let to_a1 = node.pod_received("veth-a1");
        assert_eq!(to_a1.len(), workers, "{workers} worker(s)");
        assert!(to_a1.iter().all(|f| payload(f) == payload_in), "intact into a1");
        let to_a2 = node.pod_received("veth-a2");
        assert_eq!(to_a2.iter().map(|f| payload(f)).collect::<Vec<_>>(), [big[..8900].to_vec()]);
        let out: Vec<_> = node.uplinks.iter_mut().flat_map(|u| u[0].transmitted()).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 14 + 20 + 8 + 8 + 14 + 20 + 8 + 8850);
        assert_eq!(payload(&out[0]), &big[..8850]);
        node.turn();
        assert_eq!(node.free_chunks(), idle, "{workers} worker(s): every chunk came back");
        let jumbo: u64 = node.workers.iter().map(|w| w.io_counters.jumbo_frames).sum();
        assert!(jumbo >= 2 + workers as u64, "through the linear buffer: {jumbo}");
    }
}
