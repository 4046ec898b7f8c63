//! The streaming validator: reorders events by timestamp within a bounded window, replays them
//! through per-mm and per-thread protocol state, and applies the rules of `docs/validate.md`.
//!
//! Memory is proportional to the reorder window plus the live mms and threads, never to the
//! length of the log: every per-call or per-section record is dropped when its closing event
//! arrives, and at most [`MAX_STORED_VIOLATIONS`] violations are kept (all are counted).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
};

use serde::Serialize;
use tracer_common::Probe;

use crate::{
    events::{Body, Bracket, CopyFn, Event, Header, Kind, Record},
    sites::Defect,
};

/// Default reorder window, in events. Ring-buffer delivery is nearly in timestamp order; this is
/// generous and costs about 40 bytes per slot.
pub const DEFAULT_WINDOW: usize = 65_536;

/// Violations kept in the report; further ones are only counted.
pub const MAX_STORED_VIOLATIONS: usize = 1_000;

/// The rules of `docs/validate.md`; `as_str` is the name used in reports. The event rules are
/// judged on the log's events; a `Defect` is proven by site discovery from the kernel's
/// machine code and reaches the validator through the log header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    WriteParity,
    WriterOverlap,
    CopyDelta,
    OddNotBailed,
    UnprotectedOverlap,
    RetryIgnored,
    SeqUnexplained,
    ForkParity,
    Defect(Defect),
}

impl Rule {
    /// The rules judged on events.
    pub const EVENT_RULES: [Rule; 8] = [
        Rule::WriteParity,
        Rule::WriterOverlap,
        Rule::CopyDelta,
        Rule::OddNotBailed,
        Rule::UnprotectedOverlap,
        Rule::RetryIgnored,
        Rule::SeqUnexplained,
        Rule::ForkParity,
    ];

    /// Every rule: the event rules, then one per defect class.
    pub fn all() -> impl Iterator<Item = Rule> {
        Rule::EVENT_RULES
            .into_iter()
            .chain(Defect::ALL.into_iter().map(Rule::Defect))
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::WriteParity => "write_parity",
            Rule::WriterOverlap => "writer_overlap",
            Rule::CopyDelta => "copy_delta",
            Rule::OddNotBailed => "odd_not_bailed",
            Rule::UnprotectedOverlap => "unprotected_overlap",
            Rule::RetryIgnored => "retry_ignored",
            Rule::SeqUnexplained => "seq_unexplained",
            Rule::ForkParity => "fork_parity",
            Rule::Defect(d) => d.name(),
        }
    }

    pub fn from_name(s: &str) -> Option<Rule> {
        Rule::all().find(|r| r.as_str() == s)
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Protected overlaps kept for an exporter (all are counted in `Stats::protected_overlaps`).
pub const MAX_STORED_OVERLAPS: usize = 100_000;

/// How the seqcount caught a race (`Stats::protected_overlaps` counts both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapKind {
    /// `read_begin` loaded an odd value and the call gave up before its retry.
    OddBail,
    /// `read_retry` loaded a value other than `read_begin`'s and the call backed out.
    BackedOut,
}

impl OverlapKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            OverlapKind::OddBail => "odd_bail",
            OverlapKind::BackedOut => "backed_out",
        }
    }
}

/// One protected overlap: where a GUP-fast call met a write section and the seqcount made it
/// back off. `line`/`ts` are the load that showed it (the odd `read_begin`, the changed
/// `read_retry`); `lines` every line it rests on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Overlap {
    pub how: OverlapKind,
    pub line: u64,
    pub ts: u64,
    pub mm: String,
    pub tid: u32,
    pub lines: Vec<u64>,
}

/// One broken rule, located at the event that completed the proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: Rule,
    /// Line (1-based) of the event at which the violation became certain.
    pub line: u64,
    pub ts: u64,
    pub mm: String,
    pub tid: u32,
    pub message: String,
    /// Every line the proof rests on, ascending (includes `line`).
    pub lines: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Clean,
    Violations,
    Inconclusive,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Violations => "violations",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// The `tracer` exit status for this verdict.
    pub const fn exit_status(self) -> u8 {
        match self {
            Verdict::Clean => 0,
            Verdict::Violations => 1,
            Verdict::Inconclusive => 3,
        }
    }
}

/// What went right (the report's headline), and what limits the verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Write sections completed: `write_begin`..`write_end` pairs, or (in a log without
    /// `write_*` events) COW copy windows whose seq advanced.
    pub write_sections: u64,
    /// GUP-fast calls with FOLL_PIN (a `gup_enter` with `pin`, or a `read_begin` outside a call).
    pub pin_gup_fast: u64,
    /// PIN calls whose `read_begin` loaded an odd value and that returned without `read_retry`.
    pub odd_bails: u64,
    /// `read_retry` loads that differed from their `read_begin` (the seqcount moved).
    pub failed_retries: u64,
    /// Overlaps with a write section that the seqcount caught and the kernel honoured: odd bails
    /// plus failed retries that backed out (a `retry_fail` followed them).
    pub protected_overlaps: u64,
    /// `cpr_enter`/`cpr_exit` pairs, and how many of them were COW VMAs.
    pub copies: u64,
    pub cow_copies: u64,
    /// All GUP-fast calls seen (`gup_enter`, or implicit ones started by `read_begin`).
    pub gup_calls: u64,
    /// Lines with a `kind` this validator does not know (skipped).
    pub unknown_kinds: u64,
    /// Events lost: per probe, the larger of the sum of its `lost` lines (deltas) and the
    /// summary's total for it (the same losses counted twice otherwise).
    pub lost: u64,
    /// Events that arrived older than an event already replayed (beyond the reorder window);
    /// they are not replayed.
    pub out_of_window: u64,
    /// The largest amount by which an event's ts was older than an event delivered before it,
    /// among the events written to the ring buffer at their own time
    /// ([`Kind::written_at_its_time`]). A single ring buffer delivers those nearly in ts order; milliseconds here mean the CPUs'
    /// clocks disagree (seen under QEMU's TCG), and ts order is then not real order. `None`
    /// (`null`) when no such event was seen (no return probes): the order was not measured.
    pub max_ts_inversion_ns: Option<u64>,
    /// Findings not reported as violations because events lost (`lost` lines) can explain
    /// them: a seq jump within the lost write events' increments, a write section or PIN call
    /// missing an event of a kind that was lost.
    pub explained_by_loss: u64,
    /// Every violation found (the report keeps only the first [`MAX_STORED_VIOLATIONS`]).
    pub violations: u64,
    pub violations_by_rule: BTreeMap<Rule, u64>,
    /// Whether a `summary` line was seen.
    pub summary: bool,
    /// `write_begin`..`write_end` pairs (the part of `write_sections` seen by write sites).
    pub write_pairs: u64,
    /// PIN calls whose `read_begin` was seen (the read sites were exercised).
    pub read_begins: u64,
    /// `read_begin` loads of an odd value (the situation `odd_not_bailed` judges).
    pub odd_loads: u64,
    /// PIN calls with both loads (the situation `unprotected_overlap` judges).
    pub retries_checked: u64,
    /// Events whose seq value was judged against the mm's timeline.
    pub seq_checked: u64,
    /// Events whose seq the probe could not read (`"seq":null`): missing evidence.
    pub unreadable_seq: u64,
    /// Calls and write sections still open when the log ended, whose outcome could hide a
    /// violation (an odd load not yet bailed, a changed retry not yet backed out).
    pub unsettled: u64,
    /// `fork` events (tracepoint mode), and those read under the parent's mmap_lock (exact).
    pub forks: u64,
    pub exact_forks: u64,
    /// `pin_syscall` events (tracepoint mode).
    pub pin_syscalls: u64,
    /// Pinning syscalls during which the mm's seq moved: they ran concurrently with a fork of
    /// their mm, the situation the seqcount exists for.
    pub pin_syscalls_during_fork: u64,
}

/// How one rule fared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleReport {
    pub rule: Rule,
    /// Whether the log carries what the rule needs.
    pub checked: bool,
    /// Why not, when not.
    pub why_not: Option<String>,
    /// How often the situation the rule judges arose.
    pub exercised: u64,
    pub violations: u64,
}

/// A defect discovery proved in the traced kernel's code (from the log header).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DefectReport {
    pub symbol: String,
    pub defect: Defect,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    /// Events (known kinds) read.
    pub events: u64,
    pub stats: Stats,
    pub violations: Vec<Violation>,
    /// Every rule, checked or not, exercised how often.
    pub rules: Vec<RuleReport>,
    /// What a clean verdict would need and the log lacks, one sentence each (empty when the
    /// verdict is clean, or violations are all there is to say).
    pub missing_evidence: Vec<String>,
    /// Copy functions whose write sections were judged by their copy windows (function-level
    /// probes), not by write sites.
    pub function_level: Vec<String>,
    pub defects: Vec<DefectReport>,
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Reorder window in events: an event is replayed once this many newer-delivered events
    /// are buffered behind it.
    pub window: usize,
    /// How far a timestamp may be from the instant of the access it reports, across CPUs
    /// (a probe can run late after its load, a vCPU can stall, clocks can disagree). Values
    /// are exact; every timestamp is a bound give or take this much (`docs/validate.md`).
    pub slack_ns: u64,
    /// Use the header's `clock_slack_ns` (the recorder's estimate for the machine it ran on:
    /// larger under a hypervisor) instead of `slack_ns` when the header has one.
    pub header_slack: bool,
}

/// Default [`Options::slack_ns`], for real hardware (native kprobes take about a
/// microsecond). Guests under QEMU's TCG showed vCPU stalls of several ms between an access
/// and its probe; VM tests pass 50 ms.
pub const DEFAULT_SLACK_NS: u64 = 100_000;

impl Default for Options {
    fn default() -> Self {
        Options {
            window: DEFAULT_WINDOW,
            slack_ns: DEFAULT_SLACK_NS,
            header_slack: true,
        }
    }
}

