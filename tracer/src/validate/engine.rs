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
    /// Events lost: the sum of `lost` lines and of the summary's `lost` counts.
    pub lost: u64,
    /// Events that arrived older than an event already replayed (beyond the reorder window);
    /// they are not replayed.
    pub out_of_window: u64,
    /// The largest amount by which an event's ts was older than an event delivered before it.
    /// A single ring buffer delivers nearly in ts order; milliseconds here mean the CPUs'
    /// clocks disagree (seen under QEMU's TCG), and ts order is then not real order.
    pub max_ts_inversion_ns: u64,
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
    /// How long after a `write_begin`/`write_end` event its increment may still be invisible.
    /// Those probes fire on the increment instruction, before it executes, so for this long
    /// another CPU may still load the old value (or, at a `read_begin`, already the new one).
    pub slack_ns: u64,
}

/// Default [`Options::slack_ns`]. A 6.1 guest under QEMU's TCG showed 28 us between a
/// `read_begin` probe and the kernel's own load (a `write_end` landed in between); native
/// kprobes take about a microsecond.
pub const DEFAULT_SLACK_NS: u64 = 100_000;

impl Default for Options {
    fn default() -> Self {
        Options {
            window: DEFAULT_WINDOW,
            slack_ns: DEFAULT_SLACK_NS,
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
    ts: u64,
    /// Set when another thread's advancing copy window on the same mm closed while this one
    /// was open: (that window's cpr_enter line, its cpr_exit line, its tid).
    overlapped_by: Option<(u64, u64, u32)>,
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
    /// `read_begin`: (value loaded, line, ts).
    begin: Option<(u32, u64, u64)>,
    odd: bool,
    /// The odd value was read within the slack of a `write_end`: the kernel's own load may
    /// have seen the even value after it, so going on to `read_retry` is legal.
    odd_settled: bool,
    /// `read_retry`: (value loaded, line).
    retry: Option<(u32, u64)>,
    retry_fail: bool,
    /// First write event (line, tid) on this mm between `read_begin` and `read_retry`, its
    /// ts, and how many increments the write events in between account for.
    saw_write: Option<(u64, u32)>,
    first_write_ts: u64,
    writes_seen: u32,
}

#[derive(Default, Debug)]
struct Thread {
    /// Open copy windows, innermost last (hugetlb copies nest inside `copy_page_range`).
    cpr: Vec<CprOpen>,
    write: Option<WriteOpen>,
    call: Option<GupCall>,
}

#[derive(Debug)]
struct MmState {
    name: Box<str>,
    /// Last observed seq (the lower bound of the counter), and the line that showed it.
    lo: Option<(u32, u64)>,
    /// How far above `lo` an observation may be without a write event explaining it: +2 per
    /// open COW copy window in a log without `write_*` events.
    credit: u32,
    /// The open `write_begin` on this mm: (tid, line).
    open_write: Option<(u32, u64)>,
    /// Threads with an open COW copy window on this mm.
    cpr_open: Vec<u32>,
    /// Threads inside a PIN read window (after an even `read_begin`, before `read_retry`).
    readers: Vec<u32>,
    /// Threads whose `read_begin` loaded an odd value and that have not retried.
    odd_readers: Vec<u32>,
    /// The last write event: (is `write_end`, value before its increment, ts).
    last_write: Option<(bool, u32, u64)>,
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

    pub fn with_options(header: &Header, opts: Options) -> Self {
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
            Record::Lost { count, .. } => self.lost(*count),
            Record::Summary(s) => {
                self.stats.summary = true;
                self.stats.lost = self.stats.lost.saturating_add(s.lost.values().sum());
                self.flush_buffer();
            }
            Record::Unknown(_) => self.stats.unknown_kinds += 1,
            // A header carries no event; the CLI rejects a second one as bad input.
            Record::Header(_) => {}
        }
        std::mem::take(&mut self.pending)
    }

    fn push_event(&mut self, line: u64, e: &Event) {
        let flag = match e.body {
            Body::CprEnter { cow, .. } => cow,
            Body::GupEnter { pin, .. } => pin,
            _ => false,
        };
        let mm = self.intern(&e.mm);
        self.push_ev(Ev {
            ts: e.ts,
            line,
            tid: e.tid,
            mm,
            kind: e.body.kind(),
            seq: e.body.seq(),
            flag,
        });
    }

    /// The fast path used by the CLI: no `Record` is built.
    pub(crate) fn push_fast(&mut self, line: u64, e: &super::fast::FastEvent<'_>) {
        let flag = match e.body {
            Body::CprEnter { cow, .. } => cow,
            Body::GupEnter { pin, .. } => pin,
            _ => false,
        };
        let mm = self.intern(e.mm);
        self.push_ev(Ev {
            ts: e.ts,
            line,
            tid: e.tid,
            mm,
            kind: e.body.kind(),
            seq: e.body.seq(),
            flag,
        });
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
                self.mms.push(MmState {
                    name: name.into(),
                    lo: None,
                    credit: 0,
                    open_write: None,
                    cpr_open: Vec::new(),
                    readers: Vec::new(),
                    odd_readers: Vec::new(),
                    last_write: None,
                });
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
    fn lost(&mut self, count: u64) {
        self.flush_buffer();
        self.stats.lost = self.stats.lost.saturating_add(count);
        self.threads.clear();
        for m in &mut self.mms {
            m.lo = None;
            m.credit = 0;
            m.open_write = None;
            m.cpr_open.clear();
            m.readers.clear();
            m.odd_readers.clear();
            m.last_write = None;
        }
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

    /// `seq_unexplained`: an observed value must equal the last one, or exceed it by no more
    /// than the open copy windows allow.
    fn observe(&mut self, e: &Ev, what: &str) {
        let slack = self.opts.slack_ns;
        let Some(m) = self.mms.get_mut(e.mm as usize) else {
            return;
        };
        let is_write = matches!(e.kind, Kind::WriteBegin | Kind::WriteEnd);
        if !is_write
            && let Some((_, pre, wts)) = m.last_write
            && e.seq == pre
            && e.ts.saturating_sub(wts) <= slack
        {
            // The last write's increment may not have landed yet: the old value is explained.
            return;
        }
        let prev = m.lo;
        let credit = m.credit;
        m.lo = Some((e.seq, e.line));
        let Some((lo, lo_line)) = prev else { return };
        let d = e.seq.wrapping_sub(lo);
        if d <= credit {
            m.credit = credit - d;
            return;
        }
        m.credit = 0;
        let how = if (d as i32) < 0 {
            format!("went backwards from {lo} to {}", e.seq)
        } else {
            format!(
                "jumped from {lo} to {} (+{d}) with no write section to explain it",
                e.seq
            )
        };
        self.violate(
            Rule::SeqUnexplained,
            e,
            vec![lo_line],
            format!(
                "{what} at line {} loaded {}: seq {how} (last value seen at line {lo_line})",
                e.line, e.seq
            ),
        );
    }

    /// A write event changed the counter by +1 (the value it reports is before the increment).
    /// Write events account for every change exactly, so no copy-window credit remains.
    fn advance(&mut self, e: &Ev) {
        if let Some(m) = self.mms.get_mut(e.mm as usize) {
            m.lo = Some((e.seq.wrapping_add(1), e.line));
            m.credit = 0;
            m.last_write = Some((e.kind == Kind::WriteEnd, e.seq, e.ts));
        }
    }

    fn replay(&mut self, e: Ev) {
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
        self.observe(e, "cpr_enter");
        let cpr_mode = !self.write_mode();
        if let Some(m) = self.mms.get_mut(e.mm as usize)
            && e.flag
        {
            m.cpr_open.push(e.tid);
            if cpr_mode {
                m.credit = m.credit.saturating_add(2);
            }
        }
        self.threads.entry(e.tid).or_default().cpr.push(CprOpen {
            mm: e.mm,
            seq: e.seq,
            cow: e.flag,
            line: e.line,
            ts: e.ts,
            overlapped_by: None,
        });
    }

    fn cpr_exit(&mut self, e: &Ev) {
        self.observe(e, "cpr_exit");
        let Some(w) = self.threads.get_mut(&e.tid).and_then(|t| t.cpr.pop()) else {
            // The log began inside this copy: nothing to pair it with.
            return;
        };
        let cpr_mode = !self.write_mode();
        if let Some(m) = self.mms.get_mut(w.mm as usize) {
            if w.cow
                && let Some(i) = m.cpr_open.iter().position(|&t| t == e.tid)
            {
                m.cpr_open.swap_remove(i);
            }
            let remaining_cow = u32::try_from(m.cpr_open.len()).unwrap_or(u32::MAX);
            if cpr_mode {
                m.credit = m.credit.min(remaining_cow.saturating_mul(2));
            }
        }
        self.stats.copies += 1;
        if w.cow {
            self.stats.cow_copies += 1;
        }
        let d = e.seq.wrapping_sub(w.seq);
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
        if let Some((oline, oexit, otid)) = w.overlapped_by {
            self.violate(
                Rule::WriterOverlap,
                e,
                vec![w.line, oline, oexit],
                format!(
                    "copy window lines {}-{} (tid {}) overlaps tid {otid}'s copy window lines {oline}-{oexit} on the same mm; both advanced seq",
                    w.line, e.line, e.tid
                ),
            );
        }
        let (others, readers) = match self.mms.get(w.mm as usize) {
            Some(m) => (m.cpr_open.clone(), m.readers.clone()),
            None => return,
        };
        for t in others.into_iter().filter(|&t| t != e.tid) {
            if let Some(o) = self.threads.get_mut(&t).and_then(|th| th.cpr.last_mut())
                && o.mm == w.mm
                && o.overlapped_by.is_none()
            {
                o.overlapped_by = Some((w.line, e.line, e.tid));
            }
        }
        // A whole write section fell inside the read windows that began before it.
        for t in readers {
            if let Some(c) = self.threads.get_mut(&t).and_then(|th| th.call.as_mut())
                && c.begin.is_some_and(|(_, _, ts)| ts <= w.ts)
            {
                // Both increments of the section, whatever the timing of their probes.
                c.writes_seen = c.writes_seen.saturating_add(2);
                if c.saw_write.is_none() {
                    c.saw_write = Some((w.line, e.tid));
                    c.first_write_ts = w.ts;
                }
            }
        }
    }

    /// Marks every open read window on the mm: a write section began or ended inside it.
    fn mark_readers(&mut self, e: &Ev) {
        let Some(m) = self.mms.get(e.mm as usize) else {
            return;
        };
        for &t in &m.readers {
            if let Some(c) = self.threads.get_mut(&t).and_then(|th| th.call.as_mut()) {
                c.writes_seen = c.writes_seen.saturating_add(1);
                if c.saw_write.is_none() {
                    c.saw_write = Some((e.line, e.tid));
                    c.first_write_ts = e.ts;
                }
            }
        }
    }

    fn write_begin(&mut self, e: &Ev) {
        self.seen_write_event = true;
        self.observe(e, "write_begin");
        self.advance(e);
        self.mark_readers(e);
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
            .and_then(|m| m.open_write.replace((e.tid, e.line)));
        if let Some((otid, oline)) = prev_open
            && otid != e.tid
        {
            self.violate(
                Rule::WriterOverlap,
                e,
                vec![oline],
                format!(
                    "write_begin at line {} (tid {}) while tid {otid}'s write section from line {oline} is still open on the same mm",
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
        if let Some(w) = unclosed {
            self.violate(
                Rule::WriteParity,
                e,
                vec![w.line],
                format!("write_begin at line {} had no write_end before this thread's next write_begin at line {}", w.line, e.line),
            );
        }
    }

    fn write_end(&mut self, e: &Ev) {
        self.seen_write_event = true;
        self.observe(e, "write_end");
        self.advance(e);
        self.mark_readers(e);
        self.settle_odd_readers(e);
        if let Some(m) = self.mms.get_mut(e.mm as usize)
            && m.open_write.is_some_and(|(t, _)| t == e.tid)
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

    /// A `read_begin` probe reads the counter just before the kernel's own load: if this
    /// `write_end` fired shortly after it, on the odd value the probe saw, the kernel may have
    /// loaded the even value after the increment and rightly gone on to `read_retry`.
    fn settle_odd_readers(&mut self, e: &Ev) {
        let slack = self.opts.slack_ns;
        let Some(m) = self.mms.get_mut(e.mm as usize) else {
            return;
        };
        let mut moved = Vec::new();
        m.odd_readers.retain(|&t| {
            let settle = self
                .threads
                .get(&t)
                .and_then(|th| th.call.as_ref())
                .and_then(|c| c.begin)
                .is_some_and(|(s, _, ts)| s == e.seq && e.ts.saturating_sub(ts) <= slack);
            if settle {
                moved.push(t);
            }
            !settle
        });
        m.readers.extend(moved.iter().copied());
        for t in moved {
            if let Some(c) = self.threads.get_mut(&t).and_then(|th| th.call.as_mut()) {
                c.odd_settled = true;
            }
        }
    }

    fn gup_enter(&mut self, e: &Ev) {
        self.observe(e, "gup_enter");
        self.close_call(e);
        self.stats.gup_calls += 1;
        if e.flag {
            self.stats.pin_gup_fast += 1;
        }
        self.threads.entry(e.tid).or_default().call = Some(GupCall {
            mm: e.mm,
            line: e.line,
            begin: None,
            odd: false,
            retry: None,
            odd_settled: false,
            retry_fail: false,
            saw_write: None,
            first_write_ts: 0,
            writes_seen: 0,
        });
    }

    fn gup_exit(&mut self, e: &Ev) {
        self.observe(e, "gup_exit");
        self.close_call(e);
    }

    /// Ends the thread's open GUP call (at `gup_exit`, or implicitly when the next one starts)
    /// and settles its counts and `retry_ignored`.
    fn close_call(&mut self, e: &Ev) {
        let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.take()) else {
            return;
        };
        self.leave_read_window(c.mm, e.tid);
        if c.odd && c.retry.is_none() {
            self.stats.odd_bails += 1;
            self.stats.protected_overlaps += 1;
        }
        if let (Some((s, bl, _)), Some((r, rl))) = (c.begin, c.retry)
            && s != r
            && !c.odd
        {
            if !c.retry_fail && self.retry_fail_applies() {
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

    fn leave_read_window(&mut self, mm: u32, tid: u32) {
        if let Some(m) = self.mms.get_mut(mm as usize)
            && let Some(i) = m.readers.iter().position(|&t| t == tid)
        {
            m.readers.swap_remove(i);
        }
        if let Some(m) = self.mms.get_mut(mm as usize)
            && let Some(i) = m.odd_readers.iter().position(|&t| t == tid)
        {
            m.odd_readers.swap_remove(i);
        }
    }

    fn read_begin(&mut self, e: &Ev) {
        self.observe(e, "read_begin");
        let needs_new = self
            .threads
            .get(&e.tid)
            .and_then(|t| t.call.as_ref())
            .is_none_or(|c| c.begin.is_some() || c.mm != e.mm);
        if needs_new {
            // No gup_enter probe, or its event was not seen: read_begin starts the call, and
            // only FOLL_PIN calls read the counter.
            self.close_call(e);
            self.stats.gup_calls += 1;
            self.stats.pin_gup_fast += 1;
            self.threads.entry(e.tid).or_default().call = Some(GupCall {
                mm: e.mm,
                line: e.line,
                begin: None,
                odd: false,
                retry: None,
                odd_settled: false,
                retry_fail: false,
                saw_write: None,
                first_write_ts: 0,
                writes_seen: 0,
            });
        }
        let odd = e.seq & 1 == 1;
        // The write_end just before may not have landed when the probe read the odd value;
        // the kernel's own load, an instant later, may have seen the even one.
        let settled = odd
            && self.mms.get(e.mm as usize).is_some_and(|m| {
                m.last_write.is_some_and(|(end, pre, wts)| {
                    end && pre == e.seq && e.ts.saturating_sub(wts) <= self.opts.slack_ns
                })
            });
        if let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) {
            c.begin = Some((e.seq, e.line, e.ts));
            c.odd = odd;
            c.odd_settled = settled;
        }
        if let Some(m) = self.mms.get_mut(e.mm as usize) {
            if odd && !settled {
                m.odd_readers.push(e.tid);
            } else {
                m.readers.push(e.tid);
            }
        }
    }

    fn read_retry(&mut self, e: &Ev) {
        self.observe(e, "read_retry");
        let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) else {
            return;
        };
        let Some((mut s, bl, bts)) = c.begin else {
            return;
        };
        if c.odd && c.odd_settled {
            // It went on, so the kernel's load saw the value after the write_end.
            s = s.wrapping_add(1);
            c.begin = Some((s, bl, bts));
            c.odd = false;
        }
        c.retry = Some((e.seq, e.line));
        let (odd, saw, mm) = (c.odd, c.saw_write, c.mm);
        // One write event within the slack before the retry may not have landed yet.
        let certain =
            c.writes_seen >= 2 || e.ts.saturating_sub(c.first_write_ts) > self.opts.slack_ns;
        self.leave_read_window(mm, e.tid);
        if odd {
            self.violate(
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
        if e.seq != s {
            self.stats.failed_retries += 1;
            return;
        }
        if let Some((wl, wtid)) = saw
            && certain
        {
            self.violate(
                Rule::UnprotectedOverlap,
                e,
                vec![bl, wl],
                format!(
                    "read_begin at line {bl} and read_retry at line {} both loaded {s}, but tid {wtid}'s write section changed between them (line {wl}): the pins taken in between were kept",
                    e.line
                ),
            );
        }
    }

    fn retry_fail(&mut self, e: &Ev) {
        self.seen_retry_fail = true;
        self.observe(e, "retry_fail");
        if let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut()) {
            c.retry_fail = true;
        }
    }
}
