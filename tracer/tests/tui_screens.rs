//! Every screen and state of `tracer tui`, drawn through ratatui's `TestBackend` from the
//! recorded logs in `tests/data/tui/` and compared with insta snapshots; plus the numbers the
//! table must show for those logs, checked against what each log was written to contain.
// Tests may unwrap: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use ratatui::{
    Terminal,
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    style::Color,
};
use tracer::{
    events::Record,
    tui::{
        self, check,
        model::Model,
        render::{self, Status},
        view::{Action, Pane, View},
    },
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tui")
        .join(name)
}

/// Feeds the first `limit` lines of a log through the same path the TUI uses (validator,
/// then model), and settles the validator when the whole log was read.
fn load(name: &str, limit: Option<usize>) -> (Model, String) {
    let text = std::fs::read_to_string(data(name)).unwrap();
    let mut model = Model::new();
    let mut checker = None;
    let lines: Vec<&str> = text.lines().collect();
    let n = limit.unwrap_or(lines.len());
    for (i, l) in lines.iter().take(n).enumerate() {
        let rec = Record::parse(l).unwrap();
        if let Record::Header(h) = &rec {
            checker = Some(check::for_header(h));
        }
        let c = checker.as_mut().unwrap();
        tui::feed(&mut model, c.as_mut(), i as u64 + 1, &rec);
    }
    let c = checker.as_mut().unwrap();
    tui::settle(&mut model, c.as_mut(), n == lines.len());
    let status = c.status();
    (model, status)
}

fn status(model: &Model, checker: String) -> Status {
    Status {
        now_ns: model.last_ts,
        cpu_pct: Some(1.5),
        source: "replay x1 done".into(),
        recording: None,
        checker,
        note: None,
        paused: false,
        new_while_paused: 0,
        warning: false,
    }
}

fn draw(model: &Model, view: &View, st: &Status, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render::draw(f, model, view, st)).unwrap();
    t
}

fn key(view: &mut View, model: &Model, code: KeyCode) -> Action {
    view.on_key(KeyEvent::new(code, KeyModifiers::NONE), model)
}

