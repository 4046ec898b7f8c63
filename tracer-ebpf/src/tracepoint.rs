//! Tracepoint mode: what a kernel without kprobes or BPF trampolines still lets us see, through
//! raw tracepoints (no tracefs, no BTF needed to attach).
//!
//! - **Forks.** A clone-family syscall entry marks the task as forking. `dup_mmap` takes the
//!   parent's `mmap_lock` for writing around the whole page-table copy, and every write section
//!   of the seqcount runs under that lock, so the values read at the `mmap_lock_acquire_returned`
//!   and `mmap_lock_released` tracepoints of that lock bracket exactly this fork's increments:
//!   both are even unless a write section leaked, and no other fork of the mm can write in
//!   between. `sched_process_fork` (current is the parent) then reports the bracket with the
//!   child. A kernel without the mmap_lock tracepoints gets the syscall entry and
//!   `sched_process_fork` as a wider bracket. A `CLONE_VM` clone shares the mm and copies
//!   nothing: it is not reported.
//! - **Pinning syscalls** (O_DIRECT reads and writes, `io_uring_register`, `getsockopt` at
//!   `SOL_RDS`): the mm's seqcount at `sys_enter` and `sys_exit`.
//! - **mm teardown** (`exit_mmap`), so that a reused mm address gets a new name.
use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};
use tracer_common::{
    CLONE_SYSCALLS, O_DIRECT, Probe, RawEvent, RawTail, RawWide, SOL_RDS, TpConfig, bracket,
    pin_sys,
};

use crate::{
    EVENTS, Task, current_if_wanted, current_mm, lost, mm_free_addr, offsets, read_u32, read_u64,
    seq_now,
};

/// Set by userspace before load (aya `override_global`).
#[unsafe(no_mangle)]
static TP_CONFIG: TpConfig = TpConfig {
    task_tgid: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_fd: 0,
    fdt_max_fds: 0,
    file_flags: 0,
    lock_write_arg: 2,
    _pad: 0,
};

#[inline(always)]
fn config() -> TpConfig {
    // SAFETY: a plain read of a global that userspace fills in before load; volatile so the
    // compiler does not constant-fold the placeholder value.
    unsafe { core::ptr::read_volatile(&TP_CONFIG) }
}

/// `ForkState::flags` bits.
const SEQ_ENTER_OK: u8 = 1;
const LOCKED: u8 = 2;
const SEQ_LOCK_OK: u8 = 4;
const RELEASED: u8 = 8;
const SEQ_REL_OK: u8 = 16;

/// One task inside a clone-family syscall.
#[repr(C)]
#[derive(Clone, Copy)]
struct ForkState {
    /// The parent's mm at syscall entry.
    mm: u64,
    ts_enter: u64,
    ts_lock: u64,
    ts_rel: u64,
    seq_enter: u32,
    seq_lock: u32,
    seq_rel: u32,
    flags: u8,
    _pad: [u8; 3],
    pid: u32,
    comm: [u8; 16],
}

/// One task inside a watched pinning syscall.
#[repr(C)]
#[derive(Clone, Copy)]
struct PinState {
    mm: u64,
    ts: u64,
    count: u64,
    seq: u32,
    fd: u32,
    op: u32,
    seq_ok: u8,
    what: u8,
    _pad: [u8; 2],
}

/// Tasks in a clone syscall, by tid. LRU: a task killed inside the syscall never reaches
/// `sys_exit`, and its stale entry must not block others.
#[map]
static FORKING: LruHashMap<u32, ForkState> = LruHashMap::with_max_entries(4096, 0);

/// Tasks in a watched pinning syscall, by tid.
#[map]
static PINNING: LruHashMap<u32, PinState> = LruHashMap::with_max_entries(8192, 0);

/// `pt_regs` offsets (x86-64) of the syscall arguments and of the syscall number.
const REG_DI: u64 = 112;
const REG_SI: u64 = 104;
const REG_DX: u64 = 96;
const REG_R10: u64 = 56;
const REG_ORIG_AX: u64 = 120;

