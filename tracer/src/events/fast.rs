//! A fast, allocation-free reader for the common shape of an event line: the first stage of
//! [`super::log::LogReader`], which every reader of logs goes through (the validator consumes
//! its borrowed events without building a `Record`).
//!
//! It accepts only lines it can judge with certainty: one flat JSON object whose values are
//! plain strings (no escapes), integers and booleans, of a known event kind with every
//! required field. Everything else (headers, summaries, `lost`, unknown kinds, escapes, nulls,
//! nested values, floats, duplicates, errors) returns `None`, and the caller falls back to
//! [`Record::parse`](crate::events::Record::parse), so both readers agree on every line: what
//! this one accepts, `Record::parse` parses to the same event (checked by a property test).
use super::{Body, CopyFn, Event, Kind};

/// An event borrowed from its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastEvent<'a> {
    pub ts: u64,
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
    pub mm: &'a str,
    pub mm_addr: Option<u64>,
    pub body: Body,
}

impl FastEvent<'_> {
    pub fn to_event(&self) -> Event {
        Event {
            ts: self.ts,
            cpu: self.cpu,
            pid: self.pid,
            tid: self.tid,
            comm: self.comm.to_owned(),
            mm: self.mm.to_owned(),
            mm_addr: self.mm_addr,
            body: self.body.clone(),
        }
    }
}

#[derive(Clone, Copy)]
enum Val<'a> {
    Str(&'a str),
    /// An integer with its sign.
    Int(bool, u64),
    Bool(bool),
}

/// Field slots of the permissive first stage of `Record::parse` (its `Line`); every one that
/// is present must have the right JSON type even if the kind does not need it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum F {
    Kind,
    Ts,
    Cpu,
    Pid,
    Tid,
    Comm,
    Mm,
    MmAddr,
    VmaStart,
    VmaEnd,
    Cow,
    Anon,
    VmFlags,
    Seq,
    Ret,
    Start,
    NrPages,
    Flags,
    Pin,
    FastOnly,
    Longterm,
    Probe,
    Count,
}

fn field(key: &[u8]) -> Option<F> {
    Some(match key {
        b"kind" => F::Kind,
        b"ts" => F::Ts,
        b"cpu" => F::Cpu,
        b"pid" => F::Pid,
        b"tid" => F::Tid,
        b"comm" => F::Comm,
        b"mm" => F::Mm,
        b"mm_addr" => F::MmAddr,
        b"vma_start" => F::VmaStart,
        b"vma_end" => F::VmaEnd,
        b"cow" => F::Cow,
        b"anon" => F::Anon,
        b"vm_flags" => F::VmFlags,
        b"seq" => F::Seq,
        b"ret" => F::Ret,
        b"start" => F::Start,
        b"nr_pages" => F::NrPages,
        b"flags" => F::Flags,
        b"pin" => F::Pin,
        b"fast_only" => F::FastOnly,
        b"longterm" => F::Longterm,
        b"probe" => F::Probe,
        b"count" => F::Count,
        _ => return None,
    })
}

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string's bytes, without escapes or control characters, not checked as UTF-8: for the
    /// `kind`, which is then looked up among ASCII names (and so is valid if found).
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            let c = *self.b.get(self.i)?;
            if c == b'"' {
                break;
            }
            if c == b'\\' || c < 0x20 {
                return None;
            }
            self.i += 1;
        }
        let out = self.b.get(start..self.i)?;
        self.i += 1;
        Some(out)
    }

    /// A hex string value (`"0x…"`), parsed as it is scanned, with the acceptance of
    /// [`parse_hex`] on the string (an optional `+`, then digits of either case, no overflow).
    /// Any other byte, an escape or a control character included, refuses it as it would
    /// there; no UTF-8 check is needed since a non-ASCII byte is no digit.
    fn hex(&mut self) -> Option<u64> {
        self.lit(b"\"0x")?;
        if self.b.get(self.i) == Some(&b'+') {
            self.i += 1;
        }
        let start = self.i;
        let mut v: u64 = 0;
        loop {
            let c = *self.b.get(self.i)?;
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                b'"' => break,
                _ => return None,
            };
            // The next digit overflows exactly when the top four bits are in use.
            if v >> 60 != 0 {
                return None;
            }
            v = (v << 4) | u64::from(d);
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        self.i += 1;
        Some(v)
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        // The line may not have been checked as UTF-8 yet (the canonical path works on bytes):
        // checking the string alone is cheap and, with ASCII everywhere else, covers the line.
        std::str::from_utf8(self.raw_string()?).ok()
    }

    fn int(&mut self) -> Option<(bool, u64)> {
        let neg = self.eat(b'-').is_some();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            // 19 digits cannot overflow a u64 (10^19 - 1 < 2^64), so only longer numbers pay
            // for checked arithmetic: a timestamp has about ten digits.
            v = if self.i - start < 19 {
                v * 10 + u64::from(d)
            } else {
                v.checked_mul(10)?.checked_add(u64::from(d))?
            };
            self.i += 1;
        }
        let n = self.i - start;
        // JSON forbids leading zeros; fractions and exponents are floats (the slow path decides).
        if n == 0 || (n > 1 && self.b.get(start) == Some(&b'0')) || (neg && v == 0) {
            return None;
        }
        if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some((neg, v))
    }

    fn lit(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    fn uint(&mut self) -> Option<u64> {
        match self.int()? {
            (false, v) => Some(v),
            _ => None,
        }
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.uint()?).ok()
    }

    fn i64(&mut self) -> Option<i64> {
        let (neg, v) = self.int()?;
        i(Val::Int(neg, v))
    }

    /// A seq value: an integer, or `null` (unreadable).
    fn seq(&mut self) -> Option<Option<u32>> {
        if self.lit(b"null").is_some() {
            Some(None)
        } else {
            self.u32().map(Some)
        }
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.lit(b"true").is_some() {
            Some(true)
        } else {
            self.lit(b"false").map(|()| false)
        }
    }

    fn value(&mut self) -> Option<Val<'a>> {
        match *self.b.get(self.i)? {
            b'"' => self.string().map(Val::Str),
            b't' => self.lit(b"true").map(|()| Val::Bool(true)),
            b'f' => self.lit(b"false").map(|()| Val::Bool(false)),
            b'-' | b'0'..=b'9' => self.int().map(|(n, v)| Val::Int(n, v)),
            _ => None,
        }
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    // Same acceptance as the schema's reader (`from_str_radix` after "0x").
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

