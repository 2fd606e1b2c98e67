//! Renders every core's metrics in the Prometheus text exposition format (version 0.0.4).
//! Latencies are recorded in microseconds and exposed in seconds, as Prometheus names them.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::histogram::{bucket_upper_bound, HistogramSnapshot, BUCKETS};
use super::{CoreMetrics, OpKind, ERROR_CODES, PEER_COUNTERS};
use crate::proto::client::ErrorCode;

/// How a histogram's values are scaled for exposition.
#[derive(Clone, Copy)]
enum Unit {
    /// Recorded in microseconds, exposed in seconds.
    MicrosAsSeconds,
    /// A plain count (entries).
    Count,
}

fn number(value: u64, unit: Unit) -> String {
    match unit {
        Unit::MicrosAsSeconds => format!("{}", value as f64 / 1e6),
        Unit::Count => value.to_string(),
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, snapshot: &HistogramSnapshot, unit: Unit) {
    let mut cumulative = 0u64;
    for index in 0..BUCKETS - 1 {
        cumulative += snapshot.buckets[index];
        if let Some(bound) = bucket_upper_bound(index) {
            let le = number(bound, unit);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
    }
    let count = snapshot.count();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", number(snapshot.sum, unit));
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

type Stage = (
    &'static str,
    &'static str,
    fn(&CoreMetrics) -> HistogramSnapshot,
    Unit,
);

const STAGES: [Stage; 11] = [
    (
        "kahuna_write_queue_seconds",
        "Time from a client's proposal to the storage batch that carries it.",
        |m| m.queue_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
    (
        "kahuna_write_batch_entries",
        "Log entries per storage write batch (all groups of the core).",
        |m| m.batch_entries.snapshot(),
        Unit::Count,
    ),
    (
        "kahuna_storage_write_seconds",
        "One batch's storage write and sync, as the core waits for it.",
        |m| m.storage_write_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
    (
        "kahuna_storage_engine_seconds",
        "The storage engine's write and sync of one batch, on the blocking pool thread.",
        |m| m.storage_engine_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
    (
        "kahuna_storage_handoff_seconds",
        "One batch's storage write less the engine's part: the hops to a blocking pool thread and back, and any wait there for the write ahead of it.",
        |m| m.storage_handoff_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
    (
        "kahuna_storage_handoff_forward_seconds",
        "The hand-off's first half: from the core's call to a blocking pool thread starting on the batch.",
        |m| m.storage_forward_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
    (
        "kahuna_storage_handoff_back_seconds",
        "The hand-off's way back: from the pool thread done with the batch to the core's writer running with the result.",
        |m| m.storage_back_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
    (
        "kahuna_write_replication_seconds",
        "From the leader's batch carrying an entry (appends sent) to the batch applying it (quorum commit).",
        |m| m.replication_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
    (
        "kahuna_write_apply_seconds",
        "From the batch applying an entry (its client answered) to that batch written.",
        |m| m.apply_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
    (
        "kahuna_follower_ack_seconds",
        "From a peer frame of messages received to the durable answers of its batch sent.",
        |m| m.follower_ack_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
    (
        "kahuna_follower_queue_seconds",
        "From a peer frame of messages received to its batch's storage write handed to the pool.",
        |m| m.follower_queue_us.snapshot(),
        Unit::MicrosAsSeconds,
    ),
];

fn code_name(code: usize) -> String {
    ErrorCode::from_u16(code as u16).map_or_else(|| format!("code{code}"), |c| format!("{c:?}"))
}

/// One value per core, labelled by core, under its header.
fn per_core<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    cores: impl Iterator<Item = (usize, &'a CoreMetrics)>,
    read: impl Fn(&CoreMetrics) -> u64,
) {
    header(out, name, kind, help);
    for (core, metrics) in cores {
        let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", read(metrics));
    }
}

/// The whole exposition for the given cores.
pub fn render<'a>(cores: impl Iterator<Item = (usize, &'a CoreMetrics)> + Clone) -> String {
    let mut out = String::with_capacity(64 << 10);
    for (name, help, read, unit) in STAGES {
        header(&mut out, name, "histogram", help);
        for (core, metrics) in cores.clone() {
            histogram(
                &mut out,
                name,
                &format!("core=\"{core}\""),
                &read(metrics),
                unit,
            );
        }
    }
    let name = "kahuna_request_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Client requests from arrival to answer, by operation.",
    );
    for (core, metrics) in cores.clone() {
        for op in OpKind::ALL {
            let snapshot = metrics.request_us[op as usize].snapshot();
            if snapshot.count() == 0 {
                continue;
            }
            let labels = format!("core=\"{core}\",op=\"{}\"", op.name());
            histogram(&mut out, name, &labels, &snapshot, Unit::MicrosAsSeconds);
        }
    }
    let name = "kahuna_requests_total";
    header(
        &mut out,
        name,
        "counter",
        "Client requests answered, by operation and error code.",
    );
    for (core, metrics) in cores.clone() {
        for op in OpKind::ALL {
            for code in 0..ERROR_CODES {
                let count = metrics.requests[op as usize][code].load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{core=\"{core}\",op=\"{}\",code=\"{}\"}} {count}",
                        op.name(),
                        code_name(code)
                    );
                }
            }
        }
    }
    per_core(
        &mut out,
        "kahuna_stage_samples_dropped_total",
        "counter",
        "Write-path timing samples lost to the bounded in-flight tables.",
        cores.clone(),
        |metrics| metrics.stage_samples_dropped.load(Ordering::Relaxed),
    );
    per_core(
        &mut out,
        "kahuna_spare_batches_held_total",
        "counter",
        "Batches of a spare follower's log entries that waited to be written with a later batch.",
        cores.clone(),
        |metrics| metrics.spare_batches_held.load(Ordering::Relaxed),
    );
    per_core(
        &mut out,
        "kahuna_kv_groups_loaded",
        "gauge",
        "Groups whose kv state (revision cache, session table) the core holds in memory.",
        cores.clone(),
        |metrics| metrics.kv_groups_loaded.load(Ordering::Relaxed),
    );
    for (index, (field, help, _)) in PEER_COUNTERS.iter().enumerate() {
        per_core(
            &mut out,
            &format!("kahuna_peer_{field}_total"),
            "counter",
            help,
            cores.clone(),
            |metrics| metrics.peer[index].load(Ordering::Relaxed),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_cumulative_buckets_and_labelled_counters() {
        let metrics = CoreMetrics::default();
        metrics.queue_us.record(150);
        metrics.queue_us.record(3_000);
        metrics.request_done(OpKind::Put, ErrorCode::Ok, Duration::from_micros(900));
        metrics.request_done(OpKind::Put, ErrorCode::NotLeader, Duration::from_micros(90));
        let text = render(std::iter::once((3usize, &metrics)));
        assert!(text.contains("# TYPE kahuna_write_queue_seconds histogram"));
        assert!(
            text.contains("kahuna_write_queue_seconds_count{core=\"3\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kahuna_write_queue_seconds_sum{core=\"3\"} 0.00315"),
            "{text}"
        );
        assert!(text.contains("kahuna_write_queue_seconds_bucket{core=\"3\",le=\"+Inf\"} 2"));
        assert!(text.contains("kahuna_requests_total{core=\"3\",op=\"put\",code=\"Ok\"} 1"));
        assert!(text.contains("kahuna_requests_total{core=\"3\",op=\"put\",code=\"NotLeader\"} 1"));
        assert!(text.contains("kahuna_request_seconds_count{core=\"3\",op=\"put\"} 2"));
        assert!(!text.contains("op=\"get\""), "empty series are left out");
        // Buckets are cumulative and never decrease.
        let mut last = 0u64;
        for line in text
            .lines()
            .filter(|l| l.starts_with("kahuna_write_queue_seconds_bucket"))
        {
            let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(count >= last, "{line}");
            last = count;
        }
        assert_eq!(last, 2);
    }

    #[test]
    fn renders_every_published_peer_counter() {
        let metrics = CoreMetrics::default();
        let stats = crate::transport::TransportStats {
            messages_sent: 11,
            lane_messages_sent: 7,
            connections_lost: 2,
            ..Default::default()
        };
        metrics.publish_peer(&stats);
        let text = render(std::iter::once((1usize, &metrics)));
        assert!(
            text.contains("kahuna_peer_messages_sent_total{core=\"1\"} 11"),
            "{text}"
        );
        assert!(text.contains("kahuna_peer_lane_messages_sent_total{core=\"1\"} 7"));
        assert!(text.contains("kahuna_peer_connections_lost_total{core=\"1\"} 2"));
        for (field, _, _) in PEER_COUNTERS {
            let name = format!("kahuna_peer_{field}_total");
            assert!(text.contains(&format!("# TYPE {name} counter")), "{name}");
        }
    }
}
