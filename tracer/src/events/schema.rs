//! Schema 1 of the JSON Lines event log: one JSON object per line, with a `kind`.
//!
//! Writing is hand-rolled (one `write!` per line, no intermediate map) because the recorder
//! writes every event; reading goes through a flat, all-optional [`Line`] that is then checked
//! into a typed [`Record`], so a missing field is reported by name.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracer_common::Probe;

use crate::sites::SiteKind;

/// The schema version written in every header.
pub const SCHEMA: u32 = 1;

/// The schema's minor version, written in every header as `minor`. Readers of an older minor
/// skip the kinds they do not know (minor 1 made `hugetlb_enter`/`hugetlb_exit` kinds of their
/// own, added `anon`/`vm_flags` to copy entries, and writes an unreadable `seq` as `null`;
/// minor 2 added the tracepoint mode's `fork` and `pin_syscall` and the header's `attach`).
pub const SCHEMA_MINOR: u32 = 2;

/// Event kinds. `as_str` is the `kind` field: the name of the probe that reports the kind
/// (`tracer_common::Probe::name`), so the vocabulary has one name table, and kinds, probes and
/// site kinds convert into each other by type (`From`/`TryFrom`), never by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    CprEnter,
    CprExit,
    HugetlbEnter,
    HugetlbExit,
    GupEnter,
    GupExit,
    WriteBegin,
    WriteEnd,
    ReadBegin,
    ReadRetry,
    RetryFail,
    Fork,
    PinSyscall,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::CprEnter,
        Kind::CprExit,
        Kind::HugetlbEnter,
        Kind::HugetlbExit,
        Kind::GupEnter,
        Kind::GupExit,
        Kind::WriteBegin,
        Kind::WriteEnd,
        Kind::ReadBegin,
        Kind::ReadRetry,
        Kind::RetryFail,
        Kind::Fork,
        Kind::PinSyscall,
    ];

    /// The probe that reports this kind of event (every kind has one).
    pub const fn probe(self) -> Probe {
        match self {
            Kind::CprEnter => Probe::CprEnter,
            Kind::CprExit => Probe::CprExit,
            Kind::HugetlbEnter => Probe::HugetlbEnter,
            Kind::HugetlbExit => Probe::HugetlbExit,
            Kind::GupEnter => Probe::GupEnter,
            Kind::GupExit => Probe::GupExit,
            Kind::WriteBegin => Probe::WriteBegin,
            Kind::WriteEnd => Probe::WriteEnd,
            Kind::ReadBegin => Probe::ReadBegin,
            Kind::ReadRetry => Probe::ReadRetry,
            Kind::RetryFail => Probe::RetryFail,
            Kind::Fork => Probe::Fork,
            Kind::PinSyscall => Probe::PinSyscall,
        }
    }

    /// The event kind a probe reports; `None` for `mm_free`, which only keeps mm names unique
    /// and writes no line.
    pub const fn of_probe(p: Probe) -> Option<Kind> {
        Some(match p {
            Probe::CprEnter => Kind::CprEnter,
            Probe::CprExit => Kind::CprExit,
            Probe::HugetlbEnter => Kind::HugetlbEnter,
            Probe::HugetlbExit => Kind::HugetlbExit,
            Probe::GupEnter => Kind::GupEnter,
            Probe::GupExit => Kind::GupExit,
            Probe::MmFree => return None,
            Probe::WriteBegin => Kind::WriteBegin,
            Probe::WriteEnd => Kind::WriteEnd,
            Probe::ReadBegin => Kind::ReadBegin,
            Probe::ReadRetry => Kind::ReadRetry,
            Probe::RetryFail => Kind::RetryFail,
            Probe::Fork => Kind::Fork,
            Probe::PinSyscall => Kind::PinSyscall,
        })
    }

    /// Whether the recorder's ring-buffer record is written when this event happens: a call's
    /// return (the whole call travels in one record, written at its return) and the
    /// tracepoint mode's events. A call's earlier events reach the log only with its return,
    /// so only these say how far delivery order and timestamp order disagree.
    pub const fn written_at_its_time(self) -> bool {
        match self {
            Kind::CprExit | Kind::HugetlbExit | Kind::GupExit | Kind::Fork | Kind::PinSyscall => {
                true
            }
            Kind::CprEnter
            | Kind::HugetlbEnter
            | Kind::GupEnter
            | Kind::WriteBegin
            | Kind::WriteEnd
            | Kind::ReadBegin
            | Kind::ReadRetry
            | Kind::RetryFail => false,
        }
    }

    /// The instruction site that reports this kind, for the kinds sites report.
    pub const fn site(self) -> Option<SiteKind> {
        Some(match self {
            Kind::WriteBegin => SiteKind::WriteBegin,
            Kind::WriteEnd => SiteKind::WriteEnd,
            Kind::ReadBegin => SiteKind::ReadBegin,
            Kind::ReadRetry => SiteKind::ReadRetry,
            Kind::RetryFail => SiteKind::RetryFail,
            Kind::CprEnter
            | Kind::CprExit
            | Kind::HugetlbEnter
            | Kind::HugetlbExit
            | Kind::GupEnter
            | Kind::GupExit
            | Kind::Fork
            | Kind::PinSyscall => return None,
        })
    }

    /// The copy function whose window this kind opens or closes.
    pub const fn copy_fn(self) -> Option<CopyFn> {
        match self {
            Kind::CprEnter | Kind::CprExit => Some(CopyFn::Cpr),
            Kind::HugetlbEnter | Kind::HugetlbExit => Some(CopyFn::Hugetlb),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        self.probe().name()
    }

    /// The kind named `s` in a log's `kind` field.
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::from_bytes(s.as_bytes())
    }

    /// As [`Kind::from_name`], for a name not yet checked as UTF-8 (the fast reader).
    pub fn from_bytes(name: &[u8]) -> Option<Kind> {
        Probe::from_name(name).and_then(Kind::of_probe)
    }
}

