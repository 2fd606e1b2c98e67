//! One client's puts on a real 3-node cluster (one partition) healthy, then through a one-way
//! cut that stops the waited-for follower's frames from reaching the leader while the leader
//! still reaches it, then healed. The commit then needs the spare follower, which must stop
//! waiting like a spare: the leader's quiet report tells it (it still hears the cut-off
//! follower itself). Without that, every put through the cut waits the spare's hold
//! (`APPLY_HOLD`, 2 ms).
//!
//! By default it runs a few hundred puts per phase and asserts that every put succeeds and the
//! leader keeps its leadership through the cut. As a measurement it prints each phase's
//! latency percentiles (never asserted: timing is the benchmarks' business):
//!
//!   KAHUNA_MEASURE_ONE_WAY_CUT=2000 cargo test --release --test spare_follower_cut -- --nocapture
//!
//! (the number is puts per phase).

mod support;

use std::time::{Duration, Instant};

use kahuna::client::{BlockingClient, ClientConfig};
use kahuna::raft::ConfState;
use support::cluster::wait_until;
use support::proxied_cluster::{ClusterOptions, ProxiedCluster};
use support::proxy::LinkMode;

/// The only partition's Raft group (`server::placement::group_of(0)`).
const GROUP: u64 = 1;

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

#[test]
fn one_client_through_a_one_way_cut_from_the_waited_for_follower() {
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
    println!("leader {leader}, waited-for follower {waited}");
    let client = BlockingClient::new(
        ClientConfig::new(cluster.endpoints()).deadline(Duration::from_secs(10)),
    );
    puts(&client, "warm-up", count / 4 + 1);
    puts(&client, "healthy", count);
    cluster.set_link(waited, leader, LinkMode::Cut);
    // Past the leader's liveness window (a few ticks) before measuring.
    std::thread::sleep(Duration::from_millis(300));
    puts(&client, "cut waited->leader", count);
    assert_eq!(
        cluster.partitions_led(leader).map(|led| led.contains(&0)),
        Some(true),
        "the leader kept its leadership through the one-way cut"
    );
    cluster.heal_all();
    std::thread::sleep(Duration::from_millis(300));
    puts(&client, "healed", count);
}
