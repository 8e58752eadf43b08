//! An event-sourced bank account on annal: each account is one key's stream of events, its
//! balance is the fold of those events, and the log enforces the rules that need atomicity.
//! Run with `cargo run --release --example bank` (writes to a temporary directory).
//!
//! - Commands load the account, check the rule (no overdraft), and append with the version they
//!   loaded (`Expected::Exact`): a concurrent change makes the append fail with
//!   `Error::Conflict`, and the command reloads and decides again.
//! - A transfer appends `Withdrawn` to one account and `Deposited` to another in one
//!   `append_multi` call (both or neither, even across a crash), each event with an id derived
//!   from the transfer's id, so that retrying the transfer writes nothing.
//! - Every `SNAPSHOT_EVERY` events the balance is saved as a snapshot, so loading an account
//!   folds only the events after it.
//! - `read_key_until` gives the account as it was at an earlier moment.

use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use annal::{Error, Event, Expected, KeyAppend, Log, Options, Record};

type Result<T> = std::result::Result<T, Box<dyn StdError + Send + Sync>>;

/// Snapshot an account each time its stream reaches a multiple of this many events.
const SNAPSHOT_EVERY: u64 = 10;
/// Conflicts a command accepts before it gives up: every conflict means another command
/// succeeded, so this bounds waiting, not correctness.
const ATTEMPTS_MAX: u32 = 1_000;
/// The high bits of transfer event ids, so that they cannot meet ids minted for anything else.
const TRANSFER_ID_SPACE: u128 = 0x7472_616e_7366_6572 << 64; // "transfer"

/// What happens to an account, stored as short text (`deposit:100`): readable with the CLI.
enum BankEvent {
    Opened,
    Deposited(u64),
    Withdrawn(u64),
}

impl BankEvent {
    fn encode(&self) -> String {
        match self {
            BankEvent::Opened => "opened".to_owned(),
            BankEvent::Deposited(amount) => format!("deposit:{amount}"),
            BankEvent::Withdrawn(amount) => format!("withdraw:{amount}"),
        }
    }

    fn decode(record: &Record) -> Result<BankEvent> {
        let text = std::str::from_utf8(&record.payload)?;
        Ok(match text.split_once(':') {
            None if text == "opened" => BankEvent::Opened,
            Some(("deposit", amount)) => BankEvent::Deposited(amount.parse()?),
            Some(("withdraw", amount)) => BankEvent::Withdrawn(amount.parse()?),
            _ => return Err(format!("unknown event {text:?}").into()),
        })
    }
}

/// An account as its events left it, and the version it was loaded at.
#[derive(Clone, Copy, Debug, Default)]
struct Account {
    opened: bool,
    balance: u64,
    /// The version of the last event folded in; `None` for an account with no events.
    version: Option<u64>,
}

impl Account {
    fn apply(&mut self, event: &BankEvent) {
        match event {
            BankEvent::Opened => self.opened = true,
            BankEvent::Deposited(amount) => self.balance += amount,
            // Events are facts: the rule was checked before this one was written.
            BankEvent::Withdrawn(amount) => self.balance -= amount,
        }
    }

    fn fold(records: &[Record], mut account: Account) -> Result<Account> {
        for record in records {
            account.apply(&BankEvent::decode(record)?);
            account.version = Some(record.version);
        }
        Ok(account)
    }

    /// The newest snapshot (a balance) and the events after it.
    fn load(log: &Log, key: &str) -> Result<Account> {
        let (snapshot, rest) = log.load(key.as_bytes())?;
        let start = match snapshot {
            Some(snapshot) => Account {
                opened: true,
                balance: std::str::from_utf8(&snapshot.state)?.parse()?,
                version: Some(snapshot.version),
            },
            None => Account::default(),
        };
        Account::fold(&rest, start)
    }

    /// What an append after this load expects: nothing changed since.
    fn expected(&self) -> Expected {
        self.version.map_or(Expected::NoStream, Expected::Exact)
    }

    fn open(&self) -> Option<BankEvent> {
        self.version.is_none().then_some(BankEvent::Opened)
    }

    fn deposit(&self, amount: u64) -> Option<BankEvent> {
        self.opened.then_some(BankEvent::Deposited(amount))
    }

    /// The rule: a withdrawal never makes the balance negative.
    fn withdraw(&self, amount: u64) -> Option<BankEvent> {
        (self.opened && self.balance >= amount).then_some(BankEvent::Withdrawn(amount))
    }
}

/// What became of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transfer {
    Applied,
    /// Its ids were in the log already: this was a retry, and nothing was written.
    AlreadyDone,
    /// By the rule (or an account is not open): nothing was written.
    Refused,
}

struct Bank {
    log: Log,
    conflicts: AtomicU64,
}

impl Bank {
    /// Runs a command on one account: load, decide (`None`: refused by a rule), append at the
    /// loaded version; on a conflict, load again. Returns the new balance, or `None` if refused.
    fn execute(
        &self,
        key: &str,
        decide: impl Fn(&Account) -> Option<BankEvent>,
    ) -> Result<Option<u64>> {
        for _ in 0..ATTEMPTS_MAX {
            let mut account = Account::load(&self.log, key)?;
            let Some(event) = decide(&account) else {
                return Ok(None);
            };
            let payload = event.encode();
            match self
                .log
                .append_to(key.as_bytes(), account.expected(), &[Event::new(&payload)])
            {
                Ok(at) => {
                    account.apply(&event);
                    self.snapshot_if_due(key, at.version, &account)?;
                    return Ok(Some(account.balance));
                }
                Err(Error::Conflict { .. }) => self.conflicts.fetch_add(1, Ordering::Relaxed),
                Err(error) => return Err(error.into()),
            };
        }
        Err(format!("{key}: still conflicting after {ATTEMPTS_MAX} attempts").into())
    }

