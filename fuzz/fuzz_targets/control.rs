//! Control input, as the daemon takes it, on any bytes: a frame off the socket
//! (`api::read_frame`), a request's JSON, a full sync built into a snapshot, an update applied
//! to the example tables and built. Each may be refused with an error; none may panic (a
//! panic on the control path would take the node's dataplane down).
#![no_main]

use libfuzzer_sys::fuzz_target;
use podlane_core::api::{self, Request};
use podlane_core::table::{Snapshot, TableSpec};

fn example() -> TableSpec {
    serde_json::from_str(include_str!("../../docs/examples/two-nodes.json")).expect("example")
}

fuzz_target!(|data: &[u8]| {
    let _ = api::read_frame::<Request>(data);
    let request = match serde_json::from_slice::<Request>(data) {
        Ok(request) => request,
        Err(_) => {
            if let Ok(spec) = serde_json::from_slice::<TableSpec>(data) {
                let _ = Snapshot::build(&spec, 1);
            }
            return;
        }
    };
    match request {
        Request::FullSync { tables } => {
            let _ = Snapshot::build(&tables, 1);
        }
        Request::Update(update) => {
            let mut tables = example();
            if update.apply_to(&mut tables).is_ok() {
                let _ = Snapshot::build(&tables, 2);
            }
        }
        _ => {}
    }
});
