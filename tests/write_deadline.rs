//! A write its leader cannot commit is answered by the node itself, Timeout, once
//! `core::WRITE_TIMEOUT` has passed: a put is proposed without a task of its own (its answer
//! comes from the core loop when its entry applies), so nothing but the loop's deadline sweep
//! answers it when the entry never applies. The connection keeps serving afterwards.
//! Takes about 12 s (the node's write timeout is 10 s).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use kahuna::client::Connection;
use kahuna::proto::client::{ErrorCode, Op};
use kahuna::server::playground::wait_for_leaders;
use support::cluster::ProcessCluster;

/// The node's `core::WRITE_TIMEOUT`.
const NODE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

fn put(value: &'static str) -> Op {
    Op::Put {
        key: Bytes::from_static(b"deadline-key"),
        value: Bytes::from_static(value.as_bytes()),
    }
}

#[test]
fn a_write_that_cannot_commit_is_answered_timeout_by_its_leader() {
    // A slow tick (50 ms: elections after 0.5-1 s) leaves the leader in office long enough
    // after its followers die for the put below to be proposed rather than refused.
    let tick = vec!["--tick-ms".to_string(), "50".to_string()];
    let mut cluster = ProcessCluster::start(17700, 1, 1, tick);
    assert!(
        wait_for_leaders(&cluster.endpoints(), 1, Duration::from_secs(30)),
        "no leader"
    );
    let leader = cluster.leader_of(0).expect("partition 0 has a leader");
    let address = cluster.config.client_addr(leader);
    let connection = Connection::connect_blocking(&address, 16, Duration::from_secs(2)).unwrap();
    let committed = connection
        .call_blocking(put("one"), 0, 0, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(committed.error, ErrorCode::Ok, "{committed:?}");

    for node in (1..=3).filter(|n| *n != leader) {
        cluster.kill9(node);
    }
    let started = Instant::now();
    let answer = connection
        .call_blocking(put("two"), 0, 0, 0, NODE_WRITE_TIMEOUT * 4)
        .expect("the node answers the write itself");
    let waited = started.elapsed();
    assert_eq!(answer.error, ErrorCode::Timeout, "{answer:?}");
    assert!(
        waited >= NODE_WRITE_TIMEOUT - Duration::from_millis(500)
            && waited < NODE_WRITE_TIMEOUT * 2,
        "answered after {waited:?}"
    );

    // The connection still serves: the leader has stepped down for lack of a quorum.
    let after = connection
        .call_blocking(put("three"), 0, 0, 0, Duration::from_secs(5))
        .unwrap();
    assert!(
        matches!(after.error, ErrorCode::NotLeader | ErrorCode::Timeout),
        "{after:?}"
    );
}
