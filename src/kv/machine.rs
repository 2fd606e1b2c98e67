//! Owns [`KvMachine`], the state machine every replica runs over its committed entries: it
//! decodes each command, decides it against the key's current revision and the client's session,
//! and hands back the storage mutations plus an outcome per entry for the client that proposed
//! it. It never writes storage itself (the shard puts the mutations in the same write batch as
//! the applied index that covers them) and never reads a clock.

use ahash::AHashMap;
use bytes::Bytes;

use super::cache::KeyCache;
use super::command::{Command, Op, Session};
use super::fetch::{scan_sessions, Fetch, Fetched};
use super::outcome::{Outcome, Rejection};
use super::reader::KvReader;
use super::session::{SessionRecord, SessionTable};
use super::value::ValueMeta;
use crate::raft::{Entry, EntryKind, GroupId, Index};
use crate::shard::StateMachine;
use crate::storage::{InlineBytes, KvOp};

/// Default bound on sessions per group.
pub const SESSIONS_MAX_DEFAULT: usize = 1024;
/// Default bound on the clean entries of one group's revision cache.
pub const CACHE_KEYS_MAX_DEFAULT: usize = 4096;
/// Keys one group's fetch asks for at most (the held entries beyond them ask again).
const FETCH_KEYS_MAX: usize = 256;
/// Values read ahead and not yet used, per group, beyond which they are dropped (see
/// `KvMachine::persisted`).
const PREFETCHED_KEYS_MAX: usize = 2 * FETCH_KEYS_MAX;

/// The fetch queued for `group`, begun for its state at `epoch` if none is.
fn queued_fetch(queued: &mut AHashMap<GroupId, Fetch>, group: GroupId, epoch: u64) -> &mut Fetch {
    queued.entry(group).or_insert_with(|| Fetch {
        group,
        epoch,
        ..Fetch::default()
    })
}

