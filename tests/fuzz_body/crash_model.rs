// The body of the `crash_model` fuzz target, shared by `fuzz/fuzz_targets/crash_model.rs`
// (cargo-fuzz) and `tests/fuzz_crash_model.rs` (seeded inputs under `cargo test`), which both
// `include!` this file.
//
// The input bytes are a program: each byte picks an operation on a log of two partitions, small
// segments and the smallest journal, recorded by the simulated disk (`src/storage/simdisk.rs`):
// a `Sync` append, a `Sync` batch, a burst of pipelined `Sync` appends, or a power cut. At the
// power cut (and once more at the end of the program) the body builds the image that the cut
// could leave, chosen by the next bytes as a seed, and checks against a plain model of what was
// acknowledged:
//
// 1. The image opens (no crash image is refused).
// 2. Every append acknowledged before the cut is there, with its payload, at its offset.
// 3. Nothing is there that was never appended; every record reads without error.
// 4. Offsets are contiguous in each partition, and a batch is all there or all absent.
// 5. An append after recovery lands at the end of its partition.
//
// Operations run on one thread, so an input replays exactly.

use std::collections::BTreeMap;

use annal::io::FailPoints;
use annal::{Durability, Event, Log, Options};

const PARTITIONS: u32 = 2;
/// Most operations one input runs: bounds the time of one execution.
const OPERATIONS_MAX: usize = 400;

fn options() -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(Durability::Sync)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
}

fn payload(n: u64, size: u8) -> Vec<u8> {
    let mut payload = format!("event {n} ").into_bytes();
    payload.resize(16 + usize::from(size) * 8, b'.');
    payload
}

/// What the model knows was acknowledged: (partition, offset) -> payload, and each batch's
/// records, which must all be there or all be absent.
#[derive(Default)]
struct Model {
    acked: BTreeMap<(u32, u64), Vec<u8>>,
    batches: Vec<Vec<(u32, u64)>>,
}

/// Runs the program in `data` and checks every power cut it makes.
pub fn check_program(data: &[u8]) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let fail_points = FailPoints::new();
    fail_points.record_crashes(&dir);
    let log = Log::open(&dir, options().fail_points(fail_points.clone())).unwrap();
    let mut model = Model::default();
    let mut n = 0u64;
    let mut bytes = data.iter().copied().take(OPERATIONS_MAX * 3);
    let mut cuts = 0u64;
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let key = format!("key-{}", arg % 7);
        match op % 8 {
            0..=3 => {
                let payload = payload(n, arg);
                let at = log.append(key.as_bytes(), &payload).unwrap();
                model.acked.insert((at.partition, at.offset), payload);
                n += 1;
            }
            4 => {
                let first = payload(n, arg);
                let second = payload(n + 1, arg / 2);
                let events = [Event::new(&first), Event::new(&second)];
                let at = log.append_batch(key.as_bytes(), &events).unwrap();
                model.acked.insert((at.partition, at.offset), first);
                model.acked.insert((at.partition, at.offset + 1), second);
                model
                    .batches
                    .push(vec![(at.partition, at.offset), (at.partition, at.offset + 1)]);
                n += 2;
            }
            5 | 6 => {
                let burst: Vec<Vec<u8>> = (0..u64::from(arg % 32) + 1)
                    .map(|i| payload(n + i, arg))
                    .collect();
                let tickets: Vec<_> = burst
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let key = format!("key-{}", (usize::from(arg) + i) % 7);
                        log.append_pipelined(key.as_bytes(), p).unwrap()
                    })
                    .collect();
                for (ticket, payload) in tickets.into_iter().zip(burst) {
                    let at = ticket.wait().unwrap();
                    model.acked.insert((at.partition, at.offset), payload);
                    n += 1;
                }
            }
            _ => {
                let seed = u64::from(arg) << 8 | u64::from(bytes.next().unwrap_or(0));
                check_cut(&fail_points, root.path(), &model, seed, cuts);
                cuts += 1;
            }
        }
    }
    check_cut(&fail_points, root.path(), &model, n, cuts);
    log.close().unwrap();
}

/// Builds the image of a power cut now and checks it against the model.
fn check_cut(fail_points: &FailPoints, root: &std::path::Path, model: &Model, seed: u64, cut: u64) {
    let instant = fail_points.recorded_ops();
    let image = root.join(format!("image-{cut}"));
    fail_points.crash_image(instant, &image, seed).unwrap();
    let log = Log::open(&image, options())
        .unwrap_or_else(|e| panic!("cut {cut} (seed {seed}): the image does not open: {e}"));
    let mut ends = Vec::new();
    for p in 0..PARTITIONS {
        let end = log.end_offset(p).unwrap();
        let mut expected = 0;
        for record in log.read(p, 0).unwrap() {
            let record = record.unwrap_or_else(|e| panic!("cut {cut}: partition {p}: {e}"));
            assert_eq!(record.offset, expected, "cut {cut}: offsets contiguous in {p}");
            assert!(record.payload.starts_with(b"event "), "cut {cut}: {p}/{expected} invented");
            if let Some(payload) = model.acked.get(&(p, record.offset)) {
                assert_eq!(&record.payload[..], &payload[..], "cut {cut}: {p}/{expected}");
            }
            expected += 1;
        }
        assert_eq!(expected, end, "cut {cut}: partition {p} reads short");
        ends.push(end);
    }
    for &(p, offset) in model.acked.keys() {
        assert!(offset < ends[p as usize], "cut {cut}: acknowledged {p}/{offset} lost");
    }
    for batch in &model.batches {
        let present = batch.iter().filter(|(p, o)| *o < ends[*p as usize]).count();
        assert!(present == 0 || present == batch.len(), "cut {cut}: a batch is torn");
    }
    let at = log.append(b"after the cut", b"event after").unwrap();
    assert_eq!(at.offset, ends[at.partition as usize], "cut {cut}: appends continue at the end");
    log.close().unwrap();
    std::fs::remove_dir_all(&image).unwrap();
}