fn screen(t: &Terminal<TestBackend>) -> String {
    let buf = t.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn clean_small() {
    let (m, c) = load("clean.jsonl", None);
    let t = draw(&m, &View::default(), &status(&m, c), 80, 24);
    insta::assert_snapshot!(t.backend());
}

/// A tracepoint-mode log recorded on this project's 6.18 machine (no kprobes): the header
/// names the reduced mode, the columns it cannot see are greyed with `-`, the pins column
/// counts pinning syscalls, and the GUP-fast pane says it sees nothing.
#[test]
fn tracepoint_mode_greys_what_it_cannot_see() {
    let (m, c) = load("tracepoint.jsonl", None);
    let t = draw(&m, &View::default(), &status(&m, c), 120, 36);
    let text = screen(&t);
    assert!(text.contains("tracepoint mode: reduced view"), "{text}");
    assert!(text.contains("psys"), "{text}");
    assert!(text.contains("not seen in this mode"), "{text}");
    // The workload's row: forks and write sections counted, GUP-fast columns unseen.
    let row = text
        .lines()
        .find(|l| l.contains("tracer ") && l.contains(" - "))
        .unwrap_or_else(|| panic!("no tracer row with greyed columns: {text}"));
    assert!(row.matches(" - ").count() >= 3, "{row}");
    insta::assert_snapshot!(t.backend());
}

#[test]
fn clean_large() {
    let (m, c) = load("clean.jsonl", None);
    let t = draw(&m, &View::default(), &status(&m, c), 160, 48);
    insta::assert_snapshot!(t.backend());
}

#[test]
fn clean_counts() {
    let (m, c) = load("clean.jsonl", None);
    let mm1 = m.mm("mm1").unwrap();
    // gen.py: 30 rounds; stress forks in 9 plain rounds (6 VMAs, 4 anon COW) and in 12 racing
    // rounds (4 anon COW VMAs each); 6 of the racing pins bail on odd, 6 fail their retry.
    assert_eq!((mm1.comm.as_str(), mm1.pid), ("stress", 4100));
    assert_eq!(mm1.forks, 21);
    assert_eq!(mm1.cow_copied, 84);
    assert_eq!(mm1.bails, 6);
    assert_eq!(mm1.retry_fails, 6);
    assert_eq!(mm1.pin_calls, 30);
    assert_eq!(mm1.slow_path, 0);
    assert!(!mm1.is_odd());
    let fio = m.mm("mm7").unwrap();
    assert_eq!((fio.pin_calls, fio.slow_path, fio.forks), (15, 5, 0));
    let bash = m.mm("mm3").unwrap();
    assert_eq!((bash.forks, bash.cow_copied, bash.pin_calls), (4, 8, 0));
    assert_eq!(m.violations, 0);
    assert!(c.starts_with("verdict clean"), "{c}");
    assert_eq!(m.write_sections.count, 92);
}

#[test]
fn mid_write_section_shows_odd() {
    // Stop right after the first write_begin of the stress process: its window is open.
    let text = std::fs::read_to_string(data("clean.jsonl")).unwrap();
    let n = text
        .lines()
        .position(|l| l.contains("\"write_begin\"") && l.contains("\"mm1\""))
        .unwrap()
        + 1;
    let (m, c) = load("clean.jsonl", Some(n));
    assert!(m.mm("mm1").unwrap().is_odd());
    let mut st = status(&m, c);
    st.source = "replay x1".into();
    let t = draw(&m, &View::default(), &st, 80, 24);
    insta::assert_snapshot!(t.backend());
}

#[test]
fn violations_pane() {
    let (m, c) = load("violations.jsonl", None);
    // Findings that lost events could explain are held a while for a `lost` line (copy_delta
    // is not one of them), so the order found is not the order in the log.
    let mut rules: Vec<&str> = m.findings.iter().map(|f| f.rule.as_str()).collect();
    rules.sort_unstable();
    assert_eq!(rules, ["copy_delta", "odd_not_bailed", "retry_ignored"]);
    assert_eq!(m.mm("mm1").unwrap().violations, 3);
    assert!(c.starts_with("verdict violations"), "{c}");
    let mut v = View::default();
    key(&mut v, &m, KeyCode::Tab);
    key(&mut v, &m, KeyCode::Tab);
    assert_eq!(v.pane, Pane::Violations);
    key(&mut v, &m, KeyCode::Char('j'));
    let t = draw(&m, &v, &status(&m, c.clone()), 80, 24);
    insta::assert_snapshot!("violations_small", t.backend());
    let t = draw(&m, &v, &status(&m, c), 160, 48);
    insta::assert_snapshot!("violations_large", t.backend());
    // The violation count in the header is red.
    let buf = t.backend().buffer();
    let text = screen(&t);
    let row = text.lines().nth(1).unwrap();
    let col = row.find("violations 3").unwrap();
    let x = row[..col].chars().count() as u16;
    assert_eq!(buf[(x, 1)].fg, Color::Red);
}

#[test]
fn lost_events_in_red() {
    let (m, c) = load("lost.jsonl", None);
    // Per probe, the larger of the lost lines' sum and the summary's count.
    assert_eq!(m.total_lost(), 310 + 37 + 12);
    assert!(c.starts_with("verdict inconclusive"), "{c}");
    let t = draw(&m, &View::default(), &status(&m, c), 80, 24);
    insta::assert_snapshot!(t.backend());
    let text = screen(&t);
    let row = text.lines().nth(1).unwrap();
    assert!(row.contains("lost 359"), "{row}");
    let x = row[..row.find("lost 359").unwrap()].chars().count() as u16;
    assert_eq!(t.backend().buffer()[(x, 1)].fg, Color::Red);
}

#[test]
fn no_lost_is_not_red() {
    let (m, c) = load("clean.jsonl", None);
    let t = draw(&m, &View::default(), &status(&m, c), 80, 24);
    let text = screen(&t);
    let row = text.lines().nth(1).unwrap();
    let x = row[..row.find("lost 0").unwrap()].chars().count() as u16;
    assert_ne!(t.backend().buffer()[(x, 1)].fg, Color::Red);
}

#[test]
fn help_overlay_lists_keys_and_plan() {
    let (m, c) = load("clean.jsonl", None);
    let mut v = View::default();
    key(&mut v, &m, KeyCode::Char('?'));
    let t = draw(&m, &v, &status(&m, c), 80, 24);
    insta::assert_snapshot!(t.backend());
    // Any other key closes it.
    key(&mut v, &m, KeyCode::Char('x'));
    assert!(!v.help);
}

#[test]
fn filter_typing_then_applied() {
    let (m, c) = load("clean.jsonl", None);
    let mut v = View::default();
    key(&mut v, &m, KeyCode::Char('/'));
    for ch in "fio".chars() {
        key(&mut v, &m, KeyCode::Char(ch));
    }
    let t = draw(&m, &v, &status(&m, c.clone()), 80, 24);
    insta::assert_snapshot!("filter_typing", t.backend());
    key(&mut v, &m, KeyCode::Enter);
    assert_eq!(v.filter.as_deref(), Some("fio"));
    let t = draw(&m, &v, &status(&m, c.clone()), 80, 24);
    insta::assert_snapshot!("filter_applied", t.backend());
    // A pid filters too.
    key(&mut v, &m, KeyCode::Char('/'));
    for _ in 0..3 {
        key(&mut v, &m, KeyCode::Backspace);
    }
    for ch in "880".chars() {
        key(&mut v, &m, KeyCode::Char(ch));
    }
    key(&mut v, &m, KeyCode::Enter);
    let rows = v.rows(&m);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].comm, "bash");
}

