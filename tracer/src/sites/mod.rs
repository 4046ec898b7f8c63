//! Instruction-level sites of the `mm->write_protect_seq` protocol, found in kernel machine code
//! without debug info.
//!
//! The seqcount operations are inlined, so function probes only bracket them. This module reads
//! the machine code of the functions that hold them (from `/proc/kcore`, a vmlinux or a bzImage),
//! decodes it ([`func`]), works out where every register's value comes from ([`flow`]), and
//! recognises ([`find`]):
//! - in `copy_page_range` / `copy_hugetlb_page_range`: the two increments of the source mm's
//!   seqcount (`write_begin`, `write_end`), told apart from look-alikes by the base register
//!   holding `src_vma->vm_mm` (or the `src` mm argument) on every path;
//! - in the GUP-fast function: the load of `current->mm`'s seqcount before the page-table walk
//!   (`read_begin`), the one after it (`read_retry`), the je/jne consuming their comparison, and
//!   the first instruction of the back-out block taken when the value changed (`retry_fail`).
//!
//! Anything it cannot prove is refused with the reason ([`SiteError`]); the caller then probes
//! that function at entry and exit only. See docs/sites.md.
mod find;
mod flow;
mod func;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use iced_x86::{Formatter as _, GasFormatter, Instruction, Register};
use serde::Serialize;
use thiserror::Error;
use tracer_common::{Probe, Reg, SiteConfig};

use crate::kernel::{
    btf::{Btf, BtfError},
    image::{CodeSource, ElfImage, ImageError},
    kallsyms::Kallsyms,
    target::Hook,
};
use find::reg_lower;
use flow::{Ctx, Flow, Val};
use func::Func;

/// Functions longer than this are not read (kallsyms sizes are distances to the next symbol; a
/// huge one means the next symbol is missing, not a huge function).
const MAX_FUNC_SIZE: u64 = 1 << 16;

/// Kernel functions that never return (the ones objtool also treats so, as far as they can be
/// called from mm code). A call to one ends its path; missing one here only merges an
/// impossible path, which can make discovery refuse, never accept wrongly.
const NORETURN: [&str; 18] = [
    "__stack_chk_fail",
    "__fortify_panic",
    "fortify_panic",
    "__ubsan_handle_builtin_unreachable",
    "__ubsan_handle_invalid_builtin",
    "panic",
    "nmi_panic_self_stop",
    "do_exit",
    "do_group_exit",
    "do_task_dead",
    "make_task_dead",
    "kthread_exit",
    "kthread_complete_and_exit",
    "__module_put_and_kthread_exit",
    "usercopy_abort",
    "machine_real_restart",
    "rewind_stack_and_make_dead",
    "stop_this_cpu",
];

/// Why a function yielded no sites. Each is a finding about the kernel build or the input.
#[derive(Debug, Error)]
pub enum SiteError {
    #[error("{symbol} is not in kallsyms")]
    NoSymbol { symbol: String },
    #[error("{symbol}: kallsyms gives no usable size ({size:?}), so its code cannot be delimited")]
    NoSize { symbol: String, size: Option<u64> },
    #[error("{symbol}: cannot read its machine code: {error}")]
    Code { symbol: String, error: ImageError },
    #[error("{symbol}: the machine code does not decode unambiguously: {why}")]
    Decode { symbol: String, why: String },
    #[error(
        "{symbol}: a breakpoint (int3) sits at +{offset:#x}, so another kprobe is attached there; detach it and run again"
    )]
    Breakpoint { symbol: String, offset: u64 },
    #[error("{symbol}: not found: {what}")]
    NotFound {
        symbol: String,
        what: String,
        notes: Vec<String>,
    },
    #[error("{symbol}: ambiguous: {why}")]
    Ambiguous { symbol: String, why: String },
    #[error("{symbol}: unexpected code: {why}")]
    Unexpected { symbol: String, why: String },
    #[error("{symbol}: the retry check is dead in this kernel (retry load at +{retry:#x}): {why}")]
    RetryUnconsumed {
        symbol: String,
        retry: u64,
        why: String,
    },
    #[error("{symbol}: no back-out block after the retry check: {why}")]
    MissingBackout { symbol: String, why: String },
    #[error(
        "{symbol}: the access at +{offset:#x} goes through {reg}, which the BPF side cannot read from pt_regs"
    )]
    BadBase {
        symbol: String,
        offset: u64,
        reg: String,
    },
}

/// Why the layout (offsets, per-cpu address of `current`) could not be resolved.
#[derive(Debug, Error)]
pub enum LayoutError {
    #[error("BTF: {0}")]
    Btf(#[from] BtfError),
    #[error(
        "cannot locate the current task pointer: kallsyms has neither a current_task nor a pcpu_hot per-cpu symbol"
    )]
    NoCurrentTask,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    WriteBegin,
    WriteEnd,
    ReadBegin,
    ReadRetry,
    RetryFail,
}

impl SiteKind {
    pub fn name(self) -> &'static str {
        self.probe().name()
    }
    pub fn probe(self) -> Probe {
        match self {
            SiteKind::WriteBegin => Probe::WriteBegin,
            SiteKind::WriteEnd => Probe::WriteEnd,
            SiteKind::ReadBegin => Probe::ReadBegin,
            SiteKind::ReadRetry => Probe::ReadRetry,
            SiteKind::RetryFail => Probe::RetryFail,
        }
    }
}

/// One proven instruction: a kprobe at `symbol+offset` fires before it executes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub kind: SiteKind,
    pub symbol: String,
    pub offset: u64,
    pub addr: u64,
    /// The instruction, AT&T syntax.
    pub insn: String,
    /// Base register of the seqcount access; `None` for `retry_fail` (the BPF side reads
    /// `current->mm` there).
    pub base: Option<Reg>,
    /// Displacement of the access (`mm_struct.write_protect_seq.sequence`); 0 for `retry_fail`.
    pub disp: i32,
    pub evidence: String,
}

