//! The one log layer: every part of the tool that reads or writes schema-1 logs goes through
//! [`LogReader`] and [`LogWriter`] (`record`, the TUI's replay, follow, spool and `--record`,
//! `validate`, `export` and `report`), so they agree on what a log is.
//!
//! Reading has two modes. **Strict** (the default everywhere) stops at the first line that is
//! not a valid record of its place in the log, with an error naming the line. **Lenient**
//! (`--lenient`) hands such a line back as [`Item::Skipped`] and counts it, so every command
//! can show how many lines it skipped and why. Either way lines are numbered as in the file
//! (1-based, the header is line 1, blank lines count), which is the numbering the validator's
//! reports and the TUI use. What makes a line bad:
//!
//! - it is not UTF-8, not JSON, or misses a field its kind requires ([`ParseError`]);
//! - a second header, or any record after the summary.
//!
//! Lines of a kind this version does not know are not bad (a newer minor version may add
//! kinds): they come back as [`Record::Unknown`]. A log that does not start with a header, an
//! empty log and a read error end reading in both modes: there is nothing to skip to.
use std::{
    fs::File,
    io::{self, Read, Write},
    ops::Range,
    path::Path,
};

use thiserror::Error;

use super::{
    Event, Header, Record,
    fast::{self, FastEvent},
    schema::ParseError,
};

/// How a reader treats a bad line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Stop with an error naming the line.
    #[default]
    Strict,
    /// Skip it (returned as [`Item::Skipped`]) and count it.
    Lenient,
}

/// The reading options every command that reads a log takes.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct ReadArgs {
    /// Skip malformed lines (counted and reported) instead of stopping at the first one with
    /// exit status 2.
    #[arg(long)]
    pub lenient: bool,
}

impl ReadArgs {
    pub fn mode(self) -> Mode {
        if self.lenient {
            Mode::Lenient
        } else {
            Mode::Strict
        }
    }
}

