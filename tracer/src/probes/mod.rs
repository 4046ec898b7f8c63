//! Loading the eBPF object, attaching it where the plan says (kprobes, fentry/fexit, or raw
//! tracepoints: [`caps::Mode`]), and draining its ring buffer.
pub mod caps;
pub mod env;
pub mod kprobe_events;
pub mod leftovers;
pub mod placement;
pub mod prog_stats;

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, KProbe, RawTracePoint},
};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tracer_common::{
    FIRST_SITE, Filter, PROBE_COUNT, PROGRAM_SLOTS, Probe, RawCall, RawEvent, RawWide, Reg,
    SITE_SLOTS, SiteConfig, TpConfig, site_mode, site_stage,
};

use crate::{
    events::ProbeInfo,
    kernel::{
        btf::Btf,
        kallsyms::Kallsyms,
        target::{self, FunctionPlan, Hook, TargetError},
        tracepoints::TracepointPlan,
    },
};

pub use caps::Mode;

/// The eBPF object built by tracer/build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    Env(#[from] env::EnvError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Btf(#[from] crate::kernel::btf::BtfError),
    #[error(transparent)]
    Kallsyms(#[from] crate::kernel::kallsyms::KallsymsError),
    #[error(transparent)]
    ProgStats(#[from] prog_stats::ProgStatsError),
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no program or map named {0} (tracer and eBPF build disagree)")]
    Missing(&'static str),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {what} to {target}: {source}")]
    Attach {
        what: String,
        target: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("ring buffer size {0} is not a power of two multiple of the page size (4096)")]
    RingSize(u32),
    #[error("--comm {0:?} is longer than the kernel's 15-byte task name")]
    CommTooLong(String),
    #[error("ring buffer poll: {0}")]
    Io(#[from] std::io::Error),
    #[error("more than {SITE_SLOTS} instruction sites")]
    TooManySites,
    #[error("fentry mode needs the running kernel's BTF: {0}")]
    KernelBtf(String),
    #[error("the tracepoint mode's plan is missing (a tracer bug)")]
    NoTracepointPlan,
    #[error(transparent)]
    KprobeEvents(#[from] kprobe_events::KprobeEventsError),
}

/// One instruction-level probe to attach at `symbol+offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteProbe {
    pub probe: Probe,
    pub symbol: String,
    pub offset: u64,
    pub read: SiteRead,
    /// The call (`tracer_common::call`) whose record the site's event joins: the function it
    /// is in.
    pub func: u8,
}

/// How a site probe gets the seqcount value (see `tracer_common::site_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteRead {
    /// A point in the code: `current->mm`'s seqcount at that instant.
    Marker,
    /// On the accessing instruction: the memory at base + displacement, before it executes.
    Memory(Reg, i32),
    /// On the instruction after a load: the value the kernel loaded, in this register.
    Loaded(Reg),
}

/// Everything needed to attach: the mode, the function-level plan plus any instruction sites,
/// or the tracepoints.
#[derive(Clone, Debug)]
pub struct AttachPlan {
    pub attach: Mode,
    /// Function probes (kprobe and fentry modes; empty in tracepoint mode, whose offsets and
    /// FOLL_* values still come from here).
    pub function: FunctionPlan,
    /// The tracepoint mode's hooks.
    pub tracepoints: Option<TracepointPlan>,
    pub sites: Vec<SiteProbe>,
    /// Why instruction sites are absent or partial, each a sentence.
    pub site_notes: Vec<String>,
    /// Discovery's account of every function (`sites::Plan::discovery_json`), for the log
    /// header; `None` when sites were not searched.
    pub discovery: Option<serde_json::Value>,
    /// Defects discovery proved in this kernel's code, one sentence each.
    pub defects: Vec<String>,
    /// Every function that must hold sites was proven intact.
    pub sites_complete: bool,
}

impl AttachPlan {
    /// The header's `probes` list.
    pub fn probe_infos(&self) -> Vec<ProbeInfo> {
        if let Some(tp) = &self.tracepoints {
            return tp
                .hooks
                .iter()
                .map(|h| ProbeInfo {
                    name: h.probe.name().to_owned(),
                    target: h.tracepoint.to_owned(),
                    offset: 0,
                })
                .collect();
        }
        let mut v: Vec<ProbeInfo> = self
            .function
            .probes
            .iter()
            .map(|p| ProbeInfo {
                name: p.probe.name().to_owned(),
                target: p.symbol.clone(),
                offset: 0,
            })
            .collect();
        v.extend(self.sites.iter().map(|s| ProbeInfo {
            name: s.probe.name().to_owned(),
            target: s.symbol.clone(),
            offset: s.offset,
        }));
        v
    }

    /// `instruction` when every required function gave all its sites, `partial` when some
    /// sites are attached, `function` when none are, `tracepoint` in tracepoint mode.
    pub fn mode(&self) -> &'static str {
        if self.attach == Mode::Tracepoint {
            "tracepoint"
        } else if self.sites.is_empty() {
            "function"
        } else if self.sites_complete {
            "instruction"
        } else {
            "partial"
        }
    }
}

/// Where kernel facts come from.
#[derive(Clone, Debug)]
pub struct KernelSource {
    pub btf: PathBuf,
    pub kallsyms: PathBuf,
    pub release: String,
}

impl Default for KernelSource {
    fn default() -> Self {
        KernelSource {
            btf: PathBuf::from(env::SYS_BTF),
            kallsyms: PathBuf::from("/proc/kallsyms"),
            release: uname_release(),
        }
    }
}

pub fn uname_release() -> String {
    // SAFETY: uname fills a caller-provided struct; zeroed is a valid initial value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_owned();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Resolves the function-level plan from a kernel's BTF and kallsyms.
pub fn function_plan(src: &KernelSource) -> Result<(FunctionPlan, Btf, Kallsyms), ProbeError> {
    let btf = Btf::from_file(&src.btf)?;
    let ks = Kallsyms::from_file(&src.kallsyms)?;
    let plan = target::resolve(&btf, &ks, &src.release)?;
    Ok((plan, btf, ks))
}

pub struct Options {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub ring_size: u32,
    /// Test hook: make `copy_page_range`'s call map full from the start, so that the eBPF
    /// side's "pairing map full" diagnostic (copies reported event by event, null seqs on
    /// their exits) can be provoked.
    pub fill_pairing_map: bool,
    /// Instances of each return probe (tracefs-attached ones).
    pub maxactive: u32,
}

/// One attached kprobe and what its counts mean.
struct Attachment {
    probe: Probe,
    /// Index into `RUNS`.
    slot: u32,
    /// The tracefs kprobe (`None` when attached through aya's kprobe PMU).
    tracefs: Option<kprobe_events::Attached>,
    /// The event name in `kprobe_profile`.
    event: String,
}

/// A raw tracepoint or fentry/fexit program: the kernel counts the runs it skipped in the
/// program's own statistics.
struct SelfCounted {
    probe: Probe,
    program: &'static str,
    /// Recursion misses when everything was attached.
    baseline: u64,
}

/// Events the kernel could not deliver, per probe, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Failed ring-buffer reservations (the ring was full).
    pub ring: [u64; PROBE_COUNT],
    /// Kprobe hits the kernel could not handle: a kprobe already running on that CPU, or a
    /// return probe out of instances.
    pub missed: [u64; PROBE_COUNT],
    /// Kprobe hits whose program the kernel skipped (another BPF program running on that CPU).
    pub skipped: [u64; PROBE_COUNT],
}

impl Losses {
    /// Each probe that lost events, with how many by cause, e.g. `gup_exit 1 (kprobe missed)`.
    pub fn by_probe(&self) -> Vec<String> {
        Probe::ALL
            .iter()
            .filter_map(|&p| {
                let i = p as usize;
                let causes: Vec<String> = [
                    (self.ring[i], "ring buffer full"),
                    (self.missed[i], "kprobe missed"),
                    (self.skipped[i], "run skipped"),
                ]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, why)| format!("{n} {why}"))
                .collect();
                (!causes.is_empty()).then(|| format!("{} ({})", p.name(), causes.join(", ")))
            })
            .collect()
    }

    pub fn total(&self, p: Probe) -> u64 {
        let i = p as usize;
        self.ring[i] + self.missed[i] + self.skipped[i]
    }
}

