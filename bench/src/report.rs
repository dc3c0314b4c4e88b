//! The results of `podlane-bench pps` three ways: a table for people, JSON for programs
//! (keys documented in docs/bench.md) and an SVG chart of packet rate and p99 latency per
//! dataplane and direction.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::pps::{Config, Row};
use crate::topology::Dataplane;

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            memory_gib: (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        }
    }
}

/// The JSON document.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub schema: u32,
    pub command: String,
    pub machine: Machine,
    pub config: &'a Config,
    pub rows: &'a [Row],
}

/// A JSON document read back (`podlane-bench report`): what the table and chart need.
#[derive(Debug, Deserialize)]
pub struct Saved {
    pub schema: u32,
    pub command: String,
    pub machine: Machine,
    pub rows: Vec<Row>,
}

impl Saved {
    pub fn read(path: &std::path::Path) -> anyhow::Result<Saved> {
        use anyhow::Context as _;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let saved: Saved = serde_json::from_str(&text).with_context(|| {
            format!("{} is not the JSON that podlane-bench pps writes", path.display())
        })?;
        anyhow::ensure!(
            saved.schema == 1,
            "{}: schema {} is not the one this podlane-bench reads (1)",
            path.display(),
            saved.schema
        );
        Ok(saved)
    }
}

fn mpps(pps: f64) -> String {
    format!("{:.3}", pps / 1e6)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

/// The table: one line per row, grouped by cell.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let header = [
        "direction",
        "frame in/out",
        "flows",
        "dataplane",
        "max Mpps",
        "Gbps in/out",
        "0-loss Mpps",
        "x kernel max/0-loss",
        "CPU ns/pkt",
        "Mpps/core",
        "p50/p99 us @50%",
    ];
    let mut lines = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for r in rows {
        let mid = r.latency.iter().find(|l| (l.fraction - 0.5).abs() < 1e-9).or(r.latency.first());
        lines.push(vec![
            format!("{:?}", r.direction).to_lowercase(),
            format!("{}/{}", r.frame_size, r.outer_frame_size),
            r.flows.to_string(),
            r.dataplane.label().to_owned(),
            mpps(r.max_pps),
            format!("{:.2}/{:.2}", r.gbps_inner, r.gbps_outer),
            mpps(r.zero_loss_pps),
            format!(
                "{}/{}",
                opt(r.max_vs_kernel, |v| format!("{v:.2}")),
                opt(r.zero_loss_vs_kernel, |v| format!("{v:.2}"))
            ),
            opt(r.cpu_ns_per_packet, |v| format!("{v:.0}")),
            opt(r.pps_per_busy_core, |v| format!("{:.3}", v / 1e6)),
            match (mid, r.latency_valid) {
                (Some(l), true) => format!(
                    "{:.1}/{:.1}",
                    l.summary.p50_ns as f64 / 1e3,
                    l.summary.p99_ns as f64 / 1e3
                ),
                _ => "-".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
        .collect();
    for (n, line) in lines.iter().enumerate() {
        let cells: Vec<String> =
            line.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        if n == 0 {
            let _ = writeln!(
                out,
                "{}",
                widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ")
            );
        }
    }
    out
}

fn colour(d: Dataplane) -> &'static str {
    match d {
        Dataplane::Kernel => "#7f7f7f",
        Dataplane::Podlane => "#1f77b4",
        Dataplane::BareAfXdp => "#ff7f0e",
    }
}

/// A grouped bar chart: one group per cell, one bar per dataplane.
fn panel(
    svg: &mut String,
    top: f64,
    title: &str,
    unit: &str,
    rows: &[Row],
    value: &dyn Fn(&Row) -> Option<f64>,
) {
    let (left, width, height) = (70.0, 860.0, 220.0);
    let mut cells: Vec<(String, Vec<&Row>)> = Vec::new();
    for r in rows {
        let key = format!("{:?} {}B {}f", r.direction, r.frame_size, r.flows).to_lowercase();
        match cells.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => cells.push((key, vec![r])),
        }
    }
    let max = rows.iter().filter_map(value).fold(0.0f64, f64::max).max(1e-9);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="{}" font-size="14" font-weight="bold">{title}</text>"#,
        top + 14.0
    );
    let base = top + 30.0 + height;
    let _ = writeln!(
        svg,
        r#"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="black"/>"#,
        left + width
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = base - height * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{v:.2} {unit}</text>"##,
            left + width,
            left - 4.0,
            y + 3.0
        );
    }
    let group = width / cells.len().max(1) as f64;
    for (g, (_, members)) in cells.iter().enumerate() {
        let bar = (group * 0.8) / members.len().max(1) as f64;
        for (b, r) in members.iter().enumerate() {
            let x = left + g as f64 * group + group * 0.1 + b as f64 * bar;
            match value(r) {
                Some(v) => {
                    let h = height * v / max;
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {v:.3} {unit}</title></rect>"#,
                        base - h,
                        bar * 0.9,
                        colour(r.dataplane),
                        r.dataplane.label()
                    );
                }
                None => {
                    let _ = writeln!(
                        svg,
                        r#"<text x="{x:.1}" y="{:.1}" font-size="9">n/a</text>"#,
                        base - 2.0
                    );
                }
            }
        }
        // Three short lines: one line per cell overlapped its neighbours with 12 cells.
        let first = members[0];
        let flows = match first.flows {
            1 => "1 flow".to_owned(),
            n if n % 1024 == 0 => format!("{}k flows", n / 1024),
            n => format!("{n} flows"),
        };
        let direction = format!("{:?}", first.direction).to_lowercase();
        let x = left + g as f64 * group + group / 2.0;
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle"><tspan x="{x:.1}">{direction}</tspan><tspan x="{x:.1}" dy="12">{} B</tspan><tspan x="{x:.1}" dy="12">{flows}</tspan></text>"#,
            base + 14.0,
            first.frame_size
        );
    }
}

/// The SVG chart: delivered Mpps (maximum and zero-loss) and p99 latency at 50 % of the
/// zero-loss rate, per dataplane and cell.
pub fn svg(rows: &[Row], machine: &Machine) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="960" height="960" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="20" y="24" font-size="16">podlane-bench pps — {} CPUs, {}, Linux {}</text>"#,
        machine.cpus,
        xml_escape(&machine.cpu_model),
        xml_escape(&machine.kernel)
    );
    let mut y = 40.0;
    for (title, unit, value) in [
        (
            "Maximum delivered rate",
            "Mpps",
            &(|r: &Row| Some(r.max_pps / 1e6)) as &dyn Fn(&Row) -> Option<f64>,
        ),
        ("Zero-loss rate (RFC 2544)", "Mpps", &|r: &Row| Some(r.zero_loss_pps / 1e6)),
        ("p99 one-way latency at 50 % of the zero-loss rate", "us", &|r: &Row| {
            r.latency_valid
                .then(|| {
                    r.latency
                        .iter()
                        .find(|l| (l.fraction - 0.5).abs() < 1e-9)
                        .map(|l| l.summary.p99_ns as f64 / 1e3)
                })
                .flatten()
        }),
    ] {
        panel(&mut svg, y, title, unit, rows, value);
        y += 295.0;
    }
    let mut x = 20.0;
    for d in [Dataplane::Kernel, Dataplane::Podlane, Dataplane::BareAfXdp] {
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            y,
            colour(d),
            x + 16.0,
            y + 11.0,
            d.label()
        );
        x += 160.0;
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
