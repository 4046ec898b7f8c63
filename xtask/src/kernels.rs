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
        let modules = match modules {
            Some(m) => {
                // ROOT/lib/modules/RELEASE: index it if the user's tree has no modules.dep.
                if let (Some(root), Some(r)) = (
                    m.parent().and_then(Path::parent).and_then(Path::parent),
                    m.file_name().and_then(|n| n.to_str()),
                ) && m.is_dir()
                {
                    index_modules(root, r)?;
                }
                Some(m.to_path_buf())
            }
            None => modules_beside(as_path, &release)?,
        };
        return Ok(Kernel {
            release,
            image: as_path.to_path_buf(),
            config: None,
            modules,
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
    if modules.is_dir() {
        index_modules(&root, &release)?;
    }
    Ok(Kernel {
        config: Some(boot.join(format!("config-{release}"))).filter(|p| p.exists()),
        modules: Some(modules).filter(|p| p.is_dir()),
        release,
        image,
    })
}

/// Runs depmod for ROOT/lib/modules/RELEASE unless it already has a modules.dep.
fn index_modules(root: &Path, release: &str) -> Result<()> {
    if !root
        .join("lib/modules")
        .join(release)
        .join("modules.dep")
        .exists()
    {
        cmd::run(Command::new(depmod()).arg("-b").arg(root).arg(release))?;
    }
    Ok(())
}

/// The modules of an image that sits in an extracted Debian package or an install tree
/// (ROOT/boot/vmlinuz-R): ROOT/lib/modules/R, indexed with depmod when it has no modules.dep.
/// R is the image's release, else the part of its file name after `vmlinuz-`.
pub fn modules_beside(image: &Path, release: &str) -> Result<Option<PathBuf>> {
    let Some(boot) = image
        .parent()
        .filter(|b| b.file_name() == Some("boot".as_ref()))
    else {
        return Ok(None);
    };
    let root = boot.parent().unwrap_or(Path::new(""));
    let from_name = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"));
    for r in std::iter::once(release).chain(from_name) {
        let dir = root.join("lib/modules").join(r);
        if dir.is_dir() {
            index_modules(root, r)?;
            return Ok(Some(dir));
        }
    }
    Ok(None)
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
/// --show-depends`, and a note for each module that cannot be loaded. Built-in modules need
/// nothing; a kernel without a modules directory (a self-built bzImage with everything built
/// in) loads none. What is then really missing shows in the guest (see `vm.rs`).
pub fn module_files(kernel: &Kernel, names: &[String]) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let Some(dir) = &kernel.modules else {
        let notes = if names.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "kernel {} has no modules directory: loading none ({} must be built in to be used)",
                kernel.release,
                names.join(", ")
            )]
        };
        return Ok((Vec::new(), notes));
    };
    // dir = ROOT/lib/modules/RELEASE
    let root = dir
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("modules dir is not ROOT/lib/modules/RELEASE")?;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut notes = Vec::new();
    for name in names {
        let out = Command::new(modprobe())
            .arg("-d")
            .arg(root)
            .arg("-S")
            .arg(&kernel.release)
            .arg("--show-depends")
            .arg(name)
            .output()
            .with_context(|| format!("cannot run {}", modprobe()))?;
        if !out.status.success() {
            notes.push(format!(
                "kernel {} has no module {name} (neither a module in {} nor built in)",
                kernel.release,
                dir.display()
            ));
            continue;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(p) = line.trim().strip_prefix("insmod ") {
                let p = PathBuf::from(p.trim());
                if !files.contains(&p) {
                    files.push(p);
                }
            }
        }
    }
    Ok((files, notes))
}

/// A short content hash of a file (FNV-1a, 64 bit), to tell apart images that report the
/// same release.
pub fn content_hash(path: &Path) -> Result<String> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in &b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