/// Raw tracepoint argument `n`, `n` known only at run time: the verifier allows only constant
/// offsets into the context, so the slot is copied with bpf_probe_read_kernel.
#[inline(always)]
fn raw_arg(ctx: &RawTracePointContext, n: u32) -> Option<u64> {
    if n > 5 {
        return None;
    }
    read_u64((aya_ebpf::EbpfContext::as_ptr(ctx) as u64).wrapping_add(u64::from(n) * 8))
}

/// Reserves and submits one wide record; counts a loss when the ring buffer is full.
#[inline(always)]
fn emit_wide(task: &Task, probe: Probe, ev: RawEvent, tail: RawTail) {
    let mut tries = 0;
    let mut entry = loop {
        if let Some(e) = EVENTS.reserve::<RawWide>(0) {
            break e;
        }
        tries += 1;
        if tries == 8 {
            lost(probe);
            return;
        }
    };
    entry.write(RawWide {
        ev: RawEvent {
            pid: task.pid,
            tid: task.tid,
            comm: task.comm,
            // SAFETY: helper with no preconditions.
            cpu: unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() },
            probe: probe as u8,
            ..ev
        },
        tail,
    });
    // These records are rare (one per fork or pinning syscall): wake the reader for each.
    entry.submit(0);
}

/// Whether `fd` of the current task is a file opened with O_DIRECT.
#[inline(always)]
fn is_direct(fd: u64) -> bool {
    let c = config();
    // SAFETY: helper with no preconditions.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let Some(files) = read_u64(task + u64::from(c.task_files)).filter(|&f| f != 0) else {
        return false;
    };
    let Some(fdt) = read_u64(files + u64::from(c.files_fdt)).filter(|&f| f != 0) else {
        return false;
    };
    let Some(max) = read_u32(fdt + u64::from(c.fdt_max_fds)) else {
        return false;
    };
    if fd >= u64::from(max) {
        return false;
    }
    let Some(arr) = read_u64(fdt + u64::from(c.fdt_fd)).filter(|&a| a != 0) else {
        return false;
    };
    let Some(file) = read_u64(arr + fd * 8).filter(|&f| f != 0) else {
        return false;
    };
    read_u32(file + u64::from(c.file_flags)).is_some_and(|f| f & O_DIRECT != 0)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn tp_sys_enter(ctx: RawTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    // Every syscall of the machine comes here: leave at once unless it is one of ours.
    let what = pin_sys::of(nr);
    if what.is_none() && !CLONE_SYSCALLS.contains(&nr) {
        return 0;
    }
    // `--pid` is one helper call away: filter on it before reading anything.
    let pid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    let want = crate::filter().pid;
    if want != 0 && want != pid {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let arg = |off| read_u64(regs + off).unwrap_or(0);
    // Reads and writes are the hot case, and only O_DIRECT ones matter: decide that before
    // anything else is read.
    let fd = arg(REG_DI);
    let (op, count) = match what {
        None => (0, 0),
        Some(pin_sys::IO_URING_REGISTER) => (arg(REG_SI), arg(REG_R10)),
        Some(pin_sys::GETSOCKOPT) => {
            if arg(REG_SI) != SOL_RDS {
                return 0;
            }
            (arg(REG_DX), 0)
        }
        Some(_) => {
            if !is_direct(fd) {
                return 0;
            }
            (0, arg(REG_DX))
        }
    };
    let Some(task) = current_if_wanted() else {
        return 0;
    };
    let mm = current_mm();
    if mm == 0 {
        return 0;
    }
    let Some(what) = what else {
        let (seq, ts) = seq_now(mm);
        let st = ForkState {
            mm,
            ts_enter: ts,
            ts_lock: 0,
            ts_rel: 0,
            seq_enter: seq.unwrap_or(0),
            seq_lock: 0,
            seq_rel: 0,
            flags: if seq.is_some() { SEQ_ENTER_OK } else { 0 },
            _pad: [0; 3],
            pid: task.pid,
            comm: task.comm,
        };
        let _ = FORKING.insert(&task.tid, &st, 0);
        return 0;
    };
    let (seq, ts) = seq_now(mm);
    let st = PinState {
        mm,
        ts,
        count,
        seq: seq.unwrap_or(0),
        fd: fd as u32,
        op: op as u32,
        seq_ok: u8::from(seq.is_some()),
        what,
        _pad: [0; 2],
    };
    let _ = PINNING.insert(&task.tid, &st, 0);
    0
}

#[inline(always)]
fn tid() -> u32 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn tp_sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let Some(nr) = read_u64(regs + REG_ORIG_AX) else {
        return 0;
    };
    let fork = CLONE_SYSCALLS.contains(&nr);
    if !fork && pin_sys::of(nr).is_none() {
        return 0;
    }
    let ret: i64 = ctx.arg(1);
    let tid = tid();
    if fork {
        // SAFETY: the value is copied out before the entry is removed.
        let Some(st) = (unsafe { FORKING.get(&tid) }).copied() else {
            return 0;
        };
        let _ = FORKING.remove(&tid);
        // Still here at the syscall's exit: sched_process_fork never came, the clone failed.
        // If dup_mmap ran, its write sections advanced the counter all the same.
        if st.flags & RELEASED != 0 {
            emit_fork(&st, tid, 0, 0, ret);
        }
        return 0;
    }
    // SAFETY: as above.
    let Some(st) = (unsafe { PINNING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PINNING.remove(&tid);
    let (seq, ts) = seq_now(st.mm);
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let task = Task {
        pid: (pid_tgid >> 32) as u32,
        tid,
        comm: aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; 16]),
    };
    emit_wide(
        &task,
        Probe::PinSyscall,
        RawEvent {
            ts,
            mm: st.mm,
            a: ret as u64,
            b: st.count,
            pid: 0,
            tid: 0,
            cpu: 0,
            seq: seq.unwrap_or(0),
            flags: st.op,
            probe: 0,
            seq_ok: u8::from(seq.is_some()),
            anon: 0,
            _pad: 0,
            comm: [0; 16],
        },
        RawTail {
            ts0: st.ts,
            c: 0,
            seq0: st.seq,
            x: st.fd,
            seq0_ok: st.seq_ok,
            what: st.what,
            _pad: [0; 6],
        },
    );
    0
}

