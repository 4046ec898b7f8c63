//! The report directory. `tracer check` runs as root, often in a directory others can write
//! to, so nothing here follows a symbolic link planted in its way: the directory is opened
//! with O_NOFOLLOW and every file in it is created relative to that descriptor, with
//! O_NOFOLLOW again.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum OutError {
    #[error("cannot create the report directory {path}: {err}")]
    Create { path: String, err: io::Error },
    #[error("{path} already exists; choose another --report directory")]
    Exists { path: String },
    #[error("{path} is not a directory (or is a symbolic link); refusing to write a report there")]
    NotDir { path: String },
    #[error("cannot open {path}: {err}")]
    Open { path: String, err: io::Error },
    #[error("a file name with a NUL byte: {0:?}")]
    Name(String),
}

/// An open report directory.
pub struct ReportDir {
    path: PathBuf,
    fd: OwnedFd,
}

fn cstr(s: &[u8]) -> Result<CString, OutError> {
    CString::new(s).map_err(|_| OutError::Name(String::from_utf8_lossy(s).into_owned()))
}

fn owned(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl ReportDir {
    /// `fresh`: the directory must not exist yet (the default, timestamped one); otherwise it
    /// is created with its parents when missing, and an existing one is reused.
    pub fn open(path: &Path, fresh: bool) -> Result<ReportDir, OutError> {
        let shown = path.display().to_string();
        let made = if fresh {
            std::fs::create_dir(path)
        } else {
            std::fs::create_dir_all(path)
        };
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && fresh => {
                return Err(OutError::Exists { path: shown });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(OutError::Create { path: shown, err }),
        }
        let c = cstr(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: open(2) with a valid C string; the result is checked by `owned`.
        let fd = owned(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => OutError::NotDir {
                path: shown.clone(),
            },
            _ => OutError::Open {
                path: shown.clone(),
                err,
            },
        })?;
        Ok(ReportDir {
            path: path.to_owned(),
            fd,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// DIR/name as a path (for messages and for the workload, which opens it with O_NOFOLLOW).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn openat(&self, name: &str, flags: i32) -> Result<File, OutError> {
        let c = cstr(name.as_bytes())?;
        // SAFETY: openat(2) relative to our directory descriptor with a valid C string.
        let fd = owned(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        })
        .map_err(|err| OutError::Open {
            path: self.join(name).display().to_string(),
            err,
        })?;
        Ok(File::from(fd))
    }

    /// Creates (or truncates) DIR/name for writing; a symbolic link there is an error.
    pub fn create(&self, name: &str) -> Result<File, OutError> {
        self.openat(name, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)
    }

    /// Opens DIR/name for reading; a symbolic link there is an error.
    pub fn read(&self, name: &str) -> Result<File, OutError> {
        self.openat(name, libc::O_RDONLY)
    }

    /// Removes DIR/name if it exists (the entry itself, never what a link points to).
    pub fn remove(&self, name: &str) {
        if let Ok(c) = cstr(name.as_bytes()) {
            // SAFETY: unlinkat(2) relative to our directory descriptor.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        }
    }
}

/// `YYYYmmddTHHMMSSZ` (UTC) for the default directory name.
pub fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = libc::time_t::try_from(now).unwrap_or(0);
    // SAFETY: gmtime_r fills a caller-provided tm; zeroed is a valid initial value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::gmtime_r(&t, &mut tm) }.is_null() {
        return now.to_string();
    }
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tracer-out-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn files_are_written_and_read_back() {
        let d = scratch("rw");
        let r = ReportDir::open(&d, true).unwrap();
        r.create("a.txt").unwrap().write_all(b"hello").unwrap();
        let mut s = String::new();
        r.read("a.txt").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        // A fresh directory must not exist yet; a given one is reused.
        assert!(matches!(
            ReportDir::open(&d, true),
            Err(OutError::Exists { .. })
        ));
        assert!(ReportDir::open(&d, false).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_are_never_followed() {
        let d = scratch("link");
        std::fs::create_dir_all(&d).unwrap();
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let r = ReportDir::open(&d, false).unwrap();
        std::os::unix::fs::symlink(&victim, d.join("events.jsonl")).unwrap();
        assert!(r.create("events.jsonl").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        // The directory itself as a link.
        let link = d.join("dirlink");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = ReportDir::open(&link, false).err().unwrap().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // remove() takes the link away, not its target.
        r.remove("events.jsonl");
        assert!(victim.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn timestamps_look_like_utc_instants() {
        let t = timestamp();
        assert_eq!(t.len(), 16, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[8] == b'T', "{t}");
    }
}
