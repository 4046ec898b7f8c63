//! `tracer report LOG -o DIR`: a Markdown report with SVG charts (drawn with plotters) beside
//! the validator's verdict and counts. [`write`] is the library entry point, so other commands
//! that judge a log (the kernel-validation runs) can put the same report next to their results.
//!
//! The charts (`docs/export.md`):
//! - `timeline.svg`: the densest second of the log (the one with the most events), one row per
//!   CPU, write sections in red above GUP-fast windows in blue;
//! - `write-sections.svg`, `gup-fast.svg`: histograms of their durations (log2 buckets);
//! - `seq.svg`: `write_protect_seq` over time, one line per mm (the busiest few).
//!
//! The log is read twice (first to find the densest second and the time range, then to
//! collect what the charts draw), so memory stays bounded by what is drawn, not by the log.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use plotters::prelude::*;
use thiserror::Error;

use crate::{
    events::{
        Body, CopyFn, Event, Kind, Record,
        log::{self, Item, LogError, LogReader, Mode, ReadArgs},
    },
    validate::{self, Report, Verdict},
};

#[derive(Debug, Error)]
pub enum ReportError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot write {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("drawing {path}: {err}")]
    Draw { path: PathBuf, err: String },
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Event log (JSON Lines, schema 1).
    pub log: PathBuf,
    /// Directory to write `report.md` and its charts into (created if missing).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub judge: super::JudgeArgs,
}

/// What [`write`] produced.
#[derive(Clone, Debug)]
pub struct Written {
    pub markdown: PathBuf,
    pub charts: Vec<PathBuf>,
}

/// Log2 duration buckets: bucket `i` holds [2^(i+SHIFT), 2^(i+SHIFT+1)) ns, the first and
/// last also everything below and above (128 ns .. 8 ms).
const BUCKETS: usize = 17;
const SHIFT: u32 = 7;

fn bucket(ns: u64) -> usize {
    let log = 63 - ns.max(1).leading_zeros();
    (log.saturating_sub(SHIFT) as usize).min(BUCKETS - 1)
}

fn short_ns(ns: u64) -> String {
    match ns {
        n if n >= 1_000_000 => format!("{}ms", n / 1_000_000),
        n if n >= 1_000 => format!("{}µs", n / 1_000),
        n => format!("{n}ns"),
    }
}

/// Mms whose seq is drawn.
const SEQ_MMS: usize = 6;
/// Points per mm in the seq chart.
const SEQ_POINTS: usize = 2000;

const NS: u64 = 1_000_000_000;

/// Pairs write sections and GUP-fast windows per thread, whichever events the log has: write
/// sites (`write_begin`→`write_end`) or, without them, COW copy windows that advanced seq; read
/// sites (`read_begin`→`read_retry`) or, without them, PIN `gup_enter`→`gup_exit`.
#[derive(Default)]
struct Pairs {
    sited_writes: bool,
    sited_reads: bool,
    write: HashMap<u32, (u64, u32)>,
    copy: HashMap<u32, (u64, u32, Option<u32>, bool)>,
    read: HashMap<u32, (u64, u32)>,
    call: HashMap<u32, (u64, u32, bool)>,
}

/// A finished interval: (start ts, end ts, cpu of its start, is a write section).
type Span = (u64, u64, u32, bool);

impl Pairs {
    fn new(h: &crate::events::Header) -> Pairs {
        let has = |k: Kind| h.probes.iter().any(|p| Kind::from_name(&p.name) == Some(k));
        Pairs {
            sited_writes: has(Kind::WriteBegin),
            sited_reads: has(Kind::ReadBegin),
            ..Pairs::default()
        }
    }

