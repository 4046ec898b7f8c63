//! `tracer record --mode tracepoint` on this machine's own kernel (no VM): a kernel without
//! kprobes or fentry, where raw tracepoints still work. While `tracer stress` forks and pins,
//! the log must show each fork's seqcount advance (2 per COW VMA copied, measured as the
//! difference between two runs with 5 more dirtied mappings), the pinning syscalls, and a
//! verdict that names every rule it could not check.
//!
//! Needs root and a kernel with raw tracepoints, BTF and ring buffers. Without them it says it
//! skipped, unless `TRACER_REQUIRE_HOST_TRACE=1` (set by `cargo xtask test`, which runs on
//! such a machine), which turns the skip into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use tracer::probes::caps::{Caps, Mode};

fn tracer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tracer"))
}

/// `Some(why)` when this host cannot run the tracepoint mode.
fn cannot_trace() -> Option<String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let missing = Caps::detect(Path::new("/sys/kernel/btf/vmlinux")).missing(Mode::Tracepoint);
    (!missing.is_empty()).then(|| missing.join("; "))
}

fn skip_or_fail(why: &str) {
    if std::env::var("TRACER_REQUIRE_HOST_TRACE").as_deref() == Ok("1") {
        panic!("TRACER_REQUIRE_HOST_TRACE=1 but this host cannot run the tracepoint mode: {why}");
    }
    eprintln!("skipping: this host cannot run the tracepoint mode: {why}");
}

/// A file on the build directory's filesystem (a real one, which O_DIRECT needs; tmpfs may
/// refuse it), for stress's O_DIRECT reads.
fn direct_file() -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tracepoint-host-direct.bin");
    std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
    p
}

fn events(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Records `tracer stress` with `mappings` dirtied private mappings in tracepoint mode.
fn record(name: &str, mappings: u32, direct: &Path) -> Vec<Value> {
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tracepoint-host-{name}.jsonl"));
    let stress = env!("CARGO_BIN_EXE_tracer");
    let o = tracer()
        .args(["record", "--mode", "tracepoint", "-o"])
        .arg(&log)
        .args([
            "--duration",
            "60",
            "--",
            stress,
            "stress",
            "--duration",
            "2",
        ])
        .args(["--mappings", &mappings.to_string(), "--direct"])
        .arg(direct)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "tracer record failed: {err}");
    assert!(err.contains("workload exited: exit status: 0"), "{err}");
    events(&log)
}

/// The pid that forked most: the stress workload (its forks all copy the same VMAs).
fn stress_forks(ev: &[Value]) -> (u64, Vec<&Value>) {
    let mut by_pid: BTreeMap<u64, usize> = BTreeMap::new();
    for e in ev
        .iter()
        .filter(|e| e["kind"] == "fork" && e["comm"] == "tracer")
    {
        *by_pid.entry(e["pid"].as_u64().unwrap()).or_default() += 1;
    }
    let (&pid, _) = by_pid
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("no fork of tracer stress");
    let forks = ev
        .iter()
        .filter(|e| e["kind"] == "fork" && e["pid"] == pid)
        .collect();
    (pid, forks)
}

fn advance(e: &Value) -> Option<i64> {
    Some(e["seq_after"].as_i64()? - e["seq_before"].as_i64()?)
}

/// The most common advance of the workload's forks (its VMA set is fixed once it runs; a
/// malloc arena created mid-run could change a few).
fn modal_advance(forks: &[&Value]) -> i64 {
    let mut n: BTreeMap<i64, usize> = BTreeMap::new();
    for f in forks {
        if let Some(d) = advance(f) {
            *n.entry(d).or_default() += 1;
        }
    }
    *n.iter().max_by_key(|(_, c)| **c).unwrap().0
}

