//! `tracer tui`: the live terminal UI, or `--replay` of a recorded log through the same
//! screens.
//!
//! Threads: a consumer owns the record stream (a tokio `Receiver<Record>` from the live
//! session, or the replay reader) and feeds the validator, the [`model::Model`] and the spool
//! (`--record` file); the main thread only draws, at a steady 10 Hz, and reads keys. The model
//! sits behind one mutex that the draw holds for the duration of one frame.
//!
//! Exit status: 0 when the stream showed no violation, 1 when it did, 2 for bad input (an
//! unreadable log, no terminal).
pub mod check;
pub mod live;
pub mod model;
pub mod render;
pub mod source;
pub mod term;
pub mod view;

use std::{
    io::IsTerminal,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ratatui::crossterm::event::{self, Event as TermEvent};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::{
    events::{
        Header, Record,
        log::{Mode, ReadArgs},
    },
    export::Format,
};

use self::{
    check::Checker,
    model::Model,
    render::Status,
    source::{Pacer, SourceError, Spool},
    view::{Action, View},
};

/// Redraw period: 10 Hz whatever the event rate.
const FRAME: Duration = Duration::from_millis(100);
/// Records taken from the stream per lock of the model.
const BATCH: usize = 256;
/// Without a record for this long, the validator's reorder window is flushed.
const IDLE_FLUSH: Duration = Duration::from_millis(250);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Play a recorded schema-1 event log through the screens instead of tracing live.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// Replay speed: 1 plays in real time (paced by the events' ts), 10 ten times faster.
    #[arg(long, value_name = "X", default_value_t = 1.0, requires = "replay", value_parser = crate::cli::speed)]
    pub speed: f64,
    /// Show a log as it is being written, unpaced (like `tail -f`, until its summary); `-`
    /// reads standard input, e.g. `tracer record ... | tracer tui --follow -`.
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    pub follow: Option<PathBuf>,
    /// Also write every record shown to FILE (schema 1) while showing it.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// How --replay and --follow treat malformed lines.
    #[command(flatten)]
    pub read: ReadArgs,
    /// What to trace live (without --replay or --follow).
    #[command(flatten)]
    pub trace: crate::session::TraceArgs,
    /// Test hook: panic after this many ms, to check that the terminal is restored.
    #[arg(long, hide = true)]
    pub panic_after_ms: Option<u64>,
}

#[derive(Debug, Error)]
pub enum TuiError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A strict read stopped at a bad line (shown on the screen first).
    #[error("{0}")]
    Log(String),
    #[error("--speed must be a positive number, got {0}")]
    Speed(f64),
    #[error(
        "tracer tui needs a terminal on stdout (use `tracer record` or `tracer validate` for files)"
    )]
    NotATerminal,
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Options common to live and replay sessions.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Write every record to this file (schema 1) while showing it.
    pub record: Option<PathBuf>,
    /// Shown in the header: "live", "replay x4".
    pub source: String,
    /// Test hook, see [`Args::panic_after_ms`].
    pub panic_after: Option<Duration>,
}

/// State shared between the consumer and the draw loop.
pub struct Shared {
    pub model: Model,
    /// When the newest event arrived: "now" in the log's clock is its ts plus the time since.
    last_rx: Option<Instant>,
    /// The source has ended (no more records will come).
    done: bool,
    checker_status: String,
    note: Option<String>,
    /// Why the source stopped early (a strict read met a bad line): the exit status is 2.
    failed: Option<String>,
    /// A warning arrived since the last key: the messages pane is shown.
    warning: bool,
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic elsewhere ends the TUI anyway; the data is still fine to draw.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let opts = Options {
        record: args.record.clone(),
        source: String::new(),
        panic_after: args.panic_after_ms.map(Duration::from_millis),
    };
    let mode = args.read.mode();
    if let Some(path) = &args.replay {
        return Ok(run_replay(path.clone(), args.speed, mode, opts)?);
    }
    if let Some(path) = &args.follow {
        return Ok(run_follow(path, mode, opts)?);
    }
    live::run(args.trace, opts)
}

