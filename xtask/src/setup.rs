//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks, idempotently.
//!
//! The eBPF side needs Debian's Rust (its package ships a prebuilt `core` for bpfel), linked
//! into rustup as `tracer-bpf` because aya-build always goes through `rustup run`, and
//! bpf-linker built against Debian's LLVM 22. The VM runs need QEMU, busybox-static and kmod
//! (modprobe resolves module dependencies for the initramfs).
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Debian packages, each with a file whose presence shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "/usr/bin/rustc"),
    ("cargo-web", "/usr/bin/cargo"),
    (
        "libstd-rust-web-dev-bpf",
        "/usr/lib/rustlib/bpfel-unknown-none",
    ),
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("kmod", "/usr/bin/kmod"),
    ("zstd", "/usr/bin/zstd"),
    ("xz-utils", "/usr/bin/xz"),
    ("jq", "/usr/bin/jq"),
    ("tmux", "/usr/bin/tmux"),
    ("util-linux", "/usr/bin/setpriv"),
    // The report tests render its SVG charts to PNG to check they are not blank.
    ("librsvg2-bin", "/usr/bin/rsvg-convert"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
pub const TOOLCHAIN: &str = "tracer-bpf";

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

fn step(what: &str) {
    println!("setup: {what}");
}

pub fn setup() -> Result<()> {
    let t0 = Instant::now();
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !std::path::Path::new(file).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        step("Debian packages present");
    } else {
        if !is_root() {
            bail!(
                "setup needs root to install Debian packages ({}); run it as root or install them",
                missing.join(" ")
            );
        }
        step(&format!("apt-get install {}", missing.join(" ")));
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    let cargo_bin = home()?.join(".cargo/bin");
    let linker = cargo_bin.join("bpf-linker");
    let have_linker = cmd::output(Command::new(&linker).arg("--version"))
        .map(|v| v.contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if have_linker {
        step(&format!("bpf-linker {BPF_LINKER_VERSION} present"));
    } else {
        step(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 4 minutes on 2 cores)"
        ));
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        cmd::run(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                    "--locked",
                ])
                .env("PATH", path),
        )?;
    }

    let has_toolchain = cmd::succeeds(Command::new("rustup").args([
        "run",
        TOOLCHAIN,
        "rustc",
        "--print",
        "target-libdir",
        "--target",
        "bpfel-unknown-none",
    ]));
    if has_toolchain {
        step(&format!("rustup toolchain {TOOLCHAIN} present"));
    } else {
        step(&format!(
            "linking Debian's Rust into rustup as {TOOLCHAIN} (its BPF core library is what builds the eBPF crate)"
        ));
        let dir = home()?.join(".local/share/tracer/bpf-toolchain");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
        std::fs::create_dir_all(dir.join("lib"))?;
        for tool in ["rustc", "cargo", "rustdoc"] {
            let link = bin.join(tool);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("/usr/bin/{tool}"), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        cmd::run(
            Command::new("rustup")
                .args(["toolchain", "link", TOOLCHAIN])
                .arg(&dir),
        )?;
    }
    step(&format!("done in {:.1}s", t0.elapsed().as_secs_f64()));
    Ok(())
}

pub fn is_root() -> bool {
    cmd::output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}
