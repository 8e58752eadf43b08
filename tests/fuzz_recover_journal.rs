//! The `recover_journal` fuzz target's body (`tests/fuzz_body/recover_journal.rs`, whose header
//! lists the invariants it checks) run over a fixed set of inputs, so that `cargo test` checks
//! them without cargo-fuzz: the pristine journal of a crash image, then a few hundred mutations
//! of it from a seeded generator (cuts at and inside records, bit flips, garbage, zeroed pages
//! in the middle, records copied to other places) and some pure noise.
//!
//! A failing case prints its seed and mutation; rerun one with
//! `ANNAL_FUZZ_SEED=<seed> cargo test --release --test fuzz_recover_journal`.

mod common;

#[allow(dead_code)]
mod body {
    include!("fuzz_body/recover_journal.rs");
}

use common::rng::XorShift;

const PAGE: usize = 4096;

fn mutate(pristine: &[u8], rng: &mut XorShift) -> (Vec<u8>, &'static str) {
    let mut bytes = pristine.to_vec();
    let len = bytes.len();
    match rng.below(8) {
        0 => {
            // A torn tail: everything from some byte on never reached the disk.
            let cut = rng.below(len + 1);
            bytes[cut..].fill(0);
            (bytes, "zeros from a byte on")
        }
        1 => {
            let at = rng.below(len);
            bytes[at] ^= 1 << rng.below(8);
            (bytes, "one flipped bit")
        }
        2 => {
            let from = rng.below(len);
            let to = (from + 1 + rng.below(600)).min(len);
            let noise = rng.bytes(to - from);
            bytes[from..to].copy_from_slice(&noise);
            (bytes, "garbage over a range")
        }
        3 => {
            // A lost page in the middle, as a bad sector would leave.
            let page = rng.below(len / PAGE) * PAGE;
            bytes[page..page + PAGE].fill(0);
            (bytes, "a zeroed page")
        }
        4 => {
            // A record's page copied over another one: a stale or misdirected write.
            let from = rng.below(len / PAGE) * PAGE;
            let to = rng.below(len / PAGE) * PAGE;
            let page = bytes[from..from + PAGE].to_vec();
            bytes[to..to + PAGE].copy_from_slice(&page);
            (bytes, "a page copied over another")
        }
        5 => {
            let cut = rng.below(len / PAGE + 1) * PAGE;
            bytes.truncate(cut);
            (bytes, "the file cut at a page")
        }
        6 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(len);
                bytes[at] = rng.next() as u8;
            }
            (bytes, "several random bytes")
        }
        _ => {
            let n = rng.below(3 * PAGE);
            (rng.bytes(n), "pure noise")
        }
    }
}

#[test]
fn recovery_of_mutated_journals_keeps_the_invariants_of_the_fuzz_target() {
    if std::env::var_os("ANNAL_FUZZ_INPUT").is_some() {
        return; // the corpus test runs it
    }
    let pristine = body::template().records_area.clone();
    assert!(
        pristine.len() >= 8 * PAGE,
        "the image has records to damage"
    );
    body::check_records_area(&pristine);
    let seeds: Vec<u64> = match std::env::var("ANNAL_FUZZ_SEED") {
        Ok(seed) => vec![seed.parse().expect("a u64 seed")],
        Err(_) => (1..=250).collect(),
    };
    for seed in seeds {
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let (mutated, what) = mutate(&pristine, &mut rng);
        let result = std::panic::catch_unwind(|| body::check_records_area(&mutated));
        if let Err(panic) = result {
            eprintln!("failing case: ANNAL_FUZZ_SEED={seed} ({what})");
            std::panic::resume_unwind(panic);
        }
    }
}

/// The checked-in corpus (`fuzz/seeds/recover_journal/`); `ANNAL_FUZZ_INPUT=<file>` runs one
/// file.
#[test]
fn the_checked_in_corpus_of_journals_keeps_the_invariants() {
    common::corpus::replay(
        "recover_journal",
        "fuzz_recover_journal",
        body::check_records_area,
    );
}
