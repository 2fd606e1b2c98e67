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

use std::collections::VecDeque;

use ahash::AHashMap;
use bytes::Bytes;

use super::errors::RecordError;
use super::keys::{session_client, session_key};
use super::outcome::{Outcome, OUTCOME_BYTES};
use crate::raft::Index;
use crate::storage::{InlineBytes, KvOp};

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
        Bytes::copy_from_slice(&self.encode_array())
    }

    /// [`SessionRecord::encode`] into an array (no allocation).
    pub fn encode_array(&self) -> [u8; SESSION_RECORD_BYTES] {
        let mut out = [0u8; SESSION_RECORD_BYTES];
        out[0] = SESSION_FORMAT_V1;
        out[1..9].copy_from_slice(&self.sequence.to_be_bytes());
        out[9..17].copy_from_slice(&self.last_index.to_be_bytes());
        out[17..].copy_from_slice(&self.outcome.encode());
        out
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

/// Stale age records kept beyond the live sessions before they are swept out.
const STALE_AGES_SLACK: usize = 32;

/// One group's sessions in memory.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    by_client: AHashMap<u64, SessionRecord>,
    /// Every session's applied commands, oldest first, as (last index, client). A client that
    /// applies again leaves its earlier record here, stale (its session's `last_index` is
    /// newer); eviction skips stale records and `record` sweeps them out once they outnumber
    /// the live ones (plus `STALE_AGES_SLACK`), so the queue stays within twice the sessions.
    /// A queue instead of an ordered map, as in the revision cache: entries apply in index
    /// order, so ages arrive sorted and a session's new command costs a push, not a tree
    /// removal and insertion (~2% of a node's CPU at 256 clients).
    /// Invariants: indexes strictly increase front to back (so they are unique: one entry
    /// applies at most one session command); each session's `last_index` is the index of
    /// exactly one record, and no record is newer than its client's session.
    by_age: VecDeque<(Index, u64)>,
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
            table.by_age.push_back((record.last_index, client));
            table.by_client.insert(client, record);
        }
        // Stored in client order; the queue holds them by age.
        table.by_age.make_contiguous().sort_unstable();
        for pair in table.by_age.iter().zip(table.by_age.iter().skip(1)) {
            let (&(index, other), &(next, client)) = pair;
            if index == next {
                return Err(RecordError::Invariant {
                    record: RECORD,
                    detail: format!("clients {other} and {client} share last index {index}"),
                });
            }
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
        if let Some(&(newest, _)) = self.by_age.back() {
            assert!(
                newest < record.last_index,
                "client {client}: last index {} not after the newest session's {newest}",
                record.last_index
            );
        }
        if let Some(previous) = self.by_client.get(&client) {
            assert!(
                previous.last_index < record.last_index && previous.sequence < record.sequence,
                "client {client}: session goes backwards: {previous:?} then {record:?}"
            );
            // Its age record goes stale: `is_live` no longer matches it.
        } else {
            while self.by_client.len() >= sessions_max {
                let (index, evicted) = self.by_age.pop_front().expect("a live session's age");
                if !self.is_live(index, evicted) {
                    continue;
                }
                self.by_client.remove(&evicted);
                ops.push(KvOp::Delete {
                    key: Bytes::copy_from_slice(&session_key(evicted)),
                });
            }
        }
        self.by_age.push_back((record.last_index, client));
        self.by_client.insert(client, record);
        ops.push(session_put(client, &record));
        if self.by_age.len() > 2 * self.by_client.len() + STALE_AGES_SLACK {
            let by_client = &self.by_client;
            self.by_age
                .retain(|&(index, client)| age_is_live(by_client, index, client));
            debug_assert_eq!(self.by_age.len(), self.by_client.len());
        }
    }

    fn is_live(&self, index: Index, client: u64) -> bool {
        age_is_live(&self.by_client, index, client)
    }

    /// The live sessions' clients, least recently applied first (the eviction order).
    #[cfg(test)]
    fn clients_by_age(&self) -> Vec<u64> {
        self.by_age
            .iter()
            .filter(|&&(index, client)| self.is_live(index, client))
            .map(|&(_, client)| client)
            .collect()
    }
}

/// The write of `client`'s session record, held inline (no allocation).
fn session_put(client: u64, record: &SessionRecord) -> KvOp {
    KvOp::PutInline {
        key: InlineBytes::new(&session_key(client)),
        value: InlineBytes::new(&record.encode_array()),
    }
}

