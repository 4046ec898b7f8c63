//! `tracer record`: attach, stream ring-buffer records through the decoder, write JSON Lines.
//!
//! The log is complete and valid on every exit path: header first, then events in delivery
//! order, `lost` lines whenever the in-kernel loss counters grow, and a summary last.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, IsTerminal as _, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result};

pub mod pump;

pub use pump::{PumpStats, Sink, TraceArgs, pump};

use crate::{
    events::{
        Header, Record, log as logfile,
        schema::{SCHEMA, SCHEMA_MINOR},
        text::EventText,
    },
    probes::{self, AttachPlan, KernelSource},
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
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Builds the attach plan for the running kernel: function probes plus instruction sites.
pub fn plan(btf: Option<PathBuf>, with_sites: bool) -> Result<AttachPlan> {
    let mut src = KernelSource::default();
    if let Some(b) = btf {
        src.btf = b;
    }
    probes::env::preflight(&src.btf)?;
    let (function, btf, ks) = probes::function_plan(&src)?;
    let found = if with_sites {
        site_probes(&function, &btf, &ks)
    } else {
        SiteProbes {
            notes: vec!["instruction sites not requested (--no-sites)".to_owned()],
            ..SiteProbes::default()
        }
    };
    Ok(AttachPlan {
        function,
        sites: found.sites,
        site_notes: found.notes,
        discovery: found.discovery,
        defects: found.defects,
        sites_complete: found.complete,
    })
}

#[derive(Default)]
struct SiteProbes {
    sites: Vec<probes::SiteProbe>,
    notes: Vec<String>,
    discovery: Option<serde_json::Value>,
    defects: Vec<String>,
    complete: bool,
}

/// Instruction-level sites for this kernel, found in its live machine code (`crate::sites`).
/// A function of a shape discovery does not know runs with function-level probes only; one
/// with a proven defect is probed where its parts remain, so the run shows the consequence.
/// Both go into the plan, the log header and stderr.
fn site_probes(
    function: &crate::kernel::target::FunctionPlan,
    btf: &crate::kernel::btf::Btf,
    ks: &crate::kernel::kallsyms::Kallsyms,
) -> SiteProbes {
    let code = match crate::kernel::image::ElfImage::kcore() {
        Ok(c) => c,
        Err(e) => {
            return SiteProbes {
                notes: vec![format!(
                    "instruction sites: cannot read the kernel's code from /proc/kcore ({e}); function-level probes only"
                )],
                ..SiteProbes::default()
            };
        }
    };
    let layout = match crate::sites::SiteLayout::resolve(btf, ks, Some(&function.release)) {
        Ok(l) => l,
        Err(e) => {
            return SiteProbes {
                notes: vec![format!(
                    "instruction sites: {e}; function-level probes only"
                )],
                ..SiteProbes::default()
            };
        }
    };
    let plan = crate::sites::discover(&code, ks, &layout);
    let mut notes: Vec<String> = plan
        .unknowns()
        .map(|(f, e)| {
            format!(
                "instruction sites in {}: {e}; function-level probes only there",
                f.symbol
            )
        })
        .collect();
    let defects = plan
        .defects()
        .map(|(f, d)| format!("{}: {}: {}", f.symbol, d.defect.name(), d.why))
        .collect();
    let mut sites = Vec::new();
    for s in &plan.sites {
        let (probe, note) = probes::placement::place(s, &code, ks);
        sites.push(probe);
        notes.extend(note);
    }
    SiteProbes {
        sites,
        notes,
        discovery: Some(plan.discovery_json()),
        defects,
        complete: plan.complete(),
    }
}

/// Human-readable attach plan.
pub fn print_plan(plan: &AttachPlan) {
    println!("kernel {}: {} mode", plan.function.release, plan.mode());
    for p in &plan.function.probes {
        println!(
            "  {:<14} {}{:<28} {}",
            p.probe.name(),
            if p.ret { "ret:" } else { "    " },
            p.symbol,
            p.reason
        );
    }
    for s in &plan.sites {
        let how = match s.read {
            probes::SiteRead::Memory(r, d) => format!(
                "reads {d:#x}(%{}) before the instruction executes",
                crate::sites::reg_name(r)
            ),
            probes::SiteRead::Loaded(r) => format!(
                "reads %{} right after the load: the value the kernel loaded",
                crate::sites::reg_name(r)
            ),
            probes::SiteRead::Marker => "reads current->mm's seqcount there".to_owned(),
        };
        println!(
            "  {:<14}     {:<32} {how}",
            s.probe.name(),
            format!("{}+{:#x}", s.symbol, s.offset)
        );
    }
    let o = &plan.function.offsets;
    println!(
        "  offsets: task_struct.mm={} mm_struct.write_protect_seq.sequence={} vm_area_struct.{{vm_mm={} vm_flags={} vm_start={} vm_end={}}}",
        o.task_mm, o.mm_seq, o.vma_mm, o.vma_flags, o.vma_start, o.vma_end
    );
    let f = &plan.function.foll;
    println!(
        "  FOLL_PIN={:#x} FOLL_FAST_ONLY={:#x} FOLL_LONGTERM={:#x} (from {})",
        f.pin,
        f.fast_only,
        f.longterm,
        f.source.as_str()
    );
    for m in plan.function.missing.iter().chain(&plan.site_notes) {
        println!("  missing: {m}");
    }
    for d in &plan.defects {
        println!("  DEFECT: {d}");
    }
}

/// Says on stderr, before tracing starts, what discovery could not prove and what it found
/// broken: a trace must never look complete when it is not.
pub fn warn_plan(plan: &AttachPlan) {
    for d in &plan.defects {
        eprintln!("tracer: DEFECT in this kernel's code: {d}");
    }
    for n in &plan.site_notes {
        eprintln!("tracer: {n}");
    }
    if plan.mode() != "instruction" {
        eprintln!(
            "tracer: attach mode {}: the verdict on this trace cannot be clean",
            plan.mode()
        );
    }
}

/// How far apart a seqcount access and its probe's timestamp may be, as a hint for the
/// validator. On bare metal the probe runs right next to the access with interrupts off
/// (100 us is generous); in a virtual machine the vCPU can be descheduled between the two for
/// milliseconds (measured up to ~13 ms under QEMU TCG on a loaded 2-core host), so 50 ms.
pub fn clock_slack_ns() -> u64 {
    let virtualized = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
    });
    if virtualized { 50_000_000 } else { 100_000 }
}

