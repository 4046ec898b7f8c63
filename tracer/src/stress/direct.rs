//! Where O_DIRECT reads can come from without asking the user for a file.
//!
//! A direct read pins the destination pages with `pin_user_pages_fast` (6.5+) only when the
//! read becomes a bio: block filesystems (iomap or the block layer) and block devices. tmpfs
//! accepts O_DIRECT but copies through the page cache, and a hole or unwritten extent is zeroed
//! by a copy too, so the temp file gets real blocks and only known block filesystems are used.
//! Order: a temp file in `$TMPDIR`, `/var/tmp`, `/tmp`, the cwd; else a block device from
//! `/sys/block`, read-only (root).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::memory::{Mapping, PAGE};

/// A file descriptor open with O_DIRECT, and how many bytes may be read from it.
pub struct Target {
    pub fd: OwnedFd,
    pub size: u64,
    /// For the user: what it is, e.g. "/dev/vda (block device, read-only)".
    pub what: String,
}

#[derive(Debug, Error)]
pub enum DirectError {
    #[error("--direct {path}: {err}")]
    Override { path: String, err: String },
}

const EXT_MAGIC: i64 = 0xEF53;
const XFS_MAGIC: i64 = 0x5846_5342;
const BTRFS_MAGIC: i64 = 0x9123_683E;
const F2FS_MAGIC: i64 = 0xF2F5_2010;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

/// Whether direct reads on a filesystem of this type become bios (and pin); else why not.
fn fs_pins(f_type: i64) -> Result<&'static str, String> {
    match f_type {
        EXT_MAGIC => Ok("ext2/3/4"),
        XFS_MAGIC => Ok("xfs"),
        BTRFS_MAGIC => Ok("btrfs"),
        F2FS_MAGIC => Ok("f2fs"),
        TMPFS_MAGIC => Err("tmpfs, whose O_DIRECT copies through the page cache".into()),
        RAMFS_MAGIC => Err("ramfs, which has no O_DIRECT".into()),
        OVERLAYFS_MAGIC => Err("overlayfs (not known to pin for O_DIRECT)".into()),
        t => Err(format!(
            "a filesystem of type {t:#x}, not one known to pin for O_DIRECT (ext4, xfs, btrfs, f2fs)"
        )),
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
}

