//! Kernel side of the tracer: kprobes on fork's page-table copy, GUP-fast, mm teardown and the
//! seqcount's own instruction sites, all feeding one ring buffer of `RawEvent`s. The same
//! function-level probes as fentry/fexit programs are in [`fentry`]; the tracepoint mode's
//! programs (fork brackets, pinning syscalls) in [`tracepoint`].
//!
//! Layouts come from userspace (BTF) through the `OFFSETS` global; nothing here knows a kernel
//! version. Every failed ring-buffer reservation is counted per probe in `LOST`.
//!
//! Diagnostics (a full pairing map, a seqcount that could not be read, a reservation that kept
//! failing) go to userspace through aya-log, rarely: each kind is counted per CPU and logged
//! only when its count reaches a power of 16 (1, 16, 256, …), so a condition that lasts costs
//! a handful of records (measured: 3 to 4 per kind and CPU over a second of forks with a full
//! pairing map), never one per event.
#![no_std]
#![no_main]

mod fentry;
mod tracepoint;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{kprobe, kretprobe, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::warn;
use tracer_common::{
    DIAG_COUNT, FIRST_SITE, Filter, Offsets, PROBE_COUNT, PROGRAM_SLOTS, Probe, RawEvent,
    SITE_SLOTS, SiteConfig, anon, diag, site_mode,
};

/// Set by userspace before load (aya `override_global`).
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    task_mm: 0,
    mm_seq: 0,
    vma_mm: 0,
    vma_flags: 0,
    vma_start: 0,
    vma_end: 0,
    vma_anon_vma: 0,
    cpr_vma_arg: 1,
    hugetlb_vma_arg: 3,
    gup_arg_is_end: 0,
};

#[unsafe(no_mangle)]
static FILTER: Filter = Filter {
    pid: 0,
    comm_enabled: 0,
    comm: [0; 16],
};

/// Wake the consumer only once this much data is waiting; below it, records are submitted
/// without a wakeup and userspace drains on a short timer. One wakeup per record costs more
/// than the record itself at high rates. Set by userspace (an eighth of the ring).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// Userspace sets the size with `set_max_entries` before load.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Failed reservations, per probe and CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_COUNT as u32, 0);

/// Runs of each program (see `tracer_common::PROGRAM_SLOTS`), per CPU, counted first thing,
/// before any filter: userspace compares them with the kprobes' hit counts.
#[map]
static RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROGRAM_SLOTS as u32, 0);

#[inline(always)]
fn ran(slot: u32) {
    if let Some(p) = RUNS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, so no concurrent writer.
        unsafe { *p += 1 };
    }
}

/// The source mm of an in-flight `copy_page_range`, by tid, for the return probe.
#[map]
pub(crate) static CPR_MM: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Same for `copy_hugetlb_page_range`, which runs inside `copy_page_range`.
#[map]
pub(crate) static HUGETLB_MM: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Diagnostics seen, per kind (`tracer_common::diag`) and CPU.
#[map]
static DIAGS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DIAG_COUNT as u32, 0);

/// Counts one diagnostic of `kind` reported by `probe`, and logs it when its count on this
/// CPU is a power of 16. A global BPF function (external linkage, scalar arguments, a scalar
/// result): the verifier checks it once, on its own, instead of along every path of every
/// probe that calls it (inlined, or as a static subprogram, the 6.1 verifier gave up on
/// `cpr_enter` after a million instructions). The probe is logged as `probe#N` (its
/// discriminant) and userspace puts its name in (`probes::BpfLog`), which keeps string copies
/// out of the programs.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_diag(kind: u32, probe: u32, tid: u32, mm: u64) -> u32 {
    let Some(p) = DIAGS.get_ptr_mut(kind) else {
        return 0;
    };
    // SAFETY: a per-CPU slot, so no concurrent writer.
    let n = unsafe {
        *p += 1;
        *p
    };
    if !(n.is_power_of_two() && n.trailing_zeros() % 4 == 0) {
        return 0;
    }
    // aya-log's macros take the program's context but do not use it (aya-log-ebpf 0.2: `let _
    // = ctx`), and a global function may only receive scalars: a unit stands in for it.
    let ctx = &();
    match kind {
        diag::PAIRING_FULL => warn!(
            ctx,
            "probe#{}: pairing map full: the exit of tid {} will carry no mm and a null seq (occurrence {} on this CPU)",
            probe,
            tid,
            n
        ),
        diag::UNREADABLE_SEQ => warn!(
            ctx,
            "probe#{}: unreadable seq: could not read the seqcount of mm {:x} (tid {}); its seq is null in the log (occurrence {} on this CPU)",
            probe,
            mm,
            tid,
            n
        ),
        _ => warn!(
            ctx,
            "probe#{}: ring buffer reservation failed 8 times in a row: event lost (occurrence {} on this CPU; the log's lost lines count them all)",
            probe,
            n
        ),
    }
    0
}

