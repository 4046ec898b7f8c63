//! Kernel side of the tracer: kprobes on fork's page-table copy, GUP-fast, mm teardown and the
//! seqcount's own instruction sites, all feeding one ring buffer. The same function-level
//! probes as fentry/fexit programs are in [`fentry`]; the tracepoint mode's programs (fork
//! brackets, pinning syscalls) in [`tracepoint`].
//!
//! **One record per call.** A call of `copy_page_range`, `copy_hugetlb_page_range` or the
//! GUP-fast function is kept per thread in a map (`CPR_CALLS`, `HUGETLB_CALLS`, `GUP_CALLS`,
//! by tid) while it runs: its entry creates a `RawCall`, each instruction site of that
//! function writes its own stage into it (time, CPU, value), and the return adds the last
//! stage and puts the whole record into the ring buffer at once. Userspace expands it into
//! the lines one event per probe gave (`events::decode`). That is one ring-buffer record per
//! call instead of one per event, and no reservation at all in the site probes. A thread's
//! slot is kept from call to call and removed when the thread exits (`task_exit`), so a call
//! costs a map lookup, not an insert and a delete. Nothing is dropped on the way: a stage
//! that would repeat (or come out of order) first sends what the record holds; a site, or a
//! return, of a thread with no open call (its entry came before the trace, was not run, or
//! found the map full) is sent on its own; an entry, or a thread's exit, that finds a call
//! still open (a return that was never seen) sends it first; userspace reads what is still
//! open when tracing stops.
//!
//! Layouts come from userspace (BTF) through the `OFFSETS` global, and the site slots'
//! configuration through `SITE_CFG`; nothing here knows a kernel version. Both are read-only
//! data fixed before load, so the verifier knows their values and prunes what a slot does not
//! use. Every failed ring-buffer reservation is counted in `LOST`, under the probe of each
//! event it carried.
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
    macros::{kprobe, kretprobe, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use aya_log_ebpf::warn;
use tracer_common::{
    DIAG_COUNT, FIRST_SITE, Filter, Offsets, PROBE_COUNT, PROGRAM_SLOTS, Probe, RawCall, RawEvent,
    SITE_SLOTS, SiteConfig, anon, call, diag, probe_of, site_mode, stage,
};

/// Set by userspace before load (aya `override_global`): one entry per `siteN` program.
#[unsafe(no_mangle)]
static SITE_CFG: [SiteConfig; SITE_SLOTS] = [SiteConfig {
    probe: 0,
    base: 0,
    mode: 0,
    func: 0,
    stage: 0,
    _pad: [0; 3],
    disp: 0,
}; SITE_SLOTS];

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
            "probe#{}: pairing map full: the call of tid {} is reported event by event, and a copy's exit then carries no mm and a null seq (occurrence {} on this CPU)",
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

/// Reads one field of a global that userspace fills in before load; volatile so the
/// compiler does not constant-fold the placeholder value, and one field so that a program
/// loads only what it uses.
macro_rules! ro {
    ($place:expr) => {
        // SAFETY: a plain read of an immutable global.
        unsafe { core::ptr::read_volatile(&raw const $place) }
    };
}

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
    let want = ro!(FILTER.pid);
    if want != 0 && want != pid {
        return None;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if ro!(FILTER.comm_enabled) != 0 {
        let f = filter();
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
    read_u64(task + u64::from(ro!(OFFSETS.task_mm))).unwrap_or(0)
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

#[inline(always)]
pub(crate) fn seq_of(mm: u64) -> Option<u32> {
    if mm == 0 {
        return None;
    }
    read_u32(mm + u64::from(ro!(OFFSETS.mm_seq)))
}

/// Each thread's call slot, by tid (see the crate docs): `present` 0 when no call is open. A
/// slot is made at a thread's first call and kept for its later ones (a map update and delete
/// per call would cost more than the rest of the probe), until the thread exits
/// (`task_exit`). A full map reports the calls of threads without a slot event by event.
#[map]
pub(crate) static CPR_CALLS: HashMap<u32, RawCall> = HashMap::with_max_entries(8192, 0);
#[map]
pub(crate) static HUGETLB_CALLS: HashMap<u32, RawCall> = HashMap::with_max_entries(1024, 0);
#[map]
pub(crate) static GUP_CALLS: HashMap<u32, RawCall> = HashMap::with_max_entries(8192, 0);

/// `bpf_map_update_elem` flag.
const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn calls(func: u8) -> &'static HashMap<u32, RawCall> {
    match func {
        call::CPR => &CPR_CALLS,
        call::HUGETLB => &HUGETLB_CALLS,
        _ => &GUP_CALLS,
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper with no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn tid_now() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Wakes the consumer only once an eighth of the ring is waiting (`WAKEUP_BYTES`): one wakeup
/// per record costs more than the record at high rates; below it userspace drains on a timer.
#[inline(always)]
fn wakeup_flags() -> u64 {
    // BPF_RB_AVAIL_DATA
    if EVENTS.query(0) >= ro!(WAKEUP_BYTES) {
        2 // BPF_RB_FORCE_WAKEUP
    } else {
        1 // BPF_RB_NO_WAKEUP
    }
}

/// Counts every event of a call record the ring buffer refused (`present`'s stages of a
/// call of `func`), each under its own probe, and reports it under the latest. A global BPF
/// function with scalar arguments, like `tracer_diag`: verified once on its own. Inlined along
/// every path of the site programs, its loops made the 6.1.0-47 verifier lose track of a
/// stack slot and refuse `site6`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_lost_call(func: u32, present: u32, tid: u32, mm: u64) -> u32 {
    let func = func as u8;
    let mut last = None;
    let mut st = 0u8;
    while st < stage::COUNT as u8 {
        if present & (1 << st) != 0
            && let Some(p) = probe_of(func, st)
        {
            lost(p);
            last = Some(p);
        }
        st += 1;
    }
    if let Some(p) = last {
        diag(diag::RESERVE_FAILED, p, tid, mm);
    }
    0
}

/// Puts `r` into the ring buffer, or counts each of its events as lost.
#[inline(always)]
fn send(r: &RawCall) {
    if r.present == 0 {
        return;
    }
    let flags = wakeup_flags();
    // A kprobe hit through int3 (instruction sites, functions not on an ftrace site) runs as
    // an NMI on x86, where the ring buffer only try-locks: another CPU reserving at the same
    // moment makes the reservation fail although there is room. That contention lasts a few
    // instructions, so a few more tries get the record through; only a full ring (or a lock
    // held throughout) counts as lost.
    let mut tries = 0;
    while EVENTS.output::<RawCall>(r, flags).is_err() {
        tries += 1;
        if tries == 8 {
            tracer_lost_call(u32::from(r.func), u32::from(r.present), r.tid, r.mm);
            return;
        }
    }
}

/// Writes stage `st` (time, CPU, value) into `r`. A stage at or before one `r` already holds
/// cannot belong to the same pass through the call: what `r` holds is sent first, and `r`
/// goes on with this stage alone.
#[inline(always)]
fn put_stage(r: &mut RawCall, st: u8, (seq, ts): (Option<u32>, u64)) {
    if st >= stage::COUNT as u8 {
        return;
    }
    if r.present >> st != 0 {
        // Only a map record can hold stages here (a record on the stack starts empty and
        // takes one): its slot is (`func`, `tid`).
        tracer_flush(u32::from(r.func), r.tid);
        r.present = 0;
        r.seq_ok = 0;
    }
    let i = st as usize;
    if let (Some(t), Some(c), Some(v)) = (r.ts.get_mut(i), r.cpu.get_mut(i), r.seq.get_mut(i)) {
        *t = ts;
        // SAFETY: helper with no preconditions.
        *c = unsafe { bpf_get_smp_processor_id() };
        *v = seq.unwrap_or(0);
    }
    r.present |= 1 << st;
    if seq.is_some() {
        r.seq_ok |= 1 << st;
    } else if let Some(p) = probe_of(r.func, st) {
        diag(diag::UNREADABLE_SEQ, p, r.tid, r.mm);
    }
}

/// Sends what the open call of `func` of thread `tid` holds and empties its slot. A global BPF
/// function with scalar arguments, like `tracer_diag`: verified once on its own. Inlined into
/// the site programs (a stage that repeats flushes the record), it made the 6.1.0-47 verifier
/// lose track of a stack slot and refuse `site6`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_flush(func: u32, tid: u32) -> u32 {
    let Some(p) = calls(func as u8).get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: the slot of the current thread, which only this thread writes while it lives.
    let r = unsafe { &mut *p };
    send(r);
    r.present = 0;
    r.seq_ok = 0;
    0
}

/// Starts a record of `func` for `task` about `mm` in `r`, holding no stage yet.
#[inline(always)]
fn start_call(r: &mut RawCall, task: &Task, func: u8, mm: u64) {
    r.pid = task.pid;
    r.tid = task.tid;
    r.comm = task.comm;
    r.func = func;
    r.mm = mm;
    r.present = 0;
    r.seq_ok = 0;
}

/// The slot of `task` for calls of `func`, made at its first call. A call still open there
/// never returned as far as the probes saw (a return probe out of instances, a run the
/// kernel skipped): its events happened, so they are sent before the slot is reused. `None`
/// when the map is full.
#[inline(always)]
fn slot(task: &Task, func: u8) -> Option<&'static mut RawCall> {
    let map = calls(func);
    let p = match map.get_ptr_mut(task.tid) {
        Some(p) => p,
        None => {
            // A racing insert of the same tid cannot happen (only this thread makes its slot).
            let _ = map.insert(task.tid, &RawCall::EMPTY, BPF_NOEXIST);
            map.get_ptr_mut(task.tid)?
        }
    };
    // SAFETY: the map value of this thread, which only this thread writes while it lives.
    let r = unsafe { &mut *p };
    send(r);
    Some(r)
}

/// The open call of `func` of the current thread, if there is one.
#[inline(always)]
fn open_call(func: u8, tid: u32) -> Option<&'static mut RawCall> {
    let p = calls(func).get_ptr_mut(tid)?;
    // SAFETY: as in `slot`.
    let r = unsafe { &mut *p };
    (r.present != 0).then_some(r)
}

