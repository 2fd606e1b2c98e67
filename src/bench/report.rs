//! What a run reports: the live progress line, the final key=value summary line and the JSON
//! document with the full percentile spectrum. Pure formatting over recorded histograms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, from 1 µs to a minute, 3 significant digits.
pub const LATENCY_US_MAX: u64 = 60_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Everything a finished (or in-progress) measurement counted.
#[derive(Clone, Debug)]
pub struct Totals {
    /// Latencies of operations with a definite answer (errors are counted, not timed).
    pub latency_us: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub not_found: u64,
    pub conflicts: u64,
}

impl Default for Totals {
    fn default() -> Totals {
        Totals {
            latency_us: new_histogram(),
            errors: BTreeMap::new(),
            not_found: 0,
            conflicts: 0,
        }
    }
}

impl Totals {
    pub fn ops(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

fn quantile(histogram: &Histogram<u64>, q: f64) -> u64 {
    if histogram.is_empty() {
        0
    } else {
        histogram.value_at_quantile(q)
    }
}

/// `errors=N` with the kinds when there are any: `errors=3 (timeout=2 Unavailable=1)`.
pub fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    let total: u64 = errors.values().sum();
    if total == 0 {
        return "errors=0".into();
    }
    let kinds: Vec<String> = errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("errors={total} ({})", kinds.join(" "))
}

/// The live line printed every second.
pub fn progress_line(
    elapsed: Duration,
    interval: &Totals,
    window: Duration,
    warmup: bool,
) -> String {
    format!(
        "[{:>4}s] ops/s={:.0} p50_us={} p99_us={} {}{}",
        elapsed.as_secs(),
        per_second(interval.ops(), window),
        quantile(&interval.latency_us, 0.50),
        quantile(&interval.latency_us, 0.99),
        errors_text(&interval.errors),
        if warmup { " (warmup)" } else { "" }
    )
}

/// The final line, exactly `ops=… ops_per_s=… p50_us=… p99_us=… p999_us=… max_us=… errors=…`.
pub fn summary_line(totals: &Totals, measured: Duration) -> String {
    let h = &totals.latency_us;
    format!(
        "ops={} ops_per_s={:.1} p50_us={} p99_us={} p999_us={} max_us={} errors={}",
        totals.ops(),
        per_second(totals.ops(), measured),
        quantile(h, 0.50),
        quantile(h, 0.99),
        quantile(h, 0.999),
        if h.is_empty() { 0 } else { h.max() },
        totals.error_count()
    )
}

/// Parses a `key=value` line into numbers (for scripts and tests).
pub fn parse_summary_line(line: &str) -> Option<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for pair in line.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        out.insert(key.to_string(), value.parse().ok()?);
    }
    Some(out)
}

/// The percentiles the JSON document lists.
pub const JSON_PERCENTILES: [f64; 12] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 99.999, 100.0,
];

/// One JSON object: the run's settings (`context`, already key/value strings), counts, and
/// the full percentile spectrum of the latency histogram.
pub fn json_document(context: &[(&str, String)], totals: &Totals, measured: Duration) -> String {
    let h = &totals.latency_us;
    let mut out = String::from("{");
    for (key, value) in context {
        let _ = write!(
            out,
            "{}:{},",
            crate::json::string(key),
            crate::json::string(value)
        );
    }
    let _ = write!(
        out,
        "\"ops\":{},\"ops_per_s\":{:.1},\"measured_s\":{:.3},\"errors\":{},\"not_found\":{},\"conflicts\":{},",
        totals.ops(),
        per_second(totals.ops(), measured),
        measured.as_secs_f64(),
        totals.error_count(),
        totals.not_found,
        totals.conflicts
    );
    out.push_str("\"errors_by_kind\":{");
    let kinds: Vec<String> = totals
        .errors
        .iter()
        .map(|(k, v)| format!("{}:{v}", crate::json::string(k)))
        .collect();
    out.push_str(&kinds.join(","));
    out.push_str("},");
    let _ = write!(
        out,
        "\"latency_us\":{{\"min\":{},\"mean\":{:.1},\"stdev\":{:.1},\"max\":{},\"percentiles\":{{",
        if h.is_empty() { 0 } else { h.min() },
        if h.is_empty() { 0.0 } else { h.mean() },
        if h.is_empty() { 0.0 } else { h.stdev() },
        if h.is_empty() { 0 } else { h.max() },
    );
    let percentiles: Vec<String> = JSON_PERCENTILES
        .iter()
        .map(|&p| {
            let value = if h.is_empty() {
                0
            } else {
                h.value_at_percentile(p)
            };
            format!("\"{p}\":{value}")
        })
        .collect();
    out.push_str(&percentiles.join(","));
    out.push_str("}}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals_with(latencies: &[u64]) -> Totals {
        let mut totals = Totals::default();
        for &l in latencies {
            totals.latency_us.record(l).unwrap();
        }
        totals
    }

    #[test]
    fn summary_line_has_exactly_the_documented_keys() {
        let mut totals = totals_with(&(1..=1000).collect::<Vec<_>>());
        totals.errors.insert("timeout".into(), 2);
        let line = summary_line(&totals, Duration::from_secs(2));
        let keys: Vec<&str> = line
            .split_whitespace()
            .map(|p| p.split('=').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "ops",
                "ops_per_s",
                "p50_us",
                "p99_us",
                "p999_us",
                "max_us",
                "errors"
            ]
        );
        let parsed = parse_summary_line(&line).unwrap();
        assert_eq!(parsed["ops"], 1000.0);
        assert_eq!(parsed["ops_per_s"], 500.0);
        assert!((parsed["p50_us"] - 500.0).abs() <= 1.0, "{line}");
        assert!((parsed["p99_us"] - 990.0).abs() <= 1.0, "{line}");
        assert_eq!(parsed["max_us"], 1000.0);
        assert_eq!(parsed["errors"], 2.0);
    }

    #[test]
    fn empty_runs_report_zeros_not_panics() {
        let line = summary_line(&Totals::default(), Duration::ZERO);
        assert_eq!(
            line,
            "ops=0 ops_per_s=0.0 p50_us=0 p99_us=0 p999_us=0 max_us=0 errors=0"
        );
    }

    #[test]
    fn errors_are_shown_by_kind() {
        let mut errors = BTreeMap::new();
        assert_eq!(errors_text(&errors), "errors=0");
        errors.insert("timeout".to_string(), 2);
        errors.insert("Unavailable".to_string(), 1);
        assert_eq!(errors_text(&errors), "errors=3 (Unavailable=1 timeout=2)");
    }

    #[test]
    fn json_lists_percentiles_and_escapes_strings() {
        let mut totals = totals_with(&[10, 20, 30]);
        totals.errors.insert("bad \"kind\"".into(), 1);
        let json = json_document(
            &[("target", "kahuna".into())],
            &totals,
            Duration::from_secs(1),
        );
        assert!(json.starts_with("{\"target\":\"kahuna\","), "{json}");
        assert!(json.contains("\"ops\":3"), "{json}");
        assert!(json.contains("\"bad \\\"kind\\\"\":1"), "{json}");
        assert!(json.contains("\"99.9\":"), "{json}");
        assert!(json.contains("\"100\":30"), "{json}");
        assert_eq!(json.matches('{').count(), json.matches('}').count());
    }
}
