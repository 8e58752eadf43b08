//! A simulated disk behind the io seam, for crash tests: it records every durable-relevant file
//! operation a log makes (through `io.rs`), and builds from the record the image of the log
//! directory that a power cut at any recorded instant could leave.
//!
//! The model keeps, per file, what was written apart from what a sync made durable, and per
//! directory which entries (files created, renamed, removed; directories made) a directory sync
//! made durable. A crash image holds everything durable and, chosen by a seed:
//!
//! - of each file's writes since its last sync: every 512-byte sector kept, dropped, or torn
//!   (a prefix of it kept); length changes kept or lost;
//! - of each directory's entry changes since its last sync: a prefix, in order (journaling file
//!   systems commit metadata in order, so a later entry change never survives an earlier lost
//!   one).
//!
//! A file sync that failed settles the file's pending writes at that instant, as a power cut
//! would (the kernel wrote some, and never writes the others again); a directory sync that
//! failed changes nothing (journaling file systems keep the entry changes in their journal).
//!
//! Files that the log opens without the fail points (index files, which are derived data and
//! rebuilt by recovery) are not recorded and so are absent from images.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One recorded operation, with absolute paths.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    MakeDir(PathBuf),
    Create(PathBuf),
    Write {
        path: PathBuf,
        position: u64,
        bytes: Vec<u8>,
    },
    SetLen {
        path: PathBuf,
        len: u64,
    },
    /// A preallocation: the length becomes at least `len`.
    Extend {
        path: PathBuf,
        len: u64,
    },
    /// A write made durable on its own (`RWF_DSYNC`): its bytes are durable at once, the
    /// file's other pending writes stay pending.
    WriteDurable {
        path: PathBuf,
        position: u64,
        bytes: Vec<u8>,
    },
    Sync(PathBuf),
    /// A sync of the file that failed. The kernel may have written any part of the pending
    /// writes, and it marks the pages clean whatever it did ("fsyncgate": Linux since 4.13
    /// reports the error once and a later sync does not write them again): the pending writes
    /// are settled here, each sector kept, dropped or torn as at a power cut, and what was
    /// dropped is gone from the disk even though reads of the running system still see it.
    SyncFailed(PathBuf),
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove(PathBuf),
    SyncDir(PathBuf),
}

const SECTOR: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    File(usize),
    Dir,
}

