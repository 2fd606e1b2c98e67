//! The fault-injecting link proxy on its own, in process: it passes bytes both ways, a cut
//! closes open connections and black-holes new ones until the link heals, and a delay holds
//! bytes back by at least the delay. Then on real nodes: a node whose links are all cut loses
//! the leadership of its partitions to the others. Ports 21990-21999.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::cluster::wait_until;
use support::proxied_cluster::{ClusterOptions, ProxiedCluster};
use support::proxy::{LinkMode, LinkProxy};

/// An echo server on `addr` (one thread per connection).
fn echo_server(addr: &str) {
    let listener = TcpListener::bind(addr).expect("bind echo");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = [0u8; 4096];
                while let Ok(read) = stream.read(&mut buffer) {
                    if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    stream
}

/// Sends `message` and reads the echo; `None` if nothing (or not all of it) came back.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Option<Vec<u8>> {
    stream.write_all(message).ok()?;
    let mut answer = vec![0u8; message.len()];
    stream.read_exact(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn the_proxy_passes_cuts_heals_and_delays() {
    echo_server("127.0.0.1:21991");
    let proxy = LinkProxy::start(
        vec!["127.0.0.1:21990".into()],
        vec!["127.0.0.1:21991".into()],
    )
    .expect("proxy");
    let mut open = connect("127.0.0.1:21990");
    assert_eq!(
        round_trip(&mut open, b"hello").as_deref(),
        Some(&b"hello"[..])
    );

    proxy.set_mode(LinkMode::Cut);
    assert_eq!(
        round_trip(&mut open, b"lost"),
        None,
        "a cut closes open connections"
    );
    let mut during_cut = connect("127.0.0.1:21990");
    assert_eq!(
        round_trip(&mut during_cut, b"void"),
        None,
        "new connections are black holes"
    );

    proxy.set_mode(LinkMode::Pass);
    let mut buffer = [0u8; 8];
    during_cut
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(
        matches!(during_cut.read(&mut buffer), Ok(0) | Err(_)),
        "healing closes the black-holed connection so its dialer reconnects"
    );
    let mut healed = connect("127.0.0.1:21990");
    assert_eq!(
        round_trip(&mut healed, b"again").as_deref(),
        Some(&b"again"[..])
    );

    let delay = Duration::from_millis(200);
    proxy.set_mode(LinkMode::Delay(delay));
    healed
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sent = Instant::now();
    assert_eq!(
        round_trip(&mut healed, b"slow").as_deref(),
        Some(&b"slow"[..])
    );
    assert!(sent.elapsed() >= delay, "bytes are held back by the delay");
    assert!(proxy.connections_accepted() >= 3);
}

#[test]
fn a_node_with_every_link_cut_loses_its_leaderships() {
    let partitions = 4;
    let cluster = ProxiedCluster::start(ClusterOptions {
        slot: 9,
        partitions,
        cores: 1,
        env: Vec::new(),
        extra_args: Vec::new(),
    });
    wait_until(
        "every partition has a leader",
        Duration::from_secs(60),
        || cluster.all_partitions_led(),
    );
    let (leader, led) = (1..=3)
        .filter_map(|n| cluster.partitions_led(n).map(|led| (n, led)))
        .max_by_key(|(_, led)| led.len())
        .expect("a node answers");
    assert!(!led.is_empty());
    cluster.isolate(leader);
    // The two others elect leaders for the isolated node's partitions; it steps down
    // (check-quorum) and leads nothing.
    wait_until(
        "the isolated node's partitions move to the others",
        Duration::from_secs(30),
        || {
            let others: std::collections::BTreeSet<u64> = (1..=3)
                .filter(|&n| n != leader)
                .flat_map(|n| cluster.partitions_led(n).unwrap_or_default())
                .collect();
            led.iter().all(|p| others.contains(p))
                && cluster.partitions_led(leader).is_some_and(|l| l.is_empty())
        },
    );
    cluster.heal_links();
    wait_until(
        "healed: every partition led",
        Duration::from_secs(60),
        || cluster.all_partitions_led(),
    );
}
