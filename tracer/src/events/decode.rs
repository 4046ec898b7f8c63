//! Ring-buffer records → schema-1 events: names mm lifetimes, decodes FOLL_* flags and the
//! COW test, and keeps raw kernel addresses out of the log unless asked.
use std::collections::HashMap;

use tracer_common::{Probe, RawEvent, RawTail, anon, bracket, pin_sys};

use super::schema::{Body, Bracket, CopyFn, Event, Kind};
use crate::kernel::foll::FollFlags;

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
        if addr == 0 {
            return "none".to_owned();
        }
        if let Some(n) = self.live.get(&addr) {
            return n.clone();
        }
        self.next += 1;
        let n = format!("mm{}", self.next);
        self.live.insert(addr, n.clone());
        n
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
    Event(Event),
    /// An mm was freed (not written to the log).
    MmFreed,
    /// A record with an unknown probe id (a tracer/eBPF version mismatch).
    Invalid(u8),
}

pub struct Decoder {
    pub foll: FollFlags,
    pub names: MmNames,
    pub raw_pointers: bool,
    /// Events whose seqcount could not be read in the kernel (written with `"seq":null`).
    pub unreadable_seq: u64,
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

impl Decoder {
    pub fn new(foll: FollFlags, raw_pointers: bool) -> Decoder {
        Decoder {
            foll,
            names: MmNames::default(),
            raw_pointers,
            unreadable_seq: 0,
        }
    }

