//! One client's puts on a real 3-node cluster (one partition): healthy, then through each of
//! the two one-way cuts between the leader and the follower its commits wait for, healed in
//! between. Through such a cut the commit needs the spare follower, which must stop waiting
//! like a spare although it still hears both: the leader's quiet report (it no longer hears
//! the follower) or the follower's (it no longer hears the leader) tells it. Without that,
//! every put through the cut waits the spare's hold (`APPLY_HOLD`, 2 ms).
//!
//! It asserts what the spare node counts (`kahuna_spare_batches_held_total`): puts' entries
//! held while healthy, next to none through either cut; that every put succeeds; and
//! that the leader keeps its leadership. As a measurement it prints each phase's latency
//! percentiles (never asserted: timing is the benchmarks' business):
//!
//!   KAHUNA_MEASURE_ONE_WAY_CUT=2000 cargo test --release --test spare_follower_cut -- --nocapture
//!
//! (the number is puts per phase; 200 by default).

mod support;

use std::time::{Duration, Instant};

use kahuna::client::{BlockingClient, ClientConfig};
use kahuna::raft::ConfState;
use support::cluster::wait_until;
use support::metrics::{sample, scrape};
use support::proxied_cluster::{ClusterOptions, ProxiedCluster};
use support::proxy::LinkMode;

/// The only partition's Raft group (`server::placement::group_of(0)`).
const GROUP: u64 = 1;

/// Runs `count` puts; prints the phase's latency percentiles.
fn puts(client: &BlockingClient, phase: &str, count: usize) {
    let value = vec![7_u8; 256];
    let mut micros: Vec<u128> = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("key-{}", i % 1000);
        let started = Instant::now();
        client
            .put(key.as_bytes(), &value)
            .unwrap_or_else(|error| panic!("{phase}: put {i}: {error}"));
        micros.push(started.elapsed().as_micros());
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)];
    println!(
        "{phase}: {count} puts, p50 {} us, p90 {} us, p99 {} us",
        at(0.5),
        at(0.9),
        at(0.99)
    );
}

/// The spare batches `node` has held so far (its one core).
fn spare_batches_held(cluster: &ProxiedCluster, node: u64) -> f64 {
    let text = scrape(&cluster.metrics_addr(node)).expect("the node serves its metrics");
    sample(&text, "kahuna_spare_batches_held_total{core=\"0\"}").expect("the counter is exposed")
}

/// Runs a phase of `count` puts; returns how many batches the spare held meanwhile.
fn phase(
    cluster: &ProxiedCluster,
    client: &BlockingClient,
    spare: u64,
    name: &str,
    count: usize,
) -> f64 {
    let before = spare_batches_held(cluster, spare);
    puts(client, name, count);
    let held = spare_batches_held(cluster, spare) - before;
    println!("{name}: the spare held {held} batches");
    held
}

#[test]
fn one_client_through_one_way_cuts_between_the_leader_and_the_waited_for_follower() {
    let count = std::env::var("KAHUNA_MEASURE_ONE_WAY_CUT")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(200);
    let mut cluster = ProxiedCluster::start(ClusterOptions {
        slot: 7,
        partitions: 1,
        cores: 1,
        env: Vec::new(),
        extra_args: Vec::new(),
    });
    wait_until(
        "the partition has a leader",
        Duration::from_secs(60),
        || cluster.all_partitions_led(),
    );
    let leader = (1..=3)
        .find(|&n| {
            cluster
                .partitions_led(n)
                .is_some_and(|led| led.contains(&0))
        })
        .expect("a leader");
    let conf = ConfState::new(vec![1, 2, 3], vec![]);
    let waited = (1..=3)
        .find(|&n| n != leader && conf.commit_waits_for(GROUP, leader, n))
        .expect("a waited-for follower");
    let spare = 6 - leader - waited;
    println!("leader {leader}, waited-for follower {waited}, spare {spare}");
    let client = BlockingClient::new(
        ClientConfig::new(cluster.endpoints()).deadline(Duration::from_secs(10)),
    );
    puts(&client, "warm-up", count / 4 + 1);
    let healthy = phase(&cluster, &client, spare, "healthy", count);
    // Healthy, the spare holds nearly every put's entries (1,978-1,988 of 2,000 measured); the
    // bound is loose for a loaded machine, where a late frame makes a spare write at once. It
    // keeps the assertions below from passing on a counter that never counts.
    assert!(
        healthy >= (count / 10) as f64,
        "healthy, the spare holds puts' entries: {healthy} of {count}"
    );
    for (from, to) in [(waited, leader), (leader, waited)] {
        cluster.set_link(from, to, LinkMode::Cut);
        // Past the liveness window (3 ticks) and a report's way (a heartbeat period).
        std::thread::sleep(Duration::from_millis(300));
        let name = format!("cut {from}->{to}");
        let held = phase(&cluster, &client, spare, &name, count);
        assert!(
            held <= (count / 10) as f64,
            "{name}: the commits need the spare, which held {held} of {count} batches"
        );
        assert_eq!(
            cluster.partitions_led(leader).map(|led| led.contains(&0)),
            Some(true),
            "the leader kept its leadership through the one-way cut"
        );
        cluster.heal_all();
        std::thread::sleep(Duration::from_millis(300));
        phase(&cluster, &client, spare, "healed", count);
    }
}
