//! One hand-written log per rule: the violation is caught, and its nearest legal neighbour is
//! not flagged. Plus verdicts, reordering, lost events and the live API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod validate_common;

use tracer::{
    events::Record,
    validate::{Options, Rule, Validator, Verdict, render_text, validate_reader},
};
use validate_common::{ALL_PROBES, FUNCTION_PROBES, Log, rules};

const MS: u64 = 1_000_000;

/// A correct fork of one COW VMA on `mm` by `tid`, starting at even `s`.
fn fork_copy(l: &mut Log, tid: u32, mm: &str, s: u32) {
    l.cpr_enter(tid, mm, s, true)
        .wb(tid, mm, s)
        .we(tid, mm, s + 1)
        .cpr_exit(tid, mm, s + 2);
}

#[test]
fn a_correct_log_is_clean_and_counts_what_went_right() {
    let mut l = Log::new(ALL_PROBES);
    // A PIN call that overlaps nothing.
    l.gup_enter(20, "m", 0, true)
        .rb(20, "m", 0)
        .rr(20, "m", 0)
        .gup_exit(20, "m", 0);
    // A fork; a PIN call starting inside the write section bails on odd.
    l.cpr_enter(1, "m", 0, true).wb(1, "m", 0);
    l.gup_enter(21, "m", 1, true)
        .rb(21, "m", 1)
        .gup_exit(21, "m", 1);
    // A PIN call whose read window spans the end of the section: the retry fails.
    l.gup_enter(22, "m", 1, true);
    l.we(1, "m", 1).cpr_exit(1, "m", 2);
    l.gup_enter(23, "m", 2, true).rb(23, "m", 2);
    fork_copy(&mut l, 2, "m", 2);
    l.rr(23, "m", 4).rf(23, "m", 4).gup_exit(23, "m", 4);
    l.gup_exit(22, "m", 4);
    // FOLL_GET: no seqcount check.
    l.gup_enter(24, "m", 4, false).gup_exit(24, "m", 4);
    l.summary();
    let r = l.report();
    assert_eq!(r.violations, vec![], "{r:#?}");
    assert_eq!(r.verdict, Verdict::Clean);
    let s = &r.stats;
    assert_eq!(s.write_sections, 2);
    assert_eq!(s.pin_gup_fast, 4);
    assert_eq!(s.gup_calls, 5);
    assert_eq!(s.odd_bails, 1);
    assert_eq!(s.failed_retries, 1);
    assert_eq!(s.protected_overlaps, 2);
    assert_eq!((s.copies, s.cow_copies), (2, 2));
}

#[test]
fn write_parity_odd_begin_is_caught() {
    let mut l = Log::new(ALL_PROBES);
    l.wb(1, "m", 1).we(1, "m", 2).summary();
    assert_eq!(rules(&l.report()), vec![Rule::WriteParity]);
}

#[test]
fn write_parity_end_not_begin_plus_one_is_caught() {
    let mut l = Log::new(ALL_PROBES);
    l.wb(1, "m", 0).we(1, "m", 3).summary();
    let r = l.report();
    assert!(rules(&r).contains(&Rule::WriteParity), "{r:#?}");
    let v = r
        .violations
        .iter()
        .find(|v| v.rule == Rule::WriteParity)
        .unwrap();
    assert_eq!((v.line, v.lines.clone()), (3, vec![2, 3]));
}

#[test]
fn write_parity_end_without_begin_is_caught_but_not_at_log_start() {
    let mut l = Log::new(ALL_PROBES);
    fork_copy(&mut l, 1, "m", 0);
    l.we(1, "m", 2).summary();
    assert!(rules(&l.report()).contains(&Rule::WriteParity));
    // Near miss: the log begins inside a write section.
    let mut l = Log::new(ALL_PROBES);
    l.we(1, "m", 1).cpr_exit(1, "m", 2).summary();
    assert_eq!(l.report().violations, vec![]);
}

