//! `tracer tui --replay` in a real terminal: tmux runs it at a fixed 80x24, the test sends keys
//! and reads the pane as a person would see it, and checks that every way out (q, SIGTERM, a
//! panic) gives the terminal back in cooked mode with the alternate screen left.
//!
//! Needs `tmux` on PATH (the project's setup installs it); each test uses its own tmux server.
// Tests may unwrap: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod corpus;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tui")
        .join(name)
}

/// One tmux server running one shell command in an 80x24 window, in its own directory.
struct Tmux {
    socket: String,
    dir: PathBuf,
}

static N: AtomicU32 = AtomicU32::new(0);

impl Tmux {
    /// Runs `tracer <args>`, then prints its exit status and the terminal modes, then waits.
    fn start(args: &str) -> Tmux {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let socket = format!("tracer-tui-test-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&socket);
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "export RUST_BACKTRACE=0; {TRACER} {args}; echo \"tui exited $?\"; stty -a | tr ' ;' '\\n\\n' | grep -x -e '-*icanon' -e '-*echo'; echo checked; sleep 120"
        );
        let out = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "24",
            ])
            .arg("-c")
            .arg(&dir)
            .args(["sh", "-c", &script])
            .output()
            .expect("tmux is needed for this test (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmux { socket, dir }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys"];
        a.extend_from_slice(keys);
        self.tmux(&a);
    }

    /// Waits (up to 15 s) until the pane shows `what`, and returns the pane.
    fn wait_for(&self, what: &str) -> String {
        self.wait_for_all(&[what])
    }

    /// Waits (up to 15 s) until one capture of the pane shows every one of `what` (the TUI
    /// draws the header and the panes in one frame, but a capture can land between frames),
    /// and returns that capture.
    fn wait_for_all(&self, what: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.screen();
            if what.iter().all(|w| s.contains(w)) {
                // A capture can land while tmux applies half a frame: take the screen once
                // two captures agree (a screen that keeps changing is taken as it is).
                std::thread::sleep(Duration::from_millis(50));
                let again = self.screen();
                if again == s || Instant::now() >= deadline {
                    return s;
                }
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "never saw all of {what:?}; the pane shows:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tracer process: the child of the pane's shell.
    fn tracer_pid(&self) -> u32 {
        let sh: u32 = self
            .tmux(&["display", "-p", "#{pane_pid}"])
            .trim()
            .parse()
            .unwrap();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let ppid: u32 = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
            if ppid == sh && stat.contains("(tracer)") {
                return e.file_name().to_string_lossy().parse().unwrap();
            }
        }
        panic!("no tracer process under the pane's shell {sh}");
    }

    /// After the TUI ended: the exit status it printed, and the terminal is back to normal.
    fn assert_restored(&self, status: i32) -> String {
        let s = self.wait_for("checked");
        assert!(s.contains(&format!("tui exited {status}")), "{s}");
        // Cooked mode again (raw mode clears both), and the alternate screen is gone: none of
        // the TUI's frame is left on the normal screen.
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        assert!(
            lines.contains(&"icanon") && lines.contains(&"echo"),
            "terminal left raw:\n{s}"
        );
        assert!(!s.contains("p pause"), "TUI still on screen:\n{s}");
        s
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn records(p: &Path) -> Vec<tracer::events::Record> {
    read(p)
        .lines()
        .map(|l| tracer::events::Record::parse(l).unwrap())
        .collect()
}

/// Both files hold the same records, line for line (the writer may order a header's keys
/// differently from the file it read).
fn assert_same_records(got: &Path, want: &Path) {
    let (got, want) = (read(got), read(want));
    let parse = |t: &str| -> Vec<tracer::events::Record> {
        t.lines()
            .map(|l| tracer::events::Record::parse(l).unwrap())
            .collect()
    };
    let (g, w) = (parse(&got), parse(&want));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert_eq!(a, b, "line {}", i + 1);
    }
    assert_eq!(g.len(), w.len());
}

#[test]
fn replay_keys_export_and_quit() {
    let log = data("clean.jsonl");
    let t = Tmux::start(&format!("tui --replay {} --speed 20", log.display()));
    let s = t.wait_for("replay x20 done");
    // What a person sees: the kernel, a table row with the counters, the keys.
    assert!(
        s.contains("code ok · kernel 6.12.117+deb12-cloud-amd64 · instruction"),
        "{s}"
    );
    assert!(
        s.lines().any(|l| l.contains("stress")
            && l.split_whitespace().collect::<Vec<_>>()[1..9]
                == ["4100", "mm1", "192", "even", "21", "84", "30", "6"]),
        "{s}"
    );
    assert!(s.contains("events 642"), "{s}");
    assert!(
        s.contains(
            "q quit p pause / filter s sort tab pane ↑↓/jk move enter focus ? help e export"
        ),
        "{s}"
    );

    t.keys(&["?"]);
    let s = t.wait_for("attach plan: instruction");
    assert!(s.contains("read_begin   gup_fast_fallback+0x9c"), "{s}");
    t.keys(&["x"]);

    t.keys(&["/", "f", "i", "o", "Enter"]);
    let s = t.wait_for("filter fio");
    assert!(s.contains("mms 1"), "{s}");
    assert!(!s.contains("stress   4100"), "{s}");

    // `e` asks for a format and exports what is shown: the fio mm only.
    t.keys(&["e"]);
    t.wait_for("export the shown mms as:");
    t.keys(&["j"]);
    let s = t.wait_for("wrote tracer-tui-");
    let name = s
        .split("wrote ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    let fio_mms: std::collections::HashSet<String> = records(&log)
        .iter()
        .filter_map(|r| match r {
            tracer::events::Record::Event(e) if e.comm.contains("fio") => Some(e.mm.clone()),
            _ => None,
        })
        .collect();
    assert!(!fio_mms.is_empty());
    let want: Vec<tracer::events::Record> = records(&log)
        .into_iter()
        .filter(|r| match r {
            tracer::events::Record::Event(e) => fio_mms.contains(&e.mm),
            _ => true,
        })
        .collect();
    // The log ended with its own summary: the export is its header, fio's events and the rest.
    assert_eq!(records(&t.dir.join(name)), want);
    // The other formats, from the same prompt.
    t.keys(&["e", "c"]);
    let s = t.wait_for(".csv (csv,");
    let csv = s
        .split("wrote ")
        .find_map(|r| r.split_whitespace().next().filter(|n| n.ends_with(".csv")))
        .unwrap();
    let rows = read(&t.dir.join(csv)).lines().count();
    let events = want
        .iter()
        .filter(|r| matches!(r, tracer::events::Record::Event(_)))
        .count();
    assert_eq!(rows, events + 1, "a header row and one row per shown event");
    t.keys(&["e", "p"]);
    let s = t.wait_for(".json (perfetto,");
    let json = s
        .split("wrote ")
        .find_map(|r| r.split_whitespace().next().filter(|n| n.ends_with(".json")))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&read(&t.dir.join(json))).unwrap();
    assert!(v["traceEvents"].as_array().is_some_and(|a| !a.is_empty()));
    // Any other key cancels the prompt.
    t.keys(&["e", "x"]);

    t.keys(&["q"]);
    t.assert_restored(0);
}

#[test]
fn violations_exit_1_and_record() {
    let t = Tmux::start(&format!(
        "tui --replay {} --speed 50 --record rec.jsonl",
        data("violations.jsonl").display()
    ));
    let s = t.wait_for("replay x50 done");
    assert!(s.contains("violations 3"), "{s}");
    assert!(s.contains("REC rec.jsonl"), "{s}");
    t.keys(&["Tab", "Tab"]);
    let s = t.wait_for("[violations 3]");
    assert!(s.contains("odd_not_bailed line 45,46 mm1"), "{s}");
    t.keys(&["q"]);
    t.assert_restored(1);
    assert_same_records(&t.dir.join("rec.jsonl"), &data("violations.jsonl"));
}

#[test]
fn sigterm_mid_replay_restores_and_closes_the_record() {
    // At speed 1 the 2.4 s log is still playing when the signal comes.
    let t = Tmux::start(&format!(
        "tui --replay {} --record part.jsonl",
        data("clean.jsonl").display()
    ));
    t.wait_for("replay x1");
    std::thread::sleep(Duration::from_millis(500));
    let pid = t.tracer_pid();
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    t.assert_restored(0);
    let rec = read(&t.dir.join("part.jsonl"));
    let lines: Vec<&str> = rec.lines().collect();
    assert!(lines[0].starts_with("{\"kind\":\"header\""), "{}", lines[0]);
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("{\"kind\":\"summary\"") && last.contains("\"partial\":true"),
        "{last}"
    );
    assert!(
        lines.len() < 644,
        "the whole log was recorded; the signal came too late"
    );
}

