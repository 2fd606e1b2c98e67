//! The client protocol codec (schemas/client.fbs): typed requests and responses, their
//! encoding into frames and their verified decoding.
//!
//! Decoding is bounded ([`flatbuffers::VerifierOptions`] from [`super::limits`]) and strict:
//! unknown operations, error codes, replies or roles are typed errors, never a panic. Size
//! limits on keys and values are not decoding errors: [`Request::check_limits`] names the error
//! code the node answers with, so an over-limit request gets a precise answer while a malformed
//! frame closes only its connection. This module never touches sockets or key/value state.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer, VerifierOptions, WIPOffset};
use thiserror::Error;

use super::frame::{frame_body, FrameError};
use super::limits::{
    CLIENT_FRAME_BYTES_MAX, CLIENT_VERIFIER_TABLES_MAX, CONTINUATION_BYTES_MAX,
    ENCODER_RETAINED_BYTES_MAX, FRAME_HEADER_BYTES, KEY_BYTES_MAX, SCAN_PAGE_ITEMS_DEFAULT,
    SCAN_PAGE_ITEMS_MAX, VALUE_BYTES_MAX,
};
use super::{client_fb as fb, has_identifier, verifier_options};
use crate::raft::{GroupId, Index, NodeId, Role, Term};

/// File identifier of response frames (requests carry "KRQ1", the schema's own).
const RESPONSE_IDENTIFIER: &str = "KRS1";

const CLIENT_VERIFIER_OPTIONS: VerifierOptions =
    verifier_options(CLIENT_FRAME_BYTES_MAX, CLIENT_VERIFIER_TABLES_MAX);

/// Bytes a frame needs beyond the byte strings it carries, per table and per frame; used to
/// refuse an oversized frame before building it.
const TABLE_BYTES_BOUND: usize = 96;

/// One operation of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Linearizable unless `stale_ok`.
    Get {
        key: Bytes,
        stale_ok: bool,
    },
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Write only if the key's revision is `expected_revision` (0 = the key is absent).
    Cas {
        key: Bytes,
        expected_revision: u64,
        value: Bytes,
    },
    /// `limit` 0 = [`SCAN_PAGE_ITEMS_DEFAULT`]; see [`effective_scan_limit`]. `continuation` is
    /// empty for the first page.
    Scan {
        prefix: Bytes,
        limit: u32,
        continuation: Bytes,
        /// The partition to read (a scan reads one partition; `None` is refused).
        partition: Option<u64>,
    },
    Status,
}

impl Op {
    /// True for the operations that change the store (and go through the session table).
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Delete { .. } | Op::Cas { .. })
    }
}

/// A client request. `(client_id, sequence)` identifies a write for at-most-once application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub request_id: u64,
    /// 0 = no session.
    pub client_id: u64,
    pub sequence: u64,
    /// The cluster the client means to reach; 0 = do not check.
    pub cluster_id: u64,
    pub op: Op,
}

/// A request over a limit: the code and message the node answers with.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{code:?}: {message}")]
pub struct LimitViolation {
    pub code: ErrorCode,
    pub message: String,
}

impl Request {
    /// Checks key, value and token sizes against [`super::limits`]. The node answers a
    /// violation with its code and keeps the connection.
    pub fn check_limits(&self) -> Result<(), LimitViolation> {
        match &self.op {
            Op::Get { key, .. } | Op::Delete { key } => check_key(key),
            Op::Put { key, value } | Op::Cas { key, value, .. } => {
                check_key(key)?;
                check_value(value)
            }
            Op::Scan {
                prefix,
                continuation,
                ..
            } => {
                if prefix.len() > KEY_BYTES_MAX {
                    return Err(violation(
                        ErrorCode::KeyTooLarge,
                        format!(
                            "prefix of {} bytes exceeds the {KEY_BYTES_MAX}-byte key limit",
                            prefix.len()
                        ),
                    ));
                }
                if continuation.len() > CONTINUATION_BYTES_MAX {
                    return Err(violation(
                        ErrorCode::Malformed,
                        format!(
                            "continuation token of {} bytes exceeds {CONTINUATION_BYTES_MAX} bytes",
                            continuation.len()
                        ),
                    ));
                }
                Ok(())
            }
            Op::Status => Ok(()),
        }
    }
}

