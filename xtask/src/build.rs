//! Building the static `tracer` that goes into the VM's initramfs.
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::cmd;

pub const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds a statically linked release `tracer`; an explicit `--target` keeps `crt-static` away
/// from build scripts and proc-macros, which must stay dynamic.
pub fn static_tracer() -> Result<PathBuf> {
    println!("build: static tracer (release, {HOST_TARGET}, crt-static)");
    cmd::run(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "tracer",
                "--target",
                HOST_TARGET,
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .current_dir(workspace()),
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    Ok(target_dir.join(HOST_TARGET).join("release/tracer"))
}
