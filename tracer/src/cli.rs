//! Range-checked command-line values: each parser turns bad input into one sentence that clap
//! prints with exit status 2, instead of a panic or a silently absurd setting.
use std::time::Duration;

/// The longest duration any command accepts (about 115 days): beyond it a number of seconds
/// is a typo, and `Duration` arithmetic stays far from overflow.
pub const MAX_SECONDS: f64 = 1e7;

/// A number of seconds above 0 and at most [`MAX_SECONDS`].
pub fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= MAX_SECONDS) {
        return Err(format!(
            "{s} is not a number of seconds above 0 and at most {MAX_SECONDS}"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A workload's length in seconds (`tracer stress`): above 0 and at most 1000000.
pub fn workload_seconds(s: &str) -> Result<f64, String> {
    seconds_upto(s, 1e6)
}

/// `tracer check`'s workload length in seconds: above 0 and at most a day.
pub fn check_seconds(s: &str) -> Result<f64, String> {
    seconds_upto(s, 86_400.0)
}

fn seconds_upto(s: &str, max: f64) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= max) {
        return Err(format!(
            "{s} is not a number of seconds above 0 and at most {max}"
        ));
    }
    Ok(v)
}

/// The largest pid Linux can hand out (`PID_MAX_LIMIT` on 64-bit).
pub const PID_MAX: u32 = 4_194_304;
/// The validator's reorder window, in events: beyond this many a window is a typo, and the
/// validator holds that many events in memory.
pub const WINDOW_MAX: u64 = 1 << 24;
/// Timestamp slack, in ns: 1000 s is far beyond any clock disagreement.
pub const SLACK_NS_MAX: u64 = 1_000_000_000_000;

/// A ring-buffer size: a power of two from 4096 bytes to 1 GiB.
pub fn ring_size(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a size in bytes"))?;
    if !(4096..=1 << 30).contains(&v) || !v.is_power_of_two() {
        return Err(format!(
            "{v} is not a power of two from 4096 to 1073741824 bytes"
        ));
    }
    Ok(v)
}

/// Return-probe instances: 1 to 4096 (the kernel's ceiling).
pub fn maxactive(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a count"))?;
    if !(1..=4096).contains(&v) {
        return Err(format!("{v} is not between 1 and 4096"));
    }
    Ok(v)
}

/// A replay speed factor: above 0 and at most 1e6.
pub fn speed(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(v.is_finite() && (1e-3..=1e6).contains(&v)) {
        return Err(format!("{s} is not a speed from 0.001 to 1000000"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_one_sentence() {
        for bad in ["inf", "NaN", "-1", "0", "1e300", "x"] {
            let e = seconds(bad).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
        assert_eq!(seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(ring_size("4095").is_err());
        assert!(ring_size("12288").is_err());
        assert_eq!(ring_size("8192").unwrap(), 8192);
        assert!(maxactive("0").is_err() && maxactive("4097").is_err());
        assert!(speed("1e-300").is_err() && speed("inf").is_err());
        assert_eq!(speed("10").unwrap(), 10.0);
        assert!(workload_seconds("1e6").is_ok() && workload_seconds("1000001").is_err());
        assert!(check_seconds("86400").is_ok() && check_seconds("86401").is_err());
        assert!(check_seconds("nan").is_err() && workload_seconds("0").is_err());
    }
}
