//! Drawing: one pure function from (model, view, status) to a frame, so the snapshot tests
//! draw exactly what a person sees.
use ratatui::{
    Frame,
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{
        Block, Cell, Clear, Paragraph, Row, Sparkline, StatefulWidget, Table, TableState, Widget,
        Wrap,
    },
};

use crate::{
    events::{Event, text::EventText},
    kernel::foll::FollFlags,
};

use super::{
    model::{HIST_BUCKETS, HIST_SHIFT, Hist, Model},
    view::{Pane, View},
};

/// What the runtime knows that the records do not.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// "Now" in the log's `ts` clock (ns).
    pub now_ns: u64,
    /// This process's CPU use over the last redraw period, in percent of one CPU.
    pub cpu_pct: Option<f64>,
    /// "live", "replay x4", "replay x4 · done" ...
    pub source: String,
    /// The `--record` file, if any.
    pub recording: Option<String>,
    /// The checker's one-line state.
    pub checker: String,
    /// The latest note for the person (export written, errors).
    pub note: Option<String>,
    /// The screen is frozen (`p`).
    pub paused: bool,
    /// Events that arrived since the pause (the paused screen is a frozen copy).
    pub new_while_paused: u64,
    /// A warning arrived since the last key: a narrow screen shows the messages pane.
    pub warning: bool,
}

/// The footer: every key and what it does.
pub const FOOTER: [(&str, &str); 9] = [
    ("q", "quit"),
    ("p", "pause"),
    ("/", "filter"),
    ("s", "sort"),
    ("tab", "pane"),
    ("↑↓/jk", "move"),
    ("enter", "focus"),
    ("?", "help"),
    ("e", "export"),
];

const DIM: Style = Style::new().fg(Color::DarkGray);

/// Where widgets are drawn: a frame's buffer, or an off-screen one (so the model's lock is
/// held while computing a frame, never while writing it to a slow terminal).
pub struct Canvas<'b> {
    buf: &'b mut Buffer,
    area: Rect,
}

impl Canvas<'_> {
    fn render_widget<W: Widget>(&mut self, w: W, area: Rect) {
        w.render(area, self.buf);
    }

    fn render_stateful_widget<W: StatefulWidget>(
        &mut self,
        w: W,
        area: Rect,
        state: &mut W::State,
    ) {
        w.render(area, self.buf, state);
    }
}

/// Draws everything into `f`.
pub fn draw(f: &mut Frame, model: &Model, view: &View, st: &Status) {
    let area = f.area();
    draw_into(f.buffer_mut(), area, model, view, st);
}

/// Draws everything into `buf`, which covers `area`.
pub fn draw_into(buf: &mut Buffer, area: Rect, model: &Model, view: &View, st: &Status) {
    let f = &mut Canvas { buf, area };
    let area = f.area;
    let wide = area.width >= 120 && area.height >= 40;
    let chart_h = if area.height >= 40 { 8 } else { 6 };
    let table_h = if wide {
        (model.mms().count() as u16 + 3).clamp(6, area.height / 3)
    } else {
        7
    };
    let [header, table, charts, bottom, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(table_h),
        Constraint::Length(chart_h),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);

    draw_header(f, header, model, st);
    draw_table(f, table, model, view);
    draw_charts(f, charts, model, st);
    if wide {
        let [top, msgs] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(6)]).areas(bottom);
        let [tail, viol] =
            Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(top);
        draw_tail(f, tail, model, view, " events ".into());
        draw_violations(f, viol, model, view, st, None);
        draw_messages(f, msgs, model, view, " messages ".into());
    } else {
        // One pane at a time below the charts: the focused one, or (while the table has the
        // focus) the tail, or the messages when a warning came in since the last key. The
        // title names all three, the shown one in brackets.
        let shown = match view.pane {
            Pane::Table if st.warning => Pane::Messages,
            Pane::Table => Pane::Tail,
            p => p,
        };
        let tab = |p: Pane, name: String| {
            if p == shown {
                format!("[{name}]")
            } else {
                name
            }
        };
        let title = format!(
            " {} {} {} ",
            tab(Pane::Tail, "events".into()),
            tab(Pane::Violations, format!("violations {}", model.violations)),
            tab(Pane::Messages, format!("messages {}", model.messages.len())),
        );
        match shown {
            Pane::Violations => draw_violations(f, bottom, model, view, st, Some(title)),
            Pane::Messages => draw_messages(f, bottom, model, view, title),
            _ => draw_tail(f, bottom, model, view, title),
        }
    }
    draw_footer(f, footer, view);
    if view.help {
        draw_help(f, area, model);
    }
}

