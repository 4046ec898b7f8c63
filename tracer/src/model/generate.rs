//! Schema-1 logs produced by running the step machines: random interleavings of many
//! processes (one mm each), for tests, benchmarks and demos, and the log of one explored path
//! (a counterexample) so it can be fed to `tracer validate`.
use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use super::machine::{Config, State, Step, Variant, What, Who};
use crate::events::{
    Body, CopyFn, Event, Header, Kind, ProbeInfo, Record, Summary, log::LogWriter,
};

/// A small deterministic PRNG (splitmix64): reproducible logs from a seed, no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0; returns 0 for n == 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[derive(Clone, Debug)]
pub struct GenOptions {
    pub events: u64,
    pub seed: u64,
    /// Processes, one mm each.
    pub mms: u32,
    pub writers: u8,
    pub readers: u8,
    pub variant: Variant,
    pub fast_only: bool,
    /// Emit the instruction-level kinds (`write_*`, `read_*`, `retry_fail`); without them the
    /// log looks like one from a kernel where only function entry/exit could be probed.
    pub instruction_sites: bool,
    /// Delivery order is shuffled within blocks of this many events (1 = sorted).
    pub jitter: usize,
    /// Also emit benign extras: non-COW copies and FOLL_GET GUP-fast calls.
    pub extras: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            events: 10_000,
            seed: 1,
            mms: 4,
            writers: 2,
            readers: 2,
            variant: Variant::Correct,
            fast_only: false,
            instruction_sites: true,
            jitter: 8,
            extras: true,
        }
    }
}

const VMA_START: u64 = 0x7f00_0000_0000;
/// `vm_flags` of a private read-write mapping (VM_READ|VM_WRITE|VM_MAYREAD|VM_MAYWRITE) and of
/// a shared one (plus VM_SHARED|VM_MAYSHARE).
const VM_PRIVATE_RW: u64 = 0x33;
const VM_SHARED_RW: u64 = 0xbb;
const FOLL_WRITE: u32 = 0x1;
const FOLL_GET: u32 = 0x2;
/// The ≥ 6.3 values (kernel.md §2).
const FOLL_PIN: u32 = 0x8_0000;
const FOLL_FAST_ONLY: u32 = 0x10_0000;

fn is_instruction_site(k: Kind) -> bool {
    matches!(
        k,
        Kind::WriteBegin | Kind::WriteEnd | Kind::ReadBegin | Kind::ReadRetry | Kind::RetryFail
    )
}

/// What discovery would say of a kernel built as `v`: the defect its machine code carries
/// (a FOLL_GET caller, `non-pin`, is no defect of GUP-fast's code).
pub fn discovery(v: Variant) -> serde_json::Value {
    let function = |symbol: &str, role: &str, sites: &[&str], defect: Option<(&str, &str)>| {
        serde_json::json!({
            "symbol": symbol,
            "role": role,
            "required": true,
            "status": if defect.is_some() { "defect" } else { "intact" },
            "defects": defect.map(|(d, why)| vec![serde_json::json!({"defect": d, "why": why, "evidence": []})]).unwrap_or_default(),
            "reason": null,
            "sites": sites,
        })
    };
    let write = match v {
        Variant::UncoveredCopy => Some((
            "write_unpaired",
            "model variant uncovered-copy: the write section does not enclose the copy",
        )),
        _ => None,
    };
    let read = match v {
        Variant::NoOddCheck => Some((
            "odd_check_missing",
            "model variant no-odd-check: GUP-fast does not bail on an odd value",
        )),
        Variant::NoRetry => Some((
            "retry_unconsumed",
            "model variant no-retry: GUP-fast ignores the retry's answer",
        )),
        _ => None,
    };
    serde_json::json!({
        "sides": {
            "write": write.map_or("intact", |d| d.0),
            "read": read.map_or("intact", |d| d.0),
        },
        "functions": [
            function("copy_page_range", "write", &["write_begin", "write_end"], write),
            function("gup_fast_fallback", "read", &["read_begin", "read_retry", "retry_fail"], read),
        ],
    })
}

/// The header of a generated log: every probe the options produce events for, and (when
/// `variant` is given) what discovery would have found in such a kernel's code.
pub fn header(instruction_sites: bool, note: &str, variant: Option<Variant>) -> Header {
    let probes = Kind::ALL
        .into_iter()
        // The model has no hugetlb copies, and models the kprobe mode (no tracepoint kinds).
        .filter(|k| {
            !matches!(
                k,
                Kind::HugetlbEnter | Kind::HugetlbExit | Kind::Fork | Kind::PinSyscall
            )
        })
        .filter(|k| instruction_sites || !is_instruction_site(*k))
        .map(|k| ProbeInfo {
            name: k.as_str().to_string(),
            target: match k {
                Kind::CprEnter | Kind::CprExit | Kind::WriteBegin | Kind::WriteEnd => {
                    "copy_page_range"
                }
                _ => "gup_fast_fallback",
            }
            .to_string(),
            offset: 0,
        })
        .collect();
    Header {
        schema: crate::events::schema::SCHEMA,
        tool: format!("tracer {} model", env!("CARGO_PKG_VERSION")),
        kernel: "model".to_string(),
        probes,
        extra: BTreeMap::from_iter(
            [(
                "generator".to_string(),
                serde_json::Value::String(note.to_string()),
            )]
            .into_iter()
            .chain(variant.map(|v| ("discovery".to_string(), discovery(v)))),
        ),
    }
}