#[test]
fn writer_overlap_of_write_sections_is_caught() {
    let mut l = Log::new(ALL_PROBES);
    l.wb(1, "m", 0)
        .wb(2, "m", 1)
        .we(1, "m", 2)
        .we(2, "m", 3)
        .summary();
    assert!(rules(&l.report()).contains(&Rule::WriterOverlap));
    // Near misses: the same sections one after the other, or overlapping on different mms.
    let mut l = Log::new(ALL_PROBES);
    l.wb(1, "m", 0)
        .we(1, "m", 1)
        .wb(2, "m", 2)
        .we(2, "m", 3)
        .summary();
    assert_eq!(l.report().violations, vec![]);
    let mut l = Log::new(ALL_PROBES);
    l.wb(1, "a", 0)
        .wb(2, "b", 0)
        .we(1, "a", 1)
        .we(2, "b", 1)
        .summary();
    assert_eq!(l.report().violations, vec![]);
}

#[test]
fn writer_overlap_of_copy_windows_is_caught_without_write_events() {
    let mut l = Log::new(FUNCTION_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .cpr_enter(2, "m", 0, true)
        .cpr_exit(1, "m", 2)
        .cpr_exit(2, "m", 4);
    l.summary();
    assert!(rules(&l.report()).contains(&Rule::WriterOverlap));
    // Nested the other way round: the inner window closes first.
    let mut l = Log::new(FUNCTION_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .cpr_enter(2, "m", 0, true)
        .cpr_exit(2, "m", 2)
        .cpr_exit(1, "m", 4);
    l.summary();
    assert!(rules(&l.report()).contains(&Rule::WriterOverlap));
    // Near miss: overlapping windows of which only one advanced seq.
    let mut l = Log::new(FUNCTION_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .cpr_enter(2, "m", 0, false)
        .cpr_exit(2, "m", 0)
        .cpr_exit(1, "m", 2);
    l.summary();
    assert_eq!(l.report().violations, vec![]);
}

#[test]
fn copy_delta_is_caught() {
    for (cow, end) in [(false, 2), (true, 1), (true, 4), (false, 1)] {
        let mut l = Log::new(FUNCTION_PROBES);
        l.cpr_enter(1, "m", 0, cow).cpr_exit(1, "m", end).summary();
        let r = l.report();
        assert!(
            rules(&r).contains(&Rule::CopyDelta),
            "cow={cow} end={end}: {r:#?}"
        );
    }
    // Near misses: a COW VMA that needed no copy (+0), a COW copy (+2), a shared VMA (+0).
    for (cow, end) in [(true, 0), (true, 2), (false, 0)] {
        let mut l = Log::new(FUNCTION_PROBES);
        l.cpr_enter(1, "m", 0, cow).cpr_exit(1, "m", end).summary();
        assert_eq!(l.report().violations, vec![], "cow={cow} end={end}");
    }
}

#[test]
fn copy_delta_nested_hugetlb_copy_is_legal() {
    // copy_page_range -> copy_hugetlb_page_range, both probed as copies by the same thread.
    let mut l = Log::new(FUNCTION_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .cpr_enter(1, "m", 0, true)
        .cpr_exit(1, "m", 2)
        .cpr_exit(1, "m", 2);
    l.summary();
    assert_eq!(l.report().violations, vec![]);
}

#[test]
fn odd_not_bailed_is_caught() {
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", 0, true).wb(1, "m", 0);
    l.gup_enter(20, "m", 1, true)
        .rb(20, "m", 1)
        .rr(20, "m", 1)
        .gup_exit(20, "m", 1);
    l.we(1, "m", 1).cpr_exit(1, "m", 2).summary();
    let r = l.report();
    assert_eq!(rules(&r), vec![Rule::OddNotBailed]);
    assert_eq!(r.violations[0].lines, vec![5, 6]);
    assert_eq!(r.stats.odd_bails, 0);
    // Near miss: an odd load followed by the bail.
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", 0, true).wb(1, "m", 0);
    l.gup_enter(20, "m", 1, true)
        .rb(20, "m", 1)
        .gup_exit(20, "m", 1);
    l.we(1, "m", 1).cpr_exit(1, "m", 2).summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Clean);
    assert_eq!(r.stats.odd_bails, 1);
}

#[test]
fn unprotected_overlap_is_caught() {
    // A read site's probe runs after its load, so read_begin's load may precede its event.
    // Here it preceded a whole write section (the value says so), and the retry's load, which
    // follows read_begin's probe by more than the slack after the section, loaded the same
    // value: a stale read (the seqcount failed to protect the pin), also an unexplained seq.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true);
    l.ts += MS;
    fork_copy(&mut l, 1, "m", 0);
    l.ts += MS;
    l.rb(20, "m", 0)
        .rr(20, "m", 0)
        .gup_exit(20, "m", 2)
        .summary();
    let r = l.report();
    assert!(rules(&r).contains(&Rule::UnprotectedOverlap), "{r:#?}");
    let v = r
        .violations
        .iter()
        .find(|v| v.rule == Rule::UnprotectedOverlap)
        .unwrap();
    assert_eq!((v.line, v.tid, v.mm.as_str()), (8, 20, "m"));
    // read_begin and the write_begin whose increment fell between the loads.
    assert!(v.lines.contains(&7) && v.lines.contains(&4), "{v:?}");
    // Without write_* events: a whole COW copy window between the loads.
    let mut l = Log::new(&[
        "cpr_enter",
        "cpr_exit",
        "gup_enter",
        "gup_exit",
        "read_begin",
        "read_retry",
    ]);
    l.gup_enter(20, "m", 0, true);
    l.ts += MS;
    l.cpr_enter(1, "m", 0, true).cpr_exit(1, "m", 2);
    l.ts += MS;
    l.rb(20, "m", 0)
        .rr(20, "m", 0)
        .gup_exit(20, "m", 2)
        .summary();
    assert!(rules(&l.report()).contains(&Rule::UnprotectedOverlap));
}

#[test]
fn unprotected_overlap_near_misses() {
    // A whole section between the read_begin and read_retry events: the retry's load may have
    // come right after read_begin's probe, before the section (the value says it did).
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).rb(20, "m", 0);
    l.ts += MS;
    fork_copy(&mut l, 1, "m", 0);
    l.ts += MS;
    l.rr(20, "m", 0);
    l.ts += MS;
    l.gup_exit(20, "m", 2).summary();
    assert_eq!(l.report().violations, vec![]);
    // The section starts after the retry.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).rb(20, "m", 0).rr(20, "m", 0);
    fork_copy(&mut l, 1, "m", 0);
    l.gup_exit(20, "m", 2).summary();
    assert_eq!(l.report().violations, vec![]);
    // A section on another mm in between.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).rb(20, "m", 0);
    fork_copy(&mut l, 1, "other", 0);
    l.rr(20, "m", 0).gup_exit(20, "m", 0).summary();
    assert_eq!(l.report().violations, vec![]);
    // The retry saw the change: caught, counted, not a violation.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).rb(20, "m", 0);
    fork_copy(&mut l, 1, "m", 0);
    l.rr(20, "m", 2)
        .rf(20, "m", 2)
        .gup_exit(20, "m", 2)
        .summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Clean);
    assert_eq!((r.stats.failed_retries, r.stats.protected_overlaps), (1, 1));
    // A copy window that began before read_begin (its section may precede the snapshot).
    let mut l = Log::new(&[
        "cpr_enter",
        "cpr_exit",
        "gup_enter",
        "gup_exit",
        "read_begin",
        "read_retry",
    ]);
    l.cpr_enter(1, "m", 0, true)
        .gup_enter(20, "m", 2, true)
        .rb(20, "m", 2);
    l.cpr_exit(1, "m", 2)
        .rr(20, "m", 2)
        .gup_exit(20, "m", 2)
        .summary();
    assert_eq!(l.report().violations, vec![]);
}

#[test]
fn retry_ignored_is_caught_only_when_retry_fail_is_probed() {
    let body = |l: &mut Log| {
        l.gup_enter(20, "m", 0, true).rb(20, "m", 0);
        fork_copy(l, 1, "m", 0);
        l.rr(20, "m", 2).gup_exit(20, "m", 2).summary();
    };
    let mut l = Log::new(ALL_PROBES);
    body(&mut l);
    let r = l.report();
    assert_eq!(rules(&r), vec![Rule::RetryIgnored]);
    assert_eq!(r.stats.protected_overlaps, 0);
    // Near miss: the probe list has no retry_fail, so its absence proves nothing; the rule
    // is then not checked, and the verdict cannot be clean.
    let mut l = Log::new(&ALL_PROBES[..8]);
    body(&mut l);
    let r = l.report();
    assert_eq!(r.violations, vec![]);
    assert_eq!(r.verdict, Verdict::Inconclusive);
    // Nothing shows that the kernel backed out: a failed retry, not a protected overlap.
    assert_eq!(r.stats.failed_retries, 1);
    assert_eq!(r.stats.protected_overlaps, 0);
    let rr = r
        .rules
        .iter()
        .find(|x| x.rule == Rule::RetryIgnored)
        .unwrap();
    assert!(!rr.checked);
    assert!(
        rr.why_not.as_deref().unwrap().contains("retry_fail"),
        "{rr:?}"
    );
}

#[test]
fn seq_unexplained_is_caught() {
    // Backwards. (Timestamps are bounds give or take the slack: the events are 1 ms apart,
    // beyond the default 100 us.)
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 4, true);
    l.ts += MS;
    l.gup_exit(20, "m", 2).summary();
    assert_eq!(rules(&l.report()), vec![Rule::SeqUnexplained]);
    // A jump with no write section.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, false);
    l.ts += MS;
    l.gup_exit(20, "m", 2).summary();
    assert_eq!(rules(&l.report()), vec![Rule::SeqUnexplained]);
    // Within the slack of each other, the same two values are explained: the counter can
    // have been 2 then 4 (the increments before the log began).
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 4, true).gup_exit(20, "m", 2).summary();
    assert_eq!(l.report().violations, vec![]);
    // Without write_* events: a jump outside any copy window.
    let mut l = Log::new(FUNCTION_PROBES);
    fork_copy_fn(&mut l);
    l.ts += MS;
    l.gup_enter(20, "m", 4, false)
        .gup_exit(20, "m", 4)
        .summary();
    assert_eq!(rules(&l.report()), vec![Rule::SeqUnexplained]);
}

