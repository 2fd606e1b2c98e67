//! The kahuna driver: each benchmark client drives its own blocking [`Client`] (one
//! connection per node it talks to, following leader hints). The pipelined async client of
//! issue 5 will let C connections carry N clients; until it lands, every client has its own
//! connections and `--connections` is reported as not applied.

use std::time::Duration;

use super::driver::{Driver, DriverError, OpError, OpOutcome, Session};
use super::workload::BenchOp;
use crate::client::{Client, ClientError};
use crate::proto::client::{ErrorCode, Op, Reply, Response};

pub struct KahunaDriver {
    endpoints: Vec<String>,
    clients: usize,
}

impl KahunaDriver {
    pub fn new(endpoints: Vec<String>, clients: usize) -> KahunaDriver {
        KahunaDriver { endpoints, clients }
    }
}

impl Driver for KahunaDriver {
    fn describe(&self) -> String {
        format!(
            "kahuna, blocking client: {} clients, one connection each per node (--connections not applied)",
            self.clients
        )
    }

    fn session(&self, client: usize) -> Result<Box<dyn Session>, DriverError> {
        // Start clients on different nodes so the first requests spread; leader hints do the
        // rest. Client ids come from the clock at creation: sessions are created one after the
        // other on one thread, so no two share an id (and a session table slot).
        let mut endpoints = self.endpoints.clone();
        endpoints.rotate_left(client % self.endpoints.len());
        let mut inner = Client::new(endpoints);
        inner.deadline = Duration::from_secs(10);
        Ok(Box::new(KahunaSession { client: inner }))
    }
}

struct KahunaSession {
    client: Client,
}

impl Session for KahunaSession {
    fn execute(&mut self, op: &BenchOp) -> Result<OpOutcome, OpError> {
        let op = match op.clone() {
            BenchOp::Put { key, value } => Op::Put { key, value },
            BenchOp::Get { key } => Op::Get {
                key,
                stale_ok: false,
            },
            BenchOp::Cas {
                key,
                expected_revision,
                value,
            } => Op::Cas {
                key,
                expected_revision,
                value,
            },
        };
        match self.client.call(op) {
            Ok(response) => outcome_of(response),
            Err(error @ ClientError::Timeout(..)) => {
                Err(OpError::new("timeout", error.to_string()))
            }
            Err(error @ ClientError::Unreachable(..)) => {
                Err(OpError::new("unreachable", error.to_string()))
            }
        }
    }
}

fn revision_of(response: &Response) -> u64 {
    match response.reply {
        Some(Reply::Revision { revision }) | Some(Reply::Value { revision, .. }) => revision,
        _ => 0,
    }
}

/// A definite answer's outcome; every other error code is an error of its own kind.
pub fn outcome_of(response: Response) -> Result<OpOutcome, OpError> {
    match response.error {
        ErrorCode::Ok => Ok(OpOutcome::Done {
            revision: revision_of(&response),
        }),
        ErrorCode::NotFound => Ok(OpOutcome::NotFound),
        ErrorCode::RevisionMismatch => Ok(OpOutcome::Conflict {
            current_revision: revision_of(&response),
        }),
        code => Err(OpError::new(format!("{code:?}"), response.message)),
    }
}
