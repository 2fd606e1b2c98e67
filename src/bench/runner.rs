//! Runs the clients: one task per benchmark client, all on one executor thread (see
//! [`super::executor`] for why not a thread each), each executing its workload through its
//! driver session, closed loop (next operation when the last answered) or open loop at a
//! fixed rate. Open-loop latencies are measured from each operation's INTENDED start, so a
//! stalled server is charged for the operations that queued behind the stall (no coordinated
//! omission). A reporter prints one progress line per second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::driver::{OpOutcome, Session};
use super::executor::{run_rounds, sleep_until, woken_at, RoundScope, Task};
use super::report::{progress_line, Totals};
use super::workload::Workload;

/// The open-loop schedule of one client: `rate` operations per second shared evenly by
/// `clients` clients, interleaved so the whole run issues at an even pace.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    client: usize,
    clients: usize,
    rate: f64,
}

impl Pacer {
    pub fn new(client: usize, clients: usize, rate: f64) -> Pacer {
        assert!(client < clients, "client {client} of {clients}");
        assert!(rate > 0.0, "rate {rate}");
        Pacer {
            client,
            clients,
            rate,
        }
    }

    /// When this client's `k`-th operation is meant to start, from the run's start.
    pub fn intended_offset(&self, k: u64) -> Duration {
        let slot = k as f64 * self.clients as f64 + self.client as f64;
        Duration::from_secs_f64(slot / self.rate)
    }
}

/// The latency charged to an operation: from when it should have started (open loop) or did
/// start (closed loop) to its answer.
pub fn charged_latency(intended_start: Instant, completed: Instant) -> Duration {
    completed.saturating_duration_since(intended_start)
}

pub struct RunPlan {
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub rate: Option<f64>,
    pub progress: bool,
}

/// What the clients counted, shared with the reporter (locked once per operation by the
/// clients' thread and once per second by the reporter: barely contended). One for all
/// clients, not one each: the clients run on one thread anyway, and with a pair of
/// histograms per client (~360 KiB each) every record missed the cache (8% of the clients'
/// thread at 256 clients) and the reporter merged hundreds of them every second.
#[derive(Default)]
struct ClientStats {
    /// Since the reporter's last look (warmup included), for the progress line.
    interval: Totals,
    /// Operations started inside the measured window.
    measured: Totals,
}

pub struct RunResult {
    pub totals: Totals,
    pub measured: Duration,
}

fn count(totals: &mut Totals, outcome: &Result<OpOutcome, String>, micros: u64) {
    match outcome {
        Ok(outcome) => {
            totals.latency_us.saturating_record(micros.max(1));
            match outcome {
                OpOutcome::Done { .. } => {}
                OpOutcome::NotFound => totals.not_found += 1,
                OpOutcome::Conflict { .. } => totals.conflicts += 1,
            }
        }
        Err(kind) => *totals.errors.entry(kind.clone()).or_insert(0) += 1,
    }
}

fn record(
    stats: &Mutex<ClientStats>,
    outcome: &Result<OpOutcome, String>,
    latency: Duration,
    measured: bool,
) {
    let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
    let mut stats = stats.lock().expect("client stats lock");
    count(&mut stats.interval, outcome, micros);
    if measured {
        count(&mut stats.measured, outcome, micros);
    }
}

/// One client's share of the run.
struct ClientRun {
    session: Box<dyn Session>,
    workload: Workload,
    pacer: Option<Pacer>,
    start: Instant,
    /// Operations (intended to) start from here on count in the result.
    measure_from: Instant,
    /// No operation starts at or after this.
    end: Instant,
    stats: Arc<Mutex<ClientStats>>,
    stop: Arc<AtomicBool>,
}

impl ClientRun {
    async fn run(mut self) {
        let mut k = 0u64;
        loop {
            let intended = match self.pacer {
                Some(pacer) => self.start + pacer.intended_offset(k),
                None => Instant::now(),
            };
            k += 1;
            if intended >= self.end || self.stop.load(Ordering::Relaxed) {
                return;
            }
            if intended > Instant::now() {
                sleep_until(intended).await;
            }
            let op = self.workload.next_op();
            let key = op.key().clone();
            let issued = Instant::now();
            let result = self.session.execute(op).await;
            // When the answer arrived (the wake that delivered it), not when this task got its
            // turn on the executor thread. A wake from before the operation was issued means
            // the operation completed without suspending (an immediate error): now.
            let completed = match woken_at() {
                Some(woken) if woken >= issued => woken,
                _ => Instant::now(),
            };
            match &result {
                Ok(OpOutcome::Done { revision }) => self.workload.observe_revision(&key, *revision),
                Ok(OpOutcome::Conflict { current_revision }) => {
                    self.workload.observe_revision(&key, *current_revision)
                }
                _ => {}
            }
            let outcome = result.map_err(|error| error.kind);
            record(
                &self.stats,
                &outcome,
                charged_latency(intended, completed),
                intended >= self.measure_from,
            );
        }
    }
}