fn fork_copy_fn(l: &mut Log) {
    l.cpr_enter(1, "m", 0, true).cpr_exit(1, "m", 2);
}

#[test]
fn seq_unexplained_near_misses() {
    // Readers see the odd value and the +2 inside a COW copy window (no write_* probes).
    let mut l = Log::new(FUNCTION_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .gup_enter(20, "m", 1, false)
        .gup_exit(20, "m", 2);
    l.cpr_exit(1, "m", 2)
        .gup_enter(21, "m", 2, true)
        .gup_exit(21, "m", 2)
        .summary();
    assert_eq!(l.report().violations, vec![]);
    // The u32 counter wraps.
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", u32::MAX - 1, true)
        .wb(1, "m", u32::MAX - 1)
        .we(1, "m", u32::MAX)
        .cpr_exit(1, "m", 0)
        .summary();
    assert_eq!(l.report().violations, vec![]);
    // After lost events the state is resynchronized: no false violation, but inconclusive.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).gup_exit(20, "m", 0).lost(3);
    l.gup_enter(20, "m", 6, true).gup_exit(20, "m", 6).summary();
    let r = l.report();
    assert_eq!(r.violations, vec![]);
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert_eq!(r.stats.lost, 3);
}

#[test]
fn verdicts() {
    // Everything a clean verdict needs: a write section and a PIN call through the read sites.
    let base = |l: &mut Log| {
        fork_copy(l, 1, "m", 0);
        l.gup_enter(20, "m", 2, true)
            .rb(20, "m", 2)
            .rr(20, "m", 2)
            .gup_exit(20, "m", 2);
    };
    let mut l = Log::new(ALL_PROBES);
    base(&mut l);
    assert_eq!(l.report().verdict, Verdict::Inconclusive, "no summary");
    let mut l = Log::new(ALL_PROBES);
    base(&mut l);
    l.summary_lost(2);
    let r = l.report();
    assert_eq!((r.verdict, r.stats.lost), (Verdict::Inconclusive, 2));
    let mut l = Log::new(ALL_PROBES);
    base(&mut l);
    l.raw(r#"{"kind":"page_fault","ts":3,"x":[1,{"y":null}]}"#)
        .summary();
    let r = l.report();
    assert_eq!(
        (r.verdict, r.stats.unknown_kinds, r.events),
        (Verdict::Clean, 1, 8),
        "{:?}",
        r.missing_evidence
    );
    // Violations win over lost events.
    let mut l = Log::new(ALL_PROBES);
    l.lost(1).wb(1, "m", 1).summary();
    assert_eq!(l.report().verdict, Verdict::Violations);
}

#[test]
fn a_call_delivered_whole_at_its_return_is_not_a_clock_disagreement() {
    // The recorder writes each call as one record at its return: a GUP-fast call that a fork
    // overlapped reaches the log after the whole copy, its entry and begin load older than
    // lines before them. That is the record's design, not skewed clocks.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).rb(20, "m", 0);
    fork_copy(&mut l, 1, "m", 0);
    l.rr(20, "m", 2)
        .rf(20, "m", 2)
        .gup_exit(20, "m", 2)
        .summary();
    let in_ts_order = l.report();
    let mut lines = l.lines.clone();
    // header, gup_enter, read_begin, the copy's four, ...: move the copy ahead of the call.
    let copy: Vec<String> = lines.drain(3..7).collect();
    lines.splice(1..1, copy);
    let text = lines.join("\n") + "\n";
    let r = validate_reader(text.as_bytes(), Options::default()).unwrap();
    assert_eq!(r.verdict, Verdict::Clean);
    assert_eq!(r.stats.max_ts_inversion_ns, Some(0));
    assert_eq!(r.stats, in_ts_order.stats);
}

#[test]
fn delivery_order_is_reordered_by_ts_within_the_window() {
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).rb(20, "m", 0);
    fork_copy(&mut l, 1, "m", 0);
    l.rr(20, "m", 2)
        .rf(20, "m", 2)
        .gup_exit(20, "m", 2)
        .summary();
    let sorted = l.report();
    assert_eq!(sorted.verdict, Verdict::Clean);
    assert_eq!(sorted.stats.max_ts_inversion_ns, Some(0));
    // Reverse the events (not header/summary): still the same replay.
    let mut shuffled = l.lines.clone();
    let n = shuffled.len();
    shuffled[1..n - 1].reverse();
    let text = shuffled.join("\n") + "\n";
    let r = validate_reader(text.as_bytes(), Options::default()).unwrap();
    assert_eq!(r.verdict, Verdict::Clean);
    // 9 events 10 ns apart, reversed. Only returns say how late delivery is (a call's other
    // events travel in its record, written at the return): the GUP-fast return (80 ns) came
    // before the copy's return (50 ns).
    assert_eq!(r.stats.max_ts_inversion_ns, Some(30));
    let mut st = r.stats.clone();
    st.max_ts_inversion_ns = Some(0);
    assert_eq!(st, sorted.stats);
    // With a window of 2 the reversal exceeds it: late events are counted, not replayed.
    let r = validate_reader(
        text.as_bytes(),
        Options {
            window: 2,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(r.stats.out_of_window > 0);
    assert_ne!(r.verdict, Verdict::Clean);
}

#[test]
fn live_api_reports_violations_as_they_become_certain() {
    let mut l = Log::new(ALL_PROBES);
    l.wb(1, "m", 1).we(1, "m", 2);
    let Record::Header(h) = Record::parse(&l.lines[0]).unwrap() else {
        panic!("header")
    };
    let mut v = Validator::with_options(
        &h,
        Options {
            window: 1,
            ..Options::default()
        },
    );
    let recs: Vec<Record> = l.lines[1..]
        .iter()
        .map(|s| Record::parse(s).unwrap())
        .collect();
    // Window 1: the first event is replayed when the second arrives.
    assert_eq!(v.push(2, &recs[0]), vec![]);
    let found = v.push(3, &recs[1]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].rule, Rule::WriteParity);
    assert_eq!(v.stats().violations, 1);
    assert!(v.flush().is_empty());
    let r = v.finish();
    assert_eq!((r.verdict, r.events), (Verdict::Violations, 2));
}

#[test]
fn json_report_has_the_documented_shape() {
    let mut l = Log::new(ALL_PROBES);
    l.wb(1, "m", 1).summary();
    let r = l.report();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["verdict"], "violations");
    assert_eq!(v["events"], 1);
    assert_eq!(v["stats"]["write_sections"], 0);
    let viol = &v["violations"][0];
    for k in ["rule", "line", "ts", "mm", "tid", "message"] {
        assert!(viol.get(k).is_some(), "{k} missing in {viol}");
    }
    assert_eq!(viol["rule"], "write_parity");
    assert_eq!(viol["line"], 2);
}

fn with_slack(l: &Log, slack_ns: u64) -> tracer::validate::Report {
    validate_reader(
        l.text().as_bytes(),
        Options {
            slack_ns,
            ..Options::default()
        },
    )
    .unwrap()
}

/// A write site's probe fires on its increment, which happens at or after the event's ts and
/// before the writer's next event: until then (plus the slack) another CPU may still load the
/// old value; after that, not.
#[test]
fn slack_bounds_a_load_of_the_value_before_an_increment() {
    // A reader loads the pre-increment value between write_begin and write_end: legal at any
    // slack (the increment may not have happened yet).
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .wb(1, "m", 0)
        .gup_enter(20, "m", 0, true)
        .gup_exit(20, "m", 0);
    l.we(1, "m", 1).cpr_exit(1, "m", 2).summary();
    assert_eq!(with_slack(&l, 0).violations, vec![]);
    // Loaded 10 ns after the writer's next event: explained only by a slack of 10 ns or more.
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", 0, true).wb(1, "m", 0).we(1, "m", 1);
    l.gup_enter(20, "m", 0, true);
    l.ts += MS;
    l.gup_exit(20, "m", 2);
    l.cpr_exit(1, "m", 2).summary();
    assert_eq!(with_slack(&l, 100).violations, vec![]);
    assert_eq!(rules(&with_slack(&l, 4)), vec![Rule::SeqUnexplained]);
}

/// The 6.12 TCG case: a read_retry stamped milliseconds after a whole fork loaded the value
/// from before it. Its load happened after read_begin's probe, which precedes the fork: legal
/// at any slack.
#[test]
fn a_late_read_probe_is_judged_by_its_value() {
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 142, true).rb(20, "m", 142);
    l.ts += MS;
    for s in (142..158).step_by(2) {
        fork_copy(&mut l, 1, "m", s);
    }
    l.ts += 3 * MS;
    l.rr(20, "m", 142).gup_exit(20, "m", 158).summary();
    assert_eq!(with_slack(&l, 0).violations, vec![]);
    assert_eq!(l.report().verdict, Verdict::Clean);
}

