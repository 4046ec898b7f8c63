//! `cargo xtask test` (everything CI runs) and `cargo xtask run` (the main job).
//!
//! The VM part boots each kernel of the matrix once and batches every in-guest step in that
//! boot: fixtures for the unit tests (kallsyms with `nokaslr`, BTF), the attach plan, a recording
//! under the stress workload, and the validator's verdict on it. The assertions then run on the
//! host as ordinary `cargo test` integration tests reading `$TRACER_FIXTURES/<release>/`.
use std::{
    path::Path,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{bench_vm, build, cmd, kernels, setup, validate_kernel, vm};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Kernels for the VM tests (SPEC as for `cargo xtask vm`). Default: the newest and the
    /// oldest 6.1 and 6.12 cloud builds apt carries.
    #[arg(long = "kernel")]
    kernels: Vec<String>,
    /// Skip the VM tests (and the tests that need their fixtures).
    #[arg(long)]
    no_vm: bool,
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    no_lint: bool,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Trace this machine's own kernel in the richest attach mode it has (`--mode auto`:
    /// kprobe, else fentry, else tracepoint, which sees less), never a VM.
    #[arg(long)]
    host: bool,
    /// Kernel to boot when the host cannot run kprobes.
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// Seconds to trace.
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

/// The newest build of each series (the default kernels) and the oldest one apt still carries,
/// to show site discovery is not tuned to one build.
pub const DEFAULT_KERNELS: [&str; 4] = ["6.1", "6.12", "6.1-oldest", "6.12-oldest"];

/// The kernels whose test boot also runs `tracer check` (validate-kernel's in-guest step):
/// the newest of each series. 20 s of workload each keeps the whole run well inside CI's time.
const CHECK_KERNELS: [&str; 2] = ["6.1", "6.12"];
const CHECK_SECS: u64 = 20;

/// The kernel whose test boot also runs `cargo xtask bench --quick`'s steps (about a minute
/// under TCG), so the benchmark never rots without a boot of its own.
const BENCH_KERNEL: &str = "6.12";

/// The in-guest steps of a test boot. Each step's exit status lands in /out, so one failing
/// step does not hide the others; the host-side tests judge them. The last block records the
/// same stress workload in each attach mode (`tracer/tests/vm_modes.rs`): tracepoint mode with
/// 4 and 9 mappings (the host test's pair), kprobe mode at function level and fentry mode.
/// The validator gets a 50 ms timestamp slack: under TCG a vCPU can stall for milliseconds between a seqcount access and
/// its probe (values stay exact; only cross-CPU time order blurs). The recording asserts zero
/// losses, so it gets a 16 MiB ring and a workload that pauses 100 us between forks: under TCG
/// on 2 host cores the consumer is emulated too, and a flat-out fork loop on both vCPUs once
/// outran a 4 MiB ring by one event.
const TEST_SCRIPT: &str = r#"
uname -r > /out/release
echo 4 > /proc/sys/vm/nr_hugepages
cat /proc/kallsyms > /out/kallsyms
cp /sys/kernel/btf/vmlinux /out/btf
tracer record --dry-run > /out/plan.txt 2>&1; echo $? > /out/plan.rc
tracer sites --json > /out/sites.json 2> /out/sites.err; echo $? > /out/sites.rc
tracer record -o /out/record.jsonl --ring-size 16777216 --duration 120 -- tracer stress --duration 6 --fork-gap-us 100 2> /out/record.err; echo $? > /out/record.rc
cat /out/record.err
tracer record -o /out/raw.jsonl --raw-pointers --duration 60 -- tracer stress --duration 1 2> /out/raw.err; echo $? > /out/raw.rc
tracer validate --slack-ns 50000000 /out/record.jsonl --json > /out/validate.json 2> /out/validate.err; echo $? > /out/validate.rc
tracer validate --slack-ns 50000000 /out/record.jsonl
# aya-log (issue 9): a BPF diagnostic provoked on purpose (copy_page_range's pairing map full
# from the start) must reach tracer record's stderr, and the live TUI's messages pane, drawn on
# tty1 (80x25) and read back from /dev/vcs1. Judged by tracer/tests/vm_diagnostics.rs.
TRACER_TEST_FULL_PAIRING_MAP=1 tracer record -o /out/diag.jsonl --duration 30 -- tracer stress --duration 1 2> /out/diag.err; echo $? > /out/diag.rc
TRACER_TEST_FULL_PAIRING_MAP=1 setsid -c tracer tui --duration 3 -- tracer stress --duration 2 </dev/tty1 >/dev/tty1 2>/out/diag-tui.err & t=$!
i=0; while [ $i -lt 120 ] && ! grep -q 'pairing map full' /dev/vcs1; do sleep 0.5; i=$((i+1)); done
cat /dev/vcs1 > /out/diag-tui.screen; kill -TERM $t; wait $t; echo $? > /out/diag-tui.rc
# One record per call (issue 10): with the return probes left out (a test hook), every
# thread's last call is still open in the kernel when tracing stops, and the recorder must
# read those calls and log them (summary open_at_end). The stress outlives the trace, frozen
# after a second of it (its threads' last calls stay open in the kernel all the same) so that
# it does not fork through the probes' teardown, which under QEMU TCG can oops (RELIABILITY.md).
tracer stress --duration 60 --fork-gap-us 100 > /dev/null 2>&1 & s=$!
sleep 1; TRACER_TEST_NO_RETURN_PROBES=1 tracer record -o /out/open_end.jsonl --duration 4 2> /out/open_end.err & r=$!
i=0; while [ $i -lt 300 ] && [ ! -s /out/open_end.jsonl ]; do sleep 0.1; i=$((i+1)); done
sleep 1; kill -STOP $s; wait $r; echo $? > /out/open_end.rc
sleep 1; kill -KILL $s; wait $s
for m in tp4:tracepoint:4 tp9:tracepoint:9 kp4:kprobe:4 fe4:fentry:4; do
  n=${m%%:*}; r=${m#*:}; mode=${r%%:*}; maps=${r#*:}
  tracer record --mode $mode --no-sites -o /out/$n.jsonl --ring-size 16777216 --duration 60 -- tracer stress --duration 2 --mappings $maps --fork-gap-us 100 2> /out/$n.err; echo $? > /out/$n.rc
  tracer validate --json /out/$n.jsonl > /out/$n.validate.json 2>&1; echo $? > /out/$n.validate.rc
done
"#;

/// Reliability steps (RELIABILITY.md), on the kernels that also run the check: each kind of
/// loss the kernel can be made to produce is provoked and must be counted (a ring of one page;
/// one instance per return probe while four threads pin), and after a hundred attach/detach
/// cycles on 6.12 (ten on 6.1; function-level, each about 2 s under TCG; three more with the
/// instruction sites) nothing may be left behind; and a trace of 800 execs (each a new mm, the
/// old one freed and its address free for reuse) beside the stress workload must not crash or
/// mistake one mm for another. Then every way a trace ends: its duration, SIGINT, SIGTERM and
/// SIGHUP (a complete log), SIGKILL (a log cut at most in its last line, whose leftover kprobe
/// events the next run removes); and writes that fail (`/dev/full` as the log and as standard
/// output, a 256 KiB tmpfs) end in one sentence and exit status 2 with nothing left attached.
const RELIABILITY_SCRIPT: &str = r#"
tracer leftovers > /out/leftovers_before.json
case $(uname -r) in 6.12.*) n=100;; *) n=10;; esac; echo $n > /out/cycles.n
i=0; while [ $i -lt $n ]; do tracer record -o /dev/null --no-sites --duration 0.02 2>>/out/cycles.err || echo "cycle $i failed" >> /out/cycles.err; i=$((i+1)); done
i=0; while [ $i -lt 3 ]; do tracer record -o /dev/null --duration 0.02 2>>/out/cycles.err || echo "site cycle $i failed" >> /out/cycles.err; i=$((i+1)); done
tracer leftovers > /out/leftovers_after.json
tracer record -o /out/tiny_ring.jsonl --ring-size 4096 -- tracer stress --duration 2 --pin-gap-us 0 2>/out/tiny_ring.err; echo $? > /out/tiny_ring.rc
tracer record -o /out/maxactive.jsonl --maxactive 1 -- tracer stress --duration 3 --pinners 4 --pin-gap-us 0 2>/out/maxactive.err; echo $? > /out/maxactive.rc
tracer record -o /out/churn.jsonl --ring-size 16777216 --duration 120 -- sh -c 'tracer stress --duration 4 & i=0; while [ $i -lt 800 ]; do tracer --version >/dev/null; i=$((i+1)); done; wait' 2>/out/churn.err; echo $? > /out/churn.rc
tracer record -o /out/end_duration.jsonl --ring-size 16777216 --duration 4 -- tracer stress --duration 60 --fork-gap-us 100 2>/out/end_duration.err; echo $? > /out/end_duration.rc
for s in INT TERM HUP KILL; do
  tracer record -o /out/end_$s.jsonl --ring-size 16777216 -- tracer stress --duration 60 --fork-gap-us 100 2>/out/end_$s.err & p=$!
  i=0; while [ $i -lt 300 ] && [ ! -s /out/end_$s.jsonl ]; do sleep 0.1; i=$((i+1)); done
  sleep 1
  if [ $s = KILL ]; then
    # The kernel disarms a killed recorder's kprobes as it dies, and under QEMU TCG code
    # patched while another vCPU runs it can oops (a call to address 0, a stray int3 in
    # copy_page_range: seen in three CI boots while the workload forked on through the
    # teardown). So the recorder and its workload (comm tracer) are frozen first, the recorder
    # alone is killed, the kprobe optimizer gets a second to finish unpatching, and only then
    # does the frozen workload die. The recorder still dies mid-trace, by SIGKILL.
    killall -STOP tracer; sleep 0.5; kill -KILL $p; wait $p; echo $? > /out/end_$s.rc
    sleep 1; killall -KILL tracer
  else kill -$s $p; wait $p; echo $? > /out/end_$s.rc; fi
