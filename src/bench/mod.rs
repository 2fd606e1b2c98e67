//! `kahuna bench`: the benchmark harness. One workload generator ([`workload`]) drives any
//! system through a [`driver::Driver`] (kahuna always; etcd with the `etcd` cargo feature),
//! closed or open loop ([`runner`]), and reports a live line per second, a key=value summary
//! line and optionally JSON ([`report`]). Never touches a node's internals: it is a client.

pub mod args;
pub mod driver;
#[cfg(feature = "etcd")]
pub mod etcd_driver;
pub mod executor;
pub mod harness;
pub mod kahuna_driver;
pub mod report;
pub mod runner;
pub mod workload;

use args::{BenchArgs, Target};
use driver::Driver;

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
    harness::run(&args, driver.as_ref())
}
