//! Ring-buffer records → schema-1 events: expands each call record into one event per stage,
//! names mm lifetimes, decodes FOLL_* flags and the COW test, and keeps raw kernel addresses
//! out of the log unless asked. The events of a record are built into buffers that are reused
//! from record to record, so decoding allocates nothing per event (a new mm's name aside).
use std::collections::HashMap;

use tracer_common::{
    Probe, RawCall, RawEvent, RawTail, anon, bracket, call, pin_sys, probe_of, stage,
};

use super::schema::{Body, Bracket, CopyFn, Event, Kind};
use crate::{kernel::foll::FollFlags, probes::Raw};

/// `VM_SHARED` and `VM_MAYWRITE` (include/linux/mm.h), unchanged since 2.6.
const VM_SHARED: u32 = 0x08;
const VM_MAYWRITE: u32 = 0x20;

/// `is_cow_mapping()`: private and may become writable.
pub fn is_cow(vm_flags: u32) -> bool {
    vm_flags & (VM_SHARED | VM_MAYWRITE) == VM_MAYWRITE
}

/// Gives each mm_struct lifetime a short name. An address seen again after its mm was freed
/// gets a new name.
#[derive(Default)]
pub struct MmNames {
    live: HashMap<u64, String>,
    next: u64,
}

impl MmNames {
    pub fn name(&mut self, addr: u64) -> String {
        let mut s = String::new();
        self.write_name(addr, &mut s);
        s
    }

    /// Sets `out` to the name of the mm at `addr`, reusing its buffer (the recorder names
    /// every event; only a new mm allocates).
    pub fn write_name(&mut self, addr: u64, out: &mut String) {
        out.clear();
        if addr == 0 {
            out.push_str("none");
            return;
        }
        if let Some(n) = self.live.get(&addr) {
            out.push_str(n);
            return;
        }
        self.next += 1;
        let n = format!("mm{}", self.next);
        out.push_str(&n);
        self.live.insert(addr, n);
    }

    /// The mm at `addr` is gone; returns whether it had a name.
    pub fn free(&mut self, addr: u64) -> bool {
        self.live.remove(&addr).is_some()
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }
}

/// What one ring-buffer record became.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Events, in [`Decoder::events`] until the next record is decoded: one per stage of a
    /// call record, in the order the thread passed them.
    Events,
    /// An mm was freed (not written to the log).
    MmFreed,
    /// A record of an unknown probe or call (a tracer/eBPF version mismatch).
    Invalid(u8),
}

pub struct Decoder {
    pub foll: FollFlags,
    pub names: MmNames,
    pub raw_pointers: bool,
    /// Events whose seqcount could not be read in the kernel (written with `"seq":null`).
    pub unreadable_seq: u64,
    /// The events of the last record (`len` of them), kept so that their strings are reused.
    buf: Vec<Event>,
    len: usize,
}

/// Sets `out` to the task name in `raw` (NUL-padded), reusing its buffer.
fn write_comm(raw: &[u8; 16], out: &mut String) {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    out.clear();
    out.push_str(&String::from_utf8_lossy(&raw[..end]));
}

fn blank() -> Event {
    Event {
        ts: 0,
        cpu: 0,
        pid: 0,
        tid: 0,
        comm: String::new(),
        mm: String::new(),
        mm_addr: None,
        body: Body::GupExit { ret: 0, seq: None },
    }
}

impl Decoder {
    pub fn new(foll: FollFlags, raw_pointers: bool) -> Decoder {
        Decoder {
            foll,
            names: MmNames::default(),
            raw_pointers,
            unreadable_seq: 0,
            buf: Vec::new(),
            len: 0,
        }
    }

    /// The events of the last record decoded.
    pub fn events(&self) -> &[Event] {
        &self.buf[..self.len]
    }

