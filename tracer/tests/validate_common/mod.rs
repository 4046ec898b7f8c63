//! Hand-written logs for the validator tests: a tiny builder that writes canonical schema-1
//! lines (through the schema's own writer), 10 ns apart.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tracer::{
    events::{Body, CopyFn, Event, Header, Kind, ProbeInfo, Record, Summary},
    validate::{Options, Report, Rule, validate_reader},
};

pub const ALL_PROBES: &[&str] = &[
    "cpr_enter",
    "cpr_exit",
    "gup_enter",
    "gup_exit",
    "write_begin",
    "write_end",
    "read_begin",
    "read_retry",
    "retry_fail",
];
/// A tracepoint-mode log: (kind, tracepoint).
pub const TRACEPOINT_PROBES: &[(&str, &str)] = &[
    ("fork", "sys_enter"),
    ("pin_syscall", "sys_enter"),
    ("pin_syscall", "sys_exit"),
    ("fork", "mmap_lock_acquire_returned"),
    ("fork", "mmap_lock_released"),
    ("fork", "sched_process_fork"),
    ("mm_free", "exit_mmap"),
];
/// A kernel where only function entry/exit could be probed.
pub const FUNCTION_PROBES: &[&str] = &["cpr_enter", "cpr_exit", "gup_enter", "gup_exit"];

pub struct Log {
    pub lines: Vec<String>,
    pub ts: u64,
}

/// Discovery's account of a kernel whose code is intact, as the recorder writes it.
pub fn intact_discovery() -> serde_json::Value {
    serde_json::json!({
        "sides": {"write": "intact", "read": "intact"},
        "functions": [
            {"symbol": "copy_page_range", "role": "write", "required": true, "status": "intact",
             "defects": [], "reason": null, "sites": ["write_begin", "write_end"]},
            {"symbol": "gup_fast_fallback", "role": "read", "required": true, "status": "intact",
             "defects": [], "reason": null, "sites": ["read_begin", "read_retry", "retry_fail"]}
        ]
    })
}

/// The function a probe of this name attaches to.
fn target_of(probe: &str) -> &'static str {
    match probe {
        "cpr_enter" | "cpr_exit" | "write_begin" | "write_end" => "copy_page_range",
        "hugetlb_enter" | "hugetlb_exit" => "copy_hugetlb_page_range",
        _ => "gup_fast_fallback",
    }
}

impl Log {
    /// A log whose header lists `probes` and says the kernel's code is intact.
    pub fn new(probes: &[&str]) -> Log {
        Log::with_extra(
            probes,
            BTreeMap::from([("discovery".to_string(), intact_discovery())]),
        )
    }

    /// A log whose header lists `probes` (write sites in `copy_page_range`) with these extra
    /// header fields.
    pub fn with_extra(probes: &[&str], extra: BTreeMap<String, serde_json::Value>) -> Log {
        Log::with_probes(
            &probes
                .iter()
                .map(|p| (*p, target_of(p)))
                .collect::<Vec<_>>(),
            extra,
        )
    }

    /// A log whose header lists `(probe, target)` pairs.
    pub fn with_probes(probes: &[(&str, &str)], extra: BTreeMap<String, serde_json::Value>) -> Log {
        let h = Record::Header(Header {
            schema: 1,
            tool: "test".into(),
            kernel: "test".into(),
            probes: probes
                .iter()
                .map(|(p, t)| ProbeInfo {
                    name: (*p).to_string(),
                    target: (*t).to_string(),
                    offset: 0,
                })
                .collect(),
            extra,
        });
        let mut s = String::new();
        h.write_line(&mut s).unwrap();
        Log {
            lines: vec![s.trim_end().to_string()],
            ts: 0,
        }
    }

    pub fn ev(&mut self, tid: u32, mm: &str, body: Body) -> &mut Log {
        self.ts += 10;
        let e = Event {
            ts: self.ts,
            cpu: 0,
            pid: tid,
            tid,
            comm: format!("t{tid}"),
            mm: mm.into(),
            mm_addr: None,
            body,
        };
        let mut s = String::new();
        Record::Event(e).write_line(&mut s).unwrap();
        self.lines.push(s.trim_end().to_string());
        self
    }