    fn push(&mut self, e: &Event) -> Option<Span> {
        match &e.body {
            Body::Site { kind, seq } => match kind {
                Kind::WriteBegin => {
                    self.write.insert(e.tid, (e.ts, e.cpu));
                    None
                }
                Kind::WriteEnd => self.write.remove(&e.tid).map(|(t, c)| (t, e.ts, c, true)),
                // A read that loaded an odd value bails before any retry.
                Kind::ReadBegin if seq.is_some_and(|v| v & 1 == 0) => {
                    self.read.insert(e.tid, (e.ts, e.cpu));
                    None
                }
                Kind::ReadBegin | Kind::RetryFail => {
                    self.read.remove(&e.tid);
                    None
                }
                Kind::ReadRetry => self.read.remove(&e.tid).map(|(t, c)| (t, e.ts, c, false)),
                _ => None,
            },
            Body::CopyEnter {
                func: CopyFn::Cpr,
                cow,
                seq,
                ..
            } if !self.sited_writes => {
                self.copy.insert(e.tid, (e.ts, e.cpu, *seq, *cow));
                None
            }
            Body::CopyExit {
                func: CopyFn::Cpr,
                seq,
                ..
            } if !self.sited_writes => {
                let (t, c, s0, cow) = self.copy.remove(&e.tid)?;
                let advanced = matches!((s0, seq), (Some(a), Some(b)) if b.wrapping_sub(a) == 2);
                (cow && advanced).then_some((t, e.ts, c, true))
            }
            Body::GupEnter { pin, .. } if !self.sited_reads => {
                self.call.insert(e.tid, (e.ts, e.cpu, *pin));
                None
            }
            Body::GupExit { .. } if !self.sited_reads => {
                let (t, c, pin) = self.call.remove(&e.tid)?;
                pin.then_some((t, e.ts, c, false))
            }
            _ => None,
        }
    }
}

/// Opens the log at `path` leniently: the caller has already judged it (and refused it if it
/// wanted strictness); the charts draw what can be read.
fn open(path: &Path) -> Result<LogReader<Box<dyn Read + Send>>, LogError> {
    log::open(path, Mode::Lenient)
}

/// Calls `f` with every event of the rest of `log`.
fn for_events<R: Read>(log: &mut LogReader<R>, mut f: impl FnMut(&Event)) -> Result<(), LogError> {
    while let Some((_, item)) = log.next_item()? {
        match item {
            Item::Event(e) => f(&e.to_event()),
            Item::Record(Record::Event(e)) => f(&e),
            _ => {}
        }
    }
    Ok(())
}

struct Data {
    header: crate::events::Header,
    events: u64,
    first_ts: u64,
    last_ts: u64,
    /// Start of the densest second (ns) and its event count.
    dense: (u64, u64),
    cpus: u32,
    write_hist: [u64; BUCKETS],
    gup_hist: [u64; BUCKETS],
    write_label: &'static str,
    gup_label: &'static str,
    spans: Vec<Span>,
    seq: Vec<(String, Vec<(f64, f64)>)>,
}

