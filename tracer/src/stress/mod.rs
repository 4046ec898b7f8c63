//! `tracer stress`: the race reproducer. It exercises both sides of the seqcount in one mm.
//!
//! Forking threads call `fork()` (not `std::process::Command`, which uses vfork/CLONE_VM and
//! never copies page tables) while the process holds several dirtied private anonymous
//! mappings, so every fork runs `copy_page_range` write sections, one per mapping. Pinning
//! threads, one set per pin method this kernel routes through GUP-fast with FOLL_PIN
//! ([`pin`]), pin pages of those same mappings, so their seqcount reads race with the forks
//! ([`workers`]). It says which methods it uses and why the others are not, and counts per
//! method.
mod direct;
pub mod load;
mod memory;
mod pin;
mod rng;
mod workers;

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::builder::RangedU64ValueParser;
use memory::{Mapping, PAGE};
pub use pin::Method;
use pin::Pinner;
use rng::Rng;
use serde::Serialize;
use thiserror::Error;

/// Defaults, measured to provoke dozens of protected overlaps in 20 s on Debian's 6.1 and
/// 6.12 cloud kernels under QEMU TCG with 2 vCPUs, without losing events (README, "Check a
/// kernel").
pub const DEFAULT_FORKERS: u32 = 2;
pub const DEFAULT_PINNERS: u32 = 1;
pub const DEFAULT_MAPPINGS: usize = 8;
pub const DEFAULT_MAPPING_KIB: usize = 256;
pub const DEFAULT_PIN_PAGES: usize = 4;
pub const DEFAULT_PIN_GAP_US: u64 = 200;
pub const DEFAULT_FORK_GAP_US: u64 = 0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long to run, in seconds (up to 1000000).
    #[arg(long, default_value_t = 5.0, value_parser = crate::cli::workload_seconds)]
    pub duration: f64,
    /// Seed for the workload's choices (pages pinned, fork pacing); printed when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Forking threads (1-64).
    #[arg(long, default_value_t = DEFAULT_FORKERS, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub forkers: u32,
    /// Pinning threads per pin method (1-64).
    #[arg(long, default_value_t = DEFAULT_PINNERS, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub pinners: u32,
    /// Pin methods to use, comma-separated [default: every one this kernel offers].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub methods: Vec<Method>,
    /// O_DIRECT reads from this file or block device instead of one found automatically.
    #[arg(long, value_name = "FILE")]
    pub direct: Option<PathBuf>,
    /// Private anonymous mappings to dirty and fork (1-1024).
    #[arg(long, default_value_t = DEFAULT_MAPPINGS, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub mappings: usize,
    /// Size of each mapping in KiB (4-1048576; all of them together at most 4 GiB).
    #[arg(long, default_value_t = DEFAULT_MAPPING_KIB, value_parser = RangedU64ValueParser::<usize>::new().range(4..=1 << 20))]
    pub mapping_kib: usize,
    /// Pages pinned per call (1-512; at most a mapping's worth).
    #[arg(long, default_value_t = DEFAULT_PIN_PAGES, value_parser = RangedU64ValueParser::<usize>::new().range(1..=512))]
    pub pin_pages: usize,
    /// Pause between one thread's forks, in microseconds (0-10000000; jittered by +-50%).
    #[arg(long, default_value_t = DEFAULT_FORK_GAP_US, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub fork_gap_us: u64,
    /// Pause between one thread's pins, in microseconds (0-10000000). The default leaves the
    /// tracer's consumer CPU time on a small (or emulated) machine; 0 pins flat out.
    #[arg(long, default_value_t = DEFAULT_PIN_GAP_US, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub pin_gap_us: u64,
    /// Also write the methods and counts as JSON to FILE (for `tracer check`).
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
}

