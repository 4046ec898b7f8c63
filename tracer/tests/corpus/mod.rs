//! Malformed logs: a real-shaped log (the TUI tests' `clean.jsonl`) with one bad line put in,
//! and the line every reader must name. Shared by the tests that check `validate`, `export`,
//! `report` and the TUI's replay and follow behave alike on them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// The line (1-based, as in the file) that is bad.
    pub line: u64,
    /// What the error says about it.
    pub says: &'static str,
}

fn clean() -> Vec<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tui/clean.jsonl");
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn with(at: usize, bad: &[u8]) -> Vec<u8> {
    let lines = clean();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i == at {
            out.extend_from_slice(bad);
            out.push(b'\n');
        }
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    if at >= lines.len() {
        out.extend_from_slice(bad);
        out.push(b'\n');
    }
    out
}

/// Every case; the bad line sits early in the log, so a replay reaches it at once.
pub fn cases() -> Vec<Case> {
    let lines = clean();
    let header = lines[0].clone();
    let event = lines[3].clone();
    let with_hex = lines
        .iter()
        .find(|l| l.contains("\"vma_start\":\"0x"))
        .unwrap()
        .clone();
    vec![
        Case {
            name: "not-json",
            bytes: with(5, br#"{"kind":"gup_exit","ts":12"#),
            line: 6,
            says: "not JSON",
        },
        Case {
            name: "missing-field",
            bytes: with(
                5,
                br#"{"kind":"cpr_exit","ts":1,"cpu":0,"pid":1,"tid":1,"comm":"x","mm":"m","ret":0}"#,
            ),
            line: 6,
            says: "cpr_exit is missing required field \"seq\"",
        },
        Case {
            name: "bad-hex",
            bytes: with(5, with_hex.replacen("\"0x", "\"zz", 1).as_bytes()),
            line: 6,
            says: "is not a valid hex string",
        },
        Case {
            name: "not-utf8",
            bytes: with(5, b"{\"kind\":\"read_begin\",\"comm\":\"\xff\xfe\"}"),
            line: 6,
            says: "not UTF-8",
        },
        Case {
            name: "second-header",
            bytes: with(5, header.as_bytes()),
            line: 6,
            says: "a second header",
        },
        Case {
            name: "after-summary",
            bytes: with(lines.len(), event.as_bytes()),
            line: lines.len() as u64 + 1,
            says: "a record after the summary",
        },
    ]
}

/// Writes each case to `dir/<name>.jsonl`.
pub fn write_all(dir: &Path) -> Vec<(Case, PathBuf)> {
    std::fs::create_dir_all(dir).unwrap();
    cases()
        .into_iter()
        .map(|c| {
            let p = dir.join(format!("{}.jsonl", c.name));
            std::fs::write(&p, &c.bytes).unwrap();
            (c, p)
        })
        .collect()
}
