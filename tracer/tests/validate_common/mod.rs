//! Hand-written logs for the validator tests: a tiny builder that writes canonical schema-1
//! lines (through the schema's own writer), 10 ns apart.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tracer::{
    events::{Body, Event, Header, Kind, ProbeInfo, Record, Summary},
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
/// A kernel where only function entry/exit could be probed.
pub const FUNCTION_PROBES: &[&str] = &["cpr_enter", "cpr_exit", "gup_enter", "gup_exit"];

pub struct Log {
    pub lines: Vec<String>,
    pub ts: u64,
}

impl Log {
    pub fn new(probes: &[&str]) -> Log {
        let h = Record::Header(Header {
            schema: 1,
            tool: "test".into(),
            kernel: "test".into(),
            probes: probes
                .iter()
                .map(|p| ProbeInfo {
                    name: (*p).to_string(),
                    target: "x".into(),
                    offset: 0,
                })
                .collect(),
            extra: BTreeMap::new(),
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

    pub fn cpr_enter(&mut self, tid: u32, mm: &str, seq: u32, cow: bool) -> &mut Log {
        self.ev(
            tid,
            mm,
            Body::CprEnter {
                vma_start: 0x1000,
                vma_end: 0x2000,
                cow,
                seq,
            },
        )
    }
    pub fn cpr_exit(&mut self, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.ev(tid, mm, Body::CprExit { seq, ret: 0 })
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
                seq,
            },
        )
    }
    pub fn gup_exit(&mut self, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.ev(tid, mm, Body::GupExit { ret: 1, seq })
    }
    pub fn site(&mut self, kind: Kind, tid: u32, mm: &str, seq: u32) -> &mut Log {
        self.ev(tid, mm, Body::Site { kind, seq })
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
