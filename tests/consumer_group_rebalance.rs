//! Consumer groups under churn: four threads join group `g`, poll and commit for a while, leave
//! (drop their `Consumer`) and join again, while another thread appends. Every member's view is
//! recorded, and what can be observed is checked exactly.
//!
//! The group's assignment changes only at a change of membership (a join or a drop; no session
//! expires, nobody resets or seeks, no commit fails). Each change is bracketed by two counters:
//! `started` before the call, `done` after it. So at any instant, the number of changes applied
//! is at least `done` read before it and at most `started` read after it; a poll's assignment
//! and a commit's check are each made at one such instant. A commit that succeeds was checked
//! against the assignment of its batch's poll, unchanged since. That gives, with
//! `[done read before, started read after]` as an instant's window:
//!
//! 1. Within an ownership period, each member's deliveries of a partition continue gap-free:
//!    across consecutive polls no change can have happened between (`started` after the later
//!    equals `done` before the earlier), a partition's offsets follow the last one delivered.
//! 2. No two members own a partition at once: two `assignment()` calls whose windows are the
//!    same single count never name one partition for two members; a poll's deliveries are of
//!    partitions its member owned then.
//! 3. A commit is accepted only from the batch's ownership period: its window (`done` before
//!    the commit, `started` after the poll) is never empty, and two members never commit one
//!    partition successfully within one period (same single count). Refusals are
//!    `Error::NotAssigned`, never anything else.
//! 4. At least once, without skips: per partition, the batches whose commit succeeded cover
//!    every offset from 0 to the end; each delivered event has exactly one first delivery
//!    (attempt 1); at the end, the committed cursors (after a reopen too) are the partitions'
//!    ends. Cursors sampled meanwhile never go back nor past the end.
//!
//! `ANNAL_REBALANCE_SEED=<s>` replays one run's choices (not its interleaving);
//! `ANNAL_REBALANCE_APPENDS=<n>` sets the appends of the ignored long test.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use annal::{Consumer, Durability, Error, Event, Group, Log, Options};
use common::rng::XorShift;

const PARTITIONS: u32 = 8;
const GROUP: &str = "g";
const MEMBER_THREADS: u64 = 4;
/// Polls of one membership, at most (at least 1).
const SESSION_POLLS_MAX: usize = 40;
const POLL_EVENTS_MAX: usize = 24;
const KEYS: u64 = 64;
/// Sessions never expire in these tests: only joins and drops change the assignment.
const SESSION_TIMEOUT: Duration = Duration::from_secs(3_600);
const SEED_ENV: &str = "ANNAL_REBALANCE_SEED";
const APPENDS_ENV: &str = "ANNAL_REBALANCE_APPENDS";

fn options(durability: Durability) -> Options {
    Options::default()
        .partitions(PARTITIONS)
        .durability(durability)
}

/// Changes of membership, counted before (`started`) and after (`done`) each.
#[derive(Default)]
struct Changes {
    started: AtomicU64,
    done: AtomicU64,
}

impl Changes {
    fn change<T>(&self, change: impl FnOnce() -> T) -> T {
        self.started.fetch_add(1, Ordering::SeqCst);
        let result = change();
        self.done.fetch_add(1, Ordering::SeqCst);
        result
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }
}

/// The counts of changes applied that an instant may have seen: `(lowest, highest)`.
type Window = (u64, u64);

/// One poll as its member saw it.
struct PollSeen {
    window: Window,
    /// (partition, offset, attempt) of each delivery.
    deliveries: Vec<(u32, u64, u32)>,
    assignment: Vec<u32>,
    assignment_window: Window,
}

/// One successful commit: its window and, per partition, the offsets of its batch.
struct CommitSeen {
    window: Window,
    ranges: BTreeMap<u32, (u64, u64)>,
}

/// One membership: from a join to the drop of its `Consumer`.
struct Session {
    member: u64,
    polls: Vec<PollSeen>,
    commits: Vec<CommitSeen>,
    refused: usize,
}

