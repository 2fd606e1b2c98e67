//! `kahuna bench` flags: parsed into [`BenchArgs`], validated, with a typed error naming the
//! flag. Pure: no IO.

use std::time::Duration;

use super::workload::{Distribution, WorkloadKind};

/// Which system the harness drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Kahuna,
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Kahuna => "kahuna",
            Target::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BenchArgs {
    pub endpoints: Vec<String>,
    pub target: Target,
    pub workload: WorkloadKind,
    pub clients: usize,
    /// kahuna: pipelined connections per node shared by all clients; etcd: gRPC channels.
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub value_size: usize,
    pub keys: u64,
    /// Share of reads in the mixed workload, 0..=100.
    pub read_pct: u8,
    /// Open loop at this many operations per second over all clients; `None` = closed loop.
    pub rate: Option<f64>,
    pub distribution: Distribution,
    pub json: bool,
    /// Seed of the key and operation draws (client `i` uses `seed + i`).
    pub seed: u64,
}

/// Bounds that keep a typo from starting a million threads or allocating gigabytes.
pub const CLIENTS_MAX: usize = 4096;
pub const VALUE_BYTES_MAX: usize = 1 << 20;
pub const KEYS_MAX: u64 = 1 << 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kahuna bench: {0}")]
pub struct ArgsError(pub String);

impl Default for BenchArgs {
    fn default() -> BenchArgs {
        BenchArgs {
            endpoints: vec![
                "127.0.0.1:7400".into(),
                "127.0.0.1:7401".into(),
                "127.0.0.1:7402".into(),
            ],
            target: Target::Kahuna,
            workload: WorkloadKind::Put,
            clients: 1,
            connections: 1,
            duration: Duration::from_secs(30),
            warmup: Duration::from_secs(5),
            value_size: 256,
            keys: 100_000,
            read_pct: 50,
            rate: None,
            distribution: Distribution::Uniform,
            json: false,
            seed: 1,
        }
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit_seconds) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 0.000_001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 || value * unit_seconds > 1e9 {
        return None;
    }
    Some(Duration::from_secs_f64(value * unit_seconds))
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, ArgsError> {
    value
        .parse()
        .map_err(|_| ArgsError(format!("{flag}: '{value}' is not a valid number")))
}

impl BenchArgs {
    pub fn parse(args: &[String]) -> Result<BenchArgs, ArgsError> {
        let mut parsed = BenchArgs::default();
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            if flag == "--json" {
                parsed.json = true;
                continue;
            }
            let value = iter
                .next()
                .ok_or_else(|| ArgsError(format!("{flag} needs a value")))?;
            let duration = || {
                parse_duration(value).ok_or_else(|| {
                    ArgsError(format!("{flag}: '{value}' is not a duration (30s, 500ms)"))
                })
            };
            match flag.as_str() {
                "--endpoints" => {
                    parsed.endpoints = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                }
                "--target" => {
                    parsed.target = match value.as_str() {
                        "kahuna" => Target::Kahuna,
                        "etcd" => Target::Etcd,
                        other => {
                            return Err(ArgsError(format!(
                                "--target: '{other}' is not kahuna or etcd"
                            )))
                        }
                    }
                }
                "--workload" => {
                    parsed.workload = WorkloadKind::parse(value).ok_or_else(|| {
                        ArgsError(format!(
                            "--workload: '{value}' is not put, get, mixed or cas"
                        ))
                    })?
                }
                "--clients" => parsed.clients = number(flag, value)?,
                "--connections" => parsed.connections = number(flag, value)?,
                "--duration" => parsed.duration = duration()?,
                "--warmup" => parsed.warmup = duration()?,
                "--value-size" => parsed.value_size = number(flag, value)?,
                "--keys" => parsed.keys = number(flag, value)?,
                "--read-pct" => parsed.read_pct = number(flag, value)?,
                "--rate" => parsed.rate = Some(number(flag, value)?),
                "--distribution" => {
                    parsed.distribution = Distribution::parse(value).ok_or_else(|| {
                        ArgsError(format!(
                            "--distribution: '{value}' is not uniform or zipfian"
                        ))
                    })?
                }
                "--seed" => parsed.seed = number(flag, value)?,
                other => return Err(ArgsError(format!("unknown flag '{other}'"))),
            }
        }
        parsed.validate()?;
        Ok(parsed)
    }

