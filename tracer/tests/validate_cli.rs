//! `tracer validate` as a user runs it: exit statuses, stdin, JSON, one-line errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod validate_common;

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use validate_common::{ALL_PROBES, Log};

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .arg("validate")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A fork's copy with its write section, then a PIN GUP-fast call through the read sites:
/// the evidence a clean verdict needs (lines 2-9).
fn clean_log() -> Log {
    let mut l = Log::new(ALL_PROBES);
    l.cpr_enter(1, "m", 0, true)
        .wb(1, "m", 0)
        .we(1, "m", 1)
        .cpr_exit(1, "m", 2)
        .gup_enter(20, "m", 2, true)
        .rb(20, "m", 2)
        .rr(20, "m", 2)
        .gup_exit(20, "m", 2);
    l
}

#[test]
fn exit_statuses_follow_the_verdict() {
    let mut l = clean_log();
    l.summary();
    let o = run(&["-"], &l.text());
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("verdict: clean"));

    let o = run(&["-"], &clean_log().text());
    assert_eq!(o.status.code(), Some(3), "no summary: inconclusive");

    let mut l = clean_log();
    l.wb(1, "m", 3).summary();
    let o = run(&["-", "--json"], &l.text());
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "violations");
    assert_eq!(v["violations"][0]["line"], 10);
}

#[test]
fn a_file_argument_works_like_stdin() {
    let mut l = clean_log();
    l.summary();
    let dir = std::env::temp_dir().join(format!("tracer-validate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("log.jsonl");
    std::fs::write(&p, l.text()).unwrap();
    let o = run(&[p.to_str().unwrap(), "--json"], "");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["events"], 8);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_one_line_naming_the_line() {
    let cases: Vec<(String, &str)> = vec![
        (
            {
                let mut l = clean_log();
                l.raw("{\"kind\":\"cpr_exit\",\"ts\":1");
                l.text()
            },
            "line 10: not JSON",
        ),
        (
            {
                let mut l = clean_log();
                l.raw(r#"{"kind":"cpr_exit","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"x","mm":"m","ret":0}"#);
                l.text()
            },
            "line 10: cpr_exit is missing required field \"seq\"",
        ),
        (
            r#"{"kind":"header","schema":2,"tool":"t","kernel":"k","probes":[]}"#.to_string()
                + "\n",
            "line 1: header has schema 2",
        ),
        (
            {
                let l = clean_log();
                l.lines[1..].join("\n")
            },
            "line 1: the first record must be a header",
        ),
        (
            {
                let mut l = clean_log();
                let h = l.lines[0].clone();
                l.raw(&h);
                l.text()
            },
            "line 10: a second header",
        ),
        (
            {
                let mut l = clean_log();
                l.summary().cpr_enter(1, "m", 2, true);
                l.text()
            },
            "line 11: a record after the summary",
        ),
        (String::new(), "empty"),
    ];
    for (input, want) in cases {
        let o = run(&["-"], &input);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{want}: {err}");
        assert!(err.contains(want), "want {want:?}, got {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!err.contains("panicked"));
    }
    let o = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["validate", "/nonexistent/log.jsonl"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}

/// The VM tests' setting: `--slack-ns 50000000` forgives ms of vCPU skew but still exits 1 on a
/// broken protocol, and counts losses once (lines and summary describe the same losses).
#[test]
fn vm_slack_still_exits_1_on_a_value_violation() {
    let mut l = Log::new(ALL_PROBES);
    l.gup_enter(20, "m", 0, true).rb(20, "m", 0);
    l.cpr_enter(1, "m", 0, true).wb(1, "m", 0);
    // Loaded the odd value, yet went on to the retry.
    l.gup_enter(21, "m", 1, true).rb(21, "m", 1).rr(21, "m", 1);
    l.we(1, "m", 1).cpr_exit(1, "m", 2);
    l.rr(20, "m", 0).gup_exit(20, "m", 2).gup_exit(21, "m", 2);
    l.summary();
    let o = run(&["-", "--json", "--slack-ns", "50000000"], &l.text());
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stats"]["violations_by_rule"]["odd_not_bailed"], 1, "{v}");

    let mut l = clean_log();
    l.lost(5).summary_lost(5);
    let o = run(&["-", "--slack-ns", "50000000"], &l.text());
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("5 events were lost"), "{out}");
}

/// Events the header contradicts (a kind whose probe it does not list) would be judged under
/// rules chosen for a different trace: strictly they are bad input naming the line; leniently
/// they are skipped, counted, and the verdict cannot be clean.
#[test]
fn events_the_header_contradicts_are_bad_input() {
    let mut l = Log::new(&ALL_PROBES[..4]); // cpr_*, gup_*: no sites
    l.cpr_enter(1, "m", 0, true)
        .wb(1, "m", 0)
        .we(1, "m", 1)
        .cpr_exit(1, "m", 2)
        .summary();
    let o = run(&["-"], &l.text());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 3: a write_begin event, but the header lists no write_begin probe"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let o = run(&["-", "--lenient", "--json"], &l.text());
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["missing_evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m.as_str().unwrap().contains("2 malformed lines skipped")),
        "{v}"
    );
}

/// A recorder killed mid-write (SIGKILL) leaves a last line without its newline: every other
/// line is valid, and the verdict is inconclusive, not bad input.
#[test]
fn a_log_cut_mid_line_is_inconclusive() {
    let l = clean_log();
    let mut text = l.text();
    text.push_str(r#"{"kind":"gup_enter","ts":999,"cpu":0,"pi"#);
    let o = run(&["-"], &text);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(out.contains("the last line is cut short"), "{out}");
    assert!(out.contains("no summary line"), "{out}");
    // A bad line that is not the last is still bad input.
    let mut text = l.text();
    text.push_str("{\"kind\":\"gup_enter\",\"ts\":999,\"cpu\":0,\"pi\n{\"kind\":\"x\"}\n");
    assert_eq!(run(&["-"], &text).status.code(), Some(2));
}
