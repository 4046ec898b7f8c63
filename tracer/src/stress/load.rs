//! `tracer workload` (hidden): the single-purpose loops `cargo xtask bench` times, one
//! operation at a time so that the tracer's cost on each side of the seqcount is measured
//! apart (`tracer stress` mixes them, and its pins speed up when its forks slow down).
//!
//! - `fork`: fork()+_exit() of a process holding `--mappings` dirtied private anonymous
//!   mappings, each its own VMA, so every fork runs one `copy_page_range` write section per
//!   mapping.
//! - `pin`: one FOLL_PIN GUP-fast call per operation (io_uring buffer registration on 6.10+,
//!   RDS info getsockopt before).
//! - `block-pin`: a pin that never returns while the process lives: its pages are registered
//!   with userfaultfd and never populated, so GUP-fast finds no PTE, falls back to slow GUP,
//!   and the fault waits for a handler that never answers. The tests use it to end a trace in
//!   the middle of a GUP-fast call.
//!
//! Each prints one JSON line: the operations done, the seconds they took, their rate.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::builder::RangedU64ValueParser;

use super::{
    memory::{Mapping, PAGE},
    pin::{Method, Pinner},
    rng::Rng,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_enum)]
    pub what: What,
    /// Seconds to run (for block-pin: how long to stay blocked before exiting).
    #[arg(long, default_value_t = 3.0, value_parser = crate::cli::workload_seconds)]
    pub duration: f64,
    /// Run on this CPU only (sched_setaffinity), so a consumer can have the other one.
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(0..1024))]
    pub cpu: Option<usize>,
    /// fork: private anonymous mappings (1-1024).
    #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub mappings: usize,
    /// fork: KiB per mapping (4-65536).
    #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(4..=65536))]
    pub mapping_kib: usize,
    /// pin, block-pin: the pin method [default: io_uring where it pins through GUP-fast
    /// (6.10+), else rds].
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// pin: pages per call (1-512).
    #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=512))]
    pub pages: usize,
    /// block-pin: create this file just before the call that blocks.
    #[arg(long)]
    pub ready: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    Fork,
    Pin,
    BlockPin,
}

fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays inside it for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            bail!("--cpu {cpu} is out of range");
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

/// The pin method for this kernel: io_uring where it pins through GUP-fast, else RDS.
fn default_method() -> Method {
    let release = crate::probes::uname_release();
    match crate::kernel::foll::parse_release(&release) {
        Ok(v) if Method::IoUring.not_in(v).is_none() => Method::IoUring,
        _ => Method::Rds,
    }
}

fn open_pinner(a: &Args, len: usize) -> Result<Pinner> {
    let method = a.method.unwrap_or_else(default_method);
    match Pinner::open(method, None, len)? {
        Ok(p) => Ok(p),
        Err(why) => bail!("cannot pin via {}: {why}", method.describe()),
    }
}

fn report(what: &str, ops: u64, secs: f64) -> Result<()> {
    let line = serde_json::json!({
        "workload": what,
        "ops": ops,
        "secs": secs,
        "per_s": ops as f64 / secs.max(1e-9),
    });
    crate::outfile::print(&format!("{line}\n")).context("writing to standard output")
}

