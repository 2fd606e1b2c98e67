//! Owns [`KvMachine`], the state machine every replica runs over its committed entries: it
//! decodes each command, decides it against the key's current revision and the client's session,
//! and hands back the storage mutations plus an outcome per entry for the client that proposed
//! it. It never writes storage itself (the shard puts the mutations in the same write batch as
//! the applied index that covers them) and never reads a clock.

use ahash::AHashMap;
use bytes::Bytes;

use super::cache::KeyCache;
use super::command::{Command, Op, Session};
use super::keys::{SESSIONS_END, SESSIONS_START};
use super::outcome::{Outcome, Rejection};
use super::reader::KvReader;
use super::session::{SessionRecord, SessionTable};
use super::value::{StoredValue, ValueMeta};
use crate::raft::{Entry, EntryKind, GroupId, Index};
use crate::shard::StateMachine;
use crate::storage::KvOp;

/// Default bound on sessions per group.
pub const SESSIONS_MAX_DEFAULT: usize = 1024;
/// Default bound on the clean entries of one group's revision cache.
pub const CACHE_KEYS_MAX_DEFAULT: usize = 4096;
/// Session records read per storage call when a group's table is loaded.
const SESSION_SCAN_PAGE_MAX: usize = 1024;

/// Limits of a [`KvMachine`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvMachineConfig {
    /// Sessions kept per group (see the `session` module for how to size it). Replicated
    /// behaviour depends on it: every replica of a group must use the same value.
    pub sessions_max: usize,
    /// Clean cache entries kept per group; does not affect behaviour, only storage reads.
    pub cache_keys_max: usize,
}

impl Default for KvMachineConfig {
    fn default() -> KvMachineConfig {
        KvMachineConfig {
            sessions_max: SESSIONS_MAX_DEFAULT,
            cache_keys_max: CACHE_KEYS_MAX_DEFAULT,
        }
    }
}

/// What one applied entry did, for the node to answer the client whose proposal it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub group: GroupId,
    pub index: Index,
    pub session: Option<Session>,
    pub outcome: Outcome,
    /// The entry was a retry of the session's last command: nothing was applied now and
    /// `outcome` is the original one.
    pub replayed: bool,
}

/// Per-group state. Invariants: `visible_index <= last_index`; every key written above
/// `visible_index` is in `cache`; `sessions`, once loaded, equals the stored session records.
#[derive(Debug)]
struct GroupState {
    /// The last entry applied (any kind).
    last_index: Index,
    /// Storage reads reflect every write up to here.
    visible_index: Index,
    /// A snapshot installed at this index is not visible to reads yet.
    snapshot_pending: Option<Index>,
    cache: KeyCache,
    /// Loaded from storage on the first session command.
    sessions: Option<SessionTable>,
}

impl GroupState {
    fn new(applied: Index) -> GroupState {
        GroupState {
            last_index: applied,
            visible_index: applied,
            snapshot_pending: None,
            cache: KeyCache::default(),
            sessions: None,
        }
    }
}

/// The replicated key/value state machine for every group of one core.
///
/// Reading current values: the machine reads through a [`KvReader`] only what its own cache
/// does not hold. The cache keeps every key the machine wrote until the node reports that write
/// visible in storage ([`KvMachine::persisted`]), because the shard applies the next entries
/// while the previous batch is still being written on the writer thread. Hence:
/// - in tests and the simulator the reader is the backend itself (`Rc<RefCell<B>>`), and the
///   driver calls `persisted` after each written batch;
/// - in production the backend lives on the writer thread, so the reader must be something the
///   reactor can call synchronously: a read-only handle to the core's engine (RocksDB allows
///   reads from another thread). A cache miss is then one blocking point read on the reactor,
///   at most one per put, delete or compare-and-set of a key not touched recently, plus one
///   scan of the session range when a group first sees a session command;
/// - if `persisted` is never called, nothing is wrong but the cache is never trimmed.
///
/// Fail-stop: a failed read or a damaged stored record panics (with the group, index and key).
/// `StateMachine::apply` cannot return an error, and carrying on would apply entries to data
/// that differs from the other replicas'. A restart resumes from the durable applied index.
pub struct KvMachine {
    config: KvMachineConfig,
    reader: Box<dyn KvReader>,
    /// Boxed: most groups of a node are idle, and the map keeps spare capacity.
    groups: AHashMap<GroupId, Box<GroupState>>,
    /// Drained by [`KvMachine::take_completions`]; grows by one per applied command.
    completions: Vec<Completion>,
}

impl KvMachine {
    pub fn new(config: KvMachineConfig, reader: Box<dyn KvReader>) -> KvMachine {
        assert!(config.sessions_max >= 1, "sessions_max must be at least 1");
        KvMachine {
            config,
            reader,
            groups: AHashMap::new(),
            completions: Vec::new(),
        }
    }