#[test]
fn tracepoint_mode_sees_fork_advances_and_pins_and_names_what_it_cannot_check() {
    if let Some(why) = cannot_trace() {
        skip_or_fail(&why);
        return;
    }
    let direct = direct_file();
    let small = record("small", 4, &direct);
    let large = record("large", 9, &direct);

    let header = &small[0];
    assert_eq!(header["kind"], "header");
    assert_eq!(header["attach"], "tracepoint");
    assert_eq!(header["mode"], "tracepoint");
    assert_eq!(header["minor"], 2);

    for log in [&small, &large] {
        // Every fork of every process on the machine: read holding the parent's mmap_lock,
        // so even at both ends.
        for f in log.iter().filter(|e| e["kind"] == "fork") {
            assert_eq!(f["bracket"], "mmap_lock", "{f}");
            if let (Some(a), Some(b)) = (f["seq_before"].as_u64(), f["seq_after"].as_u64()) {
                assert!(a % 2 == 0 && b % 2 == 0 && b >= a, "{f}");
            }
        }
    }
    let (pid, forks_small) = stress_forks(&small);
    let (_, forks_large) = stress_forks(&large);
    assert!(
        forks_small.len() > 10,
        "few forks of pid {pid}: {}",
        forks_small.len()
    );
    let (a4, a9) = (modal_advance(&forks_small), modal_advance(&forks_large));
    eprintln!(
        "fork advance: {a4} with 4 mappings ({} forks), {a9} with 9 ({} forks)",
        forks_small.len(),
        forks_large.len()
    );
    assert!(a4 > 0, "the workload's forks copied no COW VMA");
    assert_eq!(
        a9 - a4,
        10,
        "5 more dirtied private mappings: 5 more write sections of +2"
    );

    // Pinning syscalls: io_uring buffer registration and the O_DIRECT reads (both pin through
    // GUP-fast on 6.10+ kernels).
    let mut pins: BTreeMap<String, usize> = BTreeMap::new();
    let mut during_fork = 0;
    for e in small
        .iter()
        .filter(|e| e["kind"] == "pin_syscall" && e["pid"] == pid)
    {
        *pins
            .entry(e["syscall"].as_str().unwrap().to_owned())
            .or_default() += 1;
        if e["seq_enter"] != e["seq_exit"] {
            during_fork += 1;
        }
    }
    eprintln!("pinning syscalls of the workload: {pins:?}, {during_fork} during a fork");
    assert!(
        pins.get("io_uring_register").is_some_and(|&n| n > 0),
        "{pins:?}"
    );
    assert!(
        pins.get("pread64").is_some_and(|&n| n > 0),
        "O_DIRECT reads: {pins:?}"
    );

    // The verdict: never clean, naming every rule tracepoints cannot feed.
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tracepoint-host-small.jsonl");
    let o = tracer()
        .args(["validate", "--json"])
        .arg(&log)
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(3), "{r}");
    assert_eq!(r["verdict"], "inconclusive");
    let rules: BTreeMap<&str, &Value> = r["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["rule"].as_str().unwrap(), x))
        .collect();
    for unseen in [
        "write_parity",
        "copy_delta",
        "odd_not_bailed",
        "unprotected_overlap",
        "retry_ignored",
    ] {
        assert_eq!(rules[unseen]["checked"], false, "{unseen}");
        assert!(
            rules[unseen]["why_not"]
                .as_str()
                .unwrap()
                .starts_with("tracepoint mode"),
            "{unseen}: {}",
            rules[unseen]
        );
        assert!(
            r["missing_evidence"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m.as_str().unwrap().contains(unseen)),
            "the verdict names {unseen}: {}",
            r["missing_evidence"]
        );
    }
    for seen in ["fork_parity", "seq_unexplained", "writer_overlap"] {
        assert_eq!(rules[seen]["checked"], true, "{seen}: {}", rules[seen]);
        assert_eq!(rules[seen]["violations"], 0, "{seen}: {r}");
    }
    assert!(rules["fork_parity"]["exercised"].as_u64().unwrap() >= forks_small.len() as u64);
    assert_eq!(r["stats"]["violations"], 0, "{r}");
}