    /// Moves `amount` between accounts: both events or neither, and at most once per
    /// `transfer_id` however often it is sent.
    fn transfer(&self, transfer_id: u64, from: &str, to: &str, amount: u64) -> Result<Transfer> {
        let id = TRANSFER_ID_SPACE | u128::from(transfer_id) << 1;
        let (withdrawn, deposited) = (
            BankEvent::Withdrawn(amount).encode(),
            BankEvent::Deposited(amount).encode(),
        );
        let (out, into) = (
            [Event::new(&withdrawn).id(id)],
            [Event::new(&deposited).id(id | 1)],
        );
        for _ in 0..ATTEMPTS_MAX {
            let (mut source, mut target) = (
                Account::load(&self.log, from)?,
                Account::load(&self.log, to)?,
            );
            // The rule is checked before the ids: a retry finds the transfer done only if the
            // source could still pay it (an application that must always tell keeps outcomes).
            if source.withdraw(amount).is_none() || !target.opened {
                return Ok(Transfer::Refused);
            }
            let appends = [
                KeyAppend::new(from.as_bytes(), source.expected(), &out),
                KeyAppend::new(to.as_bytes(), target.expected(), &into),
            ];
            match self.log.append_multi(&appends) {
                // A duplicate is decided before the versions: a retry is a no-op even though
                // the accounts moved on since the original transfer.
                Ok(at) if at[0].duplicate => return Ok(Transfer::AlreadyDone),
                Ok(at) => {
                    source.apply(&BankEvent::Withdrawn(amount));
                    target.apply(&BankEvent::Deposited(amount));
                    self.snapshot_if_due(from, at[0].version, &source)?;
                    self.snapshot_if_due(to, at[1].version, &target)?;
                    return Ok(Transfer::Applied);
                }
                Err(Error::Conflict { .. }) => self.conflicts.fetch_add(1, Ordering::Relaxed),
                Err(error) => return Err(error.into()),
            };
        }
        Err(format!("transfer {transfer_id}: still conflicting").into())
    }

    /// `account` is the state up to and including `version`.
    fn snapshot_if_due(&self, key: &str, version: u64, account: &Account) -> Result<()> {
        if (version + 1).is_multiple_of(SNAPSHOT_EVERY) {
            let state = account.balance.to_string();
            self.log
                .save_snapshot(key.as_bytes(), version, state.as_bytes())?;
        }
        Ok(())
    }

    fn balance(&self, key: &str) -> Result<u64> {
        Ok(Account::load(&self.log, key)?.balance)
    }
}

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("annal-bank-{}", std::process::id()));
    let bank = Bank {
        log: Log::open(&dir, Options::default().partitions(8))?,
        conflicts: AtomicU64::new(0),
    };
    for (key, deposit) in [("alice", 500), ("bob", 100), ("carol", 1_000)] {
        bank.execute(key, Account::open)?;
        bank.execute(key, |a| a.deposit(deposit))?;
    }

    // Two tellers empty carol's account at once, 40 at a time: the rule holds under the race.
    let withdrawn = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..30 {
                    if bank.execute("carol", |a| a.withdraw(40)).unwrap().is_some() {
                        withdrawn.fetch_add(40, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let carol = bank.balance("carol")?;
    assert_eq!(carol, 1_000 - withdrawn.load(Ordering::Relaxed));
    println!(
        "carol: two tellers asked for 2400, got {}; balance {carol}, {} conflicts retried",
        withdrawn.load(Ordering::Relaxed),
        bank.conflicts.load(Ordering::Relaxed)
    );

    // Transfer 7, sent twice (say the first reply was lost): the second writes nothing.
    let first = bank.transfer(7, "alice", "bob", 150)?;
    let retry = bank.transfer(7, "alice", "bob", 150)?;
    assert_eq!((first, retry), (Transfer::Applied, Transfer::AlreadyDone));
    println!(
        "transfer 7 (alice -> bob, 150): {first:?}, sent again: {retry:?}; alice {}, bob {}",
        bank.balance("alice")?,
        bank.balance("bob")?
    );

    // Enough deposits for snapshots; then load uses the newest one and folds only the rest.
    for _ in 0..12 {
        bank.execute("bob", |a| a.deposit(5))?;
    }
    let (snapshot, rest) = bank.log.load(b"bob")?;
    let snapshot = snapshot.ok_or("bob has a snapshot")?;
    println!(
        "bob: snapshot at version {} (balance {}), then {} events to fold; balance {}",
        snapshot.version,
        std::str::from_utf8(&snapshot.state)?,
        rest.len(),
        bank.balance("bob")?
    );

    // Balance as of a moment: the time of alice's last event so far. The operations after it
    // start a few milliseconds later, so that no event of theirs shares its millisecond.
    let last = bank.log.read_key(b"alice", 0)?;
    let before = last.last().ok_or("alice has events")?.timestamp_ms;
    std::thread::sleep(Duration::from_millis(2));
    bank.execute("alice", |a| a.withdraw(300))?;
    bank.execute("alice", |a| a.deposit(20))?;
    let then = bank.log.read_key_until(b"alice", before)?;
    let then = Account::fold(&then, Account::default())?;
    println!(
        "alice: balance {} now, {} before the last two operations",
        bank.balance("alice")?,
        then.balance
    );

    bank.log.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