fn collect(path: &Path) -> Result<Data, LogError> {
    // Pass 1: the time range, events per second, the busiest mms, the histograms.
    let mut per_sec: BTreeMap<u64, u64> = BTreeMap::new();
    let mut per_mm: HashMap<String, u64> = HashMap::new();
    let (mut first, mut last, mut events, mut cpus) = (u64::MAX, 0u64, 0u64, 0u32);
    let mut write_hist = [0u64; BUCKETS];
    let mut gup_hist = [0u64; BUCKETS];
    let mut log = open(path)?;
    let header = log.header().clone();
    let mut p = Pairs::new(&header);
    for_events(&mut log, |e| {
        events += 1;
        first = first.min(e.ts);
        last = last.max(e.ts);
        cpus = cpus.max(e.cpu + 1);
        *per_sec.entry(e.ts / NS).or_default() += 1;
        *per_mm.entry(e.mm.clone()).or_default() += 1;
        if let Some((a, b, _, w)) = p.push(e) {
            let h = if w { &mut write_hist } else { &mut gup_hist };
            h[bucket(b.saturating_sub(a))] += 1;
        }
    })?;
    let dense = per_sec
        .iter()
        .max_by_key(|(s, n)| (**n, std::cmp::Reverse(**s)))
        .map_or((0, 0), |(s, n)| (s * NS, *n));
    let mut busiest: Vec<(String, u64)> = per_mm.into_iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    busiest.truncate(SEQ_MMS);
    let first = if events == 0 { 0 } else { first };

    // Pass 2: the spans of the densest second, and seq over time (one point per time bucket,
    // the last value in it).
    let mut p = Pairs::new(&header);
    let mut spans = Vec::new();
    let span_ns = last.saturating_sub(first).max(1);
    let mut seq: BTreeMap<String, BTreeMap<u64, u32>> = busiest
        .iter()
        .map(|(m, _)| (m.clone(), BTreeMap::new()))
        .collect();
    let mut log = open(path)?;
    for_events(&mut log, |e| {
        if let Some(s) = p.push(e)
            && s.0 >= dense.0
            && s.0 < dense.0 + NS
        {
            spans.push(s);
        }
        if let (Some(points), Some(v)) = (seq.get_mut(&e.mm), e.body.seq()) {
            let v = match e.body.kind() {
                Kind::WriteBegin | Kind::WriteEnd => v.wrapping_add(1),
                _ => v,
            };
            let slot = e.ts.saturating_sub(first).saturating_mul(SEQ_POINTS as u64) / span_ns;
            points.insert(slot, v);
        }
    })?;
    let seq = busiest
        .iter()
        .filter_map(|(m, _)| {
            let pts = seq.remove(m)?;
            let v = pts
                .into_iter()
                .map(|(slot, v)| {
                    (
                        (slot as f64 * span_ns as f64 / SEQ_POINTS as f64) / 1e9,
                        f64::from(v),
                    )
                })
                .collect();
            Some((m.clone(), v))
        })
        .collect();
    Ok(Data {
        write_label: if p.sited_writes {
            "write_begin → write_end"
        } else {
            "COW copy_page_range windows that advanced seq"
        },
        gup_label: if p.sited_reads {
            "read_begin → read_retry"
        } else {
            "PIN gup_enter → gup_exit"
        },
        header,
        events,
        first_ts: first,
        last_ts: last,
        dense,
        cpus: cpus.max(1),
        write_hist,
        gup_hist,
        spans,
        seq,
    })
}

fn draw_err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Draw {
        path: path.to_path_buf(),
        err: format!("{e:?}"),
    }
}

const WRITE_COLOR: RGBColor = RGBColor(200, 40, 40);
const GUP_COLOR: RGBColor = RGBColor(40, 90, 200);

fn timeline(path: &Path, d: &Data) -> Result<(), ReportError> {
    let e = draw_err(path);
    // Drawn into memory, then written as the tool writes every file (crate::outfile).
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 120 + 70 * d.cpus)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let from = d.dense.0.max(d.first_ts);
        let caption = format!(
            "densest second: {:.0}-{:.0} s after the first event ({} events); red: write sections, blue: GUP-fast windows",
            from.saturating_sub(d.first_ts) as f64 / 1e9,
            (d.dense.0 + NS).saturating_sub(d.first_ts) as f64 / 1e9,
            d.dense.1
        );
        let cpus = f64::from(d.cpus);
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..1000f64, 0f64..cpus)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc("ms into the second")
            .x_label_formatter(&|x| format!("{x:.0}"))
            // Labels at the middle of each CPU's lane only.
            .y_labels(d.cpus as usize * 2 + 1)
            .y_label_formatter(&|y| {
                if (y.fract() - 0.5).abs() < 0.01 {
                    format!("cpu {}", y.floor() as u32)
                } else {
                    String::new()
                }
            })
            .disable_y_mesh()
            .draw()
            .map_err(&e)?;
        // One lane per CPU: write sections in its upper half, GUP-fast windows in its lower half.
        // Every span is at least 0.4 ms wide so that microsecond windows still show.
        let ms = |ts: u64| ts.saturating_sub(d.dense.0) as f64 / 1e6;
        chart
            .draw_series(d.spans.iter().map(|&(a, b, cpu, write)| {
                let x0 = ms(a);
                let x1 = ms(b).max(x0 + 0.4).min(1000.0);
                let y = f64::from(cpu);
                let (y0, y1, c) = if write {
                    (y + 0.52, y + 0.92, WRITE_COLOR)
                } else {
                    (y + 0.08, y + 0.48, GUP_COLOR)
                };
                Rectangle::new([(x0, y0), (x1, y1)], c.filled())
            }))
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    crate::outfile::write(path, svg.as_bytes()).map_err(|err| ReportError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    Ok(())
}

