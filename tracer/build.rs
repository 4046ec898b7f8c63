//! Compiles `tracer-ebpf` for the BPF target and leaves the object in `OUT_DIR`, so a plain
//! `cargo build` yields a `tracer` binary with the programs embedded.
//!
//! The BPF target's `core` comes from Debian's `libstd-rust-web-dev-bpf`, built for Debian's
//! rustc; `cargo xtask setup` links that toolchain into rustup as `tracer-bpf`.
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;

const TOOLCHAIN: &str = "tracer-bpf";

fn main() -> anyhow::Result<()> {
    let rustup_has_toolchain = Command::new("rustup")
        .args([
            "run",
            TOOLCHAIN,
            "rustc",
            "--print",
            "target-libdir",
            "--target",
            "bpfel-unknown-none",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !rustup_has_toolchain {
        bail!(
            "the eBPF toolchain `{TOOLCHAIN}` is not installed; run `cargo xtask setup` once (it installs Debian's Rust with the BPF core library and bpf-linker)"
        );
    }
    if which_bpf_linker().is_none() {
        bail!("bpf-linker is not on PATH; run `cargo xtask setup`");
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // aya-ebpf uses `asm_experimental_arch`; allow unstable features for that one crate only.
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(TOOLCHAIN),
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
