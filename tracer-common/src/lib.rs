//! Types shared by the eBPF programs and the userspace tracer.
//!
//! Everything here is `#[repr(C)]` plain data: the eBPF side writes these records into the
//! ring buffer and reads its configuration from globals, and userspace reads and writes the same
//! bytes. The `user` feature adds the `aya::Pod` impls userspace needs to move them through maps.
#![no_std]

/// Length of `task_struct.comm`.
pub const TASK_COMM_LEN: usize = 16;

/// Which probe produced a record. The discriminant doubles as the index into the per-probe loss
/// counters, so the order is part of the BPF/userspace contract.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    CprEnter = 0,
    CprExit = 1,
    HugetlbEnter = 2,
    HugetlbExit = 3,
    GupEnter = 4,
    GupExit = 5,
    MmFree = 6,
    WriteBegin = 7,
    WriteEnd = 8,
    ReadBegin = 9,
    ReadRetry = 10,
    RetryFail = 11,
}

/// Number of probes, i.e. of loss counters.
pub const PROBE_COUNT: usize = 12;

impl Probe {
    pub const ALL: [Probe; PROBE_COUNT] = [
        Probe::CprEnter,
        Probe::CprExit,
        Probe::HugetlbEnter,
        Probe::HugetlbExit,
        Probe::GupEnter,
        Probe::GupExit,
        Probe::MmFree,
        Probe::WriteBegin,
        Probe::WriteEnd,
        Probe::ReadBegin,
        Probe::ReadRetry,
        Probe::RetryFail,
    ];

    /// The probe with this discriminant. A `match`, not an index into [`Probe::ALL`]: the eBPF
    /// side calls it on a value read from a map, and the 6.1 verifier lost the bound of an
    /// indexed load once the program around it grew.
    pub const fn from_u8(v: u8) -> Option<Probe> {
        Some(match v {
            0 => Probe::CprEnter,
            1 => Probe::CprExit,
            2 => Probe::HugetlbEnter,
            3 => Probe::HugetlbExit,
            4 => Probe::GupEnter,
            5 => Probe::GupExit,
            6 => Probe::MmFree,
            7 => Probe::WriteBegin,
            8 => Probe::WriteEnd,
            9 => Probe::ReadBegin,
            10 => Probe::ReadRetry,
            11 => Probe::RetryFail,
            _ => return None,
        })
    }

    /// The probe with this [`name`](Probe::name): the inverse of `name`, for reading logs.
    #[inline]
    pub fn from_name(name: &[u8]) -> Option<Probe> {
        // Every event line of a log goes through here, so no search: length, first and last
        // byte tell the names apart (a test checks they still do), and the byte loop then
        // confirms the candidate against `name()`, the one table of names.
        let p = match (name.len(), *name.first()?, *name.last()?) {
            (9, b'c', b'r') => Probe::CprEnter,
            (8, b'c', b't') => Probe::CprExit,
            (13, b'h', b'r') => Probe::HugetlbEnter,
            (12, b'h', b't') => Probe::HugetlbExit,
            (9, b'g', b'r') => Probe::GupEnter,
            (8, b'g', b't') => Probe::GupExit,
            (7, b'm', b'e') => Probe::MmFree,
            (11, b'w', b'n') => Probe::WriteBegin,
            (9, b'w', b'd') => Probe::WriteEnd,
            (10, b'r', b'n') => Probe::ReadBegin,
            (10, b'r', b'y') => Probe::ReadRetry,
            (10, b'r', b'l') => Probe::RetryFail,
            _ => return None,
        };
        let n = p.name().as_bytes();
        (n.len() == name.len() && n.iter().zip(name).all(|(a, b)| a == b)).then_some(p)
    }

    /// The name used for this probe in logs and in the attach plan: the one name table of the
    /// tracer's vocabulary (event kinds take the names of the probes that report them).
    pub const fn name(self) -> &'static str {
        match self {
            Probe::CprEnter => "cpr_enter",
            Probe::CprExit => "cpr_exit",
            Probe::HugetlbEnter => "hugetlb_enter",
            Probe::HugetlbExit => "hugetlb_exit",
            Probe::GupEnter => "gup_enter",
            Probe::GupExit => "gup_exit",
            Probe::MmFree => "mm_free",
            Probe::WriteBegin => "write_begin",
            Probe::WriteEnd => "write_end",
            Probe::ReadBegin => "read_begin",
            Probe::ReadRetry => "read_retry",
            Probe::RetryFail => "retry_fail",
        }
    }
}

