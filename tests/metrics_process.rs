//! Process test of `kahuna serve --metrics-addr`: after some writes, `GET /metrics` answers in
//! the Prometheus text format with every write-path stage and the request counters, counting
//! what was done. A single-node store (quorum of one) on ports 22100 (client), 22101 (metrics)
//! and 23100 (peer).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kahuna::client::{BlockingClient, ClientConfig};
use support::metrics::{sample, scrape};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a single-node store (quorum of one) with 4 partitions in `dir`, plus `extra` flags.
fn single_node(
    dir: &std::path::Path,
    client: &str,
    peer: &str,
    metrics: &str,
    extra: &[&str],
) -> Node {
    Node(
        Command::new(env!("CARGO_BIN_EXE_kahuna"))
            .args(["serve", "--id", "1", "--client-addr", client])
            .args(["--peer-addr", peer, "--partitions", "4"])
            .args(["--metrics-addr", metrics])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("node-1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start kahuna serve"),
    )
}

#[test]
fn metrics_endpoint_exposes_write_path_stages_after_writes() {
    let dir = tempfile::tempdir().unwrap();
    let _node = single_node(
        dir.path(),
        "127.0.0.1:22100",
        "127.0.0.1:23100",
        "127.0.0.1:22101",
        &[],
    );
    let client = BlockingClient::new(
        ClientConfig::new(["127.0.0.1:22100"]).deadline(Duration::from_secs(30)),
    );
    for i in 0..50 {
        client
            .put(format!("metrics-{i}"), "value")
            .expect("write succeeds");
    }
    let value = client.get("metrics-1").expect("read succeeds");
    assert!(value.is_some());

    let start = Instant::now();
    let text = loop {
        let text = scrape("127.0.0.1:22101").unwrap_or_default();
        // The last answer is counted just after it is sent: wait until all 50 are.
        let puts = sample(
            &text,
            "kahuna_requests_total{core=\"0\",op=\"put\",code=\"Ok\"}",
        );
        if puts == Some(50.0) || start.elapsed() > Duration::from_secs(20) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("Content-Type: text/plain; version=0.0.4"));
    for name in [
        "kahuna_write_queue_seconds",
        "kahuna_write_batch_entries",
        "kahuna_storage_write_seconds",
        "kahuna_storage_engine_seconds",
        "kahuna_storage_handoff_seconds",
        "kahuna_storage_handoff_forward_seconds",
        "kahuna_storage_handoff_back_seconds",
        "kahuna_write_replication_seconds",
        "kahuna_write_apply_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{name}");
        let count = sample(&text, &format!("{name}_count{{core=\"0\"}}"))
            .unwrap_or_else(|| panic!("{name}_count missing:\n{text}"));
        assert!(count >= 1.0, "{name} counted nothing:\n{text}");
    }
    // Every put was proposed on this (only) core and went through every stage.
    let queued = sample(&text, "kahuna_write_queue_seconds_count{core=\"0\"}").unwrap();
    assert!(queued >= 50.0, "{queued}");
    assert_eq!(
        sample(
            &text,
            "kahuna_requests_total{core=\"0\",op=\"put\",code=\"Ok\"}"
        ),
        Some(50.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kahuna_request_seconds_count{core=\"0\",op=\"get\"}"),
        Some(1.0),
        "{text}"
    );
    // Every write is split into the engine's part and the hand-off: one sample of each.
    let writes = sample(&text, "kahuna_storage_write_seconds_count{core=\"0\"}");
    for part in ["engine", "handoff", "handoff_forward", "handoff_back"] {
        let name = format!("kahuna_storage_{part}_seconds_count{{core=\"0\"}}");
        assert_eq!(sample(&text, &name), writes, "{name}:\n{text}");
    }
    // The parts are no longer than the whole (sums in seconds; rounding aside).
    let sum = |name: &str| sample(&text, &format!("{name}_sum{{core=\"0\"}}")).unwrap();
    let whole = sum("kahuna_storage_write_seconds");
    let parts = sum("kahuna_storage_engine_seconds") + sum("kahuna_storage_handoff_seconds");
    assert!(
        (parts - whole).abs() <= 1e-3 + whole * 0.01,
        "{parts} vs {whole}"
    );
    // The ways to the pool thread and back are parts of the hand-off.
    let forward = sum("kahuna_storage_handoff_forward_seconds");
    let back = sum("kahuna_storage_handoff_back_seconds");
    let handoff = sum("kahuna_storage_handoff_seconds");
    assert!(
        forward + back <= handoff + 1e-3,
        "{forward} + {back} vs {handoff}"
    );
}

