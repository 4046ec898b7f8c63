//! The log as a timeline: Chrome trace-event JSON (the `traceEvents` array format), which
//! ui.perfetto.dev and chrome://tracing open. What each track and mark means is in
//! `docs/export.md`:
//!
//! - per thread (`pid` = the log's tgid, `tid` = its tid): `copy_page_range` and
//!   `copy_hugetlb_page_range` calls as slices, the write sections nested inside them, GUP-fast
//!   calls as slices named by their outcome, with `read_begin`/`read_retry`/`retry_fail` as
//!   instants carrying the value loaded;
//! - per mm, a counter track of `write_protect_seq` (in its process);
//! - the validator's violations (global instants) and protected overlaps (instants on the
//!   reading thread), with the rule and its message;
//! - lost events as a counter; process and thread names, the kernel and the attach mode as
//!   metadata.
//!
//! Slices are complete events (`"ph":"X"`) written when their end is read, so unpaired events
//! (lost, or cut off by the end of the log) never unbalance a track: they become instants.
//! The importers sort events by time, so the output is written in log order.
use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
};

use serde_json::{Value, json};

use super::{ExportError, Sink, us};
use crate::{
    events::{Body, CopyFn, Event, Header, Kind, Record},
    validate::{Overlap, Report},
};

/// The pseudo-process holding the trace-wide tracks (lost events, the verdict). Linux gives
/// pid 0 to the idle tasks, which neither fork nor pin.
const TRACER_PID: u32 = 0;

struct OpenCopy {
    func: CopyFn,
    ts: u64,
    line: u64,
    seq: Option<u32>,
    args: Value,
}

struct OpenCall {
    ts: u64,
    line: u64,
    args: Value,
    pin: bool,
    begin: Option<u32>,
    retry: Option<u32>,
    retry_fail: bool,
}

#[derive(Default)]
struct Thread {
    copies: Vec<OpenCopy>,
    write: Option<(u64, u64, Option<u32>)>,
    call: Option<OpenCall>,
}

/// Slices written, by category: what the tests compare with the log's pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub copies: u64,
    pub write_sections: u64,
    pub gup_calls: u64,
}

/// Writes the trace as records arrive.
pub struct Writer<W: Write> {
    out: W,
    first: bool,
    threads: HashMap<u32, Thread>,
    /// tid → (pid, comm); pid → the thread-group leader's comm when seen.
    names: BTreeMap<u32, (u32, String)>,
    leaders: BTreeMap<u32, String>,
    /// mm → (pid, last value written to its counter).
    mms: HashMap<String, (u32, Option<u32>)>,
    lost: BTreeMap<String, u64>,
    first_ts: Option<u64>,
    last_ts: u64,
    metadata: Value,
    pub counts: Counts,
}

