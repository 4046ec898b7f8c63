//! A loaded BPF program's recursion misses: runs the kernel skipped because a BPF program was
//! already running on that CPU. Raw tracepoint and fentry/fexit programs count them in their
//! own statistics (`bpf_prog_info.recursion_misses`, since 5.12); kprobes count theirs in
//! tracefs' `kprobe_profile` instead.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProgStatsError {
    #[error("reading a BPF program's statistics (BPF_OBJ_GET_INFO_BY_FD) failed: {0}")]
    Info(#[source] std::io::Error),
}

/// `BPF_OBJ_GET_INFO_BY_FD`.
const OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Byte offset of `recursion_misses` in `struct bpf_prog_info` (include/uapi/linux/bpf.h):
/// fixed by the uapi, which only ever grows at the end.
const RECURSION_MISSES: usize = 208;
/// Room for the whole `bpf_prog_info` of any kernel this tool knows (232 bytes in 6.12). The
/// kernel fills what it has and accepts a larger buffer whose tail is zero.
const INFO_WORDS: usize = 40;

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The program's recursion misses so far, or `None` when the kernel's `bpf_prog_info` is too
/// old to have the field (before 5.12).
pub fn recursion_misses(fd: BorrowedFd<'_>) -> Result<Option<u64>, ProgStatsError> {
    let mut info = [0u64; INFO_WORDS];
    let mut attr = InfoAttr {
        // A valid fd is never negative.
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: (INFO_WORDS * 8) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` points at `info`, which is writable for `info_len` bytes and outlives the
    // call; the kernel reads `attr` for its size only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(ProgStatsError::Info(std::io::Error::last_os_error()));
    }
    if (attr.info_len as usize) < RECURSION_MISSES + 8 {
        return Ok(None);
    }
    Ok(Some(info[RECURSION_MISSES / 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_that_is_no_bpf_program_is_an_error_not_a_count() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd as _;
        // EINVAL for a non-BPF fd; EPERM/ENOSYS where bpf() is not allowed: an error either way.
        assert!(recursion_misses(f.as_fd()).is_err());
    }
}
