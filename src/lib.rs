//! Kahuna: a thread-per-core Multi-Raft replicated key/value store.
//!
//! Layers, bottom up: [`raft`] (the sans-IO consensus core), [`storage`] (durable log, raft
//! state and key/value data), [`kv`] (the replicated state machine), [`shard`] (many groups per
//! core), [`proto`] (flatbuffers wire formats and framing), [`transport`] (node-to-node TCP),
//! [`server`] (the node), [`client`] (the native client).
//! [`lincheck`] checks recorded client histories for linearizability (process tests).

pub mod bench;
pub mod cli;
pub mod client;
pub mod json;
pub mod kv;
pub mod lincheck;
pub mod metrics;
pub mod proto;
pub mod raft;
pub mod server;
pub mod shard;
pub mod storage;
pub mod transport;
