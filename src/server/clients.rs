//! The client port: length-prefixed flatbuffers requests, many in flight per connection
//! (answers may come back in any order), bounded by `REQUESTS_IN_FLIGHT_MAX`. A malformed frame
//! closes only its connection; every refused request gets a precise error code.
//!
//! Every core serves the client port (the listeners share it through SO_REUSEPORT). A request
//! for a partition another core owns is handed to that core through the mesh (`mesh.rs`) and
//! answered by the same code that serves the owner's own connections.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::answers::Answers;
use super::core::{CoreState, ProposeFailure, WriteResult};
use super::mesh::Router;
use super::placement::{core_of, group_of, partition_of};
use crate::kv::{Command, Op as KvOp, Outcome, Session};
use crate::metrics::{self, OpKind};
use crate::proto::client::{
    decode_request, effective_scan_limit, ClientEncoder, ErrorCode, KeyValue, NodeAddress,
    NodeStatus, Op, PartitionStatus, Reply, Request, Response,
};
use crate::proto::frame::FrameDecoder;
use crate::proto::limits::{CLIENT_FRAME_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX, SCAN_PAGE_BYTES_MAX};

/// What every connection handler of a core needs to know about the cluster.
pub struct ClusterView {
    pub cluster_id: u64,
    pub partitions: u64,
    pub cores: usize,
    pub client_addrs: Vec<NodeAddress>,
}

impl ClusterView {
    fn address_of(&self, node: u64) -> String {
        self.client_addrs
            .iter()
            .find(|a| a.node_id == node)
            .map(|a| a.client_address.clone())
            .unwrap_or_default()
    }
}

/// Everything a connection handler of a core works with.
#[derive(Clone)]
pub struct Serving {
    pub core: Rc<CoreState>,
    pub view: Rc<ClusterView>,
    pub router: Rc<Router>,
}

/// Client connections one core serves at once: with at most `REQUESTS_IN_FLIGHT_MAX` requests
/// each, this bounds the memory of waiting requests. Connections beyond it are closed at once.
pub const CLIENT_CONNECTIONS_MAX: usize = 4096;

