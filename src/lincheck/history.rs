//! One recorded operation of a concurrent history: what a client asked, what it was told,
//! and when (monotonic nanoseconds). An operation without a return time is indeterminate: it
//! may have taken effect at any moment after its invocation, or never.

use std::fmt::Debug;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Which client (thread) ran it; a client runs one operation at a time.
    pub client: usize,
    pub input: I,
    /// For an indeterminate operation, the model's "unknown" output.
    pub output: O,
    /// Invocation time, monotonic nanoseconds.
    pub call: u64,
    /// Completion time; `None` when the outcome is unknown (a timeout, a lost connection):
    /// the operation is treated as returning at infinity.
    pub ret: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("operation {index} returns ({ret}) before it is invoked ({call})")]
    ReturnBeforeCall { index: usize, call: u64, ret: u64 },
    #[error("history of {0} operations exceeds the checker's limit of {1}")]
    TooLong(usize, usize),
}

impl<I, O> Operation<I, O> {
    pub fn is_indeterminate(&self) -> bool {
        self.ret.is_none()
    }

    /// The completion time used by the search: infinity for an indeterminate operation.
    pub(crate) fn return_time(&self) -> u64 {
        self.ret.unwrap_or(u64::MAX)
    }
}

pub(crate) fn validate<I: Debug, O: Debug>(
    history: &[Operation<I, O>],
    operations_max: usize,
) -> Result<(), HistoryError> {
    if history.len() > operations_max {
        return Err(HistoryError::TooLong(history.len(), operations_max));
    }
    for (index, operation) in history.iter().enumerate() {
        if let Some(ret) = operation.ret {
            if ret < operation.call {
                return Err(HistoryError::ReturnBeforeCall {
                    index,
                    call: operation.call,
                    ret,
                });
            }
        }
    }
    Ok(())
}