impl Site {
    /// The eBPF slot configuration for this site, probed on the instruction itself.
    pub fn config(&self) -> SiteConfig {
        let probe = self.kind.probe();
        SiteConfig {
            probe: probe as u8,
            base: self.base.map_or(0, |r| r as u8),
            mode: if self.base.is_some() {
                tracer_common::site_mode::MEMORY
            } else {
                tracer_common::site_mode::MARKER
            },
            func: self.call(),
            stage: tracer_common::site_stage(probe).unwrap_or(0),
            _pad: [0; 3],
            disp: self.disp,
        }
    }

    /// The call (`tracer_common::call`) whose record this site's event joins: the function
    /// it is in.
    pub fn call(&self) -> u8 {
        use tracer_common::call;
        match self.kind {
            SiteKind::ReadBegin | SiteKind::ReadRetry | SiteKind::RetryFail => call::GUP,
            SiteKind::WriteBegin | SiteKind::WriteEnd
                if self.symbol.starts_with("copy_hugetlb_page_range") =>
            {
                call::HUGETLB
            }
            SiteKind::WriteBegin | SiteKind::WriteEnd => call::CPR,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds a write section (`copy_page_range`, `copy_hugetlb_page_range`).
    Write,
    /// Holds the GUP-fast read side.
    Read,
}

impl Role {
    pub const fn name(self) -> &'static str {
        match self {
            Role::Write => "write",
            Role::Read => "read",
        }
    }
}

/// A way the protocol is broken in a kernel build, proven from its machine code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Defect {
    /// The begin value is loaded, but no branch on its low bit leads to a return without pins.
    OddCheckMissing,
    /// Nothing depends on the retry comparison (or there is no retry load): no back-out.
    RetryUnconsumed,
    /// The retry compares loads taken after the walk instead of the begin value.
    RetryStale,
    /// The retry's changed side returns without releasing the pins the walk took.
    BackoutMissing,
    /// GUP-fast never loads the seqcount.
    ReadMissing,
    /// The writer's increments are missing, unpaired, or do not enclose the copy.
    WriteUnpaired,
}

impl Defect {
    pub const ALL: [Defect; 6] = [
        Defect::OddCheckMissing,
        Defect::RetryUnconsumed,
        Defect::RetryStale,
        Defect::BackoutMissing,
        Defect::ReadMissing,
        Defect::WriteUnpaired,
    ];

    /// The name in reports, logs and exit messages.
    pub const fn name(self) -> &'static str {
        match self {
            Defect::OddCheckMissing => "odd_check_missing",
            Defect::RetryUnconsumed => "retry_unconsumed",
            Defect::RetryStale => "retry_stale",
            Defect::BackoutMissing => "backout_missing",
            Defect::ReadMissing => "read_missing",
            Defect::WriteUnpaired => "write_unpaired",
        }
    }

    pub fn from_name(s: &str) -> Option<Defect> {
        Defect::ALL.into_iter().find(|d| d.name() == s)
    }

    pub const fn role(self) -> Role {
        match self {
            Defect::WriteUnpaired => Role::Write,
            _ => Role::Read,
        }
    }
}

impl Serialize for Defect {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One instruction offered as evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Byte offset in the function.
    pub offset: u64,
    /// The instruction, AT&T syntax.
    pub insn: String,
    /// What it shows.
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DefectFinding {
    pub defect: Defect,
    pub why: String,
    pub evidence: Vec<Evidence>,
}

/// What discovery concluded about one function.
#[derive(Debug)]
pub enum Status {
    /// Every part of the protocol proven.
    Intact,
    /// The protocol is broken here, in these ways (never empty). Whatever parts remain are
    /// still probed, so that a run shows the consequence.
    Defects(Vec<DefectFinding>),
    /// The code matches no shape this tool knows (or could not be read): no sites.
    Unknown(SiteError),
}

impl Status {
    pub const fn name(&self) -> &'static str {
        match self {
            Status::Intact => "intact",
            Status::Defects(_) => "defect",
            Status::Unknown(_) => "unknown",
        }
    }
}

/// What discovery made of one function.
#[derive(Debug)]
pub struct FunctionReport {
    pub symbol: String,
    pub role: Role,
    /// Whether the kernel must have these sites (false: e.g. hugetlb before 5.19).
    pub required: bool,
    pub status: Status,
    /// The sites this function contributes to the plan: all of them when intact, what remains
    /// when defective, none when unknown.
    pub sites: Vec<SiteKind>,
    /// Look-alikes rejected and other observations.
    pub notes: Vec<String>,
}

impl FunctionReport {
    /// The error of an unknown function.
    pub fn unknown(&self) -> Option<&SiteError> {
        match &self.status {
            Status::Unknown(e) => Some(e),
            _ => None,
        }
    }
    pub fn defects(&self) -> &[DefectFinding] {
        match &self.status {
            Status::Defects(d) => d,
            _ => &[],
        }
    }
}

/// The verdict of discovery on one side of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideStatus {
    Intact,
    /// The first defect proven on this side.
    Defect(Defect),
    Unknown,
}

impl SideStatus {
    pub const fn name(self) -> &'static str {
        match self {
            SideStatus::Intact => "intact",
            SideStatus::Defect(d) => d.name(),
            SideStatus::Unknown => "unknown",
        }
    }
}

/// The discovery result.
#[derive(Debug, Default)]
pub struct Plan {
    pub sites: Vec<Site>,
    pub functions: Vec<FunctionReport>,
}

impl Plan {
    /// Functions whose sites the kernel must have but whose code this tool could not prove
    /// either way.
    pub fn unknowns(&self) -> impl Iterator<Item = (&FunctionReport, &SiteError)> {
        self.functions
            .iter()
            .filter(|f| f.required)
            .filter_map(|f| f.unknown().map(|e| (f, e)))
    }
    /// Every defect proven, with its function.
    pub fn defects(&self) -> impl Iterator<Item = (&FunctionReport, &DefectFinding)> {
        self.functions
            .iter()
            .flat_map(|f| f.defects().iter().map(move |d| (f, d)))
    }
    /// Every required function is intact.
    pub fn complete(&self) -> bool {
        self.functions
            .iter()
            .all(|f| !f.required || matches!(f.status, Status::Intact))
    }
    pub fn site(&self, kind: SiteKind, symbol: &str) -> Option<&Site> {
        self.sites
            .iter()
            .find(|s| s.kind == kind && s.symbol == symbol)
    }
    /// One word for a side: a proven defect wins, then unknown, else intact.
    pub fn side(&self, role: Role) -> SideStatus {
        let fs = || self.functions.iter().filter(|f| f.role == role);
        if let Some(d) = fs().flat_map(|f| f.defects()).next() {
            return SideStatus::Defect(d.defect);
        }
        if fs().any(|f| f.required && f.unknown().is_some()) {
            return SideStatus::Unknown;
        }
        SideStatus::Intact
    }

