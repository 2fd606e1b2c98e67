//! Owns the kv layer's error types: one for commands (client-facing, precise), one for records
//! read back from storage (damage), one for the read interface. Comparable, so tests match on
//! them; no IO here.

use crate::raft::GroupId;

/// Why a command cannot be encoded (a limit or rule the proposer broke) or decoded (bytes that
/// are not a command). Each variant maps to a precise client error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command is empty")]
    Empty,
    #[error("unknown command format {0}")]
    UnknownFormat(u8),
    #[error("unknown command operation {0}")]
    UnknownOperation(u8),
    #[error("unknown command flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("command truncated: {field} needs {needed} bytes, {remaining} remain")]
    Truncated {
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("command has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("key is empty")]
    KeyEmpty,
    #[error("key starts with the reserved byte 0x00")]
    KeyReserved,
    #[error("key is {bytes} bytes, the maximum is {max}")]
    KeyTooLarge { bytes: usize, max: usize },
    #[error("value is {bytes} bytes, the maximum is {max}")]
    ValueTooLarge { bytes: usize, max: usize },
    /// Client id 0 and sequence 0 are reserved (0 means "no session" on the wire).
    #[error("invalid session: client id {client_id}, sequence {sequence} (both must be non-zero)")]
    SessionInvalid { client_id: u64, sequence: u64 },
}

/// A record read back from the group's data does not decode: the data is damaged or was written
/// by a newer version. Never ignored: applying on top of it would diverge from other replicas.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{record} record is empty")]
    Empty { record: &'static str },
    #[error("unknown {record} record format {format}")]
    UnknownFormat { record: &'static str, format: u8 },
    #[error("{record} record has unknown flags {flags:#04x}")]
    UnknownFlags { record: &'static str, flags: u8 },
    #[error("{record} record is {bytes} bytes, expected {expected}")]
    Length {
        record: &'static str,
        bytes: usize,
        expected: usize,
    },
    #[error("{record} record breaks an invariant: {detail}")]
    Invariant {
        record: &'static str,
        detail: String,
    },
}

/// A read of the group's data failed. Carries the underlying message; the state machine treats
/// it as fatal for the replica (see [`crate::kv::KvMachine`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("group {group}: storage read failed: {source}")]
    Storage {
        group: GroupId,
        source: crate::storage::StorageError,
    },
    #[error("group {group}: read failed: {detail}")]
    Other { group: GroupId, detail: String },
}