/// Follows a log being written (or a pipe) through [`run_live`].
pub fn run_follow(
    path: &std::path::Path,
    mode: Mode,
    mut opts: Options,
) -> Result<ExitCode, TuiError> {
    let quit = Arc::new(AtomicBool::new(false));
    let follow = source::open_follow(path, mode, Arc::clone(&quit))?;
    if !std::io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    let header = follow.header().clone();
    let (tx, rx) = mpsc::channel(4096);
    opts.source = format!("follow {}", path.display());
    let app = App::new(&opts)?;
    source::spawn_follow(follow, tx, Arc::clone(&app.shared));
    let r = app.run(header, Input::Numbered(rx), None, opts, 1.0, None);
    // A reader blocked on a pipe cannot be interrupted; it ends with the process.
    quit.store(true, Ordering::Relaxed);
    r
}

/// Replays `path` at `speed` through the TUI.
pub fn run_replay(
    path: PathBuf,
    speed: f64,
    mode: Mode,
    mut opts: Options,
) -> Result<ExitCode, TuiError> {
    if !(speed.is_finite() && speed > 0.0) {
        return Err(TuiError::Speed(speed));
    }
    let log = source::open_replay(&path, mode)?;
    let header = log.header().clone();
    if !std::io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    opts.source = format!("replay x{speed}");
    let pacer = Arc::new(Pacer::new(speed));
    let (tx, rx) = mpsc::channel(4096);
    let app = App::new(&opts)?;
    let quit = Arc::new(AtomicBool::new(false));
    let reader = source::spawn_replay(
        log,
        tx,
        Arc::clone(&pacer),
        Arc::clone(&quit),
        Arc::clone(&app.shared),
    );
    let r = app.run(header, Input::Numbered(rx), Some(&pacer), opts, speed, None);
    quit.store(true, Ordering::Relaxed);
    let _ = reader.join();
    r
}

/// Shows a live session. `rx` yields the records after `header` (if it repeats the header,
/// the copy is dropped); `Record::Lost` records show as lost events. Blocks until the person
/// quits; call it outside async code (from `spawn_blocking` or a plain thread) so the tokio
/// tasks feeding `rx` keep running.
pub fn run_live(
    rx: mpsc::Receiver<Record>,
    header: Header,
    mut opts: Options,
) -> Result<ExitCode, TuiError> {
    if !std::io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    if opts.source.is_empty() {
        opts.source = "live".into();
    }
    let app = App::new(&opts)?;
    app.run(header, Input::Live(rx), None, opts, 1.0, None)
}

/// Where records come from: a live session's channel (numbered by record, which is the line
/// the spool writes them at), or a log read by the shared reader (numbered by its lines).
enum Input {
    Live(mpsc::Receiver<Record>),
    Numbered(mpsc::Receiver<(u64, Record)>),
}

impl Input {
    /// Waits for records and takes up to `max` of those waiting (0: the source has ended).
    async fn next_many(&mut self, out: &mut Vec<(Option<u64>, Record)>, max: usize) -> usize {
        match self {
            Input::Live(rx) => {
                let mut v = Vec::with_capacity(max);
                let n = rx.recv_many(&mut v, max).await;
                out.extend(v.into_iter().map(|r| (None, r)));
                n
            }
            Input::Numbered(rx) => {
                let mut v = Vec::with_capacity(max);
                let n = rx.recv_many(&mut v, max).await;
                out.extend(v.into_iter().map(|(no, r)| (Some(no), r)));
                n
            }
        }
    }
}

enum Cmd {
    /// Export to this file in this format, keeping these mms (all when `None`).
    Export(PathBuf, Format, Option<std::collections::HashSet<String>>),
    Stop,
    /// The person quit a live trace that is being stopped: keep recording until the source
    /// ends (the recorder stops the workload, drains and sends its summary), so that the
    /// `--record` file is the same complete log `tracer record` would have written.
    Finish,
}

/// How long a quit live trace may take to end before the record is closed without it.
const FINISH_LIMIT: Duration = Duration::from_secs(15);

struct App {
    shared: Arc<Mutex<Shared>>,
    spool: Spool,
}

impl App {
    fn new(opts: &Options) -> Result<App, TuiError> {
        let spool = Spool::create(opts.record.as_deref())?;
        let shared = Arc::new(Mutex::new(Shared {
            model: Model::new(),
            last_rx: None,
            done: false,
            checker_status: String::new(),
            note: None,
            failed: None,
            warning: false,
        }));
        Ok(App { shared, spool })
    }

