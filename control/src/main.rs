//! `podlane`: the operator CLI and, later, the control process (agent) and demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "podlane", version, about = "podlane control process and operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a tables file as the dataplane would, and print what it holds.
    Check {
        /// Tables in the dataplane's JSON encoding (docs/tables.md).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { file } => match control::check_tables(&file) {
            Ok(summary) => {
                println!("{}: tables valid\n{summary}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("podlane: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
