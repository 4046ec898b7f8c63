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
    /// Tracepoint mode: one fork's bracket of the parent's seqcount (a [`RawWide`] record).
    Fork = 12,
    /// Tracepoint mode: one pinning system call, entry to exit (a [`RawWide`] record).
    PinSyscall = 13,
}

/// Number of probes, i.e. of loss counters.
pub const PROBE_COUNT: usize = 14;

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
        Probe::Fork,
        Probe::PinSyscall,
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
            12 => Probe::Fork,
            13 => Probe::PinSyscall,
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
            (4, b'f', b'k') => Probe::Fork,
            (11, b'p', b'l') => Probe::PinSyscall,
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
            Probe::Fork => "fork",
            Probe::PinSyscall => "pin_syscall",
        }
    }
}

/// One event in the ring buffer: `mm_free` on its own, and the first part of the tracepoint
/// mode's [`RawWide`] records (the calls of the kprobe and fentry modes travel as [`RawCall`]s).
/// `seq` is `mm->write_protect_seq.sequence` read by the probe; `seq_ok` is 0 when it could not
/// be read. `a`, `b`, `flags` and `anon` are as in [`RawCall`] where a record carries them.
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
    /// A call map was full: that call is reported event by event (a copy's exit then has no
    /// mm).
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
    /// The call whose record the site's event joins (one of [`call`]): the function the site
    /// is in.
    pub func: u8,
    /// Its place in that call (one of [`stage`]).
    pub stage: u8,
    pub _pad: [u8; 3],
    pub disp: i32,
}

/// The calls that are reported as one [`RawCall`] record each.
pub mod call {
    /// `copy_page_range`: entry, `write_begin`, `write_end`, return.
    pub const CPR: u8 = 0;
    /// `copy_hugetlb_page_range` (inside a `copy_page_range` of the same thread): entry, its
    /// own `write_begin`, `write_end`, return.
    pub const HUGETLB: u8 = 1;
    /// The GUP-fast function: entry, `read_begin`, `read_retry`, `retry_fail`, return.
    pub const GUP: u8 = 2;
}

/// The stages of a call, in the order a thread passes them: a record holds each at most once,
/// in this order (a stage that comes again, or out of order, starts a new record).
pub mod stage {
    pub const ENTER: u8 = 0;
    /// `write_begin`, `read_begin`.
    pub const BEGIN: u8 = 1;
    /// `write_end`, `read_retry`.
    pub const END: u8 = 2;
    /// `retry_fail`.
    pub const FAIL: u8 = 3;
    pub const EXIT: u8 = 4;
    /// Number of stages.
    pub const COUNT: usize = 5;
}

/// The probe that reports stage `stage` of a call of kind `func` (see [`call`], [`stage`]);
/// `None` for a pair that does not exist (copies have no `FAIL`).
pub const fn probe_of(func: u8, stage: u8) -> Option<Probe> {
    Some(match (func, stage) {
        (call::CPR, stage::ENTER) => Probe::CprEnter,
        (call::CPR, stage::EXIT) => Probe::CprExit,
        (call::HUGETLB, stage::ENTER) => Probe::HugetlbEnter,
        (call::HUGETLB, stage::EXIT) => Probe::HugetlbExit,
        (call::CPR | call::HUGETLB, stage::BEGIN) => Probe::WriteBegin,
        (call::CPR | call::HUGETLB, stage::END) => Probe::WriteEnd,
        (call::GUP, stage::ENTER) => Probe::GupEnter,
        (call::GUP, stage::BEGIN) => Probe::ReadBegin,
        (call::GUP, stage::END) => Probe::ReadRetry,
        (call::GUP, stage::FAIL) => Probe::RetryFail,
        (call::GUP, stage::EXIT) => Probe::GupExit,
        _ => return None,
    })
}

/// The stage a site probe reports; `None` for a function-level probe.
pub const fn site_stage(p: Probe) -> Option<u8> {
    Some(match p {
        Probe::WriteBegin | Probe::ReadBegin => stage::BEGIN,
        Probe::WriteEnd | Probe::ReadRetry => stage::END,
        Probe::RetryFail => stage::FAIL,
        _ => return None,
    })
}

