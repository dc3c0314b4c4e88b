//! `podlane-dataplane`, the forwarding daemon. This build validates tables (`--check`); the
//! AF_XDP engine that forwards frames is the next piece of work, and until it exists the
//! daemon says so instead of pretending to run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dataplane::table::{Snapshot, TableSpec};

#[derive(Parser, Debug)]
#[command(name = "podlane-dataplane", version, about = "podlane's userspace VXLAN dataplane")]
struct Cli {
    /// Tables to load: JSON with local_node, nodes, endpoints and policies (docs/tables.md).
    #[arg(long, value_name = "FILE")]
    tables: PathBuf,
    /// Validate the tables, print what they hold, and exit (0: valid, 1: rejected).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let spec = match TableSpec::from_json_file(&cli.tables) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("podlane-dataplane: {e}");
            return ExitCode::FAILURE;
        }
    };
    let snapshot = match Snapshot::build(&spec, 1) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("podlane-dataplane: {}: tables rejected: {e}", cli.tables.display());
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!("{}: tables valid", cli.tables.display());
        println!("{}", snapshot.summary());
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "podlane-dataplane: forwarding needs the AF_XDP engine, which this build does not have yet; \
         run with --check to validate {}",
        cli.tables.display()
    );
    ExitCode::from(2)
}