#[derive(Default)]
struct Fields<'a> {
    kind: Option<&'a str>,
    ts: Option<u64>,
    cpu: Option<u32>,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<&'a str>,
    mm: Option<&'a str>,
    mm_addr: Option<&'a str>,
    vma_start: Option<&'a str>,
    vma_end: Option<&'a str>,
    cow: Option<bool>,
    anon: Option<bool>,
    vm_flags: Option<&'a str>,
    seq: Option<u32>,
    ret: Option<i64>,
    start: Option<&'a str>,
    nr_pages: Option<u64>,
    flags: Option<u32>,
    pin: Option<bool>,
    fast_only: Option<bool>,
    longterm: Option<bool>,
}

fn set<T>(slot: &mut Option<T>, v: Option<T>) -> Option<()> {
    // A duplicate key or a value of the wrong type: leave it to the slow path.
    if slot.is_some() {
        return None;
    }
    *slot = Some(v?);
    Some(())
}

fn u(v: Val<'_>) -> Option<u64> {
    match v {
        Val::Int(false, x) => Some(x),
        _ => None,
    }
}

fn u32v(v: Val<'_>) -> Option<u32> {
    u32::try_from(u(v)?).ok()
}

fn s(v: Val<'_>) -> Option<&str> {
    match v {
        Val::Str(x) => Some(x),
        _ => None,
    }
}

fn b(v: Val<'_>) -> Option<bool> {
    match v {
        Val::Bool(x) => Some(x),
        _ => None,
    }
}

fn i(v: Val<'_>) -> Option<i64> {
    match v {
        Val::Int(false, x) => i64::try_from(x).ok(),
        // -(2^63) is representable; anything beyond is not.
        Val::Int(true, x) => 0i64.checked_sub_unsigned(x),
        _ => None,
    }
}

