//! `podlane-cni`: the CNI plugin a container runtime calls to wire a pod into podlane
//! (`podlane_dataplane::cni`). Reads the network configuration on stdin and the command in
//! `CNI_COMMAND`, prints the result or the error as JSON, exits 0 or 1.

use std::io::Read;
use std::process::ExitCode;

use dataplane::cni;

fn main() -> ExitCode {
    let mut stdin = String::new();
    let invocation = cni::Invocation::from_env();
    if invocation.command != "VERSION" && std::io::stdin().read_to_string(&mut stdin).is_err() {
        stdin.clear();
    }
    let (out, code) = cni::run(&invocation, &stdin);
    if !out.is_empty() {
        println!("{out}");
    }
    if code == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