impl From<Kind> for Probe {
    fn from(k: Kind) -> Probe {
        k.probe()
    }
}

/// `mm_free` reports no event kind.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("probe {} reports no event kind", .0.name())]
pub struct NoKind(pub Probe);

impl TryFrom<Probe> for Kind {
    type Error = NoKind;
    fn try_from(p: Probe) -> Result<Kind, NoKind> {
        Kind::of_probe(p).ok_or(NoKind(p))
    }
}

impl From<SiteKind> for Kind {
    fn from(s: SiteKind) -> Kind {
        match s {
            SiteKind::WriteBegin => Kind::WriteBegin,
            SiteKind::WriteEnd => Kind::WriteEnd,
            SiteKind::ReadBegin => Kind::ReadBegin,
            SiteKind::ReadRetry => Kind::ReadRetry,
            SiteKind::RetryFail => Kind::RetryFail,
        }
    }
}

/// Which page-table copy function a copy window is: `copy_page_range` (one per VMA fork
/// copies) or `copy_hugetlb_page_range` (called from it for hugetlb VMAs, nested inside its
/// window).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CopyFn {
    Cpr,
    Hugetlb,
}

impl CopyFn {
    /// The copy function of a copy kind; the other kinds are `copy_page_range`'s (callers
    /// match on the copy kinds first; [`Kind::copy_fn`] is the partial version).
    pub const fn of_kind(k: Kind) -> CopyFn {
        match k {
            Kind::HugetlbEnter | Kind::HugetlbExit => CopyFn::Hugetlb,
            _ => CopyFn::Cpr,
        }
    }

