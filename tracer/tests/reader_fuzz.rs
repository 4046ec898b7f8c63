//! The log reader and everything behind it (validator, exporters) against hostile input: a
//! corpus of malformed logs, a line a gigabyte long, and a time-bounded random mutation run
//! (`TRACER_FUZZ_SECS`, default 3 s; `cargo xtask test` gives it 60). Every input ends in a
//! report or one sentence naming the line, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read,
    time::{Duration, Instant},
};

use tracer::{
    events::log::{LogError, LogReader, Mode},
    export::{Format, export},
    model::generate::{GenOptions, generate},
    validate::{Options, validate_log},
};

fn model_log(events: u64, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    generate(
        &mut out,
        &GenOptions {
            events,
            seed,
            ..GenOptions::default()
        },
    )
    .unwrap();
    out
}

/// Feeds `input` through the validator and every exporter, strictly and leniently; returns
/// the strict error when there is one. Panics are what the caller is after.
fn judge(input: &[u8]) -> Option<LogError> {
    let mut strict_err = None;
    for mode in [Mode::Strict, Mode::Lenient] {
        match LogReader::new(input, None, mode) {
            Ok(mut log) => {
                if let Err(e) = validate_log(&mut log, Options::default())
                    && mode == Mode::Strict
                {
                    strict_err = Some(e);
                }
            }
            Err(e) => {
                if mode == Mode::Strict {
                    strict_err = Some(e);
                }
            }
        }
        for format in [Format::Perfetto, Format::Csv, Format::Jsonl] {
            if let Ok(mut log) = LogReader::new(input, None, mode) {
                let _ = export(
                    &mut log,
                    format,
                    &|_| true,
                    std::io::sink(),
                    Options::default(),
                );
            }
        }
    }
    strict_err
}

fn one_sentence(e: &LogError) {
    let m = e.to_string();
    assert!(!m.contains('\n'), "{m}");
    assert!(m.contains("line ") || m.contains("empty"), "{m}");
}

#[test]
fn a_corpus_of_malformed_logs_is_named_not_panicked_on() {
    let good = String::from_utf8(model_log(200, 7)).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let ev = lines[5];
    let with = |i: usize, l: &str| {
        let mut v = lines.clone();
        v[i] = l;
        v.join("\n") + "\n"
    };
    let cases: Vec<(&str, String)> = vec![
        ("truncated line", with(5, &ev[..ev.len() / 2])),
        (
            "wrong type",
            with(5, &ev.replacen("\"tid\":", "\"tid\":\"x\",\"_\":", 1)),
        ),
        (
            "huge number",
            with(
                5,
                &ev.replacen("\"ts\":", "\"ts\":99999999999999999999999", 1),
            ),
        ),
        (
            "negative u32",
            with(5, &ev.replacen("\"cpu\":", "\"cpu\":-", 1)),
        ),
        (
            "unknown kind",
            with(5, r#"{"kind":"mystery","x":[1,{"y":null}]}"#),
        ),
        (
            "wrong schema",
            with(
                0,
                r#"{"kind":"header","schema":7,"tool":"t","kernel":"k","probes":[]}"#,
            ),
        ),
        ("nested garbage", with(5, &"[".repeat(100_000))),
        ("binary", with(5, "\u{0}\u{1}\u{2}\u{ff}")),
        ("not a header first", lines[1..].join("\n")),
        ("NUL bytes", good.replace('\n', "\n\0")),
    ];
    for (what, text) in cases {
        if let Some(e) = judge(text.as_bytes()) {
            one_sentence(&e);
        } else {
            // Unknown kinds are skipped by design; everything else here is bad input.
            assert!(matches!(what, "unknown kind"), "{what}: accepted");
        }
    }
    // Not UTF-8 at all.
    let mut bytes = good.clone().into_bytes();
    bytes[lines[0].len() + 3] = 0xff;
    one_sentence(&judge(&bytes).expect("invalid UTF-8 accepted"));
}

/// A reader over a header and then a line of `n` bytes with no newline, made on the fly.
struct HugeLine {
    head: Vec<u8>,
    left: u64,
}

impl Read for HugeLine {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.len());
            buf[..n].copy_from_slice(&self.head[..n]);
            self.head.drain(..n);
            return Ok(n);
        }
        let n = (self.left.min(buf.len() as u64)) as usize;
        buf[..n].fill(b'a');
        self.left -= n as u64;
        Ok(n)
    }
}

#[test]
fn a_gigabyte_line_is_refused_without_reading_it_all() {
    let good = String::from_utf8(model_log(10, 1)).unwrap();
    let header = good.lines().next().unwrap().to_owned() + "\n";
    let rd = HugeLine {
        head: header.into_bytes(),
        left: 1 << 30,
    };
    let t = Instant::now();
    let mut log = LogReader::new(rd, Some("huge".into()), Mode::Strict).unwrap();
    let e = validate_log(&mut log, Options::default()).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("line 2") && m.contains("MiB"), "{m}");
    // It stopped at the cap, long before a gigabyte.
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// A small deterministic generator (xorshift), so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn random_mutations_for_a_bounded_time() {
    let secs: u64 = std::env::var("TRACER_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let base = model_log(300, 11);
    let tokens: [&[u8]; 8] = [
        b"null",
        b"-1",
        b"18446744073709551616",
        b"\"0xffffffffffffffffff\"",
        b"{}",
        b"\n",
        b"\"kind\":\"summary\"",
        b"\"kind\":\"header\",\"schema\":1",
    ];
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let seed = rng.next();
        let mut r = Rng(seed | 1);
        let mut input = base.clone();
        for _ in 0..1 + r.below(6) {
            // A truncation to nothing leaves nothing to mutate (and no index to pick).
            if input.is_empty() {
                break;
            }
            let at = r.below(input.len());
            match r.below(5) {
                0 => input[at] = r.next() as u8,
                1 => {
                    input.remove(at);
                }
                2 => {
                    let t = tokens[r.below(tokens.len())];
                    input.splice(at..at, t.iter().copied());
                }
                3 => {
                    // Duplicate a span elsewhere (repeated fields, lines, headers).
                    let len = r.below(200).min(input.len() - at);
                    let span: Vec<u8> = input[at..at + len].to_vec();
                    let to = r.below(input.len());
                    input.splice(to..to, span);
                }
                _ => input.truncate(at),
            }
        }
        let caught = std::panic::catch_unwind(|| judge(&input));
        match caught {
            Ok(Some(e)) => one_sentence(&e),
            Ok(None) => {}
            Err(_) => panic!("a panic on mutation seed {seed:#x}"),
        }
        runs += 1;
    }
    eprintln!("{runs} mutated logs in {secs} s, no panic");
    assert!(runs > 0);
}
