//! Who may use the control sockets (issue 15), with real users and groups (`useradd`,
//! `groupadd`; `setpriv` runs `podlane` as them): a podlane node started with
//! `--control-gid` (writers) and `--control-read-gid` (readers). The control socket is 0660
//! and the writers' group's, the read-only one 0660 and the readers'; a user who is a writer
//! by a supplementary group shows and applies tables; a reader shows through the read-only
//! socket, is refused there when applying and refused at the control socket; a user in
//! neither group is refused at both. A control socket directory others can write is refused at
//! start. The accounts are removed however the test ends.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use podlane_tests::require_root;
use testbed::binary;
use testbed::cluster::OneNode;
use testbed::podlane::Dataplane;

/// Users and groups made for the test, deleted when dropped.
struct Accounts {
    users: Vec<String>,
    groups: Vec<String>,
}

impl Accounts {
    fn group(&mut self, name: &str) -> anyhow::Result<u32> {
        run("groupadd", &[name])?;
        self.groups.push(name.to_owned());
        let line =
            String::from_utf8(Command::new("getent").args(["group", name]).output()?.stdout)?;
        Ok(line.split(':').nth(2).unwrap_or_default().trim().parse()?)
    }

    /// A user with no home and no login, in `groups` besides its own primary group.
    fn user(&mut self, name: &str, groups: &[&str]) -> anyhow::Result<u32> {
        let mut args = vec!["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "-U"];
        let list = groups.join(",");
        if !groups.is_empty() {
            args.extend(["-G", &list]);
        }
        args.push(name);
        run("useradd", &args)?;
        self.users.push(name.to_owned());
        let out = Command::new("id").args(["-u", name]).output()?;
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in &self.users {
            let _ = Command::new("userdel").arg(user).output();
        }
        for group in &self.groups {
            let _ = Command::new("groupdel").arg(group).output();
        }
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `podlane --socket SOCKET ARGS` as `user` (its primary and supplementary groups).
fn podlane_as(user: &str, socket: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .arg(binary("podlane"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("setpriv")
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn control_access() -> anyhow::Result<()> {
    if !require_root("control_access") {
        return Ok(());
    }
    let tag = std::process::id() % 100_000;
    let mut accounts = Accounts { users: Vec::new(), groups: Vec::new() };
    let (writers, readers) = (format!("plw{tag}"), format!("plr{tag}"));
    let writers_gid = accounts.group(&writers)?;
    let readers_gid = accounts.group(&readers)?;
    let (writer, reader, nobody) =
        (format!("pluw{tag}"), format!("plur{tag}"), format!("plun{tag}"));
    accounts.user(&writer, &[&writers])?;
    accounts.user(&reader, &[&readers])?;
    accounts.user(&nobody, &[])?;

    let one = OneNode::new("ac", 87)?;
    let tables = one.write_tables(&[])?;
    // Readable by the test's users: the tables file they apply, the sockets' directory.
    std::fs::set_permissions(one.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&tables, std::fs::Permissions::from_mode(0o644))?;
    let run_dir = one.dir.path().join("run");
    std::fs::create_dir(&run_dir)?;
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755))?;
    // The testbed puts the control socket beside the log: run/dataplane.sock.
    let log = run_dir.join("dataplane.log");
    let socket = run_dir.join("dataplane.sock");
    let read_only = run_dir.join("dataplane-ro.sock");
    let tables_arg = tables.to_string_lossy();
    let (w, r) = (writers_gid.to_string(), readers_gid.to_string());
    let mut daemon = Dataplane::start(
        &one.node,
        "uplink",
        &log,
        &["--tables", &tables_arg, "--control-gid", &w, "--control-read-gid", &r],
    )?;
    daemon.wait_ready(2)?;

    // Modes and groups as created.
    let meta = std::fs::metadata(&socket)?;
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, writers_gid), "control socket");
    let meta = std::fs::metadata(&read_only)?;
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, readers_gid), "read-only socket");

    // A writer by a supplementary group: shows and changes.
    let out = podlane_as(&writer, &socket, &["show", "config"]);
    assert!(out.status.success(), "writer, show: {}", said(&out));
    let out = podlane_as(&writer, &socket, &["apply", "-f", &tables_arg]);
    assert!(out.status.success(), "writer, apply: {}", said(&out));

    // A reader: shows through the read-only socket, nothing else.
    let out = podlane_as(&reader, &read_only, &["show", "counters"]);
    assert!(out.status.success(), "reader, show on the read-only socket: {}", said(&out));
    let out = podlane_as(&reader, &read_only, &["apply", "-f", &tables_arg]);
    assert!(!out.status.success(), "reader applied tables: {}", said(&out));
    assert!(said(&out).contains("read-only"), "{}", said(&out));
    let out = podlane_as(&reader, &socket, &["show", "config"]);
    assert!(!out.status.success(), "reader on the control socket: {}", said(&out));

    // Neither: refused at both.
    for path in [&socket, &read_only] {
        let out = podlane_as(&nobody, path, &["show", "config"]);
        assert!(!out.status.success(), "{nobody} on {}: {}", path.display(), said(&out));
    }
    assert!(daemon.stop()?.success(), "{}", daemon.log());

    // A directory others can write is refused: whoever can write it can replace the socket.
    let open_dir = one.dir.path().join("open");
    std::fs::create_dir(&open_dir)?;
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777))?;
    let open_socket = open_dir.join("d.sock");
    let out = one
        .node
        .command(binary("podlane-dataplane"))
        .args(["--uplink", "uplink", "--tables", &tables_arg, "--control-socket"])
        .arg(&open_socket)
        .output()?;
    assert!(!out.status.success(), "started with an open socket directory");
    assert!(said(&out).contains("writable by group or others"), "{}", said(&out));
    Ok(())
}
