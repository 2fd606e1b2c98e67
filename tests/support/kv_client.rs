//! The small client interface the fault-injection workloads are written against, and its
//! implementation on `kahuna::client::BlockingClient`: the workloads see only `KvClient`.
//!
//! Every answer is sorted into what the checker needs: a definite outcome, a definite failure
//! (the operation certainly had no effect), or an unknown outcome (a write that may or may not
//! have been applied: timeouts, lost connections, answers without a definite meaning).

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use kahuna::client::{BlockingClient, CasOutcome, ClientConfig, ClientError};

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
    /// The revision the key had, `None` when it was absent.
    fn delete(&mut self, key: &[u8]) -> Answer<Option<u64>>;
    /// Every key starting with `prefix` (at most `limit`) with its value and revision. Each
    /// partition's part is linearizable on its own; the whole is not one snapshot.
    fn scan(&mut self, prefix: &[u8], limit: usize) -> Answer<Vec<(Bytes, Bytes, u64)>>;
}

/// `KvClient` on `kahuna::client::BlockingClient` (routes by partition, follows leader hints,
/// retries writes with the same session until its deadline).
pub struct BlockingKv {
    client: BlockingClient,
}

impl BlockingKv {
    /// Starts at `endpoints[0]`; the others are tried on failures.
    pub fn new(endpoints: Vec<String>, deadline: Duration) -> BlockingKv {
        let client = BlockingClient::new(ClientConfig::new(endpoints).deadline(deadline));
        BlockingKv { client }
    }
}

/// A write's error: unknown when the client says some attempt may have been applied,
/// otherwise a definite failure (nothing was applied).
fn write_error<T>(error: ClientError) -> Answer<T> {
    if error.outcome_unknown() {
        Answer::Unknown(error.to_string())
    } else {
        Answer::Failed(error.to_string())
    }
}

impl KvClient for BlockingKv {
    fn read(&mut self, key: &[u8]) -> Answer<Option<(Bytes, u64)>> {
        match self.client.get(key) {
            Ok(found) => Answer::Done(found.map(|v| (v.value, v.revision))),
            Err(error) => Answer::Failed(error.to_string()),
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Answer<u64> {
        match self.client.put(key, value) {
            Ok(revision) => Answer::Done(revision),
            Err(error) => write_error(error),
        }
    }

    fn cas(&mut self, key: &[u8], expected_revision: u64, value: &[u8]) -> Answer<CasAnswer> {
        match self.client.cas(key, expected_revision, value) {
            Ok(CasOutcome::Applied { revision }) => Answer::Done(CasAnswer::Written(revision)),
            Ok(CasOutcome::Mismatch { current }) => Answer::Done(CasAnswer::Mismatch(current)),
            Err(error) => write_error(error),
        }
    }

    fn delete(&mut self, key: &[u8]) -> Answer<Option<u64>> {
        match self.client.delete(key) {
            Ok(previous) => Answer::Done(previous),
            Err(error) => write_error(error),
        }
    }

    fn scan(&mut self, prefix: &[u8], limit: usize) -> Answer<Vec<(Bytes, Bytes, u64)>> {
        match self.client.scan(prefix, limit) {
            Ok(items) => Answer::Done(
                items
                    .into_iter()
                    .map(|item| (item.key, item.value, item.revision))
                    .collect(),
            ),
            Err(error) => Answer::Failed(error.to_string()),
        }
    }
}
