//! Test helper: loads one of podlane's XDP programs and attaches it to an interface of the
//! network namespace it runs in (`ip netns exec NS podlane-xdp-probe ...`), prints
//! `attached <mode>`, then holds the attachment until its standard input closes. Tests use it
//! to see a program attached, and gone after a clean exit or a SIGKILL.

use std::io::Read;
use std::net::IpAddr;
use std::process::ExitCode;

use dataplane::io::xdp::{PerCpuArray, XdpMode, XdpProgram, XskMap, uplink_passed};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: podlane-xdp-probe INTERFACE pod|uplink native|generic [NODE-IP PORT [VNI]]";
    let (Some(interface), Some(program), Some(mode)) = (args.first(), args.get(1), args.get(2))
    else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let mode = match mode.as_str() {
        "native" => XdpMode::Native,
        "generic" => XdpMode::Generic,
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let result = XskMap::new(1).and_then(|map| match program.as_str() {
        "pod" => XdpProgram::pod(&map, false),
        _ => {
            let node: IpAddr = args.get(3).and_then(|a| a.parse().ok()).expect("NODE-IP");
            let port: u16 = args.get(4).and_then(|p| p.parse().ok()).expect("PORT");
            let vni: u32 = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(1);
            let passed = PerCpuArray::new("podlane_passed", uplink_passed::COUNT)?;
            XdpProgram::uplink(&map, &passed, node, port, vni, false)
        }
    });
    let link = match result.and_then(|p| p.attach(interface, mode)) {
        Ok(link) => link,
        Err(e) => {
            eprintln!("podlane-xdp-probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("attached {:?}", link.mode());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(link);
    ExitCode::SUCCESS
}