/// What is wrong with one line.
#[derive(Debug, Error)]
pub enum LineError {
    #[error("read error: {0}")]
    Read(io::Error),
    #[error("not UTF-8 text")]
    NotUtf8,
    // Formatted inline (not as `source`) so a one-line message is not repeated by error-chain
    // printing.
    #[error("{0}")]
    Parse(ParseError),
    #[error("the first record must be a header with \"schema\":1, not a {0} record")]
    NotHeader(String),
    #[error("a second header")]
    SecondHeader,
    #[error("a record after the summary")]
    AfterSummary,
    /// An event the header says cannot be there: a judgement built on that header would be
    /// false either way.
    #[error("a {0} event, but the header lists no {0} probe")]
    NotInHeader(&'static str),
    /// The last line of the input, without its newline, that does not parse: the writer was
    /// stopped mid-line (killed). Skipped in either mode; the log then has no summary either.
    #[error("the last line is cut short ({0})")]
    Truncated(Box<LineError>),
}

impl LineError {
    /// Whether lenient reading may skip the line and go on.
    fn skippable(&self) -> bool {
        matches!(
            self,
            LineError::NotUtf8
                | LineError::Parse(_)
                | LineError::SecondHeader
                | LineError::AfterSummary
                | LineError::NotInHeader(_)
        )
    }
}

/// Why a log cannot be read (on). Each message is one sentence naming the file (when it has a
/// name) and the line.
#[derive(Debug, Error)]
pub enum LogError {
    #[error("cannot open {name}: {err}")]
    Open { name: String, err: io::Error },
    #[error("{}the log is empty (no header)", prefix(.name, ": "))]
    Empty { name: Option<String> },
    #[error("{}line {line}: {err}", prefix(.name, " "))]
    Line {
        name: Option<String>,
        line: u64,
        err: LineError,
    },
}

fn prefix(name: &Option<String>, sep: &str) -> String {
    name.as_ref()
        .map_or_else(String::new, |n| format!("{n}{sep}"))
}

impl LogError {
    /// The line the error is about, when it is about one.
    pub fn line(&self) -> Option<u64> {
        match self {
            LogError::Line { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// A line lenient reading skipped.
#[derive(Debug)]
pub struct Skip {
    pub line: u64,
    pub err: LineError,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}; skipped", self.line, self.err)
    }
}

/// One line's worth of log.
#[derive(Debug)]
pub enum Item<'a> {
    /// An event in the exact layout the writer produces (or another plain layout the fast
    /// reader accepts), borrowed from the line: no allocation.
    Event(FastEvent<'a>),
    /// Anything else: events the fast reader left to the schema's parser, `lost` lines, the
    /// summary, kinds this version does not know.
    Record(Record),
    /// A bad line, in lenient mode only.
    Skipped(Skip),
}

impl Item<'_> {
    /// The record, owned (a skipped line has none).
    pub fn into_record(self) -> Option<Record> {
        match self {
            Item::Event(e) => Some(Record::Event(e.to_event())),
            Item::Record(r) => Some(r),
            Item::Skipped(_) => None,
        }
    }
}

/// Splits a byte stream into lines without copying each one (memchr over a large buffer).
/// At the end of the input, `wait` (when set) is asked whether more may come: a log still
/// being written is followed like `tail -f`.
/// The longest line a reader accepts: a header with every probe and discovery's account is a
/// few KiB; a line beyond this is not a log line, and buffering it whole would let any file
/// take memory without bound.
const MAX_LINE: usize = 16 << 20;

struct Lines<R> {
    rd: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// The line last returned ended the input without a newline.
    unterminated: bool,
    wait: Option<Box<dyn FnMut() -> bool + Send>>,
}

impl<R: Read> Lines<R> {
    fn new(rd: R) -> Self {
        Lines {
            rd,
            buf: vec![0; 1 << 20],
            start: 0,
            end: 0,
            eof: false,
            unterminated: false,
            wait: None,
        }
    }