#[derive(Clone, Debug)]
enum Pending {
    Write { position: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct FileState {
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// The file's length with every pending operation applied.
    len: u64,
}

impl FileState {
    /// A write, pending or (`durable`) on stable storage at once.
    fn write(&mut self, position: u64, bytes: &[u8], durable: bool) {
        let end = position + bytes.len() as u64;
        self.len = self.len.max(end);
        let write = Pending::Write {
            position,
            bytes: bytes.to_vec(),
        };
        if !durable {
            self.pending.push(write);
            return;
        }
        // Earlier pending writes no longer decide these bytes: whatever became of them, this
        // write is what the disk holds there now.
        self.pending = std::mem::take(&mut self.pending)
            .into_iter()
            .flat_map(|pending| outside(pending, position, end))
            .collect();
        apply(&mut self.durable, &write, usize::MAX);
    }
}

/// Names under each directory, as the last directory sync left them and as changed since.
#[derive(Default)]
struct DirState {
    durable: BTreeMap<PathBuf, Entry>,
    changes: Vec<(PathBuf, Option<Entry>)>,
}

/// A small deterministic generator (splitmix64), so that an image is replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Builds in `image` the directory `base` as a power cut after `ops` could leave it. `base`
/// itself is taken as durable (it existed before the recording started).
pub(crate) fn crash_image(ops: &[Op], base: &Path, image: &Path, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng(seed);
    let mut files: Vec<FileState> = Vec::new();
    let mut names: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    let mut dirs: HashMap<PathBuf, DirState> = HashMap::new();
    dirs.insert(base.to_owned(), DirState::default());
    let change = |dirs: &mut HashMap<PathBuf, DirState>, path: &Path, entry: Option<Entry>| {
        if let Some(parent) = path.parent() {
            dirs.entry(parent.to_owned())
                .or_default()
                .changes
                .push((path.to_owned(), entry));
        }
    };
    for op in ops {
        match op {
            Op::MakeDir(path) => {
                names.insert(path.clone(), Entry::Dir);
                dirs.entry(path.clone()).or_default();
                change(&mut dirs, path, Some(Entry::Dir));
            }
            Op::Create(path) => {
                files.push(FileState::default());
                let entry = Entry::File(files.len() - 1);
                names.insert(path.clone(), entry);
                change(&mut dirs, path, Some(entry));
            }
            Op::Write {
                path,
                position,
                bytes,
            } => {
                if let Some(Entry::File(id)) = names.get(path) {
                    files[*id].write(*position, bytes, false);
                }
            }
            Op::SetLen { path, len } => {
                if let Some(Entry::File(id)) = names.get(path) {
                    files[*id].len = *len;
                    files[*id].pending.push(Pending::SetLen(*len));
                }
            }
            Op::Extend { path, len } => {
                if let Some(Entry::File(id)) = names.get(path) {
                    let file = &mut files[*id];
                    if *len > file.len {
                        file.len = *len;
                        file.pending.push(Pending::SetLen(*len));
                    }
                }
            }
            Op::WriteDurable {
                path,
                position,
                bytes,
            } => {
                if let Some(Entry::File(id)) = names.get(path) {
                    files[*id].write(*position, bytes, true);
                }
            }
            Op::Sync(path) => {
                if let Some(Entry::File(id)) = names.get(path) {
                    let file = &mut files[*id];
                    for pending in std::mem::take(&mut file.pending) {
                        apply(&mut file.durable, &pending, usize::MAX);
                    }
                }
            }
            Op::SyncFailed(path) => {
                if let Some(Entry::File(id)) = names.get(path) {
                    let file = &mut files[*id];
                    file.durable = survivor(file, &mut rng);
                    file.pending.clear();
                }
            }
            Op::Rename { from, to } => {
                if let Some(entry) = names.remove(from) {
                    change(&mut dirs, from, None);
                    names.insert(to.clone(), entry);
                    change(&mut dirs, to, Some(entry));
                }
            }
            Op::Remove(path) => {
                if names.remove(path).is_some() {
                    change(&mut dirs, path, None);
                }
            }
            Op::SyncDir(dir) => {
                let state = dirs.entry(dir.clone()).or_default();
                state.durable = names
                    .iter()
                    .filter(|(path, _)| path.parent() == Some(dir.as_path()))
                    .map(|(path, entry)| (path.clone(), *entry))
                    .collect();
                state.changes.clear();
            }
        }
    }
    std::fs::create_dir_all(image)?;
    write_dir(base, base, image, &dirs, &files, &mut rng)
}

/// What of a pending operation lies outside the bytes `[start, end)`. A length change is kept
/// whole unless it would cut into them, which no caller of durable writes does.
fn outside(pending: Pending, start: u64, end: u64) -> Vec<Pending> {
    match pending {
        Pending::Write { position, bytes } => {
            let write_end = position + bytes.len() as u64;
            if write_end <= start || position >= end {
                return vec![Pending::Write { position, bytes }];
            }
            let mut pieces = Vec::new();
            if position < start {
                pieces.push(Pending::Write {
                    position,
                    bytes: bytes[..(start - position) as usize].to_vec(),
                });
            }
            if write_end > end {
                pieces.push(Pending::Write {
                    position: end,
                    bytes: bytes[(end - position) as usize..].to_vec(),
                });
            }
            pieces
        }
        Pending::SetLen(len) => {
            debug_assert!(len >= end, "a pending cut into bytes written durably");
            vec![Pending::SetLen(len)]
        }
    }
}

/// Applies one pending operation, a write cut to `keep` bytes.
fn apply(data: &mut Vec<u8>, pending: &Pending, keep: usize) {
    match pending {
        Pending::Write { position, bytes } => {
            let bytes = &bytes[..keep.min(bytes.len())];
            let start = *position as usize;
            if data.len() < start + bytes.len() {
                data.resize(start + bytes.len(), 0);
            }
            data[start..start + bytes.len()].copy_from_slice(bytes);
        }
        Pending::SetLen(len) => data.resize(*len as usize, 0),
    }
}

/// The bytes a power cut leaves of a file: durable ones, and a seeded choice of the rest.
fn survivor(file: &FileState, rng: &mut Rng) -> Vec<u8> {
    let mut data = file.durable.clone();
    for pending in &file.pending {
        match pending {
            Pending::SetLen(_) => {
                if rng.below(2) == 0 {
                    apply(&mut data, pending, usize::MAX);
                }
            }
            Pending::Write { position, bytes } => {
                // Sector by sector (with the write's own alignment): kept, dropped or torn.
                let mut at = 0usize;
                while at < bytes.len() {
                    let end = (at + SECTOR).min(bytes.len());
                    let keep = match rng.below(5) {
                        0 | 1 => end - at,
                        2 => rng.below((end - at) as u64) as usize,
                        _ => 0,
                    };
                    if keep > 0 {
                        let piece = Pending::Write {
                            position: position + at as u64,
                            bytes: bytes[at..end].to_vec(),
                        };
                        apply(&mut data, &piece, keep);
                    }
                    at = end;
                }
            }
        }
    }
    data
}

fn write_dir(
    dir: &Path,
    base: &Path,
    image: &Path,
    dirs: &HashMap<PathBuf, DirState>,
    files: &[FileState],
    rng: &mut Rng,
) -> std::io::Result<()> {
    let Some(state) = dirs.get(dir) else {
        return Ok(());
    };
    let mut entries = state.durable.clone();
    // A prefix of the entry changes since the last sync of this directory.
    let kept = rng.below(state.changes.len() as u64 + 1) as usize;
    for (path, entry) in &state.changes[..kept] {
        match entry {
            Some(entry) => {
                entries.insert(path.clone(), *entry);
            }
            None => {
                entries.remove(path);
            }
        }
    }
    for (path, entry) in entries {
        let Ok(relative) = path.strip_prefix(base) else {
            continue;
        };
        let target = image.join(relative);
        match entry {
            Entry::Dir => {
                std::fs::create_dir_all(&target)?;
                write_dir(&path, base, image, dirs, files, rng)?;
            }
            Entry::File(id) => std::fs::write(&target, survivor(&files[id], rng))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A durable write is in every image, over whatever earlier pending writes left there; the
    /// file's other pending writes stay a seeded choice.
    #[test]
    fn a_durable_write_survives_every_cut_and_settles_nothing_else() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("f");
        let ops = vec![
            Op::Create(file.clone()),
            Op::SyncDir(base.path().to_owned()),
            Op::Write {
                path: file.clone(),
                position: 0,
                bytes: vec![1; 1024],
            },
            Op::WriteDurable {
                path: file.clone(),
                position: 512,
                bytes: vec![2; 512],
            },
            Op::Write {
                path: file.clone(),
                position: 2048,
                bytes: vec![3; 512],
            },
        ];
        let mut kept_before = 0;
        let mut kept_after = 0;
        for seed in 0..64 {
            let image = tempfile::tempdir().unwrap();
            crash_image(&ops, base.path(), image.path(), seed).unwrap();
            let bytes = std::fs::read(image.path().join("f")).unwrap();
            assert!(bytes.len() >= 1024, "seed {seed}: {} bytes", bytes.len());
            assert!(bytes[512..1024].iter().all(|&b| b == 2), "seed {seed}");
            assert!(
                bytes[..512].iter().all(|&b| b == 0 || b == 1),
                "seed {seed}"
            );
            kept_before += usize::from(bytes[0] == 1);
            kept_after += usize::from(bytes.len() > 2048 && bytes[2048] == 3);
        }
        assert!(kept_before > 0 && kept_before < 64, "{kept_before} of 64");
        assert!(kept_after > 0 && kept_after < 64, "{kept_after} of 64");
    }
}
