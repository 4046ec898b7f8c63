//! The log as a table: one row per event, the columns of [`COLUMNS`] in that order (documented
//! in `docs/export.md`). A column a kind does not carry is empty; so is `seq` when the probe
//! could not read it. Addresses and flag words are hex strings as in the log; booleans are
//! `true`/`false`. `lost` lines and the summary are not events and have no row.
use std::io::Write;

use super::{ExportError, Sink};
use crate::{
    events::{Body, Event, Record},
    validate::{Overlap, Report},
};

/// The header row. Part of the format: new columns are only ever appended.
pub const COLUMNS: [&str; 29] = [
    "line",
    "kind",
    "ts_ns",
    "cpu",
    "pid",
    "tid",
    "comm",
    "mm",
    "seq",
    "vma_start",
    "vma_end",
    "cow",
    "anon",
    "vm_flags",
    "start",
    "nr_pages",
    "flags",
    "pin",
    "fast_only",
    "longterm",
    "ret",
    "mm_addr",
    // Tracepoint mode (`fork`, `pin_syscall`): the bracket's first read and its value, the
    // fork's child, the syscall and its fd, operation and count. `seq` holds the second value.
    "ts_before_ns",
    "seq_before",
    "child",
    "child_mm",
    "syscall",
    "fd",
    "op_count",
];

pub struct Writer<W: Write> {
    csv: ::csv::Writer<W>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Result<Self, ExportError> {
        let mut csv = ::csv::Writer::from_writer(out);
        csv.write_record(COLUMNS)?;
        Ok(Writer { csv })
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |x| x.to_string())
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// The row of one event, in [`COLUMNS`] order.
pub fn row(line: u64, e: &Event) -> [String; 29] {
    let mut r: [String; 29] = Default::default();
    r[0] = line.to_string();
    r[1] = e.body.kind().as_str().to_owned();
    r[2] = e.ts.to_string();
    r[3] = e.cpu.to_string();
    r[4] = e.pid.to_string();
    r[5] = e.tid.to_string();
    r[6].clone_from(&e.comm);
    r[7].clone_from(&e.mm);
    r[8] = opt(e.body.seq());
    r[21] = opt(e.mm_addr.map(hex));
    match &e.body {
        Body::CopyEnter {
            vma_start,
            vma_end,
            cow,
            anon,
            vm_flags,
            ..
        } => {
            r[9] = hex(*vma_start);
            r[10] = hex(*vma_end);
            r[11] = cow.to_string();
            r[12] = opt(*anon);
            r[13] = opt(vm_flags.map(hex));
        }
        Body::CopyExit { ret, .. } | Body::GupExit { ret, .. } => r[20] = ret.to_string(),
        Body::GupEnter {
            start,
            nr_pages,
            flags,
            pin,
            fast_only,
            longterm,
            ..
        } => {
            r[14] = hex(*start);
            r[15] = nr_pages.to_string();
            r[16] = hex(u64::from(*flags));
            r[17] = pin.to_string();
            r[18] = fast_only.to_string();
            r[19] = longterm.to_string();
        }
        Body::Site { .. } => {}
        Body::Fork {
            ts_before,
            seq_before,
            child,
            child_mm,
            ret,
            ..
        } => {
            r[20] = ret.to_string();
            r[22] = ts_before.to_string();
            r[23] = opt(*seq_before);
            r[24] = child.to_string();
            r[25] = child_mm.clone().unwrap_or_default();
        }
        Body::PinSyscall {
            syscall,
            fd,
            op,
            count,
            ret,
            ts_enter,
            seq_enter,
            ..
        } => {
            r[20] = ret.to_string();
            r[22] = ts_enter.to_string();
            r[23] = opt(*seq_enter);
            r[26].clone_from(syscall);
            r[27] = fd.to_string();
            r[28] = format!("{op}/{count}");
        }
    }
    r
}

impl<W: Write> Sink for Writer<W> {
    fn record(&mut self, line: u64, rec: &Record) -> Result<(), ExportError> {
        if let Record::Event(e) = rec {
            self.csv.write_record(row(line, e))?;
        }
        Ok(())
    }

    fn finish(&mut self, _: &Report, _: &[Overlap]) -> Result<(), ExportError> {
        self.csv.flush()?;
        Ok(())
    }
}
