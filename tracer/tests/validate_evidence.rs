//! The verdict needs evidence: what a log lacks keeps it from `clean`, a defect discovery proved
//! in the kernel's code is a violation whatever the run shows, and a partial discovery (write
//! sites in one copy function, function-level windows in the other) never turns into false
//! violations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod validate_common;

use std::collections::BTreeMap;

use tracer::{
    events::{CopyFn, Kind},
    sites::Defect,
    validate::{Report, Rule, Verdict},
};
use validate_common::{ALL_PROBES, FUNCTION_PROBES, Log, intact_discovery, rules};

/// A fork's copy with its write section, then a PIN GUP-fast call through the read sites.
fn evidence(l: &mut Log) {
    l.cpr_enter(1, "m", 0, true)
        .wb(1, "m", 0)
        .we(1, "m", 1)
        .cpr_exit(1, "m", 2)
        .gup_enter(20, "m", 2, true)
        .rb(20, "m", 2)
        .rr(20, "m", 2)
        .gup_exit(20, "m", 2);
}

fn missing(r: &Report, needle: &str) -> bool {
    r.missing_evidence.iter().any(|m| m.contains(needle))
}

fn rule(r: &Report, rule: Rule) -> &tracer::validate::RuleReport {
    r.rules.iter().find(|x| x.rule == rule).unwrap()
}

#[test]
fn a_complete_log_is_clean_with_every_rule_checked() {
    let mut l = Log::new(ALL_PROBES);
    evidence(&mut l);
    l.summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Clean, "{:?}", r.missing_evidence);
    assert!(r.rules.iter().all(|x| x.checked), "{:#?}", r.rules);
    assert_eq!(rule(&r, Rule::WriteParity).exercised, 1);
    assert_eq!(rule(&r, Rule::UnprotectedOverlap).exercised, 1);
    assert!(r.function_level.is_empty());
}

#[test]
fn an_empty_log_is_inconclusive() {
    let mut l = Log::new(ALL_PROBES);
    l.summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(missing(&r, "no write section"), "{:?}", r.missing_evidence);
    assert!(
        missing(&r, "no PIN GUP-fast call"),
        "{:?}",
        r.missing_evidence
    );
}

#[test]
fn a_log_without_read_sites_is_inconclusive_naming_them() {
    let mut l = Log::new(FUNCTION_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .cpr_exit(1, "m", 2)
        .gup_enter(20, "m", 2, true)
        .gup_exit(20, "m", 2)
        .summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(r.violations.is_empty());
    assert!(
        missing(&r, "read_begin/read_retry sites were not attached"),
        "{:?}",
        r.missing_evidence
    );
    for x in [Rule::OddNotBailed, Rule::RetryIgnored, Rule::WriteParity] {
        assert!(!rule(&r, x).checked, "{x:?}");
    }
    assert_eq!(r.function_level, vec!["copy_page_range".to_owned()]);
}

#[test]
fn a_run_without_pin_calls_is_inconclusive() {
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .wb(1, "m", 0)
        .we(1, "m", 1)
        .cpr_exit(1, "m", 2)
        .gup_enter(20, "m", 2, false)
        .gup_exit(20, "m", 2)
        .summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(
        missing(&r, "no PIN GUP-fast call"),
        "{:?}",
        r.missing_evidence
    );
}

fn defect_header(defect: &str) -> BTreeMap<String, serde_json::Value> {
    let mut d = intact_discovery();
    d["sides"]["read"] = serde_json::json!(defect);
    d["functions"][1]["status"] = serde_json::json!("defect");
    d["functions"][1]["defects"] = serde_json::json!([{
        "defect": defect,
        "why": "the value loaded at +0x149 is never tested for oddness",
        "evidence": [{"offset": 0x149, "insn": "mov 0x138(%rax),%eax", "note": "read_begin"}],
    }]);
    BTreeMap::from([("discovery".to_owned(), d)])
}

#[test]
fn a_defect_in_the_header_is_a_violation_even_when_the_run_shows_none() {
    let mut l = Log::with_extra(ALL_PROBES, defect_header("odd_check_missing"));
    evidence(&mut l);
    l.summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Violations);
    assert_eq!(rules(&r), vec![Rule::Defect(Defect::OddCheckMissing)]);
    let v = &r.violations[0];
    assert_eq!(v.line, 1, "located at the header");
    assert!(v.message.contains("gup_fast_fallback"), "{}", v.message);
    assert!(v.message.contains("+0x149"), "evidence: {}", v.message);
    assert_eq!(r.defects.len(), 1);
    assert_eq!(r.defects[0].defect, Defect::OddCheckMissing);
    assert_eq!(
        r.stats.violations_by_rule[&Rule::Defect(Defect::OddCheckMissing)],
        1
    );
}