    pub fn config(&self) -> &KvMachineConfig {
        &self.config
    }

    /// The outcomes of every command applied since the last call, in apply order.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Storage reads of `group` now reflect every mutation applied up to `index` (the write
    /// batch carrying them was written). Lets the cache drop entries it no longer must hold.
    pub fn persisted(&mut self, group: GroupId, index: Index) {
        let Some(state) = self.groups.get_mut(&group) else {
            return;
        };
        state.visible_index = state.visible_index.max(index.min(state.last_index));
        if state
            .snapshot_pending
            .is_some_and(|snapshot| snapshot <= index)
        {
            state.snapshot_pending = None;
        }
        state
            .cache
            .trim(self.config.cache_keys_max, state.visible_index);
    }

    /// A snapshot at `snapshot_index` replaces the group's data: forget everything held about
    /// it. Storage reads of the group are refused (panic) until `persisted` reports the snapshot
    /// visible, because they would see the data it replaces.
    pub fn reset_group(&mut self, group: GroupId, snapshot_index: Index) {
        let mut state = GroupState::new(snapshot_index);
        state.snapshot_pending = Some(snapshot_index);
        self.groups.insert(group, Box::new(state));
    }

    /// The replica was removed from this node: drop its state.
    pub fn remove_group(&mut self, group: GroupId) {
        self.groups.remove(&group);
    }

    /// Drops a group's in-memory state (an idle, hibernating group) if storage shows all its
    /// writes; it is reloaded on the next apply. Returns false, keeping it, otherwise.
    pub fn unload_group(&mut self, group: GroupId) -> bool {
        let Some(state) = self.groups.get(&group) else {
            return true;
        };
        let clean = state.snapshot_pending.is_none() && state.visible_index == state.last_index;
        if clean {
            debug_assert!(state.cache.is_clean(state.visible_index));
            self.groups.remove(&group);
        }
        clean
    }

    /// Keys the group's cache holds (for tests and metrics).
    pub fn cached_keys(&self, group: GroupId) -> usize {
        self.groups.get(&group).map_or(0, |state| state.cache.len())
    }

    /// Sessions of the group in memory, `None` if its table is not loaded.
    pub fn session_count(&self, group: GroupId) -> Option<usize> {
        let state = self.groups.get(&group)?;
        state.sessions.as_ref().map(SessionTable::len)
    }
}

impl StateMachine for KvMachine {
    fn restored(&mut self, group: GroupId, index: Index) {
        self.reset_group(group, index);
    }

    fn apply(&mut self, group: GroupId, entry: &Entry, ops: &mut Vec<KvOp>) {
        assert!(entry.index >= 1, "group {group}: entry index 0");
        let state = self
            .groups
            .entry(group)
            .or_insert_with(|| Box::new(GroupState::new(entry.index - 1)));
        assert!(
            entry.index > state.last_index,
            "group {group}: entry {} applied after entry {}",
            entry.index,
            state.last_index
        );
        state.last_index = entry.index;
        // Noop and configuration entries change no data; an empty Normal entry is not a command.
        if entry.kind != EntryKind::Normal || entry.data.is_empty() {
            return;
        }
        let mut apply = Apply {
            config: &self.config,
            reader: self.reader.as_ref(),
            state,
            group,
            index: entry.index,
            ops,
        };
        let completion = match Command::decode(&entry.data) {
            Ok(command) => apply.command(command),
            Err(error) => Completion {
                group,
                index: entry.index,
                session: None,
                outcome: Outcome::Rejected(Rejection::from(&error)),
                replayed: false,
            },
        };
        state
            .cache
            .trim(self.config.cache_keys_max, state.visible_index);
        self.completions.push(completion);
    }
}

/// The application of one command to one group.
struct Apply<'a> {
    config: &'a KvMachineConfig,
    reader: &'a dyn KvReader,
    state: &'a mut GroupState,
    group: GroupId,
    index: Index,
    ops: &'a mut Vec<KvOp>,
}