/// The event a step emits (if observable), as seen in process `pid` with mm `mm`.
pub fn step_event(
    step: &Step,
    cfg: &Config,
    ts: u64,
    pid: u32,
    tid: u32,
    mm: &str,
) -> Option<Event> {
    let kind = step.what.kind()?;
    let seq = Some(step.seq_before);
    let body = match step.what {
        // A private anonymous VMA with pages: its copy must take the write section.
        What::CprEnter => Body::CopyEnter {
            func: CopyFn::Cpr,
            vma_start: VMA_START,
            vma_end: VMA_START + 0x4000,
            cow: true,
            anon: Some(true),
            vm_flags: Some(VM_PRIVATE_RW),
            seq,
        },
        What::CprExit => Body::CopyExit {
            func: CopyFn::Cpr,
            seq,
            ret: 0,
        },
        What::GupEnter { pin } => Body::GupEnter {
            start: VMA_START + 0x1000,
            nr_pages: 1,
            flags: FOLL_WRITE
                | if pin { FOLL_PIN } else { FOLL_GET }
                | if cfg.fast_only { FOLL_FAST_ONLY } else { 0 },
            pin,
            fast_only: cfg.fast_only,
            longterm: false,
            seq,
        },
        What::GupExit { pages, .. } => Body::GupExit {
            ret: i64::from(pages),
            seq,
        },
        _ => Body::Site { kind, seq },
    };
    Some(Event {
        ts,
        cpu: tid % 2,
        pid,
        tid,
        comm: match step.who {
            Who::Writer(_) => "forker".to_string(),
            Who::Reader(_) => "pinner".to_string(),
        },
        mm: mm.to_string(),
        mm_addr: None,
        body,
    })
}

/// Writes the log of one path (e.g. a counterexample): header, one event per observable step
/// (ts 10 ns apart), summary.
pub fn write_path_log(w: &mut impl Write, cfg: &Config, steps: &[Step]) -> io::Result<()> {
    let mut out = LogWriter::new(w);
    // Events only: what the path alone shows, without discovery's account of the code.
    let h = Record::Header(header(
        true,
        &format!("model path, variant {}", cfg.variant),
        None,
    ));
    out.write(&h).map_err(io::Error::other)?;
    for (i, s) in steps.iter().enumerate() {
        let ts = 10 * (i as u64 + 1);
        if let Some(e) = step_event(s, cfg, ts, 100, s.who.tid(), "m1") {
            out.write_event(&e).map_err(io::Error::other)?;
        }
    }
    let sum = Record::Summary(Summary {
        events: out.events(),
        lost: BTreeMap::new(),
        duration_ns: 10 * steps.len() as u64,
        extra: BTreeMap::new(),
    });
    out.write(&sum).map_err(io::Error::other)?;
    out.flush().map_err(io::Error::other)
}

/// Counts of what a generated log holds (its ground truth).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenStats {
    pub events: u64,
    /// Rounds (every thread of a process finished) whose final state broke the property.
    pub broken_rounds: u64,
    pub rounds: u64,
}

struct Proc {
    state: State,
    pid: u32,
    mm: String,
}

