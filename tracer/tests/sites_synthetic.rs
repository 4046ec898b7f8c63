//! Site discovery on functions assembled here with iced-x86's encoder: the real shapes are found
//! at the right offsets, and perturbed versions (other displacement, other base-register origin,
//! look-alike increments and loads, an unconsumed retry load, a missing back-out block, a
//! breakpoint) give no site, or only the right ones.
use std::error::Error;

use iced_x86::{
    BlockEncoderOptions,
    code_asm::{
        CodeAssembler, CodeLabel, al, dword_ptr, eax, ebx, ecx, edx, esi, qword_ptr, r11, r12,
        r12b, r12d, r13, r14, r15, rax, rbp, rbx, rcx, rdi, rdx, rsi, rsp,
    },
};
use tracer::{
    kernel::{
        image::{CodeSource, ImageError},
        kallsyms::Kallsyms,
    },
    sites::{Defect, MmOrigin, Plan, SiteError, SiteKind, SiteLayout, WriterSpec, discover},
};

type R<T> = Result<T, Box<dyn Error>>;

const BASE: u64 = 0xffff_ffff_8100_0000;
const CPR: u64 = BASE;
const GUP: u64 = BASE + 0x1000;
const HELPER: u64 = BASE + 0x2000;
const UNPIN: u64 = BASE + 0x2100;
const END: u64 = BASE + 0x3000;

const SEQ: i32 = 0x138;
const TASK_MM: i32 = 0x900;
const VMA_MM: i32 = 0x10;
const CURRENT: u64 = 0x35000;

/// Kernel text held in memory, padded with int3 like the real thing.
struct Mem {
    bytes: Vec<u8>,
}

impl Mem {
    fn new(funcs: &[(u64, &[u8])]) -> Mem {
        let mut bytes = vec![0xcc; (END - BASE) as usize];
        for (addr, code) in funcs {
            let at = (addr - BASE) as usize;
            bytes[at..at + code.len()].copy_from_slice(code);
        }
        // Helpers just return.
        bytes[(HELPER - BASE) as usize] = 0xc3;
        bytes[(UNPIN - BASE) as usize] = 0xc3;
        Mem { bytes }
    }
}

