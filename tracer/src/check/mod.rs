//! `tracer check`: validate the running kernel in one command.
//!
//! It builds the attach plan (saying what discovery refused or found missing), saves what
//! `tracer sites --json` prints for this kernel, records the `tracer stress` race reproducer
//! (this same binary) through the recorder's own loop, judges the log with the validator's
//! default options (the header carries the clock slack), and leaves everything in one
//! directory: events.jsonl, sites.json, verdict.json, workload.json and report.md. The exit
//! status is the verdict's: 0 clean, 1 violations, 3 inconclusive; 2 when it cannot trace.
mod out;
mod report;

use std::{
    io::{BufWriter, Read as _, Write as _},
    path::PathBuf,
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, Result};
use serde_json::Value;
use thiserror::Error;

use crate::{
    events::Record,
    record::LogWriter,
    session::{self, Cancel, ModeArg, Sink, TraceArgs},
    validate::{Options, validate_reader},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds of the stress workload (above 0, at most 86400).
    #[arg(long, default_value_t = 20.0, value_parser = crate::cli::check_seconds)]
    pub duration: f64,
    /// Directory for the results [default: a new ./tracer-check-<release>-<timestamp>].
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// How to attach, as for `tracer record`: the default, kprobe, refuses a kernel without
    /// kprobes; `auto` takes the richest mode that works, whose verdict then names what it could
    /// not check.
    #[arg(long, value_enum, default_value_t = ModeArg::Kprobe)]
    pub mode: ModeArg,
}

#[derive(Debug, Error)]
pub enum CheckError {
    #[error(transparent)]
    Out(#[from] out::OutError),
    #[error("the stress workload failed ({status}); see {report}")]
    Workload { status: String, report: String },
}

/// Ring buffer for the check's recording: the VM tests showed 4 MiB can be outrun by one
/// event under TCG, and a lost event makes the verdict inconclusive.
const RING_SIZE: u32 = 16 << 20;
/// How long the recorder waits past the workload's own duration before stopping it.
const GRACE_SECS: f64 = 120.0;

/// The recorder's sink plus a progress line every few seconds.
struct Progress {
    log: LogWriter,
    events: u64,
    started: Instant,
    last: Instant,
}

impl Sink for Progress {
    async fn put(&mut self, rec: Record) -> Result<()> {
        if matches!(rec, Record::Event(_)) {
            self.events += 1;
        }
        self.log.put(rec).await
    }

    async fn put_event(&mut self, e: &crate::events::Event) -> Result<()> {
        self.events += 1;
        self.log.put_event(e).await
    }

