//! Negative controls: the simulator must catch a Raft core with a safety rule switched off.
//! If these fail, the simulator's checks have gone blind and its green runs mean nothing.

mod sim;

use kahuna::raft::SafetyFault;
use sim::{SimOptions, Simulation};

/// Runs seeds with `fault` until one reports a violation; returns the first report.
fn first_violation(
    fault: SafetyFault,
    seeds: std::ops::Range<u64>,
    shape: impl Fn(&mut SimOptions),
) -> Option<String> {
    for seed in seeds {
        let mut options = SimOptions::from_seed(seed);
        options.safety_fault = Some(fault);
        shape(&mut options);
        let mut simulation = Simulation::new(options.clone());
        let violations = simulation.run();
        if let Some(violation) = violations.first() {
            return Some(format!(
                "seed {seed} ({options}) step {}: {}",
                violation.step, violation.what
            ));
        }
    }
    None
}

#[test]
fn voting_without_the_log_check_is_caught() {
    let found = first_violation(SafetyFault::VoteWithoutLogCheck, 1..200, |options| {
        options.crash_probability = 0.01;
        options.partition_probability = 0.02;
        options.proposal_probability = 1.0;
    });
    let report = found.expect("the simulator must catch votes granted to out-of-date candidates");
    println!("caught: {report}");
    assert!(
        report.contains("Leader Completeness")
            || report.contains("State Machine Safety")
            || report.contains("committed entry rolled back")
            || report.contains("Log Matching"),
        "unexpected kind of violation: {report}"
    );
}

#[test]
fn committing_earlier_terms_by_count_is_caught() {
    // Figure 8 needs an old-term entry to reach a majority without a current-term entry
    // behind it: one entry per append, crashes and partitions make that likely.
    let found = first_violation(SafetyFault::CommitEarlierTermByCount, 1..400, |options| {
        options.nodes = 3;
        options.groups = 4;
        options.append_bytes_max = 1;
        options.crash_probability = 0.02;
        options.partition_probability = 0.03;
        options.proposal_probability = 1.0;
        options.sync_probability = 0.3;
        options.pre_vote = false;
        options.check_quorum = false;
        options.compact_after = 1000;
    });
    let report =
        found.expect("the simulator must catch commits of earlier-term entries by counting");
    println!("caught: {report}");
}

#[test]
fn taking_a_snapshot_image_without_checking_its_term_is_caught() {
    // The simulator answers some of a leader's image requests with an image that misstates its
    // term; a leader that streams it makes a follower's log start at a position nobody
    // committed.
    let found = first_violation(SafetyFault::SnapshotTermUnchecked, 1..100, |options| {
        options.compact_after = 8;
        options.crash_probability = 0.01;
        options.partition_probability = 0.02;
        options.proposal_probability = 1.0;
    });
    let report = found.expect("the simulator must catch an image installed at a wrong term");
    println!("caught: {report}");
    assert!(
        report.contains("installed a snapshot claiming"),
        "unexpected kind of violation: {report}"
    );
}

#[test]
fn correct_core_refuses_the_misstated_images() {
    // The same settings as the image control, with the check in place, find nothing.
    let (mut taken, mut refused) = (0, 0);
    for seed in 1..12 {
        let mut options = SimOptions::from_seed(seed);
        options.compact_after = 8;
        options.crash_probability = 0.01;
        options.partition_probability = 0.02;
        options.proposal_probability = 1.0;
        let mut simulation = Simulation::new(options.clone());
        let violations = simulation.run();
        assert!(
            violations.is_empty(),
            "seed {seed} ({options}): {:?}",
            violations.first()
        );
        taken += simulation.stats.images_taken;
        refused += simulation.stats.images_refused;
    }
    assert!(
        taken > 0 && refused > 0,
        "images taken {taken}, refused {refused}"
    );
}

#[test]
fn correct_core_passes_the_same_hostile_settings() {
    // The same settings as the Figure 8 control, with the rule in place, find nothing.
    for seed in 1..40 {
        let mut options = SimOptions::from_seed(seed);
        options.nodes = 3;
        options.groups = 4;
        options.append_bytes_max = 1;
        options.crash_probability = 0.02;
        options.partition_probability = 0.03;
        options.proposal_probability = 1.0;
        options.sync_probability = 0.3;
        options.pre_vote = false;
        options.check_quorum = false;
        options.compact_after = 1000;
        let mut simulation = Simulation::new(options.clone());
        let violations = simulation.run();
        assert!(
            violations.is_empty(),
            "seed {seed} ({options}): {:?}",
            violations.first()
        );
    }
}