    /// The kernel function.
    pub const fn symbol(self) -> &'static str {
        match self {
            CopyFn::Cpr => "copy_page_range",
            CopyFn::Hugetlb => "copy_hugetlb_page_range",
        }
    }

    pub const fn enter(self) -> Kind {
        match self {
            CopyFn::Cpr => Kind::CprEnter,
            CopyFn::Hugetlb => Kind::HugetlbEnter,
        }
    }
    pub const fn exit(self) -> Kind {
        match self {
            CopyFn::Cpr => Kind::CprExit,
            CopyFn::Hugetlb => Kind::HugetlbExit,
        }
    }
}

/// How a `fork` event's two values were read (see `docs/event-log.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bracket {
    /// Holding the parent's `mmap_lock` for writing, at `dup_mmap`'s acquisition and release:
    /// exactly this fork's copy, which no other writer can share.
    MmapLock,
    /// At the clone syscall's entry and at `sched_process_fork`: a wider window that another
    /// thread's fork of the same mm may share.
    Syscall,
}

impl Bracket {
    pub const fn as_str(self) -> &'static str {
        match self {
            Bracket::MmapLock => "mmap_lock",
            Bracket::Syscall => "syscall",
        }
    }

    pub fn from_name(s: &str) -> Option<Bracket> {
        [Bracket::MmapLock, Bracket::Syscall]
            .into_iter()
            .find(|b| b.as_str() == s)
    }
}

/// Per-kind payload. `seq` is `None` when the probe could not read the counter (written as
/// `null`): an unreadable value is never a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// `cpr_enter`, `hugetlb_enter`.
    CopyEnter {
        func: CopyFn,
        vma_start: u64,
        vma_end: u64,
        cow: bool,
        /// `src_vma->anon_vma != NULL` (minor 1; absent in older logs).
        anon: Option<bool>,
        /// `src_vma->vm_flags` (minor 1; absent in older logs).
        vm_flags: Option<u64>,
        seq: Option<u32>,
    },
    /// `cpr_exit`, `hugetlb_exit`.
    CopyExit {
        func: CopyFn,
        seq: Option<u32>,
        ret: i64,
    },
    GupEnter {
        start: u64,
        nr_pages: u64,
        flags: u32,
        pin: bool,
        fast_only: bool,
        longterm: bool,
        seq: Option<u32>,
    },
    GupExit {
        ret: i64,
        seq: Option<u32>,
    },
    /// `write_begin`, `write_end`, `read_begin`, `read_retry`, `retry_fail`.
    Site {
        kind: Kind,
        seq: Option<u32>,
    },
    /// `fork` (tracepoint mode): the parent's counter before and after one fork's copy. The
    /// event's `ts` is when `seq_after` was read.
    Fork {
        ts_before: u64,
        seq_before: Option<u32>,
        seq_after: Option<u32>,
        bracket: Bracket,
        /// The child's pid; 0 when the fork failed after copying (`ret` says why).
        child: u32,
        /// The child's mm name; `None` when the fork failed.
        child_mm: Option<String>,
        ret: i64,
    },
    /// `pin_syscall` (tracepoint mode): a system call that pins user pages through GUP-fast,
    /// with the mm's counter at its entry and exit. The event's `ts` is the exit.
    PinSyscall {
        /// `read`, `pread64`, ... (O_DIRECT files), `io_uring_register`, `getsockopt`.
        syscall: String,
        fd: i64,
        /// io_uring_register's opcode, getsockopt's optname; 0 otherwise.
        op: u32,
        /// The byte or vector count (reads, writes), io_uring_register's nr_args.
        count: u64,
        ret: i64,
        ts_enter: u64,
        seq_enter: Option<u32>,
        seq_exit: Option<u32>,
    },
}

impl Body {
    pub fn kind(&self) -> Kind {
        match self {
            Body::CopyEnter { func, .. } => func.enter(),
            Body::CopyExit { func, .. } => func.exit(),
            Body::GupEnter { .. } => Kind::GupEnter,
            Body::GupExit { .. } => Kind::GupExit,
            Body::Site { kind, .. } => *kind,
            Body::Fork { .. } => Kind::Fork,
            Body::PinSyscall { .. } => Kind::PinSyscall,
        }
    }