/// Hits and misses of each kprobe event, by event name (tracefs `kprobe_profile`).
type Profile = BTreeMap<String, (u64, u64)>;

/// Loaded and attached programs; dropping it detaches everything (and removes its kprobes).
pub struct Session {
    // Detach before the programs and maps go: the attachments are dropped first.
    attachments: Vec<Attachment>,
    events: Option<kprobe_events::KprobeEvents>,
    /// Hits and runs when everything was attached: what happened before is not a loss.
    baseline: Vec<(u64, u64, u64)>,
    /// Hits and runs when tracing stopped ([`Session::stop_programs`]): the kernel frees a
    /// kprobe's program before it disarms the kprobe, so hits that land in between are not
    /// runs the trace skipped.
    at_stop: Option<(Profile, [u64; PROGRAM_SLOTS])>,
    /// The hits read by the previous [`Session::losses`] while tracing: a hit just counted may
    /// have its program still running (a vCPU descheduled under TCG), and would read as a
    /// skipped run; a reading later, it has run.
    earlier_hits: Option<Profile>,
    /// Programs that count their own skipped runs (raw tracepoints, fentry/fexit).
    self_counted: Vec<SelfCounted>,
    ebpf: Ebpf,
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    runs: PerCpuArray<MapData, u64>,
    /// The calls in flight (`CPR_CALLS`, `HUGETLB_CALLS`, `GUP_CALLS`): read when tracing
    /// stops, for the calls it interrupted.
    calls: Vec<BpfHashMap<MapData, u32, RawCall>>,
    /// Why kprobe misses and skipped runs cannot be counted, when they cannot.
    pub uncounted: Option<String>,
    /// Kprobe groups of dead tracers removed at start.
    pub removed_stale: Vec<String>,
    /// The eBPF programs' diagnostics (aya-log), handed to the `log` crate.
    logger: Option<aya_log::EbpfLogger<BpfLog>>,
}