/// Values are exact now (read sites are probed after the load): an odd read_begin followed by
/// read_retry is a violation whatever the slack, and a bail is a bail.
#[test]
fn odd_not_bailed_needs_no_slack() {
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", 0, true).wb(1, "m", 0);
    l.gup_enter(20, "m", 1, true)
        .rb(20, "m", 1)
        .we(1, "m", 1)
        .rr(20, "m", 2)
        .gup_exit(20, "m", 2);
    l.cpr_exit(1, "m", 2).summary();
    for slack in [0, 100_000, 50_000_000] {
        assert_eq!(rules(&with_slack(&l, slack)), vec![Rule::OddNotBailed]);
    }
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", 0, true).wb(1, "m", 0);
    l.gup_enter(20, "m", 1, true)
        .rb(20, "m", 1)
        .we(1, "m", 1)
        .gup_exit(20, "m", 2);
    l.cpr_exit(1, "m", 2).summary();
    let r = with_slack(&l, 50_000_000);
    assert_eq!((r.verdict, r.stats.odd_bails), (Verdict::Clean, 1));
}

/// With a VM-sized slack (50 ms) the timing rules forgive skew, but the value rules still
/// catch a broken protocol.
#[test]
fn a_big_slack_still_catches_value_violations() {
    const BIG: u64 = 50_000_000;
    // A retry that loaded a changed value, and the call ended without retry_fail.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).rb(20, "m", 0);
    fork_copy(&mut l, 1, "m", 0);
    l.rr(20, "m", 2).gup_exit(20, "m", 2).summary();
    assert_eq!(rules(&with_slack(&l, BIG)), vec![Rule::RetryIgnored]);
    // A write section that does not end one above its start.
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .wb(1, "m", 0)
        .we(1, "m", 2)
        .cpr_exit(1, "m", 3)
        .summary();
    assert!(rules(&with_slack(&l, BIG)).contains(&Rule::WriteParity));
    // The stale retry of unprotected_overlap, seconds apart.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true);
    l.ts += 1_000 * MS;
    fork_copy(&mut l, 1, "m", 0);
    l.ts += 1_000 * MS;
    l.rb(20, "m", 0)
        .rr(20, "m", 0)
        .gup_exit(20, "m", 2)
        .summary();
    assert!(rules(&with_slack(&l, BIG)).contains(&Rule::UnprotectedOverlap));
    // ... but within the slack, the same log is explained.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true);
    l.ts += MS;
    fork_copy(&mut l, 1, "m", 0);
    l.ts += MS;
    l.rb(20, "m", 0)
        .rr(20, "m", 0)
        .gup_exit(20, "m", 2)
        .summary();
    assert_eq!(with_slack(&l, BIG).violations, vec![]);
}

