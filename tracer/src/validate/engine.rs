//! The streaming validator: reorders events by timestamp within a bounded window, replays them
//! through per-mm and per-thread protocol state, and applies the rules of `docs/validate.md`.
//!
//! Memory is proportional to the reorder window plus the live mms and threads, never to the
//! length of the log: every per-call or per-section record is dropped when its closing event
//! arrives, and at most [`MAX_STORED_VIOLATIONS`] violations are kept (all are counted).
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
};

use serde::Serialize;

use crate::events::{Body, Event, Header, Kind, Record};

/// Default reorder window, in events. Ring-buffer delivery is nearly in timestamp order; this is
/// generous and costs about 40 bytes per slot.
pub const DEFAULT_WINDOW: usize = 65_536;

/// Violations kept in the report; further ones are only counted.
pub const MAX_STORED_VIOLATIONS: usize = 1_000;

/// The rules of `docs/validate.md`; `as_str` is the name used in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    WriteParity,
    WriterOverlap,
    CopyDelta,
    OddNotBailed,
    UnprotectedOverlap,
    RetryIgnored,
    SeqUnexplained,
}

impl Rule {
    pub const ALL: [Rule; 7] = [
        Rule::WriteParity,
        Rule::WriterOverlap,
        Rule::CopyDelta,
        Rule::OddNotBailed,
        Rule::UnprotectedOverlap,
        Rule::RetryIgnored,
        Rule::SeqUnexplained,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::WriteParity => "write_parity",
            Rule::WriterOverlap => "writer_overlap",
            Rule::CopyDelta => "copy_delta",
            Rule::OddNotBailed => "odd_not_bailed",
            Rule::UnprotectedOverlap => "unprotected_overlap",
            Rule::RetryIgnored => "retry_ignored",
            Rule::SeqUnexplained => "seq_unexplained",
        }
    }
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
    /// plus failed retries that backed out (followed by `retry_fail` when that probe exists).
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
    /// The largest amount by which an event's ts was older than an event delivered before it.
    /// A single ring buffer delivers nearly in ts order; milliseconds here mean the CPUs'
    /// clocks disagree (seen under QEMU's TCG), and ts order is then not real order.
    pub max_ts_inversion_ns: u64,
    /// Findings not reported as violations because events lost (`lost` lines) can explain
    /// them: a seq jump within the lost write events' increments, a write section or PIN call
    /// missing an event of a kind that was lost.
    pub explained_by_loss: u64,
    /// Every violation found (the report keeps only the first [`MAX_STORED_VIOLATIONS`]).
    pub violations: u64,
    pub violations_by_rule: BTreeMap<Rule, u64>,
    /// Whether a `summary` line was seen.
    pub summary: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    /// Events (known kinds) read.
    pub events: u64,
    pub stats: Stats,
    pub violations: Vec<Violation>,
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
    pub seq: u32,
    /// `cow` for `cpr_enter`, `pin` for `gup_enter`, false otherwise.
    pub flag: bool,
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

#[derive(Clone, Copy, Debug)]
struct CprOpen {
    mm: u32,
    seq: u32,
    cow: bool,
    line: u64,
    /// In a log without `write_*` events: this window put its two possible increments on the
    /// mm's timeline (see [`MmState::hist`]).
    tentative: bool,
    /// Set when another thread's advancing copy window on the same mm closed while this one
    /// was open: that window's cpr_enter line, cpr_exit line, tid, and seq at enter and exit.
    overlapped_by: Option<(u64, u64, u32, u32, u32)>,
}

#[derive(Clone, Copy, Debug)]
struct WriteOpen {
    mm: u32,
    seq: u32,
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
    /// `read_retry`: (value loaded, line).
    retry: Option<(u32, u64)>,
    retry_fail: bool,
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
}

/// The incremental validator. Feed records in delivery order with [`Validator::push`];
/// reordering by timestamp happens inside.
pub struct Validator {
    opts: Options,
    /// `Some(true)` when the header's probe list names `write_begin`/`write_end`,
    /// `Some(false)` when it lists probes but not those, `None` when it lists none (then the
    /// presence of `write_*` events so far decides).
    write_probed: Option<bool>,
    retry_fail_probed: bool,
    seen_write_event: bool,
    seen_retry_fail: bool,
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
    stats: Stats,
    events: u64,
    violations: Vec<Violation>,
    pending: Vec<Violation>,
}

