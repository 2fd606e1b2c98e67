//! The client's errors. Every error says whether a write's outcome is unknown.

use std::time::Duration;

use crate::proto::client::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A node refused the request (a size limit, a malformed request, another cluster):
    /// nothing was applied, and retrying it unchanged gets the same answer.
    #[error("refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// No definite answer before the deadline. If `outcome_unknown`, a write may or may not
    /// have been applied (some attempt reached a node); otherwise it was not applied.
    #[error("{}", timeout_message(*.elapsed, *.outcome_unknown, .last_problem))]
    Timeout {
        elapsed: Duration,
        outcome_unknown: bool,
        last_problem: String,
    },
    /// An answer that does not fit the request (a bug on one side).
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn timeout_message(elapsed: Duration, outcome_unknown: bool, last_problem: &str) -> String {
    let outcome = if outcome_unknown {
        "the outcome is unknown (the write may have been applied)"
    } else {
        "the request was not applied"
    };
    format!("no answer after {elapsed:.1?}; {outcome}; last problem: {last_problem}")
}

impl ClientError {
    pub(crate) fn timeout(elapsed: Duration, outcome_unknown: bool, last: String) -> ClientError {
        ClientError::Timeout {
            elapsed,
            outcome_unknown,
            last_problem: last,
        }
    }

    /// A write may have been applied although no answer says so.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ClientError::Timeout {
                outcome_unknown, ..
            } => *outcome_unknown,
            ClientError::Refused { code, .. } => *code == ErrorCode::Internal,
            ClientError::Protocol(_) => true,
        }
    }

    /// The node's error code, for refusals.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}
