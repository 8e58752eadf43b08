//! Bad input is refused with its own typed error and a message that says what was wrong, and
//! costs nothing: no offset is used up, no earlier event is lost, and a failed open changes
//! nothing on disk.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use annal::{
    Durability, Error, Event, Log, Options, FORMAT_VERSION, PARTITIONS_MAX, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};
use common::segment_files::{segment_path, META_FILE};
use common::{read_all, record_at};

/// The events a test expects in partition 0, in offset order, as (key, payload).
type Model = Vec<(Vec<u8>, Vec<u8>)>;

fn options() -> Options {
    Options::default()
        .partitions(1)
        .durability(Durability::Sync)
        .segment_bytes(SEGMENT_BYTES_MIN)
        .key_bytes_max(16)
        .event_bytes_max(1024)
        .batch_bytes_max(4096)
        .batch_events_max(10)
}

/// Appends one valid event and records it in the model; its offset must follow the model's.
fn append_good(log: &Log, model: &mut Model) {
    let payload = format!("good {}", model.len()).into_bytes();
    let at = log.append(b"good-key", &payload).unwrap();
    assert_eq!(
        at.offset,
        model.len() as u64,
        "a refused append used up an offset"
    );
    model.push((b"good-key".to_vec(), payload));
}

/// Partition 0 holds exactly the model, at offsets 0, 1, 2, ...
fn assert_intact(log: &Log, model: &Model) {
    let records = read_all(log, 0);
    let found: Model = records
        .iter()
        .map(|r| (r.key.to_vec(), r.payload.to_vec()))
        .collect();
    assert_eq!(&found, model);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.offset, i as u64);
    }
    assert_eq!(log.end_offset(0).unwrap(), model.len() as u64);
}

/// The error's message is not empty and mentions every one of `needles`.
fn assert_message(error: &Error, needles: &[&str]) {
    let message = error.to_string();
    assert!(!message.is_empty());
    for needle in needles {
        assert!(
            message.contains(needle),
            "message {message:?} does not mention {needle:?}"
        );
    }
}

/// A log in a fresh directory with one good event in it.
fn fresh() -> (tempfile::TempDir, Log, Model) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    let mut model = Model::new();
    append_good(&log, &mut model);
    (dir, log, model)
}

#[test]
fn empty_key_is_refused_with_empty_key() {
    let (_dir, log, mut model) = fresh();
    let error = log.append(b"", b"payload").unwrap_err();
    assert!(matches!(error, Error::EmptyKey), "{error:?}");
    assert_message(&error, &["key", "empty"]);
    let error = log.append_batch(b"", [b"a", b"b"]).unwrap_err();
    assert!(matches!(error, Error::EmptyKey), "{error:?}");
    let error = log.append_pipelined(b"", b"payload").unwrap_err();
    assert!(matches!(error, Error::EmptyKey), "{error:?}");
    append_good(&log, &mut model);
    assert_intact(&log, &model);
}

#[test]
fn key_longer_than_key_bytes_max_is_refused_with_key_too_large() {
    let (_dir, log, mut model) = fresh();
    let longest = [b'k'; 16];
    log.append(&longest, b"at the limit").unwrap();
    model.push((longest.to_vec(), b"at the limit".to_vec()));

    let error = log.append(&[b'k'; 17], b"payload").unwrap_err();
    assert!(
        matches!(
            error,
            Error::KeyTooLarge {
                bytes: 17,
                limit: 16
            }
        ),
        "{error:?}"
    );
    assert_message(&error, &["key", "17", "16"]);
    let error = log
        .append_batch_pipelined(&[b'k'; 1000], [b"a"])
        .unwrap_err();
    assert!(
        matches!(error, Error::KeyTooLarge { bytes: 1000, .. }),
        "{error:?}"
    );
    append_good(&log, &mut model);
    assert_intact(&log, &model);
}