pub fn header(plan: &AttachPlan, args: &TraceArgs) -> Header {
    let f = &plan.function.foll;
    let o = &plan.function.offsets;
    let mut extra = BTreeMap::new();
    extra.insert("minor".to_owned(), serde_json::json!(SCHEMA_MINOR));
    extra.insert("mode".to_owned(), serde_json::json!(plan.mode()));
    extra.insert(
        "foll".to_owned(),
        serde_json::json!({"pin": f.pin, "fast_only": f.fast_only, "longterm": f.longterm, "source": f.source.as_str()}),
    );
    extra.insert(
        "offsets".to_owned(),
        serde_json::json!({"task_mm": o.task_mm, "mm_seq": o.mm_seq, "vma_mm": o.vma_mm, "vma_flags": o.vma_flags, "vma_anon_vma": o.vma_anon_vma}),
    );
    extra.insert(
        "filter".to_owned(),
        serde_json::json!({"pid": args.pid, "comm": args.comm}),
    );
    extra.insert("ring_size".to_owned(), serde_json::json!(args.ring_size));
    extra.insert(
        "clock_slack_ns".to_owned(),
        serde_json::json!(clock_slack_ns()),
    );
    let notes: Vec<&String> = plan
        .function
        .missing
        .iter()
        .chain(&plan.site_notes)
        .collect();
    extra.insert("missing".to_owned(), serde_json::json!(notes));
    if let Some(d) = &plan.discovery {
        extra.insert("discovery".to_owned(), d.clone());
    }
    Header {
        schema: SCHEMA,
        tool: format!("tracer {}", env!("CARGO_PKG_VERSION")),
        kernel: plan.function.release.clone(),
        probes: plan.probe_infos(),
        extra,
    }
}

pub fn main(args: Args) -> Result<ExitCode> {
    let plan = plan(args.trace.btf.clone(), !args.trace.no_sites)?;
    if args.dry_run {
        print_plan(&plan);
        return Ok(ExitCode::SUCCESS);
    }
    warn_plan(&plan);
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
        self.w.flush().context("writing the event log")
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
            Record::Event(e) => {
                let first = *self.first_ts.get_or_insert(e.ts);
                let t = EventText::new(&e, first, self.foll.as_ref());
                self.buf.push_str(&t.plain());
                self.buf.push('\n');
            }
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
    let stats = match &args.output {
        Some(p) => {
            let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
            let mut sink = LogWriter::new(Box::new(BufWriter::with_capacity(1 << 20, f)));
            let stats = pump(&plan, &args.trace, args.raw_pointers, false, &mut sink).await?;
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
            let stats = pump(&plan, &args.trace, args.raw_pointers, true, &mut sink).await?;
            sink.batch_done().await?;
            stats
        }
        None => {
            let mut sink = LogWriter::new(Box::new(BufWriter::new(std::io::stdout())));
            let stats = pump(&plan, &args.trace, args.raw_pointers, true, &mut sink).await?;
            sink.finish()?;
            stats
        }
    };
    let dest = args
        .output
        .as_ref()
        .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
    if !to_stdout || std::io::stdout().is_terminal() {
        eprintln!(
            "tracer: {} events, {} lost, in {:.1}s -> {dest}",
            stats.events,
            stats.lost,
            stats.duration.as_secs_f64(),
        );
    }
    if let Some(s) = stats.command_status {
        eprintln!("tracer: workload exited: {s}");
    }
    Ok(ExitCode::SUCCESS)
}
