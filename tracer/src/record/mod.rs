//! `tracer record`: a consumer of the tracing [`session`](crate::session) that writes its
//! records as JSON Lines.
//!
//! The log is complete and valid on every exit path: header first, then events in delivery
//! order, `lost` lines whenever the in-kernel loss counters grow, and a summary last.
use std::{
    io::{BufWriter, IsTerminal as _, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result};

use crate::{
    events::{Event, Record, log as logfile, text::EventText},
    probes::AttachPlan,
    session::{self, Cancel, Sink, TraceArgs, pump},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Write the log here. Without it the log goes to standard output: as JSON Lines when that
    /// is a file or a pipe, as one readable line per event on a terminal.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Include raw kernel mm addresses (`mm_addr`); they defeat KASLR, so logs omit them by default.
    #[arg(long)]
    pub raw_pointers: bool,
    /// Print the attach plan and exit without attaching.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the kernel's own kprobe event definitions (tracefs `kprobe_events` syntax, group
    /// `tbench`) at the points the plan attaches to, and exit: the anchor `cargo xtask bench`
    /// measures the tracer against.
    #[arg(long, hide = true)]
    pub kprobe_events: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub fn main(args: Args) -> Result<ExitCode> {
    let plan = session::plan(&args.trace)?;
    if args.dry_run {
        crate::outfile::print(&session::plan_text(&plan)).context("writing to standard output")?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.kprobe_events {
        let mut text = String::new();
        for d in crate::probes::kprobe_events::definitions(&plan, "tbench", args.trace.maxactive) {
            text.push_str(&d);
            text.push('\n');
        }
        crate::outfile::print(&text).context("writing to standard output")?;
        return Ok(ExitCode::SUCCESS);
    }
    session::warn_plan(&plan);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(record(plan, args))
}

/// `tracer record`'s sink (and `tracer check`'s): schema-1 lines through the shared writer
/// (`events::log`), to a file, or to stdout when it is not a terminal.
pub struct LogWriter {
    w: logfile::LogWriter<Box<dyn Write>>,
}

impl Sink for LogWriter {
    async fn put(&mut self, rec: Record) -> Result<()> {
        self.w.write(&rec)?;
        Ok(())
    }

    async fn put_event(&mut self, e: &Event) -> Result<()> {
        self.w.write_event(e)?;
        Ok(())
    }

    async fn batch_done(&mut self) -> Result<()> {
        // One write per ring-buffer batch, not per line.
        self.w.flush_buffer()?;
        Ok(())
    }
}

impl LogWriter {
    /// A sink writing the log to `out` line for line as `tracer record` does (`tracer check`
    /// records through it too).
    pub fn new(out: Box<dyn Write>) -> LogWriter {
        LogWriter {
            w: logfile::LogWriter::new(out),
        }
    }

    /// Writes what is buffered and flushes `out`.
    pub fn finish(&mut self) -> Result<()> {
        // The write error names the event log itself.
        Ok(self.w.flush()?)
    }
}

/// `tracer record` on a terminal: one readable line per event, as the TUI's tail shows them
/// (and as BCC tools print), instead of JSON nobody reads at that rate.
struct TextSink<W: Write> {
    out: W,
    first_ts: Option<u64>,
    foll: Option<crate::kernel::foll::FollFlags>,
    buf: String,
}

impl<W: Write> Sink for TextSink<W> {
    async fn put(&mut self, rec: Record) -> Result<()> {
        use std::fmt::Write as _;
        match rec {
            Record::Header(h) => {
                self.foll = crate::kernel::foll::FollFlags::for_kernel(None, &h.kernel).ok();
                let mode = h.extra.get("mode").and_then(|m| m.as_str()).unwrap_or("?");
                let _ = writeln!(
                    self.buf,
                    "tracing {} ({mode} probes); times are seconds since the first event; -o FILE writes the JSON log",
                    h.kernel
                );
            }
            Record::Event(e) => return self.put_event(&e).await,
            Record::Lost { probe, count } => {
                let _ = writeln!(self.buf, "LOST {count} {probe} events (ring buffer full)");
            }
            Record::Summary(_) | Record::Unknown(_) => {}
        }
        if self.buf.len() > 1 << 16 {
            self.batch_done().await?;
        }
        Ok(())
    }

    async fn put_event(&mut self, e: &Event) -> Result<()> {
        let first = *self.first_ts.get_or_insert(e.ts);
        let t = EventText::new(e, first, self.foll.as_ref());
        self.buf.push_str(&t.plain());
        self.buf.push('\n');
        if self.buf.len() > 1 << 16 {
            self.batch_done().await?;
        }
        Ok(())
    }

    async fn batch_done(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.out
                .write_all(self.buf.as_bytes())
                .and_then(|()| self.out.flush())
                .context("writing to the terminal")?;
            self.buf.clear();
        }
        Ok(())
    }
}

async fn record(plan: AttachPlan, args: Args) -> Result<ExitCode> {
    let to_stdout = args.output.is_none();
    // Ctrl-C, SIGTERM and SIGHUP end the trace through the session's one stop path.
    let cancel = Cancel::new();
    cancel
        .on_signals()
        .context("installing the SIGINT/SIGTERM/SIGHUP handlers")?;
    let stats = match &args.output {
        Some(p) => {
            let f = crate::outfile::create(p, false)
                .with_context(|| format!("cannot create {}", p.display()))?;
            let mut sink = LogWriter::new(Box::new(BufWriter::with_capacity(1 << 20, f)));
            let stats = pump(
                &plan,
                &args.trace,
                args.raw_pointers,
                false,
                &mut sink,
                &cancel,
            )
            .await?;
            sink.finish()?;
            stats
        }
        None if std::io::stdout().is_terminal() => {
            let mut sink = TextSink {
                out: std::io::stdout(),
                first_ts: None,
                foll: None,
                buf: String::new(),
            };
            let stats = pump(
                &plan,
                &args.trace,
                args.raw_pointers,
                true,
                &mut sink,
                &cancel,
            )
            .await?;
            sink.batch_done().await?;
            stats
        }
        None => {
            let mut sink = LogWriter::new(Box::new(BufWriter::new(std::io::stdout())));
            let stats = pump(
                &plan,
                &args.trace,
                args.raw_pointers,
                true,
                &mut sink,
                &cancel,
            )
            .await?;
            sink.finish()?;
            stats
        }
    };
    let dest = args
        .output
        .as_ref()
        .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
    if !to_stdout || std::io::stdout().is_terminal() {
        // The consumer's own cost (what `cargo xtask bench` reads): CPU while tracing, as a
        // share of one CPU over the trace, and the peak memory of the whole run.
        let usage = match (stats.cpu_s, session::self_usage()) {
            (Some(cpu), Some((_, rss))) => format!(
                "; consumer cpu {cpu:.2}s ({:.0}% of one CPU), peak RSS {:.1} MiB",
                100.0 * cpu / stats.duration.as_secs_f64().max(1e-3),
                rss as f64 / 1024.0
            ),
            _ => String::new(),
        };
        eprintln!(
            "tracer: {} events, {} lost, in {:.1}s -> {dest}{usage}",
            stats.events,
            stats.lost,
            stats.duration.as_secs_f64(),
        );
        let by_probe = stats.losses.by_probe();
        if !by_probe.is_empty() {
            eprintln!("tracer: lost: {}", by_probe.join("; "));
        }
    }
    if let Some(s) = stats.command_status {
        eprintln!("tracer: workload exited: {s}");
    }
    Ok(ExitCode::SUCCESS)
}
