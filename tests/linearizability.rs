//! Fault injection on real processes, checked for linearizability (issue 7).
//!
//! Each run starts three `kahuna serve` processes whose peer links go through fault-injecting
//! proxies, runs register clients (read / put / compare-and-set on many keys) and set clients
//! (append-only sets) while a seeded nemesis kills, pauses, partitions and slows the nodes,
//! heals, then checks every key's history with `kahuna::lincheck` and every set's final
//! content. A run prints its seed, the faults it injected by kind, the operations checked and
//! the verdict; a failing run keeps its history (and the node logs) under target/tmp/lincheck
//! and prints the path.
//!
//!     cargo test --test linearizability                         # 3 short runs, fresh seeds
//!     KAHUNA_SOAK_SECS=600 cargo test --test linearizability -- --nocapture   # long soak
//!     KAHUNA_LIN_SEED=S cargo test --test linearizability under_faults -- --nocapture
//!
//! A replay runs 15 s unless `KAHUNA_LIN_SECS=N` says otherwise (soak runs are 60 s);
//! `KAHUNA_LIN_VERBOSE=1` prints every fault as it is injected.
//!
//! (A seed replays the fault schedule and the clients' choices; the interleaving of real
//! processes is not reproducible.) `the_checker_catches_stale_reads` runs the same machinery
//! against nodes with the test-only stale-read fault on and requires the checker to reject
//! the history: the proof that a passing run means something.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kahuna::lincheck::RegisterState;
use kahuna::lincheck::{check_partitioned, CheckOptions, Register, Report, Verdict};
use support::kv_client::{Answer, BlockingKv, KvClient};
use support::nemesis::{self, FaultLog, Schedule};
use support::proxied_cluster::{ClusterOptions, ProxiedCluster, NODES};
use support::workload::{
    check_set, decode_set, run_set_client, AddFate, ClientStats, Mix, RegisterClient,
    RegisterOperation, MIXED, READS_ONLY,
};

/// One run at a time: the runs share a 2-core machine with the nodes they test.
static SERIAL: Mutex<()> = Mutex::new(());

const LEADERS_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct RunConfig {
    name: &'static str,
    seed: u64,
    slot: u64,
    duration: Duration,
    cores: usize,
    partitions: u64,
    keys: usize,
    schedule: Schedule,
    /// Register clients with this mix, each starting at another node.
    register_threads: usize,
    mix: Mix,
    /// Read-only register clients pinned to each node (the stale-read control).
    pinned_readers: bool,
    sets: usize,
    set_threads: usize,
    stale_reads_fault: bool,
    /// `--compact-after` and `--compact-held`: small values make leaders cut their logs where
    /// the followers hold them all the time, and followers behind catch up from snapshots under
    /// faults.
    compaction: Option<(usize, usize)>,
}

struct RunOutcome {
    report: Report<String, RegisterState>,
    set_problems: Vec<String>,
    faults: FaultLog,
    kept: Option<PathBuf>,
    failure_excerpt: String,
}

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    kahuna::raft::SeededRng::new(nanos ^ u64::from(std::process::id())).next_u64() % 1_000_000_007
}

fn wait_for_leaders(cluster: &ProxiedCluster, when: &str) {
    let start = Instant::now();
    while start.elapsed() < LEADERS_TIMEOUT {
        if cluster.all_partitions_led() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{when}: not every partition elected a leader within {LEADERS_TIMEOUT:?}; node logs in {}",
        cluster.dir().display()
    );
}

