//! `tracer stress`: a workload that exercises both sides of the seqcount in one mm.
//!
//! The main thread forks (with `fork()` itself: `std::process::Command` uses vfork/CLONE_VM,
//! which never copies page tables) while holding several dirtied private anonymous mappings, so
//! every fork runs `copy_page_range` write sections. Pinning threads in the same process pin
//! pages of those mappings through GUP-fast with FOLL_PIN, by whichever means this kernel
//! routes through `pin_user_pages_fast`: RDS info `getsockopt` (needs `rds.ko`), io_uring
//! buffer registration (6.10+), O_DIRECT reads (6.5+, `--direct FILE`).
use std::{
    ffi::CString,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Private anonymous mappings to dirty before forking.
    #[arg(long, default_value_t = 8)]
    pub mappings: usize,
    /// Size of each mapping in KiB.
    #[arg(long, default_value_t = 256)]
    pub mapping_kib: usize,
    /// Pinning threads.
    #[arg(long, default_value_t = 1)]
    pub pinners: usize,
    /// Also pin with O_DIRECT reads from this file or block device.
    #[arg(long)]
    pub direct: Option<std::path::PathBuf>,
    /// Pause between forks, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub fork_gap_us: u64,
    /// Pause between pins, in microseconds. The default leaves the tracer's consumer CPU time
    /// on a small (or emulated) machine; 0 pins flat out.
    #[arg(long, default_value_t = 200)]
    pub pin_gap_us: u64,
}

const PAGE: usize = 4096;
const AF_RDS: i32 = 21;
const SOL_RDS: i32 = 276;
const RDS_INFO_COUNTERS: i32 = 10000;
const IORING_REGISTER_BUFFERS: u32 = 0;
const IORING_UNREGISTER_BUFFERS: u32 = 1;

/// A private anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Bytes of the inaccessible pages before and after it (see `with_flags`).
    guard: usize,
}

// SAFETY: the mapping is plain memory; threads only pass its address to the kernel.
unsafe impl Send for Mapping {}
// SAFETY: as above; no Rust references into it are shared.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(len: usize) -> std::io::Result<Mapping> {
        Mapping::with_flags(len, 0)
    }

    /// A private hugetlb mapping (2 MiB pages from the kernel's pool): fork copies it through
    /// `copy_hugetlb_page_range`, which has its own write section since 5.19.
    fn huge(len: usize) -> std::io::Result<Mapping> {
        Mapping::with_flags(len, libc::MAP_HUGETLB)
    }

    fn with_flags(len: usize, extra: i32) -> std::io::Result<Mapping> {
        // Adjacent anonymous mappings with the same flags merge into one VMA, and fork copies
        // one VMA in one write section. So a small-page mapping is reserved inaccessible with a
        // page to spare on each side, and only its middle made writable: the guard pages are
        // never written (no anon_vma: fork copies them without a write section) and keep the
        // mapping its own VMA, one write section per mapping. Made writable after the
        // reservation, the middle cannot merge into a neighbour that already has an anon_vma.
        let guard = if extra == 0 { PAGE } else { 0 };
        let prot = if guard > 0 {
            libc::PROT_NONE
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: anonymous private mapping with no address hint.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + 2 * guard,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let m = Mapping {
            // SAFETY: within the reservation.
            ptr: unsafe { base.cast::<u8>().add(guard) },
            len,
            guard,
        };
        // SAFETY: the middle of the mapping's own reservation.
        if guard > 0
            && unsafe { libc::mprotect(m.ptr.cast(), len, libc::PROT_READ | libc::PROT_WRITE) } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        m.dirty();
        Ok(m)
    }

    /// Writes every page so each has a present, writable PTE and the VMA an anon_vma: fork then
    /// copies its page tables inside a write section, and GUP-fast can pin it.
    fn dirty(&self) {
        for off in (0..self.len).step_by(PAGE) {
            // SAFETY: `off` is within the mapping.
            unsafe { self.ptr.add(off).write_volatile(1) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `with_flags` mapped, guards included.
        unsafe { libc::munmap(self.ptr.sub(self.guard).cast(), self.len + 2 * self.guard) };
    }
}

#[derive(Default)]
struct Counters {
    forks: AtomicU64,
    rds: AtomicU64,
    uring: AtomicU64,
    direct: AtomicU64,
    errors: AtomicU64,
}

enum Pinner {
    Rds(i32),
    Uring(i32),
    Direct(i32),
}

impl Pinner {
    fn name(&self) -> &'static str {
        match self {
            Pinner::Rds(_) => "RDS info getsockopt",
            Pinner::Uring(_) => "io_uring buffer registration",
            Pinner::Direct(_) => "O_DIRECT read",
        }
    }

    /// One pin-and-release of `len` bytes at `buf`.
    fn pin_once(&self, buf: *mut u8, len: usize, c: &Counters) {
        let ok = match self {
            Pinner::Rds(fd) => {
                let mut l = len as libc::socklen_t;
                // SAFETY: buf..buf+len is a live writable mapping; the kernel pins and fills it.
                let r = unsafe {
                    libc::getsockopt(*fd, SOL_RDS, RDS_INFO_COUNTERS, buf.cast(), &mut l)
                };
                // Success returns the item size (positive); a short buffer gives ENOSPC after
                // the pages were pinned, which serves as well here.
                r >= 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSPC)
            }
            Pinner::Uring(fd) => {
                let iov = libc::iovec {
                    iov_base: buf.cast(),
                    iov_len: len,
                };
                // SAFETY: registering one iovec over live memory, then unregistering it.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_io_uring_register,
                        *fd,
                        IORING_REGISTER_BUFFERS,
                        &iov as *const libc::iovec,
                        1,
                    )
                };
                if r == 0 {
                    // SAFETY: as above.
                    unsafe {
                        libc::syscall(
                            libc::SYS_io_uring_register,
                            *fd,
                            IORING_UNREGISTER_BUFFERS,
                            std::ptr::null::<u8>(),
                            0,
                        )
                    };
                }
                r == 0
            }
            Pinner::Direct(fd) => {
                // SAFETY: reading into a live, page-aligned mapping.
                let r = unsafe { libc::pread(*fd, buf.cast(), len, 0) };
                r >= 0
            }
        };
        let counter = match self {
            Pinner::Rds(_) => &c.rds,
            Pinner::Uring(_) => &c.uring,
            Pinner::Direct(_) => &c.direct,
        };
        if ok {
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open_pinners(direct: Option<&std::path::Path>) -> Result<Vec<Pinner>> {
    let mut v = Vec::new();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(AF_RDS, libc::SOCK_SEQPACKET, 0) };
    if fd >= 0 {
        v.push(Pinner::Rds(fd));
    }
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup with a zeroed, correctly sized io_uring_params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
    if fd >= 0 {
        v.push(Pinner::Uring(fd as i32));
    }
    if let Some(p) = direct {
        let c = CString::new(p.as_os_str().as_encoded_bytes())?;
        // SAFETY: open(2) with a valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECT) };
        if fd < 0 {
            bail!(
                "cannot open {} with O_DIRECT: {}",
                p.display(),
                std::io::Error::last_os_error()
            );
        }
        v.push(Pinner::Direct(fd));
    }
    if v.is_empty() {
        bail!(
            "no way to pin pages through GUP-fast here: AF_RDS sockets need `modprobe rds`, and io_uring is unavailable"
        );
    }
    Ok(v)
}

