//! Bug (found by the crash-model fuzzer, `fuzz/seeds/crash_model/crash-dd8498ca...`): when the
//! sync of the log directory after creating a partition's directory failed, the append failed
//! cleanly, but the next append found the directory there and never synced its entry again. The
//! log then wrote segments and a checkpoint into a directory whose entry a power cut could still
//! take away: the image did not open ("the segment named by the checkpoint is missing").
//!
//! A directory annal creates, or finds already there, has its entry made durable before anything
//! in it is relied on.

use annal::io::FailPoints;
use annal::{Durability, Error, Log, Options};

fn is_directory_sync(error: &Error) -> bool {
    matches!(
        error,
        Error::Io {
            op: "fsync directory",
            ..
        }
    )
}

fn options(fail_points: &std::sync::Arc<FailPoints>) -> Options {
    Options::default()
        .partitions(1)
        .durability(Durability::Sync)
        .segment_bytes(64 << 10)
        .journal_bytes(1 << 20)
        .fail_points(fail_points.clone())
}

#[test]
fn a_failed_sync_of_a_new_partition_directory_is_made_good_before_the_partition_is_used() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let fail_points = FailPoints::new();
    fail_points.record_crashes(&dir);
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    // The partition's first append creates its directory; the sync of the log directory that
    // follows fails.
    fail_points.fail_syncs(1);
    let failed = log.append(b"key", b"event 0");
    match &failed {
        Err(Error::AppendFailed { source, .. }) => assert!(
            is_directory_sync(source),
            "the failed sync is the log directory's: {source:?}"
        ),
        other => panic!("{other:?}"),
    }
    fail_points.clear_failures();
    let mut acked = Vec::new();
    for n in 1..=20u32 {
        let payload = format!("event {n}");
        let at = log.append(b"key", payload.as_bytes()).unwrap();
        acked.push((at.offset, payload));
    }
    // A clean close writes a checkpoint naming the partition's segment. Whatever a power cut
    // then keeps of what was not synced, every acknowledged append is there.
    log.close().unwrap();
    let instant = fail_points.recorded_ops();
    for seed in 0..40 {
        let image = root.path().join(format!("image-{seed}"));
        fail_points.crash_image(instant, &image, seed).unwrap();
        let reopened = Log::open(&image, Options::default().partitions(1))
            .unwrap_or_else(|e| panic!("seed {seed}: the image does not open: {e}"));
        let found: Vec<(u64, String)> = reopened
            .read(0, 0)
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.offset, String::from_utf8(r.payload.to_vec()).unwrap())
            })
            .collect();
        assert_eq!(found, acked, "seed {seed}");
        reopened.close().unwrap();
        std::fs::remove_dir_all(&image).unwrap();
    }
}

/// The same for the snapshots directory, the parent of each key's snapshot directory: when the
/// sync after creating it failed, a later save must not rely on finding it.
#[test]
fn a_failed_sync_of_the_new_snapshots_directory_is_made_good_before_a_snapshot_is_saved() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let fail_points = FailPoints::new();
    let log = Log::open(&dir, options(&fail_points)).unwrap();
    for n in 0..5u32 {
        log.append(b"key", format!("event {n}").as_bytes()).unwrap();
    }
    fail_points.record_crashes(&dir);
    fail_points.fail_syncs(1);
    let failed = log.save_snapshot(b"key", 3, b"state at 3").unwrap_err();
    assert!(is_directory_sync(&failed), "{failed:?}");
    fail_points.clear_failures();
    log.save_snapshot(b"key", 4, b"state at 4").unwrap();
    let instant = fail_points.recorded_ops();
    for seed in 0..40 {
        let image = root.path().join(format!("image-{seed}"));
        fail_points.crash_image(instant, &image, seed).unwrap();
        // The image holds what the recording saw of the log directory: the snapshots only;
        // the log itself was durable before the recording started, so it is copied in.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let target = image.join(entry.file_name());
            if !target.exists() && entry.file_name() != "snapshots" {
                copy_tree(&entry.path(), &target);
            }
        }
        let reopened = Log::open(&image, Options::default().partitions(1)).unwrap();
        let (snapshot, rest) = reopened.load(b"key").unwrap();
        let snapshot = snapshot.unwrap_or_else(|| panic!("seed {seed}: the snapshot is lost"));
        assert_eq!(
            (snapshot.version, &snapshot.state[..]),
            (4, &b"state at 4"[..])
        );
        assert!(rest.is_empty(), "seed {seed}");
        reopened.close().unwrap();
        std::fs::remove_dir_all(&image).unwrap();
    }
    log.close().unwrap();
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else if !from.ends_with("annal.lock") {
        std::fs::copy(from, to).unwrap();
    }
}
