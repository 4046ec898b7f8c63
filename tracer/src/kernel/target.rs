//! The function-level attach plan: which kernel functions the probes attach to on this kernel,
//! and the struct offsets the programs need, all resolved from kallsyms and BTF.
use thiserror::Error;
use tracer_common::{Offsets, Probe};

use super::{
    btf::{Btf, BtfError},
    foll::{FollError, FollFlags, parse_release},
    kallsyms::Kallsyms,
};

#[derive(Debug, Error)]
pub enum TargetError {
    #[error(
        "this kernel has no mm_struct.write_protect_seq: it predates the fork/GUP-fast seqcount (Linux 5.11, backported to 5.10.y), so there is no such protection to observe"
    )]
    NoProtection,
    #[error("BTF: {0}")]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Foll(#[from] FollError),
    #[error("the kernel has no {0} symbol in kallsyms (is this a kernel with the seqcount?)")]
    NoSymbol(&'static str),
    #[error("no GUP-fast function found: none of {0} is in kallsyms")]
    NoGup(String),
}

/// Where a function-level probe's program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Function entry (kprobe, or fentry in fentry mode).
    Entry,
    /// Function return (kretprobe, or fexit).
    Return,
    /// A raw tracepoint, in every mode: no call site to patch, and cheaper than a kprobe.
    RawTracepoint,
}

impl Hook {
    /// As `tracer sites --json` names it.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Entry => "entry",
            Hook::Return => "return",
            Hook::RawTracepoint => "raw_tracepoint",
        }
    }
}

/// One function-level probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionProbe {
    pub probe: Probe,
    /// The function, or the tracepoint for [`Hook::RawTracepoint`].
    pub symbol: String,
    pub hook: Hook,
    /// Why this target was chosen.
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct FunctionPlan {
    pub release: String,
    pub offsets: Offsets,
    pub foll: FollFlags,
    pub probes: Vec<FunctionProbe>,
    /// Things this kernel lacks, each a sentence.
    pub missing: Vec<String>,
    /// The function the GUP-fast probes attach to, where instruction sites are searched.
    pub gup_symbol: String,
}

/// GUP-fast entry points, newest names first: (symbol, is the inlined body itself, second arg
/// is `end` rather than `nr_pages`).
const GUP_CANDIDATES: [(&str, bool); 4] = [
    ("gup_fast", true),
    ("lockless_pages_from_mm", true),
    ("gup_fast_fallback", false),
    ("internal_get_user_pages_fast", false),
];

fn param_index(btf: &Btf, func: &str, param: &str, default: u32) -> u32 {
    btf.func_params(func)
        .ok()
        .and_then(|ps| ps.iter().position(|p| p == param))
        .map_or(default, |i| i as u32)
}

/// Offset of `mm_struct.write_protect_seq.sequence`; an error naming the missing protection on
/// kernels that predate it.
pub fn seq_offset(btf: &Btf) -> Result<u32, TargetError> {
    if !btf.has_member("mm_struct", "write_protect_seq") {
        return Err(TargetError::NoProtection);
    }
    Ok(btf.member_offset("mm_struct", "write_protect_seq")?
        + btf.member_offset("seqcount", "sequence")?)
}

/// The plan without function probes, for the tracepoint mode: the offsets every program uses
/// and the FOLL_* values, nothing from kallsyms.
pub fn resolve_offsets(btf: &Btf, release: &str) -> Result<FunctionPlan, TargetError> {
    let offsets = Offsets {
        task_mm: btf.member_offset("task_struct", "mm")?,
        mm_seq: seq_offset(btf)?,
        vma_mm: btf.member_offset("vm_area_struct", "vm_mm")?,
        vma_flags: btf.member_offset("vm_area_struct", "vm_flags")?,
        vma_start: btf.member_offset("vm_area_struct", "vm_start")?,
        vma_end: btf.member_offset("vm_area_struct", "vm_end")?,
        vma_anon_vma: btf.member_offset("vm_area_struct", "anon_vma")?,
        cpr_vma_arg: 1,
        hugetlb_vma_arg: 3,
        gup_arg_is_end: 0,
    };
    Ok(FunctionPlan {
        release: release.to_owned(),
        offsets,
        foll: FollFlags::for_kernel(Some(btf), release)?,
        probes: Vec::new(),
        missing: Vec::new(),
        gup_symbol: String::new(),
    })
}

