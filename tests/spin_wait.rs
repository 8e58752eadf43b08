//! `Options::spin_wait`: under `Sync` the writer spins for a lone appender's next append, and the
//! appender through its fsync, unless told not to; never outside `Sync`. Either way every append is acknowledged durable and
//! read back.

use annal::{Durability, Log, Options};

fn appends_one_at_a_time(options: Options) -> annal::Stats {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options).unwrap();
    for i in 0..50u32 {
        let appended = log.append(b"account-1", &i.to_le_bytes()[..]).unwrap();
        assert_eq!(appended.version, u64::from(i));
        // The writer spins only when it finds no append queued after a round: a pause makes
        // sure it does, whatever else the machine runs.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    log.flush().unwrap();
    let stats = log.stats();
    log.close().unwrap();
    let log = Log::open(dir.path(), Options::default()).unwrap();
    let versions: Vec<u64> = log
        .read_key(b"account-1", 0)
        .unwrap()
        .iter()
        .map(|record| record.version)
        .collect();
    assert_eq!(versions, (0..50).collect::<Vec<_>>());
    stats
}

#[test]
fn a_lone_sync_appender_and_the_writer_spin_unless_turned_off() {
    let spinning = appends_one_at_a_time(Options::default());
    assert!(spinning.spins > 0, "{spinning:?}");
    assert!(spinning.ticket_spins > 0, "{spinning:?}");
    let sleeping = appends_one_at_a_time(Options::default().spin_wait(false));
    assert_eq!(sleeping.spins, 0, "{sleeping:?}");
    assert_eq!(sleeping.ticket_spins, 0, "{sleeping:?}");
    assert!(
        sleeping.data_syncs >= 50,
        "one fsync per lone append: {sleeping:?}"
    );
    let buffered = appends_one_at_a_time(Options::default().durability(Durability::Buffered));
    assert_eq!(buffered.spins, 0, "{buffered:?}");
    assert_eq!(buffered.ticket_spins, 0, "{buffered:?}");
}