/// One event reduced to what the rules need; `mm` is an interned id.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ev {
    pub ts: u64,
    pub line: u64,
    pub tid: u32,
    pub mm: u32,
    pub kind: Kind,
    /// `None`: the probe could not read it.
    pub seq: Option<u32>,
    /// `cow` for copy entries, `pin` for `gup_enter`, false otherwise.
    pub flag: bool,
    /// A copy entry whose copy must take the write section (see [`must_write`]); for a
    /// `fork`, its bracket is exact (read holding the mmap_lock).
    pub must: bool,
    /// The other value of a two-value event (`fork`, `pin_syscall`) and when it was read.
    pub seq2: Option<u32>,
    pub ts2: u64,
}

/// `VM_PFNMAP` and `VM_HUGETLB` (include/linux/mm.h, unchanged since 2.6).
const VM_PFNMAP: u64 = 0x400;
const VM_HUGETLB: u64 = 0x40_0000;

/// Whether `copy_page_range` must run its write section for this VMA: a COW mapping with an
/// `anon_vma` always needs copying (`vma_needs_copy`), and only hugetlb VMAs (their own
/// function) and PFN maps (which can fail before the section) leave before it. Unknown when
/// the log does not say (older logs).
fn must_write(func: CopyFn, cow: bool, anon: Option<bool>, vm_flags: Option<u64>) -> bool {
    func == CopyFn::Cpr
        && cow
        && anon == Some(true)
        && vm_flags.is_some_and(|f| f & (VM_PFNMAP | VM_HUGETLB) == 0)
}

/// FxHash-style multiplicative hasher: keys are small trusted integers and mm names, and
/// SipHash would dominate the per-event cost.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A set of event kinds as a bit mask: every event is checked against the header's probes
/// and added to the kinds seen, and a `BTreeSet` walk there cost more than the check.
#[derive(Clone, Copy, Debug, Default)]
struct KindSet(u32);

// Each kind needs a bit of its own.
const _: () = assert!(Kind::ALL.len() <= u32::BITS as usize);

impl KindSet {
    fn bit(k: Kind) -> u32 {
        // Fieldless enum discriminants are 0..Kind::ALL.len(), within the mask (asserted above).
        1 << (k as u32)
    }

    fn insert(&mut self, k: Kind) {
        self.0 |= Self::bit(k);
    }

    fn contains(&self, k: &Kind) -> bool {
        self.0 & Self::bit(*k) != 0
    }
}

#[derive(Clone, Copy, Debug)]
struct CprOpen {
    func: CopyFn,
    mm: u32,
    seq: Option<u32>,
    cow: bool,
    /// The copy must take the write section ([`must_write`]).
    must: bool,
    line: u64,
    /// In a function without write sites: this window put its two possible increments on the
    /// mm's timeline (see [`MmState::hist`]).
    tentative: bool,
    /// A hugetlb copy opened inside this `copy_page_range` window: the increments, if any,
    /// are that copy's, judged by its own window or write sites.
    delegated: bool,
    /// Set when another thread's advancing copy window on the same mm closed while this one
    /// was open: that window's cpr_enter line, cpr_exit line, tid, and seq at enter and exit.
    overlapped_by: Option<(u64, u64, u32, u32, u32)>,
}

#[derive(Clone, Copy, Debug)]
struct WriteOpen {
    mm: u32,
    seq: Option<u32>,
    line: u64,
}

#[derive(Clone, Copy, Debug)]
struct GupCall {
    mm: u32,
    line: u64,
    /// `gup_enter`'s ts: the earliest the call's first load can have happened (`None` when
    /// the call was started by a `read_begin`, so nothing bounds it from below).
    enter_ts: Option<u64>,
    /// `read_begin`: (value loaded, line, ts).
    begin: Option<(u32, u64, u64)>,
    odd: bool,
    /// `read_retry`: (value loaded, line, ts).
    retry: Option<(u32, u64, u64)>,
    retry_fail: bool,
    /// One of its loads could not be read: its values prove nothing.
    unreadable: bool,
}

#[derive(Default, Debug)]
struct Thread {
    /// Open copy windows, innermost last (hugetlb copies nest inside `copy_page_range`).
    cpr: Vec<CprOpen>,
    write: Option<WriteOpen>,
    call: Option<GupCall>,
}

/// One increment of an mm's counter, from `v` to `v + 1`, known to have happened no later
/// than `hi` (ns, slack included; `u64::MAX` until bounded). Its lower bound only matters
/// when it is inserted (see [`Jump`]).
#[derive(Clone, Copy, Debug)]
struct Trans {
    v: u32,
    hi: u64,
    /// The event that reported it, and its thread.
    line: u64,
    tid: u32,
}

/// Increments kept per mm. Readers lag by at most the slack, so a few forks' worth is plenty;
/// older ones are summarized in [`MmState::floor_hi`].
const HIST_CAP: usize = 64;

#[derive(Debug)]
struct MmState {
    name: Box<str>,
    /// The counter's value after every increment known so far (`None`: nothing observed since
    /// the log began or the last loss).
    cur: Option<u32>,
    /// Increments leading to `cur`, ascending by value, consecutive unless events are missing.
    hist: VecDeque<Trans>,
    /// Values below the oldest one in `hist` may only have been loaded before this instant.
    floor_hi: u64,
    /// Increments whose `hi` is the next event of their thread on this mm: (tid, value).
    open_hi: Vec<(u32, u32)>,
    /// The open `write_begin` on this mm: (tid, line, seq).
    open_write: Option<(u32, u64, u32)>,
    /// Threads with an open COW copy window on this mm.
    cpr_open: Vec<u32>,
}

