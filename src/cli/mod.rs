//! The client commands of the `kahuna` binary: `put`, `get`, `del`, `cas`, `scan`, `status`.
//! Parses flags, runs the command through [`crate::client::BlockingClient`], prints plain text
//! or JSON (`--json`), and maps every outcome to the exit code contract:
//!
//! * 0: success;
//! * 1: a definite negative answer (not found, revision mismatch);
//! * 2: anything else (bad arguments, refused by a limit, timed out, unreachable); the message
//!   says whether the outcome is unknown.
//!
//! This module owns the command line only; `main.rs` dispatches to [`run`].

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crate::client::{BlockingClient, CasOutcome, ClientConfig, ClientError, PLAYGROUND_ENDPOINTS};
use crate::proto::client::NodeStatus;

/// The client commands [`run`] accepts.
pub const COMMANDS: [&str; 6] = ["put", "get", "del", "cas", "scan", "status"];

pub const USAGE: &str = "\
  put KEY VALUE | put KEY --value-file FILE|-   write (prints the revision)
  get KEY                       print the value alone (exit 1 and `not found` when absent)
  del KEY                       delete (exit 1 when absent)
  cas KEY VALUE --revision R    write only if the key's revision is R (0 = absent; exit 1 if not)
                                (or cas KEY --value-file FILE|- --revision R)
  scan PREFIX [--limit N]       keys starting with PREFIX in key order (linearizable per
                                partition, not an atomic snapshot across partitions)
  status                        the answering node's partitions, roles and indexes
client commands take --endpoints HOST:PORT,... (default: the playground's 127.0.0.1:7400-7402),
--json, --timeout SECONDS (default 10) and --cluster-id N.
exit codes: 0 success, 1 definite negative answer (not found, revision mismatch),
2 anything else (refused, timed out, unreachable: the message says if the outcome is unknown)";

const EXIT_NEGATIVE: u8 = 1;
const EXIT_OTHER: u8 = 2;

/// Parsed flags and positional arguments of one client command.
struct Args {
    endpoints: String,
    json: bool,
    timeout: Duration,
    cluster_id: u64,
    value_file: Option<String>,
    revision: Option<u64>,
    limit: Option<usize>,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        endpoints: PLAYGROUND_ENDPOINTS.to_string(),
        json: false,
        timeout: Duration::from_secs(10),
        cluster_id: 0,
        value_file: None,
        revision: None,
        limit: None,
        positional: Vec::new(),
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |flag: &str| {
            iter.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |flag: &str, text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{flag} must be a non-negative number, not '{text}'"))
        };
        match arg.as_str() {
            "--endpoints" => parsed.endpoints = value("--endpoints")?,
            "--json" => parsed.json = true,
            "--value-file" => parsed.value_file = Some(value("--value-file")?),
            "--revision" => parsed.revision = Some(number("--revision", value("--revision")?)?),
            "--limit" => parsed.limit = Some(number("--limit", value("--limit")?)? as usize),
            "--cluster-id" => {
                parsed.cluster_id = number("--cluster-id", value("--cluster-id")?)?;
            }
            "--timeout" => {
                let text = value("--timeout")?;
                let seconds = text
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--timeout must be positive seconds, not '{text}'"))?;
                parsed.timeout = Duration::from_secs_f64(seconds);
            }
            "--" => parsed.positional.extend(iter.by_ref().cloned()),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}")),
            _ => parsed.positional.push(arg.clone()),
        }
    }
    Ok(parsed)
}

/// Runs client command `command` with `args`; the exit code follows the contract above.
pub fn run(command: &str, args: &[String]) -> ExitCode {
    let args = match parse(args) {
        Ok(args) => args,
        Err(message) => return usage_error(command, &message),
    };
    let mut config = ClientConfig::from_list(&args.endpoints)
        .deadline(args.timeout)
        .cluster_id(args.cluster_id);
    if config.endpoints.is_empty() {
        return usage_error(command, "--endpoints lists no endpoint");
    }
    config.attempt_timeout = config.attempt_timeout.min(args.timeout);
    config.connect_timeout = config.connect_timeout.min(args.timeout);
    let client = BlockingClient::new(config);
    let result = match command {
        "put" => put(&client, &args),
        "get" => get(&client, &args),
        "del" => del(&client, &args),
        "cas" => cas(&client, &args),
        "scan" => scan(&client, &args),
        "status" => status(&client, &args),
        other => Err(Failure::Usage(format!("unknown client command {other}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Negative(message)) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_NEGATIVE)
        }
        Err(Failure::Usage(message)) => usage_error(command, &message),
        Err(Failure::Client(error)) => {
            eprintln!("kahuna {command}: {}", describe(&error));
            ExitCode::from(EXIT_OTHER)
        }
    }
}

/// How a command ended when it did not succeed.
enum Failure {
    /// A definite "no" (exit 1).
    Negative(String),
    /// Bad arguments (exit 2; nothing was sent).
    Usage(String),
    /// The client's error (exit 2).
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Client(error)
    }
}

fn usage_error(command: &str, message: &str) -> ExitCode {
    eprintln!("kahuna {command}: {message}; nothing was sent\nusage:\n{USAGE}");
    ExitCode::from(EXIT_OTHER)
}

/// The error with what it means for the outcome.
fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Refused { .. } => format!("{error}; the request was not applied"),
        ClientError::Timeout { .. } => error.to_string(),
        ClientError::Protocol(_) => format!("{error}; the outcome is unknown"),
    }
}

