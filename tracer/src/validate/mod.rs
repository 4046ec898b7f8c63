//! `tracer validate`: replay a schema-1 event log through the protocol and judge it.
//!
//! The rules, the verdicts and the exit statuses are documented in `docs/validate.md`. The
//! engine ([`Validator`]) is incremental so the live TUI can feed it records as they arrive;
//! this module feeds it from the shared log reader ([`crate::events::log`]) and renders the
//! reports.
mod engine;

use std::{fmt::Write as _, io::Read, path::PathBuf, process::ExitCode};

pub use engine::{
    DEFAULT_SLACK_NS, DEFAULT_WINDOW, DefectReport, LOSS_REPORT_LAG_NS, MAX_STORED_OVERLAPS,
    MAX_STORED_VIOLATIONS, Options, Overlap, OverlapKind, Report, Rule, RuleReport, Stats,
    Validator, Verdict, Violation,
};

/// The fast event reader, now part of the shared log layer (kept here for its old path).
pub use crate::events::fast;
use crate::events::log::{self as logfile, Item, LogError, LogReader, Mode, ReadArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Event log (JSON Lines, schema 1), or `-` for standard input.
    pub file: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Reorder window, in events: how far out of timestamp order a line may be delivered.
    #[arg(long, default_value_t = DEFAULT_WINDOW, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=crate::cli::WINDOW_MAX))]
    pub window: usize,
    /// Timestamp uncertainty (ns) between CPUs: how far an event's ts may be from the access
    /// it reports. Default: the log header's `clock_slack_ns` (the recorder's estimate: 100 us
    /// on hardware, 50 ms under a hypervisor), else 100 us.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=crate::cli::SLACK_NS_MAX))]
    pub slack_ns: Option<u64>,
    #[command(flatten)]
    pub read: ReadArgs,
}

impl Args {
    pub fn options(&self) -> Options {
        options(self.window, self.slack_ns)
    }
}

/// A defect discovery proved in the kernel's code is a rule of its own (`Rule::Defect`).
impl From<crate::sites::Defect> for Rule {
    fn from(d: crate::sites::Defect) -> Rule {
        Rule::Defect(d)
    }
}

/// Validator options from the command-line values (`slack_ns` unset: the header's).
pub fn options(window: usize, slack_ns: Option<u64>) -> Options {
    Options {
        window,
        slack_ns: slack_ns.unwrap_or(DEFAULT_SLACK_NS),
        header_slack: slack_ns.is_none(),
    }
}

/// Why a log cannot be judged at all (exit status 2): the shared reader's errors, each naming
/// its line.
pub type InputError = LogError;

/// Validates a whole log from a reader (strict: the first bad line is an error).
pub fn validate_reader<R: Read>(input: R, opts: Options) -> Result<Report, InputError> {
    let mut log = LogReader::new(input, None, Mode::Strict)?;
    validate_log(&mut log, opts)
}

/// Validates the rest of an opened log. Lines lenient reading skipped are missing evidence:
/// such a log is at best inconclusive.
pub fn validate_log<R: Read>(log: &mut LogReader<R>, opts: Options) -> Result<Report, LogError> {
    let mut v = Validator::with_options(log.header(), opts);
    let mut contradicted = Vec::new();
    log.for_each(|line, item| {
        // Matched by reference: moving the event out of the item is a copy per line.
        match &item {
            // The common case: no `Record` is built.
            Item::Event(e) => v.push_fast(line, e),
            Item::Record(r) => {
                v.push(line, r);
            }
            Item::Skipped(_) => {}
        }
        if v.has_contradictions() {
            contradicted.extend(v.take_contradictions());
        }
    })?;
    for (line, kind) in contradicted {
        log.reject(line, logfile::LineError::NotInHeader(kind.as_str()))?;
    }
    let mut report = v.finish();
    if let Some(note) = log.skip_note() {
        report.missing_evidence.push(note);
        if report.verdict == Verdict::Clean {
            report.verdict = Verdict::Inconclusive;
        }
    }
    Ok(report)
}

fn fmt_lines(lines: &[u64]) -> String {
    let mut s = String::new();
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{l}");
    }
    s
}

