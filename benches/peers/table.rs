//! The printed table: one row per workload, every system's figure, the best peer and annal's
//! ratio to it; and the legend that says how durable each figure is.

use std::time::Duration;

/// The systems in column order; annal first, then the peers.
const SYSTEMS: [&str; 4] = ["annal", "okaywal", "commitlog", "sqlite"];
const WORKLOAD_WIDTH: usize = 42;
const FIGURE_WIDTH: usize = 12;
const RATIO_WIDTH: usize = 10;

/// One system's figure for one workload.
#[derive(Clone, Copy, Debug)]
pub enum Figure {
    /// Events per second: higher is better.
    Rate(f64),
    /// Median time of one operation: lower is better.
    Latency(Duration),
    /// Not measured, with the reason printed in its place.
    Absent(&'static str),
}

impl Figure {
    fn text(self) -> String {
        match self {
            Figure::Rate(per_s) => rate(per_s),
            Figure::Latency(time) => latency(time),
            Figure::Absent(reason) => reason.to_string(),
        }
    }

    /// Whether `self` is better than `other` (both of the same kind).
    fn beats(self, other: Figure) -> bool {
        match (self, other) {
            (Figure::Rate(a), Figure::Rate(b)) => a > b,
            (Figure::Latency(a), Figure::Latency(b)) => a < b,
            _ => false,
        }
    }

    /// `self / other` as a number (events per second, or seconds).
    fn ratio(self, other: Figure) -> Option<f64> {
        match (self, other) {
            (Figure::Rate(a), Figure::Rate(b)) => Some(a / b),
            (Figure::Latency(a), Figure::Latency(b)) => Some(a.as_secs_f64() / b.as_secs_f64()),
            _ => None,
        }
    }
}

/// Events per second, short: `6.5k/s`, `2.58M/s`.
pub fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1}k/s", per_s / 1e3)
    } else {
        format!("{per_s:.0}/s")
    }
}

fn latency(time: Duration) -> String {
    let us = time.as_secs_f64() * 1e6;
    if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} us")
    }
}

/// One workload's figures, in the order of `SYSTEMS`.
pub struct Row {
    pub workload: &'static str,
    pub figures: [Figure; 4],
}

impl Row {
    /// A row of events per second: the first four of `per_s`, in the order of `SYSTEMS`.
    pub fn rates(workload: &'static str, per_s: &[f64]) -> Row {
        Row {
            workload,
            figures: [0, 1, 2, 3].map(|i| Figure::Rate(per_s[i])),
        }
    }

    /// The index in `SYSTEMS` of the best peer that has a figure.
    fn best_peer(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, figure) in self.figures.iter().enumerate().skip(1) {
            if matches!(figure, Figure::Absent(_)) {
                continue;
            }
            if best.is_none_or(|b| figure.beats(self.figures[b])) {
                best = Some(i);
            }
        }
        best
    }

    pub fn print(&self) {
        let mut line = format!("| {:<WORKLOAD_WIDTH$} |", self.workload);
        for figure in self.figures {
            line += &format!(" {:>FIGURE_WIDTH$} |", figure.text());
        }
        match self.best_peer() {
            Some(best) => {
                let ratio = self.figures[0].ratio(self.figures[best]);
                let ratio = ratio.map_or("-".to_string(), |r| format!("{r:.2}x"));
                line += &format!(
                    " {:>FIGURE_WIDTH$} | {ratio:>RATIO_WIDTH$} |",
                    SYSTEMS[best]
                );
            }
            None => line += &format!(" {:>FIGURE_WIDTH$} | {:>RATIO_WIDTH$} |", "-", "-"),
        }
        println!("{line}");
    }
}

pub fn print_header() {
    let mut line = format!("| {:<WORKLOAD_WIDTH$} |", "workload");
    for system in SYSTEMS {
        line += &format!(" {system:>FIGURE_WIDTH$} |");
    }
    line += &format!(
        " {:>FIGURE_WIDTH$} | {:>RATIO_WIDTH$} |",
        "best peer", "annal/best"
    );
    println!("{line}");
    let mut rule = format!("|{}|", "-".repeat(WORKLOAD_WIDTH + 2));
    for _ in 0..SYSTEMS.len() + 1 {
        rule += &format!("{}:|", "-".repeat(FIGURE_WIDTH + 1));
    }
    rule += &format!("{}:|", "-".repeat(RATIO_WIDTH + 1));
    println!("{rule}");
}

/// How durable each figure is, per system and kind of row.
pub fn print_legend() {
    println!(
        "
Rates are events per second (higher is better); the hydrate row is a median time (lower is
better, so there annal/best below 1 means annal is faster), over random aggregates each read
many times (page cache warm). Each system runs each workload on a fresh directory on the same
disk, one after another.

annal      durable rows: Durability::Sync, `append` returns after the journal's fdatasync
           (group commit); default options (8 partitions).
           buffered rows: Durability::Buffered, `append_batch` of 1,000 under one key; one
           flush() at the end, timed. Replay: `read(p, 0)` then `next_ref` (records borrowed
           from the mapping) over every partition, checksums verified. Hydrate: `read_key` in a freshly opened Log, key tables built.
okaywal    every row synced: `commit()` fdatasyncs each entry (group commit); no unsynced mode.
           durable rows: one entry of one chunk per event; buffered rows: one entry of 1,000
           chunks. Default configuration (1 MiB segments zero-filled when created,
           checkpointed after 768 KiB, then recycled: a no-op LogVoid manager keeps nothing).
           Replay: reopening a log that never checkpoints; recovery hands over every entry,
           each chunk read and its CRC checked. No key: stores the payload alone.
commitlog  durable rows: `flush()` after each append, then fdatasync of the segment file by
           hand, since `flush()` alone does not sync the data (see the line above the legend);
           producers share the log behind a mutex. buffered rows: never synced.
           Replay: `read` from offset 0 in 1 MiB steps, each message's CRC checked. No key:
           stores the payload alone.
sqlite     journal_mode=WAL, synchronous=FULL on every row: durable rows are one transaction
           per insert; buffered rows one transaction per 1,000 inserts (SQLite has nothing
           between FULL and unsynced). All producers share one connection behind a mutex
           (SQLite admits one writer at a time). Table events(id INTEGER PRIMARY KEY,
           aggregate TEXT, version INTEGER, payload BLOB, UNIQUE(aggregate, version)).
           Replay: SELECT payload FROM events ORDER BY id (SQLite keeps no page checksums).
           Hydrate: SELECT version, payload WHERE aggregate=? ORDER BY version."
    );
}
