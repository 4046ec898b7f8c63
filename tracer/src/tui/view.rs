//! What the person has chosen to look at (pane, sort, filter, selection, focus) and the keys
//! that change it.
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::{Finding, MmStats, Model};
use crate::export::Format;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    Table,
    Tail,
    Violations,
    Messages,
}

impl Pane {
    fn next(self) -> Pane {
        match self {
            Pane::Table => Pane::Tail,
            Pane::Tail => Pane::Violations,
            Pane::Violations => Pane::Messages,
            Pane::Messages => Pane::Table,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Order of first appearance in the log.
    Seen,
    Pid,
    Comm,
    Events,
    Forks,
    Pins,
    Bails,
    Violations,
}

impl SortKey {
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Seen => "first seen",
            SortKey::Pid => "pid",
            SortKey::Comm => "comm",
            SortKey::Events => "events",
            SortKey::Forks => "forks",
            SortKey::Pins => "pins",
            SortKey::Bails => "bails",
            SortKey::Violations => "violations",
        }
    }

    fn next(self) -> SortKey {
        match self {
            SortKey::Seen => SortKey::Pid,
            SortKey::Pid => SortKey::Comm,
            SortKey::Comm => SortKey::Events,
            SortKey::Events => SortKey::Forks,
            SortKey::Forks => SortKey::Pins,
            SortKey::Pins => SortKey::Bails,
            SortKey::Bails => SortKey::Violations,
            SortKey::Violations => SortKey::Seen,
        }
    }
}

/// What a key asks of the runtime (everything else is handled inside the view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Pause or resume (the view's `paused` has already flipped).
    Pause,
    /// Write what is shown (filter and focus applied) to a file in this format.
    Export(Format),
}

#[derive(Clone, Debug)]
pub struct View {
    pub pane: Pane,
    pub sort: SortKey,
    /// Applied filter: a comm substring or an exact pid.
    pub filter: Option<String>,
    /// The filter being typed after `/`.
    pub typing: Option<String>,
    pub table_sel: usize,
    /// Rows scrolled back from the newest event; 0 follows the tail.
    pub tail_back: usize,
    pub viol_sel: usize,
    pub msg_back: usize,
    /// The mm the tail and violations are narrowed to (enter).
    pub focus: Option<String>,
    pub help: bool,
    pub paused: bool,
    /// `e` was pressed: the footer asks for the export format.
    pub exporting: bool,
}

impl Default for View {
    fn default() -> View {
        View {
            pane: Pane::Table,
            sort: SortKey::Seen,
            filter: None,
            typing: None,
            table_sel: 0,
            tail_back: 0,
            viol_sel: 0,
            msg_back: 0,
            focus: None,
            help: false,
            paused: false,
            exporting: false,
        }
    }
}

fn filter_matches(filter: &str, m: &MmStats) -> bool {
    match filter.parse::<u32>() {
        Ok(pid) => m.pid == pid,
        Err(_) => m.comm.contains(filter),
    }
}

