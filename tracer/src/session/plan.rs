//! The attach plan: which mode the trace runs in (`--mode`), and everything that mode attaches
//! on this kernel, resolved before anything is loaded so that `--dry-run` can print it and a
//! trace never looks more complete than it is.
use anyhow::Result;

use super::TraceArgs;
use crate::{
    kernel::{btf::Btf, kallsyms::Kallsyms, target::Hook, tracepoints},
    probes::{self, AttachPlan, KernelSource, Mode, caps},
};

/// Builds the attach plan for the running kernel in the mode `args` asks for (`--mode auto`:
/// the richest that can run here, saying on stderr why richer ones could not).
pub fn plan(args: &TraceArgs) -> Result<AttachPlan> {
    let mut src = KernelSource::default();
    if let Some(b) = &args.btf {
        src.btf.clone_from(b);
    }
    let selected = caps::select(args.mode.wanted(), &src.btf)?;
    for s in &selected.skipped {
        eprintln!("tracer: --mode auto: not {s}");
    }
    if args.mode.wanted().is_none() {
        eprintln!("tracer: --mode auto: tracing in {} mode", selected.mode);
    }
    build(selected.mode, &src, !args.no_sites)
}

/// The plan for `mode`, with no capability checks (the caller made them).
pub fn build(mode: Mode, src: &KernelSource, with_sites: bool) -> Result<AttachPlan> {
    if mode == Mode::Tracepoint {
        return tracepoint_plan(src);
    }
    let (function, btf, ks) = probes::function_plan(src)?;
    let found = if mode == Mode::Fentry {
        SiteProbes {
            notes: vec![
                "fentry mode: instruction sites need kprobes; function-level probes only"
                    .to_owned(),
            ],
            ..SiteProbes::default()
        }
    } else if with_sites {
        site_probes(&function, &btf, &ks)
    } else {
        SiteProbes {
            notes: vec!["instruction sites not requested (--no-sites)".to_owned()],
            ..SiteProbes::default()
        }
    };
    Ok(AttachPlan {
        attach: mode,
        function,
        tracepoints: None,
        sites: found.sites,
        site_notes: found.notes,
        discovery: found.discovery,
        defects: found.defects,
        sites_complete: found.complete,
    })
}

/// The tracepoint mode needs BTF only: no kallsyms, no kernel code. Where the kernel's code
/// and symbols are readable anyway, discovery's account of it still goes into the header (and
/// a defect it proves is reported), though nothing is attached at the sites it finds.
fn tracepoint_plan(src: &KernelSource) -> Result<AttachPlan> {
    let btf = Btf::from_file(&src.btf)?;
    let function = crate::kernel::target::resolve_offsets(&btf, &src.release)?;
    let tp = tracepoints::resolve(&btf)?;
    let mut notes = vec![
        "tracepoint mode: no probes inside copy_page_range or GUP-fast; forks and pinning syscalls are seen from tracepoints".to_owned(),
    ];
    notes.extend(tp.missing.iter().cloned());
    let found = match Kallsyms::from_file(&src.kallsyms) {
        Ok(ks) => site_probes(&function, &btf, &ks),
        Err(e) => SiteProbes {
            notes: vec![e.to_string()],
            ..SiteProbes::default()
        },
    };
    // Sites found are not attached in this mode; only what discovery concluded is kept.
    if found.discovery.is_none() {
        let why = found
            .notes
            .first()
            .map(|n| {
                n.trim_start_matches("instruction sites: ")
                    .trim_end_matches("; function-level probes only")
                    .to_owned()
            })
            .unwrap_or_else(|| "no reason given".to_owned());
        notes.push(format!(
            "the kernel's code was not examined ({why}): proven defects cannot be reported"
        ));
    } else {
        notes.extend(
            found
                .notes
                .into_iter()
                .filter(|n| !n.contains("function-level probes only")),
        );
    }
    Ok(AttachPlan {
        attach: Mode::Tracepoint,
        function,
        tracepoints: Some(tp),
        sites: Vec::new(),
        site_notes: notes,
        discovery: found.discovery,
        defects: found.defects,
        sites_complete: false,
    })
}

#[derive(Default)]
struct SiteProbes {
    sites: Vec<probes::SiteProbe>,
    notes: Vec<String>,
    discovery: Option<serde_json::Value>,
    defects: Vec<String>,
    complete: bool,
}