/// Hands the eBPF programs' aya-log records to the process's logger, with the `probe#N` they
/// start with replaced by the probe's name: the programs log the discriminant, which keeps
/// string copies (and the verifier's work on them) out of the kernel side.
pub struct BpfLog;

impl log::Log for BpfLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        log::logger().enabled(m)
    }

    fn log(&self, r: &log::Record) {
        let text = name_probe(&r.args().to_string());
        log::logger().log(
            &log::Record::builder()
                .args(format_args!("{text}"))
                .level(r.level())
                .target(r.target())
                .module_path(r.module_path())
                .file(r.file())
                .line(r.line())
                .build(),
        );
    }

    fn flush(&self) {
        log::logger().flush();
    }
}

/// `probe#0: …` → `cpr_enter: …`; anything else unchanged.
pub fn name_probe(text: &str) -> String {
    let named = text.strip_prefix("probe#").and_then(|rest| {
        let (num, tail) = rest.split_once(':')?;
        let probe = Probe::from_u8(num.parse().ok()?)?;
        Some(format!("{}:{tail}", probe.name()))
    });
    named.unwrap_or_else(|| text.to_owned())
}

fn filter(opts: &Options) -> Result<Filter, ProbeError> {
    let mut f = Filter {
        pid: opts.pid.unwrap_or(0),
        ..Filter::default()
    };
    if let Some(c) = &opts.comm {
        if c.len() > 15 {
            return Err(ProbeError::CommTooLong(c.clone()));
        }
        f.comm_enabled = 1;
        f.comm[..c.len()].copy_from_slice(c.as_bytes());
    }
    Ok(f)
}

fn kprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut KProbe, ProbeError> {
    let prog: &mut KProbe = ebpf
        .program_mut(name)
        .ok_or(ProbeError::Missing(name))?
        .try_into()
        .map_err(|source| ProbeError::Program {
            name: name.to_owned(),
            source: Box::new(source),
        })?;
    Ok(prog)
}

/// The eBPF program of a function-level probe: named like the probe itself.
fn program_for(p: Probe) -> &'static str {
    p.name()
}

const SITE_PROGRAMS: [&str; SITE_SLOTS] = [
    "site0", "site1", "site2", "site3", "site4", "site5", "site6", "site7",
];