/// When a session ends.
enum Until<'a> {
    /// After this many polls, or earlier once the flag is set.
    Polls(usize, &'a AtomicBool),
    /// When a poll is empty and the group has no lag (for the only member).
    CaughtUp,
}

struct Shared<'a> {
    group: &'a Group,
    changes: Changes,
    next_member: AtomicU64,
}

/// Joins, polls and commits until `until`, then leaves; returns what it saw.
fn session(shared: &Shared<'_>, rng: &mut XorShift, until: Until<'_>) -> Session {
    let member = shared.next_member.fetch_add(1, Ordering::SeqCst);
    let mut consumer: Consumer = shared.changes.change(|| shared.group.join().unwrap());
    consumer.set_session_timeout(SESSION_TIMEOUT);
    let changes = &shared.changes;
    let mut seen = Session {
        member,
        polls: Vec::new(),
        commits: Vec::new(),
        refused: 0,
    };
    for i in 0.. {
        if let Until::Polls(polls, stop) = until {
            if i >= polls || stop.load(Ordering::SeqCst) {
                break;
            }
        }
        let before = changes.done();
        let batch = consumer
            .poll(1 + rng.below(POLL_EVENTS_MAX), Duration::from_millis(5))
            .unwrap();
        let after = changes.started();
        let assignment_before = changes.done();
        let assignment = consumer.assignment();
        let assignment_after = changes.started();
        seen.polls.push(PollSeen {
            window: (before, after),
            deliveries: batch
                .iter()
                .map(|d| (d.record.partition, d.record.offset, d.attempt))
                .collect(),
            assignment,
            assignment_window: (assignment_before, assignment_after),
        });
        if batch.is_empty() {
            if matches!(until, Until::CaughtUp) && shared.group.lag().iter().all(|&l| l == 0) {
                break;
            }
            continue;
        }
        // Some batches take a while to handle: a change of membership may come meanwhile.
        if rng.below(4) == 0 {
            std::thread::sleep(Duration::from_micros(rng.next() % 2_000));
        }
        let commit_before = changes.done();
        match consumer.commit(&batch) {
            Ok(()) => {
                let mut ranges = BTreeMap::new();
                for d in &batch {
                    let range = ranges
                        .entry(d.record.partition)
                        .or_insert((d.record.offset, d.record.offset));
                    range.1 = d.record.offset + 1;
                }
                seen.commits.push(CommitSeen {
                    window: (commit_before, after),
                    ranges,
                });
            }
            Err(Error::NotAssigned { .. }) => seen.refused += 1,
            Err(other) => panic!("member {member}: commit failed: {other}"),
        }
    }
    changes.change(|| drop(consumer));
    seen
}

/// Appends `appends` calls of 1 to 3 events on random keys; returns each partition's end as
/// the appends placed them, and checks the group's cursors meanwhile.
fn appender(log: &Log, group: &Group, appends: u64, rng: &mut XorShift) -> Vec<u64> {
    let mut ends = vec![0; PARTITIONS as usize];
    let mut cursors_seen = vec![0; PARTITIONS as usize];
    for i in 0..appends {
        let key = format!("key-{}", rng.next() % KEYS);
        let count = 1 + rng.below(3);
        let payloads: Vec<String> = (0..count)
            .map(|e| format!("append {i} event {e}"))
            .collect();
        let at = log
            .append_batch(key.as_bytes(), payloads.iter().map(Event::new))
            .unwrap();
        let p = at.partition as usize;
        assert_eq!(at.offset, ends[p], "appends are the only writer");
        ends[p] = at.end_offset();
        // Cursors move forward only and stay within the partitions.
        let cursors = group.committed();
        for (p, &cursor) in cursors.iter().enumerate() {
            assert!(cursor >= cursors_seen[p], "partition {p}: cursor went back");
            assert!(
                cursor <= log.end_offset(p as u32).unwrap(),
                "partition {p}: cursor {cursor} past the end"
            );
        }
        cursors_seen = cursors;
        if rng.below(8) == 0 {
            std::thread::sleep(Duration::from_micros(rng.next() % 1_000));
        }
    }
    ends
}