/// One record in the ring buffer. Field meaning depends on `probe`:
///
/// | probe            | `a`        | `b`       | `flags`            |
/// |------------------|------------|-----------|--------------------|
/// | cpr/hugetlb enter| vma start  | vma end   | vm_flags (low 32)  |
/// | cpr/hugetlb exit | return     | -         | -                  |
/// | gup_enter        | start      | nr_pages  | gup_flags          |
/// | gup_exit         | return     | -         | -                  |
/// | site probes      | -          | -         | -                  |
///
/// `seq` is `mm->write_protect_seq.sequence` read by the probe (for sites: at the accessed
/// address, at that instant); `seq_ok` is 0 when it could not be read. `anon` (copy entries
/// only) is one of [`anon`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawEvent {
    pub ts: u64,
    pub mm: u64,
    pub a: u64,
    pub b: u64,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub seq: u32,
    pub flags: u32,
    pub probe: u8,
    pub seq_ok: u8,
    pub anon: u8,
    pub _pad: u8,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Values of [`RawEvent::anon`]: whether the copied VMA has an `anon_vma` (fork copies its
/// page tables inside a write section when it also is a COW mapping).
pub mod anon {
    pub const NO: u8 = 0;
    pub const YES: u8 = 1;
    /// The VMA could not be read.
    pub const UNREADABLE: u8 = 2;
}

/// Kinds of eBPF-side diagnostics (indexes of the `DIAGS` counters). Each is logged through
/// aya-log when its per-CPU count reaches a power of 16.
pub mod diag {
    /// `copy_page_range`'s (or the hugetlb copy's) pairing map was full: the exit loses its mm.
    pub const PAIRING_FULL: u32 = 0;
    /// A probe could not read the seqcount: its event's seq is null.
    pub const UNREADABLE_SEQ: u32 = 1;
    /// The ring buffer refused a record on every retry: the event is lost (and counted).
    pub const RESERVE_FAILED: u32 = 2;
}

/// Number of diagnostic kinds.
pub const DIAG_COUNT: usize = 3;

/// Kernel structure offsets, resolved from BTF in userspace and handed to the programs as a
/// global (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.write_protect_seq` + `seqcount.sequence`
    pub mm_seq: u32,
    /// `vm_area_struct.vm_mm`
    pub vma_mm: u32,
    /// `vm_area_struct.vm_flags`
    pub vma_flags: u32,
    /// `vm_area_struct.vm_start`
    pub vma_start: u32,
    /// `vm_area_struct.vm_end`
    pub vma_end: u32,
    /// `vm_area_struct.anon_vma`
    pub vma_anon_vma: u32,
    /// Index of the `src_vma` argument of `copy_page_range`.
    pub cpr_vma_arg: u32,
    /// Index of the `src_vma` argument of `copy_hugetlb_page_range`.
    pub hugetlb_vma_arg: u32,
    /// 1 when the GUP-fast probe's second argument is `end` (`gup_fast`,
    /// `lockless_pages_from_mm`) rather than `nr_pages` (the functions they inline into).
    pub gup_arg_is_end: u32,
}

/// Filters applied in BPF before a record is reserved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this tgid, when non-zero.
    pub pid: u32,
    /// Compare `comm` when non-zero.
    pub comm_enabled: u32,
    /// NUL-padded command name.
    pub comm: [u8; TASK_COMM_LEN],
}

/// x86-64 `pt_regs` registers a site probe can read a base address from, in the kernel's
/// `struct pt_regs` order.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    R15 = 0,
    R14 = 1,
    R13 = 2,
    R12 = 3,
    Rbp = 4,
    Rbx = 5,
    R11 = 6,
    R10 = 7,
    R9 = 8,
    R8 = 9,
    Rax = 10,
    Rcx = 11,
    Rdx = 12,
    Rsi = 13,
    Rdi = 14,
}

/// Number of instruction-level site probe slots compiled into the eBPF object.
pub const SITE_SLOTS: usize = 8;

/// Programs that count their own runs (`RUNS`): the function-level ones by their `Probe`
/// discriminant (below `FIRST_SITE`), then one per site slot. Compared with the kernel's hit
/// count of the kprobe, the difference is runs the kernel skipped.
pub const PROGRAM_SLOTS: usize = FIRST_SITE as usize + SITE_SLOTS;

/// `RUNS` index of site slot 0 (the function-level probes come first).
pub const FIRST_SITE: u32 = Probe::WriteBegin as u32;

/// How a site probe obtains the seqcount value.
pub mod site_mode {
    /// A point in the code (`retry_fail`): read `current->mm->write_protect_seq` at that instant.
    pub const MARKER: u8 = 0;
    /// The probe sits on the accessing instruction: read `*(u32 *)(regs[base] + disp)` before it
    /// executes (for a write, the value before the increment); the mm is that address minus
    /// the seqcount's offset.
    pub const MEMORY: u8 = 1;
    /// The probe sits on the instruction after a load: the loaded value is the low 32 bits of
    /// `regs[base]`, exactly what the kernel read; the mm is `current->mm`.
    pub const LOADED: u8 = 2;
}

/// Configuration of one instruction-level site probe slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteConfig {
    /// A `Probe` discriminant (`WriteBegin`..=`RetryFail`).
    pub probe: u8,
    /// A `Reg` discriminant (see `mode`).
    pub base: u8,
    /// One of `site_mode`.
    pub mode: u8,
    pub _pad: u8,
    pub disp: i32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all these are repr(C) plain old data with explicit padding and no pointers.
    unsafe impl aya::Pod for super::RawEvent {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::SiteConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_and_names_round_trip() {
        for (i, p) in Probe::ALL.into_iter().enumerate() {
            assert_eq!(p as usize, i);
            assert_eq!(Probe::from_u8(p as u8), Some(p));
            assert_eq!(Probe::from_name(p.name().as_bytes()), Some(p));
        }
        assert_eq!(Probe::from_u8(PROBE_COUNT as u8), None);
        assert_eq!(Probe::from_name(b"nope"), None);
    }
}