fn names_probe(h: &Header, names: &[&str]) -> bool {
    h.probes.iter().any(|p| names.contains(&p.name.as_str()))
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
        let write_probed = if header.probes.is_empty() {
            None
        } else {
            Some(names_probe(header, &["write_begin", "write_end"]))
        };
        Validator {
            opts: Options {
                window: opts.window.max(1),
                ..opts
            },
            write_probed,
            retry_fail_probed: names_probe(header, &["retry_fail"]),
            seen_write_event: false,
            seen_retry_fail: false,
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
            stats: Stats::default(),
            events: 0,
            violations: Vec::new(),
            pending: Vec::new(),
        }
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
                self.expire_jumps(u64::MAX);
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
        let flag = match *body {
            Body::CprEnter { cow, .. } => cow,
            Body::GupEnter { pin, .. } => pin,
            _ => false,
        };
        let mm = self.intern(mm);
        self.push_ev(Ev {
            ts,
            line,
            tid,
            mm,
            kind: body.kind(),
            seq: body.seq(),
            flag,
        });
    }

    /// The fast path used by the CLI: no `Record` is built.
    pub(crate) fn push_fast(&mut self, line: u64, e: &super::fast::FastEvent<'_>) {
        self.push_parts(line, e.ts, e.tid, e.mm, &e.body);
        self.pending.clear();
    }

    fn intern(&mut self, name: &str) -> u32 {
        // Events of a few busy mms interleave: a small most-recently-used cache avoids hashing.
        for &id in &self.recent_mms {
            if self.mms.get(id as usize).is_some_and(|m| &*m.name == name) {
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
        match self.max_ts {
            Some(m) if m > ev.ts => {
                self.stats.max_ts_inversion_ns = self.stats.max_ts_inversion_ns.max(m - ev.ts);
            }
            _ => self.max_ts = Some(ev.ts),
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
        let cpr_mode = !self.write_mode();
        let a = &mut self.allow;
        let add = |x: &mut u64, n: u64| *x = x.saturating_add(n);
        match probe {
            "write_begin" => {
                add(&mut a.incs, count);
                add(&mut a.write_begin, count);
            }
            "write_end" => {
                add(&mut a.incs, count);
                add(&mut a.write_end, count);
            }
            // Without write_* events a lost copy may have advanced seq by 2.
            "cpr_enter" | "cpr_exit" if cpr_mode => {
                add(&mut a.incs, count.saturating_mul(2));
            }
            "read_begin" => add(&mut a.read_begin, count),
            "retry_fail" => add(&mut a.retry_fail, count),
            _ => {}
        }
        let n = self.lost_lines.entry(probe.to_string()).or_insert(0);
        *n = n.saturating_add(count);
        self.stats.lost = self.lost_lines.values().sum();
        self.threads.clear();
        for m in &mut self.mms {
            m.reset();
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

    pub fn finish(mut self) -> Report {
        self.flush_buffer();
        self.expire_jumps(u64::MAX);
        let s = &self.stats;
        let verdict = if s.violations > 0 {
            Verdict::Violations
        } else if s.lost > 0 || !s.summary || s.out_of_window > 0 {
            Verdict::Inconclusive
        } else {
            Verdict::Clean
        };
        Report {
            verdict,
            events: self.events,
            stats: self.stats,
            violations: self.violations,
        }
    }

    fn write_mode(&self) -> bool {
        self.write_probed.unwrap_or(self.seen_write_event)
    }

    fn retry_fail_applies(&self) -> bool {
        self.retry_fail_probed || self.seen_retry_fail
    }

    fn mm_name(&self, mm: u32) -> String {
        self.mms
            .get(mm as usize)
            .map(|m| m.name.to_string())
            .unwrap_or_default()
    }

    fn violate(&mut self, rule: Rule, e: &Ev, mut lines: Vec<u64>, message: String) {
        self.stats.violations += 1;
        *self.stats.violations_by_rule.entry(rule).or_insert(0) += 1;
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
    /// at some instant of the interval, given the increments known on the mm.
    fn observe(&mut self, e: &Ev, what: &'static str, a: Option<u64>, b: u64) {
        let Some(m) = self.mms.get_mut(e.mm as usize) else {
            return;
        };
        let x = e.seq;
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
            if !self.jumps.iter().any(|j| j.ev.mm == e.mm && j.ev.seq == x) {
                self.jumps.push(Jump {
                    ev: *e,
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
            let x = j.ev.seq;
            if let Some(m) = self.mms.get_mut(j.ev.mm as usize)
                && m.cur.is_some_and(|c| x.wrapping_sub(c) as i32 > 0)
            {
                // Resynchronize on the observed value so that one gap is reported once.
                m.cur = Some(x);
                m.hist.clear();
                m.floor_hi = j.b;
            }
            // Lost write events can have made these increments.
            if self.excused(|a| &mut a.incs, u64::from(x.wrapping_sub(j.from))) {
                continue;
            }
            self.violate(
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
    /// thread's next event (both widened by the slack).
    fn write_event(&mut self, e: &Ev, what: &'static str) {
        self.seen_write_event = true;
        let slack = self.opts.slack_ns;
        let lo = e.ts.saturating_sub(slack);
        let b = e.ts.saturating_add(slack);
        let Some(m) = self.mms.get_mut(e.mm as usize) else {
            return;
        };
        let v = e.seq;
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
            && !self.jumps.iter().any(|j| j.ev.mm == e.mm && j.ev.seq == v)
        {
            self.jumps.push(Jump {
                ev: *e,
                b,
                what,
                from,
            });
        }
        // Loads waiting for the increment to v + 1 are explained if it can have come in time.
        self.jumps
            .retain(|j| !(j.ev.mm == e.mm && j.ev.seq == v.wrapping_add(1) && lo <= j.b));
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
        self.close_open_hi(&e);
        match e.kind {
            Kind::CprEnter => self.cpr_enter(&e),
            Kind::CprExit => self.cpr_exit(&e),
            Kind::WriteBegin => self.write_begin(&e),
            Kind::WriteEnd => self.write_end(&e),
            Kind::GupEnter => self.gup_enter(&e),
            Kind::GupExit => self.gup_exit(&e),
            Kind::ReadBegin => self.read_begin(&e),
            Kind::ReadRetry => self.read_retry(&e),
            Kind::RetryFail => self.retry_fail(&e),
        }
    }

    fn cpr_enter(&mut self, e: &Ev) {
        let (a, b) = self.at_ts(e);
        self.observe(e, "cpr_enter", a, b);
        let cpr_mode = !self.write_mode();
        let mut tentative = false;
        if let Some(m) = self.mms.get_mut(e.mm as usize)
            && e.flag
        {
            m.cpr_open.push(e.tid);
            // Without write_* events the copy's two increments (if it makes them) happen
            // inside its window: put them on the timeline until cpr_exit says.
            if cpr_mode && m.cur == Some(e.seq) {
                tentative = true;
                for v in [e.seq, e.seq.wrapping_add(1)] {
                    m.insert(Trans {
                        v,
                        hi: u64::MAX,
                        line: e.line,
                        tid: e.tid,
                    });
                }
            }
        }
        self.threads.entry(e.tid).or_default().cpr.push(CprOpen {
            mm: e.mm,
            seq: e.seq,
            cow: e.flag,
            line: e.line,
            tentative,
            overlapped_by: None,
        });
    }

    fn cpr_exit(&mut self, e: &Ev) {
        let (a, b) = self.at_ts(e);
        self.observe(e, "cpr_exit", a, b);
        let Some(w) = self.threads.get_mut(&e.tid).and_then(|t| t.cpr.pop()) else {
            // The log began inside this copy: nothing to pair it with.
            return;
        };
        let cpr_mode = !self.write_mode();
        let d = e.seq.wrapping_sub(w.seq);
        if let Some(m) = self.mms.get_mut(w.mm as usize) {
            if w.cow
                && let Some(i) = m.cpr_open.iter().position(|&t| t == e.tid)
            {
                m.cpr_open.swap_remove(i);
            }
            if w.tentative {
                for v in [w.seq, w.seq.wrapping_add(1)] {
                    if let Some(k) = m.find(v) {
                        if d == 0 {
                            m.hist.remove(k);
                        } else if let Some(t) = m.hist.get_mut(k) {
                            t.hi = b;
                        }
                    }
                }
                if d == 0 && m.cur == Some(w.seq.wrapping_add(2)) {
                    m.cur = Some(w.seq);
                }
            }
        }
        self.stats.copies += 1;
        if w.cow {
            self.stats.cow_copies += 1;
        }
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
                    "cpr_enter at line {} saw {} (cow={}) and cpr_exit at line {} saw {}: +{}, {why}",
                    w.line,
                    w.seq,
                    w.cow,
                    e.line,
                    e.seq,
                    d as i32
                ),
            );
        }
        if !cpr_mode || !w.cow || d == 0 {
            return;
        }
        // A COW window whose seq advanced is a write section in this log.
        self.stats.write_sections += 1;
        if let Some((oline, oexit, otid, olo, ohi)) = w.overlapped_by {
            // The values decide: two windows overlap only if the ranges of seq they spanned
            // share an increment; windows whose ranges follow each other are serialized, and
            // their timestamps merely disagree.
            let r = |v: u32| i64::from(v.wrapping_sub(w.seq) as i32);
            if r(olo).max(0) < r(ohi).min(i64::from(d as i32)) {
                self.violate(
                    Rule::WriterOverlap,
                    e,
                    vec![w.line, oline, oexit],
                    format!(
                        "copy window lines {}-{} (tid {}, seq {}..{}) overlaps tid {otid}'s copy window lines {oline}-{oexit} (seq {olo}..{ohi}) on the same mm; both advanced seq",
                        w.line, e.line, e.tid, w.seq, e.seq
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
                o.overlapped_by = Some((w.line, e.line, e.tid, w.seq, e.seq));
            }
        }
    }

    fn write_begin(&mut self, e: &Ev) {
        self.write_event(e, "write_begin");
        if e.seq & 1 == 1 {
            self.violate(
                Rule::WriteParity,
                e,
                vec![],
                format!(
                    "write_begin at line {} saw odd {}: a write section began inside another",
                    e.line, e.seq
                ),
            );
        }
        let prev_open = self
            .mms
            .get_mut(e.mm as usize)
            .and_then(|m| m.open_write.replace((e.tid, e.line, e.seq)));
        // Another thread's section still open by the timestamps is an overlap only if the
        // values agree: this increment read a value from before that section's end. A value
        // past its end means the sections followed each other and the clocks disagree.
        if let Some((otid, oline, oseq)) = prev_open
            && otid != e.tid
            && (e.seq == oseq || e.seq == oseq.wrapping_add(1))
        {
            self.violate(
                Rule::WriterOverlap,
                e,
                vec![oline],
                format!(
                    "write_begin at line {} (tid {}) saw {} while tid {otid}'s write section from line {oline} (begun at {oseq}) was still open on the same mm",
                    e.line, e.tid, e.seq
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
        if let Some(w) = unclosed
            && !self.excused(|a| &mut a.write_end, 1)
        {
            self.violate(
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
            Some(w) if w.mm == e.mm && e.seq == w.seq.wrapping_add(1) => {
                self.stats.write_sections += 1;
            }
            Some(w) if w.mm == e.mm => {
                self.stats.write_sections += 1;
                self.violate(
                    Rule::WriteParity,
                    e,
                    vec![w.line],
                    format!(
                        "write_begin at line {} saw {} but the matching write_end at line {} saw {} (expected {})",
                        w.line,
                        w.seq,
                        e.line,
                        e.seq,
                        w.seq.wrapping_add(1)
                    ),
                );
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
            None if self.excused(|a| &mut a.write_begin, 1) => {}
            None => self.violate(
                Rule::WriteParity,
                e,
                vec![],
                format!(
                    "write_end at line {} (seq {}) has no write_begin before it",
                    e.line, e.seq
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
        if c.odd && c.retry.is_none() {
            self.stats.odd_bails += 1;
            self.stats.protected_overlaps += 1;
        }
        if let (Some((s, bl, _)), Some((r, rl))) = (c.begin, c.retry)
            && s != r
            && !c.odd
        {
            if !c.retry_fail && self.retry_fail_applies() && !self.excused(|a| &mut a.retry_fail, 1)
            {
                self.violate(
                    Rule::RetryIgnored,
                    e,
                    vec![bl, rl, c.line],
                    format!(
                        "read_begin at line {bl} loaded {s} and read_retry at line {rl} loaded {r}, yet the call ended at line {} without retry_fail: the pins were kept",
                        e.line
                    ),
                );
            } else {
                self.stats.protected_overlaps += 1;
            }
        }
    }

    fn read_begin(&mut self, e: &Ev) {
        let slack = self.opts.slack_ns;
        let call = self.threads.get(&e.tid).and_then(|t| t.call.as_ref());
        let needs_new = call.is_none_or(|c| c.begin.is_some() || c.mm != e.mm);
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
            });
        }
        if let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) {
            c.begin = Some((e.seq, e.line, e.ts));
            c.odd = e.seq & 1 == 1;
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
        let (Some((s, bl, _)), Some(a2)) = (c.begin, a2) else {
            return;
        };
        if let Some(cm) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) {
            cm.retry = Some((e.seq, e.line));
        }
        if c.odd {
            // The retry may belong to a later call whose read_begin was lost.
            if !self.excused(|a| &mut a.read_begin, 1) {
                self.violate(
                    Rule::OddNotBailed,
                    e,
                    vec![bl],
                    format!(
                        "read_begin at line {bl} loaded odd {s} (a write section was open), yet the call went on to read_retry at line {} instead of returning 0",
                        e.line
                    ),
                );
            }
            return;
        }
        if e.seq != s {
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
        self.seen_retry_fail = true;
        let (a, b) = self.at_ts(e);
        self.observe(e, "retry_fail", a, b);
        if let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) {
            c.retry_fail = true;
        }
    }
}
