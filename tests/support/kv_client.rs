//! The small client interface the fault-injection workloads are written against, and its
//! implementation on today's blocking client. The pipelined async client (issue 5) replaces
//! only `BlockingKv`: the workloads see `KvClient`.
//!
//! Every answer is sorted into what the checker needs: a definite outcome, a definite failure
//! (the operation certainly had no effect), or an unknown outcome (a write that may or may not
//! have been applied: timeouts, lost connections, answers without a definite meaning).

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use kahuna::client::{Client, ClientError};
use kahuna::proto::client::{ErrorCode, Op, Reply, Response};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    Done(T),
    /// Certainly no effect (reads that failed; writes refused before proposing).
    Failed(String),
    /// May or may not have taken effect.
    Unknown(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasAnswer {
    Written(u64),
    Mismatch(u64),
}

pub trait KvClient: Send {
    /// A linearizable read: `(value, revision)`, or `None` when the key is absent.
    fn read(&mut self, key: &[u8]) -> Answer<Option<(Bytes, u64)>>;
    /// The new revision.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Answer<u64>;
    fn cas(&mut self, key: &[u8], expected_revision: u64, value: &[u8]) -> Answer<CasAnswer>;
}

/// `KvClient` on the blocking `kahuna::client::Client` (follows leader hints, retries writes
/// with the same session sequence until its deadline).
pub struct BlockingKv {
    client: Client,
}

impl BlockingKv {
    /// Starts at `endpoints[0]`; the others are tried on failures.
    pub fn new(endpoints: Vec<String>, deadline: Duration) -> BlockingKv {
        let mut client = Client::new(endpoints);
        client.deadline = deadline;
        BlockingKv { client }
    }
}

fn describe(response: &Response) -> String {
    format!("{:?}: {}", response.error, response.message)
}

fn unknown(error: ClientError) -> String {
    error.to_string()
}

impl KvClient for BlockingKv {
    fn read(&mut self, key: &[u8]) -> Answer<Option<(Bytes, u64)>> {
        let op = Op::Get {
            key: Bytes::copy_from_slice(key),
            stale_ok: false,
        };
        match self.client.call(op) {
            Ok(response) => match (response.error, response.reply.clone()) {
                (ErrorCode::Ok, Some(Reply::Value { value, revision })) => {
                    Answer::Done(Some((value, revision)))
                }
                (ErrorCode::NotFound, _) => Answer::Done(None),
                _ => Answer::Failed(describe(&response)),
            },
            Err(error) => Answer::Failed(error.to_string()),
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Answer<u64> {
        match self.client.put(key, value) {
            Ok(response) => match (response.error, response.reply.clone()) {
                (ErrorCode::Ok, Some(Reply::Revision { revision })) => Answer::Done(revision),
                _ => Answer::Unknown(describe(&response)),
            },
            Err(error) => Answer::Unknown(unknown(error)),
        }
    }

    fn cas(&mut self, key: &[u8], expected_revision: u64, value: &[u8]) -> Answer<CasAnswer> {
        let op = Op::Cas {
            key: Bytes::copy_from_slice(key),
            expected_revision,
            value: Bytes::copy_from_slice(value),
        };
        match self.client.call(op) {
            Ok(response) => match (response.error, response.reply.clone()) {
                (ErrorCode::Ok, Some(Reply::Revision { revision })) => {
                    Answer::Done(CasAnswer::Written(revision))
                }
                (ErrorCode::RevisionMismatch, Some(Reply::Revision { revision })) => {
                    Answer::Done(CasAnswer::Mismatch(revision))
                }
                _ => Answer::Unknown(describe(&response)),
            },
            Err(error) => Answer::Unknown(unknown(error)),
        }
    }
}