#[test]
fn event_over_event_bytes_max_is_refused_with_event_too_large_headers_included() {
    let (_dir, log, mut model) = fresh();
    let at_limit = vec![1u8; 1024];
    log.append(b"k", &at_limit).unwrap();
    model.push((b"k".to_vec(), at_limit));

    let over = vec![2u8; 1025];
    let error = log.append(b"k", &over).unwrap_err();
    assert!(
        matches!(
            error,
            Error::EventTooLarge {
                bytes: 1025,
                limit: 1024
            }
        ),
        "{error:?}"
    );
    assert_message(&error, &["event", "1025", "1024"]);

    // Header names and values count: 1020 + 2 + 3 = 1025 bytes.
    let payload = vec![3u8; 1020];
    let error = log
        .append(b"k", Event::new(&payload).header("ab", "cde"))
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::EventTooLarge {
                bytes: 1025,
                limit: 1024
            }
        ),
        "{error:?}"
    );
    // 1020 + 2 + 2 = 1024 bytes fits.
    log.append(b"k", Event::new(&payload).header("ab", "cd"))
        .unwrap();
    model.push((b"k".to_vec(), payload.clone()));

    // One oversized event refuses its whole batch: the events before it are not appended.
    let batch = [
        Event::new(b"first"),
        Event::new(b"second"),
        Event::new(&over),
    ];
    let error = log.append_batch(b"k", &batch).unwrap_err();
    assert!(matches!(error, Error::EventTooLarge { .. }), "{error:?}");
    append_good(&log, &mut model);
    assert_intact(&log, &model);
}

#[test]
fn header_name_over_the_format_limit_is_refused_with_header_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Options::default().partitions(1)).unwrap();
    let mut model = Model::new();
    append_good(&log, &mut model);
    let name = vec![b'n'; 65_536];
    let error = log
        .append(b"k", Event::new(b"p").header(&name, "v"))
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::HeaderTooLarge {
                bytes: 65_536,
                limit: 65_535
            }
        ),
        "{error:?}"
    );
    assert_message(&error, &["header", "65536"]);
    append_good(&log, &mut model);
    assert_intact(&log, &model);
}

#[test]
fn batch_without_events_is_refused_with_empty_batch() {
    let (_dir, log, mut model) = fresh();
    let error = log.append_batch(b"k", Vec::<Event>::new()).unwrap_err();
    assert!(matches!(error, Error::EmptyBatch), "{error:?}");
    assert_message(&error, &["no events"]);
    let error = log
        .append_batch_pipelined(b"k", std::iter::empty::<&[u8]>())
        .unwrap_err();
    assert!(matches!(error, Error::EmptyBatch), "{error:?}");
    append_good(&log, &mut model);
    assert_intact(&log, &model);
}

#[test]
fn batch_over_batch_events_max_is_refused_with_batch_too_many_events() {
    let (_dir, log, mut model) = fresh();
    let payloads: Vec<Vec<u8>> = (0..11u8).map(|i| vec![i; 3]).collect();
    let at = log.append_batch(b"k", &payloads[..10]).unwrap();
    assert_eq!((at.offset, at.count), (1, 10));
    model.extend(payloads[..10].iter().map(|p| (b"k".to_vec(), p.clone())));

    let error = log.append_batch(b"k", &payloads).unwrap_err();
    assert!(
        matches!(
            error,
            Error::BatchTooManyEvents {
                events: 11,
                limit: 10
            }
        ),
        "{error:?}"
    );
    assert_message(&error, &["11", "10"]);
    append_good(&log, &mut model);
    assert_intact(&log, &model);
}

#[test]
fn batch_over_batch_bytes_max_is_refused_with_batch_too_large() {
    let (_dir, log, mut model) = fresh();
    // Each event is within event_bytes_max; with 7 bytes of record overhead each, four of them
    // (4,028 bytes) fit into 4,096 and five do not.
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000]).collect();
    log.append_batch(b"k", &payloads[..4]).unwrap();
    model.extend(payloads[..4].iter().map(|p| (b"k".to_vec(), p.clone())));

    let error = log.append_batch(b"k", &payloads).unwrap_err();
    let Error::BatchTooLarge { bytes, limit } = error else {
        panic!("{error:?}");
    };
    assert_eq!(limit, 4096);
    assert!(bytes > limit, "{bytes}");
    assert_message(&error, &["batch", &bytes.to_string(), "4096"]);
    append_good(&log, &mut model);
    assert_intact(&log, &model);
}