fn run(config: &RunConfig) -> RunOutcome {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let env = if config.stale_reads_fault {
        vec![("KAHUNA_TEST_FAULT".to_string(), "stale-reads".to_string())]
    } else {
        Vec::new()
    };
    let cluster = ProxiedCluster::start(ClusterOptions {
        slot: config.slot,
        partitions: config.partitions,
        cores: config.cores,
        env,
        extra_args: config
            .compaction
            .map(|(after, held)| {
                vec![
                    "--compact-after".to_string(),
                    after.to_string(),
                    "--compact-held".to_string(),
                    held.to_string(),
                ]
            })
            .unwrap_or_default(),
    });
    wait_for_leaders(&cluster, "start");
    let start = Instant::now();
    while cluster.link_connections().values().any(|&n| n == 0) {
        assert!(
            start.elapsed() < LEADERS_TIMEOUT,
            "peer traffic bypasses the proxies: {:?}",
            cluster.link_connections()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let endpoints = cluster.endpoints();
    let keys: Vec<Vec<u8>> = (0..config.keys)
        .map(|i| format!("reg-{}-{i}", config.seed).into_bytes())
        .collect();
    let set_keys: Vec<Vec<u8>> = (0..config.sets)
        .map(|i| format!("set-{}-{i}", config.seed).into_bytes())
        .collect();
    // Clients are made here, one after another: each draws its session id from the clock.
    let mut register_clients: Vec<(Box<dyn KvClient>, Mix)> = Vec::new();
    for thread in 0..config.register_threads {
        let mut rotated = endpoints.clone();
        rotated.rotate_left(thread % endpoints.len());
        register_clients.push((
            Box::new(BlockingKv::new(rotated, CLIENT_DEADLINE)),
            config.mix,
        ));
    }
    if config.pinned_readers {
        for node in 1..=NODES {
            let pinned = vec![cluster.client_addr(node)];
            register_clients.push((
                Box::new(BlockingKv::new(pinned, CLIENT_DEADLINE)),
                READS_ONLY,
            ));
        }
    }
    let set_clients: Vec<BlockingKv> = (0..config.set_threads)
        .map(|thread| {
            let mut rotated = endpoints.clone();
            rotated.rotate_left(thread % endpoints.len());
            BlockingKv::new(rotated, CLIENT_DEADLINE)
        })
        .collect();

    let epoch = Instant::now();
    let until = epoch + config.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let nemesis = nemesis::spawn(
        cluster,
        config.seed,
        config.schedule,
        epoch,
        until,
        stop.clone(),
    );
    let (histories, stats, set_adds) = std::thread::scope(|scope| {
        let registers: Vec<_> = register_clients
            .into_iter()
            .enumerate()
            .map(|(thread, (client, mix))| {
                let (keys, stop) = (&keys, &stop);
                scope.spawn(move || {
                    RegisterClient {
                        client,
                        thread,
                        keys,
                        mix,
                        epoch,
                    }
                    .run(config.seed, until, stop)
                })
            })
            .collect();
        let sets: Vec<_> = set_clients
            .into_iter()
            .enumerate()
            .map(|(thread, mut client)| {
                let (set_keys, stop) = (&set_keys, &stop);
                scope.spawn(move || {
                    run_set_client(&mut client, thread, set_keys, config.seed, until, stop)
                })
            })
            .collect();
        let mut histories: BTreeMap<String, Vec<RegisterOperation>> = BTreeMap::new();
        let mut stats = Vec::new();
        for handle in registers {
            let (history, client_stats) = handle.join().expect("register client");
            for (key_index, operation) in history {
                let key = String::from_utf8_lossy(&keys[key_index]).into_owned();
                histories.entry(key).or_default().push(operation);
            }
            stats.push(client_stats);
        }
        let set_adds: Vec<_> = sets
            .into_iter()
            .flat_map(|h| h.join().expect("set client"))
            .collect();
        (histories, stats, set_adds)
    });
    let (mut cluster, faults) = nemesis.join().expect("nemesis");
    // Healed: every acknowledged add must be in a linearizable read of its set.
    wait_for_leaders(&cluster, "after healing");
    let mut set_problems: Vec<String> = cluster
        .exited()
        .into_iter()
        .map(|(node, status)| format!("node {node} exited by itself: {status}"))
        .collect();
    let mut reader = BlockingKv::new(endpoints.clone(), Duration::from_secs(30));
    for (set, key) in set_keys.iter().enumerate() {
        let adds: Vec<(u64, AddFate)> = set_adds
            .iter()
            .filter(|(s, _, _)| *s == set)
            .map(|(_, e, f)| (*e, *f))
            .collect();
        let elements = match reader.read(key) {
            Answer::Done(Some((value, _))) => decode_set(&value),
            Answer::Done(None) => Some(Vec::new()),
            other => {
                set_problems.push(format!("set {set}: final read failed: {other:?}"));
                continue;
            }
        };
        match elements {
            Some(elements) => set_problems.extend(
                check_set(&elements, &adds)
                    .into_iter()
                    .map(|p| format!("set {set}: {p}")),
            ),
            None => set_problems.push(format!("set {set}: final value is not a list")),
        }
    }
    let report = check_partitioned(&Register, &histories, CheckOptions::default());
    let outcome = summarize(config, &report, &stats, &set_adds, &set_problems, &faults);
    let mut kept = None;
    let mut failure_excerpt = String::new();
    let failed = !report.linearizable() || !set_problems.is_empty();
    if failed {
        failure_excerpt = excerpt(&report, &histories);
        kept = Some(keep(
            config,
            &cluster,
            &outcome,
            &failure_excerpt,
            &faults,
            &histories,
        ));
    }
    println!("{outcome}");
    if let Some(path) = &kept {
        println!("  history kept in {}", path.display());
        print!("{failure_excerpt}");
    }
    RunOutcome {
        report,
        set_problems,
        faults,
        kept,
        failure_excerpt,
    }
}

fn summarize(
    config: &RunConfig,
    report: &Report<String, RegisterState>,
    stats: &[ClientStats],
    set_adds: &[(usize, u64, AddFate)],
    set_problems: &[String],
    faults: &FaultLog,
) -> String {
    let indeterminate: u64 = stats.iter().map(|s| s.indeterminate).sum();
    let failed_reads: u64 = stats.iter().map(|s| s.failed_reads).sum();
    let deletes: u64 = stats.iter().map(|s| s.deletes).sum();
    let scans: u64 = stats.iter().map(|s| s.scans).sum();
    let mut odd: BTreeMap<&str, u64> = BTreeMap::new();
    for s in stats {
        for (why, n) in &s.odd_answers {
            *odd.entry(why).or_default() += n;
        }
    }
    let count = |fate| set_adds.iter().filter(|(_, _, f)| *f == fate).count();
    let violations = report.violations().count();
    let unknown = report.unknown().count();
    let verdict = if violations > 0 || !set_problems.is_empty() {
        format!(
            "NOT LINEARIZABLE ({violations} keys, {} set problems)",
            set_problems.len()
        )
    } else if unknown > 0 {
        format!("UNKNOWN ({unknown} keys over the search budget)")
    } else {
        "linearizable".into()
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "run {}: seed {} ({:?}, {} cores, {} partitions, compaction (after, held) {:?}; replay: KAHUNA_LIN_SEED={} KAHUNA_LIN_SECS={} cargo test --test linearizability)",
        config.name,
        config.seed,
        config.duration,
        config.cores,
        config.partitions,
        config.compaction,
        config.seed,
        config.duration.as_secs()
    );
    let _ = writeln!(text, "  faults: {}", faults.summary());
    let _ = writeln!(
        text,
        "  register operations checked: {} on {} keys ({} indeterminate; {} reads without an answer not recorded; {} deletes; {} scans, each a read of every key)",
        report.operations(),
        report.keys.len(),
        indeterminate,
        failed_reads,
        deletes,
        scans
    );
    if !odd.is_empty() {
        let _ = writeln!(text, "  unknown outcomes other than timeouts: {odd:?}");
    }
    let _ = writeln!(
        text,
        "  set adds: {} acknowledged, {} unknown, {} refused; {} set or node problems",
        count(AddFate::Acknowledged),
        count(AddFate::Maybe),
        count(AddFate::NotAdded),
        set_problems.len()
    );
    for problem in set_problems.iter().take(10) {
        let _ = writeln!(text, "    {problem}");
    }
    let _ = write!(text, "  verdict: {verdict}");
    text
}

fn format_operation(index: usize, operation: &RegisterOperation) -> String {
    let ms = |ns: u64| ns as f64 / 1e6;
    let ret = operation
        .ret
        .map_or("         ?".to_string(), |r| format!("{:10.3}", ms(r)));
    format!(
        "  #{index:<5} [{:10.3} .. {ret}] client {:2} {:?} -> {:?}\n",
        ms(operation.call),
        operation.client,
        operation.input,
        operation.output
    )
}

/// The violating keys: the deepest linearizable prefix's tail and the operations stuck after it.
fn excerpt(
    report: &Report<String, RegisterState>,
    histories: &BTreeMap<String, Vec<RegisterOperation>>,
) -> String {
    let mut text = String::new();
    for key_verdict in report.violations().take(3) {
        let history = &histories[&key_verdict.key];
        let _ = writeln!(
            text,
            "  key {}: {} operations",
            key_verdict.key,
            history.len()
        );
        match &key_verdict.verdict {
            Verdict::NotLinearizable(failure) => {
                let _ = writeln!(
                    text,
                    "   longest linearizable prefix: {} operations, ending in state {:?}; its last ones:",
                    failure.longest_prefix.len(),
                    failure.state
                );
                let tail = failure.longest_prefix.len().saturating_sub(6);
                for &i in &failure.longest_prefix[tail..] {
                    text.push_str(&format_operation(i, &history[i]));
                }
                let _ = writeln!(text, "   none of these can come next:");
                for &i in failure.stuck.iter().take(8) {
                    text.push_str(&format_operation(i, &history[i]));
                }
            }
            other => {
                let _ = writeln!(text, "   {other:?}");
            }
        }
    }
    text
}

/// Writes the whole history, the fault log and the node logs under target/tmp/lincheck.
fn keep(
    config: &RunConfig,
    cluster: &ProxiedCluster,
    summary: &str,
    excerpt: &str,
    faults: &FaultLog,
    histories: &BTreeMap<String, Vec<RegisterOperation>>,
) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("lincheck")
        .join(format!("{}-seed-{}", config.name, config.seed));
    std::fs::create_dir_all(&dir).expect("history directory");
    let mut text = format!("{summary}\n\n{excerpt}\nfaults:\n{}\n", faults.text());
    for (key, history) in histories {
        let _ = writeln!(text, "key {key}:");
        let mut order: Vec<usize> = (0..history.len()).collect();
        order.sort_by_key(|&i| history[i].call);
        for i in order {
            text.push_str(&format_operation(i, &history[i]));
        }
    }
    let path = dir.join("history.txt");
    std::fs::write(&path, text).expect("write history");
    for node in 1..=NODES {
        let _ = std::fs::copy(cluster.log_path(node), dir.join(format!("node-{node}.log")));
    }
    path
}

fn register_config(name: &'static str, seed: u64, slot: u64, duration: Duration) -> RunConfig {
    // The cluster's shape follows from the seed, so a replay gets the same one.
    let mut dice = kahuna::raft::SeededRng::new(seed);
    RunConfig {
        name,
        seed,
        slot,
        duration,
        cores: 1 + (dice.next_u64() % 2) as usize,
        partitions: 8,
        keys: 24,
        schedule: Schedule::Mixed,
        register_threads: 4,
        mix: MIXED,
        pinned_readers: false,
        sets: 4,
        set_threads: 2,
        stale_reads_fault: false,
        compaction: (dice.next_u64() % 2 == 0).then_some((50, 8)),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}='{value}' is not a number")),
    )
}

