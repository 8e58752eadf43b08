//! Bug: error messages repeated their cause: `Error::Io`, `AppendFailed` and `Poisoned` embedded
//! their source's text although `source()` returns it, so a printed chain showed it twice.

use std::error::Error as _;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use annal::{Error, LostRange};

fn disk_full() -> Error {
    Error::DiskFull {
        op: "fallocate",
        path: PathBuf::from("/log/p0000/00000000000000000000.seg.tmp"),
        source: io::Error::from(io::ErrorKind::StorageFull),
    }
}

fn io() -> Error {
    Error::Io {
        op: "fdatasync",
        path: PathBuf::from("/log/p0000/00000000000000000000.seg"),
        source: io::Error::other("the device reported an I/O error"),
    }
}

/// Every variant that wraps a cause, including wrappers of wrappers.
fn wrappers() -> Vec<Error> {
    vec![
        io(),
        disk_full(),
        Error::AppendFailed {
            partition: 3,
            source: Arc::new(disk_full()),
        },
        Error::AppendFailed {
            partition: 3,
            source: Arc::new(io()),
        },
        Error::Poisoned {
            source: Arc::new(io()),
        },
        Error::Poisoned {
            source: Arc::new(Error::AppendFailed {
                partition: 3,
                source: Arc::new(disk_full()),
            }),
        },
        Error::WritesStalled {
            source: Arc::new(disk_full()),
        },
        Error::AppendsLost {
            lost: Arc::from(vec![LostRange::new(3, 10, 12)]),
            source: Arc::new(io()),
        },
    ]
}

#[test]
fn no_error_message_contains_its_source_message() {
    for error in wrappers() {
        let message = format!("{error}");
        let source = format!("{}", error.source().expect("a wrapper has a source"));
        assert!(
            !message.contains(&source),
            "{error:?}: {message:?} repeats its source {source:?}"
        );
    }
}

#[test]
fn a_printed_chain_shows_every_cause_once() {
    for error in wrappers() {
        let mut chain = vec![format!("{error}")];
        let mut cause = error.source();
        while let Some(next) = cause {
            chain.push(format!("{next}"));
            cause = next.source();
        }
        for (i, message) in chain.iter().enumerate() {
            assert!(!message.is_empty());
            for later in &chain[i + 1..] {
                assert!(
                    !message.contains(later.as_str()),
                    "{chain:?}: {message:?} repeats {later:?}"
                );
            }
        }
    }
}

#[test]
fn messages_keep_their_own_part() {
    let message = io().to_string();
    assert!(message.contains("fdatasync"), "{message}");
    assert!(message.contains("00000000000000000000.seg"), "{message}");
    let message = disk_full().to_string();
    assert!(message.contains("disk full"), "{message}");
    let append = Error::AppendFailed {
        partition: 3,
        source: Arc::new(disk_full()),
    };
    assert!(append.to_string().contains("partition 3"), "{append}");
    assert!(append.is_disk_full());
    let poisoned = Error::Poisoned {
        source: Arc::new(io()),
    };
    assert!(poisoned.to_string().contains("reopen"), "{poisoned}");
}