impl MmState {
    fn new(name: &str) -> Self {
        MmState {
            name: name.into(),
            cur: None,
            hist: VecDeque::new(),
            floor_hi: 0,
            open_hi: Vec::new(),
            open_write: None,
            cpr_open: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.cur = None;
        self.hist.clear();
        self.floor_hi = 0;
        self.open_hi.clear();
        self.open_write = None;
        self.cpr_open.clear();
    }

    /// Position in `hist` of the increment from `v`.
    fn find(&self, v: u32) -> Option<usize> {
        let front = self.hist.front()?.v;
        let k = v.wrapping_sub(front) as usize;
        // Consecutive values (the usual case) index directly.
        if self.hist.get(k).is_some_and(|t| t.v == v) {
            return Some(k);
        }
        self.hist.iter().position(|t| t.v == v)
    }

    /// Records an increment from `t.v`, keeping `hist` ascending relative to `cur`.
    fn insert(&mut self, t: Trans) {
        let base = self.cur.unwrap_or(t.v);
        let rel = |v: u32| v.wrapping_sub(base) as i32;
        if rel(t.v) >= 0 {
            // The usual case: the next increment, at the back.
            self.hist.push_back(t);
            self.cur = Some(t.v.wrapping_add(1));
        } else {
            let pos = self.hist.partition_point(|x| rel(x.v) < rel(t.v));
            self.hist.insert(pos, t);
        }
        while self.hist.len() > HIST_CAP {
            if let Some(old) = self.hist.pop_front() {
                self.floor_hi = self.floor_hi.max(old.hi);
            }
        }
    }
}

/// A load of a value above every increment known so far: explained only if the increments
/// that reach it show up with a lower bound no later than `b`.
#[derive(Clone, Copy, Debug)]
struct Jump {
    ev: Ev,
    /// The value loaded.
    x: u32,
    b: u64,
    what: &'static str,
    from: u32,
}

/// Findings that lost events can explain, by what they need: increments of seq, and missing
/// events of a kind.
#[derive(Default, Debug)]
struct LostAllowance {
    incs: u64,
    write_begin: u64,
    write_end: u64,
    read_begin: u64,
    retry_fail: u64,
    /// Lost `fork` events: each can explain one seq jump of any size.
    forks: u64,
}

/// What the log header says about the trace: which probes were attached (and so which rules
/// its events can support), what discovery found in the kernel's code, which filters hid
/// events.
#[derive(Debug, Default)]
struct Coverage {
    /// The header lists its probes; otherwise the kinds seen in the log decide.
    listed: bool,
    probes: KindSet,
    /// Copy functions with write sites attached.
    write_sited: BTreeSet<CopyFn>,
    /// The header carries discovery's account of the kernel's code.
    discovery: bool,
    /// Defects discovery proved: the defect, its function, and the message.
    defects: Vec<(DefectReport, String)>,
    /// Functions that must hold sites and that discovery could not classify.
    unknown: Vec<String>,
    /// The BPF-side filter, when one hid events (`--pid`, `--comm`).
    filter: Option<String>,
    /// Losses the recorder could not count, and why (header `loss_accounting`).
    uncounted_losses: Option<String>,
}

/// The copy function a probe target is (`copy_page_range`, `copy_hugetlb_page_range`, or a
/// clone of either).
fn copy_fn_of(symbol: &str) -> Option<CopyFn> {
    match symbol.split('.').next()? {
        "copy_page_range" => Some(CopyFn::Cpr),
        "copy_hugetlb_page_range" => Some(CopyFn::Hugetlb),
        _ => None,
    }
}

impl Coverage {
    fn from_header(h: &Header) -> Coverage {
        let mut c = Coverage {
            listed: !h.probes.is_empty(),
            ..Coverage::default()
        };
        for p in &h.probes {
            let Some(k) = Kind::from_name(&p.name) else {
                continue;
            };
            c.probes.insert(k);
            if matches!(k, Kind::WriteBegin | Kind::WriteEnd) {
                match copy_fn_of(&p.target) {
                    Some(f) => {
                        c.write_sited.insert(f);
                    }
                    // A writer this validator does not know by name: it cannot tell which
                    // windows the sites cover, so it takes them to cover all.
                    None => c.write_sited.extend([CopyFn::Cpr, CopyFn::Hugetlb]),
                }
            }
        }
        if let Some(d) = h.extra.get("discovery") {
            c.discovery = true;
            let functions = d.get("functions").and_then(|f| f.as_array());
            for f in functions.into_iter().flatten() {
                let symbol = f.get("symbol").and_then(|s| s.as_str()).unwrap_or("?");
                let status = f.get("status").and_then(|s| s.as_str()).unwrap_or("");
                let defects = f.get("defects").and_then(|d| d.as_array());
                for d in defects.into_iter().flatten() {
                    let name = d.get("defect").and_then(|x| x.as_str()).unwrap_or("");
                    let why = d.get("why").and_then(|x| x.as_str()).unwrap_or("");
                    let Some(defect) = Defect::from_name(name) else {
                        c.unknown.push(format!(
                            "{symbol}: discovery reports a defect this validator does not know ({name:?}): {why}"
                        ));
                        continue;
                    };
                    let evidence: Vec<String> = d
                        .get("evidence")
                        .and_then(|e| e.as_array())
                        .into_iter()
                        .flatten()
                        .map(|e| {
                            format!(
                                "+{:#x} `{}` {}",
                                e.get("offset").and_then(|o| o.as_u64()).unwrap_or(0),
                                e.get("insn").and_then(|o| o.as_str()).unwrap_or(""),
                                e.get("note").and_then(|o| o.as_str()).unwrap_or("")
                            )
                        })
                        .collect();
                    let mut message = format!("{symbol}: {why}");
                    if !evidence.is_empty() {
                        message.push_str(&format!(" (evidence: {})", evidence.join("; ")));
                    }
                    c.defects.push((
                        DefectReport {
                            symbol: symbol.to_owned(),
                            defect,
                            why: why.to_owned(),
                        },
                        message,
                    ));
                }
                if status == "unknown" {
                    let reason = f.get("reason").and_then(|r| r.as_str()).unwrap_or("");
                    c.unknown.push(format!(
                        "discovery could not classify {symbol} ({reason}): it ran with function-level probes only"
                    ));
                }
            }
        }
        if let Some(l) = h.extra.get("loss_accounting") {
            let counted = |k: &str| l.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            if !(counted("ring") && counted("kprobe_missed") && counted("skipped_runs")) {
                c.uncounted_losses = Some(
                    l.get("why_not")
                        .and_then(|w| w.as_str())
                        .unwrap_or("the recorder could not count every kind of loss")
                        .to_owned(),
                );
            }
        }
        if let Some(f) = h.extra.get("filter") {
            let mut parts = Vec::new();
            if let Some(pid) = f.get("pid").filter(|v| !v.is_null()) {
                parts.push(format!("--pid {pid}"));
            }
            if let Some(comm) = f.get("comm").and_then(|v| v.as_str()) {
                parts.push(format!("--comm {comm}"));
            }
            if !parts.is_empty() {
                c.filter = Some(parts.join(" "));
            }
        }
        c
    }
}

/// How long (log time) a finding that lost events could explain waits for a `lost` line. The
/// recorder counts losses every half second, so a loss's line can come after events that the
/// gap it left made look wrong; under a hypervisor the consumer can lag seconds more.
pub const LOSS_REPORT_LAG_NS: u64 = 5_000_000_000;

/// A finding held back until a `lost` line can explain it, or [`LOSS_REPORT_LAG_NS`] passes.
struct Deferred {
    v: Violation,
    slot: fn(&mut LostAllowance) -> &mut u64,
    n: u64,
    /// Log time after which it is reported.
    until: u64,
}

/// The incremental validator. Feed records in delivery order with [`Validator::push`];
/// reordering by timestamp happens inside.
pub struct Validator {
    opts: Options,
    cov: Coverage,
    /// Event kinds seen so far (for logs whose header lists no probes).
    seen: KindSet,
    buf: VecDeque<Ev>,
    /// Timestamp of the last replayed event, and the largest timestamp pushed.
    released_ts: Option<u64>,
    max_ts: Option<u64>,
    mm_ids: FastMap<Box<str>, u32>,
    mms: Vec<MmState>,
    /// Recently used mm ids (round-robin replacement); `u32::MAX` is an empty slot.
    recent_mms: [u32; 8],
    recent_next: usize,
    threads: FastMap<u32, Thread>,
    /// Loads of values not yet reached by the known increments, awaiting them.
    jumps: Vec<Jump>,
    /// Per probe, the sum of the counts of its `lost` lines (deltas).
    lost_lines: BTreeMap<String, u64>,
    /// What lost events can explain and nothing has used up yet. A `lost` line is written when
    /// the recorder notices the loss, which can be up to a ring buffer's worth of events before
    /// the gap itself is delivered, so the gap is not located.
    allow: LostAllowance,
    /// Findings that lost events could explain, waiting for a `lost` line (oldest first).
    deferred: VecDeque<Deferred>,
    /// Events the header contradicts, not yet handed over by [`Validator::take_contradictions`].
    contradicting: Vec<(u64, Kind)>,
    stats: Stats,
    events: u64,
    violations: Vec<Violation>,
    pending: Vec<Violation>,
    /// Protected overlaps, kept only for exporters that asked ([`Validator::keep_overlaps`]).
    overlaps: Option<Vec<Overlap>>,
}

impl Validator {
    pub fn new(header: &Header) -> Self {
        Self::with_options(header, Options::default())
    }

    pub fn with_options(header: &Header, mut opts: Options) -> Self {
        if opts.header_slack
            && let Some(s) = header.extra.get("clock_slack_ns").and_then(|v| v.as_u64())
        {
            opts.slack_ns = s;
        }
        let mut v = Validator {
            opts: Options {
                window: opts.window.max(1),
                ..opts
            },
            cov: Coverage::from_header(header),
            seen: KindSet::default(),
            buf: VecDeque::new(),
            released_ts: None,
            max_ts: None,
            mm_ids: FastMap::default(),
            mms: Vec::new(),
            recent_mms: [u32::MAX; 8],
            recent_next: 0,
            threads: FastMap::default(),
            jumps: Vec::new(),
            lost_lines: BTreeMap::new(),
            allow: LostAllowance::default(),
            deferred: VecDeque::new(),
            contradicting: Vec::new(),
            stats: Stats::default(),
            events: 0,
            violations: Vec::new(),
            pending: Vec::new(),
            overlaps: None,
        };
        // A defect proven in the kernel's code is a violation whatever the run shows.
        let defects: Vec<(Rule, String)> = v
            .cov
            .defects
            .iter()
            .map(|(d, m)| (Rule::Defect(d.defect), m.clone()))
            .collect();
        for (rule, message) in defects {
            v.record_violation(Violation {
                rule,
                line: 1,
                ts: 0,
                mm: String::new(),
                tid: 0,
                message,
                lines: vec![1],
            });
        }
        v
    }

    /// Feeds one record (delivery order; `line` is its 1-based line number) and returns the
    /// violations that became certain because of it. Because of reordering, an event is only
    /// judged once the window has moved past it; call [`Validator::flush`] when idle.
    pub fn push(&mut self, line: u64, rec: &Record) -> Vec<Violation> {
        match rec {
            Record::Event(e) => self.push_event(line, e),
            Record::Lost { probe, count } => self.lost(probe, *count),
            Record::Summary(s) => {
                self.stats.summary = true;
                self.flush_buffer();
                // Losses the summary counts beyond the `lost` lines explain like them.
                let extra: Vec<(String, u64)> = s
                    .lost
                    .iter()
                    .map(|(p, &n)| {
                        let lines = self.lost_lines.get(p).copied().unwrap_or(0);
                        (p.clone(), n.saturating_sub(lines))
                    })
                    .filter(|(_, n)| *n > 0)
                    .collect();
                for (p, n) in extra {
                    self.allow_for(&p, n);
                }
                self.expire_jumps(u64::MAX);
                self.release_deferred(u64::MAX);
                // `lost` lines are deltas and the summary holds totals of the same losses:
                // per probe, the larger of the two is what was lost.
                let mut total: u64 = 0;
                for (probe, &n) in &s.lost {
                    let lines = self.lost_lines.get(probe).copied().unwrap_or(0);
                    total = total.saturating_add(n.max(lines));
                }
                for (probe, &n) in &self.lost_lines {
                    if !s.lost.contains_key(probe) {
                        total = total.saturating_add(n);
                    }
                }
                self.stats.lost = total;
            }
            Record::Unknown(_) => self.stats.unknown_kinds += 1,
            // A header carries no event; the CLI rejects a second one as bad input.
            Record::Header(_) => {}
        }
        std::mem::take(&mut self.pending)
    }

    fn push_event(&mut self, line: u64, e: &Event) {
        self.push_parts(line, e.ts, e.tid, &e.mm, &e.body);
    }

