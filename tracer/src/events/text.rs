//! Events as people read them, one line each: the TUI's event tail and `tracer record` on a
//! terminal print the same words (like BCC tools: time, task, what happened, its values).
use std::fmt::Write as _;

use super::{Body, Event};
use crate::kernel::foll::FollFlags;

/// The parts of one event's line, so a screen can style them separately.
pub struct EventText {
    /// Seconds since the first event, µs precision: `   2.439933`.
    pub time: String,
    /// `comm[tid] mm`.
    pub task: String,
    pub kind: &'static str,
    /// `seq=N`, or `seq=?` when the probe could not read it.
    pub seq: String,
    /// The value is odd: a write section was open (screens highlight it).
    pub odd: bool,
    /// The decoded payload: VMA range and flags, GUP arguments, return values.
    pub detail: String,
}

impl EventText {
    /// `foll`: the FOLL_* table of the kernel's era, to name the GUP flags the recorder did
    /// not decode itself (WRITE, GET).
    pub fn new(e: &Event, first_ts: u64, foll: Option<&FollFlags>) -> EventText {
        let t = e.ts.saturating_sub(first_ts);
        let seq = e.body.seq();
        let detail = match &e.body {
            Body::CopyEnter {
                vma_start,
                vma_end,
                cow,
                anon,
                ..
            } => format!(
                "vma {vma_start:#x}-{vma_end:#x}{}{}",
                if *cow { " cow" } else { "" },
                if *anon == Some(true) { " anon" } else { "" }
            ),
            Body::CopyExit { ret, .. } | Body::GupExit { ret, .. } => format!("ret={ret}"),
            Body::GupEnter {
                start,
                nr_pages,
                flags,
                pin,
                fast_only,
                longterm,
                ..
            } => {
                // The probe decoded pin/fast_only/longterm at record time; WRITE and GET come
                // from the raw value with the FOLL_* table of the kernel's era.
                let mut d = foll.map(|t| t.decode(*flags)).unwrap_or_default();
                d.pin = *pin;
                d.fast_only = *fast_only;
                d.longterm = *longterm;
                format!("{start:#x} nr={nr_pages} {} ({flags:#x})", d.names())
            }
            Body::Site { .. } => String::new(),
            Body::Fork {
                seq_before,
                seq_after,
                bracket,
                child,
                child_mm,
                ret,
                ..
            } => {
                let v = |s: &Option<u32>| s.map_or_else(|| "?".to_owned(), |v| v.to_string());
                let d = match (seq_before, seq_after) {
                    (Some(a), Some(b)) => format!(" (+{})", b.wrapping_sub(*a) as i32),
                    _ => String::new(),
                };
                let who = if *child == 0 {
                    format!("failed ret={ret}")
                } else {
                    format!("child {child} {}", child_mm.as_deref().unwrap_or("?"))
                };
                format!(
                    "{}→{}{d} {who} [{}]",
                    v(seq_before),
                    v(seq_after),
                    bracket.as_str()
                )
            }
            Body::PinSyscall {
                syscall,
                fd,
                op,
                ret,
                seq_enter,
                ..
            } => format!(
                "{syscall} fd={fd} op={op} ret={ret} seq at entry {}",
                seq_enter.map_or_else(|| "?".to_owned(), |v| v.to_string())
            ),
        };
        EventText {
            time: format!("{:>4}.{:06}", t / 1_000_000_000, t % 1_000_000_000 / 1_000),
            task: format!("{}[{}] {}", e.comm, e.tid, e.mm),
            kind: e.body.kind().as_str(),
            seq: seq.map_or_else(|| "seq=?".to_owned(), |v| format!("seq={v}")),
            odd: seq.is_some_and(|v| v & 1 == 1),
            detail,
        }
    }

    /// The whole line, unstyled, without a newline.
    pub fn plain(&self) -> String {
        let mut s = String::with_capacity(96);
        let _ = write!(s, "{} {} {} {}", self.time, self.task, self.kind, self.seq);
        if !self.detail.is_empty() {
            s.push(' ');
            s.push_str(&self.detail);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Kind;

    #[test]
    fn one_readable_line_per_event() {
        let e = Event {
            ts: 2_500_000_123,
            cpu: 0,
            pid: 5,
            tid: 6,
            comm: "fio".into(),
            mm: "mm7".into(),
            mm_addr: None,
            body: Body::GupEnter {
                start: 0x7f00_0000_1000,
                nr_pages: 16,
                flags: 0x80101,
                pin: true,
                fast_only: false,
                longterm: true,
                seq: Some(3),
            },
        };
        let t = EventText::new(&e, 500_000_000, Some(&FollFlags::FROM_6_3));
        assert!(t.odd);
        assert_eq!(
            t.plain(),
            "   2.000000 fio[6] mm7 gup_enter seq=3 0x7f0000001000 nr=16 PIN|WRITE|LONGTERM (0x80101)"
        );
        let site = Event {
            body: Body::Site {
                kind: Kind::ReadRetry,
                seq: None,
            },
            ..e
        };
        assert_eq!(
            EventText::new(&site, 500_000_000, None).plain(),
            "   2.000000 fio[6] mm7 read_retry seq=?"
        );
    }
}
