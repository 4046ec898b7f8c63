//! What the screens show, computed from the record stream: per-mm counters, duration
//! histograms, the event rate, the event tail and the violations.
//!
//! Pure and clock-free: the caller says what "now" is (in the log's `ts` clock), so the same
//! records always give the same screen (the snapshot tests rely on it).
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::events::{Body, CopyFn, Event, Header, Kind, Record, Summary};

/// Events kept for the tail; older ones scroll away.
pub const TAIL_CAP: usize = 2000;
/// Violations kept for the pane (the count keeps going).
pub const VIOLATION_CAP: usize = 5000;
/// Messages (errors, captured stderr/log lines) kept.
pub const MESSAGE_CAP: usize = 500;
/// Seconds of events/s history.
pub const RATE_SECONDS: usize = 600;
/// Histogram buckets: bucket `i` holds durations in [2^(i+HIST_SHIFT), 2^(i+HIST_SHIFT+1)) ns;
/// the first and last buckets also take everything below and above.
pub const HIST_BUCKETS: usize = 14;
pub const HIST_SHIFT: u32 = 8;

const NS_PER_SEC: u64 = 1_000_000_000;

/// One violation as the pane lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The rule's short name, as `tracer validate` prints it.
    pub rule: String,
    /// Log line numbers (1-based, header = line 1) that show the violation.
    pub lines: Vec<u64>,
    pub message: String,
    /// The mm it concerns, when known.
    pub mm: Option<String>,
}

/// Counters for one mm (one `mm` name of the log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MmStats {
    pub mm: String,
    pub comm: String,
    pub pid: u32,
    pub events: u64,
    /// Last `seq` seen in an event of this mm.
    pub seq: u32,
    /// COW copies (`cpr_enter` with cow=true) entered and not yet exited: the write-protect
    /// window is open even when only function-level probes see it.
    pub open_copies: u32,
    pub forks: u64,
    pub cow_copied: u64,
    pub pin_calls: u64,
    pub bails: u64,
    pub retry_fails: u64,
    pub slow_path: u64,
    pub violations: u64,
    /// Order of first appearance, the default sort.
    pub first_line: u64,
}

impl MmStats {
    /// Odd: a fork's write-protect window is open right now (odd seq seen last, or a COW copy
    /// entered and not yet exited).
    pub fn is_odd(&self) -> bool {
        self.seq & 1 == 1 || self.open_copies > 0
    }
}

/// Which of the screen's figures the log's attach mode can see at all: the others are greyed
/// out rather than shown as zeros that look like measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visibility {
    /// GUP-fast calls (`gup_enter`): pins and bails on an odd value at entry.
    pub gup_calls: bool,
    /// Their returns: calls that fell back to the slow path.
    pub gup_exits: bool,
    /// The seqcount loads inside GUP-fast (bails, retries).
    pub read_sites: bool,
    /// GUP-fast's back-out block.
    pub retry_fail: bool,
    /// Tracepoint mode's pinning syscalls (shown in place of GUP-fast calls).
    pub pin_syscalls: bool,
}

impl Visibility {
    pub const ALL: Visibility = Visibility {
        gup_calls: true,
        gup_exits: true,
        read_sites: true,
        retry_fail: true,
        pin_syscalls: false,
    };

    /// Inside GUP-fast at all (calls or loads).
    pub fn gup(&self) -> bool {
        self.gup_calls || self.read_sites
    }
}

/// Log2 histogram of durations in ns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hist {
    pub buckets: [u64; HIST_BUCKETS],
    pub count: u64,
    pub max: u64,
    pub sum: u64,
}

impl Hist {
    pub fn add(&mut self, ns: u64) {
        let log = 63 - ns.max(1).leading_zeros();
        let i = (log.saturating_sub(HIST_SHIFT) as usize).min(HIST_BUCKETS - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max = self.max.max(ns);
        self.sum = self.sum.saturating_add(ns);
    }

    /// Upper bound (ns) of the bucket holding the p-th percentile (0 < p <= 100).
    pub fn percentile_upper(&self, p: u64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let want = (self.count * p).div_ceil(100).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(1u64 << (i as u32 + HIST_SHIFT + 1));
            }
        }
        Some(self.max)
    }
}

/// A call in flight on one thread.
#[derive(Clone, Debug)]
struct PendingCpr {
    mm: String,
    ts: u64,
    seq: Option<u32>,
    cow: bool,
}

#[derive(Clone, Debug)]
struct PendingGup {
    mm: String,
    ts: u64,
    pin: bool,
    nr_pages: u64,
    bailed: bool,
}

/// Where a thread's last copy_page_range call was, to tell one fork (VMAs copied in address
/// order, nothing else in between) from the next.
#[derive(Clone, Debug)]
struct LastCpr {
    mm: String,
    vma_start: u64,
    ts: u64,
}