/// Check 1: gap-free deliveries within each ownership period of one member. Returns how many
/// deliveries continued one of an earlier poll of the same period.
fn check_periods(session: &Session) -> usize {
    let mut continued = 0;
    let member = session.member;
    let mut next: HashMap<u32, u64> = HashMap::new();
    for (i, poll) in session.polls.iter().enumerate() {
        let same_period = i > 0 && poll.window.1 == session.polls[i - 1].window.0;
        if !same_period {
            next.clear();
        }
        let mut in_poll: HashMap<u32, u64> = HashMap::new();
        for &(p, offset, _) in &poll.deliveries {
            if !in_poll.contains_key(&p) && next.contains_key(&p) {
                continued += 1;
            }
            if let Some(expected) = in_poll.get(&p).or(next.get(&p)) {
                assert_eq!(
                    offset, *expected,
                    "member {member} poll {i}: partition {p} does not continue \
                     (same period as the poll before: {same_period})"
                );
            }
            in_poll.insert(p, offset + 1);
        }
        next.extend(in_poll);
    }
    continued
}

/// Checks 2 and 3 across members, and 4. Returns how many commits had an exact window.
fn check_all(sessions: &[Session], ends: &[u64]) -> usize {
    let mut exact_commits = 0;
    // 2. One owner per partition at each count of changes seen exactly.
    let mut owners: BTreeMap<(u64, u32), u64> = BTreeMap::new();
    for s in sessions {
        for poll in &s.polls {
            let (lo, hi) = poll.assignment_window;
            if lo == hi {
                for &p in &poll.assignment {
                    let owner = *owners.entry((lo, p)).or_insert(s.member);
                    assert_eq!(
                        owner, s.member,
                        "partition {p} assigned to members {owner} and {} after {lo} changes",
                        s.member
                    );
                }
                if poll.window == (lo, hi) {
                    for &(p, offset, _) in &poll.deliveries {
                        assert!(
                            poll.assignment.contains(&p),
                            "member {} was delivered {p}/{offset}, not its partition",
                            s.member
                        );
                    }
                }
            }
        }
    }
    // 3. Commits only within their period, one committer per partition and period.
    let mut committers: BTreeMap<(u64, u32), u64> = BTreeMap::new();
    let mut covered: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); PARTITIONS as usize];
    for s in sessions {
        for commit in &s.commits {
            let (lo, hi) = commit.window;
            assert!(
                lo <= hi,
                "member {}: a commit of {:?} was accepted though a change of membership \
                 ended between its poll and the commit ({hi} started by the poll's end, {lo} \
                 done before the commit)",
                s.member,
                commit.ranges
            );
            exact_commits += usize::from(lo == hi);
            for (&p, &(first, end)) in &commit.ranges {
                if lo == hi {
                    let committer = *committers.entry((lo, p)).or_insert(s.member);
                    assert_eq!(
                        committer, s.member,
                        "partition {p} committed by members {committer} and {} after {lo} \
                         changes",
                        s.member
                    );
                }
                covered[p as usize].extend(first..end);
            }
        }
    }
    // 4. Everything committed was handled in a committed batch; exactly one first delivery.
    for (p, &end) in ends.iter().enumerate() {
        let missing: Vec<u64> = (0..end)
            .filter(|o| !covered[p].contains(o))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "partition {p}: offsets {missing:?}.. never committed by a member that handled them"
        );
    }
    let mut first_deliveries: HashMap<(u32, u64), u32> = HashMap::new();
    for s in sessions {
        for poll in &s.polls {
            for &(p, offset, attempt) in &poll.deliveries {
                assert!(offset < ends[p as usize], "{p}/{offset} past the end");
                assert!(attempt >= 1, "{p}/{offset}: attempt {attempt}");
                *first_deliveries.entry((p, offset)).or_default() += u32::from(attempt == 1);
            }
        }
    }
    for (place, firsts) in &first_deliveries {
        assert_eq!(*firsts, 1, "{place:?}: {firsts} first deliveries");
    }
    exact_commits
}