    /// Shows `input` until the person quits or it ends. `stop`, for a live trace, stops the
    /// trace after a quit; the record then runs on until the trace's own end.
    fn run(
        self,
        header: Header,
        input: Input,
        pacer: Option<&Pacer>,
        opts: Options,
        speed: f64,
        stop: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<ExitCode, TuiError> {
        let App { shared, spool } = self;
        let checker = check::for_header(&header);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let consumer = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || consume(header, input, cmd_rx, shared, checker, spool))
        };
        let result = draw_loop(&shared, &cmd_tx, pacer, &opts, speed);
        match stop {
            Some(stop) => {
                stop();
                let _ = cmd_tx.send(Cmd::Finish);
            }
            None => {
                let _ = cmd_tx.send(Cmd::Stop);
            }
        }
        let _ = consumer.join();
        let s = lock(&shared);
        for m in s
            .model
            .messages
            .iter()
            .filter(|m| m.starts_with("recording"))
        {
            eprintln!("tracer: {m}");
        }
        result?;
        if let Some(f) = &s.failed {
            return Err(TuiError::Log(f.clone()));
        }
        Ok(if s.model.violations > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// Feeds one record to the checker, the model and the spool: the same path for live, replay
/// and the tests.
pub fn feed(model: &mut Model, checker: &mut dyn Checker, line: u64, rec: &Record) {
    let found = checker.push(line, rec);
    model.apply(line, rec);
    model.add_findings(line, rec, found);
}

/// Hands the checker's held-back verdicts to the model: when the stream is idle, or (with
/// `ended`) for good.
pub fn settle(model: &mut Model, checker: &mut dyn Checker, ended: bool) {
    let found = if ended {
        checker.end()
    } else {
        checker.flush()
    };
    let line = model.lines;
    model.add_findings(line, &Record::Unknown(String::new()), found);
}

fn consume(
    header: Header,
    mut input: Input,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    shared: Arc<Mutex<Shared>>,
    mut checker: Box<dyn Checker>,
    mut spool: Spool,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            lock(&shared)
                .model
                .message(format!("cannot start the consumer: {e}"));
            return;
        }
    };
    let header_rec = Record::Header(header);
    {
        let mut s = lock(&shared);
        feed(&mut s.model, checker.as_mut(), 1, &header_rec);
        s.checker_status = checker.status();
    }
    spool.write(&header_rec);
    let mut line = 1u64;
    let mut open = true;
    // Records pushed since the checker was last flushed.
    let mut dirty = false;
    let mut batch = Vec::with_capacity(BATCH);
    let mut finishing: Option<tokio::time::Instant> = None;
    rt.block_on(async {
        loop {
            tokio::select! {
                biased;
                cmd = cmds.recv(), if finishing.is_none() => match cmd {
                    Some(Cmd::Export(path, format, mms)) => {
                        export(&shared, &mut spool, path, format, mms);
                    }
                    Some(Cmd::Finish) if open => {
                        finishing = Some(tokio::time::Instant::now() + FINISH_LIMIT);
                    }
                    Some(Cmd::Finish | Cmd::Stop) | None => break,
                },
                () = async {
                    match finishing {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    lock(&shared).model.message(format!(
                        "the trace did not end within {}s of quitting: the record ends here",
                        FINISH_LIMIT.as_secs()
                    ));
                    break;
                }
                n = input.next_many(&mut batch, BATCH), if open => {
                    if n == 0 {
                        if finishing.is_some() {
                            break;
                        }
                        open = false;
                        let mut s = lock(&shared);
                        settle(&mut s.model, checker.as_mut(), true);
                        s.checker_status = checker.status();
                        s.done = true;
                        drop(s);
                        let _ = spool.flush();
                        continue;
                    }
                    // One lock per batch: the draw waits at most one batch, the consumer at
                    // most the computation of one frame.
                    // A live source may repeat the header it was started with: drop the copy.
                    if line == 1 && batch.first().is_some_and(|(_, r)| *r == header_rec) {
                        batch.remove(0);
                    }
                    let mut s = lock(&shared);
                    for (no, rec) in &batch {
                        line = no.unwrap_or(line + 1);
                        feed(&mut s.model, checker.as_mut(), line, rec);
                        if matches!(rec, Record::Event(_)) {
                            s.last_rx = Some(Instant::now());
                        }
                    }
                    s.checker_status = checker.status();
                    drop(s);
                    for (_, rec) in batch.drain(..) {
                        spool.write(&rec);
                    }
                    dirty = true;
                }
                // A quiet stream: let the validator judge what its reorder window holds.
                () = tokio::time::sleep(IDLE_FLUSH), if open && dirty => {
                    dirty = false;
                    let mut s = lock(&shared);
                    settle(&mut s.model, checker.as_mut(), false);
                    s.checker_status = checker.status();
                }
            }
        }
    });
    let mut s = lock(&shared);
    if !spool.summary_seen() {
        let sum = source::partial_summary(&s.model, "quit before the end of the stream");
        spool.write(&Record::Summary(sum));
    }
    if let Err(e) = spool.flush() {
        spool.broken.get_or_insert(e.to_string());
    }
    if let Some(e) = &spool.broken {
        let m = format!("recording stopped: {e}");
        s.model.message(m);
    }
}

fn export(
    shared: &Arc<Mutex<Shared>>,
    spool: &mut Spool,
    path: PathBuf,
    format: Format,
    mms: Option<std::collections::HashSet<String>>,
) {
    let sum = source::partial_summary(&lock(shared).model, "exported while running");
    match spool.export(path.clone(), sum, format, mms) {
        Ok(job) => {
            let shared = Arc::clone(shared);
            std::thread::spawn(move || {
                let note = match job.join() {
                    Ok(Ok((p, w))) => format!(
                        "wrote {} ({}, {} events)",
                        p.display(),
                        format.name(),
                        w.events
                    ),
                    Ok(Err(e)) => format!("export to {} failed: {e}", path.display()),
                    Err(_) => format!("export to {} failed", path.display()),
                };
                let mut s = lock(&shared);
                s.model.message(note.clone());
                s.note = Some(note);
            });
        }
        Err(e) => {
            let mut s = lock(shared);
            let note = format!("export failed: {e}");
            s.model.message(note.clone());
            s.note = Some(note);
        }
    }
}

fn export_path(format: Format) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ext = format.ext();
    let mut p = PathBuf::from(format!("tracer-tui-{secs}.{ext}"));
    let mut n = 1;
    while p.exists() {
        n += 1;
        p = PathBuf::from(format!("tracer-tui-{secs}-{n}.{ext}"));
    }
    p
}

