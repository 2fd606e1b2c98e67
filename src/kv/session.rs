//! Owns one group's client session table (Raft thesis 6.3): per client id, the last applied
//! sequence number and its outcome, so a retried command is not applied twice and gets the
//! original answer.
//!
//! Determinism: the table is replicated state. Its contents and its eviction order are functions
//! of the applied entries only: recency is the raft index of the last command a session applied
//! (a replayed retry does not refresh it, because a refresh would have to be written too). The
//! in-memory table always equals the stored records, so a replica that restarts and reloads it
//! decides exactly as one that did not.
//!
//! Bound: at most `sessions_max` sessions; a new client beyond that evicts the least recently
//! used one. An evicted client loses at-most-once: a retry of its last command would be applied
//! again. `sessions_max` must therefore cover every client that may still retry (clients active
//! within the retry horizon), and it must be the same on every replica of a group.

use std::collections::BTreeMap;

use ahash::AHashMap;
use bytes::{BufMut, Bytes, BytesMut};

use super::errors::RecordError;
use super::keys::{session_client, session_key};
use super::outcome::{Outcome, OUTCOME_BYTES};
use crate::raft::Index;
use crate::storage::KvOp;

const SESSION_FORMAT_V1: u8 = 1;
const RECORD: &str = "session";
const SESSION_RECORD_BYTES: usize = 1 + 8 + 8 + OUTCOME_BYTES;

/// One client's session as stored under [`crate::kv::session_key`]. Layout, format 1: format
/// (1 B), sequence (u64 BE), last index (u64 BE), outcome (9 B: tag, u64 BE payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The highest sequence number applied for the client.
    pub sequence: u64,
    /// The raft index of the entry that applied `sequence` (the recency used for eviction).
    pub last_index: Index,
    /// What applying `sequence` did.
    pub outcome: Outcome,
}

impl SessionRecord {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(SESSION_RECORD_BYTES);
        out.put_u8(SESSION_FORMAT_V1);
        out.put_u64(self.sequence);
        out.put_u64(self.last_index);
        out.put_slice(&self.outcome.encode());
        out.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<SessionRecord, RecordError> {
        let Some(&format) = bytes.first() else {
            return Err(RecordError::Empty { record: RECORD });
        };
        if format != SESSION_FORMAT_V1 {
            return Err(RecordError::UnknownFormat {
                record: RECORD,
                format,
            });
        }
        if bytes.len() != SESSION_RECORD_BYTES {
            return Err(RecordError::Length {
                record: RECORD,
                bytes: bytes.len(),
                expected: SESSION_RECORD_BYTES,
            });
        }
        let sequence = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let last_index = u64::from_be_bytes(bytes[9..17].try_into().expect("8 bytes"));
        if sequence == 0 || last_index == 0 {
            return Err(RecordError::Invariant {
                record: RECORD,
                detail: format!("sequence {sequence}, last index {last_index}"),
            });
        }
        Ok(SessionRecord {
            sequence,
            last_index,
            outcome: Outcome::decode(&bytes[17..])?,
        })
    }
}

/// One group's sessions in memory. Invariant: `by_age` holds exactly one entry per session,
/// keyed by its `last_index` (unique: one entry applies at most one session command).
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    by_client: AHashMap<u64, SessionRecord>,
    by_age: BTreeMap<Index, u64>,
}

impl SessionTable {
    /// Rebuilds the table from stored `(key, record)` pairs of the session range.
    pub(crate) fn load(
        records: impl IntoIterator<Item = (Bytes, Bytes)>,
    ) -> Result<SessionTable, RecordError> {
        let mut table = SessionTable::default();
        for (key, value) in records {
            let Some(client) = session_client(&key) else {
                return Err(RecordError::Invariant {
                    record: RECORD,
                    detail: format!("malformed session key {key:?}"),
                });
            };
            let record = SessionRecord::decode(&value)?;
            if let Some(other) = table.by_age.insert(record.last_index, client) {
                return Err(RecordError::Invariant {
                    record: RECORD,
                    detail: format!(
                        "clients {other} and {client} share last index {}",
                        record.last_index
                    ),
                });
            }
            table.by_client.insert(client, record);
        }
        Ok(table)
    }

    pub(crate) fn get(&self, client: u64) -> Option<&SessionRecord> {
        self.by_client.get(&client)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Records `client`'s newly applied command, writing the record (and deleting evicted ones)
    /// through `ops`. A new client evicts the least recently used sessions down to
    /// `sessions_max - 1` first.
    pub(crate) fn record(
        &mut self,
        client: u64,
        record: SessionRecord,
        sessions_max: usize,
        ops: &mut Vec<KvOp>,
    ) {
        assert!(sessions_max >= 1, "sessions_max must be at least 1");
        if let Some(previous) = self.by_client.get(&client) {
            assert!(
                previous.last_index < record.last_index && previous.sequence < record.sequence,
                "client {client}: session goes backwards: {previous:?} then {record:?}"
            );
            self.by_age.remove(&previous.last_index);
        } else {
            while self.by_client.len() >= sessions_max {
                let (_, evicted) = self.by_age.pop_first().expect("table not empty");
                self.by_client.remove(&evicted);
                ops.push(KvOp::Delete {
                    key: Bytes::copy_from_slice(&session_key(evicted)),
                });
            }
        }
        let displaced = self.by_age.insert(record.last_index, client);
        assert!(
            displaced.is_none(),
            "last index {} already used by client {displaced:?}",
            record.last_index
        );
        self.by_client.insert(client, record);
        ops.push(KvOp::Put {
            key: Bytes::copy_from_slice(&session_key(client)),
            value: record.encode(),
        });
        debug_assert_eq!(self.by_client.len(), self.by_age.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64, last_index: Index) -> SessionRecord {
        SessionRecord {
            sequence,
            last_index,
            outcome: Outcome::Applied {
                revision: last_index,
            },
        }
    }

    #[test]
    fn record_round_trips_and_rejects_damage() {
        let original = record(3, 10);
        let bytes = original.encode();
        assert_eq!(SessionRecord::decode(&bytes), Ok(original));
        assert!(SessionRecord::decode(&bytes[..25]).is_err());
        assert!(SessionRecord::decode(&[]).is_err());
        let mut zero = bytes.to_vec();
        zero[1..9].copy_from_slice(&0u64.to_be_bytes());
        assert!(SessionRecord::decode(&zero).is_err());
    }

    #[test]
    fn evicts_least_recently_applied_and_reloads_identically() {
        let mut table = SessionTable::default();
        let mut ops = Vec::new();
        table.record(1, record(1, 1), 2, &mut ops);
        table.record(2, record(1, 2), 2, &mut ops);
        table.record(1, record(2, 3), 2, &mut ops); // client 1 is now the most recent
        ops.clear();
        table.record(3, record(1, 4), 2, &mut ops);
        assert_eq!(
            ops[0],
            KvOp::Delete {
                key: Bytes::copy_from_slice(&session_key(2))
            }
        );
        assert!(table.get(2).is_none());
        assert_eq!(table.len(), 2);
        let stored = [1u64, 3].map(|client| {
            (
                Bytes::copy_from_slice(&session_key(client)),
                table.get(client).unwrap().encode(),
            )
        });
        let reloaded = SessionTable::load(stored).unwrap();
        assert_eq!(reloaded.by_client, table.by_client);
        assert_eq!(reloaded.by_age, table.by_age);
    }
}