#[test]
fn read_of_a_missing_partition_is_refused_with_partition_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options().partitions(4)).unwrap();
    log.append(b"k", b"v").unwrap();
    let error = log.read(4, 0).err().unwrap();
    assert!(
        matches!(
            error,
            Error::PartitionOutOfRange {
                partition: 4,
                partitions: 4
            }
        ),
        "{error:?}"
    );
    assert_message(&error, &["partition 4", "4 partitions"]);
    assert!(matches!(
        log.read(u32::MAX, 0).err().unwrap(),
        Error::PartitionOutOfRange { .. }
    ));
    assert!(matches!(
        log.end_offset(4).unwrap_err(),
        Error::PartitionOutOfRange { .. }
    ));
    assert!(log.recovery_report().partition(4).is_none());
    let total: usize = (0..4).map(|p| log.read(p, 0).unwrap().count()).sum();
    assert_eq!(total, 1);
}

#[test]
fn open_of_a_regular_file_is_refused_with_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-log");
    std::fs::write(&file, b"something else").unwrap();
    let error = Log::open(&file, options()).unwrap_err();
    assert!(
        matches!(&error, Error::NotADirectory { path } if path == &file),
        "{error:?}"
    );
    assert_message(&error, &["not-a-log", "not a directory"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"something else");
}

#[test]
fn open_with_another_partition_count_is_refused_with_partition_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options().partitions(4)).unwrap();
    let at = log.append(b"k", b"v").unwrap();
    log.close().unwrap();
    let meta_before = std::fs::read(meta_path(dir.path())).unwrap();

    for requested in [3, 5, 1] {
        let error = Log::open(dir.path(), options().partitions(requested)).unwrap_err();
        assert!(
            matches!(
                error,
                Error::PartitionCountMismatch { on_disk: 4, requested: r, .. } if r == requested
            ),
            "{error:?}"
        );
        assert_message(
            &error,
            &["4 partitions", &format!("{requested} were requested")],
        );
    }
    assert_eq!(std::fs::read(meta_path(dir.path())).unwrap(), meta_before);

    // Without an explicit count the log opens with its own.
    let log = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!(log.partition_count(), 4);
    assert_eq!(log.partition_for(b"k"), at.partition);
    let record = record_at(&log, at.partition, 0);
    assert_eq!(record.payload.as_ref(), b"v");
}

#[test]
fn inconsistent_options_are_refused_with_invalid_options() {
    let cases: Vec<(Options, &str)> = vec![
        (options().partitions(0), "partitions"),
        (options().partitions(PARTITIONS_MAX + 1), "partitions"),
        (options().segment_bytes(1024), "segment_bytes"),
        (
            options().segment_bytes(SEGMENT_BYTES_MIN - 1),
            "segment_bytes",
        ),
        (
            options().segment_bytes(SEGMENT_BYTES_MAX + 1),
            "segment_bytes",
        ),
        (
            options().durability(Durability::Interval(Duration::ZERO)),
            "Interval",
        ),
        (options().key_bytes_max(0), "key_bytes_max"),
        (options().key_bytes_max(70_000), "key_bytes_max"),
        (options().batch_events_max(0), "batch_events_max"),
        (options().index_interval_bytes(0), "index_interval_bytes"),
        (options().event_bytes_max(4097), "event_bytes_max"),
        // The largest batch must fit into one segment.
        (
            options().batch_bytes_max(64 << 10).event_bytes_max(1024),
            "batch_bytes_max",
        ),
        (options().queue_bytes_max(100), "queue_bytes_max"),
    ];
    let parent = tempfile::tempdir().unwrap();
    for (i, (bad, names)) in cases.into_iter().enumerate() {
        let dir = parent.path().join(format!("log-{i}"));
        let error = Log::open(&dir, bad).unwrap_err();
        assert!(
            matches!(error, Error::InvalidOptions(_)),
            "case {i}: {error:?}"
        );
        assert_message(&error, &["invalid options", names]);
        // Options are checked before anything is created.
        assert!(!dir.exists(), "case {i} created {}", dir.display());
    }

    // Nor do they touch an existing log.
    let (dir, log, model) = fresh();
    log.close().unwrap();
    let error = Log::open(dir.path(), options().partitions(0)).unwrap_err();
    assert!(matches!(error, Error::InvalidOptions(_)), "{error:?}");
    let log = Log::open(dir.path(), options()).unwrap();
    assert_intact(&log, &model);
}

/// A closed log with two good events; returns its directory and model.
fn closed_log() -> (tempfile::TempDir, Model) {
    let (dir, log, mut model) = fresh();
    append_good(&log, &mut model);
    log.close().unwrap();
    (dir, model)
}