    /// The machine-readable account used by `tracer sites --json` and the log header.
    pub fn discovery_json(&self) -> serde_json::Value {
        let functions: Vec<serde_json::Value> = self
            .functions
            .iter()
            .map(|f| {
                let status = match (&f.status, f.required) {
                    (Status::Unknown(_), false) => "absent",
                    (s, _) => s.name(),
                };
                serde_json::json!({
                    "symbol": f.symbol,
                    "role": f.role.name(),
                    "required": f.required,
                    "status": status,
                    "defects": f.defects(),
                    "reason": f.unknown().map(ToString::to_string),
                    "sites": f.sites.iter().map(|k| k.name()).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "sides": {
                "write": self.side(Role::Write).name(),
                "read": self.side(Role::Read).name(),
            },
            "functions": functions,
        })
    }
}

/// Where a write function's mm comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmOrigin {
    /// The `index`-th argument is the mm itself (`copy_hugetlb_page_range`'s `src`).
    Arg { index: u8, name: String },
    /// The mm is loaded from `offset` in the `index`-th argument (`src_vma->vm_mm`).
    ArgField {
        index: u8,
        offset: u32,
        name: String,
    },
}

impl MmOrigin {
    fn val(&self) -> Val {
        match self {
            MmOrigin::Arg { index, .. } => Val::Arg(*index),
            MmOrigin::ArgField { index, offset, .. } => {
                Val::Load(Box::new(Val::Arg(*index)), i64::from(*offset))
            }
        }
    }
    fn name(&self) -> &str {
        match self {
            MmOrigin::Arg { name, .. } | MmOrigin::ArgField { name, .. } => name,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterSpec {
    pub symbol: String,
    /// Accepted origins of the base register (any of them, on every path).
    pub mm: Vec<MmOrigin>,
    pub required: bool,
}

/// What discovery needs to know about the kernel: offsets from BTF, where `current` lives, and
/// which functions to search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteLayout {
    /// `mm_struct.write_protect_seq` + `seqcount.sequence`.
    pub mm_seq: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// Per-cpu address of the current task pointer (`%gs:` displacement).
    pub current_task: u64,
    pub writers: Vec<WriterSpec>,
    /// GUP-fast candidates, in order of preference; the first one in kallsyms is searched.
    pub readers: Vec<String>,
}

/// GUP-fast function names: the inlined bodies where they are real symbols, then the functions
/// they are inlined into (6.10+ names first).
pub const READER_CANDIDATES: [&str; 4] = [
    "gup_fast",
    "lockless_pages_from_mm",
    "gup_fast_fallback",
    "internal_get_user_pages_fast",
];

fn param_index(btf: &Btf, func: &str, param: &str) -> Option<u8> {
    btf.func_params(func)
        .ok()?
        .iter()
        .position(|p| p == param)
        .and_then(|i| u8::try_from(i).ok())
}

impl SiteLayout {
    /// The layout of the kernel described by `btf` and `ks`. `release` (e.g. `6.1.0-56-cloud-amd64`)
    /// decides whether `copy_hugetlb_page_range` must have a write section (5.19+); unknown
    /// means it is searched but not required.
    pub fn resolve(
        btf: &Btf,
        ks: &Kallsyms,
        release: Option<&str>,
    ) -> Result<SiteLayout, LayoutError> {
        let mm_seq = btf.member_offset("mm_struct", "write_protect_seq")?
            + btf.member_offset("seqcount", "sequence")?;
        let task_mm = btf.member_offset("task_struct", "mm")?;
        let vma_mm = btf.member_offset("vm_area_struct", "vm_mm")?;
        let current_task = match ks.get("current_task") {
            Some(s) => s.addr,
            None => {
                let hot = ks.get("pcpu_hot").ok_or(LayoutError::NoCurrentTask)?;
                hot.addr + u64::from(btf.member_offset("pcpu_hot", "current_task")?)
            }
        };
        // copy_page_range(dst_vma, src_vma) since 5.10.
        let cpr_src = param_index(btf, "copy_page_range", "src_vma").unwrap_or(1);
        let mut writers = vec![WriterSpec {
            symbol: "copy_page_range".into(),
            mm: vec![MmOrigin::ArgField {
                index: cpr_src,
                offset: vma_mm,
                name: "src_vma->vm_mm".into(),
            }],
            required: true,
        }];
        if ks.get_function("copy_hugetlb_page_range").is_some() {
            // copy_hugetlb_page_range(dst, src, dst_vma, src_vma) since 5.19.
            let f = "copy_hugetlb_page_range";
            let mut mm = vec![MmOrigin::Arg {
                index: param_index(btf, f, "src").unwrap_or(1),
                name: "src".into(),
            }];
            if let Some(i) = param_index(btf, f, "src_vma").or(Some(3)) {
                mm.push(MmOrigin::ArgField {
                    index: i,
                    offset: vma_mm,
                    name: "src_vma->vm_mm".into(),
                });
            }
            let required = release
                .and_then(|r| crate::kernel::foll::parse_release(r).ok())
                .is_some_and(|v| v >= (5, 19));
            writers.push(WriterSpec {
                symbol: f.into(),
                mm,
                required,
            });
        }
        Ok(SiteLayout {
            mm_seq,
            task_mm,
            current_task,
            writers,
            readers: READER_CANDIDATES.iter().map(|s| (*s).to_owned()).collect(),
        })
    }
}

pub(crate) fn to_reg(r: Register) -> Option<Reg> {
    Some(match r {
        Register::R15 => Reg::R15,
        Register::R14 => Reg::R14,
        Register::R13 => Reg::R13,
        Register::R12 => Reg::R12,
        Register::RBP => Reg::Rbp,
        Register::RBX => Reg::Rbx,
        Register::R11 => Reg::R11,
        Register::R10 => Reg::R10,
        Register::R9 => Reg::R9,
        Register::R8 => Reg::R8,
        Register::RAX => Reg::Rax,
        Register::RCX => Reg::Rcx,
        Register::RDX => Reg::Rdx,
        Register::RSI => Reg::Rsi,
        Register::RDI => Reg::Rdi,
        _ => return None,
    })
}

/// The register's name as the BPF side and the output spell it.
pub fn reg_name(r: Reg) -> &'static str {
    match r {
        Reg::R15 => "r15",
        Reg::R14 => "r14",
        Reg::R13 => "r13",
        Reg::R12 => "r12",
        Reg::Rbp => "rbp",
        Reg::Rbx => "rbx",
        Reg::R11 => "r11",
        Reg::R10 => "r10",
        Reg::R9 => "r9",
        Reg::R8 => "r8",
        Reg::Rax => "rax",
        Reg::Rcx => "rcx",
        Reg::Rdx => "rdx",
        Reg::Rsi => "rsi",
        Reg::Rdi => "rdi",
    }
}

thread_local! {
    /// The kernel's symbols while [`discover`] runs on this thread: instructions are printed
    /// with `symbol+offset` for kernel addresses, so that no report or log header carries a
    /// raw kernel address (they defeat KASLR).
    static SYMBOLS: std::cell::RefCell<Option<Kallsyms>> = const { std::cell::RefCell::new(None) };
}

/// Names kernel addresses in operands (branch and call targets, absolute data) by the
/// kallsyms of the current discovery; an address it cannot name is shown as `<kernel address>`.
struct Symbolizer;

impl iced_x86::SymbolResolver for Symbolizer {
    fn symbol(
        &mut self,
        _: &Instruction,
        _: u32,
        _: Option<u32>,
        address: u64,
        _: u32,
    ) -> Option<iced_x86::SymbolResult<'_>> {
        if address < KERNEL_SPACE {
            return None;
        }
        let name = SYMBOLS.with(|s| {
            s.borrow().as_ref().and_then(|ks| {
                ks.containing(address).map(|sym| {
                    let off = address - sym.addr;
                    if off == 0 {
                        sym.name.clone()
                    } else {
                        format!("{}+{off:#x}", sym.name)
                    }
                })
            })
        });
        Some(iced_x86::SymbolResult::with_string(
            address,
            name.unwrap_or_else(|| "<kernel address>".to_owned()),
        ))
    }
}

/// The lowest kernel-space address on x86-64.
const KERNEL_SPACE: u64 = 0xffff_8000_0000_0000;

/// An instruction in AT&T syntax, kernel addresses named (see [`Symbolizer`]).
pub(crate) fn att(ins: &Instruction) -> String {
    let mut out = String::new();
    let mut f = GasFormatter::with_options(Some(Box::new(Symbolizer)), None);
    f.options_mut().set_uppercase_hex(false);
    f.format(ins, &mut out);
    out
}

struct Analysed {
    func: Func,
    flow: Flow,
}

fn analyse(
    code: &dyn CodeSource,
    ks: &Kallsyms,
    symbol: &str,
    ctx: &Ctx,
) -> Result<Analysed, SiteError> {
    let sym = ks.get_function(symbol).ok_or_else(|| SiteError::NoSymbol {
        symbol: symbol.to_owned(),
    })?;
    let size = match sym.size {
        Some(s) if s > 0 && s <= MAX_FUNC_SIZE => s,
        other => {
            return Err(SiteError::NoSize {
                symbol: symbol.to_owned(),
                size: other,
            });
        }
    };
    let noreturn = |addr: u64| {
        ks.containing(addr)
            .is_some_and(|s| s.addr == addr && NORETURN.contains(&s.name.as_str()))
    };
    let func = Func::load(code, symbol, sym.addr, size, &noreturn)?;
    let flow = Flow::run(&func, ctx);
    Ok(Analysed { func, flow })
}

fn memory_site(
    a: &Analysed,
    kind: SiteKind,
    acc: &find::Access,
    evidence: String,
) -> Result<Site, SiteError> {
    let ins = &a.func.insns[acc.idx];
    let offset = a.func.offset(acc.idx);
    let base = to_reg(acc.base).ok_or_else(|| SiteError::BadBase {
        symbol: a.func.symbol.clone(),
        offset,
        reg: reg_lower(acc.base),
    })?;
    let disp = i32::try_from(acc.disp).map_err(|_| SiteError::BadBase {
        symbol: a.func.symbol.clone(),
        offset,
        reg: format!("a displacement of {:#x}", acc.disp),
    })?;
    Ok(Site {
        kind,
        symbol: a.func.symbol.clone(),
        offset,
        addr: ins.ip(),
        insn: att(ins),
        base: Some(base),
        disp,
        evidence,
    })
}

/// Functions that release pins: a back-out block must call one of them. Names are compared
/// without the compiler's clone suffixes (`.constprop.0`, `.isra.0`, `.llvm.123`). Where the
/// unpin is inlined (clang inlines `gup_put_folio`), what remains is the reference drop's slow
/// path, `__folio_put` (or `put_page` before folios).
const UNPIN_FUNCTIONS: [&str; 15] = [
    "gup_put_folio",
    "gup_put_page",
    "gup_fast_unpin_user_pages",
    "unpin_user_pages_lockless",
    "unpin_user_pages",
    "unpin_user_page",
    "unpin_user_pages_dirty_lock",
    "unpin_folio",
    "unpin_folios",
    "put_compound_head",
    "folio_put_refs",
    "folio_put",
    "__folio_put",
    "put_page",
    "__put_page",
];

/// The name a call target has if it is a known unpin function.
fn unpin_name(ks: &Kallsyms, target: u64) -> Option<String> {
    let s = ks.containing(target).filter(|s| s.addr == target)?;
    let base = s.name.split('.').next().unwrap_or(&s.name);
    UNPIN_FUNCTIONS.contains(&base).then(|| s.name.clone())
}

/// What one function gave: its status, its sites, its notes.
struct Found {
    status: Status,
    sites: Vec<Site>,
    notes: Vec<String>,
}

impl Found {
    fn unknown(e: SiteError, notes: Vec<String>) -> Found {
        Found {
            status: Status::Unknown(e),
            sites: Vec::new(),
            notes,
        }
    }
}

fn defect_findings(f: &Func, findings: Vec<find::Finding>) -> Vec<DefectFinding> {
    findings
        .into_iter()
        .map(|d| DefectFinding {
            defect: d.defect,
            why: d.why,
            evidence: d
                .evidence
                .into_iter()
                .map(|(i, note)| Evidence {
                    offset: f.offset(i),
                    insn: att(&f.insns[i]),
                    note,
                })
                .collect(),
        })
        .collect()
}

/// Sites and status from the parts found; a part that cannot be probed (its base register is
/// not in pt_regs) makes the function unknown.
fn found(
    f: &Func,
    parts: Result<Vec<Site>, SiteError>,
    findings: Vec<find::Finding>,
    notes: Vec<String>,
) -> Found {
    match parts {
        Err(e) => Found::unknown(e, notes),
        Ok(sites) => {
            let defects = defect_findings(f, findings);
            Found {
                status: if defects.is_empty() {
                    Status::Intact
                } else {
                    Status::Defects(defects)
                },
                sites,
                notes,
            }
        }
    }
}

fn discover_writer(code: &dyn CodeSource, ks: &Kallsyms, ctx: &Ctx, spec: &WriterSpec) -> Found {
    let a = match analyse(code, ks, &spec.symbol, ctx) {
        Ok(a) => a,
        Err(e) => return Found::unknown(e, Vec::new()),
    };
    let accepted: Vec<Val> = spec.mm.iter().map(MmOrigin::val).collect();
    let names: Vec<(Val, String)> = spec
        .mm
        .iter()
        .map(|m| (m.val(), m.name().to_owned()))
        .collect();
    let w = match find::find_write_side(&a.func, &a.flow, ctx, &accepted, &names) {
        Ok(w) => w,
        Err(e) => return Found::unknown(e, Vec::new()),
    };
    let f = &a.func;
    // A function that need not have a write section and has none is simply without one.
    if !spec.required && w.begin.is_none() {
        return Found::unknown(
            SiteError::NotFound {
                symbol: spec.symbol.clone(),
                what: "no increment of write_protect_seq through the source mm".into(),
                notes: Vec::new(),
            },
            w.notes,
        );
    }
    let origin = |acc: &find::Access| find::describe_set(&acc.vals, &names);
    let mut parts = Vec::new();
    if let Some(b) = &w.begin {
        parts.push(memory_site(
            &a,
            SiteKind::WriteBegin,
            b,
            match &w.end {
                Some(e) => format!(
                    "increments [%{}{}] where %{} = {} on every path; write_end (+{:#x}) follows it and never precedes it",
                    reg_lower(b.base),
                    flow::signed_hex(b.disp),
                    reg_lower(b.base),
                    origin(b),
                    f.offset(e.idx)
                ),
                None => format!(
                    "increments [%{}{}] where %{} = {} on every path; the only increment, probed as write_begin",
                    reg_lower(b.base),
                    flow::signed_hex(b.disp),
                    reg_lower(b.base),
                    origin(b)
                ),
            },
        ));
    }
    if let (Some(b), Some(e)) = (&w.begin, &w.end) {
        parts.push(memory_site(
            &a,
            SiteKind::WriteEnd,
            e,
            format!(
                "increments [%{}{}] where %{} = {} on every path; follows write_begin (+{:#x})",
                reg_lower(e.base),
                flow::signed_hex(e.disp),
                reg_lower(e.base),
                origin(e),
                f.offset(b.idx)
            ),
        ));
    }
    found(f, parts.into_iter().collect(), w.defects, w.notes)
}

fn discover_reader(
    code: &dyn CodeSource,
    ks: &Kallsyms,
    ctx: &Ctx,
    layout: &SiteLayout,
    symbol: &str,
) -> Found {
    let a = match analyse(code, ks, symbol, ctx) {
        Ok(a) => a,
        Err(e) => return Found::unknown(e, Vec::new()),
    };
    let cur_mm = Val::Load(Box::new(Val::Current), i64::from(layout.task_mm));
    let names = vec![
        (cur_mm.clone(), "current->mm".to_owned()),
        (Val::Current, "current".to_owned()),
    ];
    let unpin = |t: u64| unpin_name(ks, t);
    let r = match find::find_read_side(&a.func, &a.flow, ctx, &cur_mm, &names, &unpin) {
        Ok(r) => r,
        Err(e) => return Found::unknown(e, Vec::new()),
    };
    let f = &a.func;
    let ins_at = |i: usize| format!("`{}` at +{:#x}", att(&f.insns[i]), f.offset(i));
    let cmp = r.compare.map(ins_at);
    let br = r.branch.map(ins_at);
    let mut parts = Vec::new();
    if let Some(b) = &r.begin {
        let odd = match r.odd {
            Some((_, _, exit)) => format!(
                "its value is tested for oddness (odd exits to +{:#x})",
                f.offset(exit)
            ),
            None => "its value is never tested for oddness".to_owned(),
        };
        parts.push(memory_site(
            &a,
            SiteKind::ReadBegin,
            b,
            format!(
                "loads [%{}{}] where %{} = current->mm (task_struct.mm of %gs:{:#x}) on every path; {odd}{}",
                reg_lower(b.base),
                flow::signed_hex(b.disp),
                reg_lower(b.base),
                layout.current_task,
                cmp.as_ref()
                    .map_or(String::new(), |c| format!(" and compared by {c}"))
            ),
        ));
    }
    if let Some(rt) = &r.retry {
        parts.push(memory_site(
            &a,
            SiteKind::ReadRetry,
            rt,
            format!(
                "loads [%{}{}] where %{} = current->mm, after read_begin; {}",
                reg_lower(rt.base),
                flow::signed_hex(rt.disp),
                reg_lower(rt.base),
                match (&cmp, &br) {
                    (Some(c), Some(b)) => format!("compared by {c}, consumed by {b}"),
                    (Some(c), None) => format!("compared by {c}, which nothing consumes"),
                    _ => "never compared".to_owned(),
                }
            ),
        ));
    }
    if let (Some(fail), Some(branch), Some(ok)) = (r.fail, r.branch, r.ok) {
        let fail_ins = &f.insns[fail];
        parts.push(Ok(Site {
            kind: SiteKind::RetryFail,
            symbol: f.symbol.clone(),
            offset: f.offset(fail),
            addr: fail_ins.ip(),
            insn: att(fail_ins),
            base: None,
            disp: 0,
            evidence: format!(
                "the {} side of {} (value changed), entered by nothing else; the block calls {} to release the pins; the unchanged side is +{:#x}",
                if fail == branch + 1 {
                    "fall-through"
                } else {
                    "taken"
                },
                ins_at(branch),
                r.backout_calls.join(", "),
                f.offset(ok)
            ),
        }));
    }
    found(f, parts.into_iter().collect(), r.defects, r.notes)
}

/// Finds every site the layout asks for, and says of each function whether its part of the
/// protocol is intact, defective (and how), or of a shape this tool does not know.
pub fn discover(code: &dyn CodeSource, ks: &Kallsyms, layout: &SiteLayout) -> Plan {
    SYMBOLS.with(|s| *s.borrow_mut() = Some(ks.clone()));
    let plan = discover_with_symbols(code, ks, layout);
    SYMBOLS.with(|s| *s.borrow_mut() = None);
    plan
}

fn discover_with_symbols(code: &dyn CodeSource, ks: &Kallsyms, layout: &SiteLayout) -> Plan {
    let ctx = Ctx {
        current: layout.current_task,
        seq_disp: i64::from(layout.mm_seq),
    };
    let mut plan = Plan::default();
    let mut record = |symbol: &str, role: Role, required: bool, f: Found| {
        plan.functions.push(FunctionReport {
            symbol: symbol.to_owned(),
            role,
            required,
            status: f.status,
            sites: f.sites.iter().map(|s| s.kind).collect(),
            notes: f.notes,
        });
        plan.sites.extend(f.sites);
    };
    for w in &layout.writers {
        let spec = WriterSpec {
            symbol: ks
                .get_function(&w.symbol)
                .map_or_else(|| w.symbol.clone(), |s| s.name.clone()),
            ..w.clone()
        };
        record(
            &spec.symbol,
            Role::Write,
            w.required,
            discover_writer(code, ks, &ctx, &spec),
        );
    }
    match layout
        .readers
        .iter()
        .find_map(|r| ks.get_function(r).map(|s| s.name.clone()))
    {
        Some(r) => {
            let f = discover_reader(code, ks, &ctx, layout, &r);
            record(&r, Role::Read, true, f);
        }
        None => record(
            &layout.readers.join("|"),
            Role::Read,
            true,
            Found::unknown(
                SiteError::NoSymbol {
                    symbol: layout.readers.join(", "),
                },
                Vec::new(),
            ),
        ),
    }
    plan
}

// ---------------------------------------------------------------------------------------------
// CLI

/// `tracer sites`: list the instruction-level sites of this kernel (or of a given build).
///
/// Exit status: 0 every required function intact; 1 a defect proven in the machine code; 3 a
/// required function of a shape this tool does not know (it runs with function-level probes
/// only); 2 bad input.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Offline: read machine code from this vmlinux ELF (or bzImage; the format is detected).
    #[arg(long, value_name = "PATH", conflicts_with = "image")]
    pub vmlinux: Option<PathBuf>,
    /// Offline: read machine code from this bzImage/vmlinuz (zstd, LZ4 or xz payload).
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// BTF of the kernel [default: /sys/kernel/btf/vmlinux live; offline: the image's .BTF section].
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
    /// kallsyms of the kernel [default: /proc/kallsyms; required offline].
    #[arg(long, value_name = "PATH")]
    pub kallsyms: Option<PathBuf>,
    /// Kernel release, for version-dependent expectations [default: uname -r live; offline: the
    /// image's "Linux version" string].
    #[arg(long, value_name = "RELEASE")]
    pub release: Option<String>,
    /// Print JSON: `{"kernel","source","sides":{"write","read"},"functions":[...],"sites":[...],
    /// "function_probes":[...]}` (docs/sites.md).
    #[arg(long)]
    pub json: bool,
    /// Print SYMBOL's decoded code with the value origins known before each instruction.
    #[arg(long, value_name = "SYMBOL")]
    pub explain: Option<String>,
    /// Show the sites' kernel addresses (they defeat KASLR; the output omits them by default).
    #[arg(long)]
    pub raw_pointers: bool,
}

