//! Exports of an event log for other tools: a Perfetto / chrome://tracing timeline
//! ([`perfetto`]), a spreadsheet table ([`csv`]), a filtered schema-1 log ([`Format::Jsonl`]),
//! and a Markdown report with charts ([`report`]). Formats and columns: `docs/export.md`.
//!
//! Every export reads the log through the shared reader ([`crate::events::log`]), so it treats
//! bad lines as `validate` does (strict, or `--lenient` with the skips counted), and the
//! timeline's violation and protected-overlap marks come from the validator run over the very
//! records exported.
pub mod csv;
pub mod perfetto;
pub mod report;

use std::{
    fs::File,
    io::{self, BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use thiserror::Error;

use crate::{
    events::{
        Event, Record,
        log::{self, Item, LogError, LogReader, LogWriter, ReadArgs, WriteError},
    },
    validate::{self, DEFAULT_WINDOW, Overlap, Report, Validator},
};

/// What an export can be written as.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Chrome trace-event JSON: opens in ui.perfetto.dev and chrome://tracing.
    Perfetto,
    /// One row per event, documented columns (docs/export.md).
    Csv,
    /// A schema-1 log (the TUI uses it to save what is on screen).
    Jsonl,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Perfetto, Format::Csv, Format::Jsonl];

    /// The file extension.
    pub const fn ext(self) -> &'static str {
        match self {
            Format::Perfetto => "json",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Format::Perfetto => "perfetto",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

impl From<io::Error> for ExportError {
    fn from(e: io::Error) -> Self {
        ExportError::Io(e)
    }
}

impl From<serde_json::Error> for ExportError {
    fn from(e: serde_json::Error) -> Self {
        ExportError::Json(e)
    }
}

impl From<::csv::Error> for ExportError {
    fn from(e: ::csv::Error) -> Self {
        ExportError::Csv(e)
    }
}

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot create {path}: {err}")]
    Create { path: PathBuf, err: io::Error },
    // Causes formatted inline, not as `source`: the one-line message is not repeated by the
    // CLI's error-chain printing.
    #[error("writing the export: {0}")]
    Io(io::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("writing the export: {0}")]
    Json(serde_json::Error),
    #[error("writing the CSV: {0}")]
    Csv(::csv::Error),
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error("{} is the log being read; choose another output file", .0.display())]
    SameFile(PathBuf),
}

/// Whether two paths name the same existing file (creating the output would empty the input).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Event log (JSON Lines, schema 1), or `-` for standard input.
    pub log: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Perfetto)]
    pub format: Format,
    /// Write here (default: standard output).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
}

/// How the validator whose findings the exports show is run (as `tracer validate`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct JudgeArgs {
    /// The validator's reorder window, in events (see `tracer validate --window`).
    #[arg(long, default_value_t = DEFAULT_WINDOW, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=crate::cli::WINDOW_MAX))]
    pub window: usize,
    /// The validator's timestamp slack (default: the header's `clock_slack_ns`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=crate::cli::SLACK_NS_MAX))]
    pub slack_ns: Option<u64>,
}

impl JudgeArgs {
    pub fn options(self) -> validate::Options {
        validate::options(self.window, self.slack_ns)
    }
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Events exported (after the filter).
    pub events: u64,
    /// Lines the reader skipped (lenient).
    pub skipped: u64,
}

/// Which events to export: everything, or what a screen shows.
pub type Keep<'a> = &'a dyn Fn(&Event) -> bool;

/// One export format fed record by record; the validator's findings come at the end.
trait Sink {
    fn record(&mut self, line: u64, rec: &Record) -> Result<(), ExportError>;
    fn finish(&mut self, report: &Report, overlaps: &[Overlap]) -> Result<(), ExportError>;
}

/// Reads the rest of `log`, keeps the events `keep` accepts (with every `lost` line and the
/// summary), writes them to `out` as `format`, and returns what it wrote. The validator judges
/// the same records, for the timeline's marks.
pub fn export<R: Read, W: Write>(
    log: &mut LogReader<R>,
    format: Format,
    keep: Keep<'_>,
    out: W,
    opts: validate::Options,
) -> Result<Written, ExportError> {
    let header = log.header().clone();
    let mut sink: Box<dyn Sink + '_> = match format {
        Format::Perfetto => Box::new(perfetto::Writer::new(out, &header)?),
        Format::Csv => Box::new(csv::Writer::new(out)?),
        Format::Jsonl => Box::new(JsonlSink {
            w: LogWriter::new(out),
        }),
    };
    sink.record(1, &Record::Header(header.clone()))?;
    let mut v = Validator::with_options(&header, opts);
    v.keep_overlaps();
    let mut n = 0;
    while let Some((line, item)) = log.next_item()? {
        let rec = match item {
            Item::Skipped(_) => continue,
            other => match other.into_record() {
                Some(r) => r,
                None => continue,
            },
        };
        if let Record::Event(e) = &rec {
            if !keep(e) {
                continue;
            }
            n += 1;
        }
        v.push(line, &rec);
        sink.record(line, &rec)?;
    }
    let (report, overlaps) = v.finish_with_overlaps();
    sink.finish(&report, &overlaps)?;
    Ok(Written {
        events: n,
        skipped: log.skipped(),
    })
}

struct JsonlSink<W: Write> {
    w: LogWriter<W>,
}

impl<W: Write> Sink for JsonlSink<W> {
    fn record(&mut self, _line: u64, rec: &Record) -> Result<(), ExportError> {
        Ok(self.w.write(rec)?)
    }

    fn finish(&mut self, _: &Report, _: &[Overlap]) -> Result<(), ExportError> {
        Ok(self.w.flush()?)
    }
}

/// Creates `path` for writing (buffered).
pub fn create(path: &Path) -> Result<BufWriter<File>, ExportError> {
    crate::outfile::create(path, false)
        .map(|f| BufWriter::with_capacity(1 << 20, f))
        .map_err(|err| ExportError::Create {
            path: path.to_path_buf(),
            err,
        })
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(out) = &args.output
        && same_file(out, &args.log)
    {
        return Err(ExportError::SameFile(out.clone()).into());
    }
    let mut log = log::open(&args.log, args.read.mode())?;
    let keep: Keep<'_> = &|_| true;
    let written = match &args.output {
        Some(p) => {
            let w = export(
                &mut log,
                args.format,
                keep,
                create(p)?,
                args.judge.options(),
            )?;
            eprintln!(
                "tracer: {} events -> {} ({})",
                w.events,
                p.display(),
                args.format.name()
            );
            w
        }
        None => export(
            &mut log,
            args.format,
            keep,
            BufWriter::new(io::stdout().lock()),
            args.judge.options(),
        )?,
    };
    let _ = written;
    if let Some(note) = log.skip_note() {
        eprintln!("tracer: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Microseconds, as trace-event JSON wants them, exactly (ns precision as decimals).
pub(crate) fn us(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}