/// Reports a fork: the mmap_lock bracket when both ends were seen, else syscall entry to now.
#[inline(always)]
fn emit_fork(st: &ForkState, tid: u32, child_pid: u32, child_mm: u64, ret: i64) {
    let (before, after, how) = if st.flags & RELEASED != 0 {
        (
            (st.flags & SEQ_LOCK_OK != 0, st.seq_lock, st.ts_lock),
            (st.flags & SEQ_REL_OK != 0, st.seq_rel, st.ts_rel),
            bracket::MMAP_LOCK,
        )
    } else {
        let (seq, ts) = seq_now(st.mm);
        // No entry seen: `ts_before` is the same instant, with no value.
        let ts_enter = if st.ts_enter == 0 { ts } else { st.ts_enter };
        (
            (st.flags & SEQ_ENTER_OK != 0, st.seq_enter, ts_enter),
            (seq.is_some(), seq.unwrap_or(0), ts),
            bracket::SYSCALL,
        )
    };
    let task = Task {
        pid: st.pid,
        tid,
        comm: st.comm,
    };
    emit_wide(
        &task,
        Probe::Fork,
        RawEvent {
            ts: after.2,
            mm: st.mm,
            a: ret as u64,
            b: 0,
            pid: 0,
            tid: 0,
            cpu: 0,
            seq: after.1,
            flags: 0,
            probe: 0,
            seq_ok: u8::from(after.0),
            anon: 0,
            _pad: 0,
            comm: [0; 16],
        },
        RawTail {
            ts0: before.2,
            c: child_mm,
            seq0: before.1,
            x: child_pid,
            seq0_ok: u8::from(before.0),
            what: how,
            _pad: [0; 6],
        },
    );
}

