//! Randomized deterministic simulation of the Raft core (see tests/sim/mod.rs).
//!
//! `cargo test` runs a fixed set of seeds. `KAHUNA_SIM_SEEDS=N cargo test --release --test
//! simulation` runs N fresh seeds (different on every run); `KAHUNA_SIM_SEED=S` replays one.
//! The last line of output is `simulation: N seeds, V violations`.

mod sim;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sim::{SimOptions, Simulation};

/// Seeds run by plain `cargo test`: fixed, so CI is repeatable.
const FIXED_SEEDS: std::ops::Range<u64> = 1..25;

/// Seeds that once failed, replayed on every `cargo test` with the fixed ones.
/// 807847849173799338: pre-vote and check-quorum off, a removed node that never learnt of its
/// removal kept deposing leaders through the liveness phase (fixed in the harness: removed
/// servers are shut down there, as operators do).
/// 7121746990914104345: the same with a node removed from one group but still a learner of
/// another (so not shut down), whose removed replica deposed that group's leaders (fixed in
/// the harness: removed replicas are retired there, as a multi-Raft node destroys them).
/// 1046379423867303051: a node the most committed replica saw removed was added back by an
/// uncommitted change of another replica, elected after healing (the harness now counts the
/// latest configuration of every replica that holds all committed entries).
const REGRESSION_SEEDS: [u64; 3] = [
    807_847_849_173_799_338,
    7_121_746_990_914_104_345,
    1_046_379_423_867_303_051,
];

fn run_seed(seed: u64) -> Result<String, String> {
    let options = SimOptions::from_seed(seed);
    let description = options.to_string();
    let mut simulation = Simulation::new(options);
    let violations = simulation.run();
    if violations.is_empty() {
        Ok(format!("ok   {description} stats={:?}", simulation.stats))
    } else {
        let mut report = format!("FAIL {description}\n");
        for violation in violations.iter().take(5) {
            report.push_str(&format!(
                "  at step {}: {}\n",
                violation.step, violation.what
            ));
        }
        report.push_str(&format!(
            "  replay: KAHUNA_SIM_SEED={seed} cargo test --release --test simulation"
        ));
        Err(report)
    }
}

fn main() {
    // Accept and ignore libtest's arguments (cargo passes filters and flags).
    let seeds: Vec<u64> = if let Ok(seed) = std::env::var("KAHUNA_SIM_SEED") {
        vec![seed.parse().expect("KAHUNA_SIM_SEED is a number")]
    } else if let Ok(count) = std::env::var("KAHUNA_SIM_SEEDS") {
        let count: u64 = count.parse().expect("KAHUNA_SIM_SEEDS is a number");
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let base = base ^ (std::process::id() as u64).rotate_left(32);
        (0..count)
            .map(|k| base.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 1)
            .collect()
    } else {
        FIXED_SEEDS.chain(REGRESSION_SEEDS).collect()
    };
    let verbose = std::env::var("KAHUNA_SIM_VERBOSE").is_ok() || seeds.len() == 1;
    let next = AtomicUsize::new(0);
    let violations = AtomicU64::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let position = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(position) else {
                    return;
                };
                match run_seed(seed) {
                    Ok(line) => {
                        if verbose {
                            println!("{line}");
                        }
                    }
                    Err(report) => {
                        violations.fetch_add(1, Ordering::Relaxed);
                        println!("{report}");
                    }
                }
            });
        }
    });
    let violations = violations.load(Ordering::Relaxed);
    println!(
        "simulation: {} seeds, {} violations",
        seeds.len(),
        violations
    );
    if violations > 0 {
        std::process::exit(1);
    }
}
