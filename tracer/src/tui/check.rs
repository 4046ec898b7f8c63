//! Live validation: the violations pane is fed through [`Checker`], implemented by the very
//! engine `tracer validate` runs ([`crate::validate::Validator`]), one record at a time.
use crate::{
    events::{Header, Record},
    validate::{Report, Validator, Violation},
};

use super::model::Finding;

/// An incremental judge of the record stream.
pub trait Checker: Send {
    /// Takes the record at `line` (header = 1) and returns the violations it completes.
    fn push(&mut self, line: u64, rec: &Record) -> Vec<Finding>;
    /// The stream is idle (or has ended): judge everything held back so far.
    fn flush(&mut self) -> Vec<Finding>;
    /// The stream has ended: settle the verdict.
    fn end(&mut self) -> Vec<Finding>;
    /// One line for the violations pane (the verdict so far, and what went right).
    fn status(&self) -> String;
}

fn finding(v: Violation) -> Finding {
    Finding {
        rule: v.rule.as_str().to_owned(),
        lines: v.lines,
        message: v.message,
        mm: Some(v.mm),
    }
}

/// `tracer validate`'s engine. It reorders events by timestamp within a window, so a
/// violation shows once the window has moved past it, or at the next idle flush.
pub struct Live {
    v: Option<Validator>,
    report: Option<Report>,
}

impl Live {
    pub fn new(header: &Header) -> Live {
        Live {
            v: Some(Validator::new(header)),
            report: None,
        }
    }
}

impl Checker for Live {
    fn push(&mut self, line: u64, rec: &Record) -> Vec<Finding> {
        match &mut self.v {
            Some(v) => v.push(line, rec).into_iter().map(finding).collect(),
            None => Vec::new(),
        }
    }

    fn flush(&mut self) -> Vec<Finding> {
        match &mut self.v {
            Some(v) => v.flush().into_iter().map(finding).collect(),
            None => Vec::new(),
        }
    }

    fn end(&mut self) -> Vec<Finding> {
        let found = self.flush();
        if let Some(v) = self.v.take() {
            self.report = Some(v.finish());
        }
        found
    }

    fn status(&self) -> String {
        // Structural counts only: the finer figures (bails, protected overlaps) depend on the
        // validator's tolerances and are in `tracer validate`'s report.
        if let Some(r) = &self.report {
            let mut s = format!(
                "verdict {} · {} write sections · {} PIN calls",
                r.verdict.as_str(),
                r.stats.write_sections,
                r.stats.pin_gup_fast,
            );
            if r.stats.lost > 0 {
                s.push_str(" · events lost");
            }
            if !r.stats.summary {
                s.push_str(" · no summary");
            }
            return s;
        }
        match &self.v {
            Some(v) => {
                let st = v.stats();
                format!(
                    "validating · {} write sections · {} PIN calls",
                    st.write_sections, st.pin_gup_fast
                )
            }
            None => "validator stopped".into(),
        }
    }
}

/// The checker for a stream starting with `header`.
pub fn for_header(header: &Header) -> Box<dyn Checker> {
    Box::new(Live::new(header))
}