impl Session {
    /// Loads the object with this kernel's offsets and attaches every probe in `plan`.
    pub fn attach(plan: &AttachPlan, opts: &Options) -> Result<Session, ProbeError> {
        let size = opts.ring_size;
        if size < 4096 || !size.is_power_of_two() {
            return Err(ProbeError::RingSize(size));
        }
        if plan.sites.len() > SITE_SLOTS {
            return Err(ProbeError::TooManySites);
        }
        let f = filter(opts)?;
        let offsets = plan.function.offsets;
        let wakeup = u64::from(size) / 8;
        let tp_config = plan
            .tracepoints
            .as_ref()
            .map_or_else(TpConfig::default, |t| t.config);
        let mut site_cfg = [SiteConfig::default(); SITE_SLOTS];
        for (cfg, s) in site_cfg.iter_mut().zip(&plan.sites) {
            let (base, disp, mode) = match s.read {
                SiteRead::Memory(r, d) => (r as u8, d, site_mode::MEMORY),
                SiteRead::Loaded(r) => (r as u8, 0, site_mode::LOADED),
                SiteRead::Marker => (0, 0, site_mode::MARKER),
            };
            *cfg = SiteConfig {
                probe: s.probe as u8,
                base,
                mode,
                func: s.func,
                stage: site_stage(s.probe).unwrap_or(0),
                _pad: [0; 3],
                disp,
            };
        }
        let mut loader = EbpfLoader::new();
        loader
            .override_global("SITE_CFG", &site_cfg, true)
            .override_global("OFFSETS", &offsets, true)
            .override_global("TP_CONFIG", &tp_config, true)
            .override_global("FILTER", &f, true)
            .override_global("WAKEUP_BYTES", &wakeup, true)
            .map_max_entries("EVENTS", size);
        if opts.fill_pairing_map {
            loader.map_max_entries("CPR_CALLS", 1);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        if opts.fill_pairing_map {
            let map = ebpf
                .map_mut("CPR_CALLS")
                .ok_or(ProbeError::Missing("CPR_CALLS"))?;
            let mut m: BpfHashMap<&mut MapData, u32, RawCall> =
                BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
                    name: "CPR_CALLS",
                    source: Box::new(source),
                })?;
            // No task has tid u32::MAX (PID_MAX_LIMIT is 2^22): the one slot stays taken. The
            // record holds no stage, so reading the open calls at the end skips it.
            m.insert(u32::MAX, RawCall::EMPTY, 0)
                .map_err(|source| ProbeError::Map {
                    name: "CPR_CALLS",
                    source: Box::new(source),
                })?;
        }
        // Before any program runs, so no diagnostic is missed. Without the map (an object
        // built without aya-log) tracing goes on; say so.
        let logger = match aya_log::EbpfLogger::init_with_logger(&mut ebpf, BpfLog) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("the eBPF programs' diagnostics are unavailable: {e}");
                None
            }
        };

        // Ring-buffer losses are counted in every mode. Runs the kernel skipped are counted
        // by kprobe_profile for kprobes (hits minus the programs' own runs), and by the
        // programs themselves for raw tracepoints and fentry/fexit (recursion misses).
        let (events, mut uncounted, removed_stale, attachments) = match plan.attach {
            Mode::Kprobe => attach_kprobes(&mut ebpf, plan, opts)?,
            Mode::Fentry => {
                attach_fentry(&mut ebpf, plan)?;
                (None, None, Vec::new(), Vec::new())
            }
            Mode::Tracepoint => {
                attach_tracepoints(
                    &mut ebpf,
                    plan.tracepoints
                        .as_ref()
                        .ok_or(ProbeError::NoTracepointPlan)?,
                )?;
                (None, None, Vec::new(), Vec::new())
            }
        };
        let raw_tps = attach_raw_tracepoint_probes(&mut ebpf, plan)?;
        let mut self_counted = Vec::new();
        for (probe, program) in self_counted_programs(plan).into_iter().chain(raw_tps) {
            match program_misses(&ebpf, program)? {
                Some(baseline) => self_counted.push(SelfCounted {
                    probe,
                    program,
                    baseline,
                }),
                None => {
                    uncounted.get_or_insert_with(|| {
                        "this kernel's BPF program statistics have no recursion misses (before 5.12): runs it skipped cannot be counted".to_owned()
                    });
                }
            }
        }

        if plan.attach != Mode::Tracepoint {
            // Keeps the call maps free of the slots of exited threads; without it a long
            // trace of many short-lived threads fills them, and calls are then reported event
            // by event (exactly, at a higher cost).
            if let Err(e) = attach_task_exit(&mut ebpf) {
                log::warn!("{e}: the call maps keep the slots of exited threads");
            }
        }
        let ring = ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::Missing("EVENTS"))?;
        let ring = RingBuf::try_from(ring).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source: Box::new(source),
        })?;
        // SAFETY: the ring buffer's fd is owned by `ring`, which the AsyncFd owns and keeps
        // open until it is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| ProbeError::Io(std::io::Error::other(e.to_string())))?;
        let lost = ebpf.take_map("LOST").ok_or(ProbeError::Missing("LOST"))?;
        let lost = PerCpuArray::try_from(lost).map_err(|source| ProbeError::Map {
            name: "LOST",
            source: Box::new(source),
        })?;
        log::info!(
            "attached {} function probes and {} instruction sites; ring buffer {size} bytes",
            plan.function.probes.len(),
            plan.sites.len()
        );
        let runs = ebpf.take_map("RUNS").ok_or(ProbeError::Missing("RUNS"))?;
        let runs = PerCpuArray::try_from(runs).map_err(|source| ProbeError::Map {
            name: "RUNS",
            source: Box::new(source),
        })?;
        let mut calls = Vec::new();
        for name in ["CPR_CALLS", "HUGETLB_CALLS", "GUP_CALLS"] {
            let m = ebpf.take_map(name).ok_or(ProbeError::Missing(name))?;
            calls.push(BpfHashMap::try_from(m).map_err(|source| ProbeError::Map {
                name,
                source: Box::new(source),
            })?);
        }
        let mut s = Session {
            attachments,
            events,
            baseline: Vec::new(),
            at_stop: None,
            earlier_hits: None,
            self_counted,
            ebpf,
            ring,
            lost,
            runs,
            calls,
            uncounted,
            removed_stale,
            logger,
        };
        // Runs first, hits second: hits that land in between make the baseline's "skipped"
        // too high, so later counts can only err low, never report a loss that did not happen.
        let runs = s.runs_now()?;
        let hits = s.profile_now()?;
        s.baseline = s
            .attachments
            .iter()
            .map(|a| {
                let (h, m) = hits.get(&a.event).copied().unwrap_or((0, 0));
                (h, m, runs.get(a.slot as usize).copied().unwrap_or(0))
            })
            .collect();
        Ok(s)
    }

    /// Hands the eBPF programs' pending diagnostics to the `log` crate (stderr, or the TUI's
    /// messages pane).
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    fn runs_now(&self) -> Result<[u64; PROGRAM_SLOTS], ProbeError> {
        let mut out = [0u64; PROGRAM_SLOTS];
        for (i, slot) in out.iter_mut().enumerate() {
            let v = self
                .runs
                .get(&(i as u32), 0)
                .map_err(|source| ProbeError::Map {
                    name: "RUNS",
                    source: Box::new(source),
                })?;
            *slot = v.iter().sum();
        }
        Ok(out)
    }

    fn profile_now(&self) -> Result<Profile, ProbeError> {
        Ok(match &self.events {
            Some(k) => k.profile()?,
            None => Default::default(),
        })
    }

    /// Stops every tracefs-attached program from running (the kprobe events stay until drop,
    /// with their counts frozen), so that the final [`Session::losses`] is exact.
    pub fn stop_programs(&mut self) {
        // Hits before stopping (the kernel frees a kprobe's program before it disarms the
        // kprobe: later hits are not skipped runs), runs after (every program that began for
        // those hits has finished): a count can then be low, never high. A failed read leaves
        // the counts to be read afterwards, as before.
        let hits = self.events.as_ref().and_then(|_| self.profile_now().ok());
        for a in &mut self.attachments {
            if let Some(t) = &mut a.tracefs {
                t.stop();
            }
        }
        if let (Some(hits), Ok(runs)) = (hits, self.runs_now()) {
            self.at_stop = Some((hits, runs));
        }
    }

    /// Every loss so far, per probe: ring-buffer reservations that failed, kprobe misses, and
    /// program runs the kernel skipped (kprobe hits minus the program's own runs). While
    /// tracing, the hits are those of the previous reading and the runs are read now, so a
    /// count can be low (one reading late), never high.
    pub fn losses(&mut self) -> Result<Losses, ProbeError> {
        let mut l = Losses {
            ring: self.lost()?,
            ..Losses::default()
        };
        for c in &self.self_counted {
            let now = program_misses(&self.ebpf, c.program)?.unwrap_or(c.baseline);
            l.skipped[c.probe as usize] += now.saturating_sub(c.baseline);
        }
        if self.events.is_none() {
            return Ok(l);
        }
        let (hits, runs) = match &self.at_stop {
            Some((h, r)) => (h.clone(), *r),
            None => {
                let now = self.profile_now()?;
                let runs = self.runs_now()?;
                // The first reading has no earlier one: nothing is counted skipped yet.
                (self.earlier_hits.replace(now).unwrap_or_default(), runs)
            }
        };
        for (a, &(h0, m0, r0)) in self.attachments.iter().zip(&self.baseline) {
            let (h, m) = hits.get(&a.event).copied().unwrap_or((h0, m0));
            let r = runs.get(a.slot as usize).copied().unwrap_or(r0);
            let i = a.probe as usize;
            l.missed[i] += m.saturating_sub(m0);
            l.skipped[i] += h.saturating_sub(h0).saturating_sub(r.saturating_sub(r0));
        }
        Ok(l)
    }

    /// Runs of each probe's kprobe-attached programs since everything was attached, read now.
    /// After [`Session::stop_programs`] tracefs probes run no more, so the counts are final:
    /// every run of an entry probe with nothing filtered and nothing lost is one event in the
    /// log.
    pub fn runs(&self) -> Result<BTreeMap<&'static str, u64>, ProbeError> {
        let now = self.runs_now()?;
        let mut out = BTreeMap::new();
        let mut counted = [false; PROGRAM_SLOTS];
        for (a, &(_, _, r0)) in self.attachments.iter().zip(&self.baseline) {
            let n = out.entry(a.probe.name()).or_insert(0);
            let s = a.slot as usize;
            // Several attachments can share a program, and so its count.
            if let (Some(done), Some(&r)) = (counted.get_mut(s), now.get(s))
                && !*done
            {
                *done = true;
                *n += r.saturating_sub(r0);
            }
        }
        Ok(out)
    }

    /// Waits until the ring buffer has data, then appends up to [`MAX_BATCH`] records to
    /// `out`. Returns how many.
    pub async fn next_batch(&mut self, out: &mut Vec<Raw>) -> Result<usize, ProbeError> {
        let mut guard = self.ring.readable_mut().await?;
        let n = drain(guard.get_inner_mut(), out);
        // A full batch may have left records behind: stay ready so the loop comes back.
        if n < MAX_BATCH {
            guard.clear_ready();
        }
        Ok(n)
    }

    /// Appends up to [`MAX_BATCH`] records already in the ring buffer to `out`, without
    /// waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Raw>) -> usize {
        drain(self.ring.get_mut(), out)
    }

    /// Failed reservations so far, per probe, summed over CPUs.
    pub fn lost(&self) -> Result<[u64; PROBE_COUNT], ProbeError> {
        let mut out = [0u64; PROBE_COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            let v = self
                .lost
                .get(&(i as u32), 0)
                .map_err(|source| ProbeError::Map {
                    name: "LOST",
                    source: Box::new(source),
                })?;
            *slot = v.iter().sum();
        }
        Ok(out)
    }

    /// The calls still open in the kernel: entered, their return not seen. Read after
    /// [`Session::stop_programs`], these are the calls the end of tracing interrupted; their
    /// events happened and go into the log like any other (each record holds what the call
    /// did before tracing stopped). Removed as they are read, so a second call returns only
    /// what opened since.
    pub fn take_open_calls(&mut self) -> Result<Vec<RawCall>, ProbeError> {
        let mut out = Vec::new();
        for m in &mut self.calls {
            let keys: Vec<u32> = m.keys().filter_map(Result::ok).collect();
            for k in keys {
                // A key removed meanwhile (a program still finishing) is simply gone.
                if let Ok(r) = m.get(&k, 0)
                    && r.present != 0
                {
                    out.push(r);
                }
                let _ = m.remove(&k);
            }
        }
        // In the order the calls began, as they would have been seen.
        out.sort_by_key(|r| {
            r.ts.iter()
                .zip(0..)
                .find(|(_, i)| r.present & (1 << i) != 0)
                .map(|(t, _)| *t)
        });
        Ok(out)
    }

    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }
}

