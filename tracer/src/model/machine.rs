//! The protocol as explicit step machines: one seqcount per mm, writers (fork's COW copy of
//! one VMA, `copy_page_range`) and readers (GUP-fast, `gup_fast`/`lockless_pages_from_mm` plus
//! the fallback in its caller). Every observable step is exactly one event kind of the log;
//! the unobservable steps (taking a pin in the page-table walk, fork's "is it pinned?" check
//! and its write-protect) emit nothing.
//!
//! Kernel semantics modelled (kernel.md §1, §5, §6): `raw_write_seqcount_begin/end` are plain
//! increments; `raw_read_seqcount` loads the value and GUP-fast returns 0 if it is odd;
//! `read_seqcount_retry` compares against the snapshot and GUP-fast unpins and returns 0 if it
//! moved; the slow path (not FOLL_FAST_ONLY) takes `mmap_lock`, which fork holds for writing
//! across the whole copy, so it never overlaps a copy.
use std::fmt;

use crate::events::Kind;

/// The protocol, and the broken variants whose counterexamples the explorer must find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Variant {
    /// The kernel's protocol since v5.11.
    Correct,
    /// GUP-fast loads the counter again but ignores a changed value (keeps its pins).
    NoRetry,
    /// GUP-fast goes on after loading an odd value.
    NoOddCheck,
    /// The write section ends before fork's page-table copy (check + write-protect) runs.
    UncoveredCopy,
    /// Readers use FOLL_GET: no seqcount check, and fork cannot see their references.
    NonPin,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Correct,
        Variant::NoRetry,
        Variant::NoOddCheck,
        Variant::UncoveredCopy,
        Variant::NonPin,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Variant::Correct => "correct",
            Variant::NoRetry => "no-retry",
            Variant::NoOddCheck => "no-odd-check",
            Variant::UncoveredCopy => "uncovered-copy",
            Variant::NonPin => "non-pin",
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            Variant::Correct => {
                "the kernel's protocol (odd check, retry check, write section around the copy)"
            }
            Variant::NoRetry => "GUP-fast ignores read_seqcount_retry's answer",
            Variant::NoOddCheck => "GUP-fast does not bail on an odd value",
            Variant::UncoveredCopy => "fork's write section does not cover the page-table copy",
            Variant::NonPin => "readers take FOLL_GET references instead of FOLL_PIN pins",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub variant: Variant,
    /// Forking threads of the same process (each copies the VMA once; mmap_lock serializes).
    pub writers: u8,
    /// Threads pinning the VMA's page through GUP-fast (FOLL_WRITE).
    pub readers: u8,
    /// FOLL_FAST_ONLY: no fallback to the slow path.
    pub fast_only: bool,
}

impl Config {
    pub fn new(variant: Variant) -> Self {
        Config {
            variant,
            writers: 1,
            readers: 1,
            fast_only: false,
        }
    }
}

/// Writer program counter: `copy_page_range` for one COW VMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WPc {
    CprEnter,
    WriteBegin,
    /// "Is the page maybe DMA-pinned?" (`page_needs_cow_for_dma` / `page_try_dup_anon_rmap`).
    Check,
    /// Write-protect the parent PTE and share the page with the child, or give the child a copy.
    Apply,
    WriteEnd,
    CprExit,
    Done,
}