/// The report for a person: the verdict and why, what went right, each rule, then the
/// violations with the lines that prove them.
pub fn render_text(r: &Report) -> String {
    let s = &r.stats;
    let mut o = String::new();
    let _ = writeln!(o, "verdict: {}", r.verdict.as_str());
    for d in &r.defects {
        let _ = writeln!(o, "defect: {} in {}: {}", d.defect.name(), d.symbol, d.why);
    }
    if !r.missing_evidence.is_empty() {
        let _ = writeln!(o, "missing evidence:");
        for m in &r.missing_evidence {
            let _ = writeln!(o, "  - {m}");
        }
    }
    let _ = writeln!(
        o,
        "events: {} ({} copies, {} COW; {} GUP-fast calls)",
        r.events, s.copies, s.cow_copies, s.gup_calls
    );
    let _ = writeln!(
        o,
        "went right: {} write sections, {} PIN GUP-fast calls, {} bails on odd, {} failed retries, {} protected overlaps",
        s.write_sections, s.pin_gup_fast, s.odd_bails, s.failed_retries, s.protected_overlaps
    );
    if s.forks > 0 || s.pin_syscalls > 0 {
        let _ = writeln!(
            o,
            "tracepoint events: {} forks ({} bracketed under the mmap_lock), {} pinning syscalls ({} during a fork of their mm)",
            s.forks, s.exact_forks, s.pin_syscalls, s.pin_syscalls_during_fork
        );
    }
    let races_judged = r
        .rules
        .iter()
        .any(|x| x.rule == Rule::OddNotBailed && x.checked);
    if races_judged && s.protected_overlaps == 0 && r.verdict != Verdict::Violations {
        let _ = writeln!(
            o,
            "note: the run never raced (no protected overlap): odd_not_bailed and retry_ignored were never put to the test"
        );
    }
    if !r.function_level.is_empty() {
        let _ = writeln!(
            o,
            "judged at function level (copy windows, no write sites): {}",
            r.function_level.join(", ")
        );
    }
    let _ = writeln!(o, "rules:");
    for rr in &r.rules {
        let state = match (&rr.why_not, rr.violations) {
            (Some(w), _) => format!("not checked: {w}"),
            (None, 0) => "ok".to_owned(),
            (None, n) => format!("{n} violation(s)"),
        };
        let _ = writeln!(
            o,
            "  {:<22} exercised {:>8}  {state}",
            rr.rule.as_str(),
            rr.exercised
        );
    }
    let mut limits = Vec::new();
    match s.max_ts_inversion_ns {
        Some(ns) if ns >= 1_000_000 => limits.push(format!(
            "events were delivered up to {:.1} ms out of timestamp order: the CPUs' clocks may disagree, and ts order may not be real order",
            ns as f64 / 1e6
        )),
        None if r.events > 0 => limits.push(
            "delivery order was not measured (no event is written at its own time, such as a return): whether the CPUs' clocks agree is unknown"
                .to_owned(),
        ),
        _ => {}
    }
    if s.explained_by_loss > 0 {
        limits.push(format!(
            "{} findings not reported because lost events can explain them",
            s.explained_by_loss
        ));
    }
    if s.unknown_kinds > 0 {
        limits.push(format!(
            "{} lines of unknown kinds skipped",
            s.unknown_kinds
        ));
    }
    if !limits.is_empty() {
        let _ = writeln!(o, "limits: {}", limits.join("; "));
    }
    if s.violations > 0 {
        let by: Vec<String> = s
            .violations_by_rule
            .iter()
            .map(|(k, n)| format!("{} {n}", k.as_str()))
            .collect();
        let _ = writeln!(o, "violations: {} ({})", s.violations, by.join(", "));
        for v in &r.violations {
            let _ = writeln!(
                o,
                "  {} at line {} (ts {}, mm {}, tid {}): {}\n    lines: {}",
                v.rule.as_str(),
                v.line,
                v.ts,
                v.mm,
                v.tid,
                v.message,
                fmt_lines(&v.lines)
            );
        }
        if s.violations > r.violations.len() as u64 {
            let _ = writeln!(
                o,
                "  ... {} more not shown",
                s.violations - r.violations.len() as u64
            );
        }
    }
    o
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let mut log = logfile::open(&args.file, args.read.mode())?;
    let report = validate_log(&mut log, args.options())?;
    if let Some(note) = log.skip_note() {
        eprintln!("tracer: {note}");
    }
    let text = if args.json {
        serde_json::to_string(&report)? + "\n"
    } else {
        render_text(&report)
    };
    crate::outfile::print(&text).map_err(|e| anyhow::anyhow!("writing the verdict: {e}"))?;
    Ok(ExitCode::from(report.verdict.exit_status()))
}
