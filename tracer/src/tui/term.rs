//! The terminal and the process around it: raw mode and the alternate screen, restored on
//! every exit path (normal return, signal, panic); stderr captured into the messages pane so
//! nothing writes over the screen; our own CPU use.
use std::{
    io::{self, BufRead, BufReader},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    time::Instant,
};

use ratatui::{
    DefaultTerminal, Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor::Show,
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
};

/// The real stderr while it is redirected (-1 otherwise), for the panic hook.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

/// Gives fd 2 back (idempotent).
pub fn restore_stderr() {
    let fd = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is the duplicate of the original stderr made in `Session::enter`, still
        // open (only this function, which runs once per swap, closes it).
        unsafe {
            libc::dup2(fd, 2);
            libc::close(fd);
        }
    }
}

/// Whether raw mode and the alternate screen are on: restoring twice would leave the
/// alternate screen twice, and terminals then jump the cursor back over what was printed.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

fn enter_terminal() -> io::Result<DefaultTerminal> {
    TERMINAL_TAKEN.store(true, Ordering::SeqCst);
    enable_raw_mode()?;
    execute!(io::stdout(), EnterAlternateScreen)?;
    Terminal::new(CrosstermBackend::new(io::stdout()))
}

fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        // Nothing useful can be done if this fails: the process is on its way out.
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    }
}

/// Points fd 2 at a pipe whose lines go to `messages`, until [`restore_stderr`]. Does nothing
/// if stderr is already captured (the live session captures it before the workload starts).
pub fn capture_stderr(messages: impl Fn(String) + Send + 'static) -> io::Result<()> {
    if SAVED_STDERR.load(Ordering::SeqCst) >= 0 {
        return Ok(());
    }
    let (reader, writer) = io::pipe()?;
    // SAFETY: dup of fd 2, which is open for the life of the process.
    let saved = unsafe { libc::dup(2) };
    if saved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are open; dup2 atomically points fd 2 at the pipe.
    if unsafe { libc::dup2(writer.as_raw_fd(), 2) } < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: `saved` came from dup above and is not used elsewhere.
        drop(unsafe { OwnedFd::from_raw_fd(saved) });
        return Err(e);
    }
    drop(writer);
    SAVED_STDERR.store(saved, Ordering::SeqCst);
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            match line {
                Ok(l) => messages(l),
                Err(_) => break,
            }
        }
    });
    Ok(())
}

/// Everything that must be undone when the TUI ends.
pub struct Session {
    pub terminal: DefaultTerminal,
    pub signalled: Arc<AtomicBool>,
    sig_ids: Vec<signal_hook::SigId>,
}

impl Session {
    /// Redirects stderr into `messages` (one line at a time), installs the signal flags and
    /// the panic hook, then enters raw mode and the alternate screen.
    pub fn enter(messages: impl Fn(String) + Send + 'static) -> io::Result<Session> {
        // `log` records (the eBPF programs' diagnostics among them) are written to stderr by
        // the logger `main` installs, so they land in the messages pane too.
        capture_stderr(messages)?;

        let signalled = Arc::new(AtomicBool::new(false));
        let mut sig_ids = Vec::new();
        for sig in [
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ] {
            match signal_hook::flag::register(sig, Arc::clone(&signalled)) {
                Ok(id) => sig_ids.push(id),
                Err(e) => {
                    restore_stderr();
                    return Err(e);
                }
            }
        }

        // Restore first, then let the previous hook print the panic on the normal screen.
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            restore_stderr();
            prev(info);
        }));
        let terminal = match enter_terminal() {
            Ok(t) => t,
            Err(e) => {
                restore_terminal();
                restore_stderr();
                return Err(e);
            }
        };
        Ok(Session {
            terminal,
            signalled,
            sig_ids,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        restore_terminal();
        restore_stderr();
        for id in self.sig_ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// CPU time of this process (all threads), sampled once a second.
pub struct CpuMeter {
    last_wall: Instant,
    last_cpu: f64,
    pub pct: Option<f64>,
}

fn cpu_seconds() -> Option<f64> {
    crate::session::self_usage().map(|(cpu, _)| cpu)
}

impl CpuMeter {
    pub fn new() -> CpuMeter {
        CpuMeter {
            last_wall: Instant::now(),
            last_cpu: cpu_seconds().unwrap_or(0.0),
            pct: None,
        }
    }

    pub fn sample(&mut self) {
        let wall = self.last_wall.elapsed().as_secs_f64();
        if wall < 1.0 {
            return;
        }
        if let Some(cpu) = cpu_seconds() {
            self.pct = Some((cpu - self.last_cpu) / wall * 100.0);
            self.last_cpu = cpu;
        }
        self.last_wall = Instant::now();
    }
}

impl Default for CpuMeter {
    fn default() -> CpuMeter {
        CpuMeter::new()
    }
}

/// Shared sink for the stderr reader thread. A warning or an error (the logger's lines, e.g.
/// the eBPF programs' diagnostics) also raises the flag that brings the messages pane into
/// view until the next key, so it is seen even where the layout hides that pane.
pub fn message_sink(shared: Arc<Mutex<super::Shared>>) -> impl Fn(String) + Send + 'static {
    move |line| {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        if line.starts_with("tracer: warn") || line.starts_with("tracer: error") {
            s.warning = true;
        }
        s.model.message(line);
    }
}