/// Everything discovery reads, loaded from the live system or from files.
pub struct Inputs {
    pub code: ElfImage,
    pub kallsyms: Kallsyms,
    pub btf: Btf,
    pub release: Option<String>,
}

fn live_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned())
}

impl Inputs {
    /// Live mode unless `--vmlinux`/`--image` is given.
    pub fn load(args: &Args) -> anyhow::Result<Inputs> {
        let offline = args.vmlinux.as_deref().or(args.image.as_deref());
        let kallsyms_path = match (&args.kallsyms, offline) {
            (Some(p), _) => p.clone(),
            (None, None) => PathBuf::from("/proc/kallsyms"),
            (None, Some(_)) => anyhow::bail!(
                "offline mode needs --kallsyms PATH: the vmlinux inside a vmlinuz has no symbol table (capture /proc/kallsyms from the booted kernel with nokaslr)"
            ),
        };
        let kallsyms = Kallsyms::from_file(&kallsyms_path)?;
        let code = match offline {
            Some(p) => ElfImage::from_kernel_file(p)?,
            None => ElfImage::kcore().map_err(|e| {
                anyhow::anyhow!(
                    "{e}: reading the live kernel's code needs /proc/kcore (root, CONFIG_PROC_KCORE); or pass --vmlinux/--image"
                )
            })?,
        };
        let btf = match (&args.btf, offline) {
            (Some(p), _) => Btf::from_file(p)?,
            (None, None) => Btf::from_file("/sys/kernel/btf/vmlinux")?,
            (None, Some(p)) => {
                let bytes = code
                    .section(".BTF")
                    .with_context(|| format!("{} has no BTF; pass --btf PATH", p.display()))?;
                Btf::parse(&bytes)?
            }
        };
        let release = match (&args.release, offline) {
            (Some(r), _) => Some(r.clone()),
            (None, None) => live_release(),
            (None, Some(_)) => image_release(&code),
        };
        Ok(Inputs {
            code,
            kallsyms,
            btf,
            release,
        })
    }
}