    /// Where the next line lies in `buf` (without its `\n`), or `None` at the end. A range
    /// rather than a slice so the caller can borrow it only once it has decided what to do.
    fn next_line(&mut self) -> io::Result<Option<Range<usize>>> {
        loop {
            let pending = self.buf.get(self.start..self.end).unwrap_or_default();
            if let Some(k) = memchr::memchr(b'\n', pending) {
                let (s, e) = (self.start, self.start + k);
                self.start = e + 1;
                return Ok(Some(s..e));
            }
            if self.eof {
                if self.start < self.end {
                    let (s, e) = (self.start, self.end);
                    self.start = e;
                    self.unterminated = true;
                    return Ok(Some(s..e));
                }
                return Ok(None);
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                // A line longer than the buffer: grow it, up to MAX_LINE.
                if self.buf.len() >= MAX_LINE {
                    return Err(io::Error::other(format!(
                        "longer than {} MiB without a newline: not a log line",
                        MAX_LINE >> 20
                    )));
                }
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let room = self.buf.get_mut(self.end..).unwrap_or_default();
            match self.rd.read(room) {
                Ok(0) => {
                    // A half-written last line stays buffered until its newline comes.
                    let more = self.wait.as_mut().is_some_and(|w| w());
                    if !more {
                        self.eof = true;
                    }
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn get(&self, r: Range<usize>) -> &[u8] {
        self.buf.get(r).unwrap_or_default()
    }
}

/// Whether a line holds nothing but whitespace. Cheap for the lines that matter: a record
/// starts with `{`, so only the first byte is looked at.
fn blank(b: &[u8]) -> bool {
    b.first().is_none_or(u8::is_ascii_whitespace) && b.iter().all(u8::is_ascii_whitespace)
}

/// Reads a schema-1 log: its header first (in [`LogReader::new`]), then one [`Item`] per line.
pub struct LogReader<R> {
    lines: Lines<R>,
    name: Option<String>,
    mode: Mode,
    line: u64,
    header: Header,
    st: State,
}

/// A log opened by [`open`]: a file, or standard input.
pub type OpenLog = LogReader<Box<dyn Read + Send>>;

/// Opens `path` (`-` for standard input) and reads its header.
pub fn open(path: &Path, mode: Mode) -> Result<OpenLog, LogError> {
    if path == Path::new("-") {
        return LogReader::new(
            Box::new(io::stdin()),
            Some("standard input".to_owned()),
            mode,
        );
    }
    let name = path.display().to_string();
    let f = File::open(path).map_err(|err| LogError::Open {
        name: name.clone(),
        err,
    })?;
    LogReader::new(Box::new(f), Some(name), mode)
}

impl<R: Read> LogReader<R> {
    /// Reads up to and including the header. `name` (a path) prefixes error messages.
    pub fn new(rd: R, name: Option<String>, mode: Mode) -> Result<Self, LogError> {
        Self::with_wait(rd, name, mode, None)
    }

    /// As [`LogReader::new`], for a log still being written: at the end of the input `wait`
    /// is called (it should sleep a little) and reading goes on while it returns true, until
    /// the log's summary has been read.
    pub fn with_wait(
        rd: R,
        name: Option<String>,
        mode: Mode,
        wait: Option<Box<dyn FnMut() -> bool + Send>>,
    ) -> Result<Self, LogError> {
        let mut lines = Lines::new(rd);
        lines.wait = wait;
        let mut line = 0;
        let err = |line, err| LogError::Line {
            name: name.clone(),
            line,
            err,
        };
        let header = loop {
            let Some(r) = lines
                .next_line()
                .map_err(|e| err(line + 1, LineError::Read(e)))?
            else {
                return Err(LogError::Empty { name });
            };
            line += 1;
            let bytes = lines.get(r);
            if blank(bytes) {
                continue;
            }
            let text = std::str::from_utf8(bytes).map_err(|_| err(line, LineError::NotUtf8))?;
            match Record::parse(text.trim_end()) {
                Ok(Record::Header(h)) => break h,
                Ok(other) => return Err(err(line, LineError::NotHeader(other.kind_name().into()))),
                Err(e) => return Err(err(line, LineError::Parse(e))),
            }
        };
        Ok(LogReader {
            lines,
            name,
            mode,
            line,
            header,
            st: State::default(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's name, as given (for messages).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Lines skipped so far (lenient mode).
    pub fn skipped(&self) -> u64 {
        self.st.skipped
    }

    /// What was wrong with the first skipped line.
    pub fn first_skip(&self) -> Option<&str> {
        self.st.first_skip.as_deref()
    }

    /// The last line read (its 1-based number).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Whether the summary has been read.
    pub fn summary_seen(&self) -> bool {
        self.st.after_summary
    }

    /// A line the reader passed on but its consumer finds bad (an event the header
    /// contradicts): strict reading fails on it, lenient reading counts it as skipped.
    pub fn reject(&mut self, line: u64, err: LineError) -> Result<(), LogError> {
        if self.mode == Mode::Lenient && err.skippable() {
            self.st.skipped += 1;
            if self.st.first_skip.is_none() {
                self.st.first_skip = Some(Skip { line, err }.to_string());
            }
            return Ok(());
        }
        Err(LogError::Line {
            name: self.name.clone(),
            line,
            err,
        })
    }

    /// One sentence about the lines skipped, for a command's stderr; `None` when none were.
    pub fn skip_note(&self) -> Option<String> {
        let st = &self.st;
        (st.skipped > 0).then(|| {
            format!(
                "{}{} malformed line{} skipped ({}); the first: {}",
                prefix(&self.name, ": "),
                st.skipped,
                if st.skipped == 1 { "" } else { "s" },
                if self.mode == Mode::Lenient {
                    "--lenient"
                } else {
                    "the writer stopped mid-line"
                },
                st.first_skip.as_deref().unwrap_or("?")
            )
        })
    }

    /// The next line after the header: `Ok(None)` at the end of the log.
    pub fn next_item(&mut self) -> Result<Option<(u64, Item<'_>)>, LogError> {
        let Some(range) = self.next_nonblank()? else {
            return Ok(None);
        };
        let line = self.line;
        let bytes = self.lines.get(range);
        // The common case first: an event in the writer's layout, parsed (and UTF-8 checked)
        // in place.
        if !self.st.after_summary
            && let Some(e) = fast::parse_canonical(bytes)
        {
            return Ok(Some((line, Item::Event(e))));
        }
        classify(
            bytes,
            line,
            &mut self.st,
            self.mode,
            &self.name,
            self.lines.unterminated,
        )
        .map(|it| Some((line, it)))
    }

    /// Calls `f` with every remaining line's item, in order. The same items as [`next_item`], with
    /// less per line (the validator's hot loop: nothing is returned through the call chain).
    ///
    /// [`next_item`]: LogReader::next_item
    pub fn for_each(&mut self, mut f: impl FnMut(u64, Item<'_>)) -> Result<(), LogError> {
        while let Some(range) = self.next_nonblank()? {
            let line = self.line;
            let bytes = self.lines.get(range);
            if !self.st.after_summary
                && let Some(e) = fast::parse_canonical(bytes)
            {
                f(line, Item::Event(e));
                continue;
            }
            let item = classify(
                bytes,
                line,
                &mut self.st,
                self.mode,
                &self.name,
                self.lines.unterminated,
            )?;
            f(line, item);
        }
        Ok(())
    }

    /// Where the next non-blank line lies, counting every line read.
    #[inline]
    fn next_nonblank(&mut self) -> Result<Option<Range<usize>>, LogError> {
        if self.st.after_summary {
            // A followed log is complete: its end is the end.
            self.lines.wait = None;
        }
        loop {
            let r = match self.lines.next_line() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(LogError::Line {
                        name: self.name.clone(),
                        line: self.line + 1,
                        err: LineError::Read(e),
                    });
                }
            };
            self.line += 1;
            if !blank(self.lines.get(r.clone())) {
                return Ok(Some(r));
            }
        }
    }
}

/// What the reader learns as it goes.
#[derive(Default)]
struct State {
    after_summary: bool,
    skipped: u64,
    first_skip: Option<String>,
}

/// Everything but the canonical event layout: the general fast reader, then the schema's
/// parser; a bad line is skipped (lenient) or an error. A free function over the reader's
/// parts, so the line stays borrowed from the buffer while the state changes.
fn classify<'a>(
    bytes: &'a [u8],
    line: u64,
    st: &mut State,
    mode: Mode,
    name: &Option<String>,
    unterminated: bool,
) -> Result<Item<'a>, LogError> {
    let bad = match std::str::from_utf8(bytes) {
        Err(_) => LineError::NotUtf8,
        Ok(text) => {
            let text = text.strip_suffix('\r').unwrap_or(text);
            if st.after_summary {
                LineError::AfterSummary
            } else if let Some(e) = fast::parse_event(text) {
                return Ok(Item::Event(e));
            } else {
                match Record::parse(text) {
                    Ok(Record::Header(_)) => LineError::SecondHeader,
                    Ok(r) => {
                        st.after_summary = matches!(r, Record::Summary(_));
                        return Ok(Item::Record(r));
                    }
                    Err(e) => LineError::Parse(e),
                }
            }
        }
    };
    let bad = if unterminated && matches!(bad, LineError::NotUtf8 | LineError::Parse(_)) {
        LineError::Truncated(Box::new(bad))
    } else {
        bad
    };
    if (mode == Mode::Lenient && bad.skippable()) || matches!(bad, LineError::Truncated(_)) {
        st.skipped += 1;
        let skip = Skip { line, err: bad };
        if st.first_skip.is_none() {
            st.first_skip = Some(skip.to_string());
        }
        return Ok(Item::Skipped(skip));
    }
    Err(LogError::Line {
        name: name.clone(),
        line,
        err: bad,
    })
}

/// Why a log could not be written. (Causes inline, not as `source`, so that error-chain
/// printing does not repeat them.)
#[derive(Debug, Error)]
pub enum WriteError {
    #[error("writing the event log: {0}")]
    Io(io::Error),
    #[error("encoding a record: {0}")]
    Json(serde_json::Error),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

impl From<serde_json::Error> for WriteError {
    fn from(e: serde_json::Error) -> Self {
        WriteError::Json(e)
    }
}

/// Writes schema-1 lines: one record per line, in the layout [`fast::parse_canonical`] reads
/// fastest. Lines collect in a buffer handed to `out` in large writes ([`LogWriter::flush`]
/// after each batch, or automatically past 64 KiB), so a per-line write costs no syscall.
pub struct LogWriter<W: Write> {
    out: W,
    buf: String,
    /// Bytes handed to `out`.
    written: u64,
    lines: u64,
    events: u64,
    summary: bool,
}

/// Pending bytes above which a write goes through to `out`.
const WRITE_CHUNK: usize = 1 << 16;

impl<W: Write> LogWriter<W> {
    pub fn new(out: W) -> Self {
        LogWriter {
            out,
            buf: String::with_capacity(WRITE_CHUNK * 2),
            written: 0,
            lines: 0,
            events: 0,
            summary: false,
        }
    }

    /// Appends one record (its line).
    pub fn write(&mut self, rec: &Record) -> Result<(), WriteError> {
        match rec {
            Record::Event(e) => return self.write_event(e),
            Record::Summary(_) => self.summary = true,
            _ => {}
        }
        rec.write_line(&mut self.buf)?;
        self.lines += 1;
        self.spill()
    }

    /// Appends one event line (no intermediate `Record`).
    pub fn write_event(&mut self, e: &Event) -> Result<(), WriteError> {
        e.write_json(&mut self.buf);
        self.buf.push('\n');
        self.lines += 1;
        self.events += 1;
        self.spill()
    }

    fn spill(&mut self) -> Result<(), WriteError> {
        if self.buf.len() > WRITE_CHUNK {
            self.flush_buffer()?;
        }
        Ok(())
    }

    /// Hands the buffered lines to `out` (one write), without flushing `out` itself.
    pub fn flush_buffer(&mut self) -> Result<(), WriteError> {
        if !self.buf.is_empty() {
            self.out.write_all(self.buf.as_bytes())?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Hands everything to `out` and flushes it.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.flush_buffer()?;
        self.out.flush()?;
        Ok(())
    }

    /// Bytes written so far, buffered ones included.
    pub fn bytes(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Whether a summary was written (a log is complete with it).
    pub fn summary_written(&self) -> bool {
        self.summary
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = r#"{"kind":"header","schema":1,"tool":"t","kernel":"k","probes":[]}"#;
    const EVENT: &str =
        r#"{"kind":"write_begin","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"a","mm":"m","seq":0}"#;
    const SUMMARY: &str = r#"{"kind":"summary","events":1,"lost":{},"duration_ns":1}"#;

    fn items(text: &str, mode: Mode) -> Result<Vec<(u64, String)>, LogError> {
        let mut r = LogReader::new(text.as_bytes(), Some("x.jsonl".into()), mode)?;
        let mut v = Vec::new();
        while let Some((n, it)) = r.next_item()? {
            v.push((
                n,
                match it {
                    Item::Event(e) => e.body.kind().as_str().to_owned(),
                    Item::Record(r) => r.kind_name().to_owned(),
                    Item::Skipped(s) => format!("skip {s}"),
                },
            ));
        }
        Ok(v)
    }

    #[test]
    fn lines_are_numbered_as_in_the_file() {
        let text = format!("\n{HEADER}\n\n{EVENT}\r\n{{\"kind\":\"new_kind\"}}\n{SUMMARY}\n\n");
        let got = items(&text, Mode::Strict).unwrap();
        assert_eq!(
            got,
            [
                (4, "write_begin".to_owned()),
                (5, "new_kind".to_owned()),
                (6, "summary".to_owned())
            ]
        );
    }

    #[test]
    fn strict_stops_at_the_first_bad_line_and_lenient_counts_it() {
        let text = format!("{HEADER}\n{EVENT}\n{{not json\n{HEADER}\n{SUMMARY}\n{EVENT}\n");
        let e = items(&text, Mode::Strict).unwrap_err();
        assert_eq!(e.line(), Some(3));
        assert!(e.to_string().starts_with("x.jsonl line 3: not JSON"), "{e}");
        let mut r = LogReader::new(text.as_bytes(), None, Mode::Lenient).unwrap();
        let mut kinds = Vec::new();
        while let Some((n, it)) = r.next_item().unwrap() {
            kinds.push((n, matches!(it, Item::Skipped(_))));
        }
        assert_eq!(
            kinds,
            [(2, false), (3, true), (4, true), (5, false), (6, true)]
        );
        assert_eq!(r.skipped(), 3);
        assert!(
            r.skip_note().unwrap().contains("3 malformed lines skipped"),
            "{:?}",
            r.skip_note()
        );
    }

    #[test]
    fn a_log_must_start_with_its_header_in_either_mode() {
        for mode in [Mode::Strict, Mode::Lenient] {
            let e = items(&format!("{EVENT}\n"), mode).unwrap_err();
            assert_eq!(
                e.to_string(),
                "x.jsonl line 1: the first record must be a header with \"schema\":1, not a write_begin record"
            );
            assert!(matches!(
                items("\n\n", mode).unwrap_err(),
                LogError::Empty { .. }
            ));
        }
    }

    #[test]
    fn a_growing_log_is_followed_to_its_summary() {
        // A reader that hands out one piece per read, then says "no more for now".
        struct Pieces(Vec<Vec<u8>>);
        impl Read for Pieces {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let p = self.0.remove(0);
                buf[..p.len()].copy_from_slice(&p);
                Ok(p.len())
            }
        }
        let (a, b) = EVENT.split_at(20);
        let pieces = Pieces(vec![
            format!("{HEADER}\n").into_bytes(),
            a.as_bytes().to_vec(),
            Vec::new(),
            format!("{b}\n{SUMMARY}\n").into_bytes(),
        ]);
        let waits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let w = std::sync::Arc::clone(&waits);
        let mut r = LogReader::with_wait(
            pieces,
            None,
            Mode::Strict,
            Some(Box::new(move || {
                w.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5
            })),
        )
        .unwrap();
        let mut n = 0;
        while let Some((_, it)) = r.next_item().unwrap() {
            assert!(!matches!(it, Item::Skipped(_)));
            n += 1;
        }
        assert_eq!(n, 2, "the split event and the summary");
        assert!(r.summary_seen());
    }

    #[test]
    fn the_writer_counts_and_buffers() {
        let mut w = LogWriter::new(Vec::new());
        for line in [HEADER, EVENT, SUMMARY] {
            w.write(&Record::parse(line).unwrap()).unwrap();
        }
        assert_eq!((w.lines(), w.events(), w.summary_written()), (3, 1, true));
        assert!(w.get_ref().is_empty(), "buffered until flushed");
        w.flush().unwrap();
        let text = String::from_utf8(w.get_ref().clone()).unwrap();
        assert_eq!(w.bytes(), text.len() as u64);
        assert_eq!(text.lines().nth(1), Some(EVENT));
    }
}
