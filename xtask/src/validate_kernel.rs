//! `cargo xtask validate-kernel`: `tracer check` inside a VM per kernel, and a summary.
//!
//! Each kernel boots once; the guest runs the check (stress workload under the recorder, then
//! the validator) with its report in the guest's /out, which comes back as DIR/<id>/. The
//! same in-guest step and the same collection run in `cargo xtask test` for the newest 6.1
//! and 6.12 builds, so CI exercises this machinery.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::ArgMatches;
use serde::Serialize;
use serde_json::Value;

use crate::{build, kernels, setup, vm};

#[derive(clap::Args)]
pub struct Args {
    /// Kernel to check: `6.1`, `6.12`, `6.1-oldest`, an exact Debian build (`6.1.0-56`,
    /// `6.12.107+deb12`) or a path to a bzImage. Repeat for several.
    #[arg(long = "kernel", required = true, value_name = "SPEC")]
    pub kernels: Vec<String>,
    /// Modules (ROOT/lib/modules/RELEASE) for the nearest preceding --kernel given as a path.
    /// An image in an extracted package (ROOT/boot/vmlinuz-R) finds them by itself.
    #[arg(long = "modules", value_name = "DIR")]
    pub modules: Vec<PathBuf>,
    /// Seconds of the stress workload in each kernel (1-3600).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Where the reports go: DIR/<id>/ per kernel, DIR/summary.{md,json}.
    #[arg(long, default_value = "target/validate-kernel", value_name = "DIR")]
    pub report: PathBuf,
}

/// Which --kernel each --modules belongs to: the nearest one before it on the command line.
pub fn modules_per_kernel(m: &ArgMatches, a: &Args) -> Result<Vec<Option<PathBuf>>> {
    let kidx: Vec<usize> = m
        .indices_of("kernels")
        .map(Iterator::collect)
        .unwrap_or_default();
    let midx: Vec<usize> = m
        .indices_of("modules")
        .map(Iterator::collect)
        .unwrap_or_default();
    pair_by_position(&kidx, &midx, &a.modules, &a.kernels)
}

fn pair_by_position(
    kernel_at: &[usize],
    modules_at: &[usize],
    modules: &[PathBuf],
    kernels: &[String],
) -> Result<Vec<Option<PathBuf>>> {
    let mut out: Vec<Option<PathBuf>> = vec![None; kernel_at.len()];
    for (&at, dir) in modules_at.iter().zip(modules) {
        let Some(k) = kernel_at.iter().rposition(|&ki| ki < at) else {
            bail!(
                "--modules {} comes before any --kernel; put it after the kernel it belongs to",
                dir.display()
            );
        };
        let slot = &mut out[k];
        if slot.is_some() {
            bail!(
                "--kernel {} has two --modules; give one directory per kernel",
                kernels.get(k).map_or("?", String::as_str)
            );
        }
        *slot = Some(dir.clone());
    }
    Ok(out)
}

/// The in-guest step: reserve huge pages (so the hugetlb write section runs too), run the
/// check with its report in `report` (a guest path), keep its exit status and its output.
/// The output is also streamed on the console, which is the progress the user sees.
pub fn guest_step(duration: u64, report: &str) -> String {
    format!(
        "echo 4 > /proc/sys/vm/nr_hugepages\n\
         {{ tracer check --duration {duration} --report {report}; echo $? > /out/check.rc; }} 2>&1 | tee /out/check.log\n"
    )
}

/// A side of the protocol as discovery saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sides {
    pub write: String,
    pub read: String,
}

/// The write and read sides from sites.json (`tracer sites --json`'s `"sides"`): "intact",
/// a defect name, or "unknown" (also when sites.json has no such field). The only place
/// that reads sites.json.
pub fn sides(sites: &Value) -> Sides {
    let side = |k: &str| {
        sites
            .get("sides")
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned()
    };
    Sides {
        write: side("write"),
        read: side("read"),
    }
}

/// One kernel's line of summary.json.
#[derive(Clone, Debug, Serialize)]
pub struct KernelSummary {
    pub id: String,
    pub release: String,
    pub image: String,
    pub attach_mode: Option<String>,
    pub sites: Sides,
    pub events: Option<u64>,
    pub lost: Option<u64>,
    pub write_sections: Option<u64>,
    pub pin_calls: Option<u64>,
    pub protected_overlaps: Option<u64>,
    pub violations: BTreeMap<String, u64>,
    /// The verdict from verdict.json, or "error" when the run left none.
    pub verdict: String,
    /// Why this kernel is not clean (absent when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Where its report is.
    #[serde(skip)]
    pub report: PathBuf,
}

