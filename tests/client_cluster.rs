//! The `kahuna::client` library against a real 3-node process cluster: every operation,
//! prefix scans merged across partitions and paged, many concurrent callers on one shared
//! client, and a stream of compare-and-set operations during which the leader is killed with
//! SIGKILL: every acknowledged CAS is applied exactly once (a retry answered from the session
//! table, never applied twice, never reported as a mismatch of our own write).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kahuna::client::{CasOutcome, ClientConfig, ClientError};
use kahuna::server::placement::partition_of;
use kahuna::server::playground::wait_for_leaders;
use support::cluster::{wait_until, ProcessCluster};

const PARTITIONS: u64 = 8;

#[test]
fn every_operation_scan_and_concurrent_callers() {
    let cluster = ProcessCluster::start(18000, PARTITIONS, 1, Vec::new());
    assert!(wait_for_leaders(
        &cluster.endpoints(),
        PARTITIONS,
        Duration::from_secs(60)
    ));
    let client = cluster.client();

    // Single-key operations and their answers.
    assert_eq!(client.get("absent").unwrap(), None);
    assert_eq!(client.delete("absent").unwrap(), None);
    let first = client.put("k", "v1").unwrap();
    let found = client.get("k").unwrap().expect("written");
    assert_eq!(
        (found.value.as_ref(), found.revision),
        (b"v1".as_ref(), first)
    );
    assert_eq!(
        client.cas("k", first + 1000, "no").unwrap(),
        CasOutcome::Mismatch { current: first }
    );
    assert_eq!(
        client.cas("new", 1, "no").unwrap(),
        CasOutcome::Mismatch { current: 0 }
    );
    let CasOutcome::Applied { revision: second } = client.cas("k", first, "v2").unwrap() else {
        panic!("cas on the current revision applies");
    };
    assert!(second > first);
    let CasOutcome::Applied { .. } = client.cas("created", 0, "c").unwrap() else {
        panic!("cas with revision 0 creates an absent key");
    };
    assert_eq!(client.delete("k").unwrap(), Some(second));
    assert_eq!(client.get("k").unwrap(), None);
    wait_until(
        "a stale read sees the write",
        Duration::from_secs(10),
        || client.get_stale("created").unwrap().is_some(),
    );
    let status = client.status().unwrap();
    assert_eq!(status.partition_count, PARTITIONS);

    // Many concurrent callers on clones of one client (threads here; tasks work the same).
    let writers: Vec<_> = (0..16)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    client
                        .put(format!("scan/{t:02}/{i:02}"), format!("{t}-{i}"))
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    client.put("scan0", "outside the prefix").unwrap();
    client.put("sca", "outside the prefix").unwrap();

    // The keys of every partition, merged in key order, whatever the page size.
    let expected: Vec<String> = (0..16)
        .flat_map(|t| (0..20).map(move |i| format!("scan/{t:02}/{i:02}")))
        .collect();
    let spread: std::collections::BTreeSet<u64> = expected
        .iter()
        .map(|k| partition_of(k.as_bytes(), PARTITIONS))
        .collect();
    assert_eq!(
        spread.len() as u64,
        PARTITIONS,
        "the keys span every partition"
    );
    let all = client.scan("scan/", usize::MAX).unwrap();
    let keys: Vec<String> = all
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect();
    assert_eq!(keys, expected);
    assert!(all.iter().all(|kv| kv.revision > 0));
    assert_eq!(client.scan("scan/", 7).unwrap()[..], all[..7]);
    let mut scanner = client.client().scanner("scan/").page_items(3);
    let mut paged = Vec::new();
    futures_lite::future::block_on(async {
        loop {
            let batch = scanner.next_batch(50).await.unwrap();
            if batch.is_empty() {
                break;
            }
            paged.extend(batch);
        }
    });
    assert_eq!(paged, all);
    assert_eq!(client.scan("scan/05/", usize::MAX).unwrap().len(), 20);
    assert!(client.scan("nothing-here/", 10).unwrap().is_empty());
    // An empty prefix scans every user key.
    assert_eq!(client.scan("", usize::MAX).unwrap().len(), 320 + 3);
}