/// `mmap_lock_acquire_returned(mm, [memcg_path,] write, success)`.
#[raw_tracepoint(tracepoint = "mmap_lock_acquire_returned")]
pub fn tp_lock_acquired(ctx: RawTracePointContext) -> i32 {
    let w = config().lock_write_arg;
    // Read locks (page faults, /proc readers) are the common case: filter them first.
    if raw_arg(&ctx, w).is_none_or(|v| v & 0xff == 0)
        || raw_arg(&ctx, w + 1).is_none_or(|v| v & 0xff == 0)
    {
        return 0;
    }
    let tid = tid();
    let Some(st) = FORKING.get_ptr_mut(&tid) else {
        return 0;
    };
    let mm: u64 = ctx.arg(0);
    // SAFETY: a pointer into this task's own map entry; no other task writes it.
    let st = unsafe { &mut *st };
    // The parent's lock, taken once by dup_mmap (the child's mm is locked too, in older
    // kernels: it is another mm).
    if mm != st.mm || st.flags & LOCKED != 0 {
        return 0;
    }
    let (seq, ts) = seq_now(mm);
    st.seq_lock = seq.unwrap_or(0);
    st.ts_lock = ts;
    st.flags |= LOCKED | if seq.is_some() { SEQ_LOCK_OK } else { 0 };
    0
}

/// `mmap_lock_released(mm, [memcg_path,] write)`: fires before the lock is dropped.
#[raw_tracepoint(tracepoint = "mmap_lock_released")]
pub fn tp_lock_released(ctx: RawTracePointContext) -> i32 {
    if raw_arg(&ctx, config().lock_write_arg).is_none_or(|v| v & 0xff == 0) {
        return 0;
    }
    let tid = tid();
    let Some(st) = FORKING.get_ptr_mut(&tid) else {
        return 0;
    };
    let mm: u64 = ctx.arg(0);
    // SAFETY: as in tp_lock_acquired.
    let st = unsafe { &mut *st };
    if mm != st.mm || st.flags & LOCKED == 0 || st.flags & RELEASED != 0 {
        return 0;
    }
    let (seq, ts) = seq_now(mm);
    st.seq_rel = seq.unwrap_or(0);
    st.ts_rel = ts;
    st.flags |= RELEASED | if seq.is_some() { SEQ_REL_OK } else { 0 };
    0
}

/// `sched_process_fork(parent, child)`, in the parent, after copy_process.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn tp_fork(ctx: RawTracePointContext) -> i32 {
    let tid = tid();
    let child: u64 = ctx.arg(1);
    let off = offsets();
    let child_mm = read_u64(child + u64::from(off.task_mm)).unwrap_or(0);
    // SAFETY: the value is copied out before the entry is removed.
    let Some(st) = (unsafe { FORKING.get(&tid) }).copied() else {
        // A fork whose syscall entry came before the trace began (or a full map): its
        // increments are unseen, so it is reported with no value before them, which tells
        // the validator that the mm's history restarts here.
        let Some(task) = current_if_wanted() else {
            return 0;
        };
        let mm = current_mm();
        if mm == 0 || child_mm == mm || child_mm == 0 {
            return 0;
        }
        let st = ForkState {
            mm,
            ts_enter: 0,
            ts_lock: 0,
            ts_rel: 0,
            seq_enter: 0,
            seq_lock: 0,
            seq_rel: 0,
            flags: 0,
            _pad: [0; 3],
            pid: task.pid,
            comm: task.comm,
        };
        let child_pid = read_u32(child + u64::from(config().task_tgid)).unwrap_or(0);
        emit_fork(&st, tid, child_pid, child_mm, 0);
        return 0;
    };
    let _ = FORKING.remove(&tid);
    // CLONE_VM (a thread, vfork, posix_spawn): the child shares the mm, nothing was copied.
    if child_mm == st.mm || child_mm == 0 {
        return 0;
    }
    let child_pid = read_u32(child + u64::from(config().task_tgid)).unwrap_or(0);
    emit_fork(&st, tid, child_pid, child_mm, 0);
    0
}

/// `exit_mmap(mm)`: the last user of the mm is gone; no task can report it any more, so a later
/// event at the same address is a new mm.
#[raw_tracepoint(tracepoint = "exit_mmap")]
pub fn tp_exit_mmap(ctx: RawTracePointContext) -> i32 {
    mm_free_addr(ctx.arg(0));
    0
}