fn seed() -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(seed) => seed.parse().expect("a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    println!("{SEED_ENV}={seed}");
    seed
}

fn churn(durability: Durability, appends: u64) {
    let seed = seed();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(durability)).unwrap();
    let group = log.group(GROUP).unwrap();
    let shared = Shared {
        group: &group,
        changes: Changes::default(),
        next_member: AtomicU64::new(0),
    };
    let stop = AtomicBool::new(false);
    let (ends, mut sessions) = std::thread::scope(|scope| {
        let members: Vec<_> = (0..MEMBER_THREADS)
            .map(|t| {
                let (shared, stop) = (&shared, &stop);
                scope.spawn(move || {
                    let mut rng = XorShift((seed ^ (t + 1).wrapping_mul(0x9e37_79b9)) | 1);
                    let mut sessions = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let polls = 1 + rng.below(SESSION_POLLS_MAX);
                        sessions.push(session(shared, &mut rng, Until::Polls(polls, stop)));
                        std::thread::sleep(Duration::from_micros(rng.next() % 3_000));
                    }
                    sessions
                })
            })
            .collect();
        let mut rng = XorShift(seed | 1);
        let ends = appender(&log, &group, appends, &mut rng);
        stop.store(true, Ordering::SeqCst);
        let sessions: Vec<Session> = members
            .into_iter()
            .flat_map(|m| m.join().unwrap())
            .collect();
        (ends, sessions)
    });
    for p in 0..PARTITIONS {
        assert_eq!(log.end_offset(p).unwrap(), ends[p as usize]);
    }
    // Whatever is left, one last member takes it all.
    let mut rng = XorShift(seed.rotate_left(17) | 1);
    sessions.push(session(&shared, &mut rng, Until::CaughtUp));
    let continued: usize = sessions.iter().map(check_periods).sum();
    let exact_commits = check_all(&sessions, &ends);
    assert_eq!(group.committed(), ends, "everything is committed");
    let changes = shared.changes.done();
    drop(group);
    log.close().unwrap();
    let log = Log::open(dir.path(), options(durability)).unwrap();
    assert_eq!(
        log.group(GROUP).unwrap().committed(),
        ends,
        "after a reopen"
    );
    let commits: usize = sessions.iter().map(|s| s.commits.len()).sum();
    let refused: usize = sessions.iter().map(|s| s.refused).sum();
    let delivered: usize = sessions
        .iter()
        .flat_map(|s| &s.polls)
        .map(|p| p.deliveries.len())
        .sum();
    println!(
        "{durability:?}: {} events, {} memberships ({} changes), {delivered} deliveries, \
         {continued} continuing a poll of the same period, {commits} commits ({exact_commits} \
         within one known period), {refused} refused, in {:?}",
        ends.iter().sum::<u64>(),
        sessions.len(),
        changes,
        started.elapsed()
    );
}

#[test]
fn members_joining_and_leaving_never_share_a_partition_nor_skip_an_event_sync() {
    churn(Durability::Sync, 6_000);
}

#[test]
fn members_joining_and_leaving_never_share_a_partition_nor_skip_an_event_buffered() {
    churn(Durability::Buffered, 20_000);
}

#[test]
#[ignore = "long; run with --ignored"]
fn members_joining_and_leaving_a_long_time() {
    let appends = std::env::var(APPENDS_ENV).map_or(50_000, |n| n.parse().expect("a number"));
    churn(Durability::Sync, appends);
}

