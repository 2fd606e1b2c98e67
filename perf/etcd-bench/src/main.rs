//! `kahuna-etcd-bench`: `kahuna bench --target etcd` without building kahuna's storage
//! engine. Same flags, same output; the harness modules are kahuna's own files.

#![allow(dead_code)]

mod bench {
    #[path = "../../../../src/bench/args.rs"]
    pub mod args;
    #[path = "../../../../src/bench/driver.rs"]
    pub mod driver;
    #[path = "../../../../src/bench/etcd_driver.rs"]
    pub mod etcd_driver;
    #[path = "../../../../src/bench/harness.rs"]
    pub mod harness;
    #[path = "../../../../src/bench/report.rs"]
    pub mod report;
    #[path = "../../../../src/bench/runner.rs"]
    pub mod runner;
    #[path = "../../../../src/bench/workload.rs"]
    pub mod workload;
}

use bench::args::{BenchArgs, Target};

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
    let driver = match bench::etcd_driver::EtcdDriver::connect(&args.endpoints, args.connections) {
        Ok(driver) => driver,
        Err(error) => {
            eprintln!("kahuna-etcd-bench: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    std::process::ExitCode::from(bench::harness::run(&args, &driver))
}