/// Reader program counter: one GUP-fast call (`gup_fast_fallback` / `internal_get_user_pages_fast`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RPc {
    GupEnter,
    ReadBegin,
    /// The lockless page-table walk: pins the page if its PTE is writable.
    Pin,
    ReadRetry,
    /// The back-out path: unpin and return 0 (`retry_fail` event).
    RetryFail,
    /// The fast part returned fewer pages than asked: fall back unless FOLL_FAST_ONLY.
    Fallback,
    /// Slow GUP under mmap_lock (read): waits for fork, breaks COW if needed, pins.
    Slow,
    GupExit,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Writer {
    pub pc: WPc,
    /// Decision of the check: share (write-protect) or copy.
    pub share: bool,
    pub in_section: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reader {
    pub pc: RPc,
    /// Value loaded by `read_begin`.
    pub snap: u32,
    /// Holds a pin (or, for FOLL_GET, a reference) taken by the fast path.
    pub fast_pin: bool,
    /// That pin was taken while a write section was open.
    pub taken_in_section: bool,
    /// Fork write-protected the page and shared it with a child while this pin was held.
    pub shared_while_held: bool,
    pub slow_pin: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// `mm->write_protect_seq.sequence`.
    pub seq: u32,
    /// Writer holding mmap_lock for writing.
    pub lock: Option<u8>,
    /// The parent's PTE for the page is writable (not yet write-protected by a fork).
    pub pte_writable: bool,
    /// FOLL_PIN pins on the page, visible to fork's check.
    pub pins: u8,
    pub writers: Vec<Writer>,
    pub readers: Vec<Reader>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Who {
    Writer(u8),
    Reader(u8),
}

impl Who {
    /// Thread id used in generated logs.
    pub fn tid(self) -> u32 {
        match self {
            Who::Writer(i) => 1 + u32::from(i),
            Who::Reader(i) => 101 + u32::from(i),
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Writer(i) => write!(f, "fork[{}] (tid {})", i, self.tid()),
            Who::Reader(i) => write!(f, "gup[{}] (tid {})", i, self.tid()),
        }
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    CprEnter,
    WriteBegin,
    Check {
        share: bool,
    },
    Apply {
        share: bool,
        pinned_holders: u8,
    },
    WriteEnd,
    CprExit,
    GupEnter {
        pin: bool,
    },
    ReadBegin {
        bail: bool,
    },
    Pin {
        taken: bool,
        in_section: bool,
        pin: bool,
    },
    ReadRetry {
        moved: bool,
        backs_out: bool,
    },
    RetryFail,
    Fallback {
        slow: bool,
    },
    Slow {
        cow_break: bool,
    },
    GupExit {
        pages: u8,
        kept_fast: bool,
    },
}

impl What {
    /// The event this step emits, if it is observable.
    pub fn kind(self) -> Option<Kind> {
        Some(match self {
            What::CprEnter => Kind::CprEnter,
            What::WriteBegin => Kind::WriteBegin,
            What::WriteEnd => Kind::WriteEnd,
            What::CprExit => Kind::CprExit,
            What::GupEnter { .. } => Kind::GupEnter,
            What::ReadBegin { .. } => Kind::ReadBegin,
            What::ReadRetry { .. } => Kind::ReadRetry,
            What::RetryFail => Kind::RetryFail,
            What::GupExit { .. } => Kind::GupExit,
            What::Check { .. }
            | What::Apply { .. }
            | What::Pin { .. }
            | What::Fallback { .. }
            | What::Slow { .. } => {
                return None;
            }
        })
    }
}

/// One transition: who moved, what it did, and the counter before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub who: Who,
    pub what: What,
    pub seq_before: u32,
    pub seq_after: u32,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seq_before;
        let t = self.seq_after;
        write!(f, "{}: ", self.who)?;
        match self.what {
            What::CprEnter => write!(
                f,
                "cpr_enter: copy_page_range of the COW VMA starts (seq {s}; fork holds mmap_lock for writing)"
            ),
            What::WriteBegin => write!(f, "write_begin: raw_write_seqcount_begin, seq {s} -> {t}"),
            What::Check { share: true } => write!(
                f,
                "[copy] the page is not pinned: it will be write-protected and shared with the child"
            ),
            What::Check { share: false } => write!(
                f,
                "[copy] the page may be pinned: the child will get its own copy"
            ),
            What::Apply {
                share: true,
                pinned_holders: 0,
            } => write!(
                f,
                "[copy] write-protects the parent PTE; the page is now shared with the child"
            ),
            What::Apply {
                share: true,
                pinned_holders: n,
            } => write!(
                f,
                "[copy] write-protects the parent PTE and shares the page with the child, although {n} GUP-fast pin(s) on it are held: DMA now targets the child's page"
            ),
            What::Apply { share: false, .. } => write!(
                f,
                "[copy] copies the page for the child; the parent PTE stays writable"
            ),
            What::WriteEnd => write!(f, "write_end: raw_write_seqcount_end, seq {s} -> {t}"),
            What::CprExit => write!(f, "cpr_exit: copy done (seq {s}); mmap_lock released"),
            What::GupEnter { pin: true } => write!(
                f,
                "gup_enter: pin_user_pages_fast(FOLL_PIN|FOLL_WRITE) (seq {s})"
            ),
            What::GupEnter { pin: false } => write!(
                f,
                "gup_enter: get_user_pages_fast(FOLL_GET|FOLL_WRITE), no seqcount check (seq {s})"
            ),
            What::ReadBegin { bail: true } => write!(
                f,
                "read_begin: raw_read_seqcount loads {s}, odd: return 0 (fork is copying)"
            ),
            What::ReadBegin { bail: false } if s & 1 == 1 => write!(
                f,
                "read_begin: raw_read_seqcount loads {s}, odd, but goes on"
            ),
            What::ReadBegin { bail: false } => write!(f, "read_begin: raw_read_seqcount loads {s}"),
            What::Pin {
                taken: true,
                in_section: true,
                pin: false,
            } => write!(
                f,
                "[walk] takes a page reference (not a pin: fork cannot see it) while a write section is open (seq {s})"
            ),
            What::Pin {
                taken: true,
                pin: false,
                ..
            } => write!(
                f,
                "[walk] takes a page reference (not a pin: fork cannot see it)"
            ),
            What::Pin {
                taken: true,
                in_section: true,
                ..
            } => write!(
                f,
                "[walk] pins the page (PTE writable) while a write section is open (seq {s})"
            ),
            What::Pin {
                taken: true,
                in_section: false,
                ..
            } => write!(f, "[walk] pins the page (PTE writable)"),
            What::Pin { taken: false, .. } => write!(f, "[walk] PTE write-protected: pins nothing"),
            What::ReadRetry {
                moved: true,
                backs_out: true,
            } => write!(f, "read_retry: loads {s}, changed: must unpin"),
            What::ReadRetry {
                moved: true,
                backs_out: false,
            } => write!(
                f,
                "read_retry: loads {s}, changed, but the answer is ignored: pins kept"
            ),
            What::ReadRetry { moved: false, .. } => {
                write!(f, "read_retry: loads {s}, unchanged: pins kept")
            }
            What::RetryFail => write!(f, "retry_fail: unpins and returns 0"),
            What::Fallback { slow: true } => {
                write!(f, "fast part got nothing: falls back to slow GUP")
            }
            What::Fallback { slow: false } => {
                write!(f, "fast part got nothing: FOLL_FAST_ONLY, no fallback")
            }
            What::Slow { cow_break: true } => write!(
                f,
                "[slow] under mmap_lock: breaks COW (new private page) and pins it"
            ),
            What::Slow { cow_break: false } => write!(f, "[slow] under mmap_lock: pins the page"),
            What::GupExit {
                pages,
                kept_fast: true,
            } => write!(
                f,
                "gup_exit: returns {pages}, keeping the pin taken by GUP-fast"
            ),
            What::GupExit { pages, .. } => write!(f, "gup_exit: returns {pages}"),
        }
    }
}

/// A broken safety property, for one reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// A FOLL_PIN GUP-fast returned keeping a pin it took while a COW write section was open.
    PinTakenInSection(u8),
    /// It returned keeping a pin on a page that fork write-protected and shared with the child
    /// while the pin was held (the 2020 race).
    PinnedPageShared(u8),
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::PinTakenInSection(r) => write!(
                f,
                "{} kept a pin it took while a COW write section of the same mm was open",
                Who::Reader(*r)
            ),
            Broken::PinnedPageShared(r) => write!(
                f,
                "{} kept a pin on a page that fork write-protected and shared with the child while it was pinned",
                Who::Reader(*r)
            ),
        }
    }
}