#[inline(always)]
fn diag(kind: u32, probe: Probe, tid: u32, mm: u64) {
    tracer_diag(kind, u32::from(probe as u8), tid, mm);
}

/// Instruction-level site configuration, one entry per `siteN` program.
#[map]
static SITES: Array<SiteConfig> = Array::with_max_entries(SITE_SLOTS as u32, 0);

#[inline(always)]
pub(crate) fn offsets() -> Offsets {
    // SAFETY: a plain read of a global that userspace fills in before load; volatile so the
    // compiler does not constant-fold the placeholder value.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
fn filter() -> Filter {
    // SAFETY: as for `offsets`.
    unsafe { core::ptr::read_volatile(&FILTER) }
}

pub(crate) struct Task {
    pid: u32,
    tid: u32,
    comm: [u8; 16],
}

/// Applies `--pid`/`--comm`; `None` means the event is filtered out.
#[inline(always)]
pub(crate) fn current_if_wanted() -> Option<Task> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let f = filter();
    if f.pid != 0 && f.pid != pid {
        return None;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if f.comm_enabled != 0 {
        let mut i = 0;
        while i < 16 {
            if comm[i] != f.comm[i] {
                return None;
            }
            if comm[i] == 0 {
                break;
            }
            i += 1;
        }
    }
    Some(Task { pid, tid, comm })
}

#[inline(always)]
pub(crate) fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel tolerates any address and fails cleanly.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

#[inline(always)]
pub(crate) fn read_u32(addr: u64) -> Option<u32> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel(addr as *const u32) }.ok()
}

#[inline(always)]
pub(crate) fn current_mm() -> u64 {
    // SAFETY: helper with no preconditions.
    let task = unsafe { bpf_get_current_task() };
    read_u64(task + offsets().task_mm as u64).unwrap_or(0)
}

#[inline(always)]
pub(crate) fn lost(probe: Probe) {
    if let Some(p) = LOST.get_ptr_mut(probe as u32) {
        // SAFETY: per-CPU slot, so no concurrent writer.
        unsafe { *p += 1 };
    }
}

/// Reads the seqcount and the clock back to back, so that `ts` says when `seq` was read (the
/// validator orders reads of different CPUs by it); the ring-buffer reservation comes after.
#[inline(always)]
pub(crate) fn seq_now(mm: u64) -> (Option<u32>, u64) {
    let seq = seq_of(mm);
    // SAFETY: helper with no preconditions.
    (seq, unsafe { bpf_ktime_get_ns() })
}

#[inline(always)]
fn read_now(addr: u64) -> (Option<u32>, u64) {
    let seq = read_u32(addr);
    // SAFETY: helper with no preconditions.
    (seq, unsafe { bpf_ktime_get_ns() })
}

