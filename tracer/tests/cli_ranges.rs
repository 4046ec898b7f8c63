//! Every numeric command-line argument of every command, given values out of its range (zero,
//! negative, huge, not finite, not a number): exit status 2 and a message whose first line is
//! one sentence naming the flag, never a panic, and nothing done. The boundaries themselves are
//! accepted. Needs no kernel: a value is refused before anything is attached or read.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Command;

fn tracer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(args)
        .output()
        .unwrap()
}

/// Out-of-range values every numeric flag refuses, and the flag's own extra ones.
const ALWAYS_BAD: [&str; 6] = ["-1", "99999999999999999999999", "inf", "nan", "1e308", "x"];

/// (the command and what it needs besides the flag, the flag, its own bad values, a value at
/// its boundary that must parse).
fn table() -> Vec<(Vec<&'static str>, &'static str, Vec<&'static str>)> {
    let trace = |cmd: &'static str| -> Vec<(Vec<&'static str>, &'static str, Vec<&'static str>)> {
        vec![
            (vec![cmd], "--duration", vec!["0", "10000001"]),
            (vec![cmd], "--pid", vec!["0", "4194305"]),
            (
                vec![cmd],
                "--ring-size",
                vec!["0", "4095", "12288", "2147483648"],
            ),
            (vec![cmd], "--maxactive", vec!["0", "4097"]),
        ]
    };
    let judge =
        |cmd: Vec<&'static str>| -> Vec<(Vec<&'static str>, &'static str, Vec<&'static str>)> {
            vec![
                (cmd.clone(), "--window", vec!["0", "16777217"]),
                (cmd, "--slack-ns", vec!["1000000000001"]),
            ]
        };
    let mut t = Vec::new();
    t.extend(trace("record"));
    t.extend(trace("tui"));
    t.extend(judge(vec!["validate", "/dev/null"]));
    t.extend(judge(vec!["export", "/dev/null"]));
    t.extend(judge(vec!["report", "/dev/null", "-o", "/nonexistent/r"]));
    t.extend([
        (
            vec!["tui", "--replay", "/dev/null"],
            "--speed",
            vec!["0", "0.0009", "1000001"],
        ),
        (
            vec!["check", "--report", "/nonexistent/c"],
            "--duration",
            vec!["0", "86401"],
        ),
        (vec!["stress"], "--duration", vec!["0", "1000001"]),
        (vec!["stress"], "--forkers", vec!["0", "65"]),
        (vec!["stress"], "--pinners", vec!["0", "65"]),
        (vec!["stress"], "--mappings", vec!["0", "1025"]),
        (vec!["stress"], "--mapping-kib", vec!["3", "1048577"]),
        (vec!["stress"], "--pin-pages", vec!["0", "513"]),
        (vec!["stress"], "--fork-gap-us", vec!["10000001"]),
        (vec!["stress"], "--pin-gap-us", vec!["10000001"]),
        (vec!["stress"], "--seed", vec![]),
        (vec!["model", "check"], "--writers", vec!["0", "4"]),
        (vec!["model", "check"], "--readers", vec!["0", "4"]),
        (vec!["model", "generate"], "--events", vec!["10000000001"]),
        (vec!["model", "generate"], "--seed", vec![]),
        (vec!["model", "generate"], "--mms", vec!["0", "1025"]),
        (vec!["model", "generate"], "--writers", vec!["0", "17"]),
        (vec!["model", "generate"], "--readers", vec!["0", "65"]),
        (vec!["model", "generate"], "--jitter", vec!["65537"]),
        (vec!["workload", "fork"], "--duration", vec!["0", "1000001"]),
        (vec!["workload", "fork"], "--cpu", vec!["1024"]),
        (vec!["workload", "fork"], "--mappings", vec!["0", "1025"]),
        (
            vec!["workload", "fork"],
            "--mapping-kib",
            vec!["3", "65537"],
        ),
        (vec!["workload", "pin"], "--pages", vec!["0", "513"]),
    ]);
    t
}

#[test]
fn every_numeric_argument_refuses_out_of_range_values_in_one_sentence() {
    let dir = std::env::temp_dir().join(format!("tracer-cli-ranges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tried = 0;
    for (cmd, flag, own) in table() {
        for bad in ALWAYS_BAD.iter().chain(&own) {
            // `--flag=value` so that "-1" is a value, not a flag.
            let arg = format!("{flag}={bad}");
            let mut args = cmd.clone();
            args.push(&arg);
            let o = Command::new(env!("CARGO_BIN_EXE_tracer"))
                .args(&args)
                .current_dir(&dir)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(o.stdout.is_empty(), "{args:?} printed {:?}", o.stdout);
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            let first = err.lines().next().unwrap_or("");
            assert!(
                first.starts_with("error: invalid value") && first.contains(flag),
                "{args:?}: the first line must name the value and {flag}: {err}"
            );
            tried += 1;
        }
    }
    // Nothing refused may have been started: no check report, no file.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(tried > 200, "{tried} values tried");
}

#[test]
fn the_boundaries_are_accepted() {
    // The cheap commands, at each end of their ranges: the run does its work.
    for args in [
        &[
            "model",
            "generate",
            "--events",
            "0",
            "--mms",
            "1",
            "--writers",
            "1",
            "--readers",
            "1",
            "--jitter",
            "0",
        ][..],
        &[
            "model",
            "generate",
            "--events",
            "50",
            "--mms",
            "1024",
            "--writers",
            "16",
            "--readers",
            "64",
            "--jitter",
            "65536",
        ],
        &["model", "check", "--writers", "1", "--readers", "1"],
    ] {
        let o = tracer(args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let log = std::env::temp_dir().join(format!("tracer-cli-bounds-{}.jsonl", std::process::id()));
    let o = tracer(&[
        "model",
        "generate",
        "--events",
        "200",
        "-o",
        log.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    for (w, s) in [("1", "0"), ("16777216", "1000000000000")] {
        let o = tracer(&[
            "validate",
            "--window",
            w,
            "--slack-ns",
            s,
            log.to_str().unwrap(),
        ]);
        // The log is clean; window 1 may not hold its jitter: a verdict either way, not a refusal.
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "window {w}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    std::fs::remove_file(&log).unwrap();
}