#[test]
fn an_unknown_function_and_a_missing_discovery_are_inconclusive() {
    let mut d = intact_discovery();
    d["sides"]["write"] = serde_json::json!("unknown");
    d["functions"][0]["status"] = serde_json::json!("unknown");
    d["functions"][0]["reason"] = serde_json::json!("ambiguous: 3 increments");
    let mut l = Log::with_extra(ALL_PROBES, BTreeMap::from([("discovery".into(), d)]));
    evidence(&mut l);
    l.summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(
        missing(
            &r,
            "could not classify copy_page_range (ambiguous: 3 increments)"
        ),
        "{:?}",
        r.missing_evidence
    );

    let mut l = Log::with_extra(ALL_PROBES, BTreeMap::new());
    evidence(&mut l);
    l.summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(
        missing(&r, "carries no discovery"),
        "{:?}",
        r.missing_evidence
    );
    assert!(!rule(&r, Rule::Defect(Defect::RetryStale)).checked);
}

#[test]
fn calls_open_at_the_end_are_judged() {
    // An odd load whose call never ended: it may yet go on to the retry.
    let mut l = Log::new(ALL_PROBES);
    evidence(&mut l);
    l.cpr_enter(1, "m", 2, true).wb(1, "m", 2);
    l.gup_enter(21, "m", 3, true).rb(21, "m", 3).summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert_eq!(r.stats.unsettled, 2, "the open call and the open section");
    assert!(missing(&r, "still open when the log ended"));

    // A changed retry that already backed out is settled: a protected overlap.
    let mut l = Log::new(ALL_PROBES);
    evidence(&mut l);
    l.gup_enter(21, "m", 2, true).rb(21, "m", 2);
    l.cpr_enter(1, "m", 2, true)
        .wb(1, "m", 2)
        .we(1, "m", 3)
        .cpr_exit(1, "m", 4);
    l.rr(21, "m", 4).rf(21, "m", 4).summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Clean, "{:?}", r.missing_evidence);
    assert_eq!(r.stats.protected_overlaps, 1);
    assert_eq!(r.stats.unsettled, 0);
}

#[test]
fn an_unreadable_seq_is_missing_evidence_never_a_value() {
    // Read as 0 this retry would look changed (2 -> 0) and, with no retry_fail, ignored.
    let mut l = Log::new(ALL_PROBES);
    evidence(&mut l);
    l.gup_enter(21, "m", 2, true)
        .rb(21, "m", 2)
        .site_unreadable(Kind::ReadRetry, 21, "m")
        .gup_exit(21, "m", 2)
        .summary();
    let r = l.report();
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!(r.stats.unreadable_seq, 1);
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(missing(&r, "could not read"));
    // An unreadable write event: its increment's value is unknown, and nothing after it is
    // judged against a stale timeline.
    let mut l = Log::new(ALL_PROBES);
    evidence(&mut l);
    l.cpr_enter(1, "m", 2, true)
        .site_unreadable(Kind::WriteBegin, 1, "m")
        .we(1, "m", 3)
        .cpr_exit(1, "m", 4)
        .summary();
    let r = l.report();
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert_eq!(r.verdict, Verdict::Inconclusive);
}

#[test]
fn a_filtered_trace_cannot_be_clean() {
    let mut extra = BTreeMap::from([("discovery".to_owned(), intact_discovery())]);
    extra.insert(
        "filter".into(),
        serde_json::json!({"pid": null, "comm": "stress"}),
    );
    let mut l = Log::with_extra(ALL_PROBES, extra);
    evidence(&mut l);
    l.summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(!rule(&r, Rule::SeqUnexplained).checked);
    assert!(missing(&r, "--comm stress"), "{:?}", r.missing_evidence);
    // Without a filter (both null) the same log is clean.
    let mut extra = BTreeMap::from([("discovery".to_owned(), intact_discovery())]);
    extra.insert(
        "filter".into(),
        serde_json::json!({"pid": null, "comm": null}),
    );
    let mut l = Log::with_extra(ALL_PROBES, extra);
    evidence(&mut l);
    l.summary();
    assert_eq!(l.report().verdict, Verdict::Clean);
}

#[test]
fn a_cow_anon_copy_must_advance_seq() {
    let mut l = Log::new(ALL_PROBES);
    evidence(&mut l);
    l.copy_enter(CopyFn::Cpr, 1, "m", Some(2), true, Some(true))
        .copy_exit(CopyFn::Cpr, 1, "m", Some(2))
        .summary();
    let r = l.report();
    assert_eq!(rules(&r), vec![Rule::CopyDelta], "{:#?}", r.violations);
    assert!(r.violations[0].message.contains("anon_vma"));
    // Near misses: no anon_vma, not COW, or the log does not say.
    for (cow, anon) in [(true, Some(false)), (false, Some(true)), (true, None)] {
        let mut l = Log::new(ALL_PROBES);
        evidence(&mut l);
        l.copy_enter(CopyFn::Cpr, 1, "m", Some(2), cow, anon)
            .copy_exit(CopyFn::Cpr, 1, "m", Some(2))
            .summary();
        assert!(l.report().violations.is_empty(), "cow {cow} anon {anon:?}");
    }
}