fn violation(code: ErrorCode, message: String) -> LimitViolation {
    LimitViolation { code, message }
}

fn check_key(key: &[u8]) -> Result<(), LimitViolation> {
    if key.is_empty() {
        return Err(violation(ErrorCode::Malformed, "empty key".to_string()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(violation(
            ErrorCode::KeyTooLarge,
            format!(
                "key of {} bytes exceeds the {KEY_BYTES_MAX}-byte limit",
                key.len()
            ),
        ));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), LimitViolation> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(violation(
            ErrorCode::ValueTooLarge,
            format!(
                "value of {} bytes exceeds the {VALUE_BYTES_MAX}-byte limit",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// The page size a scan asking for `limit` items gets: the default for 0, at most the maximum.
pub fn effective_scan_limit(limit: u32) -> u32 {
    match limit {
        0 => SCAN_PAGE_ITEMS_DEFAULT,
        limit => limit.min(SCAN_PAGE_ITEMS_MAX),
    }
}

/// The outcome of a request. Values are the wire values of client.fbs and never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    Ok = 0,
    NotFound = 1,
    RevisionMismatch = 2,
    NotLeader = 3,
    UnknownPartition = 4,
    KeyTooLarge = 5,
    ValueTooLarge = 6,
    FrameTooLarge = 7,
    TooManyInFlight = 8,
    Malformed = 9,
    Timeout = 10,
    Internal = 11,
    WrongCluster = 12,
    Unavailable = 13,
}

impl ErrorCode {
    const ALL: [ErrorCode; 14] = [
        ErrorCode::Ok,
        ErrorCode::NotFound,
        ErrorCode::RevisionMismatch,
        ErrorCode::NotLeader,
        ErrorCode::UnknownPartition,
        ErrorCode::KeyTooLarge,
        ErrorCode::ValueTooLarge,
        ErrorCode::FrameTooLarge,
        ErrorCode::TooManyInFlight,
        ErrorCode::Malformed,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::WrongCluster,
        ErrorCode::Unavailable,
    ];

    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.get(usize::from(value)).copied()
    }

    /// A definite negative answer (the CLI's exit code 1): the request was understood and the
    /// answer is "no", with no doubt about the outcome.
    pub fn is_definite_negative(self) -> bool {
        matches!(self, ErrorCode::NotFound | ErrorCode::RevisionMismatch)
    }

    /// The request did not take effect here and may be sent again, to the hinted leader or
    /// another replica. (After Timeout a write may still apply: retry it with the same
    /// client id and sequence so the session table applies it at most once.)
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::Timeout
                | ErrorCode::Unavailable
                | ErrorCode::TooManyInFlight
        )
    }
}

/// One key of a scan page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    /// The revision at which the key was last written.
    pub revision: u64,
}

/// How a node can be reached by clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub node_id: NodeId,
    pub client_address: String,
}

/// One partition as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: GroupId,
    pub role: Role,
    /// 0 = no leader known.
    pub leader: NodeId,
    pub term: Term,
    pub commit_index: Index,
    pub applied_index: Index,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub cluster_id: u64,
    pub partition_count: u64,
    pub nodes: Vec<NodeAddress>,
    pub partitions: Vec<PartitionStatus>,
}

