//! Property tests: logs generated from the model validate clean; mutated logs and logs of the
//! broken variants do not; the parser never panics and its fast path agrees with
//! `Record::parse` on every input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tracer::{
    events::Record,
    model::{
        Variant,
        generate::{GenOptions, GenStats, generate},
    },
    validate::{Options, Report, Verdict, fast::parse_event, validate_reader},
};

fn gen_log(o: &GenOptions) -> (Vec<String>, GenStats) {
    let mut out = Vec::new();
    let st = generate(&mut out, o).unwrap();
    let text = String::from_utf8(out).unwrap();
    (text.lines().map(str::to_string).collect(), st)
}

fn validate(lines: &[String]) -> Report {
    let text = lines.join("\n") + "\n";
    validate_reader(text.as_bytes(), Options::default()).unwrap()
}

/// Model logs carry exact values (no probe skew), so they can be judged without slack.
fn validate_exact(lines: &[String]) -> Report {
    let text = lines.join("\n") + "\n";
    let o = Options {
        slack_ns: 0,
        ..Options::default()
    };
    validate_reader(text.as_bytes(), o).unwrap()
}

fn opts() -> impl Strategy<Value = GenOptions> {
    (
        any::<u64>(),
        1u32..4,
        1u8..4,
        0u8..4,
        any::<bool>(),
        any::<bool>(),
        1usize..32,
    )
        .prop_map(
            |(seed, mms, writers, readers, fast_only, sites, jitter)| GenOptions {
                events: 1_500,
                seed,
                mms,
                writers,
                readers,
                variant: Variant::Correct,
                fast_only,
                instruction_sites: sites,
                jitter,
                extras: true,
            },
        )
}

