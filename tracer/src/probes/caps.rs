//! What this kernel lets the tracer attach, detected at start-up, and the attach modes that
//! follow: `kprobe` (function probes plus instruction-level sites), `fentry` (the same
//! function probes through BPF trampolines), `tracepoint` (forks and pinning syscalls seen
//! from stable tracepoints). Each mode names what it lacks here in one sentence.
use std::{fmt, path::Path};

use aya::{maps::MapType, programs::ProgramType};

use super::env;

/// How the probes attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Mode {
    /// kprobes/kretprobes on the copy and GUP-fast functions, plus kprobes on the seqcount's
    /// own instructions: everything the validator can judge.
    Kprobe,
    /// fentry/fexit on the same functions: the same function-level events, no instruction
    /// sites.
    Fentry,
    /// Raw tracepoints: each fork's seqcount bracket and the pinning syscalls, nothing inside
    /// copy_page_range or GUP-fast.
    Tracepoint,
}

impl Mode {
    /// Richest first: what `--mode auto` tries in order.
    pub const ALL: [Mode; 3] = [Mode::Kprobe, Mode::Fentry, Mode::Tracepoint];

    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Kprobe => "kprobe",
            Mode::Fentry => "fentry",
            Mode::Tracepoint => "tracepoint",
        }
    }

    pub fn from_name(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// What the mode sees, for `tracer sites` and the plan.
    pub const fn sees(self) -> &'static str {
        match self {
            Mode::Kprobe => {
                "every copy_page_range/copy_hugetlb_page_range call (VMA, COW, seq before and after), every GUP-fast call (flags, seq), and, where discovery finds them, the seqcount's own write and read instructions"
            }
            Mode::Fentry => {
                "every copy_page_range/copy_hugetlb_page_range call and every GUP-fast call, as kprobe mode does at function level"
            }
            Mode::Tracepoint => {
                "each fork's advance of the parent's seqcount (read holding its mmap_lock, so exactly that fork's write sections), and the seqcount at entry and exit of the syscalls that pin through GUP-fast (O_DIRECT reads and writes, io_uring_register, RDS getsockopt)"
            }
        }
    }

    /// What the mode cannot see.
    pub const fn misses(self) -> &'static str {
        match self {
            Mode::Kprobe => "nothing the validator needs, where discovery proves the sites",
            Mode::Fentry => {
                "the seqcount's instructions inside those functions (instruction sites need kprobes): write sections are judged by their copy windows, and GUP-fast's own loads, odd bails and retries are not seen"
            }
            Mode::Tracepoint => {
                "individual VMA copies and write sections, and everything inside GUP-fast (its loads, odd bails, retries, back-outs): those rules cannot be checked"
            }
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kernel's facilities, each `Err` with the reason it is unusable.
#[derive(Clone, Debug)]
pub struct Caps {
    pub root: bool,
    pub bpf: Result<(), String>,
    /// The BTF file the offsets come from (`--btf`, or the kernel's own).
    pub btf: bool,
    pub btf_path: String,
    /// The running kernel's own BTF: fentry programs are loaded against its type ids.
    pub sys_btf: bool,
    pub kprobes: bool,
    pub fentry: Result<(), String>,
    pub raw_tracepoint: Result<(), String>,
    pub ringbuf: Result<(), String>,
}

/// An error and its causes on one line (aya's syscall errors keep the errno in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn probe_program(t: ProgramType, what: &str) -> Result<(), String> {
    match aya::sys::is_program_supported(t) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("this kernel does not support {what}")),
        Err(e) => Err(format!("the kernel refused a test {what} ({})", chain(&e))),
    }
}

impl Caps {
    /// Asks the kernel. Cheap (a few trivial bpf() calls), and only with root: without it every
    /// probe would fail for that reason alone.
    pub fn detect(btf: &Path) -> Caps {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let bpf = if root {
            env::bpf_works().map_err(|e| e.to_string())
        } else {
            Err(env::EnvError::NotRoot.to_string())
        };
        let usable = bpf.is_ok();
        let sys_btf = Path::new(env::SYS_BTF).exists();
        let needs_bpf = || Err("bpf() is unavailable".to_owned());
        let fentry = if !usable {
            needs_bpf()
        } else if !sys_btf {
            Err(format!(
                "fentry programs need the running kernel's own BTF ({}), which it does not expose",
                env::SYS_BTF
            ))
        } else {
            probe_program(ProgramType::Tracing, "fentry program")
        };
        let raw_tracepoint = if usable {
            probe_program(ProgramType::RawTracePoint, "raw tracepoint program")
        } else {
            needs_bpf()
        };
        let ringbuf = if !usable {
            needs_bpf()
        } else {
            match aya::sys::is_map_supported(MapType::RingBuf) {
                Ok(true) => Ok(()),
                Ok(false) => Err("this kernel has no BPF ring buffer (5.8+)".to_owned()),
                Err(e) => Err(format!(
                    "the kernel refused a test ring buffer ({})",
                    chain(&e)
                )),
            }
        };
        Caps {
            root,
            bpf,
            btf: btf.exists(),
            btf_path: btf.display().to_string(),
            sys_btf,
            kprobes: env::has_kprobes(),
            fentry,
            raw_tracepoint,
            ringbuf,
        }
    }

