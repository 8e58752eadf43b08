//! `annal demo`: an event-sourced bank on a local directory, in a few seconds: tellers append
//! with `Sync`, expected versions and event ids; a projection reads every account back by key
//! and the whole log in global order; a child process is killed with SIGKILL mid-append and
//! every append it acknowledged is found after recovery (`demo_crash.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use annal::{Durability, KeyAppend, Log, Options, Stats};
use clap::Args;

use crate::demo_bank::{account_key, Account, BankEvent};
use crate::demo_crash;
use crate::failure::{open_log, Failure};
use crate::output::{bytes_text, count_text};

/// Accounts whose balance is saved as a snapshot: one in this many.
const SNAPSHOT_EVERY_NTH_ACCOUNT: u32 = 20;

/// Run an event-sourced bank, kill a writer with SIGKILL, show every acknowledged event survives.
///
/// Tellers append with Sync, expected versions and event ids; a projection reads every account
/// back by key and the whole log in global order; a child process appending with Sync is
/// killed with SIGKILL mid-append, and every append it acknowledged is found after recovery.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    annal demo                          # in ./annal-data\n  \
    annal demo --dir /tmp/bank --operations 100000 --tellers 8\n\n\
    Running it again on the same directory continues every account where it was. Look at the \
    result with `annal stats annal-data`, `annal dump annal-data --key account-0007` or \
    `annal verify annal-data`.")]
pub struct DemoArgs {
    /// Directory of the log (created if missing; reused if it holds a log).
    #[arg(long, default_value = "annal-data")]
    pub dir: PathBuf,
    /// Bank operations to run (an operation appends one event, or two for a transfer).
    #[arg(long, alias = "events", default_value_t = 20_000)]
    pub operations: u64,
    /// Accounts: the aggregates, one stream each.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub accounts: u32,
    /// Threads appending at once (each owns a share of the accounts).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub tellers: u32,
}

/// The demo's log options: `Sync`, and a small journal, so that the demo leaves no more on
/// disk than its data needs (the default journal grows to 32 MiB before it wraps). A journal
/// must hold two largest batches, so the batch limit comes down with it; the demo's batches are
/// a few dozen bytes.
pub fn options() -> Options {
    Options::default()
        .durability(Durability::Sync)
        .journal_bytes(JOURNAL_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX)
}

/// The demo's journal: a small one keeps the demo's files small; much below this, checkpoints
/// (which sync every segment written since the previous one) come so often that they halve the
/// demo's throughput.
const JOURNAL_BYTES: u64 = 4 << 20;
/// The demo's largest batch.
const BATCH_BYTES_MAX: u32 = 64 << 10;

pub fn run(args: &DemoArgs) -> Result<(), Failure> {
    let options = options();
    println!(
        "annal demo: an event-sourced bank in {}",
        args.dir.display()
    );
    let log = open_log(&args.dir, options.clone(), "demo")?;
    let existing = events_in(&log)?;
    println!(
        "1. opened the log: {} partitions, {} events already there",
        log.partition_count(),
        count_text(existing)
    );

    let started = Instant::now();
    let accounts = (0..args.accounts)
        .map(|n| Account::load(&log, &account_key(n)))
        .collect::<Result<Vec<_>, _>>()?;
    let known = accounts.iter().filter(|a| a.version.is_some()).count();
    println!(
        "2. loaded {} accounts ({known} with history) from snapshots and events in {:.1} ms",
        args.accounts,
        ms(started)
    );

    let before = log.stats();
    let started = Instant::now();
    let accounts = run_tellers(&log, args, accounts)?;
    let seconds = started.elapsed().as_secs_f64();
    let run = log.stats().since(&before);
    let appended = events_in(&log)? - existing;
    println!(
        "3. {} tellers ran {} operations: {} events appended with Sync in {:.2} s \
         ({} events/s; {} fsyncs, {:.1} events per fsync)",
        args.tellers,
        count_text(args.operations),
        count_text(appended),
        seconds,
        count_text((appended as f64 / seconds.max(1e-9)) as u64),
        count_text(run.data_syncs),
        appended as f64 / run.data_syncs.max(1) as f64
    );

    project(&log, args, &accounts)?;
    log.close()
        .map_err(|e| Failure::annal(format!("close {}", args.dir.display()), e))?;

    let crash = demo_crash::crash_and_recover(&args.dir, args.accounts, &options)?;
    summary(args, &crash.log, existing, appended, seconds, &run)?;
    crash
        .log
        .close()
        .map_err(|e| Failure::annal(format!("close {}", args.dir.display()), e))
}