fn block(title: String, focused: bool) -> Block<'static> {
    let b = Block::bordered().title(title);
    if focused {
        b.border_style(Style::new().fg(Color::Cyan))
    } else {
        b.border_style(DIM)
    }
}

fn clock(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn draw_header(f: &mut Canvas, area: Rect, model: &Model, st: &Status) {
    let kernel = model.header.as_ref().map_or("?", |h| h.kernel.as_str());
    let mode = model.attach_mode();
    // What discovery proved about the kernel's code comes first, so that a narrow terminal
    // still shows a defect (red) or an unknown side (yellow).
    let mut line1 = vec![
        Span::styled("tracer", Style::new().bold()),
        Span::raw(" · "),
    ];
    match model.code_sides() {
        Some((w, r)) if w == "intact" && r == "intact" => line1.push(Span::raw("code ok")),
        Some((w, r)) => {
            for (side, v) in [("write", w), ("read", r)] {
                match v.as_str() {
                    "intact" => {}
                    "unknown" => line1.push(Span::styled(
                        format!("{side} code unknown "),
                        Style::new().fg(Color::Yellow).bold(),
                    )),
                    d => line1.push(Span::styled(
                        format!("DEFECT {d} "),
                        Style::new().fg(Color::Red).bold(),
                    )),
                }
            }
        }
        None => line1.push(Span::styled(
            "code not examined",
            Style::new().fg(Color::Yellow),
        )),
    }
    line1.push(Span::raw(format!(" · kernel {kernel} · ")));
    // The attach mode, when the recorder wrote it: anything short of kprobe sees less, and
    // says so in yellow.
    match model.attach() {
        Some(a) if a == "kprobe" => line1.push(Span::raw(format!("{a} · "))),
        Some(a) => line1.push(Span::styled(
            format!("{a} mode: reduced view · "),
            Style::new().fg(Color::Yellow).bold(),
        )),
        None => {}
    }
    line1.push(Span::raw(format!("{mode} (? plan)")));
    let line1 = Line::from(line1);
    let red_if = |n: u64| {
        if n > 0 {
            Style::new().fg(Color::Red).bold()
        } else {
            Style::new()
        }
    };
    let lost = model.total_lost();
    let mut counters = vec![
        Span::raw(format!(
            "events {} · {}/s · ",
            model.events,
            model.rate_now(st.now_ns)
        )),
        Span::styled(format!("lost {lost}"), red_if(lost)),
        Span::raw(" · "),
        Span::styled(
            format!("violations {}", model.violations),
            red_if(model.violations),
        ),
        Span::raw(format!(" · {}", clock(model.elapsed_ns(st.now_ns)))),
    ];
    if model.skipped > 0 {
        // Lines a lenient read skipped: the screen is missing what they held.
        counters.push(Span::raw(" · "));
        counters.push(Span::styled(
            format!("skipped {}", model.skipped),
            Style::new().fg(Color::Yellow).bold(),
        ));
    }
    if let Some(c) = st.cpu_pct {
        counters.push(Span::raw(format!(" · cpu {c:.1}%")));
    }
    // The state line: where the records come from, paused, recording, the latest note.
    let mut state = vec![Span::raw(st.source.clone())];
    if st.paused {
        state.push(Span::styled(
            format!(" · PAUSED (+{} new)", st.new_while_paused),
            Style::new().fg(Color::Yellow).bold(),
        ));
    }
    if let Some(r) = &st.recording {
        state.push(Span::styled(
            format!(" · REC {r}"),
            Style::new().fg(Color::Red),
        ));
    }
    if let Some(n) = &st.note {
        state.push(Span::styled(
            format!(" · {n}"),
            Style::new().fg(Color::Cyan),
        ));
    }
    f.render_widget(
        Paragraph::new(vec![line1, Line::from(counters), Line::from(state)]),
        area,
    );
}

fn draw_table(f: &mut Canvas, area: Rect, model: &Model, view: &View) {
    let rows = view.rows(model);
    let vis = model.visibility();
    // Columns the mode cannot see are greyed, with "-" for values: a zero there would read as
    // a measurement.
    let shown = [
        true,
        true,
        true,
        true,
        true,
        true,
        true,
        vis.gup_calls || vis.read_sites || vis.pin_syscalls,
        vis.gup(),
        vis.retry_fail,
        vis.gup_exits,
        true,
    ];
    let pins = if vis.pin_syscalls && !vis.gup() {
        "psys"
    } else {
        "pins"
    };
    let header = Row::new(
        [
            "comm", "pid", "mm", "seq", "state", "forks", "cow", pins, "bails", "rfail", "slow",
            "viol",
        ]
        .into_iter()
        .zip(shown)
        .map(|(h, on)| {
            if on {
                Cell::from(h).style(Style::new().bold())
            } else {
                Cell::from(h).style(DIM)
            }
        }),
    );
    let num = |n: u64| Cell::from(n.to_string());
    let unseen = || Cell::from("-").style(DIM);
    let col = |i: usize, n: u64| if shown[i] { num(n) } else { unseen() };
    let body = rows.iter().map(|m| {
        let state = if m.is_odd() {
            Cell::from("odd").style(Style::new().fg(Color::Yellow).bold())
        } else {
            Cell::from("even")
        };
        let viol = if m.violations > 0 {
            num(m.violations).style(Style::new().fg(Color::Red).bold())
        } else {
            num(0)
        };
        let mut row = Row::new(vec![
            Cell::from(m.comm.clone()),
            num(u64::from(m.pid)),
            Cell::from(m.mm.clone()),
            num(u64::from(m.seq)),
            state,
            num(m.forks),
            num(m.cow_copied),
            col(7, m.pin_calls),
            col(8, m.bails),
            col(9, m.retry_fails),
            col(10, m.slow_path),
            viol,
        ]);
        if view.focus.as_deref() == Some(m.mm.as_str()) {
            row = row.style(Style::new().fg(Color::Cyan));
        }
        row
    });
    let wide = area.width >= 120;
    let n = |small: u16, big: u16| Constraint::Length(if wide { big } else { small });
    let widths = [
        if wide {
            Constraint::Length(16)
        } else {
            Constraint::Min(8)
        },
        n(7, 8),
        n(6, 10),
        n(6, 10),
        n(5, 6),
        n(5, 8),
        n(5, 8),
        n(6, 8),
        n(5, 8),
        n(5, 8),
        n(5, 8),
        n(4, 6),
    ];
    let mut title = format!(" mms {} · sort {} ", rows.len(), view.sort.name());
    if let Some(flt) = &view.filter {
        title.push_str(&format!("· filter {flt} "));
    }
    if let Some(fc) = &view.focus {
        title.push_str(&format!("· focus {fc} "));
    }
    let table = Table::new(body, widths)
        .header(header)
        .column_spacing(1)
        .flex(ratatui::layout::Flex::Start)
        .block(block(title, view.pane == Pane::Table))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    if view.pane == Pane::Table && !rows.is_empty() {
        state.select(Some(view.table_sel.min(rows.len() - 1)));
    }
    f.render_stateful_widget(table, area, &mut state);
}

fn short_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{}µs", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{}ms", ns / 1_000_000),
        _ => format!("{}s", ns / 1_000_000_000),
    }
}