/// Bad arguments or a machine that cannot run the workload (exit status 2).
#[derive(Debug, Error)]
pub enum StressError {
    #[error(
        "--mappings x --mapping-kib is {kib} KiB; at most 4 GiB (4194304 KiB) of mappings are allowed"
    )]
    TooMuchMemory { kib: u128 },
    #[error("--direct needs o_direct among --methods")]
    DirectNotSelected,
    #[error(transparent)]
    Direct(#[from] direct::DirectError),
    #[error("no way to pin pages through GUP-fast here: {0}")]
    NoMethod(String),
    #[error("cannot map {what}: {err}")]
    Map { what: String, err: std::io::Error },
}

/// The combinations clap cannot check (each flag's own range is in its parser: exit 2).
pub fn check_args(a: &Args) -> Result<(), StressError> {
    let kib = a.mappings as u128 * a.mapping_kib as u128;
    if kib > 4 << 20 {
        return Err(StressError::TooMuchMemory { kib });
    }
    if a.direct.is_some() && !a.methods.is_empty() && !a.methods.contains(&Method::ODirect) {
        return Err(StressError::DirectNotSelected);
    }
    Ok(())
}

/// One method in the summary: used (with its counts) or not (with the reason).
#[derive(Debug, Serialize)]
pub struct MethodReport {
    pub method: Method,
    pub available: bool,
    /// What it pinned through, when available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// Why it was not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub threads: u32,
    pub pins: u64,
    pub failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// What the workload did: `--summary FILE` writes this as JSON.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub pid: u32,
    pub release: String,
    pub seed: u64,
    pub duration_s: f64,
    pub forkers: u32,
    pub mappings: usize,
    pub mapping_kib: usize,
    pub hugetlb: bool,
    pub pin_pages: usize,
    pub methods: Vec<MethodReport>,
    pub forks: u64,
    pub fork_errors: u64,
}

/// The methods to try, and for each the open pinner or why there is none.
fn open_methods(a: &Args, release: &str) -> Result<Vec<(Method, Result<Pinner, String>)>> {
    let wanted: Vec<Method> = if a.methods.is_empty() {
        Method::ALL.to_vec()
    } else {
        let mut m = a.methods.clone();
        m.sort();
        m.dedup();
        m
    };
    let version = crate::kernel::foll::parse_release(release).ok();
    let pin_len = a.pin_pages.min(a.mapping_kib * 1024 / PAGE).max(1) * PAGE;
    let mut v = Vec::new();
    for m in wanted {
        if let Some(why) = version.and_then(|r| m.not_in(r)) {
            v.push((m, Err(why)));
            continue;
        }
        v.push((m, Pinner::open(m, a.direct.as_deref(), pin_len)?));
    }
    Ok(v)
}

fn write_summary(path: &std::path::Path, s: &Summary) -> Result<()> {
    // Possibly written as root into a report directory: never through a planted symlink.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    serde_json::to_writer_pretty(&mut f, s)?;
    writeln!(f)?;
    Ok(())
}

fn default_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

