//! `Reader::next_ref` returns the same records as the iterator, borrowed from the mapping: every
//! field, headers and event ids included, across segment rolls and padding frames; it stops at
//! the visible end and can be polled again; damage is an error, then nothing.

mod common;

use annal::{Durability, Event, Log};

#[test]
fn borrowed_records_are_the_owned_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), common::small_segments(Durability::Sync)).unwrap();
    for i in 0..600u32 {
        let payload = format!("event {i} {}", "x".repeat(i as usize % 200));
        let event = Event::new(&payload).header("type", "T").header("n", "1");
        let event = if i % 3 == 0 {
            event.id(u128::from(i))
        } else {
            event
        };
        log.append_batch(format!("key-{}", i % 7).as_bytes(), [event])
            .unwrap();
    }
    for partition in 0..log.partition_count() {
        let owned: Vec<_> = log
            .read(partition, 0)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let mut reader = log.read(partition, 0).unwrap();
        let mut i = 0;
        while let Some(record) = reader.next_ref() {
            let record = record.unwrap();
            let expected = &owned[i];
            assert_eq!(record.partition, expected.partition);
            assert_eq!(record.offset, expected.offset);
            assert_eq!(record.version, expected.version);
            assert_eq!(record.global_position, expected.global_position);
            assert_eq!(record.timestamp_ms, expected.timestamp_ms);
            assert_eq!(record.event_id, expected.event_id);
            assert_eq!(record.key, expected.key.as_ref());
            assert_eq!(record.payload, expected.payload.as_ref());
            let headers: Vec<(Vec<u8>, Vec<u8>)> = record
                .headers()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(headers, common::headers_of(expected));
            i += 1;
        }
        assert_eq!(i, owned.len());
        // At the visible end: nothing now, the next record once appended.
        let key = (0..)
            .map(|n| format!("more-{n}"))
            .find(|k| log.partition_for(k.as_bytes()) == partition)
            .unwrap();
        log.append(key.as_bytes(), b"later").unwrap();
        let later = reader.next_ref().expect("polled again").unwrap();
        assert_eq!(later.payload, b"later");
    }
}

#[test]
fn a_damaged_frame_is_an_error_then_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        common::small_segments(Durability::Sync).partitions(1),
    )
    .unwrap();
    for i in 0..50u32 {
        log.append(b"k", format!("event {i}").as_bytes()).unwrap();
    }
    log.close().unwrap();
    let segment = common::segment_files::segment_path(dir.path(), 0, 0);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[64 + 300] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let log = Log::open(dir.path(), common::small_segments(Durability::Sync)).unwrap();
    let mut reader = log.read(0, 0).unwrap();
    let mut good = 0;
    let error = loop {
        match reader.next_ref() {
            Some(Ok(_)) => good += 1,
            Some(Err(error)) => break error,
            None => panic!("the damage was not reported"),
        }
    };
    assert!(error.is_corruption(), "{error}");
    assert!(good < 50);
    assert!(reader.next_ref().is_none(), "nothing after an error");
}