/// In a 3-node cluster of one partition the followers' storage threads write their
/// acknowledgements on the durable-answer lanes themselves: the lane counters grow with the
/// writes (were lanes never opened, or never used by the write path, every answer would still
/// go through the reactor and the writes would succeed: only the counters tell). And the
/// reactor does not send those answers again on the main connection: a follower's main
/// connection carries a small fraction of what its lane does (were the lane's answers also
/// sent there, it would carry at least as many).
#[test]
fn followers_acknowledge_on_the_durable_lane_only() {
    let dir = tempfile::tempdir().unwrap();
    let peer = |n: u64| format!("127.0.0.1:{}", 23110 + n);
    let client = |n: u64| format!("127.0.0.1:{}", 22110 + n);
    let metrics = |n: u64| format!("127.0.0.1:{}", 22120 + n);
    let list = |addr: &dyn Fn(u64) -> String, skip: Option<u64>| {
        (1..=3)
            .filter(|&n| Some(n) != skip)
            .map(|n| format!("{n}={}", addr(n)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let _nodes: Vec<Node> = (1..=3)
        .map(|n| {
            Node(
                Command::new(env!("CARGO_BIN_EXE_kahuna"))
                    .args(["serve", "--id", &n.to_string(), "--partitions", "1"])
                    .args(["--client-addr", &client(n), "--peer-addr", &peer(n)])
                    .args(["--peers", &list(&peer, Some(n))])
                    .args(["--client-addrs", &list(&client, None)])
                    .args(["--metrics-addr", &metrics(n), "--pin", "none", "--data-dir"])
                    .arg(dir.path().join(format!("node-{n}")))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start kahuna serve"),
            )
        })
        .collect();
    let kv = BlockingClient::new(
        ClientConfig::new((1..=3).map(client)).deadline(Duration::from_secs(30)),
    );
    // (messages on the main connections, messages on lanes, lane frames) of node `n`.
    let counters = |n: u64| -> (f64, f64, f64) {
        let text = scrape(&metrics(n)).unwrap_or_default();
        let get = |field: &str| {
            sample(&text, &format!("kahuna_peer_{field}_total{{core=\"0\"}}")).unwrap_or(0.0)
        };
        let lane = get("lane_messages_sent");
        (get("messages_sent") - lane, lane, get("lane_frames_sent"))
    };
    // Nodes that have sent frames on a lane: the group's two followers, once both lanes are
    // up. (Waiting for a total over the nodes let the test start while one follower's lane
    // was still connecting and that follower rightly answered on its main connection.)
    let lane_users = || (1..=3).filter(|&n| counters(n).2 >= 5.0).count();
    // Lanes open once the main connections are up; write until the followers use them.
    let start = Instant::now();
    let mut written = 0;
    while lane_users() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no acknowledgement went on a durable lane after {written} writes"
        );
        for _ in 0..20 {
            kv.put(format!("lane-{written}"), "value")
                .expect("write succeeds");
            written += 1;
        }
    }
    let before: Vec<_> = (1..=3).map(counters).collect();
    for i in 0..300 {
        kv.put(format!("after-{i}"), "value")
            .expect("write succeeds");
    }
    // Counters are published every tick (10 ms).
    std::thread::sleep(Duration::from_millis(100));
    let after: Vec<_> = (1..=3).map(counters).collect();
    let deltas: Vec<(f64, f64)> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0, a.1 - b.1))
        .collect();
    eprintln!("(main, lane) messages per node over 300 writes: {deltas:?}");
    // The two followers of the one group acknowledge (nearly) every append on their lanes.
    let followers: Vec<_> = deltas.iter().filter(|(_, lane)| *lane >= 150.0).collect();
    assert_eq!(followers.len(), 2, "{deltas:?}");
    for (main, lane) in followers {
        assert!(main * 4.0 < *lane, "{deltas:?}");
    }
}

/// A core keeps its groups' kv state (revision caches, session tables) through a pause in
/// writes shorter than `--unload-after-idle`, though its write buffers are released after 5 s
/// of it, and unloads that state once the pause is longer. (Unloading with the write buffers
/// cost the next burst after every few seconds' pause its caches: see
/// `server::core::unload_idle_groups`.) One node, ports 22130 (client), 22131 (metrics) and
/// 23130 (peer).
#[test]
fn an_idle_core_unloads_its_groups_only_after_the_unload_delay() {
    const UNLOAD_AFTER_S: u64 = 11;
    let dir = tempfile::tempdir().unwrap();
    let _node = single_node(
        dir.path(),
        "127.0.0.1:22130",
        "127.0.0.1:23130",
        "127.0.0.1:22131",
        &["--unload-after-idle", &UNLOAD_AFTER_S.to_string()],
    );
    let client = BlockingClient::new(
        ClientConfig::new(["127.0.0.1:22130"]).deadline(Duration::from_secs(30)),
    );
    for i in 0..40 {
        client
            .put(format!("idle-{i}"), "value")
            .expect("write succeeds");
    }
    let written = Instant::now();
    // Published every second.
    let loaded = || {
        sample(
            &scrape("127.0.0.1:22131").unwrap_or_default(),
            "kahuna_kv_groups_loaded{core=\"0\"}",
        )
    };
    let start = Instant::now();
    while loaded().unwrap_or(0.0) < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no group loaded after 40 writes: {:?}",
            loaded()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past the write-buffer release (5 s idle, checked every second) and its publication; the
    // node's own idle time started no earlier than its last write, before `written`.
    std::thread::sleep(Duration::from_millis(7_500).saturating_sub(written.elapsed()));
    let still = loaded();
    assert!(
        still.unwrap_or(0.0) >= 1.0,
        "groups unloaded after {:?} idle, before the {UNLOAD_AFTER_S} s delay: {still:?}",
        written.elapsed()
    );
    while loaded() != Some(0.0) {
        assert!(
            written.elapsed() < Duration::from_secs(UNLOAD_AFTER_S + 15),
            "groups still loaded after {:?} idle: {:?}",
            written.elapsed(),
            loaded()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