fn outcome(c: &OpenCall) -> &'static str {
    match (c.begin, c.retry) {
        (Some(b), _) if b & 1 == 1 => "bailed on odd",
        _ if c.retry_fail => "backed out",
        // Without a retry_fail the log does not show the back-out itself.
        (Some(b), Some(r)) if b != r => "retry saw a change",
        (Some(_), Some(_)) => "pinned",
        (Some(_), None) => "no retry seen",
        (None, _) if !c.pin => "not FOLL_PIN (no seqcount check)",
        (None, _) => "no read sites",
    }
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> Result<Self, ExportError> {
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
        let mut metadata = json!({
            "tool": header.tool,
            "kernel": header.kernel,
            "schema": header.schema,
            "probes": header.probes,
        });
        for key in ["minor", "mode", "clock_slack_ns", "filter"] {
            if let (Some(v), Some(m)) = (header.extra.get(key), metadata.as_object_mut()) {
                m.insert(key.to_owned(), v.clone());
            }
        }
        Ok(Writer {
            out,
            first: true,
            threads: HashMap::new(),
            names: BTreeMap::new(),
            leaders: BTreeMap::new(),
            mms: HashMap::new(),
            lost: BTreeMap::new(),
            first_ts: None,
            last_ts: 0,
            metadata,
            counts: Counts::default(),
        })
    }

    fn emit(&mut self, v: &Value) -> Result<(), ExportError> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, v)?;
        Ok(())
    }

    /// A complete slice from `ts` to `end` on the thread's track.
    #[allow(clippy::too_many_arguments)]
    fn slice(
        &mut self,
        cat: &str,
        name: &str,
        e: &Event,
        ts: u64,
        end: u64,
        args: Value,
    ) -> Result<(), ExportError> {
        // A thread that moved between CPUs can see the clock step back a little; a slice
        // never has a negative length.
        let dur = end.saturating_sub(ts);
        self.emit(&json!({
            "ph": "X", "cat": cat, "name": name, "pid": e.pid, "tid": e.tid,
            "ts": us_num(ts), "dur": us_num(dur), "args": args,
        }))
    }

    fn instant(
        &mut self,
        cat: &str,
        name: &str,
        e: &Event,
        args: Value,
    ) -> Result<(), ExportError> {
        self.emit(&json!({
            "ph": "i", "s": "t", "cat": cat, "name": name, "pid": e.pid, "tid": e.tid,
            "ts": us_num(e.ts), "args": args,
        }))
    }

    /// The mm's counter, when the value changed. Write events report the value before their
    /// increment; the counter shows the value after it.
    fn counter(&mut self, e: &Event) -> Result<(), ExportError> {
        let Some(v) = e.body.seq() else {
            return Ok(());
        };
        let v = match e.body.kind() {
            Kind::WriteBegin | Kind::WriteEnd => v.wrapping_add(1),
            _ => v,
        };
        let slot = self.mms.entry(e.mm.clone()).or_insert((e.pid, None));
        if slot.1 == Some(v) {
            return Ok(());
        }
        slot.1 = Some(v);
        let pid = slot.0;
        self.emit(&json!({
            "ph": "C", "name": format!("write_protect_seq {}", e.mm), "pid": pid,
            "ts": us_num(e.ts), "args": {"seq": v},
        }))
    }

    fn event(&mut self, line: u64, e: &Event) -> Result<(), ExportError> {
        self.first_ts.get_or_insert(e.ts);
        self.last_ts = self.last_ts.max(e.ts);
        self.names.insert(e.tid, (e.pid, e.comm.clone()));
        if e.pid == e.tid {
            self.leaders.insert(e.pid, e.comm.clone());
        }
        self.counter(e)?;
        let seq = e.body.seq();
        match &e.body {
            Body::CopyEnter {
                func,
                vma_start,
                vma_end,
                cow,
                anon,
                vm_flags,
                ..
            } => {
                let args = json!({
                    "mm": e.mm, "vma_start": format!("{vma_start:#x}"),
                    "vma_end": format!("{vma_end:#x}"), "cow": cow, "anon": anon,
                    "vm_flags": vm_flags.map(|f| format!("{f:#x}")), "seq_enter": seq,
                });
                self.threads
                    .entry(e.tid)
                    .or_default()
                    .copies
                    .push(OpenCopy {
                        func: *func,
                        ts: e.ts,
                        line,
                        seq,
                        args,
                    });
            }
            Body::CopyExit { func, ret, .. } => {
                let t = self.threads.entry(e.tid).or_default();
                // The innermost open copy of this function (a hugetlb copy nests inside
                // copy_page_range).
                let open = t
                    .copies
                    .iter()
                    .rposition(|c| c.func == *func)
                    .map(|i| t.copies.remove(i));
                match open {
                    Some(mut c) => {
                        if let Some(a) = c.args.as_object_mut() {
                            a.insert("seq_exit".into(), json!(seq));
                            a.insert(
                                "seq_delta".into(),
                                json!(c.seq.zip(seq).map(|(a, b)| b.wrapping_sub(a))),
                            );
                            a.insert("ret".into(), json!(ret));
                            a.insert("lines".into(), json!([c.line, line]));
                        }
                        self.counts.copies += 1;
                        self.slice("copy", func.symbol(), e, c.ts, e.ts, c.args)?;
                    }
                    None => self.instant(
                        "copy",
                        &format!("{} exit without its entry", func.symbol()),
                        e,
                        json!({"line": line, "seq": seq, "ret": ret}),
                    )?,
                }
            }
            Body::GupEnter {
                start,
                nr_pages,
                flags,
                pin,
                fast_only,
                longterm,
                ..
            } => {
                self.close_call(e, None)?;
                let args = json!({
                    "mm": e.mm, "start": format!("{start:#x}"), "nr_pages": nr_pages,
                    "flags": format!("{flags:#x}"), "pin": pin, "fast_only": fast_only,
                    "longterm": longterm, "seq_enter": seq,
                });
                self.threads.entry(e.tid).or_default().call = Some(OpenCall {
                    ts: e.ts,
                    line,
                    args,
                    pin: *pin,
                    begin: None,
                    retry: None,
                    retry_fail: false,
                });
            }
            Body::GupExit { ret, .. } => self.close_call(e, Some((line, *ret, seq)))?,
            Body::Site { kind, seq } => {
                let kind = *kind;
                match kind {
                    Kind::WriteBegin => {
                        self.threads.entry(e.tid).or_default().write = Some((e.ts, line, *seq));
                    }
                    Kind::WriteEnd => {
                        let open = self.threads.entry(e.tid).or_default().write.take();
                        match open {
                            Some((ts, bl, sb)) => {
                                self.counts.write_sections += 1;
                                self.slice(
                                    "write_section",
                                    "write section",
                                    e,
                                    ts,
                                    e.ts,
                                    json!({"mm": e.mm, "seq_begin": sb, "seq_end": seq, "lines": [bl, line]}),
                                )?;
                            }
                            None => self.instant(
                                "write_section",
                                "write_end without write_begin",
                                e,
                                json!({"mm": e.mm, "seq": seq, "line": line}),
                            )?,
                        }
                    }
                    Kind::ReadBegin | Kind::ReadRetry | Kind::RetryFail => {
                        if let Some(c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.as_mut())
                        {
                            match kind {
                                Kind::ReadBegin => c.begin = *seq,
                                Kind::ReadRetry => c.retry = *seq,
                                _ => c.retry_fail = true,
                            }
                        }
                        let name = match (kind, seq) {
                            (Kind::ReadBegin, Some(v)) if v & 1 == 1 => "read_begin (odd)",
                            _ => kind.as_str(),
                        };
                        self.instant(
                            "gup_site",
                            name,
                            e,
                            json!({"mm": e.mm, "seq": seq, "line": line}),
                        )?;
                    }
                    _ => {}
                }
            }
            // Tracepoint mode: each is its own span, from the first read to the event.
            Body::Fork {
                ts_before,
                seq_before,
                bracket,
                child,
                child_mm,
                ret,
                ..
            } => self.slice(
                "fork",
                "fork (mmap_lock held for writing)",
                e,
                *ts_before,
                e.ts,
                json!({"mm": e.mm, "seq_before": seq_before, "seq_after": seq,
                       "advance": seq_before.zip(seq).map(|(a, b)| b.wrapping_sub(a)),
                       "bracket": bracket.as_str(), "child": child, "child_mm": child_mm,
                       "ret": ret, "line": line}),
            )?,
            Body::PinSyscall {
                syscall,
                fd,
                op,
                count,
                ret,
                ts_enter,
                seq_enter,
                ..
            } => self.slice(
                "pin_syscall",
                syscall,
                e,
                *ts_enter,
                e.ts,
                json!({"mm": e.mm, "fd": fd, "op": op, "count": count, "ret": ret,
                       "seq_enter": seq_enter, "seq_exit": seq, "line": line}),
            )?,
        }
        Ok(())
    }

    /// Ends the thread's open GUP-fast call: at its `gup_exit` (`exit` = line, ret, seq) or,
    /// without one, when the next call starts (then it becomes an instant).
    fn close_call(
        &mut self,
        e: &Event,
        exit: Option<(u64, i64, Option<u32>)>,
    ) -> Result<(), ExportError> {
        let Some(mut c) = self.threads.get_mut(&e.tid).and_then(|t| t.call.take()) else {
            if exit.is_some() {
                self.instant(
                    "gup_fast",
                    "gup_exit without its entry",
                    e,
                    json!({"mm": e.mm}),
                )?;
            }
            return Ok(());
        };
        let how = outcome(&c);
        if let Some(a) = c.args.as_object_mut() {
            a.insert("outcome".into(), json!(how));
            a.insert("seq_read_begin".into(), json!(c.begin));
            a.insert("seq_read_retry".into(), json!(c.retry));
            a.insert("retry_fail".into(), json!(c.retry_fail));
        }
        match exit {
            Some((line, ret, seq)) => {
                if let Some(a) = c.args.as_object_mut() {
                    a.insert("ret".into(), json!(ret));
                    a.insert("seq_exit".into(), json!(seq));
                    a.insert("lines".into(), json!([c.line, line]));
                }
                self.counts.gup_calls += 1;
                self.slice(
                    "gup_fast",
                    &format!("GUP-fast: {how}"),
                    e,
                    c.ts,
                    e.ts,
                    c.args,
                )
            }
            None => self.emit(&json!({
                "ph": "i", "s": "t", "cat": "gup_fast",
                "name": format!("GUP-fast without gup_exit: {how}"),
                "pid": e.pid, "tid": e.tid, "ts": us_num(c.ts), "args": c.args,
            })),
        }
    }

    fn lost_counter(&mut self) -> Result<(), ExportError> {
        let ts = self.last_ts;
        let args: BTreeMap<&str, u64> = self.lost.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.emit(&json!({
            "ph": "C", "name": "lost events", "pid": TRACER_PID, "ts": us_num(ts), "args": args,
        }))
    }
}

