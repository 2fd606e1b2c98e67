//! Owns the storage layer's one error type. Every failure a backend can report is a variant
//! here; callers match on it, tests compare it. Nothing in this module does IO.

use crate::raft::{GroupId, Index};

/// Everything that can go wrong below the Raft core. Expected failures of the data (checksum
/// mismatch, a refused data directory, a malformed batch) are distinct variants so the caller can
/// decide; engine failures carry the engine's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// A record read back from disk failed verification (checksum, length, key/value mismatch).
    /// Never skipped: the group cannot be trusted until an operator looks at it.
    #[error("corruption in group {group}: {detail}")]
    Corruption { group: GroupId, detail: String },
    /// The log ends in bad records at or below the durable commit point: entries that were
    /// acknowledged as committed are damaged, so they cannot simply be dropped.
    #[error(
        "group {group}: log record {index} is damaged but index {commit} was durably committed; \
         refusing to truncate acknowledged entries"
    )]
    CommittedEntryDamaged {
        group: GroupId,
        index: Index,
        commit: Index,
    },
    /// The caller handed in a batch that breaks a storage invariant (a gap in the log, applied
    /// index going backwards, compaction past the applied index, reserved group id). Nothing of
    /// the batch was written.
    #[error("invalid write batch for group {group}: {detail}")]
    InvalidBatch { group: GroupId, detail: String },
    /// Snapshot data received from a peer does not decode (bad frame, checksum mismatch).
    #[error("invalid snapshot data for group {group}: {detail}")]
    InvalidSnapshot { group: GroupId, detail: String },
    /// The data directory was created for another number of cores. Rebalancing does not exist
    /// yet, so restarting with a different count is refused.
    #[error(
        "data directory {path} was created for {recorded} cores, refusing to open it with {requested}"
    )]
    CoreCountMismatch {
        path: String,
        recorded: usize,
        requested: usize,
    },
    /// The data directory was written in an older format that this build does not convert.
    #[error(
        "data directory {path} has format version {found}; this build reads only {supported} \
         (format 2 keeps the kv machine's session records in a space of their own): open it \
         with the build that made it, or start from an empty data directory"
    )]
    FormatTooOld {
        path: String,
        found: u32,
        supported: u32,
    },
    /// The data directory was written by a newer version of kahuna.
    #[error(
        "data directory {path} has format version {found}; this build supports up to {supported}"
    )]
    FormatTooNew {
        path: String,
        found: u32,
        supported: u32,
    },
    /// The data directory holds another storage engine than the one asked for.
    #[error("data directory {path} uses engine {recorded}, refusing to open it as {requested}")]
    EngineMismatch {
        path: String,
        recorded: String,
        requested: String,
    },
    /// The metadata file exists but cannot be parsed, or the directory holds foreign files.
    #[error("data directory {path} is not usable: {detail}")]
    BadDataDir { path: String, detail: String },
    /// An operating-system IO failure (kind and message; `std::io::Error` is not comparable).
    #[error("io error ({kind:?}) while {context}: {message}")]
    Io {
        context: String,
        kind: std::io::ErrorKind,
        message: String,
    },
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    RocksDb(String),
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(String),
}

impl StorageError {
    pub(crate) fn io(context: impl Into<String>, error: std::io::Error) -> StorageError {
        StorageError::Io {
            context: context.into(),
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    pub(crate) fn corruption(group: GroupId, detail: impl Into<String>) -> StorageError {
        StorageError::Corruption {
            group,
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(group: GroupId, detail: impl Into<String>) -> StorageError {
        StorageError::InvalidBatch {
            group,
            detail: detail.into(),
        }
    }
}

impl From<rocksdb::Error> for StorageError {
    fn from(error: rocksdb::Error) -> StorageError {
        StorageError::RocksDb(error.into_string())
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> StorageError {
        StorageError::Sqlite(error.to_string())
    }
}

/// Shorthand used throughout the storage layer.
pub type Result<T> = std::result::Result<T, StorageError>;