pub async fn serve_clients(listener: TcpListener, serving: Serving) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if open.get() >= CLIENT_CONNECTIONS_MAX {
                    eprintln!("kahuna: refusing a client connection: {CLIENT_CONNECTIONS_MAX} already open on this core");
                    drop(stream);
                    continue;
                }
                open.set(open.get() + 1);
                let _ = stream.set_nodelay(true);
                let serving = serving.clone();
                let open = open.clone();
                glommio::spawn_local(async move {
                    if let Err(reason) = serve_connection(stream, serving).await {
                        eprintln!("kahuna: client connection closed: {reason}");
                    }
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Err(error) => {
                eprintln!("kahuna: accept failed: {error}");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection's writer stops adding waiting answers to one write past this many bytes (one
/// answer may take it beyond: an answer is never split).
const ANSWER_WRITE_BYTES_MAX: usize = 256 << 10;
/// The answer buffer's capacity kept between writes; a larger one (a burst of scan pages) is
/// released.
const ANSWER_BUFFER_RETAINED_BYTES_MAX: usize = 1 << 20;

/// Encodes `response` as one frame at the end of `frames`. An answer that cannot be encoded
/// (larger than a frame may be) is replaced by an Internal error for the same request; if even
/// that cannot be encoded, nothing is added.
fn append_response(encoder: &mut ClientEncoder, response: &Response, frames: &mut Vec<u8>) {
    match encoder.encode_response(response) {
        Ok(frame) => frames.extend_from_slice(frame),
        Err(error) => {
            let fallback =
                Response::error(response.request_id, ErrorCode::Internal, error.to_string());
            if let Ok(frame) = encoder.encode_response(&fallback) {
                frames.extend_from_slice(frame);
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, serving: Serving) -> Result<(), String> {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let answers = Rc::new(Answers::new());
    // The writer task encodes answers as they complete, in completion order. Answers that are
    // already waiting when it wakes go out in one write: a leader answers a whole batch of
    // writes in one collect, and one send per answer cost a syscall and a TCP segment each (and
    // the client's reader a wake-up each). It never waits for more to come. It runs until the
    // reader stopped and every admitted request was answered, or the socket fails.
    let outbox = answers.clone();
    glommio::spawn_local(async move {
        let mut encoder = ClientEncoder::new();
        let mut frames: Vec<u8> = Vec::new();
        while let Some(response) = outbox.next().await {
            frames.clear();
            append_response(&mut encoder, &response, &mut frames);
            while frames.len() < ANSWER_WRITE_BYTES_MAX {
                match outbox.try_next() {
                    Some(response) => append_response(&mut encoder, &response, &mut frames),
                    None => break,
                }
            }
            if writer.write_all(&frames).await.is_err() {
                break;
            }
            if frames.capacity() > ANSWER_BUFFER_RETAINED_BYTES_MAX {
                frames = Vec::new();
            }
        }
        outbox.writer_done();
    })
    .detach();
    // However the reader ends, the writer finishes the owed answers and stops.
    struct ReaderDone(Rc<Answers>);
    impl Drop for ReaderDone {
        fn drop(&mut self) {
            self.0.reader_done();
        }
    }
    let _reader_done = ReaderDone(answers.clone());
    let mut decoder = FrameDecoder::new(CLIENT_FRAME_BYTES_MAX);
    loop {
        let buffer = decoder.read_buffer(64 << 10);
        let read = reader
            .read(buffer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        decoder.filled(read);
        if read == 0 {
            return Ok(());
        }
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    // The request id is in the body, which was not read: answer with id 0
                    // (the connection-level answer), then close.
                    answers.last_word(Response::error(
                        0,
                        ErrorCode::FrameTooLarge,
                        error.to_string(),
                    ));
                    return Err(format!("bad frame: {error}"));
                }
            };
            let request = match decode_request(&frame) {
                Ok(request) => request,
                Err(error) => {
                    if let Some(id) = error.request_id() {
                        answers.last_word(Response::error(
                            id,
                            ErrorCode::Malformed,
                            error.to_string(),
                        ));
                    }
                    return Err(format!("malformed request: {error}"));
                }
            };
            if !answers.admit() {
                let message = format!(
                    "more than {REQUESTS_IN_FLIGHT_MAX} requests in flight on this connection"
                );
                // Waiting for room for the refusal also stops reading this connection until
                // the writer catches up: backpressure, and every request gets its answer.
                let refusal =
                    Response::error(request.request_id, ErrorCode::TooManyInFlight, message);
                if !answers.refuse(refusal).await {
                    return Err("the connection cannot be written".into());
                }
                continue;
            }
            let (arrived, op) = (Instant::now(), OpKind::of(&request.op));
            let Some(request) = write_here(&serving, &answers, request, arrived) else {
                continue;
            };
            let serving = serving.clone();
            let answers = answers.clone();
            glommio::spawn_local(async move {
                let response = handle(&serving, request).await;
                metrics::core(serving.core.core).request_done(
                    op,
                    response.error,
                    arrived.elapsed(),
                );
                answers.answer(response);
            })
            .detach();
        }
    }
}

/// A write to a partition this core owns, proposed without a task: its answer comes from the
/// core loop when the entry applies (`DirectReply`), or at once when it cannot be proposed.
/// Returns the request when it is not such a write (reads, scans, status, another core's
/// partition): those are answered by a task of their own. Puts are most of the traffic, and a
/// task per put cost an allocation for its future, a reply channel and a timer registration.
fn write_here(
    serving: &Serving,
    answers: &Rc<Answers>,
    request: Request,
    arrived: Instant,
) -> Option<Request> {
    let (core, view) = (&*serving.core, &*serving.view);
    let key = match &request.op {
        Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => key.clone(),
        _ => return Some(request),
    };
    let partition = partition_of(&key, view.partitions);
    if core_of(partition, view.cores) != core.core {
        return Some(request);
    }
    let reply = DirectReply {
        request_id: request.request_id,
        op: OpKind::of(&request.op),
        arrived,
        core: core.core,
        answers: answers.clone(),
    };
    if let Some(refusal) = refusal(view, &request) {
        reply.answer(refusal);
        return None;
    }
    let id = request.request_id;
    let data = match command_for(request.op, request.client_id, request.sequence) {
        Ok(data) => data,
        Err(error) => {
            reply.answer(Response::error(id, ErrorCode::Malformed, error.to_string()));
            return None;
        }
    };
    if let Err((error, reply)) = core.propose_direct(group_of(partition), data, &key, reply) {
        reply.answer(failure(view, id, error));
    }
    None
}

/// Where a write proposed by `write_here` is answered: its connection's answers.
pub struct DirectReply {
    request_id: u64,
    op: OpKind,
    arrived: Instant,
    core: usize,
    answers: Rc<Answers>,
}

impl DirectReply {
    /// The write applied (or was lost to a change of leader).
    pub fn deliver(self, result: WriteResult) {
        let id = self.request_id;
        let response = match result {
            WriteResult::Applied(outcome) => response_for(id, outcome),
            WriteResult::Lost => lost(id),
        };
        self.answer(response);
    }

    /// No answer within `core::WRITE_TIMEOUT`.
    pub fn time_out(self) {
        let response = timed_out(self.request_id);
        self.answer(response);
    }

    fn answer(self, response: Response) {
        metrics::core(self.core).request_done(self.op, response.error, self.arrived.elapsed());
        self.answers.answer(response);
    }
}

fn lost(request_id: u64) -> Response {
    Response::error(
        request_id,
        ErrorCode::Unavailable,
        "leadership changed before the write applied; retry",
    )
}

fn timed_out(request_id: u64) -> Response {
    Response::error(
        request_id,
        ErrorCode::Timeout,
        "no answer in time; the outcome is unknown",
    )
}

fn not_leader(view: &ClusterView, request_id: u64, leader: u64) -> Response {
    let mut response = Response::error(
        request_id,
        ErrorCode::NotLeader,
        format!("not the leader; leader hint: {leader}"),
    );
    response.leader_hint = leader;
    response.leader_address = view.address_of(leader);
    response
}

fn failure(view: &ClusterView, request_id: u64, failure: ProposeFailure) -> Response {
    match failure {
        ProposeFailure::UnknownGroup => Response::error(
            request_id,
            ErrorCode::UnknownPartition,
            "partition not hosted here",
        ),
        ProposeFailure::NotLeader(leader) => not_leader(view, request_id, leader),
        ProposeFailure::Refused(why) => Response::error(request_id, ErrorCode::Unavailable, why),
        ProposeFailure::Timeout => timed_out(request_id),
    }
}

/// Answers a request that arrived on this core's client connections: here if this core owns
/// its partition, else by handing it to the owner.
async fn handle(serving: &Serving, request: Request) -> Response {
    let (core, view) = (&*serving.core, &*serving.view);
    if let Some(refusal) = refusal(view, &request) {
        return refusal;
    }
    let id = request.request_id;
    let partition = match &request.op {
        Op::Get { key, .. } | Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => {
            partition_of(key, view.partitions)
        }
        Op::Scan { partition, .. } => match *partition {
            Some(partition) if partition < view.partitions => partition,
            Some(partition) => {
                let message = format!(
                    "partition {partition} does not exist (the cluster has {})",
                    view.partitions
                );
                return Response::error(id, ErrorCode::UnknownPartition, message);
            }
            None => {
                let message = "a scan names its partition (keys are hash-partitioned)";
                return Response::error(id, ErrorCode::Malformed, message);
            }
        },
        Op::Status => return node_status(serving, id).await,
    };
    let owner = core_of(partition, view.cores);
    if owner == core.core {
        handle_here(core, view, request).await
    } else {
        serving.router.forward(owner, request).await
    }
}

/// Answers a request another core handed over; this core owns its partition. A status
/// request reports this core's partitions only.
pub async fn handle_handover(
    core: Rc<CoreState>,
    view: Rc<ClusterView>,
    request: Request,
) -> Response {
    if let Some(refusal) = refusal(&view, &request) {
        return refusal;
    }
    if let Op::Status = request.op {
        return Response::ok(
            request.request_id,
            Some(Reply::Status(status(&core, &view))),
        );
    }
    handle_here(&core, &view, request).await
}

/// The checks every request passes before any routing (cluster id, size limits): the answer
/// refusing it, if it fails one.
fn refusal(view: &ClusterView, request: &Request) -> Option<Response> {
    let id = request.request_id;
    if request.cluster_id != 0 && request.cluster_id != view.cluster_id {
        let message = format!(
            "this node belongs to cluster {}, not {}",
            view.cluster_id, request.cluster_id
        );
        return Some(Response::error(id, ErrorCode::WrongCluster, message));
    }
    let violation = request.check_limits().err()?;
    Some(Response::error(id, violation.code, violation.message))
}

/// The status of the whole node: this core's partitions merged with every other core's,
/// asked through the mesh. A core that cannot answer makes the whole status Unavailable
/// rather than a report that silently misses partitions.
async fn node_status(serving: &Serving, id: u64) -> Response {
    let mut status = status(&serving.core, &serving.view);
    for other in (0..serving.view.cores).filter(|&c| c != serving.core.core) {
        let request = Request {
            request_id: id,
            client_id: 0,
            sequence: 0,
            cluster_id: 0,
            op: Op::Status,
        };
        let response = serving.router.forward(other, request).await;
        match response.reply {
            Some(Reply::Status(theirs)) if response.error == ErrorCode::Ok => {
                status.partitions.extend(theirs.partitions)
            }
            _ => {
                let message = format!("core {other} did not report: {}", response.message);
                return Response::error(id, ErrorCode::Unavailable, message);
            }
        }
    }
    status.partitions.sort_by_key(|p| p.partition);
    Response::ok(id, Some(Reply::Status(status)))
}

/// Serves a key request whose partition this core owns.
async fn handle_here(core: &CoreState, view: &ClusterView, request: Request) -> Response {
    let id = request.request_id;
    let key = match request.op {
        Op::Get { ref key, .. }
        | Op::Put { ref key, .. }
        | Op::Delete { ref key }
        | Op::Cas { ref key, .. } => key.clone(),
        Op::Scan {
            prefix,
            limit,
            continuation,
            partition: Some(partition),
        } => return scan_here(core, view, id, partition, prefix, limit, continuation).await,
        Op::Scan { .. } | Op::Status => {
            return Response::error(id, ErrorCode::Internal, "not a single-key request")
        }
    };
    let partition = partition_of(&key, view.partitions);
    if core_of(partition, view.cores) != core.core {
        // Routing sends every request to its owner; reaching here is a bug, not a client error.
        return Response::error(
            id,
            ErrorCode::Internal,
            format!(
                "partition {partition} reached core {}, which does not own it",
                core.core
            ),
        );
    }
    let group = group_of(partition);
    match request.op {
        Op::Get { stale_ok, .. } => {
            if !stale_ok && !test_fault_stale_reads() {
                if let Err(error) = core.read_barrier(group).await {
                    return failure(view, id, error);
                }
            }
            match core.storage.get(group, key).await {
                Ok(Some(stored)) => match crate::kv::StoredValue::decode(&stored) {
                    Ok(stored) => Response::ok(
                        id,
                        Some(Reply::Value {
                            value: stored.value,
                            revision: stored.meta.revision,
                        }),
                    ),
                    Err(error) => Response::error(id, ErrorCode::Internal, error.to_string()),
                },
                Ok(None) => Response::error(id, ErrorCode::NotFound, "not found"),
                Err(error) => Response::error(id, ErrorCode::Internal, error.to_string()),
            }
        }
        op => {
            let data = match command_for(op, request.client_id, request.sequence) {
                Ok(data) => data,
                Err(error) => return Response::error(id, ErrorCode::Malformed, error.to_string()),
            };
            match core.propose_and_wait(group, data, &key).await {
                Ok(WriteResult::Applied(outcome)) => response_for(id, outcome),
                Ok(WriteResult::Lost) => lost(id),
                Err(error) => failure(view, id, error),
            }
        }
    }
}

/// Serves one page of a scan of a partition this core owns, after a ReadIndex (linearizable
/// for this partition); the storage read runs on the blocking pool.
async fn scan_here(
    core: &CoreState,
    view: &ClusterView,
    id: u64,
    partition: u64,
    prefix: Bytes,
    limit: u32,
    continuation: Bytes,
) -> Response {
    if core_of(partition, view.cores) != core.core {
        let message = format!("partition {partition} reached core {}", core.core);
        return Response::error(id, ErrorCode::Internal, message);
    }
    let group = group_of(partition);
    if let Err(error) = core.read_barrier(group).await {
        return failure(view, id, error);
    }
    let Some((start, end)) = scan_range(&prefix, &continuation) else {
        return Response::ok(
            id,
            Some(Reply::Scan {
                items: Vec::new(),
                continuation: Bytes::new(),
            }),
        );
    };
    let items_max = effective_scan_limit(limit) as usize;
    let page = core
        .storage
        .scan_page(group, start, end, items_max, SCAN_PAGE_BYTES_MAX)
        .await;
    let (pairs, more) = match page {
        Ok(page) => page,
        Err(error) => return Response::error(id, ErrorCode::Internal, error.to_string()),
    };
    let mut items = Vec::with_capacity(pairs.len());
    for (key, stored) in pairs {
        match crate::kv::StoredValue::decode(&stored) {
            Ok(stored) => items.push(KeyValue {
                key,
                value: stored.value,
                revision: stored.meta.revision,
            }),
            Err(error) => return Response::error(id, ErrorCode::Internal, error.to_string()),
        }
    }
    let continuation = match items.last() {
        Some(last) if more => last.key.clone(),
        _ => Bytes::new(),
    };
    Response::ok(
        id,
        Some(Reply::Scan {
            items,
            continuation,
        }),
    )
}

/// The key range `[start, end)` of a scan page (empty `end`: to the end of the partition):
/// user keys starting with `prefix`, after `continuation` (the last key already returned).
/// `None` when the range is empty.
pub fn scan_range(prefix: &[u8], continuation: &[u8]) -> Option<(Bytes, Bytes)> {
    let mut start = prefix.to_vec().max(crate::kv::USER_KEYS_START.to_vec());
    if !continuation.is_empty() {
        let mut after = continuation.to_vec();
        after.push(0);
        start = start.max(after);
    }
    // The end: the smallest key above every key with the prefix.
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xff) {
        end.pop();
    }
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    if !end.is_empty() && start >= end {
        return None;
    }
    Some((Bytes::from(start), Bytes::from(end)))
}

/// TEST ONLY: with `KAHUNA_TEST_FAULT=stale-reads` in its environment a node answers every
/// read from its local state without ReadIndex, on any replica: the bug the fault-injection
/// test (tests/linearizability.rs) must catch. Never set it outside that test.
fn test_fault_stale_reads() -> bool {
    static STALE_READS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STALE_READS.get_or_init(|| {
        let on = std::env::var("KAHUNA_TEST_FAULT").is_ok_and(|v| v == "stale-reads");
        if on {
            eprintln!(
                "kahuna: TEST FAULT ON: reads skip ReadIndex (KAHUNA_TEST_FAULT=stale-reads)"
            );
        }
        on
    })
}

fn status(core: &CoreState, view: &ClusterView) -> NodeStatus {
    let shard = core.shard.borrow();
    let partitions = shard
        .group_ids()
        .into_iter()
        .filter_map(|group| {
            let raft = shard.raft(group)?;
            let status = raft.status();
            Some(PartitionStatus {
                partition: super::placement::partition_of_group(group),
                role: status.role,
                leader: status.leader,
                term: status.term,
                commit_index: status.committed,
                // What the state machine applied, not what Raft handed out (held entries).
                applied_index: shard.applied(group).unwrap_or(status.applied),
            })
        })
        .collect();
    NodeStatus {
        node_id: core.node,
        cluster_id: view.cluster_id,
        partition_count: view.partitions,
        nodes: view.client_addrs.clone(),
        partitions,
    }
}

/// The replicated command for a client write; a client id of 0 means no session.
fn command_for(op: Op, client_id: u64, sequence: u64) -> Result<Bytes, crate::kv::CommandError> {
    let session = (client_id != 0 && sequence != 0).then_some(Session {
        client_id,
        sequence,
    });
    let op = match op {
        Op::Put { key, value } => KvOp::Put { key, value },
        Op::Delete { key } => KvOp::Delete { key },
        Op::Cas {
            key,
            expected_revision,
            value,
        } => KvOp::Cas {
            key,
            expected_revision,
            value,
        },
        other => unreachable!("not a write: {other:?}"),
    };
    Command { session, op }.encode()
}

/// The client's answer for what applying its command did.
fn response_for(id: u64, outcome: Outcome) -> Response {
    match outcome {
        Outcome::Applied { revision } => Response::ok(id, Some(Reply::Revision { revision })),
        Outcome::Deleted { previous_revision } => Response::ok(
            id,
            Some(Reply::Revision {
                revision: previous_revision,
            }),
        ),
        Outcome::NotFound => Response::error(id, ErrorCode::NotFound, "not found"),
        Outcome::RevisionMismatch { current } => {
            let mut response = Response::error(
                id,
                ErrorCode::RevisionMismatch,
                format!("current revision is {current}"),
            );
            response.reply = Some(Reply::Revision { revision: current });
            response
        }
        Outcome::Rejected(rejection) => {
            Response::error(id, ErrorCode::Malformed, format!("rejected: {rejection:?}"))
        }
        Outcome::SequenceStale { last_sequence } => Response::error(
            id,
            ErrorCode::Malformed,
            format!("sequence is older than the last applied ({last_sequence}) for this client id"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::scan_range;

    fn range(prefix: &[u8], continuation: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        scan_range(prefix, continuation).map(|(s, e)| (s.to_vec(), e.to_vec()))
    }

    #[test]
    fn scan_ranges_cover_the_prefix_after_the_continuation() {
        assert_eq!(range(b"ab", b""), Some((b"ab".to_vec(), b"ac".to_vec())));
        assert_eq!(
            range(b"ab", b"ab1"),
            Some((b"ab1\0".to_vec(), b"ac".to_vec()))
        );
        // Everything: from the first user key (system keys start with 0x00) to the end.
        assert_eq!(range(b"", b""), Some((vec![1], Vec::new())));
        assert_eq!(
            range(b"a\xff\xff", b""),
            Some((b"a\xff\xff".to_vec(), b"b".to_vec()))
        );
        assert_eq!(range(b"\xff", b""), Some((b"\xff".to_vec(), Vec::new())));
        // A continuation past the prefix's keys: nothing left.
        assert_eq!(range(b"ab", b"ac"), None);
        // A continuation before the prefix does not widen it.
        assert_eq!(range(b"ab", b"a"), Some((b"ab".to_vec(), b"ac".to_vec())));
    }
}
