//! Hard errors: the repository or the run cannot go on. (A file that cannot be read is not an
//! error here: it is an outcome recorded in the snapshot.)
use std::path::PathBuf;

use io::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{what} {name}: {why}")]
    Corrupt { what: &'static str, name: String, why: String },
    #[error("blob {0} failed authentication (corrupt or tampered)")]
    BlobAuth(String),
    #[error("blob {0} is not in the index")]
    MissingBlob(String),
    #[error("no repository at {0} (run `bakare init` first)")]
    NoRepository(String),
    #[error("a repository already exists at {0}")]
    RepositoryExists(String),
    #[error("key: {0}")]
    Key(String),
    #[error("this needs the repository's secret key, but {0} is a backup-only key (it can back up, not read back)")]
    BackupOnlyKey(PathBuf),
    /// A pack's trailer (BKPKEND2) is sealed with the pack's data key, which only the owner
    /// unwraps: not damage, a backup-only key just cannot read it.
    #[error("pack {0}: its blob list is sealed to the repository owner (a backup-only key cannot read it)")]
    SealedToOwner(String),
    #[error("no snapshot matches {0:?}")]
    NoSnapshot(String),
    #[error("snapshot prefix {0:?} is ambiguous")]
    AmbiguousSnapshot(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A directory a file watcher saw no change in is not what the files cache recorded: the
    /// watcher missed a change (`bakare watch` runs a full scan then).
    #[error("the file watcher missed a change in {0}; a full scan is needed")]
    WatchGap(String),
    #[error("pipeline: {0}")]
    Pipeline(String),
    #[error("{0}")]
    Legacy(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn corrupt(what: &'static str, name: impl Into<String>, why: impl ToString) -> Self {
        Error::Corrupt { what, name: name.into(), why: why.to_string() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