#[test]
fn panic_restores_terminal_and_shows_the_message() {
    let t = Tmux::start(&format!(
        "tui --replay {} --panic-after-ms 800",
        data("lost.jsonl").display()
    ));
    t.wait_for("lost");
    let s = t.assert_restored(101);
    assert!(s.contains("test panic requested"), "{s}");
}

#[test]
fn bad_input_is_one_sentence_and_status_2() {
    let out = Command::new(TRACER)
        .args(["tui", "--replay", "/nonexistent/log.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("tracer: cannot open /nonexistent/log.jsonl"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let dir = std::env::temp_dir().join(format!("tracer-tui-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_header = dir.join("events-first.jsonl");
    let clean = read(&data("clean.jsonl"));
    std::fs::write(
        &not_header,
        clean.lines().skip(1).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let out = Command::new(TRACER)
        .args(["tui", "--replay"])
        .arg(&not_header)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "line 1: the first record must be a header with \"schema\":1, not a gup_enter record"
        ),
        "{err}"
    );

    // Not a terminal: refused before touching anything.
    let out = Command::new(TRACER)
        .args(["tui", "--replay"])
        .arg(data("clean.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"));

    let out = Command::new(TRACER)
        .args(["tui", "--replay"])
        .arg(data("clean.jsonl"))
        .args(["--speed", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `events N` count in the header.
fn events_shown(screen: &str) -> u64 {
    screen
        .split("events ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn pause_stops_the_replay_clock() {
    let t = Tmux::start(&format!("tui --replay {}", data("clean.jsonl").display()));
    t.wait_for("replay x1");
    std::thread::sleep(Duration::from_millis(400));
    t.keys(&["p"]);
    t.wait_for("PAUSED");
    // An event already due when the key came may still land: read after it had time to.
    std::thread::sleep(Duration::from_millis(300));
    let before = t.screen();
    let n = events_shown(&before);
    assert!(n < 642, "the replay ended before the pause: {before}");
    let new = |s: &str| {
        s.split("PAUSED (+")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .map(str::to_owned)
    };
    std::thread::sleep(Duration::from_millis(1500));
    let after = t.screen();
    assert_eq!(events_shown(&after), n, "{after}");
    // The replay itself stopped, not only the screen: nothing new arrived underneath.
    assert_eq!(new(&after), new(&before), "{before}\n{after}");
    t.keys(&["p"]);
    let s = t.wait_for("replay x1 done");
    assert_eq!(events_shown(&s), 642, "{s}");
    t.keys(&["q"]);
    t.assert_restored(0);
}

#[test]
fn follow_a_pipe_through_the_live_path() {
    let t = Tmux::start(&format!(
        "tui --follow - < {}",
        data("violations.jsonl").display()
    ));
    let s = t.wait_for("follow - done");
    assert!(s.contains("events 140"), "{s}");
    assert!(s.contains("violations 3"), "{s}");
    t.keys(&["q"]);
    t.assert_restored(1);
}

#[test]
fn follow_a_growing_file_like_tail_f() {
    use std::io::Write;
    let log = read(&data("clean.jsonl"));
    let lines: Vec<&str> = log.lines().collect();
    // The file must exist (with its header) before tracer opens it.
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tracer-tui-grow-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("grow.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{}", lines[..301].join("\n")).unwrap();
    f.flush().unwrap();
    let t = Tmux::start(&format!("tui --follow {}", path.display()));
    let s = t.wait_for("events 300 ");
    assert!(s.contains(&format!("follow {}", path.display())), "{s}");
    assert!(!s.contains("done"), "{s}");
    // The rest, with one line split across two writes: the reader waits for its end.
    let rest = lines[301..].join("\n") + "\n";
    let (a, b) = rest.split_at(rest.len() / 2);
    f.write_all(a.as_bytes()).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    f.write_all(b.as_bytes()).unwrap();
    f.flush().unwrap();
    let s = t.wait_for("done");
    assert!(s.contains("events 642"), "{s}");
    assert!(s.contains("messages 0"), "a line was misread: {s}");
    t.keys(&["q"]);
    t.assert_restored(0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_hung_up_terminal_ends_the_tui() {
    // Closing the window (here: killing the tmux server) hangs up the TUI's terminal. It must
    // exit, not spin reading EOF from the dead tty.
    let t = Tmux::start(&format!(
        "tui --replay {} --speed 0.01",
        data("clean.jsonl").display()
    ));
    t.wait_for("q quit");
    let pid = t.tracer_pid();
    t.tmux(&["kill-server"]);
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let gone = |p: &Path| {
        // A zombie has exited too; only its parent has not reaped it yet.
        std::fs::read_to_string(p.join("stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    let t0 = Instant::now();
    while !gone(&proc_dir) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gone(&proc_dir),
        "tracer tui (pid {pid}) still runs after its terminal hung up"
    );
}

/// The malformed logs of `log_layer.rs`, through replay and follow: strict, the screen says
/// which line stopped the read and the exit status is 2 with that sentence; lenient, the line
/// is skipped, listed and counted in the header, and the rest is shown.
#[test]
fn replay_and_follow_treat_bad_lines_as_every_reader_does() {
    // A short directory, so the file and line fit the 80-column messages pane.
    let dir = PathBuf::from(format!("/tmp/trc{}", std::process::id()));
    for (case, log) in corpus::write_all(&dir) {
        if !["not-json", "second-header", "after-summary"].contains(&case.name) {
            continue;
        }
        for source in ["--replay", "--follow"] {
            let speed = if source == "--replay" {
                "--speed 50"
            } else {
                ""
            };
            let where_ = format!("{} line {}:", log.display(), case.line);
            let t = Tmux::start(&format!("tui {source} {} {speed}", log.display()));
            // The header names the line; the messages pane gives the whole sentence.
            let s = t.wait_for_all(&[&where_, case.says]);
            assert!(s.contains(case.says), "{} {source}:\n{s}", case.name);
            t.keys(&["q"]);
            let s = t.assert_restored(2);
            assert!(
                s.contains(&format!("tracer: {where_} {}", case.says)),
                "{} {source}:\n{s}",
                case.name
            );

            let t = Tmux::start(&format!("tui {source} {} {speed} --lenient", log.display()));
            let s = t.wait_for(" done");
            assert!(s.contains("skipped 1"), "{} {source}:\n{s}", case.name);
            assert!(
                s.contains("events 642"),
                "{} {source}: the rest is shown:\n{s}",
                case.name
            );
            t.keys(&["Tab", "Tab", "Tab"]);
            let s = t.wait_for("[messages");
            assert!(s.contains(&where_), "{} {source}:\n{s}", case.name);
            t.keys(&["q"]);
            t.assert_restored(0);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