impl CodeSource for Mem {
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, ImageError> {
        let unmapped = || ImageError::Unmapped {
            what: "test".into(),
            addr,
            len,
        };
        let at = addr.checked_sub(BASE).ok_or_else(unmapped)? as usize;
        self.bytes
            .get(at..at + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(unmapped)
    }
    fn describe(&self) -> String {
        "assembled test code".into()
    }
}

fn kallsyms() -> R<Kallsyms> {
    let text = format!(
        "{CPR:x} T copy_page_range\n{GUP:x} t gup_fast_fallback\n{HELPER:x} T helper\n{UNPIN:x} T gup_put_folio\n{END:x} T _etext\n{CURRENT:016x} A current_task\n"
    );
    Ok(Kallsyms::parse(&text)?)
}

fn layout() -> SiteLayout {
    SiteLayout {
        mm_seq: SEQ as u32,
        task_mm: TASK_MM as u32,
        current_task: CURRENT,
        writers: vec![WriterSpec {
            symbol: "copy_page_range".into(),
            mm: vec![MmOrigin::ArgField {
                index: 1,
                offset: VMA_MM as u32,
                name: "src_vma->vm_mm".into(),
            }],
            required: true,
        }],
        readers: vec!["gup_fast_fallback".into()],
    }
}

/// Assembles at `ip`; returns the bytes and a label resolver.
fn assemble(a: &mut CodeAssembler, ip: u64) -> R<(Vec<u8>, impl Fn(&CodeLabel) -> R<u64>)> {
    let res = a.assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let bytes = res.inner.code_buffer.clone();
    Ok((bytes, move |l: &CodeLabel| -> R<u64> {
        Ok(res.label_ip(l)? - ip)
    }))
}

// ------------------------------------------------------------------------------------------
// The write side

#[derive(Clone, Copy, Default)]
struct Cpr {
    /// Added to the displacement of both increments.
    disp_delta: i32,
    /// Take the mm from dst_vma (arg 0) instead of src_vma.
    from_dst: bool,
    /// On one path the base holds dst_vma->vm_mm, on the other src_vma->vm_mm.
    merged_origin: bool,
    /// Add look-alike increments: another field of src mm, and the seq field of dst mm.
    lookalikes: bool,
    /// A third increment of the real seqcount.
    third: bool,
    /// Use `inc` for write_end.
    inc_end: bool,
    /// Put write_end before write_begin in the layout (reached by a jump).
    reversed_layout: bool,
    /// Drop write_end: one increment only.
    end_missing: bool,
    /// write_end right after write_begin, before the copy (the call).
    not_enclosing: bool,
}

struct Built {
    bytes: Vec<u8>,
    offs: Vec<(SiteKind, u64)>,
}

fn build_cpr(o: Cpr) -> R<Built> {
    let mut a = CodeAssembler::new(64)?;
    let mut nocow = a.create_label();
    let mut l_begin = a.create_label();
    let mut l_end = a.create_label();
    let mut other = a.create_label();
    let mut join = a.create_label();
    let mut tail = a.create_label();
    let seq = SEQ + o.disp_delta;
    a.push(rbx)?;
    a.push(r12)?;
    a.sub(rsp, 0x28)?;
    a.mov(rbx, rdi)?;
    if o.from_dst {
        a.mov(rax, qword_ptr(rdi + VMA_MM))?;
    } else {
        a.mov(rax, qword_ptr(rsi + VMA_MM))?;
    }
    a.mov(qword_ptr(rsp + 0x10), rax)?;
    a.test(dword_ptr(rsi + 0x20), 0x1000)?;
    a.je(nocow)?;
    a.mov(rax, qword_ptr(rsp + 0x10))?;
    if o.merged_origin {
        a.test(edx, 1)?;
        a.jne(other)?;
        a.jmp(join)?;
        a.set_label(&mut other)?;
        a.mov(rax, qword_ptr(rbx + VMA_MM))?;
        a.set_label(&mut join)?;
        a.mov(rcx, rax)?;
    }
    if o.reversed_layout {
        a.jmp(l_begin)?;
        a.set_label(&mut tail)?;
        a.mov(rax, qword_ptr(rsp + 0x10))?;
        a.set_label(&mut l_end)?;
        a.add(dword_ptr(rax + seq), 1)?;
        a.jmp(nocow)?;
        a.set_label(&mut l_begin)?;
        a.add(dword_ptr(rax + seq), 1)?;
        a.mov(rdi, rbx)?;
        a.call(HELPER)?;
        a.jmp(tail)?;
    } else if o.not_enclosing {
        a.set_label(&mut l_begin)?;
        a.add(dword_ptr(rax + seq), 1)?;
        a.set_label(&mut l_end)?;
        a.add(dword_ptr(rax + seq), 1)?;
        a.mov(rdi, rbx)?;
        a.call(HELPER)?;
    } else if o.end_missing {
        a.set_label(&mut l_begin)?;
        a.add(dword_ptr(rax + seq), 1)?;
        a.mov(rdi, rbx)?;
        a.call(HELPER)?;
    } else {
        a.set_label(&mut l_begin)?;
        a.add(dword_ptr(rax + seq), 1)?;
        a.mov(rdi, rbx)?;
        a.call(HELPER)?;
        if o.lookalikes {
            a.mov(rcx, qword_ptr(rsp + 0x10))?;
            a.add(dword_ptr(rcx + seq + 8), 1)?;
            a.mov(rdx, qword_ptr(rbx + VMA_MM))?;
            a.add(dword_ptr(rdx + seq), 1)?;
        }
        if o.third {
            a.mov(rcx, qword_ptr(rsp + 0x10))?;
            a.add(dword_ptr(rcx + seq), 1)?;
        }
        a.mov(rax, qword_ptr(rsp + 0x10))?;
        a.set_label(&mut l_end)?;
        if o.inc_end {
            a.inc(dword_ptr(rax + seq))?;
        } else {
            a.add(dword_ptr(rax + seq), 1)?;
        }
    }
    a.set_label(&mut nocow)?;
    a.xor(eax, eax)?;
    a.add(rsp, 0x28)?;
    a.pop(r12)?;
    a.pop(rbx)?;
    a.ret()?;
    let (bytes, ip) = assemble(&mut a, CPR)?;
    let mut offs = vec![(SiteKind::WriteBegin, ip(&l_begin)?)];
    if !o.end_missing {
        offs.push((SiteKind::WriteEnd, ip(&l_end)?));
    }
    Ok(Built { bytes, offs })
}

// ------------------------------------------------------------------------------------------
// The read side

#[derive(Clone, Copy, Default, PartialEq)]
enum Retry {
    /// `cmp; jne backout` (back-out block is the branch target).
    #[default]
    Jne,
    /// `cmp; je success` (back-out block is the fall-through).
    Je,
    /// The retry value is loaded and never compared.
    Unconsumed,
    /// `cmp; setne` instead of a branch.
    Setne,
    /// `jne` straight to `return 0`, no unpin.
    NoUnpin,
    /// Both sides of the branch go to the same place.
    SameSides,
    /// `cmp %r12d, SEQ(%rax); jne backout`: the retry load is the comparison itself.
    CmpMem,
    /// Two fresh loads after the walk compared with each other, not with read_begin's value.
    Stale,
    /// `test` between the cmp and the jne overwrites the comparison's flags.
    FlagsOverwritten,
    /// The changed side calls a function that is not known to release pins.
    BackoutUnknownCall,
    /// The back-out block is also entered from another path.
    BackoutShared,
    /// The changed side has a block of its own that calls nothing.
    BackoutNoCall,
}

/// The parity check on read_begin's value.
#[derive(Clone, Copy, Default, PartialEq)]
enum Odd {
    /// `test $1, %r12b; jne ret0`.
    #[default]
    Present,
    /// No check at all.
    Missing,
    /// `test $1; jne` to a block that spins once and goes on to the walk.
    NotReturning,
    /// `and $1` on a copy of the value: a form this tool does not model.
    AndForm,
}

#[derive(Clone, Copy, Default)]
struct Gup {
    retry: Retry,
    /// Read the seqcount through a field of arg 3 (kept in %r13) instead of current->mm.
    other_origin: bool,
    /// Read `current` from another per-cpu variable.
    other_percpu: bool,
    /// Extra look-alike load: the same displacement through the pages pointer.
    lookalike: bool,
    /// Keep `current` in a stack slot across the walk instead of re-reading %gs.
    spill_current: bool,
    /// `local_irq_save()` as a live kernel has it after paravirt patching: `pushf; pop %rax;
    /// cli` (moves the stack pointer without a plain push/pop of a register).
    irq_save_native: bool,
    odd: Odd,
    /// No access to the seqcount at all.
    no_seq: bool,
}

fn load_current_mm(a: &mut CodeAssembler, o: Gup) -> R<()> {
    if o.other_origin {
        a.mov(rax, qword_ptr(r13 + TASK_MM))?;
    } else {
        let pcpu = if o.other_percpu { CURRENT + 8 } else { CURRENT };
        a.mov(rax, qword_ptr(pcpu).gs())?;
        a.mov(rax, qword_ptr(rax + TASK_MM))?;
    }
    Ok(())
}

fn build_gup(o: Gup) -> R<Built> {
    let mut a = CodeAssembler::new(64)?;
    let mut walk = a.create_label();
    let mut success = a.create_label();
    let mut backout = a.create_label();
    let mut ret0 = a.create_label();
    let mut out = a.create_label();
    let mut l_begin = a.create_label();
    let mut l_retry = a.create_label();
    let mut odd_side = a.create_label();
    let mut l_backout2 = a.create_label();
    a.push(rbx)?;
    a.push(r12)?;
    a.push(r13)?;
    a.sub(rsp, 0x20)?;
    a.mov(r13, rcx)?;
    a.mov(ebx, edx)?;
    a.xor(r12d, r12d)?;
    if o.spill_current {
        // As 6.12's gup_fast_fallback does: `current` saved on every path into the walk.
        a.mov(rax, qword_ptr(CURRENT).gs())?;
        a.mov(qword_ptr(rsp + 0x10), rax)?;
    }
    if o.retry == Retry::BackoutShared {
        // Another path into the back-out block (say, a FOLL_FAST_ONLY early exit).
        a.test(ebx, 2)?;
        a.jne(backout)?;
    }
    a.test(ebx, 1)?;
    a.je(walk)?;
    if !o.no_seq {
        if o.spill_current {
            a.mov(rax, qword_ptr(rax + TASK_MM))?;
        } else {
            load_current_mm(&mut a, o)?;
        }
        a.set_label(&mut l_begin)?;
        a.mov(r12d, dword_ptr(rax + SEQ))?;
        match o.odd {
            Odd::Present => {
                a.test(r12b, 1)?;
                a.jne(ret0)?;
            }
            Odd::Missing => {}
            Odd::NotReturning => {
                a.test(r12b, 1)?;
                a.jne(odd_side)?;
            }
            Odd::AndForm => {
                a.mov(ecx, r12d)?;
                a.and(ecx, 1)?;
                a.jne(ret0)?;
            }
        }
    }
    a.set_label(&mut walk)?;
    if o.irq_save_native {
        a.pushfq()?;
        a.pop(rax)?;
        a.cli()?;
        a.mov(qword_ptr(rsp), rax)?;
    }
    if o.lookalike {
        a.mov(ecx, dword_ptr(r13 + SEQ))?;
        a.mov(dword_ptr(rsp + 0x18), ecx)?;
    }
    a.mov(rdi, r13)?;
    a.call(HELPER)?;
    a.mov(dword_ptr(rsp + 8), eax)?;
    a.test(ebx, 1)?;
    a.je(success)?;
    if o.no_seq {
        a.jmp(success)?;
    }
    if o.spill_current {
        a.mov(rax, qword_ptr(rsp + 0x10))?;
        a.mov(rax, qword_ptr(rax + TASK_MM))?;
    } else {
        load_current_mm(&mut a, o)?;
    }
    a.set_label(&mut l_retry)?;
    if o.retry == Retry::CmpMem {
        a.cmp(dword_ptr(rax + SEQ), r12d)?;
        a.jne(backout)?;
    } else if o.retry == Retry::Stale {
        a.mov(ecx, dword_ptr(rax + SEQ))?;
    } else {
        a.mov(eax, dword_ptr(rax + SEQ))?;
    }
    let mut l_fail = a.create_label();
    match o.retry {
        Retry::CmpMem => {}
        Retry::Jne | Retry::NoUnpin | Retry::SameSides => {
            a.cmp(eax, r12d)?;
            match o.retry {
                Retry::NoUnpin => a.jne(ret0)?,
                Retry::SameSides => a.jne(success)?,
                _ => a.jne(backout)?,
            }
        }
        Retry::Je => {
            a.cmp(eax, r12d)?;
            a.je(success)?;
            a.set_label(&mut l_fail)?;
            a.mov(rdi, r13)?;
            a.mov(esi, dword_ptr(rsp + 8))?;
            a.call(UNPIN)?;
            a.jmp(ret0)?;
        }
        Retry::Unconsumed => {}
        Retry::Stale => {
            // `read_seqcount_retry(s, raw_read_seqcount(s))`: the fresh value in %ecx, the
            // retry's own load in %eax, both after the walk.
            a.set_label(&mut l_fail)?;
            a.mov(eax, dword_ptr(rax + SEQ))?;
            a.cmp(eax, ecx)?;
            a.jne(backout)?;
        }
        Retry::FlagsOverwritten => {
            a.cmp(eax, r12d)?;
            a.test(ebx, ebx)?;
            a.jne(backout)?;
        }
        Retry::BackoutShared => {
            a.cmp(eax, r12d)?;
            a.jne(backout)?;
        }
        Retry::BackoutUnknownCall | Retry::BackoutNoCall => {
            a.cmp(eax, r12d)?;
            a.jne(l_backout2)?;
        }
        Retry::Setne => {
            a.cmp(eax, r12d)?;
            a.setne(al)?;
            a.mov(dword_ptr(rsp + 0x18), eax)?;
        }
    }
    a.set_label(&mut success)?;
    a.mov(eax, dword_ptr(rsp + 8))?;
    a.jmp(out)?;
    a.set_label(&mut backout)?;
    a.mov(rdi, r13)?;
    a.mov(esi, dword_ptr(rsp + 8))?;
    a.call(UNPIN)?;
    a.set_label(&mut ret0)?;
    a.xor(eax, eax)?;
    a.set_label(&mut out)?;
    a.add(rsp, 0x20)?;
    a.pop(r13)?;
    a.pop(r12)?;
    a.pop(rbx)?;
    a.ret()?;
    if o.odd == Odd::NotReturning {
        a.set_label(&mut odd_side)?;
        a.pause()?;
        a.jmp(walk)?;
    }
    match o.retry {
        Retry::BackoutUnknownCall => {
            a.set_label(&mut l_backout2)?;
            a.mov(rdi, r13)?;
            a.call(HELPER)?;
            a.jmp(ret0)?;
        }
        Retry::BackoutNoCall => {
            a.set_label(&mut l_backout2)?;
            a.xor(eax, eax)?;
            a.jmp(out)?;
        }
        _ => {}
    }
    let (bytes, ip) = assemble(&mut a, GUP)?;
    if o.no_seq {
        return Ok(Built {
            bytes,
            offs: Vec::new(),
        });
    }
    let mut offs = vec![(SiteKind::ReadBegin, ip(&l_begin)?)];
    match o.retry {
        Retry::Stale => offs.push((SiteKind::ReadRetry, ip(&l_fail)?)),
        _ => offs.push((SiteKind::ReadRetry, ip(&l_retry)?)),
    }
    match o.retry {
        Retry::Jne | Retry::CmpMem | Retry::Stale => {
            offs.push((SiteKind::RetryFail, ip(&backout)?))
        }
        Retry::Je => offs.push((SiteKind::RetryFail, ip(&l_fail)?)),
        _ => {}
    }
    Ok(Built { bytes, offs })
}

fn run(cpr: &Built, gup: &Built) -> R<Plan> {
    let code = Mem::new(&[(CPR, &cpr.bytes), (GUP, &gup.bytes)]);
    Ok(discover(&code, &kallsyms()?, &layout()))
}

fn found(plan: &Plan, symbol: &str) -> Vec<(SiteKind, u64)> {
    plan.sites
        .iter()
        .filter(|s| s.symbol == symbol)
        .map(|s| (s.kind, s.offset))
        .collect()
}

fn error_of<'a>(plan: &'a Plan, symbol: &str) -> Option<&'a SiteError> {
    plan.functions
        .iter()
        .find(|f| f.symbol == symbol)
        .and_then(|f| f.unknown())
}

