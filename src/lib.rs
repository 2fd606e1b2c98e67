//! Kahuna: a thread-per-core Multi-Raft replicated key/value store.
//!
//! Layers, bottom up: [`raft`] (the sans-IO consensus core), [`storage`] (durable log, raft
//! state and key/value data), [`proto`] (flatbuffers wire formats and framing).

pub mod proto;
pub mod raft;
pub mod shard;
pub mod storage;