impl KernelSummary {
    /// A kernel whose run failed before the check could report.
    pub fn failed(id: &str, release: &str, image: &Path, why: String) -> KernelSummary {
        KernelSummary {
            id: id.to_owned(),
            release: release.to_owned(),
            image: image.display().to_string(),
            attach_mode: None,
            sites: Sides {
                write: "unknown".into(),
                read: "unknown".into(),
            },
            events: None,
            lost: None,
            write_sections: None,
            pin_calls: None,
            protected_overlaps: None,
            violations: BTreeMap::new(),
            verdict: "error".into(),
            problem: Some(why),
            report: PathBuf::new(),
        }
    }

    pub fn clean(&self) -> bool {
        self.problem.is_none()
    }

    /// The one line per kernel printed at the end.
    pub fn line(&self) -> String {
        match &self.problem {
            None => format!(
                "{}: clean ({} protected overlaps, {} events)",
                self.id,
                self.protected_overlaps.unwrap_or(0),
                self.events.unwrap_or(0)
            ),
            Some(why) => format!("{}: NOT clean: {why}", self.id),
        }
    }
}

fn read_json(p: &Path) -> Result<Value, String> {
    let s = std::fs::read_to_string(p).map_err(|e| format!("no {} ({e})", p.display()))?;
    serde_json::from_str(&s).map_err(|e| format!("{} is not JSON ({e})", p.display()))
}

/// The `mode` of the log's header (its first line).
fn header_mode(events: &Path) -> Option<String> {
    use std::io::BufRead as _;
    let f = std::fs::File::open(events).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(f).read_line(&mut line).ok()?;
    let v: Value = serde_json::from_str(&line).ok()?;
    v.get("mode").and_then(Value::as_str).map(str::to_owned)
}

