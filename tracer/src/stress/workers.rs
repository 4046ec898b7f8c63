//! The workload's threads: forkers and pinners over the same mappings, until `stop`.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::{
    memory::{Mapping, PAGE},
    pin::Pinner,
    rng::Rng,
};

/// What every thread of a run shares.
pub struct Shared {
    pub maps: Vec<Mapping>,
    pub stop: AtomicBool,
    pub forks: AtomicU64,
    pub fork_errors: AtomicU64,
}

/// One pin method's outcomes, over all its threads.
#[derive(Default)]
pub struct Count {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Count {
    fn add(&self, r: std::io::Result<()>) {
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = self.first_error.lock() {
                    f.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// Pins `pages` pages of a random mapping at a random place, then pauses `gap`, until stop.
pub fn pinner(
    shared: Arc<Shared>,
    p: Pinner,
    count: Arc<Count>,
    mut rng: Rng,
    pages: usize,
    gap: Duration,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !shared.stop.load(Ordering::Relaxed) {
            let m = &shared.maps[rng.below(shared.maps.len() as u64) as usize];
            let n = pages.min(m.pages());
            let first = rng.below((m.pages() - n + 1) as u64) as usize;
            count.add(p.pin(m.page(first), n * PAGE, &mut rng));
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
    })
}

/// Forks (the child leaves at once) and reaps, then pauses about `gap_us`, until stop.
pub fn forker(shared: Arc<Shared>, mut rng: Rng, gap_us: u64) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !shared.stop.load(Ordering::Relaxed) {
            // SAFETY: the child only calls _exit, which is async-signal-safe.
            match unsafe { libc::fork() } {
                0 => {
                    // SAFETY: leave the child at once, without running any Rust code.
                    unsafe { libc::_exit(0) }
                }
                p if p > 0 => {
                    let mut status = 0;
                    // SAFETY: reaping our own child.
                    unsafe { libc::waitpid(p, &mut status, 0) };
                    shared.forks.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    shared.fork_errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // Re-dirty one mapping: its pages become writable again (fork write-protected
            // them), so pins of them can succeed in GUP-fast itself.
            shared.maps[rng.below(shared.maps.len() as u64) as usize].dirty();
            if gap_us > 0 {
                std::thread::sleep(Duration::from_micros(gap_us / 2 + rng.below(gap_us + 1)));
            }
        }
    })
}