/// One ring-buffer record.
#[derive(Clone, Copy, Debug)]
pub enum Raw {
    /// One event (`mm_free`).
    Event(RawEvent),
    /// A tracepoint-mode record: an event and its tail.
    Wide(RawWide),
    /// One call, with every event it produced.
    Call(RawCall),
}

/// Records taken from the ring buffer at once. Bounded, because producers that keep up would
/// otherwise keep one drain going for the whole trace, and the loop around it (loss counts,
/// the stop, the timers) would never run.
pub const MAX_BATCH: usize = 16384;

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Raw>) -> usize {
    let mut n = 0;
    while n < MAX_BATCH
        && let Some(item) = ring.next()
    {
        // The three record types have different lengths (a const assertion in
        // tracer-common): the length says which one the eBPF side wrote.
        let raw = match item.len() {
            n if n == std::mem::size_of::<RawCall>() => {
                // SAFETY: the eBPF side writes whole `RawCall`s (repr(C), plain data) in
                // records this long; read_unaligned copes with any alignment.
                Raw::Call(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RawCall>()) })
            }
            n if n == std::mem::size_of::<RawWide>() => {
                // SAFETY: as above, for a `RawWide`.
                Raw::Wide(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RawWide>()) })
            }
            n if n == std::mem::size_of::<RawEvent>() => {
                // SAFETY: as above, for a plain `RawEvent`.
                Raw::Event(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RawEvent>()) })
            }
            _ => continue,
        };
        out.push(raw);
        n += 1;
    }
    n
}

