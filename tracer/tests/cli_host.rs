//! `tracer record` on machines that cannot trace: each missing piece gets its own sentence and
//! exit status 2, never a panic. These run on the host (no VM): this project's machines run a
//! kernel without kprobes, and the other conditions are made for the test (an unprivileged user,
//! a missing BTF file, a seccomp filter that takes bpf() away).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Output},
};

fn tracer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tracer"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn host_has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || Path::new("/sys/kernel/tracing/kprobe_events").exists()
}

fn assert_one_sentence_exit_2(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn no_kprobes_on_this_host_is_named() {
    if !is_root() || host_has_kprobes() {
        eprintln!("skipping: this host can attach kprobes (or we are not root)");
        return;
    }
    let o = tracer()
        .args(["record", "--duration", "1"])
        .output()
        .unwrap();
    // The default mode refuses rather than take a lesser trace, and says what would run.
    assert_one_sentence_exit_2(&o, "cannot attach kprobes");
    assert!(stderr(&o).contains("--mode auto"), "{}", stderr(&o));
}

/// A mode this kernel cannot run is refused in one sentence naming why; `auto` falls back to
/// the richest one that runs and says which it skipped.
#[test]
fn modes_this_kernel_lacks_are_refused_and_auto_falls_back() {
    use tracer::probes::caps::{Caps, Mode};
    if !is_root() || host_has_kprobes() {
        eprintln!("skipping: this host can attach kprobes (or we are not root)");
        return;
    }
    let caps = Caps::detect(Path::new("/sys/kernel/btf/vmlinux"));
    if !caps.missing(Mode::Fentry).is_empty() {
        let o = tracer()
            .args(["record", "--mode", "fentry", "--duration", "1"])
            .output()
            .unwrap();
        assert_one_sentence_exit_2(&o, "--mode fentry cannot run on this kernel");
    }
    let Some(best) = caps.best() else {
        eprintln!("skipping the auto half: no mode runs here");
        return;
    };
    let o = tracer()
        .args(["record", "--mode", "auto", "--dry-run"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("not kprobe: "), "{err}");
    assert!(err.contains(&format!("tracing in {best} mode")), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("(attach: {best})")), "{out}");
    // `tracer sites` lists every mode with what it sees, even where discovery cannot run.
    let o = tracer().arg("sites").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    for m in Mode::ALL {
        assert!(out.contains(&format!("  {:<10} ", m.as_str())), "{out}");
    }
    assert!(
        out.contains(&format!("  {:<10} works", best.as_str())),
        "{out}"
    );
}

#[test]
fn not_root_is_named() {
    if !is_root() {
        let o = tracer().args(["record"]).output().unwrap();
        assert_one_sentence_exit_2(&o, "needs root");
        return;
    }
    // Drop to nobody for the child only. The build directory may not be reachable by nobody
    // (a checkout under a 0700 directory), so run a world-readable copy of the binary.
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("tracer-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("tracer");
    std::fs::copy(env!("CARGO_BIN_EXE_tracer"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new(&bin);
    c.args(["record", "--duration", "1"]);
    // SAFETY: setgid/setuid between fork and exec; no allocation.
    unsafe {
        c.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Another test of this binary forking while the copy's write descriptor was open leaves
    // the child a copy of it until it execs: the kernel then refuses to run the file for a
    // moment (ETXTBSY). Wait that out.
    let mut tries = 0;
    let o = loop {
        match c.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => break r.unwrap(),
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert_one_sentence_exit_2(&o, "needs root");
}

#[test]
fn missing_btf_is_named() {
    if !is_root() {
        assert!(
            std::env::var("TRACER_REQUIRE_FIXTURES").is_err(),
            "cargo xtask test runs as root, yet this test is not root"
        );
        eprintln!("skipping: needs root to get past the root check");
        return;
    }
    let o = tracer()
        .args([
            "record",
            "--btf",
            "/nonexistent/vmlinux-btf",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert_one_sentence_exit_2(&o, "no BTF");
}

/// A seccomp filter answering ENOSYS to bpf(2), as a kernel without CONFIG_BPF_SYSCALL would.
fn deny_bpf_syscall() -> std::io::Result<()> {
    const SYS_BPF: u32 = libc::SYS_bpf as u32;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == SYS_bpf fall through, else skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: SYS_BPF,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: standard seccomp installation on the calling (child) process.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, 2, &prog as *const libc::sock_fprog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn no_bpf_syscall_is_named() {
    if !is_root() {
        assert!(
            std::env::var("TRACER_REQUIRE_FIXTURES").is_err(),
            "cargo xtask test runs as root, yet this test is not root"
        );
        eprintln!("skipping: needs root to get past the root check");
        return;
    }
    let mut c = tracer();
    c.args(["record", "--duration", "1"]);
    // SAFETY: only prctl between fork and exec.
    unsafe { c.pre_exec(deny_bpf_syscall) };
    let o = c.output().unwrap();
    assert_one_sentence_exit_2(&o, "no bpf() system call");
}

#[test]
fn bad_arguments_exit_2_without_a_backtrace() {
    let o = tracer()
        .args(["record", "--ring-size", "banana"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("panicked"));
}
