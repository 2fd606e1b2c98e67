//! The `kahuna` binary: `serve` (one node), `playground` (a local 3-node cluster), and the
//! client commands. Exit codes of client commands: 0 success, 1 a definite negative answer
//! (not found, revision mismatch), 2 anything else (the outcome may be unknown).

use std::process::ExitCode;

use bytes::Bytes;
use kahuna::client::Client;
use kahuna::proto::client::{ErrorCode, Op, Reply, Response};
use kahuna::server::config::NodeConfig;
use kahuna::server::playground::{self, PlaygroundConfig};

const USAGE: &str = "usage: kahuna <command> [flags]

commands:
  serve       run one node (no flags: a single-node store in ./kahuna-data/node-1)
              [--id N] [--data-dir DIR] [--client-addr HOST:PORT] [--peer-addr HOST:PORT]
              [--peers ID=HOST:PORT,...] [--client-addrs ID=HOST:PORT,...] [--partitions P]
              [--cores C] [--storage rocksdb|sqlite] [--pin auto|none|CPU,...] [--cluster-id N]
              [--metrics-addr HOST:PORT]  (Prometheus text at http://HOST:PORT/metrics)
  playground  run a local cluster on loopback and print its endpoints
              [--nodes 3] [--data-dir DIR] [--base-port PORT] [--cores C] [--partitions P]
  put KEY VALUE | put KEY --value-file FILE|-
  get KEY     print the value (exit 1 when absent)
  del KEY
  status      the answering node's partitions, roles and indexes
  partition-of KEY PARTITIONS   the partition a key belongs to (stable hash)
  bench       benchmark a cluster (kahuna bench --help)
  version
client commands take --endpoints HOST:PORT,... (default: the playground's 127.0.0.1:7400-7402)";

const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7400,127.0.0.1:7401,127.0.0.1:7402";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("{USAGE}");
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
        "put" | "get" | "del" | "status" => client_command(command, rest),
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
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("kahuna: unknown command '{other}'\n{USAGE}");
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

fn client_command(command: &str, args: &[String]) -> ExitCode {
    let mut endpoints = DEFAULT_ENDPOINTS.to_string();
    let mut positional = Vec::new();
    let mut value_file = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--endpoints" => match iter.next() {
                Some(value) => endpoints = value.clone(),
                None => return fail("--endpoints needs a value"),
            },
            "--value-file" => match iter.next() {
                Some(value) => value_file = Some(value.clone()),
                None => return fail("--value-file needs a value"),
            },
            _ => positional.push(arg.clone()),
        }
    }
    let mut client = Client::new(endpoints.split(',').map(String::from).collect());
    let op = match (command, positional.as_slice()) {
        ("put", [key, value]) if value_file.is_none() => Op::Put {
            key: Bytes::from(key.clone().into_bytes()),
            value: Bytes::from(value.clone().into_bytes()),
        },
        ("put", [key]) => {
            let Some(file) = value_file else {
                return fail("put needs a VALUE or --value-file");
            };
            let value = if file == "-" {
                let mut buffer = Vec::new();
                if let Err(error) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buffer) {
                    return fail(&format!("reading standard input: {error}"));
                }
                buffer
            } else {
                match std::fs::read(&file) {
                    Ok(bytes) => bytes,
                    Err(error) => return fail(&format!("reading {file}: {error}")),
                }
            };
            Op::Put {
                key: Bytes::from(key.clone().into_bytes()),
                value: Bytes::from(value),
            }
        }
        ("get", [key]) => Op::Get {
            key: Bytes::from(key.clone().into_bytes()),
            stale_ok: false,
        },
        ("del", [key]) => Op::Delete {
            key: Bytes::from(key.clone().into_bytes()),
        },
        ("status", []) => Op::Status,
        _ => return fail(&format!("wrong arguments for {command}\n{USAGE}")),
    };
    let response = match client.call(op) {
        Ok(response) => response,
        Err(error) => return fail(&error.to_string()),
    };
    print_response(command, response)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("kahuna: {message}");
    ExitCode::from(2)
}

fn print_response(command: &str, response: Response) -> ExitCode {
    use std::io::Write;
    match response.error {
        ErrorCode::Ok => {}
        ErrorCode::NotFound => {
            eprintln!("not found");
            return ExitCode::from(1);
        }
        ErrorCode::RevisionMismatch => {
            eprintln!("revision mismatch: {}", response.message);
            return ExitCode::from(1);
        }
        other => return fail(&format!("{other:?}: {}", response.message)),
    }
    match response.reply {
        Some(Reply::Value { value, .. }) => {
            let _ = std::io::stdout().write_all(&value);
        }
        Some(Reply::Revision { revision }) => println!("OK revision={revision}"),
        Some(Reply::Status(status)) => {
            // A closed pipe (`| head`) ends the listing quietly.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "node {} cluster {} partitions {}",
                status.node_id, status.cluster_id, status.partition_count
            );
            for p in status.partitions {
                let line = writeln!(
                    out,
                    "partition {:>5} {:?} leader={} term={} commit={} applied={}",
                    p.partition, p.role, p.leader, p.term, p.commit_index, p.applied_index
                );
                if line.is_err() {
                    break;
                }
            }
        }
        Some(Reply::Scan { .. }) | None => {
            if command != "get" {
                println!("OK");
            }
        }
    }
    ExitCode::SUCCESS
}