/// The defects proven in `symbol`, by name.
fn defects_of(plan: &Plan, symbol: &str) -> Vec<Defect> {
    plan.functions
        .iter()
        .filter(|f| f.symbol == symbol)
        .flat_map(|f| f.defects().iter().map(|d| d.defect))
        .collect()
}

// ------------------------------------------------------------------------------------------

#[test]
fn sites_synthetic_baseline_found_at_their_offsets() -> R<()> {
    let (cpr, gup) = (build_cpr(Cpr::default())?, build_gup(Gup::default())?);
    let plan = run(&cpr, &gup)?;
    assert!(plan.complete(), "{:#?}", plan.functions);
    assert_eq!(found(&plan, "copy_page_range"), cpr.offs);
    assert_eq!(found(&plan, "gup_fast_fallback"), gup.offs);
    // The base registers and displacement the BPF side needs.
    for s in &plan.sites {
        match s.kind {
            SiteKind::RetryFail => assert_eq!((s.base, s.disp), (None, 0)),
            _ => {
                assert_eq!(s.base, Some(tracer_common::Reg::Rax));
                assert_eq!(s.disp, SEQ);
            }
        }
        assert_eq!(
            s.addr,
            if s.symbol == "copy_page_range" {
                CPR
            } else {
                GUP
            } + s.offset
        );
    }
    Ok(())
}