/// The exact layout `Event::write_json` produces: fixed literals between the values, so each
/// field costs one prefix comparison. Any deviation returns `None` (the general path decides).
///
/// Works on raw bytes: every byte it accepts outside the string values is ASCII and every
/// string value is checked as UTF-8, so an accepted line is valid UTF-8 and the caller may
/// skip checking the whole line.
pub fn parse_canonical(line: &[u8]) -> Option<FastEvent<'_>> {
    let mut c = Cur { b: line, i: 0 };
    c.lit(b"{\"kind\":")?;
    let kind = Kind::from_bytes(c.raw_string()?)?;
    c.lit(b",\"ts\":")?;
    let ts = c.uint()?;
    c.lit(b",\"cpu\":")?;
    let cpu = c.u32()?;
    c.lit(b",\"pid\":")?;
    let pid = c.u32()?;
    c.lit(b",\"tid\":")?;
    let tid = c.u32()?;
    c.lit(b",\"comm\":")?;
    let comm = c.string()?;
    c.lit(b",\"mm\":")?;
    let mm = c.string()?;
    let mm_addr = if c.lit(b",\"mm_addr\":").is_some() {
        Some(c.hex()?)
    } else {
        None
    };
    let body = match kind {
        Kind::CprEnter | Kind::HugetlbEnter => {
            c.lit(b",\"vma_start\":")?;
            let vma_start = c.hex()?;
            c.lit(b",\"vma_end\":")?;
            let vma_end = c.hex()?;
            c.lit(b",\"cow\":")?;
            let cow = c.boolean()?;
            let anon = if c.lit(b",\"anon\":").is_some() {
                Some(c.boolean()?)
            } else {
                None
            };
            let vm_flags = if c.lit(b",\"vm_flags\":").is_some() {
                Some(c.hex()?)
            } else {
                None
            };
            c.lit(b",\"seq\":")?;
            Body::CopyEnter {
                func: CopyFn::of_kind(kind),
                vma_start,
                vma_end,
                cow,
                anon,
                vm_flags,
                seq: c.seq()?,
            }
        }
        Kind::CprExit | Kind::HugetlbExit => {
            c.lit(b",\"seq\":")?;
            let seq = c.seq()?;
            c.lit(b",\"ret\":")?;
            Body::CopyExit {
                func: CopyFn::of_kind(kind),
                seq,
                ret: c.i64()?,
            }
        }
        Kind::GupEnter => {
            c.lit(b",\"start\":")?;
            let start = c.hex()?;
            c.lit(b",\"nr_pages\":")?;
            let nr_pages = c.uint()?;
            c.lit(b",\"flags\":")?;
            let flags = c.u32()?;
            c.lit(b",\"pin\":")?;
            let pin = c.boolean()?;
            c.lit(b",\"fast_only\":")?;
            let fast_only = c.boolean()?;
            c.lit(b",\"longterm\":")?;
            let longterm = c.boolean()?;
            c.lit(b",\"seq\":")?;
            Body::GupEnter {
                start,
                nr_pages,
                flags,
                pin,
                fast_only,
                longterm,
                seq: c.seq()?,
            }
        }
        Kind::GupExit => {
            c.lit(b",\"ret\":")?;
            let ret = c.i64()?;
            c.lit(b",\"seq\":")?;
            Body::GupExit { ret, seq: c.seq()? }
        }
        k @ (Kind::WriteBegin
        | Kind::WriteEnd
        | Kind::ReadBegin
        | Kind::ReadRetry
        | Kind::RetryFail) => {
            c.lit(b",\"seq\":")?;
            Body::Site {
                kind: k,
                seq: c.seq()?,
            }
        }
        // As in `parse_event`: the general reader takes these.
        Kind::Fork | Kind::PinSyscall => return None,
    };
    c.lit(b"}")?;
    if c.i != c.b.len() {
        return None;
    }
    Some(FastEvent {
        ts,
        cpu,
        pid,
        tid,
        comm,
        mm,
        mm_addr,
        body,
    })
}

/// Parses an event line, or returns `None` when the slow reader must decide.
pub fn parse_event(line: &str) -> Option<FastEvent<'_>> {
    if let Some(e) = parse_canonical(line.as_bytes()) {
        return Some(e);
    }
    parse_general(line)
}

