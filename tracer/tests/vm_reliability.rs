//! What the reliability steps of the VM test boots left (xtask/src/test.rs RELIABILITY_SCRIPT):
//! every loss the kernel could not deliver is counted, and attaching and detaching a hundred
//! times leaves the kernel as it was found.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod kernels;

use tracer::{
    events::Record,
    validate::{Options, Verdict, validate_reader},
};

fn summary(k: &kernels::Fixture, name: &str) -> tracer::events::Summary {
    let text = k.read(name);
    let last = text.lines().last().unwrap();
    match Record::parse(last).unwrap() {
        Record::Summary(s) => s,
        r => panic!("{}: {name} ends with {r:?}", k.release),
    }
}

fn by_cause(s: &tracer::events::Summary, cause: &str) -> u64 {
    s.extra["lost_by_cause"][cause].as_u64().unwrap()
}

fn verdict(k: &kernels::Fixture, name: &str) -> tracer::validate::Report {
    validate_reader(k.read(name).as_bytes(), Options::default()).unwrap()
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn a_full_ring_is_counted_and_the_verdict_is_inconclusive() {
    for k in kernels::checked() {
        assert_eq!(
            k.rc("tiny_ring"),
            0,
            "{}: {}",
            k.release,
            k.read("tiny_ring.err")
        );
        let s = summary(&k, "tiny_ring.jsonl");
        let ring = by_cause(&s, "ring_full");
        assert!(ring > 0, "{}: a one-page ring lost nothing?", k.release);
        // The per-probe totals add up to the causes, and `lost` lines carried them.
        let total: u64 = s.lost.values().sum();
        assert_eq!(
            total,
            ring + by_cause(&s, "kprobe_missed") + by_cause(&s, "runs_skipped"),
            "{}",
            k.release
        );
        let r = verdict(&k, "tiny_ring.jsonl");
        assert_ne!(r.verdict, Verdict::Clean, "{}", k.release);
        assert_eq!(r.stats.lost, total, "{}", k.release);
        // The recorder's own last words name each losing probe and why, as the summary does.
        let err = k.read("tiny_ring.err");
        let said = err
            .lines()
            .find_map(|l| l.strip_prefix("tracer: lost: "))
            .unwrap_or_else(|| panic!("{}: losses not named on stderr: {err}", k.release));
        for (probe, n) in s.lost.iter().filter(|(_, n)| **n > 0) {
            assert!(
                said.split("; ")
                    .any(|p| p.starts_with(&format!("{probe} ("))),
                "{}: {probe} lost {n}, not named in {said:?}",
                k.release
            );
        }
        assert!(said.contains("ring buffer full"), "{}: {said}", k.release);
        eprintln!("{}: one-page ring: {ring} events lost, counted", k.release);
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn exhausted_return_probes_are_counted_as_missed() {
    for k in kernels::checked() {
        assert_eq!(
            k.rc("maxactive"),
            0,
            "{}: {}",
            k.release,
            k.read("maxactive.err")
        );
        let s = summary(&k, "maxactive.jsonl");
        let missed = by_cause(&s, "kprobe_missed");
        assert!(
            missed > 0,
            "{}: one return-probe instance for four pinning threads, yet nothing missed",
            k.release
        );
        // Only return probes run out of instances.
        for (probe, n) in &s.lost {
            if *n > 0 {
                assert!(
                    probe.ends_with("_exit") || by_cause(&s, "ring_full") > 0,
                    "{}: {probe} lost {n}",
                    k.release
                );
            }
        }
        let r = verdict(&k, "maxactive.jsonl");
        assert_eq!(r.verdict, Verdict::Inconclusive, "{}", k.release);
        assert!(r.violations.is_empty(), "{}: {:?}", k.release, r.violations);
        eprintln!(
            "{}: maxactive 1: {missed} returns missed, counted",
            k.release
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn attaching_and_detaching_leaves_nothing_behind() {
    for k in kernels::checked() {
        let n: u32 = k.read("cycles.n").trim().parse().unwrap();
        assert!(n >= 10, "{}: {n} cycles", k.release);
        let err = k.read("cycles.err");
        assert!(!err.contains("failed"), "{}: {err}", k.release);
        let before: serde_json::Value =
            serde_json::from_str(&k.read("leftovers_before.json")).unwrap();
        let after: serde_json::Value =
            serde_json::from_str(&k.read("leftovers_after.json")).unwrap();
        for key in ["bpf_programs", "bpf_maps", "kprobe_events", "kprobes"] {
            assert_eq!(
                after[key],
                before[key],
                "{}: {key} after {} attach/detach cycles",
                k.release,
                n + 3
            );
            assert_eq!(after[key], serde_json::json!([]), "{}: {key}", k.release);
        }
        let (b, a) = (
            before["mem_available_kib"].as_u64().unwrap(),
            after["mem_available_kib"].as_u64().unwrap(),
        );
        // Page cache and the slab settle; a leak of a ring buffer (4 MiB) per cycle would be
        // hundreds of MiB.
        assert!(
            a + 64 * 1024 > b,
            "{}: MemAvailable {b} KiB before, {a} KiB after",
            k.release
        );
        eprintln!(
            "{}: {} cycles, MemAvailable {b} -> {a} KiB",
            k.release,
            n + 3
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn exec_churn_keeps_every_mm_apart() {
    for k in kernels::checked() {
        assert_eq!(k.rc("churn"), 0, "{}: {}", k.release, k.read("churn.err"));
        let s = summary(&k, "churn.jsonl");
        let freed = s.extra["mm_freed"].as_u64().unwrap();
        // 800 execs each free an mm (the one they replace), and each copy by fork another.
        assert!(freed >= 800, "{}: only {freed} mms freed", k.release);
        let r = verdict(&k, "churn.jsonl");
        // A freed mm whose address is reused and kept its name would show the new mm's
        // counter (from 0) as the old one's going backwards: seq_unexplained.
        assert!(
            r.violations.is_empty(),
            "{}: {:#?}",
            k.release,
            r.violations.first()
        );
        assert!(r.stats.write_sections > 0, "{}", k.release);
        eprintln!(
            "{}: 800 execs beside stress: {freed} mms freed, {:?}",
            k.release, r.verdict
        );
    }
}

/// The lines the recorder wrote to a stderr file it shares with its workload.
fn tracer_lines(k: &kernels::Fixture, name: &str) -> Vec<String> {
    k.read(name)
        .lines()
        .filter(|l| l.starts_with("tracer:"))
        .map(str::to_owned)
        .collect()
}

fn leftovers(k: &kernels::Fixture, name: &str) -> serde_json::Value {
    serde_json::from_str(&k.read(name)).unwrap()
}

fn assert_nothing_attached(k: &kernels::Fixture, name: &str) {
    let l = leftovers(k, name);
    for key in ["bpf_programs", "bpf_maps", "kprobe_events", "kprobes"] {
        assert_eq!(
            l[key],
            serde_json::json!([]),
            "{}: {name}: {key}",
            k.release
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn every_ordinary_end_leaves_a_complete_log() {
    for k in kernels::checked() {
        for end in ["duration", "INT", "TERM", "HUP"] {
            let name = format!("end_{end}");
            let err = k.read(&format!("{name}.err"));
            assert_eq!(k.rc(&name), 0, "{}: {end}: {err}", k.release);
            assert!(!err.contains("panicked"), "{}: {end}: {err}", k.release);
            // Every line valid (a strict read), the summary last.
            let r = verdict(&k, &format!("{name}.jsonl"));
            let s = summary(&k, &format!("{name}.jsonl"));
            assert!(s.events > 0, "{}: {end}: no events", k.release);
            // The guest's shell forked `sleep` while the probes were attached one by one: what
            // they recorded before the last was attached is left out, and counted.
            assert!(s.extra["outside_window"].is_u64(), "{}: {end}", k.release);
            assert!(r.stats.summary, "{}: {end}", k.release);
            // The end stopped the workload too, before the programs were stopped.
            let status = s.extra["command_status"].as_str().unwrap_or_default();
            assert!(status.contains("SIGKILL"), "{}: {end}: {status}", k.release);
            // A trace stopped mid-fork may hold a write section still open in another process
            // (the only thing a clean stop can leave undecided); nothing else is missing.
            assert!(
                r.violations.is_empty(),
                "{}: {end}: {:#?}",
                k.release,
                r.violations
            );
            for m in &r.missing_evidence {
                assert!(
                    m.contains("still open when the log ended"),
                    "{}: {end}: {m}",
                    k.release
                );
            }
            eprintln!(
                "{}: ended by {end}: {} events, summary last, {:?}",
                k.release, s.events, r.verdict
            );
        }
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn sigkill_leaves_a_log_cut_at_most_in_its_last_line_judged_inconclusive() {
    for k in kernels::checked() {
        assert_eq!(k.rc("end_KILL"), 128 + 9, "{}", k.release);
        let text = k.read("end_KILL.jsonl");
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert!(lines.len() > 10, "{}: {} lines", k.release, lines.len());
        for (i, l) in lines.iter().enumerate() {
            let complete = l.ends_with('\n');
            assert!(
                complete || i + 1 == lines.len(),
                "{}: line {} is cut but not last",
                k.release,
                i + 1
            );
            if complete {
                tracer::events::Record::parse(l.trim_end()).unwrap_or_else(|e| {
                    panic!("{}: line {}: {e}", k.release, i + 1);
                });
            }
        }
        // The strict reader accepts it (a cut last line is skipped, not an error) and the
        // verdict names what is missing.
        let r = verdict(&k, "end_KILL.jsonl");
        assert_eq!(r.verdict, Verdict::Inconclusive, "{}", k.release);
        assert!(
            r.missing_evidence
                .iter()
                .any(|m| m.contains("no summary line")),
            "{}: {:?}",
            k.release,
            r.missing_evidence
        );
        // A killed recorder cannot remove its tracefs kprobe events; the kernel dropped its
        // programs and maps with its descriptors, and the next run removes the events.
        let killed = leftovers(&k, "leftovers_killed.json");
        assert!(
            !killed["kprobe_events"].as_array().unwrap().is_empty(),
            "{}: a SIGKILLed recorder left no kprobe events? {killed}",
            k.release
        );
        assert_eq!(
            k.rc("after_kill"),
            0,
            "{}: {}",
            k.release,
            k.read("after_kill.err")
        );
        assert_nothing_attached(&k, "leftovers_after_kill.json");
        eprintln!(
            "{}: SIGKILL: {} lines, last cut: {}, {} stale kprobe events removed by the next run",
            k.release,
            lines.len(),
            !text.ends_with('\n'),
            killed["kprobe_events"].as_array().unwrap().len()
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn write_errors_end_in_one_sentence_and_status_2() {
    for k in kernels::checked() {
        for name in ["full", "stdout_full", "tiny", "tiny_report", "tiny_export"] {
            let err = k.read(&format!("{name}.err"));
            assert_eq!(k.rc(name), 2, "{}: {name}: {err}", k.release);
            assert!(!err.contains("panicked"), "{}: {name}: {err}", k.release);
            // Warnings may come first; the error is the last line the tool wrote, said once.
            let said = tracer_lines(&k, &format!("{name}.err"));
            let last = said.last().map_or("", String::as_str);
            assert!(
                last.contains("No space left on device"),
                "{}: {name}: {err}",
                k.release
            );
            assert_eq!(
                err.matches("No space left").count(),
                1,
                "{}: {name}: said once: {err}",
                k.release
            );
            // Each cause once: no "writing the log: writing the log: ...".
            let parts: Vec<&str> = last.split(": ").collect();
            assert!(
                parts.windows(2).all(|w| w[0] != w[1]),
                "{}: {name}: a cause said twice: {last}",
                k.release
            );
            eprintln!("{}: {name}: {last}", k.release);
        }
        let size: u64 = k.read("tiny.size").trim().parse().unwrap();
        assert!(size <= 256 * 1024, "{}: {size}", k.release);
        assert_nothing_attached(&k, "leftovers_after_errors.json");
    }
}
