//! Process test of `kahuna bench`: a short closed-loop put run and a short open-loop mixed run
//! against a real 3-node cluster; the summary line parses, counted operations, no errors.
//! Ports 22000-22199 (client ports 22000-22002, peer ports from 23000).

mod support;

use std::process::Command;
use std::time::Duration;

use kahuna::bench::report::parse_summary_line;
use kahuna::server::playground::wait_for_leaders;
use support::cluster::ProcessCluster;

const PARTITIONS: u64 = 8;

fn bench(endpoints: &str, extra: &[&str]) -> (std::collections::BTreeMap<String, f64>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kahuna"))
        .args(["bench", "--endpoints", endpoints, "--duration", "2s"])
        .args(["--warmup", "500ms", "--keys", "1000", "--value-size", "64"])
        .args(extra)
        .output()
        .expect("run kahuna bench");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "bench failed\n{stdout}\n{stderr}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("ops="))
        .unwrap_or_else(|| panic!("no summary line\n{stdout}\n{stderr}"));
    let parsed = parse_summary_line(summary)
        .unwrap_or_else(|| panic!("summary line does not parse: {summary}"));
    (parsed, format!("{stdout}\n{stderr}"))
}

#[test]
fn bench_reports_a_parsable_summary_against_a_real_cluster() {
    let cluster = ProcessCluster::start(22000, PARTITIONS, 1, Vec::new());
    assert!(
        wait_for_leaders(&cluster.endpoints(), PARTITIONS, Duration::from_secs(60)),
        "every partition elects a leader"
    );
    let endpoints = cluster.endpoints().join(",");

    let (closed, output) = bench(&endpoints, &["--workload", "put", "--clients", "4"]);
    for key in [
        "ops",
        "ops_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "errors",
    ] {
        assert!(closed.contains_key(key), "{key} missing: {output}");
    }
    assert!(closed["ops"] > 0.0, "{output}");
    assert_eq!(closed["errors"], 0.0, "{output}");
    assert!(closed["p50_us"] <= closed["p99_us"], "{output}");
    assert!(closed["p99_us"] <= closed["max_us"], "{output}");
    assert!(output.contains("ops/s="), "no progress line: {output}");

    let (open, output) = bench(
        &endpoints,
        &[
            "--workload",
            "mixed",
            "--clients",
            "2",
            "--rate",
            "200",
            "--distribution",
            "zipfian",
            "--json",
        ],
    );
    assert!(open["ops"] > 0.0, "{output}");
    assert_eq!(open["errors"], 0.0, "{output}");
    // Open loop at 200/s for 2 s: about 400 operations, never far more.
    assert!(open["ops"] <= 440.0, "{output}");
    assert!(output.contains("\"percentiles\""), "no JSON: {output}");
}