pub fn main(a: Args) -> Result<std::process::ExitCode> {
    if let Some(c) = a.cpu {
        pin_to(c)?;
    }
    let duration = Duration::from_secs_f64(a.duration);
    match a.what {
        What::Fork => fork_loop(&a, duration),
        What::Pin => pin_loop(&a, duration),
        What::BlockPin => block_pin(&a, duration),
    }?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn fork_loop(a: &Args, duration: Duration) -> Result<()> {
    // Dirtied once: each mapping has an anon_vma and present PTEs, so every fork copies it
    // inside a write section. Not re-dirtied between forks: the page faults would dwarf the
    // copy being measured.
    let maps: Vec<Mapping> = (0..a.mappings)
        .map(|_| Mapping::private(a.mapping_kib * 1024))
        .collect::<Result<_, _>>()
        .context("mapping the workload's memory")?;
    let t0 = Instant::now();
    let mut ops = 0u64;
    while t0.elapsed() < duration {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        match unsafe { libc::fork() } {
            // SAFETY: leave the child at once, without running any Rust code.
            0 => unsafe { libc::_exit(0) },
            p if p > 0 => {
                let mut status = 0;
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(p, &mut status, 0) };
                ops += 1;
            }
            _ => bail!("fork failed: {}", std::io::Error::last_os_error()),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(maps);
    report("fork", ops, secs)
}

fn pin_loop(a: &Args, duration: Duration) -> Result<()> {
    let m = Mapping::private(a.pages * PAGE).context("mapping the buffer")?;
    let p = open_pinner(a, a.pages * PAGE)?;
    let mut rng = Rng::stream(1, 0);
    let t0 = Instant::now();
    let (mut ops, mut failed) = (0u64, 0u64);
    while t0.elapsed() < duration {
        match p.pin(m.page(0), a.pages * PAGE, &mut rng) {
            Ok(()) => ops += 1,
            Err(e) => {
                failed += 1;
                if failed == 1 {
                    eprintln!("workload: pin failed: {e}");
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if ops == 0 {
        bail!("no pin succeeded ({failed} failed)");
    }
    report(&format!("pin:{}", p.method.name()), ops, secs)
}

// userfaultfd (include/uapi/linux/userfaultfd.h).
const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

fn block_pin(a: &Args, duration: Duration) -> Result<()> {
    let len = PAGE;
    // SAFETY: a fresh anonymous private mapping, never touched: no page is present.
    let buf = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if buf == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    // SAFETY: userfaultfd(2); the descriptor is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd < 0 {
        bail!(
            "userfaultfd: {} (root, or vm.unprivileged_userfaultfd=1, is needed for faults taken in the kernel)",
            std::io::Error::last_os_error()
        );
    }
    let fd = fd as i32;
    let mut api = [UFFD_API, 0, 0];
    let mut reg = [buf as u64, len as u64, UFFDIO_REGISTER_MODE_MISSING, 0];
    // SAFETY: the two ioctls read and write structs of exactly the sizes their numbers encode.
    unsafe {
        if libc::ioctl(fd, UFFDIO_API, api.as_mut_ptr()) != 0
            || libc::ioctl(fd, UFFDIO_REGISTER, reg.as_mut_ptr()) != 0
        {
            bail!("userfaultfd setup: {}", std::io::Error::last_os_error());
        }
    }
    let p = open_pinner(a, len)?;
    let done = Arc::new(AtomicBool::new(false));
    let returned = Arc::new(AtomicU64::new(0));
    {
        let (done, returned) = (Arc::clone(&done), Arc::clone(&returned));
        let buf = buf as usize;
        std::thread::spawn(move || {
            let mut rng = Rng::stream(1, 0);
            // Blocks in the kernel until the process exits (nothing resolves the fault).
            let r = p.pin(buf as *mut u8, len, &mut rng);
            returned.store(1 + u64::from(r.is_err()), Ordering::SeqCst);
            done.store(true, Ordering::SeqCst);
        });
    }
    // The thread is about to enter the call (give it a moment to get there).
    std::thread::sleep(Duration::from_millis(200));
    if let Some(r) = &a.ready {
        std::fs::write(r, b"blocking\n").with_context(|| format!("writing {}", r.display()))?;
    }
    let t0 = Instant::now();
    while t0.elapsed() < duration && !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if done.load(Ordering::SeqCst) {
        bail!(
            "the pin returned ({}) instead of blocking",
            if returned.load(Ordering::SeqCst) == 1 {
                "success"
            } else {
                "an error"
            }
        );
    }
    // Leaving ends the blocked thread with the process (the fault wait is killable).
    report("block-pin", 0, t0.elapsed().as_secs_f64())
}