/// Writer overlap is judged by values: two sections whose increments interleave are caught,
/// sections that follow each other by value are not, whatever their timestamps say.
#[test]
fn writer_overlap_is_judged_by_values() {
    let mut l = Log::new(ALL_PROBES);
    // tid 2's write_begin is stamped inside tid 1's section but saw the value after its end.
    l.wb(1, "m", 0)
        .wb(2, "m", 2)
        .we(1, "m", 1)
        .we(2, "m", 3)
        .summary();
    assert_eq!(l.report().violations, vec![]);
    let mut l = Log::new(FUNCTION_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .cpr_enter(2, "m", 2, true)
        .cpr_exit(1, "m", 2)
        .cpr_exit(2, "m", 4)
        .summary();
    assert_eq!(l.report().violations, vec![]);
}

/// `lost` lines carry deltas and the summary the totals of the same losses: per probe, the
/// larger of the two, never their sum.
#[test]
fn lost_lines_and_summary_totals_are_not_added() {
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).gup_exit(20, "m", 0).lost(3);
    l.gup_enter(20, "m", 0, true).gup_exit(20, "m", 0).lost(4);
    l.summary_lost(7);
    let r = l.report();
    assert_eq!((r.verdict, r.stats.lost), (Verdict::Inconclusive, 7));
    // The summary knows of more (lost after the last line was written).
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).lost(3);
    l.gup_exit(20, "m", 0).summary_lost(5);
    assert_eq!(l.report().stats.lost, 5);
    // Lines of another probe than the summary's: both count.
    let mut l = Log::new(ALL_PROBES);
    l.lost_probe("write_begin", 2);
    l.gup_enter(20, "m", 0, true).summary_lost(5);
    assert_eq!(l.report().stats.lost, 7);
    // Before the summary, the lines' sum.
    let mut l = Log::new(ALL_PROBES);
    l.lost(3).gup_enter(20, "m", 0, true).lost(4);
    assert_eq!(l.report().stats.lost, 7);
}

