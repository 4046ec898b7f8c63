//! The attach modes inside each VM kernel (the last block of xtask's test script): the same
//! `tracer stress` recorded in tracepoint mode (4 and 9 mappings), in kprobe mode at function
//! level, and in fentry mode.
//!
//! - tracepoint mode agrees with the host (`tracepoint_host.rs`): 5 more mappings, +10 per
//!   fork; and with the kprobes: a fork's bracket advance equals the sum of its VMA copies'
//!   advances that kprobe mode sees;
//! - fentry mode gives the same events as kprobe mode at function level: the same kinds with
//!   the same fields, the same VMA copies per fork (COW, anon, flags, size, advance), the same
//!   GUP-fast calls (flags, pages), and the same rules checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod kernels;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

fn events(k: &kernels::Fixture, name: &str) -> Vec<Value> {
    assert_eq!(
        k.rc(name),
        0,
        "{}: tracer record ({name}) failed: {}",
        k.release,
        k.read(&format!("{name}.err"))
    );
    k.read(&format!("{name}.jsonl"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The stress process: the pid with the most events of `kind` whose comm is `tracer`.
fn busiest(ev: &[Value], kind: &str) -> u64 {
    let mut n: BTreeMap<u64, usize> = BTreeMap::new();
    for e in ev
        .iter()
        .filter(|e| e["kind"] == kind && e["comm"] == "tracer")
    {
        *n.entry(e["pid"].as_u64().unwrap()).or_default() += 1;
    }
    *n.iter()
        .max_by_key(|(_, c)| **c)
        .expect("no event of the workload")
        .0
}

fn mode_of<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> (T, usize, usize) {
    let mut n: BTreeMap<T, usize> = BTreeMap::new();
    let mut total = 0;
    for i in items {
        *n.entry(i).or_default() += 1;
        total += 1;
    }
    let (v, c) = n
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .expect("nothing to take the mode of");
    (v, c, total)
}

/// Tracepoint mode: the workload's usual fork advance.
fn fork_advance(ev: &[Value]) -> (i64, usize, usize) {
    let pid = busiest(ev, "fork");
    mode_of(
        ev.iter()
            .filter(|e| e["kind"] == "fork" && e["pid"] == pid)
            .filter_map(|e| Some(e["seq_after"].as_i64()? - e["seq_before"].as_i64()?)),
    )
}

/// One VMA copy as both function-level modes see it: COW, anon, vm_flags, size, advance.
type Copy = (bool, Option<bool>, String, u64, i64);

/// The workload's forks, each the sorted list of its VMA copies. Fork copies VMAs in address
/// order, so a copy below the thread's previous one starts a new fork.
fn fork_copies(ev: &[Value]) -> Vec<Vec<Copy>> {
    let pid = busiest(ev, "cpr_enter");
    let mut open: BTreeMap<u64, &Value> = BTreeMap::new();
    let mut cur: BTreeMap<u64, (u64, Vec<Copy>)> = BTreeMap::new();
    let mut forks = Vec::new();
    let hex = |v: &Value| u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16);
    for e in ev.iter().filter(|e| e["pid"] == pid) {
        let tid = e["tid"].as_u64().unwrap();
        match e["kind"].as_str().unwrap() {
            "cpr_enter" => {
                open.insert(tid, e);
            }
            "cpr_exit" => {
                let Some(s) = open.remove(&tid) else { continue };
                let start = hex(&s["vma_start"]).unwrap();
                let copy = (
                    s["cow"].as_bool().unwrap(),
                    s["anon"].as_bool(),
                    s["vm_flags"].as_str().unwrap_or("").to_owned(),
                    hex(&s["vma_end"]).unwrap() - start,
                    e["seq"].as_i64().unwrap() - s["seq"].as_i64().unwrap(),
                );
                let c = cur.entry(tid).or_default();
                if !c.1.is_empty() && start <= c.0 {
                    forks.push(std::mem::take(&mut c.1));
                }
                c.0 = start;
                c.1.push(copy);
            }
            _ => {}
        }
    }
    forks.extend(cur.into_values().map(|(_, c)| c).filter(|c| !c.is_empty()));
    for f in &mut forks {
        f.sort();
    }
    forks
}

/// Each kind's field names.
fn shapes(ev: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in ev
        .iter()
        .filter(|e| e["kind"] != "header" && e["kind"] != "summary")
    {
        m.entry(e["kind"].as_str().unwrap().to_owned())
            .or_default()
            .extend(e.as_object().unwrap().keys().cloned());
    }
    m
}

/// The workload's PIN GUP-fast calls: (flags, pages, pin). (Its other GUP-fast calls, from
/// page faults and the like, come and go with timing.)
fn gup_calls(ev: &[Value]) -> BTreeSet<(u64, u64, bool)> {
    let pid = busiest(ev, "cpr_enter");
    ev.iter()
        .filter(|e| e["kind"] == "gup_enter" && e["pid"] == pid && e["pin"] == true)
        .map(|e| {
            (
                e["flags"].as_u64().unwrap(),
                e["nr_pages"].as_u64().unwrap(),
                e["pin"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn verdict(k: &kernels::Fixture, name: &str) -> (i32, Value) {
    let rc = k.rc(&format!("{name}.validate"));
    let r: Value = serde_json::from_str(&k.read(&format!("{name}.validate.json")))
        .unwrap_or_else(|e| panic!("{} {name}: {e}", k.release));
    (rc, r)
}

fn rule_states(r: &Value) -> BTreeMap<String, bool> {
    r["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["rule"].as_str().unwrap().to_owned(),
                x["checked"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn tracepoint_mode_agrees_with_the_host_and_with_the_kprobes() {
    for k in kernels::all() {
        let tp4 = events(&k, "tp4");
        let tp9 = events(&k, "tp9");
        let kp4 = events(&k, "kp4");
        assert_eq!(tp4[0]["attach"], "tracepoint", "{}", k.release);
        for f in tp4.iter().chain(&tp9).filter(|e| e["kind"] == "fork") {
            assert_eq!(f["bracket"], "mmap_lock", "{}: {f}", k.release);
        }
        let (a4, n4, t4) = fork_advance(&tp4);
        let (a9, _, _) = fork_advance(&tp9);
        eprintln!(
            "{}: tracepoint fork advance {a4} ({n4}/{t4} forks), {a9} with 9 mappings",
            k.release
        );
        assert_eq!(
            a9 - a4,
            10,
            "{}: 5 more mappings, 5 more write sections",
            k.release
        );
        // The bracket holds exactly the fork's write sections: what the copies add up to.
        let (kp_fork, _, _) = mode_of(fork_copies(&kp4));
        let kp_total: i64 = kp_fork.iter().map(|c| c.4).sum();
        assert_eq!(
            a4, kp_total,
            "{}: a fork's tracepoint bracket vs its copies under kprobes: {kp_fork:?}",
            k.release
        );
        // Pinning syscalls seen: RDS getsockopt everywhere (rds.ko is loaded); io_uring
        // buffer registration where it pins through GUP-fast (6.10+), the only kernels stress
        // uses it on.
        let pins: BTreeSet<&str> = tp4
            .iter()
            .filter(|e| e["kind"] == "pin_syscall")
            .map(|e| e["syscall"].as_str().unwrap())
            .collect();
        assert!(pins.contains("getsockopt"), "{}: {pins:?}", k.release);
        if kernels::series(&k.release) >= (6, 10) {
            assert!(
                pins.contains("io_uring_register"),
                "{}: {pins:?}",
                k.release
            );
        }
        let (rc, r) = verdict(&k, "tp4");
        assert_eq!(rc, 3, "{}: {r}", k.release);
        assert_eq!(r["stats"]["violations"], 0, "{}: {r}", k.release);
        let checked = rule_states(&r);
        for unseen in [
            "write_parity",
            "copy_delta",
            "odd_not_bailed",
            "unprotected_overlap",
            "retry_ignored",
        ] {
            assert!(!checked[unseen], "{}: {unseen}", k.release);
        }
        for seen in ["fork_parity", "seq_unexplained", "writer_overlap"] {
            assert!(checked[seen], "{}: {seen}", k.release);
        }
    }
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn fentry_mode_gives_the_events_of_kprobe_mode_at_function_level() {
    for k in kernels::all() {
        let kp = events(&k, "kp4");
        let fe = events(&k, "fe4");
        assert_eq!(kp[0]["attach"], "kprobe", "{}", k.release);
        assert_eq!(fe[0]["attach"], "fentry", "{}", k.release);
        assert_eq!(kp[0]["mode"], "function");
        assert_eq!(fe[0]["mode"], "function");
        let names = |h: &Value| -> BTreeSet<(String, String)> {
            h["probes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().into(),
                        p["target"].as_str().unwrap().into(),
                    )
                })
                .collect()
        };
        assert_eq!(
            names(&kp[0]),
            names(&fe[0]),
            "{}: the same probes",
            k.release
        );
        assert_eq!(
            shapes(&kp),
            shapes(&fe),
            "{}: the same kinds and fields",
            k.release
        );
        let (kp_fork, kn, kt) = mode_of(fork_copies(&kp));
        let (fe_fork, fn_, ft) = mode_of(fork_copies(&fe));
        eprintln!(
            "{}: a fork copies {} VMAs ({} advancing); kprobe {kn}/{kt} forks, fentry {fn_}/{ft}",
            k.release,
            kp_fork.len(),
            kp_fork.iter().filter(|c| c.4 == 2).count()
        );
        assert!(2 * kn > kt && 2 * fn_ > ft, "{}: no usual fork", k.release);
        assert_eq!(
            kp_fork, fe_fork,
            "{}: the same VMA copies per fork",
            k.release
        );
        assert_eq!(
            gup_calls(&kp),
            gup_calls(&fe),
            "{}: the same GUP-fast calls",
            k.release
        );
        let ((krc, kr), (frc, fr)) = (verdict(&k, "kp4"), verdict(&k, "fe4"));
        assert_eq!(krc, frc, "{}: {kr} vs {fr}", k.release);
        assert_eq!(kr["stats"]["violations"], 0, "{}: {kr}", k.release);
        assert_eq!(fr["stats"]["violations"], 0, "{}: {fr}", k.release);
        assert_eq!(
            rule_states(&kr),
            rule_states(&fr),
            "{}: the same rules checked",
            k.release
        );
    }
}