/// Reads what one check left: `check` holds events.jsonl, sites.json, verdict.json and
/// report.md; `out` holds check.rc and check.log (the guest's /out).
pub fn collect(id: &str, release: &str, image: &Path, out: &Path, check: &Path) -> KernelSummary {
    let mut k = KernelSummary::failed(id, release, image, String::new());
    k.report = check.join("report.md");
    k.attach_mode = header_mode(&check.join("events.jsonl"));
    if let Ok(s) = read_json(&check.join("sites.json")) {
        k.sites = sides(&s);
    }
    let verdict = read_json(&check.join("verdict.json"));
    if let Ok(v) = &verdict {
        let stat = |f: &str| {
            v.get("stats")
                .and_then(|s| s.get(f))
                .and_then(Value::as_u64)
        };
        k.events = v.get("events").and_then(Value::as_u64);
        k.lost = stat("lost");
        k.write_sections = stat("write_sections");
        k.pin_calls = stat("pin_gup_fast");
        k.protected_overlaps = stat("protected_overlaps");
        if let Some(m) = v
            .get("stats")
            .and_then(|s| s.get("violations_by_rule"))
            .and_then(Value::as_object)
        {
            k.violations = m
                .iter()
                .filter_map(|(r, n)| n.as_u64().map(|n| (r.clone(), n)))
                .collect();
        }
        k.verdict = v
            .get("verdict")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_owned();
    }
    let rc: Option<i32> = std::fs::read_to_string(out.join("check.rc"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let said = std::fs::read_to_string(out.join("check.log"))
        .ok()
        .and_then(|l| {
            l.lines()
                .rev()
                .find(|x| x.starts_with("tracer: "))
                .map(|x| x.trim_start_matches("tracer: ").to_owned())
        });
    k.problem = match (rc, &verdict) {
        (Some(0), Ok(_)) if k.verdict == "clean" => None,
        (None, _) => Some("tracer check left no exit status (see console.log)".into()),
        (Some(2), _) => Some(format!(
            "tracer check could not run: {}",
            said.as_deref().unwrap_or("see check.log")
        )),
        (Some(_), Err(e)) => Some(format!("tracer check left no verdict: {e}")),
        (Some(rc), Ok(v)) => Some(match k.verdict.as_str() {
            "violations" => format!(
                "violations: {}",
                k.violations
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "inconclusive" if k.lost.unwrap_or(0) > 0 => format!(
                "inconclusive: {} events lost (see report.md)",
                k.lost.unwrap_or(0)
            ),
            "inconclusive" => match missing_evidence(v) {
                Some(why) => format!("inconclusive: {why}"),
                None => "inconclusive (see report.md for why)".to_owned(),
            },
            v => format!("verdict {v}, tracer check exited {rc}"),
        }),
    };
    k
}

/// What the validator says a clean verdict lacks, when its report says so (`missing_evidence`,
/// sentences), for the one-line reason; the report.md has the rest.
fn missing_evidence(v: &Value) -> Option<String> {
    let items: Vec<&str> = v
        .get("missing_evidence")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    (!items.is_empty()).then(|| items.join("; "))
}

/// summary.json: `{"kernels": [...]}`.
pub fn summary_json(ks: &[KernelSummary]) -> Result<String> {
    let mut s = serde_json::to_string_pretty(&serde_json::json!({ "kernels": ks }))?;
    s.push('\n');
    Ok(s)
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |n| n.to_string())
}

/// summary.md: one row per kernel, then why each unclean one is not clean.
pub fn summary_md(ks: &[KernelSummary], root: &Path) -> String {
    let mut o = String::new();
    let clean = ks.iter().filter(|k| k.clean()).count();
    let _ = writeln!(
        o,
        "# validate-kernel: {clean} of {} kernels clean\n",
        ks.len()
    );
    let _ = writeln!(
        o,
        "| id | release | attach mode | write side | read side | events | lost | write sections | PIN GUP-fast calls | protected overlaps | violations | verdict |"
    );
    let _ = writeln!(o, "|{}", "---|".repeat(12));
    for k in ks {
        let viol = if k.violations.is_empty() {
            "0".to_owned()
        } else {
            k.violations
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** |",
            k.id,
            k.release,
            k.attach_mode.as_deref().unwrap_or("-"),
            k.sites.write,
            k.sites.read,
            opt(k.events),
            opt(k.lost),
            opt(k.write_sections),
            opt(k.pin_calls),
            opt(k.protected_overlaps),
            viol,
            k.verdict
        );
    }
    let _ = writeln!(o);
    for k in ks {
        let rel = k.report.strip_prefix(root).unwrap_or(&k.report);
        match &k.problem {
            None => {
                let _ = writeln!(o, "- {}: clean; report {}", k.id, rel.display());
            }
            Some(why) => {
                let _ = writeln!(o, "- {}: **not clean**: {why}", k.id);
                if !k.report.as_os_str().is_empty() {
                    let _ = writeln!(o, "  report {}", rel.display());
                }
            }
        }
    }
    o
}

fn phase(t0: Instant, what: &str) {
    println!(
        "validate-kernel: [{:>4.0}s] {what}",
        t0.elapsed().as_secs_f64()
    );
}

pub fn run(a: &Args, modules: &[Option<PathBuf>]) -> Result<ExitCode> {
    if !(1..=3600).contains(&a.duration) {
        bail!(
            "--duration must be between 1 and 3600 seconds, got {}",
            a.duration
        );
    }
    let t0 = Instant::now();
    setup::setup()?;
    let tracer = build::static_tracer()?;
    phase(t0, "static tracer built");
    std::fs::create_dir_all(&a.report)
        .with_context(|| format!("creating {}", a.report.display()))?;

    // Resolve every kernel first (downloads), so ids can see all releases of the run.
    let mut fetched: Vec<(String, Result<kernels::Kernel>)> = Vec::new();
    for (spec, m) in a.kernels.iter().zip(modules) {
        phase(t0, &format!("resolving kernel {spec}"));
        fetched.push((spec.clone(), kernels::fetch(spec, m.as_deref())));
    }
    let ok: Vec<(String, PathBuf)> = fetched
        .iter()
        .filter_map(|(_, k)| k.as_ref().ok())
        .map(|k| (k.release.clone(), k.image.clone()))
        .collect();
    let mut ids = kernels::assign_ids(&ok, kernels::content_hash)?.into_iter();

    let mut results = Vec::new();
    let n = fetched.len();
    for (i, (spec, k)) in fetched.into_iter().enumerate() {
        let kernel = match k {
            Ok(k) => k,
            Err(e) => {
                results.push(KernelSummary::failed(
                    spec.as_str(),
                    "?",
                    Path::new(&spec),
                    format!("cannot get kernel {spec}: {e:#}"),
                ));
                continue;
            }
        };
        let id = ids.next().unwrap_or_else(|| kernel.release.clone());
        let out = a.report.join(&id);
        let _ = std::fs::remove_dir_all(&out);
        phase(
            t0,
            &format!(
                "[{}/{n}] {id}: booting, then `tracer check --duration {}`",
                i + 1,
                a.duration
            ),
        );
        let r = vm::run(&vm::VmOpts {
            kernel: &kernel,
            id: &id,
            tracer: &tracer,
            modules: vm::guest_modules(),
            script: guest_step(a.duration, "/out"),
            out: out.clone(),
            // Boot and discovery take a minute or two under TCG, validation a few seconds.
            timeout: Duration::from_secs(600 + 2 * a.duration),
            nokaslr: false,
            interactive: false,
            memory_mb: 1024,
            cpus: 2,
        });
        let _ = std::fs::remove_dir_all(out.join(".vm"));
        let k = match r {
            Ok(_) => collect(&id, &kernel.release, &kernel.image, &out, &out),
            Err(e) => KernelSummary::failed(&id, &kernel.release, &kernel.image, format!("{e:#}")),
        };
        phase(t0, &format!("[{}/{n}] {}", i + 1, k.line()));
        results.push(k);
    }
    std::fs::write(a.report.join("summary.json"), summary_json(&results)?)?;
    std::fs::write(a.report.join("summary.md"), summary_md(&results, &a.report))?;
    phase(
        t0,
        &format!("summary in {}", a.report.join("summary.md").display()),
    );
    for k in &results {
        println!("validate-kernel: {}", k.line());
    }
    Ok(if results.iter().all(KernelSummary::clean) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn modules_go_to_the_nearest_preceding_kernel() {
        let ks = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let ms = vec![PathBuf::from("/m1"), PathBuf::from("/m3")];
        // --kernel a --modules /m1 --kernel b --kernel c --modules /m3
        let p = pair_by_position(&[1, 5, 7], &[3, 9], &ms, &ks).unwrap();
        assert_eq!(p, vec![Some("/m1".into()), None, Some("/m3".into())]);
        let e = pair_by_position(&[3], &[1], &ms[..1], &ks[..1]).unwrap_err();
        assert!(e.to_string().contains("before any --kernel"), "{e}");
        let e = pair_by_position(&[1], &[3, 5], &ms, &ks[..1]).unwrap_err();
        assert!(e.to_string().contains("two --modules"), "{e}");
    }

    #[test]
    fn clap_reports_positions_the_pairing_can_use() {
        use clap::{CommandFactory as _, FromArgMatches as _, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        let m = Cli::command().get_matches_from([
            "x",
            "--kernel",
            "6.1",
            "--kernel",
            "/b/bzImage",
            "--modules",
            "/b/mods",
        ]);
        let cli = Cli::from_arg_matches(&m).unwrap();
        let p = modules_per_kernel(&m, &cli.a).unwrap();
        assert_eq!(p, vec![None, Some("/b/mods".into())]);
    }

    #[test]
    fn sides_come_from_sites_json() {
        let obj = json!({"sides":{"write":"intact","read":"retry_unconsumed"},"sites":[]});
        assert_eq!(
            sides(&obj),
            Sides {
                write: "intact".into(),
                read: "retry_unconsumed".into()
            }
        );
        assert_eq!(sides(&json!({})).write, "unknown");
        assert_eq!(sides(&json!([])).read, "unknown");
    }

    fn fixture(dir: &Path, rc: &str, verdict: Value) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("check.rc"), rc).unwrap();
        std::fs::write(
            dir.join("events.jsonl"),
            "{\"kind\":\"header\",\"schema\":1,\"mode\":\"instruction\"}\n{\"kind\":\"summary\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("sites.json"),
            json!({"sides":{"write":"intact","read":"intact"},"functions":[],"sites":[]})
                .to_string(),
        )
        .unwrap();
        std::fs::write(dir.join("verdict.json"), verdict.to_string()).unwrap();
    }

    #[test]
    fn summary_json_has_the_documented_shape() {
        let d = std::env::temp_dir().join(format!("xtask-vk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        fixture(
            &d.join("a"),
            "0\n",
            json!({"verdict":"clean","events":1234,"extra_field":[1],
                   "stats":{"write_sections":40,"pin_gup_fast":300,"protected_overlaps":27,
                            "lost":0,"violations_by_rule":{},"new_stat":5}}),
        );
        fixture(
            &d.join("b"),
            "1\n",
            json!({"verdict":"violations","events":99,
                   "stats":{"write_sections":4,"pin_gup_fast":3,"protected_overlaps":0,
                            "lost":0,"violations_by_rule":{"odd_not_bailed":2}}}),
        );
        fixture(
            &d.join("e"),
            "3\n",
            json!({"verdict":"inconclusive","events":50,
                   "missing_evidence":["no PIN GUP-fast call went through the read sites"],
                   "stats":{"write_sections":4,"pin_gup_fast":0,"protected_overlaps":0,
                            "lost":0,"violations_by_rule":{}}}),
        );
        let e = collect("e", "6.12.117", Path::new("/i"), &d.join("e"), &d.join("e"));
        assert_eq!(
            e.problem.as_deref(),
            Some("inconclusive: no PIN GUP-fast call went through the read sites")
        );
        let img = Path::new("/k/bzImage");
        let ks = vec![
            collect("a", "6.12.117", img, &d.join("a"), &d.join("a")),
            collect("b", "6.12.117", img, &d.join("b"), &d.join("b")),
            KernelSummary::failed("c", "6.1.0-57", img, "kernel c has no virtio_blk".into()),
        ];
        let v: Value = serde_json::from_str(&summary_json(&ks).unwrap()).unwrap();
        let list = v["kernels"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        let keys: Vec<&str> = list[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "id",
            "release",
            "image",
            "attach_mode",
            "sites",
            "events",
            "lost",
            "write_sections",
            "pin_calls",
            "protected_overlaps",
            "violations",
            "verdict",
        ];
        want.sort_unstable();
        assert_eq!(
            keys, want,
            "a clean kernel has exactly the documented fields"
        );
        assert_eq!(list[0]["sites"], json!({"write":"intact","read":"intact"}));
        assert_eq!(list[0]["attach_mode"], "instruction");
        assert_eq!(list[0]["events"], 1234);
        assert_eq!(list[0]["pin_calls"], 300);
        assert_eq!(list[0]["protected_overlaps"], 27);
        assert_eq!(list[0]["violations"], json!({}));
        assert_eq!(list[0]["verdict"], "clean");
        assert_eq!(list[1]["violations"], json!({"odd_not_bailed":2}));
        assert_eq!(list[1]["verdict"], "violations");
        assert!(
            list[1]["problem"]
                .as_str()
                .unwrap()
                .contains("odd_not_bailed 2")
        );
        assert_eq!(list[2]["verdict"], "error");
        assert_eq!(list[2]["events"], Value::Null);
        assert!(ks[0].clean() && !ks[1].clean() && !ks[2].clean());
        assert!(
            ks[2]
                .line()
                .contains("NOT clean: kernel c has no virtio_blk")
        );
        let md = summary_md(&ks, &d);
        assert!(
            md.starts_with("# validate-kernel: 1 of 3 kernels clean"),
            "{md}"
        );
        assert!(md.contains("| a | 6.12.117 | instruction | intact | intact | 1234 | 0 | 40 | 300 | 27 | 0 | **clean** |"), "{md}");
        assert!(
            md.contains("- b: **not clean**: violations: odd_not_bailed 2"),
            "{md}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_check_that_could_not_run_says_why() {
        let d = std::env::temp_dir().join(format!("xtask-vk2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("check.rc"), "2\n").unwrap();
        std::fs::write(
            d.join("check.log"),
            "check: ...\ntracer: this kernel cannot attach kprobes: CONFIG_KPROBES is off\n",
        )
        .unwrap();
        let k = collect("x", "6.12.1", Path::new("/i"), &d, &d);
        assert_eq!(k.verdict, "error");
        assert_eq!(
            k.problem.as_deref(),
            Some(
                "tracer check could not run: this kernel cannot attach kprobes: CONFIG_KPROBES is off"
            )
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_guest_step_keeps_the_status_and_the_output() {
        let s = guest_step(20, "/out/check");
        assert!(
            s.contains("tracer check --duration 20 --report /out/check; echo $? > /out/check.rc")
        );
        assert!(s.contains("| tee /out/check.log"));
    }
}