/// A `lost` line is written when the recorder notices the loss, possibly a ring buffer's
/// worth of events before the gap is delivered. A later jump by no more increments than the
/// lost write events can make is explained; a larger one is not.
#[test]
fn a_jump_is_explained_by_lost_write_events_even_after_the_lost_line() {
    let body = |l: &mut Log, lost: u64| {
        l.lost_probe("write_begin", lost)
            .lost_probe("write_end", lost);
        fork_copy(l, 1, "m", 0);
        fork_copy(l, 1, "m", 2);
        // Two sections (four increments) lost here.
        l.ts += 1_000 * MS;
        fork_copy(l, 1, "m", 8);
        l.summary();
    };
    let mut l = Log::new(ALL_PROBES);
    body(&mut l, 2);
    let r = l.report();
    assert_eq!(
        (r.verdict, r.violations.len()),
        (Verdict::Inconclusive, 0),
        "{r:#?}"
    );
    assert_eq!(r.stats.explained_by_loss, 1);
    let mut l = Log::new(ALL_PROBES);
    body(&mut l, 1);
    assert_eq!(rules(&l.report()), vec![Rule::SeqUnexplained]);
}

/// Likewise a write section missing its write_end, when write_end events were lost, and an
/// odd read_begin followed by a retry, when read_begin events were lost (the retry may be a
/// later call's). Without those losses, the same logs are violations.
#[test]
fn missing_events_of_a_lost_kind_are_explained() {
    let body = |l: &mut Log, probe: &str| {
        l.lost_probe(probe, 1);
        l.cpr_enter(1, "m", 0, true).wb(1, "m", 0);
        l.gup_enter(20, "m", 1, true).rb(20, "m", 1);
        l.ts += 1_000 * MS;
        l.rr(20, "m", 2).gup_exit(20, "m", 2);
        l.cpr_exit(1, "m", 2);
        l.cpr_enter(1, "m", 2, true).wb(1, "m", 2).we(1, "m", 3);
        l.cpr_exit(1, "m", 4).summary();
    };
    let mut l = Log::new(ALL_PROBES);
    body(&mut l, "gup_exit");
    // The missing write_end is also a missing increment (1 -> 2).
    assert_eq!(
        rules(&l.report()),
        vec![Rule::WriteParity, Rule::OddNotBailed, Rule::SeqUnexplained]
    );
    let mut l = Log::new(ALL_PROBES);
    body(&mut l, "write_end");
    assert_eq!(rules(&l.report()), vec![Rule::OddNotBailed]);
    let mut l = Log::new(ALL_PROBES);
    body(&mut l, "read_begin");
    let r = l.report();
    assert_eq!(rules(&r), vec![Rule::WriteParity, Rule::SeqUnexplained]);
    assert_eq!(r.stats.explained_by_loss, 1);
}

