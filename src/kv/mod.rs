//! The replicated key/value state machine: what a committed entry means and what it does to a
//! group's data. Owns the command format carried in entry data, the stored value format, the
//! reserved system key range, client sessions (at-most-once writes, Raft thesis 6.3) and the
//! [`KvMachine`] that turns committed entries into storage mutations ([`crate::storage::KvOp`]).
//!
//! It never does IO of its own and never looks at a clock: every decision is a function of the
//! replicated entries and the group's stored data, so every replica applies the same entries to
//! the same bytes. Reads of current values go through a [`KvReader`] the caller supplies.
//!
//! Modules: `keys` (user and reserved key layout), `command` (the replicated command format),
//! `value` (the stored value format), `outcome` (what applying one command did), `session` (the
//! per-group session table), `cache` (the read-through cache of key revisions), `reader` (the read
//! interface to storage), `fetch` (reads done ahead, off the reactor), `machine` (the state machine), `errors`.

mod cache;
mod command;
mod errors;
mod fetch;
mod keys;
mod machine;
mod outcome;
mod reader;
mod session;
mod value;

pub use command::{Command, Op, Session, COMMAND_FORMAT_V1, KEY_BYTES_MAX, VALUE_BYTES_MAX};
pub use errors::{CommandError, ReadError, RecordError};
pub use fetch::{fetch_blocking, Fetch, Fetched};
pub use keys::{
    session_key, validate_user_key, RESERVED_PREFIX, SESSIONS_END, SESSIONS_START, USER_KEYS_START,
};
pub use machine::{
    Completion, KvMachine, KvMachineConfig, CACHE_KEYS_MAX_DEFAULT, SESSIONS_MAX_DEFAULT,
};
pub use outcome::{Outcome, Rejection};
pub use reader::{BackendReader, ConcurrentReader, KvReader};
pub use session::SessionRecord;
pub use value::{StoredValue, ValueMeta, VALUE_FORMAT_V1, VALUE_HEADER_BYTES};
