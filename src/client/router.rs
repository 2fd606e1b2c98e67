//! The routing client: sends each request to the leader of its key's partition, learnt from a
//! status call (partition count, leaders, node addresses) and kept in a route cache that
//! NotLeader hints update. Timeouts, lost connections and Unavailable answers are retried on
//! another replica until the operation's deadline. Writes carry a session (client id and
//! sequence) reused by every retry, so the node's session table applies a write at most once
//! and answers a retry with the original answer. Clones share everything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::config::ClientConfig;
use super::connection::{CallError, Connection};
use super::error::ClientError;
use super::sessions::SessionPool;
use super::timer;
use crate::proto::client::{ErrorCode, NodeStatus, Op, Reply, Response};
use crate::server::placement::partition_of;

/// Where partitions are led, as far as this client knows.
#[derive(Default)]
struct Routes {
    /// 0 until a status answer said.
    partition_count: u64,
    /// Indexed by partition: the client address of its last known leader.
    leaders: Vec<Option<String>>,
}

/// The connections to one endpoint (at most `connections_per_endpoint`).
#[derive(Default)]
struct EndpointPool {
    connections: Vec<Connection>,
    next: usize,
}

/// An async mutex made of a one-token channel: hold the token to connect.
type Gate = (flume::Sender<()>, flume::Receiver<()>);

struct Inner {
    config: ClientConfig,
    /// The configured endpoints plus every node address learnt from status answers.
    endpoints: RwLock<Vec<String>>,
    routes: RwLock<Routes>,
    pools: Mutex<HashMap<String, EndpointPool>>,
    /// One token per endpoint connect in progress, so concurrent callers do not all connect.
    connecting: Mutex<HashMap<String, Gate>>,
    sessions: SessionPool,
    rotation: AtomicUsize,
}

/// A routing client, cheap to clone and share between any number of concurrent callers
/// (threads or tasks). See the module documentation of [`crate::client`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A key's value and the revision at which it was last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    pub revision: u64,
}

/// What a compare-and-set did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written at `revision`.
    Applied { revision: u64 },
    /// Not written: the key's revision is `current` (0 = absent).
    Mismatch { current: u64 },
}

/// Which replica may answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Leader,
    AnyReplica,
}

impl Client {
    pub fn new(config: ClientConfig) -> Client {
        assert!(!config.endpoints.is_empty(), "at least one endpoint");
        config.validate();
        Client {
            inner: Arc::new(Inner {
                endpoints: RwLock::new(config.endpoints.clone()),
                config,
                routes: RwLock::new(Routes::default()),
                pools: Mutex::new(HashMap::new()),
                connecting: Mutex::new(HashMap::new()),
                sessions: SessionPool::new(),
                rotation: AtomicUsize::new(0),
            }),
        }
    }

    /// A client with the default configuration.
    pub fn with_endpoints<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Client {
        Client::new(ClientConfig::new(endpoints))
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A blocking view of this client for ordinary threads.
    pub fn blocking(&self) -> super::BlockingClient {
        super::BlockingClient::from_client(self.clone())
    }

    /// Linearizable read: the value and its revision, `None` when absent.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, ClientError> {
        self.read(key.as_ref(), false).await
    }

    /// Read from any replica's applied state: may miss recent writes (never linearizable).
    pub async fn get_stale(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, ClientError> {
        self.read(key.as_ref(), true).await
    }

    async fn read(&self, key: &[u8], stale_ok: bool) -> Result<Option<Versioned>, ClientError> {
        let op = Op::Get {
            key: Bytes::copy_from_slice(key),
            stale_ok,
        };
        let response = self.execute(op).await?;
        match (response.error, response.reply) {
            (ErrorCode::NotFound, _) => Ok(None),
            (ErrorCode::Ok, Some(Reply::Value { value, revision })) => {
                Ok(Some(Versioned { value, revision }))
            }
            (code, reply) => Err(unexpected(code, &response.message, reply)),
        }
    }

    /// Writes `value`; the revision it was written at.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<u64, ClientError> {
        let op = Op::Put {
            key: Bytes::copy_from_slice(key.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
        };
        revision_of(self.execute(op).await?)
    }

    /// Deletes the key: the revision it had, `None` when it was absent.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<Option<u64>, ClientError> {
        let op = Op::Delete {
            key: Bytes::copy_from_slice(key.as_ref()),
        };
        let response = self.execute(op).await?;
        if response.error == ErrorCode::NotFound {
            return Ok(None);
        }
        revision_of(response).map(Some)
    }