#[test]
fn sites_synthetic_retry_compares_memory_directly() -> R<()> {
    let gup = build_gup(Gup {
        retry: Retry::CmpMem,
        ..Gup::default()
    })?;
    let plan = run(&build_cpr(Cpr::default())?, &gup)?;
    assert_eq!(found(&plan, "gup_fast_fallback"), gup.offs);
    let retry = plan
        .site(SiteKind::ReadRetry, "gup_fast_fallback")
        .ok_or("no read_retry")?;
    assert!(retry.insn.starts_with("cmp"), "{}", retry.insn);
    assert_eq!(
        (retry.base, retry.disp),
        (Some(tracer_common::Reg::Rax), SEQ)
    );
    Ok(())
}

#[test]
fn sites_synthetic_inverted_branch_backout_is_fall_through() -> R<()> {
    let gup = build_gup(Gup {
        retry: Retry::Je,
        ..Gup::default()
    })?;
    let plan = run(&build_cpr(Cpr::default())?, &gup)?;
    assert_eq!(found(&plan, "gup_fast_fallback"), gup.offs);
    Ok(())
}

#[test]
fn sites_synthetic_write_variants_still_found() -> R<()> {
    for o in [
        Cpr {
            inc_end: true,
            ..Cpr::default()
        },
        Cpr {
            reversed_layout: true,
            ..Cpr::default()
        },
        // Look-alikes (another field of the same mm, the same field of the other mm) are
        // rejected; the two real increments remain.
        Cpr {
            lookalikes: true,
            ..Cpr::default()
        },
    ] {
        let cpr = build_cpr(o)?;
        let plan = run(&cpr, &build_gup(Gup::default())?)?;
        assert_eq!(found(&plan, "copy_page_range"), cpr.offs);
    }
    Ok(())
}

