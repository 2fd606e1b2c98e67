//! The sans-IO Raft core. Nothing in here touches the clock, the network, the disk or unseeded
//! randomness: the same inputs give the same outputs.
//!
//! A caller drives one [`Raft`] per group with [`Raft::step`] (messages from peers),
//! [`Raft::tick`] (logical time) and the proposal calls, then drains [`Raft::ready`] and
//! reports durability with [`Raft::on_persisted`].

mod config;
mod errors;
mod log;
mod progress;
mod ready;
mod replica;
mod rng;
mod types;

pub use config::{Config, SafetyFault, SnapshotCheck};
pub use errors::RaftError;
pub use progress::ProgressState;
pub use ready::{Ready, SoftState};
pub use replica::{Raft, RestoreState, Status};
pub use rng::SeededRng;
pub use types::*;
