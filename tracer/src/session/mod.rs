//! One tracing session: the attach plan ([`plan`]), the log header ([`header`]) and the loop
//! that drains the kernel's records into a consumer ([`pump`]). `tracer record` and the live
//! TUI are its consumers; both stop it through a [`Cancel`] handle they share with it.
pub mod header;
pub mod plan;
pub mod pump;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

pub use header::{clock_slack_ns, header};
pub use plan::{build, plan, plan_text, warn_plan};
pub use pump::{PumpStats, Sink, pump};
use tokio::sync::Notify;

use crate::probes::Mode;

/// `--mode`: how to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// The richest mode this kernel supports (kprobe, else fentry, else tracepoint), saying
    /// why richer ones could not run.
    Auto,
    /// kprobes on the functions and the seqcount's instructions: everything (refused where the
    /// kernel has no kprobes).
    Kprobe,
    /// fentry/fexit on the same functions: the same function-level events, no instruction
    /// sites.
    Fentry,
    /// Tracepoints only: each fork's seqcount advance and the pinning syscalls.
    Tracepoint,
}

impl ModeArg {
    /// The mode asked for; `None` for `auto`.
    pub fn wanted(self) -> Option<Mode> {
        match self {
            ModeArg::Auto => None,
            ModeArg::Kprobe => Some(Mode::Kprobe),
            ModeArg::Fentry => Some(Mode::Fentry),
            ModeArg::Tracepoint => Some(Mode::Tracepoint),
        }
    }
}

/// What to trace, common to `record` and `tui`.
#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    /// How to attach. The default, kprobe, sees everything and refuses a kernel without
    /// kprobes rather than take a lesser trace by accident; `auto` takes the richest mode that
    /// works here. `tracer sites` lists what each mode sees on this kernel.
    #[arg(long, value_enum, default_value_t = ModeArg::Kprobe)]
    pub mode: ModeArg,
    /// Stop after this many seconds.
    #[arg(long, value_parser = crate::cli::seconds)]
    pub duration: Option<std::time::Duration>,
    /// Only events of this process (tgid).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::cli::PID_MAX)))]
    pub pid: Option<u32>,
    /// Only events of tasks with this command name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 4 << 20, value_parser = crate::cli::ring_size)]
    pub ring_size: u32,
    /// Instances of each return probe: how many threads may be inside a probed function at
    /// once before its returns go uncounted (counted as missed).
    #[arg(long, default_value_t = crate::probes::kprobe_events::MAXACTIVE, value_parser = crate::cli::maxactive)]
    pub maxactive: u32,
    /// BTF of the traced kernel (default /sys/kernel/btf/vmlinux).
    #[arg(long)]
    pub btf: Option<PathBuf>,
    /// Attach function-level probes only, even where instruction sites were found.
    #[arg(long)]
    pub no_sites: bool,
    /// Workload to run while tracing; tracing stops when it exits.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// This process's CPU time so far (user + system, seconds) and peak resident set (KiB), from
/// getrusage: the consumer's cost, which the TUI header and `tracer record` report.
pub fn self_usage() -> Option<(f64, u64)> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct on success; it is only read then.
    let ru = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) != 0 {
            return None;
        }
        ru.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some((
        tv(ru.ru_utime) + tv(ru.ru_stime),
        u64::try_from(ru.ru_maxrss).unwrap_or(0),
    ))
}

/// Stops a running [`pump`]: cloned into every consumer (the recorder's signal handler, the
/// TUI's quit key), so the session ends through one path that stops the workload, drains what
/// the kernel already delivered and writes the summary.
#[derive(Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Default)]
struct CancelInner {
    cancelled: AtomicBool,
    notify: Notify,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the session to stop; callable from any thread, any number of times.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once [`Cancel::cancel`] has been called (at once if it already was).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read, so a cancel in between is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Cancels on SIGINT or SIGTERM (the recorder's Ctrl-C). Call inside a tokio runtime; the
    /// handlers stay installed for the process's life.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        // A closed terminal (or `kill -HUP`) ends the trace like Ctrl-C: the log is completed.
        let mut hup = signal(SignalKind::hangup())?;
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            me.cancel();
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_wakes_a_waiter_and_a_late_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = Cancel::new();
            let waiter = {
                let c = c.clone();
                tokio::spawn(async move { c.cancelled().await })
            };
            tokio::task::yield_now().await;
            assert!(!c.is_cancelled());
            // From another thread, as the TUI does.
            let c2 = c.clone();
            std::thread::spawn(move || c2.cancel()).join().unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("the waiter woke")
                .unwrap();
            // Already cancelled: returns at once.
            tokio::time::timeout(std::time::Duration::from_secs(5), c.cancelled())
                .await
                .expect("a late waiter returns");
        });
    }
}
