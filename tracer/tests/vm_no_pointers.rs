//! No output of the tool carries a kernel address (they defeat KASLR) unless `--raw-pointers`
//! asked for it: every file the VM test boots left (logs, verdicts, the check's report, the
//! attach plan, sites, the TUI's screen) and the exports and report made from a real log are
//! searched for kernel-pointer patterns, hexadecimal or decimal. The one log recorded with
//! `--raw-pointers` must show them, so the search is known to find what it looks for.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod kernels;

use std::{path::Path, process::Command};

/// The kernel half of x86-64's address space starts here with 5-level paging (0xffff8000...
/// with 4 levels). The VMs run `-cpu max`, which has LA57, and Debian's kernels use it: their
/// direct map, where every mm_struct lives, starts at 0xff11000000000000.
const KERNEL_MIN: u64 = 0xff00_0000_0000_0000;

/// Files the tool did not write for people, or that hold addresses on purpose.
const NOT_OURS: [&str; 8] = [
    "kallsyms",
    "btf",
    "vmlinuz",
    "config",
    "console.log",
    "raw.jsonl",
    "check-summary.json",
    "check-summary.md",
];

/// The kernel addresses in `text`: hex runs (with or without `0x`) and decimal numbers that
/// fall in the kernel half.
fn kernel_pointers(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let word = &text[start..i];
        let hex = word
            .strip_prefix("0x")
            .or_else(|| word.strip_prefix("0X"))
            .unwrap_or(word);
        let as_hex = (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten();
        let as_dec = word
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| word.parse::<u64>().ok())
            .flatten();
        if as_hex.or(as_dec).is_some_and(|v| v >= KERNEL_MIN) {
            found.push(word.to_owned());
        }
    }
    found
}

fn scan(path: &Path, hits: &mut Vec<String>, files: &mut usize) {
    if path.is_dir() {
        if path.file_name().is_some_and(|n| n == ".vm") {
            return;
        }
        for e in std::fs::read_dir(path).unwrap() {
            scan(&e.unwrap().path(), hits, files);
        }
        return;
    }
    let name = path.file_name().unwrap().to_string_lossy();
    if NOT_OURS.contains(&name.as_ref()) {
        return;
    }
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    *files += 1;
    for p in kernel_pointers(&text).into_iter().take(3) {
        hits.push(format!("{}: {p}", path.display()));
    }
}

#[test]
fn the_pattern_finds_kernel_addresses_and_nothing_else() {
    let found = kernel_pointers(
        "ip 0xffffffff81234567 mm 18446612682079682560 {\"a\":ffff888003c4e000} la57 0xff11000003c51680 \
         user 0x00007ffc12345678 seq 18446744 mm7 0xffffffff ts 1733212345000000000",
    );
    assert_eq!(
        found,
        [
            "0xffffffff81234567",
            "18446612682079682560",
            "ffff888003c4e000",
            "0xff11000003c51680"
        ]
    );
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn no_output_carries_a_kernel_address() {
    let out = std::env::temp_dir().join(format!("tracer-no-pointers-{}", std::process::id()));
    for k in kernels::all() {
        // The exports and the report of the biggest real log.
        let dir = out.join(&k.release);
        std::fs::create_dir_all(&dir).unwrap();
        let log = k.path("record.jsonl");
        for (format, file) in [
            ("perfetto", "trace.json"),
            ("csv", "events.csv"),
            ("jsonl", "log.jsonl"),
        ] {
            let o = Command::new(env!("CARGO_BIN_EXE_tracer"))
                .args(["export", "--format", format, "-o"])
                .arg(dir.join(file))
                .arg(&log)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{}: {}",
                k.release,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let o = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(["report", "-o"])
            .arg(dir.join("report"))
            .arg(&log)
            .output()
            .unwrap();
        // The exit status is the verdict: clean (0), or inconclusive (3) when the VM's clocks
        // or a lost event limit it; either way the report is written, and it is what is searched.
        assert!(
            matches!(o.status.code(), Some(0 | 3)) && dir.join("report/report.md").is_file(),
            "{}: {}",
            k.release,
            String::from_utf8_lossy(&o.stderr)
        );

        let mut hits = Vec::new();
        let mut files = 0;
        scan(&k.dir, &mut hits, &mut files);
        scan(&dir, &mut hits, &mut files);
        assert!(
            hits.is_empty(),
            "{}: kernel addresses in output:\n{}",
            k.release,
            hits.join("\n")
        );
        // Asked for, they are there: the search is not blind.
        let raw = kernel_pointers(&k.read("raw.jsonl"));
        assert!(
            !raw.is_empty(),
            "{}: raw.jsonl (--raw-pointers) shows no address",
            k.release
        );
        eprintln!(
            "{}: {files} files searched, no kernel address; the --raw-pointers log has {}",
            k.release,
            raw.len()
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}