    /// What `mode` needs and this kernel lacks, one clause each (empty: the mode can run).
    pub fn missing(&self, mode: Mode) -> Vec<String> {
        let mut out = Vec::new();
        if !self.root {
            out.push(env::EnvError::NotRoot.to_string());
            return out;
        }
        if let Err(e) = &self.bpf {
            out.push(e.clone());
            return out;
        }
        if !self.btf {
            out.push(env::EnvError::NoBtf(self.btf_path.clone()).to_string());
        }
        if let Err(e) = &self.ringbuf {
            out.push(e.clone());
        }
        match mode {
            Mode::Kprobe if !self.kprobes => {
                out.push("this kernel cannot attach kprobes (CONFIG_KPROBES is off)".to_owned());
            }
            Mode::Fentry => {
                if let Err(e) = &self.fentry {
                    out.push(e.clone());
                }
            }
            Mode::Tracepoint => {
                if let Err(e) = &self.raw_tracepoint {
                    out.push(e.clone());
                }
            }
            Mode::Kprobe => {}
        }
        out
    }

    /// The richest mode that can run here.
    pub fn best(&self) -> Option<Mode> {
        Mode::ALL.into_iter().find(|&m| self.missing(m).is_empty())
    }
}

/// The mode a trace runs in, and why richer ones were passed over (`--mode auto`).
#[derive(Clone, Debug)]
pub struct Selected {
    pub mode: Mode,
    /// "kprobe: why not", for each richer mode `auto` skipped.
    pub skipped: Vec<String>,
}

/// Picks the attach mode: `want` (`None` is `--mode auto`, the richest that can run). Checks
/// what every mode needs first (root, bpf(), BTF), so those keep their own sentences; a mode
/// that cannot run here is refused in one sentence naming what is missing.
pub fn select(want: Option<Mode>, btf: &Path) -> Result<Selected, env::EnvError> {
    env::preflight(btf)?;
    let caps = Caps::detect(btf);
    match want {
        Some(mode) => {
            let missing = caps.missing(mode);
            if missing.is_empty() {
                return Ok(Selected {
                    mode,
                    skipped: Vec::new(),
                });
            }
            if mode == Mode::Kprobe && !caps.kprobes && missing.len() == 1 {
                return Err(env::EnvError::NoKprobes);
            }
            Err(env::EnvError::ModeUnavailable {
                mode: mode.as_str().to_owned(),
                why: missing.join("; "),
            })
        }
        None => {
            let mut skipped = Vec::new();
            for mode in Mode::ALL {
                let missing = caps.missing(mode);
                if missing.is_empty() {
                    return Ok(Selected { mode, skipped });
                }
                skipped.push(format!("{mode}: {}", missing.join("; ")));
            }
            Err(env::EnvError::NoMode(skipped.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Caps {
        Caps {
            root: true,
            bpf: Ok(()),
            btf: true,
            btf_path: env::SYS_BTF.into(),
            sys_btf: true,
            kprobes: true,
            fentry: Ok(()),
            raw_tracepoint: Ok(()),
            ringbuf: Ok(()),
        }
    }

    #[test]
    fn the_richest_mode_that_runs_is_best() {
        let mut c = caps();
        assert_eq!(c.best(), Some(Mode::Kprobe));
        // This project's machines: no kprobes, fentry refused.
        c.kprobes = false;
        c.fentry = Err("the kernel refused a test fentry program (EPERM)".into());
        assert_eq!(c.best(), Some(Mode::Tracepoint));
        assert_eq!(
            c.missing(Mode::Kprobe),
            vec!["this kernel cannot attach kprobes (CONFIG_KPROBES is off)".to_owned()]
        );
        assert_eq!(c.missing(Mode::Fentry).len(), 1);
        c.raw_tracepoint = Err("no".into());
        assert_eq!(c.best(), None);
    }

    #[test]
    fn what_every_mode_needs_is_named_first() {
        let mut c = caps();
        c.root = false;
        for m in Mode::ALL {
            assert!(c.missing(m)[0].contains("needs root"), "{m}");
        }
        let mut c = caps();
        c.btf = false;
        c.ringbuf = Err("this kernel has no BPF ring buffer (5.8+)".into());
        let m = c.missing(Mode::Tracepoint);
        assert!(
            m[0].contains("no BTF") && m[1].contains("ring buffer"),
            "{m:?}"
        );
    }
}
