//! What `tracer record` wrote inside each VM kernel while `tracer stress` forked and pinned,
//! judged as a user would judge the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod kernels;

use std::collections::HashMap;

use tracer::events::{Body, CopyFn, Event, Kind, Record};

struct Log {
    records: Vec<Record>,
    lines: Vec<String>,
}

fn load(k: &kernels::Fixture, name: &str) -> Log {
    let text = k.read(name);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let records = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Record::parse(l).unwrap_or_else(|e| panic!("{} {name}:{}: {e}", k.release, i + 1))
        })
        .collect();
    Log { records, lines }
}

fn events(log: &Log) -> impl Iterator<Item = &Event> {
    log.records.iter().filter_map(|r| match r {
        Record::Event(e) => Some(e),
        _ => None,
    })
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn record_under_stress_is_complete_and_lossless() {
    for k in kernels::all() {
        assert_eq!(k.rc("record"), 0, "{}: {}", k.release, k.read("record.err"));
        let log = load(&k, "record.jsonl");
        let Some(Record::Header(h)) = log.records.first() else {
            panic!("{}: first line is not a header", k.release)
        };
        assert_eq!(h.schema, 1);
        assert_eq!(h.kernel, k.release);
        assert!(
            h.probes
                .iter()
                .any(|p| p.name == "cpr_enter" && p.target == "copy_page_range")
        );
        let Some(Record::Summary(s)) = log.records.last() else {
            panic!("{}: last line is not a summary", k.release)
        };
        // Every line is of a kind the schema knows (hugetlb copies included).
        assert!(
            !log.records.iter().any(|r| matches!(r, Record::Unknown(_))),
            "{}: lines of unknown kinds",
            k.release
        );
        // Every value was read.
        assert!(
            events(&log).all(|e| e.body.seq().is_some()),
            "{}: events with an unreadable seq",
            k.release
        );
        let aux = 0;
        let n_events = events(&log).count() as u64;
        assert_eq!(
            s.events,
            n_events + aux,
            "{}: summary counts every event line",
            k.release
        );
        assert!(
            s.lost.values().all(|&n| n == 0),
            "{}: lost {:?}",
            k.release,
            s.lost
        );
        assert!(
            !log.records.iter().any(|r| matches!(r, Record::Lost { .. })),
            "{}: lost lines",
            k.release
        );
        assert!(n_events > 100, "{}: only {n_events} events", k.release);
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn copy_page_range_windows_pair_up_and_advance_by_two_for_cow() {
    for k in kernels::all() {
        let log = load(&k, "record.jsonl");
        // tid -> the open cpr_enter (cow, seq)
        let mut open: HashMap<u32, (bool, u32)> = HashMap::new();
        let (mut pairs, mut advanced, mut cow_zero) = (0, 0, 0);
        for e in events(&log) {
            match e.body {
                Body::CopyEnter {
                    func: CopyFn::Cpr,
                    cow,
                    seq: Some(seq),
                    ..
                } => {
                    assert_eq!(
                        seq % 2,
                        0,
                        "{}: odd seq {seq} at cpr_enter: {e:?}",
                        k.release
                    );
                    assert!(
                        open.insert(e.tid, (cow, seq)).is_none(),
                        "{}: nested cpr_enter on tid {}",
                        k.release,
                        e.tid
                    );
                }
                Body::CopyExit {
                    func: CopyFn::Cpr,
                    seq: Some(seq),
                    ..
                } => {
                    let (cow, enter) = open
                        .remove(&e.tid)
                        .unwrap_or_else(|| panic!("{}: cpr_exit without enter: {e:?}", k.release));
                    let delta = seq.wrapping_sub(enter);
                    assert!(
                        delta == 0 || (delta == 2 && cow),
                        "{}: seq moved by {delta} across copy_page_range (cow={cow})",
                        k.release
                    );
                    pairs += 1;
                    if delta == 2 {
                        advanced += 1;
                    } else if cow {
                        cow_zero += 1;
                    }
                }
                _ => {}
            }
        }
        assert!(
            pairs > 50,
            "{}: only {pairs} copy_page_range windows",
            k.release
        );
        assert!(
            advanced > 0,
            "{}: no COW copy advanced the seqcount",
            k.release
        );
        // COW VMAs without an anon_vma copy nothing; both outcomes must be seen in a fork.
        let _ = cow_zero;
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn the_workload_pins_through_gup_fast_with_foll_pin() {
    for k in kernels::all() {
        let log = load(&k, "record.jsonl");
        let pins: Vec<&Event> = events(&log)
            .filter(|e| matches!(e.body, Body::GupEnter { pin: true, .. }) && e.comm == "tracer")
            .collect();
        assert!(
            pins.len() > 10,
            "{}: only {} FOLL_PIN GUP-fast calls by the workload",
            k.release,
            pins.len()
        );
        // Every PIN entry has a matching exit on its tid.
        let exits = events(&log)
            .filter(|e| matches!(e.body, Body::GupExit { .. }) && e.comm == "tracer")
            .count();
        assert!(
            exits >= pins.len(),
            "{}: {exits} exits for {} pins",
            k.release,
            pins.len()
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn default_log_has_no_kernel_pointers_and_raw_pointers_adds_them() {
    let kernel_addr = |s: &str| {
        s.match_indices("0xffff").any(|(i, _)| {
            s[i + 2..]
                .chars()
                .take(16)
                .filter(char::is_ascii_hexdigit)
                .count()
                == 16
        }) || s.contains("\"mm_addr\"")
    };
    for k in kernels::all() {
        let log = load(&k, "record.jsonl");
        for (i, l) in log.lines.iter().enumerate() {
            assert!(
                !kernel_addr(l),
                "{} record.jsonl:{}: kernel pointer: {l}",
                k.release,
                i + 1
            );
        }
        assert_eq!(k.rc("raw"), 0);
        let raw = load(&k, "raw.jsonl");
        assert!(
            events(&raw).all(|e| e.mm_addr.is_some_and(|a| a >> 56 == 0xff)),
            "{}: --raw-pointers shows no mm_addr",
            k.release
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn mm_names_are_stable_within_a_lifetime() {
    for k in kernels::all() {
        let log = load(&k, "record.jsonl");
        // The stress process forks many children; its own mm keeps one name for the whole run,
        // while each child mm (exited and freed) is a different name.
        let mut by_pid: HashMap<u32, std::collections::HashSet<&str>> = HashMap::new();
        for e in events(&log) {
            if matches!(
                e.body,
                Body::CopyEnter {
                    func: CopyFn::Cpr,
                    ..
                }
            ) {
                by_pid.entry(e.pid).or_default().insert(e.mm.as_str());
            }
        }
        for (pid, names) in by_pid {
            assert_eq!(
                names.len(),
                1,
                "{}: pid {pid} forked from mms {names:?}",
                k.release
            );
        }
    }
}

/// Events of one GUP-fast call: from a `gup_enter` to the `gup_exit` on the same tid.
fn gup_calls(log: &Log) -> Vec<Vec<&Event>> {
    let mut open: HashMap<u32, Vec<&Event>> = HashMap::new();
    let mut calls = Vec::new();
    for e in events(log) {
        match e.body {
            Body::GupEnter { .. } => {
                open.insert(e.tid, vec![e]);
            }
            Body::GupExit { .. } => {
                if let Some(mut c) = open.remove(&e.tid) {
                    c.push(e);
                    calls.push(c);
                }
            }
            Body::Site { .. } => {
                if let Some(c) = open.get_mut(&e.tid) {
                    c.push(e);
                }
            }
            _ => {}
        }
    }
    calls
}

fn site_seq(e: &Event, kind: Kind) -> Option<u32> {
    match e.body {
        Body::Site { kind: k, seq } if k == kind => seq,
        _ => None,
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn instruction_sites_observe_the_protocol_exactly() {
    for k in kernels::all() {
        let log = load(&k, "record.jsonl");
        let Some(Record::Header(h)) = log.records.first() else {
            panic!("{}: no header", k.release)
        };
        assert_eq!(
            h.extra.get("mode").and_then(|m| m.as_str()),
            Some("instruction"),
            "{}: instruction sites were not attached: {:?}",
            k.release,
            h.extra.get("missing")
        );
        for name in [
            "write_begin",
            "write_end",
            "read_begin",
            "read_retry",
            "retry_fail",
        ] {
            assert!(
                h.probes.iter().any(|p| p.name == name && p.offset > 0),
                "{}: no {name} site in {:?}",
                k.release,
                h.probes
            );
        }

        // Writers: write_begin sees an even value, its write_end (same tid, next) that + 1.
        let mut begun: HashMap<u32, u32> = HashMap::new();
        let mut sections = 0;
        for e in events(&log) {
            if let Some(v) = site_seq(e, Kind::WriteBegin) {
                assert_eq!(v % 2, 0, "{}: write_begin saw odd {v}: {e:?}", k.release);
                assert!(
                    begun.insert(e.tid, v).is_none(),
                    "{}: nested write_begin",
                    k.release
                );
            } else if let Some(v) = site_seq(e, Kind::WriteEnd) {
                let b = begun
                    .remove(&e.tid)
                    .unwrap_or_else(|| panic!("{}: write_end without begin: {e:?}", k.release));
                assert_eq!(v, b.wrapping_add(1), "{}: write_end {e:?}", k.release);
                sections += 1;
            }
        }
        assert!(
            sections > 50,
            "{}: only {sections} write sections",
            k.release
        );

        // Readers, per GUP-fast call.
        let (mut begins, mut retries, mut odd, mut changed, mut fails) = (0, 0, 0, 0, 0);
        for call in gup_calls(&log) {
            let mut begin: Option<u32> = None;
            let mut retry: Option<u32> = None;
            for e in &call {
                if let Some(v) = site_seq(e, Kind::ReadBegin) {
                    assert!(begin.is_none(), "{}: two read_begin in one call", k.release);
                    begin = Some(v);
                    begins += 1;
                    if v % 2 == 1 {
                        odd += 1;
                    }
                } else if let Some(v) = site_seq(e, Kind::ReadRetry) {
                    let b = begin.unwrap_or_else(|| {
                        panic!("{}: read_retry without read_begin: {call:?}", k.release)
                    });
                    assert_eq!(
                        b % 2,
                        0,
                        "{}: the call went on after an odd load: {call:?}",
                        k.release
                    );
                    retry = Some(v);
                    retries += 1;
                    if v != b {
                        changed += 1;
                    }
                } else if site_seq(e, Kind::RetryFail).is_some() {
                    let (b, r) = (begin.unwrap_or(0), retry.unwrap_or(0));
                    assert!(
                        retry.is_some() && r != b,
                        "{}: retry_fail without a changed retry: {call:?}",
                        k.release
                    );
                    fails += 1;
                }
            }
            if let (Some(b), Some(r)) = (begin, retry)
                && r != b
            {
                assert!(
                    call.iter().any(|e| site_seq(e, Kind::RetryFail).is_some()),
                    "{}: the seqcount changed but the call did not back out: {call:?}",
                    k.release
                );
            }
        }
        assert!(begins > 10, "{}: only {begins} read_begin", k.release);
        assert_eq!(
            begins - retries,
            odd,
            "{}: read_begin - read_retry = odd loads",
            k.release
        );
        assert_eq!(
            changed, fails,
            "{}: every changed retry backs out, no other",
            k.release
        );
        eprintln!(
            "{}: {sections} write sections, {begins} read_begin, {odd} odd, {changed} changed retries",
            k.release
        );
        assert_eq!(
            k.rc("validate"),
            0,
            "{}: {}",
            k.release,
            k.read("validate.json")
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn hugetlb_copies_take_their_own_write_section() {
    // The guest reserves huge pages and `tracer stress` forks a private hugetlb mapping, so
    // copy_page_range hands it to copy_hugetlb_page_range, whose write section (5.19+) has its
    // own pair of instruction sites.
    for k in kernels::all() {
        let log = load(&k, "record.jsonl");
        let mut windows = 0;
        // tid -> (seq at hugetlb_enter, write events seen inside: (kind, seq))
        let mut open: HashMap<u32, (u64, Vec<(Kind, u32)>)> = HashMap::new();
        for rec in &log.records {
            match rec {
                Record::Event(Event {
                    tid,
                    body:
                        Body::CopyEnter {
                            func: CopyFn::Hugetlb,
                            cow,
                            seq: Some(seq),
                            ..
                        },
                    ..
                }) => {
                    assert!(cow, "{}: a private hugetlb mapping is COW", k.release);
                    open.insert(*tid, (u64::from(*seq), Vec::new()));
                }
                Record::Event(Event {
                    tid,
                    body:
                        Body::CopyExit {
                            func: CopyFn::Hugetlb,
                            seq: Some(seq),
                            ..
                        },
                    ..
                }) => {
                    let seq = u64::from(*seq);
                    let (enter, writes) = open
                        .remove(tid)
                        .unwrap_or_else(|| panic!("{}: hugetlb exit without enter", k.release));
                    assert_eq!(
                        seq,
                        enter + 2,
                        "{}: hugetlb copy moved seq by {}",
                        k.release,
                        seq - enter
                    );
                    let want = [
                        (Kind::WriteBegin, enter as u32),
                        (Kind::WriteEnd, enter as u32 + 1),
                    ];
                    assert_eq!(
                        writes, want,
                        "{}: write sites inside the hugetlb copy",
                        k.release
                    );
                    windows += 1;
                }
                Record::Event(e) => {
                    if let Body::Site {
                        kind: kind @ (Kind::WriteBegin | Kind::WriteEnd),
                        seq: Some(seq),
                    } = e.body
                        && let Some((_, w)) = open.get_mut(&e.tid)
                    {
                        w.push((kind, seq));
                    }
                }
                _ => {}
            }
        }
        assert!(windows > 0, "{}: no hugetlb copy was traced", k.release);
        eprintln!(
            "{}: {windows} hugetlb copies, each with its write section",
            k.release
        );
    }
}

/// `record --dry-run` is what a user reads before tracing: it must name every probe the
/// recording then attached (name and target, instruction sites with their offsets), the mode
/// and the attach mode, and say how mm teardown is followed.
#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn the_dry_run_plan_lists_what_the_recording_attached() {
    for k in kernels::all() {
        assert_eq!(k.rc("plan"), 0, "{}: {}", k.release, k.read("plan.txt"));
        let plan = k.read("plan.txt");
        let log = load(&k, "record.jsonl");
        let Some(Record::Header(h)) = log.records.first() else {
            panic!("{}: record.jsonl does not start with its header", k.release)
        };
        let first = plan.lines().next().unwrap_or_default();
        let mode = h.extra["mode"].as_str().unwrap();
        let attach = h.extra["attach"].as_str().unwrap();
        assert_eq!(
            first,
            format!("kernel {}: {mode} mode (attach: {attach})", k.release),
            "{}",
            k.release
        );
        // A probe line: its name, then its target (`ret:`/`raw_tp:` say how it attaches).
        let lines: Vec<(String, String)> = plan
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (name, target) = (w.next()?, w.next()?);
                let target = target.rsplit(':').next().unwrap_or(target);
                Some((name.to_owned(), target.to_owned()))
            })
            .collect();
        for p in &h.probes {
            let want = if p.offset == 0 {
                p.target.clone()
            } else {
                format!("{}+{:#x}", p.target, p.offset)
            };
            assert!(
                lines.contains(&(p.name.clone(), want.clone())),
                "{}: the plan does not list {} at {want}:\n{plan}",
                k.release,
                p.name
            );
        }
        // Every kernel booted here has the exit_mmap tracepoint (6.1+): mm teardown is not
        // followed by a kprobe on the scheduler path.
        assert!(
            lines.contains(&("mm_free".to_owned(), "exit_mmap".to_owned())),
            "{}:\n{plan}",
            k.release
        );
    }
}

/// A call running when tracing stops is logged with what it did so far: the recorder reads
/// the calls the kernel still holds open once the programs are stopped. And a trace of a
/// system already busy when it starts and still busy when it stops counts no loss that did
/// not happen. The guest traces a
/// stress that outlives the trace with the return probes left out (the test hook
/// `TRACER_TEST_NO_RETURN_PROBES`), so each of its threads' last call is still open then.
#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn calls_open_when_tracing_stops_reach_the_log() {
    for k in kernels::all() {
        assert_eq!(
            k.rc("open_end"),
            0,
            "{}: {}",
            k.release,
            k.read("open_end.err")
        );
        let log = load(&k, "open_end.jsonl");
        let Some(Record::Header(h)) = log.records.first() else {
            panic!("{}: no header", k.release)
        };
        let returns: Vec<&str> = h
            .probes
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| n.ends_with("_exit"))
            .collect();
        assert!(
            returns.is_empty(),
            "{}: return probes {returns:?}",
            k.release
        );
        let Some(Record::Summary(s)) = log.records.last() else {
            panic!("{}: no summary", k.release)
        };
        let open = s
            .extra
            .get("open_at_end")
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("{}: summary without open_at_end", k.release));
        let evs: Vec<&Event> = events(&log).collect();
        assert_eq!(s.events, evs.len() as u64, "{}", k.release);
        // Two forking threads and the pinning threads were inside or past a call each.
        assert!(open >= 2, "{}: {open} calls open at the end", k.release);
        // The stress ran while the probes were attached and detached: hits the kernel counted
        // then, with no program attached yet or any more, are not runs the trace skipped.
        let skipped = s
            .extra
            .get("lost_by_cause")
            .and_then(|c| c.get("runs_skipped"))
            .and_then(|v| v.as_u64());
        assert_eq!(skipped, Some(0), "{}: {:?}", k.release, s.extra);
        // Without return probes an entry event reaches the log only when the thread's next
        // call reuses its slot, when the thread exits, or from the calls read at the end: every
        // run of an entry probe is an event in the log, unless counted lost or outside the
        // window (records made while the probes were attached or stopped).
        let runs = s
            .extra
            .get("runs")
            .and_then(|v| v.as_object())
            .unwrap_or_else(|| panic!("{}: summary without runs", k.release));
        let outside = s
            .extra
            .get("outside_window")
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("{}: summary without outside_window", k.release));
        for (probe, kind) in [("cpr_enter", Kind::CprEnter), ("gup_enter", Kind::GupEnter)] {
            let ran = runs
                .get(probe)
                .and_then(|v| v.as_u64())
                .unwrap_or_else(|| panic!("{}: no runs of {probe}", k.release));
            let logged = evs.iter().filter(|e| e.body.kind() == kind).count() as u64;
            let lost = s.lost.get(probe).copied().unwrap_or(0);
            assert!(
                logged <= ran && logged + lost + outside >= ran,
                "{}: {probe} ran {ran} times, {logged} events logged, {lost} lost, {outside} outside the window",
                k.release
            );
            assert!(logged > 0, "{}: no {probe} events", k.release);
        }
        eprintln!(
            "{}: {open} calls open when tracing stopped, logged last ({} events)",
            k.release,
            evs.len()
        );
    }
}
