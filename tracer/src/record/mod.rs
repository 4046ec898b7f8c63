//! `tracer record`: a consumer of the tracing [`session`](crate::session) that writes its
//! records as JSON Lines.
//!
//! The log is complete and valid on every exit path: header first, then events in delivery
//! order, `lost` lines whenever the in-kernel loss counters grow, and a summary last.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result};

use crate::{
    events::Record,
    probes::AttachPlan,
    session::{self, Cancel, Sink, TraceArgs, pump},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Write the log here (default: standard output).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Include raw kernel mm addresses (`mm_addr`); they defeat KASLR, so logs omit them by default.
    #[arg(long)]
    pub raw_pointers: bool,
    /// Print the attach plan and exit without attaching.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub fn main(args: Args) -> Result<ExitCode> {
    let plan = session::plan(&args.trace)?;
    if args.dry_run {
        session::print_plan(&plan);
        return Ok(ExitCode::SUCCESS);
    }
    session::warn_plan(&plan);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(record(plan, args))
}

/// Writes schema-1 lines to a file or stdout.
pub struct LogWriter {
    out: Box<dyn Write>,
    buf: String,
}

impl Sink for LogWriter {
    async fn put(&mut self, rec: Record) -> Result<()> {
        match rec {
            Record::Event(e) => {
                e.write_json(&mut self.buf);
                self.buf.push('\n');
            }
            r => r.write_line(&mut self.buf)?,
        }
        // Written per ring-buffer batch: one syscall per batch, not per line.
        if self.buf.len() > 1 << 16 {
            self.flush_buf()?;
        }
        Ok(())
    }

    async fn batch_done(&mut self) -> Result<()> {
        self.flush_buf()
    }
}

impl LogWriter {
    /// A sink writing the log to `out` line for line as `tracer record` does (`tracer check`
    /// records through it too).
    pub fn new(out: Box<dyn Write>) -> LogWriter {
        LogWriter {
            out,
            buf: String::with_capacity(1 << 17),
        }
    }

    /// Writes what is buffered and flushes `out`.
    pub fn finish(&mut self) -> Result<()> {
        self.flush_buf()?;
        self.out.flush().context("writing the event log")
    }

    fn flush_buf(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.out
                .write_all(self.buf.as_bytes())
                .context("writing the event log")?;
            self.buf.clear();
        }
        Ok(())
    }
}

async fn record(plan: AttachPlan, args: Args) -> Result<ExitCode> {
    let out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::with_capacity(
            1 << 20,
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout())),
    };
    let mut w = LogWriter {
        out,
        buf: String::with_capacity(1 << 17),
    };
    // Ctrl-C and SIGTERM end the trace through the session's one stop path.
    let cancel = Cancel::new();
    cancel
        .on_signals()
        .context("installing the SIGINT/SIGTERM handlers")?;
    let stats = pump(
        &plan,
        &args.trace,
        args.raw_pointers,
        args.output.is_none(),
        &mut w,
        &cancel,
    )
    .await?;
    w.flush_buf()?;
    w.out.flush().context("writing the event log")?;
    if let Some(p) = &args.output {
        eprintln!(
            "tracer: {} events, {} lost, in {:.1}s -> {}",
            stats.events,
            stats.lost,
            stats.duration.as_secs_f64(),
            p.display()
        );
    }
    if let Some(s) = stats.command_status {
        eprintln!("tracer: workload exited: {s}");
    }
    Ok(ExitCode::SUCCESS)
}
