//! The checked-in corpus of a fuzz target (`fuzz/seeds/<target>/`): inputs that cargo-fuzz
//! found and kept for the code they reach, plus every input that once found a bug. Tests replay
//! each through the target's body, so that CI runs them on every change.

use std::path::{Path, PathBuf};

/// The corpus files of `target`, sorted by name.
pub fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: an empty corpus", dir.display());
    files
}

/// Runs `check` on every corpus input of `target` (or only on the file named by
/// `ANNAL_FUZZ_INPUT`); a failing input is printed with the command that replays it.
pub fn replay(target: &str, test: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let files = match std::env::var_os("ANNAL_FUZZ_INPUT") {
        Some(path) => vec![PathBuf::from(path)],
        None => inputs(target),
    };
    for path in files {
        let input = std::fs::read(&path).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| check(&input)) {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let shown = path.strip_prefix(root).unwrap_or(&path);
            eprintln!(
                "failing corpus input: {} (replay: ANNAL_FUZZ_INPUT={} cargo test --release \
                 --test {test})",
                shown.display(),
                shown.display()
            );
            std::panic::resume_unwind(panic);
        }
    }
}
