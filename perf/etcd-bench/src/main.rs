//! `kahuna-etcd-bench`: `kahuna bench --target etcd` without building kahuna's storage
//! engine. Same flags, same output; the harness modules are kahuna's own files.

#![allow(dead_code)]

// At the crate root, as siblings: the files refer to each other as `super::NAME`.
#[path = "../../../src/json.rs"]
mod json;
#[path = "../../../src/bench/args.rs"]
mod args;
#[path = "../../../src/bench/driver.rs"]
mod driver;
#[path = "../../../src/bench/executor.rs"]
mod executor;
#[path = "../../../src/bench/etcd_driver.rs"]
mod etcd_driver;
#[path = "../../../src/bench/harness.rs"]
mod harness;
#[path = "../../../src/bench/report.rs"]
mod report;
#[path = "../../../src/bench/runner.rs"]
mod runner;
#[path = "../../../src/bench/workload.rs"]
mod workload;

use args::{BenchArgs, Target};

/// As in the `kahuna` binary: the harness runs on the same allocator on both sides.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args = match BenchArgs::parse(&raw) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.target != Target::Etcd {
        eprintln!("kahuna-etcd-bench drives etcd only (--target etcd); use kahuna bench for kahuna");
        return std::process::ExitCode::from(2);
    }
    let driver = match etcd_driver::EtcdDriver::connect(&args.endpoints, args.connections) {
        Ok(driver) => driver,
        Err(error) => {
            eprintln!("kahuna-etcd-bench: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    std::process::ExitCode::from(harness::run(&args, &driver))
}