#[test]
fn sites_synthetic_write_perturbations_refused() -> R<()> {
    // Shapes that are not the protocol but prove nothing either: unknown, no sites.
    let cases = [
        (
            "dst mm instead of src mm",
            Cpr {
                from_dst: true,
                ..Cpr::default()
            },
        ),
        (
            "src on one path, dst on the other",
            Cpr {
                merged_origin: true,
                ..Cpr::default()
            },
        ),
        (
            "three increments",
            Cpr {
                third: true,
                ..Cpr::default()
            },
        ),
    ];
    for (what, o) in cases {
        let plan = run(&build_cpr(o)?, &build_gup(Gup::default())?)?;
        assert!(
            found(&plan, "copy_page_range").is_empty(),
            "{what}: {:?}",
            plan.sites
        );
        assert!(defects_of(&plan, "copy_page_range").is_empty(), "{what}");
        let err = error_of(&plan, "copy_page_range");
        let ok = match what {
            "three increments" => matches!(err, Some(SiteError::Ambiguous { .. })),
            // write_begin's base is src on one path and dst on the other: neither proven nor
            // a proven look-alike.
            "src on one path, dst on the other" => {
                matches!(err, Some(SiteError::Ambiguous { why, .. }) if why.contains("cannot be proven"))
            }
            _ => matches!(err, Some(SiteError::NotFound { .. })),
        };
        assert!(ok, "{what}: {err:?}");
        assert!(!plan.complete());
        // The read side is unaffected.
        assert_eq!(found(&plan, "gup_fast_fallback").len(), 3, "{what}");
    }
    Ok(())
}

#[test]
fn sites_synthetic_read_variants_still_found() -> R<()> {
    for o in [
        Gup {
            lookalike: true,
            ..Gup::default()
        },
        Gup {
            spill_current: true,
            ..Gup::default()
        },
        Gup {
            spill_current: true,
            irq_save_native: true,
            ..Gup::default()
        },
    ] {
        let gup = build_gup(o)?;
        let plan = run(&build_cpr(Cpr::default())?, &gup)?;
        assert_eq!(
            found(&plan, "gup_fast_fallback"),
            gup.offs,
            "{:#?}",
            plan.functions
        );
    }
    Ok(())
}

