//! Can this machine trace at all? Each missing piece gets its own sentence.
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvError {
    #[error(
        "tracer needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) to load eBPF programs and read kernel symbols; run it with sudo"
    )]
    NotRoot,
    #[error(
        "this kernel has no bpf() system call (CONFIG_BPF_SYSCALL is off), so eBPF programs cannot be loaded"
    )]
    NoBpf,
    #[error("the kernel refused bpf() ({0}); it may be locked down or filtered by seccomp")]
    BpfDenied(String),
    #[error(
        "this kernel exposes no BTF at {0} (CONFIG_DEBUG_INFO_BTF is off); the tracer reads struct layouts from it; pass --btf FILE with this kernel's BTF"
    )]
    NoBtf(String),
    #[error(
        "this kernel cannot attach kprobes: CONFIG_KPROBES is off (no kprobe PMU in /sys/bus/event_source/devices and no kprobe_events in tracefs); `--mode auto` traces with the richest mode this kernel has (fentry or tracepoint, which see less), or boot a kernel with kprobes (`cargo xtask run` does so in a VM)"
    )]
    NoKprobes,
    #[error(
        "--mode {mode} cannot run on this kernel: {why}; `--mode auto` picks the richest mode that can"
    )]
    ModeUnavailable { mode: String, why: String },
    #[error("no attach mode can run on this kernel: {0}")]
    NoMode(String),
}

pub const SYS_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Whether the kernel offers kprobes (the perf kprobe PMU aya attaches through, or the legacy
/// tracefs interface).
pub fn has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || Path::new("/sys/kernel/debug/tracing/kprobe_events").exists()
}

/// Creates and closes a one-entry array map: the cheapest way to ask whether bpf() works here.
pub fn bpf_works() -> Result<(), EnvError> {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        _rest: [u8; 64],
    }
    let attr = MapCreate {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        _rest: [0; 64],
    };
    // SAFETY: BPF_MAP_CREATE (cmd 0) reads `size_of::<MapCreate>()` bytes from a valid struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => EnvError::NoBpf,
            _ => EnvError::BpfDenied(e.to_string()),
        });
    }
    // SAFETY: fd is a descriptor this function just created.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Checks what every attach mode needs, in order: root, bpf(), BTF. `btf` is the BTF file to
/// be used. What each mode needs besides is `caps::select`'s.
pub fn preflight(btf: &Path) -> Result<(), EnvError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(EnvError::NotRoot);
    }
    bpf_works()?;
    if !btf.exists() {
        return Err(EnvError::NoBtf(btf.display().to_string()));
    }
    Ok(())
}
