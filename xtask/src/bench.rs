//! `cargo xtask bench`: throughput of `tracer validate` against a plain `jq -c .` pass over the
//! same model-generated log, in the same run, plus the validator's peak memory at two log
//! sizes (it must stay flat).
//!
//! CPU time (user + system of the child) is the headline because this machine is shared and
//! wall time swings with load; wall time is printed too.
use std::{
    fs::File,
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

/// One timed child process.
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub struct Run {
    pub wall_s: f64,
    pub cpu_s: f64,
    /// Peak resident set in KiB, when `/usr/bin/time` is available to measure it.
    pub max_rss_kib: Option<u64>,
}

#[derive(Clone, Debug)]
// Returned for callers that want to assert on it; printing is the main output.
#[allow(dead_code)]
pub struct BenchReport {
    pub events: u64,
    pub bytes: u64,
    pub tracer: Run,
    pub jq: Run,
    /// jq CPU time / tracer CPU time.
    pub ratio_cpu: f64,
    pub ratio_wall: f64,
    /// (events, peak RSS KiB) of `tracer validate` on a log a tenth the size, for comparison.
    pub small: Option<(u64, Option<u64>)>,
}

/// Children's CPU time so far (utime + stime of waited-for children), from /proc/self/stat.
fn children_cpu_s() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; cutime and cstime are fields 16 and 17.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/self/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        Ok(f.get(i).context("short /proc/self/stat")?.parse::<f64>()?)
    };
    // rest starts at field 3 (state), so field n is at index n - 3.
    let ticks = tick(16 - 3)? + tick(17 - 3)?;
    // USER_HZ is 100 on every Linux ABI this runs on.
    Ok(ticks / 100.0)
}

/// Runs `argv` with stdout to /dev/null, timing it; wraps it in `/usr/bin/time -f %M` when
/// present to get the peak RSS.
fn timed(argv: &[&str]) -> anyhow::Result<Run> {
    let gnu_time = Path::new("/usr/bin/time").exists();
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "%M"]).args(argv);
        c
    } else {
        let mut c = Command::new(argv.first().context("empty command")?);
        c.args(argv.get(1..).unwrap_or_default());
        c
    };
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let cpu0 = children_cpu_s()?;
    let t0 = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {argv:?}"))?;
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = children_cpu_s()? - cpu0;
    // `tracer validate` exits 0 for a clean model log; anything else is a failed benchmark.
    if !out.status.success() {
        bail!(
            "{argv:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let max_rss_kib = if gnu_time {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
    } else {
        None
    };
    Ok(Run {
        wall_s,
        cpu_s,
        max_rss_kib,
    })
}

fn warm(path: &Path) -> anyhow::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        n += k as u64;
    }
}

fn generate(tracer: &Path, events: u64, out: &Path) -> anyhow::Result<()> {
    let st = Command::new(tracer)
        .args([
            "model",
            "generate",
            "--events",
            &events.to_string(),
            "--seed",
            "1",
            "--mms",
            "8",
        ])
        .arg("-o")
        .arg(out)
        .status()?;
    if !st.success() {
        bail!("tracer model generate failed");
    }
    Ok(())
}

/// Generates a model log of `events` events in `workdir` with `tracer` (a release build: the
/// static one the VMs use serves, and saves a second build), and times `tracer validate` and
/// `jq -c .` on it (page cache warm for both). Also validates a log a tenth the size to show
/// the peak memory does not grow with the log. Prints a report and returns it; the generated
/// logs are removed.
pub fn bench_validate(tracer: &Path, events: u64, workdir: &Path) -> anyhow::Result<BenchReport> {
    std::fs::create_dir_all(workdir)?;
    let log = workdir.join("bench-validate.jsonl");
    let small_log = workdir.join("bench-validate-small.jsonl");

    println!("generating {events} events ...");
    generate(tracer, events, &log)?;
    let bytes = warm(&log)?;
    let log_s = log.to_str().context("non-UTF-8 work directory")?;
    let tr = tracer.to_str().context("non-UTF-8 target directory")?;

    let tracer_run = timed(&[tr, "validate", log_s])?;
    let jq_run = timed(&["jq", "-c", ".", log_s])?;

    let small_events = events / 10;
    let small = if small_events >= 1000 {
        generate(tracer, small_events, &small_log)?;
        warm(&small_log)?;
        let r = timed(&[
            tr,
            "validate",
            small_log.to_str().context("non-UTF-8 path")?,
        ])?;
        Some((small_events, r.max_rss_kib))
    } else {
        None
    };
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&small_log);

    let ratio_cpu = jq_run.cpu_s / tracer_run.cpu_s.max(0.01);
    let ratio_wall = jq_run.wall_s / tracer_run.wall_s.max(0.001);
    let mb = bytes as f64 / 1e6;
    let rss = |r: Option<u64>| {
        r.map_or_else(
            || "n/a".to_string(),
            |k| format!("{:.1} MiB", k as f64 / 1024.0),
        )
    };
    println!("log: {events} events, {mb:.1} MB");
    for (name, r) in [("tracer validate", &tracer_run), ("jq -c .", &jq_run)] {
        println!(
            "{name:>16}: wall {:.2} s, cpu {:.2} s, {:.0} MB/s (cpu), {:.2} M events/s (cpu), peak RSS {}",
            r.wall_s,
            r.cpu_s,
            mb / r.cpu_s.max(0.01),
            events as f64 / 1e6 / r.cpu_s.max(0.01),
            rss(r.max_rss_kib)
        );
    }
    println!(
        "ratio (jq / tracer): {ratio_cpu:.1}x in CPU time, {ratio_wall:.1}x in wall time (target >= 20x)"
    );
    if let Some((n, r)) = small {
        println!(
            "memory: peak RSS {} at {n} events vs {} at {events} events",
            rss(r),
            rss(tracer_run.max_rss_kib)
        );
    }
    Ok(BenchReport {
        events,
        bytes,
        tracer: tracer_run,
        jq: jq_run,
        ratio_cpu,
        ratio_wall,
        small,
    })
}