fn load_err(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError + '_ {
    move |source| ProbeError::Program {
        name: name.to_owned(),
        source: Box::new(source),
    }
}

/// What attaching the kprobes left for loss accounting: the tracefs handle (when it was
/// there), why losses cannot all be counted (when not), the stale groups removed, and each
/// attached program.
type KprobeAttach = (
    Option<kprobe_events::KprobeEvents>,
    Option<String>,
    Vec<String>,
    Vec<Attachment>,
);

/// Function probes as kprobes/kretprobes, and the instruction sites.
fn attach_kprobes(
    ebpf: &mut Ebpf,
    plan: &AttachPlan,
    opts: &Options,
) -> Result<KprobeAttach, ProbeError> {
    // Attach through tracefs when it is there, so that every loss can be counted.
    let (events, uncounted) = match kprobe_events::KprobeEvents::open() {
        Ok(k) => (Some(k), None),
        Err(e) => (
            None,
            Some(format!(
                "{e}: kprobe misses and skipped program runs cannot be counted"
            )),
        ),
    };
    let removed_stale = events
        .as_ref()
        .map(|k| k.removed_stale.clone())
        .unwrap_or_default();
    let mut attachments = Vec::new();
    let targets = plan
        .function
        .probes
        .iter()
        .filter(|p| p.hook != Hook::RawTracepoint)
        .map(|p| {
            (
                program_for(p.probe),
                p.probe,
                p.probe as u32,
                p.symbol.as_str(),
                0,
                p.hook == Hook::Return,
                p.probe.name().to_owned(),
            )
        })
        .chain(plan.sites.iter().enumerate().map(|(i, s)| {
            (
                SITE_PROGRAMS[i],
                s.probe,
                FIRST_SITE + i as u32,
                s.symbol.as_str(),
                s.offset,
                false,
                format!("{}+{:#x}", s.symbol, s.offset),
            )
        }));
    for (name, probe, slot, symbol, offset, ret, what) in targets {
        let prog = kprobe(ebpf, name)?;
        prog.load().map_err(|source| ProbeError::Program {
            name: name.to_owned(),
            source: Box::new(source),
        })?;
        let tracefs = match &events {
            Some(k) => {
                let fd = prog.fd().map_err(|source| ProbeError::Program {
                    name: name.to_owned(),
                    source: Box::new(source),
                })?;
                Some(k.attach(name, symbol, offset, ret, opts.maxactive, fd.as_fd())?)
            }
            None => {
                prog.attach(symbol, offset)
                    .map_err(|source| ProbeError::Attach {
                        what: format!("{} ({what})", probe.name()),
                        target: format!("{symbol}+{offset:#x}"),
                        source: Box::new(source),
                    })?;
                None
            }
        };
        attachments.push(Attachment {
            probe,
            slot,
            tracefs,
            event: name.to_owned(),
        });
    }
    Ok((events, uncounted, removed_stale, attachments))
}