fn parse_general(line: &str) -> Option<FastEvent<'_>> {
    let mut c = Cur {
        b: line.as_bytes(),
        i: 0,
    };
    let mut f = Fields::default();
    // Fields the schema's permissive stage knows but no event kind needs: type-checked only.
    let mut probe_seen = false;
    let mut count_seen = false;
    c.ws();
    c.eat(b'{')?;
    c.ws();
    if c.eat(b'}').is_some() {
        return None;
    }
    loop {
        c.ws();
        let key = c.string()?;
        c.ws();
        c.eat(b':')?;
        c.ws();
        let v = c.value()?;
        match field(key.as_bytes()) {
            None => {}
            Some(F::Kind) => set(&mut f.kind, s(v))?,
            Some(F::Ts) => set(&mut f.ts, u(v))?,
            Some(F::Cpu) => set(&mut f.cpu, u32v(v))?,
            Some(F::Pid) => set(&mut f.pid, u32v(v))?,
            Some(F::Tid) => set(&mut f.tid, u32v(v))?,
            Some(F::Comm) => set(&mut f.comm, s(v))?,
            Some(F::Mm) => set(&mut f.mm, s(v))?,
            Some(F::MmAddr) => set(&mut f.mm_addr, s(v))?,
            Some(F::VmaStart) => set(&mut f.vma_start, s(v))?,
            Some(F::VmaEnd) => set(&mut f.vma_end, s(v))?,
            Some(F::Cow) => set(&mut f.cow, b(v))?,
            Some(F::Anon) => set(&mut f.anon, b(v))?,
            Some(F::VmFlags) => set(&mut f.vm_flags, s(v))?,
            Some(F::Seq) => set(&mut f.seq, u32v(v))?,
            Some(F::Ret) => set(&mut f.ret, i(v))?,
            Some(F::Start) => set(&mut f.start, s(v))?,
            Some(F::NrPages) => set(&mut f.nr_pages, u(v))?,
            Some(F::Flags) => set(&mut f.flags, u32v(v))?,
            Some(F::Pin) => set(&mut f.pin, b(v))?,
            Some(F::FastOnly) => set(&mut f.fast_only, b(v))?,
            Some(F::Longterm) => set(&mut f.longterm, b(v))?,
            Some(F::Probe) => {
                if probe_seen {
                    return None;
                }
                probe_seen = true;
                s(v)?;
            }
            Some(F::Count) => {
                if count_seen {
                    return None;
                }
                count_seen = true;
                u(v)?;
            }
        }
        c.ws();
        if c.eat(b',').is_some() {
            continue;
        }
        c.eat(b'}')?;
        break;
    }
    c.ws();
    if c.i != c.b.len() {
        return None;
    }
    let kind = Kind::from_name(f.kind?)?;
    // `null` seq values are left to the general reader (`Record::parse`).
    let seq = Some(f.seq?);
    let body = match kind {
        Kind::CprEnter | Kind::HugetlbEnter => Body::CopyEnter {
            func: CopyFn::of_kind(kind),
            vma_start: parse_hex(f.vma_start?)?,
            vma_end: parse_hex(f.vma_end?)?,
            cow: f.cow?,
            anon: f.anon,
            vm_flags: match f.vm_flags {
                Some(v) => Some(parse_hex(v)?),
                None => None,
            },
            seq,
        },
        Kind::CprExit | Kind::HugetlbExit => Body::CopyExit {
            func: CopyFn::of_kind(kind),
            seq,
            ret: f.ret?,
        },
        Kind::GupEnter => Body::GupEnter {
            start: parse_hex(f.start?)?,
            nr_pages: f.nr_pages?,
            flags: f.flags?,
            pin: f.pin?,
            fast_only: f.fast_only?,
            longterm: f.longterm?,
            seq,
        },
        Kind::GupExit => Body::GupExit { ret: f.ret?, seq },
        k @ (Kind::WriteBegin
        | Kind::WriteEnd
        | Kind::ReadBegin
        | Kind::ReadRetry
        | Kind::RetryFail) => Body::Site { kind: k, seq },
        // The tracepoint mode's kinds are rare (one per fork or pinning syscall): the general
        // reader takes them.
        Kind::Fork | Kind::PinSyscall => return None,
    };
    let mm_addr = match f.mm_addr {
        Some(a) => Some(parse_hex(a)?),
        None => None,
    };
    Some(FastEvent {
        ts: f.ts?,
        cpu: f.cpu?,
        pid: f.pid?,
        tid: f.tid?,
        comm: f.comm?,
        mm: f.mm?,
        mm_addr,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Record;

    fn agree(line: &str) {
        if let Some(fe) = parse_event(line) {
            assert_eq!(
                Record::parse(line),
                Ok(Record::Event(fe.to_event())),
                "{line}"
            );
        }
    }

    #[test]
    fn plain_event_lines_take_the_fast_path() {
        let l = r#"{"kind":"gup_enter","ts":5,"cpu":1,"pid":2,"tid":3,"comm":"io","mm":"m1","start":"0x1000","nr_pages":4,"flags":524289,"pin":true,"fast_only":false,"longterm":false,"seq":8}"#;
        assert!(parse_event(l).is_some());
        agree(l);
        let l = r#" { "kind" : "cpr_exit" , "ts":5,"cpu":1,"pid":2,"tid":3,"comm":"a","mm":"m","seq":2,"ret":-9223372036854775808 } "#;
        assert_eq!(
            parse_event(l).map(|e| e.body),
            Some(Body::CopyExit {
                func: CopyFn::Cpr,
                seq: Some(2),
                ret: i64::MIN
            })
        );
        agree(l);
    }

    /// The byte-at-a-time reading `Cur::int` replaced, as the reference.
    fn int_reference(b: &[u8]) -> Option<((bool, u64), usize)> {
        let mut i = 0;
        let neg = b.first() == Some(&b'-');
        if neg {
            i += 1;
        }
        let start = i;
        let mut v: u64 = 0;
        while let Some(&c) = b.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            i += 1;
        }
        let n = i - start;
        if n == 0 || (n > 1 && b.get(start) == Some(&b'0')) || (neg && v == 0) {
            return None;
        }
        if matches!(b.get(i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(((neg, v), i))
    }

    #[test]
    fn integers_are_read_as_one_byte_at_a_time() {
        let mut cases: Vec<String> = [
            "0",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "9999999999999999999",
            "-9223372036854775808",
            "-0",
            "01",
            "1.5",
            "1e3",
            "-",
            "",
            "12345678",
            "123456789",
            "00000000",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // Every length up to past u64::MAX's, before each kind of byte that can follow, with
        // enough after it for the eight-byte path or not.
        let digits = "98765432109876543210123";
        let mut x: u64 = 1;
        for n in 0..=digits.len() {
            for tail in [
                "",
                ",",
                "}",
                ",\"cpu\":1}",
                ".5,\"x\":1}",
                "e1",
                ":",
                "/",
                "a",
            ] {
                for sign in ["", "-"] {
                    cases.push(format!("{sign}{}{tail}", &digits[..n]));
                    cases.push(format!("{sign}1{}{tail}", "0".repeat(n)));
                    // Pseudo-random digits.
                    let mut s = String::new();
                    for _ in 0..n {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        s.push(char::from(b'0' + ((x >> 33) % 10) as u8));
                    }
                    cases.push(format!("{sign}{s}{tail}"));
                }
            }
        }
        for c in &cases {
            let mut cur = Cur {
                b: c.as_bytes(),
                i: 0,
            };
            let got = cur.int().map(|v| (v, cur.i));
            assert_eq!(got, int_reference(c.as_bytes()), "{c:?}");
        }
    }

    #[test]
    fn hex_values_are_read_as_from_str_radix_reads_them() {
        let mut cases: Vec<String> = [
            "",
            "0x",
            "0x+",
            "0x-",
            "0x-1",
            "0x+1",
            "0x++1",
            "1",
            "x1",
            "0X1",
            "0x0",
            "0xg",
            "0xfFfF",
            "0x7f0000001000",
            "0xffffffffffffffff",
            "0x10000000000000000",
            "0x00000000000000000001",
            "0x0ffffffffffffffff",
            "0x1ffffffffffffffff",
            "0x+ffffffffffffffff",
            "0x 1",
            "0x1 ",
            "0x\u{e9}",
            "0x\u{663}",
            "0x1\\n",
            "0x1\t",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // Every length around the overflow boundary, with and without leading zeros.
        for n in 1..=22 {
            for d in ["f", "0", "1", "A"] {
                cases.push(format!("0x{}", d.repeat(n)));
                cases.push(format!("0x0{}", d.repeat(n)));
            }
        }
        for c in &cases {
            let quoted = format!("\"{c}\"");
            let mut cur = Cur {
                b: quoted.as_bytes(),
                i: 0,
            };
            // What the string then `parse_hex` made of it.
            let want = Cur {
                b: quoted.as_bytes(),
                i: 0,
            }
            .string()
            .and_then(parse_hex);
            assert_eq!(cur.hex(), want, "{c:?}");
            if want.is_some() {
                assert_eq!(cur.i, quoted.len(), "{c:?}");
            }
        }
    }

    #[test]
    fn anything_unusual_falls_back() {
        for l in [
            r#"{"kind":"write_begin","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"a\"","mm":"m","seq":0}"#,
            r#"{"kind":"write_begin","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"a","mm":"m","seq":4294967296}"#,
            r#"{"kind":"write_begin","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"a","mm":"m","seq":01}"#,
            r#"{"kind":"write_begin","ts":1.0,"cpu":0,"pid":1,"tid":1,"comm":"a","mm":"m","seq":1}"#,
            r#"{"kind":"write_begin","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"a","mm":"m","seq":1,"seq":2}"#,
            r#"{"kind":"write_begin","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"a","mm":"m","seq":1,"ret":"x"}"#,
            r#"{"kind":"write_begin","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"a","mm":"m","seq":1} x"#,
            r#"{"kind":"write_begin","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"a","mm":"m","x":[1],"seq":1}"#,
            r#"{"kind":"lost","probe":"x","count":1}"#,
            r#"{"kind":"header","schema":1}"#,
            r#"{"kind":"zzz","ts":1}"#,
            r#"{}"#,
        ] {
            assert!(parse_event(l).is_none(), "{l}");
        }
    }
}
