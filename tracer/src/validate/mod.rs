//! `tracer validate`: replay a schema-1 event log through the protocol and judge it.
//!
//! The rules, the verdicts and the exit statuses are documented in `docs/validate.md`. The
//! engine ([`Validator`]) is incremental so the live TUI can feed it records as they arrive;
//! this module adds the streaming reader and the reports.
mod engine;
pub mod fast;

use std::{
    fmt::Write as _,
    fs::File,
    io::{self, Read, Write},
    process::ExitCode,
};

pub use engine::{
    DEFAULT_SLACK_NS, DEFAULT_WINDOW, DefectReport, MAX_STORED_VIOLATIONS, Options, Report, Rule,
    RuleReport, Stats, Validator, Verdict, Violation,
};
use thiserror::Error;

use crate::events::Record;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Event log (JSON Lines, schema 1), or `-` for standard input.
    pub file: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Reorder window, in events: how far out of timestamp order a line may be delivered.
    #[arg(long, default_value_t = DEFAULT_WINDOW)]
    pub window: usize,
    /// Timestamp uncertainty (ns) between CPUs: how far an event's ts may be from the access
    /// it reports. Default: the log header's `clock_slack_ns` (the recorder's estimate: 100 us
    /// on hardware, 50 ms under a hypervisor), else 100 us.
    #[arg(long)]
    pub slack_ns: Option<u64>,
}

/// Why a log cannot be judged at all (exit status 2).
#[derive(Debug, Error)]
pub enum InputError {
    #[error("cannot read {path}: {err}")]
    Open { path: String, err: io::Error },
    #[error("line {line}: read error: {err}")]
    Read { line: u64, err: io::Error },
    #[error("line {line}: not UTF-8 text")]
    NotUtf8 { line: u64 },
    // The causes are formatted inline (not as `source`) so the one-line message is not
    // repeated by the CLI's error-chain printing.
    #[error("line {line}: {err}")]
    Parse {
        line: u64,
        err: crate::events::schema::ParseError,
    },
    #[error("line {line}: the first record must be a header with \"schema\":1")]
    NoHeader { line: u64 },
    #[error("line {line}: a second header")]
    SecondHeader { line: u64 },
    #[error("line {line}: a record after the summary")]
    AfterSummary { line: u64 },
    #[error("the log is empty (no header)")]
    Empty,
}

/// Splits a byte stream into lines without copying each one (memchr over a large buffer).
struct Lines<R> {
    rd: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Lines<R> {
    fn new(rd: R) -> Self {
        Lines {
            rd,
            buf: vec![0; 1 << 20],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// The next line without its `\n`, or `None` at the end.
    fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            let pending = self.buf.get(self.start..self.end).unwrap_or_default();
            if let Some(k) = memchr::memchr(b'\n', pending) {
                let (s, e) = (self.start, self.start + k);
                self.start = e + 1;
                return Ok(self.buf.get(s..e));
            }
            if self.eof {
                if self.start < self.end {
                    let (s, e) = (self.start, self.end);
                    self.start = e;
                    return Ok(self.buf.get(s..e));
                }
                return Ok(None);
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                // A line longer than the buffer: grow it (bounded by the longest line).
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let room = self.buf.get_mut(self.end..).unwrap_or_default();
            match self.rd.read(room) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Validates a whole log from a reader. The fast path handles plain event lines; everything
/// else goes through [`Record::parse`].
pub fn validate_reader<R: Read>(input: R, opts: Options) -> Result<Report, InputError> {
    let mut lines = Lines::new(input);
    let mut line: u64 = 0;
    let mut v: Option<Validator> = None;
    let mut after_summary = false;
    loop {
        let bytes = match lines.next_line() {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(err) => {
                return Err(InputError::Read {
                    line: line + 1,
                    err,
                });
            }
        };
        line += 1;
        // The common case first: a canonical event line, parsed (and UTF-8 checked) in place.
        if let Some(val) = v.as_mut()
            && !after_summary
            && let Some(fe) = fast::parse_canonical(bytes)
        {
            val.push_fast(line, &fe);
            continue;
        }
        let text = std::str::from_utf8(bytes).map_err(|_| InputError::NotUtf8 { line })?;
        let text = text.strip_suffix('\r').unwrap_or(text);
        if let Some(val) = v.as_mut()
            && !after_summary
            && let Some(fe) = fast::parse_event(text)
        {
            val.push_fast(line, &fe);
            continue;
        }
        if text.trim().is_empty() {
            continue;
        }
        if after_summary {
            return Err(InputError::AfterSummary { line });
        }
        let rec = Record::parse(text).map_err(|err| InputError::Parse { line, err })?;
        match (&mut v, &rec) {
            (None, Record::Header(h)) => v = Some(Validator::with_options(h, opts)),
            (None, _) => return Err(InputError::NoHeader { line }),
            (Some(_), Record::Header(_)) => return Err(InputError::SecondHeader { line }),
            (Some(val), r) => {
                after_summary = matches!(r, Record::Summary(_));
                val.push(line, r);
            }
        }
    }
    v.map(Validator::finish).ok_or(InputError::Empty)
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
    if s.max_ts_inversion_ns >= 1_000_000 {
        limits.push(format!(
            "events were delivered up to {:.1} ms out of timestamp order: the CPUs' clocks may disagree, and ts order may not be real order",
            s.max_ts_inversion_ns as f64 / 1e6
        ));
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
    let opts = Options {
        window: args.window,
        slack_ns: args.slack_ns.unwrap_or(DEFAULT_SLACK_NS),
        header_slack: args.slack_ns.is_none(),
    };
    let report = if args.file == "-" {
        validate_reader(io::stdin().lock(), opts)?
    } else {
        let f = File::open(&args.file).map_err(|err| InputError::Open {
            path: args.file.clone(),
            err,
        })?;
        validate_reader(f, opts)?
    };
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(render_text(&report).as_bytes())?;
    }
    out.flush()?;
    Ok(ExitCode::from(report.verdict.exit_status()))
}