/// The fentry/fexit program of a function-level probe (tracer-ebpf/src/fentry.rs).
fn fentry_program(p: Probe) -> Option<&'static str> {
    Some(match p {
        Probe::CprEnter => "fe_cpr_enter",
        Probe::CprExit => "fx_cpr_exit",
        Probe::HugetlbEnter => "fe_hugetlb_enter",
        Probe::HugetlbExit => "fx_hugetlb_exit",
        Probe::GupEnter => "fe_gup_enter",
        Probe::GupExit => "fx_gup_exit",
        Probe::MmFree => "fe_mm_free",
        _ => return None,
    })
}

/// Function probes as fentry/fexit programs, loaded against the running kernel's BTF. BTF
/// names functions without the compiler's clone suffixes (`.constprop.0`, `.isra.0`).
fn attach_fentry(ebpf: &mut Ebpf, plan: &AttachPlan) -> Result<(), ProbeError> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| ProbeError::KernelBtf(e.to_string()))?;
    for p in plan
        .function
        .probes
        .iter()
        .filter(|p| p.hook != Hook::RawTracepoint)
    {
        let name = fentry_program(p.probe).ok_or(ProbeError::Missing("fentry program"))?;
        let func = p.symbol.split('.').next().unwrap_or(&p.symbol);
        let attach_err = |source| ProbeError::Attach {
            what: p.probe.name().to_owned(),
            target: format!("fentry:{func}"),
            source: Box::new(source),
        };
        let prog = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
        if p.hook == Hook::Return {
            let prog: &mut FExit = prog.try_into().map_err(load_err(name))?;
            prog.load(func, &btf).map_err(load_err(name))?;
            prog.attach().map_err(attach_err)?;
        } else {
            let prog: &mut FEntry = prog.try_into().map_err(load_err(name))?;
            prog.load(func, &btf).map_err(load_err(name))?;
            prog.attach().map_err(attach_err)?;
        }
    }
    Ok(())
}