/// Copies of one fork follow each other closely; a longer pause means a new fork.
const FORK_GAP_NS: u64 = 10_000_000;

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub header: Option<Header>,
    pub summary: Option<Summary>,
    /// Records consumed (header and summary included): the last line number.
    pub lines: u64,
    pub events: u64,
    /// Lost events per probe: `lost` records added up, or the summary's figure if larger.
    pub lost: BTreeMap<String, u64>,
    pub unknown: u64,
    /// Malformed lines a lenient read skipped (each also listed in the messages).
    pub skipped: u64,
    pub first_ts: Option<u64>,
    pub last_ts: u64,
    mms: HashMap<String, MmStats>,
    pending_cpr: HashMap<u32, PendingCpr>,
    pending_gup: HashMap<u32, PendingGup>,
    pending_write: HashMap<u32, u64>,
    pending_read: HashMap<u32, u64>,
    last_cpr: HashMap<u32, LastCpr>,
    /// copy_page_range calls that copied a COW VMA (function-level view of the write section).
    pub cow_calls: Hist,
    /// write_begin → write_end (instruction-level write sections).
    pub write_sections: Hist,
    /// PIN gup_enter → gup_exit (function-level view of the GUP-fast window).
    pub pin_calls: Hist,
    /// read_begin → read_retry (instruction-level GUP-fast windows).
    pub read_windows: Hist,
    /// Tracepoint mode: forks that advanced seq, from the bracket's first read to its second.
    pub fork_brackets: Hist,
    /// Tracepoint mode: pinning syscalls, entry to exit.
    pub pin_syscalls: Hist,
    /// Events per second of trace time: (second since first_ts, count), oldest first.
    rate: VecDeque<(u64, u64)>,
    pub tail: VecDeque<(u64, Event)>,
    pub findings: VecDeque<Finding>,
    pub violations: u64,
    pub messages: VecDeque<String>,
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    pub fn total_lost(&self) -> u64 {
        self.lost.values().sum()
    }

    /// What discovery said of the kernel's code, per side (`write`, `read`): "intact", a
    /// defect's name, or "unknown". `None` when the header carries no discovery.
    pub fn code_sides(&self) -> Option<(String, String)> {
        let sides = self.header.as_ref()?.extra.get("discovery")?.get("sides")?;
        let side = |k: &str| {
            sides
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_owned()
        };
        Some((side("write"), side("read")))
    }

    /// Attach mode from the header: the `mode` (or `attach_mode`) field the recorder writes.
    pub fn attach_mode(&self) -> String {
        let Some(h) = &self.header else {
            return "unknown".into();
        };
        ["mode", "attach_mode", "attach"]
            .iter()
            .find_map(|k| h.extra.get(*k).and_then(|v| v.as_str()))
            .map(str::to_owned)
            .unwrap_or_else(|| {
                // Without a mode field, instruction-level probes show up by name (the site
                // events) or as nonzero offsets.
                let site = |n: &str| Kind::from_name(n).and_then(Kind::site).is_some();
                if h.probes.iter().any(|p| p.offset != 0 || site(&p.name)) {
                    "instruction".into()
                } else {
                    "function".into()
                }
            })
    }

    /// How the probes were attached (`kprobe`, `fentry`, `tracepoint`), when the header says.
    pub fn attach(&self) -> Option<String> {
        self.header
            .as_ref()?
            .extra
            .get("attach")?
            .as_str()
            .map(str::to_owned)
    }

    /// What the log's probes can show. A header that lists no probes (a hand-made log) is
    /// taken to show everything.
    pub fn visibility(&self) -> Visibility {
        let Some(h) = self.header.as_ref().filter(|h| !h.probes.is_empty()) else {
            return Visibility::ALL;
        };
        let has = |k: Kind| h.probes.iter().any(|p| p.name == k.as_str());
        Visibility {
            gup_calls: has(Kind::GupEnter),
            gup_exits: has(Kind::GupExit),
            read_sites: has(Kind::ReadBegin),
            retry_fail: has(Kind::RetryFail),
            pin_syscalls: has(Kind::PinSyscall),
        }
    }

    pub fn message(&mut self, m: impl Into<String>) {
        if self.messages.len() == MESSAGE_CAP {
            self.messages.pop_front();
        }
        self.messages.push_back(m.into());
    }

    pub fn mm(&self, name: &str) -> Option<&MmStats> {
        self.mms.get(name)
    }

    pub fn mms(&self) -> impl Iterator<Item = &MmStats> {
        self.mms.values()
    }

    /// Takes one record; `line` is its line number in the log (header = 1).
    pub fn apply(&mut self, line: u64, rec: &Record) {
        self.lines = self.lines.max(line);
        match rec {
            Record::Header(h) => self.header = Some(h.clone()),
            Record::Event(e) => self.event(line, e),
            Record::Lost { probe, count } => {
                *self.lost.entry(probe.clone()).or_default() += count;
            }
            Record::Summary(s) => {
                for (p, n) in &s.lost {
                    let v = self.lost.entry(p.clone()).or_default();
                    *v = (*v).max(*n);
                }
                self.summary = Some(s.clone());
            }
            Record::Unknown(_) => self.unknown += 1,
        }
    }

    /// Records the validator's findings for the record at `line`.
    pub fn add_findings(&mut self, line: u64, rec: &Record, found: Vec<Finding>) {
        for mut f in found {
            if f.mm.is_none()
                && let Record::Event(e) = rec
            {
                f.mm = Some(e.mm.clone());
            }
            if f.lines.is_empty() {
                f.lines.push(line);
            }
            if let Some(mm) = f.mm.as_ref().and_then(|m| self.mms.get_mut(m)) {
                mm.violations += 1;
            }
            self.violations += 1;
            if self.findings.len() == VIOLATION_CAP {
                self.findings.pop_front();
            }
            self.findings.push_back(f);
        }
    }

    fn event(&mut self, line: u64, e: &Event) {
        self.events += 1;
        self.first_ts.get_or_insert(e.ts);
        self.last_ts = self.last_ts.max(e.ts);
        self.count_rate(e.ts);
        if self.tail.len() == TAIL_CAP {
            self.tail.pop_front();
        }
        self.tail.push_back((line, e.clone()));

        let st = self.mms.entry(e.mm.clone()).or_insert_with(|| MmStats {
            mm: e.mm.clone(),
            first_line: line,
            ..MmStats::default()
        });
        // Threads may have their own comm; the process's is the thread-group leader's.
        if e.pid == e.tid || st.comm.is_empty() {
            st.comm.clone_from(&e.comm);
        }
        st.pid = e.pid;
        st.events += 1;
        // Write events report the value before their increment; an unreadable value leaves
        // the last known one.
        if let Some(v) = e.body.seq() {
            st.seq = match e.body.kind() {
                Kind::WriteBegin | Kind::WriteEnd => v.wrapping_add(1),
                _ => v,
            };
        }

        // Write sites and hugetlb copies fire inside copy_page_range, so they do not end a
        // fork's run of copies.
        if !matches!(
            e.body.kind(),
            Kind::CprEnter
                | Kind::CprExit
                | Kind::HugetlbEnter
                | Kind::HugetlbExit
                | Kind::WriteBegin
                | Kind::WriteEnd
        ) {
            self.last_cpr.remove(&e.tid);
        }
        match &e.body {
            // A hugetlb copy runs inside its copy_page_range window, which accounts for it.
            Body::CopyEnter {
                func: CopyFn::Hugetlb,
                ..
            }
            | Body::CopyExit {
                func: CopyFn::Hugetlb,
                ..
            } => {}
            Body::CopyEnter {
                vma_start,
                cow,
                seq,
                ..
            } => {
                let same_fork = self.last_cpr.get(&e.tid).is_some_and(|l| {
                    l.mm == e.mm
                        && *vma_start > l.vma_start
                        && e.ts.saturating_sub(l.ts) < FORK_GAP_NS
                });
                if !same_fork {
                    st.forks += 1;
                }
                self.last_cpr.insert(
                    e.tid,
                    LastCpr {
                        mm: e.mm.clone(),
                        vma_start: *vma_start,
                        ts: e.ts,
                    },
                );
                if *cow {
                    st.open_copies += 1;
                }
                let old = self.pending_cpr.insert(
                    e.tid,
                    PendingCpr {
                        mm: e.mm.clone(),
                        ts: e.ts,
                        seq: *seq,
                        cow: *cow,
                    },
                );
                // An enter without its exit (lost event): do not leave the window open forever.
                if let Some(old) = old
                    && old.cow
                    && let Some(o) = self.mms.get_mut(&old.mm)
                {
                    o.open_copies = o.open_copies.saturating_sub(1);
                }
            }
            Body::CopyExit { seq, .. } => {
                if let Some(l) = self.last_cpr.get_mut(&e.tid) {
                    l.ts = e.ts;
                }
                if let Some(p) = self.pending_cpr.remove(&e.tid)
                    && p.cow
                {
                    let advanced =
                        matches!((p.seq, seq), (Some(a), Some(b)) if *b == a.wrapping_add(2));
                    if let Some(o) = self.mms.get_mut(&p.mm) {
                        o.open_copies = o.open_copies.saturating_sub(1);
                        if advanced {
                            o.cow_copied += 1;
                        }
                    }
                    if advanced {
                        self.cow_calls.add(e.ts.saturating_sub(p.ts));
                    }
                }
            }
            Body::GupEnter {
                pin, nr_pages, seq, ..
            } => {
                let bailed = *pin && seq.is_some_and(|v| v & 1 == 1);
                if *pin {
                    st.pin_calls += 1;
                }
                if bailed {
                    st.bails += 1;
                }
                self.pending_gup.insert(
                    e.tid,
                    PendingGup {
                        mm: e.mm.clone(),
                        ts: e.ts,
                        pin: *pin,
                        nr_pages: *nr_pages,
                        bailed,
                    },
                );
            }
            Body::GupExit { ret, .. } => {
                if let Some(p) = self.pending_gup.remove(&e.tid)
                    && p.pin
                {
                    if *ret < i64::try_from(p.nr_pages).unwrap_or(i64::MAX)
                        && let Some(o) = self.mms.get_mut(&p.mm)
                    {
                        o.slow_path += 1;
                    }
                    self.pin_calls.add(e.ts.saturating_sub(p.ts));
                }
            }
            Body::Site { kind, seq } => match kind {
                Kind::WriteBegin => {
                    self.pending_write.insert(e.tid, e.ts);
                }
                Kind::WriteEnd => {
                    if let Some(t) = self.pending_write.remove(&e.tid) {
                        self.write_sections.add(e.ts.saturating_sub(t));
                    }
                }
                Kind::ReadBegin => {
                    if seq.is_some_and(|v| v & 1 == 1) {
                        // A GUP-fast call already counted as bailing (its gup_enter saw the odd
                        // seq) is one bail, not two.
                        match self.pending_gup.get_mut(&e.tid) {
                            Some(p) if p.bailed => {}
                            Some(p) => {
                                p.bailed = true;
                                st.bails += 1;
                            }
                            None => st.bails += 1,
                        }
                    } else {
                        self.pending_read.insert(e.tid, e.ts);
                    }
                }
                Kind::ReadRetry => {
                    if let Some(t) = self.pending_read.remove(&e.tid) {
                        self.read_windows.add(e.ts.saturating_sub(t));
                    }
                }
                Kind::RetryFail => {
                    self.pending_read.remove(&e.tid);
                    st.retry_fails += 1;
                }
                _ => {}
            },
            Body::Fork {
                ts_before,
                seq_before,
                seq_after,
                ..
            } => {
                st.forks += 1;
                if let (Some(a), Some(b)) = (seq_before, seq_after) {
                    let d = b.wrapping_sub(*a);
                    if (d as i32) > 0 {
                        // One write section (+2) per COW VMA copied.
                        st.cow_copied += u64::from(d / 2);
                        self.fork_brackets.add(e.ts.saturating_sub(*ts_before));
                    }
                }
            }
            Body::PinSyscall { ts_enter, .. } => {
                st.pin_calls += 1;
                self.pin_syscalls.add(e.ts.saturating_sub(*ts_enter));
            }
        }
    }

    fn count_rate(&mut self, ts: u64) {
        let Some(first) = self.first_ts else { return };
        let sec = ts.saturating_sub(first) / NS_PER_SEC;
        match self.rate.iter_mut().rev().find(|(s, _)| *s == sec) {
            Some((_, n)) => *n += 1,
            None => {
                // Events arrive nearly in ts order; a late one from an older second that has
                // scrolled out is dropped from the rate only.
                let pos = self
                    .rate
                    .iter()
                    .position(|(s, _)| *s > sec)
                    .unwrap_or(self.rate.len());
                self.rate.insert(pos, (sec, 1));
                while self.rate.len() > RATE_SECONDS {
                    self.rate.pop_front();
                }
            }
        }
    }

    /// Seconds of trace time since the first event, at `now_ns`.
    pub fn elapsed_ns(&self, now_ns: u64) -> u64 {
        self.first_ts.map_or(0, |f| now_ns.saturating_sub(f))
    }

    /// Events per second for the `n` whole seconds up to `now_ns`, oldest first.
    pub fn rate_history(&self, now_ns: u64, n: usize) -> Vec<u64> {
        let Some(first) = self.first_ts else {
            return vec![0; n];
        };
        let now_sec = now_ns.saturating_sub(first) / NS_PER_SEC;
        (0..n as u64)
            .rev()
            .map(|back| {
                now_sec
                    .checked_sub(back)
                    .and_then(|s| self.rate.iter().find(|(x, _)| *x == s))
                    .map_or(0, |(_, c)| *c)
            })
            .collect()
    }

    /// The current rate: events in the last whole second before `now_ns` (the second in
    /// progress while the first second is still running).
    pub fn rate_now(&self, now_ns: u64) -> u64 {
        let h = self.rate_history(now_ns, 2);
        let Some(first) = self.first_ts else { return 0 };
        if now_ns.saturating_sub(first) < NS_PER_SEC {
            h[1]
        } else {
            h[0]
        }
    }
}