    /// Both input paths (a parsed `Record`, the CLI's fast reader) end here.
    fn push_parts(&mut self, line: u64, ts: u64, tid: u32, mm: &str, body: &Body) {
        match *body {
            // A fork is replayed as two events: its first read (where its increments begin)
            // and its second.
            Body::Fork {
                ts_before,
                seq_before,
                seq_after,
                bracket,
                ..
            } => {
                let mm = self.intern(mm);
                self.seen.insert(Kind::Fork);
                let exact = bracket == Bracket::MmapLock;
                for (begin, t, v, t2, v2) in [
                    (true, ts_before, seq_before, ts, seq_after),
                    (false, ts, seq_after, ts_before, seq_before),
                ] {
                    self.push_ev(Ev {
                        ts: t,
                        line,
                        tid,
                        mm,
                        kind: Kind::Fork,
                        seq: v,
                        flag: begin,
                        must: exact,
                        seq2: v2,
                        ts2: t2,
                    });
                }
                // One event of the log, two replay steps.
                self.events -= 1;
                return;
            }
            // Likewise a pinning syscall: its load at entry is judged at its own time.
            Body::PinSyscall {
                ts_enter,
                seq_enter,
                seq_exit,
                ..
            } => {
                let mm = self.intern(mm);
                self.seen.insert(Kind::PinSyscall);
                for (enter, t, v, t2, v2) in [
                    (true, ts_enter, seq_enter, ts, seq_exit),
                    (false, ts, seq_exit, ts_enter, seq_enter),
                ] {
                    self.push_ev(Ev {
                        ts: t,
                        line,
                        tid,
                        mm,
                        kind: Kind::PinSyscall,
                        seq: v,
                        flag: enter,
                        must: false,
                        seq2: v2,
                        ts2: t2,
                    });
                }
                self.events -= 1;
                return;
            }
            _ => {}
        }
        let (flag, must) = match *body {
            Body::CopyEnter {
                func,
                cow,
                anon,
                vm_flags,
                ..
            } => (cow, must_write(func, cow, anon, vm_flags)),
            Body::GupEnter { pin, .. } => (pin, false),
            _ => (false, false),
        };
        let kind = body.kind();
        // An event of a kind whose probe the header does not list contradicts the header the
        // rules are chosen by: it is not judged, and the reader is told (`contradiction`).
        if self.cov.listed && !self.cov.probes.contains(&kind) {
            self.contradicting.push((line, kind));
            return;
        }
        let mm = self.intern(mm);
        self.seen.insert(kind);
        self.push_ev(Ev {
            ts,
            line,
            tid,
            mm,
            kind,
            seq: body.seq(),
            flag,
            must,
            seq2: None,
            ts2: 0,
        });
    }

    /// The fast path used by the CLI: no `Record` is built.
    pub(crate) fn push_fast(&mut self, line: u64, e: &crate::events::fast::FastEvent<'_>) {
        self.push_parts(line, e.ts, e.tid, e.mm, &e.body);
        self.pending.clear();
    }

    fn intern(&mut self, name: &str) -> u32 {
        // Events of a few busy mms interleave: a small most-recently-used cache avoids hashing.
        // Names of one log tend to share their length and prefix ("mm1", "mm2"), so the last
        // byte is compared first: most misses then cost no full comparison.
        let last = name.as_bytes().last();
        for &id in &self.recent_mms {
            if self.mms.get(id as usize).is_some_and(|m| {
                m.name.len() == name.len() && m.name.as_bytes().last() == last && &*m.name == name
            }) {
                return id;
            }
        }
        let id = match self.mm_ids.get(name) {
            Some(&id) => id,
            None => {
                // More than u32::MAX distinct mms cannot fit in memory anyway.
                let id = u32::try_from(self.mms.len()).unwrap_or(u32::MAX);
                self.mm_ids.insert(name.into(), id);
                self.mms.push(MmState::new(name));
                id
            }
        };
        let slot = self.recent_next % self.recent_mms.len();
        if let Some(r) = self.recent_mms.get_mut(slot) {
            *r = id;
        }
        self.recent_next = self.recent_next.wrapping_add(1);
        id
    }

    fn push_ev(&mut self, ev: Ev) {
        self.events += 1;
        if ev.kind.written_at_its_time() {
            let late = match self.max_ts {
                Some(m) if m > ev.ts => m - ev.ts,
                _ => {
                    self.max_ts = Some(ev.ts);
                    0
                }
            };
            let inv = self.stats.max_ts_inversion_ns.get_or_insert(0);
            *inv = (*inv).max(late);
        }
        if self.released_ts.is_some_and(|r| ev.ts < r) {
            self.stats.out_of_window += 1;
            return;
        }
        // Sorted insert by (ts, line); delivery is nearly sorted, so the position is almost
        // always at or near the back.
        match self.buf.back() {
            Some(b) if b.ts > ev.ts => {
                // Usually only a few places from the back: scan those, else binary search.
                let n = self.buf.len();
                let near =
                    (1..=n.min(16)).find(|&k| self.buf.get(n - k).is_some_and(|x| x.ts <= ev.ts));
                let pos = match near {
                    Some(k) => n - k + 1,
                    None => self.buf.partition_point(|x| x.ts <= ev.ts),
                };
                self.buf.insert(pos, ev);
            }
            _ => self.buf.push_back(ev),
        }
        while self.buf.len() > self.opts.window {
            if let Some(e) = self.buf.pop_front() {
                self.released_ts = Some(e.ts);
                self.replay(e);
            }
        }
    }

    /// Replays every buffered event now. Events older than the last one replayed that arrive
    /// later are counted as out of window.
    pub fn flush(&mut self) -> Vec<Violation> {
        self.flush_buffer();
        std::mem::take(&mut self.pending)
    }

    fn flush_buffer(&mut self) {
        while let Some(e) = self.buf.pop_front() {
            self.released_ts = Some(e.ts);
            self.replay(e);
        }
    }

    /// Events were dropped: replay what is buffered, then forget all protocol state so that
    /// the gap cannot be mistaken for a violation.
    fn lost(&mut self, probe: &str, count: u64) {
        self.flush_buffer();
        // A jump still waiting for its increments may be explained by the missing events.
        self.jumps.clear();
        self.allow_for(probe, count);
        let n = self.lost_lines.entry(probe.to_string()).or_insert(0);
        *n = n.saturating_add(count);
        self.stats.lost = self.lost_lines.values().sum();
        self.threads.clear();
        for m in &mut self.mms {
            m.reset();
        }
    }

    /// Adds what `count` lost events of `probe` can explain, and excuses the findings held
    /// back for them (a loss is often counted after the gap it left was replayed).
    fn allow_for(&mut self, probe: &str, count: u64) {
        let (cpr_windows, hugetlb_windows) =
            (!self.sited(CopyFn::Cpr), !self.sited(CopyFn::Hugetlb));
        let a = &mut self.allow;
        let add = |x: &mut u64, n: u64| *x = x.saturating_add(n);
        // The probe is named in the log; one typed look-up, then the vocabulary's variants.
        match Record::lost_probe(probe) {
            Some(Probe::WriteBegin) => {
                add(&mut a.incs, count);
                add(&mut a.write_begin, count);
            }
            Some(Probe::WriteEnd) => {
                add(&mut a.incs, count);
                add(&mut a.write_end, count);
            }
            // Without write sites in its function, a lost copy may have advanced seq by 2.
            Some(Probe::CprEnter | Probe::CprExit) if cpr_windows => {
                add(&mut a.incs, count.saturating_mul(2));
            }
            Some(Probe::HugetlbEnter | Probe::HugetlbExit) if hugetlb_windows => {
                add(&mut a.incs, count.saturating_mul(2));
            }
            Some(Probe::ReadBegin) => add(&mut a.read_begin, count),
            Some(Probe::Fork) => add(&mut a.forks, count),
            Some(Probe::RetryFail) => add(&mut a.retry_fail, count),
            _ => {}
        }
        let held = std::mem::take(&mut self.deferred);
        for d in held {
            if !self.excused(d.slot, d.n) {
                self.deferred.push_back(d);
            }
        }
    }

    /// Reports a finding that lost events could explain, unless they already do; else holds it
    /// for [`LOSS_REPORT_LAG_NS`] of log time, in case a `lost` line comes to explain it.
    fn violate_unless_lost(
        &mut self,
        slot: fn(&mut LostAllowance) -> &mut u64,
        n: u64,
        rule: Rule,
        e: &Ev,
        mut lines: Vec<u64>,
        message: String,
    ) {
        if self.excused(slot, n) {
            return;
        }
        lines.push(e.line);
        lines.sort_unstable();
        lines.dedup();
        let v = Violation {
            rule,
            line: e.line,
            ts: e.ts,
            mm: self.mm_name(e.mm),
            tid: e.tid,
            message,
            lines,
        };
        self.deferred.push_back(Deferred {
            v,
            slot,
            n,
            until: e.ts.saturating_add(LOSS_REPORT_LAG_NS),
        });
    }

    /// Reports the held findings no `lost` line came for in time (all of them with `now` =
    /// `u64::MAX`, at the end of the log).
    fn release_deferred(&mut self, now: u64) {
        while self
            .deferred
            .front()
            .is_some_and(|d| d.until < now || now == u64::MAX)
        {
            if let Some(d) = self.deferred.pop_front() {
                self.record_violation(d.v);
            }
        }
    }

    /// Uses up `n` of what lost events can explain, if there is that much left.
    fn excused(&mut self, slot: fn(&mut LostAllowance) -> &mut u64, n: u64) -> bool {
        let left = slot(&mut self.allow);
        if *left < n {
            return false;
        }
        *left -= n;
        self.stats.explained_by_loss += 1;
        true
    }

    /// Lines of events the header contradicts (a kind whose probe it does not list), taken
    /// once: the caller decides whether they are bad input or skipped lines.
    /// Whether [`Validator::take_contradictions`] has anything to hand over (checked per
    /// line, so that the common case moves no vector).
    pub fn has_contradictions(&self) -> bool {
        !self.contradicting.is_empty()
    }