/// Repeats each value so `data` fills `width` columns.
fn stretch(data: &[u64], width: u16) -> Vec<u64> {
    let w = usize::from(width);
    if data.is_empty() || w == 0 {
        return Vec::new();
    }
    (0..w).map(|i| data[i * data.len() / w]).collect()
}

fn draw_hist(
    f: &mut Canvas,
    area: Rect,
    title: &str,
    primary: (&str, &Hist),
    fallback: (&str, &Hist),
) {
    // Instruction-level sites measure the window itself; without them the function-level
    // pair brackets it.
    let (src, h) = if primary.1.count > 0 {
        primary
    } else {
        fallback
    };
    let b = Block::bordered()
        .title(format!(" {title} "))
        .title_bottom(format!(
            " {src}{} ",
            if h.count > 0 {
                format!(" · max {}", short_ns(h.max))
            } else {
                String::new()
            }
        ))
        .border_style(DIM);
    let inner = b.inner(area);
    f.render_widget(b, area);
    if inner.height == 0 {
        return;
    }
    let stats = match (h.percentile_upper(50), h.percentile_upper(99)) {
        (Some(p50), Some(p99)) => {
            format!("n={} p50≤{} p99≤{}", h.count, short_ns(p50), short_ns(p99),)
        }
        _ => "none yet".to_owned(),
    };
    let [text, spark, axis] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(if inner.height >= 3 { 1 } else { 0 }),
    ])
    .areas(inner);
    f.render_widget(Paragraph::new(stats), text);
    f.render_widget(
        Sparkline::default()
            .data(stretch(&h.buckets, spark.width))
            .style(Style::new().fg(Color::Green)),
        spark,
    );
    let lo = short_ns(1 << HIST_SHIFT);
    let hi = format!("{}+", short_ns(1 << (HIST_SHIFT + HIST_BUCKETS as u32 - 1)));
    let pad = usize::from(axis.width).saturating_sub(lo.chars().count() + hi.chars().count());
    f.render_widget(
        Paragraph::new(format!("{lo}{}{hi}", " ".repeat(pad))).style(DIM),
        axis,
    );
}

