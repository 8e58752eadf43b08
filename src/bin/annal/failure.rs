//! Why a command failed, said in one line: the message, then each cause after a colon.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::disk::Damage;

/// A command's failure. `main` prints it as one line on stderr and exits non-zero.
#[derive(Debug)]
pub enum Failure {
    /// A complete message.
    Message(String),
    /// An engine error, with what the command was doing when it happened.
    Annal { doing: String, error: annal::Error },
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Bytes on disk that fail their checks, found by the command's own decoders.
    Corrupt { path: PathBuf, damage: Damage },
    /// `verify` found problems; it has printed them.
    Unsound { problems: usize },
}

impl Failure {
    pub fn message(message: impl Into<String>) -> Failure {
        Failure::Message(message.into())
    }

    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Failure {
        Failure::Io {
            op,
            path: path.as_ref().to_owned(),
            source,
        }
    }

    pub fn corrupt(path: impl AsRef<Path>, damage: Damage) -> Failure {
        Failure::Corrupt {
            path: path.as_ref().to_owned(),
            damage,
        }
    }

    /// An engine error met while `doing` something.
    pub fn annal(doing: impl Into<String>, error: annal::Error) -> Failure {
        Failure::Annal {
            doing: doing.into(),
            error,
        }
    }
}

impl From<annal::Error> for Failure {
    fn from(error: annal::Error) -> Failure {
        Failure::Annal {
            doing: String::new(),
            error,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Message(message) => write!(f, "{message}"),
            Failure::Annal { doing, error } => {
                if !doing.is_empty() {
                    write!(f, "{doing}: ")?;
                }
                write!(f, "{error}")?;
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
            Failure::Io { op, path, source } => {
                write!(f, "{op} failed on {}: {source}", path.display())
            }
            Failure::Corrupt { path, damage } => write!(
                f,
                "corrupt data in {} at byte {}: {}",
                path.display(),
                damage.position,
                damage.reason
            ),
            Failure::Unsound { problems } => write!(
                f,
                "{problems} problem{} found",
                if *problems == 1 { "" } else { "s" }
            ),
        }
    }
}

/// Opens the log for writing, for the commands that append (`append`, `demo`, `bench`,
/// `verify --repair`), turning the lock error into advice.
pub fn open_log(dir: &Path, options: annal::Options, command: &str) -> Result<annal::Log, Failure> {
    annal::Log::open(dir, options).map_err(|error| match error {
        annal::Error::Locked { .. } => Failure::message(format!(
            "{} is open by another process, and `annal {command}` needs the log's write lock \
             (dump, stats, tail, verify and groups read a log that is open elsewhere)",
            dir.display()
        )),
        error => Failure::annal(format!("open {}", dir.display()), error),
    })
}
