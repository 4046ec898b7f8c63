//! Boots a kernel under QEMU with a busybox initramfs holding the static `tracer`, runs a command
//! as root inside, and copies the guest's `/out` back.
//!
//! The guest writes `/out` as a tar stream onto a raw virtio disk, which the host unpacks after
//! QEMU exits: no network, no 9p, only the `virtio_blk` module. The console is streamed with a
//! `[release]` prefix and kept in `console.log`.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, kernels::Kernel};

/// The modules every boot asks for: virtio_pci and virtio_blk carry /out back (built in on
/// 6.12, modules on 6.1), rds is the pin method 6.1 offers. Any of them may be built in.
pub fn guest_modules() -> Vec<String> {
    ["virtio_pci", "virtio_blk", "rds"]
        .map(String::from)
        .to_vec()
}

pub struct VmOpts<'a> {
    pub kernel: &'a Kernel,
    /// The kernel's id in this run (its release unless two kernels share one): the console
    /// prefix.
    pub id: &'a str,
    /// Static tracer binary, installed as /bin/tracer.
    pub tracer: &'a Path,
    /// Modules to load before the command (dependencies are resolved).
    pub modules: Vec<String>,
    /// Shell script run as root in the guest, in /out.
    pub script: String,
    /// Host directory receiving the guest's /out.
    pub out: PathBuf,
    pub timeout: Duration,
    pub nokaslr: bool,
    /// Attach QEMU to this terminal (for the TUI) instead of capturing the console.
    pub interactive: bool,
    pub memory_mb: u32,
    /// Virtual CPUs (the guest runs under TCG on however many host cores there are).
    pub cpus: u32,
}

/// What a finished boot left.
pub struct VmResult {
    pub exit_code: i32,
    pub out: PathBuf,
    pub boot_secs: f64,
    /// Whether the boot that finished ran under KVM (else QEMU's TCG emulation): benchmarks
    /// say which.
    pub kvm: bool,
}

// ---- initramfs (cpio newc) ----

struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio {
            buf: Vec::new(),
            ino: 1,
        }
    }

    fn pad4(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }
    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes(), (0, 0));
    }
    fn chardev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, &[], (major, minor));
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t debugfs none /sys/kernel/debug 2>/dev/null
mount -t tracefs none /sys/kernel/tracing 2>/dev/null
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m.ko || echo "vm: insmod $m failed"; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ ! -b /dev/vda ]; then
  # Without the disk nothing can come back: say which driver is missing, and stop.
  if [ ! -d /sys/bus/pci/drivers/virtio-pci ]; then why="virtio_pci (CONFIG_VIRTIO_PCI)"
  elif [ ! -d /sys/bus/virtio/drivers/virtio_blk ]; then why="virtio_blk (CONFIG_VIRTIO_BLK)"
  else why="a virtio disk it can see"; fi
  echo "vm: no /dev/vda: no $why"
  poweroff -f
fi
echo "vm: init ready $(uname -r)"
cd /out
sh /run.sh
rc=$?
echo $rc > /out/exit_code
tar -c -f /dev/vda -C /out . 2>/dev/null || echo "vm: writing /out failed"
sync
echo "vm: exit $rc"
poweroff -f
"#;