/// Probes as the recorder lists them when discovery proved the hugetlb writer and not
/// `copy_page_range` (the clang build of issue 13), or the other way round.
fn split_probes(sited: CopyFn) -> Log {
    let writer = match sited {
        CopyFn::Cpr => "copy_page_range",
        CopyFn::Hugetlb => "copy_hugetlb_page_range",
    };
    let probes = [
        ("cpr_enter", "copy_page_range"),
        ("cpr_exit", "copy_page_range"),
        ("hugetlb_enter", "copy_hugetlb_page_range"),
        ("hugetlb_exit", "copy_hugetlb_page_range"),
        ("gup_enter", "gup_fast_fallback"),
        ("gup_exit", "gup_fast_fallback"),
        ("write_begin", writer),
        ("write_end", writer),
        ("read_begin", "gup_fast_fallback"),
        ("read_retry", "gup_fast_fallback"),
        ("retry_fail", "gup_fast_fallback"),
    ];
    Log::with_probes(
        &probes,
        BTreeMap::from([("discovery".to_owned(), intact_discovery())]),
    )
}

/// A fork of an mm with a private anon VMA and a private hugetlb VMA, and a PIN call that
/// reads seq in the middle, as each attach arrangement reports them.
fn fork_both(l: &mut Log, sited: CopyFn, seq: u32) {
    // Anon VMA: copy_page_range's own section.
    l.copy_enter(CopyFn::Cpr, 1, "m", Some(seq), true, Some(true));
    if sited == CopyFn::Cpr {
        l.wb(1, "m", seq).we(1, "m", seq + 1);
    }
    l.copy_exit(CopyFn::Cpr, 1, "m", Some(seq + 2));
    l.gup_enter(20, "m", seq + 2, true)
        .rb(20, "m", seq + 2)
        .rr(20, "m", seq + 2)
        .gup_exit(20, "m", seq + 2);
    // Hugetlb VMA: copy_page_range hands it to copy_hugetlb_page_range.
    l.copy_enter(CopyFn::Cpr, 1, "m", Some(seq + 2), true, Some(true));
    l.copy_enter(CopyFn::Hugetlb, 1, "m", Some(seq + 2), true, Some(true));
    if sited == CopyFn::Hugetlb {
        l.wb(1, "m", seq + 2).we(1, "m", seq + 3);
    }
    l.copy_exit(CopyFn::Hugetlb, 1, "m", Some(seq + 4))
        .copy_exit(CopyFn::Cpr, 1, "m", Some(seq + 4));
}

#[test]
fn write_sites_in_one_copy_function_and_windows_in_the_other_agree() {
    for sited in [CopyFn::Hugetlb, CopyFn::Cpr] {
        let mut l = split_probes(sited);
        for k in 0..20 {
            fork_both(&mut l, sited, 4 * k);
        }
        l.summary();
        let r = l.report();
        assert!(r.violations.is_empty(), "{sited:?}: {:#?}", r.violations);
        assert_eq!(
            r.verdict,
            Verdict::Clean,
            "{sited:?}: {:?}",
            r.missing_evidence
        );
        assert_eq!(r.stats.write_sections, 40, "{sited:?}: every section once");
        let other = match sited {
            CopyFn::Hugetlb => "copy_page_range",
            CopyFn::Cpr => "copy_hugetlb_page_range",
        };
        assert_eq!(r.function_level, vec![other.to_owned()], "{sited:?}");
    }
}

#[test]
fn a_real_jump_is_still_caught_with_split_coverage() {
    for sited in [CopyFn::Hugetlb, CopyFn::Cpr] {
        let mut l = split_probes(sited);
        fork_both(&mut l, sited, 0);
        // Nobody wrote in between: a load of 8 after the counter reached 4.
        l.ts += 1_000_000;
        l.gup_enter(21, "m", 8, true)
            .rb(21, "m", 8)
            .rr(21, "m", 8)
            .gup_exit(21, "m", 8)
            .summary();
        let r = l.report();
        assert_eq!(rules(&r), vec![Rule::SeqUnexplained], "{sited:?}: {r:#?}");
    }
}

#[test]
fn uncounted_losses_keep_a_trace_from_clean() {
    let mut extra = BTreeMap::from([("discovery".to_owned(), intact_discovery())]);
    extra.insert(
        "loss_accounting".into(),
        serde_json::json!({"ring": true, "kprobe_missed": false, "skipped_runs": false,
                           "why_not": "tracefs with kprobe_events is not mounted"}),
    );
    let mut l = Log::with_extra(ALL_PROBES, extra);
    evidence(&mut l);
    l.summary();
    let r = l.report();
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(
        missing(&r, "kprobe_events is not mounted"),
        "{:?}",
        r.missing_evidence
    );
    // Everything counted: clean.
    let mut extra = BTreeMap::from([("discovery".to_owned(), intact_discovery())]);
    extra.insert(
        "loss_accounting".into(),
        serde_json::json!({"ring": true, "kprobe_missed": true, "skipped_runs": true, "why_not": null}),
    );
    let mut l = Log::with_extra(ALL_PROBES, extra);
    evidence(&mut l);
    l.summary();
    assert_eq!(l.report().verdict, Verdict::Clean);
}
