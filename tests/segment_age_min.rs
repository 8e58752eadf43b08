//! Bug: `Options::segment_age_max(Duration::ZERO)` was accepted and sealed a segment on every
//! write round (50 appends made 100 files); ages below `SEGMENT_AGE_MIN` are now refused.

use std::time::Duration;

use annal::{Error, Log, Options, SEGMENT_AGE_MIN};

#[test]
fn segment_age_below_the_minimum_is_refused_with_invalid_options() {
    let parent = tempfile::tempdir().unwrap();
    let too_short = [
        Duration::ZERO,
        Duration::from_millis(1),
        SEGMENT_AGE_MIN - Duration::from_nanos(1),
    ];
    for (i, age) in too_short.into_iter().enumerate() {
        let dir = parent.path().join(format!("log-{i}"));
        let error = Log::open(&dir, Options::default().segment_age_max(age)).unwrap_err();
        assert!(
            matches!(error, Error::InvalidOptions(_)),
            "{age:?}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("segment_age_max"), "{message}");
        assert!(
            !dir.exists(),
            "options are checked before anything is created"
        );
    }
}

#[test]
fn segment_age_of_the_minimum_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        Options::default()
            .partitions(1)
            .segment_age_max(SEGMENT_AGE_MIN),
    )
    .unwrap();
    log.append(b"k", b"v").unwrap();
    log.close().unwrap();
}