/// Instruction-level sites for this kernel, found in its live machine code (`crate::sites`).
/// A function of a shape discovery does not know runs with function-level probes only; one
/// with a proven defect is probed where its parts remain, so the run shows the consequence.
/// Both go into the plan, the log header and stderr.
fn site_probes(
    function: &crate::kernel::target::FunctionPlan,
    btf: &crate::kernel::btf::Btf,
    ks: &crate::kernel::kallsyms::Kallsyms,
) -> SiteProbes {
    let code = match crate::kernel::image::ElfImage::kcore() {
        Ok(c) => c,
        Err(e) => {
            return SiteProbes {
                notes: vec![format!(
                    "instruction sites: cannot read the kernel's code from /proc/kcore ({e}); function-level probes only"
                )],
                ..SiteProbes::default()
            };
        }
    };
    let layout = match crate::sites::SiteLayout::resolve(btf, ks, Some(&function.release)) {
        Ok(l) => l,
        Err(e) => {
            return SiteProbes {
                notes: vec![format!(
                    "instruction sites: {e}; function-level probes only"
                )],
                ..SiteProbes::default()
            };
        }
    };
    let plan = crate::sites::discover(&code, ks, &layout);
    let mut notes: Vec<String> = plan
        .unknowns()
        .map(|(f, e)| {
            format!(
                "instruction sites in {}: {e}; function-level probes only there",
                f.symbol
            )
        })
        .collect();
    let defects = plan
        .defects()
        .map(|(f, d)| format!("{}: {}: {}", f.symbol, d.defect.name(), d.why))
        .collect();
    let mut sites = Vec::new();
    for s in &plan.sites {
        let (probe, note) = probes::placement::place(s, &code, ks);
        sites.push(probe);
        notes.extend(note);
    }
    SiteProbes {
        sites,
        notes,
        discovery: Some(plan.discovery_json()),
        defects,
        complete: plan.complete(),
    }
}

/// Human-readable attach plan.
pub fn plan_text(plan: &AttachPlan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kernel {}: {} mode (attach: {})",
        plan.function.release,
        plan.mode(),
        plan.attach
    );
    let _ = writeln!(out, "  sees: {}", plan.attach.sees());
    let _ = writeln!(out, "  cannot see: {}", plan.attach.misses());
    for h in plan.tracepoints.iter().flat_map(|t| &t.hooks) {
        let _ = writeln!(
            out,
            "  {:<14} {:<36} {}",
            h.probe.name(),
            format!("raw_tp:{}", h.tracepoint),
            h.reason
        );
    }
    for p in &plan.function.probes {
        let prefix = match (plan.attach, p.hook) {
            (_, Hook::RawTracepoint) => "raw_tp:",
            (Mode::Fentry, Hook::Entry) => "fentry:",
            (Mode::Fentry, Hook::Return) => "fexit:",
            (_, Hook::Return) => "ret:",
            (_, Hook::Entry) => "    ",
        };
        // As wide as the instruction sites' column below, so that the reasons line up.
        let _ = writeln!(
            out,
            "  {:<14} {:<36} {}",
            p.probe.name(),
            format!("{prefix}{}", p.symbol),
            p.reason
        );
    }
    for s in &plan.sites {
        let how = match s.read {
            probes::SiteRead::Memory(r, d) => format!(
                "reads {d:#x}(%{}) before the instruction executes",
                crate::sites::reg_name(r)
            ),
            probes::SiteRead::Loaded(r) => format!(
                "reads %{} right after the load: the value the kernel loaded",
                crate::sites::reg_name(r)
            ),
            probes::SiteRead::Marker => "reads current->mm's seqcount there".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {:<14}     {:<32} {how}",
            s.probe.name(),
            format!("{}+{:#x}", s.symbol, s.offset)
        );
    }
    let o = &plan.function.offsets;
    let _ = writeln!(
        out,
        "  offsets: task_struct.mm={} mm_struct.write_protect_seq.sequence={} vm_area_struct.{{vm_mm={} vm_flags={} vm_start={} vm_end={}}}",
        o.task_mm, o.mm_seq, o.vma_mm, o.vma_flags, o.vma_start, o.vma_end
    );
    let f = &plan.function.foll;
    let _ = writeln!(
        out,
        "  FOLL_PIN={:#x} FOLL_FAST_ONLY={:#x} FOLL_LONGTERM={:#x} (from {})",
        f.pin,
        f.fast_only,
        f.longterm,
        f.source.as_str()
    );
    for m in plan.function.missing.iter().chain(&plan.site_notes) {
        let _ = writeln!(out, "  missing: {m}");
    }
    for d in &plan.defects {
        let _ = writeln!(out, "  DEFECT: {d}");
    }
    out
}

/// Says on stderr, before tracing starts, what discovery could not prove and what it found
/// broken: a trace must never look complete when it is not.
pub fn warn_plan(plan: &AttachPlan) {
    for d in &plan.defects {
        eprintln!("tracer: DEFECT in this kernel's code: {d}");
    }
    for n in &plan.site_notes {
        eprintln!("tracer: {n}");
    }
    if plan.mode() != "instruction" {
        eprintln!(
            "tracer: attach mode {}: the verdict on this trace cannot be clean",
            plan.mode()
        );
    }
}
