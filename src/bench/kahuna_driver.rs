//! The kahuna driver: one routing [`Client`] (the pipelined client) with `--connections`
//! connections per node, shared by every benchmark client: each client awaits its own request
//! while the connections carry all clients' requests pipelined.

use std::time::Duration;

use super::driver::{Driver, DriverError, OpError, OpFuture, OpOutcome, Session};
use super::executor::RoundScope;
use super::workload::BenchOp;
use crate::client::{cork_sends, Client, ClientConfig, ClientError};
use crate::proto::client::{ErrorCode, Op, Reply, Response};

pub struct KahunaDriver {
    client: Client,
    clients: usize,
    connections: usize,
}

impl KahunaDriver {
    /// `connections` pipelined connections per node, shared by all `clients`.
    pub fn new(endpoints: Vec<String>, clients: usize, connections: usize) -> KahunaDriver {
        let config = ClientConfig::new(endpoints)
            .deadline(Duration::from_secs(10))
            .connections_per_endpoint(connections.max(1));
        KahunaDriver {
            client: Client::new(config),
            clients,
            connections,
        }
    }
}

impl Driver for KahunaDriver {
    fn describe(&self) -> String {
        format!(
            "kahuna, pipelined client: {} clients sharing {} connection(s) per node",
            self.clients, self.connections
        )
    }

    /// Requests sent in one round of the clients' executor leave in one write per connection
    /// (the client's send cork): a node then reads a burst of requests at once instead of
    /// one TCP segment per request.
    fn round_scope(&self) -> Option<RoundScope> {
        Some(|| Box::new(cork_sends()))
    }

    fn session(&self, _client: usize) -> Result<Box<dyn Session>, DriverError> {
        // Clones share the connections, the route cache and the session ids.
        Ok(Box::new(KahunaSession {
            client: self.client.clone(),
        }))
    }
}

struct KahunaSession {
    client: Client,
}

impl Session for KahunaSession {
    fn execute(&mut self, op: BenchOp) -> OpFuture<'_> {
        let op = match op {
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
        Box::pin(async move {
            match self.client.execute(op).await {
                Ok(response) => outcome_of(response),
                Err(error) => Err(error_of(&error)),
            }
        })
    }
}

/// The counter name of a failed call: the refusal's code, or the kind of failure.
fn error_of(error: &ClientError) -> OpError {
    let kind = match error {
        ClientError::Refused { code, .. } => format!("{code:?}"),
        ClientError::Timeout {
            outcome_unknown: true,
            ..
        } => "timeout_outcome_unknown".into(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Protocol(_) => "protocol".into(),
    };
    OpError::new(kind, error.to_string())
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
