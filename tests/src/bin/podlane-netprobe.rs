//! Test helper: `control::probe` as its own binary (TCP and UDP traffic with digests, run in
//! a pod's namespace); see that module for the commands.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    control::probe::run(&args)
}
