//! FOLL_* flag values. They changed in 6.3 (FOLL_PIN 0x40000 → 0x80000, and 0x80000 went from
//! FOLL_FAST_ONLY to FOLL_PIN), so decoding must know the era: from BTF when the kernel declares
//! them as enum constants (6.3+), else from the kernel version.
use thiserror::Error;

use super::btf::Btf;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FollError {
    #[error("cannot parse kernel release {0:?} as MAJOR.MINOR")]
    BadRelease(String),
}

/// Where the values came from, for the attach plan and the log header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollSource {
    Btf,
    VersionBefore6_3,
    VersionFrom6_3,
}

impl FollSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FollSource::Btf => "btf",
            FollSource::VersionBefore6_3 => "version<6.3",
            FollSource::VersionFrom6_3 => "version>=6.3",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollFlags {
    pub write: u32,
    pub get: u32,
    pub pin: u32,
    pub fast_only: u32,
    pub longterm: u32,
    pub source: FollSource,
}

/// Flags decoded from one raw `gup_flags` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Decoded {
    pub pin: bool,
    pub fast_only: bool,
    pub longterm: bool,
    pub write: bool,
    pub get: bool,
}

/// Parses "6.12.117+deb12-cloud-amd64" or "6.1.0-56-cloud-amd64" into (6, 12) / (6, 1).
pub fn parse_release(release: &str) -> Result<(u32, u32), FollError> {
    let bad = || FollError::BadRelease(release.to_owned());
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let minor = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok((major, minor))
}

impl FollFlags {
    pub const BEFORE_6_3: FollFlags = FollFlags {
        write: 0x01,
        get: 0x04,
        pin: 0x40000,
        fast_only: 0x80000,
        longterm: 0x10000,
        source: FollSource::VersionBefore6_3,
    };
    pub const FROM_6_3: FollFlags = FollFlags {
        write: 1 << 0,
        get: 1 << 1,
        pin: 1 << 19,
        fast_only: 1 << 20,
        longterm: 1 << 8,
        source: FollSource::VersionFrom6_3,
    };

    /// Values for a kernel: BTF enum constants win over the version table.
    pub fn for_kernel(btf: Option<&Btf>, release: &str) -> Result<FollFlags, FollError> {
        if let Some(btf) = btf {
            let get = |n: &str| btf.enum_value(n).and_then(|v| u32::try_from(v).ok());
            if let (Some(write), Some(get_), Some(pin), Some(fast_only), Some(longterm)) = (
                get("FOLL_WRITE"),
                get("FOLL_GET"),
                get("FOLL_PIN"),
                get("FOLL_FAST_ONLY"),
                get("FOLL_LONGTERM"),
            ) {
                return Ok(FollFlags {
                    write,
                    get: get_,
                    pin,
                    fast_only,
                    longterm,
                    source: FollSource::Btf,
                });
            }
        }
        let (major, minor) = parse_release(release)?;
        Ok(if (major, minor) >= (6, 3) {
            FollFlags::FROM_6_3
        } else {
            FollFlags::BEFORE_6_3
        })
    }

    pub fn decode(&self, flags: u32) -> Decoded {
        Decoded {
            pin: flags & self.pin != 0,
            fast_only: flags & self.fast_only != 0,
            longterm: flags & self.longterm != 0,
            write: flags & self.write != 0,
            get: flags & self.get != 0,
        }
    }
}

impl Decoded {
    /// `PIN|WRITE|LONGTERM` style, for people.
    pub fn names(&self) -> String {
        let mut v = Vec::new();
        for (on, name) in [
            (self.pin, "PIN"),
            (self.get, "GET"),
            (self.write, "WRITE"),
            (self.longterm, "LONGTERM"),
            (self.fast_only, "FAST_ONLY"),
        ] {
            if on {
                v.push(name);
            }
        }
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join("|")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(
            parse_release("6.12.117+deb12-cloud-amd64").unwrap(),
            (6, 12)
        );
        assert_eq!(parse_release("6.1.0-56-cloud-amd64").unwrap(), (6, 1));
        assert!(parse_release("banana").is_err());
    }

    #[test]
    fn the_0x80000_hazard_is_decoded_by_era() {
        let old = FollFlags::for_kernel(None, "6.1.0-56-cloud-amd64").unwrap();
        let new = FollFlags::for_kernel(None, "6.12.117+deb12-cloud-amd64").unwrap();
        // 0x80000 is FOLL_FAST_ONLY before 6.3 and FOLL_PIN from 6.3.
        assert_eq!(
            old.decode(0x80000),
            Decoded {
                fast_only: true,
                ..Default::default()
            }
        );
        assert_eq!(
            new.decode(0x80000),
            Decoded {
                pin: true,
                ..Default::default()
            }
        );
        // io_uring's FOLL_WRITE|FOLL_LONGTERM|FOLL_PIN in each era.
        assert_eq!(
            old.decode(0x40000 | 0x10000 | 1).names(),
            "PIN|WRITE|LONGTERM"
        );
        assert_eq!(
            new.decode(0x80000 | 0x100 | 1).names(),
            "PIN|WRITE|LONGTERM"
        );
    }
}
