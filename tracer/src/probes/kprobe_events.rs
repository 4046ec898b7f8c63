//! Kprobes created through tracefs (`kprobe_events`), with the eBPF programs attached to their
//! perf events by hand.
//!
//! Why not the kernel's kprobe PMU (what aya uses): a kprobe made through tracefs is listed in
//! `kprobe_profile` with its hit and miss counts, on every kernel version (the PMU's are not,
//! and their link-info miss counter only exists since 6.7), and a return probe made this way
//! takes a `maxactive` (the kernel's default, 2 per CPU, runs out when many threads sleep in
//! the probed function, as GUP-fast's slow path does). So every event the kernel could not
//! deliver can be counted: kprobe misses (nested hits, exhausted return instances) from the
//! profile, and BPF runs the kernel skipped (a BPF program already running on that CPU) as
//! hits minus the program's own count of runs.
//!
//! Events live in a group named after this process (`tracer_<pid>`) and are removed on drop;
//! groups left by a tracer that died are removed by [`KprobeEvents::open`].
use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::Write as _,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where tracefs may be mounted.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Return-probe instances per probe by default: enough for that many threads inside the
/// probed function at once (the kernel's ceiling is 4096).
pub const MAXACTIVE: u32 = 1024;

#[derive(Debug, Error)]
pub enum KprobeEventsError {
    #[error("tracefs with kprobe_events is not mounted (looked in {0})")]
    NoTracefs(String),
    #[error("creating kprobe {what} through {path}: {err}")]
    Create {
        what: String,
        path: String,
        err: std::io::Error,
    },
    #[error("reading {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("perf_event_open on kprobe {what}: {err}")]
    PerfOpen { what: String, err: std::io::Error },
    #[error("attaching the eBPF program to kprobe {what}: {err}")]
    SetBpf { what: String, err: std::io::Error },
}

/// The kprobe events of this process.
pub struct KprobeEvents {
    root: PathBuf,
    group: String,
    /// Appended to event names, which older kernels print in `kprobe_profile` without their
    /// group: unique across tracers.
    suffix: String,
    /// Groups of dead tracers that were removed when this one started.
    pub removed_stale: Vec<String>,
}

/// One kprobe with the eBPF program attached. Dropping it detaches and removes the kprobe.
pub struct Attached {
    root: PathBuf,
    /// `group/event`.
    pub name: String,
    perf: Option<OwnedFd>,
}

/// `struct perf_event_attr` up to `sig_data` (PERF_ATTR_SIZE_VER7, 128 bytes): what 5.x and 6.x
/// kernels accept.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved2: u16,
    aux_sample_size: u32,
    reserved3: u32,
    sig_data: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IO('$', 0)`, `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// The tracefs directory that has `kprobe_events`.
pub fn tracefs() -> Option<PathBuf> {
    TRACEFS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("kprobe_events").exists())
}