/// Whether the age record `(index, client)` is the client's current one (a free function so
/// the sweep can call it while it holds the queue mutably).
fn age_is_live(by_client: &AHashMap<u64, SessionRecord>, index: Index, client: u64) -> bool {
    by_client
        .get(&client)
        .is_some_and(|record| record.last_index == index)
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
        assert_eq!(reloaded.clients_by_age(), table.clients_by_age());
    }

    /// The table as it was with an ordered map of ages: the model the queue must match.
    #[derive(Default)]
    struct ModelTable {
        by_client: std::collections::HashMap<u64, SessionRecord>,
        by_age: std::collections::BTreeMap<Index, u64>,
    }

    impl ModelTable {
        fn record(&mut self, client: u64, record: SessionRecord, max: usize, ops: &mut Vec<KvOp>) {
            if let Some(previous) = self.by_client.get(&client) {
                self.by_age.remove(&previous.last_index);
            } else {
                while self.by_client.len() >= max {
                    let (_, evicted) = self.by_age.pop_first().unwrap();
                    self.by_client.remove(&evicted);
                    ops.push(KvOp::Delete {
                        key: Bytes::copy_from_slice(&session_key(evicted)),
                    });
                }
            }
            self.by_age.insert(record.last_index, client);
            self.by_client.insert(client, record);
            ops.push(session_put(client, &record));
        }
    }

    proptest::proptest! {
        /// Random clients (few, so sessions are re-applied often and stale ages pile up) and a
        /// small bound (so evictions happen): the same writes and deletes as the model, the same
        /// eviction order, a queue within its bound, and a reload that decides the same.
        #[test]
        fn matches_the_ordered_map_model(
            clients in proptest::collection::vec(0u64..12, 1..400),
            sessions_max in 1usize..8,
            reload_at in 0usize..400,
        ) {
            let mut table = SessionTable::default();
            let mut model = ModelTable::default();
            let mut sequences = std::collections::HashMap::new();
            for (step, &client) in clients.iter().enumerate() {
                let index = 2 * step as Index + 1;
                let sequence = sequences.entry(client).or_insert(0u64);
                *sequence += 1;
                let (mut ops, mut model_ops) = (Vec::new(), Vec::new());
                table.record(client, record(*sequence, index), sessions_max, &mut ops);
                model.record(client, record(*sequence, index), sessions_max, &mut model_ops);
                proptest::prop_assert_eq!(&ops, &model_ops);
                let model_order: Vec<u64> = model.by_age.values().copied().collect();
                proptest::prop_assert_eq!(table.clients_by_age(), model_order);
                proptest::prop_assert!(table.by_age.len() <= 2 * table.len() + STALE_AGES_SLACK);
                for (client, model_record) in &model.by_client {
                    proptest::prop_assert_eq!(table.get(*client), Some(model_record));
                }
                if step == reload_at {
                    // Evicted clients' sessions are gone from storage: the table reloads from
                    // the live records only, in client order as a scan returns them.
                    let mut stored: Vec<(Bytes, Bytes)> = model
                        .by_client
                        .iter()
                        .map(|(client, record)| {
                            (Bytes::copy_from_slice(&session_key(*client)), record.encode())
                        })
                        .collect();
                    stored.sort();
                    table = SessionTable::load(stored).unwrap();
                    let model_order: Vec<u64> = model.by_age.values().copied().collect();
                    proptest::prop_assert_eq!(table.clients_by_age(), model_order);
                }
            }
        }
    }

    #[test]
    fn load_refuses_two_sessions_with_one_last_index() {
        let stored = [(1u64, 5), (2, 9), (3, 5)].map(|(client, index)| {
            (
                Bytes::copy_from_slice(&session_key(client)),
                record(1, index).encode(),
            )
        });
        let error = SessionTable::load(stored).unwrap_err();
        assert!(
            format!("{error:?}").contains("share last index 5"),
            "{error:?}"
        );
    }

    #[test]
    #[should_panic(expected = "not after the newest session")]
    fn an_older_index_than_the_newest_session_is_refused() {
        let mut table = SessionTable::default();
        let mut ops = Vec::new();
        table.record(1, record(1, 10), 4, &mut ops);
        table.record(2, record(1, 9), 4, &mut ops);
    }
}
