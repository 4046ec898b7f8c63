//! The function-level probes as fentry/fexit programs, for kernels that load BPF trampolines
//! but cannot attach kprobes. They report exactly what the kprobe programs report (the same
//! probes, records and loss counters); only the way arguments and return values are read
//! differs (one record per call, as in the crate docs). Instruction-level sites need kprobes
//! and have no counterpart here.
use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use tracer_common::call;

use crate::{call_exit, copy_enter_vma, gup_enter_args, mm_free_addr, offsets, read_u64};

/// The `n`th argument of the traced function. fentry's context is an array of 8-byte
/// argument slots; `n` is only known at run time (it comes from BTF through `OFFSETS`), and
/// the verifier only allows constant offsets into a tracing context, so the slot is copied
/// with bpf_probe_read_kernel instead.
#[inline(always)]
fn arg_at(ctx: &FEntryContext, n: u32) -> Option<u64> {
    if n > 5 {
        return None;
    }
    read_u64((aya_ebpf::EbpfContext::as_ptr(ctx) as u64).wrapping_add(u64::from(n) * 8))
}

/// The traced function's return value (`bpf_get_func_ret`, 5.17+); 0 when the helper fails.
#[inline(always)]
fn ret_of(ctx: &FExitContext) -> i64 {
    ctx.ret::<i64>().unwrap_or(0)
}

#[fentry]
pub fn fe_cpr_enter(ctx: FEntryContext) -> u32 {
    if let Some(vma) = arg_at(&ctx, offsets().cpr_vma_arg) {
        copy_enter_vma(vma, call::CPR);
    }
    0
}

#[fexit]
pub fn fx_cpr_exit(ctx: FExitContext) -> u32 {
    call_exit(call::CPR, ret_of(&ctx));
    0
}

#[fentry]
pub fn fe_hugetlb_enter(ctx: FEntryContext) -> u32 {
    if let Some(vma) = arg_at(&ctx, offsets().hugetlb_vma_arg) {
        copy_enter_vma(vma, call::HUGETLB);
    }
    0
}

#[fexit]
pub fn fx_hugetlb_exit(ctx: FExitContext) -> u32 {
    call_exit(call::HUGETLB, ret_of(&ctx));
    0
}

#[fentry]
pub fn fe_gup_enter(ctx: FEntryContext) -> u32 {
    let start = arg_at(&ctx, 0).unwrap_or(0);
    let second = arg_at(&ctx, 1).unwrap_or(0);
    let flags = arg_at(&ctx, 2).unwrap_or(0);
    gup_enter_args(start, second, flags);
    0
}

#[fexit]
pub fn fx_gup_exit(ctx: FExitContext) -> u32 {
    call_exit(call::GUP, ret_of(&ctx));
    0
}

#[fentry]
pub fn fe_mm_free(ctx: FEntryContext) -> u32 {
    mm_free_addr(arg_at(&ctx, 0).unwrap_or(0));
    0
}
