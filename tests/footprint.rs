//! What a log costs is proportional to its data, not to its partition count: a new empty log
//! takes kilobytes of disk, two threads (the writer and the indexer) and no partition directory, at any partition count; and a
//! written partition holds one open file.
//!
//! Regression test for a fixed defect: an empty default log (8 partitions) took 257 MB of disk
//! and 9 threads; 64 partitions took 2.1 GB and 65 threads; 4096 partitions failed with EMFILE.
//!
//! One test per file: it counts the threads and open files of the whole process.

use std::path::Path;

use annal::{Log, Options};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Bytes of disk the tree under `dir` occupies (allocated blocks, not lengths).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

#[test]
fn an_empty_log_costs_kilobytes_two_threads_and_one_file_per_written_partition() {
    for partitions in [1u32, 8, 64, 1024, 4096] {
        let root = tempfile::tempdir().unwrap();
        let threads_before = threads();
        let files_before = open_files();
        let log = Log::open(root.path(), Options::default().partitions(partitions)).unwrap();
        assert_eq!(
            threads() - threads_before,
            2,
            "{partitions} partitions: one writer and one indexer"
        );
        // The lock and the journal stay open.
        assert_eq!(open_files() - files_before, 2, "{partitions} partitions");
        let bytes = disk_bytes(root.path());
        // annal.meta, the lock and the journal's two checkpoint slots.
        let slots = 2 * (64 + 24 * u64::from(partitions)).next_multiple_of(4096);
        assert!(
            bytes <= slots + 16 * 1024,
            "{partitions} partitions take {bytes} bytes"
        );
        let dirs = std::fs::read_dir(root.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().metadata().unwrap().is_dir())
            .count();
        assert_eq!(
            dirs, 0,
            "partition directories are created by their first append"
        );
        if partitions <= 1024 {
            // One open file per partition that was written, whatever the count.
            for p in 0..64u32 {
                let key = (0..)
                    .map(|i| format!("key-{i}"))
                    .find(|k| log.partition_for(k.as_bytes()) == p % partitions)
                    .unwrap();
                log.append(key.as_bytes(), b"event").unwrap();
            }
            let written = partitions.min(64) as usize;
            assert_eq!(
                open_files() - files_before,
                2 + written,
                "{partitions} partitions"
            );
        }
        log.close().unwrap();
        assert_eq!(threads(), threads_before, "the writer stopped");
    }
}