    /// The next event slot, with its pid/tid/comm/mm set from the record.
    fn slot(&mut self, pid: u32, tid: u32, comm: &[u8; 16], mm: u64) -> &mut Event {
        if self.len == self.buf.len() {
            self.buf.push(blank());
        }
        let first = self.len;
        self.len += 1;
        if first > 0 {
            // Later stages share the identity of the first: copy it without decoding again.
            let (done, rest) = self.buf.split_at_mut(first);
            let (prev, e) = (&done[first - 1], &mut rest[0]);
            e.pid = prev.pid;
            e.tid = prev.tid;
            e.comm.clone_from(&prev.comm);
            e.mm.clone_from(&prev.mm);
            e.mm_addr = prev.mm_addr;
            return e;
        }
        let e = &mut self.buf[first];
        e.pid = pid;
        e.tid = tid;
        write_comm(comm, &mut e.comm);
        self.names.write_name(mm, &mut e.mm);
        e.mm_addr = self.raw_pointers.then_some(mm);
        e
    }

    /// Decodes one ring-buffer record; its events are then in [`Decoder::events`].
    pub fn feed(&mut self, raw: &Raw) -> Decoded {
        self.len = 0;
        match raw {
            Raw::Call(c) => self.decode_call(c),
            Raw::Event(ev) => self.decode(ev),
            Raw::Wide(w) => self.decode_wide(&w.ev, &w.tail),
        }
    }

    /// A call record: one event per stage present, in stage order (the order the thread
    /// passed them).
    pub fn decode_call(&mut self, raw: &RawCall) -> Decoded {
        self.len = 0;
        if !matches!(raw.func, call::CPR | call::HUGETLB | call::GUP) {
            return Decoded::Invalid(raw.func);
        }
        let copy_fn = if raw.func == call::HUGETLB {
            CopyFn::Hugetlb
        } else {
            CopyFn::Cpr
        };
        for st in 0..stage::COUNT as u8 {
            if raw.present & (1 << st) == 0 {
                continue;
            }
            let i = usize::from(st);
            let Some(probe) = probe_of(raw.func, st) else {
                self.len = 0;
                return Decoded::Invalid(raw.func);
            };
            let seq = (raw.seq_ok & (1 << st) != 0).then_some(raw.seq[i]);
            if seq.is_none() {
                self.unreadable_seq += 1;
            }
            let body = match (raw.func, st) {
                (call::GUP, stage::ENTER) => {
                    let d = self.foll.decode(raw.flags);
                    Body::GupEnter {
                        start: raw.a,
                        nr_pages: raw.b,
                        flags: raw.flags,
                        pin: d.pin,
                        fast_only: d.fast_only,
                        longterm: d.longterm,
                        seq,
                    }
                }
                (call::GUP, stage::EXIT) => Body::GupExit {
                    ret: raw.ret as i64,
                    seq,
                },
                (_, stage::ENTER) => Body::CopyEnter {
                    func: copy_fn,
                    vma_start: raw.a,
                    vma_end: raw.b,
                    cow: is_cow(raw.flags),
                    anon: match raw.anon {
                        anon::NO => Some(false),
                        anon::YES => Some(true),
                        _ => None,
                    },
                    vm_flags: Some(u64::from(raw.flags)),
                    seq,
                },
                (_, stage::EXIT) => Body::CopyExit {
                    func: copy_fn,
                    seq,
                    ret: raw.ret as i64,
                },
                _ => match Kind::try_from(probe) {
                    Ok(kind) => Body::Site { kind, seq },
                    Err(_) => {
                        self.len = 0;
                        return Decoded::Invalid(raw.func);
                    }
                },
            };
            let e = self.slot(raw.pid, raw.tid, &raw.comm, raw.mm);
            e.ts = raw.ts[i];
            e.cpu = raw.cpu[i];
            e.body = body;
        }
        Decoded::Events
    }

    /// A single-event record: only `mm_free` is sent this way (every other probe's events
    /// travel in call records).
    pub fn decode(&mut self, raw: &RawEvent) -> Decoded {
        self.len = 0;
        match Probe::from_u8(raw.probe) {
            Some(Probe::MmFree) => {
                self.names.free(raw.mm);
                Decoded::MmFreed
            }
            _ => Decoded::Invalid(raw.probe),
        }
    }

