//! The demo's simulated crash. The demo runs itself again as a child process (the hidden
//! `demo-crash-child` subcommand) that appends with `Sync` and prints each acknowledged
//! (key, version) on stdout; the parent kills it with SIGKILL mid-append, reopens the log, and
//! checks that every acknowledged event is there.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use annal::{Log, Options, RecoveryReport};
use clap::Args;

use crate::demo_bank::{account_key, Account, BankEvent};
use crate::failure::{open_log, Failure};
use crate::output::count_text;

/// The parent kills the child once it has printed this many acknowledgements.
const ACKS_BEFORE_KILL: usize = 500;
/// The parent gives up on a child that acknowledges too slowly.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);
/// A child left alone (its parent gone without killing it) stops by itself.
const CHILD_TIME_MAX: Duration = Duration::from_secs(60);
/// Threads appending in the child: more than one, so that appends share fsyncs.
const CHILD_THREADS: u32 = 2;

#[derive(Args)]
pub struct ChildArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub accounts: u32,
}

/// An acknowledged append, as the child printed it: the key and the version.
type Ack = (String, u64);

/// The reopened log, after the crash and its recovery.
pub struct Recovered {
    pub log: Log,
}

/// Runs the child, kills it mid-append, reopens the log and checks every acknowledgement.
pub fn crash_and_recover(
    dir: &Path,
    accounts: u32,
    options: &Options,
) -> Result<Recovered, Failure> {
    let (acks, status) = run_child_until_killed(dir, accounts)?;
    println!(
        "5. crash: a child process appended with Sync from {CHILD_THREADS} threads, printing each \
         acknowledged (key, version); {} after {} acknowledgements",
        status_text(status),
        count_text(acks.len() as u64)
    );
    let started = Instant::now();
    let log = open_log(dir, options.clone(), "demo")?;
    println!(
        "   reopened in {:.1} ms; recovery {}",
        started.elapsed().as_secs_f64() * 1000.0,
        recovery_text(log.recovery_report())
    );
    check_acks(&log, &acks)?;
    Ok(Recovered { log })
}

/// Starts the child, reads its acknowledgements until there are `ACKS_BEFORE_KILL`, kills it
/// with SIGKILL, and returns every acknowledgement it printed (those printed between the count
/// and the kill too) with its exit status.
fn run_child_until_killed(
    dir: &Path,
    accounts: u32,
) -> Result<(Vec<Ack>, Option<ExitStatus>), Failure> {
    let exe =
        std::env::current_exe().map_err(|e| Failure::io("find", "the annal executable", e))?;
    let mut command = Command::new(exe);
    command
        .arg("demo-crash-child")
        .arg("--dir")
        .arg(dir)
        .arg("--accounts")
        .arg(accounts.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = ChildGuard::spawn(&mut command)?;
    let stdout = child.0.stdout.take().expect("stdout is piped");
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match stdout.read_until(b'\n', &mut line) {
                // A line cut by the kill has no newline: its append was not acknowledged yet.
                Ok(_) if line.last() == Some(&b'\n') => {
                    if lines.send(line).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let mut acks = Vec::new();
    let deadline = Instant::now() + CHILD_TIMEOUT;
    while acks.len() < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => acks.push(parse_ack(&line)?),
            Err(RecvTimeoutError::Timeout) => {
                return Err(Failure::message(format!(
                    "the crash child acknowledged only {} appends in {} s",
                    acks.len(),
                    CHILD_TIMEOUT.as_secs()
                )));
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.kill_and_wait();
                return Err(Failure::message(format!(
                    "the crash child ended ({}) after {} acknowledgements",
                    status_text(status),
                    acks.len()
                )));
            }
        }
    }
    let status = child.kill_and_wait();
    // The pipe is closed now: the rest of what the child printed, then the end.
    for line in received.iter() {
        acks.push(parse_ack(&line)?);
    }
    let _ = reader.join();
    Ok((acks, status))
}

/// What recovery found and did, in one line.
pub fn recovery_text(report: &RecoveryReport) -> String {
    let cut: Vec<String> = report
        .partitions
        .iter()
        .filter_map(|p| {
            p.cut
                .map(|range| format!("{range} ({} bytes)", p.cut_bytes))
        })
        .collect();
    format!(
        "replayed {} journal records ({} bytes) written since the last checkpoint; {}; {}",
        report.records_replayed,
        report.bytes_replayed,
        if report.journal_tail_torn {
            "cut the journal's torn tail (the write the kill interrupted)"
        } else {
            "the journal's tail was whole"
        },
        if cut.is_empty() {
            "no segment data cut".to_owned()
        } else {
            format!("cut never-acknowledged {}", cut.join(", "))
        }
    )
}

/// Every acknowledged (key, version) must be in the log; events after the last acknowledged
/// version of a key were durable before their acknowledgement was printed.
fn check_acks(log: &Log, acks: &[Ack]) -> Result<(), Failure> {
    let mut last_acked: HashMap<&str, u64> = HashMap::new();
    for (key, version) in acks {
        let found = log
            .read_key(key.as_bytes(), *version)
            .map_err(|e| Failure::annal(format!("read {key}"), e))?;
        if found.first().map(|r| r.version) != Some(*version) {
            return Err(Failure::message(format!(
                "{key} version {version} was acknowledged as durable and is missing after the crash"
            )));
        }
        let last = last_acked.entry(key).or_default();
        *last = (*last).max(*version);
    }
    let mut unacknowledged = 0;
    for (key, acked) in &last_acked {
        let last = log.last_version(key.as_bytes())?.unwrap_or(0);
        unacknowledged += last.saturating_sub(*acked);
    }
    println!(
        "   all {} acknowledged events are in the log (and {} more that became durable \
         before the kill but were not acknowledged yet)",
        count_text(acks.len() as u64),
        count_text(unacknowledged)
    );
    Ok(())
}

fn parse_ack(line: &[u8]) -> Result<Ack, Failure> {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next().map(str::parse)) {
        (Some("ack"), Some(key), Some(Ok(version))) => Ok((key.to_owned(), version)),
        _ => Err(Failure::message(format!(
            "unexpected line from the crash child: {:?}",
            text.trim_end()
        ))),
    }
}

