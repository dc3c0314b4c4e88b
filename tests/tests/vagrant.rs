//! The multi-VM benchmark's Vagrantfile (`vagrant/`) stays valid: `vagrant validate` parses it
//! and checks both machines' configuration against the libvirt provider (an unknown provider
//! setting fails) and that the provisioning script it names exists. It creates no VM and needs
//! no libvirtd.

use std::path::Path;
use std::process::{Command, Stdio};

use podlane_tests::require_tool;
use testbed::ScratchDir;

#[test]
fn vagrantfile_validates() {
    let Some(vagrant) = require_tool("vagrant") else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vagrant");
    let key_dir = dir.join(".ssh");
    let had_key = key_dir.exists();
    // Vagrant keeps per-project state in `.vagrant/` next to the Vagrantfile; here it goes to a
    // scratch directory, so that the test leaves nothing in the tree.
    let state = ScratchDir::new("vagrant-validate").expect("scratch directory");
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
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run vagrant validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vagrant validate failed in {}:\n{stdout}\n{stderr}",
        dir.display()
    );
    assert!(stdout.contains("validated successfully"), "unexpected output:\n{stdout}\n{stderr}");
    // Only commands that provision make the benchmark's SSH key.
    assert!(had_key || !key_dir.exists(), "vagrant validate created {}", key_dir.display());
}
