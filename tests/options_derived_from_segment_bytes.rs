//! Bug: `Options::default().segment_bytes(64 << 10)` was refused ("batch_bytes_max plus the
//! largest key and the frame header must fit into one segment") unless the batch and event
//! limits were lowered by hand. Unset limits now follow the segment size; explicit ones that do
//! not fit are refused with the option's name and the largest value that fits.

mod common;

use annal::{Error, Event, Log, Options, KEY_BYTES_MAX_DEFAULT, SEGMENT_BYTES_MIN};

/// Segment header (64), the room a segment keeps for a checkpoint's padding frame
/// (4096 + 34), frame header (32) and key length prefix (2), besides the key and the batch, as
/// `docs/format.md` lays them out.
const OVERHEAD_BYTES: u64 = 64 + 4096 + 50 + 48 + 2;
/// Attributes, header count and payload length of one record.
const RECORD_FIXED_BYTES: u64 = 7;
/// The largest batch in a smallest segment with the default key limit.
const BATCH_FITS: u64 = SEGMENT_BYTES_MIN - OVERHEAD_BYTES - KEY_BYTES_MAX_DEFAULT as u64;

fn smallest_segments() -> Options {
    Options::default()
        .partitions(1)
        .segment_bytes(SEGMENT_BYTES_MIN)
}

#[test]
fn smallest_segment_with_unset_limits_opens_and_takes_the_largest_event_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), smallest_segments()).unwrap();
    let event_fits = (BATCH_FITS - RECORD_FIXED_BYTES) as usize;

    let largest = vec![b'x'; event_fits];
    let at = log.append(b"k", &largest).unwrap();
    let error = log.append(b"k", &vec![b'x'; event_fits + 1]).unwrap_err();
    assert!(
        matches!(error, Error::EventTooLarge { limit, .. } if limit == event_fits as u64),
        "{error:?}"
    );
    let half = vec![b'y'; event_fits / 2 + 1];
    let error = log
        .append_batch(b"k", [Event::new(&half), Event::new(&half)])
        .unwrap_err();
    assert!(
        matches!(error, Error::BatchTooLarge { limit, .. } if limit == BATCH_FITS),
        "{error:?}"
    );
    // The largest key with the largest batch fills a segment exactly.
    let key = vec![b'k'; KEY_BYTES_MAX_DEFAULT as usize];
    log.append(&key, &largest).unwrap();

    let records = common::read_all(&log, 0);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].offset, at.offset);
    assert_eq!(records[0].payload.as_ref(), &largest[..]);
    assert_eq!(records[1].key.as_ref(), &key[..]);
    log.close().unwrap();
}

/// The `InvalidOptions` message of opening a new log with `options`.
fn refusal(options: Options) -> String {
    let dir = tempfile::tempdir().unwrap();
    match Log::open(dir.path().join("log"), options) {
        Err(error @ Error::InvalidOptions(_)) => error.to_string(),
        Err(error) => panic!("{error:?}"),
        Ok(_) => panic!("options accepted"),
    }
}

#[test]
fn explicit_limits_that_do_not_fit_are_refused_naming_the_option_and_the_value_that_fits() {
    let message = refusal(smallest_segments().batch_bytes_max(BATCH_FITS as u32 + 1));
    assert!(
        message.contains("set batch_bytes_max to at most"),
        "{message}"
    );
    assert!(message.contains(&BATCH_FITS.to_string()), "{message}");

    let message = refusal(smallest_segments().event_bytes_max(1 << 20));
    assert!(
        message.contains("set event_bytes_max to at most"),
        "{message}"
    );
    assert!(message.contains(&BATCH_FITS.to_string()), "{message}");

    let frame_fits = SEGMENT_BYTES_MIN - 64 - (4096 + 50);
    let message = refusal(smallest_segments().queue_bytes_max(frame_fits - 1));
    assert!(
        message.contains("set queue_bytes_max to at least"),
        "{message}"
    );
    assert!(message.contains(&frame_fits.to_string()), "{message}");
}

#[test]
fn explicit_limits_that_fit_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let options = smallest_segments().event_bytes_max(2000);
    let log = Log::open(dir.path(), options).unwrap();
    let error = log.append(b"k", &[0u8; 2001]).unwrap_err();
    assert!(
        matches!(error, Error::EventTooLarge { limit: 2000, .. }),
        "{error:?}"
    );
    log.close().unwrap();
}