/// Writes a random log of `opts.events` events (plus header and summary).
pub fn generate(w: &mut impl Write, opts: &GenOptions) -> io::Result<GenStats> {
    let cfg = Config {
        variant: opts.variant,
        writers: opts.writers.max(1),
        readers: opts.readers,
        fast_only: opts.fast_only,
    };
    let mut rng = Rng::new(opts.seed);
    let mut procs: Vec<Proc> = (0..opts.mms.max(1))
        .map(|p| Proc {
            state: State::initial(&cfg),
            pid: 1000 * (p + 1),
            mm: format!("mm{}", p + 1),
        })
        .collect();
    // Through the shared writer, which hands the lines over in 64 KiB pieces.
    let mut out = LogWriter::new(w);
    let note = format!("seed {}, variant {}", opts.seed, opts.variant);
    out.write(&Record::Header(header(
        opts.instruction_sites,
        &note,
        opts.instruction_sites.then_some(opts.variant),
    )))
    .map_err(io::Error::other)?;
    let mut ts: u64 = 1_000;
    let mut stats = GenStats::default();
    let mut block: Vec<Event> = Vec::with_capacity(opts.jitter.max(1));
    let jitter = opts.jitter.max(1);
    let emit = |e: Event,
                out: &mut LogWriter<&mut _>,
                block: &mut Vec<Event>,
                rng: &mut Rng,
                flush: bool|
     -> io::Result<()> {
        block.push(e);
        if block.len() >= jitter || flush {
            // Fisher-Yates within the block: bounded displacement, like per-CPU delivery.
            for i in (1..block.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                block.swap(i, j);
            }
            for e in block.drain(..) {
                out.write_event(&e).map_err(io::Error::other)?;
            }
        }
        Ok(())
    };
    let mut movers: Vec<Who> = Vec::new();
    while stats.events < opts.events {
        let pi = rng.below(procs.len() as u64) as usize;
        let Some(p) = procs.get_mut(pi) else { continue };
        ts += 1 + rng.below(20);
        // Benign extras, only when no fork holds this mm's mmap_lock.
        if opts.extras && rng.below(16) == 0 {
            let seq = Some(p.state.seq);
            let pair = if rng.below(2) == 0 && p.state.lock.is_none() {
                let tid = p.pid + 1;
                [
                    // A shared mapping: copied without a write section.
                    Body::CopyEnter {
                        func: CopyFn::Cpr,
                        vma_start: VMA_START + 0x10_0000,
                        vma_end: VMA_START + 0x20_0000,
                        cow: false,
                        anon: Some(false),
                        vm_flags: Some(VM_SHARED_RW),
                        seq,
                    },
                    Body::CopyExit {
                        func: CopyFn::Cpr,
                        seq,
                        ret: 0,
                    },
                ]
                .map(|b| (tid, "forker", b))
            } else {
                let tid = p.pid + 900;
                [
                    Body::GupEnter {
                        start: VMA_START,
                        nr_pages: 2,
                        flags: FOLL_GET,
                        pin: false,
                        fast_only: false,
                        longterm: false,
                        seq,
                    },
                    Body::GupExit { ret: 2, seq },
                ]
                .map(|b| (tid, "getter", b))
            };
            for (k, (tid, comm, body)) in pair.into_iter().enumerate() {
                let e = Event {
                    ts: ts + k as u64,
                    cpu: tid % 2,
                    pid: p.pid,
                    tid,
                    comm: comm.to_string(),
                    mm: p.mm.clone(),
                    mm_addr: None,
                    body,
                };
                emit(e, &mut out, &mut block, &mut rng, false)?;
                stats.events += 1;
            }
            ts += 2;
        } else {
            movers.clear();
            movers.extend(p.state.enabled());
            let who = movers.get(rng.below(movers.len() as u64) as usize).copied();
            let Some(who) = who else { continue };
            let Some((next, step)) = p.state.step(&cfg, who) else {
                continue;
            };
            p.state = next;
            if let Some(e) = step_event(&step, &cfg, ts, p.pid, p.pid + who.tid(), &p.mm)
                && (opts.instruction_sites || !is_instruction_site(e.body.kind()))
            {
                emit(e, &mut out, &mut block, &mut rng, false)?;
                stats.events += 1;
            }
            if p.state.done() {
                stats.rounds += 1;
                if p.state.broken().is_some() {
                    stats.broken_rounds += 1;
                }
                let seq = p.state.seq;
                p.state = State::initial(&cfg);
                p.state.seq = seq;
            }
        }
    }
    // The workload ends: calls and copies in flight finish (nothing new starts), as they do
    // before a recorder writes its summary.
    for p in &mut procs {
        loop {
            movers.clear();
            movers.extend(
                p.state
                    .in_flight()
                    .filter(|w| p.state.enabled().any(|e| e == *w)),
            );
            let Some(&who) = movers.get(rng.below(movers.len().max(1) as u64) as usize) else {
                break;
            };
            let Some((next, step)) = p.state.step(&cfg, who) else {
                break;
            };
            ts += 1 + rng.below(20);
            p.state = next;
            if let Some(e) = step_event(&step, &cfg, ts, p.pid, p.pid + who.tid(), &p.mm)
                && (opts.instruction_sites || !is_instruction_site(e.body.kind()))
            {
                emit(e, &mut out, &mut block, &mut rng, false)?;
                stats.events += 1;
            }
        }
    }
    if let Some(e) = block.pop() {
        emit(e, &mut out, &mut block, &mut rng, true)?;
    }
    let sum = Record::Summary(Summary {
        events: stats.events,
        lost: BTreeMap::new(),
        duration_ns: ts,
        extra: BTreeMap::new(),
    });
    out.write(&sum).map_err(io::Error::other)?;
    out.flush().map_err(io::Error::other)?;
    Ok(stats)
}