#[test]
fn sort_and_focus() {
    let (m, c) = load("clean.jsonl", None);
    let mut v = View::default();
    // first seen → pid → comm → events
    for _ in 0..3 {
        key(&mut v, &m, KeyCode::Char('s'));
    }
    assert_eq!(v.sort.name(), "events");
    let order: Vec<&str> = v.rows(&m).iter().map(|r| r.mm.as_str()).collect();
    assert_eq!(order, ["mm1", "mm7", "mm3"]);
    key(&mut v, &m, KeyCode::Down);
    key(&mut v, &m, KeyCode::Enter);
    assert_eq!(v.focus.as_deref(), Some("mm7"));
    let t = draw(&m, &v, &status(&m, c), 80, 24);
    insta::assert_snapshot!(t.backend());
    let text = screen(&t);
    // The tail shows only the focused mm.
    let tail: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("[events]"))
        .skip(1)
        .take_while(|l| !l.starts_with('└'))
        .collect();
    assert!(tail.len() >= 4, "{text}");
    assert!(
        tail.iter().all(|l| l.contains("fio[5230] mm7")),
        "{tail:#?}"
    );
    key(&mut v, &m, KeyCode::Enter);
    assert_eq!(v.focus, None);
}

#[test]
fn paused_recording_and_messages() {
    let (mut m, c) = load("clean.jsonl", Some(200));
    m.message("clean.jsonl line 201: not JSON: expected value at line 1 column 1; skipped");
    let mut v = View::default();
    assert_eq!(key(&mut v, &m, KeyCode::Char('p')), Action::Pause);
    assert!(v.paused);
    for _ in 0..3 {
        key(&mut v, &m, KeyCode::Tab);
    }
    assert_eq!(v.pane, Pane::Messages);
    let mut st = status(&m, c);
    st.source = "live".into();
    st.recording = Some("run.jsonl".into());
    st.paused = true;
    st.new_while_paused = 42;
    st.note = Some("wrote tracer-tui-1.jsonl".into());
    let t = draw(&m, &v, &st, 80, 24);
    insta::assert_snapshot!(t.backend());
}

#[test]
fn tail_scrolls_back() {
    let (m, c) = load("violations.jsonl", None);
    let mut v = View::default();
    key(&mut v, &m, KeyCode::Tab);
    for _ in 0..5 {
        key(&mut v, &m, KeyCode::Char('k'));
    }
    assert_eq!(v.tail_back, 5);
    let t = draw(&m, &v, &status(&m, c), 80, 24);
    insta::assert_snapshot!(t.backend());
}

