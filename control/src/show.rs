//! `podlane show`: the dataplane's tables, counters and configuration as aligned text
//! columns (in the style of `cilium-dbg bpf ... list`), or as JSON with `-o json`.

use std::fmt::Write as _;

use podlane_core::api::{ConntrackFlow, DaemonInfo, RejectedEntry, WorkerCounters};
use podlane_core::table::TableSpec;

/// Aligns rows into columns, the first row being the header.
pub fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> =
            row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

pub fn nodes(tables: &TableSpec) -> String {
    let mut rows = vec![
        vec!["NODE", "UNDERLAY", "VTEP MAC", "NEXT HOP MAC", "POD CIDRS"]
            .into_iter()
            .map(String::from)
            .collect(),
    ];
    for n in &tables.nodes {
        let local = if n.name == tables.local_node { " (this node)" } else { "" };
        rows.push(vec![
            format!("{}{local}", n.name),
            n.underlay.to_string(),
            or_dash(n.vtep_mac.map(|m| m.to_string())),
            or_dash(n.next_hop_mac.map(|m| m.to_string())),
            n.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        ]);
    }
    columns(&rows)
}

pub fn endpoints(tables: &TableSpec) -> String {
    let mut rows = vec![
        vec!["ENDPOINT", "IPS", "MAC", "INTERFACE", "INGRESS POLICY", "EGRESS POLICY"]
            .into_iter()
            .map(String::from)
            .collect(),
    ];
    for e in &tables.endpoints {
        rows.push(vec![
            e.key(),
            e.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            e.mac.to_string(),
            e.interface.clone(),
            or_dash(e.ingress_policy.clone()),
            or_dash(e.egress_policy.clone()),
        ]);
    }
    columns(&rows)
}

/// The route table as the dataplane builds it: local pods as host routes, node pod CIDRs.
pub fn routes(tables: &TableSpec) -> String {
    let mut rows = vec![vec!["PREFIX", "TARGET", "VIA"].into_iter().map(String::from).collect()];
    for e in &tables.endpoints {
        for ip in &e.ips {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            rows.push(vec![format!("{ip}/{len}"), format!("pod {}", e.key()), e.interface.clone()]);
        }
    }
    for n in &tables.nodes {
        for c in &n.pod_cidrs {
            let (target, via) = if n.name == tables.local_node {
                (format!("node {} (this node)", n.name), "host".to_owned())
            } else {
                (format!("node {}", n.name), format!("vxlan to {}", n.underlay))
            };
            rows.push(vec![c.to_string(), target, via]);
        }
    }
    columns(&rows)
}