impl Apply<'_> {
    fn command(&mut self, command: Command) -> Completion {
        let mut completion = Completion {
            group: self.group,
            index: self.index,
            session: command.session,
            outcome: Outcome::NotFound,
            replayed: false,
        };
        if let Some(session) = command.session {
            let sessions = self.sessions();
            if let Some(record) = sessions.get(session.client_id) {
                if session.sequence == record.sequence {
                    completion.outcome = record.outcome;
                    completion.replayed = true;
                    return completion;
                }
                if session.sequence < record.sequence {
                    completion.outcome = Outcome::SequenceStale {
                        last_sequence: record.sequence,
                    };
                    return completion;
                }
            }
        }
        completion.outcome = self.operation(command.op);
        if let Some(session) = command.session {
            let record = SessionRecord {
                sequence: session.sequence,
                last_index: self.index,
                outcome: completion.outcome,
            };
            let sessions = self.state.sessions.as_mut().expect("loaded above");
            sessions.record(
                session.client_id,
                record,
                self.config.sessions_max,
                self.ops,
            );
        }
        completion
    }

    fn operation(&mut self, op: Op) -> Outcome {
        let current = self.current(op.key());
        match op {
            Op::Put { key, value } => self.write(key, value, current),
            Op::Cas {
                key,
                expected_revision,
                value,
            } => {
                let current_revision = current.map_or(0, |meta| meta.revision);
                if current_revision == expected_revision {
                    self.write(key, value, current)
                } else {
                    self.state.cache.fill(key, current, self.index);
                    Outcome::RevisionMismatch {
                        current: current_revision,
                    }
                }
            }
            Op::Delete { key } => match current {
                Some(meta) => {
                    self.ops.push(KvOp::Delete { key: key.clone() });
                    self.state.cache.write(key, None, self.index);
                    Outcome::Deleted {
                        previous_revision: meta.revision,
                    }
                }
                None => {
                    self.state.cache.fill(key, None, self.index);
                    Outcome::NotFound
                }
            },
        }
    }

    /// Writes `value` at this entry's index, keeping the create revision of a live key.
    fn write(&mut self, key: Bytes, value: Bytes, current: Option<ValueMeta>) -> Outcome {
        let meta = ValueMeta {
            revision: self.index,
            create_revision: current.map_or(self.index, |meta| meta.create_revision),
        };
        let stored = StoredValue { meta, value }.encode();
        self.ops.push(KvOp::Put {
            key: key.clone(),
            value: stored,
        });
        self.state.cache.write(key, Some(meta), self.index);
        Outcome::Applied {
            revision: self.index,
        }
    }

    /// The key's current revisions: from the cache, else from storage.
    fn current(&mut self, key: &Bytes) -> Option<ValueMeta> {
        let meta = match self.state.cache.get(key) {
            Some(meta) => meta,
            None => {
                self.check_readable("key");
                let stored = self.reader.get(self.group, key).unwrap_or_else(|error| {
                    panic!(
                        "group {} entry {}: reading key {key:?}: {error}",
                        self.group, self.index
                    )
                });
                stored.map(|bytes| {
                    ValueMeta::decode(&bytes).unwrap_or_else(|error| {
                        panic!(
                            "group {} entry {}: stored value of key {key:?}: {error}",
                            self.group, self.index
                        )
                    })
                })
            }
        };
        if let Some(meta) = meta {
            // Storage ahead of the apply means an entry is being applied twice.
            assert!(
                meta.revision < self.index,
                "group {} entry {}: key {key:?} already at revision {}",
                self.group,
                self.index,
                meta.revision
            );
        }
        meta
    }

    /// The group's session table, loaded from storage on first use.
    fn sessions(&mut self) -> &SessionTable {
        if self.state.sessions.is_none() {
            self.check_readable("sessions");
            let records = self.scan_sessions();
            let table = SessionTable::load(records).unwrap_or_else(|error| {
                panic!(
                    "group {} entry {}: loading sessions: {error}",
                    self.group, self.index
                )
            });
            self.state.sessions = Some(table);
        }
        self.state.sessions.as_ref().expect("loaded")
    }

    /// Every stored session record, page by page (the loop ends when a page comes back short;
    /// the number of pages is bounded by the stored records).
    fn scan_sessions(&self) -> Vec<(Bytes, Bytes)> {
        let mut records = Vec::new();
        let mut start = SESSIONS_START.to_vec();
        loop {
            let page = self
                .reader
                .scan(self.group, &start, SESSIONS_END, SESSION_SCAN_PAGE_MAX)
                .unwrap_or_else(|error| {
                    panic!(
                        "group {} entry {}: scanning sessions: {error}",
                        self.group, self.index
                    )
                });
            let full = page.len() == SESSION_SCAN_PAGE_MAX;
            if let Some((last, _)) = page.last() {
                // The next key after `last`.
                start = last.to_vec();
                start.push(0);
            }
            records.extend(page);
            if !full {
                return records;
            }
        }
    }

    fn check_readable(&self, what: &str) {
        if let Some(snapshot) = self.state.snapshot_pending {
            panic!(
                "group {} entry {}: reading {what} before the snapshot at {snapshot} is visible \
                 (call persisted after writing it)",
                self.group, self.index
            );
        }
    }
}