/// A timestamp in µs as a JSON number with ns precision (`1234.567`).
fn us_num(ns: u64) -> Value {
    // The decimal text is exact; serde_json keeps it as a float, which Perfetto reads.
    us(ns).parse::<f64>().map_or(Value::Null, |f| json!(f))
}

impl<W: Write> Sink for Writer<W> {
    fn record(&mut self, line: u64, rec: &Record) -> Result<(), ExportError> {
        match rec {
            Record::Event(e) => self.event(line, e),
            Record::Lost { probe, count } => {
                *self.lost.entry(probe.clone()).or_default() += count;
                self.lost_counter()
            }
            Record::Summary(s) => {
                // The summary holds the totals: per probe, the larger of the two.
                for (p, n) in &s.lost {
                    let v = self.lost.entry(p.clone()).or_default();
                    *v = (*v).max(*n);
                }
                if let Some(m) = self.metadata.as_object_mut() {
                    m.insert("duration_ns".into(), json!(s.duration_ns));
                    m.insert("summary_events".into(), json!(s.events));
                }
                self.lost_counter()
            }
            Record::Header(_) | Record::Unknown(_) => Ok(()),
        }
    }

    fn finish(&mut self, report: &Report, overlaps: &[Overlap]) -> Result<(), ExportError> {
        // Calls and copies the log ended inside: instants at their start.
        let mut open: Vec<(u32, Thread)> = self.threads.drain().collect();
        open.sort_by_key(|(tid, _)| *tid);
        for (tid, t) in open {
            let pid = self.names.get(&tid).map_or(0, |(p, _)| *p);
            for c in t.copies {
                self.emit(&json!({
                    "ph": "i", "s": "t", "cat": "copy",
                    "name": format!("{} without its exit", c.func.symbol()),
                    "pid": pid, "tid": tid, "ts": us_num(c.ts), "args": c.args,
                }))?;
            }
            if let Some(c) = t.call {
                self.emit(&json!({
                    "ph": "i", "s": "t", "cat": "gup_fast",
                    "name": format!("GUP-fast without gup_exit: {}", outcome(&c)),
                    "pid": pid, "tid": tid, "ts": us_num(c.ts), "args": c.args,
                }))?;
            }
        }
        let pid_of_mm = |mm: &str, mms: &HashMap<String, (u32, Option<u32>)>| {
            mms.get(mm).map_or(TRACER_PID, |(p, _)| *p)
        };
        let start = self.first_ts.unwrap_or(0);
        for v in &report.violations {
            // A defect proven in the code is about the whole trace: at its start.
            let ts = if v.ts == 0 { start } else { v.ts };
            let pid = pid_of_mm(&v.mm, &self.mms);
            let ev = json!({
                "ph": "i", "s": "g", "cat": "violation",
                "name": format!("VIOLATION {}", v.rule.as_str()),
                "pid": pid, "tid": v.tid, "ts": us_num(ts),
                "args": {"rule": v.rule.as_str(), "message": v.message, "mm": v.mm,
                         "line": v.line, "lines": v.lines},
            });
            self.emit(&ev)?;
        }
        for o in overlaps {
            let pid = pid_of_mm(&o.mm, &self.mms);
            let name = match o.how {
                crate::validate::OverlapKind::OddBail => "protected overlap: bailed on odd",
                crate::validate::OverlapKind::BackedOut => "protected overlap: retry backed out",
            };
            let ev = json!({
                "ph": "i", "s": "t", "cat": "protected_overlap", "name": name,
                "pid": pid, "tid": o.tid, "ts": us_num(o.ts),
                "args": {"how": o.how.as_str(), "mm": o.mm, "line": o.line, "lines": o.lines},
            });
            self.emit(&ev)?;
        }
        // Names: processes by their thread-group leader's comm, threads by theirs.
        let mut procs: BTreeMap<u32, String> = BTreeMap::new();
        for (pid, comm) in self.names.values() {
            procs
                .entry(*pid)
                .or_insert_with(|| self.leaders.get(pid).unwrap_or(comm).clone());
        }
        for (pid, name) in &procs {
            let name = self.leaders.get(pid).unwrap_or(name).clone();
            self.emit(
                &json!({"ph": "M", "name": "process_name", "pid": pid, "tid": pid,
                              "args": {"name": format!("{name} ({pid})")}}),
            )?;
        }
        let threads: Vec<(u32, u32, String)> = self
            .names
            .iter()
            .map(|(tid, (pid, comm))| (*tid, *pid, comm.clone()))
            .collect();
        for (tid, pid, comm) in threads {
            self.emit(
                &json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                              "args": {"name": format!("{comm} ({tid})")}}),
            )?;
        }
        let kernel = self.metadata["kernel"].as_str().unwrap_or("?").to_owned();
        let mode = self.metadata["mode"].as_str().unwrap_or("?").to_owned();
        self.emit(
            &json!({"ph": "M", "name": "process_name", "pid": TRACER_PID, "tid": TRACER_PID,
            "args": {"name": format!("tracer · kernel {kernel} · {mode} probes · verdict {}",
                                     report.verdict.as_str())}}),
        )?;
        if let Some(m) = self.metadata.as_object_mut() {
            m.insert("verdict".into(), json!(report.verdict.as_str()));
            m.insert("violations".into(), json!(report.stats.violations));
            m.insert(
                "protected_overlaps".into(),
                json!(report.stats.protected_overlaps),
            );
        }
        self.out.write_all(b"\n],\"metadata\":")?;
        serde_json::to_writer(&mut self.out, &self.metadata)?;
        self.out.write_all(b"}\n")?;
        self.out.flush()?;
        Ok(())
    }
}