/// Resolves the plan for a kernel described by its BTF, kallsyms and release string.
pub fn resolve(btf: &Btf, ks: &Kallsyms, release: &str) -> Result<FunctionPlan, TargetError> {
    let mm_seq = seq_offset(btf)?;
    let mut missing = Vec::new();

    let cpr = ks
        .get_function("copy_page_range")
        .ok_or(TargetError::NoSymbol("copy_page_range"))?
        .name
        .clone();
    let cpr_vma_arg = param_index(btf, "copy_page_range", "src_vma", 1);
    let mut probes = vec![
        FunctionProbe {
            probe: Probe::CprEnter,
            symbol: cpr.clone(),
            hook: Hook::Entry,
            reason: "fork copies each VMA's page tables here; the write section is inside".into(),
        },
        FunctionProbe {
            probe: Probe::CprExit,
            symbol: cpr.clone(),
            hook: Hook::Return,
            reason: "seq after the copy: +2 for a COW VMA with page tables".into(),
        },
    ];

    let version = parse_release(release)?;
    let hugetlb_vma_arg = param_index(btf, "copy_hugetlb_page_range", "src_vma", 3);
    let hugetlb = ks.get_function("copy_hugetlb_page_range");
    if let Some(h) = hugetlb.filter(|_| version >= (5, 19)) {
        for (probe, hook) in [
            (Probe::HugetlbEnter, Hook::Entry),
            (Probe::HugetlbExit, Hook::Return),
        ] {
            probes.push(FunctionProbe {
                probe,
                symbol: h.name.clone(),
                hook,
                reason: "hugetlb VMAs take their own write section since 5.19".into(),
            });
        }
    } else {
        missing.push(
            "copy_hugetlb_page_range: absent, or before 5.19 where it does not write the seqcount"
                .into(),
        );
    }

    let (gup_symbol, gup_is_body) = GUP_CANDIDATES
        .iter()
        .find_map(|(name, body)| ks.get_function(name).map(|s| (s.name.clone(), *body)))
        .ok_or_else(|| {
            TargetError::NoGup(
                GUP_CANDIDATES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
    let why = if gup_is_body {
        format!("{gup_symbol} is a real symbol: the seqcount read side itself")
    } else {
        format!(
            "{gup_symbol}: GUP-fast ({}) is inlined into it",
            if version >= (6, 10) {
                "gup_fast"
            } else {
                "lockless_pages_from_mm"
            }
        )
    };
    probes.push(FunctionProbe {
        probe: Probe::GupEnter,
        symbol: gup_symbol.clone(),
        hook: Hook::Entry,
        reason: why.clone(),
    });
    probes.push(FunctionProbe {
        probe: Probe::GupExit,
        symbol: gup_symbol.clone(),
        hook: Hook::Return,
        reason: why,
    });

    // The exit_mmap tracepoint (6.1+) rather than a kprobe on __mmdrop: __mmdrop is called
    // from the scheduler on every task switch away from a dead task, so patching its entry
    // in and out puts the tracer on the hottest path there is (a 6.1 guest under TCG once
    // called through a half-patched __mmdrop at detach and panicked). No task can report an
    // mm after exit_mmap, so it ends the mm's name as well as __mmdrop does.
    if btf.has_tracepoint("exit_mmap") {
        probes.push(FunctionProbe {
            probe: Probe::MmFree,
            symbol: "exit_mmap".into(),
            hook: Hook::RawTracepoint,
            reason: "mm teardown: keeps mm names unique when an address is reused".into(),
        });
    } else if ks.get("__mmdrop").is_some() {
        probes.push(FunctionProbe {
            probe: Probe::MmFree,
            symbol: "__mmdrop".into(),
            hook: Hook::Entry,
            reason: "mm teardown (no exit_mmap tracepoint before 6.1): keeps mm names unique when an address is reused".into(),
        });
    } else {
        missing.push(
            "exit_mmap tracepoint and __mmdrop: no mm teardown probe; a reused mm address keeps its name"
                .into(),
        );
    }

    let offsets = Offsets {
        task_mm: btf.member_offset("task_struct", "mm")?,
        mm_seq,
        vma_mm: btf.member_offset("vm_area_struct", "vm_mm")?,
        vma_flags: btf.member_offset("vm_area_struct", "vm_flags")?,
        vma_start: btf.member_offset("vm_area_struct", "vm_start")?,
        vma_end: btf.member_offset("vm_area_struct", "vm_end")?,
        vma_anon_vma: btf.member_offset("vm_area_struct", "anon_vma")?,
        cpr_vma_arg,
        hugetlb_vma_arg,
        gup_arg_is_end: u32::from(gup_is_body),
    };
    Ok(FunctionPlan {
        release: release.to_owned(),
        offsets,
        foll: FollFlags::for_kernel(Some(btf), release)?,
        probes,
        missing,
        gup_symbol,
    })
}