    pub fn seq(&self) -> Option<u32> {
        match self {
            Body::CopyEnter { seq, .. }
            | Body::CopyExit { seq, .. }
            | Body::GupEnter { seq, .. }
            | Body::GupExit { seq, .. }
            | Body::Site { seq, .. } => *seq,
            // The later of the two values (the event's `ts` is when it was read).
            Body::Fork { seq_after, .. } => *seq_after,
            Body::PinSyscall { seq_exit, .. } => *seq_exit,
        }
    }
}

/// One traced event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts: u64,
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Opaque name of one mm_struct lifetime within the log.
    pub mm: String,
    /// The kernel address, only with `--raw-pointers`.
    pub mm_addr: Option<u64>,
    pub body: Body,
}

/// One attached probe, as listed in the header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// Event kind or probe name (`cpr_enter`, `read_retry`, ...).
    pub name: String,
    /// Kernel symbol.
    pub target: String,
    /// Byte offset into `target` (0 for function entry/return).
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub schema: u32,
    pub tool: String,
    pub kernel: String,
    pub probes: Vec<ProbeInfo>,
    /// Anything else a writer adds (attach mode, filters, flag values...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub events: u64,
    pub lost: BTreeMap<String, u64>,
    pub duration_ns: u64,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Header(Header),
    Event(Event),
    Lost {
        probe: String,
        count: u64,
    },
    Summary(Summary),
    /// A `kind` this reader does not know; readers skip and count these.
    Unknown(String),
}

impl Record {
    /// The line's `kind`.
    pub fn kind_name(&self) -> &str {
        match self {
            Record::Header(_) => "header",
            Record::Event(e) => e.body.kind().as_str(),
            Record::Lost { .. } => "lost",
            Record::Summary(_) => "summary",
            Record::Unknown(k) => k,
        }
    }

    /// The probe a `lost` line names, when this version knows it.
    pub fn lost_probe(probe: &str) -> Option<Probe> {
        Probe::from_name(probe.as_bytes())
    }
}

