//! Sends each request to the node that leads its partition: starts anywhere, follows NotLeader
//! hints, retries other endpoints on connection failures and Unavailable answers, with a
//! deadline. Writes carry a client id and sequence so retries apply at most once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::connection::{Connection, ConnectionError};
use crate::proto::client::{ErrorCode, Op, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoint answered within {0:?}: {1}")]
    Unreachable(Duration, String),
    #[error("the request timed out after {0:?}; the outcome is unknown ({1})")]
    Timeout(Duration, String),
}

pub struct Client {
    endpoints: Vec<String>,
    connections: HashMap<String, Connection>,
    /// Where the last answer for each partition's leader came from (route cache by address).
    preferred: Option<String>,
    next_request: u64,
    client_id: u64,
    sequence: u64,
    pub deadline: Duration,
}

impl Client {
    pub fn new(endpoints: Vec<String>) -> Client {
        assert!(!endpoints.is_empty(), "at least one endpoint");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Client {
            endpoints,
            connections: HashMap::new(),
            preferred: None,
            next_request: 1,
            client_id: (seed ^ u64::from(std::process::id())).max(1),
            sequence: 0,
            deadline: Duration::from_secs(10),
        }
    }

    /// Adds endpoints to rotate through on failures (the first stays the starting point).
    pub fn endpoints_hint(&mut self, endpoints: Vec<String>) {
        for endpoint in endpoints {
            if !self.endpoints.contains(&endpoint) {
                self.endpoints.push(endpoint);
            }
        }
    }

    fn connection(&mut self, addr: &str) -> Result<&mut Connection, ConnectionError> {
        if !self.connections.contains_key(addr) {
            let connection = Connection::connect(addr, Duration::from_secs(2))?;
            self.connections.insert(addr.to_string(), connection);
        }
        Ok(self.connections.get_mut(addr).expect("just inserted"))
    }

    /// Sends `op`, following leader hints until a definite answer or the deadline.
    pub fn call(&mut self, op: Op) -> Result<Response, ClientError> {
        let start = Instant::now();
        let (client_id, sequence) = if op.is_write() {
            self.sequence += 1;
            (self.client_id, self.sequence)
        } else {
            (0, 0)
        };
        let mut target = self
            .preferred
            .clone()
            .unwrap_or_else(|| self.endpoints[0].clone());
        let mut rotation = 0usize;
        let mut last_problem = String::from("no attempt");
        // Short and capped: a failover takes a few hundred milliseconds, and a client that
        // sleeps long past it adds its own delay to every write that waited.
        let mut backoff = Duration::from_millis(5);
        while start.elapsed() < self.deadline {
            self.next_request += 1;
            let request = Request {
                request_id: self.next_request,
                client_id,
                sequence,
                cluster_id: 0,
                op: op.clone(),
            };
            let answer = self.connection(&target).and_then(|c| c.call(&request));
            match answer {
                Ok(response) => match response.error {
                    ErrorCode::NotLeader if !response.leader_address.is_empty() => {
                        last_problem = format!("{target} is not the leader");
                        target = response.leader_address.clone();
                        continue;
                    }
                    ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Timeout => {
                        last_problem =
                            format!("{target}: {:?} {}", response.error, response.message);
                    }
                    _ => {
                        self.preferred = Some(target);
                        return Ok(response);
                    }
                },
                Err(error) => {
                    self.connections.remove(&target);
                    last_problem = error.to_string();
                }
            }
            rotation += 1;
            target = self.endpoints[rotation % self.endpoints.len()].clone();
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
        if op.is_write() {
            Err(ClientError::Timeout(self.deadline, last_problem))
        } else {
            Err(ClientError::Unreachable(self.deadline, last_problem))
        }
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Response, ClientError> {
        self.call(Op::Put {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        })
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Response, ClientError> {
        self.call(Op::Get {
            key: Bytes::copy_from_slice(key),
            stale_ok: false,
        })
    }

    pub fn status_of(&mut self, addr: &str) -> Result<Response, ConnectionError> {
        self.next_request += 1;
        let request = Request {
            request_id: self.next_request,
            client_id: 0,
            sequence: 0,
            cluster_id: 0,
            op: Op::Status,
        };
        let result = self.connection(addr).and_then(|c| c.call(&request));
        if result.is_err() {
            self.connections.remove(addr);
        }
        result
    }
}