impl State {
    pub fn initial(cfg: &Config) -> State {
        State {
            seq: 0,
            lock: None,
            pte_writable: true,
            pins: 0,
            writers: vec![
                Writer {
                    pc: WPc::CprEnter,
                    share: false,
                    in_section: false,
                };
                usize::from(cfg.writers)
            ],
            readers: vec![
                Reader {
                    pc: RPc::GupEnter,
                    snap: 0,
                    fast_pin: false,
                    taken_in_section: false,
                    shared_while_held: false,
                    slow_pin: false,
                };
                usize::from(cfg.readers)
            ],
        }
    }

    pub fn done(&self) -> bool {
        self.writers.iter().all(|w| w.pc == WPc::Done)
            && self.readers.iter().all(|r| r.pc == RPc::Done)
    }

    /// Threads in the middle of their call or copy (started and not done).
    pub fn in_flight(&self) -> impl Iterator<Item = Who> + '_ {
        let ws = self.writers.iter().enumerate().filter_map(|(i, w)| {
            let i = u8::try_from(i).ok()?;
            (!matches!(w.pc, WPc::CprEnter | WPc::Done)).then_some(Who::Writer(i))
        });
        let rs = self.readers.iter().enumerate().filter_map(|(i, r)| {
            let i = u8::try_from(i).ok()?;
            (!matches!(r.pc, RPc::GupEnter | RPc::Done)).then_some(Who::Reader(i))
        });
        ws.chain(rs)
    }

    /// Threads that can move now.
    pub fn enabled(&self) -> impl Iterator<Item = Who> + '_ {
        let ws = self.writers.iter().enumerate().filter_map(|(i, w)| {
            let i = u8::try_from(i).ok()?;
            let blocked = w.pc == WPc::CprEnter && self.lock.is_some();
            (w.pc != WPc::Done && !blocked).then_some(Who::Writer(i))
        });
        let rs = self.readers.iter().enumerate().filter_map(|(i, r)| {
            let i = u8::try_from(i).ok()?;
            let blocked = r.pc == RPc::Slow && self.lock.is_some();
            (r.pc != RPc::Done && !blocked).then_some(Who::Reader(i))
        });
        ws.chain(rs)
    }

    /// The property, checked on every reachable state.
    pub fn broken(&self) -> Option<Broken> {
        for (i, r) in self.readers.iter().enumerate() {
            let Ok(i) = u8::try_from(i) else { continue };
            if r.pc == RPc::Done && r.fast_pin {
                if r.taken_in_section {
                    return Some(Broken::PinTakenInSection(i));
                }
                if r.shared_while_held {
                    return Some(Broken::PinnedPageShared(i));
                }
            }
        }
        None
    }

    /// The damage of the 2020 race: a pin kept on a page fork shared with the child.
    pub fn damage(&self) -> Option<Broken> {
        self.readers.iter().enumerate().find_map(|(i, r)| {
            let i = u8::try_from(i).ok()?;
            (r.pc == RPc::Done && r.fast_pin && r.shared_while_held)
                .then_some(Broken::PinnedPageShared(i))
        })
    }

    /// Moves `who` one step. Returns `None` if it cannot move.
    pub fn step(&self, cfg: &Config, who: Who) -> Option<(State, Step)> {
        let mut n = self.clone();
        let before = self.seq;
        let v = cfg.variant;
        let what = match who {
            Who::Writer(i) => {
                let w = n.writers.get_mut(usize::from(i))?;
                match w.pc {
                    WPc::CprEnter => {
                        if n.lock.is_some() {
                            return None;
                        }
                        n.lock = Some(i);
                        w.pc = WPc::WriteBegin;
                        What::CprEnter
                    }
                    WPc::WriteBegin => {
                        n.seq = n.seq.wrapping_add(1);
                        w.in_section = true;
                        w.pc = if v == Variant::UncoveredCopy {
                            WPc::WriteEnd
                        } else {
                            WPc::Check
                        };
                        What::WriteBegin
                    }
                    WPc::Check => {
                        w.share = n.pins == 0;
                        w.pc = WPc::Apply;
                        What::Check { share: w.share }
                    }
                    WPc::Apply => {
                        let share = w.share;
                        w.pc = if v == Variant::UncoveredCopy {
                            WPc::CprExit
                        } else {
                            WPc::WriteEnd
                        };
                        let mut holders = 0u8;
                        if share {
                            n.pte_writable = false;
                            for r in n.readers.iter_mut().filter(|r| r.fast_pin) {
                                r.shared_while_held = true;
                                holders = holders.saturating_add(1);
                            }
                        }
                        What::Apply {
                            share,
                            pinned_holders: holders,
                        }
                    }
                    WPc::WriteEnd => {
                        n.seq = n.seq.wrapping_add(1);
                        w.in_section = false;
                        w.pc = if v == Variant::UncoveredCopy {
                            WPc::Check
                        } else {
                            WPc::CprExit
                        };
                        What::WriteEnd
                    }
                    WPc::CprExit => {
                        n.lock = None;
                        w.pc = WPc::Done;
                        What::CprExit
                    }
                    WPc::Done => return None,
                }
            }
            Who::Reader(i) => {
                let pin = v != Variant::NonPin;
                let in_section = n.writers.iter().any(|w| w.in_section);
                let seq = n.seq;
                let r = n.readers.get_mut(usize::from(i))?;
                match r.pc {
                    RPc::GupEnter => {
                        r.pc = if pin { RPc::ReadBegin } else { RPc::Pin };
                        What::GupEnter { pin }
                    }
                    RPc::ReadBegin => {
                        r.snap = seq;
                        let bail = seq & 1 == 1 && v != Variant::NoOddCheck;
                        r.pc = if bail { RPc::Fallback } else { RPc::Pin };
                        What::ReadBegin { bail }
                    }
                    RPc::Pin => {
                        let taken = n.pte_writable;
                        if taken {
                            r.fast_pin = true;
                            r.taken_in_section = in_section;
                            if pin {
                                n.pins = n.pins.saturating_add(1);
                            }
                        }
                        r.pc = if pin {
                            RPc::ReadRetry
                        } else if taken {
                            RPc::GupExit
                        } else {
                            RPc::Fallback
                        };
                        What::Pin {
                            taken,
                            in_section,
                            pin,
                        }
                    }
                    RPc::ReadRetry => {
                        let moved = seq != r.snap;
                        let backs_out = moved && v != Variant::NoRetry;
                        r.pc = if backs_out {
                            RPc::RetryFail
                        } else if r.fast_pin {
                            RPc::GupExit
                        } else {
                            RPc::Fallback
                        };
                        What::ReadRetry { moved, backs_out }
                    }
                    RPc::RetryFail => {
                        if r.fast_pin {
                            r.fast_pin = false;
                            r.taken_in_section = false;
                            r.shared_while_held = false;
                            n.pins = n.pins.saturating_sub(1);
                        }
                        r.pc = RPc::Fallback;
                        What::RetryFail
                    }
                    RPc::Fallback => {
                        let slow = !cfg.fast_only;
                        r.pc = if slow { RPc::Slow } else { RPc::GupExit };
                        What::Fallback { slow }
                    }
                    RPc::Slow => {
                        if n.lock.is_some() {
                            return None;
                        }
                        let cow_break = !n.pte_writable;
                        n.pte_writable = true;
                        r.slow_pin = true;
                        if pin {
                            n.pins = n.pins.saturating_add(1);
                        }
                        r.pc = RPc::GupExit;
                        What::Slow { cow_break }
                    }
                    RPc::GupExit => {
                        r.pc = RPc::Done;
                        What::GupExit {
                            pages: u8::from(r.fast_pin || r.slow_pin),
                            kept_fast: r.fast_pin,
                        }
                    }
                    RPc::Done => return None,
                }
            }
        };
        let step = Step {
            who,
            what,
            seq_before: before,
            seq_after: n.seq,
        };
        Some((n, step))
    }
}
