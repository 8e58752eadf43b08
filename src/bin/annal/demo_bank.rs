//! The demo's domain: bank accounts as event-sourced aggregates. Each account is one key's
//! stream; its balance is the fold of its events. Payloads are short text (`deposit:120`), so
//! that `annal dump` and `annal tail` show them as they are.

use annal::{Event, Record};

use crate::failure::Failure;

/// The key of account `n`.
pub fn account_key(n: u32) -> String {
    format!("account-{n:04}")
}

/// The id of the event at `version` of `key`: unique in the partition (it holds the key's hash),
/// and the same on every retry of the same append, so a retry writes nothing.
pub fn event_id(key: &[u8], version: u64) -> u128 {
    (u128::from(annal::key_hash(key)) << 64) | u128::from(version)
}

/// What happens to an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BankEvent {
    Opened,
    Deposited(u64),
    Withdrawn(u64),
    TransferSent(u64),
    TransferReceived(u64),
}

impl BankEvent {
    pub fn type_name(self) -> &'static str {
        match self {
            BankEvent::Opened => "Opened",
            BankEvent::Deposited(_) => "Deposited",
            BankEvent::Withdrawn(_) => "Withdrawn",
            BankEvent::TransferSent(_) => "TransferSent",
            BankEvent::TransferReceived(_) => "TransferReceived",
        }
    }

    pub fn payload(self) -> String {
        match self {
            BankEvent::Opened => "opened".to_owned(),
            BankEvent::Deposited(amount) | BankEvent::TransferReceived(amount) => {
                format!("deposit:{amount}")
            }
            BankEvent::Withdrawn(amount) | BankEvent::TransferSent(amount) => {
                format!("withdraw:{amount}")
            }
        }
    }

    /// The event to append as version `version` of `key`, with its type header and id.
    pub fn event<'p>(self, payload: &'p str, key: &[u8], version: u64) -> Event<'p> {
        Event::new(payload)
            .header("type", self.type_name())
            .id(event_id(key, version))
    }

    pub fn decode(record: &Record) -> Result<BankEvent, Failure> {
        let bad = || {
            Failure::message(format!(
                "{} version {}: {:?} is not a bank event",
                String::from_utf8_lossy(&record.key),
                record.version,
                String::from_utf8_lossy(&record.payload)
            ))
        };
        let text = std::str::from_utf8(&record.payload).map_err(|_| bad())?;
        let kind = record.header("type").map(|v| v.as_ref());
        Ok(match text.split_once(':') {
            None if text == "opened" => BankEvent::Opened,
            Some(("deposit", amount)) => {
                let amount = amount.parse().map_err(|_| bad())?;
                match kind {
                    Some(b"TransferReceived") => BankEvent::TransferReceived(amount),
                    _ => BankEvent::Deposited(amount),
                }
            }
            Some(("withdraw", amount)) => {
                let amount = amount.parse().map_err(|_| bad())?;
                match kind {
                    Some(b"TransferSent") => BankEvent::TransferSent(amount),
                    _ => BankEvent::Withdrawn(amount),
                }
            }
            _ => return Err(bad()),
        })
    }
}

/// An account as its events left it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub balance: u64,
    /// The version of the last event folded in; `None` before the first.
    pub version: Option<u64>,
}

impl Account {
    pub fn apply(&mut self, event: BankEvent, version: u64) -> Result<(), Failure> {
        match event {
            BankEvent::Opened => {}
            BankEvent::Deposited(amount) | BankEvent::TransferReceived(amount) => {
                self.balance += amount;
            }
            BankEvent::Withdrawn(amount) | BankEvent::TransferSent(amount) => {
                // The rule (no overdraft) was checked before the event was written.
                self.balance = self.balance.checked_sub(amount).ok_or_else(|| {
                    Failure::message(format!("version {version} overdraws an account"))
                })?;
            }
        }
        self.version = Some(version);
        Ok(())
    }

    pub fn fold(mut self, records: &[Record]) -> Result<Account, Failure> {
        for record in records {
            self.apply(BankEvent::decode(record)?, record.version)?;
        }
        Ok(self)
    }

    /// The account from its newest snapshot (its balance as text) and the events after it.
    pub fn load(log: &annal::Log, key: &str) -> Result<Account, Failure> {
        let (snapshot, rest) = log
            .load(key.as_bytes())
            .map_err(|e| Failure::annal(format!("load {key}"), e))?;
        let start = match snapshot {
            Some(snapshot) => Account {
                balance: std::str::from_utf8(&snapshot.state)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Failure::message(format!("{key}: unreadable snapshot")))?,
                version: Some(snapshot.version),
            },
            None => Account::default(),
        };
        start.fold(&rest)
    }

    /// What the next append to this account expects.
    pub fn expected(&self) -> annal::Expected {
        self.version
            .map_or(annal::Expected::NoStream, annal::Expected::Exact)
    }

    /// The version the next event gets.
    pub fn next_version(&self) -> u64 {
        self.version.map_or(0, |v| v + 1)
    }
}