pub fn main(args: Args) -> Result<ExitCode> {
    if args.mappings == 0 || args.mapping_kib == 0 {
        bail!("--mappings and --mapping-kib must be at least 1");
    }
    let len = (args.mapping_kib * 1024).div_ceil(PAGE) * PAGE;
    let maps: Vec<Mapping> = (0..args.mappings)
        .map(|_| Mapping::new(len))
        .collect::<std::io::Result<_>>()?;
    // One hugetlb mapping when the kernel has huge pages reserved (vm.nr_hugepages): it is
    // forked like the others, so the hugetlb write section runs too. Without a pool, say so.
    let huge = match Mapping::huge(2 << 20) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!(
                "stress: no hugetlb mapping ({e}); reserve pages with sysctl vm.nr_hugepages=4 to fork one"
            );
            None
        }
    };
    let maps = Arc::new(maps);
    let pinners = Arc::new(open_pinners(args.direct.as_deref())?);
    eprintln!(
        "stress: pid {}, {} mappings of {} KiB{}, pinning via {}",
        std::process::id(),
        args.mappings,
        len / 1024,
        if huge.is_some() {
            " and one 2 MiB hugetlb mapping"
        } else {
            ""
        },
        pinners
            .iter()
            .map(Pinner::name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration.max(0.0));

    let mut threads = Vec::new();
    for t in 0..args.pinners.max(1) {
        let gap = Duration::from_micros(args.pin_gap_us);
        let (maps, pinners, counters, stop) = (
            Arc::clone(&maps),
            Arc::clone(&pinners),
            Arc::clone(&counters),
            Arc::clone(&stop),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let m = &maps[i % maps.len()];
                // Pin a few pages; the rest of the mapping stays for fork to copy.
                let n = (m.len / PAGE).min(4) * PAGE;
                for p in pinners.iter() {
                    p.pin_once(m.ptr, n, &counters);
                }
                i += 1;
                if !gap.is_zero() {
                    std::thread::sleep(gap);
                }
            }
        }));
    }

    while Instant::now() < deadline {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        match pid {
            0 => {
                // SAFETY: leave the child at once, without running any Rust code.
                unsafe { libc::_exit(0) }
            }
            p if p > 0 => {
                let mut status = 0;
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(p, &mut status, 0) };
                counters.forks.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Re-dirty one mapping so later forks copy fresh PTEs too.
        let f = counters.forks.load(Ordering::Relaxed) as usize;
        maps[f % maps.len()].dirty();
        if args.fork_gap_us > 0 {
            std::thread::sleep(Duration::from_micros(args.fork_gap_us));
        }
    }
    drop(huge);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let c = &counters;
    eprintln!(
        "stress: {} forks, pins: {} rds, {} io_uring, {} o_direct, {} errors",
        c.forks.load(Ordering::Relaxed),
        c.rds.load(Ordering::Relaxed),
        c.uring.load(Ordering::Relaxed),
        c.direct.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed)
    );
    Ok(ExitCode::SUCCESS)
}
