//! Recovery never deletes acknowledged data. A torn tail (the write a crash interrupted) is cut;
//! damage with valid, durable data after it is corruption: `open` fails with `Error::Corrupt`
//! naming the file and byte and cuts nothing, unless asked to salvage, which keeps what still
//! continues its partition and reports what was lost. Damage to synced (checkpointed) segment
//! data is never cut at open: the offsets stay, and reads report the damaged frame.
//!
//! The regression cases of the hardening issue, with 200 `Sync` appends and one flipped bit:
//! before, a flip inside the last indexed frame silently cut the log to 196 and gave offset 196
//! to the next event, and a lost index plus a flip in the second frame cut it to 28.

mod common;

use std::fs;
use std::path::Path;

use annal::{Durability, Error, Log, Options, RecoveryMode};
use common::segment_files::{
    copy_dir, frame_ranges, index_path, journal_records, segment_path, JOURNAL_FILE,
};

const EVENTS: u64 = 200;

fn options() -> Options {
    Options::default()
        .partitions(1)
        .durability(Durability::Sync)
}

fn payload(i: u64) -> Vec<u8> {
    common::padded(format!("event {i} "), 100, b'.')
}

/// A crash image (as `kill -9` leaves it) of a log holding `EVENTS` acknowledged appends, all
/// of them only in the journal: the last checkpoint precedes them.
fn crash_image(root: &Path, durability: Durability) -> std::path::PathBuf {
    let live = root.join("live");
    let log = Log::open(&live, options().durability(durability)).unwrap();
    for i in 0..EVENTS {
        log.append(b"k", &payload(i)).unwrap();
        if durability == Durability::Buffered {
            // One record per append, so that there is a middle to damage.
            log.flush().unwrap();
        }
    }
    let image = copy_dir(&live, &root.join("image"));
    drop(log);
    image
}

