//! One benchmark run over any driver: builds a workload per client, runs them, prints the
//! report. Shared verbatim by `kahuna bench` and the standalone etcd harness
//! (perf/etcd-bench), so both systems are measured by the same code. Uses only its sibling
//! modules args, driver, report, runner and workload.

use super::args::BenchArgs;
use super::driver::Driver;
use super::report;
use super::runner::{self, RunPlan};
use super::workload::{self, Distribution, Workload, Zipfian, ZIPFIAN_THETA};

/// Runs the benchmark `args` describe through `driver`; returns the exit code (0 ran, 2 could
/// not start).
pub fn run(args: &BenchArgs, driver: &dyn Driver) -> u8 {
    let zipfian = (args.distribution == Distribution::Zipfian)
        .then(|| Zipfian::new(args.keys, ZIPFIAN_THETA));
    let mut sessions = Vec::with_capacity(args.clients);
    for client in 0..args.clients {
        let session = match driver.session(client) {
            Ok(session) => session,
            Err(error) => {
                eprintln!("kahuna bench: client {client}: {error}");
                return 2;
            }
        };
        let workload = Workload::new(
            args.workload,
            args.read_pct,
            args.keys,
            zipfian.clone(),
            args.value_size,
            args.seed.wrapping_add(client as u64),
        );
        sessions.push((session, workload));
    }
    let mode = match args.rate {
        Some(rate) => format!("open loop at {rate} ops/s (latency from intended start)"),
        None => "closed loop".to_string(),
    };
    eprintln!(
        "# kahuna bench: {}; workload {} ({} keys, {}, {}-byte values{}); {}; warmup {:?}, measured {:?}; client on {} cpus",
        driver.describe(),
        args.workload.name(),
        args.keys,
        args.distribution.name(),
        args.value_size,
        if args.workload == workload::WorkloadKind::Mixed {
            format!(", {}% reads", args.read_pct)
        } else {
            String::new()
        },
        mode,
        args.warmup,
        args.duration,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let plan = RunPlan {
        clients: args.clients,
        warmup: args.warmup,
        duration: args.duration,
        rate: args.rate,
        progress: true,
    };
    let result = runner::run(&plan, sessions, driver.round_scope());
    let totals = &result.totals;
    println!(
        "outcomes: not_found={} conflicts={} {}",
        totals.not_found,
        totals.conflicts,
        report::errors_text(&totals.errors)
    );
    println!("{}", report::summary_line(totals, result.measured));
    if args.json {
        let context = [
            ("target", args.target.name().to_string()),
            ("workload", args.workload.name().to_string()),
            ("distribution", args.distribution.name().to_string()),
            ("clients", args.clients.to_string()),
            ("connections", args.connections.to_string()),
            ("value_size", args.value_size.to_string()),
            ("keys", args.keys.to_string()),
            ("mode", mode),
        ];
        println!(
            "{}",
            report::json_document(&context, totals, result.measured)
        );
    }
    0
}