    pub fn decode(&mut self, raw: &RawEvent) -> Decoded {
        let Some(probe) = Probe::from_u8(raw.probe) else {
            return Decoded::Invalid(raw.probe);
        };
        if probe == Probe::MmFree {
            self.names.free(raw.mm);
            return Decoded::MmFreed;
        }
        if raw.seq_ok == 0 {
            self.unreadable_seq += 1;
        }
        let seq = (raw.seq_ok != 0).then_some(raw.seq);
        let copy_enter = |func| Body::CopyEnter {
            func,
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
        };
        let copy_exit = |func| Body::CopyExit {
            func,
            seq,
            ret: raw.a as i64,
        };
        let body = match probe {
            Probe::CprEnter => copy_enter(CopyFn::Cpr),
            Probe::HugetlbEnter => copy_enter(CopyFn::Hugetlb),
            Probe::CprExit => copy_exit(CopyFn::Cpr),
            Probe::HugetlbExit => copy_exit(CopyFn::Hugetlb),
            Probe::GupEnter => {
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
            Probe::GupExit => Body::GupExit {
                ret: raw.a as i64,
                seq,
            },
            Probe::WriteBegin
            | Probe::WriteEnd
            | Probe::ReadBegin
            | Probe::ReadRetry
            | Probe::RetryFail => match Kind::try_from(probe) {
                Ok(kind) => Body::Site { kind, seq },
                Err(_) => return Decoded::Invalid(raw.probe),
            },
            Probe::MmFree => return Decoded::MmFreed,
            // Only wide records (`decode_wide`) carry these.
            Probe::Fork | Probe::PinSyscall => return Decoded::Invalid(raw.probe),
        };
        Decoded::Event(Event {
            ts: raw.ts,
            cpu: raw.cpu,
            pid: raw.pid,
            tid: raw.tid,
            comm: comm(&raw.comm),
            mm: self.names.name(raw.mm),
            mm_addr: self.raw_pointers.then_some(raw.mm),
            body,
        })
    }
}

impl Decoder {
    /// A tracepoint-mode record: a [`RawEvent`] followed by its [`RawTail`].
    pub fn decode_wide(&mut self, raw: &RawEvent, tail: &RawTail) -> Decoded {
        let seq = |ok: u8, v: u32| (ok != 0).then_some(v);
        let after = seq(raw.seq_ok, raw.seq);
        let before = seq(tail.seq0_ok, tail.seq0);
        // The parent's mm is named before the child's.
        let mm = self.names.name(raw.mm);
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
                    child_mm: (tail.c != 0).then(|| self.names.name(tail.c)),
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
            // Every other probe writes a plain RawEvent; a wide one is a version mismatch.
            _ => return Decoded::Invalid(raw.probe),
        };
        self.unreadable_seq += u64::from(after.is_none()) + u64::from(before.is_none());
        Decoded::Event(Event {
            ts: raw.ts,
            cpu: raw.cpu,
            pid: raw.pid,
            tid: raw.tid,
            comm: comm(&raw.comm),
            mm,
            mm_addr: self.raw_pointers.then_some(raw.mm),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            flags: 0x73, // VM_READ|VM_WRITE|VM_MAYREAD|VM_MAYWRITE|VM_MAYEXEC: private, COW
            probe: probe as u8,
            seq_ok: 1,
            anon: anon::YES,
            _pad: 0,
            comm: *b"stress\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn mm_names_are_per_lifetime_and_hide_addresses() {
        let mut d = Decoder::new(FollFlags::FROM_6_3, false);
        let Decoded::Event(a) = d.decode(&raw(Probe::CprEnter, 0xffff_8880_0000_1000)) else {
            panic!()
        };
        assert_eq!(a.mm, "mm1");
        assert_eq!(a.mm_addr, None);
        assert_eq!(a.comm, "stress");
        assert!(matches!(
            a.body,
            Body::CopyEnter {
                func: CopyFn::Cpr,
                cow: true,
                anon: Some(true),
                seq: Some(4),
                ..
            }
        ));
        assert_eq!(
            d.decode(&raw(Probe::MmFree, 0xffff_8880_0000_1000)),
            Decoded::MmFreed
        );
        let Decoded::Event(b) = d.decode(&raw(Probe::GupEnter, 0xffff_8880_0000_1000)) else {
            panic!()
        };
        assert_eq!(b.mm, "mm2", "a reused address is a new mm");
        let mut line = String::new();
        b.write_json(&mut line);
        assert!(!line.contains("ffff8880"), "{line}");
    }

    #[test]
    fn cow_test_matches_is_cow_mapping() {
        assert!(is_cow(VM_MAYWRITE));
        assert!(!is_cow(VM_MAYWRITE | VM_SHARED));
        assert!(!is_cow(0));
    }

    #[test]
    fn hugetlb_lines_carry_their_own_kind() {
        let mut d = Decoder::new(FollFlags::FROM_6_3, true);
        let Decoded::Event(event) = d.decode(&raw(Probe::HugetlbEnter, 0x10)) else {
            panic!()
        };
        let mut s = String::new();
        event.write_json(&mut s);
        assert!(s.starts_with("{\"kind\":\"hugetlb_enter\""), "{s}");
        assert!(s.contains("\"mm_addr\":\"0x10\""));
        assert_eq!(
            d.decode(&RawEvent {
                probe: 200,
                ..raw(Probe::CprEnter, 1)
            }),
            Decoded::Invalid(200)
        );
    }

    #[test]
    fn an_unreadable_seq_is_null_and_counted() {
        let mut d = Decoder::new(FollFlags::FROM_6_3, false);
        let Decoded::Event(e) = d.decode(&RawEvent {
            seq_ok: 0,
            ..raw(Probe::ReadRetry, 0x10)
        }) else {
            panic!()
        };
        assert_eq!(e.body.seq(), None);
        assert_eq!(d.unreadable_seq, 1);
        let mut s = String::new();
        e.write_json(&mut s);
        assert!(s.ends_with("\"seq\":null}"), "{s}");
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
        let Decoded::Event(e) = d.decode_wide(&fork, &tail) else {
            panic!()
        };
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
        let Decoded::Event(e) = d.decode_wide(&pin, &tail) else {
            panic!()
        };
        assert_eq!(
            e.body,
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
            d.decode(&RawEvent {
                probe: Probe::Fork as u8,
                ..raw(Probe::CprEnter, 1)
            }),
            Decoded::Invalid(Probe::Fork as u8),
            "a fork record without its tail is a version mismatch"
        );
    }
}
