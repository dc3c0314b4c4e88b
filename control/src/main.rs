//! `podlane`: the control process (agent) and operator CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use control::client::{Client, DEFAULT_SOCKET};
use control::cluster::Cluster;
use control::kubernetes::Connection;
use control::{agent, show};
use podlane_core::api::{Query, Request, Response};
use podlane_core::table::TableSpec;

#[derive(Parser, Debug)]
#[command(name = "podlane", version, about = "podlane control process and operator CLI")]
struct Cli {
    /// The dataplane's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum What {
    Nodes,
    Endpoints,
    Routes,
    Policy,
    Counters,
    Conntrack,
    Config,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a tables file as the dataplane would, and print what it holds.
    Check {
        /// Tables in the dataplane's JSON encoding (docs/tables.md).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Keep a node's dataplane in step with the cluster — the Kubernetes API (--in-cluster,
    /// --kubeconfig) or a cluster file (--cluster, docs/cluster.md): full sync, then only what
    /// changes; re-sync when the dataplane restarts.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["cluster", "kubeconfig", "in_cluster"])))]
    Agent {
        /// The cluster description (YAML).
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Watch the Kubernetes API with this kubeconfig (its current context).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Watch the Kubernetes API as the pod's service account (in a DaemonSet).
        #[arg(long)]
        in_cluster: bool,
        /// This node's name (in the cluster file; its Node object's name).
        #[arg(long, value_name = "NAME")]
        node: String,
        /// podlane-cni's state directory: the pods it wired on this node are kept in the
        /// tables (its `stateDir`).
        #[arg(long, value_name = "DIR", default_value = "/run/podlane/cni")]
        cni_state_dir: PathBuf,
        /// With the Kubernetes API: write the CNI network configuration for this node (its
        /// pod CIDRs, the dataplane's pod MTU) to this file, e.g.
        /// /etc/cni/net.d/00-podlane.conflist. The runtime starts pods once it exists.
        #[arg(long, value_name = "FILE", conflicts_with = "cluster")]
        write_cni_config: Option<PathBuf>,
    },
    /// Show what the dataplane holds.
    Show {
        what: What,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// With conntrack: only this pod's flows (`namespace/name`).
        #[arg(long, value_name = "NAMESPACE/NAME")]
        pod: Option<String>,
    },
    /// Build a two-node cluster in network namespaces on this machine (node A on podlane,
    /// node B on the kernel's vxlan device as Flannel sets it up), run ping and TCP between
    /// pods, print the dataplane's tables and counters, and remove everything. Needs root.
    Demo {
        /// The podlane-dataplane binary (default: next to this one).
        #[arg(long, value_name = "PATH")]
        dataplane: Option<PathBuf>,
    },
    /// Push tables once: a tables file (JSON), or a cluster file (YAML) with --node.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// With a cluster file: the node whose tables to push.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = matches!(cli.command, Command::Agent { .. });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_max_level(if verbose { tracing::Level::INFO } else { tracing::Level::WARN })
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podlane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { file } => {
            let summary = control::check_tables(&file)?;
            println!("{}: tables valid\n{summary}", file.display());
            Ok(())
        }
        Command::Agent {
            cluster,
            kubeconfig,
            in_cluster,
            node,
            cni_state_dir,
            write_cni_config,
        } => {
            let stop = control::signals::stop_on_signals()?;
            let source = match (cluster, kubeconfig, in_cluster) {
                (Some(file), _, _) => agent::ClusterSource::File(file),
                (None, Some(path), _) => agent::ClusterSource::Kubernetes {
                    connection: Connection::Kubeconfig(path),
                    conflist: write_cni_config,
                },
                (None, None, _) => agent::ClusterSource::Kubernetes {
                    connection: Connection::InCluster,
                    conflist: write_cni_config,
                },
            };
            let config =
                agent::AgentConfig { source, node, socket: cli.socket, cni_state: cni_state_dir };
            agent::run(&config, || stop.requested())
        }
        Command::Demo { dataplane } => {
            let exe = std::env::current_exe()?;
            let dataplane = dataplane.unwrap_or_else(|| exe.with_file_name("podlane-dataplane"));
            let stop = control::signals::stop_on_signals()?;
            control::demo::run(&exe, &dataplane, &stop)
        }
        Command::Show { what, output, pod } => {
            if pod.is_some() && !matches!(what, What::Conntrack) {
                anyhow::bail!("--pod goes with `podlane show conntrack` only");
            }
            if let Some(pod) = &pod
                && !pod.contains('/')
            {
                anyhow::bail!("--pod {pod:?}: give it as namespace/name, e.g. default/{pod}");
            }
            let mut client = Client::connect(&cli.socket, "podlane-show")?;
            let query = match what {
                What::Counters => Query::Counters,
                What::Conntrack => Query::Conntrack { pod },
                What::Config => Query::Config,
                _ => Query::Tables,
            };
            let response = client.request(&Request::Query { what: query })?;
            if let Output::Json = output {
                println!("{}", serde_json::to_string_pretty(&response)?);
                return Ok(());
            }
            let text = match (what, response) {
                (What::Nodes, Response::Tables { tables, rejected, .. }) => {
                    show::nodes(&tables) + &show::rejected(&rejected)
                }
                (What::Endpoints, Response::Tables { tables, rejected, .. }) => {
                    show::endpoints(&tables) + &show::rejected(&rejected)
                }
                (What::Routes, Response::Tables { tables, .. }) => show::routes(&tables),
                (What::Policy, Response::Tables { tables, rejected, .. }) => {
                    show::policy(&tables) + &show::rejected(&rejected)
                }
                (What::Counters, Response::Counters { workers }) => show::counters(&workers),
                (What::Conntrack, Response::Conntrack { flows }) => show::conntrack(&flows),
                (What::Config, Response::Config { config }) => show::config(&config),
                (_, Response::Error(e)) => anyhow::bail!("the dataplane answered: {e}"),
                (_, other) => anyhow::bail!("unexpected reply {other:?}"),
            };
            print!("{text}");
            Ok(())
        }
        Command::Apply { file, node } => {
            let tables = match node {
                Some(node) => Cluster::from_file(&file)?
                    .tables_for(&node, &[])
                    .map_err(|e| anyhow::anyhow!("cluster file {}: {e}", file.display()))?,
                None => TableSpec::from_json_file(&file)?,
            };
            let mut client = Client::connect(&cli.socket, "podlane-apply")?;
            match client.request(&Request::FullSync { tables })? {
                Response::Ack { generation, rejected } if rejected.is_empty() => {
                    println!("applied: generation {generation}");
                    Ok(())
                }
                Response::Ack { generation, rejected } => {
                    println!("applied: generation {generation}, without:");
                    for r in &rejected {
                        println!("  {r}");
                    }
                    anyhow::bail!("{} entries of {} were rejected", rejected.len(), file.display())
                }
                Response::Error(e) => {
                    anyhow::bail!("the dataplane rejected {}: {e}", file.display())
                }
                other => anyhow::bail!("unexpected reply {other:?}"),
            }
        }
    }
}
