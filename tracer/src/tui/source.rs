//! Where records come from (a replayed log, paced by `ts`) and where they go besides the
//! screen (the `--record` file, or a private spool that `e` exports).
use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::events::{Header, Record, Summary, schema::ParseError};

use super::model::Model;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is empty, expected a schema-1 event log")]
    Empty { path: PathBuf },
    #[error("{path} line 1 is not a valid header: {source}")]
    BadHeader { path: PathBuf, source: ParseError },
    #[error("{path} line 1 is a {kind} record, but a schema-1 log starts with its header")]
    NotHeader { path: PathBuf, kind: String },
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

/// Opens a log and reads its header; the remaining lines are for [`spawn_replay`].
pub fn open_replay(path: &Path) -> Result<(Header, io::Lines<BufReader<File>>), SourceError> {
    let file = File::open(path).map_err(|source| SourceError::Open {
        path: path.into(),
        source,
    })?;
    let mut lines = BufReader::new(file).lines();
    let first = lines
        .next()
        .ok_or_else(|| SourceError::Empty { path: path.into() })?
        .map_err(|source| SourceError::Read {
            path: path.into(),
            source,
        })?;
    match Record::parse(&first) {
        Ok(Record::Header(h)) => Ok((h, lines)),
        Ok(other) => Err(SourceError::NotHeader {
            path: path.into(),
            kind: kind_name(&other),
        }),
        Err(source) => Err(SourceError::BadHeader {
            path: path.into(),
            source,
        }),
    }
}

fn kind_name(r: &Record) -> String {
    match r {
        Record::Header(_) => "header".into(),
        Record::Event(e) => e.body.kind().as_str().into(),
        Record::Lost { .. } => "lost".into(),
        Record::Summary(_) => "summary".into(),
        Record::Unknown(k) => k.clone(),
    }
}

/// The replay clock: maps a record's `ts` to the wall time it is due, stopping while paused.
pub struct Pacer {
    speed: f64,
    inner: Mutex<PacerState>,
}

struct PacerState {
    start: Instant,
    /// Time spent paused so far.
    paused_total: Duration,
    paused_at: Option<Instant>,
}

impl Pacer {
    pub fn new(speed: f64) -> Pacer {
        Pacer {
            speed,
            inner: Mutex::new(PacerState {
                start: Instant::now(),
                paused_total: Duration::ZERO,
                paused_at: None,
            }),
        }
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    pub fn set_paused(&self, paused: bool) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match (paused, s.paused_at) {
            (true, None) => s.paused_at = Some(Instant::now()),
            (false, Some(at)) => {
                s.paused_total += at.elapsed();
                s.paused_at = None;
            }
            _ => {}
        }
    }

    /// How long until a record `offset_ns` after the first is due (None while paused).
    fn wait_for(&self, offset_ns: u64) -> Option<Duration> {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.paused_at.is_some() {
            return None;
        }
        let due = Duration::from_secs_f64(offset_ns as f64 / 1e9 / self.speed);
        let played = s.start.elapsed().saturating_sub(s.paused_total);
        Some(due.saturating_sub(played))
    }
}