/// The raw tracepoint program of a function-level probe (tracer-ebpf/src/tracepoint.rs).
fn raw_tracepoint_program(p: Probe) -> Option<&'static str> {
    Some(match p {
        Probe::MmFree => "tp_exit_mmap",
        _ => return None,
    })
}

/// Function-level probes that are raw tracepoints, in the kprobe and fentry modes (the
/// tracepoint mode attaches its own). Returns each probe with its program.
fn attach_raw_tracepoint_probes(
    ebpf: &mut Ebpf,
    plan: &AttachPlan,
) -> Result<Vec<(Probe, &'static str)>, ProbeError> {
    if plan.attach == Mode::Tracepoint {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for p in plan
        .function
        .probes
        .iter()
        .filter(|p| p.hook == Hook::RawTracepoint)
    {
        let name =
            raw_tracepoint_program(p.probe).ok_or(ProbeError::Missing("raw tracepoint program"))?;
        let prog: &mut RawTracePoint = ebpf
            .program_mut(name)
            .ok_or(ProbeError::Missing(name))?
            .try_into()
            .map_err(load_err(name))?;
        prog.load().map_err(load_err(name))?;
        prog.attach(&p.symbol)
            .map_err(|source| ProbeError::Attach {
                what: p.probe.name().to_owned(),
                target: format!("raw_tp:{}", p.symbol),
                source: Box::new(source),
            })?;
        out.push((p.probe, name));
    }
    Ok(out)
}

/// The programs attached by [`attach_fentry`] or [`attach_tracepoints`], each with the probe
/// its skipped runs are counted under (a tracepoint program serving several kinds counts
/// under the first).
fn self_counted_programs(plan: &AttachPlan) -> Vec<(Probe, &'static str)> {
    match plan.attach {
        Mode::Kprobe => Vec::new(),
        Mode::Fentry => plan
            .function
            .probes
            .iter()
            .filter(|p| p.hook != Hook::RawTracepoint)
            .filter_map(|p| Some((p.probe, fentry_program(p.probe)?)))
            .collect(),
        Mode::Tracepoint => {
            let mut out: Vec<(Probe, &'static str)> = Vec::new();
            for h in plan.tracepoints.iter().flat_map(|t| &t.hooks) {
                if out.iter().any(|(_, p)| *p == h.program) {
                    continue;
                }
                out.push((h.probe, h.program));
            }
            out
        }
    }
}

/// A loaded program's recursion misses (`None`: the kernel does not count them).
fn program_misses(ebpf: &Ebpf, name: &'static str) -> Result<Option<u64>, ProbeError> {
    let prog = ebpf.program(name).ok_or(ProbeError::Missing(name))?;
    let fd = prog.fd().map_err(load_err(name))?;
    Ok(prog_stats::recursion_misses(fd.as_fd())?)
}

/// `task_exit` on `sched_process_exit`: removes an exiting thread's call slots.
fn attach_task_exit(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    const NAME: &str = "task_exit";
    let prog: &mut RawTracePoint = ebpf
        .program_mut(NAME)
        .ok_or(ProbeError::Missing(NAME))?
        .try_into()
        .map_err(load_err(NAME))?;
    prog.load().map_err(load_err(NAME))?;
    prog.attach("sched_process_exit")
        .map_err(|source| ProbeError::Attach {
            what: NAME.to_owned(),
            target: "raw_tp:sched_process_exit".to_owned(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// The tracepoint mode's raw tracepoint programs.
fn attach_tracepoints(ebpf: &mut Ebpf, tp: &TracepointPlan) -> Result<(), ProbeError> {
    let mut done: Vec<&str> = Vec::new();
    for h in &tp.hooks {
        // One program can serve several kinds (sys_enter: forks and pinning syscalls).
        if done.contains(&h.program) {
            continue;
        }
        done.push(h.program);
        let prog: &mut RawTracePoint = ebpf
            .program_mut(h.program)
            .ok_or(ProbeError::Missing(h.program))?
            .try_into()
            .map_err(load_err(h.program))?;
        prog.load().map_err(load_err(h.program))?;
        prog.attach(h.tracepoint)
            .map_err(|source| ProbeError::Attach {
                what: h.probe.name().to_owned(),
                target: format!("raw_tp:{}", h.tracepoint),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_diagnostics_get_probe_names() {
        assert_eq!(
            name_probe("probe#0: pairing map full: the exit of tid 5"),
            "cpr_enter: pairing map full: the exit of tid 5"
        );
        assert_eq!(name_probe("probe#99: x"), "probe#99: x");
        assert_eq!(name_probe("other"), "other");
    }
}
