//! Files the tool writes for people (logs, exports, reports). The tool often runs as root, in
//! directories others can write: a path that already exists as a symlink is never followed
//! (the open fails instead), and a file root writes is readable by its owner only, handed to
//! the user who ran `sudo` when there is one.
use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

/// Whether this process runs as root.
fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The user `sudo` ran this process for: `SUDO_UID`/`SUDO_GID`.
fn sudo_user() -> Option<(u32, u32)> {
    let id = |k: &str| std::env::var(k).ok()?.parse::<u32>().ok();
    Some((id("SUDO_UID")?, id("SUDO_GID")?))
}

/// Creates (or truncates) `path` for writing; `read` also opens it for reading.
pub fn create(path: &Path, read: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(read)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::other(format!(
                    "{} is a symbolic link, which is not followed",
                    path.display()
                ))
            } else {
                e
            }
        })?;
    secure(&f)?;
    Ok(f)
}

/// Restricts a file this process created to its owner when root (a file that existed keeps
/// its permissions otherwise), and hands it to the user who ran `sudo`.
pub fn secure(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // Only a regular file is the tool's to restrict: `-o /dev/null` or `/dev/full` as root must
    // not take a device away from every other user.
    if !root() || !f.metadata()?.file_type().is_file() {
        return Ok(());
    }
    // SAFETY: fchmod/fchown on a descriptor this function's caller owns.
    unsafe {
        if libc::fchmod(f.as_raw_fd(), 0o600) != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some((uid, gid)) = sudo_user()
            && libc::fchown(f.as_raw_fd(), uid, gid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes `text` to standard output: a full disk or a closed pipe is an error the caller
/// reports in one sentence (`println!` would panic).
pub fn print(text: &str) -> io::Result<()> {
    use std::io::Write as _;
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes `bytes` to `path` as [`create`] does.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = create(path, false)?;
    f.write_all(bytes)?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_not_followed_and_files_are_private_as_root() {
        let dir = std::env::temp_dir().join(format!("tracer-outfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.join("out");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = write(&link, b"x").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let p = dir.join("plain");
        write(&p, b"y").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"y");
        if root() {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_device_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = || std::fs::metadata("/dev/null").unwrap().permissions().mode() & 0o777;
        let before = mode();
        drop(create(Path::new("/dev/null"), false).unwrap());
        assert_eq!(mode(), before, "/dev/null's mode changed");
    }
}