/// Reads the rest of a log on its own thread and sends `(line number, record)` when each is
/// due. Lines that do not parse are reported through `model` messages and skipped.
pub fn spawn_replay(
    path: PathBuf,
    lines: io::Lines<BufReader<File>>,
    tx: tokio::sync::mpsc::Sender<(u64, Record)>,
    pacer: Arc<Pacer>,
    quit: Arc<AtomicBool>,
    model: Arc<Mutex<super::Shared>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut first_ts = None;
        let note = |m: String| {
            let mut s = model.lock().unwrap_or_else(|p| p.into_inner());
            s.model.message(m);
        };
        for (i, line) in lines.enumerate() {
            // The header was line 1.
            let no = i as u64 + 2;
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    note(format!(
                        "{}: read error at line {no}: {e}; replay stopped",
                        path.display()
                    ));
                    return;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let rec = match Record::parse(&line) {
                Ok(r) => r,
                Err(e) => {
                    note(format!("{} line {no}: {e}; skipped", path.display()));
                    continue;
                }
            };
            if let Record::Event(e) = &rec {
                let first = *first_ts.get_or_insert(e.ts);
                loop {
                    if quit.load(Ordering::Relaxed) {
                        return;
                    }
                    match pacer.wait_for(e.ts.saturating_sub(first)) {
                        Some(d) if d.is_zero() => break,
                        // Sleep in short steps so pause and quit take effect promptly.
                        Some(d) => std::thread::sleep(d.min(Duration::from_millis(50))),
                        None => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
            if tx.blocking_send((no, rec)).is_err() {
                return;
            }
        }
    })
}

/// A log being written (or a pipe): its header, and a reader positioned after it.
pub struct Follow {
    pub header: Header,
    reader: Box<dyn BufRead + Send>,
    /// A regular file grows: at its end, wait for more (like `tail -f`) until the summary.
    grows: bool,
    name: String,
}

/// Opens `path` (`-` for standard input) to follow, reading its header first.
pub fn open_follow(path: &Path) -> Result<Follow, SourceError> {
    let (mut reader, grows): (Box<dyn BufRead + Send>, bool) = if path == Path::new("-") {
        (Box::new(BufReader::new(io::stdin())), false)
    } else {
        let f = File::open(path).map_err(|source| SourceError::Open {
            path: path.into(),
            source,
        })?;
        let grows = f.metadata().is_ok_and(|m| m.is_file());
        (Box::new(BufReader::new(f)), grows)
    };
    let mut first = String::new();
    let n = reader
        .read_line(&mut first)
        .map_err(|source| SourceError::Read {
            path: path.into(),
            source,
        })?;
    if n == 0 {
        return Err(SourceError::Empty { path: path.into() });
    }
    match Record::parse(first.trim_end()) {
        Ok(Record::Header(header)) => Ok(Follow {
            header,
            reader,
            grows,
            name: path.display().to_string(),
        }),
        Ok(other) => Err(SourceError::NotHeader {
            path: path.into(),
            kind: kind_name(&other),
        }),
        Err(source) => Err(SourceError::BadHeader {
            path: path.into(),
            source,
        }),
    }
}

/// Sends the records of a followed log as they are written, unpaced, until its summary, the
/// end of a pipe, or `quit`. Lines that do not parse are reported and skipped.
pub fn spawn_follow(
    mut f: Follow,
    tx: tokio::sync::mpsc::Sender<Record>,
    quit: Arc<AtomicBool>,
    model: Arc<Mutex<super::Shared>>,
) {
    std::thread::spawn(move || {
        let mut buf = String::new();
        let mut no = 1u64;
        loop {
            if quit.load(Ordering::Relaxed) {
                return;
            }
            match f.reader.read_line(&mut buf) {
                Ok(0) if f.grows && !buf.ends_with('\n') => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Ok(0) if buf.is_empty() => return,
                // A regular file's last line may still be half written.
                Ok(_) if f.grows && !buf.ends_with('\n') => continue,
                Ok(_) => {}
                Err(e) => {
                    let mut s = model.lock().unwrap_or_else(|p| p.into_inner());
                    s.model
                        .message(format!("{}: read error after line {no}: {e}", f.name));
                    return;
                }
            }
            no += 1;
            let line = std::mem::take(&mut buf);
            if line.trim().is_empty() {
                continue;
            }
            match Record::parse(line.trim_end()) {
                Ok(rec) => {
                    let last = matches!(rec, Record::Summary(_));
                    if tx.blocking_send(rec).is_err() || last {
                        return;
                    }
                }
                Err(e) => {
                    let mut s = model.lock().unwrap_or_else(|p| p.into_inner());
                    s.model
                        .message(format!("{} line {no}: {e}; skipped", f.name));
                }
            }
        }
    });
}

/// A summary for a log cut short (export while running, or quit before the source's own
/// summary): counts as seen so far, marked partial.
pub fn partial_summary(m: &Model, why: &str) -> Summary {
    let mut s = Summary {
        events: m.events,
        lost: m.lost.clone(),
        duration_ns: m.first_ts.map_or(0, |f| m.last_ts.saturating_sub(f)),
        extra: Default::default(),
    };
    s.extra
        .insert("partial".into(), serde_json::Value::Bool(true));
    s.extra
        .insert("writer".into(), format!("tracer tui ({why})").into());
    s
}

/// Every record seen, as schema-1 lines: the `--record` file, or an unlinked temporary file.
pub struct Spool {
    out: BufWriter<File>,
    /// A second handle to read back from (exports).
    read: File,
    /// Bytes written so far.
    len: u64,
    pub summary_seen: bool,
    /// Set after a write error: the spool stops, the screen goes on.
    pub broken: Option<String>,
    line: String,
}

impl Spool {
    pub fn create(path: Option<&Path>) -> Result<Spool, SourceError> {
        let (file, shown) = match path {
            Some(p) => (
                File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(p),
                p.to_path_buf(),
            ),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let p = std::env::temp_dir()
                    .join(format!("tracer-tui-{}-{nanos}.jsonl", std::process::id()));
                let f = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&p);
                // The open handle is all we need; unlinking now leaves nothing behind on exit.
                if f.is_ok() {
                    let _ = std::fs::remove_file(&p);
                }
                (f, p)
            }
        };
        let file = file.map_err(|source| SourceError::Create {
            path: shown.clone(),
            source,
        })?;
        let read = file.try_clone().map_err(|source| SourceError::Create {
            path: shown,
            source,
        })?;
        Ok(Spool {
            out: BufWriter::new(file),
            read,
            len: 0,
            summary_seen: false,
            broken: None,
            line: String::new(),
        })
    }

    pub fn write(&mut self, rec: &Record) {
        if self.broken.is_some() {
            return;
        }
        if matches!(rec, Record::Summary(_)) {
            self.summary_seen = true;
        }
        self.line.clear();
        let r = rec
            .write_line(&mut self.line)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                self.out
                    .write_all(self.line.as_bytes())
                    .map_err(|e| e.to_string())
            });
        match r {
            Ok(()) => self.len += self.line.len() as u64,
            Err(e) => self.broken = Some(e),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Copies what has been written so far, plus `summary` unless the stream had its own, to
    /// `dest`. Runs on its own thread so the consumer never waits for the copy.
    pub fn export(
        &mut self,
        dest: PathBuf,
        summary: Summary,
    ) -> io::Result<std::thread::JoinHandle<io::Result<PathBuf>>> {
        self.flush()?;
        let src = self.read.try_clone()?;
        let len = self.len;
        let add_summary = !self.summary_seen;
        Ok(std::thread::spawn(move || {
            let mut out = BufWriter::new(File::options().write(true).create_new(true).open(&dest)?);
            let mut buf = vec![0u8; 1 << 16];
            let mut off = 0u64;
            while off < len {
                let want = usize::try_from(len - off).map_or(buf.len(), |n| n.min(buf.len()));
                let n = src.read_at(&mut buf[..want], off)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                off += n as u64;
            }
            if add_summary {
                let mut s = String::new();
                Record::Summary(summary)
                    .write_line(&mut s)
                    .map_err(io::Error::other)?;
                out.write_all(s.as_bytes())?;
            }
            out.flush()?;
            Ok(dest)
        }))
    }
}