impl View {
    /// The table rows, filtered and sorted.
    pub fn rows<'m>(&self, model: &'m Model) -> Vec<&'m MmStats> {
        let mut v: Vec<&MmStats> = model
            .mms()
            .filter(|m| self.filter.as_deref().is_none_or(|f| filter_matches(f, m)))
            .collect();
        // Counters sort busiest first; ties fall back to first appearance so the order is stable.
        v.sort_by(|a, b| {
            let k = match self.sort {
                SortKey::Seen => std::cmp::Ordering::Equal,
                SortKey::Pid => a.pid.cmp(&b.pid),
                SortKey::Comm => a.comm.cmp(&b.comm),
                SortKey::Events => b.events.cmp(&a.events),
                SortKey::Forks => b.forks.cmp(&a.forks),
                SortKey::Pins => b.pin_calls.cmp(&a.pin_calls),
                SortKey::Bails => b.bails.cmp(&a.bails),
                SortKey::Violations => b.violations.cmp(&a.violations),
            };
            k.then(a.first_line.cmp(&b.first_line))
        });
        v
    }

    /// The mms an export of what is shown keeps: `None` when nothing narrows the view.
    pub fn shown_mms(&self, model: &Model) -> Option<std::collections::HashSet<String>> {
        if self.focus.is_none() && self.filter.is_none() {
            return None;
        }
        Some(
            model
                .mms()
                .filter(|m| self.shows_mm(model, &m.mm))
                .map(|m| m.mm.clone())
                .collect(),
        )
    }

    /// Whether an event or finding of `mm` passes the focus and the filter.
    pub fn shows_mm(&self, model: &Model, mm: &str) -> bool {
        if let Some(f) = &self.focus {
            return f == mm;
        }
        match (&self.filter, model.mm(mm)) {
            (Some(f), Some(m)) => filter_matches(f, m),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    pub fn findings<'m>(&self, model: &'m Model) -> Vec<&'m Finding> {
        model
            .findings
            .iter()
            .filter(|f| f.mm.as_deref().is_none_or(|mm| self.shows_mm(model, mm)))
            .collect()
    }

    pub fn on_key(&mut self, key: KeyEvent, model: &Model) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(t) = &mut self.typing {
            match key.code {
                KeyCode::Esc => self.typing = None,
                KeyCode::Enter => {
                    let t = t.trim().to_owned();
                    self.filter = (!t.is_empty()).then_some(t);
                    self.typing = None;
                    self.table_sel = 0;
                }
                KeyCode::Backspace => {
                    t.pop();
                }
                KeyCode::Char(c) => t.push(c),
                _ => {}
            }
            return Action::None;
        }
        if self.exporting {
            self.exporting = false;
            return match key.code {
                KeyCode::Char('p') => Action::Export(Format::Perfetto),
                KeyCode::Char('c') => Action::Export(Format::Csv),
                KeyCode::Char('j') => Action::Export(Format::Jsonl),
                _ => Action::None,
            };
        }
        if self.help {
            match key.code {
                KeyCode::Char('q') => return Action::Quit,
                _ => self.help = false,
            }
            return Action::None;
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('p') => {
                self.paused = !self.paused;
                return Action::Pause;
            }
            KeyCode::Char('e') => self.exporting = true,
            KeyCode::Char('/') => self.typing = Some(self.filter.clone().unwrap_or_default()),
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab => self.pane = self.pane.next(),
            KeyCode::BackTab => {
                for _ in 0..3 {
                    self.pane = self.pane.next();
                }
            }
            KeyCode::Esc => {
                self.focus = None;
                self.filter = None;
            }
            KeyCode::Up | KeyCode::Char('k') => self.step(model, -1),
            KeyCode::Down | KeyCode::Char('j') => self.step(model, 1),
            KeyCode::PageUp => self.step(model, -10),
            KeyCode::PageDown => self.step(model, 10),
            KeyCode::Enter => self.enter(model),
            _ => {}
        }
        Action::None
    }

    fn step(&mut self, model: &Model, by: isize) {
        let move_in = |cur: usize, len: usize| -> usize {
            if len == 0 {
                0
            } else {
                cur.saturating_add_signed(by).min(len - 1)
            }
        };
        match self.pane {
            Pane::Table => self.table_sel = move_in(self.table_sel, self.rows(model).len()),
            Pane::Violations => {
                self.viol_sel = move_in(self.viol_sel, self.findings(model).len());
            }
            // The tail and messages show the newest at the bottom: up goes back in time.
            Pane::Tail => {
                self.tail_back = self
                    .tail_back
                    .saturating_add_signed(-by)
                    .min(model.tail.len())
            }
            Pane::Messages => {
                self.msg_back = self
                    .msg_back
                    .saturating_add_signed(-by)
                    .min(model.messages.len());
            }
        }
    }

    /// Enter focuses on the selected mm (or the mm of the selected violation/the newest shown
    /// event); enter again, or Esc, shows everything.
    fn enter(&mut self, model: &Model) {
        if self.focus.is_some() {
            self.focus = None;
            return;
        }
        self.focus = match self.pane {
            Pane::Table => self.rows(model).get(self.table_sel).map(|m| m.mm.clone()),
            Pane::Violations => self
                .findings(model)
                .get(self.viol_sel)
                .and_then(|f| f.mm.clone()),
            Pane::Tail => model
                .tail
                .iter()
                .rev()
                .filter(|(_, e)| self.shows_mm(model, &e.mm))
                .nth(self.tail_back)
                .map(|(_, e)| e.mm.clone()),
            Pane::Messages => None,
        };
    }
}
