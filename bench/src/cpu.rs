//! CPU use per core from `/proc/stat`, sampled around each trial.
//!
//! The kernel reports each core's time in USER_HZ ticks (1/100 s) per state. Busy time is
//! user + nice + system + irq + softirq; softirq is where the kernel's own forwarding (and
//! the XDP programs of a veth) runs. Steal — time the hypervisor gave the vCPU's host core to
//! something else — is not busy time; it is reported on its own, since a worker whose vCPU
//! was taken away for milliseconds falls behind.

use serde::Serialize;

const TICK_NS: u64 = 10_000_000;

/// One core's counters at one moment, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CoreTicks {
    user: u64,
    nice: u64,
    system: u64,
    idle: u64,
    iowait: u64,
    irq: u64,
    softirq: u64,
    steal: u64,
}

/// Every core's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample(Vec<CoreTicks>);

/// What one core did between two samples, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CoreUse {
    pub core: usize,
    pub user_ns: u64,
    pub system_ns: u64,
    pub softirq_ns: u64,
    /// user + nice + system + irq + softirq.
    pub busy_ns: u64,
    /// busy + idle + iowait: the wall time this core accounted for.
    pub total_ns: u64,
    /// Time the hypervisor took from this vCPU (not in `total_ns`).
    pub steal_ns: u64,
}

impl CoreUse {
    /// Busy share of the interval, 0–1.
    pub fn busy_fraction(&self) -> f64 {
        if self.total_ns == 0 { 0.0 } else { self.busy_ns as f64 / self.total_ns as f64 }
    }
}

/// Reads `/proc/stat` now.
pub fn sample() -> Sample {
    parse(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
}

fn parse(text: &str) -> Sample {
    let mut cores = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let Some(index) = name.strip_prefix("cpu").filter(|i| !i.is_empty()) else { continue };
        let Ok(index) = index.parse::<usize>() else { continue };
        let v: Vec<u64> = words.map(|w| w.parse().unwrap_or(0)).collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        if cores.len() <= index {
            cores.resize(index + 1, CoreTicks::default());
        }
        cores[index] = CoreTicks {
            user: get(0),
            nice: get(1),
            system: get(2),
            idle: get(3),
            iowait: get(4),
            irq: get(5),
            softirq: get(6),
            steal: get(7),
        };
    }
    Sample(cores)
}

/// Per-core use between `before` and `after`.
pub fn between(before: &Sample, after: &Sample) -> Vec<CoreUse> {
    before
        .0
        .iter()
        .zip(&after.0)
        .enumerate()
        .map(|(core, (b, a))| {
            let d = |x: u64, y: u64| y.saturating_sub(x) * TICK_NS;
            let user = d(b.user, a.user) + d(b.nice, a.nice);
            let system = d(b.system, a.system);
            let irq = d(b.irq, a.irq);
            let softirq = d(b.softirq, a.softirq);
            let busy = user + system + irq + softirq;
            CoreUse {
                core,
                user_ns: user,
                system_ns: system,
                softirq_ns: softirq,
                busy_ns: busy,
                total_ns: busy + d(b.idle, a.idle) + d(b.iowait, a.iowait),
                steal_ns: d(b.steal, a.steal),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_core_deltas() {
        let before = parse(
            "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 0 5 50 0 0 0 0 0 0\ncpu1 5 0 5 50 0 0 0 0 0 0\nintr 1\n",
        );
        let after = parse(
            "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 15 0 5 60 0 0 20 0 0 0\ncpu1 5 0 45 110 0 0 0 3 0 0\n",
        );
        let use_ = between(&before, &after);
        assert_eq!(use_.len(), 2);
        assert_eq!(use_[0].user_ns, 100_000_000);
        assert_eq!(use_[0].softirq_ns, 200_000_000);
        assert_eq!(use_[0].busy_ns, 300_000_000);
        assert_eq!(use_[0].total_ns, 400_000_000);
        assert!((use_[0].busy_fraction() - 0.75).abs() < 1e-9);
        assert_eq!(use_[1].system_ns, 400_000_000);
        assert_eq!(use_[1].total_ns, 1_000_000_000);
        assert_eq!(use_[1].steal_ns, 30_000_000);
    }
}
