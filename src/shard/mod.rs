//! The per-core shard: many Raft groups scheduled by one timer, their writes gathered into one
//! batch per loop iteration, their messages grouped per peer node. Plain code over a narrow
//! interface: the glommio node and the simulator both drive it.

mod compaction;
mod deferred;
mod liveness;
mod scheduler;

pub use compaction::{compaction_point, CompactionPolicy, LogView};
pub use deferred::{DeferPolicy, Deferred};

pub use liveness::NodeLiveness;
pub use scheduler::{
    PersistToken, Shard, ShardBatch, ShardConfig, ShardError, ShardStats, StateMachine,
};
