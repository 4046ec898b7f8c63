//! What `tracer check` left in the newest 6.1 and 6.12 VM kernels (`cargo xtask test` runs
//! validate-kernel's in-guest step there): a clean verdict that rests on protected overlaps,
//! a log that validates to the same report on the host, a report that says so, and the
//! summary validate-kernel's collection made of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod kernels;

use std::process::Command;

use serde_json::Value;

fn json(k: &kernels::Fixture, name: &str) -> Value {
    serde_json::from_str(&k.read(name))
        .unwrap_or_else(|e| panic!("{}: {name} is not JSON: {e}", k.release))
}

fn stat(v: &Value, f: &str) -> u64 {
    v["stats"][f]
        .as_u64()
        .unwrap_or_else(|| panic!("stats.{f} missing in {v}"))
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn the_check_is_clean_and_rests_on_protected_overlaps() {
    for k in kernels::checked() {
        let v = json(&k, "check/verdict.json");
        assert_eq!(
            v["verdict"],
            "clean",
            "{}: {} (check.log: {})",
            k.release,
            v,
            k.read("check.log")
        );
        assert_eq!(k.rc("check"), 0, "{}: {}", k.release, k.read("check.log"));
        let p = stat(&v, "protected_overlaps");
        assert!(p > 0, "{}: no protected overlap in {v}", k.release);
        assert_eq!(stat(&v, "lost"), 0, "{}", k.release);
        eprintln!(
            "{}: clean, {p} protected overlaps, {} write sections, {} PIN GUP-fast calls",
            k.release,
            stat(&v, "write_sections"),
            stat(&v, "pin_gup_fast")
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn the_log_revalidates_on_the_host_to_the_same_report() {
    for k in kernels::checked() {
        let o = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(["validate", "--json"])
            .arg(k.path("check/events.jsonl"))
            .output()
            .unwrap();
        let host: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: validate --json: {e}: {}",
                k.release,
                String::from_utf8_lossy(&o.stderr)
            )
        });
        let guest = json(&k, "check/verdict.json");
        assert_eq!(host, guest, "{}: host and guest reports differ", k.release);
        let code = match guest["verdict"].as_str().unwrap() {
            "clean" => 0,
            "violations" => 1,
            _ => 3,
        };
        assert_eq!(o.status.code(), Some(code), "{}", k.release);
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn the_report_states_the_verdict_and_the_counts() {
    for k in kernels::checked() {
        let md = k.read("check/report.md");
        let v = json(&k, "check/verdict.json");
        let verdict = v["verdict"].as_str().unwrap();
        for want in [
            format!("# tracer check: {}", k.release),
            format!("verdict: **{verdict}**"),
            format!("protected overlaps: {}", stat(&v, "protected_overlaps")),
            format!("| write_sections | {} |", stat(&v, "write_sections")),
            format!("| pin_gup_fast | {} |", stat(&v, "pin_gup_fast")),
            format!("**{verdict}** over {} events", v["events"]),
            "## Workload".to_owned(),
            "## Limits".to_owned(),
        ] {
            assert!(
                md.contains(&want),
                "{}: report.md lacks {want:?}",
                k.release
            );
        }
        let header: Value =
            serde_json::from_str(k.read("check/events.jsonl").lines().next().unwrap()).unwrap();
        let mode = header["mode"].as_str().unwrap();
        assert!(
            md.contains(&format!("attach mode: {mode}")),
            "{}: mode",
            k.release
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn sites_json_parses_and_finds_both_sides_intact() {
    for k in kernels::checked() {
        let v = json(&k, "check/sites.json");
        // Debian's builds are intact: what `tracer sites --json` says for this kernel.
        assert_eq!(
            v["sides"]["write"], "intact",
            "{}: {}",
            k.release, v["sides"]
        );
        assert_eq!(
            v["sides"]["read"], "intact",
            "{}: {}",
            k.release, v["sides"]
        );
        let functions = v["functions"].as_array().unwrap();
        assert!(
            functions.iter().any(|f| f["symbol"] == "copy_page_range"),
            "{}: no write function in sites.json",
            k.release
        );
        assert!(
            functions.iter().any(|f| f["role"] == "read"),
            "{}: no GUP-fast function in sites.json",
            k.release
        );
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn the_workload_used_the_pin_methods_each_kernel_offers() {
    for k in kernels::checked() {
        let w = json(&k, "check/workload.json");
        let m = |name: &str| {
            w["methods"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["method"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{}: {name} not listed: {w}", k.release))
        };
        assert!(w["forks"].as_u64().unwrap() > 0, "{}: {w}", k.release);
        // The VM loads rds.ko on both; io_uring and O_DIRECT pin through GUP-fast from 6.10
        // and 6.5 on (the guest reads /dev/vda: its root is a ramfs).
        let rds = m("rds");
        assert_eq!(rds["available"], true, "{}: {rds}", k.release);
        assert!(rds["pins"].as_u64().unwrap() > 0, "{}: {rds}", k.release);
        let newer = kernels::series(&k.release) >= (6, 10);
        for name in ["io_uring", "o_direct"] {
            let x = m(name);
            assert_eq!(x["available"], newer, "{}: {x}", k.release);
            if newer {
                assert!(x["pins"].as_u64().unwrap() > 0, "{}: {x}", k.release);
            } else {
                assert!(
                    x["reason"].as_str().unwrap().contains("kernel 6.1"),
                    "{}: {x}",
                    k.release
                );
            }
        }
        if newer {
            assert!(
                m("o_direct")["what"].as_str().unwrap().contains("/dev/vda"),
                "{}: {w}",
                k.release
            );
        }
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn validate_kernels_summary_matches_the_verdicts() {
    let checked = kernels::checked();
    if checked.is_empty() {
        return;
    }
    let root = checked[0].dir.parent().unwrap().to_owned();
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("check-summary.json")).unwrap())
            .unwrap();
    for k in &checked {
        let line = s["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["release"] == k.release.as_str())
            .unwrap_or_else(|| panic!("{}: not in check-summary.json: {s}", k.release));
        let v = json(k, "check/verdict.json");
        assert_eq!(line["verdict"], v["verdict"], "{}", k.release);
        assert_eq!(line["events"], v["events"], "{}", k.release);
        assert_eq!(line["protected_overlaps"], v["stats"]["protected_overlaps"]);
        assert_eq!(line["pin_calls"], v["stats"]["pin_gup_fast"]);
        assert_eq!(line["write_sections"], v["stats"]["write_sections"]);
        assert_eq!(line["lost"], v["stats"]["lost"]);
        assert_eq!(line["attach_mode"], "instruction", "{}", k.release);
        assert_eq!(line["sites"]["write"], "intact", "{}", k.release);
        assert_eq!(line["sites"]["read"], "intact", "{}", k.release);
    }
}