fn draw_charts(f: &mut Canvas, area: Rect, model: &Model, st: &Status) {
    let [rate, cow, gup] = Layout::horizontal([
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
    ])
    .areas(area);
    let b = Block::bordered().title(" events/s ").border_style(DIM);
    let inner = b.inner(rate);
    f.render_widget(b, rate);
    let hist = model.rate_history(st.now_ns, usize::from(inner.width));
    let peak = hist.iter().copied().max().unwrap_or(0);
    let [text, spark] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
    f.render_widget(
        Paragraph::new(format!("last {}s · peak {peak}/s", inner.width)),
        text,
    );
    f.render_widget(
        Sparkline::default()
            .data(hist)
            .style(Style::new().fg(Color::Cyan)),
        spark,
    );
    let vis = model.visibility();
    if model.cow_calls.count == 0
        && model.write_sections.count == 0
        && model.fork_brackets.count > 0
    {
        // Tracepoint mode: whole forks, each bracket holding all its write sections.
        draw_hist(
            f,
            cow,
            "forks (COW write sections inside)",
            ("fork under mmap_lock", &model.fork_brackets),
            ("fork under mmap_lock", &model.fork_brackets),
        );
    } else {
        draw_hist(
            f,
            cow,
            "COW write sections",
            ("write site", &model.write_sections),
            ("copy_page_range", &model.cow_calls),
        );
    }
    if vis.gup() {
        draw_hist(
            f,
            gup,
            "GUP-fast windows",
            ("read site", &model.read_windows),
            ("PIN call", &model.pin_calls),
        );
    } else {
        draw_unseen(
            f,
            gup,
            "GUP-fast windows",
            if vis.pin_syscalls {
                format!(
                    "not seen in this mode; {} pinning syscalls around them",
                    model.pin_syscalls.count
                )
            } else {
                "not seen in this mode".to_owned()
            },
        );
    }
}