fn decompressed_module(path: &Path) -> Result<Vec<u8>> {
    let s = path.to_string_lossy();
    if s.ends_with(".xz") {
        raw_output(Command::new("xz").arg("-dc").arg(path))
    } else if s.ends_with(".zst") {
        raw_output(Command::new("zstd").arg("-dcq").arg(path))
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

fn raw_output(c: &mut Command) -> Result<Vec<u8>> {
    let o = c
        .output()
        .with_context(|| format!("cannot start `{}`", cmd::show(c)))?;
    if !o.status.success() {
        bail!("`{}` failed ({})", cmd::show(c), o.status);
    }
    Ok(o.stdout)
}

fn initramfs(opts: &VmOpts, path: &Path) -> Result<()> {
    let mut c = Cpio::new();
    for d in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "out",
        "etc",
        "lib",
        "lib/modules",
        "root",
    ] {
        c.dir(d);
    }
    c.chardev("dev/console", 5, 1);
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    c.file("bin/busybox", 0o755, &busybox);
    c.symlink("bin/sh", "busybox");
    let tracer =
        std::fs::read(opts.tracer).with_context(|| format!("reading {}", opts.tracer.display()))?;
    c.file("bin/tracer", 0o755, &tracer);
    c.file("init", 0o755, INIT.as_bytes());
    c.file("run.sh", 0o755, opts.script.as_bytes());
    let mut order = String::new();
    let (files, notes) = crate::kernels::module_files(opts.kernel, &opts.modules)?;
    for n in notes {
        println!("vm: [{}] {n}", opts.id);
    }
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split(".ko").next())
            .context("odd module file name")?
            .to_owned();
        c.file(
            &format!("lib/modules/{name}.ko"),
            0o644,
            &decompressed_module(&f)?,
        );
        order.push_str(&name);
        order.push('\n');
    }
    c.file("etc/modules.order", 0o644, order.as_bytes());
    std::fs::write(path, c.finish()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

// ---- booting ----

enum Outcome {
    /// The guest never reached /init (early-boot death).
    NoInit,
    TimedOut,
    Finished,
    /// The guest kernel oopsed after /init; QEMU was stopped.
    Oops,
}

/// Whether the console shows a guest kernel oops.
fn oopsed(console: &str) -> bool {
    console.contains("Oops: ") || console.contains("Kernel panic")
}

/// The oops QEMU's TCG causes while the guest patches its own code (kprobes, ftrace, static
/// keys go in and out by text_poke with int3): a kernel call lands at address 0, or on a
/// breakpoint the kernel no longer owns. The toolchain notes describe it at early boot; it has
/// also hit 6.1 guests twice as kprobes were removed while tasks forked (dup_mmap calling
/// copy_page_range, finish_task_switch calling __mmdrop) and a 6.12 guest in __schedule.
fn patching_race(console: &str) -> bool {
    (console.contains("RIP: 0010:0x0") && console.contains("supervisor instruction fetch"))
        || console.contains("Oops: int3")
}

/// Whether the console shows /init running (ready, or stopping for want of a disk).
fn reached_init(console: &str) -> bool {
    console.contains("vm: init ready") || console.contains("vm: no /dev/vda")
}

const KVM_INIT_LIMIT: Duration = Duration::from_secs(60);

fn kvm_usable(cache: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
        && !cache.join("kvm-broken").exists()
}

fn qemu_command(opts: &VmOpts, initrd: &Path, disk: &Path, kvm: bool) -> Command {
    let mut append = String::from("console=ttyS0 quiet panic=-1 rdinit=/init");
    if opts.nokaslr {
        append.push_str(" nokaslr");
    }
    if opts.kernel.release.contains("-rt-") {
        // Without it the 6.1 rt build's serial console stops under TCG ("irq 3: nobody cared").
        append.push_str(" noirqdebug");
    }
    let mut c = Command::new("qemu-system-x86_64");
    // QEMU must not outlive an interrupted xtask (Ctrl-C, a CI timeout): it would keep a core
    // busy emulating a guest nobody reads.
    // SAFETY: prctl between fork and exec, no allocation.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    if kvm {
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        c.args(["-accel", "tcg", "-cpu", "max"]);
    }
    c.args([
        "-m",
        &opts.memory_mb.to_string(),
        "-smp",
        &opts.cpus.to_string(),
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(&opts.kernel.image)
    .arg("-initrd")
    .arg(initrd)
    .arg("-drive")
    .arg(format!("file={},format=raw,if=virtio", disk.display()))
    .arg("-append")
    .arg(append);
    c
}

/// One boot; returns how it ended and the console text.
fn boot_once(
    opts: &VmOpts,
    initrd: &Path,
    disk: &Path,
    kvm: bool,
    log: &Path,
) -> Result<(Outcome, String)> {
    let tag = format!("[{}]", opts.id);
    let mut c = qemu_command(opts, initrd, disk, kvm);
    if opts.interactive {
        let status = c
            .status()
            .context("cannot start qemu-system-x86_64 (run `cargo xtask setup`)")?;
        let _ = status;
        // The console went to the terminal; /out tells whether init ran.
        return Ok((Outcome::Finished, String::new()));
    }
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let console = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let console = Arc::clone(&console);
        let tag = tag.clone();
        readers.push(std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\r', '\n']);
                println!("{tag} {text}");
                if let Ok(mut c) = console.lock() {
                    c.push_str(text);
                    c.push('\n');
                }
                line.clear();
            }
        }));
    }
    let start = Instant::now();
    let mut oopsed_at: Option<Instant> = None;
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if start.elapsed() > opts.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        // An oops leaves the guest hung (init waits on a dead shell) until the timeout: stop
        // it once the oops has had a few seconds to reach the console.
        if oopsed_at.is_none() && console.lock().map(|c| oopsed(&c)).unwrap_or(false) {
            oopsed_at = Some(Instant::now());
        }
        if oopsed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        // Under KVM a guest reaches /init in seconds; one that has not after a minute is stuck
        // (a nested-KVM "internal error" pauses the guest instead of ending QEMU), so give up
        // on KVM rather than wait for the whole timeout.
        if kvm
            && start.elapsed() > KVM_INIT_LIMIT
            && !console.lock().map(|c| reached_init(&c)).unwrap_or(false)
        {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for r in readers {
        let _ = r.join();
    }
    let text = console.lock().map(|c| c.clone()).unwrap_or_default();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    f.write_all(text.as_bytes())?;
    // A panic can power the guest off (-no-reboot) before the loop above sees the oops.
    let outcome = if (oopsed_at.is_some() || oopsed(&text)) && reached_init(&text) {
        Outcome::Oops
    } else if !reached_init(&text) {
        if timed_out {
            Outcome::TimedOut
        } else {
            Outcome::NoInit
        }
    } else if timed_out {
        Outcome::TimedOut
    } else {
        Outcome::Finished
    };
    Ok((outcome, text))
}