/// The recorder writes its own estimate of the timestamp uncertainty into the header
/// (`clock_slack_ns`: 50 ms under a hypervisor); without `--slack-ns` the validator uses it.
#[test]
fn the_header_clock_slack_is_the_default() {
    // A function-level read stamped 5 ms after the increment past the value it read: skew a
    // VM produces, too much for bare metal.
    let mut l = Log::new(ALL_PROBES);
    fork_copy(&mut l, 1, "m", 0);
    l.ts += 5 * MS;
    l.gup_enter(20, "m", 0, true).gup_exit(20, "m", 2).summary();
    let plain = l.text();
    let vm = plain.replacen(
        "{\"kind\":\"header\",",
        "{\"kind\":\"header\",\"clock_slack_ns\":50000000,",
        1,
    );
    assert_ne!(plain, vm);
    let judge = |text: &str, o: Options| validate_reader(text.as_bytes(), o).unwrap();
    assert_eq!(
        rules(&judge(&plain, Options::default())),
        vec![Rule::SeqUnexplained]
    );
    assert_eq!(judge(&vm, Options::default()).violations, vec![]);
    // An explicit slack (the CLI's --slack-ns) wins over the header's.
    let explicit = Options {
        slack_ns: 100_000,
        header_slack: false,
        ..Options::default()
    };
    assert_eq!(rules(&judge(&vm, explicit)), vec![Rule::SeqUnexplained]);
}