done
killall -KILL tracer 2>/dev/null; sleep 0.5
tracer leftovers > /out/leftovers_killed.json
tracer record -o /dev/null --no-sites --duration 0.02 2>/out/after_kill.err; echo $? > /out/after_kill.rc
tracer leftovers > /out/leftovers_after_kill.json
tracer record -o /dev/full --duration 30 -- tracer stress --duration 2 2>/out/full.err; echo $? > /out/full.rc
tracer record --duration 30 -- tracer stress --duration 2 >/dev/full 2>/out/stdout_full.err; echo $? > /out/stdout_full.rc
mkdir -p /tiny && mount -t tmpfs -o size=256k tmpfs /tiny
tracer record -o /tiny/r.jsonl --duration 30 -- tracer stress --duration 2 2>/out/tiny.err; echo $? > /out/tiny.rc
wc -c < /tiny/r.jsonl > /out/tiny.size; rm -f /tiny/r.jsonl; dd if=/dev/zero of=/tiny/fill bs=4096 2>/dev/null
tracer report /out/end_duration.jsonl -o /tiny/report 2>/out/tiny_report.err; echo $? > /out/tiny_report.rc
tracer export /out/end_duration.jsonl -o /tiny/x.json 2>/out/tiny_export.err; echo $? > /out/tiny_export.rc
umount /tiny
tracer leftovers > /out/leftovers_after_errors.json
"#;