/// Reserves and submits one record; counts a loss when the ring buffer is full.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit(
    task: &Task,
    probe: Probe,
    mm: u64,
    (seq, ts): (Option<u32>, u64),
    a: u64,
    b: u64,
    flags: u32,
    anon_vma: u8,
) {
    // A kprobe hit through int3 (instruction sites, functions not on an ftrace site) runs as
    // an NMI on x86, where the ring buffer only try-locks: another CPU reserving at the same
    // moment makes the reservation fail although there is room. That contention lasts a few
    // instructions, so a few more tries get the record through; only a full ring (or a lock
    // held throughout) counts as lost.
    let mut tries = 0;
    let mut entry = loop {
        if let Some(e) = EVENTS.reserve::<RawEvent>(0) {
            break e;
        }
        tries += 1;
        if tries == 8 {
            lost(probe);
            diag(diag::RESERVE_FAILED, probe, task.tid, mm);
            return;
        }
    };
    if seq.is_none() && probe != Probe::MmFree {
        diag(diag::UNREADABLE_SEQ, probe, task.tid, mm);
    }
    entry.write(RawEvent {
        ts,
        mm,
        a,
        b,
        pid: task.pid,
        tid: task.tid,
        // SAFETY: helper with no preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        seq: seq.unwrap_or(0),
        flags,
        probe: probe as u8,
        seq_ok: seq.is_some() as u8,
        anon: anon_vma,
        _pad: 0,
        comm: task.comm,
    });
    // SAFETY: as for `offsets`.
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    // BPF_RB_AVAIL_DATA
    let flags = if EVENTS.query(0) >= threshold {
        2 // BPF_RB_FORCE_WAKEUP
    } else {
        1 // BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}

#[inline(always)]
pub(crate) fn seq_of(mm: u64) -> Option<u32> {
    if mm == 0 {
        return None;
    }
    read_u32(mm + offsets().mm_seq as u64)
}

/// Entry of a page-table copy function: `vma` is its `src_vma` argument. Shared by the kprobe
/// and fentry programs.
#[inline(always)]
pub(crate) fn copy_enter_vma(vma: u64, probe: Probe, stash: &HashMap<u32, u64>) {
    let Some(task) = current_if_wanted() else {
        return;
    };
    let off = offsets();
    let mm = read_u64(vma + off.vma_mm as u64).unwrap_or(0);
    let start = read_u64(vma + off.vma_start as u64).unwrap_or(0);
    let end = read_u64(vma + off.vma_end as u64).unwrap_or(0);
    let vm_flags = read_u64(vma + off.vma_flags as u64).unwrap_or(0);
    let anon_vma = match read_u64(vma + off.vma_anon_vma as u64) {
        Some(0) => anon::NO,
        Some(_) => anon::YES,
        None => anon::UNREADABLE,
    };
    // A full map only loses the exit's mm; the exit then reports mm 0 and no seq.
    if stash.insert(&task.tid, &mm, 0).is_err() {
        diag(diag::PAIRING_FULL, probe, task.tid, mm);
    }
    emit(
        &task,
        probe,
        mm,
        seq_now(mm),
        start,
        end,
        vm_flags as u32,
        anon_vma,
    );
}

#[inline(always)]
fn copy_enter(ctx: &ProbeContext, vma_arg: u32, probe: Probe, stash: &HashMap<u32, u64>) {
    ran(probe as u32);
    let Some(vma) = arg_at(ctx, vma_arg) else {
        return;
    };
    copy_enter_vma(vma, probe, stash);
}

/// Return of a page-table copy function. Shared by the kretprobe and fexit programs.
#[inline(always)]
pub(crate) fn copy_exit_ret(ret: i64, probe: Probe, stash: &HashMap<u32, u64>) {
    let Some(task) = current_if_wanted() else {
        return;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let mm = unsafe { stash.get(&task.tid) }.copied().unwrap_or(0);
    let _ = stash.remove(&task.tid);
    emit(&task, probe, mm, seq_now(mm), ret as u64, 0, 0, 0);
}

#[inline(always)]
fn copy_exit(ctx: &RetProbeContext, probe: Probe, stash: &HashMap<u32, u64>) {
    ran(probe as u32);
    let ret: i64 = ctx.ret();
    copy_exit_ret(ret, probe, stash);
}

#[kprobe]
pub fn cpr_enter(ctx: ProbeContext) -> u32 {
    copy_enter(&ctx, offsets().cpr_vma_arg, Probe::CprEnter, &CPR_MM);
    0
}

#[kretprobe]
pub fn cpr_exit(ctx: RetProbeContext) -> u32 {
    copy_exit(&ctx, Probe::CprExit, &CPR_MM);
    0
}

#[kprobe]
pub fn hugetlb_enter(ctx: ProbeContext) -> u32 {
    copy_enter(
        &ctx,
        offsets().hugetlb_vma_arg,
        Probe::HugetlbEnter,
        &HUGETLB_MM,
    );
    0
}

#[kretprobe]
pub fn hugetlb_exit(ctx: RetProbeContext) -> u32 {
    copy_exit(&ctx, Probe::HugetlbExit, &HUGETLB_MM);
    0
}

/// Entry of the GUP-fast function, from its first three arguments. Shared by the kprobe and
/// fentry programs.
#[inline(always)]
pub(crate) fn gup_enter_args(start: u64, second: u64, flags: u64) {
    let Some(task) = current_if_wanted() else {
        return;
    };
    let nr_pages = if offsets().gup_arg_is_end != 0 {
        second.saturating_sub(start) >> 12
    } else {
        second
    };
    let mm = current_mm();
    emit(
        &task,
        Probe::GupEnter,
        mm,
        seq_now(mm),
        start,
        nr_pages,
        flags as u32,
        0,
    );
}

/// Return of the GUP-fast function. Shared by the kretprobe and fexit programs.
#[inline(always)]
pub(crate) fn gup_exit_ret(ret: i64) {
    let Some(task) = current_if_wanted() else {
        return;
    };
    let mm = current_mm();
    emit(&task, Probe::GupExit, mm, seq_now(mm), ret as u64, 0, 0, 0);
}

#[kprobe]
pub fn gup_enter(ctx: ProbeContext) -> u32 {
    ran(Probe::GupEnter as u32);
    let start: u64 = ctx.arg(0).unwrap_or(0);
    let second: u64 = ctx.arg(1).unwrap_or(0);
    let flags: u64 = ctx.arg(2).unwrap_or(0);
    gup_enter_args(start, second, flags);
    0
}

#[kretprobe]
pub fn gup_exit(ctx: RetProbeContext) -> u32 {
    ran(Probe::GupExit as u32);
    let ret: i64 = ctx.ret();
    gup_exit_ret(ret);
    0
}

/// The mm at `mm` is about to be freed (or, in tracepoint mode, torn down for good), so its
/// address may be reused. Not filtered: the last reference is often dropped by an unrelated
/// task, and userspace needs every free to keep mm names unique.
#[inline(always)]
pub(crate) fn mm_free_addr(mm: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let task = Task {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // SAFETY: helper with no preconditions.
    let ts = unsafe { bpf_ktime_get_ns() };
    emit(&task, Probe::MmFree, mm, (None, ts), 0, 0, 0, 0);
}

/// `__mmdrop(mm)`.
#[kprobe]
pub fn mm_free(ctx: ProbeContext) -> u32 {
    ran(Probe::MmFree as u32);
    let mm: u64 = ctx.arg(0).unwrap_or(0);
    mm_free_addr(mm);
    0
}

/// Reads the saved register at byte offset `off` of `pt_regs`. The offset is only known at run
/// time (it comes from userspace), and the verifier forbids loads through a ctx pointer with a
/// computed offset, so the value is copied with bpf_probe_read_kernel instead.
#[inline(always)]
fn regs_at(ctx: &ProbeContext, off: u64) -> Option<u64> {
    if off > 14 * 8 {
        return None;
    }
    read_u64((ctx.regs as u64).wrapping_add(off))
}

/// The `n`th argument (x86-64 SysV: rdi, rsi, rdx, rcx, r8, r9), `n` known only at run time.
#[inline(always)]
fn arg_at(ctx: &ProbeContext, n: u32) -> Option<u64> {
    // pt_regs offsets of di, si, dx, cx, r8, r9.
    let off = match n {
        0 => 112,
        1 => 104,
        2 => 96,
        3 => 88,
        4 => 72,
        5 => 64,
        _ => return None,
    };
    regs_at(ctx, off)
}

#[inline(always)]
fn site(ctx: &ProbeContext, slot: u32) {
    ran(FIRST_SITE + slot);
    let Some(cfg) = SITES.get(slot) else {
        return;
    };
    let Some(probe) = Probe::from_u8(cfg.probe) else {
        return;
    };
    let Some(task) = current_if_wanted() else {
        return;
    };
    let off = offsets();
    let (mm, read) = match cfg.mode {
        site_mode::MEMORY => {
            // `Reg` discriminants are pt_regs slots in order, 8 bytes each.
            let Some(base) = regs_at(ctx, u64::from(cfg.base) * 8) else {
                return;
            };
            let addr = base.wrapping_add(cfg.disp as i64 as u64);
            (addr.wrapping_sub(off.mm_seq as u64), read_now(addr))
        }
        site_mode::LOADED => {
            let Some(v) = regs_at(ctx, u64::from(cfg.base) * 8) else {
                return;
            };
            // SAFETY: helper with no preconditions.
            let ts = unsafe { bpf_ktime_get_ns() };
            (current_mm(), (Some(v as u32), ts))
        }
        _ => {
            let mm = current_mm();
            (mm, seq_now(mm))
        }
    };
    emit(&task, probe, mm, read, 0, 0, 0, 0);
}

macro_rules! site_slots {
    ($($name:ident = $slot:expr),* $(,)?) => {
        $(
            #[kprobe]
            pub fn $name(ctx: ProbeContext) -> u32 {
                site(&ctx, $slot);
                0
            }
        )*
    };
}

site_slots!(
    site0 = 0,
    site1 = 1,
    site2 = 2,
    site3 = 3,
    site4 = 4,
    site5 = 5,
    site6 = 6,
    site7 = 7
);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