#[test]
fn register_and_set_histories_under_faults_are_linearizable() {
    let mut runs: Vec<RunConfig> = Vec::new();
    if let Some(seed) = env_u64("KAHUNA_LIN_SEED") {
        let secs = env_u64("KAHUNA_LIN_SECS").unwrap_or(15);
        runs.push(register_config(
            "replay",
            seed,
            0,
            Duration::from_secs(secs),
        ));
    } else if let Some(soak_secs) = env_u64("KAHUNA_SOAK_SECS") {
        // Soak: 60-second runs with fresh seeds until the time is spent.
        let runs_needed = soak_secs.div_ceil(60).max(1);
        for i in 0..runs_needed {
            runs.push(register_config(
                "soak",
                fresh_seed(),
                i % 6,
                Duration::from_secs(60),
            ));
        }
    } else {
        for i in 0..3 {
            runs.push(register_config(
                "short",
                fresh_seed(),
                i,
                Duration::from_secs(15),
            ));
        }
    }
    let mut failures = Vec::new();
    let mut totals = (0usize, BTreeMap::<&str, u64>::new());
    for config in &runs {
        let outcome = run(config);
        totals.0 += outcome.report.operations();
        for (kind, n) in &outcome.faults.counts {
            *totals.1.entry(kind).or_default() += n;
        }
        let unknown = outcome.report.unknown().count();
        if !outcome.report.linearizable() || !outcome.set_problems.is_empty() || unknown > 0 {
            failures.push(format!(
                "seed {} ({}): {} violating keys, {unknown} undecided keys, set problems {:?}; kept in {:?}",
                config.seed,
                config.name,
                outcome.report.violations().count(),
                outcome.set_problems,
                outcome.kept
            ));
        }
    }
    println!(
        "total: {} runs, {} register operations checked, faults {:?}, {} failing runs",
        runs.len(),
        totals.0,
        totals.1,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn stale_read_config(seed: u64, stale_reads_fault: bool) -> RunConfig {
    RunConfig {
        name: if stale_reads_fault {
            "stale-reads"
        } else {
            "stale-reads-control"
        },
        seed,
        slot: 8,
        duration: Duration::from_secs(9),
        cores: 1,
        partitions: 4,
        keys: 6,
        schedule: Schedule::IsolateLeaders,
        register_threads: 2,
        mix: MIXED,
        pinned_readers: true,
        sets: 0,
        set_threads: 0,
        stale_reads_fault,
        compaction: None,
    }
}

/// The control: nodes that answer reads from local state (the test-only stale-read fault),
/// leaders isolated one after another while clients pinned to every node keep reading. The
/// isolated leader keeps serving the values it had while the others elect a new leader and
/// take writes, so its readers see stale values and the checker must say so. The same
/// schedule and clients against correct nodes first must pass: the rejection is the fault's.
#[test]
fn the_checker_catches_stale_reads() {
    let seed = env_u64("KAHUNA_LIN_SEED").unwrap_or_else(fresh_seed);
    let correct = run(&stale_read_config(seed, false));
    assert!(
        correct.report.linearizable() && correct.report.unknown().count() == 0,
        "correct nodes under the control's schedule (seed {seed}): kept in {:?}",
        correct.kept
    );
    let outcome = run(&stale_read_config(seed, true));
    assert!(
        outcome
            .faults
            .counts
            .get("isolate-leader")
            .copied()
            .unwrap_or(0)
            > 0,
        "the schedule isolated a leader"
    );
    assert!(
        outcome.report.violations().count() > 0,
        "the checker missed the stale reads of seed {seed}"
    );
    // The kept failure names a read that saw an overwritten value.
    assert!(outcome.kept.is_some());
    assert!(
        outcome.failure_excerpt.contains("Read"),
        "{}",
        outcome.failure_excerpt
    );
}