fn key_and_value(args: &Args, command: &str) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    match (args.positional.as_slice(), &args.value_file) {
        ([key, value], None) => Ok((key.clone().into_bytes(), value.clone().into_bytes())),
        ([key], Some(file)) => Ok((key.clone().into_bytes(), read_value(file)?)),
        ([_, _], Some(_)) => Err(Failure::Usage(format!(
            "{command} takes a VALUE or --value-file, not both"
        ))),
        _ => Err(Failure::Usage(format!(
            "{command} needs KEY VALUE or KEY --value-file FILE"
        ))),
    }
}

fn read_value(file: &str) -> Result<Vec<u8>, Failure> {
    if file == "-" {
        let mut buffer = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buffer)
            .map_err(|e| Failure::Usage(format!("reading standard input: {e}")))?;
        return Ok(buffer);
    }
    std::fs::read(file).map_err(|e| Failure::Usage(format!("reading {file}: {e}")))
}

fn one_key(args: &Args, command: &str) -> Result<Vec<u8>, Failure> {
    match args.positional.as_slice() {
        [key] => Ok(key.clone().into_bytes()),
        _ => Err(Failure::Usage(format!("{command} needs exactly one KEY"))),
    }
}

fn put(client: &BlockingClient, args: &Args) -> Result<(), Failure> {
    let (key, value) = key_and_value(args, "put")?;
    let revision = client.put(&key, &value)?;
    print_revision(args, revision);
    Ok(())
}

fn print_revision(args: &Args, revision: u64) {
    if args.json {
        println!("{{\"revision\":{revision}}}");
    } else {
        println!("OK revision={revision}");
    }
}

fn get(client: &BlockingClient, args: &Args) -> Result<(), Failure> {
    let key = one_key(args, "get")?;
    let Some(found) = client.get(&key)? else {
        return Err(Failure::Negative("not found".into()));
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(
            out,
            "{{\"key\":{},\"value\":{},\"revision\":{}}}",
            crate::json::bytes(&key),
            crate::json::bytes(&found.value),
            found.revision
        );
    } else {
        // The raw bytes alone, exactly as stored.
        let _ = out.write_all(&found.value);
    }
    let _ = out.flush();
    Ok(())
}

fn del(client: &BlockingClient, args: &Args) -> Result<(), Failure> {
    let key = one_key(args, "del")?;
    match client.delete(&key)? {
        Some(revision) if args.json => println!("{{\"deleted_revision\":{revision}}}"),
        Some(revision) => println!("OK deleted revision={revision}"),
        None => return Err(Failure::Negative("not found".into())),
    }
    Ok(())
}

fn cas(client: &BlockingClient, args: &Args) -> Result<(), Failure> {
    let (key, value) = key_and_value(args, "cas")?;
    let Some(expected) = args.revision else {
        return Err(Failure::Usage(
            "cas needs --revision R (0 = the key is absent)".into(),
        ));
    };
    match client.cas(&key, expected, &value)? {
        CasOutcome::Applied { revision } => print_revision(args, revision),
        CasOutcome::Mismatch { current } => {
            return Err(Failure::Negative(format!(
                "revision mismatch: expected {expected}, current revision is {current}{}",
                if current == 0 { " (absent)" } else { "" }
            )))
        }
    }
    Ok(())
}

fn scan(client: &BlockingClient, args: &Args) -> Result<(), Failure> {
    let prefix = match args.positional.as_slice() {
        [prefix] => prefix.clone().into_bytes(),
        [] => Vec::new(),
        _ => return Err(Failure::Usage("scan takes one PREFIX".into())),
    };
    let limit = args.limit.unwrap_or(usize::MAX);
    let items = client.scan(&prefix, limit)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let rows: Vec<String> = items
            .iter()
            .map(|item| {
                format!(
                    "{{\"key\":{},\"value\":{},\"revision\":{}}}",
                    crate::json::bytes(&item.key),
                    crate::json::bytes(&item.value),
                    item.revision
                )
            })
            .collect();
        let _ = writeln!(out, "[{}]", rows.join(","));
    } else {
        for item in items {
            let mut line = item.key.to_vec();
            line.push(b'\t');
            line.extend_from_slice(&item.value);
            line.push(b'\n');
            if out.write_all(&line).is_err() {
                break;
            }
        }
    }
    Ok(())
}

fn status(client: &BlockingClient, args: &Args) -> Result<(), Failure> {
    if !args.positional.is_empty() {
        return Err(Failure::Usage("status takes no arguments".into()));
    }
    let status = client.status()?;
    if args.json {
        println!("{}", status_json(&status));
        return Ok(());
    }
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
    Ok(())
}

fn status_json(status: &NodeStatus) -> String {
    let nodes: Vec<String> = status
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{{\"node_id\":{},\"client_address\":{}}}",
                n.node_id,
                crate::json::string(&n.client_address)
            )
        })
        .collect();
    let partitions: Vec<String> = status
        .partitions
        .iter()
        .map(|p| {
            format!(
                "{{\"partition\":{},\"role\":\"{:?}\",\"leader\":{},\"term\":{},\"commit_index\":{},\"applied_index\":{}}}",
                p.partition, p.role, p.leader, p.term, p.commit_index, p.applied_index
            )
        })
        .collect();
    format!(
        "{{\"node_id\":{},\"cluster_id\":{},\"partition_count\":{},\"nodes\":[{}],\"partitions\":[{}]}}",
        status.node_id,
        status.cluster_id,
        status.partition_count,
        nodes.join(","),
        partitions.join(",")
    )
}