/// The tellers: each owns the accounts `n % tellers == t`, so its expected versions hold
/// unless something else writes to them (then the append fails with a conflict, which is
/// reported).
fn run_tellers(
    log: &Log,
    args: &DemoArgs,
    accounts: Vec<Account>,
) -> Result<Vec<Account>, Failure> {
    let mut shares: Vec<Vec<(u32, Account)>> = vec![Vec::new(); args.tellers as usize];
    for (n, account) in accounts.into_iter().enumerate() {
        shares[n % args.tellers as usize].push((n as u32, account));
    }
    let tellers = u64::from(args.tellers);
    let operations_of =
        |t: u64| args.operations / tellers + u64::from(t < args.operations % tellers);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(t, share)| {
                let operations = operations_of(t as u64);
                scope.spawn(move || teller(log, t as u64, share, operations))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Failure::message("a teller thread panicked")))
            })
            .collect::<Vec<_>>()
    });
    let mut all = BTreeMap::new();
    for result in results {
        all.extend(result?);
    }
    Ok(all.into_values().collect())
}

/// One teller's operations on its accounts.
fn teller(
    log: &Log,
    seed: u64,
    mut share: Vec<(u32, Account)>,
    operations: u64,
) -> Result<Vec<(u32, Account)>, Failure> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    if share.is_empty() {
        return Ok(share);
    }
    for _ in 0..operations {
        let i = rng.below(share.len() as u64) as usize;
        let (n, account) = share[i];
        let key = account_key(n);
        let amount = 1 + rng.below(500);
        let roll = rng.below(100);
        let event = match account.version {
            None => BankEvent::Opened,
            Some(_) if roll < 20 && share.len() > 1 => {
                let j = (i + 1 + rng.below(share.len() as u64 - 1) as usize) % share.len();
                if account.balance >= amount && share[j].1.version.is_some() {
                    let (from, to) = transfer(log, (n, account), share[j], amount)?;
                    share[i].1 = from;
                    share[j].1 = to;
                    continue;
                }
                BankEvent::Deposited(amount)
            }
            Some(_) if roll < 55 && account.balance >= amount => BankEvent::Withdrawn(amount),
            Some(_) => BankEvent::Deposited(amount),
        };
        let payload = event.payload();
        let version = account.next_version();
        let appended = log
            .append_to(
                key.as_bytes(),
                account.expected(),
                &[event.event(&payload, key.as_bytes(), version)],
            )
            .map_err(|e| Failure::annal(format!("append to {key}"), e))?;
        share[i].1.apply(event, appended.version)?;
    }
    Ok(share)
}

/// A transfer: a withdrawal from one account and a deposit to another in one atomic
/// `append_multi`, each guarded by its account's expected version. Returns both accounts' new
/// states.
fn transfer(
    log: &Log,
    (from_n, mut from): (u32, Account),
    (to_n, mut to): (u32, Account),
    amount: u64,
) -> Result<(Account, Account), Failure> {
    let (from_key, to_key) = (account_key(from_n), account_key(to_n));
    let sent = BankEvent::TransferSent(amount);
    let received = BankEvent::TransferReceived(amount);
    let (sent_payload, received_payload) = (sent.payload(), received.payload());
    let sent_events = [sent.event(&sent_payload, from_key.as_bytes(), from.next_version())];
    let received_events = [received.event(&received_payload, to_key.as_bytes(), to.next_version())];
    let appended = log
        .append_multi(&[
            KeyAppend::new(from_key.as_bytes(), from.expected(), &sent_events),
            KeyAppend::new(to_key.as_bytes(), to.expected(), &received_events),
        ])
        .map_err(|e| Failure::annal(format!("transfer from {from_key} to {to_key}"), e))?;
    from.apply(sent, appended[0].version)?;
    to.apply(received, appended[1].version)?;
    Ok((from, to))
}

/// The projection: every account by key (`load`: snapshot and the events after it) and the
/// whole log in global order (`read_all`); both must give the tellers' balances.
fn project(log: &Log, args: &DemoArgs, tellers: &[Account]) -> Result<(), Failure> {
    let started = Instant::now();
    let mut by_key = Vec::with_capacity(tellers.len());
    for n in 0..args.accounts {
        by_key.push(Account::load(log, &account_key(n))?);
    }
    let by_key_ms = ms(started);
    let started = Instant::now();
    let mut global: BTreeMap<Vec<u8>, Account> = BTreeMap::new();
    let mut next_global = 0;
    for record in log.read_all(0)? {
        let record = record.map_err(|e| Failure::annal("read the log in global order", e))?;
        if record.global_position != next_global {
            return Err(Failure::message(format!(
                "read_all returned global position {} where {next_global} should come",
                record.global_position
            )));
        }
        next_global += 1;
        if record.key.starts_with(b"account-") {
            let account = global.entry(record.key.to_vec()).or_default();
            account.apply(BankEvent::decode(&record)?, record.version)?;
        }
    }
    let global_ms = ms(started);
    for (n, expected) in tellers.iter().enumerate() {
        let key = account_key(n as u32);
        let from_log = global.get(key.as_bytes()).copied().unwrap_or_default();
        if by_key[n] != *expected || from_log != *expected {
            return Err(Failure::message(format!(
                "{key}: the tellers have {expected:?}, load gives {:?}, read_all gives {from_log:?}",
                by_key[n]
            )));
        }
    }
    let total: u64 = tellers.iter().map(|a| a.balance).sum();
    println!(
        "4. projection: {} accounts by key (load) in {by_key_ms:.1} ms and {} events in global \
         order (read_all) in {global_ms:.1} ms agree with the tellers; total balance {}",
        args.accounts,
        count_text(next_global),
        count_text(total)
    );
    group_projection(log)?;
    let mut saved = 0;
    for n in (0..args.accounts).step_by(SNAPSHOT_EVERY_NTH_ACCOUNT as usize) {
        let account = tellers[n as usize];
        if let Some(version) = account.version {
            let key = account_key(n);
            log.save_snapshot(
                key.as_bytes(),
                version,
                account.balance.to_string().as_bytes(),
            )
            .map_err(|e| Failure::annal(format!("save a snapshot of {key}"), e))?;
            saved += 1;
        }
    }
    println!("   saved snapshots of {saved} accounts (the next load of each starts from it)");
    Ok(())
}