/// A record that could not have a slot (a full map): it goes out on its own, event by event.
#[inline(always)]
fn send_alone(task: &Task, func: u8, mm: u64, st: u8, read: (Option<u32>, u64), ret: u64) {
    let mut r = RawCall::EMPTY;
    start_call(&mut r, task, func, mm);
    r.ret = ret;
    put_stage(&mut r, st, read);
    send(&r);
}

/// Opens a call of `func` by `task` about `mm` at its entry: `args` fills in what the entry
/// saw, `read` is the seqcount then. The call goes into the thread's slot; when the map is
/// full (a diagnostic says so) it goes out at once, on its own, and its later stages follow it
/// the same way.
#[inline(always)]
fn enter_call(
    task: &Task,
    func: u8,
    mm: u64,
    read: (Option<u32>, u64),
    args: impl FnOnce(&mut RawCall),
) {
    let mut alone = RawCall::EMPTY;
    let r = match slot(task, func) {
        Some(r) => r,
        None => {
            diag(
                diag::PAIRING_FULL,
                probe_of(func, stage::ENTER).unwrap_or(Probe::CprEnter),
                task.tid,
                mm,
            );
            &mut alone
        }
    };
    start_call(r, task, func, mm);
    args(r);
    put_stage(r, stage::ENTER, read);
    if alone.present != 0 {
        send(&alone);
    }
}