/// Runs `sessions` (one per client) with their workloads, `round` (if any) opened around each
/// round of polls; prints progress to stderr.
pub fn run(
    plan: &RunPlan,
    sessions: Vec<(Box<dyn Session>, Workload)>,
    round: Option<RoundScope>,
) -> RunResult {
    assert_eq!(sessions.len(), plan.clients, "one session per client");
    let start = Instant::now();
    let end = start + plan.warmup + plan.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(ClientStats::default()));
    let mut runs = Vec::with_capacity(plan.clients);
    for (client, (session, workload)) in sessions.into_iter().enumerate() {
        let pacer = plan.rate.map(|rate| Pacer::new(client, plan.clients, rate));
        let run = ClientRun {
            session,
            workload,
            pacer,
            start,
            measure_from: start + plan.warmup,
            end,
            stats: stats.clone(),
            stop: stop.clone(),
        };
        runs.push(run);
    }
    // The sessions are Send; the tasks (and the futures they await) stay on this one thread.
    let clients = std::thread::Builder::new()
        .name("bench-clients".into())
        .spawn(move || {
            let tasks: Vec<Task> = runs
                .into_iter()
                .map(|run| Box::pin(run.run()) as Task)
                .collect();
            run_rounds(tasks, round);
        })
        .expect("spawn the benchmark clients' thread");
    let mut last = start;
    while Instant::now() < end {
        let next = (last + Duration::from_secs(1)).min(end);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let interval = std::mem::take(&mut stats.lock().expect("client stats lock").interval);
        if plan.progress {
            let elapsed = now - start;
            eprintln!(
                "{}",
                progress_line(elapsed, &interval, now - last, last - start < plan.warmup)
            );
        }
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    if clients.join().is_err() {
        eprintln!("kahuna bench: the clients' thread panicked; the totals cover what it counted");
    }
    let totals = std::mem::take(&mut stats.lock().expect("client stats lock").measured);
    RunResult {
        totals,
        measured: plan.duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_interleaves_clients_at_the_total_rate() {
        let rate = 1000.0;
        let pacers: Vec<Pacer> = (0..4).map(|c| Pacer::new(c, 4, rate)).collect();
        let mut starts: Vec<Duration> = pacers
            .iter()
            .flat_map(|p| (0..250).map(move |k| p.intended_offset(k)))
            .collect();
        starts.sort();
        // 1,000 operations in one second, one every millisecond.
        for (i, start) in starts.iter().enumerate() {
            let expected = Duration::from_micros(i as u64 * 1000);
            let diff = start.abs_diff(expected);
            assert!(diff < Duration::from_micros(1), "{i}: {start:?}");
        }
    }

    /// Replays a client against a server that stalls: intended starts from the pacer, each
    /// operation starts when both due and the previous one answered. A 1 s stall at 100 ops/s
    /// must be charged to the ~100 operations that queued behind it, not to one.
    #[test]
    fn open_loop_charges_a_stall_to_every_operation_behind_it() {
        let pacer = Pacer::new(0, 1, 100.0);
        let origin = Instant::now();
        let service = |k: u64| {
            if k == 10 {
                Duration::from_secs(1)
            } else {
                Duration::from_micros(100)
            }
        };
        let mut free_at = origin;
        let mut latencies = Vec::new();
        for k in 0..300 {
            let intended = origin + pacer.intended_offset(k);
            let started = intended.max(free_at);
            let completed = started + service(k);
            free_at = completed;
            latencies.push(charged_latency(intended, completed));
        }
        let slow = latencies
            .iter()
            .filter(|l| **l > Duration::from_millis(10))
            .count();
        assert!((95..=101).contains(&slow), "{slow} slow operations");
        assert!(latencies[10] >= Duration::from_secs(1));
        // The operation due right after the stall began waited nearly the whole second.
        assert!(
            latencies[11] >= Duration::from_millis(980),
            "{:?}",
            latencies[11]
        );
        // Long after the stall the client has caught up.
        assert!(latencies[299] < Duration::from_millis(1));
    }
}