#[test]
fn sites_synthetic_read_perturbations_refused() -> R<()> {
    type Check = fn(&SiteError) -> bool;
    let cases: [(&str, Gup, Check); 3] = [
        (
            "comparison consumed by setne (not modelled)",
            Gup {
                retry: Retry::Setne,
                ..Gup::default()
            },
            |e| matches!(e, SiteError::Ambiguous { why, .. } if why.contains("setne")),
        ),
        (
            "seqcount of another mm (arg field, not current->mm)",
            Gup {
                other_origin: true,
                ..Gup::default()
            },
            |e| matches!(e, SiteError::NotFound { .. }),
        ),
        (
            "another per-cpu variable than current_task",
            Gup {
                other_percpu: true,
                ..Gup::default()
            },
            |e| matches!(e, SiteError::NotFound { .. }),
        ),
    ];
    for (what, o, check) in cases {
        let plan = run(&build_cpr(Cpr::default())?, &build_gup(o)?)?;
        assert!(
            found(&plan, "gup_fast_fallback").is_empty(),
            "{what}: half a protocol probed: {:?}",
            plan.sites
        );
        assert!(defects_of(&plan, "gup_fast_fallback").is_empty(), "{what}");
        let err = error_of(&plan, "gup_fast_fallback");
        assert!(err.is_some_and(check), "{what}: {err:?}");
        assert_eq!(found(&plan, "copy_page_range").len(), 2, "{what}");
    }
    Ok(())
}

#[test]
fn sites_synthetic_breakpoint_refused() -> R<()> {
    let mut gup = build_gup(Gup::default())?;
    let at = gup
        .offs
        .iter()
        .find(|(k, _)| *k == SiteKind::ReadBegin)
        .map(|(_, o)| *o as usize)
        .ok_or("no read_begin label")?;
    gup.bytes[at] = 0xcc;
    let plan = run(&build_cpr(Cpr::default())?, &gup)?;
    assert!(found(&plan, "gup_fast_fallback").is_empty());
    let err = error_of(&plan, "gup_fast_fallback");
    assert!(
        matches!(err, Some(SiteError::Breakpoint { offset, .. }) if *offset == at as u64),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn sites_synthetic_missing_symbol_refused() -> R<()> {
    let code = Mem::new(&[]);
    let ks = Kallsyms::parse(&format!("{HELPER:x} T helper\n{END:x} T _etext\n"))?;
    let plan = discover(&code, &ks, &layout());
    assert!(plan.sites.is_empty());
    assert!(
        plan.functions
            .iter()
            .all(|f| matches!(f.unknown(), Some(SiteError::NoSymbol { .. })))
    );
    Ok(())
}

/// Each defect class, built into otherwise real-looking code, is named exactly, with the parts
/// that remain still offered as sites (so a run shows the consequence), and the side and the
/// `tracer sites` exit status say so.
#[test]
fn sites_synthetic_defects_classified_exactly() -> R<()> {
    use SiteKind::{ReadBegin, ReadRetry, RetryFail, WriteBegin, WriteEnd};
    use tracer::sites::{Role, SideStatus, exit_status};
    let read = |what: &'static str, gup: Gup, defects: Vec<Defect>, kinds: Vec<SiteKind>| {
        (
            what,
            Cpr::default(),
            gup,
            "gup_fast_fallback",
            defects,
            kinds,
        )
    };
    let write = |what: &'static str, cpr: Cpr, kinds: Vec<SiteKind>| {
        (
            what,
            cpr,
            Gup::default(),
            "copy_page_range",
            vec![Defect::WriteUnpaired],
            kinds,
        )
    };
    let cases = vec![
        read(
            "no odd check",
            Gup {
                odd: Odd::Missing,
                ..Gup::default()
            },
            vec![Defect::OddCheckMissing],
            vec![ReadBegin, ReadRetry, RetryFail],
        ),
        read(
            "the odd side goes on to the walk",
            Gup {
                odd: Odd::NotReturning,
                ..Gup::default()
            },
            vec![Defect::OddCheckMissing],
            vec![ReadBegin, ReadRetry, RetryFail],
        ),
        read(
            "retry loaded, never compared",
            Gup {
                retry: Retry::Unconsumed,
                ..Gup::default()
            },
            vec![Defect::RetryUnconsumed],
            vec![ReadBegin, ReadRetry],
        ),
        read(
            "both sides of the retry branch meet",
            Gup {
                retry: Retry::SameSides,
                ..Gup::default()
            },
            vec![Defect::RetryUnconsumed],
            vec![ReadBegin, ReadRetry],
        ),
        read(
            "the comparison's flags overwritten",
            Gup {
                retry: Retry::FlagsOverwritten,
                ..Gup::default()
            },
            vec![Defect::RetryUnconsumed],
            vec![ReadBegin, ReadRetry],
        ),
        read(
            "retry compares two fresh loads",
            Gup {
                retry: Retry::Stale,
                ..Gup::default()
            },
            vec![Defect::RetryStale],
            vec![ReadBegin, ReadRetry, RetryFail],
        ),
        read(
            "changed side jumps into the return-0 path",
            Gup {
                retry: Retry::NoUnpin,
                ..Gup::default()
            },
            vec![Defect::BackoutMissing],
            vec![ReadBegin, ReadRetry],
        ),
        read(
            "changed side has a block that calls nothing",
            Gup {
                retry: Retry::BackoutNoCall,
                ..Gup::default()
            },
            vec![Defect::BackoutMissing],
            vec![ReadBegin, ReadRetry],
        ),
        read(
            "no seqcount access at all",
            Gup {
                no_seq: true,
                ..Gup::default()
            },
            vec![Defect::ReadMissing],
            vec![],
        ),
        read(
            "no odd check and an unconsumed retry",
            Gup {
                odd: Odd::Missing,
                retry: Retry::Unconsumed,
                ..Gup::default()
            },
            vec![Defect::RetryUnconsumed, Defect::OddCheckMissing],
            vec![ReadBegin, ReadRetry],
        ),
        write(
            "no increment of the seqcount",
            Cpr {
                disp_delta: 4,
                ..Cpr::default()
            },
            vec![],
        ),
        write(
            "write_end missing",
            Cpr {
                end_missing: true,
                ..Cpr::default()
            },
            vec![WriteBegin],
        ),
        write(
            "the section encloses nothing",
            Cpr {
                not_enclosing: true,
                ..Cpr::default()
            },
            vec![WriteBegin, WriteEnd],
        ),
    ];
    for (what, cpr, gup, symbol, defects, kinds) in cases {
        let (c, g) = (build_cpr(cpr)?, build_gup(gup)?);
        let plan = run(&c, &g)?;
        assert_eq!(
            defects_of(&plan, symbol),
            defects,
            "{what}: {:#?}",
            plan.functions
        );
        let built = if symbol == "copy_page_range" { &c } else { &g };
        let want: Vec<(SiteKind, u64)> = built
            .offs
            .iter()
            .copied()
            .filter(|(k, _)| kinds.contains(k))
            .collect();
        assert_eq!(found(&plan, symbol), want, "{what}");
        let role = if symbol == "copy_page_range" {
            Role::Write
        } else {
            Role::Read
        };
        assert_eq!(plan.side(role), SideStatus::Defect(defects[0]), "{what}");
        assert!(!plan.complete(), "{what}");
        assert_eq!(exit_status(&plan), 1, "{what}");
        // Every defect carries the instructions that prove it, as offsets in the function.
        for f in plan.functions.iter().filter(|f| f.symbol == symbol) {
            for d in f.defects() {
                assert!(!d.why.is_empty(), "{what}");
                for e in &d.evidence {
                    assert!(e.offset < built.bytes.len() as u64, "{what}: {e:?}");
                    assert!(!e.insn.is_empty(), "{what}");
                }
            }
        }
        // The other side is untouched.
        let other = if symbol == "copy_page_range" {
            "gup_fast_fallback"
        } else {
            "copy_page_range"
        };
        assert!(defects_of(&plan, other).is_empty(), "{what}");
    }
    Ok(())
}