fn histogram(
    path: &Path,
    title: &str,
    hist: &[u64; BUCKETS],
    color: RGBColor,
) -> Result<(), ReportError> {
    let e = draw_err(path);
    // Drawn into memory, then written as the tool writes every file (crate::outfile).
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let n: u64 = hist.iter().sum();
        let top = hist.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{title} (n={n})"), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..BUCKETS as f64, 0f64..top)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc("duration (bucket upper bound, log2)")
            .y_desc("count")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_labels(BUCKETS)
            .x_label_formatter(&|x| short_ns(1u64 << (x.floor() as u32 + SHIFT + 1)))
            .disable_x_mesh()
            .draw()
            .map_err(&e)?;
        chart
            .draw_series(
                hist.iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, c)| {
                        let x = i as f64;
                        Rectangle::new([(x + 0.1, 0.0), (x + 0.9, *c as f64)], color.filled())
                    }),
            )
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    crate::outfile::write(path, svg.as_bytes()).map_err(|err| ReportError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    Ok(())
}

fn seq_chart(path: &Path, d: &Data) -> Result<(), ReportError> {
    let e = draw_err(path);
    // Drawn into memory, then written as the tool writes every file (crate::outfile).
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let xmax = (d.last_ts.saturating_sub(d.first_ts) as f64 / 1e9).max(1e-3);
        let ymax = d
            .seq
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.1))
            .fold(1.0f64, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "write_protect_seq over time (the busiest mms)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first event")
            .y_desc("seq")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(&e)?;
        for (i, (mm, pts)) in d.seq.iter().enumerate() {
            let c = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(&e)?
                .label(mm.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        if !d.seq.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(&e)?;
        }
        root.present().map_err(&e)?;
    }
    crate::outfile::write(path, svg.as_bytes()).map_err(|err| ReportError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    Ok(())
}

/// The chart files, in the order the report shows them.
pub const CHARTS: [&str; 4] = [
    "timeline.svg",
    "write-sections.svg",
    "gup-fast.svg",
    "seq.svg",
];

/// Writes `dir/report.md` and its charts for the log at `log`, with `verdict` (the validator's
/// report on that log, from [`validate::validate_log`] or `tracer check`) as its judgement.
/// `dir` is created if missing; files in it are replaced.
pub fn write(log: &Path, verdict: &Report, dir: &Path) -> Result<Written, ReportError> {
    std::fs::create_dir_all(dir).map_err(|err| ReportError::Io {
        path: dir.to_path_buf(),
        err,
    })?;
    let d = collect(log)?;
    let charts: Vec<PathBuf> = CHARTS.iter().map(|c| dir.join(c)).collect();
    timeline(&charts[0], &d)?;
    histogram(
        &charts[1],
        &format!("write sections: {}", d.write_label),
        &d.write_hist,
        WRITE_COLOR,
    )?;
    histogram(
        &charts[2],
        &format!("GUP-fast windows: {}", d.gup_label),
        &d.gup_hist,
        GUP_COLOR,
    )?;
    seq_chart(&charts[3], &d)?;
    let markdown = dir.join("report.md");
    crate::outfile::write(&markdown, markdown_text(log, verdict, &d).as_bytes()).map_err(
        |err| ReportError::Io {
            path: markdown.clone(),
            err,
        },
    )?;
    Ok(Written { markdown, charts })
}

