//! `tracer record`: attach, stream ring-buffer records through the decoder, write JSON Lines.
//!
//! The log is complete and valid on every exit path: header first, then events in delivery
//! order, `lost` lines whenever the in-kernel loss counters grow, and a summary last.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracer_common::{PROBE_COUNT, Probe};

use crate::{
    events::{
        Header, Record, Summary,
        decode::{Decoded, Decoder, write_hugetlb},
        schema::SCHEMA,
    },
    probes::{self, AttachPlan, KernelSource, Options, Session},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Write the log here (default: standard output).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Only events of this process (tgid).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only events of tasks with this command name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 4 << 20)]
    pub ring_size: u32,
    /// Include raw kernel mm addresses (`mm_addr`); they defeat KASLR, so logs omit them by default.
    #[arg(long)]
    pub raw_pointers: bool,
    /// Print the attach plan and exit without attaching.
    #[arg(long)]
    pub dry_run: bool,
    /// BTF of the traced kernel (default /sys/kernel/btf/vmlinux).
    #[arg(long)]
    pub btf: Option<PathBuf>,
    /// Attach function-level probes only, even where instruction sites were found.
    #[arg(long)]
    pub no_sites: bool,
    /// Workload to run while recording; recording stops when it exits.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Builds the attach plan for the running kernel: function probes plus instruction sites.
pub fn plan(btf: Option<PathBuf>, with_sites: bool) -> Result<AttachPlan> {
    let mut src = KernelSource::default();
    if let Some(b) = btf {
        src.btf = b;
    }
    probes::env::preflight(&src.btf)?;
    let (function, btf, ks) = probes::function_plan(&src)?;
    let (sites, site_notes) = if with_sites {
        site_probes(&function, &btf, &ks)
    } else {
        (
            Vec::new(),
            vec!["instruction sites not requested (--no-sites)".to_owned()],
        )
    };
    Ok(AttachPlan {
        function,
        sites,
        site_notes,
    })
}

/// Instruction-level sites for this kernel (see `crate::sites`).
fn site_probes(
    _function: &crate::kernel::target::FunctionPlan,
    _btf: &crate::kernel::btf::Btf,
    _ks: &crate::kernel::kallsyms::Kallsyms,
) -> (Vec<probes::SiteProbe>, Vec<String>) {
    (
        Vec::new(),
        vec![
            "instruction-level sites: discovery not wired in yet; function-level probes only"
                .to_owned(),
        ],
    )
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
        println!("  {:<14}     {}+{:#x}", s.probe.name(), s.symbol, s.offset);
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
}

pub fn header(plan: &AttachPlan, args: &Args) -> Header {
    let f = &plan.function.foll;
    let o = &plan.function.offsets;
    let mut extra = BTreeMap::new();
    extra.insert("mode".to_owned(), serde_json::json!(plan.mode()));
    extra.insert(
        "foll".to_owned(),
        serde_json::json!({"pin": f.pin, "fast_only": f.fast_only, "longterm": f.longterm, "source": f.source.as_str()}),
    );
    extra.insert(
        "offsets".to_owned(),
        serde_json::json!({"task_mm": o.task_mm, "mm_seq": o.mm_seq, "vma_mm": o.vma_mm, "vma_flags": o.vma_flags}),
    );
    extra.insert(
        "filter".to_owned(),
        serde_json::json!({"pid": args.pid, "comm": args.comm}),
    );
    extra.insert("ring_size".to_owned(), serde_json::json!(args.ring_size));
    let notes: Vec<&String> = plan
        .function
        .missing
        .iter()
        .chain(&plan.site_notes)
        .collect();
    extra.insert("missing".to_owned(), serde_json::json!(notes));
    Header {
        schema: SCHEMA,
        tool: format!("tracer {}", env!("CARGO_PKG_VERSION")),
        kernel: plan.function.release.clone(),
        probes: plan.probe_infos(),
        extra,
    }
}

