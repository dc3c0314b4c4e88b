//! `podlane-bench`: measurements that are not criterion micro-benchmarks. Today: what the
//! tables cost in memory at cluster scale (`podlane-bench tables`). The packet-rate harness on
//! network namespaces and VMs arrives with its own issue.

use anyhow::Context;
use clap::{Parser, Subcommand};
use podlane_bench::fixture::ClusterParams;
use podlane_bench::memory;

#[derive(Parser, Debug)]
#[command(name = "podlane-bench", version, about = "podlane measurements")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Time a control-protocol full sync as the dataplane handles it: decode the frame's
    /// JSON, then build and publish the snapshot (defaults: 5,000 nodes, 100,000 endpoints).
    Sync {
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
        nodes: u32,
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=4_000_000))]
        endpoints: u32,
        /// Rules of the policy the endpoints share.
        #[arg(long, default_value_t = 100)]
        rules: u32,
        /// Timed runs (the best and the worst are reported).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
    },
    /// Build a synthetic cluster's tables and report their memory (defaults: the foundation
    /// issue's target — 5,000 nodes, 100,000 pods, 250 local, 1,000 rules per local pod).
    Tables {
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
        nodes: u32,
        /// /26 pod blocks per node (routes = nodes × blocks).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=64))]
        blocks_per_node: u32,
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=4096))]
        local_endpoints: u32,
        #[arg(long, default_value_t = 100_000)]
        cluster_endpoints: u32,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rules: u32,
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
        peers_per_rule: u32,
        /// Distinct policies among local pods (1: all share one; = local endpoints: each its own).
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=4096))]
        distinct_policies: u32,
        /// Also write the tables as a JSON tables file (for `podlane-dataplane --check`).
        #[arg(long, value_name = "FILE")]
        write_json: Option<std::path::PathBuf>,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sync { nodes, endpoints, rules, runs } => {
            let params = ClusterParams {
                nodes: nodes as usize,
                rules_per_policy: rules as usize,
                ..ClusterParams::memory_target()
            };
            let report = podlane_bench::sync::measure(&params, endpoints as usize, runs as usize)?;
            println!(
                "full sync: {nodes} nodes, {endpoints} endpoints, 1 policy of {rules} rules; frame {}",
                mib(report.frame_bytes as u64)
            );
            for (i, run) in report.runs.iter().enumerate() {
                println!(
                    "run {}: decode {:.0?}, build and publish {:.0?}, total {:.0?}",
                    i + 1,
                    run.decode,
                    run.apply,
                    run.decode + run.apply
                );
            }
        }
        Command::Tables {
            nodes,
            blocks_per_node,
            local_endpoints,
            cluster_endpoints,
            rules,
            peers_per_rule,
            distinct_policies,
            write_json,
        } => {
            let usable = blocks_per_node as usize * 62;
            anyhow::ensure!(
                local_endpoints as usize <= usable,
                "--local-endpoints {local_endpoints} does not fit in {blocks_per_node} /26 blocks \
                 ({usable} addresses): raise --blocks-per-node"
            );
            anyhow::ensure!(
                distinct_policies <= local_endpoints,
                "--distinct-policies {distinct_policies} exceeds --local-endpoints {local_endpoints}"
            );
            let params = ClusterParams {
                nodes: nodes as usize,
                blocks_per_node: blocks_per_node as usize,
                local_endpoints: local_endpoints as usize,
                cluster_endpoints: cluster_endpoints as usize,
                rules_per_policy: rules as usize,
                peers_per_rule: peers_per_rule as usize,
                distinct_policies: distinct_policies as usize,
            };
            let m = memory::measure(&params).context("building the synthetic tables")?;
            println!(
                "cluster: {nodes} nodes, {cluster_endpoints} pods ({local_endpoints} local), {} routes",
                m.routes
            );
            println!(
                "policy:  {} compiled policies, {} rules in all ({rules} per local pod, {peers_per_rule} peers per rule)",
                m.policies, m.policy_rules
            );
            println!("snapshot build time:          {:.2?}", m.build_time);
            println!("snapshot heap (structural):   {}", mib(m.snapshot_bytes as u64));
            println!("  of which compiled policies: {}", mib(m.policy_bytes as u64));
            println!(
                "  per local pod (policies):   {:.1} KiB",
                m.policy_bytes as f64 / 1024.0 / local_endpoints as f64
            );
            println!("process RSS before tables:    {}", mib(m.rss_before_spec));
            println!("process RSS with input spec:  {}", mib(m.rss_with_spec));
            println!("process RSS with snapshot:    {}", mib(m.rss_with_snapshot));
            println!("process peak RSS:             {}", mib(m.peak_rss));
            if let Some(path) = write_json {
                let spec = podlane_bench::fixture::cluster(&params);
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                serde_json::to_writer(std::io::BufWriter::new(file), &spec)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("tables written to {}", path.display());
            }
        }
    }
    Ok(())
}