/// "Now" in the log's ts clock: the newest event's ts plus the (speed-scaled) time since it
/// arrived, frozen once the source has ended.
fn now_ns(s: &Shared, speed: f64) -> u64 {
    let since = match (s.last_rx, s.done) {
        (Some(t), false) => (t.elapsed().as_secs_f64() * speed * 1e9) as u64,
        _ => 0,
    };
    s.model.last_ts.saturating_add(since)
}

/// Watches standard input for a hang-up (the window closed, the tmux server killed, an ssh
/// link dropped). A hung-up tty reads as endless EOF, and crossterm's reader spins on EOF
/// forever inside `event::poll`, so the watchdog swaps an empty non-blocking pipe in as fd 0:
/// the reader then sees "would block" and returns, and the draw loop, seeing `hung_up`, leaves
/// through the normal quit path (which still closes the record).
struct HangupWatch {
    hung_up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HangupWatch {
    fn start() -> HangupWatch {
        let hung_up = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (hung_up, stop) = (Arc::clone(&hung_up), Arc::clone(&stop));
            std::thread::spawn(move || {
                // Only a terminal on fd 0 is watched: with `--follow -` fd 0 is the log pipe,
                // whose end is not a reason to close the screen.
                // SAFETY: isatty only inspects the descriptor.
                if unsafe { libc::isatty(0) } != 1 {
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    let mut fds = libc::pollfd {
                        fd: 0,
                        events: 0,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; POLLHUP/POLLERR are reported without asking.
                    let n = unsafe { libc::poll(&mut fds, 1, 100) };
                    if n > 0 && fds.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
                    {
                        let mut p = [0i32; 2];
                        // SAFETY: pipe2 fills `p`; dup2 replaces fd 0, which only this process's
                        // terminal reader uses. The write end stays open (leaked) so the pipe
                        // never reads as EOF.
                        unsafe {
                            if libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) == 0
                            {
                                libc::dup2(p[0], 0);
                                libc::close(p[0]);
                            }
                        }
                        hung_up.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            })
        };
        HangupWatch {
            hung_up,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HangupWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn draw_loop(
    shared: &Arc<Mutex<Shared>>,
    cmds: &mpsc::UnboundedSender<Cmd>,
    pacer: Option<&Pacer>,
    opts: &Options,
    speed: f64,
) -> Result<(), TuiError> {
    let mut session = term::Session::enter(term::message_sink(Arc::clone(shared)))?;
    let started = Instant::now();
    let mut view = View::default();
    let mut cpu = term::CpuMeter::new();
    // While paused the screen shows this frozen copy; the stream keeps flowing underneath.
    let mut frozen: Option<(Model, u64)> = None;
    let recording = opts.record.as_ref().map(|p| p.display().to_string());
    let mut next_frame = Instant::now();
    let mut offscreen = ratatui::buffer::Buffer::empty(ratatui::layout::Rect::default());
    let hangup = HangupWatch::start();
    loop {
        if session.signalled.load(Ordering::Relaxed) || hangup.hung_up.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some(after) = opts.panic_after
            && started.elapsed() >= after
        {
            panic!("test panic requested with --panic-after-ms");
        }
        cpu.sample();
        // The frame is computed under the lock but written to the terminal after it: a slow
        // terminal (a serial console) must not hold up the consumer.
        let size = session.terminal.size()?;
        let area = ratatui::layout::Rect::new(0, 0, size.width, size.height);
        if offscreen.area != area {
            offscreen = ratatui::buffer::Buffer::empty(area);
        } else {
            offscreen.reset();
        }
        {
            let s = lock(shared);
            let live_now = now_ns(&s, speed);
            let mut source = opts.source.clone();
            if s.done {
                source.push_str(" done");
            }
            let (model, now_ns) = match &frozen {
                Some((m, now)) => (m, *now),
                None => (&s.model, live_now),
            };
            let status = Status {
                now_ns,
                cpu_pct: cpu.pct,
                source,
                recording: recording.clone(),
                checker: s.checker_status.clone(),
                note: s.note.clone(),
                paused: view.paused,
                warning: s.warning,
                new_while_paused: frozen
                    .as_ref()
                    .map_or(0, |(m, _)| s.model.events - m.events),
            };
            render::draw_into(&mut offscreen, area, model, &view, &status);
        }
        session.terminal.draw(|f| {
            let b = f.buffer_mut();
            // Equal unless the terminal was resized in between; the next frame catches up.
            if b.area == offscreen.area {
                b.content.clone_from(&offscreen.content);
            }
        })?;
        next_frame += FRAME;
        let now = Instant::now();
        if next_frame < now {
            next_frame = now;
        }
        // Keys until the next frame is due.
        while let Some(left) = next_frame.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            if hangup.hung_up.load(Ordering::Relaxed) {
                return Ok(());
            }
            let TermEvent::Key(key) = event::read()? else {
                continue;
            };
            let mut s = lock(shared);
            // The person is at the keyboard: the warning has had its chance to be seen.
            s.warning = false;
            let action = {
                let model = frozen.as_ref().map_or(&s.model, |(m, _)| m);
                view.on_key(key, model)
            };
            match action {
                Action::None => {}
                Action::Quit => return Ok(()),
                Action::Pause => {
                    if let Some(p) = pacer {
                        p.set_paused(view.paused);
                        // The replay clock stood still: so does "now" in the log's time.
                        if !view.paused && s.last_rx.is_some() {
                            s.last_rx = Some(Instant::now());
                        }
                    }
                    frozen = if view.paused {
                        Some((s.model.clone(), now_ns(&s, speed)))
                    } else {
                        None
                    };
                }
                Action::Export(format) => {
                    let p = export_path(format);
                    let mms = {
                        let model = frozen.as_ref().map_or(&s.model, |(m, _)| m);
                        view.shown_mms(model)
                    };
                    s.note = Some(format!("writing {}…", p.display()));
                    let _ = cmds.send(Cmd::Export(p, format, mms));
                }
            }
            drop(s);
            // Show the effect of a key at once rather than at the next tick.
            break;
        }
    }
}