/// Adds `key` to `fetch` unless it is there already or the fetch holds `FETCH_KEYS_MAX` keys
/// (the rest are asked for by a later fetch).
fn queue_key(fetch: &mut Fetch, key: &[u8]) {
    if fetch.keys.len() < FETCH_KEYS_MAX && !fetch.keys.iter().any(|queued| queued == key) {
        fetch.keys.push(Bytes::copy_from_slice(key));
    }
}

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
/// `visible_index` is in `cache`; `sessions`, once loaded, equals the stored session records;
/// a key is never both in `cache` and in `prefetched`, and every `prefetched` value is the key's
/// current one (see the `fetch` module for why).
#[derive(Debug)]
struct GroupState {
    /// Distinguishes this state from any earlier one of the same group (fills carry it).
    epoch: u64,
    /// A fetch for this state is out: its entries wait for the fill, no second one is queued.
    fetching: bool,
    /// Current values read ahead for held entries, consumed by the apply that needs them.
    prefetched: AHashMap<Bytes, Option<ValueMeta>>,
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
    fn new(applied: Index, epoch: u64) -> GroupState {
        GroupState {
            epoch,
            fetching: false,
            prefetched: AHashMap::new(),
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
/// Reading current values: the machine reads only what its own cache does not hold. The cache
/// keeps every key the machine wrote until the node reports that write visible in storage
/// ([`KvMachine::persisted`]), because the shard applies the next entries while the previous
/// batch is still being written. Reads happen in one of two modes:
/// - read-through ([`KvMachine::new`]): a cache miss is a synchronous read through the given
///   [`KvReader`]. For tests and the simulator, where the reader is the backend itself
///   (`Rc<RefCell<B>>`) and blocking is harmless;
/// - prefetch ([`KvMachine::prefetching`]): the machine never reads. An entry whose reads are not
///   in memory is not applied yet (`can_apply` says no) and a [`Fetch`] is queued; the node
///   performs it off the reactor and hands the result to [`KvMachine::fill`]. See the `fetch`
///   module. This is what a node runs: the reactor never waits on storage.
///
/// If `persisted` is never called, nothing is wrong but the cache is never trimmed.
///
/// Fail-stop: a failed read or a damaged stored record panics (with the group, index and key).
/// `StateMachine::apply` cannot return an error, and carrying on would apply entries to data
/// that differs from the other replicas'. A restart resumes from the durable applied index.
pub struct KvMachine {
    config: KvMachineConfig,
    /// `None`: prefetch mode.
    reader: Option<Box<dyn KvReader>>,
    /// Boxed: most groups of a node are idle, and the map keeps spare capacity.
    groups: AHashMap<GroupId, Box<GroupState>>,
    /// Drained by [`KvMachine::take_completions`]; grows by one per applied command.
    completions: Vec<Completion>,
    /// Fetches queued since the last [`KvMachine::take_fetches`], at most one per group.
    queued: AHashMap<GroupId, Fetch>,
    /// The epoch the next group state gets.
    next_epoch: u64,
}

impl KvMachine {
    /// Read-through mode: cache misses read `reader` synchronously.
    pub fn new(config: KvMachineConfig, reader: Box<dyn KvReader>) -> KvMachine {
        Self::with_reader(config, Some(reader))
    }

    /// Prefetch mode: the machine never reads; see [`KvMachine::take_fetches`].
    pub fn prefetching(config: KvMachineConfig) -> KvMachine {
        Self::with_reader(config, None)
    }

    fn with_reader(config: KvMachineConfig, reader: Option<Box<dyn KvReader>>) -> KvMachine {
        assert!(config.sessions_max >= 1, "sessions_max must be at least 1");
        KvMachine {
            config,
            reader,
            groups: AHashMap::new(),
            completions: Vec::new(),
            queued: AHashMap::new(),
            next_epoch: 1,
        }
    }

    fn new_state(&mut self, applied: Index) -> Box<GroupState> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        Box::new(GroupState::new(applied, epoch))
    }

    /// The fetches queued since the last call (prefetch mode). Perform each off the reactor
    /// with [`crate::kv::fetch_blocking`] and hand the result to [`KvMachine::fill`]; until then
    /// the group's held entries wait.
    pub fn take_fetches(&mut self) -> Vec<Fetch> {
        let mut fetches = Vec::with_capacity(self.queued.len());
        for (group, fetch) in self.queued.drain() {
            if let Some(state) = self.groups.get_mut(&group) {
                if state.epoch == fetch.epoch {
                    state.fetching = true;
                    fetches.push(fetch);
                }
            }
        }
        fetches.sort_unstable_by_key(|fetch| fetch.group);
        fetches
    }

    /// Prefetch mode: an entry that will need `key` is on its way (this replica, the leader,
    /// just proposed it), so the read can run while the entry replicates instead of after it
    /// commits. Queues `key` into the group's next fetch when nothing holds it already; does
    /// nothing while a fetch is out, a snapshot is not visible, or the group has no state yet
    /// (the apply asks then, as without a hint).
    ///
    /// Why the early read stays correct (see the `fetch` module): the key is in neither the
    /// cache nor `prefetched`, so its last write is visible in storage; until the fill, an entry
    /// touching the key cannot apply (it needs the key and a fetch is out: it is held), so
    /// storage still shows the current value when read; and the fill skips a key the cache
    /// holds by then.
    pub fn prefetch_hint(&mut self, group: GroupId, key: &[u8]) {
        if self.reader.is_some() {
            return;
        }
        let Some(state) = self.groups.get(&group) else {
            return;
        };
        if state.fetching
            || state.snapshot_pending.is_some()
            || state.cache.get(key).is_some()
            || state.prefetched.contains_key(key)
        {
            return;
        }
        queue_key(queued_fetch(&mut self.queued, group, state.epoch), key);
    }

    /// The answer to a fetch. Returns the group, whose held entries may now apply (the caller
    /// marks it for the next collect). A fill for a state replaced since is dropped: its entries
    /// ask again.
    pub fn fill(&mut self, fetched: Fetched) -> GroupId {
        let group = fetched.group;
        let Some(state) = self.groups.get_mut(&group) else {
            return group;
        };
        if state.epoch != fetched.epoch {
            return group;
        }
        state.fetching = false;
        for (key, stored) in fetched.values {
            if state.cache.get(&key).is_some() {
                continue;
            }
            let meta = stored.map(|bytes| {
                ValueMeta::decode(&bytes).unwrap_or_else(|error| {
                    panic!("group {group}: stored value of key {key:?}: {error}")
                })
            });
            state.prefetched.insert(key, meta);
        }
        if let Some(records) = fetched.sessions {
            if state.sessions.is_none() {
                let table = SessionTable::load(records)
                    .unwrap_or_else(|error| panic!("group {group}: loading sessions: {error}"));
                state.sessions = Some(table);
            }
        }
        group
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
        // Values read ahead for proposals that never applied (a lost leadership) would stay
        // forever: bound them. Dropping them is always safe (nothing else holds the key, so
        // storage is current for it and an apply that needs it asks again), but not while a
        // fetch is out, whose held entries are about to use them.
        if !state.fetching && state.prefetched.len() > PREFETCHED_KEYS_MAX {
            state.prefetched.clear();
        }
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
        let mut state = self.new_state(snapshot_index);
        state.snapshot_pending = Some(snapshot_index);
        self.queued.remove(&group);
        self.groups.insert(group, state);
    }

    /// The replica was removed from this node: drop its state.
    pub fn remove_group(&mut self, group: GroupId) {
        self.queued.remove(&group);
        self.groups.remove(&group);
    }

    /// Drops a group's in-memory state (an idle, hibernating group) if storage shows all its
    /// writes; it is reloaded on the next apply. Returns false, keeping it, otherwise.
    pub fn unload_group(&mut self, group: GroupId) -> bool {
        let Some(state) = self.groups.get(&group) else {
            return true;
        };
        let clean = Self::unloadable(state, self.queued.contains_key(&group));
        if clean {
            self.groups.remove(&group);
        }
        clean
    }

    /// Drops the in-memory state of every group whose writes storage shows (see
    /// [`KvMachine::unload_group`]): revision caches, session tables and values read ahead,
    /// reloaded from storage by the next apply. For a core that has been idle for a while: a
    /// node whose groups were busy once would otherwise hold their caches (up to
    /// `cache_keys_max` keys each) and session tables (up to `sessions_max` each) forever.
    /// Returns how many groups were unloaded.
    pub fn unload_idle_groups(&mut self) -> usize {
        let before = self.groups.len();
        let queued = &self.queued;
        self.groups
            .retain(|group, state| !Self::unloadable(state, queued.contains_key(group)));
        before - self.groups.len()
    }

    /// Whether dropping `state` loses nothing: storage shows every write it applied, nothing
    /// is being read for it, and no read is queued. (Values read ahead go with it: they are
    /// only copies of what storage holds.)
    fn unloadable(state: &GroupState, fetch_queued: bool) -> bool {
        let clean = state.snapshot_pending.is_none()
            && state.visible_index == state.last_index
            && !state.fetching
            && !fetch_queued;
        debug_assert!(!clean || state.cache.is_clean(state.visible_index));
        clean
    }

    /// Groups whose state the machine holds in memory (for metrics).
    pub fn loaded_groups(&self) -> usize {
        self.groups.len()
    }

    /// Values read ahead and not yet used by an apply (for tests and metrics).
    pub fn prefetched_keys(&self, group: GroupId) -> usize {
        self.groups
            .get(&group)
            .map_or(0, |state| state.prefetched.len())
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

    /// Prefetch mode: hints the key of every command just appended ([`KvMachine::prefetch_hint`]
    /// says why an early read stays correct, whichever replica makes it and whether or not the
    /// entry is later replaced). On a follower this is what takes the revision read off the
    /// apply: the entry's commit arrives with the next append, one round trip later, by when
    /// the read is done. (A leader hints its keys when it proposes.)
    fn entries_appended(&mut self, group: GroupId, entries: &[Entry]) {
        if self.reader.is_some() {
            return;
        }
        for entry in entries {
            if entry.kind != EntryKind::Normal || entry.data.is_empty() {
                continue;
            }
            if let Ok((_, key)) = Command::peek(&entry.data) {
                self.prefetch_hint(group, key);
            }
        }
    }

    /// Prefetch mode: true when every read `entry` needs is in memory; otherwise queues what
    /// it needs (into the group's one fetch, unless one is out or a snapshot is not visible
    /// yet: the fill or `persisted` lets the shard ask again).
    fn can_apply(&mut self, group: GroupId, entry: &Entry) -> bool {
        if self.reader.is_some() || entry.kind != EntryKind::Normal || entry.data.is_empty() {
            return true;
        }
        // An undecodable command is rejected by `apply` without reading anything.
        let Ok((session, key)) = Command::peek(&entry.data) else {
            return true;
        };
        if !self.groups.contains_key(&group) {
            let state = self.new_state(entry.index - 1);
            self.groups.insert(group, state);
        }
        let state = self.groups.get_mut(&group).expect("inserted above");
        let needs_key = state.cache.get(key).is_none() && !state.prefetched.contains_key(key);
        let needs_sessions = session.is_some() && state.sessions.is_none();
        if !needs_key && !needs_sessions {
            return true;
        }
        if state.fetching || state.snapshot_pending.is_some() {
            return false;
        }
        let fetch = queued_fetch(&mut self.queued, group, state.epoch);
        if needs_key {
            queue_key(fetch, key);
        }
        fetch.sessions |= needs_sessions;
        false
    }

    fn apply(&mut self, group: GroupId, entry: &Entry, ops: &mut Vec<KvOp>) {
        assert!(entry.index >= 1, "group {group}: entry index 0");
        let command = entry.kind == EntryKind::Normal && !entry.data.is_empty();
        // A group that has only seen noop and configuration entries needs no state (an idle
        // node holds thousands of them); its state starts with its first command.
        if !command && !self.groups.contains_key(&group) {
            return;
        }
        if !self.groups.contains_key(&group) {
            let state = self.new_state(entry.index - 1);
            self.groups.insert(group, state);
        }
        let state = self.groups.get_mut(&group).expect("inserted above");
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
            reader: self.reader.as_deref(),
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
    /// `None`: prefetch mode, every read was fetched before the apply.
    reader: Option<&'a dyn KvReader>,
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
                let outcome = if session.sequence == record.sequence {
                    completion.replayed = true;
                    Some(record.outcome)
                } else if session.sequence < record.sequence {
                    Some(Outcome::SequenceStale {
                        last_sequence: record.sequence,
                    })
                } else {
                    None
                };
                if let Some(outcome) = outcome {
                    // A replayed or stale command reads nothing: drop what a hint may have
                    // read ahead for it (always safe: a later apply asks again).
                    self.state.prefetched.remove(command.op.key());
                    completion.outcome = outcome;
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
                    self.state.cache.fill(&key, current, self.index);
                    Outcome::RevisionMismatch {
                        current: current_revision,
                    }
                }
            }
            Op::Delete { key } => match current {
                Some(meta) => {
                    self.state.cache.write(&key, None, self.index);
                    self.ops.push(KvOp::Delete { key });
                    Outcome::Deleted {
                        previous_revision: meta.revision,
                    }
                }
                None => {
                    self.state.cache.fill(&key, None, self.index);
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
        self.state.cache.write(&key, Some(meta), self.index);
        // The stored value is the header and the user value as the entry holds it: the store
        // copies both into its batch once (`StoredValue::encode` would copy the value first).
        self.ops.push(KvOp::PutJoined {
            key,
            head: InlineBytes::new(&meta.header()),
            tail: value,
        });
        Outcome::Applied {
            revision: self.index,
        }
    }

    /// The key's current revisions: from the cache, else what was prefetched for it (taken:
    /// every caller puts the key in the cache), else, in read-through mode, from storage.
    fn current(&mut self, key: &Bytes) -> Option<ValueMeta> {
        let meta = if let Some(meta) = self.state.cache.get(key) {
            meta
        } else if let Some(meta) = self.state.prefetched.remove(key) {
            meta
        } else {
            self.check_readable("key");
            let reader = self.reader.unwrap_or_else(|| {
                panic!(
                    "group {} entry {}: key {key:?} applied without being fetched \
                     (can_apply must say yes first)",
                    self.group, self.index
                )
            });
            let stored = reader.get(self.group, key).unwrap_or_else(|error| {
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

    /// Every stored session record (read-through mode only).
    fn scan_sessions(&self) -> Vec<(Bytes, Bytes)> {
        let reader = self.reader.unwrap_or_else(|| {
            panic!(
                "group {} entry {}: sessions applied without being fetched \
                 (can_apply must say yes first)",
                self.group, self.index
            )
        });
        scan_sessions(reader, self.group).unwrap_or_else(|error| {
            panic!(
                "group {} entry {}: scanning sessions: {error}",
                self.group, self.index
            )
        })
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