    pub fn take_contradictions(&mut self) -> Vec<(u64, Kind)> {
        std::mem::take(&mut self.contradicting)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Events (known kinds) pushed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Violations found so far (at most [`MAX_STORED_VIOLATIONS`]).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Keeps every protected overlap from now on (at most [`MAX_STORED_OVERLAPS`]), for
    /// [`Validator::finish_with_overlaps`]: an exporter shows where the seqcount caught a race.
    /// Reading them changes nothing the rules decide.
    pub fn keep_overlaps(&mut self) {
        self.overlaps.get_or_insert_with(Vec::new);
    }

    /// Keeps one overlap when asked to; costs nothing otherwise (the validator's hot path).
    fn keep_overlap(
        &mut self,
        how: OverlapKind,
        line: u64,
        ts: u64,
        mm: u32,
        tid: u32,
        lines: [u64; 2],
    ) {
        if self
            .overlaps
            .as_ref()
            .is_none_or(|v| v.len() >= MAX_STORED_OVERLAPS)
        {
            return;
        }
        let mm = self.mm_name(mm);
        if let Some(v) = self.overlaps.as_mut() {
            v.push(Overlap {
                how,
                line,
                ts,
                mm,
                tid,
                lines: lines.to_vec(),
            });
        }
    }

    /// [`Validator::finish`], plus the protected overlaps kept since
    /// [`Validator::keep_overlaps`] (in the order they were settled).
    pub fn finish_with_overlaps(mut self) -> (Report, Vec<Overlap>) {
        // What `finish` does first (each step drains, so `finish` repeats them as no-ops),
        // so that the calls it settles still add their overlaps.
        self.flush_buffer();
        self.expire_jumps(u64::MAX);
        self.release_deferred(u64::MAX);
        self.settle_open_at_end();
        let overlaps = self.overlaps.take().unwrap_or_default();
        (self.finish(), overlaps)
    }

    pub fn finish(mut self) -> Report {
        self.flush_buffer();
        self.expire_jumps(u64::MAX);
        self.release_deferred(u64::MAX);
        self.settle_open_at_end();
        let rules = self.rule_reports();
        let function_level = [CopyFn::Cpr, CopyFn::Hugetlb]
            .into_iter()
            .filter(|&f| self.has(f.enter()) && !self.sited(f))
            .map(|f| match f {
                CopyFn::Cpr => "copy_page_range".to_owned(),
                CopyFn::Hugetlb => "copy_hugetlb_page_range".to_owned(),
            })
            .collect();
        let missing_evidence = self.missing_evidence(&rules);
        let verdict = if self.stats.violations > 0 {
            Verdict::Violations
        } else if !missing_evidence.is_empty() {
            Verdict::Inconclusive
        } else {
            Verdict::Clean
        };
        Report {
            verdict,
            events: self.events,
            stats: self.stats,
            violations: self.violations,
            rules,
            missing_evidence,
            function_level,
            defects: self.cov.defects.into_iter().map(|(d, _)| d).collect(),
        }
    }

    /// Calls and write sections the log ended inside: settled where their outcome is already
    /// decided, counted as unsettled where the missing rest could still break a rule.
    fn settle_open_at_end(&mut self) {
        let mut tids: Vec<u32> = self.threads.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            let Some(t) = self.threads.get_mut(&tid) else {
                continue;
            };
            if t.write.take().is_some() {
                self.stats.unsettled += 1;
            }
            let Some(c) = t.call.take() else { continue };
            let changed = matches!((c.begin, c.retry), (Some((s, ..)), Some((r, ..))) if s != r);
            let undecided = (c.odd && c.retry.is_none())
                || (changed && !c.odd && !c.retry_fail && self.retry_fail_applies());
            if c.unreadable || undecided {
                self.stats.unsettled += 1;
            } else if changed && !c.odd && c.retry_fail {
                self.stats.protected_overlaps += 1;
                if let (Some((_, bl, _)), Some((_, rl, rts))) = (c.begin, c.retry) {
                    self.keep_overlap(OverlapKind::BackedOut, rl, rts, c.mm, tid, [bl, rl]);
                }
            }
        }
    }

    /// Whether the log can carry events of this kind: the header lists its probe, or (a header
    /// without a probe list) such events were seen.
    fn has(&self, k: Kind) -> bool {
        if self.cov.listed {
            self.cov.probes.contains(&k)
        } else {
            self.seen.contains(&k)
        }
    }

    /// Whether the copy function's write sections are reported by write sites (else its copy
    /// windows stand for them).
    fn sited(&self, f: CopyFn) -> bool {
        if self.cov.listed {
            self.cov.write_sited.contains(&f)
        } else {
            self.seen.contains(&Kind::WriteBegin) || self.seen.contains(&Kind::WriteEnd)
        }
    }

    fn retry_fail_applies(&self) -> bool {
        self.has(Kind::RetryFail)
    }

    /// Every copy function's increments are on the timeline: by write sites or by windows (a
    /// `copy_page_range` window encloses the hugetlb copies it makes).
    fn writers_covered(&self) -> bool {
        let windows = self.has(Kind::CprEnter) && self.has(Kind::CprExit);
        // Every write section runs inside some fork's dup_mmap, which a fork bracket encloses.
        windows
            || self.has(Kind::Fork)
            || (self.sited(CopyFn::Cpr)
                && (self.sited(CopyFn::Hugetlb)
                    || (self.has(Kind::HugetlbEnter) && self.has(Kind::HugetlbExit))))
    }

    /// A tracepoint-mode log: forks and pinning syscalls, nothing inside the functions.
    fn tracepoint_only(&self) -> bool {
        self.has(Kind::Fork)
            && !(self.has(Kind::CprEnter)
                || self.has(Kind::WriteBegin)
                || self.has(Kind::GupEnter)
                || self.has(Kind::ReadBegin))
    }

    fn rule_reports(&self) -> Vec<RuleReport> {
        let s = &self.stats;
        let write_sites = self.has(Kind::WriteBegin) && self.has(Kind::WriteEnd);
        let windows = self.has(Kind::CprEnter) && self.has(Kind::CprExit);
        let forks = self.has(Kind::Fork);
        let reads = self.has(Kind::ReadBegin) && self.has(Kind::ReadRetry);
        let tp = self.tracepoint_only();
        let no_reads = if tp {
            "tracepoint mode: GUP-fast's loads are inside gup_fast_fallback, which no tracepoint sees (only the pinning syscalls around it)"
        } else {
            "the read_begin/read_retry sites were not attached"
        };
        let filtered = self.cov.filter.as_ref().map(|f| {
            format!(
                "events were filtered ({f}): other tasks sharing an mm may write its counter unseen"
            )
        });
        Rule::all()
            .map(|rule| {
                let (why_not, exercised): (Option<String>, u64) = match rule {
                    Rule::WriteParity => (
                        (!write_sites).then(|| {
                            if tp {
                                "tracepoint mode: write sections are inside copy_page_range, which no tracepoint sees (each fork's total is judged by fork_parity)".to_owned()
                            } else {
                                "no write_begin/write_end sites were attached: the copy functions ran with function-level probes only".to_owned()
                            }
                        }),
                        s.write_pairs,
                    ),
                    Rule::WriterOverlap => (
                        (!write_sites && !windows && !forks)
                            .then(|| "neither write sites nor copy windows nor fork brackets were attached".to_owned()),
                        s.write_sections,
                    ),
                    Rule::CopyDelta => (
                        (!windows).then(|| {
                            if tp {
                                "tracepoint mode: single VMA copies are not seen (a fork's total advance is, by fork_parity)".to_owned()
                            } else {
                                "the copy_page_range probes were not attached".to_owned()
                            }
                        }),
                        s.copies,
                    ),
                    Rule::OddNotBailed => ((!reads).then(|| no_reads.to_owned()), s.odd_loads),
                    Rule::UnprotectedOverlap => (
                        if !reads {
                            Some(no_reads.to_owned())
                        } else if !self.writers_covered() {
                            Some("some copy function has neither write sites nor copy windows".to_owned())
                        } else {
                            filtered.clone()
                        },
                        s.retries_checked,
                    ),
                    Rule::RetryIgnored => (
                        if !reads {
                            Some(no_reads.to_owned())
                        } else if !self.retry_fail_applies() {
                            Some("the retry_fail site (the back-out block) was not attached".to_owned())
                        } else {
                            None
                        },
                        s.failed_retries,
                    ),
                    Rule::SeqUnexplained => (
                        if !self.writers_covered() {
                            Some("some copy function has neither write sites nor copy windows".to_owned())
                        } else {
                            filtered.clone()
                        },
                        s.seq_checked,
                    ),
                    // Fork brackets judge it directly; with copy windows or write sites a fork
                    // is the sum of its copies, each judged finer by copy_delta/write_parity.
                    Rule::ForkParity => {
                        if forks {
                            (None, s.exact_forks)
                        } else if write_sites || windows {
                            (None, if write_sites { s.write_pairs } else { s.copies })
                        } else {
                            (
                                Some("neither fork brackets nor copy windows nor write sites were attached".to_owned()),
                                0,
                            )
                        }
                    }
                    Rule::Defect(_) => (
                        (!self.cov.discovery).then(|| {
                            "the log header carries no discovery: the kernel's code was not examined".to_owned()
                        }),
                        u64::from(self.cov.discovery),
                    ),
                };
                RuleReport {
                    rule,
                    checked: why_not.is_none(),
                    why_not,
                    exercised,
                    violations: s.violations_by_rule.get(&rule).copied().unwrap_or(0),
                }
            })
            .collect()
    }

    /// What a clean verdict needs that this log does not show.
    fn missing_evidence(&self, rules: &[RuleReport]) -> Vec<String> {
        let s = &self.stats;
        let mut out = Vec::new();
        if !s.summary {
            out.push("the log has no summary line: it was cut short".to_owned());
        }
        if s.lost > 0 {
            out.push(format!("{} events were lost", s.lost));
        }
        if s.out_of_window > 0 {
            out.push(format!(
                "{} events arrived beyond the reorder window and were not replayed",
                s.out_of_window
            ));
        }
        if s.unreadable_seq > 0 {
            out.push(format!(
                "{} events carry a seq the probe could not read",
                s.unreadable_seq
            ));
        }
        if s.unsettled > 0 {
            out.push(format!(
                "{} calls or write sections were still open when the log ended, with their outcome undecided",
                s.unsettled
            ));
        }
        if let Some(u) = &self.cov.uncounted_losses {
            out.push(format!("losses may have gone uncounted: {u}"));
        }
        out.extend(self.cov.unknown.iter().cloned());
        let mut seen_why = BTreeSet::new();
        for r in rules.iter().filter(|r| !r.checked) {
            if let Some(w) = &r.why_not
                && seen_why.insert(w.clone())
            {
                let names: Vec<&str> = rules
                    .iter()
                    .filter(|x| x.why_not.as_ref() == Some(w))
                    .map(|x| x.rule.as_str())
                    .collect();
                out.push(format!("not checked ({}): {w}", names.join(", ")));
            }
        }
        if s.write_sections == 0 {
            out.push(
                "no write section was seen: no fork copied a private mapping with pages".to_owned(),
            );
        }
        if self.has(Kind::ReadBegin) && s.read_begins == 0 {
            out.push("no PIN GUP-fast call reached the read sites".to_owned());
        }
        if self.has(Kind::PinSyscall) && s.pin_syscalls == 0 {
            out.push("no pinning syscall was seen".to_owned());
        }
        out
    }

