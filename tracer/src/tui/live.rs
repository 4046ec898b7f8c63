//! `tracer tui` on the running kernel: a consumer of the tracing
//! [`session`](crate::session), whose loop feeds the screens through a channel. Quitting
//! cancels the session through the handle both share.
use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use tokio::sync::mpsc;

use crate::{
    events::Record,
    session::{self, Cancel, Sink, TraceArgs, pump},
};

/// Hands the pump's records to the TUI. `send` waits when the channel is full, so a TUI that
/// falls behind makes the ring buffer fill, and the kernel counts (and reports) the losses.
struct ChannelSink {
    tx: mpsc::Sender<Record>,
    /// Something (the header) reached the TUI: from then on errors go to its messages pane.
    started: Arc<AtomicBool>,
    /// The TUI has quit; the pump runs on until it sees the cancel, so it stops the workload
    /// too.
    gone: bool,
}

impl Sink for ChannelSink {
    async fn put(&mut self, rec: Record) -> Result<()> {
        if !self.gone {
            if self.tx.send(rec).await.is_err() {
                self.gone = true;
            } else {
                self.started.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Attaches the probes, runs the optional workload, and shows the events until the person
/// quits (or the workload/duration ends the trace: the screen then stays, marked done).
pub fn run(trace: TraceArgs, opts: super::Options) -> Result<ExitCode> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(super::TuiError::NotATerminal.into());
    }
    let plan = session::plan(&trace)?;
    let cancel = Cancel::new();
    let pump_cancel = cancel.clone();
    // Everything written to stderr from here on, the workload's output included (it inherits
    // fd 2 when the pump starts it), goes to the messages pane rather than over the screen.
    let app = super::App::new(&opts)?;
    super::term::capture_stderr(super::term::message_sink(std::sync::Arc::clone(
        &app.shared,
    )))
    .context("capturing stderr")?;
    let (tx, mut rx) = mpsc::channel(1 << 16);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let started = Arc::new(AtomicBool::new(false));
    let sink_started = Arc::clone(&started);
    std::thread::spawn(move || {
        let r = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| {
                rt.block_on(async {
                    let mut sink = ChannelSink {
                        tx,
                        started: sink_started,
                        gone: false,
                    };
                    // The workload's stdout goes to stderr, which the TUI shows as messages.
                    pump(&plan, &trace, false, true, &mut sink, &pump_cancel)
                        .await
                        .map(|_| ())
                })
            });
        if let Err(e) = &r
            && started.load(Ordering::Relaxed)
        {
            // During the TUI, stderr is the messages pane; after it, the terminal.
            eprintln!("tracer: tracing stopped: {e:#}");
        }
        let _ = done_tx.send(r);
    });
    // The header comes once the probes are attached; an attach error ends the pump instead.
    let header = match rx.blocking_recv() {
        Some(Record::Header(h)) => h,
        _ => {
            super::term::restore_stderr();
            return Err(match done_rx.recv() {
                Ok(Err(e)) => e,
                _ => anyhow!("the tracing session ended before it sent its header"),
            });
        }
    };
    let mut opts = opts;
    if opts.source.is_empty() {
        opts.source = "live".into();
    }
    // Quitting cancels the session through the handle it shares with the pump: the pump
    // stops the workload, detaches, drains and sends its summary, all of which still reaches
    // the `--record` file. A trace that ends on its own needs no cancel; one more is harmless.
    let stop = Box::new(move || cancel.cancel());
    let shown = app.run(header, super::Input::Live(rx), None, opts, 1.0, Some(stop));
    let _ = done_rx.recv_timeout(Duration::from_secs(3));
    Ok(shown?)
}