    async fn batch_done(&mut self) -> Result<()> {
        self.log.batch_done().await?;
        if self.last.elapsed().as_secs() >= 5 {
            self.last = Instant::now();
            eprintln!(
                "check: {:.0}s, {} events recorded",
                self.started.elapsed().as_secs_f64(),
                self.events
            );
        }
        Ok(())
    }
}

/// What `tracer sites --json` prints for this kernel, run as this same binary before any
/// probe is attached (a kprobe inside a function changes the code discovery reads). Its JSON
/// is saved as printed; the report reads it as data.
fn sites_json(exe: &std::path::Path) -> Result<Vec<u8>, String> {
    let o = Command::new(exe)
        .args(["sites", "--json"])
        .output()
        .map_err(|e| format!("cannot run `tracer sites --json`: {e}"))?;
    // 0: both sides intact; 1: a proven defect; 3: a function of unknown shape. Its JSON
    // says which.
    match o.status.code() {
        Some(0 | 1 | 3) => Ok(o.stdout),
        _ => Err(format!(
            "`tracer sites --json` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
    }
}

fn read_json(dir: &out::ReportDir, name: &str) -> Result<Value, String> {
    let mut s = String::new();
    dir.read(name)
        .map_err(|e| e.to_string())?
        .read_to_string(&mut s)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    serde_json::from_str(&s).map_err(|e| format!("{name} is not JSON: {e}"))
}

pub fn main(args: Args) -> Result<ExitCode> {
    // The plan first: a machine that cannot trace is told so before anything is written.
    let mut trace = TraceArgs {
        mode: args.mode,
        duration: Some(std::time::Duration::from_secs_f64(
            args.duration + GRACE_SECS,
        )),
        pid: None,
        comm: None,
        ring_size: RING_SIZE,
        maxactive: crate::probes::kprobe_events::MAXACTIVE,
        btf: None,
        no_sites: false,
        command: Vec::new(),
    };
    let plan = session::plan(&trace)?;
    let release = plan.function.release.clone();
    let notes: Vec<String> = plan
        .defects
        .iter()
        .map(|d| format!("DEFECT: {d}"))
        .chain(
            plan.function
                .missing
                .iter()
                .chain(&plan.site_notes)
                .cloned(),
        )
        .collect();
    eprintln!(
        "check: kernel {release}: {} mode, {} function probes, {} instruction sites",
        plan.mode(),
        plan.function.probes.len(),
        plan.sites.len()
    );
    for m in &plan.function.missing {
        eprintln!("tracer: missing: {m}");
    }
    // Defects and whatever discovery could not prove, as `tracer record` says them.
    session::warn_plan(&plan);
    let (dir_path, fresh) = match &args.report {
        Some(d) => (d.clone(), false),
        None => (
            PathBuf::from(format!("tracer-check-{release}-{}", out::timestamp())),
            true,
        ),
    };
    let dir = out::ReportDir::open(&dir_path, fresh)?;
    eprintln!("check: writing the results to {}", dir.path().display());

    let exe = std::env::current_exe().context("locating this tracer binary")?;
    let sites = sites_json(&exe);
    match &sites {
        Ok(bytes) => {
            let mut f = dir.create("sites.json")?;
            f.write_all(bytes).context("writing sites.json")?;
        }
        Err(e) => {
            eprintln!("check: {e}");
            dir.remove("sites.json");
        }
    }

    dir.remove("workload.json");
    trace.command = vec![
        exe.display().to_string(),
        "stress".into(),
        "--duration".into(),
        args.duration.to_string(),
        "--summary".into(),
        dir.join("workload.json").display().to_string(),
    ];
    let header = session::header(&plan, &trace);
    eprintln!(
        "check: recording while `tracer stress --duration {}` forks and pins",
        args.duration
    );
    let file = dir.create("events.jsonl")?;
    let mut sink = Progress {
        log: LogWriter::new(Box::new(BufWriter::with_capacity(1 << 20, file))),
        events: 0,
        started: Instant::now(),
        last: Instant::now(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Ctrl-C and SIGTERM stop the recording through the session's one stop path.
    let cancel = Cancel::new();
    let stats = rt.block_on(async {
        cancel
            .on_signals()
            .context("installing the SIGINT/SIGTERM/SIGHUP handlers")?;
        session::pump(&plan, &trace, false, true, &mut sink, &cancel).await
    })?;
    sink.log.finish()?;
    drop(sink);
    eprintln!(
        "check: {} events, {} lost, in {:.1}s; workload {}",
        stats.events,
        stats.lost,
        stats.duration.as_secs_f64(),
        stats.command_status.as_deref().unwrap_or("status unknown")
    );

    eprintln!("check: validating events.jsonl");
    let verdict = validate_reader(dir.read("events.jsonl")?, Options::default())?;
    let mut vj = serde_json::to_string(&verdict)?;
    vj.push('\n');
    dir.create("verdict.json")?
        .write_all(vj.as_bytes())
        .context("writing verdict.json")?;
    let verdict_value = serde_json::to_value(&verdict)?;

    let sites_value = sites
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| serde_json::from_slice::<Value>(b).map_err(|e| format!("not JSON: {e}")));
    let workload_value = read_json(&dir, "workload.json");
    let md = report::render(&report::Facts {
        release: &release,
        mode: plan.mode(),
        plan_notes: &notes,
        clock_slack_ns: header.extra.get("clock_slack_ns").and_then(Value::as_u64),
        events: stats.events,
        lost: stats.lost,
        secs: stats.duration.as_secs_f64(),
        workload_status: stats.command_status.as_deref(),
        sites: sites_value.as_ref().map_err(String::as_str),
        workload: workload_value.as_ref().map_err(String::as_str),
        verdict: &verdict_value,
    });
    dir.create("report.md")?
        .write_all(md.as_bytes())
        .context("writing report.md")?;

    crate::outfile::print(&format!(
        "{}report: {}\n",
        crate::validate::render_text(&verdict),
        dir.join("report.md").display()
    ))
    .context("writing to standard output")?;
    // A workload that did not run cleanly leaves nothing meaningful to judge.
    let ok = stats
        .command_status
        .as_deref()
        .is_some_and(|s| s == "exit status: 0");
    if !ok {
        return Err(CheckError::Workload {
            status: stats
                .command_status
                .unwrap_or_else(|| "no exit status".into()),
            report: dir.join("report.md").display().to_string(),
        }
        .into());
    }
    Ok(ExitCode::from(verdict.verdict.exit_status()))
}