/// The payload of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A Get's answer.
    Value {
        value: Bytes,
        revision: u64,
    },
    /// A write's revision, or a refused Cas's current revision (0 = absent).
    Revision {
        revision: u64,
    },
    /// One scan page; an empty continuation means the scan is complete.
    Scan {
        items: Vec<KeyValue>,
        continuation: Bytes,
    },
    Status(NodeStatus),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub request_id: u64,
    pub error: ErrorCode,
    /// Detail of a non-Ok error; empty otherwise.
    pub message: String,
    /// With NotLeader: the believed leader (0 = unknown) and its client address (empty =
    /// unknown).
    pub leader_hint: NodeId,
    pub leader_address: String,
    pub reply: Option<Reply>,
}

impl Response {
    /// A successful answer.
    pub fn ok(request_id: u64, reply: Option<Reply>) -> Response {
        Response {
            request_id,
            error: ErrorCode::Ok,
            message: String::new(),
            leader_hint: 0,
            leader_address: String::new(),
            reply,
        }
    }

    /// An answer carrying an error code and its explanation.
    pub fn error(request_id: u64, error: ErrorCode, message: impl Into<String>) -> Response {
        Response {
            error,
            message: message.into(),
            ..Response::ok(request_id, None)
        }
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ClientEncodeError {
    /// The frame would exceed [`CLIENT_FRAME_BYTES_MAX`] (a scan page must be cut to
    /// [`super::limits::SCAN_PAGE_BYTES_MAX`] before encoding).
    #[error("{what} needs {bytes} bytes, over the {max}-byte frame limit")]
    FrameTooLarge {
        what: &'static str,
        bytes: usize,
        max: usize,
    },
}

/// Why a frame was refused. The connection that sent it should be closed; where the request id
/// could be read ([`ClientDecodeError::request_id`]) a node may answer Malformed first.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ClientDecodeError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("not a {expected} frame (file identifier mismatch)")]
    WrongIdentifier { expected: &'static str },
    #[error("flatbuffers verification failed: {0}")]
    Invalid(#[from] InvalidFlatbuffer),
    #[error("request {request_id} has no operation")]
    MissingOp { request_id: u64 },
    #[error("request {request_id} has unknown operation type {tag}")]
    UnknownOp { request_id: u64, tag: u8 },
    #[error("response {request_id} has unknown error code {code}")]
    UnknownErrorCode { request_id: u64, code: u16 },
    #[error("response {request_id} has a reply of type {tag} without its table")]
    MissingReply { request_id: u64, tag: u8 },
    #[error("response {request_id} has unknown reply type {tag}")]
    UnknownReply { request_id: u64, tag: u8 },
    #[error("response {request_id} has unknown role {role}")]
    UnknownRole { request_id: u64, role: u8 },
}

impl ClientDecodeError {
    /// The request id of the frame, when it verified far enough to read it.
    pub fn request_id(&self) -> Option<u64> {
        match *self {
            ClientDecodeError::Frame(_)
            | ClientDecodeError::WrongIdentifier { .. }
            | ClientDecodeError::Invalid(_) => None,
            ClientDecodeError::MissingOp { request_id }
            | ClientDecodeError::UnknownOp { request_id, .. }
            | ClientDecodeError::UnknownErrorCode { request_id, .. }
            | ClientDecodeError::MissingReply { request_id, .. }
            | ClientDecodeError::UnknownReply { request_id, .. }
            | ClientDecodeError::UnknownRole { request_id, .. } => Some(request_id),
        }
    }
}

/// Builds client frames. Keep one per connection: it reuses its buffer between frames (up to
/// [`ENCODER_RETAINED_BYTES_MAX`]).
pub struct ClientEncoder {
    builder: FlatBufferBuilder<'static>,
    last_frame_bytes: usize,
}

impl Default for ClientEncoder {
    fn default() -> ClientEncoder {
        ClientEncoder::new()
    }
}

impl ClientEncoder {
    pub fn new() -> ClientEncoder {
        ClientEncoder {
            builder: FlatBufferBuilder::with_capacity(1024),
            last_frame_bytes: 0,
        }
    }

    /// One request frame, length prefix included.
    pub fn encode_request(&mut self, request: &Request) -> Result<&[u8], ClientEncodeError> {
        check_bound("request", request_bytes_bound(&request.op))?;
        self.start_frame();
        let builder = &mut self.builder;
        let (op_type, op) = match &request.op {
            Op::Get { key, stale_ok } => {
                let key = Some(builder.create_vector(&key[..]));
                (
                    fb::Op::Get,
                    fb::Get::create(
                        builder,
                        &fb::GetArgs {
                            key,
                            stale_ok: *stale_ok,
                        },
                    )
                    .as_union_value(),
                )
            }
            Op::Put { key, value } => {
                let key = Some(builder.create_vector(&key[..]));
                let value = Some(builder.create_vector(&value[..]));
                (
                    fb::Op::Put,
                    fb::Put::create(builder, &fb::PutArgs { key, value }).as_union_value(),
                )
            }
            Op::Delete { key } => {
                let key = Some(builder.create_vector(&key[..]));
                (
                    fb::Op::Delete,
                    fb::Delete::create(builder, &fb::DeleteArgs { key }).as_union_value(),
                )
            }
            Op::Cas {
                key,
                expected_revision,
                value,
            } => {
                let key = Some(builder.create_vector(&key[..]));
                let value = Some(builder.create_vector(&value[..]));
                let args = fb::CasArgs {
                    key,
                    expected_revision: *expected_revision,
                    value,
                };
                (
                    fb::Op::Cas,
                    fb::Cas::create(builder, &args).as_union_value(),
                )
            }
            Op::Scan {
                prefix,
                limit,
                continuation,
                partition,
            } => {
                let prefix = Some(builder.create_vector(&prefix[..]));
                let continuation = Some(builder.create_vector(&continuation[..]));
                let args = fb::ScanArgs {
                    prefix,
                    limit: *limit,
                    continuation,
                    partition: *partition,
                };
                (
                    fb::Op::Scan,
                    fb::Scan::create(builder, &args).as_union_value(),
                )
            }
            Op::Status => (
                fb::Op::Status,
                fb::Status::create(builder, &fb::StatusArgs {}).as_union_value(),
            ),
        };
        let args = fb::RequestArgs {
            request_id: request.request_id,
            client_id: request.client_id,
            sequence: request.sequence,
            cluster_id: request.cluster_id,
            op_type,
            op: Some(op),
        };
        let root = fb::Request::create(builder, &args);
        fb::finish_size_prefixed_request_buffer(builder, root);
        self.finish("request")
    }

    /// One response frame, length prefix included.
    pub fn encode_response(&mut self, response: &Response) -> Result<&[u8], ClientEncodeError> {
        check_bound("response", response_bytes_bound(response))?;
        self.start_frame();
        let builder = &mut self.builder;
        let (reply_type, reply) = match &response.reply {
            None => (fb::Reply::NONE, None),
            Some(reply) => {
                let (reply_type, reply) = build_reply(builder, reply);
                (reply_type, Some(reply))
            }
        };
        let message = Some(builder.create_string(&response.message));
        let leader_address = Some(builder.create_string(&response.leader_address));
        let args = fb::ResponseArgs {
            request_id: response.request_id,
            error: fb::ErrorCode(response.error as u16),
            message,
            leader_hint: response.leader_hint,
            leader_address,
            reply_type,
            reply,
        };
        let root = fb::Response::create(builder, &args);
        builder.finish_size_prefixed(root, Some(RESPONSE_IDENTIFIER));
        self.finish("response")
    }

    fn start_frame(&mut self) {
        if self.last_frame_bytes > ENCODER_RETAINED_BYTES_MAX {
            self.builder = FlatBufferBuilder::with_capacity(1024);
        } else {
            self.builder.reset();
        }
    }

    fn finish(&mut self, what: &'static str) -> Result<&[u8], ClientEncodeError> {
        let frame = self.builder.finished_data();
        self.last_frame_bytes = frame.len();
        let bytes = frame.len() - FRAME_HEADER_BYTES;
        if bytes > CLIENT_FRAME_BYTES_MAX {
            return Err(ClientEncodeError::FrameTooLarge {
                what,
                bytes,
                max: CLIENT_FRAME_BYTES_MAX,
            });
        }
        Ok(frame)
    }
}

fn check_bound(what: &'static str, bytes: usize) -> Result<(), ClientEncodeError> {
    if bytes > CLIENT_FRAME_BYTES_MAX {
        return Err(ClientEncodeError::FrameTooLarge {
            what,
            bytes,
            max: CLIENT_FRAME_BYTES_MAX,
        });
    }
    Ok(())
}

/// A lower estimate of a frame's bytes: enough to refuse an oversized frame before building it
/// (building checks the exact size afterwards).
fn request_bytes_bound(op: &Op) -> usize {
    let payload = match op {
        Op::Get { key, .. } | Op::Delete { key } => key.len(),
        Op::Put { key, value } | Op::Cas { key, value, .. } => key.len() + value.len(),
        Op::Scan {
            prefix,
            continuation,
            ..
        } => prefix.len() + continuation.len(),
        Op::Status => 0,
    };
    payload.saturating_add(2 * TABLE_BYTES_BOUND)
}

fn response_bytes_bound(response: &Response) -> usize {
    let strings = response.message.len() + response.leader_address.len();
    let reply = match &response.reply {
        None | Some(Reply::Revision { .. }) => 0,
        Some(Reply::Value { value, .. }) => value.len(),
        Some(Reply::Scan {
            items,
            continuation,
        }) => items
            .iter()
            .map(|item| item.key.len() + item.value.len() + TABLE_BYTES_BOUND)
            .fold(continuation.len(), usize::saturating_add),
        Some(Reply::Status(status)) => {
            let addresses: usize = status
                .nodes
                .iter()
                .map(|node| node.client_address.len() + TABLE_BYTES_BOUND)
                .sum();
            addresses.saturating_add(status.partitions.len().saturating_mul(TABLE_BYTES_BOUND))
        }
    };
    reply
        .saturating_add(strings)
        .saturating_add(2 * TABLE_BYTES_BOUND)
}

fn build_reply(
    builder: &mut FlatBufferBuilder<'static>,
    reply: &Reply,
) -> (fb::Reply, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match reply {
        Reply::Value { value, revision } => {
            let value = Some(builder.create_vector(&value[..]));
            let args = fb::ValueResultArgs {
                value,
                revision: *revision,
            };
            (
                fb::Reply::ValueResult,
                fb::ValueResult::create(builder, &args).as_union_value(),
            )
        }
        Reply::Revision { revision } => {
            let args = fb::RevisionResultArgs {
                revision: *revision,
            };
            (
                fb::Reply::RevisionResult,
                fb::RevisionResult::create(builder, &args).as_union_value(),
            )
        }
        Reply::Scan {
            items,
            continuation,
        } => {
            let offsets: Vec<_> = items
                .iter()
                .map(|item| {
                    let key = Some(builder.create_vector(&item.key[..]));
                    let value = Some(builder.create_vector(&item.value[..]));
                    fb::KeyValue::create(
                        builder,
                        &fb::KeyValueArgs {
                            key,
                            value,
                            revision: item.revision,
                        },
                    )
                })
                .collect();
            let items = Some(builder.create_vector(&offsets));
            let continuation = Some(builder.create_vector(&continuation[..]));
            let args = fb::ScanResultArgs {
                items,
                continuation,
            };
            (
                fb::Reply::ScanResult,
                fb::ScanResult::create(builder, &args).as_union_value(),
            )
        }
        Reply::Status(status) => {
            let nodes: Vec<_> = status
                .nodes
                .iter()
                .map(|node| {
                    let client_address = Some(builder.create_string(&node.client_address));
                    fb::NodeAddress::create(
                        builder,
                        &fb::NodeAddressArgs {
                            node_id: node.node_id,
                            client_address,
                        },
                    )
                })
                .collect();
            let partitions: Vec<_> = status
                .partitions
                .iter()
                .map(|partition| {
                    let args = fb::PartitionStatusArgs {
                        partition: partition.partition,
                        role: role_to_wire(partition.role),
                        leader: partition.leader,
                        term: partition.term,
                        commit_index: partition.commit_index,
                        applied_index: partition.applied_index,
                    };
                    fb::PartitionStatus::create(builder, &args)
                })
                .collect();
            let nodes = Some(builder.create_vector(&nodes));
            let partitions = Some(builder.create_vector(&partitions));
            let args = fb::StatusResultArgs {
                node_id: status.node_id,
                cluster_id: status.cluster_id,
                partition_count: status.partition_count,
                nodes,
                partitions,
            };
            (
                fb::Reply::StatusResult,
                fb::StatusResult::create(builder, &args).as_union_value(),
            )
        }
    }
}

fn role_to_wire(role: Role) -> fb::Role {
    match role {
        Role::Follower => fb::Role::Follower,
        Role::PreCandidate => fb::Role::PreCandidate,
        Role::Candidate => fb::Role::Candidate,
        Role::Leader => fb::Role::Leader,
    }
}

fn role_from_wire(role: fb::Role) -> Option<Role> {
    match role {
        fb::Role::Follower => Some(Role::Follower),
        fb::Role::PreCandidate => Some(Role::PreCandidate),
        fb::Role::Candidate => Some(Role::Candidate),
        fb::Role::Leader => Some(Role::Leader),
        _ => None,
    }
}

fn bytes_of(vector: Option<flatbuffers::Vector<'_, u8>>) -> Bytes {
    vector
        .map(|vector| Bytes::copy_from_slice(vector.bytes()))
        .unwrap_or_default()
}

/// Verifies and decodes a request frame (length prefix included). Byte strings are copied out
/// of the frame. Limits are not checked here: see [`Request::check_limits`].
pub fn decode_request(frame: &[u8]) -> Result<Request, ClientDecodeError> {
    frame_body(frame, CLIENT_FRAME_BYTES_MAX)?;
    if !has_identifier(frame, fb::REQUEST_IDENTIFIER) {
        return Err(ClientDecodeError::WrongIdentifier {
            expected: "request",
        });
    }
    let request = fb::size_prefixed_root_as_request_with_opts(&CLIENT_VERIFIER_OPTIONS, frame)?;
    let request_id = request.request_id();
    let missing = || ClientDecodeError::MissingOp { request_id };
    // Keys are required fields: the verifier has refused tables without them.
    let op = match request.op_type() {
        fb::Op::Get => {
            let get = request.op_as_get().ok_or_else(missing)?;
            Op::Get {
                key: bytes_of(Some(get.key())),
                stale_ok: get.stale_ok(),
            }
        }
        fb::Op::Put => {
            let put = request.op_as_put().ok_or_else(missing)?;
            Op::Put {
                key: bytes_of(Some(put.key())),
                value: bytes_of(put.value()),
            }
        }
        fb::Op::Delete => {
            let delete = request.op_as_delete().ok_or_else(missing)?;
            Op::Delete {
                key: bytes_of(Some(delete.key())),
            }
        }
        fb::Op::Cas => {
            let cas = request.op_as_cas().ok_or_else(missing)?;
            Op::Cas {
                key: bytes_of(Some(cas.key())),
                expected_revision: cas.expected_revision(),
                value: bytes_of(cas.value()),
            }
        }
        fb::Op::Scan => {
            let scan = request.op_as_scan().ok_or_else(missing)?;
            Op::Scan {
                prefix: bytes_of(scan.prefix()),
                limit: scan.limit(),
                continuation: bytes_of(scan.continuation()),
                partition: scan.partition(),
            }
        }
        fb::Op::Status => {
            request.op_as_status().ok_or_else(missing)?;
            Op::Status
        }
        fb::Op::NONE => return Err(missing()),
        fb::Op(tag) => return Err(ClientDecodeError::UnknownOp { request_id, tag }),
    };
    Ok(Request {
        request_id,
        client_id: request.client_id(),
        sequence: request.sequence(),
        cluster_id: request.cluster_id(),
        op,
    })
}

/// Verifies and decodes a response frame (length prefix included).
pub fn decode_response(frame: &[u8]) -> Result<Response, ClientDecodeError> {
    frame_body(frame, CLIENT_FRAME_BYTES_MAX)?;
    if !has_identifier(frame, RESPONSE_IDENTIFIER) {
        return Err(ClientDecodeError::WrongIdentifier {
            expected: "response",
        });
    }
    let response =
        flatbuffers::size_prefixed_root_with_opts::<fb::Response>(&CLIENT_VERIFIER_OPTIONS, frame)?;
    let request_id = response.request_id();
    let code = response.error().0;
    let error = ErrorCode::from_u16(code)
        .ok_or(ClientDecodeError::UnknownErrorCode { request_id, code })?;
    Ok(Response {
        request_id,
        error,
        message: response.message().unwrap_or_default().to_string(),
        leader_hint: response.leader_hint(),
        leader_address: response.leader_address().unwrap_or_default().to_string(),
        reply: decode_reply(&response)?,
    })
}

fn decode_reply(response: &fb::Response<'_>) -> Result<Option<Reply>, ClientDecodeError> {
    let request_id = response.request_id();
    let tag = response.reply_type().0;
    let missing = || ClientDecodeError::MissingReply { request_id, tag };
    let reply = match response.reply_type() {
        fb::Reply::NONE => return Ok(None),
        fb::Reply::ValueResult => {
            let value = response.reply_as_value_result().ok_or_else(missing)?;
            Reply::Value {
                value: bytes_of(value.value()),
                revision: value.revision(),
            }
        }
        fb::Reply::RevisionResult => {
            let revision = response.reply_as_revision_result().ok_or_else(missing)?;
            Reply::Revision {
                revision: revision.revision(),
            }
        }
        fb::Reply::ScanResult => {
            let scan = response.reply_as_scan_result().ok_or_else(missing)?;
            let items = scan
                .items()
                .unwrap_or_default()
                .iter()
                .map(|item| KeyValue {
                    key: bytes_of(Some(item.key())),
                    value: bytes_of(item.value()),
                    revision: item.revision(),
                })
                .collect();
            Reply::Scan {
                items,
                continuation: bytes_of(scan.continuation()),
            }
        }
        fb::Reply::StatusResult => {
            let status = response.reply_as_status_result().ok_or_else(missing)?;
            Reply::Status(decode_status(request_id, status)?)
        }
        fb::Reply(tag) => return Err(ClientDecodeError::UnknownReply { request_id, tag }),
    };
    Ok(Some(reply))
}

fn decode_status(
    request_id: u64,
    status: fb::StatusResult<'_>,
) -> Result<NodeStatus, ClientDecodeError> {
    let nodes = status
        .nodes()
        .unwrap_or_default()
        .iter()
        .map(|node| NodeAddress {
            node_id: node.node_id(),
            client_address: node.client_address().to_string(),
        })
        .collect();
    let partitions = status
        .partitions()
        .unwrap_or_default()
        .iter()
        .map(|partition| {
            let role = role_from_wire(partition.role()).ok_or(ClientDecodeError::UnknownRole {
                request_id,
                role: partition.role().0,
            })?;
            Ok(PartitionStatus {
                partition: partition.partition(),
                role,
                leader: partition.leader(),
                term: partition.term(),
                commit_index: partition.commit_index(),
                applied_index: partition.applied_index(),
            })
        })
        .collect::<Result<Vec<_>, ClientDecodeError>>()?;
    Ok(NodeStatus {
        node_id: status.node_id(),
        cluster_id: status.cluster_id(),
        partition_count: status.partition_count(),
        nodes,
        partitions,
    })
}
