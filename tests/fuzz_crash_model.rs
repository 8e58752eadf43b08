//! The `crash_model` fuzz target's body (`tests/fuzz_body/crash_model.rs`, whose header lists
//! the invariants it checks) run over seeded programs, so that `cargo test` exercises it without
//! cargo-fuzz: each program is random bytes, read as a setup (with or without retention, the
//! retry policy) and operations (appends, batches, pipelined bursts, expected-version appends
//! with ids, retries, multi-key appends, a group member's polls with nacks and commits,
//! re-drives and discards of dead letters, `enforce_retention`, clean restarts, injected
//! failures of fsyncs and writes with a reopen after a poisoning, power cuts) on a
//! log recorded by the simulated disk.
//!
//! A failing program prints its seed; `ANNAL_FUZZ_SEED=<seed>` replays it,
//! `ANNAL_FUZZ_CASES=<n>` runs more programs, and `ANNAL_FUZZ_INPUT=<file>` runs a cargo-fuzz
//! input (a crash artifact). `ANNAL_FUZZ_TRACE=1` prints each operation.

mod common;

#[allow(dead_code)]
mod body {
    include!("fuzz_body/crash_model.rs");
}

use common::rng::XorShift;

#[test]
fn seeded_programs_keep_the_invariants_of_the_crash_model() {
    let seeds: Vec<u64> = match std::env::var("ANNAL_FUZZ_SEED") {
        Ok(seed) => vec![seed.parse().expect("a u64 seed")],
        Err(_) => {
            let cases = std::env::var("ANNAL_FUZZ_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(12u64);
            (1..=cases).collect()
        }
    };
    // A cargo-fuzz input (a crash artifact) replays as it is, in the corpus test below.
    if std::env::var_os("ANNAL_FUZZ_INPUT").is_some() {
        return;
    }
    let mut coverage = body::Coverage::default();
    for seed in seeds {
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let len = 60 + rng.below(240);
        let program = rng.bytes(len);
        let result = std::panic::catch_unwind(|| body::run_program(&program));
        match result {
            Ok(run) => coverage.add(&run),
            Err(panic) => {
                eprintln!("failing program: ANNAL_FUZZ_SEED={seed}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    // What the programs exercised (shown with --nocapture).
    eprintln!("{coverage:#?}");
    let races = body::RACES_TOLERATED.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("operations tried again after a deletion race (ANNAL_FUZZ_TOLERATE_DELETION_RACES): {races}");
}

/// The checked-in corpus (`fuzz/seeds/crash_model/`), each input run as cargo-fuzz runs it.
/// `ANNAL_FUZZ_INPUT=<file>` runs one file instead (a crash artifact), and prints what it
/// exercised.
#[test]
fn the_checked_in_corpus_keeps_the_invariants_of_the_crash_model() {
    let coverage = std::sync::Mutex::new(body::Coverage::default());
    common::corpus::replay("crash_model", "fuzz_crash_model", |program| {
        let run = body::run_program(program);
        coverage.lock().unwrap().add(&run);
    });
    eprintln!("{:#?}", coverage.lock().unwrap());
}