pub fn policy(tables: &TableSpec) -> String {
    let mut out = String::new();
    if tables.policies.is_empty() {
        out.push_str("no policies: every endpoint allows all traffic\n");
    }
    for p in &tables.policies {
        let _ = writeln!(out, "{} ({} rules)", p.name, p.rules.len());
        for (i, r) in p.rules.iter().enumerate() {
            let peers = if r.peers.is_empty() {
                "any peer".to_owned()
            } else {
                r.peers
                    .iter()
                    .map(|peer| {
                        let except: Vec<String> =
                            peer.except.iter().map(ToString::to_string).collect();
                        if except.is_empty() {
                            peer.cidr.to_string()
                        } else {
                            format!("{} except {}", peer.cidr, except.join(","))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let ports = if r.ports.is_empty() {
                "any port".to_owned()
            } else {
                r.ports
                    .iter()
                    .map(|p| match (p.port, p.end_port) {
                        (None, _) => format!("{:?}", p.protocol).to_uppercase(),
                        (Some(a), None) => {
                            format!("{}/{a}", format!("{:?}", p.protocol).to_uppercase())
                        }
                        (Some(a), Some(b)) => {
                            format!("{}/{a}-{b}", format!("{:?}", p.protocol).to_uppercase())
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(out, "  rule {i}: {peers} → {ports}");
        }
    }
    out
}

/// The entries the dataplane left out of what was pushed (nothing when there are none).
pub fn rejected(entries: &[RejectedEntry]) -> String {
    let mut out = String::new();
    if !entries.is_empty() {
        let _ = writeln!(out, "\nrejected, not in force ({}):", entries.len());
        for entry in entries {
            let _ = writeln!(out, "  {entry}");
        }
    }
    out
}

pub fn counters(workers: &[WorkerCounters]) -> String {
    let mut out = String::new();
    for w in workers {
        let _ = writeln!(
            out,
            "worker {}: rx {} frames / {} bytes; encap {}, decap {}, local {}, reply {}, host {}; \
             no socket {}; handoff in {}, dropped {}, joined {}; free chunks {} in {} UMEM(s), none free {} \
             times; longest round {} µs; real-time pauses {}",
            w.worker,
            w.rx_frames,
            w.rx_bytes,
            w.encap,
            w.decap,
            w.local,
            w.reply,
            w.host,
            w.no_socket,
            w.handoff_in,
            w.handoff_dropped,
            w.handoff_joined,
            w.free_chunks,
            w.umems,
            w.chunk_exhausted,
            w.longest_round_us,
            w.realtime_pauses
        );
        if !w.drops.is_empty() {
            let drops: Vec<String> = w.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "  drops: {}", drops.join(", "));
        }
        let _ = writeln!(
            out,
            "  icmp errors sent {}; flows through the kernel {} (refused {}), replies returned \
             through it {}; jumbo frames {} (too long {})",
            w.icmp_errors,
            w.host_flows,
            w.host_flows_refused,
            w.returned_via_host,
            w.jumbo_frames,
            w.jumbo_too_long
        );
        let (ct, events) = (&w.conntrack, &w.conntrack.events);
        let _ = writeln!(
            out,
            "  conntrack: {} flows of {}; created {}, expired {}, evicted {}, cut by policy {}, \
             refused (full) {}, related ICMP errors {}",
            ct.flows,
            ct.capacity,
            events.created,
            events.expired,
            events.evicted,
            events.cut,
            events.full,
            events.related
        );
        if let Some(h) = &w.host_interface {
            let _ = writeln!(
                out,
                "  host interface {} q{}: rx {} pkts / {} bytes ({} super-packets, too long {}, \
                 bad header {}), tx {} pkts / {} bytes ({} super-packets), tx dropped {}",
                h.interface,
                h.queue,
                h.rx_packets,
                h.rx_bytes,
                h.rx_super_packets,
                h.rx_too_long,
                h.rx_bad_header,
                h.tx_packets,
                h.tx_bytes,
                h.tx_super_packets,
                h.tx_dropped
            );
        }
        let mut rows = vec![
            [
                "SOCKET",
                "MODE",
                "RX PKTS",
                "RX BYTES",
                "TX PKTS",
                "TX BYTES",
                "TX DROP",
                "FILL",
                "RX RING FULL",
                "FILL EMPTY",
                "KERNEL DROP",
                "INVALID RX/TX",
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
        ];
        for s in &w.sockets {
            rows.push(vec![
                format!("{} q{}", s.interface, s.queue),
                s.mode.clone(),
                s.rx_packets.to_string(),
                s.rx_bytes.to_string(),
                s.tx_packets.to_string(),
                s.tx_bytes.to_string(),
                s.tx_dropped.to_string(),
                s.fill_level.to_string(),
                s.rx_ring_full.to_string(),
                s.rx_fill_ring_empty.to_string(),
                s.rx_dropped.to_string(),
                format!("{}/{}", s.rx_invalid_descs, s.tx_invalid_descs),
            ]);
        }
        for line in columns(&rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

pub fn config(info: &DaemonInfo) -> String {
    let value = serde_json::to_value(info).unwrap_or_default();
    let mut rows = Vec::new();
    if let Some(map) = value.as_object() {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            rows.push(vec![k.clone(), text]);
        }
    }
    columns(&rows)
}

/// `podlane show conntrack`: one line per tracked flow, from its pod's side.
pub fn conntrack(flows: &[ConntrackFlow]) -> String {
    let mut rows = vec![
        ["WORKER", "POD", "PROTO", "LOCAL", "REMOTE", "OPENED BY", "STATE", "IDLE", "EXPIRES IN"]
            .map(str::to_owned)
            .to_vec(),
    ];
    let seconds = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
    for f in flows {
        rows.push(vec![
            f.worker.to_string(),
            f.pod.clone(),
            f.protocol.clone(),
            f.local.clone(),
            f.remote.clone(),
            f.opened_by.clone(),
            f.state.clone(),
            seconds(f.idle_ms),
            seconds(f.expires_in_ms),
        ]);
    }
    let mut out = columns(&rows);
    out.push_str(&format!("{} flow(s)\n", flows.len()));
    out
}