fn open(p: &Path, flags: i32, mode: libc::c_uint) -> io::Result<OwnedFd> {
    let c = cstr(p)?;
    // SAFETY: open(2) with a valid C string; the result is checked before it is owned.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One direct read of `len` bytes into fresh memory: the proof that this descriptor takes
/// O_DIRECT reads into page-aligned anonymous buffers.
fn probe_read(fd: &OwnedFd, len: usize) -> io::Result<()> {
    let buf = Mapping::private(len)?;
    // SAFETY: reading into a live, page-aligned mapping of at least `len` bytes.
    let r = unsafe { libc::pread(fd.as_raw_fd(), buf.page(0).cast(), len, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The user's `--direct FILE`: opened read-only with O_DIRECT, or an error (bad input).
pub fn open_override(path: &Path, len: usize) -> Result<Target, DirectError> {
    let bad = |err: String| DirectError::Override {
        path: path.display().to_string(),
        err,
    };
    let fd = open(path, libc::O_RDONLY | libc::O_DIRECT, 0)
        .map_err(|e| bad(format!("cannot open it with O_DIRECT ({e})")))?;
    let size = fd_size(&fd).map_err(|e| bad(e.to_string()))?;
    if size < len as u64 {
        return Err(bad(format!(
            "it holds {size} bytes, fewer than one pin ({len} bytes)"
        )));
    }
    probe_read(&fd, len).map_err(|e| bad(format!("a direct read fails ({e})")))?;
    Ok(Target {
        fd,
        size,
        what: path.display().to_string(),
    })
}

fn fd_size(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: fstat into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid and writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFBLK {
        let mut bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64.
        if unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64, &mut bytes) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(bytes);
    }
    Ok(st.st_size as u64)
}

/// `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn temp_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    if let Some(t) = std::env::var_os("TMPDIR").filter(|t| !t.is_empty()) {
        v.push(t.into());
    }
    v.push("/var/tmp".into());
    v.push("/tmp".into());
    if let Ok(c) = std::env::current_dir() {
        v.push(c);
    }
    let mut seen = Vec::new();
    v.retain(|p| {
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    v
}

/// A temp file with `size` bytes of real blocks in `dir`, open with O_DIRECT, never visible by
/// name for longer than it takes to unlink it.
fn temp_file(dir: &Path, size: usize) -> Result<Target, String> {
    let c = cstr(dir).map_err(|e| e.to_string())?;
    // SAFETY: statfs into a zeroed buffer.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and writable buffer.
    if unsafe { libc::statfs(c.as_ptr(), &mut sf) } != 0 {
        return Err(io::Error::last_os_error().to_string());
    }
    // f_type is a long holding a 32-bit magic (x86-64 only, like the rest of the tracer).
    #[allow(clippy::unnecessary_cast)]
    let fs = fs_pins(sf.f_type as i64).map_err(|why| format!("it is {why}"))?;
    let fd = match open(dir, libc::O_TMPFILE | libc::O_RDWR, 0o600) {
        Ok(fd) => fd,
        Err(_) => {
            // No O_TMPFILE here: a named file, unlinked at once.
            let p = dir.join(format!(".tracer-stress-{}", std::process::id()));
            let fd = open(
                &p,
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW,
                0o600,
            )
            .map_err(|e| format!("cannot create a temp file ({e})"))?;
            let _ = std::fs::remove_file(&p);
            fd
        }
    };
    let data = vec![0x5a_u8; size];
    let mut off = 0;
    while off < size {
        // SAFETY: writing from a live buffer.
        let r = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[off..].as_ptr().cast(),
                size - off,
                off as libc::off_t,
            )
        };
        if r <= 0 {
            return Err(format!(
                "cannot fill a temp file ({})",
                io::Error::last_os_error()
            ));
        }
        off += r as usize;
    }
    // SAFETY: plain syscalls on an owned descriptor.
    let ok = unsafe {
        libc::fsync(fd.as_raw_fd()) == 0
            && libc::fcntl(
                fd.as_raw_fd(),
                libc::F_SETFL,
                libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) | libc::O_DIRECT,
            ) == 0
    };
    if !ok {
        return Err(format!(
            "{fs} refuses O_DIRECT here ({})",
            io::Error::last_os_error()
        ));
    }
    probe_read(&fd, PAGE).map_err(|e| format!("a direct read fails ({e})"))?;
    Ok(Target {
        fd,
        size: size as u64,
        what: format!("a temp file in {} ({fs})", dir.display()),
    })
}

fn block_device(len: usize) -> Result<Target, String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .map_err(|e| format!("no /sys/block ({e})"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            !["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    names.sort();
    let mut why = Vec::new();
    for n in names {
        let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{n}/size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if sectors * 512 < len as u64 {
            continue;
        }
        let dev = PathBuf::from(format!("/dev/{n}"));
        match open(&dev, libc::O_RDONLY | libc::O_DIRECT, 0) {
            Ok(fd) => match probe_read(&fd, len) {
                Ok(()) => {
                    return Ok(Target {
                        fd,
                        size: sectors * 512,
                        what: format!("{} (block device, read-only)", dev.display()),
                    });
                }
                Err(e) => why.push(format!("{}: a direct read fails ({e})", dev.display())),
            },
            Err(e) => why.push(format!("{}: {e}", dev.display())),
        }
    }
    if why.is_empty() {
        Err("no block device in /sys/block".into())
    } else {
        Err(why.join("; "))
    }
}

/// The first usable O_DIRECT source for reads of `len` bytes, or every reason there is none.
pub fn find(len: usize) -> Result<Target, String> {
    let size = len.max(1 << 20);
    let mut why = Vec::new();
    for d in temp_dirs() {
        match temp_file(&d, size) {
            Ok(t) => return Ok(t),
            Err(e) => why.push(format!("{}: {e}", d.display())),
        }
    }
    match block_device(len) {
        Ok(t) => Ok(t),
        Err(e) => {
            why.push(e);
            Err(why.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_block_filesystems_count_as_pinning() {
        assert!(fs_pins(EXT_MAGIC).is_ok());
        assert!(fs_pins(XFS_MAGIC).is_ok());
        let tmpfs = fs_pins(TMPFS_MAGIC).unwrap_err();
        assert!(tmpfs.contains("page cache"), "{tmpfs}");
        assert!(fs_pins(0x1234).unwrap_err().contains("0x1234"));
    }

    #[test]
    fn a_missing_override_is_one_sentence() {
        let e = open_override(Path::new("/nonexistent/tracer-direct"), PAGE)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("--direct /nonexistent/tracer-direct: cannot open"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
    }
}