    fn validate(&self) -> Result<(), ArgsError> {
        let fail = |why: String| Err(ArgsError(why));
        if self.endpoints.is_empty() {
            return fail("--endpoints: at least one HOST:PORT".into());
        }
        if let Some(bad) = self.endpoints.iter().find(|e| !e.contains(':')) {
            return fail(format!("--endpoints: '{bad}' is not HOST:PORT"));
        }
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return fail(format!("--clients must be in 1..={CLIENTS_MAX}"));
        }
        if self.connections == 0 || self.connections > self.clients {
            return fail("--connections must be in 1..=--clients".into());
        }
        if self.duration.is_zero() {
            return fail("--duration must be positive".into());
        }
        if self.value_size > VALUE_BYTES_MAX {
            return fail(format!("--value-size must be at most {VALUE_BYTES_MAX}"));
        }
        if self.keys == 0 || self.keys > KEYS_MAX {
            return fail(format!("--keys must be in 1..={KEYS_MAX}"));
        }
        if self.read_pct > 100 {
            return fail("--read-pct must be in 0..=100".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return fail("--rate must be a positive number of operations per second".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_every_flag() {
        let parsed = BenchArgs::parse(&args(
            "--endpoints a:1,b:2 --workload mixed --clients 64 --connections 4 --duration 10s \
             --warmup 500ms --value-size 100 --keys 1000 --read-pct 90 --rate 5000 \
             --distribution zipfian --json --target etcd --seed 7",
        ))
        .unwrap();
        assert_eq!(parsed.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(parsed.workload, WorkloadKind::Mixed);
        assert_eq!(parsed.clients, 64);
        assert_eq!(parsed.connections, 4);
        assert_eq!(parsed.duration, Duration::from_secs(10));
        assert_eq!(parsed.warmup, Duration::from_millis(500));
        assert_eq!(parsed.value_size, 100);
        assert_eq!(parsed.keys, 1000);
        assert_eq!(parsed.read_pct, 90);
        assert_eq!(parsed.rate, Some(5000.0));
        assert_eq!(parsed.distribution, Distribution::Zipfian);
        assert!(parsed.json);
        assert_eq!(parsed.target, Target::Etcd);
        assert_eq!(parsed.seed, 7);
    }

    #[test]
    fn defaults_are_closed_loop_puts_on_one_connection() {
        let parsed = BenchArgs::parse(&args("--clients 2")).unwrap();
        assert_eq!(parsed.workload, WorkloadKind::Put);
        assert_eq!(parsed.rate, None);
        assert_eq!(parsed.connections, 1);
        assert_eq!(parsed.value_size, 256);
    }

    #[test]
    fn refuses_bad_input_naming_the_flag() {
        for (text, needle) in [
            ("--clients 0", "--clients"),
            ("--clients 2 --connections 3", "--connections"),
            ("--workload scan", "--workload"),
            ("--duration soon", "--duration"),
            ("--read-pct 101", "--read-pct"),
            ("--rate 0", "--rate"),
            ("--rate -5", "--rate"),
            ("--distribution normal", "--distribution"),
            ("--keys 0", "--keys"),
            ("--endpoints nohost", "HOST:PORT"),
            ("--target redis", "--target"),
            ("--bogus 1", "unknown flag"),
            ("--clients", "needs a value"),
        ] {
            let error = BenchArgs::parse(&args(text)).unwrap_err();
            assert!(error.0.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("xs"), None);
    }
}