    fn mm_name(&self, mm: u32) -> String {
        self.mms
            .get(mm as usize)
            .map(|m| m.name.to_string())
            .unwrap_or_default()
    }

    fn violate(&mut self, rule: Rule, e: &Ev, mut lines: Vec<u64>, message: String) {
        lines.push(e.line);
        lines.sort_unstable();
        lines.dedup();
        let v = Violation {
            rule,
            line: e.line,
            ts: e.ts,
            mm: self.mm_name(e.mm),
            tid: e.tid,
            message,
            lines,
        };
        self.record_violation(v);
    }

    fn record_violation(&mut self, v: Violation) {
        self.stats.violations += 1;
        *self.stats.violations_by_rule.entry(v.rule).or_insert(0) += 1;
        if self.violations.len() < MAX_STORED_VIOLATIONS {
            self.violations.push(v.clone());
        }
        self.pending.push(v);
    }

    /// The slack-widened interval `[a, b]` in which a function-level event's counter read
    /// happened: at its ts.
    fn at_ts(&self, e: &Ev) -> (Option<u64>, u64) {
        let s = self.opts.slack_ns;
        (Some(e.ts.saturating_sub(s)), e.ts.saturating_add(s))
    }

    /// `seq_unexplained` for a load of `e.seq` that happened in `[a, b]` (`a` is `None` when
    /// nothing bounds it from below). It is explained if the counter can have held that value
    /// at some instant of the interval, given the increments known on the mm. An unreadable
    /// value proves nothing.
    fn observe(&mut self, e: &Ev, what: &'static str, a: Option<u64>, b: u64) {
        let Some(x) = e.seq else { return };
        self.stats.seq_checked += 1;
        let Some(m) = self.mms.get_mut(e.mm as usize) else {
            return;
        };
        let Some(c) = m.cur else {
            // Only a load bounded from below establishes the value: an unbounded one may be
            // older than anything the log shows.
            if a.is_some() {
                m.cur = Some(x);
                m.floor_hi = b;
            }
            return;
        };
        let rel = x.wrapping_sub(c) as i32;
        if rel == 0 {
            return;
        }
        if rel > 0 {
            // Increments reaching x may still be replayed (their events can be stamped up to
            // the slack after this load's interval): decide when no later event can explain it.
            if !self.jumps.iter().any(|j| j.ev.mm == e.mm && j.x == x) {
                self.jumps.push(Jump {
                    ev: *e,
                    x,
                    b,
                    what,
                    from: c,
                });
            }
            return;
        }
        let a = a.unwrap_or(0);
        let below_known = m
            .hist
            .front()
            .is_none_or(|f| rel < f.v.wrapping_sub(c) as i32);
        let (hi, wline) = match m.find(x).and_then(|k| m.hist.get(k)) {
            Some(t) => (t.hi, Some(t.line)),
            None if below_known => (m.floor_hi, None),
            // Inside the known range with its increment missing: nothing to judge by.
            None => return,
        };
        if a <= hi {
            return;
        }
        let (lines, by) = match wline {
            Some(l) => (vec![l], format!("the increment from {x} (line {l})")),
            None => (vec![], format!("the last increment past {x}")),
        };
        self.violate(
            Rule::SeqUnexplained,
            e,
            lines,
            format!(
                "{what} at line {} loaded {x}, but seq had already reached {c}: {by} happened by {hi} ns, and this load no earlier than {a} ns",
                e.line
            ),
        );
    }

    /// Reports the jumps that no event still to be replayed (ts >= `now`) can explain.
    fn expire_jumps(&mut self, now: u64) {
        let slack = self.opts.slack_ns;
        if self.jumps.is_empty() {
            return;
        }
        let mut due = Vec::new();
        self.jumps.retain(|j| {
            let d = now == u64::MAX || now > j.b.saturating_add(slack);
            if d {
                due.push(*j);
            }
            !d
        });
        for j in due {
            let x = j.x;
            if let Some(m) = self.mms.get_mut(j.ev.mm as usize)
                && m.cur.is_some_and(|c| x.wrapping_sub(c) as i32 > 0)
            {
                // Resynchronize on the observed value so that one gap is reported once.
                m.cur = Some(x);
                m.hist.clear();
                m.floor_hi = j.b;
            }
            // Lost write events (or a lost fork) can have made these increments.
            if self.excused(|a| &mut a.forks, 1) {
                continue;
            }
            self.violate_unless_lost(
                |a| &mut a.incs,
                u64::from(x.wrapping_sub(j.from)),
                Rule::SeqUnexplained,
                &j.ev,
                vec![],
                format!(
                    "{} at line {} loaded {x}: seq jumped from {} to {x} (+{}) with no write section to explain it",
                    j.what,
                    j.ev.line,
                    j.from,
                    x.wrapping_sub(j.from)
                ),
            );
        }
    }

    /// A write event: its increment from `e.seq` happened at or after its ts and before the
    /// thread's next event (both widened by the slack). An unreadable value is an increment
    /// from an unknown value: the mm's timeline starts over.
    fn write_event(&mut self, e: &Ev, what: &'static str) {
        let slack = self.opts.slack_ns;
        let lo = e.ts.saturating_sub(slack);
        let b = e.ts.saturating_add(slack);
        let Some(m) = self.mms.get_mut(e.mm as usize) else {
            return;
        };
        let Some(v) = e.seq else {
            m.cur = None;
            m.hist.clear();
            m.open_hi.clear();
            self.jumps.retain(|j| j.ev.mm != e.mm);
            return;
        };
        self.stats.seq_checked += 1;
        let dup = m
            .find(v)
            .and_then(|k| m.hist.get(k))
            .map(|t| (t.line, t.tid));
        let mut jump = None;
        match m.cur {
            None => m.floor_hi = b,
            Some(c) if v.wrapping_sub(c) as i32 > 0 => jump = Some(c),
            Some(_) => {}
        }
        if dup.is_none() {
            m.insert(Trans {
                v,
                hi: u64::MAX,
                line: e.line,
                tid: e.tid,
            });
            m.open_hi.push((e.tid, v));
        }
        if let Some(from) = jump
            && !self.jumps.iter().any(|j| j.ev.mm == e.mm && j.x == v)
        {
            self.jumps.push(Jump {
                ev: *e,
                x: v,
                b,
                what,
                from,
            });
        }
        // Loads waiting for the increment to v + 1 are explained if it can have come in time.
        self.jumps
            .retain(|j| !(j.ev.mm == e.mm && j.x == v.wrapping_add(1) && lo <= j.b));
        if let Some((dl, dt)) = dup {
            self.violate(
                Rule::SeqUnexplained,
                e,
                vec![dl],
                format!(
                    "{what} at line {} increments seq from {v}, but tid {dt}'s write at line {dl} already did: the counter cannot pass {v} twice",
                    e.line
                ),
            );
        }
    }

    /// The thread's increments awaiting its next event on the mm get their upper bound.
    fn close_open_hi(&mut self, e: &Ev) {
        let slack = self.opts.slack_ns;
        let Some(m) = self.mms.get_mut(e.mm as usize) else {
            return;
        };
        let mut i = 0;
        while let Some(&(tid, v)) = m.open_hi.get(i) {
            if tid != e.tid {
                i += 1;
                continue;
            }
            m.open_hi.swap_remove(i);
            if let Some(t) = m.find(v).and_then(|k| m.hist.get_mut(k)) {
                t.hi = e.ts.saturating_add(slack);
            }
        }
    }

    fn replay(&mut self, e: Ev) {
        if !self.jumps.is_empty() {
            self.expire_jumps(e.ts);
        }
        if !self.deferred.is_empty() {
            self.release_deferred(e.ts);
        }
        if e.seq.is_none() {
            self.stats.unreadable_seq += 1;
        }
        self.close_open_hi(&e);
        match e.kind {
            Kind::CprEnter => self.copy_enter(&e, CopyFn::Cpr),
            Kind::HugetlbEnter => self.copy_enter(&e, CopyFn::Hugetlb),
            Kind::CprExit => self.copy_exit(&e, CopyFn::Cpr),
            Kind::HugetlbExit => self.copy_exit(&e, CopyFn::Hugetlb),
            Kind::WriteBegin => self.write_begin(&e),
            Kind::WriteEnd => self.write_end(&e),
            Kind::GupEnter => self.gup_enter(&e),
            Kind::GupExit => self.gup_exit(&e),
            Kind::ReadBegin => self.read_begin(&e),
            Kind::ReadRetry => self.read_retry(&e),
            Kind::RetryFail => self.retry_fail(&e),
            Kind::Fork if e.flag => self.fork_begin(&e),
            Kind::Fork => self.fork_end(&e),
            Kind::PinSyscall if e.flag => {
                let (a, b) = self.at_ts(&e);
                self.observe(&e, "pin_syscall entry", a, b);
            }
            Kind::PinSyscall => self.pin_syscall(&e),
        }
    }

    /// Takes a window's tentative increments off the mm's timeline (the copy did not make
    /// them, or another window stands for them).
    fn withdraw(&mut self, mm: u32, seq: u32) {
        if let Some(m) = self.mms.get_mut(mm as usize) {
            for v in [seq, seq.wrapping_add(1)] {
                if let Some(k) = m.find(v)
                    && m.hist.get(k).is_some_and(|t| t.hi == u64::MAX)
                {
                    m.hist.remove(k);
                }
            }
            if m.cur == Some(seq.wrapping_add(2)) {
                m.cur = Some(seq);
            }
        }
    }

