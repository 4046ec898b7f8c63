//! Kernel fixtures for integration tests: `$TRACER_FIXTURES/<release>/` as left by the VM test
//! boots of `cargo xtask test` (kallsyms under nokaslr, BTF, vmlinuz, config, and the logs the
//! guest recorded). Under `cargo xtask test` (`TRACER_REQUIRE_FIXTURES=1`) a missing fixture
//! fails; under a plain `cargo test` the tests say they skip.
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

/// The kernels booted by `cargo xtask test`, or none (after printing why) when run outside it.
pub fn all() -> Vec<Fixture> {
    let required = std::env::var("TRACER_REQUIRE_FIXTURES").is_ok_and(|v| v == "1");
    let (Ok(root), Ok(kernels)) = (
        std::env::var("TRACER_FIXTURES"),
        std::env::var("TRACER_VM_KERNELS"),
    ) else {
        assert!(
            !required,
            "TRACER_REQUIRE_FIXTURES=1 but TRACER_FIXTURES/TRACER_VM_KERNELS are unset"
        );
        eprintln!(
            "skipping: no kernel fixtures (run `cargo xtask test` to boot the kernel matrix)"
        );
        return Vec::new();
    };
    let v: Vec<Fixture> = kernels
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|r| Fixture {
            release: r.to_owned(),
            dir: PathBuf::from(&root).join(r),
        })
        .collect();
    for f in &v {
        assert!(f.dir.is_dir(), "fixture {} is missing", f.dir.display());
    }
    assert!(
        !required || !v.is_empty(),
        "no kernels in TRACER_VM_KERNELS"
    );
    v
}

/// The kernels whose boot also ran `tracer check` (`$TRACER_CHECK_KERNELS`, the newest 6.1 and
/// 6.12 in the default matrix), or none after saying why. Under `cargo xtask test` the list
/// must be given, and each listed kernel must have left its `check/` directory.
pub fn checked() -> Vec<Fixture> {
    let required = std::env::var("TRACER_REQUIRE_FIXTURES").is_ok_and(|v| v == "1");
    let (Ok(root), Ok(kernels)) = (
        std::env::var("TRACER_FIXTURES"),
        std::env::var("TRACER_CHECK_KERNELS"),
    ) else {
        assert!(
            !required,
            "TRACER_REQUIRE_FIXTURES=1 but TRACER_FIXTURES/TRACER_CHECK_KERNELS are unset"
        );
        eprintln!("skipping: no `tracer check` fixtures (run `cargo xtask test`)");
        return Vec::new();
    };
    let v: Vec<Fixture> = kernels
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|r| Fixture {
            release: r.to_owned(),
            dir: PathBuf::from(&root).join(r),
        })
        .collect();
    if v.is_empty() {
        eprintln!("skipping: this test matrix ran `tracer check` on no kernel");
    }
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