/// Rewrites a little-endian u32 field and the CRC-32 that covers `[0, crc_at)`.
fn rewrite_field_and_crc(path: &Path, field_at: usize, value: u32, crc_at: usize) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    let mut bytes = original.clone();
    bytes[field_at..field_at + 4].copy_from_slice(&value.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..crc_at]);
    bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
    original
}

/// Puts the original bytes back and checks the log opens with its data intact: the failed
/// open changed nothing.
fn restore_and_assert_intact(dir: &Path, path: &Path, original: &[u8], model: &Model) {
    std::fs::write(path, original).unwrap();
    let log = Log::open(dir, options()).unwrap();
    assert_intact(&log, model);
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join(META_FILE)
}

#[test]
fn metadata_of_another_format_version_is_refused_with_incompatible_format() {
    let (dir, model) = closed_log();
    let meta = meta_path(dir.path());
    let original = rewrite_field_and_crc(&meta, 8, FORMAT_VERSION + 1, 32);
    let error = Log::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(
            &error,
            Error::IncompatibleFormat { path, found, supported }
                if path == &meta && *found == FORMAT_VERSION + 1 && *supported == FORMAT_VERSION
        ),
        "{error:?}"
    );
    assert_message(
        &error,
        &[
            "annal.meta",
            &format!("version {}", FORMAT_VERSION + 1),
            &format!("version {FORMAT_VERSION}"),
        ],
    );
    restore_and_assert_intact(dir.path(), &meta, &original, &model);
}

#[test]
fn damaged_metadata_is_refused_with_corrupt() {
    let (dir, model) = closed_log();
    let meta = meta_path(dir.path());
    let original = std::fs::read(&meta).unwrap();
    // Magic, version, partition count, hash algorithm, creation time, checksum.
    for position in [0, 9, 12, 17, 25, 33] {
        let mut damaged = original.clone();
        damaged[position] ^= 0x40;
        std::fs::write(&meta, &damaged).unwrap();
        let error = Log::open(dir.path(), options()).unwrap_err();
        assert!(
            matches!(&error, Error::Corrupt { path, .. } if path == &meta),
            "byte {position}: {error:?}"
        );
        assert!(error.is_corruption());
        assert_message(&error, &["corrupt", "annal.meta"]);
    }
    // Truncated, and a valid checksum over an impossible partition count.
    std::fs::write(&meta, &original[..20]).unwrap();
    let error = Log::open(dir.path(), options()).unwrap_err();
    assert!(matches!(error, Error::Corrupt { .. }), "{error:?}");
    std::fs::write(&meta, &original).unwrap();
    rewrite_field_and_crc(&meta, 12, 0, 32);
    let error = Log::open(dir.path(), Options::default()).unwrap_err();
    assert!(
        matches!(error, Error::Corrupt { position: 12, .. }),
        "{error:?}"
    );
    restore_and_assert_intact(dir.path(), &meta, &original, &model);
}

#[test]
fn segment_header_of_another_format_version_is_refused_with_incompatible_format() {
    let (dir, model) = closed_log();
    let segment = segment_path(dir.path(), 0, 0);
    let original = rewrite_field_and_crc(&segment, 8, FORMAT_VERSION + 1, 60);
    let error = Log::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(
            &error,
            Error::IncompatibleFormat { path, found, .. }
                if path == &segment && *found == FORMAT_VERSION + 1
        ),
        "{error:?}"
    );
    assert_message(
        &error,
        &[
            "00000000000000000000.seg",
            &format!("version {}", FORMAT_VERSION + 1),
        ],
    );
    restore_and_assert_intact(dir.path(), &segment, &original, &model);
}

#[test]
fn damaged_segment_header_is_refused_with_corrupt() {
    let (dir, model) = closed_log();
    let segment = segment_path(dir.path(), 0, 0);
    let original = std::fs::read(&segment).unwrap();
    for position in [0, 12, 20, 40, 61] {
        let mut damaged = original.clone();
        damaged[position] ^= 0x01;
        std::fs::write(&segment, &damaged).unwrap();
        let error = Log::open(dir.path(), options()).unwrap_err();
        assert!(
            matches!(&error, Error::Corrupt { path, .. } if path == &segment),
            "byte {position}: {error:?}"
        );
        assert_message(&error, &["corrupt", "00000000000000000000.seg"]);
    }
    restore_and_assert_intact(dir.path(), &segment, &original, &model);
}
