//! The `kahuna` CLI's contract: output and exit codes (0 success, 1 a definite negative
//! answer, 2 anything else, with a message saying whether the outcome is unknown), against a
//! real 3-node cluster and against nothing at all.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kahuna::server::playground::wait_for_leaders;
use support::cluster::ProcessCluster;

const PARTITIONS: u64 = 4;

fn kahuna(endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kahuna"))
        .args(args)
        .args(["--endpoints", endpoints])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kahuna");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn commands_print_and_exit_as_documented() {
    let cluster = ProcessCluster::start(18250, PARTITIONS, 1, Vec::new());
    assert!(wait_for_leaders(
        &cluster.endpoints(),
        PARTITIONS,
        Duration::from_secs(60)
    ));
    let endpoints = cluster.endpoints().join(",");
    let run = |args: &[&str]| kahuna(&endpoints, args, None);

    let put = run(&["put", "greeting", "hello world"]);
    assert_eq!(code(&put), 0, "{}", text(&put.stderr));
    assert!(text(&put.stdout).starts_with("OK revision="));
    let get = run(&["get", "greeting"]);
    assert_eq!(
        (code(&get), get.stdout.as_slice()),
        (0, b"hello world".as_slice())
    );
    let missing = run(&["get", "absent"]);
    assert_eq!(code(&missing), 1);
    assert!(missing.stdout.is_empty());
    assert_eq!(text(&missing.stderr).trim(), "not found");

    // Raw bytes from standard input, read back exactly.
    let binary: Vec<u8> = (0..=255u8).collect();
    let piped = kahuna(
        &endpoints,
        &["put", "bin", "--value-file", "-"],
        Some(&binary),
    );
    assert_eq!(code(&piped), 0, "{}", text(&piped.stderr));
    assert_eq!(run(&["get", "bin"]).stdout, binary);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"from a file").unwrap();
    let path = file.path().to_str().unwrap();
    assert_eq!(code(&run(&["put", "f", "--value-file", path])), 0);
    assert_eq!(run(&["get", "f"]).stdout, b"from a file");

    // JSON carries the revision; cas applies on it and refuses a stale one with exit 1.
    let json = text(&run(&["get", "greeting", "--json"]).stdout);
    let revision: String = json
        .split("\"revision\":")
        .nth(1)
        .expect("a revision")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(json.contains("\"value\":\"hello world\""), "{json}");
    let stale = run(&["cas", "greeting", "x", "--revision", "1"]);
    assert_eq!(code(&stale), 1, "{}", text(&stale.stderr));
    assert!(text(&stale.stderr).contains("revision mismatch"));
    let cas = run(&["cas", "greeting", "bonjour", "--revision", &revision]);
    assert_eq!(code(&cas), 0, "{}", text(&cas.stderr));
    assert_eq!(run(&["get", "greeting"]).stdout, b"bonjour");
    assert_eq!(code(&run(&["cas", "new-key", "v", "--revision", "0"])), 0);
    assert_eq!(code(&run(&["cas", "new-key", "v", "--revision", "0"])), 1);

    // del: 0, then 1 (absent).
    assert_eq!(code(&run(&["del", "f"])), 0);
    assert_eq!(code(&run(&["del", "f"])), 1);

    // scan: keys of every partition in order, limited, and as JSON.
    for i in 0..12 {
        assert_eq!(
            code(&run(&["put", &format!("s/{i:02}"), &format!("v{i}")])),
            0
        );
    }
    let scan = run(&["scan", "s/"]);
    assert_eq!(code(&scan), 0);
    let lines: Vec<String> = text(&scan.stdout).lines().map(String::from).collect();
    let expected: Vec<String> = (0..12).map(|i| format!("s/{i:02}\tv{i}")).collect();
    assert_eq!(lines, expected);
    let limited = run(&["scan", "s/", "--limit", "3"]);
    assert_eq!(text(&limited.stdout).lines().count(), 3);
    let json = text(&run(&["scan", "s/", "--limit", "2", "--json"]).stdout);
    assert!(
        json.starts_with("[{\"key\":\"s/00\",\"value\":\"v0\",\"revision\":"),
        "{json}"
    );

    let status = run(&["status", "--json"]);
    assert_eq!(code(&status), 0);
    assert!(text(&status.stdout).contains(&format!("\"partition_count\":{PARTITIONS}")));
    assert_eq!(code(&run(&["status"])), 0);

    // Refused by a limit: exit 2, saying it was not applied.
    let big_key = "k".repeat(5000);
    let refused = run(&["put", &big_key, "v"]);
    assert_eq!(code(&refused), 2);
    let message = text(&refused.stderr);
    assert!(
        message.contains("KeyTooLarge") && message.contains("not applied"),
        "{message}"
    );
}

#[test]
fn unreachable_and_bad_arguments_exit_2() {
    // Nothing listens on this port.
    let nowhere = "127.0.0.1:18298";
    let unreachable = kahuna(nowhere, &["put", "k", "v", "--timeout", "0.5"], None);
    assert_eq!(code(&unreachable), 2);
    let message = text(&unreachable.stderr);
    assert!(message.contains("not applied"), "{message}");
    assert_eq!(
        code(&kahuna(nowhere, &["get", "k", "--timeout", "0.5"], None)),
        2
    );
    for args in [
        &["get"][..],
        &["put", "k"],
        &["cas", "k", "v"],
        &["get", "k", "--bogus"],
        &["scan", "p", "--limit", "x"],
    ] {
        let output = kahuna(nowhere, args, None);
        assert_eq!(code(&output), 2, "{args:?}");
        assert!(
            text(&output.stderr).contains("nothing was sent"),
            "{args:?}"
        );
    }
}