fn phase(name: &str, t0: Instant) {
    println!("test: {name} done at {:.0}s", t0.elapsed().as_secs_f64());
}

fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(build::workspace());
    c
}

/// A booted kernel of the matrix.
struct Booted {
    release: String,
    /// Whether its boot ran `tracer check` too.
    checked: bool,
    /// Whether its boot ran the quick benchmark's steps (into `<fixture>/bench`), and under KVM.
    bench: bool,
    kvm: bool,
}

/// The oldest 6.12 boots with four vCPUs: the recorder and the validator see more CPUs
/// contend than the two the host has (RELIABILITY.md).
fn cpus_for(spec: &str) -> u32 {
    if spec == "6.12-oldest" { 4 } else { 2 }
}

/// Boots each kernel once with the test script (plus the check on [`CHECK_KERNELS`]).
fn vm_matrix(specs: &[String], tracer: &Path, t0: Instant) -> Result<Vec<Booted>> {
    let root = kernels::cache_dir()?.join("fixtures");
    let mut done = Vec::new();
    let mut checks = Vec::new();
    for spec in specs {
        let kernel = kernels::fetch(spec, None)?;
        let out = root.join(&kernel.release);
        let _ = std::fs::remove_dir_all(&out);
        let checked = CHECK_KERNELS.contains(&spec.as_str());
        let mut script = TEST_SCRIPT.to_owned();
        if checked {
            script.push_str(&validate_kernel::guest_step(CHECK_SECS, "/out/check"));
            script.push_str(RELIABILITY_SCRIPT);
        }
        let bench = spec == BENCH_KERNEL;
        if bench {
            script.push_str(&bench_vm::guest_script(bench_vm::QUICK, "/out/bench"));
        }
        // The steps' statuses are in /out; the boot itself succeeded.
        script.push_str("exit 0\n");
        let r = vm::run(&vm::VmOpts {
            kernel: &kernel,
            id: &kernel.release,
            tracer,
            modules: vm::guest_modules(),
            script,
            out: out.clone(),
            // The checked boots run the check and the reliability steps: about 6 minutes
            // under TCG on two busy host cores.
            timeout: Duration::from_secs(
                if checked { 1200 } else { 600 } + if bench { 300 } else { 0 },
            ),
            nokaslr: true,
            interactive: false,
            memory_mb: 1024,
            cpus: cpus_for(spec),
        })
        .with_context(|| format!("VM test boot of {spec}"))?;
        std::fs::copy(&kernel.image, out.join("vmlinuz"))?;
        if let Some(c) = &kernel.config {
            std::fs::copy(c, out.join("config"))?;
        }
        println!(
            "test: {} booted and ran its steps in {:.1}s (exit {})",
            kernel.release, r.boot_secs, r.exit_code
        );
        phase(&format!("VM {}", kernel.release), t0);
        if checked {
            let k = validate_kernel::collect(
                &kernel.release,
                &kernel.release,
                &kernel.image,
                &out,
                &out.join("check"),
            );
            println!("test: tracer check: {}", k.line());
            checks.push(k);
        }
        done.push(Booted {
            release: kernel.release,
            checked,
            bench,
            kvm: r.kvm,
        });
    }
    // validate-kernel's summary of the checks, beside the fixtures; the host-side tests
    // (vm_check.rs) judge them.
    std::fs::write(
        root.join("check-summary.json"),
        validate_kernel::summary_json(&checks)?,
    )?;
    std::fs::write(
        root.join("check-summary.md"),
        validate_kernel::summary_md(&checks, &root),
    )?;
    Ok(done)
}