    /// A tracepoint-mode record: a [`RawEvent`] followed by its [`RawTail`].
    pub fn decode_wide(&mut self, raw: &RawEvent, tail: &RawTail) -> Decoded {
        self.len = 0;
        let seq = |ok: u8, v: u32| (ok != 0).then_some(v);
        let after = seq(raw.seq_ok, raw.seq);
        let before = seq(tail.seq0_ok, tail.seq0);
        let body = match Probe::from_u8(raw.probe) {
            Some(Probe::Fork) => {
                let Some(bracket) = (match tail.what {
                    bracket::MMAP_LOCK => Some(Bracket::MmapLock),
                    bracket::SYSCALL => Some(Bracket::Syscall),
                    _ => None,
                }) else {
                    return Decoded::Invalid(raw.probe);
                };
                Body::Fork {
                    ts_before: tail.ts0,
                    seq_before: before,
                    seq_after: after,
                    bracket,
                    child: tail.x,
                    child_mm: None,
                    ret: raw.a as i64,
                }
            }
            Some(Probe::PinSyscall) => Body::PinSyscall {
                syscall: pin_sys::name(tail.what).to_owned(),
                fd: i64::from(tail.x as i32),
                op: raw.flags,
                count: raw.b,
                ret: raw.a as i64,
                ts_enter: tail.ts0,
                seq_enter: before,
                seq_exit: after,
            },
            // Every other probe writes a call record; a wide one is a version mismatch.
            _ => return Decoded::Invalid(raw.probe),
        };
        self.unreadable_seq += u64::from(after.is_none()) + u64::from(before.is_none());
        // The parent's mm is named before the child's.
        let e = self.slot(raw.pid, raw.tid, &raw.comm, raw.mm);
        e.ts = raw.ts;
        e.cpu = raw.cpu;
        e.body = body;
        if let Body::Fork { child_mm, .. } = &mut self.buf[0].body
            && tail.c != 0
        {
            *child_mm = Some(self.names.name(tail.c));
        }
        Decoded::Events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MM: u64 = 0xffff_8880_0000_1000;

    /// A call of `func` holding the stages in `stages` (stage, ts, seq), seq unreadable when
    /// `None`.
    fn call_rec(func: u8, stages: &[(u8, u64, Option<u32>)]) -> RawCall {
        let mut r = RawCall::EMPTY;
        r.func = func;
        r.mm = MM;
        r.pid = 7;
        r.tid = 8;
        r.comm = *b"stress\0\0\0\0\0\0\0\0\0\0";
        r.a = 0x1000;
        r.b = 0x3000;
        // VM_READ|VM_WRITE|VM_MAYREAD|VM_MAYWRITE|VM_MAYEXEC: private, COW.
        r.flags = 0x73;
        r.anon = anon::YES;
        r.ret = (-14i64) as u64;
        for &(st, ts, seq) in stages {
            let i = usize::from(st);
            r.present |= 1 << st;
            r.ts[i] = ts;
            r.cpu[i] = u32::from(st);
            if let Some(v) = seq {
                r.seq_ok |= 1 << st;
                r.seq[i] = v;
            }
        }
        r
    }

    fn lines(d: &Decoder) -> Vec<String> {
        d.events()
            .iter()
            .map(|e| {
                let mut s = String::new();
                e.write_json(&mut s);
                s
            })
            .collect()
    }

    #[test]
    fn a_gup_call_expands_into_its_events_in_order() {
        let mut d = Decoder::new(FollFlags::FROM_6_3, false);
        let r = call_rec(
            call::GUP,
            &[
                (stage::ENTER, 10, Some(4)),
                (stage::BEGIN, 11, Some(4)),
                (stage::END, 12, Some(6)),
                (stage::FAIL, 13, Some(6)),
                (stage::EXIT, 14, Some(6)),
            ],
        );
        assert_eq!(d.feed(&Raw::Call(r)), Decoded::Events);
        let kinds: Vec<Kind> = d.events().iter().map(|e| e.body.kind()).collect();
        assert_eq!(
            kinds,
            [
                Kind::GupEnter,
                Kind::ReadBegin,
                Kind::ReadRetry,
                Kind::RetryFail,
                Kind::GupExit
            ]
        );
        let l = lines(&d);
        assert_eq!(
            l[0],
            r#"{"kind":"gup_enter","ts":10,"cpu":0,"pid":7,"tid":8,"comm":"stress","mm":"mm1","start":"0x1000","nr_pages":12288,"flags":115,"pin":false,"fast_only":false,"longterm":false,"seq":4}"#
        );
        assert_eq!(
            l[2],
            r#"{"kind":"read_retry","ts":12,"cpu":2,"pid":7,"tid":8,"comm":"stress","mm":"mm1","seq":6}"#
        );
        assert_eq!(
            l[4],
            r#"{"kind":"gup_exit","ts":14,"cpu":4,"pid":7,"tid":8,"comm":"stress","mm":"mm1","ret":-14,"seq":6}"#
        );
        assert!(!l.concat().contains("ffff8880"), "no raw pointer: {l:?}");
    }

    #[test]
    fn copies_expand_with_their_own_kinds_and_write_sites() {
        let mut d = Decoder::new(FollFlags::FROM_6_3, true);
        for (func, enter, exit) in [
            (call::CPR, "cpr_enter", "cpr_exit"),
            (call::HUGETLB, "hugetlb_enter", "hugetlb_exit"),
        ] {
            let r = call_rec(
                func,
                &[
                    (stage::ENTER, 1, Some(2)),
                    (stage::BEGIN, 2, Some(2)),
                    (stage::END, 3, Some(3)),
                    (stage::EXIT, 4, Some(4)),
                ],
            );
            assert_eq!(d.decode_call(&r), Decoded::Events);
            let l = lines(&d);
            assert_eq!(l.len(), 4);
            assert!(
                l[0].starts_with(&format!("{{\"kind\":\"{enter}\"")),
                "{}",
                l[0]
            );
            assert!(
                l[0].contains(r#""mm_addr":"0xffff888000001000""#),
                "{}",
                l[0]
            );
            assert!(
                l[0].ends_with(r#""cow":true,"anon":true,"vm_flags":"0x73","seq":2}"#),
                "{}",
                l[0]
            );
            assert!(l[1].starts_with("{\"kind\":\"write_begin\""));
            assert!(l[2].starts_with("{\"kind\":\"write_end\""));
            assert!(
                l[3].starts_with(&format!("{{\"kind\":\"{exit}\"")),
                "{}",
                l[3]
            );
            assert!(l[3].ends_with(r#""seq":4,"ret":-14}"#), "{}", l[3]);
        }
    }

    #[test]
    fn a_partial_record_gives_only_what_it_holds() {
        // A site whose call was not paired (its entry came before the trace), and a call the
        // end of tracing interrupted after its loads.
        let mut d = Decoder::new(FollFlags::FROM_6_3, false);
        d.decode_call(&call_rec(call::GUP, &[(stage::BEGIN, 5, Some(9))]));
        let kinds: Vec<Kind> = d.events().iter().map(|e| e.body.kind()).collect();
        assert_eq!(kinds, [Kind::ReadBegin]);
        d.decode_call(&call_rec(
            call::GUP,
            &[
                (stage::ENTER, 6, Some(8)),
                (stage::BEGIN, 7, Some(8)),
                (stage::END, 8, Some(8)),
            ],
        ));
        let kinds: Vec<Kind> = d.events().iter().map(|e| e.body.kind()).collect();
        assert_eq!(kinds, [Kind::GupEnter, Kind::ReadBegin, Kind::ReadRetry]);
        // A copy's return without its entry: no mm, no value.
        let mut r = call_rec(call::CPR, &[(stage::EXIT, 9, None)]);
        r.mm = 0;
        d.decode_call(&r);
        let e = &d.events()[0];
        assert_eq!((e.mm.as_str(), e.body.seq()), ("none", None));
        assert_eq!(d.unreadable_seq, 1);
        let mut s = String::new();
        e.write_json(&mut s);
        assert!(s.contains(r#""seq":null"#), "{s}");
    }

    #[test]
    fn mm_names_are_per_lifetime() {
        let mut d = Decoder::new(FollFlags::FROM_6_3, false);
        d.decode_call(&call_rec(call::CPR, &[(stage::ENTER, 1, Some(0))]));
        assert_eq!(d.events()[0].mm, "mm1");
        assert_eq!(d.events()[0].comm, "stress");
        let free = RawEvent {
            ts: 2,
            mm: MM,
            a: 0,
            b: 0,
            pid: 1,
            tid: 1,
            cpu: 0,
            seq: 0,
            flags: 0,
            probe: Probe::MmFree as u8,
            seq_ok: 0,
            anon: 0,
            _pad: 0,
            comm: [0; 16],
        };
        assert_eq!(d.feed(&Raw::Event(free)), Decoded::MmFreed);
        assert!(d.events().is_empty());
        d.decode_call(&call_rec(call::GUP, &[(stage::ENTER, 3, Some(0))]));
        assert_eq!(d.events()[0].mm, "mm2", "a reused address is a new mm");
    }

    #[test]
    fn records_of_unknown_calls_or_probes_are_invalid() {
        let mut d = Decoder::new(FollFlags::FROM_6_3, false);
        let mut r = call_rec(call::GUP, &[(stage::ENTER, 1, Some(0))]);
        r.func = 9;
        assert_eq!(d.decode_call(&r), Decoded::Invalid(9));
        // Copies have no back-out stage.
        let r = call_rec(call::CPR, &[(stage::FAIL, 1, Some(0))]);
        assert_eq!(d.decode_call(&r), Decoded::Invalid(call::CPR));
        assert!(d.events().is_empty());
    }

    #[test]
    fn cow_test_matches_is_cow_mapping() {
        assert!(is_cow(VM_MAYWRITE));
        assert!(!is_cow(VM_MAYWRITE | VM_SHARED));
        assert!(!is_cow(0));
    }

    fn raw(probe: Probe, mm: u64) -> RawEvent {
        RawEvent {
            ts: 5,
            mm,
            a: 0x1000,
            b: 0x3000,
            pid: 7,
            tid: 8,
            cpu: 1,
            seq: 4,
            flags: 0x73,
            probe: probe as u8,
            seq_ok: 1,
            anon: anon::YES,
            _pad: 0,
            comm: *b"stress\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn wide_records_become_fork_and_pin_syscall_events() {
        let mut d = Decoder::new(FollFlags::FROM_6_3, false);
        let fork = RawEvent {
            probe: Probe::Fork as u8,
            seq: 20,
            a: 0,
            ..raw(Probe::CprEnter, 0x1000)
        };
        let tail = RawTail {
            ts0: 3,
            c: 0x2000,
            seq0: 4,
            x: 99,
            seq0_ok: 1,
            what: bracket::MMAP_LOCK,
            _pad: [0; 6],
        };
        assert_eq!(d.decode_wide(&fork, &tail), Decoded::Events);
        let e = &d.events()[0];
        assert_eq!(e.mm, "mm1", "the parent's mm is named first");
        assert_eq!(
            e.body,
            Body::Fork {
                ts_before: 3,
                seq_before: Some(4),
                seq_after: Some(20),
                bracket: Bracket::MmapLock,
                child: 99,
                child_mm: Some("mm2".into()),
                ret: 0,
            }
        );
        let pin = RawEvent {
            probe: Probe::PinSyscall as u8,
            a: (-5i64) as u64,
            b: 4096,
            flags: 0,
            seq_ok: 0,
            ..raw(Probe::CprEnter, 0x1000)
        };
        let tail = RawTail {
            ts0: 2,
            c: 0,
            seq0: 6,
            x: u32::MAX,
            seq0_ok: 1,
            what: pin_sys::PREAD64,
            _pad: [0; 6],
        };
        assert_eq!(d.decode_wide(&pin, &tail), Decoded::Events);
        assert_eq!(
            d.events()[0].body,
            Body::PinSyscall {
                syscall: "pread64".into(),
                fd: -1,
                op: 0,
                count: 4096,
                ret: -5,
                ts_enter: 2,
                seq_enter: Some(6),
                seq_exit: None,
            }
        );
        assert_eq!(d.unreadable_seq, 1);
        assert_eq!(
            d.decode(&raw(Probe::Fork, 1)),
            Decoded::Invalid(Probe::Fork as u8),
            "a fork record without its tail is a version mismatch"
        );
    }
}
