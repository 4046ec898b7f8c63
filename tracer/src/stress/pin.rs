//! The ways a process can make the kernel pin its pages through GUP-fast with FOLL_PIN
//! (`pin_user_pages_fast`), which reads `mm->write_protect_seq`. Which ones a kernel offers
//! (docs/kernel notes §4): RDS info `getsockopt` (any release, needs `rds.ko`), io_uring buffer
//! registration (6.10+; before, `pin_user_pages` under mmap_lock, the slow path), O_DIRECT reads
//! (6.5+; before, page references with FOLL_GET, which never read the seqcount).
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use serde::Serialize;

use super::{direct, rng::Rng};

const AF_RDS: i32 = 21;
const SOL_RDS: i32 = 276;
const RDS_INFO_COUNTERS: i32 = 10000;
const IORING_REGISTER_BUFFERS: u32 = 0;
const IORING_UNREGISTER_BUFFERS: u32 = 1;
/// `sizeof(struct io_uring_params)`.
const IO_URING_PARAMS: usize = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
pub enum Method {
    #[value(name = "rds")]
    #[serde(rename = "rds")]
    Rds,
    #[value(name = "io_uring")]
    #[serde(rename = "io_uring")]
    IoUring,
    #[value(name = "o_direct")]
    #[serde(rename = "o_direct")]
    ODirect,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Rds, Method::IoUring, Method::ODirect];

    pub fn name(self) -> &'static str {
        match self {
            Method::Rds => "rds",
            Method::IoUring => "io_uring",
            Method::ODirect => "o_direct",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Method::Rds => "RDS info getsockopt",
            Method::IoUring => "io_uring buffer registration",
            Method::ODirect => "O_DIRECT read",
        }
    }

    /// Why this kernel release does not pin through GUP-fast this way, if it does not.
    pub fn not_in(self, release: (u32, u32)) -> Option<String> {
        let (since, how) = match self {
            Method::Rds => return None,
            Method::IoUring => (
                (6, 10),
                "pins registered buffers with slow GUP under mmap_lock",
            ),
            Method::ODirect => (
                (6, 5),
                "takes page references (FOLL_GET), not FOLL_PIN pins",
            ),
        };
        (release < since).then(|| {
            format!(
                "kernel {}.{} {how} (GUP-fast FOLL_PIN since {}.{})",
                release.0, release.1, since.0, since.1
            )
        })
    }
}

enum How {
    Rds(OwnedFd),
    Uring(OwnedFd),
    Direct { fd: OwnedFd, size: u64 },
}

/// One open means of pinning, used by one thread.
pub struct Pinner {
    pub method: Method,
    /// What it uses, for the user (e.g. the O_DIRECT source).
    pub what: String,
    how: How,
}

fn owned(fd: i64) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn rds_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    owned(i64::from(unsafe {
        libc::socket(AF_RDS, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
    }))
}

fn uring() -> io::Result<OwnedFd> {
    let mut params = [0u8; IO_URING_PARAMS];
    // SAFETY: io_uring_setup with a zeroed, correctly sized io_uring_params.
    owned(unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) })
}

impl Pinner {
    /// Opens `method`, or says why this machine cannot pin that way. `direct` is the user's
    /// `--direct FILE`, which must work when given (bad input otherwise).
    pub fn open(
        method: Method,
        direct: Option<&Path>,
        pin_len: usize,
    ) -> Result<Result<Pinner, String>, direct::DirectError> {
        Ok(match method {
            Method::Rds => rds_socket()
                .map(|fd| Pinner {
                    method,
                    what: "an AF_RDS socket".into(),
                    how: How::Rds(fd),
                })
                .map_err(|e| format!("no AF_RDS socket ({e}); `modprobe rds` provides one")),
            Method::IoUring => uring()
                .map(|fd| Pinner {
                    method,
                    what: "an io_uring instance".into(),
                    how: How::Uring(fd),
                })
                .map_err(|e| format!("io_uring_setup fails ({e})")),
            Method::ODirect => {
                let t = match direct {
                    Some(p) => Ok(direct::open_override(p, pin_len)?),
                    None => direct::find(pin_len),
                };
                t.map(|t| Pinner {
                    method,
                    what: t.what,
                    how: How::Direct {
                        fd: t.fd,
                        size: t.size,
                    },
                })
                .map_err(|e| format!("no O_DIRECT source: {e}"))
            }
        })
    }

    /// The same means for another thread (an io_uring instance can register one buffer set
    /// at a time, so each thread gets its own).
    pub fn another(&self) -> io::Result<Pinner> {
        let how = match &self.how {
            How::Rds(_) => How::Rds(rds_socket()?),
            How::Uring(_) => How::Uring(uring()?),
            How::Direct { fd, size } => How::Direct {
                fd: fd.try_clone()?,
                size: *size,
            },
        };
        Ok(Pinner {
            method: self.method,
            what: self.what.clone(),
            how,
        })
    }

    /// Pins and releases `len` bytes at `buf` (page-aligned, inside a live private mapping).
    pub fn pin(&self, buf: *mut u8, len: usize, rng: &mut Rng) -> io::Result<()> {
        let r = match &self.how {
            How::Rds(fd) => {
                let mut l = len as libc::socklen_t;
                // SAFETY: buf..buf+len is live writable memory; the kernel pins and fills it.
                let r = unsafe {
                    libc::getsockopt(
                        fd.as_raw_fd(),
                        SOL_RDS,
                        RDS_INFO_COUNTERS,
                        buf.cast(),
                        &mut l,
                    )
                };
                // A short buffer gives ENOSPC after the pages were pinned: as good here.
                if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSPC) {
                    0
                } else {
                    i64::from(r)
                }
            }
            How::Uring(fd) => {
                let iov = libc::iovec {
                    iov_base: buf.cast(),
                    iov_len: len,
                };
                // SAFETY: registering one iovec over live memory.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_io_uring_register,
                        fd.as_raw_fd(),
                        IORING_REGISTER_BUFFERS,
                        &iov as *const libc::iovec,
                        1,
                    )
                };
                if r == 0 {
                    // SAFETY: unregistering what was just registered.
                    unsafe {
                        libc::syscall(
                            libc::SYS_io_uring_register,
                            fd.as_raw_fd(),
                            IORING_UNREGISTER_BUFFERS,
                            std::ptr::null::<u8>(),
                            0,
                        )
                    };
                }
                r
            }
            How::Direct { fd, size } => {
                let slots = size.saturating_sub(len as u64) / super::memory::PAGE as u64;
                let off = rng.below(slots + 1) * super::memory::PAGE as u64;
                // SAFETY: reading into live, page-aligned memory of `len` bytes.
                let r = unsafe { libc::pread(fd.as_raw_fd(), buf.cast(), len, off as libc::off_t) };
                r as i64
            }
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_gates_follow_the_kernel_notes() {
        assert!(Method::Rds.not_in((5, 11)).is_none());
        assert!(Method::IoUring.not_in((6, 1)).unwrap().contains("slow GUP"));
        assert!(Method::IoUring.not_in((6, 10)).is_none());
        assert!(Method::IoUring.not_in((6, 12)).is_none());
        assert!(Method::ODirect.not_in((6, 4)).unwrap().contains("FOLL_GET"));
        assert!(Method::ODirect.not_in((6, 5)).is_none());
    }
}