/// One call of `copy_page_range`, `copy_hugetlb_page_range` or the GUP-fast function, with
/// every event it produced: each stage of [`stage`] whose bit is set in `present` happened,
/// on CPU `cpu[i]` at `ts[i]`, and read `seq[i]` (valid when its bit is set in `seq_ok`).
/// The eBPF side keeps it per thread while the call runs and puts it in the ring buffer once,
/// at the call's return (or when a stage would repeat); userspace expands it into the same
/// schema-1 lines one event per probe gave before. A record without `ENTER` is a call whose
/// entry was not paired (its entry came before the trace, was lost, or the map was full).
///
/// The entry's arguments, `ret` the return value, `mm` the mm all the stages are about (0 when
/// unknown: a copy's return seen without its entry):
///
/// | call         | `a`        | `b`       | `flags`            | `anon`       |
/// |--------------|------------|-----------|--------------------|--------------|
/// | cpr, hugetlb | vma start  | vma end   | vm_flags (low 32)  | one of [`anon`] |
/// | gup          | start      | nr_pages  | gup_flags          | -            |
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawCall {
    pub ts: [u64; stage::COUNT],
    pub mm: u64,
    pub a: u64,
    pub b: u64,
    pub ret: u64,
    pub seq: [u32; stage::COUNT],
    pub cpu: [u32; stage::COUNT],
    pub pid: u32,
    pub tid: u32,
    pub flags: u32,
    /// One of [`call`].
    pub func: u8,
    pub present: u8,
    pub seq_ok: u8,
    pub anon: u8,
    pub comm: [u8; TASK_COMM_LEN],
}

impl RawCall {
    /// An empty record (no stage present).
    pub const EMPTY: RawCall = RawCall {
        ts: [0; stage::COUNT],
        mm: 0,
        a: 0,
        b: 0,
        ret: 0,
        seq: [0; stage::COUNT],
        cpu: [0; stage::COUNT],
        pid: 0,
        tid: 0,
        flags: 0,
        func: 0,
        present: 0,
        seq_ok: 0,
        anon: 0,
        comm: [0; TASK_COMM_LEN],
    };
}

// The reader tells records apart by length.
const _: () = assert!(
    core::mem::size_of::<RawCall>() != core::mem::size_of::<RawEvent>()
        && core::mem::size_of::<RawCall>() != core::mem::size_of::<RawWide>()
        && core::mem::size_of::<RawEvent>() != core::mem::size_of::<RawWide>()
);

/// What a tracepoint-mode record carries besides its [`RawEvent`]; both travel as one
/// [`RawWide`] ring-buffer record. Field meaning depends on the probe:
///
/// | probe         | `ts0`                 | `seq0`      | `c`      | `x`       | `what`          |
/// |---------------|-----------------------|-------------|----------|-----------|-----------------|
/// | `Fork`        | when `seq0` was read  | seq before  | child mm | child pid | a [`bracket`]   |
/// | `PinSyscall`  | syscall entry         | seq at entry| -        | fd        | a [`pin_sys`]   |
///
/// The event's own `ts`/`seq` are the other end (after the copy, at syscall exit). For
/// `PinSyscall`, the event's `a` is the return value, `b` the count argument and `flags` the
/// operation (io_uring opcode, getsockopt optname); for `Fork`, `a` is the return value of a
/// fork that failed after copying (0 otherwise).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RawTail {
    pub ts0: u64,
    pub c: u64,
    pub seq0: u32,
    pub x: u32,
    /// 0 when `seq0` could not be read.
    pub seq0_ok: u8,
    pub what: u8,
    pub _pad: [u8; 6],
}

/// A ring-buffer record of the tracepoint-mode probes: longer than a [`RawEvent`], which it
/// starts with, so the reader tells the two apart by length.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawWide {
    pub ev: RawEvent,
    pub tail: RawTail,
}

/// How a fork's `seq_before`/`seq_after` were read ([`RawTail::what`] of a `Fork`).
pub mod bracket {
    /// At the parent's `mmap_lock` write acquisition and release in `dup_mmap`: exactly the
    /// copy, and no other fork of the mm can write the counter in between.
    pub const MMAP_LOCK: u8 = 0;
    /// At the clone syscall's entry and `sched_process_fork`: a wider window, which another
    /// thread's fork of the same mm may share.
    pub const SYSCALL: u8 = 1;
}

