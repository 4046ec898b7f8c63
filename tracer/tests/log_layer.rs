//! One log layer: every command that reads a log treats a malformed one alike. Strict (the
//! default): exit status 2 and one sentence naming the file and the line. `--lenient`: the
//! line is skipped, counted and reported, and the command goes on. (The TUI's replay and
//! follow are checked on the same corpus in `tui_tmux.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod corpus;

use std::{path::Path, process::Command};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

/// The commands that read a log, with `LOG` and `OUT` placeholders.
fn commands(out: &Path) -> Vec<Vec<String>> {
    let o = out.display().to_string();
    [
        vec!["validate", "LOG"],
        vec!["export", "LOG", "--format", "perfetto", "-o", "OUT.json"],
        vec!["export", "LOG", "--format", "csv", "-o", "OUT.csv"],
        vec!["export", "LOG", "--format", "jsonl", "-o", "OUT.jsonl"],
        vec!["report", "LOG", "-o", "OUT-report"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(|a| a.replace("OUT", &o)).collect())
    .collect()
}

fn run(args: &[String], log: &Path, lenient: bool) -> std::process::Output {
    let mut c = Command::new(TRACER);
    for a in args {
        if a == "LOG" {
            c.arg(log);
        } else {
            c.arg(a);
        }
    }
    if lenient {
        c.arg("--lenient");
    }
    c.output().unwrap()
}

#[test]
fn strict_readers_stop_at_the_bad_line_and_name_it() {
    let dir = std::env::temp_dir().join(format!("tracer-log-layer-{}", std::process::id()));
    for (case, log) in corpus::write_all(&dir) {
        for args in commands(&dir.join(format!("{}-out", case.name))) {
            let o = run(&args, &log, false);
            let err = String::from_utf8_lossy(&o.stderr);
            let want = format!("tracer: {} line {}: ", log.display(), case.line);
            assert_eq!(o.status.code(), Some(2), "{} {args:?}: {err}", case.name);
            assert!(
                err.starts_with(&want) && err.contains(case.says),
                "{} {args:?}: want {want:?} … {:?}, got {err:?}",
                case.name,
                case.says
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lenient_readers_skip_count_and_report_the_bad_line() {
    let dir = std::env::temp_dir().join(format!("tracer-log-lenient-{}", std::process::id()));
    for (case, log) in corpus::write_all(&dir) {
        for args in commands(&dir.join(format!("{}-out", case.name))) {
            let o = run(&args, &log, true);
            let err = String::from_utf8_lossy(&o.stderr);
            let note = format!(
                "{}: 1 malformed line skipped (--lenient); the first: line {}: ",
                log.display(),
                case.line
            );
            assert!(
                err.contains(&note) && err.contains(case.says),
                "{} {args:?}: want {note:?}, got {err:?}",
                case.name
            );
            // A judged log with a skipped line is at best inconclusive; exports succeed.
            let want = if args[0] == "export" { 0 } else { 3 };
            assert_eq!(o.status.code(), Some(want), "{} {args:?}: {err}", case.name);
        }
        // The verdict says why it is not clean.
        let o = run(&["validate".into(), "LOG".into()], &log, true);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("1 malformed line skipped"), "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