/// Shapes this tool does not model are never called defects (nor intact): a parity test in
/// another form, a back-out that calls something not known to release pins, a back-out block
/// that another path also enters.
#[test]
fn sites_synthetic_lookalike_defects_are_unknown() -> R<()> {
    type Check = fn(&SiteError) -> bool;
    let cases: [(&str, Gup, Check); 3] = [
        (
            "odd check as `and $1`",
            Gup {
                odd: Odd::AndForm,
                ..Gup::default()
            },
            |e| matches!(e, SiteError::Ambiguous { why, .. } if why.contains("test $1")),
        ),
        (
            "back-out calls an unknown function",
            Gup {
                retry: Retry::BackoutUnknownCall,
                ..Gup::default()
            },
            |e| matches!(e, SiteError::Unexpected { why, .. } if why.contains("release pins")),
        ),
        (
            "back-out block also entered from elsewhere",
            Gup {
                retry: Retry::BackoutShared,
                ..Gup::default()
            },
            |e| matches!(e, SiteError::Ambiguous { why, .. } if why.contains("also reached")),
        ),
    ];
    for (what, o, check) in cases {
        let plan = run(&build_cpr(Cpr::default())?, &build_gup(o)?)?;
        assert!(found(&plan, "gup_fast_fallback").is_empty(), "{what}");
        assert!(defects_of(&plan, "gup_fast_fallback").is_empty(), "{what}");
        let err = error_of(&plan, "gup_fast_fallback");
        assert!(err.is_some_and(check), "{what}: {err:?}");
        assert_eq!(
            plan.side(tracer::sites::Role::Read),
            tracer::sites::SideStatus::Unknown
        );
        assert_eq!(tracer::sites::exit_status(&plan), 3, "{what}");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Shapes clang emits in copy_page_range (issue 13): a realigned frame, the mm spilled to a
// stack slot before calls and reloaded for the increments, `incl`, and structs on the stack
// whose fields sit at the seqcount's displacement.

#[derive(Clone, Copy, Default)]
struct Clang {
    /// `and $-16, %rsp` after the pushes, locals addressed from the aligned %rsp.
    realign: bool,
    /// A pointer to a local at or below the spill slot escapes to a call: the slot may be
    /// overwritten, so the reloaded base proves nothing.
    escape_below: bool,
    /// Increments at the seqcount's displacement inside stack structs (a pointer to a local,
    /// and %rsp itself).
    stack_lookalikes: bool,
}

/// The mm spill slot (above the escaped struct at +0x138 unless `escape_below`).
const SPILL: i32 = 0x88;

fn build_cpr_clang(o: Clang) -> R<Built> {
    let mut a = CodeAssembler::new(64)?;
    let mut l_begin = a.create_label();
    let mut l_end = a.create_label();
    let mut l_loop = a.create_label();
    let mut out = a.create_label();
    a.push(rbp)?;
    a.mov(rbp, rsp)?;
    a.push(r15)?;
    a.push(r14)?;
    a.push(rbx)?;
    if o.realign {
        a.and(rsp, -16)?;
    }
    a.sub(rsp, 0x190)?;
    a.mov(r14, rdi)?;
    a.mov(rax, qword_ptr(rsi + VMA_MM))?;
    a.mov(qword_ptr(rsp + SPILL), rax)?;
    // mmu_notifier_range_init(&range, ...): a pointer into the frame escapes.
    let escaped = if o.escape_below { SPILL - 8 } else { 0x138 };
    a.lea(rdi, qword_ptr(rsp + escaped))?;
    a.call(HELPER)?;
    a.mov(rdi, r14)?;
    a.call(HELPER)?;
    a.mov(rax, qword_ptr(rsp + SPILL))?;
    a.set_label(&mut l_begin)?;
    a.inc(dword_ptr(rax + SEQ))?;
    if o.stack_lookalikes {
        // (%r11: not an argument register, so the address does not escape at the next call,
        // which any argument register holding a stack address would make it do.)
        a.lea(r11, qword_ptr(rsp + 0x20))?;
        a.inc(dword_ptr(r11 + SEQ))?;
        a.inc(dword_ptr(rsp + SEQ))?;
    }
    // The copy: a loop with a call, reading the mm back from the slot each time.
    a.xor(ebx, ebx)?;
    a.set_label(&mut l_loop)?;
    a.mov(rdi, r14)?;
    a.call(HELPER)?;
    a.add(ebx, 1)?;
    a.cmp(ebx, 8)?;
    a.jne(l_loop)?;
    a.mov(r15, qword_ptr(rsp + SPILL))?;
    a.set_label(&mut l_end)?;
    a.inc(dword_ptr(r15 + SEQ))?;
    a.set_label(&mut out)?;
    a.xor(eax, eax)?;
    a.lea(rsp, qword_ptr(rbp - 0x18))?;
    a.pop(rbx)?;
    a.pop(r14)?;
    a.pop(r15)?;
    a.pop(rbp)?;
    a.ret()?;
    let (bytes, ip) = assemble(&mut a, CPR)?;
    Ok(Built {
        bytes,
        offs: vec![
            (SiteKind::WriteBegin, ip(&l_begin)?),
            (SiteKind::WriteEnd, ip(&l_end)?),
        ],
    })
}

#[test]
fn sites_synthetic_clang_spills_across_calls_are_followed() -> R<()> {
    for o in [
        Clang::default(),
        Clang {
            realign: true,
            ..Clang::default()
        },
        Clang {
            realign: true,
            stack_lookalikes: true,
            ..Clang::default()
        },
        Clang {
            stack_lookalikes: true,
            ..Clang::default()
        },
    ] {
        let cpr = build_cpr_clang(o)?;
        let plan = run(&cpr, &build_gup(Gup::default())?)?;
        assert_eq!(
            found(&plan, "copy_page_range"),
            cpr.offs,
            "realign {} lookalikes {}: {:#?}",
            o.realign,
            o.stack_lookalikes,
            plan.functions
        );
        assert!(plan.complete());
        for s in plan.sites.iter().filter(|s| s.symbol == "copy_page_range") {
            assert!(s.insn.starts_with("incl"), "{}", s.insn);
        }
    }
    Ok(())
}

#[test]
fn sites_synthetic_clang_escaping_frame_pointer_is_unknown() -> R<()> {
    // A pointer to a local just below the spill slot goes to a call, which may overwrite the
    // slot: the reloaded base is no longer proven to be src_vma->vm_mm, so the function is
    // unknown, never intact and never a defect.
    for realign in [false, true] {
        let cpr = build_cpr_clang(Clang {
            realign,
            escape_below: true,
            ..Clang::default()
        })?;
        let plan = run(&cpr, &build_gup(Gup::default())?)?;
        assert!(found(&plan, "copy_page_range").is_empty(), "{realign}");
        assert!(defects_of(&plan, "copy_page_range").is_empty(), "{realign}");
        let err = error_of(&plan, "copy_page_range");
        assert!(
            matches!(err, Some(SiteError::Ambiguous { why, .. }) if why.contains("cannot be proven")),
            "{realign}: {err:?}"
        );
    }
    Ok(())
}
