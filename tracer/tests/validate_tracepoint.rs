//! The validator on tracepoint-mode logs (`fork`, `pin_syscall`): what the fork brackets and
//! pinning syscalls prove, and a verdict that never calls such a log clean.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod validate_common;

use std::collections::BTreeMap;

use tracer::validate::{Rule, Verdict};
use validate_common::{Log, TRACEPOINT_PROBES, intact_discovery, rules};

const MS: u64 = 1_000_000;

fn tp_log() -> Log {
    Log::with_probes(TRACEPOINT_PROBES, BTreeMap::new())
}

#[test]
fn a_consistent_tracepoint_log_is_inconclusive_and_names_what_it_could_not_check() {
    let mut l = tp_log();
    l.pin_syscall(20, "m", 0, 0, MS);
    l.wait(MS).fork(1, "m", Some(0), Some(6), true, MS);
    // A pinning syscall across the next fork: its value moved, and the fork explains it.
    l.wait(MS);
    let start = l.ts;
    l.wait(5 * MS).fork(1, "m", Some(6), Some(12), true, 2 * MS);
    l.wait(MS);
    let dur = l.ts + 10 - start;
    l.pin_syscall(21, "m", 6, 12, dur);
    l.summary();
    let r = l.report();
    assert_eq!(r.violations, vec![], "{r:#?}");
    assert_eq!(r.verdict, Verdict::Inconclusive);
    let s = &r.stats;
    assert_eq!((s.forks, s.exact_forks), (2, 2));
    assert_eq!((s.pin_syscalls, s.pin_syscalls_during_fork), (2, 1));
    assert_eq!(s.write_sections, 6);
    let by: BTreeMap<Rule, _> = r.rules.iter().map(|x| (x.rule, x)).collect();
    for unseen in [
        Rule::WriteParity,
        Rule::CopyDelta,
        Rule::OddNotBailed,
        Rule::UnprotectedOverlap,
        Rule::RetryIgnored,
    ] {
        assert!(!by[&unseen].checked, "{unseen:?}");
        assert!(
            by[&unseen]
                .why_not
                .as_ref()
                .unwrap()
                .starts_with("tracepoint mode"),
            "{unseen:?}: {:?}",
            by[&unseen].why_not
        );
        assert!(
            r.missing_evidence
                .iter()
                .any(|m| m.contains(unseen.as_str())),
            "{unseen:?} in {:?}",
            r.missing_evidence
        );
    }
    for seen in [Rule::ForkParity, Rule::SeqUnexplained, Rule::WriterOverlap] {
        assert!(by[&seen].checked, "{seen:?}");
    }
    assert_eq!(by[&Rule::ForkParity].exercised, 2);
}

#[test]
fn with_discovery_the_defect_rules_are_checked_and_the_verdict_is_still_not_clean() {
    let mut l = Log::with_probes(
        TRACEPOINT_PROBES,
        BTreeMap::from([("discovery".to_string(), intact_discovery())]),
    );
    l.fork(1, "m", Some(0), Some(2), true, MS)
        .wait(MS)
        .pin_syscall(2, "m", 2, 2, MS)
        .summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Inconclusive, "{r:#?}");
    assert!(
        r.rules
            .iter()
            .filter(|x| matches!(x.rule, Rule::Defect(_)))
            .all(|x| x.checked)
    );
}

#[test]
fn fork_parity_an_odd_value_under_the_mmap_lock_is_caught() {
    for (before, after) in [(0, 3), (1, 3), (4, 2)] {
        let mut l = tp_log();
        l.fork(1, "m", Some(before), Some(after), true, MS)
            .summary();
        let r = l.report();
        assert_eq!(
            rules(&r),
            vec![Rule::ForkParity],
            "{before}->{after}: {r:#?}"
        );
        assert_eq!(r.verdict, Verdict::Violations);
    }
}

#[test]
fn fork_parity_a_syscall_bracket_may_see_another_forks_section() {
    // Without the mmap_lock, another thread's fork of the mm may be mid-copy at either end.
    let mut l = tp_log();
    l.fork(1, "m", Some(1), Some(7), false, MS).summary();
    assert_eq!(rules(&l.report()), vec![]);
}

#[test]
fn writer_overlap_two_exact_brackets_claim_the_same_increment() {
    let mut l = tp_log();
    l.fork(1, "m", Some(0), Some(4), true, MS)
        .fork(2, "m", Some(2), Some(6), true, MS)
        .summary();
    assert!(rules(&l.report()).contains(&Rule::WriterOverlap));
    // The same with wider brackets is legal: two forks' syscalls may overlap.
    let mut l = tp_log();
    l.fork(1, "m", Some(0), Some(4), false, MS)
        .fork(2, "m", Some(0), Some(6), false, MS)
        .summary();
    assert_eq!(rules(&l.report()), vec![]);
}

#[test]
fn seq_unexplained_a_pinning_syscall_sees_a_move_no_fork_made() {
    let mut l = tp_log();
    l.fork(1, "m", Some(0), Some(2), true, MS)
        .wait(10 * MS)
        .pin_syscall(2, "m", 2, 4, MS)
        .summary();
    assert_eq!(rules(&l.report()), vec![Rule::SeqUnexplained]);
}

#[test]
fn seq_unexplained_a_value_read_before_the_fork_could_have_made_it() {
    let mut l = tp_log();
    l.pin_syscall(2, "m", 0, 0, MS);
    // This syscall read 4 at its entry, 20 ms before the fork that reaches 4 began.
    l.wait(30 * MS);
    let entered = 30 * MS;
    l.fork(1, "m", Some(0), Some(4), true, MS);
    l.wait(MS).pin_syscall(3, "m", 4, 4, entered);
    l.summary();
    assert_eq!(
        rules(&l.report()),
        vec![Rule::SeqUnexplained],
        "{:#?}",
        l.report()
    );
}

#[test]
fn a_fork_with_no_value_before_it_restarts_the_mms_history() {
    // Its syscall began before the trace: the increments it made are unknown.
    let mut l = tp_log();
    l.pin_syscall(2, "m", 0, 0, MS)
        .wait(MS)
        .fork(1, "m", None, Some(8), false, MS)
        .wait(MS)
        .pin_syscall(2, "m", 8, 8, MS)
        .summary();
    let r = l.report();
    assert_eq!(rules(&r), vec![], "{r:#?}");
    assert_eq!(r.stats.unreadable_seq, 1);
}