fn append(root: &Path, line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .open(root.join("kprobe_events"))?;
    f.write_all(line.as_bytes())?;
    f.write_all(b"\n")
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl KprobeEvents {
    /// Finds tracefs and removes the kprobe groups of tracers that are no longer running.
    pub fn open() -> Result<KprobeEvents, KprobeEventsError> {
        let root = tracefs().ok_or_else(|| KprobeEventsError::NoTracefs(TRACEFS.join(", ")))?;
        let me = std::process::id();
        let mut k = KprobeEvents {
            root,
            group: format!("tracer_{me}"),
            suffix: format!("_{me}"),
            removed_stale: Vec::new(),
        };
        for name in k.list()? {
            let pid = name
                .split('/')
                .next()
                .and_then(|g| g.strip_prefix("tracer_"))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && (pid == me || !pid_alive(pid))
                && append(&k.root, &format!("-:{name}")).is_ok()
            {
                k.removed_stale.push(name);
            }
        }
        Ok(k)
    }

    /// `group/event` of every kprobe event defined now.
    pub fn list(&self) -> Result<Vec<String>, KprobeEventsError> {
        let path = self.root.join("kprobe_events");
        let text = std::fs::read_to_string(&path).map_err(|err| KprobeEventsError::Read {
            path: path.display().to_string(),
            err,
        })?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|d| d.split_once(':').map(|(_, n)| n.to_owned()))
            .collect())
    }

    /// Creates a kprobe (`ret`: a return probe with `maxactive` instances) at
    /// `symbol+offset`, opens its perf event and attaches `prog` to it.
    pub fn attach(
        &self,
        event: &str,
        symbol: &str,
        offset: u64,
        ret: bool,
        maxactive: u32,
        prog: BorrowedFd<'_>,
    ) -> Result<Attached, KprobeEventsError> {
        let name = format!("{}/{event}{}", self.group, self.suffix);
        let def = if ret {
            format!("r{maxactive}:{name} {symbol}")
        } else {
            format!("p:{name} {symbol}+{offset}")
        };
        append(&self.root, &def).map_err(|err| KprobeEventsError::Create {
            what: def.clone(),
            path: self.root.join("kprobe_events").display().to_string(),
            err,
        })?;
        // From here on the event exists: dropping `a` removes it whatever fails next.
        let mut a = Attached {
            root: self.root.clone(),
            name: name.clone(),
            perf: None,
        };
        let id_path = self.root.join("events").join(&name).join("id");
        let id: u64 = std::fs::read_to_string(&id_path)
            .map_err(|err| KprobeEventsError::Read {
                path: id_path.display().to_string(),
                err,
            })?
            .trim()
            .parse()
            .map_err(|_| KprobeEventsError::Read {
                path: id_path.display().to_string(),
                err: std::io::Error::other("not a number"),
            })?;
        let attr = PerfEventAttr {
            kind: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: id,
            sample_period: 1,
            wakeup_events: 1,
            ..PerfEventAttr::default()
        };
        // SAFETY: perf_event_open reads `attr` (a valid, fully initialized struct of the size
        // it says) and returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                -1,
                0,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(KprobeEventsError::PerfOpen {
                what: name,
                err: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a descriptor perf_event_open just returned, owned by nobody else.
        let perf = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let raw = perf.as_raw_fd();
        a.perf = Some(perf);
        for (req, arg) in [
            (PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()),
            (PERF_EVENT_IOC_ENABLE, 0),
        ] {
            // SAFETY: ioctls on the perf event just opened (owned by `a`), with a valid
            // program descriptor.
            if unsafe { libc::ioctl(raw, req, arg) } < 0 {
                return Err(KprobeEventsError::SetBpf {
                    what: name,
                    err: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(a)
    }

    /// Hits and misses of this process's kprobes, by event name (without the group).
    pub fn profile(&self) -> Result<BTreeMap<String, (u64, u64)>, KprobeEventsError> {
        let path = self.root.join("kprobe_profile");
        let text = std::fs::read_to_string(&path).map_err(|err| KprobeEventsError::Read {
            path: path.display().to_string(),
            err,
        })?;
        Ok(parse_profile(&text, &self.group)
            .into_iter()
            .filter_map(|(e, c)| e.strip_suffix(&self.suffix).map(|e| (e.to_owned(), c)))
            .collect())
    }
}

/// `kprobe_profile` lines: `  [group/]event   hits   misses`. Newer kernels prefix the group;
/// older ones print the event alone (event names carry the pid for that).
fn parse_profile(text: &str, group: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let (Some(name), Some(hits), Some(misses)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let event = match name.split_once('/') {
            Some((g, e)) if g == group => e,
            Some(_) => continue,
            None => name,
        };
        if let (Ok(h), Ok(m)) = (hits.parse(), misses.parse()) {
            out.insert(event.to_owned(), (h, m));
        }
    }
    out
}

impl Attached {
    /// Stops the program from running, keeping the kprobe event (and its counts) until drop.
    /// Disabling the perf event would not do: the kernel runs a kprobe's BPF program for as
    /// long as a perf event is open on it; closing the last one disarms the kprobe, which
    /// freezes its hit and miss counts too.
    pub fn stop(&mut self) {
        self.perf = None;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // The perf event must be closed first: the kernel refuses to remove a busy kprobe.
        self.perf = None;
        let _ = append(&self.root, &format!("-:{}", self.name));
    }
}

/// The x86-64 register as `kprobe_events` fetch arguments name it (`%ax`, `%r8`, ...).
fn fetch_reg(r: tracer_common::Reg) -> &'static str {
    use tracer_common::Reg;
    match r {
        Reg::R15 => "r15",
        Reg::R14 => "r14",
        Reg::R13 => "r13",
        Reg::R12 => "r12",
        Reg::Rbp => "bp",
        Reg::Rbx => "bx",
        Reg::R11 => "r11",
        Reg::R10 => "r10",
        Reg::R9 => "r9",
        Reg::R8 => "r8",
        Reg::Rax => "ax",
        Reg::Rcx => "cx",
        Reg::Rdx => "dx",
        Reg::Rsi => "si",
        Reg::Rdi => "di",
    }
}

/// The argument registers of the x86-64 SysV ABI, by argument index.
const ARG_REGS: [&str; 6] = ["di", "si", "dx", "cx", "r8", "r9"];

/// The kernel's own kprobe events at the points `plan` attaches to, reading the values the
/// eBPF programs read where a fetch argument can express them (`kprobe_events` syntax, one
/// definition per line, in `group`; return probes with `maxactive` instances): the anchor
/// `cargo xtask bench` compares the tracer with. What they cannot read: `current->mm` (no
/// fetch argument reaches `current`), so GUP-fast's entry and exit and `retry_fail` carry no
/// seq, and a copy's exit has no mm to read one from. Raw tracepoints (mm teardown at
/// `exit_mmap`, once per exiting process) get no definition: a kprobe event cannot express one,
/// and the kernel's own tracepoint costs alike in both runs.
pub fn definitions(plan: &super::AttachPlan, group: &str, maxactive: u32) -> Vec<String> {
    use super::SiteRead;
    use crate::kernel::target::Hook;
    let o = &plan.function.offsets;
    let mut out = Vec::new();
    let vma = |arg: u32| {
        let r = ARG_REGS.get(arg as usize).copied().unwrap_or("si");
        format!(
            "vma_start=+{}(%{r}):x64 vma_end=+{}(%{r}):x64 vm_flags=+{}(%{r}):x64 anon_vma=+{}(%{r}):x64 seq=+{}(+{}(%{r})):u32",
            o.vma_start, o.vma_end, o.vma_flags, o.vma_anon_vma, o.mm_seq, o.vma_mm
        )
    };
    for p in &plan.function.probes {
        let name = p.probe.name();
        let sym = &p.symbol;
        out.push(match (p.probe, p.hook) {
            (_, Hook::RawTracepoint) => continue,
            (_, Hook::Return) => format!("r{maxactive}:{group}/{name} {sym} ret=$retval"),
            (tracer_common::Probe::CprEnter, Hook::Entry) => {
                format!("p:{group}/{name} {sym} {}", vma(o.cpr_vma_arg))
            }
            (tracer_common::Probe::HugetlbEnter, Hook::Entry) => {
                format!("p:{group}/{name} {sym} {}", vma(o.hugetlb_vma_arg))
            }
            (tracer_common::Probe::GupEnter, Hook::Entry) => {
                format!("p:{group}/{name} {sym} start=%di second=%si flags=%dx:u32")
            }
            (_, Hook::Entry) => format!("p:{group}/{name} {sym} arg=%di"),
        });
    }
    for (i, s) in plan.sites.iter().enumerate() {
        let fetch = match s.read {
            SiteRead::Memory(r, d) => format!(" seq={:+}(%{}):u32", d, fetch_reg(r)),
            SiteRead::Loaded(r) => format!(" seq=%{}:u32", fetch_reg(r)),
            SiteRead::Marker => String::new(),
        };
        out.push(format!(
            "p:{group}/{}_{i} {}+{}{fetch}",
            s.probe.name(),
            s.symbol,
            s.offset
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_lines_of_old_and_new_kernels() {
        let new = "  tracer_7/cpr_enter                                  12       1\n  other/x  5 0\n  tracer_7/site0   3 0\n";
        let p = parse_profile(new, "tracer_7");
        assert_eq!(p.get("cpr_enter"), Some(&(12, 1)));
        assert_eq!(p.get("site0"), Some(&(3, 0)));
        assert_eq!(p.len(), 2);
        let old = "  cpr_exit    100    4\n";
        assert_eq!(
            parse_profile(old, "tracer_7").get("cpr_exit"),
            Some(&(100, 4))
        );
    }

    #[test]
    fn perf_event_attr_is_ver7_sized() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 128);
    }
}