    fn copy_enter(&mut self, e: &Ev, func: CopyFn) {
        let (a, b) = self.at_ts(e);
        self.observe(e, func.enter().as_str(), a, b);
        // A hugetlb copy runs inside copy_page_range's window of the same thread: that window
        // hands its increments over.
        if func == CopyFn::Hugetlb {
            let outer = self
                .threads
                .get_mut(&e.tid)
                .and_then(|t| t.cpr.last_mut())
                .filter(|w| w.func == CopyFn::Cpr && w.mm == e.mm && !w.delegated)
                .map(|w| {
                    w.delegated = true;
                    let was = (w.tentative, w.seq);
                    w.tentative = false;
                    was
                });
            if let Some((true, Some(seq))) = outer {
                self.withdraw(e.mm, seq);
            }
        }
        let windows = !self.sited(func);
        let mut tentative = false;
        if let Some(m) = self.mms.get_mut(e.mm as usize)
            && e.flag
        {
            m.cpr_open.push(e.tid);
            // Without write sites in this function, the copy's two increments (if it makes
            // them) happen inside its window: put them on the timeline until its exit says.
            if windows && e.seq.is_some() && m.cur == e.seq {
                tentative = true;
                if let Some(seq) = e.seq {
                    for v in [seq, seq.wrapping_add(1)] {
                        m.insert(Trans {
                            v,
                            hi: u64::MAX,
                            line: e.line,
                            tid: e.tid,
                        });
                    }
                }
            }
        }
        self.threads.entry(e.tid).or_default().cpr.push(CprOpen {
            func,
            mm: e.mm,
            seq: e.seq,
            cow: e.flag,
            must: e.must,
            line: e.line,
            tentative,
            delegated: false,
            overlapped_by: None,
        });
    }

    fn copy_exit(&mut self, e: &Ev, func: CopyFn) {
        let (a, b) = self.at_ts(e);
        self.observe(e, func.exit().as_str(), a, b);
        let Some(w) = self.threads.get_mut(&e.tid).and_then(|t| {
            // The innermost window of this function (a lost exit may leave one above it).
            let i = t.cpr.iter().rposition(|w| w.func == func)?;
            t.cpr.truncate(i + 1);
            t.cpr.pop()
        }) else {
            // The log began inside this copy: nothing to pair it with.
            return;
        };
        if let Some(m) = self.mms.get_mut(w.mm as usize)
            && w.cow
            && let Some(i) = m.cpr_open.iter().position(|&t| t == e.tid)
        {
            m.cpr_open.swap_remove(i);
        }
        if func == CopyFn::Cpr {
            self.stats.copies += 1;
            if w.cow {
                self.stats.cow_copies += 1;
            }
        }
        let (Some(s0), Some(s1)) = (w.seq, e.seq) else {
            // Either end unreadable: the window proves nothing, and its increments (if
            // tentative) stay unbounded.
            return;
        };
        let d = s1.wrapping_sub(s0);
        if w.tentative {
            if d == 0 {
                self.withdraw(w.mm, s0);
            } else if let Some(m) = self.mms.get_mut(w.mm as usize) {
                for v in [s0, s0.wrapping_add(1)] {
                    if let Some(t) = m.find(v).and_then(|k| m.hist.get_mut(k)) {
                        t.hi = b;
                    }
                }
            }
        }
        let what = func.enter().as_str();
        if !(d == 0 || (d == 2 && w.cow)) {
            let why = if d == 2 {
                "but the VMA is not COW, and only a COW copy takes the write section".to_string()
            } else {
                "a copy advances seq by exactly 0 or 2".to_string()
            };
            self.violate(
                Rule::CopyDelta,
                e,
                vec![w.line],
                format!(
                    "{what} at line {} saw {s0} (cow={}) and its exit at line {} saw {s1}: +{}, {why}",
                    w.line, w.cow, e.line, d as i32
                ),
            );
        } else if d == 0 && w.must && !w.delegated {
            self.violate(
                Rule::CopyDelta,
                e,
                vec![w.line],
                format!(
                    "{what} at line {} copied a private mapping with an anon_vma (seq {s0}), which must take the write section, yet its exit at line {} saw seq unchanged",
                    w.line, e.line
                ),
            );
        }
        if self.sited(func) || w.delegated || !w.cow || d == 0 {
            return;
        }
        // A COW window whose seq advanced is a write section in this log.
        self.stats.write_sections += 1;
        if let Some((oline, oexit, otid, olo, ohi)) = w.overlapped_by {
            // The values decide: two windows overlap only if the ranges of seq they spanned
            // share an increment; windows whose ranges follow each other are serialized, and
            // their timestamps merely disagree.
            let r = |v: u32| i64::from(v.wrapping_sub(s0) as i32);
            if r(olo).max(0) < r(ohi).min(i64::from(d as i32)) {
                self.violate(
                    Rule::WriterOverlap,
                    e,
                    vec![w.line, oline, oexit],
                    format!(
                        "copy window lines {}-{} (tid {}, seq {s0}..{s1}) overlaps tid {otid}'s copy window lines {oline}-{oexit} (seq {olo}..{ohi}) on the same mm; both advanced seq",
                        w.line, e.line, e.tid
                    ),
                );
            }
        }
        let others = match self.mms.get(w.mm as usize) {
            Some(m) => m.cpr_open.clone(),
            None => return,
        };
        for t in others.into_iter().filter(|&t| t != e.tid) {
            if let Some(o) = self.threads.get_mut(&t).and_then(|th| th.cpr.last_mut())
                && o.mm == w.mm
                && o.overlapped_by.is_none()
            {
                o.overlapped_by = Some((w.line, e.line, e.tid, s0, s1));
            }
        }
    }

    fn write_begin(&mut self, e: &Ev) {
        self.write_event(e, "write_begin");
        if let Some(v) = e.seq
            && v & 1 == 1
        {
            self.violate(
                Rule::WriteParity,
                e,
                vec![],
                format!(
                    "write_begin at line {} saw odd {v}: a write section began inside another",
                    e.line
                ),
            );
        }
        let prev_open = self.mms.get_mut(e.mm as usize).and_then(|m| match e.seq {
            Some(v) => m.open_write.replace((e.tid, e.line, v)),
            None => m.open_write.take(),
        });
        // Another thread's section still open by the timestamps is an overlap only if the
        // values agree: this increment read a value from before that section's end. A value
        // past its end means the sections followed each other and the clocks disagree.
        if let (Some((otid, oline, oseq)), Some(v)) = (prev_open, e.seq)
            && otid != e.tid
            && (v == oseq || v == oseq.wrapping_add(1))
        {
            self.violate(
                Rule::WriterOverlap,
                e,
                vec![oline],
                format!(
                    "write_begin at line {} (tid {}) saw {v} while tid {otid}'s write section from line {oline} (begun at {oseq}) was still open on the same mm",
                    e.line, e.tid
                ),
            );
        }
        let th = self.threads.entry(e.tid).or_default();
        let unclosed = th.write.replace(WriteOpen {
            mm: e.mm,
            seq: e.seq,
            line: e.line,
        });
        // Its write_end may be among the lost events.
        if let Some(w) = unclosed {
            self.violate_unless_lost(
                |a| &mut a.write_end,
                1,
                Rule::WriteParity,
                e,
                vec![w.line],
                format!("write_begin at line {} had no write_end before this thread's next write_begin at line {}", w.line, e.line),
            );
        }
    }

    fn write_end(&mut self, e: &Ev) {
        self.write_event(e, "write_end");
        if let Some(m) = self.mms.get_mut(e.mm as usize)
            && m.open_write.is_some_and(|(t, _, _)| t == e.tid)
        {
            m.open_write = None;
        }
        let known = self.threads.contains_key(&e.tid);
        let open = self.threads.get_mut(&e.tid).and_then(|t| t.write.take());
        match open {
            Some(w) if w.mm == e.mm => {
                self.stats.write_sections += 1;
                self.stats.write_pairs += 1;
                if let (Some(b), Some(v)) = (w.seq, e.seq)
                    && v != b.wrapping_add(1)
                {
                    self.violate(
                        Rule::WriteParity,
                        e,
                        vec![w.line],
                        format!(
                            "write_begin at line {} saw {b} but the matching write_end at line {} saw {v} (expected {})",
                            w.line,
                            e.line,
                            b.wrapping_add(1)
                        ),
                    );
                }
            }
            Some(w) => {
                let mm = self.mm_name(w.mm);
                self.violate(
                    Rule::WriteParity,
                    e,
                    vec![w.line],
                    format!("write_end at line {} closes the write section begun at line {} on another mm ({mm})", e.line, w.line),
                );
            }
            // A thread first seen here may have begun its section before the log did.
            None if !known => {}
            // Its write_begin may be among the lost events.
            None => self.violate_unless_lost(
                |a| &mut a.write_begin,
                1,
                Rule::WriteParity,
                e,
                vec![],
                format!(
                    "write_end at line {} (seq {}) has no write_begin before it",
                    e.line,
                    e.seq
                        .map_or_else(|| "unreadable".to_owned(), |v| v.to_string())
                ),
            ),
        }
    }

    fn gup_enter(&mut self, e: &Ev) {
        let (a, b) = self.at_ts(e);
        self.observe(e, "gup_enter", a, b);
        self.close_call(e);
        self.stats.gup_calls += 1;
        if e.flag {
            self.stats.pin_gup_fast += 1;
        }
        self.threads.entry(e.tid).or_default().call = Some(GupCall {
            mm: e.mm,
            line: e.line,
            enter_ts: Some(e.ts),
            begin: None,
            odd: false,
            retry: None,
            retry_fail: false,
            unreadable: false,
        });
    }

    fn gup_exit(&mut self, e: &Ev) {
        let (a, b) = self.at_ts(e);
        self.observe(e, "gup_exit", a, b);
        self.close_call(e);
    }

