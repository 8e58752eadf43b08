//! What every system's run shares: producers that append until a deadline, latency samples
//! until a deadline, and a seeded generator for key choices.

use std::time::{Duration, Instant};

/// Runs `threads` blocking producers until `duration` has passed, then `finish` (a final flush
/// where the system has one). `append(thread, i)` makes the `i`th append of producer `thread`
/// and returns how many events it appended. Returns events per second over the whole run,
/// `finish` included.
pub fn producers_rate(
    threads: usize,
    duration: Duration,
    append: impl Fn(u64, u64) -> u64 + Sync,
    finish: impl FnOnce(),
) -> f64 {
    let started = Instant::now();
    let deadline = started + duration;
    let events: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|thread| {
                let append = &append;
                scope.spawn(move || {
                    let mut events = 0u64;
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        events += append(thread, i);
                        i += 1;
                    }
                    events
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("producer"))
            .sum()
    });
    finish();
    events as f64 / started.elapsed().as_secs_f64()
}

/// The aggregate that the `i`th append of producer `thread` goes to: producers start far apart
/// and walk through all aggregates, as in `benches/append.rs`.
pub fn aggregate(thread: u64, i: u64) -> usize {
    ((thread * 1_009 + i) % crate::common::AGGREGATES) as usize
}

/// Repeats `run` (which returns how many events it read) until `duration` has passed, at least
/// once; returns the median events per second of the runs.
pub fn repeated_rate(duration: Duration, mut run: impl FnMut() -> u64) -> f64 {
    let deadline = Instant::now() + duration;
    let mut rates = Vec::new();
    while rates.is_empty() || Instant::now() < deadline {
        let started = Instant::now();
        let events = run();
        rates.push(events as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Calls `sample(aggregate)` on random aggregates until `duration` has passed, at least 100
/// times; returns the median time of one call.
pub fn median_latency(duration: Duration, mut sample: impl FnMut(usize)) -> Duration {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let deadline = Instant::now() + duration;
    let mut samples = Vec::new();
    while samples.len() < 100 || Instant::now() < deadline {
        let aggregate = rng.below(crate::common::AGGREGATES) as usize;
        let started = Instant::now();
        sample(aggregate);
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// A small, fast, seeded generator (the benches time the systems, not the RNG).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