/// Index of the event line whose `kind` is `k` and that `pick` selects, if any.
fn find_kind(lines: &[String], k: &str, pick: usize) -> Option<usize> {
    let needle = format!("{{\"kind\":\"{k}\"");
    let hits: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with(&needle))
        .collect();
    if hits.is_empty() {
        None
    } else {
        Some(hits[pick % hits.len()])
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn model_interleavings_validate_clean(o in opts()) {
        let (lines, st) = gen_log(&o);
        // The model itself never breaks the property in the correct protocol.
        prop_assert_eq!(st.broken_rounds, 0);
        let (loose, exact) = (validate(&lines), validate_exact(&lines));
        let text = lines.join("\n") + "\n";
        let vm = validate_reader(text.as_bytes(), Options { slack_ns: 50_000_000, ..Options::default() }).unwrap();
        // Clean needs evidence: the read sites attached and exercised, write sections seen.
        // Without them the same log is inconclusive, and says what it lacks.
        let evidence = o.instruction_sites && o.readers > 0 && exact.stats.read_begins > 0
            && exact.stats.write_sections > 0;
        for r in [&loose, &exact, &vm] {
            prop_assert_eq!(&r.violations, &vec![]);
            if evidence {
                prop_assert_eq!(r.verdict, Verdict::Clean, "{:?}", r.missing_evidence);
            } else {
                prop_assert_eq!(r.verdict, Verdict::Inconclusive);
                prop_assert!(!r.missing_evidence.is_empty());
            }
        }
        // The slack only forgives; it never changes what is counted as going right.
        prop_assert_eq!(&loose.stats, &exact.stats);
        prop_assert_eq!(&vm.stats, &exact.stats);
        let r = validate(&lines);
        prop_assert!(r.events >= o.events);
    }

    #[test]
    fn a_changed_seq_is_never_clean(o in opts(), pick in any::<usize>(), delta in 1u32..4) {
        let o = GenOptions { instruction_sites: true, readers: o.readers.max(1), ..o };
        let (mut lines, _) = gen_log(&o);
        // Any event line (not the header, not the summary).
        let i = 1 + pick % (lines.len() - 2);
        let mut rec = Record::parse(&lines[i]).unwrap();
        let Record::Event(e) = &mut rec else { panic!("line {i} is not an event") };
        let new = e.body.seq().map(|v| v.wrapping_add(delta));
        use tracer::events::Body::*;
        match &mut e.body {
            CopyEnter { seq, .. } | CopyExit { seq, .. } | GupEnter { seq, .. } | GupExit { seq, .. } | Site { seq, .. } => *seq = new,
            // Model logs are kprobe-mode logs: no tracepoint-mode events.
            Fork { .. } | PinSyscall { .. } => panic!("a model log holds no {:?}", e.body.kind()),
        }
        let mut s = String::new();
        rec.write_line(&mut s).unwrap();
        lines[i] = s.trim_end().to_string();
        // Judged exactly: with a slack, a function-level value one increment ahead is legal
        // when a write is stamped within the slack after it (timestamps are only bounds).
        prop_assert_eq!(validate_exact(&lines).verdict, Verdict::Violations);
    }

    #[test]
    fn a_dropped_write_end_is_never_clean(o in opts()) {
        let o = GenOptions { instruction_sites: true, ..o };
        let (mut lines, _) = gen_log(&o);
        // The first one: later events of its mm always follow in a log this long.
        let i = find_kind(&lines, "write_end", 0).unwrap();
        lines.remove(i);
        prop_assert_eq!(validate(&lines).verdict, Verdict::Violations);
    }

    #[test]
    fn a_dropped_retry_fail_is_never_clean(o in opts(), pick in any::<usize>()) {
        let o = GenOptions { instruction_sites: true, readers: o.readers.max(1), events: 4_000, ..o };
        let (mut lines, _) = gen_log(&o);
        // Cases without a retry_fail whose call is closed in the log are rejected (and
        // counted by proptest), never passed without an assertion.
        let i = find_kind(&lines, "retry_fail", pick);
        prop_assume!(i.is_some());
        let i = i.unwrap();
        let Record::Event(e) = Record::parse(&lines[i]).unwrap() else { panic!() };
        // Only if the call's gup_exit made it into the log.
        let closed = lines[i + 1..].iter().any(|l| {
            matches!(Record::parse(l), Ok(Record::Event(x)) if x.tid == e.tid && x.body.kind() == tracer::events::Kind::GupExit)
        });
        prop_assume!(closed);
        lines.remove(i);
        let r = validate(&lines);
        prop_assert_eq!(r.verdict, Verdict::Violations);
        prop_assert!(r.violations.iter().any(|v| v.rule == tracer::validate::Rule::RetryIgnored));
        // A value rule: a VM-sized slack does not hide it.
        let text = lines.join("\n") + "\n";
        let vm = validate_reader(text.as_bytes(), Options { slack_ns: 50_000_000, ..Options::default() }).unwrap();
        prop_assert_eq!(vm.verdict, Verdict::Violations);
    }

    #[test]
    fn broken_variants_that_break_the_property_are_flagged(
        o in opts(),
        v in prop::sample::select(vec![Variant::NoRetry, Variant::NoOddCheck]),
    ) {
        let o = GenOptions { variant: v, instruction_sites: true, readers: o.readers.max(1), events: 3_000, ..o };
        let (lines, st) = gen_log(&o);
        let r = validate_exact(&lines);
        // A kept pin taken inside a section needs an ignored retry (no-retry) or a read past an
        // odd value (no-odd-check): both are in the log.
        if st.broken_rounds > 0 {
            prop_assert_eq!(r.verdict, Verdict::Violations);
        }
    }

    #[test]
    fn fast_reader_agrees_with_record_parse_on_mutated_lines(
        o in opts(),
        pick in any::<usize>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let o = GenOptions { events: 50, ..o };
        let (lines, _) = gen_log(&o);
        let mut b = lines[pick % lines.len()].clone().into_bytes();
        for (pos, byte, op) in edits {
            let p = if b.is_empty() { 0 } else { pos % b.len() };
            // Printable ASCII keeps most mutations near the valid grammar.
            let c = 0x20 + byte % 0x5f;
            match op {
                0 if !b.is_empty() => b[p] = c,
                1 => b.insert(p, c),
                _ if !b.is_empty() => { b.remove(p); }
                _ => {}
            }
        }
        let line = String::from_utf8_lossy(&b).into_owned();
        let slow = Record::parse(&line);
        if let Some(fe) = parse_event(&line) {
            prop_assert_eq!(slow, Ok(Record::Event(fe.to_event())), "{}", line);
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(line in "\\PC{0,200}") {
        let _ = Record::parse(&line);
        let _ = parse_event(&line);
    }

    #[test]
    fn validator_never_panics_on_mutated_logs(
        o in opts(),
        cut in any::<usize>(),
        junk in "\\PC{0,40}",
    ) {
        let o = GenOptions { events: 200, ..o };
        let (lines, _) = gen_log(&o);
        let mut text = lines.join("\n").into_bytes();
        let at = cut % text.len();
        text.splice(at..at, junk.bytes());
        // Either a report or a one-line error naming a line.
        match validate_reader(&text[..], Options::default()) {
            Ok(_) => {}
            Err(e) => {
                let m = e.to_string();
                prop_assert!(!m.contains('\n'), "{}", m);
                prop_assert!(m.starts_with("line ") || m.contains("empty"), "{}", m);
            }
        }
    }
}

/// Keeps `broken_variants_that_break_the_property_are_flagged` from being vacuous: the
/// generator does reach broken rounds in logs of that size.
#[test]
fn broken_variant_logs_do_contain_broken_rounds() {
    for v in [Variant::NoRetry, Variant::NoOddCheck] {
        let o = GenOptions {
            variant: v,
            events: 3_000,
            seed: 42,
            ..GenOptions::default()
        };
        let (lines, st) = gen_log(&o);
        assert!(st.broken_rounds > 0, "{v}: {st:?}");
        assert_eq!(validate_exact(&lines).verdict, Verdict::Violations);
    }
}
