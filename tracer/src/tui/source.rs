//! Where records come from (a replayed log, paced by `ts`) and where they go besides the
//! screen (the `--record` file, or a private spool that `e` exports).
use std::{
    collections::HashSet,
    fs::File,
    io::{self, BufWriter, Read},
    os::unix::fs::FileExt,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::{
    events::{
        Event, Record, Summary,
        log::{self, Item, LogError, LogReader, LogWriter, Mode},
    },
    export::{self, ExportError, Format, Written},
};

use super::model::Model;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

/// A log to replay or follow, opened and its header read by the shared reader.
pub type Opened = LogReader<Box<dyn Read + Send>>;

/// Opens a log to replay (strict or lenient, as every reader of logs).
pub fn open_replay(path: &Path, mode: Mode) -> Result<Opened, SourceError> {
    Ok(log::open(path, mode)?)
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

/// Hands the reader's items to `send` until the end, a strict error or `send` refusing
/// (quit). Skipped lines (lenient) go to the messages pane and the skip count; a strict error
/// stops the source, is shown, and makes the session exit with status 2.
fn pump_items(
    mut log: Opened,
    model: &Mutex<super::Shared>,
    mut send: impl FnMut(u64, Record) -> bool,
) {
    let name = log.name().unwrap_or("log").to_owned();
    loop {
        let (no, item) = match log.next_item() {
            Ok(Some((no, item))) => (no, item),
            Ok(None) => return,
            Err(e) => {
                let mut s = model.lock().unwrap_or_else(|p| p.into_inner());
                let m = e.to_string();
                s.model
                    .message(format!("{m}; reading stopped (--lenient skips bad lines)"));
                s.note = Some(format!("stopped: {m}"));
                s.failed = Some(m);
                // Brought into view like a warning: the reason must be seen.
                s.warning = true;
                return;
            }
        };
        if let Item::Skipped(skip) = &item {
            let mut s = model.lock().unwrap_or_else(|p| p.into_inner());
            s.model.skipped += 1;
            s.model.message(format!("{name} {skip}"));
            continue;
        }
        if let Some(rec) = item.into_record()
            && !send(no, rec)
        {
            return;
        }
    }
}

/// Reads the rest of a log on its own thread and sends `(line number, record)` when each is
/// due.
pub fn spawn_replay(
    log: Opened,
    tx: tokio::sync::mpsc::Sender<(u64, Record)>,
    pacer: Arc<Pacer>,
    quit: Arc<AtomicBool>,
    model: Arc<Mutex<super::Shared>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut first_ts = None;
        pump_items(log, &model, |no, rec| {
            if let Record::Event(e) = &rec {
                let first = *first_ts.get_or_insert(e.ts);
                loop {
                    if quit.load(Ordering::Relaxed) {
                        return false;
                    }
                    match pacer.wait_for(e.ts.saturating_sub(first)) {
                        Some(d) if d.is_zero() => break,
                        // Sleep in short steps so pause and quit take effect promptly.
                        Some(d) => std::thread::sleep(d.min(Duration::from_millis(50))),
                        None => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
            tx.blocking_send((no, rec)).is_ok()
        });
    })
}

/// Opens `path` (`-` for standard input) to follow: a regular file is read like `tail -f`
/// (at its end, wait for more) until the log's summary; a pipe until it ends.
pub fn open_follow(path: &Path, mode: Mode, quit: Arc<AtomicBool>) -> Result<Opened, SourceError> {
    if path == Path::new("-") {
        return Ok(log::open(path, mode)?);
    }
    let name = path.display().to_string();
    let f = File::open(path).map_err(|err| LogError::Open {
        name: name.clone(),
        err,
    })?;
    let wait: Option<Box<dyn FnMut() -> bool + Send>> = if f.metadata().is_ok_and(|m| m.is_file()) {
        Some(Box::new(move || {
            std::thread::sleep(Duration::from_millis(100));
            !quit.load(Ordering::Relaxed)
        }))
    } else {
        None
    };
    Ok(LogReader::with_wait(
        Box::new(f) as Box<dyn Read + Send>,
        Some(name),
        mode,
        wait,
    )?)
}

/// Sends the records of a followed log as they are written, unpaced, until its summary (and
/// then what the file already holds after it, judged as every reader does), the end of a
/// pipe, or `quit`.
pub fn spawn_follow(
    log: Opened,
    tx: tokio::sync::mpsc::Sender<(u64, Record)>,
    model: Arc<Mutex<super::Shared>>,
) {
    std::thread::spawn(move || {
        pump_items(log, &model, |no, rec| tx.blocking_send((no, rec)).is_ok());
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

/// Every record seen, as schema-1 lines (through the shared writer): the `--record` file, or an
/// unlinked temporary file that exports read back.
pub struct Spool {
    w: LogWriter<File>,
    /// A second handle to read back from (exports).
    read: File,
    /// Set after a write error: the spool stops, the screen goes on.
    pub broken: Option<String>,
}

impl Spool {
    pub fn create(path: Option<&Path>) -> Result<Spool, SourceError> {
        let (file, shown) = match path {
            Some(p) => (crate::outfile::create(p, true), p.to_path_buf()),
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
            w: LogWriter::new(file),
            read,
            broken: None,
        })
    }

    pub fn write(&mut self, rec: &Record) {
        if self.broken.is_some() {
            return;
        }
        if let Err(e) = self.w.write(rec) {
            self.broken = Some(e.to_string());
        }
    }

    /// Whether the stream's own summary has been written.
    pub fn summary_seen(&self) -> bool {
        self.w.summary_written()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush().map_err(io::Error::other)
    }

    /// A second reading handle on the spool and the length written so far (flushed first).
    pub fn snapshot(&mut self) -> io::Result<(File, u64)> {
        self.flush()?;
        Ok((self.read.try_clone()?, self.w.bytes()))
    }

    /// Exports what has been written so far, plus `summary` unless the stream had its own,
    /// to `dest` (which must not exist) as `format`, keeping the events of `mms` only when
    /// given (what the screen shows). Runs on its own thread so the consumer never waits for
    /// it; the spool is read back through the shared log reader, as any log.
    pub fn export(
        &mut self,
        dest: PathBuf,
        summary: Summary,
        format: Format,
        mms: Option<HashSet<String>>,
    ) -> io::Result<std::thread::JoinHandle<Result<(PathBuf, Written), ExportError>>> {
        let (src, len) = self.snapshot()?;
        let mut tail = String::new();
        if !self.summary_seen() {
            Record::Summary(summary)
                .write_line(&mut tail)
                .map_err(io::Error::other)?;
        }
        Ok(std::thread::spawn(move || {
            let out = File::options()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o600)
                .open(&dest)
                .and_then(|f| crate::outfile::secure(&f).map(|()| f))
                .map_err(|err| ExportError::Create {
                    path: dest.clone(),
                    err,
                })?;
            let input = ReadAt {
                f: src,
                off: 0,
                end: len,
            }
            .chain(io::Cursor::new(tail.into_bytes()));
            let mut log = LogReader::new(input, Some("the TUI's records".into()), Mode::Strict)?;
            let keep = |e: &Event| mms.as_ref().is_none_or(|m| m.contains(&e.mm));
            let w = export::export(
                &mut log,
                format,
                &keep,
                BufWriter::new(out),
                crate::validate::Options::default(),
            )?;
            Ok((dest, w))
        }))
    }
}

/// Reads `f` from `off` to `end` with positioned reads: the spool's reading handle shares its
/// file offset with the writing one, which must not move.
struct ReadAt {
    f: File,
    off: u64,
    end: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.off)).unwrap_or(usize::MAX);
        let want = left.min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.f.read_at(&mut buf[..want], self.off)?;
        self.off += n as u64;
        Ok(n)
    }
}