/// Boots, runs the script, copies /out to `opts.out`, and fails clearly on a panic, a hang or
/// a non-zero exit.
pub fn run(opts: &VmOpts) -> Result<VmResult> {
    let cache = crate::kernels::cache_dir()?;
    std::fs::create_dir_all(&opts.out)?;
    let work = opts.out.join(".vm");
    std::fs::create_dir_all(&work)?;
    let initrd = work.join("initramfs.cpio");
    initramfs(opts, &initrd)?;
    let disk = work.join("out.img");
    let log = opts.out.join("console.log");
    let _ = std::fs::remove_file(&log);
    let t0 = Instant::now();
    let mut kvm = kvm_usable(&cache);
    let mut attempts = 0;
    let text = loop {
        attempts += 1;
        {
            let f = std::fs::File::create(&disk)?;
            f.set_len(512 << 20)?;
        }
        println!(
            "vm: booting {} ({}, {} MiB, timeout {}s)",
            opts.kernel.release,
            if kvm { "KVM" } else { "TCG" },
            opts.memory_mb,
            opts.timeout.as_secs()
        );
        let (outcome, text) = boot_once(opts, &initrd, &disk, kvm, &log)?;
        match outcome {
            Outcome::Finished => break text,
            Outcome::NoInit if kvm => {
                println!(
                    "vm: the guest died before /init under KVM (nested KVM fails on this host); falling back to TCG"
                );
                let _ = std::fs::write(cache.join("kvm-broken"), b"");
                kvm = false;
            }
            Outcome::NoInit if attempts < 2 => {
                println!(
                    "vm: the guest died before /init (a rare QEMU TCG early-boot race, not the kernel under test); retrying once"
                );
            }
            Outcome::NoInit => bail!(
                "kernel {} died before reaching /init twice; see {}",
                opts.kernel.release,
                log.display()
            ),
            Outcome::Oops if attempts < 2 && patching_race(&text) => {
                println!(
                    "vm: the guest kernel oopsed at address 0 or on a stray int3, the QEMU TCG code-patching race (not the kernel under test, not the tracer); retrying the boot once (the oops stays in {})",
                    log.display()
                );
                std::fs::write(
                    opts.out.join("retried-after-oops.txt"),
                    text.lines()
                        .filter(|l| {
                            l.contains("RIP:")
                                || l.contains("Oops")
                                || l.contains("BUG:")
                                || l.contains("+0x")
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                )?;
            }
            Outcome::Oops => bail!(
                "kernel {} oopsed; see {}",
                opts.kernel.release,
                log.display()
            ),
            Outcome::TimedOut => bail!(
                "kernel {} hung: no exit within {}s; see {}",
                opts.kernel.release,
                opts.timeout.as_secs(),
                log.display()
            ),
        }
    };
    let boot_secs = t0.elapsed().as_secs_f64();
    if let Some(why) = text
        .lines()
        .find_map(|l| l.split("vm: no /dev/vda: no ").nth(1))
    {
        bail!(
            "kernel {} has no {}; the VM cannot return its results",
            opts.id,
            why.trim()
        );
    }
    if text.contains("Kernel panic") {
        bail!(
            "kernel {} panicked; see {}",
            opts.kernel.release,
            log.display()
        );
    }
    cmd::run(
        Command::new("tar")
            .arg("-x")
            .arg("-f")
            .arg(&disk)
            .arg("-C")
            .arg(&opts.out),
    )
    .with_context(|| format!("the guest left no readable /out (see {})", log.display()))?;
    let _ = std::fs::remove_file(&disk);
    let code: i32 = std::fs::read_to_string(opts.out.join("exit_code"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| {
            format!(
                "the guest command left no exit status; see {}",
                log.display()
            )
        })?;
    Ok(VmResult {
        exit_code: code,
        out: opts.out.clone(),
        boot_secs,
        kvm,
    })
}

/// Quotes words for the guest's busybox sh.
pub fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_patching_race_is_retried() {
        let race = "BUG: kernel NULL pointer dereference, address: 0000000000000000\n\
                    #PF: supervisor instruction fetch in kernel mode\n\
                    Oops: 0010 [#1] PREEMPT SMP NOPTI\nRIP: 0010:0x0\n dup_mmap+0x438/0x610\n";
        assert!(oopsed(race) && patching_race(race));
        let int3 = "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\nRIP: 0010:__schedule+0x1/0x2\n";
        assert!(oopsed(int3) && patching_race(int3));
        // A real bug in the kernel under test is not retried.
        let real = "BUG: kernel NULL pointer dereference, address: 0000000000000008\n\
                    #PF: supervisor read access in kernel mode\n\
                    Oops: 0000 [#1] PREEMPT SMP NOPTI\nRIP: 0010:copy_page_range+0x42/0x900\n";
        assert!(oopsed(real) && !patching_race(real));
        assert!(!oopsed("vm: init ready\nstress: 1071 forks\n"));
    }
}