    /// Writes `value` only if the key's revision is `expected_revision` (0 = absent).
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expected_revision: u64,
        value: impl AsRef<[u8]>,
    ) -> Result<CasOutcome, ClientError> {
        let op = Op::Cas {
            key: Bytes::copy_from_slice(key.as_ref()),
            expected_revision,
            value: Bytes::copy_from_slice(value.as_ref()),
        };
        let response = self.execute(op).await?;
        match (response.error, &response.reply) {
            (ErrorCode::RevisionMismatch, Some(Reply::Revision { revision })) => {
                Ok(CasOutcome::Mismatch { current: *revision })
            }
            _ => revision_of(response).map(|revision| CasOutcome::Applied { revision }),
        }
    }

    /// The status of whichever endpoint answers first.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        status_of_response(self.execute(Op::Status).await?)
    }

    /// The status of the node at `addr` (one attempt, no failover).
    pub async fn status_of(&self, addr: &str) -> Result<NodeStatus, ClientError> {
        let start = Instant::now();
        let deadline = start + self.inner.config.attempt_timeout;
        let connection = self
            .connection(addr)
            .await
            .map_err(|problem| ClientError::timeout(start.elapsed(), false, problem))?;
        let cluster_id = self.inner.config.cluster_id;
        match connection
            .call(Op::Status, 0, 0, cluster_id, deadline)
            .await
        {
            Ok(response) => {
                let status = status_of_response(response)?;
                self.learn(&status);
                Ok(status)
            }
            Err(error) => {
                self.forget_connection(addr, &error);
                Err(ClientError::timeout(
                    start.elapsed(),
                    false,
                    error.to_string(),
                ))
            }
        }
    }

    /// Sends `op` to the right node, following leader hints and retrying on other replicas
    /// until a definite answer or the deadline. The raw answer: `Ok` for any definite answer
    /// (including NotFound and RevisionMismatch); refusals (limits, malformed, wrong cluster)
    /// are [`ClientError::Refused`].
    pub async fn execute(&self, op: Op) -> Result<Response, ClientError> {
        let start = Instant::now();
        let deadline = start + self.inner.config.deadline;
        let session = op.is_write().then(|| self.inner.sessions.take());
        let result = self.execute_until(&op, session, start, deadline).await;
        if let Some(session) = session {
            // Safe to reuse even after an unknown outcome: the next sequence supersedes this
            // one, so a late copy of this write can no longer apply (SequenceStale).
            self.inner.sessions.give_back(session);
        }
        result
    }

    async fn execute_until(
        &self,
        op: &Op,
        session: Option<(u64, u64)>,
        start: Instant,
        deadline: Instant,
    ) -> Result<Response, ClientError> {
        let (client_id, sequence) = session.unwrap_or((0, 0));
        let target = match op {
            Op::Get { stale_ok: true, .. } | Op::Status => Target::AnyReplica,
            _ => Target::Leader,
        };
        let partition = match (op, key_of(op)) {
            (Op::Scan { partition, .. }, _) => *partition,
            (_, Some(key)) => Some(self.partition_of(key, deadline).await?),
            (_, None) => None,
        };
        let mut addr = self.first_target(partition, target);
        // Whether some attempt may have reached a node: then a write's outcome is unknown.
        let mut maybe_applied = false;
        let mut last_problem = String::from("no attempt finished");
        let mut backoff = Duration::from_millis(5);
        let mut hints_in_a_row = 0u32;
        loop {
            let now = Instant::now();
            if now >= deadline {
                let unknown = op.is_write() && maybe_applied;
                return Err(ClientError::timeout(start.elapsed(), unknown, last_problem));
            }
            let attempt = match self.connection(&addr).await {
                Ok(connection) => {
                    let attempt_deadline = deadline.min(now + self.inner.config.attempt_timeout);
                    let cluster_id = self.inner.config.cluster_id;
                    let op = op.clone();
                    connection
                        .call(op, client_id, sequence, cluster_id, attempt_deadline)
                        .await
                }
                Err(problem) => Err(CallError::Closed {
                    addr: addr.clone(),
                    reason: problem,
                    sent: false,
                }),
            };
            let response = match attempt {
                Ok(response) => response,
                Err(CallError::Encode(detail)) => {
                    return Err(ClientError::Refused {
                        code: ErrorCode::FrameTooLarge,
                        message: detail,
                    })
                }
                Err(error) => {
                    maybe_applied |= error.sent();
                    last_problem = error.to_string();
                    self.forget_connection(&addr, &error);
                    self.forget_route(partition, &addr);
                    addr = self.next_endpoint(&addr);
                    backoff = self.back_off(backoff, deadline).await;
                    continue;
                }
            };
            match response.error {
                ErrorCode::NotLeader
                    if !response.leader_address.is_empty() && response.leader_address != addr =>
                {
                    last_problem = format!("{addr} is not the leader");
                    addr = response.leader_address.clone();
                    self.remember_route(partition, &addr);
                    self.add_endpoint(&addr);
                    hints_in_a_row += 1;
                    // Hints can chase each other during an election; slow down after a few.
                    if hints_in_a_row > 2 {
                        backoff = self.back_off(backoff, deadline).await;
                    }
                }
                ErrorCode::NotLeader
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::TooManyInFlight => {
                    // A write refused as NotLeader or TooManyInFlight was not proposed; after
                    // Unavailable (leadership lost under it) or Timeout it may still apply.
                    maybe_applied |=
                        matches!(response.error, ErrorCode::Unavailable | ErrorCode::Timeout);
                    last_problem = format!("{addr}: {:?}: {}", response.error, response.message);
                    hints_in_a_row = 0;
                    self.forget_route(partition, &addr);
                    addr = self.next_endpoint(&addr);
                    backoff = self.back_off(backoff, deadline).await;
                }
                ErrorCode::Ok | ErrorCode::NotFound | ErrorCode::RevisionMismatch => {
                    if target == Target::Leader {
                        self.remember_route(partition, &addr);
                    }
                    return Ok(response);
                }
                code => {
                    return Err(ClientError::Refused {
                        code,
                        message: response.message,
                    })
                }
            }
        }
    }

    async fn back_off(&self, backoff: Duration, deadline: Instant) -> Duration {
        timer::sleep_until(deadline.min(Instant::now() + backoff)).await;
        // Short and capped: a failover takes a few hundred milliseconds, and a client that
        // sleeps long past it adds its own delay to every write that waited.
        (backoff * 2).min(Duration::from_millis(50))
    }

    /// The partition of `key`, asking a node for the partition count the first time.
    pub async fn partition_of(&self, key: &[u8], deadline: Instant) -> Result<u64, ClientError> {
        let count = self.partition_count(deadline).await?;
        Ok(partition_of(key, count))
    }

    /// How many partitions the cluster has (asked once, then cached).
    pub async fn partition_count(&self, deadline: Instant) -> Result<u64, ClientError> {
        let known = self
            .inner
            .routes
            .read()
            .expect("routes lock")
            .partition_count;
        if known > 0 {
            return Ok(known);
        }
        let start = Instant::now();
        let mut last_problem = String::from("no endpoint answered");
        let mut backoff = Duration::from_millis(5);
        let mut addr = self.next_endpoint("");
        while Instant::now() < deadline {
            match self.status_of(&addr).await {
                Ok(status) if status.partition_count > 0 => return Ok(status.partition_count),
                Ok(_) => last_problem = format!("{addr} reported no partitions"),
                Err(ClientError::Refused {
                    code: ErrorCode::WrongCluster,
                    message,
                }) => {
                    return Err(ClientError::Refused {
                        code: ErrorCode::WrongCluster,
                        message,
                    })
                }
                Err(error) => last_problem = error.to_string(),
            }
            addr = self.next_endpoint(&addr);
            backoff = self.back_off(backoff, deadline).await;
        }
        Err(ClientError::timeout(start.elapsed(), false, last_problem))
    }

    /// Learns the partition count, the leaders the node knows and the nodes' addresses.
    fn learn(&self, status: &NodeStatus) {
        for node in &status.nodes {
            self.add_endpoint(&node.client_address);
        }
        let address_of = |node: u64| {
            status
                .nodes
                .iter()
                .find(|n| n.node_id == node)
                .map(|n| n.client_address.clone())
        };
        let mut routes = self.inner.routes.write().expect("routes lock");
        if status.partition_count == 0 {
            return;
        }
        if routes.partition_count != status.partition_count {
            routes.partition_count = status.partition_count;
            routes.leaders = vec![None; status.partition_count as usize];
        }
        for partition in &status.partitions {
            let Some(slot) = routes.leaders.get_mut(partition.partition as usize) else {
                continue;
            };
            if partition.leader != 0 && slot.is_none() {
                *slot = address_of(partition.leader);
            }
        }
    }

    fn first_target(&self, partition: Option<u64>, target: Target) -> String {
        if let (Some(partition), Target::Leader) = (partition, target) {
            let routes = self.inner.routes.read().expect("routes lock");
            if let Some(Some(addr)) = routes.leaders.get(partition as usize) {
                return addr.clone();
            }
        }
        self.next_endpoint("")
    }

    fn remember_route(&self, partition: Option<u64>, addr: &str) {
        let Some(partition) = partition else { return };
        // Nearly always known already: a shared lock to see so, the exclusive one to change it.
        let known = |routes: &Routes| {
            routes
                .leaders
                .get(partition as usize)
                .is_none_or(|slot| slot.as_deref() == Some(addr))
        };
        if known(&self.inner.routes.read().expect("routes lock")) {
            return;
        }
        let mut routes = self.inner.routes.write().expect("routes lock");
        if let Some(slot) = routes.leaders.get_mut(partition as usize) {
            if slot.as_deref() != Some(addr) {
                *slot = Some(addr.to_string());
            }
        }
    }

    fn forget_route(&self, partition: Option<u64>, addr: &str) {
        let Some(partition) = partition else { return };
        let mut routes = self.inner.routes.write().expect("routes lock");
        if let Some(slot) = routes.leaders.get_mut(partition as usize) {
            if slot.as_deref() == Some(addr) {
                *slot = None;
            }
        }
    }

    fn add_endpoint(&self, addr: &str) {
        if addr.is_empty() {
            return;
        }
        if self
            .inner
            .endpoints
            .read()
            .expect("endpoints lock")
            .iter()
            .any(|e| e == addr)
        {
            return;
        }
        let mut endpoints = self.inner.endpoints.write().expect("endpoints lock");
        if !endpoints.iter().any(|e| e == addr) {
            endpoints.push(addr.to_string());
        }
    }

    /// An endpoint other than `after` (any, when `after` is unknown), rotating so retries and
    /// concurrent callers spread over the replicas.
    fn next_endpoint(&self, after: &str) -> String {
        let endpoints = self.inner.endpoints.read().expect("endpoints lock");
        let turn = self.inner.rotation.fetch_add(1, Ordering::Relaxed);
        let candidate = &endpoints[turn % endpoints.len()];
        if candidate == after && endpoints.len() > 1 {
            return endpoints[(turn + 1) % endpoints.len()].clone();
        }
        candidate.clone()
    }

    /// A live connection to `addr` (one of `connections_per_endpoint`, round robin), opening
    /// one if needed.
    async fn connection(&self, addr: &str) -> Result<Connection, String> {
        let per_endpoint = self.inner.config.connections_per_endpoint;
        loop {
            {
                // Looked up by `&str` (no key allocated per call); a pool is made only by a
                // connect below.
                let mut pools = self.inner.pools.lock().expect("pools lock");
                if let Some(pool) = pools.get_mut(addr) {
                    pool.connections.retain(|c| !c.is_closed());
                    if pool.connections.len() >= per_endpoint {
                        pool.next = pool.next.wrapping_add(1);
                        return Ok(pool.connections[pool.next % pool.connections.len()].clone());
                    }
                }
            }
            // One connect per endpoint at a time; the others wait and then share it.
            let gate = {
                let mut connecting = self.inner.connecting.lock().expect("connecting lock");
                let gate = connecting.entry(addr.to_string()).or_insert_with(|| {
                    let gate = flume::bounded(1);
                    gate.0.try_send(()).expect("empty gate");
                    gate
                });
                gate.clone()
            };
            let timeout = self.inner.config.connect_timeout;
            if timer::until(Instant::now() + timeout, gate.1.recv_async())
                .await
                .is_none()
            {
                return Err(format!("waited {timeout:?} for a connection to {addr}"));
            }
            let full = {
                let pools = self.inner.pools.lock().expect("pools lock");
                pools.get(addr).is_some_and(|p| {
                    p.connections.iter().filter(|c| !c.is_closed()).count() >= per_endpoint
                })
            };
            if full {
                let _ = gate.0.try_send(());
                continue;
            }
            let opened = Connection::connect(addr, self.inner.config.window, timeout).await;
            let _ = gate.0.try_send(());
            let connection = opened.map_err(|e| e.to_string())?;
            let mut pools = self.inner.pools.lock().expect("pools lock");
            pools
                .entry(addr.to_string())
                .or_default()
                .connections
                .push(connection.clone());
            return Ok(connection);
        }
    }

    /// Drops a connection that failed (not one that merely timed out: the node may be slow).
    fn forget_connection(&self, addr: &str, error: &CallError) {
        if let CallError::Closed { .. } = error {
            let mut pools = self.inner.pools.lock().expect("pools lock");
            if let Some(pool) = pools.get_mut(addr) {
                pool.connections.retain(|c| !c.is_closed());
            }
        }
    }
}

fn key_of(op: &Op) -> Option<&[u8]> {
    match op {
        Op::Get { key, .. } | Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => {
            Some(key)
        }
        Op::Scan { .. } | Op::Status => None,
    }
}

fn unexpected(code: ErrorCode, message: &str, reply: Option<Reply>) -> ClientError {
    ClientError::Protocol(format!(
        "unexpected answer {code:?} ({message}) with {reply:?}"
    ))
}

fn revision_of(response: Response) -> Result<u64, ClientError> {
    match (response.error, response.reply) {
        (ErrorCode::Ok, Some(Reply::Revision { revision })) => Ok(revision),
        (code, reply) => Err(unexpected(code, &response.message, reply)),
    }
}

fn status_of_response(response: Response) -> Result<NodeStatus, ClientError> {
    match (response.error, response.reply) {
        (ErrorCode::Ok, Some(Reply::Status(status))) => Ok(status),
        (ErrorCode::Ok, reply) => Err(unexpected(ErrorCode::Ok, &response.message, reply)),
        (code, _) => Err(ClientError::Refused {
            code,
            message: response.message,
        }),
    }
}