/// Regression test for a bug found by this file: `Consumer::set_session_timeout` is documented
/// as "how long this member may go without polling before the others take its partitions", but
/// `poll` expired the *other* members with the polling member's own timeout (`Inner::expire(self.member, self.session_timeout)`; a
/// member's timeout is not kept with it). Here a member with a 50 ms timeout polls 100 ms after
/// a member with the default 10 s timeout last polled, and takes its partitions: expected, the
/// patient member keeps half of them (its 10 s have not passed); actual, it owns none.
/// Conversely a member with a 50 ms timeout that stops polling keeps its partitions for the
/// others' 10 s. (`consumer_group_cursors.rs`, `a_member_that_stops_polling_loses_its_partitions`
/// relied on the behaviour as it was, and now gives its idle member the short timeout.)
#[test]
fn a_members_session_timeout_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(Durability::Sync)).unwrap();
    let group = log.group(GROUP).unwrap();
    let mut hasty = group.join().unwrap();
    hasty.set_session_timeout(Duration::from_millis(50));
    let mut patient = group.join().unwrap();
    hasty.poll(1, Duration::ZERO).unwrap();
    patient.poll(1, Duration::ZERO).unwrap();
    assert_eq!(patient.assignment().len(), PARTITIONS as usize / 2);
    std::thread::sleep(Duration::from_millis(100));
    hasty.poll(1, Duration::ZERO).unwrap();
    assert_eq!(
        patient.assignment().len(),
        PARTITIONS as usize / 2,
        "a member with the default session timeout keeps its partitions after 100 ms"
    );

    // The other way round, in another group: a member with a 50 ms timeout stops polling;
    // after its 50 ms, a member with the default timeout takes its partitions.
    let other = log.group("other").unwrap();
    let mut hasty = other.join().unwrap();
    hasty.set_session_timeout(Duration::from_millis(50));
    let mut patient = other.join().unwrap();
    hasty.poll(1, Duration::ZERO).unwrap();
    patient.poll(1, Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    patient.poll(1, Duration::ZERO).unwrap();
    assert_eq!(
        patient.assignment().len(),
        PARTITIONS as usize,
        "a member with a 50 ms session timeout loses its partitions after 100 ms"
    );
}

/// Regression test for a bug found by this file (an expired member was left out for good).
/// A member whose session expired is removed from the group for good: when it polls again it
/// is not added back, owns no partition, and `poll` returns empty batches marked `caught_up`
/// forever, with no error, while the group's lag grows. Here members A and B both have a 50 ms
/// timeout; B stops polling for 100 ms, A's poll expires it, A leaves, 20 events are appended.
/// Expected: B, the group's only consumer, polls again and either gets the 20 events (it
/// rejoins) or an error saying it must join again. Actual: empty batches, `caught_up: true`,
/// `assignment()` empty, lag 20.
#[test]
fn an_expired_member_that_polls_again_is_not_left_out_silently() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(Durability::Sync)).unwrap();
    let group = log.group(GROUP).unwrap();
    let mut a = group.join().unwrap();
    a.set_session_timeout(Duration::from_millis(50));
    let mut b = group.join().unwrap();
    b.set_session_timeout(Duration::from_millis(50));
    a.poll(1, Duration::ZERO).unwrap();
    b.poll(1, Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    a.poll(1, Duration::ZERO).unwrap();
    drop(a);
    for i in 0..20 {
        log.append(format!("key-{i}").as_bytes(), &b"after"[..])
            .unwrap();
    }
    let mut delivered = 0;
    for _ in 0..10 {
        match b.poll(100, Duration::from_millis(20)) {
            Ok(batch) => {
                delivered += batch.len();
                if !batch.is_empty() {
                    b.commit(&batch).unwrap();
                }
            }
            Err(_) => return,
        }
    }
    assert_eq!(
        delivered,
        20,
        "the group's only consumer, whose session had expired, polls again (assignment {:?}, \
         lag {:?})",
        b.assignment(),
        group.lag()
    );
}
