//! The tracepoint mode's plan: which tracepoints its programs attach to on this kernel, and
//! the layouts and argument positions they need, all from BTF.
//!
//! Raw tracepoints see a tracepoint's `TP_PROTO` arguments, which change between releases
//! (`mmap_lock_*` lost their memcg path argument in 6.13), so their positions come from the
//! kernel's `btf_trace_*` typedefs rather than from a version table.
use thiserror::Error;
use tracer_common::{Probe, TpConfig};

use super::btf::{Btf, BtfError};

#[derive(Debug, Error)]
pub enum TracepointError {
    #[error("BTF: {0}")]
    Btf(#[from] BtfError),
    #[error(
        "this kernel has no {0} tracepoint, which the tracepoint mode needs (CONFIG_FTRACE_SYSCALLS / CONFIG_TRACEPOINTS)"
    )]
    Missing(&'static str),
    #[error("tracepoint {tp}: expected a bool `write` argument after the mm, found ({args})")]
    Shape { tp: &'static str, args: String },
}

/// One raw tracepoint program and what it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// The eBPF program (tracer-ebpf/src/tracepoint.rs).
    pub program: &'static str,
    pub tracepoint: &'static str,
    /// The probe it reports as: the event kind it contributes to (`fork`, `pin_syscall`), or
    /// `mm_free` (names only).
    pub probe: Probe,
    pub reason: &'static str,
}

#[derive(Clone, Debug)]
pub struct TracepointPlan {
    pub config: TpConfig,
    pub hooks: Vec<Hook>,
    /// What this kernel lacks, one sentence each.
    pub missing: Vec<String>,
}

impl TracepointPlan {
    /// Forks are bracketed at the parent's mmap_lock (exact), not at the syscall (wider).
    pub fn lock_bracket(&self) -> bool {
        self.hooks.iter().any(|h| h.program == "tp_lock_acquired")
    }
}

const LOCK_ACQUIRED: &str = "mmap_lock_acquire_returned";
const LOCK_RELEASED: &str = "mmap_lock_released";

/// Position of the `bool write` argument of an mmap_lock tracepoint: the first `bool` after the
/// `struct mm_struct *`.
fn write_arg(btf: &Btf, tp: &'static str) -> Result<u32, TracepointError> {
    let args = btf.tracepoint_args(tp)?;
    let shape = || TracepointError::Shape {
        tp,
        args: args.join(", "),
    };
    if args.first().map(String::as_str) != Some("struct mm_struct *") {
        return Err(shape());
    }
    args.iter()
        .position(|a| a == "bool")
        .map(|i| i as u32)
        .ok_or_else(shape)
}

pub fn resolve(btf: &Btf) -> Result<TracepointPlan, TracepointError> {
    for tp in ["sys_enter", "sys_exit", "sched_process_fork"] {
        if !btf.has_tracepoint(tp) {
            return Err(TracepointError::Missing(tp));
        }
    }
    let config = TpConfig {
        task_tgid: btf.member_offset("task_struct", "tgid")?,
        task_files: btf.member_offset("task_struct", "files")?,
        files_fdt: btf.member_offset("files_struct", "fdt")?,
        fdt_fd: btf.member_offset("fdtable", "fd")?,
        fdt_max_fds: btf.member_offset("fdtable", "max_fds")?,
        file_flags: btf.member_offset("file", "f_flags")?,
        lock_write_arg: 0,
        _pad: 0,
    };
    let mut plan = TracepointPlan {
        config,
        hooks: vec![
            Hook {
                program: "tp_sys_enter",
                tracepoint: "sys_enter",
                probe: Probe::Fork,
                reason: "a clone-family syscall marks its task as forking",
            },
            Hook {
                program: "tp_sys_enter",
                tracepoint: "sys_enter",
                probe: Probe::PinSyscall,
                reason: "seq at entry of O_DIRECT reads/writes, io_uring_register, RDS getsockopt",
            },
            Hook {
                program: "tp_sys_exit",
                tracepoint: "sys_exit",
                probe: Probe::PinSyscall,
                reason: "seq at their exit",
            },
        ],
        missing: Vec::new(),
    };
    if btf.has_tracepoint(LOCK_ACQUIRED) && btf.has_tracepoint(LOCK_RELEASED) {
        let w = write_arg(btf, LOCK_ACQUIRED)?;
        if write_arg(btf, LOCK_RELEASED)? != w {
            return Err(TracepointError::Shape {
                tp: LOCK_RELEASED,
                args: btf.tracepoint_args(LOCK_RELEASED)?.join(", "),
            });
        }
        plan.config.lock_write_arg = w;
        plan.hooks.push(Hook {
            program: "tp_lock_acquired",
            tracepoint: LOCK_ACQUIRED,
            probe: Probe::Fork,
            reason: "seq_before: dup_mmap holds the parent's mmap_lock for writing, which every write section needs",
        });
        plan.hooks.push(Hook {
            program: "tp_lock_released",
            tracepoint: LOCK_RELEASED,
            probe: Probe::Fork,
            reason: "seq_after: read before the lock is dropped",
        });
    } else {
        plan.missing.push(
            "mmap_lock tracepoints: absent (before 5.12); a fork's seq is bracketed by its syscall entry and sched_process_fork, a window other forks of the mm may share".into(),
        );
    }
    plan.hooks.push(Hook {
        program: "tp_fork",
        tracepoint: "sched_process_fork",
        probe: Probe::Fork,
        reason: "reports the fork with its child (current is the parent)",
    });
    if btf.has_tracepoint("exit_mmap") {
        plan.hooks.push(Hook {
            program: "tp_exit_mmap",
            tracepoint: "exit_mmap",
            probe: Probe::MmFree,
            reason: "mm teardown: keeps mm names unique when an address is reused",
        });
    } else {
        plan.missing
            .push("exit_mmap tracepoint: absent; a reused mm address keeps its name".into());
    }
    Ok(plan)
}