pub fn main(args: Args) -> Result<ExitCode> {
    let plan = plan(args.btf.clone(), !args.no_sites)?;
    if args.dry_run {
        print_plan(&plan);
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(record(plan, args))
}

/// Writes lines and counts what it wrote.
struct LogWriter {
    out: Box<dyn Write>,
    buf: String,
    events: u64,
}

impl LogWriter {
    fn record(&mut self, r: &Record) -> Result<()> {
        r.write_line(&mut self.buf)?;
        self.flush_buf()
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

/// Per-batch state shared by the consumer callback.
struct Consumer {
    decoder: Decoder,
    mm_freed: u64,
    invalid: u64,
    hugetlb: u64,
}

impl Consumer {
    fn take(&mut self, raw: &tracer_common::RawEvent, w: &mut LogWriter) {
        match self.decoder.decode(raw) {
            Decoded::Event(e) => {
                e.write_json(&mut w.buf);
                w.buf.push('\n');
                w.events += 1;
            }
            Decoded::Hugetlb { enter, event } => {
                write_hugetlb(enter, &event, &mut w.buf);
                w.events += 1;
                self.hugetlb += 1;
            }
            Decoded::MmFreed => self.mm_freed += 1,
            Decoded::Invalid(_) => self.invalid += 1,
        }
    }
}

async fn record(plan: AttachPlan, args: Args) -> Result<ExitCode> {
    let opts = Options {
        pid: args.pid,
        comm: args.comm.clone(),
        ring_size: args.ring_size,
    };
    let mut session = Session::attach(&plan, &opts)?;
    let to_stdout = args.output.is_none();
    let out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::with_capacity(
            1 << 20,
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout())),
    };
    let mut w = LogWriter {
        out,
        buf: String::with_capacity(1 << 16),
        events: 0,
    };
    w.record(&Record::Header(header(&plan, &args)))?;
    let mut consumer = Consumer {
        decoder: Decoder::new(plan.function.foll, args.raw_pointers),
        mm_freed: 0,
        invalid: 0,
        hugetlb: 0,
    };

    let mut child = if args.command.is_empty() {
        None
    } else {
        let mut c = tokio::process::Command::new(&args.command[0]);
        c.args(&args.command[1..]);
        if to_stdout {
            // Keep the log on stdout clean: the workload's output goes to stderr.
            c.stdout(std::io::stderr());
        }
        Some(
            c.spawn()
                .with_context(|| format!("cannot run workload {:?}", args.command[0]))?,
        )
    };

    let started = Instant::now();
    let deadline = args
        .duration
        .map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut lost_seen = [0u64; PROBE_COUNT];
    let mut command_status: Option<String> = None;
    let mut batch = Vec::with_capacity(4096);

    loop {
        let sleep_until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let child_exit = async {
            match child.as_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = session.next_batch(&mut batch) => {
                r?;
                for raw in batch.drain(..) {
                    consumer.take(&raw, &mut w);
                }
                w.flush_buf()?;
            }
            _ = tick.tick() => {
                emit_lost(&session, &mut lost_seen, &mut w)?;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep_until => break,
            status = child_exit => {
                command_status = Some(status.map_or("unknown".to_owned(), |s| s.to_string()));
                child = None;
                break;
            }
        }
    }
    if let Some(mut c) = child {
        // Duration or signal ended the recording first; stop the workload too.
        let _ = c.start_kill();
        if let Ok(s) = c.wait().await {
            command_status = Some(s.to_string());
        }
    }
    // Events already reserved are delivered; take them before the summary.
    tokio::time::sleep(Duration::from_millis(50)).await;
    session.drain_now(&mut batch);
    for raw in batch.drain(..) {
        consumer.take(&raw, &mut w);
    }
    w.flush_buf()?;
    emit_lost(&session, &mut lost_seen, &mut w)?;

    let mut lost = BTreeMap::new();
    for (i, n) in lost_seen.iter().enumerate() {
        if let Some(p) = Probe::from_u8(i as u8) {
            lost.insert(p.name().to_owned(), *n);
        }
    }
    let total_lost: u64 = lost_seen.iter().sum();
    let mut extra = BTreeMap::new();
    extra.insert(
        "unreadable_seq".to_owned(),
        serde_json::json!(consumer.decoder.unreadable_seq),
    );
    extra.insert("mm_freed".to_owned(), serde_json::json!(consumer.mm_freed));
    extra.insert(
        "hugetlb_events".to_owned(),
        serde_json::json!(consumer.hugetlb),
    );
    extra.insert(
        "invalid_records".to_owned(),
        serde_json::json!(consumer.invalid),
    );
    if let Some(s) = &command_status {
        extra.insert("command_status".to_owned(), serde_json::json!(s));
    }
    let events = w.events;
    w.record(&Record::Summary(Summary {
        events,
        lost,
        duration_ns: started.elapsed().as_nanos() as u64,
        extra,
    }))?;
    w.out.flush().context("writing the event log")?;
    if let Some(p) = &args.output {
        eprintln!(
            "tracer: {events} events, {total_lost} lost, in {:.1}s -> {}",
            started.elapsed().as_secs_f64(),
            p.display()
        );
    }
    if let Some(s) = command_status {
        eprintln!("tracer: workload exited: {s}");
    }
    Ok(ExitCode::SUCCESS)
}

fn emit_lost(session: &Session, seen: &mut [u64; PROBE_COUNT], w: &mut LogWriter) -> Result<()> {
    let now = session.lost()?;
    for (i, (&n, s)) in now.iter().zip(seen.iter_mut()).enumerate() {
        if n > *s {
            let probe = Probe::from_u8(i as u8).map_or("unknown", Probe::name);
            w.record(&Record::Lost {
                probe: probe.to_owned(),
                count: n - *s,
            })?;
            *s = n;
        }
    }
    Ok(())
}