#[test]
fn keys_quit_export_and_ctrl_c() {
    let (m, _) = load("violations.jsonl", Some(10));
    let mut v = View::default();
    // `e` asks for the format (the footer shows the prompt); its key exports, others cancel.
    assert_eq!(key(&mut v, &m, KeyCode::Char('e')), Action::None);
    assert!(v.exporting);
    let t = draw(&m, &v, &status(&m, String::new()), 80, 24);
    let footer: String = (0..80)
        .map(|x| t.backend().buffer()[(x, 23)].symbol().to_owned())
        .collect();
    assert!(
        footer.contains("export everything as: p perfetto c csv j jsonl"),
        "{footer}"
    );
    assert_eq!(
        key(&mut v, &m, KeyCode::Char('c')),
        Action::Export(tracer::export::Format::Csv)
    );
    assert!(!v.exporting);
    assert_eq!(key(&mut v, &m, KeyCode::Char('e')), Action::None);
    assert_eq!(
        key(&mut v, &m, KeyCode::Char('q')),
        Action::None,
        "q cancels the prompt"
    );
    assert_eq!(key(&mut v, &m, KeyCode::Char('q')), Action::Quit);
    assert_eq!(
        v.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), &m),
        Action::Quit
    );
    // While typing a filter, q is text, not quit.
    key(&mut v, &m, KeyCode::Char('/'));
    assert_eq!(key(&mut v, &m, KeyCode::Char('q')), Action::None);
    assert_eq!(v.typing.as_deref(), Some("q"));
    key(&mut v, &m, KeyCode::Esc);
    assert_eq!((v.typing.as_deref(), v.filter.as_deref()), (None, None));
}

#[test]
fn footer_fits_80_columns() {
    let (m, c) = load("clean.jsonl", None);
    let t = draw(&m, &View::default(), &status(&m, c), 80, 24);
    let text = screen(&t);
    let footer = text.lines().last().unwrap();
    for (k, what) in render::FOOTER {
        assert!(
            footer.contains(&format!("{k} {what}")),
            "{k} {what} missing: {footer}"
        );
    }
}

/// A defect discovery proved in the traced kernel's code leads the header, in red, even on an
/// 80-column screen; the validator pane counts it as a violation.
#[test]
fn a_defect_in_the_code_heads_the_screen() {
    let text = std::fs::read_to_string(data("clean.jsonl")).unwrap();
    let mut lines = text.lines();
    let mut h: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    h["discovery"]["sides"]["read"] = serde_json::json!("odd_check_missing");
    h["discovery"]["functions"][1]["status"] = serde_json::json!("defect");
    h["discovery"]["functions"][1]["defects"] = serde_json::json!([
        {"defect": "odd_check_missing", "why": "never tested for oddness", "evidence": []}
    ]);
    let mut model = Model::new();
    let header = Record::parse(&h.to_string()).unwrap();
    let Record::Header(hd) = &header else {
        panic!()
    };
    let mut c = check::for_header(hd);
    tui::feed(&mut model, c.as_mut(), 1, &header);
    for (i, l) in lines.enumerate() {
        tui::feed(
            &mut model,
            c.as_mut(),
            i as u64 + 2,
            &Record::parse(l).unwrap(),
        );
    }
    tui::settle(&mut model, c.as_mut(), true);
    let st = status(&model, c.status());
    let t = draw(&model, &View::default(), &st, 80, 24);
    let first = screen(&t).lines().next().unwrap().to_owned();
    assert!(
        first.starts_with("tracer · DEFECT odd_check_missing"),
        "{first}"
    );
    let buf = t.backend().buffer();
    // "tracer · " is 9 cells (the dot is one), before DEFECT.
    assert_eq!(buf[(9, 0)].fg, Color::Red);
    assert!(
        st.checker.starts_with("verdict violations"),
        "{}",
        st.checker
    );
}