pub fn test(a: TestArgs) -> Result<ExitCode> {
    let t0 = Instant::now();
    setup::setup()?;
    phase("setup", t0);
    if !a.no_lint {
        cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))
            .context("formatting differs; run `cargo fmt --all`")?;
        // Default members only: the eBPF crate builds for the BPF target through tracer/build.rs.
        cmd::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        phase("fmt + clippy", t0);
    }
    let mut env: Vec<(String, String)> = Vec::new();
    if !a.no_vm {
        let tracer = build::static_tracer()?;
        phase("static build", t0);
        let specs: Vec<String> = if a.kernels.is_empty() {
            DEFAULT_KERNELS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            a.kernels.clone()
        };
        let booted = vm_matrix(&specs, &tracer, t0)?;
        // The benchmark's harness, reduced: every figure must come out (performance is not
        // asserted). From the boot that ran its steps, else a short boot of its own.
        let fixtures = kernels::cache_dir()?.join("fixtures");
        let from_boot = booted.iter().find(|b| b.bench);
        let bench_dir = from_boot.map(|b| fixtures.join(&b.release).join("bench"));
        bench_vm::quick_check(
            bench_dir.as_deref().zip(from_boot.map(|b| b.kvm)),
            BENCH_KERNEL,
            &tracer,
        )
        .context("cargo xtask bench --quick")?;
        phase("bench --quick", t0);
        // The live TUI on the default kernel, through `cargo xtask run` in a real terminal.
        let live = kernels::fetch("6.12", None)?;
        let xtask = std::env::current_exe().context("locating the xtask binary")?;
        crate::live::tui_in_vm(&xtask, &build::workspace(), "6.12", &live.release)?;
        phase("live TUI in the VM", t0);
        env.push(("TRACER_FIXTURES".into(), fixtures.display().to_string()));
        env.push(("TRACER_REQUIRE_FIXTURES".into(), "1".into()));
        let list = |only_checked: bool| {
            booted
                .iter()
                .filter(|b| b.checked || !only_checked)
                .map(|b| b.release.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        env.push(("TRACER_VM_KERNELS".into(), list(false)));
        env.push(("TRACER_CHECK_KERNELS".into(), list(true)));
    }
    // This project's machines (and CI, as root) run the tracepoint mode on their own kernel:
    // the host test of that mode must run there, not skip (tracer/tests/tracepoint_host.rs).
    if setup::is_root() {
        env.push(("TRACER_REQUIRE_HOST_TRACE".into(), "1".into()));
    }
    // A minute of random mutations through the log reader (tracer/tests/reader_fuzz.rs);
    // a plain `cargo test` gives it three seconds.
    env.push(("TRACER_FUZZ_SECS".into(), "60".into()));
    let mut c = cargo();
    c.arg("test");
    // The fixture tests are #[ignore]d in a plain `cargo test` (they say why); here their
    // fixtures exist, so they run, and fail if one is missing.
    if !a.no_vm {
        c.args(["--", "--include-ignored"]);
    }
    for (k, v) in &env {
        c.env(k, v);
    }
    cmd::run(&mut c)?;
    phase("cargo test", t0);
    println!("test: all passed in {:.0}s", t0.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn host_can_trace() -> Result<bool, String> {
    if !setup::is_root() {
        return Err("not root".into());
    }
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || Path::new("/sys/kernel/tracing/kprobe_events").exists();
    if !kprobes {
        return Err("the host kernel cannot attach kprobes (CONFIG_KPROBES is off)".into());
    }
    Ok(true)
}

/// Rows and columns of the terminal on stdout, when there is one (and stdin is one too: the
/// TUI needs keys).
fn terminal() -> Option<(u16, u16)> {
    // SAFETY: isatty and TIOCGWINSZ only read the descriptors' state into `ws`.
    unsafe {
        if libc::isatty(0) != 1 || libc::isatty(1) != 1 {
            return None;
        }
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) != 0 || ws.ws_row == 0 {
            return Some((24, 80));
        }
        Some((ws.ws_row, ws.ws_col))
    }
}

pub fn run(a: RunArgs) -> Result<ExitCode> {
    setup::setup()?;
    let tracer = build::static_tracer()?;
    let term = terminal();
    let dur = a.duration.to_string();
    let stress_dur = a.duration.saturating_sub(1).max(1).to_string();
    let out_root = build::workspace().join("target/run");
    let host = if a.host {
        if !setup::is_root() {
            anyhow::bail!("--host traces this machine's kernel, which needs root");
        }
        Ok(true)
    } else {
        host_can_trace()
    };
    // `--host` takes whatever this kernel offers; without it the host is only traced when it
    // gives the full (kprobe) view.
    let mode = if a.host { "auto" } else { "kprobe" };
    match host {
        Ok(_) => {
            println!("run: tracing the host kernel (--mode {mode})");
            std::fs::create_dir_all(&out_root)?;
            let log = out_root.join("trace.jsonl");
            let t = tracer.to_string_lossy().into_owned();
            if term.is_some() {
                cmd::run(
                    Command::new(&tracer)
                        .args(["tui", "--mode", mode, "--record"])
                        .arg(&log)
                        .args(["--", &t, "stress", "--duration", "3600"]),
                )?;
            } else {
                cmd::run(
                    Command::new(&tracer)
                        .args(["record", "--mode", mode, "-o"])
                        .arg(&log)
                        .args(["--duration", &dur, "--", &t])
                        .args(["stress", "--duration", &stress_dur]),
                )?;
            }
            let status = Command::new(&tracer).arg("validate").arg(&log).status()?;
            println!("run: log at {}", log.display());
            Ok(match status.code() {
                Some(0) => ExitCode::SUCCESS,
                // A mode short of kprobe cannot check every rule: inconclusive is its best.
                Some(3) if a.host => {
                    println!(
                        "run: inconclusive, as a reduced attach mode must be (the verdict names what it could not check); `cargo xtask run` boots a VM for the full view"
                    );
                    ExitCode::SUCCESS
                }
                _ => ExitCode::FAILURE,
            })
        }
        Err(why) => {
            println!(
                "run: {why}; booting Debian {} under QEMU for the full view (`cargo xtask run --host` traces this machine's kernel in the best mode it has, which sees less)",
                a.kernel
            );
            let kernel = kernels::fetch(&a.kernel, None)?;
            let out = out_root.join(&kernel.release);
            let _ = std::fs::remove_dir_all(&out);
            let script = match term {
                // The TUI on the guest's serial console, sized like this terminal. setsid -c
                // gives it a controlling terminal, which reading keys needs.
                Some((rows, cols)) => {
                    let term_name = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
                    println!(
                        "run: the TUI will open on the VM's console ({cols}x{rows}); q quits and powers the VM off"
                    );
                    format!(
                        "stty -F /dev/ttyS0 rows {rows} cols {cols}\n\
                         export TERM={term_name}\n\
                         setsid -c tracer tui --record /out/trace.jsonl -- tracer stress --duration 3600 \
                           </dev/ttyS0 >/dev/ttyS0 2>/out/tui.err\n\
                         echo $? > /out/tui.rc\n\
                         clear\n\
                         tracer validate /out/trace.jsonl\n"
                    )
                }
                None => format!(
                    "tracer record -o /out/trace.jsonl --duration {dur} -- tracer stress --duration {stress_dur}\n\
                     tracer validate /out/trace.jsonl\n"
                ),
            };
            let r = vm::run(&vm::VmOpts {
                kernel: &kernel,
                id: &kernel.release,
                tracer: &tracer,
                modules: vm::guest_modules(),
                script,
                out: out.clone(),
                timeout: Duration::from_secs(if term.is_some() { 24 * 3600 } else { 600 }),
                nokaslr: false,
                interactive: term.is_some(),
                memory_mb: 1024,
                cpus: 2,
            })?;
            if let Ok(err) = std::fs::read_to_string(out.join("tui.err"))
                && !err.trim().is_empty()
            {
                print!("{err}");
            }
            println!(
                "run: {} finished in {:.1}s; the log is at {}",
                kernel.release,
                r.boot_secs,
                out.join("trace.jsonl").display()
            );
            // The guest's last step is the validator: 0 clean, 1 violations, 3 inconclusive.
            Ok(match r.exit_code {
                0 => ExitCode::SUCCESS,
                c => {
                    println!("run: the validator's verdict in the VM exited {c}");
                    ExitCode::FAILURE
                }
            })
        }
    }
}
