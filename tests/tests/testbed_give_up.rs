//! The testbed's waits give up when the harness asks them to (`give_up_waiting_when`, which
//! `podlane-bench` ties to SIGINT and SIGTERM), instead of sitting out their timeouts. A test
//! binary of its own: the setting is for the whole process.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use testbed::process::give_up_waiting_when;
use testbed::{ScratchDir, Service};

static STOP: AtomicBool = AtomicBool::new(false);

#[test]
fn a_readiness_wait_gives_up_when_asked() {
    give_up_waiting_when(|| STOP.load(Ordering::Relaxed));
    let dir = ScratchDir::new("give-up").expect("scratch directory");
    let mut sleeper = Service::start(
        "sleeper",
        {
            let mut sleep = Command::new("sleep");
            sleep.arg("60");
            sleep
        },
        &dir.path().join("sleeper.log"),
    )
    .expect("start sleep");
    let asker = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        STOP.store(true, Ordering::Relaxed);
    });
    // It never logs this; without the give-up the wait would end after its 60 s timeout.
    let error = sleeper
        .wait_for_all(&[("ready", 1)], Duration::from_secs(60))
        .expect_err("nothing was ever logged");
    asker.join().unwrap();
    let message = format!("{error:#}");
    assert!(message.contains("gave up waiting") && message.contains("sleeper"), "{message}");
}
