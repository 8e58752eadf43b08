//! `annal relay` runs the `annal-relay` program found next to `annal` (the relay is its own
//! crate, so that annal needs no network library), handing it every argument and its exit
//! code; without it, one clear line says how to build it.

mod cli_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Held by each test from writing its executables to running them. Files just written are open
/// for writing until closed, and a child forked meanwhile by the other test holds that
/// descriptor until it execs: running the file then fails with "Text file busy" (ETXTBSY),
/// which failed this file once in a full `cargo test` run.
static EXECUTABLES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A copy of `annal` in a directory of its own, with `relay` (if given) as its `annal-relay`.
fn annal_alone(relay: Option<&str>) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let annal = dir.path().join("annal");
    std::fs::copy(env!("CARGO_BIN_EXE_annal"), &annal).unwrap();
    if let Some(script) = relay {
        let path = dir.path().join("annal-relay");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (dir, annal)
}

#[test]
fn the_arguments_and_the_exit_code_are_the_relay_programs() {
    let _turn = EXECUTABLES.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, annal) = annal_alone(Some("#!/bin/sh\necho \"relay got: $*\"\nexit 7\n"));
    let out = Command::new(&annal)
        .args(["relay", "data", "--to", "nats://x:1", "--help", "-v"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "relay got: data --to nats://x:1 --help -v"
    );
}

#[test]
fn without_the_relay_program_it_says_how_to_build_it() {
    let _turn = EXECUTABLES.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, annal) = annal_alone(None);
    let out = Command::new(&annal)
        .args(["relay", "data", "--to", "nats://x:1"])
        .output()
        .unwrap();
    let run = cli_support::run_of(out);
    run.expect_error("cargo build --release -p annal-relay");
}
