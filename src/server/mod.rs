//! The node: configuration, placement of partitions on nodes and cores, the per-core runtime
//! (shard + storage writer + peer transport on one glommio executor) and the client port.

pub mod allocator;
mod answers;
pub mod clients;
pub mod config;
pub mod core;
pub mod memlock;
pub mod mesh;
pub mod node;
pub mod placement;
pub mod playground;
pub mod storage_writer;

pub use config::NodeConfig;
pub use node::run;