fn flip(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

fn read_all(log: &Log) -> Vec<Vec<u8>> {
    log.read(0, 0)
        .unwrap()
        .map(|r| r.unwrap().payload.to_vec())
        .collect()
}

#[test]
fn a_flipped_bit_in_a_journal_record_before_durable_ones_is_refused_and_nothing_is_cut() {
    let root = tempfile::tempdir().unwrap();
    let image = crash_image(root.path(), Durability::Sync);
    let journal = image.join(JOURNAL_FILE);
    let records = journal_records(&fs::read(&journal).unwrap(), 1);
    assert!(records.len() >= 100, "{} records", records.len());
    // Inside a middle record's frame payload.
    let victim = records[records.len() / 2].clone();
    let at = victim.end - 20;
    flip(&journal, at);
    let before = fs::read(&journal).unwrap();

    let error = Log::open(&image, options()).unwrap_err();
    match &error {
        Error::Corrupt { path, position, .. } => {
            assert_eq!(path, &journal);
            assert!(
                victim.contains(&(*position as usize)),
                "{position} not in {victim:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fs::read(&journal).unwrap(),
        before,
        "a refused open cut nothing"
    );

    // Undo the damage: everything is there.
    flip(&journal, at);
    let log = Log::open(&image, options()).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), EVENTS);
    assert_eq!(read_all(&log), (0..EVENTS).map(payload).collect::<Vec<_>>());
    assert_eq!(log.append(b"k", b"next").unwrap().offset, EVENTS);
}

#[test]
fn a_lost_page_in_the_middle_of_the_journal_is_refused_not_taken_for_its_end() {
    let root = tempfile::tempdir().unwrap();
    let image = crash_image(root.path(), Durability::Sync);
    let journal = image.join(JOURNAL_FILE);
    let mut bytes = fs::read(&journal).unwrap();
    let records = journal_records(&bytes, 1);
    let victim = records[records.len() / 3].clone();
    bytes[victim.clone()].fill(0);
    fs::write(&journal, &bytes).unwrap();
    match Log::open(&image, options()).unwrap_err() {
        Error::Corrupt { path, position, .. } => {
            assert_eq!(path, journal);
            assert_eq!(position as usize, victim.start);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn salvage_keeps_the_records_after_the_damage_that_continue_and_reports_the_loss() {
    let root = tempfile::tempdir().unwrap();
    let image = crash_image(root.path(), Durability::Sync);
    let journal = image.join(JOURNAL_FILE);
    let records = journal_records(&fs::read(&journal).unwrap(), 1);
    let victim = records.len() / 2;
    flip(&journal, records[victim].end - 20);

    let salvage = options().recovery_mode(RecoveryMode::SalvageAfterCorruption);
    let log = Log::open(&image, salvage).unwrap();
    let report = log.recovery_report();
    // One partition: every record after the damaged one continues a gap, so all are dropped
    // and named; what came before is kept.
    let end = log.end_offset(0).unwrap();
    assert_eq!(
        end, victim as u64,
        "one append per record before the damage"
    );
    assert_eq!(report.salvage_lost.len(), 1, "{report:?}");
    let lost = report.salvage_lost[0];
    assert_eq!(
        (lost.partition, lost.first_offset, lost.last_offset),
        (0, end, EVENTS - 1)
    );
    assert_eq!(read_all(&log), (0..end).map(payload).collect::<Vec<_>>());
    assert_eq!(log.append(b"k", b"next").unwrap().offset, end);
}

#[test]
fn a_torn_last_record_is_cut_at_any_byte_and_the_log_keeps_every_record_before() {
    let root = tempfile::tempdir().unwrap();
    let image = crash_image(root.path(), Durability::Sync);
    let journal = image.join(JOURNAL_FILE);
    let pristine = fs::read(&journal).unwrap();
    let records = journal_records(&pristine, 1);
    let last = records.last().unwrap().clone();
    for cut in (last.start..last.end).step_by(7) {
        let case = copy_dir(&image, &root.path().join(format!("cut-{cut}")));
        let mut bytes = pristine.clone();
        bytes[cut..last.end].fill(0);
        fs::write(case.join(JOURNAL_FILE), &bytes).unwrap();
        let log = Log::open(&case, options()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(log.end_offset(0).unwrap(), EVENTS - 1, "cut at {cut}");
        assert_eq!(log.recovery_report().journal_tail_torn, cut > last.start);
        assert_eq!(log.append(b"k", b"next").unwrap().offset, EVENTS - 1);
        let records = read_all(&log);
        assert_eq!(records.len() as u64, EVENTS);
        assert_eq!(records.last().unwrap(), b"next");
        drop(log);
        fs::remove_dir_all(&case).unwrap();
    }
}

#[test]
fn unsynced_buffered_records_lost_out_of_order_are_a_torn_tail_not_corruption() {
    let root = tempfile::tempdir().unwrap();
    let live = root.path().join("live");
    let options = options().durability(Durability::Buffered);
    let log = Log::open(&live, options.clone()).unwrap();
    log.append(b"k", &payload(0)).unwrap();
    log.flush().unwrap();
    // Written but never synced: a power cut may keep any of these pages and lose others.
    for i in 1..20 {
        log.append(b"k", &payload(i)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let image = copy_dir(&live, &root.path().join("image"));
    drop(log);
    let journal = image.join(JOURNAL_FILE);
    let mut bytes = fs::read(&journal).unwrap();
    let records = journal_records(&bytes, 1);
    assert!(records.len() >= 3, "{} records", records.len());
    // Lose the second record's page, keep the later ones.
    bytes[records[1].clone()].fill(0);
    fs::write(&journal, &bytes).unwrap();
    let log = Log::open(&image, options).unwrap();
    assert_eq!(
        log.end_offset(0).unwrap(),
        1,
        "a prefix: the synced record only"
    );
    assert!(log.recovery_report().journal_tail_torn);
}

/// A closed log: checkpointed, so its data lives in the segment and its journal is empty.
fn closed_log(root: &Path) -> std::path::PathBuf {
    let dir = root.join("log");
    let log = Log::open(&dir, options()).unwrap();
    for i in 0..EVENTS {
        log.append(b"k", &payload(i)).unwrap();
    }
    log.close().unwrap();
    dir
}

fn check_damaged_synced_frame_is_reported_not_cut(dir: &Path, frame: usize) {
    let segment = segment_path(dir, 0, 0);
    let frames = frame_ranges(&fs::read(&segment).unwrap());
    let victim = frames[frame].clone();
    flip(&segment, victim.end - 3);
    let log = Log::open(dir, options()).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), EVENTS, "no offset was cut");
    // The key's last version lies behind the damaged frame: an append that needs it is
    // refused with the damage, never given a guessed version (or a reused offset).
    let refused = log.append(b"k", b"next").unwrap_err();
    assert!(refused.is_corruption(), "{refused}");
    assert_eq!(log.end_offset(0).unwrap(), EVENTS, "nothing appended");
    let error = log
        .read(0, 0)
        .unwrap()
        .find_map(Result::err)
        .expect("the damaged frame is reported");
    match &error {
        Error::Corrupt { path, position, .. } => {
            assert_eq!(path, &segment);
            assert!(victim.contains(&(*position as usize)) || *position as usize == victim.start);
        }
        other => panic!("{other:?}"),
    }
    // The records before the damage read back.
    let before: Vec<_> = log
        .read(0, 0)
        .unwrap()
        .take(frame)
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(before.len(), frame);
}

#[test]
fn a_flipped_bit_in_a_synced_frame_is_reported_by_reads_and_cuts_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = closed_log(root.path());
    let frames = frame_ranges(&fs::read(segment_path(&dir, 0, 0)).unwrap()).len();
    // The frame the last index entry points at, as in the reproduction.
    check_damaged_synced_frame_is_reported_not_cut(&dir, frames - 3);
}

#[test]
fn a_lost_index_and_a_flipped_bit_in_the_second_frame_cut_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = closed_log(root.path());
    fs::remove_file(index_path(&dir, 0, 0)).unwrap();
    check_damaged_synced_frame_is_reported_not_cut(&dir, 1);
}

/// A journal cut short of the position its checkpoint names lost synced bytes: refused, not
/// taken for an empty journal.
#[test]
fn a_journal_shorter_than_its_checkpoint_position_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = closed_log(root.path());
    let journal = dir.join(JOURNAL_FILE);
    let len = fs::metadata(&journal).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&journal).unwrap();
    // The close's checkpoint names the end of the records: cut well before it.
    file.set_len(len / 4).unwrap();
    match Log::open(&dir, options()).unwrap_err() {
        Error::Corrupt { path, .. } => assert_eq!(path, journal),
        other => panic!("{other:?}"),
    }
    // Salvage opens it: the checkpoint holds everything before that position.
    let salvage = options().recovery_mode(RecoveryMode::SalvageAfterCorruption);
    let log = Log::open(&dir, salvage).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), EVENTS);
    assert_eq!(log.append(b"k", b"next").unwrap().offset, EVENTS);
}
