//! Control input, as the daemon takes it, on any bytes: a frame off the socket
//! (`api::read_frame`), a request's JSON, a full sync built into a snapshot, an update applied
//! to the example tables and built — each built as the daemon builds it, leaving out the
//! entries at fault (`table::build_salvaging`, the example as what was there before). Each
//! may be refused with an error; none may panic (a panic on the control path would take the
//! node's dataplane down), and what salvaging returns must build.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podlane_core::api::{self, Request};
use podlane_core::table::{Snapshot, TableSpec, build_salvaging};

fn example() -> TableSpec {
    serde_json::from_str(include_str!("../../docs/examples/two-nodes.json")).expect("example")
}

/// Builds `spec` as the daemon does, with `previous` as the tables before it.
fn build(spec: TableSpec, previous: &TableSpec) {
    if let Ok((_, applied, _)) = build_salvaging(spec, Some(previous), |s| Snapshot::build(s, 1))
    {
        assert!(Snapshot::build(&applied, 2).is_ok(), "what was salvaged builds");
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = api::read_frame::<Request>(data);
    let request = match serde_json::from_slice::<Request>(data) {
        Ok(request) => request,
        Err(_) => {
            if let Ok(spec) = serde_json::from_slice::<TableSpec>(data) {
                build(spec, &example());
            }
            return;
        }
    };
    match request {
        Request::FullSync { tables } => build(tables, &example()),
        Request::Update(update) => {
            let before = example();
            let mut tables = before.clone();
            if update.apply_to(&mut tables).is_ok() {
                build(tables, &before);
            }
        }
        _ => {}
    }
});