/// One id per kernel of a run, for its output directory and its console prefix: the release,
/// unless another kernel of the run reports the same one (a version rebuilt with a patch):
/// then the release plus 8 hex digits of the image's content hash, and a -2, -3, ... suffix
/// if even the content repeats.
pub fn assign_ids(
    kernels: &[(String, PathBuf)],
    hash: impl Fn(&Path) -> Result<String>,
) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(kernels.len());
    for (release, image) in kernels {
        let repeats = kernels.iter().filter(|(r, _)| r == release).count() > 1;
        ids.push(if repeats {
            let h = hash(image)?;
            format!("{release}-{}", h.get(..8).unwrap_or(&h))
        } else {
            release.clone()
        });
    }
    let mut seen: Vec<String> = Vec::new();
    for id in &mut ids {
        let base = id.clone();
        let mut n = 1;
        while seen.contains(id) {
            n += 1;
            *id = format!("{base}-{n}");
        }
        seen.push(id.clone());
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-kernels-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_same_release_twice_gets_distinct_ids() {
        let d = scratch("ids");
        let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));
        std::fs::write(&a, b"build one").unwrap();
        std::fs::write(&b, b"build two, patched").unwrap();
        std::fs::write(&c, b"another kernel").unwrap();
        let ks = vec![
            ("6.12.117".to_owned(), a.clone()),
            ("6.12.117".to_owned(), b.clone()),
            ("6.1.0-57-cloud-amd64".to_owned(), c),
            // The very same image again: still its own id.
            ("6.12.117".to_owned(), a.clone()),
        ];
        let ids = assign_ids(&ks, content_hash).unwrap();
        let ha = &content_hash(&a).unwrap()[..8];
        let hb = &content_hash(&b).unwrap()[..8];
        assert_ne!(ha, hb);
        assert_eq!(
            ids,
            vec![
                format!("6.12.117-{ha}"),
                format!("6.12.117-{hb}"),
                "6.1.0-57-cloud-amd64".to_owned(),
                format!("6.12.117-{ha}-2"),
            ]
        );
        // A release that appears once keeps its plain name.
        let one = assign_ids(&ks[2..3], content_hash).unwrap();
        assert_eq!(one, vec!["6.1.0-57-cloud-amd64".to_owned()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn modules_are_found_beside_an_extracted_image_and_indexed() {
        let d = scratch("beside");
        let boot = d.join("boot");
        let mods = d.join("lib/modules/6.12.117-test");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::create_dir_all(mods.join("kernel")).unwrap();
        let image = boot.join("vmlinuz-6.12.117-test");
        std::fs::write(&image, b"not really a kernel").unwrap();
        assert!(!mods.join("modules.dep").exists());
        let found = modules_beside(&image, "6.12.117-test").unwrap();
        assert_eq!(found.as_deref(), Some(mods.as_path()));
        assert!(mods.join("modules.dep").exists(), "depmod ran");
        // The release from the image wins, the file name is the fallback.
        // A module neither present nor built in is a note, not an error.
        let k = Kernel {
            release: "6.12.117-test".into(),
            image: image.clone(),
            config: None,
            modules: found,
        };
        let (files, notes) = module_files(&k, &["virtio_blk".to_owned()]).unwrap();
        assert!(files.is_empty());
        assert!(notes[0].contains("has no module virtio_blk"), "{notes:?}");
        let by_name = modules_beside(&image, "something-else").unwrap();
        assert_eq!(by_name.as_deref(), Some(mods.as_path()));
        // Not in a boot/ directory, or no modules tree: none, and no error.
        let loose = d.join("vmlinuz-6.12.117-test");
        std::fs::write(&loose, b"x").unwrap();
        assert_eq!(modules_beside(&loose, "6.12.117-test").unwrap(), None);
        std::fs::remove_dir_all(d.join("lib")).unwrap();
        assert_eq!(modules_beside(&image, "6.12.117-test").unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_kernel_without_modules_loads_none() {
        let k = Kernel {
            release: "6.12.117".into(),
            image: PathBuf::from("/nonexistent/bzImage"),
            config: None,
            modules: None,
        };
        let (files, notes) = module_files(&k, &["virtio_blk".to_owned()]).unwrap();
        assert!(files.is_empty());
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("no modules directory"), "{notes:?}");
        assert_eq!(module_files(&k, &[]).unwrap(), (Vec::new(), Vec::new()));
    }
}
