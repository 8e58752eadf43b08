//! The `crash_model` fuzz target's body (`tests/fuzz_body/crash_model.rs`, whose header lists
//! the invariants it checks) run over seeded programs, so that `cargo test` exercises it without
//! cargo-fuzz: each program is random bytes, read as operations (appends, batches, pipelined
//! bursts, expected-version appends with ids, retries, multi-key appends, power cuts) on a log
//! recorded by the simulated disk.
//!
//! A failing program prints its seed; `ANNAL_FUZZ_SEED=<seed>` replays it, and
//! `ANNAL_FUZZ_CASES=<n>` runs more programs.

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
    for seed in seeds {
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let len = 60 + rng.below(240);
        let program = rng.bytes(len);
        let result = std::panic::catch_unwind(|| body::check_program(&program));
        if let Err(panic) = result {
            eprintln!("failing program: ANNAL_FUZZ_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}