/// A pane the attach mode cannot fill: greyed, saying so.
fn draw_unseen(f: &mut Canvas, area: Rect, title: &str, why: String) {
    let b = Block::bordered()
        .title(Span::styled(format!(" {title} "), DIM))
        .border_style(DIM);
    f.render_widget(
        Paragraph::new(why)
            .style(DIM)
            .wrap(Wrap { trim: true })
            .block(b),
        area,
    );
}

fn event_line(e: &Event, first_ts: u64, foll: Option<&FollFlags>) -> Line<'static> {
    let t = EventText::new(e, first_ts, foll);
    let seq_style = if t.odd {
        Style::new().fg(Color::Yellow).bold()
    } else {
        Style::new()
    };
    Line::from(vec![
        Span::styled(format!("{} ", t.time), DIM),
        Span::raw(format!("{} ", t.task)),
        Span::styled(format!("{} ", t.kind), Style::new().fg(Color::Cyan)),
        Span::styled(t.seq, seq_style),
        Span::raw(format!(" {}", t.detail)),
    ])
}

fn draw_tail(f: &mut Canvas, area: Rect, model: &Model, view: &View, title: String) {
    let b = block(title, view.pane == Pane::Tail);
    let inner = b.inner(area);
    let h = usize::from(inner.height);
    let foll = model
        .header
        .as_ref()
        .and_then(|hd| FollFlags::for_kernel(None, &hd.kernel).ok());
    let first = model.first_ts.unwrap_or(0);
    let mut shown: Vec<Line> = model
        .tail
        .iter()
        .rev()
        .filter(|(_, e)| view.shows_mm(model, &e.mm))
        .skip(view.tail_back)
        .take(h)
        .map(|(_, e)| event_line(e, first, foll.as_ref()))
        .collect();
    shown.reverse();
    let b = if view.tail_back > 0 {
        b.title_bottom(format!(" {} back · ↓ to follow ", view.tail_back))
    } else {
        b
    };
    f.render_widget(Paragraph::new(shown).block(b), area);
}

fn draw_violations(
    f: &mut Canvas,
    area: Rect,
    model: &Model,
    view: &View,
    st: &Status,
    title: Option<String>,
) {
    let title = title.unwrap_or_else(|| format!(" violations {} ", model.violations));
    let b = block(title, view.pane == Pane::Violations).title_bottom(format!(" {} ", st.checker));
    let inner = b.inner(area);
    f.render_widget(b, area);
    let list = view.findings(model);
    if list.is_empty() {
        f.render_widget(Paragraph::new(Line::styled("no violations", DIM)), inner);
        return;
    }
    let sel = view.viol_sel.min(list.len() - 1);
    // With the pane focused, the selected violation is also shown whole, wrapped, below the
    // one-line list.
    let list_h = if view.pane == Pane::Violations && inner.height >= 4 {
        (list.len() as u16).clamp(1, inner.height / 2)
    } else {
        inner.height
    };
    let [list_area, detail] =
        Layout::vertical([Constraint::Length(list_h), Constraint::Min(0)]).areas(inner);
    let detail_h = detail.height;
    let h = usize::from(list_area.height).max(1);
    let start = sel.saturating_sub(h - 1);
    let joined = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let lines: Vec<Line> = list
        .iter()
        .enumerate()
        .skip(start)
        .take(h)
        .map(|(i, v)| {
            let mut l = Line::from(vec![
                Span::styled(format!("{} ", v.rule), Style::new().fg(Color::Red).bold()),
                Span::raw(format!(
                    "line {} {}: {}",
                    joined(&v.lines),
                    v.mm.as_deref().unwrap_or("-"),
                    v.message
                )),
            ]);
            if i == sel && view.pane == Pane::Violations {
                l = l.style(Style::new().add_modifier(Modifier::REVERSED));
            }
            l
        })
        .collect();
    f.render_widget(Paragraph::new(lines), list_area);
    if detail_h > 0 {
        let v = list[sel];
        let text = vec![
            Line::styled(
                format!(
                    "{} · {} · lines {}",
                    v.rule,
                    v.mm.as_deref().unwrap_or("-"),
                    joined(&v.lines)
                ),
                Style::new().bold().fg(Color::Red),
            ),
            Line::raw(v.message.clone()),
        ];
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), detail);
    }
}

