//! The `kahuna` binary: `serve` (one node), `playground` (a local 3-node cluster), and the
//! client commands. Exit codes of client commands: 0 success, 1 a definite negative answer
//! (not found, revision mismatch), 2 anything else (the outcome may be unknown).

use std::process::ExitCode;

use kahuna::server::config::NodeConfig;
use kahuna::server::playground::{self, PlaygroundConfig};

const USAGE: &str = "usage: kahuna <command> [flags]

commands:
  serve       run one node (no flags: a single-node store in ./kahuna-data/node-1)
              [--id N] [--data-dir DIR] [--client-addr HOST:PORT] [--peer-addr HOST:PORT]
              [--peers ID=HOST:PORT,...] [--client-addrs ID=HOST:PORT,...] [--partitions P]
              [--cores C] [--storage rocksdb|sqlite] [--pin auto|none|CPU,...] [--cluster-id N]
              [--metrics-addr HOST:PORT]  (Prometheus text at http://HOST:PORT/metrics)
              [--tick-ms 10] [--compact-after 10000] [--compact-held 512]
              [--wal-preallocate-mb 48]
              [--unload-after-idle 60]  (seconds without writes before caches are dropped)
  playground  run a local cluster on loopback and print its endpoints
              [--nodes 3] [--data-dir DIR] [--base-port PORT] [--cores C] [--partitions P]
  partition-of KEY PARTITIONS   the partition a key belongs to (stable hash)
  bench       benchmark a cluster (kahuna bench --help)
  version
client commands:
";

/// Rust's allocations go to mimalloc (RocksDB's stay on glibc); why, and how an idle node gives
/// memory back: `kahuna::server::allocator`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if let Err(message) = cpu_supported() {
        eprintln!("kahuna: {message}");
        return ExitCode::from(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("{USAGE}{}", kahuna::cli::USAGE);
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    match command.as_str() {
        "serve" => serve(rest),
        "playground" => match PlaygroundConfig::from_args(rest)
            .map_err(|e| e.to_string())
            .and_then(playground::run)
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("kahuna playground: {error}");
                ExitCode::from(2)
            }
        },
        client if kahuna::cli::COMMANDS.contains(&client) => kahuna::cli::run(client, rest),
        "bench" => ExitCode::from(kahuna::bench::main(rest)),
        "partition-of" => match rest {
            [key, partitions] => match partitions.parse::<u64>() {
                Ok(partitions) if partitions > 0 => {
                    println!(
                        "{}",
                        kahuna::server::placement::partition_of(key.as_bytes(), partitions)
                    );
                    ExitCode::SUCCESS
                }
                _ => fail("partition-of KEY PARTITIONS: PARTITIONS must be a positive number"),
            },
            _ => fail("usage: kahuna partition-of KEY PARTITIONS"),
        },
        "version" | "--version" | "-V" => {
            println!("kahuna {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}{}", kahuna::cli::USAGE);
            ExitCode::SUCCESS
        }
        other => {
            eprintln!(
                "kahuna: unknown command '{other}'\n{USAGE}{}",
                kahuna::cli::USAGE
            );
            ExitCode::from(2)
        }
    }
}

fn serve(args: &[String]) -> ExitCode {
    let config = match NodeConfig::from_args(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("kahuna serve: {error}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "kahuna serve: node {} cluster {} clients {} peers {} data {} ({} partitions, {} cores, {}; {})",
        config.id,
        config.cluster_id,
        config.client_addr,
        config.peer_addr,
        config.data_dir.display(),
        config.partitions,
        config.cores,
        config.storage.name(),
        kahuna::server::node::describe_placement(&config)
    );
    match kahuna::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kahuna serve: {error}");
            ExitCode::from(2)
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("kahuna: {message}");
    ExitCode::from(2)
}

/// The build turns on SSE 4.2 and CLMUL (`.cargo/config.toml`: RocksDB computes its CRC32C in
/// hardware only with both). On a CPU without them the first use would end the process with
/// SIGILL and no word of why; this says it instead. (A build with its own `RUSTFLAGS` may leave
/// them off, and then there is nothing to check.)
fn cpu_supported() -> Result<(), String> {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "sse4.2",
        target_feature = "pclmulqdq"
    ))]
    if !std::arch::is_x86_feature_detected!("sse4.2")
        || !std::arch::is_x86_feature_detected!("pclmulqdq")
    {
        return Err(
            "this build needs a CPU with SSE 4.2 and CLMUL (x86_64 servers since \
             2011); rebuild with RUSTFLAGS=\"\" for an older one"
                .to_string(),
        );
    }
    Ok(())
}
