//! aya-log in a real kernel: the VM test boots (`cargo xtask test`, TEST_SCRIPT) record and
//! show a live trace whose `copy_page_range` pairing map is full from the start (the test hook
//! `TRACER_TEST_FULL_PAIRING_MAP=1`). The eBPF programs' diagnostic must reach `tracer record`'s
//! stderr, and the live TUI's messages pane (the guest draws it on tty1 and dumps the screen
//! from /dev/vcs1).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod kernels;

use tracer::events::{Body, CopyFn, Record};

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn a_bpf_diagnostic_reaches_stderr_and_the_messages_pane() {
    for k in kernels::all() {
        assert_eq!(k.rc("diag"), 0, "{}: {}", k.release, k.read("diag.err"));
        let err = k.read("diag.err");
        // One line per diagnostic, from the eBPF side, rare: logged at powers of 16 per CPU.
        let diags: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("tracer: warn: bpf: cpr_enter: pairing map full"))
            .collect();
        assert!(
            !diags.is_empty(),
            "{}: no BPF diagnostic in:\n{err}",
            k.release
        );
        assert!(
            diags.len() <= 16,
            "{}: {} diagnostics: not rare",
            k.release,
            diags.len()
        );
        // The consequence the diagnostic announces: the copies' exits carry no seq.
        let log = k.read("diag.jsonl");
        let null_exits = log
            .lines()
            .filter_map(|l| Record::parse(l).ok())
            .filter(|r| {
                matches!(
                    r,
                    Record::Event(e) if matches!(e.body, Body::CopyExit { func: CopyFn::Cpr, seq: None, .. })
                )
            })
            .count();
        assert!(null_exits > 0, "{}: no cpr_exit with a null seq", k.release);
        // And the verdict: an exit without its value is missing evidence, never a value.
        let r = tracer::validate::validate_reader(log.as_bytes(), Default::default()).unwrap();
        assert_eq!(
            r.verdict,
            tracer::validate::Verdict::Inconclusive,
            "{}",
            k.release
        );
        assert!(
            r.missing_evidence
                .iter()
                .any(|m| m.contains("could not read")),
            "{}: {:?}",
            k.release,
            r.missing_evidence
        );
        // The TUI's screen (80x25, no newlines in a /dev/vcs dump): the messages pane was
        // brought into view by the warning and shows it.
        // One byte per cell (the console's code page: box drawing is not UTF-8), so rows are
        // cut from the bytes before decoding.
        let screen = std::fs::read(k.path("diag-tui.screen")).unwrap();
        let rows: Vec<String> = screen
            .chunks(80)
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        assert!(
            rows.iter().any(|r| r.contains("[messages")),
            "{}: the messages pane is not shown:\n{}",
            k.release,
            rows.join("\n")
        );
        assert!(
            rows.iter()
                .any(|r| r.contains("tracer: warn: bpf: cpr_enter: pairing map full")),
            "{}: no diagnostic in the messages pane:\n{}",
            k.release,
            rows.join("\n")
        );
    }
}
