//! The testbed's traffic program (TCP and UDP with digests, run inside a namespace); see
//! `testbed::probe` for the commands.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    testbed::probe::run(&args)
}