/// The release from the image's `Linux version X ...` banner, if its .rodata has one.
pub fn image_release(code: &ElfImage) -> Option<String> {
    let rodata = code.section(".rodata").ok()?;
    let needle = b"Linux version ";
    let at = memchr::memmem::find(&rodata, needle)?;
    let rest = &rodata[at + needle.len()..];
    let end = rest.iter().position(|&c| c == b' ' || c == 0)?;
    let r = std::str::from_utf8(&rest[..end]).ok()?;
    // The banner format string (`%s`) also matches; only a real release starts with a digit.
    r.starts_with(|c: char| c.is_ascii_digit())
        .then(|| r.to_owned())
}

/// Human-readable listing: the sites, then what discovery said of each function. Kernel
/// addresses only with `raw_pointers`.
pub fn render_text(plan: &Plan, source: &str, raw_pointers: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine code: {source}");
    for s in &plan.sites {
        let addr = if raw_pointers {
            format!("  {:#x}", s.addr)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<11} {}+{:#x}{addr}  {:<32}  base={} disp={:#x}",
            s.kind.name(),
            s.symbol,
            s.offset,
            s.insn,
            s.base.map_or("-", reg_name),
            s.disp
        );
        let _ = writeln!(out, "            evidence: {}", s.evidence);
    }
    for f in &plan.functions {
        match &f.status {
            Status::Intact => {}
            Status::Defects(ds) => {
                for d in ds {
                    let _ = writeln!(
                        out,
                        "DEFECT      {}: {}: {}",
                        f.symbol,
                        d.defect.name(),
                        d.why
                    );
                    for e in &d.evidence {
                        let _ = writeln!(
                            out,
                            "            +{:#x}  {:<32}  {}",
                            e.offset, e.insn, e.note
                        );
                    }
                }
                let _ = writeln!(
                    out,
                    "            {} is probed where its parts remain ({}), so a run shows the consequence",
                    f.symbol,
                    if f.sites.is_empty() {
                        "none do".to_owned()
                    } else {
                        f.sites
                            .iter()
                            .map(|k| k.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
            }
            Status::Unknown(e) if f.required => {
                let _ = writeln!(out, "UNKNOWN     {e}");
                let _ = writeln!(
                    out,
                    "            {} runs with function-level probes only",
                    f.symbol
                );
            }
            Status::Unknown(e) => {
                let _ = writeln!(out, "none        {e} (not required on this kernel)");
            }
        }
        let notes = match &f.status {
            Status::Unknown(SiteError::NotFound { notes, .. }) => {
                notes.iter().chain(&f.notes).collect()
            }
            _ => f.notes.iter().collect::<Vec<_>>(),
        };
        for n in notes {
            let _ = writeln!(out, "            note ({}): {n}", f.symbol);
        }
    }
    let _ = writeln!(
        out,
        "write side: {}; read side: {}",
        plan.side(Role::Write).name(),
        plan.side(Role::Read).name()
    );
    out
}

#[derive(Serialize)]
struct JsonSite<'a> {
    kind: &'static str,
    symbol: &'a str,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<u64>,
    insn: &'a str,
    base: Option<&'static str>,
    disp: i32,
    evidence: &'a str,
}

/// The JSON listing: `{"sides", "functions", "sites"}` (see docs/sites.md); `addr` only with
/// `raw_pointers`.
pub fn render_json(plan: &Plan, raw_pointers: bool) -> serde_json::Value {
    let sites: Vec<serde_json::Value> = plan
        .sites
        .iter()
        .filter_map(|s| {
            serde_json::to_value(JsonSite {
                kind: s.kind.name(),
                symbol: &s.symbol,
                offset: s.offset,
                addr: raw_pointers.then_some(s.addr),
                insn: &s.insn,
                base: s.base.map(reg_name),
                disp: s.disp,
                evidence: &s.evidence,
            })
            .ok()
        })
        .collect();
    let mut v = plan.discovery_json();
    if let Some(o) = v.as_object_mut() {
        o.insert("sites".into(), serde_json::Value::Array(sites));
    }
    v
}

/// `tracer sites`'s exit status: 0 intact, 1 a proven defect, 3 a function of unknown shape.
pub fn exit_status(plan: &Plan) -> u8 {
    if plan.defects().next().is_some() {
        1
    } else if plan.unknowns().next().is_some() {
        3
    } else {
        0
    }
}

/// Which attach modes can run on the live kernel, and what each sees and misses.
fn modes_json(btf: &std::path::Path) -> serde_json::Value {
    use crate::probes::caps::{Caps, Mode};
    let caps = Caps::detect(btf);
    let best = caps.best();
    serde_json::Value::Array(
        Mode::ALL
            .iter()
            .map(|&m| {
                let missing = caps.missing(m);
                serde_json::json!({
                    "mode": m.as_str(),
                    "works": missing.is_empty(),
                    "best": best == Some(m),
                    "missing": missing,
                    "sees": m.sees(),
                    "misses": m.misses(),
                })
            })
            .collect(),
    )
}

fn modes_text(modes: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "attach modes on this kernel (`--mode`; auto takes the first that works):"
    );
    for m in modes.as_array().into_iter().flatten() {
        let name = m.get("mode").and_then(|v| v.as_str()).unwrap_or("?");
        let missing: Vec<&str> = m
            .get("missing")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        if missing.is_empty() {
            let _ = writeln!(s, "  {name:<10} works");
        } else {
            let _ = writeln!(s, "  {name:<10} cannot run: {}", missing.join("; "));
        }
        for k in ["sees", "misses"] {
            let what = if k == "sees" { "sees" } else { "cannot see" };
            let _ = writeln!(
                s,
                "  {:<10}   {what}: {}",
                "",
                m.get(k).and_then(|v| v.as_str()).unwrap_or("")
            );
        }
    }
    s
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let print = |text: &str| {
        crate::outfile::print(text).map_err(|e| anyhow::anyhow!("writing to standard output: {e}"))
    };
    let live = args.image.is_none() && args.vmlinux.is_none();
    let modes = live.then(|| {
        modes_json(
            args.btf
                .as_deref()
                .unwrap_or(std::path::Path::new(crate::probes::env::SYS_BTF)),
        )
    });
    // Printed before discovery, which needs the kernel's code: a kernel that hides it (no
    // /proc/kcore) still says what can be traced.
    if let Some(m) = &modes
        && !args.json
        && args.explain.is_none()
    {
        print(&modes_text(m))?;
    }
    let inputs = Inputs::load(&args)?;
    let layout = SiteLayout::resolve(&inputs.btf, &inputs.kallsyms, inputs.release.as_deref())?;
    if let Some(symbol) = &args.explain {
        print(&explain(&inputs.code, &inputs.kallsyms, &layout, symbol)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let plan = discover(&inputs.code, &inputs.kallsyms, &layout);
    // The function-level probes that run beside (or, where discovery refused, instead of) the
    // instruction sites.
    let functions = inputs
        .release
        .as_deref()
        .map(|r| crate::kernel::target::resolve(&inputs.btf, &inputs.kallsyms, r));
    if args.json {
        let mut v = render_json(&plan, args.raw_pointers);
        if let Some(o) = v.as_object_mut() {
            o.insert("kernel".into(), serde_json::json!(inputs.release));
            o.insert("source".into(), serde_json::json!(inputs.code.describe()));
            if let Some(m) = &modes {
                o.insert("modes".into(), m.clone());
            }
            if let Some(Ok(f)) = &functions {
                let probes: Vec<serde_json::Value> = f
                    .probes
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "probe": p.probe.name(),
                            "symbol": p.symbol,
                            "ret": p.hook == Hook::Return,
                            "hook": p.hook.name(),
                            "evidence": p.reason,
                        })
                    })
                    .collect();
                o.insert("function_probes".into(), serde_json::Value::Array(probes));
            }
        }
        print(&(serde_json::to_string_pretty(&v)? + "\n"))?;
    } else {
        use std::fmt::Write as _;
        let mut s = render_text(&plan, &inputs.code.describe(), args.raw_pointers);
        match &functions {
            Some(Ok(f)) => {
                s.push_str("function-level probes:\n");
                for p in &f.probes {
                    let _ = writeln!(
                        s,
                        "{:<11} {}{}  ({})",
                        p.probe.name(),
                        match p.hook {
                            Hook::Entry => "",
                            Hook::Return => "return of ",
                            Hook::RawTracepoint => "tracepoint ",
                        },
                        p.symbol,
                        p.reason
                    );
                }
                for m in &f.missing {
                    let _ = writeln!(s, "missing     {m}");
                }
            }
            Some(Err(e)) => {
                let _ = writeln!(s, "function-level probes: {e}");
            }
            None => s.push_str("function-level probes: unknown kernel release (pass --release)\n"),
        }
        print(&s)?;
    }
    Ok(ExitCode::from(exit_status(&plan)))
}