/// Entry of a page-table copy function: `vma` is its `src_vma` argument. Shared by the kprobe
/// and fentry programs.
#[inline(always)]
pub(crate) fn copy_enter_vma(vma: u64, func: u8) {
    let Some(task) = current_if_wanted() else {
        return;
    };
    let mm = read_u64(vma + u64::from(ro!(OFFSETS.vma_mm))).unwrap_or(0);
    let start = read_u64(vma + u64::from(ro!(OFFSETS.vma_start))).unwrap_or(0);
    let end = read_u64(vma + u64::from(ro!(OFFSETS.vma_end))).unwrap_or(0);
    let flags = read_u64(vma + u64::from(ro!(OFFSETS.vma_flags))).unwrap_or(0) as u32;
    let anon = match read_u64(vma + u64::from(ro!(OFFSETS.vma_anon_vma))) {
        Some(0) => anon::NO,
        Some(_) => anon::YES,
        None => anon::UNREADABLE,
    };
    enter_call(&task, func, mm, seq_now(mm), |r| {
        r.a = start;
        r.b = end;
        r.flags = flags;
        r.anon = anon;
    });
}

#[inline(always)]
fn copy_enter(ctx: &ProbeContext, vma_arg: u32, func: u8) {
    let Some(vma) = arg_at(ctx, vma_arg) else {
        return;
    };
    copy_enter_vma(vma, func);
}

/// The return of a call of `func`: closes the thread's open call and sends it, or sends the
/// return on its own (about `current->mm` for GUP-fast; a copy's mm is unknown without its
/// entry). Shared by the kretprobe and fexit programs.
#[inline(always)]
pub(crate) fn call_exit(func: u8, ret: i64) {
    if let Some(r) = open_call(func, tid_now()) {
        put_stage(r, stage::EXIT, seq_now(r.mm));
        r.ret = ret as u64;
        send(r);
        r.present = 0;
        return;
    }
    let Some(task) = current_if_wanted() else {
        return;
    };
    let mm = if func == call::GUP { current_mm() } else { 0 };
    send_alone(&task, func, mm, stage::EXIT, seq_now(mm), ret as u64);
}

#[kprobe]
pub fn cpr_enter(ctx: ProbeContext) -> u32 {
    ran(Probe::CprEnter as u32);
    copy_enter(&ctx, ro!(OFFSETS.cpr_vma_arg), call::CPR);
    0
}

