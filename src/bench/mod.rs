//! `kahuna bench`: the benchmark harness. One workload generator ([`workload`]) drives any
//! system through a [`driver::Driver`] (kahuna always; etcd with the `etcd` cargo feature),
//! closed or open loop ([`runner`]), and reports a live line per second, a key=value summary
//! line and optionally JSON ([`report`]). Never touches a node's internals: it is a client.

pub mod args;
pub mod driver;
#[cfg(feature = "etcd")]
pub mod etcd_driver;
pub mod kahuna_driver;
pub mod report;
pub mod runner;
pub mod workload;

use args::{BenchArgs, Target};
use driver::Driver;
use runner::RunPlan;
use workload::{Distribution, Workload, Zipfian, ZIPFIAN_THETA};

pub const USAGE: &str = "usage: kahuna bench --endpoints HOST:PORT,... [--target kahuna|etcd]
  [--workload put|get|mixed|cas] [--clients N] [--connections C] [--duration 30s]
  [--warmup 5s] [--value-size B] [--keys K] [--read-pct P] [--rate OPS_PER_S]
  [--distribution uniform|zipfian] [--seed S] [--json]
--connections: kahuna, pipelined connections per node shared by all clients; etcd, gRPC
channels (each to every endpoint) shared by all clients. Closed loop unless --rate (open loop, latencies from intended start times); progress on
stderr every second; the last stdout line is
  ops=N ops_per_s=X p50_us=X p99_us=X p999_us=X max_us=X errors=N
(with --json a JSON document with every percentile follows it)";

fn driver_for(args: &BenchArgs) -> Result<Box<dyn Driver>, String> {
    match args.target {
        Target::Kahuna => Ok(Box::new(kahuna_driver::KahunaDriver::new(
            args.endpoints.clone(),
            args.clients,
            args.connections,
        ))),
        #[cfg(feature = "etcd")]
        Target::Etcd => etcd_driver::EtcdDriver::connect(&args.endpoints, args.connections)
            .map(|d| Box::new(d) as Box<dyn Driver>)
            .map_err(|e| e.to_string()),
        #[cfg(not(feature = "etcd"))]
        Target::Etcd => Err("this kahuna was built without the etcd driver; \
             rebuild with `cargo build --release --features etcd` (needs protoc)"
            .into()),
    }
}

/// Runs `kahuna bench`; returns the process exit code (0 ran, 2 could not run).
pub fn main(raw_args: &[String]) -> u8 {
    if raw_args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return 0;
    }
    let args = match BenchArgs::parse(raw_args) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}\n{USAGE}");
            return 2;
        }
    };
    let driver = match driver_for(&args) {
        Ok(driver) => driver,
        Err(error) => {
            eprintln!("kahuna bench: {error}");
            return 2;
        }
    };
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
    let result = runner::run(&plan, sessions);
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
