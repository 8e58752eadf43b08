//! `annal demo`: the bank runs, survives its simulated crash with every acknowledged event, can
//! run again on the same directory (continuing every account), leaves a sound log, and refuses
//! a directory that another process holds.

mod cli_support;

use annal::{Log, Options};
use cli_support::*;

fn demo(dir: &str) -> String {
    annal(&[
        "demo",
        "--dir",
        dir,
        "--operations",
        "1500",
        "--accounts",
        "30",
        "--tellers",
        "3",
    ])
    .expect_ok()
}

#[test]
fn the_demo_runs_twice_on_one_directory_and_leaves_a_sound_log() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("annal-data").display().to_string();
    let first = demo(&dir);
    assert!(first.contains("0 events already there"), "{first}");
    assert!(first.contains("killed with SIGKILL after"), "{first}");
    assert!(
        first.contains("acknowledged events are in the log"),
        "{first}"
    );
    assert!(first.contains("agree with the tellers"), "{first}");

    let second = demo(&dir);
    assert!(!second.contains(" 0 events already there"), "{second}");
    assert!(second.contains("(30 with history)"), "{second}");
    assert!(
        second.contains("acknowledged events are in the log"),
        "{second}"
    );

    let verified = annal(&["verify", &dir]).expect_ok();
    assert!(verified.contains("result: sound"), "{verified}");
    // Nothing but the log's own files: no scratch files, no child output.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with('p')
            || n.starts_with("annal.")
            || n == "snapshots"
            || n == "groups"),
        "{names:?}"
    );
}

#[test]
fn the_demo_refuses_a_directory_that_another_process_holds() {
    let root = tempfile::tempdir().unwrap();
    let _held = Log::open(root.path(), Options::default()).unwrap();
    let run = annal(&["demo".as_ref(), "--dir".as_ref(), root.path().as_os_str()]);
    run.expect_error("is open by another process");
}