/// The projection as a consumer group: it resumes from its committed cursors (everything on a
/// new directory, what came since on a re-run), in order per partition, committing each batch.
fn group_projection(log: &Log) -> Result<(), Failure> {
    let group = log
        .group(PROJECTION_GROUP)
        .map_err(|e| Failure::annal("open the projection's consumer group", e))?;
    let lag: u64 = group.lag().iter().sum();
    let mut consumer = group
        .join()
        .map_err(|e| Failure::annal("join the projection's consumer group", e))?;
    let started = Instant::now();
    let mut delivered = 0u64;
    let mut last_offsets: BTreeMap<u32, u64> = BTreeMap::new();
    loop {
        let batch = consumer
            .poll(1_000, std::time::Duration::from_millis(50))
            .map_err(|e| Failure::annal("poll the projection's consumer group", e))?;
        for delivery in &batch {
            let record = &delivery.record;
            if let Some(&last) = last_offsets.get(&record.partition) {
                if record.offset != last + 1 {
                    return Err(Failure::message(format!(
                        "the consumer group delivered partition {} offset {} after {last}",
                        record.partition, record.offset
                    )));
                }
            }
            last_offsets.insert(record.partition, record.offset);
            delivered += 1;
        }
        consumer
            .commit(&batch)
            .map_err(|e| Failure::annal("commit the projection's consumer group", e))?;
        if batch.caught_up && batch.is_empty() {
            break;
        }
    }
    let lag_after: u64 = group.lag().iter().sum();
    if delivered < lag || lag_after != 0 {
        return Err(Failure::message(format!(
            "the consumer group delivered {delivered} events of {lag} it lagged, and lags {lag_after} after"
        )));
    }
    println!(
        "   consumer group {PROJECTION_GROUP:?}: {} events delivered in order from its committed \
         cursors in {:.1} ms, committed every 1,000; lag now 0 (a re-run resumes after them)",
        count_text(delivered),
        ms(started)
    );
    Ok(())
}

/// The consumer group of the demo's projection.
const PROJECTION_GROUP: &str = "demo-projection";

fn summary(
    args: &DemoArgs,
    log: &Log,
    existing: u64,
    appended: u64,
    seconds: f64,
    run: &Stats,
) -> Result<(), Failure> {
    let events = events_in(log)?;
    println!("6. summary");
    println!(
        "   events: {} in the log ({} before this run, {} by the tellers, {} by the crashed child)",
        count_text(events),
        count_text(existing),
        count_text(appended),
        count_text(events - existing - appended)
    );
    println!(
        "   aggregates: {} accounts",
        count_text(u64::from(args.accounts))
    );
    println!(
        "   throughput: {} events/s with Sync from {} tellers ({:.1} events per fsync)",
        count_text((appended as f64 / seconds.max(1e-9)) as u64),
        args.tellers,
        appended as f64 / run.data_syncs.max(1) as f64
    );
    println!(
        "   recovery: {}",
        demo_crash::recovery_text(log.recovery_report())
    );
    let (bytes, files) = disk_usage(&args.dir)?;
    println!(
        "   on disk: {} in {files} files (see `annal stats {}`)",
        bytes_text(bytes),
        args.dir.display()
    );
    Ok(())
}

/// Events in the log: the sum of the partitions' end offsets.
fn events_in(log: &Log) -> Result<u64, Failure> {
    let mut events = 0;
    for p in 0..log.partition_count() {
        events += log.end_offset(p)?;
    }
    Ok(events)
}

/// Bytes allocated on disk under `dir` and the number of files.
fn disk_usage(dir: &Path) -> Result<(u64, u64), Failure> {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut files) = (0, 0);
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| Failure::io("read directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Failure::io("read directory", &dir, e))?;
            let metadata = entry
                .metadata()
                .map_err(|e| Failure::io("stat", entry.path(), e))?;
            if metadata.is_dir() {
                dirs.push(entry.path());
            } else {
                bytes += metadata.blocks() * 512;
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// xorshift64*: the demo's operations, the same on every run with the same arguments.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}
