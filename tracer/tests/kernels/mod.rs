//! Kernel fixtures for integration tests: `$TRACER_FIXTURES/<release>/` as left by the VM test
//! boots of `cargo xtask test` (kallsyms under nokaslr, BTF, vmlinuz, config, and the logs the
//! guest recorded). The tests that read them are `#[ignore]`d with the reason, so a plain
//! `cargo test` lists them as ignored; `cargo xtask test` runs them with `--include-ignored`
//! after the boots, and a missing fixture then fails them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

pub struct Fixture {
    pub release: String,
    pub dir: PathBuf,
}

impl Fixture {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_else(|e| panic!("{}: cannot read {name}: {e}", self.release))
    }

    /// Exit status a guest step left in `<name>.rc`.
    pub fn rc(&self, name: &str) -> i32 {
        self.read(&format!("{name}.rc")).trim().parse().unwrap()
    }
}

/// The kernels named by `list_var` under `$TRACER_FIXTURES`; fails if either is unset, the
/// list is empty, or a fixture directory is missing.
fn listed(list_var: &str) -> Vec<Fixture> {
    let root = std::env::var("TRACER_FIXTURES").unwrap_or_else(|_| {
        panic!("TRACER_FIXTURES is unset: run `cargo xtask test`, which boots the kernels")
    });
    let kernels = std::env::var(list_var).unwrap_or_else(|_| {
        panic!("{list_var} is unset: run `cargo xtask test`, which boots the kernels")
    });
    let v: Vec<Fixture> = kernels
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|r| Fixture {
            release: r.to_owned(),
            dir: PathBuf::from(&root).join(r),
        })
        .collect();
    assert!(!v.is_empty(), "{list_var} names no kernel");
    for f in &v {
        assert!(f.dir.is_dir(), "fixture {} is missing", f.dir.display());
    }
    v
}

/// The kernels booted by `cargo xtask test`.
pub fn all() -> Vec<Fixture> {
    listed("TRACER_VM_KERNELS")
}

/// The kernels whose boot also ran `tracer check` and the reliability steps
/// (`$TRACER_CHECK_KERNELS`, the newest 6.1 and 6.12 in the default matrix); each must have left
/// its `check/` directory.
pub fn checked() -> Vec<Fixture> {
    let v = listed("TRACER_CHECK_KERNELS");
    for f in &v {
        assert!(
            f.dir.join("check").is_dir(),
            "{}: the check left no {}",
            f.release,
            f.dir.join("check").display()
        );
    }
    v
}

/// `(major, minor)` of a release string.
pub fn series(release: &str) -> (u32, u32) {
    tracer::kernel::foll::parse_release(release).unwrap()
}