#[test]
fn cas_stream_through_leader_kill_applies_every_cas_exactly_once() {
    let mut cluster = ProcessCluster::start(18100, PARTITIONS, 1, Vec::new());
    assert!(wait_for_leaders(
        &cluster.endpoints(),
        PARTITIONS,
        Duration::from_secs(60)
    ));
    let config = ClientConfig::new(cluster.endpoints())
        .deadline(Duration::from_secs(30))
        .attempt_timeout(Duration::from_millis(500));
    let client = kahuna::client::BlockingClient::new(config);
    const WORKERS: u64 = 6;
    const CAS_PER_WORKER: u64 = 120;
    let acknowledged = Arc::new(AtomicU64::new(0));
    // Each worker owns one counter key and increments it by CAS only: value n at revision r
    // becomes n + 1 if the revision is still r. A retried CAS that applied twice, or a retry
    // answered "mismatch" for our own applied write, shows up as a count that disagrees.
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            std::thread::spawn(move || {
                let key = format!("counter-{w}");
                let mut revision = 0;
                let mut revisions = Vec::new();
                for n in 0..CAS_PER_WORKER {
                    match client.cas(&key, revision, (n + 1).to_string()) {
                        Ok(CasOutcome::Applied { revision: next }) => {
                            assert!(next > revision, "{key}: revisions rise");
                            revision = next;
                            revisions.push(next);
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(CasOutcome::Mismatch { current }) => panic!(
                            "{key}: cas #{n} at revision {revision} refused (current {current}): \
                             a retry of our own write was not recognised"
                        ),
                        Err(error) => panic!("{key}: cas #{n}: {error} ({:?})", error.code()),
                    }
                }
                (key, revision)
            })
        })
        .collect();
    // Kill the leader of the first counter's partition once the stream is well under way.
    wait_until("some CAS applied", Duration::from_secs(60), || {
        acknowledged.load(Ordering::SeqCst) >= WORKERS * 20
    });
    let partition = partition_of(b"counter-0", PARTITIONS);
    let leader = cluster.leader_of(partition).expect("a leader");
    let at_kill = acknowledged.load(Ordering::SeqCst);
    cluster.kill9(leader);
    eprintln!("killed node {leader} (leader of partition {partition}) after {at_kill} CAS");
    let finals: BTreeMap<String, u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(
        acknowledged.load(Ordering::SeqCst),
        WORKERS * CAS_PER_WORKER
    );
    for (key, revision) in finals {
        let found = client.get(&key).unwrap().expect("counter exists");
        assert_eq!(
            found.revision, revision,
            "{key}: the last acknowledged write is current"
        );
        assert_eq!(
            found.value.as_ref(),
            CAS_PER_WORKER.to_string().as_bytes(),
            "{key}: applied exactly as many times as acknowledged"
        );
    }
    // The surviving replicas agree.
    wait_until("the survivors agree", Duration::from_secs(30), || {
        (1..=3u64).filter(|&n| n != leader).all(|n| {
            (0..WORKERS).all(|w| {
                cluster
                    .stale_get(n, format!("counter-{w}").as_bytes())
                    .as_deref()
                    == Some(CAS_PER_WORKER.to_string().as_bytes())
            })
        })
    });
}

#[test]
fn an_unreachable_cluster_is_a_timeout_that_says_nothing_was_applied() {
    let config = ClientConfig::new(["127.0.0.1:18399"])
        .deadline(Duration::from_millis(400))
        .attempt_timeout(Duration::from_millis(100));
    let client = kahuna::client::BlockingClient::new(config);
    match client.put("k", "v") {
        Err(error @ ClientError::Timeout { .. }) => {
            assert!(!error.outcome_unknown(), "{error}");
            assert!(error.to_string().contains("not applied"), "{error}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}
