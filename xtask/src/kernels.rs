//! Debian kernel packages: resolve a SPEC (`6.12`, `6.1`, `6.12.107+deb12`, `6.1.0-56`, or a path
//! to an image), download once into the cache, extract, and index modules.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// One bootable kernel.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel.
    pub release: String,
    pub image: PathBuf,
    pub config: Option<PathBuf>,
    /// `lib/modules/<release>` with modules.dep, if modules are available.
    pub modules: Option<PathBuf>,
}

/// `$TRACER_CACHE`, else `~/.cache/tracer`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("TRACER_CACHE") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/tracer"))
}

fn apt_search(regex: &str) -> Result<Vec<String>> {
    let out = cmd::output(Command::new("apt-cache").args(["search", "--names-only", regex]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Numeric components of a version-like string, for ordering builds.
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The package name for a SPEC: the newest build of a series (`6.1`, `6.12`), the oldest one
/// apt still carries (`6.1-oldest`, `6.12-oldest`), or an exact build.
pub fn package_for(spec: &str) -> Result<String> {
    let suffix = "-cloud-amd64-unsigned";
    let (series, oldest) = match spec.strip_suffix("-oldest") {
        Some(s) => (s, true),
        None => (spec, false),
    };
    let (regex, exact) = match series {
        "6.1" => (
            r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$".to_owned(),
            false,
        ),
        "6.12" => (
            r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$".to_owned(),
            false,
        ),
        s => {
            let base = s.trim_end_matches("-cloud-amd64");
            (format!("linux-image-{base}{suffix}"), true)
        }
    };
    if exact {
        return Ok(regex);
    }
    let mut found = apt_search(&regex)?;
    if found.is_empty() {
        // A fresh machine may have no package lists yet.
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        found = apt_search(&regex)?;
    }
    found.sort_by_key(|p| version_key(p));
    let pick = if oldest { found.first() } else { found.last() };
    pick.cloned()
        .with_context(|| format!("apt knows no Debian cloud kernel of series {series}"))
}

/// Resolves SPEC to a kernel on disk, downloading and extracting when needed.
pub fn fetch(spec: &str, modules: Option<&Path>) -> Result<Kernel> {
    let as_path = Path::new(spec);
    if as_path.is_file() {
        let release = image_release(as_path)?;
        return Ok(Kernel {
            release,
            image: as_path.to_path_buf(),
            config: None,
            modules: modules.map(Path::to_path_buf),
        });
    }
    let pkg = package_for(spec)?;
    let cache = cache_dir()?;
    let debs = cache.join("debs");
    let root = cache.join("kernels").join(&pkg);
    let done = root.join(".extracted");
    if !done.exists() {
        std::fs::create_dir_all(&debs)?;
        let deb = find_deb(&debs, &pkg)?;
        let deb = match deb {
            Some(d) => d,
            None => {
                println!("kernel: downloading {pkg}");
                cmd::run(
                    Command::new("apt-get")
                        .args(["download", "-q", &pkg])
                        .current_dir(&debs),
                )
                .with_context(|| {
                    format!(
                        "apt-get download {pkg} (is SPEC {spec:?} a Debian build that apt knows?)"
                    )
                })?;
                find_deb(&debs, &pkg)?
                    .with_context(|| format!("apt-get download left no {pkg}_*.deb"))?
            }
        };
        println!("kernel: extracting {}", deb.display());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        std::fs::write(&done, b"")?;
    }
    let boot = root.join("boot");
    let image = first_with_prefix(&boot, "vmlinuz-")?
        .with_context(|| format!("{pkg} has no boot/vmlinuz-*"))?;
    let release = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("odd vmlinuz name")?
        .to_owned();
    let modules = root.join("lib/modules").join(&release);
    if modules.is_dir() && !modules.join("modules.dep").exists() {
        cmd::run(Command::new(depmod()).arg("-b").arg(&root).arg(&release))?;
    }
    Ok(Kernel {
        config: Some(boot.join(format!("config-{release}"))).filter(|p| p.exists()),
        modules: Some(modules).filter(|p| p.is_dir()),
        release,
        image,
    })
}

fn depmod() -> &'static str {
    if Path::new("/usr/sbin/depmod").exists() {
        "/usr/sbin/depmod"
    } else {
        "/sbin/depmod"
    }
}

fn modprobe() -> &'static str {
    if Path::new("/usr/sbin/modprobe").exists() {
        "/usr/sbin/modprobe"
    } else {
        "/sbin/modprobe"
    }
}

fn find_deb(dir: &Path, pkg: &str) -> Result<Option<PathBuf>> {
    first_with_prefix(dir, &format!("{pkg}_"))
}

fn first_with_prefix(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    Ok(v.pop())
}

/// The release string a bzImage carries in its setup header (`kernel_version`, x86 boot
/// protocol 2.00+).
pub fn image_release(path: &Path) -> Result<String> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.get(0x202..0x206) != Some(b"HdrS") {
        bail!(
            "{} is not an x86 bzImage (no HdrS setup header)",
            path.display()
        );
    }
    let ptr = u16::from_le_bytes([b[0x20e], b[0x20f]]) as usize + 0x200;
    let s = b
        .get(ptr..)
        .and_then(|t| t.split(|&c| c == b' ' || c == 0).next())
        .context("bzImage kernel_version pointer is out of range")?;
    Ok(String::from_utf8_lossy(s).into_owned())
}

/// The module files (in load order, dependencies first) for `names`, via `modprobe
/// --show-depends`. Built-in modules need nothing.
pub fn module_files(kernel: &Kernel, names: &[String]) -> Result<Vec<PathBuf>> {
    let Some(dir) = &kernel.modules else {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        bail!(
            "kernel {} has no modules directory; pass --modules DIR to use {}",
            kernel.release,
            names.join(", ")
        );
    };
    // dir = ROOT/lib/modules/RELEASE
    let root = dir
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("modules dir is not ROOT/lib/modules/RELEASE")?;
    let mut files: Vec<PathBuf> = Vec::new();
    for name in names {
        let out = cmd::output(
            Command::new(modprobe())
                .arg("-d")
                .arg(root)
                .arg("-S")
                .arg(&kernel.release)
                .arg("--show-depends")
                .arg(name),
        )
        .with_context(|| format!("kernel {} has no module {name}", kernel.release))?;
        for line in out.lines() {
            if let Some(p) = line.trim().strip_prefix("insmod ") {
                let p = PathBuf::from(p.trim());
                if !files.contains(&p) {
                    files.push(p);
                }
            }
        }
    }
    Ok(files)
}