    /// Ends the thread's open GUP call (at `gup_exit`, or implicitly when the next one starts)
    /// and settles its counts and `retry_ignored`.
    fn close_call(&mut self, e: &Ev) {
        let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.take()) else {
            return;
        };
        if c.unreadable {
            return;
        }
        if c.odd && c.retry.is_none() {
            self.stats.odd_bails += 1;
            self.stats.protected_overlaps += 1;
            if let Some((_, bl, bts)) = c.begin {
                self.keep_overlap(OverlapKind::OddBail, bl, bts, c.mm, e.tid, [bl, e.line]);
            }
        }
        if let (Some((s, bl, _)), Some((r, rl, rts))) = (c.begin, c.retry)
            && s != r
            && !c.odd
        {
            if !c.retry_fail && self.retry_fail_applies() {
                self.violate_unless_lost(
                    |a| &mut a.retry_fail,
                    1,
                    Rule::RetryIgnored,
                    e,
                    vec![bl, rl, c.line],
                    format!(
                        "read_begin at line {bl} loaded {s} and read_retry at line {rl} loaded {r}, yet the call ended at line {} without retry_fail: the pins were kept",
                        e.line
                    ),
                );
            } else if c.retry_fail {
                // Only a back-out seen in the log is a protection shown: without the
                // retry_fail site (or with one lost) nothing says the kernel backed out.
                self.stats.protected_overlaps += 1;
                self.keep_overlap(OverlapKind::BackedOut, rl, rts, c.mm, e.tid, [bl, rl]);
            }
        }
    }

    fn read_begin(&mut self, e: &Ev) {
        let slack = self.opts.slack_ns;
        let call = self.threads.get(&e.tid).and_then(|t| t.call.as_ref());
        let needs_new = call.is_none_or(|c| c.begin.is_some() || c.unreadable || c.mm != e.mm);
        // The load happened after the call began (gup_enter) and at or before this probe.
        let a = if needs_new {
            None
        } else {
            call.and_then(|c| c.enter_ts)
                .map(|t| t.saturating_sub(slack))
        };
        self.observe(e, "read_begin", a, e.ts.saturating_add(slack));
        if needs_new {
            // No gup_enter probe, or its event was not seen: read_begin starts the call, and
            // only FOLL_PIN calls read the counter.
            self.close_call(e);
            self.stats.gup_calls += 1;
            self.stats.pin_gup_fast += 1;
            self.threads.entry(e.tid).or_default().call = Some(GupCall {
                mm: e.mm,
                line: e.line,
                enter_ts: None,
                begin: None,
                odd: false,
                retry: None,
                retry_fail: false,
                unreadable: false,
            });
        }
        self.stats.read_begins += 1;
        if e.seq.is_some_and(|v| v & 1 == 1) {
            self.stats.odd_loads += 1;
        }
        if let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) {
            match e.seq {
                Some(v) => {
                    c.begin = Some((v, e.line, e.ts));
                    c.odd = v & 1 == 1;
                }
                None => c.unreadable = true,
            }
        }
    }

    fn read_retry(&mut self, e: &Ev) {
        let slack = self.opts.slack_ns;
        let call = self
            .threads
            .get(&e.tid)
            .and_then(|t| t.call)
            .filter(|c| c.mm == e.mm);
        // The load happened after read_begin's probe and at or before this one.
        let a2 = call
            .and_then(|c| c.begin)
            .map(|(_, _, ts)| ts.saturating_sub(slack));
        self.observe(e, "read_retry", a2, e.ts.saturating_add(slack));
        let Some(c) = call else { return };
        let Some(x) = e.seq else {
            if let Some(cm) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) {
                cm.unreadable = true;
            }
            return;
        };
        let (Some((s, bl, _)), Some(a2)) = (c.begin, a2) else {
            return;
        };
        if let Some(cm) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) {
            cm.retry = Some((x, e.line, e.ts));
        }
        if c.odd {
            // The retry may belong to a later call whose read_begin was lost.
            self.violate_unless_lost(
                |a| &mut a.read_begin,
                1,
                Rule::OddNotBailed,
                e,
                vec![bl],
                format!(
                    "read_begin at line {bl} loaded odd {s} (a write section was open), yet the call went on to read_retry at line {} instead of returning 0",
                    e.line
                ),
            );
            return;
        }
        self.stats.retries_checked += 1;
        if x != s {
            self.stats.failed_retries += 1;
            return;
        }
        // Both loads read s. The increment from s is proven to fall between them only if it
        // happened before this load could have (its upper bound is below a2) while the first
        // load can still have preceded it.
        let a1 = c.enter_ts.map_or(0, |t| t.saturating_sub(slack));
        let inc = self
            .mms
            .get(e.mm as usize)
            .and_then(|m| m.find(s).and_then(|k| m.hist.get(k)))
            .copied();
        if let Some(t) = inc
            && t.hi < a2
            && a1 <= t.hi
        {
            self.violate(
                Rule::UnprotectedOverlap,
                e,
                vec![bl, t.line],
                format!(
                    "read_begin at line {bl} and read_retry at line {} both loaded {s}, but tid {}'s increment from {s} (line {}) happened between the two loads: the pins taken in between were kept",
                    e.line, t.tid, t.line
                ),
            );
        }
    }

    fn retry_fail(&mut self, e: &Ev) {
        let (a, b) = self.at_ts(e);
        self.observe(e, "retry_fail", a, b);
        if let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) {
            c.retry_fail = true;
        }
    }

    /// The first read of a fork's bracket (tracepoint mode). Both values are known here, so
    /// the fork's increments go on the mm's timeline at once, each known to have happened
    /// between the two reads.
    fn fork_begin(&mut self, e: &Ev) {
        let (a, b) = self.at_ts(e);
        self.observe(e, "fork", a, b);
        let slack = self.opts.slack_ns;
        let (Some(s0), Some(s1)) = (e.seq, e.seq2) else {
            // An end unknown: when the fork's increments happened is unknown, and the mm's
            // timeline starts over once the fork is over (see fork_end).
            return;
        };
        let d = s1.wrapping_sub(s0);
        if e.must {
            // Read holding the parent's mmap_lock for writing, which every write section
            // holds: no section can be open at either end, and nothing else writes between.
            let why = if s0 & 1 == 1 || s1 & 1 == 1 {
                Some("a write section was open while the fork held the mmap_lock for writing")
            } else if (d as i32) < 0 {
                Some("the counter went back")
            } else {
                None
            };
            if let Some(why) = why {
                self.violate(
                    Rule::ForkParity,
                    e,
                    vec![],
                    format!(
                        "fork at line {} read seq {s0} and {s1} holding the parent's mmap_lock: {why}",
                        e.line
                    ),
                );
                if (d as i32) < 0 {
                    // Reported once: the mm's history restarts at the fork's second value.
                    if let Some(m) = self.mms.get_mut(e.mm as usize) {
                        m.reset();
                    }
                    return;
                }
            }
        }
        if d as i32 <= 0 {
            return;
        }
        let hi = e.ts2.saturating_add(slack);
        let lo = e.ts.saturating_sub(slack);
        let Some(m) = self.mms.get_mut(e.mm as usize) else {
            return;
        };
        // A fork that copied more than a history's worth of VMAs: its early increments would
        // fall out at once; keep the bound they share.
        let mut dup = None;
        for k in 0..d {
            let v = s0.wrapping_add(k);
            if let Some(t) = m.find(v).and_then(|i| m.hist.get(i)) {
                dup.get_or_insert((v, t.line, t.tid));
                continue;
            }
            m.insert(Trans {
                v,
                hi,
                line: e.line,
                tid: e.tid,
            });
        }
        if m.cur.is_none_or(|c| s1.wrapping_sub(c) as i32 > 0) {
            m.cur = Some(s1);
        }
        // Loads waiting for these increments are explained if the fork can have made them in
        // time.
        let mm = e.mm;
        self.jumps.retain(|j| {
            !(j.ev.mm == mm
                && j.x.wrapping_sub(s0) as i32 > 0
                && s1.wrapping_sub(j.x) as i32 >= 0
                && lo <= j.b)
        });
        // Two exact brackets cannot share an increment: both held the lock that serializes
        // writers. Wider (syscall) brackets may overlap, and then share increments legally.
        if let Some((v, dl, dt)) = dup
            && e.must
            && dt != e.tid
        {
            self.violate(
                Rule::WriterOverlap,
                e,
                vec![dl],
                format!(
                    "fork at line {} (tid {}) advanced seq from {s0} to {s1}, but tid {dt}'s write at line {dl} already incremented it from {v}: two writers of one mm overlapped",
                    e.line, e.tid
                ),
            );
        }
    }

    /// The second read of a fork's bracket.
    fn fork_end(&mut self, e: &Ev) {
        let (a, b) = self.at_ts(e);
        self.stats.forks += 1;
        if e.must {
            self.stats.exact_forks += 1;
        }
        let (Some(s1), Some(s0)) = (e.seq, e.seq2) else {
            // The increments of this fork are unknown: start the mm's timeline over, as after
            // an unreadable write event.
            if let Some(m) = self.mms.get_mut(e.mm as usize) {
                m.cur = None;
                m.hist.clear();
                m.open_hi.clear();
            }
            let mm = e.mm;
            self.jumps.retain(|j| j.ev.mm != mm);
            self.observe(e, "fork", a, b);
            return;
        };
        self.observe(e, "fork", a, b);
        let d = s1.wrapping_sub(s0);
        if (d as i32) > 0 {
            // Each COW VMA copied with page tables is one write section (+2).
            self.stats.write_sections += u64::from(d / 2);
        }
    }

    /// A pinning syscall's exit (tracepoint mode); its entry was replayed at its own time.
    fn pin_syscall(&mut self, e: &Ev) {
        self.stats.pin_syscalls += 1;
        let (a, b) = self.at_ts(e);
        self.observe(e, "pin_syscall exit", a, b);
        if let (Some(x), Some(y)) = (e.seq2, e.seq)
            && x != y
        {
            self.stats.pin_syscalls_during_fork += 1;
        }
    }
}
