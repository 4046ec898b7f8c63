//! The live TUI inside a VM, driven like a person would: `cargo xtask run` in a tmux terminal,
//! reading the screen, pressing `q`, and reading what is left.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

struct Tmux {
    socket: String,
}

impl Tmux {
    fn tmux(&self, args: &[&str]) -> Result<String> {
        cmd::output(Command::new("tmux").args(["-L", &self.socket]).args(args))
    }

    fn screen(&self) -> Result<String> {
        self.tmux(&["capture-pane", "-p", "-t", "live"])
    }

    /// Polls the screen until `pred` holds or `limit` passes; returns the last screen.
    fn wait_for(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Result<(bool, String)> {
        let t0 = Instant::now();
        loop {
            let s = self.screen()?;
            if pred(&s) {
                return Ok((true, s));
            }
            if t0.elapsed() > limit {
                return Ok((false, s));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// Runs `xtask run --kernel SPEC` in a 120x36 tmux window and checks the live TUI shows real
/// events from the VM's kernel, then quits it with `q` and checks the verdict that follows.
pub fn tui_in_vm(xtask: &Path, workspace: &Path, spec: &str, release: &str) -> Result<()> {
    let t = Tmux {
        socket: format!("tracer-xtask-live-{}", std::process::id()),
    };
    let script = format!(
        "cd '{}' && '{}' run --kernel {spec}; echo \"run exited $?\"; sleep 600",
        workspace.display(),
        xtask.display()
    );
    t.tmux(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "live",
        "-x",
        "120",
        "-y",
        "36",
        "sh",
        "-c",
        &script,
    ])
    .context("starting tmux (installed by setup)")?;
    // The TUI's header names the kernel, its footer lists the keys, and the mm table gets a
    // row for the workload (comm `tracer`) once it forks and pins. (The lines `cargo xtask run`
    // prints before the VM boots must not match: they too name the kernel and the q key.)
    let header = format!("kernel {release}");
    let (ok, screen) = t.wait_for(Duration::from_secs(300), |s| {
        s.contains(&header)
            && s.contains("q quit p pause")
            && s.contains("forks")
            && s.lines().any(|l| l.contains("tracer") && l.contains("mm1"))
    })?;
    println!("live: the TUI in the VM showed:\n{screen}");
    if !ok {
        bail!(
            "the live TUI in the {release} VM did not show the kernel, the workload and the keys"
        );
    }
    // Let events accumulate, then check the counts moved.
    std::thread::sleep(Duration::from_secs(5));
    let later = t.screen()?;
    if later == screen {
        bail!("the live TUI's screen did not change in 5 s:\n{later}");
    }
    t.tmux(&["send-keys", "-t", "live", "q"])?;
    let (ok, end) = t.wait_for(Duration::from_secs(120), |s| s.contains("run exited"))?;
    println!("live: after q:\n{end}");
    if !ok {
        bail!("`q` did not end the live TUI and power the VM off within 120 s");
    }
    // After the TUI, the guest validates the log it recorded; `run` exits 0 only when that
    // verdict is clean.
    if !end.contains("run exited 0") {
        bail!(
            "`cargo xtask run` did not exit 0 after the live session (the verdict on its log is above)"
        );
    }
    Ok(())
}