fn markdown_text(log: &Path, r: &Report, d: &Data) -> String {
    let s = &r.stats;
    let h = &d.header;
    let mode = h.extra.get("mode").and_then(|m| m.as_str()).unwrap_or("?");
    let mut o = String::new();
    let _ = writeln!(o, "# tracer report: {}\n", log.display());
    let _ = writeln!(
        o,
        "Kernel `{}`, {mode} probes, {} events over {:.2} s ({}).\n",
        h.kernel,
        d.events,
        d.last_ts.saturating_sub(d.first_ts) as f64 / 1e9,
        h.tool
    );
    let verdict = match r.verdict {
        Verdict::Clean => {
            "**clean**: no violation, and the log carries the evidence a clean verdict needs"
        }
        Verdict::Violations => "**violations**: at least one rule of the protocol was broken",
        Verdict::Inconclusive => {
            "**inconclusive**: no violation, but evidence a clean verdict needs is missing"
        }
    };
    let _ = writeln!(o, "## Verdict\n\n{verdict}.\n");
    for dft in &r.defects {
        let _ = writeln!(
            o,
            "- defect `{}` in `{}`: {}",
            dft.defect.name(),
            dft.symbol,
            dft.why
        );
    }
    if !r.missing_evidence.is_empty() {
        let _ = writeln!(o, "Missing evidence:\n");
        for m in &r.missing_evidence {
            let _ = writeln!(o, "- {m}");
        }
        o.push('\n');
    }
    let _ = writeln!(o, "| what went right | count |\n|---|---|");
    for (what, n) in [
        ("write sections", s.write_sections),
        ("PIN GUP-fast calls", s.pin_gup_fast),
        ("bails on an odd seq", s.odd_bails),
        ("failed retries", s.failed_retries),
        ("protected overlaps", s.protected_overlaps),
        ("copies", s.copies),
        ("of them COW", s.cow_copies),
        ("GUP-fast calls", s.gup_calls),
        ("events lost", s.lost),
        ("violations", s.violations),
    ] {
        let _ = writeln!(o, "| {what} | {n} |");
    }
    let _ = writeln!(
        o,
        "\n| rule | checked | exercised | violations |\n|---|---|---|---|"
    );
    for rr in &r.rules {
        let checked = match &rr.why_not {
            None => "yes".to_owned(),
            Some(w) => format!("no: {w}"),
        };
        let _ = writeln!(
            o,
            "| `{}` | {checked} | {} | {} |",
            rr.rule.as_str(),
            rr.exercised,
            rr.violations
        );
    }
    if !r.violations.is_empty() {
        let _ = writeln!(o, "\n## Violations\n");
        for v in r.violations.iter().take(20) {
            let lines: Vec<String> = v.lines.iter().map(u64::to_string).collect();
            let _ = writeln!(
                o,
                "- `{}` at line {} (mm {}, tid {}): {} (lines {})",
                v.rule.as_str(),
                v.line,
                v.mm,
                v.tid,
                v.message,
                lines.join(", ")
            );
        }
        if s.violations > 20 {
            let _ = writeln!(
                o,
                "- … {} more (`tracer validate` lists them)",
                s.violations - 20
            );
        }
    }
    let _ = writeln!(o, "\n## Charts\n");
    let _ = writeln!(
        o,
        "The densest second, per CPU: write sections (red, {}) against GUP-fast windows (blue, {}).\n\n![timeline](timeline.svg)\n",
        d.write_label, d.gup_label
    );
    let _ = writeln!(
        o,
        "Durations of the write sections and of the GUP-fast windows.\n\n![write sections](write-sections.svg)\n\n![GUP-fast windows](gup-fast.svg)\n"
    );
    let _ = writeln!(
        o,
        "`write_protect_seq` over time, per mm (the {SEQ_MMS} with the most events).\n\n![seq](seq.svg)"
    );
    o
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let mut log: LogReader<Box<dyn Read + Send>> = log::open(&args.log, args.read.mode())?;
    let verdict = validate::validate_log(&mut log, args.judge.options())?;
    if let Some(note) = log.skip_note() {
        eprintln!("tracer: {note}");
    }
    drop(log);
    let w = write(&args.log, &verdict, &args.output)?;
    eprintln!(
        "tracer: verdict {}; wrote {} and {} charts",
        verdict.verdict.as_str(),
        w.markdown.display(),
        w.charts.len()
    );
    // As `tracer validate`: the verdict is the exit status.
    Ok(ExitCode::from(verdict.verdict.exit_status()))
}