fn status_text(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) if status.signal() == Some(libc::SIGKILL) => "killed with SIGKILL".to_owned(),
        Some(status) => format!("it exited with {status}"),
        None => "its status is unknown".to_owned(),
    }
}

/// The child process, killed with SIGKILL and reaped however the parent's function ends.
struct ChildGuard(Child);

impl ChildGuard {
    fn spawn(command: &mut Command) -> Result<ChildGuard, Failure> {
        command
            .spawn()
            .map(ChildGuard)
            .map_err(|e| Failure::io("start", "the crash child process", e))
    }

    /// Sends SIGKILL to the child's process id and waits for it.
    fn kill_and_wait(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.0.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on the pid of a child this process has not reaped yet, so the pid
            // cannot have been reused by another process.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        self.0.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// The child: appends deposits with `Sync` from a few threads, forever (bounded by
/// `CHILD_TIME_MAX`), printing `ack <key> <version>` after each acknowledged append.
pub fn run_child(args: &ChildArgs) -> Result<(), Failure> {
    die_with_parent();
    let log = Log::open(&args.dir, crate::demo::options())?;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CHILD_THREADS)
            .map(|t| {
                let log = &log;
                scope.spawn(move || -> Result<(), Failure> {
                    let mine: Vec<u32> =
                        (t..args.accounts).step_by(CHILD_THREADS as usize).collect();
                    let mut accounts = mine
                        .iter()
                        .map(|&n| Account::load(log, &account_key(n)))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut i = 0;
                    while started.elapsed() < CHILD_TIME_MAX && !mine.is_empty() {
                        let key = account_key(mine[i]);
                        let account = &mut accounts[i];
                        let event = match account.version {
                            None => BankEvent::Opened,
                            Some(_) => BankEvent::Deposited(1 + (i as u64 % 100)),
                        };
                        let payload = event.payload();
                        let version = account.next_version();
                        let appended = log.append_to(
                            key.as_bytes(),
                            account.expected(),
                            &[event.event(&payload, key.as_bytes(), version)],
                        )?;
                        account.apply(event, appended.version)?;
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {key} {}", appended.version)
                            .and_then(|()| out.flush())
                            .map_err(|e| Failure::io("write", "stdout", e))?;
                        i = (i + 1) % mine.len();
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Failure::message("a thread panicked")))
        })
    })
}

/// Has the kernel kill this process when its parent dies, so that no child outlives a demo
/// that was itself killed.
fn die_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) sets a flag of this process; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // The parent may have died before the flag was set.
    if std::os::unix::process::parent_id() == 1 {
        std::process::exit(1);
    }
}