/// A loss is often counted after the gap it left (kprobe misses are read every half second):
/// findings it can explain wait for its `lost` line, up to LOSS_REPORT_LAG_NS of log time.
#[test]
fn a_lost_line_after_the_gap_still_explains_it() {
    let body = |l: &mut Log, gap_to_line_ns: u64| {
        fork_copy(l, 1, "m", 0);
        // A whole fork lost here (its write_begin/write_end were missed): seq jumps 2 -> 4.
        l.ts += 10 * MS;
        l.gup_enter(20, "m", 4, true)
            .rb(20, "m", 4)
            .rr(20, "m", 4)
            .gup_exit(20, "m", 4);
        l.ts += gap_to_line_ns;
        fork_copy(l, 1, "m", 4);
        l.lost_probe("write_begin", 1).lost_probe("write_end", 1);
        l.summary();
    };
    let mut l = Log::new(ALL_PROBES);
    body(&mut l, 1_000 * MS);
    let r = l.report();
    assert_eq!(r.violations, vec![], "{r:#?}");
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert_eq!(r.stats.explained_by_loss, 1);
    // Beyond the lag, the finding was reported before the loss was known.
    let mut l = Log::new(ALL_PROBES);
    body(&mut l, tracer::validate::LOSS_REPORT_LAG_NS + 1_000 * MS);
    assert_eq!(rules(&l.report()), vec![Rule::SeqUnexplained]);
}

#[test]
fn delivery_order_is_unknown_without_events_written_at_their_time() {
    // Entries and sites only (no return probes fired): nothing says how late delivery was.
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).rb(20, "m", 0).summary();
    let r = l.report();
    assert_eq!(r.stats.max_ts_inversion_ns, None);
    let text = render_text(&r);
    assert!(text.contains("delivery order was not measured"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["stats"]["max_ts_inversion_ns"].is_null(), "{json}");
}
