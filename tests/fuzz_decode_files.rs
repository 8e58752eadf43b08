//! The `decode_files` fuzz target's body (`tests/fuzz_body/decode_files.rs`, whose header lists
//! the invariants it checks) run over seeded damage, so that `cargo test` exercises it without
//! cargo-fuzz: for every kind of file of a log (segments, indexes, key tables, `annal.meta`,
//! snapshots, the journal, start files, the groups' records), random bytes written at random
//! places, and cuts.
//!
//! A failing case prints its seed; `ANNAL_FUZZ_SEED=<seed>` replays it, and
//! `ANNAL_FUZZ_CASES=<n>` runs more.

mod common;

#[allow(dead_code)]
mod body {
    include!("fuzz_body/decode_files.rs");
}

use common::rng::XorShift;

#[test]
fn damage_to_any_file_is_reported_or_repaired_never_returned() {
    if std::env::var_os("ANNAL_FUZZ_INPUT").is_some() {
        return; // the corpus test runs it
    }
    let seeds: Vec<u64> = match std::env::var("ANNAL_FUZZ_SEED") {
        Ok(seed) => vec![seed.parse().expect("a u64 seed")],
        Err(_) => {
            let cases = std::env::var("ANNAL_FUZZ_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2_000u64);
            (1..=cases).collect()
        }
    };
    for seed in seeds {
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // The file kind cycles with the seed, so that a few cases cover every kind; the place
        // and the bytes are random, a flipped byte as often as a random run.
        let mut input = vec![(seed as u8).wrapping_mul(17)];
        input.extend(rng.bytes(4));
        let len = match rng.below(4) {
            0 => 0,
            1 => 1,
            _ => 1 + rng.below(64),
        };
        input.extend(rng.bytes(len));
        let result = std::panic::catch_unwind(|| body::check_damage(&input));
        if let Err(panic) = result {
            eprintln!("failing case: ANNAL_FUZZ_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

/// The checked-in corpus (`fuzz/seeds/decode_files/`); `ANNAL_FUZZ_INPUT=<file>` runs one file.
#[test]
fn the_checked_in_corpus_of_damages_is_reported_or_repaired() {
    common::corpus::replay("decode_files", "fuzz_decode_files", body::check_damage);
}