#[kretprobe]
pub fn cpr_exit(ctx: RetProbeContext) -> u32 {
    ran(Probe::CprExit as u32);
    call_exit(call::CPR, ctx.ret());
    0
}

#[kprobe]
pub fn hugetlb_enter(ctx: ProbeContext) -> u32 {
    ran(Probe::HugetlbEnter as u32);
    copy_enter(&ctx, ro!(OFFSETS.hugetlb_vma_arg), call::HUGETLB);
    0
}

#[kretprobe]
pub fn hugetlb_exit(ctx: RetProbeContext) -> u32 {
    ran(Probe::HugetlbExit as u32);
    call_exit(call::HUGETLB, ctx.ret());
    0
}

/// Entry of the GUP-fast function, from its first three arguments. Shared by the kprobe and
/// fentry programs.
#[inline(always)]
pub(crate) fn gup_enter_args(start: u64, second: u64, flags: u64) {
    let Some(task) = current_if_wanted() else {
        return;
    };
    let mm = current_mm();
    let count = if ro!(OFFSETS.gup_arg_is_end) != 0 {
        second.saturating_sub(start) >> 12
    } else {
        second
    };
    enter_call(&task, call::GUP, mm, seq_now(mm), |r| {
        r.a = start;
        r.b = count;
        r.flags = flags as u32;
    });
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
    call_exit(call::GUP, ctx.ret());
    0
}

/// A thread is exiting: its call slots go (their calls, if any are open, never returned as
/// far as the probes saw; their events are sent first). Not a probe of the protocol: it only
/// keeps the maps from filling with the slots of threads that are gone.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn task_exit(_ctx: RawTracePointContext) -> i32 {
    let tid = tid_now();
    for map in [&CPR_CALLS, &HUGETLB_CALLS, &GUP_CALLS] {
        if let Some(p) = map.get_ptr(tid) {
            // SAFETY: the slot of the exiting thread, which no one else writes.
            send(unsafe { &*p });
            let _ = map.remove(tid);
        }
    }
    0
}

/// The mm at `mm` is about to be freed (or, in tracepoint mode, torn down for good), so its
/// address may be reused. Not filtered: the last reference is often dropped by an unrelated
/// task, and userspace needs every free to keep mm names unique.
#[inline(always)]
pub(crate) fn mm_free_addr(mm: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut tries = 0;
    let mut entry = loop {
        if let Some(e) = EVENTS.reserve::<RawEvent>(0) {
            break e;
        }
        tries += 1;
        if tries == 8 {
            lost(Probe::MmFree);
            diag(diag::RESERVE_FAILED, Probe::MmFree, pid_tgid as u32, mm);
            return;
        }
    };
    entry.write(RawEvent {
        ts: now(),
        mm,
        a: 0,
        b: 0,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        // SAFETY: helper with no preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        seq: 0,
        flags: 0,
        probe: Probe::MmFree as u8,
        seq_ok: 0,
        anon: 0,
        _pad: 0,
        comm: [0; 16],
    });
    entry.submit(wakeup_flags());
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
fn site(ctx: &ProbeContext, slot: usize) {
    ran(FIRST_SITE + slot as u32);
    let Some(cfg) = SITE_CFG.get(slot) else {
        return;
    };
    let (func, st, mode, base) = (ro!(cfg.func), ro!(cfg.stage), ro!(cfg.mode), ro!(cfg.base));
    let open = open_call(func, tid_now());
    let open_mm = open.as_ref().map(|r| r.mm);
    let (mm, read) = match mode {
        site_mode::MEMORY => {
            // `Reg` discriminants are pt_regs slots in order, 8 bytes each.
            let Some(b) = regs_at(ctx, u64::from(base) * 8) else {
                return;
            };
            let addr = b.wrapping_add(ro!(cfg.disp) as i64 as u64);
            (
                addr.wrapping_sub(u64::from(ro!(OFFSETS.mm_seq))),
                read_now(addr),
            )
        }
        site_mode::LOADED => {
            let Some(v) = regs_at(ctx, u64::from(base) * 8) else {
                return;
            };
            let ts = now();
            // The mm of an open call is `current->mm`, read at its entry: a task's mm does not
            // change inside a call.
            (open_mm.unwrap_or_else(current_mm), (Some(v as u32), ts))
        }
        _ => {
            let mm = open_mm.unwrap_or_else(current_mm);
            (mm, seq_now(mm))
        }
    };
    if let Some(r) = open
        && r.mm == mm
    {
        put_stage(r, st, read);
        return;
    }
    // No open call of this thread about this mm: the event goes on its own.
    let Some(task) = current_if_wanted() else {
        return;
    };
    send_alone(&task, func, mm, st, read, 0);
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