fn draw_messages(f: &mut Canvas, area: Rect, model: &Model, view: &View, title: String) {
    let b = block(title, view.pane == Pane::Messages);
    let h = usize::from(b.inner(area).height);
    let mut lines: Vec<Line> = model
        .messages
        .iter()
        .rev()
        .skip(view.msg_back)
        .take(h)
        .map(|m| Line::raw(m.clone()))
        .collect();
    lines.reverse();
    if lines.is_empty() {
        lines.push(Line::styled("no messages", DIM));
    }
    f.render_widget(Paragraph::new(lines).block(b), area);
}

fn draw_footer(f: &mut Canvas, area: Rect, view: &View) {
    if view.exporting {
        let what = if view.focus.is_some() || view.filter.is_some() {
            "the shown mms"
        } else {
            "everything"
        };
        let key = |k: &'static str| Span::styled(k, Style::new().fg(Color::Black).bg(Color::Gray));
        let line = Line::from(vec![
            Span::styled(format!(" export {what} as: "), Style::new().bold()),
            key("p"),
            Span::raw(" perfetto "),
            key("c"),
            Span::raw(" csv "),
            key("j"),
            Span::raw(" jsonl "),
            Span::styled(" any other key cancels", DIM),
        ]);
        f.render_widget(Paragraph::new(line), area);
        return;
    }
    let line = match &view.typing {
        Some(t) => Line::from(vec![
            Span::styled(" filter (comm or pid): ", Style::new().bold()),
            Span::raw(format!("{t}_")),
            Span::styled("  enter apply  esc cancel", DIM),
        ]),
        None => Line::from(
            FOOTER
                .iter()
                .enumerate()
                .flat_map(|(i, (k, what))| {
                    [
                        Span::raw(if i == 0 { "" } else { " " }),
                        Span::styled(*k, Style::new().fg(Color::Black).bg(Color::Gray)),
                        Span::raw(format!(" {what}")),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    };
    f.render_widget(Paragraph::new(line), area);
}

fn draw_help(f: &mut Canvas, area: Rect, model: &Model) {
    let w = area.width.saturating_sub(4).min(100);
    let h = area.height.saturating_sub(2);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let mut text = vec![
        Line::styled("keys", Style::new().bold()),
        Line::raw("q / Ctrl-C quit · p pause (replay stops; live keeps recording)"),
        Line::raw("/ filter by comm or pid · s sort · tab next pane · esc clear"),
        Line::raw("↑↓ j k move · enter focus on an mm (again: all) · e export what is shown"),
        Line::styled("columns", Style::new().bold()),
        Line::raw("state odd: fork write-protect window open · cow: COW VMAs copied"),
        Line::raw("pins: PIN GUP-fast calls · bails: gave up on an odd seq"),
        Line::raw("rfail: retry failed · slow: PIN call fell back to slow GUP"),
        Line::raw(
            "psys (tracepoint mode): pinning syscalls · grey: this attach mode cannot see it",
        ),
        Line::styled(
            format!("attach plan: {}", model.attach_mode()),
            Style::new().bold(),
        ),
    ];
    match &model.header {
        Some(hd) if !hd.probes.is_empty() => {
            for p in &hd.probes {
                text.push(Line::raw(if p.offset == 0 {
                    format!("{:<12} {}", p.name, p.target)
                } else {
                    format!("{:<12} {}+{:#x}", p.name, p.target, p.offset)
                }));
            }
        }
        _ => text.push(Line::raw("no probes listed in the header")),
    }
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: false }).block(
            Block::bordered()
                .title(" help · any key closes ")
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        popup,
    );
}