/// The pinning system calls tracepoint mode watches ([`RawTail::what`] of a `PinSyscall`),
/// and their x86-64 numbers. Reads and writes count only on a file opened with `O_DIRECT`;
/// `getsockopt` only at level `SOL_RDS`.
pub mod pin_sys {
    pub const READ: u8 = 0;
    pub const PREAD64: u8 = 1;
    pub const READV: u8 = 2;
    pub const PREADV: u8 = 3;
    pub const PREADV2: u8 = 4;
    pub const WRITE: u8 = 5;
    pub const PWRITE64: u8 = 6;
    pub const WRITEV: u8 = 7;
    pub const PWRITEV: u8 = 8;
    pub const PWRITEV2: u8 = 9;
    pub const IO_URING_REGISTER: u8 = 10;
    pub const GETSOCKOPT: u8 = 11;
    /// Number of values.
    pub const COUNT: usize = 12;

    /// (x86-64 syscall number, value) for every watched syscall.
    pub const NUMBERS: [(u64, u8); COUNT] = [
        (0, READ),
        (17, PREAD64),
        (19, READV),
        (295, PREADV),
        (327, PREADV2),
        (1, WRITE),
        (18, PWRITE64),
        (20, WRITEV),
        (296, PWRITEV),
        (328, PWRITEV2),
        (427, IO_URING_REGISTER),
        (55, GETSOCKOPT),
    ];

    pub const fn name(v: u8) -> &'static str {
        match v {
            READ => "read",
            PREAD64 => "pread64",
            READV => "readv",
            PREADV => "preadv",
            PREADV2 => "preadv2",
            WRITE => "write",
            PWRITE64 => "pwrite64",
            WRITEV => "writev",
            PWRITEV => "pwritev",
            PWRITEV2 => "pwritev2",
            IO_URING_REGISTER => "io_uring_register",
            GETSOCKOPT => "getsockopt",
            _ => "unknown",
        }
    }

    /// The value of a watched syscall number.
    pub const fn of(nr: u64) -> Option<u8> {
        let mut i = 0;
        while i < COUNT {
            if NUMBERS[i].0 == nr {
                return Some(NUMBERS[i].1);
            }
            i += 1;
        }
        None
    }
}

/// x86-64 numbers of the syscalls that create tasks (`clone`, `fork`, `vfork`, `clone3`).
pub const CLONE_SYSCALLS: [u64; 4] = [56, 57, 58, 435];
/// `SOL_RDS` (include/linux/socket.h).
pub const SOL_RDS: u64 = 276;
/// `O_DIRECT` on x86-64 (include/uapi/asm-generic/fcntl.h).
pub const O_DIRECT: u32 = 0o40000;

/// Layouts and tracepoint argument positions the tracepoint-mode programs need besides
/// [`Offsets`], resolved from BTF in userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TpConfig {
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `file.f_flags`
    pub file_flags: u32,
    /// Index of the `bool write` argument of the `mmap_lock_acquire_returned` and
    /// `mmap_lock_released` tracepoints (2 while they carried a memcg path, 1 since); `success`
    /// follows `write` in the first.
    pub lock_write_arg: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all these are repr(C) plain old data with explicit padding and no pointers.
    unsafe impl aya::Pod for super::RawEvent {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::SiteConfig {}
    unsafe impl aya::Pod for super::TpConfig {}
    unsafe impl aya::Pod for super::RawCall {}
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

    #[test]
    fn every_probe_of_a_call_has_one_stage() {
        let mut seen = [0u32; PROBE_COUNT];
        for f in [call::CPR, call::HUGETLB, call::GUP] {
            for st in 0..stage::COUNT as u8 {
                if let Some(p) = probe_of(f, st) {
                    seen[p as usize] += 1;
                    if let Some(s) = site_stage(p) {
                        assert_eq!(s, st, "{p:?}");
                    }
                }
            }
        }
        // The write sites serve both copy functions; everything else one call.
        for p in Probe::ALL {
            let want = match p {
                Probe::WriteBegin | Probe::WriteEnd => 2,
                Probe::MmFree | Probe::Fork | Probe::PinSyscall => 0,
                _ => 1,
            };
            assert_eq!(seen[p as usize], want, "{p:?}");
        }
        assert_eq!(core::mem::size_of::<RawCall>(), 144);
    }
}
