//! Blocking wrappers of [`Client`] for ordinary threads (the CLI, tests, the playground). Each
//! call runs the async one to completion on the calling thread; never call these on an async
//! executor's thread (it would block the executor): await the [`Client`] methods there.

use std::time::Instant;

use super::connection::block_on_uncorked;

use super::error::ClientError;
use super::router::{CasOutcome, Client, Versioned};
use super::ClientConfig;
use crate::proto::client::{KeyValue, NodeStatus, Op, Response};

/// A [`Client`] whose methods block. Cheap to clone; shares connections with the `Client` it
/// came from.
#[derive(Clone)]
pub struct BlockingClient {
    client: Client,
}

impl BlockingClient {
    pub fn new(config: ClientConfig) -> BlockingClient {
        BlockingClient::from_client(Client::new(config))
    }

    pub fn with_endpoints<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
    ) -> BlockingClient {
        BlockingClient::from_client(Client::with_endpoints(endpoints))
    }

    pub(crate) fn from_client(client: Client) -> BlockingClient {
        BlockingClient { client }
    }

    /// The async client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, ClientError> {
        block_on_uncorked(self.client.get(key))
    }

    pub fn get_stale(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, ClientError> {
        block_on_uncorked(self.client.get_stale(key))
    }

    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, ClientError> {
        block_on_uncorked(self.client.put(key, value))
    }

    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<Option<u64>, ClientError> {
        block_on_uncorked(self.client.delete(key))
    }

    pub fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expected_revision: u64,
        value: impl AsRef<[u8]>,
    ) -> Result<CasOutcome, ClientError> {
        block_on_uncorked(self.client.cas(key, expected_revision, value))
    }

    pub fn status(&self) -> Result<NodeStatus, ClientError> {
        block_on_uncorked(self.client.status())
    }

    pub fn status_of(&self, addr: &str) -> Result<NodeStatus, ClientError> {
        block_on_uncorked(self.client.status_of(addr))
    }

    pub fn execute(&self, op: Op) -> Result<Response, ClientError> {
        block_on_uncorked(self.client.execute(op))
    }

    /// At most `limit` keys starting with `prefix`, in key order (linearizable per
    /// partition, not an atomic snapshot across partitions).
    pub fn scan(
        &self,
        prefix: impl AsRef<[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, ClientError> {
        block_on_uncorked(self.client.scan(prefix, limit))
    }

    pub fn partition_count(&self) -> Result<u64, ClientError> {
        let deadline = Instant::now() + self.client.config().deadline;
        block_on_uncorked(self.client.partition_count(deadline))
    }
}