/// Offline discovery from files: a vmlinux or bzImage, kallsyms, and BTF (or the image's own).
pub fn discover_files(
    image: &Path,
    kallsyms: &Path,
    btf: Option<&Path>,
    release: Option<&str>,
) -> anyhow::Result<(Plan, SiteLayout)> {
    let args = Args {
        vmlinux: Some(image.to_owned()),
        image: None,
        btf: btf.map(Path::to_owned),
        kallsyms: Some(kallsyms.to_owned()),
        release: release.map(str::to_owned),
        json: false,
        explain: None,
        raw_pointers: false,
    };
    let inputs = Inputs::load(&args)?;
    let layout = SiteLayout::resolve(&inputs.btf, &inputs.kallsyms, inputs.release.as_deref())?;
    Ok((discover(&inputs.code, &inputs.kallsyms, &layout), layout))
}

/// The decoded function with what the analysis knows at each reachable instruction: for
/// `tracer sites --explain SYMBOL`, to see why a build was refused.
pub fn explain(
    code: &dyn CodeSource,
    ks: &Kallsyms,
    layout: &SiteLayout,
    symbol: &str,
) -> Result<String, SiteError> {
    SYMBOLS.with(|s| *s.borrow_mut() = Some(ks.clone()));
    let r = explain_with_symbols(code, ks, layout, symbol);
    SYMBOLS.with(|s| *s.borrow_mut() = None);
    r
}

fn explain_with_symbols(
    code: &dyn CodeSource,
    ks: &Kallsyms,
    layout: &SiteLayout,
    symbol: &str,
) -> Result<String, SiteError> {
    let ctx = Ctx {
        current: layout.current_task,
        seq_disp: i64::from(layout.mm_seq),
    };
    let a = analyse(code, ks, symbol, &ctx)?;
    let mut names = vec![
        (
            Val::Load(Box::new(Val::Current), i64::from(layout.task_mm)),
            "current->mm".to_owned(),
        ),
        (Val::Current, "current".to_owned()),
    ];
    for w in layout.writers.iter().filter(|w| w.symbol == symbol) {
        names.extend(w.mm.iter().map(|m| (m.val(), m.name().to_owned())));
    }
    let show = |v: &flow::Vs| find::describe_set(v, &names);
    let mut out = String::new();
    for (i, ins) in a.func.insns.iter().enumerate() {
        let Some(st) = a.flow.states.get(i).and_then(Option::as_ref) else {
            continue;
        };
        let _ = writeln!(
            out,
            "+{:#06x}  {:<40} | {}",
            a.func.offset(i),
            att(ins),
            st.describe(&show)
        );
    }
    Ok(out)
}
