//! Output that cannot be written (standard output or `-o` on `/dev/full`) ends every command in
//! one sentence naming what was being written and exit status 2: never a panic, never a
//! silently short file reported as success. (The recorder's own write errors, on a full
//! device and a full filesystem, are VM tests: vm_reliability.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{fs::File, process::Command};

fn model_log() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("tracer-write-errors-{}.jsonl", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["model", "generate", "--events", "20000", "-o"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success());
    p
}

fn full() -> File {
    File::options().write(true).open("/dev/full").unwrap()
}

#[test]
fn a_full_device_is_one_sentence_and_status_2() {
    let log = model_log();
    let log = log.to_str().unwrap();
    let mode_before = std::fs::metadata("/dev/full").unwrap();
    let cases: Vec<(Vec<&str>, bool)> = vec![
        // (arguments, whether standard output is /dev/full)
        (vec!["export", log, "-o", "/dev/full"], false),
        (
            vec!["export", "--format", "csv", log, "-o", "/dev/full"],
            false,
        ),
        (
            vec!["export", "--format", "jsonl", log, "-o", "/dev/full"],
            false,
        ),
        (vec!["export", log], true),
        (vec!["export", "--format", "csv", log], true),
        (vec!["validate", log], true),
        (vec!["validate", "--json", log], true),
        (vec!["model", "generate", "--events", "100000"], true),
        (
            vec!["model", "generate", "--events", "100", "-o", "/dev/full"],
            false,
        ),
        (vec!["model", "check"], true),
        (
            vec!["model", "check", "--variant", "no-retry", "--log"],
            true,
        ),
        (vec!["leftovers"], true),
    ];
    for (args, stdout_full) in cases {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tracer"));
        c.args(&args);
        if stdout_full {
            c.stdout(full());
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one sentence: {err}");
        assert!(
            lines[0].starts_with("tracer: ") && lines[0].contains("No space left on device"),
            "{args:?}: {err}"
        );
    }
    // As root the tool restricts the files it creates; a device is not one of them.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata("/dev/full").unwrap().permissions().mode(),
        mode_before.permissions().mode()
    );
    std::fs::remove_file(log).unwrap();
}
