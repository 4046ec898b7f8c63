//! `tracer check` on the host: bad arguments and a machine that cannot trace get one sentence
//! and exit status 2, and leave no report directory behind. (The check itself runs in the VM
//! kernels; `vm_check.rs` judges what it left.)
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{path::Path, process::Command};

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tracer-check-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn one_sentence_exit_2(args: &[&str], cwd: &Path, needle: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .arg("check")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
}

#[test]
fn a_host_that_cannot_trace_is_told_before_anything_is_written() {
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || Path::new("/sys/kernel/tracing/kprobe_events").exists();
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if kprobes && root {
        eprintln!("skipping: this host can trace (the VM tests cover a real check)");
        return;
    }
    let d = scratch("host");
    let needle = if root {
        "cannot attach kprobes"
    } else {
        "root"
    };
    one_sentence_exit_2(&["--duration", "1"], &d, needle);
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        0,
        "no report directory"
    );
    std::fs::remove_dir_all(&d).unwrap();
}