    pub fn copy_enter(
        &mut self,
        func: CopyFn,
        tid: u32,
        mm: &str,
        seq: Option<u32>,
        cow: bool,
        anon: Option<bool>,
    ) -> &mut Log {
        self.ev(
            tid,
            mm,
            Body::CopyEnter {
                func,
                vma_start: 0x1000,
                vma_end: 0x2000,
                cow,
                anon,
                // A private (or, without cow, shared) read-write mapping; hugetlb's flag set.
                vm_flags: Some(match (func, cow) {
                    (CopyFn::Hugetlb, _) => 0x40_0073,
                    (_, true) => 0x73,
                    (_, false) => 0xfb,
                }),
                seq,
            },
        )
    }
    pub fn cpr_enter(&mut self, tid: u32, mm: &str, seq: u32, cow: bool) -> &mut Log {
        self.copy_enter(CopyFn::Cpr, tid, mm, Some(seq), cow, None)
    }
    pub fn cpr_exit(&mut self, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.copy_exit(CopyFn::Cpr, tid, mm, Some(seq))
    }
    pub fn copy_exit(&mut self, func: CopyFn, tid: u32, mm: &str, seq: Option<u32>) -> &mut Log {
        self.ev(tid, mm, Body::CopyExit { func, seq, ret: 0 })
    }
    pub fn gup_enter(&mut self, tid: u32, mm: &str, seq: u32, pin: bool) -> &mut Log {
        self.ev(
            tid,
            mm,
            Body::GupEnter {
                start: 0x1000,
                nr_pages: 1,
                flags: if pin { 0x80001 } else { 0x3 },
                pin,
                fast_only: false,
                longterm: false,
                seq: Some(seq),
            },
        )
    }
    pub fn gup_exit(&mut self, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.ev(
            tid,
            mm,
            Body::GupExit {
                ret: 1,
                seq: Some(seq),
            },
        )
    }
    pub fn site(&mut self, kind: Kind, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.ev(
            tid,
            mm,
            Body::Site {
                kind,
                seq: Some(seq),
            },
        )
    }
    /// A site event whose seq the probe could not read.
    pub fn site_unreadable(&mut self, kind: Kind, tid: u32, mm: &str) -> &mut Log {
        self.ev(tid, mm, Body::Site { kind, seq: None })
    }
    pub fn wb(&mut self, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.site(Kind::WriteBegin, tid, mm, seq)
    }
    pub fn we(&mut self, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.site(Kind::WriteEnd, tid, mm, seq)
    }
    pub fn rb(&mut self, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.site(Kind::ReadBegin, tid, mm, seq)
    }
    pub fn rr(&mut self, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.site(Kind::ReadRetry, tid, mm, seq)
    }
    pub fn rf(&mut self, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.site(Kind::RetryFail, tid, mm, seq)
    }
    pub fn lost(&mut self, count: u64) -> &mut Log {
        let mut s = String::new();
        Record::Lost {
            probe: "gup_enter".into(),
            count,
        }
        .write_line(&mut s)
        .unwrap();
        self.lines.push(s.trim_end().to_string());
        self
    }
    pub fn lost_probe(&mut self, probe: &str, count: u64) -> &mut Log {
        let mut s = String::new();
        Record::Lost {
            probe: probe.into(),
            count,
        }
        .write_line(&mut s)
        .unwrap();
        self.lines.push(s.trim_end().to_string());
        self
    }
    pub fn raw(&mut self, line: &str) -> &mut Log {
        self.lines.push(line.to_string());
        self
    }
    pub fn summary_lost(&mut self, lost: u64) -> &mut Log {
        let mut s = String::new();
        let mut m = BTreeMap::new();
        if lost > 0 {
            m.insert("gup_enter".to_string(), lost);
        }
        Record::Summary(Summary {
            events: 0,
            lost: m,
            duration_ns: self.ts,
            extra: BTreeMap::new(),
        })
        .write_line(&mut s)
        .unwrap();
        self.lines.push(s.trim_end().to_string());
        self
    }
    /// A tracepoint-mode `fork` whose bracket opened `dur` ns before this event.
    pub fn fork(
        &mut self,
        tid: u32,
        mm: &str,
        before: Option<u32>,
        after: Option<u32>,
        exact: bool,
        dur: u64,
    ) -> &mut Log {
        let ts_before = (self.ts + 10).saturating_sub(dur);
        self.ev(
            tid,
            mm,
            Body::Fork {
                ts_before,
                seq_before: before,
                seq_after: after,
                bracket: if exact {
                    tracer::events::Bracket::MmapLock
                } else {
                    tracer::events::Bracket::Syscall
                },
                child: tid + 1000,
                child_mm: Some(format!("{mm}-child")),
                ret: 0,
            },
        )
    }

    /// A tracepoint-mode `pin_syscall` that entered `dur` ns before this event.
    pub fn pin_syscall(&mut self, tid: u32, mm: &str, enter: u32, exit: u32, dur: u64) -> &mut Log {
        let ts_enter = (self.ts + 10).saturating_sub(dur);
        self.ev(
            tid,
            mm,
            Body::PinSyscall {
                syscall: "pread64".into(),
                fd: 3,
                op: 0,
                count: 4096,
                ret: 4096,
                ts_enter,
                seq_enter: Some(enter),
                seq_exit: Some(exit),
            },
        )
    }

    /// Advances the log's clock.
    pub fn wait(&mut self, ns: u64) -> &mut Log {
        self.ts += ns;
        self
    }

    pub fn summary(&mut self) -> &mut Log {
        self.summary_lost(0)
    }
    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
    pub fn report(&self) -> Report {
        validate_reader(self.text().as_bytes(), Options::default()).unwrap()
    }
}

/// The rules a report names, deduplicated.
pub fn rules(r: &Report) -> Vec<Rule> {
    let mut v: Vec<Rule> = r.violations.iter().map(|v| v.rule).collect();
    v.sort();
    v.dedup();
    v
}
