//! The seam between the harness and the system under test. A [`Driver`] opens one
//! [`Session`] per benchmark client; a session executes one operation at a time, as a future
//! the runner awaits (every client is a task of one executor thread, see
//! [`super::executor`]). Drivers decide how sessions share connections.

use std::future::Future;
use std::pin::Pin;

use super::executor::RoundScope;
use super::workload::BenchOp;

/// What an operation did, when the store gave a definite answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// Applied (a write) or found (a read), at this revision (0 when the system has none).
    Done { revision: u64 },
    /// A read of an absent key: a normal outcome for reads of keys never written.
    NotFound,
    /// A compare-and-set whose expected revision was not current.
    Conflict { current_revision: u64 },
}

/// An operation without a definite answer, grouped by `kind` in every report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    /// A short stable name (`timeout`, `unavailable`, `io`, ...), used as the counter's key.
    pub kind: String,
    pub detail: String,
}

impl OpError {
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> OpError {
        OpError {
            kind: kind.into(),
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

/// One operation in flight: completes with its outcome. Polled on the runner's executor
/// thread; woken from any thread.
pub type OpFuture<'a> = Pin<Box<dyn Future<Output = Result<OpOutcome, OpError>> + 'a>>;

pub trait Session: Send {
    fn execute(&mut self, op: BenchOp) -> OpFuture<'_>;
}

pub trait Driver: Send + Sync {
    /// One line for the report: the system, how clients map onto connections.
    fn describe(&self) -> String;
    /// The session of client `client` (0-based). Called once per client, in order, on the
    /// harness's main thread.
    fn session(&self, client: usize) -> Result<Box<dyn Session>, DriverError>;
    /// A scope the clients' executor opens around each round of polls (all tasks ready at
    /// once), or `None`. A driver whose client can hold a burst of requests and send it in one
    /// write (kahuna's send cork) gives it here; the requests then leave at the round's end.
    fn round_scope(&self) -> Option<RoundScope> {
        None
    }
}