fn hex(v: u64) -> String {
    format!("0x{v:x}")
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A seq value, or `null` when the probe could not read it.
fn push_seq(out: &mut String, seq: Option<u32>) {
    match seq {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

impl Event {
    /// Appends this event as one JSON object (no newline).
    pub fn write_json(&self, out: &mut String) {
        let Event {
            ts,
            cpu,
            pid,
            tid,
            comm,
            mm,
            mm_addr,
            body,
        } = self;
        let _ = write!(
            out,
            "{{\"kind\":\"{}\",\"ts\":{ts},\"cpu\":{cpu},\"pid\":{pid},\"tid\":{tid},\"comm\":",
            body.kind().as_str()
        );
        push_json_str(out, comm);
        out.push_str(",\"mm\":");
        push_json_str(out, mm);
        if let Some(addr) = mm_addr {
            let _ = write!(out, ",\"mm_addr\":\"{}\"", hex(*addr));
        }
        let _ = match body {
            Body::CopyEnter {
                func: _,
                vma_start,
                vma_end,
                cow,
                anon,
                vm_flags,
                seq,
            } => {
                let _ = write!(
                    out,
                    ",\"vma_start\":\"{}\",\"vma_end\":\"{}\",\"cow\":{cow}",
                    hex(*vma_start),
                    hex(*vma_end)
                );
                if let Some(a) = anon {
                    let _ = write!(out, ",\"anon\":{a}");
                }
                if let Some(f) = vm_flags {
                    let _ = write!(out, ",\"vm_flags\":\"{}\"", hex(*f));
                }
                out.push_str(",\"seq\":");
                push_seq(out, *seq);
                Ok(())
            }
            Body::CopyExit { func: _, seq, ret } => {
                out.push_str(",\"seq\":");
                push_seq(out, *seq);
                write!(out, ",\"ret\":{ret}")
            }
            Body::GupEnter {
                start,
                nr_pages,
                flags,
                pin,
                fast_only,
                longterm,
                seq,
            } => {
                let _ = write!(
                    out,
                    ",\"start\":\"{}\",\"nr_pages\":{nr_pages},\"flags\":{flags},\"pin\":{pin},\"fast_only\":{fast_only},\"longterm\":{longterm},\"seq\":",
                    hex(*start)
                );
                push_seq(out, *seq);
                Ok(())
            }
            Body::GupExit { ret, seq } => {
                let _ = write!(out, ",\"ret\":{ret},\"seq\":");
                push_seq(out, *seq);
                Ok(())
            }
            Body::Site { seq, .. } => {
                out.push_str(",\"seq\":");
                push_seq(out, *seq);
                Ok(())
            }
            Body::Fork {
                ts_before,
                seq_before,
                seq_after,
                bracket,
                child,
                child_mm,
                ret,
            } => {
                let _ = write!(out, ",\"ts_before\":{ts_before},\"seq_before\":");
                push_seq(out, *seq_before);
                out.push_str(",\"seq_after\":");
                push_seq(out, *seq_after);
                let _ = write!(
                    out,
                    ",\"bracket\":\"{}\",\"child\":{child},\"child_mm\":",
                    bracket.as_str()
                );
                match child_mm {
                    Some(m) => push_json_str(out, m),
                    None => out.push_str("null"),
                }
                write!(out, ",\"ret\":{ret}")
            }
            Body::PinSyscall {
                syscall,
                fd,
                op,
                count,
                ret,
                ts_enter,
                seq_enter,
                seq_exit,
            } => {
                out.push_str(",\"syscall\":");
                push_json_str(out, syscall);
                let _ = write!(
                    out,
                    ",\"fd\":{fd},\"op\":{op},\"count\":{count},\"ret\":{ret},\"ts_enter\":{ts_enter},\"seq_enter\":"
                );
                push_seq(out, *seq_enter);
                out.push_str(",\"seq_exit\":");
                push_seq(out, *seq_exit);
                Ok(())
            }
        };
        out.push('}');
    }
}

impl Record {
    /// Appends this record as one JSON line, newline included.
    pub fn write_line(&self, out: &mut String) -> Result<(), serde_json::Error> {
        match self {
            Record::Header(h) => {
                let mut v = serde_json::to_value(h)?;
                if let Some(o) = v.as_object_mut() {
                    // `kind` first reads better; serde_json keeps insertion order only with the
                    // preserve_order feature, so build the line by hand.
                    o.remove("kind");
                }
                out.push_str("{\"kind\":\"header\",");
                let body = serde_json::to_string(&v)?;
                out.push_str(body.trim_start_matches('{'));
            }
            Record::Event(e) => e.write_json(out),
            Record::Lost { probe, count } => {
                out.push_str("{\"kind\":\"lost\",\"probe\":");
                push_json_str(out, probe);
                let _ = write!(out, ",\"count\":{count}}}");
            }
            Record::Summary(s) => {
                out.push_str("{\"kind\":\"summary\",");
                let body = serde_json::to_string(s)?;
                out.push_str(body.trim_start_matches('{'));
            }
            Record::Unknown(kind) => {
                out.push_str("{\"kind\":");
                push_json_str(out, kind);
                out.push('}');
            }
        }
        out.push('\n');
        Ok(())
    }
}

/// Why a line is not a valid schema-1 record.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("no \"kind\" field")]
    NoKind,
    #[error("{kind} is missing required field \"{field}\"")]
    Missing { kind: String, field: &'static str },
    #[error("field \"{field}\" of {kind} is not a valid {expected}")]
    BadField {
        kind: String,
        field: &'static str,
        expected: &'static str,
    },
    #[error("{kind} has a field of the wrong type: {detail}")]
    BadValue { kind: String, detail: String },
    #[error("header has schema {0}, this tool reads schema {SCHEMA}")]
    Schema(u64),
}

/// Every field any kind may carry, all optional: the permissive first stage of parsing.
#[derive(Deserialize, Default)]
struct Line {
    ts: Option<u64>,
    cpu: Option<u32>,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<String>,
    mm: Option<String>,
    mm_addr: Option<String>,
    vma_start: Option<String>,
    vma_end: Option<String>,
    cow: Option<bool>,
    anon: Option<bool>,
    vm_flags: Option<String>,
    /// Missing: `None`; `null`: `Some(None)` (unreadable).
    #[serde(default, deserialize_with = "present")]
    seq: Option<Option<u32>>,
    ret: Option<i64>,
    start: Option<String>,
    nr_pages: Option<u64>,
    flags: Option<u32>,
    pin: Option<bool>,
    fast_only: Option<bool>,
    longterm: Option<bool>,
    probe: Option<String>,
    count: Option<u64>,
    ts_before: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    seq_before: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    seq_after: Option<Option<u32>>,
    bracket: Option<String>,
    child: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    child_mm: Option<Option<String>>,
    syscall: Option<String>,
    fd: Option<i64>,
    op: Option<u32>,
    ts_enter: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    seq_enter: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    seq_exit: Option<Option<u32>>,
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// Tells a field that is present (even as `null`) from one that is missing.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl Record {
    /// Parses one line of a log.
    pub fn parse(line: &str) -> Result<Record, ParseError> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or(ParseError::NoKind)?
            .to_owned();
        match kind.as_str() {
            "header" => {
                let schema =
                    value
                        .get("schema")
                        .and_then(|s| s.as_u64())
                        .ok_or(ParseError::Missing {
                            kind: kind.clone(),
                            field: "schema",
                        })?;
                if schema != u64::from(SCHEMA) {
                    return Err(ParseError::Schema(schema));
                }
                let mut h: Header = serde_json::from_value(value)
                    .map_err(|e| ParseError::NotJson(e.to_string()))?;
                h.extra.remove("kind");
                Ok(Record::Header(h))
            }
            "summary" => {
                let mut s: Summary = serde_json::from_value(value)
                    .map_err(|e| ParseError::NotJson(e.to_string()))?;
                s.extra.remove("kind");
                Ok(Record::Summary(s))
            }
            _ => {
                let l: Line = serde_json::from_value(value).map_err(|e| ParseError::BadValue {
                    kind: kind.clone(),
                    detail: e.to_string(),
                })?;
                l.into_record(kind)
            }
        }
    }
}

impl Line {
    fn into_record(self, kind: String) -> Result<Record, ParseError> {
        macro_rules! req {
            ($f:ident) => {
                self.$f.clone().ok_or_else(|| ParseError::Missing {
                    kind: kind.clone(),
                    field: stringify!($f),
                })?
            };
        }
        macro_rules! req_hex {
            ($f:ident) => {{
                let s = req!($f);
                parse_hex(&s).ok_or_else(|| ParseError::BadField {
                    kind: kind.clone(),
                    field: stringify!($f),
                    expected: "hex string \"0x…\"",
                })?
            }};
        }
        if kind == "lost" {
            return Ok(Record::Lost {
                probe: req!(probe),
                count: req!(count),
            });
        }
        let Some(k) = Kind::from_name(&kind) else {
            return Ok(Record::Unknown(kind));
        };
        let opt_hex = |v: &Option<String>, field: &'static str| match v {
            Some(s) => parse_hex(s).map(Some).ok_or_else(|| ParseError::BadField {
                kind: kind.clone(),
                field,
                expected: "hex string \"0x…\"",
            }),
            None => Ok(None),
        };
        let body = match k {
            Kind::CprEnter | Kind::HugetlbEnter => Body::CopyEnter {
                func: CopyFn::of_kind(k),
                vma_start: req_hex!(vma_start),
                vma_end: req_hex!(vma_end),
                cow: req!(cow),
                anon: self.anon,
                vm_flags: opt_hex(&self.vm_flags, "vm_flags")?,
                seq: req!(seq),
            },
            Kind::CprExit | Kind::HugetlbExit => Body::CopyExit {
                func: CopyFn::of_kind(k),
                seq: req!(seq),
                ret: req!(ret),
            },
            Kind::GupEnter => Body::GupEnter {
                start: req_hex!(start),
                nr_pages: req!(nr_pages),
                flags: req!(flags),
                pin: req!(pin),
                fast_only: req!(fast_only),
                longterm: req!(longterm),
                seq: req!(seq),
            },
            Kind::GupExit => Body::GupExit {
                ret: req!(ret),
                seq: req!(seq),
            },
            Kind::WriteBegin
            | Kind::WriteEnd
            | Kind::ReadBegin
            | Kind::ReadRetry
            | Kind::RetryFail => Body::Site {
                kind: k,
                seq: req!(seq),
            },
            Kind::Fork => Body::Fork {
                ts_before: req!(ts_before),
                seq_before: req!(seq_before),
                seq_after: req!(seq_after),
                bracket: {
                    let b = req!(bracket);
                    Bracket::from_name(&b).ok_or_else(|| ParseError::BadField {
                        kind: kind.clone(),
                        field: "bracket",
                        expected: "bracket (\"mmap_lock\" or \"syscall\")",
                    })?
                },
                child: req!(child),
                child_mm: req!(child_mm),
                ret: req!(ret),
            },
            Kind::PinSyscall => Body::PinSyscall {
                syscall: req!(syscall),
                fd: req!(fd),
                op: req!(op),
                count: req!(count),
                ret: req!(ret),
                ts_enter: req!(ts_enter),
                seq_enter: req!(seq_enter),
                seq_exit: req!(seq_exit),
            },
        };
        let mm_addr = match &self.mm_addr {
            Some(s) => Some(parse_hex(s).ok_or_else(|| ParseError::BadField {
                kind: kind.clone(),
                field: "mm_addr",
                expected: "hex string \"0x…\"",
            })?),
            None => None,
        };
        Ok(Record::Event(Event {
            ts: req!(ts),
            cpu: req!(cpu),
            pid: req!(pid),
            tid: req!(tid),
            comm: req!(comm),
            mm: req!(mm),
            mm_addr,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(body: Body) -> Event {
        Event {
            ts: 123,
            cpu: 1,
            pid: 10,
            tid: 11,
            comm: "a\"b\\c\u{1}".into(),
            mm: "mm1".into(),
            mm_addr: None,
            body,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let bodies = [
            Body::CopyEnter {
                func: CopyFn::Cpr,
                vma_start: 0x7f00_0000_0000,
                vma_end: 0x7f00_0000_4000,
                cow: true,
                anon: Some(true),
                vm_flags: Some(0x100073),
                seq: Some(4),
            },
            Body::CopyEnter {
                func: CopyFn::Hugetlb,
                vma_start: 0x7f00_0000_0000,
                vma_end: 0x7f00_0020_0000,
                cow: true,
                anon: None,
                vm_flags: None,
                seq: None,
            },
            Body::CopyExit {
                func: CopyFn::Cpr,
                seq: Some(6),
                ret: 0,
            },
            Body::CopyExit {
                func: CopyFn::Hugetlb,
                seq: None,
                ret: -12,
            },
            Body::GupEnter {
                start: 0x1000,
                nr_pages: 3,
                flags: 0x80001,
                pin: true,
                fast_only: false,
                longterm: false,
                seq: Some(u32::MAX),
            },
            Body::GupExit {
                ret: -14,
                seq: Some(0),
            },
            Body::Site {
                kind: Kind::ReadRetry,
                seq: Some(7),
            },
            Body::Site {
                kind: Kind::WriteBegin,
                seq: None,
            },
            Body::Fork {
                ts_before: 100,
                seq_before: Some(4),
                seq_after: Some(20),
                bracket: Bracket::MmapLock,
                child: 77,
                child_mm: Some("mm2".into()),
                ret: 0,
            },
            Body::Fork {
                ts_before: 100,
                seq_before: None,
                seq_after: Some(7),
                bracket: Bracket::Syscall,
                child: 0,
                child_mm: None,
                ret: -12,
            },
            Body::PinSyscall {
                syscall: "io_uring_register".into(),
                fd: 3,
                op: 0,
                count: 1,
                ret: 0,
                ts_enter: 90,
                seq_enter: Some(2),
                seq_exit: None,
            },
        ];
        for b in bodies {
            let r = Record::Event(ev(b));
            let mut s = String::new();
            r.write_line(&mut s).unwrap();
            assert!(s.ends_with('\n'));
            assert_eq!(Record::parse(s.trim_end()).unwrap(), r, "{s}");
        }
    }

    #[test]
    fn the_vocabulary_converts_by_type_and_names_round_trip() {
        for k in Kind::ALL {
            let p = Probe::from(k);
            assert_eq!(Kind::try_from(p), Ok(k));
            assert_eq!(Kind::from_name(k.as_str()), Some(k));
            assert_eq!(Probe::from_name(p.name().as_bytes()), Some(p));
            if let Some(s) = k.site() {
                assert_eq!(Kind::from(s), k);
                assert_eq!(s.probe(), p);
            }
            assert_eq!(
                k.copy_fn().map(|f| f.enter() == k || f.exit() == k),
                k.copy_fn().map(|_| true)
            );
        }
        // Every probe but mm_free reports a kind.
        for p in Probe::ALL {
            assert_eq!(Kind::try_from(p).is_err(), p == Probe::MmFree, "{p:?}");
        }
        assert_eq!(Kind::from_name("mm_free"), None);
        assert_eq!(Kind::from_name(""), None);
    }

    #[test]
    fn header_and_summary_round_trip_with_kind_first() {
        let h = Record::Header(Header {
            schema: SCHEMA,
            tool: "tracer 0.1.0".into(),
            kernel: "6.12.0".into(),
            probes: vec![ProbeInfo {
                name: "cpr_enter".into(),
                target: "copy_page_range".into(),
                offset: 0,
            }],
            extra: BTreeMap::from([("mode".into(), serde_json::json!("function"))]),
        });
        let mut s = String::new();
        h.write_line(&mut s).unwrap();
        assert!(s.starts_with("{\"kind\":\"header\","), "{s}");
        assert_eq!(Record::parse(s.trim_end()).unwrap(), h);
        let sum = Record::Summary(Summary {
            events: 5,
            lost: BTreeMap::from([("gup_enter".into(), 2)]),
            duration_ns: 9,
            extra: BTreeMap::new(),
        });
        let mut s = String::new();
        sum.write_line(&mut s).unwrap();
        assert_eq!(Record::parse(s.trim_end()).unwrap(), sum);
    }

    #[test]
    fn bad_lines_name_the_problem() {
        assert_eq!(
            Record::parse(
                r#"{"kind":"cpr_exit","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"x","mm":"m","ret":0}"#
            ),
            Err(ParseError::Missing {
                kind: "cpr_exit".into(),
                field: "seq"
            })
        );
        assert_eq!(
            Record::parse(r#"{"kind":"header","schema":2,"tool":"t","kernel":"k","probes":[]}"#),
            Err(ParseError::Schema(2))
        );
        // Unreadable is `null`, which is not the same as missing.
        assert!(matches!(
            Record::parse(
                r#"{"kind":"write_end","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"x","mm":"m","seq":null}"#
            ),
            Ok(Record::Event(Event {
                body: Body::Site { seq: None, .. },
                ..
            }))
        ));
        assert!(matches!(
            Record::parse("{not json"),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(Record::parse(r#"{"ts":1}"#), Err(ParseError::NoKind));
        assert_eq!(
            Record::parse(r#"{"kind":"something_new","x":1}"#),
            Ok(Record::Unknown("something_new".into()))
        );
    }
}
