//! Exports of model-generated logs and of the logs recorded in the VM kernels: the Perfetto
//! timeline is valid trace-event JSON whose slices are the log's pairs and whose violation
//! marks are `validate`'s; the CSV has one row per event and gives the log's values back; the
//! report's charts render to PNGs that are not blank, and its Markdown shows each one.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod kernels;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use tracer::{
    events::{Body, Event, Kind, Record},
    model::{
        Variant,
        generate::{GenOptions, generate},
    },
    validate::{Options, validate_reader},
};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tracer-export-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model_log(dir: &Path, name: &str, o: &GenOptions) -> PathBuf {
    let mut out = Vec::new();
    generate(&mut out, o).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, out).unwrap();
    p
}

fn records(p: &Path) -> Vec<(u64, Record)> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i as u64 + 1, Record::parse(l).unwrap()))
        .collect()
}

fn events(recs: &[(u64, Record)]) -> impl Iterator<Item = (u64, &Event)> {
    recs.iter().filter_map(|(n, r)| match r {
        Record::Event(e) => Some((*n, e)),
        _ => None,
    })
}

fn run(args: &[&str]) -> std::process::Output {
    let o = Command::new(TRACER).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "tracer {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The log's pairs, counted independently of the exporter: per thread, copy entries and exits
/// of the same function (innermost first), write_begin/write_end, gup_enter/gup_exit.
fn pairs(recs: &[(u64, Record)]) -> (u64, u64, u64) {
    let (mut copies, mut writes, mut calls) = (0, 0, 0);
    let mut open_copy: HashMap<u32, Vec<Kind>> = HashMap::new();
    let mut open_write: HashMap<u32, bool> = HashMap::new();
    let mut open_call: HashMap<u32, bool> = HashMap::new();
    for (_, e) in events(recs) {
        let k = e.body.kind();
        match k {
            Kind::CprEnter | Kind::HugetlbEnter => open_copy.entry(e.tid).or_default().push(k),
            Kind::CprExit | Kind::HugetlbExit => {
                let want = if k == Kind::CprExit {
                    Kind::CprEnter
                } else {
                    Kind::HugetlbEnter
                };
                let s = open_copy.entry(e.tid).or_default();
                if let Some(i) = s.iter().rposition(|x| *x == want) {
                    s.remove(i);
                    copies += 1;
                }
            }
            Kind::WriteBegin => {
                open_write.insert(e.tid, true);
            }
            Kind::WriteEnd if open_write.remove(&e.tid).is_some() => writes += 1,
            Kind::GupEnter => {
                open_call.insert(e.tid, true);
            }
            Kind::GupExit if open_call.remove(&e.tid).is_some() => calls += 1,
            _ => {}
        }
    }
    (copies, writes, calls)
}

/// Checks the trace-event JSON a person would open in Perfetto, and returns its events.
fn check_trace(path: &Path, log: &Path, slack: Option<u64>) -> Vec<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let evs = v["traceEvents"].as_array().expect("a traceEvents array");
    assert!(!evs.is_empty());
    let mut depth: HashMap<(u64, u64), i64> = HashMap::new();
    for e in evs {
        let ph = e["ph"].as_str().unwrap_or_else(|| panic!("no ph: {e}"));
        assert!(
            ["X", "B", "E", "i", "C", "M"].contains(&ph),
            "unknown phase {ph}: {e}"
        );
        assert!(e["pid"].is_u64(), "pid: {e}");
        assert!(e["name"].is_string(), "name: {e}");
        if ph != "C" {
            assert!(e["tid"].is_u64(), "tid: {e}");
        }
        if ph != "M" {
            // Microseconds since boot: a number, not a string, never negative.
            let ts = e["ts"].as_f64().unwrap_or_else(|| panic!("ts: {e}"));
            assert!(ts >= 0.0, "{e}");
        }
        match ph {
            "X" => assert!(e["dur"].as_f64().is_some_and(|d| d >= 0.0), "dur: {e}"),
            "i" => assert!(["t", "p", "g"].contains(&e["s"].as_str().unwrap()), "{e}"),
            "B" | "E" => {
                let k = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap());
                let d = depth.entry(k).or_default();
                *d += if ph == "B" { 1 } else { -1 };
                assert!(*d >= 0, "E without B: {e}");
            }
            _ => {}
        }
    }
    assert!(depth.values().all(|d| *d == 0), "unbalanced B/E");
    // Slices are the log's pairs.
    let recs = records(log);
    let count = |cat: &str| {
        evs.iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == cat)
            .count() as u64
    };
    let (copies, writes, calls) = pairs(&recs);
    assert_eq!(count("copy"), copies, "copy slices");
    assert_eq!(count("write_section"), writes, "write-section slices");
    assert_eq!(count("gup_fast"), calls, "GUP-fast slices");
    // Violation marks are what `validate` reports, line for line.
    let opts = Options {
        slack_ns: slack.unwrap_or(tracer::validate::DEFAULT_SLACK_NS),
        header_slack: slack.is_none(),
        ..Options::default()
    };
    let report = validate_reader(std::fs::File::open(log).unwrap(), opts).unwrap();
    let mut marks: Vec<(String, u64)> = evs
        .iter()
        .filter(|e| e["cat"] == "violation")
        .map(|e| {
            assert_eq!(e["s"], "g", "violations are global marks");
            (
                e["args"]["rule"].as_str().unwrap().to_owned(),
                e["args"]["line"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want: Vec<(String, u64)> = report
        .violations
        .iter()
        .map(|v| (v.rule.as_str().to_owned(), v.line))
        .collect();
    marks.sort();
    want.sort();
    assert_eq!(marks, want, "violation marks");
    let overlaps = evs
        .iter()
        .filter(|e| e["cat"] == "protected_overlap")
        .count() as u64;
    assert_eq!(overlaps, report.stats.protected_overlaps, "overlap marks");
    // Names and the kernel.
    assert!(
        evs.iter()
            .any(|e| e["ph"] == "M" && e["name"] == "thread_name")
    );
    assert!(
        evs.iter()
            .any(|e| e["ph"] == "M" && e["name"] == "process_name" && e["pid"] == 0)
    );
    assert_eq!(
        v["metadata"]["verdict"].as_str(),
        Some(report.verdict.as_str())
    );
    evs.clone()
}

#[test]
fn perfetto_of_model_logs_is_valid_and_matches_the_log() {
    let dir = tmp("perfetto-model");
    for (name, o) in [
        ("correct.jsonl", GenOptions::default()),
        (
            "no-retry.jsonl",
            GenOptions {
                variant: Variant::NoRetry,
                events: 3_000,
                seed: 42,
                ..GenOptions::default()
            },
        ),
        (
            "function-level.jsonl",
            GenOptions {
                instruction_sites: false,
                jitter: 8,
                ..GenOptions::default()
            },
        ),
    ] {
        let log = model_log(&dir, name, &o);
        let out = dir.join(format!("{name}.json"));
        run(&[
            "export",
            log.to_str().unwrap(),
            "--format",
            "perfetto",
            "--slack-ns",
            "0",
            "-o",
            out.to_str().unwrap(),
        ]);
        let evs = check_trace(&out, &log, Some(0));
        let violations = evs.iter().filter(|e| e["cat"] == "violation").count();
        if o.variant == Variant::NoRetry {
            assert!(
                violations > 0,
                "{name}: the broken variant shows violations"
            );
        }
        if o.instruction_sites {
            // Loads are instants carrying the value, on the calls' tracks.
            assert!(evs.iter().any(|e| e["ph"] == "i"
                && e["name"].as_str().is_some_and(|n| n.starts_with("read_"))
                && e["args"]["seq"].is_u64()));
        }
        // A seq counter per mm.
        assert!(evs.iter().any(|e| {
            e["ph"] == "C"
                && e["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("write_protect_seq "))
        }));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn perfetto_of_the_vm_logs_is_valid() {
    for k in kernels::all() {
        let dir = tmp(&format!("perfetto-{}", k.release));
        let log = k.path("record.jsonl");
        let out = dir.join("trace.json");
        run(&[
            "export",
            log.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--slack-ns",
            "50000000",
        ]);
        let evs = check_trace(&out, &log, Some(50_000_000));
        // The real kernel's forks and pins are there.
        assert!(
            evs.iter().any(|e| e["cat"] == "write_section"),
            "{}",
            k.release
        );
        assert!(evs.iter().any(|e| e["cat"] == "gup_fast"), "{}", k.release);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// CSV rows back into (line, kind, seq, ts, comm) to compare with the log.
fn csv_rows(p: &Path) -> (Vec<String>, Vec<csv::StringRecord>) {
    let mut r = csv::Reader::from_path(p).unwrap();
    let head = r.headers().unwrap().iter().map(str::to_owned).collect();
    (head, r.records().map(Result::unwrap).collect())
}

fn check_csv(log: &Path, out: &Path) {
    let (head, rows) = csv_rows(out);
    assert_eq!(head, tracer::export::csv::COLUMNS);
    let recs = records(log);
    let evs: Vec<(u64, &Event)> = events(&recs).collect();
    assert_eq!(rows.len(), evs.len(), "one row per event");
    let col = |name: &str| head.iter().position(|h| h == name).unwrap();
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for (row, (line, e)) in rows.iter().zip(&evs) {
        assert_eq!(row[col("line")].parse::<u64>().unwrap(), *line);
        assert_eq!(&row[col("kind")], e.body.kind().as_str());
        assert_eq!(row[col("ts_ns")].parse::<u64>().unwrap(), e.ts);
        assert_eq!(&row[col("comm")], e.comm);
        assert_eq!(&row[col("mm")], e.mm);
        let seq = &row[col("seq")];
        assert_eq!(
            e.body.seq(),
            (!seq.is_empty()).then(|| seq.parse().unwrap())
        );
        if let Body::GupEnter {
            nr_pages, flags, ..
        } = &e.body
        {
            assert_eq!(row[col("nr_pages")].parse::<u64>().unwrap(), *nr_pages);
            assert_eq!(row[col("flags")], format!("{flags:#x}"));
        }
        *by_kind.entry(row[col("kind")].to_owned()).or_default() += 1;
    }
    // The counts round-trip.
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (_, e) in &evs {
        *want.entry(e.body.kind().as_str().to_owned()).or_default() += 1;
    }
    assert_eq!(by_kind, want);
}

#[test]
fn csv_has_one_row_per_event_and_gives_the_values_back() {
    let dir = tmp("csv");
    let log = model_log(
        &dir,
        "m.jsonl",
        &GenOptions {
            extras: true,
            ..GenOptions::default()
        },
    );
    let out = dir.join("m.csv");
    run(&[
        "export",
        log.to_str().unwrap(),
        "--format",
        "csv",
        "-o",
        out.to_str().unwrap(),
    ]);
    check_csv(&log, &out);
    // A comm with a comma and a quote survives the quoting.
    let tricky = dir.join("tricky.jsonl");
    let text = std::fs::read_to_string(&log)
        .unwrap()
        .replace("\"comm\":\"", "\"comm\":\"a,\\\"b ");
    std::fs::write(&tricky, text).unwrap();
    let out = dir.join("tricky.csv");
    run(&[
        "export",
        tricky.to_str().unwrap(),
        "--format",
        "csv",
        "-o",
        out.to_str().unwrap(),
    ]);
    check_csv(&tricky, &out);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn csv_of_the_vm_logs_gives_the_values_back() {
    let dir = tmp("csv-vm");
    for k in kernels::all() {
        let out = dir.join(format!("{}.csv", k.release));
        let log = k.path("record.jsonl");
        run(&[
            "export",
            log.to_str().unwrap(),
            "--format",
            "csv",
            "-o",
            out.to_str().unwrap(),
        ]);
        check_csv(&log, &out);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rsvg-convert` (Debian's librsvg2-bin, installed by `cargo xtask setup`).
fn rsvg() -> Option<&'static str> {
    let found = Command::new("rsvg-convert")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        // Under `cargo xtask test` (and CI) setup has installed it: missing is a failure.
        let required = std::env::var("TRACER_REQUIRE_FIXTURES").is_ok_and(|v| v == "1")
            || std::env::var_os("CI").is_some();
        assert!(
            !required,
            "rsvg-convert is missing (cargo xtask setup installs librsvg2-bin)"
        );
        eprintln!("skipping the PNG checks: no rsvg-convert (apt-get install librsvg2-bin)");
        return None;
    }
    Some("rsvg-convert")
}

/// Renders an SVG to PNG and checks the picture is not blank: it has ink (non-white pixels)
/// in more than one colour besides the background.
fn assert_renders(svg: &Path) {
    let Some(rsvg) = rsvg() else { return };
    let png_path = svg.with_extension("png");
    let st = Command::new(rsvg)
        .arg(svg)
        .arg("-o")
        .arg(&png_path)
        .status()
        .unwrap();
    assert!(st.success(), "rsvg-convert {}", svg.display());
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut rd = dec.read_info().unwrap();
    let mut buf = vec![0; rd.output_buffer_size()];
    let info = rd.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    let mut ink = 0usize;
    for p in buf[..info.buffer_size()].chunks(px) {
        let rgb = (
            p[0],
            p.get(1).copied().unwrap_or(p[0]),
            p.get(2).copied().unwrap_or(p[0]),
        );
        let alpha = if px == 4 { p[3] } else { 255 };
        if alpha > 0 && rgb != (255, 255, 255) {
            ink += 1;
            colours.insert(rgb);
        }
    }
    let total = (info.width * info.height) as usize;
    assert!(
        ink * 200 > total,
        "{}: only {ink} of {total} pixels drawn",
        svg.display()
    );
    assert!(colours.len() > 2, "{}: one colour only", svg.display());
}

fn check_report(log: &Path, dir: &Path, extra: &[&str]) {
    let mut args = vec!["report", log.to_str().unwrap(), "-o", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = Command::new(TRACER).args(&args).output().unwrap();
    // The verdict is the exit status, as for `validate`; the report is written whatever it is.
    assert!(
        matches!(o.status.code(), Some(0 | 1 | 3)),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("## Verdict"), "{md}");
    for chart in tracer::export::report::CHARTS {
        assert!(md.contains(&format!("]({chart})")), "{chart} not in {md}");
        assert_renders(&dir.join(chart));
    }
}

#[test]
fn report_charts_render_and_the_markdown_shows_them() {
    let dir = tmp("report");
    let log = model_log(&dir, "m.jsonl", &GenOptions::default());
    check_report(&log, &dir.join("model"), &["--slack-ns", "0"]);
    let md = std::fs::read_to_string(dir.join("model/report.md")).unwrap();
    assert!(md.contains("**clean**"), "{md}");
    let flog = model_log(
        &dir,
        "f.jsonl",
        &GenOptions {
            instruction_sites: false,
            ..GenOptions::default()
        },
    );
    check_report(&flog, &dir.join("function"), &[]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn report_of_the_vm_logs_renders() {
    let dir = tmp("report-vm");
    for k in kernels::all() {
        check_report(
            &k.path("record.jsonl"),
            &dir.join(&k.release),
            &["--slack-ns", "50000000"],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