pub fn main(a: Args) -> Result<ExitCode> {
    check_args(&a)?;
    let seed = a.seed.unwrap_or_else(default_seed);
    let release = crate::probes::uname_release();
    let opened = open_methods(&a, &release)?;
    let mut pinners: Vec<Pinner> = Vec::new();
    let mut reports: Vec<MethodReport> = Vec::new();
    for (m, r) in opened {
        match r {
            Ok(p) => {
                eprintln!("stress: pinning via {} ({})", m.describe(), p.what);
                reports.push(MethodReport {
                    method: m,
                    available: true,
                    what: Some(p.what.clone()),
                    reason: None,
                    threads: a.pinners,
                    pins: 0,
                    failed: 0,
                    first_error: None,
                });
                pinners.push(p);
            }
            Err(why) => {
                eprintln!("stress: not pinning via {}: {why}", m.describe());
                reports.push(MethodReport {
                    method: m,
                    available: false,
                    what: None,
                    reason: Some(why),
                    threads: 0,
                    pins: 0,
                    failed: 0,
                    first_error: None,
                });
            }
        }
    }
    if pinners.is_empty() {
        let why: Vec<String> = reports
            .iter()
            .filter_map(|r| {
                r.reason
                    .as_ref()
                    .map(|w| format!("{}: {w}", r.method.name()))
            })
            .collect();
        return Err(StressError::NoMethod(why.join("; ")).into());
    }

    let maps: Vec<Mapping> = (0..a.mappings)
        .map(|i| {
            Mapping::private(a.mapping_kib * 1024).map_err(|err| StressError::Map {
                what: format!("mapping {i} of {} KiB", a.mapping_kib),
                err,
            })
        })
        .collect::<Result<_, _>>()?;
    // One hugetlb mapping when the kernel has huge pages reserved (vm.nr_hugepages): it is
    // forked like the others, so the hugetlb write section runs too. Without a pool, say so.
    let huge = match Mapping::hugetlb() {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!(
                "stress: no hugetlb mapping ({e}); reserve pages with sysctl vm.nr_hugepages=4 to fork one"
            );
            None
        }
    };
    eprintln!(
        "stress: pid {}, seed {seed}, {} forkers over {} mappings of {} KiB{}; {} pinner(s) per method, {} page(s) per pin",
        std::process::id(),
        a.forkers,
        a.mappings,
        a.mapping_kib,
        if huge.is_some() {
            " and one 2 MiB hugetlb mapping"
        } else {
            ""
        },
        a.pinners,
        a.pin_pages,
    );

    let shared = Arc::new(workers::Shared {
        maps,
        stop: AtomicBool::new(false),
        forks: AtomicU64::new(0),
        fork_errors: AtomicU64::new(0),
    });
    let counts: Vec<Arc<workers::Count>> = pinners.iter().map(|_| Arc::default()).collect();
    let mut threads = Vec::new();
    let mut stream = 0u64;
    for (p, count) in pinners.into_iter().zip(&counts) {
        // Each thread its own means (an io_uring instance registers one buffer set at a time).
        let mut own = vec![];
        for _ in 1..a.pinners {
            own.push(
                p.another().with_context(|| {
                    format!("opening {} for another thread", p.method.describe())
                })?,
            );
        }
        own.push(p);
        for p in own {
            stream += 1;
            threads.push(workers::pinner(
                Arc::clone(&shared),
                p,
                Arc::clone(count),
                Rng::stream(seed, stream),
                a.pin_pages,
                Duration::from_micros(a.pin_gap_us),
            ));
        }
    }
    for _ in 0..a.forkers {
        stream += 1;
        threads.push(workers::forker(
            Arc::clone(&shared),
            Rng::stream(seed, stream),
            a.fork_gap_us,
        ));
    }

    let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let hugetlb = huge.is_some();
    drop(huge);

    for (slot, r) in reports.iter_mut().filter(|r| r.available).enumerate() {
        if let Some(c) = counts.get(slot) {
            r.pins = c.ok.load(Ordering::Relaxed);
            r.failed = c.failed.load(Ordering::Relaxed);
            r.first_error = c.first_error.lock().ok().and_then(|f| f.clone());
        }
    }
    let summary = Summary {
        pid: std::process::id(),
        release,
        seed,
        duration_s: a.duration,
        forkers: a.forkers,
        mappings: a.mappings,
        mapping_kib: a.mapping_kib,
        hugetlb,
        pin_pages: a.pin_pages,
        methods: reports,
        forks: shared.forks.load(Ordering::Relaxed),
        fork_errors: shared.fork_errors.load(Ordering::Relaxed),
    };
    eprintln!("stress: {}", render_counts(&summary));
    if let Some(p) = &a.summary {
        write_summary(p, &summary)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The end-of-run line: forks and per-method counts.
pub fn render_counts(s: &Summary) -> String {
    let mut parts = vec![format!(
        "{} forks ({} forkers{})",
        s.forks,
        s.forkers,
        if s.fork_errors > 0 {
            format!(", {} failed", s.fork_errors)
        } else {
            String::new()
        }
    )];
    for m in s.methods.iter().filter(|m| m.available) {
        let mut p = format!("{} pins {}", m.method.name(), m.pins);
        if m.failed > 0 {
            p.push_str(&format!(
                " ({} failed: {})",
                m.failed,
                m.first_error.as_deref().unwrap_or("?")
            ));
        }
        parts.push(p);
    }
    parts.join(", ")
}
