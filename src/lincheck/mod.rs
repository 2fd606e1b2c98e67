//! A linearizability checker for client histories recorded against a real cluster: the
//! Wing-Gong search with the optimisations of Lowe and Porcupine (a cache of (linearized set,
//! model state) pairs that were already explored, and just-in-time linearization over a linked
//! list of call and return events), run separately on each key (linearizability is local:
//! a history is linearizable iff every per-key subhistory is).
//!
//! Owns: the history format (`history`), the model interface (`model`), Kahuna's
//! compare-and-set register (`register`) and the search (`checker`). It never talks to a
//! cluster and never answers "linearizable" when it did not finish: a search that exceeds its
//! step budget is `Verdict::Unknown`.

mod checker;
mod history;
mod model;
mod register;

pub use checker::{
    check, check_partitioned, CheckOptions, Failure, History, KeyVerdict, Report, Verdict,
};
pub use history::{HistoryError, Operation};
pub use model::Model;
pub use register::{Register, RegisterInput, RegisterOutput, RegisterState, Revision};
