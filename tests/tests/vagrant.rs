//! The multi-VM benchmark's Vagrantfile (`vagrant/`) stays valid: `vagrant validate` parses it
//! and checks both machines' configuration against the libvirt provider (an unknown provider
//! setting fails) and that the provisioning script it names exists. It creates no VM and needs
//! no libvirtd.

use std::path::Path;
use std::process::{Command, Stdio};

use podlane_tests::require_tool;
use testbed::ScratchDir;

/// `vagrant validate` in `vagrant/` with the Vagrantfile's overrides unset but for `env`.
fn validate(vagrant: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vagrant");
    // Vagrant keeps per-project state in `.vagrant/` next to the Vagrantfile; here it goes to a
    // scratch directory, so that the test leaves nothing in the tree.
    // One per call: the tests run in parallel threads of one process.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let state = ScratchDir::new(&format!("vagrant-validate-{call}")).expect("scratch directory");
    let mut cmd = Command::new(vagrant);
    cmd.arg("validate")
        .current_dir(&dir)
        // Provider settings are checked for the provider in use only: make it libvirt even
        // where VirtualBox is installed too.
        .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
        // No version check against HashiCorp's servers (a network call, and a notice).
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_DOTFILE_PATH", state.path())
        .stdin(Stdio::null());
    // The defaults are what is checked, whatever the caller's shell has set.
    for var in [
        "PODLANE_BOX",
        "PODLANE_CPUS",
        "PODLANE_MEMORY",
        "PODLANE_QUEUES",
        "PODLANE_SUBNET",
        "PODLANE_CONTROL_SUBNET",
        "PODLANE_NODE_CPUSET",
        "PODLANE_LOAD_CPUSET",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run vagrant validate")
}

#[test]
fn vagrantfile_validates() {
    let Some(vagrant) = require_tool("vagrant") else {
        return;
    };
    let key_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vagrant/.ssh");
    let had_key = key_dir.exists();
    // The defaults, and each VM's vCPUs on host cores of its own (libvirt's cpuset).
    for env in [&[][..], &[("PODLANE_NODE_CPUSET", "2-5"), ("PODLANE_LOAD_CPUSET", "6,7,8,9")]] {
        let out = validate(&vagrant, env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "vagrant validate with {env:?} failed:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("validated successfully"),
            "unexpected output with {env:?}:\n{stdout}\n{stderr}"
        );
    }
    // Only commands that provision make the benchmark's SSH key.
    assert!(had_key || !key_dir.exists(), "vagrant validate created {}", key_dir.display());
}

#[test]
fn a_bad_cpuset_is_explained() {
    let Some(vagrant) = require_tool("vagrant") else {
        return;
    };
    let out = validate(&vagrant, &[("PODLANE_NODE_CPUSET", "two")]);
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a cpuset of \"two\" was accepted:\n{said}");
    assert!(said.contains("PODLANE_NODE_CPUSET=\"two\"") && said.contains("e.g. 2-5"), "{said}");
}
